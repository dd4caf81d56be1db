//! Who authorised a log entry: the signed request inside every entry, re-checked against
//! the binding the entry supersedes.
//!
//! The directory calls [`authorize_entry`] on each entry it builds, before the entry is
//! sequenced; gateways, clients and auditors call the same function on every entry they
//! read. So what the directory accepts and what a verifier accepts cannot drift apart.

use blockpost_proto::v1::{
    EntryKind, LogEntry, RegisterBody, RevokeBody, RotateBody, SignedRequest,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::evidence::{leaf_spki, verify_with_spki};
use crate::{
    Binding, Error, Operation, Result, X25519_EXTENSION_OID, check_real_name, ed25519_key,
    x25519_key,
};

/// Longest revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// A signed directory request whose signatures verified, given the binding it supersedes:
/// what [`authorize_request`] returns. Only it makes one, so an entry can only be checked
/// against a request whose signatures were verified.
#[derive(Clone, Debug)]
pub struct AuthorizedRequest {
    body: Body,
    /// DER SubjectPublicKeyInfo of the evidence key that signed a registration.
    evidence_key: Vec<u8>,
    previous: Option<u64>,
}

#[derive(Clone, Debug)]
enum Body {
    Register(RegisterBody),
    Rotate(RotateBody),
    Revoke(RevokeBody),
}

/// Checks the signatures of a request of `kind`, given the binding it supersedes
/// (`previous`: the log index and state of the address's newest entry, or `None`): proof of
/// possession of every new key, a rotation signed by the current and the new key, a
/// revocation signed by the current key or by the evidence key, the evidence key's
/// signature on a registration with evidence, and that the request names `previous`. The
/// body must be canonical protobuf.
///
/// The directory calls this first, before it spends anything on a request; verifiers get it
/// through [`authorize_entry`].
pub fn authorize_request(
    kind: EntryKind,
    req: &SignedRequest,
    previous: Option<(u64, &Binding)>,
) -> Result<AuthorizedRequest> {
    match kind {
        EntryKind::Register => {
            let body = decode_body::<RegisterBody>(&req.body, "RegisterBody")?;
            x25519_key(&body.encryption_key)?;
            if !body.lei.is_empty() {
                crate::settle::check_lei(&body.lei).map_err(|p| Error::Malformed {
                    what: "RegisterBody",
                    why: format!("lei {p}"),
                })?;
            }
            if let Some((at, _)) = previous {
                return Err(Error::WrongPredecessor {
                    address: body.address.clone(),
                    why: format!("the address is bound already (entry {at})"),
                });
            }
            Operation::Register
                .verify(&ed25519_key(&body.signing_key)?, &req.body, &req.signature)
                .map_err(|_| {
                    Error::SignatureInvalid(
                        "proof of possession of the signing key does not verify",
                    )
                })?;
            let evidence_key = if body.evidence_chain.is_empty() {
                if !req.second_signature.is_empty() {
                    return Err(Error::Malformed {
                        what: "register request",
                        why: "evidence signature given without an evidence chain".into(),
                    });
                }
                Vec::new()
            } else {
                let spki = leaf_spki(&body.evidence_chain).map_err(|e| match e {
                    Error::Evidence(e) => Error::Evidence(e),
                    other => Error::from(crate::EvidenceError::Chain {
                        why: other.to_string(),
                    }),
                })?;
                if req.second_signature.is_empty() {
                    return Err(Error::SignatureInvalid(
                        "the evidence key did not sign the request",
                    ));
                }
                verify_with_spki(
                    &spki,
                    &Operation::Register.message(&req.body),
                    &req.second_signature,
                )?;
                spki
            };
            Ok(AuthorizedRequest {
                body: Body::Register(body),
                evidence_key,
                previous: None,
            })
        }
        EntryKind::Rotate => {
            let body = decode_body::<RotateBody>(&req.body, "RotateBody")?;
            x25519_key(&body.new_encryption_key)?;
            let (at, prev) = current(previous, &body.address, "rotate")?;
            names_current(&body.address, body.current_index, at)?;
            Operation::Rotate
                .verify(&ed25519_key(&prev.signing_key)?, &req.body, &req.signature)
                .map_err(|_| {
                    Error::SignatureInvalid("signature by the current key does not verify")
                })?;
            Operation::Rotate
                .verify(
                    &ed25519_key(&body.new_signing_key)?,
                    &req.body,
                    &req.second_signature,
                )
                .map_err(|_| {
                    Error::SignatureInvalid("proof of possession of the new key does not verify")
                })?;
            Ok(AuthorizedRequest {
                body: Body::Rotate(body),
                evidence_key: Vec::new(),
                previous: Some(at),
            })
        }
        EntryKind::Revoke => {
            let body = decode_body::<RevokeBody>(&req.body, "RevokeBody")?;
            if body.reason.len() > MAX_REASON_LEN {
                return Err(Error::TooLarge {
                    field: "reason",
                    len: body.reason.len(),
                    limit: MAX_REASON_LEN,
                });
            }
            let (at, prev) = current(previous, &body.address, "revoke")?;
            names_current(&body.address, body.current_index, at)?;
            if !req.signature.is_empty() {
                Operation::Revoke
                    .verify(&ed25519_key(&prev.signing_key)?, &req.body, &req.signature)
                    .map_err(|_| {
                        Error::SignatureInvalid("signature by the current key does not verify")
                    })?;
            } else if !req.second_signature.is_empty() {
                if prev.evidence_key.is_empty() {
                    return Err(Error::SignatureInvalid(
                        "the binding has no evidence key; sign the revocation with the current key",
                    ));
                }
                verify_with_spki(
                    &prev.evidence_key,
                    &Operation::Revoke.message(&req.body),
                    &req.second_signature,
                )?;
            } else {
                return Err(Error::SignatureInvalid("revocation is not signed"));
            }
            Ok(AuthorizedRequest {
                body: Body::Revoke(body),
                evidence_key: Vec::new(),
                previous: Some(at),
            })
        }
        EntryKind::Unspecified => Err(Error::Malformed {
            what: "signed request",
            why: "kind unspecified".into(),
        }),
    }
}

impl AuthorizedRequest {
    /// The address the request is for.
    pub fn address(&self) -> &str {
        match &self.body {
            Body::Register(b) => &b.address,
            Body::Rotate(b) => &b.address,
            Body::Revoke(b) => &b.address,
        }
    }

    /// Checks that `entry` says exactly what this request and the binding it supersedes
    /// (`previous`, the one the request was authorised against) say: address, name,
    /// verified flag, keys, evidence key, predecessor, and that its certificate binds them.
    /// Returns the new binding.
    pub fn check_entry(&self, entry: &LogEntry, previous: Option<&Binding>) -> Result<Binding> {
        // The keys are the request's (checked by `authorize_request`) or the superseded
        // binding's (checked when it was logged): only their equality is checked here.
        let b = Binding::from_entry(entry)?;
        check_real_name(&b.real_name)?;
        let mismatch = |field| Err(Error::EntryMismatch { field });
        if entry.address != self.address() {
            return mismatch("address");
        }
        if b.previous_index != self.previous {
            return mismatch("previous_index");
        }
        if entry.kind == EntryKind::Register as i32 && entry.previous_index != 0 {
            return mismatch("previous_index");
        }
        match (&self.body, b.kind, previous) {
            (Body::Register(body), EntryKind::Register, None) => {
                if body.real_name != entry.real_name {
                    return mismatch("real_name");
                }
                if body.lei != entry.lei {
                    return mismatch("lei");
                }
                if body.signing_key != entry.signing_key {
                    return mismatch("signing_key");
                }
                if body.encryption_key != entry.encryption_key {
                    return mismatch("encryption_key");
                }
                if entry.evidence_key != self.evidence_key {
                    return mismatch("evidence_key");
                }
                let has_evidence = !self.evidence_key.is_empty();
                if entry.verified != has_evidence {
                    return mismatch("verified");
                }
                check_certificate(&b)?;
            }
            (Body::Rotate(body), EntryKind::Rotate, Some(prev)) => {
                if body.new_signing_key != entry.signing_key {
                    return mismatch("signing_key");
                }
                if body.new_encryption_key != entry.encryption_key {
                    return mismatch("encryption_key");
                }
                carried_over(&b, prev)?;
                check_certificate(&b)?;
            }
            (Body::Revoke(_), EntryKind::Revoke, Some(prev)) => {
                if b.signing_key != prev.signing_key {
                    return mismatch("signing_key");
                }
                if b.encryption_key != prev.encryption_key {
                    return mismatch("encryption_key");
                }
                if !b.certificate.is_empty() {
                    return mismatch("certificate");
                }
                carried_over(&b, prev)?;
            }
            _ => return mismatch("kind"),
        }
        Ok(b)
    }
}

/// Checks that `entry` was authorised by its signed request, given the binding it
/// supersedes (`previous`: the log index and state of the address's newest entry, or `None`
/// when the address has none): [`authorize_request`] on the request inside it, then
/// [`AuthorizedRequest::check_entry`]. Returns the new binding.
///
/// Not checked here: the evidence chain up to the operator's trust anchors
/// ([`crate::TrustAnchors::check`]), the timestamp against a clock, and the CA's signature
/// on the certificate.
pub fn authorize_entry(entry: &LogEntry, previous: Option<(u64, &Binding)>) -> Result<Binding> {
    let kind = EntryKind::try_from(entry.kind).map_err(|_| Error::Malformed {
        what: "log entry",
        why: format!("unknown kind {}", entry.kind),
    })?;
    // A predecessor of another address is refused by `authorize_request` (rotate, revoke:
    // `current`) or is no predecessor at all (register); the entry's own address must equal
    // the request's (`check_entry`).
    let req = entry.request.as_ref().ok_or_else(|| Error::Malformed {
        what: "log entry",
        why: "no signed request".into(),
    })?;
    let auth = authorize_request(kind, req, previous)?;
    auth.check_entry(entry, previous.map(|(_, b)| b))
}

fn decode_body<M: prost::Message + Default>(bytes: &[u8], name: &'static str) -> Result<M> {
    crate::decode_canonical(bytes, name)
}

/// The live binding a rotation or revocation supersedes.
fn current<'a>(
    previous: Option<(u64, &'a Binding)>,
    address: &str,
    what: &str,
) -> Result<(u64, &'a Binding)> {
    let (at, prev) = previous.ok_or_else(|| Error::WrongPredecessor {
        address: address.to_owned(),
        why: format!("no binding to {what}"),
    })?;
    if prev.address.as_str() != address {
        return Err(Error::WrongPredecessor {
            address: address.to_owned(),
            why: format!("entry {at} is for {}", prev.address),
        });
    }
    if prev.revoked() {
        return Err(Error::KeyRevoked {
            address: address.to_owned(),
            at,
        });
    }
    Ok((at, prev))
}

/// A rotation or revocation request names the current entry `at`.
fn names_current(address: &str, named: u64, at: u64) -> Result<()> {
    if named != at {
        return Err(Error::WrongPredecessor {
            address: address.to_owned(),
            why: format!("the request names entry {named} but the current entry is {at}"),
        });
    }
    Ok(())
}

/// What a rotation or revocation keeps from the binding it supersedes.
fn carried_over(b: &Binding, prev: &Binding) -> Result<()> {
    let mismatch = |field| Err(Error::EntryMismatch { field });
    if b.real_name != prev.real_name {
        return mismatch("real_name");
    }
    if b.verified != prev.verified {
        return mismatch("verified");
    }
    if b.evidence_key != prev.evidence_key {
        return mismatch("evidence_key");
    }
    if b.lei != prev.lei {
        return mismatch("lei");
    }
    Ok(())
}

/// Checks that the entry's certificate binds its real name (CN), address (URI SAN
/// `blockpost:ADDRESS`), signing key (subject key) and encryption key (extension).
fn check_certificate(b: &Binding) -> Result<()> {
    let bad = |why: &str| Error::Malformed {
        what: "certificate",
        why: why.into(),
    };
    if b.certificate.is_empty() {
        return Err(Error::EntryMismatch {
            field: "certificate",
        });
    }
    let (_, cert) = X509Certificate::from_der(&b.certificate)
        .map_err(|e| bad(&format!("not DER X.509: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != b.signing_key {
        return Err(bad("its subject key is not the entry's signing key"));
    }
    let cn_matches = cert
        .subject()
        .iter_common_name()
        .any(|a| a.as_str().is_ok_and(|s| s == b.real_name));
    if !cn_matches {
        return Err(bad("its common name is not the entry's real name"));
    }
    let uri = format!("blockpost:{}", b.address);
    let san_matches = matches!(cert.subject_alternative_name(), Ok(Some(san))
        if san.value.general_names.iter().any(|n| matches!(n, GeneralName::URI(u) if *u == uri)));
    if !san_matches {
        return Err(bad("it does not name the entry's address"));
    }
    let x25519_matches = cert.extensions().iter().any(|e| {
        e.oid.to_id_string() == X25519_EXTENSION_OID && e.value.ends_with(&b.encryption_key)
    });
    if !x25519_matches {
        return Err(bad("it does not carry the entry's encryption key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use blockpost_proto::v1::LogEntry;
    use prost::Message as _;

    use super::*;
    use crate::Identity;
    use crate::testkit::{certificate, register, revoke, rotate};

    fn ok(e: &LogEntry, prev: Option<(u64, &Binding)>) -> Binding {
        authorize_entry(e, prev).unwrap()
    }

    #[test]
    fn a_whole_life_is_authorised() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let reg = register("alice", "Alice AG", &a);
        let b0 = ok(&reg, None);
        assert_eq!(b0.signing_key, a.signing_public());
        let rot = rotate("alice", "Alice AG", 0, &a, &b);
        let b1 = ok(&rot, Some((0, &b0)));
        assert_eq!(b1.signing_key, b.signing_public());
        let rev = revoke("alice", "Alice AG", 1, &b);
        assert!(ok(&rev, Some((1, &b1))).revoked());
    }

    #[test]
    fn a_changed_byte_is_refused() {
        let a = Identity::generate();
        let mut reg = register("alice", "Alice AG", &a);
        let req = reg.request.as_mut().unwrap();
        // The body claims another timestamp: the signature no longer covers it.
        let mut body = RegisterBody::decode(req.body.as_slice()).unwrap();
        body.timestamp_ms ^= 0x40;
        req.body = prost::Message::encode_to_vec(&body);
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::SignatureInvalid(_))
        ));
        let mut reg = register("alice", "Alice AG", &a);
        reg.request.as_mut().unwrap().signature[7] ^= 1;
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::SignatureInvalid(_))
        ));
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let (a, m) = (Identity::generate(), Identity::generate());
        // Signed by someone other than the key it binds: no proof of possession.
        let mut reg = register("alice", "Alice AG", &a);
        let req = reg.request.as_mut().unwrap();
        req.signature = Operation::Register.sign(&m.signing, &req.body);
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::SignatureInvalid(_))
        ));
        // A rotation signed by the new key twice, not by the current one.
        let b0 = ok(&register("alice", "Alice AG", &a), None);
        let rot = rotate("alice", "Alice AG", 0, &m, &m);
        assert!(matches!(
            authorize_entry(&rot, Some((0, &b0))),
            Err(Error::SignatureInvalid(m)) if m.contains("current key")
        ));
        // A rotation without the new key's signature.
        let n = Identity::generate();
        let mut rot = rotate("alice", "Alice AG", 0, &a, &n);
        let req = rot.request.as_mut().unwrap();
        req.second_signature = Operation::Rotate.sign(&m.signing, &req.body);
        assert!(matches!(
            authorize_entry(&rot, Some((0, &b0))),
            Err(Error::SignatureInvalid(m)) if m.contains("new key")
        ));
        // A revocation by a stranger.
        let rev = revoke("alice", "Alice AG", 0, &m);
        assert!(authorize_entry(&rev, Some((0, &b0))).is_err());
    }

    #[test]
    fn a_wrong_context_string_is_refused() {
        let a = Identity::generate();
        let mut reg = register("alice", "Alice AG", &a);
        let req = reg.request.as_mut().unwrap();
        req.signature = Operation::Rotate.sign(&a.signing, &req.body);
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::SignatureInvalid(_))
        ));
        let b0 = ok(&register("alice", "Alice AG", &a), None);
        let mut rev = revoke("alice", "Alice AG", 0, &a);
        let req = rev.request.as_mut().unwrap();
        req.signature = Operation::Register.sign(&a.signing, &req.body);
        assert!(matches!(
            authorize_entry(&rev, Some((0, &b0))),
            Err(Error::SignatureInvalid(_))
        ));
    }

    #[test]
    fn a_wrong_order_is_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let reg = register("alice", "Alice AG", &a);
        let b0 = ok(&reg, None);
        // Registering a bound address.
        assert!(matches!(
            authorize_entry(&reg, Some((0, &b0))),
            Err(Error::WrongPredecessor { .. })
        ));
        // Rotating or revoking nothing.
        let rot = rotate("alice", "Alice AG", 0, &a, &b);
        assert!(matches!(
            authorize_entry(&rot, None),
            Err(Error::WrongPredecessor { .. })
        ));
        // Naming an entry that is not the current one.
        assert!(matches!(
            authorize_entry(&rot, Some((5, &b0))),
            Err(Error::WrongPredecessor { .. })
        ));
        // Anything after a revocation.
        let rev = revoke("alice", "Alice AG", 0, &a);
        let b1 = ok(&rev, Some((0, &b0)));
        let rot = rotate("alice", "Alice AG", 1, &a, &b);
        assert!(matches!(
            authorize_entry(&rot, Some((1, &b1))),
            Err(Error::KeyRevoked { at: 1, .. })
        ));
        // A predecessor of another address.
        let other = ok(&register("bob", "Bob Ltd", &b), None);
        let rot = rotate("alice", "Alice AG", 0, &a, &b);
        assert!(matches!(
            authorize_entry(&rot, Some((0, &other))),
            Err(Error::WrongPredecessor { .. })
        ));
    }

    #[test]
    fn an_entry_that_differs_from_its_request_is_refused() {
        let (a, m) = (Identity::generate(), Identity::generate());
        let mut reg = register("alice", "Alice AG", &a);
        reg.signing_key = m.signing_public().to_vec();
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::EntryMismatch {
                field: "signing_key"
            })
        ));
        let mut reg = register("alice", "Alice AG", &a);
        reg.real_name = "Mallory AG".into();
        reg.certificate = certificate("Mallory AG", "alice", &a);
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::EntryMismatch { field: "real_name" })
        ));
        let mut reg = register("alice", "Alice AG", &a);
        reg.verified = true;
        assert!(matches!(
            authorize_entry(&reg, None),
            Err(Error::EntryMismatch { field: "verified" })
        ));
        // A certificate for another key, name or address.
        for cert in [
            certificate("Alice AG", "alice", &m),
            certificate("Alice AH", "alice", &a),
            certificate("Alice AG", "alicf", &a),
        ] {
            let mut reg = register("alice", "Alice AG", &a);
            reg.certificate = cert;
            assert!(matches!(
                authorize_entry(&reg, None),
                Err(Error::Malformed {
                    what: "certificate",
                    ..
                })
            ));
        }
        // A rotation that renames the binding.
        let b0 = ok(&register("alice", "Alice AG", &a), None);
        let rot = rotate("alice", "Alice Renamed AG", 0, &a, &m);
        assert!(matches!(
            authorize_entry(&rot, Some((0, &b0))),
            Err(Error::EntryMismatch { field: "real_name" })
        ));
        // A revocation that swaps the keys.
        let mut rev = revoke("alice", "Alice AG", 0, &a);
        rev.encryption_key = m.encryption_public().to_vec();
        assert!(matches!(
            authorize_entry(&rev, Some((0, &b0))),
            Err(Error::EntryMismatch {
                field: "encryption_key"
            })
        ));
    }

    #[test]
    fn revocations_need_a_signature_and_evidence_keys_must_exist() {
        let a = Identity::generate();
        let b0 = ok(&register("alice", "Alice AG", &a), None);
        let mut rev = revoke("alice", "Alice AG", 0, &a);
        rev.request.as_mut().unwrap().signature.clear();
        assert!(matches!(
            authorize_entry(&rev, Some((0, &b0))),
            Err(Error::SignatureInvalid("revocation is not signed"))
        ));
        let req = rev.request.as_mut().unwrap();
        req.second_signature = vec![1; 64];
        assert!(matches!(
            authorize_entry(&rev, Some((0, &b0))),
            Err(Error::SignatureInvalid(m)) if m.contains("no evidence key")
        ));
        let mut unsigned = register("alice", "Alice AG", &a);
        unsigned.request = None;
        assert!(matches!(
            authorize_entry(&unsigned, None),
            Err(Error::Malformed { .. })
        ));
    }
}
