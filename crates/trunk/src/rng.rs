//! A small deterministic generator for branches, tags, Call-IDs and retry jitter.
//!
//! The state machine must not read a random source (sans-IO, reproducible tests), so the caller
//! passes a seed: at run time 16 bytes from the OS, in tests a constant. SplitMix64 is not a
//! cryptographic generator; nothing here needs one. Branches and tags only have to be unique
//! (RFC 3261 §8.1.1.7, §19.3), and the cnonce seed handed to the digest client is the caller's
//! seed itself.

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, full period.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: [u8; 16]) -> SplitMix64 {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&seed[..8]);
        hi.copy_from_slice(&seed[8..]);
        let mut r = SplitMix64 {
            state: u64::from_le_bytes(lo) ^ u64::from_le_bytes(hi).rotate_left(29),
        };
        // Mix once so that seeds differing in few bits start far apart.
        let _ = r.next_u64();
        r
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` 64-bit words as lower-case hex (16 digits each).
    pub(crate) fn hex(&mut self, words: usize) -> String {
        let mut s = String::with_capacity(words * 16);
        for _ in 0..words {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s
    }

    /// A uniform fraction in `[0, 1)` with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let mut a = SplitMix64::new([1; 16]);
        let mut b = SplitMix64::new([1; 16]);
        let mut c = SplitMix64::new([2; 16]);
        let (x, y, z) = (a.hex(2), b.hex(2), c.hex(2));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_eq!(x.len(), 32);
        assert_ne!(a.next_u64(), a.next_u64());
    }

    #[test]
    fn unit_in_range() {
        let mut r = SplitMix64::new([7; 16]);
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
