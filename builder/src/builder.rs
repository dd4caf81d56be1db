//! The builder service: its state, its API, and the tasks it starts. The work is in the
//! submodules: `open` (the store verified and indexed at start), `lead` (the lease loop,
//! standby and takeover, health), `follow` (the firehose consumers, checks, batching), `cut`
//! (blocks signed, published, stored, acknowledged).

mod cut;
mod follow;
mod lead;
mod open;

use self::cut::*;
use self::follow::*;
use self::lead::*;
use self::open::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use blockpost_core::block::{
    VerifiedBlock, VerifiedHeader, builder_key_id, empty_root, sign_header, verify_block,
};
use blockpost_core::transaction::{
    BlockBudget, Book, TxMessage, lay_out_block_within, replay_block,
};
use blockpost_core::transaction::{Closed, TransactionGate};
use blockpost_core::wire::{self, Namespace};
use blockpost_core::{
    CheckpointSigner, Clock, EnvelopeLimits, ParsedEnvelope, decode_canonical, leaf_hash,
};
use blockpost_replica::Replica;

use crate::batch::{Batcher, Limits, Seen};
use blockpost_proto::v1::{Block, BlockHeader, Envelope, PartitionRange, TransactionStatus};
use blockpost_storage::{BlockStore, Head};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt as _;
use prost::Message as _;

use crate::anchor::Anchors;
use crate::index::Index;
use crate::maps::BlockMaps;
use crate::{BuilderConfig, Error, Result};

/// Largest stored block, in bytes.
pub const MAX_BLOCK_LEN: usize = wire::MAX_BLOCK_LEN;

/// The durable consumer's name on the firehose: `builder-` and the builder's holder id
/// (each builder its own, so that a builder taking over never pulls from under another).
fn consumer_name(holder: &str) -> String {
    let id: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("builder-{id}")
}

/// How long a block's publish is tried again in place before the builder starts over.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(20);

/// How long the consumer of a builder that stopped stays on the firehose.
const CONSUMER_LINGERS: Duration = Duration::from_secs(600);

/// What the builder is made of (the node gives it its key, its directory and its origin).
pub struct BuilderParts {
    /// Signs headers and ledger checkpoints.
    pub key: SigningKey,
    /// The block store's directory (`DATA/ledger`).
    pub dir: PathBuf,
    /// The directory log's origin; the ledger's is `<origin>/ledger`.
    pub origin: String,
    /// The key of the node's gateway's firehose tags: an envelope with a valid tag was
    /// checked by that gateway, and its signature is not checked again. `None`: every
    /// signature is checked.
    pub firehose_mac: Option<wire::FirehoseMac>,
    /// The node's x25519 delivery key (`DATA/keys/delivery.key`): ledger transactions in
    /// settlement instructions are sealed to it. `None`: the node delivers nothing.
    pub delivery_key: Option<x25519_dalek::StaticSecret>,
}

/// A running builder. Cheap to clone.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuilderConfig,
    store: BlockStore,
    key: SigningKey,
    /// See [`BuilderParts::delivery_key`].
    delivery_key: Option<x25519_dalek::StaticSecret>,
    signer: CheckpointSigner,
    /// The newest block's header.
    tip: Mutex<Option<VerifiedHeader>>,
    limits: EnvelopeLimits,
    replica: Arc<Replica>,
    clock: Arc<dyn Clock>,
    /// Tags of the node's gateway (see [`BuilderParts::firehose_mac`]).
    mac: Option<wire::FirehoseMac>,
    /// Firehose messages whose sender signature the builder checked itself (no valid tag).
    signatures_checked: AtomicU64,
    /// Firehose messages refused (not an envelope, breaks the rules, not signed by its
    /// sender): terminated, never put in a block.
    refused: AtomicU64,
    /// Message, block and transaction indexes, derived from the store.
    pub(crate) index: Index,
    /// Each block's leaf ranges and tree, derived from the store, for look-ups.
    pub(crate) maps: BlockMaps,
    /// Wakes the thread that makes the maps ([`crate::maps::spawn_mapper`]).
    maps_due: std::sync::mpsc::SyncSender<crate::maps::MapDue>,
    /// The open transactions after the newest indexed block. The cutting loop owns it; after
    /// an error it is reloaded from the index ([`catch_up`]).
    book: Mutex<Book>,
    /// The last firehose sequence in a block, per partition.
    last_seqs: Mutex<Vec<u64>>,
    /// The firehose's partitions.
    firehose: wire::Firehose,
    /// Anchors of the ledger root.
    pub(crate) anchors: Anchors,
    /// The newest ledger checkpoint witnesses cosigned, as the node collected it.
    witnessed: blockpost_storage::Witnessed,
    /// Fault injection for the auditor's tests ([`Builder::misbehave_by_omitting`]).
    omit: Mutex<Vec<String>>,
    /// The delivery role's state and the records it waits to put in a block.
    pub(crate) deliveries: Mutex<crate::deliver::Deliveries>,
    /// Fault injection for the auditor's tests ([`Builder::misbehave_by_recording`]).
    pub(crate) inject: Mutex<Vec<Vec<u8>>>,
    /// Fault injection for liveness tests ([`Builder::misbehave_by_failing`]).
    fail_cuts: std::sync::atomic::AtomicBool,
    /// Fault injection for fencing tests ([`Builder::misbehave_by_ignoring_the_lease`]).
    ignore_lease: std::sync::atomic::AtomicBool,
    /// The number of blocks, for those waiting for new ones.
    pub(crate) blocks: tokio::sync::watch::Sender<u64>,
    /// The last firehose sequence the builder is done with (in a block, or refused), per
    /// partition.
    handled_seqs: Mutex<Vec<u64>>,
    /// Blocks the blocks stream is known to hold.
    published: AtomicU64,
    /// When the builder last made progress (ms, its clock).
    progress_ms: std::sync::atomic::AtomicI64,
    /// Why the firehose loop last started over, until it makes progress again.
    last_error: Mutex<Option<String>>,
    /// Whether it keeps the gateway's promises.
    health: tokio::sync::watch::Sender<Health>,
    /// Whether it holds the lease and cuts blocks (else it stands by).
    active: std::sync::atomic::AtomicBool,
    /// Who it is, in the lease ([`crate::lease`]).
    holder: String,
    /// The blocks stream's last sequence as this builder last saw it: every block it
    /// publishes expects it (the fence), so that a block published by another builder in
    /// between makes its publish fail.
    fence: AtomicU64,
    /// The blocks stream sequence where following it goes on (0: not known yet).
    sync_next: AtomicU64,
}

/// Whether the builder keeps the promise of the gateway's receipts (a block by the
/// deadline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// It makes progress, or has nothing to do.
    Serving,
    /// Firehose messages wait for a block, or stored blocks for the blocks stream, and it
    /// made no progress for `stall_after_ms`.
    Stalled {
        /// What it last failed on, or what waits.
        reason: String,
        /// Since when it made no progress (ms since the Unix epoch).
        since_ms: i64,
    },
}

impl Health {
    /// Why it is stalled, if it is.
    pub fn stalled(&self) -> Option<&str> {
        match self {
            Health::Serving => None,
            Health::Stalled { reason, .. } => Some(reason),
        }
    }
}

/// A firehose message waiting for its block.
struct Pending {
    partition: u32,
    seq: u64,
    payload: Vec<u8>,
    tx: TxMessage,
    message: jetstream::Message,
}

impl Builder {
    /// Opens the block store (verifying every stored block: header signature, chain link,
    /// Merkle root, and the ledger's id for it), then follows the firehose of `ns` on
    /// `nats`, checking each message with `limits` and the node's directory `replica`.
    pub async fn start(
        config: BuilderConfig,
        parts: BuilderParts,
        ns: Namespace,
        limits: EnvelopeLimits,
        replica: Arc<Replica>,
        clock: Arc<dyn Clock>,
        nats: async_nats::Client,
    ) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let key = parts.key;
        let mac = parts.firehose_mac;
        let delivery_key = parts.delivery_key;
        let signer = CheckpointSigner::new(&format!("{}/ledger", parts.origin), key.clone())
            .map_err(|e| Error::Config(e.to_string()))?;
        let dir = parts.dir;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("creating {}: {e}", dir.display())))?;
        let holder = crate::lease::holder_id(&dir)?;
        let anchor_config = config.anchor.clone();
        let timeout = config.transaction_timeout_ms;
        let partitions = config.firehose_partitions.max(1);
        let (store, index, maps, anchors) = tokio::task::spawn_blocking(move || {
            let (store, index, maps) = open_store(&dir)?;
            fix_rules(&dir, timeout, partitions)?;
            let anchors = Anchors::open(&dir.join("anchors"), anchor_config)?;
            Ok::<_, Error>((store, index, maps, anchors))
        })
        .await
        .map_err(|e| Error::Corrupted(format!("opening the store: {e}")))??;
        store.ensure_checkpoint(|size, root| {
            signer
                .sign(size, root)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
        })?;
        let timeout = config.transaction_timeout_ms;
        let firehose = ns.firehose(partitions);
        let (maps_due, maps_rx) = std::sync::mpsc::sync_channel(8);
        let inner = Arc::new(Inner {
            config,
            blocks: tokio::sync::watch::Sender::new(store.len()),
            store,
            key,
            delivery_key,
            signer,
            tip: Mutex::new(None),
            limits,
            replica,
            clock,
            mac,
            signatures_checked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            index,
            maps,
            maps_due,
            anchors,
            book: Mutex::new(Book::new(timeout, [])),
            last_seqs: Mutex::new(vec![0; partitions as usize]),
            firehose,
            witnessed: Default::default(),
            omit: Mutex::new(Vec::new()),
            inject: Mutex::new(Vec::new()),
            deliveries: Mutex::new(crate::deliver::Deliveries::default()),
            fail_cuts: Default::default(),
            ignore_lease: Default::default(),
            handled_seqs: Mutex::new(vec![0; partitions as usize]),
            published: AtomicU64::new(0),
            progress_ms: std::sync::atomic::AtomicI64::new(0),
            last_error: Mutex::new(None),
            health: tokio::sync::watch::Sender::new(Health::Serving),
            active: Default::default(),
            holder,
            fence: AtomicU64::new(0),
            sync_next: AtomicU64::new(0),
        });
        inner
            .progress_ms
            .store(inner.clock.now_ms(), Ordering::SeqCst);
        crate::maps::spawn_mapper(
            Arc::downgrade(&inner),
            |i: &Inner| (&i.maps, &i.store),
            maps_rx,
        );
        let i2 = inner.clone();
        tokio::task::spawn_blocking(move || catch_up(&i2))
            .await
            .map_err(|e| Error::Corrupted(format!("indexing the store: {e}")))??;
        tracing::info!(
            blocks = inner.store.len(),
            open_transactions = inner.book.lock().unwrap_or_else(|e| e.into_inner()).len(),
            "block store opened, newest blocks verified and indexed"
        );
        let js = jetstream::new(nats);
        js.get_or_create_stream(stream::Config {
            name: ns.blocks_stream(),
            description: Some(ns.description()),
            subjects: vec![ns.blocks_subject()],
            storage: stream::StorageType::File,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            num_replicas: inner.config.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Bus(format!("blocks stream: {e}")))?;
        tokio::spawn(watch_health(Arc::downgrade(&inner), js.clone()));
        tokio::spawn(run(Arc::downgrade(&inner), js, ns));
        if inner.config.delivery.enabled() && inner.delivery_key.is_some() {
            tokio::spawn(delivery_loop(Arc::downgrade(&inner)));
        }
        if inner.anchors.enabled() {
            tokio::spawn(anchor_loop(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// Number of blocks.
    pub fn height(&self) -> u64 {
        self.inner.store.len()
    }

    /// The block store.
    pub fn store(&self) -> &BlockStore {
        &self.inner.store
    }

    /// The anchors this builder made.
    pub(crate) fn anchors(&self) -> &crate::anchor::Anchors {
        &self.inner.anchors
    }

    /// The newest ledger checkpoint.
    pub fn head(&self) -> Head {
        self.inner.store.head()
    }

    /// Fault injection, for tests of auditors only: from now on the builder drops (acks
    /// and never puts in a block) every valid message of `transaction_id`, breaking the
    /// gateway's receipts for them, in blocks it signs with its own key. Nothing in the
    /// node calls this.
    #[doc(hidden)]
    pub fn misbehave_by_omitting(&self, transaction_id: &str) {
        self.inner
            .omit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(transaction_id.to_owned());
    }

    /// Fault injection, for tests of auditors only: the next block the builder cuts
    /// carries `record` among its records, signed with the builder's key, whatever it
    /// says. Nothing in the node calls this.
    #[doc(hidden)]
    pub fn misbehave_by_recording(&self, record: &blockpost_proto::v1::LedgerRecord) {
        self.inner
            .inject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.encode_to_vec());
    }

    /// Fault injection, for tests of liveness only: while `on`, every cut fails before it
    /// stores anything, as if the disk or the bus refused. Nothing in the node calls this.
    #[doc(hidden)]
    pub fn misbehave_by_failing(&self, on: bool) {
        self.inner.fail_cuts.store(on, Ordering::SeqCst);
    }

    /// The newest ledger checkpoint witnesses cosigned (the node's witness collector sets
    /// it).
    pub fn witnessed(&self) -> &blockpost_storage::Witnessed {
        &self.inner.witnessed
    }

    /// The head to prove against: the newest, or with `witnessed` the newest witnessed
    /// one (FAILED_PRECONDITION when there is none yet).
    pub(crate) fn head_for(&self, witnessed: bool) -> Result<Head, crate::LedgerError> {
        if !witnessed {
            return Ok(self.head());
        }
        self.inner
            .witnessed
            .get()
            .ok_or(crate::LedgerError::NoWitnessedCheckpoint)
    }

    /// The public half of the node's delivery key, if it delivers.
    pub fn delivery_public_key(&self) -> Option<[u8; 32]> {
        self.inner
            .delivery_key
            .as_ref()
            .map(|k| x25519_dalek::PublicKey::from(k).to_bytes())
    }

    /// The builder's public key (block headers and ledger checkpoints).
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.key.verifying_key()
    }

    /// The ledger checkpoints' verifier key (C2SP signed-note form).
    pub fn ledger_verifier_key(&self) -> String {
        self.inner.signer.verifier_key()
    }

    /// Where the message with `id` (SHA-256 of its envelope) is: height and leaf index.
    pub fn locate(&self, id: &[u8; 32]) -> Result<Option<(u64, u32)>> {
        self.inner.index.locate(id)
    }

    /// Tells of each new block (the number of blocks).
    pub fn subscribe_heights(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.blocks.subscribe()
    }

    /// The ledger's indexes.
    pub(crate) fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The blocks' maps, for look-ups.
    pub(crate) fn maps(&self) -> &BlockMaps {
        &self.inner.maps
    }

    /// The default transaction timeout.
    pub fn transaction_timeout_ms(&self) -> u64 {
        self.inner.config.transaction_timeout_ms
    }

    /// How the ledger closed transaction `id`, if it did (a closing record is in a block).
    pub fn transaction_closed(&self, id: &str) -> Result<Option<TransactionStatus>> {
        self.inner.index.is_closed(id)
    }

    /// What the gateway asks before it accepts a message for a transaction. It does not
    /// keep the builder alive.
    pub fn gate(&self) -> Arc<dyn TransactionGate> {
        Arc::new(Gate(Arc::downgrade(&self.inner)))
    }

    /// The ledger's origin line.
    pub fn origin(&self) -> &str {
        self.inner.signer.origin()
    }

    /// The last firehose sequence in a block, summed over the partitions (on a firehose
    /// of one partition, that partition's).
    pub fn last_sequence(&self) -> u64 {
        self.inner.last_seqs().iter().sum()
    }

    /// The last firehose sequence in a block, per partition.
    pub fn last_sequences(&self) -> Vec<u64> {
        self.inner.last_seqs()
    }

    /// The firehose's partitions.
    pub fn firehose_partitions(&self) -> u32 {
        self.inner.firehose.partitions()
    }

    /// Firehose messages whose sender signature the builder checked itself, because they
    /// carried no valid tag of the node's gateway.
    pub fn signatures_checked(&self) -> u64 {
        self.inner.signatures_checked.load(Ordering::Relaxed)
    }

    /// Firehose messages refused (not an envelope, breaking the rules, not signed by
    /// their sender, or too large for any block): never put in a block.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Whether it keeps the gateway's promises now.
    pub fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    /// Tells of every change of [`Builder::health`].
    pub fn subscribe_health(&self) -> tokio::sync::watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Fault injection: cut blocks without the lease, as a builder whose lease lapsed
    /// unnoticed (a paused process) would. Only the fence on the blocks stream keeps two
    /// such builders from forking the chain.
    pub fn misbehave_by_ignoring_the_lease(&self) {
        self.inner.ignore_lease.store(true, Ordering::SeqCst);
    }

    /// Whether it holds the lease and cuts blocks; a standby follows the blocks stream.
    pub fn active(&self) -> bool {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Its id in the builder lease.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Blocks the blocks stream is known to hold.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::SeqCst)
    }
}

struct Gate(std::sync::Weak<Inner>);

impl TransactionGate for Gate {
    fn unavailable(&self) -> Option<String> {
        let inner = self.0.upgrade()?;
        let h = inner.health.borrow();
        h.stalled().map(str::to_owned)
    }

    fn refusal(&self, id: &str) -> Option<Closed> {
        let inner = self.0.upgrade()?;
        let s = match inner.index.transaction(id) {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(error = %e, "transaction index unreadable");
                return None;
            }
        };
        match s.status() {
            TransactionStatus::Finished => Some(Closed::Finished(id.to_owned())),
            TransactionStatus::TimedOut => Some(Closed::TimedOut(id.to_owned())),
            _ if s.message_count as usize
                >= blockpost_core::transaction::MAX_TRANSACTION_MESSAGES =>
            {
                Some(Closed::Full {
                    id: id.to_owned(),
                    messages: s.message_count.into(),
                })
            }
            _ => None,
        }
    }
}

impl Inner {
    /// The builder is done with firehose messages up to `seqs` (per partition).
    fn handled(&self, seqs: &[u64]) {
        let mut h = self.handled_seqs.lock().unwrap_or_else(|e| e.into_inner());
        for (h, s) in h.iter_mut().zip(seqs) {
            *h = (*h).max(*s);
        }
    }

    fn misbehaves_on(&self, transaction_id: &str) -> bool {
        let omit = self.omit.lock().unwrap_or_else(|e| e.into_inner());
        !omit.is_empty() && omit.iter().any(|t| t == transaction_id)
    }

    /// The last firehose sequence in a block, per partition.
    fn last_seqs(&self) -> Vec<u64> {
        self.last_seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether an open transaction is due to time out by `now_ms`, or an anchor waits
    /// for its block.
    fn due(&self, now_ms: i64) -> bool {
        if self.anchors.count() > self.index.anchors_recorded().unwrap_or(u64::MAX) {
            return true;
        }
        if self.deliveries.try_lock().is_ok_and(|d| d.waiting()) {
            return true;
        }
        // A cut holds the book: it closes what is due itself.
        match self.book.try_lock() {
            Ok(b) => b.next_deadline().is_some_and(|d| d <= now_ms),
            Err(std::sync::TryLockError::Poisoned(b)) => {
                b.into_inner().next_deadline().is_some_and(|d| d <= now_ms)
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }
}

/// Delivers the ledger transactions of finished transactions (`crate::deliver`), while
/// this builder cuts blocks, until it is dropped.
async fn delivery_loop(weak: std::sync::Weak<Inner>) {
    let poll = |inner: &Inner| match inner.config.delivery.poll_ms {
        0 => 1_000,
        ms => ms,
    };
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let pause = Duration::from_millis(poll(&inner));
        if inner.active.load(Ordering::SeqCst) {
            let run = tokio::task::spawn_blocking(move || -> Result<usize> {
                let Some(key) = inner.delivery_key.as_ref() else {
                    return Ok(0);
                };
                let mut d = inner.deliveries.lock().unwrap_or_else(|e| e.into_inner());
                d.read_blocks(inner.store.len(), |h| Ok(inner.store.block(h)?))?;
                Ok(d.step(key, &inner.config.delivery.commands(), inner.clock.now_ms()))
            })
            .await;
            match run {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "delivery failed; trying again later"),
                Err(e) => tracing::warn!(error = %e, "delivery panicked"),
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// Anchors the ledger when due, and completes the proofs of Bitcoin anchors, until the
/// builder is dropped.
async fn anchor_loop(weak: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        // Only the builder that cuts blocks anchors them (it records its anchors in them).
        if !inner.active.load(Ordering::SeqCst) {
            continue;
        }
        let poll = inner.config.anchor.sink == "bitcoin"
            && last_poll.elapsed() >= Duration::from_millis(inner.config.anchor.bitcoin.poll_ms);
        if poll {
            last_poll = tokio::time::Instant::now();
        }
        if !poll && !inner.anchors.due(inner.store.len()) {
            continue;
        }
        let outcome = tokio::task::spawn_blocking(move || anchor_now(&inner, poll)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "anchoring failed; trying again later"),
            Err(e) => tracing::warn!(error = %e, "anchoring panicked"),
        }
    }
}

/// The newest block's id and its inclusion path in the ledger of `size` blocks.
fn tip_path(inner: &Inner, size: u64) -> Result<([u8; 32], Vec<[u8; 32]>)> {
    let last = size
        .checked_sub(1)
        .ok_or_else(|| Error::Corrupted("an empty ledger has no anchor".into()))?;
    Ok((
        inner.store.id(last)?,
        inner.store.prove_inclusion(last, size)?,
    ))
}

fn anchor_now(inner: &Inner, poll: bool) -> Result<()> {
    if inner.anchors.due(inner.store.len()) {
        let head = inner.store.head();
        let cp = blockpost_core::verify_checkpoint(&head.checkpoint, &inner.signer.verifier_key())
            .map_err(|e| Error::Corrupted(format!("own ledger checkpoint: {e}")))?;
        let (tip, path) = tip_path(inner, cp.size)?;
        inner
            .anchors
            .anchor(cp.size, cp.root, tip, &path, inner.clock.now_ms())?;
    }
    if poll {
        inner.anchors.complete(|size| tip_path(inner, size))?;
    }
    Ok(())
}
