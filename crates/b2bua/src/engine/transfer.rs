//! Blind transfer (RFC 3515 REFER): 202, NOTIFY 100, the dialplan runs for the Refer-To target
//! with the other party (the keeper) as caller; NOTIFY 200 and BYE to the transferor once the
//! target answers, or a NOTIFY with the failure and the old bridge back.

use super::call::{Call, Phase, Purpose, Routing};
use super::leg::LegIdx;
use super::send::{Incoming, Reply, ReqKind};
use super::B2bua;
use crate::util::unescape_user;
use crate::Directory;
use podpbx_config::Origin;
use podpbx_sip::{HeaderName, Method, NameAddr, StatusCode};
use std::time::Instant;
use tracing::info;

/// Generation numbers of transfer routings start here (apart from the initial routing's).
const TRANSFER_GEN: u32 = 100;

impl B2bua {
    /// REFER from leg `li`: only in a bridged call (403 otherwise); attended transfer
    /// (Replaces) is not implemented (501).
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
            let reply = Reply::new(StatusCode::NOT_IMPLEMENTED)
                .reason(Some("Attended Transfer Not Implemented"));
            self.respond(inc, reply);
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
        let origin = match &keeper_party {
            super::leg::Party::Trunk(t) => Origin::Trunk {
                trunk: t,
                did: None,
            },
            super::leg::Party::User(u) => Origin::Local { user: u },
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
            family: call.legs[li].dialog.family(),
        };
        // Who decides where the call goes is the transferor: a trunk leg or a device (a
        // forgeable source) may send it out through a trunk only by an explicit rule.
        let mut routing = Routing::new(purpose, rule.steps().cloned().collect(), TRANSFER_GEN);
        routing.trunks_allowed = match &call.legs[li].party {
            super::leg::Party::Trunk(t) => cfg.may_reach_trunk(
                rule,
                &Origin::Trunk {
                    trunk: t,
                    did: None,
                },
            ),
            super::leg::Party::User(u) => cfg.may_reach_trunk(rule, &Origin::Local { user: u }),
        };
        call.phase = Phase::Routing(routing);
        self.next_step(call, now, dir);
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
