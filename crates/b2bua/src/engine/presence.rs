//! BLF (RFC 4235): the dialogs of a local user as its watchers' keys show them, computed from
//! the calls, and which users' dialogs changed (every call touched by an input marks its users).

use super::call::{Call, Phase};
use super::leg::{LegState, UacState, UasState};
use super::B2bua;
use crate::Caller;
use podpbx_presence::dialog_info::{Dialog, Direction, Party, State};

impl B2bua {
    /// Users whose dialogs may have changed since the last call (each once).
    pub fn take_presence_changes(&mut self) -> Vec<String> {
        let mut v: Vec<String> = self.presence_dirty.drain().collect();
        v.sort();
        v
    }

    /// Marks the users of `call` (caller and callees) as changed.
    pub(super) fn mark_presence(&mut self, call: &Call) {
        if let Caller::User(u) = &call.caller {
            self.presence_dirty.insert(u.clone());
        }
        for l in &call.legs {
            if let Some(u) = l.party.user() {
                self.presence_dirty.insert(u.to_string());
            }
        }
    }

    /// The dialogs of `user` now: ringing or answered calls from it and to it, with the
    /// dialog identifiers its phone knows (for a pickup with Replaces).
    pub fn dialogs_of(&self, user: &str) -> Vec<Dialog> {
        let domain = &self.settings.domain;
        let mut out = Vec::new();
        let mut calls: Vec<&Call> = self.calls.values().collect();
        calls.sort_by_key(|c| c.key);
        for call in calls {
            if matches!(call.phase, Phase::Ending) {
                continue;
            }
            for (li, leg) in call.legs.iter().enumerate() {
                if leg.party.user() != Some(user) {
                    continue;
                }
                let (state, direction, remote) = match &leg.state {
                    LegState::Uas(s) => {
                        let state = match s {
                            UasState::Proceeding(_) => {
                                let early = call
                                    .legs
                                    .iter()
                                    .any(|l| matches!(l.state, LegState::Uac(UacState::Early(_))));
                                if early {
                                    State::Early
                                } else {
                                    State::Trying
                                }
                            }
                            UasState::Accepted | UasState::Confirmed => State::Confirmed,
                            UasState::Terminated => continue,
                        };
                        let remote = Party {
                            uri: format!("sip:{}@{domain}", call.number),
                            display: None,
                        };
                        (state, Direction::Initiator, remote)
                    }
                    LegState::Uac(s) => {
                        let state = match s {
                            UacState::Calling(_) => State::Trying,
                            UacState::Early(_) => State::Early,
                            // Being cancelled: it stops ringing now.
                            UacState::CancelPending(_) | UacState::Cancelling(_) => continue,
                            UacState::Confirmed => State::Confirmed,
                            UacState::Terminated => continue,
                        };
                        let (display, caller) = &call.from_id;
                        let remote = Party {
                            uri: format!("sip:{caller}@{domain}"),
                            display: Some(display.clone()).filter(|d| !d.is_empty()),
                        };
                        (state, Direction::Recipient, remote)
                    }
                };
                out.push(Dialog {
                    id: format!("{}-{li}", call.key),
                    state,
                    direction,
                    remote: Some(remote),
                    call_id: Some(leg.dialog.call_id.clone()),
                    // The phone's view: its tag is local, ours is remote.
                    local_tag: leg.dialog.remote_tag.clone(),
                    remote_tag: Some(leg.dialog.local_tag.clone()),
                });
            }
        }
        out
    }
}
