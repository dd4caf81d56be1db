//! `blockpost up`: runs the node: directory and messaging gateway on one port.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use blockpost_directory::{Directory, DirectoryConfig};
use blockpost_messaging::{Gateway, GatewayConfig};
use serde::Deserialize;

use crate::LocalNats;

/// Flags of `blockpost up`; each overrides the config file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NodeArgs {
    /// Data directory (log, keys, NATS store when NATS is managed here).
    #[arg(long, env = "BLOCKPOST_DATA")]
    pub data: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "BLOCKPOST_LISTEN")]
    pub listen: Option<String>,
    /// NATS server URL; without it a local nats-server is started and managed.
    #[arg(long, env = "BLOCKPOST_NATS")]
    pub nats: Option<String>,
    /// TOML config file (top level: `listen`, `nats`; table `[directory]`).
    #[arg(long, env = "BLOCKPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// The log's origin line (first start only).
    #[arg(long)]
    pub origin: Option<String>,
    /// PEM file of trust anchors for name evidence (repeatable).
    #[arg(long = "trust-anchor")]
    pub trust_anchors: Vec<PathBuf>,
    /// Refuse names without evidence.
    #[arg(long)]
    pub require_verified: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    listen: Option<String>,
    nats: Option<String>,
    #[serde(default)]
    directory: Option<DirectoryConfig>,
}

/// Runs the node until Ctrl-C or SIGTERM.
pub async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let file: NodeConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => NodeConfig::default(),
    };
    let mut dir_cfg = file.directory.unwrap_or_default();
    if let Some(d) = args.data {
        dir_cfg.data_dir = d;
    }
    if args.origin.is_some() {
        dir_cfg.origin = args.origin;
    }
    dir_cfg.trust_anchors.extend(args.trust_anchors);
    dir_cfg.require_verified |= args.require_verified;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let listen: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not HOST:PORT"))?;
    std::fs::create_dir_all(&dir_cfg.data_dir)
        .with_context(|| format!("creating data dir {}", dir_cfg.data_dir.display()))?;

    // Lock the data dir before touching anything in it (such as a nats-server left by a
    // killed node, which must not be a running node's).
    let lock_path = dir_cfg.data_dir.join("LOCK");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "data dir {} is in use by another blockpost node",
            dir_cfg.data_dir.display()
        );
    }
    let mut managed = None;
    let nats_url = match args.nats.or(file.nats) {
        Some(u) => u,
        None => {
            let store = dir_cfg.data_dir.join("nats");
            let n = tokio::task::spawn_blocking(move || LocalNats::start(&store)).await??;
            tracing::info!(url = %n.url(), "started a local nats-server");
            let url = n.url();
            managed = Some(n);
            url
        }
    };
    let nats = async_connect(&nats_url).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let directory = Directory::start(dir_cfg.clone(), Some(nats.clone())).await?;
    let gateway = Gateway::start(GatewayConfig::new(&dir_cfg.data_dir), nats).await?;
    let info = directory.info();
    crate::say!("blockpost node listening on {}", listener.local_addr()?);
    crate::say!("  data      {}", dir_cfg.data_dir.display());
    crate::say!(
        "  nats      {nats_url}{}",
        if managed.is_some() { " (managed)" } else { "" }
    );
    crate::say!("  log       {}", info.origin);
    crate::say!("  log key   {}", info.verifier_key);
    crate::say!("  entries   {}", directory.size());
    crate::say!("  receipts  {}", hex::encode(gateway.info().receipt_key));
    serve_node(listener, directory, gateway, shutdown_signal()).await?;
    drop(managed);
    drop(lock);
    Ok(())
}

/// Serves the directory and the gateway on one listener until `shutdown` completes.
pub async fn serve_node(
    listener: tokio::net::TcpListener,
    directory: Directory,
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY, small responses wait on delayed ACKs (Nagle): tens of ms each.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(directory.into_service())
        .add_service(gateway.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

async fn async_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    match tokio::time::timeout(std::time::Duration::from_secs(10), async_nats::connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => bail!("cannot connect to NATS at {url}: {e}"),
        Err(_) => bail!("cannot connect to NATS at {url}: timed out"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
