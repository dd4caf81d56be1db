//! Bounded by design: how many connections the node holds, how long one may take to say
//! anything, how long one may stay silent, and the open-file limit that all of it needs.
//!
//! Each accepted socket is wrapped in a [`LimitedConn`] that holds one permit of the
//! connection limit (a socket beyond it is closed at once) and a deadline: the first byte
//! must arrive within the handshake timeout, and after that some byte must move in either
//! direction within the idle timeout. HTTP/2 keep-alive pings (every `keepalive`) keep a
//! live but quiet connection, such as a followed inbox, moving.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connection limits: the `[limits]` table of the node config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// Most connections held at once; a connection beyond it is closed at once. Lowered at
    /// start to what the open-file limit allows, with a margin for the node's own files.
    pub max_connections: usize,
    /// How long a new connection may take to send its first byte.
    pub handshake_timeout_ms: u64,
    /// How long a connection may move no byte in either direction.
    pub idle_timeout_ms: u64,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within the interval is
    /// dropped.
    pub keepalive_ms: u64,
    /// Most concurrent requests (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            keepalive_ms: 30_000,
            max_streams_per_connection: 256,
        }
    }
}

/// File descriptors kept for the node itself (log, NATS, keys, the runtime).
pub const FD_MARGIN: u64 = 256;

impl ServeLimits {
    /// Raises the process's open-file limit to its hard limit and lowers
    /// `max_connections` to fit under it, less [`FD_MARGIN`]. Returns the open-file limit.
    pub fn fit_to_open_files(&mut self) -> u64 {
        let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        let usable = usize::try_from(nofile.saturating_sub(FD_MARGIN)).unwrap_or(usize::MAX);
        if self.max_connections > usable {
            tracing::warn!(
                nofile,
                max_connections = usable,
                "open-file limit lowers the connection limit"
            );
            self.max_connections = usable.max(1);
        }
        nofile
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// An accepted connection with its permit and its deadline.
pub struct LimitedConn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    /// Whether the peer has sent a byte: until then only the handshake deadline counts
    /// (the server's own greeting does not keep a silent peer's connection open).
    greeted: bool,
    info: TcpConnectInfo,
}

impl LimitedConn {
    fn read_some(&mut self) {
        self.greeted = true;
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn wrote_some(&mut self) {
        if self.greeted {
            self.deadline.as_mut().reset(Instant::now() + self.idle);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection silent for too long")
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.expired(cx) {
                    Poll::Ready(Err(timed_out()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote_some();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote_some();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

/// Accepted connections under `limits`, as a stream for tonic.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: &ServeLimits,
) -> impl Stream<Item = io::Result<LimitedConn>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshake = limits.handshake_timeout();
    let idle = limits.idle_timeout();
    futures::stream::unfold(
        (listener, permits, 0u64),
        move |(listener, permits, mut refused)| async move {
            loop {
                let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, never spin or stop.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%peer, refused, "connection limit reached; closing new connections");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let info = TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(peer),
                };
                let conn = LimitedConn {
                    inner: stream,
                    _permit: permit,
                    deadline: Box::pin(tokio::time::sleep(handshake)),
                    idle,
                    greeted: false,
                    info,
                };
                return Some((Ok(conn), (listener, permits, refused)));
            }
        },
    )
}
