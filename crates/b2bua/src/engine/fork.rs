//! Forking (ring groups): INVITEs to every contact of every user of a step, in parallel or one
//! user after the other (sequential), each a UAC leg of its own.

use super::call::{Call, Failure, Purpose};
use super::dialog::{Dialog, UacDialog};
use super::invite::NewUacLeg;
use super::leg::{BundleId, CdrRole, LegIdx, LegMedia, Party, Resend};
use super::B2bua;
use crate::cdr::Disposition;
use crate::util::{sanitize, sanitize_display};
use crate::{ContactTarget, Directory, Family, MediaLeg};
use bytes::Bytes;
use podpbx_config::{Dtmf, RingStrategy, Target};
use podpbx_sip::caps::{allow, supported, DIALOG_METHODS};
use podpbx_sip::StatusCode;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::debug;

/// A step that rings users.
pub(crate) struct RingStep {
    pub users: Vec<String>,
    pub mode: RingStrategy,
    /// Ring time of the step (parallel) or of each user (sequential).
    pub timeout: Duration,
    /// Never rung (the caller itself).
    pub exclude: Option<String>,
}

impl B2bua {
    /// The users of `targets` (groups expanded), each once, in order.
    pub(super) fn expand(&self, targets: &[Target]) -> Vec<String> {
        let mut users: Vec<String> = Vec::new();
        for t in targets {
            match t {
                Target::User(u) => users.push(u.clone()),
                Target::Group(g) => {
                    if let Some(g) = self.cfg.group(g) {
                        users.extend(g.members.iter().cloned());
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        users.retain(|u| seen.insert(u.clone()));
        users
    }

    /// Rings the step's users; false (with `last_failure` set) if nobody could be rung.
    pub(super) fn start_ring(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        step: RingStep,
    ) -> bool {
        let mut busy = 0;
        let mut candidates = VecDeque::new();
        for u in step.users {
            if Some(&u) == step.exclude.as_ref() {
                continue;
            }
            if let Some(max) = self
                .cfg
                .user(&u)
                .and_then(|c| c.max_calls)
                .filter(|m| *m > 0)
            {
                if self.user_calls(&u) >= max as usize {
                    busy += 1;
                    continue;
                }
            }
            candidates.push_back(u);
        }
        let Some(r) = call.routing_mut() else {
            return false;
        };
        r.seq_timeout = step.timeout;
        if step.mode == RingStrategy::Sequential {
            r.seq = candidates;
            if self.ring_next_seq(call, now, dir) {
                return true;
            }
        } else {
            let mut rung = 0;
            for u in candidates {
                rung += self.ring_user(call, now, dir, &u);
            }
            if rung > 0 {
                self.arm_ring(call, now + step.timeout);
                return true;
            }
        }
        if let Some(r) = call.routing_mut() {
            r.last_failure = if busy > 0 {
                Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
            } else {
                Failure::no_answer()
            };
        }
        false
    }

    /// Sequential ringing: the next user with a contact; false if none is left.
    pub(super) fn ring_next_seq(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
    ) -> bool {
        loop {
            let Some(r) = call.routing_mut() else {
                return false;
            };
            let Some(u) = r.seq.pop_front() else {
                return false;
            };
            let t = r.seq_timeout;
            if self.ring_user(call, now, dir, &u) > 0 {
                self.arm_ring(call, now + t);
                return true;
            }
        }
    }

    /// Forks the INVITE to every contact of `user`; returns how many legs were created.
    fn ring_user(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        user: &str,
    ) -> usize {
        let contacts = dir.contacts(user, now);
        let dtmf = self.cfg.user(user).map_or(Dtmf::Auto, |u| u.dtmf);
        let mut n = 0;
        for c in contacts {
            if self.user_leg(call, c, user, dtmf).is_some() {
                n += 1;
            }
        }
        if n == 0 {
            debug!(call = call.key, %user, "no usable contact");
        }
        n
    }

    /// A B leg towards one contact of `user`: the caller's offer (or, in a transfer, the
    /// keeper's last SDP) rewritten for it, and the INVITE sent.
    fn user_leg(
        &mut self,
        call: &mut Call,
        target: ContactTarget,
        user: &str,
        dtmf_mode: Dtmf,
    ) -> Option<LegIdx> {
        let (purpose, gen) = match call.routing() {
            Some(r) => (r.purpose.clone(), r.gen),
            None => return None,
        };
        let fam = Family::of(target.flow.remote.ip());
        let (side, bundle, offer, offerer) = self.callee_media(call, fam)?;
        let cdr_role = match purpose {
            Purpose::Initial => CdrRole::Callee,
            Purpose::Transfer { .. } => CdrRole::TransferTarget,
        };
        let dialog = Dialog::uac(UacDialog {
            call_id: format!("{}@podpbx", self.ids.token()),
            local_tag: self.ids.token(),
            local_uri: self.caller_name_addr(call),
            remote_uri: format!("<sip:{}@{}>", sanitize(user, 64), self.settings.domain),
            target: target.uri.clone(),
            flow: target.flow,
        });
        let media = LegMedia::new(side, Some(bundle), self.origin_id());
        // The caller's intercom / auto-answer headers (already screened) reach the phones it
        // rings, not a transfer target.
        let passed = match purpose {
            Purpose::Initial => call.phone_headers.clone(),
            Purpose::Transfer { .. } => Vec::new(),
        };
        self.start_uac_leg(
            call,
            NewUacLeg {
                party: Party::User(user.to_string()),
                cdr_role,
                dtmf_mode,
                dialog,
                media,
                step_gen: gen,
                offer,
                offerer,
                resend: Resend {
                    uri: target.uri,
                    headers: vec![
                        ("Allow".to_string(), allow(DIALOG_METHODS)),
                        ("Supported".to_string(), supported()),
                    ]
                    .into_iter()
                    .chain(self.st_invite_headers(&Party::User(user.to_string())))
                    .chain(passed)
                    .collect(),
                    body: None,
                },
                auth: None,
            },
        )
    }

    /// The media of a new callee leg whose peer is of family `fam`: its relay side, its bundle,
    /// the offer it gets and the leg whose offer that is. For the caller, the caller's offer
    /// on the bundle of (caller's family, `fam`); for a transfer target, the keeper's last SDP
    /// as a fresh offer (sendrecv: the transferor may have put the keeper on hold) on a bundle
    /// of the transfer's own, by the keeper's media family and `fam` (so a transfer works
    /// across address families; the keeper gets the target's media once it answers).
    pub(super) fn callee_media(
        &mut self,
        call: &mut Call,
        fam: Family,
    ) -> Option<(MediaLeg, BundleId, Option<Bytes>, Option<LegIdx>)> {
        match call.routing()?.purpose.clone() {
            Purpose::Initial => {
                let a_fam = self.caller_media_family(call);
                let bi = self.bundle_for(call, a_fam, fam);
                Some((MediaLeg::B, bi, call.offer.clone(), Some(call.a)))
            }
            Purpose::Transfer {
                keeper,
                first_bundle,
                ..
            } => {
                let side = call.legs[keeper].media.side;
                let kf = self.leg_media_family(call, keeper);
                let (a, b) = if side == MediaLeg::A {
                    (kf, fam)
                } else {
                    (fam, kf)
                };
                let bi = match call
                    .bundles
                    .iter()
                    .enumerate()
                    .skip(first_bundle)
                    .find(|(_, x)| x.a == a && x.b == b)
                {
                    Some((i, _)) => BundleId(i),
                    None => self.fresh_bundle(call, a, b),
                };
                let offer = call.legs[keeper].media.last_sdp.as_ref().map(|raw| {
                    podpbx_sdp::sendrecv(raw)
                        .map(Bytes::from)
                        .unwrap_or_else(|_| raw.clone())
                });
                Some((side.other(), bi, offer, Some(keeper)))
            }
        }
    }

    /// Our From on B legs: the caller's display name and user, in our domain.
    fn caller_name_addr(&self, call: &Call) -> String {
        let (display, user) = &call.from_id;
        let user = sanitize(user, 64);
        let user = if user.is_empty() {
            "anonymous".to_string()
        } else {
            user
        };
        if display.is_empty() {
            format!("<sip:{user}@{}>", self.settings.domain)
        } else {
            format!(
                "\"{}\" <sip:{user}@{}>",
                sanitize_display(display),
                self.settings.domain
            )
        }
    }
}
