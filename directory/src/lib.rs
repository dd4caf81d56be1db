//! Blockpost's transparency-log key directory.
//!
//! A participant joins with a routing address, a real name, an ed25519 signing key and an
//! x25519 encryption key. The directory checks the request (proof of possession, optional
//! X.509 evidence for the name), issues a certificate from its own CA, and appends the
//! binding to an append-only RFC 6962 Merkle log with C2SP signed checkpoints. Rotations
//! and revocations are log entries too.
//!
//! # Layout
//! - `config`: [`DirectoryConfig`], read from TOML.
//! - `service`: [`Directory`], the logic: request checks, certificate issuance, batched
//!   sequencing, look-ups and proofs.
//! - `grpc`: the `blockpost.v1.Directory` tonic service, a thin adapter.
//! - `storage`: the log on disk (append-only records, fdatasync per batch) and its
//!   in-memory tree and address index.
//! - `ca`: the directory CA and certificate issuance (rcgen).
//! - `evidence`: X.509 evidence chains to configured trust anchors (x509-parser).
//! - `publish`: trails the log into a JetStream stream for gateways and auditors.
//! - `error`: [`Error`] and its one mapping to gRPC status codes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use blockpost_directory::{Directory, DirectoryConfig, serve};
//! let dir = Directory::start(DirectoryConfig::for_test("/tmp/blockpost-doc"), None).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, dir, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod ca;
mod config;
mod error;
mod evidence;
mod grpc;
mod publish;
mod service;
mod storage;

pub use ca::{CERT_VALIDITY, x25519_spki};
pub use config::DirectoryConfig;
pub use error::{Error, Result};
pub use evidence::{TrustAnchors, verify_with_spki};
pub use grpc::MAX_MESSAGE_LEN;
pub use publish::{CHECKPOINT_SUBJECT, ENTRY_SUBJECT, INDEX_HEADER};
pub use service::{Directory, MAX_BODY_LEN, MAX_ENTRIES_PER_CALL};

/// Serves the directory's gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    directory: Directory,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY, small responses wait on delayed ACKs (Nagle): tens of ms each.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(directory.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Hooks for `blockpost bench`; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    use std::path::Path;

    use crate::ca::{Ca, Subject};

    /// A CA in `dir` and a closure that issues one certificate with it.
    pub fn ca(dir: &Path) -> crate::Result<impl Fn() -> crate::Result<Vec<u8>>> {
        let ca = Ca::load_or_create(dir, "bench")?;
        Ok(move || {
            let s = Subject {
                real_name: "Bench Participant AG",
                address: "bench-1",
                signing_key: [9; 32],
                encryption_key: [8; 32],
            };
            ca.issue(&s, time::OffsetDateTime::now_utc())
        })
    }
}
