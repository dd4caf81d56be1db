//! The storage error type.

/// What can go wrong on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure (a full disk, a permission, a missing file).
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// The files are damaged or disagree with a checkpoint that was handed out.
    #[error("log corrupted: {0}")]
    Corrupted(String),
    /// A record over the store's limit.
    #[error("{field} is too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// What was too large.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A record or tree size beyond what is stored.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Another process holds the files.
    #[error("{0} is in use by another blockpost process; one log has one writer")]
    InUse(String),
    /// The data directory holds another log than the config names.
    #[error(
        "data dir {dir} holds the log {recorded:?}, but the config names {configured:?}: a log's origin never changes"
    )]
    OriginChanged {
        /// The data directory.
        dir: String,
        /// The origin recorded at first start.
        recorded: String,
        /// The origin configured now.
        configured: String,
    },
    /// A key file that cannot be read or written.
    #[error("key {path}: {why}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
