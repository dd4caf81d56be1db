//! Evidence bundles: made from a node through the verifying clients, written and read as
//! one ZIP file. What is in one, and its check, are `blockpost_core::bundle`'s.
//!
//! The container is a ZIP file laid out as ETSI ASiC-E lays out its own: a `mimetype`
//! member first, stored (so `file` and unzip tools name it), the evidence as plain
//! members, and `META-INF/manifest.json` with the SHA-256 of every member. It is not an
//! ASiC signature container: its proofs are C2SP signed notes, tlog-proofs and
//! OpenTimestamps, which ASiC validators do not read. Members are stored, not compressed.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blockpost_core::bundle::{
    AnchorInfo, Index, Keys, LeafProof, MANIFEST, MIMETYPE, Members, manifest,
};
use blockpost_core::tlog_proof::TlogProof;
use blockpost_proto::v1::Receipt;
use prost::Message as _;

use crate::{Client, Error, Ledger, LedgerMessage, Result};

/// Most members a bundle read may hold.
pub const MAX_MEMBERS: usize = 100_000;
/// Most bytes a bundle read may hold, all members together.
pub const MAX_BYTES: u64 = 1 << 30;

/// DER as PEM (RFC 7468) with `label`, 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for c in b.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(c));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// A C2SP tlog-proof of leaf `index` with `path`, against `checkpoint`.
fn tlog_proof(index: u64, path: &[Vec<u8>], checkpoint: &[u8]) -> Result<TlogProof> {
    let hashes = path
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice()).map_err(|_| {
                Error::UnexpectedAnswer(format!("a proof hash of {} bytes, not 32", h.len()))
            })
        })
        .collect::<Result<_>>()?;
    Ok(TlogProof {
        extra: None,
        index,
        hashes,
        checkpoint: checkpoint.to_vec(),
    })
}

fn json(v: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::UnexpectedAnswer(format!("encoding a bundle member: {e}")))?;
    b.push(b'\n');
    Ok(b)
}

/// What to put in a bundle.
pub enum Subject<'a> {
    /// A transaction: every message and its closing record.
    Transaction(&'a str),
    /// One message.
    Message([u8; 32]),
}

/// Makes a bundle: fetches everything through the verifying clients (each part checked as
/// it arrives), lays it out, and checks the whole with `blockpost_core::bundle::verify`
/// against the keys the clients pinned before returning it. `receipts`: the gateway
/// receipts the holder kept for messages of the subject.
pub async fn export(
    directory: &mut Client,
    ledger: &mut Ledger,
    subject: Subject<'_>,
    receipts: &[Receipt],
    now_ms: i64,
) -> Result<Members> {
    let mut m = Members::new();
    let mut index = Index::default();
    let (messages, closing): (Vec<LedgerMessage>, Option<LedgerMessage>) = match subject {
        Subject::Transaction(id) => {
            let t = ledger.transaction(id).await?;
            index.transaction_id = Some(id.to_owned());
            (t.messages, t.closing.map(|(_, leaf)| leaf))
        }
        Subject::Message(id) => {
            index.message_id = Some(hex::encode(id));
            (vec![ledger.message(id).await?], None)
        }
    };
    // The blocks that hold them.
    let mut heights: BTreeSet<u64> = messages.iter().map(|x| x.header.header.height).collect();
    if let Some(c) = &closing {
        heights.insert(c.header.header.height);
    }
    let heights: Vec<u64> = heights.into_iter().collect();
    // One checkpoint for every proof; then, for each block, the anchor that covers it
    // within that checkpoint (a confirmed one first, the smallest), each tied to the
    // checkpoint by a consistency proof.
    let probe = ledger.proofs(&heights, &[]).await?;
    let size = probe.checkpoint.size;
    let anchors = ledger.anchors().await.unwrap_or_default();
    let mut chosen: Vec<blockpost_proto::v1::Anchor> = Vec::new();
    for h in &heights {
        let covered = |a: &blockpost_proto::v1::Anchor| a.ledger_size > *h;
        if chosen
            .iter()
            .any(|a| covered(a) && !a.bitcoin_header.is_empty())
        {
            continue;
        }
        let pick = anchors
            .iter()
            .filter(|a| covered(a) && a.ledger_size <= size && !a.ots.is_empty())
            .min_by_key(|a| (a.bitcoin_header.is_empty(), a.ledger_size));
        if let Some(a) = pick
            && !chosen.iter().any(|c| c.ledger_size == a.ledger_size)
        {
            chosen.push(a.clone());
        }
    }
    let from: Vec<u64> = chosen.iter().map(|a| a.ledger_size).collect();
    let proofs = if from.is_empty() {
        probe
    } else {
        ledger.proofs(&heights, &from).await?
    };
    m.insert("ledger/checkpoint".into(), proofs.checkpoint.note.clone());
    for ((h, header), path) in heights.iter().zip(&proofs.headers).zip(&proofs.inclusion) {
        let signed = blockpost_proto::v1::SignedBlockHeader {
            header: header.bytes.clone(),
            signature: header.signature.clone(),
        };
        m.insert(format!("ledger/blocks/{h}.header"), signed.encode_to_vec());
        let p = tlog_proof(*h, path, &proofs.checkpoint.note)?;
        m.insert(format!("ledger/blocks/{h}.tlog-proof"), p.to_bytes());
    }
    for (n, (a, consistency)) in chosen.iter().zip(&proofs.consistency).enumerate() {
        let base = format!("anchors/{n}");
        m.insert(format!("{base}/proof.ots"), a.ots.clone());
        if !a.bitcoin_header.is_empty() {
            m.insert(format!("{base}/bitcoin-header"), a.bitcoin_header.clone());
        }
        m.insert(
            format!("{base}/anchor.json"),
            json(&AnchorInfo {
                ledger_size: a.ledger_size,
                ledger_root: hex::encode(&a.ledger_root),
                reference: a.reference.clone(),
                time_ms: a.time_ms,
                consistency: consistency.iter().map(|h| B64.encode(h)).collect(),
            })?,
        );
    }
    // Leaves.
    let mut parties = BTreeSet::new();
    let put_leaf = |m: &mut Members, x: &LedgerMessage| -> Result<String> {
        let base = format!("ledger/leaves/{}.{}", x.header.header.height, x.leaf_index);
        m.insert(format!("{base}.leaf"), x.envelope_bytes.clone());
        m.insert(
            format!("{base}.proof"),
            json(&LeafProof {
                height: x.header.header.height,
                leaf_index: x.leaf_index,
                path: x.inclusion_proof.iter().map(|h| B64.encode(h)).collect(),
            })?,
        );
        Ok(base)
    };
    for x in &messages {
        index.messages.push(put_leaf(&mut m, x)?);
        if let Ok(c) = blockpost_core::decode_canonical::<blockpost_proto::v1::EnvelopeContent>(
            &x.envelope.content,
            "envelope content",
        ) {
            parties.insert(c.sender);
            parties.extend(c.recipients);
        }
    }
    if let Some(c) = &closing {
        index.closing = Some(put_leaf(&mut m, c)?);
    }
    m.insert("bundle.json".into(), json(&index)?);
    // Every party's directory history, proved in one checkpoint.
    let mut entries = Vec::new();
    let mut evidence = std::collections::BTreeMap::new();
    for p in &parties {
        for e in directory.lookup(p).await? {
            if let Some(body) = e.decoded.request.as_ref().and_then(|r| {
                blockpost_core::decode_canonical::<blockpost_proto::v1::RegisterBody>(
                    &r.body,
                    "register body",
                )
                .ok()
            }) && e.decoded.verified
            {
                evidence.insert(e.leaf_index, body.evidence_chain);
            }
            entries.push((e.leaf_index, e.entry, e.decoded.certificate));
        }
    }
    let indexes: Vec<u64> = entries.iter().map(|e| e.0).collect();
    let (dcp, dproofs) = directory.prove_entries(&indexes).await?;
    m.insert("directory/checkpoint".into(), dcp.note.clone());
    for ((i, entry, cert), path) in entries.iter().zip(dproofs) {
        dcp.verify_inclusion(*i, entry, &path)
            .map_err(|source| Error::BadProof { index: *i, source })?;
        m.insert(format!("directory/entries/{i}.entry"), entry.clone());
        let p = tlog_proof(*i, &path, &dcp.note)?;
        m.insert(format!("directory/entries/{i}.tlog-proof"), p.to_bytes());
        if !cert.is_empty() {
            m.insert(
                format!("directory/certificates/{i}.pem"),
                pem("CERTIFICATE", cert).into_bytes(),
            );
        }
        if let Some(chain) = evidence.get(i).filter(|c| !c.is_empty()) {
            let text: String = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
            m.insert(format!("directory/evidence/{i}.pem"), text.into_bytes());
        }
    }
    // Each block's directory state, tied to the directory checkpoint.
    for (h, header) in heights.iter().zip(&proofs.headers) {
        let size = header.header.directory_size;
        if size > dcp.size {
            continue;
        }
        let proof = directory.consistency_proof(size, dcp.size).await?;
        m.insert(
            format!("ledger/blocks/{h}.directory.json"),
            json(&blockpost_core::bundle::DirectoryTie {
                consistency: proof.iter().map(|x| B64.encode(x)).collect(),
            })?,
        );
    }
    m.insert(
        "directory/ca.pem".into(),
        directory.info().ca_certificate_pem.clone().into_bytes(),
    );
    // Receipts the holder kept, for messages of the subject.
    let ids: BTreeSet<[u8; 32]> = messages.iter().map(|x| x.message_id).collect();
    for r in receipts {
        let Ok(body) = blockpost_proto::v1::ReceiptBody::decode(r.body.as_slice()) else {
            continue;
        };
        if let Ok(id) = <[u8; 32]>::try_from(body.message_id.as_slice())
            && ids.contains(&id)
        {
            m.insert(
                format!("receipts/{}.receipt", hex::encode(id)),
                r.encode_to_vec(),
            );
        }
    }
    // Keys and rules.
    let gateway = blockpost_proto::v1::messaging_client::MessagingClient::new(directory.channel())
        .get_gateway_info(blockpost_proto::v1::GetGatewayInfoRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner);
    let info = ledger.info().clone();
    let keys = Keys {
        directory_origin: directory.info().origin.clone(),
        directory_key: directory.info().verifier_key.clone(),
        ledger_origin: info.origin.clone(),
        ledger_key: info.verifier_key.clone(),
        builder_key: hex::encode(&info.builder_key),
        gateway_keys: gateway
            .iter()
            .map(|g| hex::encode(&g.receipt_key))
            .collect(),
        witnesses: directory
            .witness_policy()
            .keys()
            .iter()
            .map(|k| k.vkey().to_owned())
            .collect(),
        transaction_timeout_ms: info.transaction_timeout_ms,
        firehose_partitions: info.firehose_partitions.max(1),
    };
    m.insert("keys.json".into(), json(&keys)?);
    m.insert("mimetype".into(), MIMETYPE.as_bytes().to_vec());
    let man = manifest(&m, now_ms);
    m.insert(MANIFEST.into(), json(&man)?);
    // The whole, checked against what the clients pinned, before anyone sees it.
    let trust = blockpost_core::bundle::Trust {
        directory_key: Some(keys.directory_key.clone()),
        ledger_key: Some(keys.ledger_key.clone()),
        builder_key: Some(keys.builder_key.clone()),
        ..Default::default()
    };
    blockpost_core::bundle::verify(&m, &trust)
        .map_err(|e| Error::UnexpectedAnswer(format!("the bundle made does not check: {e}")))?;
    Ok(m)
}

/// The bundle as one ZIP file: `mimetype` first, every member stored.
pub fn to_zip(m: &Members) -> Result<Vec<u8>> {
    let err =
        |e: &dyn std::fmt::Display| Error::UnexpectedAnswer(format!("writing the bundle: {e}"));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let order = std::iter::once("mimetype")
        .chain(m.keys().map(String::as_str).filter(|p| *p != "mimetype"));
    for path in order {
        let Some(bytes) = m.get(path) else { continue };
        w.start_file(path, opts).map_err(|e| err(&e))?;
        w.write_all(bytes).map_err(|e| err(&e))?;
    }
    Ok(w.finish().map_err(|e| err(&e))?.into_inner())
}

/// Reads a bundle's members from its ZIP file, within [`MAX_MEMBERS`] and [`MAX_BYTES`];
/// a member name that is not a plain relative path, or given twice, is refused.
pub fn from_zip(bytes: &[u8]) -> std::result::Result<Members, String> {
    let mut a = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a ZIP file: {e}"))?;
    if a.len() > MAX_MEMBERS {
        return Err(format!("{} members, at most {MAX_MEMBERS}", a.len()));
    }
    let mut m = Members::new();
    let mut total = 0u64;
    for i in 0..a.len() {
        let mut f = a.by_index(i).map_err(|e| format!("member {i}: {e}"))?;
        let name = f
            .name()
            .map_err(|e| format!("member {i}: its name: {e}"))?
            .into_owned();
        if f.enclosed_name().is_none() || name.starts_with('/') || name.contains('\\') {
            return Err(format!("member {name:?}: not a plain relative path"));
        }
        if f.is_dir() {
            continue;
        }
        total = total.saturating_add(f.size());
        if total > MAX_BYTES {
            return Err(format!("more than {MAX_BYTES} bytes in all"));
        }
        let mut b = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0).min(1 << 20));
        f.by_ref()
            .take(MAX_BYTES)
            .read_to_end(&mut b)
            .map_err(|e| format!("member {name}: {e}"))?;
        if m.insert(name.clone(), b).is_some() {
            return Err(format!("member {name} is in the file twice"));
        }
    }
    // The container is canonical: exactly the bytes `to_zip` writes for these members
    // (docs/evidence.md), so that no byte outside the members (a header, a name's second
    // copy, a timestamp) can change unnoticed either.
    if to_zip(&m).map_err(|e| e.to_string())? != bytes {
        return Err(
            "the ZIP is not in the canonical layout of its members: bytes outside the members \
             (headers, a name's local copy, timestamps, a comment) were changed"
                .into(),
        );
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A bundle exported from a node (a finished settlement, four messages, a receipt)
    /// reads and verifies against the keys of that node's `info --json`, and survives a
    /// round trip through the writer.
    #[test]
    fn the_fixture_verifies_and_round_trips() {
        let m = from_zip(include_bytes!("../benches/fixtures/settle-1.bpe")).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(include_str!("../benches/fixtures/settle-1.info.json")).unwrap();
        let trust = blockpost_core::bundle::Trust {
            directory_key: info["verifier_key"].as_str().map(str::to_owned),
            ledger_key: info["ledger"]["verifier_key"].as_str().map(str::to_owned),
            builder_key: info["ledger"]["builder_key"].as_str().map(str::to_owned),
            ..Default::default()
        };
        let r = blockpost_core::bundle::verify(&m, &trust).unwrap();
        assert_eq!(r.status.as_deref(), Some("finished"));
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.receipts.len(), 1);
        let zip = to_zip(&m).unwrap();
        assert!(
            zip[30..38] == *b"mimetype" && zip[38..38 + MIMETYPE.len()] == *MIMETYPE.as_bytes()
        );
        assert_eq!(from_zip(&zip).unwrap(), m);
        // The writer still writes the fixture byte for byte (a new `zip` release that
        // changed its layout would fail here, before any old bundle failed to verify).
        assert_eq!(zip, include_bytes!("../benches/fixtures/settle-1.bpe"));
        assert!(from_zip(b"not a zip").is_err());
    }
}
