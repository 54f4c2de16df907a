//! Brute-force protection.
//!
//! * **Per source**: authentication failures are counted per source in a fixed window; after
//!   `max_failures` the source is blocked for `block_for` (its requests are dropped without any
//!   response). A source is an IPv4 address or an IPv6 prefix ([`SourceKey`], /64 by default):
//!   a host picks any address of its /64, so counting IPv6 by address would hand an attacker
//!   2^64 fresh identities.
//! * **Global**: at most `max_failures_per_minute` failures in total per minute. Beyond that
//!   (a guess spread over many prefixes) credentials from sources that have not authenticated
//!   successfully within `known_for` are no longer checked at all: they get the same challenge
//!   a wrong password gets, so a guess cannot succeed however many prefixes the attacker owns,
//!   while phones that registered before keep working.
//!
//! Every table is a bounded LRU map, so a flood from many (possibly spoofed) sources costs
//! bounded memory; blocks live in their own table so a flood of single failures cannot evict
//! an active block.

use crate::lru::Lru;
use crate::Cidr;
use podpbx_sip::SourceKey;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct GuardConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub block_for: Duration,
    pub trusted: Vec<Cidr>,
    pub max_tracked: usize,
    pub max_blocked: usize,
    /// IPv6 sources are counted by this prefix length.
    pub ipv6_prefix: u8,
    /// Failures from all sources per minute beyond which unknown sources are not verified;
    /// 0: no global cap.
    pub max_failures_per_minute: u32,
    /// How long a successful authentication makes a source known.
    pub known_for: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Counted, nothing more.
    Once,
    /// This failure started a block of the source, after this many failures.
    Blocked(u32),
    /// Not counted (trusted source, or blocking disabled).
    Ignored,
}

const GLOBAL_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Guard {
    cfg: GuardConfig,
    failures: Lru<SourceKey, Failures>,
    blocked: Lru<SourceKey, Instant>,
    /// Sources with a recent successful authentication -> when.
    known: Lru<SourceKey, Instant>,
    global_start: Option<Instant>,
    global_count: u32,
    /// Set when the global cap was reached in the current window (reported once per window).
    cap_reported: bool,
}

impl Guard {
    pub(crate) fn new(cfg: GuardConfig) -> Self {
        Guard {
            failures: Lru::new(cfg.max_tracked),
            blocked: Lru::new(cfg.max_blocked),
            known: Lru::new(cfg.max_tracked),
            global_start: None,
            global_count: 0,
            cap_reported: false,
            cfg,
        }
    }

    /// The source `ip` is counted as.
    pub(crate) fn key(&self, ip: IpAddr) -> SourceKey {
        SourceKey::new(ip, self.cfg.ipv6_prefix)
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cfg.trusted.iter().any(|n| n.contains(ip))
    }

    /// True while `ip`'s source is blocked (trusted sources never are).
    pub(crate) fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.is_trusted(ip) {
            return false;
        }
        let key = self.key(ip);
        match self.blocked.get(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.blocked.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Counts one failure of `ip`'s source (and towards the global cap).
    pub(crate) fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Counted {
        if self.is_trusted(ip) {
            return Counted::Ignored;
        }
        self.count_global(now);
        if self.cfg.max_failures == 0 {
            return Counted::Ignored;
        }
        let key = self.key(ip);
        let window = self.cfg.window;
        let count = match self.failures.get_mut(&key) {
            Some(f) => {
                if now.saturating_duration_since(f.window_start) > window {
                    *f = Failures {
                        count: 1,
                        window_start: now,
                    };
                } else {
                    f.count = f.count.saturating_add(1);
                }
                f.count
            }
            None => {
                self.failures.insert(
                    key,
                    Failures {
                        count: 1,
                        window_start: now,
                    },
                );
                1
            }
        };
        if count >= self.cfg.max_failures {
            self.failures.remove(&key);
            self.blocked
                .insert(key, crate::later(now, self.cfg.block_for));
            Counted::Blocked(count)
        } else {
            Counted::Once
        }
    }

    fn roll_global(&mut self, now: Instant) {
        if self
            .global_start
            .is_none_or(|s| now.saturating_duration_since(s) >= GLOBAL_WINDOW)
        {
            self.global_start = Some(now);
            self.global_count = 0;
            self.cap_reported = false;
        }
    }

    fn count_global(&mut self, now: Instant) {
        self.roll_global(now);
        self.global_count = self.global_count.saturating_add(1);
    }

    /// True when the global cap is reached in the current minute and `ip`'s source has not
    /// authenticated successfully within `known_for`: its credentials must not be checked.
    pub(crate) fn over_global_cap(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.cfg.max_failures_per_minute == 0 || self.is_trusted(ip) {
            return false;
        }
        self.roll_global(now);
        if self.global_count < self.cfg.max_failures_per_minute {
            return false;
        }
        let key = self.key(ip);
        let known_for = self.cfg.known_for;
        self.known
            .get(&key)
            .is_none_or(|t| now.saturating_duration_since(*t) > known_for)
    }

    /// True once per minute when the global cap is first reached (for one log line).
    pub(crate) fn take_cap_report(&mut self) -> bool {
        let reached = self.cfg.max_failures_per_minute > 0
            && self.global_count >= self.cfg.max_failures_per_minute;
        if reached && !self.cap_reported {
            self.cap_reported = true;
            return true;
        }
        false
    }

    /// A successful authentication from `ip`: its source is known from now on.
    pub(crate) fn record_success(&mut self, ip: IpAddr, now: Instant) {
        let key = self.key(ip);
        self.known.insert(key, now);
    }

    /// Forgets finished windows, blocks and old successes.
    pub(crate) fn purge(&mut self, now: Instant) {
        let window = self.cfg.window;
        self.failures
            .retain(|_, f| now.saturating_duration_since(f.window_start) <= window);
        self.blocked.retain(|_, until| *until > now);
        let known_for = self.cfg.known_for;
        self.known
            .retain(|_, t| now.saturating_duration_since(*t) <= known_for);
    }

    pub(crate) fn tracked(&self) -> usize {
        self.failures.len()
    }

    pub(crate) fn blocked(&self) -> usize {
        self.blocked.len()
    }

    pub(crate) fn block_for(&self) -> Duration {
        self.cfg.block_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_failures: u32, per_minute: u32) -> Guard {
        Guard::new(GuardConfig {
            max_failures,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(300),
            trusted: vec!["198.51.100.0/24".parse().unwrap()],
            max_tracked: 100,
            max_blocked: 100,
            ipv6_prefix: 64,
            max_failures_per_minute: per_minute,
            known_for: Duration::from_secs(3600),
        })
    }

    #[test]
    fn ipv6_counted_by_prefix_ipv4_by_address() {
        let mut g = guard(3, 0);
        let t = Instant::now();
        let ip = |i: u16| -> IpAddr { format!("2001:db8:1:2::{i:x}").parse().unwrap() };
        assert_eq!(g.record_failure(ip(1), t), Counted::Once);
        assert_eq!(g.record_failure(ip(2), t), Counted::Once);
        assert_eq!(g.record_failure(ip(3), t), Counted::Blocked(3));
        assert!(g.is_blocked(ip(999), t), "the whole /64 is blocked");
        assert!(!g.is_blocked("2001:db8:1:3::1".parse().unwrap(), t));
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for i in 1..=3 {
            assert_eq!(
                g.record_failure(v4(&format!("203.0.113.{i}")), t),
                Counted::Once
            );
        }
        assert!(!g.is_blocked(v4("203.0.113.1"), t));
        assert_eq!(g.record_failure(v4("198.51.100.9"), t), Counted::Ignored);
        assert!(!g.is_blocked(v4("198.51.100.9"), t));
        assert!(!g.is_blocked(ip(1), t + Duration::from_secs(301)));
    }

    #[test]
    fn global_cap_stops_checking_unknown_sources_only() {
        let mut g = guard(100, 5);
        let t = Instant::now();
        let phone: IpAddr = "2001:db8:aa::10".parse().unwrap();
        g.record_success(phone, t);
        for i in 0..5u16 {
            let ip: IpAddr = format!("2001:db8:{i}::1").parse().unwrap();
            assert!(!g.over_global_cap(ip, t));
            g.record_failure(ip, t);
        }
        assert!(g.take_cap_report());
        assert!(!g.take_cap_report(), "reported once per minute");
        assert!(g.over_global_cap("2001:db8:77::1".parse().unwrap(), t));
        assert!(
            !g.over_global_cap(phone, t),
            "a known phone is still checked"
        );
        assert!(
            !g.over_global_cap("198.51.100.1".parse().unwrap(), t),
            "trusted"
        );
        let later = t + GLOBAL_WINDOW;
        assert!(!g.over_global_cap("2001:db8:77::1".parse().unwrap(), later));
    }
}
