//! The relay handle: what the call layer calls.
//!
//! ```text
//!  call layer ──allocate()──► Session ──set_remote / set_hold / relatch / inject_dtmf / release──► command channel ─┐
//!      ▲                        │                                                                                   │
//!      │                        └── stats(): lock-free atomics ◄── written by ───┐                                  ▼
//!      └────────── Event (MediaTimeout, Latched, Dtmf) ◄──────────────── worker thread(s): epoll + recvmmsg/sendmmsg
//! ```
//!
//! * [`Relay::allocate`] binds the two port pairs right away (on the caller's
//!   thread, without waiting for a worker) and returns a [`Session`] with our
//!   addresses for the SDP; the sockets are then handed to a worker.
//! * Every other call is a non-blocking message to the worker that owns the
//!   session; stats are read from atomics. Signalling never waits on media.
//! * Dropping a [`Session`] releases it: the worker closes the sockets and
//!   returns the ports to the pool.
//!
//! # Who may send media to a leg (no RTP bleed)
//!
//! A leg accepts RTP/RTCP only from the IPs its call layer names in
//! [`RemoteMedia`]: the IP of the leg's SDP `c=` line (and `a=rtcp`) and the
//! source IP of the leg's signalling; any port of those (symmetric RTP: a
//! phone may send from another port than it announced). It latches onto the
//! first such source and then accepts only that exact address. Everything
//! else is dropped and counted as [`crate::Drops::foreign_source`], before
//! and after latching, on hold and off. Before the leg's SDP is known
//! nothing is accepted, not even from the signalling IP: with forking, the
//! B leg has no single signalling peer until an answer picks one, and the
//! few packets a phone may send before its answer is processed are not
//! worth a weaker rule. Only a new SDP ([`Session::set_remote`]) moves a
//! leg to another IP; re-latching (on request, or after silence when
//! configured) stays within the leg's IPs.
//!
//! This is stricter than the usual SBC defaults: rtpengine learns the first
//! source it hears for a few seconds (its `strict-source` only keeps the
//! learned address afterwards) and Asterisk's `strictrtp=seqno` learns any
//! source that sends a few packets in sequence; both leave a window in which
//! a stranger spraying the port range takes a leg. Here a stranger has no
//! window: its IP is not one the call named.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

// The media vocabulary the call layer shares with the relay lives in the portable SDP crate.
use podpbx_sdp::Anchor;
pub use podpbx_sdp::{Family, Leg, RemoteMedia};

use crate::dtmf::{self, DtmfError, EventParams};
use crate::pool::PortPool;
use crate::stats::{Counters, StreamStats};
use crate::sys;
use crate::worker::{self, Cmd, NewLeg, NewSession};

/// Interrupt moderation's sleep unless configured ([`RelayConfig::coalesce`]).
pub const DEFAULT_COALESCE: Duration = Duration::from_micros(50);

/// Receive buffer asked for a shared RTP socket when none is configured.
const SHARED_RECV_BUFFER: usize = 4 << 20;

/// DSCP EF (46) as the IP TOS / IPv6 traffic class byte.
pub const DSCP_EF_TOS: u8 = 46 << 2;

/// Identifier of a relay session (one media stream, i.e. one m-line, two legs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Pinned address and port range of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyConfig {
    /// The pinned address media sockets bind to.
    pub addr: IpAddr,
    /// Port range; even ports carry RTP, the next odd one RTCP.
    pub ports: RangeInclusive<u16>,
}

/// Which sources a leg accepts (and latches onto: symmetric RTP).
///
/// Whatever the mode, a leg accepts packets only from an IP its call layer named for it: the
/// IP of the leg's SDP `c=` line (RTP and RTCP addresses) or the source IP of the leg's
/// signalling ([`RemoteMedia::signalling`]). Before the leg's SDP is known nothing is accepted.
/// Everything else is dropped and counted ([`crate::Drops::foreign_source`]), before and after
/// latching, on hold or not; only a new SDP ([`Session::set_remote`]) moves a leg to another IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatchMode {
    /// Latch onto the first valid packet from one of the leg's IPs, from any port (a phone
    /// may send from another port than it receives on). Default.
    #[default]
    KnownIp,
    /// Accept only packets from exactly the SDP address (IP and port).
    SdpExact,
}

/// Latching policy. After latching, packets from other sources are dropped
/// and counted; a leg re-latches on a new offer ([`Session::set_remote`] with
/// a changed address), on [`Session::relatch`], or — when configured — after
/// its latched source has been silent for a while (a phone that changed its
/// source port). Re-latching never accepts an IP the leg does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchPolicy {
    /// Which first source is accepted.
    pub mode: LatchMode,
    /// Re-latch onto a new source (of the leg's IPs) once the latched one has
    /// been silent this long. `None` (default): never by itself.
    pub relatch_after_silence: Option<Duration>,
}

/// Relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Pinned IPv4 address and ports (None: no IPv4 legs).
    pub ipv4: Option<FamilyConfig>,
    /// Pinned IPv6 address and ports (None: no IPv6 legs).
    pub ipv6: Option<FamilyConfig>,
    /// Worker threads (default 1).
    pub workers: usize,
    /// No packet from a leg for this long raises [`Event::MediaTimeout`]
    /// (default 60 s; zero disables).
    pub media_timeout: Duration,
    /// The same while the session is on hold (default 2 h; zero disables).
    pub hold_timeout: Duration,
    /// Symmetric RTP policy.
    pub latch: LatchPolicy,
    /// IP TOS / IPv6 traffic class byte on media sockets (default EF, 0xb8).
    pub tos: u8,
    /// SO_RCVBUF for media sockets (None: system default).
    pub recv_buffer: Option<usize>,
    /// Datagrams per recvmmsg/sendmmsg (1..=256, default 32).
    pub batch: usize,
    /// Pin worker `i` to CPU `worker_cpus[i]` when given.
    pub worker_cpus: Vec<usize>,
    /// Interrupt moderation: after a round, a worker under load sleeps this
    /// long before waiting for more, so that each wake-up handles more
    /// packets (less CPU per packet, at most this much added latency). It
    /// sleeps only while datagrams arrive fast enough for a sleep to collect
    /// two or more (`worker::moderation`): a home's few calls never wait.
    /// Default 50 µs (1 000 streams: ~0.7x the CPU per packet of no
    /// moderation); zero: off.
    pub coalesce: Duration,
    /// How legs get their ports.
    pub layout: PortLayout,
    /// Most sessions at a time (allocations beyond get [`RelayError::Full`]).
    pub max_sessions: usize,
    /// Report [`Event::Latched`] (off saves the event sink a call per latch).
    pub report_latching: bool,
    /// Room in the queue of [`Relay::start`]'s events (default [`EVENT_QUEUE`]).
    pub event_queue: usize,
}

/// How legs get their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortLayout {
    /// Every leg binds an RTP/RTCP pair of its own, drawn at random from the
    /// range (the kernel demultiplexes; one recvmmsg per readable socket).
    #[default]
    PerCall,
    /// Each worker binds `pairs` RTP/RTCP pairs per family at start, drawn at
    /// random from the range, and every leg uses one of them: the worker
    /// demultiplexes by the peer's exact source address once the leg has
    /// latched (the same known-IP rules decide the latch), so one recvmmsg
    /// drains many streams and one sendmmsg sends to many peers, and a call
    /// opens no socket. A datagram that could belong to several legs that
    /// have not latched yet (the same peer IP, none naming the exact source
    /// in its SDP) is dropped until one of them latched; the two legs of a
    /// session get different pairs when there are several. 1..=4 pairs.
    Shared {
        /// Pairs per family and worker.
        pairs: usize,
    },
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            ipv4: None,
            ipv6: None,
            workers: 1,
            media_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(7200),
            latch: LatchPolicy::default(),
            tos: DSCP_EF_TOS,
            recv_buffer: None,
            batch: 32,
            worker_cpus: Vec::new(),
            coalesce: DEFAULT_COALESCE,
            layout: PortLayout::PerCall,
            max_sessions: 100_000,
            report_latching: true,
            event_queue: EVENT_QUEUE,
        }
    }
}

/// Errors of the relay API.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad configuration.
    #[error("bad relay configuration: {0}")]
    Config(&'static str),
    /// The family has no pinned address.
    #[error("no {0:?} address configured")]
    NoFamily(Family),
    /// No free port pair could be bound.
    #[error("no free {0:?} port pair")]
    PortsExhausted(Family),
    /// As many sessions as [`RelayConfig::max_sessions`] are active.
    #[error("relay full: {0} sessions")]
    Full(usize),
    /// An address of the wrong family for the leg.
    #[error("{addr} does not match the leg's {family:?} socket")]
    FamilyMismatch {
        /// Leg family.
        family: Family,
        /// Offending address.
        addr: SocketAddr,
    },
    /// The worker is gone (relay shut down).
    #[error("relay worker stopped")]
    Stopped,
    /// DTMF generation failed.
    #[error(transparent)]
    Dtmf(#[from] DtmfError),
    /// The leg has no remote address yet.
    #[error("the leg has no remote media address")]
    NoRemote,
    /// Socket or thread setup failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Something the call layer should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No packet from the leg's peer for the (hold-aware) media timeout.
    /// Raised once per silence; packets re-arm it.
    MediaTimeout {
        /// Session.
        session: SessionId,
        /// Silent leg.
        leg: Leg,
        /// How long it has been silent.
        idle: Duration,
        /// Whether the hold timeout applied.
        on_hold: bool,
    },
    /// A leg latched onto a source address.
    Latched {
        /// Session.
        session: SessionId,
        /// Leg.
        leg: Leg,
        /// RTCP port (true) or RTP port (false).
        rtcp: bool,
        /// The peer's real source address.
        source: SocketAddr,
    },
    /// The peer of `leg` ended an RFC 4733 DTMF event (end bit, reported once
    /// per event although the end packet is sent three times). The packets
    /// themselves are forwarded untouched; the call layer decides whether the
    /// other party also needs the digit as SIP INFO.
    Dtmf {
        /// Session.
        session: SessionId,
        /// The leg whose peer sent the event.
        leg: Leg,
        /// '0'-'9', '*', '#', 'A'-'D' (event codes 0-15).
        digit: char,
        /// Event duration from the end packet, in milliseconds (at the
        /// telephone-event clock rate of the leg's SDP).
        duration_ms: u32,
    },
    /// The RTP from `leg`'s latched source keeps changing its SSRC: several streams
    /// come from one address and port, most likely several calls of a peer that sends all its
    /// RTP from one socket. In the shared port layout they all reach this leg (crossed audio;
    /// the peer's other calls hear nothing); `port_layout = "per-call"` keeps them apart.
    /// Raised once per leg and latched source; the flaps are counted in
    /// [`crate::StreamStats::ssrc_flaps`] and [`RelayTotals::ssrc_flaps`].
    MixedStreams {
        /// Session.
        session: SessionId,
        /// The leg whose peer sends the mixed streams.
        leg: Leg,
        /// The latched source (None when the kernel gave no address: cannot happen on UDP).
        source: Option<SocketAddr>,
        /// The SSRCs of the change that made it mixed (before, after).
        ssrcs: [u32; 2],
    },
}

/// The receiving end of the event channel.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// Next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Wait up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Wait for the next event; `None` once the relay has stopped.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }
}

/// Our side of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLeg {
    /// Family of the leg.
    pub family: Family,
    /// Our RTP address.
    pub rtp: SocketAddr,
    /// Our RTCP address (RTP port + 1).
    pub rtcp: SocketAddr,
}

impl LocalLeg {
    /// The anchor to put in this leg's SDP.
    pub fn anchor(&self) -> Anchor {
        Anchor {
            addr: self.rtp.ip(),
            rtp_port: self.rtp.port(),
            rtcp_port: self.rtcp.port(),
        }
    }
}

pub(crate) struct FamilyPool {
    pub(crate) addr: IpAddr,
    pub(crate) pool: Mutex<PortPool>,
}

pub(crate) struct Pools {
    pub(crate) v4: Option<FamilyPool>,
    pub(crate) v6: Option<FamilyPool>,
}

impl Pools {
    fn get(&self, f: Family) -> Option<&FamilyPool> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Return a pair (called by the worker after closing the sockets).
    pub(crate) fn put(&self, ip: IpAddr, even: u16) {
        if let Some(fp) = self.get(Family::of(ip)) {
            if let Ok(mut p) = fp.pool.lock() {
                p.put(even, sys::monotonic_ns());
            }
        }
    }
}

pub(crate) struct SessionShared {
    pub(crate) legs: [Counters; 2],
}

struct WorkerHandle {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<worker::Wake>,
    tid: Arc<AtomicU32>,
    totals: Arc<worker::Totals>,
    /// Shared pairs of this worker: (family, RTP port), by pair index.
    shared: Vec<(Family, u16)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    /// Queue a command. Only commands whose effect cannot wait for the
    /// worker's next round wake it (see [`Cmd::urgent`]); the others are
    /// picked up when the next datagram, timer or urgent command wakes it
    /// (the worker drains its commands before any datagram, so a new remote
    /// address applies to the first packet of the stream), or once a few of
    /// them have queued up.
    fn send(&self, c: Cmd) -> Result<(), RelayError> {
        let urgent = c.urgent();
        self.tx.send(c).map_err(|_| RelayError::Stopped)?;
        self.wake.notify(urgent);
        Ok(())
    }
}

struct Inner {
    workers: Vec<WorkerHandle>,
    pools: Arc<Pools>,
    cfg: RelayConfig,
    next_id: AtomicU64,
    next_worker: AtomicUsize,
    active: Arc<AtomicUsize>,
    epoch_ns: u64,
    hasher: RandomState,
}

/// What the relay forwarded and dropped since it started (live counters of every worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTotals {
    /// Packets handed to the kernel towards the other leg.
    pub forwarded_packets: u64,
    /// Their bytes.
    pub forwarded_bytes: u64,
    /// Drops by reason.
    pub drops: crate::stats::Drops,
    /// Room in the workers' session tables (sessions): grows with the busiest moment, given
    /// back a few seconds after a load has passed.
    pub session_slots: u64,
    /// SSRC changes on one latched source within 200 ms of the one before (see
    /// [`Event::MixedStreams`]); 0 while every source sends one stream at a time.
    pub ssrc_flaps: u64,
    /// Events the queue had no room for (the consumer fell [`EVENT_QUEUE`] behind).
    pub events_dropped: u64,
    /// RFC 4733 digits not reported because their leg sent more than a person dials (a burst
    /// of 20, then 20 a second); their packets were forwarded.
    pub digits_limited: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.send(Cmd::Shutdown);
        }
        for w in &self.workers {
            if let Ok(mut t) = w.thread.lock() {
                if let Some(h) = t.take() {
                    let _ = h.join();
                }
            }
        }
    }
}

/// Default room in the queue of [`Relay::start`]'s events. The queue is allocated (and its
/// slots written) up front, ~64 bytes each: 1 024 keeps it at 64 KB. Nothing the relay reports
/// comes in floods (a few events per call, digits at most 20 a second per leg), and a media
/// timeout that finds the queue full is raised again a tick later.
pub const EVENT_QUEUE: usize = 1024;

/// The relay. Cheap to clone; the workers stop when the last clone and the
/// last [`Session`] are gone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Start the workers; events arrive on the returned [`Events`], a queue of at most
    /// [`RelayConfig::event_queue`] (events beyond it are dropped and counted in
    /// [`RelayTotals::events_dropped`]; a media timeout is raised again a tick later).
    pub fn start(cfg: RelayConfig) -> Result<(Relay, Events), RelayError> {
        let (tx, rx) = mpsc::sync_channel(cfg.event_queue.max(1));
        let relay = Relay::start_with_sink(cfg, move |e| tx.try_send(e).is_ok())?;
        Ok((relay, Events { rx }))
    }

    /// Start the workers; `sink` is called on a worker thread for each event, must not block,
    /// and returns whether it took the event (see [`Relay::start`] for what a refusal means).
    pub fn start_with_sink(
        cfg: RelayConfig,
        sink: impl Fn(Event) -> bool + Send + Sync + 'static,
    ) -> Result<Relay, RelayError> {
        if cfg.workers == 0 || cfg.workers > 64 {
            return Err(RelayError::Config("workers must be 1..=64"));
        }
        if cfg.batch == 0 || cfg.batch > worker::MAX_BATCH {
            return Err(RelayError::Config("batch must be 1..=256"));
        }
        if cfg.coalesce > Duration::from_millis(10) {
            return Err(RelayError::Config("coalesce must be at most 10 ms"));
        }
        if cfg.ipv4.is_none() && cfg.ipv6.is_none() {
            return Err(RelayError::Config("no address configured"));
        }
        if let PortLayout::Shared { pairs } = cfg.layout {
            if pairs == 0 || 2 * 2 * pairs > worker::MAX_SHARED_SOCKETS {
                return Err(RelayError::Config("shared pairs must be 1..=4"));
            }
        }
        let mk =
            |fc: &Option<FamilyConfig>, want: Family| -> Result<Option<FamilyPool>, RelayError> {
                match fc {
                    None => Ok(None),
                    Some(fc) => {
                        if Family::of(fc.addr) != want {
                            return Err(RelayError::Config("address of the wrong family"));
                        }
                        let pool = PortPool::new(*fc.ports.start(), *fc.ports.end());
                        if pool.total() == 0 {
                            return Err(RelayError::Config("empty port range"));
                        }
                        Ok(Some(FamilyPool {
                            addr: fc.addr,
                            pool: Mutex::new(pool),
                        }))
                    }
                }
            };
        let pools = Arc::new(Pools {
            v4: mk(&cfg.ipv4, Family::V4)?,
            v6: mk(&cfg.ipv6, Family::V6)?,
        });
        let epoch_ns = sys::monotonic_ns();
        let sink: Arc<dyn Fn(Event) -> bool + Send + Sync> = Arc::new(sink);
        let active = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            // Shared layout: this worker's pairs, bound now (a failure stops the start).
            let mut pairs = Vec::new();
            let mut shared = Vec::new();
            if let PortLayout::Shared { pairs: n } = cfg.layout {
                for family in [Family::V4, Family::V6] {
                    if pools.get(family).is_none() {
                        continue;
                    }
                    for _ in 0..n {
                        let (rtp, rtcp, _, even) = bind_pair(&pools, &cfg, family, true)?;
                        // One socket takes the datagrams of many streams: a deeper
                        // queue rides out a moment without CPU (default 4 MiB asked).
                        let want = cfg.recv_buffer.unwrap_or(SHARED_RECV_BUFFER);
                        sys::grow_recv_buffer(&rtp, want);
                        sys::grow_recv_buffer(&rtcp, want / 4);
                        let twin = |s: &UdpSocket| {
                            sys::send_twin(s, cfg.tos)
                                .map_err(|e| {
                                    // Sending from the shared socket itself works, only dearer
                                    // (and the port is closed to other sockets all the same).
                                    tracing::warn!(error = %e, "relay: no send-only twin socket");
                                })
                                .ok()
                        };
                        let send = [twin(&rtp), twin(&rtcp)];
                        pairs.push(worker::SharedPair { rtp, rtcp, send });
                        shared.push((family, even));
                    }
                }
            }
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(worker::Wake::new()?);
            let tid = Arc::new(AtomicU32::new(0));
            let totals = Arc::new(worker::Totals::default());
            let parts = worker::WorkerParts {
                cfg: worker::WorkerConfig {
                    index: i,
                    media_timeout_ms: cfg.media_timeout.as_millis() as u64,
                    hold_timeout_ms: cfg.hold_timeout.as_millis() as u64,
                    latch: cfg.latch,
                    report_latching: cfg.report_latching,
                    batch: cfg.batch,
                    cpu: cfg.worker_cpus.get(i).copied(),
                    coalesce_ns: cfg.coalesce.as_nanos() as u64,
                    epoch_ns,
                },
                rx,
                wake: wake.clone(),
                tid: tid.clone(),
                pools: pools.clone(),
                sink: sink.clone(),
                active: active.clone(),
                totals: totals.clone(),
                shared: pairs,
            };
            let thread = std::thread::Builder::new()
                .name(format!("podpbx-rtp-{i}"))
                .spawn(move || worker::run(parts))?;
            workers.push(WorkerHandle {
                tx,
                wake,
                tid,
                totals,
                shared,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(Relay {
            inner: Arc::new(Inner {
                workers,
                pools,
                cfg,
                next_id: AtomicU64::new(1),
                next_worker: AtomicUsize::new(0),
                active,
                epoch_ns,
                hasher: RandomState::new(),
            }),
        })
    }

    /// What every worker forwarded and dropped so far (live; drops of
    /// datagrams no leg could be found for are counted here only).
    pub fn totals(&self) -> RelayTotals {
        use worker::total::*;
        let mut t = RelayTotals::default();
        for w in &self.inner.workers {
            let c = &w.totals;
            t.forwarded_packets += c.get(FWD);
            t.forwarded_bytes += c.get(FWD_BYTES);
            let d = &mut t.drops;
            d.foreign_source += c.get(FOREIGN);
            d.malformed += c.get(MALFORMED);
            d.not_rtp += c.get(NOT_RTP);
            d.oversize += c.get(OVERSIZE);
            d.no_destination += c.get(NO_DEST);
            d.send_error += c.get(SEND_ERR);
            d.srtp += c.get(SRTP);
            t.session_slots += c.get(SLOTS);
            t.ssrc_flaps += c.get(SSRC_FLAPS);
            t.events_dropped += c.get(EVENTS_DROPPED);
            t.digits_limited += c.get(DIGITS_LIMITED);
        }
        t
    }

    /// A leg of `family` for a session on `worker`: a pair of its own, or
    /// one of the worker's shared pairs (at random, other than `avoid`, the
    /// other leg's, when there is a choice: a datagram the callee sends
    /// before its answer is processed then cannot land on the caller's leg).
    fn new_leg(
        &self,
        worker: usize,
        family: Family,
        avoid: Option<usize>,
    ) -> Result<(NewLeg, IpAddr, u16), RelayError> {
        let fp = self
            .inner
            .pools
            .get(family)
            .ok_or(RelayError::NoFamily(family))?;
        match self.inner.cfg.layout {
            PortLayout::PerCall => {
                let (rtp, rtcp, ip, even_port) =
                    bind_pair(&self.inner.pools, &self.inner.cfg, family, false)?;
                Ok((
                    NewLeg::Own {
                        rtp,
                        rtcp,
                        ip,
                        even_port,
                    },
                    ip,
                    even_port,
                ))
            }
            PortLayout::Shared { .. } => {
                let mut mine: Vec<(usize, u16)> = self.inner.workers[worker]
                    .shared
                    .iter()
                    .enumerate()
                    .filter(|(_, (f, _))| *f == family)
                    .map(|(i, (_, p))| (i, *p))
                    .collect();
                if mine.len() > 1 {
                    mine.retain(|(i, _)| Some(*i) != avoid);
                }
                if mine.is_empty() {
                    return Err(RelayError::NoFamily(family));
                }
                let r = self
                    .inner
                    .hasher
                    .hash_one(self.inner.next_id.load(Ordering::Relaxed) ^ (family as u64) << 63);
                let (pair, port) = mine[(r % mine.len() as u64) as usize];
                Ok((NewLeg::Shared { pair }, fp.addr, port))
            }
        }
    }

    /// Allocate a session (one media stream) with leg A on `a` and leg B on
    /// `b` (each leg on its peer's family). Binds both port pairs now.
    pub fn allocate(&self, a: Family, b: Family) -> Result<Session, RelayError> {
        let max = self.inner.cfg.max_sessions;
        if self.inner.active.load(Ordering::Relaxed) >= max {
            return Err(RelayError::Full(max));
        }
        let worker =
            self.inner.next_worker.fetch_add(1, Ordering::Relaxed) % self.inner.workers.len();
        let (a_leg, a_ip, a_port) = self.new_leg(worker, a, None)?;
        let a_pair = match a_leg {
            NewLeg::Shared { pair } => Some(pair),
            NewLeg::Own { .. } => None,
        };
        let (b_leg, b_ip, b_port) = match self.new_leg(worker, b, a_pair) {
            Ok(x) => x,
            Err(e) => {
                if let NewLeg::Own { rtp, rtcp, .. } = a_leg {
                    drop((rtp, rtcp));
                    self.inner.pools.put(a_ip, a_port);
                }
                return Err(e);
            }
        };
        let id = SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(SessionShared {
            legs: [Counters::new(), Counters::new()],
        });
        let local = [
            LocalLeg {
                family: a,
                rtp: SocketAddr::new(a_ip, a_port),
                rtcp: SocketAddr::new(a_ip, a_port + 1),
            },
            LocalLeg {
                family: b,
                rtp: SocketAddr::new(b_ip, b_port),
                rtcp: SocketAddr::new(b_ip, b_port + 1),
            },
        ];
        let own = [
            matches!(a_leg, NewLeg::Own { .. }),
            matches!(b_leg, NewLeg::Own { .. }),
        ];
        let new = NewSession {
            id,
            shared: shared.clone(),
            legs: [a_leg, b_leg],
        };
        self.inner.active.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.workers[worker].send(Cmd::Add(Box::new(new))) {
            // The worker is gone: the command (and its sockets) was dropped.
            self.inner.active.fetch_sub(1, Ordering::Relaxed);
            if own[0] {
                self.inner.pools.put(a_ip, a_port);
            }
            if own[1] {
                self.inner.pools.put(b_ip, b_port);
            }
            return Err(e);
        }
        let mut h = self.inner.hasher.build_hasher();
        h.write_u64(id.0);
        let r = h.finish();
        Ok(Session {
            id,
            relay: self.clone(),
            worker,
            shared,
            local,
            dtmf: [
                DtmfState::new(r as u32, (r >> 32) as u32),
                DtmfState::new((r >> 16) as u32 ^ 0x5a5a_5a5a, (r >> 48) as u32),
            ],
            created_ns: sys::monotonic_ns(),
            released: false,
            own: own[0] || own[1],
        })
    }

    /// Free port pairs of a family.
    pub fn ports_available(&self, family: Family) -> usize {
        self.inner
            .pools
            .get(family)
            .and_then(|p| p.pool.lock().ok().map(|p| p.available()))
            .unwrap_or(0)
    }

    /// All port pairs of a family.
    pub fn ports_total(&self, family: Family) -> usize {
        self.inner
            .pools
            .get(family)
            .and_then(|p| p.pool.lock().ok().map(|p| p.total()))
            .unwrap_or(0)
    }

    /// Sessions allocated and not yet released by a worker.
    pub fn active_sessions(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Share (0.0..=1.0) of what bounds new sessions that is in use: sessions against
    /// [`RelayConfig::max_sessions`], and per family the port pairs of the pool (sessions with
    /// sockets of their own), whichever is fullest. For overload control: new calls are
    /// refused early when it nears 1.
    pub fn load(&self) -> f64 {
        let max = self.inner.cfg.max_sessions.max(1);
        let mut load = self.active_sessions() as f64 / max as f64;
        for family in [Family::V4, Family::V6] {
            let total = self.ports_total(family);
            if total > 0 {
                let used = total.saturating_sub(self.ports_available(family));
                load = load.max(used as f64 / total as f64);
            }
        }
        load.min(1.0)
    }

    /// Linux thread ids of the workers (for CPU accounting and pinning).
    pub fn worker_thread_ids(&self) -> Vec<i32> {
        self.inner
            .workers
            .iter()
            .map(|w| w.tid.load(Ordering::Relaxed) as i32)
            .collect()
    }

    /// Milliseconds since the relay started (the clock of
    /// [`StreamStats::last_packet_ms`]).
    pub fn now_ms(&self) -> u64 {
        worker::ms_since(self.inner.epoch_ns, sys::monotonic_ns())
    }

    /// Wait until every worker has processed the commands sent before this
    /// call (tests, orderly shutdown). Blocks: not for the signalling path.
    pub fn sync(&self, timeout: Duration) -> bool {
        let mut waits = Vec::new();
        for w in &self.inner.workers {
            let (tx, rx) = mpsc::channel();
            if w.send(Cmd::Sync(tx)).is_err() {
                return false;
            }
            waits.push(rx);
        }
        waits.iter().all(|rx| rx.recv_timeout(timeout).is_ok())
    }

    fn send(&self, worker: usize, c: Cmd) -> Result<(), RelayError> {
        self.inner.workers[worker].send(c)
    }
}

/// Bind a random free RTP/RTCP pair of `family` from the pool.
fn bind_pair(
    pools: &Pools,
    cfg: &RelayConfig,
    family: Family,
    twin_ready: bool,
) -> Result<(UdpSocket, UdpSocket, IpAddr, u16), RelayError> {
    let fp = pools.get(family).ok_or(RelayError::NoFamily(family))?;
    let mut pool = fp
        .pool
        .lock()
        .map_err(|_| RelayError::PortsExhausted(family))?;
    // Try as many pairs as are free; pairs that fail to bind (used by
    // another program) rest like released ones.
    let now_ns = sys::monotonic_ns();
    for _ in 0..pool.available() {
        let Some(even) = pool.take(now_ns) else { break };
        let bind = |port| {
            sys::media_socket(
                SocketAddr::new(fp.addr, port),
                cfg.tos,
                cfg.recv_buffer,
                twin_ready,
            )
        };
        let rtp = bind(even);
        let rtcp = match &rtp {
            Ok(_) => bind(even + 1),
            Err(_) => Err(io::Error::from(io::ErrorKind::AddrInUse)),
        };
        match (rtp, rtcp) {
            (Ok(a), Ok(b)) => return Ok((a, b, fp.addr, even)),
            _ => pool.put(even, now_ns),
        }
    }
    Err(RelayError::PortsExhausted(family))
}

struct DtmfState {
    ssrc: u32,
    ts_base: u32,
    seq: AtomicU32,
    /// 0: none; else 1 << 40 | pt << 32 | clock rate.
    telephone_event: AtomicU64,
}

impl DtmfState {
    fn new(ssrc: u32, seed: u32) -> DtmfState {
        DtmfState {
            ssrc,
            ts_base: seed,
            seq: AtomicU32::new(seed >> 16),
            telephone_event: AtomicU64::new(0),
        }
    }
}

/// One relayed media stream with two legs. Dropping it releases the ports.
pub struct Session {
    id: SessionId,
    relay: Relay,
    worker: usize,
    shared: Arc<SessionShared>,
    local: [LocalLeg; 2],
    dtmf: [DtmfState; 2],
    created_ns: u64,
    released: bool,
    /// A leg has sockets of its own (releasing returns their ports: the worker is woken).
    own: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("a", &self.local[0])
            .field("b", &self.local[1])
            .finish()
    }
}

impl Session {
    /// Session id (as in events).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Our addresses on a leg (what goes into that leg's SDP).
    pub fn local(&self, leg: Leg) -> LocalLeg {
        self.local[leg.idx()]
    }

    /// Set or change what a leg's peer announced in its SDP (offer or
    /// answer). A changed RTP address is a new offer: the leg re-latches.
    /// An unspecified address (c=0.0.0.0 hold) stops media towards the leg.
    pub fn set_remote(&self, leg: Leg, remote: RemoteMedia) -> Result<(), RelayError> {
        let family = self.local[leg.idx()].family;
        for a in std::iter::once(remote.rtp).chain(remote.rtcp) {
            if !a.ip().is_unspecified() && Family::of(a.ip()) != family {
                return Err(RelayError::FamilyMismatch { family, addr: a });
            }
        }
        let te = remote
            .telephone_event
            .filter(|(pt, clock)| *pt < 128 && *clock > 0)
            .map_or(0, |(pt, clock)| 1 << 40 | (pt as u64) << 32 | clock as u64);
        self.dtmf[leg.idx()]
            .telephone_event
            .store(te, Ordering::Relaxed);
        self.relay.send(
            self.worker,
            Cmd::SetRemote {
                id: self.id,
                leg: leg.idx(),
                remote: Box::new(remote),
            },
        )
    }

    /// Terminate SRTP on a leg (RFC 3711): what its peer sends is authenticated, checked for
    /// replay and decrypted with `keys.remote`; what is sent to it is encrypted with
    /// `keys.local`. `None` makes the leg plain again. A session whose legs are both plain runs
    /// the relay's plain path.
    pub fn set_srtp(&self, leg: Leg, keys: Option<&crate::SrtpKeys>) -> Result<(), RelayError> {
        self.relay.send(
            self.worker,
            Cmd::Srtp {
                id: self.id,
                leg: leg.idx(),
                ctx: keys.map(|k| Box::new(crate::secure::LegSrtp::new(k))),
            },
        )
    }

    /// Mark a leg as held (sendonly/inactive/recvonly or c=0.0.0.0): the
    /// session then uses the hold timeout.
    pub fn set_hold(&self, leg: Leg, hold: bool) -> Result<(), RelayError> {
        self.relay.send(
            self.worker,
            Cmd::SetHold {
                id: self.id,
                leg: leg.idx(),
                hold,
            },
        )
    }

    /// Forget the latched source of a leg; the next valid packet latches again.
    pub fn relatch(&self, leg: Leg) -> Result<(), RelayError> {
        self.relay.send(
            self.worker,
            Cmd::Relatch {
                id: self.id,
                leg: leg.idx(),
            },
        )
    }

    /// Generate an RFC 4733 event towards `leg`'s peer (e.g. for a SIP INFO
    /// digit from the other side), from our RTP port on that leg, with the
    /// telephone-event payload type given in that leg's [`RemoteMedia`].
    /// The packets are built here (rtc-rtp) and paced by the worker; they
    /// carry their own SSRC (the forwarded stream is never re-sequenced).
    pub fn inject_dtmf(&self, leg: Leg, digit: char, duration: Duration) -> Result<(), RelayError> {
        let code = dtmf::event_code(digit).ok_or(DtmfError::BadDigit(digit))?;
        let st = &self.dtmf[leg.idx()];
        let te = st.telephone_event.load(Ordering::Relaxed);
        if te == 0 {
            return Err(DtmfError::NoPayloadType.into());
        }
        let (pt, clock) = (((te >> 32) & 0x7f) as u8, te as u32);
        let elapsed_us = sys::monotonic_ns().saturating_sub(self.created_ns) / 1000;
        let timestamp = st
            .ts_base
            .wrapping_add((elapsed_us.wrapping_mul(clock as u64) / 1_000_000) as u32);
        let dur = duration.clamp(dtmf::MIN_DURATION, dtmf::MAX_DURATION);
        let npk = (dur.as_micros() as u64).div_ceil(20_000).max(1) as u32 + 2;
        let first_seq = st.seq.fetch_add(npk, Ordering::Relaxed) as u16;
        let packets = dtmf::event_packets(
            code,
            dur,
            &EventParams {
                payload_type: pt,
                clock_rate: clock,
                ssrc: st.ssrc,
                first_seq,
                timestamp,
                interval: Duration::from_millis(20),
                volume: dtmf::DEFAULT_VOLUME,
            },
        )?;
        self.relay.send(
            self.worker,
            Cmd::Dtmf {
                id: self.id,
                leg: leg.idx(),
                packets,
            },
        )
    }

    /// Counters of what the relay receives on `leg` (lock-free read).
    pub fn stats(&self, leg: Leg) -> StreamStats {
        self.shared.legs[leg.idx()].snapshot()
    }

    /// How long since the last accepted packet on `leg` (None: never).
    pub fn idle(&self, leg: Leg) -> Option<Duration> {
        let last = self.shared.legs[leg.idx()].get(crate::stats::C::LastRxMs);
        (last != 0).then(|| Duration::from_millis(self.relay.now_ms().saturating_sub(last)))
    }

    /// Release now (same as dropping).
    pub fn release(mut self) {
        self.do_release();
    }

    fn do_release(&mut self) {
        if !self.released {
            self.released = true;
            let _ = self.relay.send(
                self.worker,
                Cmd::Release {
                    id: self.id,
                    own: self.own,
                },
            );
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.do_release();
    }
}
