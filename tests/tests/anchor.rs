//! Anchoring against real processes: the file sink, and Bitcoin on a regtest chain built in
//! process with the `bitcoin` crate (no Bitcoin node is reachable from here). Each anchor
//! is recorded in a later block, and its OpenTimestamps proof replays from a block id
//! through the ledger root (and the transaction and the Bitcoin block) to its attestation.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, CompressedPublicKey, Network, OutPoint, PrivateKey, ScriptBuf, Transaction};
use blockpost_client::{Messenger, Outgoing};
use blockpost_core::Identity;
use blockpost_core::anchor::replay_proof;
use blockpost_core::block::{Leaf, classify_leaf, merkle_root, verify_block};
use blockpost_proto::v1::{AnchorRecord, Block as LedgerBlock, MessageKind, ledger_record};
use blockpost_tests::mine_bitcoin_block as mine;
use blockpost_tests::{Sandbox, wait_for};
use opentimestamps::attestation::Attestation;
use prost::Message as _;

/// Sends `n` messages, one at a time (each in its own short block).
async fn traffic(sb: &Sandbox, n: usize) {
    let a = Identity::generate();
    let b = Identity::generate();
    let mut c = sb.client().await.unwrap();
    let tag = rand::random::<u32>();
    c.register(&a, &format!("a-{tag}"), "Bank A AG", None)
        .await
        .unwrap();
    c.register(&b, &format!("b-{tag}"), "Bank B AG", None)
        .await
        .unwrap();
    let mut m = Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let to = vec![format!("b-{tag}")];
    for i in 0..n {
        m.send(
            &a,
            Outgoing {
                delivery: None,
                from: &format!("a-{tag}"),
                to: &to,
                transaction_id: "anchored",
                kind: MessageKind::Message,
                content_type: "text/plain",
                body: format!("message {i}").into_bytes(),
                encrypt: false,
                transaction_deadline_ms: None,
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

/// Every anchor record in the node's blocks, with the height of its block.
fn anchor_records(sb: &Sandbox) -> Vec<(u64, AnchorRecord)> {
    let b = sb.node.builder().unwrap();
    let mut out = Vec::new();
    for h in 0..b.head().size {
        let block = LedgerBlock::decode(b.store().block(h).unwrap().as_slice()).unwrap();
        let v = verify_block(&block, &b.public_key()).unwrap();
        for leaf in &v.leaves {
            if let Leaf::Record(r) = classify_leaf(leaf).unwrap()
                && let Some(ledger_record::Record::Anchor(a)) = r.record
            {
                out.push((h, a));
            }
        }
    }
    out
}

/// The ledger root at `size`, recomputed from the stored block ids.
fn ledger_root(sb: &Sandbox, size: u64) -> [u8; 32] {
    let b = sb.node.builder().unwrap();
    let hashes: Vec<[u8; 32]> = (0..size)
        .map(|h| blockpost_core::leaf_hash(&b.store().id(h).unwrap()))
        .collect();
    merkle_root(&hashes)
}

fn anchors_dir(sb: &Sandbox) -> std::path::PathBuf {
    sb.data_dir.join("ledger").join("anchors")
}

/// `export WHAT ID -o FILE` from the sandbox's node, then `verify FILE --json`: its report.
fn export_and_verify(sb: &Sandbox, what: &str, id: &str, file: &Path) -> serde_json::Value {
    let file = file.to_str().unwrap();
    let out = cli(
        sb,
        &["export", what, id, "-o", file, "--endpoint", &sb.endpoint],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(sb, &["verify", file, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cli(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let bin = blockpost_tests::blockpost_bin().unwrap();
    std::process::Command::new(bin)
        .args(args)
        .env("BLOCKPOST_CONFIG_DIR", &sb.client_dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_anchors_are_recorded_once_in_a_later_block_with_a_proof() {
    let sb = Sandbox::start_with(|c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.anchor.every_blocks = 3;
        c.builder.anchor.every_ms = 60_000;
    })
    .await
    .unwrap();
    traffic(&sb, 8).await;
    let recs = wait_for(
        Duration::from_secs(20),
        "an anchor record in a block",
        || {
            let r = anchor_records(&sb);
            async move { (!r.is_empty()).then_some(r) }
        },
    )
    .await
    .unwrap();
    let (height, rec) = &recs[0];
    assert_eq!(rec.sink, "file");
    assert_eq!(rec.reference, "anchors.jsonl#0");
    // Recorded in a later block than any it anchors, with the ledger root at that size.
    assert!(
        *height >= rec.ledger_size,
        "anchor of {} in block {height}",
        rec.ledger_size
    );
    assert!(rec.ledger_size >= 3);
    let root = ledger_root(&sb, rec.ledger_size);
    assert_eq!(rec.ledger_root, root.to_vec());

    // Its proof replays from the newest anchored block id to that root, then waits
    // (pending) on the anchor file.
    let ots = anchors_dir(&sb).join("0.ots");
    let r = replay_proof(&std::fs::read(&ots).unwrap()).unwrap();
    let tip = sb
        .node
        .builder()
        .unwrap()
        .store()
        .id(rec.ledger_size - 1)
        .unwrap();
    assert_eq!(r.digest, tip);
    assert_eq!(r.path.last().unwrap(), &root.to_vec());
    assert_eq!(
        r.attestations,
        vec![(
            Attestation::Pending {
                uri: "blockpost:anchor-file:0".into()
            },
            root.to_vec()
        )]
    );
    let out = cli(
        &sb,
        &[
            "anchor",
            "verify",
            ots.to_str().unwrap(),
            "--block-id",
            &hex::encode(tip),
            "--ledger-root",
            &hex::encode(root),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &sb,
        &[
            "anchor",
            "verify",
            ots.to_str().unwrap(),
            "--ledger-root",
            &hex::encode([7u8; 32]),
        ],
    );
    assert!(!out.status.success());

    // After a restart no anchor is recorded twice: once the restarted builder has made an
    // anchor of its own (three more blocks), every record is still there once.
    let made = |sb: &Sandbox| {
        std::fs::read_to_string(anchors_dir(sb).join("anchors.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let before = made(&sb);
    let cfg = sb.config().clone();
    let (nats, tmp) = sb.stop().await;
    let sb = Sandbox::start_on(cfg, nats, tmp).await.unwrap();
    traffic(&sb, 4).await;
    wait_for(
        Duration::from_secs(20),
        "an anchor after the restart",
        || {
            let n = made(&sb);
            async move { (n > before).then_some(()) }
        },
    )
    .await
    .unwrap();
    let lines = std::fs::read_to_string(anchors_dir(&sb).join("anchors.jsonl")).unwrap();
    let recs = anchor_records(&sb);
    let mut refs: Vec<String> = recs.iter().map(|(_, r)| r.reference.clone()).collect();
    refs.dedup();
    assert_eq!(refs.len(), recs.len(), "an anchor recorded twice: {refs:?}");
    assert!(recs.len() <= lines.lines().count());
    sb.stop().await;
}

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitcoin_anchors_are_signed_op_returns_and_their_proofs_reach_the_regtest_block() {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
    let key = PrivateKey::new(sk, Network::Regtest);
    let pk = CompressedPublicKey::from_private_key(&secp, &key).unwrap();
    let own = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
    // A regtest chain: genesis, 17 blocks; block 1's coinbase funds the anchors.
    let mut chain = vec![bitcoin::blockdata::constants::genesis_block(
        Network::Regtest,
    )];
    for h in 1..=17 {
        let prev = chain.last().unwrap().block_hash();
        chain.push(mine(prev, h, &own, vec![]));
    }
    let funding = chain[1].txdata[0].compute_txid();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_path_buf();
    std::fs::create_dir_all(w.join("blocks")).unwrap();
    std::fs::write(w.join("key.wif"), key.to_wif()).unwrap();
    let broadcast = write_script(
        &w,
        "broadcast.sh",
        &format!("printf '%s\\n' \"$1\" >> {}/broadcast.txt", w.display()),
    );
    let block_cmd = write_script(
        &w,
        "block.sh",
        &format!("cat {}/blocks/\"$1\".hex 2>/dev/null", w.display()),
    );
    for s in [&broadcast, &block_cmd] {
        std::process::Command::new("chmod")
            .args(["+x", s])
            .status()
            .unwrap();
    }
    let (wd, b2, bc) = (w.clone(), broadcast.clone(), block_cmd.clone());
    let sb = Sandbox::start_with(move |c| {
        c.builder.max_block_delay_ms = 50;
        c.builder.anchor.sink = "bitcoin".into();
        c.builder.anchor.every_blocks = 3;
        let bt = &mut c.builder.anchor.bitcoin;
        bt.key_file = Some(wd.join("key.wif"));
        bt.utxo = format!("{funding}:0");
        bt.utxo_value_sat = 50 * 100_000_000;
        bt.broadcast_command = vec![b2];
        bt.block_command = vec![bc];
        bt.poll_ms = 200;
    })
    .await
    .unwrap();
    traffic(&sb, 6).await;
    let line = wait_for(Duration::from_secs(20), "a broadcast anchor", || {
        let t = std::fs::read_to_string(w.join("broadcast.txt")).unwrap_or_default();
        async move { t.lines().next().map(str::to_owned) }
    })
    .await
    .unwrap();
    let tx: Transaction = deserialize_hex(&line).unwrap();
    // It spends the funding output, pays the change back, and commits to the ledger root.
    assert_eq!(tx.input[0].previous_output, OutPoint::new(funding, 0));
    let recs = wait_for(Duration::from_secs(20), "the anchor record", || {
        let r = anchor_records(&sb);
        async move { (!r.is_empty()).then_some(r) }
    })
    .await
    .unwrap();
    let rec = &recs[0].1;
    assert_eq!(rec.sink, "bitcoin");
    assert_eq!(rec.reference, tx.compute_txid().to_string());
    let root = ledger_root(&sb, rec.ledger_size);
    assert_eq!(rec.ledger_root, root.to_vec());
    let op_return = &tx.output[0].script_pubkey;
    assert!(op_return.is_op_return());
    assert_eq!(&op_return.as_bytes()[2..], root.as_slice());
    assert_eq!(tx.output[1].script_pubkey, own);
    // The signature verifies with the funding output's key (BIP 143).
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(
            0,
            &own,
            Amount::from_sat(50 * 100_000_000),
            EcdsaSighashType::All,
        )
        .unwrap();
    let wit: Vec<&[u8]> = tx.input[0].witness.iter().collect();
    let sig = bitcoin::ecdsa::Signature::from_slice(wit[0]).unwrap();
    assert_eq!(wit[1], pk.to_bytes().as_slice());
    secp.verify_ecdsa(
        &Message::from_digest(sighash.to_byte_array()),
        &sig.signature,
        &pk.0,
    )
    .unwrap();

    // Mine it at height 18 and let the builder find the block.
    let prev = chain.last().unwrap().block_hash();
    let confirming = mine(prev, 18, &own, vec![tx.clone()]);
    std::fs::write(
        w.join("blocks").join(format!("{}.hex", tx.compute_txid())),
        serialize_hex(&confirming),
    )
    .unwrap();
    let ots = anchors_dir(&sb).join("0.ots");
    let replayed = wait_for(Duration::from_secs(20), "a completed proof", || {
        let r = std::fs::read(&ots).ok().and_then(|b| replay_proof(&b).ok());
        async move { r.filter(|r| matches!(r.attestations[0].0, Attestation::Bitcoin { .. })) }
    })
    .await
    .unwrap();
    assert_eq!(
        replayed.attestations[0].0,
        Attestation::Bitcoin { height: 18 }
    );
    assert_eq!(
        replayed.attestations[0].1,
        confirming.header.merkle_root.to_byte_array().to_vec()
    );
    assert!(replayed.path.contains(&root.to_vec()));
    assert!(
        replayed
            .path
            .contains(&tx.compute_txid().to_byte_array().to_vec())
    );
    let tip = sb
        .node
        .builder()
        .unwrap()
        .store()
        .id(rec.ledger_size - 1)
        .unwrap();
    assert_eq!(replayed.digest, tip);

    // The CLI checks it against the header; another header fails.
    let header = serialize_hex(&confirming.header);
    let out = cli(
        &sb,
        &[
            "anchor",
            "verify",
            ots.to_str().unwrap(),
            "--bitcoin-header",
            &header,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("height 18"));
    let other = serialize_hex(&chain[5].header);
    let out = cli(
        &sb,
        &[
            "anchor",
            "verify",
            ots.to_str().unwrap(),
            "--bitcoin-header",
            &other,
        ],
    );
    assert!(!out.status.success());

    // An evidence bundle of a message in an anchored block carries the proof and the
    // header it attests to, and checks them offline; another header is refused.
    let first = LedgerBlock::decode(
        sb.node
            .builder()
            .unwrap()
            .store()
            .block(0)
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let id = hex::encode(blockpost_core::block::block_id(&first.leaves[0]));
    let bundle = w.join("m.bpe");
    let v = export_and_verify(&sb, "message", &id, &bundle);
    assert_eq!(v["anchors"][0]["bitcoin_height"], 18, "{v}");
    assert_eq!(
        v["anchors"][0]["bitcoin_block"],
        confirming.block_hash().to_string(),
        "{v}"
    );
    // The whole transaction: blocks 0 to 2 under the confirmed anchor, the rest said to
    // be unanchored (or under a pending anchor).
    let v = export_and_verify(&sb, "tx", "anchored", &w.join("tx.bpe"));
    assert_eq!(v["anchors"][0]["bitcoin_height"], 18, "{v}");
    let gaps = v["not_proved"].to_string();
    assert!(!gaps.contains("block(s) 0"), "{gaps}");
    let mut m = blockpost_client::bundle::from_zip(&std::fs::read(&bundle).unwrap()).unwrap();
    m.insert(
        "anchors/0/bitcoin-header".into(),
        bitcoin::consensus::serialize(&chain[5].header),
    );
    let man = blockpost_core::bundle::manifest(&m, 0);
    m.insert(
        "META-INF/manifest.json".into(),
        serde_json::to_vec(&man).unwrap(),
    );
    let other = w.join("other.bpe");
    std::fs::write(&other, blockpost_client::bundle::to_zip(&m).unwrap()).unwrap();
    let out = cli(&sb, &["verify", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("anchors/0/bitcoin-header: Merkle root"),
        "{err}"
    );
    // Each anchor spends the one before's change. Unconfirmed anchors are broadcast
    // again on every poll, so the file lists each transaction in order of first sight.
    sb.stop().await;
    let sent: Vec<Transaction> = std::fs::read_to_string(w.join("broadcast.txt"))
        .unwrap()
        .lines()
        .map(|l| deserialize_hex(l).unwrap())
        .collect();
    let mut unique: Vec<&Transaction> = Vec::new();
    for t in &sent {
        if unique.iter().all(|u| u.compute_txid() != t.compute_txid()) {
            unique.push(t);
        }
    }
    for pair in unique.windows(2) {
        assert_eq!(
            pair[1].input[0].previous_output,
            OutPoint::new(pair[0].compute_txid(), 1)
        );
    }
    assert_eq!(
        unique.last().unwrap().output[1].value.to_sat(),
        50 * 100_000_000 - 1_000 * unique.len() as u64
    );
}
