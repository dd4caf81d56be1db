//! The directory's error type and its single mapping to gRPC status codes.

/// Everything a directory operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A check from `blockpost-core` failed (address, key, signature, proof, encoding).
    #[error(transparent)]
    Core(#[from] blockpost_core::Error),
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
    /// A request signature that does not verify.
    #[error("signature invalid: {0}")]
    SignatureInvalid(String),
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
    /// Evidence that does not establish the name.
    #[error("evidence rejected: {0}")]
    Evidence(String),
    /// The operator requires evidence and none was given.
    #[error(
        "this directory only accepts names backed by evidence (an X.509 chain to a configured trust anchor)"
    )]
    EvidenceRequired,
    /// The request's timestamp is too far from the directory's clock.
    #[error(
        "timestamp {got_ms} ms is more than {skew_ms} ms away from the directory's clock {now_ms} ms"
    )]
    ClockSkew {
        /// Timestamp in the request.
        got_ms: i64,
        /// Directory time.
        now_ms: i64,
        /// Permitted skew.
        skew_ms: i64,
    },
    /// A proof or range request beyond the log.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Certificate issuance failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The log on disk is damaged or disagrees with a checkpoint it signed.
    #[error("log corrupted: {0}")]
    Corrupted(String),
    /// The node is shutting down.
    #[error("directory is shutting down")]
    ShuttingDown,
    /// Storage failure.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// Configuration error.
    #[error("config: {0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use blockpost_core::Error as C;
        use tonic::Code;
        let code = match &e {
            Error::Core(C::SignatureInvalid(_)) | Error::SignatureInvalid(_) => {
                Code::PermissionDenied
            }
            Error::Core(
                C::InvalidAddress { .. }
                | C::InvalidRealName(_)
                | C::InvalidKey { .. }
                | C::Malformed { .. },
            ) => Code::InvalidArgument,
            Error::Core(C::InclusionProofMismatch { .. } | C::ConsistencyProofMismatch { .. }) => {
                Code::DataLoss
            }
            Error::Core(_) => Code::Internal,
            Error::InvalidRequest(_) | Error::TooLarge { .. } | Error::ClockSkew { .. } => {
                Code::InvalidArgument
            }
            Error::AddressTaken(_) => Code::AlreadyExists,
            Error::NotFound(_) => Code::NotFound,
            Error::KeyRevoked { .. } | Error::Stale { .. } | Error::EvidenceRequired => {
                Code::FailedPrecondition
            }
            Error::Evidence(_) => Code::PermissionDenied,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ShuttingDown => Code::Unavailable,
            Error::Corrupted(_) => Code::DataLoss,
            Error::Certificate(_) | Error::Io(_) | Error::Config(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
