//! Small files written safely, and node keys.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};

use crate::{Error, Result};

/// Writes a file so that a crash leaves either the old or the new contents
/// ([`blockpost_files::write_atomic`]: synced, renamed, its directory synced).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(blockpost_files::write_atomic(path, data)?)
}

/// [`write_atomic`] for a file readable by its owner only (mode 0600), such as a config
/// holding passwords; unlike [`write_private_file`] it replaces an existing file.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(blockpost_files::write_private_atomic(path, data)?)
}

/// Creates a file readable by its owner only (mode 0600), for private keys; never
/// overwrites one.
pub fn write_private_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Loads the node's ed25519 key at `path` (PKCS#8 PEM), creating it (mode 0600) on first
/// start. Every node key (log, CA, gateway, and later builder and auditor) comes from here.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    let err = |why: String| Error::Key {
        path: path.display().to_string(),
        why,
    };
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(pkcs8::LineEnding::LF)
                .map_err(|e| err(e.to_string()))?;
            write_private_file(path, pem.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/log.key");
        let k = load_or_create_key(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), k.to_bytes());
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(load_or_create_key(&path), Err(Error::Key { .. })));
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(
            write_private_file(&path, b"x").is_err(),
            "never overwritten"
        );
        use std::os::unix::fs::PermissionsExt as _;
        write_private_atomic(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
