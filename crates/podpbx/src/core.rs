//! The signalling core: a sans-IO state machine fed parsed messages and `now`, producing
//! messages to send. Sockets and tokio live in `server.rs`; everything here runs in tests
//! without a network or a clock.

use crate::stats::Stats;
use crate::transport::Flow;
use bytes::{Bytes, BytesMut};
use podpbx_sip::checks::{check_request, Capabilities, Rejection};
use podpbx_sip::transaction::{
    Peer, RequestDisposition, ResponseDisposition, ServerTxId, Timers, TransactionLayer, TxEvent,
};
use podpbx_sip::{HeaderName, Message, Method, ResponseBuilder, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, debug_span, warn};

/// Something the core wants the I/O shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes to `dest` over `transport` (reusing TCP connection `conn` when alive).
    Send { transport: Transport, dest: SocketAddr, conn: u64, data: Bytes },
}

/// Core settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `Server`/`User-Agent` header value (empty: not sent).
    pub user_agent: String,
    /// RFC 3261 timer base values.
    pub timers: Timers,
    /// Bound on concurrent transactions; beyond it new requests get `503`.
    pub max_transactions: usize,
}

/// The sans-IO signalling core.
pub struct Core {
    cfg: CoreConfig,
    stats: Arc<Stats>,
    tx: TransactionLayer,
    caps: Capabilities,
}

/// Methods podpbx answers itself today; the Allow header lists exactly these.
const ALLOW: &[Method] = &[Method::Options, Method::Ack, Method::Cancel];

impl Core {
    /// Creates a core.
    pub fn new(cfg: CoreConfig, stats: Arc<Stats>) -> Core {
        let caps = Capabilities {
            methods: ALLOW.to_vec(),
            accept: vec!["application/sdp".into()],
            supported: vec![],
        };
        let tx = TransactionLayer::new(cfg.timers, cfg.max_transactions);
        Core { cfg, stats, tx, caps }
    }

    /// Feeds one parsed message that arrived on `flow`.
    pub fn handle_message(&mut self, now: Instant, msg: &Message, flow: Flow) {
        if !msg.is_request() {
            match self.tx.on_response(now, msg) {
                // No client transactions deliver to a TU yet (registrar qualify, trunk come later).
                ResponseDisposition::Deliver(_) | ResponseDisposition::Absorbed(_) => {}
                ResponseDisposition::Stray => {
                    // RFC 3261 §18.1.2: a response matching no transaction is dropped, never answered.
                    Stats::bump(&self.stats.stray_responses);
                    debug!(remote = %flow.remote, "stray response dropped");
                }
            }
            return;
        }
        let call_id = msg.call_id().unwrap_or_default();
        let branch = msg.top_via().ok().and_then(|v| v.branch()).unwrap_or_default();
        let span = debug_span!(
            "sip_tx",
            call_id = %String::from_utf8_lossy(&call_id),
            branch = %String::from_utf8_lossy(&branch),
            remote = %flow.remote,
        );
        let _guard = span.enter();
        let peer = Peer { addr: response_destination(msg, flow), transport: flow.transport, conn: flow.conn };
        match self.tx.on_request(now, msg, msg.buf.clone(), peer) {
            RequestDisposition::New(id) => self.handle_request(now, id, msg, flow),
            RequestDisposition::Retransmission(_) | RequestDisposition::AckAbsorbed(_) => {
                debug!("retransmission absorbed");
            }
            // No dialogs exist yet, so an ACK for a 2xx has nothing to confirm.
            RequestDisposition::AckFor2xx => {}
            RequestDisposition::Cancel { tx, target } => {
                // RFC 3261 §9.2: 200 to a CANCEL that matches; the INVITE it targets was already
                // answered finally (INVITE is not implemented yet), so the CANCEL has no further effect.
                let (code, reason) = if target.is_some() { (200, "OK") } else { (481, "Call/Transaction Does Not Exist") };
                self.respond(now, tx, msg, flow, code, reason, &[]);
            }
            RequestDisposition::Overloaded => {
                let data = self.build(msg, flow, 503, "Service Unavailable", &[("Retry-After", "5")]);
                warn!("transaction table full: 503");
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

    /// The next instant [`Core::handle_timeout`] must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Timeout(id) => debug!(?id, "transaction timed out"),
                TxEvent::TransportError(id) => debug!(?id, "transaction transport error"),
                TxEvent::Terminated(_) => {}
            }
        }
    }

    /// Tells the transaction layer that sending to `peer` failed.
    pub fn transport_error(&mut self, peer: Peer) {
        self.tx.on_transport_error(peer);
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.tx.poll_transmit().map(|t| Output::Send {
            transport: t.peer.transport,
            dest: t.peer.addr,
            conn: t.peer.conn,
            data: t.data,
        })
    }

    fn handle_request(&mut self, now: Instant, id: ServerTxId, req: &Message, flow: Flow) {
        let method = req.method().cloned().unwrap_or(Method::Other(Bytes::new()));
        if let Err(rej) = check_request(req, &self.caps) {
            match rej {
                Rejection::Drop(why) => {
                    Stats::bump(&self.stats.dropped_malformed);
                    debug!(reason = why, "request dropped");
                }
                Rejection::Respond { code, reason, headers } => {
                    if code == 400 {
                        Stats::bump(&self.stats.bad_requests);
                    }
                    let hdrs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    self.respond(now, id, req, flow, code, &reason, &hdrs);
                }
            }
            return;
        }
        let in_dialog = req.to_hdr().ok().and_then(|t| t.tag()).is_some();
        match method {
            Method::Options if !in_dialog => {
                let allow = self.caps.allow_header();
                let accept = self.caps.accept.join(", ");
                let supported = self.caps.supported.join(", ");
                let hdrs = [("Allow", allow.as_str()), ("Accept", accept.as_str()), ("Supported", supported.as_str()), ("Accept-Language", "en")];
                self.respond(now, id, req, flow, 200, "OK", &hdrs);
            }
            _ if in_dialog => self.respond(now, id, req, flow, 481, "Call/Transaction Does Not Exist", &[]),
            _ => {
                let allow = self.caps.allow_header();
                self.respond(now, id, req, flow, 501, "Not Implemented", &[("Allow", &allow)]);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(&mut self, now: Instant, id: ServerTxId, req: &Message, flow: Flow, code: u16, reason: &str, headers: &[(&str, &str)]) {
        let data = self.build(req, flow, code, reason, headers);
        debug!(code, "response");
        if let Err(e) = self.tx.send_response(now, id, code, data) {
            warn!(error = %e, code, "response not sent");
        }
    }

    fn build(&self, req: &Message, flow: Flow, code: u16, reason: &str, headers: &[(&str, &str)]) -> Bytes {
        let mut b = ResponseBuilder::new(req, code, reason, Some(flow.remote));
        if code > 100 {
            b = b.to_tag(&token());
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

/// Where a response goes (RFC 3261 §18.2.2, RFC 3581 §4): the connection it came on for TCP;
/// for UDP the source IP (never the Via host, which may be broadcast) and the source port when
/// `rport` was asked for, else the sent-by port.
pub fn response_destination(req: &Message, flow: Flow) -> SocketAddr {
    if flow.transport == Transport::Tcp {
        return flow.remote;
    }
    match req.top_via() {
        Ok(via) if via.rport().is_none() => SocketAddr::new(flow.remote.ip(), via.port.unwrap_or(5060)),
        _ => flow.remote,
    }
}

/// Builds a `400` for a request that failed to parse, from whatever header lines can be
/// salvaged; `None` when no response can be formed (responses, garbage, missing Via/CSeq...).
pub fn bad_request(data: &[u8], reason: &str, flow: Flow) -> Option<(SocketAddr, Bytes)> {
    let mut lines = data.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next()?;
    let mut parts = start.split(|b| *b == b' ');
    let method = parts.next()?;
    if method.is_empty() || method.starts_with(b"SIP/") || !method.iter().all(|b| b.is_ascii_alphabetic()) {
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
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
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
    let reason: String = reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').collect();
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
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

/// A random token for tags and branches: 64 bits from the std hasher's per-process random keys
/// mixed with a counter, so no RNG crate is needed for identifiers that only must be unique.
pub fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}
