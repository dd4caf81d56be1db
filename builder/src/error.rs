//! The builder's errors.

/// Why the builder cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block store on disk.
    #[error("block store: {0}")]
    Storage(#[from] blockpost_storage::Error),
    /// A stored block that does not verify.
    #[error("block store: {0}")]
    Corrupted(String),
    /// NATS.
    #[error("NATS: {0}")]
    Bus(String),
    /// Another builder published on the blocks stream: this one stands by.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A bad setting.
    #[error("builder config: {0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a `blockpost.v1.Ledger` request is refused or failed. Each kind has one gRPC code
/// and one machine-readable reason ([`LedgerError::reason`], in the status's
/// `google.rpc.ErrorInfo`): this is the service's one error-to-status table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger holds no block yet.
    #[error("the ledger holds no block yet")]
    Empty,
    /// No block at that height.
    #[error("no block at height {height}: the ledger holds {size} blocks")]
    NoBlock {
        /// The height asked.
        height: u64,
        /// Blocks in the ledger.
        size: u64,
    },
    /// No block has that id.
    #[error("no block has id {0}")]
    UnknownBlockId(String),
    /// The message is in no block (yet).
    #[error("message {0} is in no block")]
    MessageNotInBlock(String),
    /// No message of the transaction is in a block (yet).
    #[error("transaction {0} has no message in a block")]
    UnknownTransaction(String),
    /// The block is beyond the newest witnessed ledger checkpoint.
    #[error(
        "block {height} is not witnessed yet: the newest witnessed ledger checkpoint covers {witnessed} blocks"
    )]
    NotWitnessed {
        /// The block.
        height: u64,
        /// Blocks the newest witnessed checkpoint covers.
        witnessed: u64,
    },
    /// No ledger checkpoint is witnessed yet.
    #[error(
        "no ledger checkpoint of this node is witnessed yet (it has no witness configured, or none has cosigned)"
    )]
    NoWitnessedCheckpoint,
    /// An id that is not a SHA-256.
    #[error("{what} is 32 bytes (a SHA-256), not {len}")]
    BadId {
        /// "a block id", "a message id".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A block request that names no block.
    #[error("give a height, an id, or latest = true")]
    NoSelector,
    /// A transaction id out of bounds.
    #[error("a transaction id is 1 to {max} bytes, not {len}")]
    BadTransactionId {
        /// Its length.
        len: usize,
        /// The longest.
        max: usize,
    },
    /// A ledger size out of range for a proof.
    #[error("{0}")]
    BadRange(String),
    /// A page larger than the service gives.
    #[error("{what} {asked} is over the page size {max}")]
    PageTooLarge {
        /// "limit", "count".
        what: &'static str,
        /// Asked.
        asked: u32,
        /// The page size.
        max: u32,
    },
    /// Something stored or indexed that does not decode or is missing: the store is
    /// damaged.
    #[error("{0}")]
    Damaged(String),
    /// The block store or index failed.
    #[error(transparent)]
    Builder(#[from] Error),
}

impl LedgerError {
    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Empty
            | Self::NoBlock { .. }
            | Self::UnknownBlockId(_)
            | Self::MessageNotInBlock(_)
            | Self::UnknownTransaction(_) => Code::NotFound,
            Self::NotWitnessed { .. } | Self::NoWitnessedCheckpoint => Code::FailedPrecondition,
            Self::BadId { .. }
            | Self::NoSelector
            | Self::BadTransactionId { .. }
            | Self::PageTooLarge { .. } => Code::InvalidArgument,
            Self::BadRange(_) => Code::OutOfRange,
            Self::Damaged(_) => Code::DataLoss,
            Self::Builder(_) => Code::Internal,
        }
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "LEDGER_EMPTY",
            Self::NoBlock { .. } | Self::UnknownBlockId(_) => "BLOCK_NOT_FOUND",
            Self::MessageNotInBlock(_) => "MESSAGE_NOT_FOUND",
            Self::UnknownTransaction(_) => "TRANSACTION_NOT_FOUND",
            Self::NotWitnessed { .. } | Self::NoWitnessedCheckpoint => "NOT_WITNESSED",
            Self::BadId { .. } => "INVALID_ID",
            Self::NoSelector => "NO_SELECTOR",
            Self::BadTransactionId { .. } => "INVALID_TRANSACTION_ID",
            Self::PageTooLarge { .. } => "PAGE_TOO_LARGE",
            Self::BadRange(_) => "OUT_OF_RANGE",
            Self::Damaged(_) => "DATA_LOSS",
            Self::Builder(_) => "INTERNAL",
        }
    }
}

impl From<LedgerError> for tonic::Status {
    fn from(e: LedgerError) -> Self {
        blockpost_proto::status::with_reason(e.code(), e.to_string(), e.reason())
    }
}
