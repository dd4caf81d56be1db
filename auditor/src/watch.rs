//! Watch lists: addresses and real names whose owners want an alert on any new, rotated or
//! revoked binding, as certspotter watches domain names.

use std::str::FromStr;

/// Which field of a binding a pattern is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchField {
    /// The routing address.
    Address,
    /// The real (legal) name.
    Name,
    /// Either.
    Any,
}

/// One watched pattern: `address:PATTERN`, `name:PATTERN`, or `PATTERN` (either field).
/// `*` matches any run of characters and `?` one character; matching ignores case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The field it is matched against.
    pub field: WatchField,
    /// The pattern, lower-cased.
    pattern: String,
    /// As given.
    text: String,
}

impl FromStr for Watch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (field, pattern) = match s.split_once(':') {
            Some(("address", p)) => (WatchField::Address, p),
            Some(("name", p)) => (WatchField::Name, p),
            _ => (WatchField::Any, s),
        };
        if pattern.trim().is_empty() {
            return Err(format!(
                "watch {s:?} has an empty pattern (address:PATTERN, name:PATTERN or PATTERN)"
            ));
        }
        Ok(Self {
            field,
            pattern: pattern.to_lowercase(),
            text: s.to_owned(),
        })
    }
}

impl std::fmt::Display for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Watch {
    /// Whether a binding of `address` with `real_name` matches.
    pub fn matches(&self, address: &str, real_name: &str) -> bool {
        let m = |v: &str| wildcard(&self.pattern, &v.to_lowercase());
        match self.field {
            WatchField::Address => m(address),
            WatchField::Name => m(real_name),
            WatchField::Any => m(address) || m(real_name),
        }
    }
}

/// `*` and `?` wildcard match of the whole text (linear time, with backtracking to the
/// last `*` only).
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns_match_addresses_and_names() {
        let w: Watch = "bank-*".parse().unwrap();
        assert!(w.matches("bank-a", "Anything"));
        assert!(w.matches("x", "BANK-Z AG"), "either field, any case");
        assert!(!w.matches("abank-a", "x"));
        let w: Watch = "name:* ag".parse().unwrap();
        assert!(w.matches("x", "Bank A AG"));
        assert!(!w.matches("ag", "Bank A Ltd"));
        let w: Watch = "address:b?nk-a".parse().unwrap();
        assert!(w.matches("bank-a", ""));
        assert!(!w.matches("bank-ab", ""));
        assert!(!w.matches("x", "bank-a"));
        let w: Watch = "address:*a*b*".parse().unwrap();
        assert!(w.matches("xxaxxbxx", ""));
        assert!(!w.matches("xxbxxaxx", ""));
        assert!("address:".parse::<Watch>().is_err());
        assert_eq!(
            "name:Bank A AG".parse::<Watch>().unwrap().to_string(),
            "name:Bank A AG"
        );
    }
}
