//! The one gRPC server: every service's routes on one listener, with the standard health
//! service and server reflection beside them.

use std::future::Future;

use std::time::Duration;

use tonic::service::Routes;

use crate::limits::{ServeLimits, incoming};
use crate::{Error, Result};

/// Serves `routes` on `listener` until `shutdown` completes, with the default
/// [`ServeLimits`]; see [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with(listener, routes, &ServeLimits::default(), None, shutdown).await
}

/// Serves `routes` on `listener` until `shutdown` completes, under `limits` (connections,
/// handshake and idle timeouts, HTTP/2 keep-alive, streams per connection), over TLS when
/// `tls` is given (handshakes run concurrently, each under the handshake timeout), with the
/// standard gRPC health service (`grpc.health.v1.Health`; `routes` decides what it reports,
/// see [`health_routes`]) and server reflection (v1 and v1alpha), so that `grpcurl` lists
/// and calls every method without the `.proto` files.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    routes: Routes,
    limits: &ServeLimits,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let reflection = |e: tonic_reflection::server::Error| Error::Config(format!("reflection: {e}"));
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blockpost_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection)?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blockpost_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection)?;
    let routes = routes.add_service(v1).add_service(v1alpha);
    // Accepted sockets get TCP_NODELAY (without it, small responses wait on delayed ACKs:
    // tens of ms each), a connection permit and a handshake deadline.
    let keepalive = Duration::from_millis(limits.keepalive_ms.max(1));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
    }
    // Graceful shutdown waits for open streams; a reader that follows (the firehose, an
    // inbox, new blocks) would hold it for ever. Give them SHUTDOWN_GRACE, then close.
    let (fired, on_fire) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = fired.send(());
    };
    let serving = server
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .max_concurrent_streams(limits.max_streams_per_connection.max(1))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener, limits), shutdown);
    tokio::select! {
        served = serving => served?,
        () = async {
            if on_fire.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(
                "streams still open {} s after shutdown began: closing them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
    }
    Ok(())
}

/// How long a shutdown waits for open streams to end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The health service with `services` (full gRPC names) reported as serving, and the
/// server as a whole (`""`).
pub async fn health_routes(services: &[&str]) -> (tonic_health::server::HealthReporter, Routes) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for s in services {
        reporter
            .set_service_status(*s, tonic_health::ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    (reporter, Routes::new(service))
}
