//! Key files, passphrases, evidence keys and the address recorded beside a key file.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_client::{Keyring, read_key_file, read_keyring};
use blockpost_core::{Address, Identity};
use zeroize::Zeroizing;

/// What `--key` names: a key file (one generation) or a keyring (every generation).
pub enum Keys {
    /// A key file.
    File(Identity),
    /// A keyring.
    Ring(Keyring),
}

impl Keys {
    /// The keys that sign: the key file's, or the keyring's current generation.
    pub fn signing(&self) -> anyhow::Result<&Identity> {
        match self {
            Self::File(id) => Ok(id),
            Self::Ring(k) => Ok(&k.signing()?.identity),
        }
    }
}

/// Whether the file at `path` is a keyring (rather than a key file).
pub fn is_keyring(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(blockpost_client::keyring::is_keyring(&bytes))
}

/// Reads a key file or a keyring, with the passphrase.
pub fn read_keys(path: &Path) -> anyhow::Result<Keys> {
    if is_keyring(path)? {
        let p = passphrase(false)?;
        Ok(Keys::Ring(read_keyring(path, p.as_bytes())?))
    } else {
        let p = passphrase(false)?;
        Ok(Keys::File(read_key_file(path, p.as_bytes())?))
    }
}

/// Reads a keyring (and says so plainly when given a key file).
pub fn read_ring(path: &Path) -> anyhow::Result<Keyring> {
    match read_keys(path)? {
        Keys::Ring(k) => Ok(k),
        Keys::File(_) => bail!(
            "{} is a key file, not a keyring: `blockpost key import --into NEW.keyring --key {}` \
             makes one",
            path.display(),
            path.display()
        ),
    }
}

/// The passphrase asked for on the terminal, kept for the rest of the command (which may
/// read a keyring and write it back).
static ASKED: std::sync::OnceLock<Zeroizing<String>> = std::sync::OnceLock::new();

/// The passphrase: `BLOCKPOST_PASSPHRASE`, or asked on the terminal (once per command).
pub fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("BLOCKPOST_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    if let Some(p) = ASKED.get() {
        return Ok(p.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set BLOCKPOST_PASSPHRASE or run in a terminal");
    }
    let p = Zeroizing::new(rpassword::prompt_password("passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
        if *again != *p {
            bail!("passphrases differ");
        }
    }
    if p.is_empty() {
        bail!("empty passphrase");
    }
    Ok(ASKED.get_or_init(|| p).clone())
}

/// Reads and decrypts a key file, or a keyring's current generation.
pub fn read_key(path: &Path) -> anyhow::Result<Identity> {
    Ok(read_keys(path)?.signing()?.clone())
}

/// A signer for the PKCS#8 private key of an evidence certificate.
pub fn evidence_signer(
    path: &Path,
) -> anyhow::Result<impl Fn(&[u8]) -> Result<Vec<u8>, String> + use<>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = rcgen::KeyPair::from_pem(&pem)
        .with_context(|| format!("{}: not a PKCS#8 private key", path.display()))?;
    Ok(move |msg: &[u8]| rcgen::SigningKey::sign(&key, msg).map_err(|e| e.to_string()))
}

/// The certificates of a PEM file, leaf first.
pub fn read_chain(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        out.push(
            p.with_context(|| format!("{}: bad PEM", path.display()))?
                .contents,
        );
    }
    if out.is_empty() {
        bail!("{}: no certificate found", path.display());
    }
    Ok(out)
}

/// Where `register` records the address of a key file: `KEY.address`.
pub fn address_file(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".address");
    PathBuf::from(p)
}

/// Records `address` beside the key file.
pub fn remember_address(key: &Path, address: &Address) {
    let path = address_file(key);
    if let Err(e) = std::fs::write(&path, format!("{address}\n")) {
        eprintln!(
            "warning: cannot record the address in {}: {e}",
            path.display()
        );
    }
}

/// The address a command acts for: a keyring's own (which `explicit` must match), else
/// `explicit`, else the one recorded beside the key file `key`.
pub fn address_for(key: &Path, explicit: Option<String>, flag: &str) -> anyhow::Result<Address> {
    if is_keyring(key)? {
        let bytes = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        let holder = blockpost_client::keyring::address_of(&bytes)
            .with_context(|| key.display().to_string())?;
        return match (holder, explicit) {
            (Some(h), Some(e)) if h != e => {
                bail!("{} is the keyring of {h}, not of {e}", key.display())
            }
            (Some(h), _) => Ok(Address::parse(&h)?),
            (None, Some(e)) => Ok(Address::parse(&e)?),
            (None, None) => bail!(
                "{} is not registered yet (`blockpost register --key {}` binds it); or pass {flag} ADDRESS",
                key.display(),
                key.display()
            ),
        };
    }
    let a = match explicit {
        Some(a) => a,
        None => std::fs::read_to_string(address_file(key))
            .map(|s| s.trim().to_owned())
            .map_err(|_| {
                anyhow::anyhow!(
                    "no address recorded for {} (register writes it); pass {flag} ADDRESS",
                    key.display()
                )
            })?,
    };
    Ok(Address::parse(&a)?)
}
