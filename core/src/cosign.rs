//! Witness cosignatures on checkpoints: C2SP tlog-cosignature (`cosignature/v1`, the
//! Ed25519 type, signed-note key type 0x04).
//!
//! A cosignature is one more signed-note signature line on a checkpoint. Its signature is
//! `u64 timestamp (big-endian) || Ed25519 signature` over
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the checkpoint's note body, signature lines excluded>
//! ```
//!
//! and it states that, at that time, this was the largest tree head of the log that the
//! witness had verified as consistent. The note format itself (lines, key ids, base64) is
//! `signed_note`'s; only the cosignature algorithm is here.
//!
//! The auditor signs with [`Cosigner`]; clients check with [`WitnessPolicy`], which the
//! node, the client and the auditor all use, so none of them can count differently.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use signed_note::{Note, NoteError, Signature, VerifierList};

use crate::{CheckpointError, Error, Result};

/// The signed-note key type byte of an Ed25519 `cosignature/v1` key.
pub const COSIGNATURE_V1: u8 = 0x04;

/// The largest timestamp a cosignature may carry (2^63 - 1).
const MAX_TIME: u64 = i64::MAX as u64;

fn malformed(what: &'static str, e: impl std::fmt::Display) -> Error {
    CheckpointError::Malformed {
        what,
        why: e.to_string(),
    }
    .into()
}

/// The message a `cosignature/v1` signs: header, time, then the checkpoint's body.
fn signed_message(body: &[u8], time: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {time}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

fn key_bytes(key: &VerifyingKey) -> Vec<u8> {
    let mut v = vec![COSIGNATURE_V1];
    v.extend_from_slice(key.as_bytes());
    v
}

/// The body of a signed note (its text, without signature lines).
fn body_of(note: &[u8]) -> Result<Note> {
    Note::from_bytes(note).map_err(|e| malformed("checkpoint note", e))
}

/// A witness's signing key.
pub struct Cosigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl Cosigner {
    /// A cosigner called `name` (a schema-less URL or any key name without spaces or
    /// `+`).
    pub fn new(name: &str, key: SigningKey) -> Result<Self> {
        if !signed_note::is_key_name_valid(name) {
            return Err(CheckpointError::KeyName(name.to_owned()).into());
        }
        let id = signed_note::key_id(name, &key_bytes(&key.verifying_key()));
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key clients configure: `name+id+base64(0x04 || key)`.
    pub fn verifier_key(&self) -> String {
        let raw = key_bytes(&self.key.verifying_key());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            base64::engine::general_purpose::STANDARD.encode(&raw)
        )
    }

    /// The cosignature line (`— name base64(id || time || signature)\n`) for the
    /// checkpoint `note`, made at `time` (POSIX seconds). The caller has verified the
    /// checkpoint: this only signs.
    pub fn cosign(&self, note: &[u8], time: u64) -> Result<Vec<u8>> {
        if time > MAX_TIME {
            return Err(CheckpointError::TimeOutOfRange(time).into());
        }
        let parsed = body_of(note)?;
        let sig = self.key.sign(&signed_message(parsed.text(), time));
        let mut raw = time.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        let line = Signature::new(self.name.clone(), self.id, raw)
            .map_err(|e| malformed("cosignature", e))?;
        Ok(line.to_bytes())
    }
}

/// A witness's public key, as a client configures it (`name+id+base64(0x04 || key)`).
#[derive(Clone, Debug)]
pub struct WitnessKey {
    name: String,
    id: u32,
    key: VerifyingKey,
    vkey: String,
}

impl WitnessKey {
    /// Parses a `cosignature/v1` verifier key.
    pub fn parse(vkey: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::from(CheckpointError::WitnessKey {
                key: vkey.to_owned(),
                why: why.to_owned(),
            })
        };
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+id+base64 key"));
        };
        if !signed_note::is_key_name_valid(name) {
            return Err(bad("the name is not a valid key name"));
        }
        let id = u32::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.len() == 8)
            .ok_or_else(|| bad("the key id is not 8 hex digits"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("the key is not base64"))?;
        match raw.first() {
            Some(&COSIGNATURE_V1) if raw.len() == 33 => {}
            Some(&COSIGNATURE_V1) => return Err(bad("an Ed25519 key is 32 bytes")),
            Some(t) => {
                return Err(bad(&format!(
                    "key type 0x{t:02x} is not a cosignature/v1 key (0x04); a log's own key is not a witness key"
                )));
            }
            None => return Err(bad("empty key")),
        }
        if signed_note::key_id(name, &raw) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        let key = crate::ed25519_key(&raw[1..]).map_err(|_| bad("not an Ed25519 point"))?;
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
            vkey: vkey.trim().to_owned(),
        })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key in its text form.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// The time of this witness's valid cosignature on `note`, or `None` if the note
    /// carries none (a cosignature line of this key that does not verify is an error).
    pub fn cosigned_at(&self, note: &[u8]) -> Result<Option<u64>> {
        let parsed = body_of(note)?;
        let time = std::rc::Rc::new(std::cell::Cell::new(None));
        let probe = Probe {
            key: self.clone(),
            time: time.clone(),
        };
        let found = parsed.verify(&VerifierList::new(vec![Box::new(probe)]));
        match found {
            Ok(_) => Ok(time.get()),
            Err(NoteError::UnverifiedNote) => Ok(None),
            Err(e) => Err(CheckpointError::Cosignature {
                witness: self.name.clone(),
                why: e.to_string(),
            }
            .into()),
        }
    }

    fn check(&self, body: &[u8], sig: &[u8]) -> Option<u64> {
        if sig.len() != 8 + 64 {
            return None;
        }
        let time = u64::from_be_bytes(sig[..8].try_into().ok()?);
        if time > MAX_TIME {
            return None;
        }
        let s = ed25519_dalek::Signature::from_slice(&sig[8..]).ok()?;
        self.key
            .verify_strict(&signed_message(body, time), &s)
            .ok()
            .map(|()| time)
    }
}

/// A signed-note verifier for one witness key that remembers the time it verified.
struct Probe {
    key: WitnessKey,
    time: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl signed_note::Verifier for Probe {
    fn name(&self) -> &str {
        &self.key.name
    }

    fn key_id(&self) -> u32 {
        self.key.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self.key.check(msg, sig) {
            Some(t) => {
                self.time.set(Some(t));
                true
            }
            None => false,
        }
    }
}

/// Adds cosignature lines to a checkpoint note, skipping any of a key it already carries.
pub fn add_cosignatures(note: &[u8], lines: &[impl AsRef<[u8]>]) -> Result<Vec<u8>> {
    body_of(note)?;
    let mut out = note.to_vec();
    for line in lines {
        let line = line.as_ref();
        let sig = Signature::from_bytes(line.strip_suffix(b"\n").unwrap_or(line))
            .map_err(|e| malformed("cosignature line", e))?;
        let prefix = format!("— {} ", sig.name());
        let id = sig.id().to_be_bytes();
        // `out` is a well-formed note: the one given, plus well-formed signature lines.
        let present = String::from_utf8_lossy(&out).lines().any(|l| {
            l.strip_prefix(&prefix)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .is_some_and(|b| b.starts_with(&id))
        });
        if !present {
            out.extend_from_slice(&sig.to_bytes());
        }
    }
    body_of(&out)?;
    Ok(out)
}

/// The key names on a signed note's signature lines after the first (the log's own):
/// who the note says cosigned it. Nothing is verified here ([`WitnessKey::cosigned_at`]
/// and [`WitnessPolicy::cosigners`] verify).
pub fn claimed_cosigners(note: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(note)
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .skip(1)
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect()
}

/// Which witnesses a client trusts, and how many must have cosigned a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct WitnessPolicy {
    keys: Vec<WitnessKey>,
    min: usize,
}

impl WitnessPolicy {
    /// At least `min` of the witnesses `keys` (verifier keys) must cosign. `min` may not
    /// exceed the number of keys.
    pub fn new(keys: &[impl AsRef<str>], min: usize) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|k| WitnessKey::parse(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if min > keys.len() {
            return Err(CheckpointError::Policy {
                min,
                keys: keys.len(),
            }
            .into());
        }
        Ok(Self { keys, min })
    }

    /// Whether any cosignature is required.
    pub fn is_required(&self) -> bool {
        self.min > 0
    }

    /// How many cosignatures are required.
    pub fn min(&self) -> usize {
        self.min
    }

    /// The trusted witnesses.
    pub fn keys(&self) -> &[WitnessKey] {
        &self.keys
    }

    /// The witnesses whose valid cosignature `note` carries, by name. A cosignature
    /// that claims a trusted key but does not verify is not counted.
    pub fn cosigners(&self, note: &[u8]) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| matches!(k.cosigned_at(note), Ok(Some(_))))
            .map(|k| k.name.clone())
            .collect()
    }

    /// Checks that `note` (a checkpoint whose own signature the caller verified) carries
    /// at least the required number of valid cosignatures of trusted witnesses.
    pub fn check(&self, note: &[u8]) -> Result<Vec<String>> {
        let got = self.cosigners(note);
        if got.len() < self.min {
            let size = body_of(note)
                .ok()
                .and_then(|n| {
                    String::from_utf8_lossy(n.text())
                        .lines()
                        .nth(1)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            return Err(Error::NotWitnessed {
                size,
                have: got.len(),
                need: self.min,
            });
        }
        Ok(got)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::log::CheckpointSigner;

    fn witness(seed: u8, name: &str) -> Cosigner {
        Cosigner::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    #[test]
    fn a_cosignature_is_the_c2sp_signed_message() {
        let log =
            CheckpointSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let note = log.sign(5, [7; 32]).unwrap();
        let w = witness(2, "witness.example/w1");
        let line = w.cosign(&note, 1_679_315_147).unwrap();
        // Re-derive the line by hand, from the spec, with nothing of this module.
        let body = b"example.com/log\n5\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n";
        assert!(note.starts_with(body));
        let mut msg = b"cosignature/v1\ntime 1679315147\n".to_vec();
        msg.extend_from_slice(body);
        let sk = SigningKey::from_bytes(&[2; 32]);
        let mut pk = vec![0x04];
        pk.extend_from_slice(sk.verifying_key().as_bytes());
        let id = signed_note::key_id("witness.example/w1", &pk);
        let mut raw = id.to_be_bytes().to_vec();
        raw.extend_from_slice(&1_679_315_147u64.to_be_bytes());
        raw.extend_from_slice(&sk.sign(&msg).to_bytes());
        let expect = format!(
            "— witness.example/w1 {}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        assert_eq!(String::from_utf8(line).unwrap(), expect);
    }

    #[test]
    fn policies_count_valid_cosignatures_of_trusted_keys_only() {
        let log =
            CheckpointSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let note = log.sign(5, [7; 32]).unwrap();
        let (a, b, c) = (witness(2, "w/a"), witness(3, "w/b"), witness(4, "w/c"));
        let both = add_cosignatures(
            &note,
            &[a.cosign(&note, 10).unwrap(), b.cosign(&note, 11).unwrap()],
        )
        .unwrap();
        // The log's own signature still verifies with cosignatures beside it.
        let cp = crate::verify_checkpoint(&both, &log.verifier_key()).unwrap();
        assert_eq!(cp.size, 5);
        let keys = [a.verifier_key(), b.verifier_key(), c.verifier_key()];
        assert_eq!(
            WitnessPolicy::new(&keys, 2).unwrap().check(&both).unwrap(),
            vec!["w/a".to_owned(), "w/b".to_owned()]
        );
        assert!(matches!(
            WitnessPolicy::new(&keys, 3).unwrap().check(&both),
            Err(Error::NotWitnessed {
                have: 2,
                need: 3,
                ..
            })
        ));
        assert!(WitnessPolicy::new(&keys, 1).unwrap().check(&note).is_err());
        // Adding a key's line twice keeps one.
        let again = add_cosignatures(&both, &[a.cosign(&note, 12).unwrap()]).unwrap();
        assert_eq!(again, both);
        // A cosignature of another checkpoint (same size, other root) does not count.
        let other = log.sign(5, [8; 32]).unwrap();
        let moved = add_cosignatures(&other, &[a.cosign(&note, 10).unwrap()]).unwrap();
        assert!(WitnessPolicy::new(&keys, 1).unwrap().check(&moved).is_err());
        assert_eq!(a.verifier_key().split('+').count(), 3);
        assert_eq!(
            WitnessKey::parse(&a.verifier_key())
                .unwrap()
                .cosigned_at(&both)
                .unwrap(),
            Some(10)
        );
    }

    #[test]
    fn witness_keys_are_checked() {
        let a = witness(2, "w/a");
        assert!(WitnessKey::parse(&a.verifier_key()).is_ok());
        let log =
            CheckpointSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let err = WitnessKey::parse(&log.verifier_key()).unwrap_err();
        assert!(
            err.to_string().contains("not a cosignature/v1 key"),
            "{err}"
        );
        let mut bad = a.verifier_key();
        bad.replace_range(4..6, "00");
        assert!(WitnessKey::parse(&bad).is_err());
        assert!(WitnessKey::parse("nothing").is_err());
        assert!(WitnessPolicy::new(&[a.verifier_key()], 2).is_err());
    }
}
