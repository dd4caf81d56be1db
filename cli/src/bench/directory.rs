//! `blockpost bench directory`: registrations/s with certificate issuance and durable
//! append, and look-up latency on a large directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blockpost_core::{Identity, Operation, now_ms};
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::{LookupRequest, RegisterBody, SignedRequest};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;

use super::BenchNode;
use crate::say;

/// Flags of `blockpost bench directory`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Registrations timed over gRPC.
    #[arg(long, default_value_t = 20_000)]
    pub registrations: usize,
    /// Requests in flight during the registration phase.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Directory size for the look-up phase (filled in process after the timed phase).
    #[arg(long, default_value_t = 100_000)]
    pub prefill: usize,
    /// Look-ups timed.
    #[arg(long, default_value_t = 20_000)]
    pub lookups: usize,
    /// Data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// NATS URL; default: a managed local nats-server.
    #[arg(long)]
    pub nats: Option<String>,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_owned());
    b
}

fn make_requests(from: usize, n: usize) -> Vec<SignedRequest> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let per = n.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let lo = from + t * per;
                    let hi = (lo + per).min(from + n);
                    (lo..hi).map(signed_register).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

pub(crate) fn signed_register(i: usize) -> SignedRequest {
    let id = Identity::generate();
    let body = RegisterBody {
        lei: Default::default(),
        address: format!("bench-{i}"),
        real_name: format!("Bench Participant {i} AG"),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: Vec::new(),
        timestamp_ms: now_ms(),
    }
    .encode_to_vec();
    SignedRequest {
        signature: Operation::Register.sign(&id.signing, &body),
        body,
        second_signature: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_d(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs the directory benchmark and prints a summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // The directory alone: no gateway replaying the log beside it, and no limit on
    // unverified registrations (they are what is timed).
    let bn = BenchNode::start_with(args.data.clone(), args.nats.clone(), false, |c| {
        c.directory.unverified_per_peer_per_minute = 0;
        c.directory.unverified_per_second = 0;
    })
    .await?;
    let dir = bn
        .node
        .directory()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the bench node runs no directory"))?;
    let channel = tonic::transport::Channel::from_shared(bn.endpoint.clone())?
        .connect()
        .await?;
    let start_size = dir.size() as usize;

    say!(
        "blockpost bench directory: {} registrations over gRPC, {} in flight",
        args.registrations,
        args.concurrency
    );
    say!(
        "machine: {} cores; release build recommended (cargo run --release)",
        num_cpus()
    );

    // Phase 1: pre-sign, then register over gRPC.
    let t = Instant::now();
    let reqs = Arc::new(make_requests(start_size, args.registrations));
    say!(
        "pre-signed {} requests in {:.2} s",
        reqs.len(),
        t.elapsed().as_secs_f64()
    );
    let pb = bar(reqs.len(), "registering");
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (reqs, next, pb) = (reqs.clone(), next.clone(), pb.clone());
        let mut client = DirectoryClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = reqs.get(i) else { break };
                let s = Instant::now();
                match client.register(r.clone()).await {
                    Ok(_) => lat.push(s.elapsed()),
                    Err(_) => errors += 1,
                }
                pb.inc(1);
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(reqs.len());
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        lat.extend(l);
        errors += e;
    }
    let reg_elapsed = t.elapsed();
    pb.finish_and_clear();
    lat.sort();
    let reg_rate = lat.len() as f64 / reg_elapsed.as_secs_f64();

    // Phase 2: fill the directory in process, without timing.
    let target = args.prefill.max(dir.size() as usize);
    if (dir.size() as usize) < target {
        let pb = bar(target - dir.size() as usize, "prefilling");
        while (dir.size() as usize) < target {
            let from = dir.size() as usize;
            let n = (target - from).min(20_000);
            let chunk = tokio::task::spawn_blocking(move || make_requests(from, n)).await?;
            let mut set = tokio::task::JoinSet::new();
            let chunk = Arc::new(chunk);
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..256 {
                let (d, chunk, next, pb) = (dir.clone(), chunk.clone(), next.clone(), pb.clone());
                set.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = chunk.get(i) else { break };
                        let _ = d.register(r.clone()).await;
                        pb.inc(1);
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
        pb.finish_and_clear();
    }
    let size = dir.size() as usize;

    // Phase 3: look-ups with proofs, in process and over gRPC.
    let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut pick = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        format!("bench-{}", rng_state as usize % size)
    };
    let mut inproc = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let a = pick();
        let s = Instant::now();
        let r = dir.lookup(&a)?;
        inproc.push(s.elapsed());
        std::hint::black_box(r);
    }
    inproc.sort();
    let mut client = DirectoryClient::new(channel.clone());
    let mut remote = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let a = pick();
        let s = Instant::now();
        client.lookup(LookupRequest { address: a }).await?;
        remote.push(s.elapsed());
    }
    remote.sort();

    // Where the time goes: the per-registration costs, one at a time on one core.
    let costs = tokio::task::spawn_blocking(unit_costs).await?;

    say!();
    say!(
        "registrations    {} ok, {errors} errors in {:.2} s",
        lat.len(),
        reg_elapsed.as_secs_f64()
    );
    say!(
        "  throughput     {reg_rate:.0} registrations/s (verify, certificate, fdatasync'd append, checkpoint, proof)"
    );
    say!(
        "  latency        p50 {}  p99 {}",
        fmt_d(percentile(&lat, 0.5)),
        fmt_d(percentile(&lat, 0.99))
    );
    say!("look-ups         directory of {size} entries");
    say!(
        "  in process     p50 {}  p99 {}",
        fmt_d(percentile(&inproc, 0.5)),
        fmt_d(percentile(&inproc, 0.99))
    );
    say!(
        "  over gRPC      p50 {}  p99 {}",
        fmt_d(percentile(&remote, 0.5)),
        fmt_d(percentile(&remote, 0.99))
    );
    say!("unit costs (one core, per registration)");
    for (what, d) in costs {
        say!("  {what:<26} {:>8.1} us", d.as_secs_f64() * 1e6);
    }
    bn.stop().await;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |p| p.get())
}

fn unit_costs() -> Vec<(&'static str, Duration)> {
    const N: u32 = 2000;
    let key = SigningKey::from_bytes(&[5; 32]);
    let body = vec![7u8; 140];
    let sig = Operation::Register.sign(&key, &body);
    let vk = key.verifying_key();
    let time = |f: &mut dyn FnMut()| {
        let s = Instant::now();
        for _ in 0..N {
            f();
        }
        s.elapsed() / N
    };
    let mut out = vec![
        (
            "client: keygen + sign",
            time(&mut || {
                std::hint::black_box(signed_register(1));
            }),
        ),
        (
            "verify proof of possession",
            time(&mut || {
                std::hint::black_box(Operation::Register.verify(&vk, &body, &sig).is_ok());
            }),
        ),
    ];
    if let Ok(tmp) = tempfile::tempdir()
        && let Ok(ca) = blockpost_directory::bench_support::ca(tmp.path())
    {
        out.push((
            "issue certificate",
            time(&mut || {
                let _ = std::hint::black_box(ca());
            }),
        ));
    }
    out
}
