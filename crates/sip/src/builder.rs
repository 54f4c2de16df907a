//! Building outgoing messages as bytes.

use crate::{Message, Method};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;

/// Builds a response to a received request (RFC 3261 §8.2.6): copies Via (all, byte-exact, the top
/// one with `received`/`rport` filled per RFC 3581), From, To (adding a tag if given and absent),
/// Call-ID and CSeq.
#[derive(Debug)]
pub struct ResponseBuilder {
    out: BytesMut,
}

impl ResponseBuilder {
    /// Starts a response; `source` is the address the request came from (for received/rport).
    pub fn new(req: &Message, code: u16, reason: &str, source: Option<SocketAddr>) -> Self {
        let _ = (req, code, reason, source);
        todo!()
    }
    /// Adds a To tag if the request's To has none.
    pub fn to_tag(self, tag: &str) -> Self {
        let _ = tag;
        todo!()
    }
    /// Appends a header line.
    pub fn header(self, name: &str, value: &str) -> Self {
        let _ = (name, value);
        todo!()
    }
    /// Sets the body and Content-Type; Content-Length is always written by `build`.
    pub fn body(self, content_type: &str, body: &[u8]) -> Self {
        let _ = (content_type, body);
        todo!()
    }
    /// Finishes the message.
    pub fn build(self) -> Bytes {
        todo!()
    }
}

/// Builds a request from scratch.
#[derive(Debug)]
pub struct RequestBuilder {
    out: BytesMut,
}

impl RequestBuilder {
    /// Starts `METHOD uri SIP/2.0`.
    pub fn new(method: &Method, uri: &str) -> Self {
        let _ = (method, uri);
        todo!()
    }
    /// Appends a header line.
    pub fn header(self, name: &str, value: &str) -> Self {
        let _ = (name, value);
        todo!()
    }
    /// Sets the body and Content-Type.
    pub fn body(self, content_type: &str, body: &[u8]) -> Self {
        let _ = (content_type, body);
        todo!()
    }
    /// Finishes the message, writing Content-Length.
    pub fn build(self) -> Bytes {
        todo!()
    }
}
