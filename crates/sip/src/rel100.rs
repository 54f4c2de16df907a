//! Reliable provisional responses (RFC 3262), sans-IO: the `RSeq`/`RAck` headers, the UAS side that retransmits a reliable `1xx` until its `PRACK` ([`ReliableSender`])
//! and the UAC side that accepts each reliable `1xx` once and in order ([`ReliableReceiver`]).
//!
//! A B2BUA terminates 100rel per leg: a leg whose peer requires it gets reliable provisionals
//! (and answers PRACKs) whatever the other leg does; a leg whose peer sends them gets PRACKs.
//! Nothing here reads a clock: `now` comes in, deadlines go out.

use crate::{Message, Method};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The option tag.
pub const TAG: &str = "100rel";

/// Largest RSeq (RFC 3262 §3: 1 to 2**32 - 1; the initial one is below 2**31).
pub const MAX_RSEQ: u32 = u32::MAX;

/// The `RSeq` of a reliable provisional response (`None`: absent or malformed).
pub fn rseq(msg: &Message) -> Option<u32> {
    let v = msg.other_header("RSeq")?;
    let n: u32 = std::str::from_utf8(&v).ok()?.trim().parse().ok()?;
    (n > 0).then_some(n)
}

/// The `RAck` header of a PRACK: the RSeq, CSeq number and method of the response it acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RAck {
    pub rseq: u32,
    pub cseq: u32,
    pub method: Method,
}

impl RAck {
    /// Parses `RAck: 776656 1 INVITE`.
    pub fn parse(v: &[u8]) -> Option<RAck> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.split_ascii_whitespace();
        let rseq = it.next()?.parse().ok()?;
        let cseq = it.next()?.parse().ok()?;
        let method = Method::from_bytes(it.next()?.as_bytes());
        if it.next().is_some() || rseq == 0 {
            return None;
        }
        Some(RAck { rseq, cseq, method })
    }

    /// The `RAck` of a PRACK.
    pub fn of(msg: &Message) -> Option<RAck> {
        RAck::parse(&msg.other_header("RAck")?)
    }
}

impl fmt::Display for RAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.rseq, self.cseq, self.method)
    }
}

/// A reliable provisional waiting for its PRACK.
#[derive(Debug, Clone)]
struct Outstanding {
    rseq: u32,
    data: Bytes,
    has_sdp: bool,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// What a [`ReliableSender`] timer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderTimeout {
    /// Send these bytes again (same response, same RSeq).
    Retransmit(Bytes),
    /// No PRACK within 64*T1: RFC 3262 §3 says reject the INVITE with a `5xx`.
    GaveUp { rseq: u32 },
}

/// What a PRACK did to a [`ReliableSender`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrackOutcome {
    /// It acknowledged the outstanding provisional; answer it `200`. `next` is a queued reliable
    /// provisional to send now.
    Acknowledged { next: Option<Bytes> },
    /// It matches nothing outstanding: answer `481` (RFC 3262 §3).
    NoMatch,
}

/// The UAS side of RFC 3262 for one INVITE server transaction: assigns RSeq numbers, sends one
/// reliable provisional at a time (a second waits until the first is acknowledged, §3),
/// retransmits it at T1, 2*T1, 4*T1... and gives up after 64*T1.
#[derive(Debug)]
pub struct ReliableSender {
    next_rseq: u32,
    t1: Duration,
    cseq: u32,
    outstanding: Option<Outstanding>,
    queued: VecDeque<(u32, Bytes, bool)>,
    /// A provisional with SDP was sent and not yet acknowledged (no 2xx may go out, §3).
    sdp_unacked: bool,
}

impl ReliableSender {
    /// `initial_rseq`: random in `1..2**31` (the caller's randomness); `cseq`: the INVITE's CSeq
    /// number (PRACKs must name it in RAck).
    pub fn new(initial_rseq: u32, cseq: u32, t1: Duration) -> ReliableSender {
        ReliableSender {
            next_rseq: initial_rseq.clamp(1, 1 << 31),
            t1,
            cseq,
            outstanding: None,
            queued: VecDeque::new(),
            sdp_unacked: false,
        }
    }

    /// Reserves the RSeq of the next reliable provisional (build it with `Require: 100rel` and
    /// `RSeq: <n>`, then hand it to [`Self::push`]).
    pub fn next_rseq(&mut self) -> u32 {
        let n = self.next_rseq;
        self.next_rseq = self.next_rseq.saturating_add(1);
        n
    }

    /// A reliable provisional built with `rseq` from [`Self::next_rseq`]. Returns the bytes to
    /// send now, or `None` when it waits behind an unacknowledged one.
    pub fn push(&mut self, now: Instant, rseq: u32, data: Bytes, has_sdp: bool) -> Option<Bytes> {
        if self.outstanding.is_some() {
            self.queued.push_back((rseq, data, has_sdp));
            return None;
        }
        Some(self.send(now, rseq, data, has_sdp))
    }

    fn send(&mut self, now: Instant, rseq: u32, data: Bytes, has_sdp: bool) -> Bytes {
        self.sdp_unacked |= has_sdp;
        self.outstanding = Some(Outstanding {
            rseq,
            data: data.clone(),
            has_sdp,
            next: now + self.t1,
            interval: self.t1,
            give_up: now + self.t1 * 64,
        });
        data
    }

    /// A PRACK arrived in the dialog.
    pub fn on_prack(&mut self, now: Instant, rack: &RAck) -> PrackOutcome {
        let matches = self.outstanding.as_ref().is_some_and(|o| {
            o.rseq == rack.rseq && rack.cseq == self.cseq && rack.method == Method::Invite
        });
        if !matches {
            return PrackOutcome::NoMatch;
        }
        if let Some(o) = self.outstanding.take() {
            if o.has_sdp {
                self.sdp_unacked = false;
            }
        }
        let next = self
            .queued
            .pop_front()
            .map(|(rseq, data, sdp)| self.send(now, rseq, data, sdp));
        PrackOutcome::Acknowledged { next }
    }

    /// True when a `2xx` may be sent: no reliable provisional with SDP awaits its PRACK.
    pub fn may_send_2xx(&self) -> bool {
        !self.sdp_unacked
    }

    /// True while a reliable provisional awaits its PRACK (or one is queued).
    pub fn pending(&self) -> bool {
        self.outstanding.is_some() || !self.queued.is_empty()
    }

    /// The final response went out: stop retransmitting (RFC 3262 §3: a final response ends
    /// the retransmissions of provisionals).
    pub fn finish(&mut self) {
        self.outstanding = None;
        self.queued.clear();
        self.sdp_unacked = false;
    }

    /// The next retransmission or give-up deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.next.min(o.give_up))
    }

    /// Fires a due retransmission or the give-up.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SenderTimeout> {
        let o = self.outstanding.as_mut()?;
        if o.give_up <= now {
            let rseq = o.rseq;
            self.finish();
            return Some(SenderTimeout::GaveUp { rseq });
        }
        if o.next > now {
            return None;
        }
        o.interval *= 2;
        o.next = now + o.interval;
        Some(SenderTimeout::Retransmit(o.data.clone()))
    }
}

/// What a reliable provisional means to the UAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// New and in order: process it and send a PRACK with this RAck.
    New,
    /// Seen before (a retransmission): the PRACK transaction already covers it; ignore.
    Retransmission,
    /// Not the next in sequence: must not be acknowledged nor processed (RFC 3262 §4).
    OutOfOrder,
}

/// The UAC side of RFC 3262 for one INVITE (per early dialog): accepts reliable provisionals
/// once and in RSeq order.
#[derive(Debug, Default, Clone)]
pub struct ReliableReceiver {
    last: Option<u32>,
}

impl ReliableReceiver {
    /// Classifies a reliable provisional with `rseq`.
    pub fn on_provisional(&mut self, rseq: u32) -> Received {
        match self.last {
            None => {
                self.last = Some(rseq);
                Received::New
            }
            Some(l) if rseq == l => Received::Retransmission,
            Some(l) if l.checked_add(1) == Some(rseq) => {
                self.last = Some(rseq);
                Received::New
            }
            Some(l) if rseq < l => Received::Retransmission,
            Some(_) => Received::OutOfOrder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Framing;

    fn msg(headers: &str) -> Message {
        let text = format!(
            "SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Datagram).expect("parse")
    }

    #[test]
    fn headers() {
        let m = msg("Require: timer, 100REL\r\nRSeq: 42\r\n");
        assert!(m.requires_option(TAG) && m.supports_option(TAG));
        assert_eq!(rseq(&m), Some(42));
        let m = msg("Supported: replaces,100rel\r\nRSeq: 0\r\n");
        assert!(m.supports_option(TAG) && !m.requires_option(TAG));
        assert_eq!(rseq(&m), None, "RSeq 0 is invalid");
        assert!(!msg("").supports_option(TAG));
        let r = RAck::parse(b" 776656  1 INVITE ").expect("rack");
        assert_eq!((r.rseq, r.cseq, &r.method), (776656, 1, &Method::Invite));
        assert_eq!(r.to_string(), "776656 1 INVITE");
        assert_eq!(RAck::parse(b"1 INVITE"), None);
        assert_eq!(RAck::parse(b"0 1 INVITE"), None);
        assert_eq!(RAck::parse(b"1 2 INVITE x"), None);
    }

    #[test]
    fn sender_retransmits_until_prack_then_sends_the_queued_one() {
        let t0 = Instant::now();
        let t1 = Duration::from_millis(500);
        let mut s = ReliableSender::new(100, 7, t1);
        let r1 = s.next_rseq();
        assert_eq!(r1, 100);
        let out = s.push(t0, r1, Bytes::from_static(b"183"), true);
        assert_eq!(out.as_deref(), Some(&b"183"[..]));
        assert!(!s.may_send_2xx(), "SDP in an unacknowledged reliable 183");
        // A second reliable provisional waits.
        let r2 = s.next_rseq();
        assert_eq!(s.push(t0, r2, Bytes::from_static(b"180"), false), None);
        // Retransmissions at 0.5, 1.5, 3.5 s (T1 doubling).
        let mut at = Vec::new();
        while let Some(t) = s.poll_timeout() {
            if t > t0 + Duration::from_secs(3) {
                break;
            }
            assert_eq!(
                s.handle_timeout(t),
                Some(SenderTimeout::Retransmit(Bytes::from_static(b"183")))
            );
            at.push(t - t0);
        }
        assert_eq!(at, [t1, t1 * 3]);
        // A PRACK for something else: 481, nothing changes.
        let wrong = RAck {
            rseq: r2,
            cseq: 7,
            method: Method::Invite,
        };
        assert_eq!(s.on_prack(t0, &wrong), PrackOutcome::NoMatch);
        let right = RAck { rseq: r1, ..wrong };
        let t = t0 + Duration::from_secs(2);
        assert_eq!(
            s.on_prack(t, &right),
            PrackOutcome::Acknowledged {
                next: Some(Bytes::from_static(b"180"))
            }
        );
        assert!(s.may_send_2xx());
        assert_eq!(s.poll_timeout(), Some(t + t1), "the 180 is timed now");
        assert_eq!(
            s.on_prack(t, &right),
            PrackOutcome::NoMatch,
            "already acknowledged"
        );
    }

    #[test]
    fn sender_gives_up_after_64_t1() {
        let t0 = Instant::now();
        let t1 = Duration::from_millis(500);
        let mut s = ReliableSender::new(1, 1, t1);
        let r = s.next_rseq();
        s.push(t0, r, Bytes::from_static(b"180"), false);
        let mut sent = 0;
        let mut last = t0;
        for _ in 0..100 {
            let Some(t) = s.poll_timeout() else { break };
            last = t;
            match s.handle_timeout(t) {
                Some(SenderTimeout::Retransmit(_)) => sent += 1,
                Some(SenderTimeout::GaveUp { rseq }) => {
                    assert_eq!(rseq, r);
                    break;
                }
                None => panic!("timer without action"),
            }
        }
        assert_eq!(last - t0, t1 * 64);
        // At 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; the next would be 63.5 s, past 64*T1.
        assert_eq!(sent, 6);
        assert!(!s.pending() && s.poll_timeout().is_none());
    }

    #[test]
    fn receiver_accepts_in_order_once() {
        let mut r = ReliableReceiver::default();
        assert_eq!(r.on_provisional(9), Received::New);
        assert_eq!(r.on_provisional(9), Received::Retransmission);
        assert_eq!(r.on_provisional(11), Received::OutOfOrder);
        assert_eq!(r.on_provisional(10), Received::New);
        assert_eq!(r.on_provisional(9), Received::Retransmission);
        assert_eq!(r.on_provisional(11), Received::New);
    }
}
