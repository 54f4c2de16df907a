//! The events podpbx reports, as the JSON bodies webhooks receive (documented in
//! `docs/events.md`). Every body is one flat object, so a Home Assistant template reads
//! `{{ trigger.json.from }}`.

use std::time::SystemTime;

use podpbx_config::EventKind;
use serde::Serialize;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `doorbell`, `missed_call`, `voicemail` or `trunk`.
    pub event: &'static str,
    /// Unique per event (and the same on every retry): lets a receiver drop duplicates.
    pub id: String,
    /// When it happened, RFC 3339 UTC.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub data: Data,
}

/// The event's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Data {
    /// A doorbell user places a call.
    Doorbell {
        /// The doorbell's user name.
        from: String,
        /// Its display name.
        from_name: Option<String>,
        /// The number it called.
        to: String,
    },
    /// An incoming call (from a trunk or a doorbell) ended unanswered.
    MissedCall {
        /// Caller ID or user name.
        from: String,
        /// Display name, when known.
        from_name: Option<String>,
        /// The number called (DID or extension).
        to: String,
        /// The trunk it came in on.
        trunk: Option<String>,
        /// `no_answer`, `busy` or `cancelled` (the caller gave up).
        reason: &'static str,
        /// Seconds it rang.
        ringing_secs: f64,
    },
    /// A voicemail message was left.
    Voicemail {
        /// The mailbox (user).
        mailbox: String,
        /// Who left it.
        from: String,
        /// Their display name.
        from_name: Option<String>,
        /// Length of the message.
        duration_secs: f64,
        /// Its id in the mailbox.
        message_id: String,
        /// New messages in the mailbox now.
        new: usize,
        /// Old messages in the mailbox now.
        old: usize,
    },
    /// A trunk changed state.
    Trunk {
        /// The trunk.
        trunk: String,
        /// `up` or `down`.
        state: &'static str,
        /// Why it is down (the registration's last problem), when known.
        reason: Option<String>,
    },
}

impl Data {
    /// Its kind (which webhooks want it).
    pub fn kind(&self) -> EventKind {
        match self {
            Data::Doorbell { .. } => EventKind::Doorbell,
            Data::MissedCall { .. } => EventKind::MissedCall,
            Data::Voicemail { .. } => EventKind::Voicemail,
            Data::Trunk { .. } => EventKind::Trunk,
        }
    }
}

impl Event {
    /// An event happening at `now` with id `id` (unique: the shell uses a counter and a random
    /// prefix).
    pub fn new(data: Data, now: SystemTime, id: String) -> Event {
        Event {
            event: data.kind().as_str(),
            id,
            time: podpbx_sip::time::rfc3339(now),
            data,
        }
    }

    /// The kind.
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn flat_json() {
        let e = Event::new(
            Data::Doorbell {
                from: "door".into(),
                from_name: Some("Front door".into()),
                to: "ring-all".into(),
            },
            UNIX_EPOCH + Duration::from_millis(1_767_603_600_250),
            "a1-7".into(),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "doorbell", "id": "a1-7", "time": "2026-01-05T09:00:00.250Z", "from": "door", "from_name": "Front door", "to": "ring-all"})
        );
        let t = Event::new(
            Data::Trunk {
                trunk: "provider".into(),
                state: "down",
                reason: Some("408 timeout".into()),
            },
            UNIX_EPOCH,
            "x".into(),
        );
        assert_eq!(t.kind(), EventKind::Trunk);
        let v: serde_json::Value = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(v["event"], "trunk");
        assert_eq!(v["state"], "down");
    }
}
