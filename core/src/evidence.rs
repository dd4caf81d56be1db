//! Evidence for a real name: an X.509 chain to a trust anchor the operator configured,
//! whose leaf names the participant (O or CN) and whose key also signs the request.
//!
//! The directory checks chains against its operator's anchors at registration time; anyone
//! holding the same anchors can re-run [`TrustAnchors::check`] on a logged registration.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{Error, EvidenceError, Result};

/// Most certificates accepted in one evidence chain.
pub const MAX_CHAIN_LEN: usize = 5;
/// Largest certificate accepted, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// The trust anchors an operator configured (DER certificates).
#[derive(Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Vec<u8>>,
}

/// Evidence that passed every check.
#[derive(Debug)]
pub struct CheckedEvidence {
    /// DER SubjectPublicKeyInfo of the leaf key.
    pub leaf_spki: Vec<u8>,
}

impl TrustAnchors {
    /// Anchors from DER certificates; each must parse and be a CA.
    pub fn new(anchors: Vec<Vec<u8>>) -> Result<Self> {
        for a in &anchors {
            let (_, c) = X509Certificate::from_der(a)
                .map_err(|e| EvidenceError::TrustAnchor { why: e.to_string() })?;
            if !is_ca(&c) {
                return Err(EvidenceError::TrustAnchor {
                    why: format!("{} is not a CA certificate", c.subject()),
                }
                .into());
            }
        }
        Ok(Self { anchors })
    }

    /// Anchors from a PEM file holding one or more certificates.
    pub fn from_pem(text: &[u8]) -> Result<Self> {
        let mut ders = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(text) {
            let pem = pem.map_err(|e| EvidenceError::TrustAnchor {
                why: format!("pem: {e}"),
            })?;
            ders.push(pem.contents);
        }
        if ders.is_empty() {
            return Err(EvidenceError::TrustAnchor {
                why: "the file holds no certificate".into(),
            }
            .into());
        }
        Self::new(ders)
    }

    /// The anchors' DER certificates.
    pub fn into_ders(self) -> Vec<Vec<u8>> {
        self.anchors
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether no anchor is configured.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Checks `chain` (leaf first) at time `now_secs`: signatures up to an anchor, validity
    /// periods, CA basic constraints and path lengths, key usage, and that the leaf's
    /// subject O or CN is `real_name`.
    pub fn check(
        &self,
        chain: &[Vec<u8>],
        real_name: &str,
        now_secs: i64,
    ) -> Result<CheckedEvidence> {
        let ev = |why: String| Error::from(EvidenceError::Chain { why });
        if self.anchors.is_empty() {
            return Err(EvidenceError::TrustAnchor {
                why: "this directory has no trust anchors configured".into(),
            }
            .into());
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(Error::TooLarge {
                field: "evidence_chain",
                len: chain.len(),
                limit: MAX_CHAIN_LEN,
            });
        }
        let now = ASN1Time::from_timestamp(now_secs).map_err(|e| ev(e.to_string()))?;
        let mut certs = Vec::with_capacity(chain.len());
        for (i, der) in chain.iter().enumerate() {
            if der.len() > MAX_CERT_LEN {
                return Err(Error::TooLarge {
                    field: "evidence certificate",
                    len: der.len(),
                    limit: MAX_CERT_LEN,
                });
            }
            let (rest, c) = X509Certificate::from_der(der).map_err(|e| Error::Malformed {
                what: "evidence certificate",
                why: format!("certificate {i} is not DER X.509: {e}"),
            })?;
            if !rest.is_empty() {
                return Err(Error::Malformed {
                    what: "evidence certificate",
                    why: format!("certificate {i} has trailing bytes"),
                });
            }
            if !c.validity().is_valid_at(now) {
                return Err(ev(format!(
                    "certificate {i} ({}) is not valid now: valid from {} to {}",
                    c.subject(),
                    c.validity().not_before,
                    c.validity().not_after
                )));
            }
            certs.push(c);
        }
        let Some(leaf) = certs.first() else {
            return Err(EvidenceError::EmptyChain.into());
        };
        if is_ca(leaf) {
            return Err(ev("the leaf certificate is a CA certificate".into()));
        }
        if let Ok(Some(ku)) = leaf.key_usage()
            && !ku.value.digital_signature()
        {
            return Err(ev(
                "the leaf certificate's key usage does not allow digital signatures".into(),
            ));
        }
        let names: Vec<&str> = leaf
            .subject()
            .iter_organization()
            .chain(leaf.subject().iter_common_name())
            .filter_map(|a| a.as_str().ok())
            .collect();
        if !names.contains(&real_name) {
            return Err(EvidenceError::Subject {
                why: format!(
                    "real name {real_name:?} matches neither O nor CN of the evidence certificate ({})",
                    leaf.subject()
                ),
            }
            .into());
        }
        // Each certificate must be issued by the next one, which must be a CA allowed to
        // issue at this depth.
        for i in 0..certs.len() - 1 {
            let (child, parent) = (&certs[i], &certs[i + 1]);
            check_issued_by(child, parent, i).map_err(ev)?;
        }
        let top = &certs[certs.len() - 1];
        // The top of the chain is an anchor, or is issued by one.
        if self.anchors.iter().any(|a| a.as_slice() == top.as_raw()) {
            return Ok(CheckedEvidence {
                leaf_spki: leaf.public_key().raw.to_vec(),
            });
        }
        // Several anchors may share a subject name: any one whose key verifies will do.
        let mut why = String::from("no anchor has that subject");
        for a in &self.anchors {
            let Ok((_, anchor)) = X509Certificate::from_der(a) else {
                continue;
            };
            if anchor.subject() != top.issuer() {
                continue;
            }
            if !anchor.validity().is_valid_at(now) {
                why = format!("anchor {} is not valid now", anchor.subject());
                continue;
            }
            match check_issued_by(top, &anchor, certs.len() - 1) {
                Ok(()) => {
                    return Ok(CheckedEvidence {
                        leaf_spki: leaf.public_key().raw.to_vec(),
                    });
                }
                Err(e) => why = e,
            }
        }
        Err(ev(format!(
            "chain does not lead to a configured trust anchor (top issuer: {}; {why})",
            top.issuer()
        )))
    }
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// `depth` is the number of certificates below `parent` that are not self-issued CAs
/// (counting the leaf), used for the path length constraint.
fn check_issued_by(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
    depth: usize,
) -> Result<(), String> {
    if child.issuer() != parent.subject() {
        return Err(format!(
            "certificate {depth} was not issued by the next one ({})",
            parent.subject()
        ));
    }
    let bc = match parent.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc.value.clone(),
        _ => return Err(format!("issuer {} is not a CA", parent.subject())),
    };
    if let Some(max) = bc.path_len_constraint {
        // Intermediates between parent and the leaf.
        if depth > max as usize {
            return Err(format!(
                "issuer {} allows a path length of {max}",
                parent.subject()
            ));
        }
    }
    if let Ok(Some(ku)) = parent.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(format!(
            "issuer {} may not sign certificates",
            parent.subject()
        ));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| {
            format!(
                "signature on certificate {depth} does not verify with {}'s key",
                parent.subject()
            )
        })
}

/// The DER SubjectPublicKeyInfo of the leaf (first) certificate of `chain`.
pub fn leaf_spki(chain: &[Vec<u8>]) -> Result<Vec<u8>> {
    let der = chain.first().ok_or(EvidenceError::EmptyChain)?;
    let (_, leaf) = X509Certificate::from_der(der).map_err(|e| Error::Malformed {
        what: "evidence certificate",
        why: format!("certificate 0 is not DER X.509: {e}"),
    })?;
    Ok(leaf.public_key().raw.to_vec())
}

/// Verifies `sig` over `msg` with the key in a DER SubjectPublicKeyInfo: ed25519,
/// ECDSA P-256 with SHA-256 (ASN.1 signature), or RSA PKCS#1 v1.5 with SHA-256.
pub fn verify_with_spki(spki_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    use ring::signature as rs;
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| EvidenceError::Key { why: e.to_string() })?;
    let oid = spki.algorithm.algorithm.to_id_string();
    let alg: &dyn rs::VerificationAlgorithm = match oid.as_str() {
        "1.3.101.112" => &rs::ED25519,
        "1.2.840.10045.2.1" => &rs::ECDSA_P256_SHA256_ASN1,
        "1.2.840.113549.1.1.1" => &rs::RSA_PKCS1_2048_8192_SHA256,
        other => {
            return Err(EvidenceError::Key {
                why: format!("unsupported algorithm {other}"),
            }
            .into());
        }
    };
    rs::UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(msg, sig)
        .map_err(|_| Error::SignatureInvalid("evidence key signature does not verify"))
}
