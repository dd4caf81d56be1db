//! How an auditor is set up in code: where the node is, where its files go, what it
//! watches and opens, and its clock (a settings file, [`crate::AuditorFile`], fills it).

use std::path::PathBuf;
use std::sync::Arc;

use blockpost_client::ConnectOptions;

/// How the auditor reaches the node and where it keeps its files.
#[derive(Clone)]
pub struct AuditorConfig {
    /// The node's gRPC endpoint (keys, directory look-ups).
    pub node: String,
    /// How to verify the node's TLS certificate.
    pub connect: ConnectOptions,
    /// The auditor's data directory: pinned keys (`client/`) and `alerts.jsonl`.
    pub data: PathBuf,
    /// Time allowed past a receipt's deadline before a missing message is an omission.
    pub grace_ms: u64,
    /// Addresses and real names to raise an alert for on any new, rotated or revoked
    /// binding.
    pub watch: Vec<crate::Watch>,
    /// Also publish each alert (JSON) on this NATS connection and subject: the auditor's
    /// own server or account, since its read-only user on the node's server publishes
    /// nothing.
    pub publish: Option<(async_nats::Client, String)>,
    /// Participants whose keys the auditor holds (a regulator's, say): the encrypted
    /// bodies sealed for them are opened and indexed for search, and only those.
    pub open_for: Vec<OpenFor>,
    /// The witness's name in its cosignatures (default `blockpost-auditor/` and the first
    /// 8 hex digits of its key).
    pub witness_name: Option<String>,
    /// With [`AuditorConfig::publish`]: each cosigned checkpoint is also published there
    /// on `SUBJECT.directory` and `SUBJECT.ledger`.
    pub witness_subject: String,
    /// The time every check and alert reads (receipt deadlines, omissions, transaction
    /// deadlines, cosignature times): the system clock, or one a test controls.
    pub clock: Arc<dyn blockpost_core::Clock>,
}

impl std::fmt::Debug for AuditorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditorConfig")
            .field("node", &self.node)
            .field("data", &self.data)
            .field("grace_ms", &self.grace_ms)
            .field("watch", &self.watch)
            .field("open_for", &self.open_for)
            .field("witness_name", &self.witness_name)
            .field("witness_subject", &self.witness_subject)
            .finish_non_exhaustive()
    }
}

impl AuditorConfig {
    /// The defaults for a node at `node`, with files in `data`.
    pub fn new(node: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            connect: ConnectOptions::default(),
            data: data.into(),
            grace_ms: 1_000,
            watch: Vec::new(),
            publish: None,
            witness_name: None,
            witness_subject: "blockpost.witness".into(),
            open_for: Vec::new(),
            clock: Arc::new(blockpost_core::SystemClock),
        }
    }
}

/// A participant whose encrypted bodies the auditor opens: its address and keys.
#[derive(Clone)]
pub struct OpenFor {
    /// The participant's address.
    pub address: String,
    /// Its keys (only the x25519 one is used): those of a key file, or a keyring's
    /// current generation.
    pub keys: Arc<blockpost_core::Identity>,
    /// A keyring's generations by the leaf index of the directory entry that bound each:
    /// a body sealed to one of them opens with it (empty for a key file).
    pub generations: Arc<std::collections::HashMap<u64, blockpost_core::Identity>>,
}

impl std::fmt::Debug for OpenFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFor")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}
