//! The builder service.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use blockpost_core::block::{
    VerifiedHeader, builder_key_id, empty_root, merkle_root, sign_header, verify_block,
};
use blockpost_core::wire::{self, Namespace};
use blockpost_core::{
    CheckpointSigner, Clock, EnvelopeLimits, ParsedEnvelope, decode_canonical, leaf_hash,
};
use blockpost_messaging::Replica;
use blockpost_proto::v1::{Block, BlockHeader, Envelope, PartitionRange};
use blockpost_storage::{BlockStore, Head};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt as _;
use prost::Message as _;

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
    /// Firehose messages refused (not an envelope, breaks the rules, not signed by its
    /// sender): terminated, never put in a block.
    refused: std::sync::atomic::AtomicU64,
    /// Message id → (height, leaf index). Rebuilt from the store at open.
    index: std::sync::RwLock<HashMap<[u8; 32], (u64, u32)>>,
}

/// A firehose message waiting for its block.
struct Pending {
    seq: u64,
    payload: Vec<u8>,
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
        let vk = key.verifying_key();
        let signer = CheckpointSigner::new(&format!("{}/ledger", parts.origin), key.clone())
            .map_err(|e| Error::Config(e.to_string()))?;
        let dir = parts.dir;
        let (store, tip, index) = tokio::task::spawn_blocking(move || open_store(&dir, &vk))
            .await
            .map_err(|e| Error::Corrupted(format!("opening the store: {e}")))??;
        store.ensure_checkpoint(|size, root| {
            signer
                .sign(size, root)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
        })?;
        tracing::info!(
            blocks = store.len(),
            "block store opened and every block verified"
        );
        let inner = Arc::new(Inner {
            config,
            store,
            key,
            signer,
            tip: Mutex::new(tip),
            limits,
            replica,
            clock,
            refused: std::sync::atomic::AtomicU64::new(0),
            index: std::sync::RwLock::new(index),
        });
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

    /// The builder's public key (block headers and ledger checkpoints).
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.key.verifying_key()
    }

    /// The ledger checkpoints' verifier key (C2SP signed-note form).
    pub fn ledger_verifier_key(&self) -> String {
        self.inner.signer.verifier_key()
    }

    /// Where the message with `id` (SHA-256 of its envelope) is: height and leaf index.
    pub fn locate(&self, id: &[u8; 32]) -> Option<(u64, u32)> {
        self.inner
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }

    /// The ledger's origin line.
    pub fn origin(&self) -> &str {
        self.inner.signer.origin()
    }

    /// Firehose messages refused so far.
    pub fn refused(&self) -> u64 {
        self.inner
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

type Index = HashMap<[u8; 32], (u64, u32)>;

fn index_block(index: &mut Index, height: u64, v: &blockpost_core::block::VerifiedBlock) {
    for (i, (leaf, kind)) in v.leaves.iter().zip(&v.kinds).enumerate() {
        if matches!(kind, blockpost_core::block::Leaf::Message(_)) {
            index.insert(
                blockpost_core::block::block_id(leaf),
                (height, u32::try_from(i).unwrap_or(u32::MAX)),
            );
        }
    }
}

fn open_store(
    dir: &std::path::Path,
    key: &VerifyingKey,
) -> Result<(BlockStore, Option<VerifiedHeader>, Index)> {
    let mut tip: Option<VerifiedHeader> = None;
    let mut index = Index::new();
    let corrupted = |h: u64, e: String| {
        blockpost_storage::Error::Corrupted(format!(
            "block {h} does not verify ({e}); the store was left untouched"
        ))
    };
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
        |height, bytes| {
            let b = Block::decode(bytes).map_err(|e| corrupted(height, e.to_string()))?;
            let v = verify_block(&b, key).map_err(|e| corrupted(height, e.to_string()))?;
            if v.header.header.height != height {
                return Err(corrupted(
                    height,
                    format!("it says height {}", v.header.header.height),
                ));
            }
            if let Some(prev) = &tip {
                v.header
                    .check_follows(prev)
                    .map_err(|e| corrupted(height, e.to_string()))?;
            }
            index_block(&mut index, height, &v);
            tip = Some(v.header);
            Ok(())
        },
    )?;
    Ok((store, tip, index))
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
    /// The last firehose sequence in a block.
    fn last_seq(&self) -> u64 {
        self.tip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|t| t.header.partitions.first().map(|p| p.last_seq))
            .unwrap_or(0)
    }
}

/// Most firehose messages checked together (one batch signature verification).
const CHECK_BATCH: usize = 1024;

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
) -> Option<Vec<std::result::Result<(), String>>> {
    let mut verdicts: Vec<std::result::Result<(), String>> = Vec::with_capacity(group.len());
    let mut batch = Vec::new();
    let mut slots = Vec::new();
    for (i, (_, m)) in group.iter().enumerate() {
        let parsed = decode_canonical::<Envelope>(&m.payload, "envelope")
            .and_then(|env| ParsedEnvelope::parse(env, &inner.limits));
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                verdicts.push(Err(e.to_string()));
                continue;
            }
        };
        let index = parsed.content().sender_key_index;
        let waited_since = tokio::time::Instant::now();
        let key = loop {
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
        verdicts.push(Ok(()));
        slots.push(i);
        batch.push((parsed, key));
    }
    let results = tokio::task::spawn_blocking(move || blockpost_core::verify_batch(batch))
        .await
        .ok()?;
    for (slot, r) in slots.into_iter().zip(results) {
        if let Err(e) = r {
            verdicts[slot] = Err(e.to_string());
        }
    }
    Some(verdicts)
}

/// Follows the firehose. It holds the builder only while it works on a message or a
/// block, so that a dropped builder closes its store at once (its lock too).
async fn follow(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(e.to_string());
    let Some(inner) = weak.upgrade() else {
        return Ok(());
    };
    let (start, config) = (inner.last_seq() + 1, inner.config.clone());
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
                ack_policy: consumer::AckPolicy::Explicit,
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
    let mut messages = consumer.messages().await.map_err(|e| bus(&e))?;
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
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return Ok(()); // the builder was dropped
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                cut(&inner, js, ns, std::mem::take(&mut pending)).await?;
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
                .unwrap_or_else(|| inner.last_seq());
            if seq <= last {
                // Already in a block (redelivered after a restart) or already pending.
                if seq <= inner.last_seq() {
                    let _ = m.ack().await;
                }
                continue;
            }
            fresh.push((seq, m));
        }
        let Some(verdicts) = check_all(inner, &fresh).await else {
            return Ok(()); // the builder was dropped while waiting for the replica
        };
        for ((seq, m), verdict) in fresh.into_iter().zip(verdicts) {
            if let Err(why) = verdict {
                inner
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(seq, why, "firehose message refused by the builder");
                let _ = m.ack_with(AckKind::Term).await;
                continue;
            }
            let payload = m.payload.to_vec();
            // Cut before a message would take the block past its limits.
            if !pending.is_empty()
                && (pending.len() + 1 > inner.config.max_block_messages
                    || bytes + payload.len() > max_block_bytes)
            {
                cut(inner, js, ns, std::mem::take(&mut pending)).await?;
                bytes = 0;
                deadline = None;
            }
            bytes += payload.len();
            pending.push(Pending {
                seq,
                payload,
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
            cut(inner, js, ns, std::mem::take(&mut pending)).await?;
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

/// Cuts, stores and publishes one block, then acknowledges its messages.
async fn cut(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    pending: Vec<Pending>,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let leaves: Vec<Vec<u8>> = pending.iter().map(|p| p.payload.clone()).collect();
    let range = PartitionRange {
        partition: 0,
        first_seq: pending.first().map_or(0, |p| p.seq),
        last_seq: pending.last().map_or(0, |p| p.seq),
    };
    let (directory_size, directory_root) = inner
        .replica
        .checkpoint_in_force()
        .map_or((0, empty_root()), |cp| (cp.size, cp.root));
    let now = inner.clock.now_ms();
    let inner2 = inner.clone();
    let (height, encoded) = tokio::task::spawn_blocking(move || -> Result<(u64, Vec<u8>)> {
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let tip = inner2.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let height = inner2.store.len();
        let header = BlockHeader {
            height,
            previous_hash: tip.as_ref().map_or_else(Vec::new, |t| t.id.to_vec()),
            merkle_root: merkle_root(&hashes).to_vec(),
            leaf_count: leaves.len() as u64,
            partitions: vec![range],
            directory_size,
            directory_root: directory_root.to_vec(),
            time_ms: tip.as_ref().map_or(now, |t| now.max(t.header.time_ms)),
            builder_key_id: builder_key_id(&inner2.key.verifying_key()).to_vec(),
        };
        let signed = sign_header(&inner2.key, &header);
        let id = blockpost_core::block::block_id(&signed.header);
        let verified = VerifiedHeader {
            header,
            bytes: signed.header.clone(),
            id,
        };
        let block = Block {
            header: Some(signed),
            leaves,
        };
        let encoded = block.encode_to_vec();
        let ids: Vec<[u8; 32]> = block
            .leaves
            .iter()
            .map(|l| blockpost_core::block::block_id(l))
            .collect();
        inner2.store.append(encoded.clone(), id, |size, root| {
            inner2
                .signer
                .sign(size, root)
                .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
        })?;
        *inner2.tip.lock().unwrap_or_else(|e| e.into_inner()) = Some(verified);
        let mut index = inner2.index.write().unwrap_or_else(|e| e.into_inner());
        for (i, id) in ids.into_iter().enumerate() {
            index.insert(id, (height, u32::try_from(i).unwrap_or(u32::MAX)));
        }
        drop(index);
        Ok((height, encoded))
    })
    .await
    .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))??;
    // Durable: now the messages may go.
    for p in &pending {
        let _ = p.message.ack().await;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(wire::MSG_ID_HEADER, wire::block_msg_id(height).as_str());
    match js
        .publish_with_headers(ns.blocks_subject(), headers, encoded.into())
        .await
    {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(height, error = %e, "block not published on the blocks stream");
            }
        }
        Err(e) => tracing::warn!(height, error = %e, "block not published on the blocks stream"),
    }
    tracing::debug!(height, messages = pending.len(), "block cut");
    Ok(())
}
