//! IPv4/IPv6 network prefixes (`2001:db8::/32`, `198.51.100.0/24`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: address plus prefix length. A bare address parses as a
/// host route (`/32` or `/128`). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Builds a network, rejecting prefixes longer than the address and set
    /// host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError(format!(
                "prefix length /{prefix} is too long for an {} address (at most /{max})",
                family_name(addr)
            )));
        }
        let net = Cidr { addr, prefix };
        let masked = net.network();
        if masked != addr {
            return Err(CidrError(format!(
                "host bits are set in `{addr}/{prefix}`, did you mean `{masked}/{prefix}`?"
            )));
        }
        Ok(net)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for IPv6 networks.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// The network address with host bits cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:198.51.100.1`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            CidrError(format!(
                "`{s}` is not a network: `{addr_text}` is not an IPv4 or IPv6 address"
            ))
        })?;
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| CidrError(format!("`{s}` has an invalid prefix length `/{p}`")))?,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("valid cidr in test")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip in test")
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(c("198.51.100.0/24").to_string(), "198.51.100.0/24");
        assert_eq!(c("198.51.100.7").prefix(), 32);
        assert_eq!(c("2001:db8::1").prefix(), 128);
        assert_eq!(c("0.0.0.0/0").prefix(), 0);
        assert_eq!(c("::/0").prefix(), 0);
        assert!(c("::/0").is_ipv6());
    }

    #[test]
    fn parse_errors() {
        let err = |s: &str| s.parse::<Cidr>().expect_err("must fail").0;
        assert_eq!(
            err("198.51.100.5/24"),
            "host bits are set in `198.51.100.5/24`, did you mean `198.51.100.0/24`?"
        );
        assert_eq!(
            err("10.0.0.0/33"),
            "prefix length /33 is too long for an IPv4 address (at most /32)"
        );
        assert_eq!(
            err("2001:db8::/129"),
            "prefix length /129 is too long for an IPv6 address (at most /128)"
        );
        assert_eq!(
            err("10.0.0.0/+8"),
            "`10.0.0.0/+8` has an invalid prefix length `/+8`"
        );
        assert_eq!(
            err("10.0.0.0/"),
            "`10.0.0.0/` has an invalid prefix length `/`"
        );
        assert_eq!(
            err("example.com/24"),
            "`example.com/24` is not a network: `example.com` is not an IPv4 or IPv6 address"
        );
    }

    #[test]
    fn contains() {
        let v6 = c("2001:db8:1234::/48");
        assert!(v6.contains(ip("2001:db8:1234:5::1")));
        assert!(!v6.contains(ip("2001:db8:1235::1")));
        assert!(!v6.contains(ip("198.51.100.1")));
        let v4 = c("198.51.100.0/25");
        assert!(v4.contains(ip("198.51.100.127")));
        assert!(!v4.contains(ip("198.51.100.128")));
        assert!(v4.contains(ip("::ffff:198.51.100.1")));
        assert!(!v4.contains(ip("2001:db8::1")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(c("::/0").contains(ip("fe80::1")));
        assert!(c("198.51.100.1").contains(ip("198.51.100.1")));
        assert!(!c("198.51.100.1").contains(ip("198.51.100.2")));
    }

    #[test]
    fn overlaps() {
        assert!(c("10.0.0.0/8").overlaps(&c("10.1.0.0/16")));
        assert!(c("10.1.0.0/16").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/16").overlaps(&c("10.1.0.0/16")));
        assert!(!c("10.0.0.0/8").overlaps(&c("::/0")));
    }
}
