//! `blockpost bench`: load generators against a node started in process, with a summary.

mod attack;
mod audit;
mod blocks;
mod cluster;
mod directory;
mod fts;
mod messages;

use std::time::Duration;

pub use attack::BenchAttackArgs;
pub use audit::BenchAuditArgs;
pub use blocks::BenchBlocksArgs;
pub use cluster::BenchClusterArgs;
pub use directory::BenchArgs;
pub use messages::BenchMessagesArgs;

/// The benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Registrations/s and look-up latency of the directory.
    Directory(BenchArgs),
    /// Accepted envelopes/s and submit-to-receipt latency of the gateway.
    Messages(BenchMessagesArgs),
    /// The node's memory (in its own process) under the hardening issue's attacks: idle
    /// connections, GetEntries floods, oversized and unknown-sender envelopes, padded
    /// requests.
    Attack(BenchAttackArgs),
    /// The block builder: its rate from a pre-filled firehose beside the gateway's accepted
    /// rate, look-up latency with proofs on a large store, bytes stored per message.
    Blocks(BenchBlocksArgs),
    /// The auditor: catch-up rate on a backlog beside the gateway's accepted rate, keeping
    /// up while messages flow, and the latency of an omission alert.
    Audit(BenchAuditArgs),
    /// The node as processes on a JetStream cluster: G gateway processes loaded at once,
    /// the builder, and JetStream writes and bytes per envelope.
    Cluster(BenchClusterArgs),
}

/// Runs one benchmark.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Directory(a) => directory::run(a).await,
        BenchCmd::Messages(a) => messages::run(a).await,
        BenchCmd::Attack(a) => attack::run(a).await,
        BenchCmd::Blocks(a) => blocks::run(a).await,
        BenchCmd::Audit(a) => audit::run(a).await,
        BenchCmd::Cluster(a) => cluster::run(a).await,
    }
}

/// A node in process for a benchmark, serving on an ephemeral port until stopped.
pub(crate) struct BenchNode {
    pub node: std::sync::Arc<blockpost_node::Node>,
    pub endpoint: String,
    serving: blockpost_node::Serving,
    _tmp: tempfile::TempDir,
}

impl BenchNode {
    /// Starts a node on a temporary data dir (or `data`), with NATS at `nats` or managed.
    pub async fn start(
        data: Option<std::path::PathBuf>,
        nats: Option<String>,
        messaging: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(data, nats, messaging, |_| {}).await
    }

    /// [`BenchNode::start`], with the config adjusted by `adjust`.
    pub async fn start_with(
        data: Option<std::path::PathBuf>,
        nats: Option<String>,
        messaging: bool,
        adjust: impl FnOnce(&mut blockpost_node::NodeConfig),
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data = data.unwrap_or_else(|| tmp.path().join("data"));
        let mut cfg = blockpost_node::NodeConfig {
            data_dir: data,
            nats: blockpost_node::NatsConfig {
                url: nats,
                ..Default::default()
            },
            ..blockpost_node::NodeConfig::default()
        };
        cfg.directory.origin = Some("bench.blockpost/directory".into());
        cfg.messaging.enabled = messaging;
        adjust(&mut cfg);
        let node = std::sync::Arc::new(blockpost_node::Node::start(cfg).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let serving = node.serve_in_background(listener)?;
        Ok(Self {
            endpoint: serving.endpoint(),
            node,
            serving,
            _tmp: tmp,
        })
    }

    /// Stops serving.
    pub async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serving.stop()).await;
    }
}
