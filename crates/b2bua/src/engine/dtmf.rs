//! DTMF interworking: SIP INFO (`application/dtmf-relay`, `application/dtmf`) from one party
//! becomes RFC 4733 towards a party that wants events; RFC 4733 events seen by the relay become
//! INFO towards a party that wants INFO (one at a time per dialog, in order).

use super::call::{Bridge, Call, Phase};
use super::leg::LegIdx;
use super::send::ReqKind;
use super::B2bua;
use crate::util::parse_dtmf_info;
use crate::{MediaId, MediaLeg};
use podpbx_sip::{Message, Method};
use std::time::{Duration, Instant};
use tracing::debug;

/// DTMF digits waiting for their INFO per dialog (one INFO outstanding at a time).
const MAX_DTMF_QUEUE: usize = 32;

impl B2bua {
    /// INFO carrying a DTMF digit: injected as RFC 4733 towards `partner` when that party wants
    /// RFC 4733. True if consumed (the INFO is then answered here, not relayed).
    pub(super) fn info_dtmf(
        &mut self,
        call: &mut Call,
        partner: Option<LegIdx>,
        req: &Message,
    ) -> bool {
        let Some(p) = partner else { return false };
        let Some(ct) = req.content_type() else {
            return false;
        };
        let Some((digit, ms)) = parse_dtmf_info(&ct, &req.body) else {
            return false;
        };
        if !call.legs[p].wants_rfc4733() {
            return false;
        }
        let side = call.legs[p].media.side;
        let Some(id) = call
            .bundle(call.legs[p].media.bundle)
            .and_then(|b| b.ids.iter().flatten().next().copied())
        else {
            return false;
        };
        let ok = self
            .media
            .inject_dtmf(id, side, digit, Duration::from_millis(ms));
        debug!(call = call.key, %digit, ok, "INFO DTMF -> RFC 4733");
        ok
    }

    /// The relay saw the end of an RFC 4733 event (`digit`, `duration`) sent by the peer of
    /// relay leg `leg` of session `media`. The packets were forwarded as they are; when the
    /// other party of the bridged call wants SIP INFO (`dtmf = "info"`, or `auto` and its SDP
    /// has no telephone-event), it also gets an in-dialog INFO (`application/dtmf-relay`,
    /// `Signal=<digit>`, `Duration=<ms>`), one at a time per dialog, in order (at most 32
    /// waiting; more are dropped).
    pub fn media_dtmf(
        &mut self,
        now: Instant,
        media: MediaId,
        leg: MediaLeg,
        digit: char,
        duration: Duration,
    ) {
        let Some(key) = self.by_media.get(&media).copied() else {
            return;
        };
        self.with_call(key, now, |this, call| {
            this.dtmf_to_info(call, media, leg, digit, duration)
        });
    }

    fn dtmf_to_info(
        &mut self,
        call: &mut Call,
        media: MediaId,
        leg: MediaLeg,
        digit: char,
        duration: Duration,
    ) {
        let Phase::Bridged(Bridge { a: x, b: y }) = call.phase else {
            return;
        };
        if !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') {
            return;
        }
        // The receiving party: the bridged leg on the other relay leg of this session.
        let on_session = |i: LegIdx, side: MediaLeg| {
            let l = &call.legs[i];
            l.media.side == side
                && call
                    .bundle(l.media.bundle)
                    .is_some_and(|b| b.ids.contains(&Some(media)))
        };
        let from = [x, y].into_iter().find(|&i| on_session(i, leg));
        let to = [x, y].into_iter().find(|&i| on_session(i, leg.other()));
        let (Some(_), Some(p)) = (from, to) else {
            return;
        };
        let l = &mut call.legs[p];
        if l.wants_rfc4733() || !l.active() {
            return;
        }
        if l.dtmf.queue.len() >= MAX_DTMF_QUEUE {
            debug!(call = call.key, %digit, "DTMF INFO queue full: digit dropped");
            return;
        }
        let ms = (duration.as_millis() as u64).clamp(40, 5000);
        l.dtmf.queue.push_back((digit, ms));
        debug!(call = call.key, %digit, ms, "RFC 4733 -> INFO DTMF");
        self.next_dtmf_info(call, p);
    }

    /// Sends the next queued DTMF INFO on `li` unless one is outstanding or the dialog is not
    /// confirmed yet (a 2xx still waiting for its ACK).
    pub(super) fn next_dtmf_info(&mut self, call: &mut Call, li: LegIdx) {
        let l = &call.legs[li];
        if l.dtmf.outstanding.is_some()
            || !l.confirmed()
            || l.ack_deferred.is_some()
            || l.ok.is_some()
        {
            return;
        }
        let Some((digit, ms)) = call.legs[li].dtmf.queue.pop_front() else {
            return;
        };
        let body = format!("Signal={digit}\r\nDuration={ms}\r\n");
        let id = self.send_in_dialog(
            call,
            li,
            Method::Info,
            &[],
            Some(("application/dtmf-relay", body.as_bytes())),
            ReqKind::DtmfInfo,
        );
        call.legs[li].dtmf.outstanding = Some(id);
    }

    /// Our DTMF INFO on `li` got its final response: the next one may go.
    pub(super) fn dtmf_info_done(&mut self, call: &mut Call, li: LegIdx) {
        call.legs[li].dtmf.outstanding = None;
        self.next_dtmf_info(call, li);
    }

    /// Our DTMF INFO on `li` got no answer: do not queue more INFOs behind a dead one.
    pub(super) fn dtmf_info_failed(&mut self, call: &mut Call, li: LegIdx) {
        call.legs[li].dtmf.outstanding = None;
        call.legs[li].dtmf.queue.clear();
    }
}
