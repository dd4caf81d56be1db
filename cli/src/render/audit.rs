//! The auditor: alerts, its status, receipt verdicts, search hits.

use serde_json::{Value, json};

use super::*;

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
    // The envelope decoded beside it (the hit's proofs are the auditor's; the fields are
    // the envelope's own).
    let content =
        blockpost_core::decode_canonical::<blockpost_proto::v1::Envelope>(&h.envelope, "envelope")
            .ok()
            .and_then(|e| {
                blockpost_core::decode_canonical::<blockpost_proto::v1::EnvelopeContent>(
                    &e.content,
                    "envelope content",
                )
                .ok()
            });
    if json {
        use blockpost_proto::v1::envelope_content::Body;
        let decoded = content.as_ref().map(|c| {
            json!({
                "transaction_id": c.transaction_id,
                "kind": message_kind(c.kind),
                "sender": c.sender,
                "sender_name": h.sender_name,
                "recipients": c.recipients,
                "recipient_names": h.recipient_names,
                "timestamp_ms": c.timestamp_ms,
                "time": date(c.timestamp_ms),
                "content_type": c.content_type,
                "encrypted": matches!(c.body, Some(Body::Encrypted(_))),
                "body": match &c.body {
                    Some(Body::Plaintext(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
                    _ => None,
                },
            })
        });
        say!(
            "{}",
            json!({
                "message": decoded,
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
        let about = content.as_ref().map_or_else(String::new, |c| {
            let to: Vec<String> = c
                .recipients
                .iter()
                .enumerate()
                .map(|(i, a)| party(h.recipient_names.get(i).map_or("", String::as_str), a))
                .collect();
            format!(
                "  [{}] {} -> {} ({})",
                c.transaction_id,
                party(&h.sender_name, &c.sender),
                to.join(", "),
                message_kind(c.kind)
            )
        });
        say!(
            "{}  block {} leaf {}  {}{about}  (score {:.2})",
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
