//! Rendering verified entries for people and for `--json`.

use base64::Engine as _;
use blockpost_proto::v1::EntryKind;
use serde_json::{Value, json};

use crate::VerifiedEntry;

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

fn kind(k: EntryKind) -> &'static str {
    match k {
        EntryKind::Register => "register",
        EntryKind::Rotate => "rotate",
        EntryKind::Revoke => "revoke",
        EntryKind::Unspecified => "unspecified",
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
        "kind": kind(b.kind),
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

/// A human summary of a verified entry.
pub fn print_entry(e: &VerifiedEntry) {
    let b = &e.binding;
    crate::say!("{} {} ({})", kind(b.kind), b.address, b.real_name);
    crate::say!(
        "  verified name   {}",
        if b.verified {
            "yes (evidence chains to a trust anchor)"
        } else {
            "no"
        }
    );
    if b.revoked() {
        crate::say!("  status          REVOKED");
    }
    crate::say!("  signing key     {}", hex::encode(b.signing_key));
    crate::say!("  encryption key  {}", hex::encode(b.encryption_key));
    crate::say!(
        "  log index       {} (proof verified against checkpoint of size {})",
        e.leaf_index,
        e.checkpoint.size
    );
}
