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
    /// Unverified registrations (no evidence) admitted per minute from one client address
    /// (an IPv4 address or an IPv6 /64; loopback has no limit of its own), after a burst of
    /// `unverified_per_peer_burst`. 0: no per-peer limit.
    pub unverified_per_peer_per_minute: u32,
    /// Unverified registrations one client address may make at once before
    /// `unverified_per_peer_per_minute` applies.
    pub unverified_per_peer_burst: u32,
    /// Unverified registrations admitted per second from all clients together, after a
    /// burst of `unverified_burst`. 0: no global limit.
    pub unverified_per_second: u32,
    /// Unverified registrations all clients together may make at once before
    /// `unverified_per_second` applies.
    pub unverified_burst: u32,
    /// Replicas of the JetStream streams this service makes (the node's `[nats] replicas`;
    /// not a setting of this table).
    #[serde(skip)]
    pub replicas: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            origin: None,
            trust_anchors: Vec::new(),
            require_verified: false,
            max_batch: 4096,
            max_clock_skew_ms: 10 * 60 * 1000,
            max_entries_bytes: crate::MAX_ENTRIES_BYTES,
            unverified_per_peer_per_minute: 60,
            unverified_per_peer_burst: 20,
            unverified_per_second: 100,
            unverified_burst: 1000,
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

    /// Checks for settings that mean nothing: a limited rate of registrations without a
    /// burst.
    pub fn validate(&self) -> Result<(), String> {
        for (rate, burst, name) in [
            (
                self.unverified_per_peer_per_minute,
                self.unverified_per_peer_burst,
                "unverified_per_peer",
            ),
            (
                self.unverified_per_second,
                self.unverified_burst,
                "unverified",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(format!(
                    "directory.{name}_burst must be at least 1 while its rate limits \
                     registrations (a rate of 0 turns the limit off)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_rate_needs_a_burst() {
        DirectoryConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let off = DirectoryConfig {
            unverified_per_peer_per_minute: 0,
            unverified_per_peer_burst: 0,
            unverified_per_second: 0,
            unverified_burst: 0,
            ..DirectoryConfig::default()
        };
        assert_eq!(off.validate(), Ok(()));
        let bad = DirectoryConfig {
            unverified_per_peer_burst: 0,
            ..DirectoryConfig::default()
        };
        assert!(matches!(bad.validate(), Err(m) if m.contains("unverified_per_peer_burst")));
        let bad = DirectoryConfig {
            unverified_burst: 0,
            ..DirectoryConfig::default()
        };
        assert!(matches!(bad.validate(), Err(m) if m.contains("directory.unverified_burst")));
    }
}
