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
    BadReceipt(String),
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
