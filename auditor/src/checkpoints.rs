//! Signed checkpoints of a log the auditor replays itself (the directory log, the ledger):
//! each must verify with the pinned key, no two of one size may differ, and each root must
//! be the replayed tree's at its size. Since the replayed tree only grows, equal roots at
//! every size also make the checkpoints consistent with each other. No I/O.

use std::collections::{BTreeMap, HashMap};

use blockpost_core::{ReplayTree, VerifiedCheckpoint, verify_checkpoint};

use crate::alert::{Alert, AlertKind};

/// The alert kinds of one log.
#[derive(Clone, Copy, Debug)]
pub struct Kinds {
    /// A checkpoint that does not verify.
    pub invalid: AlertKind,
    /// Two signed checkpoints of one size that differ.
    pub fork: AlertKind,
    /// A signed root that is not the replayed tree's.
    pub inconsistent: AlertKind,
}

/// The signed checkpoints of one log, as seen so far.
pub struct SignedRoots {
    log: &'static str,
    verifier_key: String,
    kinds: Kinds,
    /// The first signed checkpoint seen at each size.
    signed: HashMap<u64, VerifiedCheckpoint>,
    /// Signed checkpoints beyond the replayed tree, by size.
    ahead: BTreeMap<u64, Vec<VerifiedCheckpoint>>,
    /// The largest size whose signed root was found equal to the replayed one.
    verified: u64,
    /// The roots of the last [`KEEP_VERIFIED`] sizes verified, for the witness.
    verified_roots: BTreeMap<u64, [u8; 32]>,
    /// The largest checkpoint verified.
    latest: Option<VerifiedCheckpoint>,
}

/// How many verified sizes [`SignedRoots::is_verified`] remembers.
pub const KEEP_VERIFIED: usize = 4096;

fn note_text(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

impl SignedRoots {
    /// The checkpoints of the log called `log` ("directory", "ledger") that `verifier_key`
    /// signs, raising `kinds`.
    pub fn new(log: &'static str, verifier_key: String, kinds: Kinds) -> Self {
        Self {
            log,
            verifier_key,
            kinds,
            signed: HashMap::new(),
            ahead: BTreeMap::new(),
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

    /// The verifier key of the log's checkpoints.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// A checkpoint note, against `tree` as replayed so far.
    pub fn note(&mut self, note: &[u8], tree: &ReplayTree, now_ms: i64) -> Vec<Alert> {
        let log = self.log;
        let cp = match verify_checkpoint(note, &self.verifier_key) {
            Ok(cp) => cp,
            Err(e) => {
                let id = blockpost_core::leaf_hash(note);
                return vec![Alert::new(
                    self.kinds.invalid,
                    format!("{log} checkpoint {}", hex::encode(&id[..8])),
                    now_ms,
                    format!("a {log} checkpoint does not verify with the pinned key: {e}"),
                    serde_json::json!({ "checkpoint": note_text(note) }),
                )];
            }
        };
        if let Some(first) = self.signed.get(&cp.size) {
            if first.root == cp.root {
                return Vec::new();
            }
            return vec![Alert::new(
                self.kinds.fork,
                format!("{log} size {}", cp.size),
                now_ms,
                format!(
                    "two {log} checkpoints of size {}, both signed with its key, with different roots",
                    cp.size
                ),
                serde_json::json!({
                    "size": cp.size,
                    "first": note_text(&first.note),
                    "second": note_text(&cp.note),
                }),
            )];
        }
        self.signed.insert(cp.size, cp.clone());
        if cp.size <= tree.size() {
            return self.compare(&cp, tree, now_ms);
        }
        self.ahead.entry(cp.size).or_default().push(cp);
        Vec::new()
    }

    /// The tree grew: checks the checkpoints it has reached.
    pub fn grown(&mut self, tree: &ReplayTree, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > tree.size() {
                break;
            }
            for cp in entry.remove() {
                alerts.extend(self.compare(&cp, tree, now_ms));
            }
        }
        alerts
    }

    fn compare(&mut self, cp: &VerifiedCheckpoint, tree: &ReplayTree, now_ms: i64) -> Vec<Alert> {
        let log = self.log;
        match tree.root(cp.size) {
            Ok(root) if root == cp.root => {
                self.verified = self.verified.max(cp.size);
                self.verified_roots.insert(cp.size, cp.root);
                if self.verified_roots.len() > KEEP_VERIFIED {
                    self.verified_roots.pop_first();
                }
                if self.latest.as_ref().is_none_or(|l| cp.size > l.size) {
                    self.latest = Some(cp.clone());
                }
                Vec::new()
            }
            Ok(root) => vec![Alert::new(
                self.kinds.inconsistent,
                format!("{log} size {}", cp.size),
                now_ms,
                format!(
                    "the signed {log} checkpoint of size {} is not the root of what the {log} holds",
                    cp.size
                ),
                serde_json::json!({
                    "size": cp.size,
                    "checkpoint": note_text(&cp.note),
                    "replayed_root": hex::encode(root),
                }),
            )],
            Err(_) => Vec::new(),
        }
    }
}
