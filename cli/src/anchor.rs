//! `blockpost anchor verify`: checks an OpenTimestamps proof the builder wrote, replaying
//! its operations from a block id through the ledger root and the Bitcoin transaction to
//! the Merkle root of a Bitcoin block header.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bitcoin::hashes::Hash as _;
use opentimestamps::attestation::Attestation;

use crate::say;

/// Anchor commands.
#[derive(clap::Subcommand)]
pub enum AnchorCmd {
    /// Check an anchor proof (`DATA/ledger/anchors/N.ots`): its operations replay from the
    /// block id to each attestation; a Bitcoin attestation must reach the Merkle root of
    /// the given Bitcoin block header, whose proof of work is checked too.
    Verify {
        /// The `.ots` file.
        proof: PathBuf,
        /// The Bitcoin block header (80 bytes, hex, as `bitcoin-cli getblockheader HASH
        /// false` prints it) of the block the proof names.
        #[arg(long)]
        bitcoin_header: Option<String>,
        /// The Blockpost block id (hex) the proof must start from.
        #[arg(long)]
        block_id: Option<String>,
        /// A ledger root (hex) the proof must pass through.
        #[arg(long)]
        ledger_root: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one anchor command.
pub fn run(cmd: AnchorCmd) -> anyhow::Result<()> {
    let AnchorCmd::Verify {
        proof,
        bitcoin_header,
        block_id,
        ledger_root,
        json,
    } = cmd;
    let bytes = std::fs::read(&proof).with_context(|| format!("reading {}", proof.display()))?;
    let r = blockpost_core::anchor::replay_proof(&bytes)
        .with_context(|| format!("{} is not a valid proof", proof.display()))?;
    if let Some(id) = &block_id
        && hex::decode(id).ok().as_deref() != Some(r.digest.as_slice())
    {
        bail!(
            "the proof is for block id {}, not {id}",
            hex::encode(r.digest)
        );
    }
    if let Some(root) = &ledger_root {
        let root = hex::decode(root).context("--ledger-root is not hex")?;
        if !r.path.contains(&root) {
            bail!(
                "the proof does not pass through ledger root {}",
                hex::encode(root)
            );
        }
    }
    let header = bitcoin_header
        .map(|h| -> anyhow::Result<bitcoin::block::Header> {
            let raw = hex::decode(h.trim()).context("--bitcoin-header is not hex")?;
            let header: bitcoin::block::Header = bitcoin::consensus::deserialize(&raw)
                .context("--bitcoin-header is not an 80-byte Bitcoin block header")?;
            header
                .validate_pow(header.target())
                .context("the Bitcoin block header's proof of work does not meet its target")?;
            Ok(header)
        })
        .transpose()?;
    let mut verified = None;
    let mut attestations = Vec::new();
    for (a, value) in &r.attestations {
        match a {
            Attestation::Bitcoin { height } => {
                attestations.push(serde_json::json!({"bitcoin_height": height, "merkle_root": hex::encode(value)}));
                if let Some(h) = &header
                    && h.merkle_root.to_byte_array().as_slice() == value.as_slice()
                {
                    verified = Some((*height, h.block_hash()));
                }
            }
            Attestation::Pending { uri } => {
                attestations.push(serde_json::json!({"pending": uri}));
            }
            Attestation::Unknown { tag, .. } => {
                attestations.push(serde_json::json!({"unknown": hex::encode(tag)}));
            }
        }
    }
    if header.is_some() && verified.is_none() {
        bail!("no Bitcoin attestation of the proof reaches that block header's Merkle root");
    }
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "block_id": hex::encode(r.digest),
                "attestations": attestations,
                "verified_bitcoin_block": verified.map(|(h, hash)| serde_json::json!({"height": h, "hash": hash.to_string()})),
            }))?
        );
        return Ok(());
    }
    say!("proof for block {}", hex::encode(r.digest));
    for a in &attestations {
        say!("  attestation {a}");
    }
    match verified {
        Some((height, hash)) => {
            say!("verified: the block id is committed in Bitcoin block {hash} (height {height})")
        }
        None => eprintln!(
            "(operations replayed; give --bitcoin-header to check a Bitcoin attestation against its block)"
        ),
    }
    Ok(())
}
