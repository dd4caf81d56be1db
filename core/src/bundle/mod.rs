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
    EnvelopeContent, LedgerRecord, Receipt, SignedBlockHeader, ledger_record,
};
use sha2::{Digest as _, Sha256};

use crate::block::{Leaf, VerifiedHeader, classify_leaf, verify_header, verify_leaf_inclusion};
use crate::tlog_proof::TlogProof;
use crate::transaction::{Place, TxMessage, deadline_of};
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

mod checks;
mod format;

pub use format::*;

use crate::status_name;
use checks::{check_anchor, check_issued, check_one_closing};

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
        tx_messages.push((
            TxMessage::new(id, &c),
            Place {
                height,
                leaf_index,
                time_ms: h.header.time_ms,
            },
        ));
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
        if (w[0].1.height, w[0].1.leaf_index) >= (w[1].1.height, w[1].1.leaf_index) {
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
    let mut deadline_ms = None;
    if let Some(tx) = &index.transaction_id {
        let Some((first, opened)) = tx_messages.first() else {
            return fail("bundle.json", "transaction", "no message");
        };
        let deadline = deadline_of(first, opened.time_ms, keys.transaction_timeout_ms);
        deadline_ms = Some(deadline);
        match &index.closing {
            Some(base) => {
                let lp = format!("{base}.leaf");
                let (bytes, height, leaf_index, h) = leaf(base)?;
                let record: LedgerRecord = decode_canonical(&bytes, "ledger record")
                    .or_else(|e| fail(&lp, "closing", e))?;
                let Some(ledger_record::Record::Closing(c)) = record.record else {
                    return fail(&lp, "closing", "the leaf is not a closing record");
                };
                let at = Place {
                    height,
                    leaf_index,
                    time_ms: h.header.time_ms,
                };
                check_one_closing(&lp, tx, &c, at, &tx_messages, deadline)?;
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
                not_proved.push(
                    "how the transaction ends: it had no closing record when the bundle was made (it times out at its deadline unless every party finishes)"
                        .into(),
                );
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
        deadline_ms,
        receipts,
        anchors,
        not_proved,
    })
}
