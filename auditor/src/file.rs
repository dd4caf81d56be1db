//! The auditor's settings file: TOML, every key optional, unknown keys refused, read once
//! before anything starts. `blockpost auditor --config FILE` reads it; a flag or its
//! environment variable, when given, wins over the file, and the file over the defaults.
//!
//! ```toml
//! node = "https://node.example:7700"      # the node's gRPC endpoint
//! nats = "nats://node.example:4222"       # the node's NATS server
//! nats_credentials = "reader.creds"       # its read-only user
//! data = "/var/lib/blockpost-auditor"
//! listen = "127.0.0.1:7800"               # blockpost.v1.Audit
//! metrics = "127.0.0.1:9800"              # /metrics and /healthz
//! grace_ms = 1000
//! watch = ["name:*Megacorp*", "address:bank-?"]
//! open_for = ["regulator=regulator.key"]
//! tls_pin = "sha256:..."
//! alerts_nats = "nats://alerts.example:4222"
//! alerts_subject = "blockpost.audit.alerts"
//! witness_subject = "blockpost.witness"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// The auditor's settings file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditorFile {
    /// The node's gRPC endpoint.
    pub node: Option<String>,
    /// The node's NATS server.
    pub nats: Option<String>,
    /// NATS credentials (a `.creds` file, `user:password` or a token).
    pub nats_credentials: Option<PathBuf>,
    /// The auditor's data directory.
    pub data: Option<PathBuf>,
    /// Where `blockpost.v1.Audit` is served.
    pub listen: Option<std::net::SocketAddr>,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics: Option<std::net::SocketAddr>,
    /// Time allowed past a receipt's deadline before a missing message is an omission.
    pub grace_ms: Option<u64>,
    /// Watch-list patterns (`address:PATTERN`, `name:PATTERN` or `PATTERN`).
    #[serde(default)]
    pub watch: Vec<String>,
    /// `ADDRESS=KEYFILE`: participants whose sealed bodies the auditor opens.
    #[serde(default)]
    pub open_for: Vec<String>,
    /// Also publish alerts on this NATS server.
    pub alerts_nats: Option<String>,
    /// Credentials for `alerts_nats`.
    pub alerts_nats_credentials: Option<PathBuf>,
    /// The subject alerts are published on.
    pub alerts_subject: Option<String>,
    /// The witness's name in its cosignatures.
    pub witness_name: Option<String>,
    /// The subject prefix cosigned checkpoints are published on.
    pub witness_subject: Option<String>,
    /// CA certificates (PEM) to verify the node's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// The node's TLS key pin (`sha256:HEX`).
    pub tls_pin: Option<String>,
}

impl AuditorFile {
    /// Parses a settings file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let f: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        for w in &f.watch {
            w.parse::<crate::Watch>()
                .map_err(|e| Error::Config(format!("watch {w:?}: {e}")))?;
        }
        for o in &f.open_for {
            if !o.contains('=') {
                return Err(Error::Config(format!(
                    "open_for {o:?}: expected ADDRESS=KEYFILE"
                )));
            }
        }
        Ok(f)
    }

    /// Reads and parses the settings file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_parses_and_unknown_or_bad_keys_are_refused() {
        let f = AuditorFile::parse(
            r#"
            node = "http://127.0.0.1:7700"
            nats = "nats://127.0.0.1:4222"
            grace_ms = 250
            listen = "127.0.0.1:7801"
            watch = ["name:*Megacorp*"]
            open_for = ["regulator=r.key"]
            "#,
        )
        .unwrap();
        assert_eq!(f.grace_ms, Some(250));
        assert_eq!(f.watch, ["name:*Megacorp*"]);
        assert_eq!(f.listen.unwrap().port(), 7801);
        assert!(f.data.is_none());
        assert_eq!(AuditorFile::parse("").unwrap(), AuditorFile::default());
        for bad in [
            "nodes = \"x\"",
            "grace_ms = \"soon\"",
            "listen = \"not an address\"",
            "open_for = [\"no-equals\"]",
        ] {
            assert!(
                matches!(AuditorFile::parse(bad), Err(Error::Config(_))),
                "{bad} was accepted"
            );
        }
    }
}
