//! `blockpost bench cluster`: a node as separate processes on a JetStream cluster (one
//! directory, G gateway processes of which the first also runs the builder), loaded by
//! this process through every gateway at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blockpost_client::Client;
use blockpost_core::Identity;
use blockpost_core::wire::{self, Namespace};
use blockpost_proto::v1::Block;
use prost::Message as _;

use super::messages::{Accepted, pct, presign, register_senders, submit_all};
use crate::say;

/// Flags of `blockpost bench cluster`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchClusterArgs {
    /// Gateway processes (the first also runs the block builder).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Replicas of every stream: 1, 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Partitions of the firehose.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Envelopes to submit, spread over every gateway.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Concurrent submit streams per gateway.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Distinct senders.
    #[arg(long, default_value_t = 32)]
    pub senders: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub body: usize,
    /// Seed URLs of a running cluster (comma-separated); default: a cluster of three
    /// nats-servers started here (`NATS_SERVER_BIN` or `nats-server`).
    #[arg(long)]
    pub nats: Option<String>,
    /// With --nats: the node's credentials file.
    #[arg(long, requires = "nats")]
    pub nats_credentials: Option<PathBuf>,
    /// The `blockpost` binary the node's processes run (default: this one).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
}

/// One `blockpost up` process, killed when dropped.
struct Proc {
    child: Child,
    endpoint: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, data: &Path, args: &[String]) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(data)?;
    let port = blockpost_node::free_port()?;
    let log = std::fs::File::create(data.with_extension("log"))?;
    let child = Command::new(bin)
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

async fn wait_serving(p: &Proc, data: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(p.endpoint.clone())?
            .connect()
            .await
        {
            let mut c = blockpost_proto::v1::directory_client::DirectoryClient::new(ch);
            if c.get_info(blockpost_proto::v1::GetInfoRequest {})
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            anyhow::bail!("{} did not start within 60 s:\n{log}", p.endpoint);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy(from: &Path, to: &Path, files: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(to.join("keys"))?;
    for f in files {
        std::fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

/// Messages and bytes of the log's streams (all replicas count once here): the firehose
/// (every partition), the inboxes, the blocks.
async fn stream_totals(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    partitions: u32,
) -> anyhow::Result<[(u64, u64); 3]> {
    let firehose = ns.firehose(partitions);
    let mut named: Vec<(usize, String)> = firehose.all().map(|k| (0, firehose.stream(k))).collect();
    named.push((1, ns.inbox_stream()));
    named.push((2, ns.blocks_stream()));
    let mut out = [(0, 0); 3];
    for (i, name) in named {
        if let Ok(mut s) = js.get_stream(&name).await {
            let st = s.info().await?.state.clone();
            out[i].0 += st.messages;
            out[i].1 += st.bytes;
        }
    }
    Ok(out)
}

/// Block time of every message in a block: message id to block time (ms).
async fn block_times(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
) -> anyhow::Result<std::collections::HashMap<[u8; 32], i64>> {
    let mut out = std::collections::HashMap::new();
    let Ok(mut stream) = js.get_stream(ns.blocks_stream()).await else {
        return Ok(out);
    };
    let last = stream.info().await?.state.last_sequence;
    let mut parts = wire::BlockParts::default();
    for seq in 1..=last {
        let Some(bytes) = blockpost_builder::read_block_message(&stream, seq, &mut parts).await?
        else {
            continue;
        };
        let b = Block::decode(bytes.as_slice())?;
        let h = blockpost_proto::v1::BlockHeader::decode(
            b.header.unwrap_or_default().header.as_slice(),
        )?;
        for leaf in &b.leaves {
            out.insert(blockpost_core::message_id_of_encoded(leaf), h.time_ms);
        }
    }
    Ok(out)
}

/// Runs the benchmark and prints a summary.
pub async fn run(args: BenchClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.gateways >= 1, "--gateways must be at least 1");
    anyhow::ensure!(
        (1..=wire::MAX_FIREHOSE_PARTITIONS).contains(&args.partitions),
        "--partitions must be between 1 and {}",
        wire::MAX_FIREHOSE_PARTITIONS
    );
    let tmp = tempfile::tempdir()?;
    let bin = match &args.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    // The cluster: given, or three servers started here.
    let (_servers, seeds, creds) = match &args.nats {
        Some(urls) => (
            Vec::new(),
            urls.clone(),
            args.nats_credentials
                .clone()
                .context("--nats needs --nats-credentials")?,
        ),
        None => {
            let dir = tmp.path().join("nats");
            let nats_bin = PathBuf::from(blockpost_node::nats_server_bin());
            let servers = tokio::task::spawn_blocking(move || {
                blockpost_node::start_cluster(&dir, 3, &nats_bin)
            })
            .await??;
            let seeds = servers
                .iter()
                .map(blockpost_node::LocalNats::url)
                .collect::<Vec<_>>()
                .join(",");
            let blockpost_node::NatsAuth::UserPassword { user, password } = servers[0].node_auth()
            else {
                anyhow::bail!("the managed servers have user and password credentials");
            };
            let creds = tmp.path().join("node.credentials");
            blockpost_storage::write_private_file(
                &creds,
                format!("{user}:{password}\n").as_bytes(),
            )?;
            (servers, seeds, creds)
        }
    };
    let version = blockpost_node::nats_server_version()
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_else(|| "?".into());
    say!(
        "blockpost bench cluster: {} gateway process(es), R{}, {} firehose partition(s), {} envelopes of {} bytes, {} streams per gateway, nats-server {version}",
        args.gateways,
        args.replicas,
        args.partitions,
        args.messages,
        args.body,
        args.streams
    );
    let nats_args = vec![
        "--nats".to_owned(),
        seeds.clone(),
        "--nats-credentials".to_owned(),
        creds.display().to_string(),
        "--nats-replicas".to_owned(),
        args.replicas.to_string(),
        "--max-block-delay-ms".to_owned(),
        "30000".to_owned(),
        "--firehose-partitions".to_owned(),
        args.partitions.to_string(),
    ];
    let d_data = tmp.path().join("d");
    let mut a = nats_args.clone();
    a.extend(["--roles".into(), "directory".into()]);
    let d = spawn(&bin, &d_data, &a)?;
    wait_serving(&d, &d_data).await?;
    let mut gateways = Vec::new();
    for i in 0..args.gateways {
        let data = tmp.path().join(format!("g{i}"));
        if i == 0 {
            copy(&d_data, &data, &["origin", "keys/directory.vkey"])?;
        } else {
            copy(
                &tmp.path().join("g0"),
                &data,
                &[
                    "origin",
                    "keys/directory.vkey",
                    "keys/gateway.key",
                    "keys/builder.key",
                ],
            )?;
        }
        let mut a = nats_args.clone();
        a.extend([
            "--roles".into(),
            if i == 0 { "gateway,builder" } else { "gateway" }.into(),
            "--directory-endpoint".into(),
            d.endpoint.clone(),
        ]);
        let p = spawn(&bin, &data, &a)?;
        wait_serving(&p, &data).await?;
        gateways.push(p);
    }

    // Participants, and every gateway's replica knowing them.
    let mut dir = Client::connect(&d.endpoint, &tmp.path().join("client")).await?;
    let senders = register_senders(&mut dir, args.senders).await?;
    let rid = Identity::generate();
    dir.register(&rid, "receiver", "Receiver AG", None).await?;
    let mut channels = Vec::new();
    for g in &gateways {
        channels.push(
            tonic::transport::Endpoint::from_shared(g.endpoint.clone())?
                .connect()
                .await?,
        );
    }
    // A warm-up envelope per sender through every gateway: each replica knows them all.
    for ch in &channels {
        let warm = presign(&senders, 0, senders.len(), 16, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, _, errors, _) = submit_all(ch, warm.clone(), 1, 0).await?;
            if errors == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "a gateway's replica did not learn the senders in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let origin = std::fs::read_to_string(d_data.join("origin"))?;
    let ns = Namespace::for_origin(origin.trim());
    let client =
        blockpost_node::connect(&seeds, Some(&blockpost_node::NatsAuth::from_file(&creds)?))
            .await?;
    let js = async_nats::jetstream::new(client);
    let before = stream_totals(&js, &ns, args.partitions).await?;

    let per = args.messages.div_ceil(args.gateways);
    let envs = presign(&senders, 0, per * args.gateways, args.body, None);
    let mut chunks = envs.chunks(per).map(<[_]>::to_vec).collect::<Vec<_>>();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (ch, chunk) in channels.iter().zip(chunks.drain(..)) {
        let (ch, streams) = (ch.clone(), args.streams);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = submit_all(&ch, chunk, streams, 0).await;
            r.map(|r| (r, t.elapsed()))
        }));
    }
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut per_gateway = Vec::new();
    for task in tasks {
        let ((rate, l, e, a), _) = task.await??;
        per_gateway.push(rate);
        lat.extend(l);
        errors += e;
        accepted.extend(a);
    }
    let elapsed = t.elapsed();
    lat.sort();
    let total = accepted.len();
    say!(
        "accepted {:>8.0} msgs/s in all ({} in {:.2} s, {errors} errors); per gateway: {}; submit p50 {:.2} ms p99 {:.2} ms",
        total as f64 / elapsed.as_secs_f64(),
        total,
        elapsed.as_secs_f64(),
        per_gateway
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // The builder: every accepted envelope in a block.
    let first_accept = accepted.iter().map(|a| a.1).min().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(180);
    let times = loop {
        let times = block_times(&js, &ns).await?;
        if accepted.iter().all(|a| times.contains_key(&a.0)) {
            break times;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "accepted envelopes are in no block 180 s after the run"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut delays: Vec<Duration> = accepted
        .iter()
        .map(|a| Duration::from_millis(u64::try_from(times[&a.0] - a.1).unwrap_or(0)))
        .collect();
    delays.sort();
    let last_block = accepted.iter().map(|a| times[&a.0]).max().unwrap_or(0);
    let builder_secs = ((last_block - first_accept) as f64 / 1e3).max(1e-3);
    say!(
        "builder {:>8.0} msgs/s into blocks (first receipt to last block); merge delay (receipt to block) p50 {:.0} ms p99 {:.0} ms",
        total as f64 / builder_secs,
        pct(&delays, 0.5),
        pct(&delays, 0.99)
    );
    let after = stream_totals(&js, &ns, args.partitions).await?;
    let n = total.max(1) as f64;
    let names = ["firehose", "inbox", "blocks"];
    let (mut msgs, mut bytes) = (0.0, 0.0);
    let mut parts = Vec::new();
    for i in 0..3 {
        let m = after[i].0.saturating_sub(before[i].0) as f64 / n;
        let b = after[i].1.saturating_sub(before[i].1) as f64 / n;
        msgs += m;
        bytes += b;
        parts.push(format!("{} {m:.3} msgs {b:.0} B", names[i]));
    }
    say!(
        "JetStream per envelope: {msgs:.3} stream messages, {bytes:.0} bytes ({}); x{} replicas = {:.2} writes, {:.0} bytes stored",
        parts.join(", "),
        args.replicas,
        msgs * args.replicas as f64,
        bytes * args.replicas as f64
    );
    drop(gateways);
    drop(d);
    Ok(())
}
