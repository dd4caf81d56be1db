//! The auditor's one composition point, as the node's `serve`: a started [`Auditor`]
//! served until a shutdown future completes. The `blockpost auditor` command, the test
//! kit's `Sandbox::with_auditor` and the benches all run it this way.

use std::future::Future;

use crate::{Auditor, Error, Result};

/// Where a served auditor listens.
pub struct Listeners {
    /// `blockpost.v1.Audit` and gRPC health (`grpc.health.v1.Health`).
    pub grpc: tokio::net::TcpListener,
    /// `/metrics` (Prometheus text) and `/healthz`, if given.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Serves `auditor` on `listeners` until `shutdown` completes, then stops serving (the
/// auditor itself stops once its last handle is dropped).
pub async fn serve(
    auditor: Auditor,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let metrics = listeners
        .metrics
        .map(|l| tokio::spawn(crate::serve_metrics(auditor.clone(), l)));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("blockpost.v1.Audit", tonic_health::ServingStatus::Serving)
        .await;
    let r = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(auditor.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
            shutdown,
        )
        .await
        .map_err(|e| Error::Serve(e.to_string()));
    if let Some(m) = metrics {
        m.abort();
    }
    r
}
