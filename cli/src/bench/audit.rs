//! `blockpost bench audit`: the auditor against a node in process. The gateway fills the
//! firehose and the builder cuts it into blocks; then an auditor starts on the whole
//! backlog and is timed until it has checked every message and verified every block (its
//! catch-up rate, beside the gateway's accepted rate from the same run). Then, with the
//! auditor current, a second round is submitted while it runs (does it keep up?), and an
//! omission is injected (a receipt the node signed whose message never comes) to time the
//! alert.

use std::time::{Duration, Instant};

use blockpost_auditor::{AlertKind, Auditor, AuditorConfig};
use blockpost_client::Client;
use blockpost_core::Identity;

use super::BenchNode;
use super::messages::{presign, register_senders, submit_all};
use crate::say;

/// Flags of `blockpost bench audit`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchAuditArgs {
    /// Messages in the backlog the auditor catches up on.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Messages submitted while the auditor runs.
    #[arg(long, default_value_t = 20_000)]
    pub live: usize,
    /// Messages signed and submitted per round.
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
    /// Skip the side-by-side with SQLite FTS5.
    #[arg(long)]
    pub no_fts5: bool,
}

/// Submits `n` envelopes in rounds; returns how many were accepted and the rate.
async fn fill(
    channel: &tonic::transport::Channel,
    senders: &[super::messages::Sender],
    first: usize,
    n: usize,
    args: &BenchAuditArgs,
) -> anyhow::Result<(usize, f64)> {
    let mut done = 0;
    let mut accepted = 0;
    let mut time = Duration::ZERO;
    while done < n {
        let k = args.round.max(1).min(n - done);
        let envs = presign(senders, first + done, k, args.body, None);
        let t = Instant::now();
        let (_, _, _, a) = submit_all(channel, envs, args.streams, 0).await?;
        time += t.elapsed();
        accepted += a.len();
        done += k;
    }
    Ok((accepted, accepted as f64 / time.as_secs_f64().max(1e-9)))
}

/// Waits until the auditor has checked `firehose` messages and verified `blocks` blocks,
/// with nothing waiting; returns how long it took.
async fn until_current(
    auditor: &Auditor,
    builder: &blockpost_builder::Builder,
    firehose: u64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let pb = indicatif::ProgressBar::new(firehose);
    loop {
        let s = auditor.status();
        pb.set_position(s.firehose_checked);
        if s.firehose_checked >= firehose
            && s.blocks_verified >= builder.height()
            && s.waiting == 0
            && s.blocks_current
        {
            pb.finish_and_clear();
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "the auditor is at firehose {} of {firehose}, {} of {} blocks, after {limit:?}",
            s.firehose_checked,
            s.blocks_verified,
            builder.height()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the benchmark and prints a summary.
pub async fn run(args: BenchAuditArgs) -> anyhow::Result<()> {
    let bn = BenchNode::start(None, None, true).await?;
    let builder = bn
        .node
        .builder()
        .ok_or_else(|| anyhow::anyhow!("the bench node has no builder"))?
        .clone();
    let tmp = tempfile::tempdir()?;
    say!(
        "blockpost bench audit: {} messages ({}-byte bodies) as a backlog, then {} while the auditor runs",
        args.messages,
        args.body,
        args.live
    );
    let mut dir = Client::connect(&bn.endpoint, &tmp.path().join("client")).await?;
    let senders = register_senders(&mut dir, args.senders).await?;
    let rid = Identity::generate();
    dir.register(&rid, "receiver", "Receiver AG", None).await?;
    let channel = dir.channel();

    // 1. A backlog: the firehose and its blocks.
    let (backlog, gateway_rate) = fill(&channel, &senders, 0, args.messages, &args).await?;
    let last = u64::try_from(backlog)?;
    let t = Instant::now();
    while builder.last_sequence() < last {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "the builder is behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say!(
        "backlog: {backlog} messages accepted at {gateway_rate:.0} msgs/s, in {} blocks",
        builder.height()
    );

    // 2. The auditor catches up on it.
    let reader = bn
        .node
        .reader_credentials()
        .ok_or_else(|| anyhow::anyhow!("the bench node has no managed nats-server"))?;
    let nats = blockpost_node::connect(bn.node.nats_url(), Some(&reader)).await?;
    let config = AuditorConfig::new(bn.endpoint.clone(), tmp.path().join("auditor"));
    let cpu = super::cpu_by_thread();
    let auditor = Auditor::start(config, nats).await?;
    let took = until_current(&auditor, &builder, last, Duration::from_secs(1800)).await?;
    let cpu_after = super::cpu_by_thread();
    say!(
        "catch-up: {backlog} messages checked (envelope rules, sender signature against the verified directory) and {} blocks verified in {:.2} s: {:.0} msgs/s ({:.2}x the gateway's accepted rate)",
        builder.height(),
        took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64() / gateway_rate
    );
    super::say_cpu(&cpu, &cpu_after, backlog, "message caught up");

    // Search on what it verified: a transaction, a sender's name, a time range, a term
    // every message has.
    tokio::time::sleep(Duration::from_millis(600)).await; // the index commits each 250 ms
    let now = blockpost_core::now_ms();
    let mut lat = Vec::new();
    let mut found = 0usize;
    for i in 0..400usize {
        let q = match i % 4 {
            0 => format!("transaction_id:tx-{}", (i * 7919) % (backlog / 4).max(1)),
            1 => format!("sender_name:\"sender {} ag\"", i % args.senders.max(1)),
            2 => format!("time:[{} TO {now}]", now - 1_000 * (i as i64 % 60)),
            // A term every message has (the bench's bodies are one long run of "x",
            // which the tokenizer drops).
            _ => "kind:message".to_owned(),
        };
        let t = Instant::now();
        let hits = auditor
            .search(&q, 10, 0, false)?
            .map_err(|e| anyhow::anyhow!(e))?;
        lat.push(t.elapsed());
        found += hits.len();
    }
    lat.sort();
    let search_bytes = super::blocks::dir_size(&tmp.path().join("auditor").join("search"));
    say!(
        "search on {backlog} messages (transaction id, sender name, time range, a term in every message; top 10): p50 {:.2} ms  p99 {:.2} ms over {} queries ({found} hits); index {:.0} bytes per message",
        super::messages::pct(&lat, 0.5),
        super::messages::pct(&lat, 0.99),
        lat.len(),
        search_bytes as f64 / backlog.max(1) as f64
    );

    // The same corpus in SQLite FTS5, beside a fresh tantivy index of it.
    if !args.no_fts5 {
        let corpus =
            super::fts::corpus(&mut dir, &tmp.path().join("client"), builder.height()).await?;
        let fdir = tmp.path().join("fts");
        std::fs::create_dir_all(&fdir)?;
        let senders = args.senders;
        tokio::task::spawn_blocking(move || super::fts::compare(&corpus, &fdir, senders)).await??;
    }

    // 3. Live: submitted while the auditor runs.
    let t = Instant::now();
    let (live, live_rate) = fill(&channel, &senders, args.messages, args.live, &args).await?;
    let submit = t.elapsed();
    let total = last + u64::try_from(live)?;
    let after = until_current(&auditor, &builder, total, Duration::from_secs(600)).await?;
    say!(
        "live: {live} messages accepted at {live_rate:.0} msgs/s in {:.2} s with the auditor running; it was current {:.2} s after the last receipt ({:.0} msgs/s over the whole round)",
        submit.as_secs_f64(),
        after.as_secs_f64(),
        live as f64 / (submit + after).as_secs_f64()
    );

    // A restart on the same data: it replays the directory and the blocks, and resumes the
    // firehose where it stopped.
    drop(auditor);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader = bn
        .node
        .reader_credentials()
        .ok_or_else(|| anyhow::anyhow!("the bench node has no managed nats-server"))?;
    let nats = blockpost_node::connect(bn.node.nats_url(), Some(&reader)).await?;
    let t = Instant::now();
    let config = AuditorConfig::new(bn.endpoint.clone(), tmp.path().join("auditor"));
    let auditor = Auditor::start(config, nats).await?;
    let resumed =
        t.elapsed() + until_current(&auditor, &builder, total, Duration::from_secs(600)).await?;
    let s = auditor.status();
    say!(
        "restart: current again {:.2} s after the start ({} blocks replayed, {} firehose messages read again of {}, search index kept)",
        resumed.as_secs_f64(),
        s.blocks_verified,
        s.firehose_read,
        s.firehose_checked
    );

    // 4. An injected omission: a receipt the gateway's key signed for a message that never
    // reaches the firehose.
    let key = blockpost_storage::load_or_create_key(
        &blockpost_storage::DataDir::new(&bn.node.config().data_dir).gateway_key(),
    )?;
    let mut lat = Vec::new();
    for i in 0..5u8 {
        let deadline = blockpost_core::now_ms() + 300;
        let body = blockpost_proto::v1::ReceiptBody {
            message_id: vec![i; 32],
            accepted_at_ms: deadline - 300,
            firehose_sequence: u64::MAX - u64::from(i),
            block_deadline_ms: deadline,
            gateway_key: key.verifying_key().to_bytes().to_vec(),
            ..Default::default()
        };
        let receipt = blockpost_core::sign_receipt(&key, &body);
        let mut alerts = auditor.subscribe();
        auditor.check_receipt(&receipt).await?;
        let due = deadline + 1_000; // the default grace
        loop {
            let (_, a) = tokio::time::timeout(Duration::from_secs(10), alerts.recv()).await??;
            if a.kind == AlertKind::Omission && a.evidence["message_id"] == hex::encode([i; 32]) {
                lat.push(blockpost_core::now_ms() - due);
                break;
            }
        }
    }
    lat.sort_unstable();
    say!(
        "omission alert after deadline + grace (1 s): {:?} ms over {} injected receipts (the check runs every 250 ms)",
        lat,
        lat.len()
    );
    let s = auditor.status();
    say!(
        "auditor: {} directory entries, {} blocks, {} firehose messages; {} alerts (the {} injected omissions)",
        s.directory_entries,
        s.blocks_verified,
        s.firehose_checked,
        s.alerts,
        lat.len()
    );
    drop(auditor);
    drop(builder);
    bn.stop().await;
    Ok(())
}
