//! The builder's errors.

/// Why the builder cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block store on disk.
    #[error("block store: {0}")]
    Storage(#[from] blockpost_storage::Error),
    /// A stored block that does not verify.
    #[error("block store: {0}")]
    Corrupted(String),
    /// NATS.
    #[error("NATS: {0}")]
    Bus(String),
    /// Another builder published on the blocks stream: this one stands by.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A bad setting.
    #[error("builder config: {0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
