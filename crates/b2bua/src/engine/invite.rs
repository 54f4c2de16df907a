//! Our INVITEs (the UAC side of B legs): sending one on a new leg, and what its responses do:
//! provisional (early media relayed to the caller, a pending CANCEL sent), 2xx (the winner, or a
//! late one that is acknowledged and hung up), failure (digest retry on trunks, else the step
//! learns the leg's status).

use super::call::Call;
use super::dialog::Dialog;
use super::leg::{
    Auth, CdrRole, DtmfOut, Leg, LegIdx, LegMedia, LegState, Party, Resend, UacInvite, UacState,
};
use super::responses::Resp;
use super::send::{Reply, ReqKind};
use super::B2bua;
use crate::util::is_sdp;
use crate::{Directory, Output, ReqId};
use bytes::Bytes;
use podpbx_config::Dtmf;
use podpbx_sdp::Sdp;
use podpbx_sip::digest::AuthKind;
use podpbx_sip::{Framing, Message, Method, StatusCode};
use std::time::Instant;
use tracing::{debug, warn};

/// A UAC leg to create and call.
pub(crate) struct NewUacLeg {
    pub party: Party,
    pub cdr_role: CdrRole,
    pub dtmf_mode: Dtmf,
    pub dialog: Dialog,
    pub media: LegMedia,
    pub step_gen: u32,
    /// The SDP offer to send (rewritten for this leg), if any.
    pub offer: Option<Bytes>,
    /// The leg whose offer it is, when the relay must learn its media now.
    pub offerer: Option<LegIdx>,
    /// Request-URI and extra headers (the body is filled in here).
    pub resend: Resend,
    pub auth: Option<Auth>,
}

impl B2bua {
    /// Creates a UAC leg and sends its INVITE; `None` (the leg recorded as failed) when its
    /// media cannot be set up.
    pub(super) fn start_uac_leg(&mut self, call: &mut Call, spec: NewUacLeg) -> Option<LegIdx> {
        let NewUacLeg {
            party,
            cdr_role,
            dtmf_mode,
            dialog,
            mut media,
            step_gen,
            offer,
            offerer,
            mut resend,
            mut auth,
        } = spec;
        let li = call.legs.len();
        let mut body = None;
        let mut failed = None;
        if let Some(raw) = &offer {
            match Sdp::parse(raw) {
                Ok(sdp) => {
                    let bundle = media.bundle;
                    if let Err(e) = self.ensure_sessions(call, bundle, &sdp) {
                        warn!(call = call.key, error = %e, "no media ports");
                        failed = Some(Some(StatusCode::SERVICE_UNAVAILABLE));
                    } else {
                        // The offerer's media (the caller) is known from its SDP, with the
                        // SDES keys it sends with (its srtp policy met, else 488).
                        let mut sec = Ok(());
                        if let Some(o) = offerer {
                            let policy = self.srtp_policy(&call.legs[o].party);
                            let transport = call.legs[o].dialog.peer.transport;
                            match self.accept_sdes(policy, transport, &sdp, None) {
                                Ok(k) => call.legs[o].media.srtp.remote = k,
                                Err(e) => sec = Err(e),
                            }
                            self.learn_remote(call, o, bundle, &sdp, raw, true);
                        }
                        // Our offer to this leg: SRTP with its own key when it requires it.
                        let policy = self.srtp_policy(&party);
                        let sec = sec.and_then(|()| {
                            self.security_towards(
                                policy,
                                dialog.peer.transport,
                                &mut media.srtp,
                                true,
                            )
                        });
                        let local = dialog.local.ip();
                        match sec.and_then(|sec| {
                            self.rewrite_sdp(call.bundle(bundle), &mut media, local, &sec, &sdp)
                                .map_err(|e| e.to_string())
                        }) {
                            Ok(s) => body = Some(s),
                            Err(e) => {
                                warn!(call = call.key, reason = %e, "SDP towards the leg refused: 488");
                                failed = Some(Some(StatusCode::NOT_ACCEPTABLE_HERE));
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(call = call.key, error = %e, "offer not usable");
                    failed = Some(None);
                }
            }
        }
        let mut leg = Leg {
            party,
            cdr_role,
            dtmf_mode,
            dialog,
            state: LegState::Uac(UacState::Terminated),
            status: None,
            step_gen,
            ok: None,
            last_ack: None,
            ack_deferred: None,
            held_2xx: None,
            session: None,
            peer_update: false,
            media,
            dtmf: DtmfOut::default(),
        };
        if let Some(status) = failed {
            // Recorded (CDR) but never called.
            leg.status = status;
            call.legs.push(leg);
            return None;
        }
        resend.body = body.map(|b| ("application/sdp".to_string(), b.into_bytes()));
        let (branch, data, msg) = self.invite_request(&mut leg.dialog, &resend, auth.as_mut());
        let id = self.alloc_req();
        let key = leg.dialog.key();
        leg.state = LegState::Uac(UacState::Calling(Box::new(UacInvite {
            req: id,
            msg,
            had_offer: offer.is_some(),
            resend,
            auth,
            rel: Default::default(),
        })));
        call.legs.push(leg);
        self.dispatch_invite(call, li, (id, branch, data));
        // A ringing leg of the current step, found by its dialog.
        if let Some(r) = call.routing_mut() {
            r.legs.push(li);
        }
        self.by_dialog.insert(key, (call.key, li));
        Some(li)
    }

    /// Builds an INVITE (new CSeq) from `resend`, with credentials when `auth` has a
    /// challenge: the branch, the bytes, and the parsed request (for a CANCEL).
    pub(super) fn invite_request(
        &mut self,
        dialog: &mut Dialog,
        resend: &Resend,
        auth: Option<&mut Auth>,
    ) -> (String, Bytes, Option<Message>) {
        let cseq = dialog.next_cseq();
        dialog.remote_target = resend.uri.clone();
        let mut headers = resend.headers.clone();
        if let Some(a) = auth {
            let b = resend
                .body
                .as_ref()
                .map(|(_, b)| b.as_slice())
                .unwrap_or(&[]);
            if let Some(v) = a.client.authorization("INVITE", &resend.uri, b) {
                let kind = a.last.unwrap_or(AuthKind::Proxy);
                headers.push((kind.credentials_header().to_string(), v));
            }
        }
        let body = resend
            .body
            .as_ref()
            .map(|(c, b)| (c.as_str(), b.as_slice()));
        let (branch, data) = self.build_request(dialog, &Method::Invite, cseq, &headers, body);
        let msg = Message::parse(data.clone(), Framing::Datagram).ok();
        (branch, data, msg)
    }

    /// A response to the INVITE of UAC leg `li`.
    pub(super) fn invite_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        li: LegIdx,
        resp: Resp<'_>,
    ) {
        if call.legs[li].uac_invite().is_some_and(|i| i.req != resp.id) {
            return;
        }
        if resp.status.is_provisional() {
            self.invite_provisional(call, now, li, resp);
        } else if resp.status.is_success() {
            self.invite_success(call, now, li, resp);
        } else if resp.first_final {
            if resp.status.is_challenge() && self.retry_with_credentials(call, li, resp) {
                return;
            }
            if resp.status == StatusCode::SESSION_INTERVAL_TOO_SMALL
                && self.st_retry_422(call, li, resp)
            {
                return;
            }
            let trunk = call.legs[li].party.is_trunk();
            if trunk
                && resp.status.is_redirection()
                && self.follow_redirect(call, now, dir, li, resp)
            {
                return;
            }
            // A redirect podpbx does not follow is no answer for the caller.
            let status = if trunk {
                super::redirect::unfollowed(resp.status)
            } else {
                resp.status
            };
            let leg = &mut call.legs[li];
            leg.terminate();
            leg.status = Some(resp.status);
            debug!(
                call = call.key,
                leg = li,
                status = resp.status.code(),
                "leg failed"
            );
            self.step_leg_done(call, now, dir, li, status);
        }
    }

    /// 1xx: CANCEL allowed from now on; 180/183 (and early media) go to the caller.
    fn invite_provisional(&mut self, call: &mut Call, now: Instant, li: LegIdx, resp: Resp<'_>) {
        if resp.status == StatusCode::TRYING {
            return;
        }
        let leg = &mut call.legs[li];
        let was = std::mem::replace(&mut leg.state, LegState::Uac(UacState::Terminated));
        let (state, cancel_now) = match was {
            LegState::Uac(UacState::Calling(i)) => (LegState::Uac(UacState::Early(i)), false),
            LegState::Uac(UacState::CancelPending(i)) => (LegState::Uac(UacState::Early(i)), true),
            other => (other, false),
        };
        leg.state = state;
        leg.dialog.learn_from_response(resp.msg);
        if cancel_now {
            self.send_cancel(call, li, now);
            return;
        }
        if call.legs[li].cancel_requested() {
            return;
        }
        if !self.prack_out(call, li, resp.msg) {
            return;
        }
        let current = call
            .routing()
            .is_some_and(|r| r.purpose == super::call::Purpose::Initial && r.legs.contains(&li));
        if !current {
            return;
        }
        let a = call.a;
        if call.legs[a].uas_invite().is_none() {
            return;
        }
        let tag = call.legs[a].dialog.local_tag.clone();
        let contact = call.legs[a].dialog.contact();
        let msg = resp.msg;
        if is_sdp(msg) {
            let raw = msg.body.clone();
            let offer = call.offer.is_none();
            match self.relay_sdp(call, li, a, &raw, offer) {
                Ok(body) => {
                    let reply = Reply::new(StatusCode::SESSION_PROGRESS)
                        .tag(&tag)
                        .header("Contact", contact)
                        .body(Some(("application/sdp", body.as_bytes())));
                    self.provisional_to_a(call, now, reply);
                }
                Err(e) => debug!(error = %e, "early media SDP not relayed"),
            }
        } else if resp.status == StatusCode::RINGING || resp.status == StatusCode::SESSION_PROGRESS
        {
            let reply = Reply::new(resp.status).tag(&tag).header("Contact", contact);
            self.provisional_to_a(call, now, reply);
        }
    }

    /// 2xx: the first answer of the current step wins the call; any other (a fork too late, a
    /// 2xx crossing our CANCEL) is acknowledged and hung up (RFC 3261 §15).
    fn invite_success(&mut self, call: &mut Call, now: Instant, li: LegIdx, resp: Resp<'_>) {
        let msg = resp.msg;
        call.legs[li].dialog.learn_from_response(msg);
        let cseq = msg
            .cseq()
            .map(|c| c.seq)
            .unwrap_or(call.legs[li].dialog.local_cseq);
        if !resp.first_final {
            // A retransmitted 2xx: our ACK was lost.
            self.resend_ack(call, li, cseq);
            return;
        }
        let leg = &mut call.legs[li];
        let was = std::mem::replace(&mut leg.state, LegState::Uac(UacState::Confirmed));
        let (had_offer, cancelling) = match was {
            LegState::Uac(UacState::Calling(mut i) | UacState::Early(mut i)) => {
                if let Some(a) = i.auth.as_mut() {
                    a.client.on_success();
                }
                (i.had_offer, false)
            }
            LegState::Uac(UacState::CancelPending(mut i) | UacState::Cancelling(mut i)) => {
                if let Some(a) = i.auth.as_mut() {
                    a.client.on_success();
                }
                (i.had_offer, true)
            }
            _ => (true, true),
        };
        let eligible = !cancelling
            && call
                .routing()
                .is_some_and(|r| r.legs.contains(&li) && r.gen == call.legs[li].step_gen);
        call.legs[li].status = Some(resp.status);
        if !eligible {
            debug!(call = call.key, leg = li, "late 2xx: ACK and BYE");
            self.send_ack(call, li, cseq, None);
            self.send_bye(call, li);
            return;
        }
        self.st_uac_answered(call, now, li, msg);
        let ans = super::answer::Answer {
            li,
            msg,
            cseq,
            had_offer,
        };
        self.on_answer(call, now, ans);
    }

    /// Drops our earlier INVITE transaction `old` of a leg from the request table (a new one
    /// replaces it) and sends the new one.
    pub(super) fn replace_invite(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        old: ReqId,
        new: (ReqId, String, Bytes),
    ) {
        self.by_req.remove(&old);
        self.dispatch_invite(call, li, new);
    }

    /// Sends INVITE `(id, branch, bytes)` of leg `li` as a client transaction.
    fn dispatch_invite(&mut self, call: &mut Call, li: LegIdx, invite: (ReqId, String, Bytes)) {
        let (id, branch, data) = invite;
        self.track_request(call, id, li, ReqKind::Invite, true);
        self.out.push_back(Output::Request {
            id,
            method: Method::Invite,
            branch,
            data,
            peer: call.legs[li].dialog.peer,
        });
    }
}
