//! Reading the TOML document into [`Config`] and validating it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::Table;

use crate::cidr::Cidr;
use crate::error::{io_message, Diagnostics};
use crate::pattern::Pattern;
use crate::reader::{one_of, Sp, Span, Tbl};
use crate::schema::*;
use crate::suggest::closest;
use podpbx_sip::{Secret, SecretSource};

mod home;

const DEFAULT_DOMAIN: &str = "podpbx.local";
const DEFAULT_DATA_DIR: &str = "/var/lib/podpbx";
const DEFAULT_ADMIN: &str = "127.0.0.1:9060";
const DAY: u64 = 86_400;
/// A trunk's statuses after which an outbound call tries the next trunk: our credentials or
/// the account refused, no answer, the provider's servers failing.
const DEFAULT_FAILOVER: [u16; 8] = [401, 403, 407, 408, 500, 502, 503, 504];

const TRANSPORTS: &[(&str, Transport)] = &[
    ("udp", Transport::Udp),
    ("tcp", Transport::Tcp),
    ("tls", Transport::Tls),
];
const DEFAULT_TLS_PORT: u16 = 5061;
const SRTP: &[(&str, Srtp)] = &[
    ("off", Srtp::Off),
    ("optional", Srtp::Optional),
    ("required", Srtp::Required),
];

/// `srtp` of a user or trunk. SDES puts the keys in the SDP, so SRTP needs TLS signalling:
/// `required` only with `transport = "tls"` (`optional` uses SRTP when the leg is on TLS).
fn srtp(d: &mut Diagnostics, t: &mut Tbl, transport: Option<Transport>) -> Srtp {
    let Some(v) = t.choice(d, "srtp", SRTP) else {
        return Srtp::Off;
    };
    let not_tls = transport.is_some_and(|t| t != Transport::Tls);
    if (v.v == Srtp::Required && transport != Some(Transport::Tls)) || (v.v != Srtp::Off && not_tls)
    {
        err(
            d,
            &v,
            format!(
                "`{}` needs `transport = \"tls\"`: SDES keys are never sent in clear SIP",
                match v.v {
                    Srtp::Required => "required",
                    _ => "optional",
                }
            ),
        );
    }
    v.v
}
const STRATEGIES: &[(&str, RingStrategy)] = &[
    ("parallel", RingStrategy::Parallel),
    ("sequential", RingStrategy::Sequential),
];

/// Reads and validates the whole document. Problems are recorded in `d`;
/// the returned value is only meaningful when `d` holds no errors.
pub(crate) fn build(d: &mut Diagnostics, root: &Table) -> Config {
    let mut r = Tbl::root(root);

    let storage = storage(d, &mut r);
    let (sip, sip_port) = sip(d, &mut r);
    let tls = tls(d, &mut r, &sip);
    let log = log(d, &mut r);
    let admin = admin(d, &mut r, &sip);
    let dns = dns(d, &mut r);
    let registrar = registrar(d, &mut r, &storage);
    let security = security(d, &mut r);
    let media = media(d, &mut r, &sip_port);
    let calls = calls(d, &mut r, &storage);
    let clock = home::clock(d, &mut r);
    let modes = home::modes(d, &mut r);
    let voicemail = home::voicemail(d, &mut r, &storage);
    let features = home::features(d, &mut r, &modes);
    let webhooks = home::webhooks(d, &mut r);
    let events = home::events(d, &mut r);
    let email = home::email(d, &mut r);
    let mut users = users(d, &mut r);
    let groups = groups(d, &mut r, &users);
    resolve_forwards(d, &mut users, &groups);
    let trunks = trunks(d, &mut r, &sip);
    let mode_names: Vec<&str> = modes.iter().map(|m| m.0.name.as_str()).collect();
    let dialplan = dialplan(d, &mut r, &users, &groups, &trunks, &mode_names);
    r.finish(d);

    Config {
        sip,
        tls,
        log,
        admin,
        dns,
        registrar,
        security,
        storage,
        media,
        calls,
        users: users.into_iter().map(|u| u.user).collect(),
        groups: groups.into_iter().map(|g| g.group).collect(),
        trunks: trunks.into_iter().map(|t| t.trunk).collect(),
        dialplan: dialplan.into_iter().map(|r| r.rule).collect(),
        clock,
        modes: modes.into_iter().map(|m| m.0).collect(),
        voicemail,
        features,
        webhooks,
        events,
        email,
        user_index: Default::default(),
    }
}

/// Forwarding targets name users, groups or numbers: resolved once all names are known.
fn resolve_forwards(d: &mut Diagnostics, users: &mut [RawUser], groups: &[RawGroup]) {
    let names: Vec<String> = users
        .iter()
        .map(|u| u.user.name.clone())
        .chain(groups.iter().map(|g| g.group.name.clone()))
        .collect();
    let locals: Vec<&str> = names.iter().map(String::as_str).collect();
    for u in users.iter_mut() {
        u.user.forward = home::resolve_forward(d, &u.user.name, &u.forward, &locals);
    }
}

/// The named sub-table, or an empty stand-in when absent.
fn section<'a>(d: &mut Diagnostics, r: &mut Tbl<'a>, key: &'static str) -> Tbl<'a> {
    let span = r.span.clone();
    r.table(d, key)
        .unwrap_or_else(|| Tbl::empty(&r.child(key), span))
}

// ----- small validators -------------------------------------------------------

fn err<T>(d: &mut Diagnostics, at: &Sp<T>, message: impl Into<String>) {
    d.error(at.span.clone(), at.path.clone(), message);
}

/// Names of users, groups and trunks: 1-64 of `A-Z a-z 0-9 . _ + -`.
fn check_name(d: &mut Diagnostics, name: &Sp<String>) -> bool {
    let ok = !name.v.is_empty()
        && name.v.len() <= 64
        && name
            .v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if !ok {
        err(
            d,
            name,
            format!(
                "invalid name `{}`: use 1 to 64 letters, digits, `.`, `_`, `+` or `-`",
                name.v
            ),
        );
    }
    ok
}

/// Free text (display names, reason phrases): no control characters.
fn check_text(d: &mut Diagnostics, text: &Sp<String>) -> bool {
    let ok = !text.v.chars().any(char::is_control);
    if !ok {
        err(d, text, "must not contain control characters");
    }
    ok
}

/// A phone number: an optional `+` then digits.
fn check_number(d: &mut Diagnostics, n: &Sp<String>) -> bool {
    let digits = n.v.strip_prefix('+').unwrap_or(&n.v);
    let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        err(
            d,
            n,
            format!(
                "`{}` is not a phone number (an optional `+` then digits)",
                n.v
            ),
        );
    }
    ok
}

fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_domain(d: &mut Diagnostics, s: &Sp<String>) -> bool {
    let ok = is_hostname(&s.v) || s.v.parse::<IpAddr>().is_ok();
    if !ok {
        err(
            d,
            s,
            format!("`{}` is not a valid domain name or IP address", s.v),
        );
    }
    ok
}

fn cidr(d: &mut Diagnostics, s: &Sp<String>) -> Option<Cidr> {
    match s.v.parse::<Cidr>() {
        Ok(c) => Some(c),
        Err(e) => {
            err(d, s, e.0);
            None
        }
    }
}

fn cidr_list(d: &mut Diagnostics, t: &mut Tbl, key: &'static str) -> Vec<Sp<Cidr>> {
    t.str_list(d, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let c = cidr(d, &s)?;
            Some(s.map(|_| c))
        })
        .collect()
}

/// Reports duplicates among `names` (second and later occurrences).
fn check_unique(d: &mut Diagnostics, names: &[&Sp<String>], what: &str) {
    let mut seen: HashMap<&str, &Sp<String>> = HashMap::new();
    for n in names {
        if let Some(first) = seen.get(n.v.as_str()) {
            let line = d.line_of(&first.span);
            err(
                d,
                n,
                format!(
                    "duplicate {what} name `{}` (first defined at line {line})",
                    n.v
                ),
            );
        } else {
            seen.insert(&n.v, n);
        }
    }
}

/// Checks `lo <= hi`, reporting a violation at whichever of the two keys
/// is written in the file (preferring `hi`). Returns whether they are in
/// order.
fn ordered<T: PartialOrd>(
    d: &mut Diagnostics,
    t: &Tbl,
    (lo_key, lo): (&str, &Sp<T>),
    (hi_key, hi): (&str, &Sp<T>),
    show: impl Fn(&T) -> String,
) -> bool {
    if lo.v <= hi.v {
        return true;
    }
    if t.has(hi_key) || !t.has(lo_key) {
        let msg = format!(
            "must not be less than `{}` ({})",
            t.child(lo_key),
            show(&lo.v)
        );
        err(d, hi, msg);
    } else {
        let msg = format!(
            "must not be greater than `{}` ({})",
            t.child(hi_key),
            show(&hi.v)
        );
        err(d, lo, msg);
    }
    false
}

fn zero_is_none(v: Duration) -> Option<Duration> {
    (!v.is_zero()).then_some(v)
}

/// Validates a `tracing` filter: comma-separated `level` or
/// `target=level` directives (span filters `target[span]=level` are passed
/// through unchecked).
fn check_log_level(d: &mut Diagnostics, s: &Sp<String>) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if s.v.trim().is_empty() {
        err(d, s, "must not be empty (e.g. `info`)");
        return;
    }
    for directive in s.v.split(',').map(str::trim) {
        if directive.contains('[') {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ if directive.contains('=') => {
                err(d, s, format!("invalid filter directive `{directive}`"));
                continue;
            }
            _ => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let hint = closest(level, LEVELS)
                .map(|c| format!(", did you mean `{c}`?"))
                .unwrap_or_default();
            err(
                d,
                s,
                format!(
                    "invalid level `{level}` in `{directive}`: expected {}{hint}",
                    one_of(&LEVELS)
                ),
            );
        }
    }
}

// ----- secrets ------------------------------------------------------------------

/// Reads `password` / `password_file` / `password_env` (at most one) and
/// resolves it.
fn secret(d: &mut Diagnostics, t: &mut Tbl) -> Option<Secret> {
    secret_keys(d, t, ["password", "password_file", "password_env"])
}

/// Reads a secret given inline, as a file or as an environment variable
/// (`keys`: the three key names; at most one may be set) and resolves it.
fn secret_keys(d: &mut Diagnostics, t: &mut Tbl, keys: [&'static str; 3]) -> Option<Secret> {
    let [inline_key, file_key, env_key] = keys;
    let inline = t.str(d, inline_key);
    let file = t.str(d, file_key);
    let env = t.str(d, env_key);
    let given: Vec<(&str, &Sp<String>)> = [
        (inline_key, inline.as_ref()),
        (file_key, file.as_ref()),
        (env_key, env.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    if let [(first, _), rest @ ..] = given.as_slice() {
        for (_, v) in rest {
            err(
                d,
                v,
                format!(
                    "conflicts with `{first}`: set exactly one of `{inline_key}`, `{file_key}`, `{env_key}`"
                ),
            );
        }
        if !rest.is_empty() {
            return None;
        }
    }
    if let Some(p) = inline {
        if p.v.is_empty() {
            err(d, &p, "must not be empty");
            return None;
        }
        return Some(Secret::new(p.v, SecretSource::Inline));
    }
    if let Some(f) = file {
        let path = PathBuf::from(&f.v);
        return match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    err(d, &f, format!("{} is empty", f.v));
                    None
                } else {
                    Some(Secret::new(value, SecretSource::File(path)))
                }
            }
            Err(e) => {
                err(d, &f, format!("cannot read {}: {}", f.v, io_message(&e)));
                None
            }
        };
    }
    if let Some(e) = env {
        return match std::env::var(&e.v) {
            Ok(value) if !value.is_empty() => Some(Secret::new(value, SecretSource::Env(e.v))),
            Ok(_) => {
                err(d, &e, format!("environment variable {} is empty", e.v));
                None
            }
            Err(std::env::VarError::NotPresent) => {
                err(d, &e, format!("environment variable {} is not set", e.v));
                None
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                err(
                    d,
                    &e,
                    format!("environment variable {} is not valid UTF-8", e.v),
                );
                None
            }
        };
    }
    None
}

// ----- sections -------------------------------------------------------------------

fn storage(d: &mut Diagnostics, r: &mut Tbl) -> StorageConfig {
    let mut t = section(d, r, "storage");
    let data_dir = match t.str(d, "data_dir") {
        Some(s) if s.v.is_empty() => {
            err(d, &s, "must not be empty");
            PathBuf::from(DEFAULT_DATA_DIR)
        }
        Some(s) => PathBuf::from(s.v),
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };
    t.finish(d);
    StorageConfig { data_dir }
}

/// Parses an address for `sip.ipv6` / `sip.ipv4`, checking its family and
/// kind.
fn sip_addr(
    d: &mut Diagnostics,
    s: &Sp<String>,
    want_v6: bool,
    wildcard_ok: bool,
) -> Option<IpAddr> {
    let (want, other_key) = if want_v6 {
        ("IPv6", "ipv4")
    } else {
        ("IPv4", "ipv6")
    };
    if s.v.starts_with('[') {
        err(d, s, "write the address without brackets");
        return None;
    }
    if s.v.contains('/') {
        err(
            d,
            s,
            format!(
                "expected a single {want} address, not a network (the pod's address is a /{})",
                if want_v6 { 128 } else { 32 }
            ),
        );
        return None;
    }
    let ip: IpAddr = match s.v.parse() {
        Ok(ip) => ip,
        Err(_) => {
            err(d, s, format!("`{}` is not a valid {want} address", s.v));
            return None;
        }
    };
    if ip.is_ipv6() != want_v6 {
        let got = if want_v6 { "IPv4" } else { "IPv6" };
        err(
            d,
            s,
            format!(
                "`{}` is an {got} address, expected {want} (put it in `sip.{other_key}`)",
                s.v
            ),
        );
        return None;
    }
    if let IpAddr::V6(v6) = ip {
        if v6.to_ipv4_mapped().is_some() {
            err(
                d,
                s,
                format!(
                    "`{}` is an IPv4-mapped address, put the IPv4 address in `sip.ipv4`",
                    s.v
                ),
            );
            return None;
        }
    }
    if ip.is_unspecified() && !wildcard_ok {
        err(
            d,
            s,
            format!(
                "wildcard address `{}` is not allowed: pin the pod's address, or set `sip.allow_wildcard = true`",
                s.v
            ),
        );
        return None;
    }
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        err(d, s, format!("`{}` is not a unicast address", s.v));
        return None;
    }
    Some(ip)
}

fn sip(d: &mut Diagnostics, r: &mut Tbl) -> (SipConfig, Sp<u16>) {
    let read = r.table(d, "sip");
    let sip_present = read.is_some();
    let mut t = match read {
        Some(t) => t,
        None => {
            if !r.has("sip") {
                r.missing(d, "sip", "table `[sip]` (with `ipv6` and/or `ipv4`)");
            }
            Tbl::empty("sip", r.span.clone())
        }
    };
    let allow_wildcard = t.bool_or(d, "allow_wildcard", false);
    let ipv6_s = t.str(d, "ipv6");
    let ipv4_s = t.str(d, "ipv4");
    let ipv6 = ipv6_s
        .as_ref()
        .and_then(|s| match sip_addr(d, s, true, allow_wildcard) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        });
    let ipv4 = ipv4_s
        .as_ref()
        .and_then(|s| match sip_addr(d, s, false, allow_wildcard) {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        });
    if sip_present && !t.has("ipv6") && !t.has("ipv4") {
        d.error(
            t.span.clone(),
            "sip",
            "set at least one of `ipv6` and `ipv4` (the pod's pinned addresses)",
        );
    }
    let port_s = t.u16_or(d, "port", 1, 65535, 5060);
    let port = port_s.v;

    let mut transports = Vec::new();
    match t.field("transports") {
        Some(f) => {
            if let Some(elems) = f.array(d) {
                if elems.is_empty() {
                    d.error(
                        f.span.clone(),
                        f.path.clone(),
                        "must list at least one transport",
                    );
                }
                for e in elems {
                    if let Some(tr) = e.choice(d, TRANSPORTS) {
                        if transports.contains(&tr.v) {
                            err(d, &tr, format!("duplicate transport `{}`", tr.v));
                        } else {
                            transports.push(tr.v);
                        }
                    }
                }
            }
        }
        None => transports = vec![Transport::Udp, Transport::Tcp],
    }

    let domain = match t.str(d, "domain") {
        Some(s) => {
            check_domain(d, &s);
            s.v
        }
        None => DEFAULT_DOMAIN.to_string(),
    };
    let realm = match t.str(d, "realm") {
        Some(s) => {
            if s.v.is_empty() || s.v.contains('"') || s.v.contains('\\') {
                err(d, &s, "must be non-empty and contain no `\"` or `\\`");
            }
            check_text(d, &s);
            s.v
        }
        None => domain.clone(),
    };
    let t1 = t.millis_or(d, "t1_ms", 50, 10_000, 500);
    let t2 = t.millis_or(d, "t2_ms", 50, 60_000, 4000);
    let t4 = t.millis_or(d, "t4_ms", 0, 60_000, 5000);
    ordered(d, &t, ("t1_ms", &t1), ("t2_ms", &t2), |v| {
        format!("{} ms", v.as_millis())
    });
    let tcp_idle_timeout = t.secs_or(d, "tcp_idle_timeout_secs", 1, DAY, 120).v;
    let tcp_message_timeout = t.secs_or(d, "tcp_message_timeout_secs", 1, 600, 10).v;
    let tcp_max_connections = t.u32_or(d, "tcp_max_connections", 1, 1_000_000, 2048).v as usize;
    let tcp_max_connections_per_source = t
        .u32_or(d, "tcp_max_connections_per_source", 1, 1_000_000, 32)
        .v as usize;
    let max_message_bytes = t.int_or(d, "max_message_bytes", 1024, 65535, 65535).v as usize;
    let transaction_memory =
        t.int_or(d, "transaction_memory_mb", 1, 4096, 32).v as usize * (1 << 20);
    let transaction_source_percent = t.int_or(d, "transaction_source_percent", 1, 100, 25).v as u8;
    let user_agent = match t.str(d, "user_agent") {
        Some(s) => {
            check_text(d, &s);
            s.v
        }
        None => "podpbx".to_string(),
    };
    t.finish(d);
    let config = SipConfig {
        ipv6,
        ipv4,
        port,
        transports,
        domain,
        realm,
        allow_wildcard,
        t1: t1.v,
        t2: t2.v,
        t4: t4.v,
        tcp_idle_timeout,
        tcp_message_timeout,
        tcp_max_connections,
        tcp_max_connections_per_source,
        max_message_bytes,
        transaction_memory,
        transaction_source_percent,
        user_agent,
    };
    (config, port_s)
}

/// A PEM file path that must be readable now (the binary parses it at start and on reload).
fn pem_path(d: &mut Diagnostics, s: &Sp<String>) -> PathBuf {
    if s.v.is_empty() {
        err(d, s, "must not be empty");
    } else if let Err(e) = std::fs::File::open(&s.v) {
        err(d, s, format!("cannot read {}: {}", s.v, io_message(&e)));
    }
    PathBuf::from(&s.v)
}

fn tls(d: &mut Diagnostics, r: &mut Tbl, sip: &SipConfig) -> Option<TlsConfig> {
    let enabled = sip.has_transport(Transport::Tls);
    if !enabled && !r.has("tls") {
        return None;
    }
    let mut t = section(d, r, "tls");
    let port = t.u16_or(d, "port", 1, 65535, DEFAULT_TLS_PORT);
    if port.v == sip.port && (sip.udp() || sip.tcp()) {
        err(
            d,
            &port,
            format!("must differ from `sip.port` ({})", sip.port),
        );
    }
    let cert = t.str(d, "cert_file").map(|s| pem_path(d, &s));
    let key = t.str(d, "key_file").map(|s| pem_path(d, &s));
    let ca_file = t.str(d, "ca_file").map(|s| pem_path(d, &s));
    let min_version = t
        .choice(
            d,
            "min_version",
            &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
        )
        .map_or(TlsVersion::Tls12, |v| v.v);
    if enabled && cert.is_none() {
        t.missing(d, "cert_file", "PEM certificate chain file");
    }
    if enabled && key.is_none() {
        t.missing(d, "key_file", "PEM private key file");
    }
    let span = t.span.clone();
    t.finish(d);
    if !enabled {
        d.error(
            span,
            "tls",
            "`[tls]` is set but `sip.transports` does not list `tls`",
        );
        return None;
    }
    Some(TlsConfig {
        port: port.v,
        cert_file: cert.unwrap_or_default(),
        key_file: key.unwrap_or_default(),
        ca_file,
        min_version,
    })
}

fn log(d: &mut Diagnostics, r: &mut Tbl) -> LogConfig {
    let mut t = section(d, r, "log");
    let level = match t.str(d, "level") {
        Some(s) => {
            check_log_level(d, &s);
            s.v
        }
        None => "info".to_string(),
    };
    let format = t
        .choice(
            d,
            "format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
        .map_or(LogFormat::Text, |f| f.v);
    t.finish(d);
    LogConfig { level, format }
}

fn admin(d: &mut Diagnostics, r: &mut Tbl, sip: &SipConfig) -> AdminConfig {
    let mut t = section(d, r, "admin");
    let listen_key = t.str(d, "listen");
    let listen = match &listen_key {
        Some(s) => listen_addr(d, s, sip, None),
        None => DEFAULT_ADMIN.parse().ok(),
    };
    let health_key = t.str(d, "health_listen");
    let health_listen = health_key
        .as_ref()
        .and_then(|s| listen_addr(d, s, sip, listen.map(|a| ("admin.listen", a))));
    let health_metrics = t.bool(d, "health_metrics");
    let token = t.str(d, "token_file").and_then(|f| admin_token(d, &f));
    // Off loopback the API (and /metrics) would answer anyone who reaches the address: the
    // pinned IPv6 is reachable from the whole internet. Such a listener needs a token.
    if let (Some(a), Some(at), false) = (listen, &listen_key, token.is_some()) {
        if !a.ip().is_loopback() {
            err(
                d,
                at,
                format!(
                    "{a} is not a loopback address, so /api/* and /metrics would be open to the network: set `admin.token_file` to a file holding a bearer token (e.g. a Kubernetes Secret), or listen on 127.0.0.1 or [::1] (probes can use `health_listen`)"
                ),
            );
        }
    }
    if let Some(m) = health_metrics
        .as_ref()
        .filter(|m| m.v && health_listen.is_none())
    {
        err(d, m, "needs a `health_listen` address to serve /metrics on");
    }
    t.finish(d);
    AdminConfig {
        listen,
        token,
        health_listen,
        health_metrics: health_metrics.is_some_and(|m| m.v),
    }
}

/// An `address:port` listener value; `""` disables it (`None`). `other` is a listener it may not
/// share a port with.
fn listen_addr(
    d: &mut Diagnostics,
    s: &Sp<String>,
    sip: &SipConfig,
    other: Option<(&str, SocketAddr)>,
) -> Option<SocketAddr> {
    if s.v.is_empty() {
        return None;
    }
    let Ok(a) = s.v.parse::<SocketAddr>() else {
        err(
            d,
            s,
            format!(
                "`{}` is not a socket address: expected `address:port`, e.g. `127.0.0.1:9060` or `[::1]:9060` (empty disables)",
                s.v
            ),
        );
        return None;
    };
    let overlaps = |b: IpAddr| a.ip().is_unspecified() || b.is_unspecified() || a.ip() == b;
    if a.port() == sip.port && sip.bind_addrs().iter().any(|b| overlaps(b.ip())) {
        err(
            d,
            s,
            format!("port {} is already used by `sip.port`", a.port()),
        );
    } else if let Some((key, o)) = other.filter(|(_, o)| o.port() == a.port() && overlaps(o.ip())) {
        err(d, s, format!("{o} is already used by `{key}`"));
    }
    Some(a)
}

/// Reads `[admin] token_file`: the bearer token `/api/*` and `/metrics` require.
fn admin_token(d: &mut Diagnostics, f: &Sp<String>) -> Option<Secret> {
    let path = PathBuf::from(&f.v);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            err(d, f, format!("cannot read {}: {}", f.v, io_message(&e)));
            return None;
        }
    };
    match check_admin_token(&text) {
        Ok(token) => Some(Secret::new(token, SecretSource::File(path))),
        Err(why) => {
            err(d, f, format!("{}: {why}", f.v));
            None
        }
    }
}

/// The shortest admin token accepted: 128 bits as hex, or 16 random characters.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Validates the text of an admin token file; returns the token (one trailing newline and
/// surrounding whitespace removed). The podpbx binary re-reads the file per request with this.
pub fn check_admin_token(text: &str) -> Result<&str, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("the token file is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the token may only hold visible ASCII characters (no spaces or line breaks)".into(),
        );
    }
    if token.len() < MIN_ADMIN_TOKEN {
        return Err(format!(
            "the token is {} characters long, at least {MIN_ADMIN_TOKEN} are required (e.g. `head -c 32 /dev/urandom | base64`)",
            token.len()
        ));
    }
    Ok(token)
}

fn dns(d: &mut Diagnostics, r: &mut Tbl) -> DnsConfig {
    let mut t = section(d, r, "dns");
    let mut servers = Vec::new();
    for s in t.str_list(d, "servers").unwrap_or_default() {
        let addr =
            s.v.parse::<SocketAddr>()
                .ok()
                .or_else(|| s.v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
        match addr {
            Some(a) if a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0 => {
                err(d, &s, format!("`{}` is not a usable name server address", s.v));
            }
            Some(a) => servers.push(a),
            None => err(
                d,
                &s,
                format!(
                    "`{}` is not an IP address or `address:port`, e.g. `2001:db8::53` or `[2001:db8::53]:53`",
                    s.v
                ),
            ),
        }
    }
    t.finish(d);
    DnsConfig { servers }
}

fn registrar(d: &mut Diagnostics, r: &mut Tbl, storage: &StorageConfig) -> RegistrarConfig {
    let mut t = section(d, r, "registrar");
    let min = t.secs_or(d, "min_expires", 1, DAY, 60);
    let max = t.secs_or(d, "max_expires", 1, 7 * DAY, 3600);
    let default = t.secs_or(d, "default_expires", 1, 7 * DAY, 3600);
    let secs = |v: &Duration| v.as_secs().to_string();
    if ordered(d, &t, ("min_expires", &min), ("max_expires", &max), secs)
        && ordered(
            d,
            &t,
            ("min_expires", &min),
            ("default_expires", &default),
            secs,
        )
    {
        ordered(
            d,
            &t,
            ("default_expires", &default),
            ("max_expires", &max),
            secs,
        );
    }
    let state_file = match t.str(d, "state_file") {
        Some(s) if s.v.is_empty() => {
            err(d, &s, "must not be empty");
            PathBuf::new()
        }
        Some(s) => PathBuf::from(s.v),
        None => storage.data_dir.join("bindings.json"),
    };
    let qualify_interval = zero_is_none(t.secs_or(d, "qualify_interval_secs", 0, DAY, 0).v);
    let nonce_ttl = t.secs_or(d, "nonce_ttl_secs", 1, DAY, 300).v;
    let digest_algorithms = digest_algorithms(d, &mut t);
    t.finish(d);
    RegistrarConfig {
        min_expires: min.v,
        max_expires: max.v,
        default_expires: default.v,
        state_file,
        qualify_interval,
        nonce_ttl,
        digest_algorithms,
    }
}

const DIGEST_ALGORITHMS: &[DigestAlgorithm] = &[
    DigestAlgorithm::Md5,
    DigestAlgorithm::Md5Sess,
    DigestAlgorithm::Sha256,
    DigestAlgorithm::Sha256Sess,
];

/// `registrar.digest_algorithms`: a non-empty list without duplicates, most
/// preferred first; the tokens compare case-insensitively (as in SIP).
/// Default `["MD5"]`.
fn digest_algorithms(d: &mut Diagnostics, t: &mut Tbl) -> Vec<DigestAlgorithm> {
    let default = vec![DigestAlgorithm::Md5];
    let Some(f) = t.field("digest_algorithms") else {
        return default;
    };
    let Some(elems) = f.array(d) else {
        return default;
    };
    if elems.is_empty() {
        d.error(
            f.span.clone(),
            f.path.clone(),
            "must list at least one algorithm, e.g. `[\"MD5\"]`",
        );
        return default;
    }
    let names: Vec<&str> = DIGEST_ALGORITHMS.iter().map(|a| a.as_str()).collect();
    let mut out = Vec::new();
    for e in elems {
        let Some(s) = e.str(d) else { continue };
        let Some(alg) = DIGEST_ALGORITHMS
            .iter()
            .copied()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.v.trim()))
        else {
            // `closest` lower-cases what was typed: compare with lower-cased names.
            let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            let hint = closest(&s.v, lower.iter().map(String::as_str))
                .and_then(|c| names.iter().find(|n| n.eq_ignore_ascii_case(c)))
                .map(|c| format!(", did you mean `{c}`?"))
                .unwrap_or_default();
            err(
                d,
                &s,
                format!("expected {}, got `{}`{hint}", one_of(&names), s.v),
            );
            continue;
        };
        if out.contains(&alg) {
            err(d, &s, format!("duplicate algorithm `{alg}`"));
        } else {
            out.push(alg);
        }
    }
    if out.is_empty() {
        default
    } else {
        out
    }
}

fn security(d: &mut Diagnostics, r: &mut Tbl) -> SecurityConfig {
    let mut t = section(d, r, "security");
    let max_auth_failures = t.u32_or(d, "max_auth_failures", 0, 1_000_000, 10).v;
    let failure_window = t.secs_or(d, "failure_window_secs", 1, DAY, 60).v;
    let block = t.secs_or(d, "block_secs", 1, 30 * DAY, 900).v;
    let trusted_networks = cidr_list(d, &mut t, "trusted_networks")
        .into_iter()
        .map(|c| c.v)
        .collect();
    let ipv6_prefix_length = t.int_or(d, "ipv6_prefix_length", 1, 128, 64).v as u8;
    let max_auth_failures_per_minute = t
        .u32_or(d, "max_auth_failures_per_minute", 0, 1_000_000, 100)
        .v;
    t.finish(d);
    SecurityConfig {
        max_auth_failures,
        failure_window,
        block,
        trusted_networks,
        ipv6_prefix_length,
        max_auth_failures_per_minute,
    }
}

fn media(d: &mut Diagnostics, r: &mut Tbl, sip_port: &Sp<u16>) -> MediaConfig {
    let mut t = section(d, r, "media");
    let min = t.u16_or(d, "port_min", 1024, 65534, 20000);
    let max = t.u16_or(d, "port_max", 1025, 65535, 30000);
    if !min.v.is_multiple_of(2) {
        let msg = format!("must be even (RTP uses even ports), got {}", min.v);
        err(d, &min, msg);
    }
    if max.v <= min.v {
        let msg = format!(
            "must be greater than `media.port_min` ({}), got {}",
            min.v, max.v
        );
        err(d, &max, msg);
    } else if (min.v..=max.v).contains(&sip_port.v) {
        if t.has("port_min") || t.has("port_max") {
            let at = if t.has("port_min") { &min } else { &max };
            let msg = format!(
                "the range {}..={} contains `sip.port` ({})",
                min.v, max.v, sip_port.v
            );
            err(d, at, msg);
        } else {
            let msg = format!(
                "lies inside the media port range {}..={} (`media.port_min`, `media.port_max`)",
                min.v, max.v
            );
            err(d, sip_port, msg);
        }
    }
    let timeout = zero_is_none(t.secs_or(d, "timeout_secs", 0, DAY, 30).v);
    let hold_timeout = zero_is_none(t.secs_or(d, "hold_timeout_secs", 0, DAY, 3600).v);
    let dscp = t.int_or(d, "dscp", 0, 63, 46).v as u8;
    let port_layout = t
        .choice(
            d,
            "port_layout",
            &[
                ("shared", MediaPortLayout::Shared),
                ("per-call", MediaPortLayout::PerCall),
            ],
        )
        .map_or(MediaPortLayout::Shared, |s| s.v);
    let moderation = Duration::from_micros(t.int_or(d, "moderation_us", 0, 10_000, 50).v as u64);
    t.finish(d);
    MediaConfig {
        port_min: min.v,
        port_max: max.v,
        timeout,
        hold_timeout,
        dscp,
        port_layout,
        moderation,
    }
}

/// `[calls] max_setup` when absent (see CONFIG.md).
const DEFAULT_MAX_SETUP: u32 = 200;

fn calls(d: &mut Diagnostics, r: &mut Tbl, storage: &StorageConfig) -> CallsConfig {
    let mut t = section(d, r, "calls");
    let max_duration = zero_is_none(t.secs_or(d, "max_duration_secs", 0, 7 * DAY, 14_400).v);
    let max_concurrent = Some(t.u32_or(d, "max_concurrent", 0, 100_000, 100).v).filter(|n| *n > 0);
    let max_setup =
        Some(t.u32_or(d, "max_setup", 0, 100_000, DEFAULT_MAX_SETUP).v).filter(|n| *n > 0);
    let st = t.secs_or(d, "session_timer_secs", 0, DAY, 1800);
    let min_se = t.secs_or(d, "min_se_secs", 90, DAY, 90).v;
    if !st.v.is_zero() && st.v < min_se {
        err(
            d,
            &st,
            format!(
                "must be 0 (off) or at least `min_se_secs` ({} s; RFC 4028 allows no less than 90)",
                min_se.as_secs()
            ),
        );
    }
    let session_timer = zero_is_none(st.v);
    // Off by default: the media timeout (and the session timer, max_duration) end calls whose
    // peers vanished; with the media timeout off this is what does it within minutes.
    let keepalive = zero_is_none(t.secs_or(d, "keepalive_secs", 0, DAY, 0).v);
    let cdr_file = match t.str(d, "cdr_file") {
        Some(s) if s.v.is_empty() => None,
        Some(s) => Some(PathBuf::from(s.v)),
        None => Some(storage.data_dir.join("cdr.jsonl")),
    };
    t.finish(d);
    CallsConfig {
        max_duration,
        max_concurrent,
        max_setup,
        cdr_file,
        session_timer,
        min_se,
        keepalive,
    }
}

// ----- users, groups, trunks -------------------------------------------------------

struct RawUser {
    user: User,
    forward: home::RawForward,
    name: Sp<String>,
    groups: Vec<Sp<String>>,
    source_nets: Vec<Sp<Cidr>>,
}

fn users(d: &mut Diagnostics, r: &mut Tbl) -> Vec<RawUser> {
    let mut out = Vec::new();
    for mut t in r.tables(d, "users") {
        let name = t.req_str(d, "name");
        if let Some(n) = &name {
            check_name(d, n);
        }
        let display_name = t.str(d, "display_name").map(|s| {
            check_text(d, &s);
            s.v
        });
        let has_secret_key = t.has("password") || t.has("password_file") || t.has("password_env");
        let password = secret(d, &mut t);
        let allow_from = cidr_list(d, &mut t, "allow_from");
        let max_contacts = t.u32_or(d, "max_contacts", 1, 100, 5).v;
        let dtmf = t
            .choice(
                d,
                "dtmf",
                &[
                    ("auto", Dtmf::Auto),
                    ("rfc4733", Dtmf::Rfc4733),
                    ("info", Dtmf::Info),
                ],
            )
            .map_or(Dtmf::Auto, |v| v.v);
        let ibs = t.bool(d, "identify_by_source");
        let identify_by_source = ibs.as_ref().is_some_and(|b| b.v);
        if let Some(b) = ibs.as_ref().filter(|b| b.v) {
            if allow_from.is_empty() && !t.has("allow_from") {
                err(
                    d,
                    b,
                    "requires `allow_from` (the sources this user is identified by)",
                );
            }
        }
        let allow_rfc2069 = t.bool(d, "allow_rfc2069").is_some_and(|b| b.v);
        let may_use_trunks = t.bool(d, "may_use_trunks").is_some_and(|b| b.v);
        let max_calls = Some(t.u32_or(d, "max_calls", 0, 10_000, 0).v).filter(|n| *n > 0);
        let groups = t.str_list(d, "groups").unwrap_or_default();
        let transport = t
            .choice(
                d,
                "transport",
                &[
                    ("any", None),
                    ("udp", Some(Transport::Udp)),
                    ("tcp", Some(Transport::Tcp)),
                    ("tls", Some(Transport::Tls)),
                ],
            )
            .and_then(|v| v.v);
        let extras = home::user_extras(d, &mut t);
        let srtp = srtp(d, &mut t, transport);
        let withhold_caller_id = t.bool(d, "withhold_caller_id").is_some_and(|b| b.v);
        if !has_secret_key && !identify_by_source {
            t.missing(
                d,
                "password",
                "secret: set one of `password`, `password_file`, `password_env` (or `identify_by_source = true` with `allow_from`)",
            );
        }
        t.finish(d);
        let Some(name) = name else { continue };
        let source_nets = if identify_by_source {
            allow_from.clone()
        } else {
            Vec::new()
        };
        out.push(RawUser {
            user: User {
                name: name.v.clone(),
                display_name,
                password,
                allow_from: allow_from.into_iter().map(|c| c.v).collect(),
                max_contacts,
                dtmf,
                identify_by_source,
                allow_rfc2069,
                may_use_trunks,
                max_calls,
                groups: groups.iter().map(|g| g.v.clone()).collect(),
                transport,
                voicemail: extras.voicemail,
                doorbell: extras.doorbell,
                dnd: extras.dnd,
                forward: crate::home::Forwarding::default(),
                email: extras.email.clone(),
                srtp,
                withhold_caller_id,
            },
            forward: extras.forward,
            name,
            groups,
            source_nets,
        });
    }
    check_unique(d, &out.iter().map(|u| &u.name).collect::<Vec<_>>(), "user");
    // Two users identified by overlapping sources would be ambiguous.
    for (i, a) in out.iter().enumerate() {
        for b in &out[..i] {
            for na in &a.source_nets {
                if let Some(nb) = b.source_nets.iter().find(|nb| nb.v.overlaps(&na.v)) {
                    err(
                        d,
                        na,
                        format!(
                            "overlaps `{}` of user `{}`: a source can identify only one user",
                            nb.v, b.user.name
                        ),
                    );
                }
            }
        }
    }
    out
}

struct RawGroup {
    group: Group,
}

fn groups(d: &mut Diagnostics, r: &mut Tbl, users: &[RawUser]) -> Vec<RawGroup> {
    let user_names: Vec<&str> = users.iter().map(|u| u.user.name.as_str()).collect();
    let mut names: Vec<Sp<String>> = Vec::new();
    let mut out = Vec::new();
    for mut t in r.tables(d, "groups") {
        let name = t.req_str(d, "name");
        let members = t.str_list(d, "members").unwrap_or_default();
        let strategy = t
            .choice(d, "strategy", STRATEGIES)
            .map_or(RingStrategy::Parallel, |s| s.v);
        let ring_timeout = t.secs_or(d, "ring_timeout_secs", 1, 3600, 30).v;
        let span = t.span.clone();
        let path = t.path.clone();
        t.finish(d);
        let Some(name) = name else { continue };
        if check_name(d, &name) && user_names.contains(&name.v.as_str()) {
            err(
                d,
                &name,
                format!(
                    "`{}` is already a user name; groups and users share one namespace",
                    name.v
                ),
            );
        }
        let mut resolved: Vec<String> = Vec::new();
        for m in &members {
            if !user_names.contains(&m.v.as_str()) {
                err(d, m, unknown_msg("user", &m.v, user_names.iter().copied()));
            } else if resolved.contains(&m.v) {
                err(d, m, format!("`{}` is listed twice", m.v));
            } else {
                resolved.push(m.v.clone());
            }
        }
        for u in users {
            if u.groups.iter().any(|g| g.v == name.v) && !resolved.contains(&u.user.name) {
                resolved.push(u.user.name.clone());
            }
        }
        if resolved.is_empty() && members.is_empty() {
            d.error(
                span,
                path,
                "group has no members: list them in `members` or in the users' `groups`",
            );
        }
        names.push(name.clone());
        out.push(RawGroup {
            group: Group {
                name: name.v,
                members: resolved,
                strategy,
                ring_timeout,
            },
        });
    }
    check_unique(d, &names.iter().collect::<Vec<_>>(), "group");
    let group_names: Vec<&str> = out.iter().map(|g| g.group.name.as_str()).collect();
    for u in users {
        for g in &u.groups {
            if !group_names.contains(&g.v.as_str()) {
                err(
                    d,
                    g,
                    unknown_msg("group", &g.v, group_names.iter().copied()),
                );
            }
        }
    }
    out
}

fn unknown_msg<'a>(what: &str, name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, known) {
        Some(c) => format!("unknown {what} `{name}`, did you mean `{c}`?"),
        None => format!("unknown {what} `{name}`"),
    }
}

struct RawTrunk {
    trunk: Trunk,
    name: Sp<String>,
    dids: Vec<Sp<String>>,
}

fn trunk_host(d: &mut Diagnostics, s: &Sp<String>) -> Option<Host> {
    if s.v.starts_with('[') {
        err(d, s, "write IPv6 literals without brackets");
        return None;
    }
    if let Ok(ip) = s.v.parse::<IpAddr>() {
        if ip.is_unspecified() || ip.is_multicast() {
            err(d, s, format!("`{}` is not a usable host address", s.v));
            return None;
        }
        return Some(Host::from(ip));
    }
    if s.v.contains(':') {
        let msg = if s.v.matches(':').count() == 1 {
            format!("`{}`: put the port in `port`, not in `host`", s.v)
        } else {
            format!("`{}` is not a valid IPv6 address", s.v)
        };
        err(d, s, msg);
        return None;
    }
    if !is_hostname(&s.v) {
        err(
            d,
            s,
            format!("`{}` is not a valid host name or IP address", s.v),
        );
        return None;
    }
    Some(Host::Name(s.v.clone().into()))
}

fn trunks(d: &mut Diagnostics, r: &mut Tbl, sip: &SipConfig) -> Vec<RawTrunk> {
    let mut out = Vec::new();
    for mut t in r.tables(d, "trunks") {
        let name = t.req_str(d, "name");
        if let Some(n) = &name {
            check_name(d, n);
        }
        let host_s = t.req_str(d, "host");
        let host = host_s.as_ref().and_then(|s| trunk_host(d, s));
        let port_given = t.has("port");
        let transport_s = t.choice(d, "transport", TRANSPORTS);
        let transport = transport_s.as_ref().map_or(Transport::Udp, |s| s.v);
        let default_port = if transport == Transport::Tls {
            DEFAULT_TLS_PORT
        } else {
            5060
        };
        let port = t.u16_or(d, "port", 1, 65535, default_port).v;
        if !sip.transports.is_empty() && !sip.has_transport(transport) {
            let msg = format!("transport `{transport}` is not enabled in `sip.transports`");
            match &transport_s {
                Some(s) => err(d, s, msg),
                None => d.error(
                    t.span.clone(),
                    t.child("transport"),
                    format!("{msg} (`udp` is the default)"),
                ),
            }
        }
        let username = t.str(d, "username").map(|s| {
            check_text(d, &s);
            s.v
        });
        let auth_username = t.str(d, "auth_username").map(|s| {
            check_text(d, &s);
            s.v
        });
        let password = secret(d, &mut t);
        let realm = t.str(d, "realm").map(|s| {
            check_text(d, &s);
            s.v
        });
        let expiry = t.secs_or(d, "expiry_secs", 60, DAY, 600).v;
        let dids = t.str_list(d, "dids").unwrap_or_default();
        for did in &dids {
            check_number(d, did);
        }
        check_unique(d, &dids.iter().collect::<Vec<_>>(), "DID");
        let caller_id = t.str(d, "caller_id").map(|s| {
            check_number(d, &s);
            s.v
        });
        let family_s = t.choice(d, "family", &[("ipv6", Family::V6), ("ipv4", Family::V4)]);
        let host_family = match &host {
            Some(Host::V6(_)) => Some(Family::V6),
            Some(Host::V4(_)) => Some(Family::V4),
            _ => None,
        };
        let family = match (&family_s, host_family) {
            (Some(f), Some(h)) if f.v != h => {
                err(
                    d,
                    f,
                    format!(
                        "host `{}` is an {} address",
                        host_s.as_ref().map_or("", |h| h.v.as_str()),
                        if h == Family::V6 { "IPv6" } else { "IPv4" }
                    ),
                );
                f.v
            }
            (Some(f), _) => f.v,
            (None, Some(h)) => h,
            (None, None) if sip.ipv6.is_none() && sip.ipv4.is_some() => Family::V4,
            (None, None) => Family::V6,
        };
        let family_missing = match family {
            Family::V6 => sip.ipv6.is_none() && sip.ipv4.is_some(),
            Family::V4 => sip.ipv4.is_none() && sip.ipv6.is_some(),
        };
        if family_missing {
            let (fam, key) = match family {
                Family::V6 => ("IPv6", "sip.ipv6"),
                Family::V4 => ("IPv4", "sip.ipv4"),
            };
            let msg = format!("trunk uses {fam} but `{key}` is not set");
            match (&family_s, &host_s) {
                (Some(f), _) => err(d, f, msg),
                (None, Some(h)) => err(d, h, msg),
                (None, None) => d.error(t.span.clone(), t.child("family"), msg),
            }
        }
        let networks = cidr_list(d, &mut t, "networks")
            .into_iter()
            .map(|c| c.v)
            .collect();
        let priority = t.u32_or(d, "priority", 0, 1000, 10).v;
        let keepalive = zero_is_none(t.secs_or(d, "keepalive_secs", 0, 3600, 0).v);
        let session_timers = t.bool(d, "session_timers").is_none_or(|b| b.v);
        let send_pai = t.bool(d, "send_pai").is_some_and(|b| b.v);
        let trust_pai = t.bool(d, "trust_pai").is_some_and(|b| b.v);
        let alert_info = t.bool(d, "alert_info").is_some_and(|b| b.v);
        let failover_statuses = match t.field("failover_statuses") {
            Some(f) => f
                .array(d)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.int(d, 300, 699).map(|i| i.v as u16))
                        .collect()
                })
                .unwrap_or_default(),
            None => DEFAULT_FAILOVER.to_vec(),
        };
        let register_s = t.bool(d, "register");
        let register = register_s.as_ref().map_or(username.is_some(), |b| b.v);
        let srtp = srtp(d, &mut t, Some(transport));
        if let Some(b) = register_s.as_ref().filter(|b| b.v) {
            if username.is_none() {
                err(d, b, "registering requires `username`");
            }
        }
        let has_secret_key = t.has("password") || t.has("password_file") || t.has("password_env");
        if register && !has_secret_key {
            t.missing(
                d,
                "password",
                "secret for registering: set one of `password`, `password_file`, `password_env` (or `register = false`)",
            );
        }
        t.finish(d);
        let (Some(name), Some(host)) = (name, host) else {
            continue;
        };
        out.push(RawTrunk {
            trunk: Trunk {
                name: name.v.clone(),
                srv: !port_given && matches!(host, Host::Name(_)),
                host,
                port,
                transport,
                username,
                auth_username,
                password,
                realm,
                expiry,
                dids: dids.iter().map(|d| d.v.clone()).collect(),
                caller_id,
                family,
                networks,
                priority,
                keepalive,
                register,
                srtp,
                session_timers,
                failover_statuses,
                send_pai,
                trust_pai,
                alert_info,
            },
            name,
            dids,
        });
    }
    check_unique(d, &out.iter().map(|t| &t.name).collect::<Vec<_>>(), "trunk");
    out
}

// ----- dialplan ---------------------------------------------------------------------

const ACTIONS: &[(&str, ActionKind)] = &[
    ("ring", ActionKind::Ring),
    ("local", ActionKind::Local),
    ("trunk", ActionKind::Trunk),
    ("reject", ActionKind::Reject),
    ("voicemail", ActionKind::Voicemail),
];
const ACTION_KEYS: &[&str] = &[
    "mailbox",
    "targets",
    "mode",
    "timeout_secs",
    "trunk",
    "strip",
    "prepend",
    "caller_id",
    "status",
    "reason",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Ring,
    Local,
    Trunk,
    Reject,
    Voicemail,
}

impl ActionKind {
    fn name(self) -> &'static str {
        match self {
            ActionKind::Ring => "ring",
            ActionKind::Local => "local",
            ActionKind::Trunk => "trunk",
            ActionKind::Reject => "reject",
            ActionKind::Voicemail => "voicemail",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            ActionKind::Ring => &["targets", "mode", "timeout_secs"],
            ActionKind::Local => &["timeout_secs"],
            ActionKind::Trunk => &["trunk", "strip", "prepend", "caller_id"],
            ActionKind::Reject => &["status", "reason"],
            ActionKind::Voicemail => &["mailbox"],
        }
    }
}

struct Names<'a> {
    users: Vec<&'a str>,
    /// Users with `voicemail = true`.
    mailboxes: Vec<&'a str>,
    groups: &'a [RawGroup],
    trunks: Vec<&'a str>,
    /// The trunks' `priority`, in the order of `trunks`.
    priorities: Vec<u32>,
    dids: Vec<&'a str>,
}

impl Names<'_> {
    fn target(&self, d: &mut Diagnostics, s: &Sp<String>) -> Option<Target> {
        if self.users.contains(&s.v.as_str()) {
            return Some(Target::User(s.v.clone()));
        }
        if self.groups.iter().any(|g| g.group.name == s.v) {
            return Some(Target::Group(s.v.clone()));
        }
        let all = self
            .users
            .iter()
            .copied()
            .chain(self.groups.iter().map(|g| g.group.name.as_str()));
        err(d, s, unknown_msg("user or group", &s.v, all));
        None
    }
}

/// The keys `action` needs, read from `t` (a rule or a fallback entry).
fn action(d: &mut Diagnostics, t: &mut Tbl, names: &Names) -> Option<Action> {
    let action_field = t.field("action");
    t.declare(ACTION_KEYS);
    let kind = match action_field {
        Some(f) => f.choice(d, ACTIONS)?.v,
        None => {
            t.missing(
                d,
                "action",
                "key (`ring`, `local`, `trunk`, `voicemail` or `reject`)",
            );
            return None;
        }
    };
    for key in ACTION_KEYS {
        if !kind.keys().contains(key) {
            if let Some(f) = t.field(key) {
                d.error(
                    f.key_span.clone(),
                    f.path.clone(),
                    format!("does not apply to action `{}`", kind.name()),
                );
            }
        }
    }
    match kind {
        ActionKind::Ring => {
            let targets_s = t.str_list(d, "targets");
            let mode_s = t.choice(d, "mode", STRATEGIES);
            let timeout_s = t.int(d, "timeout_secs", 1, 3600);
            let Some(targets_s) = targets_s else {
                if !t.has("targets") {
                    t.missing(d, "targets", "key (users and/or groups to ring)");
                }
                return None;
            };
            if targets_s.is_empty() {
                d.error(
                    t.span.clone(),
                    t.child("targets"),
                    "must name at least one user or group",
                );
                return None;
            }
            let targets: Vec<Target> = targets_s
                .iter()
                .filter_map(|s| names.target(d, s))
                .collect();
            if targets.len() != targets_s.len() {
                return None;
            }
            // A lone group target inherits the group's strategy and timeout.
            let group = match targets.as_slice() {
                [Target::Group(g)] => names.groups.iter().find(|x| &x.group.name == g),
                _ => None,
            };
            let mode = mode_s
                .map(|m| m.v)
                .or(group.map(|g| g.group.strategy))
                .unwrap_or(RingStrategy::Parallel);
            let timeout = timeout_s
                .map(|s| Duration::from_secs(s.v as u64))
                .or(group.map(|g| g.group.ring_timeout))
                .unwrap_or(Duration::from_secs(30));
            Some(Action::Ring {
                targets,
                mode,
                timeout,
            })
        }
        ActionKind::Local => {
            let timeout = t.secs_or(d, "timeout_secs", 1, 3600, 30).v;
            Some(Action::Local { timeout })
        }
        ActionKind::Trunk => {
            // `trunk` is one name or a list of names (tried by priority).
            let trunk_names: Option<Vec<Sp<String>>> = match t.field("trunk") {
                None => {
                    t.missing(d, "trunk", "key (a trunk name, or a list of them)");
                    None
                }
                Some(f) if f.is_array() => f
                    .array(d)
                    .map(|a| a.iter().filter_map(|x| x.str(d)).collect()),
                Some(f) => f.str(d).map(|s| vec![s]),
            };
            let strip = t.int_or(d, "strip", 0, 32, 0).v as usize;
            let prepend = match t.str(d, "prepend") {
                Some(p) => {
                    if !p
                        .v
                        .bytes()
                        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'*' | b'#'))
                    {
                        err(d, &p, "may only contain digits, `+`, `*` and `#`");
                    }
                    p.v
                }
                None => String::new(),
            };
            let caller_id = t.str(d, "caller_id").map(|s| {
                check_number(d, &s);
                s.v
            });
            let trunk_names = trunk_names?;
            if trunk_names.is_empty() {
                t.missing(d, "trunk", "name: the list is empty");
                return None;
            }
            let mut listed: Vec<(u32, String)> = Vec::new();
            for trunk in &trunk_names {
                let Some(i) = names.trunks.iter().position(|n| *n == trunk.v) else {
                    err(
                        d,
                        trunk,
                        unknown_msg("trunk", &trunk.v, names.trunks.iter().copied()),
                    );
                    return None;
                };
                if listed.iter().any(|(_, n)| *n == trunk.v) {
                    err(d, trunk, format!("trunk `{}` is listed twice", trunk.v));
                    return None;
                }
                listed.push((names.priorities[i], trunk.v.clone()));
            }
            // Stable: equal priorities keep the order written.
            listed.sort_by_key(|(p, _)| *p);
            Some(Action::Trunk {
                trunks: listed.into_iter().map(|(_, n)| n).collect(),
                strip,
                prepend,
                caller_id,
            })
        }
        ActionKind::Reject => {
            let status = match t.field("status") {
                Some(f) => f.int(d, 400, 699)?.v as u16,
                None => {
                    t.missing(d, "status", "key (a SIP status code, 400 to 699)");
                    return None;
                }
            };
            let reason = t.str(d, "reason").map(|s| {
                check_text(d, &s);
                s.v
            });
            Some(Action::Reject { status, reason })
        }
        ActionKind::Voicemail => {
            let mailbox = match t.str(d, "mailbox") {
                Some(m) if names.mailboxes.contains(&m.v.as_str()) => Some(m.v),
                Some(m) => {
                    let msg = if names.users.contains(&m.v.as_str()) {
                        format!(
                            "user `{}` has no mailbox: set `voicemail = true` on it",
                            m.v
                        )
                    } else {
                        unknown_msg("mailbox", &m.v, names.mailboxes.iter().copied())
                    };
                    err(d, &m, msg);
                    return None;
                }
                None => None,
            };
            Some(Action::Voicemail { mailbox })
        }
    }
}

/// The longest `alert_info` / `call_info` value (the engine's bound for any such value).
const MAX_PHONE_HEADER: usize = 256;

/// A rule's `alert_info` / `call_info`: one header value `<URI>;params`, printable ASCII.
fn phone_header(d: &mut Diagnostics, t: &mut Tbl, key: &'static str) -> Option<String> {
    let s = t.str(d, key)?;
    let v = s.v.trim();
    if v.len() > MAX_PHONE_HEADER || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        err(
            d,
            &s,
            format!("must be printable ASCII of at most {MAX_PHONE_HEADER} bytes"),
        );
        return None;
    }
    let uri_closed = v.find('>').is_some_and(|e| e > 1);
    if !v.starts_with('<') || !uri_closed || v.contains(',') {
        err(
            d,
            &s,
            "must be one value `<URI>` with optional `;parameters`, e.g. `<http://127.0.0.1/ring>;info=alert-autoanswer`",
        );
        return None;
    }
    Some(v.to_string())
}

struct RawRule {
    rule: Rule,
    span: Span,
    path: String,
}

fn dialplan(
    d: &mut Diagnostics,
    r: &mut Tbl,
    users: &[RawUser],
    groups: &[RawGroup],
    trunks: &[RawTrunk],
    modes: &[&str],
) -> Vec<RawRule> {
    let names = Names {
        users: users.iter().map(|u| u.user.name.as_str()).collect(),
        mailboxes: users
            .iter()
            .filter(|u| u.user.voicemail.is_some())
            .map(|u| u.user.name.as_str())
            .collect(),
        groups,
        trunks: trunks.iter().map(|t| t.trunk.name.as_str()).collect(),
        priorities: trunks.iter().map(|t| t.trunk.priority).collect(),
        dids: trunks
            .iter()
            .flat_map(|t| t.dids.iter().map(|d| d.v.as_str()))
            .collect(),
    };
    let mut rules: Vec<RawRule> = Vec::new();
    let mut rule_names: Vec<Sp<String>> = Vec::new();
    for (index, mut t) in r.tables(d, "dialplan").into_iter().enumerate() {
        let name = t.str(d, "name");
        if let Some(n) = &name {
            if n.v.trim().is_empty() {
                err(d, n, "must not be empty");
            }
            check_text(d, n);
            rule_names.push(n.clone());
        }
        let span = t.span.clone();
        let path = t.path.clone();
        let matcher = match t.field("match") {
            Some(f) => f.table(d).and_then(|mut m| {
                let res = rule_match(d, &mut m, &names);
                let extras = home::match_extras(d, &mut m, modes);
                m.finish(d);
                match (res, extras) {
                    (Some(mut res), Ok((time, mode))) => {
                        res.time = time;
                        res.mode = mode;
                        Some(res)
                    }
                    _ => None,
                }
            }),
            None => Some(Match {
                number: NumberMatch::Any,
                from: CallSource::Any,
                caller: None,
                did: None,
                time: None,
                mode: None,
            }),
        };
        let alert_info = phone_header(d, &mut t, "alert_info");
        let call_info = phone_header(d, &mut t, "call_info");
        let first = action(d, &mut t, &names);
        let mut fallback = Vec::new();
        let mut fallback_ok = true;
        let mut after_reject: Option<String> = None;
        if let Some(Action::Reject { .. }) = &first {
            after_reject = Some(format!("{path}.action"));
        }
        for mut f in t.tables(d, "fallback") {
            if let Some(prev) = &after_reject {
                d.error(
                    f.span.clone(),
                    f.path.clone(),
                    format!("unreachable: `{prev}` rejects the call before this step"),
                );
            }
            match action(d, &mut f, &names) {
                Some(a) => {
                    if matches!(a, Action::Reject { .. }) && after_reject.is_none() {
                        after_reject = Some(f.path.clone());
                    }
                    fallback.push(a);
                }
                None => fallback_ok = false,
            }
            f.finish(d);
        }
        t.finish(d);
        let (Some(matcher), Some(action), true) = (matcher, first, fallback_ok) else {
            continue;
        };
        rules.push(RawRule {
            rule: Rule {
                name: name.map_or_else(|| format!("dialplan[{index}]"), |n| n.v),
                matcher,
                action,
                fallback,
                alert_info,
                call_info,
            },
            span,
            path,
        });
    }
    check_unique(d, &rule_names.iter().collect::<Vec<_>>(), "rule");
    for (j, later) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..j]
            .iter()
            .find(|e| covers(&e.rule.matcher, &later.rule.matcher))
        {
            let line = d.line_of(&earlier.span);
            d.error(
                later.span.clone(),
                later.path.clone(),
                format!(
                    "rule `{}` is unreachable: every call it matches is taken first by `{}` ({}, line {line})",
                    later.rule.name, earlier.rule.name, earlier.path
                ),
            );
        }
    }
    rules
}

fn rule_match(d: &mut Diagnostics, m: &mut Tbl, names: &Names) -> Option<Match> {
    let mut ok = true;
    let mut number = NumberMatch::Any;
    let mut number_key: Option<&str> = None;
    for key in ["number", "prefix", "pattern"] {
        let Some(s) = m.str(d, key) else { continue };
        if let Some(first) = number_key {
            err(
                d,
                &s,
                format!("conflicts with `{first}`: use only one of `number`, `prefix`, `pattern`"),
            );
            ok = false;
            continue;
        }
        number_key = Some(key);
        if s.v.is_empty() || s.v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(d, &s, "must be non-empty and contain no spaces");
            ok = false;
            continue;
        }
        number = match key {
            "number" => NumberMatch::Exact(s.v.clone()),
            "prefix" => NumberMatch::Prefix(s.v.clone()),
            _ => match s.v.parse::<Pattern>() {
                Ok(p) => NumberMatch::Pattern(p),
                Err(e) => {
                    err(d, &s, e.0);
                    ok = false;
                    NumberMatch::Any
                }
            },
        };
    }
    let from_s = m.choice(
        d,
        "from",
        &[
            ("local", CallSource::Local),
            ("device", CallSource::Device),
            ("trunk", CallSource::Trunk),
            ("any", CallSource::Any),
        ],
    );
    let mut from = from_s.as_ref().map_or(CallSource::Any, |f| f.v);
    let caller = match m.str(d, "caller") {
        Some(c) => {
            if from == CallSource::Trunk {
                err(d, &c, "only calls from local users have a `caller`; drop it or use `from = \"local\"`");
                ok = false;
            }
            if from != CallSource::Device {
                from = CallSource::Local;
            }
            let t = names.target(d, &c);
            ok &= t.is_some();
            t
        }
        None => None,
    };
    let did = match m.str(d, "did") {
        Some(s) => {
            if matches!(from, CallSource::Local | CallSource::Device) {
                err(d, &s, "only calls from trunks arrive on a DID; drop `did` or `caller`, or use `from = \"trunk\"`");
                ok = false;
            }
            from = CallSource::Trunk;
            if check_number(d, &s) && !names.dids.contains(&s.v.as_str()) {
                err(
                    d,
                    &s,
                    format!("`{}` is not listed in any trunk's `dids`", s.v),
                );
                ok = false;
            }
            Some(s.v)
        }
        None => None,
    };
    ok.then_some(Match {
        number,
        from,
        caller,
        did,
        time: None,
        mode: None,
    })
}

/// Whether every call matched by `later` is also matched by `earlier`
/// (conservative: `false` when unsure).
fn covers(earlier: &Match, later: &Match) -> bool {
    let from_ok = earlier.from == CallSource::Any
        || earlier.from == later.from
        || (earlier.from == CallSource::Local && later.from == CallSource::Device);
    let caller_ok = earlier.caller.is_none() || earlier.caller == later.caller;
    let did_ok = earlier.did.is_none() || earlier.did == later.did;
    // A time or mode condition matches only sometimes: it covers only the same condition.
    let time_ok = earlier.time.is_none() || earlier.time == later.time;
    let mode_ok = earlier.mode.is_none() || earlier.mode == later.mode;
    let number_ok = match (&earlier.number, &later.number) {
        (NumberMatch::Any, _) => true,
        (_, NumberMatch::Any) => false,
        (NumberMatch::Exact(a), NumberMatch::Exact(b)) => a == b,
        (NumberMatch::Prefix(p), NumberMatch::Exact(n) | NumberMatch::Prefix(n)) => {
            n.starts_with(p.as_str())
        }
        (NumberMatch::Prefix(p), NumberMatch::Pattern(pat)) => pat.implies_prefix(p),
        (NumberMatch::Pattern(p), NumberMatch::Exact(n)) => p.matches(n),
        (NumberMatch::Pattern(a), NumberMatch::Pattern(b)) => a.covers(b),
        (NumberMatch::Pattern(a), NumberMatch::Prefix(p)) => a.covers_prefix(p),
        _ => false,
    };
    from_ok && caller_ok && did_ok && time_ok && mode_ok && number_ok
}
