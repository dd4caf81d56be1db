//! A node that lies: a gRPC proxy in front of a real node that passes every call through
//! and rewrites the answers of one method. Clients that verify must refuse what it
//! changes; tests point them at [`TamperProxy::endpoint`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tonic::transport::Channel;

/// Rewrites one decoded gRPC answer message (protobuf bytes) in place.
pub type Rewrite = dyn Fn(&mut Vec<u8>) + Send + Sync;

struct Proxy {
    upstream: Channel,
    path: String,
    rewrite: Box<Rewrite>,
}

/// The proxy, stopped on drop.
pub struct TamperProxy {
    /// Its `http://127.0.0.1:PORT` endpoint.
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TamperProxy {
    /// Proxies `upstream`, rewriting every answer message of the gRPC method at `path`
    /// (`/blockpost.v1.Ledger/GetBlock`) with `rewrite`.
    pub async fn start(
        upstream: &str,
        path: &str,
        rewrite: impl Fn(&mut Vec<u8>) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let upstream = Channel::from_shared(upstream.to_owned())?.connect().await?;
        let proxy = Arc::new(Proxy {
            upstream,
            path: path.to_owned(),
            rewrite: Box::new(rewrite),
        });
        let router = axum::Router::new().fallback(forward).with_state(proxy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self { endpoint, task })
    }
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let rewrite = req.uri().path() == p.path;
    let req = req.map(tonic::body::Body::new);
    let mut upstream = p.upstream.clone();
    let ready =
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut upstream, cx)).await;
    let resp = match ready {
        Ok(()) => tower_service::Service::call(&mut upstream, req).await,
        Err(e) => Err(e),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            return tonic::Status::unavailable(format!("proxy: {e}"))
                .into_http::<Body>()
                .into_response();
        }
    };
    if !rewrite {
        return resp.map(Body::new);
    }
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return tonic::Status::unavailable("proxy: the answer broke off")
            .into_http::<Body>()
            .into_response();
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    // gRPC framing: a compression flag byte, a 4-byte big-endian length, the message.
    let mut out = Vec::with_capacity(data.len());
    let mut rest = &data[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(msg) = rest.get(5..5 + len) else {
            break;
        };
        let mut m = msg.to_vec();
        (p.rewrite)(&mut m);
        out.push(rest[0]);
        out.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&m);
        rest = &rest[5 + len..];
    }
    let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
        bytes::Bytes::from(out),
    ))];
    if let Some(t) = trailers {
        frames.push(Ok(http_body::Frame::trailers(t)));
    }
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::new(body))
}
