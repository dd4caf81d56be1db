//! Directory log entries, decoded once into checked types.

use blockpost_proto::v1::{EntryKind, LogEntry};
use prost::Message as _;

use crate::{Address, Error, Result};

/// OID of the certificate extension carrying the x25519 encryption key as a DER
/// SubjectPublicKeyInfo (non-critical).
///
/// It sits under 1.3.6.1.4.1.32473, the enterprise number RFC 5612 reserves for
/// documentation, until the project registers its own; rcgen only takes OIDs whose arcs fit
/// in 64 bits, which rules out the registration-free UUID arc 2.25.
pub const X25519_EXTENSION_OID: &str = "1.3.6.1.4.1.32473.1.1";

/// The state of an address after one log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The entry's kind.
    pub kind: EntryKind,
    /// Routing address.
    pub address: Address,
    /// Real (legal) name.
    pub real_name: String,
    /// Whether the name was backed by evidence chaining to a trust anchor.
    pub verified: bool,
    /// ed25519 public key.
    pub signing_key: [u8; 32],
    /// x25519 public key.
    pub encryption_key: [u8; 32],
    /// The certificate the directory issued for these keys (DER); empty for a revocation.
    pub certificate: Vec<u8>,
    /// Entry this one supersedes (rotate, revoke).
    pub previous_index: Option<u64>,
    /// When the directory logged it (Unix ms).
    pub logged_at_ms: i64,
    /// DER SubjectPublicKeyInfo of the evidence certificate's key, which may revoke the
    /// binding; empty without evidence.
    pub evidence_key: Vec<u8>,
    /// The ISO 17442 LEI the registration declared (check digits verified), if any.
    pub lei: Option<String>,
}

impl Binding {
    /// Whether this entry ended the binding.
    pub fn revoked(&self) -> bool {
        self.kind == EntryKind::Revoke
    }

    /// The binding a decoded entry states.
    pub fn from_entry(e: &LogEntry) -> Result<Self> {
        let malformed = |why: String| Error::Malformed {
            what: "log entry",
            why,
        };
        let kind = EntryKind::try_from(e.kind)
            .map_err(|_| malformed(format!("unknown kind {}", e.kind)))?;
        if kind == EntryKind::Unspecified {
            return Err(malformed("kind unspecified".into()));
        }
        let key = |b: &[u8], what: &str| -> Result<[u8; 32]> {
            b.try_into()
                .map_err(|_| malformed(format!("{what} of {} bytes", b.len())))
        };
        let binding = Binding {
            kind,
            address: Address::parse(&e.address)?,
            real_name: e.real_name.clone(),
            verified: e.verified,
            signing_key: key(&e.signing_key, "signing key")?,
            encryption_key: key(&e.encryption_key, "encryption key")?,
            certificate: e.certificate.clone(),
            previous_index: (kind != EntryKind::Register).then_some(e.previous_index),
            logged_at_ms: e.logged_at_ms,
            evidence_key: e.evidence_key.clone(),
            lei: if e.lei.is_empty() {
                None
            } else {
                crate::settle::check_lei(&e.lei).map_err(|p| Error::Malformed {
                    what: "log entry",
                    why: format!("lei {p}"),
                })?;
                Some(e.lei.clone())
            },
        };
        Ok(binding)
    }
}

/// Decodes and checks one log entry (its shape, not who authorised it: that is
/// [`crate::authorize_entry`]).
pub fn decode_entry(bytes: &[u8]) -> Result<(LogEntry, Binding)> {
    let e = LogEntry::decode(bytes).map_err(|err| Error::Malformed {
        what: "log entry",
        why: err.to_string(),
    })?;
    let binding = Binding::from_entry(&e)?;
    Ok((e, binding))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn decodes_and_rejects() {
        let e = LogEntry {
            kind: EntryKind::Register as i32,
            address: "alice".into(),
            real_name: "Alice AG".into(),
            signing_key: vec![1; 32],
            encryption_key: vec![2; 32],
            ..Default::default()
        };
        let (_, b) = decode_entry(&e.encode_to_vec()).unwrap();
        assert_eq!(b.address.as_str(), "alice");
        assert!(!b.revoked());
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
        let mut bad = e.clone();
        bad.address = "a.b".into();
        assert!(matches!(
            decode_entry(&bad.encode_to_vec()),
            Err(Error::InvalidAddress { .. })
        ));
        let mut bad = e;
        bad.signing_key = vec![1; 31];
        assert!(matches!(
            decode_entry(&bad.encode_to_vec()),
            Err(Error::Malformed { .. })
        ));
    }
}
