//! The ledger: blocks, messages with their proofs, transactions and their records.

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

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

/// The header as signed and the builder's signature, base64: what a verifier checks the
/// chain with, from one answer.
fn signed_header_json(h: &blockpost_core::block::VerifiedHeader) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "header": b64.encode(&h.bytes),
        "signature": b64.encode(&h.signature),
        "signed_message": "\"blockpost/v1 block header\\n\" || header",
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
                "signed_header": signed_header_json(h),
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
pub fn ledger_message(
    m: &blockpost_client::LedgerMessage,
    read: Option<&super::Read>,
    json: bool,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let h = &m.header;
    if json {
        let mut v = json!({
            "message_id": hex::encode(m.message_id),
            "height": h.header.height,
            "leaf_index": m.leaf_index,
            "envelope": base64::engine::general_purpose::STANDARD.encode(&m.envelope_bytes),
            "inclusion_proof": hexes(&m.inclusion_proof),
            "block_root": hex::encode(&h.header.merkle_root),
            "header": header_json(h),
            "signed_header": signed_header_json(h),
            "header_hash": hex::encode(h.id),
            "ledger_index": h.header.height,
            "ledger_proof": hexes(&m.ledger_proof),
            "ledger_checkpoint": String::from_utf8_lossy(&m.checkpoint.note),
        });
        if let Some(x) = read {
            v["message"] = super::read_json(x);
        }
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!("message {}", hex::encode(m.message_id));
    if let Some(x) = read {
        let r = &x.received;
        let c = &r.content;
        say!("  from       {}", party(&r.sender_name, &c.sender));
        for (i, a) in c.recipients.iter().enumerate() {
            say!(
                "  {}         {}",
                if i == 0 { "to" } else { "  " },
                party(r.recipient_names.get(i).map_or("", String::as_str), a)
            );
        }
        say!(
            "  about      transaction {} ({}), sent {}",
            c.transaction_id,
            message_kind(c.kind),
            date(c.timestamp_ms)
        );
        if r.encrypted {
            match super::opened_by(x) {
                Some(by) => say!("  sealed     end to end; opened with {by}"),
                None => say!("  sealed     end to end"),
            }
        }
        say!("  body       {}", super::body_text(r));
    }
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
    eprintln!(
        "(inclusion proof, builder signature, chain link and ledger proof verified{})",
        if read.is_some() {
            "; the sender's signature verified against the directory"
        } else {
            ""
        }
    );
    Ok(())
}

fn record_json(r: &blockpost_proto::v1::LedgerRecord) -> Value {
    use blockpost_proto::v1::ledger_record::Record;
    match &r.record {
        Some(Record::Closing(c)) => json!({
            "kind": "closing",
            "transaction_id": c.transaction_id,
            "status": blockpost_core::status_name(c.status),
            "message_ids": hexes(&c.message_ids),
            "messages_root": hex::encode(&c.messages_root),
            "finished_by": c.finished_by,
            "time_ms": c.time_ms,
        }),
        Some(Record::Delivery(d)) => json!({
            "kind": "delivery",
            "transaction_id": d.transaction_id,
            "message_id": hex::encode(&d.message_id),
            "ledger": d.ledger,
            "transaction": blockpost_core::delivery::show_commitment(&d.ledger, &d.commitment),
            "stage": blockpost_core::delivery::stage_name(d.stage),
            "reason": d.reason,
            "ledger_height": d.ledger_height,
            "time_ms": d.time_ms,
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

fn leaf_json(m: &blockpost_client::LedgerMessage) -> Value {
    let h = &m.header;
    json!({
        "height": h.header.height,
        "leaf_index": m.leaf_index,
        "inclusion_proof": hexes(&m.inclusion_proof),
        "block_root": hex::encode(&h.header.merkle_root),
        "header_hash": hex::encode(h.id),
        "signed_header": signed_header_json(h),
        "ledger_index": h.header.height,
        "ledger_proof": hexes(&m.ledger_proof),
        "ledger_checkpoint": String::from_utf8_lossy(&m.checkpoint.note),
    })
}

/// A transaction, verified.
pub fn transaction(
    t: &blockpost_client::LedgerTransaction,
    names: &std::collections::HashMap<String, super::Named>,
    read: &[super::Read],
    json: bool,
) -> anyhow::Result<()> {
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
            .enumerate()
            .map(|(i, (m, c))| {
                let mut v = leaf_json(m);
                if let Some(x) = read.get(i) {
                    let r = &x.received;
                    v["sender_name"] = json!(r.sender_name);
                    v["recipient_names"] = json!(r.recipient_names);
                    v["encrypted"] = json!(r.encrypted);
                    v["body"] = json!(r.body.as_ref().map(|b| String::from_utf8_lossy(b)));
                    v["opened_with_key_index"] = json!(r.opened_with);
                    v["opened_with_generation"] = json!(x.generation);
                    v["unopened"] = json!(r.unopened);
                }
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
            v["status"] = json!(blockpost_core::status_name(c.status));
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
                "status": blockpost_core::status_name(st.status),
                "parties": st.parties,
                "party_names": st.parties.iter().map(|a| json!({
                    "address": a,
                    "real_name": names.get(a).map(|n| n.real_name.clone()),
                    "verified": names.get(a).map(|n| n.verified),
                    "lei": names.get(a).and_then(|n| n.lei.clone()),
                })).collect::<Vec<_>>(),
                "finished_by": st.finished_by,
                "opened_height": st.opened_height,
                "deadline_ms": st.deadline_ms,
                "messages": messages,
                "closing": closing,
                "settlement": super::settlement::summary_json(t, &contents, names),
            }))?
        );
        return Ok(());
    }
    say!(
        "transaction {}: {}",
        st.transaction_id,
        blockpost_core::status_name(st.status)
    );
    let named = |a: &String| match names.get(a) {
        Some(n) if n.verified => format!("{} <{a}> (verified)", n.real_name),
        Some(n) => party(&n.real_name, a),
        None => a.clone(),
    };
    say!(
        "  parties      {}",
        st.parties.iter().map(named).collect::<Vec<_>>().join(", ")
    );
    if !st.finished_by.is_empty() {
        say!("  finished by  {}", st.finished_by.join(", "));
    }
    say!(
        "  opened       in block {}; times out {} unless finished",
        st.opened_height,
        date(st.deadline_ms)
    );
    super::settlement::summary(t, &contents, names);
    for (i, (m, c)) in t.messages.iter().zip(&contents).enumerate() {
        say!(
            "  {:<8} {}  block {} leaf {}  {} -> {}",
            message_kind(c.kind),
            &hex::encode(m.message_id)[..16],
            m.header.header.height,
            m.leaf_index,
            named(&c.sender),
            c.recipients
                .iter()
                .map(named)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(x) = read.get(i) {
            let opened = match (x.received.encrypted, super::opened_by(x)) {
                (true, Some(by)) => format!(" (opened with {by})"),
                _ => String::new(),
            };
            say!("           {}{opened}", super::body_text(&x.received));
        }
    }
    if let Some((c, leaf)) = &t.closing {
        say!(
            "  closed       {} at {}, in block {} leaf {} (over {} messages, root {})",
            blockpost_core::status_name(c.status),
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
