//! The identifiers and values a trade or a settlement instruction carries, each checked by
//! its standard: ISIN (ISO 6166, Luhn over letters as numbers), LEI (ISO 17442, ISO 7064
//! MOD 97-10), currency (ISO 4217, by the `iso_currency` table), market (ISO 10383 MIC:
//! its shape; the registry is not bundled), calendar dates and positive decimals.

use std::fmt;
use std::str::FromStr as _;

use super::Problem;

/// Whether `s` is an ISIN: two letters (the country), nine letters or digits, and a check
/// digit by the Luhn formula over the letters read as numbers (A = 10 … Z = 35).
pub fn check_isin(s: &str) -> Result<(), Problem> {
    let b = s.as_bytes();
    let shaped = b.len() == 12
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..11]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && b[11].is_ascii_digit();
    if !shaped {
        return Err(Problem::Shape(
            "an ISIN is 2 capital letters, 9 capital letters or digits and a check digit",
        ));
    }
    // Letters become two digits; then Luhn from the right, the check digit included.
    let mut digits = Vec::with_capacity(24);
    for c in b {
        if c.is_ascii_digit() {
            digits.push(c - b'0');
        } else {
            let v = c - b'A' + 10;
            digits.push(v / 10);
            digits.push(v % 10);
        }
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    if !sum.is_multiple_of(10) {
        return Err(Problem::CheckDigit("ISIN"));
    }
    Ok(())
}

/// Whether `s` is an LEI: 18 capital letters or digits and two check digits, the whole
/// read as a number (A = 10 … Z = 35) leaving 1 modulo 97 (ISO 7064 MOD 97-10).
pub fn check_lei(s: &str) -> Result<(), Problem> {
    let b = s.as_bytes();
    let shaped = b.len() == 20
        && b[..18]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && b[18..].iter().all(u8::is_ascii_digit);
    if !shaped {
        return Err(Problem::Shape(
            "an LEI is 18 capital letters or digits and 2 check digits",
        ));
    }
    let mut rem: u32 = 0;
    for c in b {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    if rem != 1 {
        return Err(Problem::CheckDigit("LEI"));
    }
    Ok(())
}

/// Whether `s` is an active ISO 4217 alphabetic currency code.
pub fn check_currency(s: &str) -> Result<(), Problem> {
    iso_currency::Currency::from_str(s)
        .map(|_| ())
        .map_err(|_| Problem::UnknownCurrency(s.to_owned()))
}

/// Whether `s` is an ISO 10383 market identifier code in use: four capital letters or
/// digits, in the registry snapshot `regit-identifiers` carries
/// ([`MIC_REGISTRY_DATE`]) and not expired there.
pub fn check_mic(s: &str) -> Result<(), Problem> {
    use regit_identifiers::mic_registry::{MicStatus, lookup};
    let b = s.as_bytes();
    if !(b.len() == 4
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
    {
        return Err(Problem::Shape(
            "a market identifier code (ISO 10383) is 4 capital letters or digits",
        ));
    }
    match lookup(s) {
        Some(e) if e.status != MicStatus::Expired => Ok(()),
        Some(_) => Err(Problem::Value {
            expected: "a MIC in use (ISO 10383)",
            got: format!("{s}, expired in the registry of {MIC_REGISTRY_DATE}"),
        }),
        None => Err(Problem::Value {
            expected: "a registered MIC (ISO 10383)",
            got: format!("{s}, not in the registry of {MIC_REGISTRY_DATE}"),
        }),
    }
}

/// The date of the ISO 10383 registry snapshot MICs are checked against.
pub const MIC_REGISTRY_DATE: &str = regit_identifiers::mic_registry::SNAPSHOT_DATE;

/// A calendar date (proleptic Gregorian), as ISO 8601 `YYYY-MM-DD` or FIX `YYYYMMDD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, from 1.
    pub day: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD`.
    pub fn iso(s: &str) -> Result<Self, Problem> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(Problem::Shape("a date is YYYY-MM-DD"));
        }
        Self::parts(&s[..4], &s[5..7], &s[8..10]).ok_or(Problem::Shape("a date is YYYY-MM-DD"))
    }

    /// Parses FIX's LocalMktDate, `YYYYMMDD`.
    pub fn fix(s: &str) -> Result<Self, Problem> {
        if s.len() != 8 || !s.is_char_boundary(4) || !s.is_char_boundary(6) {
            return Err(Problem::Shape("a FIX date is YYYYMMDD"));
        }
        Self::parts(&s[..4], &s[4..6], &s[6..8]).ok_or(Problem::Shape("a FIX date is YYYYMMDD"))
    }

    fn parts(y: &str, m: &str, d: &str) -> Option<Self> {
        let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
        if !(all_digits(y) && all_digits(m) && all_digits(d)) {
            return None;
        }
        let (year, month, day): (u16, u8, u8) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
        let leap =
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (year >= 1 && (1..=days).contains(&day)).then_some(Self { year, month, day })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A non-negative decimal number as written (digits, at most one point), kept exactly as
/// an integer and a scale. `1.50` equals `1.5`.
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    units: u128,
    scale: u32,
}

/// Most significant digits a decimal may have (ISO 20022 allows 18; FIX prices fit).
const MAX_DIGITS: usize = 30;

impl Decimal {
    /// Parses `123`, `123.45` or `.5`; no sign, exponent or grouping. `max_fraction` bounds
    /// the digits after the point.
    pub fn parse(s: &str, max_fraction: u32) -> Result<Self, Problem> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = int.len() + frac.len();
        let ok = digits > 0
            && digits <= MAX_DIGITS
            && int.bytes().all(|c| c.is_ascii_digit())
            && frac.bytes().all(|c| c.is_ascii_digit())
            && !(s.contains('.') && frac.is_empty() && int.is_empty());
        if !ok {
            return Err(Problem::Shape("a number is digits with at most one point"));
        }
        let scale = u32::try_from(frac.len()).unwrap_or(u32::MAX);
        if scale > max_fraction {
            return Err(Problem::Fraction(max_fraction));
        }
        let mut units: u128 = 0;
        for c in int.bytes().chain(frac.bytes()) {
            units = units * 10 + u128::from(c - b'0');
        }
        Ok(Self { units, scale })
    }

    /// Parses and requires a value above zero.
    pub fn positive(s: &str, max_fraction: u32) -> Result<Self, Problem> {
        let d = Self::parse(s, max_fraction)?;
        if d.units == 0 {
            return Err(Problem::NotPositive);
        }
        Ok(d)
    }

    /// The product, exact; `None` if it would overflow.
    pub fn checked_mul(self, other: Self) -> Option<Self> {
        Some(Self {
            units: self.units.checked_mul(other.units)?,
            scale: self.scale.checked_add(other.scale)?,
        })
    }

    /// The sum, exact; `None` if it would overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        let scale = self.scale.max(other.scale);
        let lift = |d: Self| d.units.checked_mul(10u128.checked_pow(scale - d.scale)?);
        Some(Self {
            units: lift(self)?.checked_add(lift(other)?)?,
            scale,
        })
    }

    /// The nearest `f64` (for range search; the exact value is [`Decimal`]'s text).
    pub fn to_f64(self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let u = self.units as f64;
        u / 10f64.powi(i32::try_from(self.scale).unwrap_or(i32::MAX))
    }
}

impl fmt::Display for Decimal {
    /// Without trailing zeros after the point: `1234.50` shows as `1234.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.units.to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return f.write_str(&s);
        }
        let padded = format!("{s:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            f.write_str(int)
        } else {
            write!(f, "{int}.{frac}")
        }
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let scale = self.scale.max(other.scale);
        let lift = |d: &Self| {
            10u128
                .checked_pow(scale - d.scale)
                .and_then(|p| d.units.checked_mul(p))
        };
        Some(lift(self)?.cmp(&lift(other)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isin_check_digits() {
        for ok in [
            "US0378331005",
            "US5949181045",
            "GB0002634946",
            "DE0007164600",
        ] {
            assert_eq!(check_isin(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_isin("US0378331006"), Err(Problem::CheckDigit("ISIN")));
        assert!(matches!(check_isin("us0378331005"), Err(Problem::Shape(_))));
        assert!(matches!(check_isin("US037833100"), Err(Problem::Shape(_))));
    }

    #[test]
    fn lei_check_digits() {
        for ok in [
            "2594007XIACKNMUAW223",
            "969500KSV493XWY0PS33",
            "HWUPKR0MPOU8FGXBT394",
        ] {
            assert_eq!(check_lei(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_lei("2594007XIACKNMUAW222"),
            Err(Problem::CheckDigit("LEI"))
        );
        assert!(matches!(
            check_lei("2594007XIACKNMUAW2"),
            Err(Problem::Shape(_))
        ));
    }

    #[test]
    fn currencies_markets_dates() {
        assert_eq!(check_currency("USD"), Ok(()));
        assert_eq!(check_currency("EUR"), Ok(()));
        assert!(check_currency("XYZ").is_err());
        assert!(check_currency("usd").is_err());
        assert_eq!(check_mic("XNYS"), Ok(()));
        assert_eq!(check_mic("XNAS"), Ok(()));
        assert!(check_mic("XNY").is_err());
        // Well-shaped, but no market: and a retired one.
        assert!(matches!(check_mic("QQQQ"), Err(Problem::Value { .. })));
        assert!(matches!(check_mic("ALDP"), Err(Problem::Value { .. })));
        assert_eq!(Date::iso("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert!(Date::iso("2023-02-29").is_err());
        assert!(Date::iso("2026-13-01").is_err());
        assert_eq!(
            Date::fix("20261204").unwrap(),
            Date::iso("2026-12-04").unwrap()
        );
        assert!(Date::fix("2026124").is_err());
        assert!(Date::iso("2026-12-04").unwrap() < Date::iso("2026-12-08").unwrap());
    }

    #[test]
    fn decimals_are_exact() {
        let d = Decimal::parse("1234.50", 5).unwrap();
        assert_eq!(d.to_string(), "1234.5");
        assert_eq!(Decimal::parse("100", 5).unwrap().to_string(), "100");
        assert_eq!(Decimal::parse("0.05", 5).unwrap().to_string(), "0.05");
        assert_eq!(Decimal::positive("0.000", 5), Err(Problem::NotPositive));
        assert_eq!(Decimal::parse("1.123456", 5), Err(Problem::Fraction(5)));
        assert!(Decimal::parse("-1", 5).is_err());
        assert!(Decimal::parse("1e5", 5).is_err());
        assert!(Decimal::parse(".", 5).is_err());
        let p = Decimal::parse("189.25", 8)
            .unwrap()
            .checked_mul(Decimal::parse("400", 8).unwrap())
            .unwrap();
        assert_eq!(p.to_string(), "75700");
        let s = Decimal::parse("0.5", 5)
            .unwrap()
            .checked_add(Decimal::parse("99.75", 5).unwrap())
            .unwrap();
        assert_eq!(s.to_string(), "100.25");
        assert!(Decimal::parse("100.25", 5).unwrap() == s);
        assert!(Decimal::parse("2", 5).unwrap() > Decimal::parse("1.99", 5).unwrap());
    }
}
