//! The node config: one TOML file with a table per service, `deny_unknown_fields`
//! everywhere, checked once before anything starts.
//!
//! ```toml
//! listen = "127.0.0.1:7700"
//! data_dir = "/var/lib/blockpost"
//! roles = ["directory", "gateway", "builder"]   # the default: all three
//!
//! [nats]                              # omit: the node runs its own nats-server
//! url = "nats://a:4222,nats://b:4222,nats://c:4222"   # seed servers of one cluster
//! replicas = 3                        # of every stream the node makes: 1, 3 or 5
//! credentials = "/etc/blockpost/nats.creds"
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
    /// `[nats]` (or `nats = "URL"`): the bus.
    pub nats: NatsConfig,
    /// Same as `[nats] credentials` (kept for configs written before the table).
    pub nats_credentials: Option<PathBuf>,
    /// What this process runs (default: all three).
    pub roles: Roles,
    /// Where the directory is, for a process that does not run it: its Directory calls
    /// are forwarded there (`http://HOST:PORT`).
    pub directory_endpoint: Option<String>,
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
            nats: NatsConfig::default(),
            nats_credentials: None,
            roles: Roles::default(),
            directory_endpoint: None,
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
            nats: NatsConfig {
                url: Some(nats.into()),
                ..NatsConfig::default()
            },
            nats_credentials: None,
            roles: Roles::default(),
            directory_endpoint: None,
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
        self.nats.validate()?;
        self.roles.validate()?;
        if !self.roles.directory {
            match &self.directory_endpoint {
                Some(e) if e.starts_with("http://") || e.starts_with("https://") => {}
                Some(e) => {
                    return Err(Error::Config(format!(
                        "directory_endpoint {e:?} is not an http:// or https:// URL"
                    )));
                }
                None => {
                    return Err(Error::Config(
                        "a process without the directory role needs directory_endpoint \
                         (--directory-endpoint URL): where registrations and look-ups go"
                            .into(),
                    ));
                }
            }
        }
        if self.roles.builder && !self.roles.gateway {
            return Err(Error::Config(
                "the builder role runs beside a gateway (it reads the gateway's directory \
                 replica): use --roles gateway,builder"
                    .into(),
            ));
        }
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

/// `[nats]`: where the bus is and how the node's streams are made. In TOML either a table
/// or, as before the table, one string: `nats = "URL"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// One URL or several seed URLs of one cluster, separated by commas; `None`: start
    /// and manage a local nats-server in the data directory.
    pub url: Option<String>,
    /// A file with the node's credentials (a `.creds` file, `user:password` or a token).
    pub credentials: Option<PathBuf>,
    /// Replicas of every stream (and key-value bucket) the node makes: 1, 3 or 5. Fixed
    /// when a stream is made; a node refuses to start on streams with another count.
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            credentials: None,
            replicas: 1,
        }
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<()> {
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(Error::Config(format!(
                "nats.replicas is {}: JetStream streams take 1, 3 or 5 replicas",
                self.replicas
            )));
        }
        if let Some(u) = &self.url {
            crate::auth::seed_urls(u)?;
        }
        if self.replicas > 1 && self.url.is_none() {
            return Err(Error::Config(format!(
                "nats.replicas = {} needs a NATS cluster (nats.url); the managed nats-server is one server",
                self.replicas
            )));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for NatsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: Option<String>,
            credentials: Option<PathBuf>,
            #[serde(default = "one")]
            replicas: usize,
        }
        fn one() -> usize {
            1
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NatsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a NATS URL or a [nats] table (url, credentials, replicas)")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(NatsConfig {
                    url: Some(v.to_owned()),
                    ..NatsConfig::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(NatsConfig {
                    url: t.url,
                    credentials: t.credentials,
                    replicas: t.replicas,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What one process runs: any of the directory (the single writer of the key log), a
/// gateway (Messaging; any number of them per cluster) and the block builder (one active,
/// any number standing by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The directory: its log, its CA, registrations.
    pub directory: bool,
    /// A messaging gateway.
    pub gateway: bool,
    /// A block builder (active or standby).
    pub builder: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            directory: true,
            gateway: true,
            builder: true,
        }
    }
}

impl Roles {
    /// Parses `directory,gateway,builder` (any non-empty subset, in any order).
    pub fn parse(list: &str) -> Result<Self> {
        let mut r = Roles {
            directory: false,
            gateway: false,
            builder: false,
        };
        for item in list.split(',').map(str::trim) {
            match item {
                "directory" => r.directory = true,
                "gateway" => r.gateway = true,
                "builder" => r.builder = true,
                other => {
                    return Err(Error::Config(format!(
                        "unknown role {other:?}: the roles are directory, gateway and builder"
                    )));
                }
            }
        }
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<()> {
        if !(self.directory || self.gateway || self.builder) {
            return Err(Error::Config(
                "a process needs at least one role: directory, gateway or builder".into(),
            ));
        }
        Ok(())
    }

    /// The names of the roles, comma-separated.
    pub fn names(&self) -> String {
        let mut v = Vec::new();
        if self.directory {
            v.push("directory");
        }
        if self.gateway {
            v.push("gateway");
        }
        if self.builder {
            v.push("builder");
        }
        v.join(",")
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        Roles::parse(&names.join(",")).map_err(serde::de::Error::custom)
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
    fn nats_is_a_url_or_a_table_and_roles_are_checked() {
        let c = NodeConfig::from_toml("nats = \"nats://a:4222\"").unwrap();
        assert_eq!(c.nats.url.as_deref(), Some("nats://a:4222"));
        assert_eq!(c.nats.replicas, 1);
        let c = NodeConfig::from_toml(
            "roles = [\"gateway\", \"builder\"]\ndirectory_endpoint = \"http://10.0.0.1:7700\"\n\
             [nats]\nurl = \"nats://a:4222, nats://b:4222,nats://c:4222\"\nreplicas = 3\ncredentials = \"/x\"\n",
        )
        .unwrap();
        assert_eq!(c.nats.replicas, 3);
        assert_eq!(c.nats.credentials.as_deref(), Some(Path::new("/x")));
        assert_eq!(
            crate::seed_urls(c.nats.url.as_deref().unwrap()).unwrap(),
            vec!["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert!(!c.roles.directory && c.roles.gateway && c.roles.builder);
        c.validate().unwrap();
        for (toml, why) in [
            ("[nats]\nurl = \"nats://a\"\nreplicas = 2", "1, 3 or 5"),
            ("[nats]\nreplicas = 3", "needs a NATS cluster"),
            (
                "nats = \"nats://a,,nats://b\"",
                "several separated by commas",
            ),
            ("roles = [\"gateway\"]", "directory_endpoint"),
            (
                "roles = [\"gateway\"]\ndirectory_endpoint = \"10.0.0.1:7700\"",
                "http://",
            ),
            (
                "roles = [\"directory\", \"builder\"]",
                "the builder role runs beside a gateway",
            ),
        ] {
            let c = NodeConfig::from_toml(toml).unwrap();
            assert!(
                matches!(c.validate(), Err(Error::Config(ref m)) if m.contains(why)),
                "{toml}: {:?}",
                c.validate()
            );
        }
        for bad in [
            "roles = [\"miner\"]",
            "roles = []",
            "[nats]\nurls = \"nats://a\"",
        ] {
            assert!(NodeConfig::from_toml(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Roles::parse("builder,gateway").unwrap().names(),
            "gateway,builder"
        );
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
