//! The daemon: follows the node's firehose and blocks streams, checks them with
//! [`Chain`] and [`Promises`], and raises alerts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_client::{ConnectOptions, Ledger, Messenger};
use blockpost_core::wire::Namespace;
use blockpost_core::{decode_canonical, message_id_of_encoded, verify_receipt};
use blockpost_proto::v1::{Envelope, GetGatewayInfoRequest, Receipt};
use futures::StreamExt as _;
use serde::Serialize;

use crate::alert::{Alert, AlertLog};
use crate::chain::Chain;
use crate::directory::DirectoryLog;
use crate::error::AuditError;
use crate::promises::{Promises, ResumePoint};
use crate::search::{IndexedMessage, SearchIndex};
use crate::witness::Witness;
use crate::{Error, Result};

/// How the auditor reaches the node and where it keeps its files.
#[derive(Clone)]
pub struct AuditorConfig {
    /// The node's gRPC endpoint (keys, directory look-ups).
    pub node: String,
    /// How to verify the node's TLS certificate.
    pub connect: ConnectOptions,
    /// The auditor's data directory: pinned keys (`client/`) and `alerts.jsonl`.
    pub data: PathBuf,
    /// Time allowed past a receipt's deadline before a missing message is an omission.
    pub grace_ms: u64,
    /// Addresses and real names to raise an alert for on any new, rotated or revoked
    /// binding.
    pub watch: Vec<crate::Watch>,
    /// Also publish each alert (JSON) on this NATS connection and subject: the auditor's
    /// own server or account, since its read-only user on the node's server publishes
    /// nothing.
    pub publish: Option<(async_nats::Client, String)>,
    /// Participants whose keys the auditor holds (a regulator's, say): the encrypted
    /// bodies sealed for them are opened and indexed for search, and only those.
    pub open_for: Vec<OpenFor>,
    /// The witness's name in its cosignatures (default `blockpost-auditor/` and the first
    /// 8 hex digits of its key).
    pub witness_name: Option<String>,
    /// With [`AuditorConfig::publish`]: each cosigned checkpoint is also published there
    /// on `SUBJECT.directory` and `SUBJECT.ledger`.
    pub witness_subject: String,
    /// The time every check and alert reads (receipt deadlines, omissions, transaction
    /// deadlines, cosignature times): the system clock, or one a test controls.
    pub clock: Arc<dyn blockpost_core::Clock>,
}

impl std::fmt::Debug for AuditorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditorConfig")
            .field("node", &self.node)
            .field("data", &self.data)
            .field("grace_ms", &self.grace_ms)
            .field("watch", &self.watch)
            .field("open_for", &self.open_for)
            .field("witness_name", &self.witness_name)
            .field("witness_subject", &self.witness_subject)
            .finish_non_exhaustive()
    }
}

impl AuditorConfig {
    /// The defaults for a node at `node`, with files in `data`.
    pub fn new(node: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            connect: ConnectOptions::default(),
            data: data.into(),
            grace_ms: 1_000,
            watch: Vec::new(),
            publish: None,
            witness_name: None,
            witness_subject: "blockpost.witness".into(),
            open_for: Vec::new(),
            clock: Arc::new(blockpost_core::SystemClock),
        }
    }
}

/// A participant whose encrypted bodies the auditor opens: its address and keys.
#[derive(Clone)]
pub struct OpenFor {
    /// The participant's address.
    pub address: String,
    /// Its keys (only the x25519 one is used).
    pub keys: Arc<blockpost_core::Identity>,
}

impl std::fmt::Debug for OpenFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFor")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

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
    /// The time ([`AuditorConfig::clock`]) of the last round of time checks whose alerts
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

struct State {
    chain: Option<Chain>,
    directory: DirectoryLog,
    promises: Promises,
    /// The gateway's promise (receipt to block) and the grace allowed past it.
    promise_ms: i64,
    grace_ms: i64,
    /// The next blocks stream sequence to read.
    next_block_seq: u64,
}

struct Inner {
    /// The time ([`AuditorConfig::clock`]).
    clock: Arc<dyn blockpost_core::Clock>,
    state: Mutex<State>,
    log: Mutex<AlertLog>,
    blocks_current: AtomicBool,
    /// New alerts, with their index in the alert file.
    alerts: tokio::sync::broadcast::Sender<(u64, Alert)>,
    /// The gateway's receipt key, pinned on first contact.
    gateway_key: ed25519_dalek::VerifyingKey,
    /// Receipts handed in (`DATA/receipts.jsonl`), kept across restarts.
    receipts: Mutex<std::fs::File>,
    receipts_path: PathBuf,
    /// The firehose stream's last sequence, as last asked.
    firehose_stream_last: Vec<std::sync::atomic::AtomicU64>,
    /// The node's firehose: its partitions, their streams.
    firehose: blockpost_core::wire::Firehose,
    /// Blocks on the stream after the last one read.
    blocks_pending: std::sync::atomic::AtomicU64,
    /// When the auditor last checked something new.
    progress: Mutex<std::time::Instant>,
    /// New alerts to publish on NATS ([`AuditorConfig::publish`]).
    outbox: Option<tokio::sync::mpsc::Sender<Alert>>,
    /// Every verified message, for full-text search.
    pub(crate) search: SearchIndex,
    /// Messages added to the search index since its last commit.
    search_dirty: AtomicBool,
    /// The node's ledger, for the proofs of search hits (verified by the client).
    pub(crate) ledger: Option<tokio::sync::Mutex<Ledger>>,
    /// The witness: cosigns the checkpoints verified.
    witness: Mutex<Witness>,
    /// The origins of the node's directory log and ledger.
    directory_origin: String,
    ledger_origin: Option<String>,
    /// Where cosigned checkpoints are published, and the subject prefix.
    witness_publish: Option<(async_nats::Client, String)>,
    /// State changes whose alerts are not in the alert file yet: the resume point is
    /// written only when there is none.
    in_flight: std::sync::atomic::AtomicU64,
    /// Firehose messages read since the start.
    firehose_read: std::sync::atomic::AtomicU64,
    /// [`AuditStatus::checked_until_ms`].
    checked_until_ms: std::sync::atomic::AtomicI64,
    /// `DATA/resume.json`.
    resume_path: PathBuf,
    /// The participants whose bodies are opened for search.
    open_for: Vec<OpenFor>,
}

/// Writes a state file as JSON, atomically ([`blockpost_files::write_atomic`]).
fn write_resume(path: &std::path::Path, p: &impl Serialize) -> Result<()> {
    let err = |why: String| Error::State {
        path: path.display().to_string(),
        why,
    };
    let json = serde_json::to_vec(p).map_err(|e| err(e.to_string()))?;
    blockpost_files::write_atomic(path, &json).map_err(|e| err(e.to_string()))
}

/// The resume point of an earlier run, if any (a damaged one is ignored: everything is
/// checked again, which raises no alert twice).
fn read_resume(path: &std::path::Path) -> Option<ResumePoint> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "damaged resume point ignored: checking everything again");
            None
        }
    }
}

impl Inner {
    /// Cosigns the largest verified checkpoint of each log, if the witness has not, and
    /// publishes it.
    async fn cosign_newest(&self) {
        let newest: Vec<(&'static str, blockpost_core::VerifiedCheckpoint)> = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = Vec::new();
            if let Some(cp) = s.directory.checkpoints().latest_verified() {
                v.push(("directory", cp.clone()));
            }
            if let Some(cp) = s
                .chain
                .as_ref()
                .and_then(|c| c.checkpoints().latest_verified())
            {
                v.push(("ledger", cp.clone()));
            }
            v
        };
        for (log, cp) in newest {
            let note = {
                let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
                if w.cosigned_size(&cp.origin).is_some_and(|s| s >= cp.size) {
                    continue;
                }
                match w.cosign(&cp, (self.clock.now_ms() / 1000).max(0) as u64) {
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
            if let (Some(note), Some((client, subject))) = (note, &self.witness_publish) {
                let subject = format!("{subject}.{log}");
                if let Err(e) = client.publish(subject, note.into()).await {
                    tracing::warn!(error = %e, "cannot publish a cosigned checkpoint on NATS");
                }
            }
        }
    }

    fn moved(&self) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    fn raise(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let before = log.all().len() as u64;
        match log.raise(alerts) {
            Ok(new) => {
                for (i, a) in new.into_iter().enumerate() {
                    // The alert file is the record; a full outbox only delays nothing else.
                    if let Some(o) = &self.outbox
                        && o.try_send(a.clone()).is_err()
                    {
                        tracing::warn!(kind = %a.kind, subject = %a.subject, "alert not published on NATS (outbox full); it is in alerts.jsonl");
                    }
                    let _ = self.alerts.send((before + i as u64, a));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot write the alert file"),
        }
    }
}

/// A running auditor. Cheap to clone; its tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
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
fn pin_gateway(path: &std::path::Path, key: &[u8], partitions: u32) -> Result<()> {
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

/// A receipt as kept in `DATA/receipts.jsonl` and shown in evidence.
#[derive(serde::Deserialize, Serialize)]
struct ReceiptRecord {
    /// The encoded `ReceiptBody`, hex.
    body: String,
    /// The gateway's signature, hex.
    signature: String,
}

impl ReceiptRecord {
    fn of(r: &Receipt) -> Self {
        Self {
            body: hex::encode(&r.body),
            signature: hex::encode(&r.signature),
        }
    }

    fn receipt(&self) -> Option<Receipt> {
        Some(Receipt {
            body: hex::decode(&self.body).ok()?,
            signature: hex::decode(&self.signature).ok()?,
        })
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
        let opened: Vec<&str> = config.open_for.iter().map(|o| o.address.as_str()).collect();
        let search = SearchIndex::open(&config.data.join("search"), &opened)?;
        let witness = Witness::open(&config.data, config.witness_name.as_deref())?;
        tracing::info!(key = %witness.verifier_key(), "witness key (nodes and clients configure it)");
        // Refresh the directory so that sender keys are looked up against a verified state.
        messenger.directory.checkpoint().await?;
        let (alerts, _) = tokio::sync::broadcast::channel(1024);
        let (outbox_tx, publisher) = match config.publish.clone() {
            Some((client, subject)) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                (
                    Some(tx),
                    Some(tokio::spawn(publish_loop(client, subject, rx))),
                )
            }
            None => (None, None),
        };
        let receipts_path = config.data.join("receipts.jsonl");
        let kept = std::fs::read_to_string(&receipts_path).unwrap_or_default();
        let receipts = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&receipts_path)
            .map_err(|e| Error::State {
                path: receipts_path.display().to_string(),
                why: e.to_string(),
            })?;
        let inner = Arc::new(Inner {
            clock: config.clock.clone(),
            state: Mutex::new(State {
                chain,
                directory: DirectoryLog::new(messenger.directory.info().verifier_key.clone())
                    .with_watch(config.watch.clone()),
                promises,
                promise_ms: i64::try_from(promise_ms).unwrap_or(i64::MAX),
                grace_ms: i64::try_from(config.grace_ms).unwrap_or(i64::MAX),
                next_block_seq: 1,
            }),
            log: Mutex::new(log),
            blocks_current: AtomicBool::new(false),
            alerts,
            gateway_key,
            receipts: Mutex::new(receipts),
            receipts_path,
            firehose_stream_last: (0..partitions)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            firehose: ns.firehose(partitions),
            blocks_pending: std::sync::atomic::AtomicU64::new(0),
            progress: Mutex::new(std::time::Instant::now()),
            outbox: outbox_tx,
            search,
            search_dirty: AtomicBool::new(false),
            ledger,
            witness: Mutex::new(witness),
            directory_origin: messenger.directory.info().origin.clone(),
            ledger_origin,
            witness_publish: config
                .publish
                .as_ref()
                .map(|(c, _)| (c.clone(), config.witness_subject.clone())),
            in_flight: std::sync::atomic::AtomicU64::new(0),
            firehose_read: std::sync::atomic::AtomicU64::new(0),
            checked_until_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            resume_path: config.data.join("resume.json"),
            open_for: config.open_for.clone(),
        });
        if let Some(p) = read_resume(&inner.resume_path) {
            tracing::info!(
                blocks_checked = p.blocks_checked,
                firehose_from = p.firehose_from,
                "resuming where the last run stopped"
            );
            inner
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .promises
                .resume(p);
        }
        // Receipts handed in before a restart are watched again (a torn last line is
        // dropped: its receipt was never answered).
        for line in kept.lines() {
            let kept = serde_json::from_str::<ReceiptRecord>(line)
                .ok()
                .and_then(|r| r.receipt());
            if let Some(r) = kept
                && let Err(e) = inner.watch_receipt(&r, false)
            {
                tracing::warn!(error = %e, "a kept receipt does not verify; ignored");
            }
        }
        let js = jetstream::new(nats);
        let channel = messenger.directory.channel();
        let mut tasks = vec![
            tokio::spawn(ledger_loop(Arc::downgrade(&inner), channel)),
            tokio::spawn(directory_loop(
                Arc::downgrade(&inner),
                js.clone(),
                ns.clone(),
            )),
        ];
        // Each partition of the firehose is read, and its tail watched, on its own.
        let messenger = Arc::new(tokio::sync::Mutex::new(messenger));
        for k in 0..partitions {
            tasks.push(tokio::spawn(firehose_loop(
                Arc::downgrade(&inner),
                js.clone(),
                k,
                messenger.clone(),
            )));
            tasks.push(tokio::spawn(firehose_tail_loop(
                Arc::downgrade(&inner),
                js.clone(),
                k,
            )));
        }
        tasks.push(tokio::spawn(blocks_loop(Arc::downgrade(&inner), js, ns)));
        tasks.push(tokio::spawn(tick_loop(Arc::downgrade(&inner))));
        tasks.extend(publisher);
        Ok(Self {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        })
    }

    /// Checks a receipt the node's gateway signed (against the pinned gateway key) and
    /// whether its message is in a verified block. A receipt whose message is in no block
    /// yet is kept (`DATA/receipts.jsonl`, also across restarts), and an omission with the
    /// receipt as evidence is raised if its deadline passes, even if the message never
    /// appears on the firehose.
    pub fn check_receipt(&self, r: &Receipt) -> Result<ReceiptVerdict> {
        self.inner.watch_receipt(r, true)
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
    pub fn cosign(&self, note: &[u8]) -> std::result::Result<Vec<u8>, AuditError> {
        let inner = &self.inner;
        let origin = note
            .split(|b| *b == b'\n')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        let now = inner.clock.now_ms();
        let (alerts, verdict) = {
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *s;
            let (alerts, roots, replayed) = if origin == inner.directory_origin {
                let alerts = s.directory.checkpoint(note, now);
                (alerts, s.directory.checkpoints(), s.directory.size())
            } else if inner.ledger_origin.as_deref() == Some(origin.as_str())
                && let Some(chain) = s.chain.as_mut()
            {
                let alerts = chain.ledger_checkpoint(note, now);
                (alerts, chain.checkpoints(), chain.len())
            } else {
                return Err(AuditError::UnknownLog(origin));
            };
            let verdict = match blockpost_core::verify_checkpoint(note, roots.verifier_key()) {
                Err(e) => Err(AuditError::Checkpoint(e)),
                Ok(cp) if roots.is_verified(&cp) => Ok(cp),
                Ok(_) if !alerts.is_empty() => Err(AuditError::Conflicts(alerts[0].detail.clone())),
                Ok(cp) if cp.size > replayed => Err(AuditError::NotYet {
                    replayed,
                    size: cp.size,
                }),
                Ok(cp) => Err(AuditError::NotVerified(cp.size)),
            };
            (alerts, verdict)
        };
        inner.raise(alerts);
        let cp = verdict?;
        let mut w = inner.witness.lock().unwrap_or_else(|e| e.into_inner());
        match w.cosign(&cp, (now / 1000).max(0) as u64) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(refused)) => Err(refused.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the auditor stands.
    pub fn status(&self) -> AuditStatus {
        let s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        AuditStatus {
            blocks_verified: s.chain.as_ref().map_or(0, Chain::len),
            firehose_checked: s.promises.read(),
            waiting: s.promises.waiting(),
            alerts: self
                .inner
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .all()
                .len(),
            blocks_current: self.inner.blocks_current.load(Ordering::SeqCst),
            ledger: s.chain.is_some(),
            receipts_waiting: s.promises.receipts_waiting(),
            directory_entries: s.directory.size(),
            directory_checkpoint: s.directory.checkpoint_verified(),
            ledger_checkpoint: s.chain.as_ref().map_or(0, Chain::ledger_verified),
            firehose_lag: self
                .inner
                .firehose_stream_last
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    l.load(Ordering::SeqCst)
                        .saturating_sub(s.promises.last_seq(k as u32))
                })
                .sum(),
            blocks_lag: self.inner.blocks_pending.load(Ordering::SeqCst),
            firehose_read: self.inner.firehose_read.load(Ordering::SeqCst),
            checked_until_ms: self.inner.checked_until_ms.load(Ordering::SeqCst),
            seconds_since_progress: self
                .inner
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                .as_secs(),
        }
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
    /// inside for a query that does not parse.
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
    fn watch_receipt(&self, r: &Receipt, keep: bool) -> Result<ReceiptVerdict> {
        let body = verify_receipt(&self.gateway_key, r).map_err(Error::BadReceipt)?;
        let id = <[u8; 32]>::try_from(body.message_id.as_slice())
            .map_err(|_| Error::BadReceiptId(body.message_id.len()))?;
        let deadline_ms = body.block_deadline_ms;
        let alerts;
        let verdict;
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(height) = s.chain.as_ref().and_then(|c| c.placed(&id)) {
                return Ok(ReceiptVerdict::InBlock { height });
            }
            let evidence = serde_json::to_value(ReceiptRecord::of(r)).unwrap_or_default();
            s.promises.receipt(id, deadline_ms, evidence);
            alerts = s.promises.tick(
                self.clock.now_ms(),
                self.blocks_current.load(Ordering::SeqCst),
            );
            verdict = if alerts
                .iter()
                .any(|a| a.subject == format!("message {}", hex::encode(id)))
            {
                ReceiptVerdict::Omitted { deadline_ms }
            } else {
                ReceiptVerdict::Pending { deadline_ms }
            };
        }
        if keep && verdict != (ReceiptVerdict::Omitted { deadline_ms }) {
            let mut line = serde_json::to_vec(&ReceiptRecord::of(r)).unwrap_or_default();
            line.push(b'\n');
            let mut f = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
            std::io::Write::write_all(&mut *f, &line)
                .and_then(|()| f.sync_data())
                .map_err(|e| Error::State {
                    path: self.receipts_path.display().to_string(),
                    why: e.to_string(),
                })?;
        }
        self.raise(alerts);
        Ok(verdict)
    }
}

fn published_ms(info: &jetstream::message::Info<'_>) -> i64 {
    i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Most firehose messages checked together (one batch of signatures, split over the
/// cores).
const CHECK_BATCH: usize = 1024;

/// Checks firehose payloads: for each, its id if it is a canonical envelope, and why it is
/// not valid if it is not (envelope rules, sender signature against the verified
/// directory). Retries while the node cannot be asked.
async fn check_envelopes(
    messenger: &mut Messenger,
    items: &[(u64, i64, bytes::Bytes)],
    partition: (u32, &blockpost_core::wire::Firehose),
) -> Vec<(Option<[u8; 32]>, Option<String>)> {
    let mut out: Vec<(Option<[u8; 32]>, Option<String>)> = Vec::with_capacity(items.len());
    let mut envs = Vec::new();
    let mut slots = Vec::new();
    for (_, _, payload) in items {
        match decode_canonical::<Envelope>(payload, "envelope") {
            Ok(env) => {
                // A sender's envelopes belong in its partition only (there the firehose
                // de-duplicates its nonces).
                let misplaced = <blockpost_proto::v1::EnvelopeContent as prost::Message>::decode(
                    env.content.as_slice(),
                )
                .ok()
                .and_then(|c| blockpost_core::Address::parse(&c.sender).ok())
                .map(|a| partition.1.partition_of(&a))
                .filter(|own| *own != partition.0);
                if let Some(own) = misplaced {
                    out.push((
                        Some(message_id_of_encoded(payload)),
                        Some(format!(
                            "on firehose partition {}, but its sender is on partition {own}",
                            partition.0
                        )),
                    ));
                    continue;
                }
                slots.push(out.len());
                out.push((Some(message_id_of_encoded(payload)), None));
                envs.push(env);
            }
            Err(e) => out.push((None, Some(e.to_string()))),
        }
    }
    let mut backoff = Duration::from_millis(100);
    let verdicts = loop {
        match messenger.check_batch(envs.clone()).await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check firehose messages against the directory; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    for (slot, v) in slots.into_iter().zip(verdicts) {
        if let Err(e) = v {
            let why = std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
            out[slot].1 = Some(why);
        }
    }
    out
}

/// Follows partition `k` of the firehose: each message checked, and handed to the
/// promises.
async fn firehose_loop(
    weak: Weak<Inner>,
    js: jetstream::Context,
    k: u32,
    messenger: Arc<tokio::sync::Mutex<Messenger>>,
) {
    let Some(firehose) = weak.upgrade().map(|i| i.firehose.clone()) else {
        return;
    };
    loop {
        let start = match weak.upgrade() {
            Some(i) => {
                let s = i.state.lock().unwrap_or_else(|e| e.into_inner());
                // After a restart, the blocks checked before are replayed first, so that
                // the messages read again are found in them.
                let replayed = s
                    .chain
                    .as_ref()
                    .is_none_or(|c| c.len() >= s.promises.skip_below())
                    || i.blocks_current.load(Ordering::SeqCst);
                replayed.then(|| s.promises.last_seq(k) + 1)
            }
            None => return,
        };
        let Some(start) = start else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let r: std::result::Result<(), String> = async {
            let mut stream = js
                .get_stream(firehose.stream(k))
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = ordered(&stream, None, start).await?;
            let mut read = start.saturating_sub(1);
            while let Some(first) = next_or_stalled(&mut messages, &mut stream, read).await? {
                // Take what else has arrived, to check the signatures in one batch.
                let mut group = vec![first.map_err(|e| e.to_string())?];
                while group.len() < CHECK_BATCH {
                    match futures::FutureExt::now_or_never(messages.next()) {
                        Some(Some(m)) => group.push(m.map_err(|e| e.to_string())?),
                        _ => break,
                    }
                }
                let mut items = Vec::with_capacity(group.len());
                for m in &group {
                    let info = m.info().map_err(|e| e.to_string())?;
                    read = read.max(info.stream_sequence);
                    items.push((info.stream_sequence, published_ms(&info), m.payload.clone()));
                }
                let verdicts =
                    check_envelopes(&mut *messenger.lock().await, &items, (k, &firehose)).await;
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let alerts = {
                    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    let now = inner.clock.now_ms();
                    let mut alerts = Vec::new();
                    for ((seq, published, _), (id, invalid)) in items.iter().zip(verdicts) {
                        let placed = id.is_some_and(|id| {
                            s.chain.as_ref().is_some_and(|c| c.placed(&id).is_some())
                        });
                        alerts.extend(
                            s.promises
                                .firehose_at(k, *seq, id, *published, invalid, placed, now),
                        );
                    }
                    inner.in_flight.fetch_add(1, Ordering::SeqCst);
                    alerts
                };
                inner
                    .firehose_read
                    .fetch_add(items.len() as u64, Ordering::SeqCst);
                inner.moved();
                inner.raise(alerts);
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Err("the firehose consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "auditor: following the firehose again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks the node for its newest ledger checkpoint once a second, and checks it against the
/// chain verified.
async fn ledger_loop(weak: Weak<Inner>, channel: tonic::transport::Channel) {
    use blockpost_proto::v1::ledger_client::LedgerClient;
    use blockpost_proto::v1::{GetBlockRequest, get_block_request};
    let mut grpc = LedgerClient::new(channel).max_decoding_message_size(128 << 20);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chain
            .is_none()
        {
            return; // no ledger
        }
        drop(inner);
        let r = grpc
            .get_block(GetBlockRequest {
                at: Some(get_block_request::At::Latest(true)),
                ..Default::default()
            })
            .await;
        let note = match r {
            Ok(r) => r.into_inner().ledger_checkpoint,
            // No block yet, or the node is away: ask again later.
            Err(_) => continue,
        };
        let Some(inner) = weak.upgrade() else { return };
        let alerts = {
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            match s.chain.as_mut() {
                Some(c) => c.ledger_checkpoint(&note, inner.clock.now_ms()),
                None => Vec::new(),
            }
        };
        inner.raise(alerts);
    }
}

/// An ordered consumer of `stream` (its `filter` subjects, or all) from sequence `start`:
/// how every loop of the auditor reads the node's streams.
/// The next message of an ordered consumer. When none comes for [`STALL_CHECK`] although
/// the stream holds messages after `read` (the last sequence read), the consumer is
/// stalled (seen with multi-megabyte blocks: it delivered again only when a new message
/// came): an error, so that the caller follows the stream again from where it is.
async fn next_or_stalled(
    messages: &mut jetstream::consumer::pull::Ordered,
    stream: &mut jetstream::stream::Stream,
    read: u64,
) -> std::result::Result<
    Option<std::result::Result<jetstream::Message, jetstream::consumer::pull::OrderedError>>,
    String,
> {
    loop {
        match tokio::time::timeout(STALL_CHECK, messages.next()).await {
            Ok(m) => return Ok(m),
            Err(_) => {
                let last = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence;
                if last > read {
                    tracing::warn!(
                        read,
                        last,
                        "a stream consumer delivered nothing for 2 s with messages left: following the stream again"
                    );
                    return Err(format!(
                        "the consumer stalled at {read} with the stream at {last}"
                    ));
                }
            }
        }
    }
}

/// How long an ordered consumer may deliver nothing before the stream is asked whether it
/// holds more.
const STALL_CHECK: Duration = Duration::from_secs(2);

async fn ordered(
    stream: &jetstream::stream::Stream,
    filter: Option<String>,
    start: u64,
) -> std::result::Result<jetstream::consumer::pull::Ordered, String> {
    stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Follows the directory stream: checkpoints and entries, in order.
async fn directory_loop(weak: Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    let mut next_seq = 1u64;
    loop {
        let r: std::result::Result<(), String> = async {
            let stream = js
                .get_stream(ns.directory_stream())
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = ordered(&stream, Some(ns.directory_subjects()), next_seq).await?;
            let (entry_subject, checkpoint_subject) = (ns.entry_subject(), ns.checkpoint_subject());
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                next_seq = info.stream_sequence + 1;
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let now = inner.clock.now_ms();
                let alerts = {
                    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    if m.subject.as_str() == checkpoint_subject {
                        s.directory.checkpoint(&m.payload, now)
                    } else if m.subject.as_str() == entry_subject {
                        let index = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(blockpost_core::wire::LEAF_INDEX_HEADER))
                            .and_then(|v| v.as_str().parse::<u64>().ok());
                        s.directory.entry(index, &m.payload, now)
                    } else {
                        Vec::new()
                    }
                };
                inner.moved();
                inner.raise(alerts);
            }
            Err("the directory consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "auditor: following the directory again");
        }
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message deleted from the end of the firehose leaves no gap for the next message to
/// show. So once a second: when the stream's last sequence is past the last one read and
/// reading has not moved for a second, ask the stream for the next sequence; those it no
/// longer holds were deleted.
async fn firehose_tail_loop(weak: Weak<Inner>, js: jetstream::Context, k: u32) {
    /// Most sequences probed at once.
    const MAX_PROBE: u64 = 1_000;
    let mut still: Option<(u64, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let Some(name) = weak.upgrade().map(|i| i.firehose.stream(k)) else {
        return;
    };
    loop {
        tick.tick().await;
        let ours = match weak.upgrade() {
            Some(i) => i
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .promises
                .last_seq(k),
            None => return,
        };
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let Ok(info) = stream.info().await else {
            continue;
        };
        let last = info.state.last_sequence;
        if let Some(i) = weak.upgrade()
            && let Some(l) = i.firehose_stream_last.get(k as usize)
        {
            l.store(last, Ordering::SeqCst);
        }
        if last <= ours {
            still = None;
            continue;
        }
        match still {
            Some((o, since)) if o == ours && since.elapsed() >= Duration::from_secs(1) => {
                still = None;
                let mut through = ours;
                while through < last && through - ours < MAX_PROBE {
                    match stream.get_raw_message(through + 1).await {
                        Err(e)
                            if e.kind()
                                == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                        {
                            through += 1;
                        }
                        _ => break,
                    }
                }
                if through > ours
                    && let Some(inner) = weak.upgrade()
                {
                    let alerts = {
                        let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                        // Only if reading did not move meanwhile.
                        if s.promises.last_seq(k) == ours {
                            s.promises.gap_through(k, through, inner.clock.now_ms())
                        } else {
                            Vec::new()
                        }
                    };
                    inner.raise(alerts);
                }
            }
            Some((o, _)) if o == ours => {}
            _ => still = Some((ours, tokio::time::Instant::now())),
        }
    }
}

async fn blocks_loop(weak: Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let start = inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_block_seq;
        drop(inner);
        let r: std::result::Result<(), String> = async {
            let mut stream = match js.get_stream(ns.blocks_stream()).await {
                Ok(s) => s,
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::GetStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) =>
                {
                    // No builder has made it yet: nothing to read, nothing unread.
                    if let Some(i) = weak.upgrade() {
                        i.blocks_current.store(true, Ordering::SeqCst);
                    }
                    return Err("no blocks stream yet".into());
                }
                Err(e) => return Err(e.to_string()),
            };
            let last = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .last_sequence;
            if last < start
                && let Some(i) = weak.upgrade()
            {
                i.blocks_current.store(true, Ordering::SeqCst);
            }
            let mut messages = ordered(&stream, None, start).await?;
            let mut read = start.saturating_sub(1);
            // Blocks longer than one message of the bus travel in parts.
            let mut parts = blockpost_core::wire::BlockParts::default();
            while let Some(m) = next_or_stalled(&mut messages, &mut stream, read).await? {
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                read = info.stream_sequence;
                let (seq, pending) = (info.stream_sequence, info.pending);
                let part = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(blockpost_core::wire::BLOCK_PART_HEADER))
                    .map(|v| v.as_str().to_owned());
                let Some(payload) = parts.push(part.as_deref(), &m.payload) else {
                    if !parts.joining() {
                        tracing::warn!(seq, "a block part that follows no part before it: skipped");
                    }
                    continue;
                };
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let mut docs = Vec::new();
                let mut indexed_height = None;
                let alerts = {
                    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.next_block_seq = seq + 1;
                    let now = inner.clock.now_ms();
                    let checked = s.chain.as_mut().map(|c| c.block(&payload, now));
                    let alerts = match checked {
                        Some((mut alerts, seen)) => {
                            if let Some(mut seen) = seen {
                                // Blocks the search index holds from before a restart
                                // are not indexed again.
                                if seen.height >= inner.search.blocks() {
                                    docs = indexed(
                                        &s.directory,
                                        &inner.open_for,
                                        seen.height,
                                        std::mem::take(&mut seen.contents),
                                    );
                                    indexed_height = Some(seen.height);
                                }
                                let (size, root) = seen.directory;
                                alerts.extend(s.directory.named_by_block(
                                    size,
                                    root,
                                    seen.height,
                                    now,
                                ));
                                alerts.extend(s.promises.block(seen, now));
                            }
                            alerts
                        }
                        None => Vec::new(),
                    };
                    inner.in_flight.fetch_add(1, Ordering::SeqCst);
                    alerts
                };
                if let Some(height) = indexed_height {
                    match inner.search.add(height, docs) {
                        Ok(()) => inner.search_dirty.store(true, Ordering::SeqCst),
                        Err(e) => tracing::error!(error = %e, "cannot index messages for search"),
                    }
                }
                inner.blocks_current.store(pending == 0, Ordering::SeqCst);
                inner.blocks_pending.store(pending, Ordering::SeqCst);
                inner.moved();
                inner.raise(alerts);
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Err("the blocks consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "auditor: following the blocks again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes each new alert, as JSON, on `subject`.
async fn publish_loop(
    client: async_nats::Client,
    subject: String,
    mut rx: tokio::sync::mpsc::Receiver<Alert>,
) {
    while let Some(a) = rx.recv().await {
        let Ok(json) = serde_json::to_vec(&a) else {
            continue;
        };
        if let Err(e) = client.publish(subject.clone(), json.into()).await {
            tracing::warn!(error = %e, "cannot publish an alert on NATS; it is in alerts.jsonl");
        }
        let _ = client.flush().await;
    }
}

/// The search documents of a verified block's messages, with names from the replayed
/// directory.
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
                    e.ciphertexts.iter().find(|r| r.recipient == o.address)?;
                    let plain = blockpost_core::open_body(
                        e,
                        &o.address,
                        &o.keys.encryption,
                        &blockpost_core::body_aad(&c.sender, &c.transaction_id),
                    )
                    .ok()?;
                    String::from_utf8(plain).ok()
                }),
                None => None,
            };
            IndexedMessage {
                message_id: hex::encode(id),
                transaction_id: c.transaction_id.clone(),
                kind: match c.kind() {
                    blockpost_proto::v1::MessageKind::Document => "document",
                    blockpost_proto::v1::MessageKind::Finish => "finish",
                    _ => "message",
                }
                .to_owned(),
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

async fn tick_loop(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut written: Option<ResumePoint> = None;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.search_dirty.swap(false, Ordering::SeqCst) {
            let i2 = inner.clone();
            let r = tokio::task::spawn_blocking(move || i2.search.commit()).await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::error!("cannot commit the search index");
            }
        }
        let current = inner.blocks_current.load(Ordering::SeqCst);
        let now = inner.clock.now_ms();
        let alerts = {
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut alerts = s.promises.tick(now, current);
            // A transaction must be closed by the first block cut at or after its
            // deadline: once every block is read, one still open past its deadline plus
            // the gateway's promise (the longest a block may be in coming) and the grace
            // was not closed in time.
            let late = now.saturating_sub(s.promise_ms).saturating_sub(s.grace_ms);
            if current && let Some(chain) = &s.chain {
                for (id, deadline_ms) in chain.overdue(late) {
                    alerts.push(Alert::new(
                        crate::alert::AlertKind::TransactionNotClosed,
                        format!("transaction {id}"),
                        now,
                        format!(
                            "transaction {id} is still open {} ms after its deadline",
                            now - deadline_ms
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
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
            alerts
        };
        inner.raise(alerts);
        inner.checked_until_ms.fetch_max(now, Ordering::SeqCst);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        inner.cosign_newest().await;
        // The resume point, once every alert of what it covers is in the alert file.
        let point = {
            let s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            (inner.in_flight.load(Ordering::SeqCst) == 0).then(|| s.promises.resume_point())
        };
        if let Some(p) = point
            && written.as_ref() != Some(&p)
        {
            match write_resume(&inner.resume_path, &p) {
                Ok(()) => written = Some(p),
                Err(e) => tracing::error!(error = %e, "cannot write the resume point"),
            }
        }
    }
}
