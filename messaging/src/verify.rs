//! Signature checks off the async runtime, many to a blocking job.
//!
//! The gateway admits envelopes, so it checks each signature with the strict rule
//! ([`ParsedEnvelope::verify`], as Go's `ed25519.Verify` does), never with batch
//! verification: a batch can pass a signature whose `R` carries a torsion component,
//! which only its key's owner can make and which every strict verifier refuses (see
//! `blockpost_core::verify_batch`). Readers that check again what a gateway admitted
//! (builder, auditor) may batch: a batch never refuses a signature the strict rule takes.
//! Envelopes that arrive together still go to one blocking job, up to one job per core.

use std::sync::Arc;

use blockpost_core::{ParsedEnvelope, VerifiedEnvelope};
use ed25519_dalek::VerifyingKey;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{Error, Result};

/// Most signatures in one blocking job.
pub const MAX_BATCH: usize = 64;

struct Job {
    envelope: ParsedEnvelope,
    key: VerifyingKey,
    reply: oneshot::Sender<blockpost_core::Result<VerifiedEnvelope>>,
}

/// A handle to the verification task.
#[derive(Clone)]
pub struct BatchVerifier {
    tx: mpsc::Sender<Job>,
}

impl BatchVerifier {
    /// Starts the task, running up to one batch per core at a time.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 64);
        tokio::spawn(run(rx));
        Self { tx }
    }

    /// Checks `envelope`'s signature with `key`.
    pub async fn verify(
        &self,
        envelope: ParsedEnvelope,
        key: VerifyingKey,
    ) -> Result<VerifiedEnvelope> {
        let (reply, rx) = oneshot::channel();
        let gone = || Error::CheckerStopped;
        self.tx
            .send(Job {
                envelope,
                key,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        Ok(rx.await.map_err(|_| gone())??)
    }
}

async fn run(mut rx: mpsc::Receiver<Job>) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let permits = Arc::new(Semaphore::new(cores));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            for j in batch {
                let _ = j.reply.send(j.envelope.verify(&j.key));
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use blockpost_core::{EnvelopeLimits, Identity, sign_envelope};
    use blockpost_proto::v1::envelope_content::Body;
    use blockpost_proto::v1::{EnvelopeContent, MessageKind};
    use prost::Message as _;

    use super::*;

    #[tokio::test]
    async fn every_bad_signature_is_found_among_many() {
        let v = BatchVerifier::start();
        let ids: Vec<Identity> = (0..8).map(|_| Identity::generate()).collect();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let v = v.clone();
            let id = &ids[i as usize % ids.len()];
            let content = EnvelopeContent {
                sender: "alice".into(),
                recipients: vec!["bob".into()],
                transaction_id: "t".into(),
                kind: MessageKind::Message as i32,
                nonce: i,
                body: Some(Body::Plaintext(b"x".to_vec())),
                ..Default::default()
            };
            let mut env = sign_envelope(&id.signing, content.encode_to_vec());
            if i % 37 == 0 {
                env.signature[10] ^= 1;
            }
            let p = ParsedEnvelope::parse(env, &EnvelopeLimits::default()).unwrap();
            let key = id.signing.verifying_key();
            set.spawn(async move { (i, v.verify(p, key).await.is_ok()) });
        }
        while let Some(r) = set.join_next().await {
            let (i, ok) = r.unwrap();
            assert_eq!(ok, i % 37 != 0, "signature {i}");
        }
    }
}
