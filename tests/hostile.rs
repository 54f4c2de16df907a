//! Hostile traffic against the running binary, on loopback only, every loop bounded in count and
//! time:
//!
//! 1. a SIPVicious / "friendly-scanner" replay from 127.0.0.1: an OPTIONS sweep over many
//!    Request-URIs, INVITEs to external numbers without credentials, then a REGISTER brute force
//!    over many user names (each answered challenge is answered with a guessed password, as
//!    `svcrack` does). Afterwards no INVITE got anything but a refusal or a challenge, the source
//!    is blocked (silence) per `[security] max_auth_failures`, the process RSS grew by less than
//!    a few MB, and a phone on [::1] still registers;
//! 2. floods from 127.0.0.1 (garbage, INVITEs, REGISTERs, 20 000 datagrams within 10 s) while a
//!    registered phone on [::1] refreshes every 200 ms: every refresh must be answered within
//!    1 s (p50/p99 printed), and the process stays up and serving.
//!
//! The two tests share the machine's two cores with podpbx, so they run one at a time.

mod common;

use common::*;
use podpbx_sip::digest::DigestClient;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prints a report line and keeps it for `target/tmp/hostile.txt` (`cargo test` hides the
/// output of passing tests).
macro_rules! say {
    ($out:ident, $($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        $out.push_str(&line);
        $out.push('\n');
    }};
}

fn keep_report(name: &str, text: &str) {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::write(&p, text);
    println!("(report written to {})", p.display());
}

/// One hostile test at a time (each measures latency or memory of its own podpbx).
static SERIAL: Mutex<()> = Mutex::new(());

const CONFIG: &str = r#"
[security]
max_auth_failures = 20
failure_window_secs = 120
block_secs = 600

[[users]]
name = "1001"
password = "kitchen-1001-x7"

[[users]]
name = "1002"
password = "hall-1002-q9"
"#;

/// Starts podpbx like `Pbx::start` but logging at `info` (the production level): the debug
/// log of 20 000 flood messages would measure the log writer, not the signalling path.
fn start_pbx(extra: &str) -> Pbx {
    let port = free_port();
    let dir = TempDir::new("hostile");
    let admin_port = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .unwrap();
    let config = format!(
        "[sip]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\nport = {port}\ntransports = [\"udp\", \"tcp\"]\n{extra}\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[storage]\ndata_dir = \"{}\"\n",
        dir.path().display()
    );
    let cfg_path = dir.path().join("podpbx.toml");
    std::fs::write(&cfg_path, &config).unwrap();
    let log = dir.path().join("podpbx.log");
    let child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn podpbx");
    let mut pbx = Pbx {
        child,
        port,
        dir,
        log,
        admin: admin_listen(&config),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pbx.log_text().contains("podpbx ready") {
        assert!(pbx.alive(), "podpbx exited early:\n{}", pbx.log_text());
        assert!(
            Instant::now() < deadline,
            "podpbx not ready:\n{}",
            pbx.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pbx
}

/// Resident set size of a process, in kB (`VmRSS` of /proc/PID/status).
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

/// A request as scanners send them: unique branch/Call-ID, `User-Agent: friendly-scanner`.
#[allow(clippy::too_many_arguments)]
fn scanner_request(
    method: &str,
    ruri: &str,
    to: &str,
    local: SocketAddr,
    n: usize,
    extra: &str,
    body: &str,
) -> String {
    let h = host(local);
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {h}:{port};branch=z9hG4bK-scan-{n}-{method};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"sipvicious\" <sip:100@1.1.1.1>;tag=6134313236{n}\r\n\
         To: {to}\r\n\
         Call-ID: scan-{n}-{method}@{h}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:100@{h}:{port}>\r\n\
         User-Agent: friendly-scanner\r\n\
         Accept: application/sdp\r\n\
         {extra}{ct}\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        port = local.port()
    )
}

fn code_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse()
        .ok()
}

fn recv_timeout(sock: &UdpSocket, t: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(t)).unwrap();
    let mut buf = vec![0u8; 65536];
    sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// Responses to one request (matched by Call-ID) until a final one or `t` passes.
fn responses_for(sock: &UdpSocket, call_id: &str, t: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + t;
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(r) = recv_timeout(sock, left.max(Duration::from_millis(1))) else {
            break;
        };
        if header(&r, "Call-ID").as_deref() != Some(call_id) {
            continue;
        }
        let fin = code_of(&r).is_some_and(|c| c >= 200);
        got.push(r);
        if fin {
            break;
        }
    }
    got
}

/// A phone that registers with digest auth and measures each REGISTER's round trip.
struct Phone {
    sock: UdpSocket,
    target: SocketAddr,
    user: String,
    client: DigestClient,
    cseq: u32,
    call_id: String,
}

impl Phone {
    fn new(target: SocketAddr, user: &str, password: &str) -> Phone {
        let bind = if target.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let sock = UdpSocket::bind(bind).unwrap();
        sock.connect(target).unwrap();
        let call_id = format!("phone-{}-{}", user, sock.local_addr().unwrap().port());
        Phone {
            sock,
            target,
            user: user.into(),
            client: DigestClient::new(user, password, b"phone-seed".to_vec()),
            cseq: 0,
            call_id,
        }
    }

    fn request(&mut self, auth: Option<&str>) -> String {
        self.cseq += 1;
        let local = self.sock.local_addr().unwrap();
        let (h, th) = (host(local), host(self.target));
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{th} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {h}:{port};branch=z9hG4bK-phone-{cseq}-{port};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{th}>;tag=ph{port}\r\n\
             To: <sip:{user}@{th}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{h}:{port}>\r\n\
             Expires: 120\r\n\
             {auth}\
             Content-Length: 0\r\n\r\n",
            port = local.port(),
            cseq = self.cseq,
            user = self.user,
            cid = self.call_id
        )
    }

    /// One REGISTER round (answering one challenge if needed): final code and elapsed time,
    /// or `None` if no final answer came within `limit`.
    fn register(&mut self, limit: Duration) -> Option<(u16, Duration)> {
        let start = Instant::now();
        let uri = format!("sip:{}", host(self.target));
        let auth = self
            .client
            .current()
            .is_some()
            .then(|| self.client.authorization("REGISTER", &uri, b""))
            .flatten();
        let mut req = self.request(auth.as_deref());
        for _ in 0..3 {
            self.sock.send(req.as_bytes()).unwrap();
            let left = limit.checked_sub(start.elapsed())?;
            let resp = responses_for(&self.sock, &self.call_id.clone(), left).pop()?;
            let code = code_of(&resp)?;
            if code != 401 {
                return Some((code, start.elapsed()));
            }
            let challenge = header(&resp, "WWW-Authenticate")?;
            self.client.on_challenge(&[challenge]).ok()?;
            let auth = self.client.authorization("REGISTER", &uri, b"")?;
            req = self.request(Some(&auth));
        }
        None
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn metrics(pbx: &Pbx) -> String {
    http_get(pbx.admin, "/metrics").1
}

#[test]
fn scanner_replay_is_refused_then_blocked_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let pbx = start_pbx(CONFIG);
    let pid = pbx.child.id();
    // Warm up (first allocations of the runtime, registrar, metrics) before the baseline.
    let mut warm = Phone::new(pbx.v4(), "1002", "hall-1002-q9");
    assert_eq!(
        warm.register(Duration::from_secs(3)).map(|r| r.0),
        Some(200),
        "warm-up registration"
    );
    let _ = http_get(pbx.admin, "/metrics");
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kb(pid);
    let started = Instant::now();

    let scanner = UdpSocket::bind("127.0.0.1:0").unwrap();
    scanner.connect(pbx.v4()).unwrap();
    let local = scanner.local_addr().unwrap();
    let th = host(pbx.v4());

    // 1. OPTIONS sweep over 300 Request-URIs.
    let mut options_answered = 0;
    for n in 0..300 {
        let ruri = format!("sip:{}@{th}", 100 + n);
        let req = scanner_request("OPTIONS", &ruri, &format!("<{ruri}>"), local, n, "", "");
        scanner.send(req.as_bytes()).unwrap();
        let got = responses_for(
            &scanner,
            &format!("scan-{n}-OPTIONS@{}", host(local)),
            Duration::from_millis(500),
        );
        options_answered += usize::from(got.iter().any(|r| code_of(r).is_some_and(|c| c >= 200)));
    }

    // 2. INVITEs to external numbers without credentials.
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\n";
    let numbers = [
        "0049301234567",
        "+441632960123",
        "00972599123456",
        "9011441632960",
        "011447700900123",
        "+8613800138000",
        "1001",
        "900",
        "0",
        "*97",
    ];
    let mut invite_codes: Vec<(String, Vec<u16>)> = Vec::new();
    for (i, num) in numbers.iter().cycle().take(40).enumerate() {
        let n = 1000 + i;
        let ruri = format!("sip:{num}@{th}");
        let body = if i % 2 == 0 { sdp } else { "" };
        let req = scanner_request("INVITE", &ruri, &format!("<{ruri}>"), local, n, "", body);
        scanner.send(req.as_bytes()).unwrap();
        let got = responses_for(
            &scanner,
            &format!("scan-{n}-INVITE@{}", host(local)),
            Duration::from_millis(1500),
        );
        invite_codes.push((ruri, got.iter().filter_map(|r| code_of(r)).collect()));
    }

    // 3. REGISTER brute force: 200 attempts over 100 user names from the one source. Each
    //    attempt asks for a challenge and answers it with a guessed password; once the source is
    //    blocked the remaining attempts are sent without waiting (bounded in time either way).
    let mut answered = 0;
    let mut silent = 0;
    let mut blocked_at = None;
    let brute_deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0..200usize {
        if Instant::now() > brute_deadline {
            break;
        }
        let user = if attempt % 10 == 0 {
            "1001".to_string()
        } else {
            format!("{}", 2000 + attempt % 100)
        };
        let n = 5000 + attempt;
        let aor = format!("<sip:{user}@{th}>");
        let req = scanner_request("REGISTER", &format!("sip:{th}"), &aor, local, n, "", "");
        scanner.send(req.as_bytes()).unwrap();
        if blocked_at.is_some() {
            continue;
        }
        let cid = format!("scan-{n}-REGISTER@{}", host(local));
        let got = responses_for(&scanner, &cid, Duration::from_millis(500));
        let Some(challenge) = got.last().and_then(|r| header(r, "WWW-Authenticate")) else {
            silent += 1;
            blocked_at = Some(attempt);
            continue;
        };
        answered += 1;
        let mut cl = DigestClient::new(&user, format!("guess{attempt}"), b"svcrack".to_vec());
        cl.on_challenge(&[challenge]).expect("usable challenge");
        let auth = cl
            .authorization("REGISTER", &format!("sip:{th}"), b"")
            .unwrap();
        let req = scanner_request(
            "REGISTER",
            &format!("sip:{th}"),
            &aor,
            local,
            n + 100_000,
            &format!("Authorization: {auth}\r\n"),
            "",
        );
        scanner.send(req.as_bytes()).unwrap();
        let cid = format!("scan-{}-REGISTER@{}", n + 100_000, host(local));
        match responses_for(&scanner, &cid, Duration::from_millis(500))
            .last()
            .and_then(|r| code_of(r))
        {
            Some(code) => assert!(matches!(code, 401 | 403), "a guessed password got {code}"),
            None => {
                silent += 1;
                blocked_at = Some(attempt);
            }
        }
    }
    let scan_secs = started.elapsed().as_secs_f64();

    // The scanner's source is blocked now: silence even for OPTIONS.
    let req = scanner_request(
        "OPTIONS",
        &format!("sip:{th}"),
        &format!("<sip:{th}>"),
        local,
        99_999,
        "",
        "",
    );
    scanner.send(req.as_bytes()).unwrap();
    let after_block = responses_for(
        &scanner,
        &format!("scan-99999-OPTIONS@{}", host(local)),
        Duration::from_millis(700),
    );

    // Another source (IPv6 loopback) still registers.
    let mut phone = Phone::new(pbx.v6(), "1001", "kitchen-1001-x7");
    let reg = phone.register(Duration::from_secs(3));

    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_kb(pid);
    let m = metrics(&pbx);
    let blocked_sources = metric(&m, "podpbx_blocked_sources").unwrap_or(-1.0);
    let blocked_requests = metric(&m, "podpbx_sip_blocked_requests_total").unwrap_or(-1.0);

    say!(out, "scanner replay ({scan_secs:.1} s):");
    say!(out, "  OPTIONS sweep: {options_answered}/300 answered");
    for (ruri, codes) in invite_codes.iter().take(10) {
        say!(out, "  INVITE {ruri}: {codes:?}");
    }
    say!(out, "  REGISTER brute force: {answered} challenges answered with a guess, blocked at attempt {blocked_at:?} ({silent} unanswered)");
    say!(
        out,
        "  blocked source gets: {:?}",
        after_block
            .iter()
            .filter_map(|r| code_of(r))
            .collect::<Vec<_>>()
    );
    say!(out, "  metrics: podpbx_sip_blocked_requests_total {blocked_requests}, podpbx_blocked_sources {blocked_sources} (gauge not fed by the server yet)");
    say!(out, "  phone on [::1] after the attack: {reg:?}");
    say!(
        out,
        "  RSS before {rss_before} kB, after {rss_after} kB, growth {} kB",
        rss_after as i64 - rss_before as i64
    );

    keep_report("hostile-scanner.txt", &out);
    let mut pbx = pbx;
    assert!(pbx.alive(), "podpbx still running");
    assert!(
        options_answered >= 290,
        "the OPTIONS sweep is answered while not blocked: {options_answered}/300"
    );
    for (ruri, codes) in &invite_codes {
        assert!(!codes.is_empty(), "INVITE {ruri} got no answer at all");
        for c in codes {
            assert!(
                matches!(c, 401 | 403 | 404 | 407 | 501),
                "INVITE {ruri} from an unauthenticated scanner got {c} (all: {codes:?}): only 401/403/404/407 (501 without call control) are acceptable"
            );
        }
    }
    let blocked_at = blocked_at.expect("the brute-forcing source is blocked");
    // 20 failures allowed: the 20th guess (attempt 19) triggers the block.
    assert!(
        blocked_at <= 25,
        "blocked after about max_auth_failures = 20 guesses, not {blocked_at}"
    );
    assert!(after_block.is_empty(), "a blocked source gets silence");
    // `podpbx_blocked_sources` is printed but not asserted: the gauge is registered in
    // metrics.rs but nothing in the server sets it yet (it reads 0 while a source is blocked).
    assert!(
        blocked_requests >= 1.0,
        "dropped requests from the blocked source are counted"
    );
    assert_eq!(
        reg.map(|r| r.0),
        Some(200),
        "a phone on another source still registers"
    );
    let growth = rss_after as i64 - rss_before as i64;
    assert!(
        growth < 4 * 1024,
        "RSS grew by {growth} kB during the scan (before {rss_before} kB, after {rss_after} kB)"
    );
    assert!(!pbx.log_text().contains("panicked"));
}

/// Garbage of several shapes (never a parseable request).
fn garbage(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match i % 4 {
        0 => (0..(64 + next() % 1200) as usize)
            .map(|_| next() as u8)
            .collect(),
        1 => b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP \x00\xff\r\nFrom: <<<\r\n\r\n".to_vec(),
        2 => {
            let mut v = b"REGISTER sip:127.0.0.1 SIP/2.0\r\nContent-Length: 99999\r\n".to_vec();
            v.extend(std::iter::repeat_n(b'A', (next() % 1000) as usize));
            v
        }
        _ => b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bKbcast\r\n\r\n"
            .to_vec(),
    }
}

#[test]
fn floods_do_not_starve_a_registered_phone() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    // No brute-force block here: the flood must be absorbed by the signalling path itself.
    let pbx = start_pbx(&CONFIG.replace("max_auth_failures = 20", "max_auth_failures = 0"));
    let pid = pbx.child.id();
    let mut phone = Phone::new(pbx.v6(), "1001", "kitchen-1001-x7");
    assert_eq!(
        phone.register(Duration::from_secs(3)).map(|r| r.0),
        Some(200),
        "phone registered"
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kb(pid);
    let target = pbx.v4();

    const TOTAL: usize = 20_000;
    const RATE_PER_SEC: f64 = 5_000.0;
    let flood = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(target).unwrap();
        let local = sock.local_addr().unwrap();
        let th = host(target);
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        let mut sent = 0usize;
        let mut errors = 0usize;
        for i in 0..TOTAL {
            if start.elapsed() > limit {
                break;
            }
            let data = match i % 3 {
                0 => garbage(i),
                1 => scanner_request(
                    "INVITE",
                    &format!("sip:00{}@{th}", 4930_0000 + i),
                    &format!("<sip:00{i}@{th}>"),
                    local,
                    i,
                    "",
                    "",
                )
                .into_bytes(),
                _ => scanner_request(
                    "REGISTER",
                    &format!("sip:{th}"),
                    &format!("<sip:{}@{th}>", 3000 + i % 500),
                    local,
                    i,
                    "",
                    "",
                )
                .into_bytes(),
            };
            match sock.send(&data) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
            // Pace to RATE_PER_SEC so the burst takes ~4 s, well inside the 10 s bound.
            if i % 50 == 0 {
                let due = Duration::from_secs_f64(i as f64 / RATE_PER_SEC);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        (sent, errors, start.elapsed())
    });

    // The phone refreshes every 200 ms during the flood and a little after it.
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let t0 = Instant::now();
    let mut refreshes = 0;
    while t0.elapsed() < Duration::from_secs(6) && refreshes < 40 {
        refreshes += 1;
        match phone.register(Duration::from_secs(1)) {
            Some((200, d)) => latencies.push(d),
            other => failures.push(format!(
                "refresh {refreshes} at {:?}: {other:?}",
                t0.elapsed()
            )),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (sent, errors, flood_time) = flood.join().unwrap();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );

    // Still serving after the flood, from a fresh source.
    let peer = UdpPeer::new(pbx.v4());
    peer.send(
        request(
            "OPTIONS",
            "sip:127.0.0.1",
            peer.local(),
            "UDP",
            "z9hG4bKafterflood",
            "",
        )
        .as_bytes(),
    );
    let after = peer.recv();
    std::thread::sleep(Duration::from_millis(200));
    let rss_after = rss_kb(pid);
    let m = metrics(&pbx);
    let get = |s: &str| metric(&m, s).unwrap_or(-1.0);

    say!(
        out,
        "flood: {sent} datagrams sent in {:.2} s ({errors} send errors) from 127.0.0.1",
        flood_time.as_secs_f64()
    );
    say!(
        out,
        "  podpbx: messages_in {}, messages_out {}, bad_requests {}, dropped_malformed {}, stray_responses {}",
        get("podpbx_sip_messages_in_total"),
        get("podpbx_sip_messages_out_total"),
        get("podpbx_sip_bad_requests_total"),
        get("podpbx_sip_dropped_malformed_total"),
        get("podpbx_sip_stray_responses_total")
    );
    say!(
        out,
        "  phone REGISTER refreshes from [::1]: {} answered 200, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        failures.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    say!(out, "  RSS before {rss_before} kB, after {rss_after} kB ({} open transactions from the flood hold their responses for 32 s)", TOTAL * 2 / 3);

    keep_report("hostile-flood.txt", &out);
    let mut pbx = pbx;
    assert!(pbx.alive(), "podpbx survived the flood");
    assert!(
        sent >= TOTAL * 9 / 10,
        "the flood was sent ({sent}/{TOTAL})"
    );
    assert!(flood_time <= Duration::from_secs(11), "bounded burst");
    assert!(
        failures.is_empty(),
        "every refresh answered 200 within 1 s:\n{}",
        failures.join("\n")
    );
    assert!(
        latencies.len() >= 10,
        "enough refreshes measured: {}",
        latencies.len()
    );
    assert!(max < Duration::from_secs(1));
    assert_eq!(
        after.as_deref().and_then(code_of),
        Some(200),
        "OPTIONS answered after the flood"
    );
    // Not a leak check (the flood's INVITE/REGISTER transactions live for 64*T1), only a bound.
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS after the flood: {rss_after} kB (before {rss_before} kB)"
    );
    assert!(!pbx.log_text().contains("panicked"));
}
