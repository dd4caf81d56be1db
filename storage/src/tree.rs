//! A Merkle tree log on disk: a [`RecordFile`] of leaves, the RFC 6962 tree over them (the
//! `tlog` layout of stored hashes, about two per leaf, rebuilt at open), and the newest
//! signed checkpoint handed out (`checkpoint`, replaced through a rename). At open the
//! rebuilt tree must match that checkpoint, so a log never silently disagrees with what it
//! signed.
//!
//! A group commit syncs once: the leaves (`fdatasync`), before the checkpoint over them is
//! signed. The checkpoint file is not synced: it is derived from those leaves, and a crash
//! that loses it (an older or, on some file systems, empty file) loses nothing, since the
//! log signs a checkpoint for every durable leaf again at start
//! ([`TreeLog::ensure_checkpoint`]): the same note, as ed25519 signatures are
//! deterministic and a checkpoint carries no time.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use tlog_tiles::{Hash, HashReader};

use crate::{Error, RecordFile, Result};

/// A consistent view for proofs: the newest signed checkpoint and its size.
#[derive(Clone, Debug)]
pub struct Head {
    /// Tree size of the checkpoint.
    pub size: u64,
    /// The signed note.
    pub checkpoint: Vec<u8>,
}

/// The newest checkpoint of a log that witnesses cosigned (the signed note with their
/// cosignature lines), as the node collected it: what it hands to clients that require
/// witnesses. Shared between the service that serves it and the collector that sets it.
#[derive(Clone, Debug, Default)]
pub struct Witnessed(std::sync::Arc<std::sync::RwLock<Option<Head>>>);

impl Witnessed {
    /// The newest witnessed checkpoint, if any.
    pub fn get(&self) -> Option<Head> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces it.
    pub fn set(&self, head: Head) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }
}

struct State {
    hashes: Vec<Hash>,
    /// Leaves whose hashes are in `hashes`.
    leaves: u64,
    head: Head,
}

/// The tree log. One writer appends; any number of readers prove.
pub struct TreeLog {
    /// Held for the log's lifetime: one writer per log, across processes.
    _lock: std::fs::File,
    dir: PathBuf,
    records: RecordFile,
    state: RwLock<State>,
    /// One append at a time, from the record write to the visible head.
    append_lock: std::sync::Mutex<()>,
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
                match self.old.get(i) {
                    Some(h) => Ok(*h),
                    None => self
                        .new
                        .get(i - self.old.len())
                        .copied()
                        .ok_or(tlog_tiles::Error::IndexesNotInTree),
                }
            })
            .collect()
    }
}

fn corrupted(e: impl std::fmt::Display) -> Error {
    Error::Corrupted(e.to_string())
}

impl TreeLog {
    /// Opens (or creates) the log in `dir` (`entries`, `checkpoint`, `LOCK`), calling
    /// `visit(index, leaf)` for every intact leaf in order.
    pub fn open(
        dir: &Path,
        max_leaf_len: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::File::create(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(Error::InUse(dir.display().to_string()));
        }
        let saved = match std::fs::read(dir.join("checkpoint")) {
            // Empty: a crash right after an unsynced replace; signed again from the leaves.
            Ok(note) if note.is_empty() => None,
            Ok(note) => Some((parse_checkpoint(&note)?, note)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let handed_out = saved.as_ref().map_or(0, |((size, _), _)| *size);
        let mut hashes: Vec<Hash> = Vec::new();
        let records = RecordFile::open(&dir.join("entries"), max_leaf_len, handed_out, |i, b| {
            visit(i, b)?;
            let new = tlog_tiles::stored_hashes(
                i,
                b,
                &Hashes {
                    old: &hashes,
                    new: &[],
                },
            )
            .map_err(corrupted)?;
            hashes.extend(new);
            Ok(())
        })?;
        let mut head = Head {
            size: 0,
            checkpoint: Vec::new(),
        };
        if let Some(((size, root), note)) = saved {
            let ours = tree_root(&hashes, &[], size)?;
            if ours != root {
                return Err(Error::Corrupted(format!(
                    "the tree of size {size} disagrees with its checkpoint"
                )));
            }
            head = Head {
                size,
                checkpoint: note,
            };
        }
        let leaves = records.len();
        Ok(Self {
            _lock: lock,
            dir: dir.to_owned(),
            records,
            append_lock: std::sync::Mutex::new(()),
            state: RwLock::new(State {
                hashes,
                leaves,
                head,
            }),
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of durable leaves (at least the checkpoint's size).
    pub fn len(&self) -> u64 {
        self.records.len()
    }

    /// Whether the log holds no leaf.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The newest checkpoint handed out.
    pub fn head(&self) -> Head {
        self.read_state().head.clone()
    }

    /// The bytes of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>> {
        self.records.read(index)
    }

    /// RFC 6962 root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<[u8; 32]> {
        let st = self.read_state();
        if size > st.leaves {
            return Err(Error::OutOfRange(format!(
                "tree size {size} beyond the log ({})",
                st.leaves
            )));
        }
        tree_root(&st.hashes, &[], size)
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        let st = self.read_state();
        if size > st.leaves || index >= size {
            return Err(Error::OutOfRange(format!(
                "no leaf {index} in a tree of size {size}"
            )));
        }
        let h = Hashes {
            old: &st.hashes,
            new: &[],
        };
        tlog_tiles::prove_record(size, index, &h)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(corrupted)
    }

    /// Consistency proof from the tree of `old` leaves to the tree of `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        let st = self.read_state();
        if new > st.leaves || old > new {
            return Err(Error::OutOfRange(format!(
                "no consistency proof from size {old} to size {new}"
            )));
        }
        if old == 0 || old == new {
            return Ok(Vec::new());
        }
        let h = Hashes {
            old: &st.hashes,
            new: &[],
        };
        tlog_tiles::prove_tree(new, old, &h)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(corrupted)
    }

    /// Appends `leaves` durably (one write, one `fdatasync`), signs the new tree with
    /// `sign(size, root)`, stores that checkpoint, calls `before_visible(first)` (to update
    /// what the caller keeps beside the log), and only then makes the leaves visible to
    /// provers. Returns the index of the first leaf and the new head. Appends are serialised.
    pub fn append(
        &self,
        leaves_in: &[Vec<u8>],
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
        before_visible: impl FnOnce(u64),
    ) -> Result<(u64, Head)> {
        let _one_at_a_time = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.records.append(leaves_in)?;
        match self.cover(first, leaves_in, sign, before_visible) {
            Ok(head) => Ok((first, head)),
            Err(e) => {
                // Nobody was told of this batch: take it back, so the file never holds
                // leaves that no checkpoint covers and no caller was answered for.
                if let Err(t) = self.records.truncate(first) {
                    tracing::error!(error = %t, "cannot take back a failed batch");
                }
                Err(e)
            }
        }
    }

    fn cover(
        &self,
        first: u64,
        leaves_in: &[Vec<u8>],
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
        before_visible: impl FnOnce(u64),
    ) -> Result<Head> {
        // Hash the new leaves against the current tree without blocking readers.
        let (new_hashes, root) = {
            let st = self.read_state();
            let mut new: Vec<Hash> = Vec::with_capacity(leaves_in.len() * 2 + 32);
            for (i, e) in leaves_in.iter().enumerate() {
                let h = tlog_tiles::stored_hashes(
                    first + i as u64,
                    e,
                    &Hashes {
                        old: &st.hashes,
                        new: &new,
                    },
                )
                .map_err(corrupted)?;
                new.extend(h);
            }
            let size = first + leaves_in.len() as u64;
            let root = tree_root(&st.hashes, &new, size)?;
            (new, root)
        };
        let size = first + leaves_in.len() as u64;
        let note = sign(size, root)?;
        blockpost_files::write_replace(&self.dir.join("checkpoint"), &note)?;
        let head = Head {
            size,
            checkpoint: note,
        };
        before_visible(first);
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.hashes.extend(new_hashes);
        st.leaves = size;
        st.head = head.clone();
        Ok(head)
    }

    /// Signs and stores a checkpoint for every durable leaf if none covers them yet (after
    /// a crash between an append and its checkpoint, or on first start).
    pub fn ensure_checkpoint(
        &self,
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let size = self.len();
        {
            let st = self.read_state();
            if !st.head.checkpoint.is_empty() && st.head.size == size {
                return Ok(());
            }
        }
        let note = sign(size, self.root(size)?)?;
        blockpost_files::write_replace(&self.dir.join("checkpoint"), &note)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.head = Head {
            size,
            checkpoint: note,
        };
        Ok(())
    }
}

fn tree_root(old: &[Hash], new: &[Hash], size: u64) -> Result<[u8; 32]> {
    tlog_tiles::tree_hash(size, &Hashes { old, new })
        .map(|h| h.0)
        .map_err(corrupted)
}

/// Size and root of a checkpoint note, without checking its signature: the log only
/// compares it with its own tree.
fn parse_checkpoint(note: &[u8]) -> Result<(u64, [u8; 32])> {
    let n = signed_note::Note::from_bytes(note)
        .map_err(|e| Error::Corrupted(format!("checkpoint: {e}")))?;
    let cp = tlog_tiles::Checkpoint::from_bytes(n.text())
        .map_err(|e| Error::Corrupted(format!("checkpoint: {e}")))?;
    Ok((cp.size(), cp.hash().0))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write as _;

    use blockpost_core::{CheckpointSigner, verify_checkpoint};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn signer() -> CheckpointSigner {
        CheckpointSigner::new("test/log", SigningKey::from_bytes(&[1; 32])).unwrap()
    }

    fn sign(size: u64, root: [u8; 32]) -> Result<Vec<u8>> {
        signer()
            .sign(size, root)
            .map_err(|e| Error::Corrupted(e.to_string()))
    }

    fn open(dir: &Path) -> Result<TreeLog> {
        TreeLog::open(dir, 1024, |_, _| Ok(()))
    }

    fn fill(dir: &Path, n: usize) -> Vec<u8> {
        let log = open(dir).unwrap();
        let mut note = Vec::new();
        for i in 0..n {
            note = log
                .append(&[format!("leaf {i}").into_bytes()], sign, |_| {})
                .unwrap()
                .1
                .checkpoint;
        }
        note
    }

    #[test]
    fn reopen_rebuilds_the_tree_and_keeps_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let note = fill(dir.path(), 10);
        let log = open(dir.path()).unwrap();
        assert_eq!(log.len(), 10);
        assert_eq!(log.head().checkpoint, note);
        let cp = verify_checkpoint(&note, &signer().verifier_key()).unwrap();
        assert_eq!(cp.root, log.root(10).unwrap());
        let proof = log.prove_inclusion(3, 10).unwrap();
        cp.verify_inclusion(3, &log.leaf(3).unwrap(), &proof)
            .unwrap();
        let old = verify_checkpoint(
            &sign(4, log.root(4).unwrap()).unwrap(),
            &signer().verifier_key(),
        )
        .unwrap();
        old.verify_consistency(&cp, &log.prove_consistency(4, 10).unwrap())
            .unwrap();
        assert!(matches!(
            log.prove_inclusion(10, 10),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            log.prove_consistency(5, 11),
            Err(Error::OutOfRange(_))
        ));
    }

    #[test]
    fn one_writer_per_log() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        assert!(matches!(open(dir.path()), Err(Error::InUse(_))));
        drop(first);
        open(dir.path()).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 5);
        let path = dir.path().join("entries");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 0, 0, 0, 0, 1, 2, 3]).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let log = open(dir.path()).unwrap();
        assert_eq!(log.len(), 5);
        assert!(std::fs::metadata(&path).unwrap().len() < before);
    }

    #[test]
    fn damage_under_a_checkpoint_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 6);
        let path = dir.path().join("entries");
        let mut bytes = std::fs::read(&path).unwrap();
        let third = bytes.len() / 2;
        bytes[third] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(open(dir.path()), Err(Error::Corrupted(m)) if m.contains("untouched")));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_checkpoint_for_another_tree_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 4);
        std::fs::write(dir.path().join("checkpoint"), sign(4, [7; 32]).unwrap()).unwrap();
        assert!(matches!(open(dir.path()), Err(Error::Corrupted(m)) if m.contains("disagrees")));
    }

    #[test]
    fn an_unchecked_tail_gets_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 3);
        let old = sign(2, open(dir.path()).unwrap().root(2).unwrap()).unwrap();
        std::fs::write(dir.path().join("checkpoint"), old).unwrap();
        let log = open(dir.path()).unwrap();
        assert_eq!(log.head().size, 2);
        log.ensure_checkpoint(sign).unwrap();
        assert_eq!(log.head().size, 3);
    }

    #[test]
    fn a_checkpoint_lost_in_a_crash_is_signed_again_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let note = fill(dir.path(), 7);
        // What an unsynced replace may leave after a crash: an empty file.
        std::fs::write(dir.path().join("checkpoint"), b"").unwrap();
        let log = open(dir.path()).unwrap();
        assert_eq!(log.len(), 7);
        assert!(log.head().checkpoint.is_empty());
        log.ensure_checkpoint(sign).unwrap();
        assert_eq!(log.head().checkpoint, note, "the same note as handed out");
        drop(log);
        // Or no file at all.
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        let log = open(dir.path()).unwrap();
        log.ensure_checkpoint(sign).unwrap();
        assert_eq!(log.head().checkpoint, note);
        // Garbage is not a crash artifact: it refuses to start.
        drop(log);
        std::fs::write(dir.path().join("checkpoint"), b"not a note").unwrap();
        assert!(matches!(open(dir.path()), Err(Error::Corrupted(_))));
    }

    #[test]
    fn a_batch_whose_checkpoint_fails_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 2);
        let log = open(dir.path()).unwrap();
        let failed = log.append(
            &[b"x".to_vec(), b"y".to_vec()],
            |_, _| Err(Error::Io(std::io::Error::other("no space"))),
            |_| panic!("a failed batch never becomes visible"),
        );
        assert!(failed.is_err());
        assert_eq!((log.len(), log.head().size), (2, 2));
        let mut seen = None;
        let (first, head) = log
            .append(&[b"z".to_vec()], sign, |f| seen = Some(f))
            .unwrap();
        assert_eq!(seen, Some(2));
        assert_eq!((first, head.size), (2, 3));
        drop(log);
        let log = open(dir.path()).unwrap();
        assert_eq!(log.leaf(2).unwrap(), b"z");
    }
}
