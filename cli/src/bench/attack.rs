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
        "[directory]\nunverified_per_peer_per_minute = 0\nunverified_per_second = 0\n",
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .env("BLOCKPOST_CONFIG_DIR", tmp.path().join("client"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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

        // 2. GetEntries over the whole log from every attacker at once.
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

        // 3. 8.5 MB envelopes from an unknown sender.
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

        // 4. Envelopes at the largest valid size from an unknown sender.
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

        // 5. Registrations padded with 95 KiB of unknown fields.
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
