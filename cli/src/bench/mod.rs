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

/// CPU time (user and system, in seconds) of this process's threads, summed by thread name,
/// and of the machine's nats-server processes (as `nats-server`): a profile by thread, read
/// from `/proc`, for where `perf` cannot sample. Empty where `/proc` is not Linux's.
pub(crate) fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    // Fields 14 and 15 of `stat` (utime, stime), counted after the `comm` field's ')'.
    fn ticks(stat: &str) -> Option<f64> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
    }
    let mut out = std::collections::BTreeMap::new();
    let mut live = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if let Some(s) = std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
            {
                *out.entry(name.trim().to_owned()).or_insert(0.0) += s;
                live += s;
            }
        }
    }
    // The process's own figure also counts threads that have ended (scoped threads of a
    // parallel signature check, idle blocking threads): the rest, under a name of its own.
    if let Some(all) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
    {
        out.insert("(threads since ended)".to_owned(), (all - live).max(0.0));
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            if comm.trim() == "nats-server"
                && let Some(s) = std::fs::read_to_string(p.path().join("stat"))
                    .ok()
                    .and_then(|s| ticks(&s))
            {
                *out.entry("nats-server".to_owned()).or_insert(0.0) += s;
            }
        }
    }
    out
}

/// Prints where the CPU went between two [`cpu_by_thread`] readings, per `units` of work.
pub(crate) fn say_cpu(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    units: usize,
    unit: &str,
) {
    const ENDED: &str = "(threads since ended)";
    // A thread live at the first reading that ended before the second shows a negative
    // difference under its name, and its time under ENDED: net them.
    let mut ended = 0.0;
    let mut used: Vec<(String, f64)> = Vec::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in names {
        let v = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        if k == ENDED || v < 0.0 {
            ended += v;
        } else if v > 0.0 {
            used.push((k.clone(), v));
        }
    }
    if ended > 0.0 {
        used.push((ENDED.to_owned(), ended));
    }
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = used.iter().map(|(_, v)| v).sum();
    let parts: Vec<String> = used
        .iter()
        .take(6)
        .map(|(k, v)| {
            format!(
                "{k} {:.0} us ({:.0} %)",
                v * 1e6 / units.max(1) as f64,
                v * 100.0 / total.max(f64::MIN_POSITIVE)
            )
        })
        .collect();
    crate::say!(
        "{:<10} CPU per {unit} by thread: {:.0} us in all; {}",
        "",
        total * 1e6 / units.max(1) as f64,
        parts.join(", ")
    );
}
