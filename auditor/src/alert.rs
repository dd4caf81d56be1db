//! Alerts: what the auditor found wrong, with the evidence, kept in an append-only JSON-lines
//! file (`DATA/alerts.jsonl`) and raised once each, also across restarts.

use std::collections::HashSet;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What kind of problem an alert reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// A block that does not verify: its encoding, the builder's signature, its Merkle root,
    /// or a message in it that breaks the envelope rules or is not signed by its sender.
    BlockInvalid,
    /// A block whose previous hash is not the id of the block before it, or a height
    /// missing from the blocks stream.
    ChainBroken,
    /// Two different blocks, both signed by the builder, at one height.
    Fork,
    /// A block whose transaction closing records are not the ones the rules give for the
    /// blocks before it.
    ClosingWrong,
    /// A message in more than one block.
    DuplicateMessage,
    /// A message in a block that is not on the firehose in the range the block names.
    UnknownMessage,
    /// A valid firehose message that is in no block by its deadline.
    Omission,
    /// Firehose sequence numbers missing from the stream: messages deleted.
    FirehoseGap,
    /// An open transaction past its deadline, with no block closing it although one was
    /// due.
    TransactionNotClosed,
    /// A directory checkpoint that does not verify with the pinned log key, or an entry
    /// the rules do not authorise.
    DirectoryInvalid,
    /// Two directory checkpoints of one size, both signed, that differ; or two different
    /// entries at one index.
    DirectoryFork,
    /// A signed directory checkpoint whose root is not the root of the entries the log
    /// carries (so it is not consistent with the checkpoints before it).
    DirectoryInconsistent,
    /// Directory entries missing from the stream.
    DirectoryGap,
    /// A new, rotated or revoked binding of an address or real name on the watch list.
    WatchedBinding,
    /// A ledger checkpoint that does not verify with the pinned ledger key.
    LedgerInvalid,
    /// Two ledger checkpoints of one size, both signed, that differ.
    LedgerFork,
    /// A signed ledger checkpoint whose root is not the root of the block ids the chain
    /// holds.
    LedgerInconsistent,
    /// The node's block builder stopped putting messages in blocks: every block is read,
    /// and firehose messages past their deadline all come after the last one any block
    /// names. Raised once per stall episode (its subject names that last sequence), next
    /// to the omission of each message.
    BuilderStalled,
    /// A delivery record that breaks the delivery rules (`core::delivery::DeliveryRules`):
    /// a delivery for a transaction not finished, for another transaction than the
    /// instruction committed to, a second delivery, a stage out of order, or a
    /// confirmation whose proof does not verify against the header given.
    DeliveryWrong,
}

impl AlertKind {
    /// The name used in files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlockInvalid => "block_invalid",
            Self::ChainBroken => "chain_broken",
            Self::Fork => "fork",
            Self::ClosingWrong => "closing_wrong",
            Self::DuplicateMessage => "duplicate_message",
            Self::UnknownMessage => "unknown_message",
            Self::Omission => "omission",
            Self::FirehoseGap => "firehose_gap",
            Self::TransactionNotClosed => "transaction_not_closed",
            Self::DirectoryInvalid => "directory_invalid",
            Self::DirectoryFork => "directory_fork",
            Self::DirectoryInconsistent => "directory_inconsistent",
            Self::DirectoryGap => "directory_gap",
            Self::WatchedBinding => "watched_binding",
            Self::LedgerInvalid => "ledger_invalid",
            Self::LedgerFork => "ledger_fork",
            Self::LedgerInconsistent => "ledger_inconsistent",
            Self::BuilderStalled => "builder_stalled",
            Self::DeliveryWrong => "delivery_wrong",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What kind of problem.
    pub kind: AlertKind,
    /// What it is about, unique per problem of a kind ("block 7", "message ab12…",
    /// "firehose 41..42"): an alert is raised once per kind and subject.
    pub subject: String,
    /// When the auditor found it (ms since the Unix epoch).
    pub time_ms: i64,
    /// What is wrong, in words.
    pub detail: String,
    /// The evidence: ids, heights, sequences, and the signed objects (hex or base64).
    pub evidence: serde_json::Value,
}

impl Alert {
    /// A new alert found at `time_ms`.
    pub fn new(
        kind: AlertKind,
        subject: impl Into<String>,
        time_ms: i64,
        detail: impl Into<String>,
        evidence: serde_json::Value,
    ) -> Self {
        Self {
            kind,
            subject: subject.into(),
            time_ms,
            detail: detail.into(),
            evidence,
        }
    }

    /// What makes it the same problem as another alert.
    pub fn key(&self) -> (AlertKind, &str) {
        (self.kind, &self.subject)
    }
}

/// The alert file: each alert once, appended and synced before it counts as raised.
pub struct AlertLog {
    path: PathBuf,
    file: std::fs::File,
    raised: HashSet<(AlertKind, String)>,
    all: Vec<Alert>,
}

impl AlertLog {
    /// Opens (or creates) the file at `path` and loads the alerts already raised. A last
    /// line torn by a crash is dropped (its alert is raised again).
    pub fn open(path: &Path) -> Result<Self> {
        let state = |why: String| Error::State {
            path: path.display().to_string(),
            why,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| state(e.to_string()))?;
        }
        let mut all = Vec::new();
        let mut good_len = 0u64;
        if let Ok(f) = std::fs::File::open(path) {
            let mut r = std::io::BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = r.read_line(&mut line).map_err(|e| state(e.to_string()))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<Alert>(&line) {
                    Ok(a) => all.push(a),
                    Err(e) => {
                        return Err(state(format!(
                            "line {} is not an alert ({e}); move the file away to start anew",
                            all.len() + 1
                        )));
                    }
                }
                good_len += n as u64;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| state(e.to_string()))?;
        // Drop a torn tail.
        if file.metadata().map_err(|e| state(e.to_string()))?.len() != good_len {
            file.set_len(good_len).map_err(|e| state(e.to_string()))?;
        }
        let raised = all.iter().map(|a| (a.kind, a.subject.clone())).collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            raised,
            all,
        })
    }

    /// Appends the alerts not raised before, syncs, and returns them.
    pub fn raise(&mut self, alerts: Vec<Alert>) -> Result<Vec<Alert>> {
        let mut new = Vec::new();
        let mut text = Vec::new();
        for a in alerts {
            if self.raised.contains(&(a.kind, a.subject.clone())) {
                continue;
            }
            let mut line = serde_json::to_vec(&a).map_err(|e| Error::State {
                path: self.path.display().to_string(),
                why: e.to_string(),
            })?;
            line.push(b'\n');
            text.extend_from_slice(&line);
            self.raised.insert((a.kind, a.subject.clone()));
            new.push(a);
        }
        if !text.is_empty() {
            let state = |e: std::io::Error| Error::State {
                path: self.path.display().to_string(),
                why: e.to_string(),
            };
            self.file.write_all(&text).map_err(state)?;
            self.file.sync_data().map_err(state)?;
            for a in &new {
                tracing::warn!(kind = %a.kind, subject = %a.subject, detail = %a.detail, "alert");
            }
            self.all.extend(new.iter().cloned());
        }
        Ok(new)
    }

    /// Every alert raised, oldest first.
    pub fn all(&self) -> &[Alert] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn alert(kind: AlertKind, subject: &str) -> Alert {
        Alert::new(kind, subject, 1, "why", serde_json::json!({"height": 3}))
    }

    #[test]
    fn each_alert_is_raised_once_also_across_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let mut log = AlertLog::open(&path).unwrap();
        let new = log
            .raise(vec![
                alert(AlertKind::Omission, "message aa"),
                alert(AlertKind::Omission, "message aa"),
                alert(AlertKind::Fork, "block 3"),
            ])
            .unwrap();
        assert_eq!(new.len(), 2);
        drop(log);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"kind\":\"fork\",\"sub").unwrap();
        drop(f);
        let mut log = AlertLog::open(&path).unwrap();
        assert_eq!(log.all().len(), 2);
        assert_eq!(log.all()[1].kind, AlertKind::Fork);
        let new = log
            .raise(vec![
                alert(AlertKind::Fork, "block 3"),
                alert(AlertKind::Fork, "block 4"),
            ])
            .unwrap();
        assert_eq!(new, vec![alert(AlertKind::Fork, "block 4")]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Alert>(l).is_ok())
        );
        // A damaged file is refused, not overwritten.
        std::fs::write(&path, "not json\n").unwrap();
        assert!(matches!(AlertLog::open(&path), Err(Error::State { .. })));
    }
}
