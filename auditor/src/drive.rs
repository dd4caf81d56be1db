//! The threads around the [`AuditCore`]: the core itself, the writer that carries out
//! its effects in order, the indexer, and the task that publishes on NATS. None of them
//! waits on the async runtime, so that stopping the auditor can join them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alert::{Alert, AlertLog};
use crate::core::{Answer, AuditCore, Effects, Event, ReceiptRecord, View};
use crate::promises::ResumePoint;
use crate::search::{IndexedMessage, SearchIndex};
use crate::witness::Witness;
use crate::{Error, Result};

/// What the readers and the API hand the core thread.
pub(crate) enum Request {
    /// An event, and where to answer once its effects are done.
    Event(Event, Option<tokio::sync::oneshot::Sender<Result<Answer>>>),
    /// Stop (the last handle was dropped).
    Stop,
}

/// One event's effects on their way to the writer.
pub(crate) struct Batch {
    effects: Effects,
    view: View,
    now_ms: i64,
    reply: Option<tokio::sync::oneshot::Sender<Result<Answer>>>,
}

/// What the auditor publishes on NATS ([`crate::AuditorConfig::publish`]).
pub(crate) enum Outgoing {
    Alert(Alert),
    Cosigned(&'static str, Vec<u8>),
}

/// How many events may wait for the core, and batches for the writer or the indexer.
pub(crate) const QUEUE: usize = 64;

/// How often the indexer makes what it added searchable, at the latest.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// How often the search index is committed while the auditor catches up.
const COMMIT_BEHIND: Duration = Duration::from_secs(5);

pub(crate) fn state_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// The core thread: each event checked at the clock's time, its effects handed to the
/// writer in order.
pub(crate) fn run_core(
    mut core: AuditCore,
    mut events: tokio::sync::mpsc::Receiver<Request>,
    writer: std::sync::mpsc::SyncSender<Batch>,
    clock: Arc<dyn blockpost_core::Clock>,
    stop: Arc<AtomicBool>,
) {
    while let Some(Request::Event(event, reply)) = events.blocking_recv() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now_ms = clock.now_ms();
        let effects = core.handle(event, now_ms);
        let batch = Batch {
            effects,
            view: core.view(),
            now_ms,
            reply,
        };
        if writer.send(batch).is_err() {
            break;
        }
    }
}

/// The writer thread's files and channels.
pub(crate) struct Writer {
    pub(crate) log: Arc<Mutex<AlertLog>>,
    pub(crate) alerts: tokio::sync::broadcast::Sender<(u64, Alert)>,
    pub(crate) outbox: Option<tokio::sync::mpsc::Sender<Outgoing>>,
    pub(crate) receipts: std::fs::File,
    pub(crate) receipts_path: PathBuf,
    pub(crate) resume_path: PathBuf,
    /// The resume point last written.
    pub(crate) written: Option<ResumePoint>,
    /// An alert could not be recorded: no resume point is written past it, so that a
    /// restart checks again what raised it.
    pub(crate) unrecorded: bool,
    pub(crate) witness: Arc<Mutex<Witness>>,
    pub(crate) documents: std::sync::mpsc::SyncSender<Documents>,
    pub(crate) view: tokio::sync::watch::Sender<View>,
}

impl Writer {
    pub(crate) fn run(mut self, batches: std::sync::mpsc::Receiver<Batch>) {
        while let Ok(b) = batches.recv() {
            self.carry_out(b);
        }
    }

    fn carry_out(&mut self, b: Batch) {
        let Batch {
            effects: fx,
            mut view,
            now_ms,
            reply,
        } = b;
        self.record(fx.alerts);
        let mut failed = None;
        if let Some(record) = fx.keep
            && let Err(e) = self.keep(&record)
        {
            failed = Some(e);
        }
        if let Some((height, docs)) = fx.index {
            // The indexer is gone only when the auditor stops.
            let behind = view.status.blocks_lag > 0;
            let _ = self.documents.send(Documents {
                height,
                docs,
                behind,
            });
        }
        for (log, cp) in fx.cosign {
            self.cosign(log, &cp, now_ms);
        }
        if let Some(p) = fx.resume
            && !self.unrecorded
            && self.written.as_ref() != Some(&p)
        {
            let json = serde_json::to_vec(&p).unwrap_or_default();
            match blockpost_files::write_atomic(&self.resume_path, &json) {
                Ok(()) => self.written = Some(p),
                Err(e) => {
                    tracing::error!(path = %self.resume_path.display(), error = %e, "cannot write the resume point")
                }
            }
        }
        view.status.alerts = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
            .len();
        self.view.send_replace(view);
        if let Some(reply) = reply {
            let _ = reply.send(match (failed, fx.answer) {
                (Some(e), _) => Err(e),
                (None, Some(a)) => Ok(a),
                (None, None) => Err(Error::Stopped),
            });
        }
    }

    /// Records alerts in the alert file, then tells subscribers and NATS.
    fn record(&mut self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let before = log.all().len() as u64;
        match log.raise(alerts) {
            Ok(new) => {
                for (i, a) in new.into_iter().enumerate() {
                    // The alert file is the record; a full outbox delays nothing else.
                    if let Some(o) = &self.outbox
                        && o.try_send(Outgoing::Alert(a.clone())).is_err()
                    {
                        tracing::warn!(kind = %a.kind, subject = %a.subject, "alert not published on NATS (outbox full); it is in alerts.jsonl");
                    }
                    let _ = self.alerts.send((before + i as u64, a));
                }
            }
            Err(e) => {
                self.unrecorded = true;
                tracing::error!(error = %e, "cannot write the alert file");
            }
        }
    }

    /// Appends a receipt to the kept ones, synced.
    fn keep(&mut self, record: &ReceiptRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        std::io::Write::write_all(&mut self.receipts, &line)
            .and_then(|()| self.receipts.sync_data())
            .map_err(|e| state_err(&self.receipts_path, e))
    }

    /// Cosigns a verified checkpoint, if the witness has not cosigned one as large, and
    /// publishes it.
    fn cosign(&mut self, log: &'static str, cp: &blockpost_core::VerifiedCheckpoint, now_ms: i64) {
        let note = {
            let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
            if w.cosigned_size(&cp.origin).is_some_and(|s| s >= cp.size) {
                return;
            }
            match w.cosign(cp, (now_ms / 1000).max(0) as u64) {
                Ok(Ok(_)) => w.newest(&cp.origin),
                Ok(Err(refused)) => {
                    tracing::warn!(log, size = cp.size, %refused, "not cosigned");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record a cosignature");
                    None
                }
            }
        };
        if let (Some(note), Some(o)) = (note, &self.outbox)
            && o.try_send(Outgoing::Cosigned(log, note)).is_err()
        {
            tracing::warn!(
                log,
                "cosigned checkpoint not published on NATS (outbox full)"
            );
        }
    }
}

/// A verified block's search documents, for the indexer.
pub(crate) struct Documents {
    pub(crate) height: u64,
    pub(crate) docs: Vec<IndexedMessage>,
    /// More blocks wait on the stream after this one (the auditor is catching up).
    pub(crate) behind: bool,
}

/// The indexer thread: adds each block's documents, and commits them every
/// [`COMMIT_EVERY`] while the auditor is current, every [`COMMIT_BEHIND`] while it
/// catches up, and when it stops.
pub(crate) fn run_indexer(search: &SearchIndex, documents: std::sync::mpsc::Receiver<Documents>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut dirty = false;
    let mut behind = false;
    let mut committed = std::time::Instant::now();
    loop {
        let stopping = match documents.recv_timeout(COMMIT_EVERY) {
            Ok(d) => {
                behind = d.behind;
                match search.add(d.height, d.docs) {
                    Ok(()) => dirty = true,
                    Err(e) => tracing::error!(error = %e, "cannot index messages for search"),
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => {
                behind = false;
                false
            }
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if dirty && commit_due(stopping, behind, committed.elapsed()) {
            if let Err(e) = search.commit() {
                tracing::error!(error = %e, "cannot commit the search index");
            }
            dirty = false;
            committed = std::time::Instant::now();
        }
        if stopping {
            return;
        }
    }
}

/// Whether the indexer commits now, `since` its last commit. Each commit is a segment
/// that tantivy merges later: while catching up, a commit every [`COMMIT_EVERY`] made
/// hundreds of small segments and their merges cost a fifth of the auditor's CPU, for
/// search results nobody waits for yet.
fn commit_due(stopping: bool, behind: bool, since: Duration) -> bool {
    stopping || since >= if behind { COMMIT_BEHIND } else { COMMIT_EVERY }
}

/// Publishes each new alert, as JSON, on `subject`, and each cosigned checkpoint on
/// `witness_subject.LOG`.
pub(crate) async fn publish_loop(
    client: async_nats::Client,
    subject: String,
    witness_subject: String,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(o) = rx.recv().await {
        let (to, payload) = match o {
            Outgoing::Alert(a) => {
                let Ok(json) = serde_json::to_vec(&a) else {
                    continue;
                };
                (subject.clone(), json)
            }
            Outgoing::Cosigned(log, note) => (format!("{witness_subject}.{log}"), note),
        };
        if let Err(e) = client.publish(to, payload.into()).await {
            tracing::warn!(error = %e, "cannot publish on NATS; alerts are in alerts.jsonl");
        }
        let _ = client.flush().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alert::AlertKind;

    fn writer(dir: &Path) -> (Writer, tokio::sync::watch::Receiver<View>) {
        let (view, seen) = tokio::sync::watch::channel(View::default());
        let (documents, _) = std::sync::mpsc::sync_channel(1);
        let receipts_path = dir.join("receipts.jsonl");
        let w = Writer {
            log: Arc::new(Mutex::new(
                AlertLog::open(&dir.join("alerts.jsonl")).unwrap(),
            )),
            alerts: tokio::sync::broadcast::channel(16).0,
            outbox: None,
            receipts: std::fs::File::create(&receipts_path).unwrap(),
            receipts_path,
            resume_path: dir.join("resume.json"),
            written: None,
            unrecorded: false,
            witness: Arc::new(Mutex::new(Witness::open(dir, None).unwrap())),
            documents,
            view,
        };
        (w, seen)
    }

    fn batch(fx: Effects, blocks: u64) -> (Batch, tokio::sync::oneshot::Receiver<Result<Answer>>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut view = View::default();
        view.status.blocks_verified = blocks;
        let b = Batch {
            effects: fx,
            view,
            now_ms: 1,
            reply: Some(reply),
        };
        (b, answer)
    }

    fn alert(n: u8) -> Alert {
        Alert::new(
            AlertKind::Omission,
            format!("message {n}"),
            1,
            "omitted",
            serde_json::Value::Null,
        )
    }

    #[test]
    fn the_index_is_committed_less_often_while_catching_up() {
        let ms = Duration::from_millis;
        assert!(!commit_due(false, false, ms(100)));
        assert!(commit_due(false, false, COMMIT_EVERY));
        // Behind: a commit every few seconds, not every quarter second.
        assert!(!commit_due(false, true, COMMIT_EVERY));
        assert!(!commit_due(false, true, COMMIT_BEHIND - ms(1)));
        assert!(commit_due(false, true, COMMIT_BEHIND));
        // Stopping commits whatever was added.
        assert!(commit_due(true, true, ms(0)));
    }

    #[test]
    fn effects_are_recorded_before_the_view_moves_and_the_answer_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, seen) = writer(dir.path());
        let fx = Effects {
            alerts: vec![alert(1), alert(2)],
            keep: Some(ReceiptRecord {
                body: "00".into(),
                signature: "11".into(),
                batch: None,
            }),
            resume: Some(ResumePoint {
                blocks_checked: 3,
                ..ResumePoint::default()
            }),
            answer: Some(Answer::Receipt(crate::ReceiptVerdict::Pending {
                deadline_ms: 5,
            })),
            ..Effects::default()
        };
        let (b, mut answer) = batch(fx, 3);
        w.carry_out(b);
        // The alerts are in the file, the receipt kept, the resume point written...
        let reopened = AlertLog::open(&dir.path().join("alerts.jsonl")).unwrap();
        assert_eq!(reopened.all().len(), 2);
        let kept = std::fs::read_to_string(dir.path().join("receipts.jsonl")).unwrap();
        assert_eq!(kept, "{\"body\":\"00\",\"signature\":\"11\"}\n");
        let resume: ResumePoint =
            serde_json::from_slice(&std::fs::read(dir.path().join("resume.json")).unwrap())
                .unwrap();
        assert_eq!(resume.blocks_checked, 3);
        // ...then the view counts them, and the request is answered.
        assert_eq!(seen.borrow().status.alerts, 2);
        assert_eq!(seen.borrow().status.blocks_verified, 3);
        assert!(matches!(
            answer.try_recv().unwrap(),
            Ok(Answer::Receipt(crate::ReceiptVerdict::Pending {
                deadline_ms: 5
            }))
        ));
        // The same alert again is not recorded twice.
        let (b, _) = batch(
            Effects {
                alerts: vec![alert(1)],
                ..Effects::default()
            },
            3,
        );
        w.carry_out(b);
        assert_eq!(seen.borrow().status.alerts, 2);
    }

    #[test]
    fn no_resume_point_is_written_past_an_alert_that_was_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = writer(dir.path());
        w.unrecorded = true;
        let (b, mut answer) = batch(
            Effects {
                resume: Some(ResumePoint::default()),
                ..Effects::default()
            },
            0,
        );
        w.carry_out(b);
        assert!(!dir.path().join("resume.json").exists());
        // A request with no answer from the core (it stopped) is told so.
        assert!(matches!(answer.try_recv().unwrap(), Err(Error::Stopped)));
    }
}
