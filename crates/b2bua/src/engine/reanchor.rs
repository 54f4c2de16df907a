//! Joining two legs that did not talk to each other before: a transfer's transferee and its
//! target, or a leg's peer and the device whose INVITE with `Replaces` takes that leg's place.
//! The two get a relay bundle of their own (by each one's media family, so an IPv4 doorbell and
//! an IPv6 phone meet), and podpbx's own re-INVITEs give each the other's media:
//!
//! * blind transfer (one re-INVITE): the target answered our INVITE, which offered the
//!   transferee's media; the transferee gets the target's answer as our offer;
//! * attended transfer (two): the target gets the transferee's last SDP as a fresh offer
//!   (sendrecv: the transferee was probably on hold) at its new anchors, and its answer becomes
//!   our offer to the transferee, whose answer closes the exchange;
//! * INVITE with `Replaces` of an answered dialog (one): the remaining party gets the device's
//!   offer, and its answer goes into our 2xx to the device; the replaced leg gets a BYE.
//!
//! The old bundles are released once the exchange is done. A refused re-INVITE ends a
//! transferred call (its media points nowhere any more); a refused replacement changes
//! nothing (RFC 3261 §14.1: the session stays as it was) and the device gets the refusal. A
//! 491 (glare with the peer's own re-INVITE) is retried after a pause, a few times.

use super::call::{Call, EndReason, HangupBy};
use super::leg::{BundleId, LegIdx, LegMedia};
use super::responses::Resp;
use super::send::ReqKind;
use super::timers::TimerKind;
use super::B2bua;
use crate::util::is_sdp;
use crate::{Family, MediaLeg, ReqId};
use bytes::Bytes;
use podpbx_sdp::Sdp;
use podpbx_sip::caps::{allow, supported, DIALOG_METHODS, TRUNK_DIALOG_METHODS};
use podpbx_sip::{Method, StatusCode, Transport};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How many times a re-INVITE answered 491 is sent again.
const MAX_GLARE_RETRIES: u8 = 3;

/// The pause before sending a re-INVITE again after a 491 (RFC 3261 §14.1 asks for a random
/// 0-4 s; one fixed second keeps virtual-time tests exact and both sides' pauses differ anyway).
const GLARE_PAUSE: Duration = Duration::from_secs(1);

/// Our re-INVITE on `leg` offering the media of `other`, and what its answer leads to.
pub(crate) struct Reanchor {
    /// The leg our re-INVITE is on.
    pub leg: LegIdx,
    /// The leg whose media the offer carries.
    pub other: LegIdx,
    /// The offer as sent (sent again after a 491).
    pub offer: String,
    /// Our re-INVITE in flight (`None`: waiting to send it again after a 491).
    pub req: Option<ReqId>,
    pub retries: u8,
    pub next: Next,
    /// Bundles (indices in the call's) released once the exchange is done.
    pub old: Vec<usize>,
}

/// What the answer to our re-INVITE leads to.
#[derive(Debug)]
pub(crate) enum Next {
    /// The answer becomes our offer to `other` (attended transfer), then [`Next::Done`].
    OfferOther,
    /// The exchange is complete.
    Done,
    /// The answer goes into our 2xx to the waiting INVITE (with `Replaces`) of `other`, and
    /// `replaced` gets a BYE; on a refusal `leg`'s media goes back to `before` (its bundle and
    /// the SDP it last got from us).
    AnswerInvite {
        replaced: LegIdx,
        before: Box<LegMedia>,
    },
}

impl B2bua {
    /// The family of leg `li`'s media: that of its last SDP's address when podpbx has a
    /// pinned address of it, else that of its signalling.
    pub(super) fn leg_media_family(&self, call: &Call, li: LegIdx) -> Family {
        let leg = &call.legs[li];
        let signalling = leg.dialog.family();
        let sdp_family = leg
            .media
            .last_sdp
            .as_deref()
            .and_then(|raw| Sdp::parse(raw).ok())
            .and_then(|s| {
                let m = s.media().iter().find(|m| !m.rejected())?;
                m.rtp_addr()
                    .map(|a| Family::of(a.ip()))
                    .filter(|_| !m.zero_address())
            });
        match sdp_family {
            Some(Family::V4) if self.cfg.sip.ipv4.is_some() => Family::V4,
            Some(Family::V6) if self.cfg.sip.ipv6.is_some() => Family::V6,
            _ => signalling,
        }
    }

    /// A new bundle of the call (never one another pair of legs already uses).
    pub(super) fn fresh_bundle(&mut self, call: &mut Call, a: Family, b: Family) -> BundleId {
        call.bundles.push(super::call::Bundle {
            a,
            b,
            ids: Vec::new(),
        });
        BundleId(call.bundles.len() - 1)
    }

    /// Moves leg `li` of call `from` into call `to` (a transfer or a replacement joins it
    /// there); returns its index in `to`. `from` keeps a terminated husk of it (its CDR), the
    /// dialog, its requests in flight and its timers follow the leg; requests relayed for
    /// `from`'s other legs stay with `from`. The leg's media is the caller's to set.
    pub(super) fn move_leg(&mut self, from: &mut Call, li: LegIdx, to: &mut Call) -> LegIdx {
        let husk = from.legs[li].husk();
        let mut leg = std::mem::replace(&mut from.legs[li], husk);
        leg.media.srtp.applied = None;
        let ni = to.legs.len();
        if let Some(inv) = leg.uas_invite() {
            self.by_invite_tx.insert(inv.tx, to.key);
            self.owned
                .entry(to.key)
                .or_default()
                .invite_txs
                .push(inv.tx);
        }
        self.by_dialog.insert(leg.dialog.key(), (to.key, ni));
        to.legs.push(leg);
        let (reqs, timers) = self
            .owned
            .get(&from.key)
            .map(|o| (o.reqs.clone(), o.timers.clone()))
            .unwrap_or_default();
        for id in reqs {
            let Some(p) = self.by_req.get_mut(&id) else {
                continue;
            };
            if p.call == from.key && p.leg == li && !matches!(p.kind, ReqKind::Relay(_)) {
                p.call = to.key;
                p.leg = ni;
                if p.counted && !p.done {
                    from.pending = from.pending.saturating_sub(1);
                    to.pending += 1;
                }
                self.own_request(to.key, id);
            }
        }
        let moved: Vec<((Instant, u64), TimerKind)> = timers
            .into_iter()
            .filter_map(|at| {
                let (k, kind) = self.timers.get(&at)?;
                (*k == from.key && kind.leg() == Some(li)).then_some((at, *kind))
            })
            .collect();
        for (at, kind) in moved {
            self.timers.remove(&at);
            self.arm(at.0, to.key, kind.with_leg(ni));
        }
        ni
    }

    /// Puts legs `keep` and `joining` on a fresh bundle: `keep` stays on its relay side,
    /// `joining` takes the other; each side is of its leg's media family. Returns the bundle
    /// `keep` used so far (released once the join is done).
    pub(super) fn rebundle(
        &mut self,
        call: &mut Call,
        keep: LegIdx,
        joining: LegIdx,
    ) -> Vec<usize> {
        let side = call.legs[keep].media.side;
        let kf = self.leg_media_family(call, keep);
        let jf = self.leg_media_family(call, joining);
        let (a, b) = if side == MediaLeg::A {
            (kf, jf)
        } else {
            (jf, kf)
        };
        let nb = self.fresh_bundle(call, a, b);
        let old = call.legs[keep].media.bundle.map(|b| b.0);
        call.legs[keep].media.bundle = Some(nb);
        let j = &mut call.legs[joining].media;
        j.bundle = Some(nb);
        j.side = side.other();
        old.into_iter().collect()
    }

    /// Sends our re-INVITE to leg `to` with `sdp` (the media of leg `from`) as the offer, on
    /// their common bundle; false (nothing sent) when the SDP cannot be offered there.
    pub(super) fn start_reanchor(
        &mut self,
        call: &mut Call,
        to: LegIdx,
        from: LegIdx,
        sdp: &Bytes,
        next: Next,
        old: Vec<usize>,
    ) -> bool {
        let offer = match self.relay_sdp(call, from, to, sdp, true) {
            Ok(o) => o,
            Err(e) => {
                warn!(call = call.key, leg = to, error = %e, "cannot offer the joined party's media");
                return false;
            }
        };
        call.reanchor = Some(Box::new(Reanchor {
            leg: to,
            other: from,
            offer,
            req: None,
            retries: 0,
            next,
            old,
        }));
        self.send_reanchor(call);
        true
    }

    /// Sends (again) the re-INVITE of the join in progress.
    fn send_reanchor(&mut self, call: &mut Call) {
        let Some((to, offer)) = call.reanchor.as_ref().map(|r| (r.leg, r.offer.clone())) else {
            return;
        };
        if !call.legs[to].active() {
            return;
        }
        let party = call.legs[to].party.clone();
        let methods = if party.is_trunk() {
            TRUNK_DIALOG_METHODS
        } else {
            DIALOG_METHODS
        };
        let mut headers = vec![
            ("Allow".to_string(), allow(methods)),
            ("Supported".to_string(), supported()),
        ];
        headers.extend(self.st_invite_headers(&party));
        debug!(
            call = call.key,
            leg = to,
            "re-INVITE with the joined party's media"
        );
        let id = self.send_in_dialog(
            call,
            to,
            Method::Invite,
            &headers,
            Some(("application/sdp", offer.as_bytes())),
            ReqKind::Reanchor,
        );
        if let Some(r) = call.reanchor.as_mut() {
            r.req = Some(id);
        }
    }

    /// The pause after a 491 is over: the re-INVITE goes out again.
    pub(super) fn reanchor_retry(&mut self, call: &mut Call) {
        if call.reanchor.as_ref().is_some_and(|r| r.req.is_none()) {
            self.send_reanchor(call);
        }
    }

    /// A response to our re-INVITE `resp.id` on leg `li`.
    pub(super) fn reanchor_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        resp: Resp<'_>,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let msg = resp.msg;
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let current = call
            .reanchor
            .as_ref()
            .is_some_and(|r| r.req == Some(resp.id) && r.leg == li);
        if resp.status.is_success() {
            if !resp.first_final {
                self.resend_ack(call, li, cseq);
                return;
            }
            // A 2xx is acknowledged whatever became of the join (RFC 3261 §13.2.2.4).
            self.send_ack(call, li, cseq, None);
            if !current {
                return;
            }
            self.st_uac_answered(call, now, li, msg);
            let Some(r) = call.reanchor.take() else {
                return;
            };
            if !is_sdp(msg) {
                warn!(
                    call = call.key,
                    leg = li,
                    "2xx to our re-INVITE without an answer"
                );
                call.reanchor = Some(r);
                self.reanchor_failed(
                    call,
                    now,
                    li,
                    resp.id,
                    Some(StatusCode::NOT_ACCEPTABLE_HERE),
                );
                return;
            }
            self.reanchor_answered(call, now, li, *r, &msg.body);
            return;
        }
        if !resp.first_final || !current {
            return;
        }
        if resp.status == StatusCode::REQUEST_PENDING {
            if let Some(r) = call
                .reanchor
                .as_mut()
                .filter(|r| r.retries < MAX_GLARE_RETRIES)
            {
                r.retries += 1;
                r.req = None;
                debug!(
                    call = call.key,
                    leg = li,
                    "491 to our re-INVITE: again after a pause"
                );
                self.arm(now + GLARE_PAUSE, call.key, TimerKind::Reanchor);
                return;
            }
        }
        self.reanchor_failed(call, now, li, resp.id, Some(resp.status));
    }

    /// Leg `li` answered our re-INVITE of join `r` with `answer`.
    fn reanchor_answered(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        r: Reanchor,
        answer: &Bytes,
    ) {
        match r.next {
            Next::OfferOther => {
                if !self.start_reanchor(call, r.other, li, answer, Next::Done, r.old) {
                    self.end_call(call, now, HangupBy::System, EndReason::TransferFailed, None);
                }
            }
            Next::Done => {
                if let Err(e) = self.learn_answer(call, li, answer) {
                    warn!(call = call.key, leg = li, error = %e, "answer to our re-INVITE not usable");
                    self.end_call(call, now, HangupBy::System, EndReason::TransferFailed, None);
                    return;
                }
                for b in r.old {
                    self.release_bundle(call, b);
                }
                info!(call = call.key, "joined parties hear each other");
            }
            Next::AnswerInvite { replaced, .. } => {
                let p = r.other;
                match self.relay_sdp(call, li, p, answer, false) {
                    Ok(text) => {
                        self.accept_uas(call, now, p, Some(&text));
                        self.send_bye(call, replaced);
                        call.bridge(li, p);
                        for b in r.old {
                            self.release_bundle(call, b);
                        }
                        info!(call = call.key, "dialog replaced");
                    }
                    Err(e) => {
                        // The remaining party already speaks the device's media: there is no
                        // going back, so the call ends.
                        warn!(call = call.key, error = %e, "answer not usable for the replacing device");
                        self.final_to_uas(call, p, StatusCode::NOT_ACCEPTABLE_HERE, None);
                        self.end_call(call, now, HangupBy::System, EndReason::Internal, None);
                    }
                }
            }
        }
    }

    /// Our re-INVITE `id` on leg `li` failed with `status` (`None`: no answer at all).
    pub(super) fn reanchor_failed(
        &mut self,
        call: &mut Call,
        now: Instant,
        li: LegIdx,
        id: ReqId,
        status: Option<StatusCode>,
    ) {
        if !call
            .reanchor
            .as_ref()
            .is_some_and(|r| r.req == Some(id) && r.leg == li)
        {
            return;
        }
        let Some(r) = call.reanchor.take() else {
            return;
        };
        let code = status.unwrap_or(StatusCode::REQUEST_TIMEOUT);
        warn!(
            call = call.key,
            leg = li,
            status = code.code(),
            "re-INVITE of the join refused"
        );
        let gone = matches!(code.code(), 408 | 481);
        match r.next {
            Next::AnswerInvite { before, .. } if !gone => {
                // Nothing changed for the remaining party: it goes on with its old peer.
                let p = r.other;
                if let Some(b) = call.legs[p].media.bundle {
                    self.release_bundle(call, b.0);
                }
                call.legs[li].media = *before;
                let status = if code.is_server_error() || code.is_client_error() {
                    code
                } else {
                    StatusCode::SERVER_INTERNAL_ERROR
                };
                self.final_to_uas(call, p, status, None);
            }
            Next::AnswerInvite { .. } => {
                self.end_call(call, now, HangupBy::System, EndReason::DialogGone, None);
            }
            _ => {
                let reason = if gone {
                    EndReason::DialogGone
                } else {
                    EndReason::TransferFailed
                };
                self.end_call(call, now, HangupBy::System, reason, None);
            }
        }
    }

    /// The relay learns `raw`, leg `li`'s answer to our offer (nothing is sent anywhere).
    fn learn_answer(&mut self, call: &mut Call, li: LegIdx, raw: &Bytes) -> Result<(), String> {
        let sdp = Sdp::parse(raw).map_err(|e| e.to_string())?;
        let transport = call.legs[li].dialog.peer.transport;
        if transport != Transport::Tls && super::media::has_sdes_keys(&sdp) {
            return Err("SDES keys over clear-text signalling".into());
        }
        let policy = self.srtp_policy(&call.legs[li].party);
        let tag = call.legs[li]
            .media
            .srtp
            .local
            .is_some()
            .then_some(super::media::OUR_TAG);
        let keys = self.accept_sdes(policy, transport, &sdp, tag)?;
        call.legs[li].media.srtp.remote = keys;
        let bundle = call.legs[li].media.bundle;
        self.learn_remote(call, li, bundle, &sdp, raw, false);
        self.apply_srtp(call, bundle, li);
        Ok(())
    }
}
