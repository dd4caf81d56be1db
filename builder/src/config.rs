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
    /// The builder counts as stalled (gRPC health of the Ledger service NOT_SERVING, the
    /// gateway refusing receipts with UNAVAILABLE) when messages or blocks wait and it made
    /// no progress for this long.
    pub stall_after_ms: u64,
    /// Length of the lease that lets one builder cut blocks while others stand by: a
    /// standby takes over at most this long (plus a poll) after the active one dies.
    pub lease_ms: u64,
    /// An unfinished transaction times out this long after the block holding its first
    /// message (or at the earlier deadline that message asks for).
    pub transaction_timeout_ms: u64,
    /// Anchoring the ledger outside the system (`[builder.anchor]`).
    pub anchor: AnchorConfig,
    /// Delivering the ledger transactions settlement instructions carry, once their
    /// transaction is finished (`[builder.delivery]`).
    pub delivery: DeliveryConfig,
    /// Replicas of the JetStream streams this service makes (the node's `[nats] replicas`;
    /// not a setting of this table).
    #[serde(skip)]
    pub replicas: usize,
    /// Partitions of the firehose (the node's `[messaging] firehose_partitions`; not a
    /// setting of this table).
    #[serde(skip)]
    pub firehose_partitions: u32,
}

/// How the builder hands ledger transactions to their ledger (Bitcoin): the same command
/// shapes as the Bitcoin anchor's. Off while `broadcast_command` is empty.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Broadcasts a transaction: the raw transaction (hex) is added as the last argument,
    /// e.g. `["bitcoin-cli", "-regtest", "sendrawtransaction"]`. It must succeed for a
    /// transaction the node knows already (Bitcoin Core's `sendrawtransaction` does for
    /// one in its mempool).
    pub broadcast_command: Vec<String>,
    /// Prints the raw block (hex) that confirms a transaction whose txid is added as the
    /// last argument; fails or prints nothing while it is unconfirmed.
    pub block_command: Vec<String>,
    /// How often the role looks for work (and for confirmations); 1000 when 0.
    pub poll_ms: u64,
}

impl DeliveryConfig {
    /// Whether delivery is on.
    pub fn enabled(&self) -> bool {
        !self.broadcast_command.is_empty()
    }

    /// The commands as the Bitcoin helpers take them.
    pub(crate) fn commands(&self) -> BitcoinConfig {
        BitcoinConfig {
            broadcast_command: self.broadcast_command.clone(),
            block_command: self.block_command.clone(),
            ..BitcoinConfig::default()
        }
    }
}

/// Where and how often the builder anchors the newest ledger root.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorConfig {
    /// `file` (an append-only file in the data directory), `bitcoin`, or `off`.
    pub sink: String,
    /// Anchor once the ledger grew by this many blocks since the last anchor.
    pub every_blocks: u64,
    /// ... or once this long passed and the ledger grew (by more than the block holding the
    /// last anchor's record).
    pub every_ms: u64,
    /// The Bitcoin sink.
    pub bitcoin: BitcoinConfig,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            sink: "file".into(),
            every_blocks: 100,
            every_ms: 600_000,
            bitcoin: BitcoinConfig::default(),
        }
    }
}

/// An OP_RETURN transaction per anchor, spending one P2WPKH output and paying the change
/// back to the same key, so that each anchor funds the next.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BitcoinConfig {
    /// `bitcoin`, `testnet`, `signet` or `regtest`.
    pub network: String,
    /// A file holding the spending key in WIF (compressed).
    pub key_file: Option<std::path::PathBuf>,
    /// The first output to spend, `txid:vout`, paying to the key's P2WPKH address.
    pub utxo: String,
    /// Its value in satoshi.
    pub utxo_value_sat: u64,
    /// The fee of each anchor transaction, in satoshi.
    pub fee_sat: u64,
    /// Broadcasts a transaction: the raw transaction (hex) is added as the last argument,
    /// e.g. `["bitcoin-cli", "-regtest", "sendrawtransaction"]`.
    pub broadcast_command: Vec<String>,
    /// Prints the raw block (hex) that confirms a transaction, whose txid is added as the
    /// last argument; fails or prints nothing while it is unconfirmed. See the README for a
    /// `bitcoin-cli` one-liner.
    pub block_command: Vec<String>,
    /// How often unconfirmed anchors are looked up.
    pub poll_ms: u64,
}

impl Default for BitcoinConfig {
    fn default() -> Self {
        Self {
            network: "regtest".into(),
            key_file: None,
            utxo: String::new(),
            utxo_value_sat: 0,
            fee_sat: 1_000,
            broadcast_command: Vec::new(),
            block_command: Vec::new(),
            poll_ms: 10_000,
        }
    }
}

impl Default for BuilderConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            firehose_partitions: 1,
            enabled: true,
            max_block_messages: 10_000,
            max_block_bytes: 4 << 20,
            max_block_delay_ms: 250,
            stall_after_ms: 5_000,
            lease_ms: 3_000,
            transaction_timeout_ms: blockpost_core::transaction::DEFAULT_TRANSACTION_TIMEOUT_MS,
            anchor: AnchorConfig::default(),
            delivery: DeliveryConfig::default(),
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
        let a = &self.anchor;
        match a.sink.as_str() {
            "off" | "file" => {}
            "bitcoin" => {
                let b = &a.bitcoin;
                if b.key_file.is_none()
                    || b.utxo.is_empty()
                    || b.broadcast_command.is_empty()
                    || b.block_command.is_empty()
                {
                    return Err("builder.anchor.sink = \"bitcoin\" needs bitcoin.key_file, utxo, utxo_value_sat, broadcast_command and block_command".into());
                }
                if !["bitcoin", "testnet", "signet", "regtest"].contains(&b.network.as_str()) {
                    return Err(format!(
                        "builder.anchor.bitcoin.network {:?} is not bitcoin, testnet, signet or regtest",
                        b.network
                    ));
                }
                if b.poll_ms == 0 {
                    return Err("builder.anchor.bitcoin.poll_ms must be at least 1".into());
                }
            }
            other => {
                return Err(format!(
                    "builder.anchor.sink {other:?} is not file, bitcoin or off"
                ));
            }
        }
        if a.every_blocks < 2 || a.every_ms == 0 {
            return Err("builder.anchor.every_blocks must be at least 2 (each anchor's record takes a block) and every_ms at least 1".into());
        }
        if !(300..=60_000).contains(&self.lease_ms) {
            return Err(format!(
                "builder.lease_ms is {}: it must be between 300 and 60000",
                self.lease_ms
            ));
        }
        if self.stall_after_ms <= self.max_block_delay_ms {
            return Err(format!(
                "builder.stall_after_ms ({}) must be longer than max_block_delay_ms ({})",
                self.stall_after_ms, self.max_block_delay_ms
            ));
        }
        // Room for the time-out closings the rules add to any block.
        let most_leaves = blockpost_core::block::MAX_BLOCK_LEAVES as usize / 2;
        if self.max_block_messages > most_leaves {
            return Err(format!(
                "builder.max_block_messages is at most {most_leaves}"
            ));
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
