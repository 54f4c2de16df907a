//! Building outgoing messages as bytes.

use crate::headers::parse_via_at;
use crate::message::is_lws;
use crate::text;
use crate::{HeaderName, Message, Method, StartLine, Via};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Appends `b` with CR and LF replaced by SP, so caller-supplied text cannot inject lines.
fn put_clean(out: &mut BytesMut, b: &[u8]) {
    if b.iter().any(|&c| c == b'\r' || c == b'\n') {
        out.extend(
            b.iter()
                .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
    } else {
        out.put_slice(b);
    }
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_clean(out, name);
    out.put_slice(b": ");
    put_clean(out, value);
    out.put_slice(b"\r\n");
}

/// Writes a header copied from a received message; its value is already well-formed (it may
/// contain folding, which is legal on the wire), so it goes out byte for byte.
fn put_copied(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A short text on the stack (a Via edit: `;received=` and an address, a port).
struct Short {
    buf: [u8; 64],
    len: usize,
}

impl Short {
    /// `prefix` then the port in decimal.
    fn port(prefix: &[u8], port: u16) -> Short {
        let mut s = Short::with(prefix);
        let mut w = &mut s.buf[s.len..];
        text::put_decimal(&mut w, u64::from(port));
        s.len = 64 - w.len();
        s
    }

    /// `prefix` then the address (IPv6 without brackets: RFC 5118 §4.5).
    fn ip(prefix: &[u8], ip: IpAddr) -> Short {
        let mut s = Short::with(prefix);
        let mut w = &mut s.buf[s.len..];
        // Cannot overflow: the longest prefix is 10 bytes, an IPv6 address 45.
        text::put_ip(&mut w, ip);
        s.len = 64 - w.len();
        s
    }

    fn with(prefix: &[u8]) -> Short {
        let mut s = Short {
            buf: [0; 64],
            len: prefix.len(),
        };
        s.buf[..prefix.len()].copy_from_slice(prefix);
        s
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where `via` (parsed from a slice of `value`) sits in `value`: (start of its parameter
/// list, end of the via-parm). `None` if it was not parsed from this buffer, or is not the
/// line's first value.
fn locate(value: &Bytes, via: &Via) -> Option<(usize, usize)> {
    let origin = value.as_ptr() as usize;
    let raw = via.raw.as_ptr() as usize;
    let start = raw.checked_sub(origin)?;
    let end = start.checked_add(via.raw.len())?;
    if end > value.len() || !value[..start].iter().all(|&b| is_lws(b)) {
        return None;
    }
    let params = &via.params.0;
    let base = if params.is_empty() {
        end
    } else {
        let p = (params.as_ptr() as usize).checked_sub(origin)?;
        if p < start || p + params.len() != end {
            return None;
        }
        p
    };
    Some((base, end))
}

/// Writes the top Via line's value with `received`/`rport` filled in (RFC 3261 §18.2.1,
/// RFC 3581 §4); `received` carries an IPv6 address without brackets (RFC 5118 §4.5). Everything
/// else, including the other values of a comma list, is copied byte for byte.
fn put_top_via(out: &mut BytesMut, value: &Bytes, source: SocketAddr, kept: Option<&Via>) {
    // The request's kept top Via, when it was parsed from this very line (it always is for a
    // received request): no second parse per response.
    let located = kept.and_then(|via| locate(value, via).map(|(base, end)| (via, base, end)));
    let parsed;
    let (via, base, end) = match located {
        Some(l) => l,
        None => {
            let Ok(at) = parse_via_at(value, 0, value.len()) else {
                out.put_slice(value);
                return;
            };
            parsed = at;
            (&parsed.via, parsed.params_start, parsed.end)
        }
    };
    let src_ip = canonical(source.ip());
    // Edits as (start, end, text): replace value[start..end] by text; at most two, in order.
    // The texts are short (";received=" and an IPv6 address at most): kept on the stack.
    let mut edits: [Option<(usize, usize, Short)>; 2] = [None, None];
    let rport_flag = matches!(via.rport(), Some(None));
    if rport_flag {
        if let Some((_, nb, _, _)) = via.rport_spans() {
            edits[0] = Some((base + nb, base + nb, Short::port(b"=", source.port())));
        }
    }
    let needs_received = rport_flag || via.host.ip().map(canonical) != Some(src_ip);
    if needs_received && via.received().map(canonical) != Some(src_ip) {
        edits[1] = Some(match via.received_spans() {
            // A stale or malformed received is replaced, a bare one gets a value.
            Some((_, nb, va, vb)) if va == vb => (base + nb, base + nb, Short::ip(b"=", src_ip)),
            Some((_, _, va, vb)) => (base + va, base + vb, Short::ip(b"", src_ip)),
            None => (end, end, Short::ip(b";received=", src_ip)),
        });
    }
    if edits[0]
        .as_ref()
        .zip(edits[1].as_ref())
        .is_some_and(|(a, b)| a.0 > b.0)
    {
        edits.swap(0, 1);
    }
    let mut i = 0;
    for (start, end, text) in edits.iter().flatten() {
        out.put_slice(&value[i..*start]);
        out.put_slice(text.as_bytes());
        i = *end;
    }
    out.put_slice(&value[i..]);
}

/// Builds a response to a received request (RFC 3261 §8.2.6): copies Via (all, byte-exact, the top
/// one with `received`/`rport` filled per RFC 3581), From, To (adding a tag if given and absent),
/// Call-ID and CSeq.
#[derive(Debug)]
pub struct ResponseBuilder {
    out: BytesMut,
    /// Offset in `out` just past the To value, where a tag goes; `None` once used or if the
    /// request's To already has a tag.
    to_tag_at: Option<usize>,
    content_type: Option<BytesMut>,
    body: Bytes,
}

impl ResponseBuilder {
    /// Starts a response with `status` and its standard reason phrase; `source` as in
    /// [`ResponseBuilder::new`].
    pub fn status(req: &Message, status: crate::StatusCode, source: Option<SocketAddr>) -> Self {
        Self::new(req, status.code(), status.reason(), source)
    }

    /// Starts a response; `source` is the address the request came from (for received/rport).
    pub fn new(req: &Message, code: u16, reason: &str, source: Option<SocketAddr>) -> Self {
        Self::with_room(req, code, reason, source, RESPONSE_HEADROOM)
    }

    /// [`ResponseBuilder::new`] for a response that will add about `extra` octets of headers
    /// and body: the buffer fits it, so a response a transaction keeps is neither copied again
    /// nor kept with unused room.
    pub fn with_room(
        req: &Message,
        code: u16,
        reason: &str,
        source: Option<SocketAddr>,
        extra: usize,
    ) -> Self {
        // Sized for the headers copied below plus a usual response's own (it grows if need
        // be): the request's other headers (credentials, ...) are not copied, and a buffer
        // sized from the whole request had to be copied again by `tight` to be kept.
        let copied = req.value_bytes_of(&[
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]);
        let mut out = BytesMut::with_capacity(
            copied.min(MAX_PRESIZE) + RESPONSE_BASE + extra.min(MAX_PRESIZE),
        );
        out.put_slice(b"SIP/2.0 ");
        // Three digits, as the status line requires (a code below 100 is padded like `{:03}`).
        let mut digits = [0u8; 20];
        let d = text::decimal(u64::from(code), &mut digits);
        out.put_bytes(b'0', 3usize.saturating_sub(d.len()));
        out.put_slice(d);
        out.put_u8(b' ');
        put_clean(&mut out, reason.as_bytes());
        out.put_slice(b"\r\n");
        for (k, v) in req.header_values(HeaderName::Via).enumerate() {
            match (k, source) {
                (0, Some(src)) => {
                    out.put_slice(b"Via: ");
                    put_top_via(&mut out, &v, src, req.top_via_ref().ok());
                    out.put_slice(b"\r\n");
                }
                _ => put_copied(&mut out, b"Via", &v),
            }
        }
        // Borrowed values (`header_ref`): no reference count touched per header.
        if let Some(v) = req.header_ref(HeaderName::From) {
            put_copied(&mut out, b"From", v);
        }
        let mut to_tag_at = None;
        if let Some(v) = req.header_ref(HeaderName::To) {
            out.put_slice(b"To: ");
            out.put_slice(v);
            // A To that does not parse gets no tag (the response is a 400 anyway).
            if req.to_ref().is_ok_and(|t| t.tag_ref().is_none()) {
                to_tag_at = Some(out.len());
            }
            out.put_slice(b"\r\n");
        }
        if let Some(v) = req.header_ref(HeaderName::CallId) {
            put_copied(&mut out, b"Call-ID", v);
        }
        if let Some(v) = req.header_ref(HeaderName::CSeq) {
            put_copied(&mut out, b"CSeq", v);
        }
        ResponseBuilder {
            out,
            to_tag_at,
            content_type: None,
            body: Bytes::new(),
        }
    }
    /// Adds a To tag if the request's To has none.
    pub fn to_tag(mut self, tag: &str) -> Self {
        if let Some(at) = self.to_tag_at.take() {
            // Opened up in place: splitting the buffer at `at` would leave it without spare
            // capacity, so every later header would reallocate and copy it.
            let end = self.out.len();
            let add = b";tag=".len() + tag.len();
            self.out.resize(end + add, 0);
            self.out.copy_within(at..end, at + add);
            let slot = &mut self.out[at..at + add];
            slot[..5].copy_from_slice(b";tag=");
            for (d, &c) in slot[5..].iter_mut().zip(tag.as_bytes()) {
                // As `put_clean`: CR and LF become SP.
                *d = if c == b'\r' || c == b'\n' { b' ' } else { c };
            }
        }
        self
    }
    /// Appends a header line.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        put_header(&mut self.out, name.as_bytes(), value.as_bytes());
        self
    }
    /// Sets the body and Content-Type; Content-Length is always written by `build`.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        self.content_type = Some(BytesMut::from(content_type.as_bytes()));
        self.body = Bytes::copy_from_slice(body);
        self
    }
    /// Finishes the message.
    pub fn build(self) -> Bytes {
        finish(self.out, self.content_type, &self.body)
    }
}

/// Capacity reserved up front for a message derived from a received one.
const MAX_PRESIZE: usize = 2048;

/// Room in a response buffer beyond the copied headers for what every response adds: the
/// status line, Via's `received` and `rport`, a To tag and Content-Length.
const RESPONSE_BASE: usize = 112;

/// Room beyond [`RESPONSE_BASE`] when the caller does not say how much it will add.
const RESPONSE_HEADROOM: usize = 192;

/// More unused capacity than this is copied away by [`tight`].
const TIGHT_SLACK: usize = 192;

fn finish(mut out: BytesMut, content_type: Option<BytesMut>, body: &[u8]) -> Bytes {
    if let Some(ct) = content_type {
        put_header(&mut out, b"Content-Type", &ct);
    }
    out.put_slice(b"Content-Length: ");
    text::put_decimal(&mut out, body.len() as u64);
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
    tight(out)
}

/// The message as `Bytes` without a large unused tail: transactions keep responses and ACKs for
/// seconds, and what they keep is charged by its length: 10 000 REGISTERs/s keep 20 000 `200`s
/// for their 4*T1, where 300 spare bytes each are 6 MB. A response is presized from the headers
/// it copies, so this copies only the rare one that added little (a `100 Trying`).
fn tight(out: BytesMut) -> Bytes {
    if out.capacity() - out.len() > TIGHT_SLACK {
        Bytes::copy_from_slice(&out)
    } else {
        out.freeze()
    }
}

/// Builds a request from scratch.
#[derive(Debug)]
pub struct RequestBuilder {
    out: BytesMut,
    content_type: Option<BytesMut>,
    body: Bytes,
}

impl RequestBuilder {
    /// Starts `METHOD uri SIP/2.0`.
    pub fn new(method: &Method, uri: &str) -> Self {
        let mut out = BytesMut::with_capacity(512);
        put_clean(&mut out, method.as_bytes());
        out.put_u8(b' ');
        put_clean(&mut out, uri.as_bytes());
        out.put_slice(b" SIP/2.0\r\n");
        RequestBuilder {
            out,
            content_type: None,
            body: Bytes::new(),
        }
    }
    /// Appends a header line.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        put_header(&mut self.out, name.as_bytes(), value.as_bytes());
        self
    }
    /// Sets the body and Content-Type.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        self.content_type = Some(BytesMut::from(content_type.as_bytes()));
        self.body = Bytes::copy_from_slice(body);
        self
    }
    /// Finishes the message, writing Content-Length.
    pub fn build(self) -> Bytes {
        finish(self.out, self.content_type, &self.body)
    }
}

/// Start line, single top Via, Route set and Max-Forwards shared by ACK and CANCEL.
fn in_transaction_request(invite: &Message, method: &str) -> BytesMut {
    let head = invite.buf.len().saturating_sub(invite.body.len());
    let mut out = BytesMut::with_capacity(head.min(MAX_PRESIZE) + 64);
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    if let StartLine::Request { uri, .. } = &invite.start {
        out.put_slice(uri);
    }
    out.put_slice(b" SIP/2.0\r\n");
    // A single Via equal to the top Via of the INVITE (the first value of the first line).
    match invite.top_via_ref() {
        Ok(v) => put_copied(&mut out, b"Via", &v.raw),
        Err(_) => {
            if let Some(v) = invite.header(HeaderName::Via) {
                put_copied(&mut out, b"Via", &v);
            }
        }
    }
    for r in invite.header_values(HeaderName::Route) {
        put_copied(&mut out, b"Route", &r);
    }
    out.put_slice(b"Max-Forwards: 70\r\n");
    if let Some(v) = invite.header(HeaderName::From) {
        put_copied(&mut out, b"From", &v);
    }
    out
}

fn put_tail(out: &mut BytesMut, invite: &Message, method: &str) {
    if let Some(v) = invite.header(HeaderName::CallId) {
        put_copied(out, b"Call-ID", &v);
    }
    match invite.cseq() {
        Ok(c) => {
            let _ = write!(out, "CSeq: {} {method}\r\n", c.seq);
        }
        Err(_) => {
            // Keep whatever number was there.
            let raw = invite.header(HeaderName::CSeq).unwrap_or_default();
            let digits: Vec<u8> = raw
                .iter()
                .copied()
                .skip_while(|b| b.is_ascii_whitespace())
                .take_while(u8::is_ascii_digit)
                .collect();
            out.put_slice(b"CSeq: ");
            out.put_slice(if digits.is_empty() { b"0" } else { &digits });
            let _ = write!(out, " {method}\r\n");
        }
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
}

/// The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3): same Request-URI,
/// Call-ID, From and CSeq number (method ACK), To from the response, the INVITE's top Via as the
/// single Via, the INVITE's Route headers, Max-Forwards 70, Content-Length 0.
pub fn ack_for(invite: &Message, response: &Message) -> Bytes {
    let mut out = in_transaction_request(invite, "ACK");
    if let Some(v) = response.header(HeaderName::To) {
        put_copied(&mut out, b"To", &v);
    }
    put_tail(&mut out, invite, "ACK");
    tight(out)
}

/// The CANCEL for a pending `invite` (RFC 3261 §9.1): same Request-URI, Call-ID, To, From and
/// CSeq number (method CANCEL), the INVITE's top Via as the single Via, its Route headers,
/// Max-Forwards 70, Content-Length 0.
pub fn cancel_for(invite: &Message) -> Bytes {
    let mut out = in_transaction_request(invite, "CANCEL");
    if let Some(v) = invite.header(HeaderName::To) {
        put_copied(&mut out, b"To", &v);
    }
    put_tail(&mut out, invite, "CANCEL");
    tight(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Framing;

    fn request(via_lines: &str) -> Message {
        let raw = format!(
            "OPTIONS sip:pbx.example SIP/2.0\r\n{via_lines}From: <sip:a@x>;tag=1\r\n\
             To: <sip:pbx.example>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), Framing::Datagram).expect("parses")
    }

    /// The top Via kept in the request gives the same response Via as a fresh parse of the line.
    #[test]
    fn the_kept_top_via_gives_the_same_response_via_as_a_fresh_parse() {
        let src: SocketAddr = "[2001:db8::7]:40001".parse().unwrap();
        let cases = [
            ("Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1;rport\r\n",
             "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1;rport=40001;received=2001:db8::7"),
            ("Via:   SIP/2.0/UDP [2001:db8::7]:5062 ;branch=z9hG4bK2\r\n",
             "SIP/2.0/UDP [2001:db8::7]:5062 ;branch=z9hG4bK2"),
            ("Via: SIP/2.0/UDP h.example;received=203.0.113.1;branch=z9hG4bK3, SIP/2.0/UDP b;branch=z9hG4bK9\r\n",
             "SIP/2.0/UDP h.example;received=2001:db8::7;branch=z9hG4bK3, SIP/2.0/UDP b;branch=z9hG4bK9"),
            ("Via: SIP/2.0/UDP h.example;received;rport;branch=z9hG4bK4\r\n",
             "SIP/2.0/UDP h.example;received=2001:db8::7;rport=40001;branch=z9hG4bK4"),
            ("Via: SIP/2.0/UDP h.example\r\nVia: SIP/2.0/UDP second.example;branch=z9hG4bK5\r\n",
             "SIP/2.0/UDP h.example;received=2001:db8::7"),
        ];
        for (lines, want) in cases {
            let req = request(lines);
            let line = req.header_values(HeaderName::Via).next().unwrap();
            let kept = req.top_via_ref().unwrap();
            assert!(locate(&line, kept).is_some(), "not located: {lines}");
            let mut fresh = BytesMut::new();
            put_top_via(&mut fresh, &line, src, None);
            let mut cached = BytesMut::new();
            put_top_via(&mut cached, &line, src, Some(kept));
            assert_eq!(&fresh[..], want.as_bytes(), "{lines}");
            assert_eq!(&cached[..], want.as_bytes(), "{lines}");
        }
        // A Via parsed from another buffer is not taken for this line.
        let a = request("Via: SIP/2.0/UDP h.example;branch=z9hG4bK6\r\n");
        let b = request("Via: SIP/2.0/UDP h.example;branch=z9hG4bK6\r\n");
        let line = a.header_values(HeaderName::Via).next().unwrap();
        assert!(locate(&line, b.top_via_ref().unwrap()).is_none());
    }
}
