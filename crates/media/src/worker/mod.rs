//! A relay worker: one thread, one epoll instance over the nonblocking media
//! sockets of its sessions, a fixed set of receive buffers.
//!
//! Two socket layouts ([`crate::PortLayout`]):
//! * own sockets: every leg binds an RTP/RTCP pair of its own; epoll says
//!   which leg a datagram belongs to; one recvmmsg per readable socket;
//! * shared pairs: the worker binds a few RTP/RTCP pairs per family at start
//!   and every leg uses one; a datagram's leg is found by its exact source
//!   address ([`demux`]), so one recvmmsg drains many streams and one
//!   sendmmsg sends to many peers (from each shared socket's send-only twin,
//!   `sys::send_twin`, which no epoll waits on).
//!
//! Either way the forwarding path ([`forward`]) classifies each datagram
//! ([`crate::packet::classify`]), checks its source against the leg's
//! latched source and known IPs ([`leg`]), updates counters with relaxed
//! stores, and sends from the other leg's socket with iovecs pointing at the
//! very buffers the datagrams were received into. No allocation, no lock, no
//! log line per packet; the payload is never copied. RTP packets of the leg's
//! telephone-event payload type also get their 4-byte RFC 4733 payload read
//! in place, so that the end of each DTMF event is reported once
//! ([`Event::Dtmf`]); they are forwarded like any other packet.
//!
//! Commands from the call layer arrive on a channel that the worker polls
//! every round; the sender writes the worker's eventfd only when the worker
//! sleeps in epoll_wait (and once per sleep), so a burst of commands costs
//! at most one wake-up and a busy worker none. Under load, a worker sleeps
//! a little after a round so the next one finds more ([`moderation`]).

mod demux;
mod digits;
mod forward;
mod leg;
mod mix;
mod moderation;

use std::collections::{HashMap, VecDeque};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::dtmf::TimedPacket;
use crate::relay::{Event, LatchPolicy, Leg, Pools, RemoteMedia, SessionId, SessionShared};
use crate::secure::{LegSrtp, SessionSrtp};
use crate::stats::C;
use crate::sys;
use demux::{ByIp, Demux};
use forward::{Batch, Ctx, MAX_OUT};
pub(crate) use leg::NewLeg;
use leg::WLeg;
use moderation::Moderation;

/// Largest recvmmsg/sendmmsg batch.
pub(crate) const MAX_BATCH: usize = 256;
/// Most shared sockets per worker (RTP and RTCP of every shared pair of both
/// families): one outgoing list each.
pub(crate) const MAX_SHARED_SOCKETS: usize = MAX_OUT;
const MAX_EVENTS: usize = 1024;
const WAKE_TOKEN: u64 = u64::MAX;
/// Tokens of shared sockets: this bit and the socket index.
const SHARED_TOKEN: u64 = 1 << 62;
const GEN_MASK: u64 = 0x3fff_ffff;

/// Token of a leg's socket: `slot << 32 | gen << 2 | leg << 1 | sock` (never
/// 0: generations start at 1; never with [`SHARED_TOKEN`]: slots < 2^30).
#[inline]
fn leg_token(slot: usize, gen: u32, leg: usize, sock: usize) -> u64 {
    (slot as u64) << 32 | (gen as u64 & GEN_MASK) << 2 | (leg as u64) << 1 | sock as u64
}

/// (slot, generation, leg, socket) of a leg token.
#[inline]
fn decode(tok: u64) -> (usize, u32, usize, usize) {
    (
        (tok >> 32) as usize,
        ((tok >> 2) & GEN_MASK) as u32,
        ((tok >> 1) & 1) as usize,
        (tok & 1) as usize,
    )
}

pub(crate) struct WorkerConfig {
    pub(crate) index: usize,
    pub(crate) media_timeout_ms: u64,
    pub(crate) hold_timeout_ms: u64,
    pub(crate) latch: LatchPolicy,
    pub(crate) report_latching: bool,
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

/// One shared RTP/RTCP pair of a worker (bound by [`crate::Relay::start`]).
pub(crate) struct SharedPair {
    pub(crate) rtp: UdpSocket,
    pub(crate) rtcp: UdpSocket,
    /// Send-only twins of `rtp` and `rtcp` (`sys::send_twin`); without one the
    /// shared socket sends itself.
    pub(crate) send: [Option<UdpSocket>; 2],
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
        /// The session has sockets of its own (their ports return to the pool on release).
        own: bool,
    },
    Sync(mpsc::Sender<()>),
    Shutdown,
}

/// How the call layer wakes a worker (shared with its handle).
pub(crate) struct Wake {
    eventfd: sys::EventFd,
    /// The worker is about to wait, or waits, in epoll_wait.
    sleeping: AtomicBool,
    /// The eventfd was written since the worker last saw it.
    pending: AtomicBool,
    /// Commands sent so far.
    sent: AtomicU64,
    /// Commands sent without a wake since the last wake.
    unwoken: AtomicU64,
}

/// Commands that may wait for the worker's next round before one wakes it.
const LAZY_MAX: u64 = 32;
/// The longest a worker sleeps: the latest a command that did not wake it is
/// seen when no datagram or timer comes first.
const MAX_SLEEP_MS: i32 = 250;
/// How often the worker looks for room a load left in its tables (the worker wakes at least
/// every [`MAX_SLEEP_MS`], so this runs on an idle relay too).
const SHRINK_EVERY_NS: u64 = 2_000_000_000;

impl Wake {
    pub(crate) fn new() -> std::io::Result<Wake> {
        Ok(Wake {
            eventfd: sys::EventFd::new()?,
            sleeping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            unwoken: AtomicU64::new(0),
        })
    }

    /// After queueing a command: wake the worker if the command is `urgent`
    /// (or enough others waited), the worker sleeps, and nobody woke it yet.
    pub(crate) fn notify(&self, urgent: bool) {
        // SeqCst pairs with the worker's `sleeping` store and `sent` load: either
        // the worker sees this command before it waits, or we see it sleeping.
        self.sent.fetch_add(1, Ordering::SeqCst);
        if !urgent && self.unwoken.fetch_add(1, Ordering::Relaxed) + 1 < LAZY_MAX {
            return;
        }
        self.unwoken.store(0, Ordering::Relaxed);
        if self.sleeping.load(Ordering::SeqCst) && !self.pending.swap(true, Ordering::AcqRel) {
            self.eventfd.wake();
        }
    }
}

/// What a worker forwarded and dropped since it started (live, for metrics):
/// single writer (the worker), relaxed loads and stores.
#[derive(Default)]
pub(crate) struct Totals {
    c: [AtomicU64; 13],
}

/// Indexes of [`Totals`].
pub(crate) mod total {
    pub(crate) const FWD: usize = 0;
    pub(crate) const FWD_BYTES: usize = 1;
    pub(crate) const FOREIGN: usize = 2;
    pub(crate) const MALFORMED: usize = 3;
    pub(crate) const NOT_RTP: usize = 4;
    pub(crate) const OVERSIZE: usize = 5;
    pub(crate) const NO_DEST: usize = 6;
    pub(crate) const SEND_ERR: usize = 7;
    pub(crate) const SRTP: usize = 8;
    /// A gauge, not a count: room in the worker's session table.
    pub(crate) const SLOTS: usize = 9;
    /// SSRC changes on one latched source within 200 ms of the one before (see `mix`).
    pub(crate) const SSRC_FLAPS: usize = 10;
    /// Events the sink refused (its queue full).
    pub(crate) const EVENTS_DROPPED: usize = 11;
    /// RFC 4733 digits beyond a leg's rate (see `digits`), not reported.
    pub(crate) const DIGITS_LIMITED: usize = 12;
}

impl Totals {
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.c[i].load(Ordering::Relaxed)
    }

    fn set(&self, i: usize, v: u64) {
        self.c[i].store(v, Ordering::Relaxed);
    }

    fn add(&self, i: usize, n: u64) {
        if n != 0 {
            let a = &self.c[i];
            a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }
}

/// Per-round sums of the forwarding path, flushed to [`Totals`] once per readable socket.
#[derive(Default)]
struct Sums {
    fwd: u64,
    fwd_bytes: u64,
    foreign: u64,
    malformed: u64,
    not_rtp: u64,
    oversize: u64,
    no_dest: u64,
    send_err: u64,
    srtp: u64,
    ssrc_flaps: u64,
    events_dropped: u64,
    digits_limited: u64,
}

impl Sums {
    fn flush_to(&mut self, t: &Totals) {
        use total::*;
        t.add(FWD, self.fwd);
        t.add(FWD_BYTES, self.fwd_bytes);
        t.add(FOREIGN, self.foreign);
        t.add(MALFORMED, self.malformed);
        t.add(NOT_RTP, self.not_rtp);
        t.add(OVERSIZE, self.oversize);
        t.add(NO_DEST, self.no_dest);
        t.add(SEND_ERR, self.send_err);
        t.add(SRTP, self.srtp);
        t.add(SSRC_FLAPS, self.ssrc_flaps);
        t.add(EVENTS_DROPPED, self.events_dropped);
        t.add(DIGITS_LIMITED, self.digits_limited);
        *self = Sums::default();
    }
}

impl Cmd {
    /// Whether the worker must see the command now: sockets of its own to
    /// watch or to close (their ports go back to the pool), generated DTMF
    /// to pace, a caller waiting. Remote addresses, holds, keys and
    /// releases of shared-port sessions wait for the next round.
    pub(crate) fn urgent(&self) -> bool {
        match self {
            Cmd::Add(n) => n.legs.iter().any(|l| matches!(l, NewLeg::Own { .. })),
            Cmd::Release { own, .. } => *own,
            Cmd::Dtmf { .. } | Cmd::Sync(_) | Cmd::Shutdown => true,
            Cmd::SetRemote { .. }
            | Cmd::SetHold { .. }
            | Cmd::Relatch { .. }
            | Cmd::Srtp { .. } => false,
        }
    }
}

/// Milliseconds since the relay epoch, plus one so that 0 means "never".
#[inline]
pub(crate) fn ms_since(epoch_ns: u64, now_ns: u64) -> u64 {
    now_ns.saturating_sub(epoch_ns) / 1_000_000 + 1
}

struct WSession {
    id: SessionId,
    gen: u32,
    legs: [WLeg; 2],
    shared: Arc<SessionShared>,
    /// When the media timeout started counting (both remotes known), 0: not armed.
    armed_ms: u64,
    /// SRTP on either leg (None: plain, the transform is skipped).
    srtp: Option<Box<SessionSrtp>>,
}

struct SharedSock {
    _sock: UdpSocket,
    _twin: Option<UdpSocket>,
    /// Receives (in epoll).
    fd: RawFd,
    /// Sends: the twin's, else `fd`.
    send_fd: RawFd,
    /// 0: RTP, 1: RTCP.
    sock: usize,
}

struct Scheduled {
    due_ns: u64,
    slot: usize,
    gen: u32,
    leg: usize,
    bytes: Vec<u8>,
}

/// What a worker thread is started with.
pub(crate) struct WorkerParts {
    pub(crate) cfg: WorkerConfig,
    pub(crate) rx: mpsc::Receiver<Cmd>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) tid: Arc<AtomicU32>,
    pub(crate) pools: Arc<Pools>,
    pub(crate) sink: Arc<dyn Fn(Event) -> bool + Send + Sync>,
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) totals: Arc<Totals>,
    pub(crate) shared: Vec<SharedPair>,
}

struct Worker {
    cfg: WorkerConfig,
    epoll: sys::Epoll,
    wake: Arc<Wake>,
    rx: mpsc::Receiver<Cmd>,
    /// Commands received so far (against `wake.sent`).
    seen: u64,
    sink: Arc<dyn Fn(Event) -> bool + Send + Sync>,
    pools: Arc<Pools>,
    active: Arc<AtomicUsize>,
    totals: Arc<Totals>,
    sums: Sums,
    slots: Vec<Option<WSession>>,
    free_slots: Vec<usize>,
    index: HashMap<SessionId, usize>,
    next_gen: u32,
    batch: Box<Batch>,
    dtmf: VecDeque<Scheduled>,
    next_tick_ns: u64,
    /// When the session tables are next checked for room a load left ([`Worker::shrink`]).
    next_shrink_ns: u64,
    shared: Vec<SharedSock>,
    demux: Demux,
    by_ip: ByIp,
    moderation: Moderation,
}

pub(crate) fn run(p: WorkerParts) {
    let WorkerParts {
        cfg,
        rx,
        wake,
        tid,
        pools,
        sink,
        active,
        totals,
        shared,
    } = p;
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
    // Edge-triggered: the eventfd is never read (each write is a new edge).
    if let Err(e) = epoll.add_edge(wake.eventfd.raw(), WAKE_TOKEN) {
        tracing::error!(worker = cfg.index, error = %e, "relay worker: cannot watch eventfd");
        return;
    }
    let mut socks = Vec::new();
    for pair in shared {
        let [t0, t1] = pair.send;
        for (k, (s, twin)) in [(pair.rtp, t0), (pair.rtcp, t1)].into_iter().enumerate() {
            let j = socks.len();
            if let Err(e) = epoll.add(s.as_raw_fd(), SHARED_TOKEN | j as u64) {
                tracing::error!(worker = cfg.index, error = %e, "relay worker: epoll add failed");
                return;
            }
            socks.push(SharedSock {
                fd: s.as_raw_fd(),
                send_fd: twin.as_ref().map_or(s.as_raw_fd(), |t| t.as_raw_fd()),
                _sock: s,
                _twin: twin,
                sock: k,
            });
        }
    }
    tracing::debug!(
        worker = cfg.index,
        shared_sockets = socks.len(),
        "relay worker started"
    );
    let cfg_batch = cfg.batch;
    let cfg_coalesce_ns = cfg.coalesce_ns;
    let mut w = Worker {
        cfg,
        epoll,
        wake,
        rx,
        seen: 0,
        sink,
        pools,
        active,
        totals,
        sums: Sums::default(),
        slots: Vec::new(),
        free_slots: Vec::new(),
        index: HashMap::new(),
        next_gen: 1,
        batch: Batch::new(cfg_batch),
        dtmf: VecDeque::new(),
        next_tick_ns: 0,
        next_shrink_ns: 0,
        shared: socks,
        demux: Demux::new(),
        moderation: Moderation::new(cfg_coalesce_ns),
        by_ip: ByIp::default(),
    };
    w.run();
    w.shutdown();
}

impl Worker {
    fn run(&mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let mut now_ns = sys::monotonic_ns();
        // When the current round began (its wait returned).
        let mut round_ns = now_ns;
        loop {
            // Commands first: a remote address set before a packet arrived
            // applies to it. Stale tokens of sessions released here are
            // caught by the slot generation check.
            if !self.commands() {
                return;
            }
            // Announce the sleep, then look once more for commands sent
            // meanwhile (see `Wake::notify`).
            self.wake.sleeping.store(true, Ordering::SeqCst);
            let timeout = if self.wake.sent.load(Ordering::SeqCst) != self.seen {
                0
            } else {
                match self.poll_timeout_ms(now_ns) {
                    -1 => MAX_SLEEP_MS,
                    t => t.min(MAX_SLEEP_MS),
                }
            };
            let n = self.epoll.wait(&mut events, timeout);
            self.wake.sleeping.store(false, Ordering::Relaxed);
            // One clock reading per round (vDSO, but still per round rather
            // than per socket): the arrival time of every datagram in it.
            now_ns = sys::monotonic_ns();
            if events[..n].iter().any(|e| {
                let tok = e.u64;
                tok == WAKE_TOKEN
            }) {
                self.wake.pending.store(false, Ordering::Release);
                fence(Ordering::SeqCst);
            }
            // Commands before datagrams, whatever woke us: a command that
            // did not wake the worker (a new remote address) applies to the
            // packet that did.
            if self.wake.sent.load(Ordering::SeqCst) != self.seen && !self.commands() {
                return;
            }
            self.batch.saw_full = false;
            self.batch.got = 0;
            for ev in &events[..n] {
                let tok = ev.u64;
                if tok != WAKE_TOKEN {
                    self.readable(tok, now_ns);
                }
            }
            // Interrupt moderation (see `moderation`); a round with every epoll slot
            // used has more sockets ready than it saw: no sleep either.
            let span = now_ns.saturating_sub(round_ns);
            round_ns = now_ns;
            let full = self.batch.saw_full || n == MAX_EVENTS;
            if self.moderation.after_round(self.batch.got, span, full) {
                sys::sleep_ns(self.moderation.sleep_ns());
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

    /// Handle a readable socket (what it received is counted in `self.batch.got`).
    #[inline]
    fn readable(&mut self, tok: u64, now_ns: u64) {
        let mut cx = Ctx {
            demux: &mut self.demux,
            by_ip: &self.by_ip,
            sink: &*self.sink,
            policy: &self.cfg.latch,
            report_latching: self.cfg.report_latching,
            now_us: now_ns / 1000,
            now_ms: ms_since(self.cfg.epoch_ns, now_ns),
            sums: &mut self.sums,
        };
        let got = if tok & SHARED_TOKEN != 0 {
            let j = (tok & !SHARED_TOKEN) as usize;
            match self.shared.get(j) {
                Some(s) => forward::shared_socket(
                    &mut self.slots,
                    &mut cx,
                    &mut self.batch,
                    j as u8,
                    s.fd,
                    s.sock,
                    self.cfg.batch,
                ),
                None => false,
            }
        } else {
            let (slot, gen, leg, sock) = decode(tok);
            match self.slots.get(slot) {
                Some(Some(s)) if s.gen == gen => forward::own_socket(
                    &mut self.slots,
                    &mut cx,
                    &mut self.batch,
                    slot,
                    leg,
                    sock,
                    self.cfg.batch,
                ),
                _ => false,
            }
        };
        if got {
            self.sums.flush_to(&self.totals);
        }
    }

    // ------------------------------------------------------------ control path

    /// Process queued commands; false when the worker must stop.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Shutdown) => return false,
                Ok(c) => {
                    if self.seen == self.wake.sent.load(Ordering::Relaxed).saturating_sub(1) {
                        // Caught up: the commands that did not wake us are all seen.
                        self.wake.unwoken.store(0, Ordering::Relaxed);
                    }
                    self.seen += 1;
                    self.command(c);
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn command(&mut self, c: Cmd) {
        let now_ns = sys::monotonic_ns();
        let now_ms = self.now_ms(now_ns);
        match c {
            Cmd::Add(n) => self.add(*n),
            Cmd::SetRemote { id, leg, remote } => {
                let Some(&slot) = self.index.get(&id) else {
                    return;
                };
                self.index_ips(slot, leg, false);
                let Some(Some(s)) = self.slots.get_mut(slot) else {
                    return;
                };
                if s.legs[leg].set_remote(&remote) {
                    // A new offer: latch again onto whatever the peer sends from.
                    Self::unlatch(&mut self.demux, s, leg);
                }
                Self::rearm(s, now_ms);
                self.index_ips(slot, leg, true);
            }
            Cmd::SetHold { id, leg, hold } => {
                if let Some(s) = self.session_mut(id) {
                    s.legs[leg].c.hold = hold;
                    Self::rearm(s, now_ms);
                }
            }
            Cmd::Relatch { id, leg } => {
                let Some(&slot) = self.index.get(&id) else {
                    return;
                };
                if let Some(Some(s)) = self.slots.get_mut(slot) {
                    Self::unlatch(&mut self.demux, s, leg);
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
            Cmd::Release { id, .. } => self.release(id),
            Cmd::Sync(tx) => {
                let _ = tx.send(());
            }
            Cmd::Shutdown => {}
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut WSession> {
        let slot = *self.index.get(&id)?;
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Forget a leg's latched sources (and, on shared sockets, their demux entries).
    fn unlatch(demux: &mut Demux, s: &mut WSession, leg: usize) {
        let l = &mut s.legs[leg];
        if l.is_shared() {
            for sock in 0..2 {
                if l.src[sock].is_some() {
                    demux.remove(l.shared[sock], &l.src[sock]);
                }
            }
        }
        l.unlatch();
        s.shared.legs[leg].set(C::Latched, 0);
    }

    /// Add (or remove) a shared leg's known IPs to the index of legs that may latch.
    fn index_ips(&mut self, slot: usize, leg: usize, add: bool) {
        let Some(Some(s)) = self.slots.get(slot) else {
            return;
        };
        let l = &s.legs[leg];
        if !l.is_shared() {
            return;
        }
        for sock in 0..2 {
            let tok = leg_token(slot, s.gen, leg, sock);
            for ip in &l.c.known[..l.c.nknown] {
                if add {
                    self.by_ip.add(l.shared[sock], *ip, tok);
                } else {
                    self.by_ip.remove(l.shared[sock], *ip, tok);
                }
            }
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
                self.totals.set(total::SLOTS, self.slots.capacity() as u64);
                self.slots.len() - 1
            }
        };
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK as u32;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let [a, b] = n.legs;
        let mk = |nl: NewLeg, shared: &[SharedSock]| -> WLeg {
            match nl {
                NewLeg::Own {
                    rtp,
                    rtcp,
                    ip,
                    even_port,
                } => WLeg::own(rtp, rtcp, ip, even_port),
                NewLeg::Shared { pair } => {
                    let (j0, j1) = (2 * pair, 2 * pair + 1);
                    // Shared legs only send through their fds (the worker receives
                    // on the shared sockets themselves).
                    let fd = |j: usize| shared.get(j).map_or(-1, |s| s.send_fd);
                    WLeg::new([fd(j0), fd(j1)], [j0 as u8, j1 as u8], None)
                }
            }
        };
        let s = WSession {
            id: n.id,
            gen,
            legs: [mk(a, &self.shared), mk(b, &self.shared)],
            shared: n.shared,
            armed_ms: 0,
            srtp: None,
        };
        for (li, l) in s.legs.iter().enumerate() {
            if l.is_shared() {
                continue;
            }
            for (si, fd) in l.fds.iter().enumerate() {
                if let Err(e) = self.epoll.add(*fd, leg_token(slot, gen, li, si)) {
                    tracing::error!(session = n.id.0, error = %e, "relay: epoll add failed");
                }
            }
        }
        // Room for both legs' RTP and RTCP peers, so that latching never grows the table.
        self.demux.reserve(4);
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
        for leg in 0..2 {
            self.index_ips(slot, leg, false);
        }
        let Some(mut s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(slot);
        for leg in 0..2 {
            if s.legs[leg].is_shared() {
                Self::unlatch(&mut self.demux, &mut s, leg);
            }
        }
        self.demux.unreserve(4);
        for l in s.legs {
            if let Some((_, ip, port)) = &l.c.own {
                let (ip, port) = (*ip, *port);
                for fd in l.fds {
                    self.epoll.delete(fd);
                }
                drop(l);
                self.pools.put(ip, port);
            }
        }
        self.active.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(session = id.0, "relay session released");
    }

    /// Gives back the room a load left in the session tables (see `podpbx_sip::capacity`):
    /// the vacant slots at the end are cut off and the free list sorted so that new sessions
    /// take the lowest slots and the live ones gather at the front. A slot index is reused
    /// either way (the generation in every token tells old from new), so cutting one off and
    /// appending it again later is no different from reusing it.
    fn shrink(&mut self) {
        use podpbx_sip::capacity::{shrink_map, shrunk};
        if let Some(to) = shrunk(self.index.len(), self.slots.capacity()) {
            while let Some(None) = self.slots.last() {
                self.slots.pop();
            }
            let end = self.slots.len();
            self.free_slots.retain(|&i| i < end);
            self.free_slots.sort_unstable_by(|a, b| b.cmp(a));
            self.slots.shrink_to(to);
            self.free_slots.shrink_to(to);
            self.totals.set(total::SLOTS, self.slots.capacity() as u64);
        }
        shrink_map(&mut self.index);
        self.demux.shrink();
        self.by_ip.shrink();
    }

    fn timers(&mut self, now_ns: u64) {
        if now_ns >= self.next_shrink_ns {
            self.next_shrink_ns = now_ns + SHRINK_EVERY_NS;
            self.shrink();
        }
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
            let mut sealed = [0u8; forward::BUF_SIZE];
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
                    // Refused (the queue is full): raised again on the next tick.
                    l.timed_out = (self.sink)(Event::MediaTimeout {
                        session: s.id,
                        leg: Leg::from_idx(i),
                        idle: Duration::from_millis(idle),
                        on_hold,
                    });
                    if !l.timed_out {
                        self.totals.add(total::EVENTS_DROPPED, 1);
                    }
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
