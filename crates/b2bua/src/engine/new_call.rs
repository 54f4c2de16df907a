//! New calls: how a new INVITE's source is identified, the limits, the caller's leg and the
//! dialplan rule that routes it.

use super::call::{Call, Phase, Purpose, Record, Routing};
use super::dialog::Dialog;
use super::leg::{CdrRole, DtmfOut, Leg, LegMedia, LegState, Party, UasInvite, UasState};
use super::send::{Incoming, Reply};
use super::B2bua;
use crate::util::{is_sdp, sanitize, sanitize_display, unescape_user};
use crate::{Caller, Directory, Flow, Identity, MediaLeg, Received};
use podpbx_config::{Dtmf, Origin};
use podpbx_sdp::Sdp;
use podpbx_sip::replaces::Replaces;
use podpbx_sip::{Message, StatusCode};
use std::time::{Instant, SystemTime};
use tracing::{debug, info, warn};

impl B2bua {
    /// How a new INVITE from `flow` is identified before authentication: a trunk's networks
    /// (or its host, when the Request-URI/To names one of its DIDs), an `identify_by_source`
    /// user, or digest.
    pub fn identify(&self, req: &Message, flow: &Flow) -> Identity {
        let ip = flow.remote.ip();
        let ruri_user = req
            .request_uri()
            .ok()
            .and_then(|u| u.user.map(|u| unescape_user(&u)));
        let to_user = req
            .to_hdr()
            .ok()
            .and_then(|t| t.uri.user.map(|u| unescape_user(&u)));
        for t in &self.cfg.trunks {
            let in_net = t.networks.iter().any(|n| n.contains(ip));
            let is_host = t.host.ip() == Some(ip);
            let did = [ruri_user.clone(), to_user.clone()]
                .into_iter()
                .flatten()
                .find(|u| t.dids.iter().any(|d| d == u));
            if in_net || (is_host && did.is_some()) {
                // A trunk's networks are a forgeable source: a call from there must name one
                // of the trunk's DIDs (issue #11); anything else reaches no dialplan rule.
                return match did {
                    Some(did) => Identity::Trunk {
                        name: t.name.clone(),
                        did: Some(did),
                    },
                    None => Identity::NotADid {
                        trunk: t.name.clone(),
                    },
                };
            }
        }
        for u in &self.cfg.users {
            if u.identify_by_source
                && !u.allow_from.is_empty()
                && u.allow_from.iter().any(|n| n.contains(ip))
            {
                return Identity::User(u.name.clone());
            }
        }
        Identity::Authenticate
    }

    /// Calls in which `user` has an active leg (for `max_calls`).
    pub(super) fn user_calls(&self, user: &str) -> usize {
        self.calls
            .values()
            .filter(|c| c.legs.iter().any(|l| l.active() && l.user() == Some(user)))
            .count()
    }

    /// A new INVITE (no To tag) from an identified or authenticated `caller`.
    ///
    /// Answers `100 Trying` at once, then either rejects it (call limits, bad SDP, no dialplan
    /// rule: 503/486/488/404) or starts the rule's first step: INVITEs to the callees (see
    /// [`crate::Output::Request`]) and a ring timer. `wall` is the wall-clock time of `now`,
    /// for the CDR.
    pub fn handle_invite(
        &mut self,
        now: Instant,
        wall: SystemTime,
        invite: Received<'_>,
        caller: Caller,
        dir: &dyn Directory,
    ) {
        let Received { tx, msg: req, flow } = invite;
        let inc = Incoming {
            tx,
            req,
            src: flow.remote,
        };
        self.respond(inc, Reply::new(StatusCode::TRYING));
        let tag = self.ids.token();
        let reject = |this: &mut B2bua, code: StatusCode| {
            this.respond(inc, Reply::new(code).tag(&tag));
        };
        // RFC 3891: this INVITE takes the place of an existing dialog (a pickup, or another
        // device taking a call over); limits and the dialplan do not apply to it.
        let replaces = match req.other_header("Replaces") {
            None => None,
            Some(_) => match Replaces::of(req) {
                Some(r) => Some(r),
                None => {
                    let reply = Reply::new(StatusCode::BAD_REQUEST)
                        .reason(Some("Bad Replaces"))
                        .tag(&tag);
                    self.respond(inc, reply);
                    return;
                }
            },
        };
        if let Some(max) = self
            .cfg
            .calls
            .max_concurrent
            .filter(|m| *m > 0 && replaces.is_none())
        {
            if self.calls.len() >= max as usize {
                warn!(max, "call limit reached: 503");
                reject(self, StatusCode::SERVICE_UNAVAILABLE);
                return;
            }
        }
        let ruri_user = || {
            req.request_uri()
                .ok()
                .and_then(|u| u.user.map(|x| unescape_user(&x)))
        };
        let (number, origin_user) = match &caller {
            Caller::User(u) => (ruri_user().unwrap_or_default(), Some(u.clone())),
            Caller::Trunk { did, .. } => (did.clone().or_else(ruri_user).unwrap_or_default(), None),
        };
        let cfg = self.cfg.clone();
        let user_cfg = origin_user.as_deref().and_then(|u| cfg.user(u));
        if let Some(u) = user_cfg.filter(|_| replaces.is_none()) {
            if let Some(max) = u.max_calls.filter(|m| *m > 0) {
                if self.user_calls(&u.name) >= max as usize {
                    info!(user = %u.name, max, "user call limit reached: 486");
                    reject(self, StatusCode::BUSY_HERE);
                    return;
                }
            }
        }
        let offer = if is_sdp(req) {
            match Sdp::parse(&req.body) {
                // RFC 4568 §8.3: SDES keys need a secure signalling channel. Keys that crossed
                // the network in clear text are known to anyone on the path: 488, not used.
                Ok(sdp)
                    if flow.transport != podpbx_sip::Transport::Tls
                        && super::media::has_sdes_keys(&sdp) =>
                {
                    warn!(
                        src = %flow.remote,
                        transport = flow.transport.param(),
                        "INVITE with SDES keys (a=crypto) over clear-text signalling: 488"
                    );
                    reject(self, StatusCode::NOT_ACCEPTABLE_HERE);
                    return;
                }
                Ok(sdp) => {
                    // The caller's own srtp policy (e.g. a trunk with srtp = required that
                    // offers plain RTP): 488 before anything rings.
                    let party = match &caller {
                        Caller::User(u) => Party::User(u.clone()),
                        Caller::Trunk { name, .. } => Party::Trunk(name.clone()),
                    };
                    let policy = self.srtp_policy(&party);
                    if let Err(e) = self.accept_sdes(policy, flow.transport, &sdp, None) {
                        warn!(src = %flow.remote, reason = %e, "SRTP policy of the caller not met: 488");
                        reject(self, StatusCode::NOT_ACCEPTABLE_HERE);
                        return;
                    }
                    Some(req.body.clone())
                }
                Err(e) => {
                    debug!(error = %e, "bad SDP offer: 488");
                    reject(self, StatusCode::NOT_ACCEPTABLE_HERE);
                    return;
                }
            }
        } else {
            None
        };
        let origin = match &caller {
            Caller::User(u) => Origin::Local { user: u },
            Caller::Trunk { name, did } => Origin::Trunk {
                trunk: name,
                did: did.as_deref(),
            },
        };
        let feature = match replaces {
            Some(_) => None,
            None => self.feature_of(&caller, &number),
        };
        let rule = match feature {
            _ if replaces.is_some() => None,
            Some(_) => None,
            None => match Self::route_at(&cfg, &self.modes, &origin, &number, wall) {
                Some(r) => Some(r),
                None => {
                    info!(%number, "no dialplan rule: 404");
                    reject(self, StatusCode::NOT_FOUND);
                    return;
                }
            },
        };
        let Ok(from) = req.from_hdr() else {
            reject(self, StatusCode::BAD_REQUEST);
            return;
        };
        let Some(dialog) = Dialog::uas(req, flow, flow.response_peer(req), tag.clone()) else {
            reject(self, StatusCode::BAD_REQUEST);
            return;
        };
        let from_id = match &caller {
            Caller::User(u) => (
                user_cfg
                    .and_then(|c| c.display_name.clone())
                    .unwrap_or_default(),
                u.clone(),
            ),
            // RFC 3325: a provider the trunk trusts asserts the caller; a caller that asked for
            // privacy is shown as anonymous.
            Caller::Trunk { name, .. }
                if cfg.trunk(name).is_some_and(|t| t.trust_pai)
                    && super::headers::asserted_identity(req).is_some() =>
            {
                if super::headers::privacy_requested(req) {
                    ("Anonymous".to_string(), "anonymous".to_string())
                } else {
                    super::headers::asserted_identity(req).unwrap_or_default()
                }
            }
            Caller::Trunk { .. } => (
                from.display_unescaped()
                    .map(|d| sanitize_display(&String::from_utf8_lossy(&d)))
                    .unwrap_or_default(),
                sanitize(
                    &from
                        .uri
                        .user
                        .as_ref()
                        .map(|u| unescape_user(u))
                        .unwrap_or_else(|| "anonymous".into()),
                    32,
                ),
            ),
        };
        let withheld = match &caller {
            Caller::User(_) => user_cfg.is_some_and(|u| u.withhold_caller_id),
            Caller::Trunk { .. } => super::headers::privacy_requested(req),
        };
        let phone_headers = self.phone_headers(req, &flow, &caller, rule);
        let key = self.next_call;
        self.next_call += 1;
        let (party, dtmf_mode) = match &caller {
            Caller::User(u) => (
                Party::User(u.clone()),
                user_cfg.map_or(Dtmf::Auto, |c| c.dtmf),
            ),
            Caller::Trunk { name, .. } => (Party::Trunk(name.clone()), Dtmf::Auto),
        };
        // RFC 4028 §9: an interval below our minimum is refused before anything rings.
        let session = match self.st_new_call(req, &party) {
            Ok(d) => d,
            Err(min_se) => {
                info!(min_se, "session interval too small: 422");
                let r = Reply::new(StatusCode::SESSION_INTERVAL_TOO_SMALL)
                    .tag(&tag)
                    .header("Min-SE", min_se.to_string());
                self.respond(inc, r);
                return;
            }
        };
        let peer_update = super::session_timer::allows(req, &podpbx_sip::Method::Update);
        let a_leg = Leg {
            party,
            cdr_role: CdrRole::Caller,
            dtmf_mode,
            dialog,
            state: LegState::Uas(UasState::Proceeding(Box::new(UasInvite {
                tx,
                req: req.clone(),
                src: flow.remote,
                rel: self.reliable_sender(req),
                session,
            }))),
            status: None,
            step_gen: 0,
            ok: None,
            last_ack: None,
            ack_deferred: None,
            held_2xx: None,
            session: None,
            peer_update,
            media: LegMedia {
                last_sdp: offer.clone(),
                ..LegMedia::new(MediaLeg::A, None, self.origin_id())
            },
            dtmf: DtmfOut::default(),
        };
        let mut call = Call {
            key,
            start: now,
            wall0: wall,
            caller: caller.clone(),
            from_id,
            withheld,
            phone_headers,
            number: number.clone(),
            legs: vec![a_leg],
            a: 0,
            phase: Phase::Routing(Routing::new(
                Purpose::Initial,
                rule.map(|r| r.steps().cloned().collect())
                    .unwrap_or_default(),
                0,
            )),
            bundles: Vec::new(),
            reinvite: None,
            reanchor: None,
            pending: 0,
            offer,
            held: false,
            record: Record {
                rule: Some(rule.map_or_else(
                    || match (&replaces, &feature) {
                        (Some(_), _) => "replaces".to_string(),
                        (None, f) => f.as_ref().map_or("", |f| f.name()).to_string(),
                    },
                    |r| r.name.clone(),
                )),
                ..Record::default()
            },
        };
        if let (Some(r), Some(routing)) = (rule, call.routing_mut()) {
            routing.trunks_allowed = cfg.may_reach_trunk(r, &origin);
        }
        info!(call = key, caller = ?caller, %number, rule = ?call.record.rule, "new call");
        self.by_invite_tx.insert(tx, key);
        self.owned.entry(key).or_default().invite_txs.push(tx);
        self.by_dialog.insert(call.legs[0].dialog.key(), (key, 0));
        let keep = match (replaces, feature) {
            (Some(r), _) => {
                let device = matches!(self.identify(req, &flow), Identity::User(_));
                match self.invite_replaces(&mut call, now, &r, device) {
                    Ok(moved) => !moved,
                    Err(f) => {
                        self.routing_failed(&mut call, now, f);
                        true
                    }
                }
            }
            (None, Some(f)) => self.run_feature(&mut call, now, f),
            (None, None) => {
                self.next_step(&mut call, now, dir);
                true
            }
        };
        // A pickup moved the call's only leg into the call it picked up (with its INVITE
        // transaction, dialog, requests and timers): nothing of this call is left.
        if keep {
            self.put_back(call, now);
        } else {
            self.owned.remove(&key);
        }
    }
}
