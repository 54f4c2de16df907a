//! Configuration of the features a home uses every day: voicemail, forwarding and do not
//! disturb, feature codes, night mode (time zone, manual modes, `match.time`), and webhooks
//! for home automation. Read by `build/home.rs`; every key is in `CONFIG.md`.

use std::path::PathBuf;
use std::time::Duration;

use podpbx_sip::Secret;

/// `[voicemail]`: the media endpoint that records and plays messages.
#[derive(Debug, Clone, PartialEq)]
pub struct VoicemailConfig {
    /// Where mailboxes live (default `<data_dir>/voicemail`).
    pub dir: PathBuf,
    /// Longest message.
    pub max_message: Duration,
    /// Shorter messages (after trailing silence is cut) are dropped.
    pub min_message: Duration,
    /// This long without voice ends a recording.
    pub silence: Duration,
    /// Messages a mailbox holds (then callers hear "mailbox full").
    pub max_messages: u32,
    /// Simultaneous voicemail calls (more get busy).
    pub max_sessions: u32,
}

/// A user's mailbox (`voicemail = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserVoicemail {
    /// The PIN for listening (`voicemail_pin_file`, digits). `None`: the mailbox takes
    /// messages but cannot be listened to by phone.
    pub pin: Option<Secret>,
    /// Unsolicited MWI NOTIFYs to the user's phones when they hold no subscription.
    pub unsolicited_mwi: bool,
}

/// Where a forwarded call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// A user or group.
    Local(String),
    /// A number dialled through the dialplan (trunk rules apply).
    Number(String),
}

impl ForwardTarget {
    /// A target from text: a known user/group name, else a phone number (`+` and digits).
    pub fn parse(s: &str, is_local: impl Fn(&str) -> bool) -> Option<ForwardTarget> {
        if is_local(s) {
            return Some(ForwardTarget::Local(s.to_string()));
        }
        let digits = s.strip_prefix('+').unwrap_or(s);
        (!digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| ForwardTarget::Number(s.to_string()))
    }

    /// The user, group or number.
    pub fn as_str(&self) -> &str {
        match self {
            ForwardTarget::Local(s) | ForwardTarget::Number(s) => s,
        }
    }
}

/// Call forwarding of a user (`forward = { ... }`); run-time changes by feature code override it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// Every call.
    pub always: Option<ForwardTarget>,
    /// When the user is busy (486 from every phone, or DND).
    pub busy: Option<ForwardTarget>,
    /// When nobody answers within `no_answer_secs`.
    pub no_answer: Option<ForwardTarget>,
    /// Ring time before `no_answer` applies.
    pub no_answer_secs: u32,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            always: None,
            busy: None,
            no_answer: None,
            no_answer_secs: 20,
        }
    }
}

/// `[features]`: codes dialled from a phone (handled before the dialplan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureCodes {
    /// Listen to one's own mailbox.
    pub voicemail: String,
    /// `<code><number>#`: forward every call.
    pub forward_always: String,
    /// `<code><number>#`: forward when busy.
    pub forward_busy: String,
    /// `<code><number>#`: forward when not answered.
    pub forward_no_answer: String,
    /// Cancel every forwarding.
    pub forward_off: String,
    /// Do not disturb on.
    pub dnd_on: String,
    /// Do not disturb off.
    pub dnd_off: String,
    /// `<code><extension>`: answer a call ringing at that extension.
    pub pickup: String,
}

impl FeatureCodes {
    /// Every code with its key, for validation and help.
    pub fn all(&self) -> [(&'static str, &str); 8] {
        [
            ("voicemail", &self.voicemail),
            ("forward_always", &self.forward_always),
            ("forward_busy", &self.forward_busy),
            ("forward_no_answer", &self.forward_no_answer),
            ("forward_off", &self.forward_off),
            ("dnd_on", &self.dnd_on),
            ("dnd_off", &self.dnd_off),
            ("pickup", &self.pickup),
        ]
    }
}

impl Default for FeatureCodes {
    fn default() -> Self {
        FeatureCodes {
            voicemail: "*97".into(),
            forward_always: "*21*".into(),
            forward_busy: "*67*".into(),
            forward_no_answer: "*61*".into(),
            forward_off: "#21#".into(),
            dnd_on: "*78".into(),
            dnd_off: "*79".into(),
            pickup: "**".into(),
        }
    }
}

/// `[[modes]]`: a manual switch (night mode, holiday) that dialplan rules can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// Name (`night`).
    pub name: String,
    /// Dialling this toggles the mode (any user may).
    pub feature_code: Option<String>,
    /// State when nothing was switched at run time yet.
    pub initial: bool,
}

/// `match.mode`: `"night"` (the mode is on) or `"!night"` (off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeMatch {
    /// The mode.
    pub mode: String,
    /// Whether the rule wants it on.
    pub on: bool,
}

/// What a webhook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A doorbell user (`doorbell = true`) places a call.
    Doorbell,
    /// A call from outside (or a doorbell) ended unanswered.
    MissedCall,
    /// A voicemail message was left.
    Voicemail,
    /// A trunk went down or came back.
    Trunk,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 4] = [
        EventKind::Doorbell,
        EventKind::MissedCall,
        EventKind::Voicemail,
        EventKind::Trunk,
    ];

    /// The name in the configuration and in payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Doorbell => "doorbell",
            EventKind::MissedCall => "missed_call",
            EventKind::Voicemail => "voicemail",
            EventKind::Trunk => "trunk",
        }
    }
}

/// An `http://` or `https://` URL a webhook posts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (80/443 by default).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{s}` is not an http:// or https:// URL"));
        };
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("must not contain spaces or control characters".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not supported: use `secret_file` for a signature"
                    .into(),
            );
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("`{h}` is not an IPv6 address"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{p}` is not a port"))?,
                None if tail.is_empty() => default_port,
                None => return Err(format!("`{s}` is not a valid URL")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{p}` is not a port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("`{s}` has no host"));
        }
        Ok(HttpUrl {
            tls,
            host,
            port,
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// `[[webhooks]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Where events are POSTed.
    pub url: HttpUrl,
    /// Which events (all by default).
    pub events: Vec<EventKind>,
    /// HMAC-SHA256 key (`secret_file`): `X-Podpbx-Signature: sha256=<hex>` over the body.
    pub secret: Option<Secret>,
    /// Per attempt (connect, send, answer).
    pub timeout: Duration,
    /// Attempts per event (with back-off 1 s, 2 s, 4 s...).
    pub max_attempts: u32,
}

/// `[events]`: delivery of webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// Events waiting for delivery, over all webhooks (the oldest is dropped beyond).
    pub queue: u32,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587), required (never falls back to clear text).
    StartTls,
    /// TLS from the first byte (465).
    Tls,
    /// Clear text: only towards a loopback relay without credentials.
    None,
}

/// `[email]`: voicemail notifications by e-mail with the message attached.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port (default by `tls`: 587, 465, 25).
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// SMTP AUTH user name.
    pub username: Option<String>,
    /// SMTP AUTH password (`password_file` / `password_env` / `password`).
    pub password: Option<Secret>,
    /// The sender address.
    pub from: String,
    /// Notifications waiting (the oldest is dropped beyond).
    pub queue: u32,
    /// Attempts per notification (back-off 5 s doubling).
    pub max_attempts: u32,
    /// Attach the WAV (else only the notice).
    pub attach: bool,
    /// Per attempt.
    pub timeout: Duration,
}

/// A plausible e-mail address: `local@domain`, no spaces or controls, at most 254 characters.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | ',' | ';'))
}
