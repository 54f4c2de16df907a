//! Reliable provisional responses (RFC 3262), terminated on each leg that needs them.
//!
//! * **Towards the caller** (UAS): when its INVITE has `Require: 100rel`, every 18x we relay to
//!   it goes out reliably (`Require: 100rel`, `RSeq`), one at a time, retransmitted at T1,
//!   2*T1... until its PRACK, which we answer ourselves; after 64*T1 without one the INVITE
//!   fails with `500` (RFC 3262 §3) and the callees are cancelled. Our 2xx waits while a
//!   reliable provisional with SDP is unacknowledged ([`Held2xx`]).
//! * **Towards a callee** (UAC): every INVITE of ours says `Supported: 100rel`; a reliable 18x
//!   gets our PRACK in its early dialog, once and in RSeq order (retransmissions and
//!   out-of-order ones are neither acknowledged nor relayed again, §4).
//!
//! Nothing of this crosses legs: a callee that requires 100rel never makes the caller need it
//! (the caller gets ordinary 18x unless it asked), and no `Require` from one leg is copied to
//! the other.

use super::call::{Call, EndReason, Failure, HangupBy};
use super::leg::{LegIdx, LegState, OkRetx, UacState, UasState};
use super::send::{Incoming, Reply, ReqKind};
use super::timers::TimerKind;
use super::B2bua;
use crate::cdr::Disposition;
use crate::Output;
use bytes::Bytes;
use podpbx_sip::rel100::{self, PrackOutcome, RAck, Received, ReliableSender, SenderTimeout};
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{Message, Method, StatusCode};
use std::time::Instant;
use tracing::{debug, warn};

/// Our 2xx to the caller, built but held until the PRACK of a reliable provisional with SDP
/// (RFC 3262 §3: no 2xx before that PRACK).
#[derive(Debug)]
pub(crate) struct Held2xx {
    /// The caller's INVITE server transaction.
    pub tx: ServerTxId,
    pub data: Bytes,
    /// The INVITE's CSeq (the ACK matches it).
    pub cseq: u32,
    /// The provisionals still waiting for their PRACK.
    pub rel: ReliableSender,
}

/// The status code of a response's bytes (`SIP/2.0 183 ...`).
fn status_of(data: &[u8]) -> StatusCode {
    std::str::from_utf8(data.get(8..11).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .and_then(StatusCode::new)
        .unwrap_or(StatusCode::SESSION_PROGRESS)
}

impl B2bua {
    /// A sender of reliable provisionals for the caller's INVITE, when it requires them.
    pub(super) fn reliable_sender(&mut self, req: &Message) -> Option<ReliableSender> {
        if !req.requires_option(rel100::TAG) {
            return None;
        }
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(1);
        // RFC 3262 §3: the first RSeq is random in 1..2**31.
        let first = (self.ids.next_u64() % (1 << 31)) as u32 + 1;
        Some(ReliableSender::new(first, cseq, self.settings.timers.t1))
    }

    /// Sends provisional `reply` to the caller: reliably when its INVITE requires it.
    pub(super) fn provisional_to_a(&mut self, call: &mut Call, now: Instant, reply: Reply<'_>) {
        let (a, key) = (call.a, call.key);
        let LegState::Uas(UasState::Proceeding(inv)) = &mut call.legs[a].state else {
            return;
        };
        let status = reply.status;
        let has_sdp = reply.body.is_some();
        let rseq = inv.rel.as_mut().map(ReliableSender::next_rseq);
        let reply = match rseq {
            Some(n) => reply
                .header("Require", rel100::TAG.to_string())
                .header("RSeq", n.to_string()),
            None => reply,
        };
        let data = self.build_response(inv.incoming(), reply);
        let tx = inv.tx;
        let (Some(n), Some(rel)) = (rseq, inv.rel.as_mut()) else {
            self.out.push_back(Output::Respond { tx, status, data });
            return;
        };
        if let Some(d) = rel.push(now, n, data, has_sdp) {
            self.out.push_back(Output::Respond {
                tx,
                status,
                data: d,
            });
        }
        if let Some(t) = rel.poll_timeout() {
            self.arm(t, key, TimerKind::Rel100(a));
        }
    }

    /// The caller's reliable provisionals: in its ringing INVITE, or held with our 2xx.
    fn sender_of(call: &mut Call, li: LegIdx) -> Option<(ServerTxId, &mut ReliableSender)> {
        let leg = &mut call.legs[li];
        if let LegState::Uas(UasState::Proceeding(inv)) = &mut leg.state {
            let tx = inv.tx;
            return inv.rel.as_mut().map(|r| (tx, r));
        }
        leg.held_2xx.as_mut().map(|h| (h.tx, &mut h.rel))
    }

    /// Retransmits the caller's reliable provisional, or gives up on its PRACK.
    pub(super) fn rel100_timer(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        let key = call.key;
        let Some((tx, rel)) = Self::sender_of(call, li) else {
            return;
        };
        if rel.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        match rel.handle_timeout(now) {
            Some(SenderTimeout::Retransmit(data)) => {
                let next = rel.poll_timeout();
                let status = status_of(&data);
                self.out.push_back(Output::Respond { tx, status, data });
                if let Some(t) = next {
                    self.arm(t, key, TimerKind::Rel100(li));
                }
            }
            Some(SenderTimeout::GaveUp { rseq }) => {
                warn!(
                    call = key,
                    rseq, "no PRACK for our reliable provisional: 500"
                );
                if call.legs[li].held_2xx.take().is_some() {
                    // Answered on the other side, but the caller never confirmed: hang up.
                    self.final_held(call, now, li);
                } else {
                    let f = Failure::new(StatusCode::SERVER_INTERNAL_ERROR, Disposition::Failed);
                    self.routing_failed(call, now, f);
                }
            }
            None => {}
        }
    }

    /// The held 2xx will never go out: the caller gets `500` in its INVITE transaction and
    /// the callee a BYE.
    fn final_held(&mut self, call: &mut Call, now: Instant, li: LegIdx) {
        call.legs[li].terminate();
        call.record.a_status = Some(StatusCode::SERVER_INTERNAL_ERROR);
        self.end_call(call, now, HangupBy::System, EndReason::NoPrack, Some(li));
    }

    /// A PRACK from the caller (RFC 3262 §3): `200` when it acknowledges the outstanding
    /// reliable provisional (the next queued one goes out, a held 2xx too once no SDP waits),
    /// `481` when it matches none, `400` without a valid RAck. Never relayed.
    pub(super) fn prack_in(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
    ) {
        let key = call.key;
        let tag = call.legs[li].dialog.local_tag.clone();
        let Some(rack) = RAck::of(inc.req) else {
            self.respond(inc, Reply::new(StatusCode::BAD_REQUEST).tag(&tag));
            return;
        };
        let Some((tx, rel)) = Self::sender_of(call, li) else {
            self.respond(
                inc,
                Reply::new(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST).tag(&tag),
            );
            return;
        };
        match rel.on_prack(now, &rack) {
            PrackOutcome::NoMatch => {
                debug!(call = key, %rack, "PRACK matches no reliable provisional: 481");
                self.respond(
                    inc,
                    Reply::new(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST).tag(&tag),
                );
            }
            PrackOutcome::Acknowledged { next } => {
                let timer = rel.poll_timeout();
                let may_2xx = rel.may_send_2xx();
                self.respond(inc, Reply::new(StatusCode::OK).tag(&tag));
                if let Some(data) = next {
                    let status = status_of(&data);
                    self.out.push_back(Output::Respond { tx, status, data });
                }
                if let Some(t) = timer {
                    self.arm(t, key, TimerKind::Rel100(li));
                }
                if may_2xx {
                    if let Some(h) = call.legs[li].held_2xx.take() {
                        self.send_held_2xx(call, now, li, h);
                    }
                }
            }
        }
    }

    /// Sends a 2xx that waited for a PRACK, retransmitted until its ACK like any other.
    fn send_held_2xx(&mut self, call: &mut Call, now: Instant, li: LegIdx, h: Held2xx) {
        self.out.push_back(Output::Respond {
            tx: h.tx,
            status: StatusCode::OK,
            data: h.data.clone(),
        });
        let t1 = self.settings.timers.t1;
        call.legs[li].ok = Some(OkRetx {
            data: h.data,
            cseq: h.cseq,
            interval: t1,
            started: now,
        });
        self.arm(now + t1, call.key, TimerKind::Retx2xx(li));
    }

    /// Whether our 2xx to the caller must wait: its INVITE has a reliable provisional with SDP
    /// not yet acknowledged. Then the built 2xx is kept with the sender (see [`Held2xx`]).
    pub(super) fn hold_2xx(
        &mut self,
        li: LegIdx,
        call: &mut Call,
        tx: ServerTxId,
        data: &Bytes,
        cseq: u32,
        rel: Option<ReliableSender>,
    ) -> bool {
        let Some(rel) = rel else { return false };
        if rel.may_send_2xx() {
            return false;
        }
        debug!(
            call = call.key,
            "2xx held until the PRACK of our reliable provisional"
        );
        call.legs[li].held_2xx = Some(Held2xx {
            tx,
            data: data.clone(),
            cseq,
            rel,
        });
        true
    }

    /// A reliable provisional from callee leg `li` (RFC 3262 §4): PRACKed once, in order.
    /// False when it is a retransmission or out of order: nothing more may be done with it.
    pub(super) fn prack_out(&mut self, call: &mut Call, li: LegIdx, msg: &Message) -> bool {
        if !msg.requires_option(rel100::TAG) {
            return true;
        }
        let Some(rseq) = rel100::rseq(msg) else {
            // Require: 100rel without a usable RSeq: treat it as unreliable.
            return true;
        };
        let LegState::Uac(
            UacState::Calling(inv)
            | UacState::Early(inv)
            | UacState::CancelPending(inv)
            | UacState::Cancelling(inv),
        ) = &mut call.legs[li].state
        else {
            return false;
        };
        match inv.rel.on_provisional(rseq) {
            Received::New => {}
            Received::Retransmission | Received::OutOfOrder => return false,
        }
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(1);
        let rack = RAck {
            rseq,
            cseq,
            method: Method::Invite,
        };
        self.send_in_dialog(
            call,
            li,
            Method::Prack,
            &[("RAck".to_string(), rack.to_string())],
            None,
            ReqKind::Prack,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn status_of_bytes() {
        assert_eq!(status_of(b"SIP/2.0 180 Ringing\r\n").code(), 180);
        assert_eq!(status_of(b"SIP/2.0 183 Session Progress\r\n").code(), 183);
        assert_eq!(status_of(b"junk").code(), 183);
    }
}
