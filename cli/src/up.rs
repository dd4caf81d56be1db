//! `blockpost up`: runs a node until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use blockpost_node::{Node, NodeConfig};

use crate::say;

/// Flags of `blockpost up`. Each flag also reads a `BLOCKPOST_*` environment variable, and
/// both override the config file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct UpArgs {
    /// TOML config file (top level: `listen`, `nats`, `data_dir`; tables `[directory]`,
    /// `[messaging]`, `[limits]`, `[tls]`).
    #[arg(long, env = "BLOCKPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (log, keys, NATS store when NATS is managed here).
    #[arg(long, env = "BLOCKPOST_DATA")]
    pub data: Option<PathBuf>,
    /// gRPC listen address. Off loopback the port speaks TLS: the operator's certificate
    /// (--tls-cert, --tls-key) or one the node issues from its directory CA.
    #[arg(long, env = "BLOCKPOST_LISTEN")]
    pub listen: Option<String>,
    /// TLS certificate chain, PEM (`[tls] cert`); with --tls-key.
    #[arg(long, env = "BLOCKPOST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (`[tls] key`); with --tls-cert.
    #[arg(long, env = "BLOCKPOST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A name (DNS name or IP address) for the self-issued TLS certificate (`[tls] names`;
    /// repeatable).
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// NATS server URL, or several seed URLs of one cluster separated by commas
    /// (`[nats] url`); without it a local nats-server is started and managed.
    #[arg(long, env = "BLOCKPOST_NATS")]
    pub nats: Option<String>,
    /// Replicas of every stream the node makes: 1, 3 or 5 (`[nats] replicas`; 3 or 5
    /// need a NATS cluster). Fixed when the streams are made.
    #[arg(long, env = "BLOCKPOST_NATS_REPLICAS", requires = "nats")]
    pub nats_replicas: Option<usize>,
    /// What this process runs: any of directory, gateway, builder, comma-separated
    /// (`roles`; default all three). A process without the directory forwards Directory
    /// calls to --directory-endpoint; any number of gateways and builders may run at once
    /// (one builder cuts blocks, the others stand by).
    #[arg(long, env = "BLOCKPOST_ROLES", value_name = "ROLES")]
    pub roles: Option<String>,
    /// Where the directory is, for a process without the directory role
    /// (`directory_endpoint`, `http://HOST:PORT`).
    #[arg(long, env = "BLOCKPOST_DIRECTORY_ENDPOINT", value_name = "URL")]
    pub directory_endpoint: Option<String>,
    /// With --nats: the node's credentials (a `.creds` file, `user:password` or a token).
    #[arg(long, env = "BLOCKPOST_NATS_CREDENTIALS", requires = "nats")]
    pub nats_credentials: Option<PathBuf>,
    /// The log's origin line (first start only).
    #[arg(long, env = "BLOCKPOST_ORIGIN")]
    pub origin: Option<String>,
    /// PEM file of trust anchors for name evidence (repeatable).
    #[arg(long = "trust-anchor")]
    pub trust_anchors: Vec<PathBuf>,
    /// Refuse names without evidence.
    #[arg(long)]
    pub require_verified: bool,
    /// A witness's gRPC endpoint (an auditor's `--listen`, `[[witnesses]] endpoint`;
    /// repeatable): the node hands it each new directory and ledger checkpoint, collects
    /// its cosignature and serves the cosigned checkpoints to clients that require
    /// witnesses.
    #[arg(long = "witness", value_name = "URL")]
    pub witnesses: Vec<String>,
    /// Serve Prometheus metrics (`/metrics`) and a liveness check (`/healthz`, 503 while
    /// the block builder is stalled) on this address.
    #[arg(long, env = "BLOCKPOST_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Also serve the web explorer on this address (HTTP), reading this node through the
    /// verifying client like any outsider (its pins in DATA/explorer). `blockpost
    /// explorer` runs it on its own, with an auditor.
    #[arg(long, env = "BLOCKPOST_WEB", value_name = "ADDR")]
    pub web: Option<std::net::SocketAddr>,
    /// Largest message body in bytes (`[messaging] max_body_len`).
    #[arg(long, env = "BLOCKPOST_MAX_BODY_LEN")]
    pub max_body_len: Option<usize>,
    /// Most recipients per envelope (`[messaging] max_recipients`).
    #[arg(long, env = "BLOCKPOST_MAX_RECIPIENTS")]
    pub max_recipients: Option<usize>,
    /// Greatest accepted envelope clock skew in ms (`[messaging] max_clock_skew_ms`).
    #[arg(long, env = "BLOCKPOST_MAX_CLOCK_SKEW_MS")]
    pub max_clock_skew_ms: Option<u64>,
    /// The delay every receipt promises, in ms (`[messaging] max_block_delay_ms`).
    #[arg(long, env = "BLOCKPOST_MAX_BLOCK_DELAY_MS")]
    pub max_block_delay_ms: Option<u64>,
    /// Partitions of the firehose (`[messaging] firehose_partitions`): one JetStream
    /// stream each, with its own leader. Fixed when the firehose is made; every process
    /// of the node must say the same.
    #[arg(long, env = "BLOCKPOST_FIREHOSE_PARTITIONS")]
    pub firehose_partitions: Option<u32>,
}

impl UpArgs {
    /// The config file (or the defaults) with every flag applied.
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut c = match &self.config {
            Some(p) => NodeConfig::load(p)?,
            None => NodeConfig::default(),
        };
        if let Some(d) = &self.data {
            c.data_dir = d.clone();
        }
        if let Some(l) = &self.listen {
            c.listen = l.clone();
        }
        if self.nats.is_some() {
            c.nats.url = self.nats.clone();
        }
        if let Some(r) = self.nats_replicas {
            c.nats.replicas = r;
        }
        if let Some(r) = &self.roles {
            c.roles = blockpost_node::Roles::parse(r)?;
        }
        if self.directory_endpoint.is_some() {
            c.directory_endpoint = self.directory_endpoint.clone();
        }
        if self.tls_cert.is_some() {
            c.tls.cert = self.tls_cert.clone();
            c.tls.key = self.tls_key.clone();
        }
        c.tls.names.extend(self.tls_names.iter().cloned());
        if self.nats_credentials.is_some() {
            c.nats_credentials = self.nats_credentials.clone();
        }
        if self.origin.is_some() {
            c.directory.origin = self.origin.clone();
        }
        c.directory
            .trust_anchors
            .extend(self.trust_anchors.iter().cloned());
        c.directory.require_verified |= self.require_verified;
        c.witnesses.extend(
            self.witnesses
                .iter()
                .map(|e| blockpost_node::WitnessConfig {
                    endpoint: e.clone(),
                    key: None,
                }),
        );
        let m = &mut c.messaging;
        m.max_body_len = self.max_body_len.unwrap_or(m.max_body_len);
        m.max_recipients = self.max_recipients.unwrap_or(m.max_recipients);
        m.max_clock_skew_ms = self.max_clock_skew_ms.unwrap_or(m.max_clock_skew_ms);
        m.max_block_delay_ms = self.max_block_delay_ms.unwrap_or(m.max_block_delay_ms);
        m.firehose_partitions = self.firehose_partitions.unwrap_or(m.firehose_partitions);
        c.validate()?;
        Ok(c)
    }
}

/// Runs the node until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listen = config.validate()?;
    let node = Node::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let c = node.config();
    let scheme = if node.tls().is_some() {
        "https"
    } else {
        "http"
    };
    say!(
        "blockpost node listening on {scheme}://{}",
        listener.local_addr()?
    );
    say!("  data      {}", node.data_dir().root().display());
    say!(
        "  nats      {}{}",
        node.nats_url(),
        if node.manages_nats() {
            " (managed)"
        } else {
            ""
        }
    );
    say!("  roles     {}", c.roles.names());
    if let Some(d) = node.directory() {
        let info = d.info();
        say!("  log       {}", info.origin);
        say!("  log key   {}", info.verifier_key);
        say!("  entries   {}", d.size());
    } else if let Some(e) = &c.directory_endpoint {
        say!("  directory {e} (Directory calls are forwarded there)");
    }
    if c.nats.replicas > 1 {
        say!("  replicas  {} per stream", c.nats.replicas);
    }
    if c.messaging.firehose_partitions > 1 && node.gateway().is_some() {
        say!(
            "  firehose  {} partitions (one stream each; a sender in one)",
            c.messaging.firehose_partitions
        );
    }
    if let Some(t) = node.tls() {
        let whose = if t.self_issued {
            format!(
                "self-issued by the directory CA ({})",
                node.data_dir().ca_cert().display()
            )
        } else {
            "the operator's".to_owned()
        };
        say!("  tls       {whose}; key pin {}", t.pin);
    }
    if let Some(g) = node.gateway() {
        say!("  receipts  {}", hex::encode(g.info().receipt_key));
        say!(
            "  promise   in a block within {} ms",
            c.messaging.max_block_delay_ms
        );
    }
    let metrics = match args.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            say!(
                "  metrics   http://{}/metrics and /healthz",
                l.local_addr()?
            );
            Some(tokio::spawn(blockpost_node::serve_metrics(
                node.metrics(),
                l,
            )))
        }
        None => None,
    };
    let web = match args.web {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the explorer"))?;
            let own = listener.local_addr()?;
            let host = if own.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                own.ip()
            };
            let endpoint = format!("{scheme}://{}", std::net::SocketAddr::new(host, own.port()));
            let mut cfg = blockpost_explorer::Config::new(
                &endpoint,
                None,
                node.data_dir().root().join("explorer"),
            );
            cfg.options.tls_pin = node.tls().map(|t| t.pin.clone());
            say!("  explorer  http://{}/", l.local_addr()?);
            Some(tokio::spawn(blockpost_explorer::run(
                l,
                cfg,
                std::future::pending(),
            )))
        }
        None => None,
    };
    node.serve(listener, shutdown_signal()).await?;
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(w) = web {
        w.abort();
    }
    Ok(())
}

/// `blockpost nats-credentials`: the reader user of the managed nats-server in `data`.
pub fn nats_credentials(data: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let store = blockpost_storage::DataDir::new(data).nats();
    if !store.join("credentials.json").exists() {
        anyhow::bail!(
            "{} has no managed nats-server (run `blockpost up --data {}` without --nats first)",
            data.display(),
            data.display()
        );
    }
    let c = blockpost_node::ManagedCredentials::load_or_create(&store)?;
    let url = format!("nats://127.0.0.1:{}", c.port);
    if json {
        say!(
            "{}",
            serde_json::json!({
                "url": url,
                "user": blockpost_node::READER_USER,
                "password": c.reader_password,
            })
        );
    } else {
        say!("url       {url}");
        say!("user      {}", blockpost_node::READER_USER);
        say!("password  {}", c.reader_password);
        eprintln!(
            "(read-only: the directory and firehose streams; as a file for --nats-credentials: `{}:PASSWORD`)",
            blockpost_node::READER_USER
        );
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7801\"\n[messaging]\nmax_block_delay_ms = 1900\nmax_recipients = 3\n",
        )
        .unwrap();
        let args = UpArgs {
            config: Some(file),
            max_block_delay_ms: Some(2500),
            listen: Some("127.0.0.1:7802".into()),
            firehose_partitions: Some(4),
            ..UpArgs::default()
        };
        let c = args.config().unwrap();
        assert_eq!(c.listen, "127.0.0.1:7802");
        assert_eq!(c.messaging.firehose_partitions, 4);
        assert_eq!(c.messaging.max_block_delay_ms, 2500);
        assert_eq!(c.messaging.max_recipients, 3);
        let bad = UpArgs {
            max_recipients: Some(0),
            ..UpArgs::default()
        };
        assert!(bad.config().is_err());
        let bad = UpArgs {
            firehose_partitions: Some(0),
            ..UpArgs::default()
        };
        assert!(format!("{:#}", bad.config().unwrap_err()).contains("firehose_partitions"));
    }
}
