//! The directory's error type and its single mapping to gRPC status codes.

/// Everything a directory operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A check from `blockpost-core` failed (address, key, signature, evidence, entry
    /// authorisation, clock, proof, encoding).
    #[error(transparent)]
    Core(#[from] blockpost_core::Error),
    /// The log on disk failed or is damaged.
    #[error(transparent)]
    Storage(#[from] blockpost_storage::Error),
    /// A request that is malformed in a way not covered by a core check.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A field over its size limit.
    #[error("{field} is too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The address is bound already (or was, and has been revoked).
    #[error("address {0} is already registered")]
    AddressTaken(String),
    /// No binding exists for the address.
    #[error("address {0} is not registered")]
    NotFound(String),
    /// The binding was revoked; nothing more can be done with it.
    #[error("address {address} was revoked at log index {at}")]
    KeyRevoked {
        /// The address.
        address: String,
        /// Index of the revocation entry.
        at: u64,
    },
    /// The request names a binding that is no longer the current one.
    #[error("stale request: current entry of {address} is {current}, request names {named}")]
    Stale {
        /// The address.
        address: String,
        /// The current entry index.
        current: u64,
        /// The index the request named.
        named: u64,
    },
    /// The operator requires evidence and none was given.
    #[error(
        "this directory only accepts names backed by evidence (an X.509 chain to a configured trust anchor)"
    )]
    EvidenceRequired,
    /// A proof or range request beyond the log.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Certificate issuance failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The node is shutting down.
    #[error("directory is shutting down")]
    ShuttingDown,
    /// Configuration error.
    #[error("config: {0}")]
    Config(String),
    /// Too many unverified registrations (`[directory] unverified_*`); nothing was logged.
    #[error(
        "unverified registrations from {scope} are limited to {limit} a {per}; retry in {} s, \
         or register with evidence of your real name",
        secs(.retry_after_ms)
    )]
    RateLimited {
        /// Whose limit: "this peer" or "all peers".
        scope: &'static str,
        /// Registrations admitted per `per`, after a burst.
        limit: u64,
        /// "minute" or "second".
        per: &'static str,
        /// How long until the request would be admitted; also in the status metadata as
        /// `grpc-retry-pushback-ms`.
        retry_after_ms: u64,
    },
}

/// The gRPC metadata key of a retry hint in milliseconds (gRPC's retry pushback).
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// Milliseconds as seconds with one decimal, rounded up.
fn secs(ms: &u64) -> String {
    let tenths = ms.div_ceil(100);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code for this error: the one table from error to code.
    pub fn code(&self) -> tonic::Code {
        use blockpost_core::Error as C;
        use blockpost_storage::Error as S;
        use tonic::Code;
        match self {
            Error::Core(C::SignatureInvalid(_) | C::Evidence(_)) => Code::PermissionDenied,
            Error::Core(
                C::InvalidAddress { .. }
                | C::InvalidRealName(_)
                | C::InvalidKey { .. }
                | C::NotCanonical { .. }
                | C::Malformed { .. }
                | C::TooLarge { .. }
                | C::ClockSkew { .. },
            ) => Code::InvalidArgument,
            Error::Core(C::KeyRevoked { .. } | C::WrongPredecessor { .. }) => {
                Code::FailedPrecondition
            }
            Error::Core(C::InclusionProofMismatch { .. } | C::ConsistencyProofMismatch { .. }) => {
                Code::DataLoss
            }
            // An entry the directory built that its own rules refuse is a bug here.
            Error::Core(_) => Code::Internal,
            Error::Storage(S::OutOfRange(_)) => Code::OutOfRange,
            Error::Storage(S::Io(io)) if disk_full(io) => Code::ResourceExhausted,
            Error::Storage(S::Corrupted(_)) => Code::DataLoss,
            Error::Storage(_) => Code::Internal,
            Error::InvalidRequest(_) | Error::TooLarge { .. } => Code::InvalidArgument,
            Error::AddressTaken(_) => Code::AlreadyExists,
            Error::NotFound(_) => Code::NotFound,
            Error::KeyRevoked { .. } | Error::Stale { .. } | Error::EvidenceRequired => {
                Code::FailedPrecondition
            }
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ShuttingDown => Code::Unavailable,
            Error::Certificate(_) | Error::Config(_) => Code::Internal,
            Error::RateLimited { .. } => Code::ResourceExhausted,
        }
    }
}

impl Error {
    /// The machine-readable reason, in the status's `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        use blockpost_core::Error as C;
        use blockpost_storage::Error as S;
        match self {
            Error::Core(C::SignatureInvalid(_)) => "SIGNATURE_INVALID",
            Error::Core(C::Evidence(_)) => "EVIDENCE_REJECTED",
            Error::Core(C::InvalidAddress { .. }) => "INVALID_ADDRESS",
            Error::Core(C::InvalidRealName(_)) => "INVALID_REAL_NAME",
            Error::Core(C::InvalidKey { .. }) => "INVALID_KEY",
            Error::Core(C::TooLarge { .. }) | Error::TooLarge { .. } => "TOO_LARGE",
            Error::Core(C::ClockSkew { .. }) => "CLOCK_SKEW",
            Error::Core(C::NotCanonical { .. } | C::Malformed { .. })
            | Error::InvalidRequest(_) => "INVALID_REQUEST",
            Error::Core(C::KeyRevoked { .. }) | Error::KeyRevoked { .. } => "REVOKED",
            Error::Core(C::WrongPredecessor { .. }) | Error::Stale { .. } => "STALE",
            Error::Core(C::InclusionProofMismatch { .. } | C::ConsistencyProofMismatch { .. })
            | Error::Storage(S::Corrupted(_)) => "DATA_LOSS",
            Error::Storage(S::OutOfRange(_)) | Error::OutOfRange(_) => "OUT_OF_RANGE",
            Error::Storage(S::Io(io)) if disk_full(io) => "STORAGE_FULL",
            Error::AddressTaken(_) => "ADDRESS_TAKEN",
            Error::NotFound(_) => "NOT_REGISTERED",
            Error::EvidenceRequired => "EVIDENCE_REQUIRED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::Core(_) | Error::Storage(_) | Error::Certificate(_) | Error::Config(_) => {
                "INTERNAL"
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = blockpost_proto::status::with_reason(e.code(), e.to_string(), e.reason());
        if let Error::RateLimited { retry_after_ms, .. } = e {
            status.metadata_mut().insert(
                RETRY_PUSHBACK_MS,
                tonic::metadata::MetadataValue::from(retry_after_ms),
            );
        }
        status
    }
}

/// An OS error passed on to several waiters: its code and the original message.
#[derive(Debug)]
pub(crate) struct OsError {
    pub(crate) code: i32,
    pub(crate) msg: String,
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for OsError {}

/// Whether an I/O error means the disk (or the file size limit) is full.
pub(crate) fn disk_full(e: &std::io::Error) -> bool {
    let code = e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<OsError>())
            .map(|o| o.code)
    });
    // ENOSPC, EDQUOT, EFBIG.
    matches!(code, Some(28 | 122 | 27))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::FileTooLarge
        )
}
