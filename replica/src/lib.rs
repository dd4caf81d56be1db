//! A live replica of the directory, followed from its JetStream stream, so that every
//! envelope check is a memory look-up. Revocations reach it as fast as NATS delivers.
//!
//! The rules are core's one directory follower ([`DirectoryFollower::proving`]), which the
//! auditor runs too; this crate only reads the stream into it and serves look-ups. An
//! entry is followed only once it is proved, by the inclusion proof that comes with it, to
//! be in a checkpoint signed by the directory's log key (checkpoints come on the same
//! stream, before their entries), and then authorised by the core rules, in log order.
//! Anything else is logged and counted, never followed; the genuine entry at that index
//! still follows when it comes. Other bytes at an index already followed, proved in a
//! signed checkpoint, are a fork of the log: a conflict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_core::follow::{DirectoryFollower, EntryProof, Finding};
use blockpost_core::{Participant, VerifiedCheckpoint, wire};
use futures::StreamExt as _;
use tokio::sync::watch;

/// The replica.
pub struct Replica {
    /// Written by the follow task only, read by every look-up.
    follower: RwLock<DirectoryFollower>,
    /// Number of log entries applied.
    applied: watch::Sender<u64>,
    rejected: AtomicU64,
    conflicts: AtomicU64,
    /// Requests waiting for the replica to learn of a participant; beyond
    /// [`MAX_WAITERS`], a request is answered from what the replica knows now.
    waiters: tokio::sync::Semaphore,
    /// Bytes of requests held while they wait; beyond [`MAX_WAITING_BYTES`], [`Busy`].
    waiting_bytes: tokio::sync::Semaphore,
}

/// Most requests held at once waiting for the replica (each holds its request's bytes).
pub const MAX_WAITERS: usize = 1024;

/// Most bytes of requests held at once waiting for the replica: requests from senders the
/// replica does not know yet are unauthenticated, so what they may hold is bounded in
/// bytes, not only in number (1,024 envelopes of 6 MiB would be 6 GiB).
pub const MAX_WAITING_BYTES: usize = 64 << 20;

/// [`MAX_WAITERS`] requests are waiting for the replica already: try again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl Replica {
    /// Starts following the directory stream of namespace `ns`, trusting checkpoints signed
    /// by `verifier_key` (the log's, in signed-note form).
    pub fn start(js: jetstream::Context, ns: &wire::Namespace, verifier_key: String) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        let r = Arc::new(Self {
            follower: RwLock::new(DirectoryFollower::proving(verifier_key)),
            applied,
            rejected: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            waiters: tokio::sync::Semaphore::new(MAX_WAITERS),
            waiting_bytes: tokio::sync::Semaphore::new(MAX_WAITING_BYTES),
        });
        tokio::spawn(follow(r.clone(), js, ns.clone()));
        r
    }

    /// The newest checkpoint signed by the log key whose entries are all applied: the
    /// directory state this replica checks against.
    pub fn checkpoint_in_force(&self) -> Option<VerifiedCheckpoint> {
        self.read().in_force().cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, DirectoryFollower> {
        self.follower.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries followed so far (entries the rules refuse included: they bind nothing).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Entries read from the stream that did not decode or were not authorised.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Entries read from the stream at an index already applied, with other bytes: the
    /// stream holds two histories, and this replica cannot tell which is the directory's.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The participant, waiting up to `patience` for the replica to catch up with it (a
    /// registration or rotation may be a few milliseconds ahead of its NATS copy).
    ///
    /// With `at_index` (the log index of the participant's entry the caller relies on,
    /// such as an envelope's `sender_key_index`) it waits only while that index is not
    /// applied yet and the participant it knows is older; without it, only while the
    /// participant is unknown. At most [`MAX_WAITERS`] requests wait at once: beyond that
    /// the answer is [`Busy`] (retryable), so an unknown participant costs a look-up, never
    /// a held request, and a flood of them cannot turn a late replica into refusals.
    pub async fn participant(
        &self,
        address: &str,
        at_index: Option<u64>,
        patience: Duration,
    ) -> Result<Option<Participant>, Busy> {
        self.participant_holding(address, at_index, patience, 0)
            .await
    }

    /// [`Replica::participant`] for a request that holds `bytes` while it waits: at most
    /// [`MAX_WAITING_BYTES`] are held by waiting requests at once, beyond that the answer
    /// is [`Busy`].
    pub async fn participant_holding(
        &self,
        address: &str,
        at_index: Option<u64>,
        patience: Duration,
        bytes: usize,
    ) -> Result<Option<Participant>, Busy> {
        // `applied` is read before the state: the follower commits the state first.
        let settled = |applied: u64, p: &Option<Participant>| match at_index {
            Some(i) => i < applied || p.as_ref().is_some_and(|p| p.current >= i),
            None => p.is_some(),
        };
        let applied = self.applied();
        let now = self.get(address);
        if settled(applied, &now) {
            return Ok(now);
        }
        let Ok(_permit) = self.waiters.try_acquire() else {
            return Err(Busy);
        };
        let held = u32::try_from(bytes.min(MAX_WAITING_BYTES)).unwrap_or(u32::MAX);
        let Ok(_bytes) = self.waiting_bytes.try_acquire_many(held) else {
            return Err(Busy);
        };
        let mut rx = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let applied = self.applied();
            let p = self.get(address);
            if settled(applied, &p) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(self.get(address));
            }
        }
    }

    /// The participant as the replica knows it now.
    pub fn get(&self, address: &str) -> Option<Participant> {
        self.read().state().participant(address).cloned()
    }

    /// Waits until the replica has applied at least `n` entries.
    pub async fn wait_applied(&self, n: u64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|&a| a >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A checkpoint message.
    fn checkpoint(&self, note: &[u8]) {
        let found = self
            .follower
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint(note);
        if let Some(f) = found {
            self.found(f);
        }
    }

    /// Entry `index` with its proof. Only the follow task follows, so the follower cannot
    /// change between the check under the read lock (signatures, so look-ups are not held
    /// up) and the commit.
    fn entry(&self, index: u64, entry: &[u8], proof: Option<EntryProof>) {
        let checked = self.read().check(index, entry, proof.as_ref());
        let (followed, size) = {
            let mut f = self.follower.write().unwrap_or_else(|e| e.into_inner());
            let followed = f.commit(checked);
            (followed, f.size())
        };
        for f in followed.findings {
            self.found(f);
        }
        self.applied
            .send_if_modified(|a| std::mem::replace(a, size) != size);
    }

    /// Counts and logs what the follower found.
    fn found(&self, finding: Finding) {
        match finding {
            Finding::EntryConflict {
                index,
                proved: true,
                ..
            } => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    index,
                    "the log key signed two different entries at one index: a fork"
                );
            }
            Finding::Fork { first, .. } => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    size = first.size,
                    "the log key signed two checkpoints of one size: a fork"
                );
            }
            // Every entry followed is proved in a signed checkpoint: a signed root that
            // is not theirs means the key signed two trees that cannot both be the log.
            Finding::Inconsistent { checkpoint, .. } => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    size = checkpoint.size,
                    "a signed checkpoint is not the root of the proved entries: a fork"
                );
            }
            other => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(finding = ?Short(&other), "directory stream: refused by the replica");
            }
        }
    }
}

/// A finding without the bytes it carries, for the log.
struct Short<'a>(&'a Finding);

impl std::fmt::Debug for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Finding::CheckpointInvalid { error, .. } => write!(f, "checkpoint invalid: {error}"),
            Finding::EntryConflict { index, .. } => {
                write!(
                    f,
                    "other bytes at entry {index}, not in a signed checkpoint"
                )
            }
            Finding::Gap {
                first_missing,
                next_seen,
            } => write!(f, "entries {first_missing}..{next_seen} missing"),
            Finding::Unproved { index } => {
                write!(
                    f,
                    "entry {index} not proved in a checkpoint signed by the log key"
                )
            }
            Finding::Unauthorised { index, error, .. } => {
                write!(f, "entry {index} not authorised by the rules: {error}")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

async fn follow(replica: Arc<Replica>, js: jetstream::Context, ns: wire::Namespace) {
    let stream_name = ns.directory_stream();
    let entry_subject = ns.entry_subject();
    let checkpoint_subject = ns.checkpoint_subject();
    let mut next_seq = 1u64;
    loop {
        let result: Result<(), String> = async {
            let stream = js
                .get_stream(&stream_name)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: ns.directory_subjects(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: next_seq,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            // The ordered consumer notices a restarted server only after missed heartbeats
            // (tens of seconds): watch the connection and start over as soon as it returns.
            let client = js.client();
            let mut was_down = false;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                let m = tokio::select! {
                    m = messages.next() => m,
                    _ = tick.tick() => {
                        let up = client.connection_state() == async_nats::connection::State::Connected;
                        if !up {
                            was_down = true;
                        } else if was_down {
                            return Err("reconnected to NATS; following again".to_owned());
                        }
                        continue;
                    }
                };
                let Some(m) = m else { break };
                let m = m.map_err(|e| e.to_string())?;
                let header = |name: &str| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                if m.subject.as_str() == checkpoint_subject {
                    replica.checkpoint(&m.payload);
                } else if m.subject.as_str() == entry_subject {
                    let index = header(wire::LEAF_INDEX_HEADER).and_then(|v| v.parse::<u64>().ok());
                    let size = header(wire::TREE_SIZE_HEADER).and_then(|v| v.parse::<u64>().ok());
                    let proof = header(wire::PROOF_HEADER)
                        .and_then(|v| wire::decode_proof(&v))
                        .zip(size)
                        .map(|(hashes, tree_size)| EntryProof { tree_size, hashes });
                    match index {
                        Some(index) => replica.entry(index, &m.payload, proof),
                        None => {
                            replica.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("directory entry without a leaf index; skipped");
                        }
                    }
                }
                if let Ok(info) = m.info() {
                    next_seq = info.stream_sequence + 1;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "directory replica: retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
