//! The whole Blockpost verifier: every rule a third party re-runs to trust the record, with
//! no server code and no I/O. The directory, the gateway, the client and the auditor all
//! call these same functions, so what a server accepts and what a verifier accepts cannot
//! drift apart.
//!
//! # Layout
//! - `address`: [`Address`], a routing address that is always one NATS subject token, and
//!   real-name checks.
//! - `request`: what a directory request signature covers ([`Operation`]) and key parsing.
//! - `evidence`: X.509 evidence for a real name ([`TrustAnchors`]) and signatures by an
//!   evidence key.
//! - `entry`: directory log entries decoded into checked [`Binding`]s.
//! - `authorize`: [`authorize_entry`], the signed request inside an entry re-checked
//!   against the binding it supersedes.
//! - `state`: [`DirectoryState`], the directory as a pure state machine over its log, and
//!   [`verify_history`] for one address.
//! - `follow`: following a log from its stream, the one set of rules for every replica
//!   and auditor: [`follow::DirectoryFollower`] (entries proved, authorised, in order;
//!   forks found) and [`follow::SignedRoots`] (a log's signed checkpoints against a replay).
//! - `log`: RFC 6962 leaf hashes, inclusion and consistency proof checks, C2SP signed-note
//!   checkpoints ([`CheckpointSigner`], [`verify_checkpoint`]).
//! - `envelope`: envelope and inbox signatures, message ids, and end-to-end encryption of
//!   bodies with HPKE (RFC 9180).
//! - `receipt`: the gateway's receipts, signed alone or a batch under one Merkle root
//!   ([`sign_receipts`], [`verify_receipt`], [`verify_receipts`]).
//! - `rules`: the stateless envelope rules ([`ParsedEnvelope`], [`VerifiedEnvelope`],
//!   [`verify_batch`]).
//! - `block`: blocks of the ledger: the RFC 6962 root over a block's leaves (`rs_merkle`),
//!   signed headers and their chain, what a leaf may be ([`block::verify_block`]).
//! - `transaction`: when the ledger closes a transaction (finished or timed out) and what
//!   its closing record holds ([`transaction::Book`]); [`transaction::TransactionGate`], what
//!   a gateway asks of the ledger.
//! - `anchor`: OpenTimestamps proofs from a block id through the ledger root and a Bitcoin
//!   transaction to a Bitcoin block header ([`anchor::replay_proof`]).
//! - `clock`: [`Clock`], injected time, and checked time arithmetic ([`check_clock`]).
//! - `wire`: the NATS wire contract: streams, subjects, headers, de-duplication ids.
//! - `keyfile`: participant keys as encrypted PKCS#8 ([`Identity`]).
//! - `tlog_proof`: C2SP tlog-proof files (an inclusion proof with its checkpoint).
//! - `bundle`: evidence bundles checked offline: every member, key, proof and signature.
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
pub mod anchor;
mod authorize;
pub mod block;
pub mod blockmap;
pub mod bundle;
mod clock;
pub mod cosign;
pub mod delivery;
mod entry;
mod envelope;
mod error;
mod evidence;
pub mod follow;
mod keyfile;
mod log;
mod receipt;
mod request;
mod rules;
pub mod settle;
mod state;
pub mod tlog_proof;
pub mod transaction;
pub mod wire;

#[cfg(test)]
mod testkit;

pub use address::{Address, check_real_name, normalize_real_name};
pub use authorize::{AuthorizedRequest, MAX_REASON_LEN, authorize_entry, authorize_request};
pub use clock::{Clock, FixedClock, SystemClock, check_clock, deadline_ms, now_ms};
pub use cosign::{Cosigner, WitnessKey, WitnessPolicy, add_cosignatures, claimed_cosigners};
pub use entry::{Binding, X25519_EXTENSION_OID, decode_entry};
pub use envelope::{
    SealTo, body_aad, envelope_message, inbox_message, message_id, message_id_of_encoded,
    open_body, seal_body, sign_envelope, verify_envelope,
};
pub use error::{CheckpointError, EnvelopeError, Error, EvidenceError, KeyFileError, Result};
pub use evidence::{
    CheckedEvidence, MAX_CERT_LEN, MAX_CHAIN_LEN, TrustAnchors, leaf_spki, verify_with_spki,
};
pub use keyfile::{Identity, x25519_from_pem, x25519_to_pem};
pub use log::{
    CheckpointSigner, ReplayTree, VerifiedCheckpoint, leaf_hash, parse_hashes, verify_checkpoint,
};
pub use receipt::{
    MAX_RECEIPT_BATCH, RECEIPT_BATCH_CONTEXT, RECEIPT_CONTEXT, receipt_batch_message,
    receipt_message, sign_receipt, sign_receipts, verify_receipt, verify_receipts,
};
pub use request::{Operation, decode_canonical, ed25519_key, x25519_key};
pub use rules::{
    EnvelopeLimits, MAX_TEXT_LEN, ParsedEnvelope, VERIFY_CHUNK_MIN, VerifiedEnvelope, kind_name,
    settle_expect, status_name, verify_batch, verify_batch_parallel,
};
pub use state::{Applied, DirectoryState, Participant, Prepared, verify_history};
