//! The auditor's errors.

/// Why the auditor cannot start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node's gRPC answers (pinned keys, directory, gateway, ledger).
    #[error("node: {0}")]
    Node(#[from] blockpost_client::Error),
    /// NATS.
    #[error("NATS: {0}")]
    Bus(String),
    /// A receipt that does not verify against the pinned gateway key.
    #[error("receipt: {0}")]
    BadReceipt(#[source] blockpost_core::Error),
    /// A receipt whose message id is not a SHA-256.
    #[error("receipt: its message id is {0} bytes, not 32")]
    BadReceiptId(usize),
    /// A settings file that cannot be used.
    #[error("auditor config: {0}")]
    Config(String),
    /// Serving its gRPC port failed.
    #[error("serving: {0}")]
    Serve(String),
    /// The auditor has stopped (its last handle was dropped, or its core failed).
    #[error("the auditor has stopped")]
    Stopped,
    /// The auditor's own files.
    #[error("{path}: {why}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a `blockpost.v1.Audit` request is refused or failed. Each kind has one gRPC code
/// and one machine-readable reason ([`AuditError::reason`], in the status's
/// `google.rpc.ErrorInfo`): this is the service's one error-to-status table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The auditor failed, or a receipt does not verify.
    #[error(transparent)]
    Auditor(#[from] Error),
    /// A checkpoint of neither of the node's logs.
    #[error("origin {0:?} is neither the node's directory log nor its ledger")]
    UnknownLog(String),
    /// A checkpoint not signed with the log's pinned key, or not a checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] blockpost_core::Error),
    /// A checkpoint that conflicts with what the auditor verified (the alert says how).
    #[error("not cosigned: {0}")]
    Conflicts(String),
    /// A checkpoint beyond what the auditor has replayed: ask again.
    #[error(
        "not verified yet: the auditor has replayed {replayed} of the {size} leaves of this checkpoint"
    )]
    NotYet {
        /// Leaves replayed.
        replayed: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// A checkpoint the auditor did not verify (another of its size came first, or it is
    /// too old).
    #[error(
        "the checkpoint of size {0} is not one the auditor verified (another of its size came first, or it is too old)"
    )]
    NotVerified(u64),
    /// The witness refuses: it cosigned a larger or a conflicting checkpoint.
    #[error(transparent)]
    WitnessRefused(#[from] crate::witness::Refused),
    /// A search query that does not parse.
    #[error("query: {0}")]
    BadQuery(String),
    /// A request without its receipt.
    #[error("no receipt")]
    NoReceipt,
    /// The node's ledger did not give a search hit's proofs.
    #[error("the proofs of message {id}: {source}")]
    ProofsUnavailable {
        /// The message (hex).
        id: String,
        /// Why.
        source: blockpost_client::Error,
    },
    /// The search index holds something that is not a message id.
    #[error("the search index holds a message id that is not 32 bytes: {0}")]
    IndexDamaged(String),
    /// A blocking task of the auditor panicked or was cancelled.
    #[error("auditor task: {0}")]
    Task(String),
}

impl AuditError {
    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Auditor(Error::BadReceipt(_) | Error::BadReceiptId(_))
            | Self::UnknownLog(_)
            | Self::Checkpoint(_)
            | Self::BadQuery(_)
            | Self::NoReceipt => Code::InvalidArgument,
            Self::Conflicts(_) | Self::NotVerified(_) | Self::WitnessRefused(_) => {
                Code::FailedPrecondition
            }
            Self::NotYet { .. }
            | Self::ProofsUnavailable { .. }
            | Self::Auditor(Error::Stopped) => Code::Unavailable,
            Self::IndexDamaged(_) => Code::DataLoss,
            Self::Auditor(_) | Self::Task(_) => Code::Internal,
        }
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Auditor(Error::BadReceipt(_) | Error::BadReceiptId(_)) => "INVALID_RECEIPT",
            Self::UnknownLog(_) => "UNKNOWN_LOG",
            Self::Checkpoint(_) => "CHECKPOINT_INVALID",
            Self::Conflicts(_) => "CHECKPOINT_CONFLICT",
            Self::NotYet { .. } => "NOT_YET_VERIFIED",
            Self::NotVerified(_) => "NOT_VERIFIED",
            Self::WitnessRefused(_) => "WITNESS_REFUSED",
            Self::BadQuery(_) => "INVALID_QUERY",
            Self::NoReceipt => "NO_RECEIPT",
            Self::ProofsUnavailable { .. } => "PROOFS_UNAVAILABLE",
            Self::IndexDamaged(_) => "DATA_LOSS",
            Self::Auditor(Error::Stopped) => "STOPPED",
            Self::Auditor(_) | Self::Task(_) => "INTERNAL",
        }
    }
}

impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        blockpost_proto::status::with_reason(e.code(), e.to_string(), e.reason())
    }
}
