//! The append-only log on disk and its in-memory tree and index.
//!
//! `entries` holds one record per leaf: `u32 length | u32 crc32 | entry bytes` (big endian),
//! appended in batches and synced with `fdatasync` before a batch is acknowledged. The
//! Merkle tree's stored hashes (the `tlog` layout: about two hashes per leaf) and the
//! address index are rebuilt from it at start, which also detects torn or corrupted
//! records. `checkpoint` holds the newest checkpoint handed out; at start the rebuilt tree
//! must match it, so a log can never silently disagree with what it signed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use blockpost_core::decode_entry;
use blockpost_proto::v1::EntryKind;
use tlog_tiles::{Hash, HashReader};

use crate::{Error, Result};

const HEADER: usize = 8;
/// Largest entry accepted by the store.
pub const MAX_ENTRY_LEN: usize = 256 * 1024;

/// What the log knows of one address.
#[derive(Clone, Debug, Default)]
pub struct AddressState {
    /// Indexes of its entries, oldest first.
    pub entries: Vec<u64>,
    /// Whether the last entry revoked the binding.
    pub revoked: bool,
}

impl AddressState {
    /// Index of the newest entry.
    pub fn current(&self) -> Option<u64> {
        self.entries.last().copied()
    }
}

struct State {
    /// (offset of the entry bytes, length) per leaf.
    offsets: Vec<(u64, u32)>,
    hashes: Vec<Hash>,
    index: HashMap<String, AddressState>,
    checkpoint: Vec<u8>,
    checkpoint_size: u64,
}

/// The log store. One writer (the sequencer) appends; any number of readers prove.
pub struct Store {
    /// Held for the store's lifetime: one writer per log, across processes.
    _lock: File,
    dir: PathBuf,
    writer: Mutex<File>,
    reader: File,
    end: Mutex<u64>,
    state: RwLock<State>,
}

/// A consistent view for proofs: the signed checkpoint and its size.
pub struct Head {
    /// Tree size of the checkpoint.
    pub size: u64,
    /// Signed note.
    pub checkpoint: Vec<u8>,
}

struct Hashes<'a> {
    old: &'a [Hash],
    new: &'a [Hash],
}

impl HashReader for Hashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                let i = i as usize;
                if i < self.old.len() {
                    Ok(self.old[i])
                } else {
                    self.new
                        .get(i - self.old.len())
                        .copied()
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)
                }
            })
            .collect()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, rebuilding the tree and the index.
    ///
    /// A torn record at the end (a crash mid-append, before the batch was acknowledged) is
    /// cut off. Anything else that does not check out is [`Error::Corrupted`].
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(Error::Config(format!(
                "{} is in use by another blockpost process; one log has one writer",
                dir.display()
            )));
        }
        let path = dir.join("entries");
        let mut writer = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let reader = File::open(&path)?;
        let mut offsets = Vec::new();
        let mut hashes = Vec::new();
        let mut index: HashMap<String, AddressState> = HashMap::new();
        let mut pos = 0u64;
        let file_len = reader.metadata()?.len();
        {
            let mut r = BufReader::with_capacity(1 << 20, &reader);
            let mut header = [0u8; HEADER];
            let mut buf = Vec::new();
            loop {
                if r.read_exact(&mut header).is_err() {
                    break;
                }
                let len = u32::from_be_bytes(header[..4].try_into().unwrap_or_default()) as usize;
                let crc = u32::from_be_bytes(header[4..].try_into().unwrap_or_default());
                if len > MAX_ENTRY_LEN {
                    break;
                }
                buf.resize(len, 0);
                if r.read_exact(&mut buf).is_err() || crc32fast::hash(&buf) != crc {
                    break;
                }
                let n = offsets.len() as u64;
                let (_, binding) = decode_entry(&buf)
                    .map_err(|e| Error::Corrupted(format!("entry {n} does not decode: {e}")))?;
                let st = index
                    .entry(binding.address.as_str().to_owned())
                    .or_default();
                st.entries.push(n);
                st.revoked = binding.kind == EntryKind::Revoke;
                let new = tlog_tiles::stored_hashes(
                    n,
                    &buf,
                    &Hashes {
                        old: &hashes,
                        new: &[],
                    },
                )
                .map_err(|e| Error::Corrupted(e.to_string()))?;
                hashes.extend(new);
                offsets.push((pos + HEADER as u64, len as u32));
                pos += (HEADER + len) as u64;
            }
        }
        // Never cut into what a checkpoint covers: that is damage, not a torn append.
        let size = offsets.len() as u64;
        let saved = std::fs::read(dir.join("checkpoint")).ok();
        if let Some(note) = &saved {
            let (cp_size, _) = parse_checkpoint(note)?;
            if cp_size > size {
                return Err(Error::Corrupted(format!(
                    "the log reads as {size} intact entries (of {file_len} bytes, {pos} readable) but checkpoint \
                     {cp_size} was handed out; the file was left untouched"
                )));
            }
        }
        if pos < file_len {
            tracing::warn!(
                kept = pos,
                file_len,
                "cutting a torn record off the end of the log"
            );
            writer.set_len(pos)?;
            writer.sync_all()?;
        }
        writer.flush()?;
        let store = Self {
            _lock: lock,
            dir: dir.to_owned(),
            writer: Mutex::new(writer),
            reader,
            end: Mutex::new(pos),
            state: RwLock::new(State {
                offsets,
                hashes,
                index,
                checkpoint: Vec::new(),
                checkpoint_size: 0,
            }),
        };
        // The tree must agree with the newest checkpoint handed out.
        if let Some(note) = saved {
            let (cp_size, cp_root) = parse_checkpoint(&note)?;
            let root = store.root(cp_size)?;
            if root != cp_root {
                return Err(Error::Corrupted(format!(
                    "the tree of size {cp_size} disagrees with its checkpoint"
                )));
            }
            let mut st = store.write_state();
            st.checkpoint = note;
            st.checkpoint_size = cp_size;
        }
        Ok(store)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic mid-update; the data is still append-only and valid.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of durable entries (at least the checkpoint size).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.read_state().offsets.len() as u64
    }

    /// The newest checkpoint handed out.
    pub fn head(&self) -> Head {
        let st = self.read_state();
        Head {
            size: st.checkpoint_size,
            checkpoint: st.checkpoint.clone(),
        }
    }

    /// What the log knows of `address`, as of the newest checkpoint.
    pub fn address(&self, address: &str) -> Option<AddressState> {
        self.read_state().index.get(address).cloned()
    }

    /// RFC 6962 root of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<[u8; 32]> {
        let st = self.read_state();
        if size > st.offsets.len() as u64 {
            return Err(Error::OutOfRange(format!(
                "tree size {size} beyond the log ({})",
                st.offsets.len()
            )));
        }
        tlog_tiles::tree_hash(
            size,
            &Hashes {
                old: &st.hashes,
                new: &[],
            },
        )
        .map(|h| h.0)
        .map_err(|e| Error::Corrupted(e.to_string()))
    }

    /// The bytes of entry `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        let (off, len) = {
            let st = self.read_state();
            *st.offsets.get(index as usize).ok_or_else(|| {
                Error::OutOfRange(format!(
                    "entry {index} beyond the log ({})",
                    st.offsets.len()
                ))
            })?
        };
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        let st = self.read_state();
        if size > st.offsets.len() as u64 || index >= size {
            return Err(Error::OutOfRange(format!(
                "no leaf {index} in a tree of size {size}"
            )));
        }
        tlog_tiles::prove_record(
            size,
            index,
            &Hashes {
                old: &st.hashes,
                new: &[],
            },
        )
        .map(|p| p.into_iter().map(|h| h.0).collect())
        .map_err(|e| Error::Corrupted(e.to_string()))
    }

    /// Consistency proof from the tree of `old` leaves to the tree of `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        let st = self.read_state();
        if new > st.offsets.len() as u64 || old > new {
            return Err(Error::OutOfRange(format!(
                "no consistency proof from size {old} to size {new}"
            )));
        }
        if old == 0 || old == new {
            return Ok(Vec::new());
        }
        tlog_tiles::prove_tree(
            new,
            old,
            &Hashes {
                old: &st.hashes,
                new: &[],
            },
        )
        .map(|p| p.into_iter().map(|h| h.0).collect())
        .map_err(|e| Error::Corrupted(e.to_string()))
    }

    /// Appends `entries` durably (one write, one `fdatasync`) and makes them visible to
    /// readers together with the checkpoint `sign` produces for the new tree. Returns the
    /// index of the first entry and the new head.
    ///
    /// Only one task may call this at a time (the sequencer); the writer lock enforces it.
    pub fn append(
        &self,
        entries: &[Vec<u8>],
        bindings: &[(String, bool)],
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<(u64, Head)> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.len();
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.len() + HEADER).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        let mut pos = *end;
        for e in entries {
            if e.len() > MAX_ENTRY_LEN {
                return Err(Error::TooLarge {
                    field: "log entry",
                    len: e.len(),
                    limit: MAX_ENTRY_LEN,
                });
            }
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32fast::hash(e).to_be_bytes());
            buf.extend_from_slice(e);
            offsets.push((pos + HEADER as u64, e.len() as u32));
            pos += (HEADER + e.len()) as u64;
        }
        if let Err(e) = writer.write_all(&buf).and_then(|()| writer.sync_data()) {
            // Leave no partial batch behind: readers never saw it and no one was told.
            let _ = writer.set_len(*end);
            return Err(e.into());
        }
        *end = pos;

        // Hash the new leaves against the current tree without blocking readers.
        let new_hashes = {
            let st = self.read_state();
            let mut new: Vec<Hash> = Vec::with_capacity(entries.len() * 2 + 32);
            for (i, e) in entries.iter().enumerate() {
                let h = tlog_tiles::stored_hashes(
                    first + i as u64,
                    e,
                    &Hashes {
                        old: &st.hashes,
                        new: &new,
                    },
                )
                .map_err(|e| Error::Corrupted(e.to_string()))?;
                new.extend(h);
            }
            new
        };
        let size = first + entries.len() as u64;
        let root = {
            let st = self.read_state();
            tlog_tiles::tree_hash(
                size,
                &Hashes {
                    old: &st.hashes,
                    new: &new_hashes,
                },
            )
            .map_err(|e| Error::Corrupted(e.to_string()))?
        };
        let note = sign(size, root.0)?;
        write_atomic(&self.dir.join("checkpoint"), &note)?;
        let mut st = self.write_state();
        st.hashes.extend(new_hashes);
        st.offsets.extend(offsets);
        for (i, (addr, revoked)) in bindings.iter().enumerate() {
            let a = st.index.entry(addr.clone()).or_default();
            a.entries.push(first + i as u64);
            a.revoked = *revoked;
        }
        st.checkpoint = note.clone();
        st.checkpoint_size = size;
        Ok((
            first,
            Head {
                size,
                checkpoint: note,
            },
        ))
    }

    /// Signs and stores a checkpoint for the whole log if none covers it yet (after a crash
    /// between the append and the checkpoint, or on first start).
    pub fn ensure_checkpoint(
        &self,
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let size = self.len();
        {
            let st = self.read_state();
            if !st.checkpoint.is_empty() && st.checkpoint_size == size {
                return Ok(());
            }
        }
        let note = sign(size, self.root(size)?)?;
        write_atomic(&self.dir.join("checkpoint"), &note)?;
        let mut st = self.write_state();
        st.checkpoint = note;
        st.checkpoint_size = size;
        Ok(())
    }
}

/// Size and root of a checkpoint note, without checking its signature (the store only
/// compares it with its own tree).
fn parse_checkpoint(note: &[u8]) -> Result<(u64, [u8; 32])> {
    let n = signed_note::Note::from_bytes(note)
        .map_err(|e| Error::Corrupted(format!("checkpoint: {e}")))?;
    let cp = tlog_tiles::Checkpoint::from_bytes(n.text())
        .map_err(|e| Error::Corrupted(format!("checkpoint: {e}")))?;
    Ok((cp.size(), cp.hash().0))
}

/// Writes a file so that a crash leaves either the old or the new contents.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Creates a file readable by its owner only (mode 0600), for private keys.
pub fn write_private_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use blockpost_core::{CheckpointSigner, Identity, verify_checkpoint};
    use blockpost_proto::v1::{EntryKind, LogEntry};
    use ed25519_dalek::SigningKey;
    use prost::Message as _;

    use super::*;

    fn entry(address: &str) -> Vec<u8> {
        let id = Identity::generate();
        LogEntry {
            kind: EntryKind::Register as i32,
            address: address.into(),
            real_name: "T AG".into(),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn signer() -> CheckpointSigner {
        CheckpointSigner::new("test/log", SigningKey::from_bytes(&[1; 32])).unwrap()
    }

    fn fill(dir: &Path, n: usize) -> Vec<u8> {
        let store = Store::open(dir).unwrap();
        let s = signer();
        let mut note = Vec::new();
        for i in 0..n {
            let (_, head) = store
                .append(
                    &[entry(&format!("a{i}"))],
                    &[(format!("a{i}"), false)],
                    |size, root| Ok(s.sign(size, root)?),
                )
                .unwrap();
            note = head.checkpoint;
        }
        note
    }

    #[test]
    fn reopen_rebuilds_tree_index_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let note = fill(dir.path(), 10);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.len(), 10);
        assert_eq!(store.head().checkpoint, note);
        let cp = verify_checkpoint(&note, &signer().verifier_key()).unwrap();
        assert_eq!(cp.root, store.root(10).unwrap());
        let st = store.address("a3").unwrap();
        assert_eq!(st.entries, vec![3]);
        let proof = store.prove_inclusion(3, 10).unwrap();
        cp.verify_inclusion(3, &store.entry(3).unwrap(), &proof)
            .unwrap();
    }

    #[test]
    fn one_writer_per_log() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(Error::Config(m)) if m.contains("in use")));
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 5);
        let path = dir.path().join("entries");
        // A crash mid-append: half a record after the last checkpointed one.
        let extra = entry("torn");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&(extra.len() as u32).to_be_bytes()).unwrap();
        f.write_all(&crc32fast::hash(&extra).to_be_bytes()).unwrap();
        f.write_all(&extra[..extra.len() / 2]).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.len(), 5);
        assert!(std::fs::metadata(&path).unwrap().len() < before);
        assert!(store.address("torn").is_none());
    }

    #[test]
    fn damage_under_a_checkpoint_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 6);
        let path = dir.path().join("entries");
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip one byte inside the third record: its CRC fails, so the log reads as
        // shorter than the checkpoint that was handed out.
        let third = bytes.len() / 2;
        bytes[third] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            matches!(Store::open(dir.path()), Err(Error::Corrupted(m)) if m.contains("untouched"))
        );
        // Nothing was cut: an operator can still repair or inspect it.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_checkpoint_for_another_tree_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 4);
        let other = signer().sign(4, [7; 32]).unwrap();
        std::fs::write(dir.path().join("checkpoint"), other).unwrap();
        assert!(
            matches!(Store::open(dir.path()), Err(Error::Corrupted(m)) if m.contains("disagrees"))
        );
    }

    #[test]
    fn unchecked_tail_gets_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 3);
        // Entries durable but the checkpoint write lost (crash between the two).
        let old = signer()
            .sign(2, Store::open(dir.path()).unwrap().root(2).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("checkpoint"), old).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.head().size, 2);
        store
            .ensure_checkpoint(|size, root| Ok(signer().sign(size, root)?))
            .unwrap();
        assert_eq!(store.head().size, 3);
    }
}
