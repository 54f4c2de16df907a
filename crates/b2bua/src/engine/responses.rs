//! Responses to our requests, and their failures, dispatched by what the request was; the
//! responses to relayed requests go back to the leg they came from (`t_reply`).

use super::call::{Call, EndReason, HangupBy};
use super::leg::{LegIdx, LegState, OkRetx, UasState};
use super::send::{Relayed, Reply, ReqKind};
use super::timers::TimerKind;
use super::B2bua;
use crate::util::{is_sdp, str_of};
use crate::{Directory, ReqId};
use podpbx_sip::{HeaderName, Message, Method, StatusCode};
use std::time::Instant;
use tracing::debug;

/// A response to one of our requests.
#[derive(Clone, Copy)]
pub(crate) struct Resp<'a> {
    pub id: ReqId,
    pub msg: &'a Message,
    pub status: StatusCode,
    /// The first final response of its transaction (later ones are retransmitted 2xx).
    pub first_final: bool,
}

impl B2bua {
    /// A response to our request `id` (as reported by its client transaction; 2xx
    /// retransmissions to an INVITE included). Responses to INVITEs drive the call (early
    /// media, answer, failure and the next dialplan step); responses to relayed requests go
    /// back to the leg that sent the request. Unknown ids are ignored.
    pub fn handle_response(&mut self, now: Instant, id: ReqId, msg: &Message, dir: &dyn Directory) {
        let Some(p) = self.by_req.get_mut(&id) else {
            return;
        };
        // The transaction layer drops responses outside 100..=699.
        let Some(status) = msg.status_code() else {
            return;
        };
        let (key, li, kind) = (p.call, p.leg, p.kind.clone());
        let first_final = status.is_final() && !p.done;
        let counted = p.counted;
        if status.is_final() {
            p.done = true;
        }
        let resp = Resp {
            id,
            msg,
            status,
            first_final,
        };
        self.with_call(key, now, |this, call| {
            if first_final && counted {
                call.pending = call.pending.saturating_sub(1);
            }
            match kind {
                ReqKind::Invite => this.invite_response(call, now, dir, li, resp),
                ReqKind::Relay(r) => this.relay_response(call, now, li, &r, resp),
                ReqKind::DtmfInfo if first_final => this.dtmf_info_done(call, li),
                ReqKind::Bye
                | ReqKind::Cancel
                | ReqKind::Notify
                | ReqKind::DtmfInfo
                | ReqKind::Prack => {}
                ReqKind::Refresh => this.st_refresh_response(call, now, li, resp),
                ReqKind::Keepalive => this.keepalive_response(call, now, li, resp),
                ReqKind::Reanchor => this.reanchor_response(call, now, li, resp),
            }
            // An INVITE's entry stays until the call ends: its 2xx may be retransmitted.
            if status.is_final()
                && !matches!(this.by_req.get(&id).map(|p| &p.kind), Some(ReqKind::Invite))
            {
                this.by_req.remove(&id);
            }
        });
    }

    /// Our request `id` failed without a final response (Timer B/F, transport error, the
    /// transaction table full): a ringing INVITE counts as 408, a relayed request is answered
    /// 408 on the leg it came from, a BYE ends the leg anyway.
    pub fn request_failed(&mut self, now: Instant, id: ReqId, dir: &dyn Directory) {
        let Some(p) = self.by_req.remove(&id) else {
            return;
        };
        if p.done {
            return;
        }
        self.with_call(p.call, now, |this, call| {
            if p.counted {
                call.pending = call.pending.saturating_sub(1);
            }
            let li = p.leg;
            match p.kind {
                ReqKind::Invite if call.legs[li].ringing() => {
                    call.legs[li].terminate();
                    call.legs[li].status = Some(StatusCode::REQUEST_TIMEOUT);
                    this.step_leg_done(call, now, dir, li, StatusCode::REQUEST_TIMEOUT);
                }
                ReqKind::Relay(r) => {
                    let tag = call.legs[r.from].dialog.local_tag.clone();
                    this.respond(
                        r.incoming(),
                        Reply::new(StatusCode::REQUEST_TIMEOUT).tag(&tag),
                    );
                    if r.req.method() == Some(&Method::Invite) {
                        call.end_reinvite(r.from, li);
                    }
                }
                ReqKind::Bye => call.legs[li].terminate(),
                ReqKind::DtmfInfo => this.dtmf_info_failed(call, li),
                ReqKind::Refresh => this.st_refresh_failed(call, now, li),
                ReqKind::Keepalive => this.keepalive_failed(call, now, li),
                ReqKind::Reanchor => this.reanchor_failed(call, now, li, id, None),
                _ => {}
            }
        });
    }

    /// Sends the final (non-2xx) response to the caller's INVITE, if it still waits for one.
    pub(super) fn final_to_a(&mut self, call: &mut Call, status: StatusCode, reason: Option<&str>) {
        let a = call.a;
        self.final_to_uas(call, a, status, reason);
    }

    /// Sends the final (non-2xx) response to the INVITE of UAS leg `a` (the caller's, or that of
    /// a device replacing a leg), if it still waits for one.
    pub(super) fn final_to_uas(
        &mut self,
        call: &mut Call,
        a: LegIdx,
        status: StatusCode,
        reason: Option<&str>,
    ) {
        let leg = &mut call.legs[a];
        let inv = match std::mem::replace(&mut leg.state, LegState::Uas(UasState::Terminated)) {
            LegState::Uas(UasState::Proceeding(inv)) => inv,
            other => {
                leg.state = other;
                return;
            }
        };
        let tag = leg.dialog.local_tag.clone();
        leg.status = Some(status);
        if a == call.a {
            call.record.a_status = Some(status);
        }
        let reply = Reply::new(status).reason(reason).tag(&tag);
        self.respond(inv.incoming(), reply);
    }

    /// The response of leg `to` to a request relayed from `r.from` goes back to `r.from`, with
    /// its SDP rewritten; a 2xx to a re-INVITE is acknowledged (or waits for the other side's
    /// ACK when it carried the offer) and retransmitted to `r.from` until its ACK.
    fn relay_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        to: LegIdx,
        r: &Relayed,
        resp: Resp<'_>,
    ) {
        let (status, msg) = (resp.status, resp.msg);
        if status == StatusCode::TRYING {
            return;
        }
        let from = r.from;
        let req = &r.req;
        let is_invite = req.method() == Some(&Method::Invite);
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        if status.is_success() && !resp.first_final {
            if is_invite {
                self.resend_ack(call, to, cseq);
            }
            return;
        }
        if status.is_provisional() && !is_invite {
            return;
        }
        let mut headers: Vec<(&str, String)> = Vec::new();
        let mut body: Option<(String, Vec<u8>)> = None;
        let offer_was_in_request = is_sdp(req);
        if is_sdp(msg) {
            let raw = msg.body.clone();
            match self.relay_sdp(call, to, from, &raw, !offer_was_in_request) {
                Ok(b) => body = Some(("application/sdp".into(), b.into_bytes())),
                Err(e) => debug!(error = %e, "SDP in response not relayed"),
            }
        } else if !msg.body.is_empty() {
            let ct = msg
                .header(HeaderName::ContentType)
                .map(|v| str_of(&v))
                .unwrap_or_else(|| "application/octet-stream".into());
            body = Some((ct, msg.body.to_vec()));
        }
        if is_invite || req.method() == Some(&Method::Update) {
            headers.push(("Contact", call.legs[from].dialog.contact()));
            if status.is_success() {
                // Both legs' session timers restart; each hears its own interval.
                headers.extend(self.st_reoffer_accepted(call, now, from, req));
                self.st_uac_answered(call, now, to, msg);
            }
        }
        for h in ["Allow", "Accept"] {
            if let Some(v) = msg.other_header(h) {
                headers.push((h, str_of(&v)));
            }
        }
        // The peer's own reason phrase goes through (it may say more than the standard one).
        let reason = msg.reason_phrase().filter(|r| !r.is_empty()).map(str_of);
        let tag = call.legs[from].dialog.local_tag.clone();
        let reply = Reply {
            status,
            reason: reason.as_deref(),
            to_tag: Some(&tag),
            headers,
            body: body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
        };
        let data = self.respond(r.incoming(), reply);
        if status.is_final() && is_invite {
            call.end_reinvite(from, to);
            if status.is_success() {
                if offer_was_in_request {
                    self.send_ack(call, to, cseq, None);
                } else {
                    call.legs[to].ack_deferred = Some(cseq);
                }
                let rcseq = req.cseq().map(|c| c.seq).unwrap_or(0);
                let t1 = self.settings.timers.t1;
                call.legs[from].ok = Some(OkRetx {
                    data,
                    cseq: rcseq,
                    interval: t1,
                    started: now,
                });
                self.arm(now + t1, call.key, TimerKind::Retx2xx(from));
            }
        }
        if (status == StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST
            || status == StatusCode::REQUEST_TIMEOUT)
            && call.is_bridged()
        {
            self.end_call(call, now, HangupBy::System, EndReason::DialogGone, None);
        }
    }
}
