//! The `blockpost` binary refuses bad input before it talks to anyone.

use std::process::{Command, Stdio};

fn blockpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blockpost"))
        .args(args)
        .env_remove("BLOCKPOST_PASSPHRASE")
        .env("BLOCKPOST_ENDPOINT", "http://127.0.0.1:1")
        .stdin(Stdio::null())
        .output()
        .expect("run blockpost")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = blockpost(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_refused_with_a_message() {
    fails_with(&["lookup", "bad.addr"], "invalid address");
    fails_with(&["lookup", "with space"], "invalid address");
    fails_with(&["lookup", "-x"], "");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("k.key");
    let key = key.to_str().expect("utf-8 path");
    fails_with(&["key", "new", "--out", key], "BLOCKPOST_PASSPHRASE");
    assert!(
        !std::path::Path::new(key).exists(),
        "no key file without a passphrase"
    );
    fails_with(
        &["register", "--key", key, "--address", "ok", "--name", "x"],
        "No such file",
    );
    for (name, text) in [("k2.key", "-----BEGIN"), ("k.keyring", "{}")] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        fails_with(
            &[
                "register",
                "--key",
                p.to_str().expect("utf-8 path"),
                "--address",
                "ok",
                "--name",
                "x",
            ],
            "BLOCKPOST_PASSPHRASE",
        );
    }
    fails_with(&["checkpoint"], "cannot reach the node");
    fails_with(&["up", "--listen", "not-an-address"], "is not HOST:PORT");
    fails_with(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn an_auditor_settings_file_is_checked_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8 path").to_owned()
    };
    let unknown = file(
        "unknown.toml",
        "nats = \"nats://127.0.0.1:1\"\nnodes = \"x\"\n",
    );
    fails_with(&["auditor", "--config", &unknown], "unknown field `nodes`");
    let bad = file("bad.toml", "grace_ms = \"soon\"\n");
    fails_with(&["auditor", "--config", &bad], "bad.toml");
    let watch = file(
        "watch.toml",
        "nats = \"nats://127.0.0.1:1\"\nwatch = [\"name:\"]\n",
    );
    fails_with(&["auditor", "--config", &watch], "watch");
    // Without NATS in the file or the flags: said so.
    let empty = file("empty.toml", "");
    fails_with(&["auditor", "--config", &empty], "NATS server is needed");
    fails_with(
        &[
            "auditor",
            "--config",
            &dir.path().join("none.toml").to_string_lossy(),
        ],
        "none.toml",
    );
}

#[test]
fn help_lists_every_command() {
    let out = blockpost(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "up",
        "key",
        "info",
        "register",
        "lookup",
        "rotate",
        "revoke",
        "checkpoint",
    ] {
        assert!(text.contains(cmd), "help lacks {cmd}");
    }
    // The load generators only in a binary built with them.
    assert_eq!(
        text.contains("bench"),
        cfg!(feature = "bench"),
        "bench in help: {text}"
    );
}
