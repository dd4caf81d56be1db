//! Key files, passphrases, evidence keys and the address recorded beside a key file.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_client::{read_key_file, write_key_file};
use blockpost_core::{Address, Identity};
use zeroize::Zeroizing;

/// `blockpost key new`.
pub fn new_key(out: &Path, json: bool) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key file", out.display());
    }
    let p = passphrase(true)?;
    let id = Identity::generate();
    write_key_file(&id, out, p.as_bytes())?;
    crate::render::new_key(out, &id, json)
}

/// The passphrase: `BLOCKPOST_PASSPHRASE`, or asked on the terminal.
pub fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("BLOCKPOST_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set BLOCKPOST_PASSPHRASE or run in a terminal");
    }
    let p = Zeroizing::new(rpassword::prompt_password("key file passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
        if *again != *p {
            bail!("passphrases differ");
        }
    }
    if p.is_empty() {
        bail!("empty passphrase");
    }
    Ok(p)
}

/// Reads and decrypts a key file.
pub fn read_key(path: &Path) -> anyhow::Result<Identity> {
    let p = passphrase(false)?;
    Ok(read_key_file(path, p.as_bytes())?)
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

/// The address a command acts for: `explicit`, else the one recorded beside `key`.
pub fn address_for(key: &Path, explicit: Option<String>, flag: &str) -> anyhow::Result<Address> {
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
