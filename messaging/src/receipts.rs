//! Receipts signed per batch.
//!
//! Submissions that finish together are signed together: the signer takes the receipt
//! bodies of a short window (at most [`MessagingConfig::receipt_batch_max`] of them, and
//! [`MessagingConfig::receipt_batch_ms`] after the first), signs one Merkle root over them
//! with [`blockpost_core::sign_receipts`], and hands each caller its receipt with its path.
//! A body alone in its window is signed alone.
//!
//! [`MessagingConfig::receipt_batch_max`]: crate::MessagingConfig::receipt_batch_max
//! [`MessagingConfig::receipt_batch_ms`]: crate::MessagingConfig::receipt_batch_ms

use std::time::Duration;

use blockpost_proto::v1::{Receipt, ReceiptBody};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

struct Job {
    body: ReceiptBody,
    reply: oneshot::Sender<Receipt>,
}

/// A handle to the signing task.
#[derive(Clone)]
pub struct ReceiptSigner {
    tx: mpsc::Sender<Job>,
}

/// Receipts signed so far, and signatures made for them.
#[derive(Debug, Default)]
pub struct SignerCounts {
    /// Receipts.
    pub receipts: std::sync::atomic::AtomicU64,
    /// Signatures.
    pub signatures: std::sync::atomic::AtomicU64,
}

impl SignerCounts {
    /// Counts `receipts` signed under one signature.
    pub fn count(&self, receipts: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.receipts.fetch_add(receipts, Relaxed);
        self.signatures.fetch_add(1, Relaxed);
    }
}

impl ReceiptSigner {
    /// Starts the task: batches of at most `max` bodies, closed `window` after the first.
    pub fn start(
        key: SigningKey,
        max: usize,
        window: Duration,
        counts: std::sync::Arc<SignerCounts>,
    ) -> Self {
        let max = max.clamp(1, blockpost_core::MAX_RECEIPT_BATCH);
        let (tx, rx) = mpsc::channel(max * 4);
        tokio::spawn(run(rx, key, max, window, counts));
        Self { tx }
    }

    /// Signs `body` (in the window's batch).
    pub async fn sign(&self, body: ReceiptBody) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { body, reply })
            .await
            .map_err(|_| Error::SignerStopped)?;
        rx.await.map_err(|_| Error::SignerStopped)
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    key: SigningKey,
    max: usize,
    window: Duration,
    counts: std::sync::Arc<SignerCounts>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let closes = tokio::time::Instant::now() + window;
        while batch.len() < max {
            // What is queued joins at once; then wait for more until the window closes.
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if window.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(closes, rx.recv()).await {
                        Ok(Some(j)) => batch.push(j),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let (bodies, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|j| (j.body, j.reply)).unzip();
        // At most `max` ≤ MAX_RECEIPT_BATCH bodies: signing cannot fail.
        let Ok(receipts) = blockpost_core::sign_receipts(&key, &bodies) else {
            continue;
        };
        counts.count(receipts.len() as u64);
        for (r, reply) in receipts.into_iter().zip(replies) {
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    use blockpost_core::verify_receipt;

    use super::*;

    fn body(key: &SigningKey, i: u64) -> ReceiptBody {
        ReceiptBody {
            message_id: vec![i as u8; 32],
            accepted_at_ms: 5,
            firehose_sequence: i,
            block_deadline_ms: 10,
            gateway_key: key.verifying_key().to_bytes().to_vec(),
            firehose_partition: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_of_one_window_share_a_signature_and_each_verifies() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let counts = Arc::new(SignerCounts::default());
        let s = ReceiptSigner::start(key.clone(), 8, Duration::from_millis(5), counts.clone());
        // Twenty at once: batches of 8, 8 and 4 (the last closed by the window).
        let all = futures::future::join_all((0..20).map(|i| s.sign(body(&key, i)))).await;
        let vk = key.verifying_key();
        for (i, r) in all.iter().enumerate() {
            let r = r.as_ref().unwrap();
            assert_eq!(verify_receipt(&vk, r).unwrap(), body(&key, i as u64));
            assert!(r.batch.as_ref().unwrap().size > 1);
        }
        assert_eq!(counts.receipts.load(Relaxed), 20);
        assert_eq!(counts.signatures.load(Relaxed), 3);
        // One alone waits out the window and is signed alone.
        let t = tokio::time::Instant::now();
        let r = s.sign(body(&key, 99)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(5));
        assert!(r.batch.is_none());
        assert_eq!(verify_receipt(&vk, &r).unwrap(), body(&key, 99));
    }

    #[tokio::test]
    async fn without_a_window_what_is_queued_is_signed_at_once() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let counts = Arc::new(SignerCounts::default());
        let s = ReceiptSigner::start(key.clone(), 64, Duration::ZERO, counts.clone());
        let r = s.sign(body(&key, 1)).await.unwrap();
        assert!(r.batch.is_none());
        assert_eq!(counts.signatures.load(Relaxed), 1);
    }
}
