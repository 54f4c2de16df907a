//! Caller headers that cross the B2BUA on purpose (issue #15). Every leg gets headers of its own;
//! only these are taken from the other side, under rules:
//!
//! * Towards phones: `Alert-Info` and `Call-Info` (distinctive ringing, intercom, auto-answer)
//!   from a digest-authenticated local user, or set by the dialplan rule (`alert_info`,
//!   `call_info`). From a trunk `Call-Info` never passes and `Alert-Info` only with the trunk's
//!   `alert_info = true` and without its auto-answer parts: a stranger on the PSTN must not be
//!   able to open a phone's microphone. From a user identified by its source address alone
//!   (forgeable over UDP) neither passes.
//! * Every value is bounded: at most [`MAX_VALUES`] per header, each at most
//!   [`MAX_VALUE_LEN`] bytes of printable ASCII; others are dropped and counted.
//! * Caller identity (RFC 3325): a trunk with `trust_pai` shows the provider's
//!   `P-Asserted-Identity` to the phones; PAI from anyone else is never read nor forwarded.
//!   Towards a trunk with `send_pai` podpbx asserts the caller ID itself; a withheld caller ID
//!   goes out as `From: "Anonymous" <sip:anonymous@anonymous.invalid>` with `Privacy: id`.

use super::B2bua;
use crate::util::{sanitize, sanitize_display, unescape_user};
use crate::{Caller, Flow, Identity};
use podpbx_config::Rule;
use podpbx_sip::headers::NameAddr;
use podpbx_sip::Message;

/// At most this many values of one header are passed on.
pub(crate) const MAX_VALUES: usize = 4;
/// The longest value passed on, in bytes.
pub(crate) const MAX_VALUE_LEN: usize = 256;

/// The From of a call whose caller ID is withheld (RFC 3323 §4.1.1.3).
pub(crate) const ANONYMOUS_FROM: &str = "\"Anonymous\" <sip:anonymous@anonymous.invalid>";

/// What became of the caller's values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Malformed, oversize, non-ASCII or beyond [`MAX_VALUES`].
    pub bad: u64,
    /// Auto-answer values or parameters removed (from a trunk).
    pub auto_answer: u64,
}

/// Splits a header's value list at top-level commas (not inside `<...>` or quotes).
fn split_list(v: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut angle, mut quote, mut esc) = (false, false, false);
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        if quote {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => quote = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if !angle => quote = true,
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// A value within bounds: trimmed, non-empty, at most [`MAX_VALUE_LEN`] bytes of printable
/// ASCII, balanced `<>` and quotes.
fn bounded(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || s.len() > MAX_VALUE_LEN || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let opens = s.bytes().filter(|&b| b == b'<').count();
    let closes = s.bytes().filter(|&b| b == b'>').count();
    if opens != closes || opens > 1 || s.bytes().filter(|&b| b == b'"').count() % 2 != 0 {
        return None;
    }
    Some(s)
}

/// Whether text names auto-answer or intercom, however written (`info=alert-autoanswer`,
/// `answer-after=0`, `Auto Answer`, `Ring Answer`, `intercom`...).
fn auto_answer_text(s: &str) -> bool {
    let norm: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    norm.contains("answer") || norm.contains("intercom")
}

/// `value` (bounded) without its auto-answer parts: `None` when its URI or token itself is
/// one; else the value without such parameters, and how many were removed.
fn without_auto_answer(value: &str) -> (Option<String>, u64) {
    // The URI (`<...>`, whose `;` are the URI's) or the bare token, then `;` parameters.
    let (main, rest) = match value.strip_prefix('<') {
        Some(_) => match value.find('>') {
            Some(e) => value.split_at(e + 1),
            None => return (None, 1),
        },
        None => value.split_at(value.find(';').unwrap_or(value.len())),
    };
    if auto_answer_text(main) {
        return (None, 1);
    }
    let mut out = main.trim().to_string();
    let mut removed = 0;
    for p in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if auto_answer_text(p) {
            removed += 1;
        } else {
            out.push(';');
            out.push_str(p);
        }
    }
    (Some(out), removed)
}

/// The values of header `name` in `msg` within bounds (at most [`MAX_VALUES`]); `strip`
/// removes auto-answer parts. Counts what was left out in `dropped`.
fn collect(msg: &Message, name: &str, strip: bool, dropped: &mut Dropped) -> Vec<String> {
    let mut out = Vec::new();
    for line in msg.other_header_values(name) {
        for v in split_list(&line) {
            if v.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(s) = bounded(v) else {
                dropped.bad += 1;
                continue;
            };
            let s = if strip {
                let (kept, removed) = without_auto_answer(s);
                dropped.auto_answer += removed;
                match kept {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                s.to_string()
            };
            if out.len() >= MAX_VALUES {
                dropped.bad += 1;
                continue;
            }
            out.push(s);
        }
    }
    out
}

/// Whether `msg` asks for privacy of the caller's identity (RFC 3323: `id`, `header`, `user`).
pub(crate) fn privacy_requested(msg: &Message) -> bool {
    msg.other_header_values("Privacy").any(|v| {
        String::from_utf8_lossy(&v)
            .split([';', ','])
            .map(|t| t.trim().to_ascii_lowercase())
            .any(|t| t == "id" || t == "header" || t == "user")
    })
}

/// The caller (display, user) a trusted provider asserts in `P-Asserted-Identity` (RFC 3325):
/// the first value with a `sip:`/`sips:` user or a `tel:` number.
pub(crate) fn asserted_identity(msg: &Message) -> Option<(String, String)> {
    for line in msg.other_header_values("P-Asserted-Identity") {
        for v in split_list(&line) {
            let Some(s) = bounded(v) else { continue };
            let Ok(na) = NameAddr::parse(&bytes::Bytes::copy_from_slice(s.as_bytes())) else {
                continue;
            };
            let user = match na.uri.user.as_ref() {
                Some(u) => unescape_user(u),
                None if na.uri.scheme.eq_ignore_ascii_case(b"tel") => {
                    let raw = String::from_utf8_lossy(&na.uri.raw).into_owned();
                    let num = raw.get(4..).unwrap_or("");
                    num.split(';').next().unwrap_or("").to_string()
                }
                None => continue,
            };
            let user = sanitize(&user, 32);
            if user.is_empty() {
                continue;
            }
            let display = na
                .display_unescaped()
                .map(|d| sanitize_display(&String::from_utf8_lossy(&d)))
                .unwrap_or_default();
            return Some((display, user));
        }
    }
    None
}

impl B2bua {
    /// The `Alert-Info` / `Call-Info` lines the phones this call rings get (see the module).
    pub(super) fn phone_headers(
        &mut self,
        req: &Message,
        flow: &Flow,
        caller: &Caller,
        rule: Option<&Rule>,
    ) -> Vec<(String, String)> {
        let mut dropped = Dropped::default();
        let (alert, call_info) = match caller {
            // Digest-authenticated users only: an `identify_by_source` user is an address.
            Caller::User(_) if !matches!(self.identify(req, flow), Identity::User(_)) => (
                collect(req, "Alert-Info", false, &mut dropped),
                collect(req, "Call-Info", false, &mut dropped),
            ),
            Caller::User(_) => (Vec::new(), Vec::new()),
            Caller::Trunk { name, .. } => {
                let pass = self.cfg.trunk(name).is_some_and(|t| t.alert_info);
                let alert = if pass {
                    collect(req, "Alert-Info", true, &mut dropped)
                } else {
                    Vec::new()
                };
                (alert, Vec::new())
            }
        };
        let alert = match rule.and_then(|r| r.alert_info.clone()) {
            Some(v) => vec![v],
            None => alert,
        };
        let call_info = match rule.and_then(|r| r.call_info.clone()) {
            Some(v) => vec![v],
            None => call_info,
        };
        self.security.headers_dropped += dropped.bad;
        self.security.auto_answer_stripped += dropped.auto_answer;
        alert
            .into_iter()
            .map(|v| ("Alert-Info".to_string(), v))
            .chain(call_info.into_iter().map(|v| ("Call-Info".to_string(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_answer_parts_are_removed_and_the_rest_kept() {
        let cases = [
            (
                "<http://127.0.0.1/ring>;info=alert-autoanswer;delay=0",
                Some("<http://127.0.0.1/ring>;delay=0"),
            ),
            ("<http://x/Bellcore-dr2>", Some("<http://x/Bellcore-dr2>")),
            ("<sip:x;answer-after=0>", None),
            ("<http://x/ring>;answer-after=0", Some("<http://x/ring>")),
            ("Auto Answer", None),
            ("Ring Answer", None),
            ("intercom", None),
            ("<urn:alert:service:auto-answer>", None),
            ("<http://x/>;info=INTERCOM", Some("<http://x/>")),
        ];
        for (v, want) in cases {
            assert_eq!(without_auto_answer(v).0.as_deref(), want, "{v}");
        }
    }

    #[test]
    fn lists_split_outside_uris_and_quotes() {
        let v = b"<http://a/x,y>;p=\"1,2\", <http://b/>";
        let parts: Vec<&[u8]> = split_list(v);
        assert_eq!(parts.len(), 2);
        assert_eq!(bounded(parts[0]), Some("<http://a/x,y>;p=\"1,2\""));
        assert_eq!(bounded(parts[1]), Some("<http://b/>"));
        assert_eq!(bounded(b"<http://a/\x01>"), None);
        assert_eq!(bounded("<http://a/\u{e9}>".as_bytes()), None);
        assert_eq!(bounded(b"<http://a/"), None);
        assert_eq!(bounded(&[b'a'; 257]), None);
        assert!(bounded(&[b'a'; 256]).is_some());
    }
}
