//! All output of the `blockpost` command, human and `--json`, in one place. Human output
//! shows times as RFC 3339 dates (UTC) and parties as `Real Name <address>`; JSON keeps
//! milliseconds and raw fields.

use base64::Engine as _;
use blockpost_client::{Received, VerifiedEntry};
use blockpost_core::{Identity, VerifiedCheckpoint};
use blockpost_proto::v1::{EntryKind, GetInfoResponse, MessageKind, ReceiptBody};
use serde_json::{Value, json};

/// `println!` that exits quietly when stdout is a closed pipe (`blockpost ... | head`).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// A Unix time in milliseconds as an RFC 3339 date in UTC, with milliseconds.
pub fn date(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    t.unwrap_or_else(|| format!("{ms} ms"))
}

/// `Real Name <address>`, or the address alone when the name is unknown.
pub fn party(name: &str, address: &str) -> String {
    if name.is_empty() {
        address.to_owned()
    } else {
        format!("{name} <{address}>")
    }
}

/// PEM of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    if der.is_empty() {
        return String::new();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn entry_kind(k: EntryKind) -> &'static str {
    match k {
        EntryKind::Register => "register",
        EntryKind::Rotate => "rotate",
        EntryKind::Revoke => "revoke",
        EntryKind::Unspecified => "unspecified",
    }
}

fn message_kind(k: i32) -> &'static str {
    match MessageKind::try_from(k) {
        Ok(MessageKind::Message) => "message",
        Ok(MessageKind::Document) => "document",
        Ok(MessageKind::Finish) => "finish",
        _ => "unknown",
    }
}

/// The JSON form of a verified entry.
pub fn entry_json(e: &VerifiedEntry) -> Value {
    let b = &e.binding;
    json!({
        "address": b.address.as_str(),
        "real_name": b.real_name,
        "verified": b.verified,
        "revoked": b.revoked(),
        "kind": entry_kind(b.kind),
        "signing_key": hex::encode(b.signing_key),
        "encryption_key": hex::encode(b.encryption_key),
        "certificate_pem": cert_pem(&b.certificate),
        "leaf_index": e.leaf_index,
        "previous_index": b.previous_index,
        "logged_at_ms": b.logged_at_ms,
        "entry": base64::engine::general_purpose::STANDARD.encode(&e.entry),
        "inclusion_proof": e.inclusion_proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "tree_size": e.checkpoint.size,
        "checkpoint": String::from_utf8_lossy(&e.checkpoint.note),
    })
}

/// A verified entry, for people or as JSON.
pub fn entry(e: &VerifiedEntry, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(&entry_json(e))?);
        return Ok(());
    }
    let b = &e.binding;
    say!(
        "{} {}",
        entry_kind(b.kind),
        party(&b.real_name, b.address.as_str())
    );
    say!(
        "  verified name   {}",
        if b.verified {
            "yes (evidence chains to a trust anchor)"
        } else {
            "no"
        }
    );
    if b.revoked() {
        say!("  status          REVOKED");
    }
    say!("  signing key     {}", hex::encode(b.signing_key));
    say!("  encryption key  {}", hex::encode(b.encryption_key));
    say!("  logged at       {}", date(b.logged_at_ms));
    say!(
        "  log index       {} (proof verified against checkpoint of size {})",
        e.leaf_index,
        e.checkpoint.size
    );
    Ok(())
}

/// An address's history, current entry first, for people or as JSON.
pub fn history(history: &[VerifiedEntry], json: bool) -> anyhow::Result<()> {
    let Some(current) = history.last() else {
        anyhow::bail!("empty history");
    };
    if json {
        let mut v = entry_json(current);
        v["history"] = history.iter().map(entry_json).collect();
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    entry(current, false)?;
    if history.len() > 1 {
        say!(
            "  history         {}",
            history
                .iter()
                .map(|e| e.leaf_index.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
    Ok(())
}

/// The node's identity.
pub fn info(endpoint: &str, i: &GetInfoResponse, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "endpoint": endpoint,
                "origin": i.origin,
                "verifier_key": i.verifier_key,
                "ca_certificate_pem": i.ca_certificate_pem,
                "require_verified": i.require_verified,
            }))?
        );
        return Ok(());
    }
    say!("origin        {}", i.origin);
    say!("verifier key  {}", i.verifier_key);
    say!(
        "names         {}",
        if i.require_verified {
            "evidence required"
        } else {
            "evidence optional"
        }
    );
    say!("{}", i.ca_certificate_pem.trim_end());
    Ok(())
}

/// A verified checkpoint.
pub fn checkpoint(
    cp: &VerifiedCheckpoint,
    witnessed_by: &[String],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "origin": cp.origin,
                "tree_size": cp.size,
                "root_hash": hex::encode(cp.root),
                "checkpoint": String::from_utf8_lossy(&cp.note),
                "witnessed_by": witnessed_by,
            }))?
        );
        return Ok(());
    }
    say!("{}", String::from_utf8_lossy(&cp.note).trim_end());
    eprintln!("(signature verified; consistent with every checkpoint this client saw before)");
    if !witnessed_by.is_empty() {
        eprintln!("(cosigned by the witnesses {})", witnessed_by.join(", "));
    }
    Ok(())
}

/// A new key file.
pub fn new_key(file: &std::path::Path, id: &Identity, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            json!({
                "file": file.display().to_string(),
                "signing_key": hex::encode(id.signing_public()),
                "encryption_key": hex::encode(id.encryption_public()),
            })
        );
        return Ok(());
    }
    say!("wrote {} (encrypted PKCS#8, mode 0600)", file.display());
    say!("  signing key     {}", hex::encode(id.signing_public()));
    say!("  encryption key  {}", hex::encode(id.encryption_public()));
    Ok(())
}

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

fn header_json(h: &blockpost_core::block::VerifiedHeader) -> Value {
    let x = &h.header;
    json!({
        "height": x.height,
        "previous_hash": hex::encode(&x.previous_hash),
        "merkle_root": hex::encode(&x.merkle_root),
        "leaf_count": x.leaf_count,
        "partitions": x.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "first_seq": p.first_seq,
            "last_seq": p.last_seq,
        })).collect::<Vec<_>>(),
        "directory_size": x.directory_size,
        "directory_root": hex::encode(&x.directory_root),
        "time_ms": x.time_ms,
        "time": date(x.time_ms),
        "builder_key_id": hex::encode(&x.builder_key_id),
    })
}

fn hexes(v: &[Vec<u8>]) -> Vec<String> {
    v.iter().map(hex::encode).collect()
}

/// A verified block.
pub fn block(b: &blockpost_client::LedgerBlock, json: bool) -> anyhow::Result<()> {
    use blockpost_core::block::Leaf;
    let h = &b.block.header;
    let leaves: Vec<Value> = b
        .block
        .leaves
        .iter()
        .zip(&b.block.kinds)
        .map(|(l, k)| match k {
            Leaf::Message(_) => json!({
                "kind": "message",
                "message_id": hex::encode(blockpost_core::block::block_id(l)),
            }),
            Leaf::Record(r) => record_json(r),
        })
        .collect();
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "height": h.header.height,
                "header": header_json(h),
                "header_hash": hex::encode(h.id),
                "leaves": leaves,
                "ledger_index": h.header.height,
                "ledger_proof": hexes(&b.ledger_proof),
                "ledger_checkpoint": String::from_utf8_lossy(&b.checkpoint.note),
            }))?
        );
        return Ok(());
    }
    let x = &h.header;
    say!("block {}  {}", x.height, hex::encode(h.id));
    say!("  time       {}", date(x.time_ms));
    if x.height > 0 {
        say!("  previous   {}", hex::encode(&x.previous_hash));
    }
    say!(
        "  root       {} over {} leaves",
        hex::encode(&x.merkle_root),
        x.leaf_count
    );
    for p in &x.partitions {
        say!(
            "  firehose   partition {}: sequence {}..={}",
            p.partition,
            p.first_seq,
            p.last_seq
        );
    }
    say!(
        "  directory  checkpoint of {} entries, root {}",
        x.directory_size,
        hex::encode(&x.directory_root)
    );
    for l in &leaves {
        match l["kind"].as_str() {
            Some("message") => say!("  message    {}", l["message_id"].as_str().unwrap_or("")),
            Some("closing") => say!(
                "  closing    {} {} ({} messages, finished by {})",
                l["transaction_id"].as_str().unwrap_or(""),
                l["status"].as_str().unwrap_or(""),
                l["message_ids"].as_array().map_or(0, Vec::len),
                l["finished_by"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "nobody".into())
            ),
            Some("anchor") => say!(
                "  anchor     ledger of {} blocks, root {}, in {} ({})",
                l["ledger_size"],
                l["ledger_root"].as_str().unwrap_or(""),
                l["sink"].as_str().unwrap_or(""),
                l["reference"].as_str().unwrap_or("")
            ),
            _ => say!("  record     {l}"),
        }
    }
    eprintln!(
        "(builder signature, Merkle root, link to block {} and inclusion in the ledger of {} blocks verified)",
        x.height.saturating_sub(1),
        b.checkpoint.size
    );
    Ok(())
}

/// A message verified in its block and the ledger.
pub fn ledger_message(m: &blockpost_client::LedgerMessage, json: bool) -> anyhow::Result<()> {
    use base64::Engine as _;
    let h = &m.header;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "message_id": hex::encode(m.message_id),
                "height": h.header.height,
                "leaf_index": m.leaf_index,
                "envelope": base64::engine::general_purpose::STANDARD.encode(&m.envelope_bytes),
                "inclusion_proof": hexes(&m.inclusion_proof),
                "block_root": hex::encode(&h.header.merkle_root),
                "header": header_json(h),
                "header_hash": hex::encode(h.id),
                "ledger_index": h.header.height,
                "ledger_proof": hexes(&m.ledger_proof),
                "ledger_checkpoint": String::from_utf8_lossy(&m.checkpoint.note),
            }))?
        );
        return Ok(());
    }
    say!("message {}", hex::encode(m.message_id));
    say!(
        "  in block   {} (leaf {} of {}), cut {}",
        h.header.height,
        m.leaf_index,
        h.header.leaf_count,
        date(h.header.time_ms)
    );
    say!("  block id   {}", hex::encode(h.id));
    say!(
        "  ledger     leaf {} of the checkpoint of {} blocks",
        h.header.height,
        m.checkpoint.size
    );
    eprintln!("(inclusion proof, builder signature, chain link and ledger proof verified)");
    Ok(())
}

fn record_json(r: &blockpost_proto::v1::LedgerRecord) -> Value {
    use blockpost_proto::v1::ledger_record::Record;
    match &r.record {
        Some(Record::Closing(c)) => json!({
            "kind": "closing",
            "transaction_id": c.transaction_id,
            "status": status_name(c.status),
            "message_ids": hexes(&c.message_ids),
            "messages_root": hex::encode(&c.messages_root),
            "finished_by": c.finished_by,
            "time_ms": c.time_ms,
        }),
        Some(Record::Anchor(a)) => json!({
            "kind": "anchor",
            "ledger_size": a.ledger_size,
            "ledger_root": hex::encode(&a.ledger_root),
            "sink": a.sink,
            "reference": a.reference,
            "time_ms": a.time_ms,
        }),
        None => json!({ "kind": "record" }),
    }
}

fn status_name(s: i32) -> &'static str {
    use blockpost_proto::v1::TransactionStatus as S;
    match S::try_from(s) {
        Ok(S::Open) => "open",
        Ok(S::Finished) => "finished",
        Ok(S::TimedOut) => "timed out",
        _ => "unknown",
    }
}

fn leaf_json(m: &blockpost_client::LedgerMessage) -> Value {
    let h = &m.header;
    json!({
        "height": h.header.height,
        "leaf_index": m.leaf_index,
        "inclusion_proof": hexes(&m.inclusion_proof),
        "block_root": hex::encode(&h.header.merkle_root),
        "header_hash": hex::encode(h.id),
        "ledger_index": h.header.height,
        "ledger_proof": hexes(&m.ledger_proof),
        "ledger_checkpoint": String::from_utf8_lossy(&m.checkpoint.note),
    })
}

/// A transaction, verified.
pub fn transaction(t: &blockpost_client::LedgerTransaction, json: bool) -> anyhow::Result<()> {
    use blockpost_proto::v1::EnvelopeContent;
    let st = &t.state;
    let contents: Vec<EnvelopeContent> = t
        .messages
        .iter()
        .map(|m| {
            blockpost_core::decode_canonical::<EnvelopeContent>(&m.envelope.content, "content")
                .unwrap_or_default()
        })
        .collect();
    if json {
        let messages: Vec<Value> = t
            .messages
            .iter()
            .zip(&contents)
            .map(|(m, c)| {
                let mut v = leaf_json(m);
                v["message_id"] = json!(hex::encode(m.message_id));
                v["sender"] = json!(c.sender);
                v["recipients"] = json!(c.recipients);
                v["kind"] = json!(message_kind(c.kind));
                v["timestamp_ms"] = json!(c.timestamp_ms);
                v["envelope"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&m.envelope_bytes));
                v
            })
            .collect();
        let closing = t.closing.as_ref().map(|(c, leaf)| {
            let mut v = leaf_json(leaf);
            v["status"] = json!(status_name(c.status));
            v["message_ids"] = json!(hexes(&c.message_ids));
            v["messages_root"] = json!(hex::encode(&c.messages_root));
            v["finished_by"] = json!(c.finished_by);
            v["time_ms"] = json!(c.time_ms);
            v["record"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&leaf.envelope_bytes));
            v
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "transaction_id": st.transaction_id,
                "status": status_name(st.status),
                "parties": st.parties,
                "finished_by": st.finished_by,
                "opened_height": st.opened_height,
                "deadline_ms": st.deadline_ms,
                "messages": messages,
                "closing": closing,
            }))?
        );
        return Ok(());
    }
    say!(
        "transaction {}: {}",
        st.transaction_id,
        status_name(st.status)
    );
    say!("  parties      {}", st.parties.join(", "));
    if !st.finished_by.is_empty() {
        say!("  finished by  {}", st.finished_by.join(", "));
    }
    say!(
        "  opened       in block {}; times out {} unless finished",
        st.opened_height,
        date(st.deadline_ms)
    );
    for (m, c) in t.messages.iter().zip(&contents) {
        say!(
            "  {:<8} {}  block {} leaf {}  {} -> {}",
            message_kind(c.kind),
            &hex::encode(m.message_id)[..16],
            m.header.header.height,
            m.leaf_index,
            c.sender,
            c.recipients.join(",")
        );
    }
    if let Some((c, leaf)) = &t.closing {
        say!(
            "  closed       {} at {}, in block {} leaf {} (over {} messages, root {})",
            status_name(c.status),
            date(c.time_ms),
            leaf.header.header.height,
            leaf.leaf_index,
            c.message_ids.len(),
            &hex::encode(&c.messages_root)[..16]
        );
    }
    eprintln!(
        "(every message and the closing record verified in their blocks and the signed ledger; \
         the closing checked against the messages)"
    );
    Ok(())
}

/// One alert: a JSON line, or `time  kind  subject: detail`.
pub fn alert(a: &blockpost_auditor::Alert, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string(a)?);
    } else {
        say!(
            "{}  {}  {}: {}",
            date(a.time_ms),
            a.kind,
            a.subject,
            a.detail
        );
    }
    Ok(())
}

/// The auditor's status, as one line.
pub fn audit_status(s: &blockpost_auditor::AuditStatus, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string(s)?);
    } else {
        say!(
            "auditor: {} directory entries replayed (checkpoint {} verified), {} blocks verified{} (ledger checkpoint {} verified), firehose checked to {}, {} messages waiting for a block, {} alerts",
            s.directory_entries,
            s.directory_checkpoint,
            s.blocks_verified,
            if s.ledger {
                if s.blocks_current {
                    " (current)"
                } else {
                    " (catching up)"
                }
            } else {
                " (the node has no ledger)"
            },
            s.ledger_checkpoint,
            s.firehose_checked,
            s.waiting,
            s.alerts
        );
    }
    Ok(())
}

/// An alert as the Audit service streams it.
pub fn audit_alert(a: &blockpost_proto::v1::AuditAlert, json: bool) -> anyhow::Result<()> {
    if json {
        let evidence: Value = serde_json::from_str(&a.evidence_json).unwrap_or(Value::Null);
        say!(
            "{}",
            json!({
                "index": a.index,
                "kind": a.kind,
                "subject": a.subject,
                "time_ms": a.time_ms,
                "detail": a.detail,
                "evidence": evidence,
            })
        );
    } else {
        say!(
            "{}  {}  {}: {}",
            date(a.time_ms),
            a.kind,
            a.subject,
            a.detail
        );
    }
    Ok(())
}

/// An auditor's verdict on a receipt.
pub fn receipt_verdict(
    r: &blockpost_proto::v1::CheckReceiptResponse,
    json: bool,
) -> anyhow::Result<()> {
    use blockpost_proto::v1::check_receipt_response::Verdict;
    let id = hex::encode(&r.message_id);
    let verdict = match r.verdict() {
        Verdict::InBlock => "in_block",
        Verdict::Pending => "pending",
        Verdict::Omitted => "omitted",
        Verdict::Unspecified => "unspecified",
    };
    if json {
        say!(
            "{}",
            json!({
                "verdict": verdict,
                "message_id": id,
                "height": (r.verdict() == Verdict::InBlock).then_some(r.height),
                "block_deadline_ms": r.block_deadline_ms,
            })
        );
        return Ok(());
    }
    match r.verdict() {
        Verdict::InBlock => say!(
            "message {id} is in block {} (verified by the auditor)",
            r.height
        ),
        Verdict::Pending => say!(
            "message {id} is in no block yet; its receipt promises one by {}: the auditor watches it",
            date(r.block_deadline_ms)
        ),
        _ => say!(
            "message {id} is in no block past its deadline ({}): the auditor raised an omission",
            date(r.block_deadline_ms)
        ),
    }
    Ok(())
}

/// A search hit: one line, or JSON with its proofs.
pub fn search_hit(h: &blockpost_proto::v1::SearchHit, json: bool) -> anyhow::Result<()> {
    use base64::Engine as _;
    let hexes = |v: &[Vec<u8>]| v.iter().map(hex::encode).collect::<Vec<_>>();
    if json {
        say!(
            "{}",
            json!({
                "message_id": hex::encode(&h.message_id),
                "height": h.height,
                "leaf_index": h.leaf_index,
                "time_ms": h.time_ms,
                "score": h.score,
                "envelope": base64::engine::general_purpose::STANDARD.encode(&h.envelope),
                "inclusion_proof": hexes(&h.inclusion_proof),
                "header_hash": hex::encode(&h.header_hash),
                "ledger_proof": hexes(&h.ledger_proof),
                "ledger_checkpoint": String::from_utf8_lossy(&h.ledger_checkpoint),
            })
        );
    } else {
        say!(
            "{}  block {} leaf {}  {}  (score {:.2})",
            date(h.time_ms),
            h.height,
            h.leaf_index,
            hex::encode(&h.message_id),
            h.score
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_parties() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(date(i64::MAX), format!("{} ms", i64::MAX));
        assert_eq!(party("Bank A AG", "bank-a"), "Bank A AG <bank-a>");
        assert_eq!(party("", "bank-a"), "bank-a");
    }
}
