//! The checks of one closing record, one certificate and one anchor.

use blockpost_proto::v1::TransactionClosing;

use super::{AnchorInfo, AnchorReport, Members, Result, b64_hashes, fail, json, member};
use crate::VerifiedCheckpoint;
use crate::transaction::{Place, TxMessage, check_closing_placed};

/// The closing record at `lp` against the bundle's messages of `tx`.
pub(super) fn check_one_closing(
    lp: &str,
    tx: &str,
    c: &TransactionClosing,
    at: Place,
    messages: &[(TxMessage, Place)],
    deadline: i64,
) -> Result<()> {
    check_closing_placed(tx, c, at, messages, deadline)
        .or_else(|e| fail(lp, "closing against its messages", e))
}

pub(super) fn check_issued(cert: &[u8], ca: &[u8]) -> std::result::Result<(), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, c) =
        x509_parser::certificate::X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let (_, ca) =
        x509_parser::certificate::X509Certificate::from_der(ca).map_err(|e| e.to_string())?;
    if c.issuer() != ca.subject() {
        return Err("its issuer is not the CA".into());
    }
    c.verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("the CA's signature does not verify: {e}"))
}

pub(super) fn check_anchor(
    m: &Members,
    base: &str,
    ledger: &VerifiedCheckpoint,
) -> Result<AnchorReport> {
    let ip = format!("{base}/anchor.json");
    let info: AnchorInfo = json(m, &ip)?;
    let op = format!("{base}/proof.ots");
    let replayed = crate::anchor::replay_proof(member(m, &op)?)
        .or_else(|e| fail(&op, "OpenTimestamps proof", e))?;
    let root: [u8; 32] = hex::decode(&info.ledger_root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .map_or_else(
            || fail(&ip, "format", "ledger_root is not 32 bytes in hex"),
            Ok,
        )?;
    if !replayed.path.iter().any(|v| v.as_slice() == root) {
        return fail(
            &op,
            "ledger root",
            "the proof does not pass through the anchored ledger root",
        );
    }
    let old = VerifiedCheckpoint {
        origin: ledger.origin.clone(),
        size: info.ledger_size,
        root,
        note: Vec::new(),
    };
    let proof = b64_hashes(&ip, &info.consistency)?;
    if info.ledger_size == 0 || info.ledger_size > ledger.size {
        return fail(
            &ip,
            "consistency with the ledger checkpoint",
            "the anchored size is beyond it",
        );
    }
    if info.ledger_size == ledger.size {
        if root != ledger.root {
            return fail(
                &ip,
                "consistency with the ledger checkpoint",
                "same size, another root",
            );
        }
    } else {
        old.verify_consistency(ledger, &proof)
            .or_else(|e| fail(&ip, "consistency with the ledger checkpoint", e))?;
    }
    let height = replayed.attestations.iter().find_map(|(a, v)| match a {
        opentimestamps::attestation::Attestation::Bitcoin { height } => {
            Some((*height as u64, v.clone()))
        }
        _ => None,
    });
    let hp = format!("{base}/bitcoin-header");
    let (block, time, status) = match (&height, m.get(&hp)) {
        (None, _) => (None, None, "pending: the proof has no Bitcoin attestation yet".to_owned()),
        (Some(_), None) => (
            None,
            None,
            "attested, but the Bitcoin block header is not in the bundle: check it against a Bitcoin node".to_owned(),
        ),
        (Some((_, root)), Some(header)) => {
            if header.len() != 80 {
                return fail(&hp, "format", format!("{} bytes, a header is 80", header.len()));
            }
            if header[36..68] != root[..] {
                return fail(&hp, "Merkle root", "the proof's Bitcoin attestation is not this header's Merkle root");
            }
            check_pow(header).or_else(|e| fail(&hp, "proof of work", e))?;
            let mut hash = crate::anchor::sha256d(header);
            hash.reverse();
            let t = u32::from_le_bytes([header[68], header[69], header[70], header[71]]);
            (
                Some(hex::encode(hash)),
                Some(t),
                "confirmed: the proof reaches the Merkle root of this Bitcoin block header, whose proof of work is valid".to_owned(),
            )
        }
    };
    Ok(AnchorReport {
        ledger_size: info.ledger_size,
        reference: info.reference,
        bitcoin_height: height.as_ref().map(|(h, _)| *h),
        bitcoin_block: block,
        bitcoin_time: time,
        status,
    })
}

#[cfg(feature = "bitcoin")]
fn check_pow(header: &[u8]) -> std::result::Result<(), String> {
    let h: bitcoin::block::Header =
        bitcoin::consensus::deserialize(header).map_err(|e| e.to_string())?;
    h.validate_pow(h.target())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "bitcoin"))]
fn check_pow(_: &[u8]) -> std::result::Result<(), String> {
    Err("this build cannot check proof of work (core's `bitcoin` feature)".into())
}
