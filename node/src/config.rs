//! The node config: one TOML file with a table per service, `deny_unknown_fields`
//! everywhere, checked once before anything starts.
//!
//! ```toml
//! listen = "127.0.0.1:7700"
//! nats = "nats://127.0.0.1:4222"     # omit: the node runs its own nats-server
//! data_dir = "/var/lib/blockpost"
//!
//! [directory]
//! origin = "directory.example.org/blockpost"
//!
//! [messaging]
//! max_block_delay_ms = 10000
//!
//! [tls]                               # off loopback TLS is required; default: self-issued
//! names = ["node.example.org"]
//!
//! [[witnesses]]                       # auditors that cosign the node's checkpoints
//! endpoint = "http://auditor.example.org:7800"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blockpost_builder::BuilderConfig;
use blockpost_directory::DirectoryConfig;
use blockpost_messaging::MessagingConfig;
use serde::Deserialize;

use crate::{Error, Result, ServeLimits, TlsConfig};

/// What a receipt's promise keeps beyond the builder's block delay: the time to verify,
/// store and sign a block, and a restart of the builder.
pub const BUILDER_MARGIN_MS: u64 = 1_000;

/// Everything a node needs to start.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// gRPC listen address, `HOST:PORT`.
    pub listen: String,
    /// NATS server URL; `None`: start and manage a local nats-server in the data directory.
    pub nats: Option<String>,
    /// With `nats`: a file with the node's credentials (a `.creds` file, `user:password`
    /// or a token).
    pub nats_credentials: Option<PathBuf>,
    /// The data directory (see [`blockpost_storage::DataDir`]).
    pub data_dir: PathBuf,
    /// `[directory]`.
    pub directory: DirectoryConfig,
    /// `[messaging]`.
    pub messaging: MessagingConfig,
    /// `[builder]`: when blocks are cut.
    pub builder: BuilderConfig,
    /// `[limits]`: connections and timeouts of the gRPC server.
    pub limits: ServeLimits,
    /// `[tls]`: TLS on the gRPC port (required off loopback).
    pub tls: TlsConfig,
    /// `[[witnesses]]`: auditors whose cosignatures the node collects for its directory
    /// and ledger checkpoints, and hands to clients beside them.
    pub witnesses: Vec<WitnessConfig>,
}

/// One witness (an auditor's `blockpost.v1.Audit` endpoint).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The auditor's gRPC endpoint (`http://HOST:PORT`).
    pub endpoint: String,
    /// Its verifier key (`name+id+base64`); without it, the key the witness presents is
    /// taken (its cosignatures are checked with it either way; clients decide whom they
    /// trust).
    #[serde(default)]
    pub key: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".into(),
            nats: None,
            nats_credentials: None,
            data_dir: PathBuf::from("blockpost-data"),
            directory: DirectoryConfig::default(),
            messaging: MessagingConfig::default(),
            builder: BuilderConfig::default(),
            limits: ServeLimits::default(),
            tls: TlsConfig::default(),
            witnesses: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// Parses a TOML config.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// A config for tests: a fixed origin, on `data_dir`, NATS at `nats`.
    pub fn for_test(data_dir: impl Into<PathBuf>, nats: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            nats: Some(nats.into()),
            nats_credentials: None,
            data_dir: data_dir.into(),
            directory: DirectoryConfig::for_test(),
            messaging: MessagingConfig::default(),
            builder: BuilderConfig::default(),
            limits: ServeLimits::default(),
            tls: TlsConfig::default(),
            witnesses: Vec::new(),
        }
    }

    /// Checks every setting; returns the listen address.
    pub fn validate(&self) -> Result<SocketAddr> {
        let listen = self
            .listen
            .parse()
            .map_err(|_| Error::Config(format!("listen {:?} is not HOST:PORT", self.listen)))?;
        self.messaging.validate().map_err(Error::Config)?;
        self.directory.validate().map_err(Error::Config)?;
        self.tls.validate(&listen)?;
        self.builder.validate().map_err(Error::Config)?;
        for w in &self.witnesses {
            if !w.endpoint.starts_with("http://") && !w.endpoint.starts_with("https://") {
                return Err(Error::Config(format!(
                    "witness endpoint {:?} is not an http:// or https:// URL",
                    w.endpoint
                )));
            }
            if let Some(k) = &w.key {
                blockpost_core::WitnessKey::parse(k)
                    .map_err(|e| Error::Config(format!("witness {}: {e}", w.endpoint)))?;
            }
        }
        if self.builder.enabled
            && self.messaging.enabled
            && self.messaging.max_block_delay_ms
                < self
                    .builder
                    .max_block_delay_ms
                    .saturating_add(BUILDER_MARGIN_MS)
        {
            return Err(Error::Config(format!(
                "messaging.max_block_delay_ms ({} ms) is the promise in every receipt; the builder \
                 cuts a block up to builder.max_block_delay_ms ({} ms) after its first message, so \
                 the promise must be at least {} ms more",
                self.messaging.max_block_delay_ms,
                self.builder.max_block_delay_ms,
                BUILDER_MARGIN_MS
            )));
        }
        if self.directory.max_batch == 0 {
            return Err(Error::Config(
                "directory.max_batch must be at least 1".into(),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.handshake_timeout_ms == 0 || l.idle_timeout_ms == 0 {
            return Err(Error::Config(
                "limits.max_connections and the timeouts must be at least 1".into(),
            ));
        }
        if l.keepalive_ms == 0 || l.keepalive_ms >= l.idle_timeout_ms {
            return Err(Error::Config(
                "limits.keepalive_ms must be below limits.idle_timeout_ms, or quiet live connections are cut"
                    .into(),
            ));
        }
        if self.directory.max_clock_skew_ms == 0 {
            return Err(Error::Config(
                "directory.max_clock_skew_ms must be at least 1".into(),
            ));
        }
        Ok(listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_per_service_and_unknown_keys_refused() {
        let c = NodeConfig::from_toml(
            r#"
            listen = "127.0.0.1:7800"
            data_dir = "/tmp/x"
            [directory]
            require_verified = true
            [messaging]
            max_block_delay_ms = 2500
            max_recipients = 4
            [builder]
            max_block_delay_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7800");
        assert!(c.directory.require_verified);
        assert_eq!(c.messaging.max_block_delay_ms, 2500);
        assert_eq!(c.builder.max_block_delay_ms, 100);
        assert_eq!(c.messaging.max_recipients, 4);
        assert_eq!(
            c.messaging.max_body_len,
            MessagingConfig::default().max_body_len
        );
        c.validate().unwrap();
        for bad in [
            "lisen = \"x\"",
            "[directory]\ndata_dir = \"/x\"",
            "[messaging]\nmax_body = 1",
            "[builder]\nx = 1",
            "[anchor]\nx = 1",
        ] {
            assert!(NodeConfig::from_toml(bad).is_err(), "{bad}");
        }
        let mut c = NodeConfig::default();
        c.messaging.max_recipients = 0;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.messaging.max_block_delay_ms = 1_000;
        assert!(
            matches!(c.validate(), Err(Error::Config(m)) if m.contains("promise")),
            "a receipt promise shorter than the builder's delay plus its margin"
        );
        c.builder.enabled = false;
        c.validate().unwrap();
        let c = NodeConfig {
            listen: "nowhere".into(),
            ..NodeConfig::default()
        };
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("HOST:PORT")));
    }

    #[test]
    fn witnesses_are_checked() {
        let c = NodeConfig::from_toml(
            "[[witnesses]]\nendpoint = \"http://127.0.0.1:7800\"\n[[witnesses]]\nendpoint = \"https://w.example.org\"\n",
        )
        .unwrap();
        assert_eq!(c.witnesses.len(), 2);
        c.validate().unwrap();
        for (toml, why) in [
            ("[[witnesses]]\nendpoint = \"w.example.org\"", "http"),
            (
                "[[witnesses]]\nendpoint = \"http://w\"\nkey = \"example.com/log+00000000+AQ==\"",
                "witness key",
            ),
        ] {
            let c = NodeConfig::from_toml(toml).unwrap();
            assert!(
                matches!(c.validate(), Err(Error::Config(m)) if m.contains(why)),
                "{toml}"
            );
        }
        assert!(NodeConfig::from_toml("[[witnesses]]\nurl = \"http://w\"").is_err());
    }
}
