//! Gateway settings: the `[messaging]` table of the node config.

use blockpost_core::EnvelopeLimits;
use serde::Deserialize;

/// Settings of the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    /// Run the gateway (on by default; `blockpost bench directory` runs the directory alone).
    pub enabled: bool,
    /// Largest body: plaintext, or each ciphertext's plaintext.
    pub max_body_len: usize,
    /// Most recipients per envelope.
    pub max_recipients: usize,
    /// Greatest distance between an envelope's timestamp and the gateway's clock; must be
    /// below half the firehose's de-duplication window, which enforces nonce uniqueness
    /// (the window is set to twice this).
    pub max_clock_skew_ms: u64,
    /// The promise in every receipt: in a block within this delay.
    pub max_block_delay_ms: u64,
    /// Most firehose streams served at once (`Firehose` calls), from everyone.
    pub max_followers: usize,
    /// Most firehose streams served at once to one peer (IP address).
    pub max_followers_per_peer: usize,
    /// Bytes of firehose messages held for one follower that has not taken them yet (at
    /// least one message, whatever its size).
    pub follower_buffer_bytes: usize,
    /// A follower whose buffer stays full this long is dropped: its stream ends with
    /// RESOURCE_EXHAUSTED.
    pub slow_follower_ms: u64,
    /// Most bytes of envelopes the gateway holds while it checks and stores them, from
    /// every caller together; beyond it a submission is answered UNAVAILABLE at once.
    pub max_inflight_bytes: usize,
    /// Partitions of the firehose: one JetStream stream each, a sender's envelopes all in
    /// one (a stable hash of its address). Fixed when the firehose is made: a node started
    /// with another number on the same log refuses to run.
    pub firehose_partitions: u32,
    /// Most receipts signed under one Merkle root (1: each receipt signed alone, by the
    /// request that earned it).
    pub receipt_batch_max: usize,
    /// How long the first receipt of a batch waits for others to share its signature, in
    /// ms (0: only those already waiting).
    pub receipt_batch_ms: u64,
    /// Replicas of the JetStream streams this service makes (the node's `[nats] replicas`;
    /// not a setting of this table).
    #[serde(skip)]
    pub replicas: usize,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        let limits = EnvelopeLimits::default();
        Self {
            replicas: 1,
            enabled: true,
            max_body_len: limits.max_body_len,
            max_recipients: limits.max_recipients,
            max_clock_skew_ms: 5 * 60 * 1000,
            max_block_delay_ms: 10_000,
            max_followers: 256,
            max_followers_per_peer: 32,
            follower_buffer_bytes: 256 << 10,
            slow_follower_ms: 10_000,
            max_inflight_bytes: 256 << 20,
            firehose_partitions: 1,
            receipt_batch_max: 256,
            receipt_batch_ms: 2,
        }
    }
}

impl MessagingConfig {
    /// The envelope size limits.
    pub fn limits(&self) -> EnvelopeLimits {
        EnvelopeLimits {
            max_body_len: self.max_body_len,
            max_recipients: self.max_recipients,
        }
    }

    /// Checks the settings for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_recipients == 0 {
            return Err("messaging.max_recipients must be at least 1".into());
        }
        if self.max_body_len == 0 {
            return Err("messaging.max_body_len must be at least 1".into());
        }
        if self.max_clock_skew_ms == 0 || self.max_clock_skew_ms > 24 * 3600 * 1000 {
            return Err("messaging.max_clock_skew_ms must be between 1 ms and 24 h".into());
        }
        if self.max_followers == 0
            || self.max_followers_per_peer == 0
            || self.follower_buffer_bytes == 0
            || self.slow_follower_ms == 0
            || self.max_inflight_bytes == 0
        {
            return Err("messaging.max_followers, max_followers_per_peer, follower_buffer_bytes, slow_follower_ms and max_inflight_bytes must be at least 1".into());
        }
        if self.firehose_partitions == 0
            || self.firehose_partitions > blockpost_core::wire::MAX_FIREHOSE_PARTITIONS
        {
            return Err(format!(
                "messaging.firehose_partitions must be between 1 and {}",
                blockpost_core::wire::MAX_FIREHOSE_PARTITIONS
            ));
        }
        if self.receipt_batch_max == 0
            || self.receipt_batch_max > blockpost_core::MAX_RECEIPT_BATCH
            || self.receipt_batch_ms > 1_000
        {
            return Err(format!(
                "messaging.receipt_batch_max must be between 1 and {} and receipt_batch_ms at most 1000",
                blockpost_core::MAX_RECEIPT_BATCH
            ));
        }
        if self.max_block_delay_ms == 0 || i64::try_from(self.max_block_delay_ms).is_err() {
            return Err("messaging.max_block_delay_ms must be a positive number of ms".into());
        }
        Ok(())
    }
}
