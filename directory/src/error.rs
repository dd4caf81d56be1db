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
    InvalidRequest(InvalidRequest),
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
    OutOfRange(OutOfRange),
    /// Certificate issuance failed.
    #[error("certificate: {what}")]
    Certificate {
        /// What was being made or read.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: CertificateError,
    },
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

/// How a request is malformed beyond what core checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// A second (evidence) signature came without the chain it would be checked against.
    #[error("evidence signature given without an evidence chain")]
    EvidenceSignatureWithoutChain,
    /// A key field of the wrong length.
    #[error("{field} is {len} bytes, not 32")]
    KeyLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A range with nothing in it.
    #[error("empty range [{start}, {end})")]
    EmptyRange {
        /// First index asked for.
        start: u64,
        /// One past the last.
        end: u64,
    },
}

/// A proof or range request the log cannot answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutOfRange {
    /// A tree size or index beyond the newest checkpoint.
    #[error("{what} {asked} is beyond the newest checkpoint ({head})")]
    BeyondHead {
        /// "tree size" or "start".
        what: &'static str,
        /// What was asked for.
        asked: u64,
        /// The newest checkpoint's size.
        head: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("from size {from} is larger than to size {to}")]
    Reversed {
        /// The older size asked for.
        from: u64,
        /// The newer size asked for.
        to: u64,
    },
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// rcgen refused the parameters or the key.
    #[error(transparent)]
    Rcgen(#[from] rcgen::Error),
    /// The node key could not be encoded as PKCS#8.
    #[error(transparent)]
    Pkcs8(#[from] pkcs8::Error),
    /// A time outside what a certificate can hold.
    #[error(transparent)]
    Time(#[from] time::error::ComponentRange),
    /// A TLS server certificate with no name to be issued for.
    #[error("no server name given")]
    NoName,
}

impl Error {
    /// A certificate error with what was being made.
    pub(crate) fn certificate(what: &'static str) -> impl Fn(CertificateError) -> Error {
        move |source| Error::Certificate { what, source }
    }
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
            Error::Certificate { .. } | Error::Config(_) => Code::Internal,
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
            Error::Core(_) | Error::Storage(_) | Error::Certificate { .. } | Error::Config(_) => {
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
