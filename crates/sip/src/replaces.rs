//! The `Replaces` header (RFC 3891): which dialog a new INVITE takes the place of, as sent by a
//! phone for call pickup or as the result of an attended transfer, where it travels escaped inside
//! the `Refer-To` URI (RFC 3515 §2.1, RFC 3891 §7.1).

use crate::Message;
use std::fmt;

/// The option tag.
pub const TAG: &str = "replaces";

/// A dialog to replace: its Call-ID and tags, named from the side of the UA that receives the
/// INVITE with `Replaces` (`to-tag` is that UA's own tag in the dialog, `from-tag` its peer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
    /// Replace only a dialog that is still early (not yet answered).
    pub early_only: bool,
}

impl Replaces {
    /// Parses `callid;to-tag=a;from-tag=b[;early-only]`; both tags are required.
    pub fn parse(v: &[u8]) -> Option<Replaces> {
        let s = std::str::from_utf8(v).ok()?;
        let mut parts = s.split(';');
        let call_id = parts.next()?.trim();
        if call_id.is_empty() || call_id.bytes().any(|b| b <= b' ' || b == b'"') {
            return None;
        }
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("to-tag") {
                to_tag = Some(v.to_owned());
            } else if k.eq_ignore_ascii_case("from-tag") {
                from_tag = Some(v.to_owned());
            } else if k.eq_ignore_ascii_case("early-only") {
                early_only = true;
            }
        }
        let (to_tag, from_tag) = (to_tag?, from_tag?);
        let token =
            |t: &str| !t.is_empty() && t.bytes().all(|b| b > b' ' && b != b';' && b != b'"');
        if !token(&to_tag) || !token(&from_tag) {
            return None;
        }
        Some(Replaces {
            call_id: call_id.to_owned(),
            to_tag,
            from_tag,
            early_only,
        })
    }

    /// The `Replaces` header of `msg` (`None`: absent or malformed; two of them are malformed too,
    /// RFC 3891 §3).
    pub fn of(msg: &Message) -> Option<Replaces> {
        let mut values = msg.other_header_values("Replaces");
        let v = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Replaces::parse(&v)
    }

    /// The value escaped for a URI header (`?Replaces=...` in a `Refer-To`).
    pub fn uri_escaped(&self) -> String {
        let mut out = String::new();
        for b in self.to_string().bytes() {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

impl fmt::Display for Replaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};to-tag={};from-tag={}",
            self.call_id, self.to_tag, self.from_tag
        )?;
        if self.early_only {
            f.write_str(";early-only")?;
        }
        Ok(())
    }
}

/// Splits a `Refer-To` URI (without angle brackets) into the target without URI headers and the
/// `Replaces` it carries, if any (`?Replaces=<escaped>` among `&`-separated headers).
pub fn split_refer_to(uri: &str) -> (String, Option<Replaces>) {
    let Some((target, headers)) = uri.split_once('?') else {
        return (uri.to_owned(), None);
    };
    let replaces = headers.split('&').find_map(|h| {
        let (k, v) = h.split_once('=')?;
        if !k.eq_ignore_ascii_case("Replaces") {
            return None;
        }
        Replaces::parse(&percent_decode(v)?)
    });
    (target.to_owned(), replaces)
}

/// `%XX` unescaping; `None` for a broken escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Framing;
    use bytes::Bytes;

    #[test]
    fn parse_and_print() {
        let r = Replaces::parse(b"98732@sip.example.com ;from-tag=r33th4x0r; to-tag=ff87ff")
            .expect("replaces");
        assert_eq!(r.call_id, "98732@sip.example.com");
        assert_eq!(
            (r.to_tag.as_str(), r.from_tag.as_str()),
            ("ff87ff", "r33th4x0r")
        );
        assert!(!r.early_only);
        assert_eq!(
            r.to_string(),
            "98732@sip.example.com;to-tag=ff87ff;from-tag=r33th4x0r"
        );
        let e = Replaces::parse(b"a;to-tag=1;from-tag=2;early-only").expect("early");
        assert!(e.early_only);
        assert_eq!(Replaces::parse(b"a;to-tag=1"), None, "from-tag missing");
        assert_eq!(Replaces::parse(b";to-tag=1;from-tag=2"), None);
        assert_eq!(Replaces::parse(b"a;to-tag=;from-tag=2"), None);
    }

    #[test]
    fn header_of_a_message() {
        let m = |h: &str| {
            let t = format!("INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{h}Content-Length: 0\r\n\r\n");
            Message::parse(Bytes::from(t), Framing::Datagram).expect("parse")
        };
        assert!(Replaces::of(&m("Replaces: x;to-tag=1;from-tag=2\r\n")).is_some());
        assert_eq!(Replaces::of(&m("")), None);
        assert_eq!(
            Replaces::of(&m(
                "Replaces: x;to-tag=1;from-tag=2\r\nReplaces: y;to-tag=1;from-tag=2\r\n"
            )),
            None,
            "two Replaces headers are malformed"
        );
    }

    #[test]
    fn refer_to_round_trip() {
        let r = Replaces {
            call_id: "12345@192.0.2.3".into(),
            to_tag: "12345".into(),
            from_tag: "5FFE-3994".into(),
            early_only: false,
        };
        let esc = r.uri_escaped();
        assert_eq!(
            esc,
            "12345%40192.0.2.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994"
        );
        let (target, got) = split_refer_to(&format!("sip:bob@biloxi.example.com?Replaces={esc}"));
        assert_eq!(target, "sip:bob@biloxi.example.com");
        assert_eq!(got, Some(r));
        let (target, got) = split_refer_to("sip:carol@x;transport=udp");
        assert_eq!((target.as_str(), got), ("sip:carol@x;transport=udp", None));
        let (_, got) = split_refer_to("sip:b@x?Subject=hi&replaces=a%3Bto-tag%3D1%3Bfrom-tag%3D2");
        assert_eq!(got.map(|r| r.call_id), Some("a".into()));
        let (_, got) = split_refer_to("sip:b@x?Replaces=a%3Bto-tag%3D1%3Bfrom-tag%3");
        assert_eq!(got, None, "broken escape");
    }
}
