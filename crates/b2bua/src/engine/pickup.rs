//! Directed call pickup (`features.pickup`, `**<extension>` by default, what a BLF key dials):
//! a local user answers a call that rings at another extension. The picker's INVITE joins the
//! ringing call as its answering leg: the other forks are cancelled, the picker gets our 2xx
//! with the caller's offer (anchored at the relay) and the caller our 2xx with the picker's
//! offer as the answer (both sides speak what they both offered: the phones of one home).

use super::call::{Call, CallKey, Purpose};
use super::leg::{CdrRole, LegMedia};
use super::timers::TimerKind;
use super::B2bua;
use crate::{Caller, Family, MediaLeg};
use podpbx_sdp::Sdp;
use std::time::Instant;
use tracing::info;

fn sdp_family(raw: &[u8]) -> Option<Family> {
    let sdp = Sdp::parse(raw).ok()?;
    let ip = sdp.media().iter().find(|m| !m.rejected())?.rtp_addr()?.ip();
    Some(Family::of(ip))
}

impl B2bua {
    /// Whether `picker` may take call `c` by a pickup: routing for its caller (not a
    /// transfer, not the picker's own call), with an SDP offer, the caller still waiting.
    pub(super) fn pickable(c: &Call, picker: &str) -> bool {
        matches!(c.routing().map(|r| &r.purpose), Some(Purpose::Initial))
            && c.offer.is_some()
            && c.legs[c.a].uas_invite().is_some()
            && !matches!(&c.caller, Caller::User(u) if u == picker)
    }

    /// The call ringing at `ext` that `picker` may take ([`B2bua::pickable`], `ext` rung and
    /// not cancelled).
    fn ringing_at(&self, ext: &str, picker: &str) -> Option<CallKey> {
        let mut keys: Vec<CallKey> = self
            .calls
            .values()
            .filter(|c| {
                Self::pickable(c, picker)
                    && c.legs
                        .iter()
                        .any(|l| l.party.user() == Some(ext) && l.ringing_uncancelled())
            })
            .map(|c| c.key)
            .collect();
        // The longest ringing first.
        keys.sort();
        keys.first().copied()
    }

    /// `picker`'s call (`pc`, just created from its INVITE) takes the call ringing at `ext`.
    /// True if it did: `pc`'s leg now belongs to that call and `pc` must be dropped.
    pub(super) fn pickup(&mut self, pc: &mut Call, now: Instant, picker: &str, ext: &str) -> bool {
        let Some(key) = self.ringing_at(ext, picker) else {
            info!(%picker, %ext, "pickup: nothing rings there");
            return false;
        };
        self.pickup_call(pc, now, picker, key)
    }

    /// `picker`'s call `pc` takes call `key` (one [`B2bua::pickable`] by it): the picker
    /// answers it (by a feature code, or by an INVITE with `Replaces` naming a ringing leg).
    /// True if it did: `pc`'s leg now belongs to that call and `pc` must be dropped.
    pub(super) fn pickup_call(
        &mut self,
        pc: &mut Call,
        now: Instant,
        picker: &str,
        key: CallKey,
    ) -> bool {
        let Some(p_offer) = pc.offer.clone().filter(|o| Sdp::parse(o).is_ok()) else {
            info!(%picker, "pickup: the picker's INVITE has no usable SDP offer");
            return false;
        };
        let Some(mut c) = self.calls.remove(&key) else {
            return false;
        };
        let a = c.a;
        let a_offer = c.offer.clone().unwrap_or_default();
        let a_family = self.caller_media_family(&c);
        let p_family = sdp_family(&p_offer).unwrap_or_else(|| pc.legs[pc.a].dialog.family());
        let bundle = self.bundle_for(&mut c, a_family, p_family);
        // The picker's leg moves into the ringing call.
        let p = self.move_leg(pc, pc.a, &mut c);
        c.legs[p].cdr_role = CdrRole::Callee;
        c.legs[p].media = LegMedia::new(MediaLeg::B, Some(bundle), self.origin_id());
        // Every fork stops ringing.
        for li in 0..c.legs.len() {
            if li != a && li != p && c.legs[li].ringing() {
                self.send_cancel(&mut c, li, now);
            }
        }
        c.legs[a].media.bundle = Some(bundle);
        for other in 0..c.bundles.len() {
            if other != bundle.0 {
                self.release_bundle(&mut c, other);
            }
        }
        let to_p = self.relay_sdp(&mut c, a, p, &a_offer, true);
        let to_a = self.relay_sdp(&mut c, p, a, &p_offer, false);
        let (Ok(to_p), Ok(to_a)) = (to_p, to_a) else {
            info!(call = key, %picker, "pickup: SDP not usable, the call ends");
            self.end_call(
                &mut c,
                now,
                super::call::HangupBy::System,
                super::call::EndReason::Internal,
                None,
            );
            self.put_back(c, now);
            return true;
        };
        self.accept_uas(&mut c, now, p, Some(&to_p));
        self.accept_caller(&mut c, now, Some(&to_a));
        c.bridge(a, p);
        c.record.answered_at = Some(now);
        c.record.answered_by = Some(picker.to_string());
        info!(call = key, %picker, "call picked up");
        if let Some(max) = self.cfg.calls.max_duration.filter(|d| !d.is_zero()) {
            self.arm(now + max, key, TimerKind::MaxDuration);
        }
        self.put_back(c, now);
        true
    }
}
