//! CANCEL: the caller cancelling its INVITE (every ringing callee is cancelled, 487 to the
//! caller), and our CANCELs of ringing INVITEs, which wait for a provisional response
//! (RFC 3261 §9.1) under a guard timer (`t_cancel`).

use super::call::{Call, EndReason, HangupBy};
use super::leg::{LegIdx, LegState, UacState};
use super::send::ReqKind;
use super::timers::TimerKind;
use super::B2bua;
use crate::cdr::Disposition;
use crate::util::str_of;
use crate::Output;
use podpbx_sip::builder::cancel_for;
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{Method, StatusCode};
use std::time::Instant;
use tracing::info;

impl B2bua {
    /// A CANCEL matched the caller's INVITE server transaction `invite_tx` (the shell already
    /// answered the CANCEL itself with 200, RFC 3261 §9.2). While the call still rings, every
    /// ringing callee is cancelled, the INVITE gets 487 and the call ends; later, nothing
    /// happens.
    pub fn handle_cancel(&mut self, now: Instant, invite_tx: ServerTxId) {
        let Some(key) = self.by_invite_tx.get(&invite_tx).copied() else {
            return;
        };
        self.with_call(key, now, |this, call| {
            let waiting = call.legs[call.a]
                .uas_invite()
                .is_some_and(|i| i.tx == invite_tx);
            if !call.is_routing() || !waiting {
                return;
            }
            info!(call = key, "caller cancelled");
            call.phase = super::call::Phase::Ending;
            for li in 0..call.legs.len() {
                this.send_cancel(call, li, now);
            }
            this.final_to_a(call, StatusCode::REQUEST_TERMINATED, None);
            call.record.disposition = Some(Disposition::Cancelled);
            call.record.hangup_by = Some(HangupBy::Caller);
            call.record.reason = Some(EndReason::Cancel.as_str());
            this.enter_ending(call, now);
        });
    }

    /// Cancels our ringing INVITE on leg `li`: now if a provisional came, else as soon as one
    /// does; either way a guard gives up on the INVITE after 64*T1.
    pub(super) fn send_cancel(&mut self, call: &mut Call, li: LegIdx, now: Instant) {
        let leg = &mut call.legs[li];
        let was = std::mem::replace(&mut leg.state, LegState::Uac(UacState::Terminated));
        let inv = match was {
            LegState::Uac(UacState::Early(inv)) => inv,
            LegState::Uac(UacState::Calling(inv)) => {
                // RFC 3261 §9.1: no CANCEL before a provisional response.
                leg.state = LegState::Uac(UacState::CancelPending(inv));
                self.arm_cancel_guard(call, li, now);
                return;
            }
            other => {
                leg.state = other;
                return;
            }
        };
        let data = inv.msg.as_ref().map(cancel_for);
        let branch = inv
            .msg
            .as_ref()
            .and_then(|m| m.top_via().ok())
            .and_then(|v| v.branch())
            .map(|b| str_of(&b))
            .unwrap_or_default();
        leg.state = LegState::Uac(UacState::Cancelling(inv));
        let Some(data) = data else {
            return;
        };
        let peer = leg.dialog.peer;
        let id = self.alloc_req();
        self.track_request(call, id, li, ReqKind::Cancel, false);
        self.out.push_back(Output::Request {
            id,
            method: Method::Cancel,
            branch,
            data,
            peer,
        });
        self.arm_cancel_guard(call, li, now);
    }

    fn arm_cancel_guard(&mut self, call: &Call, li: LegIdx, now: Instant) {
        let at = now + self.settings.timers.t1.saturating_mul(64);
        self.arm(at, call.key, TimerKind::CancelGuard(li));
    }

    /// The guard of a CANCEL fired: an INVITE still ringing is given up (487 in the CDR) and
    /// its client transaction abandoned.
    pub(super) fn cancel_guard(&mut self, call: &mut Call, li: LegIdx) {
        if !call.legs[li].ringing() {
            return;
        }
        let req = call.legs[li].uac_invite().map(|i| i.req);
        call.legs[li].terminate();
        call.legs[li].status = Some(StatusCode::REQUEST_TERMINATED);
        if let Some(id) = req {
            if self.by_req.get(&id).is_some_and(|p| !p.done) {
                self.by_req.remove(&id);
                call.pending = call.pending.saturating_sub(1);
                self.out.push_back(Output::Abandon { id });
            }
        }
    }
}
