//! Giving back the room a load left in a table.
//!
//! A `HashMap`, `Vec` or `VecDeque` keeps the capacity of its largest moment: after a flood of
//! 15 000 calls the call table keeps room for 15 000 (~20 MB of buckets) with 100 calls in it,
//! for the rest of the process's life, and no `malloc_trim` can give that back because it is
//! one live allocation. Every table that grows with what the network sends is shrunk by these
//! rules, now and then (the status tick), never on the hot path: a shrink moves every entry.
//!
//! The rule has hysteresis so that a steady load never shrinks and regrows: a table is shrunk
//! only when it is at most a quarter full, and then to twice its length, so it must double
//! before it grows again. Tables below [`FLOOR`] entries of room are left alone (a few KB).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Room (in entries) below which a table is never shrunk.
pub const FLOOR: usize = 1024;

/// The capacity to shrink a table of `len` entries and `capacity` room to, if it should shrink.
pub fn shrunk(len: usize, capacity: usize) -> Option<usize> {
    (capacity >= FLOOR && len.saturating_mul(4) <= capacity).then(|| (len * 2).max(FLOOR / 2))
}

/// Shrinks a map by the rule; true if it did.
pub fn shrink_map<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) -> bool {
    match shrunk(map.len(), map.capacity()) {
        Some(to) => {
            map.shrink_to(to);
            true
        }
        None => false,
    }
}

/// Shrinks a vector by the rule; true if it did.
pub fn shrink_vec<T>(v: &mut Vec<T>) -> bool {
    match shrunk(v.len(), v.capacity()) {
        Some(to) => {
            v.shrink_to(to);
            true
        }
        None => false,
    }
}

/// Shrinks a queue by the rule; true if it did.
pub fn shrink_deque<T>(q: &mut VecDeque<T>) -> bool {
    match shrunk(q.len(), q.capacity()) {
        Some(to) => {
            q.shrink_to(to);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_emptied_by_three_quarters_gives_its_room_back() {
        let mut m: HashMap<u64, [u8; 64]> = (0..20_000).map(|i| (i, [0; 64])).collect();
        let peak = m.capacity();
        assert!(!shrink_map(&mut m), "full: nothing to give back");
        m.retain(|k, _| *k < 1000);
        assert!(shrink_map(&mut m));
        assert!(m.capacity() <= peak / 8, "{} of {peak}", m.capacity());
        assert_eq!(m.len(), 1000);
        assert!(
            (0..1000).all(|k| m.contains_key(&k)),
            "shrinking loses nothing"
        );
    }

    #[test]
    fn a_steady_table_is_not_shrunk_again_and_again() {
        let mut v: Vec<u32> = Vec::with_capacity(4096);
        v.extend(0..1024);
        assert!(shrink_vec(&mut v), "a quarter full");
        let cap = v.capacity();
        assert!(cap >= 2048);
        // Half of the load goes and comes back: no shrink, no regrowth.
        v.truncate(600);
        assert!(!shrink_vec(&mut v));
        v.extend(0..424);
        assert_eq!(v.capacity(), cap);
    }

    #[test]
    fn small_tables_are_left_alone() {
        let mut q: VecDeque<u8> = VecDeque::with_capacity(FLOOR - 1);
        assert!(!shrink_deque(&mut q));
        assert_eq!(shrunk(0, FLOOR), Some(FLOOR / 2));
        assert_eq!(shrunk(0, FLOOR - 1), None);
    }
}
