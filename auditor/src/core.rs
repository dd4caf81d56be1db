//! The auditor's checks as one state machine without I/O, in the manner of rustls'
//! `ConnectionCommon`: [`AuditCore::handle`] takes an [`Event`] (a directory entry or
//! checkpoint, firehose messages of a partition, a block, a ledger checkpoint, a receipt,
//! a tick) with the time, and returns [`Effects`] (alerts to record, documents to index,
//! a resume point to write, checkpoints to cosign, the answer to a request). It reads no
//! clock, no file and no network: the driver (`auditor.rs`) runs it on a thread of its
//! own, fed by the NATS readers through a channel, and hands the effects to a writer
//! thread in order.
//!
//! It composes the checks of [`Chain`] (blocks and ledger checkpoints), [`DirectoryLog`]
//! (the replayed directory and its checkpoints, watch lists) and [`Promises`] (receipt
//! deadlines, omissions, firehose gaps, a stalled builder), and adds the one rule that
//! needs them together: a transaction still open past its deadline, the gateway's promise
//! and the grace, once every block is read.

use blockpost_core::VerifiedCheckpoint;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertKind};
use crate::chain::Chain;
use crate::config::OpenFor;
use crate::directory::DirectoryLog;
use crate::error::AuditError;
use crate::promises::{Promises, ResumePoint};
use crate::search::{IndexedMessage, SettlementFields};
use crate::status::{AuditStatus, ReceiptVerdict};

/// A firehose message as its reader saw it: the envelope rules and the sender's signature
/// are checked by the reader (against the node's verified directory, which needs the
/// network), the rest here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirehoseMessage {
    /// Its stream sequence in its partition.
    pub seq: u64,
    /// When JetStream stored it (ms since the Unix epoch).
    pub published_ms: i64,
    /// Its id, if it is an envelope.
    pub id: Option<[u8; 32]>,
    /// Why it is not valid, if it is not.
    pub invalid: Option<String>,
}

/// A receipt as kept in `DATA/receipts.jsonl` and shown in evidence.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReceiptRecord {
    /// The encoded `ReceiptBody`, hex.
    pub body: String,
    /// The gateway's signature, hex.
    pub signature: String,
    /// For a receipt signed in a batch: the encoded `ReceiptBatch` (its place in the
    /// batch and audit path), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

/// What happened, as the auditor's readers and its API tell the core.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An entry of the directory log (its leaf index, if the stream named one).
    DirectoryEntry {
        /// The leaf index the publisher named.
        index: Option<u64>,
        /// The entry's bytes.
        entry: bytes::Bytes,
    },
    /// A signed checkpoint of the directory log.
    DirectoryCheckpoint(bytes::Bytes),
    /// Messages of firehose partition `partition`, in stream order.
    Firehose {
        /// The partition.
        partition: u32,
        /// Its messages, checked by the reader.
        messages: Vec<FirehoseMessage>,
    },
    /// The last sequence the stream of firehose partition `partition` holds (for the lag).
    FirehoseEnd {
        /// The partition.
        partition: u32,
        /// Its stream's last sequence.
        last: u64,
    },
    /// Sequences `after + 1` to `through` of a partition are not in its stream (deleted
    /// from its end): counted only if reading is still at `after`.
    FirehoseDeleted {
        /// The partition.
        partition: u32,
        /// The last sequence read when the stream was asked.
        after: u64,
        /// The last sequence missing.
        through: u64,
    },
    /// The next block of the blocks stream (its encoded bytes), with how many stream
    /// messages follow it.
    Block {
        /// Its bytes (joined from its parts).
        bytes: Vec<u8>,
        /// Messages on the blocks stream after it.
        pending: u64,
    },
    /// The blocks stream holds nothing unread (or does not exist yet).
    BlocksRead,
    /// A ledger checkpoint the node handed out.
    LedgerCheckpoint(Vec<u8>),
    /// A receipt handed in, its signature verified: its message, its promise, the receipt
    /// itself, and whether to keep it if it is not settled.
    Receipt {
        /// The message.
        id: [u8; 32],
        /// The receipt's promise.
        deadline_ms: i64,
        /// The receipt, for the evidence of an omission and the kept file.
        record: ReceiptRecord,
        /// Keep it (`DATA/receipts.jsonl`) if its message is in no block yet.
        keep: bool,
    },
    /// A checkpoint to cosign: answered with the checkpoint verified, or why not.
    Cosign(Vec<u8>),
    /// Time has passed: deadlines are checked, the resume point and the checkpoints to
    /// cosign are handed out.
    Tick,
}

/// The answer to a request ([`Event::Receipt`], [`Event::Cosign`]).
#[derive(Debug)]
pub enum Answer {
    /// What a receipt says.
    Receipt(ReceiptVerdict),
    /// The checkpoint verified against the replay, or why it is not cosigned.
    Checkpoint(Result<VerifiedCheckpoint, AuditError>),
}

/// What the driver does after an event, in this order: record the alerts (the alert file,
/// then subscribers and NATS), keep the receipt, index the documents, cosign the
/// checkpoints, write the resume point, and answer.
#[derive(Debug, Default)]
pub struct Effects {
    /// New alerts (the alert file drops those raised before).
    pub alerts: Vec<Alert>,
    /// A receipt to keep across restarts.
    pub keep: Option<ReceiptRecord>,
    /// A verified block's messages to index: its height and the documents.
    pub index: Option<(u64, Vec<IndexedMessage>)>,
    /// Checkpoints verified and not handed out before: the log (`directory`, `ledger`)
    /// and the checkpoint.
    pub cosign: Vec<(&'static str, VerifiedCheckpoint)>,
    /// A new resume point: written once the alerts before it are recorded.
    pub resume: Option<ResumePoint>,
    /// The answer to a request.
    pub answer: Option<Answer>,
}

/// What the readers and the API read of the core, published after each event's effects.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The status (its `alerts` and `seconds_since_progress` are filled in by the driver).
    pub status: AuditStatus,
    /// When the core last checked something new (its clock).
    pub progress_ms: i64,
    /// The last sequence read, per firehose partition.
    pub last_seq: Vec<u64>,
    /// Whether the blocks checked before a restart are replayed, so that the firehose may
    /// be read (messages read again are then found in them).
    pub replayed: bool,
}

/// The auditor's checks. See the module documentation.
pub struct AuditCore {
    chain: Option<Chain>,
    directory: DirectoryLog,
    promises: Promises,
    /// The gateway's promise (receipt to block) and the grace allowed past it.
    promise_ms: i64,
    grace_ms: i64,
    /// The origins of the node's directory log and ledger.
    directory_origin: String,
    ledger_origin: Option<String>,
    /// The participants whose sealed bodies are opened for the index.
    open_for: Vec<OpenFor>,
    /// Blocks below this height are in the search index already.
    indexed_below: u64,
    blocks_current: bool,
    blocks_pending: u64,
    stream_last: Vec<u64>,
    firehose_read: u64,
    checked_until_ms: i64,
    progress_ms: i64,
    /// What was handed out already: the resume point, the checkpoint sizes cosigned.
    resume_out: Option<ResumePoint>,
    cosign_out: [u64; 2],
}

/// How the core is set up: what the node said and pinned, and what the auditor was told.
pub struct Setup {
    /// The ledger's chain, if the node has a ledger.
    pub chain: Option<Chain>,
    /// The replayed directory.
    pub directory: DirectoryLog,
    /// The promises (partitions, grace, resume point applied).
    pub promises: Promises,
    /// The gateway's promise, ms.
    pub promise_ms: u64,
    /// The grace past it, ms.
    pub grace_ms: u64,
    /// The directory log's origin.
    pub directory_origin: String,
    /// The ledger's origin, if any.
    pub ledger_origin: Option<String>,
    /// Whose sealed bodies are opened for search.
    pub open_for: Vec<OpenFor>,
    /// Blocks the search index holds already.
    pub indexed_below: u64,
}

fn short_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl AuditCore {
    /// A core set up with `setup`, started at `now_ms`.
    pub fn new(setup: Setup, now_ms: i64) -> Self {
        let partitions = setup.promises.partitions() as usize;
        Self {
            chain: setup.chain,
            directory: setup.directory,
            promises: setup.promises,
            promise_ms: short_ms(setup.promise_ms),
            grace_ms: short_ms(setup.grace_ms),
            directory_origin: setup.directory_origin,
            ledger_origin: setup.ledger_origin,
            open_for: setup.open_for,
            indexed_below: setup.indexed_below,
            blocks_current: false,
            blocks_pending: 0,
            stream_last: vec![0; partitions],
            firehose_read: 0,
            checked_until_ms: i64::MIN,
            progress_ms: now_ms,
            resume_out: None,
            cosign_out: [0; 2],
        }
    }

    /// Handles one event at time `now_ms`.
    pub fn handle(&mut self, event: Event, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        match event {
            Event::DirectoryEntry { index, entry } => {
                fx.alerts = self.directory.entry(index, &entry, now_ms);
                self.progress_ms = now_ms;
            }
            Event::DirectoryCheckpoint(note) => {
                fx.alerts = self.directory.checkpoint(&note, now_ms);
                self.progress_ms = now_ms;
            }
            Event::Firehose {
                partition,
                messages,
            } => {
                self.firehose_read += messages.len() as u64;
                for m in messages {
                    let placed = m.id.is_some_and(|id| {
                        self.chain.as_ref().is_some_and(|c| c.placed(&id).is_some())
                    });
                    fx.alerts.extend(self.promises.firehose_at(
                        partition,
                        m.seq,
                        m.id,
                        m.published_ms,
                        m.invalid,
                        placed,
                        now_ms,
                    ));
                }
                self.progress_ms = now_ms;
            }
            Event::FirehoseEnd { partition, last } => {
                if let Some(l) = self.stream_last.get_mut(partition as usize) {
                    *l = last;
                }
            }
            Event::FirehoseDeleted {
                partition,
                after,
                through,
            } => {
                // Only if reading did not move meanwhile.
                if self.promises.last_seq(partition) == after {
                    fx.alerts = self.promises.gap_through(partition, through, now_ms);
                }
            }
            Event::Block { bytes, pending } => {
                self.block(&bytes, now_ms, &mut fx);
                self.blocks_current = pending == 0;
                self.blocks_pending = pending;
                self.progress_ms = now_ms;
            }
            Event::BlocksRead => self.blocks_current = true,
            Event::LedgerCheckpoint(note) => {
                if let Some(c) = self.chain.as_mut() {
                    fx.alerts = c.ledger_checkpoint(&note, now_ms);
                }
            }
            Event::Receipt {
                id,
                deadline_ms,
                record,
                keep,
            } => {
                let verdict = self.receipt(id, deadline_ms, &record, now_ms, &mut fx);
                if keep && matches!(verdict, ReceiptVerdict::Pending { .. }) {
                    fx.keep = Some(record);
                }
                fx.answer = Some(Answer::Receipt(verdict));
            }
            Event::Cosign(note) => {
                let verdict = self.cosign(&note, now_ms, &mut fx);
                fx.answer = Some(Answer::Checkpoint(verdict));
            }
            Event::Tick => self.tick(now_ms, &mut fx),
        }
        fx
    }

    fn block(&mut self, bytes: &[u8], now_ms: i64, fx: &mut Effects) {
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        let (alerts, seen) = chain.block(bytes, now_ms);
        fx.alerts = alerts;
        let Some(mut seen) = seen else { return };
        // Blocks the search index holds from before a restart are not indexed again.
        if seen.height >= self.indexed_below {
            let docs = indexed(
                &self.directory,
                &self.open_for,
                seen.height,
                std::mem::take(&mut seen.contents),
            );
            fx.index = Some((seen.height, docs));
        }
        let (size, root) = seen.directory;
        fx.alerts.extend(
            self.directory
                .named_by_block(size, root, seen.height, now_ms),
        );
        fx.alerts.extend(self.promises.block(seen, now_ms));
    }

    fn receipt(
        &mut self,
        id: [u8; 32],
        deadline_ms: i64,
        record: &ReceiptRecord,
        now_ms: i64,
        fx: &mut Effects,
    ) -> ReceiptVerdict {
        if let Some(height) = self.chain.as_ref().and_then(|c| c.placed(&id)) {
            return ReceiptVerdict::InBlock { height };
        }
        let evidence = serde_json::to_value(record).unwrap_or_default();
        self.promises.receipt(id, deadline_ms, evidence);
        fx.alerts = self.promises.tick(now_ms, self.blocks_current);
        let subject = format!("message {}", hex::encode(id));
        if fx.alerts.iter().any(|a| a.subject == subject) {
            ReceiptVerdict::Omitted { deadline_ms }
        } else {
            ReceiptVerdict::Pending { deadline_ms }
        }
    }

    fn cosign(
        &mut self,
        note: &[u8],
        now_ms: i64,
        fx: &mut Effects,
    ) -> Result<VerifiedCheckpoint, AuditError> {
        let origin = note
            .split(|b| *b == b'\n')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        let (roots, replayed) = if origin == self.directory_origin {
            fx.alerts = self.directory.checkpoint(note, now_ms);
            (self.directory.checkpoints(), self.directory.size())
        } else if self.ledger_origin.as_deref() == Some(origin.as_str())
            && let Some(chain) = self.chain.as_mut()
        {
            fx.alerts = chain.ledger_checkpoint(note, now_ms);
            (chain.checkpoints(), chain.len())
        } else {
            return Err(AuditError::UnknownLog(origin));
        };
        match blockpost_core::verify_checkpoint(note, roots.verifier_key()) {
            Err(e) => Err(AuditError::Checkpoint(e)),
            Ok(cp) if roots.is_verified(&cp) => Ok(cp),
            Ok(_) if !fx.alerts.is_empty() => {
                Err(AuditError::Conflicts(fx.alerts[0].detail.clone()))
            }
            Ok(cp) if cp.size > replayed => Err(AuditError::NotYet {
                replayed,
                size: cp.size,
            }),
            Ok(cp) => Err(AuditError::NotVerified(cp.size)),
        }
    }

    fn tick(&mut self, now_ms: i64, fx: &mut Effects) {
        let current = self.blocks_current;
        fx.alerts = self.promises.tick(now_ms, current);
        // A transaction must be closed by the first block cut at or after its deadline:
        // once every block is read, one still open past its deadline plus the gateway's
        // promise (the longest a block may be in coming) and the grace was not closed in
        // time.
        let late = now_ms
            .saturating_sub(self.promise_ms)
            .saturating_sub(self.grace_ms);
        if current && let Some(chain) = &self.chain {
            for (id, deadline_ms) in chain.overdue(late) {
                fx.alerts.push(Alert::new(
                    AlertKind::TransactionNotClosed,
                    format!("transaction {id}"),
                    now_ms,
                    format!(
                        "transaction {id} is still open {} ms after its deadline",
                        now_ms - deadline_ms
                    ),
                    serde_json::json!({
                        "transaction_id": id,
                        "deadline_ms": deadline_ms,
                        "blocks_verified": chain.len(),
                        "newest_block_time_ms": chain.time_ms(),
                    }),
                ));
            }
        }
        self.checked_until_ms = self.checked_until_ms.max(now_ms);
        // The newest checkpoint of each log verified, if not handed out before.
        let newest = [
            ("directory", self.directory.checkpoints().latest_verified()),
            (
                "ledger",
                self.chain
                    .as_ref()
                    .and_then(|c| c.checkpoints().latest_verified()),
            ),
        ];
        for (i, (log, cp)) in newest.into_iter().enumerate() {
            if let Some(cp) = cp
                && cp.size > self.cosign_out[i]
            {
                self.cosign_out[i] = cp.size;
                fx.cosign.push((log, cp.clone()));
            }
        }
        let point = self.promises.resume_point();
        if self.resume_out.as_ref() != Some(&point) {
            self.resume_out = Some(point.clone());
            fx.resume = Some(point);
        }
    }

    /// What the readers and the API see.
    pub fn view(&self) -> View {
        let p = &self.promises;
        let last_seq: Vec<u64> = (0..p.partitions()).map(|k| p.last_seq(k)).collect();
        View {
            status: AuditStatus {
                blocks_verified: self.chain.as_ref().map_or(0, Chain::len),
                firehose_checked: p.read(),
                waiting: p.waiting(),
                alerts: 0,
                blocks_current: self.blocks_current,
                ledger: self.chain.is_some(),
                receipts_waiting: p.receipts_waiting(),
                directory_entries: self.directory.size(),
                directory_checkpoint: self.directory.checkpoint_verified(),
                ledger_checkpoint: self.chain.as_ref().map_or(0, Chain::ledger_verified),
                firehose_lag: self
                    .stream_last
                    .iter()
                    .zip(&last_seq)
                    .map(|(end, read)| end.saturating_sub(*read))
                    .sum(),
                blocks_lag: self.blocks_pending,
                seconds_since_progress: 0,
                firehose_read: self.firehose_read,
                checked_until_ms: self.checked_until_ms,
            },
            progress_ms: self.progress_ms,
            last_seq,
            replayed: self
                .chain
                .as_ref()
                .is_none_or(|c| c.len() >= p.skip_below())
                || self.blocks_current,
        }
    }
}

/// The search documents of a verified block's messages, with names from the replayed
/// directory; bodies sealed for a participant in `open_for` are opened.
fn indexed(
    directory: &DirectoryLog,
    open_for: &[OpenFor],
    height: u64,
    contents: Vec<(u64, [u8; 32], blockpost_proto::v1::EnvelopeContent)>,
) -> Vec<IndexedMessage> {
    use blockpost_proto::v1::envelope_content::Body;
    let name = |a: &str| directory.real_name(a).unwrap_or_default();
    contents
        .into_iter()
        .map(|(leaf, id, c)| {
            let body = match &c.body {
                Some(Body::Plaintext(b)) => String::from_utf8(b.clone()).ok(),
                // Sealed for a participant whose key the auditor holds: opened.
                Some(Body::Encrypted(e)) => open_for.iter().find_map(|o| {
                    let r = e.ciphertexts.iter().find(|r| r.recipient == o.address)?;
                    let keys = o.generations.get(&r.recipient_key_index).unwrap_or(&o.keys);
                    let plain = blockpost_core::open_body(
                        e,
                        &o.address,
                        &keys.encryption,
                        &blockpost_core::body_aad(&c.sender, &c.transaction_id),
                    )
                    .ok()?;
                    String::from_utf8(plain).ok()
                }),
                None => None,
            };
            // A trade or instruction whose body could be read: its fields, if valid (an
            // invalid one is refused by the envelope rules, or was sealed and is not).
            let settlement = blockpost_core::settle_expect(c.kind())
                .zip(body.as_ref())
                .and_then(|((expect, _), b)| {
                    blockpost_core::settle::parse(expect, b.as_bytes()).ok()
                })
                .map(|s| SettlementFields::of(&s));
            IndexedMessage {
                settlement,
                message_id: hex::encode(id),
                transaction_id: c.transaction_id.clone(),
                kind: blockpost_core::kind_name(c.kind).to_owned(),
                sender_name: name(&c.sender),
                recipient_names: c.recipients.iter().map(|r| name(r)).collect(),
                sender: c.sender,
                recipients: c.recipients,
                time_ms: c.timestamp_ms,
                height,
                leaf,
                content_type: c.content_type,
                encrypted: matches!(c.body, Some(Body::Encrypted(_))),
                body,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::{CheckpointSigner, ReplayTree, message_id_of_encoded};
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::chain::tests::{block, envelope};

    const PROMISE_MS: u64 = 500;
    const GRACE_MS: u64 = 100;

    fn builder() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn ledger() -> CheckpointSigner {
        CheckpointSigner::new("test/ledger", SigningKey::from_bytes(&[6; 32])).unwrap()
    }

    fn core_with(promises: Promises) -> AuditCore {
        let directory =
            CheckpointSigner::new("test/directory", SigningKey::from_bytes(&[5; 32])).unwrap();
        AuditCore::new(
            Setup {
                chain: Some(Chain::new(
                    builder().verifying_key(),
                    1_000,
                    ledger().verifier_key(),
                )),
                directory: DirectoryLog::new(directory.verifier_key()),
                promises,
                promise_ms: PROMISE_MS,
                grace_ms: GRACE_MS,
                directory_origin: "test/directory".into(),
                ledger_origin: Some("test/ledger".into()),
                open_for: Vec::new(),
                indexed_below: 0,
            },
            0,
        )
    }

    fn core() -> AuditCore {
        core_with(Promises::new(PROMISE_MS, GRACE_MS))
    }

    /// Partition 0's sequences 1 to 9: envelopes 1 and 2 first, then what is not an
    /// envelope (what block 0 of the fixture names).
    fn firehose_of_block_0() -> Event {
        let messages = (1..=9u64)
            .map(|seq| FirehoseMessage {
                seq,
                published_ms: 0,
                id: (seq <= 2).then(|| message_id_of_encoded(&envelope(seq as u8))),
                invalid: (seq > 2).then(|| "not an envelope".to_owned()),
            })
            .collect();
        Event::Firehose {
            partition: 0,
            messages,
        }
    }

    fn kinds(fx: &Effects) -> Vec<AlertKind> {
        fx.alerts.iter().map(|a| a.kind).collect()
    }

    fn record() -> ReceiptRecord {
        ReceiptRecord {
            body: "00".into(),
            signature: "11".into(),
            batch: None,
        }
    }

    #[test]
    fn a_verified_block_is_indexed_and_settles_its_receipts() {
        let mut c = core();
        assert!(c.handle(firehose_of_block_0(), 10).alerts.is_empty());
        let (b0, _) = block(&builder(), 0, None, &[1, 2]);
        let fx = c.handle(
            Event::Block {
                bytes: b0,
                pending: 0,
            },
            20,
        );
        assert!(fx.alerts.is_empty(), "{:?}", fx.alerts);
        let (height, docs) = fx.index.unwrap();
        assert_eq!((height, docs.len()), (0, 2));
        assert_eq!(docs[0].transaction_id, "tx-1");
        let v = c.view();
        assert_eq!(v.status.blocks_verified, 1);
        assert!(v.status.blocks_current);
        assert_eq!(v.status.firehose_checked, 9);
        assert_eq!(v.progress_ms, 20);

        // A receipt whose message is in block 0: settled, not kept.
        let id = message_id_of_encoded(&envelope(1));
        let receipt = |id, deadline_ms, keep| Event::Receipt {
            id,
            deadline_ms,
            record: record(),
            keep,
        };
        let fx = c.handle(receipt(id, 1_000, true), 30);
        assert!(matches!(
            fx.answer,
            Some(Answer::Receipt(ReceiptVerdict::InBlock { height: 0 }))
        ));
        assert!(fx.keep.is_none());
        // One in no block, before its deadline: pending, kept if asked.
        let fx = c.handle(receipt([7; 32], 1_000, true), 30);
        assert!(matches!(
            fx.answer,
            Some(Answer::Receipt(ReceiptVerdict::Pending {
                deadline_ms: 1_000
            }))
        ));
        assert_eq!(fx.keep, Some(record()));
        assert!(c.handle(receipt([7; 32], 1_000, false), 30).keep.is_none());
        assert_eq!(c.view().status.receipts_waiting, 1);
        // Past its deadline and the grace: an omission, with the receipt as evidence.
        let fx = c.handle(receipt([8; 32], 1_000, true), 1_000 + GRACE_MS as i64 + 1);
        assert!(matches!(
            fx.answer,
            Some(Answer::Receipt(ReceiptVerdict::Omitted {
                deadline_ms: 1_000
            }))
        ));
        assert!(fx.keep.is_none());
        let omission = fx
            .alerts
            .iter()
            .find(|a| a.subject == format!("message {}", hex::encode([8; 32])))
            .unwrap();
        assert_eq!(omission.kind, AlertKind::Omission);
    }

    #[test]
    fn an_open_transaction_is_an_alert_past_its_deadline_once_every_block_is_read() {
        let mut c = core();
        c.handle(firehose_of_block_0(), 10);
        let (b0, _) = block(&builder(), 0, None, &[1]);
        // More blocks follow on the stream: one of them may close it.
        c.handle(
            Event::Block {
                bytes: b0,
                pending: 1,
            },
            20,
        );
        let far = 10_000_000;
        let open = |fx: &Effects| {
            fx.alerts
                .iter()
                .filter(|a| a.kind == AlertKind::TransactionNotClosed)
                .map(|a| a.subject.clone())
                .collect::<Vec<_>>()
        };
        assert!(open(&c.handle(Event::Tick, far)).is_empty());
        c.handle(Event::BlocksRead, far);
        // Before its deadline plus the promise and the grace: not yet.
        assert!(open(&c.handle(Event::Tick, 1_000)).is_empty());
        assert_eq!(
            open(&c.handle(Event::Tick, far)),
            vec!["transaction tx-1".to_owned()]
        );
        assert_eq!(c.view().status.checked_until_ms, far);
    }

    #[test]
    fn ticks_hand_out_the_resume_point_and_each_checkpoint_once() {
        let mut c = core();
        let fx = c.handle(Event::Tick, 1);
        assert_eq!(fx.resume.unwrap().blocks_checked, 0);
        assert!(fx.cosign.is_empty());
        assert_eq!(c.handle(Event::Tick, 2).resume, None, "unchanged");

        c.handle(firehose_of_block_0(), 3);
        let (b0, id0) = block(&builder(), 0, None, &[1, 2]);
        c.handle(
            Event::Block {
                bytes: b0,
                pending: 0,
            },
            4,
        );
        let mut ids = ReplayTree::new();
        ids.append(&id0).unwrap();
        let note = ledger().sign(1, ids.root(1).unwrap()).unwrap();
        assert!(c.handle(Event::LedgerCheckpoint(note), 5).alerts.is_empty());
        let fx = c.handle(Event::Tick, 6);
        assert_eq!(fx.resume.unwrap().blocks_checked, 1);
        assert_eq!(fx.cosign.len(), 1);
        assert_eq!((fx.cosign[0].0, fx.cosign[0].1.size), ("ledger", 1));
        let fx = c.handle(Event::Tick, 7);
        assert!(fx.cosign.is_empty() && fx.resume.is_none());
    }

    #[test]
    fn a_checkpoint_is_cosigned_only_as_verified_against_the_replay() {
        let mut c = core();
        c.handle(firehose_of_block_0(), 1);
        let (b0, id0) = block(&builder(), 0, None, &[1, 2]);
        c.handle(
            Event::Block {
                bytes: b0,
                pending: 0,
            },
            2,
        );
        let mut ids = ReplayTree::new();
        ids.append(&id0).unwrap();
        let mut ask = |note: Vec<u8>| match c.handle(Event::Cosign(note), 3) {
            Effects {
                answer: Some(Answer::Checkpoint(v)),
                alerts,
                ..
            } => (v, alerts),
            other => panic!("{other:?}"),
        };
        let (v, _) = ask(ledger().sign(1, ids.root(1).unwrap()).unwrap());
        assert_eq!(v.unwrap().size, 1);
        let (v, _) = ask(ledger().sign(5, [1; 32]).unwrap());
        assert!(matches!(
            v,
            Err(AuditError::NotYet {
                replayed: 1,
                size: 5
            })
        ));
        let (v, alerts) = ask(ledger().sign(1, [1; 32]).unwrap());
        assert!(matches!(v, Err(AuditError::Conflicts(_))), "{v:?}");
        assert_eq!(alerts[0].kind, AlertKind::LedgerFork);
        let stranger =
            CheckpointSigner::new("test/other", SigningKey::from_bytes(&[6; 32])).unwrap();
        let (v, _) = ask(stranger.sign(1, [1; 32]).unwrap());
        assert!(matches!(v, Err(AuditError::UnknownLog(o)) if o == "test/other"));
        let (v, _) = ask(b"test/ledger\nnot a checkpoint\n".to_vec());
        assert!(matches!(v, Err(AuditError::Checkpoint(_))), "{v:?}");
    }

    #[test]
    fn a_deletion_counts_only_where_reading_still_stands() {
        let mut c = core();
        c.handle(firehose_of_block_0(), 1);
        c.handle(
            Event::FirehoseEnd {
                partition: 0,
                last: 12,
            },
            2,
        );
        assert_eq!(c.view().status.firehose_lag, 3);
        // Asked when reading stood at 3: reading has moved on since, nothing is raised.
        let stale = Event::FirehoseDeleted {
            partition: 0,
            after: 3,
            through: 12,
        };
        assert!(c.handle(stale, 3).alerts.is_empty());
        let fx = c.handle(
            Event::FirehoseDeleted {
                partition: 0,
                after: 9,
                through: 12,
            },
            4,
        );
        assert_eq!(kinds(&fx), vec![AlertKind::FirehoseGap]);
        assert_eq!(c.view().status.firehose_lag, 0);
        assert_eq!(c.view().last_seq, vec![12]);
    }

    #[test]
    fn after_a_restart_the_firehose_waits_until_the_checked_blocks_are_replayed() {
        let mut promises = Promises::new(PROMISE_MS, GRACE_MS);
        promises.resume(ResumePoint {
            blocks_checked: 1,
            matched_through: 9,
            firehose_from: 10,
            partitions: Vec::new(),
        });
        let mut c = core_with(promises);
        assert!(!c.view().replayed);
        let (b0, _) = block(&builder(), 0, None, &[1, 2]);
        let fx = c.handle(
            Event::Block {
                bytes: b0,
                pending: 0,
            },
            1,
        );
        assert!(fx.alerts.is_empty(), "{:?}", fx.alerts);
        assert!(c.view().replayed);
    }
}
