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
use blockpost_core::transaction::{Book, TxMessage, lay_out_block, replay_block};
use blockpost_core::wire::{self, Namespace};
use blockpost_core::{
    CheckpointSigner, Clock, EnvelopeLimits, ParsedEnvelope, decode_canonical, leaf_hash,
};
use blockpost_messaging::Replica;
use blockpost_proto::v1::{Block, BlockHeader, Envelope, PartitionRange, TransactionStatus};
use blockpost_storage::{BlockStore, Head};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt as _;
use prost::Message as _;

use crate::anchor::Anchors;
use crate::index::Index;
use crate::{BuilderConfig, Error, Result};

/// Largest stored block, in bytes.
pub const MAX_BLOCK_LEN: usize = 64 << 20;

/// The durable consumer's name on the firehose.
const CONSUMER: &str = "builder";

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
    /// The last firehose sequence in a block.
    last_seq: AtomicU64,
    /// Anchors of the ledger root.
    pub(crate) anchors: Anchors,
    /// The newest ledger checkpoint witnesses cosigned, as the node collected it.
    witnessed: blockpost_storage::Witnessed,
    /// Fault injection for the auditor's tests ([`Builder::misbehave_by_omitting`]).
    omit: Mutex<Vec<String>>,
    /// The number of blocks, for those waiting for new ones.
    pub(crate) blocks: tokio::sync::watch::Sender<u64>,
}

/// A firehose message waiting for its block.
struct Pending {
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
        let anchor_config = config.anchor.clone();
        let timeout = config.transaction_timeout_ms;
        let (store, index, anchors) = tokio::task::spawn_blocking(move || {
            let (store, index) = open_store(&dir)?;
            fix_timeout(&dir, timeout)?;
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
            last_seq: AtomicU64::new(0),
            witnessed: Default::default(),
            omit: Mutex::new(Vec::new()),
        });
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
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Bus(format!("blocks stream: {e}")))?;
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
    pub fn gate(&self) -> Arc<dyn blockpost_messaging::TransactionGate> {
        Arc::new(Gate(Arc::downgrade(&self.inner)))
    }

    /// The ledger's origin line.
    pub fn origin(&self) -> &str {
        self.inner.signer.origin()
    }

    /// The last firehose sequence in a block.
    pub fn last_sequence(&self) -> u64 {
        self.inner.last_seq()
    }

    /// Firehose messages whose sender signature the builder checked itself, because they
    /// carried no valid tag of the node's gateway.
    pub fn signatures_checked(&self) -> u64 {
        self.inner.signatures_checked.load(Ordering::Relaxed)
    }

    /// Firehose messages refused (not an envelope, breaking the rules, or not signed by
    /// their sender): never put in a block.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

struct Gate(std::sync::Weak<Inner>);

impl blockpost_messaging::TransactionGate for Gate {
    fn refusal(&self, id: &str) -> Option<String> {
        let inner = self.0.upgrade()?;
        let s = match inner.index.transaction(id) {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(error = %e, "transaction index unreadable");
                return None;
            }
        };
        match s.status() {
            TransactionStatus::Finished => Some(format!("transaction {id} is finished")),
            TransactionStatus::TimedOut => Some(format!("transaction {id} is timed out")),
            _ if s.message_count as usize
                >= blockpost_core::transaction::MAX_TRANSACTION_MESSAGES =>
            {
                Some(format!(
                    "transaction {id} holds {} messages, the most a transaction may",
                    s.message_count
                ))
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

/// The transaction timeout is a rule of the ledger, not a setting: every replay of the
/// blocks depends on it. It is recorded at the first start (`DATA/ledger/rules.json`) and
/// a different one in the config is refused.
fn fix_timeout(dir: &std::path::Path, timeout_ms: u64) -> Result<()> {
    let path = dir.join("rules.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let fixed = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["transaction_timeout_ms"].as_u64())
                .ok_or_else(|| {
                    Error::Corrupted(format!("{} is damaged: {text:?}", path.display()))
                })?;
            if fixed != timeout_ms {
                return Err(Error::Config(format!(
                    "builder.transaction_timeout_ms is {timeout_ms}, but this ledger was started with {fixed} ({}): it cannot change, since every replay of the blocks depends on it",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::json!({ "transaction_timeout_ms": timeout_ms }).to_string();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
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
    let mut last_seq = head.last_seq;
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
        if let Some(p) = v.header.header.partitions.first() {
            last_seq = p.last_seq;
        }
        index.commit(h, v.header.id, &signed, &entries, &book, last_seq)?;
        tip = Some(v.header);
    }
    *inner.tip.lock().unwrap_or_else(|e| e.into_inner()) = tip;
    *inner.book.lock().unwrap_or_else(|e| e.into_inner()) = book;
    inner.last_seq.store(last_seq, Ordering::SeqCst);
    Ok(())
}

/// Follows the firehose until the builder is dropped, starting over after NATS errors.
async fn run(inner: std::sync::Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        match follow(&inner, &js, &ns).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "builder: following the firehose again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Inner {
    fn misbehaves_on(&self, transaction_id: &str) -> bool {
        let omit = self.omit.lock().unwrap_or_else(|e| e.into_inner());
        !omit.is_empty() && omit.iter().any(|t| t == transaction_id)
    }

    /// The last firehose sequence in a block.
    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
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

/// Fewest signatures worth a thread of their own.
const VERIFY_CHUNK_MIN: usize = 64;

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
    group: &[(u64, jetstream::Message)],
) -> Option<Vec<std::result::Result<TxMessage, String>>> {
    let mut verdicts: Vec<std::result::Result<TxMessage, String>> = Vec::with_capacity(group.len());
    // Senders repeat within a group: ask the replica once per (sender, key index).
    let mut keys: std::collections::HashMap<(String, u64), ed25519_dalek::VerifyingKey> =
        std::collections::HashMap::new();
    let mut batch = Vec::new();
    let mut slots = Vec::new();
    for (i, (_, m)) in group.iter().enumerate() {
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
    // Split over the cores: one batch verification per thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = batch.len().div_ceil(threads).max(VERIFY_CHUNK_MIN);
    let mut chunks = Vec::new();
    let mut rest = batch.into_iter();
    loop {
        let chunk: Vec<_> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(tokio::task::spawn_blocking(move || {
            blockpost_core::verify_batch(chunk)
        }));
    }
    let mut results = Vec::with_capacity(slots.len());
    for c in chunks {
        results.extend(c.await.ok()?);
    }
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
        Ok(m) => Block::decode(m.payload.as_ref())
            .ok()
            .and_then(|b| b.header)
            .and_then(|h| BlockHeader::decode(h.header.as_slice()).ok())
            .map_or(0, |h| h.height + 1),
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
        publish_block(js, ns, h, inner.store.block(h)?).await?;
    }
    Ok(())
}

/// Publishes block `height` on the blocks stream (de-duplicated by height).
async fn publish_block(
    js: &jetstream::Context,
    ns: &Namespace,
    height: u64,
    encoded: Vec<u8>,
) -> Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(wire::MSG_ID_HEADER, wire::block_msg_id(height).as_str());
    js.publish_with_headers(ns.blocks_subject(), headers, encoded.into())
        .await
        .map_err(|e| Error::Bus(format!("publishing block {height}: {e}")))?
        .await
        .map_err(|e| Error::Bus(format!("publishing block {height}: {e}")))?;
    Ok(())
}

/// The block being cut, stored and published while the next one fills: at most one at a
/// time, in order.
#[derive(Default)]
struct Cutter {
    flight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// The last firehose sequence handed to a cut.
    through: u64,
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

    /// Waits for the block in flight, then starts cutting `pending`.
    async fn start(
        &mut self,
        inner: &Arc<Inner>,
        js: &jetstream::Context,
        ns: &Namespace,
        pending: Vec<Pending>,
    ) -> Result<()> {
        self.finish().await?;
        if let Some(p) = pending.last() {
            self.through = p.seq;
        }
        let (inner, js, ns) = (inner.clone(), js.clone(), ns.clone());
        self.flight = Some(tokio::spawn(
            async move { cut(&inner, &js, &ns, pending).await },
        ));
        Ok(())
    }
}

/// Follows the firehose. It holds the builder only while it works on a message or a
/// block, so that a dropped builder closes its store at once (its lock too).
async fn follow(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let mut cutter = Cutter::default();
    let r = follow_with(weak, js, ns, &mut cutter).await;
    // Never start over (catch_up) while a block is being cut.
    let last = cutter.finish().await;
    r.and(last)
}

async fn follow_with(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    cutter: &mut Cutter,
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
    republish(&inner, js, ns).await?;
    let (start, config) = (inner.last_seq() + 1, inner.config.clone());
    cutter.through = inner.last_seq();
    drop(inner);
    let stream = js
        .get_stream(ns.firehose_stream())
        .await
        .map_err(|e| bus(&e))?;
    // The store, not the consumer, says where the builder stands: start a fresh consumer
    // right after the last block, so that messages a previous run had been handed (and
    // never acknowledged, say before a kill -9) come again at once, not after the ack wait.
    match stream.delete_consumer(CONSUMER).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => return Err(bus(&e)),
    }
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: ns.firehose_subject(),
                // One acknowledgement per block, of its last message: it covers every
                // message before it (in this block or an earlier one, or refused).
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
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await
        .map_err(|e| bus(&e))?;
    let delay = Duration::from_millis(config.max_block_delay_ms);
    // Every block is published whole: keep it under the server's max_payload.
    let max_block_bytes = config.max_block_bytes.min(
        js.client()
            .server_info()
            .max_payload
            .saturating_sub(64 * 1024)
            .max(1),
    );
    let mut pending: Vec<Pending> = Vec::new();
    let mut bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
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
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(bus(&e)),
            None => return Err(Error::Bus("the firehose consumer ended".into())),
        };
        // Take what else has arrived, to check signatures in batches.
        let mut group = vec![first];
        while group.len() < CHECK_BATCH {
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(Some(Ok(m))) => group.push(m),
                Some(Some(Err(e))) => return Err(bus(&e)),
                _ => break,
            }
        }
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        let inner = &inner;
        let mut fresh = Vec::with_capacity(group.len());
        for m in group {
            let seq = m.info().map_err(|e| bus(&e))?.stream_sequence;
            let last = fresh
                .last()
                .map(|(s, _)| *s)
                .or_else(|| pending.last().map(|p| p.seq))
                .unwrap_or_else(|| inner.last_seq().max(cutter.through));
            if seq <= last {
                // Already in a block (redelivered after a restart), being cut, or pending.
                if seq <= inner.last_seq() {
                    let _ = m.ack().await;
                }
                continue;
            }
            fresh.push((seq, m));
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
        for ((seq, m), verdict) in fresh.into_iter().zip(verdicts) {
            let tx = match verdict {
                Ok(tx) => tx,
                Err(why) => {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(seq, why, "firehose message refused by the builder");
                    let _ = m.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            if inner.misbehaves_on(&tx.transaction_id) {
                let _ = m.ack_with(AckKind::Term).await;
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
            pending.push(Pending {
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

/// Cuts, stores, indexes and publishes one block of `pending` messages and the closing
/// records the transaction rules put with them (a block may hold only closings: a
/// transaction timed out while no message came), then acknowledges the messages.
async fn cut(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    pending: Vec<Pending>,
) -> Result<()> {
    let now = inner.clock.now_ms();
    if pending.is_empty() && !inner.due(now) {
        return Ok(());
    }
    let messages: Vec<(Vec<u8>, TxMessage)> = pending
        .iter()
        .map(|p| (p.payload.clone(), p.tx.clone()))
        .collect();
    let range = (!pending.is_empty()).then(|| PartitionRange {
        partition: 0,
        first_seq: pending.first().map_or(0, |p| p.seq),
        last_seq: pending.last().map_or(0, |p| p.seq),
    });
    let (directory_size, directory_root) = inner
        .replica
        .checkpoint_in_force()
        .map_or((0, empty_root()), |cp| (cp.size, cp.root));
    let inner2 = inner.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<Option<(u64, Vec<u8>)>> {
        let tip = inner2.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let height = inner2.store.len();
        let time_ms = tip.as_ref().map_or(now, |t| now.max(t.header.time_ms));
        let t0 = std::time::Instant::now();
        let mut book = inner2.book.lock().unwrap_or_else(|e| e.into_inner());
        let index = &inner2.index;
        let records = inner2.anchors.records_after(index.anchors_recorded()?)?;
        // An index that cannot be read aborts the cut (the book is reloaded), rather than
        // taking a closed transaction for an open one.
        let closed = ClosedLookup::new(index);
        let (leaves, entries) =
            lay_out_block(&mut book, height, time_ms, records, messages, |id| {
                closed.closed(id)
            });
        closed.finish()?;
        if leaves.is_empty() {
            return Ok(None);
        }
        let t1 = t0.elapsed();
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let header = BlockHeader {
            height,
            previous_hash: tip.as_ref().map_or_else(Vec::new, |t| t.id.to_vec()),
            merkle_root: merkle_root(&hashes).to_vec(),
            leaf_count: leaves.len() as u64,
            partitions: range.into_iter().collect(),
            directory_size,
            directory_root: directory_root.to_vec(),
            time_ms,
            builder_key_id: builder_key_id(&inner2.key.verifying_key()).to_vec(),
        };
        let last_seq = header
            .partitions
            .first()
            .map_or_else(|| inner2.last_seq(), |p| p.last_seq);
        let signed = sign_header(&inner2.key, &header);
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
        let t2 = t0.elapsed();
        inner2.store.append(encoded.clone(), id, |size, root| {
            inner2
                .signer
                .sign(size, root)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
        })?;
        *inner2.tip.lock().unwrap_or_else(|e| e.into_inner()) = Some(verified);
        inner2.last_seq.store(last_seq, Ordering::SeqCst);
        let t3 = t0.elapsed();
        index.commit(height, id, &signed_bytes, &entries, &book, last_seq)?;
        tracing::debug!(
            height,
            lay_out_ms = t1.as_secs_f64() * 1e3,
            hash_sign_ms = (t2 - t1).as_secs_f64() * 1e3,
            store_ms = (t3 - t2).as_secs_f64() * 1e3,
            index_ms = (t0.elapsed() - t3).as_secs_f64() * 1e3,
            "block timings"
        );
        Ok(Some((height, encoded)))
    })
    .await
    .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))??;
    let Some((height, encoded)) = done else {
        return Ok(());
    };
    inner.blocks.send_replace(height + 1);
    // Durable: now the messages may go (acknowledging the last acknowledges all).
    if let Some(p) = pending.last() {
        let _ = p.message.ack().await;
    }
    tracing::debug!(height, messages = pending.len(), "block cut");
    // The block is durable and acknowledged; if NATS does not take it now, start over:
    // `republish` sends it (and any after it) once NATS is back.
    publish_block(js, ns, height, encoded).await
}
