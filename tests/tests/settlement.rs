//! Trades and settlement instructions through a real node (NATS JetStream, gateway,
//! builder) and an auditor: the samples are accepted, each broken field is refused with its
//! name, parties must be the envelope's, LEIs on bindings, and the auditor indexes what it
//! can read.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_auditor::OpenFor;
use blockpost_client::{Ledger, Messenger, Outgoing};
use blockpost_core::{Identity, now_ms, sign_envelope};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{EnvelopeContent, MessageKind};
use blockpost_tests::{Sandbox, delivery_records, reason, wait_for};
use prost::Message as _;
use tonic::Code;

const TRADE: &str = include_str!("../../examples/settlement/trade.fix");
const DELIVER: &str = include_str!("../../examples/settlement/instruction-deliver.xml");
const RECEIVE: &str = include_str!("../../examples/settlement/instruction-receive.xml");
const LEI_A: &str = "5299000BANKA0AG00068";
const LEI_B: &str = "5493000BANKB0LTD0083";
const LEI_X: &str = "5493000EXCHANGE00016";

/// Waits (30 s at most) until message `id` is in a block; returns it with its proofs.
async fn placed(l: &mut Ledger, id: [u8; 32]) -> blockpost_client::LedgerMessage {
    let what = format!("message {} in a block", hex::encode(id));
    wait_for(Duration::from_secs(30), &what, async || {
        l.message(id).await.ok()
    })
    .await
    .unwrap()
}

/// Waits (30 s at most) until transaction `tx` is closed in the ledger.
async fn closed(l: &mut Ledger, tx: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("{tx} closed"),
        async || l.transaction(tx).await.ok()?.closing.map(|_| ()),
    )
    .await
    .unwrap();
}

struct Desk {
    exchange: (Identity, u64),
    a: (Identity, u64),
    b: (Identity, u64),
}

async fn desk(sb: &Sandbox) -> Desk {
    let mut c = sb.client().await.unwrap();
    let mut one = async |address: &str, name: &str, lei: &str| {
        let id = Identity::generate();
        let e = c
            .register_with_lei(&id, address, name, Some(lei), None)
            .await
            .unwrap();
        assert_eq!(e.binding.lei.as_deref(), Some(lei));
        (id, e.leaf_index)
    };
    let exchange = one("exchange", "Example Exchange Inc", LEI_X).await;
    let a = one("bank-a", "Bank A AG", LEI_A).await;
    let b = one("bank-b", "Bank B Ltd", LEI_B).await;
    sb.gateway
        .replica()
        .wait_applied(3, Duration::from_secs(5))
        .await;
    Desk { exchange, a, b }
}

/// A plaintext envelope signed as `from`, submitted straight to the gateway (no client
/// checks first).
async fn submit_raw(
    sb: &Sandbox,
    (id, index): &(Identity, u64),
    from: &str,
    to: &[&str],
    kind: MessageKind,
    body: &str,
) -> Result<(), tonic::Status> {
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: from.into(),
        sender_key_index: *index,
        recipients: to.iter().map(|s| s.to_string()).collect(),
        transaction_id: "dvp-raw".into(),
        kind: kind as i32,
        content_type: "application/octet-stream".into(),
        timestamp_ms: now_ms(),
        nonce: rand::random(),
        body: Some(Body::Plaintext(body.as_bytes().to_vec())),
    };
    let env = sign_envelope(&id.signing, c.encode_to_vec());
    let mut g = MessagingClient::new(sb.channel().await.unwrap());
    g.submit(env).await.map(|_| ())
}

fn outgoing<'a>(
    from: &'a str,
    to: &'a [String],
    kind: MessageKind,
    body: &str,
    encrypt: bool,
) -> Outgoing<'a> {
    Outgoing {
        delivery: None,
        from,
        to,
        transaction_id: "dvp-1",
        kind,
        content_type: "application/xml",
        body: body.as_bytes().to_vec(),
        encrypt,
        transaction_deadline_ms: None,
    }
}

#[tokio::test]
async fn the_gateway_takes_the_samples_and_names_each_broken_field() {
    let sb = Sandbox::start().await.unwrap();
    let d = desk(&sb).await;
    let banks = ["bank-a", "bank-b"];
    submit_raw(
        &sb,
        &d.exchange,
        "exchange",
        &banks,
        MessageKind::Trade,
        TRADE,
    )
    .await
    .unwrap();
    submit_raw(
        &sb,
        &d.a,
        "bank-a",
        &["bank-b"],
        MessageKind::SettlementInstruction,
        DELIVER,
    )
    .await
    .unwrap();
    // Broken fields: INVALID_ARGUMENT, reason INVALID_SETTLEMENT, the field in the message.
    let bad_isin = DELIVER.replacen("US0378331005", "US0378331006", 1);
    let bad_ccy = DELIVER.replacen("Ccy=\"USD\"", "Ccy=\"USX\"", 1);
    let bad_date = DELIVER.replacen("2026-12-07", "2026-12-32", 1);
    let cases: [(&str, &str, MessageKind, &str); 4] = [
        (
            &bad_isin,
            "SctiesSttlmTxInstr/FinInstrmId/ISIN has wrong ISIN check digits",
            MessageKind::SettlementInstruction,
            "bank-a",
        ),
        (
            &bad_ccy,
            "SctiesSttlmTxInstr/SttlmAmt/Amt/@Ccy is not an ISO 4217 currency",
            MessageKind::SettlementInstruction,
            "bank-a",
        ),
        (
            &bad_date,
            "SctiesSttlmTxInstr/TradDtls/SttlmDt/Dt/Dt is malformed",
            MessageKind::SettlementInstruction,
            "bank-a",
        ),
        (DELIVER, "body is not a trade", MessageKind::Trade, "bank-a"),
    ];
    for (body, want, kind, from) in cases {
        let st = submit_raw(&sb, &d.a, from, &["bank-b"], kind, body)
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{want}: {}", st.message());
        assert_eq!(reason(&st), "INVALID_SETTLEMENT", "{}", st.message());
        assert!(
            st.message().contains(want),
            "{} (want {want})",
            st.message()
        );
    }
    // A FIX checksum that does not add up.
    let (head, sum) = TRADE
        .trim_end()
        .trim_end_matches('|')
        .rsplit_once("|10=")
        .unwrap();
    let off = format!("{head}|10={:03}|", (sum.parse::<u32>().unwrap() + 1) % 256);
    let st = submit_raw(
        &sb,
        &d.exchange,
        "exchange",
        &banks,
        MessageKind::Trade,
        &off,
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&st), "INVALID_SETTLEMENT");
    assert!(
        st.message().contains("tag 10 (CheckSum)"),
        "{}",
        st.message()
    );
    // Parties that are not the envelope's: bank-b sends bank-a's instruction, and the
    // exchange leaves bank-b out of the trade's recipients.
    let st = submit_raw(
        &sb,
        &d.b,
        "bank-b",
        &["bank-a"],
        MessageKind::SettlementInstruction,
        DELIVER,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::InvalidArgument, "SETTLEMENT_PARTIES"),
        "{}",
        st.message()
    );
    assert!(
        st.message().contains("do not name the sender bank-b"),
        "{}",
        st.message()
    );
    let st = submit_raw(
        &sb,
        &d.exchange,
        "exchange",
        &["bank-a"],
        MessageKind::Trade,
        TRADE,
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&st), "SETTLEMENT_PARTIES");
    assert!(
        st.message().contains("453[2].448 (PartyID)"),
        "{}",
        st.message()
    );
    assert!(st.message().contains(LEI_B), "{}", st.message());
}

#[tokio::test]
async fn an_lei_is_checked_and_kept_across_a_rotation() {
    let sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    let id = Identity::generate();
    let err = c
        .register_with_lei(&id, "bank-x", "Bank X", Some("5299000BANKA0AG00069"), None)
        .await
        .unwrap_err();
    let st = match err {
        blockpost_client::Error::Status(s) => s,
        other => panic!("not a status: {other}"),
    };
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    assert!(
        st.message().contains("lei has wrong LEI check digits"),
        "{}",
        st.message()
    );
    let e = c
        .register_with_lei(&id, "bank-x", "Bank X", Some(LEI_A), None)
        .await
        .unwrap();
    let next = Identity::generate();
    let r = c.rotate(&id, &next, "bank-x").await.unwrap();
    assert!(r.leaf_index > e.leaf_index);
    assert_eq!(r.binding.lei.as_deref(), Some(LEI_A));
    let history = c.lookup("bank-x").await.unwrap();
    assert!(
        history
            .iter()
            .all(|h| h.binding.lei.as_deref() == Some(LEI_A))
    );
}

#[tokio::test]
async fn the_client_checks_a_sealed_instruction_and_the_auditor_indexes_what_it_can_read() {
    let sb = Sandbox::start().await.unwrap();
    let d = desk(&sb).await;
    let regulator = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&regulator, "regulator", "Securities Regulator", None)
        .await
        .unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let banks = vec!["bank-a".to_owned(), "bank-b".to_owned()];
    m.send(
        &d.exchange.0,
        outgoing("exchange", &banks, MessageKind::Trade, TRADE, false),
    )
    .await
    .unwrap();
    // bank-a's instruction in the clear; bank-b's sealed to bank-a and the regulator.
    let to_b = vec!["bank-b".to_owned()];
    m.send(
        &d.a.0,
        outgoing(
            "bank-a",
            &to_b,
            MessageKind::SettlementInstruction,
            DELIVER,
            false,
        ),
    )
    .await
    .unwrap();
    let to_a = vec!["bank-a".to_owned(), "regulator".to_owned()];
    m.send(
        &d.b.0,
        outgoing(
            "bank-b",
            &to_a,
            MessageKind::SettlementInstruction,
            RECEIVE,
            true,
        ),
    )
    .await
    .unwrap();
    // A sealed body no gateway can read: the client refuses a broken one before sealing.
    let broken = RECEIVE.replacen("<Unit>400</Unit>", "<Unit>-4</Unit>", 1);
    let e = m
        .send(
            &d.b.0,
            outgoing(
                "bank-b",
                &to_a,
                MessageKind::SettlementInstruction,
                &broken,
                true,
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("QtyAndAcctDtls/SttlmQty/Qty/Unit is malformed"),
        "{e}"
    );
    // And one whose parties are wrong (bank-b sending bank-a's instruction).
    let e = m
        .send(
            &d.b.0,
            outgoing(
                "bank-b",
                &to_a,
                MessageKind::SettlementInstruction,
                DELIVER,
                true,
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, blockpost_client::Error::Parties { .. }), "{e}");

    // An auditor without keys indexes the trade and the plaintext instruction; the sealed
    // one stays unread. One holding the regulator's key reads that too.
    let sb = sb
        .with_auditor(|cfg| {
            cfg.open_for = vec![OpenFor {
                address: "regulator".into(),
                keys: std::sync::Arc::new(regulator),
                generations: Default::default(),
            }];
        })
        .await
        .unwrap();
    let au = sb.auditor.as_ref().unwrap().auditor.clone();
    let search = |q: &str| au.search(q, 100, 0, false).unwrap().unwrap().len();
    wait_for(
        Duration::from_secs(30),
        "the three messages indexed",
        || {
            let n = search("transaction_id:dvp-1");
            async move { (n == 3).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(search("isin:US0378331005"), 3);
    assert_eq!(
        search("isin:US0378331005 AND settlement_date:[2026-12-01 TO 2026-12-31]"),
        3
    );
    assert_eq!(
        search("isin:US0378331005 AND settlement_date:[2027-01-01 TO 2027-12-31]"),
        0
    );
    assert_eq!(search("side:receive AND amount:[75000 TO 76000]"), 1);
    assert_eq!(search("quantity:[400 TO 400] AND currency:USD"), 3);
    assert_eq!(search("kind:trade AND market:XNYS"), 1);
    assert!(au.alerts().is_empty(), "{:?}", au.alerts());
}

/// A trade signed by the exchange but naming a party the envelope does not include, put on
/// the firehose past the gateway by someone with publish rights: the builder keeps it out
/// of every block (as the gateway would have refused it), and the auditor, which checks the
/// same rule, sees the blocks as valid.
#[tokio::test]
async fn a_trade_with_wrong_parties_that_skips_the_gateway_is_in_no_block() {
    let sb = Sandbox::start().await.unwrap();
    let d = desk(&sb).await;
    let c = EnvelopeContent {
        delivery: None,
        transaction_deadline_ms: None,
        sender: "exchange".into(),
        sender_key_index: d.exchange.1,
        recipients: vec!["bank-a".into()],
        transaction_id: "dvp-forged".into(),
        kind: MessageKind::Trade as i32,
        content_type: "application/fix".into(),
        timestamp_ms: now_ms(),
        nonce: 77,
        body: Some(Body::Plaintext(TRADE.as_bytes().to_vec())),
    };
    let forged = sign_envelope(&d.exchange.0.signing, c.encode_to_vec());
    let forged_id = blockpost_core::message_id(&forged);
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    js.publish(ns.firehose_subject(), forged.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A good trade after it, through the gateway.
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let banks = vec!["bank-a".to_owned(), "bank-b".to_owned()];
    let (good, _) = m
        .send(
            &d.exchange.0,
            outgoing("exchange", &banks, MessageKind::Trade, TRADE, false),
        )
        .await
        .unwrap();
    let good_id = blockpost_core::message_id(&good);
    let c = sb.client().await.unwrap();
    let mut l = Ledger::connect(&c, &sb.client_dir).await.unwrap();
    placed(&mut l, good_id).await;
    let st = l.message(forged_id).await.unwrap_err();
    assert_eq!(st.code(), Some(Code::NotFound), "{st}");
    // The auditor reads the same firehose and blocks: the forged trade is an invalid
    // message no block owes anything, and the blocks are valid.
    let sb = sb.with_auditor(|_| {}).await.unwrap();
    let au = sb.auditor.as_ref().unwrap().auditor.clone();
    wait_for(Duration::from_secs(30), "the auditor's index", || {
        let n = au
            .search("kind:trade", 10, 0, false)
            .unwrap()
            .unwrap()
            .len();
        async move { (n == 1).then_some(()) }
    })
    .await
    .unwrap();
    assert!(au.alerts().is_empty(), "{:?}", au.alerts());
}

/// A raw signed Bitcoin transaction (one input with a script signature, one output).
fn bitcoin_tx(tag: u8) -> Vec<u8> {
    use bitcoin::{
        Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
        absolute::LockTime, transaction::Version,
    };
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(vec![0x51, tag]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(75_700),
            script_pubkey: ScriptBuf::new_op_return([tag; 20]),
        }],
    };
    bitcoin::consensus::serialize(&tx)
}

/// The seller's signed Bitcoin transaction rides on its instruction, sealed: the firehose,
/// the block and the auditor's index show the ledger and the txid only; the buyer and the
/// node's delivery key open it, nobody else; it is refused on anything but an instruction.
#[tokio::test]
async fn a_ledger_transaction_rides_sealed_on_an_instruction() {
    use blockpost_core::delivery::{self, Bitcoin, DELIVERY_RECIPIENT, TargetLedger as _};
    let sb = Sandbox::start().await.unwrap();
    let d = desk(&sb).await;
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let node_key = m.delivery_key().await.unwrap();
    let raw = bitcoin_tx(9);
    let txid = Bitcoin.commitment(&raw).unwrap();
    let to_b = vec!["bank-b".to_owned()];
    let mut out = outgoing(
        "bank-a",
        &to_b,
        MessageKind::SettlementInstruction,
        DELIVER,
        false,
    );
    out.delivery = Some(blockpost_client::Delivery {
        ledger: &Bitcoin,
        raw: raw.clone(),
    });
    let (env, receipt) = m.send(&d.a.0, out).await.unwrap();
    let c: EnvelopeContent = blockpost_core::decode_canonical(&env.content, "content").unwrap();
    let carried = c.delivery.clone().unwrap();
    assert_eq!(carried.ledger, "bitcoin");
    assert_eq!(carried.commitment, txid.to_vec());
    // The record holds no byte string of the transaction: not the firehose message...
    let contains = |hay: &[u8]| hay.windows(raw.len()).any(|w| w == raw.as_slice());
    let ns = sb.directory.namespace();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let stored = js
        .get_stream(ns.firehose_stream())
        .await
        .unwrap()
        .get_raw_message(receipt.firehose_sequence)
        .await
        .unwrap();
    assert_eq!(
        blockpost_core::message_id_of_encoded(&stored.payload),
        blockpost_core::message_id(&env)
    );
    assert!(!contains(&stored.payload));
    // ... nor the block that holds it.
    let c2 = sb.client().await.unwrap();
    let mut l = Ledger::connect(&c2, &sb.client_dir).await.unwrap();
    let id = blockpost_core::message_id(&env);
    let held = placed(&mut l, id).await;
    let block = l.block(Some(held.header.header.height)).await.unwrap();
    assert!(
        block
            .block
            .leaves
            .iter()
            .any(|leaf| leaf.as_slice() == env.encode_to_vec())
    );
    assert!(!block.block.leaves.iter().any(|leaf| contains(leaf)));
    // The buyer opens it, and so does the node's delivery key; a stranger's key does not
    // (it was sealed to the recipients and the node).
    let opened =
        delivery::open_delivery(&carried, "bank-b", &d.b.0.encryption, "bank-a", "dvp-1").unwrap();
    assert_eq!(opened, raw);
    let node_secret = blockpost_core::x25519_from_pem(
        &std::fs::read_to_string(sb.data_dir.join("keys/delivery.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        x25519_dalek::PublicKey::from(&node_secret).to_bytes(),
        node_key
    );
    assert_eq!(
        delivery::open_delivery(
            &carried,
            DELIVERY_RECIPIENT,
            &node_secret,
            "bank-a",
            "dvp-1"
        )
        .unwrap(),
        raw
    );
    let stranger = Identity::generate();
    assert!(
        delivery::open_delivery(&carried, "bank-b", &stranger.encryption, "bank-a", "dvp-1")
            .is_err()
    );
    // A delivery on a trade is refused by the gateway, named.
    let mut content = c.clone();
    content.kind = MessageKind::Trade as i32;
    content.body = Some(Body::Plaintext(TRADE.as_bytes().to_vec()));
    content.recipients = vec!["bank-a".into(), "bank-b".into()];
    content.sender = "exchange".into();
    content.sender_key_index = d.exchange.1;
    content.nonce = 5;
    let env = sign_envelope(&d.exchange.0.signing, content.encode_to_vec());
    let st = MessagingClient::new(sb.channel().await.unwrap())
        .submit(env)
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "INVALID_DELIVERY", "{}", st.message());
    assert!(
        st.message().contains("only a settlement instruction"),
        "{}",
        st.message()
    );
}

/// A builder that signs delivery records the rules do not allow (a fault switch): the
/// auditor raises `delivery_wrong` for a delivery of an unfinished transaction and for one
/// whose transaction is not the one the instruction committed to, and takes a right one.
#[tokio::test]
async fn the_auditor_alerts_on_deliveries_the_rules_do_not_allow() {
    use blockpost_auditor::AlertKind;
    use blockpost_core::delivery::{Bitcoin, TargetLedger as _};
    use blockpost_proto::v1::{DeliveryRecord, DeliveryStage, LedgerRecord, ledger_record};
    let sb = Sandbox::start_with(|c| c.builder.max_block_delay_ms = 50)
        .await
        .unwrap();
    let d = desk(&sb).await;
    let sb = sb.with_auditor(|_| {}).await.unwrap();
    let au = sb.auditor.as_ref().unwrap().auditor.clone();
    let builder = sb.node.builder().unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let raw = bitcoin_tx(3);
    let txid = Bitcoin.commitment(&raw).unwrap();
    let to_b = vec!["bank-b".to_owned()];
    let to_a = vec!["bank-a".to_owned()];
    let mut out = outgoing(
        "bank-a",
        &to_b,
        MessageKind::SettlementInstruction,
        DELIVER,
        false,
    );
    out.delivery = Some(blockpost_client::Delivery {
        ledger: &Bitcoin,
        raw,
    });
    let (env, _) = m.send(&d.a.0, out).await.unwrap();
    let id = blockpost_core::message_id(&env);
    let record = |stage: DeliveryStage, commitment: &[u8]| LedgerRecord {
        record: Some(ledger_record::Record::Delivery(DeliveryRecord {
            transaction_id: "dvp-1".into(),
            message_id: id.to_vec(),
            ledger: "bitcoin".into(),
            commitment: commitment.to_vec(),
            stage: stage as i32,
            ..Default::default()
        })),
    };
    let text = |s: &str| {
        let mut o = outgoing("bank-b", &to_a, MessageKind::Message, s, false);
        o.transaction_id = "other";
        o.content_type = "text/plain";
        o
    };
    let delivery_alerts = |n: usize| {
        let au = au.clone();
        async move {
            wait_for(Duration::from_secs(30), "delivery alerts", || {
                let found: Vec<_> = au
                    .alerts()
                    .into_iter()
                    .filter(|a| a.kind == AlertKind::DeliveryWrong)
                    .collect();
                async move { (found.len() >= n).then_some(found) }
            })
            .await
            .unwrap()
        }
    };
    // Delivered while the transaction is open (the instruction in a block first).
    let mut l = Ledger::connect(&sb.client().await.unwrap(), &sb.client_dir)
        .await
        .unwrap();
    placed(&mut l, id).await;
    builder.misbehave_by_recording(&record(DeliveryStage::Delivered, &txid));
    m.send(&d.b.0, text("a block, please")).await.unwrap();
    let found = delivery_alerts(1).await;
    assert!(
        found[0].detail.contains("which is not finished"),
        "{}",
        found[0].detail
    );
    // Both parties finish; then an intent for another Bitcoin transaction.
    for (who, from, to) in [(&d.a.0, "bank-a", &to_b), (&d.b.0, "bank-b", &to_a)] {
        let mut f = outgoing(from, to, MessageKind::Finish, "done", false);
        f.content_type = "text/plain";
        m.send(who, f).await.unwrap();
    }
    closed(&mut l, "dvp-1").await;
    builder.misbehave_by_recording(&record(DeliveryStage::Intent, &[9; 32]));
    m.send(&d.b.0, text("another block")).await.unwrap();
    let found = delivery_alerts(2).await;
    assert!(
        found[1]
            .detail
            .contains("not for the transaction its instruction committed to"),
        "{}",
        found[1].detail
    );
    // The right intent, then the right outcome: no new alert, once the auditor has read
    // a block after them.
    builder.misbehave_by_recording(&record(DeliveryStage::Intent, &txid));
    builder.misbehave_by_recording(&record(DeliveryStage::Delivered, &txid));
    let (last, _) = m.send(&d.b.0, text("and one more")).await.unwrap();
    let last = blockpost_core::message_id(&last);
    wait_for(Duration::from_secs(30), "the last block indexed", || {
        let n = au
            .search(&format!("message_id:{}", hex::encode(last)), 1, 0, false)
            .unwrap()
            .unwrap()
            .len();
        async move { (n == 1).then_some(()) }
    })
    .await
    .unwrap();
    let wrong = au
        .alerts()
        .into_iter()
        .filter(|a| a.kind == AlertKind::DeliveryWrong)
        .count();
    assert_eq!(wrong, 2, "{:?}", au.alerts());
}

/// Delivery versus payment with delivery: the seller's sealed Bitcoin transaction is
/// broadcast once, after both banks finished, recorded before (intent) and after
/// (delivered) the broadcast, then confirmed with its Merkle proof once a regtest block
/// holds it; the auditor finds nothing wrong. A transaction that times out delivers
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_transaction_delivers_once_and_is_confirmed_a_timed_out_one_never() {
    use bitcoin::consensus::encode::{deserialize, serialize_hex};
    use bitcoin::hashes::Hash as _;
    use blockpost_core::delivery::{Bitcoin, TargetLedger as _};
    use blockpost_proto::v1::DeliveryStage;
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_path_buf();
    std::fs::create_dir_all(w.join("blocks")).unwrap();
    let script = |name: &str, body: String| {
        let p = w.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", p.to_str().unwrap()])
            .status()
            .unwrap();
        p.to_str().unwrap().to_owned()
    };
    let broadcast = script(
        "broadcast.sh",
        format!("printf '%s\\n' \"$1\" >> {}/broadcast.txt", w.display()),
    );
    let block_cmd = script(
        "block.sh",
        format!("cat {}/blocks/\"$1\".hex 2>/dev/null", w.display()),
    );
    let sb = Sandbox::start_with(move |c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.delivery.broadcast_command = vec![broadcast];
        c.builder.delivery.block_command = vec![block_cmd];
        c.builder.delivery.poll_ms = 100;
    })
    .await
    .unwrap();
    let d = desk(&sb).await;
    let sb = sb.with_auditor(|_| {}).await.unwrap();
    let au = sb.auditor.as_ref().unwrap().auditor.clone();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let mut l = Ledger::connect(&sb.client().await.unwrap(), &sb.client_dir)
        .await
        .unwrap();
    let to_b = vec!["bank-b".to_owned()];
    let to_a = vec!["bank-a".to_owned()];
    let with = |raw: Vec<u8>, tx: &'static str, deadline: Option<i64>| {
        let mut o = outgoing(
            "bank-a",
            &to_b,
            MessageKind::SettlementInstruction,
            DELIVER,
            false,
        );
        o.transaction_id = tx;
        o.transaction_deadline_ms = deadline;
        o.delivery = Some(blockpost_client::Delivery {
            ledger: &Bitcoin,
            raw,
        });
        o
    };
    // One that times out in 1.5 s: never delivered.
    let late = bitcoin_tx(12);
    m.send(
        &d.a.0,
        with(late.clone(), "dvp-late", Some(now_ms() + 1_500)),
    )
    .await
    .unwrap();
    // The one that settles.
    let raw = bitcoin_tx(11);
    let txid = Bitcoin.commitment(&raw).unwrap();
    let (instruction, _) = m
        .send(&d.a.0, with(raw.clone(), "dvp-1", None))
        .await
        .unwrap();
    let instruction = blockpost_core::message_id(&instruction);
    let mut receive = outgoing(
        "bank-b",
        &to_a,
        MessageKind::SettlementInstruction,
        RECEIVE,
        true,
    );
    receive.transaction_id = "dvp-1";
    m.send(&d.b.0, receive).await.unwrap();
    closed(&mut l, "dvp-late").await;
    // Nothing is broadcast before both banks finish.
    assert!(!w.join("broadcast.txt").exists());
    for (who, from, to) in [(&d.a.0, "bank-a", &to_b), (&d.b.0, "bank-b", &to_a)] {
        let mut f = outgoing(from, to, MessageKind::Finish, "done", false);
        f.transaction_id = "dvp-1";
        f.content_type = "text/plain";
        m.send(who, f).await.unwrap();
    }
    // Broadcast once, the raw transaction as the bank signed it.
    let sent = wait_for(Duration::from_secs(30), "the broadcast", || {
        let t = std::fs::read_to_string(w.join("broadcast.txt")).unwrap_or_default();
        async move { (!t.is_empty()).then_some(t) }
    })
    .await
    .unwrap();
    assert_eq!(sent, format!("{}\n", hex::encode(&raw)));
    // Intent, then delivered, in the ledger.
    let stages = |rs: &[blockpost_proto::v1::DeliveryRecord]| -> Vec<i32> {
        rs.iter().map(|r| r.stage).collect()
    };
    let records = wait_for(
        Duration::from_secs(30),
        "intent and delivered records",
        async || {
            let r = delivery_records(&mut l).await;
            let want = [
                DeliveryStage::Intent as i32,
                DeliveryStage::Delivered as i32,
            ];
            (stages(&r) == want).then_some(r)
        },
    )
    .await
    .unwrap();
    assert!(records.iter().all(|r| r.message_id == instruction.to_vec()
        && r.commitment == txid.to_vec()
        && r.transaction_id == "dvp-1"));
    // A regtest block takes it: confirmed, with a proof to the block's header.
    let tx: bitcoin::Transaction = deserialize(&raw).unwrap();
    let block = blockpost_tests::mine_bitcoin_block(
        bitcoin::BlockHash::from_byte_array([0; 32]),
        101,
        &bitcoin::ScriptBuf::new_op_return([1u8; 4]),
        vec![tx],
    );
    std::fs::write(
        w.join("blocks")
            .join(format!("{}.hex", Bitcoin.show(&txid))),
        serialize_hex(&block),
    )
    .unwrap();
    let is_confirmed =
        |r: &blockpost_proto::v1::DeliveryRecord| r.stage == DeliveryStage::Confirmed as i32;
    let records = wait_for(
        Duration::from_secs(30),
        "the confirmed record",
        async || {
            let r = delivery_records(&mut l).await;
            r.iter().any(is_confirmed).then_some(r)
        },
    )
    .await
    .unwrap();
    let confirmed = records.iter().find(|r| is_confirmed(r)).unwrap().clone();
    assert_eq!(confirmed.ledger_height, 101);
    assert_eq!(confirmed.tx_index, 1);
    blockpost_core::delivery::verify_bitcoin_inclusion(
        &confirmed.block_header,
        &txid,
        confirmed.tx_index,
        &confirmed.merkle_path,
    )
    .unwrap();
    // Exactly once: one broadcast, one record of each stage; none for the timed-out one.
    assert_eq!(
        std::fs::read_to_string(w.join("broadcast.txt")).unwrap(),
        sent
    );
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(!sent.contains(&hex::encode(&late)));
    // After delivery too, no block holds the transaction's bytes (the records name its
    // txid), and the auditor's index has no trace of them.
    let latest = l.block(None).await.unwrap().block.header.header.height;
    for h in 0..=latest {
        let b = l.block(Some(h)).await.unwrap();
        assert!(
            !b.block
                .leaves
                .iter()
                .any(|leaf| leaf.windows(raw.len()).any(|w| w == raw.as_slice())),
            "block {h} holds the raw transaction"
        );
    }
    // The auditor read it all and found nothing wrong.
    let height = l.block(None).await.unwrap().block.header.header.height;
    wait_for(
        Duration::from_secs(30),
        "the auditor at the confirmation",
        || {
            let n = au.status().blocks_verified;
            async move { (n > height).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert!(
        au.search(&format!("\"{}\"", hex::encode(&raw)), 10, 0, false)
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert!(au.alerts().is_empty(), "{:?}", au.alerts());
}
