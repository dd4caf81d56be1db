//! Transactions against a real nats-server: closed once every party sent `finish`, or
//! timed out at their deadline (also one that passed while the node was down), exactly
//! once; refused after closing; looked up with proofs, by the client and the CLI.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use blockpost_client::{Client, Ledger, LedgerTransaction, Messenger, Outgoing};
use blockpost_core::Identity;
use blockpost_core::block::verify_block;
use blockpost_core::transaction::{Book, Entry, replay_block};
use blockpost_proto::v1::{Block, MessageKind, TransactionStatus};
use blockpost_tests::Sandbox;
use prost::Message as _;

const TIMEOUT_MS: u64 = 1500;

async fn send(
    m: &mut Messenger,
    id: &Identity,
    from: &str,
    to: &[&str],
    tx: &str,
    kind: MessageKind,
    deadline: Option<i64>,
) -> Result<(), blockpost_client::Error> {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    m.send(
        id,
        Outgoing {
            delivery: None,
            from,
            to: &to,
            transaction_id: tx,
            kind,
            content_type: "text/plain",
            body: format!("{kind:?} from {from}").into_bytes(),
            encrypt: false,
            transaction_deadline_ms: deadline,
        },
    )
    .await
    .map(|_| ())
}

async fn status_of(l: &mut Ledger, tx: &str) -> Option<LedgerTransaction> {
    l.transaction(tx).await.ok()
}

async fn wait_status(l: &mut Ledger, tx: &str, want: TransactionStatus) -> LedgerTransaction {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = status_of(l, tx).await
            && t.state.status() == want
        {
            return t;
        }
        assert!(
            std::time::Instant::now() < until,
            "{tx} is not {want:?} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replays the transaction rules over every stored block: each closing where the rules
/// put it. Returns how many closing records each transaction has.
fn closings(sb: &Sandbox) -> HashMap<String, usize> {
    let b = sb.node.builder().unwrap();
    let mut book = Book::new(TIMEOUT_MS, []);
    let mut closed: HashMap<String, usize> = HashMap::new();
    for h in 0..b.head().size {
        let block = Block::decode(b.store().block(h).unwrap().as_slice()).unwrap();
        let v = verify_block(&block, &b.public_key()).unwrap();
        let entries = replay_block(&mut book, h, v.header.header.time_ms, &v.leaves, |id| {
            closed.contains_key(id)
        })
        .unwrap();
        for e in entries {
            if let Entry::Closing(t, _) = e {
                *closed.entry(t.id).or_default() += 1;
            }
        }
    }
    closed
}

async fn setup(sb: &Sandbox) -> (Client, Messenger, [Identity; 3]) {
    let ids = [
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    ];
    let mut c = sb.client().await.unwrap();
    for (id, (addr, name)) in ids.iter().zip([
        ("bank-a", "Bank A AG"),
        ("bank-b", "Bank B Ltd"),
        ("bank-c", "Bank C SA"),
    ]) {
        c.register(id, addr, name, None).await.unwrap();
    }
    let m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    (c, m, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_and_timed_out_transactions_close_once_and_refuse_more() {
    let sb = Sandbox::start_with(|c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.transaction_timeout_ms = TIMEOUT_MS;
    })
    .await
    .unwrap();
    let (c, mut m, [a, b, cc]) = setup(&sb).await;
    use MessageKind::{Finish, Message};

    // Two banks settle; the transaction closes when both have sent finish.
    send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b"],
        "settle-42",
        Message,
        None,
    )
    .await
    .unwrap();
    send(
        &mut m,
        &b,
        "bank-b",
        &["bank-a"],
        "settle-42",
        Message,
        None,
    )
    .await
    .unwrap();
    send(&mut m, &a, "bank-a", &["bank-b"], "settle-42", Finish, None)
        .await
        .unwrap();
    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    // Three parties: A and B finishing is not enough once C is in it.
    send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b", "bank-c"],
        "deal-3",
        Finish,
        None,
    )
    .await
    .unwrap();
    send(&mut m, &b, "bank-b", &["bank-a"], "deal-3", Finish, None)
        .await
        .unwrap();
    send(&mut m, &b, "bank-b", &["bank-a"], "settle-42", Finish, None)
        .await
        .unwrap();
    let t = wait_status(&mut l, "settle-42", TransactionStatus::Finished).await;
    assert_eq!(t.state.parties, vec!["bank-a", "bank-b"]);
    assert_eq!(t.state.finished_by, vec!["bank-a", "bank-b"]);
    assert_eq!(t.messages.len(), 4);
    let (closing, leaf) = t.closing.as_ref().unwrap();
    assert_eq!(closing.message_ids.len(), 4);
    // The closing record is the leaf right after the last finish, in the same block.
    let last = t.messages.last().unwrap();
    assert_eq!(leaf.header.header.height, last.header.header.height);
    assert_eq!(leaf.leaf_index, last.leaf_index + 1);

    let open = l.transaction("deal-3").await.unwrap();
    assert_eq!(open.state.status(), TransactionStatus::Open);
    assert_eq!(open.state.parties, vec!["bank-a", "bank-b", "bank-c"]);
    assert!(open.closing.is_none());
    send(&mut m, &cc, "bank-c", &["bank-a"], "deal-3", Finish, None)
        .await
        .unwrap();
    wait_status(&mut l, "deal-3", TransactionStatus::Finished).await;

    // Closed: no more messages.
    let e = send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b"],
        "settle-42",
        Message,
        None,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("transaction settle-42 is finished") && msg.contains("FailedPrecondition"),
        "{msg}"
    );

    // A transaction asking for an early deadline, and one with the default timeout.
    let soon = blockpost_core::now_ms() + 400;
    send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b"],
        "quick",
        Message,
        Some(soon),
    )
    .await
    .unwrap();
    send(&mut m, &a, "bank-a", &["bank-b"], "slow", Message, None)
        .await
        .unwrap();
    let quick = wait_status(&mut l, "quick", TransactionStatus::TimedOut).await;
    assert_eq!(quick.state.deadline_ms, soon);
    let slow = wait_status(&mut l, "slow", TransactionStatus::TimedOut).await;
    for t in [&quick, &slow] {
        let (c, _) = t.closing.as_ref().unwrap();
        let late = c.time_ms - t.state.deadline_ms;
        // Closed in the first block at or after the deadline: the builder checks every
        // 100 ms and cuts at once (1 s of slack for a loaded CI machine).
        assert!(
            (0..1000).contains(&late),
            "closed {late} ms after its deadline"
        );
        assert!(c.finished_by.is_empty());
    }
    assert_eq!(quick.state.deadline_ms, soon);
    assert!(slow.state.deadline_ms > soon);
    let e = send(&mut m, &a, "bank-a", &["bank-b"], "quick", Message, None)
        .await
        .unwrap_err();
    assert_eq!(e.reason().as_deref(), Some("TRANSACTION_CLOSED"), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    // A deadline that is not after the envelope's own time is malformed.
    let e = send(&mut m, &a, "bank-a", &["bank-b"], "past", Message, Some(1))
        .await
        .unwrap_err();
    assert!(
        e.reason().as_deref() == Some("INVALID_DEADLINE")
            || matches!(
                e,
                blockpost_client::Error::Core(blockpost_core::Error::InvalidEnvelope(
                    blockpost_core::EnvelopeError::Deadline { .. }
                ))
            ),
        "{e}"
    );

    // Look-ups: missing and malformed.
    use blockpost_proto::v1::GetTransactionRequest;
    use blockpost_proto::v1::ledger_client::LedgerClient;
    let mut raw = LedgerClient::new(sb.channel().await.unwrap());
    let get = |id: &str, limit| GetTransactionRequest {
        transaction_id: id.into(),
        offset: 0,
        limit,
        ..Default::default()
    };
    let e = raw.get_transaction(get("nope", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = raw.get_transaction(get("", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let e = raw
        .get_transaction(get("settle-42", 5000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    // Pages: two at a time.
    let page = raw
        .get_transaction(GetTransactionRequest {
            transaction_id: "settle-42".into(),
            offset: 2,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].envelope, t.messages[2].envelope_bytes);

    // The CLI verifies and prints status, parties, messages and the closing record.
    let bin = blockpost_tests::blockpost_bin().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .args(["--endpoint", &sb.endpoint])
            .env("BLOCKPOST_CONFIG_DIR", &sb.client_dir)
            .output()
            .unwrap()
    };
    let out = cli(&["tx", "settle-42", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "finished");
    assert_eq!(v["parties"], serde_json::json!(["bank-a", "bank-b"]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 4);
    assert_eq!(v["closing"]["status"], "finished");
    assert_eq!(v["closing"]["message_ids"].as_array().unwrap().len(), 4);
    let out = cli(&["tx", "slow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("transaction slow: timed out"));
    let out = cli(&["tx", "nope"]);
    assert!(!out.status.success());

    // Every closing is where the rules put it, and each transaction closed once.
    let closed = closings(&sb);
    for tx in ["settle-42", "deal-3", "quick", "slow"] {
        assert_eq!(closed.get(tx), Some(&1), "{tx}");
    }
    assert_eq!(closed.len(), 4);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passed_while_the_node_was_down_closes_once_after_the_restart() {
    let cfg = |c: &mut blockpost_node::NodeConfig| {
        c.builder.max_block_delay_ms = 50;
        c.builder.transaction_timeout_ms = TIMEOUT_MS;
    };
    let sb = Sandbox::start_with(cfg).await.unwrap();
    let (c, mut m, [a, _, _]) = setup(&sb).await;
    let deadline = blockpost_core::now_ms() + 600;
    send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b"],
        "down",
        MessageKind::Message,
        Some(deadline),
    )
    .await
    .unwrap();
    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    let t = wait_status(&mut l, "down", TransactionStatus::Open).await;
    assert_eq!(t.state.deadline_ms, deadline);
    drop((l, m, c));
    let config = sb.config().clone();
    let (nats, tmp) = sb.stop().await;
    // The deadline passes while the node is down.
    blockpost_tests::wait_for(Duration::from_secs(5), "the deadline to pass", || {
        let passed = blockpost_core::now_ms() > deadline;
        async move { passed.then_some(()) }
    })
    .await
    .unwrap();
    let sb = Sandbox::start_on(config, nats, tmp).await.unwrap();
    let c = sb.client().await.unwrap();
    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    let t = wait_status(&mut l, "down", TransactionStatus::TimedOut).await;
    assert!(t.closing.unwrap().0.time_ms >= deadline);
    // Restart once more: the index reloads, nothing closes again.
    let config = sb.config().clone();
    drop((l, c));
    let (nats, tmp) = sb.stop().await;
    let sb = Sandbox::start_on(config, nats, tmp).await.unwrap();
    // Once the restarted builder has cut a block (a new transaction's first message is
    // in one), the old one is still closed once.
    let c = sb.client().await.unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    send(
        &mut m,
        &a,
        "bank-a",
        &["bank-b"],
        "after",
        MessageKind::Message,
        None,
    )
    .await
    .unwrap();
    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    wait_status(&mut l, "after", TransactionStatus::Open).await;
    assert_eq!(closings(&sb).get("down"), Some(&1));
    drop((l, m, c));
    // The timeout is a rule of this ledger now: another one is refused at start.
    let mut config = sb.config().clone();
    config.builder.transaction_timeout_ms = TIMEOUT_MS * 2;
    let (nats, tmp) = sb.stop().await;
    let e = Sandbox::start_on(config, nats, tmp).await.err().unwrap();
    assert!(format!("{e:#}").contains("cannot change"), "{e:#}");
}
