//! A participant's keyring: every generation of its signing and encryption keys, each
//! labelled with the directory entry that bound it and whether it is current, rotated or
//! revoked, in one encrypted file.
//!
//! # Format (`blockpost-keyring/1`)
//! A JSON object:
//! - `format`: `"blockpost-keyring/1"`;
//! - `address`: the participant's address, or null before it registers;
//! - `kdf`: `{"scrypt": {"log_n", "r", "p", "salt"}}`, scrypt (RFC 7914) from the
//!   passphrase to a 32-byte key-encryption key;
//! - `wrap`: `{"nonce", "key"}`: the keyring key (32 random bytes, made once) sealed with
//!   ChaCha20-Poly1305 (RFC 8439) under the key-encryption key, associated data
//!   `"blockpost-keyring/1 wrap\n" || address`;
//! - `nonce`, `sealed`: the contents sealed with ChaCha20-Poly1305 under the keyring key,
//!   associated data `"blockpost-keyring/1\n" || address`.
//!
//! Binary fields are base64. The contents are a JSON object: `address` again, and
//! `generations`, each with its number, the leaf index of the directory entry that bound
//! it, its status, the leaf index of the entry that ended it, when it was made, and its
//! two private keys as unencrypted PKCS#8 DER (RFC 5958; the x25519 key as RFC 8410 has
//! it), base64.
//!
//! Two layers, as a bank's key store has them: the passphrase can change without touching
//! the contents, and a backup ([`crate::backup`]) splits the keyring key alone, so that
//! shares made once also open a later copy of the keyring.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockpost_core::Identity;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// The format's name, in the file and in associated data.
pub const FORMAT: &str = "blockpost-keyring/1";

/// scrypt cost of new keyrings: N = 2^15, r = 8, p = 1 (32 MiB, about 0.1 s), the
/// interactive-login setting of the scrypt paper's successors.
const LOG_N: u8 = 15;
/// The most a keyring file may ask of scrypt (N = 2^20, 1 GiB): a file is an input.
const MAX_LOG_N: u8 = 20;

/// Why a keyring cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Not a keyring, or cut short.
    #[error("not a Blockpost keyring ({why})")]
    Format {
        /// What is wrong.
        why: String,
    },
    /// The passphrase does not open it.
    #[error("wrong passphrase (or the keyring's key wrap is damaged)")]
    Passphrase,
    /// The passphrase opened the key but the contents do not open or do not parse.
    #[error("the keyring's contents are damaged: {why}")]
    Damaged {
        /// What is wrong.
        why: String,
    },
    /// A keyring of another participant than the one asked for.
    #[error("this is the keyring of {holder}, not of {wanted}")]
    OtherParticipant {
        /// Whose it is.
        holder: String,
        /// Whose was wanted.
        wanted: String,
    },
    /// A body sealed to a generation the keyring does not hold.
    #[error(
        "sealed to {address}'s key of directory entry {index}, a generation this keyring lacks \
         (it holds entries {held})"
    )]
    Lacks {
        /// The participant.
        address: String,
        /// The leaf index of the binding the body was sealed to.
        index: u64,
        /// The leaf indexes it holds, comma-separated.
        held: String,
    },
    /// No generation can sign (every one is revoked, or none is registered yet and the
    /// operation needs one that is).
    #[error("{0}")]
    NoSigningKey(String),
    /// Encrypting it.
    #[error("encrypting the keyring: {0}")]
    Encrypt(String),
}

type Result<T> = std::result::Result<T, KeyringError>;

/// Where a generation stands in the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, not yet bound by a directory entry (before `register`, or during `rotate`).
    Pending,
    /// Bound by the newest entry of its address: it signs.
    Current,
    /// Replaced by a rotation: it opens what was sealed to it.
    Rotated,
    /// Ended by a revocation: it opens what was sealed to it, and never signs again.
    Revoked,
}

impl Status {
    /// Its name, as `key list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Current => "current",
            Self::Rotated => "rotated",
            Self::Revoked => "revoked",
        }
    }
}

/// One generation of a participant's keys.
#[derive(Clone)]
pub struct Generation {
    /// 1 for the first, counting up.
    pub number: u32,
    /// The leaf index of the directory entry that bound it.
    pub leaf_index: Option<u64>,
    /// Where it stands.
    pub status: Status,
    /// The leaf index of the entry that rotated or revoked it.
    pub ended_at: Option<u64>,
    /// When it was made (Unix ms).
    pub created_ms: i64,
    /// Its keys.
    pub identity: Identity,
}

/// What a directory entry of the keyring's address binds, for [`Keyring::label`].
#[derive(Clone, Debug)]
pub struct BoundKeys {
    /// Its leaf index.
    pub leaf_index: u64,
    /// Whether it is a revocation.
    pub revoke: bool,
    /// ed25519 public key.
    pub signing_key: [u8; 32],
    /// x25519 public key.
    pub encryption_key: [u8; 32],
}

/// A participant's keyring, open.
pub struct Keyring {
    address: Option<String>,
    generations: Vec<Generation>,
    key: Zeroizing<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: String,
    address: Option<String>,
    kdf: Kdf,
    wrap: Wrap,
    nonce: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    scrypt: ScryptParams,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptParams {
    log_n: u8,
    r: u32,
    p: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrap {
    nonce: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    address: Option<String>,
    generations: Vec<StoredGeneration>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredGeneration {
    generation: u32,
    leaf_index: Option<u64>,
    status: Status,
    ended_at: Option<u64>,
    created_ms: i64,
    signing_pkcs8: String,
    encryption_pkcs8: String,
}

fn unb64(what: &str, s: &str) -> Result<Vec<u8>> {
    B64.decode(s).map_err(|e| KeyringError::Format {
        why: format!("{what} is not base64: {e}"),
    })
}

fn aad(label: &str, address: Option<&str>) -> Vec<u8> {
    format!("{FORMAT}{label}\n{}", address.unwrap_or("")).into_bytes()
}

impl Keyring {
    /// A new keyring holding one generation, not yet registered.
    pub fn new(identity: Identity, now_ms: i64) -> Self {
        Self {
            address: None,
            generations: vec![Generation {
                number: 1,
                leaf_index: None,
                status: Status::Pending,
                ended_at: None,
                created_ms: now_ms,
                identity,
            }],
            key: Zeroizing::new(rand::random()),
        }
    }

    /// Whose it is (once registered).
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// Records whose it is; refuses another participant's address once one is set.
    pub fn set_address(&mut self, address: &str) -> Result<()> {
        self.check_address(address)?;
        self.address = Some(address.to_owned());
        Ok(())
    }

    /// Checks it is `address`'s keyring (or not yet anyone's).
    pub fn check_address(&self, address: &str) -> Result<()> {
        match &self.address {
            Some(a) if a != address => Err(KeyringError::OtherParticipant {
                holder: a.clone(),
                wanted: address.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Every generation, oldest first.
    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }

    /// The generation that signs: the current one, else (before `register`, or to
    /// register again after a revocation) the newest pending one.
    pub fn signing(&self) -> Result<&Generation> {
        let current = self
            .generations
            .iter()
            .rev()
            .find(|g| g.status == Status::Current);
        if let Some(g) = current.or_else(|| self.pending()) {
            return Ok(g);
        }
        Err(KeyringError::NoSigningKey(format!(
            "{}'s keyring has no current generation: every registered one is rotated or \
             revoked (`register` again makes a new one)",
            self.address.as_deref().unwrap_or("this participant")
        )))
    }

    /// The newest pending generation: made for a rotation that the directory has not
    /// bound (yet).
    pub fn pending(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .rev()
            .find(|g| g.status == Status::Pending)
    }

    /// Adds a generation, pending, and returns its number.
    pub fn push(&mut self, identity: Identity, now_ms: i64) -> u32 {
        let number = self.generations.last().map_or(1, |g| g.number + 1);
        self.generations.push(Generation {
            number,
            leaf_index: None,
            status: Status::Pending,
            ended_at: None,
            created_ms: now_ms,
            identity,
        });
        number
    }

    /// Orders the generations by the directory entry that bound them (unbound ones last,
    /// in the order they were made) and numbers them again from 1.
    pub fn sort_by_binding(&mut self) {
        self.generations
            .sort_by_key(|g| (g.leaf_index.is_none(), g.leaf_index, g.number));
        for (i, g) in self.generations.iter_mut().enumerate() {
            g.number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
    }

    /// The generation whose x25519 key a body was sealed to, by the leaf index of the
    /// recipient entry the envelope names.
    pub fn for_key_index(&self, index: u64) -> Result<&Generation> {
        self.generations
            .iter()
            .find(|g| g.leaf_index == Some(index))
            .ok_or_else(|| KeyringError::Lacks {
                address: self.address.clone().unwrap_or_default(),
                index,
                held: self.held(),
            })
    }

    /// The x25519 secret of the generation bound at `index`.
    pub fn body_key(&self, index: u64) -> Result<&StaticSecret> {
        Ok(&self.for_key_index(index)?.identity.encryption)
    }

    fn held(&self) -> String {
        let held: Vec<String> = self
            .generations
            .iter()
            .filter_map(|g| g.leaf_index.map(|i| i.to_string()))
            .collect();
        if held.is_empty() {
            "none".into()
        } else {
            held.join(", ")
        }
    }

    /// Labels every generation from its address's directory history (verified by the
    /// caller), oldest entry first: the entry that binds its keys, and what ended it. A
    /// generation no entry binds stays pending. Returns how many changed.
    pub fn label(&mut self, history: &[BoundKeys]) -> usize {
        let mut changed = 0;
        for g in &mut self.generations {
            let sp = g.identity.signing_public();
            let ep = g.identity.encryption_public();
            let Some(pos) = history
                .iter()
                .position(|e| !e.revoke && e.signing_key == sp && e.encryption_key == ep)
            else {
                continue;
            };
            let bound = &history[pos];
            let (status, ended_at) = match history.get(pos + 1) {
                None => (Status::Current, None),
                Some(next) if next.revoke => (Status::Revoked, Some(next.leaf_index)),
                Some(next) => (Status::Rotated, Some(next.leaf_index)),
            };
            if g.leaf_index != Some(bound.leaf_index)
                || g.status != status
                || g.ended_at != ended_at
            {
                g.leaf_index = Some(bound.leaf_index);
                g.status = status;
                g.ended_at = ended_at;
                changed += 1;
            }
        }
        changed
    }

    /// The keyring as its file, sealed under `passphrase`.
    pub fn to_file(&self, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.to_file_with(passphrase, LOG_N)
    }

    fn to_file_with(&self, passphrase: &[u8], log_n: u8) -> Result<Zeroizing<Vec<u8>>> {
        let salt: [u8; 16] = rand::random();
        let kek = derive(passphrase, log_n, 8, 1, &salt)?;
        let wrap_nonce: [u8; 12] = rand::random();
        let wrapped = ChaCha20Poly1305::new(Key::from_slice(kek.as_slice()))
            .encrypt(
                Nonce::from_slice(&wrap_nonce),
                Payload {
                    msg: self.key.as_slice(),
                    aad: &aad(" wrap", self.address()),
                },
            )
            .map_err(|e| KeyringError::Encrypt(e.to_string()))?;
        let (nonce, sealed) = self.seal_contents()?;
        let file = FileV1 {
            format: FORMAT.into(),
            address: self.address.clone(),
            kdf: Kdf {
                scrypt: ScryptParams {
                    log_n,
                    r: 8,
                    p: 1,
                    salt: B64.encode(salt),
                },
            },
            wrap: Wrap {
                nonce: B64.encode(wrap_nonce),
                key: B64.encode(wrapped),
            },
            nonce: B64.encode(nonce),
            sealed: B64.encode(sealed),
        };
        let mut out =
            serde_json::to_vec_pretty(&file).map_err(|e| KeyringError::Encrypt(e.to_string()))?;
        out.push(b'\n');
        Ok(Zeroizing::new(out))
    }

    /// The contents sealed under the keyring key: (nonce, ciphertext).
    pub(crate) fn seal_contents(&self) -> Result<([u8; 12], Vec<u8>)> {
        let mut generations = Vec::with_capacity(self.generations.len());
        for g in &self.generations {
            let [ed, x] = g
                .identity
                .to_pkcs8_der()
                .map_err(|e| KeyringError::Encrypt(e.to_string()))?;
            generations.push(StoredGeneration {
                generation: g.number,
                leaf_index: g.leaf_index,
                status: g.status,
                ended_at: g.ended_at,
                created_ms: g.created_ms,
                signing_pkcs8: B64.encode(ed.as_slice()),
                encryption_pkcs8: B64.encode(x.as_slice()),
            });
        }
        let contents = Contents {
            address: self.address.clone(),
            generations,
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&contents).map_err(|e| KeyringError::Encrypt(e.to_string()))?,
        );
        for g in contents.generations {
            drop(Zeroizing::new(g.signing_pkcs8));
            drop(Zeroizing::new(g.encryption_pkcs8));
        }
        let nonce: [u8; 12] = rand::random();
        let sealed = ChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad("", self.address()),
                },
            )
            .map_err(|e| KeyringError::Encrypt(e.to_string()))?;
        Ok((nonce, sealed))
    }

    /// Opens contents sealed under `key` (from a file, or from backup shares).
    pub(crate) fn open_contents(
        key: Zeroizing<[u8; 32]>,
        address: Option<&str>,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Self> {
        if nonce.len() != 12 {
            return Err(KeyringError::Format {
                why: format!("a nonce of {} bytes, not 12", nonce.len()),
            });
        }
        let plain = Zeroizing::new(
            ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad("", address),
                    },
                )
                .map_err(|_| KeyringError::Damaged {
                    why: "the sealed contents do not open with the keyring key (changed or cut \
                          short)"
                        .into(),
                })?,
        );
        let damaged = |why: String| KeyringError::Damaged { why };
        let contents: Contents =
            serde_json::from_slice(&plain).map_err(|e| damaged(format!("contents: {e}")))?;
        if contents.address.as_deref() != address {
            return Err(damaged(
                "the address inside differs from the one outside".into(),
            ));
        }
        let mut generations = Vec::with_capacity(contents.generations.len());
        for (i, g) in contents.generations.into_iter().enumerate() {
            let ed = Zeroizing::new(unb64("a signing key", &g.signing_pkcs8)?);
            let x = Zeroizing::new(unb64("an encryption key", &g.encryption_pkcs8)?);
            drop(Zeroizing::new(g.signing_pkcs8));
            drop(Zeroizing::new(g.encryption_pkcs8));
            let identity = Identity::from_pkcs8_der(&ed, &x)
                .map_err(|e| damaged(format!("generation {}: {e}", g.generation)))?;
            if g.generation as usize != i + 1 {
                return Err(damaged(format!(
                    "generation {} stands at place {}",
                    g.generation,
                    i + 1
                )));
            }
            generations.push(Generation {
                number: g.generation,
                leaf_index: g.leaf_index,
                status: g.status,
                ended_at: g.ended_at,
                created_ms: g.created_ms,
                identity,
            });
        }
        if generations.is_empty() {
            return Err(damaged("no generation".into()));
        }
        Ok(Self {
            address: address.map(str::to_owned),
            generations,
            key,
        })
    }

    /// Reads a keyring file with `passphrase`.
    pub fn from_file(bytes: &[u8], passphrase: &[u8]) -> Result<Self> {
        let f = parse_file(bytes)?;
        let p = &f.kdf.scrypt;
        let salt = unb64("the salt", &p.salt)?;
        let kek = derive(passphrase, p.log_n, p.r, p.p, &salt)?;
        let wrap_nonce = unb64("the wrap nonce", &f.wrap.nonce)?;
        if wrap_nonce.len() != 12 {
            return Err(KeyringError::Format {
                why: "the wrap nonce is not 12 bytes".into(),
            });
        }
        let key = ChaCha20Poly1305::new(Key::from_slice(kek.as_slice()))
            .decrypt(
                Nonce::from_slice(&wrap_nonce),
                Payload {
                    msg: &unb64("the wrapped key", &f.wrap.key)?,
                    aad: &aad(" wrap", f.address.as_deref()),
                },
            )
            .map_err(|_| KeyringError::Passphrase)?;
        let key = Zeroizing::new(key);
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| KeyringError::Damaged {
                why: "the keyring key is not 32 bytes".into(),
            })?;
        Self::open_contents(
            Zeroizing::new(key),
            f.address.as_deref(),
            &unb64("the nonce", &f.nonce)?,
            &unb64("the contents", &f.sealed)?,
        )
    }

    /// The keyring key (for [`crate::backup`]).
    pub(crate) fn key(&self) -> &[u8; 32] {
        &self.key
    }
}

/// The parts of a keyring file that need no passphrase: (address, nonce, sealed).
pub(crate) fn public_parts(bytes: &[u8]) -> Result<(Option<String>, Vec<u8>, Vec<u8>)> {
    let f = parse_file(bytes)?;
    Ok((
        f.address,
        unb64("the nonce", &f.nonce)?,
        unb64("the contents", &f.sealed)?,
    ))
}

fn parse_file(bytes: &[u8]) -> Result<FileV1> {
    let f: FileV1 = serde_json::from_slice(bytes).map_err(|e| KeyringError::Format {
        why: if e.is_eof() {
            "the file ends early: truncated".into()
        } else {
            e.to_string()
        },
    })?;
    if f.format != FORMAT {
        return Err(KeyringError::Format {
            why: format!("format {:?}, this version reads {FORMAT:?}", f.format),
        });
    }
    if let Some(a) = &f.address {
        blockpost_core::Address::parse(a).map_err(|e| KeyringError::Format {
            why: format!("address: {e}"),
        })?;
    }
    Ok(f)
}

/// The address a keyring file names (before its passphrase checks it).
pub fn address_of(bytes: &[u8]) -> Result<Option<String>> {
    Ok(parse_file(bytes)?.address)
}

/// Whether `bytes` look like a keyring file (rather than a PEM key file).
pub fn is_keyring(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn derive(
    passphrase: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    if log_n > MAX_LOG_N || r > 32 || p > 16 {
        return Err(KeyringError::Format {
            why: format!("scrypt cost log_n={log_n} r={r} p={p} is beyond this reader's limit"),
        });
    }
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| KeyringError::Format {
        why: format!("scrypt parameters: {e}"),
    })?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, out.as_mut_slice()).map_err(|e| {
        KeyringError::Format {
            why: format!("scrypt: {e}"),
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bound(i: u64, id: &Identity, revoke: bool) -> BoundKeys {
        BoundKeys {
            leaf_index: i,
            revoke,
            signing_key: id.signing_public(),
            encryption_key: id.encryption_public(),
        }
    }

    #[test]
    fn roundtrip_label_and_errors() {
        let g1 = Identity::generate();
        let mut k = Keyring::new(g1.clone(), 1);
        k.set_address("alice").unwrap();
        let g2 = Identity::generate();
        k.push(g2.clone(), 2);
        let history = [bound(3, &g1, false), bound(9, &g2, false)];
        assert_eq!(k.label(&history), 2);
        assert_eq!(k.label(&history), 0);
        let file = k.to_file_with(b"pw", 10).unwrap();
        let back = Keyring::from_file(&file, b"pw").unwrap();
        assert_eq!(back.address(), Some("alice"));
        let g = back.generations();
        assert_eq!(
            (g[0].leaf_index, g[0].status, g[0].ended_at),
            (Some(3), Status::Rotated, Some(9))
        );
        assert_eq!((g[1].leaf_index, g[1].status), (Some(9), Status::Current));
        assert_eq!(back.signing().unwrap().number, 2);
        assert_eq!(
            back.body_key(3).unwrap().as_bytes(),
            g1.encryption.as_bytes()
        );
        let lacks = back.body_key(5).err().unwrap().to_string();
        assert!(
            lacks.contains("entry 5") && lacks.contains("3, 9"),
            "{lacks}"
        );
        assert!(matches!(
            Keyring::from_file(&file, b"wrong"),
            Err(KeyringError::Passphrase)
        ));
        assert!(matches!(
            Keyring::from_file(&file[..file.len() / 2], b"pw"),
            Err(KeyringError::Format { .. })
        ));
        assert!(k.check_address("bob").is_err());
        // The address outside is bound to the contents.
        let text = String::from_utf8(file.to_vec()).unwrap();
        let moved = text.replace("\"alice\"", "\"mallory\"");
        assert!(Keyring::from_file(moved.as_bytes(), b"pw").is_err());
        // Revocation of the current generation.
        k.label(&[
            bound(3, &g1, false),
            bound(9, &g2, false),
            bound(11, &g2, true),
        ]);
        assert_eq!(k.generations()[1].status, Status::Revoked);
        assert!(k.signing().is_err());
        k.push(Identity::generate(), 4);
        assert_eq!(k.signing().unwrap().number, 3);
    }
}
