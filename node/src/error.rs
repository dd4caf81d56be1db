//! The node's error type.

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot work, or a config file that does not parse.
    #[error("config: {0}")]
    Config(String),
    /// The data directory could not be used.
    #[error(transparent)]
    Storage(#[from] blockpost_storage::Error),
    /// The directory did not start.
    #[error("directory: {0}")]
    Directory(#[from] blockpost_directory::Error),
    /// The gateway did not start.
    #[error("messaging: {0}")]
    Messaging(#[from] blockpost_messaging::Error),
    /// The block builder did not start.
    #[error("builder: {0}")]
    Builder(#[from] blockpost_builder::Error),
    /// NATS could not be started or reached.
    #[error("nats: {0}")]
    Nats(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Other I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
