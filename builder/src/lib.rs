//! Blockpost's block builder: it reads the accepted firehose through a durable JetStream
//! consumer, checks every message again (the envelope rules, a sender the node's verified
//! directory replica knows, and its signature unless the node's gateway tagged it as
//! checked), cuts a block at a message count, a byte size or a
//! delay after its first message, signs the header, stores the block and the ledger entry
//! durably ([`blockpost_storage::BlockStore`]), and only then acknowledges the messages and
//! publishes the block on the blocks stream.
//!
//! The formats and every check a verifier re-runs are in [`blockpost_core::block`].
//!
//! # Layout
//! - `config`: [`BuilderConfig`], the `[builder]` table of the node config.
//! - `builder`: [`Builder`], the service: open and verify the store, the consume-and-cut
//!   loop.
//! - `anchor`: anchoring the ledger root (an anchor file, or Bitcoin OP_RETURN
//!   transactions) with OpenTimestamps proofs.
//! - `index`: the fjall (LSM) indexes (message, block, transaction), derived from the store and
//!   brought up to it at open.
//! - `grpc`: the `blockpost.v1.Ledger` service (blocks and messages with their proofs).
//! - `error`: [`Error`].

mod anchor;
mod batch;
mod blocks;
mod builder;
mod config;
mod deliver;
mod error;
mod grpc;
mod index;
mod lease;
mod maps;

pub use anchor::AnchorLine;
pub use blocks::read_block_message;
pub use builder::{Builder, BuilderParts, Health, MAX_BLOCK_LEN};
pub use config::{AnchorConfig, BitcoinConfig, BuilderConfig};
pub use error::{Error, LedgerError, Result};
