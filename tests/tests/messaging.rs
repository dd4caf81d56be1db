//! The messaging gateway in process: the settlement dialogue, every refusal, inbox access
//! and redelivery, streaming submission, and two gateways on one NATS.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_client::{Messenger, Outgoing};
use blockpost_core::{Identity, SealTo, body_aad, inbox_message, now_ms, seal_body, sign_envelope};
use blockpost_messaging::{Gateway, MessagingConfig};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::inbox_client_message::Msg as ClientMsg;
use blockpost_proto::v1::inbox_server_message::Msg as ServerMsg;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::submit_result::Result as Outcome;
use blockpost_proto::v1::{Envelope, EnvelopeContent, InboxClientMessage, InboxHello, MessageKind};
use blockpost_tests::{Sandbox, reason, wait_for};
use ed25519_dalek::Signer as _;
use prost::Message as _;
use tonic::Code;

struct Party {
    id: Identity,
    address: String,
    index: u64,
}

async fn party(sb: &Sandbox, address: &str, name: &str) -> Party {
    let id = Identity::generate();
    let mut c = sb.client().await.unwrap();
    let e = c.register(&id, address, name, None).await.unwrap();
    Party {
        id,
        address: address.into(),
        index: e.leaf_index,
    }
}

fn content(from: &Party, to: &[&str], body: &[u8]) -> EnvelopeContent {
    EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: from.address.clone(),
        sender_key_index: from.index,
        recipients: to.iter().map(|s| s.to_string()).collect(),
        transaction_id: "settle-1".into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: now_ms(),
        nonce: rand::random(),
        body: Some(Body::Plaintext(body.to_vec())),
    }
}

fn envelope(from: &Party, c: &EnvelopeContent) -> Envelope {
    sign_envelope(&from.id.signing, c.encode_to_vec())
}

async fn messaging(sb: &Sandbox) -> MessagingClient<tonic::transport::Channel> {
    MessagingClient::new(
        tonic::transport::Channel::from_shared(sb.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

async fn firehose_len(sb: &Sandbox) -> u64 {
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mut s = js
        .get_stream(sb.directory.namespace().firehose_stream())
        .await
        .unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test]
async fn settlement_dialogue_end_to_end() {
    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "bank-a", "Bank A AG").await;
    let b = party(&sb, "bank-b", "Bank B Ltd").await;
    let mut ma = Messenger::connect(&sb.endpoint, &sb.client_dir.join("a"))
        .await
        .unwrap();
    let mut mb = Messenger::connect(&sb.endpoint, &sb.client_dir.join("b"))
        .await
        .unwrap();
    let to_b = vec!["bank-b".to_string()];
    let to_a = vec!["bank-a".to_string()];
    let say =
        |from: &'static str, to: &'static [String], text: &'static str, kind, encrypt| Outgoing {
            delivery: None,
            from,
            to,
            transaction_id: "settle-1",
            kind,
            content_type: "text/plain",
            body: text.as_bytes().to_vec(),
            encrypt,
            transaction_deadline_ms: None,
        };
    let to_b: &'static [String] = Box::leak(to_b.into_boxed_slice());
    let to_a: &'static [String] = Box::leak(to_a.into_boxed_slice());
    let lines = [
        "I have Y dollars to trade for X stock in Megacorp.",
        "I have the stock. I will transfer it to your correspondent account if you confirm your delivery of the money.",
        "OK. I transferred.",
        "OK. I transferred. Transaction finished.",
    ];
    let (_, r1) = ma
        .send(
            &a.id,
            say("bank-a", to_b, lines[0], MessageKind::Message, false),
        )
        .await
        .unwrap();
    let (_, r2) = mb
        .send(
            &b.id,
            say("bank-b", to_a, lines[1], MessageKind::Message, true),
        )
        .await
        .unwrap();
    let (_, r3) = ma
        .send(
            &a.id,
            say("bank-a", to_b, lines[2], MessageKind::Message, true),
        )
        .await
        .unwrap();
    let (_, r4) = mb
        .send(
            &b.id,
            say("bank-b", to_a, lines[3], MessageKind::Finish, true),
        )
        .await
        .unwrap();
    assert_eq!(
        [
            r1.firehose_sequence,
            r2.firehose_sequence,
            r3.firehose_sequence,
            r4.firehose_sequence
        ],
        [1, 2, 3, 4]
    );
    assert!(r1.block_deadline_ms > r1.accepted_at_ms);

    // Each inbox: in order, signatures verified, encrypted bodies opened.
    let mut got = Vec::new();
    mb.inbox(&b.id, "bank-b", false, |r| {
        got.push((
            r.content.sender.clone(),
            String::from_utf8(r.body.clone().unwrap()).unwrap(),
            r.encrypted,
        ));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        vec![
            ("bank-a".into(), lines[0].into(), false),
            ("bank-a".into(), lines[2].into(), true)
        ]
    );
    let mut got = Vec::new();
    ma.inbox(&a.id, "bank-a", false, |r| {
        got.push((
            String::from_utf8(r.body.clone().unwrap()).unwrap(),
            r.content.kind,
        ));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        vec![
            (lines[1].into(), MessageKind::Message as i32),
            (lines[3].into(), MessageKind::Finish as i32)
        ]
    );
    // Acknowledged: a second read is empty.
    assert_eq!(
        ma.inbox(&a.id, "bank-a", false, |_| Ok(())).await.unwrap(),
        0
    );

    // The firehose is public: metadata for all, plaintext only where it was not encrypted.
    let mut fh = Vec::new();
    ma.firehose(0, 1, false, |r| {
        fh.push((
            r.sequence,
            r.content.sender.clone(),
            r.encrypted,
            r.body.is_some(),
        ));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        fh,
        vec![
            (1, "bank-a".into(), false, true),
            (2, "bank-b".into(), true, false),
            (3, "bank-a".into(), true, false),
            (4, "bank-b".into(), true, false)
        ]
    );
    // The ciphertext bytes on the firehose do not contain the plaintext.
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let s = js
        .get_stream(sb.directory.namespace().firehose_stream())
        .await
        .unwrap();
    let raw = s.get_raw_message(2).await.unwrap();
    assert!(!String::from_utf8_lossy(&raw.payload).contains("I have the stock"));
    let mut fh2 = Vec::new();
    ma.firehose(0, 3, false, |r| {
        fh2.push(r.sequence);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(fh2, vec![3, 4]);
}

#[tokio::test]
async fn bad_envelopes_are_refused_and_never_reach_nats() {
    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let b = party(&sb, "bob", "Bob Ltd").await;
    let r = party(&sb, "rita", "Rita Revoked").await;
    let mut c = sb.client().await.unwrap();
    c.revoke("rita", "gone", Some(&r.id), None).await.unwrap();
    let mut g = messaging(&sb).await;
    // A good one goes through (and warms the replica).
    let good = content(&a, &["bob"], b"hello");
    let receipt = g.submit(envelope(&a, &good)).await.unwrap().into_inner();
    // The identical envelope again is idempotent: same message, same firehose sequence.
    let again = g.submit(envelope(&a, &good)).await.unwrap().into_inner();
    let seq = |r: &blockpost_proto::v1::Receipt| {
        blockpost_proto::v1::ReceiptBody::decode(r.body.as_slice())
            .unwrap()
            .firehose_sequence
    };
    assert_eq!(seq(&receipt), seq(&again));
    let accepted = firehose_len(&sb).await;
    assert_eq!(accepted, 1);

    let mut cases: Vec<(&str, Envelope, Code, &str)> = Vec::new();
    let mut e = envelope(&a, &content(&a, &["bob"], b"x"));
    e.signature[0] ^= 1;
    cases.push((
        "forged signature",
        e,
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let mut e = envelope(&a, &content(&a, &["bob"], b"x"));
    e.signature.clear();
    cases.push((
        "missing signature",
        e,
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let c2 = content(&a, &["bob"], b"x");
    cases.push((
        "signed by another key",
        sign_envelope(&b.id.signing, c2.encode_to_vec()),
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.sender = "mallory".into();
    cases.push((
        "unknown sender",
        envelope(&a, &c2),
        Code::NotFound,
        "UNKNOWN_SENDER",
    ));
    let c2 = content(&r, &["bob"], b"x");
    cases.push((
        "revoked sender",
        envelope(&r, &c2),
        Code::PermissionDenied,
        "REVOKED",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.sender_key_index = b.index;
    cases.push((
        "key index not current",
        envelope(&a, &c2),
        Code::FailedPrecondition,
        "STALE_KEY",
    ));
    let c2 = content(&a, &["nobody"], b"x");
    cases.push((
        "unknown recipient",
        envelope(&a, &c2),
        Code::NotFound,
        "UNKNOWN_RECIPIENT",
    ));
    let c2 = content(&a, &["rita"], b"x");
    cases.push((
        "revoked recipient",
        envelope(&a, &c2),
        Code::PermissionDenied,
        "REVOKED",
    ));
    let mut c2 = content(&a, &["bob"], b"a different body");
    c2.nonce = good.nonce;
    cases.push((
        "replayed nonce",
        envelope(&a, &c2),
        Code::AlreadyExists,
        "REPLAY",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.timestamp_ms -= 3_600_000;
    cases.push((
        "timestamp in the past",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "CLOCK_SKEW",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.timestamp_ms += 3_600_000;
    cases.push((
        "timestamp in the future",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "CLOCK_SKEW",
    ));
    let c2 = content(&a, &["bob"], &vec![7u8; 300 * 1024]);
    cases.push((
        "oversized body",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "TOO_LARGE",
    ));
    let c2 = content(&a, &["bob.>"], b"x");
    cases.push((
        "subject characters in a recipient",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let c2 = content(&a, &["*"], b"x");
    cases.push((
        "wildcard recipient",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.sender = "alice.x".into();
    cases.push((
        "subject characters in the sender",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let sealed = seal_body(
        &[SealTo {
            address: "alice",
            key_index: a.index,
            key: a.id.encryption_public(),
        }],
        b"secret",
        &body_aad("alice", "settle-1"),
    )
    .unwrap();
    let mut c2 = content(&a, &["bob"], b"");
    c2.body = Some(Body::Encrypted(sealed));
    cases.push((
        "ciphertext for someone else",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "CIPHERTEXTS_MISADDRESSED",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.body = None;
    cases.push((
        "no body",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "NO_BODY",
    ));
    let mut c2 = content(&a, &["bob", "bob"], b"x");
    c2.transaction_id = "t".into();
    cases.push((
        "recipient twice",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "DUPLICATE_RECIPIENT",
    ));
    let mut c2 = content(&a, &["bob"], b"x");
    c2.transaction_id = String::new();
    cases.push((
        "empty transaction id",
        envelope(&a, &c2),
        Code::InvalidArgument,
        "INVALID_TEXT",
    ));
    cases.push((
        "garbage bytes",
        Envelope {
            content: vec![0xff, 0x01, 0x02, 0x99],
            signature: vec![0; 64],
        },
        Code::InvalidArgument,
        "INVALID_CONTENT",
    ));
    for (what, env, code, want) in cases {
        let st = g.submit(env).await.expect_err(what);
        assert_eq!(st.code(), code, "{what}: {}", st.message());
        assert_eq!(reason(&st), want, "{what}: {}", st.message());
    }
    assert_eq!(
        firehose_len(&sb).await,
        accepted,
        "nothing refused reached the firehose"
    );
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mut inbox = js
        .get_stream(sb.directory.namespace().inbox_stream())
        .await
        .unwrap();
    assert_eq!(
        inbox.info().await.unwrap().state.messages,
        1,
        "nor an inbox"
    );
}

#[tokio::test]
async fn inbox_needs_the_key_and_redelivers_what_was_not_acknowledged() {
    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let b = party(&sb, "bob", "Bob Ltd").await;
    let mut g = messaging(&sb).await;
    for i in 0..3 {
        g.submit(envelope(
            &a,
            &content(&a, &["bob"], format!("m{i}").as_bytes()),
        ))
        .await
        .unwrap();
    }
    // Answering the challenge with another key: refused.
    let open = |signer: Identity, address: &'static str| {
        let mut g = g.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let mut s = g
                .inbox(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let Some(ServerMsg::Challenge(ch)) = s.message().await.unwrap().unwrap().msg else {
                panic!("no challenge")
            };
            let signature = signer
                .signing
                .sign(&inbox_message(&ch, address))
                .to_bytes()
                .to_vec();
            tx.send(InboxClientMessage {
                msg: Some(ClientMsg::Hello(InboxHello {
                    address: address.into(),
                    signature,
                    follow: false,
                })),
            })
            .await
            .unwrap();
            (tx, s)
        }
    };
    let (_tx, mut s) = open(a.id, "bob").await;
    let st = s.message().await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{}", st.message());

    // Read one message without acknowledging it, then go away.
    let (tx, mut s) = open(
        Identity {
            signing: b.id.signing.clone(),
            encryption: b.id.encryption.clone(),
        },
        "bob",
    )
    .await;
    let Some(ServerMsg::Delivery(d)) = s.message().await.unwrap().unwrap().msg else {
        panic!("no delivery")
    };
    drop(tx);
    drop(s);
    // The gateway gives back what was not acknowledged as soon as the client is gone:
    // all three come again, in order.
    let mut mb = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let mut bodies = Vec::new();
    // Normally at once (the gateway NAKs); at worst after the 10 s ack wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bodies.len() < 3 && std::time::Instant::now() < deadline {
        mb.inbox(&b.id, "bob", false, |r| {
            bodies.push((
                r.sequence,
                String::from_utf8(r.body.clone().unwrap()).unwrap(),
            ));
            Ok(())
        })
        .await
        .unwrap();
    }
    assert_eq!(
        bodies.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        vec!["m0", "m1", "m2"]
    );
    assert_eq!(bodies[0].0, d.sequence);
}

#[tokio::test]
async fn submit_stream_answers_in_order() {
    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    party(&sb, "bob", "Bob Ltd").await;
    let mut g = messaging(&sb).await;
    let mut envs: Vec<Envelope> = (0..100)
        .map(|i| envelope(&a, &content(&a, &["bob"], format!("{i}").as_bytes())))
        .collect();
    envs[42].signature[1] ^= 1;
    let envs_copy = envs.clone();
    let out = g
        .submit_stream(tokio_stream::iter(envs))
        .await
        .unwrap()
        .into_inner();
    use futures::StreamExt as _;
    let results: Vec<_> = out.collect().await;
    assert_eq!(results.len(), 100);
    let mut receipts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r.unwrap().result.unwrap() {
            Outcome::Receipt(r) => {
                assert_ne!(i, 42);
                receipts.push((i, r));
            }
            Outcome::Error(e) => {
                assert_eq!(i, 42);
                assert_eq!(e.code, Code::PermissionDenied as i32);
            }
        }
    }
    assert_eq!(firehose_len(&sb).await, 99);
    // Receipts that finished together share one signature over their batch's Merkle root;
    // each verifies alone, for its own envelope.
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&sb.gateway.info().receipt_key.try_into().unwrap())
            .unwrap();
    for (i, r) in &receipts {
        let body = blockpost_core::verify_receipt(&key, r).unwrap();
        assert_eq!(
            body.message_id,
            blockpost_core::message_id(&envs_copy[*i]).to_vec()
        );
    }
    let all: Vec<_> = receipts.iter().map(|(_, r)| r.clone()).collect();
    assert!(
        blockpost_core::verify_receipts(&key, &all)
            .iter()
            .all(Result::is_ok)
    );
    let batched = all.iter().filter(|r| r.batch.is_some()).count();
    let signatures: std::collections::HashSet<_> = all.iter().map(|r| &r.signature).collect();
    assert!(batched > 0, "no receipt was signed in a batch");
    assert!(signatures.len() < all.len());
    let (signed, made) = sb.gateway.receipt_signatures();
    assert_eq!(signed, 99);
    assert_eq!(made, signatures.len() as u64);
}

#[tokio::test]
async fn two_gateways_share_only_nats() {
    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let b = party(&sb, "bob", "Bob Ltd").await;
    // A second gateway: its own key and port, the same NATS.
    let nats2 = sb.nats.connect().await.unwrap();
    let replica2 = blockpost_replica::Replica::start(
        async_nats::jetstream::new(nats2.clone()),
        &sb.directory.namespace(),
        sb.directory.info().verifier_key,
    );
    let gw2 = Gateway::start(
        MessagingConfig::default(),
        ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        sb.directory.namespace(),
        replica2,
        std::sync::Arc::new(blockpost_core::SystemClock),
        nats2,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = tonic::service::Routes::new(gw2.clone().into_service());
    tokio::spawn(blockpost_node::serve(
        listener,
        routes,
        std::future::pending(),
    ));
    let mut g1 = messaging(&sb).await;
    let mut g2 = MessagingClient::new(
        tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let first = content(&a, &["bob"], b"via gateway 1");
    g1.submit(envelope(&a, &first)).await.unwrap();
    // The same nonce through the other gateway is a replay.
    let mut replay = content(&a, &["bob"], b"via gateway 2");
    replay.nonce = first.nonce;
    let st = g2.submit(envelope(&a, &replay)).await.unwrap_err();
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    g2.submit(envelope(&a, &content(&a, &["bob"], b"via gateway 2")))
        .await
        .unwrap();
    assert_eq!(firehose_len(&sb).await, 2);
    // Revocation reaches the second gateway within a second.
    let mut c = sb.client().await.unwrap();
    let t = std::time::Instant::now();
    c.revoke("alice", "compromised", Some(&a.id), None)
        .await
        .unwrap();
    wait_for(Duration::from_secs(1), "revocation on gateway 2", || {
        let p = gw2.replica().get("alice");
        async move { p.filter(|p| p.revoked()).map(|_| ()) }
    })
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    let st = g2
        .submit(envelope(&a, &content(&a, &["bob"], b"after revocation")))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let _ = b;
}

#[tokio::test]
async fn the_replica_applies_only_authorised_entries() {
    use blockpost_core::{Operation, wire};
    use blockpost_proto::v1::{EntryKind, LogEntry, RotateBody, SignedRequest};

    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let _b = party(&sb, "bob", "Bob Ltd").await;
    assert!(
        sb.gateway
            .replica()
            .wait_applied(2, Duration::from_secs(5))
            .await
    );
    // A local process with publish rights publishes a rotation of alice to its own key, at
    // the next index, signed by itself: in no signed checkpoint, and refused by the core
    // rules too, so the replica never applies it.
    let mallory = Identity::generate();
    let body = RotateBody {
        address: "alice".into(),
        current_index: a.index,
        new_signing_key: mallory.signing_public().to_vec(),
        new_encryption_key: mallory.encryption_public().to_vec(),
        timestamp_ms: now_ms(),
    }
    .encode_to_vec();
    let forged = LogEntry {
        kind: EntryKind::Rotate as i32,
        address: "alice".into(),
        real_name: "Alice AG".into(),
        signing_key: mallory.signing_public().to_vec(),
        encryption_key: mallory.encryption_public().to_vec(),
        previous_index: a.index,
        request: Some(SignedRequest {
            signature: Operation::Rotate.sign(&mallory.signing, &body),
            second_signature: Operation::Rotate.sign(&mallory.signing, &body),
            body,
        }),
        ..Default::default()
    };
    let nats = sb.nats.connect().await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut h = async_nats::HeaderMap::new();
    h.insert(wire::LEAF_INDEX_HEADER, "2");
    h.insert(wire::MSG_ID_HEADER, "forged-2");
    js.publish_with_headers(
        sb.directory.namespace().entry_subject(),
        h,
        forged.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "the forged entry refused", || {
        let n = sb.gateway.replica().rejected();
        async move { (n >= 1).then_some(()) }
    })
    .await
    .unwrap();
    let p = sb.gateway.replica().get("alice").unwrap();
    assert_eq!(p.signing_key.to_bytes(), a.id.signing_public());
    assert_eq!(sb.gateway.replica().applied(), 2);
    // Mallory's envelopes "from" alice are refused; the genuine entry 2 still applies.
    let mut g = messaging(&sb).await;
    let mut c = content(&a, &["bob"], b"from mallory");
    c.sender_key_index = 2;
    let st = g
        .submit(sign_envelope(&mallory.signing, c.encode_to_vec()))
        .await
        .unwrap_err();
    assert_ne!(st.code(), Code::Ok);
    let _carol = party(&sb, "carol", "Carol SA").await;
    assert!(
        sb.gateway
            .replica()
            .wait_applied(3, Duration::from_secs(5))
            .await
    );
    g.submit(envelope(&a, &content(&a, &["bob", "carol"], b"still me")))
        .await
        .unwrap();
    // Other bytes at an index already applied, and a registration that the core rules
    // would accept (self-signed, with a certificate of the right shape), at the next
    // index: neither is in a checkpoint signed by the log key, so neither is applied, and
    // the gateway carries on.
    let rejected = sb.gateway.replica().rejected();
    let mut h = async_nats::HeaderMap::new();
    h.insert(wire::LEAF_INDEX_HEADER, "1");
    h.insert(wire::MSG_ID_HEADER, "forged-1");
    js.publish_with_headers(
        sb.directory.namespace().entry_subject(),
        h,
        b"another history".to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let zz = Identity::generate();
    let self_signed = self_signed_registration("zz1", "Zz AG", &zz);
    assert!(
        blockpost_core::authorize_entry(&self_signed, None).is_ok(),
        "the core rules alone accept it"
    );
    let mut h = async_nats::HeaderMap::new();
    h.insert(wire::LEAF_INDEX_HEADER, "3");
    h.insert(wire::TREE_SIZE_HEADER, "4");
    h.insert(
        wire::PROOF_HEADER,
        wire::encode_proof(&[[7u8; 32]; 2]).as_str(),
    );
    h.insert(wire::MSG_ID_HEADER, "forged-3");
    js.publish_with_headers(
        sb.directory.namespace().entry_subject(),
        h,
        self_signed.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "both refused", || {
        let n = sb.gateway.replica().rejected();
        async move { (n >= rejected + 2).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(sb.gateway.replica().conflicts(), 0);
    assert!(sb.gateway.replica().get("zz1").is_none());
    // The genuine entry 3 still applies, and the gateway still serves.
    let _dave = party(&sb, "dave", "Dave GmbH").await;
    assert!(
        sb.gateway
            .replica()
            .wait_applied(4, Duration::from_secs(5))
            .await
    );
    g.submit(envelope(&a, &content(&a, &["dave"], b"hello dave")))
        .await
        .unwrap();
}

#[tokio::test]
async fn junk_on_an_inbox_subject_is_never_delivered() {
    use blockpost_core::wire;

    let sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let b = party(&sb, "bob", "Bob Ltd").await;
    sb.gateway
        .replica()
        .wait_applied(2, Duration::from_secs(5))
        .await;
    let mut g = messaging(&sb).await;
    let genuine = content(&a, &["bob"], b"genuine");
    g.submit(envelope(&a, &genuine)).await.unwrap();
    // A local process publishes straight to bob's inbox subject.
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let bob = blockpost_core::Address::parse("bob").unwrap();
    let mallory = Identity::generate();
    let forged = sign_envelope(
        &mallory.signing,
        content(&a, &["bob"], b"send the money to mallory").encode_to_vec(),
    );
    let unsent = envelope(&a, &content(&a, &["bob"], b"never submitted"));
    let junk: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "1"),
        (forged.encode_to_vec(), "1"),
        (unsent.encode_to_vec(), "99"),
    ];
    for (i, (payload, seq)) in junk.into_iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(wire::MSG_ID_HEADER, format!("junk-{i}").as_str());
        h.insert(wire::FIREHOSE_SEQ_HEADER, seq);
        js.publish_with_headers(ns.inbox_subject(&bob), h, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Inbox entries point at their firehose message: one that names another message than
    // the firehose holds at its sequence is junk too.
    let mut h = async_nats::HeaderMap::new();
    h.insert(wire::MSG_ID_HEADER, "junk-pointer");
    h.insert(wire::FIREHOSE_SEQ_HEADER, "1");
    h.insert(wire::MESSAGE_ID_HEADER, hex::encode([7u8; 32]).as_str());
    js.publish_with_headers(ns.inbox_subject(&bob), h, Default::default())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut mb = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let mut bodies = Vec::new();
    mb.inbox(&b.id, "bob", false, |r| {
        bodies.push(r.body.clone().unwrap_or_default());
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(bodies, vec![b"genuine".to_vec()]);
    assert_eq!(sb.gateway.refused_deliveries(), 4);
    // The genuine entry itself holds no copy of the envelope, only where it is.
    let inbox = js.get_stream(ns.inbox_stream()).await.unwrap();
    let first = inbox.get_raw_message(1).await.unwrap();
    assert!(first.payload.is_empty(), "an inbox entry is a pointer");
    assert_eq!(
        first
            .headers
            .get(wire::FIREHOSE_SEQ_HEADER)
            .map(|v| v.as_str()),
        Some("1")
    );
}

/// A registration signed by its own key, with a certificate of the right shape from a CA
/// of its own: everything the core rules check, but in no checkpoint of the log.
fn self_signed_registration(
    address: &str,
    name: &str,
    id: &Identity,
) -> blockpost_proto::v1::LogEntry {
    use blockpost_proto::v1::{EntryKind, LogEntry, RegisterBody, SignedRequest};
    use rcgen::{CertificateParams, CustomExtension, DnType, Issuer, KeyPair, SanType};

    struct Ed([u8; 32]);
    impl rcgen::PublicKeyData for Ed {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ED25519
        }
    }
    let ca = Issuer::new(
        CertificateParams::default(),
        KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    );
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::URI(
        format!("blockpost:{address}").try_into().unwrap(),
    )];
    let oid: Vec<u64> = blockpost_core::X25519_EXTENSION_OID
        .split('.')
        .map(|a| a.parse().unwrap())
        .collect();
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &oid,
        blockpost_directory::x25519_spki(&id.encryption_public()),
    )];
    let certificate = p
        .signed_by(&Ed(id.signing_public()), &ca)
        .unwrap()
        .der()
        .to_vec();
    let body = RegisterBody {
        lei: Default::default(),
        address: address.into(),
        real_name: name.into(),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: vec![],
        timestamp_ms: now_ms(),
    }
    .encode_to_vec();
    LogEntry {
        kind: EntryKind::Register as i32,
        address: address.into(),
        real_name: name.into(),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        certificate,
        logged_at_ms: now_ms(),
        request: Some(SignedRequest {
            signature: blockpost_core::Operation::Register.sign(&id.signing, &body),
            body,
            second_signature: vec![],
        }),
        ..Default::default()
    }
}

/// A send while the bus is away is sent again, as it was, until the gateway takes it: the
/// message is on the firehose once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_while_the_bus_is_away_goes_through_once_it_is_back() {
    let mut sb = Sandbox::start().await.unwrap();
    let a = party(&sb, "alice", "Alice AG").await;
    let _b = party(&sb, "bob", "Bob Ltd").await;
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let to = vec!["bob".to_owned()];
    let out = |body: &str| Outgoing {
        delivery: None,
        from: "alice",
        to: &to,
        transaction_id: "resend-1",
        kind: MessageKind::Message,
        content_type: "text/plain",
        body: body.as_bytes().to_vec(),
        encrypt: false,
        transaction_deadline_ms: None,
    };
    // The first send, once the gateway's replica knows alice.
    sb.gateway
        .replica()
        .wait_applied(2, Duration::from_secs(5))
        .await;
    m.send(&a.id, out("before")).await.unwrap();
    let before = firehose_len(&sb).await;
    sb.nats.kill();
    let (nats, gateway) = (&mut sb.nats, sb.gateway.clone());
    let refused = gateway.bus_refusals();
    // Back once the gateway has answered the send UNAVAILABLE at least once.
    let back = async move {
        wait_for(
            Duration::from_secs(20),
            "a send refused while NATS is away",
            || {
                let n = gateway.bus_refusals();
                async move { (n > refused).then_some(()) }
            },
        )
        .await
        .unwrap();
        tokio::task::block_in_place(|| nats.restart()).unwrap();
    };
    let (sent, ()) = tokio::join!(m.send(&a.id, out("during")), back);
    let (env, receipt) = sent.expect("sent again until the bus was back");
    assert_eq!(
        receipt.message_id,
        blockpost_core::message_id(&env).to_vec()
    );
    assert_eq!(firehose_len(&sb).await, before + 1, "on the firehose once");
}
