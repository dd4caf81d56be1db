//! Participant key files: an ed25519 signing key and an x25519 encryption key, each an
//! encrypted PKCS#8 document (RFC 5958, PBES2 with scrypt and AES-256-CBC), as two
//! `ENCRYPTED PRIVATE KEY` PEM blocks in one file, written with mode 0600.
//!
//! Standard tools read it: `openssl pkey -in FILE` decrypts it (it picks one of the two keys).

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use pkcs8::der::pem::LineEnding;
use pkcs8::{EncryptedPrivateKeyInfo, ObjectIdentifier, PrivateKeyInfo};
use rand::rngs::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::{Error, KeyFileError, Result};

/// OID of X25519 keys (RFC 8410).
const X25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
const PEM_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// A participant's two private keys.
pub struct Identity {
    /// ed25519: signs envelopes and directory requests.
    pub signing: SigningKey,
    /// x25519: receives end-to-end encrypted bodies.
    pub encryption: StaticSecret,
}

impl Identity {
    /// Fresh random keys.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut OsRng),
            encryption: StaticSecret::random_from_rng(OsRng),
        }
    }

    /// The public ed25519 key.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The public x25519 key.
    pub fn encryption_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.encryption).to_bytes()
    }

    /// Both keys as unencrypted PKCS#8 DER (RFC 5958 `PrivateKeyInfo`; the x25519 key
    /// as RFC 8410 has it, an OCTET STRING inside): ed25519 first.
    pub fn to_pkcs8_der(&self) -> Result<[Zeroizing<Vec<u8>>; 2]> {
        let err = |e: pkcs8::Error| Error::from(KeyFileError::Encrypt { why: e.to_string() });
        let ed = self.signing.to_pkcs8_der().map_err(err)?;
        Ok([
            Zeroizing::new(ed.as_bytes().to_vec()),
            x25519_to_der(&self.encryption)?,
        ])
    }

    /// Reads keys written by [`Identity::to_pkcs8_der`].
    pub fn from_pkcs8_der(ed25519: &[u8], x25519: &[u8]) -> Result<Self> {
        let signing = SigningKey::from_pkcs8_der(ed25519).map_err(|_| KeyFileError::Key {
            which: "the first key",
            kind: "ed25519",
        })?;
        let encryption = x25519_from_der(x25519, "the second key")?;
        Ok(Self {
            signing,
            encryption,
        })
    }

    /// Both keys as encrypted PKCS#8 PEM.
    pub fn to_encrypted_pem(&self, passphrase: &[u8]) -> Result<Zeroizing<String>> {
        let enc_err =
            |e: &dyn std::fmt::Display| Error::from(KeyFileError::Encrypt { why: e.to_string() });
        let err = |e: pkcs8::Error| enc_err(&e);
        let mut out = Zeroizing::new(String::new());
        for der in self.to_pkcs8_der()? {
            let info = PrivateKeyInfo::try_from(der.as_slice()).map_err(err)?;
            let salt: [u8; 16] = rand::random();
            let iv: [u8; 16] = rand::random();
            // scrypt N = 2^14, r = 8, p = 1: OpenSSL's own default, within its 32 MiB limit,
            // so `openssl pkey` can read the file.
            let scrypt =
                pkcs8::pkcs5::scrypt::Params::new(14, 8, 1, 32).map_err(|e| enc_err(&e))?;
            let params = pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256cbc(scrypt, &salt, &iv)
                .map_err(|e| enc_err(&e))?;
            let enc = info.encrypt_with_params(params, passphrase).map_err(err)?;
            let pem = enc
                .to_pem(PEM_LABEL, LineEnding::LF)
                .map_err(|e| enc_err(&e))?;
            out.push_str(&pem);
        }
        Ok(out)
    }

    /// Reads keys written by [`Identity::to_encrypted_pem`].
    pub fn from_encrypted_pem(text: &str, passphrase: &[u8]) -> Result<Self> {
        let blocks = pem_blocks(text);
        if blocks.len() != 2 {
            return Err(KeyFileError::Format {
                why: format!(
                    "expected 2 {PEM_LABEL} blocks (ed25519, x25519), found {}",
                    blocks.len()
                ),
            }
            .into());
        }
        let mut keys = Vec::with_capacity(2);
        for block in blocks {
            let (label, der) = pkcs8::der::pem::decode_vec(block.as_bytes()).map_err(|e| {
                KeyFileError::Format {
                    why: format!("bad pem: {e}"),
                }
            })?;
            if label != PEM_LABEL {
                return Err(KeyFileError::Format {
                    why: format!("unexpected pem block {label:?}, want {PEM_LABEL}"),
                }
                .into());
            }
            let enc = EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| {
                KeyFileError::Format {
                    why: format!("not encrypted pkcs#8: {e}"),
                }
            })?;
            let doc = enc.decrypt(passphrase).map_err(|_| KeyFileError::Decrypt)?;
            keys.push(doc);
        }
        Self::from_pkcs8_der(keys[0].as_bytes(), keys[1].as_bytes())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            signing: self.signing.clone(),
            encryption: self.encryption.clone(),
        }
    }
}

/// An x25519 private key as unencrypted PKCS#8 DER (RFC 8410).
fn x25519_to_der(secret: &StaticSecret) -> Result<Zeroizing<Vec<u8>>> {
    let mut inner = Zeroizing::new(vec![0x04, 0x20]);
    inner.extend_from_slice(secret.as_bytes());
    let info = PrivateKeyInfo::new(
        pkcs8::AlgorithmIdentifierRef {
            oid: X25519_OID,
            parameters: None,
        },
        &inner,
    );
    let doc = pkcs8::SecretDocument::try_from(info)
        .map_err(|e| Error::from(KeyFileError::Encrypt { why: e.to_string() }))?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}

/// Reads [`x25519_to_der`]'s output; `which` names the key in errors.
fn x25519_from_der(der: &[u8], which: &'static str) -> Result<StaticSecret> {
    let bad = || {
        Error::from(KeyFileError::Key {
            which,
            kind: "x25519",
        })
    };
    let info = PrivateKeyInfo::try_from(der).map_err(|_| bad())?;
    let raw = info.private_key;
    if info.algorithm.oid != X25519_OID || raw.len() != 34 || raw[0] != 0x04 || raw[1] != 0x20 {
        return Err(bad());
    }
    let mut arr = Zeroizing::new([0u8; 32]);
    arr.copy_from_slice(&raw[2..]);
    Ok(StaticSecret::from(*arr))
}

/// An x25519 private key as unencrypted PKCS#8 PEM (RFC 8410: `PRIVATE KEY`, the key an
/// OCTET STRING): a node's delivery key on its own disk, which `openssl pkey` reads.
pub fn x25519_to_pem(secret: &StaticSecret) -> Result<Zeroizing<String>> {
    let der = x25519_to_der(secret)?;
    let doc = pkcs8::SecretDocument::try_from(der.as_slice())
        .map_err(|e| Error::from(KeyFileError::Encrypt { why: e.to_string() }))?;
    doc.to_pem("PRIVATE KEY", LineEnding::LF)
        .map_err(|e| Error::from(KeyFileError::Encrypt { why: e.to_string() }))
}

/// Reads a key written by [`x25519_to_pem`] (or `openssl genpkey -algorithm X25519`).
pub fn x25519_from_pem(text: &str) -> Result<StaticSecret> {
    let (label, der) =
        pkcs8::der::pem::decode_vec(text.trim().as_bytes()).map_err(|e| KeyFileError::Format {
            why: format!("bad pem: {e}"),
        })?;
    let der = Zeroizing::new(der);
    if label != "PRIVATE KEY" {
        return Err(KeyFileError::Format {
            why: format!("unexpected pem block {label:?}, want PRIVATE KEY"),
        }
        .into());
    }
    x25519_from_der(&der, "the delivery key")
}

fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(b) = cur.as_mut() {
            b.push_str(line);
            b.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some(b) = cur.take()
        {
            blocks.push(b);
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x25519_pem_roundtrip() {
        let k = StaticSecret::random_from_rng(OsRng);
        let pem = x25519_to_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(x25519_from_pem(&pem).unwrap().as_bytes(), k.as_bytes());
        let ed = Identity::generate()
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap();
        assert!(x25519_from_pem(&ed).is_err());
    }

    #[test]
    fn roundtrip_and_wrong_passphrase() {
        let id = Identity::generate();
        let text = id.to_encrypted_pem(b"correct horse").unwrap();
        assert_eq!(text.matches("BEGIN ENCRYPTED PRIVATE KEY").count(), 2);
        assert!(!text.contains("BEGIN PRIVATE KEY"));
        let back = Identity::from_encrypted_pem(&text, b"correct horse").unwrap();
        assert_eq!(back.signing_public(), id.signing_public());
        assert_eq!(back.encryption_public(), id.encryption_public());
        assert!(matches!(
            Identity::from_encrypted_pem(&text, b"wrong"),
            Err(Error::KeyFile(KeyFileError::Decrypt))
        ));
        // A truncated file is a clear error.
        assert!(matches!(
            Identity::from_encrypted_pem(&text[..text.len() / 2], b"correct horse"),
            Err(Error::KeyFile(KeyFileError::Format { .. }))
        ));
    }
}
