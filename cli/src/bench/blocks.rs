//! `blockpost bench blocks`: the block builder measured on its own. The gateway fills the
//! firehose first (the builder off), which gives the gateway's accepted rate; then a builder
//! starts on the full stream and is timed until every message is in a signed, durable,
//! indexed block. Then: the bytes it stored per message, how long it takes to reopen that
//! store, and look-up latency (message and transaction, with every proof verified by the
//! client) on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockpost_builder::{Builder, BuilderConfig, BuilderParts};
use blockpost_client::{Client, Ledger};
use blockpost_core::{Identity, SystemClock};
use prost::Message as _;
use rand::seq::SliceRandom as _;

use super::BenchNode;
use super::messages::{Accepted, pct, presign, register_senders, submit_all};
use crate::say;

/// Flags of `blockpost bench blocks`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchBlocksArgs {
    /// Messages on the firehose (signed and submitted in rounds of --round).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Messages signed and submitted per round (memory stays bounded).
    #[arg(long, default_value_t = 100_000)]
    pub round: usize,
    /// Concurrent submission streams.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Distinct senders.
    #[arg(long, default_value_t = 32)]
    pub senders: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub body: usize,
    /// Look-ups of each kind (message, transaction).
    #[arg(long, default_value_t = 1000)]
    pub lookups: usize,
    /// NATS URL; default: a managed local nats-server.
    #[arg(long)]
    pub nats: Option<String>,
}

pub(crate) fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Runs the benchmark and prints a summary.
pub async fn run(args: BenchBlocksArgs) -> anyhow::Result<()> {
    let bn = BenchNode::start_with(None, args.nats.clone(), true, |c| {
        c.builder.enabled = false;
    })
    .await?;
    let tmp = tempfile::tempdir()?;
    let gateway = bn
        .node
        .gateway()
        .ok_or_else(|| anyhow::anyhow!("the bench node has no gateway"))?
        .clone();
    let directory = bn
        .node
        .directory()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the bench node runs no directory"))?;
    say!(
        "blockpost bench blocks: {} messages ({}-byte bodies) through the gateway, then the builder on the full firehose",
        args.messages,
        args.body
    );

    let mut dir = Client::connect(&bn.endpoint, &tmp.path().join("client")).await?;
    let senders = register_senders(&mut dir, args.senders).await?;
    let rid = Identity::generate();
    dir.register(&rid, "receiver", "Receiver AG", None).await?;
    gateway
        .replica()
        .wait_applied(directory.size(), Duration::from_secs(10))
        .await;

    // 1. The gateway fills the firehose.
    let mut accepted: Vec<Accepted> = Vec::with_capacity(args.messages);
    let mut envelope_bytes = 0u64;
    let mut submit_time = Duration::ZERO;
    let mut errors = 0;
    let mut done = 0;
    while done < args.messages {
        let n = args.round.max(1).min(args.messages - done);
        let envs = presign(&senders, done, n, args.body, None);
        envelope_bytes += envs.iter().map(|e| e.encoded_len() as u64).sum::<u64>();
        let t = Instant::now();
        let (_, _, e, a) = submit_all(&dir.channel(), envs, args.streams, 0).await?;
        submit_time += t.elapsed();
        errors += e;
        accepted.extend(a);
        done += n;
    }
    let gateway_rate = accepted.len() as f64 / submit_time.as_secs_f64();
    // The limit, measured in the same run right after.
    let (single, batch) = tokio::task::spawn_blocking(super::messages::raw_verify).await?;
    say!(
        "gateway (builder off): {} accepted at {gateway_rate:.0} msgs/s, {errors} errors; {:.0} bytes per envelope ({:.2}x one core's strict verification, the gateway's rule, {single:.0}/s; {:.2}x its batch verification, {batch:.0}/s)",
        accepted.len(),
        envelope_bytes as f64 / accepted.len().max(1) as f64,
        gateway_rate / single,
        gateway_rate / batch
    );
    let last = u64::try_from(accepted.len())?;

    // 2. The builder on the full firehose.
    let ledger_dir = tmp.path().join("ledger");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let parts = |key: &ed25519_dalek::SigningKey| BuilderParts {
        key: key.clone(),
        dir: ledger_dir.clone(),
        origin: directory.info().origin,
        firehose_mac: Some(gateway.firehose_mac()),
        delivery_key: None,
    };
    let start = |key: &ed25519_dalek::SigningKey| {
        Builder::start(
            BuilderConfig::default(),
            parts(key),
            directory.namespace(),
            bn.node.config().messaging.limits(),
            gateway.shared_replica(),
            Arc::new(SystemClock),
            bn.node.nats().clone(),
        )
    };
    let pb = indicatif::ProgressBar::new(last);
    let t = Instant::now();
    let builder = start(&key).await?;
    while builder.last_sequence() < last {
        pb.set_position(builder.last_sequence());
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "the builder has {} of {last} messages in blocks after 10 minutes",
            builder.last_sequence()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let build = t.elapsed();
    pb.finish_and_clear();
    let build_rate = last as f64 / build.as_secs_f64();
    say!(
        "builder: {last} messages into {} signed, durable, indexed blocks in {:.2} s: {build_rate:.0} msgs/s ({:.1}x the gateway); {} refused",
        builder.height(),
        build.as_secs_f64(),
        build_rate / gateway_rate,
        builder.refused()
    );

    // 3. What it stored.
    let blocks = dir_size(&ledger_dir.join("blocks"));
    let ledger = dir_size(&ledger_dir.join("ledger"));
    let index = dir_size(&ledger_dir.join("index"));
    let maps = dir_size(&ledger_dir.join("maps"));
    // The index's journal is bounded (64 MiB at most), not a cost per message.
    let journal: u64 = std::fs::read_dir(ledger_dir.join("index"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
                .map(|e| dir_size(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    let per = |b: u64| b as f64 / envelope_bytes as f64;
    say!(
        "stored per message, against the envelope's own size: blocks {:.3}x, ledger log {:.4}x, indexes {:.3}x (of which their journal {:.3}x), block maps {:.3}x, total {:.3}x ({:.1} MB for {:.1} MB of envelopes)",
        per(blocks),
        per(ledger),
        per(index),
        per(journal),
        per(maps),
        per(blocks + ledger + index + maps),
        (blocks + ledger + index + maps) as f64 / 1e6,
        envelope_bytes as f64 / 1e6
    );

    // 4. Reopen: the store is checked, the index is not rebuilt.
    drop(builder);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let builder = start(&key).await?;
    say!(
        "reopen of the {}-block store: {:.2} s (blocks read and their ids checked; the index loaded, not rebuilt)",
        builder.height(),
        t.elapsed().as_secs_f64()
    );

    // 5. Look-ups, each verified by the client, over gRPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(directory.clone().into_service())
            .add_service(builder.clone().into_service())
            .serve_with_incoming(futures::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            )),
    );
    let state = tmp.path().join("lookups");
    let c = Client::connect(&endpoint, &state).await?;
    let mut l = Ledger::connect(&c, &state).await?;
    let mut sample: Vec<[u8; 32]> = accepted.iter().map(|(id, _, _)| *id).collect();
    sample.shuffle(&mut rand::thread_rng());
    sample.truncate(args.lookups);
    // The server's part in process: located, read through the block's map, its path
    // checked against the signed root, the ledger proof made (no gRPC, no client checks).
    {
        use blockpost_proto::v1::ledger_server::Ledger as _;
        let mut lat = Vec::with_capacity(sample.len());
        for id in &sample {
            let t = Instant::now();
            let r = builder
                .get_message(tonic::Request::new(
                    blockpost_proto::v1::GetMessageRequest {
                        message_id: id.to_vec(),
                        witnessed: false,
                    },
                ))
                .await?;
            lat.push(t.elapsed());
            std::hint::black_box(r);
        }
        lat.sort();
        say!(
            "look-up of a message with its proofs, in process (what the server does): p50 {:.3} ms  p99 {:.3} ms  ({} look-ups)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.len()
        );
    }
    let mut lat = Vec::with_capacity(sample.len());
    for id in &sample {
        let t = Instant::now();
        l.message(*id).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    say!(
        "look-up of a message with its proofs, verified (header, chain link, inclusion, ledger): p50 {:.2} ms  p99 {:.2} ms  ({} look-ups)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );
    // The bench's transactions are tx-0, tx-1, ... with four messages each.
    let txs = accepted.len().div_ceil(4).max(1);
    let mut lat = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let tx = format!("tx-{}", rand::random::<usize>() % txs);
        let t = Instant::now();
        let found = l.transaction(&tx).await?;
        lat.push(t.elapsed());
        anyhow::ensure!(!found.messages.is_empty(), "{tx} has no message");
    }
    lat.sort();
    say!(
        "look-up of a transaction (4 messages) with every proof, verified: p50 {:.2} ms  p99 {:.2} ms  ({} look-ups)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );
    server.abort();
    drop(l);
    drop(builder);
    bn.stop().await;
    Ok(())
}
