//! Rate limits for unverified registrations: a token bucket per peer and one for all peers.
//!
//! Every accepted registration without evidence appends a permanent log entry, so an open
//! directory caps how fast they come: per client address (an IPv4 address, or the /64 of
//! an IPv6 address, which is what one subscriber usually holds) and for all clients
//! together. A request is admitted only when both buckets hold a token, and only then is a
//! token taken from each; a refusal says how long until it would be admitted.
//!
//! Time is the directory's [`Clock`](blockpost_core::Clock), in milliseconds, handed in by
//! the caller: nothing here reads the wall clock. A clock that goes backwards refills
//! nothing until it moves forward again, and never stalls a bucket.
//!
//! Loopback peers (and calls made in process, with no peer) have no bucket of their own:
//! they are the operator's own tools, or a reverse proxy that speaks for many clients, and
//! the limit for all peers still applies to them. The per-peer map is bounded by
//! [`MAX_PEERS`]: when it is full, buckets that have filled up again (they say nothing a
//! new bucket would not) are dropped, at most once every [`SWEEP_EVERY_MS`]; a new peer
//! that still finds no room is held to the limit for all peers only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::DirectoryConfig;
use crate::{Error, Result};

/// Most peers with a bucket of their own.
pub const MAX_PEERS: usize = 65_536;
/// Least time between two sweeps of a full peer map.
pub const SWEEP_EVERY_MS: i64 = 1_000;

/// `per_period` tokens every `period_ms`, up to `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    per_period: u64,
    period_ms: u64,
    burst: u64,
}

impl Rate {
    /// `None` (no limit) when `per_period` is 0.
    fn new(per_period: u32, period_ms: u64, burst: u32) -> Option<Self> {
        (per_period > 0).then_some(Self {
            per_period: per_period.into(),
            period_ms,
            burst: u64::from(burst).max(1),
        })
    }

    // A bucket's level is kept in 1/period_ms of a token: it gains `per_period` units a
    // millisecond, and a token is `period_ms` units. Integers only, so nothing drifts.

    fn token(&self) -> u64 {
        self.period_ms
    }

    fn capacity(&self) -> u64 {
        self.burst.saturating_mul(self.period_ms)
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: u64,
    at_ms: i64,
}

impl Bucket {
    fn full(rate: &Rate, now_ms: i64) -> Self {
        Self {
            level: rate.capacity(),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: &Rate, now_ms: i64) {
        if now_ms > self.at_ms {
            let gained = now_ms.abs_diff(self.at_ms).saturating_mul(rate.per_period);
            self.level = self.level.saturating_add(gained).min(rate.capacity());
        }
        // Backwards: refill nothing, but count from here, so that the bucket refills as
        // soon as the clock moves forward again rather than once it is back where it was.
        self.at_ms = now_ms;
    }

    /// Milliseconds until the bucket holds a token (0: it holds one now).
    fn wait_ms(&self, rate: &Rate) -> u64 {
        rate.token()
            .saturating_sub(self.level)
            .div_ceil(rate.per_period)
    }

    fn take(&mut self, rate: &Rate) {
        self.level = self.level.saturating_sub(rate.token());
    }

    fn is_full(&self, rate: &Rate) -> bool {
        self.level >= rate.capacity()
    }
}

/// Whose bucket a peer draws from: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(u32),
    V6(u64),
}

impl PeerKey {
    /// `None` for peers without a bucket of their own (loopback).
    fn of(ip: IpAddr) -> Option<Self> {
        match ip.to_canonical() {
            IpAddr::V4(a) if a.is_loopback() => None,
            IpAddr::V6(a) if a.is_loopback() => None,
            IpAddr::V4(a) => Some(Self::V4(a.into())),
            IpAddr::V6(a) => Some(Self::V6((u128::from(a) >> 64) as u64)),
        }
    }
}

struct State {
    global: Option<Bucket>,
    peers: HashMap<PeerKey, Bucket>,
    swept_at_ms: Option<i64>,
}

/// The limits on unverified registrations of one directory.
pub(crate) struct RegistrationLimiter {
    per_peer: Option<Rate>,
    global: Option<Rate>,
    max_peers: usize,
    state: Mutex<State>,
}

impl RegistrationLimiter {
    /// The limits of `config` (`unverified_*`; a rate of 0 is no limit).
    pub(crate) fn new(config: &DirectoryConfig) -> Self {
        Self::with_max_peers(config, MAX_PEERS)
    }

    fn with_max_peers(config: &DirectoryConfig, max_peers: usize) -> Self {
        Self {
            per_peer: Rate::new(
                config.unverified_per_peer_per_minute,
                60_000,
                config.unverified_per_peer_burst,
            ),
            global: Rate::new(config.unverified_per_second, 1_000, config.unverified_burst),
            max_peers,
            state: Mutex::new(State {
                global: None,
                peers: HashMap::new(),
                swept_at_ms: None,
            }),
        }
    }

    /// Admits one unverified registration from `peer` (`None`: in process) at `now_ms`,
    /// taking a token from its bucket and from the one for all peers; or refuses it with
    /// [`Error::RateLimited`], taking nothing.
    pub(crate) fn admit(&self, peer: Option<IpAddr>, now_ms: i64) -> Result<()> {
        if self.per_peer.is_none() && self.global.is_none() {
            return Ok(());
        }
        // A poisoned lock only means a panic elsewhere mid-update: the buckets are still
        // plain numbers.
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = &mut *st;
        let global_wait = match &self.global {
            Some(rate) => {
                let b = st.global.get_or_insert_with(|| Bucket::full(rate, now_ms));
                b.refill(rate, now_ms);
                b.wait_ms(rate)
            }
            None => 0,
        };
        let key = self.per_peer.and(peer.and_then(PeerKey::of));
        let peer_wait = match (&self.per_peer, key) {
            (Some(rate), Some(k)) => st.peers.get_mut(&k).map_or(0, |b| {
                b.refill(rate, now_ms);
                b.wait_ms(rate)
            }),
            _ => 0,
        };
        if peer_wait > 0 || global_wait > 0 {
            let retry_after_ms = peer_wait.max(global_wait);
            return Err(if peer_wait >= global_wait {
                self.refusal(true, retry_after_ms)
            } else {
                self.refusal(false, retry_after_ms)
            });
        }
        if let (Some(rate), Some(b)) = (&self.global, st.global.as_mut()) {
            b.take(rate);
        }
        if let (Some(rate), Some(k)) = (&self.per_peer, key) {
            if let Some(b) = st.peers.get_mut(&k) {
                b.take(rate);
            } else if self.room(st, rate, now_ms) {
                let mut b = Bucket::full(rate, now_ms);
                b.take(rate);
                st.peers.insert(k, b);
            }
        }
        Ok(())
    }

    /// Whether the peer map has room for one more, after a sweep if one is due.
    fn room(&self, st: &mut State, rate: &Rate, now_ms: i64) -> bool {
        if st.peers.len() < self.max_peers {
            return true;
        }
        let due = st
            .swept_at_ms
            .is_none_or(|at| now_ms < at || now_ms.abs_diff(at) >= SWEEP_EVERY_MS.unsigned_abs());
        if due {
            st.swept_at_ms = Some(now_ms);
            st.peers.retain(|_, b| {
                b.refill(rate, now_ms);
                !b.is_full(rate)
            });
            tracing::debug!(
                peers = st.peers.len(),
                "swept the registration limits of peers"
            );
        }
        st.peers.len() < self.max_peers
    }

    fn refusal(&self, peer: bool, retry_after_ms: u64) -> Error {
        let (scope, limit, per) = if peer {
            (
                "this peer",
                self.per_peer.map_or(0, |r| r.per_period),
                "minute",
            )
        } else {
            (
                "all peers",
                self.global.map_or(0, |r| r.per_period),
                "second",
            )
        };
        Error::RateLimited {
            scope,
            limit,
            per,
            retry_after_ms,
        }
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .peers
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn config(per_min: u32, peer_burst: u32, per_sec: u32, burst: u32) -> DirectoryConfig {
        DirectoryConfig {
            unverified_per_peer_per_minute: per_min,
            unverified_per_peer_burst: peer_burst,
            unverified_per_second: per_sec,
            unverified_burst: burst,
            ..DirectoryConfig::for_test()
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// `(scope, retry_after_ms)` of a refusal.
    fn refused(r: Result<()>) -> (&'static str, u64) {
        match r {
            Err(Error::RateLimited {
                scope,
                retry_after_ms,
                ..
            }) => (scope, retry_after_ms),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn a_peer_gets_its_burst_then_one_every_period() {
        let l = RegistrationLimiter::new(&config(60, 3, 0, 0));
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            l.admit(a, T0).unwrap();
        }
        assert_eq!(refused(l.admit(a, T0)), ("this peer", 1_000));
        assert_eq!(refused(l.admit(a, T0 + 999)), ("this peer", 1));
        l.admit(a, T0 + 1_000).unwrap();
        assert_eq!(refused(l.admit(a, T0 + 1_000)), ("this peer", 1_000));
        // Other peers have their own buckets; in-process calls have none.
        for _ in 0..3 {
            l.admit(ip("203.0.113.8"), T0).unwrap();
        }
        for _ in 0..100 {
            l.admit(None, T0).unwrap();
        }
        // Refills up to the burst, not beyond.
        let later = T0 + 3_600_000;
        for _ in 0..3 {
            l.admit(a, later).unwrap();
        }
        assert_eq!(refused(l.admit(a, later)).0, "this peer");
    }

    #[test]
    fn the_retry_hint_rounds_up() {
        // 7 a minute: a token every 8571.43 ms.
        let l = RegistrationLimiter::new(&config(7, 1, 0, 0));
        let a = ip("198.51.100.1");
        l.admit(a, T0).unwrap();
        let (_, wait) = refused(l.admit(a, T0));
        assert_eq!(wait, 8_572);
        assert!(l.admit(a, T0 + 8_571).is_err());
        l.admit(a, T0 + 8_572).unwrap();
        let msg = refused_message(l.admit(a, T0 + 8_572));
        assert_eq!(
            msg,
            "unverified registrations from this peer are limited to 7 a minute; retry in 8.6 s, \
             or register with evidence of your real name"
        );
    }

    fn refused_message(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn the_global_bucket_covers_everyone_and_nothing_is_taken_on_refusal() {
        let l = RegistrationLimiter::new(&config(60, 2, 10, 4));
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        l.admit(a, T0).unwrap();
        l.admit(a, T0).unwrap();
        // a is out; its refusals take nothing from the global bucket.
        for _ in 0..10 {
            assert_eq!(refused(l.admit(a, T0)).0, "this peer");
        }
        l.admit(b, T0).unwrap();
        l.admit(None, T0).unwrap();
        // Global empty: c, which never registered, is refused, and gets no bucket.
        assert_eq!(refused(l.admit(c, T0)), ("all peers", 100));
        assert_eq!(l.peers(), 2);
        // b refused by the global bucket: b's own token stays.
        assert_eq!(refused(l.admit(b, T0)).0, "all peers");
        l.admit(b, T0 + 100).unwrap();
        // Both out: the longer wait is the one reported.
        assert_eq!(refused(l.admit(a, T0 + 100)), ("this peer", 900));
        let message = refused_message(l.admit(c, T0 + 100));
        assert!(message.contains("all peers are limited to 10 a second; retry in 0.1 s"));
    }

    #[test]
    fn zero_is_unlimited() {
        let l = RegistrationLimiter::new(&config(0, 0, 0, 0));
        for i in 0..10_000u32 {
            l.admit(Some(IpAddr::V4(Ipv4Addr::from(i))), T0).unwrap();
            l.admit(ip("203.0.113.1"), T0).unwrap();
        }
        assert_eq!(l.peers(), 0);
        // Only the global one limited.
        let l = RegistrationLimiter::new(&config(0, 0, 1, 2));
        l.admit(ip("203.0.113.1"), T0).unwrap();
        l.admit(ip("203.0.113.2"), T0).unwrap();
        assert_eq!(refused(l.admit(ip("203.0.113.3"), T0)).0, "all peers");
        assert_eq!(l.peers(), 0);
        // A burst of 0 with a rate is read as 1.
        let l = RegistrationLimiter::new(&config(1, 0, 0, 0));
        l.admit(ip("203.0.113.1"), T0).unwrap();
        assert_eq!(refused(l.admit(ip("203.0.113.1"), T0)).1, 60_000);
    }

    #[test]
    fn ipv6_peers_share_their_64_and_mapped_ipv4_is_ipv4() {
        let l = RegistrationLimiter::new(&config(60, 2, 0, 0));
        l.admit(ip("2001:db8:1:2::1"), T0).unwrap();
        l.admit(ip("2001:db8:1:2:ffff::9"), T0).unwrap();
        assert_eq!(refused(l.admit(ip("2001:db8:1:2::77"), T0)).0, "this peer");
        l.admit(ip("2001:db8:1:3::1"), T0).unwrap();
        l.admit(ip("192.0.2.9"), T0).unwrap();
        l.admit(ip("::ffff:192.0.2.9"), T0).unwrap();
        assert_eq!(refused(l.admit(ip("192.0.2.9"), T0)).0, "this peer");
    }

    #[test]
    fn loopback_has_no_bucket_of_its_own() {
        let l = RegistrationLimiter::new(&config(60, 1, 0, 0));
        for _ in 0..100 {
            l.admit(ip("127.0.0.1"), T0).unwrap();
            l.admit(ip("127.1.2.3"), T0).unwrap();
            l.admit(ip("::1"), T0).unwrap();
            l.admit(ip("::ffff:127.0.0.1"), T0).unwrap();
        }
        assert_eq!(l.peers(), 0);
        let l = RegistrationLimiter::new(&config(60, 1, 1, 1));
        l.admit(ip("127.0.0.1"), T0).unwrap();
        assert_eq!(refused(l.admit(ip("::1"), T0)).0, "all peers");
    }

    #[test]
    fn a_clock_going_backwards_neither_refills_nor_stalls() {
        let l = RegistrationLimiter::new(&config(60, 2, 10, 20));
        let a = ip("203.0.113.5");
        l.admit(a, T0).unwrap();
        l.admit(a, T0).unwrap();
        // An hour back: nothing refilled, no underflow in the hint.
        assert_eq!(refused(l.admit(a, T0 - 3_600_000)), ("this peer", 1_000));
        // Forward again from there: it refills at the usual pace, not an hour later.
        l.admit(a, T0 - 3_600_000 + 1_000).unwrap();
        assert!(l.admit(a, T0 - 3_600_000 + 1_000).is_err());
        // The extremes of the clock.
        for t in [i64::MIN, i64::MAX, 0, i64::MIN, T0] {
            let _ = l.admit(a, t);
            let _ = l.admit(None, t);
        }
        // A jump forward refills up to the burst only.
        let l = RegistrationLimiter::new(&config(60, 2, 0, 0));
        l.admit(a, i64::MIN).unwrap();
        l.admit(a, i64::MIN).unwrap();
        l.admit(a, i64::MAX).unwrap();
        l.admit(a, i64::MAX).unwrap();
        assert!(l.admit(a, i64::MAX).is_err());
    }

    #[test]
    fn the_peer_map_is_bounded() {
        let l = RegistrationLimiter::with_max_peers(&config(60, 2, 0, 0), 4);
        let peer = |i: u8| Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)));
        for i in 0..4 {
            l.admit(peer(i), T0).unwrap();
            l.admit(peer(i), T0).unwrap();
        }
        assert_eq!(l.peers(), 4);
        // Full, and no bucket is full again: new peers are held to the global limit only.
        for _ in 0..5 {
            l.admit(peer(9), T0 + 10).unwrap();
        }
        assert_eq!(l.peers(), 4);
        // The sweep runs at most once a SWEEP_EVERY_MS.
        assert!(l.admit(peer(0), T0 + 10).is_err());
        // Two seconds later, 0..2 have filled up again (two tokens at one a second) and
        // are swept; 3, which took one more at 1.5 s, is not full yet and stays.
        l.admit(peer(3), T0 + 1_500).unwrap();
        l.admit(peer(10), T0 + 2_000).unwrap();
        assert_eq!(l.peers(), 2, "only peer 3 and the newcomer keep a bucket");
        l.admit(peer(10), T0 + 2_000).unwrap();
        assert!(l.admit(peer(10), T0 + 2_000).is_err());
        // IPv6 /64s are keyed the same way.
        let v6 = |i: u16| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1)));
        for i in 0..10 {
            l.admit(v6(i), T0 + 2_000).unwrap();
        }
        assert!(l.peers() <= 4);
    }
}
