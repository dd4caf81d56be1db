//! Blockpost's gRPC API, package `blockpost.v1`.
//!
//! # Layout
//! - `proto/blockpost/v1/*.proto`: the schema, the single source of truth.
//! - `build.rs`: compiles it with protox (pure Rust) and tonic-prost-build; no `protoc` needed.
//! - `codec`: the services' codec (prost; undecodable requests are INVALID_ARGUMENT).
//! - `status`: machine-readable reasons on gRPC errors (`google.rpc.ErrorInfo`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//! - [`v1`]: the generated messages, and with the `grpc` feature (default) the tonic clients
//!   (`directory_client`) and servers (`directory_server`). `blockpost-core` uses the
//!   messages alone, so no verifier links tonic or tokio.
//!
//! ```
//! use blockpost_proto::v1::{LookupRequest, prost::Message};
//! let req = LookupRequest { address: "alice".into() };
//! let bytes = req.encode_to_vec();
//! assert_eq!(LookupRequest::decode(bytes.as_slice()).unwrap(), req);
//! ```

#[cfg(feature = "grpc")]
pub mod codec;
#[cfg(feature = "grpc")]
pub mod status;

/// Version 1 of the API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    pub use prost;
    include!(concat!(env!("OUT_DIR"), "/blockpost.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blockpost_descriptor.bin"));
