//! Key files on disk: [`Identity`] as encrypted PKCS#8, mode 0600, never overwritten.

use std::path::Path;

use blockpost_core::{Error as CoreError, Identity};
use zeroize::Zeroizing;

use crate::keyring::Keyring;
use crate::{Error, Result};

fn key_error(path: &Path, source: CoreError) -> Error {
    Error::KeyFile {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `id` to `path` with mode 0600, encrypted with `passphrase`; refuses to overwrite
/// an existing file.
pub fn write_key_file(id: &Identity, path: &Path, passphrase: &[u8]) -> Result<()> {
    let pem = id
        .to_encrypted_pem(passphrase)
        .map_err(|e| key_error(path, e))?;
    blockpost_files::write_new(path, pem.as_bytes(), true)
        .map_err(|e| key_error(path, CoreError::KeyFile(e.into())))
}

/// Reads and decrypts the key file at `path`.
pub fn read_key_file(path: &Path, passphrase: &[u8]) -> Result<Identity> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| key_error(path, CoreError::KeyFile(e.into())))?,
    );
    Identity::from_encrypted_pem(&text, passphrase).map_err(|e| key_error(path, e))
}

/// Reads and opens the keyring at `path`.
pub fn read_keyring(path: &Path, passphrase: &[u8]) -> Result<Keyring> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| Error::KeyringIo {
        path: path.display().to_string(),
        source,
    })?);
    Keyring::from_file(&bytes, passphrase).map_err(|source| Error::Keyring {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `keyring` to `path` under `passphrase`, mode 0600: a new file when `create`
/// (never overwriting one), else replacing the file atomically (a crash leaves the old
/// keyring or the new one, never a mix).
pub fn write_keyring(
    path: &Path,
    keyring: &Keyring,
    passphrase: &[u8],
    create: bool,
) -> Result<()> {
    let file = keyring
        .to_file(passphrase)
        .map_err(|source| Error::Keyring {
            path: path.display().to_string(),
            source,
        })?;
    let io = |source| Error::KeyringIo {
        path: path.display().to_string(),
        source,
    };
    if create {
        blockpost_files::write_new(path, &file, true).map_err(io)
    } else {
        blockpost_files::write_private_atomic(path, &file).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_wrong_passphrase_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let id = Identity::generate();
        write_key_file(&id, &path, b"correct horse").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = read_key_file(&path, b"correct horse").unwrap();
        assert_eq!(back.signing_public(), id.signing_public());
        assert!(matches!(
            read_key_file(&path, b"wrong"),
            Err(Error::KeyFile {
                source: CoreError::KeyFile(blockpost_core::KeyFileError::Decrypt),
                ..
            })
        ));
        assert!(
            write_key_file(&id, &path, b"x").is_err(),
            "never overwritten"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(dir.path().join("t.key"), &text[..text.len() / 2]).unwrap();
        assert!(read_key_file(&dir.path().join("t.key"), b"correct horse").is_err());
    }
}
