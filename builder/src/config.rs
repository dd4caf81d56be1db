//! The `[builder]` table of the node config.

use serde::Deserialize;

/// When the builder cuts a block.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BuilderConfig {
    /// Whether the node runs the builder (it needs the messaging gateway).
    pub enabled: bool,
    /// Most messages in one block.
    pub max_block_messages: usize,
    /// Most message bytes in one block (kept under NATS's `max_payload`, since every block
    /// is published whole).
    pub max_block_bytes: usize,
    /// A block is cut at most this long after its first message arrived.
    pub max_block_delay_ms: u64,
    /// An unfinished transaction times out this long after the block holding its first
    /// message (or at the earlier deadline that message asks for).
    pub transaction_timeout_ms: u64,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_block_messages: 10_000,
            max_block_bytes: 4 << 20,
            max_block_delay_ms: 250,
            transaction_timeout_ms: blockpost_core::transaction::DEFAULT_TRANSACTION_TIMEOUT_MS,
        }
    }
}

impl BuilderConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_block_messages == 0 || self.max_block_bytes == 0 || self.max_block_delay_ms == 0
        {
            return Err("builder.max_block_messages, max_block_bytes and max_block_delay_ms must be at least 1".into());
        }
        if self.transaction_timeout_ms == 0 || self.transaction_timeout_ms > i64::MAX as u64 / 2 {
            return Err(
                "builder.transaction_timeout_ms must be at least 1 and at most 2^62".into(),
            );
        }
        if self.max_block_bytes > crate::MAX_BLOCK_LEN / 2 {
            return Err(format!(
                "builder.max_block_bytes is at most {} (half the largest stored block)",
                crate::MAX_BLOCK_LEN / 2
            ));
        }
        Ok(())
    }
}
