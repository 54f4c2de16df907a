//! The forwarding path: receive a batch, find each datagram's leg, check its source, account
//! it, and queue it towards the other leg; then one `sendmmsg` per outgoing socket.
//!
//! No allocation, no lock, no log line: fixed buffers ([`Batch`]), relaxed single-writer
//! counters, raw pointers from the out messages into the very buffers the datagrams were
//! received into (the payload is never copied).

use std::mem;
use std::os::fd::RawFd;

use super::demux::{ByIp, Demux};
use super::leg::WLeg;
use super::mix::Change;
use super::{decode, leg_token, Sums, WSession, MAX_BATCH};
use crate::packet::{classify, Kind, RtpInfo};
use crate::relay::{Event, LatchPolicy, Leg, SessionId};
use crate::secure::Transform;
use crate::stats::{Counters, C};
use crate::sys::{self, Endpoint, RawAddr};

/// Receive buffer per datagram; larger datagrams are dropped (oversize).
pub(crate) const BUF_SIZE: usize = 2048;
/// Distinct outgoing sockets one batch may use: the other leg's two with own
/// sockets; at most every shared socket of the worker with shared pairs.
pub(super) const MAX_OUT: usize = 16;

/// Receive buffers, the message headers pointing into them, and the outgoing
/// lists. The headers hold raw pointers into the boxed slices, which never move.
pub(super) struct Batch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    /// `MAX_OUT` lists of `cap` outgoing messages.
    out_iovs: Box<[libc::iovec]>,
    out_msgs: Box<[libc::mmsghdr]>,
    /// Per outgoing message: the receiving leg (`slot << 1 | leg`), whose
    /// forwarded count a send error takes back.
    out_owner: Box<[u64]>,
    /// Per received datagram on a shared socket: the leg token its source is latched to
    /// (0: none), looked up ahead of the forwarding pass (`shared_socket`).
    hits: Box<[u64]>,
    /// Socket of each list in use.
    out_fd: [RawFd; MAX_OUT],
    out_n: [usize; MAX_OUT],
    nlists: usize,
    /// How many receive headers the last recvmmsg may have written.
    last_n: usize,
    /// Datagrams per recvmmsg (the configured batch): buffers and lists hold this many.
    cap: usize,
    /// A recvmmsg of this round filled the whole batch: the worker is busy
    /// enough that its next wait returns at once, so interrupt moderation
    /// would only add latency (and idle time) there.
    pub(super) saw_full: bool,
    /// Datagrams received this round (reset by the worker).
    pub(super) got: usize,
}

impl Batch {
    /// Buffers for `cap` datagrams per round (1..=MAX_BATCH).
    pub(super) fn new(cap: usize) -> Box<Batch> {
        let cap = cap.clamp(1, MAX_BATCH);
        // SAFETY (all zeroed() below): plain C structs for which all-zero is valid.
        let zero_msg = || unsafe { mem::zeroed::<libc::mmsghdr>() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let nout = MAX_OUT * cap;
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; BUF_SIZE]; cap].into_boxed_slice(),
            names: (0..cap).map(|_| RawAddr::empty()).collect(),
            iovs: vec![zero_iov; cap].into_boxed_slice(),
            msgs: (0..cap).map(|_| zero_msg()).collect(),
            // The outgoing lists are large and mostly never used: zeroed pages
            // from the allocator, resident only once touched (queue() fills in
            // each entry it uses).
            // SAFETY: all-zero is a valid iovec, mmsghdr and u64.
            out_iovs: unsafe { zeroed_slice(nout) },
            out_msgs: unsafe { zeroed_slice(nout) },
            out_owner: unsafe { zeroed_slice(nout) },
            hits: vec![0; cap].into_boxed_slice(),
            out_fd: [-1; MAX_OUT],
            out_n: [0; MAX_OUT],
            nlists: 0,
            last_n: cap,
            cap,
            saw_full: false,
            got: 0,
        });
        let b_ref = &mut *b;
        for i in 0..cap {
            b_ref.iovs[i].iov_base = b_ref.bufs[i].as_mut_ptr() as *mut libc::c_void;
            b_ref.iovs[i].iov_len = BUF_SIZE;
            let h = &mut b_ref.msgs[i].msg_hdr;
            h.msg_name = &mut b_ref.names[i].sa as *mut _ as *mut libc::c_void;
            h.msg_namelen = sys::RAW_ADDR_CAP;
            h.msg_iov = &mut b_ref.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// recvmmsg into the first `vlen` buffers (the kernel wrote the address
    /// lengths of the last batch: reset them first).
    #[inline]
    fn receive(&mut self, fd: RawFd, vlen: usize) -> usize {
        for m in &mut self.msgs[..self.last_n.min(self.cap)] {
            m.msg_hdr.msg_namelen = sys::RAW_ADDR_CAP;
        }
        let n = sys::recvmmsg(fd, &mut self.msgs[..vlen.clamp(1, self.cap)]);
        self.last_n = n;
        self.saw_full |= n == self.cap;
        self.got += n;
        n
    }

    /// Length of received datagram `i`, or None when it did not fit.
    #[inline]
    fn len_of(&self, i: usize) -> Option<usize> {
        let m = &self.msgs[i];
        let len = m.msg_len as usize;
        (m.msg_hdr.msg_flags & libc::MSG_TRUNC == 0 && len <= BUF_SIZE).then_some(len)
    }

    /// The source of datagram `i` in kernel form (to send back to it).
    #[inline]
    fn raw_src(&self, i: usize) -> RawAddr {
        RawAddr {
            sa: self.names[i].sa,
            len: self.msgs[i].msg_hdr.msg_namelen,
        }
    }

    /// Queue buffer `i` (`len` bytes) to `dest` through `fd`. False when no
    /// list is left (more distinct sockets than `MAX_OUT`: cannot happen with
    /// the layouts the relay builds).
    #[inline]
    fn queue(&mut self, fd: RawFd, i: usize, len: usize, dest: &RawAddr, owner: u64) -> bool {
        let list = match self.out_fd[..self.nlists].iter().position(|f| *f == fd) {
            Some(l) => l,
            None if self.nlists < MAX_OUT => {
                self.out_fd[self.nlists] = fd;
                self.out_n[self.nlists] = 0;
                self.nlists += 1;
                self.nlists - 1
            }
            None => return false,
        };
        let j = list * self.cap + self.out_n[list];
        self.out_n[list] += 1;
        self.out_iovs[j].iov_base = self.bufs[i].as_mut_ptr() as *mut libc::c_void;
        self.out_iovs[j].iov_len = len;
        let iov: *mut libc::iovec = &mut self.out_iovs[j];
        let h = &mut self.out_msgs[j].msg_hdr;
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        h.msg_name = &dest.sa as *const _ as *mut libc::c_void;
        h.msg_namelen = dest.len;
        self.out_owner[j] = owner;
        true
    }
}

/// `n` zeroed `T`s straight from the allocator (large ones are fresh,
/// untouched pages).
///
/// # Safety
/// All-zero bytes must be a valid `T`.
unsafe fn zeroed_slice<T>(n: usize) -> Box<[T]> {
    let layout = std::alloc::Layout::array::<T>(n).expect("small array");
    if layout.size() == 0 {
        return Vec::new().into_boxed_slice();
    }
    // SAFETY: non-zero size; the pointer is checked; all-zero is a valid T
    // (caller); the Box frees it with the same layout (Box<[T]> of n elements).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

/// What the forwarding path needs besides the batch.
pub(super) struct Ctx<'a> {
    pub(super) demux: &'a mut Demux,
    pub(super) by_ip: &'a ByIp,
    pub(super) sink: &'a (dyn Fn(Event) -> bool + Send + Sync),
    pub(super) policy: &'a LatchPolicy,
    pub(super) report_latching: bool,
    pub(super) now_us: u64,
    pub(super) now_ms: u64,
    pub(super) sums: &'a mut Sums,
}

/// Datagrams on a leg's own socket `sock` (0 RTP, 1 RTCP): one recvmmsg.
/// True when something was received.
#[inline]
pub(super) fn own_socket(
    slots: &mut [Option<WSession>],
    cx: &mut Ctx,
    b: &mut Batch,
    slot: usize,
    leg: usize,
    sock: usize,
    max: usize,
) -> bool {
    let Some(Some(s)) = slots.get_mut(slot) else {
        return false;
    };
    let vlen = (s.legs[leg].vlen[sock] as usize).clamp(1, max);
    let n = b.receive(s.legs[leg].fds[sock], vlen);
    if n == 0 {
        return false;
    }
    s.legs[leg].vlen[sock] = if n == vlen { (2 * vlen).min(max) } else { n } as u16;
    for i in 0..n {
        let counters = &s.shared.legs[leg];
        let Some(len) = b.len_of(i) else {
            counters.add(C::DropOversize, 1);
            cx.sums.oversize += 1;
            continue;
        };
        // SRTP: authenticated and decrypted before anything else looks at it.
        let Some(len) = unprotect(s, leg, &mut b.bufs[i][..len], cx) else {
            continue;
        };
        let counters = &s.shared.legs[leg];
        let Some(rtp) = relayable(classify(&b.bufs[i][..len], sock == 0), counters, cx.sums) else {
            continue;
        };
        // Symmetric RTP: is this the source we latched onto? If not, may the
        // leg latch onto it (one of its known IPs)?
        let src = Endpoint::from_raw(&b.names[i]);
        let l = &mut s.legs[leg];
        if src != l.src[sock] {
            if !l.may_latch(sock, &src, cx.policy, cx.now_ms) {
                counters.add(C::DropForeign, 1);
                cx.sums.foreign += 1;
                continue;
            }
            l.latch(sock, src, b.raw_src(i));
            latched(s, leg, sock, &b.names[i], cx);
        }
        deliver(s, slot, leg, sock, i, len, rtp, b, cx);
    }
    flush(b, slots, cx);
    true
}

/// Datagrams on shared socket `j` (its `sock`: 0 RTP, 1 RTCP): recvmmsg
/// until the socket is drained (bounded), each datagram demultiplexed by its
/// exact source address. True when something was received.
#[inline]
pub(super) fn shared_socket(
    slots: &mut [Option<WSession>],
    cx: &mut Ctx,
    b: &mut Batch,
    j: u8,
    fd: RawFd,
    sock: usize,
    max: usize,
) -> bool {
    // One batch per readiness, then the other ready sockets get their turn: epoll is
    // level-triggered, so what is left is read in the next round. Up to 8 batches in a row
    // (stop 31 and before) let a backlog on one family's socket hold the other's datagrams
    // behind up to 256 sends (~2 ms on the hosts of issue #14); one batch bounds that wait
    // at 32, and the extra epoll_wait per 32 datagrams is not measurable (benches/README,
    // stop 32).
    let n = b.receive(fd, max);
    if n == 0 {
        return false;
    }
    // Between two rounds the kernel's per-datagram path evicts the demux array and the
    // sessions from the caches, so each datagram's lookups would miss one after the other
    // (most of the relay's own time at 1 000 streams, by `perf annotate`). Ask for the
    // whole batch's lines first, each step's from lines the step before asked for, so
    // that the misses overlap: the demux slots, then each latched leg's session, then
    // its shared counters.
    for i in 0..n {
        cx.demux.prefetch(j, &Endpoint::from_raw(&b.names[i]));
    }
    for i in 0..n {
        let tok = cx
            .demux
            .get(j, &Endpoint::from_raw(&b.names[i]))
            .unwrap_or(0);
        b.hits[i] = tok;
        sys::prefetch(slots.as_ptr().wrapping_add(decode(tok).0));
    }
    // (A hint needs no generation check: a stale token only warms a line for nothing.)
    for &tok in b.hits[..n].iter().filter(|&&t| t != 0) {
        let (slot, _, leg, _) = decode(tok);
        if let Some(Some(s)) = slots.get(slot) {
            sys::prefetch(&s.shared.legs[leg]);
        }
    }
    // A datagram that latches a leg changes the demux: the lookups made ahead no longer
    // hold for the rest of the batch, which looks up afresh.
    let mut fresh = false;
    for i in 0..n {
        let src = Endpoint::from_raw(&b.names[i]);
        let hit = if fresh {
            cx.demux.get(j, &src)
        } else {
            Some(b.hits[i]).filter(|&t| t != 0)
        };
        let Some(len) = b.len_of(i) else {
            if let Some((slot, leg)) = hit.and_then(|t| live(slots, t)) {
                if let Some(Some(s)) = slots.get(slot) {
                    s.shared.legs[leg].add(C::DropOversize, 1);
                }
            }
            cx.sums.oversize += 1;
            continue;
        };
        let (slot, leg, len, kind) = match hit.and_then(|t| live(slots, t)) {
            Some((slot, leg)) => {
                let Some(Some(s)) = slots.get_mut(slot) else {
                    continue;
                };
                let Some(len) = unprotect(s, leg, &mut b.bufs[i][..len], cx) else {
                    continue;
                };
                (slot, leg, len, classify(&b.bufs[i][..len], sock == 0))
            }
            None => {
                // Not a latched peer: a leg that accepts its IP may latch
                // onto it, with an authentic (SRTP) and valid RTP/RTCP datagram.
                let Some((slot, leg)) = pick(slots, cx, j, sock, &src) else {
                    cx.sums.foreign += 1;
                    continue;
                };
                let Some(Some(s)) = slots.get_mut(slot) else {
                    continue;
                };
                let Some(len) = unprotect(s, leg, &mut b.bufs[i][..len], cx) else {
                    continue;
                };
                let kind = classify(&b.bufs[i][..len], sock == 0);
                match kind {
                    Kind::Rtp(_) | Kind::Rtcp => {}
                    Kind::Malformed => {
                        cx.sums.malformed += 1;
                        continue;
                    }
                    _ => {
                        cx.sums.not_rtp += 1;
                        continue;
                    }
                }
                fresh = true;
                let l = &mut s.legs[leg];
                let old = l.src[sock];
                if old.is_some() {
                    cx.demux.remove(j, &old);
                }
                if !cx.demux.insert(j, src, leg_token(slot, s.gen, leg, sock)) {
                    // No room (cannot happen: room is reserved per session).
                    l.src[sock] = Endpoint::NONE;
                    l.update_dest();
                    cx.sums.foreign += 1;
                    continue;
                }
                l.latch(sock, src, b.raw_src(i));
                latched(s, leg, sock, &b.names[i], cx);
                (slot, leg, len, kind)
            }
        };
        let Some(Some(s)) = slots.get_mut(slot) else {
            continue;
        };
        let Some(rtp) = relayable(kind, &s.shared.legs[leg], cx.sums) else {
            continue;
        };
        deliver(s, slot, leg, sock, i, len, rtp, b, cx);
    }
    flush(b, slots, cx);
    true
}

/// A classified datagram of a known leg: RTP (`Some(Some(header))`) and RTCP (`Some(None)`)
/// are relayed; anything else is dropped and counted against the leg (None).
#[inline]
fn relayable(kind: Kind, counters: &Counters, sums: &mut Sums) -> Option<Option<RtpInfo>> {
    match kind {
        Kind::Rtp(info) => Some(Some(info)),
        Kind::Rtcp => Some(None),
        Kind::Malformed => {
            counters.add(C::DropMalformed, 1);
            sums.malformed += 1;
            None
        }
        Kind::Stun | Kind::Dtls | Kind::Other => {
            counters.add(C::DropNotRtp, 1);
            sums.not_rtp += 1;
            None
        }
    }
}

/// SRTP: a datagram from `leg`'s peer authenticated, replay-checked and
/// decrypted in place (its new length), or dropped and counted (None).
/// Sessions without SRTP pass it through untouched.
#[inline]
fn unprotect(s: &mut WSession, leg: usize, pkt: &mut [u8], cx: &mut Ctx) -> Option<usize> {
    let Some(sec) = s.srtp.as_deref_mut() else {
        return Some(pkt.len());
    };
    match sec.inbound(leg, pkt) {
        Ok(n) => Some(n),
        Err(()) => {
            s.shared.legs[leg].add(C::DropSrtp, 1);
            cx.sums.srtp += 1;
            None
        }
    }
}

/// (slot, leg) of a leg token whose session is still there.
#[inline]
fn live(slots: &[Option<WSession>], tok: u64) -> Option<(usize, usize)> {
    let (slot, gen, leg, _) = decode(tok);
    match slots.get(slot) {
        Some(Some(s)) if s.gen == gen => Some((slot, leg)),
        _ => None,
    }
}

/// The leg a datagram from `src` (no latched peer) on shared socket `j`
/// latches onto: among the legs that accept `src`'s IP there and may latch
/// now, the one whose SDP names exactly `src`, else the only one. Several
/// candidates and no exact match: ambiguous, none (dropped as foreign; the
/// next datagram may decide once one of them latched).
#[inline]
fn pick(
    slots: &[Option<WSession>],
    cx: &Ctx,
    j: u8,
    sock: usize,
    src: &Endpoint,
) -> Option<(usize, usize)> {
    let mut exact = None;
    let mut n_exact = 0;
    let mut any = None;
    let mut n_any = 0;
    for &tok in cx.by_ip.get(j, src) {
        let (slot, gen, leg, _) = decode(tok);
        let Some(Some(s)) = slots.get(slot) else {
            continue;
        };
        let l = &s.legs[leg];
        if s.gen != gen || !l.may_latch(sock, src, cx.policy, cx.now_ms) {
            continue;
        }
        if l.c.sdp[sock] == *src {
            exact = Some((slot, leg));
            n_exact += 1;
        }
        any = Some((slot, leg));
        n_any += 1;
    }
    match (n_exact, n_any) {
        (1, _) => exact,
        (0, 1) => any,
        _ => None,
    }
}

/// Counters and the event of a new latch.
#[inline]
fn latched(s: &WSession, leg: usize, sock: usize, name: &RawAddr, cx: &mut Ctx) {
    let counters = &s.shared.legs[leg];
    counters.set(C::Latched, 1);
    counters.add(C::Relatches, 1);
    if cx.report_latching {
        if let Some(source) = name.socket_addr() {
            emit(
                cx,
                Event::Latched {
                    session: s.id,
                    leg: Leg::from_idx(leg),
                    rtcp: sock == 1,
                    source,
                },
            );
        }
    }
}

/// Account an accepted datagram (buffer `i`) of `leg` and queue it out
/// through the other leg.
#[allow(clippy::too_many_arguments)]
#[inline]
fn deliver(
    s: &mut WSession,
    slot: usize,
    leg: usize,
    sock: usize,
    i: usize,
    len: usize,
    rtp: Option<RtpInfo>,
    b: &mut Batch,
    cx: &mut Ctx,
) {
    let counters = &*s.shared;
    let counters = &counters.legs[leg];
    let id = s.id;
    let (l, o) = match &mut s.legs {
        [a, b] if leg == 0 => (a, &*b),
        [a, b] => (b, &*a),
    };
    l.src_last_ms[sock] = cx.now_ms;
    l.last_rx_ms = cx.now_ms;
    l.timed_out = false;
    counters.set(C::LastRxMs, cx.now_ms);
    let is_rtcp = match rtp {
        Some(info) => {
            counters.add(C::RtpPackets, 1);
            counters.add(C::RtpBytes, len as u64);
            // Telephone events under an SSRC of their own (some devices send them so,
            // between voice packets) are a stream of their own: they neither restart the
            // voice stream's loss and jitter nor count as an SSRC change.
            if info.payload_type != l.te_pt || l.seq.follows(info.ssrc) {
                let clock = l.clock_for(info.payload_type);
                let changed = l.seq.update(
                    info.ssrc,
                    info.seq,
                    info.timestamp,
                    cx.now_us,
                    clock,
                    counters,
                );
                // The rare branch: a new SSRC.
                if let Some(from) = changed {
                    mixed(l, [from, info.ssrc], counters, cx, id, leg);
                }
            }
            if info.payload_type == l.te_pt {
                if let Some((digit, duration_ms)) = l.dtmf_end(&b.bufs[i][..len], &info) {
                    if l.c.digits.allow(cx.now_ms) {
                        emit(
                            cx,
                            Event::Dtmf {
                                session: id,
                                leg: Leg::from_idx(leg),
                                digit,
                                duration_ms,
                            },
                        );
                    } else {
                        cx.sums.digits_limited += 1;
                    }
                }
            }
            false
        }
        None => {
            counters.add(C::RtcpPackets, 1);
            counters.add(C::RtcpBytes, len as u64);
            true
        }
    };
    // Out through the other leg: RTCP to its RTCP socket unless it muxes.
    let k = usize::from(is_rtcp && !o.mux);
    let dest = &o.dest[k];
    if !dest.is_set() {
        counters.add(C::DropNoDest, 1);
        cx.sums.no_dest += 1;
        return;
    }
    // Towards an SRTP leg: protected in the receive buffer (there is room for the tag).
    let len = match s.srtp.as_deref_mut() {
        None => len,
        Some(sec) => match sec.outbound(1 - leg, &mut b.bufs[i], len, is_rtcp) {
            Ok(n) => n,
            Err(()) => {
                counters.add(C::DropSrtp, 1);
                cx.sums.srtp += 1;
                return;
            }
        },
    };
    if !b.queue(o.fds[k], i, len, dest, (slot as u64) << 1 | leg as u64) {
        counters.add(C::DropSendError, 1);
        cx.sums.send_err += 1;
        return;
    }
    // Counted as forwarded now; a send error takes it back (flush).
    counters.add(C::FwdPackets, 1);
    counters.add(C::FwdBytes, len as u64);
    cx.sums.fwd += 1;
    cx.sums.fwd_bytes += len as u64;
}

/// An event to the sink; one it refuses (its queue is full) is counted.
#[cold]
fn emit(cx: &mut Ctx, e: Event) {
    if !(cx.sink)(e) {
        cx.sums.events_dropped += 1;
    }
}

/// Leg `leg`'s stream changed from SSRC `ssrcs[0]` to `ssrcs[1]`: a change soon after the one
/// before is counted, and enough of them in a short time are reported (see `mix`).
#[cold]
fn mixed(
    l: &mut WLeg,
    ssrcs: [u32; 2],
    counters: &Counters,
    cx: &mut Ctx,
    session: SessionId,
    leg: usize,
) {
    match l.c.mix.change(cx.now_ms) {
        Change::Plain => {}
        c @ (Change::Flap | Change::Report) => {
            counters.add(C::SsrcFlaps, 1);
            cx.sums.ssrc_flaps += 1;
            if c == Change::Report {
                emit(
                    cx,
                    Event::MixedStreams {
                        session,
                        leg: Leg::from_idx(leg),
                        source: l.c.src_raw[0].socket_addr(),
                        ssrcs,
                    },
                );
            }
        }
    }
}

/// One sendmmsg per outgoing list; a datagram the kernel refuses is dropped
/// (send error) and the rest of its list still goes.
#[inline]
fn flush(b: &mut Batch, slots: &[Option<WSession>], cx: &mut Ctx) {
    for list in 0..b.nlists {
        let (fd, cnt) = (b.out_fd[list], b.out_n[list]);
        let base = list * b.cap;
        let mut off = 0;
        while off < cnt {
            match sys::sendmmsg(fd, &mut b.out_msgs[base + off..base + cnt]) {
                Ok(sent) if sent > 0 => off += sent,
                _ => {
                    let j = base + off;
                    let len = b.out_iovs[j].iov_len as u64;
                    let owner = b.out_owner[j];
                    if let Some(Some(s)) = slots.get((owner >> 1) as usize) {
                        let c = &s.shared.legs[(owner & 1) as usize];
                        c.sub(C::FwdPackets, 1);
                        c.sub(C::FwdBytes, len);
                        c.add(C::DropSendError, 1);
                    }
                    cx.sums.fwd -= 1;
                    cx.sums.fwd_bytes -= len;
                    cx.sums.send_err += 1;
                    off += 1;
                }
            }
        }
        b.out_n[list] = 0;
    }
    b.nlists = 0;
}
