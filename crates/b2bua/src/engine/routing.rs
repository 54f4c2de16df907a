//! Dialplan execution: a rule's action, then its fallbacks, one step at a time; the failure
//! the caller hears when every step failed; ring timeouts.

use super::call::{Call, EndReason, Failure, HangupBy, Phase, Purpose, TrunkFailover};
use super::fork::RingStep;
use super::leg::{LegIdx, Party};
use super::timers::TimerKind;
use super::trunk::TrunkStep;
use super::B2bua;
use crate::cdr::Disposition;
use crate::{Caller, Directory};
use podpbx_config::{Action, RingStrategy};
use podpbx_sip::StatusCode;
use std::time::Instant;
use tracing::{debug, info, warn};

/// The CDR disposition of a callee's final status.
pub(crate) fn disposition_for(code: StatusCode) -> Disposition {
    match code.code() {
        486 | 600 => Disposition::Busy,
        480 | 408 => Disposition::NoAnswer,
        487 => Disposition::Cancelled,
        500..=599 => Disposition::Failed,
        _ => Disposition::Rejected,
    }
}

/// What the caller hears when every leg of a step failed: `code` is the last leg's status,
/// `codes` every leg's.
pub(crate) fn step_failure(
    trunk: bool,
    code: StatusCode,
    codes: &[StatusCode],
    timed_out: bool,
) -> Failure {
    let busy = |c: &StatusCode| matches!(c.code(), 486 | 600);
    if trunk {
        // A provider's trouble is ours to hide: no credentials accepted, no answer, or its
        // server failed.
        match code.code() {
            401 | 407 | 408 | 500..=599 => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, Disposition::Failed)
            }
            _ => Failure::new(code, disposition_for(code)),
        }
    } else if !codes.is_empty() && codes.iter().all(busy) {
        Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
    } else if timed_out {
        Failure::no_answer()
    } else if let Some(c) = codes.iter().find(|c| c.is_global_failure()) {
        Failure::new(*c, disposition_for(*c))
    } else if codes.iter().any(busy) {
        Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
    } else {
        Failure::no_answer()
    }
}

impl B2bua {
    /// Starts the next dialplan step of the call's routing, or fails the routing.
    pub(super) fn next_step(&mut self, call: &mut Call, now: Instant, dir: &dyn Directory) {
        loop {
            // The step that just failed may forward (busy / no answer of one user).
            if let Some(started) = self.forward_after_failure(call, now, dir) {
                if started {
                    return;
                }
            }
            let Some(r) = call.routing_mut() else {
                return;
            };
            r.fwd.forward_on = None;
            r.gen += 1;
            r.legs.clear();
            r.codes.clear();
            r.timed_out = false;
            r.seq.clear();
            r.failover = None;
            let Some(action) = r.steps.pop_front() else {
                let f = r.last_failure.clone();
                self.routing_failed(call, now, f);
                return;
            };
            // Nobody rings themselves: the caller (or the transfer's keeper) is skipped.
            let exclude = match &call.routing().map(|r| &r.purpose) {
                Some(Purpose::Transfer { keeper, .. }) => {
                    Some(call.legs[*keeper].party.name().to_string())
                }
                _ => match &call.caller {
                    Caller::User(u) => Some(u.clone()),
                    Caller::Trunk { .. } => None,
                },
            };
            let started = match action {
                Action::Reject { status, reason } => {
                    let status = StatusCode::new(status).unwrap_or(StatusCode::FORBIDDEN);
                    let f = Failure {
                        status,
                        reason,
                        disposition: Disposition::Rejected,
                    };
                    self.routing_failed(call, now, f);
                    return;
                }
                Action::Trunk { .. } if !call.routing().is_some_and(|r| r.trunks_allowed) => {
                    // Toll fraud by a forged source: the step is skipped (the next fallback
                    // runs), and if nothing else is left the caller gets 403.
                    self.security.trunk_refused += 1;
                    warn!(
                        target: "podpbx::security",
                        call = call.key,
                        caller = ?call.caller,
                        number = %call.number,
                        "trunk step refused: the call's source is proven only by its address and the rule does not allow it explicitly"
                    );
                    if let Some(r) = call.routing_mut() {
                        r.last_failure = Failure::new(StatusCode::FORBIDDEN, Disposition::Rejected);
                    }
                    false
                }
                Action::Trunk {
                    trunks,
                    strip,
                    prepend,
                    caller_id,
                } => {
                    if let Some(r) = call.routing_mut() {
                        r.failover = Some(Box::new(TrunkFailover {
                            rest: trunks.into(),
                            strip,
                            prepend,
                            caller_id,
                        }));
                    }
                    self.next_trunk(call, now, dir)
                }
                Action::Local { timeout } => {
                    let number = call.number.clone();
                    if self.cfg.user(&number).is_some() {
                        let step = RingStep {
                            users: vec![number],
                            mode: RingStrategy::Parallel,
                            timeout,
                            exclude,
                        };
                        self.ring_with_features(call, now, dir, step)
                    } else if let Some(g) = self.cfg.group(&number).cloned() {
                        let timeout = if g.strategy == RingStrategy::Sequential {
                            g.ring_timeout
                        } else {
                            timeout
                        };
                        let step = RingStep {
                            users: g.members.clone(),
                            mode: g.strategy,
                            timeout,
                            exclude,
                        };
                        self.ring_with_features(call, now, dir, step)
                    } else {
                        if let Some(r) = call.routing_mut() {
                            r.last_failure =
                                Failure::new(StatusCode::NOT_FOUND, Disposition::Rejected);
                        }
                        false
                    }
                }
                Action::Voicemail { mailbox } => self.voicemail_step(call, now, mailbox),
                Action::Ring {
                    targets,
                    mode,
                    timeout,
                } => {
                    let step = RingStep {
                        users: self.expand(&targets),
                        mode,
                        timeout,
                        exclude,
                    };
                    self.ring_with_features(call, now, dir, step)
                }
            };
            if started {
                return;
            }
        }
    }

    /// Nobody could be reached: the caller (or the transferor) learns why.
    pub(super) fn routing_failed(&mut self, call: &mut Call, now: Instant, f: Failure) {
        let Some(r) = call.routing() else { return };
        let (legs, purpose) = (r.legs.clone(), r.purpose.clone());
        for li in legs {
            self.send_cancel(call, li, now);
        }
        let d = f.disposition;
        match purpose {
            Purpose::Initial => {
                info!(call = call.key, code = f.status.code(), "call failed");
                self.final_to_a(call, f.status, f.reason.as_deref());
                call.record.disposition = Some(d);
                call.record.reason = Some(if d == Disposition::Rejected {
                    "rejected"
                } else {
                    d.as_str()
                });
                self.enter_ending(call, now);
            }
            Purpose::Transfer {
                keeper,
                transferor,
                first_bundle,
            } => {
                info!(call = call.key, code = f.status.code(), "transfer failed");
                for bi in first_bundle..call.bundles.len() {
                    self.release_bundle(call, bi);
                }
                if call.legs[transferor].active() {
                    self.notify_refer(call, transferor, f.status, f.reason.as_deref(), true);
                    call.bridge(keeper, transferor);
                } else {
                    self.end_call(call, now, HangupBy::System, EndReason::TransferFailed, None);
                }
            }
        }
    }

    /// A leg of the current step failed finally with `code`: when it was the last one
    /// ringing, the next user (sequential) or the next step.
    pub(super) fn step_leg_done(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        li: LegIdx,
        code: StatusCode,
    ) {
        let Phase::Routing(r) = &mut call.phase else {
            return;
        };
        if call.legs[li].step_gen != r.gen || !r.legs.contains(&li) {
            return;
        }
        r.codes.push(code);
        if r.legs.iter().any(|l| call.legs[*l].ringing_uncancelled()) {
            return;
        }
        // Sequential: try the next user.
        if !r.seq.is_empty() {
            r.legs.clear();
            if self.ring_next_seq(call, now, dir) {
                return;
            }
        }
        let Phase::Routing(r) = &mut call.phase else {
            return;
        };
        let trunk = call.legs[li].party.is_trunk();
        r.last_failure = step_failure(trunk, code, &r.codes, r.timed_out);
        // A trunk that failed in a way the next one may not: try the next of the step.
        if let Party::Trunk(name) = &call.legs[li].party {
            let moves_on = code == StatusCode::REQUEST_TIMEOUT
                || self
                    .cfg
                    .trunk(name)
                    .is_some_and(|t| t.failover_statuses.contains(&code.code()));
            let more = r.failover.as_ref().is_some_and(|f| !f.rest.is_empty());
            if moves_on && more && !r.timed_out {
                info!(call = call.key, trunk = %name, code = code.code(), "trunk failed: trying the next one");
                if self.next_trunk(call, now, dir) {
                    return;
                }
            }
        }
        self.next_step(call, now, dir);
    }

    /// Starts the next trunk of the current trunk step that is usable (unavailable ones are
    /// skipped); false when none is left.
    fn next_trunk(&mut self, call: &mut Call, now: Instant, dir: &dyn Directory) -> bool {
        loop {
            let Some(f) = call.routing_mut().and_then(|r| r.failover.as_mut()) else {
                return false;
            };
            let Some(name) = f.rest.pop_front() else {
                return false;
            };
            let (strip, prepend, caller_id) = (f.strip, f.prepend.clone(), f.caller_id.clone());
            let step = TrunkStep {
                name: &name,
                strip,
                prepend: &prepend,
                caller_id: caller_id.as_deref(),
                number: None,
            };
            if self.start_trunk(call, now, dir, &step) {
                return true;
            }
        }
    }

    /// The ring timer of step `gen` fired: CANCEL its legs, then the next user or step.
    pub(super) fn ring_timeout(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        gen: u32,
    ) {
        let Some(r) = call.routing_mut() else {
            return;
        };
        if r.gen != gen {
            return;
        }
        r.timed_out = true;
        let legs = r.legs.clone();
        debug!(call = call.key, "ring timeout");
        for li in &legs {
            self.send_cancel(call, *li, now);
        }
        let Some(r) = call.routing_mut() else {
            return;
        };
        if !r.seq.is_empty() {
            r.legs.clear();
            if self.ring_next_seq(call, now, dir) {
                return;
            }
        }
        if let Some(r) = call.routing_mut() {
            r.last_failure = Failure::no_answer();
        }
        self.next_step(call, now, dir);
    }

    /// Arms the ring timer of the current step.
    pub(super) fn arm_ring(&mut self, call: &Call, at: Instant) {
        let gen = call.routing().map_or(0, |r| r.gen);
        self.arm(at, call.key, TimerKind::Ring(gen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(c: u16) -> StatusCode {
        match StatusCode::new(c) {
            Some(s) => s,
            None => panic!(),
        }
    }

    #[test]
    fn failure_mapping_of_a_step() {
        let f = |trunk, code, codes: &[u16], t| {
            let codes: Vec<StatusCode> = codes.iter().map(|c| s(*c)).collect();
            let r = step_failure(trunk, s(code), &codes, t);
            (r.status.code(), r.disposition)
        };
        // Every fork busy -> 486 busy; some busy, others no answer -> 486 unless timed out.
        assert_eq!(f(false, 486, &[486, 600], false), (486, Disposition::Busy));
        assert_eq!(f(false, 480, &[486, 480], false), (486, Disposition::Busy));
        assert_eq!(
            f(false, 486, &[486, 487], true),
            (480, Disposition::NoAnswer)
        );
        // A 6xx wins over 4xx; decline is a rejection.
        assert_eq!(
            f(false, 404, &[603, 404], false),
            (603, Disposition::Rejected)
        );
        assert_eq!(
            f(false, 404, &[404, 500], false),
            (480, Disposition::NoAnswer)
        );
        assert_eq!(f(false, 487, &[], true), (480, Disposition::NoAnswer));
        // Trunk: its final status goes to the caller, except auth failure, timeout and 5xx.
        assert_eq!(f(true, 486, &[486], false), (486, Disposition::Busy));
        assert_eq!(f(true, 404, &[404], false), (404, Disposition::Rejected));
        assert_eq!(f(true, 484, &[484], false), (484, Disposition::Rejected));
        for c in [401, 407, 408, 500, 502, 503, 504] {
            assert_eq!(f(true, c, &[c], false), (503, Disposition::Failed), "{c}");
        }
        assert_eq!(f(true, 480, &[480], false), (480, Disposition::NoAnswer));
        assert_eq!(f(true, 487, &[487], false), (487, Disposition::Cancelled));
    }
}
