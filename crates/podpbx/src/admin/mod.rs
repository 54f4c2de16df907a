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
//! | `POST /api/set/<words>` | a run-time switch handed to the core loop (`mode NAME on`, `dnd USER off`, `forward USER busy TARGET`): `podpbx ctl mode/dnd/forward` |
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
//!   blocks the SIP core. The bodies are typed in [`json`]. Names `ctl` uses and the fields it
//!   shows: `registrations` (`user`, `contact`, `flow`, `expires_at` unix secs or `expires_in`),
//!   `calls` (`id`, `from`, `to`, `state`, `started_at`), `trunks` (`name`, `state`,
//!   `last_error`, `next_attempt_at`), `status` (an object merged into `/api/status`).
//! * **Readiness**: named conditions ([`Readiness`]). [`Admin::new`] creates `sip` (set by
//!   [`Admin::sip_bound`]) and, for every trunk with `register = true`, `trunk:<name>` (see
//!   [`trunk_ready_key`]), which stays unmet until the core loop reports the trunk registered
//!   ([`Admin::set_trunks`], once a second).
//! * **Liveness**: [`Admin::core_requests`] returns the channel the core loop must serve
//!   ([`CoreRequest::Ping`]); `/healthz` fails when the loop stops answering.
//! * **Reload**: [`Admin::reload_requests`] registers the hook; the owner receives
//!   [`ReloadRequest`]s and answers each. SIGHUP should feed the same code path.
//! * **Graceful stop**: `crate::lifecycle::Shutdown` turns SIGTERM/SIGINT into events for the
//!   core loop and flips readiness here ([`Admin::begin_shutdown`]).
//!
//! # Modules
//!
//! * this module: the [`Admin`] handle components register into, and what each path answers;
//! * [`http`]: the hardened HTTP/1.1 server (reading requests, writing answers, connection
//!   budgets);
//! * [`readiness`]: the named conditions behind `/readyz`;
//! * [`json`]: the typed bodies of the JSON answers;
//! * the graceful stop is `crate::lifecycle`.

mod http;
pub mod json;
mod readiness;
#[cfg(test)]
mod tests;

pub use http::{MAX_CONNECTIONS, MAX_HEALTH_CONNECTIONS};
pub use readiness::{trunk_ready_key, Readiness};

use crate::metrics::{register_stats, Counter, PbxMetrics, Registry, CONTENT_TYPE};
use crate::stats::Stats;
use http::{accept_loop, Credentials, Request, Response, Role};
use podpbx_config::{Config, Secret, SecretSource};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

/// Time the core loop has to answer a liveness ping (below the kubelet's 2 s probe timeout).
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Time the reload hook has to answer.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Publishes a JSON snapshot for `/api/<name>`: a non-blocking swap, readers never block the owner.
#[derive(Debug, Clone)]
pub struct JsonPublisher(watch::Sender<Value>);

impl JsonPublisher {
    /// Replaces the snapshot.
    pub fn publish(&self, v: Value) {
        self.0.send_replace(v);
    }
}

/// The source of `/api/<name>`: the last snapshot its owner published, or the core loop asked
/// at request time (for snapshots too large to rebuild every second on speculation).
#[derive(Clone)]
enum Provider {
    Snapshot(watch::Receiver<Value>),
    OnDemand,
}

/// A request for the JSON of `/api/<name>` from a provider registered with
/// [`Admin::provide_on_demand`]; answer with [`SnapshotRequest::reply`].
#[derive(Debug)]
pub struct SnapshotRequest {
    pub name: String,
    reply: oneshot::Sender<Value>,
}

impl SnapshotRequest {
    /// Answers the request (the HTTP client gets `{"now": .., "items": v}`).
    pub fn reply(self, v: Value) {
        let _ = self.reply.send(v);
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
    /// `POST /api/set/<args...>`: a run-time switch (`mode night on`, `dnd 101 off`,
    /// `forward 101 busy 102`); answer with [`Command::respond`].
    Command(Command),
    /// `/api/<name>` of an on-demand provider.
    Snapshot(SnapshotRequest),
}

/// A run-time switch asked for by `podpbx ctl` (`POST /api/set/...`).
#[derive(Debug)]
pub struct Command {
    /// The path's words after `/api/set/`.
    pub args: Vec<String>,
    reply: oneshot::Sender<Result<String, String>>,
}

impl Command {
    /// Answers the request: `Ok(what was done)` or `Err(why not)`.
    pub fn respond(self, r: Result<String, String>) {
        let _ = self.reply.send(r);
    }
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
    /// readiness conditions `cfg` implies. Serves nothing until [`Admin::start_admin`] / [`Admin::start_health`].
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

    /// Serves `/api/<name>` by asking the core loop at request time ([`CoreRequest::Snapshot`],
    /// answered within 1 s): nothing is built while nobody asks.
    pub fn provide_on_demand(&self, name: &str) {
        self.set_provider(name, Provider::OnDemand);
    }

    async fn on_demand(&self, name: &str) -> Result<Value, Response> {
        let tx = self.inner.core.lock().ok().and_then(|c| c.clone());
        let Some(tx) = tx else {
            return Err(Response::json_error(503, "core loop not running"));
        };
        let (reply, rx) = oneshot::channel();
        let req = CoreRequest::Snapshot(SnapshotRequest {
            name: name.to_string(),
            reply,
        });
        if tx.try_send(req).is_err() {
            return Err(Response::json_error(503, "core loop busy"));
        }
        match tokio::time::timeout(PING_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(Response::json_error(
                503,
                "core loop did not answer within 1 s",
            )),
        }
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

    /// Why `/readyz` fails; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.is_shutting_down() {
            why.push("shutting down".to_string());
        }
        why.extend(self.inner.readiness.unmet());
        why
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
        let mut v = json::value(&json::Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            now: unix_now(),
            started_at: self.inner.started_unix,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            ready: not_ready.is_empty(),
            not_ready,
            shutting_down: self.is_shutting_down(),
            sip: json::SipListeners {
                udp: udp.iter().map(ToString::to_string).collect(),
                tcp: tcp.iter().map(ToString::to_string).collect(),
            },
            registrations: self.inner.metrics.registrations.get(),
            calls_active: self.inner.metrics.calls_active.get(),
            counters: json::Counters {
                sip_messages_in: Stats::get(&s.messages_in),
                sip_messages_out: Stats::get(&s.messages_out),
                sip_bad_requests: Stats::get(&s.bad_requests),
                sip_dropped_malformed: Stats::get(&s.dropped_malformed),
                sip_stray_responses: Stats::get(&s.stray_responses),
                sip_refused_destinations: Stats::get(&s.refused_destinations),
                sip_keepalives: Stats::get(&s.keepalives),
                sip_send_errors: Stats::get(&s.send_errors),
                sip_blocked_requests: Stats::get(&s.blocked_requests),
                sip_tcp_connections: Stats::get(&s.tcp_connections),
            },
        });
        // Extra fields from a `status` provider; the base fields above win on a clash.
        let extra = match self.provider("status") {
            Some(Provider::Snapshot(rx)) => Some(rx.borrow().clone()),
            _ => None,
        };
        if let (Some(Value::Object(extra)), Value::Object(base)) = (extra, &mut v) {
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

    /// `POST /api/set/<word>/<word>...`: handed to the core loop, which answers.
    async fn command(&self, path: &str) -> Response {
        let args: Vec<String> = path
            .trim_start_matches("/api/set/")
            .split('/')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        let word_ok = |w: &String| {
            w.len() <= 64
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.+*#-".contains(&b))
        };
        if args.is_empty() || args.len() > 4 || !args.iter().all(word_ok) {
            return Response::json_error(
                400,
                "expected /api/set/<what>/<args> of letters, digits and _.+*#-",
            );
        }
        let tx = self.inner.core.lock().ok().and_then(|c| c.clone());
        let Some(tx) = tx else {
            return Response::json_error(501, "not available");
        };
        let (rtx, rrx) = oneshot::channel();
        if tx
            .try_send(CoreRequest::Command(Command { args, reply: rtx }))
            .is_err()
        {
            return Response::json_error(503, "the core loop is busy, try again");
        }
        match tokio::time::timeout(PING_TIMEOUT, rrx).await {
            Ok(Ok(Ok(message))) => {
                Response::json(200, &json::value(&json::Reloaded::Ok { ok: true, message }))
            }
            Ok(Ok(Err(error))) => Response::json(
                400,
                &json::value(&json::Reloaded::Failed { ok: false, error }),
            ),
            _ => Response::json_error(503, "the core loop did not answer"),
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
            Ok(Ok(Ok(message))) => {
                Response::json(200, &json::value(&json::Reloaded::Ok { ok: true, message }))
            }
            Ok(Ok(Err(error))) => Response::json(
                500,
                &json::value(&json::Reloaded::Failed { ok: false, error }),
            ),
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
            p if p.starts_with("/api/set/") => &["POST"],
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
            p if p.starts_with("/api/set/") => self.command(p).await,
            "/api/status" => Response::json(200, &self.status()),
            p => {
                let name = p.strip_prefix("/api/").unwrap_or_default();
                let value = match self.provider(name) {
                    Some(Provider::Snapshot(rx)) => Some(Ok(rx.borrow().clone())),
                    Some(Provider::OnDemand) => Some(self.on_demand(name).await),
                    None => None,
                };
                match value {
                    Some(Ok(v)) => {
                        let items = json::Items {
                            now: unix_now(),
                            items: v,
                        };
                        Response::json(200, &json::value(&items))
                    }
                    Some(Err(resp)) => resp,
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
