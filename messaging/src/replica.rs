//! A live replica of the directory, followed from its JetStream stream, so that every
//! envelope check is a memory look-up. Revocations reach it as fast as NATS delivers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_core::decode_entry;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt as _;
use tokio::sync::watch;

/// Stream the directory publishes to.
pub const DIRECTORY_STREAM: &str = "BLOCKPOST_DIRECTORY";
const ENTRY_SUBJECT: &str = "blockpost.directory.entry";
const INDEX_HEADER: &str = "Blockpost-Leaf-Index";

/// The current state of one participant.
#[derive(Clone, Debug)]
pub struct Participant {
    /// Index of the newest entry.
    pub current: u64,
    /// Whether that entry revoked the binding.
    pub revoked: bool,
    /// Current ed25519 key (decoded once).
    pub signing_key: VerifyingKey,
    /// Current x25519 key.
    pub encryption_key: [u8; 32],
}

/// The replica.
pub struct Replica {
    map: RwLock<HashMap<String, Participant>>,
    /// Number of log entries applied.
    applied: watch::Sender<u64>,
}

impl Replica {
    /// Starts following the directory stream.
    pub fn start(js: jetstream::Context) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        let r = Arc::new(Self {
            map: RwLock::new(HashMap::new()),
            applied,
        });
        tokio::spawn(follow(r.clone(), js));
        r
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The participant, waiting up to `patience` for the replica to learn of it (a
    /// registration may be a few milliseconds ahead of its NATS copy).
    pub async fn participant(&self, address: &str, patience: Duration) -> Option<Participant> {
        if let Some(p) = self.get(address) {
            return Some(p);
        }
        let mut rx = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.get(address);
            }
            if let Some(p) = self.get(address) {
                return Some(p);
            }
        }
    }

    /// The participant as the replica knows it now.
    pub fn get(&self, address: &str) -> Option<Participant> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .cloned()
    }

    /// Waits until the replica has applied at least `n` entries.
    pub async fn wait_applied(&self, n: u64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|&a| a >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn apply(&self, index: u64, entry: &[u8]) {
        if index != self.applied() {
            return; // a redelivery or a gap; the ordered consumer resumes in order
        }
        match decode_entry(entry) {
            Ok((_, b)) => {
                let key = VerifyingKey::from_bytes(&b.signing_key);
                if let Ok(signing_key) = key {
                    let p = Participant {
                        current: index,
                        revoked: b.revoked(),
                        signing_key,
                        encryption_key: b.encryption_key,
                    };
                    self.map
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(b.address.to_string(), p);
                }
            }
            Err(e) => {
                tracing::error!(index, error = %e, "directory entry does not decode; skipped")
            }
        }
        self.applied.send_replace(index + 1);
    }
}

async fn follow(replica: Arc<Replica>, js: jetstream::Context) {
    let mut next_seq = 1u64;
    loop {
        let result: Result<(), String> = async {
            let stream = js
                .get_stream(DIRECTORY_STREAM)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: ENTRY_SUBJECT.into(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: next_seq,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let index = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(INDEX_HEADER))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if let Some(index) = index {
                    replica.apply(index, &m.payload);
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
