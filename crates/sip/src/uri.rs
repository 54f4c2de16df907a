//! SIP URIs (RFC 3261 §19.1, §25.1) with the IPv6 reference grammar of RFC 5954.

use crate::ParseError;
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

    /// Parses a whole host: a domain name, an IPv4 address or a bracketed IPv6 reference.
    pub fn parse(s: &Bytes) -> Result<Host, ParseError> {
        let (host, end) = Host::parse_at(s, 0, s.len())?;
        if end != s.len() {
            return Err(ParseError::Value("host"));
        }
        Ok(host)
    }

    /// Like [`Host::parse`] but also accepts an IPv6 address without brackets (as in the Via
    /// `received` parameter, RFC 5118 §4.5, or a lenient `maddr`).
    pub fn parse_lenient(s: &Bytes) -> Result<Host, ParseError> {
        if s.first() != Some(&b'[') && s.contains(&b':') {
            return parse_v6(s).map(Host::V6);
        }
        Host::parse(s)
    }

    /// Reads a host starting at `s[i]`; returns it and the index just past it.
    pub(crate) fn parse_at(s: &Bytes, i: usize, end: usize) -> Result<(Host, usize), ParseError> {
        let b = &s[..end.min(s.len())];
        match b.get(i) {
            Some(b'[') => {
                let close = b[i..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or(ParseError::Value("host"))?
                    + i;
                let a = parse_v6(&b[i + 1..close])?;
                Ok((Host::V6(a), close + 1))
            }
            Some(_) => {
                // One pass over the name: its extent, whether it is all digits and dots (an
                // IPv4 address), and the hostname rule (`*( domainlabel "." ) toplabel [ "." ]`:
                // no empty label, no label starting with '-'). Three passes cost ~360
                // instructions per host, and every request carries four or more.
                let mut j = i;
                let mut numeric = true;
                let mut at_label_start = true;
                let mut bad_label = false;
                while let Some(&c) = b.get(j) {
                    match c {
                        b'.' => {
                            bad_label |= at_label_start;
                            at_label_start = true;
                        }
                        b'0'..=b'9' => at_label_start = false,
                        b'-' => {
                            bad_label |= at_label_start;
                            numeric = false;
                            at_label_start = false;
                        }
                        c if c.is_ascii_alphabetic() || c == b'_' => {
                            numeric = false;
                            at_label_start = false;
                        }
                        _ => break,
                    }
                    j += 1;
                }
                let name = &b[i..j];
                if name.is_empty() {
                    return Err(ParseError::Value("host"));
                }
                if numeric {
                    let a = parse_v4(name).ok_or(ParseError::Value("host"))?;
                    return Ok((Host::V4(a), j));
                }
                // A trailing '.' (at_label_start at the end) is the allowed root dot; an empty
                // label before it was caught at its '.'.
                if bad_label {
                    return Err(ParseError::Value("host"));
                }
                Ok((Host::Name(s.slice(i..j)), j))
            }
            None => Err(ParseError::Value("host")),
        }
    }
}

/// Dotted-quad IPv4 (`1*3DIGIT "." ...`), each octet <= 255 and without leading zeros.
fn parse_v4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut o = [0u8; 4];
    let (mut k, mut v, mut digits) = (0usize, 0u32, 0u32);
    for &c in b {
        if c == b'.' {
            if digits == 0 || k == 3 {
                return None;
            }
            o[k] = u8::try_from(v).ok()?;
            (k, v, digits) = (k + 1, 0, 0);
        } else if c.is_ascii_digit() {
            // A fourth digit, or a second one after a leading zero.
            if digits == 3 || (digits == 1 && v == 0) {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
            digits += 1;
        } else {
            return None;
        }
    }
    if digits == 0 || k != 3 {
        return None;
    }
    o[3] = u8::try_from(v).ok()?;
    Some(Ipv4Addr::from(o))
}

fn parse_v6(b: &[u8]) -> Result<Ipv6Addr, ParseError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
        .ok_or(ParseError::Value("IPv6 reference"))
}

/// Reads `1*5DIGIT` at `s[i]` as a port; returns it and the index past it.
pub(crate) fn parse_port(s: &[u8], i: usize) -> Result<(u16, usize), ParseError> {
    let mut j = i;
    while j < s.len() && s[j].is_ascii_digit() {
        j += 1;
    }
    let v = crate::message::parse_decimal(&s[i..j], 5).ok_or(ParseError::Value("port"))?;
    let p = u16::try_from(v).map_err(|_| ParseError::Value("port"))?;
    Ok((p, j))
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
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

/// Octets that may appear anywhere in a URI as received: visible ASCII except `<`, `>`, `"`.
/// (Whitespace, controls and raw non-ASCII octets must be %-escaped.)
#[inline]
fn uri_char(b: u8) -> bool {
    URI_CHAR[b as usize]
}

const fn uri_char_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0x21;
    while c < 0x7f {
        t[c] = !matches!(c as u8, b'<' | b'>' | b'"');
        c += 1;
    }
    t
}
static URI_CHAR: [bool; 256] = uri_char_table();

impl Uri {
    /// Parses a URI. Unknown schemes succeed (scheme + raw only); malformed SIP URIs fail.
    pub fn parse(raw: Bytes) -> Result<Uri, crate::ParseError> {
        const E: ParseError = ParseError::Value("URI");
        let s = &raw[..];
        let n = s.len();
        if n == 0 || !s[0].is_ascii_alphabetic() {
            return Err(E);
        }
        let mut i = 1;
        while i < n && (s[i].is_ascii_alphanumeric() || matches!(s[i], b'+' | b'-' | b'.')) {
            i += 1;
        }
        if i >= n || s[i] != b':' || i + 1 == n {
            return Err(E);
        }
        if !s.iter().all(|&b| uri_char(b)) {
            return Err(E);
        }
        let sch = &s[..i];
        let (scheme, sip) = if sch.eq_ignore_ascii_case(b"sip") {
            (Bytes::from_static(b"sip"), true)
        } else if sch.eq_ignore_ascii_case(b"sips") {
            (Bytes::from_static(b"sips"), true)
        } else if sch.eq_ignore_ascii_case(b"tel") {
            (Bytes::from_static(b"tel"), false)
        } else if sch.iter().any(|c| c.is_ascii_uppercase()) {
            (Bytes::from(sch.to_ascii_lowercase()), false)
        } else {
            (raw.slice(..i), false)
        };
        if !sip {
            return Ok(Uri {
                raw,
                scheme,
                user: None,
                password: None,
                host: None,
                port: None,
                params: Bytes::new(),
                headers: Bytes::new(),
            });
        }
        let rest = i + 1;
        // The userinfo ends at an '@'. A compliant URI has at most one; with more, take the last
        // one before the first '?' that follows the first '@' (so an unescaped '@' inside the
        // user part or inside a URI header such as `?Replaces=id@host` still parses sensibly).
        let at = s[rest..].iter().position(|&b| b == b'@').map(|first| {
            let first = first + rest;
            let q = s[first..]
                .iter()
                .position(|&b| b == b'?')
                .map_or(n, |p| p + first);
            s[first..q]
                .iter()
                .rposition(|&b| b == b'@')
                .map_or(first, |p| p + first)
        });
        let (user, password, hp) = match at {
            Some(at) => {
                let ui = &s[rest..at];
                let (user_end, password) = match ui.iter().position(|&b| b == b':') {
                    Some(c) => (rest + c, Some(raw.slice(rest + c + 1..at))),
                    None => (at, None),
                };
                if user_end == rest {
                    return Err(E);
                }
                (Some(raw.slice(rest..user_end)), password, at + 1)
            }
            None => (None, None, rest),
        };
        let (host, mut j) = Host::parse_at(&raw, hp, n)?;
        let mut port = None;
        if j < n && s[j] == b':' {
            let (p, e) = parse_port(s, j + 1)?;
            port = Some(p);
            j = e;
        }
        let mut params = Bytes::new();
        if j < n && s[j] == b';' {
            let ps = j + 1;
            let pe = s[ps..]
                .iter()
                .position(|&b| b == b'?')
                .map_or(n, |p| p + ps);
            // Every parameter needs a name: `;;` and `;=x` are malformed.
            if s[ps..pe]
                .split(|&b| b == b';')
                .any(|p| p.is_empty() || p[0] == b'=')
            {
                return Err(E);
            }
            params = raw.slice(ps..pe);
            j = pe;
        }
        let mut headers = Bytes::new();
        if j < n && s[j] == b'?' {
            headers = raw.slice(j + 1..n);
            j = n;
        }
        if j != n {
            return Err(E);
        }
        Ok(Uri {
            raw,
            scheme,
            user,
            password,
            host: Some(host),
            port,
            params,
            headers,
        })
    }

    /// True for `sip:` and `sips:`.
    pub fn is_sip(&self) -> bool {
        self.scheme.as_ref() == b"sip" || self.scheme.as_ref() == b"sips"
    }

    /// The value of a URI parameter (`Some(b"")` for a flag like `lr`), name case-insensitive.
    pub fn param(&self, name: &str) -> Option<Bytes> {
        let s = &self.params[..];
        let mut i = 0;
        while i <= s.len() && !s.is_empty() {
            let e = s[i..]
                .iter()
                .position(|&b| b == b';')
                .map_or(s.len(), |p| p + i);
            let p = &s[i..e];
            let (pn, val) = match p.iter().position(|&b| b == b'=') {
                Some(eq) => (&p[..eq], self.params.slice(i + eq + 1..e)),
                None => (p, Bytes::new()),
            };
            if pn.eq_ignore_ascii_case(name.as_bytes()) {
                return Some(val);
            }
            i = e + 1;
        }
        None
    }
}

impl Uri {
    /// URI equivalence after RFC 3261 §19.1.4: same scheme; user and password equal
    /// (case-sensitive, %-escapes decoded); host case-insensitive (an IP literal equal as an
    /// address); the same port (absent is not 5060); `transport`, `user`, `ttl`, `method` and
    /// `maddr` equal when either URI has them, other parameters equal when both have them
    /// (values case-insensitive); the same headers. Other schemes compare as written.
    pub fn equivalent(&self, other: &Uri) -> bool {
        if self.scheme != other.scheme {
            return false;
        }
        if !self.is_sip() {
            return self.raw == other.raw;
        }
        let unescaped_eq = |a: &Option<Bytes>, b: &Option<Bytes>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => unescape(a) == unescape(b),
            _ => false,
        };
        let host_eq = match (&self.host, &other.host) {
            (Some(Host::Name(a)), Some(Host::Name(b))) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        };
        if !unescaped_eq(&self.user, &other.user)
            || !unescaped_eq(&self.password, &other.password)
            || !host_eq
            || self.port != other.port
        {
            return false;
        }
        let (pa, pb) = (params(&self.params), params(&other.params));
        const MUST_MATCH: [&[u8]; 5] = [b"transport", b"user", b"ttl", b"method", b"maddr"];
        for (name, va) in &pa {
            match pb.iter().find(|(n, _)| n == name) {
                Some((_, vb)) if !va.eq_ignore_ascii_case(vb) => return false,
                None if MUST_MATCH.contains(&name.as_slice()) => return false,
                _ => {}
            }
        }
        if pb
            .iter()
            .any(|(n, _)| MUST_MATCH.contains(&n.as_slice()) && !pa.iter().any(|(m, _)| m == n))
        {
            return false;
        }
        let mut ha = params_sep(&self.headers, b'&');
        let mut hb = params_sep(&other.headers, b'&');
        ha.sort();
        hb.sort();
        ha == hb
    }
}

/// `%XX` escapes decoded (invalid escapes kept as written).
fn unescape(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// URI parameters as (lower-case unescaped name, unescaped value) pairs.
fn params(s: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    params_sep(s, b';')
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect()
}

fn params_sep(s: &[u8], sep: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(|b| *b == sep)
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(eq) => (unescape(&p[..eq]), unescape(&p[eq + 1..])),
            None => (unescape(p), Vec::new()),
        })
        .collect()
}

impl std::fmt::Display for Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uri {
        Uri::parse(Bytes::copy_from_slice(s.as_bytes())).expect("uri")
    }

    #[test]
    fn equivalence_follows_rfc3261_19_1_4() {
        let eq = |a: &str, b: &str| u(a).equivalent(&u(b));
        // RFC 3261 §19.1.4 examples of equal URIs.
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq("sip:[2001:db8::1]", "sip:[2001:DB8:0::1]"));
        // ... and of different ones.
        assert!(!eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;security=off"
        ));
        assert!(!eq("sip:1002@pbx.example", "sip:0049301234@pbx.example"));
        assert!(!eq("sip:pbx.example", "sip:other.example"));
        assert!(!eq("sip:pbx.example", "sips:pbx.example"));
        assert!(!eq("sip:a@h?subject=x", "sip:a@h"));
        assert!(eq("tel:+1234", "tel:+1234"));
        assert!(!eq("tel:+1234", "tel:+1235"));
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    /// The rules the one-pass scanner must keep, written the obvious (three-pass) way.
    fn reference(name: &[u8]) -> Option<Host> {
        let end = name
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')))
            .unwrap_or(name.len());
        let name = &name[..end];
        if name.is_empty() {
            return None;
        }
        if name.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
            let parts: Vec<&[u8]> = name.split(|&c| c == b'.').collect();
            if parts.len() != 4 {
                return None;
            }
            let mut o = [0u8; 4];
            for (k, p) in parts.iter().enumerate() {
                if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') {
                    return None;
                }
                o[k] = std::str::from_utf8(p).ok()?.parse().ok()?;
            }
            return Some(Host::V4(Ipv4Addr::from(o)));
        }
        let body = name.strip_suffix(b".").unwrap_or(name);
        if body.is_empty()
            || body
                .split(|c| *c == b'.')
                .any(|l| l.is_empty() || l[0] == b'-')
        {
            return None;
        }
        Some(Host::Name(Bytes::copy_from_slice(name)))
    }

    #[test]
    fn the_one_pass_host_scanner_keeps_the_hostname_and_ipv4_rules() {
        let cases: &[&str] = &[
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.0",
            "1..3.4",
            ".1.2.3",
            "1.2.3.4.",
            "1234.1.1.1",
            "example.com",
            "example.com.",
            "example.com..",
            ".",
            "..",
            "-a.com",
            "a.-b.com",
            "a-.com",
            "a_b.example",
            "1a.2b",
            "1.2.3.4a",
            "a",
            "x.y.z;transport=udp",
            "host:5060",
            "10.0.0.1:5060",
            "a..b",
            "_sip._udp.example.com",
            "",
            "-",
            "9",
        ];
        for c in cases {
            let got = Host::parse_at(&Bytes::from_static(c.as_bytes()), 0, c.len())
                .ok()
                .map(|(h, _)| h);
            assert_eq!(got, reference(c.as_bytes()), "host {c:?}");
        }
        // And every byte string of up to 4 bytes over the alphabet that matters.
        let alphabet = b"0a.-_1:9";
        for len in 1..=4u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let got = Host::parse_at(&Bytes::from(s.clone()), 0, s.len())
                    .ok()
                    .map(|(h, _)| h);
                assert_eq!(got, reference(&s), "host {:?}", String::from_utf8_lossy(&s));
            }
        }
    }
}
