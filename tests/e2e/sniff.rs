//! A packet counter on one interface of a network namespace: an `AF_PACKET` socket (cooked,
//! `SOCK_DGRAM`, every protocol) bound to the interface, read by a thread that counts UDP
//! datagrams per (source, destination) socket address pair, both directions, and keeps the text
//! of SIP datagrams (to or from port 5060; at most [`MAX_SIP`]). Independent of podpbx's own
//! counters, logs and of tcpdump/tshark: the test sees on the wire which addresses media and
//! signalling really used, and what was said. Bounded: the thread stops on drop, or after its
//! time limit.

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

/// One SIP datagram seen on the wire.
#[derive(Debug, Clone)]
pub struct SipSeen {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub text: String,
}

impl SipSeen {
    /// The start line.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive, long form only).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text
            .split("\r\n\r\n")
            .next()?
            .lines()
            .skip(1)
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    /// Whether any header `name` has a comma-separated value `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// How many SIP datagrams the sniffer keeps (the rest are only counted).
pub const MAX_SIP: usize = 5000;

/// The SIP port whose datagrams are kept.
const SIP_PORT: u16 = 5060;

pub struct Sniffer {
    stop: Arc<AtomicBool>,
    flows: Arc<Mutex<Flows>>,
    sip: Arc<Mutex<Vec<SipSeen>>>,
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

/// The UDP source and destination of an IP packet, if it is one (no IPv6 extension headers),
/// and where its payload starts.
fn udp_of(proto: u16, p: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
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
            Some((
                (IpAddr::V4(src), sp).into(),
                (IpAddr::V4(dst), dp).into(),
                ihl + 8,
            ))
        }
        ETH_P_IPV6 if p.len() >= 40 && p[0] >> 4 == 6 && p[6] == 17 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            let (sp, dp) = ports(40)?;
            Some((
                (IpAddr::V6(Ipv6Addr::from(src)), sp).into(),
                (IpAddr::V6(Ipv6Addr::from(dst)), dp).into(),
                48,
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
        let sip = Arc::new(Mutex::new(Vec::new()));
        let (st, fl, ot, si) = (stop.clone(), flows.clone(), other.clone(), sip.clone());
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
                let packet = &buf[..n as usize];
                match udp_of(proto, packet) {
                    Some((src, dst, at)) => {
                        *fl.lock().unwrap().entry((src, dst)).or_insert(0) += 1;
                        let payload = packet.get(at..).unwrap_or_default();
                        let sip = (src.port() == SIP_PORT || dst.port() == SIP_PORT)
                            && payload.first().is_some_and(u8::is_ascii_uppercase);
                        let mut kept = si.lock().unwrap();
                        if sip && kept.len() < MAX_SIP {
                            kept.push(SipSeen {
                                src,
                                dst,
                                text: String::from_utf8_lossy(payload).into_owned(),
                            });
                        }
                    }
                    None => *ot.lock().unwrap() += 1,
                }
            }
        });
        Sniffer {
            stop,
            flows,
            sip,
            other,
            handle: Some(handle),
        }
    }

    /// A copy of the counts so far.
    pub fn flows(&self) -> Flows {
        self.flows.lock().unwrap().clone()
    }

    /// The SIP datagrams kept so far, in the order seen.
    pub fn sip(&self) -> Vec<SipSeen> {
        self.sip.lock().unwrap().clone()
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
