//! RFC 3842 `application/simple-message-summary` bodies: what lights a phone's message lamp.

use std::fmt::Write as _;

/// The content type.
pub const CONTENT_TYPE: &str = "application/simple-message-summary";

/// New and old voice messages of a mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Counts {
    /// Not yet listened to: the lamp is on while this is not 0.
    pub new: usize,
    /// Listened to and kept.
    pub old: usize,
}

/// The body for `account` (a SIP URI such as `sip:101@pbx.home`).
///
/// ```
/// use podpbx_presence::mwi::{body, Counts};
/// assert_eq!(
///     body("sip:101@pbx.home", Counts { new: 2, old: 1 }),
///     "Messages-Waiting: yes\r\nMessage-Account: sip:101@pbx.home\r\nVoice-Message: 2/1 (0/0)\r\n"
/// );
/// ```
pub fn body(account: &str, c: Counts) -> String {
    let mut s = String::with_capacity(96);
    let _ = write!(
        s,
        "Messages-Waiting: {}\r\nMessage-Account: {account}\r\nVoice-Message: {}/{} (0/0)\r\n",
        if c.new > 0 { "yes" } else { "no" },
        c.new,
        c.old
    );
    s
}

/// Reads a body the way a phone does: `Messages-Waiting` and the `Voice-Message` counts
/// (`None` if the mandatory `Messages-Waiting` line is missing or malformed).
pub fn parse(text: &str) -> Option<(bool, Counts)> {
    let mut waiting = None;
    let mut counts = Counts::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "messages-waiting" => {
                waiting = match value.to_ascii_lowercase().as_str() {
                    "yes" => Some(true),
                    "no" => Some(false),
                    _ => return None,
                }
            }
            "voice-message" => {
                let nums = value.split_whitespace().next()?;
                let (n, o) = nums.split_once('/')?;
                counts = Counts {
                    new: n.parse().ok()?,
                    old: o.parse().ok()?,
                };
            }
            _ => {}
        }
    }
    waiting.map(|w| (w, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in [
            Counts { new: 0, old: 0 },
            Counts { new: 0, old: 7 },
            Counts { new: 3, old: 0 },
        ] {
            let b = body("sip:anna@home", c);
            assert_eq!(parse(&b), Some((c.new > 0, c)));
        }
        assert!(body("sip:a@b", Counts::default()).starts_with("Messages-Waiting: no\r\n"));
    }

    #[test]
    fn rfc3842_example_parses() {
        // RFC 3842 §5.2, abridged.
        let t = "Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 2/8 (0/2)\r\nFax-Message: 0/0\r\n";
        assert_eq!(parse(t), Some((true, Counts { new: 2, old: 8 })));
        assert_eq!(parse("Voice-Message: 1/1\r\n"), None);
        assert_eq!(parse("Messages-Waiting: maybe\r\n"), None);
    }
}
