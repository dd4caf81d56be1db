//! Directory configuration: a serde struct read from TOML, checked once.

use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// Where the log, its checkpoint and the node's keys live.
    pub data_dir: PathBuf,
    /// The log's origin line; chosen at first start when unset, then kept in the data dir.
    pub origin: Option<String>,
    /// PEM files of trust anchors for evidence (bank consortium CA, company CA, ...).
    pub trust_anchors: Vec<PathBuf>,
    /// Refuse names without evidence.
    pub require_verified: bool,
    /// Most requests sequenced in one batch (one write and one fdatasync).
    pub max_batch: usize,
    /// Greatest accepted distance between a request's timestamp and the directory's clock.
    pub max_clock_skew_ms: i64,
    /// Publish entries and checkpoints to this JetStream stream.
    pub nats_stream: String,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("blockpost-data"),
            origin: None,
            trust_anchors: Vec::new(),
            require_verified: false,
            max_batch: 4096,
            max_clock_skew_ms: 10 * 60 * 1000,
            nats_stream: "BLOCKPOST_DIRECTORY".into(),
        }
    }
}

impl DirectoryConfig {
    /// A config for tests, on the given data directory.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            origin: Some("test.blockpost/directory".into()),
            ..Self::default()
        }
    }
}
