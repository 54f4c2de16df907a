//! Who a packet's source is, for counting and blocking.
//!
//! An IPv4 host rarely has more than one address, but an IPv6 host picks any address of its /64
//! (privacy addresses, RFC 8981), and anyone with a /64 has 2^64 of them: counting IPv6 sources
//! by address would give an attacker unlimited fresh identities. So an IPv6 source is its
//! prefix (default /64), an IPv4 source its address; an IPv4-mapped IPv6 address counts as the
//! IPv4 address it maps.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The default IPv6 prefix length sources are counted by.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// A source as counted by the brute-force guard and the connection caps: an IPv4 address or
/// an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    /// The prefix (host bits zero) and its length.
    V6(Ipv6Addr, u8),
}

impl SourceKey {
    /// The key of `ip` with IPv6 sources counted by their first `v6_prefix` bits (clamped to
    /// 1..=128).
    pub fn new(ip: IpAddr, v6_prefix: u8) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => SourceKey::V4(a),
            IpAddr::V6(a) => {
                let len = v6_prefix.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(len));
                SourceKey::V6(Ipv6Addr::from(u128::from(a) & mask), len)
            }
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{a}"),
            SourceKey::V6(a, len) => write!(f, "{a}/{len}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_by_prefix_v4_by_address() {
        let a = SourceKey::new("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = SourceKey::new("2001:db8:1:2:ffff:1:2:3".parse().unwrap(), 64);
        let c = SourceKey::new("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            SourceKey::new("2001:db8:1:2::1".parse().unwrap(), 128).to_string(),
            "2001:db8:1:2::1/128"
        );
        assert_eq!(
            SourceKey::new("2001:db8:1:2::1".parse().unwrap(), 0).to_string(),
            "::/1"
        );
        let v4 = SourceKey::new("198.51.100.7".parse().unwrap(), 64);
        assert_ne!(v4, SourceKey::new("198.51.100.8".parse().unwrap(), 64));
        assert_eq!(
            v4,
            SourceKey::new("::ffff:198.51.100.7".parse().unwrap(), 64)
        );
    }
}
