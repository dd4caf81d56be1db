//! The gateway's logic: check an envelope with the core rules and against the directory
//! replica, publish it to the firehose and a pointer to it to each recipient's inbox, and
//! sign a receipt.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use blockpost_core::{
    Clock, EnvelopeLimits, ParsedEnvelope, VerifiedEnvelope, check_clock, deadline_ms, settle,
    settle_expect, wire,
};
use blockpost_proto::v1::{Envelope, GatewayInfo, Receipt, ReceiptBody};
use ed25519_dalek::SigningKey;

use crate::config::MessagingConfig;
use crate::error::{bus, publish_failed};
use crate::receipts::{ReceiptSigner, SignerCounts};
use crate::verify::BatchVerifier;
use crate::{BusError, Error, Result};
use blockpost_core::transaction::TransactionGate;
use blockpost_replica::Replica;

/// How long a check waits for the replica to learn of a participant it does not know yet
/// (a registration may be a few milliseconds ahead of its NATS copy).
const REPLICA_PATIENCE: Duration = Duration::from_millis(500);

fn replica_busy() -> Error {
    BusError::ReplicaBusy {
        waiters: blockpost_replica::MAX_WAITERS,
        mib: blockpost_replica::MAX_WAITING_BYTES >> 20,
    }
    .into()
}

/// A running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) js: jetstream::Context,
    nats: async_nats::Client,
    pub(crate) replica: Arc<Replica>,
    pub(crate) config: MessagingConfig,
    /// The streams and subjects of the directory log this gateway serves.
    pub(crate) ns: wire::Namespace,
    /// Its firehose's partitions.
    pub(crate) firehose: wire::Firehose,
    pub(crate) limits: EnvelopeLimits,
    /// Largest envelope NATS takes in one message (its `max_payload`, less room for headers).
    pub(crate) max_envelope: usize,
    clock: Arc<dyn Clock>,
    verifier: BatchVerifier,
    key: SigningKey,
    /// Signs receipts per batch.
    signer: ReceiptSigner,
    /// Receipts and the signatures made for them.
    signed: Arc<SignerCounts>,
    /// Time spent by stage ([`Gateway::stage_times`]).
    stages: Stages,
    /// Tags each firehose envelope for the node's builder.
    mac: wire::FirehoseMac,
    /// One inbox session per address on this gateway, so that a new reader starts only
    /// after the previous one has handed back what it did not acknowledge (order per sender).
    pub(crate) sessions:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Inbox messages dropped because they did not verify.
    pub(crate) refused_deliveries: std::sync::atomic::AtomicU64,
    /// Submissions answered UNAVAILABLE because of the bus ([`Gateway::bus_refusals`]).
    bus_refusals: std::sync::atomic::AtomicU64,
    /// Asked whether a transaction is closed.
    gate: std::sync::OnceLock<Arc<dyn TransactionGate>>,
    /// Whether the NATS connection is up, as last seen ([`watch_bus`]).
    bus_up: tokio::sync::watch::Sender<bool>,
    /// The connection firehose followers read on ([`Gateway::follow_on`]).
    pub(crate) followers_nats: std::sync::OnceLock<jetstream::Context>,
    /// Firehose followers served now, in all and per peer.
    pub(crate) followers: std::sync::Mutex<Followers>,
    /// Bytes of envelopes being checked and stored ([`MessagingConfig::max_inflight_bytes`]).
    inflight: tokio::sync::Semaphore,
}

/// Where submissions' time goes: nanoseconds spent in each stage, by all submissions
/// together (wall time, so stages of concurrent submissions overlap).
#[derive(Debug, Default)]
struct Stages {
    /// Parsing, the clock, the directory replica, the signature check (batched).
    check: std::sync::atomic::AtomicU64,
    /// Publishing to the firehose until JetStream acknowledged it.
    firehose: std::sync::atomic::AtomicU64,
    /// The recipients' inbox entries until acknowledged.
    inboxes: std::sync::atomic::AtomicU64,
    /// Waiting for the receipt's batch to be signed.
    receipt: std::sync::atomic::AtomicU64,
}

fn spent(stage: &std::sync::atomic::AtomicU64, since: std::time::Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    stage.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
}

/// How often the gateway looks at its NATS connection's state.
const BUS_POLL: Duration = Duration::from_millis(50);

/// Keeps `bus_up` current while the gateway lives.
async fn watch_bus(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(BUS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let up = inner.nats.connection_state() == async_nats::connection::State::Connected;
        inner
            .bus_up
            .send_if_modified(|was| std::mem::replace(was, up) != up);
    }
}

impl Gateway {
    /// Makes sure the streams of namespace `ns` (the directory log's) exist; checks
    /// senders and recipients against `replica` (the node's, which the builder shares).
    /// `key` signs receipts.
    pub async fn start(
        config: MessagingConfig,
        key: SigningKey,
        ns: wire::Namespace,
        replica: Arc<Replica>,
        clock: Arc<dyn Clock>,
        nats: async_nats::Client,
    ) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        // It must fit in a firehose message, and in a block with the records it may bring:
        // a receipt must never promise a block that cannot be cut.
        let max_envelope = wire::max_envelope_len(nats.server_info().max_payload);
        let mut js = jetstream::new(nats.clone());
        js.set_timeout(Duration::from_secs(10));
        let window = Duration::from_millis(config.max_clock_skew_ms.saturating_mul(2));
        // Every firehose partition and the inbox stream: files, the log's description, the
        // node's replicas, nonce de-duplication over the window.
        let firehose = ns.firehose(config.firehose_partitions);
        let mut streams: Vec<(String, String)> = firehose
            .all()
            .map(|k| (firehose.stream(k), firehose.subject(k)))
            .collect();
        streams.push((ns.inbox_stream(), ns.inbox_subjects()));
        for (name, subject) in streams {
            js.get_or_create_stream(stream::Config {
                name,
                description: Some(ns.description()),
                subjects: vec![subject],
                storage: stream::StorageType::File,
                duplicate_window: window,
                num_replicas: config.replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(bus)?;
        }
        let inflight = config.max_inflight_bytes.min(u32::MAX as usize);
        let signed = Arc::new(SignerCounts::default());
        let signer = ReceiptSigner::start(
            key.clone(),
            config.receipt_batch_max,
            Duration::from_millis(config.receipt_batch_ms),
            signed.clone(),
        );
        let inner = Arc::new(Inner {
            js,
            nats,
            replica,
            limits: config.limits(),
            ns,
            firehose,
            max_envelope,
            config,
            clock,
            verifier: BatchVerifier::start(),
            signer,
            signed,
            stages: Stages::default(),
            mac: wire::FirehoseMac::derive(&key),
            key,
            sessions: Default::default(),
            refused_deliveries: Default::default(),
            bus_refusals: Default::default(),
            gate: Default::default(),
            bus_up: tokio::sync::watch::Sender::new(true),
            followers_nats: Default::default(),
            followers: Default::default(),
            inflight: tokio::sync::Semaphore::new(inflight),
        });
        tokio::spawn(watch_bus(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The receipt key and the promised delay.
    pub fn info(&self) -> GatewayInfo {
        GatewayInfo {
            receipt_key: self.inner.key.verifying_key().to_bytes().to_vec(),
            max_block_delay_ms: self.inner.config.max_block_delay_ms,
            firehose_partitions: self.inner.firehose.partitions(),
        }
    }

    /// Inbox messages read from NATS and dropped because they did not verify.
    pub fn refused_deliveries(&self) -> u64 {
        self.inner
            .refused_deliveries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The directory replica.
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// Serve firehose followers from their own connection to NATS (set once), so that no
    /// public reader can slow the gateway's own traffic or get its connection cut as a slow
    /// consumer. Without it they read on the gateway's connection.
    pub fn follow_on(&self, nats: async_nats::Client) {
        let _ = self.inner.followers_nats.set(jetstream::new(nats));
    }

    /// Firehose streams served now, and those dropped so far because they read too
    /// slowly.
    pub fn followers(&self) -> (usize, u64) {
        let f = self
            .inner
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (f.total, f.dropped)
    }

    /// Refuse messages for the transactions `gate` says are closed (set once).
    pub fn set_transaction_gate(&self, gate: Arc<dyn TransactionGate>) {
        let _ = self.inner.gate.set(gate);
    }

    /// The key of the tags this gateway puts on the firehose, for the node's builder.
    pub fn firehose_mac(&self) -> wire::FirehoseMac {
        self.inner.mac.clone()
    }

    /// The directory replica, to share with another service of the node (the builder).
    pub fn shared_replica(&self) -> Arc<Replica> {
        self.inner.replica.clone()
    }

    /// Checks, routes and receipts one envelope. Returns only after JetStream stored it
    /// in the firehose and in every recipient's inbox.
    ///
    /// Once the connection to NATS is known to be gone, it answers at once (UNAVAILABLE)
    /// rather than after the publish timeout: a retry of the same envelope is safe, since
    /// the firehose de-duplicates it and answers with the same receipt.
    pub async fn submit(&self, env: Envelope) -> Result<Receipt> {
        let r = self.submit_inner(env).await;
        if matches!(r, Err(Error::Bus(_))) {
            self.inner
                .bus_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Time spent so far by all submissions in each stage: checks (parsing, clock,
    /// directory, signature), the firehose publish until acknowledged, the inbox entries
    /// until acknowledged, the receipt's signing. Wall time: concurrent submissions overlap.
    pub fn stage_times(&self) -> [(&'static str, Duration); 4] {
        let t = |a: &std::sync::atomic::AtomicU64| {
            Duration::from_nanos(a.load(std::sync::atomic::Ordering::Relaxed))
        };
        let s = &self.inner.stages;
        [
            ("check", t(&s.check)),
            ("firehose", t(&s.firehose)),
            ("inboxes", t(&s.inboxes)),
            ("receipt", t(&s.receipt)),
        ]
    }

    /// Receipts signed so far, and the signatures made for them (fewer when receipts
    /// share a batch's signature).
    pub fn receipt_signatures(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.signed;
        (c.receipts.load(Relaxed), c.signatures.load(Relaxed))
    }

    /// Submissions answered UNAVAILABLE because of the bus (NATS away, or too much in
    /// flight): each may be sent again as it was.
    pub fn bus_refusals(&self) -> u64 {
        self.inner
            .bus_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn submit_inner(&self, env: Envelope) -> Result<Receipt> {
        // An envelope NATS cannot carry is refused for good, before anything else.
        let len = prost::Message::encoded_len(&env);
        if len > self.inner.max_envelope {
            return Err(blockpost_core::Error::TooLarge {
                field: "envelope (what one block on this node's message bus carries, with its worst-case records)",
                len,
                limit: self.inner.max_envelope,
            }
            .into());
        }
        // Bytes held while it is checked and stored (the envelope and its decoded content:
        // twice its length): bounded for all callers together, and refused at once beyond,
        // so that a flood of large envelopes (from anyone: the sender is not known yet)
        // cannot pile up.
        let held = len.saturating_mul(2);
        let permits =
            u32::try_from(held.clamp(1, self.inner.config.max_inflight_bytes)).unwrap_or(u32::MAX);
        let Ok(_held) = self.inner.inflight.try_acquire_many(permits) else {
            return Err(BusError::Overloaded(self.inner.config.max_inflight_bytes >> 20).into());
        };
        let mut up = self.inner.bus_up.subscribe();
        let work = async {
            let t = std::time::Instant::now();
            let c = self.check(env, held).await;
            spent(&self.inner.stages.check, t);
            self.publish(c?).await
        };
        tokio::select! {
            biased;
            r = work => r,
            _ = up.wait_for(|up| !*up) => Err(BusError::Lost.into()),
        }
    }

    /// The core rules first (cheap, stateless), then the clock, then the directory.
    /// `held`: the bytes this request holds while it waits for the replica.
    async fn check(&self, env: Envelope, held: usize) -> Result<VerifiedEnvelope> {
        let p = ParsedEnvelope::parse(env, &self.inner.limits)?;
        if self.inner.nats.connection_state() != async_nats::connection::State::Connected {
            // Answer at once, retryable, instead of holding the request for the publish
            // timeout while the bus is away (the managed server is restarted within a second).
            return Err(BusError::Disconnected.into());
        }
        if self.inner.replica.conflicts() > 0 {
            // Safety over liveness: a replica that saw two histories may hold a stale key.
            return Err(BusError::ReplicaConflict.into());
        }
        let c = p.content();
        if let Some(gate) = self.inner.gate.get() {
            if let Some(why) = gate.unavailable() {
                return Err(Error::Stalled(why));
            }
            if let Some(closed) = gate.refusal(&c.transaction_id) {
                return Err(Error::TransactionClosed(closed));
            }
        }
        check_clock(
            c.timestamp_ms,
            self.inner.clock.now_ms(),
            self.inner.config.max_clock_skew_ms,
        )?;
        let replica = &self.inner.replica;
        let sender = p.sender();
        let s = replica
            .participant_holding(
                sender.as_str(),
                Some(c.sender_key_index),
                REPLICA_PATIENCE,
                held,
            )
            .await
            .map_err(|_| replica_busy())?
            .ok_or_else(|| Error::UnknownSender(sender.to_string()))?;
        if s.revoked() {
            return Err(Error::Revoked {
                role: "sender",
                address: sender.to_string(),
            });
        }
        if s.current != c.sender_key_index {
            return Err(Error::StaleKey {
                role: "sender",
                address: sender.to_string(),
                named: c.sender_key_index,
                current: s.current,
            });
        }
        let mut parties = Vec::new();
        for r in p.recipients() {
            let rp = replica
                .participant_holding(
                    r.as_str(),
                    p.recipient_key_index(r.as_str()),
                    REPLICA_PATIENCE,
                    held,
                )
                .await
                .map_err(|_| replica_busy())?
                .ok_or_else(|| Error::UnknownRecipient(r.to_string()))?;
            if rp.revoked() {
                return Err(Error::Revoked {
                    role: "recipient",
                    address: r.to_string(),
                });
            }
            if let Some(named) = p.recipient_key_index(r.as_str())
                && named != rp.current
            {
                return Err(Error::StaleKey {
                    role: "recipient",
                    address: r.to_string(),
                    named,
                    current: rp.current,
                });
            }
            if p.settlement().is_some() {
                parties.push(rp);
            }
        }
        if let (Some(settlement), Some((_, kind))) = (p.settlement(), settle_expect(p.kind())) {
            settle::check_bindings(settlement, &s.binding, parties.iter().map(|x| &x.binding))
                .map_err(|error| Error::Parties {
                    kind,
                    error: Box::new(error),
                })?;
        }
        self.inner.verifier.verify(p, s.signing_key).await
    }

    async fn publish(&self, v: VerifiedEnvelope) -> Result<Receipt> {
        let js = &self.inner.js;
        let id = v.id();
        let id_hex = hex::encode(id);
        let bytes = v.encode();
        let sender = v.sender();
        let nonce = v.content().nonce;
        let mut h = HeaderMap::new();
        // The firehose de-duplicates on (sender, nonce): a nonce is accepted once, by any
        // gateway, also after restarts, within the window; the clock-skew bound covers the
        // time beyond it.
        h.insert(
            wire::MSG_ID_HEADER,
            wire::nonce_msg_id(sender, nonce).as_str(),
        );
        h.insert(wire::MESSAGE_ID_HEADER, id_hex.as_str());
        h.insert(
            wire::GATEWAY_MAC_HEADER,
            self.inner.mac.tag(&bytes).as_str(),
        );
        let partition = self.inner.firehose.partition_of(sender);
        let t = std::time::Instant::now();
        let ack = js
            .publish_with_headers(
                self.inner.firehose.subject(partition),
                h,
                bytes.clone().into(),
            )
            .await
            .map_err(publish_failed)?
            .await
            .map_err(publish_failed)?;
        if ack.duplicate {
            // The same envelope again (a retry) is fine; another one with that nonce is a replay.
            let stream = js
                .get_stream(self.inner.firehose.stream(partition))
                .await
                .map_err(bus)?;
            let original = stream.get_raw_message(ack.sequence).await.map_err(bus)?;
            if original.payload.as_ref() != bytes.as_slice() {
                return Err(Error::Replay {
                    sender: sender.to_string(),
                    nonce,
                });
            }
        }
        spent(&self.inner.stages.firehose, t);
        let t = std::time::Instant::now();
        let mut acks = Vec::with_capacity(v.recipients().len());
        for r in v.recipients() {
            let mut h = HeaderMap::new();
            h.insert(wire::MSG_ID_HEADER, wire::inbox_msg_id(&id_hex, r).as_str());
            h.insert(wire::MESSAGE_ID_HEADER, id_hex.as_str());
            h.insert(wire::FIREHOSE_SEQ_HEADER, ack.sequence.to_string().as_str());
            if partition != 0 {
                h.insert(
                    wire::FIREHOSE_PARTITION_HEADER,
                    partition.to_string().as_str(),
                );
            }
            // The entry points at the firehose message (its sequence and id) and carries
            // no copy of it: the gateway that delivers it reads the envelope there.
            acks.push(
                js.publish_with_headers(self.inner.ns.inbox_subject(r), h, Default::default())
                    .await
                    .map_err(publish_failed)?,
            );
        }
        for a in acks {
            a.await.map_err(publish_failed)?;
        }
        spent(&self.inner.stages.inboxes, t);
        let accepted = self.inner.clock.now_ms();
        let body = ReceiptBody {
            message_id: id.to_vec(),
            accepted_at_ms: accepted,
            firehose_sequence: ack.sequence,
            block_deadline_ms: deadline_ms(accepted, self.inner.config.max_block_delay_ms),
            gateway_key: self.inner.key.verifying_key().to_bytes().to_vec(),
            firehose_partition: partition,
        };
        let t = std::time::Instant::now();
        let receipt = if self.inner.config.receipt_batch_max == 1 {
            // No batches: signed here, alone, as gateways did before receipt batches.
            let r = blockpost_core::sign_receipt(&self.inner.key, &body);
            self.inner.signed.count(1);
            Ok(r)
        } else {
            self.inner.signer.sign(body).await
        };
        spent(&self.inner.stages.receipt, t);
        receipt
    }
}

/// Firehose followers served now.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    /// In all.
    pub(crate) total: usize,
    /// Per peer.
    pub(crate) per_peer: std::collections::HashMap<std::net::IpAddr, usize>,
    /// Dropped so far for reading too slowly.
    pub(crate) dropped: u64,
}
