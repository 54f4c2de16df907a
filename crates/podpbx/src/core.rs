//! The signalling core: a sans-IO state machine fed parsed messages and `now`, producing
//! messages to send. Sockets and tokio live in `server.rs`; everything here runs in tests
//! without a network or a clock.

use crate::stats::Stats;
use crate::transport::{Flow, Transport};
use bytes::{Bytes, BytesMut};
use podpbx_sip::checks::{check_request, Capabilities, Rejection};
use podpbx_sip::{HeaderName, Message, Method, ResponseBuilder};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, debug_span};

/// Something the core wants the I/O shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes to `dest` over `transport` (reusing TCP connection `conn` when alive).
    Send { transport: Transport, dest: SocketAddr, conn: u64, data: Bytes },
}

/// Core settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `Server`/`User-Agent` header value.
    pub user_agent: String,
}

/// The sans-IO signalling core.
pub struct Core {
    cfg: CoreConfig,
    stats: Arc<Stats>,
    out: VecDeque<Output>,
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
        Core { cfg, stats, out: VecDeque::new(), caps }
    }

    /// Feeds one parsed message that arrived on `flow`.
    pub fn handle_message(&mut self, now: Instant, msg: &Message, flow: Flow) {
        let _ = now;
        if !msg.is_request() {
            // No client transactions originate here yet, so every response is stray; RFC 3261
            // §18.1.2 says drop it silently, never answer it.
            Stats::bump(&self.stats.stray_responses);
            debug!(remote = %flow.remote, "stray response dropped");
            return;
        }
        let call_id = msg.call_id().unwrap_or_default();
        let span = debug_span!("sip_request", call_id = %String::from_utf8_lossy(&call_id), remote = %flow.remote);
        let _guard = span.enter();
        self.handle_request(msg, flow);
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn handle_request(&mut self, req: &Message, flow: Flow) {
        let method = req.method().cloned().unwrap_or(Method::Other(Bytes::new()));
        if let Err(rej) = check_request(req, &self.caps) {
            if method == Method::Ack {
                // ACK never gets a response (RFC 3261 §17.2.1).
                return;
            }
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
                    self.respond(req, flow, code, &reason, &hdrs);
                }
            }
            return;
        }
        let in_dialog = req.to_hdr().ok().and_then(|t| t.tag()).is_some();
        match method {
            Method::Ack => {}
            Method::Options if !in_dialog => {
                let allow = self.caps.allow_header();
                let accept = self.caps.accept.join(", ");
                let supported = self.caps.supported.join(", ");
                self.respond(
                    req,
                    flow,
                    200,
                    "OK",
                    &[("Allow", &allow), ("Accept", &accept), ("Supported", &supported), ("Accept-Language", "en")],
                );
            }
            // No dialogs or INVITE server transactions exist yet: nothing to cancel or continue.
            Method::Cancel => self.respond(req, flow, 481, "Call/Transaction Does Not Exist", &[]),
            _ if in_dialog => self.respond(req, flow, 481, "Call/Transaction Does Not Exist", &[]),
            _ => {
                let allow = self.caps.allow_header();
                self.respond(req, flow, 501, "Not Implemented", &[("Allow", &allow)]);
            }
        }
    }

    fn respond(&mut self, req: &Message, flow: Flow, code: u16, reason: &str, headers: &[(&str, &str)]) {
        let mut b = ResponseBuilder::new(req, code, reason, Some(flow.remote));
        if code > 100 {
            b = b.to_tag(&token());
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        b = b.header("Server", &self.cfg.user_agent);
        let data = b.build();
        let dest = response_destination(req, flow);
        debug!(code, %dest, "response");
        self.out.push_back(Output::Send { transport: flow.transport, dest, conn: flow.conn, data });
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
