//! Port-pair pool: RTP on an even port, RTCP on the next (odd) one.
//!
//! Free pairs are kept in FIFO order so that a pair just released is reused as
//! late as possible (stray packets of the old call have time to die out).

use std::collections::VecDeque;

/// The free even ports of one address family.
#[derive(Debug)]
pub(crate) struct PortPool {
    free: VecDeque<u16>,
    total: usize,
}

impl PortPool {
    /// All even ports `p` with `first <= p` and `p + 1 <= last`.
    pub(crate) fn new(first: u16, last: u16) -> Self {
        let first = first.max(2) as u32;
        let mut free = VecDeque::new();
        let mut p = first + (first & 1);
        while p < last as u32 {
            free.push_back(p as u16);
            p += 2;
        }
        let total = free.len();
        PortPool { free, total }
    }

    pub(crate) fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    pub(crate) fn put(&mut self, even: u16) {
        self.free.push_back(even);
    }

    pub(crate) fn available(&self) -> usize {
        self.free.len()
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
        assert_eq!(p.take(), Some(10002));
        p.put(10002);
        assert_eq!(p.take(), Some(10004));
        assert_eq!(p.available(), 3);
        let q = PortPool::new(65534, 65535);
        assert_eq!(q.total(), 1);
        let e = PortPool::new(5, 4);
        assert_eq!(e.total(), 0);
        let z = PortPool::new(0, 3);
        assert_eq!(z.total(), 1); // port 0 is never handed out
    }
}
