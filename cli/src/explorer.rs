//! `blockpost explorer`: the read-only web explorer over a node (and an auditor), from
//! `blockpost-explorer`.

use anyhow::Context as _;

/// Flags of `blockpost explorer`.
#[derive(clap::Args)]
pub struct ExplorerArgs {
    /// The node's gRPC endpoint.
    #[arg(
        long,
        alias = "endpoint",
        env = "BLOCKPOST_ENDPOINT",
        default_value = "http://127.0.0.1:7700"
    )]
    node: String,
    /// An auditor's gRPC endpoint: its status, alerts and full-text search.
    #[arg(long, env = "BLOCKPOST_AUDITOR")]
    auditor: Option<String>,
    /// Where to serve the explorer (HTTP).
    #[arg(
        long,
        env = "BLOCKPOST_EXPLORER_LISTEN",
        default_value = "127.0.0.1:7780"
    )]
    listen: String,
    #[command(flatten)]
    trust: crate::Trust,
    /// Seconds one call to the node or the auditor may take before it counts as away.
    #[arg(long, default_value_t = 10)]
    call_timeout: u64,
}

/// Serves the explorer until Ctrl-C or SIGTERM.
pub async fn run(args: ExplorerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.call_timeout > 0,
        "--call-timeout must be at least 1 second"
    );
    let mut config = blockpost_explorer::Config::new(
        &args.node,
        args.auditor.as_deref(),
        blockpost_client::config_dir(),
    );
    config.options = args.trust.options();
    config.call_timeout = std::time::Duration::from_secs(args.call_timeout);
    config.check()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "explorer: http://{addr}/ for the node at {}{}",
        args.node,
        args.auditor
            .as_deref()
            .map(|a| format!(" and the auditor at {a}"))
            .unwrap_or_default()
    );
    blockpost_explorer::run(listener, config, crate::up::shutdown_signal()).await?;
    Ok(())
}
