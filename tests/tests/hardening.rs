//! Bad bytes never reach the permanent record: padded and non-canonical requests, clock
//! values at the `i64` extremes, names that hide text, low-order keys, envelopes NATS cannot
//! carry, malformed stream frames, oversized answers, garbage on every RPC.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_core::{Identity, SealTo, body_aad, now_ms, seal_body, sign_envelope};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::submit_result::Result as Outcome;
use blockpost_proto::v1::{
    Envelope, EnvelopeContent, GetEntriesRequest, MessageKind, RegisterBody, SignedRequest,
    SubmitResult,
};
use blockpost_tests::{Sandbox, register_body, sign_register_bytes};
use prost::Message as _;
use tonic::Code;

/// A registration body stamped `ts`.
fn body(id: &Identity, address: &str, name: &str, ts: i64) -> RegisterBody {
    RegisterBody {
        timestamp_ms: ts,
        ..register_body(id, address, name)
    }
}

#[tokio::test]
async fn bad_registrations_never_reach_the_log() {
    let sb = Sandbox::start().await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    let id = Identity::generate();
    let now = now_ms();
    let mut cases: Vec<(&str, SignedRequest)> = Vec::new();
    // ~95 KiB of an unknown field (number 99) inside the signed body: prost would skip it,
    // the log would keep it forever.
    let mut padded = body(&id, "pad", "Pad AG", now).encode_to_vec();
    let pad = vec![b'x'; 95 * 1024];
    padded.extend_from_slice(&[0x9a, 0x06]);
    prost::encoding::encode_varint(pad.len() as u64, &mut padded);
    padded.extend_from_slice(&pad);
    cases.push(("padded body", sign_register_bytes(&id, padded)));
    // A default value written out: same meaning, other bytes.
    let mut explicit = vec![0x30, 0x00];
    explicit.extend_from_slice(&body(&id, "expl", "Expl AG", 0).encode_to_vec());
    cases.push(("non-canonical body", sign_register_bytes(&id, explicit)));
    // Timestamps that overflow a naive |ts - now|.
    for ts in [
        now.wrapping_sub(i64::MAX).wrapping_sub(1),
        i64::MIN,
        i64::MAX,
    ] {
        cases.push((
            "extreme timestamp",
            sign_register_bytes(&id, body(&id, "t", "T AG", ts).encode_to_vec()),
        ));
    }
    for name in [
        "Bank\u{202E}GA knaB",
        "Ba\u{200B}nk",
        "Bank\u{2028}AG",
        "\u{3164}",
        "Zu\u{308}rich AG",
    ] {
        cases.push((
            "bad name",
            sign_register_bytes(&id, body(&id, "n", name, now).encode_to_vec()),
        ));
    }
    let mut low = body(&id, "low", "Low AG", now);
    low.encryption_key =
        hex_decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
    cases.push((
        "low-order x25519 key",
        sign_register_bytes(&id, low.encode_to_vec()),
    ));
    for (what, req) in cases {
        let st = g.register(req).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{what}: {}", st.message());
    }
    assert_eq!(sb.directory.size(), 0, "nothing refused may reach the log");
    // The same registration, canonical and sane, is fine.
    g.register(sign_register_bytes(
        &id,
        body(&id, "pad", "Pad AG", now).encode_to_vec(),
    ))
    .await
    .unwrap();
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn get_entries_pages_by_bytes() {
    let sb = Sandbox::start_with(|c| c.directory.max_entries_bytes = 4096)
        .await
        .unwrap();
    let mut c = sb.client().await.unwrap();
    for i in 0..12 {
        c.register(&Identity::generate(), &format!("e{i}"), "E AG", None)
            .await
            .unwrap();
    }
    let mut g = sb.grpc().await.unwrap();
    let mut start = 0;
    let mut pages = 0;
    while start < 12 {
        let got = g
            .get_entries(GetEntriesRequest { start, end: 12 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(!got.is_empty());
        let bytes: usize = got.iter().map(Vec::len).sum();
        assert!(
            got.len() == 1 || bytes <= 4096,
            "{} entries, {bytes} bytes",
            got.len()
        );
        start += got.len() as u64;
        pages += 1;
    }
    assert!(pages > 1, "12 entries of ~1 KiB need several 4 KiB pages");
}

/// Alice and Bob registered, and the gateway's replica has both: Alice's identity and
/// key index.
async fn alice_and_bob(sb: &Sandbox) -> (Identity, u64) {
    let mut c = sb.client().await.unwrap();
    let a = Identity::generate();
    let ia = c
        .register(&a, "alice", "Alice AG", None)
        .await
        .unwrap()
        .leaf_index;
    c.register(&Identity::generate(), "bob", "Bob AG", None)
        .await
        .unwrap();
    sb.gateway
        .replica()
        .wait_applied(2, Duration::from_secs(5))
        .await;
    (a, ia)
}

fn envelope(id: &Identity, sender_index: u64, to: &[&str], body: Body, ts: i64) -> Envelope {
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: "alice".into(),
        sender_key_index: sender_index,
        recipients: to.iter().map(|s| s.to_string()).collect(),
        transaction_id: "t-1".into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: ts,
        nonce: rand::random(),
        body: Some(body),
    };
    sign_envelope(&id.signing, c.encode_to_vec())
}

#[tokio::test]
async fn bad_envelopes_are_permanent_refusals_and_never_reach_nats() {
    // Bodies up to 2 MiB: five of them are within the gateway's limits, above the NATS
    // server's 8 MiB max_payload.
    let sb = Sandbox::start_with(|c| c.messaging.max_body_len = 2 << 20)
        .await
        .unwrap();
    let mut c = sb.client().await.unwrap();
    let a = Identity::generate();
    let ia = c
        .register(&a, "alice", "Alice AG", None)
        .await
        .unwrap()
        .leaf_index;
    let mut seal = Vec::new();
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        let id = Identity::generate();
        let e = c.register(&id, r, "R AG", None).await.unwrap();
        seal.push((r, e.leaf_index, id.encryption_public()));
    }
    sb.gateway
        .replica()
        .wait_applied(6, Duration::from_secs(5))
        .await;
    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let now = now_ms();
    // Timestamps at the extremes.
    for ts in [
        now.wrapping_sub(i64::MAX).wrapping_sub(1),
        i64::MIN,
        i64::MAX,
    ] {
        let env = envelope(&a, ia, &["r1"], Body::Plaintext(b"x".to_vec()), ts);
        let st = m.submit(env).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{ts}: {}", st.message());
    }
    // Padded content (an unknown field inside the signed bytes).
    let mut content = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: "alice".into(),
        sender_key_index: ia,
        recipients: vec!["r1".into()],
        transaction_id: "t".into(),
        kind: MessageKind::Message as i32,
        content_type: String::new(),
        timestamp_ms: now,
        nonce: 1,
        body: Some(Body::Plaintext(b"x".to_vec())),
    }
    .encode_to_vec();
    content.extend_from_slice(&[0x9a, 0x06, 3, b'p', b'a', b'd']);
    let st = m
        .submit(sign_envelope(&a.signing, content))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    // Within the gateway's limits (5 x 1.8 MiB), above NATS's 8 MiB max_payload: a
    // permanent refusal, not a retryable UNAVAILABLE, from the gRPC length prefix (the
    // decode limit is the smaller of the two), before the envelope is buffered.
    let to: Vec<SealTo<'_>> = seal
        .iter()
        .map(|(r, i, k)| SealTo {
            address: r,
            key_index: *i,
            key: *k,
        })
        .collect();
    let big = seal_body(&to, &vec![7u8; 1800 * 1024], &body_aad("alice", "t-1")).unwrap();
    let env = envelope(
        &a,
        ia,
        &["r1", "r2", "r3", "r4", "r5"],
        Body::Encrypted(big),
        now,
    );
    let st = m.submit(env).await.unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange, "{}", st.message());
    assert!(st.message().contains("too large"), "{}", st.message());
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mut fh = js
        .get_stream(sb.directory.namespace().firehose_stream())
        .await
        .unwrap();
    assert_eq!(fh.info().await.unwrap().state.messages, 0);
}

/// Raw bytes out, raw bytes back: what a broken or hostile client puts on the wire.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::test]
async fn a_malformed_frame_ends_the_submit_stream_with_one_error() {
    let sb = Sandbox::start().await.unwrap();
    let (a, ia) = alice_and_bob(&sb).await;
    let good =
        || envelope(&a, ia, &["bob"], Body::Plaintext(b"ok".to_vec()), now_ms()).encode_to_vec();
    // Two good envelopes, one frame that is not an Envelope, then more that must not be read.
    let frames = vec![good(), good(), vec![0xff, 0xff, 0xff], good(), good()];
    let mut grpc = tonic::client::Grpc::new(sb.channel().await.unwrap());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/blockpost.v1.Messaging/SubmitStream",
    );
    let mut out = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(frames)),
            path,
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = out.message().await.unwrap() {
            let r = SubmitResult::decode(r.as_slice()).unwrap();
            results.push(r.result.unwrap());
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream did not end: {} results",
        results.len()
    );
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(matches!(results[0], Outcome::Receipt(_)));
    assert!(matches!(results[1], Outcome::Receipt(_)));
    let Outcome::Error(e) = &results[2] else {
        panic!("{:?}", results[2]);
    };
    assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
}

#[tokio::test]
async fn garbage_on_every_rpc_is_invalid_argument_never_internal() {
    let sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    c.register(&Identity::generate(), "alice", "Alice AG", None)
        .await
        .unwrap();
    let rpcs = [
        "/blockpost.v1.Directory/GetInfo",
        "/blockpost.v1.Directory/Register",
        "/blockpost.v1.Directory/Rotate",
        "/blockpost.v1.Directory/Revoke",
        "/blockpost.v1.Directory/Lookup",
        "/blockpost.v1.Directory/GetCheckpoint",
        "/blockpost.v1.Directory/GetInclusionProof",
        "/blockpost.v1.Directory/GetConsistencyProof",
        "/blockpost.v1.Directory/GetEntries",
        "/blockpost.v1.Messaging/GetGatewayInfo",
        "/blockpost.v1.Messaging/Submit",
    ];
    let mut rng_state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 10],
        vec![0x0a, 0x80],             // a length that never ends
        vec![0x0a, 0x05, b'a'],       // a length beyond the end
        vec![0x08],                   // a tag without a value
        vec![0x0b, 0x00],             // a deprecated group
        vec![0x12, 0x02, 0xff, 0xfe], // invalid UTF-8 in a string field
    ];
    for n in [1, 7, 64, 300] {
        garbage.push(noise(n));
    }
    let allowed = [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::OutOfRange,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::AlreadyExists,
    ];
    let mut grpc = tonic::client::Grpc::new(sb.channel().await.unwrap());
    let mut tried = 0;
    for rpc in rpcs {
        for g in &garbage {
            grpc.ready().await.unwrap();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(rpc);
            let code = match grpc
                .unary(tonic::Request::new(g.clone()), path, RawCodec)
                .await
            {
                Ok(_) => Code::Ok,
                Err(st) => st.code(),
            };
            assert!(
                allowed.contains(&code),
                "{rpc} with {:02x?}: {code:?}",
                &g[..g.len().min(12)]
            );
            tried += 1;
        }
    }
    assert_eq!(tried, rpcs.len() * garbage.len());
    assert_eq!(sb.directory.size(), 1, "garbage never reaches the log");
}

/// `envelope` with its signature replaced by a torsioned one by the same key.
fn torsioned(id: &Identity, mut env: Envelope) -> Envelope {
    let m = blockpost_core::envelope_message(&env.content);
    env.signature = blockpost_tests::torsioned_signature(&id.signing, &m);
    env
}

#[test]
fn a_batch_can_take_a_torsioned_signature_the_strict_check_refuses() {
    // Why the gateway admits with the strict check, and batches serve only to check again
    // what was admitted: batch verification (cofactorless, its coefficients derived from
    // the batch's contents) passes an R with a torsion component whenever its coefficient
    // kills it, one batch in two for an order-2 point.
    use blockpost_core::{EnvelopeLimits, ParsedEnvelope, verify_batch};
    let id = Identity::generate();
    let key = id.signing.verifying_key();
    let parse = |e| ParsedEnvelope::parse(e, &EnvelopeLimits::default()).unwrap();
    let plain = || Body::Plaintext(b"deliver against payment".to_vec());
    let bad = parse(torsioned(&id, envelope(&id, 0, &["bob"], plain(), 1)));
    assert!(
        bad.clone().verify(&key).is_err(),
        "the strict check refuses it"
    );
    let mut passed = 0;
    for _ in 0..64 {
        let good = parse(envelope(&id, 0, &["bob"], plain(), 1));
        let out = verify_batch(vec![(bad.clone(), key), (good, key)]);
        assert!(out[1].is_ok());
        passed += usize::from(out[0].is_ok());
    }
    assert!(passed > 0, "some batch takes it");
    assert!(passed < 64, "some batch finds it");
}

#[tokio::test]
async fn the_gateway_refuses_every_torsioned_signature_however_envelopes_are_batched() {
    let sb = Sandbox::start().await.unwrap();
    let (a, ia) = alice_and_bob(&sb).await;
    // Good and torsioned envelopes interleaved on one stream, so that they are checked
    // together; before the gateway checked each strictly, about half the torsioned ones
    // got a receipt.
    let envs: Vec<Envelope> = (0..96)
        .map(|i| {
            let e = envelope(
                &a,
                ia,
                &["bob"],
                Body::Plaintext(format!("{i}").into()),
                now_ms(),
            );
            if i % 2 == 1 { torsioned(&a, e) } else { e }
        })
        .collect();
    let mut g = MessagingClient::new(sb.channel().await.unwrap());
    let mut out = g
        .submit_stream(futures::stream::iter(envs))
        .await
        .unwrap()
        .into_inner();
    let mut i = 0;
    while let Some(r) = out.message().await.unwrap() {
        match r.result.unwrap() {
            Outcome::Receipt(_) => assert_eq!(i % 2, 0, "envelope {i} got a receipt"),
            Outcome::Error(e) => {
                assert_eq!(i % 2, 1, "envelope {i}: {}", e.message);
                assert_eq!(e.code, Code::PermissionDenied as i32, "{}", e.message);
            }
        }
        i += 1;
    }
    assert_eq!(i, 96);
    sb.stop().await;
}
