//! A small bounded map evicting the least recently touched entry.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// Mutable access, marking the entry as most recently used.
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        let (v, t) = self.map.get_mut(k)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, k.clone());
        Some(v)
    }

    /// Inserts or replaces, evicting the least recently used entries beyond the capacity.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.tick += 1;
        if let Some((_, t)) = self.map.insert(k.clone(), (v, self.tick)) {
            self.order.remove(&t);
        }
        self.order.insert(self.tick, k);
        while self.map.len() > self.cap {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&old);
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let (v, t) = self.map.remove(k)?;
        self.order.remove(&t);
        Some(v)
    }

    /// Removes every entry for which `keep` is false.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let order = &mut self.order;
        self.map.retain(|k, (v, t)| {
            let k_ok = keep(k, v);
            if !k_ok {
                order.remove(t);
            }
            k_ok
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut l = Lru::new(2);
        l.insert(1, "a");
        l.insert(2, "b");
        assert!(l.get_mut(&1).is_some()); // 2 is now the oldest
        l.insert(3, "c");
        assert_eq!(l.len(), 2);
        assert!(l.get(&2).is_none());
        assert_eq!(l.get(&1), Some(&"a"));
        assert_eq!(l.remove(&1), Some("a"));
        l.retain(|k, _| *k != 3);
        assert_eq!(l.len(), 0);
        assert_eq!(l.order.len(), 0);
    }
}
