//! Builders for the unit tests: log entries as the directory writes them, with
//! certificates in the directory CA's format.

use blockpost_proto::v1::{
    EntryKind, LogEntry, RegisterBody, RevokeBody, RotateBody, SignedRequest,
};
use prost::Message as _;
use rcgen::{
    CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair, PKCS_ED25519, PublicKeyData,
    SanType,
};

use crate::{Identity, Operation, X25519_EXTENSION_OID};

struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// A certificate as the directory CA issues it.
pub fn certificate(real_name: &str, address: &str, id: &Identity) -> Vec<u8> {
    let ca_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca, ca_key);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, real_name);
    p.subject_alt_names = vec![SanType::URI(
        format!("blockpost:{address}").try_into().unwrap(),
    )];
    let oid: Vec<u64> = X25519_EXTENSION_OID
        .split('.')
        .map(|a| a.parse().unwrap())
        .collect();
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(&id.encryption_public());
    p.custom_extensions = vec![CustomExtension::from_oid_content(&oid, spki)];
    p.signed_by(&Ed25519Public(id.signing_public()), &issuer)
        .unwrap()
        .der()
        .to_vec()
}

/// A register entry signed by `id`.
pub fn register(address: &str, name: &str, id: &Identity) -> LogEntry {
    let body = RegisterBody {
        lei: Default::default(),
        address: address.into(),
        real_name: name.into(),
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        evidence_chain: vec![],
        timestamp_ms: 1,
    }
    .encode_to_vec();
    LogEntry {
        lei: Default::default(),
        kind: EntryKind::Register as i32,
        address: address.into(),
        real_name: name.into(),
        verified: false,
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        certificate: certificate(name, address, id),
        previous_index: 0,
        logged_at_ms: 2,
        request: Some(SignedRequest {
            signature: Operation::Register.sign(&id.signing, &body),
            body,
            second_signature: vec![],
        }),
        evidence_key: vec![],
    }
}

/// A rotate entry from `old` (entry `current`) to `new`.
pub fn rotate(address: &str, name: &str, current: u64, old: &Identity, new: &Identity) -> LogEntry {
    let body = RotateBody {
        address: address.into(),
        current_index: current,
        new_signing_key: new.signing_public().to_vec(),
        new_encryption_key: new.encryption_public().to_vec(),
        timestamp_ms: 1,
    }
    .encode_to_vec();
    LogEntry {
        lei: Default::default(),
        kind: EntryKind::Rotate as i32,
        address: address.into(),
        real_name: name.into(),
        verified: false,
        signing_key: new.signing_public().to_vec(),
        encryption_key: new.encryption_public().to_vec(),
        certificate: certificate(name, address, new),
        previous_index: current,
        logged_at_ms: 3,
        request: Some(SignedRequest {
            signature: Operation::Rotate.sign(&old.signing, &body),
            second_signature: Operation::Rotate.sign(&new.signing, &body),
            body,
        }),
        evidence_key: vec![],
    }
}

/// A revoke entry of `address` (entry `current`, keys of `id`), signed by `id`.
pub fn revoke(address: &str, name: &str, current: u64, id: &Identity) -> LogEntry {
    let body = RevokeBody {
        address: address.into(),
        current_index: current,
        reason: "closed".into(),
        timestamp_ms: 1,
    }
    .encode_to_vec();
    LogEntry {
        lei: Default::default(),
        kind: EntryKind::Revoke as i32,
        address: address.into(),
        real_name: name.into(),
        verified: false,
        signing_key: id.signing_public().to_vec(),
        encryption_key: id.encryption_public().to_vec(),
        certificate: vec![],
        previous_index: current,
        logged_at_ms: 4,
        request: Some(SignedRequest {
            signature: Operation::Revoke.sign(&id.signing, &body),
            body,
            second_signature: vec![],
        }),
        evidence_key: vec![],
    }
}

/// `n` registrations of distinct addresses, encoded as the log holds them.
pub fn registrations(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let id = Identity::generate();
            register(&format!("party-{i}"), &format!("Party {i}"), &id).encode_to_vec()
        })
        .collect()
}

/// The inclusion proof of leaf `index` in the first `size` leaves of `tree`.
pub fn inclusion_proof(tree: &crate::ReplayTree, index: u64, size: u64) -> Vec<[u8; 32]> {
    tlog_tiles::prove_record(size, index, tree)
        .unwrap()
        .into_iter()
        .map(|h| h.0)
        .collect()
}
