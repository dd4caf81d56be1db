//! Anchors: OpenTimestamps proofs (`.ots`, the standard format, read and written with the
//! `opentimestamps` crate) that a block id is under a ledger root, that root in a Bitcoin
//! transaction, and that transaction in a Bitcoin block.
//!
//! The operations of a proof, from the block id (the proof's digest) on:
//! 1. the ledger: the RFC 6962 leaf hash (`prepend 00`, `sha256`), then one step per node of
//!    the inclusion path (`prepend 01‖left` or `append right`, `prepend 01`, `sha256`) up to
//!    the ledger root;
//! 2. the transaction: `prepend` the bytes of its (witness-free) serialization before the
//!    root, `append` the bytes after it, `sha256` twice: the txid in internal byte order;
//! 3. the Bitcoin block's transaction Merkle tree: one step per level (`prepend` or `append`
//!    the sibling, `sha256` twice), up to the header's Merkle root;
//! 4. a Bitcoin block-header attestation naming the block's height (or, before the
//!    transaction is confirmed or for the file sink, a pending attestation).
//!
//! Every tool that reads `.ots` replays these and compares the result with the Merkle root
//! in the header of the block at that height.

use opentimestamps::DetachedTimestampFile;
use opentimestamps::attestation::Attestation;
use opentimestamps::op::Op;
use opentimestamps::ser::DigestType;
use opentimestamps::timestamp::{Step, StepData, Timestamp};

use crate::{Error, Result};

/// The largest `.ots` file read.
pub const MAX_PROOF_LEN: usize = 64 * 1024;

fn bad(why: impl Into<String>) -> Error {
    Error::Malformed {
        what: "anchor proof",
        why: why.into(),
    }
}

/// The operations from leaf `index`'s data (a block id) to the root of a tree of `size`
/// leaves, along its RFC 6962 inclusion `path` (leaf to root, as RFC 9162 orders it).
pub fn ledger_ops(index: u64, size: u64, path: &[[u8; 32]]) -> Result<Vec<Op>> {
    if index >= size {
        return Err(bad(format!("leaf {index} is not in a tree of {size}")));
    }
    let mut ops = vec![Op::Prepend(vec![0]), Op::Sha256];
    let (mut f, mut s) = (index, size - 1);
    for p in path {
        if s == 0 {
            return Err(bad("the inclusion path is too long"));
        }
        if f & 1 == 1 || f == s {
            let mut pre = vec![1];
            pre.extend_from_slice(p);
            ops.push(Op::Prepend(pre));
            ops.push(Op::Sha256);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            ops.push(Op::Append(p.to_vec()));
            ops.push(Op::Prepend(vec![1]));
            ops.push(Op::Sha256);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(bad("the inclusion path is too short"));
    }
    Ok(ops)
}

/// The operations from `commitment` to the txid (internal byte order) of the transaction
/// whose witness-free serialization is `tx`: `commitment` must appear in it exactly once.
pub fn transaction_ops(tx: &[u8], commitment: &[u8; 32]) -> Result<Vec<Op>> {
    let at: Vec<usize> = tx
        .windows(32)
        .enumerate()
        .filter(|(_, w)| *w == commitment)
        .map(|(i, _)| i)
        .collect();
    let [at] = at.as_slice() else {
        return Err(bad(format!(
            "the ledger root appears {} times in the transaction, not once",
            at.len()
        )));
    };
    Ok(vec![
        Op::Prepend(tx[..*at].to_vec()),
        Op::Append(tx[at + 32..].to_vec()),
        Op::Sha256,
        Op::Sha256,
    ])
}

/// The operations from the txid at `index` among a block's `txids` (internal byte order)
/// to the block's Merkle root, as Bitcoin builds it (an odd level repeats its last hash).
pub fn bitcoin_merkle_ops(txids: &[[u8; 32]], index: usize) -> Result<Vec<Op>> {
    let path = bitcoin_merkle_path(txids, index)
        .ok_or_else(|| bad(format!("transaction {index} is not in the block")))?;
    let mut ops = Vec::with_capacity(path.len() * 3);
    for (level, sibling) in path.iter().enumerate() {
        if (index >> level) & 1 == 0 {
            ops.push(Op::Append(sibling.to_vec()));
        } else {
            ops.push(Op::Prepend(sibling.to_vec()));
        }
        ops.push(Op::Sha256);
        ops.push(Op::Sha256);
    }
    Ok(ops)
}

/// The Merkle path of `txids[index]` in a Bitcoin block: the siblings from the leaf up (a
/// level's last node of an odd count is paired with itself, as Bitcoin does).
pub fn bitcoin_merkle_path(txids: &[[u8; 32]], index: usize) -> Option<Vec<[u8; 32]>> {
    if index >= txids.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut level = txids.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sibling = if i.is_multiple_of(2) {
            *level.get(i + 1).unwrap_or(&level[i])
        } else {
            level[i - 1]
        };
        path.push(sibling);
        level = level
            .chunks(2)
            .map(|c| sha256d(&[c[0].as_slice(), c.get(1).unwrap_or(&c[0])].concat()))
            .collect();
        i /= 2;
    }
    Some(path)
}

/// SHA-256 of SHA-256, as Bitcoin hashes.
pub fn sha256d(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(sha2::Sha256::digest(bytes)).into()
}

/// A proof for `digest` (a block id): `ops` in order, then `attestation`.
pub fn proof(digest: [u8; 32], ops: Vec<Op>, attestation: Attestation) -> DetachedTimestampFile {
    let mut outputs = Vec::with_capacity(ops.len());
    let mut cur = digest.to_vec();
    for op in &ops {
        cur = op.execute(&cur);
        outputs.push(cur.clone());
    }
    let mut step = Step {
        data: StepData::Attestation(attestation),
        output: cur,
        next: vec![],
    };
    for (op, out) in ops.into_iter().zip(outputs).rev() {
        step = Step {
            data: StepData::Op(op),
            output: out,
            next: vec![step],
        };
    }
    DetachedTimestampFile {
        digest_type: DigestType::Sha256,
        timestamp: Timestamp {
            start_digest: digest.to_vec(),
            first_step: step,
        },
    }
}

/// The `.ots` bytes of a proof.
pub fn encode_proof(p: &DetachedTimestampFile) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    p.to_writer(&mut out)
        .map_err(|e| bad(format!("cannot write it: {e}")))?;
    Ok(out)
}

/// What a proof attests, replayed: each attestation with the value the operations give
/// there (for a Bitcoin attestation, the Merkle root the block's header must hold, in
/// internal byte order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The proof's digest (a block id).
    pub digest: [u8; 32],
    /// Each attestation reached, with the value there.
    pub attestations: Vec<(Attestation, Vec<u8>)>,
    /// Every intermediate value, in order, along the first path (the ledger root is one).
    pub path: Vec<Vec<u8>>,
}

/// Reads an `.ots` file (SHA-256 digest, at most [`MAX_PROOF_LEN`] bytes) and replays it.
pub fn replay_proof(bytes: &[u8]) -> Result<Replayed> {
    if bytes.len() > MAX_PROOF_LEN {
        return Err(bad(format!("{} bytes, limit {MAX_PROOF_LEN}", bytes.len())));
    }
    let f = DetachedTimestampFile::from_reader(bytes)
        .map_err(|e| bad(format!("not an OpenTimestamps proof: {e}")))?;
    if f.digest_type != DigestType::Sha256 {
        return Err(bad("the digest is not SHA-256"));
    }
    let digest: [u8; 32] = f
        .timestamp
        .start_digest
        .as_slice()
        .try_into()
        .map_err(|_| bad("the digest is not 32 bytes"))?;
    let mut attestations = Vec::new();
    let mut path = Vec::new();
    // Replay ourselves (the crate replays while reading; this checks its outputs too).
    fn walk(
        step: &Step,
        input: &[u8],
        first: bool,
        path: &mut Vec<Vec<u8>>,
        out: &mut Vec<(Attestation, Vec<u8>)>,
    ) -> Result<()> {
        match &step.data {
            StepData::Op(op) => {
                let v = op.execute(input);
                if v != step.output {
                    return Err(bad("an operation's output is not what it gives"));
                }
                if first {
                    path.push(v.clone());
                }
                for (i, n) in step.next.iter().enumerate() {
                    walk(n, &v, first && i == 0, path, out)?;
                }
            }
            StepData::Fork => {
                for (i, n) in step.next.iter().enumerate() {
                    walk(n, input, first && i == 0, path, out)?;
                }
            }
            StepData::Attestation(a) => out.push((a.clone(), input.to_vec())),
        }
        Ok(())
    }
    walk(
        &f.timestamp.first_step,
        &digest,
        true,
        &mut path,
        &mut attestations,
    )?;
    Ok(Replayed {
        digest,
        attestations,
        path,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::block::BlockTree;
    use crate::leaf_hash;

    #[test]
    fn ledger_ops_reach_the_root_for_every_leaf_and_size() {
        for size in 1..=33u64 {
            let ids: Vec<[u8; 32]> = (0..size).map(|i| [i as u8 + 1; 32]).collect();
            let hashes: Vec<[u8; 32]> = ids.iter().map(|d| leaf_hash(d)).collect();
            let tree = BlockTree::new(&hashes);
            for i in 0..size {
                let path = tree.proof(i as usize).unwrap();
                let ops = ledger_ops(i, size, &path).unwrap();
                let mut v = ids[i as usize].to_vec();
                for op in &ops {
                    v = op.execute(&v);
                }
                assert_eq!(v, tree.root().to_vec(), "leaf {i} of {size}");
            }
        }
    }

    #[test]
    fn a_proof_round_trips_and_replays_to_its_attestation() {
        let digest = [3u8; 32];
        let mut ops = ledger_ops(0, 1, &[]).unwrap();
        let ledger_root = leaf_hash(&digest);
        let tx = [b"prefix".as_slice(), &ledger_root, b"suffix"].concat();
        ops.extend(transaction_ops(&tx, &ledger_root).unwrap());
        let txid = sha256d(&tx);
        let txids = [[1u8; 32], txid, [2u8; 32]];
        ops.extend(bitcoin_merkle_ops(&txids, 1).unwrap());
        let p = proof(digest, ops, Attestation::Bitcoin { height: 7 });
        let bytes = encode_proof(&p).unwrap();
        assert!(bytes.starts_with(b"\x00OpenTimestamps\x00\x00Proof\x00"));
        let r = replay_proof(&bytes).unwrap();
        assert_eq!(r.digest, digest);
        assert_eq!(r.attestations.len(), 1);
        assert_eq!(r.attestations[0].0, Attestation::Bitcoin { height: 7 });
        assert!(r.path.contains(&ledger_root.to_vec()));
        assert!(r.path.contains(&txid.to_vec()));
        // The Bitcoin Merkle root of three transactions, computed the long way.
        let h = |a: &[u8; 32], b: &[u8; 32]| sha256d(&[a.as_slice(), b].concat());
        let root = h(&h(&txids[0], &txids[1]), &h(&txids[2], &txids[2]));
        assert_eq!(r.attestations[0].1, root.to_vec());
        // One byte changed: not a proof, or a different result.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 40] ^= 1;
        assert!(replay_proof(&bad).map_or(true, |x| x.attestations != r.attestations));
        assert!(transaction_ops(b"no root here, none at all, nothing", &ledger_root).is_err());
    }
}
