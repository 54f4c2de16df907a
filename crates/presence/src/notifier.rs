//! The notifier side of RFC 6665 subscriptions, sans-IO: SUBSCRIBE in (already authenticated
//! by the caller), responses and NOTIFY requests out, state changes (MWI counts, an
//! extension's dialogs) in, timers by `now`.
//!
//! * A new subscription gets `200` with our tag and the granted `Expires`, then at once a
//!   NOTIFY with the full state (RFC 6665 §4.2.1.2); a refresh in the dialog gets `200` and a
//!   NOTIFY; `Expires: 0` ends it with a last NOTIFY `Subscription-State: terminated`
//!   (§4.2.1.4); so does its expiry (`reason=timeout`).
//! * Unknown packages get `489 Bad Event` with `Allow-Events` (§8.2.1); a too short expiry
//!   `423` with `Min-Expires`; an unknown in-dialog refresh `481`; a refresh from another
//!   address than the subscriber's `403`.
//! * One NOTIFY in flight per subscription: changes while it is out are coalesced into the
//!   next one, which carries the state at that time. A NOTIFY that fails (error response,
//!   timeout) removes the subscription (§4.2.2).
//! * Bounded: at most `max_per_user` subscriptions per subscriber (a new one replaces the
//!   same subscriber's subscription to the same resource from the same contact, else the
//!   subscriber's oldest), at most `max_subscriptions` in all (then `503` with
//!   `Retry-After`); expiry is found through an ordered index (no scans).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use podpbx_sip::ident::{host_of, IdGen};
use podpbx_sip::{Flow, HeaderName, Message, Method, Peer, RequestBuilder, ResponseBuilder};

use crate::dialog_info::{self, Dialog, State};
use crate::mwi::{self, Counts};

/// The event packages podpbx serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Package {
    /// RFC 3842 message waiting.
    MessageSummary,
    /// RFC 4235 dialog state (BLF).
    Dialog,
}

impl Package {
    /// Every package (the `Allow-Events` list).
    pub const ALL: [Package; 2] = [Package::MessageSummary, Package::Dialog];

    /// The event package name.
    pub fn name(self) -> &'static str {
        match self {
            Package::MessageSummary => "message-summary",
            Package::Dialog => "dialog",
        }
    }

    /// The body type of its NOTIFYs.
    pub fn content_type(self) -> &'static str {
        match self {
            Package::MessageSummary => mwi::CONTENT_TYPE,
            Package::Dialog => dialog_info::CONTENT_TYPE,
        }
    }

    /// The `Allow-Events` value.
    pub fn allow_events() -> &'static str {
        "message-summary, dialog"
    }

    /// Reads an `Event` header value: the package and its `id` parameter. `Err` carries the
    /// package named, for the log.
    pub fn parse(value: &[u8]) -> Result<(Package, Option<String>), String> {
        let text = String::from_utf8_lossy(value);
        let mut parts = text.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let id = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("id")
                .then(|| v.trim().to_string())
        });
        let pkg = match name.as_str() {
            "message-summary" => Package::MessageSummary,
            "dialog" => Package::Dialog,
            _ => return Err(name.chars().take(64).collect()),
        };
        Ok((
            pkg,
            id.filter(|i| i.len() <= 64 && i.bytes().all(|b| b.is_ascii_graphic())),
        ))
    }
}

/// Limits and timers.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Subscriptions in all.
    pub max_subscriptions: usize,
    /// Subscriptions of one subscriber (user).
    pub max_per_user: usize,
    /// Shorter non-zero expiries get `423`.
    pub min_expires: Duration,
    /// Longer expiries are cut to this.
    pub max_expires: Duration,
    /// Expiry when the SUBSCRIBE names none.
    pub default_expires: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_subscriptions: 1024,
            max_per_user: 64,
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(3600),
            default_expires: Duration::from_secs(3600),
        }
    }
}

/// Identifies a NOTIFY we sent; report its outcome with [`Notifier::notify_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotifyId(pub u64);

/// A NOTIFY to send as a client transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Report the transaction's outcome with this.
    pub id: NotifyId,
    /// The Via branch written in `data`.
    pub branch: String,
    /// Where it goes.
    pub peer: Peer,
    /// The request.
    pub data: Bytes,
}

/// A response to a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The message.
    pub data: Bytes,
}

/// Why a subscription ended (the `reason` of `Subscription-State: terminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Timeout,
    Deactivated,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Deactivated => "deactivated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DialogKey {
    call_id: Bytes,
    remote_tag: Bytes,
    local_tag: String,
}

#[derive(Debug)]
struct Sub {
    key: DialogKey,
    package: Package,
    event_id: Option<String>,
    subscriber: String,
    resource: String,
    /// Their From (with tag): our To.
    remote_hdr: String,
    /// Their To without tag: our From (we add our tag).
    local_hdr: String,
    remote_target: String,
    route_set: Vec<String>,
    flow: Flow,
    cseq: u32,
    expires_at: Instant,
    /// NOTIFY out and not answered yet.
    in_flight: Option<NotifyId>,
    /// State changed while a NOTIFY was out.
    dirty: bool,
    /// dialog-info version (RFC 4235 §4.1).
    version: u32,
    created: u64,
}

/// Counters for `/metrics` and `podpbx ctl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Subscriptions now.
    pub active: usize,
    /// NOTIFYs sent.
    pub notifies: u64,
    /// SUBSCRIBEs refused at the total bound (503).
    pub refused: u64,
    /// Subscriptions evicted by the per-user bound.
    pub evicted: u64,
    /// SUBSCRIBEs for unknown packages (489).
    pub bad_event: u64,
    /// Subscriptions removed because a NOTIFY failed.
    pub failed: u64,
}

/// The notifier.
pub struct Notifier {
    limits: Limits,
    domain: String,
    user_agent: String,
    ids: IdGen,
    subs: HashMap<u64, Sub>,
    by_dialog: HashMap<DialogKey, u64>,
    by_resource: HashMap<(Package, String), BTreeSet<u64>>,
    by_user: HashMap<String, BTreeSet<u64>>,
    expiry: BTreeSet<(Instant, u64)>,
    in_flight: HashMap<NotifyId, u64>,
    mwi: HashMap<String, Counts>,
    dialogs: HashMap<String, Vec<Dialog>>,
    /// Dialogs gone since the last NOTIFY per entity, reported once as terminated.
    ended: HashMap<String, Vec<Dialog>>,
    out: VecDeque<Outgoing>,
    next_sub: u64,
    next_notify: u64,
    stats: NotifierStats,
}

/// The URI of the first Contact (`None` for `*`, none, or a bad header).
fn first_contact(req: &Message) -> Option<Bytes> {
    match req.contacts().ok()?? {
        podpbx_sip::ContactList::List(l) => l.first().map(|c| c.addr.uri.raw.clone()),
        podpbx_sip::ContactList::Star => None,
    }
}

impl Notifier {
    /// A notifier for `domain` (the host of the accounts and entities in bodies). `ids` makes
    /// tags and branches.
    pub fn new(limits: Limits, domain: &str, user_agent: &str, ids: IdGen) -> Notifier {
        Notifier {
            limits,
            domain: domain.to_string(),
            user_agent: user_agent.to_string(),
            ids,
            subs: HashMap::new(),
            by_dialog: HashMap::new(),
            by_resource: HashMap::new(),
            by_user: HashMap::new(),
            expiry: BTreeSet::new(),
            in_flight: HashMap::new(),
            mwi: HashMap::new(),
            dialogs: HashMap::new(),
            ended: HashMap::new(),
            out: VecDeque::new(),
            next_sub: 0,
            next_notify: 0,
            stats: NotifierStats::default(),
        }
    }

    /// New limits (config reload); existing subscriptions stay until they expire.
    pub fn set_limits(&mut self, limits: Limits, domain: &str, user_agent: &str) {
        self.limits = limits;
        self.domain = domain.to_string();
        self.user_agent = user_agent.to_string();
    }

    /// Counters.
    pub fn stats(&self) -> NotifierStats {
        NotifierStats {
            active: self.subs.len(),
            ..self.stats
        }
    }

    /// The bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether an in-dialog request (a refresh SUBSCRIBE) belongs to one of our subscriptions.
    pub fn owns(&self, req: &Message) -> bool {
        self.key_of(req)
            .is_some_and(|k| self.by_dialog.contains_key(&k))
    }

    fn key_of(&self, req: &Message) -> Option<DialogKey> {
        Some(DialogKey {
            call_id: req.call_id().ok()?,
            remote_tag: req.from_hdr().ok()?.tag()?,
            local_tag: String::from_utf8_lossy(&req.to_hdr().ok()?.tag()?).into_owned(),
        })
    }

    /// The next NOTIFY to send.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    /// When [`Notifier::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Ends expired subscriptions (a last NOTIFY `terminated;reason=timeout` each).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.expiry.first() {
            if t > now {
                break;
            }
            self.expiry.pop_first();
            self.terminate(id, Reason::Timeout);
        }
    }

    fn response(
        &mut self,
        req: &Message,
        flow: &Flow,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        tag: Option<&str>,
    ) -> Response {
        let mut b = ResponseBuilder::new(req, status, reason, Some(flow.remote));
        let own;
        let tag = match tag {
            Some(t) => t,
            None => {
                own = self.ids.token();
                &own
            }
        };
        b = b.to_tag(tag);
        for (n, v) in headers {
            b = b.header(n, v);
        }
        if !self.user_agent.is_empty() {
            b = b.header("Server", &self.user_agent);
        }
        Response {
            status,
            data: b.build(),
        }
    }

    /// The package a SUBSCRIBE asks for, or the `489` to send. Call before authenticating, so
    /// that unknown packages are refused cheaply.
    pub fn package_of(
        &mut self,
        req: &Message,
        flow: &Flow,
    ) -> Result<(Package, Option<String>), Response> {
        let parsed = match req.header(HeaderName::Event) {
            Some(v) => Package::parse(&v),
            None => Err(String::new()),
        };
        parsed.map_err(|name| {
            self.stats.bad_event += 1;
            tracing::debug!(package = %name, "SUBSCRIBE for an unknown event package");
            self.response(
                req,
                flow,
                489,
                "Bad Event",
                &[("Allow-Events", Package::allow_events())],
                None,
            )
        })
    }

    /// A new (out-of-dialog) SUBSCRIBE from authenticated `subscriber` for `resource` (a
    /// mailbox for MWI, an extension for BLF), which the caller has checked exists and may be
    /// watched by `subscriber`.
    pub fn subscribe(
        &mut self,
        now: Instant,
        req: &Message,
        flow: Flow,
        subscriber: &str,
        resource: &str,
    ) -> Response {
        let (package, event_id) = match self.package_of(req, &flow) {
            Ok(p) => p,
            Err(r) => return r,
        };
        if let Some(accept) = req.header(HeaderName::Accept) {
            let a = String::from_utf8_lossy(&accept).to_ascii_lowercase();
            if !a.contains(package.content_type()) && !a.contains("*/*") && !a.trim().is_empty() {
                return self.response(
                    req,
                    &flow,
                    406,
                    "Not Acceptable",
                    &[("Accept", package.content_type())],
                    None,
                );
            }
        }
        let expires = match self.expires_or_reject(req, &flow, None) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let (Ok(from), Ok(to), Ok(call_id)) = (req.from_hdr(), req.to_hdr(), req.call_id()) else {
            return self.response(req, &flow, 400, "Bad Request", &[], None);
        };
        let Some(remote_tag) = from.tag() else {
            return self.response(req, &flow, 400, "Missing From Tag", &[], None);
        };
        let Some(contact) = first_contact(req) else {
            return self.response(req, &flow, 400, "Missing Contact", &[], None);
        };
        let local_tag = self.ids.token();
        let contact_hdr = self.contact(&flow);
        if expires.is_zero() {
            // A fetch: 200, one NOTIFY with the state, terminated.
            let resp = self.response(
                req,
                &flow,
                200,
                "OK",
                &[("Expires", "0"), ("Contact", &contact_hdr)],
                Some(&local_tag),
            );
            let mut sub = self.new_sub(
                req, &flow, package, event_id, subscriber, resource, &from.raw, &to.raw, call_id,
                remote_tag, local_tag, contact, now,
            );
            self.send_notify(&mut sub, Some(Reason::Timeout), now);
            return resp;
        }
        // Bounds: replace the same watch, else evict the subscriber's oldest, else refuse.
        let same = self.by_user.get(subscriber).and_then(|ids| {
            ids.iter().copied().find(|id| {
                self.subs.get(id).is_some_and(|s| {
                    s.package == package
                        && s.resource == resource
                        && s.remote_target.as_bytes() == &contact[..]
                        && s.event_id == event_id
                })
            })
        });
        if let Some(old) = same {
            self.remove(old);
        } else if self.by_user.get(subscriber).map_or(0, BTreeSet::len) >= self.limits.max_per_user
        {
            if let Some(oldest) = self.by_user.get(subscriber).and_then(|ids| {
                ids.iter()
                    .copied()
                    .min_by_key(|id| self.subs.get(id).map_or(0, |s| s.created))
            }) {
                self.stats.evicted += 1;
                tracing::debug!(subscriber, "subscription limit per user: oldest dropped");
                self.terminate(oldest, Reason::Deactivated);
            }
        } else if self.subs.len() >= self.limits.max_subscriptions {
            self.stats.refused += 1;
            tracing::warn!(
                subscriber,
                max = self.limits.max_subscriptions,
                "subscription table full: SUBSCRIBE refused"
            );
            return self.response(
                req,
                &flow,
                503,
                "Service Unavailable",
                &[("Retry-After", "60")],
                None,
            );
        }
        let expires_s = expires.as_secs().to_string();
        let resp = self.response(
            req,
            &flow,
            200,
            "OK",
            &[("Expires", &expires_s), ("Contact", &contact_hdr)],
            Some(&local_tag),
        );
        let mut sub = self.new_sub(
            req, &flow, package, event_id, subscriber, resource, &from.raw, &to.raw, call_id,
            remote_tag, local_tag, contact, now,
        );
        sub.expires_at = now + expires;
        let id = self.next_sub;
        self.next_sub += 1;
        self.send_notify(&mut sub, None, now);
        self.insert(id, sub);
        tracing::info!(
            subscriber,
            resource,
            package = package.name(),
            expires = expires.as_secs(),
            "subscribed"
        );
        resp
    }

    /// A SUBSCRIBE inside one of our subscriptions ([`Notifier::owns`]): refresh or end it.
    pub fn refresh(&mut self, now: Instant, req: &Message, flow: Flow) -> Response {
        let Some(id) = self
            .key_of(req)
            .and_then(|k| self.by_dialog.get(&k).copied())
        else {
            return self.response(req, &flow, 481, "Subscription Does Not Exist", &[], None);
        };
        let (package, local_tag, peer_ip) = match self.subs.get(&id) {
            Some(s) => (s.package, s.key.local_tag.clone(), s.flow.remote.ip()),
            None => {
                return self.response(req, &flow, 481, "Subscription Does Not Exist", &[], None)
            }
        };
        if flow.remote.ip() != peer_ip {
            return self.response(req, &flow, 403, "Forbidden", &[], Some(&local_tag));
        }
        match req.header(HeaderName::Event).map(|v| Package::parse(&v)) {
            Some(Ok((p, _))) if p == package => {}
            _ => {
                return self.response(
                    req,
                    &flow,
                    489,
                    "Bad Event",
                    &[("Allow-Events", Package::allow_events())],
                    Some(&local_tag),
                )
            }
        }
        let expires = match self.expires_or_reject(req, &flow, Some(&local_tag)) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let contact_hdr = self.contact(&flow);
        let resp = self.response(
            req,
            &flow,
            200,
            "OK",
            &[
                ("Expires", &expires.as_secs().to_string()),
                ("Contact", &contact_hdr),
            ],
            Some(&local_tag),
        );
        if expires.is_zero() {
            self.terminate(id, Reason::Timeout);
            return resp;
        }
        let Some(mut sub) = self.take(id) else {
            return resp;
        };
        // A new Contact in the refresh is the new remote target (RFC 6665 §4.1.2.1).
        if let Some(c) = first_contact(req) {
            sub.remote_target = String::from_utf8_lossy(&c).into_owned();
        }
        sub.flow = flow;
        sub.expires_at = now + expires;
        self.send_notify(&mut sub, None, now);
        self.insert(id, sub);
        resp
    }

    /// The outcome of a NOTIFY: its final status, or `None` for a timeout or transport error.
    pub fn notify_result(&mut self, now: Instant, id: NotifyId, status: Option<u16>) {
        let Some(sub_id) = self.in_flight.remove(&id) else {
            return;
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            self.stats.failed += 1;
            tracing::debug!(?status, "NOTIFY failed: subscription removed");
            self.remove(sub_id);
            return;
        }
        let Some(mut sub) = self.take(sub_id) else {
            return;
        };
        sub.in_flight = None;
        if sub.dirty {
            self.send_notify(&mut sub, None, now);
        }
        self.insert(sub_id, sub);
    }

    /// A mailbox's counts (at start and after every change); subscribers are notified when
    /// they changed.
    pub fn set_mwi(&mut self, now: Instant, mailbox: &str, counts: Counts) {
        if self.mwi.get(mailbox) == Some(&counts) {
            return;
        }
        self.mwi.insert(mailbox.to_string(), counts);
        self.notify_resource(now, Package::MessageSummary, mailbox);
    }

    /// Forgets mailboxes not in `keep` (config reload).
    pub fn retain_mailboxes(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.mwi.retain(|m, _| keep(m));
    }

    /// The counts known for a mailbox.
    pub fn mwi(&self, mailbox: &str) -> Option<Counts> {
        self.mwi.get(mailbox).copied()
    }

    /// The current dialogs of an extension or group (empty: idle). Dialogs that disappeared
    /// are reported once more as `terminated`.
    pub fn set_dialogs(&mut self, now: Instant, entity: &str, dialogs: Vec<Dialog>) {
        let old = self.dialogs.remove(entity).unwrap_or_default();
        if old == dialogs {
            if !dialogs.is_empty() {
                self.dialogs.insert(entity.to_string(), dialogs);
            }
            return;
        }
        let gone: Vec<Dialog> = old
            .into_iter()
            .filter(|o| o.state != State::Terminated && !dialogs.iter().any(|d| d.id == o.id))
            .map(|mut o| {
                o.state = State::Terminated;
                o
            })
            .collect();
        if !gone.is_empty()
            && self
                .by_resource
                .contains_key(&(Package::Dialog, entity.to_string()))
        {
            let e = self.ended.entry(entity.to_string()).or_default();
            e.extend(gone);
            // Bounded: only the latest few terminated dialogs are worth telling.
            let n = e.len();
            if n > 8 {
                e.drain(..n - 8);
            }
        }
        if !dialogs.is_empty() {
            self.dialogs.insert(entity.to_string(), dialogs);
        }
        self.notify_resource(now, Package::Dialog, entity);
        self.ended.remove(entity);
    }

    /// Whether anyone watches `resource` for `package`.
    pub fn watched(&self, package: Package, resource: &str) -> bool {
        self.by_resource
            .contains_key(&(package, resource.to_string()))
    }

    /// Entities with dialogs now.
    pub fn dialogs(&self, entity: &str) -> &[Dialog] {
        self.dialogs.get(entity).map_or(&[], Vec::as_slice)
    }

    /// Out-of-dialog NOTIFYs with a mailbox's counts to phones that do not subscribe
    /// (`targets`: contact URI and the flow it registered over). Targets that hold an MWI
    /// subscription for the mailbox are skipped. Their outcome needs no report.
    pub fn unsolicited_mwi(&mut self, mailbox: &str, targets: &[(String, Flow)]) {
        let counts = self.mwi.get(mailbox).copied().unwrap_or_default();
        let subscribed: Vec<std::net::IpAddr> = self
            .by_resource
            .get(&(Package::MessageSummary, mailbox.to_string()))
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| self.subs.get(i))
                    .map(|s| s.flow.remote.ip())
                    .collect()
            })
            .unwrap_or_default();
        for (uri, flow) in targets {
            if subscribed.contains(&flow.remote.ip()) {
                continue;
            }
            let branch = self.ids.branch();
            let account = format!("sip:{mailbox}@{}", self.domain);
            let body = mwi::body(&account, counts);
            let mut b = RequestBuilder::new(&Method::Notify, uri)
                .header(
                    "Via",
                    &format!(
                        "SIP/2.0/{} {}:{};branch={branch};rport",
                        flow.transport.via_token(),
                        host_of(flow.local),
                        flow.local.port()
                    ),
                )
                .header("Max-Forwards", "70")
                .header("From", &format!("<{account}>;tag={}", self.ids.token()))
                .header("To", &format!("<{account}>"))
                .header("Call-ID", &format!("{}@podpbx", self.ids.token()))
                .header("CSeq", "1 NOTIFY")
                .header("Contact", &self.contact(flow))
                .header("Event", "message-summary")
                .header("Subscription-State", "active");
            if !self.user_agent.is_empty() {
                b = b.header("User-Agent", &self.user_agent);
            }
            let data = b.body(mwi::CONTENT_TYPE, body.as_bytes()).build();
            self.next_notify += 1;
            self.stats.notifies += 1;
            self.out.push_back(Outgoing {
                id: NotifyId(self.next_notify),
                branch,
                peer: flow.peer(),
                data,
            });
        }
    }

    /// Subscriptions as JSON lines for `podpbx ctl`.
    pub fn snapshot(&self, now: Instant) -> Vec<serde_json::Value> {
        let mut v: Vec<_> = self
            .subs
            .values()
            .map(|s| {
                serde_json::json!({
                    "subscriber": s.subscriber,
                    "resource": s.resource,
                    "package": s.package.name(),
                    "source": s.flow.remote.to_string(),
                    "expires_in": s.expires_at.saturating_duration_since(now).as_secs(),
                })
            })
            .collect();
        v.sort_by_key(|a| a.to_string());
        v
    }

    // ----- internals ------------------------------------------------------------------

    /// The granted expiry, or the response refusing the request's (400, 423 with Min-Expires).
    fn expires_or_reject(
        &mut self,
        req: &Message,
        flow: &Flow,
        tag: Option<&str>,
    ) -> Result<Duration, Response> {
        self.expires(req).map_err(|(code, reason)| {
            let min = self.limits.min_expires.as_secs().to_string();
            self.response(req, flow, code, reason, &[("Min-Expires", &min)], tag)
        })
    }

    fn expires(&self, req: &Message) -> Result<Duration, (u16, &'static str)> {
        let e = match req.expires() {
            Ok(Some(s)) => Duration::from_secs(s as u64),
            Ok(None) => self.limits.default_expires,
            Err(_) => return Err((400, "Bad Expires")),
        };
        if !e.is_zero() && e < self.limits.min_expires {
            return Err((423, "Interval Too Brief"));
        }
        Ok(e.min(self.limits.max_expires))
    }

    fn contact(&self, flow: &Flow) -> String {
        podpbx_sip::ident::contact("podpbx", flow.local, flow.transport)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_sub(
        &mut self,
        req: &Message,
        flow: &Flow,
        package: Package,
        event_id: Option<String>,
        subscriber: &str,
        resource: &str,
        from_raw: &Bytes,
        to_raw: &Bytes,
        call_id: Bytes,
        remote_tag: Bytes,
        local_tag: String,
        contact: Bytes,
        now: Instant,
    ) -> Sub {
        let route_set = req
            .record_routes()
            .unwrap_or_default()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.raw).into_owned())
            .collect();
        Sub {
            key: DialogKey {
                call_id,
                remote_tag,
                local_tag,
            },
            package,
            event_id,
            subscriber: subscriber.to_string(),
            resource: resource.to_string(),
            remote_hdr: String::from_utf8_lossy(from_raw).into_owned(),
            local_hdr: String::from_utf8_lossy(to_raw).into_owned(),
            remote_target: String::from_utf8_lossy(&contact).into_owned(),
            route_set,
            flow: *flow,
            cseq: 0,
            expires_at: now,
            in_flight: None,
            dirty: false,
            version: 0,
            created: self.next_sub,
        }
    }

    fn insert(&mut self, id: u64, sub: Sub) {
        self.by_dialog.insert(sub.key.clone(), id);
        self.by_resource
            .entry((sub.package, sub.resource.clone()))
            .or_default()
            .insert(id);
        self.by_user
            .entry(sub.subscriber.clone())
            .or_default()
            .insert(id);
        self.expiry.insert((sub.expires_at, id));
        if let Some(n) = sub.in_flight {
            self.in_flight.insert(n, id);
        }
        self.subs.insert(id, sub);
    }

    /// Takes a subscription out of every index (put it back with `insert`).
    fn take(&mut self, id: u64) -> Option<Sub> {
        let sub = self.subs.remove(&id)?;
        self.by_dialog.remove(&sub.key);
        let rk = (sub.package, sub.resource.clone());
        if let Some(set) = self.by_resource.get_mut(&rk) {
            set.remove(&id);
            if set.is_empty() {
                self.by_resource.remove(&rk);
            }
        }
        if let Some(set) = self.by_user.get_mut(&sub.subscriber) {
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&sub.subscriber);
            }
        }
        self.expiry.remove(&(sub.expires_at, id));
        if let Some(n) = sub.in_flight {
            self.in_flight.remove(&n);
        }
        Some(sub)
    }

    fn remove(&mut self, id: u64) {
        self.take(id);
    }

    /// Ends a subscription with a last NOTIFY.
    fn terminate(&mut self, id: u64, reason: Reason) {
        if let Some(mut sub) = self.take(id) {
            // The last NOTIFY goes out even if one is in flight; its answer is not needed.
            sub.in_flight = None;
            let now = sub.expires_at;
            self.send_notify(&mut sub, Some(reason), now);
            if let Some(n) = sub.in_flight.take() {
                self.in_flight.remove(&n);
            }
            tracing::debug!(
                subscriber = sub.subscriber,
                resource = sub.resource,
                reason = reason.as_str(),
                "subscription ended"
            );
        }
    }

    fn notify_resource(&mut self, now: Instant, package: Package, resource: &str) {
        let ids: Vec<u64> = self
            .by_resource
            .get(&(package, resource.to_string()))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            let Some(mut sub) = self.take(id) else {
                continue;
            };
            if sub.in_flight.is_some() {
                sub.dirty = true;
            } else {
                self.send_notify(&mut sub, None, now);
            }
            self.insert(id, sub);
        }
    }

    fn body(&self, sub: &Sub) -> String {
        match sub.package {
            Package::MessageSummary => {
                let account = format!("sip:{}@{}", sub.resource, self.domain);
                mwi::body(
                    &account,
                    self.mwi.get(&sub.resource).copied().unwrap_or_default(),
                )
            }
            Package::Dialog => {
                let entity = format!("sip:{}@{}", sub.resource, self.domain);
                let mut list: Vec<Dialog> =
                    self.ended.get(&sub.resource).cloned().unwrap_or_default();
                list.extend(self.dialogs(&sub.resource).iter().cloned());
                dialog_info::body(&entity, sub.version, &list)
            }
        }
    }

    /// Builds and queues a NOTIFY in `sub`'s dialog; `end` makes it the last one.
    fn send_notify(&mut self, sub: &mut Sub, end: Option<Reason>, now: Instant) {
        let body = self.body(sub);
        sub.version = sub.version.wrapping_add(1);
        sub.cseq += 1;
        sub.dirty = false;
        let state = match end {
            Some(r) => format!("terminated;reason={}", r.as_str()),
            None => format!(
                "active;expires={}",
                sub.expires_at
                    .saturating_duration_since(now)
                    .as_secs()
                    .max(1)
            ),
        };
        let branch = self.ids.branch();
        let flow = sub.flow;
        let mut b = RequestBuilder::new(&Method::Notify, &sub.remote_target)
            .header(
                "Via",
                &format!(
                    "SIP/2.0/{} {}:{};branch={branch};rport",
                    flow.transport.via_token(),
                    host_of(flow.local),
                    flow.local.port()
                ),
            )
            .header("Max-Forwards", "70");
        for r in &sub.route_set {
            b = b.header("Route", r);
        }
        let event = match &sub.event_id {
            Some(i) => format!("{};id={i}", sub.package.name()),
            None => sub.package.name().to_string(),
        };
        b = b
            .header(
                "From",
                &format!("{};tag={}", sub.local_hdr, sub.key.local_tag),
            )
            .header("To", &sub.remote_hdr)
            .header("Call-ID", &String::from_utf8_lossy(&sub.key.call_id))
            .header("CSeq", &format!("{} NOTIFY", sub.cseq))
            .header("Contact", &self.contact(&flow))
            .header("Event", &event)
            .header("Subscription-State", &state);
        if !self.user_agent.is_empty() {
            b = b.header("User-Agent", &self.user_agent);
        }
        let data = b.body(sub.package.content_type(), body.as_bytes()).build();
        self.next_notify += 1;
        let id = NotifyId(self.next_notify);
        sub.in_flight = Some(id);
        self.stats.notifies += 1;
        self.out.push_back(Outgoing {
            id,
            branch,
            peer: flow.peer(),
            data,
        });
    }
}

/// Our address a NOTIFY comes from (for tests and logs).
pub fn local_of(o: &Outgoing) -> Option<SocketAddr> {
    let m = Message::parse(o.data.clone(), podpbx_sip::Framing::Datagram).ok()?;
    let v = m.top_via().ok()?;
    let ip = v.host.ip()?;
    Some(SocketAddr::new(ip, v.port.unwrap_or(5060)))
}

#[cfg(test)]
mod tests;
