//! SIP URIs (RFC 3261 §19.1, §25.1) with the IPv6 reference grammar of RFC 5954.

use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host part of a URI or Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, as written (compare case-insensitively).
    Name(Bytes),
    V4(Ipv4Addr),
    /// A bracketed IPv6 reference; generation always re-adds the brackets.
    V6(Ipv6Addr),
}

impl Host {
    /// The IP address, if the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Name(_) => None,
        }
    }
}

impl std::fmt::Display for Host {
    /// Prints IPv6 in brackets, as every host position in SIP needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => f.write_str(&String::from_utf8_lossy(n)),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed URI. `sip:`/`sips:` are parsed fully; other schemes (`tel:`, unknown) keep only
/// `scheme` and `raw` so they can be carried and answered with `416` where a SIP URI is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The whole URI as written.
    pub raw: Bytes,
    /// Lower-cased scheme, e.g. `sip`, `sips`, `tel`.
    pub scheme: Bytes,
    /// User part (before `@`), still escaped, including user parameters such as `;npdi;rn=...`.
    pub user: Option<Bytes>,
    /// Password, if the userinfo had one.
    pub password: Option<Bytes>,
    /// Host; `None` for non-SIP schemes.
    pub host: Option<Host>,
    pub port: Option<u16>,
    /// URI parameters after the hostport (`;transport=tcp;lr`), raw text without the leading `;`.
    pub params: Bytes,
    /// URI headers after `?`, raw text without the `?`.
    pub headers: Bytes,
}

impl Uri {
    /// Parses a URI. Unknown schemes succeed (scheme + raw only); malformed SIP URIs fail.
    pub fn parse(raw: Bytes) -> Result<Uri, crate::ParseError> {
        let _ = raw;
        todo!()
    }

    /// True for `sip:` and `sips:`.
    pub fn is_sip(&self) -> bool {
        self.scheme.as_ref() == b"sip" || self.scheme.as_ref() == b"sips"
    }

    /// The value of a URI parameter (`Some(b"")` for a flag like `lr`), name case-insensitive.
    pub fn param(&self, name: &str) -> Option<Bytes> {
        let _ = name;
        todo!()
    }
}
