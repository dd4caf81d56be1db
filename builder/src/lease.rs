//! Which builder cuts blocks: a lease in JetStream.
//!
//! Any number of builders may run against one log; one holds the lease and cuts, the
//! others stand by, following the blocks stream into their own stores. The lease is the
//! one message of the stream [`Namespace::lease_stream`] (a key-value bucket of one key,
//! built as JetStream builds them: one message per subject, `max_age` the lease's
//! length), whose payload names its holder. It is taken by publishing when the subject
//! holds nothing (`Nats-Expected-Last-Subject-Sequence: 0`), renewed by publishing at
//! the sequence last written (compare-and-set), and lapses on its own: a holder killed
//! with `kill -9` stops renewing, its message ages out `lease_ms` later, and a standby's
//! publish then succeeds.
//!
//! The lease only says who should cut. What keeps two builders from ever publishing two
//! blocks at one height is the fence on the blocks stream: every block is published with
//! the stream sequence its publisher last saw, and the stream refuses it if anything was
//! published since ([`crate::builder`]). A holder whose renewals fail keeps cutting
//! until a renewal finds the lease taken or lapsed: the fence settles any overlap.
//!
//! A builder's holder id is kept in its ledger directory, so that the same builder
//! restarted (one process per data directory, by its lock) takes its own lease back at
//! once instead of waiting for it to lapse.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use blockpost_core::wire::Namespace;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Error, Result};

fn bus(e: impl std::fmt::Display) -> Error {
    Error::Bus(format!("builder lease: {e}"))
}

/// The lease: its stream (made with `replicas` and the lease's length as `max_age` when
/// it is missing) and subject.
#[derive(Clone)]
pub(crate) struct Lease {
    js: jetstream::Context,
    subject: String,
    stream: String,
}

pub(crate) async fn bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: usize,
    lease: Duration,
) -> Result<Lease> {
    // Lease requests fail fast, so that a builder tries again soon after an election.
    let mut js = js.clone();
    js.set_timeout(lease.min(Duration::from_secs(3)));
    js.get_or_create_stream(stream::Config {
        name: ns.lease_stream(),
        description: Some(ns.description()),
        subjects: vec![ns.builder_lease_subject()],
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        max_age: lease,
        duplicate_window: lease,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(bus)?;
    Ok(Lease {
        js,
        subject: ns.builder_lease_subject(),
        stream: ns.lease_stream(),
    })
}

impl Lease {
    /// Publishes `holder` if the subject's last message is `expected` (0: none); the new
    /// sequence, or `None` when another was published since.
    async fn write(&self, holder: &str, expected: u64) -> Result<Option<u64>> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                self.subject.clone(),
                headers,
                holder.as_bytes().to_vec().into(),
            )
            .await
            .map_err(bus)?
            .await;
        match ack {
            Ok(a) => Ok(Some(a.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(bus(e)),
        }
    }

    /// The holder and sequence of the lease's message, if there is one.
    async fn read(&self) -> Result<Option<(String, u64)>> {
        let s = self.js.get_stream(&self.stream).await.map_err(bus)?;
        match s.get_last_raw_message_by_subject(&self.subject).await {
            Ok(m) => Ok(Some((
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.sequence,
            ))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(bus(e)),
        }
    }
}

/// The holder id kept in `dir` (made at first use).
pub(crate) fn holder_id(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("builder.id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let r: [u8; 8] = rand::random();
            let id = format!("{}-{}", hostname(), hex::encode(r));
            blockpost_storage::write_atomic(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "builder".into())
}

/// What taking the lease found.
pub(crate) enum Taken {
    /// It is ours, at this revision.
    Ours(u64),
    /// Another builder holds it.
    Held(String),
}

/// Takes the lease if it is free, or ours already (this builder restarted).
pub(crate) async fn take(lease: &Lease, holder: &str) -> Result<Taken> {
    if let Some(seq) = lease.write(holder, 0).await? {
        return Ok(Taken::Ours(seq));
    }
    let Some((other, seq)) = lease.read().await? else {
        return Ok(Taken::Held("(lapsing)".into()));
    };
    if other == holder {
        return match lease.write(holder, seq).await? {
            Some(seq) => Ok(Taken::Ours(seq)),
            None => Ok(Taken::Held(other)),
        };
    }
    Ok(Taken::Held(other))
}

/// Renews the lease (written at sequence `revision`) every third of its length, until
/// this task is ended; tells `lost` once a renewal finds the lease taken by another
/// builder or lapsed. Renewals that fail (the lease stream electing a leader, say) are
/// retried: a holder keeps cutting meanwhile, since the fence on the blocks stream, not
/// the lease, is what keeps two builders from publishing at one height.
pub(crate) async fn keep(
    lease_: Lease,
    holder: String,
    mut revision: u64,
    lease: Duration,
    lost: watch::Sender<bool>,
) {
    let every = lease / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let attempt = tokio::time::timeout(every, lease_.write(&holder, revision)).await;
        match attempt {
            Ok(Ok(Some(seq))) => {
                revision = seq;
                renewed = Instant::now();
            }
            Ok(Ok(None)) => {
                tracing::warn!(
                    holder,
                    unrenewed_ms = renewed.elapsed().as_millis() as u64,
                    "the builder lease was taken by another builder, or lapsed"
                );
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the builder lease"),
            Err(_) => tracing::warn!("renewing the builder lease timed out"),
        }
    }
}
