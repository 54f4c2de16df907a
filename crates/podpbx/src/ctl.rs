//! `podpbx ctl`: asks a running podpbx over its admin listener (see `admin.rs`) and prints
//! readable tables. A plain blocking HTTP/1.1 client: one request per connection.
//! `ctl health` and `ctl ready` are exec probes: exit 0 when `/healthz` or `/readyz` answers 200.

use podpbx_config::Config;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Usage of `podpbx ctl`.
pub const USAGE: &str =
    "usage: podpbx ctl [--admin ADDR | --config FILE] [--token-file FILE] [--json] COMMAND
  COMMAND           registrations, calls, trunks, subscriptions, features, reload or
                    status (the API); mode NAME on|off, dnd USER on|off,
                    forward USER always|busy|no-answer TARGET|off (run-time switches);
                    greeting USER FILE.wav|--remove (with --config: a user's own
                    voicemail greeting, validated); or
                    health or ready: exit 0 when /healthz or /readyz answers 200 (exec probes)
  --admin ADDR      the listener to ask, e.g. 127.0.0.1:9060 or [::1]:9060
  --config FILE     take the address and the token from FILE's [admin] section (health and
                    ready ask its health_listen when there is one)
  --token-file FILE the API's bearer token ([admin] token_file)
  --json            print the raw JSON answer
  (default address: 127.0.0.1:9060, the built-in [admin] listen)";

const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9060);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than the server's reload timeout, so its answer (even a 504) arrives.
const READ_TIMEOUT: Duration = Duration::from_secs(25);
/// For `health` and `ready`: the server answers `/healthz` within 1 s; below a probe's timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// What `ctl` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Registrations,
    Calls,
    Trunks,
    Subscriptions,
    Features,
    /// `mode NAME on|off`, `dnd USER on|off`, `forward USER always|busy|no-answer TARGET|off`.
    Set,
    /// `greeting USER FILE.wav | USER --remove` (with `--config`: written to the voicemail folder).
    Greeting,
    Reload,
    Status,
    Health,
    Ready,
}

impl What {
    /// `health` and `ready`: unauthenticated probes, answered by the health listener if any.
    fn is_probe(self) -> bool {
        matches!(self, What::Health | What::Ready)
    }
}

/// Where the admin listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Config(PathBuf),
    Default,
}

/// Parsed `ctl` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub target: Target,
    pub what: What,
    pub json: bool,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// The words of a `mode`/`dnd`/`forward` command.
    pub set_args: Vec<String>,
}

/// Parses the arguments after `ctl`.
pub fn parse(args: &[String]) -> Result<Opts, String> {
    let mut target = Target::Default;
    let mut what = None;
    let mut json = false;
    let mut token_file = None;
    let mut set_args: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let set = |target: &mut Target, t: Target| {
            if *target != Target::Default {
                return Err("give either --admin or --config, once".to_string());
            }
            *target = t;
            Ok(())
        };
        match arg.as_str() {
            "--admin" | "-a" => {
                let v = it
                    .next()
                    .ok_or("--admin needs an address, e.g. 127.0.0.1:9060")?;
                let addr = v.parse().map_err(|_| {
                    format!(
                        "--admin: `{v}` is not an address:port, e.g. 127.0.0.1:9060 or [::1]:9060"
                    )
                })?;
                set(&mut target, Target::Addr(addr))?;
            }
            "--config" | "-c" => {
                let v = it.next().ok_or("--config needs a file")?;
                set(&mut target, Target::Config(PathBuf::from(v)))?;
            }
            "--token-file" => {
                let v = it.next().ok_or("--token-file needs a file")?;
                if token_file.replace(PathBuf::from(v)).is_some() {
                    return Err("give --token-file once".into());
                }
            }
            "--json" => json = true,
            w => {
                let w = match w {
                    "registrations" | "regs" => What::Registrations,
                    "calls" => What::Calls,
                    "trunks" => What::Trunks,
                    "subscriptions" | "subs" => What::Subscriptions,
                    "features" => What::Features,
                    "mode" | "dnd" | "forward" if what.is_none() => {
                        set_args.push(w.to_string());
                        what = Some(What::Set);
                        continue;
                    }
                    _ if what == Some(What::Set) => {
                        set_args.push(w.to_string());
                        continue;
                    }
                    "greeting" if what.is_none() => {
                        what = Some(What::Greeting);
                        continue;
                    }
                    _ if what == Some(What::Greeting) => {
                        set_args.push(w.to_string());
                        continue;
                    }
                    "reload" => What::Reload,
                    "status" => What::Status,
                    "health" => What::Health,
                    "ready" => What::Ready,
                    other => return Err(format!("unknown ctl command or option `{other}`")),
                };
                if what.replace(w).is_some() {
                    return Err("give one command".into());
                }
            }
        }
    }
    let what = what.ok_or(
        "which one: registrations, calls, trunks, subscriptions, reload, status, health or ready?",
    )?;
    if what == What::Greeting && set_args.len() != 2 {
        return Err("usage: greeting USER FILE.wav (8 kHz mono WAV, at most 60 s), or greeting USER --remove".into());
    }
    if what == What::Set {
        let ok = match set_args.first().map(String::as_str) {
            Some("mode") | Some("dnd") => set_args.len() == 3,
            Some("forward") => set_args.len() == 4 || (set_args.len() == 3 && set_args[2] == "off"),
            _ => false,
        };
        if !ok {
            return Err("usage: mode NAME on|off, dnd USER on|off, forward USER always|busy|no-answer TARGET|off, forward USER off".into());
        }
    }
    Ok(Opts {
        target,
        what,
        json,
        token_file,
        set_args,
    })
}

/// `podpbx ctl ...`: 0 on success, 1 when podpbx cannot be asked or refuses, 2 on usage errors.
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("podpbx ctl: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podpbx ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Opts) -> Result<String, String> {
    if opts.what == What::Greeting {
        return greeting(opts);
    }
    let Endpoint {
        addr,
        mut token,
        health,
    } = resolve(&opts.target)?;
    let (method, path) = match opts.what {
        What::Registrations => ("GET", "/api/registrations"),
        What::Calls => ("GET", "/api/calls"),
        What::Trunks => ("GET", "/api/trunks"),
        What::Subscriptions => ("GET", "/api/subscriptions"),
        What::Features => ("GET", "/api/features"),
        What::Set => ("POST", ""),
        What::Greeting => ("PUT", ""),
        What::Reload => ("POST", "/api/reload"),
        What::Status => ("GET", "/api/status"),
        What::Health => ("GET", "/healthz"),
        What::Ready => ("GET", "/readyz"),
    };
    if opts.what.is_probe() {
        let addr = health.unwrap_or(addr);
        let (code, body) = request(addr, method, path, None, PROBE_TIMEOUT)?;
        let text = first_line(&body);
        return if code == 200 {
            Ok(format!("{text}\n"))
        } else {
            Err(format!("{addr}{path} answered {code}: {text}"))
        };
    }
    if let Some(path) = &opts.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let t = podpbx_config::check_admin_token(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        token = Some(t.to_string());
    }
    let set_path = format!("/api/set/{}", opts.set_args.join("/"));
    let path = if opts.what == What::Set {
        set_path.as_str()
    } else {
        path
    };
    let (code, body) = request(addr, method, path, token.as_deref(), READ_TIMEOUT)?;
    let v: Value = serde_json::from_str(&body).map_err(|_| {
        format!("{addr} answered {code} with something that is not JSON (is that a podpbx admin listener?): {}", first_line(&body))
    })?;
    if code != 200 {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        let hint = match (code, token.is_some()) {
            (401, false) => " (give the token: --config with [admin] token_file, or --token-file)",
            _ => "",
        };
        return Err(format!("podpbx at {addr} answered {code}: {msg}{hint}"));
    }
    if opts.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    }
    Ok(match opts.what {
        What::Status => render_status(&v, addr),
        What::Reload => format!(
            "reloaded: {}\n",
            v.get("message").and_then(Value::as_str).unwrap_or("ok")
        ),
        What::Registrations => render_items(&v, REGISTRATIONS, "registrations"),
        What::Calls => render_items(&v, CALLS, "calls"),
        What::Trunks => render_items(&v, TRUNKS, "trunks"),
        What::Subscriptions => render_items(&v, SUBSCRIPTIONS, "subscriptions"),
        What::Features => render_features(&v),
        What::Set => format!(
            "{}\n",
            v.get("message").and_then(Value::as_str).unwrap_or("ok")
        ),
        What::Greeting => String::new(),
        // Answered above, before the JSON parsing: their bodies are text.
        What::Health | What::Ready => format!("{}\n", first_line(&body)),
    })
}

/// Where and how to ask.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The admin listener.
    pub addr: SocketAddr,
    /// The API's bearer token (from the config's `[admin] token_file`).
    pub token: Option<String>,
    /// The health listener (`[admin] health_listen`), for `health` and `ready`.
    pub health: Option<SocketAddr>,
}

/// The admin address: `--admin`, the config's `[admin]` section (a wildcard listen is asked on
/// loopback), or the default.
pub fn resolve(target: &Target) -> Result<Endpoint, String> {
    let plain = |addr| Endpoint {
        addr,
        token: None,
        health: None,
    };
    match target {
        Target::Addr(a) => Ok(plain(*a)),
        Target::Default => Ok(plain(DEFAULT_ADMIN)),
        Target::Config(path) => {
            let cfg = Config::load(path).map_err(|e| e.to_string())?;
            let health = cfg.admin.health_listen.map(local);
            let Some(a) = cfg.admin.listen.map(local).or(health) else {
                return Err(format!(
                    "the admin listener is disabled in {} ([admin] listen = \"\")",
                    path.display()
                ));
            };
            Ok(Endpoint {
                addr: a,
                token: cfg.admin.token.map(|t| t.expose().to_string()),
                health,
            })
        }
    }
}

/// A listen address to connect to: a wildcard is asked on loopback.
fn local(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
    }
    a
}

/// One HTTP exchange; returns the status code and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let unreachable = |e: std::io::Error| {
        format!("cannot reach the podpbx admin listener at {addr}: {e} (is podpbx running, with [admin] listen = \"{addr}\"?)")
    };
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(unreachable)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: podpbx-ctl/{}\r\nAccept: application/json\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    parse_response(&raw).ok_or_else(|| {
        format!(
            "{addr} did not answer with HTTP: {}",
            first_line(&String::from_utf8_lossy(&raw))
        )
    })
}

/// Splits an HTTP/1.x answer into status code and body (honouring `Content-Length` when given).
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let mut parts = status.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    let mut body = &raw[split + 4..];
    let len = lines.find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(len) = len {
        body = body.get(..len)?;
    }
    Some((code, String::from_utf8_lossy(body).into_owned()))
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return "(empty)".into();
    }
    line.chars().take(120).collect()
}

fn render_status(v: &Value, addr: SocketAddr) -> String {
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let num = |k: &str| v.get(k).and_then(Value::as_i64);
    let list = |v: Option<&Value>| {
        let items: Vec<String> = v
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let state = if v.get("shutting_down").and_then(Value::as_bool) == Some(true) {
        "shutting down".to_string()
    } else if v.get("ready").and_then(Value::as_bool) == Some(true) {
        "ready".to_string()
    } else {
        format!(
            "not ready: {}",
            list(v.get("not_ready")).replace(", ", "; ")
        )
    };
    let counters = v.get("counters");
    let counter = |k: &str| {
        counters
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
            .map_or("?".to_string(), |n| n.to_string())
    };
    let pid = num("pid").map_or("?".to_string(), |p| p.to_string());
    let mut out = format!("podpbx {} (pid {pid}) at {addr}\n", str_of("version"));
    let rows = [
        ("state", state),
        (
            "uptime",
            num("uptime_secs").map_or("?".into(), fmt_duration),
        ),
        ("sip udp", list(v.pointer("/sip/udp"))),
        ("sip tcp", list(v.pointer("/sip/tcp"))),
        (
            "registrations",
            num("registrations").map_or("?".into(), |n| n.to_string()),
        ),
        (
            "calls active",
            num("calls_active").map_or("?".into(), |n| n.to_string()),
        ),
        (
            "sip messages",
            format!(
                "{} in, {} out",
                counter("sip_messages_in"),
                counter("sip_messages_out")
            ),
        ),
        (
            "sip rejected",
            format!(
                "{} bad requests, {} malformed dropped, {} stray responses",
                counter("sip_bad_requests"),
                counter("sip_dropped_malformed"),
                counter("sip_stray_responses")
            ),
        ),
    ];
    for (k, val) in rows {
        out.push_str(&format!("{:<15}{val}\n", format!("{k}:")));
    }
    out
}

/// A column: header and how to get its cell from an item (`now` = the server's unix time).
type Column = (&'static str, fn(&Value, i64) -> String);

const REGISTRATIONS: &[Column] = &[
    ("USER", |v, _| text(v, "user")),
    ("CONTACT", |v, _| text(v, "contact")),
    ("FLOW", |v, _| text(v, "flow")),
    ("EXPIRES IN", |v, now| {
        match (num(v, "expires_in"), num(v, "expires_at")) {
            (Some(s), _) => remaining(s),
            (None, Some(at)) => remaining(at - now),
            _ => "-".into(),
        }
    }),
];

/// `ctl greeting USER FILE.wav`: validates the WAV (8 kHz mono PCM/A-law/µ-law, at most 60 s)
/// and stores it as the user's own greeting in the configuration's voicemail folder, where the
/// running podpbx reads it for the next call (`--remove`: back to the default greeting).
fn greeting(opts: &Opts) -> Result<String, String> {
    let Target::Config(path) = &opts.target else {
        return Err(
            "greeting needs --config FILE: the voicemail folder is in the configuration".into(),
        );
    };
    let cfg = podpbx_config::Config::load(path).map_err(|e| e.to_string())?;
    let (user, file) = (&opts.set_args[0], &opts.set_args[1]);
    if cfg.mailbox(user).is_none() {
        return Err(format!("user `{user}` has no mailbox (voicemail = true)"));
    }
    let root = &cfg.voicemail.dir;
    if file == "--remove" {
        return match podpbx_voicemail::store::delete_greeting(root, user) {
            Ok(true) => Ok(format!(
                "own greeting of {user} removed: the default one plays\n"
            )),
            Ok(false) => Ok(format!("{user} had no own greeting\n")),
            Err(e) => Err(format!("cannot remove the greeting: {e}")),
        };
    }
    let max = podpbx_voicemail::store::MAX_GREETING_BYTES as u64;
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{file}: {e}"))?
        .len();
    if len > max {
        return Err(format!(
            "{file}: {len} bytes, at most {max} are accepted (60 s of 8 kHz 16-bit mono)"
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    match podpbx_voicemail::store::write_greeting(root, user, &bytes) {
        Ok(d) => Ok(format!(
            "greeting of {user} stored ({:.1} s)\n",
            d.as_secs_f64()
        )),
        Err(e) => Err(format!("{file}: {e}")),
    }
}

/// `ctl features`: forwarding and DND per user, then the modes.
fn render_features(v: &Value) -> String {
    let state = v.get("items").unwrap_or(v);
    let mut out = String::new();
    let users: Vec<Value> = state
        .get("users")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(u, f)| {
                    let mut f = f.clone();
                    f["user"] = Value::String(u.clone());
                    f
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&render_items(
        &serde_json::json!({ "items": users }),
        FEATURES,
        "users",
    ));
    if let Some(m) = state
        .get("modes")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        out.push('\n');
        let modes: Vec<Value> = m
            .iter()
            .map(|(n, on)| serde_json::json!({ "mode": n, "state": if on.as_bool() == Some(true) { "on" } else { "off" } }))
            .collect();
        out.push_str(&render_items(
            &serde_json::json!({ "items": modes }),
            MODES,
            "modes",
        ));
    }
    out
}

const FEATURES: &[Column] = &[
    ("USER", |v, _| text(v, "user")),
    ("DND", |v, _| {
        if v.get("dnd").and_then(Value::as_bool) == Some(true) {
            "on".into()
        } else {
            "-".into()
        }
    }),
    ("FORWARD ALWAYS", |v, _| text(v, "always")),
    ("BUSY", |v, _| text(v, "busy")),
    ("NO ANSWER", |v, _| {
        match (
            v.get("no_answer").and_then(Value::as_str),
            num(v, "no_answer_secs"),
        ) {
            (Some(t), Some(s)) => format!("{t} after {s} s"),
            _ => "-".into(),
        }
    }),
];

const MODES: &[Column] = &[
    ("MODE", |v, _| text(v, "mode")),
    ("STATE", |v, _| text(v, "state")),
];

const SUBSCRIPTIONS: &[Column] = &[
    ("SUBSCRIBER", |v, _| text(v, "subscriber")),
    ("RESOURCE", |v, _| text(v, "resource")),
    ("EVENT", |v, _| text(v, "package")),
    ("SOURCE", |v, _| text(v, "source")),
    ("EXPIRES IN", |v, _| {
        num(v, "expires_in").map_or("-".into(), remaining)
    }),
];

const CALLS: &[Column] = &[
    ("ID", |v, _| text(v, "id")),
    ("FROM", |v, _| text(v, "from")),
    ("TO", |v, _| text(v, "to")),
    ("STATE", |v, _| text(v, "state")),
    ("DURATION", |v, now| {
        match (num(v, "duration_secs"), num(v, "started_at")) {
            (Some(d), _) => fmt_duration(d),
            (None, Some(at)) => fmt_duration(now - at),
            _ => "-".into(),
        }
    }),
];

const TRUNKS: &[Column] = &[
    ("NAME", |v, _| text(v, "name")),
    ("STATE", |v, _| text(v, "state")),
    ("SERVER", |v, _| text(v, "server")),
    ("LAST ERROR", |v, _| text(v, "last_error")),
    ("NEXT ATTEMPT", |v, now| {
        match (num(v, "next_attempt_in"), num(v, "next_attempt_at")) {
            (Some(s), _) => format!("in {}", fmt_duration(s)),
            (None, Some(at)) if at <= now => "now".into(),
            (None, Some(at)) => format!("in {}", fmt_duration(at - now)),
            _ => "-".into(),
        }
    }),
];

fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.chars().filter(|c| !c.is_control()).collect(),
        Some(other) => other.to_string(),
    }
}

fn num(v: &Value, k: &str) -> Option<i64> {
    v.get(k)
        .and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
}

fn remaining(secs: i64) -> String {
    if secs <= 0 {
        "expired".into()
    } else {
        fmt_duration(secs)
    }
}

/// `45s`, `3m 07s`, `2h 05m`, `3d 04h`.
pub fn fmt_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A table of `{"now": .., "items": [..]}` with `columns`; `(no <what>)` when empty.
fn render_items(v: &Value, columns: &[Column], what: &str) -> String {
    let now = v.get("now").and_then(Value::as_i64).unwrap_or(0);
    let items: Vec<&Value> = match v.get("items") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    };
    if items.is_empty() {
        return format!("(no {what})\n");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| columns.iter().map(|(_, f)| f(it, now)).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments_parse_in_any_order() {
        let o = parse(&args("--admin [::1]:9070 status")).expect("ok");
        assert_eq!(
            o,
            Opts {
                target: Target::Addr("[::1]:9070".parse().expect("addr")),
                what: What::Status,
                json: false,
                token_file: None,
                set_args: Vec::new(),
            }
        );
        let o = parse(&args("trunks --json --config /etc/podpbx.toml")).expect("ok");
        assert_eq!(
            o,
            Opts {
                target: Target::Config("/etc/podpbx.toml".into()),
                what: What::Trunks,
                json: true,
                token_file: None,
                set_args: Vec::new(),
            }
        );
        let o = parse(&args("--token-file /run/t --admin 127.0.0.1:1 health")).expect("ok");
        assert_eq!(
            (o.what, o.token_file),
            (What::Health, Some(PathBuf::from("/run/t")))
        );
        assert_eq!(parse(&args("ready")).expect("ok").what, What::Ready);
        assert_eq!(parse(&args("regs")).expect("ok").what, What::Registrations);
        assert_eq!(parse(&args("reload")).expect("ok").target, Target::Default);
        for bad in [
            "",
            "status calls",
            "--admin",
            "--admin localhost status",
            "--admin 1.2.3.4:1 --config x status",
            "frobnicate",
            "--token-file",
            "--token-file a --token-file b status",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_target_uses_admin_listen_and_loopback_for_wildcards() {
        let dir = std::env::temp_dir().join(format!("podpbx-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "ctl-test-token-0123456789\n").expect("write");
        let write = |name: &str, admin: &str| {
            let p = dir.join(name);
            std::fs::write(
                &p,
                format!("[sip]\nipv4 = \"127.0.0.1\"\nport = 5060\n[admin]\n{admin}\n"),
            )
            .expect("write");
            Target::Config(p)
        };
        let at = |a: &str| a.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            resolve(&write("a.toml", "listen = \"127.0.0.1:9111\"")),
            Ok(Endpoint {
                addr: at("127.0.0.1:9111"),
                token: None,
                health: None
            })
        );
        assert_eq!(
            resolve(&write(
                "b.toml",
                &format!(
                    "listen = \"[::]:9112\"\ntoken_file = \"{}\"\nhealth_listen = \"0.0.0.0:9113\"",
                    token.display()
                )
            )),
            Ok(Endpoint {
                addr: at("[::1]:9112"),
                token: Some("ctl-test-token-0123456789".into()),
                health: Some(at("127.0.0.1:9113"))
            })
        );
        // Only a health listener: probes still work.
        assert_eq!(
            resolve(&write(
                "d.toml",
                "listen = \"\"\nhealth_listen = \"[::1]:9114\""
            )),
            Ok(Endpoint {
                addr: at("[::1]:9114"),
                token: None,
                health: Some(at("[::1]:9114"))
            })
        );
        assert!(resolve(&write("c.toml", "listen = \"\"")).is_err_and(|e| e.contains("disabled")));
        assert!(resolve(&Target::Config(dir.join("missing.toml"))).is_err());
        assert_eq!(resolve(&Target::Default).map(|e| e.addr), Ok(DEFAULT_ADMIN));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn responses_parse_with_and_without_length() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_response(r), Some((503, "abc".into())));
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\n{}"),
            Some((200, "{}".into()))
        );
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nshort"),
            None
        );
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn tables_align_and_compute_relative_times() {
        let v = json!({"now": 1000, "items": [
            {"user": "1001", "contact": "sip:1001@[2001:db8::5]:5060", "flow": "udp [2001:db8::5]:5060", "expires_at": 1300},
            {"user": "doorbell", "contact": "sip:door@192.0.2.7", "flow": "udp 192.0.2.7:5060", "expires_in": 4000},
            {"user": "old", "contact": "sip:x@192.0.2.8", "expires_at": 900},
        ]});
        let t = render_items(&v, REGISTRATIONS, "registrations");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "USER      CONTACT                      FLOW                    EXPIRES IN"
        );
        assert_eq!(
            lines[1],
            "1001      sip:1001@[2001:db8::5]:5060  udp [2001:db8::5]:5060  5m 00s"
        );
        assert_eq!(
            lines[2],
            "doorbell  sip:door@192.0.2.7           udp 192.0.2.7:5060      1h 06m"
        );
        assert_eq!(
            lines[3],
            "old       sip:x@192.0.2.8              -                       expired"
        );
        assert_eq!(
            render_items(&serde_json::json!({"now": 1, "items": []}), CALLS, "calls"),
            "(no calls)\n"
        );

        let v = json!({"now": 1000, "items": [
            {"name": "sipgate", "state": "failed", "server": "[2001:db8::5]:5060", "last_error": "403 Forbidden", "next_attempt_at": 1060},
            {"name": "backup", "state": "registered", "last_error": null, "next_attempt_at": 990},
            {"name": "srv", "state": "unresolved", "server": null, "last_error": "DNS: sip.example.net has no AAAA record", "next_attempt_at": 1004},
        ]});
        let t = render_items(&v, TRUNKS, "trunks");
        assert!(
            t.contains("sipgate  failed      [2001:db8::5]:5060  403 Forbidden                            in 1m 00s\n"),
            "{t}"
        );
        assert!(
            t.contains("backup   registered  -                   -                                        now\n"),
            "{t}"
        );
        assert!(
            t.contains("srv      unresolved  -                   DNS: sip.example.net has no AAAA record  in 4s\n"),
            "{t}"
        );
        let v = json!({"now": 100, "items": [{"id": "c1", "from": "1001", "to": "+4930123", "state": "answered", "started_at": 40}]});
        assert!(
            render_items(&v, CALLS, "calls").ends_with("c1  1001  +4930123  answered  1m 00s\n")
        );
    }

    #[test]
    fn status_reads_well() {
        let v = json!({"version": "0.1.0", "pid": 42, "uptime_secs": 3725, "ready": false, "not_ready": ["trunk p is not registered"],
            "shutting_down": false, "sip": {"udp": ["127.0.0.1:5060", "[::1]:5060"], "tcp": []},
            "registrations": 2, "calls_active": 0, "counters": {"sip_messages_in": 7, "sip_messages_out": 6}});
        let t = render_status(&v, "127.0.0.1:9060".parse().expect("addr"));
        assert!(
            t.starts_with("podpbx 0.1.0 (pid 42) at 127.0.0.1:9060\n"),
            "{t}"
        );
        assert!(
            t.contains("state:         not ready: trunk p is not registered\n"),
            "{t}"
        );
        assert!(t.contains("uptime:        1h 02m\n"), "{t}");
        assert!(
            t.contains("sip udp:       127.0.0.1:5060, [::1]:5060\nsip tcp:       -\n"),
            "{t}"
        );
        assert!(t.contains("sip messages:  7 in, 6 out\n"), "{t}");
        assert_eq!(fmt_duration(59), "59s");
        assert_eq!(fmt_duration(61), "1m 01s");
        assert_eq!(fmt_duration(90_000), "1d 01h");
    }

    #[test]
    fn unreachable_listener_is_a_clear_error() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let opts = Opts {
            target: Target::Addr(SocketAddr::from(([127, 0, 0, 1], port))),
            what: What::Status,
            json: false,
            token_file: None,
            set_args: Vec::new(),
        };
        let e = run(&opts).expect_err("nothing listens");
        assert!(
            e.starts_with(&format!(
                "cannot reach the podpbx admin listener at 127.0.0.1:{port}"
            )),
            "{e}"
        );
    }
}
