//! The builder's indexes, in a redb database (`DATA/ledger/index.redb`): message id →
//! block and leaf; transaction id → its state and its messages; the open transactions.
//!
//! The block store is the truth and the index is derived from it: a block is stored (and
//! fsynced) first, then indexed in one durable redb transaction. After a crash between the
//! two the index is one block behind, and the builder replays what it lacks from the store
//! at open — the same replay an auditor runs, which also checks every closing record. An index that is
//! ahead of the store, or names another block at its last height, is rebuilt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use blockpost_core::transaction::{Book, Entry, OpenTransaction};
use blockpost_proto::v1::{TransactionState, TransactionStatus};
use prost::Message as _;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::{Error, Result};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MESSAGES: TableDefinition<&[u8], (u64, u32)> = TableDefinition::new("messages");
const TX: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const TX_MESSAGES: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("transaction_messages");
const OPEN: TableDefinition<&str, u8> = TableDefinition::new("open_transactions");
const BLOCKS: TableDefinition<&[u8], u64> = TableDefinition::new("blocks");
const HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("headers");

/// The index format; another one is rebuilt from the store.
const FORMAT: u64 = 1;

/// Where the index stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexHead {
    /// Blocks indexed.
    pub blocks: u64,
    /// The id of the last one.
    pub last_id: [u8; 32],
    /// The last firehose sequence in them.
    pub last_seq: u64,
}

/// The indexes.
pub struct Index {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!("index: {e}"))
}

fn u64_at(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

impl Index {
    /// Opens (or creates) the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "index unreadable: rebuilding it from the block store");
                std::fs::remove_file(path).map_err(|e| db_err(format!("removing it: {e}")))?;
                Database::create(path).map_err(db_err)?
            }
        };
        let index = Self { db };
        let w = index.db.begin_write().map_err(db_err)?;
        {
            let mut meta = w.open_table(META).map_err(db_err)?;
            let format = meta
                .get("format")
                .map_err(db_err)?
                .map(|v| u64_at(v.value()));
            if format.is_none() {
                meta.insert("format", FORMAT.to_be_bytes().as_slice())
                    .map_err(db_err)?;
            }
            drop(meta);
            create_tables(&w)?;
            if format.is_some_and(|f| f != FORMAT) {
                drop(w);
                index.reset()?;
                return Ok(index);
            }
        }
        w.commit().map_err(db_err)?;
        Ok(index)
    }

    /// Empties the index (to rebuild it from the store).
    pub fn reset(&self) -> Result<()> {
        let w = self.db.begin_write().map_err(db_err)?;
        w.delete_table(META).map_err(db_err)?;
        w.delete_table(MESSAGES).map_err(db_err)?;
        w.delete_table(TX).map_err(db_err)?;
        w.delete_table(TX_MESSAGES).map_err(db_err)?;
        w.delete_table(OPEN).map_err(db_err)?;
        w.delete_table(BLOCKS).map_err(db_err)?;
        w.delete_table(HEADERS).map_err(db_err)?;
        w.open_table(META)
            .map_err(db_err)?
            .insert("format", FORMAT.to_be_bytes().as_slice())
            .map_err(db_err)?;
        create_tables(&w)?;
        w.commit().map_err(db_err)?;
        Ok(())
    }

    /// Where the index stands.
    pub fn head(&self) -> Result<IndexHead> {
        let r = self.db.begin_read().map_err(db_err)?;
        let meta = r.open_table(META).map_err(db_err)?;
        let Some(v) = meta.get("head").map_err(db_err)? else {
            return Ok(IndexHead::default());
        };
        let v = v.value();
        if v.len() != 48 {
            return Err(db_err("head record is not 48 bytes"));
        }
        let mut last_id = [0; 32];
        last_id.copy_from_slice(&v[8..40]);
        Ok(IndexHead {
            blocks: u64_at(v),
            last_id,
            last_seq: u64_at(&v[40..]),
        })
    }

    /// How many anchor records are in blocks.
    pub fn anchors_recorded(&self) -> Result<u64> {
        let r = self.db.begin_read().map_err(db_err)?;
        let meta = r.open_table(META).map_err(db_err)?;
        Ok(meta
            .get("anchors")
            .map_err(db_err)?
            .map_or(0, |v| u64_at(v.value())))
    }

    /// Where message `id` is: height and leaf index.
    pub fn locate(&self, id: &[u8; 32]) -> Result<Option<(u64, u32)>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(MESSAGES).map_err(db_err)?;
        Ok(t.get(id.as_slice()).map_err(db_err)?.map(|v| v.value()))
    }

    /// The height of the block with `id`.
    pub fn height_of(&self, id: &[u8; 32]) -> Result<Option<u64>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(BLOCKS).map_err(db_err)?;
        Ok(t.get(id.as_slice()).map_err(db_err)?.map(|v| v.value()))
    }

    /// The signed header of block `height` (encoded), if indexed.
    pub fn header(&self, height: u64) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(HEADERS).map_err(db_err)?;
        Ok(t.get(height).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// A transaction's state, if the ledger has it.
    pub fn transaction(&self, id: &str) -> Result<Option<TransactionState>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(TX).map_err(db_err)?;
        t.get(id)
            .map_err(db_err)?
            .map(|v| TransactionState::decode(v.value()).map_err(db_err))
            .transpose()
    }

    /// Whether the ledger closed transaction `id`.
    pub fn is_closed(&self, id: &str) -> Result<Option<TransactionStatus>> {
        Ok(self
            .transaction(id)?
            .map(|s| s.status())
            .filter(|s| *s != TransactionStatus::Open))
    }

    /// Message ids `offset..offset + limit` of transaction `id`, in ledger order.
    pub fn transaction_messages(&self, id: &str, offset: u32, limit: u32) -> Result<Vec<[u8; 32]>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(TX_MESSAGES).map_err(db_err)?;
        let end = offset.saturating_add(limit);
        t.range((id, offset)..(id, end))
            .map_err(db_err)?
            .map(|kv| {
                let (_, v) = kv.map_err(db_err)?;
                <[u8; 32]>::try_from(v.value()).map_err(|_| db_err("a message id is not 32 bytes"))
            })
            .collect()
    }

    /// The open transactions, as a [`Book`] with `timeout_ms`.
    pub fn book(&self, timeout_ms: u64) -> Result<Book> {
        let r = self.db.begin_read().map_err(db_err)?;
        let open = r.open_table(OPEN).map_err(db_err)?;
        let tx = r.open_table(TX).map_err(db_err)?;
        let msgs = r.open_table(TX_MESSAGES).map_err(db_err)?;
        let mut all = Vec::new();
        for kv in open.iter().map_err(db_err)? {
            let (k, _) = kv.map_err(db_err)?;
            let id = k.value();
            let s = tx
                .get(id)
                .map_err(db_err)?
                .map(|v| TransactionState::decode(v.value()).map_err(db_err))
                .transpose()?
                .ok_or_else(|| db_err(format!("open transaction {id} has no state")))?;
            let mut messages = Vec::with_capacity(s.message_count as usize);
            for kv in msgs.range((id, 0)..(id, s.message_count)).map_err(db_err)? {
                let (_, v) = kv.map_err(db_err)?;
                messages.push(
                    <[u8; 32]>::try_from(v.value())
                        .map_err(|_| db_err("a message id is not 32 bytes"))?,
                );
            }
            all.push(OpenTransaction {
                id: id.to_string(),
                opened_height: s.opened_height,
                deadline_ms: s.deadline_ms,
                parties: s.parties.into_iter().collect(),
                finished: s.finished_by.into_iter().collect(),
                messages,
            });
        }
        Ok(Book::new(timeout_ms, all))
    }

    /// Indexes block `height` (id `id`), whose leaves are `entries`; `book` holds the open
    /// transactions after it, `last_seq` the last firehose sequence in the blocks so far.
    pub fn commit(
        &self,
        height: u64,
        id: [u8; 32],
        header: &[u8],
        entries: &[Entry],
        book: &Book,
        last_seq: u64,
    ) -> Result<()> {
        // Every commit is durable: redb reuses the pages a commit frees only after a
        // durable one, and skipping the sync (Durability::None) doubled the index's size
        // on disk for no gain in speed (bench blocks).
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut messages = w.open_table(MESSAGES).map_err(db_err)?;
            let mut tx = w.open_table(TX).map_err(db_err)?;
            let mut tx_messages = w.open_table(TX_MESSAGES).map_err(db_err)?;
            let mut open = w.open_table(OPEN).map_err(db_err)?;
            let mut touched: BTreeMap<String, TransactionState> = BTreeMap::new();
            let state = |tx: &redb::Table<&str, &[u8]>,
                         touched: &mut BTreeMap<String, TransactionState>,
                         id: &str|
             -> Result<()> {
                if !touched.contains_key(id) {
                    let s = match tx.get(id).map_err(db_err)? {
                        Some(v) => TransactionState::decode(v.value()).map_err(db_err)?,
                        None => TransactionState {
                            transaction_id: id.to_string(),
                            ..Default::default()
                        },
                    };
                    touched.insert(id.to_string(), s);
                }
                Ok(())
            };
            for (i, e) in entries.iter().enumerate() {
                let leaf = u32::try_from(i).map_err(db_err)?;
                match e {
                    Entry::Message(m, _) => {
                        messages
                            .insert(m.id.as_slice(), (height, leaf))
                            .map_err(db_err)?;
                        state(&tx, &mut touched, &m.transaction_id)?;
                        let s = touched
                            .get_mut(&m.transaction_id)
                            .ok_or_else(|| db_err("lost a transaction"))?;
                        tx_messages
                            .insert(
                                (m.transaction_id.as_str(), s.message_count),
                                m.id.as_slice(),
                            )
                            .map_err(db_err)?;
                        s.message_count += 1;
                    }
                    Entry::Closing(t, c) => {
                        state(&tx, &mut touched, &t.id)?;
                        let s = touched
                            .get_mut(&t.id)
                            .ok_or_else(|| db_err("lost a transaction"))?;
                        fill(s, t);
                        s.status = c.status;
                        s.closing_height = Some(height);
                        s.closing_leaf_index = leaf;
                    }
                    Entry::Other => {}
                }
            }
            for (id, mut s) in touched {
                if let Some(t) = book.get(&id) {
                    fill(&mut s, t);
                    s.status = TransactionStatus::Open as i32;
                    open.insert(id.as_str(), 1).map_err(db_err)?;
                } else {
                    open.remove(id.as_str()).map_err(db_err)?;
                }
                tx.insert(id.as_str(), s.encode_to_vec().as_slice())
                    .map_err(db_err)?;
            }
            w.open_table(BLOCKS)
                .map_err(db_err)?
                .insert(id.as_slice(), height)
                .map_err(db_err)?;
            w.open_table(HEADERS)
                .map_err(db_err)?
                .insert(height, header)
                .map_err(db_err)?;
            let anchors = entries.iter().filter(|e| matches!(e, Entry::Other)).count() as u64;
            if anchors > 0 {
                let mut meta = w.open_table(META).map_err(db_err)?;
                let before = meta
                    .get("anchors")
                    .map_err(db_err)?
                    .map_or(0, |v| u64_at(v.value()));
                meta.insert("anchors", (before + anchors).to_be_bytes().as_slice())
                    .map_err(db_err)?;
            }
            let mut head = Vec::with_capacity(48);
            head.extend_from_slice(&(height + 1).to_be_bytes());
            head.extend_from_slice(&id);
            head.extend_from_slice(&last_seq.to_be_bytes());
            w.open_table(META)
                .map_err(db_err)?
                .insert("head", head.as_slice())
                .map_err(db_err)?;
        }
        w.commit().map_err(db_err)?;
        Ok(())
    }
}

/// Creates the tables besides `META` (reads need them to exist).
fn create_tables(w: &redb::WriteTransaction) -> Result<()> {
    w.open_table(MESSAGES).map_err(db_err)?;
    w.open_table(TX).map_err(db_err)?;
    w.open_table(TX_MESSAGES).map_err(db_err)?;
    w.open_table(OPEN).map_err(db_err)?;
    w.open_table(BLOCKS).map_err(db_err)?;
    w.open_table(HEADERS).map_err(db_err)?;
    Ok(())
}

fn fill(s: &mut TransactionState, t: &OpenTransaction) {
    s.parties = t.parties.iter().cloned().collect();
    s.finished_by = t
        .finished
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    s.opened_height = t.opened_height;
    s.deadline_ms = t.deadline_ms;
}
