//! `floor` / `floor-co`: the least a forwarder built on UDP sockets can do per packet, as a
//! reference for the relay's shared layout (issue #14). One socket per family, every stream's
//! peer demultiplexed by its source address, `recvmmsg` in and `sendmmsg` out through a
//! send-only twin, DF with IP ID 0 on IPv4, and (`floor-co`) the same sleep after a round that
//! was not full as the relay's moderation. What it leaves out is everything the relay does in
//! user space per packet: no hash lookup (the stream number is read off the bench's address
//! plan), no latching, no RTP parsing, no statistics, no bleed checks, no counters. So
//! `relay-sh-co / floor-co` is what the relay's own work costs, and `floor-co / plain` is the
//! best ratio any socket forwarder could reach on this host.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{buffer, gettid, pin, setsockopt_int, Sa, V4, V6};

pub(super) struct Floor {
    stop: Arc<AtomicBool>,
    pub(super) tid: Arc<AtomicI32>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(super) a_addr: SocketAddr,
    pub(super) b_addr: SocketAddr,
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket of `ip`'s family with SO_REUSEPORT set, not yet bound.
fn reuse_socket(ip: IpAddr) -> io::Result<UdpSocket> {
    let dom = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned by the UdpSocket from here.
    let fd = unsafe {
        libc::socket(
            dom,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let s = unsafe { UdpSocket::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if ip.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(s)
}

fn bind(s: &UdpSocket, a: SocketAddr) -> io::Result<()> {
    let sa = Sa::new(a);
    // SAFETY: sa holds a sockaddr of its length.
    let r = unsafe { libc::bind(s.as_raw_fd(), &sa.st as *const _ as *const _, sa.len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The shared socket of one family and its send-only twin (bound to the same port and
/// connected to itself, so the kernel never hands it a peer's datagram and nothing waits
/// on its queue).
fn pair(ip: IpAddr) -> io::Result<(UdpSocket, UdpSocket)> {
    let main = reuse_socket(ip)?;
    bind(&main, SocketAddr::new(ip, 0))?;
    let addr = main.local_addr()?;
    // The relay's shared sockets get 4 MB in this bench (`recv_buffer`): the same here.
    buffer(&main, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 4 << 20);
    let twin = reuse_socket(ip)?;
    setsockopt_int(twin.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 0)?;
    bind(&twin, addr)?;
    twin.connect(addr)?;
    if ip.is_ipv4() {
        setsockopt_int(
            twin.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
    }
    for s in [&main, &twin] {
        setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 0)?;
    }
    Ok((main, twin))
}

/// Stream number of a source address in the namespace's plan (`stream_ip`).
fn stream_of(st: &libc::sockaddr_storage) -> usize {
    match st.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET datagram.
            let sin = unsafe { &*(st as *const _ as *const libc::sockaddr_in) };
            let o = sin.sin_addr.s_addr.to_ne_bytes();
            o[2] as usize * 250 + (o[3] as usize).wrapping_sub(1)
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 datagram.
            let sin6 = unsafe { &*(st as *const _ as *const libc::sockaddr_in6) };
            let a = sin6.sin6_addr.s6_addr;
            (u16::from_be_bytes([a[14], a[15]]) as usize).wrapping_sub(1)
        }
        _ => usize::MAX,
    }
}

/// One family's receive and send batch.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    out_iovs: Vec<libc::iovec>,
    out: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(batch: usize) -> Box<Batch> {
        // SAFETY: zeroed C structs are valid values.
        let z = || unsafe { mem::zeroed::<libc::mmsghdr>() };
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; 2048]; batch],
            // SAFETY: as above.
            names: vec![unsafe { mem::zeroed() }; batch],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; batch],
            msgs: (0..batch).map(|_| z()).collect(),
            // SAFETY: as above.
            out_iovs: vec![unsafe { mem::zeroed() }; batch],
            out: (0..batch).map(|_| z()).collect(),
        });
        for i in 0..batch {
            b.iovs[i].iov_base = b.bufs[i].as_mut_ptr() as *mut libc::c_void;
            b.iovs[i].iov_len = 2048;
            b.msgs[i].msg_hdr.msg_iov = &mut b.iovs[i];
            b.msgs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// Receive up to a batch from `from` and send what belongs to a stream out of `to`.
    fn forward(&mut self, from: RawFd, to: RawFd, dests: &[Sa]) -> usize {
        let batch = self.msgs.len();
        for i in 0..batch {
            self.msgs[i].msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            self.msgs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: msgs point at live buffers and names.
        let r = unsafe {
            libc::recvmmsg(
                from,
                self.msgs.as_mut_ptr(),
                batch as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            return 0;
        }
        let r = r as usize;
        let mut m = 0;
        for j in 0..r {
            let Some(d) = dests.get(stream_of(&self.names[j])) else {
                continue;
            };
            self.out_iovs[m].iov_base = self.bufs[j].as_mut_ptr() as *mut libc::c_void;
            self.out_iovs[m].iov_len = self.msgs[j].msg_len as usize;
            self.out[m].msg_hdr.msg_iov = &mut self.out_iovs[m];
            self.out[m].msg_hdr.msg_iovlen = 1;
            self.out[m].msg_hdr.msg_name = &d.st as *const _ as *mut libc::c_void;
            self.out[m].msg_hdr.msg_namelen = d.len;
            m += 1;
        }
        if m > 0 {
            // SAFETY: out points at live buffers and addresses.
            unsafe { libc::sendmmsg(to, self.out.as_mut_ptr(), m as u32, libc::MSG_DONTWAIT) };
        }
        r
    }
}

/// Start the floor forwarder for `n` streams: endpoint A's datagrams (IPv4) go to stream
/// k's endpoint B (IPv6) and back.
pub(super) fn start(
    n: usize,
    dest_a: &[SocketAddr],
    dest_b: &[SocketAddr],
    cpu: usize,
    batch: usize,
    coalesce_ns: u64,
) -> io::Result<Floor> {
    let (v4, twin4) = pair(V4)?;
    let (v6, twin6) = pair(V6)?;
    let (a_addr, b_addr) = (v4.local_addr()?, v6.local_addr()?);
    // What arrives on the IPv4 socket from stream k's A goes to its B, and back.
    let to_b: Vec<Sa> = dest_b[..n].iter().map(|d| Sa::new(*d)).collect();
    let to_a: Vec<Sa> = dest_a[..n].iter().map(|d| Sa::new(*d)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let (stop2, tid2) = (stop.clone(), tid.clone());
    let thread = std::thread::Builder::new()
        .name("ref-floor".into())
        .spawn(move || {
            pin(cpu);
            // The relay's worker asks for the same 1 µs timer slack for its sleeps.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
            tid2.store(gettid(), Ordering::SeqCst);
            if let Err(e) = run(
                [&v4, &v6],
                [&twin6, &twin4],
                [&to_b, &to_a],
                &stop2,
                batch,
                coalesce_ns,
            ) {
                eprintln!("forwarder floor: {e}");
            }
        })?;
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Floor {
        stop,
        tid,
        thread: Some(thread),
        a_addr,
        b_addr,
    })
}

fn run(
    from: [&UdpSocket; 2],
    to: [&UdpSocket; 2],
    dests: [&[Sa]; 2],
    stop: &AtomicBool,
    batch: usize,
    coalesce_ns: u64,
) -> io::Result<()> {
    // SAFETY: plain syscalls with valid arguments; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    for (i, s) in from.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut batches = [Batch::new(batch), Batch::new(batch)];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    let sleep = libc::timespec {
        tv_sec: 0,
        tv_nsec: coalesce_ns as libc::c_long,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0;
        let mut full = false;
        for f in 0..2 {
            let r = batches[f].forward(from[f].as_raw_fd(), to[f].as_raw_fd(), dests[f]);
            full |= r == batch;
            got += r;
        }
        if got == 0 {
            // SAFETY: valid buffer of events.
            unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 2, 100) };
        } else if coalesce_ns > 0 && !full {
            // SAFETY: a valid timespec; an interrupted sleep is fine.
            unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &sleep, std::ptr::null_mut())
            };
        }
    }
    // SAFETY: closing our own epoll fd.
    unsafe { libc::close(ep) };
    Ok(())
}
