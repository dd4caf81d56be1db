//! Time as an input: every time-dependent rule takes a [`Clock`] or a time value, so that it
//! is unit-tested with a fixed clock, and time arithmetic never wraps.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::{Error, Result};

/// A source of wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that stands still until told otherwise, for tests.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    /// A clock showing `ms`.
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }

    /// Sets the time.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` (saturating).
    pub fn advance(&self, ms: i64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks that `ts_ms` is at most `skew_ms` away from `now_ms`, for any `i64` inputs.
pub fn check_clock(ts_ms: i64, now_ms: i64, skew_ms: u64) -> Result<()> {
    // abs_diff cannot overflow: the distance between two i64 always fits in a u64.
    if ts_ms.abs_diff(now_ms) > skew_ms {
        return Err(Error::ClockSkew {
            got_ms: ts_ms,
            now_ms,
            skew_ms,
        });
    }
    Ok(())
}

/// `at_ms + delay_ms`, saturating at `i64::MAX` instead of wrapping.
pub fn deadline_ms(at_ms: i64, delay_ms: u64) -> i64 {
    at_ms.saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_checked_without_wrapping() {
        let now = 1_700_000_000_000;
        assert!(check_clock(now, now, 0).is_ok());
        assert!(check_clock(now + 300_000, now, 300_000).is_ok());
        assert!(check_clock(now - 300_000, now, 300_000).is_ok());
        assert!(matches!(
            check_clock(now + 300_001, now, 300_000),
            Err(Error::ClockSkew { .. })
        ));
        assert!(check_clock(now - 300_001, now, 300_000).is_err());
        // The extremes: `now - 2^63` and friends must be refused, not wrap to a small skew.
        for ts in [i64::MIN, i64::MIN + 1, now.wrapping_sub(i64::MAX), i64::MAX] {
            assert!(check_clock(ts, now, 300_000).is_err(), "{ts}");
        }
        assert!(check_clock(i64::MIN, i64::MAX, u64::MAX).is_ok());
        assert!(check_clock(i64::MIN, i64::MAX, u64::MAX - 1).is_err());
    }

    #[test]
    fn deadlines_saturate() {
        assert_eq!(deadline_ms(1_000, 250), 1_250);
        assert_eq!(deadline_ms(i64::MAX - 1, 10), i64::MAX);
        assert_eq!(deadline_ms(0, u64::MAX), i64::MAX);
        assert_eq!(deadline_ms(i64::MIN, 1), i64::MIN + 1);
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let c = FixedClock::new(10);
        assert_eq!(c.now_ms(), 10);
        c.advance(5);
        assert_eq!(c.now_ms(), 15);
        c.set(i64::MAX);
        c.advance(1);
        assert_eq!(c.now_ms(), i64::MAX);
    }
}
