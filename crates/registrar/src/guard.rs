//! Per-source brute-force protection: count authentication failures per source IP in a fixed
//! window; after `max_failures` block the source for `block_for` (its requests are dropped
//! without any response). Both tables are bounded LRU maps, so a flood from many (possibly
//! spoofed) addresses costs bounded memory; blocks live in their own table so a flood of
//! single failures cannot evict an active block.

use crate::lru::Lru;
use crate::Cidr;
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
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
}

#[derive(Debug)]
pub(crate) struct Guard {
    cfg: GuardConfig,
    failures: Lru<IpAddr, Failures>,
    blocked: Lru<IpAddr, Instant>,
}

impl Guard {
    pub(crate) fn new(cfg: GuardConfig) -> Self {
        Guard {
            failures: Lru::new(cfg.max_tracked),
            blocked: Lru::new(cfg.max_blocked),
            cfg,
        }
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.cfg.trusted.iter().any(|n| n.contains(ip))
    }

    /// True while `ip` is blocked (trusted sources never are).
    pub(crate) fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        match self.blocked.get(&ip) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.blocked.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Counts one failure; returns `Some(failures)` when this failure starts a block.
    pub(crate) fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<u32> {
        let ip = ip.to_canonical();
        if self.is_trusted(ip) || self.cfg.max_failures == 0 {
            return None;
        }
        let window = self.cfg.window;
        let count = match self.failures.get_mut(&ip) {
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
                    ip,
                    Failures {
                        count: 1,
                        window_start: now,
                    },
                );
                1
            }
        };
        if count >= self.cfg.max_failures {
            self.failures.remove(&ip);
            self.blocked
                .insert(ip, crate::later(now, self.cfg.block_for));
            Some(count)
        } else {
            None
        }
    }

    /// Forgets finished windows and blocks.
    pub(crate) fn purge(&mut self, now: Instant) {
        let window = self.cfg.window;
        self.failures
            .retain(|_, f| now.saturating_duration_since(f.window_start) <= window);
        self.blocked.retain(|_, until| *until > now);
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
