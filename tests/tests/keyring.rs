//! Keys for a lifetime, through the real `blockpost` binary: a keyring across two
//! rotations opens what was sealed to each generation, from the ledger after the inbox has
//! acknowledged everything; a Shamir backup recovers it from any 3 of 5 shares; and every
//! bad input gets a one-line error.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use blockpost_node::free_port;
use blockpost_tests::{Cli, NatsServer, spawn_node, wait_for};
use serde_json::Value;

/// `key backup` of Alice's keyring, 3 of 5, into `dir`.
fn backup_alice(cli: &Cli, dir: &str) {
    cli.ok(&[
        "key",
        "backup",
        "--key",
        "alice.keyring",
        "--shares",
        "5",
        "--threshold",
        "3",
        "--out",
        dir,
    ]);
}

fn send_sealed(cli: &Cli, key: &str, to: &str, text: &str) -> String {
    let r = cli.json(&[
        "send",
        "--key",
        key,
        "--to",
        to,
        "--tx",
        "t1",
        "--encrypt",
        text,
    ]);
    r["message_id"].as_str().unwrap().to_owned()
}

/// `history --json` of `key`, once it lists `n` messages (they are in blocks).
async fn history(cli: &Cli, key: &str, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(60), "messages in blocks", || async {
        let h = cli.json(&["history", "--key", key]);
        let m = h["messages"].as_array().unwrap().clone();
        (m.len() >= n).then_some(m)
    })
    .await
    .unwrap()
}

/// Each message's (body, generation that opened it), in ledger order.
fn opened(messages: &[Value]) -> Vec<(Option<String>, Option<u64>)> {
    messages
        .iter()
        .map(|m| {
            (
                m["body"].as_str().map(str::to_owned),
                m["opened_with_generation"].as_u64(),
            )
        })
        .collect()
}

fn share(dir: &Path, i: usize) -> String {
    dir.join(format!("alice-share-{i}-of-5.txt"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_reads_sealed_history_across_rotations_and_recovers_from_shares() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut node = spawn_node(&tmp.path().join("node"), port, Some(&nats));
    let cli = Cli::new(&endpoint, tmp.path());
    wait_for(Duration::from_secs(30), "the node", || async {
        cli.run(&["info"], &[]).status.success().then_some(())
    })
    .await
    .unwrap();

    // Alice keeps a keyring from the start; Bob starts with a key file, and `register`
    // starts his keyring beside it. Carol is someone else.
    cli.ok(&["key", "new", "--out", "alice.keyring"]);
    let reg = cli.json(&[
        "register",
        "--key",
        "alice.keyring",
        "--address",
        "alice",
        "--name",
        "Alice AG",
    ]);
    let first = reg["leaf_index"].as_u64().unwrap();
    cli.ok(&["key", "new", "--out", "bob.key"]);
    cli.ok(&[
        "register",
        "--key",
        "bob.key",
        "--address",
        "bob",
        "--name",
        "Bob Ltd",
    ]);
    assert!(
        tmp.path().join("bob.keyring").exists(),
        "register starts a keyring"
    );
    cli.ok(&["key", "new", "--out", "carol.keyring"]);
    cli.ok(&[
        "register",
        "--key",
        "carol.keyring",
        "--address",
        "carol",
        "--name",
        "Carol",
    ]);

    // A message sealed to each of three generations of Alice's keys (a backup taken while
    // she had only the first), and one she seals to Bob.
    let m1 = send_sealed(&cli, "bob.keyring", "alice", "to generation one");
    std::fs::create_dir(tmp.path().join("old")).unwrap();
    backup_alice(&cli, "old");
    let r2 = cli.json(&["rotate", "--key", "alice.keyring"]);
    let _m2 = send_sealed(&cli, "bob.keyring", "alice", "to generation two");
    let r3 = cli.json(&["rotate", "--key", "alice.keyring"]);
    let m3 = send_sealed(&cli, "bob.keyring", "alice", "to generation three");
    send_sealed(&cli, "alice.keyring", "bob", "from alice, sealed to bob");

    let list = cli.json(&["key", "list", "--key", "alice.keyring"]);
    let gens = list["generations"].as_array().unwrap();
    let labels: Vec<(u64, &str)> = gens
        .iter()
        .map(|g| {
            (
                g["leaf_index"].as_u64().unwrap(),
                g["status"].as_str().unwrap(),
            )
        })
        .collect();
    let (second, third) = (
        r2["leaf_index"].as_u64().unwrap(),
        r3["leaf_index"].as_u64().unwrap(),
    );
    assert_eq!(
        labels,
        [(first, "rotated"), (second, "rotated"), (third, "current")]
    );

    // The inbox delivers and acknowledges; each body opens with its own generation.
    let inbox = cli.ok(&["inbox", "--key", "alice.keyring"]);
    for t in [
        "to generation one",
        "to generation two",
        "to generation three",
    ] {
        assert!(inbox.contains(t), "{inbox}");
    }
    assert!(cli.ok(&["inbox", "--key", "alice.keyring"]).is_empty());

    // History comes from the ledger: every message, opened where it was sealed to Alice.
    let h = history(&cli, "alice.keyring", 4).await;
    let want = vec![
        (Some("to generation one".to_owned()), Some(1)),
        (Some("to generation two".to_owned()), Some(2)),
        (Some("to generation three".to_owned()), Some(3)),
        (None, None),
    ];
    assert_eq!(opened(&h), want);
    assert!(
        h[3]["unopened"]
            .as_str()
            .unwrap()
            .contains("a sender keeps no copy"),
        "{}",
        h[3]
    );
    let tx = cli.json(&["tx", "t1", "--key", "alice.keyring"]);
    let bodies: Vec<Option<&str>> = tx["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        [
            Some("to generation one"),
            Some("to generation two"),
            Some("to generation three"),
            None
        ]
    );
    let m = cli.json(&["message", &m1, "--key", "alice.keyring"]);
    assert_eq!(m["message"]["body"], "to generation one");
    assert_eq!(m["message"]["opened_with_key_index"], first);
    assert_eq!(m["message"]["sender_name"], "Bob Ltd");
    let since = cli.json(&["history", "--key", "alice.keyring", "--since", "2000-01-01"]);
    assert_eq!(since["messages"].as_array().unwrap().len(), 4);
    let future = cli.json(&["history", "--key", "alice.keyring", "--since", "2999-01-01"]);
    assert!(future["messages"].as_array().unwrap().is_empty());

    // Backup 3 of 5 now; any three shares recover a keyring that opens the same history.
    backup_alice(&cli, "shares");
    let shares = tmp.path().join("shares");
    for (i, pick) in [[1, 2, 3], [5, 3, 1], [2, 4, 5]].iter().enumerate() {
        let out = format!("recovered-{i}.keyring");
        let (a, b, c) = (
            share(&shares, pick[0]),
            share(&shares, pick[1]),
            share(&shares, pick[2]),
        );
        let o = cli.run(
            &[
                "key", "recover", "--share", &a, "--share", &b, "--share", &c, "--out", &out,
            ],
            &[("BLOCKPOST_PASSPHRASE", "new passphrase")],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = cli.run(
            &["history", "--key", &out, "--json"],
            &[("BLOCKPOST_PASSPHRASE", "new passphrase")],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let again: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(opened(again["messages"].as_array().unwrap()), want);
    }
    let (s1, s2, s3) = (share(&shares, 1), share(&shares, 2), share(&shares, 3));
    cli.refused(
        &[
            "key",
            "recover",
            "--share",
            &s1,
            "--share",
            &s2,
            "--out",
            "two.keyring",
        ],
        &[],
        &["2 share(s) given", "needs 3"],
    );
    assert!(!tmp.path().join("two.keyring").exists());
    // One changed character: in the share line, or in the sealed data.
    let text = std::fs::read_to_string(&s2).unwrap();
    for (needle, what) in [
        ("share: bpks1", "does not check"),
        ("data:\n", "was changed"),
    ] {
        let at = text.find(needle).unwrap() + needle.len() + 10;
        let mut t = text.clone();
        let c = if &t[at..=at] == "q" { "p" } else { "q" };
        t.replace_range(at..=at, c);
        std::fs::write(tmp.path().join("tampered.txt"), t).unwrap();
        cli.refused(
            &[
                "key",
                "recover",
                "--share",
                &s1,
                "--share",
                "tampered.txt",
                "--share",
                &s3,
                "--out",
                "t.keyring",
            ],
            &[],
            &["share tampered.txt", what],
        );
    }

    // The backup from before the rotations recovers generation one only: it opens the
    // first message and names the generation it lacks for the third.
    let (o1, o2, o4) = (
        share(&tmp.path().join("old"), 1),
        share(&tmp.path().join("old"), 2),
        share(&tmp.path().join("old"), 4),
    );
    cli.ok(&[
        "key",
        "recover",
        "--share",
        &o1,
        "--share",
        &o2,
        "--share",
        &o4,
        "--out",
        "old.keyring",
    ]);
    let m = cli.json(&["message", &m1, "--key", "old.keyring"]);
    assert_eq!(m["message"]["body"], "to generation one");
    cli.refused(
        &["message", &m3, "--key", "old.keyring"],
        &[],
        &[
            &format!("key of directory entry {third}"),
            "a generation this keyring lacks",
            &format!("it holds entries {first})"),
        ],
    );

    // Bad inputs: a wrong passphrase, a truncated file, another participant's keyring.
    cli.refused(
        &["history", "--key", "alice.keyring"],
        &[("BLOCKPOST_PASSPHRASE", "wrong")],
        &["alice.keyring", "wrong passphrase"],
    );
    let bytes = std::fs::read(tmp.path().join("alice.keyring")).unwrap();
    std::fs::write(tmp.path().join("cut.keyring"), &bytes[..bytes.len() / 2]).unwrap();
    cli.refused(
        &["key", "list", "--key", "cut.keyring"],
        &[],
        &["cut.keyring", "truncated"],
    );
    cli.refused(
        &["tx", "t1", "--key", "carol.keyring"],
        &[],
        &["keyring of carol", "not a party of transaction t1"],
    );
    cli.refused(
        &["message", &m1, "--key", "carol.keyring"],
        &[],
        &["keyring of carol", "neither sent nor received"],
    );
    cli.refused(
        &[
            "send",
            "--key",
            "carol.keyring",
            "--from",
            "alice",
            "--to",
            "bob",
            "--tx",
            "t9",
            "x",
        ],
        &[],
        &["keyring of carol, not of alice"],
    );
    cli.refused(
        &[
            "key",
            "recover",
            "--share",
            "alice.keyring",
            "--out",
            "x.keyring",
        ],
        &[],
        &["not a Blockpost keyring share"],
    );

    // Escrow: a policy adds Carol (a regulator, say) to what Bob sends; her keyring opens it.
    let o = cli.run(
        &[
            "send",
            "--key",
            "bob.keyring",
            "--to",
            "alice",
            "--tx",
            "t2",
            "--encrypt",
            "escrowed",
        ],
        &[("BLOCKPOST_ALSO_SEAL_TO", "carol")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h = history(&cli, "carol.keyring", 1).await;
    assert_eq!(h[0]["body"], "escrowed");
    assert_eq!(h[0]["recipients"], serde_json::json!(["alice", "carol"]));

    // A revocation through the keyring marks its generation; the address stays revoked.
    cli.ok(&["revoke", "--key", "carol.keyring", "--reason", "key stolen"]);
    let list = cli.json(&["key", "list", "--key", "carol.keyring"]);
    assert_eq!(list["generations"][0]["status"], "revoked");
    cli.refused(
        &[
            "register",
            "--key",
            "carol.keyring",
            "--address",
            "carol",
            "--name",
            "Carol",
        ],
        &[],
        &["carol's binding is revoked", "register a new address"],
    );
    cli.refused(
        &[
            "send",
            "--key",
            "carol.keyring",
            "--to",
            "bob",
            "--tx",
            "t3",
            "x",
        ],
        &[],
        &["no current generation"],
    );
    // What was sealed to the revoked generation still opens.
    let h = cli.json(&["history", "--key", "carol.keyring", "--tx", "t2"]);
    assert_eq!(h["messages"][0]["body"], "escrowed");

    // Key files kept by hand import into a keyring, each labelled from the directory.
    cli.ok(&["key", "new", "--out", "bob2.key"]);
    cli.ok(&["rotate", "--key", "bob.key", "--new-key", "bob2.key"]);
    let imported = cli.json(&[
        "key",
        "import",
        "--into",
        "bob-all.keyring",
        "--key",
        "bob2.key",
        "--key",
        "bob.key",
    ]);
    let statuses: Vec<&str> = imported["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["rotated", "current"]);
    assert_eq!(imported["address"], "bob");
    cli.refused(
        &[
            "key",
            "import",
            "--into",
            "bob-all.keyring",
            "--key",
            "bob.key",
            "--address",
            "carol",
        ],
        &[],
        &["keyring of bob, not of carol"],
    );
    cli.ok(&["key", "new", "--out", "stray.key"]);
    cli.refused(
        &[
            "key",
            "import",
            "--into",
            "bob-all.keyring",
            "--key",
            "stray.key",
        ],
        &[],
        &["stray.key", "bound by no entry of bob"],
    );

    node.kill().unwrap();
    node.wait().unwrap();
}
