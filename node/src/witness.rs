//! Collects witness cosignatures (C2SP tlog-cosignature) for the node's directory and
//! ledger checkpoints: twice a second it hands its newest checkpoint of each log to every
//! configured witness (`blockpost.v1.Audit/Cosign`), checks each cosignature line it gets
//! back with the witness's key, and publishes the checkpoint with the lines as the log's
//! witnessed checkpoint ([`Witnessed`]), which clients that require witnesses prove
//! against.
//!
//! A witness answers only for checkpoints it verified against its own replay, so the
//! witnessed checkpoint trails the newest by the witnesses' lag. The newest checkpoint
//! with the most cosignatures wins; one with fewer replaces it only after
//! [`STALE_AFTER`], so a witness that is down delays nothing for long.

use std::time::{Duration, Instant};

use blockpost_core::{WitnessKey, add_cosignatures};
use blockpost_proto::v1::CosignRequest;
use blockpost_proto::v1::audit_client::AuditClient;
use blockpost_storage::{Head, Witnessed};
use tonic::transport::{Channel, Endpoint};

use crate::config::WitnessConfig;

/// How often the newest checkpoints are handed to the witnesses.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// How long one witness may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long a witnessed checkpoint with more cosignatures holds against a newer one with
/// fewer.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

struct Remote {
    endpoint: String,
    grpc: AuditClient<Channel>,
    key: Option<WitnessKey>,
}

/// One log whose checkpoints are witnessed: where its newest head comes from, and where
/// the witnessed one goes.
pub struct Log {
    /// "directory" or "ledger", for the logs.
    pub name: &'static str,
    /// The newest head.
    pub head: Box<dyn Fn() -> Head + Send + Sync>,
    /// Where the witnessed head is published.
    pub witnessed: Witnessed,
}

struct Published {
    head: Head,
    cosignatures: usize,
    at: Instant,
}

/// Runs until the task is aborted.
pub async fn collect(witnesses: Vec<WitnessConfig>, logs: Vec<Log>) {
    let mut remotes = Vec::new();
    for w in witnesses {
        let key = w.key.as_deref().and_then(|k| WitnessKey::parse(k).ok());
        match Endpoint::from_shared(w.endpoint.clone()) {
            Ok(e) => remotes.push(Remote {
                grpc: AuditClient::new(e.timeout(TIMEOUT).connect_lazy()),
                endpoint: w.endpoint,
                key,
            }),
            Err(e) => tracing::error!(endpoint = %w.endpoint, error = %e, "bad witness endpoint"),
        }
    }
    let mut published: Vec<Option<Published>> = logs.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (log, published) in logs.iter().zip(published.iter_mut()) {
            let head = (log.head)();
            if head.size == 0 {
                continue;
            }
            if let Some(p) = published
                && p.head.checkpoint.starts_with(&head.checkpoint)
                && p.cosignatures == remotes.len()
            {
                continue;
            }
            let mut lines = Vec::new();
            for r in &mut remotes {
                if let Some(line) = cosign(r, &head.checkpoint).await {
                    lines.push(line);
                }
            }
            if lines.is_empty() {
                continue;
            }
            let better = match published {
                None => true,
                Some(p) => {
                    head.size >= p.head.size
                        && (lines.len() >= p.cosignatures || p.at.elapsed() >= STALE_AFTER)
                }
            };
            if !better {
                continue;
            }
            match add_cosignatures(&head.checkpoint, &lines) {
                Ok(note) => {
                    let witnessed = Head {
                        size: head.size,
                        checkpoint: note,
                    };
                    log.witnessed.set(witnessed.clone());
                    tracing::debug!(
                        log = log.name,
                        size = head.size,
                        cosignatures = lines.len(),
                        "witnessed"
                    );
                    *published = Some(Published {
                        head: witnessed,
                        cosignatures: lines.len(),
                        at: Instant::now(),
                    });
                }
                Err(e) => tracing::warn!(log = log.name, error = %e, "cannot add cosignatures"),
            }
        }
    }
}

/// One witness's cosignature line for `note`, checked with its key; `None` when it has
/// none (yet) or it does not verify.
async fn cosign(r: &mut Remote, note: &[u8]) -> Option<Vec<u8>> {
    let resp = match r
        .grpc
        .cosign(CosignRequest {
            checkpoint: note.to_vec(),
        })
        .await
    {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::Unavailable => return None,
        Err(s) => {
            tracing::debug!(witness = %r.endpoint, status = %s, "no cosignature");
            return None;
        }
    };
    let key = match &r.key {
        Some(k) => k.clone(),
        None => match WitnessKey::parse(&resp.witness_key) {
            Ok(k) => {
                tracing::info!(witness = %r.endpoint, key = %resp.witness_key, "witness key taken on first contact");
                r.key = Some(k.clone());
                k
            }
            Err(e) => {
                tracing::warn!(witness = %r.endpoint, error = %e, "the witness presents a bad key");
                return None;
            }
        },
    };
    let cosigned = add_cosignatures(note, &[&resp.cosignature]).ok()?;
    match key.cosigned_at(&cosigned) {
        Ok(Some(_)) => Some(resp.cosignature),
        _ => {
            tracing::warn!(witness = %r.endpoint, "a cosignature that does not verify with the witness's key; ignored");
            None
        }
    }
}
