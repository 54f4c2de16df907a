//! Numbers and addresses written as text without `core::fmt`: every response carries a status
//! code, a Content-Length and usually an address and a port (`received`, `rport`), and every
//! request's transaction key a sent-by. Through `write!` these cost ~3 % of a REGISTER
//! (argument tables, padding logic, a `write_str` call per piece). The registrar writes its
//! Contact values and its bindings file with these too.

use bytes::BufMut;
use std::net::{IpAddr, Ipv4Addr};

/// `n` in decimal, in the tail of `buf`; returns the digits.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Appends `n` in decimal.
pub fn put_decimal(out: &mut impl BufMut, n: u64) {
    let mut buf = [0u8; 20];
    out.put_slice(decimal(n, &mut buf));
}

/// Appends `n` in decimal to a `String`.
pub fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    for &d in decimal(n, &mut buf) {
        out.push(char::from(d));
    }
}

/// Appends an IPv4 address in dotted decimal.
pub fn put_ipv4(out: &mut impl BufMut, a: Ipv4Addr) {
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b'.');
        }
        put_decimal(out, u64::from(o));
    }
}

/// Appends an IP address as `IpAddr`'s `Display` writes it (IPv6 without brackets; its
/// compressed form is left to the standard library, IPv4 is written here).
pub fn put_ip(out: &mut impl BufMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => put_ipv4(out, a),
        IpAddr::V6(a) => {
            use std::io::Write as _;
            let mut buf = [0u8; 48];
            let mut w = &mut buf[..];
            // Cannot fail: an IPv6 address is at most 45 characters.
            let _ = write!(w, "{a}");
            let n = 48 - w.len();
            out.put_slice(&buf[..n]);
        }
    }
}

/// Appends an IP address as it stands in a host position: IPv6 in brackets.
pub fn put_host_ip(out: &mut impl BufMut, ip: IpAddr) {
    if ip.is_ipv6() {
        out.put_u8(b'[');
        put_ip(out, ip);
        out.put_u8(b']');
    } else {
        put_ip(out, ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_read_as_display_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 5060, 65535, 4_294_967_295, u64::MAX] {
            let mut v = Vec::new();
            put_decimal(&mut v, n);
            assert_eq!(v, n.to_string().into_bytes());
            let mut t = String::from("x");
            push_decimal(&mut t, n);
            assert_eq!(t, format!("x{n}"));
        }
        for ip in [
            "0.0.0.0",
            "198.51.100.7",
            "255.255.255.255",
            "10.0.20.3",
            "2001:db8::7",
            "::1",
            "::ffff:198.51.100.7",
            "2001:db8:1:2:3:4:5:6",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut v = Vec::new();
            put_ip(&mut v, ip);
            assert_eq!(String::from_utf8(v).unwrap(), ip.to_string());
            let mut h = Vec::new();
            put_host_ip(&mut h, ip);
            let port_stripped = std::net::SocketAddr::new(ip, 1).to_string();
            assert_eq!(String::from_utf8(h).unwrap() + ":1", port_stripped);
        }
    }
}
