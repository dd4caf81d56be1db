//! `blockpost auditor` (the daemon) and `blockpost audit alerts`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use blockpost_auditor::{Alert, Auditor, AuditorConfig};
use blockpost_proto::v1::audit_client::AuditClient;
use blockpost_proto::v1::{
    AlertsRequest, CheckReceiptRequest, GetAuditStatusRequest, SearchRequest,
};

use crate::render;

/// Flags of `blockpost auditor`.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditorArgs {
    /// A settings file (TOML; see `blockpost_auditor::AuditorFile`): a flag or its
    /// environment variable, when given, wins over it.
    #[arg(long, env = "BLOCKPOST_AUDITOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's gRPC endpoint (its keys are pinned on first contact) [default:
    /// http://127.0.0.1:7700].
    #[arg(long, env = "BLOCKPOST_ENDPOINT")]
    pub node: Option<String>,
    /// The node's NATS server (here or in --config).
    #[arg(long, env = "BLOCKPOST_NATS")]
    pub nats: Option<String>,
    /// NATS credentials: a `.creds` file, `user:password` or a token (the node's read-only
    /// user is enough: `blockpost nats-credentials`).
    #[arg(long, env = "BLOCKPOST_NATS_CREDENTIALS", value_name = "FILE")]
    pub nats_credentials: Option<PathBuf>,
    /// The auditor's data directory (pinned keys, alerts.jsonl) [default:
    /// blockpost-auditor].
    #[arg(long, env = "BLOCKPOST_AUDITOR_DATA")]
    pub data: Option<PathBuf>,
    /// Time allowed past a receipt's deadline before a missing message is an omission
    /// [default: 1000].
    #[arg(long)]
    pub grace_ms: Option<u64>,
    /// Alert on any new, rotated or revoked binding that matches: `address:PATTERN`,
    /// `name:PATTERN` or `PATTERN` (either), with `*` and `?`, ignoring case. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub watch: Vec<blockpost_auditor::Watch>,
    /// `ADDRESS=KEYRING` (or `ADDRESS=KEYFILE`): the auditor holds this participant's
    /// keys (a regulator's, say; the passphrase from BLOCKPOST_PASSPHRASE or the terminal)
    /// and opens and indexes the encrypted bodies sealed for it, and only those; a
    /// keyring opens those sealed to any of its generations. Repeatable.
    #[arg(long, value_name = "ADDRESS=KEYRING")]
    pub open_for: Vec<String>,
    /// Also publish each alert (JSON) on NATS, on this server (the auditor's own: the
    /// node's read-only user publishes nothing).
    #[arg(long, env = "BLOCKPOST_AUDITOR_ALERTS_NATS", value_name = "URL")]
    pub alerts_nats: Option<String>,
    /// Credentials for --alerts-nats (as --nats-credentials).
    #[arg(long, value_name = "FILE", requires = "alerts_nats")]
    pub alerts_nats_credentials: Option<PathBuf>,
    /// The subject of --alerts-nats [default: blockpost.audit.alerts].
    #[arg(long)]
    pub alerts_subject: Option<String>,
    /// The witness's name in its cosignatures (default: blockpost-auditor/ and the first 8
    /// hex digits of its key, `DATA/witness.key`).
    #[arg(long, env = "BLOCKPOST_WITNESS_NAME")]
    pub witness_name: Option<String>,
    /// With --alerts-nats: cosigned checkpoints are also published there, on
    /// SUBJECT.directory and SUBJECT.ledger [default: blockpost.witness].
    #[arg(long)]
    pub witness_subject: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and a liveness check (`/healthz`, 503 once
    /// the auditor has stalled behind the node) over HTTP on this address.
    #[arg(long, env = "BLOCKPOST_AUDITOR_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve `blockpost.v1.Audit` (status, alerts, receipts) on this address [default:
    /// 127.0.0.1:7800].
    #[arg(long, env = "BLOCKPOST_AUDITOR_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
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

/// [`AuditorArgs`] with the settings file and the defaults applied.
struct Resolved {
    node: String,
    nats: String,
    nats_credentials: Option<PathBuf>,
    data: PathBuf,
    grace_ms: u64,
    watch: Vec<blockpost_auditor::Watch>,
    open_for: Vec<String>,
    alerts_nats: Option<String>,
    alerts_nats_credentials: Option<PathBuf>,
    alerts_subject: String,
    witness_name: Option<String>,
    witness_subject: String,
    metrics: Option<std::net::SocketAddr>,
    listen: std::net::SocketAddr,
    tls_ca: Option<PathBuf>,
    tls_pin: Option<String>,
    json: bool,
}

impl AuditorArgs {
    /// The flags over the settings file (if any) over the defaults.
    fn with_file(self) -> anyhow::Result<Resolved> {
        let f = match &self.config {
            Some(p) => blockpost_auditor::AuditorFile::load(p)?,
            None => blockpost_auditor::AuditorFile::default(),
        };
        let mut watch = Vec::new();
        for w in &f.watch {
            watch.push(
                w.parse()
                    .map_err(|e| anyhow::anyhow!("watch {w:?} in the settings file: {e}"))?,
            );
        }
        watch.extend(self.watch);
        let mut open_for = f.open_for;
        open_for.extend(self.open_for);
        let nats = self.nats.or(f.nats).context(
            "the node's NATS server is needed: --nats URL (or BLOCKPOST_NATS, or nats in --config)",
        )?;
        Ok(Resolved {
            node: self
                .node
                .or(f.node)
                .unwrap_or_else(|| "http://127.0.0.1:7700".to_owned()),
            nats,
            nats_credentials: self.nats_credentials.or(f.nats_credentials),
            data: self
                .data
                .or(f.data)
                .unwrap_or_else(|| PathBuf::from("blockpost-auditor")),
            grace_ms: self.grace_ms.or(f.grace_ms).unwrap_or(1_000),
            watch,
            open_for,
            alerts_nats: self.alerts_nats.or(f.alerts_nats),
            alerts_nats_credentials: self.alerts_nats_credentials.or(f.alerts_nats_credentials),
            alerts_subject: self
                .alerts_subject
                .or(f.alerts_subject)
                .unwrap_or_else(|| "blockpost.audit.alerts".to_owned()),
            witness_name: self.witness_name.or(f.witness_name),
            witness_subject: self
                .witness_subject
                .or(f.witness_subject)
                .unwrap_or_else(|| "blockpost.witness".to_owned()),
            metrics: self.metrics.or(f.metrics),
            listen: self
                .listen
                .or(f.listen)
                .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 7800))),
            tls_ca: self.tls_ca.or(f.tls_ca),
            tls_pin: self.tls_pin.or(f.tls_pin),
            json: self.json,
        })
    }
}

/// `blockpost audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// The alerts an auditor raised, oldest first: from a running auditor (--auditor), or
    /// from its data directory (--data, default ./blockpost-auditor).
    Alerts {
        /// A running auditor's endpoint.
        #[arg(long, env = "BLOCKPOST_AUDITOR", conflicts_with = "data")]
        auditor: Option<String>,
        /// The auditor's data directory.
        #[arg(long, env = "BLOCKPOST_AUDITOR_DATA")]
        data: Option<PathBuf>,
        /// Keep printing new alerts as the auditor raises them.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Hand a receipt (a file `send --receipt-out` wrote) to an auditor: it checks the
    /// gateway's signature and whether the message is in a block, and raises an omission
    /// if the deadline passes without one.
    Receipt {
        /// The receipt file.
        file: PathBuf,
        /// The auditor's endpoint.
        #[arg(
            long,
            env = "BLOCKPOST_AUDITOR",
            default_value = "http://127.0.0.1:7800"
        )]
        auditor: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Full-text search over every message the auditor verified (tantivy query syntax:
    /// `body:Megacorp AND sender_name:"Bank A"`, `transaction_id:settle-42`,
    /// `time:[1700000000000 TO 1800000000000]`); each hit with its block and proofs.
    Search {
        /// The query.
        query: String,
        /// The auditor's endpoint.
        #[arg(
            long,
            env = "BLOCKPOST_AUDITOR",
            default_value = "http://127.0.0.1:7800"
        )]
        auditor: String,
        /// Hits to show (at most 100).
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// Hits to skip.
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Newest first instead of by relevance (words of bodies) or index order (filters:
        /// exact fields, names, ranges).
        #[arg(long)]
        by_time: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// A running auditor's witness key (what nodes and clients configure with
    /// `--witness`) and the newest checkpoints it cosigned.
    Witness {
        /// The auditor's endpoint.
        #[arg(
            long,
            env = "BLOCKPOST_AUDITOR",
            default_value = "http://127.0.0.1:7800"
        )]
        auditor: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where a running auditor stands.
    Status {
        /// The auditor's endpoint.
        #[arg(
            long,
            env = "BLOCKPOST_AUDITOR",
            default_value = "http://127.0.0.1:7800"
        )]
        auditor: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A receipt file, as `send --receipt-out` writes it: the auditor's own record of a
/// receipt (body, signature and batch, hex), so that one form serves both.
pub use blockpost_auditor::ReceiptRecord as ReceiptFile;

async fn audit_client(endpoint: &str) -> anyhow::Result<AuditClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the auditor at {endpoint}"))?;
    Ok(AuditClient::new(channel))
}

/// Hands `receipt` to the auditor at `endpoint` and prints its verdict.
pub async fn hand_in(
    endpoint: &str,
    receipt: blockpost_proto::v1::Receipt,
    json: bool,
) -> anyhow::Result<()> {
    let r = audit_client(endpoint)
        .await?
        .check_receipt(CheckReceiptRequest {
            receipt: Some(receipt),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the auditor refused the receipt: {}", s.message()))?
        .into_inner();
    render::receipt_verdict(&r, json)
}

/// Runs the auditor until Ctrl-C or SIGTERM, printing alerts as they come and its status
/// every 10 s.
pub async fn run_auditor(args: AuditorArgs) -> anyhow::Result<()> {
    let args = args.with_file()?;
    let auth = args
        .nats_credentials
        .as_deref()
        .map(blockpost_node::NatsAuth::from_file)
        .transpose()?;
    let nats = blockpost_node::connect(&args.nats, auth.as_ref()).await?;
    let mut config = AuditorConfig::new(args.node.clone(), args.data.clone());
    config.grace_ms = args.grace_ms;
    config.watch = args.watch.clone();
    for spec in &args.open_for {
        let Some((address, file)) = spec.split_once('=') else {
            anyhow::bail!("--open-for {spec:?}: expected ADDRESS=KEYRING (or ADDRESS=KEYFILE)");
        };
        blockpost_core::Address::parse(address).with_context(|| format!("--open-for {spec:?}"))?;
        let path = std::path::Path::new(file);
        let keys = crate::keys::read_keys(path).with_context(|| format!("--open-for {address}"))?;
        let mut generations = std::collections::HashMap::new();
        if let crate::keys::Keys::Ring(ring) = &keys {
            ring.check_address(address)
                .with_context(|| format!("--open-for {spec}"))?;
            for g in ring.generations() {
                if let Some(i) = g.leaf_index {
                    generations.insert(i, g.identity.clone());
                }
            }
        }
        config.open_for.push(blockpost_auditor::OpenFor {
            address: address.to_owned(),
            // A revoked keyring still opens what was sealed to it.
            keys: std::sync::Arc::new(match &keys {
                crate::keys::Keys::Ring(r) => r.signing().map_or_else(
                    |_| r.generations()[r.generations().len() - 1].identity.clone(),
                    |g| g.identity.clone(),
                ),
                crate::keys::Keys::File(id) => id.clone(),
            }),
            generations: std::sync::Arc::new(generations),
        });
    }
    if let Some(url) = &args.alerts_nats {
        let auth = args
            .alerts_nats_credentials
            .as_deref()
            .map(blockpost_node::NatsAuth::from_file)
            .transpose()?;
        let c = blockpost_node::connect(url, auth.as_ref()).await?;
        config.publish = Some((c, args.alerts_subject.clone()));
    }
    config.connect = blockpost_client::ConnectOptions {
        tls_ca: args.tls_ca.clone(),
        tls_pin: args.tls_pin.clone(),
        ..Default::default()
    };
    config.witness_name = args.witness_name.clone();
    config.witness_subject = args.witness_subject.clone();
    let auditor = Auditor::start(config, nats).await?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        tokio::spawn(progress(auditor.clone()));
    }
    let grpc = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving blockpost.v1.Audit");
    let metrics = match args.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(listen = %addr, "serving /metrics and /healthz");
            Some(l)
        }
        None => None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(blockpost_auditor::serve(
        auditor.clone(),
        blockpost_auditor::Listeners { grpc, metrics },
        async {
            let _ = stopped.await;
        },
    ));
    let mut alerts = auditor.subscribe();
    let mut status = tokio::time::interval(Duration::from_secs(10));
    let shutdown = crate::up::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            a = alerts.recv() => match a {
                Ok((_, a)) => render::alert(&a, args.json)?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "alerts printed too slowly; see alerts.jsonl");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = status.tick() => render::audit_status(&auditor.status(), args.json)?,
        }
    }
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => anyhow::bail!("the auditor's server task failed: {e}"),
        Err(_) => tracing::warn!("open Audit streams did not end within 5 s; stopping anyway"),
    }
    render::audit_status(&auditor.status(), args.json)?;
    Ok(())
}

/// `blockpost audit ...`.
pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Alerts {
            auditor: Some(endpoint),
            follow,
            json,
            ..
        } => {
            let mut s = audit_client(&endpoint)
                .await?
                .alerts(AlertsRequest { from: 0, follow })
                .await?
                .into_inner();
            while let Some(a) = s.message().await? {
                render::audit_alert(&a, json)?;
            }
            Ok(())
        }
        AuditCmd::Alerts {
            auditor: None,
            data,
            follow,
            json,
        } => {
            let data = data.unwrap_or_else(|| PathBuf::from("blockpost-auditor"));
            alerts(&data, follow, json).await
        }
        AuditCmd::Receipt {
            file,
            auditor,
            json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rf: ReceiptFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a receipt file", file.display()))?;
            let receipt = rf.receipt().map_err(|why| {
                anyhow::anyhow!("{} is not a receipt file: {why}", file.display())
            })?;
            hand_in(&auditor, receipt, json).await
        }
        AuditCmd::Search {
            query,
            auditor,
            limit,
            offset,
            by_time,
            json,
        } => {
            let r = audit_client(&auditor)
                .await?
                .search(SearchRequest {
                    query,
                    limit,
                    offset,
                    by_time,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            for h in &r.hits {
                render::search_hit(h, json)?;
            }
            Ok(())
        }
        AuditCmd::Witness { auditor, json } => {
            let w = audit_client(&auditor)
                .await?
                .get_witness(blockpost_proto::v1::GetWitnessRequest {})
                .await?
                .into_inner();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "witness_key": w.witness_key,
                        "directory_checkpoint": text(&w.directory_checkpoint),
                        "ledger_checkpoint": text(&w.ledger_checkpoint),
                    })
                );
            } else {
                println!("witness key: {}", w.witness_key);
                for (log, note) in [
                    ("directory", &w.directory_checkpoint),
                    ("ledger", &w.ledger_checkpoint),
                ] {
                    if note.is_empty() {
                        println!("\nno {log} checkpoint cosigned yet");
                    } else {
                        println!("\nnewest {log} checkpoint cosigned:\n{}", text(note));
                    }
                }
            }
            Ok(())
        }
        AuditCmd::Status { auditor, json } => {
            let s = audit_client(&auditor)
                .await?
                .get_audit_status(GetAuditStatusRequest {})
                .await?
                .into_inner();
            render::audit_status(
                &blockpost_auditor::AuditStatus {
                    blocks_verified: s.blocks_verified,
                    firehose_checked: s.firehose_checked,
                    waiting: usize::try_from(s.waiting).unwrap_or(usize::MAX),
                    alerts: usize::try_from(s.alerts).unwrap_or(usize::MAX),
                    blocks_current: s.blocks_current,
                    ledger: s.ledger,
                    receipts_waiting: usize::try_from(s.receipts_waiting).unwrap_or(usize::MAX),
                    directory_entries: s.directory_entries,
                    directory_checkpoint: s.directory_checkpoint,
                    ledger_checkpoint: s.ledger_checkpoint,
                    firehose_lag: s.firehose_lag,
                    blocks_lag: s.blocks_lag,
                    seconds_since_progress: s.seconds_since_progress,
                    firehose_read: s.firehose_read,
                    checked_until_ms: s.checked_until_ms,
                },
                json,
            )
        }
    }
}

/// On a terminal: a progress bar while the auditor catches up with the node (firehose
/// messages checked of those on the stream, blocks verified, rate), until it is current.
async fn progress(auditor: Auditor) {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "catching up {bar:30} {pos}/{len} firehose messages ({per_sec}, eta {eta})  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    // Give the streams a moment to report their length.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    loop {
        tick.tick().await;
        let s = auditor.status();
        pb.set_length(s.firehose_checked + s.firehose_lag);
        pb.set_position(s.firehose_checked);
        pb.set_message(format!(
            "blocks {}/{}  directory {}  alerts {}",
            s.blocks_verified,
            s.blocks_verified + s.blocks_lag,
            s.directory_entries,
            s.alerts
        ));
        if s.firehose_lag == 0 && s.blocks_current {
            pb.finish_and_clear();
            eprintln!(
                "caught up in {:.1} s: {} firehose messages, {} blocks, {} directory entries; {} alerts",
                pb.elapsed().as_secs_f64(),
                s.firehose_checked,
                s.blocks_verified,
                s.directory_entries,
                s.alerts
            );
            return;
        }
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
