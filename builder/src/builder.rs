//! The builder service.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use blockpost_core::block::{
    VerifiedBlock, VerifiedHeader, builder_key_id, empty_root, merkle_root, sign_header,
    verify_block,
};
use blockpost_core::transaction::{
    BlockBudget, Book, TxMessage, lay_out_block_within, replay_block,
};
use blockpost_core::wire::{self, Namespace};
use blockpost_core::{
    CheckpointSigner, Clock, EnvelopeLimits, ParsedEnvelope, decode_canonical, leaf_hash,
};
use blockpost_core::transaction::{Closed, TransactionGate};
use blockpost_replica::Replica;
use blockpost_proto::v1::{Block, BlockHeader, Envelope, PartitionRange, TransactionStatus};
use blockpost_storage::{BlockStore, Head};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt as _;
use prost::Message as _;

use crate::anchor::Anchors;
use crate::index::Index;
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
        let signer = CheckpointSigner::new(&format!("{}/ledger", parts.origin), key.clone())
            .map_err(|e| Error::Config(e.to_string()))?;
        let dir = parts.dir;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("creating {}: {e}", dir.display())))?;
        let holder = crate::lease::holder_id(&dir)?;
        let anchor_config = config.anchor.clone();
        let timeout = config.transaction_timeout_ms;
        let partitions = config.firehose_partitions.max(1);
        let (store, index, anchors) = tokio::task::spawn_blocking(move || {
            let (store, index) = open_store(&dir)?;
            fix_rules(&dir, timeout, partitions)?;
            let anchors = Anchors::open(&dir.join("anchors"), anchor_config)?;
            Ok::<_, Error>((store, index, anchors))
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
        let inner = Arc::new(Inner {
            config,
            blocks: tokio::sync::watch::Sender::new(store.len()),
            store,
            key,
            signer,
            tip: Mutex::new(None),
            limits,
            replica,
            clock,
            mac,
            signatures_checked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            index,
            anchors,
            book: Mutex::new(Book::new(timeout, [])),
            last_seqs: Mutex::new(vec![0; partitions as usize]),
            firehose,
            witnessed: Default::default(),
            omit: Mutex::new(Vec::new()),
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
    pub(crate) fn head_for(&self, witnessed: bool) -> Result<Head, tonic::Status> {
        if !witnessed {
            return Ok(self.head());
        }
        self.inner.witnessed.get().ok_or_else(|| {
            tonic::Status::failed_precondition(
                "no ledger checkpoint of this node is witnessed yet (it has no witness configured, or none has cosigned)",
            )
        })
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

fn corrupted(h: u64, e: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!(
        "block {h} does not verify ({e}); the store was left untouched"
    ))
}

/// Opens the block store (each block the ledger names must have the id it holds) and the
/// index beside it.
fn open_store(dir: &std::path::Path) -> Result<(BlockStore, Index)> {
    let store = BlockStore::open(
        dir,
        MAX_BLOCK_LEN,
        |bytes| {
            let b = Block::decode(bytes)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))?;
            let h = b
                .header
                .ok_or_else(|| blockpost_storage::Error::Corrupted("no header".into()))?;
            Ok(blockpost_core::block::block_id(&h.header))
        },
        |_, _| Ok(()),
    )?;
    let index = Index::open(&dir.join("index"))?;
    Ok((store, index))
}

/// The transaction timeout and the firehose's partitions are rules of the ledger, not
/// settings: every replay of the blocks depends on the first, and blocks name sequences by
/// partition. They are recorded at the first start (`DATA/ledger/rules.json`; one written
/// before partitions existed means one partition) and different ones in the config are
/// refused.
fn fix_rules(dir: &std::path::Path, timeout_ms: u64, partitions: u32) -> Result<()> {
    let path = dir.join("rules.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let damaged = || Error::Corrupted(format!("{} is damaged: {text:?}", path.display()));
            let v = serde_json::from_str::<serde_json::Value>(&text).map_err(|_| damaged())?;
            let fixed = v["transaction_timeout_ms"].as_u64().ok_or_else(damaged)?;
            if fixed != timeout_ms {
                return Err(Error::Config(format!(
                    "builder.transaction_timeout_ms is {timeout_ms}, but this ledger was started with {fixed} ({}): it cannot change, since every replay of the blocks depends on it",
                    path.display()
                )));
            }
            // Absent in rules written before partitions: one partition.
            let made = match &v["firehose_partitions"] {
                serde_json::Value::Null => 1,
                n => n.as_u64().ok_or_else(damaged)?,
            };
            if made != u64::from(partitions) {
                return Err(Error::Config(format!(
                    "messaging.firehose_partitions is {partitions}, but this ledger was started with {made} ({}): it cannot change, since blocks name firehose sequences by partition",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::json!({
                "transaction_timeout_ms": timeout_ms,
                "firehose_partitions": partitions,
            })
            .to_string();
            blockpost_storage::write_atomic(&path, text.as_bytes())
                .map_err(|e| Error::Corrupted(format!("writing {}: {e}", path.display())))
        }
        Err(e) => Err(Error::Corrupted(format!("reading {}: {e}", path.display()))),
    }
}

/// Asks the index whether a transaction was closed in an earlier block, for the
/// transaction rules. An index that cannot be read must not pass for "open" (that would
/// close the transaction twice): the lookup answers "closed", keeps the error, and
/// [`ClosedLookup::finish`] returns it, so the caller drops the block it laid out.
struct ClosedLookup<'a> {
    index: &'a Index,
    failed: std::cell::RefCell<Option<Error>>,
}

impl<'a> ClosedLookup<'a> {
    fn new(index: &'a Index) -> Self {
        Self {
            index,
            failed: std::cell::RefCell::new(None),
        }
    }

    fn closed(&self, id: &str) -> bool {
        match self.index.is_closed(id) {
            Ok(s) => s.is_some(),
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                true
            }
        }
    }

    fn finish(self) -> Result<()> {
        self.failed.into_inner().map_or(Ok(()), Err)
    }
}

/// Reads and fully verifies stored block `h`: header signature, Merkle root, leaves, its
/// height, and its link to `prev`.
fn verify_stored(
    inner: &Inner,
    h: u64,
    prev: Option<&VerifiedHeader>,
) -> Result<(VerifiedBlock, Vec<u8>)> {
    let bytes = inner.store.block(h)?;
    let b = Block::decode(bytes.as_slice()).map_err(|e| corrupted(h, e))?;
    let v = verify_block(&b, &inner.key.verifying_key()).map_err(|e| corrupted(h, e))?;
    if v.header.header.height != h {
        return Err(corrupted(
            h,
            format!("it says height {}", v.header.header.height),
        ));
    }
    if let Some(prev) = prev {
        v.header.check_follows(prev).map_err(|e| corrupted(h, e))?;
    }
    let signed = b.header.map(|s| s.encode_to_vec()).unwrap_or_default();
    Ok((v, signed))
}

/// Brings the index up to the store: verifies the newest indexed block and every block
/// after it, replays their transactions (each closing record must be the one the rules
/// give) and indexes them; then reloads the tip, the open transactions and the last
/// firehose sequence from it. An index that disagrees with the store is rebuilt.
fn catch_up(inner: &Inner) -> Result<()> {
    let index = &inner.index;
    let len = inner.store.len();
    let mut head = index.head()?;
    if head.blocks > len || (head.blocks > 0 && inner.store.id(head.blocks - 1)? != head.last_id) {
        tracing::warn!(
            indexed = head.blocks,
            blocks = len,
            "the index does not match the block store: rebuilding it"
        );
        index.reset()?;
        head = index.head()?;
    }
    let mut tip = match head.blocks.checked_sub(1) {
        Some(h) => Some(verify_stored(inner, h, None)?.0.header),
        None => None,
    };
    let mut book = index.book(inner.config.transaction_timeout_ms)?;
    let partitions = inner.firehose.partitions();
    let mut last_seqs = head.last_seqs.clone();
    last_seqs.resize(partitions as usize, 0);
    if head.blocks < len {
        tracing::info!(from = head.blocks, to = len, "indexing blocks");
    }
    for h in head.blocks..len {
        let (v, signed) = verify_stored(inner, h, tip.as_ref())?;
        let closed = ClosedLookup::new(index);
        let entries = replay_block(&mut book, h, v.header.header.time_ms, &v.leaves, |id| {
            closed.closed(id)
        });
        closed.finish()?;
        let entries = entries.map_err(|e| corrupted(h, e))?;
        for p in &v.header.header.partitions {
            let Some(last) = last_seqs.get_mut(p.partition as usize) else {
                return Err(corrupted(
                    h,
                    format!(
                        "it names firehose partition {}, and the firehose has {partitions}",
                        p.partition
                    ),
                ));
            };
            *last = p.last_seq;
        }
        index.commit(h, v.header.id, &signed, &entries, &book, &last_seqs)?;
        tip = Some(v.header);
    }
    *inner.tip.lock().unwrap_or_else(|e| e.into_inner()) = tip;
    *inner.book.lock().unwrap_or_else(|e| e.into_inner()) = book;
    *inner.last_seqs.lock().unwrap_or_else(|e| e.into_inner()) = last_seqs;
    Ok(())
}

/// Stands by or cuts blocks until the builder is dropped, starting over after errors: it
/// follows the blocks stream into its store until it holds the lease, then follows the
/// firehose and cuts blocks until it loses the lease (or another builder's block fences
/// it off), then stands by again.
async fn run(inner: std::sync::Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        match lead(&inner, &js, &ns).await {
            Ok(()) => return,
            Err(Error::Fenced(why)) => {
                tracing::warn!(why, "builder: another builder cuts blocks; standing by");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "builder: following the firehose again");
                if let Some(i) = inner.upgrade() {
                    *i.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often a standby looks at the blocks stream and the lease.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// One turn: stand by until the lease is ours, then cut blocks until it is lost.
async fn lead(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let Some((config, holder)) = weak.upgrade().map(|i| (i.config.clone(), i.holder.clone()))
    else {
        return Ok(());
    };
    let lease = Duration::from_millis(config.lease_ms);
    let kv = crate::lease::bucket(js, ns, config.replicas, lease).await?;
    let mut told = None;
    let revision = loop {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        sync_from_stream(&inner, js, ns).await?;
        if inner.ignore_lease.load(Ordering::SeqCst) {
            break None;
        }
        match crate::lease::take(&kv, &holder).await? {
            crate::lease::Taken::Ours(rev) => break Some(rev),
            crate::lease::Taken::Held(other) => {
                inner.active.store(false, Ordering::SeqCst);
                if told.as_ref() != Some(&other) {
                    tracing::info!(
                        active = other,
                        blocks = inner.store.len(),
                        "block builder standing by: another builder holds the lease"
                    );
                    told = Some(other);
                }
            }
        }
        drop(inner);
        tokio::time::sleep(STANDBY_POLL).await;
    };
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let keeper = match revision {
        Some(revision) => tokio::spawn(crate::lease::keep(
            kv,
            holder.clone(),
            revision,
            lease,
            lost_tx,
        )),
        // Ignoring the lease (a fault injected): never lost.
        None => tokio::spawn(async move {
            let _keep = lost_tx;
            std::future::pending::<()>().await;
        }),
    };
    if let Some(i) = weak.upgrade() {
        tracing::info!(
            holder,
            blocks = i.store.len(),
            "block builder active: it holds the lease"
        );
        i.active.store(true, Ordering::SeqCst);
    }
    let r = follow(weak, js, ns, lost).await;
    keeper.abort();
    // Fenced off, it stands by. After any other error it is still the one that should
    // cut (it takes its own lease back at once), and a builder that keeps failing is a
    // stalled one, not a standby.
    if matches!(r, Err(Error::Fenced(_)))
        && let Some(i) = weak.upgrade()
    {
        i.active.store(false, Ordering::SeqCst);
    }
    r
}

/// Where a message of the blocks stream belongs: its block's height (from its part
/// header, or its own header), if it is a block or a part of one.
fn height_of(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> Option<u64> {
    if let Some(p) = headers.and_then(|h| h.get(wire::BLOCK_PART_HEADER)) {
        return wire::parse_block_part(p.as_str()).map(|(h, _, _)| h);
    }
    Block::decode(payload)
        .ok()
        .and_then(|b| b.header)
        .and_then(|h| BlockHeader::decode(h.header.as_slice()).ok())
        .map(|h| h.height)
}

/// The first sequence of the blocks stream at or after `from` whose block is at `height`
/// or later (a binary search: heights only grow along the stream).
async fn seek(stream: &stream::Stream, height: u64, from: u64, last: u64) -> Result<u64> {
    let (mut lo, mut hi) = (from, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = match stream.get_raw_message(mid).await {
            Ok(m) => height_of(Some(&m.headers), &m.payload),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(Error::Bus(format!("blocks stream: {e}"))),
        };
        match h {
            Some(h) if h >= height => hi = mid,
            Some(_) => lo = mid + 1,
            // Deleted or not a block: look from the next one (a linear step).
            None => lo = mid + 1,
        }
    }
    Ok(lo)
}

/// Brings the store up to the blocks stream: every block the stream holds beyond the
/// store is read, fully verified (signature, height, link, root) and stored, then indexed
/// (its transactions replayed by [`catch_up`]). Remembers the stream's last sequence as
/// the fence for the next publish.
async fn sync_from_stream(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("blocks stream: {e}"));
    let mut stream = js
        .get_stream(ns.blocks_stream())
        .await
        .map_err(|e| bus(&e))?;
    let state = stream.info().await.map_err(|e| bus(&e))?.state.clone();
    let (first, last) = (state.first_sequence, state.last_sequence);
    inner.fence.store(last, Ordering::SeqCst);
    if state.messages == 0 {
        return Ok(());
    }
    let local = inner.store.len();
    let mut next = inner.sync_next.load(Ordering::SeqCst);
    if next == 0 || next < first {
        next = seek(&stream, local, first, last).await?;
    }
    let mut parts = wire::BlockParts::default();
    let mut adopted = 0u64;
    let mut prev = inner.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
    while next <= last {
        let read = crate::blocks::read_block_message(&stream, next, &mut parts)
            .await
            .map_err(|e| bus(&e))?;
        next += 1;
        let Some(bytes) = read else {
            continue;
        };
        let h = inner.store.len();
        let b = Block::decode(bytes.as_slice()).map_err(|e| corrupted(h, e))?;
        let v = verify_block(&b, &inner.key.verifying_key()).map_err(|e| corrupted(h, e))?;
        let at = v.header.header.height;
        if at < h {
            continue; // a block the store has (a republish)
        }
        if at > h {
            return Err(corrupted(
                h,
                format!("the blocks stream skips from height {h} to {at}"),
            ));
        }
        if let Some(p) = &prev {
            v.header.check_follows(p).map_err(|e| corrupted(h, e))?;
        }
        let id = v.header.id;
        let i2 = inner.clone();
        tokio::task::spawn_blocking(move || {
            i2.store.append(bytes, id, |size, root| {
                i2.signer
                    .sign(size, root)
                    .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
            })
        })
        .await
        .map_err(|e| Error::Corrupted(format!("storing a block: {e}")))??;
        prev = Some(v.header);
        adopted += 1;
        // Resume after the last whole block: parts of one being published come again.
        inner.sync_next.store(next, Ordering::SeqCst);
    }
    if !parts.joining() {
        inner.sync_next.store(next, Ordering::SeqCst);
    }
    if adopted > 0 {
        let i2 = inner.clone();
        tokio::task::spawn_blocking(move || catch_up(&i2))
            .await
            .map_err(|e| Error::Corrupted(format!("indexing the store: {e}")))??;
        let len = inner.store.len();
        inner.published.fetch_max(len, Ordering::SeqCst);
        inner.blocks.send_replace(len);
        tracing::debug!(adopted, blocks = len, "blocks read from the blocks stream");
    }
    Ok(())
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

/// Most firehose messages checked together (batch signature verification, split over the
/// cores).
const CHECK_BATCH: usize = 1024;

/// Messages asked of the server in one pull.
const PULL_BATCH: usize = 2048;

/// Longest wait for the replica to learn of the sender key an envelope names, when it
/// has not reached that entry yet.
const MAX_REPLICA_WAIT: Duration = Duration::from_secs(10);

/// Checks messages: each must be a canonical envelope that keeps the rules, from a sender
/// the replica knows, signed with the key at the index it names (checked in one batch).
/// `Err(why)` for a message that never can be in a block. Waits, in order, while the
/// replica does not know a sender yet (the gateway accepted the message, so it will);
/// `None` if the builder was dropped meanwhile.
async fn check_all(
    inner: &Arc<Inner>,
    group: &[(u32, u64, jetstream::Message)],
) -> Option<Vec<std::result::Result<TxMessage, String>>> {
    let mut verdicts: Vec<std::result::Result<TxMessage, String>> = Vec::with_capacity(group.len());
    // Senders repeat within a group: ask the replica once per (sender, key index).
    let mut keys: std::collections::HashMap<(String, u64), ed25519_dalek::VerifyingKey> =
        std::collections::HashMap::new();
    let mut batch = Vec::new();
    let mut slots = Vec::new();
    for (i, (partition, _, m)) in group.iter().enumerate() {
        // Canonical: the payload is the encoded envelope, whose hash is the message id.
        let parsed = decode_canonical::<Envelope>(&m.payload, "envelope").and_then(|env| {
            let id = blockpost_core::message_id_of_encoded(&m.payload);
            ParsedEnvelope::parse(env, &inner.limits).map(|p| (id, p))
        });
        let (id, parsed) = match parsed {
            Ok(p) => p,
            Err(e) => {
                verdicts.push(Err(e.to_string()));
                continue;
            }
        };
        // A sender's envelopes are in its partition only: there, and only there, the
        // firehose de-duplicates its nonces.
        let own = inner.firehose.partition_of(parsed.sender());
        if own != *partition {
            verdicts.push(Err(format!(
                "on firehose partition {partition}, but sender {} is on partition {own}",
                parsed.sender()
            )));
            continue;
        }
        let index = parsed.content().sender_key_index;
        let waited_since = tokio::time::Instant::now();
        let cached = keys.get(&(parsed.sender().to_string(), index)).copied();
        let key = loop {
            if cached.is_some() {
                break cached;
            }
            let known = inner
                .replica
                .participant(
                    parsed.sender().as_str(),
                    Some(index),
                    Duration::from_millis(500),
                )
                .await
                .ok()
                .flatten()
                .and_then(|p| p.key_at(index));
            if let Some(k) = known {
                break Some(k);
            }
            // Wait only while the replica has not reached the entry the envelope names,
            // and not for ever: a sender or key that never comes is a refusal.
            if index < inner.replica.applied() || waited_since.elapsed() > MAX_REPLICA_WAIT {
                break None;
            }
            if Arc::strong_count(inner) == 1 {
                return None;
            }
            // Waiting for the directory (bounded by MAX_REPLICA_WAIT) is not a stall.
            inner
                .progress_ms
                .store(inner.clock.now_ms(), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(key) = key else {
            verdicts.push(Err(format!(
                "the directory has no key {index} for sender {}",
                parsed.sender()
            )));
            continue;
        };
        keys.insert((parsed.sender().to_string(), index), key);
        verdicts.push(Ok(TxMessage::new(id, parsed.content())));
        // Checked by the node's gateway (its tag verifies): the signature need not be
        // checked again.
        let tagged = inner.mac.as_ref().is_some_and(|mac| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(wire::GATEWAY_MAC_HEADER))
                .is_some_and(|t| mac.check(&m.payload, t.as_str()))
        });
        if !tagged {
            slots.push(i);
            batch.push((parsed, key));
        }
    }
    inner
        .signatures_checked
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    // Split over the cores (core's one parallel batch check), off the async workers.
    let results = tokio::task::spawn_blocking(move || blockpost_core::verify_batch_parallel(batch))
        .await
        .ok()?;
    for (slot, r) in slots.into_iter().zip(results) {
        if let Err(e) = r {
            verdicts[slot] = Err(e.to_string());
        }
    }
    Some(verdicts)
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

/// Publishes the stored blocks the blocks stream lacks: those cut while NATS was away
/// (a failed publish makes the loop start over, so the stream never has a gap), or all of
/// them into a recreated stream.
async fn republish(inner: &Arc<Inner>, js: &jetstream::Context, ns: &Namespace) -> Result<()> {
    let len = inner.store.len();
    if len == 0 {
        return Ok(());
    }
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("blocks stream: {e}"));
    let stream = js
        .get_stream(ns.blocks_stream())
        .await
        .map_err(|e| bus(&e))?;
    let next = match stream
        .get_last_raw_message_by_subject(&ns.blocks_subject())
        .await
    {
        // The last message is a part: its block is on the stream once its last part is.
        Ok(m) => match m
            .headers
            .get(wire::BLOCK_PART_HEADER)
            .and_then(|v| wire::parse_block_part(v.as_str()))
        {
            Some((height, part, parts)) if part == parts => height + 1,
            Some((height, _, _)) => height,
            None => Block::decode(m.payload.as_ref())
                .ok()
                .and_then(|b| b.header)
                .and_then(|h| BlockHeader::decode(h.header.as_slice()).ok())
                .map_or(0, |h| h.height + 1),
        },
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(bus(&e)),
    };
    if next < len {
        tracing::info!(
            from = next,
            to = len,
            "publishing blocks the blocks stream lacks"
        );
    }
    for h in next..len {
        publish_block(js, ns, h, inner.store.block(h)?, &inner.fence).await?;
        inner.published.fetch_max(h + 1, Ordering::SeqCst);
    }
    inner.published.fetch_max(len, Ordering::SeqCst);
    Ok(())
}

/// How often the builder looks at its own progress.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Watches the builder's progress until it is dropped: it is stalled when firehose
/// messages wait for a block (or stored blocks for the blocks stream) and it made no
/// progress for `stall_after_ms`. Each change is logged (an error naming the cause when it
/// stalls) and told to [`Builder::subscribe_health`]; the gateway refuses receipts while
/// it is stalled.
async fn watch_health(weak: std::sync::Weak<Inner>, js: jetstream::Context) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (Vec::new(), 0, 0);
    let mut busy = false;
    let Some((layout, inner_holder)) = weak
        .upgrade()
        .map(|i| (i.firehose.clone(), i.holder.clone()))
    else {
        return;
    };
    let mut firehose: Vec<Option<stream::Stream>> = layout.all().map(|_| None).collect();
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        // How far the firehose goes. Unknown while NATS is away: the tick is skipped (the
        // gateway answers for the bus itself), so that a flaky bus neither hides a stall
        // nor ends one.
        let mut ends = Vec::with_capacity(firehose.len());
        for (k, slot) in layout.all().zip(firehose.iter_mut()) {
            if slot.is_none() {
                *slot = js.get_stream(layout.stream(k)).await.ok();
            }
            let Some(f) = slot.as_mut() else { break };
            let Ok((last, first)) = f
                .info()
                .await
                .map(|i| (i.state.last_sequence, i.state.first_sequence))
            else {
                break;
            };
            // Messages deleted from the stream (its head by age or a purge, or its newest
            // by hand) are no work: what the builder's own consumer has left says so,
            // when it is there.
            let left = f
                .consumer_info(consumer_name(&inner_holder))
                .await
                .ok()
                .map(|c| c.num_pending + c.num_ack_pending as u64);
            ends.push((last, first, left));
        }
        if ends.len() != firehose.len() {
            continue;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let now = inner.clock.now_ms();
        // A standby watches the same: firehose messages no block took, whoever should
        // cut them. Its gateway then stops promising too, until a builder takes over.
        let mut handled = inner
            .handled_seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (h, l) in handled.iter_mut().zip(inner.last_seqs()) {
            *h = (*h).max(l);
        }
        let (stored, published) = (inner.store.len(), inner.published.load(Ordering::SeqCst));
        if (&handled, stored, published) != (&seen.0, seen.1, seen.2) {
            seen = (handled.clone(), stored, published);
            inner.progress_ms.store(now, Ordering::SeqCst);
            *inner.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let waiting: u64 = ends
            .iter()
            .zip(&handled)
            .map(|(&(last, first, left), &handled)| match left {
                Some(0) => 0,
                _ => last.saturating_sub(handled.max(first.saturating_sub(1))),
            })
            .sum();
        let unpublished = stored.saturating_sub(published);
        // Time without progress counts from when work came, not from the last block of
        // an idle builder.
        let work = waiting > 0 || unpublished > 0;
        if work && !busy {
            inner.progress_ms.store(now, Ordering::SeqCst);
        }
        busy = work;
        let since_ms = inner.progress_ms.load(Ordering::SeqCst);
        let idle_ms = now.saturating_sub(since_ms);
        let stalled =
            work && idle_ms >= i64::try_from(inner.config.stall_after_ms).unwrap_or(i64::MAX);
        let health = if stalled {
            let cause = inner
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let reason = match cause {
                Some(e) => format!("no progress for {idle_ms} ms: {e}"),
                None if unpublished > 0 => format!(
                    "no progress for {idle_ms} ms: {unpublished} stored blocks are not known to be on the blocks stream"
                ),
                None => format!(
                    "no progress for {idle_ms} ms: {waiting} firehose messages wait for a block"
                ),
            };
            Health::Stalled { reason, since_ms }
        } else {
            Health::Serving
        };
        let was_stalled = inner.health.borrow().stalled().is_some();
        match (&health, was_stalled) {
            (Health::Stalled { reason, .. }, false) => {
                tracing::error!(reason = %reason, waiting, unpublished, "block builder stalled: the gateway refuses receipts until it recovers");
            }
            (Health::Serving, true) => {
                tracing::info!(blocks = stored, "block builder recovered");
            }
            _ => {}
        }
        // A stalled builder's reason (its idle time) changes every tick: tell only of
        // turns between serving and stalled.
        inner.health.send_if_modified(|h| {
            let turned = h.stalled().is_some() != health.stalled().is_some();
            *h = health;
            turned
        });
    }
}

/// Publishes block `height` on the blocks stream (de-duplicated by height): whole when it
/// fits in one message of this bus, else in parts ([`wire::BLOCK_PART_HEADER`]). Each
/// message expects the stream's last sequence to be `fence` (what this builder last saw or
/// published), which it then advances: if another builder published in between, the
/// stream refuses it and this builder is [`Error::Fenced`].
async fn publish_block(
    js: &jetstream::Context,
    ns: &Namespace,
    height: u64,
    encoded: Vec<u8>,
    fence: &AtomicU64,
) -> Result<()> {
    let part_len = wire::block_part_len(js.client().server_info().max_payload);
    let encoded = bytes::Bytes::from(encoded);
    let parts = encoded.len().div_ceil(part_len).max(1);
    if parts > 1 {
        tracing::debug!(
            height,
            bytes = encoded.len(),
            parts,
            "block travels in parts"
        );
    }
    for k in 1..=parts {
        let chunk = encoded.slice((k - 1) * part_len..(k * part_len).min(encoded.len()));
        let mut headers = async_nats::HeaderMap::new();
        if parts == 1 {
            headers.insert(wire::MSG_ID_HEADER, wire::block_msg_id(height).as_str());
        } else {
            headers.insert(
                wire::MSG_ID_HEADER,
                wire::block_part_msg_id(height, k, parts).as_str(),
            );
            headers.insert(
                wire::BLOCK_PART_HEADER,
                wire::block_part(height, k, parts).as_str(),
            );
        }
        let expected = fence.load(Ordering::SeqCst);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let failed =
            |e: &dyn std::fmt::Display| Error::Bus(format!("publishing block {height}: {e}"));
        // A stream electing a leader answers nothing for a few seconds: try again in place
        // (the same message, the same fence) rather than start the firehose over, which
        // needs the cluster's meta leader too. If an attempt did land, the next is a
        // duplicate, and the builder reads its own block back from the stream.
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let ack = loop {
            let sent = match js
                .publish_with_headers(ns.blocks_subject(), headers.clone(), chunk.clone())
                .await
            {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(a) => break a,
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    return Err(Error::Fenced(format!(
                        "block {height}: the blocks stream moved past sequence {expected}"
                    )));
                }
                Err(e) if started.elapsed() < PUBLISH_RETRY_FOR => {
                    tracing::debug!(height, error = %e, "publishing a block: trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(failed(&e)),
            }
        };
        if ack.duplicate {
            return Err(Error::Fenced(format!(
                "block {height}: the blocks stream holds it already (sequence {})",
                ack.sequence
            )));
        }
        fence.store(ack.sequence, Ordering::SeqCst);
    }
    Ok(())
}

/// The block being cut, stored and published while the next one fills: at most one at a
/// time, in order.
struct Cutter {
    flight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// What one block may hold.
    budget: BlockBudget,
    /// The last firehose sequence the loop has disposed of (pending or refused), per
    /// partition: done once the next cut is stored.
    disposed: Vec<u64>,
}

impl Cutter {
    /// Waits for the block in flight.
    async fn finish(&mut self) -> Result<()> {
        match self.flight.take() {
            Some(f) => f
                .await
                .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))?,
            None => Ok(()),
        }
    }

    /// Firehose message `seq` of partition `k` goes in no block (terminated). With
    /// nothing pending, the builder is done with it once the block in flight before it is
    /// stored; else once the next cut is.
    async fn dropped(
        &mut self,
        inner: &Inner,
        k: u32,
        seq: u64,
        nothing_pending: bool,
    ) -> Result<()> {
        if let Some(d) = self.disposed.get_mut(k as usize) {
            *d = (*d).max(seq);
        }
        if nothing_pending {
            self.finish().await?;
            inner.handled(&self.disposed);
        }
        Ok(())
    }

    /// Waits for the block in flight, then starts cutting `pending`.
    async fn start(
        &mut self,
        inner: &Arc<Inner>,
        js: &jetstream::Context,
        ns: &Namespace,
        pending: Vec<Pending>,
    ) -> Result<()> {
        self.finish().await?;
        let (inner, js, ns, budget) = (inner.clone(), js.clone(), ns.clone(), self.budget);
        let disposed = self.disposed.clone();
        self.flight = Some(tokio::spawn(async move {
            cut(&inner, &js, &ns, pending, budget, disposed).await
        }));
        Ok(())
    }
}

/// Follows the firehose. It holds the builder only while it works on a message or a
/// block, so that a dropped builder closes its store at once (its lock too).
async fn follow(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    lost: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let Some((config, partitions)) = weak
        .upgrade()
        .map(|i| (i.config.clone(), i.firehose.partitions()))
    else {
        return Ok(());
    };
    let mut cutter = Cutter {
        flight: None,
        budget: budget(&config),
        disposed: vec![0; partitions as usize],
    };
    let r = follow_with(weak, js, ns, &mut cutter, lost).await;
    // Never start over (catch_up) while a block is being cut.
    let last = cutter.finish().await;
    r.and(last)
}

/// The messages of one firehose partition's consumer, each with the partition.
type Tagged = std::pin::Pin<
    Box<dyn futures::Stream<Item = (u32, std::result::Result<jetstream::Message, String>)> + Send>,
>;

/// Whether deleting a consumer failed because there is none.
fn consumer_not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// A fresh consumer of partition `k` of the firehose right after the last block: the
/// store, not the consumer, says where the builder stands, so that messages a previous
/// run had been handed (and never acknowledged, say before a kill -9) come again at once,
/// not after the ack wait.
async fn partition_consumer(
    js: &jetstream::Context,
    firehose: &wire::Firehose,
    k: u32,
    holder: &str,
    start: u64,
    config: &BuilderConfig,
) -> Result<Tagged> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("firehose partition {k}: {e}"));
    let stream = js
        .get_stream(firehose.stream(k))
        .await
        .map_err(|e| bus(&e))?;
    let name = consumer_name(holder);
    match stream.delete_consumer(&name).await {
        Ok(_) => {}
        Err(e) if consumer_not_found(&e) => {}
        Err(e) => return Err(bus(&e)),
    }
    let consumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                inactive_threshold: CONSUMER_LINGERS,
                filter_subject: firehose.subject(k),
                // One acknowledgement per cut and partition, of its last message in a
                // block: it covers every message before it (in these blocks or earlier
                // ones, or refused).
                ack_policy: consumer::AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                max_ack_pending: (config.max_block_messages as i64).saturating_mul(4),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| bus(&e))?;
    // Short pulls with heartbeats: a consumer whose leader died (a server killed, its
    // election) is noticed in about two seconds, not after the default 30 s pull.
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| bus(&e))?;
    Ok(Box::pin(messages.map(move |m| {
        (k, m.map_err(|e| format!("firehose partition {k}: {e}")))
    })))
}

async fn follow_with(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    cutter: &mut Cutter,
    mut lost: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(e.to_string());
    let Some(inner) = weak.upgrade() else {
        return Ok(());
    };
    // After an error the book may be ahead of the ledger, or a stored block not indexed.
    let i2 = inner.clone();
    tokio::task::spawn_blocking(move || catch_up(&i2))
        .await
        .map_err(|e| Error::Corrupted(format!("indexing the store: {e}")))??;
    // Blocks another builder published (or this one, before it died storing them).
    sync_from_stream(&inner, js, ns).await?;
    republish(&inner, js, ns).await?;
    let config = inner.config.clone();
    let holder = inner.holder.clone();
    let firehose = inner.firehose.clone();
    // The last sequence taken, per partition: in a block, being cut, or pending.
    let mut taken = inner.last_seqs();
    cutter.disposed.clone_from(&taken);
    drop(inner);
    let mut partitions = Vec::with_capacity(taken.len());
    for k in firehose.all() {
        let start = taken[k as usize] + 1;
        partitions.push(partition_consumer(js, &firehose, k, &holder, start, &config).await?);
    }
    // Every partition at once, each in its order; a block takes from each a range.
    let mut messages = futures::stream::select_all(partitions);
    let delay = Duration::from_millis(config.max_block_delay_ms);
    // When to cut; the cut itself splits what it is given into blocks within the budget.
    let max_block_bytes = config.max_block_bytes;
    let mut pending: Vec<Pending> = Vec::new();
    let mut bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = lost.changed() => {
                return Err(Error::Fenced("the lease was lost".into()));
            }
            _ = tick.tick() => {
                let Some(inner) = weak.upgrade() else {
                    return Ok(()); // the builder was dropped
                };
                // A transaction due to time out gets its block now, messages or not.
                if inner.due(inner.clock.now_ms()) {
                    cutter.start(&inner, js, ns, std::mem::take(&mut pending)).await?;
                    bytes = 0;
                    deadline = None;
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                cutter.start(&inner, js, ns, std::mem::take(&mut pending)).await?;
                bytes = 0;
                deadline = None;
                continue;
            }
        };
        let first = match next {
            Some((k, Ok(m))) => (k, m),
            Some((_, Err(e))) => return Err(Error::Bus(e)),
            None => return Err(Error::Bus("the firehose consumers ended".into())),
        };
        // Take what else has arrived, to check signatures in batches.
        let mut group = vec![first];
        while group.len() < CHECK_BATCH {
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(Some((k, Ok(m)))) => group.push((k, m)),
                Some(Some((_, Err(e)))) => return Err(Error::Bus(e)),
                _ => break,
            }
        }
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        let inner = &inner;
        let in_blocks = inner.last_seqs();
        let mut fresh = Vec::with_capacity(group.len());
        for (k, m) in group {
            let seq = m.info().map_err(|e| bus(&e))?.stream_sequence;
            let Some(last) = taken.get_mut(k as usize) else {
                continue;
            };
            if seq <= *last {
                // Already in a block (redelivered after a restart), being cut, or pending.
                if seq <= in_blocks[k as usize] {
                    let _ = m.ack().await;
                }
                continue;
            }
            *last = seq;
            fresh.push((k, seq, m));
        }
        let tc = std::time::Instant::now();
        let Some(verdicts) = check_all(inner, &fresh).await else {
            return Ok(()); // the builder was dropped while waiting for the replica
        };
        tracing::trace!(
            n = verdicts.len(),
            ms = tc.elapsed().as_secs_f64() * 1e3,
            "checked"
        );
        for ((k, seq, m), verdict) in fresh.into_iter().zip(verdicts) {
            let tx = match verdict {
                Ok(tx) => tx,
                Err(why) => {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        partition = k,
                        seq,
                        why,
                        "firehose message refused by the builder"
                    );
                    let _ = m.ack_with(AckKind::Term).await;
                    cutter.dropped(inner, k, seq, pending.is_empty()).await?;
                    continue;
                }
            };
            if inner.misbehaves_on(&tx.transaction_id) {
                let _ = m.ack_with(AckKind::Term).await;
                cutter.dropped(inner, k, seq, pending.is_empty()).await?;
                continue;
            }
            let payload = m.payload.to_vec();
            // Cut before a message would take the block past its limits.
            if !pending.is_empty()
                && (pending.len() + 1 > inner.config.max_block_messages
                    || bytes + payload.len() > max_block_bytes)
            {
                cutter
                    .start(inner, js, ns, std::mem::take(&mut pending))
                    .await?;
                bytes = 0;
                deadline = None;
            }
            bytes += payload.len();
            if let Some(d) = cutter.disposed.get_mut(k as usize) {
                *d = (*d).max(seq);
            }
            pending.push(Pending {
                partition: k,
                seq,
                payload,
                tx,
                message: m,
            });
        }
        if pending.is_empty() {
            continue;
        }
        if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + delay);
        }
        if pending.len() >= inner.config.max_block_messages || bytes >= max_block_bytes {
            cutter
                .start(inner, js, ns, std::mem::take(&mut pending))
                .await?;
            bytes = 0;
            deadline = None;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What one block may hold: the configured fill, within the largest block there may be
/// (blocks longer than one message of the bus travel in parts).
fn budget(config: &BuilderConfig) -> BlockBudget {
    BlockBudget {
        max_fill_bytes: config.max_block_bytes,
        max_leaves: config.max_block_messages,
        capacity: MAX_BLOCK_LEN,
    }
}

/// What one cut made: the blocks, in order, and the firehose messages (partition,
/// sequence) too large for any block.
struct Cut {
    blocks: Vec<u64>,
    too_large: Vec<(u32, u64)>,
}

/// Cuts, stores, indexes and publishes the blocks of `pending` messages and the closing
/// records the transaction rules put with them (a block may hold only closings: a
/// transaction timed out while no message came), each within `budget`, as many as they
/// need; then acknowledges the messages. Messages go in ledger order: by partition, then
/// by sequence, so that every block takes from each partition one range.
async fn cut(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    mut pending: Vec<Pending>,
    budget: BlockBudget,
    disposed: Vec<u64>,
) -> Result<()> {
    pending.sort_by_key(|p| (p.partition, p.seq));
    let now = inner.clock.now_ms();
    if pending.is_empty() && !inner.due(now) {
        return Ok(());
    }
    if inner.fail_cuts.load(Ordering::SeqCst) {
        return Err(Error::Corrupted(
            "fault injected: cutting blocks fails".into(),
        ));
    }
    let offered: Vec<((u32, u64), Vec<u8>, TxMessage)> = pending
        .iter()
        .map(|p| ((p.partition, p.seq), p.payload.clone(), p.tx.clone()))
        .collect();
    let (directory_size, directory_root) = inner
        .replica
        .checkpoint_in_force()
        .map_or((0, empty_root()), |cp| (cp.size, cp.root));
    let mut seqs: std::collections::VecDeque<(u32, u64)> =
        offered.iter().map(|(s, _, _)| *s).collect();
    let mut messages: std::collections::VecDeque<(Vec<u8>, TxMessage)> =
        offered.into_iter().map(|(_, b, t)| (b, t)).collect();
    let mut done = Cut {
        blocks: Vec::new(),
        too_large: Vec::new(),
    };
    // One block at least (time-outs and anchors may be due), then until every message is
    // in one. Each block is on the blocks stream (fenced) before it is stored: a builder
    // fenced off by another never stores, serves or signs a checkpoint over a block that
    // is not the chain's.
    loop {
        let inner2 = inner.clone();
        let (made, s2, m2) = tokio::task::spawn_blocking(move || {
            let made = cut_one(
                &inner2,
                now,
                &mut messages,
                &budget,
                (directory_size, directory_root),
                &seqs,
            );
            (made, seqs, messages)
        })
        .await
        .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))?;
        (seqs, messages) = (s2, m2);
        let made = made?;
        let taken: Vec<(u32, u64)> = seqs.drain(..made.taken).collect();
        done.too_large
            .extend(made.too_large.iter().map(|&i| taken[i]));
        let progressed = made.block.is_some() || made.taken > 0;
        if let Some(b) = made.block {
            publish_block(js, ns, b.height, b.encoded.clone(), &inner.fence).await?;
            inner.published.fetch_max(b.height + 1, Ordering::SeqCst);
            let inner2 = inner.clone();
            let height = b.height;
            tokio::task::spawn_blocking(move || keep_block(&inner2, b))
                .await
                .map_err(|e| Error::Corrupted(format!("storing a block: {e}")))??;
            done.blocks.push(height);
        }
        if messages.is_empty() || !progressed {
            break;
        }
    }
    for &(partition, seq) in &done.too_large {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            partition,
            seq,
            capacity = budget.capacity,
            "firehose message too large for any block: refused (it is in no block, and auditors report it as omitted)"
        );
        if let Some(p) = pending
            .iter()
            .find(|p| (p.partition, p.seq) == (partition, seq))
        {
            let _ = p.message.ack_with(AckKind::Term).await;
        }
    }
    let Some(&height) = done.blocks.last() else {
        inner.handled(&disposed);
        return Ok(());
    };
    inner.blocks.send_replace(height + 1);
    // Durable: now the messages may go (acknowledging the last of a partition
    // acknowledges all of it before).
    let mut last_of: std::collections::BTreeMap<u32, &Pending> = Default::default();
    for p in &pending {
        if !done.too_large.contains(&(p.partition, p.seq)) {
            last_of.insert(p.partition, p);
        }
    }
    for p in last_of.values() {
        let _ = p.message.ack().await;
    }
    inner.handled(&disposed);
    tracing::debug!(height, messages = pending.len(), "block cut");
    Ok(())
}

/// One block made by [`cut_one`].
struct OneBlock {
    /// How many of the messages offered it took (`too_large` among them).
    taken: usize,
    /// Those too large for any block (their places among the taken).
    too_large: Vec<usize>,
    /// The block, unless it holds nothing: published, then kept ([`keep_block`]).
    block: Option<Made>,
}

/// A block laid out and signed, not yet stored.
struct Made {
    height: u64,
    encoded: Vec<u8>,
    verified: VerifiedHeader,
    signed_bytes: Vec<u8>,
    entries: Vec<blockpost_core::transaction::Entry>,
    last_seqs: Vec<u64>,
}

/// Stores and indexes a block made by [`cut_one`] (and published).
fn keep_block(inner: &Inner, b: Made) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (height, id) = (b.height, b.verified.id);
    if inner.store.len() != height {
        return Err(Error::Corrupted(format!(
            "block {height} was made on a store of {} blocks",
            inner.store.len()
        )));
    }
    inner.store.append(b.encoded, id, |size, root| {
        inner
            .signer
            .sign(size, root)
            .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
    })?;
    *inner.tip.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.verified);
    inner
        .last_seqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone_from(&b.last_seqs);
    let t1 = t0.elapsed();
    let book = inner.book.lock().unwrap_or_else(|e| e.into_inner());
    inner
        .index
        .commit(height, id, &b.signed_bytes, &b.entries, &book, &b.last_seqs)?;
    tracing::debug!(
        height,
        store_ms = t1.as_secs_f64() * 1e3,
        index_ms = (t0.elapsed() - t1).as_secs_f64() * 1e3,
        "block kept"
    );
    Ok(())
}

/// Lays out, signs, stores and indexes the next block: as many of `messages` as fit in
/// `budget` (taken from the front), with the records and closings the rules add. A block
/// larger than the budget's capacity is never stored.
fn cut_one(
    inner: &Inner,
    now: i64,
    messages: &mut std::collections::VecDeque<(Vec<u8>, TxMessage)>,
    budget: &BlockBudget,
    (directory_size, directory_root): (u64, [u8; 32]),
    seqs: &std::collections::VecDeque<(u32, u64)>,
) -> Result<OneBlock> {
    let tip = inner.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let height = inner.store.len();
    let time_ms = tip.as_ref().map_or(now, |t| now.max(t.header.time_ms));
    let t0 = std::time::Instant::now();
    let mut book = inner.book.lock().unwrap_or_else(|e| e.into_inner());
    let index = &inner.index;
    let records = inner.anchors.records_after(index.anchors_recorded()?)?;
    // An index that cannot be read aborts the cut (the book is reloaded), rather than
    // taking a closed transaction for an open one.
    let closed = ClosedLookup::new(index);
    let layout = lay_out_block_within(
        &mut book,
        height,
        time_ms,
        records,
        messages,
        |id| closed.closed(id),
        budget,
    );
    closed.finish()?;
    let mut made = OneBlock {
        taken: layout.taken,
        too_large: layout.too_large,
        block: None,
    };
    if layout.leaves.is_empty() {
        return Ok(made);
    }
    // One range per partition the block took from, in partition order (the messages
    // are sorted so).
    let mut ranges: Vec<PartitionRange> = Vec::new();
    let mut last_seqs = inner.last_seqs();
    for (_, &(partition, seq)) in seqs
        .iter()
        .take(made.taken)
        .enumerate()
        .filter(|(i, _)| !made.too_large.contains(i))
    {
        match ranges.last_mut() {
            Some(r) if r.partition == partition => r.last_seq = seq,
            _ => ranges.push(PartitionRange {
                partition,
                first_seq: seq,
                last_seq: seq,
            }),
        }
        if let Some(l) = last_seqs.get_mut(partition as usize) {
            *l = seq;
        }
    }
    let (leaves, entries) = (layout.leaves, layout.entries);
    let t1 = t0.elapsed();
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l)).collect();
    let header = BlockHeader {
        height,
        previous_hash: tip.as_ref().map_or_else(Vec::new, |t| t.id.to_vec()),
        merkle_root: merkle_root(&hashes).to_vec(),
        leaf_count: leaves.len() as u64,
        partitions: ranges,
        directory_size,
        directory_root: directory_root.to_vec(),
        time_ms,
        builder_key_id: builder_key_id(&inner.key.verifying_key()).to_vec(),
    };
    let signed = sign_header(&inner.key, &header);
    let id = blockpost_core::block::block_id(&signed.header);
    let verified = VerifiedHeader {
        header,
        bytes: signed.header.clone(),
        id,
    };
    let signed_bytes = signed.encode_to_vec();
    let encoded = Block {
        header: Some(signed),
        leaves,
    }
    .encode_to_vec();
    if encoded.len() > budget.capacity {
        // The layout keeps within the budget; should it ever not, nothing is stored (the
        // book is reloaded from the index) and the builder reports itself stalled.
        return Err(Error::Corrupted(format!(
            "block {height} would take {} bytes, more than the largest block ({}): not stored",
            encoded.len(),
            budget.capacity
        )));
    }
    tracing::debug!(
        height,
        bytes = encoded.len(),
        lay_out_ms = t1.as_secs_f64() * 1e3,
        hash_sign_ms = (t0.elapsed() - t1).as_secs_f64() * 1e3,
        "block made"
    );
    drop(book);
    made.block = Some(Made {
        height,
        encoded,
        verified,
        signed_bytes,
        entries,
        last_seqs,
    });
    Ok(made)
}
