//! The auditor as a witness: it cosigns (C2SP tlog-cosignature, `cosignature/v1`) the
//! directory and ledger checkpoints it verified against its own replay of each log.
//!
//! A cosignature states that, at its time, the checkpoint was the largest the witness had
//! verified for that log. So the witness cosigns a log's checkpoints in increasing size
//! only, and records the largest it cosigned (`DATA/witness.json`, written and synced
//! before the cosignature leaves) so that no restart can make it cosign a smaller or a
//! conflicting one. An older checkpoint gets the cosignature made when it was the
//! largest, if it is among the last [`KEEP`] cosigned.
//!
//! The signing key is `DATA/witness.key` (PKCS#8 PEM, mode 0600), made on first start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use blockpost_core::{Cosigner, VerifiedCheckpoint, add_cosignatures};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Cosignatures kept per log for checkpoints older than the largest.
pub const KEEP: usize = 1024;

/// The largest checkpoint of one log the witness cosigned, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    size: u64,
    /// The root, hex.
    root: String,
    /// The checkpoint with the cosignature.
    note: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Recorded {
    /// By log origin.
    logs: BTreeMap<String, Record>,
}

/// Why the witness does not cosign a checkpoint it was asked to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Older than the largest it cosigned, and not one of those it still holds.
    Older {
        /// The largest size cosigned.
        cosigned: u64,
    },
    /// Of the size it cosigned, with another root.
    Conflict {
        /// The size.
        size: u64,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Older { cosigned } => write!(
                f,
                "the witness has cosigned a larger checkpoint of this log (size {cosigned}); ask with the newest"
            ),
            Self::Conflict { size } => write!(
                f,
                "the witness cosigned another checkpoint of size {size} for this log: this one conflicts with it"
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// One log's recent cosignatures by size: the root and the cosignature line.
type Kept = BTreeMap<u64, ([u8; 32], Vec<u8>)>;

/// The witness's key and what it cosigned.
pub struct Witness {
    cosigner: Cosigner,
    path: PathBuf,
    recorded: Recorded,
    /// Recent cosignatures by log and size: the root and the cosignature line.
    recent: HashMap<String, Kept>,
}

fn state_err(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Loads the witness key at `path`, or makes one (mode 0600).
fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| state_err(path, format!("not a PKCS#8 Ed25519 key: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = blockpost_core::Identity::generate().signing;
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| state_err(path, e))?;
            blockpost_files::write_private_atomic(path, pem.as_bytes())
                .map_err(|e| state_err(path, e))?;
            Ok(key)
        }
        Err(e) => Err(state_err(path, e)),
    }
}

impl Witness {
    /// Opens the witness in `data`: its key (made on first start) and what it cosigned.
    /// Its name defaults to `blockpost-auditor/` and the first 8 hex digits of its key.
    pub fn open(data: &Path, name: Option<&str>) -> Result<Self> {
        let key = load_or_create_key(&data.join("witness.key"))?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => format!(
                "blockpost-auditor/{}",
                hex::encode(&key.verifying_key().as_bytes()[..4])
            ),
        };
        let cosigner =
            Cosigner::new(&name, key).map_err(|e| state_err(&data.join("witness.key"), e))?;
        let path = data.join("witness.json");
        let recorded = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| {
                state_err(
                    &path,
                    format!("damaged ({e}): it records what this witness cosigned; restore it rather than delete it"),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recorded::default(),
            Err(e) => return Err(state_err(&path, e)),
        };
        Ok(Self {
            cosigner,
            path,
            recorded,
            recent: HashMap::new(),
        })
    }

    /// The verifier key clients and nodes configure: `name+id+base64(0x04 || key)`.
    pub fn verifier_key(&self) -> String {
        self.cosigner.verifier_key()
    }

    /// The largest size cosigned for the log `origin`.
    pub fn cosigned_size(&self, origin: &str) -> Option<u64> {
        self.recorded.logs.get(origin).map(|r| r.size)
    }

    /// The newest cosigned checkpoint of the log `origin`, with the cosignature.
    pub fn newest(&self, origin: &str) -> Option<Vec<u8>> {
        self.recorded
            .logs
            .get(origin)
            .map(|r| r.note.clone().into_bytes())
    }

    /// The cosignature line for `cp`, which the caller verified against its replay of the
    /// log, made at `now_s` (POSIX seconds) if `cp` is the largest of its log so far.
    pub fn cosign(
        &mut self,
        cp: &VerifiedCheckpoint,
        now_s: u64,
    ) -> Result<std::result::Result<Vec<u8>, Refused>> {
        if let Some(r) = self.recorded.logs.get(&cp.origin)
            && cp.size <= r.size
        {
            let kept = self
                .recent
                .get(&cp.origin)
                .and_then(|m| m.get(&cp.size))
                .filter(|(root, _)| *root == cp.root)
                .map(|(_, line)| line.clone());
            if let Some(line) = kept {
                return Ok(Ok(line));
            }
            if cp.size == r.size {
                if r.root == hex::encode(cp.root) {
                    // Cosigned before a restart: the line is in the recorded note.
                    if let Some(line) = self.line_in(&r.note) {
                        return Ok(Ok(line));
                    }
                }
                return Ok(Err(Refused::Conflict { size: cp.size }));
            }
            return Ok(Err(Refused::Older { cosigned: r.size }));
        }
        let line = self
            .cosigner
            .cosign(&cp.note, now_s)
            .map_err(|e| state_err(&self.path, e))?;
        let note = add_cosignatures(&cp.note, &[&line]).map_err(|e| state_err(&self.path, e))?;
        let mut recorded = Recorded {
            logs: self.recorded.logs.clone(),
        };
        recorded.logs.insert(
            cp.origin.clone(),
            Record {
                size: cp.size,
                root: hex::encode(cp.root),
                note: String::from_utf8_lossy(&note).into_owned(),
            },
        );
        self.persist(&recorded)?;
        self.recorded = recorded;
        let recent = self.recent.entry(cp.origin.clone()).or_default();
        recent.insert(cp.size, (cp.root, line.clone()));
        if recent.len() > KEEP {
            recent.pop_first();
        }
        Ok(Ok(line))
    }

    /// This witness's line in a cosigned note.
    fn line_in(&self, note: &str) -> Option<Vec<u8>> {
        let prefix = format!("— {} ", self.cosigner.name());
        note.lines()
            .find(|l| l.starts_with(&prefix))
            .map(|l| format!("{l}\n").into_bytes())
    }

    /// Writes what was cosigned, synced, before the cosignature leaves.
    fn persist(&self, recorded: &Recorded) -> Result<()> {
        let json = serde_json::to_vec_pretty(recorded).map_err(|e| state_err(&self.path, e))?;
        blockpost_files::write_atomic(&self.path, &json).map_err(|e| state_err(&self.path, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use blockpost_core::{CheckpointSigner, WitnessPolicy, verify_checkpoint};

    #[test]
    fn cosigns_in_increasing_size_only_and_remembers_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            CheckpointSigner::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let cp = |size: u64, root: u8| {
            verify_checkpoint(&log.sign(size, [root; 32]).unwrap(), &log.verifier_key()).unwrap()
        };
        let mut w = Witness::open(dir.path(), None).unwrap();
        let policy = WitnessPolicy::new(&[w.verifier_key()], 1).unwrap();
        let five = w.cosign(&cp(5, 1), 100).unwrap().unwrap();
        let noted = add_cosignatures(&cp(5, 1).note, &[&five]).unwrap();
        assert_eq!(policy.check(&noted).unwrap().len(), 1);
        // The same again: the same line.
        assert_eq!(w.cosign(&cp(5, 1), 200).unwrap().unwrap(), five);
        // Another root at size 5: refused.
        assert_eq!(
            w.cosign(&cp(5, 2), 200).unwrap(),
            Err(Refused::Conflict { size: 5 })
        );
        w.cosign(&cp(9, 3), 300).unwrap().unwrap();
        // Size 5 was cosigned when it was the largest: that line is still handed out.
        assert_eq!(w.cosign(&cp(5, 1), 400).unwrap().unwrap(), five);
        assert_eq!(
            w.cosign(&cp(7, 4), 400).unwrap(),
            Err(Refused::Older { cosigned: 9 })
        );
        let key = w.verifier_key();
        drop(w);
        let mut w = Witness::open(dir.path(), None).unwrap();
        assert_eq!(w.verifier_key(), key, "the key is kept");
        assert_eq!(w.cosigned_size("example.com/log"), Some(9));
        assert_eq!(
            w.cosign(&cp(9, 5), 500).unwrap(),
            Err(Refused::Conflict { size: 9 })
        );
        assert!(w.cosign(&cp(9, 3), 500).unwrap().is_ok());
        assert!(w.newest("example.com/log").is_some());
        std::fs::write(dir.path().join("witness.json"), "{").unwrap();
        assert!(Witness::open(dir.path(), None).is_err());
    }
}
