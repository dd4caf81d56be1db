//! The real `blockpost` binary across processes: the CLI as a user runs it, and `kill -9`
//! in the middle of a stream of registrations.

#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockpost_client::Client;
use blockpost_core::{Identity, verify_checkpoint};
use blockpost_node::free_port;
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::{ConsistencyProofRequest, SignedRequest};
use blockpost_tests::{
    NatsServer, blockpost_bin, register_body, sign_register, spawn_node, wait_for,
};

async fn wait_ready(endpoint: &str, state: &Path) -> Client {
    wait_for(Duration::from_secs(30), "node to accept gRPC", || async {
        Client::connect(endpoint, state).await.ok()
    })
    .await
    .unwrap()
}

fn signed(address: &str, id: &Identity) -> SignedRequest {
    sign_register(id, &register_body(id, address, &format!("{address} AG")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_registration() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let state = tmp.path().join("client");
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    // (address, leaf index, signing key) of every acknowledged registration, and every
    // checkpoint handed out.
    let acked: Arc<Mutex<Vec<(String, u64, [u8; 32])>>> = Arc::default();
    let notes: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut next = 0usize;
    for round in 0..3 {
        let mut node = spawn_node(&data, port, Some(&nats));
        let client = wait_ready(&endpoint, &state).await;
        let verifier_key = client.info().verifier_key.clone();
        let grpc = DirectoryClient::new(
            tonic::transport::Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let start = acked.lock().unwrap().len();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let (mut g, acked, notes, stop) =
                (grpc.clone(), acked.clone(), notes.clone(), stop.clone());
            let base = next + t * 100_000;
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = Identity::generate();
                    let address = format!("r{round}-{}", base + i);
                    match g.register(signed(&address, &id)).await {
                        Ok(r) => {
                            let p = r.into_inner().proof.unwrap();
                            acked.lock().unwrap().push((
                                address,
                                p.leaf_index,
                                id.signing_public(),
                            ));
                            notes.lock().unwrap().push(p.checkpoint);
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        next += 16 * 100_000;
        // Kill once a good number of registrations went through, mid-stream.
        let a = acked.clone();
        wait_for(Duration::from_secs(60), "registrations to flow", || {
            let n = a.lock().unwrap().len();
            async move { (n >= start + 150).then_some(()) }
        })
        .await
        .unwrap();
        node.kill().unwrap(); // SIGKILL
        node.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        // Restart and check everything acknowledged so far.
        let mut node = spawn_node(&data, port, Some(&nats));
        let mut client = wait_ready(&endpoint, &state).await;
        assert_eq!(
            client.info().verifier_key,
            verifier_key,
            "the log key survives restarts"
        );
        let head = client.checkpoint().await.unwrap();
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            head.size >= acked_now.len() as u64,
            "log shrank: {} < {}",
            head.size,
            acked_now.len()
        );
        for (address, index, key) in acked_now.iter().step_by(7).chain(acked_now.last()) {
            let e = client.current(address).await.unwrap();
            assert_eq!(
                (e.leaf_index, e.binding.signing_key),
                (*index, *key),
                "{address}"
            );
        }
        // Every checkpoint handed out is a prefix of the log after the restart.
        let mut g = grpc_for(&endpoint).await;
        let mut sizes: Vec<Vec<u8>> = notes.lock().unwrap().clone();
        sizes.sort();
        sizes.dedup();
        for note in sizes.iter().step_by(5) {
            let old = verify_checkpoint(note, &verifier_key).unwrap();
            let p = g
                .get_consistency_proof(ConsistencyProofRequest {
                    from_size: old.size,
                    to_size: head.size,
                })
                .await
                .unwrap()
                .into_inner();
            old.verify_consistency(&head, &p.hashes).unwrap();
        }
        node.kill().unwrap();
        node.wait().unwrap();
    }
    assert!(acked.lock().unwrap().len() >= 450);
}

async fn grpc_for(endpoint: &str) -> DirectoryClient<tonic::transport::Channel> {
    DirectoryClient::new(
        tonic::transport::Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(blockpost_bin().unwrap());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn refused(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_walkthrough_with_a_managed_nats_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    // The auditor's port, which the node takes as its witness.
    let audit_port = free_port().unwrap();
    let audit_endpoint = format!("http://127.0.0.1:{audit_port}");
    // No --nats: the node starts and manages its own nats-server.
    let mut node =
        blockpost_tests::spawn_node_with(&data, port, None, &["--witness", &audit_endpoint]);
    let state = tmp.path().join("cfg");
    wait_ready(&endpoint, &state).await;
    let state_s = state.to_str().unwrap().to_owned();
    let key = tmp.path().join("alice.key");
    let key_s = key.to_str().unwrap().to_owned();
    let env = [
        ("BLOCKPOST_ENDPOINT", endpoint.as_str()),
        ("BLOCKPOST_CONFIG_DIR", &state_s),
        ("BLOCKPOST_PASSPHRASE", "s3cret"),
    ];

    // The managed nats-server takes no anonymous client; its read-only user is printed for
    // an operator to hand to auditors, and works.
    let creds: serde_json::Value = serde_json::from_str(&ok(&run(
        &[
            "nats-credentials",
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        &[],
    )))
    .unwrap();
    let nats_url = creds["url"].as_str().unwrap();
    assert!(blockpost_node::connect(nats_url, None).await.is_err());
    let reader = blockpost_node::NatsAuth::UserPassword {
        user: creds["user"].as_str().unwrap().into(),
        password: creds["password"].as_str().unwrap().into(),
    };
    blockpost_node::connect(nats_url, Some(&reader))
        .await
        .unwrap();

    // A second node on the same data dir is refused, and leaves the first one's NATS alone.
    let other = format!("127.0.0.1:{}", free_port().unwrap());
    refused(
        &run(
            &["up", "--data", data.to_str().unwrap(), "--listen", &other],
            &[],
        ),
        "in use by another",
    );

    let out = ok(&run(&["key", "new", "--out", &key_s, "--json"], &env));
    let k: serde_json::Value = serde_json::from_str(&out).unwrap();
    refused(
        &run(&["key", "new", "--out", &key_s], &env),
        "refusing to overwrite",
    );
    refused(
        &run(
            &[
                "register",
                "--key",
                &key_s,
                "--address",
                "alice",
                "--name",
                "A",
            ],
            &[env[0], env[1], ("BLOCKPOST_PASSPHRASE", "wrong")],
        ),
        "wrong passphrase",
    );

    let out = ok(&run(
        &[
            "register",
            "--key",
            &key_s,
            "--address",
            "alice",
            "--name",
            "Alice Bank AG",
            "--json",
        ],
        &env,
    ));
    let reg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reg["address"], "alice");
    assert_eq!(reg["real_name"], "Alice Bank AG");
    assert_eq!(reg["verified"], false);
    assert_eq!(reg["signing_key"], k["signing_key"]);
    assert_eq!(reg["encryption_key"], k["encryption_key"]);
    assert_eq!(reg["leaf_index"], 0);
    assert!(reg["checkpoint"].as_str().unwrap().contains("\n1\n"));
    assert!(reg["inclusion_proof"].is_array());

    let out = ok(&run(&["lookup", "alice", "--json"], &env));
    let look: serde_json::Value = serde_json::from_str(&out).unwrap();
    for f in [
        "address",
        "real_name",
        "verified",
        "signing_key",
        "encryption_key",
        "certificate_pem",
        "leaf_index",
        "entry",
        "inclusion_proof",
        "checkpoint",
    ] {
        assert!(!look[f].is_null(), "lookup --json lacks {f}");
    }
    assert_eq!(look["history"].as_array().unwrap().len(), 1);

    // `info` gives every key a verifier pins, and the ledger's rules.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&run(&["info", "--json"], &env))).unwrap();
    assert_eq!(
        info["ledger"]["builder_key"].as_str().unwrap().len(),
        64,
        "{info}"
    );
    assert!(
        info["ledger"]["verifier_key"]
            .as_str()
            .unwrap()
            .contains("/ledger+")
    );
    assert_eq!(info["ledger"]["transaction_timeout_ms"], 3_600_000);
    assert_eq!(info["gateway"]["receipt_key"].as_str().unwrap().len(), 64);
    assert!(info["witnesses"]["cosigned_ledger_checkpoint"].is_array());

    // openssl reads the certificate and verifies it against the directory CA.
    if Command::new("openssl").arg("version").output().is_ok() {
        let info: serde_json::Value =
            serde_json::from_str(&ok(&run(&["info", "--json"], &env))).unwrap();
        let ca = tmp.path().join("ca.pem");
        let cert = tmp.path().join("alice.pem");
        std::fs::write(&ca, info["ca_certificate_pem"].as_str().unwrap()).unwrap();
        std::fs::write(&cert, look["certificate_pem"].as_str().unwrap()).unwrap();
        let v = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca)
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let t = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&t.stdout);
        assert!(
            text.contains("CN = Alice Bank AG") && text.contains("URI:blockpost:alice"),
            "{text}"
        );
    }

    ok(&run(&["checkpoint"], &env));
    refused(&run(&["lookup", "bad.address"], &env), "invalid address");
    refused(&run(&["lookup", "nobody"], &env), "NotFound");
    refused(
        &run(
            &[
                "register",
                "--key",
                &key_s,
                "--address",
                "alice",
                "--name",
                "Alice Bank AG",
            ],
            &env,
        ),
        "AlreadyExists",
    );
    refused(
        &run(
            &[
                "register",
                "--key",
                &key_s,
                "--address",
                "Bad Addr",
                "--name",
                "x",
            ],
            &env,
        ),
        "invalid address",
    );
    refused(
        &run(
            &["lookup", "alice"],
            &[("BLOCKPOST_ENDPOINT", "http://127.0.0.1:1"), env[1]],
        ),
        "cannot reach",
    );

    // The settlement example runs end to end against this node.
    let ex = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/settlement.sh"))
        .env("BLOCKPOST_BIN", blockpost_bin().unwrap())
        .env("BLOCKPOST_ENDPOINT", &endpoint)
        .env("BLOCKPOST_CONFIG_DIR", &state_s)
        .env("WORK", tmp.path().join("example"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ex.stdout);
    assert!(
        ex.status.success(),
        "settlement.sh: {}\n{}",
        out,
        String::from_utf8_lossy(&ex.stderr)
    );
    assert!(
        out.contains("I have Y dollars to trade for X stock in Megacorp."),
        "{out}"
    );
    assert!(
        out.contains("(message, end-to-end encrypted): OK. I transferred."),
        "{out}"
    );
    assert!(
        out.contains("(finish, end-to-end encrypted): OK. I transferred. Transaction finished."),
        "{out}"
    );
    assert!(
        out.contains("<encrypted for other recipients>"),
        "the firehose shows no plaintext: {out}"
    );
    // Both banks sent finish: the ledger closed the transaction, and `tx` proved it.
    assert!(
        out.contains(": finished\n") && out.contains("  closed       finished at "),
        "{out}"
    );
    // Parties by name beside their address, from verified look-ups; times as dates.
    assert!(
        out.contains("Bank A AG <bank-a-") && out.contains("-> Bank B Ltd <bank-b-"),
        "{out}"
    );
    assert!(
        out.contains("  parties      Bank A AG <bank-a-"),
        "`tx` names the parties: {out}"
    );
    let receipt_line = out
        .lines()
        .find(|l| l.starts_with("accepted #"))
        .unwrap_or_else(|| panic!("no receipt line: {out}"));
    let deadline = receipt_line
        .split("in a block by ")
        .nth(1)
        .unwrap_or_else(|| panic!("{receipt_line}"));
    assert!(
        deadline.len() >= 20 && deadline.as_bytes()[10] == b'T' && deadline.contains('Z'),
        "deadline is not an RFC 3339 date: {receipt_line}"
    );

    // kill -9 the node; its managed nats-server outlives it. A restart on the same data
    // ends that server before starting its own, and serves the same log.
    node.kill().unwrap();
    node.wait().unwrap();
    let mut node =
        blockpost_tests::spawn_node_with(&data, port, None, &["--witness", &audit_endpoint]);
    wait_ready(&endpoint, &state).await;
    let again: serde_json::Value =
        serde_json::from_str(&ok(&run(&["lookup", "alice", "--json"], &env))).unwrap();
    assert_eq!(again["signing_key"], k["signing_key"]);
    // Every message the gateway gave a receipt for is still on the firehose.
    let fh = ok(&run(&["firehose", "--json"], &env));
    let lines: Vec<serde_json::Value> = fh
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{fh}");
    assert!(lines.iter().all(|m| m["signature_verified"] == true));
    assert_eq!(lines[3]["kind"], "finish");
    assert_eq!(lines[4]["kind"], "finish");
    let store = data.join("nats");
    let servers = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(store.to_str().unwrap()))
        .count();
    assert_eq!(servers, 1, "exactly one nats-server on the node's store");

    // An auditor, in its own process with the read-only NATS user, verifies what is there
    // and finds nothing wrong; a receipt handed to it is watched; after a kill -9 it
    // starts over and still finds nothing.
    let reader_file = tmp.path().join("reader.creds");
    std::fs::write(
        &reader_file,
        format!(
            "{}:{}",
            creds["user"].as_str().unwrap(),
            creds["password"].as_str().unwrap()
        ),
    )
    .unwrap();
    let audit_data = tmp.path().join("auditor");
    let spawn_auditor = || {
        blockpost_tests::spawn_auditor(&endpoint, nats_url, &reader_file, &audit_data, audit_port)
    };
    let audit_caught_up = |firehose: u64| {
        let audit_endpoint = audit_endpoint.clone();
        async move {
            wait_for(Duration::from_secs(30), "the auditor caught up", || {
                let o = run(
                    &["audit", "status", "--auditor", &audit_endpoint, "--json"],
                    &[],
                );
                let s: Option<serde_json::Value> = o
                    .status
                    .success()
                    .then(|| serde_json::from_slice(&o.stdout).ok())
                    .flatten();
                let done = s.is_some_and(|s| {
                    s["blocks_verified"].as_u64() >= Some(1)
                        && s["firehose_checked"] == firehose
                        && s["waiting"] == 0
                        && s["blocks_current"] == true
                });
                async move { done.then_some(()) }
            })
            .await
            .unwrap();
        }
    };
    let mut auditor = spawn_auditor();
    audit_caught_up(5).await;
    assert_eq!(
        ok(&run(
            &["audit", "alerts", "--auditor", &audit_endpoint, "--json"],
            &[]
        )),
        ""
    );
    // It is the node's witness: a client that requires its cosignature gets checkpoints
    // and look-ups proved against what it cosigned.
    let witness: serde_json::Value = serde_json::from_str(&ok(&run(
        &["audit", "witness", "--auditor", &audit_endpoint, "--json"],
        &[],
    )))
    .unwrap();
    let witness_key = witness["witness_key"].as_str().unwrap().to_owned();
    assert!(witness_key.starts_with("blockpost-auditor/"), "{witness}");
    let strict_state = tmp.path().join("strict");
    let strict_env = [
        ("BLOCKPOST_ENDPOINT", endpoint.as_str()),
        ("BLOCKPOST_CONFIG_DIR", strict_state.to_str().unwrap()),
    ];
    let cp: serde_json::Value = serde_json::from_str(&ok(&run(
        &["checkpoint", "--witness", &witness_key, "--json"],
        &strict_env,
    )))
    .unwrap();
    assert_eq!(cp["witnessed_by"].as_array().unwrap().len(), 1, "{cp}");
    ok(&run(
        &[
            "lookup",
            "alice",
            "--witness",
            &witness_key,
            "--min-witnesses",
            "1",
        ],
        &strict_env,
    ));
    refused(
        &run(
            &[
                "checkpoint",
                "--witness",
                &witness_key,
                "--min-witnesses",
                "2",
            ],
            &strict_env,
        ),
        "2 witnesses required",
    );
    refused(
        &run(&["checkpoint", "--witness", "not-a-key"], &strict_env),
        "witness key",
    );
    let receipt_file = tmp.path().join("receipt.json");
    let out = ok(&run(
        &[
            "send",
            "--key",
            &key_s,
            "--to",
            "alice",
            "--tx",
            "audited-1",
            "--receipt-out",
            receipt_file.to_str().unwrap(),
            "--audit",
            &audit_endpoint,
            "--json",
            "a note to self",
        ],
        &env,
    ));
    let verdict: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(
        ["pending", "in_block"].contains(&verdict["verdict"].as_str().unwrap()),
        "{out}"
    );
    audit_caught_up(6).await;
    let again: serde_json::Value = serde_json::from_str(&ok(&run(
        &[
            "audit",
            "receipt",
            receipt_file.to_str().unwrap(),
            "--auditor",
            &audit_endpoint,
            "--json",
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(again["verdict"], "in_block");
    assert_eq!(again["message_id"], verdict["message_id"]);
    // An evidence bundle made by a client that requires the witness carries its
    // cosignatures, and a verifier that requires them accepts it, offline.
    let bundle = tmp.path().join("audited-1.bpe");
    let bundle_s = bundle.to_str().unwrap();
    ok(&run(
        &[
            "export",
            "tx",
            "audited-1",
            "-o",
            bundle_s,
            "--receipt",
            receipt_file.to_str().unwrap(),
            "--witness",
            &witness_key,
            "--min-witnesses",
            "1",
        ],
        &env,
    ));
    let v: serde_json::Value = serde_json::from_str(&ok(&run(
        &[
            "verify",
            bundle_s,
            "--witness",
            &witness_key,
            "--min-witnesses",
            "1",
            "--json",
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(v["ledger_cosigners"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["directory_cosigners"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["receipts"][0]["kept"], true, "{v}");
    assert_eq!(v["status"], "open", "{v}");
    // The auditor's search hits carry the decoded message beside the envelope.
    let hits = ok(&run(
        &[
            "audit",
            "search",
            "transaction_id:audited-1",
            "--auditor",
            &audit_endpoint,
            "--json",
        ],
        &[],
    ));
    let hit: serde_json::Value = serde_json::from_str(hits.lines().next().unwrap()).unwrap();
    assert_eq!(hit["message"]["transaction_id"], "audited-1", "{hit}");
    assert_eq!(hit["message"]["sender"], "alice", "{hit}");
    assert_eq!(hit["message"]["sender_name"], "Alice Bank AG", "{hit}");
    assert_eq!(hit["message"]["body"], "a note to self", "{hit}");
    refused(
        &run(
            &[
                "audit",
                "receipt",
                key_s.as_str(),
                "--auditor",
                &audit_endpoint,
            ],
            &[],
        ),
        "is not a receipt file",
    );
    auditor.kill().unwrap();
    auditor.wait().unwrap();
    let mut auditor = spawn_auditor();
    audit_caught_up(6).await;
    assert_eq!(
        ok(&run(
            &["audit", "alerts", "--data", audit_data.to_str().unwrap()],
            &[]
        )),
        ""
    );
    auditor.kill().unwrap();
    auditor.wait().unwrap();

    // rotate and revoke take the address from the key file's `.address`, as send does.
    let key2_s = tmp.path().join("alice2.key").to_str().unwrap().to_owned();
    ok(&run(&["key", "new", "--out", &key2_s], &env));
    let rot: serde_json::Value = serde_json::from_str(&ok(&run(
        &["rotate", "--key", &key_s, "--new-key", &key2_s, "--json"],
        &env,
    )))
    .unwrap();
    assert_eq!(
        (rot["kind"].as_str(), rot["address"].as_str()),
        (Some("rotate"), Some("alice"))
    );
    let rev: serde_json::Value = serde_json::from_str(&ok(&run(
        &["revoke", "--key", &key2_s, "--reason", "merged", "--json"],
        &env,
    )))
    .unwrap();
    assert_eq!(rev["revoked"], true);
    let human = ok(&run(&["lookup", "alice"], &env));
    assert!(
        human.contains("revoke Alice Bank AG <alice>") && human.contains("logged at       20"),
        "{human}"
    );
    refused(&run(&["revoke", "--key", &key_s], &env), "");

    // The delivery-versus-payment example: a FIX trade, both sides' ISO 20022
    // instructions (the seller's with its sealed Bitcoin transaction), finish, and the
    // settlement summary.
    let ex = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dvp.sh"))
        .env("BLOCKPOST_BIN", blockpost_bin().unwrap())
        .env("BLOCKPOST_ENDPOINT", &endpoint)
        .env("BLOCKPOST_CONFIG_DIR", &state_s)
        .env("WORK", tmp.path().join("dvp"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ex.stdout);
    let err = String::from_utf8_lossy(&ex.stderr);
    assert!(ex.status.success(), "dvp.sh: {out}\n{err}");
    for want in [
        "trade        FIX 4.4 ExecutionReport EXEC-20261204-0001 from Example Exchange Inc <exchange-",
        "instrument   ISIN US0378331005 on XNYS",
        "amount       75700 USD",
        "deliver against payment, 400 US0378331005 from account BANKA-SAFE-001, 75700 USD, \
         settles 2026-12-07; agrees with the trade",
        "carries a bitcoin transaction \
         cc727831f601630baa1fcd61d7a92dcb4a101c5a937d389d8f131d8da017beb2",
        "Bank B Ltd <bank-b-",
        ": finished\n",
    ] {
        assert!(out.contains(want), "dvp.sh lacks {want:?}: {out}");
    }
    // The trade that leaves bank-b out was refused, naming the field.
    assert!(
        out.contains("453[2].448 (PartyID) names the contra firm by LEI 5493000BANKB0LTD0083"),
        "{out}"
    );

    // A client that pinned this log refuses a node that presents another log key.
    node.kill().unwrap();
    node.wait().unwrap();
    blockpost_node::reap_stale(&data.join("nats"));
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut node = spawn_node(&data, port, None);
    wait_ready(&endpoint, &tmp.path().join("fresh-client")).await;
    refused(&run(&["checkpoint"], &env), "refusing to continue");
    node.kill().unwrap();
    node.wait().unwrap();
    // The managed nats-server outlived the SIGKILLed node; the next start would end it.
    blockpost_node::reap_stale(&data.join("nats"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_managed_nats_server_heals_without_a_node_restart() {
    use blockpost_client::Messenger;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut node = spawn_node(&data, port, None);
    let state = tmp.path().join("client");
    let mut c = wait_ready(&endpoint, &state).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    c.register(&a, "alice", "Alice AG", None).await.unwrap();
    c.register(&b, "bob", "Bob Ltd", None).await.unwrap();
    let mut m = Messenger::connect(&endpoint, &state).await.unwrap();
    let to = vec!["bob".to_owned()];
    // The first message goes through (the replica may need a moment to learn alice).
    let mut ok = false;
    for _ in 0..50 {
        if send_text(&mut m, &a, &to, "before").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no message before the kill");

    // kill -9 the managed nats-server, behind the node's back.
    let pid_file = data.join("nats").join("nats-server.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success(),
        "kill {pid}"
    );
    // The node restarts it and its services reconnect: messages and registrations work
    // again, with no restart of the node.
    let mut healed = false;
    for _ in 0..300 {
        if send_text(&mut m, &a, &to, "after").await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "messaging did not heal within 30 s");
    let new_pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(pid, new_pid, "a new nats-server runs");
    let carol = Identity::generate();
    c.register(&carol, "carol", "Carol SA", None).await.unwrap();
    let to_carol = vec!["carol".to_owned()];
    let mut reached = false;
    for _ in 0..100 {
        if send_text(&mut m, &a, &to_carol, "hello carol")
            .await
            .is_ok()
        {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reached,
        "a registration after the restart did not reach the gateway"
    );
    node.kill().unwrap();
    node.wait().unwrap();
    blockpost_node::reap_stale(&data.join("nats"));
}

async fn send_text(
    m: &mut blockpost_client::Messenger,
    from: &Identity,
    to: &[String],
    text: &str,
) -> Result<(), blockpost_client::Error> {
    let out = blockpost_client::Outgoing {
        delivery: None,
        from: "alice",
        to,
        transaction_id: "heal",
        kind: blockpost_proto::v1::MessageKind::Message,
        content_type: "text/plain",
        body: text.as_bytes().to_vec(),
        encrypt: false,
        transaction_deadline_ms: None,
    };
    m.send(from, out).await.map(|_| ())
}

/// `examples/dvp.sh` on its own, as a new user runs it: it starts a node that delivers to a
/// regtest stand-in, and the seller's Bitcoin transaction is recorded as intended,
/// delivered and confirmed once every party finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dvp_example_delivers_and_confirms_with_its_own_node() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dvp.sh"))
        .env("BLOCKPOST_BIN", blockpost_bin().unwrap())
        .env_remove("BLOCKPOST_ENDPOINT")
        .env("BLOCKPOST_CONFIG_DIR", tmp.path().join("client"))
        .env("WORK", tmp.path().join("dvp"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ex.stdout);
    let err = String::from_utf8_lossy(&ex.stderr);
    assert!(ex.status.success(), "dvp.sh: {out}\n{err}");
    const TXID: &str = "cc727831f601630baa1fcd61d7a92dcb4a101c5a937d389d8f131d8da017beb2";
    for stage in ["intent", "delivered"] {
        assert!(
            out.contains(&format!("{stage} bitcoin transaction {TXID}")),
            "no {stage}: {out}"
        );
    }
    assert!(
        out.contains(&format!(
            "confirmed bitcoin transaction {TXID} in its block 101"
        )),
        "{out}"
    );
    assert!(
        out.contains("(broadcast to the stand-in chain: 1 transaction)"),
        "{out}"
    );
    assert!(out.contains(": finished\n"), "{out}");
}

/// kill -9 of the node that delivers, right after it handed the seller's transaction to
/// the broadcast command and before it recorded the outcome: restarted, it finds the
/// intent without an outcome in its ledger, sends the same bytes again (a Bitcoin node
/// takes a known transaction once), and records delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_killed_between_broadcast_and_record_completes_after_restart() {
    use blockpost_client::{Delivery, Ledger, Messenger, Outgoing};
    use blockpost_core::delivery::{Bitcoin, TargetLedger as _};
    use blockpost_proto::v1::{DeliveryStage, MessageKind};
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().to_path_buf();
    let broadcast = w.join("broadcast.sh");
    // The first send kills the node (its parent) the moment the transaction is handed over.
    std::fs::write(
        &broadcast,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {w}/broadcast.txt\n\
             if [ ! -e {w}/killed ]; then touch {w}/killed; kill -9 $PPID; fi\n",
            w = w.display()
        ),
    )
    .unwrap();
    std::fs::write(w.join("block.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    for s in ["broadcast.sh", "block.sh"] {
        Command::new("chmod")
            .arg("+x")
            .arg(w.join(s))
            .status()
            .unwrap();
    }
    let config = w.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[builder]\nmax_block_delay_ms = 100\n\n[builder.delivery]\n\
             broadcast_command = [\"{}\"]\nblock_command = [\"{}\"]\npoll_ms = 100\n",
            broadcast.display(),
            w.join("block.sh").display()
        ),
    )
    .unwrap();
    let data = w.join("node");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let cfg = config.to_str().unwrap().to_owned();
    let mut node = blockpost_tests::spawn_node_with(&data, port, None, &["--config", &cfg]);
    let state = w.join("client");
    let mut c = wait_ready(&endpoint, &state).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    c.register_with_lei(
        &a,
        "bank-a",
        "Bank A AG",
        Some("5299000BANKA0AG00068"),
        None,
    )
    .await
    .unwrap();
    c.register_with_lei(
        &b,
        "bank-b",
        "Bank B Ltd",
        Some("5493000BANKB0LTD0083"),
        None,
    )
    .await
    .unwrap();
    let mut m = Messenger::connect(&endpoint, &state).await.unwrap();
    let deliver = include_str!("../../examples/settlement/instruction-deliver.xml");
    let raw = hex::decode(include_str!("../../examples/settlement/seller-bitcoin-tx.hex").trim())
        .unwrap();
    let txid = Bitcoin.commitment(&raw).unwrap();
    let (to_a, to_b) = (vec!["bank-a".to_owned()], vec!["bank-b".to_owned()]);
    fn out<'a>(from: &'a str, to: &'a [String], kind: MessageKind, body: &str) -> Outgoing<'a> {
        Outgoing {
            from,
            to,
            transaction_id: "dvp-kill",
            kind,
            content_type: "application/xml",
            body: body.as_bytes().to_vec(),
            encrypt: false,
            transaction_deadline_ms: None,
            delivery: None,
        }
    }
    let mut instruction = out("bank-a", &to_b, MessageKind::SettlementInstruction, deliver);
    instruction.delivery = Some(Delivery {
        ledger: &Bitcoin,
        raw: raw.clone(),
    });
    let (env, _) = m.send(&a, instruction).await.unwrap();
    let id = blockpost_core::message_id(&env);
    m.send(&a, out("bank-a", &to_b, MessageKind::Finish, "done"))
        .await
        .unwrap();
    m.send(&b, out("bank-b", &to_a, MessageKind::Finish, "done"))
        .await
        .unwrap();
    // The broadcast kills the node.
    wait_for(Duration::from_secs(60), "the kill in the broadcast", || {
        let done = matches!(node.try_wait(), Ok(Some(_)));
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
    assert!(w.join("killed").exists());
    let sent_once = std::fs::read_to_string(w.join("broadcast.txt")).unwrap();
    assert_eq!(sent_once, format!("{}\n", hex::encode(&raw)));
    // Restarted on the same data: the same bytes again, and the outcome recorded.
    let mut node = blockpost_tests::spawn_node_with(&data, port, None, &["--config", &cfg]);
    let c = wait_ready(&endpoint, &state).await;
    let mut l = Ledger::connect(&c, &state).await.unwrap();
    let records = wait_for(
        Duration::from_secs(60),
        "the delivered record",
        async || {
            let found = blockpost_tests::delivery_records(&mut l).await;
            found
                .iter()
                .any(|d| d.stage == DeliveryStage::Delivered as i32)
                .then_some(found)
        },
    )
    .await
    .unwrap();
    let stages: Vec<i32> = records.iter().map(|d| d.stage).collect();
    assert_eq!(
        stages,
        [
            DeliveryStage::Intent as i32,
            DeliveryStage::Delivered as i32
        ]
    );
    assert!(
        records
            .iter()
            .all(|d| d.message_id == id.to_vec() && d.commitment == txid.to_vec())
    );
    let sent = std::fs::read_to_string(w.join("broadcast.txt")).unwrap();
    assert_eq!(
        sent,
        sent_once.repeat(2),
        "the same transaction, sent again once"
    );
    node.kill().unwrap();
    node.wait().unwrap();
    blockpost_node::reap_stale(&data.join("nats"));
}
