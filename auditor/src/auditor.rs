//! The daemon: its public handle ([`Auditor`]) and the thin drivers around the I/O-free
//! [`AuditCore`]. Where each part runs:
//!
//! - the readers ([`crate::follow`]): async tasks that follow the node's streams and hand
//!   events to the core through one bounded channel (a full channel slows them down);
//! - the core: a thread of its own that checks each event (blocks of up to 64 MiB,
//!   sealed bodies opened for the index) and hands the effects, in order, to
//! - the writer: a thread that records alerts (the alert file, synced), keeps receipts,
//!   cosigns, writes the resume point once every alert before it is recorded, publishes
//!   the core's view, and then answers a request;
//! - the indexer: a thread that adds documents to the search index and commits them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use blockpost_client::{Ledger, Messenger};
use blockpost_core::verify_receipt;
use blockpost_core::wire::Namespace;
use blockpost_proto::v1::{GetGatewayInfoRequest, Receipt, ReceiptBatch};
use prost::Message as _;
use serde::Serialize;

use crate::alert::{Alert, AlertLog};
use crate::chain::Chain;
pub use crate::config::{AuditorConfig, OpenFor};
use crate::core::{Answer, AuditCore, Event, ReceiptRecord, Setup, View};
use crate::directory::DirectoryLog;
use crate::drive::{QUEUE, Request, Writer, publish_loop, run_core, run_indexer, state_err};
use crate::error::AuditError;
use crate::follow::{self, BlocksReader, DirectoryReader, Feed, FirehoseReader};
use crate::promises::{Promises, ResumePoint};
use crate::search::SearchIndex;
pub use crate::status::{AuditStatus, ReceiptVerdict, STALLED_AFTER};
use crate::witness::Witness;
use crate::{Error, Result};

struct Inner {
    /// The time ([`AuditorConfig::clock`]).
    clock: Arc<dyn blockpost_core::Clock>,
    /// Events to the core.
    events: tokio::sync::mpsc::Sender<Request>,
    /// The core's view, as of the last effects the writer carried out.
    view: tokio::sync::watch::Receiver<View>,
    /// The alert file (the writer appends to it).
    log: Arc<Mutex<AlertLog>>,
    /// New alerts, with their index in the alert file.
    alerts: tokio::sync::broadcast::Sender<(u64, Alert)>,
    /// The gateway's receipt key, pinned on first contact.
    gateway_key: ed25519_dalek::VerifyingKey,
    /// Every verified message, for full-text search.
    search: Arc<SearchIndex>,
    /// The node's ledger, for the proofs of search hits (verified by the client).
    ledger: Option<tokio::sync::Mutex<Ledger>>,
    /// The witness: cosigns the checkpoints verified.
    witness: Arc<Mutex<Witness>>,
    /// The origins of the node's directory log and ledger.
    directory_origin: String,
    ledger_origin: Option<String>,
    /// The readers.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The core, writer and indexer threads, and the flag that stops the core.
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    /// Stops the readers and the core; the writer and the indexer finish what the core
    /// handed them (alerts recorded, documents committed) and close their files before
    /// this returns, so that an auditor started again on the same files finds them free.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop.store(true, Ordering::SeqCst);
        // A full channel wakes the core anyway; it sees the flag before the next event.
        let _ = self.events.try_send(Request::Stop);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("an auditor thread panicked");
            }
        }
    }
}

/// A running auditor. Cheap to clone; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

/// The gateway key as pinned in `DATA/gateway.json`.
#[derive(serde::Deserialize, Serialize, PartialEq, Eq)]
struct PinnedGateway {
    receipt_key: String,
    /// The firehose's partitions; absent in pins written before partitions, and then
    /// pinned on the next contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firehose_partitions: Option<u32>,
}

/// Pins the gateway's receipt key and the firehose's partitions on first contact; refuses
/// others later.
fn pin_gateway(path: &Path, key: &[u8], partitions: u32) -> Result<()> {
    let presented = PinnedGateway {
        receipt_key: hex::encode(key),
        firehose_partitions: Some(partitions),
    };
    // A pin of an earlier version lacks the partitions: filled from what is presented.
    let complete = |pinned: &mut PinnedGateway, now: &PinnedGateway| {
        let missing = pinned.firehose_partitions.is_none();
        pinned.firehose_partitions = pinned.firehose_partitions.or(now.firehose_partitions);
        missing
    };
    blockpost_files::pin_json(path, &presented, complete).map_err(|e| Error::State {
        path: path.display().to_string(),
        why: match e {
            blockpost_files::PinError::Changed {
                presented, pinned, ..
            } => format!(
                "the gateway now presents {presented}, but {pinned} was pinned: refusing to continue"
            ),
            other => other.to_string(),
        },
    })
}

impl ReceiptRecord {
    /// Of a signed receipt.
    pub fn of(r: &Receipt) -> Self {
        Self {
            body: hex::encode(&r.body),
            signature: hex::encode(&r.signature),
            batch: r.batch.as_ref().map(|b| hex::encode(b.encode_to_vec())),
        }
    }

    /// The signed receipt again; `Err(why)` if a field is not what it should be.
    pub fn receipt(&self) -> std::result::Result<Receipt, String> {
        let hex = |what: &str, v: &str| hex::decode(v).map_err(|e| format!("its {what}: {e}"));
        let batch = match &self.batch {
            None => None,
            Some(b) => Some(
                ReceiptBatch::decode(hex("batch", b)?.as_slice())
                    .map_err(|e| format!("its batch is not an encoded ReceiptBatch: {e}"))?,
            ),
        };
        Ok(Receipt {
            body: hex("body", &self.body)?,
            signature: hex("signature", &self.signature)?,
            batch,
        })
    }
}

/// The resume point of an earlier run, if any (a damaged one is ignored: everything is
/// checked again, which raises no alert twice).
fn read_resume(path: &Path) -> Option<ResumePoint> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "damaged resume point ignored: checking everything again");
            None
        }
    }
}

impl Auditor {
    /// Connects to the node (pinning its keys on first contact) and starts following its
    /// streams on `nats` (read-only credentials suffice).
    pub async fn start(config: AuditorConfig, nats: async_nats::Client) -> Result<Self> {
        let client_dir = config.data.join("client");
        let log = AlertLog::open(&config.data.join("alerts.jsonl"))?;
        let mut messenger =
            Messenger::connect_with(&config.node, &client_dir, &config.connect).await?;
        let gateway = messenger
            .grpc()
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .map_err(blockpost_client::Error::from)?
            .into_inner();
        let promise_ms = gateway.max_block_delay_ms;
        let partitions = gateway.firehose_partitions.max(1);
        pin_gateway(
            &config.data.join("gateway.json"),
            &gateway.receipt_key,
            partitions,
        )?;
        let gateway_key = blockpost_core::ed25519_key(&gateway.receipt_key)
            .map_err(blockpost_client::Error::from)?;
        let ns = Namespace::for_origin(&messenger.directory.info().origin);
        let (chain, ledger, ledger_origin) = match Ledger::connect(
            &messenger.directory,
            &client_dir,
        )
        .await
        {
            Ok(l) => {
                let key = blockpost_core::ed25519_key(&l.info().builder_key)
                    .map_err(blockpost_client::Error::from)?;
                if l.info().firehose_partitions.max(1) != partitions {
                    return Err(blockpost_client::Error::Refused(format!(
                            "the gateway says the firehose has {partitions} partition(s) and the ledger says {}: refusing to audit a node that contradicts itself",
                            l.info().firehose_partitions.max(1)
                        ))
                        .into());
                }
                let chain = Chain::new(
                    key,
                    l.info().transaction_timeout_ms,
                    l.info().verifier_key.clone(),
                );
                let origin = l.info().origin.clone();
                (Some(chain), Some(tokio::sync::Mutex::new(l)), Some(origin))
            }
            Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {
                tracing::warn!("the node has no ledger: blocks are not checked, omissions are");
                (None, None, None)
            }
            Err(e) => return Err(e.into()),
        };
        let mut promises = Promises::new(promise_ms, config.grace_ms).with_partitions(partitions);
        if chain.is_none() {
            // No builder: messages in no block are omissions, not a stalled builder.
            promises.without_builder();
        }
        let resume_path = config.data.join("resume.json");
        if let Some(p) = read_resume(&resume_path) {
            tracing::info!(
                blocks_checked = p.blocks_checked,
                firehose_from = p.firehose_from,
                "resuming where the last run stopped"
            );
            promises.resume(p);
        }
        let opened: Vec<&str> = config.open_for.iter().map(|o| o.address.as_str()).collect();
        let search = Arc::new(SearchIndex::open(&config.data.join("search"), &opened)?);
        let witness = Witness::open(&config.data, config.witness_name.as_deref())?;
        tracing::info!(key = %witness.verifier_key(), "witness key (nodes and clients configure it)");
        let witness = Arc::new(Mutex::new(witness));
        // Refresh the directory so that sender keys are looked up against a verified state.
        messenger.directory.checkpoint().await?;
        let directory_origin = messenger.directory.info().origin.clone();
        let core = AuditCore::new(
            Setup {
                chain,
                directory: DirectoryLog::new(messenger.directory.info().verifier_key.clone())
                    .with_watch(config.watch.clone()),
                promises,
                promise_ms,
                grace_ms: config.grace_ms,
                directory_origin: directory_origin.clone(),
                ledger_origin: ledger_origin.clone(),
                open_for: config.open_for.clone(),
                indexed_below: search.blocks(),
            },
            config.clock.now_ms(),
        );
        let (alerts, _) = tokio::sync::broadcast::channel(1024);
        let mut tasks = Vec::new();
        let outbox = config.publish.clone().map(|(client, subject)| {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            let witness_subject = config.witness_subject.clone();
            tasks.push(tokio::spawn(publish_loop(
                client,
                subject,
                witness_subject,
                rx,
            )));
            tx
        });
        let receipts_path = config.data.join("receipts.jsonl");
        let kept = std::fs::read_to_string(&receipts_path).unwrap_or_default();
        let receipts = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&receipts_path)
            .map_err(|e| state_err(&receipts_path, e))?;
        let log = Arc::new(Mutex::new(log));
        let (view_tx, view) = tokio::sync::watch::channel(core.view());
        let (events, events_rx) = tokio::sync::mpsc::channel(QUEUE);
        let (batches, batches_rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (documents, documents_rx) = std::sync::mpsc::sync_channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            log: log.clone(),
            alerts: alerts.clone(),
            outbox,
            receipts,
            receipts_path,
            resume_path,
            written: None,
            unrecorded: false,
            witness: witness.clone(),
            documents,
            view: view_tx,
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| Error::State {
                    path: config.data.display().to_string(),
                    why: format!("cannot start the {name} thread: {e}"),
                })
        };
        let threads = vec![
            spawn(
                "auditor-core",
                Box::new({
                    let (clock, stop) = (config.clock.clone(), stop.clone());
                    move || run_core(core, events_rx, batches, clock, stop)
                }),
            )?,
            spawn("auditor-writer", Box::new(move || writer.run(batches_rx)))?,
            spawn(
                "auditor-indexer",
                Box::new({
                    let search = search.clone();
                    move || run_indexer(&search, documents_rx)
                }),
            )?,
        ];
        let channel = messenger.directory.channel();
        let mut inner = Inner {
            clock: config.clock.clone(),
            events,
            view,
            log,
            alerts,
            gateway_key,
            search,
            ledger,
            witness,
            directory_origin,
            ledger_origin,
            tasks,
            threads,
            stop,
        };
        // Receipts handed in before a restart are watched again (a torn last line is
        // dropped: its receipt was never answered).
        for line in kept.lines() {
            let kept = serde_json::from_str::<ReceiptRecord>(line)
                .ok()
                .and_then(|r| r.receipt().ok());
            if let Some(r) = kept
                && let Err(e) = inner.watch_receipt(&r, false).await
            {
                tracing::warn!(error = %e, "a kept receipt does not verify; ignored");
            }
        }
        let feed = Feed {
            events: inner.events.clone(),
            view: inner.view.clone(),
        };
        let js = jetstream::new(nats);
        let firehose = ns.firehose(partitions);
        inner.tasks.extend([
            tokio::spawn(follow::ledger(feed.clone(), channel)),
            tokio::spawn(follow::follow_again(DirectoryReader::new(
                feed.clone(),
                js.clone(),
                ns.clone(),
            ))),
            tokio::spawn(follow::follow_again(BlocksReader::new(
                feed.clone(),
                js.clone(),
                ns,
            ))),
            tokio::spawn(follow::ticks(feed.clone())),
        ]);
        // Each partition of the firehose is read, and its tail watched, on its own.
        let messenger = Arc::new(tokio::sync::Mutex::new(messenger));
        for k in 0..partitions {
            let reader = FirehoseReader::once_replayed(
                feed.clone(),
                js.clone(),
                k,
                firehose.clone(),
                messenger.clone(),
            );
            inner.tasks.push(tokio::spawn(async move {
                if let Some(r) = reader.await {
                    follow::follow_again(r).await;
                }
            }));
            inner.tasks.push(tokio::spawn(follow::firehose_tail(
                feed.clone(),
                js.clone(),
                k,
                firehose.stream(k),
            )));
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Checks a receipt the node's gateway signed (against the pinned gateway key) and
    /// whether its message is in a verified block. A receipt whose message is in no block
    /// yet is kept (`DATA/receipts.jsonl`, also across restarts), and an omission with the
    /// receipt as evidence is raised if its deadline passes, even if the message never
    /// appears on the firehose. When it returns, the alerts it raised are recorded.
    pub async fn check_receipt(&self, r: &Receipt) -> Result<ReceiptVerdict> {
        self.inner.watch_receipt(r, true).await
    }

    /// The witness's verifier key: `name+id+base64(0x04 || key)`.
    pub fn witness_key(&self) -> String {
        self.inner
            .witness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verifier_key()
    }

    /// The newest cosigned directory and ledger checkpoints, with the cosignature.
    pub fn cosigned(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let w = self.inner.witness.lock().unwrap_or_else(|e| e.into_inner());
        (
            w.newest(&self.inner.directory_origin),
            self.inner
                .ledger_origin
                .as_deref()
                .and_then(|o| w.newest(o)),
        )
    }

    /// Witness: the cosignature line for a checkpoint of the node's directory or ledger,
    /// if the auditor verified it against its own replay and it is the largest of its log
    /// the auditor has verified (or was, when it was cosigned). A checkpoint that
    /// conflicts with the replay raises its alert (fork, inconsistency) as well.
    pub async fn cosign(&self, note: &[u8]) -> std::result::Result<Vec<u8>, AuditError> {
        let cp = match self.inner.ask(Event::Cosign(note.to_vec())).await? {
            Answer::Checkpoint(verdict) => verdict?,
            Answer::Receipt(_) => return Err(Error::Stopped.into()),
        };
        let witness = self.inner.witness.clone();
        let time = (self.inner.clock.now_ms() / 1000).max(0) as u64;
        // The witness records what it cosigns (a synced file) before it answers.
        let line = tokio::task::spawn_blocking(move || {
            witness
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cosign(&cp, time)
        })
        .await
        .map_err(|e| AuditError::Task(e.to_string()))?;
        match line {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(refused)) => Err(refused.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the auditor stands: as of the last effects recorded (a status that counts a
    /// block verified also counts the alerts it raised), with every alert recorded so far
    /// (also one a subscriber has just been told of).
    pub fn status(&self) -> AuditStatus {
        let view = self.inner.view.borrow();
        let mut s = view.status.clone();
        s.alerts = self
            .inner
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
            .len();
        let idle_ms = self.inner.clock.now_ms().saturating_sub(view.progress_ms);
        s.seconds_since_progress = u64::try_from(idle_ms / 1000).unwrap_or(0);
        s
    }

    /// Every alert raised, oldest first (also those of earlier runs).
    pub fn alerts(&self) -> Vec<Alert> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
            .to_vec()
    }

    /// Full-text search over every verified message (tantivy query syntax); `Err(why)`
    /// inside for a query that does not parse. It reads the index on disk: call it from
    /// a blocking thread in async code (the gRPC service does).
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        offset: usize,
        by_time: bool,
    ) -> Result<std::result::Result<Vec<crate::Hit>, String>> {
        self.inner.search.search(query, limit, offset, by_time)
    }

    /// A message with its proofs from the node's ledger, verified by the client (header
    /// signature, chain link, inclusion proof, ledger proof); `None` if the node has no
    /// ledger.
    pub async fn proved(
        &self,
        id: [u8; 32],
    ) -> Option<blockpost_client::Result<blockpost_client::LedgerMessage>> {
        let l = self.inner.ledger.as_ref()?;
        Some(l.lock().await.message(id).await)
    }

    /// How many alerts of each kind were raised (also before a restart).
    pub fn alert_counts(&self) -> std::collections::HashMap<crate::AlertKind, u64> {
        let mut counts = std::collections::HashMap::new();
        for a in self
            .inner
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
        {
            *counts.entry(a.kind).or_insert(0) += 1;
        }
        counts
    }

    /// New alerts as they are raised, with their index in the alert file.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(u64, Alert)> {
        self.inner.alerts.subscribe()
    }
}

impl Inner {
    /// Hands `event` to the core and waits for its answer, given once its effects are done.
    async fn ask(&self, event: Event) -> Result<Answer> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events
            .send(Request::Event(event, Some(tx)))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    async fn watch_receipt(&self, r: &Receipt, keep: bool) -> Result<ReceiptVerdict> {
        let body = verify_receipt(&self.gateway_key, r).map_err(Error::BadReceipt)?;
        let id = <[u8; 32]>::try_from(body.message_id.as_slice())
            .map_err(|_| Error::BadReceiptId(body.message_id.len()))?;
        let event = Event::Receipt {
            id,
            deadline_ms: body.block_deadline_ms,
            record: ReceiptRecord::of(r),
            keep,
        };
        match self.ask(event).await? {
            Answer::Receipt(v) => Ok(v),
            Answer::Checkpoint(_) => Err(Error::Stopped),
        }
    }
}
