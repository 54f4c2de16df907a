//! The request checks a UAS/B2BUA applies before any method logic (RFC 3261 §8.2, §16.3),
//! in a fixed order so a request with several faults always gets the same answer.

use crate::{HeaderName, Message, Method, ParseError, StartLine, StatusCode};

/// What this element supports, as announced in Allow / Accept / Supported.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Methods handled (the Allow header).
    pub methods: Vec<Method>,
    /// Body media types understood (the Accept header), lower case.
    pub accept: Vec<String>,
    /// Option tags implemented (the Supported header).
    pub supported: Vec<String>,
}

impl Capabilities {
    /// The Allow header value.
    pub fn allow_header(&self) -> String {
        crate::caps::allow(&self.methods)
    }
}

/// Why a request is refused before method processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No response can be formed (e.g. no usable Via): drop and count.
    Drop(&'static str),
    /// Answer with this status, reason and extra header lines.
    Respond {
        code: StatusCode,
        reason: String,
        headers: Vec<(&'static str, String)>,
    },
}

fn respond(code: StatusCode, reason: &str) -> Rejection {
    Rejection::Respond {
        code,
        reason: reason.to_string(),
        headers: Vec::new(),
    }
}

/// Runs the checks in order: 505 version, 400 structure, 416 scheme, 483 Max-Forwards,
/// 420 Require, 415 body type.
pub fn check_request(msg: &Message, caps: &Capabilities) -> Result<(), Rejection> {
    let StartLine::Request {
        method, version, ..
    } = &msg.start
    else {
        return Err(Rejection::Drop("not a request"));
    };
    // Without a parseable top Via there is nowhere to send a response.
    if msg.top_via_ref().is_err() {
        return Err(Rejection::Drop("no usable Via"));
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(respond(
            StatusCode::VERSION_NOT_SUPPORTED,
            "Version Not Supported",
        ));
    }
    if let Err(e) = msg.validate() {
        return Err(respond(StatusCode::BAD_REQUEST, &reason_for(&e)));
    }
    let uri = msg
        .request_uri_ref()
        .map_err(|e| respond(StatusCode::BAD_REQUEST, &reason_for(&e)))?;
    if !uri.is_sip() {
        return Err(respond(
            StatusCode::UNSUPPORTED_URI_SCHEME,
            "Unsupported URI Scheme",
        ));
    }
    if msg.max_forwards().ok().flatten() == Some(0) && *method != Method::Options {
        return Err(respond(StatusCode::TOO_MANY_HOPS, "Too Many Hops"));
    }
    if *method != Method::Ack && *method != Method::Cancel {
        let unsupported: Vec<String> = msg
            .tokens(HeaderName::Require)
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .filter(|t| !caps.supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .collect();
        if !unsupported.is_empty() {
            return Err(Rejection::Respond {
                code: StatusCode::BAD_EXTENSION,
                reason: "Bad Extension".into(),
                headers: vec![("Unsupported", unsupported.join(", "))],
            });
        }
    }
    if !msg.body.is_empty() && *method != Method::Ack {
        let ok_type = msg
            .content_type()
            .map(|ct| {
                caps.accept
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(&ct))
            })
            .unwrap_or(false);
        if !ok_type {
            return Err(Rejection::Respond {
                code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reason: "Unsupported Media Type".into(),
                headers: vec![("Accept", caps.accept.join(", "))],
            });
        }
        if let Some(enc) = msg.header(HeaderName::ContentEncoding) {
            if !enc.eq_ignore_ascii_case(b"identity") {
                return Err(Rejection::Respond {
                    code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    reason: "Unsupported Media Type".into(),
                    headers: vec![("Accept-Encoding", "identity".into())],
                });
            }
        }
    }
    Ok(())
}

fn reason_for(e: &ParseError) -> String {
    format!("Bad Request ({e})")
}
