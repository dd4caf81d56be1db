//! Blocks as a verifier sees them: the RFC 6962 Merkle root over a block's leaves, the
//! signed header, the chain link between headers, and what a leaf may be.
//!
//! A block's tree is built with `rs_merkle` over RFC 6962 hashes (leaves
//! `SHA-256(0x00 || bytes)`, nodes `SHA-256(0x01 || left || right)`, the odd last node
//! promoted, which gives the same roots and paths as RFC 9162's split at the largest power
//! of two). Inclusion proofs are checked with `tlog_tiles`, an independent RFC 6962
//! implementation, so that the two can never agree on a wrong tree by sharing code.
//!
//! The header's SHA-256 (over its canonical encoding, which is what the builder signs) is
//! the block id; the ids are the leaves of the ledger, a transparency log with C2SP
//! checkpoints like the directory's.

use blockpost_proto::v1::{
    Block, BlockHeader, Envelope, LedgerRecord, PartitionRange, SignedBlockHeader,
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tlog_tiles::Hash;

use crate::{Error, Result, decode_canonical, leaf_hash, parse_hashes};

/// What the builder's signature covers before the header bytes.
pub const BLOCK_HEADER_CONTEXT: &[u8] = b"blockpost/v1 block header\n";

/// Most leaves in one block.
pub const MAX_BLOCK_LEAVES: u64 = 1 << 20;

/// The RFC 6962 hasher for `rs_merkle`: nodes are `SHA-256(0x01 || left || right)`, a
/// node without a sibling is promoted as it is; leaves come in already hashed.
#[derive(Clone)]
pub struct Rfc6962;

impl rs_merkle::Hasher for Rfc6962 {
    type Hash = [u8; 32];

    fn hash(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(r) => {
                let mut h = Sha256::new();
                h.update([1u8]);
                h.update(left);
                h.update(r);
                h.finalize().into()
            }
            None => *left,
        }
    }
}

/// SHA-256 of the empty string: RFC 9162's root of the empty tree.
pub fn empty_root() -> [u8; 32] {
    Sha256::digest([]).into()
}

/// The RFC 6962 root over leaf hashes (see [`leaf_hash`]).
pub fn merkle_root(leaf_hashes: &[[u8; 32]]) -> [u8; 32] {
    if leaf_hashes.is_empty() {
        return empty_root();
    }
    rs_merkle::MerkleTree::<Rfc6962>::from_leaves(leaf_hashes)
        .root()
        .unwrap_or_else(empty_root)
}

/// A block's Merkle tree, for proofs of several leaves without rebuilding it.
pub struct BlockTree {
    tree: rs_merkle::MerkleTree<Rfc6962>,
    len: usize,
}

impl BlockTree {
    /// The tree over `leaf_hashes`.
    pub fn new(leaf_hashes: &[[u8; 32]]) -> Self {
        Self {
            tree: rs_merkle::MerkleTree::<Rfc6962>::from_leaves(leaf_hashes),
            len: leaf_hashes.len(),
        }
    }

    /// Its root ([`empty_root`] when it has no leaf).
    pub fn root(&self) -> [u8; 32] {
        self.tree.root().unwrap_or_else(empty_root)
    }

    /// The RFC 6962 inclusion proof (audit path, from the leaf up) of leaf `index`.
    pub fn proof(&self, index: usize) -> Option<Vec<[u8; 32]>> {
        (index < self.len).then(|| self.tree.proof(&[index]).proof_hashes().to_vec())
    }
}

/// Checks that `leaf` (its bytes) is leaf `index` of a tree of `size` leaves with `root`.
pub fn verify_leaf_inclusion(
    root: &[u8],
    size: u64,
    index: u64,
    leaf: &[u8],
    proof: &[impl AsRef<[u8]>],
) -> Result<()> {
    let mismatch = Error::InclusionProofMismatch {
        index,
        tree_size: size,
    };
    let root: [u8; 32] = root.try_into().map_err(|_| Error::Malformed {
        what: "Merkle root",
        why: format!("{} bytes, expected 32", root.len()),
    })?;
    if index >= size {
        return Err(mismatch);
    }
    let proof = parse_hashes(proof)?;
    tlog_tiles::check_record(
        &proof,
        size,
        Hash(root),
        index,
        tlog_tiles::record_hash(leaf),
    )
    .map_err(|_| mismatch)
}

/// The first 8 bytes of SHA-256 of an ed25519 public key: the header's `builder_key_id`.
pub fn builder_key_id(key: &VerifyingKey) -> [u8; 8] {
    let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    id
}

/// The block id: SHA-256 of the header's encoding.
pub fn block_id(header_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(header_bytes).into()
}

fn signed_message(header_bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BLOCK_HEADER_CONTEXT.len() + header_bytes.len());
    m.extend_from_slice(BLOCK_HEADER_CONTEXT);
    m.extend_from_slice(header_bytes);
    m
}

/// Encodes and signs a header.
pub fn sign_header(key: &SigningKey, header: &BlockHeader) -> SignedBlockHeader {
    let bytes = header.encode_to_vec();
    let signature = key.sign(&signed_message(&bytes)).to_bytes().to_vec();
    SignedBlockHeader {
        header: bytes,
        signature,
    }
}

/// What a leaf is, from its bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Leaf {
    /// A message: an `Envelope` in canonical encoding.
    Message(Envelope),
    /// A transaction closing or an anchor.
    Record(LedgerRecord),
}

/// Tells a message leaf from a record leaf: a canonical `Envelope` (fields 1 and 2), or a
/// canonical `LedgerRecord` with its one record set (fields 14 and 15); anything else is
/// refused.
pub fn classify_leaf(bytes: &[u8]) -> Result<Leaf> {
    if let Ok(e) = decode_canonical::<Envelope>(bytes, "envelope")
        && !e.content.is_empty()
    {
        return Ok(Leaf::Message(e));
    }
    match decode_canonical::<LedgerRecord>(bytes, "ledger record") {
        Ok(r) if r.record.is_some() => Ok(Leaf::Record(r)),
        _ => Err(Error::Malformed {
            what: "block leaf",
            why: "neither a canonical envelope nor a ledger record".into(),
        }),
    }
}

/// A header whose signature, encoding and fields were checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedHeader {
    /// The decoded header.
    pub header: BlockHeader,
    /// Its bytes, as signed.
    pub bytes: Vec<u8>,
    /// The builder's ed25519 signature over `"blockpost/v1 block header\n" || bytes`.
    pub signature: Vec<u8>,
    /// The block id.
    pub id: [u8; 32],
}

/// Checks a signed header: canonical encoding, the builder's key id, the signature
/// (strict ed25519), hash lengths, partitions in ascending order with `first <= last`.
pub fn verify_header(signed: &SignedBlockHeader, key: &VerifyingKey) -> Result<VerifiedHeader> {
    let header: BlockHeader = decode_canonical(&signed.header, "block header")?;
    let bad = |why: String| Error::Malformed {
        what: "block header",
        why,
    };
    if header.builder_key_id != builder_key_id(key) {
        return Err(bad(format!(
            "builder key id {} is not the builder's ({})",
            hex::encode(&header.builder_key_id),
            hex::encode(builder_key_id(key))
        )));
    }
    let sig = Signature::from_slice(&signed.signature)
        .map_err(|_| Error::SignatureInvalid("block header signature is malformed"))?;
    key.verify_strict(&signed_message(&signed.header), &sig)
        .map_err(|_| Error::SignatureInvalid("block header"))?;
    if header.merkle_root.len() != 32 || header.directory_root.len() != 32 {
        return Err(bad("a root is not 32 bytes".into()));
    }
    match (header.height, header.previous_hash.len()) {
        (0, 0) => {}
        (0, _) => return Err(bad("height 0 names a previous block".into())),
        (_, 32) => {}
        (h, n) => return Err(bad(format!("height {h}: previous hash of {n} bytes"))),
    }
    if header.leaf_count > MAX_BLOCK_LEAVES {
        return Err(bad(format!(
            "{} leaves, at most {MAX_BLOCK_LEAVES}",
            header.leaf_count
        )));
    }
    check_partitions(&header.partitions).map_err(bad)?;
    Ok(VerifiedHeader {
        id: block_id(&signed.header),
        bytes: signed.header.clone(),
        signature: signed.signature.clone(),
        header,
    })
}

fn check_partitions(p: &[PartitionRange]) -> std::result::Result<(), String> {
    for w in p.windows(2) {
        if w[0].partition >= w[1].partition {
            return Err("partitions are not in ascending order".into());
        }
    }
    for r in p {
        if r.first_seq == 0 || r.first_seq > r.last_seq {
            return Err(format!(
                "partition {}: range {}..={} is empty or starts at 0",
                r.partition, r.first_seq, r.last_seq
            ));
        }
    }
    Ok(())
}

impl VerifiedHeader {
    /// Checks that this header follows `prev`: the next height, `prev`'s id as previous
    /// hash, time not going back, and each partition's range starting after `prev`'s.
    pub fn check_follows(&self, prev: &VerifiedHeader) -> Result<()> {
        let (h, p) = (&self.header, &prev.header);
        let broken = |why: String| Error::Malformed {
            what: "block chain",
            why: format!("block {} after block {}: {why}", h.height, p.height),
        };
        if h.height != p.height.saturating_add(1) {
            return Err(broken("heights are not consecutive".into()));
        }
        if h.previous_hash != prev.id {
            return Err(broken(
                "previous hash is not the id of the block before".into(),
            ));
        }
        if h.time_ms < p.time_ms {
            return Err(broken("time goes back".into()));
        }
        for r in &h.partitions {
            if let Some(q) = p.partitions.iter().find(|q| q.partition == r.partition)
                && r.first_seq <= q.last_seq
            {
                return Err(broken(format!(
                    "partition {} overlaps: starts at {} but the block before ended at {}",
                    r.partition, r.first_seq, q.last_seq
                )));
            }
        }
        Ok(())
    }
}

/// A block whose header, leaf count, leaves and Merkle root were checked.
#[derive(Clone, Debug)]
pub struct VerifiedBlock {
    /// The header.
    pub header: VerifiedHeader,
    /// The leaves, in order.
    pub leaves: Vec<Vec<u8>>,
    /// What each leaf is.
    pub kinds: Vec<Leaf>,
}

/// Checks a whole block: its header ([`verify_header`]), that it holds `leaf_count`
/// leaves, that every leaf is a message or a record ([`classify_leaf`]), and that the
/// Merkle root recomputed from the leaves is the header's.
pub fn verify_block(block: &Block, key: &VerifyingKey) -> Result<VerifiedBlock> {
    let signed = block.header.as_ref().ok_or_else(|| Error::Malformed {
        what: "block",
        why: "no header".into(),
    })?;
    let header = verify_header(signed, key)?;
    if header.header.leaf_count != block.leaves.len() as u64 {
        return Err(Error::Malformed {
            what: "block",
            why: format!(
                "header says {} leaves, the block holds {}",
                header.header.leaf_count,
                block.leaves.len()
            ),
        });
    }
    let kinds = block
        .leaves
        .iter()
        .map(|l| classify_leaf(l))
        .collect::<Result<Vec<_>>>()?;
    let hashes: Vec<[u8; 32]> = block.leaves.iter().map(|l| leaf_hash(l)).collect();
    if merkle_root(&hashes).as_slice() != header.header.merkle_root.as_slice() {
        return Err(Error::Malformed {
            what: "block",
            why: format!(
                "block {}: the Merkle root of its leaves is not the header's",
                header.header.height
            ),
        });
    }
    Ok(VerifiedBlock {
        header,
        leaves: block.leaves.clone(),
        kinds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockpost_proto::v1::{TransactionClosing, ledger_record};

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
    }

    #[test]
    fn rs_merkle_roots_and_paths_verify_with_an_independent_rfc6962() {
        // tlog_tiles (a port of Go's sumdb tlog) checks every path rs_merkle makes, for
        // every size up to 70: same roots, same audit paths.
        for n in 1..=70usize {
            let data = leaves(n);
            let hashes: Vec<[u8; 32]> = data.iter().map(|d| leaf_hash(d)).collect();
            let tree = BlockTree::new(&hashes);
            assert_eq!(tree.root(), merkle_root(&hashes));
            for (i, d) in data.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                verify_leaf_inclusion(&tree.root(), n as u64, i as u64, d, &proof)
                    .unwrap_or_else(|e| panic!("n={n} i={i}: {e}"));
                assert!(
                    verify_leaf_inclusion(&tree.root(), n as u64, i as u64, b"other", &proof)
                        .is_err()
                );
            }
            assert!(tree.proof(n).is_none());
        }
        // RFC 9162 2.1.1: the empty tree's root is SHA-256 of the empty string.
        assert_eq!(
            hex::encode(merkle_root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // One leaf: the root is its leaf hash.
        assert_eq!(merkle_root(&[leaf_hash(b"x")]), leaf_hash(b"x"));
    }

    fn header(height: u64, prev: Vec<u8>, key: &SigningKey, leaves: &[Vec<u8>]) -> BlockHeader {
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|d| leaf_hash(d)).collect();
        BlockHeader {
            height,
            previous_hash: prev,
            merkle_root: merkle_root(&hashes).to_vec(),
            leaf_count: leaves.len() as u64,
            partitions: vec![PartitionRange {
                partition: 0,
                first_seq: height * 10 + 1,
                last_seq: height * 10 + 10,
            }],
            directory_size: 3,
            directory_root: vec![7; 32],
            time_ms: 1_000 + height as i64,
            builder_key_id: builder_key_id(&key.verifying_key()).to_vec(),
        }
    }

    fn envelope_leaf(i: u8) -> Vec<u8> {
        Envelope {
            content: vec![i; 10],
            signature: vec![1; 64],
        }
        .encode_to_vec()
    }

    #[test]
    fn headers_sign_verify_chain_and_refuse_tampering() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let vk = key.verifying_key();
        let l0 = vec![envelope_leaf(1), envelope_leaf(2)];
        let s0 = sign_header(&key, &header(0, Vec::new(), &key, &l0));
        let v0 = verify_header(&s0, &vk).unwrap();
        assert_eq!(v0.id, block_id(&s0.header));
        let l1 = vec![envelope_leaf(3)];
        let s1 = sign_header(&key, &header(1, v0.id.to_vec(), &key, &l1));
        let v1 = verify_header(&s1, &vk).unwrap();
        v1.check_follows(&v0).unwrap();
        assert!(v0.check_follows(&v1).is_err());

        // Another key, a flipped byte, padding: refused.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify_header(&s0, &other).is_err());
        let mut bad = s0.clone();
        bad.header[3] ^= 1;
        assert!(verify_header(&bad, &vk).is_err());
        let mut padded = s0.clone();
        padded.header.extend_from_slice(&[0x9a, 0x06, 1, 0]);
        assert!(matches!(
            verify_header(&padded, &vk),
            Err(Error::NotCanonical { .. })
        ));
        // A link to the wrong block, a gap in heights, an overlapping range.
        let s1b = sign_header(&key, &header(1, vec![0; 32], &key, &l1));
        assert!(
            verify_header(&s1b, &vk)
                .unwrap()
                .check_follows(&v0)
                .is_err()
        );
        let s2 = sign_header(&key, &header(2, v0.id.to_vec(), &key, &l1));
        assert!(verify_header(&s2, &vk).unwrap().check_follows(&v0).is_err());
        let mut h = header(1, v0.id.to_vec(), &key, &l1);
        h.partitions[0].first_seq = 10;
        let s = sign_header(&key, &h);
        assert!(verify_header(&s, &vk).unwrap().check_follows(&v0).is_err());
    }

    #[test]
    fn blocks_verify_their_root_count_and_leaf_kinds() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let vk = key.verifying_key();
        let closing = LedgerRecord {
            record: Some(ledger_record::Record::Closing(TransactionClosing {
                transaction_id: "settle-42".into(),
                status: 2,
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let leaves = vec![envelope_leaf(1), closing.clone(), envelope_leaf(2)];
        let block = Block {
            header: Some(sign_header(&key, &header(0, Vec::new(), &key, &leaves))),
            leaves: leaves.clone(),
        };
        let v = verify_block(&block, &vk).unwrap();
        assert!(matches!(v.kinds[0], Leaf::Message(_)));
        assert!(matches!(v.kinds[1], Leaf::Record(_)));
        // A record never reads as an envelope, and junk is neither.
        assert!(decode_canonical::<Envelope>(&closing, "envelope").is_err());
        assert!(classify_leaf(b"\x01\x02junk").is_err());

        let mut dropped = block.clone();
        dropped.leaves.pop();
        assert!(verify_block(&dropped, &vk).is_err());
        let mut swapped = block.clone();
        swapped.leaves.swap(0, 2);
        assert!(verify_block(&swapped, &vk).is_err());
        let mut junk = block.clone();
        junk.leaves[1] = b"junk".to_vec();
        assert!(verify_block(&junk, &vk).is_err());
    }
}
