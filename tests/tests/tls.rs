//! TLS off loopback: a node listening anywhere but loopback speaks TLS with a certificate
//! its CA issued (or the operator's); clients verify it against a CA or pin its key on
//! first contact, and refuse a node that later presents another key.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use blockpost_client::{Client, ConnectOptions, Error};
use blockpost_node::TlsMode;
use blockpost_tests::{Sandbox, blockpost_bin};

fn opts(ca: Option<&Path>, pin: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        tls_ca: ca.map(Path::to_path_buf),
        tls_pin: pin.map(str::to_owned),
        ..Default::default()
    }
}

// Multi-threaded: openssl and the CLI run as blocking child processes while the node in
// this process answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_node_speaks_tls_and_clients_pin_its_key() {
    let sb = Sandbox::start_with(|c| c.listen = "0.0.0.0:0".into())
        .await
        .unwrap();
    let tls = sb.node.tls().expect("TLS is on off loopback").clone();
    assert!(tls.self_issued);
    assert!(
        sb.endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        sb.endpoint
    );
    let port = sb.endpoint.rsplit(':').next().unwrap().to_owned();
    let ca = sb.data_dir.join("keys/ca.pem");
    let chain = std::fs::read(sb.data_dir.join("keys/tls.pem")).unwrap();
    assert_eq!(blockpost_node::certificate_pin(&chain).unwrap(), tls.pin);

    // Plaintext to a TLS port fails, and says what to do.
    let plain = Client::connect(&format!("http://127.0.0.1:{port}"), &sb.client_dir).await;
    match plain {
        Err(e @ Error::Unreachable { .. }) => assert!(e.to_string().contains("https://"), "{e}"),
        Err(e) => panic!("plaintext to a TLS port: {e}"),
        Ok(_) => panic!("plaintext to a TLS port connected"),
    }

    // First contact pins the key; later contacts check it.
    let mut c = sb.client().await.unwrap();
    assert_eq!(c.checkpoint().await.unwrap().size, 0);
    let pins: Vec<_> = std::fs::read_dir(sb.client_dir.join("tls"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(std::fs::read_to_string(&pins[0]).unwrap().trim(), tls.pin);
    sb.client().await.unwrap().checkpoint().await.unwrap();

    // A pin given up front is required from the first contact on, and kept for later
    // contacts without it.
    let fresh = tempfile::tempdir().unwrap();
    Client::connect_with(&sb.endpoint, fresh.path(), &opts(None, Some(&tls.pin)))
        .await
        .unwrap();
    let kept = fresh.path().join(format!("tls/127.0.0.1_{port}.pin"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap().trim(), tls.pin);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    match Client::connect_with(&sb.endpoint, fresh.path(), &opts(None, Some(&wrong))).await {
        Err(Error::PinnedTlsKeyChanged {
            presented, pinned, ..
        }) => {
            assert_eq!(presented, tls.pin);
            assert_eq!(pinned, wrong);
        }
        Err(e) => panic!("wrong pin: {e}"),
        Ok(_) => panic!("a wrong pin connected"),
    }

    // TLS options that cannot apply are refused, not ignored.
    let plain_with_pin = Client::connect_with(
        &format!("http://127.0.0.1:{port}"),
        fresh.path(),
        &opts(None, Some(&tls.pin)),
    )
    .await;
    assert!(
        matches!(&plain_with_pin, Err(Error::BadEndpoint { why, .. }) if why.contains("https://")),
        "{:?}",
        plain_with_pin.err()
    );
    let both =
        Client::connect_with(&sb.endpoint, fresh.path(), &opts(Some(&ca), Some(&tls.pin))).await;
    assert!(
        matches!(&both, Err(Error::BadEndpoint { why, .. }) if why.contains("not both")),
        "{:?}",
        both.err()
    );

    // Against the node's CA, the chain and the name are verified (WebPKI), by name too.
    Client::connect_with(&sb.endpoint, fresh.path(), &opts(Some(&ca), None))
        .await
        .unwrap()
        .checkpoint()
        .await
        .unwrap();
    Client::connect_with(
        &format!("https://localhost:{port}"),
        fresh.path(),
        &opts(Some(&ca), None),
    )
    .await
    .unwrap();
    // ... and a certificate from another CA is refused.
    let other = fresh.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    match Client::connect_with(&sb.endpoint, fresh.path(), &opts(Some(&other), None)).await {
        Err(e @ Error::Unreachable { .. }) => {
            assert!(e.to_string().contains("UnknownIssuer"), "{e}")
        }
        Err(e) => panic!("other CA: {e}"),
        Ok(_) => panic!("a certificate from another CA was accepted"),
    }

    // An independent TLS stack verifies the chain against the CA and the IP address.
    if Command::new("openssl").arg("version").output().is_ok() {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args([
                "-verify_return_error",
                "-verify_ip",
                "127.0.0.1",
                "-alpn",
                "h2",
            ])
            .arg("-CAfile")
            .arg(&ca)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Verify return code: 0 (ok)"),
            "openssl s_client: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("ALPN protocol: h2"), "{text}");
    }

    // The CLI: https with the pin recorded on first contact; plaintext refused with a hint.
    let bin = blockpost_bin().unwrap();
    let cli_state = fresh.path().join("cli");
    let run = |endpoint: &str, extra: &[&str]| {
        Command::new(&bin)
            .args(["info", "--json", "--endpoint", endpoint])
            .args(extra)
            .env("BLOCKPOST_CONFIG_DIR", &cli_state)
            .output()
            .unwrap()
    };
    let ok = run(&sb.endpoint, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(run(&sb.endpoint, &[]).status.success());
    let bad = run(&sb.endpoint, &["--tls-pin", &wrong]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("now presents TLS key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let plain = run(&format!("http://127.0.0.1:{port}"), &[]);
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("use https://"));

    // The node keeps its TLS key across restarts: the pin holds after a reissue. Another
    // node on the same address (another key) is refused by the pinned client.
    let cfg = sb.config().clone();
    drop(c);
    let (nats, tmp) = sb.stop().await;
    let mut again = cfg.clone();
    again.listen = format!("0.0.0.0:{port}");
    let sb = Sandbox::start_on(again.clone(), nats, tmp).await.unwrap();
    assert_eq!(sb.node.tls().unwrap().pin, tls.pin);
    sb.client().await.unwrap().checkpoint().await.unwrap();
    let client_dir = sb.client_dir.clone();
    let (nats, tmp) = sb.stop().await;
    let mut impostor = again;
    impostor.data_dir = tmp.path().join("impostor");
    let sb = Sandbox::start_on(impostor, nats, tmp).await.unwrap();
    assert_ne!(sb.node.tls().unwrap().pin, tls.pin);
    match Client::connect(&sb.endpoint, &client_dir).await {
        Err(Error::PinnedTlsKeyChanged {
            presented, pinned, ..
        }) => {
            assert_eq!(pinned, tls.pin);
            assert_eq!(presented, sb.node.tls().unwrap().pin);
        }
        Err(e) => panic!("another node's key: {e}"),
        Ok(_) => panic!("another node's key was accepted"),
    }
    sb.stop().await;
}

#[tokio::test]
async fn an_operator_certificate_is_served_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Operator CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "node.test".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.path().join("tls.pem"),
        dir.path().join("tls.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let sb = Sandbox::start_with(|c| {
        c.tls.mode = TlsMode::On;
        c.tls.cert = Some(cert_path.clone());
        c.tls.key = Some(key_path.clone());
    })
    .await
    .unwrap();
    let tls = sb.node.tls().unwrap();
    assert!(!tls.self_issued);
    assert!(sb.endpoint.starts_with("https://"), "{}", sb.endpoint);
    assert!(!sb.data_dir.join("keys/tls.pem").exists());
    let mut c = Client::connect_with(&sb.endpoint, &sb.client_dir, &opts(Some(&ca_path), None))
        .await
        .unwrap();
    c.checkpoint().await.unwrap();
    // Pinning works with any certificate: the pin is its key.
    let mut c = sb.client().await.unwrap();
    c.checkpoint().await.unwrap();
    sb.stop().await;

    // A key that does not match the certificate is a config error at start.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key_path, other.serialize_pem()).unwrap();
    let e = Sandbox::start_with(|c| {
        c.tls.mode = TlsMode::On;
        c.tls.cert = Some(cert_path.clone());
        c.tls.key = Some(key_path.clone());
    })
    .await
    .err()
    .expect("a mismatched key must not start");
    assert!(format!("{e:#}").contains("tls"), "{e:#}");
}

#[tokio::test]
async fn https_to_a_plaintext_port_says_so() {
    let sb = Sandbox::start().await.unwrap();
    assert!(sb.node.tls().is_none());
    let tls_endpoint = sb.endpoint.replace("http://", "https://");
    match Client::connect(&tls_endpoint, &sb.client_dir).await {
        Err(e @ Error::Unreachable { .. }) => {
            assert!(e.to_string().contains("speaks http://"), "{e}")
        }
        Err(e) => panic!("https to plaintext: {e}"),
        Ok(_) => panic!("https to a plaintext port connected"),
    }
    // Nothing was pinned for a node that proved no key.
    assert!(!sb.client_dir.join("tls").exists());
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused() {
    let e = Sandbox::start_with(|c| {
        c.listen = "0.0.0.0:0".into();
        c.tls.mode = TlsMode::Off;
    })
    .await
    .err()
    .expect("plaintext off loopback must not start");
    assert!(
        format!("{e:#}").contains("only on a loopback address"),
        "{e:#}"
    );
}
