//! The directory log, replayed from its stream by core's one directory follower (the one
//! the gateway's replica runs, here replaying rather than requiring proofs): every
//! checkpoint's signature, every entry authorised and applied in order, the replayed
//! tree's root equal to every signed root (so the checkpoints are consistent with each
//! other and with the entries), no two signed checkpoints of one size that differ. This
//! module turns what the follower finds into alerts, and checks the watch list and the
//! directory checkpoints blocks name. No I/O.

use std::collections::BTreeMap;

use blockpost_core::follow::{DirectoryFollower, Finding};
use blockpost_proto::v1::{EntryKind, LogEntry};
use prost::Message as _;

use crate::alert::{Alert, AlertKind};
use crate::checkpoints::Kinds;
use crate::watch::Watch;

const KINDS: Kinds = Kinds {
    invalid: AlertKind::DirectoryInvalid,
    fork: AlertKind::DirectoryFork,
    inconsistent: AlertKind::DirectoryInconsistent,
};

/// The directory log as replayed so far.
pub struct DirectoryLog {
    follower: DirectoryFollower,
    /// Directory checkpoints blocks name beyond the replayed tree: (size, root, height).
    named: BTreeMap<u64, Vec<([u8; 32], u64)>>,
    /// The watch list.
    watch: Vec<Watch>,
}

impl DirectoryLog {
    /// An empty replay of the log whose checkpoints `verifier_key` signs (signed-note form).
    pub fn new(verifier_key: String) -> Self {
        Self {
            follower: DirectoryFollower::replaying(verifier_key),
            named: BTreeMap::new(),
            watch: Vec::new(),
        }
    }

    /// Raise a `watched_binding` alert for every entry of an address or real name that
    /// matches one of `watch`.
    pub fn with_watch(mut self, watch: Vec<Watch>) -> Self {
        self.watch = watch;
        self
    }

    /// Entries replayed.
    pub fn size(&self) -> u64 {
        self.follower.size()
    }

    /// The real name of `address` now, if the replay has it.
    pub fn real_name(&self, address: &str) -> Option<String> {
        self.follower
            .state()
            .participant(address)
            .map(|p| p.binding.real_name.clone())
    }

    /// The largest size of a signed directory checkpoint verified against the replay.
    pub fn checkpoint_verified(&self) -> u64 {
        self.follower.roots().verified()
    }

    /// The signed checkpoints seen and verified.
    pub fn checkpoints(&self) -> &blockpost_core::follow::SignedRoots {
        self.follower.roots()
    }

    /// A checkpoint note from the stream.
    pub fn checkpoint(&mut self, note: &[u8], now_ms: i64) -> Vec<Alert> {
        let found = self.follower.checkpoint(note);
        found
            .iter()
            .filter_map(|f| crate::checkpoints::alert("directory", KINDS, f, now_ms))
            .collect()
    }

    /// Entry `index` (from its header; `None` if it had none) from the stream.
    pub fn entry(&mut self, index: Option<u64>, entry: &[u8], now_ms: i64) -> Vec<Alert> {
        let Some(index) = index else {
            return vec![Alert::new(
                AlertKind::DirectoryInvalid,
                format!(
                    "directory entry {}",
                    hex::encode(&blockpost_core::leaf_hash(entry)[..8])
                ),
                now_ms,
                "a directory entry on the stream without its leaf index",
                serde_json::json!({ "entry": hex::encode(entry) }),
            )];
        };
        let mut alerts = Vec::new();
        if index == self.follower.size() {
            alerts.extend(self.watched(index, entry, now_ms));
        }
        let followed = self.follower.entry(index, entry, None);
        for f in &followed.findings {
            alerts.extend(entry_alert(f, now_ms));
        }
        let size = self.follower.size();
        if let Some(named) = self.named.remove(&size) {
            for (root, height) in named {
                alerts.extend(self.named_check(size, root, height, now_ms));
            }
        }
        alerts
    }

    /// A `watched_binding` alert if entry `index` binds an address or real name on the
    /// watch list.
    fn watched(&self, index: u64, entry: &[u8], now_ms: i64) -> Option<Alert> {
        if self.watch.is_empty() {
            return None;
        }
        let e = LogEntry::decode(entry).ok()?;
        let hits: Vec<String> = self
            .watch
            .iter()
            .filter(|w| w.matches(&e.address, &e.real_name))
            .map(ToString::to_string)
            .collect();
        if hits.is_empty() {
            return None;
        }
        let kind = match e.kind() {
            EntryKind::Register => "register",
            EntryKind::Rotate => "rotate",
            EntryKind::Revoke => "revoke",
            _ => "entry",
        };
        Some(Alert::new(
            AlertKind::WatchedBinding,
            format!("directory entry {index}"),
            now_ms,
            format!(
                "{kind} of {} ({}) at directory index {index}, on the watch list ({})",
                e.address,
                e.real_name,
                hits.join(", ")
            ),
            serde_json::json!({
                "index": index,
                "kind": kind,
                "address": e.address,
                "real_name": e.real_name,
                "signing_key": hex::encode(&e.signing_key),
                "logged_at_ms": e.logged_at_ms,
                "watch": hits,
                "entry": hex::encode(entry),
            }),
        ))
    }

    /// Block `height` names directory checkpoint (`size`, `root`): it must be the root of
    /// the log at that size (checked once the replay gets there).
    pub fn named_by_block(
        &mut self,
        size: u64,
        root: [u8; 32],
        height: u64,
        now_ms: i64,
    ) -> Vec<Alert> {
        if size > self.follower.size() {
            self.named.entry(size).or_default().push((root, height));
            return Vec::new();
        }
        self.named_check(size, root, height, now_ms)
    }

    fn named_check(&self, size: u64, root: [u8; 32], height: u64, now_ms: i64) -> Vec<Alert> {
        // Size 0: the empty log, whatever hash stands for it.
        if size == 0 {
            return Vec::new();
        }
        match self.follower.tree().root(size) {
            Ok(r) if r == root => Vec::new(),
            Ok(r) => vec![Alert::new(
                AlertKind::BlockInvalid,
                format!("block {height} directory"),
                now_ms,
                format!(
                    "block {height} names a directory checkpoint of size {size} whose root is not the log's"
                ),
                serde_json::json!({
                    "height": height,
                    "directory_size": size,
                    "named_root": hex::encode(root),
                    "log_root": hex::encode(r),
                }),
            )],
            Err(_) => Vec::new(),
        }
    }
}

/// The alert for what the follower found wrong with an entry, or with a checkpoint the
/// entry let it compare.
fn entry_alert(f: &Finding, now_ms: i64) -> Option<Alert> {
    Some(match f {
        // Proved or not: the stream carries two histories, which an auditor reports.
        Finding::EntryConflict { index, entry, .. } => Alert::new(
            AlertKind::DirectoryFork,
            format!("directory entry {index}"),
            now_ms,
            format!("the directory stream carries two different entries at index {index}"),
            serde_json::json!({ "index": index, "entry": hex::encode(entry) }),
        ),
        Finding::Gap {
            first_missing,
            next_seen,
        } => Alert::new(
            AlertKind::DirectoryGap,
            format!("directory entries {first_missing}..{}", next_seen - 1),
            now_ms,
            format!(
                "directory entries {first_missing} to {} are missing from the stream",
                next_seen - 1
            ),
            serde_json::json!({ "first_missing": first_missing, "next_seen": next_seen }),
        ),
        Finding::Unauthorised {
            index,
            entry,
            error,
        } => Alert::new(
            AlertKind::DirectoryInvalid,
            format!("directory entry {index}"),
            now_ms,
            format!("directory entry {index} is not authorised by the rules: {error}"),
            serde_json::json!({ "index": index, "entry": hex::encode(entry) }),
        ),
        other => return crate::checkpoints::alert("directory", KINDS, other, now_ms),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::{CheckpointSigner, ReplayTree};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn signed_roots_are_checked_against_the_replay() {
        let signer =
            CheckpointSigner::new("test.example/log", SigningKey::from_bytes(&[3; 32])).unwrap();
        let mut log = DirectoryLog::new(signer.verifier_key());
        let entries: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
        let mut tree = ReplayTree::new();
        let mut roots = Vec::new();
        for e in &entries {
            tree.append(e).unwrap();
            roots.push(tree.root(tree.size()).unwrap());
        }
        // The checkpoint comes before its entry, as the directory publishes them.
        assert!(
            log.checkpoint(&signer.sign(1, roots[0]).unwrap(), 0)
                .is_empty()
        );
        // Not a valid entry (the rules refuse junk), but the log holds it.
        let a = log.entry(Some(0), &entries[0], 0);
        assert_eq!(kinds(&a), vec![AlertKind::DirectoryInvalid]);
        // The same checkpoint again is fine; another root at that size is a fork.
        assert!(
            log.checkpoint(&signer.sign(1, roots[0]).unwrap(), 0)
                .is_empty()
        );
        assert_eq!(
            kinds(&log.checkpoint(&signer.sign(1, roots[1]).unwrap(), 0)),
            vec![AlertKind::DirectoryFork]
        );
        // Signed by another key.
        let other =
            CheckpointSigner::new("test.example/log", SigningKey::from_bytes(&[4; 32])).unwrap();
        assert_eq!(
            kinds(&log.checkpoint(&other.sign(2, roots[1]).unwrap(), 0)),
            vec![AlertKind::DirectoryInvalid]
        );
        // A signed root that is not the entries': found when the replay gets there.
        assert!(
            log.checkpoint(&signer.sign(2, [9; 32]).unwrap(), 0)
                .is_empty()
        );
        let a = log.entry(Some(1), &entries[1], 0);
        assert_eq!(
            kinds(&a),
            vec![
                AlertKind::DirectoryInvalid,
                AlertKind::DirectoryInconsistent
            ]
        );
        // Entries: the same one again is fine, another at a replayed index is a fork,
        // and a skipped index a gap.
        assert!(log.entry(Some(1), &entries[1], 0).is_empty());
        assert_eq!(
            kinds(&log.entry(Some(1), &entries[2], 0)),
            vec![AlertKind::DirectoryFork]
        );
        assert_eq!(
            kinds(&log.entry(Some(5), &entries[2], 0)),
            vec![AlertKind::DirectoryGap]
        );
        // A block naming a directory checkpoint: the log's root at that size, or an alert.
        assert!(log.named_by_block(1, roots[0], 4, 0).is_empty());
        assert_eq!(
            kinds(&log.named_by_block(2, [7; 32], 4, 0)),
            vec![AlertKind::BlockInvalid]
        );
        // Beyond the replay: checked when the log gets there.
        assert!(log.named_by_block(3, [7; 32], 5, 0).is_empty());
        let a = log.entry(Some(2), &entries[2], 0);
        assert!(kinds(&a).contains(&AlertKind::BlockInvalid), "{a:?}");
        assert_eq!(log.size(), 3);
    }
}
