//! The builder's indexes, in a fjall LSM database (`DATA/ledger/index/`): message id →
//! block and leaf; transaction id → its state and its messages; the open transactions;
//! block id → height; height → signed header.
//!
//! An LSM tree, not a B-tree: message ids are random, and a copy-on-write B-tree (redb, as
//! this index first was) rewrites a page for almost every new id, so that each block's
//! commit cost grew with the index (37 ms for the first 10,000 messages, 180 ms at 1M)
//! and the file held about 2.7 times its data. An LSM tree appends each block's entries to
//! its journal and sorts them into files in the background: the cost of a commit stays
//! flat, and the files are compact.
//!
//! The block store is the truth and the index is derived from it: a block is stored (and
//! fsynced) first, then indexed in one atomic, fsynced write batch. After a crash between
//! the two the index is one block behind, and the builder replays what it lacks from the
//! store at open — the same replay an auditor runs, which also checks every closing
//! record. An index that is ahead of the store, or names another block at its last height,
//! is rebuilt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use blockpost_core::transaction::{Book, Entry, OpenTransaction};
use blockpost_proto::v1::{TransactionState, TransactionStatus};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::Message as _;

use crate::{Error, Result};

/// The index format; another one is rebuilt from the store. (1 was a redb file,
/// `index.redb`, which is removed.)
const FORMAT: u64 = 2;

/// Where the index stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexHead {
    /// Blocks indexed.
    pub blocks: u64,
    /// The id of the last one.
    pub last_id: [u8; 32],
    /// The last firehose sequence in them, per partition (as many as there are, or none
    /// before the first block).
    pub last_seqs: Vec<u64>,
}

/// The indexes: one keyspace each.
pub struct Index {
    db: Database,
    /// `format`, `head` (blocks, last id, last sequence) and `anchors` (records in blocks).
    meta: Keyspace,
    /// Message id → height (8 bytes) and leaf index (4 bytes), big-endian.
    messages: Keyspace,
    /// Transaction id → its `TransactionState`.
    transactions: Keyspace,
    /// [`tx_key`] (transaction id, sequence) → message id, in ledger order.
    transaction_messages: Keyspace,
    /// Transaction id → nothing, for each open transaction.
    open: Keyspace,
    /// Block id → height.
    blocks: Keyspace,
    /// Height → encoded signed header.
    headers: Keyspace,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!("index: {e}"))
}

fn u64_at(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The keys of a transaction's messages start with its id, length first, so that no
/// transaction's keys are a prefix of another's.
fn tx_prefix(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len() + 4);
    // Transaction ids are short (the envelope rules bound them far below 64 KiB).
    k.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn tx_key(id: &str, seq: u32) -> Vec<u8> {
    let mut k = tx_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn message_id(v: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(v).map_err(|_| db_err("a message id is not 32 bytes"))
}

/// Memtables per keyspace: small, so that the journal (which the memtables keep) stays
/// small on disk.
const MEMTABLE: u64 = 8 << 20;

impl Index {
    /// Opens (or creates) the index in directory `path`. A redb index of an earlier
    /// version beside it (`index.redb`) is removed: this one is rebuilt from the store.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(old) = path.parent().map(|d| d.join("index.redb"))
            && old.exists()
        {
            tracing::info!(path = %old.display(), "removing the index of an earlier format; it is rebuilt from the block store");
            std::fs::remove_file(&old)
                .map_err(|e| db_err(format!("removing {}: {e}", old.display())))?;
        }
        let index = match Self::open_at(path) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "index unreadable: rebuilding it from the block store");
                std::fs::remove_dir_all(path).map_err(|e| db_err(format!("removing it: {e}")))?;
                Self::open_at(path)?
            }
        };
        let format = index
            .meta
            .get(b"format")
            .map_err(db_err)?
            .map(|v| u64_at(&v));
        match format {
            Some(FORMAT) => {}
            None if index.meta.get(b"head").map_err(db_err)?.is_none() => {
                index.write_format(FORMAT)?;
            }
            // Another format, or a reset that did not finish.
            _ => index.reset()?,
        }
        Ok(index)
    }

    fn open_at(path: &Path) -> Result<Self> {
        let db = Database::builder(path)
            // The smallest fjall allows: the journal counts in the index's size on disk.
            .max_journaling_size(64 << 20)
            .cache_size(32 << 20)
            .open()
            .map_err(db_err)?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE)
            })
            .map_err(db_err)
        };
        Ok(Self {
            meta: ks("meta")?,
            messages: ks("messages")?,
            transactions: ks("transactions")?,
            transaction_messages: ks("transaction_messages")?,
            open: ks("open_transactions")?,
            blocks: ks("blocks")?,
            headers: ks("headers")?,
            db,
        })
    }

    fn write_format(&self, format: u64) -> Result<()> {
        let mut w = self.db.batch().durability(Some(PersistMode::SyncAll));
        w.insert(&self.meta, "format", format.to_be_bytes().to_vec());
        w.commit().map_err(db_err)
    }

    /// Empties the index (to rebuild it from the store). A crash half-way leaves a format
    /// that is not [`FORMAT`], and the next open empties it again.
    pub fn reset(&self) -> Result<()> {
        self.write_format(0)?;
        for ks in [
            &self.messages,
            &self.transactions,
            &self.transaction_messages,
            &self.open,
            &self.blocks,
            &self.headers,
            &self.meta,
        ] {
            ks.clear().map_err(db_err)?;
        }
        self.write_format(FORMAT)
    }

    /// Where the index stands.
    pub fn head(&self) -> Result<IndexHead> {
        let Some(v) = self.meta.get(b"head").map_err(db_err)? else {
            return Ok(IndexHead::default());
        };
        if v.len() < 48 || (v.len() - 40) % 8 != 0 {
            return Err(db_err(
                "head record is not 40 bytes and a sequence per partition",
            ));
        }
        let mut last_id = [0; 32];
        last_id.copy_from_slice(&v[8..40]);
        Ok(IndexHead {
            blocks: u64_at(&v),
            last_id,
            last_seqs: v[40..].chunks(8).map(u64_at).collect(),
        })
    }

    /// How many anchor records are in blocks.
    pub fn anchors_recorded(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(b"anchors")
            .map_err(db_err)?
            .map_or(0, |v| u64_at(&v)))
    }

    /// Where message `id` is: height and leaf index.
    pub fn locate(&self, id: &[u8; 32]) -> Result<Option<(u64, u32)>> {
        let Some(v) = self.messages.get(id).map_err(db_err)? else {
            return Ok(None);
        };
        let leaf = v
            .get(8..12)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .ok_or_else(|| db_err("a message location is not 12 bytes"))?;
        Ok(Some((u64_at(&v), u32::from_be_bytes(leaf))))
    }

    /// The height of the block with `id`.
    pub fn height_of(&self, id: &[u8; 32]) -> Result<Option<u64>> {
        Ok(self.blocks.get(id).map_err(db_err)?.map(|v| u64_at(&v)))
    }

    /// The signed header of block `height` (encoded), if indexed.
    pub fn header(&self, height: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .headers
            .get(height.to_be_bytes())
            .map_err(db_err)?
            .map(|v| v.to_vec()))
    }

    /// A transaction's state, if the ledger has it.
    pub fn transaction(&self, id: &str) -> Result<Option<TransactionState>> {
        self.transactions
            .get(id)
            .map_err(db_err)?
            .map(|v| TransactionState::decode(&*v).map_err(db_err))
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
        let end = offset.saturating_add(limit);
        self.transaction_messages
            .range(tx_key(id, offset)..tx_key(id, end))
            .map(|kv| message_id(&kv.value().map_err(db_err)?))
            .collect()
    }

    /// The open transactions, as a [`Book`] with `timeout_ms`.
    pub fn book(&self, timeout_ms: u64) -> Result<Book> {
        let mut all = Vec::new();
        for kv in self.open.iter() {
            let k = kv.key().map_err(db_err)?;
            let id = std::str::from_utf8(&k).map_err(db_err)?;
            let s = self
                .transaction(id)?
                .ok_or_else(|| db_err(format!("open transaction {id} has no state")))?;
            let messages = self
                .transaction_messages
                .prefix(tx_prefix(id))
                .map(|kv| message_id(&kv.value().map_err(db_err)?))
                .collect::<Result<Vec<_>>>()?;
            if messages.len() != s.message_count as usize {
                return Err(db_err(format!(
                    "open transaction {id} has {} messages, its state says {}",
                    messages.len(),
                    s.message_count
                )));
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
    /// transactions after it, `last_seqs` the last firehose sequence in the blocks so far,
    /// per partition.
    /// One atomic write batch, fsynced before it returns.
    pub fn commit(
        &self,
        height: u64,
        id: [u8; 32],
        header: &[u8],
        entries: &[Entry],
        book: &Book,
        last_seqs: &[u64],
    ) -> Result<()> {
        let mut w = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut touched: BTreeMap<&str, TransactionState> = BTreeMap::new();
        fn state<'e>(
            index: &Index,
            touched: &mut BTreeMap<&'e str, TransactionState>,
            id: &'e str,
        ) -> Result<()> {
            if !touched.contains_key(id) {
                let s = index.transaction(id)?.unwrap_or_else(|| TransactionState {
                    transaction_id: id.to_string(),
                    ..Default::default()
                });
                touched.insert(id, s);
            }
            Ok(())
        }
        for (i, e) in entries.iter().enumerate() {
            let leaf = u32::try_from(i).map_err(db_err)?;
            match e {
                Entry::Message(m, _) => {
                    let mut at = Vec::with_capacity(12);
                    at.extend_from_slice(&height.to_be_bytes());
                    at.extend_from_slice(&leaf.to_be_bytes());
                    w.insert(&self.messages, m.id.to_vec(), at);
                    let tx = m.transaction_id.as_str();
                    state(self, &mut touched, tx)?;
                    let s = touched
                        .get_mut(tx)
                        .ok_or_else(|| db_err("lost a transaction"))?;
                    w.insert(
                        &self.transaction_messages,
                        tx_key(tx, s.message_count),
                        m.id.to_vec(),
                    );
                    s.message_count += 1;
                }
                Entry::Closing(t, c) => {
                    state(self, &mut touched, &t.id)?;
                    let s = touched
                        .get_mut(t.id.as_str())
                        .ok_or_else(|| db_err("lost a transaction"))?;
                    fill(s, t);
                    s.status = c.status;
                    s.closing_height = Some(height);
                    s.closing_leaf_index = leaf;
                }
                Entry::Anchor | Entry::Delivery | Entry::Other => {}
            }
        }
        for (tx, mut s) in touched {
            if let Some(t) = book.get(tx) {
                fill(&mut s, t);
                s.status = TransactionStatus::Open as i32;
                w.insert(&self.open, tx, b"".as_slice());
            } else {
                w.remove(&self.open, tx);
            }
            w.insert(&self.transactions, tx, s.encode_to_vec());
        }
        w.insert(&self.blocks, id.to_vec(), height.to_be_bytes().to_vec());
        w.insert(
            &self.headers,
            height.to_be_bytes().to_vec(),
            header.to_vec(),
        );
        let anchors = entries
            .iter()
            .filter(|e| matches!(e, Entry::Anchor))
            .count() as u64;
        if anchors > 0 {
            let before = self.anchors_recorded()?;
            w.insert(
                &self.meta,
                "anchors",
                (before + anchors).to_be_bytes().to_vec(),
            );
        }
        let mut head = Vec::with_capacity(40 + 8 * last_seqs.len().max(1));
        head.extend_from_slice(&(height + 1).to_be_bytes());
        head.extend_from_slice(&id);
        for s in last_seqs {
            head.extend_from_slice(&s.to_be_bytes());
        }
        if last_seqs.is_empty() {
            head.extend_from_slice(&0u64.to_be_bytes());
        }
        w.insert(&self.meta, "head", head);
        w.commit().map_err(db_err)
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use blockpost_core::transaction::{TxMessage, lay_out_block};

    fn msg(n: u8, tx: &str, from: &str, to: &str, finish: bool) -> (Vec<u8>, TxMessage) {
        let m = TxMessage {
            id: [n; 32],
            transaction_id: tx.into(),
            sender: from.into(),
            recipients: vec![to.into()],
            finish,
            deadline_ms: None,
        };
        (vec![n], m)
    }

    fn check(index: &Index) {
        assert_eq!(
            index.head().unwrap(),
            IndexHead {
                blocks: 2,
                last_id: [11; 32],
                last_seqs: vec![5, 2]
            }
        );
        assert_eq!(index.locate(&[2; 32]).unwrap(), Some((0, 1)));
        assert_eq!(index.locate(&[5; 32]).unwrap(), Some((1, 1)));
        assert_eq!(index.locate(&[9; 32]).unwrap(), None);
        assert_eq!(index.height_of(&[11; 32]).unwrap(), Some(1));
        assert_eq!(index.header(1).unwrap().as_deref(), Some(b"h1".as_slice()));
        assert_eq!(index.header(2).unwrap(), None);
        assert_eq!(
            index.is_closed("t1").unwrap(),
            Some(TransactionStatus::Finished)
        );
        assert_eq!(index.is_closed("t2").unwrap(), None);
        assert_eq!(index.is_closed("t3").unwrap(), None);
        let t1 = index.transaction("t1").unwrap().unwrap();
        assert_eq!((t1.message_count, t1.closing_height), (4, Some(1)));
        assert_eq!(t1.closing_leaf_index, 2);
        assert_eq!(
            index.transaction_messages("t1", 0, 10).unwrap(),
            vec![[1; 32], [3; 32], [4; 32], [5; 32]]
        );
        assert_eq!(
            index.transaction_messages("t1", 1, 2).unwrap(),
            vec![[3; 32], [4; 32]]
        );
        // "t" is a prefix of "t1" and "t2": its keys must not run into theirs.
        assert!(index.transaction_messages("t", 0, 10).unwrap().is_empty());
        let book = index.book(60_000).unwrap();
        assert_eq!(book.len(), 1);
        let t2 = book.get("t2").unwrap();
        assert_eq!(t2.messages, vec![[2; 32]]);
        assert_eq!(t2.opened_height, 0);
    }

    #[test]
    fn blocks_indexed_survive_a_reopen_and_a_reset_empties_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        // An index of the earlier format beside it is removed.
        std::fs::write(dir.path().join("index.redb"), b"old").unwrap();
        {
            let index = Index::open(&path).unwrap();
            assert!(!dir.path().join("index.redb").exists());
            assert_eq!(index.head().unwrap(), IndexHead::default());
            let mut book = Book::new(60_000, []);
            let block0 = vec![
                msg(1, "t1", "a", "b", false),
                msg(2, "t2", "a", "c", false),
                msg(3, "t1", "b", "a", false),
            ];
            let (_, e) = lay_out_block(&mut book, 0, 1_000, vec![], block0, |_| false);
            index.commit(0, [10; 32], b"h0", &e, &book, &[3]).unwrap();
            // Both parties finish t1: its closing record follows the second finish.
            let block1 = vec![msg(4, "t1", "a", "b", true), msg(5, "t1", "b", "a", true)];
            let (_, e) = lay_out_block(&mut book, 1, 2_000, vec![], block1, |_| false);
            assert!(matches!(e[2], Entry::Closing(..)));
            index
                .commit(1, [11; 32], b"h1", &e, &book, &[5, 2])
                .unwrap();
            check(&index);
        }
        let index = Index::open(&path).unwrap();
        check(&index);
        index.reset().unwrap();
        assert_eq!(index.head().unwrap(), IndexHead::default());
        assert_eq!(index.locate(&[2; 32]).unwrap(), None);
        assert_eq!(index.book(60_000).unwrap().len(), 0);
        drop(index);
        // A reset that did not finish (another format) is done again at open.
        let index = Index::open(&path).unwrap();
        let (_, e) = lay_out_block(
            &mut Book::new(60_000, []),
            0,
            1_000,
            vec![],
            vec![msg(1, "t1", "a", "b", false)],
            |_| false,
        );
        index
            .commit(0, [10; 32], b"h0", &e, &Book::new(60_000, []), &[1])
            .unwrap();
        index.write_format(0).unwrap();
        drop(index);
        let index = Index::open(&path).unwrap();
        assert_eq!(index.head().unwrap(), IndexHead::default());
        assert_eq!(index.locate(&[1; 32]).unwrap(), None);
    }
}
