//! The directory: entries, histories, the node's identity, checkpoints, new keys.

use base64::Engine as _;
use blockpost_client::VerifiedEntry;
use blockpost_core::VerifiedCheckpoint;
use blockpost_proto::v1::GetInfoResponse;
use serde_json::{Value, json};

use super::*;

/// The JSON form of a verified entry.
pub fn entry_json(e: &VerifiedEntry) -> Value {
    let b = &e.binding;
    json!({
        "address": b.address.as_str(),
        "real_name": b.real_name,
        "verified": b.verified,
        "lei": b.lei,
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
    if let Some(lei) = &b.lei {
        say!("  LEI             {lei} (self-declared, check digits verified)");
    }
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
pub fn info(
    endpoint: &str,
    i: &GetInfoResponse,
    more: &NodeKeys,
    json: bool,
) -> anyhow::Result<()> {
    let ledger = more.ledger.as_ref();
    let partitions = ledger.map(|l| l.firehose_partitions.max(1));
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "endpoint": endpoint,
                "origin": i.origin,
                "verifier_key": i.verifier_key,
                "ca_certificate_pem": i.ca_certificate_pem,
                "require_verified": i.require_verified,
                "ledger": ledger.map(|l| json!({
                    "origin": l.origin,
                    "verifier_key": l.verifier_key,
                    "builder_key": hex::encode(&l.builder_key),
                    "delivery_key": (!l.delivery_key.is_empty()).then(|| hex::encode(&l.delivery_key)),
                    "transaction_timeout_ms": l.transaction_timeout_ms,
                    "firehose_partitions": partitions,
                })),
                "gateway": more.gateway.as_ref().map(|g| json!({
                    "receipt_key": hex::encode(&g.receipt_key),
                    "max_block_delay_ms": g.max_block_delay_ms,
                })),
                "witnesses": {
                    "pinned_by_this_client": more.witnesses,
                    "cosigned_directory_checkpoint": more.directory_cosigners,
                    "cosigned_ledger_checkpoint": more.ledger_cosigners,
                },
            }))?
        );
        return Ok(());
    }
    say!("directory");
    say!("  origin          {}", i.origin);
    say!("  log key         {}", i.verifier_key);
    say!(
        "  names           {}",
        if i.require_verified {
            "evidence required"
        } else {
            "evidence optional"
        }
    );
    match ledger {
        Some(l) => {
            say!("ledger");
            say!("  origin          {}", l.origin);
            say!("  checkpoint key  {}", l.verifier_key);
            say!("  builder key     {}", hex::encode(&l.builder_key));
            if !l.delivery_key.is_empty() {
                say!(
                    "  delivery key    {} (x25519)",
                    hex::encode(&l.delivery_key)
                );
            }
            say!(
                "  rules           transactions time out {} s after they open; {} firehose partition(s)",
                l.transaction_timeout_ms / 1000,
                partitions.unwrap_or(1)
            );
        }
        None => say!("ledger            none at this endpoint"),
    }
    match &more.gateway {
        Some(g) => {
            say!("gateway");
            say!("  receipt key     {}", hex::encode(&g.receipt_key));
            say!(
                "  promise         every accepted message in a block within {} ms",
                g.max_block_delay_ms
            );
        }
        None => say!("gateway           none at this endpoint"),
    }
    say!("witnesses");
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    say!("  pinned here     {}", list(&more.witnesses));
    say!(
        "  cosigned the newest directory checkpoint: {}",
        list(&more.directory_cosigners)
    );
    say!(
        "  cosigned the newest ledger checkpoint:    {}",
        list(&more.ledger_cosigners)
    );
    say!("directory CA");
    say!("{}", i.ca_certificate_pem.trim_end());
    Ok(())
}

/// What `info` shows beside the directory's own identity.
pub struct NodeKeys {
    /// The ledger's keys and rules, if the endpoint serves one.
    pub ledger: Option<blockpost_proto::v1::LedgerInfo>,
    /// The gateway's receipt key and promise, if the endpoint serves one.
    pub gateway: Option<blockpost_proto::v1::GatewayInfo>,
    /// Names on the cosignature lines of the newest directory checkpoint.
    pub directory_cosigners: Vec<String>,
    /// Names on the cosignature lines of the newest ledger checkpoint.
    pub ledger_cosigners: Vec<String>,
    /// The witness keys this client was told to require.
    pub witnesses: Vec<String>,
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
