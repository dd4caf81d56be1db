//! The directory log as a verifier sees it: RFC 6962 hashes, inclusion and consistency
//! proofs, and C2SP tlog-checkpoint signed notes.
//!
//! Proof generation and checking come from `tlog_tiles` (a port of Go's sumdb `tlog`,
//! compatible with RFC 6962); notes from `signed_note`.

use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use crate::{CheckpointError, Error, Result};

/// SHA-256 of `0x00 || entry`: the RFC 6962 leaf hash.
pub fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    tlog_tiles::record_hash(entry).0
}

/// Parses a list of 32-byte hashes.
pub fn parse_hashes(raw: &[impl AsRef<[u8]>]) -> Result<Vec<Hash>> {
    raw.iter()
        .map(|h| {
            let arr: [u8; 32] = h.as_ref().try_into().map_err(|_| Error::Malformed {
                what: "proof",
                why: format!("hash of {} bytes, expected 32", h.as_ref().len()),
            })?;
            Ok(Hash(arr))
        })
        .collect()
}

/// A checkpoint whose signature was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The log's origin line.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root hash.
    pub root: [u8; 32],
    /// The whole signed note, as received.
    pub note: Vec<u8>,
}

impl VerifiedCheckpoint {
    /// Checks that `entry` is leaf `index` of this checkpoint's tree.
    pub fn verify_inclusion(
        &self,
        index: u64,
        entry: &[u8],
        proof: &[impl AsRef<[u8]>],
    ) -> Result<()> {
        let mismatch = Error::InclusionProofMismatch {
            index,
            tree_size: self.size,
        };
        if index >= self.size {
            return Err(mismatch);
        }
        let proof = parse_hashes(proof)?;
        tlog_tiles::check_record(
            &proof,
            self.size,
            Hash(self.root),
            index,
            tlog_tiles::record_hash(entry),
        )
        .map_err(|_| mismatch)
    }

    /// Checks that `newer` extends this checkpoint (same origin, append-only).
    pub fn verify_consistency(
        &self,
        newer: &VerifiedCheckpoint,
        proof: &[impl AsRef<[u8]>],
    ) -> Result<()> {
        let mismatch = Error::ConsistencyProofMismatch {
            from: self.size,
            to: newer.size,
        };
        if self.origin != newer.origin {
            return Err(CheckpointError::OriginChanged {
                from: self.origin.clone(),
                to: newer.origin.clone(),
            }
            .into());
        }
        if newer.size < self.size {
            return Err(mismatch);
        }
        if newer.size == self.size {
            return if newer.root == self.root {
                Ok(())
            } else {
                Err(mismatch)
            };
        }
        if self.size == 0 {
            return Ok(());
        }
        let proof = parse_hashes(proof)?;
        tlog_tiles::check_tree(
            &proof,
            newer.size,
            Hash(newer.root),
            self.size,
            Hash(self.root),
        )
        .map_err(|_| mismatch)
    }
}

/// Signs checkpoints with an ed25519 key, as a C2SP signed note.
pub struct CheckpointSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl CheckpointSigner {
    /// A signer whose key name is the log's origin.
    pub fn new(origin: &str, key: SigningKey) -> Result<Self> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(CheckpointError::KeyName(origin.to_owned()).into());
        }
        let id = signed_note::key_id(origin, &verifier_key_bytes(&key.verifying_key()));
        Ok(Self {
            name: origin.to_owned(),
            id,
            key,
        })
    }

    /// The verifier key in signed-note form: `name+id+base64(0x01 || key)`.
    pub fn verifier_key(&self) -> String {
        verifier_key_string(&self.name, &self.key.verifying_key())
    }

    /// The origin.
    pub fn origin(&self) -> &str {
        &self.name
    }

    /// Signs a checkpoint for a tree of `size` leaves with root `root`.
    pub fn sign(&self, size: u64, root: [u8; 32]) -> Result<Vec<u8>> {
        let malformed = |what| {
            move |e: &dyn std::fmt::Display| CheckpointError::Malformed {
                what,
                why: e.to_string(),
            }
        };
        let cp = Checkpoint::new(&self.name, size, Hash(root), "")
            .map_err(|e| malformed("checkpoint")(&e))?;
        let mut note = Note::new(&cp.to_bytes(), &[]).map_err(|e| malformed("note")(&e))?;
        note.add_sigs(&[self])
            .map_err(|e| malformed("signature line")(&e))?;
        Ok(note.to_bytes())
    }
}

impl signed_note::Signer for CheckpointSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(msg).to_bytes().to_vec())
    }
}

fn verifier_key_bytes(key: &VerifyingKey) -> Vec<u8> {
    // 0x01 is the signed-note algorithm byte for ed25519.
    let mut v = vec![0x01];
    v.extend_from_slice(key.as_bytes());
    v
}

fn verifier_key_string(name: &str, key: &VerifyingKey) -> String {
    let raw = verifier_key_bytes(key);
    format!(
        "{name}+{:08x}+{}",
        signed_note::key_id(name, &raw),
        base64::engine::general_purpose::STANDARD.encode(&raw)
    )
}

/// Verifies a checkpoint note against a verifier key and parses it.
pub fn verify_checkpoint(note: &[u8], verifier_key: &str) -> Result<VerifiedCheckpoint> {
    let verifier =
        StandardVerifier::new(verifier_key).map_err(|e| CheckpointError::VerifierKey {
            key: verifier_key.to_owned(),
            why: e.to_string(),
        })?;
    let origin = signed_note::Verifier::name(&verifier).to_owned();
    let parsed = Note::from_bytes(note).map_err(|e| CheckpointError::Malformed {
        what: "signed note",
        why: e.to_string(),
    })?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::Unsigned { why: e.to_string() })?;
    let cp = Checkpoint::from_bytes(parsed.text()).map_err(|e| CheckpointError::Malformed {
        what: "checkpoint",
        why: e.to_string(),
    })?;
    if cp.origin() != origin {
        return Err(CheckpointError::Origin {
            origin: cp.origin().to_owned(),
            key_name: origin,
        }
        .into());
    }
    Ok(VerifiedCheckpoint {
        origin,
        size: cp.size(),
        root: cp.hash().0,
        note: note.to_vec(),
    })
}

/// An RFC 6962 tree built leaf by leaf, as a verifier that replays a log keeps it: append,
/// and the root at any size reached so far. The hashes are stored in the layout of Go's
/// sumdb `tlog` (through `tlog_tiles`), about 64 bytes per leaf.
#[derive(Clone, Debug, Default)]
pub struct ReplayTree {
    stored: Vec<Hash>,
    size: u64,
}

impl tlog_tiles::HashReader for ReplayTree {
    fn read_hashes(&self, idx: &[u64]) -> std::result::Result<Vec<Hash>, tlog_tiles::Error> {
        idx.iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.stored.get(i))
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl ReplayTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf `entry` (its hash is `SHA-256(0x00 || entry)`).
    pub fn append(&mut self, entry: &[u8]) -> Result<()> {
        let new =
            tlog_tiles::stored_hashes(self.size, entry, self).map_err(|e| Error::Malformed {
                what: "replayed tree",
                why: e.to_string(),
            })?;
        self.stored.extend(new);
        self.size += 1;
        Ok(())
    }

    /// The leaf hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<[u8; 32]> {
        if index >= self.size {
            return None;
        }
        let i = usize::try_from(tlog_tiles::stored_hash_index(0, index)).ok()?;
        self.stored.get(i).map(|h| h.0)
    }

    /// The root of the first `size` leaves (at most [`ReplayTree::size`]).
    pub fn root(&self, size: u64) -> Result<[u8; 32]> {
        if size > self.size {
            return Err(Error::Malformed {
                what: "replayed tree",
                why: format!("size {size} is beyond the {} leaves replayed", self.size),
            });
        }
        tlog_tiles::tree_hash(size, self)
            .map(|h| h.0)
            .map_err(|e| Error::Malformed {
                what: "replayed tree",
                why: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use tlog_tiles::HashReader;

    use super::*;

    /// All stored hashes of a small tree, built with tlog_tiles' own append algorithm.
    struct Mem(Vec<Hash>);

    impl HashReader for Mem {
        fn read_hashes(&self, idx: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
            Ok(idx.iter().map(|&i| self.0[i as usize]).collect())
        }
    }

    fn tree(n: u64) -> (Mem, Vec<Vec<u8>>) {
        let mut m = Mem(Vec::new());
        let mut leaves = Vec::new();
        for i in 0..n {
            let data = format!("entry {i}").into_bytes();
            let new = tlog_tiles::stored_hashes(i, &data, &m).unwrap();
            m.0.extend(new);
            leaves.push(data);
        }
        (m, leaves)
    }

    #[test]
    fn a_replayed_tree_has_the_roots_and_leaves_of_the_log() {
        let (m, leaves) = tree(37);
        let mut r = ReplayTree::new();
        for (i, l) in leaves.iter().enumerate() {
            r.append(l).unwrap();
            let n = i as u64 + 1;
            assert_eq!(r.root(n).unwrap(), tlog_tiles::tree_hash(n, &m).unwrap().0);
            assert_eq!(r.leaf(i as u64).unwrap(), leaf_hash(l));
        }
        // Every earlier size too, and nothing beyond.
        for n in 1..=37 {
            assert_eq!(r.root(n).unwrap(), tlog_tiles::tree_hash(n, &m).unwrap().0);
        }
        assert!(r.root(38).is_err());
        assert_eq!(r.leaf(37), None);
    }

    fn signer() -> CheckpointSigner {
        CheckpointSigner::new("example.com/test-log", SigningKey::from_bytes(&[3u8; 32])).unwrap()
    }

    #[test]
    fn leaf_hash_is_rfc6962() {
        // RFC 6962 leaf hash of the empty entry: SHA-256(0x00).
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn checkpoint_roundtrip_and_tamper() {
        let s = signer();
        let note = s.sign(5, [9u8; 32]).unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("example.com/test-log\n5\n"), "{text}");
        let cp = verify_checkpoint(&note, &s.verifier_key()).unwrap();
        assert_eq!((cp.size, cp.root), (5, [9u8; 32]));

        // Flip one byte of the size line.
        let mut bad = note.clone();
        bad[21] = b'6';
        assert!(matches!(
            verify_checkpoint(&bad, &s.verifier_key()),
            Err(Error::CheckpointInvalid(CheckpointError::Unsigned { .. }))
        ));
        // Another key with the same name.
        let other =
            CheckpointSigner::new("example.com/test-log", SigningKey::from_bytes(&[4u8; 32]))
                .unwrap();
        assert!(matches!(
            verify_checkpoint(&note, &other.verifier_key()),
            Err(Error::CheckpointInvalid(CheckpointError::Unsigned { .. }))
        ));
        // A key that does not parse; an origin that is not a key name.
        assert!(matches!(
            verify_checkpoint(&note, "not a key"),
            Err(Error::CheckpointInvalid(
                CheckpointError::VerifierKey { .. }
            ))
        ));
        assert!(matches!(
            CheckpointSigner::new("has space", SigningKey::from_bytes(&[4u8; 32])),
            Err(Error::CheckpointInvalid(CheckpointError::KeyName(_)))
        ));
    }

    #[test]
    fn inclusion_and_consistency_proofs_verify_and_detect_tampering() {
        let s = signer();
        let (m, leaves) = tree(37);
        for size in [1u64, 2, 7, 16, 37] {
            let root = tlog_tiles::tree_hash(size, &m).unwrap();
            let cp = verify_checkpoint(&s.sign(size, root.0).unwrap(), &s.verifier_key()).unwrap();
            for i in 0..size {
                let proof: Vec<Vec<u8>> = tlog_tiles::prove_record(size, i, &m)
                    .unwrap()
                    .iter()
                    .map(|h| h.0.to_vec())
                    .collect();
                cp.verify_inclusion(i, &leaves[i as usize], &proof).unwrap();
                let mut bad = leaves[i as usize].clone();
                bad[0] ^= 1;
                assert!(matches!(
                    cp.verify_inclusion(i, &bad, &proof),
                    Err(Error::InclusionProofMismatch { index, .. }) if index == i
                ));
                if let Some(first) = proof.first() {
                    let mut p2 = proof.clone();
                    p2[0] = first.iter().map(|b| b ^ 0xff).collect();
                    assert!(cp.verify_inclusion(i, &leaves[i as usize], &p2).is_err());
                }
            }
            for old in 1..=size {
                let old_root = tlog_tiles::tree_hash(old, &m).unwrap();
                let old_cp =
                    verify_checkpoint(&s.sign(old, old_root.0).unwrap(), &s.verifier_key())
                        .unwrap();
                let proof: Vec<Vec<u8>> = tlog_tiles::prove_tree(size, old, &m)
                    .unwrap()
                    .iter()
                    .map(|h| h.0.to_vec())
                    .collect();
                old_cp.verify_consistency(&cp, &proof).unwrap();
                // A forked old root must not be consistent.
                let mut forked = old_cp.clone();
                forked.root[0] ^= 1;
                assert!(matches!(
                    forked.verify_consistency(&cp, &proof),
                    Err(Error::ConsistencyProofMismatch { .. })
                ));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any leaf of any tree proves, and any flipped byte of entry or proof fails.
        #[test]
        fn prop_inclusion(size in 1u64..300, pick in 0u64..300, byte in 0usize..64, bit in 0u8..8) {
            let (m, leaves) = tree(size);
            let i = pick % size;
            let root = tlog_tiles::tree_hash(size, &m).unwrap();
            let cp = VerifiedCheckpoint { origin: "o".into(), size, root: root.0, note: vec![] };
            let proof: Vec<Vec<u8>> =
                tlog_tiles::prove_record(size, i, &m).unwrap().iter().map(|h| h.0.to_vec()).collect();
            cp.verify_inclusion(i, &leaves[i as usize], &proof).unwrap();
            let mut bad = leaves[i as usize].clone();
            let at = byte % bad.len();
            bad[at] ^= 1 << bit;
            proptest::prop_assert!(cp.verify_inclusion(i, &bad, &proof).is_err());
            if !proof.is_empty() {
                let mut p2 = proof.clone();
                let k = byte % p2.len();
                p2[k][byte % 32] ^= 1 << bit;
                proptest::prop_assert!(cp.verify_inclusion(i, &leaves[i as usize], &p2).is_err());
            }
        }

        /// Any prefix is consistent with any longer tree; a wrong old root is not.
        #[test]
        fn prop_consistency(size in 2u64..300, pick in 1u64..300, bit in 0u8..8) {
            let (m, _) = tree(size);
            let old = 1 + pick % (size - 1);
            let cp = |n| VerifiedCheckpoint {
                origin: "o".into(), size: n, root: tlog_tiles::tree_hash(n, &m).unwrap().0, note: vec![],
            };
            let proof: Vec<Vec<u8>> =
                tlog_tiles::prove_tree(size, old, &m).unwrap().iter().map(|h| h.0.to_vec()).collect();
            cp(old).verify_consistency(&cp(size), &proof).unwrap();
            let mut forked = cp(old);
            forked.root[0] ^= 1 << bit;
            proptest::prop_assert!(forked.verify_consistency(&cp(size), &proof).is_err());
        }
    }
}
