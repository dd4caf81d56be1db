//! Receipts: the gateway's signed promise that an envelope is stored and will be in a block
//! by a deadline.
//!
//! A receipt is signed alone ([`sign_receipt`]) or in a batch ([`sign_receipts`]), as
//! batch timestamping does: the receipts of a short window are the leaves of an RFC 6962
//! Merkle tree, one signature covers its root and size, and each receipt carries that
//! signature and its audit path. Either way a receipt is self-contained and verifies
//! offline with the gateway key alone, through [`verify_receipt`]; [`verify_receipts`]
//! checks many, each batch's signature once.

use std::collections::HashMap;

use blockpost_proto::v1::{Receipt, ReceiptBatch, ReceiptBody};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message as _;

use crate::blockmap::{TreeLevels, root_from_path};
use crate::{Error, Result, leaf_hash};

/// Prefix of a single receipt's signature.
pub const RECEIPT_CONTEXT: &[u8] = b"blockpost/v1 receipt\n";
/// Prefix of a receipt batch's signature.
pub const RECEIPT_BATCH_CONTEXT: &[u8] = b"blockpost/v1 receipt batch\n";
/// Most receipts one batch signature covers (a path of at most 16 hashes).
pub const MAX_RECEIPT_BATCH: usize = 1 << 16;

/// The bytes a single receipt's signature covers.
pub fn receipt_message(body: &[u8]) -> Vec<u8> {
    [RECEIPT_CONTEXT, body].concat()
}

/// The bytes a batch signature covers: the context, the batch's size (8 bytes, big
/// endian) and the Merkle root over its encoded receipt bodies.
pub fn receipt_batch_message(size: u64, root: &[u8; 32]) -> Vec<u8> {
    [RECEIPT_BATCH_CONTEXT, &size.to_be_bytes(), root].concat()
}

/// Signs one receipt body alone.
pub fn sign_receipt(key: &SigningKey, body: &ReceiptBody) -> Receipt {
    let body = body.encode_to_vec();
    let signature = key.sign(&receipt_message(&body)).to_bytes().to_vec();
    Receipt {
        body,
        signature,
        batch: None,
    }
}

/// Signs `bodies` with one signature over the Merkle root of their encodings; receipt `i`
/// is body `i` with its audit path. One body gets a single receipt ([`sign_receipt`]).
///
/// # Errors
/// More than [`MAX_RECEIPT_BATCH`] bodies.
pub fn sign_receipts(key: &SigningKey, bodies: &[ReceiptBody]) -> Result<Vec<Receipt>> {
    if bodies.len() > MAX_RECEIPT_BATCH {
        return Err(Error::TooLarge {
            field: "receipt batch",
            len: bodies.len(),
            limit: MAX_RECEIPT_BATCH,
        });
    }
    if let [one] = bodies {
        return Ok(vec![sign_receipt(key, one)]);
    }
    let encoded: Vec<Vec<u8>> = bodies.iter().map(|b| b.encode_to_vec()).collect();
    let tree = TreeLevels::new(encoded.iter().map(|b| leaf_hash(b)).collect());
    let size = encoded.len() as u64;
    let signature = key
        .sign(&receipt_batch_message(size, &tree.root()))
        .to_bytes()
        .to_vec();
    Ok(encoded
        .into_iter()
        .enumerate()
        .map(|(i, body)| Receipt {
            body,
            signature: signature.clone(),
            batch: Some(ReceiptBatch {
                size,
                index: i as u64,
                path: tree.path(i).into_iter().map(|h| h.to_vec()).collect(),
            }),
        })
        .collect())
}

/// What a receipt's signature must cover, once its path is followed: the signed message
/// and the signature.
fn signed_part(r: &Receipt) -> Result<(Vec<u8>, Signature)> {
    let sig = Signature::from_slice(&r.signature)
        .map_err(|_| Error::SignatureInvalid("receipt signature is not 64 bytes"))?;
    let Some(b) = &r.batch else {
        return Ok((receipt_message(&r.body), sig));
    };
    let bad = |why: &'static str| Error::Malformed {
        what: "receipt batch",
        why: why.into(),
    };
    if b.size < 2 || b.size > MAX_RECEIPT_BATCH as u64 {
        return Err(bad("its size is not between 2 and 65536"));
    }
    let path = b
        .path
        .iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad("a path hash is not 32 bytes"))?;
    // size ≤ 2^16, so both fit.
    let (n, i) = (b.size as u32, u32::try_from(b.index).unwrap_or(u32::MAX));
    let root = root_from_path(n, i, leaf_hash(&r.body), &path)
        .ok_or_else(|| bad("its index or path does not fit its size"))?;
    Ok((receipt_batch_message(b.size, &root), sig))
}

fn decode_body(key: &VerifyingKey, r: &Receipt) -> Result<ReceiptBody> {
    let body = ReceiptBody::decode(r.body.as_slice()).map_err(|e| Error::Malformed {
        what: "receipt",
        why: e.to_string(),
    })?;
    if body.gateway_key != key.as_bytes() {
        return Err(Error::SignatureInvalid("receipt names another gateway key"));
    }
    Ok(body)
}

/// Verifies a receipt, single or batched, against the gateway key and decodes it.
pub fn verify_receipt(key: &VerifyingKey, r: &Receipt) -> Result<ReceiptBody> {
    let (message, sig) = signed_part(r)?;
    key.verify_strict(&message, &sig)
        .map_err(|_| Error::SignatureInvalid("receipt signature does not verify"))?;
    decode_body(key, r)
}

/// [`verify_receipt`] on each of `receipts`, checking each distinct signed message (a
/// batch's root, or a single receipt) once: receipts of one batch cost one signature check
/// and a path each.
pub fn verify_receipts(key: &VerifyingKey, receipts: &[Receipt]) -> Vec<Result<ReceiptBody>> {
    let mut checked: HashMap<(Vec<u8>, [u8; 64]), bool> = HashMap::new();
    receipts
        .iter()
        .map(|r| {
            let (message, sig) = signed_part(r)?;
            let ok = *checked
                .entry((message, sig.to_bytes()))
                .or_insert_with_key(|(m, _)| key.verify_strict(m, &sig).is_ok());
            if !ok {
                return Err(Error::SignatureInvalid("receipt signature does not verify"));
            }
            decode_body(key, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(key: &SigningKey, i: u64) -> ReceiptBody {
        ReceiptBody {
            message_id: vec![i as u8; 32],
            accepted_at_ms: 1_000 + i as i64,
            firehose_sequence: i + 1,
            block_deadline_ms: 11_000 + i as i64,
            gateway_key: key.verifying_key().to_bytes().to_vec(),
            firehose_partition: 0,
        }
    }

    #[test]
    fn every_receipt_of_a_batch_verifies_alone_and_one_signature_covers_them() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vk = key.verifying_key();
        for n in [1usize, 2, 3, 5, 8, 13, 64, 100] {
            let bodies: Vec<_> = (0..n as u64).map(|i| body(&key, i)).collect();
            let rs = sign_receipts(&key, &bodies).unwrap();
            assert_eq!(rs.len(), n);
            assert_eq!(rs[0].batch.is_none(), n == 1);
            for (r, b) in rs.iter().zip(&bodies) {
                assert_eq!(verify_receipt(&vk, r).unwrap(), *b);
                assert!(r.signature == rs[0].signature);
            }
            let all = verify_receipts(&vk, &rs);
            assert!(all.iter().all(Result::is_ok));
        }
    }

    #[test]
    fn a_batch_receipt_with_another_body_index_or_path_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vk = key.verifying_key();
        let bodies: Vec<_> = (0..5).map(|i| body(&key, i)).collect();
        let rs = sign_receipts(&key, &bodies).unwrap();
        // Another receipt's body under this one's path.
        let mut r = rs[1].clone();
        r.body = rs[2].body.clone();
        assert!(verify_receipt(&vk, &r).is_err());
        // Another index.
        let mut r = rs[1].clone();
        r.batch.as_mut().unwrap().index = 0;
        assert!(verify_receipt(&vk, &r).is_err());
        // Another size.
        let mut r = rs[1].clone();
        r.batch.as_mut().unwrap().size = 6;
        assert!(verify_receipt(&vk, &r).is_err());
        // A path hash changed, shortened, lengthened.
        let mut r = rs[1].clone();
        r.batch.as_mut().unwrap().path[0][0] ^= 1;
        assert!(verify_receipt(&vk, &r).is_err());
        let mut r = rs[1].clone();
        r.batch.as_mut().unwrap().path.pop();
        assert!(verify_receipt(&vk, &r).is_err());
        let mut r = rs[1].clone();
        r.batch.as_mut().unwrap().path.push(vec![0; 32]);
        assert!(verify_receipt(&vk, &r).is_err());
        // Dropping the batch turns it into a single receipt, whose signature differs.
        let mut r = rs[1].clone();
        r.batch = None;
        assert!(verify_receipt(&vk, &r).is_err());
        // Another gateway's key.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify_receipt(&other, &rs[1]).is_err());
        // In a set, only the damaged one fails.
        let mut set = rs.clone();
        set[3].body = rs[4].body.clone();
        let out = verify_receipts(&vk, &set);
        let ok: Vec<bool> = out.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, true, true, false, true]);
    }

    #[test]
    fn single_receipts_from_before_batches_still_verify() {
        // Signed the way every receipt was before batches: a fixed key and body, its
        // signature over the single-receipt context.
        let key = SigningKey::from_bytes(&[7; 32]);
        let b = body(&key, 3).encode_to_vec();
        let old = Receipt {
            signature: key
                .sign(&[b"blockpost/v1 receipt\n".as_slice(), &b].concat())
                .to_bytes()
                .to_vec(),
            body: b,
            batch: None,
        };
        assert_eq!(
            verify_receipt(&key.verifying_key(), &old).unwrap(),
            body(&key, 3)
        );
        assert_eq!(old, sign_receipt(&key, &body(&key, 3)));
    }

    #[test]
    fn the_batch_root_is_the_rfc_6962_root_of_the_bodies() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let bodies: Vec<_> = (0..7).map(|i| body(&key, i)).collect();
        let rs = sign_receipts(&key, &bodies).unwrap();
        let leaves: Vec<[u8; 32]> = bodies
            .iter()
            .map(|b| leaf_hash(&b.encode_to_vec()))
            .collect();
        let root = crate::block::merkle_root(&leaves);
        let sig = Signature::from_slice(&rs[0].signature).unwrap();
        key.verifying_key()
            .verify_strict(&receipt_batch_message(7, &root), &sig)
            .unwrap();
    }
}
