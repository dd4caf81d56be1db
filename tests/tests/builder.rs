//! The block builder against a real nats-server: every receipted message lands in exactly
//! one block; blocks verify one by one, link into one chain, and are the leaves of a
//! signed ledger; a restart neither forks the chain nor repeats a message.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::collections::HashMap;
use std::time::Duration;

use blockpost_client::{Messenger, Outgoing};
use blockpost_core::Identity;
use blockpost_core::block::{VerifiedHeader, verify_block};
use blockpost_core::transaction::{Book, Entry, replay_block};
use blockpost_core::verify_checkpoint;
use blockpost_proto::v1::{Block, Envelope, EnvelopeContent, MessageKind};
use blockpost_tests::{Sandbox, wait_for};
use prost::Message as _;

/// Every block in the node's store, verified, with the chain and the ledger checked.
/// Returns how many times each leaf appears.
fn verify_ledger(sb: &Sandbox) -> HashMap<Vec<u8>, usize> {
    let b = sb.node.builder().expect("the builder runs");
    let key = b.public_key();
    let head = b.head();
    let cp = verify_checkpoint(&head.checkpoint, &b.ledger_verifier_key()).unwrap();
    assert!(cp.size >= 1, "no block yet");
    let mut prev: Option<VerifiedHeader> = None;
    let mut seen = HashMap::new();
    for h in 0..cp.size {
        let block = Block::decode(b.store().block(h).unwrap().as_slice()).unwrap();
        let v = verify_block(&block, &key).unwrap();
        assert_eq!(v.header.header.height, h);
        if let Some(p) = &prev {
            v.header.check_follows(p).unwrap();
        } else {
            assert!(v.header.header.previous_hash.is_empty());
        }
        // The block id is leaf h of the signed ledger.
        assert_eq!(b.store().id(h).unwrap(), v.header.id);
        cp.verify_inclusion(
            h,
            &v.header.id,
            &b.store().prove_inclusion(h, cp.size).unwrap(),
        )
        .unwrap();
        for l in &v.leaves {
            *seen.entry(l.clone()).or_insert(0) += 1;
        }
        prev = Some(v.header);
    }
    seen
}

/// Envelopes sent, with each receipt's block deadline.
async fn send_n(m: &mut Messenger, id: &Identity, n: usize, tx: &str) -> Vec<Vec<u8>> {
    send_with_deadlines(m, id, n, tx)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

async fn send_with_deadlines(
    m: &mut Messenger,
    id: &Identity,
    n: usize,
    tx: &str,
) -> Vec<(Vec<u8>, i64)> {
    let to = vec!["bank-b".to_owned()];
    let mut sent = Vec::new();
    for i in 0..n {
        let (env, receipt) = m
            .send(
                id,
                Outgoing {
                    delivery: None,
                    from: "bank-a",
                    to: &to,
                    transaction_id: tx,
                    kind: MessageKind::Message,
                    content_type: "text/plain",
                    body: format!("confirm trade {i}").into_bytes(),
                    encrypt: i % 2 == 1,
                    transaction_deadline_ms: None,
                },
            )
            .await
            .unwrap();
        sent.push((env.encode_to_vec(), receipt.block_deadline_ms));
    }
    sent
}

#[tokio::test]
async fn every_receipted_message_is_in_exactly_one_block_across_a_restart() {
    let sb = Sandbox::start_with(|c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.max_block_messages = 7;
    })
    .await
    .unwrap();
    let a = Identity::generate();
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
    c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let mut sent = send_n(&mut m, &a, 20, "settle-1").await;

    let builder = sb.node.builder().unwrap().clone();
    wait_for(Duration::from_secs(20), "20 messages in blocks", || {
        // No block yet is no block yet (the first one may take longer on a busy machine).
        let all = builder.height() > 0 && {
            let seen = verify_ledger(&sb);
            sent.iter().all(|e| seen.contains_key(e))
        };
        async move { all.then_some(()) }
    })
    .await
    .unwrap();
    // At most 7 per block: at least 3 blocks.
    assert!(builder.height() >= 3, "{} blocks", builder.height());
    let first = Block::decode(builder.store().block(0).unwrap().as_slice()).unwrap();
    let h0 =
        blockpost_proto::v1::BlockHeader::decode(first.header.unwrap().header.as_slice()).unwrap();
    assert_eq!(h0.partitions[0].first_seq, 1);
    // The directory checkpoint in force is the one with both participants.
    assert_eq!(h0.directory_size, 2);
    assert_eq!(builder.refused(), 0);
    drop(m);
    drop(c);

    // Restart on the same data: the chain goes on, nothing is repeated.
    let cfg = sb.config().clone();
    let (nats, tmp) = sb.stop().await;
    drop(builder);
    let sb = Sandbox::start_on(cfg, nats, tmp).await.unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    sent.extend(send_n(&mut m, &a, 6, "settle-2").await);
    wait_for(Duration::from_secs(20), "26 messages in blocks", || {
        let seen = verify_ledger(&sb);
        let all = sent.iter().all(|e| seen.contains_key(e));
        async move { all.then_some(()) }
    })
    .await
    .unwrap();
    let seen = verify_ledger(&sb);
    assert_eq!(seen.len(), 26);
    assert!(seen.values().all(|&n| n == 1), "a message in two blocks");

    // Every block is on the blocks stream too, for auditors.
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mut st = js
        .get_stream(sb.directory.namespace().blocks_stream())
        .await
        .unwrap();
    let n = st.info().await.unwrap().state.messages;
    assert_eq!(n, sb.node.builder().unwrap().height());
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_lookups_verify_and_bad_ones_are_refused() {
    use blockpost_client::Ledger;
    use blockpost_proto::v1::ledger_client::LedgerClient;
    use blockpost_proto::v1::{GetBlockRequest, GetMessageRequest, get_block_request};

    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let a = Identity::generate();
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
    c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let with_deadlines = send_with_deadlines(&mut m, &a, 5, "settle-9").await;
    let sent: Vec<Vec<u8>> = with_deadlines.iter().map(|(e, _)| e.clone()).collect();
    let ids: Vec<[u8; 32]> = sent
        .iter()
        .map(|e| blockpost_core::block::block_id(e))
        .collect();
    let builder = sb.node.builder().unwrap().clone();
    wait_for(Duration::from_secs(20), "5 messages in blocks", || {
        let all = ids.iter().all(|id| builder.locate(id).unwrap().is_some());
        async move { all.then_some(()) }
    })
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "the ledger checkpoint", || {
        let ok = ids.iter().all(|id| {
            builder
                .locate(id)
                .unwrap()
                .is_some_and(|(h, _)| h < builder.head().size)
        });
        async move { ok.then_some(()) }
    })
    .await
    .unwrap();

    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    for (id, (env, deadline)) in ids.iter().zip(&with_deadlines) {
        let got = l.message(*id).await.unwrap();
        assert_eq!(&got.envelope_bytes, env);
        // The receipt's promise is kept: the block was cut before its deadline.
        assert!(
            got.header.header.time_ms <= *deadline,
            "block at {} after the deadline {deadline}",
            got.header.header.time_ms
        );
    }
    // Block maps damaged on disk under the running node: a look-up that does not lead to
    // the signed root reads the block whole, and still answers with what verifies.
    let maps = sb.data_dir.join("ledger").join("maps");
    let mut bytes = std::fs::read(&maps).unwrap();
    for b in bytes.iter_mut().skip(8) {
        *b ^= 0x5a;
    }
    std::fs::write(&maps, bytes).unwrap();
    for (id, (env, _)) in ids.iter().zip(&with_deadlines) {
        assert_eq!(&l.message(*id).await.unwrap().envelope_bytes, env);
    }
    let latest = l.block(None).await.unwrap();
    let first = l.block(Some(0)).await.unwrap();
    assert_eq!(first.block.header.header.height, 0);
    assert!(latest.block.header.header.height >= first.block.header.header.height);
    // Pinned: a second client on the same state dir agrees.
    Ledger::connect(&c, &sb.client_dir).await.unwrap();

    // Missing and malformed look-ups.
    let mut raw = LedgerClient::new(sb.channel().await.unwrap());
    let e = raw
        .get_block(GetBlockRequest {
            at: Some(get_block_request::At::Height(1_000_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = raw
        .get_message(GetMessageRequest {
            message_id: vec![7; 32],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = raw
        .get_message(GetMessageRequest {
            message_id: vec![7; 5],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let e = raw
        .get_block(GetBlockRequest {
            at: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());

    // A block by id, a range of headers, and the stream of blocks.
    use blockpost_proto::v1::{GetHeadersRequest, SubscribeBlocksRequest};
    let by_id = raw
        .get_block(GetBlockRequest {
            at: Some(get_block_request::At::Id(first.block.header.id.to_vec())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let h0 = by_id.block.unwrap().header.unwrap();
    assert_eq!(
        blockpost_core::block::block_id(&h0.header),
        first.block.header.id
    );
    let e = raw
        .get_block(GetBlockRequest {
            at: Some(get_block_request::At::Id(vec![9; 32])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let height = builder.height();
    let headers = raw
        .get_headers(GetHeadersRequest {
            from_height: 0,
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers.headers.len() as u64, height);
    let key = builder.public_key();
    for (h, s) in headers.headers.iter().enumerate() {
        let v = blockpost_core::block::verify_header(s, &key).unwrap();
        assert_eq!(v.header.height, h as u64);
    }
    let e = raw
        .get_headers(GetHeadersRequest {
            from_height: height,
            count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let mut blocks = tokio::time::timeout(
        Duration::from_secs(10),
        raw.subscribe_blocks(SubscribeBlocksRequest { from_height: 0 }),
    )
    .await
    .expect("SubscribeBlocks answers")
    .unwrap()
    .into_inner();
    for h in 0..height {
        let b = tokio::time::timeout(Duration::from_secs(10), blocks.message())
            .await
            .unwrap_or_else(|_| panic!("block {h} of {height} never came"))
            .unwrap()
            .unwrap();
        let v = verify_block(&b.block.unwrap(), &key).unwrap();
        assert_eq!(v.header.header.height, h);
    }
    // A new block comes down the same stream.
    send_n(&mut m, &a, 1, "settle-9").await;
    let next = tokio::time::timeout(Duration::from_secs(10), blocks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v = verify_block(&next.block.unwrap(), &key).unwrap();
    assert_eq!(v.header.header.height, height);
    drop(blocks);

    // The CLI verifies and prints what the issue names.
    let bin = blockpost_tests::blockpost_bin().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .args(["--endpoint", &sb.endpoint])
            .env("BLOCKPOST_CONFIG_DIR", &sb.client_dir)
            .output()
            .unwrap()
    };
    let out = cli(&["message", &hex::encode(ids[0]), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in [
        "message_id",
        "height",
        "leaf_index",
        "envelope",
        "inclusion_proof",
        "block_root",
        "header",
        "header_hash",
        "ledger_index",
        "ledger_proof",
        "ledger_checkpoint",
    ] {
        assert!(!v[f].is_null(), "message --json lacks {f}");
    }
    let out = cli(&["block", "latest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["block", "nine"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a block height"));
    sb.stop().await;
}

/// The node is killed (`kill -9`) under load twice, and the auditor, its own process on
/// the read-only NATS user, once in between: thousands of receipted messages, each in
/// exactly one block by its deadline, and the auditor, which resumes where it was killed,
/// raises no alert at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_receipted_message_and_repeats_none() {
    use std::sync::{Arc, Mutex};

    use blockpost_client::{Client, Ledger};
    use blockpost_proto::v1::GetAuditStatusRequest;
    use blockpost_proto::v1::audit_client::AuditClient;

    /// Receipted messages per round before the node is killed.
    const PER_ROUND: usize = 1_000;

    let nats = tokio::task::spawn_blocking(blockpost_tests::NatsServer::start)
        .await
        .unwrap()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let port = blockpost_node::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let blockpost_node::NatsAuth::UserPassword { user, password } = nats.reader_auth() else {
        panic!("the test server has a read-only user");
    };
    let reader_file = tmp.path().join("reader.creds");
    std::fs::write(&reader_file, format!("{user}:{password}")).unwrap();
    let audit_data = tmp.path().join("auditor");
    let audit_port = blockpost_node::free_port().unwrap();
    let audit_endpoint = format!("http://127.0.0.1:{audit_port}");
    let nats_url = nats.url();
    let spawn_auditor = || {
        blockpost_tests::spawn_auditor(&endpoint, &nats_url, &reader_file, &audit_data, audit_port)
    };
    let mut auditor: Option<std::process::Child> = None;
    let a = Arc::new(Identity::generate());
    let b = Arc::new(Identity::generate());
    // (envelope, receipt deadline) of every receipted message.
    let receipted: Arc<Mutex<Vec<(Vec<u8>, i64)>>> = Arc::default();
    for round in 0..2 {
        let mut node = blockpost_tests::spawn_node(&data, port, Some(&nats));
        let state = tmp.path().join(format!("client-{round}"));
        let mut c = wait_for(Duration::from_secs(30), "the node", || async {
            Client::connect(&endpoint, &state).await.ok()
        })
        .await
        .unwrap();
        if round == 0 {
            c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
            c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
            auditor = Some(spawn_auditor());
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..4 {
            // Senders 0 and 2 are bank A, 1 and 3 bank B: each pair sends `finish` for the
            // same transactions, so that transactions close while the node is killed.
            let me = if t % 2 == 0 { a.clone() } else { b.clone() };
            let (from, other) = if t % 2 == 0 {
                ("bank-a", "bank-b")
            } else {
                ("bank-b", "bank-a")
            };
            let (endpoint, receipted, stop) = (endpoint.clone(), receipted.clone(), stop.clone());
            let state = tmp.path().join(format!("sender-{round}-{t}"));
            tasks.push(tokio::spawn(async move {
                let Ok(mut m) = Messenger::connect(&endpoint, &state).await else {
                    return;
                };
                let to = vec![other.to_owned()];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let tx = format!("kill-{round}-{}-{i}", t / 2);
                    let out = Outgoing {
                        delivery: None,
                        from,
                        to: &to,
                        transaction_id: &tx,
                        kind: MessageKind::Finish,
                        content_type: "text/plain",
                        body: format!("round {round} sender {t} message {i}").into_bytes(),
                        encrypt: false,
                        transaction_deadline_ms: None,
                    };
                    match m.send(&me, out).await {
                        Ok((env, r)) => receipted
                            .lock()
                            .unwrap()
                            .push((env.encode_to_vec(), r.block_deadline_ms)),
                        Err(_) => return, // the node is gone
                    }
                }
            }));
        }
        // Let blocks be cut under load, then kill the node in the middle of it; in the
        // second round the auditor is killed first, halfway, and started again.
        let target = PER_ROUND * (round + 1);
        let mut auditor_killed = false;
        wait_for(Duration::from_secs(120), "messages receipted", || {
            let n = receipted.lock().unwrap().len();
            if round == 1 && !auditor_killed && n >= target - PER_ROUND / 2 {
                let mut au = auditor.take().unwrap();
                au.kill().unwrap();
                au.wait().unwrap();
                auditor = Some(spawn_auditor());
                auditor_killed = true;
            }
            async move { (n >= target).then_some(()) }
        })
        .await
        .unwrap();
        node.kill().unwrap();
        node.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    let receipted = receipted.lock().unwrap().clone();
    assert!(
        receipted.len() >= 2 * PER_ROUND,
        "only {} receipts",
        receipted.len()
    );

    // After the restart, every receipted message is in exactly one block, by its deadline.
    let mut node = blockpost_tests::spawn_node(&data, port, Some(&nats));
    let state = tmp.path().join("client-final");
    let c = wait_for(Duration::from_secs(30), "the node", || async {
        Client::connect(&endpoint, &state).await.ok()
    })
    .await
    .unwrap();
    let mut l = Ledger::connect(&c, &state).await.unwrap();
    let ids: Vec<[u8; 32]> = receipted
        .iter()
        .map(|(e, _)| blockpost_core::block::block_id(e))
        .collect();
    // Every receipted message, not only the last receipted: receipts signed in one batch
    // come back in any order, so the last one receipted need not be the last on the
    // firehose.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    for (k, id) in ids.iter().enumerate() {
        let what = format!(
            "receipted message {k} of {} ({}) in a block after the restart",
            ids.len(),
            hex::encode(id)
        );
        let left = until.saturating_duration_since(std::time::Instant::now());
        wait_for(left, &what, async || l.message(*id).await.ok())
            .await
            .unwrap();
    }
    let latest = l.block(None).await.unwrap();
    let mut seen: HashMap<[u8; 32], (usize, i64)> = HashMap::new();
    // Replaying the transaction rules over the whole chain gives every closing record, at
    // its place: none missing, none twice.
    let mut book = Book::new(l.info().transaction_timeout_ms, []);
    let mut closed: HashMap<String, usize> = HashMap::new();
    for h in 0..=latest.block.header.header.height {
        let blk = l.block(Some(h)).await.unwrap();
        let entries = replay_block(
            &mut book,
            h,
            blk.block.header.header.time_ms,
            &blk.block.leaves,
            |id| closed.contains_key(id),
        )
        .unwrap();
        for e in entries {
            if let Entry::Closing(t, _) = e {
                *closed.entry(t.id).or_default() += 1;
            }
        }
        for leaf in &blk.block.leaves {
            let e = seen
                .entry(blockpost_core::block::block_id(leaf))
                .or_insert((0, blk.block.header.header.time_ms));
            e.0 += 1;
        }
    }
    for (k, ((env, deadline), id)) in receipted.iter().zip(&ids).enumerate() {
        let (n, time) = seen.get(id).copied().unwrap_or((0, 0));
        // What it was, to tell a lost message from a repeated one when this fails.
        let what = || {
            let e = Envelope::decode(env.as_slice()).unwrap();
            let c = EnvelopeContent::decode(e.content.as_slice()).unwrap();
            format!(
                "receipt {k} of {}: {} in {} from {} (deadline {deadline}); {} blocks; closings {}",
                receipted.len(),
                hex::encode(id),
                c.transaction_id,
                c.sender,
                latest.block.header.header.height + 1,
                closed.get(&c.transaction_id).copied().unwrap_or(0)
            )
        };
        assert_eq!(n, 1, "a receipted message in {n} blocks: {}", what());
        assert!(
            time <= *deadline,
            "block at {time} after the deadline {deadline}"
        );
    }
    assert!(
        closed.len() > 5,
        "only {} transactions finished under load",
        closed.len()
    );
    assert!(closed.values().all(|n| *n == 1));
    // The auditor that ran through it all (the kills, the restarts, its own kill) finds
    // nothing to raise once it has caught up.
    let height = latest.block.header.header.height;
    let ns = blockpost_core::wire::Namespace::for_origin(&c.info().origin);
    let on_firehose = async_nats::jetstream::new(nats.connect().await.unwrap())
        .get_stream(ns.firehose_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    assert!(on_firehose >= receipted.len() as u64);
    let status = wait_for(Duration::from_secs(60), "the auditor caught up", || {
        let audit_endpoint = audit_endpoint.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(audit_endpoint)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut grpc = AuditClient::new(channel);
            let s = grpc
                .get_audit_status(GetAuditStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.blocks_verified > height
                && s.firehose_checked == on_firehose
                && s.firehose_lag == 0
                && s.waiting == 0
                && s.blocks_current)
                .then_some(s)
        }
    })
    .await
    .unwrap();
    // It resumed where it was killed: it did not read the whole firehose again.
    assert!(status.firehose_read < on_firehose, "{status:?}");
    assert_eq!(status.alerts, 0, "{status:?}");
    let alerts = std::fs::read_to_string(audit_data.join("alerts.jsonl")).unwrap_or_default();
    assert!(!alerts.contains('{'), "{alerts}");
    let mut au = auditor.take().unwrap();
    au.kill().unwrap();
    au.wait().unwrap();
    node.kill().unwrap();
    node.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_load_loses_nothing_and_repeats_nothing() {
    use std::sync::{Arc, Mutex};

    let mut sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let a = Arc::new(Identity::generate());
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
    c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
    let receipted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..2 {
        let (endpoint, dir) = (sb.endpoint.clone(), sb.client_dir.join(format!("s{t}")));
        let (receipted, stop, a) = (receipted.clone(), stop.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut m = Messenger::connect(&endpoint, &dir).await.unwrap();
            let to = vec!["bank-b".to_owned()];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let out = Outgoing {
                    delivery: None,
                    from: "bank-a",
                    to: &to,
                    transaction_id: "settle-nats",
                    kind: MessageKind::Message,
                    content_type: "text/plain",
                    body: format!("sender {t} message {i}").into_bytes(),
                    encrypt: false,
                    transaction_deadline_ms: None,
                };
                // While NATS is down the gateway refuses (UNAVAILABLE); keep going.
                match m.send(&a, out).await {
                    Ok((env, _)) => receipted.lock().unwrap().push(env.encode_to_vec()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    // Load flows, then NATS dies under it; the gateway notices (it refuses, retryable)
    // before NATS comes back.
    wait_for(
        Duration::from_secs(30),
        "messages receipted under load",
        || {
            let n = receipted.lock().unwrap().len();
            async move { (n > 20).then_some(()) }
        },
    )
    .await
    .unwrap();
    let before = receipted.lock().unwrap().len();
    let refusals = sb.gateway.bus_refusals();
    sb.nats.kill();
    wait_for(
        Duration::from_secs(30),
        "refusals while NATS is down",
        || {
            let n = sb.gateway.bus_refusals();
            async move { (n > refusals + 2).then_some(()) }
        },
    )
    .await
    .unwrap();
    sb.nats.restart().unwrap();
    // Load goes on after the restart.
    wait_for(
        Duration::from_secs(30),
        "messages receipted after the restart",
        || {
            let n = receipted.lock().unwrap().len();
            async move { (n > before + 20).then_some(()) }
        },
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = receipted.lock().unwrap().clone();
    assert!(before > 10, "only {before} receipts before the restart");
    wait_for(
        Duration::from_secs(30),
        "every receipted message in a block",
        || {
            let seen = verify_ledger(&sb);
            let all = sent.iter().all(|e| seen.contains_key(e));
            async move { all.then_some(()) }
        },
    )
    .await
    .unwrap();
    let seen = verify_ledger(&sb);
    for e in &sent {
        assert_eq!(
            seen.get(e),
            Some(&1),
            "a receipted message is in more than one block"
        );
    }
    // The blocks stream holds every block once, also those cut while NATS was away.
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let height = sb.node.builder().unwrap().height();
    wait_for(
        Duration::from_secs(20),
        "every block on the blocks stream",
        || {
            let (js, ns) = (js.clone(), ns.clone());
            async move {
                let mut st = js.get_stream(ns.blocks_stream()).await.ok()?;
                let n = st.info().await.ok()?.state.messages;
                let last = st
                    .get_last_raw_message_by_subject(&ns.blocks_subject())
                    .await
                    .ok()?;
                let b = Block::decode(last.payload.as_ref()).ok()?;
                let h =
                    blockpost_proto::v1::BlockHeader::decode(b.header?.header.as_slice()).ok()?;
                (n >= height && n == h.height + 1).then_some(())
            }
        },
    )
    .await
    .unwrap();
    sb.stop().await;
}

/// An envelope from `from` (registered at log index `index`) to bank-b, signed by `key`.
fn envelope(key: &ed25519_dalek::SigningKey, index: u64, body: &str) -> Vec<u8> {
    use blockpost_proto::v1::{EnvelopeContent, envelope_content::Body};
    let c = EnvelopeContent {
        delivery: None,
        sender: "bank-a".into(),
        sender_key_index: index,
        recipients: vec!["bank-b".into()],
        transaction_id: "direct".into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: blockpost_core::now_ms(),
        nonce: rand::random(),
        body: Some(Body::Plaintext(body.as_bytes().to_vec())),
        transaction_deadline_ms: None,
    };
    blockpost_core::sign_envelope(key, c.encode_to_vec()).encode_to_vec()
}

#[tokio::test]
async fn the_builder_checks_every_signature_its_gateway_did_not_tag() {
    use blockpost_core::wire::{FirehoseMac, GATEWAY_MAC_HEADER};
    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let a = Identity::generate();
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    let ea = c.register(&a, "bank-a", "Bank A AG", None).await.unwrap();
    c.register(&b, "bank-b", "Bank B AG", None).await.unwrap();
    let builder = sb.node.builder().unwrap().clone();

    // Through the gateway: tagged, so the builder takes the gateway's check.
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let mut sent = send_n(&mut m, &a, 3, "settle-1").await;
    wait_for(Duration::from_secs(20), "3 messages in blocks", || {
        let n = builder.last_sequence();
        async move { (n >= 3).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(builder.signatures_checked(), 0);

    // Straight onto the firehose, as anyone with publish rights on it could.
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let publish = |bytes: Vec<u8>, tag: Option<String>| {
        let js = js.clone();
        let subject = ns.firehose_subject();
        async move {
            let mut h = async_nats::HeaderMap::new();
            if let Some(t) = tag {
                h.insert(GATEWAY_MAC_HEADER, t.as_str());
            }
            js.publish_with_headers(subject, h, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let mallory = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    // 1. Signed by the sender, no tag: checked in full, and taken.
    let good = envelope(&a.signing, ea.leaf_index, "untagged but signed");
    publish(good.clone(), None).await;
    sent.push(good);
    // 2. Not signed by the sender, no tag: refused.
    let forged = envelope(&mallory, ea.leaf_index, "forged, no tag");
    publish(forged.clone(), None).await;
    // 3. Not signed by the sender, a made-up tag: refused.
    let forged2 = envelope(&mallory, ea.leaf_index, "forged, made-up tag");
    publish(forged2.clone(), Some("00".repeat(32))).await;
    // 4. Not signed by the sender, tagged under another key: refused.
    let forged3 = envelope(&mallory, ea.leaf_index, "forged, foreign tag");
    let other = FirehoseMac::derive(&mallory);
    publish(forged3.clone(), Some(other.tag(&forged3))).await;
    // 5. A genuine tag of another envelope: refused.
    let forged4 = envelope(&mallory, ea.leaf_index, "forged, borrowed tag");
    let borrowed = FirehoseMac::derive(&mallory).tag(&sent[0]);
    publish(forged4.clone(), Some(borrowed)).await;
    // Then one more through the gateway, so that everything before it was decided.
    sent.extend(send_n(&mut m, &a, 1, "settle-1").await);

    wait_for(Duration::from_secs(20), "every message decided", || {
        let n = builder.last_sequence();
        async move { (n >= 9).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(builder.refused(), 4);
    assert_eq!(builder.signatures_checked(), 5);
    let seen = verify_ledger(&sb);
    for e in &sent {
        assert_eq!(seen.get(e), Some(&1), "a sent message is not in one block");
    }
    for f in [&forged, &forged2, &forged3, &forged4] {
        assert!(!seen.contains_key(f), "a forged message is in a block");
    }
    sb.stop().await;
}
