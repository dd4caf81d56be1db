//! Blockpost's gRPC API, package `blockpost.v1`.
//!
//! # Layout
//! - `proto/blockpost/v1/*.proto`: the schema, the single source of truth.
//! - `build.rs`: compiles it with protox (pure Rust) and tonic-prost-build; no `protoc` needed.
//! - [`v1`]: the generated messages, clients (`directory_client`) and servers (`directory_server`).
//!
//! ```
//! use blockpost_proto::v1::{LookupRequest, prost::Message};
//! let req = LookupRequest { address: "alice".into() };
//! let bytes = req.encode_to_vec();
//! assert_eq!(LookupRequest::decode(bytes.as_slice()).unwrap(), req);
//! ```

/// Version 1 of the API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    pub use prost;
    tonic::include_proto!("blockpost.v1");
}
