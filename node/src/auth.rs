//! NATS is a trust boundary: who may connect, publish and read.
//!
//! The managed nats-server has two users, with passwords made at first start and kept in
//! `nats/credentials.json` (mode 0600): `node`, which the node's own services use, and
//! `reader`, for auditors and monitors: it may read the directory and firehose streams and
//! publish nothing (only the JetStream API calls a pull consumer needs). Anonymous
//! connections are refused. With `--nats URL`, the node reads its credentials from a file
//! ([`NatsAuth::from_file`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use blockpost_core::wire::Namespace;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to authenticate to a NATS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    /// User and password.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file (user JWT and nkey seed).
    CredsFile(PathBuf),
}

impl NatsAuth {
    /// Reads credentials from a file: a NATS `.creds` file (it holds a user JWT), or one line
    /// `user:password`, or one line holding a token.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("nats credentials {}: {e}", path.display())))?;
        if text.contains("BEGIN NATS USER JWT") {
            return Ok(NatsAuth::CredsFile(path.to_owned()));
        }
        let line = text.trim();
        if line.is_empty() || line.contains('\n') {
            return Err(Error::Config(format!(
                "nats credentials {}: expected a .creds file, `user:password` or a token on one line",
                path.display()
            )));
        }
        Ok(match line.split_once(':') {
            Some((user, password)) => NatsAuth::UserPassword {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            None => NatsAuth::Token(line.to_owned()),
        })
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions> {
        Ok(match self {
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
            NatsAuth::CredsFile(p) => async_nats::ConnectOptions::with_credentials_file(p.clone())
                .await
                .map_err(|e| Error::Config(format!("nats credentials {}: {e}", p.display())))?,
        })
    }
}

/// The seed URLs of a NATS cluster: `url` is one URL or several separated by commas
/// (`nats://a:4222,nats://b:4222`). Empty items are an error.
pub fn seed_urls(url: &str) -> Result<Vec<String>> {
    let urls: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(Error::Config(format!(
            "nats {url:?}: expected one URL or several separated by commas"
        )));
    }
    for u in &urls {
        u.parse::<async_nats::ServerAddr>()
            .map_err(|e| Error::Config(format!("nats URL {u:?}: {e}")))?;
    }
    Ok(urls)
}

/// Connects to `url` with `auth` (or anonymously), giving up after 10 s. `url` may list
/// several servers of one cluster, separated by commas ([`seed_urls`]): the client
/// connects to any that answers, and reconnects to any other (and to the servers the
/// cluster tells of) when it loses one.
pub async fn connect(url: &str, auth: Option<&NatsAuth>) -> Result<async_nats::Client> {
    let seeds = seed_urls(url)?;
    let mut opts = match auth {
        Some(a) => a.options().await?,
        None => async_nats::ConnectOptions::new(),
    };
    if matches!(auth, Some(NatsAuth::UserPassword { user, .. }) if user == READER_USER) {
        opts = opts.custom_inbox_prefix(READER_INBOX_PREFIX);
    }
    // Reconnect for ever once connected: the managed server is restarted within a second,
    // an external one is an operator's to bring back.
    let opts = opts.max_reconnects(None);
    match tokio::time::timeout(std::time::Duration::from_secs(10), opts.connect(seeds)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::Nats(format!("cannot connect to NATS at {url}: {e}"))),
        Err(_) => Err(Error::Nats(format!(
            "cannot connect to NATS at {url}: timed out"
        ))),
    }
}

/// How a managed (or test) nats-server is set up beyond its users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest message it takes.
    pub max_payload: usize,
    /// `sync_interval: always` (NATS 2.10+): fsync every write before acknowledging it.
    pub sync_always: bool,
    /// A member of a cluster (the test kit's).
    pub cluster: Option<ClusterMember>,
    /// The `nats-server` binary; `None`: [`crate::nats_server_bin`].
    pub bin: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_payload: MANAGED_MAX_PAYLOAD,
            sync_always: false,
            cluster: None,
            bin: None,
        }
    }
}

/// One server's place in a loopback cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    /// The cluster's name.
    pub name: String,
    /// This server's name (unique in the cluster).
    pub server_name: String,
    /// Its route port.
    pub port: u16,
    /// Every member's route port (its own may be among them).
    pub routes: Vec<u16>,
    /// Its HTTP monitoring port (`/jsz` tells the meta leader).
    pub monitor_port: u16,
}

/// The managed server's users, made once and kept beside its store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagedCredentials {
    /// The port the server listens on (kept, so readers keep their URL across restarts).
    pub port: u16,
    /// Password of `node`, the node's own services.
    pub node_password: String,
    /// Password of `reader`, for auditors and monitors.
    pub reader_password: String,
}

/// The node's user on the managed server.
pub const NODE_USER: &str = "node";
/// The read-only user on the managed server.
pub const READER_USER: &str = "reader";
/// The reply-subject prefix of the read-only user: replies to the node's own requests
/// (`_INBOX.…`) stay out of its reach.
pub const READER_INBOX_PREFIX: &str = "_INBOX_reader";

/// Largest message the managed server takes (NATS's own ceiling for a sane setup); the
/// gateway refuses envelopes above it, less room for headers.
pub const MANAGED_MAX_PAYLOAD: usize = 8 << 20;

impl ManagedCredentials {
    /// The credentials in `store`, made (with a free port) at first start.
    pub fn load_or_create(store: &Path) -> Result<Self> {
        let path = store.join("credentials.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(store)?;
                let secret = || {
                    let b: [u8; 24] = rand::random();
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
                };
                let c = Self {
                    port: crate::free_port()?,
                    node_password: secret(),
                    reader_password: secret(),
                };
                let json =
                    serde_json::to_vec_pretty(&c).map_err(|e| Error::Config(e.to_string()))?;
                blockpost_storage::write_private_file(&path, &json)?;
                Ok(c)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The node user's credentials.
    pub fn node(&self) -> NatsAuth {
        NatsAuth::UserPassword {
            user: NODE_USER.into(),
            password: self.node_password.clone(),
        }
    }

    /// The reader's credentials.
    pub fn reader(&self) -> NatsAuth {
        NatsAuth::UserPassword {
            user: READER_USER.into(),
            password: self.reader_password.clone(),
        }
    }

    /// The nats-server configuration: loopback only, JetStream in `store`, the two users.
    /// With `ns`, the reader may not touch that log's inbox stream.
    pub fn server_config(&self, store: &Path, ns: Option<&Namespace>) -> String {
        self.server_config_with(store, ns, &ServerOptions::default())
    }

    /// [`ManagedCredentials::server_config`] with another `max_payload` (tests of what a
    /// smaller bus carries).
    pub fn server_config_with(
        &self,
        store: &Path,
        ns: Option<&Namespace>,
        opts: &ServerOptions,
    ) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut reader_deny = Vec::new();
        if let Some(ns) = ns {
            let inbox = ns.inbox_stream();
            for api in [
                format!("$JS.API.CONSUMER.CREATE.{inbox}"),
                format!("$JS.API.CONSUMER.CREATE.{inbox}.>"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{inbox}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{inbox}.>"),
                format!("$JS.API.CONSUMER.DELETE.{inbox}.>"),
                format!("$JS.API.CONSUMER.INFO.{inbox}.>"),
                format!("$JS.API.STREAM.MSG.GET.{inbox}"),
                format!("$JS.API.DIRECT.GET.{inbox}"),
                format!("$JS.API.DIRECT.GET.{inbox}.>"),
                format!("$JS.ACK.{inbox}.>"),
            ] {
                reader_deny.push(q(&api));
            }
        }
        // What a pull consumer needs, and nothing that writes.
        let reader_allow = [
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.>",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.MSG.GET.>",
            "$JS.API.DIRECT.GET.>",
            "$JS.API.CONSUMER.CREATE.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.>",
            "$JS.API.CONSUMER.INFO.>",
            "$JS.API.CONSUMER.MSG.NEXT.>",
            "$JS.API.CONSUMER.DELETE.>",
            "$JS.ACK.>",
            "$JS.FC.>",
        ]
        .map(q)
        .join(", ");
        // fsync every write where the server can (2.10+): a receipt then survives a power
        // cut of this one server, not only a process kill.
        let sync = if opts.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let cluster = match &opts.cluster {
            Some(c) => format!(
                "server_name: {name}\nhttp: \"127.0.0.1:{monitor}\"\ncluster {{\n  name: {cluster}\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n",
                name = q(&c.server_name),
                cluster = q(&c.name),
                port = c.port,
                monitor = c.monitor_port,
                routes = c
                    .routes
                    .iter()
                    .map(|p| q(&format!("nats-route://127.0.0.1:{p}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        format!(
            "# Written by blockpost at every start; edits are lost.\n\
             listen: \"127.0.0.1:{port}\"\n\
             max_payload: {max_payload}\n\
             {cluster}\
             jetstream {{\n  store_dir: {store}{sync}\n}}\n\
             authorization {{\n  users = [\n\
             \x20   {{ user: {node_user}, password: {node_pw} }}\n\
             \x20   {{ user: {reader_user}, password: {reader_pw}, permissions: {{\n\
             \x20       publish: {{ allow: [{reader_allow}], deny: [{reader_deny}] }}\n\
             \x20       subscribe: {{ allow: [\"{READER_INBOX_PREFIX}.>\"] }}\n\
             \x20   }} }}\n  ]\n}}\n",
            port = self.port,
            max_payload = opts.max_payload,
            store = q(&store.display().to_string()),
            node_user = q(NODE_USER),
            node_pw = q(&self.node_password),
            reader_user = q(READER_USER),
            reader_pw = q(&self.reader_password),
            reader_deny = reader_deny.join(", "),
        )
    }
}
