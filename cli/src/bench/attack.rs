//! `blockpost bench attack`: the node's memory under the attacks of the hardening issue.
//!
//! The node runs in its own process (`blockpost up`, spawned from this binary, with its
//! managed nats-server), so that its resident memory (VmRSS in `/proc/PID/status`, sampled
//! every 50 ms) is the node's alone. Each attack runs for a while; the table shows the
//! node's peak memory during it, its memory a few seconds after it, and what the node
//! answered.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blockpost_core::{Identity, now_ms, sign_envelope};
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{EnvelopeContent, GetEntriesRequest, MessageKind, SignedRequest};
use prost::Message as _;
use tonic::transport::Channel;

use crate::say;

/// Flags of `blockpost bench attack`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchAttackArgs {
    /// Idle connections to open (the node holds at most its connection limit and closes
    /// silent ones after its handshake timeout).
    #[arg(long, default_value_t = 20_000)]
    pub idle: usize,
    /// Seconds each request flood lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent attackers per flood.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Rounds of all attacks: memory that does not grow from one round to the next is
    /// bounded, whatever the allocator keeps for reuse.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Directory entries registered before the floods (what `GetEntries` pages over).
    #[arg(long, default_value_t = 3000)]
    pub entries: usize,
    /// Firehose streams opened and never read, in the followers attack.
    #[arg(long, default_value_t = 200)]
    pub followers: usize,
    /// Run only these attacks (repeatable): idle, entries, huge, big, padded, followers,
    /// oversized. Default: all.
    #[arg(long = "only", value_name = "ATTACK")]
    pub only: Vec<String>,
    /// Run the node from this `blockpost` binary instead of this one (an older build, for
    /// a before-and-after table in one run).
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<std::path::PathBuf>,
}

impl BenchAttackArgs {
    fn runs(&self, attack: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|a| a == attack)
    }
}

/// The node's resident memory, sampled.
struct Rss {
    pid: u32,
    peak: AtomicU64,
}

impl Rss {
    fn now(&self) -> u64 {
        read_status(self.pid, "VmRSS:").unwrap_or(0)
    }

    fn reset_peak(&self) {
        self.peak.store(self.now(), Ordering::Relaxed);
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.now())
    }
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn read_status(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

struct NodeProcess {
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

struct Row {
    round: usize,
    attack: String,
    answers: String,
    peak: u64,
    after: u64,
}

/// Runs the attacks and prints the table.
pub async fn run(args: BenchAttackArgs) -> anyhow::Result<()> {
    if !std::path::Path::new("/proc/self/status").exists() {
        anyhow::bail!("bench attack reads the node's memory from /proc: Linux only");
    }
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let tmp = tempfile::tempdir()?;
    let port = blockpost_node::free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    // No limit on unverified registrations: the log is filled with thousands of them
    // before the floods.
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\nunverified_per_peer_per_minute = 0\nunverified_per_second = 0\n\
             [messaging]\nmax_followers_per_peer = {}\n",
            args.followers.max(1)
        ),
    )?;
    let bin = match &args.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let data = tmp.path().join("data");
    let mut cmd = Command::new(bin);
    cmd.args(["up", "--listen", &format!("127.0.0.1:{port}")]);
    // An older build (--node-bin) knows no such limit, nor the keys that turn it off.
    if args.node_bin.is_none() {
        cmd.arg("--config").arg(&config);
    }
    let child = cmd
        .arg("--data")
        .arg(&data)
        .env("BLOCKPOST_CONFIG_DIR", tmp.path().join("client"))
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("BLOCKPOST_BENCH_NODE_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        })
        .spawn()
        .context("starting the node")?;
    let node = NodeProcess { child, _tmp: tmp };
    let pid = node.child.id();
    let channel = connect(&endpoint).await?;
    let rss = Arc::new(Rss {
        pid,
        peak: AtomicU64::new(0),
    });
    let sampler = {
        let rss = rss.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(50));
            loop {
                t.tick().await;
                rss.peak.fetch_max(rss.now(), Ordering::Relaxed);
            }
        })
    };
    say!("node pid {pid} on {endpoint}; this process may open {nofile} files");

    // Fill the log, then measure the baseline.
    let mut dir = DirectoryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let t = Instant::now();
    fill(&mut dir, args.entries).await?;
    say!(
        "registered {} participants in {:.1} s",
        args.entries,
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss.now();
    let mut rows = Vec::new();
    let settle = Duration::from_secs(3);

    for round in 1..=args.rounds.max(1) {
        // 1. Idle connections: opened and held, sending nothing.
        if args.runs("idle") {
            rss.reset_peak();
            let mut conns = Vec::new();
            let mut failed = 0usize;
            let mut peak_fds = 0;
            // This process needs files of its own too.
            let idle = args
                .idle
                .min(usize::try_from(nofile.saturating_sub(256)).unwrap_or(usize::MAX));
            for i in 0..idle {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(c) => conns.push(c),
                    Err(_) => failed += 1,
                }
                if i % 1000 == 0 {
                    peak_fds = peak_fds.max(open_fds(pid));
                }
            }
            // Hold them past the node's handshake timeout (10 s by default).
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                peak_fds = peak_fds.max(open_fds(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let fds_after_timeout = open_fds(pid);
            // A real client still gets through while they are held.
            let served = DirectoryClient::new(connect(&endpoint).await?)
                .get_info(blockpost_proto::v1::GetInfoRequest {})
                .await
                .is_ok();
            drop(conns);
            rows.push(Row {
            round,
            attack: format!("{idle} idle connections, held 12 s"),
            answers: format!(
                "{failed} not accepted; node files: peak {peak_fds}, {fds_after_timeout} after its handshake timeout; a new client {}",
                if served { "served" } else { "NOT served" }
            ),
            peak: rss.peak(),
            after: after(&rss, settle).await,
        });
        }

        // 2. GetEntries over the whole log from every attacker at once.
        if args.runs("entries") {
            rss.reset_peak();
            let size = args.entries as u64;
            let (n, bytes, codes) = flood(args.concurrency, args.seconds, {
                let channel = channel.clone();
                move || {
                    let mut c =
                        DirectoryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
                    async move {
                        c.get_entries(GetEntriesRequest {
                            start: 0,
                            end: size,
                        })
                        .await
                        .map(|r| r.into_inner().entries.iter().map(Vec::len).sum::<usize>())
                    }
                }
            })
            .await;
            rows.push(Row {
                round,
                attack: format!("GetEntries(0, {size}) x{}", args.concurrency),
                answers: format!("{n} calls, {} MiB sent, {}", bytes >> 20, fmt_codes(&codes)),
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }

        // 3. 8.5 MB envelopes from an unknown sender.
        if args.runs("huge") {
            rss.reset_peak();
            let huge = envelope(8_500_000);
            let (n, _, codes) = flood(args.concurrency, args.seconds, {
                let channel = channel.clone();
                move || {
                    let mut m = MessagingClient::new(channel.clone())
                        .max_encoding_message_size(usize::MAX)
                        .max_decoding_message_size(usize::MAX);
                    let e = huge.clone();
                    async move { m.submit(e).await.map(|_| 0) }
                }
            })
            .await;
            rows.push(Row {
                round,
                attack: format!("8.5 MB envelopes, unknown sender x{}", args.concurrency),
                answers: format!("{n} calls, {}", fmt_codes(&codes)),
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }

        // 4. Envelopes at the largest valid size from an unknown sender.
        if args.runs("big") {
            rss.reset_peak();
            let big = envelope(96 * 1024);
            let (n, _, codes) = flood(args.concurrency, args.seconds, {
                let channel = channel.clone();
                move || {
                    let mut m = MessagingClient::new(channel.clone());
                    let e = big.clone();
                    async move { m.submit(e).await.map(|_| 0) }
                }
            })
            .await;
            rows.push(Row {
                round,
                attack: format!("96 KiB envelopes, unknown sender x{}", args.concurrency),
                answers: format!("{n} calls, {}", fmt_codes(&codes)),
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }

        // 5. Registrations padded with 95 KiB of unknown fields.
        if args.runs("padded") {
            rss.reset_peak();
            let (n, _, codes) = flood(args.concurrency, args.seconds, {
                let channel = channel.clone();
                move || {
                    let mut c = DirectoryClient::new(channel.clone());
                    let r = padded_registration();
                    async move { c.register(r).await.map(|_| 0) }
                }
            })
            .await;
            rows.push(Row {
                round,
                attack: format!(
                    "registrations padded with 95 KiB of unknown fields x{}",
                    args.concurrency
                ),
                answers: format!("{n} calls, {}", fmt_codes(&codes)),
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }

        // 6. Firehose followers that never read, while the node goes on with its own work.
        if args.runs("followers") {
            rss.reset_peak();
            let answers = followers(&endpoint, &channel, &data, args.followers, round).await?;
            rows.push(Row {
                round,
                attack: format!("{} firehose followers that never read", args.followers),
                answers,
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }

        // 7. The largest finish after 32 small ones: its block holds its closing record.
        if args.runs("oversized") {
            rss.reset_peak();
            let answers = oversized(&channel, round).await?;
            rows.push(Row {
                round,
                attack: "33 parties: 32 small finishes, then the largest one".into(),
                answers,
                peak: rss.peak(),
                after: after(&rss, settle).await,
            });
        }
    }
    sampler.abort();

    let entries = dir
        .get_checkpoint(blockpost_proto::v1::GetCheckpointRequest {})
        .await
        .map(|c| String::from_utf8_lossy(&c.into_inner().checkpoint).into_owned())
        .unwrap_or_default();
    let size_line = entries.lines().nth(1).unwrap_or("?");
    say!("");
    say!(
        "node memory (VmRSS): baseline {} with {} entries",
        mib(baseline),
        args.entries
    );
    say!(
        "{:<5} {:<58} {:>9} {:>9}  answers",
        "round",
        "attack",
        "peak",
        "after 3 s"
    );
    for r in &rows {
        say!(
            "{:<5} {:<58} {:>9} {:>9}  {}",
            r.round,
            r.attack,
            mib(r.peak),
            mib(r.after),
            r.answers
        );
    }
    say!("log size after the attacks: {size_line} (nothing padded was stored)");
    Ok(())
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(endpoint.to_owned())?.connect().await {
            Ok(c) => {
                if DirectoryClient::new(c.clone())
                    .get_info(blockpost_proto::v1::GetInfoRequest {})
                    .await
                    .is_ok()
                {
                    return Ok(c);
                }
            }
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("the node at {endpoint} did not come up: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn after(rss: &Rss, settle: Duration) -> u64 {
    tokio::time::sleep(settle).await;
    rss.now()
}

fn fmt_codes(codes: &BTreeMap<String, u64>) -> String {
    codes
        .iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `concurrency` loops of `call` for `seconds`; returns calls, bytes answered and the
/// answers by status code.
async fn flood<F, Fut>(
    concurrency: usize,
    seconds: u64,
    call: F,
) -> (u64, u64, BTreeMap<String, u64>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<usize, tonic::Status>> + Send,
{
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut n, mut bytes) = (0u64, 0u64);
                let mut codes = BTreeMap::new();
                while Instant::now() < until {
                    let code = match call().await {
                        Ok(b) => {
                            bytes += b as u64;
                            "OK".to_owned()
                        }
                        Err(s) => {
                            if std::env::var_os("BLOCKPOST_BENCH_DEBUG").is_some() {
                                eprintln!("{:?}: {}", s.code(), s.message());
                            }
                            format!("{:?}", s.code())
                        }
                    };
                    *codes.entry(code).or_insert(0) += 1;
                    n += 1;
                }
                (n, bytes, codes)
            })
        })
        .collect();
    let (mut n, mut bytes, mut codes) = (0, 0, BTreeMap::new());
    for t in tasks {
        if let Ok((a, b, c)) = t.await {
            n += a;
            bytes += b;
            for (k, v) in c {
                *codes.entry(k).or_insert(0) += v;
            }
        }
    }
    (n, bytes, codes)
}

async fn fill(dir: &mut DirectoryClient<Channel>, n: usize) -> anyhow::Result<()> {
    let reqs = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(super::directory::signed_register)
            .collect::<Vec<_>>()
    })
    .await?;
    let mut tasks = Vec::new();
    for chunk in reqs.chunks(n.div_ceil(16).max(1)) {
        let mut c = dir.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for r in chunk {
                c.register(r).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A signed envelope of `body` bytes from a sender the directory does not know.
fn envelope(body: usize) -> blockpost_proto::v1::Envelope {
    let id = Identity::generate();
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: "nobody-here".into(),
        sender_key_index: 0,
        recipients: vec!["nobody-there".into()],
        transaction_id: "attack".into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: now_ms(),
        nonce: rand::random(),
        body: Some(Body::Plaintext(vec![b'x'; body])),
    };
    sign_envelope(&id.signing, c.encode_to_vec())
}

/// A validly signed registration whose body carries 95 KiB in an unknown field (99).
fn padded_registration() -> SignedRequest {
    let id = Identity::generate();
    let mut body = blockpost_proto::v1::RegisterBody {
        lei: Default::default(),
        address: format!("pad-{}", rand::random::<u32>()),
        real_name: "Padded Participant AG".into(),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: Vec::new(),
        timestamp_ms: now_ms(),
    }
    .encode_to_vec();
    prost::encoding::bytes::encode(99, &vec![0u8; 95 * 1024], &mut body);
    SignedRequest {
        signature: blockpost_core::Operation::Register.sign(&id.signing, &body),
        body,
        second_signature: Vec::new(),
    }
}

/// Registers a participant with a key this bench keeps: its leaf index.
async fn register_known(
    dir: &mut DirectoryClient<Channel>,
    id: &Identity,
    address: &str,
) -> anyhow::Result<u64> {
    let body = blockpost_proto::v1::RegisterBody {
        lei: Default::default(),
        address: address.into(),
        real_name: format!("{address} AG"),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: Vec::new(),
        timestamp_ms: now_ms(),
    }
    .encode_to_vec();
    let r = dir
        .register(SignedRequest {
            signature: blockpost_core::Operation::Register.sign(&id.signing, &body),
            body,
            second_signature: Vec::new(),
        })
        .await
        .with_context(|| format!("registering {address}"))?;
    Ok(r.into_inner().proof.map_or(0, |p| p.leaf_index))
}

/// A signed envelope of `kind` from a registered sender.
fn known_envelope(
    id: &Identity,
    from: &str,
    index: u64,
    to: &[String],
    tx: &str,
    kind: MessageKind,
    body: usize,
) -> blockpost_proto::v1::Envelope {
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: from.into(),
        sender_key_index: index,
        recipients: to.to_vec(),
        transaction_id: tx.into(),
        kind: kind as i32,
        content_type: "application/octet-stream".into(),
        timestamp_ms: now_ms(),
        nonce: rand::random::<u64>() | (1 << 63),
        body: Some(Body::Plaintext(vec![b'x'; body])),
    };
    sign_envelope(&id.signing, c.encode_to_vec())
}

/// Submits until it is receipted (a just-registered sender may be unknown to the gateway
/// for a moment), for at most `limit`: how long it took, or the last refusal.
async fn submit_until_receipted(
    m: &mut MessagingClient<Channel>,
    env: &blockpost_proto::v1::Envelope,
    limit: Duration,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        match m.submit(env.clone()).await {
            Ok(_) => return Ok(t.elapsed()),
            Err(s) if t.elapsed() < limit => {
                if s.code() != tonic::Code::NotFound && s.code() != tonic::Code::Unavailable {
                    return Err(format!("{:?}: {}", s.code(), s.message()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// Waits until the message is in a block: how long it took.
async fn in_block(channel: &Channel, id: [u8; 32], limit: Duration) -> Option<Duration> {
    let mut l = blockpost_proto::v1::ledger_client::LedgerClient::new(channel.clone())
        .max_decoding_message_size(128 << 20);
    let t = Instant::now();
    while t.elapsed() < limit {
        let r = l
            .get_message(blockpost_proto::v1::GetMessageRequest {
                message_id: id.to_vec(),
                witnessed: false,
            })
            .await;
        if r.is_ok() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Lines of the managed nats-server's log that report a slow consumer.
fn slow_consumer_events(data: &std::path::Path) -> usize {
    std::fs::read_to_string(data.join("nats").join("nats-server.log"))
        .map_or(0, |l| l.matches("Slow Consumer").count())
}

/// Opens `n` firehose streams from sequence 1 that never read (over several connections),
/// then registers a newcomer and sends 256 messages: how the node answered.
async fn followers(
    endpoint: &str,
    channel: &Channel,
    data: &std::path::Path,
    n: usize,
    round: usize,
) -> anyhow::Result<String> {
    let mut dir = DirectoryClient::new(channel.clone());
    let mut m = MessagingClient::new(channel.clone());
    let (a, b) = (Identity::generate(), Identity::generate());
    let (an, bn) = (format!("fa-{round}"), format!("fb-{round}"));
    let ai = register_known(&mut dir, &a, &an).await?;
    register_known(&mut dir, &b, &bn).await?;
    let to = vec![bn.clone()];
    // Something to follow: 400 messages of 16 KiB.
    let fill = known_envelope(&a, &an, ai, &to, "fill", MessageKind::Message, 16 << 10);
    submit_until_receipted(&mut m, &fill, Duration::from_secs(20))
        .await
        .map_err(|e| anyhow::anyhow!("filling the firehose: {e}"))?;
    for i in 0..399 {
        let e = known_envelope(
            &a,
            &an,
            ai,
            &to,
            &format!("fill-{i}"),
            MessageKind::Message,
            16 << 10,
        );
        m.submit(e).await?;
    }
    let slow_before = slow_consumer_events(data);
    let mut streams = Vec::new();
    let mut refused = BTreeMap::new();
    for chunk in 0..n.div_ceil(50) {
        let mut c = MessagingClient::new(connect(endpoint).await?);
        for _ in 0..50.min(n - chunk * 50) {
            match c
                .firehose(blockpost_proto::v1::FirehoseRequest {
                    from_sequence: 1,
                    follow: true,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => streams.push(s.into_inner()),
                Err(s) => *refused.entry(format!("{:?}", s.code())).or_insert(0u64) += 1,
            }
        }
    }
    // The node's own work while they stall: a newcomer registers and sends at once.
    let newcomer = Identity::generate();
    let nn = format!("newcomer-{round}");
    let t = Instant::now();
    let ni = register_known(&mut dir, &newcomer, &nn).await?;
    let first = known_envelope(&newcomer, &nn, ni, &to, &nn, MessageKind::Message, 64);
    let known = submit_until_receipted(&mut m, &first, Duration::from_secs(30)).await;
    let registered_and_sent = t.elapsed();
    let mut codes = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for i in 0..256 {
        let e = known_envelope(
            &a,
            &an,
            ai,
            &to,
            &format!("during-{round}-{i}"),
            MessageKind::Message,
            64,
        );
        let t = Instant::now();
        let code = match tokio::time::timeout(Duration::from_secs(15), m.submit(e)).await {
            Ok(Ok(_)) => "OK".to_owned(),
            Ok(Err(s)) => format!("{:?}", s.code()),
            Err(_) => "no answer in 15 s".to_owned(),
        };
        slowest = slowest.max(t.elapsed());
        *codes.entry(code).or_insert(0u64) += 1;
    }
    // The stalled followers: dropped after the node's slow-follower limit (10 s by
    // default; their streams end with RESOURCE_EXHAUSTED), or not. Reading one before
    // would make it a live reader.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let t = Instant::now();
    // Read them all out together, for at most 20 s: a follower the node never drops keeps
    // delivering.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let ends = futures::future::join_all(streams.iter_mut().map(|s| async move {
        loop {
            match tokio::time::timeout_at(until, s.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => break "ended".to_owned(),
                Ok(Err(st)) => break format!("{:?}", st.code()),
                Err(_) => break "still open after 20 s".to_owned(),
            }
        }
    }))
    .await;
    let mut ended = BTreeMap::new();
    for e in ends {
        *ended.entry(e).or_insert(0u64) += 1;
    }
    let drained = t.elapsed();
    let opened = streams.len();
    drop(streams);
    Ok(format!(
        "{opened} opened ({}); newcomer registered and receipted in {} ms ({}); 256 sends during: {}, slowest {} ms; followers ended: {} (read out in {:.1} s); nats-server slow-consumer events: {}",
        if refused.is_empty() {
            "none refused".to_owned()
        } else {
            fmt_codes(&refused)
        },
        registered_and_sent.as_millis(),
        match &known {
            Ok(d) => format!("first try after {} ms", d.as_millis()),
            Err(e) => format!("refused: {e}"),
        },
        fmt_codes(&codes),
        slowest.as_millis(),
        fmt_codes(&ended),
        drained.as_secs_f64(),
        slow_consumer_events(data) - slow_before,
    ))
}

/// 33 parties: 32 send a small `finish` in one transaction, the 33rd the largest envelope
/// the node's bus carries, which finishes it (its block also holds the closing record).
/// Then one more message: are both in blocks?
async fn oversized(channel: &Channel, round: usize) -> anyhow::Result<String> {
    let mut dir = DirectoryClient::new(channel.clone());
    let mut m = MessagingClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let mut parties = Vec::new();
    for i in 0..33 {
        let id = Identity::generate();
        let address = format!("o{round}-{i:02}");
        let index = register_known(&mut dir, &id, &address).await?;
        parties.push((id, address, index));
    }
    let tx = format!("oversized-{round}");
    let last = vec![parties[32].1.clone()];
    for (n, (id, a, i)) in parties[..32].iter().enumerate() {
        let e = known_envelope(id, a, *i, &last, &tx, MessageKind::Finish, 16);
        if n == 0 {
            submit_until_receipted(&mut m, &e, Duration::from_secs(20))
                .await
                .map_err(|e| anyhow::anyhow!("first finish: {e}"))?;
        } else {
            m.submit(e).await?;
        }
    }
    let (id, a, i) = &parties[32];
    // The largest envelope the managed server carries (its max_payload less room for
    // headers), under the default limits: a body sealed to 32 recipients.
    let largest = blockpost_node::MANAGED_MAX_PAYLOAD - blockpost_core::wire::HEADER_ROOM;
    let to: Vec<blockpost_core::SealTo<'_>> = parties[..32]
        .iter()
        .map(|(id, a, i)| blockpost_core::SealTo {
            address: a,
            key_index: *i,
            key: id.encryption_public(),
        })
        .collect();
    let addresses: Vec<String> = to.iter().map(|t| t.address.to_owned()).collect();
    let aad = blockpost_core::body_aad(a, &tx);
    let make = |len: usize| -> anyhow::Result<blockpost_proto::v1::Envelope> {
        let sealed = blockpost_core::seal_body(&to, &vec![b'x'; len], &aad)?;
        let c = EnvelopeContent {
            delivery: None,
            transaction_deadline_ms: None,
            sender: a.clone(),
            sender_key_index: *i,
            recipients: addresses.clone(),
            transaction_id: tx.clone(),
            kind: MessageKind::Finish as i32,
            content_type: "application/octet-stream".into(),
            timestamp_ms: now_ms(),
            nonce: rand::random::<u64>() | (1 << 63),
            body: Some(Body::Encrypted(sealed)),
        };
        Ok(sign_envelope(&id.signing, c.encode_to_vec()))
    };
    // Each byte of plaintext is 32 bytes of envelope: the largest within 32 bytes.
    let mut len = (largest - make(0)?.encoded_len()) / 32;
    while make(len)?.encoded_len() > largest {
        len -= 1;
    }
    let big = make(len)?;
    let size = big.encoded_len();
    let big_id = blockpost_core::message_id(&big);
    let receipt = match m.submit(big).await {
        Ok(_) => "receipted".to_owned(),
        Err(s) => format!("{:?} ({})", s.code(), s.message()),
    };
    let block = in_block(channel, big_id, Duration::from_secs(60)).await;
    let next = known_envelope(
        &parties[0].0,
        &parties[0].1,
        parties[0].2,
        &last,
        &format!("{tx}-after"),
        MessageKind::Message,
        16,
    );
    let next_id = blockpost_core::message_id(&next);
    let next_receipt = match m.submit(next).await {
        Ok(_) => "receipted".to_owned(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    let next_block = in_block(channel, next_id, Duration::from_secs(30)).await;
    let when = |d: Option<Duration>| {
        d.map_or("NOT in a block".to_owned(), |d| {
            format!("in a block after {} ms", d.as_millis())
        })
    };
    Ok(format!(
        "the largest finish ({size} bytes, sealed to 32) {receipt}, {}; the next message {next_receipt}, {}",
        when(block),
        when(next_block),
    ))
}
