//! The block builder against a real nats-server: every receipted message lands in exactly
//! one block; blocks verify one by one, link into one chain, and are the leaves of a
//! signed ledger; a restart neither forks the chain nor repeats a message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use blockpost_client::{Messenger, Outgoing};
use blockpost_core::Identity;
use blockpost_core::block::{VerifiedHeader, verify_block};
use blockpost_core::verify_checkpoint;
use blockpost_proto::v1::{Block, MessageKind};
use blockpost_tests::{Sandbox, wait_for};
use prost::Message as _;

/// Every block in the node's store, verified, with the chain and the ledger checked.
/// Returns how many times each leaf appears.
fn verify_ledger(sb: &Sandbox) -> HashMap<Vec<u8>, usize> {
    let b = sb.node.builder().expect("the builder runs");
    let key = b.public_key();
    let head = b.head();
    let cp = verify_checkpoint(&head.checkpoint, &b.ledger_verifier_key()).unwrap();
    assert!(cp.size <= b.height());
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

async fn send_n(m: &mut Messenger, id: &Identity, n: usize, tx: &str) -> Vec<Vec<u8>> {
    let to = vec!["bank-b".to_owned()];
    let mut sent = Vec::new();
    for i in 0..n {
        let (env, _receipt) = m
            .send(
                id,
                Outgoing {
                    from: "bank-a",
                    to: &to,
                    transaction_id: tx,
                    kind: MessageKind::Message,
                    content_type: "text/plain",
                    body: format!("confirm trade {i}").into_bytes(),
                    encrypt: i % 2 == 1,
                },
            )
            .await
            .unwrap();
        sent.push(env.encode_to_vec());
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
        let seen = verify_ledger(&sb);
        let all = sent.iter().all(|e| seen.contains_key(e));
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
