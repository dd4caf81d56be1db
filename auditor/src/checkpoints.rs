//! Signed checkpoints of a log the auditor replays itself (the directory log, the ledger),
//! checked by core's one set of rules ([`blockpost_core::follow::SignedRoots`]): each must
//! verify with the pinned key, no two of one size may differ, and each root must be the
//! replayed tree's at its size. This module only turns what core finds into alerts. No I/O.

use blockpost_core::ReplayTree;
use blockpost_core::follow::{self, Finding};

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

/// The signed checkpoints of one log, as seen so far, raising alerts.
pub struct SignedRoots {
    log: &'static str,
    kinds: Kinds,
    roots: follow::SignedRoots,
}

fn note_text(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// The alert for what core found wrong with a checkpoint of `log`; `None` for a finding
/// about entries (the caller raises those).
pub fn alert(log: &str, kinds: Kinds, finding: &Finding, now_ms: i64) -> Option<Alert> {
    Some(match finding {
        Finding::CheckpointInvalid { note, error } => {
            let id = blockpost_core::leaf_hash(note);
            Alert::new(
                kinds.invalid,
                format!("{log} checkpoint {}", hex::encode(&id[..8])),
                now_ms,
                format!("a {log} checkpoint does not verify with the pinned key: {error}"),
                serde_json::json!({ "checkpoint": note_text(note) }),
            )
        }
        Finding::Fork { first, second } => Alert::new(
            kinds.fork,
            format!("{log} size {}", first.size),
            now_ms,
            format!(
                "two {log} checkpoints of size {}, both signed with its key, with different roots",
                first.size
            ),
            serde_json::json!({
                "size": first.size,
                "first": note_text(&first.note),
                "second": note_text(&second.note),
            }),
        ),
        Finding::Inconsistent {
            checkpoint,
            replayed_root,
        } => Alert::new(
            kinds.inconsistent,
            format!("{log} size {}", checkpoint.size),
            now_ms,
            format!(
                "the signed {log} checkpoint of size {} is not the root of what the {log} holds",
                checkpoint.size
            ),
            serde_json::json!({
                "size": checkpoint.size,
                "checkpoint": note_text(&checkpoint.note),
                "replayed_root": hex::encode(replayed_root),
            }),
        ),
        _ => return None,
    })
}

impl SignedRoots {
    /// The checkpoints of the log called `log` ("directory", "ledger") that `verifier_key`
    /// signs, raising `kinds`.
    pub fn new(log: &'static str, verifier_key: String, kinds: Kinds) -> Self {
        Self {
            log,
            kinds,
            roots: follow::SignedRoots::new(verifier_key),
        }
    }

    /// What core knows of the log's checkpoints.
    pub fn roots(&self) -> &follow::SignedRoots {
        &self.roots
    }

    /// The largest size of a signed checkpoint whose root was found to be the replayed
    /// tree's.
    pub fn verified(&self) -> u64 {
        self.roots.verified()
    }

    /// A checkpoint note, against `tree` as replayed so far.
    pub fn note(&mut self, note: &[u8], tree: &ReplayTree, now_ms: i64) -> Vec<Alert> {
        let found = self.roots.note(note, tree);
        found
            .iter()
            .filter_map(|f| alert(self.log, self.kinds, f, now_ms))
            .collect()
    }

    /// The tree grew: checks the checkpoints it has reached.
    pub fn grown(&mut self, tree: &ReplayTree, now_ms: i64) -> Vec<Alert> {
        self.roots
            .grown(tree)
            .iter()
            .filter_map(|f| alert(self.log, self.kinds, f, now_ms))
            .collect()
    }
}
