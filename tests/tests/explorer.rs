//! The web explorer in a real browser (headless Chromium through chromedriver, JavaScript
//! off): the settlement example against a node with an auditor, then the home page, a
//! block, the transaction's timeline, a participant, a search and its hit, the directory
//! log and the alerts, as a person would follow the links. Bad input gets 400 and 404
//! pages; a node that lies about a block gets a "verification failed" page instead of the
//! block; a node that is away leaves the pages seen before readable under a banner.
//! Screenshots of every page kind go to `target/screenshots` (or `$BLOCKPOST_SCREENSHOTS`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use blockpost_tests::browser::{Browser, Session, http_get};
use blockpost_tests::tamper::TamperProxy;
use blockpost_tests::{NatsServer, blockpost_bin, spawn_auditor, spawn_node_with, wait_for};
use prost::Message as _;

/// A child process killed when the test ends, passed or not.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shots() -> PathBuf {
    std::env::var_os("BLOCKPOST_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"))
}

fn query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn json(url: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(url).await.unwrap();
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{url}: {}", String::from_utf8_lossy(&body))),
    )
}

/// Waits until the page at `url` has an element matching `css` (the page is served; the
/// browser has loaded it).
async fn open(s: &Session, url: &str, css: &str) {
    s.goto(url).await.unwrap();
    if let Err(e) = wait_for(Duration::from_secs(20), css, async || {
        s.find(css).await.ok()
    })
    .await
    {
        let page = s.source().await.unwrap_or_default();
        panic!("{url}: {e}\n{page}");
    }
}

/// Clicks `link` and waits until the page it leads to has an element matching `css`.
async fn follow(s: &Session, link: &blockpost_tests::browser::Element, css: &str) {
    s.click(link).await.unwrap();
    if let Err(e) = wait_for(Duration::from_secs(20), css, async || {
        s.find(css).await.ok()
    })
    .await
    {
        let page = s.source().await.unwrap_or_default();
        panic!("after a click: {e}\n{page}");
    }
}

async fn body_text(s: &Session) -> String {
    s.text_of("body").await.unwrap()
}

#[test]
fn the_explorer_shows_the_settlement_example_in_a_real_browser() {
    // The walk is one large future: debug builds need more than a test thread's stack.
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(walk());
        })
        .unwrap()
        .join()
        .unwrap();
}

async fn walk() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().unwrap();
    let data = tmp.path().join("node");
    let port = blockpost_node::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    // The node asks the auditor to cosign (a witness) and serves the explorer itself too.
    let audit_port = blockpost_node::free_port().unwrap();
    let audit_endpoint = format!("http://127.0.0.1:{audit_port}");
    let node_web_port = blockpost_node::free_port().unwrap();
    let node_web = format!("http://127.0.0.1:{node_web_port}");
    let mut node = Kill(spawn_node_with(
        &data,
        port,
        Some(&nats),
        &[
            "--witness",
            &audit_endpoint,
            "--web",
            &format!("127.0.0.1:{node_web_port}"),
        ],
    ));
    let probe = tmp.path().join("probe");
    wait_for(Duration::from_secs(60), "the node", async || {
        blockpost_client::Client::connect(&endpoint, &probe)
            .await
            .ok()
    })
    .await
    .unwrap();
    let blockpost_node::NatsAuth::UserPassword { user, password } = nats.reader_auth() else {
        panic!("the test server has a read-only user");
    };
    let reader = tmp.path().join("reader.creds");
    std::fs::write(&reader, format!("{user}:{password}")).unwrap();
    let _auditor = Kill(spawn_auditor(
        &endpoint,
        &nats.url(),
        &reader,
        &tmp.path().join("auditor"),
        audit_port,
    ));

    // The settlement example, as the README runs it.
    let ex = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/settlement.sh"))
        .env("BLOCKPOST_BIN", blockpost_bin().unwrap())
        .env("BLOCKPOST_ENDPOINT", &endpoint)
        .env("BLOCKPOST_CONFIG_DIR", tmp.path().join("cli"))
        .env("WORK", tmp.path().join("example"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ex.stdout).into_owned();
    assert!(
        ex.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    let tx = out
        .lines()
        .find_map(|l| l.strip_prefix("transaction ")?.strip_suffix(": finished"))
        .unwrap_or_else(|| panic!("no finished transaction in {out}"))
        .to_owned();

    // The explorer, as a user starts it.
    let web_port = blockpost_node::free_port().unwrap();
    let web = format!("http://127.0.0.1:{web_port}");
    let log = std::fs::File::create(tmp.path().join("explorer.log")).unwrap();
    let _explorer = Kill(
        Command::new(blockpost_bin().unwrap())
            .args([
                "explorer",
                "--node",
                &endpoint,
                "--auditor",
                &audit_endpoint,
            ])
            .args(["--listen", &format!("127.0.0.1:{web_port}")])
            .env("BLOCKPOST_CONFIG_DIR", tmp.path().join("explorer-state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Until the auditor has indexed the five messages (the explorer's JSON twin of the
    // search page says so, each hit verified).
    let tx_query = format!(
        "{web}/search?format=json&q={}",
        query(&format!("transaction_id:\"{tx}\""))
    );
    let hits = wait_for(Duration::from_secs(60), "the auditor's index", async || {
        let (status, body) = http_get(&tx_query).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let hits = v["data"]["hits"].as_array()?.clone();
        (status == 200 && hits.len() == 5).then_some(hits)
    })
    .await
    .unwrap();
    assert!(hits.iter().all(|h| h["unverified"].is_null()), "{hits:?}");
    let (_, txj) = json(&format!("{web}/tx/{tx}?format=json")).await;
    let closing_height = txj["data"]["closing"]["height"].as_u64().unwrap();

    // The auditor cosigns the directory's checkpoint; the home page verifies that
    // cosignature with the auditor's witness key.
    let home_json = format!("{web}/?format=json");
    wait_for(
        Duration::from_secs(60),
        "a witnessed directory checkpoint",
        async || {
            let (_, body) = http_get(&home_json).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            let c = v["data"]["directory"]["cosignatures"]
                .as_array()?
                .first()?
                .clone();
            (c["verified"] == true && c["time_ms"].as_i64()? > 0).then_some(())
        },
    )
    .await
    .unwrap();
    // The node's own explorer (`up --web`) shows the same transaction.
    let (status, body) = http_get(&format!("{node_web}/tx/{tx}?format=json"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"]["status"], "finished");
    assert_eq!(v["data"]["messages"].as_array().unwrap().len(), 5);

    let browser = Browser::start().await.unwrap();
    let s = browser.session(false, 1280, 1400).await.unwrap();
    let dir = shots();

    // Home: both checkpoints verified, the newest blocks, the auditor current.
    open(&s, &format!("{web}/"), "table#blocks").await;
    assert_eq!(s.title().await.unwrap(), "Blockpost explorer · Blockpost");
    let home = body_text(&s).await;
    assert!(
        home.contains("Directory checkpoint") && home.contains("Ledger checkpoint"),
        "{home}"
    );
    assert!(home.contains("✓ verified"), "{home}");
    assert!(
        home.contains(" cosigned "),
        "a witness cosignature with its time: {home}"
    );
    assert!(
        home.contains("blocks verified"),
        "the auditor's status: {home}"
    );
    let rows = s.find_all("table#blocks tr").await.unwrap();
    assert_eq!(
        rows.len() as u64,
        closing_height + 2,
        "a header row and one per block: {home}"
    );
    assert!(
        !s.source().await.unwrap().contains("<script"),
        "no JavaScript at all"
    );
    s.screenshot(&dir.join("home.png")).await.unwrap();

    // The block that closed the transaction, from the home page's link.
    let link = s
        .find(&format!("table#blocks a[href='/block/{closing_height}']"))
        .await
        .unwrap();
    follow(&s, &link, "table#leaves").await;
    assert!(
        s.url()
            .await
            .unwrap()
            .ends_with(&format!("/block/{closing_height}"))
    );
    let block = body_text(&s).await;
    assert!(
        block.contains(&format!("Block {closing_height}")),
        "{block}"
    );
    assert!(
        block.contains("builder signature") && block.contains("✓ verified"),
        "{block}"
    );
    let closing_row = s.text_of("tr[data-kind=closing]").await.unwrap();
    assert!(
        closing_row.contains("finished over 5 messages") && closing_row.contains(&tx),
        "{closing_row}"
    );
    s.screenshot(&dir.join("block.png")).await.unwrap();

    // Its transaction, as a timeline.
    let link = s.find("tr[data-kind=closing] a").await.unwrap();
    follow(&s, &link, "ol.timeline").await;
    assert_eq!(s.text_of("#tx-status").await.unwrap(), "finished");
    let parties = s.text_of("#parties").await.unwrap();
    assert!(
        parties.contains("Bank A AG") && parties.contains("Bank B Ltd"),
        "{parties}"
    );
    let items = s.find_all("ol.timeline li").await.unwrap();
    assert_eq!(items.len(), 6, "five messages and the closing");
    let timeline = s.text_of("ol.timeline").await.unwrap();
    assert!(
        timeline.contains("I have Y dollars to trade for X stock in Megacorp."),
        "{timeline}"
    );
    assert_eq!(
        timeline.matches("sealed end to end").count(),
        3,
        "{timeline}"
    );
    assert!(
        !timeline.contains("OK. I transferred."),
        "sealed bodies stay sealed: {timeline}"
    );
    assert!(
        timeline.contains("closed: finished") && timeline.contains("finished by Bank A AG"),
        "{timeline}"
    );
    s.screenshot(&dir.join("transaction.png")).await.unwrap();
    // The evidence button downloads a bundle that `blockpost verify` accepts offline.
    let button = s.find("a.button[download]").await.unwrap();
    let href = s.attribute(&button, "href").await.unwrap().unwrap();
    let (status, zip) = http_get(&format!("{web}{href}")).await.unwrap();
    assert_eq!(status, 200);
    let bundle = tmp.path().join("tx.bpe");
    std::fs::write(&bundle, zip).unwrap();
    let v = Command::new(blockpost_bin().unwrap())
        .arg("verify")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // A participant, crt.sh-like.
    let link = s.find("#parties a").await.unwrap();
    follow(&s, &link, "table#history").await;
    assert_eq!(s.text_of("#real-name").await.unwrap(), "Bank A AG");
    assert!(
        s.text_of("#name-verified")
            .await
            .unwrap()
            .contains("not verified")
    );
    let history = s.text_of("table#history").await.unwrap();
    assert!(
        history.contains("register") && history.contains("certificate"),
        "{history}"
    );
    assert!(
        s.find("table#history a[href$='certificate.pem']")
            .await
            .is_ok()
    );
    let txs = s.text_of("table#transactions").await.unwrap();
    assert!(txs.contains(&tx), "{txs}");
    s.screenshot(&dir.join("participant.png")).await.unwrap();

    // Search, from the box in the header, and a hit's message.
    let input = s.find("header form input[name=q]").await.unwrap();
    s.type_into(&input, "Megacorp\u{E007}").await.unwrap();
    wait_for(Duration::from_secs(20), "the search results", async || {
        s.find("table#hits").await.ok()
    })
    .await
    .unwrap();
    let hits_text = s.text_of("table#hits").await.unwrap();
    assert_eq!(
        s.find_all("table#hits tr").await.unwrap().len(),
        2,
        "{hits_text}"
    );
    assert!(
        hits_text.contains("Bank A AG") && hits_text.contains("✓ verified"),
        "{hits_text}"
    );
    s.screenshot(&dir.join("search.png")).await.unwrap();
    let link = s.find("table#hits a[href^='/message/']").await.unwrap();
    follow(&s, &link, "div.body").await;
    let msg = body_text(&s).await;
    assert!(
        msg.contains("Megacorp") && msg.contains("Bank B Ltd"),
        "{msg}"
    );
    s.screenshot(&dir.join("message.png")).await.unwrap();

    // The directory log and the alerts.
    open(&s, &format!("{web}/directory"), "table#entries").await;
    assert_eq!(
        s.find_all("table#entries tr").await.unwrap().len(),
        3,
        "two entries"
    );
    s.screenshot(&dir.join("directory.png")).await.unwrap();
    open(&s, &format!("{web}/alerts"), "#no-alerts").await;

    // Someone with write access to NATS publishes block 0 again, one byte changed: the
    // auditor raises an alert, and the alerts page links it to the block it names.
    let js = async_nats::jetstream::new(nats.connect().await.unwrap());
    let names: Vec<String> = futures::TryStreamExt::try_collect(js.stream_names())
        .await
        .unwrap();
    let blocks = names.iter().find(|n| n.ends_with("_BLOCKS")).unwrap();
    let mut stream = js.get_stream(blocks).await.unwrap();
    let subject = stream.info().await.unwrap().config.subjects[0].clone();
    let first = stream.get_raw_message(1).await.unwrap();
    let mut tampered = first.payload.to_vec();
    let at = tampered.len() - 70;
    tampered[at] ^= 1;
    js.publish(subject, tampered.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let alerts_json = format!("{web}/alerts?format=json");
    let alert = wait_for(Duration::from_secs(60), "the auditor's alert", async || {
        let (_, body) = http_get(&alerts_json).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["data"]["alerts"].as_array()?.first().cloned()
    })
    .await
    .unwrap();
    assert_eq!(alert["link"], "/block/0", "{alert}");
    open(&s, &format!("{web}/alerts"), "div.alert").await;
    let shown = s.text_of("div.alert").await.unwrap();
    assert!(shown.contains(alert["kind"].as_str().unwrap()), "{shown}");
    s.screenshot(&dir.join("alerts.png")).await.unwrap();
    let link = s.find("div.alert a[href='/block/0']").await.unwrap();
    follow(&s, &link, "table#leaves").await;
    assert!(
        body_text(&s).await.contains("Block 0"),
        "the node's own block 0, verified"
    );

    // Bad input: proper pages and statuses, never a 500.
    for (path, status, title) in [
        ("/block/99999".to_owned(), 404, "Not found"),
        ("/block/abc".to_owned(), 400, "Bad request"),
        ("/message/xyz".to_owned(), 400, "Bad request"),
        (format!("/message/{}", "0".repeat(64)), 404, "Not found"),
        ("/tx/no%20such".to_owned(), 400, "Bad request"),
        ("/participant/nobody-here".to_owned(), 404, "Not found"),
        (
            format!("/search?q={}", query("sender:(")),
            400,
            "Bad request",
        ),
        ("/directory?from=x".to_owned(), 400, "Bad request"),
        ("/block/0?from=-1".to_owned(), 400, "Bad request"),
        ("/block/0?format=xml".to_owned(), 400, "Bad request"),
        ("/no/such/page".to_owned(), 404, "Not found"),
    ] {
        let (got, body) = http_get(&format!("{web}{path}")).await.unwrap();
        assert_eq!(got, status, "{path}: {}", String::from_utf8_lossy(&body));
        open(&s, &format!("{web}{path}"), "h1").await;
        assert_eq!(s.text_of("h1").await.unwrap(), title, "{path}");
    }
    s.screenshot(&dir.join("bad-request.png")).await.unwrap();

    // A node that lies about blocks: the page shows the failure, not the block. Other
    // answers still verify and show.
    let proxy = TamperProxy::start(&endpoint, "/blockpost.v1.Ledger/GetBlock", |m| {
        let mut r = blockpost_proto::v1::BlockResponse::decode(m.as_slice()).unwrap();
        if let Some(leaf) = r.block.as_mut().and_then(|b| b.leaves.first_mut()) {
            let last = leaf.len() - 1;
            leaf[last] ^= 1;
        }
        *m = r.encode_to_vec();
    })
    .await
    .unwrap();
    let lied_port = blockpost_node::free_port().unwrap();
    let lied = format!("http://127.0.0.1:{lied_port}");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", lied_port))
        .await
        .unwrap();
    let config =
        blockpost_explorer::Config::new(&proxy.endpoint, None, tmp.path().join("lied-state"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(blockpost_explorer::run(listener, config, async {
        let _ = stopped.await;
    }));
    let (status, body) = http_get(&format!("{lied}/block/{closing_height}"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    open(&s, &format!("{lied}/block/{closing_height}"), "h1").await;
    assert_eq!(s.text_of("h1").await.unwrap(), "Verification failed");
    let failure = s.text_of("[data-failure]").await.unwrap();
    assert!(
        failure.contains(&format!("block {closing_height} does not verify")),
        "{failure}"
    );
    assert!(
        s.find("table#leaves").await.is_err(),
        "the block is not shown"
    );
    s.screenshot(&dir.join("tampered.png")).await.unwrap();
    open(&s, &format!("{lied}/tx/{tx}"), "#tx-status").await;
    assert_eq!(s.text_of("#tx-status").await.unwrap(), "finished");
    let _ = stop.send(());
    served.await.unwrap().unwrap();

    // The node goes away: pages seen before stay readable, marked; others get a 503 page.
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    open(&s, &format!("{web}/tx/{tx}"), "[data-stale]").await;
    assert!(s.find("[data-away=node]").await.is_ok());
    assert_eq!(s.text_of("#tx-status").await.unwrap(), "finished");
    s.screenshot(&dir.join("node-away.png")).await.unwrap();
    let (status, _) = http_get(&format!("{web}/directory?from=1")).await.unwrap();
    assert_eq!(
        status, 503,
        "a page not seen before, while the node is away"
    );

    s.close().await.unwrap();
}
