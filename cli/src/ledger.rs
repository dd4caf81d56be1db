//! `blockpost block`, `blockpost message` and `blockpost tx`: blocks and messages from the node's ledger,
//! each verified before it is printed (header signature, chain link, Merkle root or
//! inclusion proof, ledger proof), the builder's keys pinned on first contact.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_client::{BodyKeys, Client, Ledger, Messenger, Received, config_dir};
use blockpost_proto::v1::EnvelopeContent;

use crate::keys::{Keys, address_for, read_keys};
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
        /// A keyring (or key file): open the body if it is sealed to its holder, in any
        /// generation of its keys.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a transaction, verified: its status (open, finished, timed out), parties,
    /// every message and its closing record, each with its proofs.
    Tx {
        /// The transaction id.
        id: String,
        /// A keyring (or key file): open every body sealed to its holder, in any
        /// generation of its keys.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every message a participant sent or received, from the ledger (not the inbox, which
    /// is a delivery queue), each verified in its block and against the sender's key, and
    /// opened where it was sealed to the participant.
    History {
        /// The participant's keyring (or key file).
        #[arg(long)]
        key: PathBuf,
        /// Only messages sent at or after this time (RFC 3339, or a date: 2026-12-01).
        #[arg(long)]
        since: Option<String>,
        /// Only this transaction.
        #[arg(long)]
        tx: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// A participant's keys, opened for reading bodies.
struct Reader {
    keys: Keys,
    address: String,
    path: PathBuf,
}

impl Reader {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let address = address_for(path, None, "--address")?.as_str().to_owned();
        Ok(Self {
            keys: read_keys(path)?,
            address,
            path: path.to_owned(),
        })
    }

    /// Opens `env` for the reader, checking the sender's signature.
    async fn read(
        &self,
        m: &mut Messenger,
        env: &blockpost_proto::v1::Envelope,
    ) -> anyhow::Result<Received> {
        let r = match &self.keys {
            Keys::Ring(ring) => m.open(env, Some(ring as &dyn BodyKeys)).await?,
            Keys::File(id) => {
                let k = (self.address.as_str(), id);
                m.open(env, Some(&k as &dyn BodyKeys)).await?
            }
        };
        Ok(r)
    }

    /// The generation a body was opened with, for people.
    fn generation(&self, r: &Received) -> Option<u32> {
        match (&self.keys, r.opened_with) {
            (Keys::Ring(ring), Some(i)) => ring.for_key_index(i).ok().map(|g| g.number),
            _ => None,
        }
    }

    fn involved(&self, c: &EnvelopeContent) -> bool {
        c.sender == self.address || c.recipients.contains(&self.address)
    }
}

fn content(env: &blockpost_proto::v1::Envelope) -> Option<EnvelopeContent> {
    blockpost_core::decode_canonical(&env.content, "envelope content").ok()
}

/// An error when bodies sealed to the reader did not open (the lines were printed).
fn unopened_error(reader: &Reader, read: &[render::Read]) -> anyhow::Result<()> {
    let missed: Vec<String> = read
        .iter()
        .filter(|x| x.received.body.is_none() && x.received.encrypted)
        .filter(|x| x.received.content.recipients.contains(&reader.address))
        .filter_map(|x| x.received.unopened.clone())
        .collect();
    if missed.is_empty() {
        return Ok(());
    }
    bail!(
        "{} body(ies) sealed to {} did not open with {}: {}",
        missed.len(),
        reader.address,
        reader.path.display(),
        missed.join("; ")
    )
}

/// The Unix ms of `--since`.
fn since_ms(s: &str) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).or_else(|_| {
        let f = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(s, &f).map(|d| d.midnight().assume_utc())
    });
    let t = t.map_err(|_| {
        anyhow::anyhow!("--since {s:?} is neither an RFC 3339 time nor a date (2026-12-01)")
    })?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?)
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
        LedgerCmd::Message { id, key, conn } => {
            let bytes = hex::decode(&id)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{id:?} is not a message id (64 hex digits)"))?;
            let reader = key.as_deref().map(Reader::open).transpose()?;
            let mut m =
                Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
            let mut l = Ledger::connect(&m.directory, &config_dir()).await?;
            let lm = l.message(bytes).await?;
            let read = match (&reader, content(&lm.envelope)) {
                (Some(reader), Some(c)) => {
                    if !reader.involved(&c) {
                        bail!(
                            "{} is the keyring of {}, who neither sent nor received message {id}",
                            reader.path.display(),
                            reader.address
                        );
                    }
                    let received = reader.read(&mut m, &lm.envelope).await?;
                    let generation = reader.generation(&received);
                    Some(render::Read {
                        received,
                        generation,
                        height: lm.header.header.height,
                        leaf_index: lm.leaf_index,
                    })
                }
                (None, Some(_)) => Some(render::Read {
                    received: m.open(&lm.envelope, None).await?,
                    generation: None,
                    height: lm.header.header.height,
                    leaf_index: lm.leaf_index,
                }),
                (_, None) => None,
            };
            render::ledger_message(&lm, read.as_ref(), conn.json)?;
            match (reader, read) {
                (Some(reader), Some(read)) => unopened_error(&reader, &[read]),
                _ => Ok(()),
            }
        }
        LedgerCmd::History {
            key,
            since,
            tx,
            conn,
        } => history(&key, since.as_deref(), tx.as_deref(), &conn).await,
        LedgerCmd::Tx { id, key, conn } => {
            let reader = key.as_deref().map(Reader::open).transpose()?;
            let mut m =
                Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
            let mut l = Ledger::connect(&m.directory, &config_dir()).await?;
            let t = l.transaction(&id).await?;
            let mut read = Vec::new();
            if let Some(reader) = &reader {
                if !t.state.parties.contains(&reader.address) {
                    bail!(
                        "{} is the keyring of {}, not a party of transaction {id} ({})",
                        reader.path.display(),
                        reader.address,
                        t.state.parties.join(", ")
                    );
                }
                for lm in &t.messages {
                    let received = reader.read(&mut m, &lm.envelope).await?;
                    read.push(render::Read {
                        generation: reader.generation(&received),
                        received,
                        height: lm.header.header.height,
                        leaf_index: lm.leaf_index,
                    });
                }
            }
            let c = &mut m.directory;
            // Real names (and LEIs, for a settlement summary) of every party, from
            // verified look-ups; a name binds for good (rotations and revocations carry it).
            let mut names = std::collections::HashMap::new();
            for a in &t.state.parties {
                if let Ok(h) = c.lookup(a).await
                    && let Some(e) = h.last()
                {
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
            render::transaction(&t, &names, &read, conn.json)?;
            match reader {
                Some(reader) => unopened_error(&reader, &read),
                None => Ok(()),
            }
        }
    }
}

/// `blockpost history`: the reader's messages, from the ledger.
async fn history(
    key: &Path,
    since: Option<&str>,
    tx: Option<&str>,
    conn: &Conn,
) -> anyhow::Result<()> {
    let since = since.map(since_ms).transpose()?;
    let reader = Reader::open(key)?;
    let mut m = Messenger::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?;
    let mut l = Ledger::connect(&m.directory, &config_dir()).await?;
    let mut read = Vec::new();
    let keep = |read: &mut Vec<render::Read>, received: Received, height, leaf_index| {
        if since.is_none_or(|s| received.content.timestamp_ms >= s) {
            let generation = reader.generation(&received);
            read.push(render::Read {
                received,
                generation,
                height,
                leaf_index,
            });
        }
    };
    if let Some(id) = tx {
        let t = l.transaction(id).await?;
        for lm in &t.messages {
            if content(&lm.envelope).is_some_and(|c| reader.involved(&c)) {
                let r = reader.read(&mut m, &lm.envelope).await?;
                keep(&mut read, r, lm.header.header.height, lm.leaf_index);
            }
        }
    } else {
        let head = l.block(None).await?;
        let top = head.block.header.header.height;
        // Block times never go back (every client checks it on the chain), so the first
        // block cut at or after --since is found by bisection; a message in it or later
        // may still be older, and is filtered by its own time.
        let mut from = 0;
        if let Some(s) = since {
            let (mut lo, mut hi) = (0, top + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if l.block(Some(mid)).await?.block.header.header.time_ms < s {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            from = lo;
        }
        for h in from..=top {
            let b = if h == top {
                head.clone()
            } else {
                l.block(Some(h)).await?
            };
            for (i, kind) in b.block.kinds.iter().enumerate() {
                let blockpost_core::block::Leaf::Message(env) = kind else {
                    continue;
                };
                if content(env).is_some_and(|c| reader.involved(&c)) {
                    let r = reader.read(&mut m, env).await?;
                    keep(&mut read, r, h, i as u64);
                }
            }
        }
    }
    render::message_history(&reader.address, &read, conn.json)?;
    unopened_error(&reader, &read)
}
