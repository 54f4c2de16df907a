//! REFER (RFC 3515). Blind transfer: 202, NOTIFY 100, the dialplan runs for the Refer-To
//! target with the other party (the keeper) as caller; NOTIFY 200 and BYE to the transferor
//! once the target answers (the keeper then gets the target's media by re-INVITE), or a
//! NOTIFY with the failure and the old bridge back.
//!
//! Attended transfer (RFC 5589 §7): the Refer-To carries `Replaces` naming the transferor's
//! other dialog (RFC 3891 §7.1), the one with the target. The two parties the transferor talks
//! to are joined: the target's leg moves into this call, next to the keeper, the transferor's
//! other call ends, and the transferor gets NOTIFY 200 and BYE on both dialogs; re-INVITEs
//! give target and keeper each other's media (`reanchor`). Only a local user may do it, and
//! only with its own calls (403 otherwise); a dialog that does not exist, or is not answered
//! yet (an early dialog podpbx did not initiate, RFC 3891 §3), is reported as `481` in the
//! NOTIFY, `early-only` on an answered one as `486`.

use super::call::{Call, CallKey, EndReason, HangupBy, Phase, Purpose, Routing};
use super::leg::{CdrRole, LegIdx, Party};
use super::reanchor::Next;
use super::send::{Incoming, Reply, ReqKind};
use super::B2bua;
use crate::util::{str_of, unescape_user};
use crate::Directory;
use bytes::Bytes;
use podpbx_config::Origin;
use podpbx_sip::replaces::{split_refer_to, Replaces};
use podpbx_sip::{HeaderName, Method, NameAddr, StatusCode};
use std::time::Instant;
use tracing::info;

/// Generation numbers of transfer routings start here (apart from the initial routing's).
const TRANSFER_GEN: u32 = 100;

impl B2bua {
    /// REFER from leg `li`: only in a bridged call (403 otherwise); with `Replaces` in the
    /// Refer-To an attended transfer, else a blind one.
    pub(super) fn handle_refer(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
        partner: Option<LegIdx>,
        dir: &dyn Directory,
    ) {
        let req = inc.req;
        let Some(keeper) = partner.filter(|_| call.is_bridged()) else {
            self.respond(inc, Reply::new(StatusCode::FORBIDDEN));
            return;
        };
        let Some(target) = req
            .header(HeaderName::ReferTo)
            .and_then(|v| NameAddr::parse(&v).ok())
        else {
            let reply = Reply::new(StatusCode::BAD_REQUEST).reason(Some("Bad Refer-To"));
            self.respond(inc, reply);
            return;
        };
        if target
            .uri
            .headers
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"replaces"))
        {
            match split_refer_to(&str_of(&target.uri.raw)).1 {
                Some(r) => self.attended(call, now, inc, li, keeper, &r),
                None => {
                    let reply = Reply::new(StatusCode::BAD_REQUEST).reason(Some("Bad Replaces"));
                    self.respond(inc, reply);
                }
            }
            return;
        }
        let number = target
            .uri
            .user
            .as_ref()
            .map(|u| unescape_user(u))
            .unwrap_or_default();
        let contact = call.legs[li].dialog.contact();
        self.respond(
            inc,
            Reply::new(StatusCode::ACCEPTED).header("Contact", contact),
        );
        self.notify_refer(call, li, StatusCode::TRYING, None, false);
        let cfg = self.cfg.clone();
        let keeper_party = call.legs[keeper].party.clone();
        // The transferor dials the target: its rules route the number, and whether it may use
        // a trunk is its own (a trunk leg or a device, forgeable sources, only by an explicit
        // rule): a transfer reaches nothing its transferor could not call directly.
        let transferor_party = call.legs[li].party.clone();
        let origin = match &transferor_party {
            Party::Trunk(t) => Origin::Trunk {
                trunk: t,
                did: None,
            },
            Party::User(u) => Origin::Local { user: u },
        };
        info!(call = call.key, to = %number, "blind transfer");
        let wall = call.wall0 + now.saturating_duration_since(call.start);
        let Some(rule) = Self::route_at(&cfg, &self.modes, &origin, &number, wall) else {
            self.notify_refer(call, li, StatusCode::NOT_FOUND, None, true);
            return;
        };
        call.number = number;
        if let Some(p) = keeper_party.user() {
            call.from_id = (
                cfg.user(p)
                    .and_then(|u| u.display_name.clone())
                    .unwrap_or_default(),
                p.to_string(),
            );
        }
        let purpose = Purpose::Transfer {
            keeper,
            transferor: li,
            first_bundle: call.bundles.len(),
        };
        let mut routing = Routing::new(purpose, rule.steps().cloned().collect(), TRANSFER_GEN);
        routing.trunks_allowed = cfg.may_reach_trunk(rule, &origin);
        call.phase = Phase::Routing(routing);
        self.next_step(call, now, dir);
    }

    /// The dialog a `Replaces` names, as (call, leg): its Call-ID and our tag (`to-tag`: the
    /// UA receiving the `Replaces` is podpbx), with the peer's tag as `from-tag`. Phones that
    /// write the two tags the other way round are matched too (each dialog has one tag of ours:
    /// no other dialog can match). `current` is the call being handled (out of the table).
    pub(super) fn replaced_dialog(
        &self,
        current: &Call,
        r: &Replaces,
    ) -> Option<(CallKey, LegIdx)> {
        let find = |ours: &str, theirs: &str| {
            let (key, li) = *self.by_dialog.get(&(r.call_id.clone(), ours.to_string()))?;
            let call = if key == current.key {
                current
            } else {
                self.calls.get(&key)?
            };
            let leg = call.legs.get(li)?;
            (leg.dialog.remote_tag.as_deref() == Some(theirs)).then_some((key, li))
        };
        find(&r.to_tag, &r.from_tag).or_else(|| find(&r.from_tag, &r.to_tag))
    }

    /// REFER with `Replaces` from leg `li` of a bridged call whose other party is `keeper`.
    fn attended(
        &mut self,
        call: &mut Call,
        now: Instant,
        inc: Incoming<'_>,
        li: LegIdx,
        keeper: LegIdx,
        r: &Replaces,
    ) {
        let refuse = |this: &mut B2bua, why: &'static str| {
            info!(
                call = call.key,
                reason = why,
                "attended transfer refused: 403"
            );
            this.respond(inc, Reply::new(StatusCode::FORBIDDEN).reason(Some(why)));
        };
        // Only a local user transfers its own calls (a trunk leg never joins calls).
        let Party::User(user) = call.legs[li].party.clone() else {
            refuse(self, "Transfer Not Allowed");
            return;
        };
        let found = self.replaced_dialog(call, r);
        if found.is_some_and(|(k, _)| k == call.key) {
            refuse(self, "Replaces Names This Call");
            return;
        }
        // What the transferor learns when nothing can be joined (the status a target's
        // INVITE with Replaces would have got, RFC 3891 §3).
        let (fail, mine) = match found.and_then(|(k, l)| Some((l, self.calls.get(&k)?))) {
            None => (Some(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST), true),
            Some((l2, c2)) => {
                let fail = match c2.partner(l2) {
                    _ if !c2.legs[l2].answered() => {
                        Some(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST)
                    }
                    _ if r.early_only => Some(StatusCode::BUSY_HERE),
                    None => Some(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST),
                    Some(far) if !c2.legs[far].answered() => {
                        Some(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST)
                    }
                    _ if c2.offer_pending() || call.offer_pending() => {
                        Some(StatusCode::REQUEST_PENDING)
                    }
                    _ if call.legs[keeper].media.last_sdp.is_none() => {
                        Some(StatusCode::NOT_ACCEPTABLE_HERE)
                    }
                    Some(_) => None,
                };
                (fail, c2.legs[l2].party.user() == Some(user.as_str()))
            }
        };
        if !mine {
            refuse(self, "Not Your Call");
            return;
        }
        let contact = call.legs[li].dialog.contact();
        self.respond(
            inc,
            Reply::new(StatusCode::ACCEPTED).header("Contact", contact),
        );
        let (Some((key2, l2)), None) = (found, fail) else {
            let code = fail.unwrap_or(StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST);
            info!(
                call = call.key,
                code = code.code(),
                "attended transfer: nothing to join"
            );
            self.notify_refer(call, li, code, None, true);
            return;
        };
        let Some(mut c2) = self.calls.remove(&key2) else {
            return;
        };
        let Some(far) = c2.partner(l2) else {
            self.calls.insert(key2, c2);
            return;
        };
        let target_name = match &c2.legs[far].party {
            Party::Trunk(_) if far != c2.a => c2.number.clone(),
            Party::Trunk(_) => c2.from_id.1.clone(),
            Party::User(u) => u.clone(),
        };
        info!(call = call.key, other = key2, to = %target_name, "attended transfer");
        // The target's leg joins this call; the transferor's other call ends (BYE to its
        // leg there).
        let t = self.move_leg(&mut c2, far, call);
        call.legs[t].cdr_role = CdrRole::TransferTarget;
        c2.record.transferred_to = Some(target_name.clone());
        let by = if l2 == c2.a {
            HangupBy::Caller
        } else {
            HangupBy::Callee
        };
        self.end_call(&mut c2, now, by, EndReason::Transferred, None);
        self.put_back(c2, now);
        self.notify_refer(call, li, StatusCode::OK, None, true);
        self.send_bye(call, li);
        call.bridge(keeper, t);
        call.record.transferred_to = Some(target_name);
        // Media: a bundle of their own; the target gets the keeper's media, then the keeper
        // the target's.
        let old = self.rebundle(call, keeper, t);
        let offer = call.legs[keeper]
            .media
            .last_sdp
            .clone()
            .map(|raw| podpbx_sdp::sendrecv(&raw).map(Bytes::from).unwrap_or(raw));
        let started =
            offer.is_some_and(|o| self.start_reanchor(call, t, keeper, &o, Next::OfferOther, old));
        if !started {
            self.end_call(call, now, HangupBy::System, EndReason::TransferFailed, None);
        }
    }

    /// NOTIFY (RFC 3515 §2.4.4) on the transferor's leg `li` with the target's progress as a
    /// sipfrag.
    pub(super) fn notify_refer(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        code: StatusCode,
        reason: Option<&str>,
        terminated: bool,
    ) {
        let state = if terminated {
            "terminated;reason=noresource".to_string()
        } else {
            "active;expires=60".to_string()
        };
        let extra = vec![
            ("Event".to_string(), "refer".to_string()),
            ("Subscription-State".to_string(), state),
        ];
        let body = format!(
            "SIP/2.0 {} {}\r\n",
            code.code(),
            reason.unwrap_or(code.reason())
        );
        self.send_in_dialog(
            call,
            li,
            Method::Notify,
            &extra,
            Some(("message/sipfrag;version=2.0", body.as_bytes())),
            ReqKind::Notify,
        );
    }
}
