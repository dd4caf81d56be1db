//! The gateway's error type and its single mapping to gRPC status codes.

/// Why an envelope or a request was refused, or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A core rule refused it (address, key, envelope rule, size, clock, signature).
    #[error(transparent)]
    Core(#[from] blockpost_core::Error),
    /// Malformed input.
    #[error("invalid envelope: {0}")]
    Invalid(String),
    /// The envelope's signature does not verify with the sender's current key.
    #[error("signature invalid: {0}")]
    SignatureInvalid(String),
    /// The sender is not in the directory.
    #[error("unknown sender {0}: not registered in the directory")]
    UnknownSender(String),
    /// A recipient is not in the directory.
    #[error("unknown recipient {0}: not registered in the directory")]
    UnknownRecipient(String),
    /// The binding was revoked.
    #[error("{role} {address} is revoked")]
    Revoked {
        /// `sender` or `recipient`.
        role: &'static str,
        /// The address.
        address: String,
    },
    /// The envelope names a key that is not the current one.
    #[error("{role} {address}: key index {named} is not the current key (current: {current})")]
    StaleKey {
        /// `sender` or `recipient`.
        role: &'static str,
        /// The address.
        address: String,
        /// The index named.
        named: u64,
        /// The current index.
        current: u64,
    },
    /// The nonce was used before by this sender.
    #[error("replay: sender {sender} already used nonce {nonce}")]
    Replay {
        /// The sender.
        sender: String,
        /// The nonce.
        nonce: u64,
    },
    /// The inbox challenge was not answered correctly.
    #[error("inbox access denied: {0}")]
    InboxDenied(String),
    /// Another session is reading this inbox on this gateway.
    #[error("inbox {0} is being read by another session")]
    InboxBusy(String),
    /// The ledger takes no more messages for the envelope's transaction: it is closed (its
    /// closing record is in a block), or full.
    #[error(transparent)]
    TransactionClosed(#[from] blockpost_core::transaction::Closed),
    /// NATS failed or is unreachable.
    #[error("message bus: {0}")]
    Bus(String),
    /// The block builder is stalled: no receipt is issued while its promise (a block by
    /// the deadline) cannot be kept.
    #[error("no receipts while the block builder is stalled ({0}); retry later")]
    Stalled(String),
    /// Storage or config failure.
    #[error("gateway: {0}")]
    Internal(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code for this error.
    pub fn code(&self) -> tonic::Code {
        use blockpost_core::Error as C;
        use tonic::Code;
        match self {
            Error::Core(C::SignatureInvalid(_)) | Error::SignatureInvalid(_) => {
                Code::PermissionDenied
            }
            Error::Core(
                C::InvalidAddress { .. }
                | C::InvalidKey { .. }
                | C::Malformed { .. }
                | C::NotCanonical { .. }
                | C::InvalidRealName(_)
                | C::InvalidEnvelope(_)
                | C::TooLarge { .. }
                | C::ClockSkew { .. },
            ) => Code::InvalidArgument,
            Error::Core(_) => Code::Internal,
            Error::Invalid(_) => Code::InvalidArgument,
            Error::UnknownSender(_) | Error::UnknownRecipient(_) => Code::NotFound,
            Error::Revoked { .. } | Error::InboxDenied(_) => Code::PermissionDenied,
            Error::StaleKey { .. } | Error::InboxBusy(_) | Error::TransactionClosed(_) => {
                Code::FailedPrecondition
            }
            Error::Replay { .. } => Code::AlreadyExists,
            // JetStream out of storage: not a transient outage, but not the caller's fault.
            Error::Bus(m)
                if m.contains("insufficient resources")
                    || m.contains("storage resources exceeded") =>
            {
                Code::ResourceExhausted
            }
            Error::Bus(_) | Error::Stalled(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Turns any NATS error into [`Error::Bus`].
pub(crate) fn bus(e: impl std::fmt::Display) -> Error {
    Error::Bus(e.to_string())
}

/// A publish JetStream did not take, as [`Error::Bus`]. "No stream found" is what a
/// publish gets when no server answers for the stream: on a cluster, while it elects a
/// leader; the message says so.
pub(crate) fn publish_failed(e: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::context::PublishErrorKind;
    if e.kind() == PublishErrorKind::StreamNotFound {
        return Error::Bus(format!(
            "{e} (no JetStream server answers for the stream right now: a leader election \
             on a cluster takes a few seconds; retry the same envelope)"
        ));
    }
    bus(e)
}
