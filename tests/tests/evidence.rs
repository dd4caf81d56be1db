//! Evidence that outlives the operator, through the real `blockpost` binary: a finished
//! settlement exported to one file, its node and NATS store deleted, and the file checked
//! offline; every member kind tampered with; witnesses and trusted keys enforced.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_client::bundle::{from_zip, to_zip};
use blockpost_node::free_port;
use blockpost_tests::{Cli, NatsServer, spawn_node, wait_for};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_settlement_verifies_offline_after_its_node_is_gone() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut node = spawn_node(&data, port, Some(&nats));
    let cli = Cli::new(&endpoint, tmp.path());
    wait_for(Duration::from_secs(30), "the node", || async {
        cli.run(&["info"], &[]).status.success().then_some(())
    })
    .await
    .unwrap();

    // The settlement of the README: plaintext, sealed, and both finishes.
    for (who, name) in [("bank-a", "Bank A AG"), ("bank-b", "Bank B Ltd")] {
        cli.ok(&["key", "new", "--out", &format!("{who}.keyring")]);
        cli.ok(&[
            "register",
            "--key",
            &format!("{who}.keyring"),
            "--address",
            who,
            "--name",
            name,
        ]);
    }
    let send = |from: &str, to: &str, extra: &[&str], text: &str| {
        let key = format!("{from}.keyring");
        let mut a = vec!["send", "--key", &key, "--to", to, "--tx", "settle-1"];
        a.extend_from_slice(extra);
        a.push(text);
        cli.ok(&a);
    };
    send(
        "bank-a",
        "bank-b",
        &["--receipt-out", "r1.json"],
        "I have Y dollars for X stock.",
    );
    send(
        "bank-b",
        "bank-a",
        &["--encrypt"],
        "I have the stock; confirm the money.",
    );
    send("bank-a", "bank-b", &["--encrypt"], "OK. I transferred.");
    cli.ok(&[
        "finish",
        "--key",
        "bank-b.keyring",
        "--to",
        "bank-a",
        "--tx",
        "settle-1",
        "--encrypt",
        "Done.",
    ]);
    cli.ok(&[
        "finish",
        "--key",
        "bank-a.keyring",
        "--to",
        "bank-b",
        "--tx",
        "settle-1",
        "Confirmed.",
    ]);
    wait_for(
        Duration::from_secs(60),
        "the transaction to finish",
        || async {
            let t = cli.json(&["tx", "settle-1"]);
            (t["status"] == "finished").then_some(())
        },
    )
    .await
    .unwrap();
    std::fs::write(tmp.path().join("info.json"), cli.ok(&["info", "--json"])).unwrap();
    cli.ok(&[
        "export",
        "tx",
        "settle-1",
        "-o",
        "settle-1.bpe",
        "--receipt",
        "r1.json",
    ]);
    cli.refused(
        &["export", "tx", "settle-1", "-o", "settle-1.bpe"],
        &[],
        &["exists; refusing to overwrite"],
    );
    cli.refused(
        &["export", "tx", "no-such-tx", "-o", "x.bpe"],
        &[],
        &["no-such-tx"],
    );

    // The operator is gone: node, data directory and NATS store.
    node.kill().unwrap();
    node.wait().unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    drop(nats);

    let r = cli.json(&["verify", "settle-1.bpe", "--trust", "info.json"]);
    assert_eq!(r["verified"], true);
    assert_eq!(r["subject"], "transaction settle-1");
    assert_eq!(r["status"], "finished");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0]["sender"]["real_name"], "Bank A AG");
    assert_eq!(msgs[0]["recipients"][0]["real_name"], "Bank B Ltd");
    assert_eq!(msgs[0]["text"], "I have Y dollars for X stock.");
    assert_eq!(msgs[1]["sealed"], true);
    assert!(msgs[1]["text"].is_null());
    assert_eq!(r["closing"]["status"], "finished");
    assert_eq!(
        r["closing"]["finished_by"],
        serde_json::json!(["bank-a", "bank-b"])
    );
    assert_eq!(r["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(r["receipts"][0]["kept"], true);
    assert!(
        r["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["source"] == "trusted")
    );
    // Without --trust it says which keys it took from the bundle.
    let plain = cli.ok(&["verify", "settle-1.bpe"]);
    assert!(plain.contains("taken from the bundle"), "{plain}");
    assert!(plain.contains("Bank A AG <bank-a>"), "{plain}");
    // A keyring opens what was sealed to its holder.
    let r = cli.json(&["verify", "settle-1.bpe", "--key", "bank-a.keyring"]);
    assert_eq!(
        r["messages"][1]["opened"],
        "I have the stock; confirm the money."
    );
    assert!(r["messages"][2]["opened"].is_null());
    cli.ok(&[
        "verify",
        "settle-1.bpe",
        "--trust",
        "info.json",
        "--html",
        "report.html",
    ]);
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    assert!(html.contains("Evidence for transaction settle-1") && html.contains("Bank B Ltd"));
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "self-contained"
    );

    // Witnesses required but absent, and keys that are not the ones trusted.
    let witness = blockpost_core::Cosigner::new(
        "witness.example",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap()
    .verifier_key();
    cli.refused(
        &[
            "verify",
            "settle-1.bpe",
            "--witness",
            &witness,
            "--min-witnesses",
            "1",
        ],
        &[],
        &["ledger/checkpoint", "witness cosignatures"],
    );
    let mut info: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("info.json")).unwrap())
            .unwrap();
    info["ledger"]["builder_key"] = Value::String(hex::encode([7u8; 32]));
    std::fs::write(tmp.path().join("other.json"), info.to_string()).unwrap();
    cli.refused(
        &["verify", "settle-1.bpe", "--trust", "other.json"],
        &[],
        &["keys.json", "trusted keys", "builder key"],
    );

    // Every member, one byte changed: the manifest names it. Changed and listed anew in
    // the manifest, a proof or signature check names it (or the member it breaks).
    let bytes = std::fs::read(tmp.path().join("settle-1.bpe")).unwrap();
    let members = from_zip(&bytes).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for path in members.keys() {
        let kind = match path.rsplit_once('.') {
            Some((_, "json")) | None => path.clone(),
            Some((_, ext)) => ext.to_owned(),
        };
        let first_of_kind = kinds.insert(kind);
        let mut m = members.clone();
        let b = m.get_mut(path).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        std::fs::write(tmp.path().join("t.bpe"), to_zip(&m).unwrap()).unwrap();
        let err = cli.refused(&["verify", "t.bpe"], &[], &["t.bpe does not verify"]);
        assert!(
            err.contains(path.as_str()) || path == "META-INF/manifest.json",
            "{path}: {err}"
        );
        if !first_of_kind || path == "mimetype" || path == "META-INF/manifest.json" {
            continue;
        }
        let man = blockpost_core::bundle::manifest(&m, 0);
        m.insert(
            "META-INF/manifest.json".into(),
            serde_json::to_vec(&man).unwrap(),
        );
        std::fs::write(tmp.path().join("t.bpe"), to_zip(&m).unwrap()).unwrap();
        let err = cli.refused(&["verify", "t.bpe"], &[], &["t.bpe does not verify"]);
        assert!(!err.contains("SHA-256 in the manifest"), "{path}: {err}");
        // Named: the member (beside its proof, when they disagree), or keys.json when a
        // key it names fails; the line is `MEMBER: CHECK: WHY`.
        let named = if path == "keys.json" {
            "keys.json"
        } else {
            path.as_str()
        };
        assert!(err.contains(named), "{path}: {err}");
        assert!(
            err.matches(": ").count() >= 3,
            "{path}: no check named: {err}"
        );
    }
    assert!(kinds.len() >= 12, "{kinds:?}");
    // Bytes outside the members too: the local copy of a name, the end record.
    for at in [34, bytes.len() - 3] {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        std::fs::write(tmp.path().join("z.bpe"), b).unwrap();
        cli.refused(&["verify", "z.bpe"], &[], &["z.bpe"]);
    }
    cli.refused(&["verify", "info.json"], &[], &["not a ZIP file"]);
}
