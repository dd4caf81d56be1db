//! Which builder cuts blocks: a lease in a JetStream key-value bucket.
//!
//! Any number of builders may run against one log; one holds the lease and cuts, the
//! others stand by, following the blocks stream into their own stores. The lease is one
//! key (`active`) in the bucket [`Namespace::builder_lease_bucket`], whose value names
//! its holder. It is taken with `create` (only when the key is absent), renewed with
//! `update` at the revision last written (compare-and-set), and lapses on its own: the
//! bucket's `max_age` is the lease's length, so a holder killed with `kill -9` stops
//! renewing and its key is gone `lease_ms` later, when a standby's `create` succeeds.
//!
//! The lease only says who should cut. What keeps two builders from ever publishing two
//! blocks at one height is the fence on the blocks stream: every block is published with
//! the stream sequence its publisher last saw (`Nats-Expected-Last-Subject-Sequence`),
//! and the stream refuses it if anything was published since ([`crate::builder`]). A
//! holder that cannot renew in time gives the lease up before it may have lapsed.
//!
//! A builder's holder id is kept in its ledger directory, so that the same builder
//! restarted (one process per data directory, by its lock) takes its own lease back at
//! once instead of waiting for it to lapse.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use blockpost_core::wire::Namespace;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Error, Result};

/// The lease's key.
const KEY: &str = "active";

fn bus(e: impl std::fmt::Display) -> Error {
    Error::Bus(format!("builder lease: {e}"))
}

/// The lease bucket of `ns`, made (with `replicas` and the lease's length as `max_age`)
/// when it is missing.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: usize,
    lease: Duration,
) -> Result<kv::Store> {
    let name = ns.builder_lease_bucket();
    match js.get_key_value(&name).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name,
                description: ns.description(),
                history: 1,
                max_age: lease,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(bus),
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
pub(crate) async fn take(kv: &kv::Store, holder: &str) -> Result<Taken> {
    match kv.create(KEY, holder.as_bytes().to_vec().into()).await {
        Ok(rev) => return Ok(Taken::Ours(rev)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(bus(e)),
    }
    let Some(entry) = kv.entry(KEY).await.map_err(bus)? else {
        return Ok(Taken::Held("(lapsing)".into()));
    };
    let other = String::from_utf8_lossy(&entry.value).into_owned();
    if entry.operation == kv::Operation::Put && other == holder {
        return match kv
            .update(KEY, holder.as_bytes().to_vec().into(), entry.revision)
            .await
        {
            Ok(rev) => Ok(Taken::Ours(rev)),
            Err(_) => Ok(Taken::Held(other)),
        };
    }
    Ok(Taken::Held(other))
}

/// Renews the lease (taken at `revision`) every third of its length, until this task is
/// ended; tells `lost` once it may no longer hold it: a renewal found another revision,
/// or none succeeded for two thirds of its length (it gives the lease up before the
/// bucket could let it lapse).
pub(crate) async fn keep(
    kv: kv::Store,
    holder: String,
    mut revision: u64,
    lease: Duration,
    lost: watch::Sender<bool>,
) {
    let every = lease / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let attempt = tokio::time::timeout(
            every,
            kv.update(KEY, holder.as_bytes().to_vec().into(), revision),
        )
        .await;
        match attempt {
            Ok(Ok(rev)) => {
                revision = rev;
                renewed = Instant::now();
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(holder, "the builder lease was taken by another builder");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the builder lease"),
            Err(_) => tracing::warn!("renewing the builder lease timed out"),
        }
        if renewed.elapsed() >= every * 2 {
            tracing::warn!(
                holder,
                "the builder lease could not be renewed in time: standing by"
            );
            let _ = lost.send(true);
            return;
        }
    }
}
