//! A partitioned firehose against a real node and nats-server: each sender's envelopes in
//! its own partition (receipts say which), blocks that take from each partition one
//! contiguous range in (partition, sequence) order, inboxes and the firehose read across
//! partitions, an auditor that checks each partition on its own, and a node that refuses
//! to start on another partition count.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use blockpost_auditor::{AlertKind, Auditor, AuditorConfig};
use blockpost_client::{Messenger, Outgoing};
use blockpost_core::{Address, Identity};
use blockpost_proto::v1::{Block, BlockHeader, MessageKind};
use blockpost_tests::{Sandbox, wait_for};
use prost::Message as _;

const PARTITIONS: u32 = 4;

fn outgoing<'a>(from: &'a str, to: &'a [String], tx: &'a str) -> Outgoing<'a> {
    Outgoing {
        delivery: None,
        from,
        to,
        transaction_id: tx,
        kind: MessageKind::Message,
        content_type: "text/plain",
        body: b"deliver 100 Megacorp against 5,000 EUR".to_vec(),
        encrypt: false,
        transaction_deadline_ms: None,
    }
}

async fn auditor(sb: &Sandbox, data: &std::path::Path) -> Auditor {
    let nats = blockpost_node::connect(&sb.nats.url(), Some(&sb.nats.reader_auth()))
        .await
        .unwrap();
    let mut config = AuditorConfig::new(sb.endpoint.clone(), data);
    config.grace_ms = 1_000;
    Auditor::start(config, nats).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sender_keeps_to_its_partition_and_every_block_takes_one_range_of_each() {
    let sb = Sandbox::start_with(|c| {
        c.messaging.firehose_partitions = PARTITIONS;
        c.builder.max_block_delay_ms = 50;
        c.builder.max_block_messages = 7;
    })
    .await
    .unwrap();
    assert_eq!(sb.gateway.info().firehose_partitions, PARTITIONS);
    let ns = sb.directory.namespace();
    let firehose = ns.firehose(PARTITIONS);
    // Six senders over (at least three of) the four partitions.
    let names: Vec<String> = (0..6).map(|i| format!("bank-{i}")).collect();
    let homes: Vec<u32> = names
        .iter()
        .map(|n| firehose.partition_of(&Address::parse(n).unwrap()))
        .collect();
    let mut distinct = homes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 3, "{homes:?}");
    let mut c = sb.client().await.unwrap();
    let mut ids = Vec::new();
    for n in &names {
        let id = Identity::generate();
        c.register(&id, n, "A Bank", None).await.unwrap();
        ids.push(id);
    }
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    // Each sends five to the next one; the receipts name the sender's partition.
    let mut at: BTreeMap<[u8; 32], (u32, u64)> = BTreeMap::new();
    for round in 0..5 {
        for (i, n) in names.iter().enumerate() {
            let to = vec![names[(i + 1) % names.len()].clone()];
            let tx = format!("trade-{i}-{round}");
            let (env, receipt) = m.send(&ids[i], outgoing(n, &to, &tx)).await.unwrap();
            assert_eq!(receipt.firehose_partition, homes[i], "{n}");
            at.insert(
                blockpost_core::message_id(&env),
                (receipt.firehose_partition, receipt.firehose_sequence),
            );
        }
    }
    // Each partition's stream holds exactly its senders' messages, numbered from 1.
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let mut per: BTreeMap<u32, u64> = BTreeMap::new();
    for k in firehose.all() {
        let mut s = js.get_stream(firehose.stream(k)).await.unwrap();
        let n = s.info().await.unwrap().state.messages;
        assert_eq!(n, 5 * homes.iter().filter(|&&h| h == k).count() as u64);
        per.insert(k, n);
    }
    let builder = sb.node.builder().unwrap().clone();
    assert_eq!(builder.firehose_partitions(), PARTITIONS);
    wait_for(Duration::from_secs(30), "30 messages in blocks", || {
        let n = builder.last_sequence();
        async move { (n >= 30).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(
        builder.last_sequences(),
        firehose.all().map(|k| per[&k]).collect::<Vec<_>>()
    );
    // Every block: ranges in partition order, each after the one before it in that
    // partition, leaves in (partition, sequence) order; together, every sequence once.
    let mut next: BTreeMap<u32, u64> = firehose.all().map(|k| (k, 1)).collect();
    let mut placed = 0;
    for h in 0..builder.height() {
        let b = Block::decode(builder.store().block(h).unwrap().as_slice()).unwrap();
        let header = BlockHeader::decode(b.header.unwrap().header.as_slice()).unwrap();
        let mut order = Vec::new();
        for leaf in &b.leaves {
            if let Some(&pos) = at.get(&blockpost_core::message_id_of_encoded(leaf)) {
                order.push(pos);
            }
        }
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "block {h}: {order:?}"
        );
        let ks: Vec<u32> = header.partitions.iter().map(|r| r.partition).collect();
        assert!(ks.windows(2).all(|w| w[0] < w[1]), "block {h}: {ks:?}");
        for r in &header.partitions {
            assert_eq!(
                r.first_seq, next[&r.partition],
                "block {h}, partition {}",
                r.partition
            );
            next.insert(r.partition, r.last_seq + 1);
            let inside = order
                .iter()
                .filter(|(k, s)| *k == r.partition && (r.first_seq..=r.last_seq).contains(s))
                .count() as u64;
            assert_eq!(inside, r.last_seq - r.first_seq + 1);
        }
        placed += order.len();
    }
    assert_eq!(placed, 30);
    for k in firehose.all() {
        assert_eq!(next[&k], per[&k] + 1, "partition {k}");
    }
    // The firehose, one partition at a time: only that partition's senders, in order.
    for k in firehose.all() {
        let mut seqs = Vec::new();
        m.firehose(k, 1, false, |r| {
            assert_eq!(r.firehose_partition, k);
            assert_eq!(
                firehose.partition_of(&Address::parse(&r.content.sender).unwrap()),
                k
            );
            seqs.push(r.firehose_sequence);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seqs, (1..=per[&k]).collect::<Vec<_>>(), "partition {k}");
    }
    let refused = m
        .firehose(PARTITIONS, 1, false, |_| Ok(()))
        .await
        .unwrap_err();
    assert_eq!(
        refused.reason().as_deref(),
        Some("NO_PARTITION"),
        "{refused}"
    );
    // An inbox fed from another partition than its owner's: all five, verified.
    let mut got = Vec::new();
    m.inbox(&ids[1], &names[1], false, |r| {
        got.push((r.firehose_partition, r.firehose_sequence));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(k, _)| *k == homes[0]));

    // An envelope published again, raw, on a partition that is not its sender's: the
    // builder refuses it there, and the auditor does not take it for the sender's.
    let wrong = (homes[0] + 1) % PARTITIONS;
    let (env, _) = m
        .send(&ids[0], outgoing(&names[0], &names[1..2], "trade-again"))
        .await
        .unwrap();
    let refused_before = builder.refused();
    js.publish(firehose.subject(wrong), env.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the misplaced envelope refused",
        || {
            let n = builder.refused();
            async move { (n > refused_before).then_some(()) }
        },
    )
    .await
    .unwrap();

    // The auditor reads every partition and finds every promise kept.
    let tmp = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp.path()).await;
    wait_for(Duration::from_secs(30), "the auditor caught up", || {
        let s = au.status();
        let done = s.blocks_verified == builder.height()
            && s.firehose_checked == 32
            && s.waiting == 0
            && s.blocks_current;
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
    assert!(au.alerts().is_empty(), "{:?}", au.alerts());
    drop(au);

    // A message deleted from one partition: a gap in that partition, and no other.
    let k = homes[2];
    let (_, receipt) = m
        .send(&ids[2], outgoing(&names[2], &names[3..4], "trade-gone"))
        .await
        .unwrap();
    let stream = js.get_stream(firehose.stream(k)).await.unwrap();
    let (_, after) = m
        .send(&ids[2], outgoing(&names[2], &names[3..4], "trade-after"))
        .await
        .unwrap();
    assert_eq!(after.firehose_sequence, receipt.firehose_sequence + 1);
    wait_for(Duration::from_secs(20), "both in blocks", || {
        let n = builder.last_sequences()[k as usize];
        async move { (n >= after.firehose_sequence).then_some(()) }
    })
    .await
    .unwrap();
    assert!(
        stream
            .delete_message(receipt.firehose_sequence)
            .await
            .unwrap()
    );
    let tmp2 = tempfile::tempdir().unwrap();
    let au = auditor(&sb, tmp2.path()).await;
    let gap = wait_for(Duration::from_secs(30), "a gap alert", || {
        let found = au
            .alerts()
            .into_iter()
            .find(|a| a.kind == AlertKind::FirehoseGap);
        async move { found }
    })
    .await
    .unwrap();
    let s = receipt.firehose_sequence;
    assert_eq!(gap.subject, format!("firehose partition {k} {s}..{s}"));
    assert_eq!(gap.evidence["partition"], k);
    drop(au);

    // The node refuses to start again with another partition count.
    let mut cfg = sb.config().clone();
    let (nats, tmp) = sb.stop().await;
    cfg.messaging.firehose_partitions = 2;
    let err = match Sandbox::start_on(cfg, nats, tmp).await {
        Ok(_) => panic!("a node started on a firehose of another partition count"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("firehose_partitions is 2") && err.contains("as 4 partition(s)"),
        "{err}"
    );
}
