//! The composition point: a [`Node`] starts every service from one [`NodeConfig`], on one
//! data directory, with its keys, and serves them on one port. Adding a service touches
//! this file and nothing else.

use std::fs::File;
use std::future::Future;
use std::sync::Arc;

use blockpost_builder::{Builder, BuilderParts};
use blockpost_core::wire::Namespace;
use blockpost_core::{Clock, SystemClock};
use blockpost_directory::{Directory, DirectoryParts};
use blockpost_messaging::Gateway;
use blockpost_replica::Replica;
use blockpost_storage::{DataDir, load_or_create_key};
use tonic::service::Routes;

use crate::{Error, LocalNats, NatsAuth, NodeConfig, Result, ServerTls, serve_with};

/// A running node: the directory and the messaging gateway, over NATS JetStream.
pub struct Node {
    config: NodeConfig,
    data: DataDir,
    directory: Option<Directory>,
    /// Forwards the Directory service when this process does not run the directory.
    forward: Option<crate::forward::DirectoryForward>,
    gateway: Option<Gateway>,
    builder: Option<Builder>,
    nats_url: String,
    nats: async_nats::Client,
    managed: Option<Arc<std::sync::Mutex<LocalNats>>>,
    /// Restarts the managed nats-server when it dies; stopped with the node.
    supervisor: Option<tokio::task::JoinHandle<()>>,
    /// Collects the witnesses' cosignatures ([`crate::witness`]); stopped with the node.
    witness: Option<tokio::task::JoinHandle<()>>,
    /// Reports the builder's health as the Ledger service's; stopped with the node.
    ledger_health: Option<tokio::task::JoinHandle<()>>,
    _health: tonic_health::server::HealthReporter,
    health: Routes,
    /// TLS on the gRPC port, unless it serves plaintext (loopback only).
    tls: Option<ServerTls>,
    /// Held for the node's lifetime: one node per data directory.
    _lock: File,
}

impl Node {
    /// Starts a node on the system clock.
    pub async fn start(config: NodeConfig) -> Result<Self> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Starts a node whose services read time from `clock`.
    pub async fn start_with_clock(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let listen = config.validate()?;
        let data = DataDir::new(&config.data_dir);
        // Lock the data dir before touching anything in it (such as a nats-server left by a
        // killed node, which must not be a running node's).
        let lock = data.create_and_lock()?;
        let roles = config.roles;
        let origin = if roles.directory || data.root().join("origin").exists() {
            data.origin(config.directory.origin.as_deref())?
        } else {
            match &config.directory.origin {
                Some(o) => data.origin(Some(o))?,
                None => {
                    return Err(Error::Config(format!(
                        "{} has no `origin`: a process without the directory role serves the \
                         directory's log; copy `origin` and `keys/` (less log.key and ca.key) from \
                         the directory's data directory, or give [directory] origin",
                        data.root().display()
                    )));
                }
            }
        };
        let ns = Namespace::for_origin(&origin);
        let replicas = config.nats.replicas;
        let mut managed = None;
        let (nats_url, auth) = match &config.nats.url {
            Some(u) => {
                let creds = config
                    .nats
                    .credentials
                    .as_ref()
                    .or(config.nats_credentials.as_ref());
                let auth = match creds {
                    Some(p) => Some(NatsAuth::from_file(p)?),
                    None => None,
                };
                (u.clone(), auth)
            }
            None => {
                let store = data.nats();
                let ns2 = ns.clone();
                let n = tokio::task::spawn_blocking(move || LocalNats::start(&store, Some(&ns2)))
                    .await
                    .map_err(|e| Error::Nats(e.to_string()))??;
                tracing::info!(url = %n.url(), "started a local nats-server");
                let url = n.url();
                let auth = n.node_auth();
                managed = Some(Arc::new(std::sync::Mutex::new(n)));
                (url, Some(auth))
            }
        };
        let nats = crate::connect(&nats_url, auth.as_ref()).await?;

        check_streams(
            &nats,
            &ns,
            replicas,
            &ns.firehose(config.messaging.firehose_partitions),
        )
        .await?;
        let directory = if roles.directory {
            let parts = DirectoryParts {
                origin,
                log_key: load_or_create_key(&data.log_key())?,
                ca_key: load_or_create_key(&data.ca_key())?,
                ca_cert: data.ca_cert(),
                log_dir: data.log(),
            };
            let mut dc = config.directory.clone();
            dc.replicas = replicas;
            let d = Directory::start(dc, parts, clock.clone(), Some(nats.clone())).await?;
            // What the other processes of this node need to trust the log, and no more.
            blockpost_storage::write_atomic(
                &directory_vkey_path(&data),
                format!("{}\n", d.info().verifier_key).as_bytes(),
            )?;
            Some(d)
        } else {
            None
        };
        let verifier_key = match &directory {
            Some(d) => d.info().verifier_key,
            None => {
                let path = directory_vkey_path(&data);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        Error::Config(format!(
                            "{}: {e}: a process without the directory role needs the directory's \
                             verifier key; copy keys/directory.vkey from the directory's data directory",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let forward = match (&directory, &config.directory_endpoint) {
            (None, Some(e)) => Some(crate::forward::DirectoryForward::new(e)?),
            _ => None,
        };
        let tls = crate::tls::server_tls(
            &config.tls,
            &listen,
            config.limits.handshake_timeout(),
            &data,
            directory.as_ref(),
        )?;
        if let Some(t) = &tls {
            tracing::info!(
                pin = %t.pin,
                self_issued = t.self_issued,
                "the gRPC port speaks TLS; clients pin this key on first contact"
            );
        }
        let client = nats.clone();
        let mut services = vec!["blockpost.v1.Directory"];
        if directory.is_none() && forward.is_none() {
            services.clear();
        }
        // One directory replica, followed once, for the gateway and the builder alike.
        let replica = (roles.gateway && config.messaging.enabled).then(|| {
            Replica::start(
                async_nats::jetstream::new(nats.clone()),
                &ns,
                verifier_key.clone(),
            )
        });
        let gateway = match &replica {
            Some(replica) => {
                services.push("blockpost.v1.Messaging");
                let mut mc = config.messaging.clone();
                mc.replicas = replicas;
                Some(
                    Gateway::start(
                        mc,
                        load_or_create_key(&data.gateway_key())?,
                        ns.clone(),
                        replica.clone(),
                        clock.clone(),
                        nats,
                    )
                    .await?,
                )
            }
            None => None,
        };
        if let Some(g) = &gateway {
            // Public firehose readers get a connection of their own: a slow one can never
            // get the node's own connection cut as a slow consumer.
            g.follow_on(crate::connect(&nats_url, auth.as_ref()).await?);
        }
        let builder = match (&gateway, &replica, roles.builder && config.builder.enabled) {
            (Some(g), Some(replica), true) => Some(
                Builder::start(
                    blockpost_builder::BuilderConfig {
                        replicas,
                        firehose_partitions: config.messaging.firehose_partitions,
                        ..config.builder.clone()
                    },
                    BuilderParts {
                        key: load_or_create_key(&data.builder_key())?,
                        dir: data.ledger(),
                        origin: ns.origin().to_owned(),
                        firehose_mac: Some(g.firehose_mac()),
                        delivery_key: Some(load_or_create_x25519(&data.delivery_key())?),
                    },
                    ns.clone(),
                    config.messaging.limits(),
                    replica.clone(),
                    clock,
                    client.clone(),
                )
                .await?,
            ),
            _ => None,
        };
        // The node composes them: the gateway asks the builder's transaction book (through
        // core's `TransactionGate`), and neither crate knows the other.
        if let (Some(g), Some(b)) = (&gateway, &builder) {
            g.set_transaction_gate(b.gate());
        }
        if builder.is_some() {
            services.push("blockpost.v1.Ledger");
        }
        let (health_reporter, health) = crate::serve::health_routes(&services).await;
        // A stalled builder turns the Ledger service NOT_SERVING until it recovers.
        let ledger_health = builder.as_ref().map(|b| {
            tokio::spawn(report_builder_health(
                b.subscribe_health(),
                health_reporter.clone(),
            ))
        });
        let supervisor = managed.clone().map(|n| tokio::spawn(supervise(n)));
        let witness = (!config.witnesses.is_empty()).then(|| {
            let mut logs = Vec::new();
            if let Some(d) = directory.clone() {
                logs.push(crate::witness::Log {
                    name: "directory",
                    witnessed: d.witnessed().clone(),
                    head: Box::new(move || d.head()),
                });
            }
            if let Some(b) = builder.clone() {
                logs.push(crate::witness::Log {
                    name: "ledger",
                    witnessed: b.witnessed().clone(),
                    head: Box::new(move || b.head()),
                });
            }
            tokio::spawn(crate::witness::collect(config.witnesses.clone(), logs))
        });
        Ok(Self {
            config,
            data,
            directory,
            forward,
            gateway,
            builder,
            nats_url,
            nats: client,
            managed,
            supervisor,
            witness,
            ledger_health,
            _health: health_reporter,
            health,
            tls,
            _lock: lock,
        })
    }

    /// Every service's gRPC routes.
    pub fn routes(&self) -> Routes {
        let mut routes = self.health.clone();
        if let Some(d) = &self.directory {
            routes = routes.add_service(d.clone().into_service());
        } else if let Some(f) = &self.forward {
            routes = routes.add_service(f.clone().into_service());
        }
        if let Some(g) = &self.gateway {
            routes = routes.add_service(g.clone().into_service());
        }
        if let Some(b) = &self.builder {
            routes = routes.add_service(b.clone().into_service());
        }
        routes
    }

    /// Serves every service on `listener` until `shutdown` completes, under the config's
    /// `[limits]`, fitted to the open-file limit, and over TLS when the config asks for it
    /// (see [`Node::tls`]). The listener is the caller's: a node that speaks plaintext
    /// because its config listens on loopback must be given a loopback listener.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let mut limits = self.config.limits.clone();
        limits.fit_to_open_files();
        self.check_listener(&listener)?;
        serve_with(
            listener,
            self.routes(),
            &limits,
            self.tls.as_ref().map(|t| t.config.clone()),
            shutdown,
        )
        .await
    }

    /// Refuses a listener off loopback when the node serves plaintext.
    fn check_listener(&self, listener: &tokio::net::TcpListener) -> Result<()> {
        let local = listener.local_addr()?;
        if self.tls.is_none() && !local.ip().is_loopback() {
            return Err(Error::Config(format!(
                "refusing to serve plaintext on {local}: off loopback the gRPC port requires TLS \
                 (listen = {:?} in the config decides)",
                self.config.listen
            )));
        }
        Ok(())
    }

    /// Serves every service on `listener` from a background task, until
    /// [`Serving::stop`]: what the benchmarks and the test sandbox run.
    pub fn serve_in_background(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> Result<Serving> {
        self.check_listener(&listener)?;
        let addr = listener.local_addr()?;
        let tls = self.tls.is_some();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let node = self.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let served = node.serve(listener, shutdown).await;
            if let Err(e) = &served {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
            served
        });
        Ok(Serving {
            addr,
            tls,
            stop: Some(stop),
            task,
        })
    }

    /// The config it started from.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// The directory service, when this process runs it (the `directory` role).
    pub fn directory(&self) -> Option<&Directory> {
        self.directory.as_ref()
    }

    /// The messaging gateway, unless `[messaging] enabled = false`.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    /// TLS on the gRPC port: the certificate chain and the pin clients check; `None` when
    /// it serves plaintext (on loopback only).
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// The block builder, unless `[builder] enabled = false` (or messaging is off).
    pub fn builder(&self) -> Option<&Builder> {
        self.builder.as_ref()
    }

    /// The NATS server it uses.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// Whether it runs its own nats-server.
    pub fn manages_nats(&self) -> bool {
        self.managed.is_some()
    }

    /// What its Prometheus metrics and liveness check read ([`crate::serve_metrics`]).
    pub fn metrics(&self) -> crate::Metrics {
        crate::Metrics {
            gateway: self.gateway.clone(),
            builder: self.builder.clone(),
            directory: self.directory.clone(),
        }
    }

    /// The node's own NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The read-only user's credentials on the managed nats-server, to hand to auditors.
    pub fn reader_credentials(&self) -> Option<crate::NatsAuth> {
        self.managed
            .as_ref()
            .map(|n| n.lock().unwrap_or_else(|e| e.into_inner()).reader_auth())
    }
}

/// A node serving in a background task ([`Node::serve_in_background`]).
pub struct Serving {
    addr: std::net::SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Serving {
    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://ADDR`, or `https://ADDR` over TLS, for clients on this machine (an
    /// unspecified listen address, such as `0.0.0.0`, becomes loopback).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("{scheme}://{addr}")
    }

    /// Stops serving (gracefully) and waits for the server to end.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "the gRPC server task failed: {e}"
            )))
        })?
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(w) = self.witness.take() {
            w.abort();
        }
        if let Some(h) = self.ledger_health.take() {
            h.abort();
        }
        if let Some(s) = self.supervisor.take() {
            s.abort();
        }
    }
}

/// Keeps the managed nats-server running: checks twice a second and restarts it, on the
/// same port and store, when it died. Services reconnect by themselves.
async fn supervise(nats: Arc<std::sync::Mutex<LocalNats>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = nats.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            n.lock().unwrap_or_else(|e| e.into_inner()).ensure_running()
        })
        .await;
        match outcome {
            Ok(Ok(true)) => tracing::info!("the managed nats-server is running again"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot restart the managed nats-server"),
            Err(_) => return,
        }
    }
}

/// Refuses streams of this log's names that another log made: they would mix two logs.
/// `keys/directory.vkey`: the directory's checkpoint verifier key, written by the process
/// that runs the directory and read by the node's other processes.
pub fn directory_vkey_path(data: &DataDir) -> std::path::PathBuf {
    data.keys().join("directory.vkey")
}

async fn check_streams(
    nats: &async_nats::Client,
    ns: &Namespace,
    replicas: usize,
    firehose: &blockpost_core::wire::Firehose,
) -> Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    // The firehose's partitions are fixed when it is made: streams of this log's firehose
    // made with another count mean the config changed.
    let mut names = js.stream_names();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let Ok(name) = name else {
            break; // NATS is away: the services will find out
        };
        if let Some(made) = firehose.partitions_of_stream(&name)
            && made != firehose.partitions()
        {
            return Err(Error::Config(format!(
                "stream {name} holds this log's firehose as {made} partition(s), and this node's \
                 [messaging] firehose_partitions is {}: the count is fixed when the firehose is made \
                 (a sender's messages must stay in one partition, and blocks name them by partition). \
                 Set firehose_partitions = {made}, or start the log anew",
                firehose.partitions()
            )));
        }
    }
    let mut streams = vec![
        ns.directory_stream(),
        ns.inbox_stream(),
        ns.blocks_stream(),
        ns.lease_stream(),
    ];
    streams.extend(firehose.all().map(|k| firehose.stream(k)));
    for name in streams {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue; // not made yet (or NATS is down: the services will retry)
        };
        let info = stream
            .info()
            .await
            .map_err(|e| Error::Nats(format!("stream {name}: {e}")))?;
        if info.config.description.as_deref() != Some(ns.description().as_str()) {
            return Err(Error::Nats(format!(
                "stream {name} on this NATS server belongs to {:?}, not to this node's log {:?}: \
                 refusing to mix two logs (give this node another NATS server or remove that stream)",
                info.config.description.clone().unwrap_or_default(),
                ns.origin()
            )));
        }
        if info.config.num_replicas.max(1) != replicas {
            return Err(Error::Config(format!(
                "stream {name} has {have} replica(s) and this node's [nats] replicas is {replicas}: \
                 a stream's replica count is fixed when it is made. Either set [nats] replicas = {have}, \
                 or move the stream to {replicas} replica(s) first (NATS 2.10+ changes it in place: \
                 `nats stream edit {name} --replicas {replicas}`; on 2.9, back it up, delete it and \
                 restore it with the new count), then start the node",
                have = info.config.num_replicas.max(1)
            )));
        }
    }
    Ok(())
}

/// Reports the builder's health as the gRPC health of `blockpost.v1.Ledger`, until the
/// builder is dropped.
async fn report_builder_health(
    mut health: tokio::sync::watch::Receiver<blockpost_builder::Health>,
    reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let status = if health.borrow_and_update().stalled().is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        reporter
            .set_service_status("blockpost.v1.Ledger", status)
            .await;
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// Loads the node's x25519 delivery key at `path` (PKCS#8 PEM, RFC 8410), creating it
/// (mode 0600) on first start. Ledger transactions in settlement instructions are sealed
/// to its public key; every builder that may deliver needs the same file.
fn load_or_create_x25519(path: &std::path::Path) -> Result<x25519_dalek::StaticSecret> {
    let err = |why: String| Error::Config(format!("{}: {why}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(pem) => blockpost_core::x25519_from_pem(&pem).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let key = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
            let pem = blockpost_core::x25519_to_pem(&key).map_err(|e| err(e.to_string()))?;
            blockpost_storage::write_private_file(path, pem.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}
