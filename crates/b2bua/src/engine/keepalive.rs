//! Dialog keep-alive (`[calls] keepalive_secs`, off by default): each answered leg is probed
//! with an in-dialog `OPTIONS` every interval; a `481`/`408` or no answer at all (Timer F) ends
//! the call (RFC 3261 §12.2.1.2: the dialog is gone), as Kamailio's `dlg_keepalive` does. Any
//! other answer (`200`, `405`, `501`, ...) proves the dialog alive.
//!
//! Without a media timeout (`[media] timeout_secs = 0`) nothing else but a BYE, the session
//! timer (RFC 4028, when a leg has one: the caller's leg by default, refreshed by us at half its
//! 30 min) or `max_duration` (4 h by default) ends an answered call whose peers vanished; with
//! `session_timer_secs = 0` and `max_duration_secs = 0` too, nothing did (the overload bench:
//! a caller that gave up after its ACK, its BYE lost in a full socket buffer).

use super::call::{Call, EndReason, HangupBy};
use super::leg::LegIdx;
use super::responses::Resp;
use super::send::ReqKind;
use super::timers::TimerKind;
use super::B2bua;
use podpbx_sip::{Method, StatusCode};
use std::time::{Duration, Instant};
use tracing::warn;

impl B2bua {
    /// The keep-alive interval (`None`: off).
    fn keepalive(&self) -> Option<Duration> {
        self.cfg.calls.keepalive.filter(|d| !d.is_zero())
    }

    /// Arms the keep-alive of a call that was just bridged, when it is on.
    pub(super) fn arm_keepalive(&mut self, call: &Call, now: Instant) {
        if let Some(every) = self.keepalive() {
            self.arm(now + every, call.key, TimerKind::Keepalive);
        }
    }

    /// The keep-alive timer fired: `OPTIONS` on both bridged legs (once the initial INVITE's 2xx
    /// was acknowledged on it), then again one interval later until the call ends.
    pub(super) fn keepalive_timer(&mut self, call: &mut Call, now: Instant) {
        if call.is_ending() {
            return;
        }
        // (While a transfer rings the call is not bridged: it is probed again once it is.)
        if let Some(super::call::Bridge { a, b }) = call.bridged_legs() {
            for li in [a, b] {
                if call.legs[li].confirmed() {
                    self.send_in_dialog(call, li, Method::Options, &[], None, ReqKind::Keepalive);
                }
            }
        }
        if let Some(every) = self.keepalive() {
            self.arm(now + every, call.key, TimerKind::Keepalive);
        }
    }

    /// A final response to our keep-alive on leg `li`: `481`/`408` end the call.
    pub(super) fn keepalive_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        resp: Resp<'_>,
    ) {
        if resp.first_final
            && matches!(
                resp.status,
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST | StatusCode::REQUEST_TIMEOUT
            )
        {
            self.keepalive_failed(call, now, li);
        }
    }

    /// Our keep-alive on leg `li` got no answer, or the dialog is gone: the call ends.
    pub(super) fn keepalive_failed(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        if !call.is_bridged() {
            return;
        }
        warn!(
            call = call.key,
            leg = li,
            "keep-alive unanswered: ending the call"
        );
        call.legs[li].terminate();
        self.end_call(call, now, HangupBy::System, EndReason::DialogGone, Some(li));
    }
}
