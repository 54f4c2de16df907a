//! Identifiers and address spellings every SIP element needs: tokens for tags, branches and
//! Call-IDs, and hosts written the SIP way (IPv6 in brackets).
//!
//! Protocol state machines take an [`IdGen`] (seeded by the shell from the OS, by tests with a
//! constant) instead of reading a random source, so they stay sans-IO and replayable.

use sha2::{Digest as _, Sha256};
use std::net::{IpAddr, SocketAddr};

/// The generator of tags, branches, Call-IDs and jitter for a sans-IO state machine.
///
/// Output `n` is the first 8 bytes of SHA-256(seed || n): deterministic for a given seed
/// (reproducible tests), and unpredictable without the seed even to a peer that saw earlier
/// outputs. That matters: a tag or Call-ID a peer can predict lets it address another caller's
/// dialog (RFC 3261 §19.3 asks for cryptographically random tags). A plain PRNG such as
/// SplitMix64 reveals its state in one output.
#[derive(Clone)]
pub struct IdGen {
    seed: [u8; 16],
    counter: u64,
}

impl IdGen {
    /// A generator from 16 bytes of seed: at run time from the OS (`/dev/urandom`), in tests
    /// a constant.
    pub fn new(seed: [u8; 16]) -> IdGen {
        IdGen { seed, counter: 0 }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        let d = h.finalize();
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[..8]);
        u64::from_le_bytes(w)
    }

    /// `words` 64-bit words as lower-case hex (16 digits each).
    pub fn hex(&mut self, words: usize) -> String {
        let mut s = String::with_capacity(words * 16);
        for _ in 0..words {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s
    }

    /// A 16-digit token for a tag or a Call-ID's local part.
    pub fn token(&mut self) -> String {
        self.hex(1)
    }

    /// A new RFC 3261 branch (`z9hG4bK` magic cookie, §8.1.1.7).
    pub fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.hex(1))
    }

    /// 16 bytes (e.g. a digest client's cnonce seed).
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        out
    }

    /// A uniform fraction in `[0, 1)` with 53 bits of precision (retry jitter).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl std::fmt::Debug for IdGen {
    /// Never prints the seed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGen")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// A random token for tags, branches and Call-IDs: 64 bits from the std hasher's per-process
/// random keys mixed with a counter. For code that has no [`IdGen`] yet; state machines should
/// take an `IdGen` so that they never read a random source.
pub fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// An IP address as a SIP host (IPv6 in brackets, RFC 5954).
pub fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// A socket address's host as SIP writes it (IPv6 in brackets).
pub fn host_of(addr: SocketAddr) -> String {
    ip_host(addr.ip())
}

/// `host:port` of a socket address, the SIP way (`[2001:db8::1]:5060`).
pub fn hostport(addr: SocketAddr) -> String {
    format!("{}:{}", host_of(addr), addr.port())
}

/// Our Contact for a flow bound to `local`: `<sip:user@host:port>`, with `;transport=` when the
/// transport is not UDP (RFC 3261 §19.1.1: UDP is the default).
pub fn contact(user: &str, local: SocketAddr, transport: crate::Transport) -> String {
    match transport {
        crate::Transport::Udp => format!("<sip:{user}@{}>", hostport(local)),
        t => format!("<sip:{user}@{};transport={}>", hostport(local), t.param()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_name_the_transport_unless_udp() {
        let v6: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        assert_eq!(
            contact("podpbx", v6, crate::Transport::Udp),
            "<sip:podpbx@[2001:db8::1]:5060>"
        );
        let v4: SocketAddr = "198.51.100.1:5061".parse().unwrap();
        assert_eq!(
            contact("podpbx", v4, crate::Transport::Tls),
            "<sip:podpbx@198.51.100.1:5061;transport=tls>"
        );
    }

    #[test]
    fn tokens_differ_and_hosts_bracket_ipv6() {
        assert_ne!(token(), token());
        assert_eq!(
            host_of("[2001:db8::1]:5060".parse().unwrap()),
            "[2001:db8::1]"
        );
        assert_eq!(ip_host("198.51.100.1".parse().unwrap()), "198.51.100.1");
    }

    #[test]
    fn idgen_is_deterministic_per_seed_and_distinct() {
        let mut a = IdGen::new([1; 16]);
        let mut b = IdGen::new([1; 16]);
        let mut c = IdGen::new([2; 16]);
        let (x, y, z) = (a.hex(2), b.hex(2), c.hex(2));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_eq!(x.len(), 32);
        assert_ne!(a.token(), a.token());
        assert!(a.branch().starts_with("z9hG4bK"));
        assert_ne!(a.bytes16(), a.bytes16());
        assert!(
            !format!("{a:?}").contains("[1"),
            "the seed is never printed"
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(seen.insert(a.next_u64()));
        }
    }
}
