//! Prometheus metrics: a registry of named counters and gauges with labels, rendered in the text
//! exposition format 0.0.4 by the admin listener's `/metrics`.
//!
//! Any part of podpbx registers its values here without the admin module knowing them:
//!
//! ```ignore
//! let failures = registry.counter("podpbx_auth_failures_total", "Failed digest authentications.", &[]);
//! failures.inc();                                        // Arc<AtomicU64> inside: lock-free, cheap
//! let calls = registry.gauge("podpbx_calls_active", "Calls in progress.", &[]);
//! calls.set(3);
//! registry.counter_fn("podpbx_sip_messages_in_total", "...", &[], move || stats.messages_in.load(Relaxed));
//! ```
//!
//! * Registering the same name and labels again returns the same handle (for `*_fn`: replaces
//!   the function), so components may register lazily, e.g. per trunk or per disposition.
//! * Label order does not matter (`[("a","1"),("b","2")]` and `[("b","2"),("a","1")]` are one series).
//! * Output is stable: families sorted by name, series by their labels.
//! * Mistakes never panic (metrics must not take the PBX down): an invalid name, a kind clash
//!   (a counter name reused for a gauge) or more than [`MAX_SERIES`] series in one family are
//!   logged once and yield a *detached* handle that works but is never rendered.
//! * `*_fn` closures run on the admin task at scrape time, without the registry lock held; they
//!   must be cheap and must not block (read atomics, take a short uncontended lock at most).
//!
//! [`PbxMetrics`] pre-registers the well-known podpbx metrics so that their names are fixed in one
//! place and they read 0 from the start (Prometheus best practice); [`register_stats`] exposes the
//! signalling [`Stats`].

use crate::stats::Stats;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::warn;

/// Most series one metric family may have; beyond it registrations are detached (a guard against
/// unbounded label values such as source addresses).
pub const MAX_SERIES: usize = 1000;

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing counter. Cheap to clone (an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone (an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Sets the value from a count (saturating at `i64::MAX`).
    pub fn set_count(&self, n: usize) {
        self.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Metric type, as in `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

type CounterFn = Arc<dyn Fn() -> u64 + Send + Sync>;
type GaugeFn = Arc<dyn Fn() -> f64 + Send + Sync>;

#[derive(Clone)]
enum Source {
    Counter(Counter),
    Gauge(Gauge),
    CounterFn(CounterFn),
    GaugeFn(GaugeFn),
}

impl Source {
    fn value(&self) -> Sample {
        match self {
            Source::Counter(c) => Sample::U(c.get()),
            Source::Gauge(g) => Sample::I(g.get()),
            Source::CounterFn(f) => Sample::U(f()),
            Source::GaugeFn(f) => Sample::F(f()),
        }
    }
}

enum Sample {
    U(u64),
    I(i64),
    F(f64),
}

/// Label pairs, sorted by name.
type Labels = Vec<(String, String)>;

/// A family copied out for rendering: name, help, kind, series.
type FamilySnapshot = (String, String, Kind, Vec<(Labels, Source)>);

struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<Labels, Source>,
}

/// The registry of every metric podpbx exports. Cheap to clone; all clones share the metrics.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.families.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Registry").field("families", &n).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The counter `name{labels}`, registered on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let fresh = Counter::default();
        match self.register(
            name,
            help,
            Kind::Counter,
            labels,
            Source::Counter(fresh.clone()),
            false,
        ) {
            Some(Source::Counter(existing)) => existing,
            _ => fresh,
        }
    }

    /// The gauge `name{labels}`, registered on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let fresh = Gauge::default();
        match self.register(
            name,
            help,
            Kind::Gauge,
            labels,
            Source::Gauge(fresh.clone()),
            false,
        ) {
            Some(Source::Gauge(existing)) => existing,
            _ => fresh,
        }
    }

    /// A counter read from `f` at scrape time (e.g. an `AtomicU64` another struct owns).
    /// Replaces any earlier source of the same series.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.register(
            name,
            help,
            Kind::Counter,
            labels,
            Source::CounterFn(Arc::new(f)),
            true,
        );
    }

    /// A gauge read from `f` at scrape time. Replaces any earlier source of the same series.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.register(
            name,
            help,
            Kind::Gauge,
            labels,
            Source::GaugeFn(Arc::new(f)),
            true,
        );
    }

    /// Removes the series `name{labels}` (e.g. a trunk that a reload deleted); the family goes
    /// when its last series does. Handles still held keep working, detached.
    pub fn remove(&self, name: &str, labels: &[(&str, &str)]) {
        let Ok(key) = label_key(labels) else { return };
        let Ok(mut fams) = self.families.lock() else {
            return;
        };
        if let Some(fam) = fams.get_mut(name) {
            fam.series.remove(&key);
            if fam.series.is_empty() {
                fams.remove(name);
            }
        }
    }

    /// Registers `source` (or, unless `replace`, finds the existing one). Returns the source now
    /// registered for the series, or `None` when the registration was refused (detached).
    fn register(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        source: Source,
        replace: bool,
    ) -> Option<Source> {
        if !valid_metric_name(name) {
            warn!(metric = name, "invalid metric name: not exported");
            return None;
        }
        let key = match label_key(labels) {
            Ok(k) => k,
            Err(bad) => {
                warn!(metric = name, label = %bad, "invalid or duplicate label name: not exported");
                return None;
            }
        };
        let Ok(mut fams) = self.families.lock() else {
            return None;
        };
        let fam = fams.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        if fam.kind != kind {
            warn!(
                metric = name,
                "metric registered as both counter and gauge: second one not exported"
            );
            return None;
        }
        let full = fam.series.len() >= MAX_SERIES;
        match fam.series.get_mut(&key) {
            Some(existing) if replace => {
                *existing = source.clone();
                Some(source)
            }
            Some(existing) => Some(existing.clone()),
            None if full => {
                warn!(
                    metric = name,
                    max = MAX_SERIES,
                    "too many series: not exported"
                );
                None
            }
            None => {
                fam.series.insert(key, source.clone());
                Some(source)
            }
        }
    }

    /// Everything, in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        // Copy the sources out so that `*_fn` closures run without the lock (they may register).
        let snapshot: Vec<FamilySnapshot> = match self.families.lock() {
            Ok(fams) => fams
                .iter()
                .map(|(n, f)| {
                    (
                        n.clone(),
                        f.help.clone(),
                        f.kind,
                        f.series
                            .iter()
                            .map(|(l, s)| (l.clone(), s.clone()))
                            .collect(),
                    )
                })
                .collect(),
            Err(_) => return String::new(),
        };
        let mut out = String::with_capacity(snapshot.len() * 160);
        for (name, help, kind, series) in snapshot {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&help));
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            for (labels, source) in series {
                out.push_str(&name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                out.push(' ');
                match source.value() {
                    Sample::U(v) => {
                        let _ = write!(out, "{v}");
                    }
                    Sample::I(v) => {
                        let _ = write!(out, "{v}");
                    }
                    Sample::F(v) => out.push_str(&format_float(v)),
                }
                out.push('\n');
            }
        }
        out
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Sorted label pairs; `Err(name)` for an invalid or repeated label name.
fn label_key(labels: &[(&str, &str)]) -> Result<Labels, String> {
    let mut key: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    key.sort();
    for (i, (k, _)) in key.iter().enumerate() {
        if !valid_label_name(k) || (i > 0 && key[i - 1].0 == *k) {
            return Err(k.clone());
        }
    }
    Ok(key)
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Exposes the signalling counters of [`Stats`] (read at scrape time; no copies to keep in sync).
pub fn register_stats(reg: &Registry, stats: &Arc<Stats>) {
    type Field = fn(&Stats) -> &AtomicU64;
    let fields: [(&str, &str, Field); 21] = [
        (
            "podpbx_sip_messages_in_total",
            "SIP messages that parsed and reached the core.",
            |s| &s.messages_in,
        ),
        (
            "podpbx_sip_messages_out_total",
            "SIP messages sent (requests and responses, retransmissions included).",
            |s| &s.messages_out,
        ),
        (
            "podpbx_sip_bad_requests_total",
            "Unparseable SIP requests answered with 400.",
            |s| &s.bad_requests,
        ),
        (
            "podpbx_sip_dropped_malformed_total",
            "Malformed SIP input that could not be answered and was dropped.",
            |s| &s.dropped_malformed,
        ),
        (
            "podpbx_sip_stray_responses_total",
            "SIP responses matching no client transaction (dropped).",
            |s| &s.stray_responses,
        ),
        (
            "podpbx_sip_refused_destinations_total",
            "Sends refused: broadcast/multicast destination or a family podpbx lacks.",
            |s| &s.refused_destinations,
        ),
        (
            "podpbx_sip_keepalives_total",
            "CRLF keep-alive pings answered.",
            |s| &s.keepalives,
        ),
        (
            "podpbx_sip_send_errors_total",
            "SIP socket send errors.",
            |s| &s.send_errors,
        ),
        (
            "podpbx_sip_blocked_requests_total",
            "Requests from blocked sources, dropped without an answer.",
            |s| &s.blocked_requests,
        ),
        (
            "podpbx_sip_overloaded_total",
            "Requests answered 503 because the transaction table was full.",
            |s| &s.overloaded,
        ),
        (
            "podpbx_sip_tcp_connections_total",
            "SIP TCP and TLS connections accepted or opened.",
            |s| &s.tcp_connections,
        ),
        (
            "podpbx_sip_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out (inbound and outbound).",
            |s| &s.tls_handshake_failures,
        ),
        (
            "podpbx_sip_tcp_refused_total",
            "Inbound SIP TCP/TLS connections closed at once (total or per-source cap reached).",
            |s| &s.tcp_refused,
        ),
        (
            "podpbx_sip_tcp_timeouts_total",
            "SIP TCP/TLS connections closed because a message was not complete in time.",
            |s| &s.tcp_timeouts,
        ),
        (
            "podpbx_sip_stateless_responses_total",
            "Rejections sent once without a transaction (requests from unverified sources).",
            |s| &s.stateless_responses,
        ),
        (
            "podpbx_sip_foreign_source_total",
            "In-dialog requests, ACKs and CANCELs from an address their dialog's peer does not use (481 or dropped).",
            |s| &s.foreign_source,
        ),
        (
            "podpbx_calls_trunk_refused_total",
            "Trunk steps refused to a source proven only by its address (device, trunk network) without an explicit rule.",
            |s| &s.trunk_refused,
        ),
        (
            "podpbx_calls_not_a_did_total",
            "Calls from a trunk's networks that named none of the trunk's DIDs (404).",
            |s| &s.not_a_did,
        ),
        (
            "podpbx_sip_headers_dropped_total",
            "Callers' Alert-Info/Call-Info values not passed to phones: malformed, oversize, not printable ASCII, or beyond the fourth.",
            |s| &s.headers_dropped,
        ),
        (
            "podpbx_calls_ended_dialogs_evicted_total",
            "Dialogs ended by a BYE forgotten before 64*T1 because that memory was full (a late copy of their BYE then gets 481).",
            |s| &s.ended_dialogs_evicted,
        ),
        (
            "podpbx_sip_auto_answer_stripped_total",
            "Auto-answer/intercom Alert-Info values or parameters from trunks removed before the phones.",
            |s| &s.auto_answer_stripped,
        ),
    ];
    for (name, help, field) in fields {
        let stats = stats.clone();
        reg.counter_fn(name, help, &[], move || Stats::get(field(&stats)));
    }
    let ended = stats.clone();
    reg.gauge_fn(
        "podpbx_calls_ended_dialogs",
        "Dialogs ended by a BYE remembered for 64*T1, so that a late copy of the BYE gets 200.",
        &[],
        move || Stats::get(&ended.ended_dialogs) as f64,
    );
    reg.gauge_fn(
        "podpbx_calls_ended_dialogs_max",
        "Bound of the memory of dialogs ended by a BYE (entries).",
        &[],
        || podpbx_b2bua::MAX_ENDED as f64,
    );
    let open = stats.clone();
    reg.gauge_fn(
        "podpbx_sip_tcp_connections_open",
        "Inbound SIP TCP connections open now (bounded by sip.tcp_max_connections).",
        &[],
        move || Stats::get(&open.tcp_open) as f64,
    );
}

/// How a call ended, the `disposition` label of `podpbx_calls_total` (the CDR's disposition).
pub use podpbx_b2bua::Disposition;

/// Why the relay dropped a packet, the `reason` label of `podpbx_relay_dropped_packets_total`
/// (mirrors `podpbx_media`'s `Drops`).
pub const RELAY_DROP_REASONS: [&str; 7] = [
    "foreign_source",
    "malformed",
    "not_rtp",
    "oversize",
    "no_destination",
    "send_error",
    "srtp",
];

/// The well-known podpbx metrics, registered up front so that they exist (as 0) from the start
/// and their names are defined once. Owners update them through these handles:
///
/// | handle | metric | updated by |
/// |---|---|---|
/// | `registrations` | `podpbx_registrations` | registrar: current bindings |
/// | `calls_active` | `podpbx_calls_active` | call layer; graceful shutdown waits while it is > 0 |
/// | [`PbxMetrics::call_ended`] | `podpbx_calls_total{disposition}` | call layer |
/// | [`PbxMetrics::trunk_registered`] | `podpbx_trunk_registered{trunk}` | trunk: 1 registered, 0 not |
/// | [`PbxMetrics::trunk_health`] | `podpbx_trunk_{up,servers,register_failures,keepalive_failures,dns_failures}{trunk}`, `podpbx_trunk_registers_total{trunk}` | trunks, once a second |
/// | `relay_packets`, `relay_bytes` | `podpbx_relay_{packets,bytes}_total` | media: forwarded |
/// | `relay_session_slots` | `podpbx_relay_session_slots` | media: room in the session tables |
/// | `relay_ssrc_flaps` | `podpbx_relay_ssrc_flaps_total` | media: one source, several streams |
/// | `relay_digits_limited` | `podpbx_relay_digits_limited_total` | media: RFC 4733 digits over a leg's rate |
/// | `relay_events_dropped` | `podpbx_relay_events_dropped_total` | media: events beyond the relay's queue |
/// | [`PbxMetrics::relay_dropped`] | `podpbx_relay_dropped_packets_total{reason}` | media |
/// | `auth_failures` | `podpbx_auth_failures_total` | registrar / call auth |
/// | `blocked_sources` | `podpbx_blocked_sources` | brute-force guard: sources blocked now |
/// | `heap_free_bytes` | `podpbx_heap_free_bytes` | allocator: free memory it holds (every 5 s) |
/// | `heap_unused_resident_bytes` | `podpbx_heap_unused_resident_bytes` | resident memory no live allocation uses (every 5 s) |
/// | `heap_trims` | `podpbx_heap_trims_total` | allocator: free memory handed back after a load |
///
/// Media counters that the relay already keeps can instead be exported with
/// [`Registry::counter_fn`] under the same name (that replaces the handle's series).
#[derive(Debug, Clone)]
pub struct PbxMetrics {
    registry: Registry,
    pub registrations: Gauge,
    pub calls_active: Gauge,
    pub relay_packets: Counter,
    pub relay_bytes: Counter,
    pub relay_session_slots: Gauge,
    pub relay_ssrc_flaps: Counter,
    pub relay_digits_limited: Counter,
    pub relay_events_dropped: Counter,
    pub auth_failures: Counter,
    pub blocked_sources: Gauge,
    pub heap_free_bytes: Gauge,
    pub heap_unused_resident_bytes: Gauge,
    pub heap_trims: Counter,
}

const CALLS_TOTAL: (&str, &str) = ("podpbx_calls_total", "Calls ended, by disposition.");
const TRUNK_REGISTERED: (&str, &str) = (
    "podpbx_trunk_registered",
    "Whether the trunk is registered with the provider (1) or not (0).",
);
/// Per-trunk health gauges: (name, help).
const TRUNK_UP: (&str, &str) = (
    "podpbx_trunk_up",
    "Whether the trunk can take calls now (1: host located and, if it registers, registered).",
);
const TRUNK_GAUGES: [(&str, &str); 4] = [
    (
        "podpbx_trunk_servers",
        "Provider servers known for the trunk (located by DNS, or the configured address).",
    ),
    (
        "podpbx_trunk_register_failures",
        "Consecutive failed registration attempts of the trunk (0 after a success).",
    ),
    (
        "podpbx_trunk_keepalive_failures",
        "Consecutive unanswered keep-alives to the trunk's provider.",
    ),
    (
        "podpbx_trunk_dns_failures",
        "Consecutive failed lookups of the trunk's host name.",
    ),
];
const TRUNK_REGISTERS: (&str, &str) = (
    "podpbx_trunk_registers_total",
    "REGISTER requests sent to the trunk's provider (with authentication follow-ups).",
);
const RELAY_DROPPED: (&str, &str) = (
    "podpbx_relay_dropped_packets_total",
    "RTP/RTCP packets the relay dropped, by reason.",
);

impl PbxMetrics {
    /// Registers the well-known metrics in `reg`.
    pub fn register(reg: &Registry) -> PbxMetrics {
        for d in Disposition::ALL {
            reg.counter(CALLS_TOTAL.0, CALLS_TOTAL.1, &[("disposition", d.as_str())]);
        }
        for r in RELAY_DROP_REASONS {
            reg.counter(RELAY_DROPPED.0, RELAY_DROPPED.1, &[("reason", r)]);
        }
        PbxMetrics {
            registry: reg.clone(),
            registrations: reg.gauge(
                "podpbx_registrations",
                "Registered contacts (bindings) now.",
                &[],
            ),
            calls_active: reg.gauge("podpbx_calls_active", "Calls in progress now.", &[]),
            relay_packets: reg.counter(
                "podpbx_relay_packets_total",
                "RTP/RTCP packets the relay forwarded.",
                &[],
            ),
            relay_bytes: reg.counter(
                "podpbx_relay_bytes_total",
                "RTP/RTCP bytes the relay forwarded.",
                &[],
            ),
            relay_session_slots: reg.gauge(
                "podpbx_relay_session_slots",
                "Room in the relay workers' session tables (sessions); given back a few \
                 seconds after a load.",
                &[],
            ),
            relay_ssrc_flaps: reg.counter(
                "podpbx_relay_ssrc_flaps_total",
                "SSRC changes of the RTP from one latched source within 200 ms of the one \
                 before: several streams (calls) sent from one address and port.",
                &[],
            ),
            relay_digits_limited: reg.counter(
                "podpbx_relay_digits_limited_total",
                "RFC 4733 digits not reported to the call layer: their leg sent more than a \
                 burst of 20 and 20 a second (the packets were forwarded).",
                &[],
            ),
            relay_events_dropped: reg.counter(
                "podpbx_relay_events_dropped_total",
                "Relay events (media timeouts, digits) dropped: the core loop fell 1 024 \
                 events behind.",
                &[],
            ),
            auth_failures: reg.counter(
                "podpbx_auth_failures_total",
                "Failed digest authentications.",
                &[],
            ),
            blocked_sources: reg.gauge(
                "podpbx_blocked_sources",
                "Source addresses blocked by the brute-force guard now.",
                &[],
            ),
            heap_free_bytes: reg.gauge(
                "podpbx_heap_free_bytes",
                "Free memory the allocator holds (resident or handed back), sampled every 5 s.",
                &[],
            ),
            heap_unused_resident_bytes: reg.gauge(
                "podpbx_heap_unused_resident_bytes",
                "Resident memory no live allocation uses (free pages not yet handed back, \
                 thread stacks), sampled every 5 s; a trim hands it back when it grows 8 MB.",
                &[],
            ),
            heap_trims: reg.counter(
                "podpbx_heap_trims_total",
                "Times the free memory a load left behind was handed back to the kernel.",
                &[],
            ),
        }
    }

    /// Counts one ended call.
    pub fn call_ended(&self, d: Disposition) {
        self.registry
            .counter(CALLS_TOTAL.0, CALLS_TOTAL.1, &[("disposition", d.as_str())])
            .inc();
    }

    /// The registration state gauge of trunk `name` (register it at start for every trunk with
    /// `register = true`, so that it reads 0 until the first registration succeeds).
    pub fn trunk_registered(&self, name: &str) -> Gauge {
        self.registry
            .gauge(TRUNK_REGISTERED.0, TRUNK_REGISTERED.1, &[("trunk", name)])
    }

    /// Publishes one trunk's health (`up`: usable now).
    pub fn trunk_health(&self, h: &crate::trunks::TrunkHealth, up: bool) {
        let l: &[(&str, &str)] = &[("trunk", h.name.as_str())];
        let reg = &self.registry;
        if let Some(r) = h.registered {
            self.trunk_registered(&h.name).set(i64::from(r));
        }
        reg.gauge(TRUNK_UP.0, TRUNK_UP.1, l).set(i64::from(up));
        let values = [
            h.targets as i64,
            i64::from(h.register_failures),
            i64::from(h.keepalive_failures),
            i64::from(h.dns_failures),
        ];
        for ((name, help), v) in TRUNK_GAUGES.iter().zip(values) {
            reg.gauge(name, help, l).set(v);
        }
        let sent = reg.counter(TRUNK_REGISTERS.0, TRUNK_REGISTERS.1, l);
        // The registration counts since it was created; a reload that re-creates it starts at 0
        // again, and the counter only ever moves forward.
        sent.add(h.registers_sent.saturating_sub(sent.get()));
    }

    /// Drops every series of trunk `name` (a reload removed it).
    pub fn remove_trunk(&self, name: &str) {
        let l: &[(&str, &str)] = &[("trunk", name)];
        for (n, _) in TRUNK_GAUGES
            .iter()
            .chain([&TRUNK_UP, &TRUNK_REGISTERS, &TRUNK_REGISTERED])
        {
            self.registry.remove(n, l);
        }
    }

    /// The drop counter for `reason` (one of [`RELAY_DROP_REASONS`]).
    pub fn relay_dropped(&self, reason: &str) -> Counter {
        self.registry
            .counter(RELAY_DROPPED.0, RELAY_DROPPED.1, &[("reason", reason)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses rendered text back into `series -> value`, checking the 0.0.4 grammar on the way:
    /// every sample follows its family's `# HELP` and `# TYPE` lines.
    fn parse(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut family = String::new();
        let mut typed = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap_or_default().to_string();
                typed = false;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                assert_eq!(
                    p.next(),
                    Some(family.as_str()),
                    "TYPE after HELP of the same family"
                );
                assert!(matches!(p.next(), Some("counter") | Some("gauge")));
                typed = true;
            } else {
                assert!(typed, "sample before TYPE: {line}");
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                assert!(series.starts_with(&family), "{series} in family {family}");
                out.insert(series.to_string(), value.to_string());
            }
        }
        out
    }

    #[test]
    fn counters_and_gauges_render_sorted_with_help_and_type() {
        let reg = Registry::new();
        let c = reg.counter("zz_total", "Last.", &[]);
        let g = reg.gauge("aa_now", "First.", &[]);
        c.add(5);
        c.inc();
        g.set(-2);
        let text = reg.render();
        assert_eq!(text, "# HELP aa_now First.\n# TYPE aa_now gauge\naa_now -2\n# HELP zz_total Last.\n# TYPE zz_total counter\nzz_total 6\n");
    }

    #[test]
    fn same_series_returns_the_same_handle_regardless_of_label_order() {
        let reg = Registry::new();
        let a = reg.counter("x_total", "X.", &[("a", "1"), ("b", "2")]);
        let b = reg.counter("x_total", "X.", &[("b", "2"), ("a", "1")]);
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
        reg.counter("x_total", "X.", &[("a", "0"), ("b", "2")])
            .inc();
        let m = parse(&reg.render());
        assert_eq!(m["x_total{a=\"0\",b=\"2\"}"], "1");
        assert_eq!(m["x_total{a=\"1\",b=\"2\"}"], "2");
        let order: Vec<_> = m.keys().cloned().collect();
        assert_eq!(
            order,
            ["x_total{a=\"0\",b=\"2\"}", "x_total{a=\"1\",b=\"2\"}"]
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let reg = Registry::new();
        reg.gauge("t", "Back\\slash\nnewline.", &[("v", "q\"b\\n\nl")])
            .set(1);
        let text = reg.render();
        assert!(
            text.contains("# HELP t Back\\\\slash\\nnewline.\n"),
            "{text}"
        );
        assert!(text.contains("t{v=\"q\\\"b\\\\n\\nl\"} 1\n"), "{text}");
    }

    #[test]
    fn mistakes_yield_detached_handles_and_never_panic() {
        let reg = Registry::new();
        let bad = reg.counter("1bad", "x", &[]);
        bad.inc();
        let badl = reg.counter("ok_total", "x", &[("__reserved", "1")]);
        badl.inc();
        let dup = reg.counter("ok_total", "x", &[("a", "1"), ("a", "2")]);
        dup.inc();
        reg.counter("k", "x", &[]).inc();
        let clash = reg.gauge("k", "x", &[]);
        clash.set(7);
        assert_eq!(clash.get(), 7, "detached handles still work");
        let text = reg.render();
        assert_eq!(text, "# HELP k x\n# TYPE k counter\nk 1\n");
    }

    #[test]
    fn series_per_family_are_bounded() {
        let reg = Registry::new();
        for i in 0..MAX_SERIES + 10 {
            reg.counter("many_total", "x", &[("i", &i.to_string())])
                .inc();
        }
        assert_eq!(parse(&reg.render()).len(), MAX_SERIES);
    }

    #[test]
    fn fn_sources_are_read_at_scrape_time_and_replace() {
        let reg = Registry::new();
        let v = Arc::new(AtomicU64::new(1));
        let v2 = v.clone();
        reg.counter_fn("f_total", "F.", &[], move || v2.load(Ordering::Relaxed));
        reg.gauge_fn("g", "G.", &[], || 0.5);
        assert_eq!(parse(&reg.render())["f_total"], "1");
        v.store(42, Ordering::Relaxed);
        let m = parse(&reg.render());
        assert_eq!(m["f_total"], "42");
        assert_eq!(m["g"], "0.5");
        reg.gauge_fn("g", "G.", &[], || f64::NAN);
        reg.gauge_fn("h", "H.", &[], || f64::INFINITY);
        let m = parse(&reg.render());
        assert_eq!((m["g"].as_str(), m["h"].as_str()), ("NaN", "+Inf"));
        // A closure may itself register without deadlocking the render.
        let r2 = reg.clone();
        reg.gauge_fn("reentrant", "R.", &[], move || {
            r2.counter("inner_total", "I.", &[]).inc();
            1.0
        });
        reg.render();
        assert!(reg.render().contains("inner_total 1\n"));
    }

    #[test]
    fn remove_drops_series_and_empty_families() {
        let reg = Registry::new();
        reg.gauge("t", "T.", &[("trunk", "a")]).set(1);
        reg.gauge("t", "T.", &[("trunk", "b")]).set(1);
        reg.remove("t", &[("trunk", "a")]);
        assert_eq!(parse(&reg.render()).len(), 1);
        reg.remove("t", &[("trunk", "b")]);
        assert_eq!(reg.render(), "");
    }

    #[test]
    fn stats_and_well_known_metrics_start_at_zero_and_follow_updates() {
        let reg = Registry::new();
        let stats = Arc::new(Stats::default());
        register_stats(&reg, &stats);
        let pm = PbxMetrics::register(&reg);
        let m = parse(&reg.render());
        for name in [
            "podpbx_sip_messages_in_total",
            "podpbx_sip_tcp_connections_total",
            "podpbx_registrations",
            "podpbx_calls_active",
            "podpbx_calls_total{disposition=\"no_answer\"}",
            "podpbx_relay_dropped_packets_total{reason=\"foreign_source\"}",
            "podpbx_auth_failures_total",
            "podpbx_blocked_sources",
        ] {
            assert_eq!(m.get(name).map(String::as_str), Some("0"), "{name}");
        }
        Stats::bump(&stats.messages_in);
        Stats::bump(&stats.messages_in);
        pm.call_ended(Disposition::Busy);
        pm.trunk_registered("sipgate").set(1);
        pm.relay_dropped("oversize").add(3);
        pm.calls_active.set_count(2);
        pm.relay_packets.add(10);
        pm.relay_bytes.add(1720);
        pm.auth_failures.inc();
        pm.blocked_sources.set(1);
        let m = parse(&reg.render());
        assert_eq!(m["podpbx_sip_messages_in_total"], "2");
        assert_eq!(m["podpbx_calls_total{disposition=\"busy\"}"], "1");
        assert_eq!(m["podpbx_trunk_registered{trunk=\"sipgate\"}"], "1");
        assert_eq!(
            m["podpbx_relay_dropped_packets_total{reason=\"oversize\"}"],
            "3"
        );
        assert_eq!(m["podpbx_calls_active"], "2");
        assert_eq!(m["podpbx_relay_packets_total"], "10");
        assert_eq!(m["podpbx_relay_bytes_total"], "1720");
        assert_eq!(m["podpbx_auth_failures_total"], "1");
        assert_eq!(m["podpbx_blocked_sources"], "1");
    }
}
