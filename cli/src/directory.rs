//! `info`, `register`, `lookup`, `rotate`, `revoke`, `checkpoint`: the directory commands.

use std::path::PathBuf;

use anyhow::bail;
use blockpost_client::{Client, config_dir};
use blockpost_core::Address;

use blockpost_client::keyring::Status;

use crate::keyring::{label, save};
use crate::keys::{
    Keys, address_for, evidence_signer, read_chain, read_key, read_keys, remember_address,
};
use crate::{Conn, render};

/// The directory commands.
#[derive(clap::Subcommand)]
pub enum DirectoryCmd {
    /// Print every public key a verifier pins: the directory's log key and CA, the ledger's
    /// checkpoint and builder keys, the gateway's receipt key, the witnesses, and the
    /// ledger's rules.
    Info {
        #[command(flatten)]
        conn: Conn,
    },
    /// Join the directory: bind an address and a real name to a key file's keys.
    Register {
        /// Keyring or key file (from `blockpost key new`). A keyring is labelled with the
        /// entry; a key file gets a keyring beside it (same name, `.keyring`), which keeps
        /// every later generation.
        #[arg(long)]
        key: PathBuf,
        /// Routing address: `[a-z0-9][a-z0-9-]{0,62}`.
        #[arg(long)]
        address: String,
        /// Real (legal) name.
        #[arg(long)]
        name: String,
        /// ISO 17442 Legal Entity Identifier (20 characters), which trades and settlement
        /// instructions may name you by. Self-declared; its check digits are verified.
        #[arg(long)]
        lei: Option<String>,
        /// PEM file: evidence certificate chain, leaf first, leading to a trust anchor.
        #[arg(long, requires = "evidence_key")]
        evidence_chain: Option<PathBuf>,
        /// PEM file: PKCS#8 private key of the evidence certificate (ed25519 or P-256).
        #[arg(long, requires = "evidence_chain")]
        evidence_key: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an address's current binding and history, with verified proofs.
    Lookup {
        /// The address.
        address: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace a binding's keys. With a keyring, new keys are made in it (or taken from
    /// --new-key) and the old generation is kept to read what was sealed to it; with a key
    /// file, --new-key names the file with the new keys.
    Rotate {
        /// Keyring, or current key file.
        #[arg(long)]
        key: PathBuf,
        /// Key file with the new keys (required with a key file).
        #[arg(long)]
        new_key: Option<PathBuf>,
        /// The address (default: the one `register` recorded beside the key file).
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// End a binding, signed by its current key or by its evidence key.
    Revoke {
        /// The address (default: the one recorded beside --key).
        #[arg(long)]
        address: Option<String>,
        /// Keyring, or current key file (a keyring marks the generation revoked).
        #[arg(long, conflicts_with = "evidence_key")]
        key: Option<PathBuf>,
        /// PEM PKCS#8 private key of the evidence certificate.
        #[arg(long)]
        evidence_key: Option<PathBuf>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Fetch, verify and remember the newest checkpoint (checks consistency with the last one).
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
    },
}

async fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Ok(Client::connect_with(&conn.endpoint, &config_dir(), &conn.options()).await?)
}

/// Runs one directory command.
pub async fn run(cmd: DirectoryCmd) -> anyhow::Result<()> {
    match cmd {
        DirectoryCmd::Info { conn } => {
            let mut c = connect(&conn).await?;
            // Everything else a verifier pins, where this endpoint serves it: the ledger's
            // keys and rules, the gateway's receipt key, who cosigned the newest
            // checkpoints.
            let ledger = blockpost_client::Ledger::connect(&c, &config_dir())
                .await
                .ok();
            let gateway = blockpost_proto::v1::messaging_client::MessagingClient::new(c.channel())
                .get_gateway_info(blockpost_proto::v1::GetGatewayInfoRequest {})
                .await
                .ok()
                .map(tonic::Response::into_inner);
            let directory_cp = c.checkpoint().await?;
            let mut more = render::NodeKeys {
                ledger: ledger.as_ref().map(|l| l.info().clone()),
                gateway,
                directory_cosigners: blockpost_core::claimed_cosigners(&directory_cp.note),
                ledger_cosigners: Vec::new(),
                witnesses: conn.trust.witnesses.clone(),
            };
            if let Some(mut l) = ledger
                && let Ok(b) = l.block(None).await
            {
                more.ledger_cosigners = blockpost_core::claimed_cosigners(&b.checkpoint.note);
            }
            render::info(c.endpoint(), c.info(), &more, conn.json)
        }
        DirectoryCmd::Register {
            key,
            address,
            name,
            lei,
            evidence_chain,
            evidence_key,
            conn,
        } => {
            let address = Address::parse(&address)?;
            if let Some(l) = &lei {
                blockpost_core::settle::check_lei(l)
                    .map_err(|p| anyhow::anyhow!("--lei {l} {p}"))?;
            }
            let keys = read_keys(&key)?;
            if let Keys::Ring(ring) = &keys {
                ring.check_address(address.as_str())?;
                let status = |s| ring.generations().iter().any(|g| g.status == s);
                if ring.address().is_some() && status(Status::Revoked) && !status(Status::Current) {
                    bail!(
                        "{}'s binding is revoked, and a revoked address stays revoked: register \
                         a new address with a new keyring (`blockpost key new --out NEW.keyring`); \
                         {} keeps opening what was sealed to {}",
                        address,
                        key.display(),
                        address
                    );
                }
            }
            let id = keys.signing()?.clone();
            let mut c = connect(&conn).await?;
            let e = match (evidence_chain, evidence_key) {
                (Some(chain), Some(k)) => {
                    let chain = read_chain(&chain)?;
                    let signer = evidence_signer(&k)?;
                    c.register_with_lei(
                        &id,
                        address.as_str(),
                        &name,
                        lei.as_deref(),
                        Some((&chain, &signer)),
                    )
                    .await?
                }
                _ => {
                    c.register_with_lei(&id, address.as_str(), &name, lei.as_deref(), None)
                        .await?
                }
            };
            match keys {
                Keys::Ring(mut ring) => {
                    ring.set_address(address.as_str())?;
                    label(&mut c, &mut ring).await?;
                    save(&key, &ring)?;
                }
                Keys::File(id) => {
                    // Remember the address beside the key file, for every later command,
                    // and start the keyring that keeps every generation from now on.
                    remember_address(&key, &address);
                    let path = key.with_extension("keyring");
                    if !path.exists() {
                        let mut ring = blockpost_client::Keyring::new(id, blockpost_core::now_ms());
                        ring.set_address(address.as_str())?;
                        label(&mut c, &mut ring).await?;
                        let p = crate::keys::passphrase(false)?;
                        blockpost_client::write_keyring(&path, &ring, p.as_bytes(), true)?;
                        eprintln!(
                            "keyring {} started: use it as --key from now on (rotate adds \
                             generations to it, and it opens what was sealed to each)",
                            path.display()
                        );
                    }
                }
            }
            render::entry(&e, conn.json)
        }
        DirectoryCmd::Lookup { address, conn } => {
            let address = Address::parse(&address)?;
            let mut c = connect(&conn).await?;
            let history = c.lookup(address.as_str()).await?;
            render::history(&history, conn.json)
        }
        DirectoryCmd::Rotate {
            key,
            new_key,
            address,
            conn,
        } => {
            let address = address_for(&key, address, "--address")?;
            let mut c = connect(&conn).await?;
            match read_keys(&key)? {
                Keys::File(old) => {
                    let Some(new_key) = new_key else {
                        bail!(
                            "{} is a key file: give --new-key FILE with the new keys (or rotate \
                             a keyring, which makes them)",
                            key.display()
                        );
                    };
                    let new = read_key(&new_key)?;
                    let e = c.rotate(&old, &new, address.as_str()).await?;
                    remember_address(&new_key, &address);
                    // The keyring `register` started beside the key file keeps up.
                    let ring_path = key.with_extension("keyring");
                    if ring_path.exists()
                        && let Ok(Keys::Ring(mut ring)) = read_keys(&ring_path)
                        && ring.check_address(address.as_str()).is_ok()
                    {
                        ring.push(new, blockpost_core::now_ms());
                        label(&mut c, &mut ring).await?;
                        save(&ring_path, &ring)?;
                        eprintln!("{} keeps the new generation too", ring_path.display());
                    }
                    render::entry(&e, conn.json)
                }
                Keys::Ring(mut ring) => {
                    // A rotation cut short before: the directory may have bound its keys.
                    label(&mut c, &mut ring).await?;
                    let old = ring.signing()?.identity.clone();
                    let new = match (&new_key, ring.pending()) {
                        (Some(f), _) => {
                            let id = read_key(f)?;
                            ring.push(id.clone(), blockpost_core::now_ms());
                            id
                        }
                        (None, Some(p)) => p.identity.clone(),
                        (None, None) => {
                            let id = blockpost_core::Identity::generate();
                            ring.push(id.clone(), blockpost_core::now_ms());
                            id
                        }
                    };
                    // The new keys are on disk before the directory binds them.
                    save(&key, &ring)?;
                    let e = c.rotate(&old, &new, address.as_str()).await?;
                    label(&mut c, &mut ring).await?;
                    save(&key, &ring)?;
                    render::entry(&e, conn.json)?;
                    if !conn.json {
                        eprintln!(
                            "{} now holds {} generation(s); the earlier ones still open what was \
                             sealed to them (`blockpost key list --key {}`)",
                            key.display(),
                            ring.generations().len(),
                            key.display()
                        );
                    }
                    Ok(())
                }
            }
        }
        DirectoryCmd::Revoke {
            address,
            key,
            evidence_key,
            reason,
            conn,
        } => {
            let address = match (&key, address) {
                (Some(k), a) => address_for(k, a, "--address")?,
                (None, Some(a)) => Address::parse(&a)?,
                (None, None) => bail!("give --address with --evidence-key"),
            };
            let mut c = connect(&conn).await?;
            let e = match (key, evidence_key) {
                (Some(k), _) => match read_keys(&k)? {
                    Keys::File(id) => c.revoke(address.as_str(), &reason, Some(&id), None).await?,
                    Keys::Ring(mut ring) => {
                        let id = ring.signing()?.identity.clone();
                        let e = c.revoke(address.as_str(), &reason, Some(&id), None).await?;
                        label(&mut c, &mut ring).await?;
                        save(&k, &ring)?;
                        e
                    }
                },
                (None, Some(ek)) => {
                    let s = evidence_signer(&ek)?;
                    c.revoke(address.as_str(), &reason, None, Some(&s)).await?
                }
                (None, None) => bail!("give --key (the current key file) or --evidence-key"),
            };
            render::entry(&e, conn.json)
        }
        DirectoryCmd::Checkpoint { conn } => {
            let mut c = connect(&conn).await?;
            let cp = c.checkpoint().await?;
            let witnessed_by = c.witness_policy().cosigners(&cp.note);
            render::checkpoint(&cp, &witnessed_by, conn.json)
        }
    }
}
