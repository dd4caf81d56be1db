//! `info`, `register`, `lookup`, `rotate`, `revoke`, `checkpoint`: the directory commands.

use std::path::PathBuf;

use anyhow::bail;
use blockpost_client::{Client, config_dir};
use blockpost_core::Address;

use crate::keys::{address_for, evidence_signer, read_chain, read_key, remember_address};
use crate::{Conn, render};

/// The directory commands.
#[derive(clap::Subcommand)]
pub enum DirectoryCmd {
    /// Print the node's public identity: log origin, log verifier key, CA certificate.
    Info {
        #[command(flatten)]
        conn: Conn,
    },
    /// Join the directory: bind an address and a real name to a key file's keys.
    Register {
        /// Key file (from `blockpost key new`).
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
    /// Replace a binding's keys with those of another key file.
    Rotate {
        /// Current key file.
        #[arg(long)]
        key: PathBuf,
        /// Key file with the new keys.
        #[arg(long)]
        new_key: PathBuf,
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
        /// Current key file.
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
            let c = connect(&conn).await?;
            render::info(c.endpoint(), c.info(), conn.json)
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
            let id = read_key(&key)?;
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
            // Remember the address beside the key file, for every later command.
            remember_address(&key, &address);
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
            let old = read_key(&key)?;
            let new = read_key(&new_key)?;
            let mut c = connect(&conn).await?;
            let e = c.rotate(&old, &new, address.as_str()).await?;
            remember_address(&new_key, &address);
            render::entry(&e, conn.json)
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
                (Some(k), _) => {
                    c.revoke(address.as_str(), &reason, Some(&read_key(&k)?), None)
                        .await?
                }
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
