//! The registrar state machine: REGISTER handling (RFC 3261 §10.3) and reusable request
//! authentication.

use crate::bindings::{Binding, Flow, QualifyTarget, Store};
use crate::guard::{Counted, Guard, GuardConfig};
use crate::persist::{self, LoadReport, PersistError};
use crate::users::UserDb;
use crate::Cidr;
use bytes::Bytes;
use podpbx_sip::digest::{
    Algorithm, AuthKind, Credentials, DigestParseError, DigestServer, ServerConfig, VerifyOutcome,
};
use podpbx_sip::{
    ContactList, HeaderName, Host, Message, Method, ResponseBuilder, StatusCode, Uri,
};
use serde::Serialize;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

/// Registrar settings.
#[derive(Clone)]
pub struct Settings {
    /// Digest realm.
    pub realm: String,
    /// Domains whose AORs we keep (the To host, compared case-insensitively; IP literals with or
    /// without brackets). Empty: accept any domain.
    pub domains: Vec<String>,
    /// Shortest non-zero expiry accepted; shorter ones get `423` with `Min-Expires`.
    pub min_expires: u32,
    /// Longer requested expiries are lowered to this.
    pub max_expires: u32,
    /// Used when neither the contact nor the request gives an expiry.
    pub default_expires: u32,
    /// How long a nonce is valid.
    pub nonce_ttl: Duration,
    /// Digest algorithms challenged with, preferred first.
    pub algorithms: Vec<Algorithm>,
    /// Random key for nonces and To tags (at least 16 bytes from the OS).
    pub secret: Vec<u8>,
    /// Authentication failures from one source within `failure_window` that block it.
    /// 0 disables blocking. A source is an IPv4 address or an IPv6 prefix of `ipv6_prefix` bits.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// How long a blocked source is ignored.
    pub block_for: Duration,
    /// Sources never counted or blocked (they still authenticate), e.g. the office NAT.
    pub trusted_networks: Vec<Cidr>,
    /// IPv6 sources are counted and blocked by this prefix length (a host may use any address
    /// of its /64).
    pub ipv6_prefix: u8,
    /// Failures from all sources together per minute; beyond it credentials from sources
    /// without a success within `known_for` are not checked (answered like a wrong password).
    /// 0: no global cap.
    pub max_failures_per_minute: u32,
    /// How long a source stays known after a successful authentication.
    pub known_for: Duration,
    /// Capacity of the per-source failure table.
    pub max_tracked_sources: usize,
    /// Capacity of the blocked-source table.
    pub max_blocked_sources: usize,
    /// Capacity of the digest nonce-count table.
    pub max_tracked_nonces: usize,
    /// Probe bindings with OPTIONS this often (`None`: no qualify).
    pub qualify_interval: Option<Duration>,
    /// Consecutive failed probes after which a binding is marked unreachable.
    pub qualify_max_failures: u32,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("realm", &self.realm)
            .field("domains", &self.domains)
            .field("min_expires", &self.min_expires)
            .field("max_expires", &self.max_expires)
            .field("default_expires", &self.default_expires)
            .field("nonce_ttl", &self.nonce_ttl)
            .field("algorithms", &self.algorithms)
            .field("max_failures", &self.max_failures)
            .field("failure_window", &self.failure_window)
            .field("block_for", &self.block_for)
            .field("trusted_networks", &self.trusted_networks)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("max_failures_per_minute", &self.max_failures_per_minute)
            .field("known_for", &self.known_for)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Defaults: any domain, expires 60/3600/3600 s, 300 s nonces, MD5 with qop=auth (RFC 2069
    /// answers only from users that opt in), 5 failures in 120 s block a source (IPv6 by /64) for
    /// 600 s, at most 60 failures per minute in total before unknown sources go unchecked (a
    /// success keeps a source known for 24 h), 10 000 tracked sources and nonces, 4 096 blocked
    /// sources, no qualify (3 failures when enabled).
    pub fn new(realm: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Settings {
            realm: realm.into(),
            domains: Vec::new(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_ttl: Duration::from_secs(300),
            algorithms: vec![Algorithm::Md5],
            secret: secret.into(),
            max_failures: 5,
            failure_window: Duration::from_secs(120),
            block_for: Duration::from_secs(600),
            trusted_networks: Vec::new(),
            ipv6_prefix: podpbx_sip::source::DEFAULT_IPV6_PREFIX,
            max_failures_per_minute: 60,
            known_for: Duration::from_secs(24 * 3600),
            max_tracked_sources: 10_000,
            max_blocked_sources: 4_096,
            max_tracked_nonces: 10_000,
            qualify_interval: None,
            qualify_max_failures: 3,
        }
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `401`/`407` with one challenge header per value.
    Challenge { kind: AuthKind, values: Vec<String> },
    /// `200 OK` with one Contact line per current binding (remaining `expires`) and a Date.
    Ok { contacts: Vec<String>, date: String },
    /// `423 Interval Too Brief` with `Min-Expires`.
    IntervalTooBrief { min_expires: u32 },
    /// `400` with this reason phrase.
    BadRequest { reason: &'static str },
    /// `403` with this reason phrase.
    Forbidden { reason: &'static str },
    /// `404`: the To domain is not ours.
    NotFound,
    /// Blocked source: send nothing at all.
    Drop,
}

impl Reply {
    /// Status code and reason phrase (the standard one, or this reply's own for 400 and 403);
    /// `None` for [`Reply::Drop`].
    pub fn status(&self) -> Option<(StatusCode, &'static str)> {
        let status = match self {
            Reply::Challenge { kind, .. } => kind.status(),
            Reply::Ok { .. } => StatusCode::OK,
            Reply::IntervalTooBrief { .. } => StatusCode::INTERVAL_TOO_BRIEF,
            Reply::BadRequest { reason } => return Some((StatusCode::BAD_REQUEST, reason)),
            Reply::Forbidden { reason } => return Some((StatusCode::FORBIDDEN, reason)),
            Reply::NotFound => StatusCode::NOT_FOUND,
            Reply::Drop => return None,
        };
        Some((status, status.reason()))
    }

    /// Extra header lines of the response, in order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Reply::Challenge { kind, values } => values
                .iter()
                .map(|v| (kind.challenge_header(), v.clone()))
                .collect(),
            Reply::Ok { contacts, date } => {
                let mut h: Vec<_> = contacts.iter().map(|c| ("Contact", c.clone())).collect();
                h.push(("Date", date.clone()));
                h
            }
            Reply::IntervalTooBrief { min_expires } => {
                vec![("Min-Expires", min_expires.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

/// What kind of security-relevant thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventKind {
    /// Wrong digest response for an existing user.
    AuthFailed,
    /// Credentials for a user that does not exist.
    UnknownUser,
    /// Unparseable or unacceptable credentials (also: no qop from a user without the RFC 2069
    /// opt-in).
    MalformedCredentials,
    /// The digest `uri` is not the Request-URI (RFC 3261 §22.4, RFC 7616 §3.4.6): credentials
    /// computed for another request.
    DigestUriMismatch,
    /// Credentials not checked: the global failure cap is reached and the source has no recent
    /// success. Counted as a failure of the source.
    UncheckedOverCap,
    /// The global failure cap was reached in this minute (once per minute).
    GlobalCapReached,
    /// Right credentials from a source outside the user's allowed networks.
    SourceNotAllowed,
    /// The source reached the failure limit and is now blocked (its requests get no answer).
    Blocked,
    /// Authenticated as one user, tried to register another user's AOR.
    IdentityMismatch,
}

/// A structured event for the security log (fail2ban style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    pub kind: SecurityEventKind,
    pub source: IpAddr,
    pub port: u16,
    #[serde(serialize_with = "crate::persist::transport_name::serialize")]
    pub transport: crate::Transport,
    /// The user name tried (digest username), sanitised and truncated; `None` if none was given.
    pub user: Option<String>,
    /// The AOR user of the To header, for REGISTER.
    pub aor: Option<String>,
    /// Request method.
    pub method: String,
    /// Failures counted when a block started.
    pub failures: Option<u32>,
    /// Block length in seconds, for [`SecurityEventKind::Blocked`].
    pub blocked_secs: Option<u64>,
}

/// The result of [`Registrar::handle_register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    /// Bindings changed: persist them ([`Registrar::serialize`]).
    pub changed: bool,
    /// When `changed`: every change was a refresh of an existing binding with the same contact,
    /// flow, q and instance (new expiry, Call-ID, CSeq, User-Agent). A crash before such a change
    /// is saved loses no binding, only the later expiry, so the shell may save it lazily; any
    /// other change (new, removed, moved or expired binding) is saved promptly.
    pub refresh_only: bool,
    /// Security events to log.
    pub events: Vec<SecurityEvent>,
    /// The AOR user the request was about, once known.
    pub aor: Option<String>,
}

impl Outcome {
    fn reply(reply: Reply) -> Self {
        Outcome {
            reply,
            changed: false,
            refresh_only: false,
            events: Vec::new(),
            aor: None,
        }
    }
}

/// The result of [`Registrar::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Authenticated as this user (the digest username, which is the user's name).
    Authenticated { user: String },
    /// Answer with this challenge (first request, wrong or unknown credentials, stale or reused
    /// nonce).
    Challenge { kind: AuthKind, values: Vec<String> },
    /// Answer `400`: malformed credentials.
    BadRequest { reason: &'static str },
    /// Blocked source: no answer.
    Drop,
}

impl AuthResult {
    /// [`Self::reply`], taking the challenge values instead of copying them.
    pub fn into_reply(self) -> Option<Reply> {
        match self {
            AuthResult::Challenge { kind, values } => Some(Reply::Challenge { kind, values }),
            other => other.reply(),
        }
    }

    /// The reply to send when not authenticated (`None` when authenticated).
    pub fn reply(&self) -> Option<Reply> {
        match self {
            AuthResult::Authenticated { .. } => None,
            AuthResult::Challenge { kind, values } => Some(Reply::Challenge {
                kind: *kind,
                values: values.clone(),
            }),
            AuthResult::BadRequest { reason } => Some(Reply::BadRequest { reason }),
            AuthResult::Drop => Some(Reply::Drop),
        }
    }
}

/// [`AuthResult`] plus the security events it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCheck {
    pub result: AuthResult,
    pub events: Vec<SecurityEvent>,
}

/// Table sizes, for metrics and the flood test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Stats {
    pub aors: usize,
    pub bindings: usize,
    pub tracked_sources: usize,
    pub blocked_sources: usize,
    pub tracked_nonces: usize,
}

/// What an authenticated REGISTER changed, least first (see [`Outcome::refresh_only`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    /// Existing bindings refreshed in place: same contact, flow, q and instance.
    Refresh,
    /// A binding added, removed, evicted or changed in what routes to it.
    Structural,
}

/// A requested contact, validated.
/// Borrowed from the request: a refresh that changes nothing copies nothing.
struct Wanted<'a> {
    uri: &'a str,
    expires: u32,
    q: Option<u16>,
    instance: Option<&'a str>,
    reg_id: Option<u32>,
    /// The binding this request refreshed or added for it.
    bound: Option<u64>,
}

/// The registrar. Sans-IO: time comes in as arguments, replies go out as values.
pub struct Registrar {
    settings: Settings,
    users: UserDb,
    digest: DigestServer,
    guard: Guard,
    store: Store,
    /// SipHash state with the secret and the To-tag label absorbed once ([`Registrar::to_tag`]).
    to_tag_key: std::hash::DefaultHasher,
    /// The Date of the last 200: (Unix seconds, header value).
    date_cache: (u64, String),
    /// When the guard's tables are next swept (see [`Registrar::expire`]).
    next_housekeeping: Option<Instant>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish()
    }
}

const MAX_EVENT_USER: usize = 64;
/// How often the brute-force guard's tables are swept for finished windows and blocks.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const MAX_USER_AGENT: usize = 128;

impl Registrar {
    pub fn new(settings: Settings, mut users: UserDb, now: Instant) -> Self {
        users.prepare(&settings.realm);
        let digest = DigestServer::new(
            ServerConfig {
                realm: settings.realm.clone(),
                secret: settings.secret.clone(),
                nonce_ttl: settings.nonce_ttl,
                algorithms: settings.algorithms.clone(),
                qop: true,
                // Checked per user in `authenticate_inner` (the `allow_rfc2069` opt-in).
                allow_no_qop: true,
                max_tracked_nonces: settings.max_tracked_nonces,
            },
            now,
        );
        let guard = Guard::new(GuardConfig {
            max_failures: settings.max_failures,
            window: settings.failure_window,
            block_for: settings.block_for,
            trusted: settings.trusted_networks.clone(),
            max_tracked: settings.max_tracked_sources,
            max_blocked: settings.max_blocked_sources,
            ipv6_prefix: settings.ipv6_prefix,
            max_failures_per_minute: settings.max_failures_per_minute,
            known_for: settings.known_for,
        });
        // The secret and a label, absorbed here once; each tag then hashes only its Call-ID and
        // From tag.
        let mut to_tag_key = std::hash::DefaultHasher::new();
        to_tag_key.write(&settings.secret);
        to_tag_key.write(b"\0to-tag\0");
        Registrar {
            settings,
            users,
            digest,
            guard,
            store: Store::default(),
            to_tag_key,
            date_cache: (0, String::new()),
            next_housekeeping: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn users(&self) -> &UserDb {
        &self.users
    }

    /// Replaces the user database (configuration reload). Bindings of users that no longer exist
    /// are removed; returns true if any were (persist then).
    pub fn set_users(&mut self, mut users: UserDb) -> bool {
        users.prepare(&self.settings.realm);
        self.users = users;
        let before = self.store.count();
        let users = &self.users;
        self.store.retain_aors(|aor| users.get(aor).is_some());
        self.store.count() != before
    }

    pub fn stats(&self) -> Stats {
        Stats {
            aors: self.store.aors(),
            bindings: self.store.count(),
            tracked_sources: self.guard.tracked(),
            blocked_sources: self.guard.blocked(),
            tracked_nonces: self.digest.tracked_nonces(),
        }
    }

    /// True while `ip`'s source (its IPv6 prefix or IPv4 address) is blocked; the transport may
    /// drop its packets before parsing.
    pub fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.guard.is_blocked(ip, now)
    }

    /// The source `ip` is counted as by the guard (its IPv6 prefix or IPv4 address).
    pub fn source_key(&self, ip: IpAddr) -> podpbx_sip::SourceKey {
        self.guard.key(ip)
    }

    // -----------------------------------------------------------------------------------------
    // Authentication
    // -----------------------------------------------------------------------------------------

    /// Authenticates a request (REGISTER, MESSAGE, INVITE...) with the `kind` header pair:
    /// [`AuthKind::Www`] (401) for REGISTER/MESSAGE, [`AuthKind::Proxy`] (407) for INVITE.
    ///
    /// * No credentials for our realm, a non-Digest scheme: challenge, not a failure.
    /// * Wrong response and unknown user: the same fresh challenge (no user enumeration); both
    ///   counted as failures of the source and logged with the user tried.
    /// * Right response from outside the user's allowed networks: treated exactly like a wrong
    ///   password towards the client; logged as `source_not_allowed`.
    /// * Right response but stale nonce, or reused nonce/nc (Dahua/Hikvision doorbells resend
    ///   the previous Authorization on refresh): challenge with `stale=true`, never a failure.
    /// * Malformed credentials: `400`, counted as a failure.
    /// * The failure reaching `max_failures` blocks the source: `Drop` from then on.
    pub fn authenticate(
        &mut self,
        now: Instant,
        req: &Message,
        flow: Flow,
        kind: AuthKind,
    ) -> AuthCheck {
        self.authenticate_inner(now, req, flow, kind, None)
    }

    fn authenticate_inner(
        &mut self,
        now: Instant,
        req: &Message,
        flow: Flow,
        kind: AuthKind,
        aor: Option<&str>,
    ) -> AuthCheck {
        let ip = flow.remote.ip();
        let mut events = Vec::new();
        if self.is_blocked(ip, now) {
            return AuthCheck {
                result: AuthResult::Drop,
                events,
            };
        }
        let method = req.method().map_or("", Method::as_str);
        let mut chosen = None;
        let mut malformed = false;
        for value in req.header_value_slices(kind.credentials_header_name()) {
            match Credentials::parse(value) {
                Ok(c) if c.realm == self.settings.realm => {
                    chosen = Some(c);
                    break;
                }
                // Credentials for another realm (another proxy's), or another scheme (RFC 4475
                // regaut01): ignore; if nothing is left, challenge.
                Ok(_) | Err(DigestParseError::NotDigest(_)) => {}
                Err(DigestParseError::Malformed(_)) => malformed = true,
            }
        }
        let ev = |kind_: SecurityEventKind, user: Option<&str>| SecurityEvent {
            kind: kind_,
            source: ip,
            port: flow.remote.port(),
            transport: flow.transport,
            user: user.map(sanitize_user),
            aor: aor.map(sanitize_user),
            method: method.to_string(),
            failures: None,
            blocked_secs: None,
        };
        let Some(creds) = chosen else {
            if malformed {
                events.push(ev(SecurityEventKind::MalformedCredentials, None));
                if let Some(r) = self.count_failure(now, ip, None, &ev, &mut events) {
                    return AuthCheck { result: r, events };
                }
                return AuthCheck {
                    result: AuthResult::BadRequest {
                        reason: "Malformed Authorization",
                    },
                    events,
                };
            }
            return AuthCheck {
                result: self.challenge(now, kind, false),
                events,
            };
        };
        let name = Some(&*creds.username);
        // Credentials computed for another Request-URI are not for this request (RFC 3261
        // §22.4, RFC 7616 §3.4.6): a sniffed or relayed answer must not authorise a different
        // target. Checked before any hashing.
        if !digest_uri_matches(&creds.uri, req) {
            events.push(ev(SecurityEventKind::DigestUriMismatch, name));
            if let Some(r) = self.count_failure(now, ip, name, &ev, &mut events) {
                return AuthCheck { result: r, events };
            }
            return AuthCheck {
                result: AuthResult::BadRequest {
                    reason: "Authorization URI Mismatch",
                },
                events,
            };
        }
        let user = self.users.get(&creds.username);
        // RFC 2069 answers (no qop, no client nonce, no nonce count) only from users whose
        // device needs them; for anyone else they are malformed (400, counted), exactly as for
        // an unknown user, so the answer reveals nothing about who exists.
        if creds.qop.is_none() && !user.is_some_and(|u| u.allow_rfc2069) {
            events.push(ev(SecurityEventKind::MalformedCredentials, name));
            if let Some(r) = self.count_failure(now, ip, name, &ev, &mut events) {
                return AuthCheck { result: r, events };
            }
            return AuthCheck {
                result: AuthResult::BadRequest {
                    reason: "Digest Without qop",
                },
                events,
            };
        }
        // Past the global failure cap, sources without a recent success are not verified:
        // their guess cannot succeed, and they cannot tell (same challenge as a wrong password).
        if self.guard.over_global_cap(ip, now) {
            if self.guard.take_cap_report() {
                events.push(ev(SecurityEventKind::GlobalCapReached, None));
            }
            events.push(ev(SecurityEventKind::UncheckedOverCap, name));
            if let Some(r) = self.count_failure(now, ip, name, &ev, &mut events) {
                return AuthCheck { result: r, events };
            }
            return AuthCheck {
                result: self.challenge(now, kind, false),
                events,
            };
        }
        let allowed = user.is_none_or(|u| u.allowed_from(ip));
        let outcome = self
            .digest
            .verify(now, &creds, method, &req.body, user.map(|u| &u.secret));
        let outcome = match outcome {
            VerifyOutcome::Ok { username } if allowed => {
                self.guard.record_success(ip, now);
                return AuthCheck {
                    result: AuthResult::Authenticated { user: username },
                    events,
                };
            }
            other => other,
        };
        let failure = match &outcome {
            VerifyOutcome::Ok { .. } => Some(SecurityEventKind::SourceNotAllowed),
            VerifyOutcome::Stale | VerifyOutcome::Replay => {
                tracing::debug!(source = %flow.remote, user = %sanitize_user(&creds.username), ?outcome, "stale or reused nonce, re-challenging");
                None
            }
            VerifyOutcome::BadResponse => Some(SecurityEventKind::AuthFailed),
            VerifyOutcome::UnknownUser => Some(SecurityEventKind::UnknownUser),
            VerifyOutcome::Malformed => Some(SecurityEventKind::MalformedCredentials),
            VerifyOutcome::WrongRealm => None,
        };
        let Some(kind_) = failure else {
            let stale = matches!(outcome, VerifyOutcome::Stale | VerifyOutcome::Replay);
            return AuthCheck {
                result: self.challenge(now, kind, stale),
                events,
            };
        };
        events.push(ev(kind_, name));
        if let Some(r) = self.count_failure(now, ip, name, &ev, &mut events) {
            return AuthCheck { result: r, events };
        }
        let result = if kind_ == SecurityEventKind::MalformedCredentials {
            AuthResult::BadRequest {
                reason: "Malformed Authorization",
            }
        } else {
            self.challenge(now, kind, false)
        };
        AuthCheck { result, events }
    }

    /// Counts a failure; `Some(Drop)` if it started a block (with the `Blocked` event added).
    fn count_failure(
        &mut self,
        now: Instant,
        ip: IpAddr,
        user: Option<&str>,
        ev: &dyn Fn(SecurityEventKind, Option<&str>) -> SecurityEvent,
        events: &mut Vec<SecurityEvent>,
    ) -> Option<AuthResult> {
        let counted = self.guard.record_failure(ip, now);
        if self.guard.take_cap_report() {
            events.push(ev(SecurityEventKind::GlobalCapReached, None));
        }
        let Counted::Blocked(n) = counted else {
            return None;
        };
        let mut e = ev(SecurityEventKind::Blocked, user);
        e.failures = Some(n);
        e.blocked_secs = Some(self.guard.block_for().as_secs());
        events.push(e);
        Some(AuthResult::Drop)
    }

    fn challenge(&mut self, now: Instant, kind: AuthKind, stale: bool) -> AuthResult {
        AuthResult::Challenge {
            kind,
            values: self.digest.challenge_values(now, stale),
        }
    }

    // -----------------------------------------------------------------------------------------
    // REGISTER
    // -----------------------------------------------------------------------------------------

    /// Handles a REGISTER (RFC 3261 §10.3). `now` drives expiry timers, `wall` the persisted
    /// expiry and the Date header. See the crate documentation for every behaviour choice.
    pub fn handle_register(
        &mut self,
        now: Instant,
        wall: SystemTime,
        req: &Message,
        flow: Flow,
    ) -> Outcome {
        if self.is_blocked(flow.remote.ip(), now) {
            return Outcome::reply(Reply::Drop);
        }
        let bad = |reason| Outcome::reply(Reply::BadRequest { reason });
        if req.method() != Some(&Method::Register) {
            return bad("Not REGISTER");
        }
        let Ok(to) = req.to_ref() else {
            return bad("Malformed To");
        };
        let Some(aor) = to
            .uri
            .user
            .as_ref()
            .and_then(|u| std::str::from_utf8(u).ok())
            .filter(|u| !u.is_empty())
        else {
            return bad("To Without User");
        };
        if !self.serves(to.uri.host.as_ref()) {
            return Outcome::reply(Reply::NotFound);
        }
        let Ok(call_id) = req.call_id_ref() else {
            return bad("Malformed Call-ID");
        };
        // Borrowed: copied only into a binding this request creates or changes.
        let call_id = String::from_utf8_lossy(call_id);
        let Ok(cseq) = req.cseq() else {
            return bad("Malformed CSeq");
        };
        let cseq = cseq.seq;
        // A malformed Expires header counts as absent (the default applies; RFC 3261 §20.19
        // suggests treating it as 3600), so `Contact: *` with it is a 400.
        let expires_hdr = req.expires().ok().flatten();

        let auth = self.authenticate_inner(now, req, flow, AuthKind::Www, Some(aor));
        let mut out = Outcome {
            reply: Reply::Drop,
            changed: false,
            refresh_only: false,
            events: auth.events,
            aor: Some(aor.to_owned()),
        };
        let user = match auth.result {
            AuthResult::Authenticated { user } => user,
            other => {
                out.reply = other.into_reply().unwrap_or(Reply::Drop);
                return out;
            }
        };
        // The digest username must be the To user: authentication is by the auth username and
        // the binding goes to the To AOR; the From user is never looked at (doorbells that put
        // another name in From would otherwise loop on 401).
        if user != aor {
            out.events.push(SecurityEvent {
                kind: SecurityEventKind::IdentityMismatch,
                source: flow.remote.ip(),
                port: flow.remote.port(),
                transport: flow.transport,
                user: Some(sanitize_user(&user)),
                aor: Some(sanitize_user(aor)),
                method: "REGISTER".into(),
                failures: None,
                blocked_secs: None,
            });
            out.reply = Reply::Forbidden {
                reason: "Forbidden",
            };
            return out;
        }
        // A user required to use TLS registers only over TLS: a binding over another transport
        // would route its calls (and SDES keys) in clear text.
        let account = self.users.get(&user);
        let required = account.and_then(|u| u.required_transport);
        let max_contacts = account.map_or(1, |u| u.max_contacts.max(1));
        if let Some(required) = required {
            if flow.transport != required {
                out.reply = Reply::Forbidden {
                    reason: "Transport Not Allowed",
                };
                return out;
            }
        }
        // Parsed once authenticated: half the REGISTERs are answered with a challenge, which
        // needs no contact (the core has validated the Contact header before this anyway).
        let Ok(contacts) = req.contacts_ref() else {
            out.reply = Reply::BadRequest {
                reason: "Malformed Contact",
            };
            return out;
        };

        // Expired bindings of this AOR are gone before anything is listed or counted.
        let (checked_out, mut list) = self.store.check_out(aor);
        let before = list.len();
        list.retain(|b| !b.is_expired(now));
        out.changed = list.len() != before;

        let result = self.apply(
            now,
            wall,
            req,
            flow,
            &call_id,
            cseq,
            expires_hdr,
            contacts,
            max_contacts,
            &mut list,
        );
        match result {
            Ok(change) => {
                // Expired bindings dropped above are a structural change too.
                out.refresh_only = !out.changed && change == Change::Refresh;
                out.changed |= change != Change::None;
            }
            Err(reply) => {
                self.store.check_in(aor, checked_out, list);
                out.reply = reply;
                return out;
            }
        }
        let now_list: Vec<String> = if list.len() == 1 {
            vec![list[0].contact_value(now)]
        } else {
            let mut sorted: Vec<&Binding> = list.iter().collect();
            sorted.sort_by_key(|b| (b.registered_at, b.id));
            sorted.iter().map(|b| b.contact_value(now)).collect()
        };
        self.store.check_in(aor, checked_out, list);
        out.reply = Reply::Ok {
            contacts: now_list,
            date: self.date(wall),
        };
        out
    }

    /// Applies the Contact changes of an authenticated REGISTER to `list` (the AOR's unexpired
    /// bindings). `Ok(what changed)`, or `Err(reply)` leaving `list` untouched.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        now: Instant,
        wall: SystemTime,
        req: &Message,
        flow: Flow,
        call_id: &str,
        cseq: u32,
        expires_hdr: Option<u32>,
        contacts: Option<&ContactList>,
        max_contacts: usize,
        list: &mut Vec<Binding>,
    ) -> Result<Change, Reply> {
        // Same Call-ID with a CSeq not above the stored one: out of order (RFC 3261 §10.3 step
        // 7 says "do not update"); we answer 200 with the current bindings, changing nothing.
        let out_of_order = |b: &Binding| b.call_id == call_id && b.cseq >= cseq;
        let cs = match contacts {
            None => return Ok(Change::None), // a query
            Some(ContactList::Star) => {
                if expires_hdr != Some(0) {
                    return Err(Reply::BadRequest {
                        reason: "Contact * Requires Expires: 0",
                    });
                }
                if list.iter().any(out_of_order) {
                    return Ok(Change::None);
                }
                let changed = !list.is_empty();
                list.clear();
                return Ok(if changed {
                    Change::Structural
                } else {
                    Change::None
                });
            }
            Some(ContactList::List(cs)) => cs,
        };
        let s = &self.settings;
        let mut wanted = Vec::with_capacity(cs.len());
        for c in cs {
            if !c.addr.uri.is_sip() {
                return Err(Reply::BadRequest {
                    reason: "Unsupported Contact URI",
                });
            }
            let Ok(uri) = std::str::from_utf8(&c.addr.uri.raw) else {
                return Err(Reply::BadRequest {
                    reason: "Malformed Contact",
                });
            };
            let expires = c.expires().or(expires_hdr).unwrap_or(s.default_expires);
            if expires != 0 && expires < s.min_expires {
                return Err(Reply::IntervalTooBrief {
                    min_expires: s.min_expires,
                });
            }
            let instance = c.addr.params.get_ref("+sip.instance").and_then(|v| {
                let v = std::str::from_utf8(v).ok()?.trim().trim_matches('"');
                (!v.is_empty()).then_some(v)
            });
            let reg_id = instance.as_ref().and(
                c.addr
                    .params
                    .get_ref("reg-id")
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok()),
            );
            wanted.push(Wanted {
                uri,
                expires: expires.min(s.max_expires),
                q: c.q(),
                instance,
                reg_id,
                bound: None,
            });
        }
        if wanted
            .iter()
            .any(|w| list.iter().any(|b| same_binding(b, w) && out_of_order(b)))
        {
            return Ok(Change::None);
        }
        // Distinct contacts this request wants bound (a few: counted in place).
        let distinct = wanted
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                w.expires > 0
                    && !wanted[..*i]
                        .iter()
                        .any(|d| d.expires > 0 && same_wanted(d, w))
            })
            .count();
        if distinct > max_contacts {
            return Err(Reply::Forbidden {
                reason: "Too Many Contacts",
            });
        }
        let ua_header = req.header(HeaderName::UserAgent);
        let ua_text = ua_header.as_deref().map(String::from_utf8_lossy);
        let user_agent = ua_text.as_deref().map(|ua| truncated(ua, MAX_USER_AGENT));
        let qualify_at = self.settings.qualify_interval.map(|i| crate::later(now, i));
        let mut change = Change::None;
        for w in wanted.iter_mut() {
            let idx = list.iter().position(|b| same_binding(b, w));
            if w.expires == 0 {
                if let Some(i) = idx {
                    list.remove(i);
                    change = Change::Structural;
                }
                continue;
            }
            let life = Duration::from_secs(u64::from(w.expires));
            match idx {
                Some(i) => {
                    let b = &mut list[i];
                    let same = b.contact_uri == w.uri
                        && b.flow == flow
                        && b.q == w.q
                        && b.instance.as_deref() == w.instance
                        && b.reg_id == w.reg_id;
                    change = change.max(if same {
                        Change::Refresh
                    } else {
                        Change::Structural
                    });
                    // Copied only when changed: a refresh usually repeats them all.
                    set_str(&mut b.contact_uri, w.uri);
                    b.expires_at = now + life;
                    b.expires_at_wall = wall + life;
                    b.q = w.q;
                    set_opt_str(&mut b.instance, w.instance);
                    b.reg_id = w.reg_id;
                    set_str(&mut b.call_id, call_id);
                    b.cseq = cseq;
                    b.flow = flow;
                    set_opt_str(&mut b.user_agent, user_agent);
                    b.reachable = true;
                    b.qualify_failures = 0;
                    if b.next_qualify.is_none() {
                        b.next_qualify = qualify_at;
                    }
                    w.bound = Some(b.id);
                }
                None => {
                    change = Change::Structural;
                    let id = self.store.next_id();
                    w.bound = Some(id);
                    list.push(Binding {
                        id,
                        contact_uri: w.uri.to_owned(),
                        expires_at: now + life,
                        expires_at_wall: wall + life,
                        q: w.q,
                        instance: w.instance.map(str::to_owned),
                        reg_id: w.reg_id,
                        call_id: call_id.to_owned(),
                        cseq,
                        flow,
                        registered_at: wall,
                        user_agent: user_agent.map(str::to_owned),
                        reachable: true,
                        qualify_failures: 0,
                        next_qualify: qualify_at,
                    });
                }
            }
        }
        // Over the limit: evict the oldest registrations not refreshed or added by this request.
        // Exactly those (not "carries this Call-ID and CSeq": a client reusing both for another
        // contact would keep every binding and grow past the limit).
        let touched = |b: &Binding| wanted.iter().any(|w| w.bound == Some(b.id));
        while list.len() > max_contacts {
            let victim = list
                .iter()
                .enumerate()
                .filter(|(_, b)| !touched(b))
                .min_by_key(|(_, b)| (b.registered_at, b.id))
                .map(|(i, _)| i);
            let Some(i) = victim else { break };
            let b = list.remove(i);
            change = Change::Structural;
            tracing::debug!(contact = %b.contact_uri, "max contacts reached, evicting the oldest binding");
        }
        Ok(change)
    }

    fn serves(&self, host: Option<&Host>) -> bool {
        if self.settings.domains.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        let h = match host {
            Host::Name(n) => String::from_utf8_lossy(n).to_ascii_lowercase(),
            Host::V4(a) => a.to_string(),
            Host::V6(a) => a.to_string(),
        };
        self.settings.domains.iter().any(|d| {
            let d = d.trim().trim_start_matches('[').trim_end_matches(']');
            match (d.parse::<IpAddr>(), host.ip()) {
                (Ok(a), Some(b)) => a == b,
                _ => d.eq_ignore_ascii_case(&h),
            }
        })
    }

    // -----------------------------------------------------------------------------------------
    // Bindings
    // -----------------------------------------------------------------------------------------

    /// Unexpired bindings of `aor`: reachable first, then by q (absent = 1.0), newest first.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        self.store.lookup(aor, now)
    }

    /// Every AOR with its bindings (including expired ones not yet purged by [`Self::expire`]).
    pub fn all_bindings(&self) -> impl Iterator<Item = (&str, &Binding)> {
        self.store
            .iter()
            .flat_map(|(aor, l)| l.iter().map(move |b| (aor, b)))
    }

    /// Removes expired bindings (and stale housekeeping state); returns the removed bindings
    /// with their AOR. Non-empty means: persist.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Binding)> {
        // The guard's tables are swept by walking them: at most once per HOUSEKEEPING, not on
        // every timer event of the signalling loop (they are bounded without it).
        if self.next_housekeeping.is_none_or(|t| now >= t) {
            self.next_housekeeping = Some(crate::later(now, HOUSEKEEPING));
            self.guard.purge(now);
        }
        self.digest.purge(now);
        self.store.expire(now)
    }

    /// When [`Self::expire`] or [`Self::due_qualifies`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.store.poll_timeout()
    }

    /// Bindings to probe now (each returned once per qualify interval).
    pub fn due_qualifies(&mut self, now: Instant) -> Vec<QualifyTarget> {
        match self.settings.qualify_interval {
            Some(i) => self.store.due_qualifies(now, i),
            None => Vec::new(),
        }
    }

    /// Records a probe result. Returns `Some(reachable)` when the binding's reachability changed
    /// (a change worth persisting and logging), `None` otherwise or for an unknown id.
    pub fn qualify_result(&mut self, binding_id: u64, ok: bool) -> Option<bool> {
        let max = self.settings.qualify_max_failures.max(1);
        let b = self.store.find_mut(binding_id)?;
        let was = b.reachable;
        if ok {
            b.qualify_failures = 0;
            b.reachable = true;
        } else {
            b.qualify_failures = b.qualify_failures.saturating_add(1);
            if b.qualify_failures >= max {
                b.reachable = false;
            }
        }
        (b.reachable != was).then_some(b.reachable)
    }

    // -----------------------------------------------------------------------------------------
    // Persistence
    // -----------------------------------------------------------------------------------------

    /// The state file's content. The registrar never writes it: the shell does, off the event
    /// loop ([`crate::write_atomic`]).
    pub fn serialize(&self) -> Result<Vec<u8>, PersistError> {
        // Compact and written directly: this runs on every change burst over every binding.
        Ok(persist::write_file(self.store.count(), self.all_bindings()))
    }

    /// Replaces the bindings with those of a state file's content (see [`Registrar::serialize`]),
    /// each with its remaining lifetime (`wall_now` against the saved wall-clock expiry; capped
    /// at `max_expires` in case the clock went back). Expired bindings, bindings of unknown users
    /// and those beyond a user's `max_contacts` are dropped. `Err(why)` when `data` is not a
    /// bindings file (the registrar then has no bindings); reading the file and moving a corrupt
    /// one aside is the shell's part ([`crate::load_file`]).
    pub fn restore(
        &mut self,
        data: &[u8],
        now: Instant,
        wall_now: SystemTime,
    ) -> Result<LoadReport, String> {
        let mut report = LoadReport::default();
        let file = match persist::parse(data) {
            Ok(f) => f,
            Err(why) => {
                self.store.clear();
                return Err(why);
            }
        };
        self.store.clear();
        let max_life = Duration::from_secs(u64::from(self.settings.max_expires));
        let qualify_at = self.settings.qualify_interval.map(|i| crate::later(now, i));
        let mut by_aor: HashMap<String, Vec<Binding>> = HashMap::new();
        for sb in file.bindings {
            let expires_wall = persist::from_unix_ms(sb.expires_unix_ms);
            let remaining = expires_wall
                .duration_since(wall_now)
                .unwrap_or(Duration::ZERO)
                .min(max_life);
            if remaining.is_zero() || self.users.get(&sb.aor).is_none() || sb.contact.is_empty() {
                report.dropped += 1;
                continue;
            }
            let id = self.store.next_id();
            by_aor.entry(sb.aor).or_default().push(Binding {
                id,
                contact_uri: sb.contact,
                expires_at: now + remaining,
                expires_at_wall: wall_now + remaining,
                q: sb.q,
                instance: sb.instance,
                reg_id: sb.reg_id,
                call_id: sb.call_id,
                cseq: sb.cseq,
                flow: sb.flow.into(),
                registered_at: persist::from_unix_ms(sb.registered_unix_ms),
                user_agent: sb.user_agent,
                reachable: sb.reachable,
                qualify_failures: 0,
                next_qualify: qualify_at,
            });
        }
        for (aor, mut list) in by_aor {
            let max = self.users.get(&aor).map_or(1, |u| u.max_contacts.max(1));
            while list.len() > max {
                let Some(i) = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| (b.registered_at, b.id))
                    .map(|(i, _)| i)
                else {
                    break;
                };
                list.remove(i);
                report.dropped += 1;
            }
            self.store.put(&aor, list);
        }
        report.loaded = self.store.count();
        Ok(report)
    }

    // -----------------------------------------------------------------------------------------
    // Responses
    // -----------------------------------------------------------------------------------------

    /// Builds the response bytes for `reply` to `req` (Via/From/To/Call-ID/CSeq copied by the
    /// SIP builder, a To tag derived from Call-ID and From tag so retransmissions match), or
    /// `None` for [`Reply::Drop`].
    pub fn response_bytes(&self, reply: &Reply, req: &Message, flow: &Flow) -> Option<Bytes> {
        let (status, reason) = reply.status()?;
        let tag = self.to_tag_hex(req);
        // The headers written below, so that the buffer fits the response (a 200 is kept by
        // its transaction).
        let line = |name: &str, v: &str| name.len() + v.len() + 4;
        let extra = match reply {
            Reply::Challenge { kind, values } => values
                .iter()
                .map(|v| line(kind.challenge_header(), v))
                .sum(),
            Reply::Ok { contacts, date } => {
                contacts.iter().map(|c| line("Contact", c)).sum::<usize>() + line("Date", date)
            }
            _ => 32,
        };
        let mut b =
            ResponseBuilder::with_room(req, status.code(), reason, Some(flow.remote), extra)
                .to_tag(std::str::from_utf8(&tag).unwrap_or_default());
        // The extra headers written from the reply itself ([`Reply::headers`] without copies).
        match reply {
            Reply::Challenge { kind, values } => {
                for v in values {
                    b = b.header(kind.challenge_header(), v);
                }
            }
            Reply::Ok { contacts, date } => {
                for c in contacts {
                    b = b.header("Contact", c);
                }
                b = b.header("Date", date);
            }
            Reply::IntervalTooBrief { min_expires } => {
                b = b.header("Min-Expires", &min_expires.to_string());
            }
            _ => {}
        }
        Some(b.build())
    }

    /// [`http_date`] of `wall`, formatted once per second.
    fn date(&mut self, wall: SystemTime) -> String {
        let secs = persist::unix_ms(wall) / 1000;
        if self.date_cache.0 != secs || self.date_cache.1.is_empty() {
            self.date_cache = (secs, http_date(wall));
        }
        self.date_cache.1.clone()
    }

    /// A To tag, stable for one Call-ID and From tag.
    pub fn to_tag(&self, req: &Message) -> String {
        String::from_utf8_lossy(&self.to_tag_hex(req)).into_owned()
    }

    /// [`Self::to_tag`] as 16 hex digits: SipHash (std's `DefaultHasher`, a keyed PRF) over the
    /// secret, a label, the Call-ID, 0 and the From tag. It was MD5 (one block per response,
    /// ~2 % of a REGISTER round); a tag needs to be stable within the process and unlikely to
    /// repeat, not a cryptographic digest.
    fn to_tag_hex(&self, req: &Message) -> [u8; 16] {
        let mut h = self.to_tag_key.clone();
        h.write(req.call_id_ref().unwrap_or_default());
        if let Some(tag) = req.from_ref().ok().and_then(|f| f.tag_ref()) {
            h.write_u8(0);
            h.write(tag);
        }
        let d = h.finish().to_be_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in d.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        out
    }
}

/// True if an existing binding is the one a requested contact refers to: same
/// (`+sip.instance`, `reg-id`) when both carry them (RFC 5626), else the same URI.
fn same_binding(b: &Binding, w: &Wanted) -> bool {
    match (&b.instance, b.reg_id, &w.instance, w.reg_id) {
        (Some(bi), Some(br), Some(wi), Some(wr)) => bi == wi && br == wr,
        _ => uri_eq(&b.contact_uri, w.uri),
    }
}

fn same_wanted(a: &Wanted, b: &Wanted) -> bool {
    match (&a.instance, a.reg_id, &b.instance, b.reg_id) {
        (Some(ai), Some(ar), Some(bi), Some(br)) => ai == bi && ar == br,
        _ => uri_eq(a.uri, b.uri),
    }
}

/// URI equality, approximating RFC 3261 §19.1.4: scheme, host and parameters compare
/// case-insensitively, the user part exactly. Unparseable URIs compare as raw strings.
fn uri_eq(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (uri_key(a), uri_key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn uri_key(s: &str) -> Option<String> {
    let u = Uri::parse(Bytes::copy_from_slice(s.as_bytes())).ok()?;
    if !u.is_sip() {
        return None;
    }
    let host = u
        .host
        .as_ref()
        .map(|h| h.to_string().to_ascii_lowercase())
        .unwrap_or_default();
    Some(format!(
        "{}:{}@{}:{}{}",
        String::from_utf8_lossy(&u.scheme).to_ascii_lowercase(),
        String::from_utf8_lossy(u.user.as_deref().unwrap_or_default()),
        host,
        u.port.map(|p| p.to_string()).unwrap_or_default(),
        String::from_utf8_lossy(&u.params).to_ascii_lowercase()
    ))
}

/// True when the digest `uri` names the Request-URI: the same text, or an equivalent URI
/// (RFC 3261 §19.1.4: host case, escapes, unknown parameters on one side only). One known
/// misspelling is tolerated: the Request-URI's text with the brackets of its IPv6 reference
/// left out (`sip:1002@::1:5060` for `sip:1002@[::1]:5060`; SIPp 3.6 writes its digest URIs
/// so). It names the same resource, so it cannot carry credentials to another request.
fn digest_uri_matches(digest_uri: &str, req: &Message) -> bool {
    let Ok(ruri) = req.request_uri_ref() else {
        return false;
    };
    if ruri.raw.as_ref() == digest_uri.as_bytes() {
        return true;
    }
    if Uri::parse(Bytes::copy_from_slice(digest_uri.as_bytes())).is_ok_and(|u| u.equivalent(ruri)) {
        return true;
    }
    matches!(ruri.host, Some(Host::V6(_)))
        && ruri
            .raw
            .iter()
            .filter(|b| !matches!(b, b'[' | b']'))
            .eq(digest_uri.as_bytes().iter())
}

/// Printable, bounded user name for logs.
fn sanitize_user(s: &str) -> String {
    let printable: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncated(&printable, MAX_EVENT_USER).to_owned()
}

/// `dst = src`, reusing `dst`'s buffer and copying nothing when they are equal.
fn set_str(dst: &mut String, src: &str) {
    if dst != src {
        dst.clear();
        dst.push_str(src);
    }
}

/// [`set_str`] for an optional value.
fn set_opt_str(dst: &mut Option<String>, src: Option<&str>) {
    match (dst.as_mut(), src) {
        (Some(d), Some(s)) => set_str(d, s),
        (None, None) => {}
        (_, s) => *dst = s.map(str::to_owned),
    }
}

/// The first `max_chars` characters of `s`, borrowed.
fn truncated(s: &str, max_chars: usize) -> &str {
    // At most `max_chars` bytes is at most that many characters: no scan.
    if s.len() <= max_chars {
        return s;
    }
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// RFC 1123 date for the Date header, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = persist::unix_ms(t) / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (proleptic Gregorian), days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = DAYS[usize::try_from(days % 7).unwrap_or(0)];
    let mon = MONTHS[usize::try_from(month - 1).unwrap_or(0).min(11)];
    format!("{wd}, {d:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize_user("a\r\nb"), "a??b");
        assert_eq!(sanitize_user(&"x".repeat(500)).len(), MAX_EVENT_USER);
    }
}
