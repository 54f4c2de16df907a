//! Which addresses this host really has, so a missing Calico annotation fails start-up loudly
//! instead of binding nothing useful.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every unicast address assigned to an interface of this host (network namespace).
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned, which stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family field says which struct it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Fails with the message operators need when a pinned address is not on this host.
pub fn ensure_assigned(addr: IpAddr) -> Result<(), String> {
    if addr.is_unspecified() {
        return Ok(());
    }
    let have = local_addresses().map_err(|e| format!("cannot list interface addresses: {e}"))?;
    if have.contains(&addr) {
        return Ok(());
    }
    let hint = match addr {
        IpAddr::V6(_) => "is the Calico ipv6pools annotation on the pod?",
        IpAddr::V4(_) => "is the Calico ipv4pools annotation on the pod?",
    };
    Err(format!("{addr} is not assigned here: {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_assigned_and_documentation_address_is_not() {
        assert!(ensure_assigned("127.0.0.1".parse().unwrap()).is_ok());
        let err = ensure_assigned("2001:db8:e8b1::1:1".parse().unwrap()).unwrap_err();
        assert_eq!(
            err,
            "2001:db8:e8b1::1:1 is not assigned here: is the Calico ipv6pools annotation on the pod?"
        );
    }
}
