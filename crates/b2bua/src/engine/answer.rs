//! The answer: the winning leg's 2xx bridges the call (or completes a transfer); every other
//! fork is cancelled, the caller gets our 2xx (retransmitted until its ACK).

use super::call::{Call, EndReason, HangupBy, Purpose};
use super::leg::{LegIdx, LegState, OkRetx, UasState};
use super::reanchor::Next;
use super::send::{Incoming, Reply};
use super::timers::TimerKind;
use super::B2bua;
use crate::util::is_sdp;
use crate::Output;
use podpbx_sdp::Sdp;
use podpbx_sip::caps::{allow, supported, DIALOG_METHODS};
use podpbx_sip::{Message, StatusCode};
use std::time::Instant;
use tracing::{info, warn};

/// The 2xx that wins a call.
#[derive(Clone, Copy)]
pub(crate) struct Answer<'a> {
    /// The answering leg.
    pub li: LegIdx,
    pub msg: &'a Message,
    /// Its CSeq (our ACK's).
    pub cseq: u32,
    /// Our INVITE carried the offer (else the 2xx does, and our ACK waits for the answer).
    pub had_offer: bool,
}

impl B2bua {
    /// A leg answered: it wins.
    pub(super) fn on_answer(&mut self, call: &mut Call, now: Instant, ans: Answer<'_>) {
        let Answer { li, msg, cseq, .. } = ans;
        let Some(r) = call.routing() else { return };
        let (legs, purpose) = (r.legs.clone(), r.purpose.clone());
        for other in legs.into_iter().filter(|l| *l != li) {
            self.send_cancel(call, other, now);
        }
        // Ringing legs of earlier steps too.
        for other in 0..call.legs.len() {
            if other != li && call.legs[other].ringing() {
                self.send_cancel(call, other, now);
            }
        }
        match purpose {
            Purpose::Initial => self.bridge_caller(call, now, ans),
            Purpose::Transfer {
                keeper,
                transferor,
                first_bundle,
            } => {
                let bundle = call.legs[li].media.bundle;
                // Bundles of targets of other families that did not answer go.
                for bi in first_bundle..call.bundles.len() {
                    if Some(bi) != bundle.map(|b| b.0) {
                        self.release_bundle(call, bi);
                    }
                }
                let answer = is_sdp(msg).then(|| msg.body.clone());
                if let Some(raw) = &answer {
                    if let Ok(sdp) = Sdp::parse(raw) {
                        self.learn_remote(call, li, bundle, &sdp, raw, false);
                    }
                }
                self.send_ack(call, li, cseq, None);
                call.bridge(keeper, li);
                call.record.transferred_to = Some(call.number.clone());
                info!(call = call.key, to = %call.number, "transfer completed");
                if call.legs[transferor].active() {
                    self.notify_refer(call, transferor, StatusCode::OK, None, true);
                    self.send_bye(call, transferor);
                }
                // The keeper still sends to its old anchors with the transferor's media in
                // mind: our re-INVITE gives it the target's, on the target's bundle.
                if let Some(raw) = answer {
                    let old: Vec<usize> = call.legs[keeper]
                        .media
                        .bundle
                        .map(|b| b.0)
                        .filter(|b| Some(*b) != bundle.map(|x| x.0))
                        .into_iter()
                        .collect();
                    call.legs[keeper].media.bundle = bundle;
                    call.legs[keeper].media.srtp.applied = None;
                    if !self.start_reanchor(call, keeper, li, &raw, Next::Done, old) {
                        self.end_call(call, now, HangupBy::System, EndReason::TransferFailed, None);
                    }
                }
            }
        }
    }

    /// The caller's INVITE gets our 2xx with the answer rewritten for it; the media of the
    /// winner's bundle is kept, every other bundle released.
    fn bridge_caller(&mut self, call: &mut Call, now: Instant, ans: Answer<'_>) {
        let Answer {
            li,
            msg,
            cseq,
            had_offer,
        } = ans;
        let a = call.a;
        let bundle = call.legs[li].media.bundle;
        call.legs[a].media.bundle = bundle;
        for other in 0..call.bundles.len() {
            if Some(other) != bundle.map(|b| b.0) {
                self.release_bundle(call, other);
            }
        }
        let mut body = None;
        // The callee's answer: in its 2xx, or (RFC 3262) already in a reliable 18x, whose SDP
        // the caller must still get in our 2xx when our 18x to it was not reliable.
        let raw = if is_sdp(msg) {
            Some(msg.body.clone())
        } else if call.offer.is_some() {
            call.legs[li].media.last_sdp.clone()
        } else {
            None
        };
        if let Some(raw) = raw {
            let offer = call.offer.is_none();
            match self.relay_sdp(call, li, a, &raw, offer) {
                Ok(b) => body = Some(b),
                Err(e) => warn!(call = call.key, error = %e, "answer SDP not usable"),
            }
        }
        if had_offer {
            self.send_ack(call, li, cseq, None);
        } else {
            // Delayed offer: the answer comes in the caller's ACK.
            call.legs[li].ack_deferred = Some(cseq);
        }
        if !self.accept_caller(call, now, body.as_deref()) {
            // Routing for the caller implies its INVITE waits; were it not so, end the call
            // rather than bridge a caller that was never answered.
            self.end_call(call, now, HangupBy::System, EndReason::Internal, None);
            return;
        }
        call.bridge(a, li);
        call.record.answered_at = Some(now);
        call.record.answered_by = Some(call.legs[li].party.name().to_string());
        info!(call = call.key, by = ?call.record.answered_by, "answered");
        if let Some(max) = self.cfg.calls.max_duration.filter(|d| !d.is_zero()) {
            self.arm(now + max, call.key, TimerKind::MaxDuration);
        }
        self.arm_keepalive(call, now);
    }

    /// Sends our 2xx (with `body`, an SDP answer) to the caller's waiting INVITE, retransmitted
    /// until its ACK (or held for a PRACK). False if the caller's INVITE is not waiting any more.
    pub(super) fn accept_caller(
        &mut self,
        call: &mut Call,
        now: Instant,
        body: Option<&str>,
    ) -> bool {
        let a = call.a;
        self.accept_uas(call, now, a, body)
    }

    /// Our 2xx to the waiting INVITE of UAS leg `a` (the caller, or a picker joining a call).
    pub(super) fn accept_uas(
        &mut self,
        call: &mut Call,
        now: Instant,
        a: LegIdx,
        body: Option<&str>,
    ) -> bool {
        let was = std::mem::replace(&mut call.legs[a].state, LegState::Uas(UasState::Accepted));
        let LegState::Uas(UasState::Proceeding(mut inv)) = was else {
            call.legs[a].state = was;
            return false;
        };
        let tag = call.legs[a].dialog.local_tag.clone();
        let contact = call.legs[a].dialog.contact();
        let session = self.st_accepted(call, now, a, inv.session);
        let mut reply = Reply::new(StatusCode::OK)
            .tag(&tag)
            .header("Contact", contact)
            .header("Allow", allow(DIALOG_METHODS))
            .header("Supported", supported())
            .body(body.map(|b| ("application/sdp", b.as_bytes())));
        for (n, v) in session {
            reply = reply.header(n, v);
        }
        let to = Incoming {
            tx: inv.tx,
            req: &inv.req,
            src: inv.src,
        };
        let data = self.build_response(to, reply);
        let acseq = inv.req.cseq().map(|c| c.seq).unwrap_or(1);
        let rel = inv.rel.take();
        if !self.hold_2xx(a, call, inv.tx, &data, acseq, rel) {
            self.out.push_back(Output::Respond {
                tx: inv.tx,
                status: StatusCode::OK,
                data: data.clone(),
            });
            let t1 = self.settings.timers.t1;
            call.legs[a].ok = Some(OkRetx {
                data,
                cseq: acseq,
                interval: t1,
                started: now,
            });
            self.arm(now + t1, call.key, TimerKind::Retx2xx(a));
        }
        call.legs[a].status = Some(StatusCode::OK);
        if a == call.a {
            call.record.a_status = Some(StatusCode::OK);
        }
        true
    }
}
