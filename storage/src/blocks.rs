//! The ledger on disk: every block in a [`RecordFile`] (`blocks`, record `h` is the block at
//! height `h`, as the caller encodes it), and the ledger log, a [`TreeLog`] (`ledger/`)
//! whose leaf `h` is the id of block `h`, with the builder's signed checkpoint.
//!
//! A block is appended first (one write, one `fdatasync`), then its id to the ledger with a
//! new checkpoint; only then is it acknowledged. So at open:
//! - every block the ledger names must be intact and have the id the ledger holds:
//!   otherwise the open fails with [`Error::Corrupted`] naming the height, and touches
//!   nothing;
//! - a block beyond the ledger (a crash between the two writes: never acknowledged) is
//!   cut off, like a torn tail.

use std::path::Path;
use std::sync::Mutex;

use crate::{Error, Head, RecordFile, Result, TreeLog};

/// Blocks and the ledger over their ids.
pub struct BlockStore {
    blocks: RecordFile,
    ledger: TreeLog,
    append_lock: Mutex<()>,
}

impl BlockStore {
    /// Opens (or creates) the store in `dir`. `id_of(block)` gives a block's id (the caller
    /// knows the format); `visit(height, block)` sees every block the ledger names, in order.
    pub fn open(
        dir: &Path,
        max_block_len: usize,
        id_of: impl Fn(&[u8]) -> Result<[u8; 32]>,
        mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<[u8; 32]> = Vec::new();
        let ledger = TreeLog::open(&dir.join("ledger"), 32, |h, leaf| {
            let id: [u8; 32] = leaf.try_into().map_err(|_| {
                Error::Corrupted(format!("ledger leaf {h} is {} bytes, not 32", leaf.len()))
            })?;
            ids.push(id);
            Ok(())
        })?;
        let named = ids.len() as u64;
        let mut intact = 0u64;
        let path = dir.join("blocks");
        let blocks = RecordFile::open(&path, max_block_len, named, |h, bytes| {
            if let Some(want) = ids.get(h as usize) {
                let id = id_of(bytes).map_err(|e| {
                    Error::Corrupted(format!(
                        "block {h} in {} does not decode ({e}); the store was left untouched",
                        path.display()
                    ))
                })?;
                if &id != want {
                    return Err(Error::Corrupted(format!(
                        "block {h} in {} is not the block the ledger holds (its bytes were \
                         changed); the store was left untouched",
                        path.display()
                    )));
                }
                visit(h, bytes)?;
            }
            intact = h + 1;
            Ok(())
        })
        .map_err(|e| match e {
            Error::Corrupted(m) if intact < named && !m.starts_with("block ") => Error::Corrupted(
                format!("block {intact} of the {named} the ledger names is torn or damaged ({m})"),
            ),
            e => e,
        })?;
        if blocks.len() > named {
            tracing::warn!(
                blocks = blocks.len(),
                ledger = named,
                "cutting blocks that never reached the ledger (never acknowledged)"
            );
            blocks.truncate(named)?;
        }
        Ok(Self {
            blocks,
            ledger,
            append_lock: Mutex::new(()),
        })
    }

    /// Number of blocks under the newest ledger checkpoint (a block being appended counts
    /// once its checkpoint is written).
    pub fn len(&self) -> u64 {
        self.ledger.head().size
    }

    /// Whether there is no block yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest ledger checkpoint and its size.
    pub fn head(&self) -> Head {
        self.ledger.head()
    }

    /// The block at `height`, as stored.
    pub fn block(&self, height: u64) -> Result<Vec<u8>> {
        if height >= self.len() {
            return Err(Error::OutOfRange(format!(
                "block {height}: the ledger holds {}",
                self.len()
            )));
        }
        self.blocks.read(height)
    }

    /// `len` bytes of block `height` from byte `start`: one leaf of it, say, without
    /// reading the rest (the caller checks it against the block's tree).
    pub fn block_range(&self, height: u64, start: u64, len: u64) -> Result<Vec<u8>> {
        if height >= self.len() {
            return Err(Error::OutOfRange(format!(
                "block {height}: the ledger holds {}",
                self.len()
            )));
        }
        self.blocks.read_range(height, start, len)
    }

    /// The id of the block at `height` (its ledger leaf).
    pub fn id(&self, height: u64) -> Result<[u8; 32]> {
        let leaf = self.ledger.leaf(height)?;
        leaf.try_into()
            .map_err(|_| Error::Corrupted(format!("ledger leaf {height} is not 32 bytes")))
    }

    /// Appends a block with its id durably, then the id to the ledger with a checkpoint
    /// from `sign(size, root)`. Returns the block's height and the new head. A failure
    /// takes the block back out.
    pub fn append(
        &self,
        block: Vec<u8>,
        id: [u8; 32],
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<(u64, Head)> {
        let _one = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.blocks.len() != self.ledger.len() {
            return Err(Error::Corrupted(format!(
                "the store holds {} blocks but the ledger {}: refusing to append",
                self.blocks.len(),
                self.ledger.len()
            )));
        }
        let height = self.blocks.append(&[block])?;
        match self.ledger.append(&[id.to_vec()], sign, |_| {}) {
            Ok((_, head)) => Ok((height, head)),
            Err(e) => {
                if let Err(t) = self.blocks.truncate(height) {
                    tracing::error!(error = %t, "cannot take back a block the ledger refused");
                }
                Err(e)
            }
        }
    }

    /// Signs a checkpoint over every block if none covers them yet (first start, or a crash
    /// between a ledger append and its checkpoint).
    pub fn ensure_checkpoint(
        &self,
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<()> {
        self.ledger.ensure_checkpoint(sign)
    }

    /// The RFC 6962 inclusion proof of block `height` in the ledger of `size` blocks.
    pub fn prove_inclusion(&self, height: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        self.ledger.prove_inclusion(height, size)
    }

    /// The RFC 6962 consistency proof between ledger sizes `old` and `new`.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        self.ledger.prove_consistency(old, new)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use blockpost_core::{CheckpointSigner, verify_checkpoint};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn id_of(b: &[u8]) -> Result<[u8; 32]> {
        // A stand-in for the header hash: the first 32 bytes.
        b.get(..32)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Corrupted("short".into()))
    }

    fn block(i: u8) -> (Vec<u8>, [u8; 32]) {
        let id = [i; 32];
        let mut b = id.to_vec();
        b.extend_from_slice(&[i; 100]);
        (b, id)
    }

    fn signer() -> CheckpointSigner {
        CheckpointSigner::new("example.org/ledger", SigningKey::from_bytes(&[5; 32])).unwrap()
    }

    fn open(dir: &Path) -> Result<BlockStore> {
        BlockStore::open(dir, 1 << 20, id_of, |_, _| Ok(()))
    }

    fn sign(s: &CheckpointSigner) -> impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>> + '_ {
        |size, root| {
            s.sign(size, root)
                .map_err(|e| Error::Corrupted(e.to_string()))
        }
    }

    #[test]
    fn blocks_survive_a_restart_with_their_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer();
        {
            let st = open(dir.path()).unwrap();
            st.ensure_checkpoint(sign(&s)).unwrap();
            for i in 0..5u8 {
                let (b, id) = block(i);
                let (h, head) = st.append(b, id, sign(&s)).unwrap();
                assert_eq!((h, head.size), (u64::from(i), u64::from(i) + 1));
            }
        }
        let mut seen = Vec::new();
        let st = BlockStore::open(dir.path(), 1 << 20, id_of, |h, b| {
            seen.push((h, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(st.len(), 5);
        assert_eq!(st.block(3).unwrap(), block(3).0);
        assert_eq!(st.id(3).unwrap(), [3; 32]);
        assert!(matches!(st.block(5), Err(Error::OutOfRange(_))));
        // The ledger is an RFC 6962 log of the ids, under a signed checkpoint.
        let cp = verify_checkpoint(&st.head().checkpoint, &s.verifier_key()).unwrap();
        assert_eq!(cp.size, 5);
        cp.verify_inclusion(3, &[3; 32], &st.prove_inclusion(3, 5).unwrap())
            .unwrap();
    }

    #[test]
    fn a_block_that_never_reached_the_ledger_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer();
        {
            let st = open(dir.path()).unwrap();
            for i in 0..2u8 {
                let (b, id) = block(i);
                st.append(b, id, sign(&s)).unwrap();
            }
            // A crash after the block's write, before its ledger append.
            st.blocks.append(&[block(2).0]).unwrap();
        }
        let st = open(dir.path()).unwrap();
        assert_eq!(st.len(), 2);
        let (b, id) = block(2);
        assert_eq!(st.append(b, id, sign(&s)).unwrap().0, 2);
        drop(st);
        assert_eq!(open(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn changed_or_torn_blocks_refuse_to_open_and_are_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer();
        {
            let st = open(dir.path()).unwrap();
            for i in 0..3u8 {
                let (b, id) = block(i);
                st.append(b, id, sign(&s)).unwrap();
            }
        }
        let path = dir.path().join("blocks");
        let good = std::fs::read(&path).unwrap();

        // A flipped byte in block 1 (the record CRC catches it).
        let mut bad = good.clone();
        let off = 8 + 132 + 8 + 40;
        bad[off] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("block 1 "), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bad, "the store was touched");

        // A block replaced by another, with a valid record (the ledger id catches it).
        let mut other = good[..8 + 132].to_vec();
        let b = block(9).0;
        other.extend_from_slice(&(b.len() as u32).to_be_bytes());
        other.extend_from_slice(&crc32fast::hash(&b).to_be_bytes());
        other.extend_from_slice(&b);
        other.extend_from_slice(&good[2 * (8 + 132)..]);
        std::fs::write(&path, &other).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("block 1 ") && e.contains("changed"), "{e}");

        // The last block torn.
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("block 2 "), "{e}");
        assert_eq!(std::fs::read(&path).unwrap().len(), good.len() - 10);

        // Restored, it opens.
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&good).unwrap();
        drop(f);
        assert_eq!(open(dir.path()).unwrap().len(), 3);
    }
}
