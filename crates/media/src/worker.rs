//! A relay worker: one thread, one epoll instance over the nonblocking media
//! sockets of its sessions, and a fixed set of receive buffers.
//!
//! Hot path (per readable socket): one `recvmmsg` into the worker's buffers,
//! a look at the first bytes of each datagram ([`crate::packet::classify`]),
//! the source-address check (latching), counter updates with relaxed atomic
//! stores, and one `sendmmsg` per destination socket whose iovecs point at
//! the very buffers the datagrams were received into. No allocation, no lock,
//! no logging per packet; the payload is never copied. RTP packets of the
//! leg's telephone-event payload type also get their 4-byte RFC 4733 payload
//! read in place, so that the end of each DTMF event is reported once
//! ([`Event::Dtmf`]); they are forwarded like any other packet.

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::dtmf::{self, TimedPacket};
use crate::packet::{classify, telephone_event, Kind, RtpInfo};
use crate::relay::{
    Event, LatchMode, LatchPolicy, Leg, Pools, RemoteMedia, SessionId, SessionShared,
};
use crate::secure::{LegSrtp, Plain, SessionSrtp, Transform};
use crate::stats::{Counters, SeqState, C};
use crate::sys::{self, Endpoint, RawAddr};

/// Largest recvmmsg/sendmmsg batch.
pub(crate) const MAX_BATCH: usize = 256;
/// Receive buffer per datagram; larger datagrams are dropped (oversize).
pub(crate) const BUF_SIZE: usize = 2048;
const MAX_EVENTS: usize = 1024;
const WAKE_TOKEN: u64 = u64::MAX;
const GEN_MASK: u64 = 0x3fff_ffff;
const MAX_CLOCKS: usize = 16;
const DEFAULT_CLOCK: u32 = 8000;
/// `WLeg::te_pt` when the leg's SDP has no telephone-event (RTP payload
/// types are 7 bits: no packet matches it).
const NO_PT: u8 = 0xff;
/// SDP RTP IP, SDP RTCP IP, signalling IP.
const MAX_KNOWN: usize = 3;

pub(crate) struct WorkerConfig {
    pub(crate) index: usize,
    pub(crate) media_timeout_ms: u64,
    pub(crate) hold_timeout_ms: u64,
    pub(crate) latch: LatchPolicy,
    pub(crate) batch: usize,
    pub(crate) cpu: Option<usize>,
    pub(crate) coalesce_ns: u64,
    pub(crate) epoch_ns: u64,
}

impl WorkerConfig {
    /// How often media timeouts are checked: a quarter of the shortest
    /// timeout, between 20 ms and 1 s; never when both are disabled.
    fn tick_ns(&self) -> Option<u64> {
        let shortest = [self.media_timeout_ms, self.hold_timeout_ms]
            .into_iter()
            .filter(|t| *t > 0)
            .min()?;
        Some((shortest / 4).clamp(20, 1000) * 1_000_000)
    }
}

pub(crate) struct NewLeg {
    pub(crate) rtp: UdpSocket,
    pub(crate) rtcp: UdpSocket,
    pub(crate) ip: IpAddr,
    pub(crate) even_port: u16,
}

pub(crate) struct NewSession {
    pub(crate) id: SessionId,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) legs: [NewLeg; 2],
}

pub(crate) enum Cmd {
    Add(Box<NewSession>),
    SetRemote {
        id: SessionId,
        leg: usize,
        remote: Box<RemoteMedia>,
    },
    SetHold {
        id: SessionId,
        leg: usize,
        hold: bool,
    },
    Relatch {
        id: SessionId,
        leg: usize,
    },
    Srtp {
        id: SessionId,
        leg: usize,
        ctx: Option<Box<LegSrtp>>,
    },
    Dtmf {
        id: SessionId,
        leg: usize,
        packets: Vec<TimedPacket>,
    },
    Release {
        id: SessionId,
    },
    Sync(mpsc::Sender<()>),
    Shutdown,
}

/// Milliseconds since the relay epoch, plus one so that 0 means "never".
#[inline]
pub(crate) fn ms_since(epoch_ns: u64, now_ns: u64) -> u64 {
    now_ns.saturating_sub(epoch_ns) / 1_000_000 + 1
}

/// Per-leg state the forwarding path touches on every packet, kept small
/// (a few cache lines); the rest lives behind `c`.
struct WLeg {
    fds: [RawFd; 2],
    /// Adaptive recvmmsg size per socket: 1 for the usual one-datagram
    /// wake-ups (no failed second dequeue in the kernel), doubling up to the
    /// configured batch while the socket keeps filling it.
    vlen: [u16; 2],
    mux: bool,
    timed_out: bool,
    last_pt: u8,
    last_clock: u32,
    /// telephone-event payload type of the leg's SDP ([`NO_PT`]: none).
    te_pt: u8,
    /// Latched sources per socket: [RTP port, RTCP port].
    src: [Endpoint; 2],
    /// Where packets towards this leg's peer go: [RTP, RTCP].
    dest: [RawAddr; 2],
    seq: SeqState,
    last_rx_ms: u64,
    src_last_ms: [u64; 2],
    c: Box<LegCold>,
}

/// Per-leg state of the control path.
struct LegCold {
    /// The RTP and RTCP sockets (owned here, closed on release).
    _sockets: [UdpSocket; 2],
    ip: IpAddr,
    even_port: u16,
    has_remote: bool,
    /// SDP addresses (first guesses): [RTP, RTCP].
    sdp: [Endpoint; 2],
    /// The IPs (port ignored) this leg accepts media from: its SDP's and its
    /// signalling source's. Empty until the leg's SDP is known.
    known: [Endpoint; MAX_KNOWN],
    nknown: usize,
    sdp_raw: [RawAddr; 2],
    rtcp_explicit: bool,
    /// IPs of the last SDP that named one: [RTP, RTCP] (port 0).
    sdp_ips: [Endpoint; 2],
    /// c=0.0.0.0: send nothing towards this leg.
    zero_hold: bool,
    hold: bool,
    src_raw: [RawAddr; 2],
    clocks: [(u8, u32); MAX_CLOCKS],
    nclocks: usize,
    /// Clock rate of the telephone-event payload type.
    te_clock: u32,
    /// (SSRC, RTP timestamp) of the last DTMF event reported: its repeated
    /// end packets are not reported again.
    dtmf_last: Option<(u32, u32)>,
}

impl WLeg {
    fn new(n: NewLeg) -> WLeg {
        let fds = [n.rtp.as_raw_fd(), n.rtcp.as_raw_fd()];
        WLeg {
            fds,
            vlen: [1; 2],
            mux: false,
            timed_out: false,
            last_pt: 0xff,
            last_clock: DEFAULT_CLOCK,
            te_pt: NO_PT,
            src: [Endpoint::NONE; 2],
            dest: [RawAddr::empty(); 2],
            seq: SeqState::default(),
            last_rx_ms: 0,
            src_last_ms: [0; 2],
            c: Box::new(LegCold {
                _sockets: [n.rtp, n.rtcp],
                ip: n.ip,
                even_port: n.even_port,
                has_remote: false,
                sdp: [Endpoint::NONE; 2],
                known: [Endpoint::NONE; MAX_KNOWN],
                nknown: 0,
                sdp_raw: [RawAddr::empty(); 2],
                rtcp_explicit: false,
                sdp_ips: [Endpoint::NONE; 2],
                zero_hold: false,
                hold: false,
                src_raw: [RawAddr::empty(); 2],
                clocks: [(0, 0); MAX_CLOCKS],
                nclocks: 0,
                te_clock: DEFAULT_CLOCK,
                dtmf_last: None,
            }),
        }
    }

    /// The end of an RFC 4733 event in an accepted RTP packet of the leg's
    /// telephone-event payload type: `(digit, duration in ms)` for the first
    /// end packet of an event (new SSRC/timestamp); `None` for progress
    /// packets, repeated end packets, codes other than 0-15 and payloads
    /// shorter than 4 bytes. Reads the payload in place, allocates nothing.
    #[inline]
    fn dtmf_end(&mut self, pkt: &[u8], info: &RtpInfo) -> Option<(char, u32)> {
        let off = info.payload_offset as usize;
        let payload = pkt.get(off..off.checked_add(info.payload_len as usize)?)?;
        let ev = telephone_event(payload)?;
        if !ev.end {
            return None;
        }
        let key = (info.ssrc, info.timestamp);
        if self.c.dtmf_last == Some(key) {
            return None;
        }
        self.c.dtmf_last = Some(key);
        if ev.event > 15 {
            return None;
        }
        let digit = dtmf::event_digit(ev.event)?;
        let ms = u64::from(ev.duration) * 1000 / u64::from(self.c.te_clock.max(1));
        Some((digit, ms as u32))
    }

    #[inline]
    fn clock_for(&mut self, pt: u8) -> u32 {
        if pt == self.last_pt {
            return self.last_clock;
        }
        let c = self.c.clocks[..self.c.nclocks]
            .iter()
            .find(|(p, _)| *p == pt)
            .map_or(DEFAULT_CLOCK, |(_, c)| *c);
        self.last_pt = pt;
        self.last_clock = c;
        c
    }

    /// Recompute where packets towards this leg's peer are sent.
    fn update_dest(&mut self) {
        if !self.c.has_remote || self.c.zero_hold {
            self.dest = [RawAddr::empty(); 2];
            return;
        }
        self.dest[0] = if self.src[0].is_some() {
            self.c.src_raw[0]
        } else {
            self.c.sdp_raw[0]
        };
        self.dest[1] = if self.mux {
            self.dest[0]
        } else if self.src[1].is_some() {
            self.c.src_raw[1]
        } else if !self.c.rtcp_explicit && self.src[0].is_some() && self.src[0] != self.c.sdp[0] {
            // RTP came from elsewhere than announced (NAT): guess its port + 1.
            match self.c.src_raw[0].socket_addr() {
                Some(a) => match a.port().checked_add(1) {
                    Some(p) => RawAddr::from_std(SocketAddr::new(a.ip(), p)),
                    None => self.c.sdp_raw[1],
                },
                None => self.c.sdp_raw[1],
            }
        } else {
            self.c.sdp_raw[1]
        };
    }

    /// Whether `src`'s IP is one the leg accepts media from.
    #[inline]
    fn known_ip(&self, src: &Endpoint) -> bool {
        self.c.known[..self.c.nknown].iter().any(|k| k.same_ip(src))
    }

    /// The IPs the leg accepts after a new SDP: the SDP's RTP and RTCP IPs
    /// (unspecified ones, c=0.0.0.0 hold, keep the previous SDP's: a hold
    /// does not move the peer) and the signalling source IP.
    fn set_known(&mut self, rtp: SocketAddr, rtcp: SocketAddr, signalling: Option<IpAddr>) {
        let ip_of = |a: &SocketAddr| Endpoint::from_std(SocketAddr::new(a.ip(), 0));
        if !rtp.ip().is_unspecified() {
            self.c.sdp_ips = [ip_of(&rtp), Endpoint::NONE];
        }
        if !rtcp.ip().is_unspecified() && rtcp.ip() != rtp.ip() {
            self.c.sdp_ips[1] = ip_of(&rtcp);
        }
        let sig = signalling
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| Endpoint::from_std(SocketAddr::new(ip, 0)));
        let mut n = 0;
        for e in self.c.sdp_ips.into_iter().chain(sig) {
            if e.is_some() && !self.c.known[..n].iter().any(|k| k.same_ip(&e)) {
                self.c.known[n] = e;
                n += 1;
            }
        }
        self.c.nknown = n;
    }

    fn unlatch(&mut self) {
        self.src = [Endpoint::NONE; 2];
        self.c.src_raw = [RawAddr::empty(); 2];
        self.update_dest();
    }
}

struct WSession {
    id: SessionId,
    gen: u32,
    legs: [WLeg; 2],
    shared: Arc<SessionShared>,
    /// When the media timeout started counting (both remotes known), 0: not armed.
    armed_ms: u64,
    /// SRTP on either leg (None: the plain path).
    srtp: Option<Box<SessionSrtp>>,
}

/// Receive buffers and the message headers pointing into them. The headers
/// hold raw pointers into the boxed slices, which never move.
struct Batch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    /// Two outgoing lists (towards the other leg's RTP and RTCP sockets).
    out_iovs: Box<[libc::iovec]>,
    out_msgs: Box<[libc::mmsghdr]>,
    /// For each outgoing entry, the index of the receive buffer it sends.
    last_n: usize,
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY (all zeroed() below): plain C structs for which all-zero is valid.
        let zero_msg = || unsafe { mem::zeroed::<libc::mmsghdr>() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; BUF_SIZE]; MAX_BATCH].into_boxed_slice(),
            names: (0..MAX_BATCH).map(|_| RawAddr::empty()).collect(),
            iovs: vec![zero_iov; MAX_BATCH].into_boxed_slice(),
            msgs: (0..MAX_BATCH).map(|_| zero_msg()).collect(),
            out_iovs: vec![zero_iov; 2 * MAX_BATCH].into_boxed_slice(),
            out_msgs: (0..2 * MAX_BATCH).map(|_| zero_msg()).collect(),
            last_n: MAX_BATCH,
        });
        let b_ref = &mut *b;
        for i in 0..MAX_BATCH {
            b_ref.iovs[i].iov_base = b_ref.bufs[i].as_mut_ptr() as *mut libc::c_void;
            b_ref.iovs[i].iov_len = BUF_SIZE;
            let h = &mut b_ref.msgs[i].msg_hdr;
            h.msg_name = &mut b_ref.names[i].sa as *mut _ as *mut libc::c_void;
            h.msg_namelen = sys::RAW_ADDR_CAP;
            h.msg_iov = &mut b_ref.iovs[i];
            h.msg_iovlen = 1;
        }
        for j in 0..2 * MAX_BATCH {
            b_ref.out_msgs[j].msg_hdr.msg_iov = &mut b_ref.out_iovs[j];
            b_ref.out_msgs[j].msg_hdr.msg_iovlen = 1;
        }
        b
    }
}

struct Scheduled {
    due_ns: u64,
    slot: usize,
    gen: u32,
    leg: usize,
    bytes: Vec<u8>,
}

struct Worker {
    cfg: WorkerConfig,
    epoll: sys::Epoll,
    wake: Arc<sys::EventFd>,
    rx: mpsc::Receiver<Cmd>,
    sink: Arc<dyn Fn(Event) + Send + Sync>,
    pools: Arc<Pools>,
    active: Arc<AtomicUsize>,
    slots: Vec<Option<WSession>>,
    free_slots: Vec<usize>,
    index: HashMap<SessionId, usize>,
    next_gen: u32,
    batch: Box<Batch>,
    dtmf: VecDeque<Scheduled>,
    next_tick_ns: u64,
}

pub(crate) fn run(
    cfg: WorkerConfig,
    rx: mpsc::Receiver<Cmd>,
    wake: Arc<sys::EventFd>,
    tid: Arc<AtomicU32>,
    pools: Arc<Pools>,
    sink: Arc<dyn Fn(Event) + Send + Sync>,
    active: Arc<AtomicUsize>,
) {
    tid.store(sys::gettid() as u32, Ordering::Relaxed);
    if cfg.coalesce_ns > 0 {
        sys::precise_timers();
    }
    if let Some(cpu) = cfg.cpu {
        if let Err(e) = sys::pin_to_cpu(cpu) {
            tracing::warn!(worker = cfg.index, cpu, error = %e, "could not pin relay worker");
        }
    }
    let epoll = match sys::Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(worker = cfg.index, error = %e, "relay worker: epoll_create failed");
            return;
        }
    };
    if let Err(e) = epoll.add(wake.raw(), WAKE_TOKEN) {
        tracing::error!(worker = cfg.index, error = %e, "relay worker: cannot watch eventfd");
        return;
    }
    tracing::debug!(worker = cfg.index, "relay worker started");
    let mut w = Worker {
        cfg,
        epoll,
        wake,
        rx,
        sink,
        pools,
        active,
        slots: Vec::new(),
        free_slots: Vec::new(),
        index: HashMap::new(),
        next_gen: 1,
        batch: Batch::new(),
        dtmf: VecDeque::new(),
        next_tick_ns: 0,
    };
    w.run();
    w.shutdown();
}

impl Worker {
    fn run(&mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let mut now_ns = sys::monotonic_ns();
        loop {
            let timeout = self.poll_timeout_ms(now_ns);
            let n = self.epoll.wait(&mut events, timeout);
            // One clock reading per round (vDSO, but still per round rather
            // than per socket): the arrival time of every datagram in it.
            now_ns = sys::monotonic_ns();
            // Commands first: a remote address set before a packet arrived
            // applies to it. Stale tokens of sessions released here are
            // caught by the slot generation check.
            if events[..n].iter().any(|e| {
                let tok = e.u64;
                tok == WAKE_TOKEN
            }) {
                self.wake.drain();
                if !self.commands() {
                    return;
                }
            }
            let mut forwarded = false;
            for ev in &events[..n] {
                let tok = ev.u64;
                if tok != WAKE_TOKEN {
                    forwarded |= self.readable(tok, now_ns);
                }
            }
            if forwarded && self.cfg.coalesce_ns > 0 && n < MAX_EVENTS {
                sys::sleep_ns(self.cfg.coalesce_ns);
                now_ns = sys::monotonic_ns();
            }
            self.timers(now_ns);
        }
    }

    fn poll_timeout_ms(&self, now_ns: u64) -> i32 {
        let mut due = self.next_tick_ns;
        if let Some(s) = self.dtmf.front() {
            due = due.min(s.due_ns);
        }
        if due == u64::MAX {
            -1
        } else if due <= now_ns {
            0
        } else {
            ((due - now_ns).div_ceil(1_000_000)).min(1000) as i32
        }
    }

    fn now_ms(&self, now_ns: u64) -> u64 {
        ms_since(self.cfg.epoch_ns, now_ns)
    }

    // ---------------------------------------------------------------- hot path

    /// Handle a readable socket; true when datagrams were received.
    #[inline]
    fn readable(&mut self, tok: u64, now_ns: u64) -> bool {
        let slot = (tok >> 32) as usize;
        let gen = ((tok >> 2) & GEN_MASK) as u32;
        let leg = ((tok >> 1) & 1) as usize;
        let sock = (tok & 1) as usize;
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return false;
        };
        if s.gen != gen {
            return false;
        }
        let b = &mut *self.batch;
        let max = self.cfg.batch;
        // recvmmsg wrote the address lengths of the last batch: reset them.
        for m in &mut b.msgs[..b.last_n.min(max)] {
            m.msg_hdr.msg_namelen = sys::RAW_ADDR_CAP;
        }
        let l = &mut s.legs[leg];
        let vlen = (l.vlen[sock] as usize).clamp(1, max);
        let n = sys::recvmmsg(l.fds[sock], &mut b.msgs[..vlen]);
        b.last_n = n;
        if n == 0 {
            return false;
        }
        l.vlen[sock] = if n == vlen { (2 * vlen).min(max) } else { n } as u16;
        let now_ms = ms_since(self.cfg.epoch_ns, now_ns);
        match s.srtp.take() {
            None => forward(
                s,
                leg,
                sock,
                b,
                n,
                now_ns,
                now_ms,
                &self.cfg.latch,
                &*self.sink,
                &mut Plain,
            ),
            Some(mut sec) => {
                forward(
                    s,
                    leg,
                    sock,
                    b,
                    n,
                    now_ns,
                    now_ms,
                    &self.cfg.latch,
                    &*self.sink,
                    &mut *sec,
                );
                s.srtp = Some(sec);
            }
        }
        true
    }

    // ------------------------------------------------------------ control path

    /// Process queued commands; false when the worker must stop.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Shutdown) => return false,
                Ok(c) => self.command(c),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut WSession> {
        let slot = *self.index.get(&id)?;
        self.slots.get_mut(slot)?.as_mut()
    }

    fn command(&mut self, c: Cmd) {
        let now_ns = sys::monotonic_ns();
        let now_ms = self.now_ms(now_ns);
        match c {
            Cmd::Add(n) => self.add(*n),
            Cmd::SetRemote { id, leg, remote } => {
                let Some(s) = self.session_mut(id) else {
                    return;
                };
                let l = &mut s.legs[leg];
                let rtp = Endpoint::from_std(remote.rtp);
                let zero = remote.rtp.ip().is_unspecified();
                let rtcp_addr = match (remote.rtcp_mux, remote.rtcp) {
                    (true, _) => remote.rtp,
                    (false, Some(a)) => a,
                    (false, None) => SocketAddr::new(
                        remote.rtp.ip(),
                        remote
                            .rtp
                            .port()
                            .checked_add(1)
                            .unwrap_or(remote.rtp.port()),
                    ),
                };
                let changed = !l.c.has_remote || rtp != l.c.sdp[0] || l.c.zero_hold != zero;
                l.c.has_remote = true;
                l.c.sdp = [rtp, Endpoint::from_std(rtcp_addr)];
                l.set_known(remote.rtp, rtcp_addr, remote.signalling);
                // A latched source whose IP the new SDP no longer names is let go.
                let stale = l.src.iter().any(|s| s.is_some() && !l.known_ip(s));
                l.c.sdp_raw = [RawAddr::from_std(remote.rtp), RawAddr::from_std(rtcp_addr)];
                l.c.rtcp_explicit = remote.rtcp.is_some() || remote.rtcp_mux;
                l.c.zero_hold = zero;
                l.mux = remote.rtcp_mux;
                match remote
                    .telephone_event
                    .filter(|(pt, clock)| *pt < 128 && *clock > 0)
                {
                    Some((pt, clock)) => {
                        l.te_pt = pt;
                        l.c.te_clock = clock;
                    }
                    None => l.te_pt = NO_PT,
                }
                l.c.nclocks = 0;
                for &(pt, clock) in remote.clock_rates.iter().take(MAX_CLOCKS) {
                    if pt < 128 && clock > 0 {
                        l.c.clocks[l.c.nclocks] = (pt, clock);
                        l.c.nclocks += 1;
                    }
                }
                l.last_pt = 0xff;
                if changed || stale {
                    // A new offer: latch again onto whatever the peer sends from.
                    l.unlatch();
                    s.shared.legs[leg].set(C::Latched, 0);
                } else {
                    l.update_dest();
                }
                Self::rearm(s, now_ms);
            }
            Cmd::SetHold { id, leg, hold } => {
                if let Some(s) = self.session_mut(id) {
                    s.legs[leg].c.hold = hold;
                    Self::rearm(s, now_ms);
                }
            }
            Cmd::Relatch { id, leg } => {
                if let Some(s) = self.session_mut(id) {
                    s.legs[leg].unlatch();
                    s.shared.legs[leg].set(C::Latched, 0);
                }
            }
            Cmd::Srtp { id, leg, ctx } => {
                if let Some(s) = self.session_mut(id) {
                    let sec = s.srtp.get_or_insert_with(Default::default);
                    sec.legs[leg] = ctx;
                    if sec.legs.iter().all(Option::is_none) {
                        s.srtp = None;
                    }
                }
            }
            Cmd::Dtmf { id, leg, packets } => {
                let Some(&slot) = self.index.get(&id) else {
                    return;
                };
                let Some(Some(s)) = self.slots.get(slot) else {
                    return;
                };
                let gen = s.gen;
                for p in packets {
                    let due_ns = now_ns.saturating_add(p.at.as_nanos() as u64);
                    let pos = self.dtmf.partition_point(|x| x.due_ns <= due_ns);
                    self.dtmf.insert(
                        pos,
                        Scheduled {
                            due_ns,
                            slot,
                            gen,
                            leg,
                            bytes: p.bytes,
                        },
                    );
                }
            }
            Cmd::Release { id } => self.release(id),
            Cmd::Sync(tx) => {
                let _ = tx.send(());
            }
            Cmd::Shutdown => {}
        }
    }

    fn rearm(s: &mut WSession, now_ms: u64) {
        if s.legs[0].c.has_remote && s.legs[1].c.has_remote {
            s.armed_ms = now_ms;
            for l in &mut s.legs {
                l.timed_out = false;
            }
        }
    }

    fn add(&mut self, n: NewSession) {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK as u32;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let [a, b] = n.legs;
        let s = WSession {
            id: n.id,
            gen,
            legs: [WLeg::new(a), WLeg::new(b)],
            shared: n.shared,
            armed_ms: 0,
            srtp: None,
        };
        for (li, l) in s.legs.iter().enumerate() {
            for (si, fd) in l.fds.iter().enumerate() {
                let tok = (slot as u64) << 32
                    | (gen as u64 & GEN_MASK) << 2
                    | (li as u64) << 1
                    | si as u64;
                if let Err(e) = self.epoll.add(*fd, tok) {
                    tracing::error!(session = n.id.0, error = %e, "relay: epoll add failed");
                }
            }
        }
        self.index.insert(n.id, slot);
        self.slots[slot] = Some(s);
        tracing::debug!(
            session = n.id.0,
            worker = self.cfg.index,
            "relay session added"
        );
    }

    fn release(&mut self, id: SessionId) {
        let Some(slot) = self.index.remove(&id) else {
            return;
        };
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(slot);
        for l in s.legs {
            for fd in l.fds {
                self.epoll.delete(fd);
            }
            let (ip, port) = (l.c.ip, l.c.even_port);
            drop(l);
            self.pools.put(ip, port);
        }
        self.active.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(session = id.0, "relay session released");
    }

    fn timers(&mut self, now_ns: u64) {
        // Generated DTMF packets that are due.
        while self.dtmf.front().is_some_and(|s| s.due_ns <= now_ns) {
            let Some(p) = self.dtmf.pop_front() else {
                break;
            };
            let Some(Some(s)) = self.slots.get_mut(p.slot) else {
                continue;
            };
            if s.gen != p.gen {
                continue;
            }
            // Towards an SRTP leg the generated packet is protected like any other.
            let mut sealed = [0u8; crate::worker::BUF_SIZE];
            let bytes: &[u8] = match s.srtp.as_deref_mut() {
                Some(sec) if sec.legs[p.leg].is_some() => {
                    match crate::secure::protect_generated(sec, p.leg, &p.bytes, &mut sealed) {
                        Some(n) => &sealed[..n],
                        None => continue,
                    }
                }
                _ => &p.bytes,
            };
            let l = &s.legs[p.leg];
            if l.dest[0].is_set() && sys::send_to_raw(l.fds[0], bytes, &l.dest[0]).is_ok() {
                s.shared.legs[p.leg].add(C::DtmfSent, 1);
            }
        }
        if now_ns < self.next_tick_ns {
            return;
        }
        let Some(tick) = self.cfg.tick_ns() else {
            self.next_tick_ns = u64::MAX;
            return;
        };
        self.next_tick_ns = now_ns + tick;
        let now_ms = self.now_ms(now_ns);
        for s in self.slots.iter_mut().flatten() {
            if s.armed_ms == 0 {
                continue;
            }
            let on_hold = s.legs.iter().any(|l| l.c.hold || l.c.zero_hold);
            let limit = if on_hold {
                self.cfg.hold_timeout_ms
            } else {
                self.cfg.media_timeout_ms
            };
            if limit == 0 {
                continue;
            }
            for (i, l) in s.legs.iter_mut().enumerate() {
                let last = l.last_rx_ms.max(s.armed_ms);
                let idle = now_ms.saturating_sub(last);
                if !l.timed_out && idle >= limit {
                    l.timed_out = true;
                    (self.sink)(Event::MediaTimeout {
                        session: s.id,
                        leg: Leg::from_idx(i),
                        idle: Duration::from_millis(idle),
                        on_hold,
                    });
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.index.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
        tracing::debug!(worker = self.cfg.index, "relay worker stopped");
    }
}

/// Per-batch sums, flushed to the atomics once per batch.
#[derive(Default)]
struct Sums {
    rtp_pkts: u64,
    rtp_bytes: u64,
    rtcp_pkts: u64,
    rtcp_bytes: u64,
    foreign: u64,
    malformed: u64,
    not_rtp: u64,
    oversize: u64,
    no_dest: u64,
    srtp: u64,
}

/// Process `n` datagrams received on `sock` (0 RTP, 1 RTCP) of `leg`, and
/// forward the good ones from the other leg's sockets. `tf` is [`Plain`] (nothing, compiled
/// away) or the session's SRTP ([`SessionSrtp`]), applied in the receive buffers.
#[allow(clippy::too_many_arguments)]
#[inline]
fn forward<T: Transform>(
    s: &mut WSession,
    leg: usize,
    sock: usize,
    b: &mut Batch,
    n: usize,
    now_ns: u64,
    now_ms: u64,
    policy: &LatchPolicy,
    sink: &(dyn Fn(Event) + Send + Sync),
    tf: &mut T,
) {
    let now_us = now_ns / 1000;
    let counters: &Counters = &s.shared.legs[leg];
    let (l, o) = match &mut s.legs {
        [a, b] if leg == 0 => (a, &*b),
        [a, b] => (b, &*a),
    };
    let mut sums = Sums::default();
    let mut out_n = [0usize; 2];
    let rtp_sock = sock == 0;

    for i in 0..n {
        let m = &b.msgs[i];
        let len = m.msg_len as usize;
        if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > BUF_SIZE {
            sums.oversize += 1;
            continue;
        }
        // SRTP: authenticated and decrypted before anything else looks at it.
        let len = match tf.inbound(leg, &mut b.bufs[i][..len]) {
            Ok(n) => n,
            Err(()) => {
                sums.srtp += 1;
                continue;
            }
        };
        let pkt = &b.bufs[i][..len];
        let kind = classify(pkt, rtp_sock);
        let rtp = match kind {
            Kind::Rtp(info) => Some(info),
            Kind::Rtcp => None,
            Kind::Malformed => {
                sums.malformed += 1;
                continue;
            }
            Kind::Stun | Kind::Dtls | Kind::Other => {
                sums.not_rtp += 1;
                continue;
            }
        };

        // Symmetric RTP: is this the source we latched onto? If not, is it
        // one the leg may latch onto (one of its known IPs, see LatchMode)?
        let src = Endpoint::from_raw(&b.names[i]);
        if src != l.src[sock] {
            let accept = if l.src[sock].is_some() {
                match policy.relatch_after_silence {
                    Some(d) => {
                        now_ms.saturating_sub(l.src_last_ms[sock]) >= d.as_millis() as u64
                            && l.known_ip(&src)
                    }
                    None => false,
                }
            } else {
                match policy.mode {
                    // RTCP must come from the host that sends the RTP.
                    LatchMode::KnownIp if sock == 1 && l.src[0].is_some() => src.same_ip(&l.src[0]),
                    LatchMode::KnownIp => l.known_ip(&src),
                    LatchMode::SdpExact => l.c.has_remote && src == l.c.sdp[sock],
                }
            };
            if !accept {
                sums.foreign += 1;
                continue;
            }
            l.src[sock] = src;
            l.c.src_raw[sock] = RawAddr {
                sa: b.names[i].sa,
                len: b.msgs[i].msg_hdr.msg_namelen,
            };
            l.update_dest();
            counters.set(C::Latched, 1);
            counters.add(C::Relatches, 1);
            if let Some(source) = b.names[i].socket_addr() {
                sink(Event::Latched {
                    session: s.id,
                    leg: Leg::from_idx(leg),
                    rtcp: sock == 1,
                    source,
                });
            }
        }
        l.src_last_ms[sock] = now_ms;
        l.last_rx_ms = now_ms;
        l.timed_out = false;

        let is_rtcp = match rtp {
            Some(info) => {
                sums.rtp_pkts += 1;
                sums.rtp_bytes += len as u64;
                let clock = l.clock_for(info.payload_type);
                l.seq
                    .update(info.ssrc, info.seq, info.timestamp, now_us, clock, counters);
                if info.payload_type == l.te_pt {
                    if let Some((digit, duration_ms)) = l.dtmf_end(pkt, &info) {
                        sink(Event::Dtmf {
                            session: s.id,
                            leg: Leg::from_idx(leg),
                            digit,
                            duration_ms,
                        });
                    }
                }
                false
            }
            None => {
                sums.rtcp_pkts += 1;
                sums.rtcp_bytes += len as u64;
                true
            }
        };

        // Out through the other leg: RTCP to its RTCP socket unless it muxes.
        let k = usize::from(is_rtcp && !o.mux);
        let dest = &o.dest[k];
        if !dest.is_set() {
            sums.no_dest += 1;
            continue;
        }
        let len = match tf.outbound(1 - leg, &mut b.bufs[i], len, is_rtcp) {
            Ok(n) => n,
            Err(()) => {
                sums.srtp += 1;
                continue;
            }
        };
        let j = k * MAX_BATCH + out_n[k];
        out_n[k] += 1;
        b.out_iovs[j].iov_base = b.bufs[i].as_mut_ptr() as *mut libc::c_void;
        b.out_iovs[j].iov_len = len;
        let h = &mut b.out_msgs[j].msg_hdr;
        h.msg_name = &dest.sa as *const _ as *mut libc::c_void;
        h.msg_namelen = dest.len;
    }

    // Receive-side counters first, so that they are visible before the
    // packets reach the other side.
    counters.add(C::RtpPackets, sums.rtp_pkts);
    counters.add(C::RtpBytes, sums.rtp_bytes);
    if sums.rtcp_pkts != 0 {
        counters.add(C::RtcpPackets, sums.rtcp_pkts);
        counters.add(C::RtcpBytes, sums.rtcp_bytes);
    }
    if sums.foreign | sums.malformed | sums.not_rtp | sums.oversize | sums.no_dest | sums.srtp != 0
    {
        counters.add(C::DropSrtp, sums.srtp);
        counters.add(C::DropForeign, sums.foreign);
        counters.add(C::DropMalformed, sums.malformed);
        counters.add(C::DropNotRtp, sums.not_rtp);
        counters.add(C::DropOversize, sums.oversize);
        counters.add(C::DropNoDest, sums.no_dest);
    }
    counters.set(C::LastRxMs, l.last_rx_ms);

    let mut fwd = 0u64;
    let mut fwd_bytes = 0u64;
    let mut send_err = 0u64;
    for (k, &cnt) in out_n.iter().enumerate() {
        if cnt == 0 {
            continue;
        }
        let fd = o.fds[k];
        let base = k * MAX_BATCH;
        let msgs = &mut b.out_msgs[base..base + cnt];
        let mut off = 0;
        while off < cnt {
            match sys::sendmmsg(fd, &mut msgs[off..]) {
                Ok(sent) if sent > 0 => {
                    for m in &msgs[off..off + sent] {
                        fwd_bytes += m.msg_len as u64;
                    }
                    fwd += sent as u64;
                    off += sent;
                }
                _ => {
                    // The first remaining datagram failed: drop it, go on.
                    send_err += 1;
                    off += 1;
                }
            }
        }
    }

    counters.add(C::FwdPackets, fwd);
    counters.add(C::FwdBytes, fwd_bytes);
    if send_err != 0 {
        counters.add(C::DropSendError, send_err);
    }
}
