//! Reading the home features' keys: `[clock]`, `[[modes]]`, `[voicemail]`, `[features]`,
//! `[[webhooks]]`, `[events]`, the users' voicemail/forwarding/DND/doorbell keys and the
//! dialplan's `match.time` / `match.mode`.

use std::path::PathBuf;

use super::{err, secret_keys, section, unknown_msg};
use crate::error::{io_message, Diagnostics};
use crate::home::*;
use crate::reader::{one_of, Sp, Tbl};
use crate::schema::StorageConfig;
use crate::timespec::{Clock, TimeMatch};
use podpbx_sip::{Secret, SecretSource};

pub(super) fn clock(d: &mut Diagnostics, r: &mut Tbl) -> Clock {
    let mut t = section(d, r, "clock");
    let clock = match t.str(d, "timezone") {
        Some(s) => Clock::new(&s.v).unwrap_or_else(|e| {
            err(d, &s, e);
            Clock::utc()
        }),
        None => Clock::utc(),
    };
    t.finish(d);
    clock
}

/// A feature code: digits, `*` and `#`, at most 16; `""` disables it.
fn code_ok(d: &mut Diagnostics, s: &Sp<String>) -> bool {
    let ok = s.v.len() <= 16
        && s.v
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#');
    if !ok {
        err(
            d,
            s,
            format!(
                "`{}` is not a feature code: use up to 16 digits, `*` and `#`",
                s.v
            ),
        );
    }
    ok
}

/// A mode with where its name and feature code were written.
pub(super) type RawMode = (Mode, Sp<String>, Option<Sp<String>>);

pub(super) fn modes(d: &mut Diagnostics, r: &mut Tbl) -> Vec<RawMode> {
    let mut out: Vec<RawMode> = Vec::new();
    for mut t in r.tables(d, "modes") {
        let name = t.req_str(d, "name");
        let code = t.str(d, "feature_code");
        let initial = t.bool_or(d, "initial", false);
        t.finish(d);
        let Some(name) = name else { continue };
        if !super::check_name(d, &name) {
            continue;
        }
        if let Some(first) = out.iter().find(|(m, _, _)| m.name == name.v) {
            let line = d.line_of(&first.1.span);
            err(
                d,
                &name,
                format!(
                    "duplicate mode name `{}` (first defined at line {line})",
                    name.v
                ),
            );
            continue;
        }
        let feature_code = code
            .as_ref()
            .filter(|c| code_ok(d, c) && !c.v.is_empty())
            .map(|c| c.v.clone());
        out.push((
            Mode {
                name: name.v.clone(),
                feature_code,
                initial,
            },
            name,
            code,
        ));
    }
    out
}

pub(super) fn voicemail(
    d: &mut Diagnostics,
    r: &mut Tbl,
    storage: &StorageConfig,
) -> VoicemailConfig {
    let mut t = section(d, r, "voicemail");
    let dir = match t.str(d, "dir") {
        Some(s) if s.v.is_empty() => {
            err(d, &s, "must not be empty");
            PathBuf::new()
        }
        Some(s) => PathBuf::from(s.v),
        None => storage.data_dir.join("voicemail"),
    };
    let max_message = t.secs_or(d, "max_message_secs", 5, 3600, 120).v;
    let min_message = t.secs_or(d, "min_message_secs", 0, 60, 1).v;
    let silence = t.secs_or(d, "silence_secs", 1, 600, 5).v;
    let max_messages = t.u32_or(d, "max_messages", 1, 10_000, 100).v;
    let max_sessions = t.u32_or(d, "max_sessions", 1, 1000, 8).v;
    t.finish(d);
    VoicemailConfig {
        dir,
        max_message,
        min_message,
        silence,
        max_messages,
        max_sessions,
    }
}

/// `[features]`; `modes`' feature codes are checked against them too.
pub(super) fn features(d: &mut Diagnostics, r: &mut Tbl, modes: &[RawMode]) -> FeatureCodes {
    let mut t = section(d, r, "features");
    let defaults = FeatureCodes::default();
    let read = |d: &mut Diagnostics,
                t: &mut Tbl,
                key: &'static str,
                default: &str|
     -> (String, Option<Sp<String>>) {
        match t.str(d, key) {
            Some(s) => {
                code_ok(d, &s);
                (s.v.clone(), Some(s))
            }
            None => (default.to_string(), None),
        }
    };
    let (voicemail, s1) = read(d, &mut t, "voicemail", &defaults.voicemail);
    let (forward_always, s2) = read(d, &mut t, "forward_always", &defaults.forward_always);
    let (forward_busy, s3) = read(d, &mut t, "forward_busy", &defaults.forward_busy);
    let (forward_no_answer, s4) = read(d, &mut t, "forward_no_answer", &defaults.forward_no_answer);
    let (forward_off, s5) = read(d, &mut t, "forward_off", &defaults.forward_off);
    let (dnd_on, s6) = read(d, &mut t, "dnd_on", &defaults.dnd_on);
    let (dnd_off, s7) = read(d, &mut t, "dnd_off", &defaults.dnd_off);
    let (pickup, s8) = read(d, &mut t, "pickup", &defaults.pickup);
    let span = t.span.clone();
    t.finish(d);
    let codes = FeatureCodes {
        voicemail,
        forward_always,
        forward_busy,
        forward_no_answer,
        forward_off,
        dnd_on,
        dnd_off,
        pickup,
    };
    // Where to report a clash: the key if written, else the section.
    let spans = [s1, s2, s3, s4, s5, s6, s7, s8];
    let mut all: Vec<(String, String, Sp<String>, bool)> = codes
        .all()
        .iter()
        .zip(spans)
        .filter(|((_, v), _)| !v.is_empty())
        .map(|((k, v), s)| {
            let at = s.unwrap_or(Sp {
                v: v.to_string(),
                span: span.clone(),
                path: format!("features.{k}"),
            });
            // Codes followed by a number or an extension.
            let prefix = matches!(
                *k,
                "forward_always" | "forward_busy" | "forward_no_answer" | "pickup"
            );
            (format!("features.{k}"), v.to_string(), at, prefix)
        })
        .collect();
    for (m, _, code) in modes {
        if let (Some(c), Some(at)) = (&m.feature_code, code) {
            all.push((format!("modes `{}`", m.name), c.clone(), at.clone(), false));
        }
    }
    for (i, (key, code, at, _)) in all.iter().enumerate() {
        for (okey, ocode, _, oprefix) in &all[..i] {
            if code == ocode {
                err(d, at, format!("`{code}` is already the code of {okey}"));
            } else if *oprefix && code.starts_with(ocode.as_str()) {
                err(d, at, format!("`{code}` starts with `{ocode}` ({okey}, which is followed by a number): it could never be dialled"));
            }
        }
        for (okey, ocode, _, oprefix) in &all[i + 1..] {
            if *oprefix && code != ocode && code.starts_with(ocode.as_str()) {
                err(d, at, format!("`{code}` starts with `{ocode}` ({okey}, which is followed by a number): it could never be dialled"));
            }
        }
        let _ = key;
    }
    codes
}

/// A secret read from `key` (a file): trimmed, non-empty.
fn secret_file(d: &mut Diagnostics, s: &Sp<String>) -> Option<Secret> {
    let path = PathBuf::from(&s.v);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            Some(Secret::new(text.trim(), SecretSource::File(path)))
        }
        Ok(_) => {
            err(d, s, format!("{} is empty", s.v));
            None
        }
        Err(e) => {
            err(d, s, format!("cannot read {}: {}", s.v, io_message(&e)));
            None
        }
    }
}

pub(super) fn webhooks(d: &mut Diagnostics, r: &mut Tbl) -> Vec<Webhook> {
    let kinds: Vec<(&'static str, EventKind)> =
        EventKind::ALL.iter().map(|k| (k.as_str(), *k)).collect();
    let mut out = Vec::new();
    for mut t in r.tables(d, "webhooks") {
        let url = t
            .req_str(d, "url")
            .and_then(|u| match HttpUrl::parse(&u.v) {
                Ok(x) => Some(x),
                Err(e) => {
                    err(d, &u, e);
                    None
                }
            });
        let mut events = Vec::new();
        if let Some(f) = t.field("events") {
            if let Some(elems) = f.array(d) {
                if elems.is_empty() {
                    d.error(
                        f.span.clone(),
                        f.path.clone(),
                        format!(
                            "must list at least one of {}",
                            one_of(&kinds.iter().map(|k| k.0).collect::<Vec<_>>())
                        ),
                    );
                }
                for e in elems {
                    if let Some(k) = e.choice(d, &kinds) {
                        if !events.contains(&k.v) {
                            events.push(k.v);
                        }
                    }
                }
            }
        } else {
            events = EventKind::ALL.to_vec();
        }
        let secret = t.str(d, "secret_file").and_then(|s| secret_file(d, &s));
        let timeout = t.secs_or(d, "timeout_secs", 1, 60, 5).v;
        let max_attempts = t.u32_or(d, "max_attempts", 1, 20, 5).v;
        t.finish(d);
        if let Some(url) = url {
            out.push(Webhook {
                url,
                events,
                secret,
                timeout,
                max_attempts,
            });
        }
    }
    out
}

pub(super) fn events(d: &mut Diagnostics, r: &mut Tbl) -> EventsConfig {
    let mut t = section(d, r, "events");
    let queue = t.u32_or(d, "queue", 1, 100_000, 256).v;
    t.finish(d);
    EventsConfig { queue }
}

/// A user's forwarding as written (targets resolved once users and groups are known).
#[derive(Debug, Clone, Default)]
pub(super) struct RawForward {
    always: Option<Sp<String>>,
    busy: Option<Sp<String>>,
    no_answer: Option<Sp<String>>,
    no_answer_secs: u32,
}

/// The home keys of a `[[users]]` entry.
pub(super) struct UserExtras {
    pub(super) voicemail: Option<UserVoicemail>,
    pub(super) doorbell: bool,
    pub(super) dnd: bool,
    pub(super) forward: RawForward,
    pub(super) email: Option<String>,
}

pub(super) fn user_extras(d: &mut Diagnostics, t: &mut Tbl) -> UserExtras {
    let vm = t.bool(d, "voicemail");
    let has_pin =
        t.has("voicemail_pin") || t.has("voicemail_pin_file") || t.has("voicemail_pin_env");
    let pin = secret_keys(
        d,
        t,
        ["voicemail_pin", "voicemail_pin_file", "voicemail_pin_env"],
    );
    if let Some(p) = &pin {
        let v = p.expose();
        if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_digit()) {
            d.error(
                t.span.clone(),
                t.child("voicemail_pin"),
                "a voicemail PIN is 1 to 16 digits",
            );
        }
    }
    let unsolicited_mwi = t.bool_or(d, "unsolicited_mwi", true);
    let voicemail = match vm.as_ref().map(|b| b.v) {
        Some(true) => Some(UserVoicemail {
            pin,
            unsolicited_mwi,
        }),
        _ => {
            if has_pin {
                d.error(
                    t.span.clone(),
                    t.child("voicemail_pin"),
                    "needs `voicemail = true`",
                );
            }
            None
        }
    };
    let doorbell = t.bool_or(d, "doorbell", false);
    let dnd = t.bool_or(d, "dnd", false);
    let mut forward = RawForward {
        no_answer_secs: 20,
        ..RawForward::default()
    };
    if let Some(mut f) = t.table(d, "forward") {
        forward.always = f.str(d, "always");
        forward.busy = f.str(d, "busy");
        forward.no_answer = f.str(d, "no_answer");
        forward.no_answer_secs = f.u32_or(d, "no_answer_secs", 1, 600, 20).v;
        f.finish(d);
    }
    let email = t.str(d, "email").and_then(|e| {
        if valid_email(&e.v) {
            Some(e.v)
        } else {
            err(d, &e, format!("`{}` is not an e-mail address", e.v));
            None
        }
    });
    UserExtras {
        voicemail,
        doorbell,
        dnd,
        forward,
        email,
    }
}

/// Resolves forwarding targets: a user or group, else a phone number.
pub(super) fn resolve_forward(
    d: &mut Diagnostics,
    user: &str,
    raw: &RawForward,
    locals: &[&str],
) -> Forwarding {
    let mut one = |s: &Option<Sp<String>>| -> Option<ForwardTarget> {
        let s = s.as_ref()?;
        if s.v == user {
            err(d, s, "a user cannot forward to itself");
            return None;
        }
        match ForwardTarget::parse(&s.v, |n| locals.contains(&n)) {
            Some(t) => Some(t),
            None => {
                let hint = unknown_msg("user or group", &s.v, locals.iter().copied());
                err(
                    d,
                    s,
                    format!("{hint}; or give a phone number (an optional `+` then digits)"),
                );
                None
            }
        }
    };
    Forwarding {
        always: one(&raw.always),
        busy: one(&raw.busy),
        no_answer: one(&raw.no_answer),
        no_answer_secs: raw.no_answer_secs,
    }
}

/// `match.time` and `match.mode` of a rule.
pub(super) fn match_extras(
    d: &mut Diagnostics,
    m: &mut Tbl,
    modes: &[&str],
) -> Result<(Option<TimeMatch>, Option<ModeMatch>), ()> {
    let mut ok = true;
    let mut time = None;
    if let Some(mut t) = m.table(d, "time") {
        let weekdays = t.str_list(d, "weekdays").unwrap_or_default();
        let hours = t.str_list(d, "hours").unwrap_or_default();
        let dates = t.str_list(d, "dates").unwrap_or_default();
        let span = t.span.clone();
        let path = t.path.clone();
        t.finish(d);
        if weekdays.is_empty() && hours.is_empty() && dates.is_empty() {
            d.error(
                span,
                path,
                "set at least one of `weekdays`, `hours`, `dates`",
            );
            ok = false;
        } else {
            let v = |x: &[Sp<String>]| x.iter().map(|s| s.v.clone()).collect::<Vec<_>>();
            match TimeMatch::new(&v(&weekdays), &v(&hours), &v(&dates)) {
                Ok(tm) => time = Some(tm),
                Err((i, key, msg)) => {
                    let list = match key {
                        "weekdays" => &weekdays,
                        "hours" => &hours,
                        _ => &dates,
                    };
                    err(d, &list[i], msg);
                    ok = false;
                }
            }
        }
    }
    let mode = match m.str(d, "mode") {
        Some(s) => {
            let (on, name) = match s.v.strip_prefix('!') {
                Some(n) => (false, n),
                None => (true, s.v.as_str()),
            };
            if modes.contains(&name) {
                Some(ModeMatch {
                    mode: name.to_string(),
                    on,
                })
            } else {
                err(d, &s, format!("{} (write `\"night\"` for on, `\"!night\"` for off; modes are declared in `[[modes]]`)", unknown_msg("mode", name, modes.iter().copied())));
                ok = false;
                None
            }
        }
        None => None,
    };
    if ok {
        Ok((time, mode))
    } else {
        Err(())
    }
}

pub(super) fn email(d: &mut Diagnostics, r: &mut Tbl) -> Option<EmailConfig> {
    if !r.has("email") {
        return None;
    }
    let mut t = section(d, r, "email");
    let host = t.req_str(d, "smtp_host");
    let tls = t
        .choice(
            d,
            "tls",
            &[
                ("starttls", SmtpTls::StartTls),
                ("tls", SmtpTls::Tls),
                ("none", SmtpTls::None),
            ],
        )
        .map_or(SmtpTls::StartTls, |v| v.v);
    let default_port = match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    };
    let port = t.u16_or(d, "smtp_port", 1, 65535, default_port).v;
    let username = t.str(d, "username").map(|s| s.v);
    let has_password = t.has("password") || t.has("password_file") || t.has("password_env");
    let password = secret_keys(d, &mut t, ["password", "password_file", "password_env"]);
    let from = t.req_str(d, "from");
    let queue = t.u32_or(d, "queue", 1, 10_000, 64).v;
    let max_attempts = t.u32_or(d, "max_attempts", 1, 20, 5).v;
    let attach = t.bool_or(d, "attach", true);
    let timeout = t.secs_or(d, "timeout_secs", 1, 300, 30).v;
    if let Some(f) = &from {
        if !valid_email(&f.v) {
            err(d, f, format!("`{}` is not an e-mail address", f.v));
        }
    }
    if username.is_some() != has_password {
        d.error(
            t.span.clone(),
            t.child("username"),
            "set both `username` and a password (`password_file`), or neither",
        );
    }
    if let Some(h) = &host {
        let loopback = h.v == "localhost"
            || h.v
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if tls == SmtpTls::None && (username.is_some() || !loopback) {
            d.error(
                t.span.clone(),
                t.child("tls"),
                "`none` sends messages (and credentials) in clear text: only for a relay on loopback without credentials; use `starttls` or `tls`",
            );
        }
    }
    t.finish(d);
    Some(EmailConfig {
        host: host?.v,
        port,
        tls,
        username,
        password,
        from: from?.v,
        queue,
        max_attempts,
        attach,
        timeout,
    })
}
