//! `blockpost block`, `blockpost message` and `blockpost tx`: blocks and messages from the node's ledger,
//! each verified before it is printed (header signature, chain link, Merkle root or
//! inclusion proof, ledger proof), the builder's keys pinned on first contact.

use anyhow::Context as _;
use blockpost_client::{Client, Ledger, config_dir};

use crate::{Conn, render};

/// Ledger commands.
#[derive(clap::Subcommand)]
pub enum LedgerCmd {
    /// Show a block, verified: `blockpost block 3` or `blockpost block latest`.
    Block {
        /// A height, or `latest`.
        at: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show where a message is in the ledger, verified: its block, inclusion proof and
    /// ledger proof.
    Message {
        /// The message id (64 hex digits, as receipts show it).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a transaction, verified: its status (open, finished, timed out), parties,
    /// every message and its closing record, each with its proofs.
    Tx {
        /// The transaction id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

async fn connect(conn: &Conn) -> anyhow::Result<Ledger> {
    let c = Client::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
    Ok(Ledger::connect(&c, &config_dir()).await?)
}

/// Runs one ledger command.
pub async fn run(cmd: LedgerCmd) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Block { at, conn } => {
            let height = match at.as_str() {
                "latest" => None,
                h => Some(h.parse::<u64>().with_context(|| {
                    format!("{h:?} is not a block height (a number, or latest)")
                })?),
            };
            let mut l = connect(&conn).await?;
            let b = l.block(height).await?;
            render::block(&b, conn.json)
        }
        LedgerCmd::Message { id, conn } => {
            let bytes = hex::decode(&id)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{id:?} is not a message id (64 hex digits)"))?;
            let mut l = connect(&conn).await?;
            let m = l.message(bytes).await?;
            render::ledger_message(&m, conn.json)
        }
        LedgerCmd::Tx { id, conn } => {
            let mut c =
                Client::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
            let mut l = Ledger::connect(&c, &config_dir()).await?;
            let t = l.transaction(&id).await?;
            // Real names (and LEIs) for the settlement summary, from verified look-ups.
            let mut names = std::collections::HashMap::new();
            let settles = t.messages.iter().any(|m| {
                blockpost_core::decode_canonical::<blockpost_proto::v1::EnvelopeContent>(
                    &m.envelope.content,
                    "content",
                )
                .is_ok_and(|c| blockpost_core::settle_expect(c.kind()).is_some())
            });
            if settles {
                for a in &t.state.parties {
                    if let Ok(e) = c.current(a).await {
                        names.insert(
                            a.clone(),
                            render::Named {
                                real_name: e.binding.real_name.clone(),
                                lei: e.binding.lei.clone(),
                                verified: e.binding.verified,
                            },
                        );
                    }
                }
            }
            render::transaction(&t, &names, conn.json)
        }
    }
}
