//! Small helpers: identifiers, address formatting, URI user unescaping, RFC 3339 times, DTMF
//! bodies.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub use podpbx_sip::ident::{host_of, token};

/// `host:port` as SIP writes it.
pub fn hostport(addr: SocketAddr) -> String {
    format!("{}:{}", host_of(addr), addr.port())
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

/// RFC 3339 UTC time with milliseconds, e.g. `2024-05-01T12:00:00.250Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_250);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.250Z");
    }

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
