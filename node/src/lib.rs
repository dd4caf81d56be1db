//! One Blockpost node: the single place where services are composed. A [`Node`] starts from
//! one [`NodeConfig`] (a table per service), on one data directory
//! ([`blockpost_storage::DataDir`]) with the node's keys, connects to NATS or runs its own
//! nats-server ([`LocalNats`]), and serves every service, the gRPC health service and
//! server reflection on one port ([`serve`]). `blockpost up`, the benchmarks and the test
//! sandbox all start nodes through it.
//!
//! # Layout
//! - `config`: [`NodeConfig`], serde with `deny_unknown_fields`, validated once.
//! - `node`: [`Node`], the composition point.
//! - `serve`: [`serve`], one gRPC server for all routes, with health and reflection.
//! - `limits`: [`ServeLimits`]: connection limit, handshake and idle timeouts, keep-alive,
//!   and the open-file limit raised to fit them.
//! - `tls`: [`TlsConfig`], TLS on the gRPC port: required off loopback, the operator's
//!   certificate or one the node issues from its CA.
//! - `nats`: [`LocalNats`], a managed `nats-server` child process.
//! - `auth`: [`NatsAuth`], credentials for NATS; the managed server's users
//!   ([`ManagedCredentials`]): the node's own, and a read-only one for auditors.
//! - `error`: [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use blockpost_node::{Node, NodeConfig};
//! let config = NodeConfig { data_dir: "/tmp/blockpost-doc".into(), ..NodeConfig::default() };
//! let node = Node::start(config).await?; // runs its own nats-server: no `nats` URL given
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! node.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod auth;
mod config;
mod error;
mod forward;
mod limits;
mod metrics;
mod nats;
mod node;
mod serve;
mod tls;
pub mod witness;

pub use auth::{
    ClusterMember, MANAGED_MAX_PAYLOAD, ManagedCredentials, NODE_USER, NatsAuth,
    READER_INBOX_PREFIX, READER_USER, ServerOptions, connect, seed_urls,
};
pub use config::{NatsConfig, NodeConfig, Roles, WitnessConfig};
pub use error::{Error, Result};
pub use forward::DirectoryForward;
pub use limits::{FD_MARGIN, LimitedConn, ServeLimits};
pub use metrics::{Metrics, serve_metrics};
pub use nats::{
    LocalNats, free_port, nats_server_bin, nats_server_version, reap_stale, start_cluster,
    sync_always_supported, version_of,
};
pub use node::{Node, Serving, directory_vkey_path};
pub use serve::{health_routes, serve, serve_with};
pub use tls::{ServerTls, TlsConfig, TlsMode, certificate_pin};
