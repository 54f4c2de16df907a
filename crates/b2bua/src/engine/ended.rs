//! Dialogs a received BYE ended, remembered for Timer J (64·T1) so that a copy of that BYE
//! is answered `200` as its server transaction would have answered it, not `481`.
//!
//! Why it is needed: the BYE's server transaction absorbs its retransmissions, but under load
//! the transaction table sits at its memory bound and evicts lingering transactions (Timer J
//! ones first), and a copy queued behind the original (loop lag > T1) is read after its leg
//! ended or the whole call is gone. The caller then sees `481` for a call it ended correctly
//! (measured at 2× overload: 0.3–0.7 % of calls failed that way in SIPp). One check covers both
//! cases, before the dialog is looked up (`in_dialog::handle_in_dialog`).
//!
//! What is kept is small and bounded: a keyed 64-bit fingerprint of the dialog (Call-ID, our
//! tag), the BYE's CSeq and its source address, at most [`MAX_ENDED`] entries (the oldest go
//! first, counted) and never longer than 64·T1. A copy must carry the same CSeq and come from
//! the same address; anything else still gets `481`. A fingerprint collision could at worst
//! answer `200` to a BYE of no dialog, which changes nothing.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Bound of the memory of ended dialogs (entries): ~80 bytes each, ~1.3 MB when full. At the
/// 2× overload point (~14 000 BYEs/s) this covers the last ~1.2 s, enough for the copies a
/// lagging loop reads late; a home PBX never fills it.
pub const MAX_ENDED: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Ended {
    cseq: u32,
    src: IpAddr,
    at: Instant,
}

/// The memory itself ([`B2bua::ended_dialogs`](super::B2bua::ended_dialogs) reports its size).
#[derive(Debug)]
pub(crate) struct EndedDialogs {
    keep: Duration,
    hasher: RandomState,
    by_key: HashMap<u64, Ended>,
    order: VecDeque<(Instant, u64)>,
    /// Entries dropped before their 64·T1 because the memory was full.
    evicted: u64,
}

/// Size and pressure of the memory of ended dialogs, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndedDialogCounts {
    /// Dialogs remembered now.
    pub entries: usize,
    /// Dialogs forgotten before their time because the memory was at [`MAX_ENDED`].
    pub evicted: u64,
}

impl EndedDialogs {
    /// A memory keeping each dialog for `keep` (64·T1).
    pub fn new(keep: Duration) -> Self {
        EndedDialogs {
            keep,
            hasher: RandomState::new(),
            by_key: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    fn fingerprint(&self, call_id: &[u8], tag: &[u8]) -> u64 {
        // The length keeps ("ab","c") and ("a","bc") apart.
        self.hasher.hash_one((call_id.len(), call_id, tag))
    }

    /// A BYE with `cseq` from `src` ended the dialog (`call_id`, our `tag`) at `now`.
    pub fn record(&mut self, now: Instant, call_id: &[u8], tag: &[u8], cseq: u32, src: IpAddr) {
        self.expire(now);
        if self.order.len() >= MAX_ENDED {
            if let Some((at, k)) = self.order.pop_front() {
                self.forget(at, k);
                self.evicted += 1;
            }
        }
        let k = self.fingerprint(call_id, tag);
        let src = src.to_canonical();
        self.by_key.insert(k, Ended { cseq, src, at: now });
        self.order.push_back((now, k));
    }

    /// Whether a BYE with `cseq` from `src` at `now` repeats the BYE that ended dialog
    /// (`call_id`, our `tag`).
    pub fn repeats(
        &self,
        now: Instant,
        call_id: &[u8],
        tag: &[u8],
        cseq: u32,
        src: IpAddr,
    ) -> bool {
        let k = self.fingerprint(call_id, tag);
        self.by_key.get(&k).is_some_and(|e| {
            e.cseq == cseq
                && e.src == src.to_canonical()
                && now.saturating_duration_since(e.at) < self.keep
        })
    }

    /// Forgets the dialogs older than 64·T1.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.order.front() {
            if now.saturating_duration_since(at) < self.keep {
                break;
            }
            self.order.pop_front();
            self.forget(at, k);
        }
    }

    /// Removes `k`'s entry if it is the one recorded at `at` (a later record of the same
    /// dialog keeps its own).
    fn forget(&mut self, at: Instant, k: u64) {
        if self.by_key.get(&k).is_some_and(|e| e.at == at) {
            self.by_key.remove(&k);
        }
    }

    /// Gives back the room a load left (the shared shrink rule). True if anything shrank.
    pub fn shrink(&mut self, now: Instant) -> bool {
        use podpbx_sip::capacity::{shrink_deque, shrink_map};
        self.expire(now);
        shrink_map(&mut self.by_key) | shrink_deque(&mut self.order)
    }

    pub fn counts(&self) -> EndedDialogCounts {
        EndedDialogCounts {
            entries: self.by_key.len(),
            evicted: self.evicted,
        }
    }

    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.by_key.capacity() + self.order.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_copy_is_recognised_only_with_its_cseq_source_and_time() {
        let t0 = Instant::now();
        let mut m = EndedDialogs::new(Duration::from_secs(32));
        let a = ip("2001:db8::20");
        m.record(t0, b"c1@x", b"t1", 5, a);
        assert!(m.repeats(t0, b"c1@x", b"t1", 5, a));
        // The same address written as an IPv4-mapped IPv6 one is the same source.
        let v4 = ip("198.51.100.7");
        m.record(t0, b"c2@x", b"t2", 9, v4);
        assert!(m.repeats(t0, b"c2@x", b"t2", 9, ip("::ffff:198.51.100.7")));
        assert!(!m.repeats(t0, b"c1@x", b"t1", 6, a), "another CSeq");
        assert!(
            !m.repeats(t0, b"c1@x", b"t1", 5, ip("2001:db8::66")),
            "another source"
        );
        assert!(!m.repeats(t0, b"c1@x", b"t2", 5, a), "another tag");
        assert!(
            !m.repeats(t0, b"c1@", b"xt1", 5, a),
            "the same bytes split elsewhere"
        );
        let later = t0 + Duration::from_secs(32);
        assert!(!m.repeats(later, b"c1@x", b"t1", 5, a), "after 64·T1");
        m.expire(later);
        assert_eq!(m.counts().entries, 0);
    }

    #[test]
    fn the_memory_is_bounded_and_gives_its_room_back() {
        let t0 = Instant::now();
        let mut m = EndedDialogs::new(Duration::from_secs(32));
        let a = ip("2001:db8::20");
        for i in 0..MAX_ENDED + 100 {
            m.record(t0, format!("call{i}").as_bytes(), b"t", 1, a);
        }
        let c = m.counts();
        assert_eq!(c.entries, MAX_ENDED);
        assert_eq!(c.evicted, 100);
        assert!(
            !m.repeats(t0, b"call0", b"t", 1, a),
            "the oldest went first"
        );
        assert!(m.repeats(t0, format!("call{}", MAX_ENDED + 99).as_bytes(), b"t", 1, a));
        let room = m.room();
        assert!(m.shrink(t0 + Duration::from_secs(33)));
        assert_eq!(m.counts().entries, 0);
        assert!(m.room() < room / 4, "room {} of {room}", m.room());
    }
}
