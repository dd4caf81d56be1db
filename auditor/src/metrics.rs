//! The auditor's own health, for monitoring: Prometheus metrics (`GET /metrics`, text
//! exposition format 0.0.4) and a liveness check (`GET /healthz`: 200 while it keeps up,
//! 503 once it has stalled behind the node), on a plain HTTP port of their own.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::alert::AlertKind;
use crate::auditor::{AuditStatus, Auditor};

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Every alert kind, for counters that start at zero.
const KINDS: [AlertKind; 19] = [
    AlertKind::BlockInvalid,
    AlertKind::ChainBroken,
    AlertKind::Fork,
    AlertKind::ClosingWrong,
    AlertKind::DuplicateMessage,
    AlertKind::UnknownMessage,
    AlertKind::Omission,
    AlertKind::FirehoseGap,
    AlertKind::TransactionNotClosed,
    AlertKind::DirectoryInvalid,
    AlertKind::DirectoryFork,
    AlertKind::DirectoryInconsistent,
    AlertKind::DirectoryGap,
    AlertKind::WatchedBinding,
    AlertKind::LedgerInvalid,
    AlertKind::LedgerFork,
    AlertKind::LedgerInconsistent,
    AlertKind::BuilderStalled,
    AlertKind::DeliveryWrong,
];

/// The metrics, in the text exposition format.
pub fn render(auditor: &Auditor) -> String {
    let s = auditor.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP blockpost_auditor_{name} {help}");
        let _ = writeln!(out, "# TYPE blockpost_auditor_{name} gauge");
        let _ = writeln!(out, "blockpost_auditor_{name} {v}");
    };
    gauge(
        "directory_entries",
        "Directory log entries replayed.",
        s.directory_entries,
    );
    gauge(
        "directory_checkpoint_size",
        "Largest signed directory checkpoint verified against the replay.",
        s.directory_checkpoint,
    );
    gauge(
        "blocks_verified",
        "Blocks verified, in chain order.",
        s.blocks_verified,
    );
    gauge(
        "ledger_checkpoint_size",
        "Largest ledger checkpoint verified against the chain of block ids.",
        s.ledger_checkpoint,
    );
    gauge(
        "firehose_checked",
        "Last firehose sequence checked.",
        s.firehose_checked,
    );
    gauge(
        "firehose_lag",
        "Firehose messages on the node's stream not checked yet.",
        s.firehose_lag,
    );
    gauge(
        "blocks_lag",
        "Blocks on the node's stream not verified yet.",
        s.blocks_lag,
    );
    gauge(
        "waiting",
        "Valid firehose messages not in a block yet.",
        s.waiting as u64,
    );
    gauge(
        "receipts_waiting",
        "Receipts handed in whose message is not in a block yet.",
        s.receipts_waiting as u64,
    );
    gauge(
        "seconds_since_progress",
        "Seconds since the auditor last checked a new message, block or directory entry.",
        s.seconds_since_progress,
    );
    gauge(
        "firehose_read",
        "Firehose messages read (signatures checked) since the auditor started.",
        s.firehose_read,
    );
    gauge(
        "stalled",
        "1 if the auditor is behind the node and not moving.",
        u64::from(s.stalled()),
    );
    let counts = auditor.alert_counts();
    let _ = writeln!(
        out,
        "# HELP blockpost_auditor_alerts_total Alerts raised, by kind (also before a restart)."
    );
    let _ = writeln!(out, "# TYPE blockpost_auditor_alerts_total counter");
    for k in KINDS {
        let n = counts.get(&k).copied().unwrap_or(0);
        let _ = writeln!(out, "blockpost_auditor_alerts_total{{kind=\"{k}\"}} {n}");
    }
    out
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one connection: reads the request head (bounded in size and time), answers
/// `GET /metrics` and `GET /healthz`, and closes.
async fn answer(auditor: &Auditor, mut conn: tokio::net::TcpStream) -> std::io::Result<()> {
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
            response("200 OK", "text/plain; version=0.0.4", &render(auditor))
        }
        (Some("GET"), Some("/healthz")) => {
            let s: AuditStatus = auditor.status();
            let body = serde_json::to_string(&s).unwrap_or_default();
            if s.stalled() {
                response("503 Service Unavailable", "application/json", &body)
            } else {
                response("200 OK", "application/json", &body)
            }
        }
        (Some(_), Some(_)) => response("404 Not Found", "text/plain", "GET /metrics or /healthz\n"),
        _ => response("400 Bad Request", "text/plain", "not an HTTP request\n"),
    };
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve_metrics(auditor: Auditor, listener: tokio::net::TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let a = auditor.clone();
        tokio::spawn(async move {
            let _ = answer(&a, conn).await;
        });
    }
}
