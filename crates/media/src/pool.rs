//! Port-pair pool: RTP on an even port, RTCP on the next (odd) one.
//!
//! Pairs are handed out at random from the free ones (issue #11: ports in order let an attacker
//! guess the next call's ports), with a keyed hash (SipHash with random keys, std's
//! `RandomState`) of a counter as the random source: unpredictable from the ports an attacker
//! sees in its own calls' SDP. A released pair first cools down for [`COOL_DOWN_NS`], so that
//! stray packets of the old call have died out before another call uses it; when nothing else
//! is free, the pair that has cooled longest is used.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

/// How long a released pair rests before it is handed out again (if others are free).
pub(crate) const COOL_DOWN_NS: u64 = 2_000_000_000;

/// The port pairs of one address family.
#[derive(Debug)]
pub(crate) struct PortPool {
    free: Vec<u16>,
    /// Released pairs with their release time, oldest first.
    cooling: VecDeque<(u16, u64)>,
    total: usize,
    keys: RandomState,
    draws: u64,
}

impl PortPool {
    /// All even ports `p` with `first <= p` and `p + 1 <= last`.
    pub(crate) fn new(first: u16, last: u16) -> Self {
        let first = first.max(2) as u32;
        let mut free = Vec::new();
        let mut p = first + (first & 1);
        while p < last as u32 {
            free.push(p as u16);
            p += 2;
        }
        let total = free.len();
        PortPool {
            free,
            cooling: VecDeque::new(),
            total,
            keys: RandomState::new(),
            draws: 0,
        }
    }

    /// A random free pair (`now_ns`: monotonic clock, for the cool-down).
    pub(crate) fn take(&mut self, now_ns: u64) -> Option<u16> {
        while let Some(&(p, at)) = self.cooling.front() {
            if now_ns.saturating_sub(at) < COOL_DOWN_NS {
                break;
            }
            self.cooling.pop_front();
            self.free.push(p);
        }
        if self.free.is_empty() {
            return self.cooling.pop_front().map(|(p, _)| p);
        }
        self.draws += 1;
        let i = (self.keys.hash_one(self.draws) % self.free.len() as u64) as usize;
        Some(self.free.swap_remove(i))
    }

    /// Give a pair back (it cools down first).
    pub(crate) fn put(&mut self, even: u16, now_ns: u64) {
        self.cooling.push_back((even, now_ns));
    }

    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.cooling.len()
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_only() {
        let mut p = PortPool::new(10001, 10010);
        assert_eq!(p.total(), 4); // 10002, 10004, 10006, 10008 (10010 has no odd partner)
        let mut got: Vec<u16> = (0..4).filter_map(|_| p.take(0)).collect();
        got.sort();
        assert_eq!(got, vec![10002, 10004, 10006, 10008]);
        assert_eq!(p.take(0), None);
        let q = PortPool::new(65534, 65535);
        assert_eq!(q.total(), 1);
        let e = PortPool::new(5, 4);
        assert_eq!(e.total(), 0);
        let z = PortPool::new(0, 3);
        assert_eq!(z.total(), 1); // port 0 is never handed out
    }

    #[test]
    fn random_order_and_cool_down() {
        let mut p = PortPool::new(20000, 21999); // 1000 pairs
        let first: Vec<u16> = (0..50).filter_map(|_| p.take(0)).collect();
        // In order (or in any fixed stride) would be 20000, 20002, ...: random draws are
        // not sorted (50! orders, one of them sorted).
        let mut sorted = first.clone();
        sorted.sort();
        assert_ne!(first, sorted, "ports handed out in order: {first:?}");
        let gaps: std::collections::HashSet<i32> = first
            .windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .collect();
        assert!(gaps.len() > 10, "predictable stride: {first:?}");
        // A released pair is not reused while others are free and it cools down.
        let released = first[0];
        p.put(released, 1_000);
        for _ in 0..950 {
            assert_ne!(p.take(1_000 + COOL_DOWN_NS / 2), Some(released));
        }
        // Nothing else free: the cooling pair is used rather than failing.
        assert_eq!(p.take(1_000 + COOL_DOWN_NS / 2), Some(released));
        assert_eq!(p.take(u64::MAX / 4), None);
        // After the cool-down it is free again.
        p.put(released, 5);
        assert_eq!(p.available(), 1);
        assert_eq!(p.take(5 + COOL_DOWN_NS), Some(released));
    }
}
