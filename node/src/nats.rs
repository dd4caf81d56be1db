//! A `nats-server` child process with JetStream on a private store: what `blockpost up`
//! runs when no `--nats` URL is given, and what the test kit starts for each test.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockpost_core::wire::Namespace;

use crate::auth::{ManagedCredentials, NatsAuth, ServerOptions};
use crate::{Error, Result};

/// A running `nats-server`, killed when dropped.
pub struct LocalNats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    config: PathBuf,
    credentials: ManagedCredentials,
    bin: std::ffi::OsString,
    monitor_port: Option<u16>,
}

impl LocalNats {
    /// Starts `nats-server` on loopback with its JetStream store in `store`, users `node`
    /// and `reader` and no anonymous access ([`ManagedCredentials`]), and returns once it accepts
    /// connections. The port is kept in the store, so it stays the same across restarts
    /// when it is free. With `ns`, the reader may not read that log's inboxes.
    pub fn start(store: &Path, ns: Option<&Namespace>) -> Result<Self> {
        Self::start_with(store, ns, crate::MANAGED_MAX_PAYLOAD)
    }

    /// [`LocalNats::start`] with another `max_payload`.
    pub fn start_with(store: &Path, ns: Option<&Namespace>, max_payload: usize) -> Result<Self> {
        Self::start_opts(
            store,
            ns,
            ServerOptions {
                max_payload,
                sync_always: sync_always_supported(),
                cluster: None,
                bin: None,
            },
        )
    }

    /// [`LocalNats::start`] with every option: a member of a cluster among them.
    pub fn start_opts(store: &Path, ns: Option<&Namespace>, opts: ServerOptions) -> Result<Self> {
        reap_stale(store);
        let mut credentials = ManagedCredentials::load_or_create(store)?;
        if TcpListener::bind(("127.0.0.1", credentials.port)).is_err() {
            credentials.port = free_port()?;
        }
        let config = store.join("nats.conf");
        blockpost_storage::write_private_atomic(
            &config,
            credentials.server_config_with(store, ns, &opts).as_bytes(),
        )?;
        // The store holds the server's passwords and the streams: its owner's only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut me = Self {
            child: None,
            port: credentials.port,
            store: store.to_owned(),
            log: store.join("nats-server.log"),
            config,
            credentials,
            bin: opts
                .bin
                .clone()
                .map_or_else(nats_server_bin, PathBuf::into_os_string),
            monitor_port: opts.cluster.as_ref().map(|c| c.monitor_port),
        };
        me.spawn()?;
        Ok(me)
    }

    /// The node user's credentials.
    pub fn node_auth(&self) -> NatsAuth {
        self.credentials.node()
    }

    /// The read-only user's credentials.
    pub fn reader_auth(&self) -> NatsAuth {
        self.credentials.reader()
    }

    fn spawn(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.store)
            .map_err(|e| Error::Nats(format!("creating {}: {e}", self.store.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let bin = self.bin.clone();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::Nats(format!(
                    "cannot start {}: {e}. Install NATS (Debian/Ubuntu: `apt-get install nats-server`, or run \
                     scripts/setup-nats), or pass --nats URL of a running server with JetStream",
                    bin.to_string_lossy()
                ))
            })?;
        // Remember the pid: if this process dies by SIGKILL the server outlives it, and the
        // next start on this store must end it before reusing the store.
        let _ = std::fs::write(self.store.join("nats-server.pid"), child.id().to_string());
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                return Err(Error::Nats(format!(
                    "nats-server exited with {st} during start-up:\n{tail}"
                )));
            }
            // Ready means: the server accepts a connection and greets with INFO.
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Nats(format!(
                    "nats-server did not accept connections on port {} within {limit:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its HTTP monitoring port, when it has one (a cluster member).
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }

    /// Its JetStream store.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server again (same port, same store) if it exited; returns whether it had
    /// to. Clients reconnect to the same URL by themselves.
    pub fn ensure_running(&mut self) -> Result<bool> {
        if self.running() {
            return Ok(false);
        }
        if let Some(mut c) = self.child.take() {
            let status = c.wait().ok();
            tracing::warn!(
                ?status,
                port = self.port,
                "the managed nats-server exited; restarting it"
            );
        }
        self.spawn()?;
        Ok(true)
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` servers of `bin` as one JetStream cluster on loopback, each in `dir/sI`
/// (own client, route and monitoring ports, own store), with the same users (`node`,
/// `reader`) on each, and `sync_interval: always` where `bin` supports it. Returns once
/// each accepts connections (not yet once JetStream elected its meta leader).
pub fn start_cluster(dir: &Path, n: usize, bin: &Path) -> Result<Vec<LocalNats>> {
    let first = ManagedCredentials::load_or_create(&dir.join("s0"))?;
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let routes: Vec<u16> = ports.iter().map(|p| p.1).collect();
    let version = version_of(bin.as_os_str())
        .ok_or_else(|| Error::Nats(format!("{} --version did not answer", bin.display())))?;
    let mut servers = Vec::new();
    for (i, &(client, route, monitor)) in ports.iter().enumerate() {
        let store = dir.join(format!("s{i}"));
        std::fs::create_dir_all(&store)?;
        let creds = ManagedCredentials {
            port: client,
            ..first.clone()
        };
        let json = serde_json::to_vec(&creds).map_err(|e| Error::Config(e.to_string()))?;
        blockpost_storage::write_private_atomic(&store.join("credentials.json"), &json)?;
        let opts = ServerOptions {
            sync_always: version >= (2, 10, 0),
            cluster: Some(crate::ClusterMember {
                name: "blockpost".into(),
                server_name: format!("s{i}"),
                port: route,
                routes: routes.clone(),
                monitor_port: monitor,
            }),
            bin: Some(bin.to_owned()),
            ..Default::default()
        };
        servers.push(LocalNats::start_opts(&store, None, opts)?);
    }
    Ok(servers)
}

/// Ends a `nats-server` left running on `store` by a process that was killed, so that two
/// servers never share one JetStream store.
pub fn reap_stale(store: &Path) {
    let pid_file = store.join("nats-server.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        return;
    };
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("nats-server") {
        tracing::warn!(
            pid,
            "ending a nats-server left over from a previous run on this store"
        );
        let _ = Command::new("kill").args(["-9", pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The `nats-server` this process runs: `NATS_SERVER_BIN`, else `nats-server` on PATH.
pub fn nats_server_bin() -> std::ffi::OsString {
    std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into())
}

/// The version of [`nats_server_bin`] (`nats-server --version`), if it runs.
pub fn nats_server_version() -> Option<(u32, u32, u32)> {
    version_of(&nats_server_bin())
}

/// The version of the `nats-server` at `bin`, if it runs.
pub fn version_of(bin: &std::ffi::OsStr) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `nats-server: v2.10.3` → `(2, 10, 3)`.
fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut it = v.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Whether the server takes `sync_interval: always` (2.10 and later).
pub fn sync_always_supported() -> bool {
    nats_server_version().is_some_and(|v| v >= (2, 10, 0))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(
            super::parse_version("nats-server: v2.9.10\n"),
            Some((2, 9, 10))
        );
        assert_eq!(
            super::parse_version("nats-server: v2.15.1"),
            Some((2, 15, 1))
        );
        assert_eq!(
            super::parse_version("nats-server: v2.12.0-RC.1"),
            Some((2, 12, 0))
        );
        assert_eq!(super::parse_version("garbage"), None);
    }
}
