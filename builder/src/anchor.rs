//! Anchoring: every N blocks or T seconds the builder commits the newest ledger root
//! outside the system, records the anchor as a leaf of a later block, and writes an
//! OpenTimestamps proof for it (`blockpost_core::anchor` builds and replays them).
//!
//! On disk (`DATA/ledger/anchors/`):
//! - `anchors.jsonl`: one line per anchor, appended and synced before anything else
//!   happens (a torn last line is cut at open). Anchor `n` is the `n`-th line; the index
//!   counts the anchor records already in blocks, so lines beyond it are the records still
//!   to put in a block, also after a crash.
//! - `<n>.ots`: the proof for the newest block under anchor `n`'s root. The file sink's
//!   ends in a pending attestation (the anchor file); the Bitcoin sink's too, until the
//!   confirming block is known, then in a Bitcoin block-header attestation.
//!
//! Each Bitcoin anchor spends the change output of the one before (the first spends the
//! configured output), so the chain of anchors needs no other state than `anchors.jsonl`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blockpost_core::anchor::{
    bitcoin_merkle_ops, encode_proof, ledger_ops, proof, transaction_ops,
};
use blockpost_proto::v1::{AnchorRecord, LedgerRecord, ledger_record};
use opentimestamps::attestation::Attestation;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::config::{AnchorConfig, BitcoinConfig};
use crate::{Error, Result};

/// One anchor, as `anchors.jsonl` holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnchorLine {
    /// Its number (its line).
    pub n: u64,
    /// The ledger checkpoint anchored: size and root (hex).
    pub ledger_size: u64,
    /// The root, hex.
    pub ledger_root: String,
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// `file` or `bitcoin`.
    pub sink: String,
    /// Where: `anchors.jsonl#n`, or the Bitcoin txid.
    pub reference: String,
    /// The Bitcoin transaction (hex), for the Bitcoin sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_tx: Option<String>,
}

impl AnchorLine {
    /// The ledger leaf that records it.
    pub fn record(&self) -> Result<Vec<u8>> {
        let root = hex::decode(&self.ledger_root)
            .map_err(|e| Error::Corrupted(format!("anchor {}: root: {e}", self.n)))?;
        Ok(LedgerRecord {
            record: Some(ledger_record::Record::Anchor(AnchorRecord {
                ledger_size: self.ledger_size,
                ledger_root: root,
                sink: self.sink.clone(),
                reference: self.reference.clone(),
                time_ms: self.time_ms,
            })),
        }
        .encode_to_vec())
    }
}

/// The anchors of one builder.
pub(crate) struct Anchors {
    dir: PathBuf,
    config: AnchorConfig,
    lines: Mutex<Vec<AnchorLine>>,
    /// When the last anchor was made (by this run).
    last_at: Mutex<std::time::Instant>,
}

fn io(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!("anchors: {what}: {e}"))
}

/// Writes `bytes` to `path` atomically ([`blockpost_files::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    blockpost_files::write_atomic(path, bytes).map_err(|e| io("writing", e))
}

/// Syncs the directory holding `path`, so that a new file survives a crash.
fn sync_dir(path: &Path) -> Result<()> {
    blockpost_files::sync_parent(path).map_err(|e| io("syncing the directory", e))
}

impl Anchors {
    /// Opens `dir` (creating it), reading every anchor made so far.
    pub fn open(dir: &Path, config: AnchorConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory", e))?;
        let path = dir.join("anchors.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("reading anchors.jsonl", e)),
        };
        let mut lines = Vec::new();
        let mut good = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            let parsed: Option<AnchorLine> = l
                .strip_suffix('\n')
                .and_then(|l| serde_json::from_str(l).ok());
            match parsed {
                Some(a) if a.n == i as u64 => {
                    lines.push(a);
                    good += l.len();
                }
                _ if good + l.len() == text.len() => {
                    tracing::warn!("cutting a torn last line of anchors.jsonl");
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io("opening anchors.jsonl", e))?;
                    f.set_len(good as u64)
                        .map_err(|e| io("cutting anchors.jsonl", e))?;
                    f.sync_all().map_err(|e| io("syncing anchors.jsonl", e))?;
                    break;
                }
                _ => {
                    return Err(Error::Corrupted(format!(
                        "anchors.jsonl line {} is not anchor {i}; the file was left untouched",
                        i + 1
                    )));
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            lines: Mutex::new(lines),
            last_at: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Whether anchoring is on.
    pub fn enabled(&self) -> bool {
        self.config.sink != "off"
    }

    /// The ledger leaves of the anchors after the first `recorded` (those not in a block).
    pub fn records_after(&self, recorded: u64) -> Result<Vec<Vec<u8>>> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if (lines.len() as u64) < recorded {
            return Err(Error::Corrupted(format!(
                "the ledger records {recorded} anchors but anchors.jsonl holds {}: the anchor file lost lines",
                lines.len()
            )));
        }
        lines
            .iter()
            .skip(usize::try_from(recorded).unwrap_or(usize::MAX))
            .map(AnchorLine::record)
            .collect()
    }

    /// How many anchors were made.
    pub fn count(&self) -> u64 {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// The anchors made so far.
    pub fn lines(&self) -> Vec<AnchorLine> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Anchor `n`'s OpenTimestamps proof and, once confirmed, the Bitcoin block header
    /// it attests to (each empty when the file is missing).
    pub fn files(&self, n: u64) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |name: String| match std::fs::read(self.dir.join(&name)) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&format!("reading {name}"), e)),
        };
        Ok((
            read(format!("{n}.ots"))?,
            read(format!("{n}.bitcoin-header"))?,
        ))
    }

    /// Whether a ledger of `size` blocks is due for an anchor.
    pub fn due(&self, size: u64) -> bool {
        if !self.enabled() {
            return false;
        }
        let last = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map_or(0, |l| l.ledger_size);
        let since = self
            .last_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        size >= last.saturating_add(self.config.every_blocks)
            || (since.as_millis() >= u128::from(self.config.every_ms) && size > last + 1)
    }

    /// Anchors the ledger checkpoint (`size`, `root`) whose newest block has id `tip_id`,
    /// with `path` its inclusion proof in that tree: records the anchor, writes its proof
    /// (pending), and for Bitcoin signs and broadcasts the transaction.
    pub fn anchor(
        &self,
        size: u64,
        root: [u8; 32],
        tip_id: [u8; 32],
        path: &[[u8; 32]],
        now_ms: i64,
    ) -> Result<AnchorLine> {
        let n = self.count();
        let (reference, raw_tx, tx_bytes) = match self.config.sink.as_str() {
            "bitcoin" => {
                let last = self.lines().into_iter().rev().find_map(|l| l.raw_tx);
                let (txid, raw, legacy) =
                    bitcoin::build(last.as_deref(), &self.config.bitcoin, &root)?;
                (txid, Some(raw), Some(legacy))
            }
            _ => (format!("anchors.jsonl#{n}"), None, None),
        };
        let line = AnchorLine {
            n,
            ledger_size: size,
            ledger_root: hex::encode(root),
            time_ms: now_ms,
            sink: self.config.sink.clone(),
            reference,
            raw_tx,
        };
        // The anchor is made once its line is durable.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("anchors.jsonl"))
            .map_err(|e| io("opening anchors.jsonl", e))?;
        let mut text = serde_json::to_string(&line).map_err(|e| io("encoding", e))?;
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(|e| io("appending", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        if n == 0 {
            sync_dir(&self.dir.join("anchors.jsonl"))?;
        }
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        *self.last_at.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        let mut ops = ledger_ops(size - 1, size, path).map_err(|e| io("proof", e))?;
        let uri = match &tx_bytes {
            Some(tx) => {
                ops.extend(transaction_ops(tx, &root).map_err(|e| io("proof", e))?);
                format!("bitcoin:tx:{}", line.reference)
            }
            None => format!("blockpost:anchor-file:{n}"),
        };
        let p = proof(tip_id, ops, Attestation::Pending { uri });
        write_atomic(
            &self.dir.join(format!("{n}.ots")),
            &encode_proof(&p).map_err(|e| io("proof", e))?,
        )?;
        if let Some(raw) = &line.raw_tx {
            // A failed broadcast is retried while the anchor is unconfirmed.
            if let Err(e) = bitcoin::broadcast(&self.config.bitcoin, raw) {
                tracing::warn!(n, error = %e, "anchor transaction not broadcast yet");
            }
        }
        tracing::info!(n, size, sink = %line.sink, reference = %line.reference, "ledger anchored");
        Ok(line)
    }

    /// For each Bitcoin anchor whose proof is still pending: asks for its confirming
    /// block, and completes the proof with the path through it. Anchors still unconfirmed
    /// are broadcast again. `leaf_path(size)` gives the newest block's id and inclusion
    /// path in the ledger of `size` blocks.
    pub fn complete(
        &self,
        leaf_path: impl Fn(u64) -> Result<([u8; 32], Vec<[u8; 32]>)>,
    ) -> Result<usize> {
        let mut done = 0;
        for line in self.lines() {
            let Some(raw) = &line.raw_tx else { continue };
            let path = self.dir.join(format!("{}.ots", line.n));
            if confirmed(&path) {
                continue;
            }
            let Some(block) = bitcoin::confirming_block(&self.config.bitcoin, &line.reference)?
            else {
                let _ = bitcoin::broadcast(&self.config.bitcoin, raw);
                continue;
            };
            let (height, txids, index, legacy) = bitcoin::locate(&block, &line.reference)?;
            let root: [u8; 32] = hex::decode(&line.ledger_root)
                .ok()
                .and_then(|r| r.try_into().ok())
                .ok_or_else(|| io("anchor root", "not 32 bytes"))?;
            let (tip, ledger_path) = leaf_path(line.ledger_size)?;
            let mut ops = ledger_ops(line.ledger_size - 1, line.ledger_size, &ledger_path)
                .map_err(|e| io("proof", e))?;
            ops.extend(transaction_ops(&legacy, &root).map_err(|e| io("proof", e))?);
            ops.extend(bitcoin_merkle_ops(&txids, index).map_err(|e| io("proof", e))?);
            let height = usize::try_from(height).map_err(|e| io("height", e))?;
            // The header first: a confirmed proof always has its header beside it.
            write_atomic(
                &self.dir.join(format!("{}.bitcoin-header", line.n)),
                &bitcoin::header_bytes(&block),
            )?;
            let p = proof(tip, ops, Attestation::Bitcoin { height });
            write_atomic(&path, &encode_proof(&p).map_err(|e| io("proof", e))?)?;
            tracing::info!(n = line.n, height, txid = %line.reference, "anchor confirmed; its proof is complete");
            done += 1;
        }
        Ok(done)
    }
}

/// Whether the proof at `path` ends in a Bitcoin attestation.
fn confirmed(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| blockpost_core::anchor::replay_proof(&b).ok())
        .is_some_and(|r| {
            r.attestations
                .iter()
                .any(|(a, _)| matches!(a, Attestation::Bitcoin { .. }))
        })
}

/// The Bitcoin sink, with the `bitcoin` crate.
pub(crate) mod bitcoin {
    use std::str::FromStr as _;

    use bitcoin::consensus::encode::{deserialize_hex, serialize, serialize_hex};
    use bitcoin::hashes::Hash as _;
    use bitcoin::script::PushBytesBuf;
    use bitcoin::secp256k1::{Message, Secp256k1};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    use bitcoin::{
        Amount, Block, CompressedPublicKey, OutPoint, PrivateKey, ScriptBuf, Sequence, Transaction,
        TxIn, TxOut, Txid, Witness, absolute, transaction,
    };

    use super::{BitcoinConfig, io};
    use crate::Result;

    /// Smallest change output kept (the dust limit of a P2WPKH output).
    const DUST_SAT: u64 = 294;

    fn key(c: &BitcoinConfig) -> Result<PrivateKey> {
        let path = c
            .key_file
            .as_ref()
            .ok_or_else(|| io("bitcoin", "no key_file"))?;
        let wif = std::fs::read_to_string(path)
            .map_err(|e| io(&format!("reading {}", path.display()), e))?;
        PrivateKey::from_wif(wif.trim()).map_err(|e| io("the key file is not a WIF key", e))
    }

    /// The output to spend: the change of the `last` anchor transaction, or the
    /// configured one.
    fn utxo(last: Option<&str>, c: &BitcoinConfig) -> Result<(OutPoint, u64)> {
        if let Some(raw) = last {
            let tx: Transaction =
                deserialize_hex(raw).map_err(|e| io("the last anchor transaction", e))?;
            let change = tx
                .output
                .get(1)
                .ok_or_else(|| io("the last anchor transaction", "it has no change output"))?;
            return Ok((OutPoint::new(tx.compute_txid(), 1), change.value.to_sat()));
        }
        let outpoint = OutPoint::from_str(&c.utxo)
            .map_err(|e| io("builder.anchor.bitcoin.utxo is not txid:vout", e))?;
        Ok((outpoint, c.utxo_value_sat))
    }

    /// Builds and signs the anchor transaction for `root`, spending the change of the
    /// `last` one (raw, hex) or the configured output. Returns its txid, the raw transaction and its witness-free bytes.
    pub fn build(
        last: Option<&str>,
        c: &BitcoinConfig,
        root: &[u8; 32],
    ) -> Result<(String, String, Vec<u8>)> {
        let secp = Secp256k1::signing_only();
        let sk = key(c)?;
        let pk = CompressedPublicKey::from_private_key(&secp, &sk)
            .map_err(|e| io("the key is not compressed", e))?;
        let own = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
        let (outpoint, value) = utxo(last, c)?;
        let change = value
            .checked_sub(c.fee_sat)
            .filter(|v| *v >= DUST_SAT)
            .ok_or_else(|| {
                io(
                    "bitcoin",
                    format!("the output to spend holds {value} sat: not enough for a fee of {} and change", c.fee_sat),
                )
            })?;
        let data = PushBytesBuf::try_from(root.to_vec()).map_err(|e| io("OP_RETURN", e))?;
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![
                TxOut {
                    value: Amount::ZERO,
                    script_pubkey: ScriptBuf::new_op_return(data),
                },
                TxOut {
                    value: Amount::from_sat(change),
                    script_pubkey: own.clone(),
                },
            ],
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &own, Amount::from_sat(value), EcdsaSighashType::All)
            .map_err(|e| io("sighash", e))?;
        let msg = Message::from_digest(sighash.to_byte_array());
        let sig = bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&msg, &sk.inner),
            sighash_type: EcdsaSighashType::All,
        };
        tx.input[0].witness = Witness::p2wpkh(&sig, &pk.0);
        let txid = tx.compute_txid();
        let mut bare = tx.clone();
        bare.input[0].witness = Witness::new();
        let legacy = serialize(&bare);
        Ok((txid.to_string(), serialize_hex(&tx), legacy))
    }

    fn run(argv: &[String], last: &str) -> Result<std::process::Output> {
        let (cmd, args) = argv
            .split_first()
            .ok_or_else(|| io("bitcoin", "an empty command"))?;
        std::process::Command::new(cmd)
            .args(args)
            .arg(last)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| io(&format!("running {cmd}"), e))
    }

    /// Hands the raw transaction to the broadcast command.
    pub fn broadcast(c: &BitcoinConfig, raw: &str) -> Result<()> {
        let out = run(&c.broadcast_command, raw)?;
        if !out.status.success() {
            return Err(io(
                "broadcast command",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// The block that confirms `txid`, if the block command returns one.
    pub fn confirming_block(c: &BitcoinConfig, txid: &str) -> Result<Option<Block>> {
        let out = run(&c.block_command, txid)?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.trim().is_empty() {
            return Ok(None);
        }
        let block: Block = deserialize_hex(text.trim())
            .map_err(|e| io("the block command's output is not a raw block", e))?;
        Ok(Some(block))
    }

    /// The block's 80-byte header, as Bitcoin serializes it.
    pub fn header_bytes(block: &Block) -> Vec<u8> {
        serialize(&block.header)
    }

    /// Where `txid` is in `block`, checked: the block's height (BIP 34), its txids
    /// (internal byte order), the transaction's index and witness-free bytes.
    /// Where a transaction is in its block: height, txids, index, witness-free bytes.
    pub type Located = (u64, Vec<[u8; 32]>, usize, Vec<u8>);

    pub fn locate(block: &Block, txid: &str) -> Result<Located> {
        let want = Txid::from_str(txid).map_err(|e| io("txid", e))?;
        if !block.check_merkle_root() {
            return Err(io(
                "confirming block",
                "its Merkle root is not its transactions'",
            ));
        }
        if block.header.validate_pow(block.header.target()).is_err() {
            return Err(io(
                "confirming block",
                "its proof of work does not meet its target",
            ));
        }
        let height = block
            .bip34_block_height()
            .map_err(|e| io("confirming block height (BIP 34)", e))?;
        let txids: Vec<[u8; 32]> = block
            .txdata
            .iter()
            .map(|t| t.compute_txid().to_byte_array())
            .collect();
        let index = txids
            .iter()
            .position(|t| *t == want.to_byte_array())
            .ok_or_else(|| io("confirming block", format!("it does not hold {txid}")))?;
        let mut bare = block.txdata[index].clone();
        for i in &mut bare.input {
            i.witness = Witness::new();
        }
        Ok((height, txids, index, serialize(&bare)))
    }
}
