//! Blockpost's auditor: a daemon that anyone runs on their own machine, to know whether a
//! node keeps its promises without trusting its operator. It reads the node's firehose and
//! blocks streams from NATS (read-only credentials are enough), pins the node's keys on
//! first contact as the client does, and re-verifies everything with the code of
//! [`blockpost_core`] and [`blockpost_client`] — the same checks the servers run, and no
//! server crate (CI checks this with `cargo tree`).
//!
//! What it checks today:
//! - the directory log: every checkpoint's signature (the pinned log key), every entry
//!   authorised and applied in order, the replayed root equal to every signed root (which
//!   makes the checkpoints consistent), no two signed checkpoints of one size that differ;
//! - the watch list: any new, rotated or revoked binding of a watched address or real
//!   name;
//! - every block: the builder's signature, the Merkle root over its leaves, the link to the
//!   previous header, its transaction closings replayed by the rules, no message in two
//!   blocks, no two blocks at one height, the directory checkpoint it names;
//! - every firehose message: canonical envelope, the envelope rules and its sender's
//!   signature against the verified directory history; no sequence missing;
//! - the promises: each valid firehose message in a block by its deadline (the gateway's
//!   promise), and no block holding a message that is not on the firehose in the range the
//!   block names, nor one that is not valid;
//! - the builder: one alert per stall episode when no block takes the messages past their
//!   deadline (each message's omission is raised as well).
//!
//! Each problem is an [`Alert`] with its kind and evidence, appended once to
//! `DATA/alerts.jsonl`. At each start it reads both streams from the beginning again (at
//! full speed) and raises only alerts it had not raised before.
//!
//! # Layout
//! - `auditor`: [`Auditor`], the daemon: the stream followers and the status.
//! - `chain`: [`Chain`], the chain of blocks checked block by block (no I/O).
//! - `checkpoints`: the signed checkpoints of a log the auditor replays (directory,
//!   ledger) against its own tree.
//! - `directory`: [`DirectoryLog`], the directory log replayed from its stream (no I/O).
//! - `promises`: [`Promises`], firehose against blocks (no I/O).
//! - `search`: [`SearchIndex`], full-text search (tantivy) over every verified message.
//! - `watch`: [`Watch`], the watch list's patterns.
//! - `alert`: [`Alert`], [`AlertKind`], and the alert file [`AlertLog`].
//! - `metrics`: [`serve_metrics`], Prometheus metrics and a liveness check over HTTP.
//! - `grpc`: the `blockpost.v1.Audit` service ([`Auditor::into_service`]): status, alerts
//!   (streamed), receipts handed in.
//! - `file`: [`AuditorFile`], the settings file (TOML, `deny_unknown_fields`).
//! - `serve`: [`serve`], the one composition point: an auditor served (Audit, gRPC health,
//!   metrics) until a shutdown future completes.
//! - `error`: [`Error`], and [`AuditError`], the Audit service's error-to-status table.
//!
//! ```
//! use blockpost_auditor::{Alert, AlertKind, Promises};
//!
//! // A valid firehose message (partition 1, sequence 1) that no block takes is an
//! // omission after its deadline.
//! let mut p = Promises::new(1_000, 500).with_partitions(2);
//! assert!(p.firehose_at(1, 1, Some([7; 32]), 0, None, false, 0).is_empty());
//! let alerts: Vec<Alert> = p.tick(2_000, true);
//! assert_eq!(alerts[0].kind, AlertKind::Omission);
//! ```

mod alert;
mod auditor;
mod chain;
mod checkpoints;
mod config;
mod core;
mod directory;
mod drive;
mod error;
mod file;
mod follow;
mod grpc;
mod metrics;
mod promises;
mod search;
mod serve;
mod status;
mod watch;
mod witness;

pub use alert::{Alert, AlertKind, AlertLog};
pub use auditor::{AuditStatus, Auditor, AuditorConfig, OpenFor, ReceiptVerdict, STALLED_AFTER};
pub use chain::{BlockSeen, Chain};
pub use core::{Answer, AuditCore, Effects, Event, FirehoseMessage, ReceiptRecord, Setup, View};
pub use directory::DirectoryLog;
pub use error::{AuditError, Error, Result};
pub use file::AuditorFile;
pub use metrics::serve_metrics;
pub use promises::{PartitionPoint, Promises, ResumePoint};
pub use search::{Hit, IndexedMessage, MAX_HITS, SearchIndex, SettlementFields};
pub use serve::{Listeners, serve};
pub use watch::{Watch, WatchField};
pub use witness::{Refused, Witness};
