//! Real softphones for end-to-end tests: baresip (Debian package `baresip-core`, v1.0) run
//! headless inside a network namespace.
//!
//! * Audio: no sound hardware. The source is the `aufile` module playing a WAV (8 kHz mono
//!   16-bit, e.g. a test tone); the player is ALSA's `null` device (alsa-lib's built-in PCM that
//!   discards everything). What the phone receives is recorded by the `sndfile` audio filter:
//!   one `dump-<time>-dec.wav` (decoded, i.e. heard) and one `...-enc.wav` (sent) per call, in the
//!   instance's `rec/` directory.
//! * Codec: G.711 only (`g711` module, `audio_codecs=pcmu` on the account).
//! * Control: the `ctrl_tcp` module (netstring-framed JSON on a loopback TCP port inside the
//!   namespace) with the `menu` module's commands (`dial`, `accept`, `hangup`). The same
//!   connection delivers every UA event (`CALL_INCOMING`, `CALL_ESTABLISHED`, `CALL_CLOSED`, ...),
//!   which a reader thread collects.
//! * Addresses: SIP on `sip_listen`; RTP on the first address of `net_interface` (baresip takes
//!   its media address from one interface, so two phones sharing a namespace need an interface
//!   each).
//!
//! `PODPBX_E2E_SIP_TRACE=1` makes every instance log its SIP messages; `PODPBX_KEEP_E2E=1` keeps
//! the work directories. Every instance is stopped by PID on drop (SIGTERM, then SIGKILL after 1 s) and runs with `-t`,
//! baresip's own "quit after N seconds", as a second bound.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `f` on a fresh thread that has entered the network namespace `ns` (a name under
/// `/var/run/netns`, as `ip netns add` makes). Sockets created there stay in that namespace
/// when used from other threads, and processes spawned there start in it.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = format!("/var/run/netns/{ns}");
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it changes only this (fresh) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Modules one instance loads (all in Debian's baresip-core).
const MODULES: [&str; 4] = ["g711.so", "sndfile.so", "aufile.so", "alsa.so"];
const APP_MODULES: [&str; 2] = ["menu.so", "ctrl_tcp.so"];

/// The baresip binary (`BARESIP_BIN`, else `baresip` in PATH) and its module directory
/// (`BARESIP_MODULES`, else the first of the usual places holding `aufile.so`), or why not.
pub fn available() -> Result<(PathBuf, PathBuf), String> {
    let bin = match std::env::var_os("BARESIP_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("baresip"))
                    .find(|p| p.is_file())
            })
            .ok_or("baresip not found (apt-get install baresip-core)")?,
    };
    let mut candidates: Vec<PathBuf> = std::env::var_os("BARESIP_MODULES")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("/usr/lib/baresip/modules"));
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        for e in rd.flatten().take(500) {
            candidates.push(e.path().join("baresip/modules"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/baresip/modules"));
    let mods = candidates
        .into_iter()
        .find(|d| d.join("aufile.so").is_file())
        .ok_or("baresip modules (aufile.so) not found; set BARESIP_MODULES")?;
    for m in MODULES.iter().chain(APP_MODULES.iter()) {
        if !mods.join(m).is_file() {
            return Err(format!("baresip module {m} missing in {}", mods.display()));
        }
    }
    Ok((bin, mods))
}

/// How one softphone is set up.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    /// Name for logs and the work directory.
    pub name: String,
    /// The network namespace it runs in.
    pub netns: String,
    /// SIP socket (UDP and TCP).
    pub sip_listen: SocketAddr,
    /// The interface whose address carries RTP (and goes into the SDP).
    pub interface: String,
    /// The account line (`<sip:user@domain>;params`); see [`account`].
    pub account: String,
    /// The WAV played into every call (8 kHz mono 16-bit).
    pub tone: PathBuf,
    /// The `ctrl_tcp` port on 127.0.0.1 inside the namespace.
    pub ctrl_port: u16,
    /// Local RTP port range.
    pub rtp_ports: (u16, u16),
    /// baresip's own lifetime bound (`-t`).
    pub max_secs: u32,
    /// Further `config` lines (e.g. `sip_cafile\t/path` for TLS).
    pub extra: Vec<String>,
}

/// An account line: `aor` (`sip:user@host`), G.711 µ-law only, and `params` such as
/// `auth_pass=...`, `answermode=auto`, `regint=0` (no registration).
pub fn account(aor: &str, params: &[&str]) -> String {
    let mut s = format!("<{aor}>;audio_codecs=pcmu");
    for p in params {
        s.push(';');
        s.push_str(p);
    }
    s
}

/// One UA event or command response from `ctrl_tcp`.
pub type Event = serde_json::Value;

/// A running baresip.
pub struct Baresip {
    pub name: String,
    child: Option<Child>,
    dir: PathBuf,
    keep: bool,
    log: PathBuf,
    rec: PathBuf,
    ctrl: Option<TcpStream>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Recordings already handed out by [`Baresip::new_recordings`].
    seen: Vec<PathBuf>,
    token: u64,
}

/// Reads netstrings (`LEN:JSON,`) from `s` into `out` until EOF, an error or `limit`.
fn read_events(mut s: TcpStream, out: Arc<Mutex<Vec<Event>>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        // Complete netstrings at the front of the buffer.
        for _ in 0..10_000 {
            let Some(colon) = buf.iter().position(|b| *b == b':') else {
                break;
            };
            let Some(len) = std::str::from_utf8(&buf[..colon])
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
            else {
                // Out of sync: drop what we have.
                buf.clear();
                break;
            };
            if buf.len() < colon + 1 + len + 1 {
                break;
            }
            let body = &buf[colon + 1..colon + 1 + len];
            if let Ok(v) = serde_json::from_slice::<Event>(body) {
                out.lock().unwrap().push(v);
            }
            buf.drain(..colon + 1 + len + 1);
        }
    }
}

impl Baresip {
    /// Writes the configuration into a fresh work directory under the system temp dir, starts
    /// baresip in `cfg.netns` and connects to its control port (bounded: 10 s).
    pub fn start(cfg: &PhoneConfig) -> Baresip {
        let (bin, mods) = available().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!(
            "podpbx-baresip-{}-{}-{}",
            cfg.name,
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = dir.join("rec");
        std::fs::create_dir_all(&rec).expect("create baresip dir");
        let listen = match cfg.sip_listen {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let mut config = format!(
            "poll_method\tepoll\n\
             sip_listen\t{listen}\n\
             net_interface\t{iface}\n\
             call_local_timeout\t60\n\
             call_max_calls\t4\n\
             audio_player\talsa,null\n\
             audio_alert\talsa,null\n\
             audio_source\taufile,{tone}\n\
             ausrc_srate\t8000\n\
             auplay_srate\t8000\n\
             ausrc_channels\t1\n\
             auplay_channels\t1\n\
             audio_buffer\t60\n\
             rtp_ports\t{rtp_lo}-{rtp_hi}\n\
             rtp_stats\tno\n\
             statmode_default\toff\n\
             module_path\t{mods}\n\
             snd_path\t{rec}\n\
             ctrl_tcp_listen\t127.0.0.1:{ctrl}\n",
            iface = cfg.interface,
            tone = cfg.tone.display(),
            rtp_lo = cfg.rtp_ports.0,
            rtp_hi = cfg.rtp_ports.1,
            mods = mods.display(),
            rec = rec.display(),
            ctrl = cfg.ctrl_port,
        );
        for line in &cfg.extra {
            config.push_str(line);
            config.push('\n');
        }
        for m in MODULES {
            config.push_str(&format!("module\t{m}\n"));
        }
        config.push_str("module_tmp\taccount.so\n");
        for m in APP_MODULES {
            config.push_str(&format!("module_app\t{m}\n"));
        }
        std::fs::write(dir.join("config"), config).expect("write baresip config");
        std::fs::write(dir.join("accounts"), format!("{}\n", cfg.account))
            .expect("write baresip accounts");
        // Empty contacts file: otherwise baresip writes a sample one with public addresses.
        std::fs::write(dir.join("contacts"), "").expect("write baresip contacts");
        let log = dir.join("baresip.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &cfg.netns])
            .arg(&bin)
            .arg("-f")
            .arg(&dir)
            .args(["-t", &cfg.max_secs.to_string()])
            // PODPBX_E2E_SIP_TRACE=1: baresip logs every SIP message (-s).
            .args(std::env::var_os("PODPBX_E2E_SIP_TRACE").map(|_| "-s"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("baresip log"))
            .stderr(std::fs::File::create(dir.join("baresip.err")).expect("baresip err"))
            .spawn()
            .expect("spawn baresip (ip netns exec execs it: the PID is baresip's)");
        let mut b = Baresip {
            name: cfg.name.clone(),
            child: Some(child),
            dir,
            keep: std::env::var_os("PODPBX_KEEP_E2E").is_some(),
            log,
            rec,
            ctrl: None,
            events: Arc::new(Mutex::new(Vec::new())),
            seen: Vec::new(),
            token: 0,
        };
        b.connect(cfg);
        b
    }

    fn connect(&mut self, cfg: &PhoneConfig) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: SocketAddr = ([127, 0, 0, 1], cfg.ctrl_port).into();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "baresip {} exited early ({st}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            let conn = in_netns(&cfg.netns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            });
            if let Ok(s) = conn {
                let reader = s.try_clone().expect("clone ctrl socket");
                let events = self.events.clone();
                let limit = Duration::from_secs(u64::from(cfg.max_secs) + 10);
                std::thread::spawn(move || read_events(reader, events, limit));
                self.ctrl = Some(s);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip {}: ctrl_tcp not reachable on {addr}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.join("baresip.err")).unwrap_or_default();
        format!(
            "--- baresip {} ({}) ---\n{out}{err}",
            self.name,
            self.dir.display()
        )
    }

    /// Waits (bounded) until the log shows a `200 OK` to the REGISTER.
    pub fn wait_registered(&mut self, limit: Duration) -> Result<(), String> {
        self.wait_log(limit, |l| l.contains("200 OK") && l.contains("binding"))
            .map(|_| ())
            .map_err(|_| format!("{} did not register", self.name))
    }

    /// Waits (bounded) for a stdout line satisfying `f`.
    pub fn wait_log(&mut self, limit: Duration, f: impl Fn(&str) -> bool) -> Result<String, ()> {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| f(l)) {
                return Ok(l.to_owned());
            }
            if Instant::now() >= deadline || !self.alive() {
                return Err(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends a `ctrl_tcp` command and waits (bounded: 5 s) for its response.
    pub fn command(&mut self, command: &str, params: &str) -> Result<Event, String> {
        self.token += 1;
        let token = format!("{}-{}", self.name, self.token);
        let msg =
            serde_json::json!({ "command": command, "params": params, "token": token }).to_string();
        let frame = format!("{}:{},", msg.len(), msg);
        let s = self.ctrl.as_mut().ok_or("no control connection")?;
        s.write_all(frame.as_bytes())
            .map_err(|e| format!("{}: ctrl write: {e}", self.name))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["response"] == true && e["token"] == token.as_str())
            {
                return if r["ok"] == true {
                    Ok(r.clone())
                } else {
                    Err(format!("{}: {command} {params}: {r}", self.name))
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: no response to {command} {params}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event so far (responses excluded).
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == true)
            .cloned()
            .collect()
    }

    /// Event types so far, in order (compact, for messages).
    pub fn event_types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Number of events of type `ty` so far.
    pub fn count(&self, ty: &str) -> usize {
        self.events().iter().filter(|e| e["type"] == ty).count()
    }

    /// Waits (bounded) until there are at least `n` events of type `ty`; returns the last one.
    pub fn wait_event(&mut self, ty: &str, n: usize, limit: Duration) -> Result<Event, String> {
        let deadline = Instant::now() + limit;
        loop {
            let evs: Vec<Event> = self
                .events()
                .into_iter()
                .filter(|e| e["type"] == ty)
                .collect();
            if evs.len() >= n {
                return Ok(evs[n - 1].clone());
            }
            if Instant::now() >= deadline || !self.alive() {
                return Err(format!(
                    "{}: no {ty} #{n} within {limit:?} (events: {:?})",
                    self.name,
                    self.event_types()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Decoded-audio recordings (`*-dec.wav`) written since the last call of this method,
    /// oldest first.
    pub fn new_recordings(&mut self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(&self.rec)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        all.sort();
        let fresh: Vec<PathBuf> = all.into_iter().filter(|p| !self.seen.contains(p)).collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    /// The work directory (config, logs, recordings).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the process: SIGTERM, up to 1 s, then SIGKILL, by PID. Idempotent.
    pub fn stop(&mut self) {
        if let Some(s) = self.ctrl.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.stop();
        if self.keep {
            eprintln!("kept baresip work dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
