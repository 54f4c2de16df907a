//! Ending a call: BYE to answered legs, CANCEL to ringing ones, the final response to a caller
//! still waiting; then, once nothing is in flight, the CDR and the release of everything the
//! call held.

use super::call::{Call, CallKey, EndReason, HangupBy, Phase};
use super::leg::{CdrRole, LegIdx, LegState};
use super::timers::TimerKind;
use super::B2bua;
use crate::cdr::{Cdr, CdrLeg, Disposition, MediaCounters};
use crate::util::rfc3339;
use crate::{Caller, Output};
use podpbx_sip::StatusCode;
use std::time::Instant;
use tracing::info;

impl B2bua {
    /// Ends every call (graceful stop): BYE to answered calls, 503 to callers still waiting,
    /// CANCEL to ringing callees. The CDRs follow once their transactions are done (or after
    /// 64*T1).
    pub fn shutdown(&mut self, now: Instant) {
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            self.with_call(key, now, |this, call| {
                this.end_call(call, now, HangupBy::System, EndReason::Shutdown, None)
            });
        }
    }

    /// Ends the call: BYE every answered leg except `except`, CANCEL ringing ones, and a final
    /// response (487, or 503 at shutdown) to a caller still waiting.
    pub(super) fn end_call(
        &mut self,
        call: &mut Call,
        now: Instant,
        by: HangupBy,
        reason: EndReason,
        except: Option<LegIdx>,
    ) {
        if call.is_ending() {
            return;
        }
        info!(
            call = call.key,
            by = by.as_str(),
            reason = reason.as_str(),
            "call ends"
        );
        self.stop_endpoint(call);
        call.phase = Phase::Ending;
        let shutdown = reason == EndReason::Shutdown;
        if call.legs[call.a].uas_invite().is_some() {
            let status = if shutdown {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::REQUEST_TERMINATED
            };
            self.final_to_a(call, status, None);
        }
        // Our re-INVITEs that joined two legs are moot now (their 2xx still gets its ACK).
        call.reanchor = None;
        for li in 0..call.legs.len() {
            if Some(li) == except {
                continue;
            }
            // A device's INVITE with Replaces still waiting for the join.
            if li != call.a && call.legs[li].uas_invite().is_some() {
                self.final_to_uas(call, li, StatusCode::REQUEST_TERMINATED, None);
                continue;
            }
            if call.legs[li].ringing() {
                self.send_cancel(call, li, now);
            } else if call.legs[li].answered() {
                self.send_bye(call, li);
            }
        }
        let r = &mut call.record;
        if r.disposition.is_none() {
            r.disposition = Some(if r.answered_at.is_some() {
                Disposition::Answered
            } else if shutdown {
                Disposition::Failed
            } else {
                Disposition::Cancelled
            });
        }
        r.hangup_by = Some(by);
        r.reason = Some(reason.as_str());
        self.enter_ending(call, now);
    }

    /// The call is over: wait (at most 64*T1) for the transactions in flight, then finish.
    pub(super) fn enter_ending(&mut self, call: &mut Call, now: Instant) {
        call.phase = Phase::Ending;
        call.record.ended_at = Some(now);
        self.arm(
            now + self.settings.timers.t1.saturating_mul(64),
            call.key,
            TimerKind::Cleanup,
        );
    }

    /// The CDR of a call (media counters read from the relay before its sessions go).
    fn cdr(&self, call: &Call, now: Instant) -> Cdr {
        let rec = &call.record;
        let end = rec.ended_at.unwrap_or(now);
        let wall = |t: Instant| call.wall0 + t.saturating_duration_since(call.start);
        let mut legs = Vec::new();
        for l in &call.legs {
            // The caller's leg of an unanswered call: the media of any bundle that has some.
            let bundle = l
                .media
                .bundle
                .map(|b| b.0)
                .or_else(|| call.bundles.iter().position(|b| !b.ids.is_empty()));
            let mut m = MediaCounters::default();
            if let Some(b) = bundle.and_then(|b| call.bundles.get(b)) {
                for id in b.ids.iter().flatten() {
                    let s = self.media.stats(*id, l.media.side);
                    m.rtp_packets += s.rtp_packets;
                    m.rtp_bytes += s.rtp_bytes;
                    m.rtcp_packets += s.rtcp_packets;
                    m.forwarded_packets += s.forwarded_packets;
                    m.lost_packets += s.lost_packets;
                    m.ssrc_flaps += s.ssrc_flaps;
                    m.jitter_ms = m.jitter_ms.max(s.jitter.as_millis() as u64);
                    if m.local.is_none() {
                        m.local = self.media.local(*id, l.media.side).map(|a| a.to_string());
                    }
                }
            }
            let lost_fork = matches!(l.state, LegState::Uac(_))
                && Some(l.party.name()) != rec.answered_by.as_deref()
                && l.cdr_role == CdrRole::Callee;
            let role = if lost_fork {
                "fork"
            } else {
                l.cdr_role.as_str()
            };
            legs.push(CdrLeg {
                role,
                party: Some(l.party.name().to_string()),
                remote: l.dialog.peer.addr.to_string(),
                local: l.dialog.local.to_string(),
                transport: l.dialog.peer.transport.param(),
                call_id: l.dialog.call_id.clone(),
                status: l.status.map_or(0, |s| s.code()),
                media: m,
            });
        }
        let caller = match &call.caller {
            Caller::User(u) => u.clone(),
            Caller::Trunk { .. } => call.from_id.1.clone(),
        };
        let disposition = rec.disposition.unwrap_or(Disposition::Failed);
        Cdr {
            id: call.key,
            start: rfc3339(call.wall0),
            answer: rec.answered_at.map(|t| rfc3339(wall(t))),
            end: rfc3339(wall(end)),
            duration_secs: end.saturating_duration_since(call.start).as_secs_f64(),
            billsec: rec
                .answered_at
                .map_or(0.0, |a| end.saturating_duration_since(a).as_secs_f64()),
            caller,
            trunk: match &call.caller {
                Caller::Trunk { name, .. } => Some(name.clone()),
                _ => None,
            },
            callee: match &rec.transferred_to {
                Some(_) => call
                    .legs
                    .iter()
                    .find(|l| l.cdr_role == CdrRole::Callee)
                    .map(|_| call.number.clone())
                    .unwrap_or_default(),
                None => call.number.clone(),
            },
            answered_by: rec.answered_by.clone(),
            rule: rec.rule.clone(),
            disposition,
            status: rec.a_status.map_or(487, |s| s.code()),
            hangup_by: rec.hangup_by.map(|b| b.as_str().to_string()),
            reason: rec.reason.unwrap_or(disposition.as_str()).to_string(),
            transferred_to: rec.transferred_to.clone(),
            legs,
        }
    }

    /// Emits the CDR, releases the call's media, abandons its client transactions and forgets
    /// it.
    pub(super) fn finish(&mut self, call: &mut Call, now: Instant) {
        let cdr = self.cdr(call, now);
        for bi in 0..call.bundles.len() {
            self.release_bundle(call, bi);
        }
        let key = call.key;
        // Only this call's own entries (see `Owned`): never a pass over every call's.
        let owned = self.owned.remove(&key).unwrap_or_default();
        for id in owned.reqs {
            if self.by_req.get(&id).is_some_and(|p| p.call == key) {
                if let Some(p) = self.by_req.remove(&id) {
                    if !p.done {
                        self.out.push_back(Output::Abandon { id });
                    }
                }
            }
        }
        for leg in &call.legs {
            let dialog = leg.dialog.key();
            if self.by_dialog.get(&dialog).is_some_and(|(k, _)| *k == key) {
                self.by_dialog.remove(&dialog);
            }
        }
        for tx in owned.invite_txs {
            if self.by_invite_tx.get(&tx) == Some(&key) {
                self.by_invite_tx.remove(&tx);
            }
        }
        for t in owned.timers {
            if self.timers.get(&t).is_some_and(|(k, _)| *k == key) {
                self.timers.remove(&t);
            }
        }
        info!(
            call = key,
            disposition = cdr.disposition.as_str(),
            "call finished"
        );
        self.out.push_back(Output::Cdr(Box::new(cdr)));
    }
}
