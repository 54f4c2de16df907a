//! Helpers for black-box tests: start the real `podpbx` binary on free loopback ports, talk to it
//! over UDP/TCP, and drive it with SIPp. Every process started here is stopped by PID on drop.

#![allow(dead_code)]

pub mod baresip;
pub mod dnsmasq;
pub mod kamailio;
pub mod netns;
pub mod phone;
pub mod ports;
pub mod tls;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use ports::free_ports;

/// The podpbx binary built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_podpbx");

/// Workspace root (tests/ lives directly under it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "podpbx-test-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A number unique in this test process (certificate serials).
pub fn unique_serial() -> u64 {
    (std::process::id() as u64) << 20 | unique()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An even port P for SIPp's `-mp` on `ip`, with P..P+3 free (SIPp takes P and P+1 for audio,
/// P+2 and P+3 for video) and P != `avoid` (the SIPp's own signalling port). The four ports are
/// handed out together: no other caller of [`free_ports`] in this process gets one of them.
pub fn free_media_port(ip: std::net::IpAddr, avoid: u16) -> u16 {
    loop {
        let p = free_ports(4, &[ip], false).expect("no four free media ports");
        if !(p..p + 4).contains(&avoid) {
            return p;
        }
    }
}

/// What SIPp's error log says when one of its sockets could not be bound (EADDRINUSE).
const SIPP_ADDR_IN_USE: &str = "errno = 98";

/// A port free for UDP and TCP on both 127.0.0.1 and ::1 right now.
pub fn free_port() -> u16 {
    let loopback = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    free_ports(1, &loopback, true).expect("no free port found")
}

/// A running podpbx process.
pub struct Pbx {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub log: PathBuf,
    /// The admin listener (`[admin] listen`); `0.0.0.0:0` when the config disables it.
    pub admin: SocketAddr,
}

impl Pbx {
    /// Starts podpbx with `extra` TOML appended to a loopback `[sip]` section on a free port.
    ///
    /// A port `free_port` found free can be taken before podpbx binds it: by an ephemeral
    /// socket of another test of the same binary running in parallel (`bind` to port 0 draws
    /// from the same range). Here the port is ours to choose, so a start that fails on an
    /// address in use is tried again on other ports (seen once in CI: `cannot bind UDP
    /// 127.0.0.1:45880: Address already in use`).
    pub fn start(extra: &str) -> Pbx {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "[sip]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\nport = {port}\ntransports = [\"udp\", \"tcp\"]\n{extra}"
            );
            match Pbx::try_start_with(Command::new(BIN), &config, port, "debug") {
                Ok(pbx) => return pbx,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port after 5 tries: {last}");
    }

    /// Starts podpbx with a complete config text (which must use `port`). Without an `[admin]`
    /// table one is appended with a free loopback port (the default 127.0.0.1:9060 would clash
    /// between tests running in parallel).
    pub fn start_with_config(config: &str, port: u16) -> Pbx {
        Pbx::start_with(Command::new(BIN), config, port, "debug")
    }

    /// Like [`Pbx::start_with_config`], inside network namespace `ns` (its admin listener, on
    /// the namespace's loopback, is reached from a thread that entered the namespace).
    pub fn start_in(ns: &netns::Netns, config: &str, port: u16) -> Pbx {
        Pbx::start_with(ns.command(BIN), config, port, "debug")
    }

    /// [`Pbx::start_with_config`] logging at `level` (`RUST_LOG`, at least `info`: readiness is
    /// seen in the log): load tests use `info`, as a debug line per message would measure the
    /// log writer.
    pub fn start_logging(config: &str, port: u16, level: &str) -> Pbx {
        Pbx::start_with(Command::new(BIN), config, port, level)
    }

    fn start_with(cmd: Command, config: &str, port: u16, level: &str) -> Pbx {
        Pbx::try_start_with(cmd, config, port, level).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(
        mut cmd: Command,
        config: &str,
        port: u16,
        level: &str,
    ) -> Result<Pbx, String> {
        let dir = TempDir::new("pbx");
        let cfg_path = dir.path().join("podpbx.toml");
        let mut config = config.replace("@DATA@", &dir.path().display().to_string());
        if !config.lines().any(|l| l.trim() == "[admin]") {
            let admin_port = std::iter::repeat_with(free_port)
                .find(|p| *p != port)
                .unwrap();
            config.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"));
        }
        // State (bindings, CDRs) goes to the test's own directory unless the config says otherwise.
        if !config.lines().any(|l| l.trim() == "[storage]") {
            config.push_str(&format!(
                "\n[storage]\ndata_dir = \"{}\"\n",
                dir.path().display()
            ));
        }
        let admin = admin_listen(&config);
        std::fs::write(&cfg_path, config).expect("write config");
        let log = dir.path().join("podpbx.log");
        let child = cmd
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn podpbx");
        let mut pbx = Pbx {
            child,
            port,
            dir,
            log,
            admin,
        };
        pbx.ready()?;
        Ok(pbx)
    }

    /// Kills the process hard (SIGKILL, no graceful stop) and starts it again on the same config
    /// and data directory, as a crashed or evicted pod restarts.
    pub fn restart_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.path().join(format!("podpbx-{}.log", unique()));
        self.child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.dir.path().join("podpbx.toml"))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("respawn podpbx");
        self.log = log;
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        if let Err(e) = self.ready() {
            panic!("{e}");
        }
    }

    fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.log_text().contains("podpbx ready") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "podpbx exited early ({status}):\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("podpbx not ready in time:\n{}", self.log_text()))
    }

    /// Everything podpbx logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn v4(&self) -> SocketAddr {
        SocketAddr::new("127.0.0.1".parse().unwrap(), self.port)
    }

    pub fn v6(&self) -> SocketAddr {
        SocketAddr::new("::1".parse().unwrap(), self.port)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Pbx {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A UDP client bound to loopback of the target's family.
pub struct UdpPeer {
    pub sock: UdpSocket,
}

impl UdpPeer {
    pub fn new(target: SocketAddr) -> UdpPeer {
        let bind: SocketAddr = if target.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .unwrap();
        let sock = UdpSocket::bind(bind).expect("bind udp peer");
        sock.connect(target).expect("connect udp peer");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        UdpPeer { sock }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, data: &[u8]) {
        self.sock.send(data).expect("udp send");
    }

    /// Next datagram, or None after the timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// Waits `d` and asserts nothing arrives.
    pub fn expect_silence(&self, d: Duration) {
        self.sock.set_read_timeout(Some(d)).unwrap();
        let got = self.recv();
        self.sock
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        assert!(
            got.is_none(),
            "expected no answer, got:\n{}",
            String::from_utf8_lossy(&got.unwrap())
        );
    }
}

/// Builds a request with the usual mandatory headers; `{local}` in `extra` is replaced.
pub fn request(
    method: &str,
    uri: &str,
    local: SocketAddr,
    transport: &str,
    branch: &str,
    extra: &str,
) -> String {
    let host = match local.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {host}:{port};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:test@{host}>;tag=t{branch}\r\n\
         To: <sip:pbx@{host}>\r\n\
         Call-ID: {branch}@test\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        port = local.port()
    )
}

/// The status code of a response.
pub fn status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    let line = text.lines().next().unwrap_or("");
    assert!(line.starts_with("SIP/2.0 "), "not a response: {line}");
    line[8..11].parse().expect("status code")
}

/// The first value of a header (case-insensitive name) in a message.
pub fn header(msg: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    text.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
}

/// A TCP client to the PBX.
pub fn tcp_connect(target: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    s
}

/// Reads one SIP message (headers + Content-Length body) from a stream.
pub fn tcp_read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
        if buf.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let len: usize = header(&buf, "Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    Some(buf)
}

pub fn tcp_send(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("tcp write");
}

/// Outcome of a SIPp run.
pub struct SippRun {
    pub ok: bool,
    pub output: String,
}

/// `-auth_uri` arguments for a SIPp run: the Request-URI of the scenario's authenticated
/// request, with `[service]`, `[remote_ip]` and `[remote_port]` filled in.
///
/// SIPp 3.6 puts `sip:<remote_ip>:<remote_port>` (IPv6 without brackets, no user part) in the
/// digest `uri` of its `[authentication]` header unless `-auth_uri` says otherwise, and podpbx
/// rejects credentials whose `uri` is not the Request-URI (RFC 3261 §22.4). Empty when the
/// scenario does not authenticate or `extra` already sets `-auth_uri`.
pub fn sipp_auth_uri(scenario: &Path, target: SocketAddr, extra: &[&str]) -> Vec<String> {
    if extra.contains(&"-auth_uri") {
        return Vec::new();
    }
    let Ok(text) = std::fs::read_to_string(scenario) else {
        return Vec::new();
    };
    let Some(auth_at) = text.find("[authentication") else {
        return Vec::new();
    };
    let Some(start) = text[..auth_at].rfind("<![CDATA[") else {
        return Vec::new();
    };
    let Some(uri) = text[start + 9..]
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| l.split_whitespace().nth(1))
    else {
        return Vec::new();
    };
    let service = extra
        .iter()
        .position(|a| *a == "-s")
        .and_then(|i| extra.get(i + 1))
        .copied()
        .unwrap_or("service");
    let ip = match target.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let uri = uri
        .replace("[service]", service)
        .replace("[remote_ip]", &ip)
        .replace("[remote_port]", &target.port().to_string());
    let uri = uri.strip_prefix("sip:").unwrap_or(&uri).to_string();
    vec!["-auth_uri".into(), uri]
}

/// Runs SIPp with `scenario` (a file under tests/sipp) against `target`, bounded in time.
pub fn sipp(scenario: &str, target: SocketAddr, transport: &str, extra: &[&str]) -> SippRun {
    sipp_for(scenario, target, transport, extra, Duration::from_secs(40))
}

/// [`sipp`] for a scenario that needs longer than 40 s (pass a larger `-timeout` in `extra`
/// too); it is killed after `limit`.
pub fn sipp_for(
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    extra: &[&str],
    limit: Duration,
) -> SippRun {
    // A SIPp that cannot bind a socket sends nothing and exits: start it again on other
    // ports rather than fail the test (as `Phone::start` does).
    let mut attempt = 1;
    loop {
        let run = sipp_once(scenario, target, transport, extra, limit);
        if run.ok || attempt == 3 || !run.output.contains(SIPP_ADDR_IN_USE) {
            return run;
        }
        attempt += 1;
    }
}

fn sipp_once(
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    extra: &[&str],
    limit: Duration,
) -> SippRun {
    let dir = TempDir::new("sipp");
    let local_ip = if target.is_ipv4() {
        "127.0.0.1".to_string()
    } else {
        "::1".to_string()
    };
    let target_s = match target {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let port = free_port().to_string();
    let scenario_path = root().join("tests/sipp").join(scenario);
    let mut cmd = Command::new("sipp");
    cmd.arg(&target_s)
        .arg("-sf")
        .arg(&scenario_path)
        .args([
            "-i", &local_ip, "-p", &port, "-t", transport, "-m", "1", "-nostdin",
        ])
        .args([
            "-timeout",
            "20s",
            "-timeout_error",
            "-max_recv_loops",
            "1000",
        ])
        .args(["-trace_err", "-trace_msg"])
        .args(sipp_auth_uri(&scenario_path, target, extra))
        .args(extra)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("run sipp (is the sip-tester package installed?)");
    let out = wait_output(child, limit);
    let mut output = out.1;
    for entry in std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            output.push_str(&format!("\n--- {} ---\n", p.display()));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            output.push_str(&tail);
        }
    }
    SippRun {
        ok: out.0 == Some(0),
        output,
    }
}

/// Waits for a child with a deadline (killing it by PID when exceeded); returns code and output.
pub fn wait_output(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    match child.wait_with_output() {
        Ok(o) => (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (None, e.to_string()),
    }
}

/// Kills (by PID) and reaps a child process when dropped, also on test failure.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `listen` address of the `[admin]` table in a config text; the built-in default when the
/// table or key is absent, `0.0.0.0:0` when disabled (`""`).
pub fn admin_listen(config: &str) -> SocketAddr {
    let mut in_admin = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_admin = line == "[admin]";
        } else if let Some(v) = line
            .strip_prefix("listen")
            .map(str::trim_start)
            .and_then(|l| l.strip_prefix('='))
        {
            if in_admin {
                return v
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
            }
        }
    }
    "127.0.0.1:9060".parse().unwrap()
}

/// One HTTP/1.1 exchange with `Connection: close`; returns status code and body
/// (status 0 when the connection failed).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &[])
}

/// [`http`] with extra header lines (e.g. `Authorization: Bearer ...`).
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// `GET path` on the admin listener.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path)
}

/// The value of one sample (`name` or `name{labels}` exactly as rendered) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.rsplit_once(' ')
            .filter(|(s, _)| *s == series)
            .and_then(|(_, v)| v.parse().ok())
    })
}

/// Runs `podpbx ctl ARGS...` (bounded in time); returns exit code, stdout and stderr.
pub fn ctl(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .arg("ctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podpbx ctl");
    let limit = Instant::now() + Duration::from_secs(40);
    let mut child = ChildGuard(child);
    while matches!(child.0.try_wait(), Ok(None)) && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.0.kill();
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let code = child.0.wait().ok().and_then(|s| s.code());
    (code, out, err)
}

/// A SIPp phone running in the background: it REGISTERs (digest) from its own port, then its
/// out-of-call scenario (`-oocsf`) handles the call podpbx sends there and logs `PHONE-OK`.
pub struct Phone {
    child: Option<ChildGuard>,
    pub dir: TempDir,
    pub port: u16,
    pub media_port: u16,
}

impl Phone {
    /// Starts `user`'s phone against `target` (UDP) with call flow `ooc` (a file under
    /// tests/sipp); returns once it is registered (bounded).
    pub fn start(
        target: SocketAddr,
        user: &str,
        password: &str,
        ooc: &str,
        extra: &[&str],
    ) -> Phone {
        // SIPp binds its media ports itself, after the check below: a port another test's process
        // took in between makes it fail with EADDRINUSE (seen once in CI: the video port, P+2).
        // Such a phone never ran, so it is started again on other ports; any other failure is
        // the test's.
        let mut attempt = 1;
        loop {
            match Phone::try_start(target, user, password, ooc, extra) {
                Ok(phone) => return phone,
                Err(logs) if attempt < 3 && logs.contains(SIPP_ADDR_IN_USE) => attempt += 1,
                Err(logs) => panic!("phone {user} did not register:\n{logs}"),
            }
        }
    }

    fn try_start(
        target: SocketAddr,
        user: &str,
        password: &str,
        ooc: &str,
        extra: &[&str],
    ) -> Result<Phone, String> {
        let dir = TempDir::new("phone");
        let local_ip = if target.is_ipv4() { "127.0.0.1" } else { "::1" };
        let target_s = match target {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let port = free_port();
        let media_port = free_media_port(local_ip.parse().expect("loopback"), port);
        let sipp_dir = root().join("tests/sipp");
        let child = Command::new("sipp")
            .arg(&target_s)
            .arg("-sf")
            .arg(sipp_dir.join("call_phone_register.xml"))
            .arg("-oocsf")
            .arg(sipp_dir.join(ooc))
            .args([
                "-i",
                local_ip,
                "-p",
                &port.to_string(),
                "-mp",
                &media_port.to_string(),
                "-t",
                "u1",
                "-m",
                "1",
            ])
            .args([
                "-s", user, "-au", user, "-ap", password, "-d", "25000", "-nostdin",
            ])
            .args(["-timeout", "30s", "-trace_logs", "-trace_err", "-trace_msg"])
            .args(sipp_auth_uri(
                &sipp_dir.join("call_phone_register.xml"),
                target,
                &[&["-s", user], extra].concat(),
            ))
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sipp (is the sip-tester package installed?)");
        let phone = Phone {
            child: Some(ChildGuard(child)),
            dir,
            port,
            media_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if phone.logs().contains("REGISTERED") {
                return Ok(phone);
            }
            if phone.logs().contains(SIPP_ADDR_IN_USE) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(phone.logs())
    }

    /// Everything SIPp wrote (logs, message trace, errors).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("\n--- {} ---\n", p.display()));
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        out
    }

    /// Waits (bounded by `limit`) until the call flow completed (`PHONE-OK`) or SIPp exited;
    /// returns whether the flow completed, and the logs.
    pub fn finish(mut self, limit: Duration) -> (bool, String) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.logs().contains("PHONE-OK") {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if matches!(c.0.try_wait(), Ok(Some(_))) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(self.child.take());
        let logs = self.logs();
        (logs.contains("PHONE-OK"), logs)
    }
}

/// The CDR lines (JSON objects) podpbx wrote to `file`, waiting (bounded) for at least `n`.
pub fn cdrs(file: &Path, n: usize, limit: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
