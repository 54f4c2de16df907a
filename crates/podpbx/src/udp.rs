//! SIP over UDP on the signalling loop itself: datagrams are read in batches (`recvmmsg`) and
//! handed to the core at once, and the datagrams a turn of the loop sends leave in batches
//! (`sendmmsg`). Compared with a receiving task and a channel per message this saves a wake-up,
//! a task switch and the would-block read per datagram, and it bounds what waits between the
//! socket and the core to one batch: a flood waits in the kernel's socket buffer (whose size is
//! fixed), never in our memory.
//!
//! Each datagram is copied out of the reused receive buffers into an allocation of its own
//! size, so whatever the core keeps of a message (a dialog's tags, a transaction's key) never
//! pins more than that message.
//!
//! The kernel stamps each datagram when it arrives (`SO_TIMESTAMPNS`): the age of the oldest one
//! in a batch is how far the loop lags behind the network, which the core uses to shed new
//! calls and registrations before it falls further behind (see `core::overload`).

use bytes::Bytes;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A SIP UDP socket as the loop watches it: for readability only. The loop never waits to
/// write (a full send buffer loses the datagram, which SIP retransmits), and a socket watched
/// for writability too (as `tokio::net::UdpSocket` always is) gets a write-space edge from
/// every datagram sent: the next `epoll_wait` returns at once with nothing to read, one wasted
/// system call and turn of the runtime per batch sent (~3 per call).
pub type SipSocket = AsyncFd<std::net::UdpSocket>;

/// Watches `sock` (non-blocking) for readability on the current runtime.
pub fn register(sock: std::net::UdpSocket) -> io::Result<SipSocket> {
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same until the
    // AsyncFd is dropped, and `as_raw_fd` of a std socket always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| e.into())
}

/// Datagrams read per `recvmmsg`.
pub const BATCH: usize = 32;

/// Room for one `SCM_TIMESTAMPNS` control message per datagram.
const CMSG_SPACE: usize = 64;

/// One received datagram.
pub struct Datagram {
    pub data: Bytes,
    pub remote: SocketAddr,
    /// When the kernel received it (`None` if the kernel gave no time stamp).
    pub arrived: Option<SystemTime>,
}

/// The receive side of one batch: buffers and headers reused for every call.
struct RecvBatch {
    /// `BATCH` slots of `slot` octets.
    bufs: Vec<u8>,
    slot: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u8; CMSG_SPACE]>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` only ever point into this struct's own vectors
// and are rebuilt before every use; nothing is shared between threads through them.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    fn new(slot: usize) -> RecvBatch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        RecvBatch {
            bufs: vec![0; slot * BATCH],
            slot,
            addrs: vec![zero_addr; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            cmsgs: vec![[0; CMSG_SPACE]; BATCH],
            hdrs: vec![zero_hdr; BATCH],
        }
    }

    /// One `recvmmsg` without waiting: the number of datagrams read.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.slot..].as_mut_ptr().cast(),
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_SPACE as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the advertised sizes, owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last batch; `None` if it was longer than a slot (larger than any
    /// message we accept: dropped) or its source is not an IP address.
    fn datagram(&self, i: usize) -> Option<Datagram> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(self.slot);
        let data = Bytes::copy_from_slice(&self.bufs[i * self.slot..i * self.slot + len]);
        let remote = sockaddr(&self.addrs[i])?;
        Some(Datagram {
            data,
            remote,
            arrived: timestamp(&h.msg_hdr),
        })
    }
}

/// The address in a `sockaddr_storage` filled by the kernel.
fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, if any.
fn timestamp(m: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return UNIX_EPOCH.checked_add(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// Asks the kernel to stamp received datagrams (`SO_TIMESTAMPNS`).
pub fn enable_timestamps(sock: &SipSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option on our own socket.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A datagram waiting for the end of the loop's turn.
struct Pending {
    sock: usize,
    remote: SocketAddr,
    data: Bytes,
}

/// Why a queued datagram was not sent.
pub struct SendFailure {
    pub remote: SocketAddr,
    pub error: io::Error,
}

/// The UDP sockets (one per family), read and written by the loop.
pub struct UdpIo {
    socks: Vec<(SocketAddr, Arc<SipSocket>)>,
    rx: RecvBatch,
    tx: Vec<Pending>,
}

impl UdpIo {
    /// Reads and writes `socks`; datagrams up to `max` octets.
    pub fn new(socks: Vec<(SocketAddr, Arc<SipSocket>)>, max: usize) -> UdpIo {
        for (local, s) in &socks {
            if let Err(e) = enable_timestamps(s) {
                tracing::warn!(%local, error = %e, "no receive time stamps: loop lag unknown");
            }
        }
        UdpIo {
            socks,
            rx: RecvBatch::new(max.max(1500) + 1),
            tx: Vec::new(),
        }
    }

    /// The local address of socket `i`.
    pub fn local(&self, i: usize) -> Option<SocketAddr> {
        self.socks.get(i).map(|(a, _)| *a)
    }

    /// Waits until socket `i` may have datagrams (never, if there is no socket `i`).
    pub async fn readable(&self, i: usize) {
        match self.socks.get(i) {
            Some((_, s)) => {
                let _ = s.readable().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Reads one batch of the datagrams waiting on socket `i` into `out` (cleared first) and
    /// returns how many were read (those too large to be SIP are read but not put in `out`).
    /// A short batch proves the queue empty, so the socket's readiness is cleared there without
    /// the extra would-block read; a full one means more may wait.
    pub fn recv(&mut self, i: usize, out: &mut Vec<Datagram>) -> usize {
        out.clear();
        let Some((_, sock)) = self.socks.get(i) else {
            return 0;
        };
        let fd = sock.as_raw_fd();
        let mut got = 0usize;
        let rx = &mut self.rx;
        let r = sock.try_io(Interest::READABLE, |_| {
            let n = rx.recv(fd)?;
            got = n;
            if n < BATCH {
                // Drained: report would-block so the readiness is cleared now (a datagram that
                // arrives from here on raises a new edge for the next turn).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::WouldBlock {
                // ICMP errors surface here on Linux; they must not stop the listener.
                tracing::debug!(error = %e, "UDP receive error");
            }
        }
        out.extend((0..got).filter_map(|k| rx.datagram(k)));
        got
    }

    /// Queues `data` for `remote` on the socket of its family; false if there is none.
    pub fn queue(&mut self, remote: SocketAddr, data: Bytes) -> bool {
        let Some(sock) = self
            .socks
            .iter()
            .position(|(a, _)| a.is_ipv4() == remote.is_ipv4())
        else {
            return false;
        };
        self.tx.push(Pending { sock, remote, data });
        true
    }

    /// Sends everything queued, a `sendmmsg` per socket and up to [`BATCH`] datagrams at a
    /// time. A full socket buffer drops the rest of the batch (SIP retransmits); other errors
    /// are reported per datagram.
    pub fn flush(&mut self, failed: &mut Vec<SendFailure>) -> usize {
        let mut sent = 0;
        if self.tx.is_empty() {
            return 0;
        }
        let pending = std::mem::take(&mut self.tx);
        for (si, (_, sock)) in self.socks.iter().enumerate() {
            // This socket's datagrams in order, up to BATCH at a time in an array on the stack
            // (a list per flush was an allocation per REGISTER).
            let mut mine = pending.iter().filter(|p| p.sock == si);
            let mut chunk: [&Pending; BATCH] = [&pending[0]; BATCH];
            let mut k = 0;
            loop {
                for p in mine.by_ref().take(BATCH - k) {
                    chunk[k] = p;
                    k += 1;
                }
                if k == 0 {
                    break;
                }
                match send_batch(sock, &chunk[..k]) {
                    Ok(n) if n > 0 => {
                        sent += n;
                        chunk.copy_within(n..k, 0);
                        k -= n;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        let blocked =
                            matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS))
                                || e.kind() == io::ErrorKind::WouldBlock;
                        if blocked {
                            // Dropped like any datagram lost on the way: the rest of this
                            // socket's datagrams, queued or not yet taken.
                            for p in chunk[..k].iter().copied().chain(mine.by_ref()) {
                                failed.push(SendFailure {
                                    remote: p.remote,
                                    error: io::ErrorKind::WouldBlock.into(),
                                });
                            }
                            break;
                        }
                        failed.push(SendFailure {
                            remote: chunk[0].remote,
                            error: e,
                        });
                        chunk.copy_within(1..k, 0);
                        k -= 1;
                    }
                }
            }
        }
        let mut pending = pending;
        pending.clear();
        self.tx = pending;
        sent
    }
}

/// One `sendmmsg` of up to [`BATCH`] datagrams; the number sent.
fn send_batch(sock: &SipSocket, batch: &[&Pending]) -> io::Result<usize> {
    let n = batch.len().min(BATCH);
    // Only the entries used are written: zeroing all BATCH addresses and headers (6 KB) for
    // the one to three datagrams a flush usually carries cost ~4 % of a REGISTER.
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
    for (i, p) in batch[..n].iter().enumerate() {
        // SAFETY: a zeroed sockaddr_storage and mmsghdr are valid values (plain C structs).
        let addr = addrs[i].write(unsafe { std::mem::zeroed() });
        let len = write_sockaddr(addr, p.remote);
        let iov = iovs[i].write(libc::iovec {
            iov_base: p.data.as_ptr() as *mut _,
            iov_len: p.data.len(),
        });
        let h = hdrs[i].write(unsafe { std::mem::zeroed() });
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = len;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers are initialised, each pointing at a live address and a
    // live buffer; the kernel reads no further.
    let sent = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
            n as u32,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

fn write_sockaddr(s: &mut libc::sockaddr_storage, a: SocketAddr) -> u32 {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

#[cfg(test)]
mod flush_tests {
    use super::*;

    fn socket(addr: &str) -> Arc<SipSocket> {
        let s = std::net::UdpSocket::bind(addr).expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        Arc::new(register(s).expect("AsyncFd"))
    }

    /// More datagrams than one `sendmmsg` takes, interleaved over both families: each socket
    /// sends all of its own, in the order queued.
    #[tokio::test]
    async fn flush_sends_every_datagram_in_order_on_its_family() {
        let (a4, a6) = (socket("127.0.0.1:0"), socket("[::1]:0"));
        let (l4, l6) = (
            a4.get_ref().local_addr().expect("addr"),
            a6.get_ref().local_addr().expect("addr"),
        );
        let peer4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let peer6 = std::net::UdpSocket::bind("[::1]:0").expect("bind");
        for p in [&peer4, &peer6] {
            p.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
        }
        let mut io = UdpIo::new(vec![(l4, a4), (l6, a6)], 1500);
        let n = 2 * BATCH + 7;
        for i in 0..n {
            let to = if i % 3 == 0 { &peer6 } else { &peer4 };
            let data = Bytes::from(format!("datagram {i}"));
            assert!(io.queue(to.local_addr().expect("addr"), data));
        }
        let mut failed = Vec::new();
        assert_eq!(io.flush(&mut failed), n);
        assert!(failed.is_empty());
        let mut buf = [0u8; 64];
        for (peer, from, want) in [
            (
                &peer6,
                l6,
                (0..n).filter(|i| i % 3 == 0).collect::<Vec<_>>(),
            ),
            (&peer4, l4, (0..n).filter(|i| i % 3 != 0).collect()),
        ] {
            for i in want {
                let (len, src) = peer.recv_from(&mut buf).expect("datagram");
                assert_eq!(src, from);
                assert_eq!(&buf[..len], format!("datagram {i}").as_bytes());
            }
        }
        // Nothing left queued: a second flush sends nothing.
        assert_eq!(io.flush(&mut failed), 0);
    }
}
