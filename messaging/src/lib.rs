//! Blockpost's messaging gateway.
//!
//! Participants submit signed, optionally end-to-end encrypted envelopes. The gateway
//! checks each one with the stateless rules of `blockpost-core` ([`ParsedEnvelope`],
//! signature included), then what needs live state: its clock, and a replica of the
//! directory (sender binding current and not revoked, recipients known), and the nonce
//! through JetStream de-duplication. It publishes the envelope to the public firehose and to
//! each recipient's inbox, and only then returns a signed receipt that promises inclusion
//! in a block within a stated delay: receipts that finish together are signed together,
//! under one Merkle root. Gateways share nothing but NATS, so several can run
//! side by side.
//!
//! [`ParsedEnvelope`]: blockpost_core::ParsedEnvelope
//!
//! # Layout
//! - `config`: [`MessagingConfig`], the `[messaging]` table of the node config.
//! - `gateway`: [`Gateway`], the checks, routing and receipts.
//! - `grpc`: the `blockpost.v1.Messaging` service: submit (unary and streaming), inbox
//!   (challenge, deliveries, acknowledgements), firehose.
//! - `verify`: [`BatchVerifier`], ed25519 batch verification off the runtime.
//! - `receipts`: [`ReceiptSigner`], receipts signed per batch under one Merkle root.
//! - `error`: [`Error`] and its one mapping to gRPC codes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use blockpost_messaging::{Gateway, MessagingConfig};
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let clock = Arc::new(blockpost_core::SystemClock);
//! let ns = blockpost_core::wire::Namespace::for_origin("example.org/log");
//! let log_key = "example.org/log+01234567+AQ...".to_owned(); // the directory's verifier key
//! let replica = blockpost_replica::Replica::start(async_nats::jetstream::new(nats.clone()), &ns, log_key);
//! let gw = Gateway::start(MessagingConfig::default(), key, ns, replica, clock, nats).await?;
//! let service = gw.into_service(); // add to a tonic server
//! # drop(service); Ok(()) }
//! ```

mod config;
mod error;
mod gateway;
mod grpc;
mod receipts;
mod verify;

pub use config::MessagingConfig;
pub use error::{BusError, Error, InboxDenial, Result};
pub use gateway::Gateway;
pub use receipts::{ReceiptSigner, SignerCounts};
pub use verify::{BatchVerifier, MAX_BATCH};
