//! The gateway's error type and its single mapping to gRPC status codes.

/// Why an envelope or a request was refused, or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A core rule refused it (address, key, envelope rule, size, clock, signature).
    #[error(transparent)]
    Core(#[from] blockpost_core::Error),
    /// The client's request stream failed before it said anything.
    #[error("the request stream failed: {0}")]
    Stream(Box<tonic::Status>),
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
    /// A plaintext trade or settlement instruction names parties the envelope's sender
    /// and recipients are not (or does not name its sender).
    #[error("the {kind}'s parties: {error}")]
    Parties {
        /// `trade` or `settlement instruction`.
        kind: &'static str,
        /// The field and what is wrong.
        error: Box<blockpost_core::settle::SettleError>,
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
    InboxDenied(InboxDenial),
    /// Another session is reading this inbox on this gateway.
    #[error("inbox {0} is being read by another session")]
    InboxBusy(String),
    /// The ledger takes no more messages for the envelope's transaction: it is closed (its
    /// closing record is in a block), or full.
    #[error(transparent)]
    TransactionClosed(#[from] blockpost_core::transaction::Closed),
    /// NATS failed, is unreachable, or the gateway cannot take more now: retry.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    /// The block builder is stalled: no receipt is issued while its promise (a block by
    /// the deadline) cannot be kept.
    #[error("no receipts while the block builder is stalled ({0}); retry later")]
    Stalled(String),
    /// The gateway's configuration is not usable.
    #[error("gateway config: {0}")]
    Config(String),
    /// The gateway's batch signature checker is gone (the gateway is shutting down).
    #[error("the gateway's signature checker stopped")]
    CheckerStopped,
    /// The gateway's receipt signer is gone (the gateway is shutting down).
    #[error("the gateway's receipt signer stopped")]
    SignerStopped,
    /// The client went away while the gateway answered.
    #[error("the client went away")]
    ClientGone,
    /// A firehose partition that does not exist.
    #[error(
        "partition {asked} does not exist: this firehose has {partitions} partition(s), 0 to {}",
        .partitions.saturating_sub(1)
    )]
    NoPartition {
        /// The partition asked.
        asked: u32,
        /// Partitions of the firehose.
        partitions: u32,
    },
    /// The gateway serves as many firehose streams as it may (`per_peer`: to this peer).
    #[error(
        "this gateway serves at most {max} firehose streams at once{}; retry later",
        .per_peer.map(|p| format!(" to one peer ({p})")).unwrap_or_default()
    )]
    TooManyFollowers {
        /// The limit.
        max: usize,
        /// The peer, when its own limit is reached.
        per_peer: Option<std::net::IpAddr>,
    },
    /// A firehose stream read too slowly: it ends.
    #[error(
        "this firehose stream was read too slowly (its {room} bytes of buffer stayed full for {ms} ms): it ends here; follow again from the next sequence"
    )]
    TooSlow {
        /// The buffer's bytes.
        room: usize,
        /// How long it stayed full.
        ms: u128,
    },
    /// Reading the firehose for a follower failed.
    #[error("reading the firehose failed ({0}); follow again from the next sequence")]
    FollowFailed(String),
}

/// Why an inbox session is refused ([`Error::InboxDenied`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxDenial {
    /// The first message was not a hello.
    #[error("the first message must be a hello")]
    NoHello,
    /// No hello came in time.
    #[error("no hello within {0} s")]
    HelloTimeout(u64),
    /// The address is not in the directory.
    #[error("{0} is not registered")]
    Unregistered(String),
    /// The address is revoked.
    #[error("{0} is revoked")]
    Revoked(String),
    /// The signature is not one.
    #[error("malformed signature")]
    MalformedSignature,
    /// The challenge was not signed by the address's current key.
    #[error("the challenge was not signed by {0}'s current key")]
    WrongKey(String),
}

/// Why the gateway cannot take a request now; each is worth a retry ([`Error::Bus`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The connection to NATS is down.
    #[error("not connected to NATS right now; retry")]
    Disconnected,
    /// The connection to NATS went down while the envelope was handled.
    #[error(
        "the connection to NATS was lost while this envelope was handled; retry (a retry of the same envelope is safe)"
    )]
    Lost,
    /// No JetStream server answers for the stream (a leader election on a cluster).
    #[error(
        "{0} (no JetStream server answers for the stream right now: a leader election on a cluster takes a few seconds; retry the same envelope)"
    )]
    NoStream(String),
    /// JetStream is out of storage (its error codes 10002, 10023, 10047).
    #[error("JetStream is out of storage: {0}")]
    StorageFull(String),
    /// Too many requests wait for the directory replica.
    #[error(
        "{waiters} requests or {mib} MiB are already waiting for the directory replica to catch up; retry"
    )]
    ReplicaBusy {
        /// Requests that may wait.
        waiters: usize,
        /// MiB they may hold.
        mib: usize,
    },
    /// The replica saw two histories of the directory log.
    #[error(
        "the directory replica saw conflicting entries on the stream; refusing until it is resolved"
    )]
    ReplicaConflict,
    /// The gateway holds as many envelope bytes as it may.
    #[error("the gateway holds {0} MiB of envelopes being checked already; retry")]
    Overloaded(usize),
    /// Any other NATS failure.
    #[error("{0}")]
    Nats(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code for this error: the service's one table from error to code.
    pub fn code(&self) -> tonic::Code {
        use blockpost_core::Error as C;
        use tonic::Code;
        match self {
            Error::Core(C::SignatureInvalid(_)) => Code::PermissionDenied,
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
            Error::Stream(s) => s.code(),
            Error::UnknownSender(_) | Error::UnknownRecipient(_) => Code::NotFound,
            Error::Revoked { .. } | Error::InboxDenied(_) => Code::PermissionDenied,
            Error::StaleKey { .. } | Error::InboxBusy(_) | Error::TransactionClosed(_) => {
                Code::FailedPrecondition
            }
            Error::Replay { .. } => Code::AlreadyExists,
            // JetStream out of storage: not a transient outage, but not the caller's fault.
            Error::Bus(BusError::StorageFull(_)) => Code::ResourceExhausted,
            Error::Bus(_) | Error::Stalled(_) | Error::CheckerStopped | Error::SignerStopped => {
                Code::Unavailable
            }
            Error::ClientGone => Code::Cancelled,
            Error::Config(_) => Code::Internal,
            Error::NoPartition { .. } | Error::Parties { .. } => Code::InvalidArgument,
            Error::TooManyFollowers { .. } | Error::TooSlow { .. } => Code::ResourceExhausted,
            Error::FollowFailed(_) => Code::Unavailable,
        }
    }

    /// The machine-readable reason, in the status's `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        use blockpost_core::Error as C;
        match self {
            Error::Core(C::SignatureInvalid(_)) => "SIGNATURE_INVALID",
            Error::Core(C::InvalidAddress { .. }) => "INVALID_ADDRESS",
            Error::Core(C::InvalidEnvelope(e)) => {
                use blockpost_core::EnvelopeError as E;
                match e {
                    E::Content { .. } => "INVALID_CONTENT",
                    E::NoRecipients => "NO_RECIPIENTS",
                    E::TooManyRecipients { .. } => "TOO_MANY_RECIPIENTS",
                    E::DuplicateRecipient(_) => "DUPLICATE_RECIPIENT",
                    E::Text { .. } => "INVALID_TEXT",
                    E::Deadline { .. } => "INVALID_DEADLINE",
                    E::UnknownKind(_) => "UNKNOWN_KIND",
                    E::NoBody => "NO_BODY",
                    E::Ciphertexts => "CIPHERTEXTS_MISADDRESSED",
                    E::EncapsulatedKey { .. } => "INVALID_ENCAPSULATED_KEY",
                    E::Settlement { .. } => "INVALID_SETTLEMENT",
                    E::Delivery(_) => "INVALID_DELIVERY",
                    _ => "INVALID_ENVELOPE",
                }
            }
            Error::Core(C::TooLarge { .. }) => "TOO_LARGE",
            Error::Core(C::ClockSkew { .. }) => "CLOCK_SKEW",
            Error::Core(C::NotCanonical { .. }) => "NOT_CANONICAL",
            Error::Core(_) => "INVALID",
            Error::Stream(_) => "STREAM_FAILED",
            Error::UnknownSender(_) => "UNKNOWN_SENDER",
            Error::UnknownRecipient(_) => "UNKNOWN_RECIPIENT",
            Error::Revoked { .. } => "REVOKED",
            Error::StaleKey { .. } => "STALE_KEY",
            Error::Replay { .. } => "REPLAY",
            Error::Parties { .. } => "SETTLEMENT_PARTIES",
            Error::InboxDenied(_) => "INBOX_DENIED",
            Error::InboxBusy(_) => "INBOX_BUSY",
            Error::TransactionClosed(_) => "TRANSACTION_CLOSED",
            Error::Bus(BusError::StorageFull(_)) => "STORAGE_FULL",
            Error::Bus(BusError::ReplicaConflict) => "DIRECTORY_CONFLICT",
            Error::Bus(BusError::ReplicaBusy { .. } | BusError::Overloaded(_)) => "OVERLOADED",
            Error::Bus(_) => "BUS_UNAVAILABLE",
            Error::Stalled(_) => "BUILDER_STALLED",
            Error::CheckerStopped | Error::SignerStopped => "SHUTTING_DOWN",
            Error::ClientGone => "CANCELLED",
            Error::Config(_) => "INTERNAL",
            Error::NoPartition { .. } => "NO_PARTITION",
            Error::TooManyFollowers { .. } => "TOO_MANY_FOLLOWERS",
            Error::TooSlow { .. } => "TOO_SLOW",
            Error::FollowFailed(_) => "FOLLOW_FAILED",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        blockpost_proto::status::with_reason(e.code(), e.to_string(), e.reason())
    }
}

/// Turns any NATS error into [`Error::Bus`].
pub(crate) fn bus(e: impl std::fmt::Display) -> Error {
    BusError::Nats(e.to_string()).into()
}

/// A publish JetStream did not take, as [`Error::Bus`], told apart by its kind and its
/// JetStream error code: "no stream found" is what a publish gets when no server answers
/// for the stream (on a cluster, while it elects a leader); codes 10002, 10023 and 10047
/// say JetStream is out of storage.
pub(crate) fn publish_failed(e: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::PublishErrorKind;
    if e.kind() == PublishErrorKind::StreamNotFound {
        return BusError::NoStream(e.to_string()).into();
    }
    let code = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .map(|j| j.error_code());
    if matches!(
        code,
        Some(
            ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
                | ErrorCode::INSUFFICIENT_RESOURCES
                | ErrorCode::STORAGE_RESOURCES_EXCEEDED
        )
    ) {
        return BusError::StorageFull(e.to_string()).into();
    }
    bus(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::EnvelopeError;
    use tonic::Code;

    use super::*;

    fn bus() -> Vec<BusError> {
        vec![
            BusError::Disconnected,
            BusError::Lost,
            BusError::NoStream("x".into()),
            BusError::StorageFull("x".into()),
            BusError::ReplicaBusy { waiters: 1, mib: 1 },
            BusError::ReplicaConflict,
            BusError::Overloaded(1),
            BusError::Nats("x".into()),
        ]
    }

    #[test]
    fn the_bus_is_retryable_except_when_jetstream_is_full() {
        for b in bus() {
            let full = matches!(b, BusError::StorageFull(_));
            let e = Error::Bus(b);
            let want = if full {
                Code::ResourceExhausted
            } else {
                Code::Unavailable
            };
            assert_eq!(e.code(), want, "{e}");
        }
    }

    #[test]
    fn every_status_carries_its_reason_and_envelope_rules_are_told_apart() {
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Error::Core(EnvelopeError::NoBody.into()),
                Code::InvalidArgument,
                "NO_BODY",
            ),
            (
                Error::Core(EnvelopeError::DuplicateRecipient("b".into()).into()),
                Code::InvalidArgument,
                "DUPLICATE_RECIPIENT",
            ),
            (
                Error::Core(EnvelopeError::Ciphertexts.into()),
                Code::InvalidArgument,
                "CIPHERTEXTS_MISADDRESSED",
            ),
            (
                Error::UnknownSender("a".into()),
                Code::NotFound,
                "UNKNOWN_SENDER",
            ),
            (
                Error::Replay {
                    sender: "a".into(),
                    nonce: 1,
                },
                Code::AlreadyExists,
                "REPLAY",
            ),
            (
                blockpost_core::transaction::Closed::Finished("t".into()).into(),
                Code::FailedPrecondition,
                "TRANSACTION_CLOSED",
            ),
            (
                Error::InboxDenied(InboxDenial::WrongKey("a".into())),
                Code::PermissionDenied,
                "INBOX_DENIED",
            ),
            (
                Error::TooSlow { room: 1, ms: 1 },
                Code::ResourceExhausted,
                "TOO_SLOW",
            ),
            (
                Error::Stalled("why".into()),
                Code::Unavailable,
                "BUILDER_STALLED",
            ),
            (
                BusError::ReplicaConflict.into(),
                Code::Unavailable,
                "DIRECTORY_CONFLICT",
            ),
        ];
        for (e, code, reason) in cases {
            let text = e.to_string();
            let st = tonic::Status::from(e);
            assert_eq!(st.code(), code, "{text}");
            assert_eq!(st.message(), text);
            assert_eq!(
                blockpost_proto::status::reason(&st).as_deref(),
                Some(reason),
                "{text}"
            );
        }
    }

    #[test]
    fn a_nats_error_that_is_not_a_publish_is_unavailable() {
        let e = super::bus("connection reset");
        assert!(matches!(e, Error::Bus(BusError::Nats(_))));
        assert_eq!(e.reason(), "BUS_UNAVAILABLE");
    }
}
