//! A packet counter on one interface of a network namespace: an `AF_PACKET` socket (cooked,
//! `SOCK_DGRAM`, every protocol) bound to the interface, read by a thread that counts UDP
//! datagrams per (source, destination) socket address pair, both directions. Independent of
//! podpbx's own counters and of tcpdump/tshark: the test sees on the wire which addresses media
//! and signalling really used. Bounded: the thread stops on drop, or after its time limit.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// UDP datagrams seen per (source, destination).
pub type Flows = HashMap<(SocketAddr, SocketAddr), u64>;

pub struct Sniffer {
    stop: Arc<AtomicBool>,
    flows: Arc<Mutex<Flows>>,
    /// Non-UDP IP packets and frames of other protocols (ARP/NDP aside: ICMPv6 counts here).
    other: Arc<Mutex<u64>>,
    handle: Option<JoinHandle<()>>,
}

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Opens the capture socket; must run inside the interface's namespace.
fn open(iface: &str) -> std::io::Result<OwnedFd> {
    let name = std::ffi::CString::new(iface).expect("interface name");
    // SAFETY: plain libc calls with valid arguments; the fd is owned right after creation.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index as i32;
        if libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// The UDP source and destination of an IP packet, if it is one (no IPv6 extension headers).
fn udp_of(proto: u16, p: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let ports = |off: usize| -> Option<(u16, u16)> {
        let u = p.get(off..off + 4)?;
        Some((
            u16::from_be_bytes([u[0], u[1]]),
            u16::from_be_bytes([u[2], u[3]]),
        ))
    };
    match proto {
        ETH_P_IP if p.len() >= 20 && p[0] >> 4 == 4 && p[9] == 17 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let (sp, dp) = ports(ihl)?;
            Some(((IpAddr::V4(src), sp).into(), (IpAddr::V4(dst), dp).into()))
        }
        ETH_P_IPV6 if p.len() >= 40 && p[0] >> 4 == 6 && p[6] == 17 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            let (sp, dp) = ports(40)?;
            Some((
                (IpAddr::V6(Ipv6Addr::from(src)), sp).into(),
                (IpAddr::V6(Ipv6Addr::from(dst)), dp).into(),
            ))
        }
        _ => None,
    }
}

impl Sniffer {
    /// Starts counting on `iface` in namespace `ns`, for at most `limit`.
    pub fn start(ns: &str, iface: &str, limit: Duration) -> Sniffer {
        let fd = crate::common::baresip::in_netns(ns, || open(iface))
            .unwrap_or_else(|e| panic!("packet socket on {iface} in {ns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flows = Arc::new(Mutex::new(Flows::new()));
        let other = Arc::new(Mutex::new(0u64));
        let (st, fl, ot) = (stop.clone(), flows.clone(), other.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                // SAFETY: recvfrom into our buffer and a zeroed sockaddr_ll of the right size.
                let (n, proto) = unsafe {
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    let n = libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::addr_of_mut!(sll).cast(),
                        &mut len,
                    );
                    (n, u16::from_be(sll.sll_protocol))
                };
                if n <= 0 {
                    continue; // timeout (200 ms) or EINTR: check the stop flag again
                }
                match udp_of(proto, &buf[..n as usize]) {
                    Some(k) => *fl.lock().unwrap().entry(k).or_insert(0) += 1,
                    None => *ot.lock().unwrap() += 1,
                }
            }
        });
        Sniffer {
            stop,
            flows,
            other,
            handle: Some(handle),
        }
    }

    /// A copy of the counts so far.
    pub fn flows(&self) -> Flows {
        self.flows.lock().unwrap().clone()
    }

    pub fn other(&self) -> u64 {
        *self.other.lock().unwrap()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `after - before`, per flow (flows absent before count from 0).
pub fn diff(before: &Flows, after: &Flows) -> Flows {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}
