//! Process-wide counters: cheap atomics bumped on the signalling path, read by logs and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Signalling counters. Every dropped or rejected input is counted under exactly one reason.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages that parsed and reached the core.
    pub messages_in: AtomicU64,
    /// Messages podpbx sent (requests and responses, retransmissions included).
    pub messages_out: AtomicU64,
    /// Unparseable input answered with `400`.
    pub bad_requests: AtomicU64,
    /// Unparseable input that could not be answered (no usable Via, garbage, responses): dropped.
    pub dropped_malformed: AtomicU64,
    /// Responses matching no client transaction: dropped, never answered.
    pub stray_responses: AtomicU64,
    /// Sends refused because the destination was broadcast/multicast or of a family we lack.
    pub refused_destinations: AtomicU64,
    /// CRLF keep-alive pings answered.
    pub keepalives: AtomicU64,
    /// Socket send errors.
    pub send_errors: AtomicU64,
    /// Requests from blocked sources, dropped without an answer.
    pub blocked_requests: AtomicU64,
    /// Failed authentications (wrong password, unknown user, bad credentials, wrong network).
    pub auth_failures: AtomicU64,
    /// Requests answered `503` because the transaction table was full.
    pub overloaded: AtomicU64,
    /// New INVITEs/REGISTERs answered `503` by overload control, per `overload::Reason`.
    pub shed: [AtomicU64; 5],
    /// Calls in set-up at the latest count (overload control, `[calls] max_setup`).
    pub calls_setup: AtomicU64,
    /// The loop's latest lag behind the network, in microseconds.
    pub loop_lag_us: AtomicU64,
    /// TCP and TLS connections accepted or opened.
    pub tcp_connections: AtomicU64,
    /// TLS handshakes that failed or timed out (either side; the refused server certificates of
    /// connections podpbx opens are also logged).
    pub tls_handshake_failures: AtomicU64,
    /// Rejections sent once without a transaction (to requests from unverified sources).
    pub stateless_responses: AtomicU64,
    /// In-dialog requests, ACKs and CANCELs from an address their dialog's (or INVITE's) peer
    /// does not use: 481 or dropped.
    pub foreign_source: AtomicU64,
    /// Trunk steps refused to a source proven only by its address (device, trunk network)
    /// without an explicit rule.
    pub trunk_refused: AtomicU64,
    /// Calls from a trunk's networks that named none of its DIDs (404).
    pub not_a_did: AtomicU64,
    /// Callers' `Alert-Info`/`Call-Info` values not passed to phones: malformed, oversize, not
    /// printable ASCII, or beyond the fourth.
    pub headers_dropped: AtomicU64,
    /// Auto-answer/intercom `Alert-Info` values or parameters from trunks removed.
    pub auto_answer_stripped: AtomicU64,
    /// Inbound TCP/TLS connections closed at once: the total or the per-source cap was reached.
    pub tcp_refused: AtomicU64,
    /// TCP/TLS connections closed because a message was not complete within its deadline (or a
    /// new connection sent no complete message in time).
    pub tcp_timeouts: AtomicU64,
    /// Inbound TCP/TLS connections open now (a gauge).
    pub tcp_open: AtomicU64,
    /// Dialogs a BYE ended, remembered so that a late copy of the BYE gets `200` (a gauge).
    pub ended_dialogs: AtomicU64,
    /// Ended dialogs forgotten before 64·T1 because that memory was full.
    pub ended_dialogs_evicted: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
