//! UPDATE (RFC 3311) in an early dialog: a callee (typically a provider's SBC moving its early
//! media after a reliable 183) or the caller offers new media before the call is answered. The
//! relay hides each side's addresses from the other, so the offer only concerns the leg it came
//! on: the relay learns the new media and the UPDATE is answered here with the SDP this leg
//! already has from us (our anchors do not move). UPDATEs in confirmed dialogs are relayed to
//! the other leg like re-INVITEs (`in_dialog`); an UPDATE without SDP is a session refresh
//! (`session_timer`).

use super::call::Call;
use super::leg::{BundleId, LegIdx};
use super::send::{Incoming, Reply};
use super::B2bua;
use podpbx_sdp::Sdp;
use podpbx_sip::StatusCode;
use tracing::debug;

impl B2bua {
    /// An UPDATE with SDP on leg `li` while the call is not answered yet.
    pub(super) fn early_update(&mut self, call: &mut Call, inc: Incoming<'_>, li: LegIdx) {
        let tag = call.legs[li].dialog.local_tag.clone();
        let raw = inc.req.body.clone();
        if raw.is_empty() {
            // Nothing offered (a refresh before the answer): nothing to change.
            self.respond(inc, Reply::new(StatusCode::OK).tag(&tag));
            return;
        }
        let Ok(sdp) = Sdp::parse(&raw) else {
            self.respond(inc, Reply::new(StatusCode::NOT_ACCEPTABLE_HERE).tag(&tag));
            return;
        };
        // Our SDP towards this leg: the answer, unchanged (the anchors stay where they are).
        let Some(ours) = self.current_sdp(call, li) else {
            // No offer/answer completed on this leg yet (RFC 3311 §5.1): not now.
            self.respond(
                inc,
                Reply::new(StatusCode::SERVER_INTERNAL_ERROR)
                    .tag(&tag)
                    .header("Retry-After", "1".to_string()),
            );
            return;
        };
        // The caller's side is in every ringing callee's bundle; a callee's in its own.
        let bundles: Vec<Option<BundleId>> = if li == call.a {
            call.legs
                .iter()
                .filter(|l| l.ringing())
                .map(|l| l.media.bundle)
                .collect()
        } else {
            vec![call.legs[li].media.bundle]
        };
        for b in bundles {
            self.learn_remote(call, li, b, &sdp, &raw, true);
        }
        debug!(call = call.key, leg = li, "early UPDATE answered here");
        let contact = call.legs[li].dialog.contact();
        let r = Reply::new(StatusCode::OK)
            .tag(&tag)
            .header("Contact", contact)
            .body(Some(("application/sdp", ours.as_bytes())));
        self.respond(inc, r);
    }
}
