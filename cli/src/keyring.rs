//! `blockpost key`: key files and keyrings: new, list, import, sync, backup, recover.
//!
//! A keyring ([`blockpost_client::keyring`]) keeps every generation of a participant's
//! keys, so that what was sealed to a rotated key stays readable; `register`, `rotate`
//! and `revoke` keep it labelled from the directory (see `directory`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_client::keyring::BoundKeys;
use blockpost_client::{Client, Keyring, config_dir, write_key_file, write_keyring};
use blockpost_core::Identity;

use crate::keys::{Keys, passphrase, read_keys, read_ring};
use crate::{Conn, render};

/// `blockpost key ...`.
#[derive(clap::Subcommand)]
pub enum KeyCmd {
    /// Make new keys (ed25519 + x25519): a keyring when OUT ends in `.keyring` (every
    /// later generation is added to it), else a single key file (encrypted PKCS#8, which
    /// `openssl pkey` reads). Mode 0600; never overwritten.
    New {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a keyring's generations: the directory entry that bound each, and whether it
    /// is current, rotated or revoked.
    List {
        /// The keyring.
        #[arg(long)]
        key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Gather single key files (earlier generations, kept by hand) into a keyring, each
    /// labelled with the directory entry that bound it. Makes the keyring if it does not
    /// exist.
    Import {
        /// The keyring.
        #[arg(long)]
        into: PathBuf,
        /// A key file; repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Whose keys they are (default: the keyring's, or the address recorded beside
        /// the first key file).
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Label a keyring's generations again from the directory (after a revocation with
    /// the evidence key, or a rotation cut short).
    Sync {
        /// The keyring.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Split a keyring's key into Shamir shares, any THRESHOLD of which recover the
    /// keyring: one printable text file per share holder.
    Backup {
        /// The keyring.
        #[arg(long)]
        key: PathBuf,
        /// How many shares.
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..))]
        shares: u8,
        /// How many of them recover it (at least 2).
        #[arg(long)]
        threshold: u8,
        /// A directory for the share files (made if missing).
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a keyring from enough of its backup shares, under a new passphrase.
    Recover {
        /// A share file; repeat for each.
        #[arg(long = "share", required = true)]
        shares: Vec<PathBuf>,
        /// Where to write the recovered keyring (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A later copy of the keyring, whose passphrase is lost: open it with the
        /// recovered key instead of the copy inside the shares (it holds generations added
        /// since the backup).
        #[arg(long, value_name = "KEYRING")]
        keyring: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn now_ms() -> i64 {
    blockpost_core::now_ms()
}

/// Labels `ring` from its address's verified directory history; how many generations
/// changed.
pub async fn label(c: &mut Client, ring: &mut Keyring) -> anyhow::Result<usize> {
    let Some(address) = ring.address().map(str::to_owned) else {
        return Ok(0);
    };
    let history = c.lookup(&address).await?;
    let bound: Vec<BoundKeys> = history
        .iter()
        .map(|e| BoundKeys {
            leaf_index: e.leaf_index,
            revoke: e.binding.revoked(),
            signing_key: e.binding.signing_key,
            encryption_key: e.binding.encryption_key,
        })
        .collect();
    Ok(ring.label(&bound))
}

/// Writes `ring` back over `path` with the passphrase it was read with.
pub fn save(path: &Path, ring: &Keyring) -> anyhow::Result<()> {
    let p = passphrase(false)?;
    Ok(write_keyring(path, ring, p.as_bytes(), false)?)
}

async fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Ok(Client::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?)
}

/// Runs one `key` command.
pub async fn run(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::New { out, json } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite keys", out.display());
            }
            let p = passphrase(true)?;
            let id = Identity::generate();
            let ring = out.extension().is_some_and(|e| e == "keyring");
            if ring {
                write_keyring(
                    &out,
                    &Keyring::new(id.clone(), now_ms()),
                    p.as_bytes(),
                    true,
                )?;
            } else {
                write_key_file(&id, &out, p.as_bytes())?;
            }
            render::new_key(&out, &id, ring, json)
        }
        KeyCmd::List { key, json } => {
            let ring = read_ring(&key)?;
            render::keyring(&key, &ring, json)
        }
        KeyCmd::Import {
            into,
            keys,
            address,
            conn,
        } => import(&into, &keys, address, &conn).await,
        KeyCmd::Sync { key, conn } => {
            let mut ring = read_ring(&key)?;
            if ring.address().is_none() {
                bail!(
                    "{} is not registered yet: nothing to sync (`blockpost register --key {}`)",
                    key.display(),
                    key.display()
                );
            }
            let mut c = connect(&conn).await?;
            let n = label(&mut c, &mut ring).await?;
            save(&key, &ring)?;
            eprintln!("{n} generation(s) relabelled from the directory");
            render::keyring(&key, &ring, conn.json)
        }
        KeyCmd::Backup {
            key,
            shares,
            threshold,
            out,
            json,
        } => {
            let ring = read_ring(&key)?;
            let texts = blockpost_client::backup::split(&ring, shares, threshold)?;
            std::fs::create_dir_all(&out).with_context(|| format!("making {}", out.display()))?;
            let stem = ring.address().unwrap_or("keyring").to_owned();
            let mut files = Vec::with_capacity(texts.len());
            for (i, t) in texts.iter().enumerate() {
                let f = out.join(format!("{stem}-share-{}-of-{shares}.txt", i + 1));
                blockpost_files::write_new(&f, t.as_bytes(), true)
                    .with_context(|| format!("writing {} (never overwritten)", f.display()))?;
                files.push(f);
            }
            render::backup(&ring, &files, threshold, json)
        }
        KeyCmd::Recover {
            shares,
            out,
            keyring,
            json,
        } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite a keyring", out.display());
            }
            let mut texts = Vec::with_capacity(shares.len());
            for s in &shares {
                let t = std::fs::read_to_string(s)
                    .with_context(|| format!("reading share {}", s.display()))?;
                texts.push((s.display().to_string(), t));
            }
            let newer = match &keyring {
                Some(k) => {
                    Some(std::fs::read(k).with_context(|| format!("reading {}", k.display()))?)
                }
                None => None,
            };
            let ring = blockpost_client::backup::recover(&texts, newer.as_deref())?;
            let p = passphrase(true)?;
            write_keyring(&out, &ring, p.as_bytes(), true)?;
            render::keyring(&out, &ring, json)?;
            if !json {
                eprintln!(
                    "recovered from {} share(s); if the keyring was lost rather than forgotten, \
                     rotate now: `blockpost rotate --key {}`",
                    shares.len(),
                    out.display()
                );
            }
            Ok(())
        }
    }
}

async fn import(
    into: &Path,
    files: &[PathBuf],
    address: Option<String>,
    conn: &Conn,
) -> anyhow::Result<()> {
    let mut ids = Vec::with_capacity(files.len());
    for f in files {
        match read_keys(f)? {
            Keys::File(id) => ids.push((f, id)),
            Keys::Ring(_) => bail!("{} is a keyring; give key files to import", f.display()),
        }
    }
    let exists = into.exists();
    let mut ring = if exists {
        read_ring(into)?
    } else {
        let Some((_, first)) = ids.first() else {
            bail!("no key file given");
        };
        Keyring::new(first.clone(), now_ms())
    };
    let address = match (ring.address().map(str::to_owned), address) {
        (Some(h), Some(a)) if h != a => {
            bail!("{} is the keyring of {h}, not of {a}", into.display())
        }
        (Some(h), _) => h,
        (None, Some(a)) => a,
        (None, None) => crate::keys::address_for(files[0].as_path(), None, "--address")?
            .as_str()
            .to_owned(),
    };
    blockpost_core::Address::parse(&address)?;
    ring.set_address(&address)?;
    let mut added = 0;
    for (f, id) in &ids {
        let present = ring
            .generations()
            .iter()
            .any(|g| g.identity.signing_public() == id.signing_public());
        if !present {
            ring.push(id.clone(), now_ms());
            added += 1;
        } else if exists {
            eprintln!("{}: already in the keyring", f.display());
        }
    }
    let mut c = connect(conn).await?;
    label(&mut c, &mut ring).await?;
    let unbound: Vec<String> = ring
        .generations()
        .iter()
        .filter(|g| g.leaf_index.is_none())
        .filter_map(|g| {
            ids.iter()
                .find(|(_, id)| id.signing_public() == g.identity.signing_public())
                .map(|(f, _)| f.display().to_string())
        })
        .collect();
    if !unbound.is_empty() {
        bail!(
            "{} bound by no entry of {address}'s directory history: not imported (nothing \
             was written)",
            unbound.join(", ")
        );
    }
    ring.sort_by_binding();
    let p = passphrase(false)?;
    write_keyring(into, &ring, p.as_bytes(), !exists)?;
    eprintln!("{added} generation(s) imported");
    render::keyring(into, &ring, conn.json)
}
