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
    InvalidEnvelope(EnvelopeError),
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
    Evidence(EvidenceError),
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
    /// A checkpoint, signed note or cosignature whose signature or format does not check
    /// out.
    #[error("checkpoint rejected: {0}")]
    CheckpointInvalid(CheckpointError),
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
    KeyFile(KeyFileError),
}

/// Which envelope rule an envelope breaks ([`Error::InvalidEnvelope`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The signed content does not decode.
    #[error("content is not an EnvelopeContent: {why}")]
    Content {
        /// The decoder's complaint.
        why: String,
    },
    /// No recipient is listed.
    #[error("no recipients")]
    NoRecipients,
    /// More recipients than the limit.
    #[error("{count} recipients, limit {limit}")]
    TooManyRecipients {
        /// Recipients listed.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A recipient listed twice.
    #[error("recipient {0} listed twice")]
    DuplicateRecipient(String),
    /// A text field out of its bounds or with control characters.
    #[error("{field} must be {min} to {max} bytes without control characters")]
    Text {
        /// The field.
        field: String,
        /// Fewest bytes.
        min: usize,
        /// Most bytes.
        max: usize,
    },
    /// A transaction deadline not after the envelope's timestamp.
    #[error(
        "transaction deadline {deadline_ms} is not after the envelope's timestamp {timestamp_ms}"
    )]
    Deadline {
        /// The deadline asked.
        deadline_ms: i64,
        /// The envelope's timestamp.
        timestamp_ms: i64,
    },
    /// A message kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(i32),
    /// No body.
    #[error("no body")]
    NoBody,
    /// Ciphertexts not addressed to exactly the listed recipients, once each.
    #[error("the ciphertexts are not addressed to exactly the listed recipients")]
    Ciphertexts,
    /// The body of a `trade` or `settlement-instruction` is not a valid one: the field
    /// and what is wrong with it.
    #[error("invalid {kind}: {error}")]
    Settlement {
        /// `trade` or `settlement instruction`.
        kind: &'static str,
        /// The field and its problem.
        error: Box<crate::settle::SettleError>,
    },
    /// A ledger transaction to deliver that is not a valid one.
    #[error("delivery: {0}")]
    Delivery(crate::delivery::DeliveryError),
    /// An HPKE encapsulated key of the wrong length.
    #[error("encapsulated key for {recipient} is not {expected} bytes")]
    EncapsulatedKey {
        /// The recipient it is for.
        recipient: String,
        /// The length it must have.
        expected: usize,
    },
}

/// Why evidence for a real name does not establish it ([`Error::Evidence`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A trust anchor the operator configured that is unusable.
    #[error("trust anchor: {why}")]
    TrustAnchor {
        /// What is wrong with it.
        why: String,
    },
    /// No certificate in the chain.
    #[error("empty chain")]
    EmptyChain,
    /// The chain does not lead to a trust anchor, or a certificate in it does not hold.
    #[error("evidence chain: {why}")]
    Chain {
        /// What does not hold.
        why: String,
    },
    /// The chain's leaf does not name what the binding says.
    #[error("{why}")]
    Subject {
        /// What differs.
        why: String,
    },
    /// The evidence key (the chain's leaf key) is unusable or did not sign.
    #[error("evidence key: {why}")]
    Key {
        /// What is wrong with it.
        why: String,
    },
}

/// Why a checkpoint, signed note or cosignature does not check out
/// ([`Error::CheckpointInvalid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A log's verifier key that does not parse.
    #[error("verifier key {key:?}: {why}")]
    VerifierKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A witness's key that does not parse.
    #[error("witness key {key:?}: {why}")]
    WitnessKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A log origin or witness name that is not a signed-note key name.
    #[error("{0:?} is not a valid key name (no spaces or '+')")]
    KeyName(String),
    /// Bytes that are not a signed note, a checkpoint body or a signature line.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was expected.
        what: &'static str,
        /// The parser's complaint.
        why: String,
    },
    /// No valid signature of the log's key.
    #[error("signature: {why}")]
    Unsigned {
        /// The verifier's complaint.
        why: String,
    },
    /// The checkpoint's origin is not the verifier key's name.
    #[error("origin {origin:?} does not match the verifier key's name {key_name:?}")]
    Origin {
        /// The checkpoint's origin line.
        origin: String,
        /// The verifier key's name.
        key_name: String,
    },
    /// Two checkpoints of different logs compared.
    #[error("origin changed from {from:?} to {to:?}")]
    OriginChanged {
        /// The older checkpoint's origin.
        from: String,
        /// The newer one's.
        to: String,
    },
    /// A cosignature time past 2^63 - 1.
    #[error("cosignature time {0} is past 2^63-1")]
    TimeOutOfRange(u64),
    /// A cosignature of a trusted witness that does not verify.
    #[error("cosignature of witness {witness}: {why}")]
    Cosignature {
        /// The witness.
        witness: String,
        /// The verifier's complaint.
        why: String,
    },
    /// More witnesses required than keys given.
    #[error("{min} witnesses required but only {keys} witness keys given")]
    Policy {
        /// Required.
        min: usize,
        /// Keys given.
        keys: usize,
    },
}

/// Why a key file cannot be read ([`Error::KeyFile`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing it.
    #[error("{0}")]
    Io(std::io::Error),
    /// Not the expected PEM blocks.
    #[error("not a key file: {why}")]
    Format {
        /// What is wrong.
        why: String,
    },
    /// The passphrase does not open it (or it is damaged).
    #[error("cannot decrypt: wrong passphrase or corrupted file")]
    Decrypt,
    /// A block that is not the key it must be.
    #[error("{which} is not an {kind} key")]
    Key {
        /// Which block.
        which: &'static str,
        /// `ed25519` or `x25519`.
        kind: &'static str,
    },
    /// Encrypting it (key derivation or encoding).
    #[error("encrypting: {why}")]
    Encrypt {
        /// What failed.
        why: String,
    },
}

// The inner kind is part of the message, not a `source()`: printed as a chain, it would
// be said twice.
impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Self {
        Self::InvalidEnvelope(e)
    }
}

impl From<EvidenceError> for Error {
    fn from(e: EvidenceError) -> Self {
        Self::Evidence(e)
    }
}

impl From<CheckpointError> for Error {
    fn from(e: CheckpointError) -> Self {
        Self::CheckpointInvalid(e)
    }
}

impl From<std::io::Error> for KeyFileError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<KeyFileError> for Error {
    fn from(e: KeyFileError) -> Self {
        Self::KeyFile(e)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
