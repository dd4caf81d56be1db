//! Small files written safely, and trust-on-first-use pins: what the node, the client and
//! the auditor each keep in a file of their own. No server code, no async: the client and
//! the auditor depend on it as the node does.
//!
//! - [`write_atomic`]: a crash leaves the old contents or the new ones, never a mix: the
//!   bytes go to a fresh temporary file beside the target, are synced, renamed over it, and
//!   the directory is synced so that the rename itself survives.
//! - [`write_new`]: a file a user asked to create, never overwritten, synced.
//! - [`pin_json`]: trust on first use of what a peer presents (keys, a log's origin, the
//!   rules of a ledger): written at first contact, compared at every later one.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("node.json");
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Key { key: String, partitions: Option<u32> }
//! let first = Key { key: "ab".into(), partitions: Some(4) };
//! blockpost_files::pin_json(&path, &first, |_, _| false).unwrap();
//! // The same again is fine; another key is refused, naming both.
//! blockpost_files::pin_json(&path, &first, |_, _| false).unwrap();
//! let other = Key { key: "cd".into(), partitions: Some(4) };
//! let e = blockpost_files::pin_json(&path, &other, |_, _| false).unwrap_err();
//! assert!(matches!(e, blockpost_files::PinError::Changed { .. }));
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a file so that a crash leaves either the old or the new contents, and the new
/// ones are on disk when it returns.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    replace(path, data, None)
}

/// [`write_atomic`] for a file readable by its owner only (mode 0600), such as a private
/// key or a config holding passwords: the mode is set before a byte is written.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    replace(path, data, Some(0o600))
}

/// Replaces a file through a temporary one and a rename, without syncing: readers never see
/// a partial file, but a crash may leave the old contents, the new, or (on file systems
/// that do not write data before a rename) an empty file. For what can be derived again
/// from data that is synced, such as a log's checkpoint, which the log signs again from
/// its synced leaves.
pub fn write_replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    replace_with(path, data, None, false)
}

/// Temporary files of this process, numbered, so that two writers of one target never
/// share one.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn replace(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    replace_with(path, data, mode, true)
}

fn replace_with(path: &Path, data: &[u8], mode: Option<u32>, sync: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("file"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o666))
            .open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if sync { sync_parent(path) } else { Ok(()) }
}

/// Writes a new file, never replacing one (an existing `path` is an `AlreadyExists`
/// error), readable by its owner only when `private` (mode 0600, set before a byte is
/// written); the bytes and the directory entry are synced before it returns. For what a
/// user asked to create: a key file, a keyring, a backup share, an evidence bundle.
pub fn write_new(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o666 })
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so that a new or renamed file survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Why a pin could not be checked or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The pin file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The pin file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The pin file is not what this version writes.
    #[error("{} is damaged ({why}); delete it to trust anew", path.display())]
    Damaged {
        /// The pin file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The peer presents something else than what was pinned.
    #[error("the peer now presents {presented}, but {} pinned {pinned}", path.display())]
    Changed {
        /// The pin file.
        path: PathBuf,
        /// What the peer presents, as JSON.
        presented: String,
        /// What was pinned, as JSON.
        pinned: String,
    },
}

/// Trust on first use of `presented`, kept as JSON at `path`: written (atomically, with
/// its directory made) when there is no pin yet; else the pin must equal it.
///
/// `complete(pinned, presented)` fills what a pin written by an earlier version lacks
/// (fields added since, which serde reads as their defaults) from `presented`, and says
/// whether it filled anything: the completed pin is then written back. Anything else that
/// differs is [`PinError::Changed`].
pub fn pin_json<T>(
    path: &Path,
    presented: &T,
    complete: impl FnOnce(&mut T, &T) -> bool,
) -> Result<(), PinError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let io = |source| PinError::Io {
        path: path.to_owned(),
        source,
    };
    let write = |pin: &T| {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(pin).map_err(|e| PinError::Damaged {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        write_atomic(path, &json).map_err(io)
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return write(presented),
        Err(e) => return Err(io(e)),
    };
    let mut pinned: T = serde_json::from_str(&text).map_err(|e| PinError::Damaged {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let completed = complete(&mut pinned, presented);
    if pinned != *presented {
        let json = |v: &T| serde_json::to_string(v).unwrap_or_default();
        return Err(PinError::Changed {
            path: path.to_owned(),
            presented: json(presented),
            pinned: json(&pinned),
        });
    }
    if completed {
        write(&pinned)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Pin {
        key: String,
        #[serde(default)]
        rule: Option<u32>,
    }

    #[test]
    fn a_write_replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        write_private_atomic(&path, b"three").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        // A target in a directory that does not exist: an error, nothing left behind.
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
    }

    #[test]
    fn a_pin_is_kept_completed_and_refused_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins/peer.json");
        let first = Pin {
            key: "aa".into(),
            rule: Some(4),
        };
        pin_json(&path, &first, |_, _| false).unwrap();
        pin_json(&path, &first, |_, _| false).unwrap();
        // A pin of an earlier version, without the rule: completed and written back.
        std::fs::write(&path, r#"{"key":"aa"}"#).unwrap();
        let fill = |p: &mut Pin, now: &Pin| {
            let missing = p.rule.is_none();
            if missing {
                p.rule = now.rule;
            }
            missing
        };
        pin_json(&path, &first, fill).unwrap();
        let kept: Pin = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(kept, first);
        // Another rule, or another key: refused, naming both.
        let other = Pin {
            key: "aa".into(),
            rule: Some(2),
        };
        match pin_json(&path, &other, fill) {
            Err(PinError::Changed {
                presented, pinned, ..
            }) => {
                assert!(presented.contains(":2"), "{presented}");
                assert!(pinned.contains(":4"), "{pinned}");
            }
            r => panic!("{r:?}"),
        }
        std::fs::write(&path, "{").unwrap();
        let e = pin_json(&path, &first, fill).unwrap_err();
        assert!(matches!(e, PinError::Damaged { .. }));
        assert!(e.to_string().contains("delete it to trust anew"), "{e}");
    }
}
