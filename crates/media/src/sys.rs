//! Thin, checked wrappers over the Linux system calls the relay uses:
//! epoll, eventfd, recvmmsg/sendmmsg and raw socket addresses.
//!
//! Every `unsafe` block here passes pointers to memory owned by the caller for
//! the duration of the call only, and every return value is checked.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Monotonic clock in nanoseconds (vDSO, no system call on Linux).
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A socket address in the kernel's format, ready to hand to sendmmsg. Sized
/// for `sockaddr_in6` (which also holds a `sockaddr_in`): 32 bytes instead of
/// a 128-byte `sockaddr_storage`, to keep the per-leg state in few cache lines.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct RawAddr {
    pub(crate) sa: libc::sockaddr_in6,
    pub(crate) len: libc::socklen_t,
}

/// Bytes of a receive address buffer.
pub(crate) const RAW_ADDR_CAP: libc::socklen_t =
    mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;

impl RawAddr {
    pub(crate) fn empty() -> Self {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is AF_UNSPEC.
        RawAddr {
            sa: unsafe { mem::zeroed() },
            len: 0,
        }
    }

    pub(crate) fn from_std(addr: SocketAddr) -> Self {
        let mut r = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in6 is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write(&mut r.sa as *mut _ as *mut libc::sockaddr_in, sin) };
                r.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                r.sa = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                r.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        r
    }

    pub(crate) fn is_set(&self) -> bool {
        self.len != 0
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        &self.sa as *const _ as *const libc::sockaddr
    }

    /// Convert a kernel-filled address; `None` for other families.
    pub(crate) fn socket_addr(&self) -> Option<SocketAddr> {
        match self.sa.sin6_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the buffer holds a sockaddr_in.
                let sin = unsafe { &*(&self.sa as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(self.sa.sin6_addr.s6_addr),
                u16::from_be(self.sa.sin6_port),
                0,
                self.sa.sin6_scope_id,
            ))),
            _ => None,
        }
    }
}

/// Compact form of a peer endpoint for a fast comparison on the hot path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct Endpoint {
    /// 0 = none, 4 or 6.
    pub(crate) family: u8,
    /// Network byte order.
    pub(crate) port: u16,
    pub(crate) ip: [u8; 16],
}

impl Endpoint {
    pub(crate) const NONE: Endpoint = Endpoint {
        family: 0,
        port: 0,
        ip: [0; 16],
    };

    #[inline]
    pub(crate) fn from_raw(r: &RawAddr) -> Endpoint {
        match r.sa.sin6_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the buffer holds a sockaddr_in.
                let sin = unsafe { &*(&r.sa as *const _ as *const libc::sockaddr_in) };
                let mut ip = [0u8; 16];
                ip[..4].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
                Endpoint {
                    family: 4,
                    port: sin.sin_port,
                    ip,
                }
            }
            libc::AF_INET6 => Endpoint {
                family: 6,
                port: r.sa.sin6_port,
                ip: r.sa.sin6_addr.s6_addr,
            },
            _ => Endpoint::NONE,
        }
    }

    pub(crate) fn from_std(a: SocketAddr) -> Endpoint {
        Endpoint::from_raw(&RawAddr::from_std(a))
    }

    /// The same IP with port 0 (a key for "any port of this host").
    #[inline]
    pub(crate) fn ip_only(&self) -> Endpoint {
        Endpoint { port: 0, ..*self }
    }

    pub(crate) fn same_ip(&self, other: &Endpoint) -> bool {
        self.family == other.family && self.ip == other.ip
    }

    pub(crate) fn is_some(&self) -> bool {
        self.family != 0
    }

    #[cfg(test)]
    pub(crate) fn to_std(self) -> Option<SocketAddr> {
        let port = u16::from_be(self.port);
        match self.family {
            4 => {
                let ip = Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]);
                Some(SocketAddr::new(std::net::IpAddr::V4(ip), port))
            }
            6 => Some(SocketAddr::new(
                std::net::IpAddr::V6(Ipv6Addr::from(self.ip)),
                port,
            )),
            _ => None,
        }
    }
}

/// Bind a nonblocking UDP socket for media on `addr`, with DSCP `tos`
/// (IP_TOS for IPv4, IPV6_TCLASS for IPv6; 0xb8 is EF). `twin_ready`: the
/// port may take a [`send_twin`] (SO_REUSEPORT, set before the bind; only the
/// relay's long-lived shared sockets ask for it).
pub(crate) fn media_socket(
    addr: SocketAddr,
    tos: u8,
    rcvbuf: Option<usize>,
    twin_ready: bool,
) -> io::Result<UdpSocket> {
    let s = unbound_media_socket(addr, tos)?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    if twin_ready {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn unbound_media_socket(addr: SocketAddr, tos: u8) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_tclass_v6(tos as u32)?;
    } else {
        s.set_tos(tos as u32)?;
        // DF set and the path MTU cache ignored (what QUIC stacks do): the kernel
        // then writes IP ID 0 instead of drawing one per datagram from its
        // shared, hashed ID table (`__ip_select_ident`, ~2 % of the relay's
        // CPU per packet), and no forged ICMP "fragmentation needed" can shrink
        // what the relay may send. RTP is sized for the path by its sender; a
        // datagram larger than the link is refused (EMSGSIZE, counted as a
        // send error), as a DF datagram would be dropped on the way.
        set_int_option(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
    }
    Ok(s)
}

/// A send-only twin of the shared media socket `of` (bound with `twin_ready`):
/// the same address and port, so what it sends carries the port the peers
/// latched onto, and connected to that very address, so the kernel never
/// hands it a peer's datagram (a connected member of a SO_REUSEPORT group
/// only takes its own 4-tuple, and the group's hash skips it). Why: every
/// datagram sent from a socket wakes the socket's wait queue when its send
/// buffer drains (`sock_wfree`), and the receiving socket's queue holds the
/// relay's epoll entry, so each send walked it (~3 % of the relay's CPU per
/// packet). The twin has no waiter. Once the twin is bound, SO_REUSEPORT is
/// switched off on both: the port is theirs alone.
pub(crate) fn send_twin(of: &UdpSocket, tos: u8) -> io::Result<UdpSocket> {
    let twin = bind_twin(of, tos);
    // Close the group again, whether or not the twin was made: with SO_REUSEPORT off on
    // its members, any later bind to the port fails (EADDRINUSE) as it did before twins,
    // so another relay (a test's second podpbx, another worker) cannot silently share the
    // port, and every datagram is looked up without the group (the shared socket is the
    // only member a peer's 4-tuple matches).
    let closed = socket2::SockRef::from(of).set_reuse_port(false);
    let twin = twin?;
    socket2::SockRef::from(&twin).set_reuse_port(false)?;
    closed?;
    Ok(twin)
}

fn bind_twin(of: &UdpSocket, tos: u8) -> io::Result<UdpSocket> {
    let addr = of.local_addr()?;
    let s = unbound_media_socket(addr, tos)?;
    s.set_reuse_port(true)?;
    // Nothing is ever read from it: the smallest queue bounds what a datagram
    // forged with the relay's own address as source could park there.
    s.set_recv_buffer_size(0)?;
    s.bind(&addr.into())?;
    s.connect(&addr.into())?;
    Ok(s.into())
}

/// Ask for a receive buffer of `bytes`: SO_RCVBUFFORCE when the process may
/// (CAP_NET_ADMIN), else SO_RCVBUF, which the kernel caps at
/// `net.core.rmem_max` (and doubles: still twice the default). Best effort.
pub(crate) fn grow_recv_buffer(sock: &UdpSocket, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if set_int_option(sock.as_raw_fd(), libc::SOL_SOCKET, opt, v).is_ok() {
            return;
        }
    }
}

/// setsockopt of an int-valued option.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a live c_int of the size passed, for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Read back the traffic class of a socket (for tests).
#[cfg(test)]
pub(crate) fn socket_dscp_byte(sock: &UdpSocket) -> io::Result<u8> {
    let s = socket2::SockRef::from(sock);
    let v = match sock.local_addr()? {
        SocketAddr::V4(_) => s.tos()?,
        SocketAddr::V6(_) => s.tclass_v6()?,
    };
    Ok(v as u8)
}

/// An epoll instance.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain system call.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Watch `fd` edge-triggered (a new event per state change, e.g. per eventfd write).
    pub(crate) fn add_edge(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is valid for the call; errors (already closed) are harmless.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Wait for events; returns how many entries of `events` were filled.
    pub(crate) fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` is valid for `max` entries.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }
}

/// An eventfd used to wake a worker when commands are queued.
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: plain system call.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. EAGAIN (counter full) is fine.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }
}

/// `recvmmsg` with MSG_DONTWAIT. Returns the number of messages (0 on
/// EAGAIN or error).
#[inline]
pub(crate) fn recvmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> usize {
    // SAFETY: the caller built `msgs` with pointers to live buffers.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        0
    } else {
        n as usize
    }
}

/// `sendmmsg` with MSG_DONTWAIT. Returns the number sent, or the error of the
/// first message when none was sent.
#[inline]
pub(crate) fn sendmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> Result<usize, i32> {
    // SAFETY: the caller built `msgs` with pointers to live buffers.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n as usize)
    }
}

/// Send one datagram to a raw address (control path: DTMF generation).
pub(crate) fn send_to_raw(fd: RawFd, buf: &[u8], to: &RawAddr) -> io::Result<usize> {
    // SAFETY: `buf` and `to` are valid for the call.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            to.as_ptr(),
            to.len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Ask the CPU to bring the cache line holding `*p` in ahead of its use; a hint, never a
/// load: `p` need not be valid (nothing is read through it). A no-op where there is no
/// prefetch instruction to ask with.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 does not fault, whatever the address (SSE is baseline on x86_64).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint that does not fault, whatever the address.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// Sleep on the monotonic clock (interrupt moderation).
pub(crate) fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; an interrupted sleep is simply shorter.
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut()) };
}

/// Timer slack of 1 µs for the calling thread (default 50 µs), so that
/// short sleeps are short.
pub(crate) fn precise_timers() {
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// Linux thread id of the calling thread.
pub(crate) fn gettid() -> i32 {
    // SAFETY: plain system call without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Pin the calling thread to one CPU. Errors are returned, not fatal.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET bounds-checks via the macro.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addr_round_trip() {
        for a in [
            "127.0.0.1:4000".parse::<SocketAddr>().expect("v4"),
            "[::1]:5000".parse::<SocketAddr>().expect("v6"),
        ] {
            let r = RawAddr::from_std(a);
            assert!(r.is_set());
            assert_eq!(r.socket_addr(), Some(a));
            let e = Endpoint::from_std(a);
            assert!(e.is_some());
            assert_eq!(e.to_std(), Some(a));
        }
        assert_eq!(RawAddr::empty().socket_addr(), None);
        assert!(!Endpoint::from_raw(&RawAddr::empty()).is_some());
    }

    #[test]
    fn media_sockets_carry_dscp_ef() {
        for ip in ["127.0.0.1", "::1"] {
            let addr = SocketAddr::new(ip.parse().expect("ip"), 0);
            let s = media_socket(addr, 0xb8, None, false).expect("bind");
            assert_eq!(socket_dscp_byte(&s).expect("tos"), 0xb8, "{ip}");
        }
    }

    /// The IPv4 media sockets set DF without a per-datagram IP ID (see `unbound_media_socket`).
    #[test]
    fn ipv4_media_sockets_probe_the_path_mtu_themselves() {
        let s = media_socket("127.0.0.1:0".parse().expect("addr"), 0, None, false).expect("bind");
        let mut v: libc::c_int = -1;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live and sized for the option.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(v, libc::IP_PMTUDISC_PROBE);
    }

    /// What the relay relies on when it sends a shared socket's datagrams from its twin:
    /// they leave from the shared port; every datagram to that port, from any source, is
    /// the shared socket's (an unconnected twin would take a share of them through the
    /// SO_REUSEPORT hash: lost, since nothing reads the twin); and an ICMP error for one
    /// peer does not fail the twin's next send (a connected socket's pending error would).
    #[test]
    fn a_send_twin_sends_from_the_shared_port_and_never_takes_a_datagram() {
        for ip in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let shared = media_socket(SocketAddr::new(ip, 0), 0, None, true).expect("bind");
            let twin = send_twin(&shared, 0).expect("twin");
            let at = shared.local_addr().expect("addr");
            assert_eq!(twin.local_addr().expect("addr"), at);
            let peers: Vec<UdpSocket> = (0..16)
                .map(|_| UdpSocket::bind(SocketAddr::new(ip, 0)).expect("peer"))
                .collect();
            for p in &peers {
                p.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .expect("timeout");
                let to = RawAddr::from_std(p.local_addr().expect("addr"));
                assert_eq!(send_to_raw(twin.as_raw_fd(), b"out", &to).expect("send"), 3);
                let mut buf = [0u8; 16];
                let (n, from) = p.recv_from(&mut buf).expect("recv");
                assert_eq!((n, from), (3, at), "{ip}: sent from the shared port");
            }
            for p in &peers {
                for _ in 0..8 {
                    p.send_to(b"in", at).expect("send");
                }
            }
            let want = peers.len() * 8;
            let mut got = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut buf = [0u8; 16];
            while got < want && std::time::Instant::now() < deadline {
                match shared.recv_from(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
            assert_eq!(got, want, "{ip}: every datagram reaches the shared socket");
            assert!(twin.recv_from(&mut buf).is_err(), "{ip}: the twin took one");
            // The port is the pair's alone: a third socket, even one asking for SO_REUSEPORT
            // as the shared socket did, cannot join (it would take a share of the datagrams).
            let third = unbound_media_socket(at, 0).expect("socket");
            third.set_reuse_port(true).expect("reuseport");
            let e = third
                .bind(&at.into())
                .expect_err("a third socket bound the shared port");
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{ip}");
            // A peer gone: its ICMP port unreachable must not fail the next send.
            let gone = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
            let gone_at = RawAddr::from_std(gone.local_addr().expect("addr"));
            drop(gone);
            let _ = send_to_raw(twin.as_raw_fd(), b"x", &gone_at);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let to = RawAddr::from_std(peers[0].local_addr().expect("addr"));
            assert!(send_to_raw(twin.as_raw_fd(), b"again", &to).is_ok(), "{ip}");
            assert_eq!(peers[0].recv_from(&mut buf).expect("recv").0, 5);
        }
    }
}
