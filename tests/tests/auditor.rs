//! The auditor against a real node and nats-server: a clean run raises nothing (also after
//! the auditor restarts); broken promises, forks, tampered blocks and messages deleted from
//! the firehose each raise their own alert with evidence.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_auditor::{AlertKind, Auditor, AuditorConfig, ReceiptVerdict};
use blockpost_client::{Messenger, Outgoing};
use blockpost_core::Identity;
use blockpost_core::block::{merkle_root, sign_header};
use blockpost_proto::v1::{Block, BlockHeader, MessageKind};
use blockpost_tests::{Sandbox, wait_for};
use futures::StreamExt as _;
use prost::Message as _;

fn outgoing<'a>(from: &'a str, to: &'a [String], kind: MessageKind, tx: &'a str) -> Outgoing<'a> {
    Outgoing {
        delivery: None,
        from,
        to,
        transaction_id: tx,
        kind,
        content_type: "text/plain",
        body: b"deliver 100 Megacorp against 5,000 EUR".to_vec(),
        encrypt: false,
        transaction_deadline_ms: None,
    }
}

/// A plaintext envelope in bank-a's name to bank-b, signed by `signer` (bank-a's key, or
/// someone else's for a forgery).
fn bank_a_to_bank_b(
    signer: &ed25519_dalek::SigningKey,
    tx: &str,
    nonce: u64,
    body: &[u8],
) -> blockpost_proto::v1::Envelope {
    use blockpost_proto::v1::{EnvelopeContent, envelope_content::Body};
    let c = EnvelopeContent {
        delivery: None,
        sender: "bank-a".into(),
        sender_key_index: 0,
        recipients: vec!["bank-b".into()],
        transaction_id: tx.into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: blockpost_core::now_ms(),
        nonce,
        body: Some(Body::Plaintext(body.to_vec())),
        transaction_deadline_ms: None,
    };
    blockpost_core::sign_envelope(signer, c.encode_to_vec())
}

async fn send(m: &mut Messenger, id: &Identity, from: &str, to: &str, kind: MessageKind, tx: &str) {
    let to = vec![to.to_owned()];
    m.send(id, outgoing(from, &to, kind, tx)).await.unwrap();
}

/// A sandbox with bank-a and bank-b registered, and a messenger.
async fn parties(sb: &Sandbox) -> (Identity, Identity, Messenger) {
    let a = Identity::generate();
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
    c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
    let m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    (a, b, m)
}

async fn auditor(sb: &Sandbox, data: &std::path::Path, grace_ms: u64) -> Auditor {
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), data);
    config.grace_ms = grace_ms;
    Auditor::start(config, nats).await.unwrap()
}

/// Waits until the auditor has run its time checks (receipt deadlines, omissions,
/// transaction deadlines) at or past time `t` of its clock.
async fn checked_past(a: &Auditor, t: i64) {
    wait_for(Duration::from_secs(30), "the auditor's time checks", || {
        let done = a.status().checked_until_ms >= t;
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
}

/// Waits until the auditor has verified every block and read the whole firehose.
async fn caught_up(sb: &Sandbox, a: &Auditor, firehose: u64) {
    let builder = sb.node.builder().unwrap().clone();
    wait_for(Duration::from_secs(30), "the auditor caught up", || {
        let s = a.status();
        let done = s.blocks_verified == builder.height()
            && s.blocks_verified > 0
            && s.firehose_checked == firehose
            && s.waiting == 0
            && s.blocks_current;
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_raises_no_alert_also_after_the_auditor_restarts() {
    let sb = Sandbox::start_with(|c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.max_block_messages = 7;
    })
    .await
    .unwrap();
    let (a, b, mut m) = parties(&sb).await;
    for _ in 0..20 {
        send(
            &mut m,
            &a,
            "bank-a",
            "bank-b",
            MessageKind::Message,
            "settle-1",
        )
        .await;
    }
    // Both parties finish: the transaction's closing record is replayed by the auditor.
    send(
        &mut m,
        &a,
        "bank-a",
        "bank-b",
        MessageKind::Finish,
        "settle-1",
    )
    .await;
    send(
        &mut m,
        &b,
        "bank-b",
        "bank-a",
        MessageKind::Finish,
        "settle-1",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 1_000).await;
    caught_up(&sb, &au, 22).await;
    assert!(au.status().ledger);
    // The directory log replayed: both registrations, every checkpoint's root.
    assert_eq!(au.status().directory_entries, 2);
    assert_eq!(au.status().directory_checkpoint, 2);
    // The node's ledger checkpoint, against the chain of block ids.
    wait_for(
        Duration::from_secs(10),
        "a ledger checkpoint verified",
        || {
            let n = au.status().ledger_checkpoint;
            async move { (n >= 3).then_some(()) }
        },
    )
    .await
    .unwrap();
    // Messages that come while it runs; a receipt handed in is found in its block.
    let (_, receipt, body) = m
        .send_receipted(
            &a,
            outgoing(
                "bank-a",
                &["bank-b".into()],
                MessageKind::Message,
                "settle-2",
            ),
        )
        .await
        .unwrap();
    caught_up(&sb, &au, 23).await;
    let id: [u8; 32] = body.message_id.clone().try_into().unwrap();
    // The builder publishes a block, stores it, then indexes it: found once indexed.
    let builder = sb.node.builder().unwrap().clone();
    let (height, _) = wait_for(Duration::from_secs(10), "the message indexed", || {
        let at = builder.locate(&id).unwrap();
        async move { at }
    })
    .await
    .unwrap();
    assert_eq!(
        au.check_receipt(&receipt).await.unwrap(),
        ReceiptVerdict::InBlock { height }
    );
    assert_eq!(au.alerts(), Vec::new());
    // Full-text search over what it verified (the index commits within a second).
    let search = |q: &str| au.search(q, 100, 0, false).unwrap().unwrap();
    wait_for(Duration::from_secs(5), "the search index", || {
        let n = search("body:megacorp").len();
        async move { (n == 23).then_some(()) }
    })
    .await
    .unwrap();
    let tx = search("transaction_id:settle-2");
    assert_eq!(tx.len(), 1);
    assert_eq!(
        (tx[0].message_id.as_str(), tx[0].height),
        (hex::encode(id).as_str(), height)
    );
    let by_name = search(r#"sender_name:"bank b""#);
    assert_eq!(by_name.len(), 1, "bank-b sent only its finish");
    assert_eq!(
        search(r#"kind:finish AND recipient_name:"bank a ag""#).len(),
        1
    );
    let now = blockpost_core::now_ms();
    assert_eq!(
        search(&format!("time:[{} TO {now}]", now - 600_000)).len(),
        23
    );
    assert!(search("time:[0 TO 1000]").is_empty());
    assert!(au.search("body:(", 10, 0, false).unwrap().is_err());
    // Newest first: the settle-2 message.
    let newest = au.search("body:megacorp", 1, 0, true).unwrap().unwrap();
    assert_eq!(newest[0].message_id, hex::encode(id));
    // The proofs of a hit, from the node's ledger, verified.
    let proved = au.proved(id).await.unwrap().unwrap();
    assert_eq!(proved.header.header.height, height);
    // Its metrics and liveness over HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = tokio::spawn(blockpost_auditor::serve_metrics(au.clone(), listener));
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    };
    let m = get("/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    let height = sb.node.builder().unwrap().height();
    assert!(
        m.contains(&format!("\nblockpost_auditor_blocks_verified {height}\n")),
        "{m}"
    );
    assert!(
        m.contains("\nblockpost_auditor_firehose_checked 23\n"),
        "{m}"
    );
    assert!(
        m.contains("\nblockpost_auditor_alerts_total{kind=\"omission\"} 0\n"),
        "{m}"
    );
    assert!(m.contains("\nblockpost_auditor_stalled 0\n"), "{m}");
    let h = get("/healthz").await;
    assert!(
        h.starts_with("HTTP/1.1 200 OK") && h.contains("\"blocks_current\":true"),
        "{h}"
    );
    assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    metrics.abort();
    drop(au);

    // Restarted on its data: it replays the directory and the blocks, resumes the
    // firehose where it stopped (every message read was in a checked block: none is read
    // again), keeps its search index, and still finds nothing.
    // This time on a clock the test moves.
    let clock = std::sync::Arc::new(blockpost_core::FixedClock::new(blockpost_core::now_ms()));
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), tmp.path());
    config.grace_ms = 1_000;
    config.clock = clock.clone();
    let au = Auditor::start(config, nats).await.unwrap();
    caught_up(&sb, &au, 23).await;
    assert_eq!(au.status().firehose_read, 0, "{:?}", au.status());
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    send(
        &mut m,
        &b,
        "bank-b",
        "bank-a",
        MessageKind::Message,
        "settle-3",
    )
    .await;
    caught_up(&sb, &au, 24).await;
    assert_eq!(au.status().firehose_read, 1);
    let search = |q: &str| au.search(q, 100, 0, false).unwrap().unwrap();
    wait_for(Duration::from_secs(5), "the search index", || {
        let n = search("body:megacorp").len();
        async move { (n == 24).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(
        search("transaction_id:settle-2").len(),
        1,
        "not indexed twice"
    );
    // Past every deadline (the gateway's promise and the grace), still nothing.
    let promise = i64::try_from(sb.gateway.info().max_block_delay_ms).unwrap();
    clock.set(blockpost_core::now_ms() + promise + 1_000 + 1);
    checked_past(&au, blockpost_core::Clock::now_ms(&*clock)).await;
    assert_eq!(au.alerts(), Vec::new());
    assert!(
        !std::fs::read_to_string(tmp.path().join("alerts.jsonl"))
            .unwrap()
            .contains('{')
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_no_block_by_its_deadline_is_an_omission() {
    // A node whose builder never runs: every receipt's promise is broken.
    let sb = Sandbox::start_with(|c| {
        c.builder.enabled = false;
        c.messaging.max_block_delay_ms = 1_000;
    })
    .await
    .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    send(
        &mut m,
        &a,
        "bank-a",
        "bank-b",
        MessageKind::Message,
        "settle-1",
    )
    .await;
    send(
        &mut m,
        &a,
        "bank-a",
        "bank-b",
        MessageKind::Message,
        "settle-1",
    )
    .await;
    let sent = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // Alerts also go out on NATS, on a subject of the auditor's choosing.
    let bus = sb.nats.connect().await.unwrap();
    let mut published = bus.subscribe("audit.alerts").await.unwrap();
    bus.flush().await.unwrap();
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), tmp.path());
    config.grace_ms = 300;
    config.publish = Some((bus.clone(), "audit.alerts".into()));
    let au = Auditor::start(config, nats).await.unwrap();
    let alerts = wait_for(Duration::from_secs(10), "two omissions", || {
        let found: Vec<_> = au
            .alerts()
            .into_iter()
            .filter(|a| a.kind == AlertKind::Omission)
            .collect();
        async move { (found.len() == 2).then_some(found) }
    })
    .await
    .unwrap();
    // Within the deadline (1 s) plus the grace (0.3 s) plus one second.
    assert!(
        sent.elapsed() < Duration::from_millis(2_300),
        "{:?}",
        sent.elapsed()
    );
    assert!(!au.status().ledger);
    for a in &alerts {
        assert!(a.evidence["message_id"].as_str().unwrap().len() == 64);
        assert!(a.evidence["deadline_ms"].as_i64().is_some());
    }
    // Kept in the alert file, each once, and published.
    let text = std::fs::read_to_string(tmp.path().join("alerts.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2);
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), published.next())
            .await
            .unwrap()
            .unwrap();
        let a: blockpost_auditor::Alert = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(a.kind, AlertKind::Omission);
        assert!(text.contains(&a.subject));
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_tampered_blocks_and_deleted_messages_each_raise_their_alert() {
    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    for _ in 0..5 {
        send(
            &mut m,
            &a,
            "bank-a",
            "bank-b",
            MessageKind::Message,
            "settle-1",
        )
        .await;
    }
    let builder = sb.node.builder().unwrap().clone();
    wait_for(Duration::from_secs(20), "5 messages in blocks", || {
        let n = builder.last_sequence();
        async move { (n >= 5).then_some(()) }
    })
    .await
    .unwrap();
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());

    // A message deleted from the firehose through the JetStream API (it is in a block).
    let firehose = js.get_stream(ns.firehose_stream()).await.unwrap();
    assert!(firehose.delete_message(2).await.unwrap());

    // Block 0 again, one byte of its last leaf changed.
    let b0 = builder.store().block(0).unwrap();
    let mut tampered = b0.clone();
    let at = tampered.len() - 70;
    tampered[at] ^= 1;
    js.publish(ns.blocks_subject(), tampered.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Another block 0, signed with the builder's own key, without its last message.
    let key = blockpost_storage::load_or_create_key(
        &blockpost_storage::DataDir::new(&sb.data_dir).builder_key(),
    )
    .unwrap();
    let mut forged = Block::decode(b0.as_slice()).unwrap();
    forged.leaves.pop();
    let mut header =
        BlockHeader::decode(forged.header.as_ref().unwrap().header.as_slice()).unwrap();
    let hashes: Vec<[u8; 32]> = forged
        .leaves
        .iter()
        .map(|l| blockpost_core::leaf_hash(l))
        .collect();
    header.merkle_root = merkle_root(&hashes).to_vec();
    header.leaf_count = forged.leaves.len() as u64;
    forged.header = Some(sign_header(&key, &header));
    js.publish(ns.blocks_subject(), forged.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    // The directory: a checkpoint of size 2 signed with the log key but another root (a
    // second history), and one signed with a key that is not the log's. Size 2, the
    // directory's head, once the stream holds the real one: a checkpoint of size 1 is
    // not always published (the publisher trails the log and sends its newest
    // checkpoint), and without it the forgery is an inconsistency, not a fork.
    assert!(
        sb.gateway
            .replica()
            .wait_applied(2, Duration::from_secs(10))
            .await
    );
    let origin = sb.directory.info().origin;
    let log_key = blockpost_storage::load_or_create_key(
        &blockpost_storage::DataDir::new(&sb.data_dir).log_key(),
    )
    .unwrap();
    let forged = blockpost_core::CheckpointSigner::new(&origin, log_key)
        .unwrap()
        .sign(2, [7; 32])
        .unwrap();
    let stranger = blockpost_core::CheckpointSigner::new(
        &origin,
        ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
    )
    .unwrap()
    .sign(2, [7; 32])
    .unwrap();
    for note in [forged, stranger] {
        js.publish(ns.checkpoint_subject(), note.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 1_000).await;
    let want = [
        AlertKind::FirehoseGap,
        AlertKind::UnknownMessage,
        AlertKind::BlockInvalid,
        AlertKind::Fork,
        AlertKind::DirectoryFork,
        AlertKind::DirectoryInvalid,
    ];
    let alerts = wait_for(Duration::from_secs(20), "six alerts", || {
        let all = au.alerts();
        let done = want.iter().all(|k| all.iter().any(|a| a.kind == *k));
        async move { done.then_some(all) }
    })
    .await
    .unwrap();
    let by = |k: AlertKind| alerts.iter().find(|a| a.kind == k).unwrap();
    assert_eq!(by(AlertKind::FirehoseGap).subject, "firehose 2..2");
    assert_eq!(by(AlertKind::BlockInvalid).subject, "block 0");
    assert_eq!(by(AlertKind::Fork).subject, "block 0");
    assert_eq!(
        by(AlertKind::Fork).evidence["verified_id"]
            .as_str()
            .unwrap(),
        hex::encode(builder.store().id(0).unwrap())
    );
    // The message deleted from the firehose is the one the block holds unannounced.
    let unknown = by(AlertKind::UnknownMessage);
    assert_eq!(unknown.evidence["height"], 0);
    // Nothing else: the other messages are all accounted for.
    assert_eq!(by(AlertKind::DirectoryFork).subject, "directory size 2");
    assert!(
        by(AlertKind::DirectoryFork).evidence["second"]
            .as_str()
            .unwrap()
            .contains(&origin)
    );
    assert_eq!(alerts.len(), 6, "{alerts:#?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_handed_in_is_watched_and_its_omission_raised_with_it_as_evidence() {
    use blockpost_proto::v1::audit_client::AuditClient;
    use blockpost_proto::v1::check_receipt_response::Verdict;
    use blockpost_proto::v1::{AlertsRequest, CheckReceiptRequest, GetAuditStatusRequest};
    // No builder: the receipt's promise (3 s) is broken.
    let sb = Sandbox::start_with(|c| {
        c.builder.enabled = false;
        c.messaging.max_block_delay_ms = 3_000;
    })
    .await
    .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    let (_, receipt, body) = m
        .send_receipted(
            &a,
            outgoing(
                "bank-a",
                &["bank-b".into()],
                MessageKind::Message,
                "settle-1",
            ),
        )
        .await
        .unwrap();
    // The operator removes the message from the firehose before any auditor saw it.
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let firehose = js.get_stream(ns.firehose_stream()).await.unwrap();
    assert!(
        firehose
            .delete_message(body.firehose_sequence)
            .await
            .unwrap()
    );
    // And someone with publish rights puts an envelope on the firehose in bank-a's name,
    // not signed by bank-a: not valid, so no block owes it anything.
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let forged = bank_a_to_bank_b(&mallory, "settle-1", 7, b"forged").encode_to_vec();
    js.publish(ns.firehose_subject(), forged.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let forged_at = blockpost_core::now_ms();

    // The auditor served as `blockpost auditor` serves it (the kit's composition point).
    let sb = sb.with_auditor(|c| c.grace_ms = 200).await.unwrap();
    let served = sb.auditor.as_ref().unwrap();
    let au = served.auditor.clone();
    let channel = tonic::transport::Channel::from_shared(served.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // It answers gRPC health for its service.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "blockpost.v1.Audit".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let mut client = AuditClient::new(channel);

    // A receipt whose signature was changed is refused.
    let mut bad = receipt.clone();
    bad.signature[0] ^= 1;
    let err = client
        .check_receipt(CheckReceiptRequest { receipt: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(blockpost_tests::reason(&err), "INVALID_RECEIPT");

    let r = client
        .check_receipt(CheckReceiptRequest {
            receipt: Some(receipt.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.verdict(), Verdict::Pending);
    assert_eq!(r.message_id, body.message_id);
    assert_eq!(r.block_deadline_ms, body.block_deadline_ms);
    let status = client
        .get_audit_status(GetAuditStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.receipts_waiting, 1);

    // Past the deadline (+ 0.2 s grace): an omission, the receipt its evidence.
    let omission = wait_for(Duration::from_secs(10), "the omission", || {
        let found = au
            .alerts()
            .into_iter()
            .find(|a| a.kind == AlertKind::Omission);
        async move { found }
    })
    .await
    .unwrap();
    assert!(blockpost_core::now_ms() < body.block_deadline_ms + 200 + 1_500);
    assert_eq!(
        omission.evidence["receipt"]["signature"].as_str().unwrap(),
        hex::encode(&receipt.signature)
    );
    assert_eq!(
        omission.evidence["message_id"].as_str().unwrap(),
        hex::encode(&body.message_id)
    );
    // Handed in again: omitted.
    let r = client
        .check_receipt(CheckReceiptRequest {
            receipt: Some(receipt.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.verdict(), Verdict::Omitted);

    // Past the forged envelope's deadline too (it came a moment later).
    let promise = i64::try_from(sb.gateway.info().max_block_delay_ms).unwrap();
    checked_past(&au, forged_at + promise + 200 + 1).await;
    // The alerts over gRPC: the firehose gap (the deleted message) and the omission.
    let mut s = client
        .alerts(AlertsRequest {
            from: 0,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(a) = s.message().await.unwrap() {
        assert_eq!(a.index, kinds.len() as u64);
        kinds.push(a.kind);
    }
    kinds.sort();
    // Not an omission for the forged envelope: the auditor found it not valid.
    assert_eq!(kinds, vec!["firehose_gap", "omission"]);
    assert_eq!(au.status().firehose_checked, 2);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_signed_in_one_batch_are_each_found_in_their_block() {
    // A wide window, so that two sends at once share a signature.
    let sb = Sandbox::start_with(|c| c.messaging.receipt_batch_ms = 500)
        .await
        .unwrap();
    let (a, _, mut m1) = parties(&sb).await;
    let mut m2 = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let to = ["bank-b".to_owned()];
    let (r1, r2) = tokio::join!(
        m1.send_receipted(
            &a,
            outgoing("bank-a", &to, MessageKind::Message, "settle-1")
        ),
        m2.send_receipted(
            &a,
            outgoing("bank-a", &to, MessageKind::Message, "settle-2")
        ),
    );
    let ((_, r1, b1), (_, r2, b2)) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.signature, r2.signature, "one signature for the batch");
    assert_eq!(r1.batch.as_ref().unwrap().size, 2);
    assert_ne!(b1.message_id, b2.message_id);
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 1_000).await;
    for (r, b) in [(&r1, &b1), (&r2, &b2)] {
        let verdict = wait_for(Duration::from_secs(20), "the receipt in a block", || {
            let au = au.clone();
            let r = r.clone();
            async move {
                match au.check_receipt(&r).await.unwrap() {
                    v @ ReceiptVerdict::InBlock { .. } => Some(v),
                    _ => None,
                }
            }
        })
        .await
        .unwrap();
        let id: [u8; 32] = b.message_id.clone().try_into().unwrap();
        let at = sb.node.builder().unwrap().locate(&id).unwrap().unwrap();
        assert_eq!(verdict, ReceiptVerdict::InBlock { height: at.0 });
    }
    // Its path bent to another leaf, the receipt is refused.
    let mut bad = r1.clone();
    bad.batch.as_mut().unwrap().index ^= 1;
    assert!(au.check_receipt(&bad).await.is_err());
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_name_raises_an_alert_on_its_registration_and_rotation() {
    let sb = Sandbox::start().await.unwrap();
    let (_, b, _) = parties(&sb).await;
    let mut c = sb.client().await.unwrap();
    let b2 = Identity::generate();
    c.rotate(&b, &b2, "bank-b").await.unwrap();
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), tmp.path());
    config.watch = vec!["name:bank b*".parse().unwrap()];
    let au = Auditor::start(config, nats).await.unwrap();
    let alerts = wait_for(Duration::from_secs(20), "two watch alerts", || {
        let s = au.status();
        let all = au.alerts();
        async move { (s.directory_entries == 3 && all.len() >= 2).then_some(all) }
    })
    .await
    .unwrap();
    assert_eq!(alerts.len(), 2, "bank-a is not watched: {alerts:#?}");
    assert!(alerts.iter().all(|a| a.kind == AlertKind::WatchedBinding));
    assert_eq!(alerts[0].subject, "directory entry 1");
    assert_eq!(alerts[0].evidence["kind"], "register");
    assert_eq!(alerts[1].evidence["kind"], "rotate");
    assert_eq!(alerts[1].evidence["address"], "bank-b");
    assert_eq!(
        alerts[1].evidence["signing_key"].as_str().unwrap(),
        hex::encode(b2.signing_public())
    );
    sb.stop().await;
}

/// The auditor as a witness: the node hands it each new checkpoint and collects its
/// cosignature; a client that requires it proves look-ups against cosigned checkpoints.
/// A second checkpoint of a size already verified, with another root (a node showing
/// another log to someone else), is refused by the witness, raises a fork, and is refused
/// by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_what_it_verified_and_refuses_a_split_view() {
    use blockpost_client::{Client, ConnectOptions, Ledger};
    use blockpost_proto::v1::CosignRequest;
    use blockpost_proto::v1::audit_client::AuditClient;

    // The witness's port first: the node is configured with it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let witness_url = format!("http://{}", listener.local_addr().unwrap());
    let url = witness_url.clone();
    let sb = Sandbox::start_with(move |c| {
        c.builder.max_block_delay_ms = 50;
        c.witnesses = vec![blockpost_node::WitnessConfig {
            endpoint: url,
            key: None,
        }];
    })
    .await
    .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    let to = vec!["bank-b".to_owned()];
    let (env, _) = m
        .send(
            &a,
            outgoing("bank-a", &to, MessageKind::Message, "settle-1"),
        )
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 1_000).await;
    let _server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(au.clone().into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    caught_up(&sb, &au, 1).await;

    // A client that requires the witness: look-ups and the ledger are proved against
    // checkpoints it cosigned.
    let opts = ConnectOptions {
        witnesses: vec![au.witness_key()],
        min_witnesses: 1,
        ..Default::default()
    };
    let strict = tempfile::tempdir().unwrap();
    let mut c = Client::connect_with(&sb.endpoint, strict.path(), &opts)
        .await
        .unwrap();
    let b = c.current("bank-b").await.unwrap();
    assert_eq!(
        c.witness_policy().cosigners(&b.checkpoint.note).len(),
        1,
        "{}",
        String::from_utf8_lossy(&b.checkpoint.note)
    );
    let cp = c.checkpoint().await.unwrap();
    assert_eq!(cp.size, 2);
    let mut ledger = Ledger::connect(&c, strict.path()).await.unwrap();
    let id = blockpost_core::message_id(&env);
    let msg = ledger.message(id).await.unwrap();
    assert_eq!(
        c.witness_policy().cosigners(&msg.checkpoint.note).len(),
        1,
        "the ledger checkpoint is cosigned"
    );
    // The witness serves what it cosigned.
    let (dir_note, ledger_note) = au.cosigned();
    assert!(c.witness_policy().check(&dir_note.unwrap()).is_ok());
    assert!(c.witness_policy().check(&ledger_note.unwrap()).is_ok());

    // The node (its log key) signs another checkpoint of size 2, with another root.
    let data = blockpost_storage::DataDir::new(&sb.data_dir);
    let key = blockpost_storage::load_or_create_key(&data.log_key()).unwrap();
    let origin = sb.directory.info().origin;
    let forged = blockpost_core::CheckpointSigner::new(&origin, key)
        .unwrap()
        .sign(2, [0x5a; 32])
        .unwrap();
    let mut grpc = AuditClient::new(
        tonic::transport::Channel::from_shared(witness_url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let e = grpc
        .cosign(CosignRequest {
            checkpoint: forged.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(
        au.alerts()
            .iter()
            .any(|x| x.kind == AlertKind::DirectoryFork),
        "{:?}",
        au.alerts()
    );
    // The real one is cosigned (again: the same line).
    let real = sb.directory.checkpoint();
    let line = grpc
        .cosign(CosignRequest {
            checkpoint: real.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let cosigned = blockpost_core::add_cosignatures(&real, &[&line.cosignature]).unwrap();
    assert!(c.witness_policy().check(&cosigned).is_ok());
    // A checkpoint of another log is not the witness's business.
    let e = grpc
        .cosign(CosignRequest {
            checkpoint: b"example.org/other\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n"
                .to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());

    // The client refuses the forged checkpoint: no cosignature of its witness.
    let err = c.accept_checkpoint(&forged).await.unwrap_err();
    assert!(
        matches!(err, blockpost_client::Error::NotWitnessed { .. }),
        "{err}"
    );
    // A client without witnesses would have caught it only against what it saw before.
    let lax = tempfile::tempdir().unwrap();
    let mut fresh = Client::connect(&sb.endpoint, lax.path()).await.unwrap();
    assert!(fresh.accept_checkpoint(&forged).await.is_ok());
}

/// An auditor given a participant's key (a regulator's) opens and indexes the encrypted
/// bodies sealed for it, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participants_key_opens_the_bodies_sealed_for_it_and_only_those() {
    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let (a, b, mut m) = parties(&sb).await;
    let regulator = Identity::generate();
    let mut c = sb.client().await.unwrap();
    let first = c
        .register(&regulator, "regulator", "Market Regulator", None)
        .await
        .unwrap()
        .leaf_index;
    let sealed = |to: &'static [&'static str], body: &str| Outgoing {
        delivery: None,
        from: "bank-a",
        to: Box::leak(
            to.iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        ),
        transaction_id: "settle-9",
        kind: MessageKind::Message,
        content_type: "text/plain",
        body: body.as_bytes().to_vec(),
        encrypt: true,
        transaction_deadline_ms: None,
    };
    m.send(
        &a,
        sealed(&["bank-b", "regulator"], "copy to regulator: Megacorp"),
    )
    .await
    .unwrap();
    m.send(&a, sealed(&["bank-b"], "between banks only: Megacorp"))
        .await
        .unwrap();
    // The regulator rotates; the auditor holds both generations (a keyring's), and opens
    // what was sealed to each with its own.
    let rotated = Identity::generate();
    let second = c
        .rotate(&regulator, &rotated, "regulator")
        .await
        .unwrap()
        .leaf_index;
    m.send(
        &a,
        sealed(&["bank-b", "regulator"], "copy to regulator: Gigacorp"),
    )
    .await
    .unwrap();
    let _ = b;
    let tmp = tempfile::tempdir().unwrap();
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), tmp.path());
    config.open_for = vec![blockpost_auditor::OpenFor {
        address: "regulator".into(),
        keys: std::sync::Arc::new(rotated.clone()),
        generations: std::sync::Arc::new(
            [(first, regulator), (second, rotated)]
                .into_iter()
                .collect(),
        ),
    }];
    let au = Auditor::start(config, nats).await.unwrap();
    caught_up(&sb, &au, 3).await;
    let search = |q: &str| au.search(q, 100, 0, false).unwrap().unwrap();
    wait_for(Duration::from_secs(5), "the search index", || {
        let n = search("transaction_id:settle-9").len();
        async move { (n == 3).then_some(()) }
    })
    .await
    .unwrap();
    // All are indexed by their metadata; only those sealed for the regulator by body, each
    // opened with the generation it was sealed to.
    assert_eq!(search("body:megacorp").len(), 1);
    assert_eq!(search("body:gigacorp").len(), 1);
    assert_eq!(search("body:regulator").len(), 2);
    assert!(search("body:banks").is_empty());
    assert_eq!(search("encrypted:yes").len(), 3);
    assert_eq!(au.alerts(), Vec::new());
}

/// A builder that signs, with its own key, blocks that leave out a receipted message (a
/// fault switch): the auditor raises the omission within a second of the receipt's
/// deadline, with the receipt's message named, and nothing about the messages kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_signed_by_the_builder_that_omits_a_receipted_message_is_caught_in_time() {
    let sb = Sandbox::start_with(|c| {
        c.builder.max_block_delay_ms = 50;
        c.messaging.max_block_delay_ms = 1_100;
    })
    .await
    .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), tmp.path());
    config.grace_ms = 200;
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let au = Auditor::start(config, nats).await.unwrap();
    sb.node.builder().unwrap().misbehave_by_omitting("evil-1");
    send(
        &mut m,
        &a,
        "bank-a",
        "bank-b",
        MessageKind::Message,
        "good-1",
    )
    .await;
    let to = vec!["bank-b".to_owned()];
    let (_, _, omitted) = m
        .send_receipted(&a, outgoing("bank-a", &to, MessageKind::Message, "evil-1"))
        .await
        .unwrap();
    send(
        &mut m,
        &a,
        "bank-a",
        "bank-b",
        MessageKind::Message,
        "good-2",
    )
    .await;
    let sent_all = blockpost_core::now_ms();
    let alert = wait_for(Duration::from_secs(10), "the omission", || {
        let found = au
            .alerts()
            .into_iter()
            .find(|x| x.kind == AlertKind::Omission);
        async move { found }
    })
    .await
    .unwrap();
    assert!(
        alert.subject.contains(&hex::encode(&omitted.message_id)),
        "{alert:?}"
    );
    let late = alert.time_ms - omitted.block_deadline_ms;
    assert!(
        (0..=1_000).contains(&late),
        "raised {late} ms after the deadline"
    );
    // The other messages are in blocks: one alert in all.
    caught_up(&sb, &au, 3).await;
    // Past every deadline: still only that one.
    checked_past(&au, sent_all + 1_100 + 200 + 1).await;
    assert_eq!(au.alerts().len(), 1, "{:?}", au.alerts());
}

/// Blocks signed with the builder's key that break the chain: one whose link is wrong, one
/// that links but holds a message an earlier block holds; and a ledger checkpoint, signed
/// with the ledger's key, whose root is not the chain's, handed to the auditor as a
/// client would gossip it. Each raises its own alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_a_repeated_message_and_a_ledger_checkpoint_off_the_chain_are_alerts() {
    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let (a, _, mut m) = parties(&sb).await;
    for _ in 0..3 {
        send(
            &mut m,
            &a,
            "bank-a",
            "bank-b",
            MessageKind::Message,
            "settle-1",
        )
        .await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 1_000).await;
    caught_up(&sb, &au, 3).await;
    let builder = sb.node.builder().unwrap().clone();
    let height = builder.height();
    let key = blockpost_storage::load_or_create_key(
        &blockpost_storage::DataDir::new(&sb.data_dir).builder_key(),
    )
    .unwrap();
    let tip = Block::decode(builder.store().block(height - 1).unwrap().as_slice()).unwrap();
    let tip_header = BlockHeader::decode(tip.header.as_ref().unwrap().header.as_slice()).unwrap();
    let first = Block::decode(builder.store().block(0).unwrap().as_slice()).unwrap();
    // A block at the next height that holds the first block's first message again.
    let block_with = |previous: Vec<u8>| {
        let leaves = vec![first.leaves[0].clone()];
        let hashes: Vec<[u8; 32]> = leaves
            .iter()
            .map(|l| blockpost_core::leaf_hash(l))
            .collect();
        // It names the next firehose range, as the next real block would.
        let partitions = tip_header
            .partitions
            .iter()
            .map(|r| blockpost_proto::v1::PartitionRange {
                partition: r.partition,
                first_seq: r.last_seq + 1,
                last_seq: r.last_seq + 1,
            })
            .collect();
        let header = BlockHeader {
            height,
            previous_hash: previous,
            merkle_root: merkle_root(&hashes).to_vec(),
            leaf_count: 1,
            time_ms: tip_header.time_ms + 1,
            partitions,
            ..tip_header.clone()
        };
        Block {
            header: Some(sign_header(&key, &header)),
            leaves,
        }
        .encode_to_vec()
    };
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    for block in [
        block_with(vec![9; 32]),
        block_with(builder.store().id(height - 1).unwrap().to_vec()),
    ] {
        js.publish(ns.blocks_subject(), block.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A ledger checkpoint of the chain's size, with another root.
    let ledger_key = blockpost_storage::load_or_create_key(
        &blockpost_storage::DataDir::new(&sb.data_dir).builder_key(),
    )
    .unwrap();
    let origin = sb.node.builder().unwrap().origin().to_owned();
    let off = blockpost_core::CheckpointSigner::new(&origin, ledger_key)
        .unwrap()
        .sign(height, [3; 32])
        .unwrap();
    assert!(matches!(
        au.cosign(&off).await,
        Err(blockpost_auditor::AuditError::Conflicts(_)
            | blockpost_auditor::AuditError::NotVerified(_))
    ));
    let want = [AlertKind::ChainBroken, AlertKind::DuplicateMessage];
    let alerts = wait_for(Duration::from_secs(20), "the alerts", || {
        let all = au.alerts();
        let done = want.iter().all(|k| all.iter().any(|a| a.kind == *k))
            && all.iter().any(|a| {
                matches!(
                    a.kind,
                    AlertKind::LedgerFork | AlertKind::LedgerInconsistent
                )
            });
        async move { done.then_some(all) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#?}", au.alerts()));
    let by = |k: AlertKind| alerts.iter().find(|a| a.kind == k).unwrap();
    assert_eq!(
        by(AlertKind::ChainBroken).subject,
        format!("block {height}")
    );
    assert!(
        by(AlertKind::DuplicateMessage)
            .subject
            .contains(&hex::encode(blockpost_core::message_id_of_encoded(
                &first.leaves[0]
            ))),
        "{:?}",
        by(AlertKind::DuplicateMessage)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_many_batches_is_checked_in_order_with_a_forgery_in_the_middle() {
    use blockpost_proto::v1::submit_result::Result as Outcome;
    let sb = Sandbox::start().await.unwrap();
    let (a, _b, m) = parties(&sb).await;
    let content = |signer: &ed25519_dalek::SigningKey, nonce: u64| {
        let body = format!("instruction {nonce}");
        bank_a_to_bank_b(signer, "settle-backlog", nonce, body.as_bytes())
    };
    // More than two of the reader's batches (1,024 each) on each side of a forgery, so
    // that batches are checked while others wait to be handed over.
    const HALF: u64 = 2_200;
    let g = m.grpc();
    let submit = |from: u64| {
        let envs: Vec<_> = (from..from + HALF)
            .map(|n| content(&a.signing, n))
            .collect();
        let mut g = g.clone();
        async move {
            let out: Vec<_> = g
                .submit_stream(tokio_stream::iter(envs))
                .await
                .unwrap()
                .into_inner()
                .collect()
                .await;
            assert_eq!(out.len() as u64, HALF);
            for r in out {
                assert!(matches!(r.unwrap().result.unwrap(), Outcome::Receipt(_)));
            }
        }
    };
    submit(1).await;
    // Someone with publish rights puts an envelope in bank-a's name, not signed by it,
    // between the two halves.
    let ns = sb.directory.namespace().clone();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let forged = content(&mallory, 1_000_000).encode_to_vec();
    let forged_seq = js
        .publish(ns.firehose_subject(), forged.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    assert_eq!(forged_seq, HALF + 1);
    let forged_at = blockpost_core::now_ms();
    submit(HALF + 1).await;

    // An auditor that starts with all of it waiting: every message checked, each verdict
    // with its own message. A verdict handed to the wrong message would show as an
    // omission (the forgery taken for valid, owed a block) or a block with a message the
    // auditor found invalid.
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path(), 200).await;
    caught_up(&sb, &au, 2 * HALF + 1).await;
    let promise = i64::try_from(sb.gateway.info().max_block_delay_ms).unwrap();
    checked_past(&au, forged_at + promise + 200 + 1).await;
    let alerts = au.alerts();
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!(au.status().firehose_checked, 2 * HALF + 1);
    sb.stop().await;
}
