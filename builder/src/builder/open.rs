//! Opening the block store: every stored block verified (header signature, chain link,
//! Merkle root, the ledger's id for it), the rules it was cut under pinned, the indexes and
//! the transaction book brought up to it. No NATS.

use super::*;

pub(super) fn corrupted(h: u64, e: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!(
        "block {h} does not verify ({e}); the store was left untouched"
    ))
}

/// Opens the block store (each block the ledger names must have the id it holds) and the
/// index beside it.
pub(super) fn open_store(dir: &std::path::Path) -> Result<(BlockStore, Index, BlockMaps)> {
    let store = BlockStore::open(
        dir,
        MAX_BLOCK_LEN,
        |bytes| {
            let b = Block::decode(bytes)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))?;
            let h = b
                .header
                .ok_or_else(|| blockpost_storage::Error::Corrupted("no header".into()))?;
            Ok(blockpost_core::block::block_id(&h.header))
        },
        |_, _| Ok(()),
    )?;
    let index = Index::open(&dir.join("index"))?;
    let maps = BlockMaps::open(&dir.join("maps"))?;
    Ok((store, index, maps))
}

/// The transaction timeout and the firehose's partitions are rules of the ledger, not
/// settings: every replay of the blocks depends on the first, and blocks name sequences by
/// partition. They are recorded at the first start (`DATA/ledger/rules.json`; one written
/// before partitions existed means one partition) and different ones in the config are
/// refused.
pub(super) fn fix_rules(dir: &std::path::Path, timeout_ms: u64, partitions: u32) -> Result<()> {
    let path = dir.join("rules.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let damaged = || Error::Corrupted(format!("{} is damaged: {text:?}", path.display()));
            let v = serde_json::from_str::<serde_json::Value>(&text).map_err(|_| damaged())?;
            let fixed = v["transaction_timeout_ms"].as_u64().ok_or_else(damaged)?;
            if fixed != timeout_ms {
                return Err(Error::Config(format!(
                    "builder.transaction_timeout_ms is {timeout_ms}, but this ledger was started with {fixed} ({}): it cannot change, since every replay of the blocks depends on it",
                    path.display()
                )));
            }
            // Absent in rules written before partitions: one partition.
            let made = match &v["firehose_partitions"] {
                serde_json::Value::Null => 1,
                n => n.as_u64().ok_or_else(damaged)?,
            };
            if made != u64::from(partitions) {
                return Err(Error::Config(format!(
                    "messaging.firehose_partitions is {partitions}, but this ledger was started with {made} ({}): it cannot change, since blocks name firehose sequences by partition",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::json!({
                "transaction_timeout_ms": timeout_ms,
                "firehose_partitions": partitions,
            })
            .to_string();
            blockpost_storage::write_atomic(&path, text.as_bytes())
                .map_err(|e| Error::Corrupted(format!("writing {}: {e}", path.display())))
        }
        Err(e) => Err(Error::Corrupted(format!("reading {}: {e}", path.display()))),
    }
}

/// Asks the index whether a transaction was closed in an earlier block, for the
/// transaction rules. An index that cannot be read must not pass for "open" (that would
/// close the transaction twice): the lookup answers "closed", keeps the error, and
/// [`ClosedLookup::finish`] returns it, so the caller drops the block it laid out.
pub(super) struct ClosedLookup<'a> {
    index: &'a Index,
    failed: std::cell::RefCell<Option<Error>>,
}

impl<'a> ClosedLookup<'a> {
    pub(super) fn new(index: &'a Index) -> Self {
        Self {
            index,
            failed: std::cell::RefCell::new(None),
        }
    }

    pub(super) fn closed(&self, id: &str) -> bool {
        match self.index.is_closed(id) {
            Ok(s) => s.is_some(),
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                true
            }
        }
    }

    pub(super) fn finish(self) -> Result<()> {
        self.failed.into_inner().map_or(Ok(()), Err)
    }
}

/// Reads and fully verifies stored block `h`: header signature, Merkle root, leaves, its
/// height, and its link to `prev`.
pub(super) fn verify_stored(
    inner: &Inner,
    h: u64,
    prev: Option<&VerifiedHeader>,
) -> Result<(VerifiedBlock, Vec<u8>)> {
    let bytes = inner.store.block(h)?;
    let b = Block::decode(bytes.as_slice()).map_err(|e| corrupted(h, e))?;
    let v = verify_block(&b, &inner.key.verifying_key()).map_err(|e| corrupted(h, e))?;
    if v.header.header.height != h {
        return Err(corrupted(
            h,
            format!("it says height {}", v.header.header.height),
        ));
    }
    if let Some(prev) = prev {
        v.header.check_follows(prev).map_err(|e| corrupted(h, e))?;
    }
    let signed = b.header.map(|s| s.encode_to_vec()).unwrap_or_default();
    Ok((v, signed))
}

/// Brings the index up to the store: verifies the newest indexed block and every block
/// after it, replays their transactions (each closing record must be the one the rules
/// give) and indexes them; then reloads the tip, the open transactions and the last
/// firehose sequence from it. An index that disagrees with the store is rebuilt.
pub(super) fn catch_up(inner: &Inner) -> Result<()> {
    let index = &inner.index;
    let len = inner.store.len();
    let mut head = index.head()?;
    if head.blocks > len || (head.blocks > 0 && inner.store.id(head.blocks - 1)? != head.last_id) {
        tracing::warn!(
            indexed = head.blocks,
            blocks = len,
            "the index does not match the block store: rebuilding it"
        );
        index.reset()?;
        head = index.head()?;
    }
    let mut tip = match head.blocks.checked_sub(1) {
        Some(h) => Some(verify_stored(inner, h, None)?.0.header),
        None => None,
    };
    let mut book = index.book(inner.config.transaction_timeout_ms)?;
    let partitions = inner.firehose.partitions();
    let mut last_seqs = head.last_seqs.clone();
    last_seqs.resize(partitions as usize, 0);
    if head.blocks < len {
        tracing::info!(from = head.blocks, to = len, "indexing blocks");
    }
    for h in head.blocks..len {
        let (v, signed) = verify_stored(inner, h, tip.as_ref())?;
        let closed = ClosedLookup::new(index);
        let entries = replay_block(&mut book, h, v.header.header.time_ms, &v.leaves, |id| {
            closed.closed(id)
        });
        closed.finish()?;
        let entries = entries.map_err(|e| corrupted(h, e))?;
        for p in &v.header.header.partitions {
            let Some(last) = last_seqs.get_mut(p.partition as usize) else {
                return Err(corrupted(
                    h,
                    format!(
                        "it names firehose partition {}, and the firehose has {partitions}",
                        p.partition
                    ),
                ));
            };
            *last = p.last_seq;
        }
        index.commit(h, v.header.id, &signed, &entries, &book, &last_seqs)?;
        tip = Some(v.header);
    }
    *inner.tip.lock().unwrap_or_else(|e| e.into_inner()) = tip;
    *inner.book.lock().unwrap_or_else(|e| e.into_inner()) = book;
    *inner.last_seqs.lock().unwrap_or_else(|e| e.into_inner()) = last_seqs;
    // The maps of the blocks indexed here are made on the maps' own thread.
    let _ = inner.maps_due.try_send(crate::maps::MapDue::CatchUp);
    Ok(())
}
