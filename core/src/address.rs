//! Routing addresses, safe as one NATS subject token.

use std::fmt;

use crate::{Error, Result};

/// A routing address: `[a-z0-9][a-z0-9-]{0,62}`.
///
/// It can never hold `.`, `*`, `>` or whitespace, so it is always one NATS subject token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    /// Longest address, in bytes.
    pub const MAX_LEN: usize = 63;

    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why| Error::InvalidAddress {
            address: s.chars().take(80).collect(),
            why,
        };
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(bad("empty"));
        };
        if bytes.len() > Self::MAX_LEN {
            return Err(bad("longer than 63 characters"));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(bad("must start with a-z or 0-9"));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(bad("only a-z, 0-9 and '-' are allowed"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a real (legal) name: 1 to 256 bytes of UTF-8 without control characters.
pub fn check_real_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidRealName("empty"));
    }
    if name.len() > 256 {
        return Err(Error::InvalidRealName("longer than 256 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidRealName("contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_addresses() {
        for a in ["a", "0", "alice", "bank-of-x", "a-", &"z".repeat(63)] {
            assert_eq!(Address::parse(a).unwrap().as_str(), a);
        }
    }

    #[test]
    fn rejects_subject_characters_and_bad_shapes() {
        for a in [
            "",
            "-a",
            "Alice",
            "a.b",
            "a*",
            "a>",
            "a b",
            "a\tb",
            "é",
            &"z".repeat(64),
        ] {
            assert!(
                matches!(Address::parse(a), Err(Error::InvalidAddress { .. })),
                "{a:?}"
            );
        }
    }

    #[test]
    fn real_names() {
        assert!(check_real_name("Megacorp Bank AG").is_ok());
        assert!(check_real_name("Zürcher Kantonalbank").is_ok());
        assert!(check_real_name("  ").is_err());
        assert!(check_real_name("a\nb").is_err());
        assert!(check_real_name(&"x".repeat(257)).is_err());
    }
}
