//! Signed directory requests: what is signed, and how it is checked.
//!
//! A signature covers a fixed context string for the operation followed by the exact
//! request body bytes as sent, never a re-encoding.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::{Error, Result};

/// The directory operations a participant signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Join the directory.
    Register,
    /// Replace a binding's keys.
    Rotate,
    /// End a binding.
    Revoke,
}

impl Operation {
    /// The domain-separation prefix of this operation's signatures.
    pub fn context(self) -> &'static [u8] {
        match self {
            Operation::Register => b"blockpost/v1 directory register\n",
            Operation::Rotate => b"blockpost/v1 directory rotate\n",
            Operation::Revoke => b"blockpost/v1 directory revoke\n",
        }
    }

    /// The bytes a signature covers: context followed by the body.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let ctx = self.context();
        let mut m = Vec::with_capacity(ctx.len() + body.len());
        m.extend_from_slice(ctx);
        m.extend_from_slice(body);
        m
    }

    /// Signs `body` for this operation.
    pub fn sign(self, key: &SigningKey, body: &[u8]) -> Vec<u8> {
        key.sign(&self.message(body)).to_bytes().to_vec()
    }

    /// Verifies an ed25519 signature over `body` for this operation (strict: no malleable
    /// signatures, no small-order keys).
    pub fn verify(self, key: &VerifyingKey, body: &[u8], signature: &[u8]) -> Result<()> {
        let sig = Signature::from_slice(signature)
            .map_err(|_| Error::SignatureInvalid("not a 64-byte ed25519 signature"))?;
        key.verify_strict(&self.message(body), &sig)
            .map_err(|_| Error::SignatureInvalid("ed25519 signature does not verify"))
    }
}

/// Decodes `bytes` as `M` and checks that they are exactly the canonical encoding of the
/// result (what prost writes): no unknown fields, no padding, nothing a signature covers that
/// the decoded message does not say. Signed bytes are stored forever, so only canonical ones
/// are accepted.
pub fn decode_canonical<M: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<M> {
    let m = M::decode(bytes).map_err(|e| Error::Malformed {
        what,
        why: e.to_string(),
    })?;
    if m.encoded_len() != bytes.len() || m.encode_to_vec() != bytes {
        return Err(Error::NotCanonical { what });
    }
    Ok(m)
}

/// Parses a 32-byte ed25519 public key, refusing weak (small-order) keys.
pub fn ed25519_key(bytes: &[u8]) -> Result<VerifyingKey> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
        kind: "ed25519",
        why: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| Error::InvalidKey {
        kind: "ed25519",
        why: "not a curve point".into(),
    })?;
    if key.is_weak() {
        return Err(Error::InvalidKey {
            kind: "ed25519",
            why: "small-order key".into(),
        });
    }
    Ok(key)
}

/// Parses a 32-byte x25519 public key, refusing low-order points (the all-zero key among
/// them): with one, every shared secret is zero whatever the sender's key, so a body
/// "sealed" to it is readable by anyone.
pub fn x25519_key(bytes: &[u8]) -> Result<x25519_dalek::PublicKey> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
        kind: "x25519",
        why: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    if has_small_order(&arr) {
        return Err(Error::InvalidKey {
            kind: "x25519",
            why: "low-order point".into(),
        });
    }
    Ok(x25519_dalek::PublicKey::from(arr))
}

/// The encodings of Curve25519's points of order 1, 2, 4 and 8, and their non-canonical
/// forms (x + p), as libsodium blocks them; X25519 ignores the top bit, so it is masked.
const SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

fn has_small_order(key: &[u8; 32]) -> bool {
    SMALL_ORDER
        .iter()
        .any(|c| c[..31] == key[..31] && c[31] == key[31] & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let body = b"register alice".to_vec();
        let sig = Operation::Register.sign(&key, &body);
        Operation::Register
            .verify(&key.verifying_key(), &body, &sig)
            .unwrap();
        // Another operation's context must not verify.
        assert!(matches!(
            Operation::Revoke.verify(&key.verifying_key(), &body, &sig),
            Err(Error::SignatureInvalid(_))
        ));
        let mut bad = sig.clone();
        bad[3] ^= 1;
        assert!(matches!(
            Operation::Register.verify(&key.verifying_key(), &body, &bad),
            Err(Error::SignatureInvalid(_))
        ));
        let mut body2 = body.clone();
        body2[0] ^= 1;
        assert!(
            Operation::Register
                .verify(&key.verifying_key(), &body2, &sig)
                .is_err()
        );
        assert!(
            Operation::Register
                .verify(&key.verifying_key(), &body, &sig[..63])
                .is_err()
        );
    }

    #[test]
    fn only_canonical_encodings_decode() {
        use blockpost_proto::v1::RevokeBody;
        use prost::Message as _;
        let body = RevokeBody {
            address: "alice".into(),
            current_index: 3,
            reason: "x".into(),
            timestamp_ms: 9,
        };
        let bytes = body.encode_to_vec();
        assert_eq!(decode_canonical::<RevokeBody>(&bytes, "b").unwrap(), body);
        // An unknown field (number 99, a string of padding) appended.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0x9a, 0x06, 3, b'p', b'a', b'd']);
        assert!(
            RevokeBody::decode(padded.as_slice()).is_ok(),
            "prost skips it"
        );
        assert!(matches!(
            decode_canonical::<RevokeBody>(&padded, "b"),
            Err(Error::NotCanonical { .. })
        ));
        // A default value written out (current_index = 0 as field 2).
        let zero = RevokeBody {
            current_index: 0,
            ..body.clone()
        };
        let mut explicit = vec![0x10, 0x00];
        explicit.extend_from_slice(&zero.encode_to_vec());
        assert!(decode_canonical::<RevokeBody>(&explicit, "b").is_err());
        // Fields out of order: timestamp (4) before address (1).
        let mut reordered = vec![0x20, 9];
        reordered.extend_from_slice(
            &RevokeBody {
                timestamp_ms: 0,
                ..body
            }
            .encode_to_vec(),
        );
        assert!(decode_canonical::<RevokeBody>(&reordered, "b").is_err());
        assert!(matches!(
            decode_canonical::<RevokeBody>(&[0xff, 0xff], "b"),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn key_parsing() {
        assert!(ed25519_key(&[1u8; 31]).is_err());
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ed25519_key(&identity).is_err());
        assert!(x25519_key(&[0u8; 32]).is_err());
        assert!(x25519_key(&[9u8; 32]).is_ok());
        // The low-order points of Curve25519 (and their non-canonical encodings), as listed
        // by libsodium and in "May the Fourth Be With You" (Genkin et al.).
        let low_order: [&str; 7] = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        let probe = x25519_dalek::StaticSecret::from([0x42u8; 32]);
        for hex_key in low_order {
            let mut k: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
            assert!(
                matches!(x25519_key(&k), Err(Error::InvalidKey { why, .. }) if why == "low-order point"),
                "{hex_key} accepted"
            );
            // The list is the math: each one makes any exchange non-contributory ...
            let dh = probe.diffie_hellman(&x25519_dalek::PublicKey::from(k));
            assert!(!dh.was_contributory(), "{hex_key}");
            // ... and so does it with the top bit set, which X25519 ignores.
            k[31] |= 0x80;
            assert!(x25519_key(&k).is_err(), "{hex_key} with the top bit");
        }
        let genuine = crate::Identity::generate();
        assert!(x25519_key(&genuine.encryption_public()).is_ok());
    }
}
