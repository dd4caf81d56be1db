//! The views: one plain struct per page (and its parts). Each page's JSON twin is its
//! view serialized; its HTML is rendered from the same struct by `html`.

use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
pub struct CosignView {
    pub name: String,
    /// Verified with a witness key the explorer knows.
    pub verified: bool,
    /// The cosignature's time (Unix ms), when verified.
    pub time_ms: Option<i64>,
}

#[derive(Serialize)]
pub struct CheckpointView {
    pub origin: String,
    pub size: u64,
    pub root: String,
    pub note: String,
    pub cosignatures: Vec<CosignView>,
}

#[derive(Serialize)]
pub struct BlockRow {
    pub height: u64,
    pub id: String,
    pub time_ms: i64,
    pub leaf_count: u64,
}

#[derive(Serialize)]
pub struct AnchorView {
    pub ledger_size: u64,
    pub ledger_root: String,
    pub sink: String,
    pub reference: String,
    pub time_ms: i64,
    /// A Bitcoin anchor whose proof reached a block (the node's say: verify a bundle).
    pub confirmed: bool,
}

#[derive(Serialize)]
pub struct AuditorView {
    pub endpoint: String,
    /// Its status, or why it could not be read.
    pub status: Option<AuditStatusView>,
    pub away: Option<String>,
}

#[derive(Serialize)]
pub struct AuditStatusView {
    pub blocks_verified: u64,
    pub blocks_lag: u64,
    pub firehose_checked: u64,
    pub firehose_lag: u64,
    pub alerts: u64,
    pub stalled: bool,
    pub seconds_since_progress: u64,
    pub checked_until_ms: i64,
}

#[derive(Serialize)]
pub struct HomeView {
    pub directory: CheckpointView,
    pub ledger: CheckpointView,
    pub blocks: Vec<BlockRow>,
    pub anchors: Vec<AnchorView>,
    pub auditor: Option<AuditorView>,
    pub pins: Pins,
}

#[derive(Serialize)]
pub struct LeafView {
    pub index: u64,
    /// message, closing, anchor, delivery.
    pub kind: &'static str,
    pub message_id: Option<String>,
    pub transaction_id: Option<String>,
    /// For a message: its kind and parties; for a record: what it says.
    pub summary: String,
}

#[derive(Serialize)]
pub struct BlockView {
    pub height: u64,
    pub id: String,
    pub time_ms: i64,
    pub previous_hash: String,
    pub next_height: Option<u64>,
    pub merkle_root: String,
    pub leaf_count: u64,
    pub partitions: Vec<(u32, u64, u64)>,
    pub directory_size: u64,
    pub directory_root: String,
    pub builder_key_id: String,
    pub signature: String,
    pub ledger_size: u64,
    /// The first leaf listed (a page of at most 500).
    pub leaves_from: u64,
    /// Where the next page of leaves starts, if there is one.
    pub next_from: Option<u64>,
    pub leaves: Vec<LeafView>,
}

#[derive(Serialize)]
pub struct SettleView {
    pub format: String,
    pub reference: String,
    pub isin: String,
    pub quantity: String,
    pub amount: Option<String>,
    pub side: String,
    pub settlement_date: String,
    /// Why it could not be read (sealed, invalid).
    pub unread: Option<String>,
}

#[derive(Serialize)]
pub struct MessageView {
    pub message_id: String,
    pub transaction_id: String,
    pub kind: &'static str,
    pub sender: PartyView,
    pub recipients: Vec<PartyView>,
    pub time_ms: i64,
    pub content_type: String,
    /// The plaintext body (as text); `None` when sealed.
    pub body: Option<String>,
    /// Sealed end to end: for how many recipient keys.
    pub sealed_for: Option<usize>,
    pub height: u64,
    pub leaf_index: u64,
    pub block_id: String,
    pub ledger_size: u64,
    pub settlement: Option<SettleView>,
    pub delivery: Option<String>,
}

#[derive(Serialize)]
pub struct ClosingView {
    pub status: &'static str,
    pub time_ms: i64,
    pub height: u64,
    pub leaf_index: u64,
    pub finished_by: Vec<PartyView>,
    pub message_count: usize,
}

#[derive(Serialize)]
pub struct DeliveryView {
    pub height: u64,
    pub ledger: String,
    pub transaction: String,
    pub stage: String,
    pub reason: String,
    pub time_ms: i64,
}

#[derive(Serialize)]
pub struct TxView {
    pub transaction_id: String,
    pub status: &'static str,
    pub parties: Vec<PartyView>,
    pub finished_by: Vec<String>,
    pub opened_height: u64,
    pub deadline_ms: i64,
    pub messages: Vec<MessageView>,
    pub closing: Option<ClosingView>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Serialize)]
pub struct CertView {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub sha256: String,
}

#[derive(Serialize)]
pub struct EntryView {
    pub leaf_index: u64,
    pub kind: &'static str,
    pub address: String,
    pub real_name: String,
    pub verified: bool,
    pub lei: Option<String>,
    pub logged_at_ms: i64,
    pub signing_key: String,
    pub encryption_key: String,
    pub previous_index: Option<u64>,
    pub certificate: Option<CertView>,
    /// The evidence chain's certificates, leaf first (subject names).
    pub evidence: Vec<String>,
    /// The issuer of the evidence chain's last certificate: the trust anchor it chains to.
    pub trust_anchor: Option<String>,
    /// The size of the checkpoint its inclusion proof was verified in.
    pub proved_in: u64,
    /// That inclusion proof (RFC 6962 audit path, hex).
    pub inclusion_proof: Vec<String>,
    /// The checkpoint (signed note) it was verified against.
    pub checkpoint: String,
}

#[derive(Serialize)]
pub struct TxRow {
    pub transaction_id: String,
    pub messages: usize,
    pub last_time_ms: i64,
}

#[derive(Serialize)]
pub struct ParticipantView {
    pub address: String,
    pub real_name: String,
    pub verified: bool,
    pub revoked: bool,
    pub history: Vec<EntryView>,
    /// Its transactions, from the auditor's index (newest first); `None` without one.
    pub transactions: Option<Vec<TxRow>>,
    pub transactions_note: Option<String>,
}

#[derive(Serialize)]
pub struct DirectoryView {
    pub size: u64,
    pub root: String,
    pub from: u64,
    pub entries: Vec<EntryView>,
    pub previous_from: Option<u64>,
    pub next_from: Option<u64>,
    pub checkpoints: Vec<SeenCheckpoint>,
}

#[derive(Serialize)]
pub struct AlertView {
    pub index: u64,
    pub kind: String,
    pub subject: String,
    /// The explorer page of what it names, when it names one.
    pub link: Option<String>,
    pub time_ms: i64,
    pub detail: String,
    pub evidence: Value,
}

#[derive(Serialize)]
pub struct AlertsView {
    pub auditor: String,
    pub alerts: Vec<AlertView>,
}

#[derive(Serialize)]
pub struct HitView {
    pub message_id: String,
    pub height: u64,
    pub leaf_index: u64,
    pub time_ms: i64,
    pub transaction_id: String,
    pub kind: &'static str,
    pub sender: String,
    pub sender_name: String,
    pub recipients: Vec<String>,
    pub recipient_names: Vec<String>,
    pub encrypted: bool,
    /// `None`: verified like a node's answer; else why it did not verify.
    pub unverified: Option<String>,
}

#[derive(Serialize)]
pub struct SearchView {
    pub query: String,
    pub offset: u32,
    pub hits: Vec<HitView>,
    pub next_offset: Option<u32>,
}

/// Leaves listed on one page of a block.
pub const LEAVES_PAGE: usize = 500;
/// What the explorer pinned of the node, as the pages cite it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pins {
    /// The directory log's origin and verifier key.
    pub directory: String,
    /// The ledger's origin and verifier key.
    pub ledger: String,
    /// The builder's ed25519 key, hex.
    pub builder: String,
    /// Where the pins are kept.
    pub state_dir: String,
}

/// A party as the directory names it.
#[derive(Clone, Debug, Serialize)]
pub struct PartyView {
    pub address: String,
    /// The real name from the verified directory entry; `None` when it could not be read.
    pub name: Option<String>,
    /// Whether the name is backed by evidence to a trust anchor.
    pub verified: bool,
    pub revoked: bool,
}

/// A directory checkpoint seen by the explorer.
#[derive(Clone, Debug, Serialize)]
pub struct SeenCheckpoint {
    pub size: u64,
    pub root: String,
    /// When the explorer first verified it (Unix ms).
    pub first_seen_ms: i64,
}
