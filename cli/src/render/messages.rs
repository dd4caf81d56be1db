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
        "opened_with_key_index": r.opened_with,
        "unopened": r.unopened,
    })
}

/// A message read from the ledger by a participant: where it is, and what opened it.
pub struct Read {
    /// The message, verified and opened where it could be.
    pub received: Received,
    /// The keyring generation that opened its body.
    pub generation: Option<u32>,
    /// Its block.
    pub height: u64,
    /// Its leaf in the block.
    pub leaf_index: u64,
}

/// JSON form of a [`Read`].
pub fn read_json(x: &Read) -> Value {
    let mut v = received_json(&x.received);
    v["height"] = json!(x.height);
    v["leaf_index"] = json!(x.leaf_index);
    v["opened_with_generation"] = json!(x.generation);
    for k in ["sequence", "firehose_sequence", "firehose_partition"] {
        if let Some(o) = v.as_object_mut() {
            o.remove(k);
        }
    }
    v
}

/// The body of a message for people: its text, its size and type, or why it is sealed.
pub fn body_text(r: &Received) -> String {
    let c = &r.content;
    match (&r.body, r.encrypted) {
        (Some(b), _) if c.content_type.starts_with("text/") || c.content_type.is_empty() => {
            String::from_utf8_lossy(b).into_owned()
        }
        (Some(b), _) if c.content_type.contains("xml") || c.content_type.contains("fix") => {
            String::from_utf8_lossy(b).replace('\x01', "|")
        }
        (Some(b), _) => format!("<{} bytes of {}>", b.len(), c.content_type),
        (None, true) => match &r.unopened {
            Some(why) => format!("<sealed: {why}>"),
            None => "<encrypted for other recipients>".into(),
        },
        (None, false) => "<no body>".into(),
    }
}

/// Each recipient as `Real Name <address>`.
pub fn recipients(r: &Received) -> Vec<String> {
    r.content
        .recipients
        .iter()
        .enumerate()
        .map(|(i, a)| party(r.recipient_names.get(i).map_or("", String::as_str), a))
        .collect()
}

/// Which key opened a sealed body: `generation 2 (entry 7)`, or `the key of entry 7`.
pub fn opened_by(x: &Read) -> Option<String> {
    match (x.generation, x.received.opened_with) {
        (Some(g), Some(i)) => Some(format!("generation {g} (entry {i})")),
        (None, Some(i)) => Some(format!("the key of entry {i}")),
        _ => None,
    }
}

/// One line of a participant's history.
pub fn read_line(x: &Read) -> String {
    let r = &x.received;
    let c = &r.content;
    let to = recipients(r);
    let sealed = match (r.encrypted, opened_by(x)) {
        (false, _) => String::new(),
        (true, Some(by)) => format!(", sealed; opened with {by}"),
        (true, None) => ", sealed".into(),
    };
    format!(
        "block {} leaf {}  {} [{}] {} -> {} ({}{}): {}",
        x.height,
        x.leaf_index,
        date(c.timestamp_ms),
        c.transaction_id,
        party(&r.sender_name, &c.sender),
        to.join(", "),
        message_kind(c.kind),
        sealed,
        body_text(r)
    )
}

/// `blockpost history`.
pub fn message_history(address: &str, read: &[Read], json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "address": address,
                "messages": read.iter().map(read_json).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    for x in read {
        say!("{}", read_line(x));
    }
    let opened = read
        .iter()
        .filter(|x| x.received.encrypted && x.received.body.is_some())
        .count();
    eprintln!(
        "{} message(s) of {address} in the ledger, {opened} sealed one(s) opened; each verified \
         in its block and the signed ledger, and against its sender's key",
        read.len()
    );
    Ok(())
}

/// One line for people.
pub fn received_line(r: &Received) -> String {
    let c = &r.content;
    let body = body_text(r);
    let to = recipients(r);
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
