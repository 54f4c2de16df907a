//! Identifiers and address spellings every SIP element needs: random tokens for tags, branches
//! and Call-IDs, and hosts written the SIP way (IPv6 in brackets).

use std::net::{IpAddr, SocketAddr};

/// A random token for tags, branches and Call-IDs: 64 bits from the std hasher's per-process
/// random keys mixed with a counter, so no RNG crate is needed for identifiers that only must
/// be unique and unguessable enough.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_hosts_bracket_ipv6() {
        assert_ne!(token(), token());
        assert_eq!(
            host_of("[2001:db8::1]:5060".parse().unwrap()),
            "[2001:db8::1]"
        );
        assert_eq!(ip_host("198.51.100.1".parse().unwrap()), "198.51.100.1");
    }
}
