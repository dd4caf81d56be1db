//! What the auditor says of itself: its status, and its verdict on a receipt.

use std::time::Duration;

use serde::Serialize;

/// Where the auditor stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    /// Blocks verified (the chain's length).
    pub blocks_verified: u64,
    /// The last firehose sequence read and checked.
    pub firehose_checked: u64,
    /// Valid firehose messages not in a block yet.
    pub waiting: usize,
    /// Alerts raised, in all (also before a restart).
    pub alerts: usize,
    /// Whether the auditor has read every block the stream holds.
    pub blocks_current: bool,
    /// Whether the node has a ledger whose blocks are checked.
    pub ledger: bool,
    /// Receipts handed in whose message is not in a block yet.
    pub receipts_waiting: usize,
    /// Directory log entries replayed and checked.
    pub directory_entries: u64,
    /// The largest signed directory checkpoint verified against the replay (its size).
    pub directory_checkpoint: u64,
    /// The largest ledger checkpoint verified against the chain of blocks (its size).
    pub ledger_checkpoint: u64,
    /// Firehose messages on the node's stream not checked yet.
    pub firehose_lag: u64,
    /// Blocks on the node's stream not verified yet.
    pub blocks_lag: u64,
    /// Seconds since the auditor last checked something new.
    pub seconds_since_progress: u64,
    /// Firehose messages read (their signatures checked) since this run started.
    pub firehose_read: u64,
    /// The time ([`crate::AuditorConfig::clock`]) of the last round of time checks whose alerts
    /// are raised: every receipt deadline, omission and transaction deadline up to it
    /// is checked. A test that waits for it to pass a time needs no fixed sleep.
    pub checked_until_ms: i64,
}

/// How long an auditor may sit behind the node without moving before it counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

impl AuditStatus {
    /// Whether the auditor is behind the node and has not moved for [`STALLED_AFTER`]: it
    /// vouches for nothing new, and says so.
    pub fn stalled(&self) -> bool {
        (self.firehose_lag > 0 || self.blocks_lag > 0)
            && self.seconds_since_progress >= STALLED_AFTER.as_secs()
    }
}

/// What a receipt handed to the auditor says, after its signature was checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ReceiptVerdict {
    /// The message is in the verified block at `height`.
    InBlock {
        /// The block's height.
        height: u64,
    },
    /// Not in a verified block, and its deadline (plus the grace) has not passed: the
    /// auditor keeps the receipt and raises an omission if the deadline passes.
    Pending {
        /// The receipt's promise.
        deadline_ms: i64,
    },
    /// Past its deadline and in no block: an omission alert was raised, with the receipt
    /// as evidence.
    Omitted {
        /// The receipt's promise.
        deadline_ms: i64,
    },
}
