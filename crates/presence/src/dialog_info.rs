//! RFC 4235 `application/dialog-info+xml` bodies: what a BLF key shows (idle, ringing, busy)
//! and what a phone needs for directed pickup (the dialog's Call-ID and tags, RFC 3891).

use std::fmt::Write as _;

/// The content type.
pub const CONTENT_TYPE: &str = "application/dialog-info+xml";

/// RFC 4235 §4.1.2 dialog states, as podpbx reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The INVITE was sent or received, nothing answered yet.
    Trying,
    /// Ringing (a provisional response).
    Early,
    /// Answered.
    Confirmed,
    /// Over.
    Terminated,
}

impl State {
    /// The XML value.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Trying => "trying",
            State::Early => "early",
            State::Confirmed => "confirmed",
            State::Terminated => "terminated",
        }
    }
}

/// Who set the dialog up, seen from the observed extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The extension called.
    Initiator,
    /// The extension is being called.
    Recipient,
}

/// The other party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    /// Its SIP URI (`sip:door@pbx.home`).
    pub uri: String,
    /// Its display name.
    pub display: Option<String>,
}

/// One dialog of an observed extension.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dialog {
    /// Unique within the extension (stays the same across state changes).
    pub id: String,
    /// Its state.
    pub state: State,
    /// Who called whom.
    pub direction: Direction,
    /// The other party.
    pub remote: Option<Party>,
    /// The dialog's Call-ID as the extension's phone sees it (for Replaces pickup).
    pub call_id: Option<String>,
    /// The phone's tag.
    pub local_tag: Option<String>,
    /// podpbx's tag towards the phone.
    pub remote_tag: Option<String>,
}

/// XML text and attribute escaping.
fn esc(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

fn attr(name: &str, value: &str, out: &mut String) {
    let _ = write!(out, " {name}=\"");
    esc(value, out);
    out.push('"');
}

/// A full-state document for `entity` (`sip:101@pbx.home`) with `version` (incremented for
/// every NOTIFY of a subscription, RFC 4235 §4.1).
pub fn body(entity: &str, version: u32, dialogs: &[Dialog]) -> String {
    let mut s = String::with_capacity(256 + dialogs.len() * 320);
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\"");
    attr("version", &version.to_string(), &mut s);
    attr("state", "full", &mut s);
    attr("entity", entity, &mut s);
    s.push_str(">\n");
    for d in dialogs {
        s.push_str("  <dialog");
        attr("id", &d.id, &mut s);
        if let Some(c) = &d.call_id {
            attr("call-id", c, &mut s);
        }
        if let Some(t) = &d.local_tag {
            attr("local-tag", t, &mut s);
        }
        if let Some(t) = &d.remote_tag {
            attr("remote-tag", t, &mut s);
        }
        attr(
            "direction",
            match d.direction {
                Direction::Initiator => "initiator",
                Direction::Recipient => "recipient",
            },
            &mut s,
        );
        s.push_str(">\n    <state>");
        s.push_str(d.state.as_str());
        s.push_str("</state>\n");
        if let Some(p) = &d.remote {
            s.push_str("    <remote>\n      <identity");
            if let Some(n) = &p.display {
                attr("display", n, &mut s);
            }
            s.push('>');
            esc(&p.uri, &mut s);
            s.push_str("</identity>\n      <target");
            attr("uri", &p.uri, &mut s);
            s.push_str("/>\n    </remote>\n");
        }
        s.push_str("    <local>\n      <identity>");
        esc(entity, &mut s);
        s.push_str("</identity>\n    </local>\n  </dialog>\n");
    }
    s.push_str("</dialog-info>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_ringing() {
        let idle = body("sip:101@pbx.home", 0, &[]);
        assert!(
            idle.contains("version=\"0\" state=\"full\" entity=\"sip:101@pbx.home\""),
            "{idle}"
        );
        assert!(!idle.contains("<dialog "));
        let d = Dialog {
            id: "d1".into(),
            state: State::Early,
            direction: Direction::Recipient,
            remote: Some(Party {
                uri: "sip:door@pbx.home".into(),
                display: Some("Front <door> & \"bell\"".into()),
            }),
            call_id: Some("abc@x".into()),
            local_tag: Some("t1".into()),
            remote_tag: Some("t2".into()),
        };
        let b = body("sip:101@pbx.home", 7, &[d]);
        assert!(b.contains("<dialog id=\"d1\" call-id=\"abc@x\" local-tag=\"t1\" remote-tag=\"t2\" direction=\"recipient\">"), "{b}");
        assert!(b.contains("<state>early</state>"));
        assert!(
            b.contains("display=\"Front &lt;door&gt; &amp; &quot;bell&quot;\""),
            "{b}"
        );
        assert!(b.contains("<target uri=\"sip:door@pbx.home\"/>"));
        // Well formed enough: every opened element is closed.
        for tag in [
            "dialog-info",
            "dialog",
            "state",
            "remote",
            "identity",
            "local",
        ] {
            assert_eq!(
                b.matches(&format!("<{tag}")).count()
                    - if tag == "dialog" {
                        b.matches("<dialog-info").count()
                    } else {
                        0
                    },
                b.matches(&format!("</{tag}>")).count(),
                "{tag}"
            );
        }
    }

    #[test]
    fn control_characters_are_dropped() {
        let d = Dialog {
            id: "x\r\ny".into(),
            state: State::Confirmed,
            direction: Direction::Initiator,
            remote: None,
            call_id: None,
            local_tag: None,
            remote_tag: None,
        };
        let b = body("sip:a@b", 1, &[d]);
        assert!(b.contains("id=\"xy\""));
    }
}
