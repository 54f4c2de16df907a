//! Calls podpbx answers itself: the dialplan's `voicemail` step, listening to one's mailbox,
//! a feature code's confirmation. The caller's INVITE gets our 2xx with an SDP answer that
//! points at podpbx's media endpoint (G.711 in the caller's order of preference, its
//! telephone-event for digits); the RTP goes there directly, not through the relay. The call
//! is in [`Phase::Endpoint`] until either side hangs up.

use super::call::{Call, EndReason, HangupBy, Phase};
use super::B2bua;
use crate::{App, EndpointId, EndpointPort, Family};
use podpbx_sdp::Sdp;
use std::time::Instant;
use tracing::{debug, info};

impl B2bua {
    /// Where calls answered by podpbx itself get their media (default: none, such steps
    /// fail over to the next one).
    pub fn set_endpoint(&mut self, endpoint: Box<dyn EndpointPort + Send>) {
        self.endpoint = endpoint;
    }

    /// Answers the waiting caller with the media endpoint running `app`. False when that is
    /// impossible (no offer, no G.711 in it, every session busy): the caller's routing goes on.
    pub(super) fn start_endpoint(&mut self, call: &mut Call, now: Instant, app: App) -> bool {
        let Some(offer) = call.offer.as_ref().and_then(|o| Sdp::parse(o).ok()) else {
            debug!(
                call = call.key,
                "no SDP offer: the media endpoint cannot answer"
            );
            return false;
        };
        let Some(m) = offer
            .media()
            .iter()
            .find(|m| m.media == "audio" && !m.rejected())
        else {
            return false;
        };
        let (Some(codec), Some(remote)) = (podpbx_voicemail::rtp::choose_codec(m), m.rtp_addr())
        else {
            debug!(
                call = call.key,
                "no PCMU/PCMA in the offer: the media endpoint cannot answer"
            );
            return false;
        };
        let family = if remote.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let (id, local) = match self.endpoint.open(family) {
            Ok(x) => x,
            Err(e) => {
                info!(call = call.key, error = %e, "media endpoint unavailable");
                return false;
            }
        };
        // Nobody else rings any more.
        for li in 0..call.legs.len() {
            if li != call.a && call.legs[li].ringing() {
                self.send_cancel(call, li, now);
            }
        }
        let origin = self.origin_id();
        let answer = podpbx_voicemail::rtp::answer_sdp(local, &codec, origin);
        if !self.accept_caller(call, now, Some(&answer)) {
            self.endpoint.stop(id);
            return false;
        }
        let by = match &app {
            App::Deposit { mailbox, .. } => format!("voicemail:{mailbox}"),
            App::Retrieve { mailbox, .. } => format!("voicemail-box:{mailbox}"),
            App::Announce(_) => "feature".to_string(),
        };
        info!(call = call.key, by = %by, %remote, law = codec.law.name(), "answered by podpbx");
        call.phase = Phase::Endpoint(id);
        call.record.answered_at = Some(now);
        call.record.answered_by = Some(by);
        self.by_endpoint.insert(id, call.key);
        self.endpoint.start(id, remote, codec, app);
        true
    }

    /// The media endpoint finished session `id` (its last prompt played): BYE to the caller.
    pub fn endpoint_done(&mut self, now: Instant, id: EndpointId) {
        let Some(key) = self.by_endpoint.remove(&id) else {
            return;
        };
        self.with_call(key, now, |this, call| {
            this.end_call(call, now, HangupBy::Callee, EndReason::Bye, None)
        });
    }

    /// The call ends: its endpoint session stops (called by `end_call`).
    pub(super) fn stop_endpoint(&mut self, call: &Call) {
        if let Phase::Endpoint(id) = call.phase {
            self.by_endpoint.remove(&id);
            self.endpoint.stop(id);
        }
    }
}

impl B2bua {
    /// The dialplan's `voicemail` step: the caller leaves a message in `mailbox` (default: the
    /// dialled number's).
    pub(super) fn voicemail_step(
        &mut self,
        call: &mut Call,
        now: Instant,
        mailbox: Option<String>,
    ) -> bool {
        let Some(mailbox) =
            mailbox.or_else(|| self.cfg.mailbox(&call.number).map(|u| u.name.clone()))
        else {
            debug!(call = call.key, number = %call.number, "voicemail step: no mailbox for this number");
            return false;
        };
        let (name, user) = (call.from_id.0.clone(), call.from_id.1.clone());
        let app = App::Deposit {
            mailbox,
            caller: user,
            caller_name: Some(name).filter(|n| !n.is_empty()),
        };
        self.start_endpoint(call, now, app)
    }
}
