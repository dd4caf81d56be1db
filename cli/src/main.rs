//! The `blockpost` binary: every Blockpost service and the client. This file only parses
//! flags and dispatches; each command family lives in its own module, and all output in
//! `render`.
//!
//! # Layout
//! - `up`: `blockpost up`, a node from `blockpost-node`.
//! - `keys`: reading key files and keyrings, passphrases, evidence keys, recorded addresses.
//! - `keyring`: `blockpost key new|list|import|sync|backup|recover`.
//! - `directory`: `info`, `register`, `lookup`, `rotate`, `revoke`, `checkpoint`.
//! - `messages`: `send`, `finish`, `inbox`, `firehose`.
//! - `ledger`: `block`, `message`, `tx`: blocks, messages and transactions from the ledger,
//!   verified.
//! - `audit`: `blockpost auditor` (the daemon) and `audit alerts`.
//! - `evidence`: `export tx|message` and `verify`: evidence bundles.
//! - `explorer`: `blockpost explorer`, the web explorer from `blockpost-explorer`.
//! - `anchor`: `anchor verify`: OpenTimestamps proofs of the ledger's Bitcoin anchors.
//! - `bench`: `blockpost bench directory|messages|attack|blocks|audit|cluster`, only in a
//!   binary built with the `bench` feature (load generators and SQLite stay out of the
//!   production binary).
//! - `render`: every human and `--json` output.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod anchor;
mod audit;
#[cfg(feature = "bench")]
mod bench;
mod directory;
mod evidence;
mod explorer;
mod keyring;
mod keys;
mod ledger;
mod messages;
mod render;
mod up;

#[derive(Parser)]
#[command(
    name = "blockpost",
    version,
    about = "Blockpost: auditable messaging around a transparency-log key directory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a client trusts a node: its TLS key or CA, and the witnesses it requires.
#[derive(clap::Args, Clone)]
pub struct Trust {
    /// With an https:// endpoint: verify the node's certificate against the CA
    /// certificates in this PEM file (for instance the node's keys/ca.pem), instead of
    /// pinning its key on first contact.
    #[arg(long, env = "BLOCKPOST_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// With an https:// endpoint: the node's TLS key pin (sha256:HEX, as `blockpost up`
    /// logs it), required from the first contact on.
    #[arg(long, env = "BLOCKPOST_TLS_PIN", value_name = "PIN")]
    tls_pin: Option<String>,
    /// A witness (auditor) whose cosignatures the client trusts: its verifier key
    /// (name+id+base64, as `blockpost auditor` logs it and `blockpost audit witness`
    /// prints it). Repeat for several. Look-ups are then proved against checkpoints they
    /// cosigned, and a checkpoint without enough cosignatures is refused.
    #[arg(
        long = "witness",
        env = "BLOCKPOST_WITNESSES",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned (default: 1 when any is given).
    #[arg(long, env = "BLOCKPOST_MIN_WITNESSES", value_name = "N")]
    min_witnesses: Option<usize>,
}

impl Trust {
    /// The client's connect options.
    pub fn options(&self) -> blockpost_client::ConnectOptions {
        blockpost_client::ConnectOptions {
            tls_ca: self.tls_ca.clone(),
            tls_pin: self.tls_pin.clone(),
            witnesses: self.witnesses.clone(),
            min_witnesses: self
                .min_witnesses
                .unwrap_or(usize::from(!self.witnesses.is_empty())),
        }
    }
}

/// How to reach a node, and how to print.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Node gRPC endpoint.
    #[arg(
        long,
        env = "BLOCKPOST_ENDPOINT",
        default_value = "http://127.0.0.1:7700"
    )]
    endpoint: String,
    #[command(flatten)]
    trust: Trust,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Conn {
    /// How to verify the node's TLS certificate.
    pub fn options(&self) -> blockpost_client::ConnectOptions {
        self.trust.options()
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node: directory and messaging gateway on one gRPC port, over NATS JetStream.
    Up(up::UpArgs),
    /// Key files and keyrings: new, list, import, sync, backup, recover.
    Key {
        #[command(subcommand)]
        cmd: keyring::KeyCmd,
    },
    #[command(flatten)]
    Directory(directory::DirectoryCmd),
    #[command(flatten)]
    Messages(messages::MessageCmd),
    #[command(flatten)]
    Ledger(ledger::LedgerCmd),
    /// Write an evidence bundle: one file that proves a transaction or a message offline.
    Export {
        #[command(subcommand)]
        cmd: evidence::ExportCmd,
    },
    /// Check an evidence bundle offline and report what it proves.
    Verify(evidence::VerifyArgs),
    /// Anchors of the ledger in Bitcoin: check their OpenTimestamps proofs.
    Anchor {
        #[command(subcommand)]
        cmd: anchor::AnchorCmd,
    },
    /// Run an auditor: re-verify a node's blocks and firehose from NATS, and raise alerts
    /// with evidence (to stdout and DATA/alerts.jsonl).
    Auditor(audit::AuditorArgs),
    /// The web explorer: blocks, transactions, participants, the directory log, alerts
    /// and search, each verified before it is shown (HTML and JSON).
    Explorer(explorer::ExplorerArgs),
    /// What an auditor found.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Print the read-only NATS user of a node's managed nats-server, for auditors and
    /// monitors (they may read the directory and firehose streams, and publish nothing).
    NatsCredentials {
        /// The node's data directory.
        #[arg(long, env = "BLOCKPOST_DATA", default_value = "blockpost-data")]
        data: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load generators (in a binary built with `--features bench`).
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLOCKPOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,blockpost=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Up(args) => up::run(args).await,
        Cmd::Key { cmd } => keyring::run(cmd).await,
        Cmd::Directory(cmd) => directory::run(cmd).await,
        Cmd::Messages(cmd) => messages::run(cmd).await,
        Cmd::Ledger(cmd) => ledger::run(cmd).await,
        Cmd::Anchor { cmd } => anchor::run(cmd),
        Cmd::Export { cmd } => evidence::run_export(cmd).await,
        Cmd::Verify(args) => evidence::run_verify(args),
        Cmd::Auditor(args) => audit::run_auditor(args).await,
        Cmd::Explorer(args) => explorer::run(args).await,
        Cmd::Audit { cmd } => audit::run(cmd).await,
        Cmd::NatsCredentials { data, json } => up::nats_credentials(&data, json),
        #[cfg(feature = "bench")]
        Cmd::Bench { cmd } => bench::run(cmd).await,
    }
}
