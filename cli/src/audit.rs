//! `blockpost auditor` (the daemon) and `blockpost audit alerts`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blockpost_auditor::{Alert, Auditor, AuditorConfig};

use crate::render;

/// Flags of `blockpost auditor`.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditorArgs {
    /// The node's gRPC endpoint (its keys are pinned on first contact).
    #[arg(
        long,
        env = "BLOCKPOST_ENDPOINT",
        default_value = "http://127.0.0.1:7700"
    )]
    pub node: String,
    /// The node's NATS server.
    #[arg(long, env = "BLOCKPOST_NATS")]
    pub nats: String,
    /// NATS credentials: a `.creds` file, `user:password` or a token (the node's read-only
    /// user is enough: `blockpost nats-credentials`).
    #[arg(long, env = "BLOCKPOST_NATS_CREDENTIALS", value_name = "FILE")]
    pub nats_credentials: Option<PathBuf>,
    /// The auditor's data directory (pinned keys, alerts.jsonl).
    #[arg(
        long,
        env = "BLOCKPOST_AUDITOR_DATA",
        default_value = "blockpost-auditor"
    )]
    pub data: PathBuf,
    /// Time allowed past a receipt's deadline before a missing message is an omission.
    #[arg(long, default_value_t = 1_000)]
    pub grace_ms: u64,
    /// Verify the node's TLS certificate against the CA certificates in this PEM file.
    #[arg(long, env = "BLOCKPOST_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// The node's TLS key pin (sha256:HEX), required from the first contact on.
    #[arg(long, env = "BLOCKPOST_TLS_PIN", value_name = "PIN")]
    pub tls_pin: Option<String>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `blockpost audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// The alerts an auditor raised, oldest first, from its data directory.
    Alerts {
        /// The auditor's data directory.
        #[arg(
            long,
            env = "BLOCKPOST_AUDITOR_DATA",
            default_value = "blockpost-auditor"
        )]
        data: PathBuf,
        /// Keep printing new alerts as the auditor raises them.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the auditor until Ctrl-C or SIGTERM, printing alerts as they come and its status
/// every 10 s.
pub async fn run_auditor(args: AuditorArgs) -> anyhow::Result<()> {
    let auth = args
        .nats_credentials
        .as_deref()
        .map(blockpost_node::NatsAuth::from_file)
        .transpose()?;
    let nats = blockpost_node::connect(&args.nats, auth.as_ref()).await?;
    let mut config = AuditorConfig::new(args.node.clone(), args.data.clone());
    config.grace_ms = args.grace_ms;
    config.connect = blockpost_client::ConnectOptions {
        tls_ca: args.tls_ca.clone(),
        tls_pin: args.tls_pin.clone(),
    };
    let auditor = Auditor::start(config, nats).await?;
    let mut alerts = auditor.subscribe();
    let mut status = tokio::time::interval(Duration::from_secs(10));
    let shutdown = crate::up::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            a = alerts.recv() => match a {
                Ok(a) => render::alert(&a, args.json)?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "alerts printed too slowly; see alerts.jsonl");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = status.tick() => render::audit_status(&auditor.status(), args.json)?,
        }
    }
    render::audit_status(&auditor.status(), args.json)?;
    Ok(())
}

/// `blockpost audit ...`.
pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Alerts { data, follow, json } => alerts(&data, follow, json).await,
    }
}

async fn alerts(data: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    let path = data.join("alerts.jsonl");
    if !path.exists() && !follow {
        anyhow::bail!(
            "{} has no alerts file: no auditor ran with --data {}",
            data.display(),
            data.display()
        );
    }
    let mut printed = 0usize;
    loop {
        if let Ok(f) = std::fs::File::open(&path) {
            let mut n = 0usize;
            for line in std::io::BufReader::new(f).lines() {
                let line = line?;
                n += 1;
                if n <= printed {
                    continue;
                }
                // A line being written is read whole next time.
                let Ok(a) = serde_json::from_str::<Alert>(&line) else {
                    n -= 1;
                    break;
                };
                render::alert(&a, json)?;
            }
            printed = n;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
