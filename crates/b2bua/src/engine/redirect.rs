//! Redirections (3xx) from a trunk (RFC 3261 §8.1.3.4), followed the way a provider means
//! them: the number in the first Contact's user part is called again **through the same
//! trunk** (same caller ID), never at the host the Contact names, so a redirect cannot send a
//! call anywhere but the provider that already had it. At most [`MAX_REDIRECTS`] per call; a
//! redirect without a usable number, or one too many, fails the trunk leg with `480`.

use super::call::Call;
use super::leg::{LegIdx, Party};
use super::responses::Resp;
use super::trunk::TrunkStep;
use super::B2bua;
use crate::util::{sanitize, unescape_user};
use crate::Directory;
use podpbx_sip::StatusCode;
use std::time::Instant;
use tracing::info;

/// Redirections followed per call, at most.
pub(crate) const MAX_REDIRECTS: u8 = 3;

/// The phone number a 3xx points to: the first Contact's user part, if it is one.
fn redirect_number(resp: &Resp<'_>) -> Option<String> {
    let c = resp.msg.contact_iter().next()?.ok()?;
    let user = unescape_user(&c.addr.uri.user?);
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+') || b == b'*' || b == b'#');
    ok.then_some(user)
}

impl B2bua {
    /// A 3xx to our INVITE on trunk leg `li`: follows it (true) or leaves the failure to the
    /// caller of this (false, with the leg's status set to `480`).
    pub(super) fn follow_redirect(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        li: LegIdx,
        resp: Resp<'_>,
    ) -> bool {
        let Party::Trunk(trunk) = call.legs[li].party.clone() else {
            return false;
        };
        let count = call.routing().map_or(MAX_REDIRECTS, |r| r.redirects);
        let number = redirect_number(&resp);
        let (Some(number), true) = (number, count < MAX_REDIRECTS) else {
            info!(call = call.key, trunk = %trunk, status = resp.status.code(), "redirect not followed");
            return false;
        };
        // The caller ID this leg used: the user of our From.
        let from = &call.legs[li].dialog.local_uri;
        let cid = from
            .split_once("sip:")
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| sanitize(u, 64));
        info!(call = call.key, trunk = %trunk, to = %number, status = resp.status.code(), "following the provider's redirect through the same trunk");
        let leg = &mut call.legs[li];
        leg.terminate();
        leg.status = Some(resp.status);
        if let Some(r) = call.routing_mut() {
            r.redirects += 1;
        }
        let step = TrunkStep {
            name: &trunk,
            strip: 0,
            prepend: "",
            caller_id: cid.as_deref(),
            number: Some(&number),
        };
        self.start_trunk(call, now, dir, &step)
    }
}

/// The status a caller hears for a redirect podpbx did not follow.
pub(crate) fn unfollowed(status: StatusCode) -> StatusCode {
    if status.is_redirection() {
        StatusCode::TEMPORARILY_UNAVAILABLE
    } else {
        status
    }
}
