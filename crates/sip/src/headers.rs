//! Typed, lazy views of the headers podpbx uses. Each parses one header value (already located
//! by [`crate::Message`]) into slices of the message buffer; nothing is copied.

use crate::{uri::Host, Message, ParseError, Uri};
use bytes::Bytes;

/// Generic `;name=value` parameter list (raw text without the leading `;`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params(pub Bytes);

impl Params {
    /// Value of a parameter (`Some(b"")` for a flag), name case-insensitive; quotes kept as written.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        let _ = name;
        todo!()
    }
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The whole value as received, echoed byte for byte in responses.
    pub raw: Bytes,
    /// e.g. `UDP`, `TCP`, or an unknown transport token.
    pub transport: Bytes,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// The branch parameter.
    pub fn branch(&self) -> Option<Bytes> {
        self.params.get("branch")
    }
    /// `received`, accepted with or without brackets around IPv6 (RFC 5118 §4.5).
    pub fn received(&self) -> Option<std::net::IpAddr> {
        todo!()
    }
    /// `rport`: `None` if absent, `Some(None)` without a value, `Some(Some(p))` with one.
    pub fn rport(&self) -> Option<Option<u16>> {
        todo!()
    }
    /// `maddr` host, if any.
    pub fn maddr(&self) -> Option<Host> {
        todo!()
    }
}

/// A name-addr or addr-spec, as in From, To, Contact, Route, Record-Route, Refer-To.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub raw: Bytes,
    /// Display name without quotes/escapes removed, `None` if absent.
    pub display: Option<Bytes>,
    pub uri: Uri,
    /// Header parameters after the URI (for an addr-spec without `<>`, everything after the first `;`).
    pub params: Params,
}

impl NameAddr {
    /// The `tag` parameter.
    pub fn tag(&self) -> Option<Bytes> {
        self.params.get("tag")
    }
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: crate::Method,
}

/// One Contact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub addr: NameAddr,
}

impl Contact {
    /// `expires` contact parameter.
    pub fn expires(&self) -> Option<u32> {
        todo!()
    }
    /// `q` parameter in thousandths (q=0.5 -> 500).
    pub fn q(&self) -> Option<u16> {
        todo!()
    }
}

/// The Contact header(s) of a message: `*` or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactList {
    Star,
    List(Vec<Contact>),
}

impl Message {
    /// Every Via value in order, across lines and comma lists.
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        todo!()
    }
    /// The top Via.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        todo!()
    }
    pub fn from_hdr(&self) -> Result<NameAddr, ParseError> {
        todo!()
    }
    pub fn to_hdr(&self) -> Result<NameAddr, ParseError> {
        todo!()
    }
    pub fn call_id(&self) -> Result<Bytes, ParseError> {
        todo!()
    }
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        todo!()
    }
    /// `None` if absent.
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        todo!()
    }
    /// `None` if absent.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        todo!()
    }
    /// `None` if no Contact header.
    pub fn contacts(&self) -> Result<Option<ContactList>, ParseError> {
        todo!()
    }
    /// Route values in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        todo!()
    }
    /// Record-Route values in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        todo!()
    }
    /// Parsed Request-URI of a request.
    pub fn request_uri(&self) -> Result<Uri, ParseError> {
        todo!()
    }
    /// Content-Type media type, lower-cased, without parameters (e.g. `application/sdp`).
    pub fn content_type(&self) -> Option<Bytes> {
        todo!()
    }
    /// All option tags across every line of a comma-list header (Require, Supported, ...).
    pub fn tokens(&self, name: crate::HeaderName) -> Vec<Bytes> {
        let _ = name;
        todo!()
    }
}

#[allow(dead_code)]
fn _unused(_: Host) {}
