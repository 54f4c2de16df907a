//! Requests inside a dialog: BYE ends the call, REFER transfers it, a DTMF INFO may become
//! RFC 4733, and everything else (re-INVITE, UPDATE, INFO, OPTIONS, MESSAGE, NOTIFY, ...) is
//! relayed to the other leg with its SDP rewritten (`t_fwd` for in-dialog requests); the ACK
//! of our 2xx.
//!
//! A new in-dialog method with its own behaviour is a module with a handler, and one arm in
//! [`B2bua::handle_in_dialog`]'s dispatch.

use super::call::{Call, EndReason, HangupBy, Phase, Reinvite};
use super::leg::{LegIdx, LegState, UasState};
use super::send::{Incoming, Relayed, Reply, ReqKind};
use super::B2bua;
use crate::util::{is_sdp, str_of};
use crate::{Directory, Flow};
use bytes::Bytes;
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{HeaderName, Message, Method, StatusCode};
use std::time::Instant;
use tracing::debug;

/// Headers of a relayed request that mean something end to end.
/// (`Session-Expires`/`Min-SE` are per leg: see `session_timer`.)
const RELAYED_HEADERS: [&str; 4] = ["Event", "Subscription-State", "Info-Package", "Accept"];

impl B2bua {
    /// An ACK (for a 2xx: it has no transaction) in one of our dialogs; false if it belongs to
    /// no call (the shell drops it). It stops the retransmission of our 2xx; when the 2xx on
    /// the other leg carried the offer (delayed offer), its answer goes out in our ACK there.
    pub fn handle_ack(&mut self, now: Instant, req: &Message) -> bool {
        let Some((key, li)) = self.dialog_of(req) else {
            return false;
        };
        self.with_call(key, now, |this, call| this.ack(call, li, req))
            .is_some()
    }

    fn ack(&mut self, call: &mut Call, li: LegIdx, req: &Message) {
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        if call.legs[li].ok.as_ref().is_none_or(|o| o.cseq != cseq) {
            return;
        }
        let leg = &mut call.legs[li];
        leg.ok = None;
        if matches!(leg.state, LegState::Uas(UasState::Accepted)) {
            leg.state = LegState::Uas(UasState::Confirmed);
        }
        if let Some(p) = call.partner(li) {
            // A delayed offer: the answer comes in this ACK.
            if let Some(c) = call.legs[p].ack_deferred.take() {
                let body = if is_sdp(req) {
                    self.relay_sdp(call, li, p, &req.body.clone(), false).ok()
                } else {
                    None
                };
                let body = body.as_deref().map(|b| ("application/sdp", b.as_bytes()));
                self.send_ack(call, p, c, body);
            }
            // DTMF that arrived while a dialog waited for an ACK.
            self.next_dtmf_info(call, p);
        }
        self.next_dtmf_info(call, li);
    }

    /// A request with a To tag (in-dialog; not ACK, not CANCEL) in server transaction `tx`.
    /// False if no dialog matches (the shell answers 481). Every request gets its answer
    /// through `tx`: at once (BYE 200, REFER 202, INFO DTMF 200, 481 on an ended leg, 500 for
    /// an old CSeq, 491 for a re-INVITE during another offer), or the other leg's answer when
    /// it is relayed.
    pub fn handle_in_dialog(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Message,
        flow: Flow,
        dir: &dyn Directory,
    ) -> bool {
        let inc = Incoming {
            tx,
            req,
            src: flow.remote,
        };
        // A copy of the BYE that ended a dialog (its own transaction evicted from a full table
        // before the copy was read), whether the call is still ending or already gone: answered
        // as that transaction would have answered it (see `ended`).
        if self.repeats_ended_bye(now, req, flow.remote) {
            debug!("copy of the BYE that ended a dialog: 200");
            self.respond(inc, Reply::new(StatusCode::OK));
            return true;
        }
        let Some((key, li)) = self.dialog_of(req) else {
            return false;
        };
        self.with_call(key, now, |this, call| {
            this.in_dialog(call, now, inc, li, dir)
        })
        .is_some()
    }

    fn in_dialog(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
        dir: &dyn Directory,
    ) {
        let req = inc.req;
        let method = req.method().cloned().unwrap_or(Method::Other(Bytes::new()));
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let leg = &mut call.legs[li];
        if !leg.active() {
            self.respond(
                inc,
                Reply::new(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST),
            );
            return;
        }
        // RFC 3261 §12.2.2: a CSeq lower than the last one is out of order.
        if leg.dialog.remote_cseq != 0
            && cseq <= leg.dialog.remote_cseq
            && matches!(leg.state, LegState::Uas(_))
        {
            self.respond(inc, Reply::new(StatusCode::SERVER_INTERNAL_ERROR));
            return;
        }
        leg.dialog.remote_cseq = leg.dialog.remote_cseq.max(cseq);
        let partner = call.partner(li);
        match method {
            Method::Bye => self.bye(call, now, inc, li, partner),
            Method::Prack => self.prack_in(call, now, inc, li),
            // A session refresh without an offer: answered on this leg (RFC 4028 §8).
            Method::Update if req.body.is_empty() && leg_confirmed(call, li) => {
                self.st_update_in(call, now, inc, li)
            }
            // An offer before the answer: this leg's media only (RFC 3311 in early dialogs).
            Method::Update if partner.is_none() && matches!(call.phase, Phase::Routing(_)) => {
                self.early_update(call, inc, li)
            }
            Method::Refer => self.handle_refer(call, now, inc, li, partner, dir),
            Method::Info if partner.is_some() && self.info_dtmf(call, partner, req) => {
                self.respond(inc, Reply::new(StatusCode::OK));
            }
            m => match partner {
                Some(p) => {
                    // RFC 3261 §14.1 / RFC 3311 §5.2: one offer at a time (a relayed
                    // re-INVITE, or ours joining two legs).
                    let offer = m == Method::Invite || m == Method::Update && is_sdp(req);
                    if offer && call.offer_pending() {
                        self.respond(inc, Reply::new(StatusCode::REQUEST_PENDING));
                        return;
                    }
                    if matches!(m, Method::Invite | Method::Update)
                        && !self.st_check_reoffer(call, inc, li)
                    {
                        return;
                    }
                    if m == Method::Invite {
                        self.respond(inc, Reply::new(StatusCode::TRYING));
                    }
                    self.relay_request(call, li, p, inc, m);
                }
                None => {
                    let code = match m {
                        Method::Options | Method::Info => StatusCode::OK,
                        Method::Invite | Method::Update => StatusCode::REQUEST_PENDING,
                        _ => StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                    };
                    self.respond(inc, Reply::new(code));
                }
            },
        }
    }

    /// BYE: 200, and the other side is hung up (unless it is a transferor leaving).
    fn bye(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
        partner: Option<LegIdx>,
    ) {
        self.respond(inc, Reply::new(StatusCode::OK));
        let leg = &mut call.legs[li];
        if let Ok(c) = inc.req.cseq() {
            let (call_id, tag) = leg.dialog.key();
            self.ended
                .record(now, call_id.as_bytes(), tag.as_bytes(), c.seq, inc.src.ip());
        }
        // A BYE in the caller's early dialog: its INVITE still gets its 487 (RFC 3261
        // §15.1.2), from `end_call`.
        if leg.uas_invite().is_none() {
            leg.terminate();
        }
        leg.ok = None;
        let transferor = call.is_transferor(li);
        if transferor || partner.is_none() && call.is_bridged() {
            debug!(call = call.key, "transferor left");
        } else {
            let by = if li == call.a {
                HangupBy::Caller
            } else {
                HangupBy::Callee
            };
            self.end_call(call, now, by, EndReason::Bye, Some(li));
        }
    }

    /// Relays `inc` from leg `from` to leg `to` as a new request in `to`'s dialog (SDP
    /// rewritten; 488 to the sender when its SDP is unusable).
    fn relay_request(
        &mut self,
        call: &mut Call,
        from: LegIdx,
        to: LegIdx,
        inc: Incoming<'_>,
        m: Method,
    ) {
        let req = inc.req;
        let mut body = None;
        if is_sdp(req) {
            let raw = req.body.clone();
            match self.relay_sdp(call, from, to, &raw, true) {
                Ok(b) => body = Some(("application/sdp".to_string(), b.into_bytes())),
                Err(e) => {
                    debug!(error = %e, "bad SDP in re-offer: 488");
                    let tag = call.legs[from].dialog.local_tag.clone();
                    self.respond(inc, Reply::new(StatusCode::NOT_ACCEPTABLE_HERE).tag(&tag));
                    return;
                }
            }
        } else if !req.body.is_empty() {
            let ct = req
                .header(HeaderName::ContentType)
                .map(|v| str_of(&v))
                .unwrap_or_else(|| "application/octet-stream".into());
            body = Some((ct, req.body.to_vec()));
        }
        let mut extra = Vec::new();
        for h in RELAYED_HEADERS {
            if let Some(v) = req.other_header(h) {
                extra.push((h.to_string(), str_of(&v)));
            }
        }
        if matches!(m, Method::Invite | Method::Update) {
            // The other leg's own session interval (refreshed by this exchange too).
            let party = call.legs[to].party.clone();
            extra.extend(self.st_invite_headers(&party));
        }
        let is_invite = m == Method::Invite;
        let relayed = Relayed {
            from,
            tx: inc.tx,
            req: req.clone(),
            src: inc.src,
        };
        self.send_in_dialog(
            call,
            to,
            m,
            &extra,
            body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
            ReqKind::Relay(Box::new(relayed)),
        );
        if is_invite {
            call.reinvite = Some(Reinvite { from, to });
        }
    }
}

/// The leg's dialog is confirmed (an UPDATE in an early dialog goes the relay's way).
fn leg_confirmed(call: &Call, li: LegIdx) -> bool {
    call.legs[li].confirmed()
}
