//! The sequencer: batches of admitted entries re-checked in order, appended durably under
//! one signed checkpoint, and each request answered with its proof.

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::Error;
use crate::error::OsError;
use crate::service::{Inner, Pending, Precondition};

impl Inner {
    /// Sequences one batch: re-checks preconditions in order, appends durably, signs one
    /// checkpoint, then answers every request with its proof.
    pub(crate) fn commit(&self, batch: Vec<Pending>) {
        // Address states as they will be after the accepted part of this batch.
        let mut overlay: HashMap<String, (u64, bool)> = HashMap::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let next = self.store.len();
        for p in batch {
            let state = overlay.get(&p.address).copied().or_else(|| {
                self.store
                    .address(&p.address)
                    .and_then(|s| s.current().map(|c| (c, s.revoked)))
            });
            let verdict = match (&p.pre, state) {
                (Precondition::Unregistered, None) => Ok(()),
                (Precondition::Unregistered, Some(_)) => {
                    Err(Error::AddressTaken(p.address.clone()))
                }
                (Precondition::Current(_), None) => Err(Error::NotFound(p.address.clone())),
                (Precondition::Current(_), Some((at, true))) => Err(Error::KeyRevoked {
                    address: p.address.clone(),
                    at,
                }),
                (Precondition::Current(want), Some((cur, false))) if *want != cur => {
                    Err(Error::Stale {
                        address: p.address.clone(),
                        current: cur,
                        named: *want,
                    })
                }
                (Precondition::Current(_), Some(_)) => Ok(()),
            };
            match verdict {
                Ok(()) => {
                    overlay.insert(p.address.clone(), (next + accepted.len() as u64, p.revokes));
                    accepted.push(p);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let entries: Vec<Vec<u8>> = accepted
            .iter_mut()
            .map(|p| std::mem::take(&mut p.entry))
            .collect();
        let bindings: Vec<(String, bool)> = accepted
            .iter()
            .map(|p| (p.address.clone(), p.revokes))
            .collect();
        match self.store.append(&entries, &bindings, |size, root| {
            Ok(self.signer.sign(size, root)?)
        }) {
            Ok((first, head)) => {
                let _ = self.changed.send(head.size);
                for (i, p) in accepted.into_iter().enumerate() {
                    let _ = p.reply.send(self.entry_proof(first + i as u64, &head));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "appending a batch failed; nothing of it was acknowledged");
                // Every waiter gets the same failure, with its OS error kept (a full disk is
                // RESOURCE_EXHAUSTED, not INTERNAL).
                let msg = e.to_string();
                let os = match &e {
                    Error::Storage(blockpost_storage::Error::Io(io)) => io.raw_os_error(),
                    _ => None,
                };
                for p in accepted {
                    let io = match os {
                        Some(code) => std::io::Error::new(
                            std::io::Error::from_raw_os_error(code).kind(),
                            OsError {
                                code,
                                msg: msg.clone(),
                            },
                        ),
                        None => std::io::Error::other(msg.clone()),
                    };
                    let _ = p
                        .reply
                        .send(Err(Error::Storage(blockpost_storage::Error::Io(io))));
                }
            }
        }
    }
}

impl Inner {
    /// The sequencer task: takes what has queued up (at most `max_batch`) and commits it
    /// as one batch, on a blocking thread.
    pub(crate) async fn sequencer(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let max = inner.config.max_batch.max(1);
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let inner2 = inner.clone();
            if tokio::task::spawn_blocking(move || inner2.commit(batch))
                .await
                .is_err()
            {
                tracing::error!("sequencer batch panicked");
            }
        }
    }
}
