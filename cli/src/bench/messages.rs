//! `blockpost bench messages`: accepted envelopes/s and submit-to-receipt latency through
//! the gateway, beside the raw limits measured in the same run (ed25519 verification on one
//! core, JetStream publishing from one client).

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockpost_client::Client;
use blockpost_core::{Identity, SealTo, body_aad, now_ms, seal_body, sign_envelope};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::submit_result::Result as Outcome;
use blockpost_proto::v1::{Envelope, EnvelopeContent, MessageKind, ReceiptBody};
use ed25519_dalek::{Signer as _, SigningKey};
use futures::StreamExt as _;
use prost::Message as _;

use super::BenchNode;
use crate::say;

/// Flags of `blockpost bench messages`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchMessagesArgs {
    /// Envelopes per run (one plaintext run, one encrypted run).
    #[arg(long, default_value_t = 50_000)]
    pub messages: usize,
    /// Concurrent submission streams.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Distinct senders.
    #[arg(long, default_value_t = 32)]
    pub senders: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub body: usize,
    /// NATS URL; default: a managed local nats-server.
    #[arg(long)]
    pub nats: Option<String>,
    /// Also measure latency below saturation, at this offered rate (envelopes/s, all
    /// streams together); 0 skips it.
    #[arg(long, default_value_t = 5_000)]
    pub paced_rate: u64,
    /// Most receipts under one signature (`[messaging] receipt_batch_max`); 1 signs each
    /// receipt alone, as gateways did before receipt batches.
    #[arg(long, default_value_t = blockpost_messaging::MessagingConfig::default().receipt_batch_max)]
    pub receipt_batch: usize,
}

pub(crate) struct Sender {
    pub(crate) id: Identity,
    pub(crate) address: String,
    pub(crate) index: u64,
}

/// Registers `n` senders (`sender-0`, ...) with fresh keys.
pub(crate) async fn register_senders(dir: &mut Client, n: usize) -> anyhow::Result<Vec<Sender>> {
    let mut senders = Vec::new();
    for i in 0..n.max(1) {
        let id = Identity::generate();
        let address = format!("sender-{i}");
        let e = dir
            .register(&id, &address, &format!("Sender {i} AG"), None)
            .await?;
        senders.push(Sender {
            id,
            address,
            index: e.leaf_index,
        });
    }
    Ok(senders)
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Runs the benchmark and prints a summary.
pub async fn run(args: BenchMessagesArgs) -> anyhow::Result<()> {
    let batch = args.receipt_batch;
    let bn = BenchNode::start_with(None, args.nats.clone(), true, |c| {
        c.messaging.receipt_batch_max = batch;
    })
    .await?;
    let tmp = tempfile::tempdir()?;
    let endpoint = bn.endpoint.clone();
    let directory = bn
        .node
        .directory()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the bench node runs no directory"))?;
    let gateway = bn
        .node
        .gateway()
        .ok_or_else(|| anyhow::anyhow!("the bench node has no gateway"))?
        .clone();
    let nats = bn.node.nats().clone();

    say!(
        "blockpost bench messages: {} envelopes x2, {}-byte bodies, {} streams",
        args.messages,
        args.body,
        args.streams
    );
    // Raw limits first, on an idle machine.
    let (single, batch) = tokio::task::spawn_blocking(raw_verify).await?;
    say!(
        "raw ed25519 on one core: {single:.0} verifications/s single, {batch:.0}/s in batches of 64"
    );
    let raw_js = raw_jetstream(&nats, args.body).await?;
    say!(
        "raw JetStream publish from one client: {raw_js:.0} msgs/s (1,000 acks in flight, file storage)"
    );

    // Participants.
    let mut dir = Client::connect(&endpoint, &tmp.path().join("client")).await?;
    let senders = register_senders(&mut dir, args.senders).await?;
    let rid = Identity::generate();
    let r = dir.register(&rid, "receiver", "Receiver AG", None).await?;
    let applied = directory.size();
    gateway
        .replica()
        .wait_applied(applied, Duration::from_secs(10))
        .await;
    let channel = dir.channel();

    for encrypted in [false, true] {
        let t = Instant::now();
        let envs = presign(
            &senders,
            0,
            args.messages,
            args.body,
            encrypted.then_some((r.leaf_index, rid.encryption_public())),
        );
        say!(
            "pre-signed {} {} envelopes in {:.2} s",
            envs.len(),
            if encrypted { "encrypted" } else { "plaintext" },
            t.elapsed().as_secs_f64()
        );
        let stages = gateway.stage_times();
        let cpu = super::cpu_by_thread();
        let (rate, lat, errors, accepted) = submit_all(&channel, envs, args.streams, 0).await?;
        let cpu_after = super::cpu_by_thread();
        say!(
            "{:<10} accepted {rate:>8.0} msgs/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {errors}  ({:.2}x one core's strict verification, the gateway's rule; {:.2}x its batch verification)",
            if encrypted { "encrypted" } else { "plaintext" },
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            rate / single,
            rate / batch
        );
        super::say_cpu(&cpu, &cpu_after, accepted.len(), "envelope");
        let n = accepted.len().max(1) as f64;
        let spent: Vec<String> = gateway
            .stage_times()
            .iter()
            .zip(&stages)
            .map(|((name, after), (_, before))| {
                format!(
                    "{name} {:.2} ms",
                    (*after - *before).as_secs_f64() * 1e3 / n
                )
            })
            .collect();
        say!(
            "{:<10} a submission's time in the gateway, mean by stage: {}",
            "",
            spent.join(", ")
        );
        let (receipts, signatures) = gateway.receipt_signatures();
        say!(
            "{:<10} receipts signed so far: {receipts} under {signatures} signatures ({:.1} a signature)",
            "",
            receipts as f64 / signatures.max(1) as f64
        );
        report_blocks(&bn, &accepted).await?;
    }
    if args.paced_rate > 0 {
        for encrypted in [false, true] {
            let n = (args.paced_rate as usize * 4).min(args.messages);
            let envs = presign(
                &senders,
                0,
                n,
                args.body,
                encrypted.then_some((r.leaf_index, rid.encryption_public())),
            );
            let (rate, lat, errors, accepted) =
                submit_all(&channel, envs, args.streams, args.paced_rate).await?;
            say!(
                "{:<10} paced at {} msgs/s: accepted {rate:>6.0} msgs/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {errors}",
                if encrypted { "encrypted" } else { "plaintext" },
                args.paced_rate,
                pct(&lat, 0.5),
                pct(&lat, 0.99),
            );
            report_blocks(&bn, &accepted).await?;
        }
    }
    bn.stop().await;
    Ok(())
}

/// Prints the merge delay of a run (acceptance to signed, durable block).
async fn report_blocks(bn: &BenchNode, accepted: &[Accepted]) -> anyhow::Result<()> {
    let Some(builder) = bn.node.builder() else {
        return Ok(());
    };
    let (delays, lag, late) = merge_delays(builder, accepted).await?;
    say!(
        "{:<10} merge delay (receipt to signed, durable block): p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms; all in blocks {:.2} s after the run; {late} past their deadline; {} blocks so far",
        "",
        pct(&delays, 0.5),
        pct(&delays, 0.99),
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        lag.as_secs_f64(),
        builder.height()
    );
    Ok(())
}

pub(crate) fn presign(
    senders: &[Sender],
    first: usize,
    n: usize,
    size: usize,
    seal_to: Option<(u64, [u8; 32])>,
) -> Vec<Envelope> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let lo = t * per;
                    let hi = (lo + per).min(n);
                    (lo..hi)
                        .map(|i| {
                            let from = &senders[i % senders.len()];
                            let text = vec![b'x'; size];
                            let tx = format!("tx-{}", (first + i) / 4);
                            let body = match seal_to {
                                None => Body::Plaintext(text),
                                Some((index, key)) => Body::Encrypted(
                                    seal_body(
                                        &[SealTo {
                                            address: "receiver",
                                            key_index: index,
                                            key,
                                        }],
                                        &text,
                                        &body_aad(&from.address, &tx),
                                    )
                                    .unwrap_or_default(),
                                ),
                            };
                            let c = EnvelopeContent {
                                delivery: None,
                                transaction_deadline_ms: None,
                                sender: from.address.clone(),
                                sender_key_index: from.index,
                                recipients: vec!["receiver".into()],
                                transaction_id: tx,
                                kind: MessageKind::Message as i32,
                                content_type: "text/plain".into(),
                                timestamp_ms: now_ms(),
                                nonce: rand::random(),
                                body: Some(body),
                            };
                            sign_envelope(&from.id.signing, c.encode_to_vec())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

pub(crate) async fn submit_all(
    channel: &tonic::transport::Channel,
    envs: Vec<Envelope>,
    streams: usize,
    paced_rate: u64,
) -> anyhow::Result<(f64, Vec<Duration>, usize, Vec<Accepted>)> {
    let streams = streams.max(1);
    let per = envs.len().div_ceil(streams);
    let mut chunks: Vec<Vec<Envelope>> = Vec::new();
    let mut it = envs.into_iter();
    loop {
        let c: Vec<Envelope> = it.by_ref().take(per).collect();
        if c.is_empty() {
            break;
        }
        chunks.push(c);
    }
    let pb = indicatif::ProgressBar::new(chunks.iter().map(|c| c.len() as u64).sum());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut g = MessagingClient::new(channel.clone());
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let n = chunk.len();
            let sent: Arc<std::sync::Mutex<Vec<Instant>>> =
                Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
            let s2 = sent.clone();
            // Paced: envelope i of this stream leaves at start + i * period.
            let period = (paced_rate > 0)
                .then(|| Duration::from_secs_f64(streams as f64 / paced_rate as f64));
            let start = tokio::time::Instant::now();
            let input = futures::stream::iter(chunk.into_iter().enumerate()).then(move |(i, e)| {
                let s2 = s2.clone();
                async move {
                    if let Some(p) = period {
                        tokio::time::sleep_until(start + p * i as u32).await;
                    }
                    s2.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now());
                    e
                }
            });
            let mut out = g.submit_stream(input).await?.into_inner();
            let mut lat = Vec::with_capacity(n);
            let mut accepted = Vec::with_capacity(n);
            let mut errors = 0;
            let mut i = 0;
            while let Some(r) = out.message().await? {
                let at = sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(i)
                    .copied();
                match r.result {
                    Some(Outcome::Receipt(receipt)) => {
                        lat.extend(at.map(|a| a.elapsed()));
                        if let Ok(b) = ReceiptBody::decode(receipt.body.as_slice())
                            && let Ok(id) = <[u8; 32]>::try_from(b.message_id.as_slice())
                        {
                            accepted.push((id, b.accepted_at_ms, b.block_deadline_ms));
                        }
                    }
                    _ => errors += 1,
                }
                i += 1;
                pb.inc(1);
            }
            anyhow::Ok((lat, errors, accepted))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut accepted = Vec::new();
    for task in tasks {
        let (l, e, a) = task.await??;
        lat.extend(l);
        errors += e;
        accepted.extend(a);
    }
    let elapsed = t.elapsed();
    pb.finish_and_clear();
    lat.sort();
    Ok((
        lat.len() as f64 / elapsed.as_secs_f64(),
        lat,
        errors,
        accepted,
    ))
}

/// A receipted envelope: message id, accepted at, block deadline (ms).
pub(crate) type Accepted = ([u8; 32], i64, i64);

/// Waits until the builder put every accepted envelope in a block; returns the merge
/// delays (block time minus acceptance time), how long after the run the last one was in
/// a block, and how many blocks missed their receipt's deadline.
async fn merge_delays(
    builder: &blockpost_builder::Builder,
    accepted: &[Accepted],
) -> anyhow::Result<(Vec<Duration>, Duration, usize)> {
    let t = Instant::now();
    let mut times: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
    let mut delays = Vec::with_capacity(accepted.len());
    let mut late = 0;
    for (id, at, deadline) in accepted {
        let height = loop {
            match builder.locate(id).ok().flatten() {
                Some((h, _)) if h < builder.head().size => break h,
                _ if t.elapsed() > Duration::from_secs(120) => {
                    anyhow::bail!("a receipted message is in no block 120 s after the run")
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let time = match times.get(&height) {
            Some(t) => *t,
            None => {
                let b =
                    blockpost_proto::v1::Block::decode(builder.store().block(height)?.as_slice())?;
                let h = blockpost_proto::v1::BlockHeader::decode(
                    b.header.unwrap_or_default().header.as_slice(),
                )?;
                times.insert(height, h.time_ms);
                h.time_ms
            }
        };
        if time > *deadline {
            late += 1;
        }
        delays.push(Duration::from_millis(u64::try_from(time - at).unwrap_or(0)));
    }
    delays.sort();
    Ok((delays, t.elapsed(), late))
}

pub(crate) fn raw_verify() -> (f64, f64) {
    let keys: Vec<SigningKey> = (0..64u8)
        .map(|i| SigningKey::from_bytes(&[i.wrapping_add(1); 32]))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..64u32)
        .map(|i| [&i.to_be_bytes()[..], &[7u8; 252]].concat())
        .collect();
    let sigs: Vec<ed25519_dalek::Signature> =
        keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(700) {
        for i in 0..64 {
            let _ = std::hint::black_box(vks[i].verify_strict(&msgs[i], &sigs[i]));
        }
        n += 64;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(700) {
        let _ = std::hint::black_box(ed25519_dalek::verify_batch(&refs, &sigs, &vks));
        n += 64;
    }
    (single, n as f64 / t.elapsed().as_secs_f64())
}

async fn raw_jetstream(nats: &async_nats::Client, size: usize) -> anyhow::Result<f64> {
    let js = async_nats::jetstream::new(nats.clone());
    let _ = js.delete_stream("BENCH_RAW").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let total = 50_000;
    let t = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(1000);
    for _ in 0..total {
        acks.push_back(js.publish("bench.raw", payload.clone()).await?);
        if acks.len() >= 1000
            && let Some(a) = acks.pop_front()
        {
            a.await?;
        }
    }
    for a in acks {
        a.await?;
    }
    let rate = f64::from(total) / t.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH_RAW").await;
    Ok(rate)
}
