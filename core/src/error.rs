//! The one error type of `blockpost-core`.

/// What can go wrong when checking addresses, entries, proofs, checkpoints and key files.
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
    /// A checkpoint whose signature or format does not check out.
    #[error("checkpoint rejected: {0}")]
    CheckpointInvalid(String),
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
    /// A key file that cannot be read or decrypted.
    #[error("key file: {0}")]
    KeyFile(String),
    /// An I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
