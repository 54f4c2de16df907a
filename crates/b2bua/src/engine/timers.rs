//! Timers of calls: ring timeouts of dialplan steps, retransmission of our 2xx until its ACK
//! (RFC 3261 §13.3.1.4), the maximum call duration, CANCEL guards and the cleanup that
//! finishes an ended call.

use super::call::{Call, CallKey, EndReason, HangupBy};
use super::leg::LegIdx;
use super::B2bua;
use crate::{Directory, Output};
use podpbx_sip::Transport;
use std::time::Instant;
use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// Ring timeout of routing step `gen`.
    Ring(u32),
    /// Retransmit our 2xx on a leg (until its ACK, at most 64*T1).
    Retx2xx(LegIdx),
    /// `calls.max_duration` reached.
    MaxDuration,
    /// An ended call is finished even if transactions are still in flight.
    Cleanup,
    /// Give up on an INVITE whose CANCEL could not be sent or answered.
    CancelGuard(LegIdx),
    /// Retransmit a reliable provisional to the caller (RFC 3262), or give up on its PRACK.
    Rel100(LegIdx),
    /// A leg's session timer (RFC 4028): refresh, or the session expired.
    Session(LegIdx),
    /// Our re-INVITE that joins two legs, again after a 491 (RFC 3261 §14.1).
    Reanchor,
    /// In-dialog OPTIONS on answered legs (`[calls] keepalive_secs`).
    Keepalive,
}

impl TimerKind {
    /// The leg the timer is about, if any.
    pub fn leg(self) -> Option<LegIdx> {
        match self {
            TimerKind::Retx2xx(l)
            | TimerKind::CancelGuard(l)
            | TimerKind::Rel100(l)
            | TimerKind::Session(l) => Some(l),
            TimerKind::Ring(_)
            | TimerKind::MaxDuration
            | TimerKind::Cleanup
            | TimerKind::Reanchor
            | TimerKind::Keepalive => None,
        }
    }

    /// The same timer about leg `li` (a leg that moved to another call).
    pub fn with_leg(self, li: LegIdx) -> TimerKind {
        match self {
            TimerKind::Retx2xx(_) => TimerKind::Retx2xx(li),
            TimerKind::CancelGuard(_) => TimerKind::CancelGuard(li),
            TimerKind::Rel100(_) => TimerKind::Rel100(li),
            TimerKind::Session(_) => TimerKind::Session(li),
            other => other,
        }
    }
}

impl B2bua {
    /// Arms timer `kind` of call `call` at `at`.
    pub(super) fn arm(&mut self, at: Instant, call: CallKey, kind: TimerKind) {
        self.timer_seq += 1;
        let id = (at, self.timer_seq);
        self.timers.insert(id, (call, kind));
        let owned = &mut self.owned.entry(call).or_default().timers;
        owned.push(id);
        if super::Owned::prune_due(owned.len()) {
            let timers = &self.timers;
            owned.retain(|t| timers.get(t).is_some_and(|(k, _)| *k == call));
        }
    }

    /// Fires every timer due at `now` (call it at [`B2bua::poll_timeout`], or later): ring
    /// timeouts (CANCEL, next step), 2xx retransmissions (and the call's end when no ACK came
    /// within 64*T1), the maximum duration, CANCEL guards, and the cleanup of ended calls
    /// (their CDR).
    pub fn handle_timeout(&mut self, now: Instant, dir: &dyn Directory) {
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            let Some((key, kind)) = self.timers.remove(&(at, seq)) else {
                break;
            };
            let Some(mut call) = self.calls.remove(&key) else {
                continue;
            };
            match kind {
                TimerKind::Ring(gen) => self.ring_timeout(&mut call, now, dir, gen),
                TimerKind::Retx2xx(li) => self.retransmit_2xx(&mut call, now, li),
                TimerKind::MaxDuration => {
                    if call.is_bridged() {
                        self.end_call(
                            &mut call,
                            now,
                            HangupBy::System,
                            EndReason::MaxDuration,
                            None,
                        );
                    }
                }
                TimerKind::CancelGuard(li) => self.cancel_guard(&mut call, li),
                TimerKind::Rel100(li) => self.rel100_timer(&mut call, now, li),
                TimerKind::Session(li) => self.st_timer(&mut call, now, li),
                TimerKind::Reanchor => self.reanchor_retry(&mut call),
                TimerKind::Keepalive => self.keepalive_timer(&mut call, now),
                TimerKind::Cleanup => {
                    self.finish(&mut call, now);
                    continue;
                }
            }
            self.put_back(call, now);
        }
    }

    /// Our 2xx on leg `li` is still not acknowledged: send it again (UDP only; T1 doubling up
    /// to T2), or end the call after 64*T1.
    fn retransmit_2xx(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        let t = self.settings.timers;
        let key = call.key;
        let peer = call.legs[li].dialog.peer;
        let Some(ok) = call.legs[li].ok.as_mut() else {
            return;
        };
        if now.saturating_duration_since(ok.started) >= t.t1.saturating_mul(64) {
            call.legs[li].ok = None;
            warn!(call = key, "no ACK for our 2xx: ending the call");
            self.end_call(call, now, HangupBy::System, EndReason::NoAck, None);
        } else {
            ok.interval = (ok.interval * 2).min(t.t2);
            let next = now + ok.interval;
            if peer.transport == Transport::Udp {
                let data = ok.data.clone();
                self.out.push_back(Output::Stateless { peer, data });
            }
            self.arm(next, key, TimerKind::Retx2xx(li));
        }
    }
}
