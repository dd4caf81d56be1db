//! The bundle's JSON members, the keys a verifier trusts, and the report.

use blockpost_proto::v1::EnvelopeContent;
use serde::{Deserialize, Serialize};

/// `META-INF/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`super::FORMAT`].
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
    /// When the transaction times out unless every party finishes (Unix ms): its first
    /// message's block time plus the ledger's timeout, or the earlier deadline it asked for.
    pub deadline_ms: Option<i64>,
    /// Receipts.
    pub receipts: Vec<ReceiptReport>,
    /// Anchors.
    pub anchors: Vec<AnchorReport>,
    /// What the bundle does not prove.
    pub not_proved: Vec<String>,
}
