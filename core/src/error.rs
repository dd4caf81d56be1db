//! The one error type of `blockpost-core`.

/// What can go wrong when checking addresses, entries, envelopes, proofs, checkpoints and
/// key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address that is not `[a-z0-9][a-z0-9-]{0,62}`.
    #[error("invalid address {address:?}: {why}")]
    InvalidAddress {
        /// The rejected input.
        address: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A real name that is empty, too long or holds control characters.
    #[error("invalid real name: {0}")]
    InvalidRealName(&'static str),
    /// A key of the wrong length or not a valid curve point.
    #[error("invalid {kind} key: {why}")]
    InvalidKey {
        /// `ed25519` or `x25519`.
        kind: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A signature that does not verify.
    #[error("signature invalid: {0}")]
    SignatureInvalid(&'static str),
    /// Bytes that do not decode as the expected message.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The decoder's complaint.
        why: String,
    },
    /// Signed bytes that are not the canonical protobuf encoding of what they decode to
    /// (unknown fields, fields out of order, default values written out, ...).
    #[error("{what} is not in canonical protobuf encoding (unknown or padded fields?)")]
    NotCanonical {
        /// Which message.
        what: &'static str,
    },
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
    /// An envelope that breaks a rule other than size or signature.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    /// A timestamp too far from the checker's clock.
    #[error("timestamp {got_ms} ms is more than {skew_ms} ms away from the clock {now_ms} ms")]
    ClockSkew {
        /// The timestamp checked.
        got_ms: i64,
        /// The checker's time.
        now_ms: i64,
        /// Permitted distance.
        skew_ms: u64,
    },
    /// Evidence for a real name that does not establish it.
    #[error("evidence rejected: {0}")]
    Evidence(String),
    /// A log entry that says something its signed request does not.
    #[error("log entry {field} does not match its signed request")]
    EntryMismatch {
        /// The field that differs.
        field: &'static str,
    },
    /// A log entry that does not follow the binding it claims to supersede.
    #[error("entry for {address} does not follow its binding: {why}")]
    WrongPredecessor {
        /// The address.
        address: String,
        /// What is wrong.
        why: String,
    },
    /// An entry for a binding that was revoked.
    #[error("address {address} was revoked at log index {at}")]
    KeyRevoked {
        /// The address.
        address: String,
        /// Index of the revocation entry.
        at: u64,
    },
    /// An entry applied out of log order.
    #[error("entry {got} applied out of order: the next entry is {expected}")]
    OutOfOrder {
        /// The index the state expects next.
        expected: u64,
        /// The index offered.
        got: u64,
    },
    /// A checkpoint whose signature or format does not check out.
    #[error("checkpoint rejected: {0}")]
    CheckpointInvalid(String),
    /// A checkpoint without the cosignatures a client's witness policy requires.
    #[error(
        "the checkpoint of size {size} carries {have} valid cosignature(s) of trusted witnesses; {need} required"
    )]
    NotWitnessed {
        /// The checkpoint's size line.
        size: String,
        /// Valid cosignatures of trusted witnesses.
        have: usize,
        /// Required.
        need: usize,
    },
    /// An inclusion proof that does not lead to the checkpoint's root.
    #[error("inclusion proof for leaf {index} does not match the checkpoint of size {tree_size}")]
    InclusionProofMismatch {
        /// Leaf index.
        index: u64,
        /// Size of the tree the proof was checked against.
        tree_size: u64,
    },
    /// A consistency proof that does not connect two checkpoints.
    #[error(
        "consistency proof from size {from} to size {to} does not verify: the log may have been rewritten"
    )]
    ConsistencyProofMismatch {
        /// Older size.
        from: u64,
        /// Newer size.
        to: u64,
    },
    /// A key file that cannot be decoded or decrypted.
    #[error("key file: {0}")]
    KeyFile(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
