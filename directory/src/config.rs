//! Directory settings: the `[directory]` table of the node config.

use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the directory.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// The log's origin line; chosen at first start when unset, then kept in the data dir.
    pub origin: Option<String>,
    /// PEM files of trust anchors for evidence (bank consortium CA, company CA, ...).
    pub trust_anchors: Vec<PathBuf>,
    /// Refuse names without evidence.
    pub require_verified: bool,
    /// Most requests sequenced in one batch (one write and one fdatasync).
    pub max_batch: usize,
    /// Greatest accepted distance between a request's timestamp and the directory's clock.
    pub max_clock_skew_ms: u64,
    /// Most entry bytes one `GetEntries` answer carries (at least one entry is returned).
    pub max_entries_bytes: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            origin: None,
            trust_anchors: Vec::new(),
            require_verified: false,
            max_batch: 4096,
            max_clock_skew_ms: 10 * 60 * 1000,
            max_entries_bytes: crate::MAX_ENTRIES_BYTES,
        }
    }
}

impl DirectoryConfig {
    /// A config for tests: a fixed origin.
    pub fn for_test() -> Self {
        Self {
            origin: Some("test.blockpost/directory".into()),
            ..Self::default()
        }
    }
}
