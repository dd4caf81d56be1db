//! The node's own health, for monitoring: Prometheus metrics (`GET /metrics`, text
//! exposition format 0.0.4) and a liveness check (`GET /healthz`: 200 while the builder
//! keeps the gateway's promises, 503 with the reason once it has stalled), on a plain HTTP
//! port of their own (`blockpost up --metrics ADDR`).

use std::fmt::Write as _;
use std::time::Duration;

use blockpost_builder::Builder;
use blockpost_messaging::Gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics are read from. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) gateway: Option<Gateway>,
    pub(crate) builder: Option<Builder>,
    pub(crate) directory: Option<blockpost_directory::Directory>,
}

impl Metrics {
    /// The metrics, in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |kind: &str, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP blockpost_{name} {help}");
            let _ = writeln!(out, "# TYPE blockpost_{name} {kind}");
            let _ = writeln!(out, "blockpost_{name} {v}");
        };
        if let Some(d) = &self.directory {
            metric(
                "gauge",
                "directory_entries",
                "Entries in the directory log.",
                d.size(),
            );
        }
        if let Some(g) = &self.gateway {
            let (followers, dropped) = g.followers();
            metric(
                "gauge",
                "firehose_followers",
                "Firehose streams served now.",
                followers as u64,
            );
            metric(
                "counter",
                "firehose_followers_dropped_total",
                "Firehose streams ended because they were read too slowly.",
                dropped,
            );
            metric(
                "counter",
                "inbox_deliveries_refused_total",
                "Inbox messages dropped because they did not verify.",
                g.refused_deliveries(),
            );
            metric(
                "counter",
                "submissions_unavailable_total",
                "Submissions answered UNAVAILABLE because of the bus (NATS away, or too much in flight); each may be sent again as it was.",
                g.bus_refusals(),
            );
        }
        if let Some(b) = &self.builder {
            metric(
                "gauge",
                "builder_stalled",
                "1 while the block builder makes no progress with work waiting (the gateway refuses receipts).",
                u64::from(b.health().stalled().is_some()),
            );
            metric(
                "gauge",
                "builder_active",
                "1 while this builder holds the lease and cuts blocks; 0 while it stands by.",
                u64::from(b.active()),
            );
            metric("gauge", "ledger_blocks", "Blocks stored.", b.height());
            metric(
                "gauge",
                "ledger_blocks_published",
                "Blocks the blocks stream is known to hold.",
                b.published(),
            );
            metric(
                "counter",
                "builder_refused_total",
                "Firehose messages the builder refused (never in a block).",
                b.refused(),
            );
            metric(
                "gauge",
                "builder_last_firehose_sequence",
                "The last firehose sequence in a block.",
                b.last_sequence(),
            );
        }
        out
    }

    /// Why the node does not keep its promises now, if it does not.
    pub fn unhealthy(&self) -> Option<String> {
        let b = self.builder.as_ref()?;
        b.health()
            .stalled()
            .map(|r| format!("block builder stalled: {r}"))
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one connection: reads the request head (bounded in size and time), answers
/// `GET /metrics` and `GET /healthz`, and closes.
async fn answer(metrics: &Metrics, mut conn: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    let read = async {
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < MAX_REQUEST {
            let k = conn.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let reply = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => {
            response("200 OK", "text/plain; version=0.0.4", &metrics.render())
        }
        (Some("GET"), Some("/healthz")) => match metrics.unhealthy() {
            Some(why) => response("503 Service Unavailable", "text/plain", &format!("{why}\n")),
            None => response("200 OK", "text/plain", "ok\n"),
        },
        (Some(_), Some(_)) => response("404 Not Found", "text/plain", "GET /metrics or /healthz\n"),
        _ => response("400 Bad Request", "text/plain", "not an HTTP request\n"),
    };
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Most connections answered at once; more are closed when accepted.
const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve_metrics(metrics: Metrics, listener: tokio::net::TcpListener) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _ = answer(&m, conn).await;
            drop(permit);
        });
    }
}
