//! Feature codes dialled from a local phone (`[features]`, `[[modes]]`), handled before the
//! dialplan: listening to one's mailbox, and the run-time state they change (the modes night
//! rules match).

use super::call::{Call, Failure};
use super::B2bua;
use crate::cdr::Disposition;
use crate::{App, Caller, ForwardKind};
use podpbx_config::When;
use podpbx_sip::StatusCode;
use podpbx_voicemail::prompts::Prompt;
use std::time::{Instant, SystemTime};
use tracing::info;

/// A feature code a call dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Feature {
    /// Listen to one's own mailbox.
    Voicemail,
    /// Do not disturb on/off.
    Dnd(bool),
    /// Forward to a user, group or number.
    Forward(ForwardKind, String),
    /// Every forwarding off.
    ForwardOff,
    /// Toggle a `[[modes]]` switch.
    Mode(String),
    /// Answer the call ringing at this extension.
    Pickup(String),
}

impl Feature {
    /// The name in the CDR's `rule`.
    pub fn name(&self) -> &'static str {
        match self {
            Feature::Voicemail => "feature:voicemail",
            Feature::Dnd(_) => "feature:dnd",
            Feature::Forward(..) | Feature::ForwardOff => "feature:forward",
            Feature::Mode(_) => "feature:mode",
            Feature::Pickup(_) => "feature:pickup",
        }
    }
}

impl B2bua {
    /// The feature code `number` is, when a local user dialled it.
    pub(super) fn feature_of(&self, caller: &Caller, number: &str) -> Option<Feature> {
        let Caller::User(_) = caller else {
            return None;
        };
        let f = &self.cfg.features;
        let is = |code: &str| !code.is_empty() && number == code;
        if is(&f.voicemail) {
            return Some(Feature::Voicemail);
        }
        if is(&f.dnd_on) {
            return Some(Feature::Dnd(true));
        }
        if is(&f.dnd_off) {
            return Some(Feature::Dnd(false));
        }
        if is(&f.forward_off) {
            return Some(Feature::ForwardOff);
        }
        for (code, kind) in [
            (&f.forward_always, ForwardKind::Always),
            (&f.forward_busy, ForwardKind::Busy),
            (&f.forward_no_answer, ForwardKind::NoAnswer),
        ] {
            if code.is_empty() {
                continue;
            }
            if let Some(rest) = number.strip_prefix(code.as_str()) {
                // `*21*<target>#`: the `#` is optional (many phones send it, some cannot).
                let target = rest.strip_suffix('#').unwrap_or(rest);
                if !target.is_empty() {
                    return Some(Feature::Forward(kind, target.to_string()));
                }
            }
        }
        if let Some(ext) = Some(&f.pickup)
            .filter(|c| !c.is_empty())
            .and_then(|c| number.strip_prefix(c.as_str()))
            .filter(|e| !e.is_empty())
        {
            return Some(Feature::Pickup(ext.trim_end_matches('#').to_string()));
        }
        self.cfg
            .modes
            .iter()
            .find(|m| m.feature_code.as_deref() == Some(number))
            .map(|m| Feature::Mode(m.name.clone()))
    }

    /// Confirms a feature code with a prompt (or, without the media endpoint, ends the call
    /// with `reply`).
    fn confirm(&mut self, call: &mut Call, now: Instant, prompt: Prompt) {
        if !self.start_endpoint(call, now, App::Announce(vec![prompt])) {
            let status = if prompt == Prompt::NotAllowed {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::TEMPORARILY_UNAVAILABLE
            };
            self.routing_failed(call, now, Failure::new(status, Disposition::Rejected));
        }
    }

    /// Runs feature `f` for the call's caller; false when the call was consumed (a pickup
    /// moved its leg into another call) and must not be put back.
    pub(super) fn run_feature(&mut self, call: &mut Call, now: Instant, f: Feature) -> bool {
        let Caller::User(user) = call.caller.clone() else {
            return true;
        };
        match f {
            Feature::Voicemail => {
                let pin = self
                    .cfg
                    .mailbox(&user)
                    .and_then(|u| u.voicemail.as_ref())
                    .and_then(|v| v.pin.as_ref())
                    .map(|p| p.expose().to_string());
                let Some(pin) = pin else {
                    info!(call = call.key, %user, "voicemail: no mailbox with a PIN for this user: 404");
                    self.routing_failed(
                        call,
                        now,
                        Failure::new(StatusCode::NOT_FOUND, Disposition::Rejected),
                    );
                    return true;
                };
                let app = App::Retrieve { mailbox: user, pin };
                if !self.start_endpoint(call, now, app) {
                    self.routing_failed(
                        call,
                        now,
                        Failure::new(StatusCode::BUSY_HERE, Disposition::Busy),
                    );
                }
            }
            Feature::Dnd(on) => {
                self.set_dnd(&user, on);
                let p = if on {
                    Prompt::Activated
                } else {
                    Prompt::Deactivated
                };
                self.confirm(call, now, p);
            }
            Feature::ForwardOff => {
                self.clear_forwards(&user);
                self.confirm(call, now, Prompt::Deactivated);
            }
            Feature::Forward(kind, target) => {
                if self.forward_allowed(&user, &target) {
                    self.set_forward(&user, kind, Some(target));
                    self.confirm(call, now, Prompt::Activated);
                } else {
                    info!(call = call.key, %user, %target, "forwarding refused: not a user, group or number this user may call");
                    self.confirm(call, now, Prompt::NotAllowed);
                }
            }
            Feature::Mode(mode) => {
                let on = !self.modes().iter().any(|(m, on)| *m == mode && *on);
                self.set_mode(&mode, on);
                let p = if on {
                    Prompt::Activated
                } else {
                    Prompt::Deactivated
                };
                self.confirm(call, now, p);
            }
            Feature::Pickup(ext) => {
                if self.pickup(call, now, &user, &ext) {
                    return false;
                }
                // Nothing to pick up there (any more).
                self.routing_failed(
                    call,
                    now,
                    Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer),
                );
            }
        }
        true
    }

    /// Switches mode `name` (run time; `podpbx ctl mode`, a feature code). False if there is no
    /// such mode.
    pub fn set_mode(&mut self, name: &str, on: bool) -> bool {
        if self.cfg.mode(name).is_none() {
            return false;
        }
        self.modes.insert(name.to_string(), on);
        self.state_changed = true;
        info!(mode = name, on, "mode switched");
        true
    }

    /// The state of every configured mode (run-time switch, else its `initial`).
    pub fn modes(&self) -> Vec<(String, bool)> {
        self.cfg
            .modes
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    self.modes.get(&m.name).copied().unwrap_or(m.initial),
                )
            })
            .collect()
    }

    /// Restores run-time mode switches (persisted state at start).
    pub fn restore_modes(&mut self, modes: impl IntoIterator<Item = (String, bool)>) {
        self.modes = modes.into_iter().collect();
    }

    /// Routes `number` from `origin` at `wall` with the modes' run-time state.
    pub(super) fn route_at<'c>(
        cfg: &'c podpbx_config::Config,
        modes: &std::collections::HashMap<String, bool>,
        origin: &podpbx_config::Origin<'_>,
        number: &str,
        wall: SystemTime,
    ) -> Option<&'c podpbx_config::Rule> {
        let state = |m: &str| modes.get(m).copied();
        let when = When::at(cfg, wall, &state);
        cfg.route_at(origin, number, &when)
    }
}
