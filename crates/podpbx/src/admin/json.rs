//! The JSON bodies the admin API answers with, as types: what `podpbx ctl` and scripts read is
//! written down here once, not assembled from `json!` fragments.

use serde::Serialize;
use serde_json::Value;

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub pid: u32,
    /// Unix seconds.
    pub now: u64,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub ready: bool,
    /// Why `/readyz` fails; empty when ready.
    pub not_ready: Vec<String>,
    pub shutting_down: bool,
    pub sip: SipListeners,
    /// Bound contacts (`podpbx_registrations`).
    pub registrations: i64,
    /// Calls in progress (`podpbx_calls_active`).
    pub calls_active: i64,
    pub counters: Counters,
}

/// The bound SIP listeners.
#[derive(Debug, Serialize)]
pub struct SipListeners {
    pub udp: Vec<String>,
    pub tcp: Vec<String>,
}

/// Signalling counters since the start.
#[derive(Debug, Serialize)]
pub struct Counters {
    pub sip_messages_in: u64,
    pub sip_messages_out: u64,
    pub sip_bad_requests: u64,
    pub sip_dropped_malformed: u64,
    pub sip_stray_responses: u64,
    pub sip_refused_destinations: u64,
    pub sip_keepalives: u64,
    pub sip_send_errors: u64,
    pub sip_blocked_requests: u64,
    pub sip_tcp_connections: u64,
}

/// `GET /api/<name>`: a provider's snapshot.
#[derive(Debug, Serialize)]
pub struct Items {
    /// Unix seconds.
    pub now: u64,
    pub items: Value,
}

/// `POST /api/reload`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reloaded {
    Ok { ok: bool, message: String },
    Failed { ok: bool, error: String },
}

/// Any refused API request.
#[derive(Debug, Serialize)]
pub struct Error<'a> {
    pub error: &'a str,
}

/// One entry of `GET /api/registrations` (published by the core loop).
#[derive(Debug, Serialize)]
pub struct Registration<'a> {
    pub user: &'a str,
    pub contact: &'a str,
    /// `Udp [2001:db8::7]:5062 -> [2001:db8::1]:5060`.
    pub flow: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub reachable: bool,
    pub user_agent: Option<&'a str>,
}

/// A typed body as a JSON value (for [`super::JsonPublisher`] and merging).
pub fn value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `GET /api/registrations`: every current binding.
pub fn registrations(registrar: &podpbx_registrar::Registrar) -> Value {
    let items: Vec<Registration<'_>> = registrar
        .all_bindings()
        .map(|(user, b)| Registration {
            user,
            contact: &b.contact_uri,
            flow: format!(
                "{:?} {} -> {}",
                b.flow.transport, b.flow.remote, b.flow.local
            ),
            expires_at: b
                .expires_at_wall
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            reachable: b.reachable,
            user_agent: b.user_agent.as_deref(),
        })
        .collect();
    value(&items)
}
