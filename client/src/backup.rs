//! Backup of a keyring as Shamir shares, K of N to recover it.
//!
//! The keyring key (32 bytes; see [`crate::keyring`]) is split with Shamir's secret
//! sharing over GF(256) (the `blahaj` crate, a maintained fork of `sharks` with
//! RUSTSEC-2024-0398 fixed): fewer than K shares tell nothing about it. Each share is a
//! printable text holding:
//! - `share:` the share itself, bech32m (BIP 350; human-readable part `bpks`) over
//!   version (1) ‖ backup id (4, random per backup) ‖ data id (8, the first bytes of
//!   the data's SHA-256) ‖ K ‖ N ‖ x ‖ y (32). Its BCH checksum finds any change of up
//!   to four characters and almost every larger one;
//! - `address:` and `data:`: the keyring's contents, sealed under the keyring key (the
//!   same in every share: it is safe to spread, useless without K shares), and
//!   `data-sha256:`, its SHA-256 over the address, a newline and the bytes.
//!
//! K shares rebuild the keyring with every generation it held when the backup was made.
//! A later copy of the keyring file (whose passphrase is lost) opens with the same
//! shares, since rotation keeps the keyring key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blahaj::{Share, Sharks};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::keyring::{Keyring, KeyringError, public_parts};

const HRP: &str = "bpks";
const VERSION: u8 = 1;
const SHARE_LEN: usize = 1 + 4 + 8 + 1 + 1 + 1 + 32;

/// Why shares cannot be made or cannot recover a keyring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// K or N out of range.
    #[error("{0}")]
    Parameters(String),
    /// One share text does not read, or fails its checks.
    #[error("share {name}: {why}")]
    BadShare {
        /// Which (the file name, or its place).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The shares given do not belong together, or are too few.
    #[error("{0}")]
    Shares(String),
    /// The recovered key does not open the keyring.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

type Result<T> = std::result::Result<T, BackupError>;

/// One share, read and checked.
struct Parsed {
    name: String,
    backup_id: [u8; 4],
    data_id: [u8; 8],
    threshold: u8,
    count: u8,
    share: Share,
    address: Option<String>,
    data: Vec<u8>,
}

fn data_hash(address: Option<&str>, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(address.unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(data);
    h.finalize().into()
}

/// Splits `keyring`'s key into `count` shares of which any `threshold` recover it, each a
/// printable text; `label` names the keyring in the texts' heading.
pub fn split(keyring: &Keyring, count: u8, threshold: u8) -> Result<Vec<Zeroizing<String>>> {
    if threshold < 2 || threshold > count {
        return Err(BackupError::Parameters(format!(
            "--threshold {threshold} of --shares {count}: the threshold must be at least 2 and \
             at most the number of shares"
        )));
    }
    let (nonce, sealed) = keyring.seal_contents()?;
    let mut data = nonce.to_vec();
    data.extend_from_slice(&sealed);
    let address = keyring.address();
    let hash = data_hash(address, &data);
    let backup_id: [u8; 4] = rand::random();
    let mut data_id = [0u8; 8];
    data_id.copy_from_slice(&hash[..8]);
    let sharks = Sharks(threshold);
    let mut out = Vec::with_capacity(count.into());
    for (i, share) in sharks.dealer(keyring.key()).take(count.into()).enumerate() {
        let mut payload = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
        payload.push(VERSION);
        payload.extend_from_slice(&backup_id);
        payload.extend_from_slice(&data_id);
        payload.extend_from_slice(&[threshold, count]);
        payload.extend_from_slice(&Zeroizing::new(Vec::from(&share)));
        let line = bech32::encode::<bech32::Bech32m>(bech32::Hrp::parse_unchecked(HRP), &payload)
            .map_err(|e| BackupError::Parameters(format!("encoding a share: {e}")))?;
        let mut t = Zeroizing::new(String::new());
        t.push_str(&format!(
            "Blockpost keyring backup: share {} of {count}; any {threshold} of them recover the \
             keyring.\n",
            i + 1
        ));
        t.push_str(&format!(
            "Keyring of {}, {} generation(s). Keep this share apart from the others; \
             `blockpost key recover` reads it.\n\n",
            address.unwrap_or("an unregistered participant"),
            keyring.generations().len()
        ));
        t.push_str(&format!("share: {}\n", line.as_str()));
        t.push_str(&format!("address: {}\n", address.unwrap_or("")));
        t.push_str(&format!("data-sha256: {}\n", hex::encode(hash)));
        t.push_str("data:\n");
        let b = B64.encode(&data);
        for chunk in b.as_bytes().chunks(64) {
            t.push_str(&String::from_utf8_lossy(chunk));
            t.push('\n');
        }
        out.push(t);
    }
    Ok(out)
}

fn parse(name: &str, text: &str) -> Result<Parsed> {
    let bad = |why: String| BackupError::BadShare {
        name: name.to_owned(),
        why,
    };
    let mut share = None;
    let mut address = None;
    let mut hash = None;
    let mut data = String::new();
    let mut in_data = false;
    for line in text.lines() {
        let line = line.trim();
        if in_data {
            data.push_str(line);
        } else if let Some(v) = line.strip_prefix("share:") {
            share = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("address:") {
            address = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data-sha256:") {
            hash = Some(v.trim().to_owned());
        } else if line == "data:" {
            in_data = true;
        }
    }
    let share =
        share.ok_or_else(|| bad("no `share:` line: not a Blockpost keyring share".into()))?;
    let (hrp, payload) = bech32::decode(&share).map_err(|e| {
        bad(format!(
            "the share line does not check ({e}): a character is wrong or missing"
        ))
    })?;
    let payload = Zeroizing::new(payload);
    if hrp.as_str() != HRP || payload.len() != SHARE_LEN || payload[0] != VERSION {
        return Err(bad(
            "the share line is not a version 1 Blockpost share".into()
        ));
    }
    let address = address.filter(|a| !a.is_empty());
    let data = B64.decode(data.as_bytes()).map_err(|e| {
        bad(format!(
            "the data block is not base64 ({e}): it was changed"
        ))
    })?;
    let h = data_hash(address.as_deref(), &data);
    if hash.as_deref() != Some(hex::encode(h).as_str()) || h[..8] != payload[5..13] {
        return Err(bad(
            "its address or data block does not match its checksum and share: it was changed"
                .into(),
        ));
    }
    let mut backup_id = [0u8; 4];
    backup_id.copy_from_slice(&payload[1..5]);
    let mut data_id = [0u8; 8];
    data_id.copy_from_slice(&payload[5..13]);
    let (threshold, count) = (payload[13], payload[14]);
    let share = Share::try_from(&payload[15..]).map_err(|e| bad(e.to_string()))?;
    if threshold < 2 || threshold > count || share.x.0 == 0 {
        return Err(bad("the share's parameters are out of range".into()));
    }
    Ok(Parsed {
        name: name.to_owned(),
        backup_id,
        data_id,
        threshold,
        count,
        share,
        address,
        data,
    })
}

/// Rebuilds a keyring from share texts `(name, text)`; with `newer`, a later copy of the
/// keyring file is opened with the recovered key instead of the data in the shares.
pub fn recover(shares: &[(String, String)], newer: Option<&[u8]>) -> Result<Keyring> {
    let mut parsed: Vec<Parsed> = Vec::with_capacity(shares.len());
    for (name, text) in shares {
        let p = parse(name, text)?;
        if let Some(first) = parsed.first()
            && (first.backup_id != p.backup_id || first.data_id != p.data_id)
        {
            return Err(BackupError::Shares(format!(
                "shares {} and {} come from different backups",
                first.name, p.name
            )));
        }
        if let Some(same) = parsed.iter().find(|q| q.share.x.0 == p.share.x.0) {
            return Err(BackupError::Shares(format!(
                "shares {} and {} are the same share",
                same.name, p.name
            )));
        }
        parsed.push(p);
    }
    let Some(first) = parsed.first() else {
        return Err(BackupError::Shares("no share given".into()));
    };
    if parsed.len() < usize::from(first.threshold) {
        return Err(BackupError::Shares(format!(
            "{} share(s) given; this backup needs {} of its {} to recover the keyring",
            parsed.len(),
            first.threshold,
            first.count
        )));
    }
    let secret = Zeroizing::new(
        Sharks(first.threshold)
            .recover(parsed.iter().map(|p| &p.share))
            .map_err(|e| BackupError::Shares(e.to_string()))?,
    );
    let key: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| BackupError::Shares("the recovered key is not 32 bytes".into()))?;
    let key = Zeroizing::new(key);
    let (address, data) = match newer {
        Some(file) => {
            let (address, nonce, sealed) = public_parts(file)?;
            let mut data = nonce;
            data.extend_from_slice(&sealed);
            (address, data)
        }
        None => (first.address.clone(), first.data.clone()),
    };
    if data.len() < 12 {
        return Err(BackupError::Shares(
            "the sealed keyring is cut short".into(),
        ));
    }
    let (nonce, sealed) = data.split_at(12);
    Keyring::open_contents(key, address.as_deref(), nonce, sealed).map_err(|e| match e {
        KeyringError::Damaged { .. } if newer.is_some() => BackupError::Shares(
            "the keyring file given does not open with the key these shares recover: it is \
             another participant's, or from another keyring"
                .into(),
        ),
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::Identity;

    use super::*;

    fn named(v: &[Zeroizing<String>], which: &[usize]) -> Vec<(String, String)> {
        which
            .iter()
            .map(|&i| (format!("share-{}", i + 1), v[i].to_string()))
            .collect()
    }

    #[test]
    fn three_of_five() {
        let mut k = Keyring::new(Identity::generate(), 1);
        k.set_address("alice").unwrap();
        k.push(Identity::generate(), 2);
        let shares = split(&k, 5, 3).unwrap();
        let want: Vec<[u8; 32]> = k
            .generations()
            .iter()
            .map(|g| g.identity.signing_public())
            .collect();
        for pick in [[0, 1, 2], [2, 3, 4], [4, 0, 2], [1, 3, 4]] {
            let back = recover(&named(&shares, &pick), None).unwrap();
            let got: Vec<[u8; 32]> = back
                .generations()
                .iter()
                .map(|g| g.identity.signing_public())
                .collect();
            assert_eq!(got, want);
            assert_eq!(back.address(), Some("alice"));
        }
        let two = recover(&named(&shares, &[0, 1]), None).err().unwrap();
        assert!(two.to_string().contains("needs 3"), "{two}");
        let same = recover(&named(&shares, &[0, 0, 1]), None).err().unwrap();
        assert!(same.to_string().contains("same share"), "{same}");
        // One changed character, in the share line and in the data block.
        for needle in ["share: bpks1", "data:\n"] {
            let mut v = named(&shares, &[0, 1, 2]);
            let t = &mut v[1].1;
            let at = t.find(needle).unwrap() + needle.len() + 7;
            let c = t.as_bytes()[at];
            let new = if c == b'q' { "p" } else { "q" };
            t.replace_range(at..=at, new);
            let e = recover(&v, None).err().unwrap().to_string();
            assert!(e.starts_with("share share-2:"), "{e}");
        }
        // Shares of two backups do not mix.
        let other = split(&k, 5, 3).unwrap();
        let mut v = named(&shares, &[0, 1]);
        v.push(("other".into(), other[2].to_string()));
        assert!(
            recover(&v, None)
                .err()
                .unwrap()
                .to_string()
                .contains("different backups")
        );
        // A later copy of the keyring opens with the same shares.
        k.push(Identity::generate(), 3);
        let newer = k.to_file(b"forgotten").unwrap();
        let back = recover(&named(&shares, &[0, 2, 4]), Some(&newer)).unwrap();
        assert_eq!(back.generations().len(), 3);
        assert!(split(&k, 5, 1).is_err() && split(&k, 2, 3).is_err());
    }
}
