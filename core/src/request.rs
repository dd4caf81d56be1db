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

/// Parses a 32-byte x25519 public key, refusing the all-zero key.
pub fn x25519_key(bytes: &[u8]) -> Result<x25519_dalek::PublicKey> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
        kind: "x25519",
        why: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    if arr == [0u8; 32] {
        return Err(Error::InvalidKey {
            kind: "x25519",
            why: "all-zero key".into(),
        });
    }
    Ok(x25519_dalek::PublicKey::from(arr))
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
    fn key_parsing() {
        assert!(ed25519_key(&[1u8; 31]).is_err());
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ed25519_key(&identity).is_err());
        assert!(x25519_key(&[0u8; 32]).is_err());
        assert!(x25519_key(&[9u8; 32]).is_ok());
    }
}
