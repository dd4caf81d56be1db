//! What the explorer reads from, checked before anything is served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blockpost_core::Clock;

/// What the explorer reads from.
pub struct Config {
    /// The node's gRPC endpoint (`http://…` or `https://…`).
    pub node: String,
    /// TLS, pins and witnesses for the node, as for any client.
    pub options: blockpost_client::ConnectOptions,
    /// An auditor's gRPC endpoint: its status, alerts and search.
    pub auditor: Option<String>,
    /// Where the client pins the node's keys on first contact (as the CLI does).
    pub state_dir: PathBuf,
    /// How long one call to the node or the auditor may take before it counts as away.
    pub call_timeout: Duration,
    /// The clock relative times ("3 min ago") are computed on.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    /// A configuration with a 10 s call deadline and the system clock.
    pub fn new(node: &str, auditor: Option<&str>, state_dir: PathBuf) -> Self {
        Self {
            node: node.to_owned(),
            options: blockpost_client::ConnectOptions::default(),
            auditor: auditor.map(str::to_owned),
            state_dir,
            call_timeout: Duration::from_secs(10),
            clock: Arc::new(blockpost_core::SystemClock),
        }
    }
}

impl Config {
    /// Checks the endpoints before anything is served: each must be an `http://` or
    /// `https://` URL.
    pub fn check(&self) -> Result<(), Error> {
        let check = |what: &'static str, endpoint: &str| {
            let bad = |why: String| Error::BadEndpoint {
                what,
                endpoint: endpoint.to_owned(),
                why,
            };
            let uri: axum::http::Uri = endpoint.parse().map_err(|e| bad(format!("{e}")))?;
            match (uri.scheme_str(), uri.host()) {
                (Some("http" | "https"), Some(_)) => Ok(()),
                _ => Err(bad("give an http:// or https:// URL with a host".into())),
            }
        };
        check("node", &self.node)?;
        if let Some(a) = &self.auditor {
            check("auditor", a)?;
        }
        Ok(())
    }
}

/// Why the explorer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint that is not an http:// or https:// URL.
    #[error("bad {what} endpoint {endpoint:?}: {why}")]
    BadEndpoint {
        /// "node" or "auditor".
        what: &'static str,
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// Serving failed.
    #[error("serving the explorer: {0}")]
    Serve(#[from] std::io::Error),
}
