//! The node as one composition point: health and reflection beside every service, the
//! gateway's settings from the node config, an injected clock reaching every time rule,
//! and proofs that name the checkpoint they come with.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use blockpost_core::{FixedClock, Identity, sign_envelope, verify_checkpoint, verify_receipt};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{
    EnvelopeContent, GetGatewayInfoRequest, InclusionProofRequest, MessageKind, RegisterBody,
    SignedRequest,
};
use blockpost_tests::{Sandbox, reason, register_body, sign_register};
use futures::StreamExt as _;
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

async fn reflect(sb: &Sandbox, req: MessageRequest) -> ServerReflectionResponse {
    let mut c = ServerReflectionClient::new(sb.channel().await.unwrap());
    let mut out = c
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(req),
        }]))
        .await
        .unwrap()
        .into_inner();
    out.next().await.unwrap().unwrap()
}

#[tokio::test]
async fn health_and_reflection_are_served_beside_the_services() {
    let sb = Sandbox::start().await.unwrap();
    let mut h = HealthClient::new(sb.channel().await.unwrap());
    for service in ["", "blockpost.v1.Directory", "blockpost.v1.Messaging"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let st = h
        .check(HealthCheckRequest {
            service: "blockpost.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    // What grpcurl asks: the list of services, then the file that defines one.
    let r = reflect(&sb, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
        panic!("no service list: {r:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "blockpost.v1.Directory",
        "blockpost.v1.Messaging",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let r = reflect(
        &sb,
        MessageRequest::FileContainingSymbol("blockpost.v1.Directory".into()),
    )
    .await;
    let Some(MessageResponse::FileDescriptorResponse(fd)) = r.message_response else {
        panic!("no descriptor: {r:?}");
    };
    let file = prost_types_name(&fd.file_descriptor_proto[0]);
    assert!(file.ends_with("directory.proto"), "{file}");
}

/// The `name` field (1) of an encoded `FileDescriptorProto`.
fn prost_types_name(encoded: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    Named::decode(encoded).unwrap().name
}

fn register(id: &Identity, address: &str, ts: i64) -> SignedRequest {
    let body = RegisterBody {
        timestamp_ms: ts,
        ..register_body(id, address, &format!("{address} AG"))
    };
    sign_register(id, &body)
}

#[tokio::test]
async fn an_injected_clock_and_the_gateway_settings_reach_every_rule() {
    // 2030-01-01T00:00:00Z: far from the machine's clock, so only the injected one passes.
    let t0: i64 = 1_893_456_000_000;
    let clock = Arc::new(FixedClock::new(t0));
    let sb = Sandbox::start_with_clock(
        |c| {
            c.messaging.max_block_delay_ms = 2500;
            c.messaging.max_clock_skew_ms = 60_000;
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let mut g = sb.grpc().await.unwrap();
    let (a, b) = (Identity::generate(), Identity::generate());
    // Signed at the machine's time: refused by the directory's (injected) clock.
    let st = g
        .register(register(&a, "alice", blockpost_core::now_ms()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    let e = g
        .register(register(&a, "alice", t0))
        .await
        .unwrap()
        .into_inner();
    let (_, binding) = blockpost_core::decode_entry(&e.proof.unwrap().entry).unwrap();
    assert_eq!(binding.logged_at_ms, t0);
    g.register(register(&b, "bob", t0 + 5)).await.unwrap();
    sb.gateway
        .replica()
        .wait_applied(2, std::time::Duration::from_secs(5))
        .await;

    let mut m = MessagingClient::new(sb.channel().await.unwrap());
    let info = m
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_block_delay_ms, 2500);
    let gw_key = blockpost_core::ed25519_key(&info.receipt_key).unwrap();
    let content = |ts: i64, nonce: u64| EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: "alice".into(),
        sender_key_index: 0,
        recipients: vec!["bob".into()],
        transaction_id: "settle-1".into(),
        kind: MessageKind::Message as i32,
        content_type: "text/plain".into(),
        timestamp_ms: ts,
        nonce,
        body: Some(Body::Plaintext(b"hello".to_vec())),
    };
    clock.advance(30_000);
    let env = sign_envelope(&a.signing, content(t0, 1).encode_to_vec());
    let receipt = m.submit(env).await.unwrap().into_inner();
    let r = verify_receipt(&gw_key, &receipt).unwrap();
    assert_eq!(r.accepted_at_ms, t0 + 30_000);
    assert_eq!(r.block_deadline_ms, t0 + 30_000 + 2500);
    // A minute and a bit later, the same timestamp is beyond the configured skew.
    clock.advance(31_000);
    let env = sign_envelope(&a.signing, content(t0, 2).encode_to_vec());
    let st = m.submit(env).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(reason(&st), "CLOCK_SKEW", "{}", st.message());
}

#[tokio::test]
async fn proofs_name_the_checkpoint_they_come_with() {
    let sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    for i in 0..5 {
        c.register(&Identity::generate(), &format!("p{i}"), "P AG", None)
            .await
            .unwrap();
    }
    let mut g = sb.grpc().await.unwrap();
    let key = sb.directory.info().verifier_key;
    let old = g
        .get_inclusion_proof(InclusionProofRequest {
            leaf_index: 1,
            tree_size: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.tree_size, 3);
    let newest = verify_checkpoint(&old.newest_checkpoint, &key).unwrap();
    assert_eq!(newest.size, 5, "the newest checkpoint, not one of size 3");
    let now = g
        .get_inclusion_proof(InclusionProofRequest {
            leaf_index: 1,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.tree_size, 5);
    let cp = verify_checkpoint(&now.newest_checkpoint, &key).unwrap();
    let entry = sb.directory.entries(1, 2).unwrap().remove(0);
    cp.verify_inclusion(1, &entry, &now.hashes).unwrap();
}

#[tokio::test]
async fn two_nodes_share_one_nats_server_without_crossing() {
    use blockpost_node::{Node, NodeConfig};

    let sb = Sandbox::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test(tmp.path().join("second"), &sb.nats.url());
    cfg.nats_credentials = Some(sb.nats.credentials_file());
    cfg.directory.origin = Some("second.test/directory".into());
    let second = Node::start(cfg).await.unwrap();
    assert_ne!(
        second.directory().unwrap().namespace(),
        sb.directory.namespace(),
        "each log has its own streams and subjects"
    );
    // Each registers its own participant at index 0.
    let (a, b) = (Identity::generate(), Identity::generate());
    sb.directory
        .register(register(&a, "alice", blockpost_core::now_ms()))
        .await
        .unwrap();
    second
        .directory()
        .unwrap()
        .register(register(&b, "bob", blockpost_core::now_ms()))
        .await
        .unwrap();
    let g2 = second.gateway().unwrap();
    assert!(
        g2.replica()
            .wait_applied(1, std::time::Duration::from_secs(5))
            .await
    );
    assert!(
        sb.gateway
            .replica()
            .wait_applied(1, std::time::Duration::from_secs(5))
            .await
    );
    // Both entry 0s reached their own streams; neither gateway learned the other's log.
    assert!(g2.replica().get("bob").is_some());
    assert!(g2.replica().get("alice").is_none());
    assert!(sb.gateway.replica().get("alice").is_some());
    assert!(sb.gateway.replica().get("bob").is_none());
    assert_eq!(
        (g2.replica().rejected(), sb.gateway.replica().rejected()),
        (0, 0)
    );
}

#[tokio::test]
async fn a_stream_of_another_log_is_refused_at_start() {
    use blockpost_node::{Node, NodeConfig};

    let nats = tokio::task::spawn_blocking(blockpost_tests::NatsServer::start)
        .await
        .unwrap()
        .unwrap();
    let origin = "third.test/directory";
    let ns = blockpost_core::wire::Namespace::for_origin(origin);
    // Someone made this log's firehose stream for another purpose.
    let js = async_nats::jetstream::new(nats.connect().await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: ns.firehose_stream(),
        description: Some("blockpost log someone.else/log".into()),
        subjects: vec![ns.firehose_subject()],
        ..Default::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test(tmp.path().join("data"), &nats.url());
    cfg.nats_credentials = Some(nats.credentials_file());
    cfg.directory.origin = Some(origin.into());
    let Err(e) = Node::start(cfg).await else {
        panic!("a node started on another log's stream");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("belongs to") && msg.contains("someone.else/log"),
        "{msg}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_cannot_starve_the_node() {
    // The test holds both ends of every connection.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        nofile > 4000,
        "open-file limit {nofile} too low for this test"
    );
    let sb = Sandbox::start_with(|c| {
        c.limits.max_connections = 1000;
        c.limits.handshake_timeout_ms = 700;
    })
    .await
    .unwrap();
    let addr: std::net::SocketAddr = sb.endpoint.trim_start_matches("http://").parse().unwrap();
    // Two thousand connections that never say a word.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The node held at most its limit, closed the rest at once, and closes the held ones
    // when their handshake time is up: every socket reads end-of-file or a reset.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for mut s in idle {
        use tokio::io::AsyncReadExt as _;
        // The server greets (HTTP/2 settings) and then, hearing nothing, hangs up.
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("an idle connection stayed open"),
            }
        }
    }
    // And the node serves as before.
    let mut c = sb.client().await.unwrap();
    c.register(&Identity::generate(), "after", "After AG", None)
        .await
        .unwrap();
}

#[tokio::test]
async fn nats_is_a_trust_boundary() {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use blockpost_node::{Node, NodeConfig};

    // A node with its own managed nats-server, as `blockpost up` runs it.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        data_dir: tmp.path().join("data"),
        listen: "127.0.0.1:0".into(),
        ..NodeConfig::default()
    };
    let node = Node::start(cfg).await.unwrap();
    let url = node.nats_url().to_owned();
    let ns = node.directory().unwrap().namespace();
    node.directory()
        .unwrap()
        .register(register(
            &Identity::generate(),
            "alice",
            blockpost_core::now_ms(),
        ))
        .await
        .unwrap();

    // No anonymous client: a local process cannot even connect.
    assert!(blockpost_node::connect(&url, None).await.is_err());
    let wrong = blockpost_node::NatsAuth::UserPassword {
        user: "node".into(),
        password: "guess".into(),
    };
    assert!(blockpost_node::connect(&url, Some(&wrong)).await.is_err());

    // The reader reads the directory and the firehose ...
    let reader = node.reader_credentials().unwrap();
    let rc = blockpost_node::connect(&url, Some(&reader)).await.unwrap();
    let mut js = async_nats::jetstream::new(rc.clone());
    // A refused API call gets no answer: do not wait the default 10 s for it.
    js.set_timeout(std::time::Duration::from_secs(2));
    let dir = js.get_stream(ns.directory_stream()).await.unwrap();
    let consumer = dir
        .create_consumer(OrderedConfig {
            filter_subject: ns.entry_subject(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    blockpost_core::decode_entry(&first.payload).unwrap();
    js.get_stream(ns.firehose_stream()).await.unwrap();
    // ... but publishes nothing, and reads no inbox.
    let before = node.nats().clone();
    let node_js = async_nats::jetstream::new(before);
    let mut node_dir = node_js.get_stream(ns.directory_stream()).await.unwrap();
    let n = node_dir.info().await.unwrap().state.messages;
    // Published as JetStream publishes: a stream that stored one would acknowledge it, so
    // no acknowledgement (within the 2 s set above) is the proof that nothing was stored.
    for subject in [ns.entry_subject(), ns.firehose_subject()] {
        let stored = match js.publish(subject.clone(), b"forged".to_vec().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!stored, "the reader's publish on {subject} was stored");
    }
    assert_eq!(node_dir.info().await.unwrap().state.messages, n);
    let mut fh = node_js.get_stream(ns.firehose_stream()).await.unwrap();
    assert_eq!(fh.info().await.unwrap().state.messages, 0);
    let inbox = js.get_stream(ns.inbox_stream()).await;
    let denied = match inbox {
        Err(_) => true,
        Ok(s) => s.create_consumer(OrderedConfig::default()).await.is_err(),
    };
    assert!(denied, "the reader opened the inbox stream");
}
