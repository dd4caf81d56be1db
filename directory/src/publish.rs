//! Publishes every log entry and checkpoint to a JetStream stream, so that gateways can keep
//! a live replica and auditors can follow the log.
//!
//! The log on disk is the source of truth; the publisher only trails it. It learns where it
//! stopped from the stream itself (the last entry's index header), publishes what is
//! missing with the leaf index as de-duplication id, and retries after NATS outages.

use std::sync::Weak;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use blockpost_core::wire;
use tokio::sync::watch;

use crate::storage::Store;

/// What the publisher trails: the directory's log on disk. The service holds it; the
/// publisher holds it weakly and ends when the service is dropped.
pub(crate) trait Trailed: Send + Sync + 'static {
    /// The log.
    fn store(&self) -> &Store;
}

/// Where and how the log is published.
pub(crate) struct Target {
    /// The streams and subjects of the log.
    pub(crate) ns: wire::Namespace,
    /// Replicas of the directory stream.
    pub(crate) replicas: usize,
}

pub(crate) async fn run<T: Trailed>(
    inner: Weak<T>,
    target: Target,
    client: async_nats::Client,
    mut changed: watch::Receiver<u64>,
) {
    let js = jetstream::new(client);
    let mut backoff = Duration::from_millis(100);
    // How far this publisher knows the stream holds the log, from its own acks.
    let mut published = 0u64;
    loop {
        // Ends once the directory is dropped.
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let outcome = publish_missing(strong.store(), &target, &js, &mut published).await;
        drop(strong);
        match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if changed.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "directory publisher: retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn publish_missing(
    store: &Store,
    target: &Target,
    js: &jetstream::Context,
    published: &mut u64,
) -> Result<(), BoxError> {
    let ns = &target.ns;
    let mut st = js
        .get_or_create_stream(stream::Config {
            name: ns.directory_stream(),
            description: Some(ns.description()),
            subjects: vec![ns.directory_subjects()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            num_replicas: target.replicas.max(1),
            ..Default::default()
        })
        .await?;
    let info = st.info().await?;
    // Where to resume: after the stream's last entry message, but only if that message is
    // our own entry (same bytes as the log); anything else on the subject is not trusted,
    // and the publisher resumes from what it knows it published.
    let mut next = if info.state.messages == 0 {
        0
    } else {
        match st
            .get_last_raw_message_by_subject(&ns.entry_subject())
            .await
        {
            Ok(m) => {
                let idx = m
                    .headers
                    .get(wire::LEAF_INDEX_HEADER)
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                match idx {
                    Some(i) if store.entry(i).is_ok_and(|e| e == m.payload.as_ref()) => i + 1,
                    _ => {
                        tracing::warn!(
                            seq = m.sequence,
                            "the directory stream's last entry is not ours; resuming from what this node published"
                        );
                        *published
                    }
                }
            }
            Err(_) => *published,
        }
    };
    // Entries go out pipelined: across a reconnect one may be lost while later ones were
    // stored. What this publisher saw acknowledged in order is the safe place to resume;
    // republishing is harmless (de-duplication, and readers ignore the same leaf twice).
    if *published > 0 {
        next = next.min(*published);
    }
    let head = store.head();
    if next >= head.size {
        *published = (*published).max(head.size);
        return Ok(());
    }
    // The checkpoint first, then each entry with its inclusion proof in that checkpoint:
    // a reader applies an entry only once it proved it in a checkpoint signed by the log key.
    let mut h = HeaderMap::new();
    h.insert(wire::TREE_SIZE_HEADER, head.size.to_string().as_str());
    h.insert(
        wire::MSG_ID_HEADER,
        wire::checkpoint_msg_id(head.size).as_str(),
    );
    js.publish_with_headers(ns.checkpoint_subject(), h, head.checkpoint.clone().into())
        .await?
        .await?;
    let size = head.size.to_string();
    while next < head.size {
        let end = (next + 512).min(head.size);
        let mut acks = Vec::with_capacity((end - next) as usize);
        for i in next..end {
            let entry = store.entry(i)?;
            let proof = store.prove_inclusion(i, head.size)?;
            let mut h = HeaderMap::new();
            h.insert(wire::LEAF_INDEX_HEADER, i.to_string().as_str());
            h.insert(wire::TREE_SIZE_HEADER, size.as_str());
            h.insert(wire::PROOF_HEADER, wire::encode_proof(&proof).as_str());
            h.insert(wire::MSG_ID_HEADER, wire::entry_msg_id(i).as_str());
            acks.push(
                js.publish_with_headers(ns.entry_subject(), h, entry.into())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
        next = end;
        *published = (*published).max(end);
    }
    tracing::debug!(
        size = head.size,
        "published directory entries and checkpoint"
    );
    Ok(())
}
