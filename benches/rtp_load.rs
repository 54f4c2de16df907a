//! rtp-load: paced RTP load through the podpbx relay and reference
//! forwarders, on loopback only (127.0.0.1 <-> ::1).
//!
//! For each stream count N, N relayed streams carry 172-byte RTP packets at
//! 50 packets/s in each direction (leg A on IPv4, leg B on IPv6). One thread
//! pinned to the generator CPU paces the packets with `sendmmsg` and receives
//! them back with `recvmmsg` + kernel receive timestamps (SO_TIMESTAMPNS),
//! measuring loss and one-way latency (send timestamp in the payload). The
//! forwarder under test is pinned to the other CPU; its CPU time is read from
//! its thread's CPU clock.
//!
//! Every stream's endpoint has an address of its own (as every phone and
//! every trunk call has): when run as root (the default), the tool moves
//! into a network namespace of its own, where 127.0.0.0/8 and a local route
//! for 2001:db8:ab::/64 on `lo` give each stream its own source IP
//! (stream k: 127.1.x.y and 2001:db8:ab::k+1, one UDP port per family),
//! sent with IP_PKTINFO/IPV6_PKTINFO from one socket per family. Without
//! root (`--no-netns`) all streams share 127.0.0.1/::1 and one port per
//! family, and the shared-port modes cannot tell them apart.
//!
//! Forwarders (the reference ones one socket per leg, epoll):
//! * `relay`      — podpbx_media::Relay (one worker thread), a port pair per leg;
//! * `relay-co`   — the same with interrupt moderation (`RelayConfig::coalesce`,
//!   `--coalesce-us`, default 50 µs);
//! * `relay-shared` — the relay with shared ports (`PortLayout::Shared`,
//!   `--shared-pairs`, default 1 pair per family): peers told apart by their
//!   exact source address, one recvmmsg/sendmmsg for many streams; moderation off;
//! * `relay-shared-co` (`relay-sh-co`) — the same with interrupt moderation: what
//!   podpbx runs by default (shared layout, `RelayConfig::coalesce` 50 µs);
//! * `mmsg`       — minimal recvmmsg/sendmmsg forwarder written for this bench;
//! * `plain`      — minimal recv_from/send_to forwarder, draining each ready
//!   socket until EWOULDBLOCK (the usual nonblocking idiom);
//! * `plain-once` — the same reading one datagram per readiness (level-triggered);
//! * `plain-conn` — `plain` with every socket connected to its stream's endpoint
//!   (recv/send without addresses: the kernel caches the route; what connected
//!   relay legs could gain at most);
//! * `floor`, `floor-co` — the least a forwarder on UDP sockets can do per packet
//!   (`rtp_load/floor.rs`): one socket per family as `relay-shared`, `recvmmsg` in and
//!   `sendmmsg` out through a send-only twin, DF with IP ID 0, and (`-co`) a sleep after a
//!   round that was not full; no per-packet logic at all (the stream is read off the
//!   address plan). The same-run bound for the shared layout: `relay-sh-co / floor-co` is
//!   what the relay's own work costs (needs the namespace);
//! * `direct`     — no forwarder: each endpoint sends to itself (one loopback
//!   hop: the latency floor the `+p50`/`+p99` columns subtract);
//! * `relay-srtp1` — the relay terminating SRTP on leg A (AES_CM_128_HMAC_SHA1_80,
//!   fresh keys per stream): what A sends is authenticated and decrypted, what goes
//!   to A is encrypted; leg B plain (an SRTP trunk meeting a plain phone);
//! * `relay-srtp2` — SRTP on both legs, each with its own keys (decrypt and
//!   re-encrypt every packet).
//!   The generator seals and opens the SRTP packets on its own CPU; the relay's
//!   CPU per packet is what the ratio to `relay` compares.
//!
//! Every loop is bounded in time (warm-up + measurement per point).
//!
//! Usage: rtp-load [--streams 1,100,1000,2000] [--secs 5] [--warmup 1]
//!                 [--modes direct,relay,relay-co,relay-shared,relay-shared-co,mmsg,plain,plain-once,plain-conn,
//!                          floor,floor-co,relay-srtp1,relay-srtp2]
//!                 [--pps 50] [--relay-cpu 0] [--gen-cpu 1] [--batch 32] [--ports 10000]
//!                 [--repeat 1] [--coalesce-us 50] [--shared-pairs 1]
//!                 [--quiet-wait 20] [--no-netns]
//!
//! With `--repeat R` every point runs R times (modes interleaved) and the
//! run with the median CPU time per packet is reported, to damp the noise
//! of a shared machine. Before each point the tool waits (at most
//! `--quiet-wait` seconds) for other processes to leave the CPUs idle, and
//! the `others%` column shows how much CPU other processes still took
//! during the measurement (a point with a large value is not trustworthy).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use podpbx_media::srtp::{Context, Suite};
use podpbx_media::{
    generate_key, Family, FamilyConfig, Leg, PortLayout, Relay, RelayConfig, RemoteMedia, Session,
    SrtpKeys,
};

const PKT_SIZE: usize = 172;
const BATCH: usize = 64;
const LAT_BUCKETS: usize = 200_000; // 1 µs buckets up to 200 ms
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ------------------------------------------------------------------ options

#[derive(Clone)]
struct Opts {
    streams: Vec<usize>,
    secs: f64,
    warmup: f64,
    modes: Vec<Mode>,
    pps: u64,
    relay_cpu: usize,
    gen_cpu: usize,
    batch: usize,
    ports: u16,
    repeat: usize,
    coalesce_us: u64,
    quiet_wait: f64,
    shared_pairs: usize,
    netns: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Relay,
    RelayCoalesce,
    RelayShared,
    RelaySharedCoalesce,
    Mmsg,
    Plain,
    PlainOnce,
    PlainConn,
    Floor,
    FloorCoalesce,
    RelaySrtp1,
    RelaySrtp2,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Relay => "relay",
            Mode::RelayCoalesce => "relay-co",
            Mode::RelayShared => "relay-shared",
            Mode::RelaySharedCoalesce => "relay-sh-co",
            Mode::Mmsg => "mmsg",
            Mode::Plain => "plain",
            Mode::PlainOnce => "plain-once",
            Mode::PlainConn => "plain-conn",
            Mode::Floor => "floor",
            Mode::FloorCoalesce => "floor-co",
            Mode::RelaySrtp1 => "relay-srtp1",
            Mode::RelaySrtp2 => "relay-srtp2",
        }
    }
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        streams: vec![1, 100, 1000, 2000],
        secs: 5.0,
        warmup: 1.0,
        modes: vec![
            Mode::Direct,
            Mode::Relay,
            Mode::Mmsg,
            Mode::Plain,
            Mode::PlainOnce,
        ],
        pps: 50,
        relay_cpu: 0,
        gen_cpu: 1,
        batch: 32,
        ports: 10000,
        repeat: 1,
        coalesce_us: 50,
        quiet_wait: 20.0,
        shared_pairs: 1,
        // SAFETY: geteuid has no preconditions.
        netns: unsafe { libc::geteuid() } == 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let k = args[i].as_str();
        if k == "--no-netns" {
            o.netns = false;
            i += 1;
            continue;
        }
        if k == "--help" || k == "-h" {
            return Err(
                "usage: rtp-load [--streams 1,100,1000,2000] [--secs 5] [--warmup 1] \
                 [--modes direct,relay,relay-co,relay-shared,relay-sh-co,mmsg,plain,plain-once,plain-conn,floor,floor-co,\
                 relay-srtp1,relay-srtp2] \
                 [--pps 50] [--relay-cpu 0] [--gen-cpu 1] [--batch 32] [--ports 10000] [--repeat 1] \
                 [--coalesce-us 50] [--shared-pairs 1] [--quiet-wait 20] [--no-netns]"
                    .into(),
            );
        }
        let v = args.get(i + 1).ok_or(format!("{k} needs a value"))?;
        let num = |s: &str| s.parse::<f64>().map_err(|_| format!("bad number {s}"));
        match k {
            "--streams" => {
                o.streams = v
                    .split(',')
                    .map(|s| s.parse::<usize>().map_err(|_| format!("bad count {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--secs" => o.secs = num(v)?.clamp(0.5, 30.0),
            "--warmup" => o.warmup = num(v)?.clamp(0.2, 10.0),
            "--pps" => o.pps = (num(v)? as u64).clamp(1, 1000),
            "--relay-cpu" => o.relay_cpu = num(v)? as usize,
            "--gen-cpu" => o.gen_cpu = num(v)? as usize,
            "--batch" => o.batch = (num(v)? as usize).clamp(1, 256),
            "--ports" => o.ports = num(v)? as u16,
            "--coalesce-us" => o.coalesce_us = (num(v)? as u64).min(10_000),
            "--quiet-wait" => o.quiet_wait = num(v)?.clamp(0.0, 600.0),
            "--shared-pairs" => o.shared_pairs = (num(v)? as usize).clamp(1, 4),
            "--repeat" => o.repeat = (num(v)? as usize).clamp(1, 5),
            "--modes" => {
                o.modes = v
                    .split(',')
                    .map(|m| match m {
                        "direct" => Ok(Mode::Direct),
                        "relay" => Ok(Mode::Relay),
                        "relay-co" => Ok(Mode::RelayCoalesce),
                        "relay-shared" => Ok(Mode::RelayShared),
                        "relay-sh-co" | "relay-shared-co" => Ok(Mode::RelaySharedCoalesce),
                        "mmsg" => Ok(Mode::Mmsg),
                        "plain" => Ok(Mode::Plain),
                        "plain-once" => Ok(Mode::PlainOnce),
                        "plain-conn" => Ok(Mode::PlainConn),
                        "floor" => Ok(Mode::Floor),
                        "floor-co" => Ok(Mode::FloorCoalesce),
                        "relay-srtp1" => Ok(Mode::RelaySrtp1),
                        "relay-srtp2" => Ok(Mode::RelaySrtp2),
                        _ => Err(format!("unknown mode {m}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown option {k}")),
        }
        i += 2;
    }
    if o.streams.iter().any(|&n| n == 0 || n > 4000) {
        return Err("stream counts must be 1..=4000".into());
    }
    Ok(o)
}

// ------------------------------------------------------------- system bits

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clk: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec.
    unsafe { libc::clock_gettime(clk, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// CPU time of any thread of this process, from its per-thread CPU clock
/// (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)); falls back to schedstat.
fn thread_cpu_ns(tid: i32) -> u64 {
    let clk: libc::clockid_t = (!(tid as libc::clockid_t) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec.
    if unsafe { libc::clock_gettime(clk, &mut ts) } == 0 {
        return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    }
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Wait (at most `max`) until the machine is quiet: other processes use
/// less than 15% of the CPUs. Returns the busy fraction last seen.
fn wait_quiet(max: Duration) -> f64 {
    let t0 = std::time::Instant::now();
    loop {
        let (b0, t0j) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(400));
        let (b1, t1j) = cpu_jiffies();
        let busy = (b1 - b0) as f64 / (t1j - t0j).max(1) as f64;
        if busy < 0.15 || t0.elapsed() >= max {
            return busy;
        }
    }
}

fn user_hz() -> f64 {
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Voluntary context switches of a thread (each one is a sleep/wake cycle).
fn thread_wakeups(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        })
        .unwrap_or(0)
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is POD; CPU_SET with cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                eprintln!(
                    "warning: cannot pin to cpu {cpu}: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: passes a valid int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn big_buffers(s: &UdpSocket) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        buffer(s, force, plain, 16 << 20);
    }
}

/// One socket buffer of `bytes`: the FORCE option when we may (root), else the plain one
/// (capped by the kernel's maximum).
fn buffer(s: &UdpSocket, force: i32, plain: i32, bytes: i32) {
    let fd = s.as_raw_fd();
    if setsockopt_int(fd, libc::SOL_SOCKET, force, bytes).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, bytes);
    }
}

fn raise_nofile() {
    // SAFETY: valid rlimit struct.
    unsafe {
        let mut r: libc::rlimit = mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn nofile_limit() -> u64 {
    // SAFETY: valid rlimit struct.
    unsafe {
        let mut r: libc::rlimit = mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

#[derive(Clone, Copy)]
struct Sa {
    st: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Sa {
    fn new(a: SocketAddr) -> Sa {
        // SAFETY: zeroed storage is valid; we write the matching struct.
        let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match a {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: storage is large enough and aligned.
                unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in, sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: storage is large enough and aligned.
                unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in6, sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Sa {
            st,
            len: len as libc::socklen_t,
        }
    }
}

/// Stream k's endpoint address: its own in the namespace (127.1.x.y,
/// 2001:db8:ab::k+1), else the loopback address every stream shares.
fn stream_ip(netns: bool, v4: bool, k: usize) -> IpAddr {
    match (netns, v4) {
        (false, true) => V4,
        (false, false) => V6,
        (true, true) => IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250) as u8 + 1)),
        (true, false) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xab, 0, 0, 0, 0, k as u16 + 1)),
    }
}

/// The endpoint socket of one family in the namespace: the wildcard address
/// (it receives for every stream address), free to send from any of them.
fn endpoint_socket(ip: IpAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    s.set_nonblocking(true)?;
    if ip.is_ipv6() {
        // IPV6_FREEBIND: a source from the local route's prefix, not an interface address.
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IPV6, 78, 1)?;
    }
    Ok(s)
}

/// Move into a network namespace of our own (root): loopback up and a local
/// route for 2001:db8:ab::/64, the streams' IPv6 addresses. Must run before
/// any thread starts (the namespace is per thread; threads inherit it).
fn enter_netns() -> Result<(), String> {
    // SAFETY: unshare with a flag; no threads exist yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        ));
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &[
            "-6",
            "route",
            "add",
            "local",
            "2001:db8:ab::/64",
            "dev",
            "lo",
        ][..],
    ] {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if !st.success() {
            return Err(format!("ip {} failed", args.join(" ")));
        }
    }
    Ok(())
}

fn nonblocking_udp(ip: IpAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

// ------------------------------------------------------ reference forwarders

/// One reference forwarder: 2N sockets (a_k on ::ffff-free IPv4, b_k on
/// IPv6), packets arriving on a_k leave from b_k to endpoint B and back.
struct RefForwarder {
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicI32>,
    thread: Option<std::thread::JoinHandle<()>>,
    a_addrs: Vec<SocketAddr>,
    b_addrs: Vec<SocketAddr>,
}

/// `dest_a[k]`/`dest_b[k]`: stream k's endpoints A and B.
fn start_ref(
    mode: Mode,
    n: usize,
    dest_a: &[SocketAddr],
    dest_b: &[SocketAddr],
    cpu: usize,
    batch: usize,
) -> io::Result<RefForwarder> {
    // Where a datagram received on socket i goes: a_k's to B, b_k's to A.
    let dests: Vec<SocketAddr> = (0..2 * n)
        .map(|i| {
            if i % 2 == 0 {
                dest_b[i / 2]
            } else {
                dest_a[i / 2]
            }
        })
        .collect();
    let mut socks = Vec::with_capacity(2 * n);
    let (mut a_addrs, mut b_addrs) = (Vec::new(), Vec::new());
    for k in 0..n {
        let a = nonblocking_udp(V4)?;
        let b = nonblocking_udp(V6)?;
        if mode == Mode::PlainConn {
            // Each socket connected to its stream's endpoint: the kernel keeps the
            // route, and send() needs no address.
            a.connect(dest_a[k])?;
            b.connect(dest_b[k])?;
        }
        a_addrs.push(a.local_addr()?);
        b_addrs.push(b.local_addr()?);
        socks.push(a);
        socks.push(b);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let (stop2, tid2) = (stop.clone(), tid.clone());
    let thread = std::thread::Builder::new()
        .name(format!("ref-{}", mode.name()))
        .spawn(move || {
            pin(cpu);
            tid2.store(gettid(), Ordering::SeqCst);
            let r = match mode {
                Mode::Mmsg => run_mmsg(&socks, &dests, &stop2, batch),
                Mode::PlainConn => run_plain(&socks, &dests, &stop2, true, true),
                _ => run_plain(&socks, &dests, &stop2, mode == Mode::Plain, false),
            };
            if let Err(e) = r {
                eprintln!("forwarder {}: {e}", mode.name());
            }
        })?;
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(RefForwarder {
        stop,
        tid,
        thread: Some(thread),
        a_addrs,
        b_addrs,
    })
}

impl Drop for RefForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn epoll_for(socks: &[UdpSocket]) -> io::Result<RawFd> {
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, s) in socks.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(ep)
    }
}

/// recv_from/send_to forwarder; `drain`: read until EWOULDBLOCK per readiness;
/// `connected`: the sockets are connected, recv/send without addresses.
fn run_plain(
    socks: &[UdpSocket],
    dests: &[SocketAddr],
    stop: &AtomicBool,
    drain: bool,
    connected: bool,
) -> io::Result<()> {
    let ep = epoll_for(socks)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid buffer of events.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            let out = if i.is_multiple_of(2) {
                &socks[i + 1]
            } else {
                &socks[i - 1]
            };
            let dest = dests[i];
            if connected {
                while let Ok(len) = socks[i].recv(&mut buf) {
                    let _ = out.send(&buf[..len]);
                }
                continue;
            }
            while let Ok((len, _)) = socks[i].recv_from(&mut buf) {
                let _ = out.send_to(&buf[..len], dest);
                if !drain {
                    break;
                }
            }
        }
    }
    // SAFETY: closing our own epoll fd.
    unsafe { libc::close(ep) };
    Ok(())
}

/// recvmmsg/sendmmsg forwarder: one recvmmsg per readiness, one sendmmsg.
fn run_mmsg(
    socks: &[UdpSocket],
    dests: &[SocketAddr],
    stop: &AtomicBool,
    batch: usize,
) -> io::Result<()> {
    let ep = epoll_for(socks)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut bufs = vec![[0u8; 2048]; batch];
    // SAFETY: zeroed C structs are valid.
    let mut iovs: Vec<libc::iovec> = (0..batch)
        .map(|_| unsafe { mem::zeroed::<libc::iovec>() })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
        .collect();
    let mut out_iovs = iovs.clone();
    let mut out: Vec<libc::mmsghdr> = (0..batch)
        .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for i in 0..batch {
        iovs[i].iov_base = bufs[i].as_mut_ptr() as *mut libc::c_void;
        iovs[i].iov_len = 2048;
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        out_iovs[i].iov_base = bufs[i].as_mut_ptr() as *mut libc::c_void;
        out[i].msg_hdr.msg_iov = &mut out_iovs[i];
        out[i].msg_hdr.msg_iovlen = 1;
    }
    let sas: Vec<Sa> = dests.iter().map(|d| Sa::new(*d)).collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid buffer of events.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            let out_fd = if i.is_multiple_of(2) {
                socks[i + 1].as_raw_fd()
            } else {
                socks[i - 1].as_raw_fd()
            };
            let dest = &sas[i];
            // SAFETY: msgs point at live buffers.
            let r = unsafe {
                libc::recvmmsg(
                    socks[i].as_raw_fd(),
                    msgs.as_mut_ptr(),
                    batch as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r <= 0 {
                continue;
            }
            let r = r as usize;
            for j in 0..r {
                out_iovs[j].iov_len = msgs[j].msg_len as usize;
                out[j].msg_hdr.msg_name = &dest.st as *const _ as *mut libc::c_void;
                out[j].msg_hdr.msg_namelen = dest.len;
            }
            // SAFETY: out points at live buffers.
            unsafe { libc::sendmmsg(out_fd, out.as_mut_ptr(), r as u32, libc::MSG_DONTWAIT) };
        }
    }
    // SAFETY: closing our own epoll fd.
    unsafe { libc::close(ep) };
    Ok(())
}

#[path = "rtp_load/floor.rs"]
mod floor;

// ------------------------------------------------------- generator and sink

/// Payload layout after the 12-byte RTP header:
/// [12..20) tx realtime ns, [20..24) stream, [24] dir, [25] measured flag.
struct GenResult {
    sent: u64,
    received: u64,
    lat: Vec<u32>,
    lat_over: u64,
    cpu_ns: u64,
    gen_cpu_ns: u64,
    busy_jiffies: u64,
    wakeups: u64,
    wall_ns: u64,
    max_lag_ns: u64,
    late: u64,
}

/// The generator's SRTP state for the streams of one endpoint: per stream, the context it
/// protects with (its own key) and the one it opens the relay's packets with (our key).
struct SrtpSide {
    tx: Vec<Context>,
    rx: Vec<Context>,
}

/// Room for the SRTP tag after the packet.
const SEALED: usize = PKT_SIZE + 16;

struct GenSetup {
    n: usize,
    pps: u64,
    /// Where endpoint A sends stream k (relay leg A / ref socket a_k / endpoint B).
    to_from_a: Vec<SocketAddr>,
    to_from_b: Vec<SocketAddr>,
    /// Per stream: the IP_PKTINFO / IPV6_PKTINFO control message choosing its
    /// source address (empty without a namespace: the socket's address).
    src_a: Vec<Cmsg>,
    src_b: Vec<Cmsg>,
    ep_a: UdpSocket,
    ep_b: UdpSocket,
    warmup_ns: u64,
    measure_ns: u64,
    fwd_tid: i32,
    srtp_a: Option<SrtpSide>,
    srtp_b: Option<SrtpSide>,
}

/// A control message (one cmsg) and its length; length 0: none.
#[derive(Clone, Copy)]
struct Cmsg {
    buf: [u64; 8],
    len: usize,
}

impl Cmsg {
    const NONE: Cmsg = Cmsg {
        buf: [0; 8],
        len: 0,
    };

    /// IP_PKTINFO (IPv4) or IPV6_PKTINFO (IPv6) sending from `ip`.
    fn pktinfo(ip: IpAddr) -> Cmsg {
        let mut c = Cmsg::NONE;
        // SAFETY: the msghdr points at our 64-byte buffer, which holds one
        // cmsg header and an in_pktinfo/in6_pktinfo (CMSG_SPACE <= 64).
        unsafe {
            let mut h: libc::msghdr = mem::zeroed();
            h.msg_control = c.buf.as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = mem::size_of_val(&c.buf) as _;
            let cm = libc::CMSG_FIRSTHDR(&h);
            match ip {
                IpAddr::V4(a) => {
                    let sz = mem::size_of::<libc::in_pktinfo>() as u32;
                    (*cm).cmsg_level = libc::IPPROTO_IP;
                    (*cm).cmsg_type = libc::IP_PKTINFO;
                    (*cm).cmsg_len = libc::CMSG_LEN(sz) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut libc::in_pktinfo, info);
                    c.len = libc::CMSG_SPACE(sz) as usize;
                }
                IpAddr::V6(a) => {
                    let sz = mem::size_of::<libc::in6_pktinfo>() as u32;
                    (*cm).cmsg_level = libc::IPPROTO_IPV6;
                    (*cm).cmsg_type = libc::IPV6_PKTINFO;
                    (*cm).cmsg_len = libc::CMSG_LEN(sz) as _;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut libc::in6_pktinfo, info);
                    c.len = libc::CMSG_SPACE(sz) as usize;
                }
            }
        }
        c
    }
}

struct TxBatch {
    bufs: Vec<[u8; SEALED]>,
    /// Stream of each queued packet (to pick its SRTP context).
    streams: Vec<usize>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    n: usize,
}

impl TxBatch {
    fn new() -> Box<TxBatch> {
        // SAFETY: zeroed C structs are valid.
        let mut b = Box::new(TxBatch {
            bufs: vec![[0u8; SEALED]; BATCH],
            streams: vec![0; BATCH],
            iovs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            msgs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            n: 0,
        });
        let bb = &mut *b;
        for i in 0..BATCH {
            bb.iovs[i].iov_base = bb.bufs[i].as_mut_ptr() as *mut libc::c_void;
            bb.iovs[i].iov_len = PKT_SIZE;
            bb.msgs[i].msg_hdr.msg_iov = &mut bb.iovs[i];
            bb.msgs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    fn flush(&mut self, fd: RawFd, srtp: Option<&mut SrtpSide>) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let tx = clock_ns(libc::CLOCK_REALTIME).to_be_bytes();
        for b in &mut self.bufs[..self.n] {
            b[12..20].copy_from_slice(&tx);
        }
        match srtp {
            None => {
                for iov in &mut self.iovs[..self.n] {
                    iov.iov_len = PKT_SIZE;
                }
            }
            Some(side) => {
                for j in 0..self.n {
                    let n = side.tx[self.streams[j]]
                        .protect_rtp(&mut self.bufs[j], PKT_SIZE)
                        .unwrap_or(PKT_SIZE);
                    self.iovs[j].iov_len = n;
                }
            }
        }
        let mut off = 0;
        while off < self.n {
            // SAFETY: msgs point at live buffers and addresses.
            let r = unsafe {
                libc::sendmmsg(fd, self.msgs[off..].as_mut_ptr(), (self.n - off) as u32, 0)
            };
            if r <= 0 {
                off += 1; // drop this one (counts as loss)
            } else {
                off += r as usize;
            }
        }
        let sent = self.n as u64;
        self.n = 0;
        sent
    }
}

struct RxBatch {
    bufs: Vec<[u8; 2048]>,
    ctrl: Vec<[u64; 16]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RxBatch {
    fn new() -> Box<RxBatch> {
        // SAFETY: zeroed C structs are valid.
        let mut b = Box::new(RxBatch {
            bufs: vec![[0u8; 2048]; BATCH],
            ctrl: vec![[0u64; 16]; BATCH],
            iovs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            msgs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
        });
        let bb = &mut *b;
        for i in 0..BATCH {
            bb.iovs[i].iov_base = bb.bufs[i].as_mut_ptr() as *mut libc::c_void;
            bb.iovs[i].iov_len = 2048;
            bb.msgs[i].msg_hdr.msg_iov = &mut bb.iovs[i];
            bb.msgs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// Drain a socket; returns (received measured, latencies recorded).
    fn drain(&mut self, fd: RawFd, res: &mut GenResult, mut srtp: Option<&mut SrtpSide>) {
        loop {
            for i in 0..BATCH {
                self.msgs[i].msg_hdr.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
                self.msgs[i].msg_hdr.msg_controllen = mem::size_of::<[u64; 16]>() as _;
            }
            // SAFETY: msgs point at live buffers.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r <= 0 {
                return;
            }
            let r = r as usize;
            for i in 0..r {
                let mut len = self.msgs[i].msg_len as usize;
                if let Some(side) = srtp.as_deref_mut() {
                    // SSRC = 2 * stream + direction + 1 (clear in SRTP).
                    let b = &self.bufs[i];
                    let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
                    let k = ssrc.saturating_sub(1) / 2;
                    let Some(ctx) = side.rx.get_mut(k) else {
                        continue;
                    };
                    match ctx.unprotect_rtp(&mut self.bufs[i][..len]) {
                        Ok(n) => len = n,
                        Err(_) => continue,
                    }
                }
                let p = &self.bufs[i];
                if len != PKT_SIZE || p[25] != 1 {
                    continue;
                }
                res.received += 1;
                let mut tx = [0u8; 8];
                tx.copy_from_slice(&p[12..20]);
                let tx = u64::from_be_bytes(tx);
                if let Some(rx) = rx_timestamp(&self.msgs[i].msg_hdr) {
                    let us = rx.saturating_sub(tx) / 1000;
                    if (us as usize) < LAT_BUCKETS {
                        res.lat[us as usize] += 1;
                    } else {
                        res.lat_over += 1;
                    }
                }
            }
            if r < BATCH {
                return;
            }
        }
    }
}

fn rx_timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the kernel filled msg_control; CMSG_* walk within controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

fn run_generator(g: GenSetup) -> GenResult {
    let n = g.n;
    let period = 1_000_000_000 / g.pps;
    // Schedule: each stream and direction once per period, spread evenly.
    let slots = 2 * n;
    let mut sched: Vec<(u64, u32, u8)> = (0..slots)
        .map(|i| {
            let k = (i / 2) as u32;
            let d = (i % 2) as u8;
            (i as u64 * period / slots as u64, k, d)
        })
        .collect();
    sched.sort_by_key(|x| x.0);
    let dest_a: Vec<Sa> = g.to_from_a.iter().map(|a| Sa::new(*a)).collect();
    let dest_b: Vec<Sa> = g.to_from_b.iter().map(|a| Sa::new(*a)).collect();
    let mut seq = vec![0u16; slots];
    let mut tx_a = TxBatch::new();
    let mut tx_b = TxBatch::new();
    let mut rx = RxBatch::new();
    let (fd_a, fd_b) = (g.ep_a.as_raw_fd(), g.ep_b.as_raw_fd());
    let (mut srtp_a, mut srtp_b) = (g.srtp_a, g.srtp_b);
    for s in [&g.ep_a, &g.ep_b] {
        let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
    }
    let mut res = GenResult {
        sent: 0,
        received: 0,
        lat: vec![0; LAT_BUCKETS],
        lat_over: 0,
        cpu_ns: 0,
        gen_cpu_ns: 0,
        busy_jiffies: 0,
        wakeups: 0,
        wall_ns: 0,
        max_lag_ns: 0,
        late: 0,
    };
    let t0 = mono_ns() + 2_000_000;
    let m_start = t0 + g.warmup_ns;
    let m_end = m_start + g.measure_ns;
    let (mut cpu0, mut wall0, mut wake0) = (None, 0u64, 0u64);
    let (mut gcpu0, mut busy0) = (0u64, 0u64);
    let mut cycle: u64 = 0;
    let mut pos = 0usize;
    loop {
        let now = mono_ns();
        if cpu0.is_none() && now >= m_start {
            cpu0 = Some(thread_cpu_ns(g.fwd_tid));
            wake0 = thread_wakeups(g.fwd_tid);
            gcpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
            busy0 = cpu_jiffies().0;
            wall0 = now;
        }
        if now >= m_end {
            res.cpu_ns = thread_cpu_ns(g.fwd_tid).saturating_sub(cpu0.unwrap_or(0));
            res.wakeups = thread_wakeups(g.fwd_tid).saturating_sub(wake0);
            res.gen_cpu_ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(gcpu0);
            res.busy_jiffies = cpu_jiffies().0.saturating_sub(busy0);
            res.wall_ns = now - wall0;
            break;
        }
        // Send everything due.
        loop {
            let (off, k, d) = sched[pos];
            let due = t0 + cycle * period + off;
            if due > now {
                break;
            }
            let lag = now - due;
            let measured = due >= m_start && due < m_end;
            res.max_lag_ns = res.max_lag_ns.max(lag);
            if lag > 1_000_000 && measured {
                res.late += 1;
            }
            let idx = k as usize * 2 + d as usize;
            let s = seq[idx];
            seq[idx] = s.wrapping_add(1);
            let (tx, dest, fd, side) = if d == 0 {
                (&mut tx_a, &dest_a[k as usize], fd_a, srtp_a.as_mut())
            } else {
                (&mut tx_b, &dest_b[k as usize], fd_b, srtp_b.as_mut())
            };
            let j = tx.n;
            let b = &mut tx.bufs[j];
            b[0] = 0x80;
            b[1] = 0;
            b[2..4].copy_from_slice(&s.to_be_bytes());
            b[4..8].copy_from_slice(&(s as u32 * 160).to_be_bytes());
            b[8..12].copy_from_slice(&(idx as u32 + 1).to_be_bytes());
            b[20..24].copy_from_slice(&k.to_be_bytes());
            b[24] = d;
            b[25] = measured as u8;
            tx.msgs[j].msg_hdr.msg_name = &dest.st as *const _ as *mut libc::c_void;
            tx.msgs[j].msg_hdr.msg_namelen = dest.len;
            tx.streams[j] = k as usize;
            let cm = if d == 0 {
                &g.src_a[k as usize]
            } else {
                &g.src_b[k as usize]
            };
            if cm.len > 0 {
                tx.msgs[j].msg_hdr.msg_control = cm.buf.as_ptr() as *mut libc::c_void;
                tx.msgs[j].msg_hdr.msg_controllen = cm.len as _;
            }
            tx.n += 1;
            if measured {
                res.sent += 1;
            }
            if tx.n == BATCH {
                tx.flush(fd, side);
            }
            pos += 1;
            if pos == sched.len() {
                pos = 0;
                cycle += 1;
            }
        }
        tx_a.flush(fd_a, srtp_a.as_mut());
        tx_b.flush(fd_b, srtp_b.as_mut());
        rx.drain(fd_a, &mut res, srtp_a.as_mut());
        rx.drain(fd_b, &mut res, srtp_b.as_mut());
        // Sleep until the next packet is due (at most 200 µs, to keep draining).
        let (off, _, _) = sched[pos];
        let due = t0 + cycle * period + off;
        let now = mono_ns();
        if due > now + 20_000 {
            std::thread::sleep(Duration::from_nanos((due - now).min(200_000)));
        }
    }
    // Let the last packets arrive (bounded).
    let end = mono_ns() + 300_000_000;
    while mono_ns() < end {
        rx.drain(fd_a, &mut res, srtp_a.as_mut());
        rx.drain(fd_b, &mut res, srtp_b.as_mut());
        std::thread::sleep(Duration::from_millis(1));
    }
    res
}

fn percentile(lat: &[u32], over: u64, p: f64) -> f64 {
    let total: u64 = lat.iter().map(|&x| x as u64).sum::<u64>() + over;
    if total == 0 {
        return f64::NAN;
    }
    let target = (total as f64 * p).ceil() as u64;
    let mut acc = 0u64;
    for (i, &c) in lat.iter().enumerate() {
        acc += c as u64;
        if acc >= target {
            return i as f64 + 0.5;
        }
    }
    LAT_BUCKETS as f64
}

// ------------------------------------------------------------------ driver

struct Row {
    streams: usize,
    mode: Mode,
    target_pps: f64,
    sent_pps: f64,
    loss: f64,
    cpu_ns_pkt: f64,
    cpu_pct: f64,
    p50: f64,
    p99: f64,
    late_pct: f64,
    pkts_per_wake: f64,
    /// CPU used by other processes during the window, % of one CPU.
    others_pct: f64,
}

fn run_point(o: &Opts, n: usize, mode: Mode) -> Result<Row, String> {
    if o.quiet_wait > 0.0 {
        wait_quiet(Duration::from_secs_f64(o.quiet_wait));
    }
    // The endpoints: one socket per family; with a namespace, bound to the
    // wildcard address and sending from each stream's own address.
    let (ep_a, ep_b) = if o.netns {
        (
            endpoint_socket(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).map_err(|e| e.to_string())?,
            endpoint_socket(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).map_err(|e| e.to_string())?,
        )
    } else {
        (
            nonblocking_udp(V4).map_err(|e| e.to_string())?,
            nonblocking_udp(V6).map_err(|e| e.to_string())?,
        )
    };
    big_buffers(&ep_a);
    big_buffers(&ep_b);
    let (port_a, port_b) = (
        ep_a.local_addr().map_err(|e| e.to_string())?.port(),
        ep_b.local_addr().map_err(|e| e.to_string())?.port(),
    );
    // Stream k's endpoints.
    let stream_a: Vec<SocketAddr> = (0..n)
        .map(|k| SocketAddr::new(stream_ip(o.netns, true, k), port_a))
        .collect();
    let stream_b: Vec<SocketAddr> = (0..n)
        .map(|k| SocketAddr::new(stream_ip(o.netns, false, k), port_b))
        .collect();
    let cmsgs = |eps: &[SocketAddr]| -> Vec<Cmsg> {
        eps.iter()
            .map(|a| {
                if o.netns {
                    Cmsg::pktinfo(a.ip())
                } else {
                    Cmsg::NONE
                }
            })
            .collect()
    };
    let (src_a, src_b) = (cmsgs(&stream_a), cmsgs(&stream_b));
    let shared = matches!(
        mode,
        Mode::RelayShared | Mode::RelaySharedCoalesce | Mode::Floor | Mode::FloorCoalesce
    );
    if shared && !o.netns {
        return Err("shared ports need a stream address each: run as root (namespace)".into());
    }

    let mut _relay: Option<(Relay, Vec<Session>)> = None;
    let mut _ref: Option<RefForwarder> = None;
    let mut _floor: Option<floor::Floor> = None;
    let (mut srtp_a, mut srtp_b) = (None, None);
    let (to_from_a, to_from_b, fwd_tid) = match mode {
        // Each endpoint sends to itself: one loopback hop, no forwarder.
        Mode::Direct => (stream_a.clone(), stream_b.clone(), gettid()),
        Mode::Relay
        | Mode::RelayCoalesce
        | Mode::RelayShared
        | Mode::RelaySharedCoalesce
        | Mode::RelaySrtp1
        | Mode::RelaySrtp2 => {
            let pairs = (n as u16 + 8) * 2;
            let cfg = RelayConfig {
                ipv4: Some(FamilyConfig {
                    addr: V4,
                    ports: o.ports..=o.ports + 2 * pairs - 1,
                }),
                ipv6: Some(FamilyConfig {
                    addr: V6,
                    ports: o.ports..=o.ports + 2 * pairs - 1,
                }),
                worker_cpus: vec![o.relay_cpu],
                batch: o.batch,
                media_timeout: Duration::ZERO,
                coalesce: if matches!(mode, Mode::RelayCoalesce | Mode::RelaySharedCoalesce) {
                    Duration::from_micros(o.coalesce_us)
                } else {
                    Duration::ZERO
                },
                layout: if shared {
                    PortLayout::Shared {
                        pairs: o.shared_pairs,
                    }
                } else {
                    PortLayout::PerCall
                },
                recv_buffer: shared.then_some(4 << 20),
                report_latching: false,
                ..RelayConfig::default()
            };
            let (relay, _events) = Relay::start(cfg).map_err(|e| e.to_string())?;
            let mut sessions = Vec::with_capacity(n);
            let (mut ta, mut tb) = (Vec::new(), Vec::new());
            for k in 0..n {
                let s = relay
                    .allocate(Family::V4, Family::V6)
                    .map_err(|e| e.to_string())?;
                s.set_remote(Leg::A, RemoteMedia::new(stream_a[k]))
                    .map_err(|e| e.to_string())?;
                s.set_remote(Leg::B, RemoteMedia::new(stream_b[k]))
                    .map_err(|e| e.to_string())?;
                ta.push(s.local(Leg::A).rtp);
                tb.push(s.local(Leg::B).rtp);
                for (leg, side, on) in [
                    (
                        Leg::A,
                        &mut srtp_a,
                        matches!(mode, Mode::RelaySrtp1 | Mode::RelaySrtp2),
                    ),
                    (Leg::B, &mut srtp_b, mode == Mode::RelaySrtp2),
                ] {
                    if !on {
                        continue;
                    }
                    let keys = SrtpKeys {
                        suite: Suite::AesCm128HmacSha1_80,
                        remote: generate_key().map_err(|e| e.to_string())?,
                        local: generate_key().map_err(|e| e.to_string())?,
                    };
                    s.set_srtp(leg, Some(&keys)).map_err(|e| e.to_string())?;
                    let side = side.get_or_insert_with(|| SrtpSide {
                        tx: Vec::with_capacity(n),
                        rx: Vec::with_capacity(n),
                    });
                    side.tx.push(Context::new(keys.suite, &keys.remote));
                    side.rx.push(Context::new(keys.suite, &keys.local));
                }
                sessions.push(s);
            }
            relay.sync(Duration::from_secs(10));
            let tid = relay.worker_thread_ids()[0];
            _relay = Some((relay, sessions));
            (ta, tb, tid)
        }
        Mode::Floor | Mode::FloorCoalesce => {
            let coalesce = if mode == Mode::FloorCoalesce {
                o.coalesce_us * 1000
            } else {
                0
            };
            let f = floor::start(n, &stream_a, &stream_b, o.relay_cpu, o.batch, coalesce)
                .map_err(|e| e.to_string())?;
            let r = (
                vec![f.a_addr; n],
                vec![f.b_addr; n],
                f.tid.load(Ordering::SeqCst),
            );
            _floor = Some(f);
            r
        }
        Mode::Mmsg | Mode::Plain | Mode::PlainOnce | Mode::PlainConn => {
            let f = start_ref(mode, n, &stream_a, &stream_b, o.relay_cpu, o.batch)
                .map_err(|e| e.to_string())?;
            let r = (
                f.a_addrs.clone(),
                f.b_addrs.clone(),
                f.tid.load(Ordering::SeqCst),
            );
            _ref = Some(f);
            r
        }
    };

    let setup = GenSetup {
        n,
        pps: o.pps,
        to_from_a,
        to_from_b,
        src_a,
        src_b,
        ep_a,
        ep_b,
        warmup_ns: (o.warmup * 1e9) as u64,
        measure_ns: (o.secs * 1e9) as u64,
        fwd_tid,
        srtp_a,
        srtp_b,
    };
    let gen_cpu = o.gen_cpu;
    let res = std::thread::Builder::new()
        .name("rtp-gen".into())
        .spawn(move || {
            pin(gen_cpu);
            run_generator(setup)
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "generator panicked".to_string())?;

    if let Some((relay, _)) = &_relay {
        let t = relay.totals();
        if t.drops.total() > 0 {
            eprintln!(
                "{n} streams {}: relay dropped {:?} (forwarded {})",
                mode.name(),
                t.drops,
                t.forwarded_packets
            );
        }
    }
    let secs = res.wall_ns as f64 / 1e9;
    let loss = if res.sent > 0 {
        1.0 - res.received as f64 / res.sent as f64
    } else {
        0.0
    };
    let (cpu_ns_pkt, cpu_pct) = if mode == Mode::Direct || res.received == 0 {
        (f64::NAN, f64::NAN)
    } else {
        (
            res.cpu_ns as f64 / res.received as f64,
            100.0 * res.cpu_ns as f64 / res.wall_ns.max(1) as f64,
        )
    };
    Ok(Row {
        streams: n,
        mode,
        target_pps: (2 * n) as f64 * o.pps as f64,
        sent_pps: res.sent as f64 / secs.max(1e-9),
        loss,
        cpu_ns_pkt,
        cpu_pct,
        p50: percentile(&res.lat, res.lat_over, 0.50),
        p99: percentile(&res.lat, res.lat_over, 0.99),
        late_pct: 100.0 * res.late as f64 / res.sent.max(1) as f64,
        others_pct: {
            let busy_ns = res.busy_jiffies as f64 * 1e9 / user_hz();
            let ours = res.gen_cpu_ns as f64
                + if mode == Mode::Direct {
                    0.0
                } else {
                    res.cpu_ns as f64
                };
            (100.0 * (busy_ns - ours) / res.wall_ns.max(1) as f64).max(0.0)
        },
        pkts_per_wake: if mode == Mode::Direct {
            f64::NAN
        } else {
            res.received as f64 / res.wakeups.max(1) as f64
        },
    })
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if o.netns {
        if let Err(e) = enter_netns() {
            eprintln!("{e} (run as root, or with --no-netns)");
            std::process::exit(2);
        }
    }
    raise_nofile();
    let max_n = o.streams.iter().copied().max().unwrap_or(1);
    if (max_n as u64) * 4 + 64 > nofile_limit() {
        eprintln!(
            "warning: RLIMIT_NOFILE {} may be too low for {max_n} streams",
            nofile_limit()
        );
    }
    println!(
        "rtp-load: {} B packets, {} pps per stream and direction, {}s warm-up + {}s per point, \
         forwarder on cpu {}, generator+sink on cpu {}, batch {}, {}",
        PKT_SIZE,
        o.pps,
        o.warmup,
        o.secs,
        o.relay_cpu,
        o.gen_cpu,
        o.batch,
        if o.netns {
            "own namespace, an address per stream"
        } else {
            "host loopback, one address for all streams"
        }
    );
    println!(
        "{:>7} {:>10} {:>9} {:>9} {:>8} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5} {:>8} {:>7}",
        "streams",
        "mode",
        "target/s",
        "sent/s",
        "loss%",
        "cpu ns/pkt",
        "cpu%",
        "p50 us",
        "p99 us",
        "+p50 us",
        "+p99 us",
        "late%",
        "pkt/wake",
        "others%"
    );
    let mut rows: Vec<Row> = Vec::new();
    for &n in &o.streams {
        let mut runs: Vec<Vec<Row>> = o.modes.iter().map(|_| Vec::new()).collect();
        for _ in 0..o.repeat {
            for (mi, &mode) in o.modes.iter().enumerate() {
                match run_point(&o, n, mode) {
                    Ok(r) => runs[mi].push(r),
                    Err(e) => println!("{n:>7} {:>10} failed: {e}", mode.name()),
                }
                // Let sockets close and the CPUs settle between points.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let mut direct: Option<(f64, f64)> = None;
        for mut rs in runs {
            if rs.is_empty() {
                continue;
            }
            rs.sort_by(|a, b| a.cpu_ns_pkt.total_cmp(&b.cpu_ns_pkt));
            let r = rs.swap_remove(rs.len() / 2);
            if r.mode == Mode::Direct {
                direct = Some((r.p50, r.p99));
            }
            let (ap50, ap99) = match direct {
                Some((d50, d99)) if r.mode != Mode::Direct => (r.p50 - d50, r.p99 - d99),
                _ => (f64::NAN, f64::NAN),
            };
            println!(
                "{:>7} {:>10} {:>9.0} {:>9.0} {:>8.3} {:>10.0} {:>6.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>5.1} {:>8.1} {:>7.1}",
                r.streams,
                r.mode.name(),
                r.target_pps,
                r.sent_pps,
                r.loss * 100.0,
                r.cpu_ns_pkt,
                r.cpu_pct,
                r.p50,
                r.p99,
                ap50,
                ap99,
                r.late_pct,
                r.pkts_per_wake,
                r.others_pct
            );
            rows.push(r);
        }
    }
    println!();
    println!("CPU time per forwarded packet, relay vs references (lower is better):");
    println!(
        "{:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>12} {:>11} {:>12}",
        "streams",
        "variant",
        "ns/pkt",
        "mmsg",
        "plain",
        "plain1",
        "/mmsg",
        "/plain",
        "/plain1",
        "+p99 us",
        "loss%",
        ""
    );
    for &n in &o.streams {
        let find = |m: Mode| rows.iter().find(|r| r.streams == n && r.mode == m);
        let ns = |m: Mode| find(m).map_or(f64::NAN, |r| r.cpu_ns_pkt);
        let direct_p99 = find(Mode::Direct).map_or(0.0, |r| r.p99);
        let (m, p, p1) = (ns(Mode::Mmsg), ns(Mode::Plain), ns(Mode::PlainOnce));
        for v in [
            Mode::Relay,
            Mode::RelayCoalesce,
            Mode::RelayShared,
            Mode::RelaySharedCoalesce,
            Mode::RelaySrtp1,
            Mode::RelaySrtp2,
            Mode::PlainConn,
            Mode::Floor,
            Mode::FloorCoalesce,
        ] {
            let Some(row) = find(v) else { continue };
            let r = row.cpu_ns_pkt;
            println!(
                "{n:>7} {:>10} {r:>9.0} {m:>9.0} {p:>9.0} {p1:>9.0} {:>9.3} {:>11.3} {:>11.3} {:>12.1} {:>11.3}",
                v.name(),
                r / m,
                r / p,
                r / p1,
                row.p99 - direct_p99,
                row.loss * 100.0
            );
        }
        let relay = ns(Mode::Relay);
        for v in [Mode::RelaySrtp1, Mode::RelaySrtp2] {
            if find(v).is_some() {
                println!(
                    "{n:>7} {:>10} / relay (same run): {:.3}",
                    v.name(),
                    ns(v) / relay
                );
            }
        }
    }
}
