//! Blockpost's transparency-log key directory.
//!
//! A participant joins with a routing address, a real name, an ed25519 signing key and an
//! x25519 encryption key. The directory checks the request (proof of possession, optional
//! X.509 evidence for the name), issues a certificate from its own CA, and appends the
//! binding to an append-only RFC 6962 Merkle log with C2SP signed checkpoints. Rotations
//! and revocations are log entries too.
//!
//! # Layout
//! Every rule a verifier re-runs lives in `blockpost-core`: the directory checks what needs
//! its own state and configuration (address taken, stale index, clock, trust anchors),
//! builds the entry, and then calls [`blockpost_core::authorize_entry`] on it before it is
//! sequenced, the same function gateways, clients and auditors call on every entry.
//!
//! # Layout
//! - `config`: [`DirectoryConfig`], the `[directory]` table of the node config.
//! - `service`: [`Directory`], the logic: request checks, certificate issuance, batched
//!   sequencing, look-ups and proofs.
//! - `grpc`: the `blockpost.v1.Directory` tonic service, a thin adapter.
//! - `storage`: the address index on top of the tree log from `blockpost-storage`.
//! - `ca`: the directory CA and certificate issuance (rcgen).
//! - `limit`: rate limits for unverified registrations, per client address and for all.
//! - `publish`: trails the log into a JetStream stream for gateways and auditors.
//! - `error`: [`Error`] and its one mapping to gRPC status codes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use blockpost_directory::{Directory, DirectoryConfig, DirectoryParts};
//! use ed25519_dalek::SigningKey;
//! let parts = DirectoryParts {
//!     origin: "example.org/log".into(),
//!     log_key: SigningKey::from_bytes(&[1; 32]),
//!     ca_key: SigningKey::from_bytes(&[2; 32]),
//!     ca_cert: "/tmp/blockpost-doc/ca.pem".into(),
//!     log_dir: "/tmp/blockpost-doc/log".into(),
//! };
//! let clock = Arc::new(blockpost_core::SystemClock);
//! let dir = Directory::start(DirectoryConfig::default(), parts, clock, None).await?;
//! let service = dir.into_service(); // add to a tonic server (the node does)
//! # drop(service); Ok(()) }
//! ```

mod admit;
mod ca;
mod config;
mod error;
mod grpc;
mod limit;
mod publish;
mod sequence;
mod service;
mod storage;

pub use ca::{CERT_VALIDITY, x25519_spki};
pub use config::DirectoryConfig;
pub use error::{CertificateError, Error, InvalidRequest, OutOfRange, RETRY_PUSHBACK_MS, Result};
pub use grpc::MAX_MESSAGE_LEN;
pub use service::{
    Directory, DirectoryParts, MAX_BODY_LEN, MAX_ENTRIES_BYTES, MAX_ENTRIES_PER_CALL,
};

/// Hooks for `blockpost bench`; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    use std::path::Path;

    use crate::ca::{Ca, Subject};

    /// A CA in `dir` and a closure that issues one certificate with it.
    pub fn ca(dir: &Path) -> crate::Result<impl Fn() -> crate::Result<Vec<u8>>> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let ca = Ca::load_or_create(&key, &dir.join("ca.pem"), "bench")?;
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
