//! Liveness under attack: the largest message the gateway accepts, with the worst records a
//! block adds beside it, still makes blocks that travel on the bus (on the managed server,
//! on an external one that carries less, and with `max_block_bytes` set low); a stalled
//! builder is reported and the gateway stops promising blocks; a lost bus is answered at
//! once.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use blockpost_core::{Clock as _, Identity, message_id, now_ms, sign_envelope, wire};
use blockpost_node::NodeConfig;
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{Block, Envelope, EnvelopeContent, MessageKind, TransactionStatus};
use blockpost_tests::{NatsServer, Sandbox, reason, wait_for};
use prost::Message as _;
use tonic::Code;

async fn sandbox(max_payload: usize, adjust: impl FnOnce(&mut NodeConfig)) -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let nats = tokio::task::spawn_blocking(move || NatsServer::start_with_max_payload(max_payload))
        .await
        .unwrap()
        .unwrap();
    let mut cfg = NodeConfig::for_test(tmp.path().join("data"), &nats.url());
    // The body limit does not bind here: what the bus and a block carry does.
    cfg.messaging.max_body_len = 16 << 20;
    adjust(&mut cfg);
    Sandbox::start_on(cfg, nats, tmp).await.unwrap()
}

/// An envelope of `kind` from `from` whose plaintext body is `body_len` bytes, stamped `ts`
/// with a nonce whose encoding is always 10 bytes (so that lengths are predictable).
#[allow(clippy::too_many_arguments)]
fn envelope(
    id: &Identity,
    from: &str,
    index: u64,
    to: &[String],
    tx: &str,
    kind: MessageKind,
    body_len: usize,
    ts: i64,
) -> Envelope {
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: from.into(),
        sender_key_index: index,
        recipients: to.to_vec(),
        transaction_id: tx.into(),
        kind: kind as i32,
        content_type: "application/octet-stream".into(),
        timestamp_ms: ts,
        nonce: rand::random::<u64>() | (1 << 63),
        body: Some(Body::Plaintext(vec![b'x'; body_len])),
    };
    sign_envelope(&id.signing, c.encode_to_vec())
}

/// A plain message of `body` bytes from the first of `p` to the second, in `tx`.
fn message(p: &[(Identity, String, u64)], tx: &str, body: usize) -> Envelope {
    let (id, from, index) = &p[0];
    envelope(
        id,
        from,
        *index,
        std::slice::from_ref(&p[1].1),
        tx,
        MessageKind::Message,
        body,
        now_ms(),
    )
}

/// A `finish` from `from` to `to` that encodes to exactly `len` bytes.
fn finish_of_len(
    id: &Identity,
    from: &str,
    index: u64,
    to: &[String],
    tx: &str,
    len: usize,
) -> Envelope {
    let ts = now_ms();
    let make = |n| envelope(id, from, index, to, tx, MessageKind::Finish, n, ts);
    let mut body = len.saturating_sub(make(0).encoded_len());
    loop {
        let e = make(body);
        match e.encoded_len() {
            l if l == len => return e,
            l if l > len => body -= 1,
            _ => body += 1,
        }
    }
}

/// 33 registered parties: (identity, address, leaf index).
async fn parties(sb: &Sandbox, n: usize) -> Vec<(Identity, String, u64)> {
    let mut c = sb.client().await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let id = Identity::generate();
        let address = format!("party-{i:02}");
        let e = c
            .register(&id, &address, &format!("Party {i} AG"), None)
            .await
            .unwrap();
        out.push((id, address, e.leaf_index));
    }
    sb.gateway
        .replica()
        .wait_applied(n as u64, Duration::from_secs(10))
        .await;
    out
}

/// The attack: 32 parties send a small `finish` in one transaction; the 33rd sends
/// the largest envelope the gateway accepts, which finishes it. The block holding it also
/// holds the closing record. Then: every block is on the blocks stream (whole or in
/// parts, each within the bus's max_payload), the transaction is closed, and blocks keep
/// coming for the next message.
async fn the_largest_finish_closes_its_transaction_and_blocks_keep_coming(sb: Sandbox) {
    let max_payload = sb.node.nats().server_info().max_payload;
    let largest = wire::max_envelope_len(max_payload);
    let p = parties(&sb, 33).await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let last = p[32].1.clone();
    for (id, address, index) in &p[..32] {
        let e = envelope(
            id,
            address,
            *index,
            std::slice::from_ref(&last),
            "big",
            MessageKind::Finish,
            16,
            now_ms(),
        );
        m.submit(e).await.unwrap();
    }
    let others: Vec<String> = p[..32].iter().map(|(_, a, _)| a.clone()).collect();
    let (id, address, index) = &p[32];
    // One byte more than the gateway takes is refused for good, before NATS.
    let over = finish_of_len(id, address, *index, &others, "big", largest + 1);
    let st = m.submit(over).await.unwrap_err();
    assert!(
        matches!(st.code(), Code::InvalidArgument | Code::OutOfRange),
        "{st:?}"
    );
    let env = finish_of_len(id, address, *index, &others, "big", largest);
    let big_id = message_id(&env);
    let receipt = m.submit(env).await.unwrap().into_inner();
    assert!(!receipt.signature.is_empty());
    let builder = sb.node.builder().unwrap().clone();
    let (height, _) = wait_for(
        Duration::from_secs(60),
        "the largest message in a block",
        || {
            let b = builder.clone();
            async move { b.locate(&big_id).ok().flatten() }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        builder.transaction_closed("big").unwrap(),
        Some(TransactionStatus::Finished)
    );
    // The block holds the message and, right after it, the closing record.
    let block = Block::decode(builder.store().block(height).unwrap().as_slice()).unwrap();
    assert!(block.encoded_len() > largest, "{}", block.encoded_len());
    assert!(block.encoded_len() <= wire::MAX_BLOCK_LEN);
    // Blocks keep coming: a new message is in a block, and every block is on the stream.
    let next = message(&p, "after", 8);
    let next_id = message_id(&next);
    m.submit(next).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "the next message in a block",
        || {
            let b = builder.clone();
            async move { b.locate(&next_id).ok().flatten() }
        },
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(30), "every block published", || {
        let b = builder.clone();
        async move { (b.published() == b.height()).then_some(()) }
    })
    .await
    .unwrap();
    // What the blocks stream holds joins up into exactly the stored blocks, each message
    // within the bus's max_payload.
    let js = async_nats::jetstream::new(sb.node.nats().clone());
    let ns = sb.directory.namespace();
    let stream = js.get_stream(ns.blocks_stream()).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut parts = wire::BlockParts::default();
    let mut joined = Vec::new();
    let mut in_parts = 0;
    for seq in 1..=last {
        let msg = stream.get_raw_message(seq).await.unwrap();
        assert!(msg.payload.len() <= max_payload - wire::HEADER_ROOM);
        let part = msg
            .headers
            .get(wire::BLOCK_PART_HEADER)
            .map(|v| v.as_str().to_owned());
        in_parts += usize::from(part.is_some());
        if let Some(b) = parts.push(part.as_deref(), &msg.payload) {
            joined.push(b);
        }
    }
    assert!(in_parts >= 2, "the largest block travels in parts");
    assert_eq!(joined.len() as u64, builder.height());
    for (h, b) in joined.iter().enumerate() {
        assert_eq!(b, &builder.store().block(h as u64).unwrap(), "block {h}");
    }
    assert!(builder.health().stalled().is_none());
}

#[tokio::test]
async fn the_largest_message_and_its_closing_travel_on_the_managed_bus() {
    let sb = sandbox(blockpost_node::MANAGED_MAX_PAYLOAD, |_| {}).await;
    the_largest_finish_closes_its_transaction_and_blocks_keep_coming(sb).await;
}

#[tokio::test]
async fn the_largest_message_travels_on_an_external_bus_that_carries_less() {
    // NATS's own default max_payload is 1 MiB.
    let sb = sandbox(1 << 20, |_| {}).await;
    the_largest_finish_closes_its_transaction_and_blocks_keep_coming(sb).await;
}

#[tokio::test]
async fn the_largest_message_travels_with_max_block_bytes_set_low() {
    let sb = sandbox(2 << 20, |c| {
        c.builder.max_block_bytes = 4 << 10;
        c.builder.max_block_messages = 3;
    })
    .await;
    the_largest_finish_closes_its_transaction_and_blocks_keep_coming(sb).await;
}

#[tokio::test]
async fn a_stalled_builder_is_reported_and_the_gateway_stops_promising() {
    let sb = sandbox(blockpost_node::MANAGED_MAX_PAYLOAD, |c| {
        c.builder.stall_after_ms = 1_000;
    })
    .await;
    let p = parties(&sb, 2).await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(sb.channel().await.unwrap());
    let ledger = || tonic_health::pb::HealthCheckRequest {
        service: "blockpost.v1.Ledger".into(),
    };
    let send = |n: u8| message(&p, &format!("tx-{n}"), 8);
    m.submit(send(1)).await.unwrap();
    let builder = sb.node.builder().unwrap().clone();
    wait_for(Duration::from_secs(20), "a first block", || {
        let b = builder.clone();
        async move { (b.height() > 0).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(
        health.check(ledger()).await.unwrap().into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Cutting fails from now on (a fault switch; in the field: a disk that refuses, a
    // bus that refuses its blocks). A message receipted just before waits for its block.
    builder.misbehave_by_failing(true);
    let waiting = send(2);
    let waiting_id = message_id(&waiting);
    m.submit(waiting).await.unwrap();
    let refused = wait_for(Duration::from_secs(20), "receipts refused", || {
        let mut m = m.clone();
        let e = send(3);
        async move { m.submit(e).await.err() }
    })
    .await
    .unwrap();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "BUILDER_STALLED", "{}", refused.message());
    // The operator's view: the message says why the builder stalls.
    assert!(
        refused.message().contains("fault injected"),
        "{}",
        refused.message()
    );
    assert_eq!(
        health.check(ledger()).await.unwrap().into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert!(builder.health().stalled().is_some());
    assert!(builder.locate(&waiting_id).unwrap().is_none());
    // The node's metrics and liveness check say so too, over HTTP.
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = metrics.local_addr().unwrap();
    let served = tokio::spawn(blockpost_node::serve_metrics(sb.node.metrics(), metrics));
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = tokio::net::TcpStream::connect(maddr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    };
    let text = get("/metrics").await;
    assert!(text.contains("\nblockpost_builder_stalled 1\n"), "{text}");
    let h = get("/healthz").await;
    assert!(
        h.starts_with("HTTP/1.1 503") && h.contains("fault injected"),
        "{h}"
    );
    // It recovers: the waiting message gets its block, receipts come again.
    builder.misbehave_by_failing(false);
    wait_for(
        Duration::from_secs(30),
        "the waiting message in a block",
        || {
            let b = builder.clone();
            async move { b.locate(&waiting_id).ok().flatten() }
        },
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(20), "receipts again", || {
        let mut m = m.clone();
        let e = send(4);
        async move { m.submit(e).await.ok() }
    })
    .await
    .unwrap();
    assert_eq!(
        health.check(ledger()).await.unwrap().into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let text = get("/metrics").await;
    assert!(text.contains("\nblockpost_builder_stalled 0\n"), "{text}");
    assert!(text.contains("\nblockpost_builder_active 1\n"), "{text}");
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    served.abort();
}

#[tokio::test]
async fn a_submission_is_answered_within_a_second_once_the_bus_is_gone() {
    let mut sb = sandbox(blockpost_node::MANAGED_MAX_PAYLOAD, |_| {}).await;
    let p = parties(&sb, 2).await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let make = |n: u8| message(&p, &format!("bus-{n}"), 8);
    m.submit(make(0)).await.unwrap();
    sb.nats.kill();
    let t = Instant::now();
    let st = m.submit(make(1)).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    tokio::task::spawn_blocking(move || sb.nats.restart().map(|()| sb))
        .await
        .unwrap()
        .unwrap();
}

/// Consumers on the firehose stream now, but the builder's.
async fn firehose_consumers(sb: &Sandbox) -> usize {
    use futures::TryStreamExt as _;
    let js = async_nats::jetstream::new(sb.node.nats().clone());
    let st = js
        .get_stream(sb.directory.namespace().firehose_stream())
        .await
        .unwrap();
    let names: Vec<String> = st.consumer_names().try_collect().await.unwrap();
    names.iter().filter(|n| !n.starts_with("builder-")).count()
}

fn follow_from(seq: u64) -> blockpost_proto::v1::FirehoseRequest {
    blockpost_proto::v1::FirehoseRequest {
        from_sequence: seq,
        follow: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn followers_are_capped_and_cleaned_up_as_soon_as_they_go() {
    let sb = sandbox(blockpost_node::MANAGED_MAX_PAYLOAD, |c| {
        c.messaging.max_followers = 4;
        c.messaging.max_followers_per_peer = 3;
    })
    .await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let base = 0;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(m.firehose(follow_from(1)).await.unwrap().into_inner());
    }
    let st = m.firehose(follow_from(1)).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert_eq!(reason(&st), "TOO_MANY_FOLLOWERS", "{}", st.message());
    assert!(st.message().contains("one peer"), "{}", st.message());
    assert_eq!(sb.gateway.followers().0, 3);
    assert_eq!(firehose_consumers(&sb).await, base + 3);
    // Clients that go away are noticed at once, with no firehose message coming.
    open.truncate(1);
    wait_for(Duration::from_secs(5), "followers cleaned up", || async {
        (sb.gateway.followers().0 == 1 && firehose_consumers(&sb).await == base + 1).then_some(())
    })
    .await
    .unwrap();
    // And their places are free again.
    open.push(m.firehose(follow_from(1)).await.unwrap().into_inner());
    // A follower whose consumer is gone (deleted, a server restart) ends with UNAVAILABLE,
    // at once, and its place is free: it does not pull in a loop.
    {
        use futures::TryStreamExt as _;
        let js = async_nats::jetstream::new(sb.node.nats().clone());
        let st = js
            .get_stream(sb.directory.namespace().firehose_stream())
            .await
            .unwrap();
        let names: Vec<String> = st.consumer_names().try_collect().await.unwrap();
        for n in names.iter().filter(|n| !n.starts_with("builder-")) {
            st.delete_consumer(n).await.unwrap();
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), open[0].message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    wait_for(
        Duration::from_secs(15),
        "followers whose consumers are gone end",
        || async { (sb.gateway.followers().0 == 0).then_some(()) },
    )
    .await
    .unwrap();
    drop(open);
    wait_for(Duration::from_secs(5), "every follower gone", || async {
        (sb.gateway.followers().0 == 0 && firehose_consumers(&sb).await == base).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hundreds_of_stalled_followers_do_not_disturb_the_node() {
    const FOLLOWERS: usize = 200;
    let sb = sandbox(blockpost_node::MANAGED_MAX_PAYLOAD, |c| {
        c.messaging.max_followers = FOLLOWERS;
        c.messaging.max_followers_per_peer = FOLLOWERS;
        c.messaging.follower_buffer_bytes = 32 << 10;
        c.messaging.slow_follower_ms = 2_000;
    })
    .await;
    let p = parties(&sb, 2).await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let send = |i: usize, body: usize| message(&p, &format!("fill-{i}"), body);
    // Enough on the firehose to fill every follower's buffer and its HTTP/2 window.
    for i in 0..400 {
        m.submit(send(i, 16 << 10)).await.unwrap();
    }
    // Followers that never read, over several connections (streams per connection are
    // capped).
    let mut stalled = Vec::new();
    for _ in 0..FOLLOWERS / 50 {
        let mut c = MessagingClient::new(sb.channel().await.unwrap());
        for _ in 0..50 {
            stalled.push(c.firehose(follow_from(1)).await.unwrap().into_inner());
        }
    }
    let (now, dropped) = sb.gateway.followers();
    assert_eq!(now + dropped as usize, FOLLOWERS);
    // The node's own work goes on: a new participant registers and is known at once to
    // the gateway, and messages are receipted and put in blocks.
    let mut c = sb.client().await.unwrap();
    let newcomer = Identity::generate();
    let e = c
        .register(&newcomer, "newcomer", "Newcomer AG", None)
        .await
        .unwrap();
    let t = Instant::now();
    let first = envelope(
        &newcomer,
        "newcomer",
        e.leaf_index,
        std::slice::from_ref(&p[0].1),
        "newcomer-1",
        MessageKind::Message,
        8,
        now_ms(),
    );
    let first_id = message_id(&first);
    m.submit(first).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for i in 0..200 {
        m.submit(send(1000 + i, 64)).await.unwrap();
    }
    let builder = sb.node.builder().unwrap().clone();
    wait_for(
        Duration::from_secs(30),
        "the newcomer's message in a block",
        || {
            let b = builder.clone();
            async move { b.locate(&first_id).ok().flatten() }
        },
    )
    .await
    .unwrap();
    // The stalled followers are dropped, not the node.
    wait_for(
        Duration::from_secs(30),
        "stalled followers dropped",
        || async {
            let (now, dropped) = sb.gateway.followers();
            (now == 0 && dropped as usize == FOLLOWERS).then_some(())
        },
    )
    .await
    .unwrap();
    let status = loop {
        match stalled[0].message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a dropped follower's stream ends with its reason"),
            Err(st) => break st,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "TOO_SLOW", "{}", status.message());
    assert_eq!(
        sb.node.nats().connection_state(),
        async_nats::connection::State::Connected
    );
    assert!(builder.health().stalled().is_none());
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn memory_under_a_flood_of_unauthenticated_envelopes_stays_bounded() {
    const CLIENTS: usize = 32;
    const INFLIGHT: usize = 64 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let port = blockpost_node::free_port().unwrap();
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!("[messaging]\nmax_body_len = 16777216\nmax_inflight_bytes = {INFLIGHT}\n"),
    )
    .unwrap();
    let mut child = blockpost_tests::spawn_node_with(
        &tmp.path().join("data"),
        port,
        None,
        &["--config", config.to_str().unwrap()],
    );
    let pid = child.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = wait_for(Duration::from_secs(60), "the node up", || {
        let e = endpoint.clone();
        async move {
            let c = tonic::transport::Channel::from_shared(e)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut d = blockpost_proto::v1::directory_client::DirectoryClient::new(c.clone());
            d.get_info(blockpost_proto::v1::GetInfoRequest {})
                .await
                .ok()?;
            Some(c)
        }
    })
    .await
    .unwrap();
    // The largest envelope the managed bus carries, from a sender nobody registered.
    let largest = wire::max_envelope_len(blockpost_node::MANAGED_MAX_PAYLOAD);
    let stranger = Identity::generate();
    let env = finish_of_len(
        &stranger,
        "nobody-here",
        0,
        &["nobody-there".into()],
        "flood",
        largest,
    );
    let baseline = proc_status(pid, "VmRSS:");
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (channel, env) = (channel.clone(), env.clone());
        tasks.push(tokio::spawn(async move {
            let mut m = MessagingClient::new(channel)
                .max_encoding_message_size(64 << 20)
                .max_decoding_message_size(64 << 20);
            let mut codes = std::collections::BTreeMap::<String, u64>::new();
            while Instant::now() < until {
                let code = match m.submit(env.clone()).await {
                    Ok(_) => "OK".to_owned(),
                    Err(s) => format!("{:?}", s.code()),
                };
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
    }
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *codes.entry(k).or_default() += v;
        }
    }
    let peak = proc_status(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    // The managed nats-server outlived the SIGKILLed node; no restart will end it.
    blockpost_node::reap_stale(&tmp.path().join("data").join("nats"));
    // Nothing from a stranger is accepted.
    assert!(!codes.contains_key("OK"), "{codes:?}");
    assert!(codes.values().sum::<u64>() >= CLIENTS as u64, "{codes:?}");
    // The bound: what the gateway holds while it checks (max_inflight_bytes, counting an
    // envelope and its decoding), the waiting room of the replica (64 MiB), and each
    // client's request while it is received and decoded (twice its size).
    let bound = INFLIGHT as u64
        + blockpost_replica::MAX_WAITING_BYTES as u64
        + (CLIENTS * 2 * largest) as u64;
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew <= bound,
        "peak {} MiB over a baseline of {} MiB: {} MiB more than the bound of {} MiB ({codes:?})",
        peak >> 20,
        baseline >> 20,
        (grew - bound) >> 20,
        bound >> 20
    );
    eprintln!(
        "node memory: baseline {} MiB, peak {} MiB, bound {} MiB; answers {codes:?}",
        baseline >> 20,
        peak >> 20,
        (baseline + bound) >> 20
    );
}

#[tokio::test]
async fn a_builder_idle_for_long_is_not_stalled_when_work_comes() {
    let clock = std::sync::Arc::new(blockpost_core::FixedClock::new(now_ms()));
    // A message waits 2 s for its block: the builder's health is looked at meanwhile.
    let sb = Sandbox::start_with_clock(
        |c| {
            c.builder.max_block_delay_ms = 2_000;
            c.builder.stall_after_ms = 3_000;
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let p = parties(&sb, 2).await;
    let builder = sb.node.builder().unwrap().clone();
    let mut health = builder.subscribe_health();
    health.borrow_and_update();
    // A minute with nothing to do.
    clock.advance(60_000);
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let (id, a, i) = &p[0];
    let e = envelope(
        id,
        a,
        *i,
        std::slice::from_ref(&p[1].1),
        "after-a-quiet-minute",
        MessageKind::Message,
        8,
        clock.now_ms(),
    );
    let eid = message_id(&e);
    m.submit(e).await.unwrap();
    wait_for(Duration::from_secs(20), "the message in a block", || {
        let b = builder.clone();
        async move { b.locate(&eid).ok().flatten() }
    })
    .await
    .unwrap();
    // Waiting work counts from when it came: the builder was never reported stalled.
    assert!(!health.has_changed().unwrap(), "{:?}", builder.health());
    assert!(builder.health().stalled().is_none());
}
