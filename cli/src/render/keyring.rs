//! Key files and keyrings: generations, backups.

use std::path::{Path, PathBuf};

use blockpost_client::Keyring;
use blockpost_core::Identity;
use serde_json::json;

use super::*;

/// New keys written to `file`.
pub fn new_key(file: &Path, id: &Identity, ring: bool, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            json!({
                "file": file.display().to_string(),
                "keyring": ring,
                "signing_key": hex::encode(id.signing_public()),
                "encryption_key": hex::encode(id.encryption_public()),
            })
        );
        return Ok(());
    }
    if ring {
        say!(
            "wrote keyring {} (generation 1, not registered yet; mode 0600)",
            file.display()
        );
    } else {
        say!("wrote {} (encrypted PKCS#8, mode 0600)", file.display());
    }
    say!("  signing key     {}", hex::encode(id.signing_public()));
    say!("  encryption key  {}", hex::encode(id.encryption_public()));
    Ok(())
}

/// A keyring's generations.
pub fn keyring(file: &Path, ring: &Keyring, json: bool) -> anyhow::Result<()> {
    if json {
        let gens: Vec<_> = ring
            .generations()
            .iter()
            .map(|g| {
                json!({
                    "generation": g.number,
                    "leaf_index": g.leaf_index,
                    "status": g.status.name(),
                    "ended_at": g.ended_at,
                    "created_ms": g.created_ms,
                    "signing_key": hex::encode(g.identity.signing_public()),
                    "encryption_key": hex::encode(g.identity.encryption_public()),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": file.display().to_string(),
                "address": ring.address(),
                "generations": gens,
            }))?
        );
        return Ok(());
    }
    say!(
        "keyring {} of {}",
        file.display(),
        ring.address().unwrap_or("(not registered yet)")
    );
    for g in ring.generations() {
        let bound = g
            .leaf_index
            .map_or_else(|| "not bound".to_owned(), |i| format!("entry {i}"));
        let status = match g.ended_at {
            Some(i) => format!("{} at entry {i}", g.status.name()),
            None => g.status.name().to_owned(),
        };
        say!(
            "  generation {:<3} {:<10} {:<20}  made {}  signing {}…",
            g.number,
            bound,
            status,
            date(g.created_ms),
            &hex::encode(g.identity.signing_public())[..16]
        );
    }
    Ok(())
}

/// Share files written by `key backup`.
pub fn backup(ring: &Keyring, files: &[PathBuf], threshold: u8, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            json!({
                "address": ring.address(),
                "generations": ring.generations().len(),
                "threshold": threshold,
                "shares": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    say!(
        "{} shares of the keyring of {} ({} generation(s)); any {threshold} recover it:",
        files.len(),
        ring.address().unwrap_or("an unregistered participant"),
        ring.generations().len()
    );
    for f in files {
        say!("  {}", f.display());
    }
    eprintln!(
        "(give each share to a different holder, then delete these files here; a later rotation \
         adds a generation the shares' copy lacks: `key recover --keyring` opens a newer copy \
         with the same shares, or make a new backup)"
    );
    Ok(())
}
