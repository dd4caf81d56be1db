//! Blockpost's test kit: a real `nats-server` per test and an in-process node sandbox.
//!
//! # Layout
//! - [`NatsServer`]: `nats-server` with JetStream on a free port and a temporary store;
//!   `kill()` and `restart()` (same port, same store); killed on drop.
//! - [`Sandbox`]: a whole node in process, started through [`Node`] like `blockpost up`
//!   (directory, gateway, gRPC on an ephemeral port), on a temporary data directory.
//! - [`blockpost_bin`]: the `blockpost` binary for tests across processes.
//! - [`wait_for`]: polls a condition with a deadline instead of sleeping.
//! - [`browser`]: headless Chromium through chromedriver (W3C WebDriver).
//! - [`tamper`]: a gRPC proxy that rewrites one method's answers (a node that lies).
//! - [`register_body`], [`sign_register`]: registration requests as a client signs them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sb = blockpost_tests::Sandbox::start().await?;
//! let mut client = sb.client().await?;
//! assert_eq!(client.checkpoint().await?.size, 0);
//! # Ok(()) }
//! ```

pub mod browser;
pub mod tamper;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use blockpost_client::Client;
use blockpost_core::{Clock, Identity, Operation, SystemClock, now_ms};
use blockpost_directory::Directory;
use blockpost_messaging::Gateway;
use blockpost_node::{LocalNats, NatsAuth, Node, NodeConfig, Serving};
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::{RegisterBody, SignedRequest};
use prost::Message as _;
use tempfile::TempDir;
use tonic::transport::Channel;

/// Logs of the services under test to stderr, when `RUST_LOG` asks for them
/// (`RUST_LOG=blockpost_builder=debug cargo test ...`); once per test process.
pub fn trace() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("RUST_LOG").is_some() {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        });
    }
}

/// A `nats-server` with JetStream on a free loopback port and a temporary store.
pub struct NatsServer {
    inner: LocalNats,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections: users `node` and `reader`, no
    /// anonymous access, as `blockpost up` runs it.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_max_payload(blockpost_node::MANAGED_MAX_PAYLOAD)
    }

    /// [`NatsServer::start`] with another `max_payload` (a bus that carries less).
    pub fn start_with_max_payload(max_payload: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let inner = LocalNats::start_with(&dir.path().join("js"), None, max_payload)?;
        let NatsAuth::UserPassword { user, password } = inner.node_auth() else {
            bail!("the managed server has user and password credentials");
        };
        std::fs::write(
            dir.path().join("node.credentials"),
            format!("{user}:{password}\n"),
        )?;
        Ok(Self { inner, _dir: dir })
    }

    /// A file with the node user's credentials, for `--nats-credentials`.
    pub fn credentials_file(&self) -> PathBuf {
        self._dir.path().join("node.credentials")
    }

    /// The node user's credentials (may publish anything: stands for a compromised or
    /// privileged publisher in tests).
    pub fn node_auth(&self) -> NatsAuth {
        self.inner.node_auth()
    }

    /// The read-only user's credentials.
    pub fn reader_auth(&self) -> NatsAuth {
        self.inner.reader_auth()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Starts again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        Ok(self.inner.restart()?)
    }

    /// A client connected as the node user.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(blockpost_node::connect(&self.url(), Some(&self.inner.node_auth())).await?)
    }
}

/// The `nats-server` binaries the cluster tests run against: Debian's (`nats-server` on
/// PATH, 2.9) and the current release that `scripts/setup-nats --current` puts in
/// `.nats/current/nats-server` (or `BLOCKPOST_NATS_CURRENT`). A missing current release
/// is an error unless `BLOCKPOST_NATS_VERSIONS=system`.
pub fn nats_binaries() -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![PathBuf::from("nats-server")];
    if std::env::var("BLOCKPOST_NATS_VERSIONS").as_deref() == Ok("system") {
        return Ok(out);
    }
    let current = match std::env::var_os("BLOCKPOST_NATS_CURRENT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.nats/current/nats-server"),
    };
    if !current.exists() {
        bail!(
            "{} is missing: run scripts/setup-nats --current (the cluster tests run against \
             Debian's nats-server and a current release), or set BLOCKPOST_NATS_VERSIONS=system",
            current.display()
        );
    }
    out.push(current);
    Ok(out)
}

/// A JetStream cluster of three `nats-server`s on loopback (own ports, own stores,
/// routes to each other), users `node` and `reader` as `blockpost up` runs them. Any one
/// may be killed with SIGKILL, restarted, or restarted with its store lost.
pub struct NatsCluster {
    servers: Vec<LocalNats>,
    bin: PathBuf,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts three servers of `bin` and waits until JetStream has a meta leader.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        // Ports are picked free, then bound by the servers a moment later: a test running
        // beside this one may take one in between. Such a start is tried again on new
        // ports, in a new directory (the servers started so far end when dropped).
        let mut attempt = 0;
        let (dir, servers) = loop {
            attempt += 1;
            let dir = tempfile::tempdir()?;
            let (d, b) = (dir.path().to_owned(), bin.to_owned());
            match tokio::task::spawn_blocking(move || blockpost_node::start_cluster(&d, 3, &b))
                .await?
            {
                Ok(servers) => break (dir, servers),
                Err(e) if attempt < 3 && e.to_string().contains("address already in use") => {
                    eprintln!("a cluster port was taken meanwhile ({e}); starting again");
                }
                Err(e) => return Err(e.into()),
            }
        };
        let NatsAuth::UserPassword { user, password } = servers[0].node_auth() else {
            bail!("the managed server has user and password credentials");
        };
        std::fs::write(
            dir.path().join("node.credentials"),
            format!("{user}:{password}\n"),
        )?;
        let me = Self {
            servers,
            bin: bin.to_owned(),
            dir,
        };
        me.wait_meta_leader(Duration::from_secs(30)).await?;
        Ok(me)
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Every server's URL, comma-separated (the seed list).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(LocalNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A file with the node user's credentials.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.path().join("node.credentials")
    }

    /// The node user's credentials.
    pub fn node_auth(&self) -> NatsAuth {
        self.servers[0].node_auth()
    }

    /// The read-only user's credentials.
    pub fn reader_auth(&self) -> NatsAuth {
        self.servers[0].reader_auth()
    }

    /// A client of the node user, with every server as a seed.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(blockpost_node::connect(&self.urls(), Some(&self.node_auth())).await?)
    }

    /// SIGKILL to server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again on its port and store.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let mut s = std::mem::take(&mut self.servers);
        let r = tokio::task::spawn_blocking(move || {
            let r = s[i].restart();
            (s, r)
        })
        .await?;
        self.servers = r.0;
        Ok(r.1?)
    }

    /// Kills server `i`, deletes its whole JetStream store, and starts it again empty.
    pub async fn lose_store(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let js = self.servers[i].store().join("jetstream");
        if js.exists() {
            std::fs::remove_dir_all(&js)?;
        }
        self.restart(i).await
    }

    /// The index of the server named `name` (`s0`, `s1`, `s2`).
    fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix('s')?.parse().ok()
    }

    /// Which server leads stream `name`, asking until one does.
    pub async fn stream_leader(&self, name: &str, limit: Duration) -> anyhow::Result<usize> {
        let js = async_nats::jetstream::new(self.connect().await?);
        wait_for(limit, &format!("a leader of stream {name}"), || {
            let js = js.clone();
            async move {
                let mut st = js.get_stream(name).await.ok()?;
                let info = st.info().await.ok()?;
                Self::index_of(info.cluster.as_ref()?.leader.as_deref()?)
            }
        })
        .await
    }

    /// Which server is the JetStream meta leader (from a live server's `/jsz`).
    pub async fn meta_leader(&self) -> anyhow::Result<Option<usize>> {
        for s in &self.servers {
            let Some(port) = s.monitor_port() else {
                continue;
            };
            let Ok(body) = http_get(port, "/jsz").await else {
                continue;
            };
            let v: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(l) = v["meta_cluster"]["leader"]
                .as_str()
                .and_then(Self::index_of)
            {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// Waits for a meta leader.
    pub async fn wait_meta_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        wait_for(limit, "a JetStream meta leader", || async {
            self.meta_leader().await.ok().flatten()
        })
        .await
    }
}

/// `GET path` from the monitoring port on loopback: the body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// A whole node in process, on ephemeral ports and a temporary data directory.
pub struct Sandbox {
    /// The node.
    pub node: Arc<Node>,
    /// The node's directory.
    pub directory: Directory,
    /// The node's messaging gateway.
    pub gateway: Gateway,
    /// Its NATS server.
    pub nats: NatsServer,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Where clients made by [`Sandbox::client`] keep their state.
    pub client_dir: PathBuf,
    /// The auditor of [`Sandbox::with_auditor`], if started.
    pub auditor: Option<SandboxAuditor>,
    serving: Serving,
    _tmp: TempDir,
}

/// An auditor of a sandbox's node, served on its own port ([`Sandbox::with_auditor`]).
pub struct SandboxAuditor {
    /// The auditor.
    pub auditor: blockpost_auditor::Auditor,
    /// `http://127.0.0.1:PORT` of its `blockpost.v1.Audit` service.
    pub endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<blockpost_auditor::Result<()>>,
}

impl SandboxAuditor {
    /// Stops serving it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

impl Sandbox {
    /// A sandbox with the test config.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A sandbox whose config `adjust` may change.
    pub async fn start_with(adjust: impl FnOnce(&mut NodeConfig)) -> anyhow::Result<Self> {
        trace();
        let tmp = tempfile::tempdir()?;
        let nats = tokio::task::spawn_blocking(NatsServer::start).await??;
        let mut cfg = NodeConfig::for_test(tmp.path().join("data"), &nats.url());
        adjust(&mut cfg);
        Self::start_on(cfg, nats, tmp).await
    }

    /// A sandbox whose services read time from `clock`.
    pub async fn start_with_clock(
        adjust: impl FnOnce(&mut NodeConfig),
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let nats = tokio::task::spawn_blocking(NatsServer::start).await??;
        let mut cfg = NodeConfig::for_test(tmp.path().join("data"), &nats.url());
        adjust(&mut cfg);
        Self::start_full(cfg, nats, tmp, clock).await
    }

    /// A sandbox on a given config and NATS server (the config's `nats` is set to it).
    pub async fn start_on(cfg: NodeConfig, nats: NatsServer, tmp: TempDir) -> anyhow::Result<Self> {
        Self::start_full(cfg, nats, tmp, Arc::new(SystemClock)).await
    }

    async fn start_full(
        mut cfg: NodeConfig,
        nats: NatsServer,
        tmp: TempDir,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        cfg.nats.url = Some(nats.url());
        cfg.nats_credentials = Some(nats.credentials_file());
        let listen: SocketAddr = cfg.validate()?;
        let data_dir = cfg.data_dir.clone();
        let node = Arc::new(Node::start_with_clock(cfg, clock).await?);
        let directory = node
            .directory()
            .cloned()
            .context("the sandbox runs the directory")?;
        let gateway = node
            .gateway()
            .context("the sandbox needs the gateway enabled")?
            .clone();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let serving = node.serve_in_background(listener)?;
        let endpoint = serving.endpoint();
        let client_dir = tmp.path().join("client");
        Ok(Self {
            node,
            directory,
            gateway,
            nats,
            endpoint,
            data_dir,
            client_dir,
            auditor: None,
            serving,
            _tmp: tmp,
        })
    }

    /// This sandbox with an auditor of its node: read-only NATS credentials, data in the
    /// sandbox's directory (`auditor/`), `config` as [`blockpost_auditor::AuditorConfig`]'s
    /// defaults changed by `adjust`, served through [`blockpost_auditor::serve`] on an
    /// ephemeral port.
    pub async fn with_auditor(
        mut self,
        adjust: impl FnOnce(&mut blockpost_auditor::AuditorConfig),
    ) -> anyhow::Result<Self> {
        let nats =
            blockpost_node::connect(&self.nats.url(), Some(&self.nats.reader_auth())).await?;
        let mut config = blockpost_auditor::AuditorConfig::new(
            self.endpoint.clone(),
            self._tmp.path().join("auditor"),
        );
        adjust(&mut config);
        let auditor = blockpost_auditor::Auditor::start(config, nats).await?;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", grpc.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(blockpost_auditor::serve(
            auditor.clone(),
            blockpost_auditor::Listeners {
                grpc,
                metrics: None,
            },
            async {
                let _ = stopped.await;
            },
        ));
        self.auditor = Some(SandboxAuditor {
            auditor,
            endpoint,
            stop,
            task,
        });
        Ok(self)
    }

    /// A verifying client with this sandbox's client state directory.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.endpoint, &self.client_dir).await?)
    }

    /// A channel to the node, for raw gRPC clients.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.endpoint.clone())?
            .connect()
            .await?)
    }

    /// A raw gRPC client (no verification), for feeding bad input.
    pub async fn grpc(&self) -> anyhow::Result<DirectoryClient<Channel>> {
        Ok(DirectoryClient::new(
            Channel::from_shared(self.endpoint.clone())?
                .connect()
                .await?,
        ))
    }

    /// Stops serving and returns the parts that outlive the node.
    pub async fn stop(self) -> (NatsServer, TempDir) {
        if let Some(a) = self.auditor {
            a.stop().await;
        }
        let _ = self.serving.stop().await;
        (self.nats, self._tmp)
    }

    /// The config the node started from.
    pub fn config(&self) -> &NodeConfig {
        self.node.config()
    }
}

/// `blockpost up` from this build on `127.0.0.1:port` with data in `data` (its stderr
/// appended to `data.log`), on `nats` or on a nats-server it manages itself.
pub fn spawn_node(
    data: &std::path::Path,
    port: u16,
    nats: Option<&NatsServer>,
) -> std::process::Child {
    spawn_node_with(data, port, nats, &[])
}

/// [`spawn_node`] with more arguments to `blockpost up`.
pub fn spawn_node_with(
    data: &std::path::Path,
    port: u16,
    nats: Option<&NatsServer>,
    more: &[&str],
) -> std::process::Child {
    let mut cmd = std::process::Command::new(blockpost_bin().expect("the blockpost binary"));
    cmd.args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(more);
    if let Some(n) = nats {
        cmd.args(["--nats", &n.url(), "--nats-credentials"])
            .arg(n.credentials_file());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .expect("the node's log file");
    cmd.stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("blockpost up starts")
}

/// `blockpost auditor` from this build, for the node at `node`, on the NATS server at
/// `nats` with the credentials in `credentials`, its files in `data`, serving
/// `blockpost.v1.Audit` on `127.0.0.1:port` (its stderr appended to `data.log`).
pub fn spawn_auditor(
    node: &str,
    nats: &str,
    credentials: &std::path::Path,
    data: &std::path::Path,
    port: u16,
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .expect("the auditor's log file");
    std::process::Command::new(blockpost_bin().expect("the blockpost binary"))
        .args([
            "auditor",
            "--node",
            node,
            "--nats",
            nats,
            "--nats-credentials",
        ])
        .arg(credentials)
        .arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("blockpost auditor starts")
}

/// The `blockpost` binary of this build.
///
/// `cargo test --workspace` builds it before any test runs (the cli crate has integration
/// tests). When it is missing, or older than the sources (say after `cargo test -p
/// blockpost-tests` alone), it is built here once per test process.
pub fn blockpost_bin() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_bin().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/blockpost
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let bin = profile_dir.join("blockpost");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = [
        "auditor",
        "builder",
        "cli",
        "client",
        "core",
        "directory",
        "messaging",
        "node",
        "proto",
        "storage",
    ]
    .iter()
    .filter_map(|c| newest(&workspace.join(c)))
    .max();
    if built.is_some() && built >= sources {
        return Ok(bin);
    }
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "blockpost-cli",
        "--bin",
        "blockpost",
    ])
    .current_dir(workspace);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    if !cmd.status()?.success() {
        bail!("building the blockpost binary failed");
    }
    Ok(bin)
}

/// Newest modification time of the files below `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut best = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        best = best.max(t);
    }
    best
}

/// A registration body binding `address` and `name` to `id`'s keys, stamped now.
pub fn register_body(id: &Identity, address: &str, name: &str) -> RegisterBody {
    RegisterBody {
        address: address.into(),
        real_name: name.into(),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: vec![],
        timestamp_ms: now_ms(),
        lei: String::new(),
    }
}

/// `body` signed by `id` as a registration (proof of possession).
pub fn sign_register(id: &Identity, body: &RegisterBody) -> SignedRequest {
    sign_register_bytes(id, body.encode_to_vec())
}

/// Any bytes signed by `id` as a registration body, for tests that send what no honest
/// client would.
pub fn sign_register_bytes(id: &Identity, body: Vec<u8>) -> SignedRequest {
    SignedRequest {
        signature: Operation::Register.sign(&id.signing, &body),
        body,
        second_signature: vec![],
    }
}

/// Polls `f` until it returns `Some` or `limit` passes. `f` may be an async closure that
/// borrows what it polls mutably (a ledger client, say).
pub async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The machine-readable reason of a node's error status (`google.rpc.ErrorInfo`), or
/// `"(none)"`: tests match on it, not on the message.
pub fn reason(status: &tonic::Status) -> String {
    blockpost_proto::status::reason(status).unwrap_or_else(|| "(none)".to_owned())
}

/// An ed25519 signature by `key` over `message` whose `R` carries an order-2 point: what
/// only the key's owner can make (it needs the secret scalar), and what the strict check
/// and Go's `ed25519.Verify` refuse, while batch verification takes it half the time.
/// Written out by hand, as an attacker would.
pub fn torsioned_signature(key: &ed25519_dalek::SigningKey, message: &[u8]) -> Vec<u8> {
    use curve25519_dalek::{EdwardsPoint, Scalar, constants::EIGHT_TORSION};
    use sha2::{Digest as _, Sha512};
    let h = Sha512::digest(key.to_bytes());
    let mut a: [u8; 32] = h[..32].try_into().expect("32 bytes");
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let a = Scalar::from_bytes_mod_order(a);
    let public = EdwardsPoint::mul_base(&a).compress();
    assert_eq!(public.to_bytes(), key.verifying_key().to_bytes());
    let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(message).into());
    let big_r = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[4]).compress();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(big_r.as_bytes())
            .chain_update(public.as_bytes())
            .chain_update(message)
            .finalize()
            .into(),
    );
    [big_r.to_bytes(), (r + k * a).to_bytes()].concat()
}

/// A regtest Bitcoin block at `height` after `prev`: a coinbase (BIP 34 height) paying
/// `pay_to`, then `txs`, its Merkle root and proof of work (nBits 0x207fffff) done, as
/// `block_command` would print it.
pub fn mine_bitcoin_block(
    prev: bitcoin::BlockHash,
    height: i64,
    pay_to: &bitcoin::ScriptBuf,
    txs: Vec<bitcoin::Transaction>,
) -> bitcoin::Block {
    use bitcoin::hashes::Hash as _;
    use bitcoin::{
        Amount, OutPoint, Sequence, Transaction, TxIn, TxOut, Witness, absolute, block, transaction,
    };
    let push = bitcoin::script::Builder::new();
    let push = if height <= 16 {
        push.push_int(height)
    } else {
        push.push_slice(
            <&bitcoin::script::PushBytes>::try_from(&[height as u8][..])
                .expect("one byte is a push"),
        )
    };
    let coinbase = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: push.into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(50 * 100_000_000),
            script_pubkey: pay_to.clone(),
        }],
    };
    let mut txdata = vec![coinbase];
    txdata.extend(txs);
    let mut b = bitcoin::Block {
        header: block::Header {
            version: block::Version::from_consensus(0x2000_0000),
            prev_blockhash: prev,
            merkle_root: bitcoin::TxMerkleNode::all_zeros(),
            time: 1_764_000_000 + height as u32,
            bits: bitcoin::CompactTarget::from_consensus(0x207f_ffff),
            nonce: 0,
        },
        txdata,
    };
    b.header.merkle_root = b.compute_merkle_root().expect("a block with transactions");
    while b.header.validate_pow(b.header.target()).is_err() {
        b.header.nonce += 1;
    }
    b
}

/// Every delivery record in the ledger, in order, read from the blocks `l` verifies (none
/// while the ledger is empty).
pub async fn delivery_records(
    l: &mut blockpost_client::Ledger,
) -> Vec<blockpost_proto::v1::DeliveryRecord> {
    use blockpost_core::block::Leaf;
    use blockpost_proto::v1::ledger_record::Record;
    let Ok(latest) = l.block(None).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in 0..=latest.block.header.header.height {
        let Ok(b) = l.block(Some(h)).await else {
            return Vec::new();
        };
        for k in &b.block.kinds {
            if let Leaf::Record(r) = k
                && let Some(Record::Delivery(d)) = &r.record
            {
                out.push(d.clone());
            }
        }
    }
    out
}

/// The `blockpost` binary of this build as a user runs it: in a working directory, with
/// an environment (endpoint, config directory, passphrase).
pub struct Cli {
    /// Environment variables of every run.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub dir: std::path::PathBuf,
}

impl Cli {
    /// Against the node at `endpoint`, its client state in `dir/cfg`, passphrase `s3cret`.
    pub fn new(endpoint: &str, dir: &std::path::Path) -> Self {
        Self {
            env: vec![
                ("BLOCKPOST_ENDPOINT".into(), endpoint.to_owned()),
                (
                    "BLOCKPOST_CONFIG_DIR".into(),
                    dir.join("cfg").display().to_string(),
                ),
                ("BLOCKPOST_PASSPHRASE".into(), "s3cret".into()),
            ],
            dir: dir.to_owned(),
        }
    }

    /// Runs it with `more_env` on top.
    pub fn run(&self, args: &[&str], more_env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = std::process::Command::new(blockpost_bin().expect("the blockpost binary"));
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in more_env {
            cmd.env(k, v);
        }
        cmd.output().expect("blockpost runs")
    }

    /// Succeeds; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, &[]);
        assert!(
            o.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("UTF-8 output")
    }

    /// Succeeds with `--json`; its output parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// Fails, without a panic, with one `error:` line holding every one of `needles`;
    /// its stderr.
    pub fn refused(&self, args: &[&str], more_env: &[(&str, &str)], needles: &[&str]) -> String {
        let o = self.run(args, more_env);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{args:?} succeeded: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        for n in needles {
            assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
        }
        err
    }
}
