//! The signalling core: a sans-IO state machine fed parsed messages, DNS answers, media
//! events and `now`, producing [`Output`]s for the shell: messages to send, DNS lookups, the
//! bindings file to write and CDRs to append. It never reads the clock, a random source, a
//! socket or a file: sockets, tokio, the resolver and the writer threads live in `server/`,
//! `dns.rs` and `cdr.rs`; tags, branches and Call-IDs come from a seeded [`IdGen`]. So
//! everything here runs in virtual time (`crate::sim`).

use crate::logging::RateLimit;
use crate::overload::{Load, Overload, Reason};
use crate::owners::{Owner, Owners};
use crate::stats::Stats;
use crate::transport::Flow;
use crate::trunks::Trunks;
use bytes::{Bytes, BytesMut};
use podpbx_registrar::{AuthKind, AuthResult, Registrar, Reply, SecurityEvent};

use podpbx_sip::checks::{check_request, Capabilities, Rejection};
use podpbx_sip::ident::host_of;
use podpbx_sip::transaction::{ClientTxId, TxId};
use podpbx_sip::transaction::{
    Limits, Peer, RequestDisposition, ResponseDisposition, ServerTxId, Timers, TransactionLayer,
    TxEvent, TxStats,
};
use podpbx_sip::{HeaderName, IdGen, Message, Method, RequestBuilder, ResponseBuilder, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, debug_span, info, warn};

/// Something the core wants the I/O shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send bytes to `peer` (over its transport, reusing connection `peer.conn` when alive).
    Send { peer: Peer, data: Bytes },
    /// Look up `name` (fully qualified, no trailing dot) for records of `rtype` and feed the
    /// answer to [`Core::dns_answer`] with `id`. Performed off the signalling loop; it may take
    /// seconds.
    Resolve {
        id: u64,
        name: String,
        rtype: podpbx_trunk::RecordType,
    },
    /// Replace the bindings file `path` with `data` (atomically, off the signalling loop; a
    /// newer one supersedes one not yet written).
    SaveBindings { path: PathBuf, data: Vec<u8> },
    /// A call ended: append its CDR to `file` (off the signalling loop).
    Cdr {
        file: PathBuf,
        cdr: Box<podpbx_b2bua::Cdr>,
    },
    /// Something home automation may want to know (webhooks); the shell stamps and delivers it.
    Event(podpbx_events::Data),
}

/// Core settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `Server`/`User-Agent` header value (empty: not sent).
    pub user_agent: String,
    /// RFC 3261 timer base values.
    pub timers: Timers,
    /// Bounds of the transaction table (bytes in all, per source); see
    /// [`podpbx_sip::transaction::Limits`].
    pub tx_limits: Limits,
    /// Our SIP domain (From of requests podpbx originates).
    pub domain: String,
    /// Where registrations are persisted.
    pub state_file: PathBuf,
}

/// Bindings are saved at most this long after they change: one write covers a burst of
/// REGISTERs (each write is an fsync), and a crash loses at most this window plus the write
/// itself (`tests/persistence.rs` measures what a SIGKILL loses). The README and
/// ARCHITECTURE.md promise 100 ms.
const SAVE_DELAY: Duration = Duration::from_millis(100);

/// Each save serialises every binding (about 1-2 us each), so saves of a large table are spaced
/// by this much per binding: under a sustained REGISTER load persistence costs a few per cent of
/// the loop whatever the table's size (10 000 bindings: at most every 0.5 s), while a home's
/// few dozen bindings are still saved within `SAVE_DELAY`.
const SAVE_SPACING_PER_BINDING: Duration = Duration::from_micros(50);

/// A change that only refreshed bindings in place (new expiry, Call-ID, CSeq; same contact and
/// flow: [`podpbx_registrar::Outcome::refresh_only`]) is saved within this long instead of
/// [`SAVE_DELAY`]: a crash before it is written loses no binding, only the later expiry (the
/// binding comes back with the one it had), and phones re-register long before that. Under a
/// steady re-registration load this keeps the full-table serialisation to one per few seconds;
/// any other change (a new, moved, removed or expired binding) still pulls the save forward.
const REFRESH_SAVE_DELAY: Duration = Duration::from_secs(5);

/// The sans-IO signalling core.
pub struct Core {
    cfg: CoreConfig,
    stats: Arc<Stats>,
    tx: TransactionLayer,
    caps: Capabilities,
    registrar: Registrar,
    /// When the bindings must next be written, if they changed since the last write.
    save_due: Option<Instant>,
    /// `save_due` was set by refreshes only ([`REFRESH_SAVE_DELAY`]).
    save_lazy: bool,
    /// When they were last written (see [`SAVE_SPACING_PER_BINDING`]).
    last_save: Option<Instant>,
    /// Bindings changed since the status was last published.
    registrations_changed: bool,
    /// When the overload (503) warning was last logged.
    overload_logged: Option<Instant>,
    /// Overload control: the loop's lag, refusals.
    overload: Overload,
    /// Every client transaction in flight and who started it (calls, trunks, qualify).
    owners: Owners,
    /// Tags, branches and Call-IDs of what the core itself sends.
    ids: IdGen,
    /// Set by [`Core::begin_shutdown`] (SIGTERM): new INVITEs must get `503 Service Unavailable`.
    shutting_down: bool,
    /// Upstream trunk registrations.
    trunks: Trunks,
    /// Outputs that bypass the transaction layer (CRLF keep-alives, DNS, files).
    direct: VecDeque<Output>,
    /// Call control (B2BUA), once the shell has set it up ([`Core::set_calls`]).
    calls: Option<crate::calls::Calls>,
    /// SUBSCRIBE/NOTIFY: MWI and BLF subscriptions.
    presence: crate::presence::Presence,
    /// Rate limits of warnings the network can trigger.
    warn_limits: WarnLimits,
}

impl Core {
    /// Creates a core; `ids` is seeded by the shell from the OS (tests: a constant).
    pub fn new(
        cfg: CoreConfig,
        stats: Arc<Stats>,
        registrar: Registrar,
        trunks: Trunks,
        ids: IdGen,
    ) -> Core {
        let caps = Capabilities::podpbx();
        let tx = TransactionLayer::new(cfg.timers, cfg.tx_limits);
        let (domain, user_agent) = (cfg.domain.clone(), cfg.user_agent.clone());
        let mut ids = ids;
        let presence_ids = IdGen::new(ids.bytes16());
        Core {
            cfg,
            stats,
            tx,
            caps,
            registrar,
            save_due: None,
            save_lazy: false,
            last_save: None,
            registrations_changed: true,
            overload_logged: None,
            overload: Overload::default(),
            owners: Owners::default(),
            ids,
            trunks,
            direct: VecDeque::new(),
            shutting_down: false,
            calls: None,
            presence: crate::presence::Presence::new(&domain, &user_agent, presence_ids),
            warn_limits: WarnLimits::default(),
        }
    }

    /// Installs call control (the B2BUA); without it INVITEs get `501`.
    pub fn set_calls(&mut self, calls: crate::calls::Calls) {
        self.calls = Some(calls);
    }

    /// podpbx's own media endpoint (voicemail, announcements) for the calls it answers.
    pub fn set_endpoint(&mut self, endpoint: Box<dyn podpbx_b2bua::EndpointPort + Send>) {
        if let Some(c) = self.calls.as_mut() {
            c.b2bua.set_endpoint(endpoint);
        }
    }

    /// A mailbox's message counts (MWI): its subscribers are notified, its phones without a
    /// subscription get an unsolicited NOTIFY.
    pub fn set_mwi(&mut self, now: Instant, mailbox: &str, new: usize, old: usize) {
        let Some(cfg) = self.config() else { return };
        let targets = self.mwi_targets(mailbox, now);
        let counts = podpbx_presence::mwi::Counts { new, old };
        self.presence.mwi(now, &cfg, mailbox, counts, &targets);
        self.flush_notifies(now);
    }

    /// The registered contacts of `user` (for unsolicited MWI).
    fn mwi_targets(&self, user: &str, now: Instant) -> Vec<(String, Flow)> {
        self.registrar
            .lookup(user, now)
            .into_iter()
            .map(|b| (b.contact_uri.clone(), b.flow))
            .collect()
    }

    /// Starts the notifier's queued NOTIFYs.
    fn flush_notifies(&mut self, now: Instant) {
        let owners = &mut self.owners;
        self.presence.flush(now, &mut self.tx, |id, n| {
            owners.insert(id, Owner::Notify(n))
        });
    }

    /// BLF: the watchers of users whose calls changed are told.
    fn presence_changes(&mut self, now: Instant) {
        let Some(calls) = self.calls.as_mut() else {
            return;
        };
        let changed = calls.b2bua.take_presence_changes();
        if changed.is_empty() {
            return;
        }
        let cfg = calls.b2bua.config().clone();
        let b2bua = &calls.b2bua;
        self.presence
            .dialogs_changed(now, &cfg, &changed, |u| b2bua.dialogs_of(u));
        self.flush_notifies(now);
    }

    /// A run-time switch from `podpbx ctl` (`mode NAME on|off`, `dnd USER on|off`,
    /// `forward USER always|busy|no-answer TARGET|off`, `forward USER off`).
    pub fn command(&mut self, args: &[String]) -> Result<String, String> {
        let Some(calls) = self.calls.as_mut() else {
            return Err("call control is not running".into());
        };
        let b = &mut calls.b2bua;
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let on = |w: &str| match w {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("`{w}`: say on or off")),
        };
        match words.as_slice() {
            ["mode", name, state] => {
                let v = on(state)?;
                if b.set_mode(name, v) {
                    Ok(format!("mode {name} is {state}"))
                } else {
                    Err(format!("no mode `{name}` in [[modes]]"))
                }
            }
            ["dnd", user, state] => {
                let v = on(state)?;
                if b.set_dnd(user, v) {
                    Ok(format!("do not disturb of {user} is {state}"))
                } else {
                    Err(format!("no user `{user}`"))
                }
            }
            ["forward", user, "off"] => {
                if b.clear_forwards(user) {
                    Ok(format!("every forwarding of {user} is off"))
                } else {
                    Err(format!("no user `{user}`"))
                }
            }
            ["forward", user, kind, target] => {
                let kind = match *kind {
                    "always" => podpbx_b2bua::ForwardKind::Always,
                    "busy" => podpbx_b2bua::ForwardKind::Busy,
                    "no-answer" => podpbx_b2bua::ForwardKind::NoAnswer,
                    k => return Err(format!("`{k}`: say always, busy or no-answer")),
                };
                if b.user_features(user).is_none() {
                    return Err(format!("no user `{user}`"));
                }
                if *target == "off" {
                    b.set_forward(user, kind, None);
                    return Ok(format!("forwarding of {user} ({kind:?}) is off"));
                }
                if !b.forward_allowed(user, target) {
                    return Err(format!("{user} may not forward to `{target}`: not another user or group, nor a number the dialplan routes for {user}"));
                }
                b.set_forward(user, kind, Some(target.to_string()));
                Ok(format!("calls for {user} ({kind:?}) go to {target}"))
            }
            _ => Err("unknown command".into()),
        }
    }

    /// The forwarding/DND/modes state for `podpbx ctl features`.
    pub fn features_json(&self) -> serde_json::Value {
        self.calls
            .as_ref()
            .map(|c| c.b2bua.state_json())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The run-time state to persist, once after each change.
    pub fn take_state_save(&mut self) -> Option<Vec<u8>> {
        self.calls
            .as_mut()
            .and_then(|c| c.b2bua.take_state_changed())
    }

    /// The run-time state now (written synchronously at exit).
    pub fn state_bytes(&self) -> Option<Vec<u8>> {
        self.calls.as_ref().map(|c| c.b2bua.state_bytes())
    }

    /// Restores the persisted run-time state at start.
    pub fn restore_state(&mut self, data: &[u8]) -> Result<(), String> {
        match self.calls.as_mut() {
            Some(c) => c.b2bua.restore_state(data),
            None => Ok(()),
        }
    }

    /// Subscriptions for `podpbx ctl subscriptions`.
    pub fn subscriptions_json(&self, now: Instant) -> serde_json::Value {
        serde_json::Value::Array(self.presence.notifier.snapshot(now))
    }

    /// Subscription counters and bounds for `/metrics`.
    pub fn presence_stats(&self) -> (podpbx_presence::NotifierStats, usize, usize) {
        let l = self.presence.notifier.limits();
        (
            self.presence.notifier.stats(),
            l.max_subscriptions,
            l.max_per_user,
        )
    }

    /// A SUBSCRIBE outside a dialog: 489 for an unknown package, digest like REGISTER, then
    /// the subscription (own mailbox for MWI, any extension or group for BLF).
    fn handle_subscribe(&mut self, now: Instant, id: ServerTxId, req: &Message, flow: Flow) {
        let Some(cfg) = self.config() else {
            self.not_implemented(now, id, req, flow);
            return;
        };
        let package = match self.presence.notifier.package_of(req, &flow) {
            Ok((p, _)) => p,
            Err(resp) => {
                let _ = self.tx.send_response(now, id, resp.status, resp.data);
                return;
            }
        };
        let Some(user) = self.authenticated(now, id, req, flow, AuthKind::Www) else {
            return;
        };
        let resource = match crate::presence::Presence::verdict(&cfg, package, &user, req) {
            crate::presence::Verdict::Watch(r) => r,
            crate::presence::Verdict::Refuse(status) => {
                debug!(%user, code = status.code(), "SUBSCRIBE refused");
                self.respond(now, id, req, flow, status, &[]);
                return;
            }
        };
        if package == podpbx_presence::Package::Dialog {
            // The first NOTIFY carries the state now.
            if let Some(calls) = self.calls.as_ref() {
                let b2bua = &calls.b2bua;
                self.presence.notifier.set_dialogs(
                    now,
                    &resource,
                    crate::presence::dialogs_for(&cfg, &resource, |u| b2bua.dialogs_of(u)),
                );
            }
        }
        let resp = self
            .presence
            .notifier
            .subscribe(now, req, flow, &user, &resource);
        if let Err(e) = self.tx.send_response(now, id, resp.status, resp.data) {
            warn!(error = %e, "SUBSCRIBE response not sent");
        }
        self.flush_notifies(now);
    }

    /// The media endpoint finished session `id`: the call is hung up.
    pub fn endpoint_done(&mut self, now: Instant, id: podpbx_b2bua::EndpointId) {
        if let Some(c) = self.calls.as_mut() {
            c.b2bua.endpoint_done(now, id);
        }
        self.pump_calls(now);
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.calls.as_ref().map_or(0, |c| c.b2bua.active_calls())
    }

    /// Dispositions of the calls that ended since the last call (for metrics).
    pub fn take_ended_calls(&mut self) -> Vec<podpbx_b2bua::Disposition> {
        self.calls
            .as_mut()
            .map(|c| std::mem::take(&mut c.ended))
            .unwrap_or_default()
    }

    /// Calls for `podpbx ctl calls`.
    pub fn calls_json(&self, now: Instant) -> serde_json::Value {
        serde_json::Value::Array(
            self.calls
                .as_ref()
                .map(|c| c.b2bua.snapshot(now))
                .unwrap_or_default(),
        )
    }

    /// A valid new configuration: dialplan, users and groups for the next calls, the
    /// registrar's users. Calls in progress are not disturbed.
    pub fn reload(&mut self, now: Instant, cfg: Arc<podpbx_config::Config>) {
        if self.registrar.set_users(crate::calls::user_db(&cfg)) {
            self.bindings_changed(now);
        }
        if let Err(e) = self.trunks.reload(now, &cfg) {
            warn!(error = %e, "trunks not reloaded; the running trunks stay");
        }
        self.trunks
            .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
        self.presence.reload(&cfg);
        if let Some(calls) = self.calls.as_mut() {
            calls.reload(cfg);
        }
    }

    /// The running configuration (once call control is set up).
    pub fn config(&self) -> Option<Arc<podpbx_config::Config>> {
        self.calls.as_ref().map(|c| c.b2bua.config().clone())
    }

    /// Ends every call (graceful stop, after the grace period).
    pub fn end_calls(&mut self, now: Instant) {
        if let Some(calls) = self.calls.as_mut() {
            calls.b2bua.shutdown(now);
        }
        self.pump_calls(now);
    }

    /// The relay reported no media on a session.
    pub fn media_timeout(&mut self, now: Instant, media: u64) {
        if let Some(calls) = self.calls.as_mut() {
            calls.b2bua.media_timeout(now, media);
        }
        self.pump_calls(now);
    }

    /// The relay saw the end of an RFC 4733 DTMF event from `leg`'s peer on a session: the
    /// b2bua sends it as SIP INFO to the other party if that party wants INFO.
    pub fn media_dtmf(
        &mut self,
        now: Instant,
        media: u64,
        leg: podpbx_media::Leg,
        digit: char,
        duration: Duration,
    ) {
        if let Some(calls) = self.calls.as_mut() {
            calls.b2bua.media_dtmf(now, media, leg, digit, duration);
        }
        self.pump_calls(now);
    }

    /// The relay saw several RTP streams from one source on a leg (logged by the b2bua, which
    /// knows the call).
    pub fn media_mixed_streams(
        &self,
        media: u64,
        leg: podpbx_media::Leg,
        source: Option<std::net::SocketAddr>,
        ssrcs: [u32; 2],
    ) {
        if let Some(calls) = self.calls.as_ref() {
            calls.b2bua.media_mixed_streams(media, leg, source, ssrcs);
        }
    }

    fn call_directory<'a>(
        registrar: &'a Registrar,
        trunks: &'a Trunks,
        addrs: &'a crate::calls::Addrs,
    ) -> crate::calls::RegDirectory<'a> {
        crate::calls::RegDirectory {
            registrar,
            addrs,
            trunks,
        }
    }

    /// Moves b2bua outputs into the transaction layer (and reports refused requests back).
    fn pump_calls(&mut self, now: Instant) {
        for _ in 0..8 {
            let Some(calls) = self.calls.as_mut() else {
                return;
            };
            let failed = calls.pump(now, &mut self.tx, &mut self.owners, &mut self.direct);
            let stateless = std::mem::take(&mut calls.stateless_sent);
            self.stats
                .stateless_responses
                .fetch_add(stateless, std::sync::atomic::Ordering::Relaxed);
            let sec = calls.b2bua.security_counts();
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.foreign_source.store(sec.foreign_source, Relaxed);
            self.stats.trunk_refused.store(sec.trunk_refused, Relaxed);
            self.stats
                .headers_dropped
                .store(sec.headers_dropped, Relaxed);
            self.stats
                .auto_answer_stripped
                .store(sec.auto_answer_stripped, Relaxed);
            let ended = calls.b2bua.ended_dialogs();
            self.stats
                .ended_dialogs
                .store(ended.entries as u64, Relaxed);
            self.stats
                .ended_dialogs_evicted
                .store(ended.evicted, Relaxed);
            if failed.is_empty() {
                self.presence_changes(now);
                return;
            }
            let dir = Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
            for id in failed {
                calls.b2bua.request_failed(now, id, &dir);
            }
        }
    }

    /// Graceful stop began (hook for `lifecycle::Shutdown`): refuse new calls from now on, keep
    /// serving dialogs and transactions in progress.
    pub fn begin_shutdown(&mut self) {
        if !self.shutting_down {
            self.shutting_down = true;
            debug!("shutting down: new INVITEs get 503");
        }
    }

    /// Starts the trunk registrations.
    pub fn start(&mut self, now: Instant) {
        self.trunks.start(now);
        self.trunks
            .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
    }

    /// Un-registers the trunks so the provider stops sending calls to a dead pod.
    pub fn stop_trunks(&mut self, now: Instant) {
        self.trunks.stop(now);
        self.trunks
            .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
    }

    /// True once every trunk has un-registered.
    pub fn trunks_stopped(&self) -> bool {
        self.trunks.all_stopped()
    }

    /// The trunks, for status.
    pub fn trunks(&self) -> &Trunks {
        &self.trunks
    }

    /// Whether a trunk changed state (e.g. registered) since the last call.
    pub fn take_trunks_changed(&mut self) -> bool {
        self.trunks.take_changed()
    }

    /// The answer to an [`Output::Resolve`].
    pub fn dns_answer(
        &mut self,
        now: Instant,
        id: u64,
        answer: Result<Vec<podpbx_trunk::Record>, podpbx_trunk::LookupError>,
    ) {
        self.trunks.on_dns(now, id, answer);
        self.trunks
            .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
    }

    /// Client transactions in flight (the owner table's size).
    #[cfg(test)]
    pub fn owners_in_flight(&self) -> usize {
        self.owners.len()
    }

    /// Gives back the room a load left in the core's tables (transactions, their owners,
    /// calls, media sessions; [`podpbx_sip::capacity`]). The status tick calls it before the
    /// allocator is asked to trim, so that what it frees can go back to the kernel. True if
    /// anything shrank.
    pub fn shrink(&mut self, now: Instant) -> bool {
        let mut shrank = self.tx.shrink();
        shrank |= self.owners.shrink();
        shrank |= podpbx_sip::capacity::shrink_deque(&mut self.direct);
        if let Some(calls) = &mut self.calls {
            shrank |= calls.b2bua.shrink(now);
        }
        shrank
    }

    /// The transaction table's gauges and counters, for metrics.
    pub fn tx_stats(&self) -> TxStats {
        self.tx.stats()
    }

    /// The registrar, for status and metrics.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The bindings file's new content, once the coalescing delay has passed: an
    /// [`Output::SaveBindings`] (the shell writes it off the event loop: write, fsync and
    /// rename cost milliseconds the signalling must not wait for).
    fn save_if_due(&mut self, now: Instant) {
        if self.save_due.is_some_and(|t| t <= now) {
            self.last_save = Some(now);
            self.registrations_changed = true;
            if let Some((path, data)) = self.bindings_snapshot() {
                self.direct.push_back(Output::SaveBindings { path, data });
            }
        }
    }

    /// The bindings file's content now (the shell writes it synchronously at exit).
    pub fn bindings_snapshot(&mut self) -> Option<(PathBuf, Vec<u8>)> {
        self.save_due = None;
        self.save_lazy = false;
        match self.registrar.serialize() {
            Ok(data) => Some((self.cfg.state_file.clone(), data)),
            Err(e) => {
                warn!(error = %e, "cannot serialise registrations");
                None
            }
        }
    }

    /// True once after the bindings changed (for the 1 s status publication).
    pub fn take_registrations_changed(&mut self) -> bool {
        std::mem::take(&mut self.registrations_changed)
    }

    /// When a save wanted `delay` from now may run: spaced from the last one by the table's size
    /// ([`SAVE_SPACING_PER_BINDING`]).
    fn save_at(&self, now: Instant, delay: Duration) -> Instant {
        let n = u32::try_from(self.registrar.stats().bindings).unwrap_or(u32::MAX);
        let spaced = self
            .last_save
            .map(|t| t + SAVE_SPACING_PER_BINDING.saturating_mul(n));
        spaced.map_or(now + delay, |s| s.max(now + delay))
    }

    /// Bindings were added, removed or changed in what routes to them: save soon.
    fn bindings_changed(&mut self, now: Instant) {
        if self.save_due.is_none() || self.save_lazy {
            let at = self.save_at(now, SAVE_DELAY);
            self.save_due = Some(self.save_due.map_or(at, |d| d.min(at)));
            self.save_lazy = false;
        }
    }

    /// Bindings were only refreshed in place: save within [`REFRESH_SAVE_DELAY`] (or with an
    /// earlier save already due).
    fn bindings_refreshed(&mut self, now: Instant) {
        if self.save_due.is_none() {
            self.save_due = Some(self.save_at(now, REFRESH_SAVE_DELAY));
            self.save_lazy = true;
        }
    }

    /// Input from `flow` that did not parse: `400` from the salvaged headers when possible,
    /// nothing for a blocked source (not even the `400` that would confirm we exist).
    pub fn handle_malformed(&mut self, now: Instant, data: &[u8], reason: &str, flow: Flow) {
        if self.registrar.is_blocked(flow.remote.ip(), now) {
            Stats::bump(&self.stats.blocked_requests);
            return;
        }
        match bad_request(data, reason, flow) {
            Some((dest, resp)) => {
                Stats::bump(&self.stats.bad_requests);
                debug!(remote = %flow.remote, error = reason, "malformed message answered 400");
                self.direct.push_back(Output::Send {
                    peer: Peer {
                        addr: dest,
                        ..flow.peer()
                    },
                    data: resp,
                });
            }
            None => {
                Stats::bump(&self.stats.dropped_malformed);
                debug!(remote = %flow.remote, error = reason, "malformed message dropped");
            }
        }
    }

    /// Feeds one parsed message that arrived on `flow`.
    pub fn handle_message(&mut self, now: Instant, wall: SystemTime, msg: &Message, flow: Flow) {
        if !msg.is_request() {
            match self.tx.on_response(now, msg) {
                ResponseDisposition::Deliver(id) => self.deliver_response(now, id, msg),
                ResponseDisposition::Absorbed(_) => {}
                ResponseDisposition::Stray => {
                    // RFC 3261 §18.1.2: a response matching no transaction is dropped, never answered.
                    Stats::bump(&self.stats.stray_responses);
                    // Which transaction it claims (fields are only evaluated with debug on).
                    debug!(
                        remote = %flow.remote,
                        status = msg.status().unwrap_or(0),
                        cseq = %String::from_utf8_lossy(&msg.header(HeaderName::CSeq).unwrap_or_default()),
                        branch = %String::from_utf8_lossy(&msg.top_via_ref().ok().and_then(|v| v.branch()).unwrap_or_default()),
                        "stray response dropped"
                    );
                }
            }
            return;
        }
        // Only with debug logging on: finding the Call-ID and parsing the top Via again would
        // otherwise cost every request for a span nobody sees.
        let span = if tracing::enabled!(tracing::Level::DEBUG) {
            let call_id = msg.call_id().unwrap_or_default();
            let branch = msg
                .top_via_ref()
                .ok()
                .and_then(|v| v.branch())
                .unwrap_or_default();
            debug_span!(
                "sip_tx",
                call_id = %String::from_utf8_lossy(&call_id),
                branch = %String::from_utf8_lossy(&branch),
                remote = %flow.remote,
            )
        } else {
            tracing::Span::none()
        };
        let _guard = span.enter();
        if self.registrar.is_blocked(flow.remote.ip(), now) {
            // A blocked scanner gets nothing back, not even a 403 to confirm we exist.
            Stats::bump(&self.stats.blocked_requests);
            return;
        }
        if is_unauthenticated_register(msg) {
            self.handle_register_stateless(now, wall, msg, flow);
            return;
        }
        let peer = flow.response_peer(msg);
        match self.tx.on_request_from(now, msg, peer, flow.remote.ip()) {
            RequestDisposition::New(id) => {
                // A To tag: a request inside a dialog (read once for overload and dispatch).
                let in_dialog = msg.to_ref().ok().and_then(|t| t.tag()).is_some();
                if let Some(reason) = self.shed(now, msg, in_dialog) {
                    self.refuse_overloaded(now, Answer::Tx(id), msg, flow, reason);
                } else {
                    let calls = self.active_calls();
                    self.handle_request(now, wall, id, msg, flow, in_dialog);
                    // A new call is in set-up until the next count says otherwise (a
                    // challenged INVITE made none).
                    let created = self.active_calls().saturating_sub(calls);
                    if created > 0 {
                        self.overload.admitted(created);
                        self.stats.calls_setup.store(
                            self.overload.setup() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
            }
            RequestDisposition::Retransmission(_) | RequestDisposition::AckAbsorbed(_) => {
                debug!("retransmission absorbed");
            }
            // An ACK for a 2xx goes to its dialog (the b2bua); a stray one is dropped.
            RequestDisposition::AckFor2xx => {
                if let Some(calls) = self.calls.as_mut() {
                    // An ACK from elsewhere than the dialog's peer is dropped (counted).
                    if calls.b2bua.dialog_source_ok(msg, &flow) {
                        calls.b2bua.handle_ack(now, msg);
                    }
                    self.pump_calls(now);
                }
            }
            RequestDisposition::Cancel { tx, target } => {
                // RFC 3261 §9.2: 200 to a CANCEL that matches; the b2bua then ends the INVITE
                // with 487 and cancels the legs it forked. A CANCEL only counts from where
                // its INVITE came from (for a trunk: any of the trunk's addresses); a forged
                // one gets 481 and cancels nothing.
                let target = target.filter(|inv| {
                    let Some(expected) = self.tx.server_peer(*inv).map(|p| p.addr.ip()) else {
                        return true;
                    };
                    let ok = match self.calls.as_mut() {
                        Some(calls) => calls.b2bua.same_peer(expected, flow.remote.ip()),
                        None => expected.to_canonical() == flow.remote.ip().to_canonical(),
                    };
                    if !ok {
                        debug!(remote = %flow.remote, %expected, "CANCEL from an address its INVITE did not come from: 481");
                    }
                    ok
                });
                let status = if target.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST
                };
                self.respond(now, tx, msg, flow, status, &[]);
                if let (Some(inv), Some(calls)) = (target, self.calls.as_mut()) {
                    calls.b2bua.handle_cancel(now, inv);
                    self.pump_calls(now);
                }
            }
            RequestDisposition::Overloaded => {
                let data = self.build(
                    msg,
                    flow,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::SERVICE_UNAVAILABLE.reason(),
                    &[("Retry-After", "5")],
                );
                Stats::bump(&self.stats.overloaded);
                // One line per second at most: under a flood a line per request would be the flood.
                if self
                    .overload_logged
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.overload_logged = Some(now);
                    warn!(
                        total = Stats::get(&self.stats.overloaded),
                        "transaction table full: answering 503"
                    );
                }
                self.tx.send_stateless(peer, data);
            }
            RequestDisposition::Invalid(e) => match bad_request(&msg.buf, &e.to_string(), flow) {
                Some((dest, data)) if msg.method() != Some(&Method::Ack) => {
                    Stats::bump(&self.stats.bad_requests);
                    self.tx.send_stateless(Peer { addr: dest, ..peer }, data);
                }
                _ => {
                    Stats::bump(&self.stats.dropped_malformed);
                    debug!(error = %e, "request without usable transaction identity dropped");
                }
            },
        }
    }

    /// How far behind the network the loop is: the wait of the oldest datagram of the batch
    /// about to be handled (measured by the shell from the kernel's receive time stamps).
    pub fn note_lag(&mut self, now: Instant, lag: Duration) {
        self.overload.note_lag(now, lag);
        self.stats.loop_lag_us.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether a new request must be refused for overload (see `crate::overload`): only new
    /// INVITEs and REGISTERs outside a dialog; everything that ends or continues what is
    /// already admitted (BYE, ACK, CANCEL, in-dialog requests) is always processed.
    fn shed(&mut self, now: Instant, msg: &Message, in_dialog: bool) -> Option<Reason> {
        let invite = match msg.method() {
            Some(Method::Invite) => true,
            Some(Method::Register) => false,
            _ => return None,
        };
        if in_dialog {
            return None;
        }
        let (calls, max_calls, max_setup, media) = match self.calls.as_ref() {
            Some(c) => (
                c.b2bua.active_calls(),
                c.b2bua.config().calls.max_concurrent.unwrap_or(0) as usize,
                c.b2bua.config().calls.max_setup.unwrap_or(0) as usize,
                c.b2bua.media_load(),
            ),
            None => (0, 0, 0, 0.0),
        };
        if invite && max_setup > 0 && self.overload.setup_due(now) {
            self.count_setup(now);
        }
        let load = Load {
            table: self.tx.load(),
            calls,
            max_calls,
            setup: self.overload.setup(),
            max_setup,
            media,
        };
        self.overload.check(now, invite, &load)
    }

    /// Counts the calls in set-up (a scan of the calls) for overload control and the
    /// `podpbx_calls_setup` gauge.
    pub fn count_setup(&mut self, now: Instant) {
        let n = self.calls.as_ref().map_or(0, |c| c.b2bua.calls_in_setup());
        self.overload.note_setup(now, n);
        self.stats
            .calls_setup
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `503 Service Unavailable` with `Retry-After`, sent once (no transaction kept).
    fn refuse_overloaded(
        &mut self,
        now: Instant,
        id: Answer,
        msg: &Message,
        flow: Flow,
        reason: Reason,
    ) {
        let retry = self.overload.retry_after().to_string();
        let data = self.build(
            msg,
            flow,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE.reason(),
            &[("Retry-After", &retry)],
        );
        self.stats.shed[reason.idx()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self
            .overload_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.overload_logged = Some(now);
            warn!(
                reason = reason.as_str(),
                lag_ms = self.overload.lag(now).map_or(0, |l| l.as_millis() as u64),
                "overload: new calls and registrations get 503"
            );
        }
        self.send_once(id, msg, flow, data);
    }

    /// A response to one of our client transactions, to its owner.
    fn deliver_response(&mut self, now: Instant, id: ClientTxId, msg: &Message) {
        let is_final = msg.status().unwrap_or(0) >= 200;
        match self.owners.get(id).cloned() {
            Some(Owner::Call(req)) => {
                // Forgotten when the transaction terminates (2xx retransmissions still come).
                if let Some(calls) = self.calls.as_mut() {
                    let dir = Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
                    calls.b2bua.handle_response(now, req, msg, &dir);
                    self.pump_calls(now);
                }
            }
            Some(Owner::Trunk { slot, .. }) => {
                if is_final {
                    self.owners.remove(id);
                }
                self.trunks.on_response(now, slot, msg);
                self.trunks
                    .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
            }
            // Any final answer proves the phone is there (even 404/405).
            Some(Owner::Qualify { binding }) if is_final => {
                self.owners.remove(id);
                self.registrar.qualify_result(binding, true);
            }
            Some(Owner::Qualify { .. }) => {}
            Some(Owner::Notify(n)) if is_final => {
                self.owners.remove(id);
                self.presence.notifier.notify_result(now, n, msg.status());
                self.flush_notifies(now);
            }
            Some(Owner::Notify(_)) => {}
            None => {}
        }
    }

    /// A client transaction timed out or could not be sent: its owner learns it.
    fn client_failed(&mut self, now: Instant, id: ClientTxId) {
        match self.owners.remove(id) {
            Some(Owner::Call(req)) => {
                if let Some(calls) = self.calls.as_mut() {
                    let dir = Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
                    calls.b2bua.request_failed(now, req, &dir);
                    self.pump_calls(now);
                }
            }
            Some(Owner::Trunk { slot, branch }) => self.trunks.on_failure(now, slot, &branch),
            Some(Owner::Qualify { binding })
                if self.registrar.qualify_result(binding, false) == Some(false) =>
            {
                info!(binding, "contact unreachable (qualify)");
            }
            Some(Owner::Qualify { .. }) => {}
            Some(Owner::Notify(n)) => {
                self.presence.notifier.notify_result(now, n, None);
                self.flush_notifies(now);
            }
            None => {}
        }
    }

    /// The next instant [`Core::handle_timeout`] must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (exact, lax) = self.poll_timeouts();
        exact.into_iter().chain(lax).min()
    }

    /// [`Core::poll_timeout`] in two parts: `(exact, lax)`. `exact` is every timer that must
    /// fire on time (retransmissions, failures, registrations, calls); `lax` is the end of the
    /// lingering transactions, which only stop absorbing retransmissions: the shell may call
    /// [`Core::handle_timeout`] for them late, so that many are ended in one wake-up (every
    /// call leaves several, each due at its own instant).
    pub fn poll_timeouts(&self) -> (Option<Instant>, Option<Instant>) {
        let calls = self.calls.as_ref().and_then(|c| c.b2bua.poll_timeout());
        let exact = [
            self.tx.poll_live_timeout(),
            self.registrar.poll_timeout(),
            self.save_due,
            self.trunks.poll_timeout(),
            self.presence.notifier.poll_timeout(),
            calls,
        ]
        .into_iter()
        .flatten()
        .min();
        (exact, self.tx.poll_linger_timeout())
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        let expired = self.registrar.expire(now);
        if !expired.is_empty() {
            for (aor, b) in &expired {
                info!(user = %aor, contact = %b.contact_uri, "registration expired");
            }
            self.bindings_changed(now);
        }
        for target in self.registrar.due_qualifies(now) {
            self.send_qualify(now, target);
        }
        if let Some(calls) = self.calls.as_mut() {
            let dir = Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
            calls.b2bua.handle_timeout(now, &dir);
        }
        self.pump_calls(now);
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Timeout(TxId::Client(id)) | TxEvent::TransportError(TxId::Client(id)) => {
                    self.client_failed(now, id)
                }
                TxEvent::Timeout(id) => debug!(?id, "transaction timed out"),
                TxEvent::TransportError(id) => debug!(?id, "transaction transport error"),
                TxEvent::Terminated(TxId::Client(id)) => {
                    self.owners.remove(id);
                }
                TxEvent::Terminated(_) => {}
            }
        }
        self.trunk_timers(now);
        self.presence.notifier.handle_timeout(now);
        self.flush_notifies(now);
        self.save_if_due(now);
    }

    fn trunk_timers(&mut self, now: Instant) {
        self.trunks.handle_timeout(now);
        self.trunks
            .flush(now, &mut self.tx, &mut self.owners, &mut self.direct);
    }

    /// Tells the transaction layer that sending to `peer` failed.
    pub fn transport_error(&mut self, peer: Peer) {
        self.tx.on_transport_error(peer);
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.direct.pop_front() {
            return Some(o);
        }
        self.tx.poll_transmit().map(|t| Output::Send {
            peer: t.peer,
            data: t.data,
        })
    }

    fn handle_request(
        &mut self,
        now: Instant,
        wall: SystemTime,
        id: ServerTxId,
        req: &Message,
        flow: Flow,
        in_dialog: bool,
    ) {
        let method = req.method().cloned().unwrap_or(Method::Other(Bytes::new()));
        if !self.admit(now, Answer::Tx(id), req, flow) {
            return;
        }
        match method {
            Method::Register => self.handle_register(now, wall, Answer::Tx(id), req, flow),
            Method::Subscribe if !in_dialog => self.handle_subscribe(now, id, req, flow),
            Method::Subscribe if self.presence.notifier.owns(req) => {
                let resp = self.presence.notifier.refresh(now, req, flow);
                if let Err(e) = self.tx.send_response(now, id, resp.status, resp.data) {
                    warn!(error = %e, "SUBSCRIBE response not sent");
                }
                self.flush_notifies(now);
            }
            Method::Invite if !in_dialog => self.handle_invite(now, wall, id, req, flow),
            _ if in_dialog && self.calls.is_some() => {
                let handled = match self.calls.as_mut() {
                    Some(calls) => {
                        if calls.b2bua.dialog_source_ok(req, &flow) {
                            let dir =
                                Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
                            calls.b2bua.handle_in_dialog(now, id, req, flow, &dir)
                        } else {
                            // A forged BYE, re-INVITE or REFER from elsewhere than the dialog's
                            // peer: 481, the dialog untouched (counted in the b2bua).
                            debug!(remote = %flow.remote, "in-dialog request from an address its dialog's peer does not use: 481");
                            false
                        }
                    }
                    None => false,
                };
                if handled {
                    self.pump_calls(now);
                } else {
                    self.respond(
                        now,
                        id,
                        req,
                        flow,
                        StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                        &[],
                    );
                }
            }
            Method::Message if !in_dialog => self.handle_message_request(now, id, req, flow),
            Method::Options if !in_dialog => {
                let allow = self.caps.allow_header();
                let accept = self.caps.accept.join(", ");
                let supported = self.caps.supported.join(", ");
                let hdrs = [
                    ("Allow", allow.as_str()),
                    ("Accept", accept.as_str()),
                    ("Supported", supported.as_str()),
                    ("Accept-Language", "en"),
                    ("Allow-Events", podpbx_presence::Package::allow_events()),
                ];
                self.respond(now, id, req, flow, StatusCode::OK, &hdrs);
            }
            _ if in_dialog => self.respond(
                now,
                id,
                req,
                flow,
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                &[],
            ),
            _ => self.not_implemented(now, id, req, flow),
        }
    }

    /// `501` with the Allow header listing what we do implement (RFC 3261 §8.2.1).
    fn not_implemented(&mut self, now: Instant, id: ServerTxId, req: &Message, flow: Flow) {
        let allow = self.caps.allow_header();
        self.respond(
            now,
            id,
            req,
            flow,
            StatusCode::NOT_IMPLEMENTED,
            &[("Allow", &allow)],
        );
    }

    /// A new INVITE: identify the caller (trunk networks, identify-by-source users) or
    /// authenticate it (407), then hand it to the b2bua.
    fn handle_invite(
        &mut self,
        now: Instant,
        wall: SystemTime,
        id: ServerTxId,
        req: &Message,
        flow: Flow,
    ) {
        if self.calls.is_none() {
            self.not_implemented(now, id, req, flow);
            return;
        }
        if self.shutting_down {
            self.respond(
                now,
                id,
                req,
                flow,
                StatusCode::SERVICE_UNAVAILABLE,
                &[("Retry-After", "30")],
            );
            return;
        }
        let bflow = flow;
        let identity = match self.calls.as_ref() {
            Some(c) => c.b2bua.identify(req, &bflow),
            None => return,
        };
        if let podpbx_b2bua::Identity::NotADid { trunk } = &identity {
            Stats::bump(&self.stats.not_a_did);
            let uri = req.request_uri().map(|u| u.raw).unwrap_or_default();
            info!(%trunk, uri = %String::from_utf8_lossy(&uri), "call from a trunk's networks to none of its DIDs: 404");
            self.respond(now, id, req, flow, StatusCode::NOT_FOUND, &[]);
            return;
        }
        // A trunk's networks and identify-by-source users trust a source address, which UDP
        // does not prove: the b2bua's rejections of such INVITEs go out once, statelessly.
        if !matches!(identity, podpbx_b2bua::Identity::Authenticate) {
            if let Some(calls) = self.calls.as_mut() {
                calls.unauthenticated(id);
            }
        }
        let caller = match identity {
            podpbx_b2bua::Identity::NotADid { .. } => return,
            podpbx_b2bua::Identity::Trunk { name, did } => {
                podpbx_b2bua::Caller::Trunk { name, did }
            }
            podpbx_b2bua::Identity::User(u) => podpbx_b2bua::Caller::User(u),
            podpbx_b2bua::Identity::Authenticate => {
                match self.authenticated(now, id, req, flow, AuthKind::Proxy) {
                    Some(user) => podpbx_b2bua::Caller::User(user),
                    None => return,
                }
            }
        };
        if let Some(calls) = self.calls.as_mut() {
            if let podpbx_b2bua::Caller::User(u) = &caller {
                if let Some(user) = calls.b2bua.config().user(u).filter(|u| u.doorbell) {
                    let to = req
                        .request_uri()
                        .ok()
                        .and_then(|r| r.user)
                        .map(|u| podpbx_b2bua::unescape_user(&u))
                        .unwrap_or_default();
                    self.direct
                        .push_back(Output::Event(podpbx_events::Data::Doorbell {
                            from: user.name.clone(),
                            from_name: user.display_name.clone(),
                            to,
                        }));
                }
            }
            let dir = Self::call_directory(&self.registrar, &self.trunks, &calls.addrs);
            let invite = podpbx_b2bua::Received {
                tx: id,
                msg: req,
                flow: bflow,
            };
            calls.b2bua.handle_invite(now, wall, invite, caller, &dir);
        }
        self.pump_calls(now);
    }

    /// The checks every request passes before its method's handler (RFC 3261 §8.2: method,
    /// Require, Max-Forwards, well-formed headers). False: it was rejected (answered once,
    /// statelessly, or dropped and counted).
    fn admit(&mut self, now: Instant, id: Answer, req: &Message, flow: Flow) -> bool {
        let Err(rej) = check_request(req, &self.caps) else {
            return true;
        };
        match rej {
            Rejection::Drop(why) => {
                Stats::bump(&self.stats.dropped_malformed);
                debug!(reason = why, "request dropped");
            }
            Rejection::Respond {
                code,
                reason,
                headers,
            } => {
                if code == StatusCode::BAD_REQUEST {
                    Stats::bump(&self.stats.bad_requests);
                }
                let hdrs: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                self.respond_reason(now, id, req, flow, code, &reason, &hdrs);
            }
        }
        false
    }

    /// A REGISTER without credentials, as a stateless UAS (RFC 3261 §8.2.7): it can only be
    /// challenged (or rejected), and a challenge is sent once anyway (see [`Self::send_once`]),
    /// so a server transaction would be created only to be dropped again. Half of all
    /// REGISTERs take this path (every registration starts with one); a retransmission is
    /// handled again and gets an equivalent 401 (same To tag, a fresh nonce).
    fn handle_register_stateless(
        &mut self,
        now: Instant,
        wall: SystemTime,
        req: &Message,
        flow: Flow,
    ) {
        if let Some(reason) = self.shed(now, req, false) {
            self.refuse_overloaded(now, Answer::Stateless, req, flow, reason);
            return;
        }
        if self.admit(now, Answer::Stateless, req, flow) {
            self.handle_register(now, wall, Answer::Stateless, req, flow);
        }
    }

    fn handle_register(
        &mut self,
        now: Instant,
        wall: SystemTime,
        id: Answer,
        req: &Message,
        flow: Flow,
    ) {
        let out = self.registrar.handle_register(now, wall, req, flow);
        self.log_security(now, &out.events);
        if out.changed && out.refresh_only {
            self.bindings_refreshed(now);
        } else if out.changed {
            self.bindings_changed(now);
        }
        self.send_reply(now, id, req, flow, &out.reply);
        if let (Some(aor), Reply::Ok { contacts, .. }) = (&out.aor, &out.reply) {
            info!(user = %aor, source = %flow.remote, bindings = contacts.len(), "registered");
            // A phone that just registered gets the lamp right (unless it subscribes).
            let unsolicited = out.changed
                && !contacts.is_empty()
                && self.config().is_some_and(|c| {
                    c.any_unsolicited_mwi()
                        && c.mailbox(aor)
                            .and_then(|u| u.voicemail.as_ref())
                            .is_some_and(|v| v.unsolicited_mwi)
                });
            if unsolicited {
                let targets = self.mwi_targets(aor, now);
                self.presence.notifier.unsolicited_mwi(aor, &targets);
                self.flush_notifies(now);
            }
        }
    }

    /// MESSAGE from devices (doorbells report events this way): authenticated like REGISTER,
    /// logged and answered `200`; nothing is forwarded yet.
    fn handle_message_request(&mut self, now: Instant, id: ServerTxId, req: &Message, flow: Flow) {
        let Some(user) = self.authenticated(now, id, req, flow, AuthKind::Www) else {
            return;
        };
        let body = String::from_utf8_lossy(&req.body);
        let text: String = body.chars().take(200).filter(|c| !c.is_control()).collect();
        info!(%user, source = %flow.remote, text = %text, "MESSAGE received");
        self.respond(now, id, req, flow, StatusCode::OK, &[]);
    }

    /// Digest authentication of a request (not REGISTER, whose registrar does its own): the
    /// user, or `None` once the request has been answered (challenge, `400`) or dropped (a
    /// blocked source), its security events logged either way.
    fn authenticated(
        &mut self,
        now: Instant,
        id: ServerTxId,
        req: &Message,
        flow: Flow,
        kind: AuthKind,
    ) -> Option<String> {
        let check = self.registrar.authenticate(now, req, flow, kind);
        self.log_security(now, &check.events);
        match check.result {
            AuthResult::Authenticated { user } => return Some(user),
            AuthResult::Challenge { kind, values } => {
                let reply = Reply::Challenge { kind, values };
                self.send_reply(now, Answer::Tx(id), req, flow, &reply);
            }
            AuthResult::BadRequest { reason } => {
                let status = StatusCode::BAD_REQUEST;
                self.respond_reason(now, Answer::Tx(id), req, flow, status, reason, &[]);
            }
            AuthResult::Drop => {
                self.tx.terminate(TxId::Server(id));
            }
        }
        None
    }

    /// Counts and logs security events (one `security event` line each, at most 20 per 10 s
    /// and kind; the ones held back are counted in the next line's `suppressed`).
    fn log_security(&mut self, now: Instant, events: &[SecurityEvent]) {
        use podpbx_registrar::SecurityEventKind as K;
        for ev in events {
            if matches!(
                ev.kind,
                K::AuthFailed
                    | K::UnknownUser
                    | K::MalformedCredentials
                    | K::SourceNotAllowed
                    | K::DigestUriMismatch
                    | K::UncheckedOverCap
            ) {
                Stats::bump(&self.stats.auth_failures);
            }
            let limit = self
                .warn_limits
                .security
                .entry(ev.kind)
                .or_insert_with(crate::logging::network_warning);
            let Some(suppressed) = limit.check(now) else {
                continue;
            };
            warn!(
                target: "podpbx::security",
                kind = ?ev.kind,
                source = %ev.source,
                port = ev.port,
                user = ev.user.as_deref().unwrap_or(""),
                aor = ev.aor.as_deref().unwrap_or(""),
                method = %ev.method,
                failures = ev.failures.unwrap_or(0),
                blocked_secs = ev.blocked_secs.unwrap_or(0),
                suppressed,
                "security event"
            );
        }
    }

    fn send_reply(&mut self, now: Instant, id: Answer, req: &Message, flow: Flow, reply: &Reply) {
        let data = reply
            .status()
            .and_then(|(code, _)| Some((code, self.registrar.response_bytes(reply, req, &flow)?)));
        let Some((status, data)) = data else {
            // Blocked source: no answer at all; the transaction just goes away.
            if let Answer::Tx(id) = id {
                self.tx.terminate(TxId::Server(id));
            }
            return;
        };
        let id = match id {
            Answer::Tx(id) if status.is_success() || status.is_provisional() => id,
            _ => {
                self.send_once(id, req, flow, data);
                return;
            }
        };
        let code = status.code();
        // Only REGISTER's answers get here as a 2xx. Its transaction lingers 4*T1, not 64*T1:
        // at 10 000 REGISTERs/s, completed transactions kept 32 s each filled the table's bound
        // (32 MB) by themselves. The retransmissions a lost or late 200 causes (at T1 and 3*T1)
        // are still absorbed; a later one reaches the registrar again, whose nonce count check
        // answers it with a re-challenge (`stale=true`): the device registers with a fresh
        // nonce, and nothing is bound twice.
        if let Err(e) = self.tx.send_response_brief(now, id, code, data) {
            if let Some(suppressed) = self.warn_limits.response.check(now) {
                warn!(error = %e, code, suppressed, "response not sent");
            }
        }
    }

    /// Sends a qualify OPTIONS to a binding through its observed flow, from our pinned address.
    fn send_qualify(&mut self, now: Instant, target: podpbx_registrar::QualifyTarget) {
        let f = target.flow;
        let transport = f.transport;
        let branch = self.ids.branch();
        let via = format!(
            "SIP/2.0/{} {}:{};branch={branch};rport",
            transport.via_token(),
            host_of(f.local),
            f.local.port()
        );
        let data = RequestBuilder::new(&Method::Options, &target.contact_uri)
            .header("Via", &via)
            .header("Max-Forwards", "70")
            .header(
                "From",
                &format!("<sip:podpbx@{}>;tag={}", self.cfg.domain, self.ids.token()),
            )
            .header("To", &format!("<{}>", target.contact_uri))
            .header("Call-ID", &format!("{}@podpbx", self.ids.token()))
            .header("CSeq", "1 OPTIONS")
            .header("User-Agent", &self.cfg.user_agent)
            .build();
        match self
            .tx
            .send_request(now, branch.into(), Method::Options, data, f.peer())
        {
            Ok(id) => self.owners.insert(
                id,
                Owner::Qualify {
                    binding: target.binding_id,
                },
            ),
            Err(e) => debug!(error = %e, "qualify not sent"),
        }
    }

    /// Answers with `status` and its standard reason phrase.
    fn respond(
        &mut self,
        now: Instant,
        id: ServerTxId,
        req: &Message,
        flow: Flow,
        status: StatusCode,
        headers: &[(&str, &str)],
    ) {
        self.respond_reason(
            now,
            Answer::Tx(id),
            req,
            flow,
            status,
            status.reason(),
            headers,
        );
    }

    /// Answers with `status` and a reason phrase of our own (a `400` saying what is wrong).
    #[allow(clippy::too_many_arguments)]
    fn respond_reason(
        &mut self,
        now: Instant,
        id: Answer,
        req: &Message,
        flow: Flow,
        status: StatusCode,
        reason: &str,
        headers: &[(&str, &str)],
    ) {
        let data = self.build(req, flow, status, reason, headers);
        let code = status.code();
        debug!(code, "response");
        let id = match id {
            Answer::Tx(id) if status.is_success() || status.is_provisional() => id,
            _ => {
                self.send_once(id, req, flow, data);
                return;
            }
        };
        if let Err(e) = self.tx.send_response(now, id, code, data) {
            if let Some(suppressed) = self.warn_limits.response.check(now) {
                warn!(error = %e, code, suppressed, "response not sent");
            }
        }
    }

    /// Sends a rejection once, statelessly, and drops the server transaction. Everything the
    /// core rejects by itself (challenges, 400/403/404/420/481/501/503...) goes this way: the
    /// request came from a source nobody has verified, and an INVITE transaction would repeat a
    /// final response up to 11 times towards whatever address the request claimed (RFC 3261
    /// §17.2.1 Timer G), which makes one forged INVITE a reflection attack. A retransmitted
    /// request simply gets one fresh answer (the To tag is derived from Call-ID and From tag,
    /// so it is the same every time).
    fn send_once(&mut self, id: Answer, req: &Message, flow: Flow, data: Bytes) {
        if let Answer::Tx(id) = id {
            self.tx.terminate(TxId::Server(id));
        }
        let peer = flow.response_peer(req);
        Stats::bump(&self.stats.stateless_responses);
        self.tx.send_stateless(peer, data);
    }

    fn build(
        &mut self,
        req: &Message,
        flow: Flow,
        status: StatusCode,
        reason: &str,
        headers: &[(&str, &str)],
    ) -> Bytes {
        let mut b = ResponseBuilder::new(req, status.code(), reason, Some(flow.remote));
        if status != StatusCode::TRYING {
            // Stable per Call-ID and From tag: a retransmitted request answered statelessly
            // gets the same To tag.
            b = b.to_tag(&self.registrar.to_tag(req));
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        if !self.cfg.user_agent.is_empty() {
            b = b.header("Server", &self.cfg.user_agent);
        }
        b.build()
    }
}

/// Who carries a request's answer.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Its server transaction: it absorbs retransmissions and, for a 2xx, repeats it.
    Tx(ServerTxId),
    /// Nobody (a stateless UAS, RFC 3261 §8.2.7): the answer is sent once; a retransmitted
    /// request is handled again and answered the same way (the To tag is derived from Call-ID
    /// and From tag).
    Stateless,
}

/// A REGISTER outside a dialog that carries no `Authorization` header: whatever it gets, it
/// is a challenge or a rejection, never a binding, so it needs no server transaction. One
/// whose top Via does not parse takes the transaction layer's path, which decides between a
/// `400` and a drop for requests it cannot identify.
fn is_unauthenticated_register(msg: &Message) -> bool {
    msg.method() == Some(&Method::Register)
        && msg.header(HeaderName::Authorization).is_none()
        && msg.top_via_ref().is_ok()
        && msg.to_ref().is_ok_and(|t| t.tag().is_none())
}

/// Warnings the network can trigger at will, each rate-limited on its own.
#[derive(Debug)]
struct WarnLimits {
    /// Security events, per kind.
    security: std::collections::HashMap<podpbx_registrar::SecurityEventKind, RateLimit>,
    /// A response the transaction layer refused.
    response: RateLimit,
}

impl Default for WarnLimits {
    fn default() -> Self {
        WarnLimits {
            security: std::collections::HashMap::new(),
            response: crate::logging::network_warning(),
        }
    }
}

/// Builds a `400` for a request that failed to parse, from whatever header lines can be
/// salvaged; `None` when no response can be formed (responses, garbage, missing Via/CSeq...).
pub fn bad_request(data: &[u8], reason: &str, flow: Flow) -> Option<(SocketAddr, Bytes)> {
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next()?;
    let mut parts = start.split(|b| *b == b' ');
    let method = parts.next()?;
    if method.is_empty()
        || method.starts_with(b"SIP/")
        || !method.iter().all(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    if !start.windows(4).any(|w| w == b"SIP/") {
        return None;
    }
    let mut vias: Vec<&[u8]> = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        match HeaderName::from_bytes(name) {
            HeaderName::Via => vias.push(value),
            HeaderName::From => from = from.or(Some(value)),
            HeaderName::To => to = to.or(Some(value)),
            HeaderName::CallId => call_id = call_id.or(Some(value)),
            HeaderName::CSeq => cseq = cseq.or(Some(value)),
            _ => {}
        }
    }
    let (from, to, call_id, cseq) = (from?, to?, call_id?, cseq?);
    if vias.is_empty() {
        return None;
    }
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(b"SIP/2.0 400 ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for v in vias {
        put_header(&mut out, b"Via", v);
    }
    put_header(&mut out, b"From", from);
    put_header(&mut out, b"To", to);
    put_header(&mut out, b"Call-ID", call_id);
    put_header(&mut out, b"CSeq", cseq);
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some((flow.remote, out.freeze()))
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}
