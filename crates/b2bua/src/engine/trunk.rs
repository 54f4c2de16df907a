//! Trunk legs: the number rewritten for the provider (strip, prepend), our caller ID, the
//! INVITE from our pinned address of the trunk's family, and digest answers to the provider's
//! 401/407 (same Call-ID, CSeq + 1, at most twice).

use super::call::{Call, Failure, Purpose};
use super::dialog::{Dialog, UacDialog};
use super::invite::NewUacLeg;
use super::leg::{Auth, CdrRole, LegIdx, LegMedia, LegState, Party, Resend, UacState};
use super::responses::Resp;
use super::B2bua;
use crate::cdr::Disposition;
use crate::util::sanitize;
use crate::{Directory, Family, Flow};
use bytes::Bytes;
use podpbx_config::Dtmf;
use podpbx_sip::caps::{allow, supported, TRUNK_DIALOG_METHODS};
use podpbx_sip::digest::{AuthKind, DigestClient};
use podpbx_sip::StatusCode;
use std::time::{Duration, Instant};
use tracing::info;

/// How many times a trunk INVITE answers a challenge.
const MAX_AUTH_ROUNDS: u32 = 2;

/// A trunk calls rings as long as the provider lets it (the caller can cancel); this bounds it.
const TRUNK_RING_LIMIT: Duration = Duration::from_secs(180);

/// A dialplan step that calls out through a trunk.
pub(crate) struct TrunkStep<'a> {
    pub name: &'a str,
    /// Leading digits of the dialled number to drop.
    pub strip: usize,
    /// Digits to put in front.
    pub prepend: &'a str,
    /// Caller ID for this step (else the trunk's, else the caller's user).
    pub caller_id: Option<&'a str>,
    /// The number to call as is (a provider's redirect), instead of the dialled one rewritten.
    pub number: Option<&'a str>,
}

impl B2bua {
    /// Calls out through a trunk; false (with `last_failure` 503) when it cannot be used.
    pub(super) fn start_trunk(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        step: &TrunkStep<'_>,
    ) -> bool {
        let fail = |call: &mut Call| {
            if let Some(r) = call.routing_mut() {
                r.last_failure = Failure::new(StatusCode::SERVICE_UNAVAILABLE, Disposition::Failed);
            }
            false
        };
        let name = step.name;
        let Some(trunk) = self.cfg.trunk(name).cloned() else {
            return fail(call);
        };
        if !dir.trunk_available(name) {
            info!(call = call.key, trunk = %name, "trunk not available: 503");
            return fail(call);
        }
        let Some(dest) = dir.trunk_destination(name) else {
            info!(call = call.key, trunk = %name, "trunk destination unknown: 503");
            return fail(call);
        };
        let transport = trunk.transport;
        let Some(local) = dir.local_addr(transport, dest.ip()) else {
            return fail(call);
        };
        // A blind transfer's target may be a number through a trunk too (whether the
        // transferor may use trunks was decided with the routing: `trunks_allowed`).
        let Some((gen, transfer)) = call
            .routing()
            .map(|r| (r.gen, matches!(r.purpose, Purpose::Transfer { .. })))
        else {
            return fail(call);
        };
        let diversion = call.routing().and_then(|r| r.fwd.diversion.clone());
        let number = match step.number {
            Some(n) => sanitize(n, 64),
            None => {
                // A forwarding to a number dials that number, not the call's.
                let dialled = call
                    .routing()
                    .and_then(|r| r.fwd.dial.clone())
                    .unwrap_or_else(|| call.number.clone());
                let n: String = dialled.chars().skip(step.strip).collect();
                sanitize(&format!("{}{n}", step.prepend), 64)
            }
        };
        let host = trunk.host.to_string();
        let hostp = if trunk.port == 5060 {
            host.clone()
        } else {
            format!("{host}:{}", trunk.port)
        };
        let uri = format!("sip:{number}@{hostp}");
        let cid = step
            .caller_id
            .map(str::to_string)
            .or(trunk.caller_id.clone())
            .unwrap_or_else(|| call.from_id.1.clone());
        let flow = Flow {
            transport,
            local,
            remote: dest,
            conn: 0,
        };
        let Some((side, bundle, offer, offerer)) = self.callee_media(call, Family::of(dest.ip()))
        else {
            return fail(call);
        };
        let auth = match (trunk.auth_user(), trunk.password.as_ref()) {
            (Some(u), Some(p)) => Some(Auth {
                client: DigestClient::new(u, p.expose(), self.ids.token().into_bytes()),
                rounds: 0,
                last: None,
            }),
            _ => None,
        };
        let dialog = Dialog::uac(UacDialog {
            call_id: format!("{}@podpbx", self.ids.token()),
            local_tag: self.ids.token(),
            local_uri: if call.withheld {
                super::headers::ANONYMOUS_FROM.to_string()
            } else {
                format!("<sip:{}@{host}>", sanitize(&cid, 64))
            },
            remote_uri: format!("<sip:{number}@{host}>"),
            target: uri.clone(),
            flow,
        });
        let media = LegMedia::new(side, Some(bundle), self.origin_id());
        let leg = NewUacLeg {
            party: Party::Trunk(trunk.name.clone()),
            cdr_role: if transfer {
                CdrRole::TransferTarget
            } else {
                CdrRole::Callee
            },
            dtmf_mode: Dtmf::Auto,
            dialog,
            media,
            step_gen: gen,
            offer,
            // The offerer's media is known from its offer: without this the relay has no
            // destination for the provider's RTP towards the caller (or the keeper).
            offerer,
            resend: Resend {
                uri,
                headers: {
                    let mut h: Vec<(String, String)> = vec![
                        ("Allow".to_string(), allow(TRUNK_DIALOG_METHODS)),
                        ("Supported".to_string(), supported()),
                    ];
                    h.extend(self.st_invite_headers(&Party::Trunk(trunk.name.clone())));
                    // RFC 3325: the provider (our trust domain's neighbour) learns who calls
                    // even when the From hides it; RFC 3323: `Privacy: id` asks it to keep it
                    // from the callee.
                    let cid = sanitize(&cid, 64);
                    if trunk.send_pai && !cid.is_empty() {
                        h.push((
                            "P-Asserted-Identity".to_string(),
                            format!("<sip:{cid}@{host}>"),
                        ));
                    }
                    if call.withheld {
                        h.push(("Privacy".to_string(), "id".to_string()));
                    }
                    if let Some(d) = &diversion {
                        h.extend(d.headers(&self.settings.domain, &number, &hostp));
                    }
                    h
                },
                body: None,
            },
            auth,
        };
        if self.start_uac_leg(call, leg).is_none() {
            return fail(call);
        }
        self.arm_ring(call, now + TRUNK_RING_LIMIT);
        true
    }

    /// A 401/407 to a trunk INVITE: answered with the trunk's credentials (same Call-ID,
    /// CSeq + 1) while it still rings uncancelled and rounds remain. True if re-sent.
    pub(super) fn retry_with_credentials(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        resp: Resp<'_>,
    ) -> bool {
        let leg = &mut call.legs[li];
        let (LegState::Uac(UacState::Calling(inv)) | LegState::Uac(UacState::Early(inv))) =
            &mut leg.state
        else {
            return false;
        };
        let Some(auth) = inv.auth.as_mut() else {
            return false;
        };
        if auth.rounds >= MAX_AUTH_ROUNDS {
            return false;
        }
        let kind = if resp.status == StatusCode::UNAUTHORIZED {
            AuthKind::Www
        } else {
            AuthKind::Proxy
        };
        let values: Vec<Bytes> = resp
            .msg
            .other_header_values(kind.challenge_header())
            .collect();
        if auth.client.on_challenge(&values).is_err() {
            return false;
        }
        auth.rounds += 1;
        auth.last = Some(kind);
        leg.status = Some(resp.status);
        let (branch, data, msg) =
            self.invite_request(&mut leg.dialog, &inv.resend, inv.auth.as_mut());
        let old = inv.req;
        let id = self.alloc_req();
        inv.req = id;
        inv.msg = msg;
        self.replace_invite(call, li, old, (id, branch, data));
        true
    }
}
