//! Blockpost's messaging gateway.
//!
//! Participants submit signed, optionally end-to-end encrypted envelopes. The gateway
//! checks each one against a live replica of the directory (sender binding current and not
//! revoked, signature, recipients, nonce, timestamp, sizes), publishes it to the public
//! firehose and to each recipient's inbox on NATS JetStream, and only then returns a signed
//! receipt that promises inclusion in a block within a stated delay. Gateways share
//! nothing but NATS, so several can run side by side.
//!
//! # Layout
//! - `gateway`: [`Gateway`], the checks, routing and receipts; [`GatewayConfig`].
//! - `grpc`: the `blockpost.v1.Messaging` service: submit (unary and streaming), inbox
//!   (challenge, deliveries, acknowledgements), firehose.
//! - `replica`: [`Replica`], the directory followed from its JetStream stream.
//! - `verify`: [`BatchVerifier`], ed25519 batch verification off the runtime.
//! - `error`: [`Error`] and its one mapping to gRPC codes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use blockpost_messaging::{Gateway, GatewayConfig};
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let gw = Gateway::start(GatewayConfig::new("/tmp/blockpost-gw"), nats).await?;
//! let service = gw.into_service(); // add to a tonic server
//! # drop(service); Ok(()) }
//! ```

mod error;
mod gateway;
mod grpc;
mod replica;
mod verify;

pub use error::{Error, Result};
pub use gateway::{
    FIREHOSE_SEQ_HEADER, FIREHOSE_SUBJECT, Gateway, GatewayConfig, MESSAGE_ID_HEADER,
};
pub use replica::{DIRECTORY_STREAM, Participant, Replica};
pub use verify::{BatchVerifier, MAX_BATCH};
