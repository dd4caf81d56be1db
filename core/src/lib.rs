//! What a Blockpost verifier needs and nothing more: the auditor and the client depend on
//! this crate, never on server code.
//!
//! # Layout
//! - `address`: [`Address`], a routing address that is always one NATS subject token, and
//!   real-name checks.
//! - `request`: what a directory request signature covers ([`Operation`]) and key parsing.
//! - `log`: RFC 6962 leaf hashes, inclusion and consistency proof checks, C2SP signed-note
//!   checkpoints ([`CheckpointSigner`], [`verify_checkpoint`]).
//! - `keyfile`: participant key files in encrypted PKCS#8 ([`Identity`]).
//! - `entry`: decoding directory log entries into checked [`Binding`]s.
//! - `envelope`: envelope, receipt and inbox signatures, message ids, and end-to-end
//!   encryption of bodies with HPKE (RFC 9180).
//! - `error`: the crate's [`Error`].
//!
//! ```
//! use blockpost_core::{Address, CheckpointSigner, verify_checkpoint, leaf_hash};
//! use ed25519_dalek::SigningKey;
//!
//! assert!(Address::parse("bank-a").is_ok());
//! assert!(Address::parse("bank.a").is_err());
//!
//! // A one-entry log: its root is the leaf hash.
//! let signer = CheckpointSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
//! let note = signer.sign(1, leaf_hash(b"entry")).unwrap();
//! let cp = verify_checkpoint(&note, &signer.verifier_key()).unwrap();
//! cp.verify_inclusion(0, b"entry", &Vec::<Vec<u8>>::new()).unwrap();
//! assert!(cp.verify_inclusion(0, b"entrz", &Vec::<Vec<u8>>::new()).is_err());
//! ```

mod address;
mod entry;
mod envelope;
mod error;
mod keyfile;
mod log;
mod request;

pub use address::{Address, check_real_name};
pub use entry::{Binding, X25519_EXTENSION_OID, decode_entry, now_ms};
pub use envelope::{
    SealTo, body_aad, envelope_message, inbox_message, message_id, open_body, seal_body,
    sign_envelope, sign_receipt, verify_envelope, verify_receipt,
};
pub use error::{Error, Result};
pub use keyfile::Identity;
pub use log::{CheckpointSigner, VerifiedCheckpoint, leaf_hash, parse_hashes, verify_checkpoint};
pub use request::{Operation, ed25519_key, x25519_key};
