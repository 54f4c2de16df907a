//! Per-user call forwarding and do not disturb (`forward`, `dnd` in `[[users]]`, changed at run
//! time by feature codes and kept across restarts), applied when a dialplan step rings users:
//!
//! * DND: the user is not rung (a group rings its other members); a step that rang only DND
//!   users fails as busy, so the rule's fallback runs.
//! * A step that rings exactly one user: `always` sends the call to the forwarding target
//!   instead; `busy` (its phones answered busy, or DND) and `no_answer` (after `no_answer_secs`,
//!   or when nothing answered) send it there when the step fails that way.
//! * A target is a user or group (rung directly; no further forwarding, so no loops) or a
//!   number, routed by the dialplan as if the forwarding user dialled it: the trunk rules (and
//!   who may use them) apply, and the trunk INVITE carries `Diversion` (RFC 5806) and
//!   `History-Info` (RFC 7044) naming the forwarding user.

use super::call::{Call, Failure};
use super::fork::RingStep;
use super::B2bua;
use crate::cdr::Disposition;
use crate::Directory;
use podpbx_config::{Action, ForwardTarget, Forwarding, Origin, RingStrategy, Target};
use podpbx_sip::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tracing::info;

/// A user's forwarding and DND as in effect now (run-time changes over the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserFeatures {
    /// Do not disturb.
    pub dnd: bool,
    /// Forward every call to this user, group or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    /// Forward when busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// Forward when not answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<String>,
    /// Ring time before `no_answer`.
    pub no_answer_secs: u32,
}

impl UserFeatures {
    fn from_config(dnd: bool, f: &Forwarding) -> UserFeatures {
        let s = |t: &Option<ForwardTarget>| t.as_ref().map(|t| t.as_str().to_string());
        UserFeatures {
            dnd,
            always: s(&f.always),
            busy: s(&f.busy),
            no_answer: s(&f.no_answer),
            no_answer_secs: f.no_answer_secs,
        }
    }
}

/// Which forwarding a feature code sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKind {
    /// Every call.
    Always,
    /// When busy.
    Busy,
    /// When not answered.
    NoAnswer,
}

/// Forwarding armed for the step ringing one user: used if the step fails that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardOn {
    pub user: String,
    pub busy: Option<String>,
    pub no_answer: Option<String>,
}

/// Forwarding state of a routing.
#[derive(Debug, Default)]
pub(crate) struct FwdState {
    /// Forwarding armed for the current step (busy / no answer of one user).
    pub forward_on: Option<ForwardOn>,
    /// The number trunk steps dial instead of the call's (a forwarding to a number).
    pub dial: Option<String>,
    /// The forwarding that led to the trunk steps (their INVITE's `Diversion`).
    pub diversion: Option<Diversion>,
}

/// What a forwarded trunk INVITE says about the forwarding (RFC 5806 / RFC 7044).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diversion {
    pub user: String,
    /// `unconditional`, `user-busy` or `no-answer`.
    pub reason: &'static str,
}

impl Diversion {
    /// The SIP cause of the reason (History-Info, RFC 4458).
    fn cause(&self) -> u16 {
        match self.reason {
            "user-busy" => 486,
            "no-answer" => 408,
            _ => 302,
        }
    }

    /// The `Diversion` and `History-Info` headers of the trunk INVITE to `target` at `host`.
    pub fn headers(&self, domain: &str, target: &str, host: &str) -> Vec<(String, String)> {
        vec![
            (
                "Diversion".into(),
                format!("<sip:{}@{domain}>;reason={};counter=1", self.user, self.reason),
            ),
            (
                "History-Info".into(),
                format!(
                    "<sip:{}@{domain}>;index=1,<sip:{target}@{host}?Reason=SIP%3Bcause%3D{}>;index=1.1;mp=1",
                    self.user,
                    self.cause()
                ),
            ),
        ]
    }
}

impl B2bua {
    /// A user's forwarding and DND now (`None`: no such user).
    pub fn user_features(&self, user: &str) -> Option<UserFeatures> {
        let u = self.cfg.user(user)?;
        Some(
            self.user_state
                .get(user)
                .cloned()
                .unwrap_or_else(|| UserFeatures::from_config(u.dnd, &u.forward)),
        )
    }

    fn update_features(&mut self, user: &str, f: impl FnOnce(&mut UserFeatures)) -> bool {
        let Some(mut cur) = self.user_features(user) else {
            return false;
        };
        f(&mut cur);
        self.user_state.insert(user.to_string(), cur);
        self.state_changed = true;
        true
    }

    /// Do not disturb on or off for `user` (run time); false if there is no such user.
    pub fn set_dnd(&mut self, user: &str, on: bool) -> bool {
        info!(%user, on, "do not disturb");
        self.update_features(user, |f| f.dnd = on)
    }

    /// Sets (or with `None` clears) one forwarding of `user`.
    pub fn set_forward(&mut self, user: &str, kind: ForwardKind, target: Option<String>) -> bool {
        info!(%user, ?kind, target = ?target, "call forwarding");
        self.update_features(user, |f| match kind {
            ForwardKind::Always => f.always = target,
            ForwardKind::Busy => f.busy = target,
            ForwardKind::NoAnswer => f.no_answer = target,
        })
    }

    /// Clears every forwarding of `user`.
    pub fn clear_forwards(&mut self, user: &str) -> bool {
        info!(%user, "call forwarding off");
        self.update_features(user, |f| {
            f.always = None;
            f.busy = None;
            f.no_answer = None;
        })
    }

    /// Whether `target` is somewhere `user` may forward to: another user or group, or a
    /// number the dialplan routes for `user` (so only users allowed to call out may forward
    /// out).
    pub fn forward_allowed(&self, user: &str, target: &str) -> bool {
        if target == user {
            return false;
        }
        match ForwardTarget::parse(target, |n| {
            self.cfg.user(n).is_some() || self.cfg.group(n).is_some()
        }) {
            Some(ForwardTarget::Local(_)) => true,
            Some(ForwardTarget::Number(n)) => {
                let origin = Origin::Local { user };
                self.cfg.route(&origin, &n).is_some_and(|r| {
                    r.steps().any(|a| {
                        matches!(
                            a,
                            Action::Trunk { .. } | Action::Ring { .. } | Action::Local { .. }
                        )
                    })
                })
            }
            None => false,
        }
    }

    /// The run-time state (forwarding, DND, modes) as JSON: for `podpbx ctl features` and the
    /// state file.
    pub fn state_json(&self) -> serde_json::Value {
        let users: serde_json::Map<String, serde_json::Value> = self
            .cfg
            .users
            .iter()
            .filter_map(|u| {
                let f = self.user_features(&u.name)?;
                Some((u.name.clone(), serde_json::to_value(f).ok()?))
            })
            .collect();
        let modes: serde_json::Map<String, serde_json::Value> = self
            .modes()
            .into_iter()
            .map(|(m, on)| (m, serde_json::Value::Bool(on)))
            .collect();
        serde_json::json!({ "users": users, "modes": modes })
    }

    /// What to persist, once after every run-time change: only what was changed at run time
    /// (the configuration stays in charge of the rest).
    pub fn take_state_changed(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.state_changed) {
            return None;
        }
        Some(self.state_bytes())
    }

    /// The run-time state as the state file holds it.
    pub fn state_bytes(&self) -> Vec<u8> {
        let v = serde_json::json!({ "users": self.user_state, "modes": self.modes });
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }

    /// Restores the persisted run-time state (unknown users and modes are dropped).
    pub fn restore_state(&mut self, data: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct State {
            #[serde(default)]
            users: std::collections::HashMap<String, UserFeatures>,
            #[serde(default)]
            modes: std::collections::HashMap<String, bool>,
        }
        let s: State = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        self.user_state = s
            .users
            .into_iter()
            .filter(|(u, _)| self.cfg.user(u).is_some())
            .collect();
        self.modes = s
            .modes
            .into_iter()
            .filter(|(m, _)| self.cfg.mode(m).is_some())
            .collect();
        Ok(())
    }

    /// Rings a step's users with their DND and forwarding applied (see the module doc).
    pub(super) fn ring_with_features(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        mut step: RingStep,
    ) -> bool {
        let single = match step.users.as_slice() {
            [u] if Some(u) != step.exclude.as_ref() => Some(u.clone()),
            _ => None,
        };
        let before = step.users.len();
        step.users
            .retain(|u| !self.user_features(u).is_some_and(|f| f.dnd));
        if let Some(user) = single {
            let f = self.user_features(&user).unwrap_or_default();
            if let Some(t) = f.always.clone() {
                return self.forward(call, now, dir, &user, &t, "unconditional");
            }
            if f.dnd {
                if let Some(t) = f.busy.clone() {
                    return self.forward(call, now, dir, &user, &t, "user-busy");
                }
            }
            if f.busy.is_some() || f.no_answer.is_some() {
                if f.no_answer.is_some() {
                    step.timeout = step
                        .timeout
                        .min(Duration::from_secs(f.no_answer_secs.into()));
                }
                if let Some(r) = call.routing_mut() {
                    r.fwd.forward_on = Some(ForwardOn {
                        user,
                        busy: f.busy,
                        no_answer: f.no_answer,
                    });
                }
            }
        }
        if before > 0 && step.users.is_empty() {
            info!(
                call = call.key,
                "every user of the step is in do not disturb: busy"
            );
            if let Some(r) = call.routing_mut() {
                r.last_failure = Failure::new(StatusCode::BUSY_HERE, Disposition::Busy);
            }
            return false;
        }
        self.start_ring(call, now, dir, step)
    }

    /// The armed forwarding of the step that just failed, if it failed that way.
    pub(super) fn forward_after_failure(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
    ) -> Option<bool> {
        let r = call.routing_mut()?;
        let on = r.fwd.forward_on.take()?;
        let (target, reason) = match r.last_failure.disposition {
            Disposition::Busy => (on.busy?, "user-busy"),
            Disposition::NoAnswer => (on.no_answer?, "no-answer"),
            _ => return None,
        };
        Some(self.forward(call, now, dir, &on.user, &target, reason))
    }

    /// Sends the call to `user`'s forwarding `target`; false if it could not start (the
    /// routing goes on).
    fn forward(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        user: &str,
        target: &str,
        reason: &'static str,
    ) -> bool {
        info!(call = call.key, %user, %target, reason, "call forwarded");
        let is_local = |n: &str| self.cfg.user(n).is_some() || self.cfg.group(n).is_some();
        match ForwardTarget::parse(target, is_local) {
            Some(ForwardTarget::Local(name)) => {
                let (users, mode, timeout) = match self.cfg.group(&name) {
                    Some(g) => (g.members.clone(), g.strategy, g.ring_timeout),
                    None => (vec![name], RingStrategy::Parallel, Duration::from_secs(30)),
                };
                let users = self.expand(&users.into_iter().map(Target::User).collect::<Vec<_>>());
                let exclude = match &call.caller {
                    crate::Caller::User(u) => Some(u.clone()),
                    crate::Caller::Trunk { .. } => None,
                };
                // One hop only: the target's own forwarding does not apply.
                self.start_ring(
                    call,
                    now,
                    dir,
                    RingStep {
                        users,
                        mode,
                        timeout,
                        exclude,
                    },
                )
            }
            Some(ForwardTarget::Number(number)) => {
                let origin = Origin::Local { user };
                let cfg = self.cfg.clone();
                let Some(rule) = cfg.route(&origin, &number) else {
                    info!(call = call.key, %user, %number, "forwarding target not routable for this user");
                    return false;
                };
                let Some(r) = call.routing_mut() else {
                    return false;
                };
                r.fwd.dial = Some(number);
                r.fwd.diversion = Some(Diversion {
                    user: user.to_string(),
                    reason,
                });
                let steps: Vec<Action> = rule.steps().cloned().collect();
                for a in steps.into_iter().rev() {
                    r.steps.push_front(a);
                }
                // The caller's routing goes on with those steps.
                false
            }
            None => false,
        }
    }
}
