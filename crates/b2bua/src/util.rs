//! Small helpers: identifiers, address formatting, URI user unescaping, RFC 3339 times, DTMF
//! bodies.

use podpbx_sip::Message;

pub use podpbx_sip::time::rfc3339;

/// Bytes as text (lossy).
pub(crate) fn str_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The message carries an SDP body.
pub(crate) fn is_sdp(msg: &Message) -> bool {
    !msg.body.is_empty()
        && msg
            .content_type()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"application/sdp"))
}

/// Percent-decodes a URI user part and drops user parameters (`;...`); invalid escapes are kept.
pub fn unescape_user(raw: &[u8]) -> String {
    let raw = raw.split(|b| *b == b';').next().unwrap_or(raw);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps only characters safe inside a SIP header value / URI user.
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/#".contains(*c))
        .take(max)
        .collect()
}

/// Display names: printable, no quotes or backslashes.
pub fn sanitize_display(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(64)
        .collect()
}

/// A DTMF digit carried by SIP INFO: `application/dtmf-relay` (`Signal=5\r\nDuration=160`) or
/// `application/dtmf` (`5`). Returns the digit and its duration in ms (default 160).
pub fn parse_dtmf_info(content_type: &[u8], body: &[u8]) -> Option<(char, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let ct = content_type.to_ascii_lowercase();
    let norm = |c: char| -> Option<char> {
        let c = c.to_ascii_uppercase();
        matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
    };
    if ct == b"application/dtmf-relay" {
        let mut digit = None;
        let mut duration = 160;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "signal" => {
                    let v = v.trim();
                    digit = match v {
                        "10" => Some('*'),
                        "11" => Some('#'),
                        _ if v.chars().count() == 1 => v.chars().next().and_then(norm),
                        _ => None,
                    };
                }
                "duration" => duration = v.trim().parse().unwrap_or(160),
                _ => {}
            }
        }
        digit.map(|d| (d, duration.clamp(40, 5000)))
    } else if ct == b"application/dtmf" {
        let t = text.trim();
        (t.chars().count() == 1)
            .then(|| t.chars().next().and_then(norm))
            .flatten()
            .map(|d| (d, 160))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_bodies() {
        assert_eq!(
            parse_dtmf_info(b"application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some(('5', 160))
        );
        assert_eq!(
            parse_dtmf_info(b"application/dtmf-relay", b"Signal=#\r\n"),
            Some(('#', 160))
        );
        assert_eq!(parse_dtmf_info(b"application/dtmf", b"7"), Some(('7', 160)));
        assert_eq!(
            parse_dtmf_info(b"application/dtmf-relay", b"Signal=x"),
            None
        );
        assert_eq!(parse_dtmf_info(b"text/plain", b"5"), None);
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_user(b"%2B4930;npdi"), "+4930");
        assert_eq!(unescape_user(b"10%"), "10%");
    }
}
