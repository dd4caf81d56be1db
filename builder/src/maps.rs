//! Block maps (`DATA/ledger/maps`): for each stored block, where its leaves lie and its
//! Merkle tree level by level ([`blockpost_core::blockmap`]), one record per height. A
//! message look-up reads the leaf and the hashes of its audit path only, and checks them
//! against the signed header's root before it answers.
//!
//! Derived data, like the index, and off the builder's path: a thread of its own
//! ([`spawn_mapper`]) makes the maps of the blocks stored since it last ran, from the
//! stored bytes, whenever it is told of a new block (and once a second). Until a block's
//! map is made, its look-ups read the block whole. Maps ahead of the store are cut back; a
//! damaged file is made again from the store.

use std::path::{Path, PathBuf};

use blockpost_core::blockmap::{self, MapLayout};
use blockpost_storage::{BlockStore, RecordFile};

use crate::{Error, Result};

/// A map's largest size: the leaf ranges and about two hashes per leaf, for the most
/// leaves a block may hold.
const MAX_MAP_LEN: usize =
    4 + (8 + 2 * 32) * (blockpost_core::block::MAX_BLOCK_LEAVES as usize) + 64;

/// The maps of the stored blocks.
pub struct BlockMaps {
    file: RecordFile,
    path: PathBuf,
}

/// What a look-up read of one leaf: its bytes in the block, its hash and its audit path.
pub struct MappedLeaf {
    /// The leaves of its block.
    pub leaves: u32,
    /// The leaf's bytes, as stored in the block.
    pub bytes: Vec<u8>,
    /// Its hash as the map holds it.
    pub hash: [u8; 32],
    /// Its audit path, from the leaf up.
    pub path: Vec<[u8; 32]>,
}

fn damaged(why: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!("block maps: {why}"))
}

impl BlockMaps {
    /// Opens the maps in `path` (a damaged file is made again: maps are derived).
    pub fn open(path: &Path) -> Result<Self> {
        let file = match RecordFile::open(path, MAX_MAP_LEN, 0, |_, _| Ok(())) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "damaged block maps: making them again from the blocks");
                std::fs::remove_file(path).map_err(damaged)?;
                RecordFile::open(path, MAX_MAP_LEN, 0, |_, _| Ok(()))?
            }
        };
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Brings the maps to the blocks of `store`: those it lacks are made from the stored
    /// blocks; those beyond it (blocks never acknowledged) are cut.
    pub fn catch_up(&self, store: &BlockStore) -> Result<()> {
        let (have, len) = (self.len(), store.len());
        if have > len {
            tracing::warn!(maps = have, blocks = len, path = %self.path.display(), "cutting block maps beyond the store");
            self.file.truncate(len)?;
        }
        for h in self.file.len()..len {
            self.append(h, &store.block(h)?)?;
        }
        Ok(())
    }

    /// Adds the map of block `height` (its stored bytes); maps it holds already are kept.
    pub fn append(&self, height: u64, block: &[u8]) -> Result<()> {
        self.append_map(height, blockmap::block_map(block).map_err(damaged)?)
    }

    /// Adds `map`, made with [`blockmap::block_map`] from block `height`.
    pub fn append_map(&self, height: u64, map: Vec<u8>) -> Result<()> {
        if height < self.file.len() {
            return Ok(());
        }
        if height > self.file.len() {
            return Err(damaged(format!(
                "the map of block {height} after {} maps",
                self.file.len()
            )));
        }
        self.file.append(&[map])?;
        Ok(())
    }

    /// How many blocks have a map.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Leaf `leaf` of block `height` with what proves it, reading only those bytes of the
    /// map and of the block; `None` if the block has no map yet.
    pub fn leaf(&self, store: &BlockStore, height: u64, leaf: u32) -> Result<Option<MappedLeaf>> {
        if height >= self.len() {
            return Ok(None);
        }
        let head = self.file.read_range(height, 0, MapLayout::HEAD_LEN)?;
        let layout = MapLayout::parse(&head).map_err(damaged)?;
        if leaf >= layout.leaves() {
            return Err(damaged(format!(
                "block {height} has {} leaves, not a leaf {leaf}",
                layout.leaves()
            )));
        }
        let hash_at = |pos: u64| -> Result<[u8; 32]> {
            let b = self.file.read_range(height, pos, 32)?;
            b.try_into().map_err(|_| damaged("a short hash"))
        };
        let range = self.file.read_range(height, layout.range_at(leaf), 8)?;
        let (offset, len) = blockmap::parse_range(&range).map_err(damaged)?;
        let path = layout
            .path_at(leaf)
            .into_iter()
            .map(hash_at)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(MappedLeaf {
            leaves: layout.leaves(),
            bytes: store.block_range(height, offset, len)?,
            hash: hash_at(layout.leaf_hash_at(leaf))?,
            path,
        }))
    }
}

/// What wakes the maps' thread.
pub enum MapDue {
    /// Block `height` was stored; its map, if the builder made it.
    Made(u64, Option<Vec<u8>>),
    /// Blocks were stored or adopted: make the maps the store's blocks lack.
    CatchUp,
}

/// Starts the thread that keeps the maps up with the store (both reached through `get` on
/// `owner`; the thread ends once `owner` is gone or `due`'s sender is dropped). A map the
/// builder made is written as it is when it is the next one; otherwise, and once a second,
/// the maps the store's blocks lack are made from the stored bytes.
pub fn spawn_mapper<T: Send + Sync + 'static>(
    owner: std::sync::Weak<T>,
    get: fn(&T) -> (&BlockMaps, &BlockStore),
    due: std::sync::mpsc::Receiver<MapDue>,
) {
    let spawned = std::thread::Builder::new()
        .name("block-maps".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            loop {
                let made = match due.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(MapDue::Made(h, m)) => m.map(|m| (h, m)),
                    Ok(MapDue::CatchUp) | Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let Some(owner) = owner.upgrade() else { return };
                let (maps, store) = get(&owner);
                let r = match made {
                    Some((h, map)) if h == maps.len() && h < store.len() => maps.append_map(h, map),
                    _ => maps.catch_up(store),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot keep block maps: look-ups read blocks whole");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no block-maps thread: look-ups read blocks whole");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::CheckpointSigner;
    use blockpost_core::block::merkle_root;
    use blockpost_core::blockmap::root_from_path;
    use blockpost_proto::v1::{Block, SignedBlockHeader};
    use ed25519_dalek::SigningKey;
    use prost::Message as _;

    use super::*;

    /// A store of blocks of 1, 2, ... `n` leaves (their ids: the first byte of each).
    fn store(dir: &Path, n: u8) -> (BlockStore, Vec<Vec<Vec<u8>>>) {
        let id_of = |b: &[u8]| Ok([b.get(3).copied().unwrap_or(0); 32]);
        let st = BlockStore::open(dir, 1 << 20, id_of, |_, _| Ok(())).unwrap();
        let s =
            CheckpointSigner::new("example.org/ledger", SigningKey::from_bytes(&[5; 32])).unwrap();
        let mut all = Vec::new();
        for i in st.len() as u8..n {
            let leaves: Vec<Vec<u8>> = (0..=i).map(|j| vec![i, j, 0xee]).collect();
            let b = Block {
                header: Some(SignedBlockHeader {
                    header: vec![i],
                    signature: vec![i],
                }),
                leaves: leaves.clone(),
            };
            st.append(b.encode_to_vec(), [i; 32], |size, root| {
                s.sign(size, root)
                    .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
            })
            .unwrap();
            all.push(leaves);
        }
        (st, all)
    }

    #[test]
    fn each_leaf_is_read_with_a_path_to_its_blocks_root() {
        let dir = tempfile::tempdir().unwrap();
        let (st, blocks) = store(dir.path(), 6);
        let maps = BlockMaps::open(&dir.path().join("maps")).unwrap();
        assert_eq!(maps.len(), 0);
        assert!(maps.leaf(&st, 0, 0).unwrap().is_none(), "no map yet");
        maps.catch_up(&st).unwrap();
        assert_eq!(maps.len(), 6);
        for (h, leaves) in blocks.iter().enumerate() {
            let hashes: Vec<[u8; 32]> = leaves
                .iter()
                .map(|l| blockpost_core::leaf_hash(l))
                .collect();
            for (i, want) in leaves.iter().enumerate() {
                let m = maps.leaf(&st, h as u64, i as u32).unwrap().unwrap();
                assert_eq!(&m.bytes, want);
                assert_eq!(m.hash, hashes[i]);
                assert_eq!(
                    root_from_path(m.leaves, i as u32, m.hash, &m.path),
                    Some(merkle_root(&hashes))
                );
            }
            assert!(maps.leaf(&st, h as u64, leaves.len() as u32).is_err());
        }
    }

    #[test]
    fn maps_follow_the_store_behind_ahead_or_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maps");
        {
            let (st, _) = store(dir.path(), 3);
            BlockMaps::open(&path).unwrap().catch_up(&st).unwrap();
        }
        // A store that lost a block it never acknowledged (made here as a smaller store).
        let small = tempfile::tempdir().unwrap();
        let (st, _) = store(small.path(), 2);
        let maps = BlockMaps::open(&path).unwrap();
        assert_eq!(maps.len(), 3);
        maps.catch_up(&st).unwrap();
        assert_eq!(maps.len(), 2, "cut back to the store");
        // Appending out of order is refused; again the same height is kept as it is.
        assert!(maps.append(5, &st.block(1).unwrap()).is_err());
        maps.append(1, &st.block(1).unwrap()).unwrap();
        assert_eq!(maps.len(), 2);
        drop(maps);
        // Damage below the end: the maps are made again from the blocks.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[6] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let maps = BlockMaps::open(&path).unwrap();
        maps.catch_up(&st).unwrap();
        assert_eq!(maps.len(), 2);
        assert_eq!(
            maps.leaf(&st, 1, 1).unwrap().unwrap().bytes,
            vec![1, 1, 0xee]
        );
    }
}
