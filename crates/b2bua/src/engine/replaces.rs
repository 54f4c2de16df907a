//! A new INVITE with `Replaces` (RFC 3891) from a phone: it takes the place of the dialog the
//! header names, which podpbx finds by Call-ID and its own tag (`to-tag`, RFC 3891 §3) — the
//! identifiers BLF dialog-info gives a watcher (`presence`).
//!
//! * A ringing leg towards a local user (an early dialog podpbx initiated): a pickup, as the
//!   pickup code does it (`pickup`), with the same rules (`features.pickup` set, not one's own
//!   call, the caller still waiting).
//! * An answered leg of the same user: another of the user's devices takes the call over; the
//!   remaining party gets the new device's media by re-INVITE (`reanchor`), the device our 2xx
//!   with its answer, the old device a BYE. A refusal leaves the call as it was.
//!
//! Only a user authenticated by digest may replace anything: a device known by its source
//! address alone (which a forged UDP packet can claim) and a trunk get `403`. Otherwise
//! (RFC 3891 §3): no such dialog, or an early dialog podpbx did not initiate, `481`;
//! `early-only` on an answered dialog `486`; an offer in progress `491`; an INVITE without an
//! offer `488`.

use super::call::{Call, Failure};
use super::leg::{LegState, Party, UacState};
use super::reanchor::Next;
use super::B2bua;
use crate::cdr::Disposition;
use crate::Caller;
use podpbx_sip::replaces::Replaces;
use podpbx_sip::StatusCode;
use std::time::Instant;
use tracing::info;

/// Why an INVITE with `Replaces` replaces nothing.
fn refused(status: StatusCode, reason: &'static str) -> Failure {
    Failure {
        status,
        reason: Some(reason.to_string()),
        disposition: Disposition::Rejected,
    }
}

impl B2bua {
    /// Call `pc` (just built from an INVITE with `Replaces` `r`; `device`: its caller is known
    /// by source address only) replaces the dialog `r` names. `Ok(true)`: `pc`'s leg moved into
    /// another call (`pc` is dropped); `Ok(false)`: `pc` goes on (never, today); `Err`: the
    /// refusal for the INVITE.
    pub(super) fn invite_replaces(
        &mut self,
        pc: &mut Call,
        now: Instant,
        r: &Replaces,
        device: bool,
    ) -> Result<bool, Failure> {
        let Caller::User(user) = pc.caller.clone() else {
            return Err(refused(StatusCode::FORBIDDEN, "Replaces Not Allowed"));
        };
        if device {
            info!(%user, "INVITE with Replaces from a device known by its address only: 403");
            return Err(refused(
                StatusCode::FORBIDDEN,
                "Replaces Needs Authentication",
            ));
        }
        let Some((key, l)) = self.replaced_dialog(pc, r) else {
            info!(%user, call_id = %r.call_id, "INVITE with Replaces: no such dialog: 481");
            return Err(refused(
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                "Replaced Dialog Does Not Exist",
            ));
        };
        let Some(c) = self.calls.get(&key) else {
            return Err(refused(
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                "Replaced Dialog Does Not Exist",
            ));
        };
        let leg = &c.legs[l];
        let Party::User(owner) = leg.party.clone() else {
            return Err(refused(StatusCode::FORBIDDEN, "Not A Local Dialog"));
        };
        // An early dialog podpbx initiated: a phone ringing. Picking it up.
        if matches!(leg.state, LegState::Uac(UacState::Early(_))) {
            if self.cfg.features.pickup.is_empty() || !Self::pickable(c, &user) {
                return Err(refused(StatusCode::FORBIDDEN, "Pickup Not Allowed"));
            }
            info!(%user, ringing = %owner, call = key, "pickup by INVITE with Replaces");
            if self.pickup_call(pc, now, &user, key) {
                return Ok(true);
            }
            return Err(refused(
                StatusCode::TEMPORARILY_UNAVAILABLE,
                "Nothing To Pick Up",
            ));
        }
        if !leg.answered() {
            return Err(refused(
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                "Early Dialog Not Initiated Here",
            ));
        }
        if r.early_only {
            return Err(refused(StatusCode::BUSY_HERE, "Dialog Already Answered"));
        }
        if owner != user {
            info!(%user, %owner, "INVITE with Replaces for another user's call: 403");
            return Err(refused(StatusCode::FORBIDDEN, "Not Your Call"));
        }
        let Some(remaining) = c.partner(l) else {
            return Err(refused(
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                "Dialog Not Connected",
            ));
        };
        if c.offer_pending() {
            return Err(refused(StatusCode::REQUEST_PENDING, "Offer Pending"));
        }
        let Some(offer) = pc.offer.clone() else {
            return Err(refused(StatusCode::NOT_ACCEPTABLE_HERE, "Offer Required"));
        };
        let Some(mut c) = self.calls.remove(&key) else {
            return Err(refused(
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                "Replaced Dialog Does Not Exist",
            ));
        };
        info!(%user, call = key, "INVITE with Replaces: the call moves to another device");
        let p = self.move_leg(pc, pc.a, &mut c);
        c.legs[p].cdr_role = c.legs[l].cdr_role;
        let before = Box::new(c.legs[remaining].media.clone());
        let old = self.rebundle(&mut c, remaining, p);
        let next = Next::AnswerInvite {
            replaced: l,
            before: before.clone(),
        };
        if !self.start_reanchor(&mut c, remaining, p, &offer, next, old) {
            // The device's offer cannot go to the remaining party: nothing changes.
            if let Some(b) = c.legs[p].media.bundle {
                self.release_bundle(&mut c, b.0);
            }
            c.legs[remaining].media = *before;
            self.final_to_uas(&mut c, p, StatusCode::NOT_ACCEPTABLE_HERE, None);
        }
        self.put_back(c, now);
        Ok(true)
    }
}
