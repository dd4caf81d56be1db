//! Following a log from its stream: the one set of rules for everyone who replays the
//! directory log (the gateway's and builder's replica, the auditor) or checks a log's
//! signed checkpoints against a replay (the auditor's ledger). No I/O: a driver reads the
//! stream and hands each message in; what it finds wrong comes back as [`Finding`]s, which
//! the driver counts, logs or raises as alerts.
//!
//! - [`SignedRoots`]: the signed checkpoints of one log. Each must verify with the log's
//!   key; no two of one size may differ (a fork); each root must be the replayed tree's at
//!   its size (since the replay only grows, equal roots at every size also make the
//!   checkpoints consistent with each other).
//! - [`DirectoryFollower`]: the directory log. Entries are taken in log order, each
//!   authorised by the core rules against the state so far ([`DirectoryState`]); an entry
//!   the log holds but the rules refuse binds nothing ([`DirectoryState::void`]). A
//!   follower that acts on the state (a gateway checking senders) requires each entry to
//!   come with its inclusion proof in a signed checkpoint it holds, and follows nothing
//!   else; one that only reports (an auditor) follows what the stream holds and finds out
//!   through the roots.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::log::{ReplayTree, VerifiedCheckpoint, verify_checkpoint};
use crate::state::DirectoryState;
use crate::{Applied, Error, leaf_hash};

/// What a follower found wrong with the stream it follows.
#[derive(Debug)]
#[non_exhaustive]
pub enum Finding {
    /// A checkpoint that does not verify with the log's key.
    CheckpointInvalid {
        /// The note as received.
        note: Vec<u8>,
        /// Why it does not verify.
        error: Error,
    },
    /// Two checkpoints of one size, both signed with the log's key, with different roots.
    Fork {
        /// The first one seen.
        first: VerifiedCheckpoint,
        /// The other one.
        second: VerifiedCheckpoint,
    },
    /// A signed checkpoint whose root is not the replayed tree's at its size.
    Inconsistent {
        /// The checkpoint.
        checkpoint: VerifiedCheckpoint,
        /// The replayed tree's root at its size.
        replayed_root: [u8; 32],
    },
    /// Other bytes at an index already followed.
    EntryConflict {
        /// The index.
        index: u64,
        /// The other entry.
        entry: Vec<u8>,
        /// Whether the other entry is proved in a checkpoint signed with the log's key:
        /// then the log itself forked, not only its stream.
        proved: bool,
    },
    /// Entries missing from the stream: `first_missing..next_seen`. Not followed.
    Gap {
        /// The index expected.
        first_missing: u64,
        /// The index seen.
        next_seen: u64,
    },
    /// An entry without a valid inclusion proof in a signed checkpoint the follower holds,
    /// where proofs are required. Not followed: the genuine entry still can be.
    Unproved {
        /// Its index.
        index: u64,
    },
    /// An entry the log holds that the rules do not authorise: it binds nothing.
    Unauthorised {
        /// Its index.
        index: u64,
        /// The entry.
        entry: Vec<u8>,
        /// Why the rules refuse it.
        error: Error,
    },
}

/// How many verified sizes [`SignedRoots`] remembers (to tell a fork from an old root).
pub const KEEP_VERIFIED: usize = 4096;

/// Most signed checkpoints kept beyond the replay; farther ones are dropped (and compared
/// when they come again, as every checkpoint does on the stream).
pub const MAX_AHEAD: usize = 1024;

/// The signed checkpoints of one log, as seen so far.
#[derive(Debug)]
pub struct SignedRoots {
    verifier_key: String,
    /// The first signed checkpoint seen at each size, of the last [`KEEP_VERIFIED`]
    /// verified sizes and of those ahead.
    signed: HashMap<u64, VerifiedCheckpoint>,
    /// Sizes of signed checkpoints beyond the replayed tree.
    ahead: BTreeSet<u64>,
    /// The largest size whose signed root was found equal to the replayed one.
    verified: u64,
    /// The roots of the last [`KEEP_VERIFIED`] sizes verified.
    verified_roots: BTreeMap<u64, [u8; 32]>,
    /// The largest checkpoint verified.
    latest: Option<VerifiedCheckpoint>,
}

impl SignedRoots {
    /// The checkpoints `verifier_key` (signed-note form) signs.
    pub fn new(verifier_key: String) -> Self {
        Self {
            verifier_key,
            signed: HashMap::new(),
            ahead: BTreeSet::new(),
            verified: 0,
            verified_roots: BTreeMap::new(),
            latest: None,
        }
    }

    /// The largest size of a signed checkpoint whose root was found to be the replayed
    /// tree's.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Whether `cp` (signature checked) is one whose root was found to be the replayed
    /// tree's (among the last [`KEEP_VERIFIED`] sizes verified).
    pub fn is_verified(&self, cp: &VerifiedCheckpoint) -> bool {
        self.verified_roots.get(&cp.size) == Some(&cp.root)
    }

    /// The largest checkpoint whose root was found to be the replayed tree's.
    pub fn latest_verified(&self) -> Option<&VerifiedCheckpoint> {
        self.latest.as_ref()
    }

    /// The signed checkpoint of `size` seen first, if it is kept.
    pub fn signed_at(&self, size: u64) -> Option<&VerifiedCheckpoint> {
        self.signed.get(&size)
    }

    /// The verifier key of the log's checkpoints.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// A checkpoint note, against `tree` as replayed so far.
    pub fn note(&mut self, note: &[u8], tree: &ReplayTree) -> Option<Finding> {
        let cp = match verify_checkpoint(note, &self.verifier_key) {
            Ok(cp) => cp,
            Err(error) => {
                return Some(Finding::CheckpointInvalid {
                    note: note.to_vec(),
                    error,
                });
            }
        };
        if let Some(first) = self.signed.get(&cp.size) {
            if first.root == cp.root {
                return None;
            }
            return Some(Finding::Fork {
                first: first.clone(),
                second: cp,
            });
        }
        if let Some(root) = self.verified_roots.get(&cp.size) {
            // Verified, and its first note forgotten: the same root is nothing new; another
            // one is compared with the tree below (and found inconsistent with it).
            if *root == cp.root {
                return None;
            }
        }
        if cp.size <= tree.size() {
            self.signed.insert(cp.size, cp.clone());
            return self.compare(cp, tree);
        }
        if self.ahead.len() >= MAX_AHEAD {
            let farthest = self.ahead.last().copied().unwrap_or(0);
            if cp.size > farthest {
                return None;
            }
            self.ahead.pop_last();
            self.signed.remove(&farthest);
        }
        self.ahead.insert(cp.size);
        self.signed.insert(cp.size, cp);
        None
    }

    /// The tree grew: checks the checkpoints it has reached.
    pub fn grown(&mut self, tree: &ReplayTree) -> Vec<Finding> {
        let mut found = Vec::new();
        while let Some(&size) = self.ahead.first() {
            if size > tree.size() {
                break;
            }
            self.ahead.pop_first();
            if let Some(cp) = self.signed.get(&size).cloned() {
                found.extend(self.compare(cp, tree));
            }
        }
        found
    }

    fn compare(&mut self, cp: VerifiedCheckpoint, tree: &ReplayTree) -> Option<Finding> {
        match tree.root(cp.size) {
            Ok(root) if root == cp.root => {
                self.verified = self.verified.max(cp.size);
                self.verified_roots.insert(cp.size, cp.root);
                while self.verified_roots.len() > KEEP_VERIFIED {
                    if let Some((old, _)) = self.verified_roots.pop_first() {
                        self.signed.remove(&old);
                    }
                }
                if self.latest.as_ref().is_none_or(|l| cp.size > l.size) {
                    self.latest = Some(cp);
                }
                None
            }
            Ok(replayed_root) => Some(Finding::Inconsistent {
                checkpoint: cp,
                replayed_root,
            }),
            Err(_) => None,
        }
    }
}

/// An entry's inclusion proof in a signed checkpoint, as the directory stream carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryProof {
    /// The size of the checkpoint it is proved in.
    pub tree_size: u64,
    /// The audit path.
    pub hashes: Vec<[u8; 32]>,
}

/// What following one entry did.
#[derive(Debug, Default)]
pub struct Followed {
    /// The binding it applied, if the rules authorised it and it was new.
    pub applied: Option<Applied>,
    /// What was found wrong, with the entry or with checkpoints it let the follower check.
    pub findings: Vec<Finding>,
}

/// The directory log followed from its stream: the state every check reads, the replayed
/// tree, and the log's signed checkpoints.
#[derive(Debug)]
pub struct DirectoryFollower {
    state: DirectoryState,
    tree: ReplayTree,
    roots: SignedRoots,
    require_proofs: bool,
}

impl DirectoryFollower {
    /// A follower that acts on what it follows: every entry must come with its inclusion
    /// proof in a checkpoint signed by `verifier_key` (signed-note form) that it holds.
    pub fn proving(verifier_key: String) -> Self {
        Self {
            state: DirectoryState::new(),
            tree: ReplayTree::new(),
            roots: SignedRoots::new(verifier_key),
            require_proofs: true,
        }
    }

    /// A follower that reports: it follows every entry the stream holds, in order, and
    /// finds a stream that is not the log's through the signed roots.
    pub fn replaying(verifier_key: String) -> Self {
        Self {
            require_proofs: false,
            ..Self::proving(verifier_key)
        }
    }

    /// Entries followed: the index of the next one.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The directory state.
    pub fn state(&self) -> &DirectoryState {
        &self.state
    }

    /// The replayed tree.
    pub fn tree(&self) -> &ReplayTree {
        &self.tree
    }

    /// The log's signed checkpoints.
    pub fn roots(&self) -> &SignedRoots {
        &self.roots
    }

    /// The newest signed checkpoint whose root is the replayed tree's: the state the
    /// follower vouches for.
    pub fn in_force(&self) -> Option<&VerifiedCheckpoint> {
        self.roots.latest_verified()
    }

    /// A checkpoint note from the stream.
    pub fn checkpoint(&mut self, note: &[u8]) -> Option<Finding> {
        self.roots.note(note, &self.tree)
    }

    fn proved(&self, index: u64, entry: &[u8], proof: Option<&EntryProof>) -> bool {
        proof.is_some_and(|p| {
            self.roots
                .signed_at(p.tree_size)
                .is_some_and(|cp| cp.verify_inclusion(index, entry, &p.hashes).is_ok())
        })
    }

    /// Entry `index` from the stream, with its inclusion proof if it came with one.
    pub fn entry(&mut self, index: u64, entry: &[u8], proof: Option<&EntryProof>) -> Followed {
        let checked = self.check(index, entry, proof);
        self.commit(checked)
    }

    /// The expensive half of [`DirectoryFollower::entry`] (proof, signatures,
    /// certificate), which leaves the follower unchanged: a driver that shares the state
    /// with readers runs it under a read lock, then [`DirectoryFollower::commit`] under a
    /// write lock, with nothing else changing the follower in between.
    pub fn check(&self, index: u64, entry: &[u8], proof: Option<&EntryProof>) -> Checked {
        let next = self.tree.size();
        let done = |finding| Checked(Step::Done(finding));
        if index < next {
            if self.tree.leaf(index) == Some(leaf_hash(entry)) {
                return Checked(Step::Done(None)); // the same entry again: a redelivery
            }
            return done(Some(Finding::EntryConflict {
                index,
                entry: entry.to_vec(),
                proved: self.proved(index, entry, proof),
            }));
        }
        if index > next {
            return done(Some(Finding::Gap {
                first_missing: next,
                next_seen: index,
            }));
        }
        if self.require_proofs && !self.proved(index, entry, proof) {
            return done(Some(Finding::Unproved { index }));
        }
        Checked(Step::Next {
            index,
            entry: entry.to_vec(),
            proof: proof.cloned(),
            prepared: Box::new(self.state.prepare(index, entry)),
        })
    }

    /// Follows what [`DirectoryFollower::check`] found, if the follower is still where it
    /// was then (otherwise the entry is checked again).
    pub fn commit(&mut self, checked: Checked) -> Followed {
        let mut out = Followed::default();
        let (index, entry, prepared) = match checked.0 {
            Step::Done(finding) => {
                out.findings.extend(finding);
                return out;
            }
            Step::Next {
                index,
                entry,
                proof,
                prepared,
            } => {
                if index != self.tree.size() {
                    let again = self.check(index, &entry, proof.as_ref());
                    return self.commit(again);
                }
                (index, entry, prepared)
            }
        };
        match (*prepared).and_then(|p| self.state.commit(p)) {
            Ok(a) => out.applied = Some(a),
            Err(error) => {
                self.state.void(index);
                out.findings.push(Finding::Unauthorised {
                    index,
                    entry: entry.clone(),
                    error,
                });
            }
        }
        // The log holds it either way: the tree goes on, so the signed roots still compare.
        if let Err(error) = self.tree.append(&entry) {
            // Only a tree past 2^63 leaves; nothing more can be followed.
            out.findings.push(Finding::Unauthorised {
                index,
                entry,
                error,
            });
            return out;
        }
        out.findings.extend(self.roots.grown(&self.tree));
        out
    }
}

/// An entry checked against a follower ([`DirectoryFollower::check`]), to commit.
#[derive(Debug)]
pub struct Checked(Step);

#[derive(Debug)]
enum Step {
    /// Nothing to follow: a redelivery, or what was found wrong.
    Done(Option<Finding>),
    /// The next entry, and what the rules said of it.
    Next {
        index: u64,
        entry: Vec<u8>,
        proof: Option<EntryProof>,
        prepared: Box<crate::Result<crate::Prepared>>,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::CheckpointSigner;
    use crate::testkit;

    fn signer(seed: u8) -> CheckpointSigner {
        CheckpointSigner::new("test.example/log", SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    /// A log of `n` real registrations: entries, and the root after each.
    fn log(n: usize) -> (Vec<Vec<u8>>, Vec<[u8; 32]>, ReplayTree) {
        let entries = testkit::registrations(n);
        let mut tree = ReplayTree::new();
        let mut roots = Vec::new();
        for e in &entries {
            tree.append(e).unwrap();
            roots.push(tree.root(tree.size()).unwrap());
        }
        (entries, roots, tree)
    }

    fn proof(tree: &ReplayTree, index: u64, size: u64) -> EntryProof {
        EntryProof {
            tree_size: size,
            hashes: testkit::inclusion_proof(tree, index, size),
        }
    }

    fn kinds(f: &[Finding]) -> Vec<&'static str> {
        f.iter()
            .map(|f| match f {
                Finding::CheckpointInvalid { .. } => "invalid",
                Finding::Fork { .. } => "fork",
                Finding::Inconsistent { .. } => "inconsistent",
                Finding::EntryConflict { proved: true, .. } => "conflict-proved",
                Finding::EntryConflict { proved: false, .. } => "conflict",
                Finding::Gap { .. } => "gap",
                Finding::Unproved { .. } => "unproved",
                Finding::Unauthorised { .. } => "unauthorised",
            })
            .collect()
    }

    #[test]
    fn a_proving_follower_applies_only_proved_entries_in_order() {
        let s = signer(1);
        let (entries, roots, tree) = log(3);
        let mut f = DirectoryFollower::proving(s.verifier_key());
        // No checkpoint yet: nothing proves the entry.
        let r = f.entry(0, &entries[0], Some(&proof(&tree, 0, 1)));
        assert_eq!(kinds(&r.findings), ["unproved"]);
        assert_eq!(f.size(), 0);
        assert!(f.checkpoint(&s.sign(2, roots[1]).unwrap()).is_none());
        // Without a proof, or with another entry's: not followed.
        assert_eq!(kinds(&f.entry(0, &entries[0], None).findings), ["unproved"]);
        assert_eq!(
            kinds(&f.entry(0, &entries[1], Some(&proof(&tree, 0, 2))).findings),
            ["unproved"]
        );
        let r = f.entry(0, &entries[0], Some(&proof(&tree, 0, 2)));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!(r.applied.unwrap().index, 0);
        assert!(f.in_force().is_none(), "size 2 is not reached yet");
        let r = f.entry(1, &entries[1], Some(&proof(&tree, 1, 2)));
        assert!(r.findings.is_empty());
        assert_eq!(f.in_force().unwrap().size, 2);
        assert_eq!(f.state().size(), 2);
        // A redelivery is nothing; a gap is found, not followed.
        let r = f.entry(1, &entries[1], None);
        assert!(r.findings.is_empty() && r.applied.is_none());
        assert_eq!(kinds(&f.entry(3, &entries[2], None).findings), ["gap"]);
        assert_eq!(f.size(), 2);
    }

    #[test]
    fn other_bytes_at_a_followed_index_are_a_conflict_and_a_fork_when_signed() {
        let s = signer(1);
        let (entries, roots, tree) = log(2);
        let mut f = DirectoryFollower::proving(s.verifier_key());
        f.checkpoint(&s.sign(1, roots[0]).unwrap());
        f.entry(0, &entries[0], Some(&proof(&tree, 0, 1)));
        assert_eq!(kinds(&f.entry(0, &entries[1], None).findings), ["conflict"]);
        // The log key signed a tree whose leaf 0 is entries[1]: a fork of the log itself.
        let mut forked = ReplayTree::new();
        forked.append(&entries[1]).unwrap();
        forked.append(&entries[0]).unwrap();
        assert_eq!(
            kinds(&[f
                .checkpoint(&s.sign(1, forked.root(1).unwrap()).unwrap())
                .unwrap()]),
            ["fork"]
        );
        assert!(
            f.checkpoint(&s.sign(2, forked.root(2).unwrap()).unwrap())
                .is_none()
        );
        assert_eq!(
            kinds(
                &f.entry(0, &entries[1], Some(&proof(&forked, 0, 2)))
                    .findings
            ),
            ["conflict-proved"]
        );
        // The same checkpoint again is fine; one signed by another key is invalid.
        assert!(f.checkpoint(&s.sign(1, roots[0]).unwrap()).is_none());
        assert_eq!(
            kinds(&[f.checkpoint(&signer(2).sign(2, roots[1]).unwrap()).unwrap()]),
            ["invalid"]
        );
    }

    #[test]
    fn a_replaying_follower_follows_the_stream_and_checks_the_roots() {
        let s = signer(1);
        let (entries, roots, _) = log(3);
        let mut f = DirectoryFollower::replaying(s.verifier_key());
        // A signed root that is not the entries': found when the replay gets there.
        assert!(f.checkpoint(&s.sign(2, [9; 32]).unwrap()).is_none());
        assert!(f.checkpoint(&s.sign(1, roots[0]).unwrap()).is_none());
        assert!(f.entry(0, &entries[0], None).findings.is_empty());
        assert_eq!(f.roots().verified(), 1);
        assert_eq!(
            kinds(&f.entry(1, &entries[1], None).findings),
            ["inconsistent"]
        );
        // At a size already replayed, compared at once.
        assert_eq!(
            kinds(&[f.checkpoint(&s.sign(1, [8; 32]).unwrap()).unwrap()]),
            ["fork"]
        );
        assert!(f.entry(2, &entries[2], None).findings.is_empty());
        assert!(f.checkpoint(&s.sign(3, roots[2]).unwrap()).is_none());
        assert_eq!(f.in_force().unwrap().size, 3);
    }

    #[test]
    fn an_entry_the_rules_refuse_binds_nothing_and_the_log_goes_on() {
        let s = signer(1);
        let (mut entries, _, _) = log(3);
        entries[1] = vec![0xff; 40]; // not an entry at all
        let mut tree = ReplayTree::new();
        for e in &entries {
            tree.append(e).unwrap();
        }
        let mut f = DirectoryFollower::proving(s.verifier_key());
        f.checkpoint(&s.sign(3, tree.root(3).unwrap()).unwrap());
        assert!(
            f.entry(0, &entries[0], Some(&proof(&tree, 0, 3)))
                .findings
                .is_empty()
        );
        let r = f.entry(1, &entries[1], Some(&proof(&tree, 1, 3)));
        assert_eq!(kinds(&r.findings), ["unauthorised"]);
        assert!(r.applied.is_none());
        let r = f.entry(2, &entries[2], Some(&proof(&tree, 2, 3)));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!(r.applied.unwrap().index, 2);
        assert_eq!(f.in_force().unwrap().size, 3);
        assert_eq!(f.state().addresses(), 2);
    }

    #[test]
    fn checkpoints_ahead_are_bounded() {
        let s = signer(1);
        let mut f = DirectoryFollower::replaying(s.verifier_key());
        for size in 1..=(MAX_AHEAD as u64 + 10) {
            assert!(
                f.checkpoint(&s.sign(size, [size as u8; 32]).unwrap())
                    .is_none()
            );
        }
        assert_eq!(f.roots().ahead.len(), MAX_AHEAD);
        assert!(f.roots().signed_at(1).is_some());
        assert!(f.roots().signed_at(MAX_AHEAD as u64 + 10).is_none());
    }
}
