//! The directory's store: a [`TreeLog`] of entries with the address index on top of it.
//! The index (address → its entries, revoked or not) is rebuilt from the log at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use blockpost_core::decode_entry;
use blockpost_proto::v1::EntryKind;
use blockpost_storage::{Head, TreeLog};

use crate::Result;

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

/// The log and its index.
pub struct Store {
    log: TreeLog,
    index: RwLock<HashMap<String, AddressState>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, rebuilding the tree and the index.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut index: HashMap<String, AddressState> = HashMap::new();
        let log = TreeLog::open(dir, MAX_ENTRY_LEN, |n, bytes| {
            let (_, b) = decode_entry(bytes).map_err(|e| {
                blockpost_storage::Error::Corrupted(format!("entry {n} does not decode: {e}"))
            })?;
            let st = index.entry(b.address.as_str().to_owned()).or_default();
            st.entries.push(n);
            st.revoked = b.kind == EntryKind::Revoke;
            Ok(())
        })?;
        Ok(Self {
            log,
            index: RwLock::new(index),
        })
    }

    /// Number of durable entries (at least the checkpoint size).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.log.len()
    }

    /// The newest checkpoint handed out.
    pub fn head(&self) -> Head {
        self.log.head()
    }

    /// What the log knows of `address`.
    pub fn address(&self, address: &str) -> Option<AddressState> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .cloned()
    }

    /// The bytes of entry `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        Ok(self.log.leaf(index)?)
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        Ok(self.log.prove_inclusion(index, size)?)
    }

    /// Consistency proof from the tree of `old` leaves to the tree of `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        Ok(self.log.prove_consistency(old, new)?)
    }

    /// Appends `entries` durably with the checkpoint `sign` makes for the new tree, then
    /// indexes them (`bindings`: address and whether the entry revokes, per entry).
    pub fn append(
        &self,
        entries: &[Vec<u8>],
        bindings: &[(String, bool)],
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<(u64, Head)> {
        // The index learns of the entries before the new head is visible, so a look-up never
        // sees a head whose entries the index lacks (it filters what is beyond its head).
        self.log
            .append(
                entries,
                |size, root| {
                    sign(size, root).map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
                },
                |first| {
                    let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                    for (i, (addr, revoked)) in bindings.iter().enumerate() {
                        let a = index.entry(addr.clone()).or_default();
                        a.entries.push(first + i as u64);
                        a.revoked = *revoked;
                    }
                },
            )
            .map_err(Into::into)
    }

    /// Signs a checkpoint for the whole log if none covers it yet.
    pub fn ensure_checkpoint(
        &self,
        sign: impl FnOnce(u64, [u8; 32]) -> Result<Vec<u8>>,
    ) -> Result<()> {
        Ok(self.log.ensure_checkpoint(|size, root| {
            sign(size, root).map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use blockpost_core::{CheckpointSigner, Identity};
    use blockpost_proto::v1::LogEntry;
    use ed25519_dalek::SigningKey;
    use prost::Message as _;

    use super::*;
    use crate::Error;

    fn entry(address: &str, kind: EntryKind) -> Vec<u8> {
        let id = Identity::generate();
        LogEntry {
            kind: kind as i32,
            address: address.into(),
            real_name: "T AG".into(),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_index_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = CheckpointSigner::new("test/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let sign = |size, root| Ok(s.sign(size, root)?);
        let store = Store::open(dir.path()).unwrap();
        store
            .append(
                &[
                    entry("a", EntryKind::Register),
                    entry("b", EntryKind::Register),
                ],
                &[("a".into(), false), ("b".into(), false)],
                sign,
            )
            .unwrap();
        store
            .append(
                &[entry("a", EntryKind::Revoke)],
                &[("a".into(), true)],
                sign,
            )
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let a = store.address("a").unwrap();
        assert_eq!((a.entries, a.revoked), (vec![0, 2], true));
        assert_eq!(store.address("b").unwrap().current(), Some(1));
        assert!(store.address("c").is_none());
        // An entry that does not decode is damage, reported at start.
        drop(store);
        let dir2 = tempfile::tempdir().unwrap();
        let log = TreeLog::open(dir2.path(), 1024, |_, _| Ok(())).unwrap();
        log.append(
            &[vec![0xff, 0xff]],
            |size, root| {
                s.sign(size, root)
                    .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
            },
            |_| {},
        )
        .unwrap();
        drop(log);
        assert!(matches!(
            Store::open(dir2.path()),
            Err(Error::Storage(blockpost_storage::Error::Corrupted(m))) if m.contains("does not decode")
        ));
    }
}
