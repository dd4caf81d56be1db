//! A block's map: where each leaf lies in the stored block, and the block's Merkle tree
//! level by level, so that a look-up reads only the leaf it serves and the hashes of its
//! audit path, instead of reading and hashing the whole block. No I/O: the builder stores
//! the bytes [`block_map`] makes beside each block, reads the ranges a [`MapLayout`] names,
//! and checks what it read with [`root_from_path`] against the signed header's root before
//! it answers (the client checks the same proof again, with `tlog_tiles`).
//!
//! The tree is RFC 6962's with the odd last node promoted (as [`crate::block::merkle_root`]
//! builds it): level 0 holds the leaf hashes, level `l + 1` holds `SHA-256(0x01 || a || b)`
//! of each pair of level `l` and the last node of an odd level as it is, up to the root.
//!
//! The map's bytes (big-endian): `u32` leaf count `n`; `n` times `u32` offset and `u32`
//! length of the leaf in the encoded block; then every level's hashes, level 0 first.

use prost::bytes::Buf as _;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, leaf_hash};

/// The byte ranges of a map: where a leaf's range and each node's hash are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    n: u32,
}

/// Bytes before the leaf ranges.
const COUNT_LEN: u64 = 4;
/// Bytes of one leaf's range.
const RANGE_LEN: u64 = 8;

impl MapLayout {
    /// The layout of a map of `n` leaves.
    pub fn new(n: u32) -> Self {
        Self { n }
    }

    /// The layout named by a map's first [`MapLayout::HEAD_LEN`] bytes.
    pub fn parse(head: &[u8]) -> Result<Self> {
        let n: [u8; 4] = head
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("shorter than its leaf count"))?;
        Ok(Self::new(u32::from_be_bytes(n)))
    }

    /// How many bytes name the layout.
    pub const HEAD_LEN: u64 = COUNT_LEN;

    /// Its leaves.
    pub fn leaves(&self) -> u32 {
        self.n
    }

    /// The sizes of the levels, from the leaves up to the root (none for no leaf).
    fn levels(&self) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut s = u64::from(self.n);
        while s > 0 {
            sizes.push(s);
            if s == 1 {
                break;
            }
            s = s.div_ceil(2);
        }
        sizes
    }

    /// Where leaf `i`'s range (offset, length in the block) is: 8 bytes.
    pub fn range_at(&self, i: u32) -> u64 {
        COUNT_LEN + RANGE_LEN * u64::from(i)
    }

    /// Where the node `j` of level `level` is (32 bytes).
    fn node_at(&self, level: usize, j: u64) -> u64 {
        let before: u64 = self.levels().iter().take(level).sum();
        COUNT_LEN + RANGE_LEN * u64::from(self.n) + 32 * (before + j)
    }

    /// Where leaf `i`'s hash is.
    pub fn leaf_hash_at(&self, i: u32) -> u64 {
        self.node_at(0, u64::from(i))
    }

    /// Where the hashes of leaf `i`'s audit path are, from the leaf up (32 bytes each).
    pub fn path_at(&self, i: u32) -> Vec<u64> {
        let mut out = Vec::new();
        let mut j = u64::from(i);
        for (level, size) in self.levels().into_iter().enumerate() {
            if size == 1 {
                break;
            }
            let sibling = j ^ 1;
            if sibling < size {
                out.push(self.node_at(level, sibling));
            }
            j /= 2;
        }
        out
    }

    /// The length of the whole map.
    pub fn len(&self) -> u64 {
        self.node_at(self.levels().len(), 0)
    }

    /// Whether the map is of no leaf.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

fn malformed(why: impl Into<String>) -> Error {
    Error::Malformed {
        what: "block map",
        why: why.into(),
    }
}

/// Parses a leaf's range as a map stores it: (offset, length) in the encoded block.
pub fn parse_range(bytes: &[u8]) -> Result<(u64, u64)> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| malformed("a leaf range is not 8 bytes"))?;
    let (off, len) = b.split_at(4);
    let word = |w: &[u8]| u64::from(u32::from_be_bytes(w.try_into().unwrap_or_default()));
    Ok((word(off), word(len)))
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A block's tree level by level, as a map holds it: level 0 the leaf hashes, each level
/// up the pairs of the one below hashed, an odd last node promoted, up to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeLevels {
    n: usize,
    hashes: Vec<[u8; 32]>,
}

impl TreeLevels {
    /// The levels over `leaf_hashes` (see [`leaf_hash`]).
    pub fn new(leaf_hashes: Vec<[u8; 32]>) -> Self {
        let n = leaf_hashes.len();
        let mut hashes = Vec::with_capacity(2 * n);
        let mut level = leaf_hashes;
        while !level.is_empty() {
            hashes.extend_from_slice(&level);
            if level.len() == 1 {
                break;
            }
            level = level
                .chunks(2)
                .map(|p| match p {
                    [a, b] => node(a, b),
                    [a] => *a,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
        }
        Self { n, hashes }
    }

    /// The root: the tree's RFC 6962 root, as [`crate::block::merkle_root`] gives it.
    pub fn root(&self) -> [u8; 32] {
        self.hashes
            .last()
            .copied()
            .unwrap_or_else(crate::block::empty_root)
    }

    /// How many leaves.
    pub fn leaves(&self) -> usize {
        self.n
    }

    /// Leaf `i`'s audit path, from the leaf up, as [`root_from_path`] takes it; empty if
    /// `i` is not a leaf.
    pub fn path(&self, i: usize) -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        if i >= self.n {
            return out;
        }
        let (mut start, mut size, mut j) = (0, self.n, i);
        while size > 1 {
            let sibling = j ^ 1;
            if sibling < size {
                out.push(self.hashes[start + sibling]);
            }
            start += size;
            size = size.div_ceil(2);
            j /= 2;
        }
        out
    }
}

/// Where each leaf (field 2) lies in an encoded `Block`: offset and length.
fn leaf_ranges(block: &[u8]) -> Result<Vec<(u32, u32)>> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut buf = block;
    while buf.has_remaining() {
        let key = prost::encoding::decode_varint(&mut buf)
            .map_err(|e| malformed(format!("a field key: {e}")))?;
        if key & 7 != 2 {
            return Err(malformed(format!(
                "field {} is not length-delimited",
                key >> 3
            )));
        }
        let len = prost::encoding::decode_varint(&mut buf)
            .map_err(|e| malformed(format!("a field length: {e}")))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= buf.len())
            .ok_or_else(|| malformed("a field runs past the block"))?;
        let offset = block.len() - buf.len();
        if key >> 3 == 2 {
            let word = |v: usize| u32::try_from(v).map_err(|_| malformed("a block over 4 GiB"));
            ranges.push((word(offset)?, word(len)?));
        }
        buf.advance(len);
    }
    Ok(ranges)
}

fn map_of(ranges: &[(u32, u32)], levels: &TreeLevels) -> Result<Vec<u8>> {
    if ranges.len() != levels.n {
        return Err(malformed(format!(
            "the block has {} leaves and its tree {}",
            ranges.len(),
            levels.n
        )));
    }
    let n = u32::try_from(ranges.len()).map_err(|_| malformed("too many leaves"))?;
    let layout = MapLayout::new(n);
    let mut out = Vec::with_capacity(usize::try_from(layout.len()).unwrap_or(0));
    out.extend_from_slice(&n.to_be_bytes());
    for (off, len) in ranges {
        out.extend_from_slice(&off.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
    for h in &levels.hashes {
        out.extend_from_slice(h);
    }
    Ok(out)
}

/// The map of an encoded `Block` (field 1 its header, field 2 each leaf, as stored): the
/// leaf ranges are where the leaves are in these very bytes.
pub fn block_map(block: &[u8]) -> Result<Vec<u8>> {
    let ranges = leaf_ranges(block)?;
    let hashes = ranges
        .iter()
        .map(|&(off, len)| leaf_hash(&block[off as usize..(off + len) as usize]))
        .collect();
    map_of(&ranges, &TreeLevels::new(hashes))
}

/// [`block_map`] with the block's tree already made (by whoever hashed its leaves to sign
/// its root): only the leaf ranges are read from the bytes.
pub fn block_map_with(block: &[u8], levels: &TreeLevels) -> Result<Vec<u8>> {
    map_of(&leaf_ranges(block)?, levels)
}

/// The root that leaf `i` of `n` with hash `leaf` and audit `path` (from the leaf up, as
/// [`MapLayout::path_at`] names it) leads to; `None` if the path has not the length the
/// tree's shape asks.
pub fn root_from_path(n: u32, i: u32, leaf: [u8; 32], path: &[[u8; 32]]) -> Option<[u8; 32]> {
    if i >= n {
        return None;
    }
    let mut h = leaf;
    let mut j = u64::from(i);
    let mut size = u64::from(n);
    let mut path = path.iter();
    while size > 1 {
        let sibling = j ^ 1;
        if sibling < size {
            let s = path.next()?;
            h = if j % 2 == 0 { node(&h, s) } else { node(s, &h) };
        }
        j /= 2;
        size = size.div_ceil(2);
    }
    path.next().is_none().then_some(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_proto::v1::{Block, SignedBlockHeader};
    use prost::Message as _;

    use super::*;
    use crate::block::{BlockTree, verify_leaf_inclusion};

    fn block(n: usize) -> Vec<u8> {
        Block {
            header: Some(SignedBlockHeader {
                header: vec![7; 40],
                signature: vec![9; 64],
            }),
            leaves: (0..n)
                .map(|i| format!("leaf {i} {}", "x".repeat(i % 200)).into_bytes())
                .collect(),
        }
        .encode_to_vec()
    }

    fn at<const N: usize>(map: &[u8], pos: u64) -> [u8; N] {
        map[pos as usize..pos as usize + N].try_into().unwrap()
    }

    #[test]
    fn a_map_gives_each_leaf_and_the_same_path_as_the_tree() {
        for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100, 257] {
            let bytes = block(n);
            let decoded = Block::decode(bytes.as_slice()).unwrap();
            let map = block_map(&bytes).unwrap();
            let layout = MapLayout::parse(&map).unwrap();
            assert_eq!(layout.leaves() as usize, n);
            assert_eq!(layout.len() as usize, map.len(), "n = {n}");
            let hashes: Vec<[u8; 32]> = decoded.leaves.iter().map(|l| leaf_hash(l)).collect();
            let tree = BlockTree::new(&hashes);
            for i in 0..n as u32 {
                let (off, len) = parse_range(&at::<8>(&map, layout.range_at(i))).unwrap();
                let leaf = &bytes[off as usize..(off + len) as usize];
                assert_eq!(leaf, decoded.leaves[i as usize].as_slice());
                let lh: [u8; 32] = at(&map, layout.leaf_hash_at(i));
                assert_eq!(lh, hashes[i as usize]);
                let path: Vec<[u8; 32]> = layout.path_at(i).iter().map(|p| at(&map, *p)).collect();
                assert_eq!(
                    Some(path.clone()),
                    tree.proof(i as usize),
                    "n = {n}, i = {i}"
                );
                assert_eq!(root_from_path(n as u32, i, lh, &path), Some(tree.root()));
                verify_leaf_inclusion(&tree.root(), n as u64, u64::from(i), leaf, &path).unwrap();
            }
        }
    }

    #[test]
    fn levels_give_the_same_root_and_map_as_the_block_alone() {
        for n in [0usize, 1, 2, 3, 6, 7, 64, 65, 1000] {
            let bytes = block(n);
            let decoded = Block::decode(bytes.as_slice()).unwrap();
            let hashes: Vec<[u8; 32]> = decoded.leaves.iter().map(|l| leaf_hash(l)).collect();
            let levels = TreeLevels::new(hashes.clone());
            assert_eq!(levels.root(), crate::block::merkle_root(&hashes), "n = {n}");
            assert_eq!(levels.leaves(), n);
            assert_eq!(
                block_map_with(&bytes, &levels).unwrap(),
                block_map(&bytes).unwrap()
            );
        }
        let other = TreeLevels::new(vec![[1; 32]; 3]);
        assert!(
            block_map_with(&block(2), &other).is_err(),
            "a tree of other leaves"
        );
    }

    #[test]
    fn a_wrong_path_or_leaf_leads_elsewhere() {
        let bytes = block(9);
        let map = block_map(&bytes).unwrap();
        let layout = MapLayout::parse(&map).unwrap();
        let path: Vec<[u8; 32]> = layout.path_at(4).iter().map(|p| at(&map, *p)).collect();
        let lh: [u8; 32] = at(&map, layout.leaf_hash_at(4));
        let root = root_from_path(9, 4, lh, &path).unwrap();
        assert_ne!(root_from_path(9, 4, [0; 32], &path), Some(root));
        assert_ne!(root_from_path(9, 5, lh, &path), Some(root));
        assert_eq!(root_from_path(9, 4, lh, &path[1..]), None, "too short");
        assert_eq!(root_from_path(9, 9, lh, &path), None, "beyond the leaves");
        let mut longer = path.clone();
        longer.push([1; 32]);
        assert_eq!(root_from_path(9, 4, lh, &longer), None, "too long");
    }

    #[test]
    fn bytes_that_are_not_a_block_are_refused() {
        assert!(block_map(&[0x0a, 0xff]).is_err(), "a length past the end");
        assert!(block_map(&[0x08, 0x01]).is_err(), "a varint field");
        assert!(MapLayout::parse(&[0, 0]).is_err());
        assert!(parse_range(&[0; 7]).is_err());
    }
}
