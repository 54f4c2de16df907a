//! One leg of a session as its worker sees it: where its peer may send from (known IPs,
//! latched source), where packets towards the peer go, and the per-stream state the forwarding
//! path updates.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use super::digits::DigitRate;
use super::mix::MixWatch;
use crate::dtmf;
use crate::packet::{telephone_event, RtpInfo};
use crate::relay::{LatchMode, LatchPolicy, RemoteMedia};
use crate::stats::SeqState;
use crate::sys::{Endpoint, RawAddr};

pub(super) const MAX_CLOCKS: usize = 16;
pub(super) const DEFAULT_CLOCK: u32 = 8000;
/// `WLeg::te_pt` when the leg's SDP has no telephone-event (RTP payload
/// types are 7 bits: no packet matches it).
pub(super) const NO_PT: u8 = 0xff;
/// SDP RTP IP, SDP RTCP IP, signalling IP.
pub(super) const MAX_KNOWN: usize = 3;
/// `WLeg::shared` of a leg with sockets of its own.
pub(super) const OWN: u8 = u8::MAX;

/// Where a new leg's packets arrive.
pub(crate) enum NewLeg {
    /// Its own RTP and RTCP sockets (per-call ports), owned by the worker until release.
    Own {
        rtp: UdpSocket,
        rtcp: UdpSocket,
        ip: IpAddr,
        even_port: u16,
    },
    /// One of the worker's shared port pairs (index of the pair).
    Shared { pair: usize },
}

/// Per-leg state the forwarding path touches on every packet, kept small
/// (a few cache lines); the rest lives behind `c`.
pub(super) struct WLeg {
    /// RTP and RTCP sockets (its own, or the shared pair's).
    pub(super) fds: [RawFd; 2],
    /// Shared sockets (worker indexes) of RTP and RTCP; [`OWN`] with own sockets.
    pub(super) shared: [u8; 2],
    /// Adaptive recvmmsg size per own socket: 1 for the usual one-datagram
    /// wake-ups (no failed second dequeue in the kernel), doubling up to the
    /// configured batch while the socket keeps filling it.
    pub(super) vlen: [u16; 2],
    pub(super) mux: bool,
    pub(super) timed_out: bool,
    last_pt: u8,
    last_clock: u32,
    /// telephone-event payload type of the leg's SDP ([`NO_PT`]: none).
    pub(super) te_pt: u8,
    /// Latched sources per socket: [RTP port, RTCP port].
    pub(super) src: [Endpoint; 2],
    /// Where packets towards this leg's peer go: [RTP, RTCP].
    pub(super) dest: [RawAddr; 2],
    pub(super) seq: SeqState,
    pub(super) last_rx_ms: u64,
    pub(super) src_last_ms: [u64; 2],
    pub(super) c: Box<LegCold>,
}

/// Per-leg state of the control path.
pub(super) struct LegCold {
    /// Own RTP and RTCP sockets (closed on release); none on a shared pair.
    pub(super) own: Option<([UdpSocket; 2], IpAddr, u16)>,
    pub(super) has_remote: bool,
    /// SDP addresses (first guesses): [RTP, RTCP].
    pub(super) sdp: [Endpoint; 2],
    /// The IPs (port ignored) this leg accepts media from: its SDP's and its
    /// signalling source's. Empty until the leg's SDP is known.
    pub(super) known: [Endpoint; MAX_KNOWN],
    pub(super) nknown: usize,
    sdp_raw: [RawAddr; 2],
    rtcp_explicit: bool,
    /// IPs of the last SDP that named one: [RTP, RTCP] (port 0).
    sdp_ips: [Endpoint; 2],
    /// c=0.0.0.0: send nothing towards this leg.
    pub(super) zero_hold: bool,
    pub(super) hold: bool,
    pub(super) src_raw: [RawAddr; 2],
    clocks: [(u8, u32); MAX_CLOCKS],
    nclocks: usize,
    /// Clock rate of the telephone-event payload type.
    te_clock: u32,
    /// (SSRC, RTP timestamp) of the last DTMF event reported: its repeated
    /// end packets are not reported again.
    dtmf_last: Option<(u32, u32)>,
    /// Whether the latched RTP source carries several streams.
    pub(super) mix: MixWatch,
    /// How many RFC 4733 digits the leg may still report.
    pub(super) digits: DigitRate,
}

impl WLeg {
    /// A leg on `fds` (its own sockets in `own`, or shared sockets `shared`).
    pub(super) fn new(
        fds: [RawFd; 2],
        shared: [u8; 2],
        own: Option<([UdpSocket; 2], IpAddr, u16)>,
    ) -> WLeg {
        WLeg {
            fds,
            shared,
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
                own,
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
                mix: MixWatch::default(),
                digits: DigitRate::default(),
            }),
        }
    }

    /// A leg with its own sockets.
    pub(super) fn own(rtp: UdpSocket, rtcp: UdpSocket, ip: IpAddr, even_port: u16) -> WLeg {
        let fds = [rtp.as_raw_fd(), rtcp.as_raw_fd()];
        WLeg::new(fds, [OWN; 2], Some(([rtp, rtcp], ip, even_port)))
    }

    pub(super) fn is_shared(&self) -> bool {
        self.shared[0] != OWN
    }

    /// The end of an RFC 4733 event in an accepted RTP packet of the leg's
    /// telephone-event payload type: `(digit, duration in ms)` for the first
    /// end packet of an event (new SSRC/timestamp); `None` for progress
    /// packets, repeated end packets, codes other than 0-15 and payloads
    /// shorter than 4 bytes. Reads the payload in place, allocates nothing.
    #[inline]
    pub(super) fn dtmf_end(&mut self, pkt: &[u8], info: &RtpInfo) -> Option<(char, u32)> {
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
    pub(super) fn clock_for(&mut self, pt: u8) -> u32 {
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
    pub(super) fn update_dest(&mut self) {
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
            // RTP came from elsewhere than announced: guess its port + 1.
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
    pub(super) fn known_ip(&self, src: &Endpoint) -> bool {
        self.c.known[..self.c.nknown].iter().any(|k| k.same_ip(src))
    }

    /// Whether a packet from `src` (not the latched source of socket `sock`)
    /// may make the leg latch onto it (see [`LatchMode`]).
    #[inline]
    pub(super) fn may_latch(
        &self,
        sock: usize,
        src: &Endpoint,
        policy: &LatchPolicy,
        now_ms: u64,
    ) -> bool {
        if self.src[sock].is_some() {
            return match policy.relatch_after_silence {
                Some(d) => {
                    now_ms.saturating_sub(self.src_last_ms[sock]) >= d.as_millis() as u64
                        && self.known_ip(src)
                }
                None => false,
            };
        }
        match policy.mode {
            // RTCP must come from the host that sends the RTP.
            LatchMode::KnownIp if sock == 1 && self.src[0].is_some() => src.same_ip(&self.src[0]),
            LatchMode::KnownIp => self.known_ip(src),
            LatchMode::SdpExact => self.c.has_remote && *src == self.c.sdp[sock],
        }
    }

    /// Apply a new SDP of the peer. Returns true when the leg must latch
    /// again (first SDP, a changed address, a hold change, or a latched
    /// source whose IP the new SDP no longer names).
    pub(super) fn set_remote(&mut self, remote: &RemoteMedia) -> bool {
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
        let changed = !self.c.has_remote || rtp != self.c.sdp[0] || self.c.zero_hold != zero;
        self.c.has_remote = true;
        self.c.sdp = [rtp, Endpoint::from_std(rtcp_addr)];
        self.c.sdp_raw = [RawAddr::from_std(remote.rtp), RawAddr::from_std(rtcp_addr)];
        self.set_known(remote.rtp, rtcp_addr, remote.signalling);
        let stale = self.src.iter().any(|s| s.is_some() && !self.known_ip(s));
        self.c.rtcp_explicit = remote.rtcp.is_some() || remote.rtcp_mux;
        self.c.zero_hold = zero;
        self.mux = remote.rtcp_mux;
        match remote
            .telephone_event
            .filter(|(pt, clock)| *pt < 128 && *clock > 0)
        {
            Some((pt, clock)) => {
                self.te_pt = pt;
                self.c.te_clock = clock;
            }
            None => self.te_pt = NO_PT,
        }
        self.c.nclocks = 0;
        for &(pt, clock) in remote.clock_rates.iter().take(MAX_CLOCKS) {
            if pt < 128 && clock > 0 {
                self.c.clocks[self.c.nclocks] = (pt, clock);
                self.c.nclocks += 1;
            }
        }
        self.last_pt = 0xff;
        self.update_dest();
        changed || stale
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

    /// Latch socket `sock` onto `src` (`raw`: its kernel form, for sending).
    #[inline]
    pub(super) fn latch(&mut self, sock: usize, src: Endpoint, raw: RawAddr) {
        if sock == 0 {
            self.c.mix.reset();
        }
        self.src[sock] = src;
        self.c.src_raw[sock] = raw;
        self.update_dest();
    }

    pub(super) fn unlatch(&mut self) {
        self.src = [Endpoint::NONE; 2];
        self.c.src_raw = [RawAddr::empty(); 2];
        self.update_dest();
    }
}
