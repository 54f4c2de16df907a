//! Shared-port demultiplexing: which leg a datagram received on a shared socket belongs to.
//!
//! * [`Demux`]: latched peers, `(shared socket, exact source address) -> leg`, looked up for
//!   every datagram. Open addressing with linear probing and backward-shift deletion over a
//!   power-of-two array kept at most half full; the array only grows on the control path
//!   ([`Demux::reserve`] when a session is added), so a leg latching on the forwarding path
//!   inserts without allocating. Only latched peers of known IPs are ever inserted, so a
//!   stranger cannot lengthen the probe chains it walks; the hash is keyed with random seeds
//!   per array, so no address plan (hosts numbered ::1, ::2, …) crowds into one cluster.
//! * [`ByIp`]: legs that may latch, `(shared socket, peer IP) -> legs`, built from each leg's
//!   known IPs (SDP and signalling) when its SDP arrives; consulted only for a datagram from a
//!   source no leg has latched onto. A std `HashMap` (SipHash with random keys): its keys are
//!   looked up with addresses an attacker chooses.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::sys::Endpoint;

#[derive(Clone, Copy)]
struct Slot {
    /// Leg token (never 0: tokens carry a generation >= 1); 0 = empty.
    tok: u64,
    sock: u8,
    key: Endpoint,
}

const EMPTY: Slot = Slot {
    tok: 0,
    sock: 0,
    key: Endpoint::NONE,
};

/// `(shared socket, exact peer address) -> leg token`.
pub(super) struct Demux {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    /// Entries the live sessions may insert (4 per session: both legs' RTP
    /// and RTCP peers); the array is kept at least twice that.
    reserved: usize,
    seed: [u64; 2],
}

/// The 128-bit product of `x` and `y`, its halves folded: every input bit reaches every
/// output bit (a plain 64-bit multiply carries a bit only upwards, and the array is indexed
/// by the low bits).
#[inline]
fn fold_mul(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    p as u64 ^ (p >> 64) as u64
}

/// Keyed with the array's own random seeds: an address plan cannot be unlucky on every
/// worker and run, and a peer cannot choose addresses that meet in one slot.
#[inline]
fn hash(seed: &[u64; 2], sock: u8, e: &Endpoint) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&e.ip[..8]);
    b.copy_from_slice(&e.ip[8..]);
    let c = u64::from(e.port) << 16 | u64::from(e.family) << 8 | u64::from(sock);
    let h = fold_mul(
        u64::from_ne_bytes(a) ^ seed[0],
        u64::from_ne_bytes(b) ^ seed[1],
    );
    fold_mul(h ^ c, K)
}

impl Demux {
    pub(super) fn new() -> Demux {
        Demux {
            slots: vec![EMPTY; 64],
            mask: 63,
            len: 0,
            reserved: 0,
            seed: {
                let r = RandomState::new();
                [r.hash_one(1u8), r.hash_one(2u8)]
            },
        }
    }

    #[inline]
    fn home(&self, sock: u8, key: &Endpoint) -> usize {
        hash(&self.seed, sock, key) as usize & self.mask
    }

    /// Bring the home slot of `key` on shared socket `sock` into the cache ahead of `get`.
    #[inline]
    pub(super) fn prefetch(&self, sock: u8, key: &Endpoint) {
        crate::sys::prefetch(self.slots.as_ptr().wrapping_add(self.home(sock, key)));
    }

    /// The leg latched onto `key` on shared socket `sock`.
    #[inline]
    pub(super) fn get(&self, sock: u8, key: &Endpoint) -> Option<u64> {
        let mut i = self.home(sock, key);
        loop {
            let s = &self.slots[i];
            if s.tok == 0 {
                return None;
            }
            if s.sock == sock && s.key == *key {
                return Some(s.tok);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Room for `more` more entries than reserved so far (control path: a
    /// session is added), so that inserting them never grows the array.
    pub(super) fn reserve(&mut self, more: usize) {
        self.reserved += more;
        let want = self.reserved.max(self.len) * 2;
        if want <= self.slots.len() {
            return;
        }
        self.rebuild(want.next_power_of_two());
    }

    fn rebuild(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; cap]);
        self.mask = cap - 1;
        self.len = 0;
        for s in old.into_iter().filter(|s| s.tok != 0) {
            self.insert(s.sock, s.key, s.tok);
        }
    }

    /// A session is gone: its `n` entries need no room any more (the array keeps its size
    /// until [`Demux::shrink`]).
    pub(super) fn unreserve(&mut self, n: usize) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// Gives back the room of a load that has passed (control path, now and then): once the
    /// live reserve needs at most a quarter of the array, the array is rebuilt at twice what
    /// the reserve needs, so it must double again before it grows.
    pub(super) fn shrink(&mut self) -> bool {
        let need = self.reserved.max(self.len) * 2;
        let Some(to) = podpbx_sip::capacity::shrunk(need, self.slots.len()) else {
            return false;
        };
        self.rebuild(to.next_power_of_two().max(64));
        true
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Insert or replace. Never allocates; the caller reserved room (a full table would
    /// make lookups loop, so an insert beyond the reserve is refused: false).
    pub(super) fn insert(&mut self, sock: u8, key: Endpoint, tok: u64) -> bool {
        let full = (self.len + 1) * 2 > self.slots.len();
        let mut i = self.home(sock, &key);
        loop {
            let s = &mut self.slots[i];
            if s.tok == 0 {
                if full {
                    return false;
                }
                *s = Slot { tok, sock, key };
                self.len += 1;
                return true;
            }
            if s.sock == sock && s.key == key {
                s.tok = tok;
                return true;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Remove `key` on `sock` if present (backward-shift deletion: no tombstones).
    pub(super) fn remove(&mut self, sock: u8, key: &Endpoint) {
        let mut i = self.home(sock, key);
        loop {
            let s = &self.slots[i];
            if s.tok == 0 {
                return;
            }
            if s.sock == sock && s.key == *key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Shift later members of the cluster back over the hole when their home slot allows.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let s = self.slots[j];
            if s.tok == 0 {
                break;
            }
            let home = self.home(s.sock, &s.key);
            // Is `home` cyclically outside (hole, j]? Then the entry may move to the hole.
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slots a lookup of `key` reads (1 = found at its home slot).
    #[cfg(test)]
    fn probes(&self, sock: u8, key: &Endpoint) -> usize {
        let mut i = self.home(sock, key);
        let mut n = 1;
        while self.slots[i].tok != 0 && !(self.slots[i].sock == sock && self.slots[i].key == *key) {
            i = (i + 1) & self.mask;
            n += 1;
        }
        n
    }
}

/// `(shared socket, peer IP) -> tokens of the legs that accept that IP there`.
#[derive(Default)]
pub(super) struct ByIp {
    map: HashMap<(u8, Endpoint), Vec<u64>>,
}

impl ByIp {
    #[inline]
    pub(super) fn get(&self, sock: u8, ip: &Endpoint) -> &[u64] {
        self.map
            .get(&(sock, ip.ip_only()))
            .map_or(&[], |v| v.as_slice())
    }

    pub(super) fn add(&mut self, sock: u8, ip: Endpoint, tok: u64) {
        let v = self.map.entry((sock, ip.ip_only())).or_default();
        if !v.contains(&tok) {
            v.push(tok);
        }
    }

    pub(super) fn shrink(&mut self) -> bool {
        podpbx_sip::capacity::shrink_map(&mut self.map)
    }

    pub(super) fn remove(&mut self, sock: u8, ip: Endpoint, tok: u64) {
        let key = (sock, ip.ip_only());
        if let Some(v) = self.map.get_mut(&key) {
            v.retain(|t| *t != tok);
            if v.is_empty() {
                self.map.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ep(s: &str) -> Endpoint {
        Endpoint::from_std(s.parse::<SocketAddr>().expect("addr"))
    }

    #[test]
    fn insert_get_remove_under_churn() {
        let mut d = Demux::new();
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 0x1234_5678;
        for round in 0..20_000u64 {
            // xorshift: deterministic pseudo-random keys, many collisions in a small space.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = 1000 + (x % 300) as u16;
            let sock = (x >> 20) as u8 % 3;
            let key = if x & 1 == 0 {
                ep(&format!("127.0.0.{}:{port}", (x >> 8) % 4))
            } else {
                ep(&format!("[2001:db8::{}]:{port}", (x >> 8) % 4))
            };
            if (x >> 40).is_multiple_of(3) {
                d.remove(sock, &key);
                if model.remove(&(sock, key)).is_some() {
                    d.unreserve(1);
                }
            } else {
                if !model.contains_key(&(sock, key)) {
                    d.reserve(1);
                }
                assert!(d.insert(sock, key, round + 1));
                model.insert((sock, key), round + 1);
            }
            assert_eq!(d.len(), model.len());
            if round % 97 == 0 {
                for ((s, k), v) in &model {
                    assert_eq!(d.get(*s, k), Some(*v));
                }
            }
        }
        for ((s, k), v) in &model {
            assert_eq!(d.get(*s, k), Some(*v));
        }
        assert_eq!(d.get(9, &ep("127.0.0.9:9")), None);
    }

    #[test]
    fn the_array_shrinks_after_a_load_and_keeps_every_entry() {
        let mut d = Demux::new();
        let key = |i: u32| {
            ep(&format!(
                "127.0.{}.{}:{}",
                i / 250,
                i % 250 + 1,
                4000 + i % 7
            ))
        };
        for i in 0..20_000u32 {
            d.reserve(1);
            assert!(d.insert((i % 3) as u8, key(i), u64::from(i) + 1));
        }
        let peak = d.capacity();
        assert!(!d.shrink(), "in use: nothing to give back");
        // The load ends: all but 100 sessions go.
        for i in 100..20_000u32 {
            d.remove((i % 3) as u8, &key(i));
            d.unreserve(1);
        }
        assert!(d.shrink());
        assert!(d.capacity() <= 512, "{} of {peak}", d.capacity());
        for i in 0..100u32 {
            assert_eq!(d.get((i % 3) as u8, &key(i)), Some(u64::from(i) + 1));
        }
        assert_eq!(d.get(0, &key(5000)), None);
        // Still room for the reserve: inserting what was reserved never fails.
        d.reserve(50);
        assert!((100..150u32).all(|i| d.insert(0, key(i + 30_000), 9)));
    }

    #[test]
    fn insert_without_room_is_refused_not_looping() {
        let mut d = Demux::new();
        let mut ok = 0;
        for p in 0..100u16 {
            if d.insert(0, ep(&format!("127.0.0.1:{}", 2000 + p)), 7) {
                ok += 1;
            }
        }
        assert_eq!(ok, 32, "at most half full without a reserve");
        assert_eq!(d.get(0, &ep("127.0.0.1:9999")), None);
    }

    /// Address plans a relay meets: IPv6 hosts numbered in the last bytes (static ::10, ::11,
    /// DHCPv6 pools, the bench's 2001:db8:ab::k), IPv4 hosts of one subnet, one media server
    /// with many ports (a trunk), SLAAC-style interface IDs. Each plan's latched peers must
    /// spread over the array: with linear probing at most half full a good hash reads ~1.5
    /// slots per lookup. The first hash folded the address's last 16 bits into bits it then
    /// masked away, so 2 000 IPv6 peers numbered ::1..::2000 shared one home slot and a
    /// lookup read ~1 000 slots (the relay thread's hottest loop at 1 000 streams).
    #[test]
    fn peers_of_every_address_plan_spread_over_the_array() {
        type Plan = (&'static str, fn(u32) -> String);
        let plans: [Plan; 5] = [
            ("ipv6 numbered in the last bytes", |k| {
                format!("[2001:db8:ab::{:x}]:40000", k + 1)
            }),
            ("ipv6 numbered in the last byte pair of one /112", |k| {
                format!("[2001:db8:1:2:3:4:5:{:x}]:5004", k + 1)
            }),
            ("ipv4 hosts of one subnet", |k| {
                format!("198.51.{}.{}:40000", 100 + k / 250, k % 250 + 1)
            }),
            ("one media server, many ports", |k| {
                format!("[2001:db8::5]:{}", 10_000 + 2 * k)
            }),
            ("slaac interface ids", |k| {
                let x = u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                format!(
                    "[2001:db8:0:1:{:x}:{:x}:{:x}:{:x}]:5004",
                    (x >> 48) as u16,
                    (x >> 32) as u16,
                    (x >> 16) as u16,
                    x as u16
                )
            }),
        ];
        for (name, key) in plans {
            let mut d = Demux::new();
            let n = 2_000u32;
            d.reserve(n as usize);
            for k in 0..n {
                assert!(d.insert(0, ep(&key(k)), u64::from(k) + 1), "{name}");
            }
            let probes: Vec<usize> = (0..n).map(|k| d.probes(0, &ep(&key(k)))).collect();
            let mean = probes.iter().sum::<usize>() as f64 / f64::from(n);
            let max = probes.iter().copied().max().unwrap_or(0);
            assert!(
                mean <= 3.0 && max <= 64,
                "{name}: mean {mean:.1} slots per lookup, max {max}"
            );
            for k in 0..n {
                assert_eq!(d.get(0, &ep(&key(k))), Some(u64::from(k) + 1), "{name}");
            }
        }
    }

    #[test]
    fn by_ip_ignores_ports() {
        let mut b = ByIp::default();
        b.add(1, ep("127.0.0.5:4000"), 11);
        b.add(1, ep("127.0.0.5:4002"), 11);
        b.add(1, ep("127.0.0.5:0"), 12);
        assert_eq!(b.get(1, &ep("127.0.0.5:9")), &[11, 12]);
        assert!(b.get(0, &ep("127.0.0.5:9")).is_empty());
        b.remove(1, ep("127.0.0.5:1"), 11);
        assert_eq!(b.get(1, &ep("127.0.0.5:9")), &[12]);
        b.remove(1, ep("127.0.0.5:1"), 12);
        assert_eq!(b.len(), 0);
    }
}
