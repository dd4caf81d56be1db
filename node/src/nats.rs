//! A `nats-server` child process with JetStream on a private store: what `blockpost up`
//! runs when no `--nats` URL is given, and what the test kit starts for each test.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockpost_core::wire::Namespace;

use crate::auth::{ManagedCredentials, NatsAuth};
use crate::{Error, Result};

/// A running `nats-server`, killed when dropped.
pub struct LocalNats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    config: PathBuf,
    credentials: ManagedCredentials,
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
        reap_stale(store);
        let mut credentials = ManagedCredentials::load_or_create(store)?;
        if TcpListener::bind(("127.0.0.1", credentials.port)).is_err() {
            credentials.port = free_port()?;
        }
        let config = store.join("nats.conf");
        blockpost_storage::write_private_atomic(
            &config,
            credentials
                .server_config_with(store, ns, max_payload)
                .as_bytes(),
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
        let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
