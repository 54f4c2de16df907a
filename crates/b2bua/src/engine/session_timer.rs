//! Session timers (RFC 4028), negotiated and kept on each leg on its own.
//!
//! * **Caller's leg** (we are UAS): its INVITE's `Session-Expires` below our `Min-SE` gets
//!   `422` before anything is routed; our 2xx carries the interval and refresher of §9 (the
//!   caller refreshes when it said so and supports timers, else we do), `Require: timer` when it
//!   supports them.
//! * **Callee legs** (we are UAC): every INVITE asks for `calls.session_timer_secs` (unless the
//!   trunk turned timers off) with our `Min-SE`; a `422` is retried once with the callee's
//!   `Min-SE`; the 2xx says who refreshes (§7.2), no `Session-Expires` there means no timer.
//! * **Refreshing**: as refresher we send UPDATE (when the peer allows it) or a re-INVITE with
//!   our last SDP at half the interval; the peer's refreshes (an UPDATE without body is answered
//!   here, re-INVITEs and UPDATEs with SDP are relayed and their 2xx carries this leg's
//!   interval) restart the leg's timer. Relayed re-INVITEs/UPDATEs refresh the other leg too.
//! * **Expiry**: a refresh of ours that fails with `408`/`481` or times out, or a peer that
//!   stops refreshing (RFC 4028 §10: `interval - min(32 s, interval/3)` after its last
//!   refresh), ends the call: BYE on both legs, CDR reason `session_expired`.
//!
//! `Session-Expires` and `Min-SE` never cross legs.

use super::call::{Call, EndReason, HangupBy};
use super::leg::{LegIdx, LegState, Party, UacState};
use super::responses::Resp;
use super::send::{Incoming, Reply, ReqKind};
use super::timers::TimerKind;
use super::B2bua;
use podpbx_sip::caps::supported;
use podpbx_sip::session_timer::{
    self as st, Policy, Refresher, SessionExpires, SessionTimer, TimerAction, UasDecision,
};
use podpbx_sip::{HeaderName, Message, Method, StatusCode};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The longest interval we follow a `422` up to (one day).
const MAX_INTERVAL: u32 = 86_400;

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// True when `msg` lists `method` in its `Allow` header.
pub(super) fn allows(msg: &Message, method: &Method) -> bool {
    let m = method.to_string();
    msg.tokens(HeaderName::Allow)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(m.as_bytes()))
}

impl B2bua {
    /// The session-timer settings of a leg towards `party`.
    pub(super) fn st_policy(&self, party: &Party) -> Policy {
        let c = &self.cfg.calls;
        let enabled = c.session_timer.is_some()
            && match party {
                Party::Trunk(n) => self.cfg.trunk(n).is_none_or(|t| t.session_timers),
                Party::User(_) => true,
            };
        Policy::new(enabled, c.session_timer.map_or(1800, secs), secs(c.min_se))
    }

    /// The headers that ask a callee for a session timer (with the `Supported` of our INVITEs).
    pub(super) fn st_invite_headers(&self, party: &Party) -> Vec<(String, String)> {
        let p = self.st_policy(party);
        match st::uac_request_headers(&p, p.interval) {
            Some((se, min)) => vec![
                ("Session-Expires".to_string(), se),
                ("Min-SE".to_string(), min),
            ],
            None => Vec::new(),
        }
    }

    /// The caller's INVITE: `Err(min_se)` when its interval is too small (answer `422`).
    pub(super) fn st_new_call(&self, req: &Message, party: &Party) -> Result<UasDecision, u32> {
        match st::negotiate_uas(req, &self.st_policy(party)) {
            UasDecision::TooSmall { min_se } => Err(min_se),
            d => Ok(d),
        }
    }

    /// Our 2xx to a request of the peer of UAS-side leg `li` carries `decision`: its headers,
    /// and the leg's timer (re)starts now.
    pub(super) fn st_accepted(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        decision: UasDecision,
    ) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        match decision {
            UasDecision::Timer { se, require } => {
                headers.push(("Session-Expires", se.to_string()));
                if require {
                    headers.push(("Require", st::TAG.to_string()));
                }
                let ours = se.refresher == Some(Refresher::Uas);
                self.st_start(call, now, li, se.delta, ours);
            }
            UasDecision::None | UasDecision::TooSmall { .. } => {
                call.legs[li].session = None;
            }
        }
        headers
    }

    /// A 2xx to an INVITE/UPDATE of ours on leg `li` (the initial INVITE, a refresh, or a
    /// relayed re-offer): the leg's timer follows its `Session-Expires` (none: no timer).
    pub(super) fn st_uac_answered(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        msg: &Message,
    ) {
        if allows(msg, &Method::Update) {
            call.legs[li].peer_update = true;
        }
        match st::negotiate_uac(msg) {
            Some((interval, ours)) => self.st_start(call, now, li, interval, ours),
            None => call.legs[li].session = None,
        }
    }

    fn st_start(&mut self, call: &mut Call, now: Instant, li: LegIdx, interval: u32, ours: bool) {
        let t = SessionTimer::new(now, interval, ours);
        debug!(
            call = call.key,
            leg = li,
            interval,
            we_refresh = ours,
            "session timer"
        );
        call.legs[li].session = Some(t);
        self.arm(t.poll_timeout(), call.key, TimerKind::Session(li));
    }

    /// Leg `li`'s session timer fired: refresh as refresher, or end the call when the session
    /// expired.
    pub(super) fn st_timer(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        let Some(t) = call.legs[li].session.as_mut() else {
            return;
        };
        if t.poll_timeout() > now {
            return;
        }
        match t.handle_timeout(now) {
            Some(TimerAction::Refresh) => {
                let next = t.poll_timeout();
                let interval = secs(t.interval());
                self.arm(next, call.key, TimerKind::Session(li));
                self.st_send_refresh(call, li, interval);
            }
            Some(TimerAction::Expired) => self.st_expired(call, now, li),
            None => {}
        }
    }

    fn st_expired(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        info!(
            call = call.key,
            leg = li,
            "session expired (no refresh): ending the call"
        );
        call.legs[li].session = None;
        self.end_call(call, now, HangupBy::System, EndReason::SessionExpired, None);
    }

    /// Our refresh on leg `li`: UPDATE without body when the peer allows it, else a re-INVITE
    /// with our last SDP (unchanged: same origin version).
    fn st_send_refresh(&mut self, call: &mut Call, li: LegIdx, interval: u32) {
        let leg = &call.legs[li];
        if !leg.confirmed() || call.partner(li).is_none() {
            return;
        }
        let headers = vec![
            (
                "Session-Expires".to_string(),
                SessionExpires {
                    delta: interval,
                    refresher: Some(Refresher::Uac),
                }
                .to_string(),
            ),
            (
                "Min-SE".to_string(),
                secs(self.cfg.calls.min_se).to_string(),
            ),
            ("Supported".to_string(), supported()),
        ];
        if leg.peer_update {
            debug!(call = call.key, leg = li, "session refresh by UPDATE");
            self.send_in_dialog(call, li, Method::Update, &headers, None, ReqKind::Refresh);
            return;
        }
        let sdp = self.current_sdp(call, li);
        debug!(call = call.key, leg = li, "session refresh by re-INVITE");
        let body = sdp.as_ref().map(|s| ("application/sdp", s.as_bytes()));
        self.send_in_dialog(call, li, Method::Invite, &headers, body, ReqKind::Refresh);
    }

    /// The response to our refresh on leg `li`.
    pub(super) fn st_refresh_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        resp: Resp<'_>,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let is_invite = resp.msg.cseq().is_ok_and(|c| c.method == Method::Invite);
        if resp.status.is_success() {
            if is_invite {
                let cseq = resp.msg.cseq().map(|c| c.seq).unwrap_or(0);
                self.send_ack(call, li, cseq, None);
            }
            if resp.first_final {
                self.st_uac_answered(call, now, li, resp.msg);
            }
            return;
        }
        if !resp.first_final {
            return;
        }
        match resp.status.code() {
            408 | 481 => {
                warn!(
                    call = call.key,
                    leg = li,
                    status = resp.status.code(),
                    "session refresh failed"
                );
                self.st_expired(call, now, li);
            }
            405 | 501 if !is_invite => {
                // UPDATE is not welcome after all: refresh by re-INVITE.
                call.legs[li].peer_update = false;
                let interval = call.legs[li].session.map_or(1800, |t| secs(t.interval()));
                self.st_send_refresh(call, li, interval);
            }
            422 => {
                if let (Some(m), Some(t)) = (st::min_se(resp.msg), call.legs[li].session) {
                    if m > secs(t.interval()) && m <= MAX_INTERVAL {
                        self.st_send_refresh(call, li, m);
                    }
                }
            }
            // Anything else (491 glare, 500...): the session goes on until it expires.
            _ => debug!(
                call = call.key,
                status = resp.status.code(),
                "session refresh refused"
            ),
        }
    }

    /// Our refresh got no response at all (Timer F/B): the session is gone (RFC 4028 §10).
    pub(super) fn st_refresh_failed(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        warn!(call = call.key, leg = li, "session refresh unanswered");
        self.st_expired(call, now, li);
    }

    /// A `422` to our INVITE on callee leg `li`: the INVITE again with the callee's `Min-SE`
    /// (once per value, up to a day). False when it cannot be retried.
    pub(super) fn st_retry_422(&mut self, call: &mut Call, li: LegIdx, resp: Resp<'_>) -> bool {
        let leg = &mut call.legs[li];
        let (LegState::Uac(UacState::Calling(inv)) | LegState::Uac(UacState::Early(inv))) =
            &mut leg.state
        else {
            return false;
        };
        let current = inv
            .resend
            .headers
            .iter()
            .find(|(n, _)| n == "Session-Expires")
            .and_then(|(_, v)| SessionExpires::parse(v.as_bytes()))
            .map_or(0, |s| s.delta);
        let Some(m) = st::retry_after_422(resp.msg, current, MAX_INTERVAL) else {
            return false;
        };
        debug!(
            call = call.key,
            leg = li,
            from = current,
            to = m,
            "422: INVITE again with the callee's Min-SE"
        );
        inv.resend
            .headers
            .retain(|(n, _)| n != "Session-Expires" && n != "Min-SE");
        inv.resend
            .headers
            .push(("Session-Expires".to_string(), m.to_string()));
        inv.resend
            .headers
            .push(("Min-SE".to_string(), m.to_string()));
        leg.status = Some(resp.status);
        let (branch, data, msg) =
            self.invite_request(&mut leg.dialog, &inv.resend, inv.auth.as_mut());
        let old = inv.req;
        let id = self.alloc_req();
        inv.req = id;
        inv.msg = msg;
        self.replace_invite(call, li, old, (id, branch, data));
        true
    }

    /// An UPDATE without body from leg `li`'s peer: a pure session refresh (RFC 4028 §8),
    /// answered here (`422` when too small) and never relayed.
    pub(super) fn st_update_in(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
    ) {
        let tag = call.legs[li].dialog.local_tag.clone();
        let policy = self.st_policy(&call.legs[li].party.clone());
        match st::negotiate_uas(inc.req, &policy) {
            UasDecision::TooSmall { min_se } => {
                let r = Reply::new(StatusCode::SESSION_INTERVAL_TOO_SMALL)
                    .tag(&tag)
                    .header("Min-SE", min_se.to_string());
                self.respond(inc, r);
            }
            d => {
                let contact = call.legs[li].dialog.contact();
                let headers = self.st_accepted(call, now, li, d);
                let mut r = Reply::new(StatusCode::OK)
                    .tag(&tag)
                    .header("Contact", contact)
                    .header("Supported", supported());
                for (n, v) in headers {
                    r = r.header(n, v);
                }
                self.respond(inc, r);
            }
        }
    }

    /// A re-INVITE or UPDATE with SDP from leg `li`'s peer, about to be relayed: `422` here when
    /// its interval is too small (returns false: not relayed).
    pub(super) fn st_check_reoffer(&mut self, call: &Call, inc: Incoming<'_>, li: LegIdx) -> bool {
        let policy = self.st_policy(&call.legs[li].party);
        if let UasDecision::TooSmall { min_se } = st::negotiate_uas(inc.req, &policy) {
            let tag = call.legs[li].dialog.local_tag.clone();
            let r = Reply::new(StatusCode::SESSION_INTERVAL_TOO_SMALL)
                .tag(&tag)
                .header("Min-SE", min_se.to_string());
            self.respond(inc, r);
            return false;
        }
        true
    }

    /// The 2xx to a relayed re-INVITE/UPDATE goes back to leg `from`: this leg's interval in
    /// it (the other leg's `Session-Expires` is not copied) and its timer restarted.
    pub(super) fn st_reoffer_accepted(
        &mut self,
        call: &mut Call,
        now: Instant,
        from: LegIdx,
        req: &Message,
    ) -> Vec<(&'static str, String)> {
        let policy = self.st_policy(&call.legs[from].party.clone());
        let d = st::negotiate_uas(req, &policy);
        self.st_accepted(call, now, from, d)
    }
}
