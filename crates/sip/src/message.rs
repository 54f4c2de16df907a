//! SIP message framing and parsing (RFC 3261 §7, §18.3, §25).
//!
//! A [`Message`] owns one `Bytes` buffer (the received datagram or the framed TCP message); every
//! header name and value is a `Bytes` slice of it, so echoed headers (Via, Route, Record-Route,
//! unknown ones) go back out byte for byte. Typed accessors parse lazily, on demand.
//!
//! Parsing allocates nothing: the header index is a fixed inline array of small offset records
//! (`u16` offsets are enough because a message is at most [`MAX_MESSAGE_BYTES`] long), and every
//! value handed out is a refcounted slice of the message buffer.

use crate::{ContactList, NameAddr, Uri, Via};
use bytes::{Buf, Bytes};
use std::fmt;
use std::sync::OnceLock;

/// How the message arrived, which decides what a wrong Content-Length means (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A datagram: bytes past Content-Length are discarded; Content-Length larger than the
    /// datagram is an error; a missing Content-Length means "to the end of the datagram".
    Datagram,
    /// Already framed by [`frame_stream`]: Content-Length is mandatory and exact.
    Stream,
}

/// SIP request methods; unknown extension methods are carried by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Refer,
    Notify,
    Subscribe,
    Message,
    Prack,
    Publish,
    /// An extension method token (case-sensitive, RFC 3261 §7.1).
    Other(Bytes),
}

impl Method {
    fn known(b: &[u8]) -> Option<Method> {
        // Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension method.
        Some(match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"REFER" => Method::Refer,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"MESSAGE" => Method::Message,
            b"PRACK" => Method::Prack,
            b"PUBLISH" => Method::Publish,
            _ => return None,
        })
    }

    /// The method for a name; extension methods are copied into a new buffer.
    pub fn from_bytes(b: &[u8]) -> Method {
        Self::known(b).unwrap_or_else(|| Method::Other(Bytes::copy_from_slice(b)))
    }

    /// The method for a name that is already a slice of a message buffer (no copy).
    pub fn from_shared(b: Bytes) -> Method {
        Self::known(&b).unwrap_or(Method::Other(b))
    }

    /// The method named by `buf[a..b]`, slicing the buffer only for extension methods.
    pub(crate) fn from_name_in(buf: &Bytes, a: usize, b: usize) -> Method {
        Self::known(&buf[a..b]).unwrap_or_else(|| Method::Other(buf.slice(a..b)))
    }

    /// The method name as written on the wire (`""` for a non-UTF-8 extension name, which the
    /// parser never produces since methods are tokens).
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Prack => "PRACK",
            Method::Publish => "PUBLISH",
            Method::Other(b) => std::str::from_utf8(b).unwrap_or(""),
        }
    }

    /// The method name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Other(b) => b,
            m => m.as_str().as_bytes(),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Other(b) => f.write_str(&String::from_utf8_lossy(b)),
            m => f.write_str(m.as_str()),
        }
    }
}

/// Header names podpbx knows, with long and compact forms folded together; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Accept,
    AcceptEncoding,
    Allow,
    Authorization,
    CallId,
    Contact,
    ContentDisposition,
    ContentEncoding,
    ContentLength,
    ContentType,
    CSeq,
    Event,
    Expires,
    From,
    MaxForwards,
    MinExpires,
    ProxyAuthenticate,
    ProxyAuthorization,
    ProxyRequire,
    RecordRoute,
    ReferTo,
    ReferredBy,
    Require,
    Route,
    Server,
    Subject,
    Supported,
    To,
    Unsupported,
    UserAgent,
    Via,
    WwwAuthenticate,
    /// Any other header; compare its raw name case-insensitively.
    Other,
}

/// Compact forms (RFC 3261 §7.3.3 and the IANA registry) of headers without a [`HeaderName`]
/// variant; they are `Other` but [`Message::other_header`] finds them under either name.
const OTHER_COMPACT: [(u8, &str); 4] = [
    (b'u', "Allow-Events"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
    (b'j', "Reject-Contact"),
];

impl HeaderName {
    /// Classifies a header name (long or compact form, any case).
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        use HeaderName::*;
        if n.len() == 1 {
            return match n[0].to_ascii_lowercase() {
                b'i' => CallId,
                b'm' => Contact,
                b'e' => ContentEncoding,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'f' => From,
                b's' => Subject,
                b'k' => Supported,
                b't' => To,
                b'v' => Via,
                b'o' => Event,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                _ => Other,
            };
        }
        let Some(&first) = n.first() else {
            return Other;
        };
        // One candidate per (length, first letter) except Call-ID/Contact.
        let (long, h): (&[u8], HeaderName) = match (n.len(), first | 0x20) {
            (2, b't') => (b"to", To),
            (3, b'v') => (b"via", Via),
            (4, b'f') => (b"from", From),
            (4, b'c') => (b"cseq", CSeq),
            (5, b'r') => (b"route", Route),
            (5, b'a') => (b"allow", Allow),
            (5, b'e') => (b"event", Event),
            (6, b'a') => (b"accept", Accept),
            (6, b's') => (b"server", Server),
            (7, b'c') if n[1] | 0x20 == b'a' => (b"call-id", CallId),
            (7, b'c') => (b"contact", Contact),
            (7, b'e') => (b"expires", Expires),
            (7, b'r') => (b"require", Require),
            (7, b's') => (b"subject", Subject),
            (8, b'r') => (b"refer-to", ReferTo),
            (9, b's') => (b"supported", Supported),
            (10, b'u') => (b"user-agent", UserAgent),
            (11, b'm') => (b"min-expires", MinExpires),
            (11, b'r') => (b"referred-by", ReferredBy),
            (11, b'u') => (b"unsupported", Unsupported),
            (12, b'c') => (b"content-type", ContentType),
            (12, b'm') => (b"max-forwards", MaxForwards),
            (12, b'r') => (b"record-route", RecordRoute),
            (13, b'a') => (b"authorization", Authorization),
            (13, b'p') => (b"proxy-require", ProxyRequire),
            (14, b'c') => (b"content-length", ContentLength),
            (15, b'a') => (b"accept-encoding", AcceptEncoding),
            (16, b'c') => (b"content-encoding", ContentEncoding),
            (16, b'w') => (b"www-authenticate", WwwAuthenticate),
            (18, b'p') => (b"proxy-authenticate", ProxyAuthenticate),
            (19, b'c') => (b"content-disposition", ContentDisposition),
            (19, b'p') => (b"proxy-authorization", ProxyAuthorization),
            _ => return Other,
        };
        if n.eq_ignore_ascii_case(long) {
            h
        } else {
            Other
        }
    }

    /// The canonical long name (`""` for `Other`).
    pub fn as_str(&self) -> &'static str {
        use HeaderName::*;
        match self {
            Accept => "Accept",
            AcceptEncoding => "Accept-Encoding",
            Allow => "Allow",
            Authorization => "Authorization",
            CallId => "Call-ID",
            Contact => "Contact",
            ContentDisposition => "Content-Disposition",
            ContentEncoding => "Content-Encoding",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            CSeq => "CSeq",
            Event => "Event",
            Expires => "Expires",
            From => "From",
            MaxForwards => "Max-Forwards",
            MinExpires => "Min-Expires",
            ProxyAuthenticate => "Proxy-Authenticate",
            ProxyAuthorization => "Proxy-Authorization",
            ProxyRequire => "Proxy-Require",
            RecordRoute => "Record-Route",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            Require => "Require",
            Route => "Route",
            Server => "Server",
            Subject => "Subject",
            Supported => "Supported",
            To => "To",
            Unsupported => "Unsupported",
            UserAgent => "User-Agent",
            Via => "Via",
            WwwAuthenticate => "WWW-Authenticate",
            Other => "",
        }
    }

    fn bit(self) -> u64 {
        1u64 << (self as u8 as u32)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The long name an `Other` compact form stands for, if any.
fn expand_other_compact(n: &[u8]) -> Option<&'static str> {
    if n.len() != 1 {
        return None;
    }
    let c = n[0].to_ascii_lowercase();
    OTHER_COMPACT
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, long)| *long)
}

fn other_name_matches(raw: &[u8], query: &[u8]) -> bool {
    raw.eq_ignore_ascii_case(query)
        || expand_other_compact(raw).is_some_and(|l| l.as_bytes().eq_ignore_ascii_case(query))
        || expand_other_compact(query).is_some_and(|l| l.as_bytes().eq_ignore_ascii_case(raw))
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        method: Method,
        /// The Request-URI exactly as received; parse with [`crate::Uri::parse`].
        uri: Bytes,
        /// e.g. `SIP/2.0`; other versions parse so the core can answer `505`.
        version: Bytes,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        version: Bytes,
        code: u16,
        reason: Bytes,
    },
}

/// One header line (after unfolding), as slices of the message buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name, `Other` for unknown headers.
    pub name: HeaderName,
    /// The name as received (e.g. `v` or `VIA`).
    pub raw_name: Bytes,
    /// The value with surrounding whitespace trimmed. A folded value (continuation lines) is kept
    /// as received including the CRLF+WSP; accessors treat folding as whitespace.
    pub value: Bytes,
}

/// One entry of the inline header index: offsets into the message buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot {
    name: HeaderName,
    /// Header names are limited to 255 octets.
    name_len: u8,
    name_start: u16,
    value_start: u16,
    value_len: u16,
}

impl Slot {
    const EMPTY: Slot = Slot {
        name: HeaderName::Other,
        name_start: 0,
        name_len: 0,
        value_start: 0,
        value_len: 0,
    };
}

/// Fixed-size header index, filled by the parser without touching the heap.
#[derive(Clone)]
struct Index {
    len: usize,
    /// Bit per [`HeaderName`] discriminant present, so absent headers are answered at once.
    present: u64,
    slots: [Slot; MAX_HEADERS],
}

impl Index {
    fn new() -> Index {
        Index {
            len: 0,
            present: 0,
            slots: [Slot::EMPTY; MAX_HEADERS],
        }
    }
    fn used(&self) -> &[Slot] {
        &self.slots[..self.len.min(MAX_HEADERS)]
    }
}

/// A parsed SIP request or response.
#[derive(Clone)]
pub struct Message {
    /// The whole message buffer (trailing datagram octets beyond Content-Length already cut off,
    /// leading CRLFs skipped). Header offsets refer to it: treat it as read-only.
    pub buf: Bytes,
    pub start: StartLine,
    /// Headers in order of appearance, as offsets into `buf`.
    index: Index,
    /// The body, exactly Content-Length octets.
    pub body: Bytes,
    /// Headers parsed on first use, for the rest of the message's life.
    pub(crate) parsed: Parsed,
}

/// The values every layer asks for, parsed once. A request passes the checks, the transaction
/// layer, the core, a handler (registrar, B2BUA) and the response builder, and each of them asks
/// for the top Via, To, From or the Request-URI: before this cache a REGISTER round parsed each
/// of them four to five times (perf uprobe counts: 11 URI and 5.5 Via parses per request). It
/// holds results, errors included, so an answer never depends on who asked first. Valid because a
/// parsed message is never changed (`buf` and `start` are only written inside [`Message::parse`],
/// before anything can ask).
#[derive(Clone, Default)]
pub(crate) struct Parsed {
    pub(crate) top_via: OnceLock<Result<Via, ParseError>>,
    pub(crate) from: OnceLock<Result<NameAddr, ParseError>>,
    pub(crate) to: OnceLock<Result<NameAddr, ParseError>>,
    pub(crate) request_uri: OnceLock<Result<Uri, ParseError>>,
    /// Validated on receipt, then read by the registrar (every REGISTER) and the B2BUA.
    pub(crate) contacts: OnceLock<Result<Option<ContactList>, ParseError>>,
    /// Where the Call-ID is, checked once: the checks, the transaction layer and the registrar
    /// each ask (three scans of it per request before).
    pub(crate) call_id: OnceLock<Result<(u32, u32), ParseError>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hdrs<'a>(&'a Message);
        impl fmt::Debug for Hdrs<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.headers()).finish()
            }
        }
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &Hdrs(self))
            .field("body", &self.body)
            .finish()
    }
}

/// Why a message could not be parsed. `Display` is short and fit for a 400 reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Malformed Start Line")]
    StartLine,
    #[error("Malformed Header")]
    Header,
    #[error("Message Too Large")]
    TooLarge,
    #[error("Bad Content-Length")]
    ContentLength,
    #[error("Incomplete Message")]
    Incomplete,
    #[error("Malformed {0}")]
    Value(&'static str),
    /// A SIP-Version other than `SIP/2.0` (found by [`Message::validate`]; answer `505`).
    #[error("Version Not Supported")]
    Version,
    /// A header that must appear once is missing or repeated (found by [`Message::validate`]).
    #[error("Missing or Duplicate {0}")]
    Count(&'static str),
}

/// Size limits applied while parsing; exceeding one is [`ParseError::TooLarge`].
pub const MAX_MESSAGE_BYTES: usize = 65_535;
/// At most this many header lines per message.
pub const MAX_HEADERS: usize = 128;
/// At most this many octets for the start line and for one header (name, value and any
/// continuation lines together). Header names are further limited to 255 octets.
pub const MAX_HEADER_LINE_BYTES: usize = 8192;

/// What scanning the head (start line and headers) of a message found (the header index is
/// filled in place).
struct Head {
    /// End of the start line (before CR LF).
    start_end: usize,
    /// First octet after the empty line.
    body_start: usize,
    content_length: Option<usize>,
}

/// Position of the first `needle` in `s[from..]`, eight octets at a time.
#[inline]
pub(crate) fn find_byte(s: &[u8], from: usize, needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO * u64::from(needle);
    let mut i = from;
    while i + 8 <= s.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ pat;
        // The lowest flagged octet is always a real match (borrows only run upwards).
        let t = x.wrapping_sub(LO) & !x & HI;
        if t != 0 {
            return Some(i + (t.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < s.len() {
        if s[i] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[inline]
fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Scans the start line and header lines of `s` (which must not start with CR/LF) into `index`.
/// Returns `Incomplete` if the empty line ending the headers is not within `s`.
fn scan_head(s: &[u8], index: &mut Index) -> Result<Head, ParseError> {
    let s = &s[..s.len().min(MAX_MESSAGE_BYTES)];
    let n = s.len();
    let limit_or_incomplete = |from: usize| {
        if n - from > MAX_HEADER_LINE_BYTES {
            ParseError::TooLarge
        } else {
            ParseError::Incomplete
        }
    };
    let nl = find_byte(s, 0, b'\n').ok_or_else(|| limit_or_incomplete(0))?;
    if nl > MAX_HEADER_LINE_BYTES {
        return Err(ParseError::TooLarge);
    }
    let start_end = if nl > 0 && s[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    index.len = 0;
    index.present = 0;
    let mut pos = nl + 1;
    // Start of the current header (for the per-header size limit).
    let mut cur_start = 0usize;
    let body_start;
    loop {
        if pos >= n {
            return Err(ParseError::Incomplete);
        }
        let nl = find_byte(s, pos, b'\n').ok_or_else(|| limit_or_incomplete(pos))?;
        let mut end = nl;
        if end > pos && s[end - 1] == b'\r' {
            end -= 1;
        }
        if end == pos {
            body_start = nl + 1;
            break;
        }
        if is_wsp(s[pos]) {
            // Continuation of the previous header (folding, RFC 3261 §7.3.1).
            if index.len == 0 {
                return Err(ParseError::Header);
            }
            if nl - cur_start > MAX_HEADER_LINE_BYTES {
                return Err(ParseError::TooLarge);
            }
            let mut a = pos;
            while a < end && is_wsp(s[a]) {
                a += 1;
            }
            let mut b = end;
            while b > a && is_wsp(s[b - 1]) {
                b -= 1;
            }
            if b > a {
                let slot = &mut index.slots[index.len - 1];
                if slot.value_len == 0 {
                    slot.value_start = a as u16;
                }
                slot.value_len = (b - slot.value_start as usize) as u16;
            }
        } else {
            if nl - pos > MAX_HEADER_LINE_BYTES || index.len == MAX_HEADERS {
                return Err(ParseError::TooLarge);
            }
            // field-name = token, then optional white space, then ':'.
            let mut name_end = pos;
            while name_end < end && is_token(s[name_end]) {
                name_end += 1;
            }
            let mut colon = name_end;
            while colon < end && is_wsp(s[colon]) {
                colon += 1;
            }
            if name_end == pos || colon >= end || s[colon] != b':' {
                return Err(ParseError::Header);
            }
            let name_len = u8::try_from(name_end - pos).map_err(|_| ParseError::TooLarge)?;
            let mut a = colon + 1;
            while a < end && is_wsp(s[a]) {
                a += 1;
            }
            let mut b = end;
            while b > a && is_wsp(s[b - 1]) {
                b -= 1;
            }
            let hn = HeaderName::from_bytes(&s[pos..name_end]);
            index.slots[index.len] = Slot {
                name: hn,
                name_len,
                name_start: pos as u16,
                value_start: a as u16,
                value_len: (b - a) as u16,
            };
            index.len += 1;
            index.present |= hn.bit();
            cur_start = pos;
        }
        pos = nl + 1;
    }
    let mut content_length = None;
    if index.present & HeaderName::ContentLength.bit() != 0 {
        for slot in index
            .used()
            .iter()
            .filter(|h| h.name == HeaderName::ContentLength)
        {
            let a = slot.value_start as usize;
            let v = &s[a..a + slot.value_len as usize];
            let cl = parse_decimal(v, 10).ok_or(ParseError::ContentLength)?;
            match content_length {
                Some(prev) if prev != cl => return Err(ParseError::ContentLength),
                _ => content_length = Some(cl),
            }
        }
    }
    let content_length = match content_length {
        Some(v) if v > u32::MAX as u64 => return Err(ParseError::ContentLength),
        Some(v) => Some(v as usize),
        None => None,
    };
    Ok(Head {
        start_end,
        body_start,
        content_length,
    })
}

/// Parses `1*DIGIT` with at most `max_digits` digits.
pub(crate) fn parse_decimal(v: &[u8], max_digits: usize) -> Option<u64> {
    if v.is_empty() || v.len() > max_digits {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Parses the start line `line` (without CR LF) leniently: runs of SP between elements and
/// trailing SP are accepted here and flagged by [`Message::validate`].
fn parse_start_line(buf: &Bytes, end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[..end];
    let sp = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseError::StartLine)?;
    let first = &line[..sp];
    if first.len() > 4 && first[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line: version SP 3DIGIT [SP reason]
        let version = buf.slice(..sp);
        let mut i = sp;
        while i < end && line[i] == b' ' {
            i += 1;
        }
        let c0 = i;
        while i < end && line[i].is_ascii_digit() {
            i += 1;
        }
        if i - c0 != 3 || (i < end && line[i] != b' ') {
            return Err(ParseError::StartLine);
        }
        let code = parse_decimal(&line[c0..i], 3).ok_or(ParseError::StartLine)? as u16;
        let reason = if i < end {
            buf.slice(i + 1..end)
        } else {
            Bytes::new()
        };
        return Ok(StartLine::Response {
            version,
            code,
            reason,
        });
    }
    if first.is_empty() || !first.iter().all(|&b| is_token(b)) {
        return Err(ParseError::StartLine);
    }
    let mut a = sp;
    while a < end && line[a] == b' ' {
        a += 1;
    }
    let mut b = end;
    while b > a && line[b - 1] == b' ' {
        b -= 1;
    }
    let vsp = line[a..b]
        .iter()
        .rposition(|&c| c == b' ')
        .ok_or(ParseError::StartLine)?
        + a;
    let version = &line[vsp + 1..b];
    if version.len() < 5 || !version[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::StartLine);
    }
    let mut ue = vsp;
    while ue > a && line[ue - 1] == b' ' {
        ue -= 1;
    }
    if ue == a {
        return Err(ParseError::StartLine);
    }
    Ok(StartLine::Request {
        method: Method::known(first).unwrap_or_else(|| Method::Other(buf.slice(..sp))),
        uri: buf.slice(a..ue),
        version: buf.slice(vsp + 1..b),
    })
}

impl Message {
    /// Parses one message from `buf`.
    ///
    /// Leading CRLFs are skipped (RFC 3261 §7.5). With [`Framing::Datagram`] octets past
    /// Content-Length are dropped and a Content-Length beyond the datagram is
    /// [`ParseError::ContentLength`]; with [`Framing::Stream`] Content-Length is mandatory and a
    /// short buffer is [`ParseError::Incomplete`]. Structural checks that deserve a `400` rather
    /// than a silent drop are left to [`Message::validate`].
    pub fn parse(mut buf: Bytes, framing: Framing) -> Result<Message, ParseError> {
        let skip = leading_keepalive(&buf);
        buf.advance(skip);
        if buf.len() > MAX_MESSAGE_BYTES {
            // A longer stream buffer is fine as long as the framed message fits.
            if framing == Framing::Datagram {
                return Err(ParseError::TooLarge);
            }
        }
        if buf.is_empty() {
            return Err(ParseError::Incomplete);
        }
        // Built in place so the inline index is written once, not copied around.
        let mut msg = Message {
            buf: Bytes::new(),
            start: StartLine::Response {
                version: Bytes::new(),
                code: 0,
                reason: Bytes::new(),
            },
            index: Index::new(),
            body: Bytes::new(),
            parsed: Parsed::default(),
        };
        let head = scan_head(&buf, &mut msg.index)?;
        let available = buf.len() - head.body_start;
        let body_len = match (head.content_length, framing) {
            (Some(cl), Framing::Datagram) if cl > available => {
                return Err(ParseError::ContentLength)
            }
            (Some(cl), Framing::Stream) if head.body_start + cl > MAX_MESSAGE_BYTES => {
                return Err(ParseError::TooLarge)
            }
            (Some(cl), Framing::Stream) if cl > available => return Err(ParseError::Incomplete),
            (Some(cl), _) => cl,
            (None, Framing::Datagram) => available,
            (None, Framing::Stream) => return Err(ParseError::ContentLength),
        };
        let total = head.body_start + body_len;
        if total < buf.len() {
            buf.truncate(total);
        }
        msg.start = parse_start_line(&buf, head.start_end)?;
        if body_len > 0 {
            msg.body = buf.slice(head.body_start..);
        }
        msg.buf = buf;
        Ok(msg)
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, `None` for responses.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, `None` for requests.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The status code as a [`crate::StatusCode`], `None` for requests (the parser only accepts
    /// three-digit codes, so every response has one in range).
    pub fn status_code(&self) -> Option<crate::StatusCode> {
        self.status().and_then(crate::StatusCode::new)
    }

    /// The reason phrase as received, `None` for requests.
    pub fn reason_phrase(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason.as_ref()),
            StartLine::Request { .. } => None,
        }
    }

    /// A slice of the buffer; empty if out of range (only if `buf` was replaced after parsing).
    #[inline]
    fn slice(&self, start: usize, len: usize) -> Bytes {
        match start.checked_add(len) {
            Some(end) if end <= self.buf.len() => self.buf.slice(start..end),
            _ => Bytes::new(),
        }
    }

    #[inline]
    fn slot_value(&self, s: &Slot) -> Bytes {
        self.slice(s.value_start as usize, s.value_len as usize)
    }

    #[inline]
    fn slot_name(&self, s: &Slot) -> Bytes {
        self.slice(s.name_start as usize, s.name_len as usize)
    }

    fn slot_header(&self, s: &Slot) -> Header {
        Header {
            name: s.name,
            raw_name: self.slot_name(s),
            value: self.slot_value(s),
        }
    }

    /// True if at least one header with this name is present (`Other` means any unknown one).
    pub fn has_header(&self, name: HeaderName) -> bool {
        self.index.present & name.bit() != 0
    }

    /// First value of a header, `None` if absent.
    pub fn header(&self, name: HeaderName) -> Option<Bytes> {
        if !self.has_header(name) {
            return None;
        }
        self.index
            .used()
            .iter()
            .find(|h| h.name == name)
            .map(|h| self.slot_value(h))
    }

    /// The total length of the header lines named in `names` (to size a buffer that copies
    /// them): each value, plus 12 for a name of up to 8 octets, `: ` and CRLF.
    pub(crate) fn value_bytes_of(&self, names: &[HeaderName]) -> usize {
        self.index
            .used()
            .iter()
            .filter(|h| names.contains(&h.name))
            .map(|h| usize::from(h.value_len) + 12)
            .sum()
    }

    /// [`Message::header`] borrowed from the buffer: no reference count is touched.
    pub fn header_ref(&self, name: HeaderName) -> Option<&[u8]> {
        let (a, b) = self.value_range(name)?;
        Some(&self.buf[a..b])
    }

    /// Number of header lines with this name.
    pub fn header_count(&self, name: HeaderName) -> usize {
        if !self.has_header(name) {
            return 0;
        }
        self.index.used().iter().filter(|h| h.name == name).count()
    }

    /// Every header in order of appearance.
    pub fn headers(&self) -> impl Iterator<Item = Header> + '_ {
        self.index.used().iter().map(move |h| self.slot_header(h))
    }

    /// The value of every header line with this name, borrowed from the message (for values a
    /// parser borrows from, such as credentials).
    pub fn header_value_slices(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.slots_named(name).map(move |h| {
            let a = h.value_start as usize;
            &self.buf[a..a + h.value_len as usize]
        })
    }

    /// Every header line with this name, in order (a line may hold a comma-separated list).
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = Header> + '_ {
        self.slots_named(name).map(move |h| self.slot_header(h))
    }

    fn slots_named(&self, name: HeaderName) -> impl Iterator<Item = &Slot> + '_ {
        let slots = if self.has_header(name) {
            self.index.used()
        } else {
            &[]
        };
        slots.iter().filter(move |h| h.name == name)
    }

    /// Every value (one per line) of a header, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = Bytes> + '_ {
        let slots = if self.has_header(name) {
            self.index.used()
        } else {
            &[]
        };
        slots
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| self.slot_value(h))
    }

    /// First value of an unknown header by name (case-insensitive). Compact forms without a
    /// [`HeaderName`] variant are matched too (`u` = Allow-Events, `x` = Session-Expires,
    /// `y` = Identity, `j` = Reject-Contact); a known name is looked up as with [`Self::header`].
    pub fn other_header(&self, name: &str) -> Option<Bytes> {
        self.other_header_values(name).next()
    }

    /// Every value of an unknown header by name, in order (see [`Self::other_header`]).
    pub fn other_header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Bytes> + 'a {
        let known = HeaderName::from_bytes(name.as_bytes());
        self.index
            .used()
            .iter()
            .filter(move |h| {
                if known != HeaderName::Other {
                    h.name == known
                } else {
                    h.name == HeaderName::Other && {
                        let a = h.name_start as usize;
                        let raw = self.buf.get(a..a + h.name_len as usize).unwrap_or(&[]);
                        other_name_matches(raw, name.as_bytes())
                    }
                }
            })
            .map(move |h| self.slot_value(h))
    }

    /// Range in `buf` of the first value of a header.
    pub(crate) fn value_range(&self, name: HeaderName) -> Option<(usize, usize)> {
        if !self.has_header(name) {
            return None;
        }
        let h = self.index.used().iter().find(|h| h.name == name)?;
        self.slot_range(h)
    }

    fn slot_range(&self, h: &Slot) -> Option<(usize, usize)> {
        let a = h.value_start as usize;
        let b = a + h.value_len as usize;
        (b <= self.buf.len()).then_some((a, b))
    }

    /// The next header line named `name` at or after index position `from`: its position and
    /// value range in `buf` (for the typed iterators).
    pub(crate) fn next_range(
        &self,
        name: HeaderName,
        from: usize,
    ) -> Option<(usize, usize, usize)> {
        if !self.has_header(name) {
            return None;
        }
        let used = self.index.used();
        let rel = used.get(from..)?.iter().position(|h| h.name == name)?;
        let (a, b) = self.slot_range(&used[from + rel])?;
        Some((from + rel, a, b))
    }

    /// The start line exactly as received (without CR LF).
    pub fn start_line_raw(&self) -> &[u8] {
        let s = &self.buf[..];
        let end = s.iter().position(|&b| b == b'\n').unwrap_or(s.len());
        let end = if end > 0 && s.get(end - 1) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        &s[..end]
    }
}

/// Frames one message off the front of a TCP stream buffer.
///
/// Returns `Ok(Some(len))` when `buf[..len]` holds one complete message (Content-Length required),
/// `Ok(None)` when more bytes are needed, and skips nothing: leading CRLF keep-alives are reported
/// separately by [`leading_keepalive`] (if the caller leaves them in, they are counted in `len`
/// and [`Message::parse`] ignores them).
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    Ok(stream_total(buf)?.filter(|total| buf.len() >= *total))
}

/// The length of the first message in a stream buffer (leading CRLFs included) once its head is
/// complete, whether or not its body has arrived; `None` while the head is incomplete.
fn stream_total(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let skip = leading_keepalive(buf);
    let rest = &buf[skip..];
    if rest.is_empty() {
        return Ok(None);
    }
    let mut index = Index::new();
    match scan_head(rest, &mut index) {
        Err(ParseError::Incomplete) => {
            if rest.len() > MAX_MESSAGE_BYTES {
                Err(ParseError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(e),
        Ok(head) => {
            let cl = head.content_length.ok_or(ParseError::ContentLength)?;
            let total = head
                .body_start
                .checked_add(cl)
                .ok_or(ParseError::TooLarge)?;
            if total > MAX_MESSAGE_BYTES {
                return Err(ParseError::TooLarge);
            }
            Ok(Some(skip + total))
        }
    }
}

/// Incremental [`frame_stream`] for a TCP connection's receive buffer.
///
/// A peer that sends its head an octet at a time must not make every read rescan everything
/// received so far (a 64 KB head dripped octet by octet would cost 2 GB of scanning). The framer
/// remembers how far it has looked for the empty line that ends the head and only looks at new
/// octets; the head is parsed once, when complete, and then only the body length is awaited.
/// Its answers for a buffer that grows between calls are those of [`frame_stream`] on the whole
/// buffer (an over-long line or too many headers are reported as soon as they are seen). After the caller removes octets from the front of the buffer it
/// must start over with a fresh framer ([`StreamFramer::default`]).
#[derive(Debug, Clone, Default)]
pub struct StreamFramer {
    /// Leading CRLF octets (RFC 3261 §7.5), final once a non-CRLF octet was seen.
    skip: usize,
    /// Octets of the buffer already examined.
    scanned: usize,
    /// Start of the line being received (an index into the buffer).
    line_start: usize,
    /// Lines of the head seen so far that start a header (or the start line).
    lines: usize,
    /// Length of the whole message once its head is complete.
    total: Option<usize>,
}

impl StreamFramer {
    /// `Ok(Some(len))` when `buf[..len]` is one complete message (leading CRLFs included),
    /// `Ok(None)` when more octets are needed, an error when the stream cannot be framed.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, ParseError> {
        if let Some(total) = self.total {
            return Ok((buf.len() >= total).then_some(total));
        }
        if self.scanned == self.skip {
            while self.skip < buf.len() && matches!(buf[self.skip], b'\r' | b'\n') {
                self.skip += 1;
            }
            self.scanned = self.skip;
            self.line_start = self.skip;
            if self.skip == buf.len() {
                return Ok(None);
            }
        }
        let mut from = self.scanned;
        while let Some(nl) = find_byte(buf, from, b'\n') {
            let line = &buf[self.line_start..nl];
            if line.is_empty() || line == b"\r" {
                // The empty line: parse the head once, from the start.
                self.scanned = nl + 1;
                return match stream_total(buf)? {
                    Some(total) => {
                        self.total = Some(total);
                        Ok((buf.len() >= total).then_some(total))
                    }
                    // Cannot happen once the empty line is in the buffer; stay safe.
                    None => Err(ParseError::Incomplete),
                };
            }
            if !is_wsp(line[0]) {
                self.lines += 1;
                if self.lines > MAX_HEADERS + 1 {
                    return Err(ParseError::TooLarge);
                }
            }
            self.line_start = nl + 1;
            from = nl + 1;
        }
        self.scanned = buf.len();
        if buf.len() - self.line_start > MAX_HEADER_LINE_BYTES
            || buf.len() - self.skip > MAX_MESSAGE_BYTES
        {
            return Err(ParseError::TooLarge);
        }
        Ok(None)
    }

    /// Octets examined so far while looking for the end of the head.
    pub fn scanned(&self) -> usize {
        self.scanned
    }
}

/// Counts leading CRLF octets (RFC 5626 keep-alive `CRLFCRLF` ping / `CRLF` pong, or stray CRLFs
/// that RFC 3261 §7.5 says to ignore before a start line).
pub fn leading_keepalive(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

// ---------------------------------------------------------------------------------------------
// Lexical helpers shared by the typed parsers (RFC 3261 §25.1).

const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
}
static TOKEN: [bool; 256] = token_table();

/// `token` character (RFC 3261 §25.1).
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Linear white space inside a (possibly folded) header value.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

#[inline]
pub(crate) fn token_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_token(s[i]) {
        i += 1;
    }
    i
}

/// Given `s[i] == '"'`, the index just past the closing quote (backslash escapes honoured).
pub(crate) fn quoted_end(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// Trims LWS on both sides of `s[a..b]`.
pub(crate) fn trim_lws(s: &[u8], mut a: usize, mut b: usize) -> (usize, usize) {
    while a < b && is_lws(s[a]) {
        a += 1;
    }
    while b > a && is_lws(s[b - 1]) {
        b -= 1;
    }
    (a, b)
}
