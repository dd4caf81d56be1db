//! Messages: receipts and what an inbox delivers.

use blockpost_client::Received;
use blockpost_proto::v1::ReceiptBody;
use serde_json::{Value, json};

use super::*;

/// A verified receipt.
pub fn receipt(r: &ReceiptBody, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "message_id": hex::encode(&r.message_id),
                "firehose_sequence": r.firehose_sequence,
                "firehose_partition": r.firehose_partition,
                "accepted_at_ms": r.accepted_at_ms,
                "block_deadline_ms": r.block_deadline_ms,
                "gateway_key": hex::encode(&r.gateway_key),
                "receipt_verified": true,
            }))?
        );
        return Ok(());
    }
    let at = if r.firehose_partition == 0 {
        r.firehose_sequence.to_string()
    } else {
        format!("{}:{}", r.firehose_partition, r.firehose_sequence)
    };
    say!(
        "accepted #{} message {} at {} (receipt verified; in a block by {})",
        at,
        hex::encode(&r.message_id),
        date(r.accepted_at_ms),
        date(r.block_deadline_ms)
    );
    Ok(())
}

/// JSON form of a received message.
pub fn received_json(r: &Received) -> Value {
    let c = &r.content;
    json!({
        "sequence": r.sequence,
        "firehose_sequence": r.firehose_sequence,
        "firehose_partition": r.firehose_partition,
        "message_id": hex::encode(r.message_id),
        "sender": c.sender,
        "sender_name": r.sender_name,
        "sender_key_index": c.sender_key_index,
        "recipients": c.recipients,
        "recipient_names": r.recipient_names,
        "transaction_id": c.transaction_id,
        "kind": message_kind(c.kind),
        "content_type": c.content_type,
        "timestamp_ms": c.timestamp_ms,
        "nonce": c.nonce,
        "encrypted": r.encrypted,
        "signature_verified": true,
        "body": r.body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
    })
}

/// One line for people.
pub fn received_line(r: &Received) -> String {
    let c = &r.content;
    let body = match (&r.body, r.encrypted) {
        (Some(b), _) if c.content_type.starts_with("text/") || c.content_type.is_empty() => {
            String::from_utf8_lossy(b).into_owned()
        }
        (Some(b), _) => format!("<{} bytes of {}>", b.len(), c.content_type),
        (None, true) => "<encrypted for other recipients>".into(),
        (None, false) => "<no body>".into(),
    };
    let to: Vec<String> = c
        .recipients
        .iter()
        .enumerate()
        .map(|(i, a)| party(r.recipient_names.get(i).map_or("", String::as_str), a))
        .collect();
    let at = if r.firehose_partition == 0 {
        r.firehose_sequence.to_string()
    } else {
        format!("{}:{}", r.firehose_partition, r.firehose_sequence)
    };
    format!(
        "#{} {} [{}] {} -> {} ({}{}): {}",
        at,
        date(c.timestamp_ms),
        c.transaction_id,
        party(&r.sender_name, &c.sender),
        to.join(", "),
        message_kind(c.kind),
        if r.encrypted {
            ", end-to-end encrypted"
        } else {
            ""
        },
        body
    )
}

/// A received message, for people or as one JSON line.
pub fn received(r: &Received, json: bool) -> std::io::Result<()> {
    let line = if json {
        received_json(r).to_string()
    } else {
        received_line(r)
    };
    use std::io::Write as _;
    match writeln!(std::io::stdout(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other,
    }
}
