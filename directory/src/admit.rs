//! What the directory admits: each request checked before it is sequenced (sizes, the
//! clock, signatures and the rules of `core`, the registration limits), and the entry it
//! would append, with the certificate issued for it.

use std::net::IpAddr;

use blockpost_core::{
    Address, Binding, MAX_REASON_LEN, authorize_request, check_clock, check_real_name,
    decode_canonical, decode_entry, ed25519_key, x25519_key,
};
use blockpost_proto::v1::{
    EntryKind, LogEntry, RegisterBody, RevokeBody, RotateBody, SignedRequest,
};
use prost::Message as _;
use time::OffsetDateTime;

use crate::ca::Subject;
use crate::service::{Inner, MAX_BODY_LEN, Precondition};
use crate::{Error, InvalidRequest, Result};

pub(crate) type Checked = (String, Vec<u8>, bool, Precondition);

impl Inner {
    fn check_clock(&self, ts: i64) -> Result<()> {
        Ok(check_clock(
            ts,
            self.clock.now_ms(),
            self.config.max_clock_skew_ms,
        )?)
    }

    pub(crate) fn check_register(
        &self,
        req: SignedRequest,
        peer: Option<IpAddr>,
    ) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RegisterBody = decode_canonical(&req.body, "RegisterBody")?;
        let address = Address::parse(&body.address)?;
        check_real_name(&body.real_name)?;
        ed25519_key(&body.signing_key)?;
        x25519_key(&body.encryption_key)?;
        self.check_clock(body.timestamp_ms)?;
        if !body.evidence_chain.is_empty() && self.anchors.is_empty() {
            return Err(blockpost_core::Error::Evidence(
                blockpost_core::EvidenceError::TrustAnchor {
                    why: "this directory has no trust anchors configured".into(),
                },
            )
            .into());
        }
        // Signatures first, before anything is spent on the request: the same core rule
        // every verifier re-runs on the logged entry.
        let auth = authorize_request(EntryKind::Register, &req, None)?;
        let (verified, evidence_key) = if body.evidence_chain.is_empty() {
            if !req.second_signature.is_empty() {
                return Err(Error::InvalidRequest(
                    InvalidRequest::EvidenceSignatureWithoutChain,
                ));
            }
            if self.config.require_verified {
                return Err(Error::EvidenceRequired);
            }
            (false, Vec::new())
        } else {
            let now_secs = self.clock.now_ms().div_euclid(1000);
            let ev = self
                .anchors
                .check(&body.evidence_chain, &body.real_name, now_secs)?;
            (true, ev.leaf_spki)
        };
        if self.store.address(address.as_str()).is_some() {
            return Err(Error::AddressTaken(address.to_string()));
        }
        let logged_at_ms = self.clock.now_ms();
        // Only a request that would be logged spends a token: garbage, forged signatures
        // and taken addresses are refused above without draining anyone's limit.
        if !verified {
            self.limiter.admit(peer, logged_at_ms)?;
        }
        let certificate = self.issue(
            &body.real_name,
            &address,
            &body.signing_key,
            &body.encryption_key,
            logged_at_ms,
        )?;
        let entry = LogEntry {
            kind: EntryKind::Register as i32,
            address: address.to_string(),
            real_name: body.real_name,
            verified,
            signing_key: body.signing_key,
            encryption_key: body.encryption_key,
            certificate,
            previous_index: 0,
            logged_at_ms,
            request: Some(req),
            evidence_key,
            lei: body.lei,
        };
        // The entry says exactly what the request says (the rest of `authorize_entry`).
        auth.check_entry(&entry, None)?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            false,
            Precondition::Unregistered,
        ))
    }

    fn current(&self, address: &Address, named: u64) -> Result<(u64, Binding)> {
        let st = self
            .store
            .address(address.as_str())
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        let current = st
            .current()
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        if st.revoked {
            return Err(Error::KeyRevoked {
                address: address.to_string(),
                at: current,
            });
        }
        if current != named {
            return Err(Error::Stale {
                address: address.to_string(),
                current,
                named,
            });
        }
        let (_, binding) = decode_entry(&self.store.entry(current)?)?;
        Ok((current, binding))
    }

    pub(crate) fn check_rotate(&self, req: SignedRequest) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RotateBody = decode_canonical(&req.body, "RotateBody")?;
        let address = Address::parse(&body.address)?;
        ed25519_key(&body.new_signing_key)?;
        x25519_key(&body.new_encryption_key)?;
        self.check_clock(body.timestamp_ms)?;
        let (current, prev) = self.current(&address, body.current_index)?;
        let auth = authorize_request(EntryKind::Rotate, &req, Some((current, &prev)))?;
        let logged_at_ms = self.clock.now_ms();
        let certificate = self.issue(
            &prev.real_name,
            &address,
            &body.new_signing_key,
            &body.new_encryption_key,
            logged_at_ms,
        )?;
        let entry = LogEntry {
            kind: EntryKind::Rotate as i32,
            address: address.to_string(),
            real_name: prev.real_name.clone(),
            verified: prev.verified,
            signing_key: body.new_signing_key,
            encryption_key: body.new_encryption_key,
            certificate,
            previous_index: current,
            logged_at_ms,
            request: Some(req),
            evidence_key: prev.evidence_key.clone(),
            lei: prev.lei.clone().unwrap_or_default(),
        };
        auth.check_entry(&entry, Some(&prev))?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            false,
            Precondition::Current(current),
        ))
    }

    pub(crate) fn check_revoke(&self, req: SignedRequest) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RevokeBody = decode_canonical(&req.body, "RevokeBody")?;
        let address = Address::parse(&body.address)?;
        check_len("reason", body.reason.len(), MAX_REASON_LEN)?;
        self.check_clock(body.timestamp_ms)?;
        let (current, prev) = self.current(&address, body.current_index)?;
        let auth = authorize_request(EntryKind::Revoke, &req, Some((current, &prev)))?;
        let entry = LogEntry {
            kind: EntryKind::Revoke as i32,
            address: address.to_string(),
            real_name: prev.real_name.clone(),
            verified: prev.verified,
            signing_key: prev.signing_key.to_vec(),
            encryption_key: prev.encryption_key.to_vec(),
            certificate: Vec::new(),
            previous_index: current,
            logged_at_ms: self.clock.now_ms(),
            request: Some(req),
            evidence_key: prev.evidence_key.clone(),
            lei: prev.lei.clone().unwrap_or_default(),
        };
        auth.check_entry(&entry, Some(&prev))?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            true,
            Precondition::Current(current),
        ))
    }

    fn issue(
        &self,
        real_name: &str,
        address: &Address,
        sk: &[u8],
        ek: &[u8],
        at_ms: i64,
    ) -> Result<Vec<u8>> {
        let not_before = OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
            .map_err(|e| Error::certificate("a binding's certificate")(e.into()))?;
        let key = |field: &'static str, b: &[u8]| -> Result<[u8; 32]> {
            b.try_into().map_err(|_| {
                Error::InvalidRequest(InvalidRequest::KeyLength {
                    field,
                    len: b.len(),
                })
            })
        };
        self.ca.issue(
            &Subject {
                real_name,
                address: address.as_str(),
                signing_key: key("signing_key", sk)?,
                encryption_key: key("encryption_key", ek)?,
            },
            not_before,
        )
    }
}

fn check_len(field: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::TooLarge { field, len, limit });
    }
    Ok(())
}
