//! SIP message framing and parsing (RFC 3261 §7, §18.3, §25).
//!
//! A [`Message`] owns one `Bytes` buffer (the received datagram or the framed TCP message); every
//! header name and value is a `Bytes` slice of it, so echoed headers (Via, Route, Record-Route,
//! unknown ones) go back out byte for byte. Typed accessors parse lazily, on demand.

use bytes::Bytes;

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
    Response { version: Bytes, code: u16, reason: Bytes },
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

/// A parsed SIP request or response.
#[derive(Debug, Clone)]
pub struct Message {
    /// The whole message buffer (trailing datagram octets beyond Content-Length already cut off).
    pub buf: Bytes,
    pub start: StartLine,
    /// Headers in order of appearance (the parser may replace this with an inline index; use
    /// the accessor methods, not this field, outside this module).
    headers: Vec<Header>,
    /// The body, exactly Content-Length octets.
    pub body: Bytes,
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
}

/// Size limits applied while parsing; exceeding one is [`ParseError::TooLarge`].
pub const MAX_MESSAGE_BYTES: usize = 65_535;
/// At most this many header lines per message.
pub const MAX_HEADERS: usize = 128;

impl Message {
    /// Parses one message from `buf`.
    pub fn parse(buf: Bytes, framing: Framing) -> Result<Message, ParseError> {
        let _ = (buf, framing);
        todo!()
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

    /// First value of a header, `None` if absent.
    pub fn header(&self, name: HeaderName) -> Option<Bytes> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.clone())
    }

    /// Every header in order of appearance.
    pub fn headers(&self) -> impl Iterator<Item = Header> + '_ {
        self.headers.iter().cloned()
    }

    /// Every header line with this name, in order (a line may hold a comma-separated list).
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = Header> + '_ {
        self.headers.iter().filter(move |h| h.name == name).cloned()
    }

    /// First value of an unknown header by name (case-insensitive).
    pub fn other_header(&self, name: &str) -> Option<Bytes> {
        self.headers
            .iter()
            .find(|h| h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value.clone())
    }
}

/// Frames one message off the front of a TCP stream buffer.
///
/// Returns `Ok(Some(len))` when `buf[..len]` holds one complete message (Content-Length required),
/// `Ok(None)` when more bytes are needed, and skips nothing: leading CRLF keep-alives are reported
/// separately by [`leading_keepalive`].
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let _ = buf;
    todo!()
}

/// Counts leading CRLF octets (RFC 5626 keep-alive `CRLFCRLF` ping / `CRLF` pong, or stray CRLFs
/// that RFC 3261 §7.5 says to ignore before a start line).
pub fn leading_keepalive(buf: &[u8]) -> usize {
    buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count()
}
