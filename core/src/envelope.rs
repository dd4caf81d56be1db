//! Envelopes and inbox challenges: what is signed, and end-to-end encryption of
//! bodies with HPKE (RFC 9180).

use blockpost_proto::v1::{EncryptedBody, Envelope, RecipientCiphertext};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use prost::Message as _;
use sha2::Digest as _;
use x25519_dalek::StaticSecret;

use crate::{Error, Result};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Prefix of envelope signatures.
pub const ENVELOPE_CONTEXT: &[u8] = b"blockpost/v1 envelope\n";
/// Prefix of inbox challenge signatures.
pub const INBOX_CONTEXT: &[u8] = b"blockpost/v1 inbox\n";
const HPKE_INFO: &[u8] = b"blockpost/v1 envelope body";

pub(crate) fn prefixed(ctx: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ctx.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    m.extend_from_slice(ctx);
    for p in parts {
        m.extend_from_slice(p);
    }
    m
}

/// The bytes an envelope signature covers.
pub fn envelope_message(content: &[u8]) -> Vec<u8> {
    prefixed(ENVELOPE_CONTEXT, &[content])
}

/// Signs encoded `EnvelopeContent` bytes into an envelope.
pub fn sign_envelope(key: &SigningKey, content: Vec<u8>) -> Envelope {
    let signature = key.sign(&envelope_message(&content)).to_bytes().to_vec();
    Envelope { content, signature }
}

/// Checks an envelope's signature (strict ed25519).
pub fn verify_envelope(key: &VerifyingKey, env: &Envelope) -> Result<()> {
    let sig = Signature::from_slice(&env.signature)
        .map_err(|_| Error::SignatureInvalid("not a 64-byte ed25519 signature"))?;
    key.verify_strict(&envelope_message(&env.content), &sig)
        .map_err(|_| Error::SignatureInvalid("envelope signature does not verify"))
}

/// The message id: SHA-256 of the encoded envelope.
pub fn message_id(env: &Envelope) -> [u8; 32] {
    sha2::Sha256::digest(env.encode_to_vec()).into()
}

/// The message id of an envelope already encoded (canonically, as [`message_id`] would):
/// the same hash, without encoding it again.
pub fn message_id_of_encoded(encoded: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(encoded).into()
}

/// The bytes an inbox challenge answer covers.
pub fn inbox_message(challenge: &[u8], address: &str) -> Vec<u8> {
    prefixed(INBOX_CONTEXT, &[challenge, address.as_bytes()])
}

/// Associated data binding a ciphertext to its sender and transaction.
pub fn body_aad(sender: &str, transaction_id: &str) -> Vec<u8> {
    prefixed(
        b"blockpost/v1 body\n",
        &[sender.as_bytes(), b"\n", transaction_id.as_bytes()],
    )
}

/// A recipient of an encrypted body.
pub struct SealTo<'a> {
    /// Address.
    pub address: &'a str,
    /// Log index of the entry whose x25519 key is used.
    pub key_index: u64,
    /// The x25519 public key.
    pub key: [u8; 32],
}

/// Seals `plaintext` to every recipient (HPKE base mode, one ciphertext each).
pub fn seal_body(to: &[SealTo<'_>], plaintext: &[u8], aad: &[u8]) -> Result<EncryptedBody> {
    let mut rng = rand::rngs::OsRng;
    let mut ciphertexts = Vec::with_capacity(to.len());
    for r in to {
        let pk =
            <Kem as hpke::Kem>::PublicKey::from_bytes(&r.key).map_err(|e| Error::InvalidKey {
                kind: "x25519",
                why: e.to_string(),
            })?;
        let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            plaintext,
            aad,
            &mut rng,
        )
        .map_err(|e| Error::Malformed {
            what: "hpke seal",
            why: e.to_string(),
        })?;
        ciphertexts.push(RecipientCiphertext {
            recipient: r.address.to_owned(),
            recipient_key_index: r.key_index,
            encapsulated_key: enc.to_bytes().to_vec(),
            ciphertext: ct,
        });
    }
    Ok(EncryptedBody { ciphertexts })
}

/// Opens the ciphertext addressed to `me` with its x25519 secret.
pub fn open_body(
    body: &EncryptedBody,
    me: &str,
    secret: &StaticSecret,
    aad: &[u8],
) -> Result<Vec<u8>> {
    let c = body
        .ciphertexts
        .iter()
        .find(|c| c.recipient == me)
        .ok_or_else(|| Error::Malformed {
            what: "encrypted body",
            why: format!("nothing addressed to {me}"),
        })?;
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret.as_bytes()).map_err(|e| {
        Error::InvalidKey {
            kind: "x25519",
            why: e.to_string(),
        }
    })?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&c.encapsulated_key).map_err(|e| {
        Error::Malformed {
            what: "encapsulated key",
            why: e.to_string(),
        }
    })?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        HPKE_INFO,
        &c.ciphertext,
        aad,
    )
    .map_err(|_| Error::Malformed {
        what: "encrypted body",
        why: "cannot decrypt (wrong key or tampered)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn seal_open_and_tamper() {
        let bob = Identity::generate();
        let carol = Identity::generate();
        let aad = body_aad("alice", "tx-1");
        let body = seal_body(
            &[
                SealTo {
                    address: "bob",
                    key_index: 1,
                    key: bob.encryption_public(),
                },
                SealTo {
                    address: "carol",
                    key_index: 2,
                    key: carol.encryption_public(),
                },
            ],
            b"I have the stock",
            &aad,
        )
        .unwrap();
        assert_eq!(
            open_body(&body, "bob", &bob.encryption, &aad).unwrap(),
            b"I have the stock"
        );
        assert_eq!(
            open_body(&body, "carol", &carol.encryption, &aad).unwrap(),
            b"I have the stock"
        );
        // Carol's key cannot open Bob's ciphertext; another transaction's aad fails.
        assert!(open_body(&body, "bob", &carol.encryption, &aad).is_err());
        assert!(open_body(&body, "bob", &bob.encryption, &body_aad("alice", "tx-2")).is_err());
        let mut bad = body.clone();
        bad.ciphertexts[0].ciphertext[0] ^= 1;
        assert!(open_body(&bad, "bob", &bob.encryption, &aad).is_err());
        assert!(open_body(&body, "dave", &bob.encryption, &aad).is_err());
    }

    #[test]
    fn envelope_and_receipt_signatures() {
        let id = Identity::generate();
        let env = sign_envelope(&id.signing, b"content".to_vec());
        verify_envelope(&id.signing.verifying_key(), &env).unwrap();
        let mut bad = env.clone();
        bad.content[0] ^= 1;
        assert!(matches!(
            verify_envelope(&id.signing.verifying_key(), &bad),
            Err(Error::SignatureInvalid(_))
        ));
        assert_ne!(message_id(&env), message_id(&bad));
    }
}
