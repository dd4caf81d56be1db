//! `send`, `finish`, `inbox`, `firehose`: the messaging commands.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use blockpost_client::{Messenger, Outgoing, config_dir};
use blockpost_core::Address;
use blockpost_proto::v1::MessageKind;

use crate::keys::{Keys, address_for, read_key, read_keys};
use crate::{Conn, render};

/// Who sends what to whom, about which transaction.
#[derive(clap::Args)]
pub struct MsgArgs {
    /// Keyring or key file of the sender (a keyring signs with its current generation).
    #[arg(long)]
    key: PathBuf,
    /// Sender address (default: the one `register` recorded beside the key file).
    #[arg(long)]
    from: Option<String>,
    /// Recipients, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Transaction id (a trade, a settlement, an agreement).
    #[arg(long)]
    tx: String,
    /// Escrow: also address (and, with --encrypt, seal) the message to these
    /// participants, such as a regulator whose auditor runs with `--open-for`. A policy
    /// sets it once with BLOCKPOST_ALSO_SEAL_TO. They become recipients, and so parties of
    /// the transaction: it finishes when they send `finish` too.
    #[arg(
        long,
        env = "BLOCKPOST_ALSO_SEAL_TO",
        value_delimiter = ',',
        value_name = "ADDRESS"
    )]
    also_seal_to: Vec<String>,
    /// Write the gateway's signed receipt to this file (JSON), to hand to an auditor
    /// later (`blockpost audit receipt FILE`).
    #[arg(long, value_name = "FILE")]
    receipt_out: Option<PathBuf>,
    /// Hand the receipt to the auditor at this endpoint at once: it raises an omission if
    /// the message is in no block by the receipt's deadline.
    #[arg(long, value_name = "ENDPOINT")]
    audit: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// The messaging commands.
#[derive(clap::Subcommand)]
pub enum MessageCmd {
    /// Send a message about a transaction (signed; --encrypt seals it to each recipient).
    Send {
        #[command(flatten)]
        msg: MsgArgs,
        /// Seal the body end to end for each recipient (HPKE); metadata stays public.
        #[arg(long)]
        encrypt: bool,
        /// Send a file as a document (instead of TEXT).
        #[arg(long, conflicts_with_all = ["text", "trade", "instruction"])]
        file: Option<PathBuf>,
        /// Send a trade: a FIX 4.4 ExecutionReport (35=8) or AllocationInstruction (35=J),
        /// tag=value with SOH or `|`. Checked (identifiers, dates, amounts, parties against
        /// the sender's and recipients' directory bindings) before it is sent.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["text", "instruction"])]
        trade: Option<PathBuf>,
        /// Send a settlement instruction: an ISO 20022 sese.023 XML document, checked
        /// likewise.
        #[arg(long, value_name = "FILE", conflicts_with = "text")]
        instruction: Option<PathBuf>,
        /// With --instruction: a signed ledger transaction for the node to deliver once
        /// every party has finished the transaction (never if it times out), as
        /// `bitcoin:FILE` (FILE: the raw transaction in hex). Sealed to the recipients and
        /// the node's delivery key; the record shows only the ledger and the txid.
        #[arg(long, value_name = "LEDGER:FILE", requires = "instruction")]
        deliver: Option<String>,
        /// Record only the SHA-256 of --file, not its contents.
        #[arg(long, requires = "file")]
        hash_only: bool,
        /// MIME type of the body (default: text/plain, or application/octet-stream for files).
        #[arg(long)]
        content_type: Option<String>,
        /// On the transaction's first message: time it out this many seconds from now
        /// unless every party has sent `finish` (default: the ledger's timeout, one hour).
        #[arg(long, value_name = "SECONDS")]
        tx_deadline: Option<u64>,
        /// The message text.
        text: Option<String>,
    },
    /// Tell the other parties that this party considers the transaction finished.
    Finish {
        #[command(flatten)]
        msg: MsgArgs,
        /// Seal the note end to end.
        #[arg(long)]
        encrypt: bool,
        /// An optional closing note.
        text: Option<String>,
    },
    /// Read your inbox: verifies every signature against the directory, decrypts what is
    /// addressed to you, and acknowledges what it printed.
    Inbox {
        /// Keyring or key file (a keyring opens what was sealed to any of its generations).
        #[arg(long)]
        key: PathBuf,
        /// Your address (default: the one `register` recorded beside the key file).
        #[arg(long)]
        from: Option<String>,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read the public firehose (every accepted envelope, in order).
    Firehose {
        /// First sequence number (in each partition read).
        #[arg(long = "from", default_value_t = 1)]
        from_seq: u64,
        /// Read only this partition of the firehose (0 to the number the gateway states,
        /// less one); by default every partition, one after the other (with --follow, all
        /// at once). Lines of partitions other than 0 show `#partition:sequence`.
        #[arg(long)]
        partition: Option<u32>,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs one messaging command.
pub async fn run(cmd: MessageCmd) -> anyhow::Result<()> {
    match cmd {
        MessageCmd::Send {
            msg,
            encrypt,
            file,
            trade,
            instruction,
            deliver,
            hash_only,
            content_type,
            tx_deadline,
            text,
        } => {
            if deliver.is_some() && instruction.is_none() {
                bail!(
                    "--deliver goes with --instruction FILE: only a settlement instruction \
                     carries a ledger transaction"
                );
            }
            let settlement = match (trade, instruction) {
                (Some(f), _) => Some((MessageKind::Trade, f)),
                (None, Some(f)) => Some((MessageKind::SettlementInstruction, f)),
                (None, None) => None,
            };
            let (kind, ct, body) = match (settlement, file, text) {
                (Some((kind, f)), _, _) => {
                    let bytes =
                        std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    let detected = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(blockpost_core::settle::detect);
                    let ct = match detected {
                        Some(blockpost_core::settle::Detected::Fix) => "application/fix",
                        Some(blockpost_core::settle::Detected::Xml) => "application/xml",
                        None => bail!(
                            "{} is neither FIX tag=value (8=FIX.4.4|...) nor XML",
                            f.display()
                        ),
                    };
                    (kind, content_type.unwrap_or_else(|| ct.into()), bytes)
                }
                (None, Some(f), _) => {
                    let bytes =
                        std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    if hash_only {
                        let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                        (
                            MessageKind::Document,
                            "text/x-sha256".to_owned(),
                            h.into_bytes(),
                        )
                    } else {
                        let ct = content_type.unwrap_or_else(|| "application/octet-stream".into());
                        (MessageKind::Document, ct, bytes)
                    }
                }
                (None, None, Some(t)) => (
                    MessageKind::Message,
                    content_type.unwrap_or_else(|| "text/plain".into()),
                    t.into_bytes(),
                ),
                (None, None, None) => {
                    bail!("give the message TEXT, --file PATH, --trade FILE or --instruction FILE")
                }
            };
            let deadline = tx_deadline
                .map(|s| {
                    i64::try_from(s.saturating_mul(1000))
                        .ok()
                        .and_then(|d| blockpost_core::now_ms().checked_add(d))
                        .with_context(|| format!("--tx-deadline {s} is too far away"))
                })
                .transpose()?;
            let delivery = deliver.map(|d| read_delivery(&d)).transpose()?;
            send(msg, kind, ct, body, encrypt, deadline, delivery).await
        }
        MessageCmd::Finish { msg, encrypt, text } => {
            let body = text
                .unwrap_or_else(|| "Transaction finished.".into())
                .into_bytes();
            send(
                msg,
                MessageKind::Finish,
                "text/plain".into(),
                body,
                encrypt,
                None,
                None,
            )
            .await
        }
        MessageCmd::Inbox {
            key,
            from,
            follow,
            conn,
        } => {
            let me = address_for(&key, from, "--from")?;
            let keys = read_keys(&key)?;
            let id = keys.signing()?.clone();
            let mut m =
                Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
            let json = conn.json;
            let file_keys = (me.as_str(), &id);
            let opener: &dyn blockpost_client::BodyKeys = match &keys {
                Keys::Ring(r) => r,
                Keys::File(_) => &file_keys,
            };
            let n = m
                .inbox_with(&id, me.as_str(), opener, follow, |r| {
                    render::received(r, json)
                })
                .await?;
            if !json {
                eprintln!(
                    "{n} message(s); signatures verified against the directory; acknowledged"
                );
            }
            Ok(())
        }
        MessageCmd::Firehose {
            from_seq,
            partition,
            follow,
            conn,
        } => {
            let mut m =
                Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
            let json = conn.json;
            let partitions = match partition {
                Some(k) => vec![k],
                None => {
                    let info = m
                        .grpc()
                        .get_gateway_info(blockpost_proto::v1::GetGatewayInfoRequest {})
                        .await?
                        .into_inner();
                    (0..info.firehose_partitions.max(1)).collect()
                }
            };
            if !follow || partitions.len() == 1 {
                for k in partitions {
                    m.firehose(k, from_seq, follow, |r| render::received(r, json))
                        .await?;
                }
                return Ok(());
            }
            // Following every partition: one reader each, lines as they come.
            let mut readers = tokio::task::JoinSet::new();
            let mut first = Some(m);
            for k in partitions {
                let mut m = match first.take() {
                    Some(m) => m,
                    None => {
                        Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options())
                            .await?
                    }
                };
                readers.spawn(async move {
                    m.firehose(k, from_seq, true, |r| render::received(r, json))
                        .await
                });
            }
            while let Some(r) = readers.join_next().await {
                r??;
            }
            Ok(())
        }
    }
}

/// `bitcoin:FILE`: the raw transaction in FILE (hex), checked as a signed Bitcoin
/// transaction.
fn read_delivery(arg: &str) -> anyhow::Result<Vec<u8>> {
    use blockpost_core::delivery::TargetLedger as _;
    let Some(("bitcoin", path)) = arg.split_once(':') else {
        bail!("--deliver {arg}: give LEDGER:FILE; the ledger this version delivers to is bitcoin");
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let raw = hex::decode(text.trim())
        .with_context(|| format!("{path} is not a raw transaction in hex"))?;
    blockpost_core::delivery::Bitcoin
        .commitment(&raw)
        .with_context(|| path.to_string())?;
    Ok(raw)
}

async fn send(
    m: MsgArgs,
    kind: MessageKind,
    content_type: String,
    body: Vec<u8>,
    encrypt: bool,
    transaction_deadline_ms: Option<i64>,
    delivery: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    let from = address_for(&m.key, m.from, "--from")?;
    let mut to = m.to.clone();
    for a in &m.also_seal_to {
        if !to.contains(a) && *a != from.as_str() {
            to.push(a.clone());
        }
    }
    for r in &to {
        Address::parse(r)?;
    }
    let id = read_key(&m.key)?;
    let mut messenger =
        Messenger::connect_with(&m.conn.endpoint, &config_dir(), &m.conn.options()).await?;
    let out = Outgoing {
        delivery: delivery.map(|raw| blockpost_client::Delivery {
            ledger: &blockpost_core::delivery::Bitcoin,
            raw,
        }),
        from: from.as_str(),
        to: &to,
        transaction_id: &m.tx,
        kind,
        content_type: &content_type,
        body,
        encrypt,
        transaction_deadline_ms,
    };
    let (_, signed, r) = messenger.send_receipted(&id, out).await?;
    if let Some(path) = &m.receipt_out {
        let text = serde_json::to_string_pretty(&crate::audit::ReceiptFile::of(&signed))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    render::receipt(&r, m.conn.json)?;
    if let Some(auditor) = &m.audit {
        crate::audit::hand_in(auditor, signed, m.conn.json).await?;
    }
    Ok(())
}
