//! `blockpost export` and `blockpost verify`: evidence bundles, one file per transaction
//! or message, checked offline (`blockpost_core::bundle`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_client::bundle::{Subject, export, from_zip, to_zip};
use blockpost_client::{BodyKeys, Client, Ledger, config_dir};
use blockpost_core::bundle::Trust;

use crate::keys::{Keys, address_for, read_keys};
use crate::{Conn, render};

/// `blockpost export ...`.
#[derive(clap::Subcommand)]
pub enum ExportCmd {
    /// A transaction: every message as signed, its closing record, and all that proves
    /// them (see docs/evidence.md).
    Tx {
        /// The transaction id.
        id: String,
        #[command(flatten)]
        out: ExportArgs,
    },
    /// One message, and all that proves it.
    Message {
        /// The message id (64 hex digits).
        id: String,
        #[command(flatten)]
        out: ExportArgs,
    },
}

/// Where the bundle goes, and what the holder adds.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The bundle file to write (never overwritten).
    #[arg(short, long)]
    out: PathBuf,
    /// A gateway receipt kept with `send --receipt-out`; repeat for several.
    #[arg(long = "receipt", value_name = "FILE")]
    receipts: Vec<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

/// `blockpost verify FILE`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The bundle.
    file: PathBuf,
    /// The keys to trust: `blockpost info --json` of the node, saved when it was trusted
    /// (or as the operator publishes it). Without it, the keys in the bundle are used, and
    /// the report says so.
    #[arg(long, value_name = "INFO_JSON")]
    trust: Option<PathBuf>,
    /// A witness verifier key to require (replaces the bundle's); repeat for several.
    #[arg(long = "witness", value_name = "KEY")]
    witnesses: Vec<String>,
    /// How many witnesses must have cosigned the ledger and directory checkpoints.
    #[arg(long, default_value_t = 0)]
    min_witnesses: usize,
    /// A keyring (or key file): open the bodies sealed to its holder.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page.
    #[arg(long, value_name = "OUT")]
    html: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `export`.
pub async fn run_export(cmd: ExportCmd) -> anyhow::Result<()> {
    let (subject, out) = match &cmd {
        ExportCmd::Tx { id, out } => (Subject::Transaction(id), out),
        ExportCmd::Message { id, out } => {
            let bytes = hex::decode(id)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{id:?} is not a message id (64 hex digits)"))?;
            (Subject::Message(bytes), out)
        }
    };
    if out.out.exists() {
        bail!("{} exists; refusing to overwrite it", out.out.display());
    }
    let mut receipts = Vec::new();
    for f in &out.receipts {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let rf: crate::audit::ReceiptFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a receipt file", f.display()))?;
        receipts.push(
            rf.receipt()
                .map_err(|why| anyhow::anyhow!("{} is not a receipt file: {why}", f.display()))?,
        );
    }
    let mut c =
        Client::connect_with(&out.conn.endpoint, &config_dir(), &out.conn.options()).await?;
    let mut l = Ledger::connect(&c, &config_dir()).await?;
    let members = export(&mut c, &mut l, subject, &receipts, blockpost_core::now_ms()).await?;
    let zip = to_zip(&members)?;
    blockpost_files::write_new(&out.out, &zip, false)
        .with_context(|| format!("writing {} (never overwritten)", out.out.display()))?;
    render::exported(&out.out, &members, zip.len(), out.conn.json)
}

/// The keys of `blockpost info --json`.
fn read_trust(path: &Path) -> anyhow::Result<Trust> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON (save `blockpost info --json`)",
            path.display()
        )
    })?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let t = Trust {
        directory_key: s(&v["verifier_key"]),
        ledger_key: s(&v["ledger"]["verifier_key"]),
        builder_key: s(&v["ledger"]["builder_key"]),
        gateway_keys: s(&v["gateway"]["receipt_key"]).into_iter().collect(),
        witnesses: v["witnesses"]["pinned_by_this_client"]
            .as_array()
            .map(|a| a.iter().filter_map(s).collect())
            .unwrap_or_default(),
        min_witnesses: 0,
    };
    if t.directory_key.is_none() || t.ledger_key.is_none() {
        bail!(
            "{} names no directory and ledger keys: give the output of `blockpost info --json`",
            path.display()
        );
    }
    Ok(t)
}

/// Runs `verify`.
pub fn run_verify(a: VerifyArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let members = from_zip(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let mut trust = match &a.trust {
        Some(p) => read_trust(p)?,
        None => Trust::default(),
    };
    if !a.witnesses.is_empty() {
        trust.witnesses = a.witnesses.clone();
    }
    trust.min_witnesses = a.min_witnesses;
    let report = blockpost_core::bundle::verify(&members, &trust)
        .map_err(|e| anyhow::anyhow!("{} does not verify: {e}", a.file.display()))?;
    // Bodies sealed to the holder of --key, opened.
    let mut opened = vec![None; report.messages.len()];
    if let Some(k) = &a.key {
        let me = address_for(k, None, "--address")?;
        let keys = read_keys(k)?;
        let file_keys;
        let reader: &dyn BodyKeys = match &keys {
            Keys::Ring(r) => r,
            Keys::File(id) => {
                file_keys = (me.as_str(), id);
                &file_keys
            }
        };
        for (i, m) in report.messages.iter().enumerate() {
            if let Some(blockpost_proto::v1::envelope_content::Body::Encrypted(e)) = &m.content.body
                && m.content.recipients.iter().any(|r| r == me.as_str())
            {
                opened[i] = Some(
                    blockpost_client::open_sealed(e, &m.content, reader)
                        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned()),
                );
            }
        }
    }
    // Every sealed body opened: the report's note about them no longer holds.
    let mut report = report;
    let sealed = report.messages.iter().filter(|m| m.sealed).count();
    let opened_all =
        sealed > 0 && opened.iter().filter(|o| matches!(o, Some(Ok(_)))).count() == sealed;
    if opened_all {
        report
            .not_proved
            .retain(|n| !n.starts_with("sealed bodies"));
    }
    if let Some(out) = &a.html {
        std::fs::write(out, render::evidence_html(&a.file, &report, &opened))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    render::evidence(&a.file, &report, &opened, a.json)
}
