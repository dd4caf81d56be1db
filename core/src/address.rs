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

/// Checks a real (legal) name: 1 to 256 bytes of UTF-8 in Unicode NFC, with at least one
/// letter or digit, and none of what makes a name look like another or hide text (the
/// PRECIS FreeformClass and UTS #39 are the reference): control and format characters,
/// bidirectional controls, zero-width and other invisible characters, line and paragraph
/// separators, spaces other than U+0020, leading or trailing space. A client normalises a
/// name to NFC before it signs it ([`normalize_real_name`]).
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
    if let Some(why) = name.chars().find_map(refused_char) {
        return Err(Error::InvalidRealName(why));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(Error::InvalidRealName("leading or trailing space"));
    }
    if !name.chars().any(char::is_alphanumeric) {
        return Err(Error::InvalidRealName("no letter or digit"));
    }
    if !unicode_normalization::is_nfc(name) {
        return Err(Error::InvalidRealName(
            "not in Unicode NFC (normalise it before signing)",
        ));
    }
    Ok(())
}

/// `name` in Unicode NFC, the form [`check_real_name`] requires.
pub fn normalize_real_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    name.nfc().collect()
}

/// Why a character may not appear in a real name, if it may not.
fn refused_char(c: char) -> Option<&'static str> {
    let cp = u32::from(c);
    Some(match cp {
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069 => {
            "contains a bidirectional control character"
        }
        0x200B..=0x200D | 0x2060..=0x2064 | 0xFEFF | 0x180E => {
            "contains a zero-width or invisible character"
        }
        0x00AD
        | 0x034F
        | 0x115F
        | 0x1160
        | 0x17B4
        | 0x17B5
        | 0x3164
        | 0xFFA0
        | 0x206A..=0x206F
        | 0xFFF9..=0xFFFB
        | 0xE0000..=0xE007F
        | 0xFE00..=0xFE0F
        | 0xE0100..=0xE01EF
        | 0x1D173..=0x1D17A => "contains a zero-width or invisible character",
        0x2028 | 0x2029 | 0x0085 => "contains a line or paragraph separator",
        0xE000..=0xF8FF | 0xF0000..=0x10FFFF => "contains a private-use character",
        _ if c.is_whitespace() && c != ' ' => "contains a space other than U+0020",
        _ => return None,
    })
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
        for ok in [
            "Megacorp Bank AG",
            "Zürcher Kantonalbank",
            "Société Générale S.A.",
            "株式会社三菱UFJ銀行",
            "بنك مصر",
            "O'Brien & Sons, Ltd.",
        ] {
            assert!(check_real_name(ok).is_ok(), "{ok:?}");
        }
        let decomposed = "Zu\u{308}rcher Kantonalbank";
        for bad in [
            "",
            "  ",
            "a\nb",
            &"x".repeat(257),
            "Bank\u{202E}GA knaB",   // right-to-left override
            "Bank\u{2066}A\u{2069}", // isolate
            "Ba\u{200B}nk",          // zero-width space
            "Ba\u{200D}nk",          // zero-width joiner
            "\u{FEFF}Bank",          // byte order mark
            "Bank\u{2028}AG",        // line separator
            "Bank\u{2029}AG",        // paragraph separator
            "Bank\u{00A0}AG",        // no-break space
            "Bank\u{3000}AG",        // ideographic space
            "\u{3164}",              // hangul filler: looks like nothing
            "\u{115F}\u{1160}",
            "...", // no letter or digit
            " Bank AG",
            "Bank AG ",
            "Bank\u{E000}", // private use
            decomposed,     // not NFC
        ] {
            assert!(
                matches!(check_real_name(bad), Err(Error::InvalidRealName(_))),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(normalize_real_name(decomposed), "Zürcher Kantonalbank");
        assert!(check_real_name(&normalize_real_name(decomposed)).is_ok());
    }
}
