//! The client's error type: what the node refused, and every way an answer can fail
//! verification, each its own variant. The check that failed is the error's `source()`,
//! not repeated in its message (`{:#}` with anyhow prints the whole chain once).

use blockpost_core::Error as CoreError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is not a URL.
    #[error("bad endpoint {endpoint:?}: {why}")]
    BadEndpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// No connection to the node.
    #[error("cannot reach the node at {endpoint}: {why}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The transport's complaint.
        why: String,
    },
    /// The TLS settings or the node's certificate are not usable.
    #[error("TLS to {endpoint}: {why}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
    /// The node presents another TLS key than the one pinned (given, or recorded on first
    /// contact).
    #[error(
        "the node at {endpoint} now presents TLS key {presented}, but {pin_file} pinned {pinned}: \
         refusing to connect (delete that pin only if the operator announced a new key)"
    )]
    PinnedTlsKeyChanged {
        /// The endpoint.
        endpoint: String,
        /// The key it presented (`sha256:HEX` of its SubjectPublicKeyInfo).
        presented: String,
        /// The pinned key.
        pinned: String,
        /// Where the pin came from.
        pin_file: String,
    },
    /// The node answered with an error status.
    #[error("refused by the node: {:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// A checkpoint whose signature does not verify with the pinned log key.
    #[error("checkpoint from the directory does not verify")]
    CheckpointSignature(#[source] CoreError),
    /// A checkpoint without the cosignatures the client requires ([`crate::ConnectOptions`]).
    #[error("the {log} checkpoint is not witnessed as required")]
    NotWitnessed {
        /// "directory" or "ledger".
        log: &'static str,
        /// How many cosignatures it has and needs (a core error), or the node's answer
        /// that it holds no witnessed checkpoint covering what was asked (a status with
        /// reason `NOT_WITNESSED`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A witness key or count the client was given that cannot be used.
    #[error("witness policy: {0}")]
    WitnessPolicy(#[source] CoreError),
    /// A checkpoint that does not extend the newest one this client verified before.
    #[error("the directory's log is not consistent with what it showed before")]
    InconsistentCheckpoint(#[source] CoreError),
    /// An entry whose inclusion proof does not lead to the checkpoint.
    #[error("entry {index} is not in the log the directory signed")]
    BadProof {
        /// Leaf index.
        index: u64,
        /// The check that failed.
        source: CoreError,
    },
    /// A block or block header that does not verify (signature, fields, Merkle root,
    /// chain link).
    #[error("block {height} does not verify")]
    BadBlock {
        /// Its height.
        height: u64,
        /// The check that failed.
        source: CoreError,
    },
    /// An entry that does not decode or is not authorised by its signed request.
    #[error("directory entry {index} is not valid")]
    BadEntry {
        /// Leaf index.
        index: u64,
        /// The rule it breaks.
        source: CoreError,
    },
    /// An address's entries that do not form one authorised chain.
    #[error("history of {address} is broken")]
    BrokenHistory {
        /// The address.
        address: String,
        /// What is wrong.
        source: CoreError,
    },
    /// The node presents another log (origin or key) than the one pinned on first contact.
    #[error(
        "the directory at {} now presents log {:?} with key {:?}, but {} pinned log {:?} with key {:?}: \
         refusing to continue (delete that file only if the operator announced a new log)",
        .0.endpoint, .0.presented_origin, .0.presented_key, .0.state_file, .0.pinned_origin, .0.pinned_key
    )]
    PinnedKeyChanged(Box<PinnedKeyChanged>),
    /// The client's own state (pinned key, newest checkpoint) cannot be read or written.
    #[error("client state {path}: {why}")]
    State {
        /// The state file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// An answer that verifies but is not an answer to the request.
    #[error("unexpected answer from the node: {0}")]
    UnexpectedAnswer(String),
    /// A receipt that does not verify or is for another message.
    #[error("receipt from the gateway does not verify")]
    Receipt(#[source] CoreError),
    /// A message whose sender signature or rules do not check out.
    #[error("envelope from {sender} does not verify")]
    BadEnvelope {
        /// The claimed sender.
        sender: String,
        /// What failed.
        source: CoreError,
    },
    /// The caller's own input (a key that is not the current one, a revoked recipient, ...).
    #[error("{0}")]
    Refused(String),
    /// A trade or settlement instruction names parties the envelope's sender and
    /// recipients are not (checked before sending, as the gateway would).
    #[error("the {kind}'s parties: {error}")]
    Parties {
        /// `trade` or `settlement instruction`.
        kind: &'static str,
        /// The field and what is wrong.
        error: Box<blockpost_core::settle::SettleError>,
    },
    /// A key file that cannot be read, written or decrypted.
    #[error("{path}")]
    KeyFile {
        /// The key file.
        path: String,
        /// What failed.
        source: CoreError,
    },
    /// A keyring that cannot be read, written or used.
    #[error("{path}")]
    Keyring {
        /// The keyring file.
        path: String,
        /// What failed.
        source: crate::keyring::KeyringError,
    },
    /// A keyring file that cannot be read or written.
    #[error("{path}")]
    KeyringIo {
        /// The keyring file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// An evidence signer that failed.
    #[error("evidence signer: {0}")]
    EvidenceSigner(String),
    /// The caller's callback failed to write its output.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// Another core check (addresses, sealing).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// What a node presented, against what was pinned.
#[derive(Debug)]
pub struct PinnedKeyChanged {
    /// The endpoint.
    pub endpoint: String,
    /// The origin the node presents.
    pub presented_origin: String,
    /// Its key.
    pub presented_key: String,
    /// The pinned origin.
    pub pinned_origin: String,
    /// The pinned key.
    pub pinned_key: String,
    /// Where the pin is kept.
    pub state_file: String,
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(Box::new(s))
    }
}

impl Error {
    /// The node's status code, when the node refused.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The node's machine-readable reason (`BLOCK_NOT_FOUND`, `UNKNOWN_SENDER`, ...), when
    /// the node refused with one ([`blockpost_proto::status`]).
    pub fn reason(&self) -> Option<String> {
        match self {
            Error::Status(s) => blockpost_proto::status::reason(s),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
