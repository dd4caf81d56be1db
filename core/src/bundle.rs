//! Evidence bundles: one file per transaction (or message) that proves who said what and
//! when, checked offline by anyone. This module is the whole check, on the bundle's
//! members (path → bytes); reading the ZIP container is the caller's. `docs/evidence.md`
//! describes the format and every check, in this order:
//!
//! 1. `mimetype` and `META-INF/manifest.json`: the media type, and the SHA-256 of every
//!    member (none missing, none extra).
//! 2. `keys.json` against the keys the verifier trusts (`--trust`), or taken from the
//!    bundle (and the report says so).
//! 3. The ledger checkpoint (`ledger/checkpoint`) and the directory checkpoint
//!    (`directory/checkpoint`): signatures, and the witnesses' cosignatures required.
//! 4. Each block header (`ledger/blocks/H.header`): the builder's signature, and its id's
//!    inclusion in the ledger checkpoint (`ledger/blocks/H.tlog-proof`, C2SP tlog-proof);
//!    the directory state it names a prefix of the directory checkpoint
//!    (`ledger/blocks/H.directory.json`).
//! 5. Each directory entry (`directory/entries/I.entry`): its inclusion in the directory
//!    checkpoint (`.tlog-proof`), each address's history as one authorised chain, its
//!    certificate (`directory/certificates/I.pem`) the entry's and signed by the CA, its
//!    evidence chain (`directory/evidence/I.pem`) the one its signed request carries.
//! 6. Each leaf (`ledger/leaves/H.L.leaf`): its inclusion in block H's root
//!    (`.proof`), and for a message its sender's signature with the key of the directory
//!    entry it names.
//! 7. The transaction: every message of it, in ledger order, and its closing record
//!    checked against them and the ledger's timeout.
//! 8. Receipts (`receipts/*.receipt`): the gateway's signature and the message they name.
//! 9. Anchors (`anchors/N/`): the OpenTimestamps proof through the anchored ledger root,
//!    that root's consistency with the ledger checkpoint, and the Bitcoin header's Merkle
//!    root and proof of work.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::{
    EnvelopeContent, LedgerRecord, Receipt, SignedBlockHeader, TransactionClosing,
    TransactionStatus, ledger_record,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::block::{Leaf, VerifiedHeader, classify_leaf, verify_header, verify_leaf_inclusion};
use crate::tlog_proof::TlogProof;
use crate::transaction::{TxMessage, check_closing, deadline_of};
use crate::{Binding, VerifiedCheckpoint, WitnessPolicy, decode_canonical, verify_checkpoint};

/// The `mimetype` member.
pub const MIMETYPE: &str = "application/vnd.blockpost.evidence+zip";
/// The format's name, in the manifest.
pub const FORMAT: &str = "blockpost-evidence/1";
/// The manifest's path.
pub const MANIFEST: &str = "META-INF/manifest.json";

/// What the check of a bundle found wrong: the member and the check.
#[derive(Debug, thiserror::Error)]
#[error("{member}: {check}: {why}")]
pub struct BundleError {
    /// The member (its path in the bundle), or `bundle`.
    pub member: String,
    /// The check that failed.
    pub check: &'static str,
    /// What is wrong.
    pub why: String,
}

fn fail<T>(member: &str, check: &'static str, why: impl std::fmt::Display) -> Result<T> {
    Err(BundleError {
        member: member.to_owned(),
        check,
        why: why.to_string(),
    })
}

type Result<T> = std::result::Result<T, BundleError>;

/// `META-INF/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// When the bundle was made (Unix ms; the exporter's word).
    pub created_ms: i64,
    /// Every other member but `mimetype`.
    pub members: Vec<MemberDigest>,
}

/// A member's digest in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDigest {
    /// Its path.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its length.
    pub size: u64,
}

/// `keys.json`: every public key the bundle's proofs use, labelled, and the ledger's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The directory log: origin and checkpoint verifier key (signed-note form).
    pub directory_origin: String,
    /// Its verifier key.
    pub directory_key: String,
    /// The ledger log: origin.
    pub ledger_origin: String,
    /// Its checkpoint verifier key.
    pub ledger_key: String,
    /// The builder's ed25519 key (block headers), hex.
    pub builder_key: String,
    /// The gateways' receipt keys, hex.
    pub gateway_keys: Vec<String>,
    /// Witness verifier keys (`name+id+base64`).
    pub witnesses: Vec<String>,
    /// The ledger's rule: a transaction times out this long after it opened.
    pub transaction_timeout_ms: u64,
    /// The ledger's rule: firehose partitions.
    pub firehose_partitions: u32,
}

/// `bundle.json`: what the bundle is about and where each part is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The transaction, for a transaction's bundle.
    pub transaction_id: Option<String>,
    /// The message, for one message's bundle (hex id).
    pub message_id: Option<String>,
    /// The message leaves (`ledger/leaves/H.L`, without extension), in ledger order.
    pub messages: Vec<String>,
    /// The closing record's leaf, once closed.
    pub closing: Option<String>,
}

/// A leaf's inclusion proof in its block (`ledger/leaves/H.L.proof`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafProof {
    /// The block.
    pub height: u64,
    /// The leaf's index in it.
    pub leaf_index: u64,
    /// The RFC 6962 audit path to the header's root, base64.
    pub path: Vec<String>,
}

/// `ledger/blocks/H.directory.json`: the directory state block H was checked against
/// (its header's `directory_size` and `directory_root`, signed by the builder) is a prefix
/// of the bundle's directory checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryTie {
    /// The RFC 6962 consistency proof from the header's directory size to the directory
    /// checkpoint's, base64.
    pub consistency: Vec<String>,
}

/// `anchors/N/anchor.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorInfo {
    /// The anchored ledger's size.
    pub ledger_size: u64,
    /// Its root, hex.
    pub ledger_root: String,
    /// The Bitcoin transaction id (or a file reference).
    pub reference: String,
    /// When the builder made it.
    pub time_ms: i64,
    /// The consistency proof from `ledger_size` to the bundle's ledger checkpoint, base64.
    pub consistency: Vec<String>,
}

/// The keys a verifier trusts (`--trust`): each given one must match the bundle's.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Directory checkpoint verifier key.
    pub directory_key: Option<String>,
    /// Ledger checkpoint verifier key.
    pub ledger_key: Option<String>,
    /// Builder key, hex.
    pub builder_key: Option<String>,
    /// Gateway receipt keys, hex.
    pub gateway_keys: Vec<String>,
    /// Witness keys; when given, they replace the bundle's.
    pub witnesses: Vec<String>,
    /// How many witnesses must have cosigned each checkpoint.
    pub min_witnesses: usize,
}

/// One key the check used, and where it came from.
#[derive(Clone, Debug, Serialize)]
pub struct KeyUse {
    /// What it verifies.
    pub label: &'static str,
    /// The key.
    pub key: String,
    /// `trusted` (given by the verifier and equal to the bundle's) or `bundle` (taken from
    /// the bundle itself).
    pub source: &'static str,
}

/// A party as the directory bound it when it signed.
#[derive(Clone, Debug, Serialize)]
pub struct Party {
    /// Address.
    pub address: String,
    /// Real name.
    pub real_name: String,
    /// Whether the name was backed by evidence chaining to a trust anchor.
    pub verified: bool,
    /// LEI, if declared.
    pub lei: Option<String>,
}

/// One message, checked.
#[derive(Clone, Debug, Serialize)]
pub struct MessageReport {
    /// Hex id.
    pub message_id: String,
    /// Where it is.
    pub height: u64,
    /// Its leaf.
    pub leaf_index: u64,
    /// The block's time.
    pub block_time_ms: i64,
    /// Who signed it.
    pub sender: Party,
    /// The directory entry whose key signed it.
    pub sender_key_index: u64,
    /// The recipients (names from the bundle's entries, when present).
    pub recipients: Vec<Party>,
    /// Its kind.
    pub kind: String,
    /// The sender's time.
    pub timestamp_ms: i64,
    /// The body, when it is plaintext UTF-8.
    pub text: Option<String>,
    /// Whether it is sealed end to end.
    pub sealed: bool,
    /// The signed content, for callers that open sealed bodies.
    #[serde(skip)]
    pub content: EnvelopeContent,
}

/// The closing record, checked.
#[derive(Clone, Debug, Serialize)]
pub struct ClosingReport {
    /// `finished` or `timed out`.
    pub status: String,
    /// Who sent `finish`.
    pub finished_by: Vec<String>,
    /// When (the block's time).
    pub time_ms: i64,
    /// Its block.
    pub height: u64,
}

/// A receipt, checked.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptReport {
    /// The message it is for.
    pub message_id: String,
    /// When the gateway accepted it.
    pub accepted_at_ms: i64,
    /// The block it promised by.
    pub block_deadline_ms: i64,
    /// Whether the message's block was cut by then.
    pub kept: bool,
}

/// An anchor, checked.
#[derive(Clone, Debug, Serialize)]
pub struct AnchorReport {
    /// The anchored ledger size (it covers blocks below it).
    pub ledger_size: u64,
    /// The Bitcoin transaction.
    pub reference: String,
    /// The Bitcoin block height attested, when confirmed.
    pub bitcoin_height: Option<u64>,
    /// The Bitcoin block's hash (display order), when its header is in the bundle.
    pub bitcoin_block: Option<String>,
    /// The Bitcoin block's time (Unix s), when its header is in the bundle.
    pub bitcoin_time: Option<u32>,
    /// What was and was not checked.
    pub status: String,
}

/// What a bundle proves.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The transaction, or the message.
    pub subject: String,
    /// Keys used and where each came from.
    pub keys: Vec<KeyUse>,
    /// The ledger checkpoint: size and who cosigned it.
    pub ledger_size: u64,
    /// Trusted witnesses that cosigned the ledger checkpoint.
    pub ledger_cosigners: Vec<String>,
    /// The directory checkpoint's size.
    pub directory_size: u64,
    /// Trusted witnesses that cosigned the directory checkpoint.
    pub directory_cosigners: Vec<String>,
    /// The messages, in ledger order.
    pub messages: Vec<MessageReport>,
    /// The closing record, if closed.
    pub closing: Option<ClosingReport>,
    /// The transaction's status: open, finished, timed out.
    pub status: Option<String>,
    /// Receipts.
    pub receipts: Vec<ReceiptReport>,
    /// Anchors.
    pub anchors: Vec<AnchorReport>,
    /// What the bundle does not prove.
    pub not_proved: Vec<String>,
}

/// A bundle's members, by path.
pub type Members = BTreeMap<String, Vec<u8>>;

fn member<'a>(m: &'a Members, path: &str) -> Result<&'a [u8]> {
    match m.get(path) {
        Some(b) => Ok(b),
        None => fail(path, "presence", "the member is missing"),
    }
}

fn json<T: serde::de::DeserializeOwned>(m: &Members, path: &str) -> Result<T> {
    serde_json::from_slice(member(m, path)?).or_else(|e| fail(path, "format", e))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The manifest for `members` (every one but `mimetype` and the manifest).
pub fn manifest(members: &Members, created_ms: i64) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        created_ms,
        members: members
            .iter()
            .filter(|(p, _)| p.as_str() != "mimetype" && p.as_str() != MANIFEST)
            .map(|(p, b)| MemberDigest {
                path: p.clone(),
                sha256: sha256_hex(b),
                size: b.len() as u64,
            })
            .collect(),
    }
}

fn key32(member: &str, hexkey: &str) -> Result<ed25519_dalek::VerifyingKey> {
    let b: [u8; 32] = hex::decode(hexkey)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map_or_else(
            || {
                fail(
                    member,
                    "keys",
                    format!("{hexkey:?} is not a 32-byte key in hex"),
                )
            },
            Ok,
        )?;
    ed25519_dalek::VerifyingKey::from_bytes(&b).or_else(|e| fail(member, "keys", e))
}

fn b64_hashes(member: &str, v: &[String]) -> Result<Vec<Vec<u8>>> {
    v.iter()
        .map(|h| {
            B64.decode(h)
                .or_else(|e| fail(member, "format", format!("a hash is not base64: {e}")))
        })
        .collect()
}

/// Checks a bundle offline, in the order the module documentation gives, and reports
/// what it proves.
pub fn verify(m: &Members, trust: &Trust) -> Result<Report> {
    // 1. Media type and manifest.
    if member(m, "mimetype")? != MIMETYPE.as_bytes() {
        return fail("mimetype", "media type", format!("not {MIMETYPE}"));
    }
    let man: Manifest = json(m, MANIFEST)?;
    if man.format != FORMAT {
        return fail(
            MANIFEST,
            "format",
            format!("{:?}, this verifier reads {FORMAT}", man.format),
        );
    }
    let listed: BTreeMap<&str, &MemberDigest> =
        man.members.iter().map(|d| (d.path.as_str(), d)).collect();
    for (path, bytes) in m {
        if path == "mimetype" || path == MANIFEST {
            continue;
        }
        let Some(d) = listed.get(path.as_str()) else {
            return fail(path, "manifest", "the member is not in the manifest");
        };
        if d.sha256 != sha256_hex(bytes) || d.size != bytes.len() as u64 {
            return fail(
                path,
                "SHA-256 in the manifest",
                "the member's bytes are not the ones the manifest lists",
            );
        }
    }
    for d in &man.members {
        if !m.contains_key(&d.path) {
            return fail(
                &d.path,
                "presence",
                "the manifest lists it, the bundle lacks it",
            );
        }
    }

    // 2. Keys.
    let keys: Keys = json(m, "keys.json")?;
    let mut uses = Vec::new();
    let mut pick = |label: &'static str, bundle: &str, trusted: Option<&String>| -> Result<()> {
        let source = match trusted {
            Some(t) if t != bundle => {
                return fail(
                    "keys.json",
                    "trusted keys",
                    format!("the {label} is {bundle}, but the key trusted is {t}"),
                );
            }
            Some(_) => "trusted",
            None => "bundle",
        };
        uses.push(KeyUse {
            label,
            key: bundle.to_owned(),
            source,
        });
        Ok(())
    };
    pick(
        "directory log key",
        &keys.directory_key,
        trust.directory_key.as_ref(),
    )?;
    pick(
        "ledger checkpoint key",
        &keys.ledger_key,
        trust.ledger_key.as_ref(),
    )?;
    pick("builder key", &keys.builder_key, trust.builder_key.as_ref())?;
    for g in &keys.gateway_keys {
        let trusted = (!trust.gateway_keys.is_empty()).then(|| {
            trust
                .gateway_keys
                .iter()
                .find(|t| *t == g)
                .cloned()
                .unwrap_or_else(|| format!("one of {}", trust.gateway_keys.join(", ")))
        });
        pick("gateway receipt key", g, trusted.as_ref())?;
    }
    let witnesses = if trust.witnesses.is_empty() {
        for w in &keys.witnesses {
            uses.push(KeyUse {
                label: "witness key",
                key: w.clone(),
                source: "bundle",
            });
        }
        keys.witnesses.clone()
    } else {
        for w in &trust.witnesses {
            uses.push(KeyUse {
                label: "witness key",
                key: w.clone(),
                source: "trusted",
            });
        }
        trust.witnesses.clone()
    };
    let policy = WitnessPolicy::new(&witnesses, trust.min_witnesses)
        .or_else(|e| fail("keys.json", "witness keys", e))?;
    let builder = key32("keys.json", &keys.builder_key)?;

    // 3. Checkpoints.
    let checkpoint = |path: &str, key: &str| -> Result<(VerifiedCheckpoint, Vec<String>)> {
        let note = member(m, path)?;
        let cp = verify_checkpoint(note, key)
            .or_else(|e| fail(path, "signature, by the key keys.json names", e))?;
        let cosigners = if trust.min_witnesses > 0 {
            policy
                .check(note)
                .or_else(|e| fail(path, "witness cosignatures", e))?
        } else {
            policy.cosigners(note)
        };
        Ok((cp, cosigners))
    };
    let (ledger, ledger_cosigners) = checkpoint("ledger/checkpoint", &keys.ledger_key)?;
    let (directory, directory_cosigners) = checkpoint("directory/checkpoint", &keys.directory_key)?;

    // 4. Block headers.
    let mut headers: BTreeMap<u64, VerifiedHeader> = BTreeMap::new();
    for (path, bytes) in m.range("ledger/blocks/".to_owned()..) {
        let Some(name) = path.strip_prefix("ledger/blocks/") else {
            break;
        };
        let Some(h) = name.strip_suffix(".header") else {
            continue;
        };
        let height: u64 = h
            .parse()
            .or_else(|_| fail(path, "name", "not ledger/blocks/HEIGHT.header"))?;
        let signed: SignedBlockHeader =
            decode_canonical(bytes, "signed block header").or_else(|e| fail(path, "format", e))?;
        let v = verify_header(&signed, &builder)
            .or_else(|e| fail(path, "builder signature, by the key keys.json names", e))?;
        if v.header.height != height {
            return fail(
                path,
                "height",
                format!("the header is of block {}", v.header.height),
            );
        }
        let pp = format!("ledger/blocks/{height}.tlog-proof");
        let p = TlogProof::parse(member(m, &pp)?).or_else(|e| fail(&pp, "format", e))?;
        if p.checkpoint != ledger.note {
            return fail(&pp, "checkpoint", "not the bundle's ledger checkpoint");
        }
        if p.index != height {
            return fail(
                &pp,
                "index",
                format!("proves leaf {}, not block {height}", p.index),
            );
        }
        ledger
            .verify_inclusion(height, &v.id, &p.hashes)
            .or_else(|e| fail(&pp, "inclusion in the ledger checkpoint", e))?;
        headers.insert(height, v);
    }

    // 4b. Each block's directory state is a prefix of the directory checkpoint.
    let mut untied = Vec::new();
    for (height, h) in &headers {
        let tp = format!("ledger/blocks/{height}.directory.json");
        if !m.contains_key(&tp) {
            untied.push(*height);
            continue;
        }
        let tie: DirectoryTie = json(m, &tp)?;
        let root: [u8; 32] = h.header.directory_root.as_slice().try_into().map_or_else(
            |_| {
                fail(
                    &tp,
                    "directory state",
                    "the header's directory root is not 32 bytes",
                )
            },
            Ok,
        )?;
        let old = VerifiedCheckpoint {
            origin: directory.origin.clone(),
            size: h.header.directory_size,
            root,
            note: Vec::new(),
        };
        let consistent = match old.size.cmp(&directory.size) {
            std::cmp::Ordering::Greater => fail(
                &tp,
                "directory state",
                "the block names a directory larger than the bundle's checkpoint",
            ),
            std::cmp::Ordering::Equal if old.root != directory.root => fail(
                &tp,
                "directory state",
                "same size as the checkpoint, another root",
            ),
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less if old.size == 0 => Ok(()),
            std::cmp::Ordering::Less => old
                .verify_consistency(&directory, &b64_hashes(&tp, &tie.consistency)?)
                .or_else(|e| fail(&tp, "directory state in the directory checkpoint", e)),
        };
        consistent?;
    }

    // 5. Directory entries and certificates.
    let ca_pem = member(m, "directory/ca.pem")?;
    let ca_der = match x509_parser::pem::parse_x509_pem(ca_pem) {
        Ok((_, p)) => p.contents,
        Err(e) => return fail("directory/ca.pem", "format", e),
    };
    let mut by_address: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (path, bytes) in m.range("directory/entries/".to_owned()..) {
        let Some(name) = path.strip_prefix("directory/entries/") else {
            break;
        };
        let Some(i) = name.strip_suffix(".entry") else {
            continue;
        };
        let index: u64 = i
            .parse()
            .or_else(|_| fail(path, "name", "not directory/entries/INDEX.entry"))?;
        let pp = format!("directory/entries/{index}.tlog-proof");
        let p = TlogProof::parse(member(m, &pp)?).or_else(|e| fail(&pp, "format", e))?;
        if p.checkpoint != directory.note || p.index != index {
            return fail(
                &pp,
                "checkpoint",
                "not the bundle's directory checkpoint, or another entry",
            );
        }
        directory
            .verify_inclusion(index, bytes, &p.hashes)
            .or_else(|e| {
                fail(
                    &format!("{path} + {pp}"),
                    "inclusion in the directory checkpoint",
                    e,
                )
            })?;
        let (entry, binding) = crate::decode_entry(bytes).or_else(|e| fail(path, "format", e))?;
        let cp = format!("directory/certificates/{index}.pem");
        if !entry.certificate.is_empty() {
            let pem = member(m, &cp)?;
            let der = match x509_parser::pem::parse_x509_pem(pem) {
                Ok((_, p)) => p.contents,
                Err(e) => return fail(&cp, "format", e),
            };
            if der != entry.certificate {
                return fail(&cp, "certificate", "not the certificate the entry holds");
            }
            check_issued(&der, &ca_der).or_else(|e| {
                fail(
                    &format!("{cp} + directory/ca.pem"),
                    "signed by the directory CA",
                    e,
                )
            })?;
        }
        let ep = format!("directory/evidence/{index}.pem");
        if let Some(pem) = m.get(&ep) {
            let body: blockpost_proto::v1::RegisterBody = entry
                .request
                .as_ref()
                .and_then(|r| decode_canonical(&r.body, "register body").ok())
                .map_or_else(
                    || fail(&ep, "evidence chain", "the entry is not a registration"),
                    Ok,
                )?;
            let mut chain = Vec::new();
            for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
                match p {
                    Ok(p) => chain.push(p.contents),
                    Err(e) => return fail(&ep, "format", e),
                }
            }
            if chain != body.evidence_chain {
                return fail(
                    &ep,
                    "evidence chain",
                    "not the chain the entry's signed request carries",
                );
            }
        }
        by_address
            .entry(binding.address.as_str().to_owned())
            .or_default()
            .push((index, bytes.clone()));
    }
    let mut bindings: BTreeMap<String, Vec<(u64, Binding)>> = BTreeMap::new();
    for (address, entries) in &by_address {
        let a =
            crate::Address::parse(address).or_else(|e| fail("directory/entries/", "address", e))?;
        let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        let history = crate::verify_history(&a, &refs).or_else(|e| {
            fail(
                &format!("directory/entries/{}.entry", entries[0].0),
                "history of its address",
                e,
            )
        })?;
        bindings.insert(
            address.clone(),
            entries.iter().map(|(i, _)| *i).zip(history).collect(),
        );
    }
    let party = |address: &str| -> Party {
        let b = bindings.get(address).and_then(|h| h.last()).map(|(_, b)| b);
        Party {
            address: address.to_owned(),
            real_name: b.map(|b| b.real_name.clone()).unwrap_or_default(),
            verified: b.is_some_and(|b| b.verified),
            lei: b.and_then(|b| b.lei.clone()),
        }
    };

    // 6. Leaves.
    let index: Index = json(m, "bundle.json")?;
    let leaf = |base: &str| -> Result<(Vec<u8>, u64, u64, &VerifiedHeader)> {
        let lp = format!("{base}.leaf");
        let pp = format!("{base}.proof");
        if !m.contains_key(&lp) {
            return fail(
                "bundle.json",
                "contents",
                format!("it lists {base}, which the bundle lacks"),
            );
        }
        let bytes = member(m, &lp)?;
        let p: LeafProof = json(m, &pp)?;
        let Some(h) = headers.get(&p.height) else {
            return fail(
                &pp,
                "block",
                format!("block {} is not in the bundle", p.height),
            );
        };
        let path = b64_hashes(&pp, &p.path)?;
        verify_leaf_inclusion(
            &h.header.merkle_root,
            h.header.leaf_count,
            p.leaf_index,
            bytes,
            &path,
        )
        .or_else(|e| fail(&format!("{lp} + {pp}"), "inclusion in its block", e))?;
        Ok((bytes.to_vec(), p.height, p.leaf_index, h))
    };
    let mut messages = Vec::new();
    let mut tx_messages = Vec::new();
    let mut not_proved = Vec::new();
    for base in &index.messages {
        let lp = format!("{base}.leaf");
        let (bytes, height, leaf_index, h) = leaf(base)?;
        let Ok(Leaf::Message(env)) = classify_leaf(&bytes) else {
            return fail(&lp, "message", "the leaf is not a message");
        };
        let c: EnvelopeContent = decode_canonical(&env.content, "envelope content")
            .or_else(|e| fail(&lp, "message", e))?;
        let signer = bindings
            .get(&c.sender)
            .and_then(|h| h.iter().find(|(i, _)| *i == c.sender_key_index))
            .map(|(_, b)| b);
        let Some(signer) = signer.filter(|b| !b.revoked()) else {
            return fail(
                &lp,
                "sender's key",
                format!(
                    "entry {} of {} is not in the bundle",
                    c.sender_key_index, c.sender
                ),
            );
        };
        let key =
            crate::ed25519_key(&signer.signing_key).or_else(|e| fail(&lp, "sender's key", e))?;
        crate::verify_envelope(&key, &env).or_else(|e| fail(&lp, "sender's signature", e))?;
        let id = crate::block::block_id(&bytes);
        let (text, sealed) = match &c.body {
            Some(Body::Plaintext(b)) => (String::from_utf8(b.clone()).ok(), false),
            Some(Body::Encrypted(_)) => (None, true),
            None => (None, false),
        };
        if let Some(t) = &index.transaction_id
            && c.transaction_id != *t
        {
            return fail(
                &lp,
                "transaction",
                format!("the message is of transaction {:?}", c.transaction_id),
            );
        }
        tx_messages.push((TxMessage::new(id, &c), height, leaf_index, h.header.time_ms));
        messages.push(MessageReport {
            message_id: hex::encode(id),
            height,
            leaf_index,
            block_time_ms: h.header.time_ms,
            sender: party(&c.sender),
            sender_key_index: c.sender_key_index,
            recipients: c.recipients.iter().map(|r| party(r)).collect(),
            kind: crate::kind_name(c.kind).to_owned(),
            timestamp_ms: c.timestamp_ms,
            text,
            sealed,
            content: c,
        });
    }
    for w in tx_messages.windows(2) {
        if (w[0].1, w[0].2) >= (w[1].1, w[1].2) {
            return fail(
                "bundle.json",
                "ledger order",
                "the messages are not listed in ledger order",
            );
        }
    }
    if let Some(id) = &index.message_id
        && messages.first().map(|r| &r.message_id) != Some(id)
    {
        return fail(
            "bundle.json",
            "subject",
            format!("message {id} is not the bundle's"),
        );
    }

    // 7. The transaction and its closing.
    let mut closing_report = None;
    let mut status = None;
    if let Some(tx) = &index.transaction_id {
        let Some((first, _, _, opened_ms)) = tx_messages.first() else {
            return fail("bundle.json", "transaction", "no message");
        };
        let deadline = deadline_of(first, *opened_ms, keys.transaction_timeout_ms);
        match &index.closing {
            Some(base) => {
                let lp = format!("{base}.leaf");
                let (bytes, height, leaf_index, h) = leaf(base)?;
                let record: LedgerRecord = decode_canonical(&bytes, "ledger record")
                    .or_else(|e| fail(&lp, "closing", e))?;
                let Some(ledger_record::Record::Closing(c)) = record.record else {
                    return fail(&lp, "closing", "the leaf is not a closing record");
                };
                check_one_closing(&lp, tx, &c, height, leaf_index, h, &tx_messages, deadline)?;
                closing_report = Some(ClosingReport {
                    status: status_name(c.status).into(),
                    finished_by: c.finished_by.clone(),
                    time_ms: c.time_ms,
                    height,
                });
                status = Some(status_name(c.status).to_owned());
            }
            None => {
                status = Some("open".into());
                not_proved.push(format!(
                    "the transaction had no closing record when the bundle was made; it times out at {deadline} ms unless every party finishes"
                ));
            }
        }
    }

    // 8. Receipts.
    let gateway_keys: Vec<ed25519_dalek::VerifyingKey> = keys
        .gateway_keys
        .iter()
        .map(|k| key32("keys.json", k))
        .collect::<Result<_>>()?;
    let mut receipts = Vec::new();
    for (path, bytes) in m.range("receipts/".to_owned()..) {
        if !path.starts_with("receipts/") {
            break;
        }
        let r: Receipt = decode_canonical(bytes, "receipt").or_else(|e| fail(path, "format", e))?;
        let body = gateway_keys
            .iter()
            .find_map(|k| crate::verify_receipt(k, &r).ok())
            .map_or_else(
                || {
                    fail(
                        path,
                        "gateway signature",
                        "no gateway key keys.json names signed it",
                    )
                },
                Ok,
            )?;
        let id = hex::encode(&body.message_id);
        let Some(msg) = messages.iter().find(|x| x.message_id == id) else {
            return fail(
                path,
                "message",
                format!("message {id} is not in the bundle"),
            );
        };
        receipts.push(ReceiptReport {
            message_id: id,
            accepted_at_ms: body.accepted_at_ms,
            block_deadline_ms: body.block_deadline_ms,
            kept: msg.block_time_ms <= body.block_deadline_ms,
        });
    }

    // 9. Anchors.
    let mut anchors = Vec::new();
    let mut anchor_dirs = BTreeSet::new();
    for path in m.keys() {
        if let Some(rest) = path.strip_prefix("anchors/")
            && let Some((n, _)) = rest.split_once('/')
        {
            anchor_dirs.insert(n.to_owned());
        }
    }
    for n in anchor_dirs {
        let base = format!("anchors/{n}");
        anchors.push(check_anchor(m, &base, &ledger)?);
    }
    let unanchored: Vec<String> = headers
        .keys()
        .filter(|h| {
            !anchors
                .iter()
                .any(|a| a.ledger_size > **h && a.bitcoin_block.is_some())
        })
        .map(u64::to_string)
        .collect();
    if !unanchored.is_empty() {
        not_proved.push(format!(
            "no confirmed Bitcoin anchor in the bundle covers block(s) {}: when they were cut rests on the builder's signature and the witnesses' cosignatures",
            unanchored.join(", ")
        ));
    }
    if messages.iter().any(|x| x.sealed) {
        not_proved.push("sealed bodies: the report shows who sent what to whom and when, not what a sealed body says (open them with a keyring)".into());
    }
    if !untied.is_empty() {
        not_proved.push(format!(
            "the directory state of block(s) {} is not tied to the bundle's directory checkpoint",
            untied
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if bindings.values().flatten().any(|(_, b)| b.verified) {
        not_proved.push("names marked verified: the directory checked their evidence chains (directory/evidence/) against its trust anchors when it logged them; the anchors are its configuration, not in the bundle".into());
    }
    if receipts.is_empty() {
        not_proved.push("no gateway receipt is in the bundle".into());
    }
    if uses.iter().any(|u| u.source == "bundle") {
        not_proved.push("keys taken from the bundle itself: the checks show the bundle is consistent with those keys, not that they are the operator's (give --trust with keys obtained independently)".into());
    }
    if trust.min_witnesses == 0 {
        not_proved.push("no witness cosignature was required (--min-witnesses)".into());
    }
    Ok(Report {
        subject: match (&index.transaction_id, &index.message_id) {
            (Some(t), _) => format!("transaction {t}"),
            (None, Some(id)) => format!("message {id}"),
            (None, None) => {
                return fail(
                    "bundle.json",
                    "subject",
                    "names no transaction and no message",
                );
            }
        },
        keys: uses,
        ledger_size: ledger.size,
        ledger_cosigners,
        directory_size: directory.size,
        directory_cosigners,
        messages,
        closing: closing_report,
        status,
        receipts,
        anchors,
        not_proved,
    })
}

fn status_name(s: i32) -> &'static str {
    match TransactionStatus::try_from(s) {
        Ok(TransactionStatus::Finished) => "finished",
        Ok(TransactionStatus::TimedOut) => "timed out",
        Ok(TransactionStatus::Open) => "open",
        _ => "unknown",
    }
}

#[allow(clippy::too_many_arguments)]
fn check_one_closing(
    lp: &str,
    tx: &str,
    c: &TransactionClosing,
    height: u64,
    leaf_index: u64,
    h: &VerifiedHeader,
    tx_messages: &[(TxMessage, u64, u64, i64)],
    deadline: i64,
) -> Result<()> {
    if c.transaction_id != tx {
        return fail(lp, "closing", format!("it closes {:?}", c.transaction_id));
    }
    if c.time_ms != h.header.time_ms {
        return fail(lp, "closing", "its time is not its block's");
    }
    let n = c.message_ids.len();
    if n > tx_messages.len() || tx_messages[..n].iter().any(|m| m.1 > height) {
        return fail(
            lp,
            "closing",
            "it names messages the bundle lacks, or after it",
        );
    }
    if c.status == TransactionStatus::Finished as i32 {
        let last = &tx_messages[n.saturating_sub(1)];
        if n == 0 || (last.1, last.2 + 1) != (height, leaf_index) {
            return fail(
                lp,
                "closing",
                "a finished closing record is not right after the last finish",
            );
        }
    }
    let msgs: Vec<TxMessage> = tx_messages[..n].iter().map(|m| m.0.clone()).collect();
    check_closing(c, &msgs, deadline).or_else(|e| fail(lp, "closing against its messages", e))
}

fn check_issued(cert: &[u8], ca: &[u8]) -> std::result::Result<(), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, c) =
        x509_parser::certificate::X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let (_, ca) =
        x509_parser::certificate::X509Certificate::from_der(ca).map_err(|e| e.to_string())?;
    if c.issuer() != ca.subject() {
        return Err("its issuer is not the CA".into());
    }
    c.verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("the CA's signature does not verify: {e}"))
}

fn check_anchor(m: &Members, base: &str, ledger: &VerifiedCheckpoint) -> Result<AnchorReport> {
    let ip = format!("{base}/anchor.json");
    let info: AnchorInfo = json(m, &ip)?;
    let op = format!("{base}/proof.ots");
    let replayed = crate::anchor::replay_proof(member(m, &op)?)
        .or_else(|e| fail(&op, "OpenTimestamps proof", e))?;
    let root: [u8; 32] = hex::decode(&info.ledger_root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .map_or_else(
            || fail(&ip, "format", "ledger_root is not 32 bytes in hex"),
            Ok,
        )?;
    if !replayed.path.iter().any(|v| v.as_slice() == root) {
        return fail(
            &op,
            "ledger root",
            "the proof does not pass through the anchored ledger root",
        );
    }
    let old = VerifiedCheckpoint {
        origin: ledger.origin.clone(),
        size: info.ledger_size,
        root,
        note: Vec::new(),
    };
    let proof = b64_hashes(&ip, &info.consistency)?;
    if info.ledger_size == 0 || info.ledger_size > ledger.size {
        return fail(
            &ip,
            "consistency with the ledger checkpoint",
            "the anchored size is beyond it",
        );
    }
    if info.ledger_size == ledger.size {
        if root != ledger.root {
            return fail(
                &ip,
                "consistency with the ledger checkpoint",
                "same size, another root",
            );
        }
    } else {
        old.verify_consistency(ledger, &proof)
            .or_else(|e| fail(&ip, "consistency with the ledger checkpoint", e))?;
    }
    let height = replayed.attestations.iter().find_map(|(a, v)| match a {
        opentimestamps::attestation::Attestation::Bitcoin { height } => {
            Some((*height as u64, v.clone()))
        }
        _ => None,
    });
    let hp = format!("{base}/bitcoin-header");
    let (block, time, status) = match (&height, m.get(&hp)) {
        (None, _) => (None, None, "pending: the proof has no Bitcoin attestation yet".to_owned()),
        (Some(_), None) => (
            None,
            None,
            "attested, but the Bitcoin block header is not in the bundle: check it against a Bitcoin node".to_owned(),
        ),
        (Some((_, root)), Some(header)) => {
            if header.len() != 80 {
                return fail(&hp, "format", format!("{} bytes, a header is 80", header.len()));
            }
            if header[36..68] != root[..] {
                return fail(&hp, "Merkle root", "the proof's Bitcoin attestation is not this header's Merkle root");
            }
            check_pow(header).or_else(|e| fail(&hp, "proof of work", e))?;
            let mut hash = crate::anchor::sha256d(header);
            hash.reverse();
            let t = u32::from_le_bytes([header[68], header[69], header[70], header[71]]);
            (
                Some(hex::encode(hash)),
                Some(t),
                "confirmed: the proof reaches the Merkle root of this Bitcoin block header, whose proof of work is valid".to_owned(),
            )
        }
    };
    Ok(AnchorReport {
        ledger_size: info.ledger_size,
        reference: info.reference,
        bitcoin_height: height.as_ref().map(|(h, _)| *h),
        bitcoin_block: block,
        bitcoin_time: time,
        status,
    })
}

#[cfg(feature = "bitcoin")]
fn check_pow(header: &[u8]) -> std::result::Result<(), String> {
    let h: bitcoin::block::Header =
        bitcoin::consensus::deserialize(header).map_err(|e| e.to_string())?;
    h.validate_pow(h.target())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "bitcoin"))]
fn check_pow(_: &[u8]) -> std::result::Result<(), String> {
    Err("this build cannot check proof of work (core's `bitcoin` feature)".into())
}
