//! A live replica of the directory, followed from its JetStream stream, so that every
//! envelope check is a memory look-up. Revocations reach it as fast as NATS delivers.
//!
//! The replica is a [`DirectoryState`]. An entry is applied only once it is proved, by the
//! inclusion proof that comes with it, to be in a checkpoint signed by the directory's log
//! key (checkpoints come on the same stream, before their entries), and then authorised by
//! the core rules, in log order. Anything else is logged and counted, never applied; the
//! genuine entry at that index still applies when it comes. Other bytes at an index already
//! applied, proved in a signed checkpoint, are a fork of the log: a conflict.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_core::{DirectoryState, Participant, VerifiedCheckpoint, verify_checkpoint, wire};
use futures::StreamExt as _;
use tokio::sync::watch;

/// The replica.
pub struct Replica {
    state: RwLock<Applied>,
    /// Number of log entries applied.
    applied: watch::Sender<u64>,
    rejected: AtomicU64,
    conflicts: AtomicU64,
    /// The directory's checkpoint verifier key (C2SP signed-note form).
    verifier_key: String,
    /// Verified checkpoints not yet fully applied, by size.
    checkpoints: Mutex<BTreeMap<u64, VerifiedCheckpoint>>,
    /// Requests waiting for the replica to learn of a participant; beyond
    /// [`MAX_WAITERS`], a request is answered from what the replica knows now.
    waiters: tokio::sync::Semaphore,
    /// Bytes of requests held while they wait; beyond [`MAX_WAITING_BYTES`], [`Busy`].
    waiting_bytes: tokio::sync::Semaphore,
    /// The newest signed checkpoint whose every entry is applied.
    in_force: Mutex<Option<VerifiedCheckpoint>>,
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

/// Most verified checkpoints kept while their entries arrive.
const MAX_PENDING_CHECKPOINTS: usize = 1024;

/// The state and the leaf hash of every entry applied, to tell a redelivery from a
/// different entry at an index already applied.
#[derive(Default)]
struct Applied {
    state: DirectoryState,
    leaves: Vec<[u8; 32]>,
}

impl Replica {
    /// Starts following the directory stream of namespace `ns`, trusting checkpoints signed
    /// by `verifier_key` (the log's, in signed-note form).
    pub fn start(js: jetstream::Context, ns: &wire::Namespace, verifier_key: String) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        let r = Arc::new(Self {
            state: RwLock::new(Applied::default()),
            applied,
            rejected: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            verifier_key,
            checkpoints: Mutex::new(BTreeMap::new()),
            waiters: tokio::sync::Semaphore::new(MAX_WAITERS),
            waiting_bytes: tokio::sync::Semaphore::new(MAX_WAITING_BYTES),
            in_force: Mutex::new(None),
        });
        tokio::spawn(follow(r.clone(), js, ns.clone()));
        r
    }

    /// The newest checkpoint signed by the log key whose entries are all applied: the
    /// directory state this replica checks against.
    pub fn checkpoint_in_force(&self) -> Option<VerifiedCheckpoint> {
        self.in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Entries applied so far.
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
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .participant(address)
            .cloned()
    }

    /// Waits until the replica has applied at least `n` entries.
    pub async fn wait_applied(&self, n: u64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|&a| a >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Only the follower task applies, so the state cannot change between the check under
    /// the read lock (signatures, so look-ups are not held up) and the commit.
    fn refuse(&self, index: u64, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(index, why, "directory entry refused by the replica");
    }

    /// A checkpoint message: kept if the log key signed it.
    fn checkpoint(&self, note: &[u8]) {
        match verify_checkpoint(note, &self.verifier_key) {
            Ok(cp) => {
                let applied = self.applied();
                let mut cps = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
                cps.retain(|size, _| *size > applied);
                if cp.size > applied {
                    cps.insert(cp.size, cp);
                }
                while cps.len() > MAX_PENDING_CHECKPOINTS {
                    cps.pop_first();
                }
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "directory checkpoint refused by the replica");
            }
        }
    }

    /// Whether `entry` is leaf `index` of a signed checkpoint of `tree_size` this replica has.
    fn proved(&self, index: u64, entry: &[u8], tree_size: u64, proof: &[[u8; 32]]) -> bool {
        let cps = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        cps.get(&tree_size)
            .is_some_and(|cp| cp.verify_inclusion(index, entry, proof).is_ok())
    }

    fn apply(
        &self,
        index: u64,
        entry: &[u8],
        tree_size: Option<u64>,
        proof: Option<Vec<[u8; 32]>>,
    ) {
        let leaf = blockpost_core::leaf_hash(entry);
        let proved = match (tree_size, &proof) {
            (Some(n), Some(p)) => self.proved(index, entry, n, p),
            _ => false,
        };
        let prepared = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = usize::try_from(index).ok().and_then(|i| st.leaves.get(i)) {
                if *known == leaf {
                    return; // a redelivery; the ordered consumer resumes in order
                }
                if proved {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        index,
                        "the log key signed two different entries at one index: a fork"
                    );
                } else {
                    self.refuse(
                        index,
                        "other bytes at an applied index, not in a signed checkpoint",
                    );
                }
                return;
            }
            if !proved {
                drop(st);
                self.refuse(index, "not proved in a checkpoint signed by the log key");
                return;
            }
            st.state.prepare(index, entry)
        };
        let applied = prepared.and_then(|p| {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            st.state.commit(p)?;
            st.leaves.push(leaf);
            Ok(st.state.size())
        });
        match applied {
            Ok(size) => {
                if let Some(cp) = self
                    .checkpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&size)
                {
                    *self.in_force.lock().unwrap_or_else(|e| e.into_inner()) = Some(cp.clone());
                }
                self.applied.send_replace(size);
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(index, error = %e, "directory entry refused by the replica");
            }
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
                    let proof = header(wire::PROOF_HEADER).and_then(|v| wire::decode_proof(&v));
                    match index {
                        Some(index) => replica.apply(index, &m.payload, size, proof),
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
