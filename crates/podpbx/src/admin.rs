//! The admin HTTP listener (`[admin] listen`, default `127.0.0.1:9060`, `""` disables it):
//! Kubernetes probes, Prometheus metrics and the JSON API behind `podpbx ctl`; and the
//! health-only listener (`[admin] health_listen`, off by default) for the probes.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the core loop runs (it answers a ping within 1 s), else `503` |
//! | `GET /readyz` | `200 ready` when every readiness condition holds and no shutdown began, else `503 not ready: <reasons>` |
//! | `GET /metrics` | Prometheus text format 0.0.4 from the [`Registry`] |
//! | `GET /api/status` | JSON: version, uptime, readiness, SIP listeners, counters (+ the `status` provider's fields) |
//! | `GET /api/<name>` | JSON `{"now": <unix secs>, "items": <provider value>}`; `501` when no provider `name` is registered |
//! | `POST /api/reload` | runs the reload hook (same path as SIGHUP); `501 reload not implemented` without one |
//!
//! **Exposure.** The pinned IPv6 address is reachable from the whole internet, so the API is
//! not served off loopback without a bearer token: with `[admin] token_file` (required by the
//! config for any non-loopback `listen`) `/api/*` and `/metrics` need
//! `Authorization: Bearer <token>`, compared in constant time against the file, which is
//! re-read per request (a rotated Secret works at once); `401` otherwise, counted, never logged
//! with the token. `/healthz` and `/readyz` need no token. The health listener serves only
//! those two (and `/metrics` with `health_metrics`) and has its own connection budget
//! ([`MAX_HEALTH_CONNECTIONS`]), so clients holding every admin connection open cannot fail the
//! probes; concurrent `/healthz` requests share the core loop's next pong, so many at once
//! cannot fill the ping queue either.
//!
//! The HTTP/1.1 server is deliberately minimal and hardened, because the port is reachable by
//! anything on the host network namespace: GET/HEAD (and POST for `/api/reload`) only,
//! `Connection: close` on every answer, request line and headers at most 8 KiB, 2 s to send them,
//! at most [`MAX_CONNECTIONS`] at once (further connections get a best-effort `503` and are
//! closed), no chunked bodies. `/api/*` only accepts a `Host` that is an IP literal or
//! `localhost` (a DNS-rebinding guard), and `POST` is refused when it carries an `Origin` header
//! (browsers add one to cross-site requests).
//!
//! # What the rest of podpbx registers here (all on a cheap-to-clone [`Admin`])
//!
//! * **Metrics**: [`Admin::registry`] for any counter/gauge; [`Admin::metrics`] for the
//!   well-known ones (registrations, active calls, calls by disposition, trunk state, relay,
//!   auth failures, blocked sources).
//! * **JSON for `podpbx ctl`**: [`Admin::provide_snapshot`] returns a [`JsonPublisher`] the owner
//!   (typically the core loop) calls whenever its state changes: publishing is a non-blocking
//!   pointer swap and HTTP clients only ever read the last snapshot, so a slow client never
//!   blocks the SIP core. [`Admin::provide_fn`] registers a closure computed per request instead
//!   (for state already behind a short lock or in atomics). Names `ctl` uses and the fields it
//!   shows: `registrations` (`user`, `contact`, `flow`, `expires_at` unix secs or `expires_in`),
//!   `calls` (`id`, `from`, `to`, `state`, `started_at`), `trunks` (`name`, `state`,
//!   `last_error`, `next_attempt_at`), `status` (an object merged into `/api/status`).
//! * **Readiness**: [`Admin::readiness`] holds named conditions, each a [`ReadyFlag`]
//!   (`Arc<AtomicBool>`). [`Admin::new`] creates `sip` (set by [`Admin::sip_bound`]) and, for every
//!   trunk with `register = true`, `trunk:<name>` (see [`trunk_ready_key`]), which stays unmet
//!   until the trunk code calls [`Admin::set_trunk_registered`] (or sets the flag itself).
//! * **Liveness**: [`Admin::core_requests`] returns the channel the core loop must serve
//!   ([`CoreRequest::Ping`]); `/healthz` fails when the loop stops answering.
//! * **Reload**: [`Admin::reload_requests`] registers the hook; the owner receives
//!   [`ReloadRequest`]s and answers each. SIGHUP should feed the same code path.
//! * **Graceful stop**: [`Shutdown`] turns SIGTERM/SIGINT into [`StopEvent`]s for the core loop:
//!   readiness goes to 503 at once, the core is told to refuse new calls (`Core::begin_shutdown`),
//!   the loop keeps running while `podpbx_calls_active` > 0 for at most [`SHUTDOWN_GRACE`] (a
//!   second signal cuts it short), then the core ends the remaining calls and [`Admin::on_stop`]
//!   hooks flush state.

// The registration API is for components that are wired in one by one; until they are, parts of
// it have no caller in the binary. Test builds (which exercise all of it) keep the lint.
#![cfg_attr(not(test), allow(dead_code))]

use crate::metrics::{register_stats, Counter, PbxMetrics, Registry, CONTENT_TYPE};
use crate::stats::Stats;
use podpbx_config::{Config, Secret, SecretSource};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

/// How long a graceful stop waits for active calls. No config key exists for it yet;
/// Kubernetes' `terminationGracePeriodSeconds` must be larger.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Concurrent admin connections; more are refused so the listener cannot exhaust the process.
pub const MAX_CONNECTIONS: usize = 64;
/// Concurrent connections on the health listener: its own budget, so clients holding every
/// admin connection open do not fail the probes.
pub const MAX_HEALTH_CONNECTIONS: usize = 16;
/// Largest request line plus headers.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (and discarded): only `POST /api/reload` may have one.
const MAX_BODY: usize = 4 * 1024;
/// Time a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the whole answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the core loop has to answer a liveness ping (below the kubelet's 2 s probe timeout).
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Time the reload hook has to answer.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The readiness key of trunk `name`'s registration.
pub fn trunk_ready_key(name: &str) -> String {
    format!("trunk:{name}")
}

/// One readiness condition's state. Cheap to clone; all clones share the value.
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the condition met (`true`) or unmet.
    pub fn set(&self, met: bool) {
        self.0.store(met, Ordering::Release);
    }

    /// Whether the condition is met.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Named readiness conditions; `/readyz` is 200 only when all are met.
#[derive(Debug, Default)]
pub struct Readiness {
    conds: Mutex<Vec<(String, String, ReadyFlag)>>,
}

impl Readiness {
    /// The flag of condition `key` (created unmet on first use); `unmet` is the reason `/readyz`
    /// gives while it is not met.
    pub fn condition(&self, key: &str, unmet: &str) -> ReadyFlag {
        let Ok(mut conds) = self.conds.lock() else {
            return ReadyFlag::default();
        };
        if let Some((_, _, f)) = conds.iter().find(|(k, _, _)| k == key) {
            return f.clone();
        }
        let flag = ReadyFlag::default();
        conds.push((key.to_string(), unmet.to_string(), flag.clone()));
        flag
    }

    /// The flag of an existing condition.
    pub fn flag(&self, key: &str) -> Option<ReadyFlag> {
        let conds = self.conds.lock().ok()?;
        conds
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, f)| f.clone())
    }

    /// Sets condition `key` (created on first use) and the reason `/readyz` gives while unmet.
    pub fn set(&self, key: &str, met: bool, unmet: &str) {
        let Ok(mut conds) = self.conds.lock() else {
            return;
        };
        match conds.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, why, f)) => {
                if why != unmet {
                    *why = unmet.to_string();
                }
                f.set(met);
            }
            None => {
                let flag = ReadyFlag::default();
                flag.set(met);
                conds.push((key.to_string(), unmet.to_string(), flag));
            }
        }
    }

    /// Removes a condition (e.g. a trunk deleted by a reload).
    pub fn remove(&self, key: &str) {
        if let Ok(mut conds) = self.conds.lock() {
            conds.retain(|(k, _, _)| k != key);
        }
    }

    /// The reasons of every unmet condition, in registration order.
    pub fn unmet(&self) -> Vec<String> {
        let Ok(conds) = self.conds.lock() else {
            return vec!["readiness state unavailable".into()];
        };
        conds
            .iter()
            .filter(|(_, _, f)| !f.get())
            .map(|(_, why, _)| why.clone())
            .collect()
    }
}

/// Publishes a JSON snapshot for `/api/<name>`: a non-blocking swap, readers never block the owner.
#[derive(Debug, Clone)]
pub struct JsonPublisher(watch::Sender<Value>);

impl JsonPublisher {
    /// Replaces the snapshot.
    pub fn publish(&self, v: Value) {
        self.0.send_replace(v);
    }
}

type JsonFn = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Clone)]
enum Provider {
    Fn(JsonFn),
    Snapshot(watch::Receiver<Value>),
}

impl Provider {
    fn value(&self) -> Value {
        match self {
            Provider::Fn(f) => f(),
            Provider::Snapshot(rx) => rx.borrow().clone(),
        }
    }
}

/// A liveness ping for the core loop; answer it with [`Ping::pong`].
///
/// Every `/healthz` waiting when a pong comes is answered by it: concurrent probes (say, a
/// client hammering `/healthz` on the admin listener) cannot fill the queue and make the health
/// listener's probe fail, they only share the next pong.
#[derive(Debug)]
pub struct Ping(Arc<watch::Sender<u64>>);

impl Ping {
    /// Proves the loop is alive.
    pub fn pong(self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Something the admin listener needs from the core loop (more variants may follow).
#[derive(Debug)]
pub enum CoreRequest {
    /// `/healthz`: answer with [`Ping::pong`].
    Ping(Ping),
}

/// A reload request (`POST /api/reload`). Answer with `Ok(summary)` or `Err(reason)`.
#[derive(Debug)]
pub struct ReloadRequest {
    reply: oneshot::Sender<Result<String, String>>,
}

impl ReloadRequest {
    /// Reports the outcome to the HTTP client.
    pub fn respond(self, outcome: Result<String, String>) {
        let _ = self.reply.send(outcome);
    }
}

type StopHook = Box<dyn FnOnce() + Send>;

struct Inner {
    registry: Registry,
    metrics: PbxMetrics,
    readiness: Readiness,
    providers: RwLock<HashMap<String, Provider>>,
    reload: Mutex<Option<mpsc::Sender<ReloadRequest>>>,
    core: Mutex<Option<mpsc::Sender<CoreRequest>>>,
    /// Pongs from the core loop, counted; `/healthz` waits for the next one.
    pongs: Arc<watch::Sender<u64>>,
    shutting_down: AtomicBool,
    started: Instant,
    started_unix: u64,
    sip: Mutex<(Vec<SocketAddr>, Vec<SocketAddr>)>,
    stop_hooks: Mutex<Vec<StopHook>>,
    stats: Arc<Stats>,
    rejected: Counter,
    health_rejected: Counter,
    unauthorized: Counter,
}

/// The admin state shared by the listener and every component that registers into it.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

impl Admin {
    /// Creates the registry (with the [`Stats`] counters and the well-known metrics) and the
    /// readiness conditions `cfg` implies. Serves nothing until [`Admin::start`].
    pub fn new(cfg: &Config, stats: Arc<Stats>) -> Admin {
        let registry = Registry::new();
        register_stats(&registry, &stats);
        let metrics = PbxMetrics::register(&registry);
        let readiness = Readiness::default();
        readiness.condition("sip", "SIP listeners are not bound");
        for t in cfg.trunks.iter().filter(|t| t.register) {
            readiness.condition(
                &trunk_ready_key(&t.name),
                &format!("trunk {} is not registered", t.name),
            );
            metrics.trunk_registered(&t.name);
        }
        let rejected = registry.counter(
            "podpbx_admin_rejected_connections_total",
            "Admin connections refused because too many were open.",
            &[],
        );
        let health_rejected = registry.counter(
            "podpbx_health_rejected_connections_total",
            "Health listener connections refused because too many were open.",
            &[],
        );
        let unauthorized = registry.counter(
            "podpbx_admin_unauthorized_total",
            "Admin requests refused with 401: no bearer token, or a wrong one.",
            &[],
        );
        let started_unix = unix_now();
        let inner = Arc::new(Inner {
            registry,
            metrics,
            readiness,
            providers: RwLock::new(HashMap::new()),
            reload: Mutex::new(None),
            core: Mutex::new(None),
            pongs: Arc::new(watch::Sender::new(0)),
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            started_unix,
            sip: Mutex::new((Vec::new(), Vec::new())),
            stop_hooks: Mutex::new(Vec::new()),
            stats,
            rejected,
            health_rejected,
            unauthorized,
        });
        let reg = &inner.registry;
        reg.gauge(
            "podpbx_build_info",
            "podpbx version (always 1).",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1);
        reg.gauge(
            "podpbx_start_time_seconds",
            "Start time of the process, unix seconds.",
            &[],
        )
        .set(i64::try_from(started_unix).unwrap_or(0));
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        reg.gauge_fn(
            "podpbx_ready",
            "Whether /readyz answers 200 (1) or 503 (0).",
            &[],
            move || {
                let ready = weak
                    .upgrade()
                    .is_some_and(|inner| Admin { inner }.not_ready().is_empty());
                if ready {
                    1.0
                } else {
                    0.0
                }
            },
        );
        Admin { inner }
    }

    /// Every metric; register your own here.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The well-known podpbx metrics.
    pub fn metrics(&self) -> &PbxMetrics {
        &self.inner.metrics
    }

    /// The readiness conditions.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Records the bound SIP listeners and marks the `sip` condition met when there is one.
    pub fn sip_bound(&self, udp: Vec<SocketAddr>, tcp: Vec<SocketAddr>) {
        let any = !udp.is_empty() || !tcp.is_empty();
        if let Ok(mut s) = self.inner.sip.lock() {
            *s = (udp, tcp);
        }
        self.inner
            .readiness
            .condition("sip", "SIP listeners are not bound")
            .set(any);
    }

    /// Trunk `name` registered (or lost its registration): sets its readiness condition (when it
    /// has one) and `podpbx_trunk_registered{trunk=name}`.
    pub fn set_trunk_registered(&self, name: &str, registered: bool) {
        if let Some(flag) = self.inner.readiness.flag(&trunk_ready_key(name)) {
            flag.set(registered);
        }
        self.inner
            .metrics
            .trunk_registered(name)
            .set(i64::from(registered));
    }

    /// The trunks' state (once a second from the core loop): the `trunk:<name>` readiness
    /// condition of each (unmet, with the reason, while its host is not resolved or it is not
    /// registered) and its health metrics. Trunks in `known` but no longer listed (a reload
    /// removed them) lose their condition and series; `known` is updated.
    pub fn set_trunks(
        &self,
        ready: &[(String, Option<String>)],
        health: &[crate::trunks::TrunkHealth],
        known: &mut Vec<String>,
    ) {
        for (name, why) in ready {
            let key = trunk_ready_key(name);
            let unmet = why
                .clone()
                .unwrap_or_else(|| format!("trunk {name} is not registered"));
            self.inner.readiness.set(&key, why.is_none(), &unmet);
        }
        for h in health {
            let up = ready.iter().any(|(n, why)| *n == h.name && why.is_none());
            self.inner.metrics.trunk_health(h, up);
        }
        for gone in known.iter().filter(|n| !ready.iter().any(|(r, _)| r == *n)) {
            self.inner.readiness.remove(&trunk_ready_key(gone));
            self.inner.metrics.remove_trunk(gone);
        }
        *known = ready.iter().map(|(n, _)| n.clone()).collect();
    }

    /// Serves `/api/<name>` from snapshots published through the returned handle (`null` until
    /// the first publish). Replaces an earlier provider of the same name.
    pub fn provide_snapshot(&self, name: &str) -> JsonPublisher {
        let (tx, rx) = watch::channel(Value::Null);
        self.set_provider(name, Provider::Snapshot(rx));
        JsonPublisher(tx)
    }

    /// Serves `/api/<name>` by calling `f` on the admin task for each request; `f` must be quick
    /// and must not block. Replaces an earlier provider of the same name.
    pub fn provide_fn(&self, name: &str, f: impl Fn() -> Value + Send + Sync + 'static) {
        self.set_provider(name, Provider::Fn(Arc::new(f)));
    }

    fn set_provider(&self, name: &str, p: Provider) {
        if let Ok(mut map) = self.inner.providers.write() {
            map.insert(name.to_string(), p);
        }
    }

    fn provider(&self, name: &str) -> Option<Provider> {
        self.inner.providers.read().ok()?.get(name).cloned()
    }

    /// Registers the reload hook: `POST /api/reload` sends a [`ReloadRequest`] on the returned
    /// channel and waits up to [`RELOAD_TIMEOUT`] for its answer. Replaces an earlier hook.
    pub fn reload_requests(&self) -> mpsc::Receiver<ReloadRequest> {
        let (tx, rx) = mpsc::channel(1);
        if let Ok(mut r) = self.inner.reload.lock() {
            *r = Some(tx);
        }
        rx
    }

    /// The channel the core loop serves for `/healthz` (and future core queries).
    pub fn core_requests(&self) -> mpsc::Receiver<CoreRequest> {
        let (tx, rx) = mpsc::channel(8);
        if let Ok(mut c) = self.inner.core.lock() {
            *c = Some(tx);
        }
        rx
    }

    /// Marks the process as stopping: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Whether a shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Calls in progress, from `podpbx_calls_active` (kept by the call layer).
    pub fn active_calls(&self) -> u64 {
        u64::try_from(self.inner.metrics.calls_active.get()).unwrap_or(0)
    }

    /// Registers `hook` to run once when podpbx stops, after the core ended the calls (e.g. to
    /// persist state). Hooks run in registration order on the core loop's thread.
    pub fn on_stop(&self, hook: impl FnOnce() + Send + 'static) {
        if let Ok(mut h) = self.inner.stop_hooks.lock() {
            h.push(Box::new(hook));
        }
    }

    fn run_stop_hooks(&self) {
        let hooks = match self.inner.stop_hooks.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(_) => return,
        };
        for hook in hooks {
            hook();
        }
    }

    /// Why `/readyz` fails; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.is_shutting_down() {
            why.push("shutting down".to_string());
        }
        why.extend(self.inner.readiness.unmet());
        why
    }

    /// Binds `listen` and serves every endpoint on a spawned task, without a token. Returns the
    /// bound address.
    pub async fn start(&self, listen: SocketAddr) -> Result<SocketAddr, String> {
        self.start_admin(listen, None).await
    }

    /// Binds `listen` and serves every endpoint; with `token`, `/api/*` and `/metrics` answer
    /// only requests that carry it (`Authorization: Bearer <token>`). Returns the bound address.
    pub async fn start_admin(
        &self,
        listen: SocketAddr,
        token: Option<Secret>,
    ) -> Result<SocketAddr, String> {
        let role = Role::Admin {
            token: token.map(Arc::new),
        };
        self.start_with_limit(listen, role, MAX_CONNECTIONS).await
    }

    /// Binds `listen` and serves `/healthz` and `/readyz` (and `/metrics` with `metrics`) on a
    /// spawned task, with its own connection budget. Returns the bound address.
    pub async fn start_health(
        &self,
        listen: SocketAddr,
        metrics: bool,
    ) -> Result<SocketAddr, String> {
        self.start_with_limit(listen, Role::Health { metrics }, MAX_HEALTH_CONNECTIONS)
            .await
    }

    async fn start_with_limit(
        &self,
        listen: SocketAddr,
        role: Role,
        limit: usize,
    ) -> Result<SocketAddr, String> {
        let (what, key) = match role {
            Role::Admin { .. } => ("admin", "listen"),
            Role::Health { .. } => ("health", "health_listen"),
        };
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            format!("cannot bind the {what} listener {listen}: {e} (set [admin] {key} to a free address, or \"\" to disable it)")
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("{what} listener {listen}: {e}"))?;
        match &role {
            Role::Admin { token: None } => {
                info!(addr = %local, "admin listener: /healthz /readyz /metrics /api")
            }
            Role::Admin { token: Some(_) } => info!(
                addr = %local,
                "admin listener: /healthz /readyz, and /metrics /api with the bearer token"
            ),
            Role::Health { metrics: false } => {
                info!(addr = %local, "health listener: /healthz /readyz")
            }
            Role::Health { metrics: true } => {
                info!(addr = %local, "health listener: /healthz /readyz /metrics")
            }
        }
        tokio::spawn(accept_loop(
            self.clone(),
            listener,
            Arc::new(role),
            Arc::new(Semaphore::new(limit)),
        ));
        Ok(local)
    }

    fn status(&self) -> Value {
        let (udp, tcp) = self.inner.sip.lock().map(|s| s.clone()).unwrap_or_default();
        let s = &self.inner.stats;
        let not_ready = self.not_ready();
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "now": unix_now(),
            "started_at": self.inner.started_unix,
            "uptime_secs": self.inner.started.elapsed().as_secs(),
            "ready": not_ready.is_empty(),
            "not_ready": not_ready,
            "shutting_down": self.is_shutting_down(),
            "sip": {
                "udp": udp.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tcp": tcp.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "registrations": self.inner.metrics.registrations.get(),
            "calls_active": self.inner.metrics.calls_active.get(),
            "counters": {
                "sip_messages_in": Stats::get(&s.messages_in),
                "sip_messages_out": Stats::get(&s.messages_out),
                "sip_bad_requests": Stats::get(&s.bad_requests),
                "sip_dropped_malformed": Stats::get(&s.dropped_malformed),
                "sip_stray_responses": Stats::get(&s.stray_responses),
                "sip_refused_destinations": Stats::get(&s.refused_destinations),
                "sip_keepalives": Stats::get(&s.keepalives),
                "sip_send_errors": Stats::get(&s.send_errors),
                "sip_blocked_requests": Stats::get(&s.blocked_requests),
                "sip_tcp_connections": Stats::get(&s.tcp_connections),
            },
        });
        // Extra fields from a `status` provider; the base fields above win on a clash.
        if let (Some(Value::Object(extra)), Value::Object(base)) =
            (self.provider("status").map(|p| p.value()), &mut v)
        {
            for (k, val) in extra {
                base.entry(k).or_insert(val);
            }
        }
        v
    }

    async fn healthz(&self) -> Response {
        let tx = self.inner.core.lock().ok().and_then(|c| c.clone());
        let Some(tx) = tx else {
            return Response::text(200, "ok\n");
        };
        // Any pong after this point proves the loop alive now.
        let mut pongs = self.inner.pongs.subscribe();
        pongs.mark_unchanged();
        match tx.try_send(CoreRequest::Ping(Ping(self.inner.pongs.clone()))) {
            // Full: pings are queued already; their pongs answer this request too.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Response::text(503, "core loop stopped\n")
            }
        }
        match tokio::time::timeout(PING_TIMEOUT, pongs.changed()).await {
            Ok(Ok(())) => Response::text(200, "ok\n"),
            Ok(Err(_)) => Response::text(503, "core loop stopped\n"),
            Err(_) => Response::text(503, "core loop did not answer within 1 s\n"),
        }
    }

    async fn reload(&self) -> Response {
        let tx = self.inner.reload.lock().ok().and_then(|r| r.clone());
        let Some(tx) = tx else {
            return Response::json_error(501, "reload not implemented");
        };
        let (rtx, rrx) = oneshot::channel();
        match tx.try_send(ReloadRequest { reply: rtx }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Response::json_error(503, "a reload is already in progress")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Response::json_error(501, "reload not implemented")
            }
        }
        match tokio::time::timeout(RELOAD_TIMEOUT, rrx).await {
            Ok(Ok(Ok(msg))) => Response::json(200, &json!({ "ok": true, "message": msg })),
            Ok(Ok(Err(e))) => Response::json(500, &json!({ "ok": false, "error": e })),
            Ok(Err(_)) => Response::json_error(500, "the reload was abandoned"),
            Err(_) => Response::json_error(504, "the reload did not finish in time"),
        }
    }

    /// Checks the request's bearer token against the token file (re-read, so a rotated Secret
    /// takes effect without a restart). The token is never logged.
    fn authorize(&self, token: &Secret, req: &Request) -> Result<(), Response> {
        let current = match token.source() {
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => match podpbx_config::check_admin_token(&text) {
                    Ok(t) => t.to_string(),
                    Err(why) => {
                        warn!(file = %path.display(), reason = %why, "admin token file is invalid: refusing API requests");
                        return Err(Response::json_error(503, "the admin token file is invalid"));
                    }
                },
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read the admin token file: refusing API requests");
                    return Err(Response::json_error(
                        503,
                        "the admin token file is unreadable",
                    ));
                }
            },
            _ => token.expose().to_string(),
        };
        let given = req.authorization.as_ref().and_then(Credentials::bearer);
        let why = match given {
            Some(t) if constant_time_eq(t.as_bytes(), current.as_bytes()) => return Ok(()),
            Some(_) => "the bearer token is wrong",
            None => "a bearer token is required (Authorization: Bearer <token>)",
        };
        self.inner.unauthorized.inc();
        debug!(path = %req.path, reason = why, "admin request refused");
        let mut r = Response::json_error(401, why);
        let challenge = if given.is_some() {
            "Bearer realm=\"podpbx\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"podpbx\""
        };
        r.headers.push(("WWW-Authenticate", challenge.to_string()));
        Err(r)
    }

    async fn route(&self, role: &Role, req: &Request) -> Response {
        let api = req.path.starts_with("/api/");
        let health = matches!(req.path.as_str(), "/healthz" | "/readyz");
        let served = match role {
            Role::Admin { .. } => true,
            Role::Health { metrics } => health || (*metrics && req.path == "/metrics"),
        };
        let allowed: &[&str] = match req.path.as_str() {
            _ if !served => return Response::text(404, "not found\n"),
            "/api/reload" => &["POST"],
            "/healthz" | "/readyz" | "/metrics" => &["GET", "HEAD"],
            p if p.strip_prefix("/api/").is_some_and(valid_provider_name) => &["GET", "HEAD"],
            _ => return Response::text(404, "not found\n"),
        };
        if !allowed.contains(&req.method.as_str()) {
            let mut r = Response::text(405, "method not allowed\n");
            r.headers.push(("Allow", allowed.join(", ")));
            return r;
        }
        if let Role::Admin { token: Some(token) } = role {
            if !health {
                if let Err(r) = self.authorize(token, req) {
                    return r;
                }
            }
        }
        if api && !host_is_literal(req.host.as_deref()) {
            return Response::json_error(403, "the Host header must be an IP address or localhost");
        }
        if req.method == "POST" && req.origin {
            return Response::json_error(403, "cross-origin requests are refused");
        }
        match req.path.as_str() {
            "/healthz" => self.healthz().await,
            "/readyz" => {
                let why = self.not_ready();
                if why.is_empty() {
                    Response::text(200, "ready\n")
                } else {
                    Response::text(503, &format!("not ready: {}\n", why.join("; ")))
                }
            }
            "/metrics" => Response {
                content_type: CONTENT_TYPE,
                ..Response::text(200, &self.inner.registry.render())
            },
            "/api/reload" => self.reload().await,
            "/api/status" => Response::json(200, &self.status()),
            p => {
                let name = p.strip_prefix("/api/").unwrap_or_default();
                match self.provider(name) {
                    Some(prov) => {
                        Response::json(200, &json!({ "now": unix_now(), "items": prov.value() }))
                    }
                    None => Response::json_error(
                        501,
                        &format!("{name} are not available: no provider is registered yet"),
                    ),
                }
            }
        }
    }
}

fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Equal byte strings, in a time that depends only on `secret`'s length (never on where `given`
/// first differs, nor on its length).
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    for (i, s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(g ^ s);
    }
    std::hint::black_box(diff) == 0
}

/// Whether a `Host` value is an IP literal or `localhost`, with an optional port. HTTP/1.0
/// requests without `Host` pass.
fn host_is_literal(host: Option<&str>) -> bool {
    let Some(h) = host else { return true };
    let h = h.trim();
    if h.parse::<SocketAddr>().is_ok() || h.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = match h.rsplit_once(':') {
        Some((n, port)) if port.parse::<u16>().is_ok() => n,
        _ => h,
    };
    name.eq_ignore_ascii_case("localhost")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Events the core loop gets from [`Shutdown::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEvent {
    /// First SIGTERM/SIGINT: `/readyz` is 503 now; the core must refuse new calls
    /// (`Core::begin_shutdown`) and keep running.
    Begin,
    /// No calls left, the grace period is over or a second signal came: the core ends the
    /// remaining calls now (BYEs), the loop sends what is queued and exits; then [`Shutdown::finish`].
    Stop,
}

enum Phase {
    Running,
    Draining(tokio::time::Instant),
    Stopping,
}

/// Graceful stop on SIGTERM and SIGINT, driven from the core loop's `select!`.
pub struct Shutdown {
    admin: Admin,
    grace: Duration,
    phase: Phase,
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers (needs the tokio runtime).
    pub fn new(admin: &Admin, grace: Duration) -> Result<Shutdown, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
        Ok(Shutdown {
            admin: admin.clone(),
            grace,
            phase: Phase::Running,
            signals: Some((term, int)),
        })
    }

    #[cfg(test)]
    fn without_signals(admin: &Admin, grace: Duration) -> Shutdown {
        Shutdown {
            admin: admin.clone(),
            grace,
            phase: Phase::Running,
            signals: None,
        }
    }

    async fn signal(&mut self) -> &'static str {
        let Some((term, int)) = self.signals.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(()) = term.recv() => "SIGTERM",
            Some(()) = int.recv() => "SIGINT",
            else => std::future::pending().await,
        }
    }

    /// Starts the graceful stop without a signal (what the first signal does).
    pub fn begin(&mut self, why: &str) {
        if let Phase::Running = self.phase {
            self.admin.begin_shutdown();
            info!(
                reason = why,
                calls = self.admin.active_calls(),
                grace_secs = self.grace.as_secs(),
                "stopping: not ready, refusing new calls, waiting for active calls"
            );
            self.phase = Phase::Draining(tokio::time::Instant::now() + self.grace);
        }
    }

    /// The next shutdown event. Cancel-safe: use it as a `select!` branch in the core loop.
    pub async fn next(&mut self) -> StopEvent {
        loop {
            match self.phase {
                Phase::Running => {
                    let sig = self.signal().await;
                    self.begin(sig);
                    return StopEvent::Begin;
                }
                Phase::Draining(deadline) => {
                    let calls = self.admin.active_calls();
                    let now = tokio::time::Instant::now();
                    if calls == 0 || now >= deadline {
                        if calls > 0 {
                            warn!(calls, "grace period over: ending the remaining calls");
                        }
                        self.phase = Phase::Stopping;
                        return StopEvent::Stop;
                    }
                    // Calls may end outside the loop's events (media), so look again shortly.
                    let tick = deadline.min(now + Duration::from_millis(100));
                    tokio::select! {
                        sig = self.signal() => {
                            warn!(signal = sig, calls, "second signal: ending the remaining calls now");
                            self.phase = Phase::Stopping;
                            return StopEvent::Stop;
                        }
                        _ = tokio::time::sleep_until(tick) => {}
                    }
                }
                Phase::Stopping => std::future::pending::<()>().await,
            }
        }
    }

    /// Whether [`StopEvent::Stop`] was delivered: the loop should exit after sending its output.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping)
    }

    /// After the loop: runs the [`Admin::on_stop`] hooks.
    pub fn finish(self) {
        self.admin.run_stop_hooks();
        info!("podpbx stopped");
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP/1.1 server.

/// What a listener serves.
enum Role {
    /// `[admin] listen`: everything. With a token, `/api/*` and `/metrics` require it.
    Admin { token: Option<Arc<Secret>> },
    /// `[admin] health_listen`: `/healthz` and `/readyz` (and `/metrics` when `metrics`), no token.
    Health { metrics: bool },
}

async fn accept_loop(admin: Admin, listener: TcpListener, role: Arc<Role>, limit: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let admin = admin.clone();
                let role = role.clone();
                tokio::spawn(async move {
                    handle(&admin, &role, stream, peer).await;
                    drop(permit);
                });
            }
            Err(_) => {
                match *role {
                    Role::Admin { .. } => admin.inner.rejected.inc(),
                    Role::Health { .. } => admin.inner.health_rejected.inc(),
                }
                debug!(%peer, "admin connection refused: too many open");
                let _ = stream
                    .try_write(&Response::text(503, "too many admin connections\n").bytes(false));
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    host: Option<String>,
    origin: bool,
    content_length: usize,
    authorization: Option<Credentials>,
}

/// The value of an `Authorization` header; `Debug` never shows it.
#[derive(PartialEq, Eq)]
struct Credentials(String);

impl Credentials {
    /// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
    fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.0.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// An answer; always `Connection: close`.
#[derive(Debug)]
struct Response {
    code: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Extra header lines (`Allow`, `WWW-Authenticate`).
    headers: Vec<(&'static str, String)>,
}

impl Response {
    fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    fn json(code: u16, v: &Value) -> Response {
        let mut body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Response {
            code,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    fn json_error(code: u16, msg: &str) -> Response {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(msg.into()));
        Response::json(code, &Value::Object(m))
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.code,
            reason(self.code),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

async fn handle(admin: &Admin, role: &Role, mut stream: TcpStream, peer: SocketAddr) {
    let read = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await;
    let (resp, head_only) = match read {
        Err(_) => (Response::text(408, "request timeout\n"), false),
        Ok(Err(ReadError::Io)) => return,
        Ok(Err(ReadError::Respond(r))) => (r, false),
        Ok(Ok(req)) => {
            debug!(%peer, method = %req.method, path = %req.path, "admin request");
            (admin.route(role, &req).await, req.method == "HEAD")
        }
    };
    let out = resp.bytes(head_only);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        if stream.write_all(&out).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
}

enum ReadError {
    /// The connection failed or closed early: nothing to answer.
    Io,
    /// A protocol error to answer.
    Respond(Response),
}

/// Reads the request head (at most [`MAX_HEAD`]) and discards a small body.
async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf, from) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Respond(Response::text(
                431,
                "request head larger than 8 KiB\n",
            )));
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Respond(Response::text(
            431,
            "request head larger than 8 KiB\n",
        )));
    }
    let req = parse_head(&buf[..head_end]).map_err(ReadError::Respond)?;
    if req.content_length > MAX_BODY {
        return Err(ReadError::Respond(Response::text(
            413,
            "request body too large\n",
        )));
    }
    // Read the (ignored) body so that closing does not reset the connection under the answer.
    let mut have = buf.len() - head_end;
    while have < req.content_length {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        have += n;
    }
    Ok(req)
}

/// The index just past the blank line ending the head (`\r\n\r\n` or a bare `\n\n`), searching
/// from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if buf[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let bad = |m: &str| Response::text(400, &format!("bad request: {m}\n"));
    let text = std::str::from_utf8(head).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    if !version.starts_with("HTTP/") {
        return Err(bad("malformed request line"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Response::text(505, "only HTTP/1.0 and HTTP/1.1\n"));
    }
    if !target.starts_with('/') {
        return Err(bad("the target must be a path"));
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut req = Request {
        method: method.to_string(),
        path,
        host: None,
        origin: false,
        content_length: 0,
        authorization: None,
    };
    let mut content_length: Option<usize> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("header line without a colon"));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(bad("malformed header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            if req.host.is_some() {
                return Err(bad("more than one Host header"));
            }
            req.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            req.origin = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            if req.authorization.is_some() {
                return Err(bad("more than one Authorization header"));
            }
            req.authorization = Some(Credentials(value.to_string()));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| bad("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::text(501, "transfer codings are not supported\n"));
        }
    }
    req.content_length = content_length.unwrap_or(0);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn config(extra: &str) -> Config {
        let text =
            format!("[sip]\nipv4 = \"127.0.0.1\"\nport = 5060\n[admin]\nlisten = \"\"\n{extra}");
        Config::from_str(&text, "t.toml").expect("valid test config")
    }

    fn admin(extra: &str) -> Admin {
        Admin::new(&config(extra), Arc::new(Stats::default()))
    }

    /// One blocking HTTP exchange (run on a blocking thread); returns status and body.
    async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
        let request = request.to_string();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.write_all(request.as_bytes()).expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = out
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            assert!(out.contains("Connection: close\r\n") || code == 0, "{out}");
            (code, body)
        })
        .await
        .expect("client thread")
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        )
        .await
    }

    async fn started(a: &Admin) -> SocketAddr {
        a.start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("start")
    }

    #[test]
    fn request_heads_parse_strictly() {
        let r = parse_head(
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9060\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/metrics".into(),
                host: Some("127.0.0.1:9060".into()),
                origin: false,
                content_length: 0,
                authorization: None
            }
        );
        let code = |h: &[u8]| parse_head(h).err().map(|r| r.code);
        assert_eq!(code(b"GET /x HTTP/1.1\n\n"), None);
        assert_eq!(code(b"GET  /x HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(code(b"get /x HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(code(b"GET http://a/x HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(code(b"GET /x HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(code(b"GET /x FOO\r\n\r\n"), Some(400));
        assert_eq!(
            code(b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
            Some(400)
        );
        assert_eq!(code(b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n"), Some(400));
        assert_eq!(
            code(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            code(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            code(b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            code(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(code(b"GET /x HTTP/1.1\r\n\xff: a\r\n\r\n"), Some(400));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    #[test]
    fn host_guard_accepts_ip_literals_and_localhost_only() {
        for ok in [
            None,
            Some("127.0.0.1"),
            Some("127.0.0.1:9060"),
            Some("[::1]:9060"),
            Some("[::1]"),
            Some("localhost:9060"),
            Some("LOCALHOST"),
        ] {
            assert!(host_is_literal(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:9060"),
            Some("localhost.evil.example"),
            Some(""),
        ] {
            assert!(!host_is_literal(bad), "{bad:?}");
        }
    }

    #[test]
    fn readiness_conditions_come_from_config_and_hooks() {
        let a = admin("[[trunks]]\nname = \"prov\"\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"\n[[trunks]]\nname = \"noreg\"\nhost = \"127.0.0.1\"\n");
        assert_eq!(
            a.not_ready(),
            [
                "SIP listeners are not bound",
                "trunk prov is not registered"
            ]
        );
        a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
        assert_eq!(a.not_ready(), ["trunk prov is not registered"]);
        assert!(a
            .registry()
            .render()
            .contains("podpbx_trunk_registered{trunk=\"prov\"} 0\n"));
        assert!(a.registry().render().contains("podpbx_ready 0\n"));
        a.set_trunk_registered("prov", true);
        assert!(a.not_ready().is_empty());
        assert!(a
            .registry()
            .render()
            .contains("podpbx_trunk_registered{trunk=\"prov\"} 1\n"));
        assert!(a.registry().render().contains("podpbx_ready 1\n"));
        // A component-defined condition, found again by key.
        let f = a.readiness().condition("media", "media relay not started");
        assert_eq!(a.not_ready(), ["media relay not started"]);
        a.readiness().flag("media").expect("registered").set(true);
        assert!(f.get() && a.not_ready().is_empty());
        f.set(false);
        a.readiness().remove("media");
        assert!(a.not_ready().is_empty() && a.readiness().flag("media").is_none());
        a.begin_shutdown();
        assert_eq!(a.not_ready(), ["shutting down"]);
    }

    #[tokio::test]
    async fn probes_metrics_and_json_endpoints_answer() {
        let a = admin("");
        let addr = started(&a).await;
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: SIP listeners are not bound\n".into())
        );
        a.sip_bound(vec![], vec!["[::1]:5060".parse().expect("addr")]);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains(
                "# TYPE podpbx_sip_messages_in_total counter\npodpbx_sip_messages_in_total 0\n"
            ),
            "{text}"
        );
        Stats::bump(&a.inner.stats.messages_in);
        assert!(get(addr, "/metrics")
            .await
            .1
            .contains("podpbx_sip_messages_in_total 1\n"));

        let (code, body) = get(addr, "/api/status").await;
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["ready"], true);
        assert_eq!(v["sip"]["tcp"][0], "[::1]:5060");
        assert_eq!(v["counters"]["sip_messages_in"], 1);
        a.provide_fn(
            "status",
            || json!({ "ready": "ignored", "media_workers": 4 }),
        );
        let v: Value = serde_json::from_str(&get(addr, "/api/status").await.1).expect("json");
        assert_eq!(
            (v["ready"].clone(), v["media_workers"].clone()),
            (json!(true), json!(4))
        );

        let (code, body) = get(addr, "/api/registrations").await;
        assert_eq!(code, 501, "{body}");
        assert!(body.contains("no provider"), "{body}");
        let publisher = a.provide_snapshot("registrations");
        publisher.publish(
            json!([{ "user": "1001", "contact": "sip:1001@[::1]:5070", "expires_at": 5 }]),
        );
        let v: Value =
            serde_json::from_str(&get(addr, "/api/registrations").await.1).expect("json");
        assert_eq!(v["items"][0]["user"], "1001");
        assert!(v["now"].as_u64().is_some_and(|n| n > 1_600_000_000));
        publisher.publish(json!([]));
        let v: Value =
            serde_json::from_str(&get(addr, "/api/registrations").await.1).expect("json");
        assert_eq!(v["items"], json!([]));
    }

    #[tokio::test]
    async fn methods_hosts_origins_and_sizes_are_enforced() {
        let a = admin("");
        let addr = started(&a).await;
        assert_eq!(get(addr, "/nope").await.0, 404);
        assert_eq!(get(addr, "/api/Bad%20Name").await.0, 404);
        assert_eq!(
            raw(addr, "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .0,
            405
        );
        assert_eq!(get(addr, "/api/reload").await.0, 405);
        let (code, body) = raw(addr, "HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        assert_eq!((code, body.as_str()), (200, ""));
        assert_eq!(
            raw(
                addr,
                "GET /api/status HTTP/1.1\r\nHost: rebind.example:9060\r\n\r\n"
            )
            .await
            .0,
            403
        );
        assert_eq!(
            raw(
                addr,
                "GET /metrics HTTP/1.1\r\nHost: prometheus.example:9060\r\n\r\n"
            )
            .await
            .0,
            200
        );
        assert_eq!(raw(addr, "GET /api/status HTTP/1.0\r\n\r\n").await.0, 200);
        let post =
            "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n";
        assert_eq!(raw(addr, post).await.0, 403);
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(raw(addr, &huge).await.0, 431);
        let big_body =
            "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n";
        assert_eq!(raw(addr, big_body).await.0, 413);
        assert_eq!(raw(addr, "\x16\x03\x01garbage\r\n\r\n").await.0, 400);
        // Still serving after all of that.
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn reload_hook_answers_or_is_not_implemented() {
        let a = admin("");
        let addr = started(&a).await;
        let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
        let (code, body) = raw(addr, post).await;
        assert_eq!(code, 501);
        assert!(body.contains("reload not implemented"), "{body}");
        let mut rx = a.reload_requests();
        let served = tokio::spawn(async move {
            let first = rx.recv().await.expect("request");
            first.respond(Ok("3 users, 1 trunk".into()));
            let second = rx.recv().await.expect("request");
            second.respond(Err("t.toml:3:1: sip.prot: unknown key".into()));
        });
        let (code, body) = raw(addr, post).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("3 users, 1 trunk"));
        let (code, body) = raw(addr, post).await;
        assert_eq!(code, 500, "{body}");
        assert!(body.contains("sip.prot"));
        served.await.expect("hook task");
    }

    #[tokio::test]
    async fn healthz_follows_the_core_loop() {
        let a = admin("");
        let addr = started(&a).await;
        let mut rx = a.core_requests();
        let core = tokio::spawn(async move {
            // Answer one ping, then stop like a dead loop.
            if let Some(CoreRequest::Ping(p)) = rx.recv().await {
                p.pong();
            }
            rx
        });
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let rx = core.await.expect("core task");
        // Held but never served: a stuck loop.
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "core loop did not answer within 1 s\n")
        );
        drop(rx);
        assert_eq!(
            get(addr, "/healthz").await,
            (503, "core loop stopped\n".into())
        );
    }

    #[tokio::test]
    async fn connections_are_bounded_and_slow_clients_time_out() {
        let a = admin("");
        let addr = a
            .start_with_limit(
                "127.0.0.1:0".parse().expect("addr"),
                Role::Admin { token: None },
                2,
            )
            .await
            .expect("start");
        // Two clients that never send anything hold both slots...
        let idle: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, _) = get(addr, "/healthz").await;
        assert!(code == 503 || code == 0, "refused while full, got {code}");
        assert!(a
            .registry()
            .render()
            .contains("podpbx_admin_rejected_connections_total 1\n"));
        // ...until the read timeout answers them with 408 and frees the slots.
        let codes = tokio::task::spawn_blocking(move || {
            idle.into_iter()
                .map(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    out.get(9..12).unwrap_or("").to_string()
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("readers");
        assert_eq!(codes, ["408", "408"]);
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }

    /// `raw` with one extra header line.
    async fn get_with(addr: SocketAddr, path: &str, header: &str) -> (u16, String) {
        raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}\r\n\r\n"),
        )
        .await
    }

    #[tokio::test]
    async fn a_token_guards_the_api_and_metrics_but_not_the_probes() {
        let dir = std::env::temp_dir().join(format!("podpbx-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "first-token-0123456789\n").expect("write");
        let token = Secret::new("first-token-0123456789", SecretSource::File(file.clone()));
        let a = admin("");
        a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
        let addr = a
            .start_admin("127.0.0.1:0".parse().expect("addr"), Some(token))
            .await
            .expect("start");
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        for path in ["/api/status", "/api/registrations", "/metrics"] {
            let (code, body) = get(addr, path).await;
            assert_eq!(code, 401, "{path}: {body}");
            assert!(body.contains("a bearer token is required"), "{body}");
            let (code, body) =
                get_with(addr, path, "Authorization: Bearer first-token-012345678").await;
            assert_eq!(code, 401, "{path}: a prefix of the token");
            assert!(body.contains("the bearer token is wrong"), "{body}");
            for wrong in [
                "Authorization: Bearer first-token-01234567890",
                "Authorization: Basic Zmlyc3QtdG9rZW4tMDEyMzQ1Njc4OQ==",
                "Authorization: first-token-0123456789",
                "Authorization: Bearer",
            ] {
                assert_eq!(get_with(addr, path, wrong).await.0, 401, "{path}: {wrong}");
            }
            let ok = get_with(addr, path, "Authorization: Bearer first-token-0123456789").await;
            assert_ne!(ok.0, 401, "{path}: {ok:?}");
            assert!(ok.0 == 200 || ok.0 == 501, "{path}: {ok:?}");
            // The scheme is case-insensitive.
            let ok = get_with(addr, path, "authorization: bearer first-token-0123456789").await;
            assert!(ok.0 == 200 || ok.0 == 501, "{path}: {ok:?}");
        }
        // The answer names the scheme (RFC 6750 §3).
        let (code, text) = {
            let request = format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(request.as_bytes()).expect("write");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                (out.get(9..12).unwrap_or("").to_string(), out)
            })
            .await
            .expect("client")
        };
        assert_eq!(code, "401");
        assert!(
            text.contains("\r\nWWW-Authenticate: Bearer realm=\"podpbx\"\r\n"),
            "{text}"
        );
        // Reload goes through the same guard.
        let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(raw(addr, post).await.0, 401);
        let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer first-token-0123456789\r\n\r\n";
        assert_eq!(raw(addr, post).await.0, 501);
        // Two Authorization headers are a bad request, not a second chance.
        assert_eq!(
            get_with(
                addr,
                "/api/status",
                "Authorization: Bearer x\r\nAuthorization: Bearer first-token-0123456789"
            )
            .await
            .0,
            400
        );
        let refused = a.registry().render();
        assert!(
            refused.contains("podpbx_admin_unauthorized_total 20\n"),
            "{refused}"
        );
        // A rotated Secret takes effect at once; an unreadable one refuses everything.
        std::fs::write(&file, "second-token-0123456789").expect("write");
        assert_eq!(
            get_with(
                addr,
                "/api/status",
                "Authorization: Bearer first-token-0123456789"
            )
            .await
            .0,
            401
        );
        assert_eq!(
            get_with(
                addr,
                "/api/status",
                "Authorization: Bearer second-token-0123456789"
            )
            .await
            .0,
            200
        );
        std::fs::remove_file(&file).expect("rm");
        let (code, body) = get_with(
            addr,
            "/api/status",
            "Authorization: Bearer second-token-0123456789",
        )
        .await;
        assert_eq!(
            (code, body.as_str()),
            (503, "{\"error\":\"the admin token file is unreadable\"}\n")
        );
        std::fs::write(&file, "short").expect("write");
        assert_eq!(
            get_with(addr, "/api/status", "Authorization: Bearer short")
                .await
                .0,
            503
        );
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn credentials_never_show_and_compare_in_constant_time() {
        let req = parse_head(
            b"GET /api/status HTTP/1.1\r\nAuthorization: Bearer  s3cret-token-value\r\n\r\n",
        )
        .expect("ok");
        assert!(!format!("{req:?}").contains("s3cret"), "{req:?}");
        assert_eq!(
            req.authorization.as_ref().and_then(Credentials::bearer),
            Some("s3cret-token-value")
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        for other in [&b"abd"[..], b"ab", b"abcd", b"", b"xbc"] {
            assert!(!constant_time_eq(other, b"abc"), "{other:?}");
        }
        assert!(constant_time_eq(b"", b""));
    }

    #[tokio::test]
    async fn the_health_listener_serves_only_health() {
        let a = admin("");
        a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
        let plain = a
            .start_health("127.0.0.1:0".parse().expect("addr"), false)
            .await
            .expect("start");
        let with_metrics = a
            .start_health("127.0.0.1:0".parse().expect("addr"), true)
            .await
            .expect("start");
        for addr in [plain, with_metrics] {
            assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
            assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
            for path in ["/api/status", "/api/registrations", "/api/reload", "/nope"] {
                assert_eq!(get(addr, path).await.0, 404, "{path}");
            }
            let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
            assert_eq!(raw(addr, post).await.0, 404);
            assert_eq!(raw(addr, "POST /healthz HTTP/1.1\r\n\r\n").await.0, 405);
        }
        assert_eq!(get(plain, "/metrics").await.0, 404);
        let (code, text) = get(with_metrics, "/metrics").await;
        assert_eq!(code, 200);
        assert!(text.contains("podpbx_ready 1\n"), "{text}");
    }

    #[tokio::test]
    async fn concurrent_probes_share_pongs_instead_of_failing() {
        let a = admin("");
        let addr = started(&a).await;
        let mut rx = a.core_requests();
        // A slow but live core: it answers one ping every 300 ms.
        let core = tokio::spawn(async move {
            while let Some(CoreRequest::Ping(p)) = rx.recv().await {
                tokio::time::sleep(Duration::from_millis(300)).await;
                p.pong();
            }
        });
        // More probes at once than the ping queue holds (8): all are answered by the pongs.
        let probes: Vec<_> = (0..24)
            .map(|_| tokio::spawn(get(addr, "/healthz")))
            .collect();
        for p in probes {
            assert_eq!(p.await.expect("probe").0, 200);
        }
        core.abort();
    }

    #[tokio::test]
    async fn shutdown_flips_readiness_and_waits_for_calls_within_the_grace() {
        let a = admin("");
        let addr = started(&a).await;
        a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
        let stopped = Arc::new(AtomicBool::new(false));
        let s2 = stopped.clone();
        a.on_stop(move || s2.store(true, Ordering::SeqCst));
        assert_eq!(get(addr, "/readyz").await.0, 200);

        // No calls: Begin, then Stop at once.
        let mut sd = Shutdown::without_signals(&a, Duration::from_secs(10));
        sd.begin("test");
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: shutting down\n".into())
        );
        assert_eq!(
            get(addr, "/healthz").await.0,
            200,
            "still alive while draining"
        );
        let t0 = Instant::now();
        assert_eq!(sd.next().await, StopEvent::Stop);
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(sd.is_stopping());
        sd.finish();
        assert!(stopped.load(Ordering::SeqCst), "stop hooks ran");

        // A call that ends during the grace period.
        let b = admin("");
        b.metrics().calls_active.set(1);
        let mut sd = Shutdown::without_signals(&b, Duration::from_secs(10));
        sd.begin("test");
        let m = b.metrics().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            m.calls_active.set(0);
        });
        let t0 = Instant::now();
        assert_eq!(sd.next().await, StopEvent::Stop);
        assert!(
            t0.elapsed() >= Duration::from_millis(250) && t0.elapsed() < Duration::from_secs(2)
        );

        // A call that outlasts the grace period.
        let c = admin("");
        c.metrics().calls_active.set(2);
        let mut sd = Shutdown::without_signals(&c, Duration::from_millis(300));
        sd.begin("test");
        let t0 = Instant::now();
        assert_eq!(sd.next().await, StopEvent::Stop);
        assert!(
            t0.elapsed() >= Duration::from_millis(280) && t0.elapsed() < Duration::from_secs(2)
        );
        // Stopping is final: next() never fires again.
        assert!(tokio::time::timeout(Duration::from_millis(100), sd.next())
            .await
            .is_err());
    }
}
