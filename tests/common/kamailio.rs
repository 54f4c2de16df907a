//! A real Kamailio (5.6, Debian package `kamailio`) playing a SIP provider for black-box tests:
//! a registrar with digest authentication, a source address check, DID routing to registered
//! contacts and outbound routing to a UAS. The routing script is `tests/kamailio/provider.cfg`,
//! which documents each part; this module renders it with the test's parameters into a fresh
//! work directory under the system temp dir, writes the db_text tables (subscribers with
//! plain-text passwords, allowed source addresses), starts Kamailio in the foreground and waits
//! until it answers.
//!
//! ```ignore
//! let kam = Kamailio::start(&ProviderConfig {
//!     accounts: vec![Account::new("trunkuser", "secret").did("4930123")],
//!     subscribers: vec![Source::host("::1".parse().unwrap())],   // the PBX may register / call out
//!     carriers: vec![Source::host("127.0.0.1".parse().unwrap())], // the PSTN side may call DIDs
//!     uas: Some(sipp_uas_addr),                                    // where outbound calls go
//!     ..ProviderConfig::default()
//! });
//! // REGISTER to kam.addr_v6() with From/To <sip:trunkuser@provider.test>, realm provider.test;
//! // kam.binding("trunkuser") tells what Kamailio stored.
//! ```
//!
//! What the provider does (see the cfg for details):
//! * `REGISTER` from a subscriber source: `401` digest challenge (MD5, qop=auth; `stale=true`
//!   after `nonce_expire`, or a plain new challenge with `stale: false`), From/To user and
//!   domain must be the account in the realm; `423`
//!   below `min_expires`; bindings in memory.
//! * `INVITE` from a carrier source to a DID of an account: delivered to that account's
//!   registered contact, the DID as Request-URI user, Record-Routed (`480` if not registered,
//!   `404` for unknown numbers).
//! * `INVITE` from a subscriber source: `407` challenge when `invite_auth`, then relayed to
//!   `uas` (or to the UAS `uas_routes` names for its number), Record-Routed (`503` without a
//!   UAS).
//! * `OPTIONS sip:realm` (no user part): `200`. `OPTIONS sip:check-USER@realm` from anywhere:
//!   `200` with `X-Contact`/`X-Expires`/`X-Bindings` if USER has a binding, else `404`.
//! * Anything from another source: `403 Source Address Not Allowed`.
//!
//! Only std is used, so the module can be included both through `tests/common/mod.rs` and on
//! its own with `#[path = "common/kamailio.rs"] mod kamailio;`. Kamailio runs with `-DD -E`
//! (no daemon, log to stderr, captured in `kamailio.log` in the work dir) and is stopped on drop
//! with SIGTERM to its PID (its main process stops its children); if it does not exit within
//! 5 s, its child processes (found by parent PID in /proc) and then itself get SIGKILL, each by
//! PID. Environment knobs: `KAMAILIO_BIN` (binary), `KAMAILIO_MPATH` (module dir),
//! `PODPBX_KAMAILIO_DEBUG` (log level, e.g. 3), `PODPBX_KEEP_KAMAILIO=1` (keep the work dir).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_ports;

/// The routing script template.
const TEMPLATE: &str = include_str!("../kamailio/provider.cfg");

/// How long Kamailio may take to answer its first OPTIONS.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a SIGTERM may take before the processes are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One account (a row of the subscriber table) and the numbers (DIDs) it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub password: String,
    pub dids: Vec<String>,
}

impl Account {
    pub fn new(username: &str, password: &str) -> Account {
        Account {
            username: username.to_owned(),
            password: password.to_owned(),
            dids: Vec::new(),
        }
    }

    /// Adds a DID routed to this account's binding.
    pub fn did(mut self, did: &str) -> Account {
        self.dids.push(did.to_owned());
        self
    }
}

/// An allowed source: an address or network, optionally one port (0 = any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    pub prefix: u8,
    pub port: u16,
}

impl Source {
    /// One address, any port.
    pub fn host(ip: IpAddr) -> Source {
        Source {
            ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
            port: 0,
        }
    }

    /// A network, any port.
    pub fn net(ip: IpAddr, prefix: u8) -> Source {
        Source {
            ip,
            prefix,
            port: 0,
        }
    }

    /// One address and port.
    pub fn addr(a: SocketAddr) -> Source {
        Source {
            port: a.port(),
            ..Source::host(a.ip())
        }
    }
}

/// How the provider is set up.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Addresses Kamailio listens on (all on the same port).
    pub listen: Vec<IpAddr>,
    /// Also listen on TCP.
    pub tcp: bool,
    /// The port; `None` picks a free one.
    pub port: Option<u16>,
    /// Digest realm, also the domain of the accounts' AORs (`sip:user@realm`).
    pub realm: String,
    pub accounts: Vec<Account>,
    /// Address group 1: may REGISTER, send OPTIONS and call out (the PBX under test).
    pub subscribers: Vec<Source>,
    /// Address group 2: may call DIDs (the PSTN side, e.g. a SIPp UAC).
    pub carriers: Vec<Source>,
    /// Where INVITEs from subscribers go (e.g. a SIPp UAS); `None` answers them `503`.
    pub uas: Option<SocketAddr>,
    /// Numbers (the Request-URI user, exactly) whose INVITEs from subscribers go to a UAS of
    /// their own instead of `uas` (which must be set too).
    pub uas_routes: Vec<(String, SocketAddr)>,
    /// Challenge INVITEs from subscribers with `407`.
    pub invite_auth: bool,
    /// Registrar `min_expires` (below it: `423` with `Min-Expires`).
    pub min_expires: u32,
    /// Registrar `max_expires` (above it the granted expiry is lowered; also the default).
    pub max_expires: u32,
    /// Seconds a nonce stays valid (auth `nonce_expire`).
    pub nonce_expire: u32,
    /// Answer credentials with an expired nonce with `stale=true` (RFC 2617); `false` sends a
    /// plain new challenge, as some providers do.
    pub stale: bool,
    /// Kamailio log level (`debug=`): 2 logs one line per request, 3 is verbose.
    pub debug: i8,
    /// Also listen on TLS with this certificate and key (PEM files; needs the Debian package
    /// kamailio-tls-modules); the port is [`Kamailio::tls_port`].
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for ProviderConfig {
    /// Loopback on both families, realm `provider.test`, `::1` as the only subscriber source,
    /// INVITE authentication on, expiry between 60 s and 3600 s, 300 s nonces answered with
    /// `stale=true` when expired.
    fn default() -> Self {
        ProviderConfig {
            listen: vec![
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
            tcp: false,
            port: None,
            realm: "provider.test".to_owned(),
            accounts: Vec::new(),
            subscribers: vec![Source::host(IpAddr::V6(Ipv6Addr::LOCALHOST))],
            carriers: Vec::new(),
            uas: None,
            uas_routes: Vec::new(),
            invite_auth: true,
            min_expires: 60,
            max_expires: 3600,
            nonce_expire: 300,
            stale: true,
            debug: 2,
            tls: None,
        }
    }
}

/// What Kamailio stores for a user, as reported by the `check-` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The first contact URI.
    pub contact: String,
    /// Its remaining lifetime in seconds.
    pub expires: i64,
    /// How many contacts the user has.
    pub count: u32,
}

/// A running Kamailio.
pub struct Kamailio {
    child: Option<Child>,
    pub port: u16,
    pub listen: Vec<IpAddr>,
    pub realm: String,
    pub tcp: bool,
    /// The TLS listener's port (with `ProviderConfig::tls`).
    pub tls_port: Option<u16>,
    dir: PathBuf,
    log: PathBuf,
    keep: bool,
}

/// The Kamailio binary: `KAMAILIO_BIN`, else the first of `/usr/sbin/kamailio`,
/// `/usr/local/sbin/kamailio`, `kamailio` in PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("KAMAILIO_BIN") {
        return Some(PathBuf::from(b));
    }
    for p in ["/usr/sbin/kamailio", "/usr/local/sbin/kamailio"] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kamailio"))
        .find(|p| p.is_file())
}

/// The module directory: `KAMAILIO_MPATH`, else the first known location holding `tm.so`
/// (`/usr/lib/<multiarch>/kamailio/modules` on Debian, `/usr/lib64/kamailio/modules`, ...).
pub fn module_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KAMAILIO_MPATH") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    // Debian multiarch directories: /usr/lib/x86_64-linux-gnu, /usr/lib/aarch64-linux-gnu, ...
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        for e in rd.flatten().take(500) {
            candidates.push(e.path().join("kamailio/modules"));
        }
    }
    for p in [
        "/usr/lib/kamailio/modules",
        "/usr/lib64/kamailio/modules",
        "/usr/local/lib/kamailio/modules",
        "/usr/local/lib64/kamailio/modules",
    ] {
        candidates.push(PathBuf::from(p));
    }
    candidates.into_iter().find(|d| d.join("tm.so").is_file())
}

/// `Ok` if Kamailio and its modules are installed, else why not.
pub fn available() -> Result<(PathBuf, PathBuf), String> {
    let bin = binary().ok_or("kamailio not found (apt-get install kamailio)")?;
    let mpath = module_dir().ok_or("kamailio modules (tm.so) not found; set KAMAILIO_MPATH")?;
    Ok((bin, mpath))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Escapes a db_text field value (`\`, `:`, CR, LF, TAB).
fn dbt_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            ':' => o.push_str("\\:"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c => o.push(c),
        }
    }
    o
}

/// Names that go into the routing script as string literals or URIs.
fn check_token(what: &str, s: &str) {
    assert!(
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-_.*#".contains(&b)),
        "{what} {s:?}: use letters, digits and +-_.*# only"
    );
}

fn render(
    cfg: &ProviderConfig,
    port: u16,
    tls_port: Option<u16>,
    mpath: &Path,
    db: &Path,
) -> String {
    let mut defines = String::new();
    if cfg.invite_auth {
        defines.push_str("#!define WITH_INVITE_AUTH\n");
    }
    if cfg.uas.is_some() {
        defines.push_str("#!define WITH_UAS\n");
    }
    if cfg.stale {
        defines.push_str("#!define WITH_STALE\n");
    }
    let mut listen = String::new();
    for ip in &cfg.listen {
        listen.push_str(&format!("listen=udp:{}:{port}\n", host(*ip)));
        if cfg.tcp {
            listen.push_str(&format!("listen=tcp:{}:{port}\n", host(*ip)));
        }
    }
    if let Some(tp) = tls_port {
        defines.push_str("#!define WITH_TLS\n");
        for ip in &cfg.listen {
            listen.push_str(&format!("listen=tls:{}:{tp}\n", host(*ip)));
        }
        listen.push_str("enable_tls=yes\n");
    }
    let tcp = if cfg.tcp || tls_port.is_some() {
        // Few TCP workers: the tests open a handful of connections.
        "tcp_children=2"
    } else {
        "disable_tcp=yes"
    };
    let mut did_map = String::new();
    for a in &cfg.accounts {
        for d in &a.dids {
            did_map.push_str(&format!(
                "\tif ($rU == \"{d}\") {{ $var(aor) = \"sip:{}@{}\"; }}\n",
                a.username, cfg.realm
            ));
        }
    }
    let uas = cfg
        .uas
        .map(|u| format!("sip:{}:{}", host(u.ip()), u.port()))
        .unwrap_or_default();
    let mut uas_routes = String::new();
    for (number, to) in &cfg.uas_routes {
        uas_routes.push_str(&format!(
            "\tif ($rU == \"{number}\") {{ $du = \"sip:{}:{}\"; }}\n",
            host(to.ip()),
            to.port()
        ));
    }
    let debug = std::env::var("PODPBX_KAMAILIO_DEBUG")
        .ok()
        .and_then(|v| v.parse::<i8>().ok())
        .unwrap_or(cfg.debug);
    let tls_cfg = db.with_file_name("tls.cfg");
    let replacements: [(&str, String); 14] = [
        ("@TLS_CFG@", tls_cfg.display().to_string()),
        ("@DEFINES@", defines),
        ("@DEBUG@", debug.to_string()),
        ("@LISTEN@", listen),
        ("@TCP@", tcp.to_owned()),
        ("@REALM@", cfg.realm.clone()),
        ("@MPATH@", mpath.display().to_string()),
        ("@DBDIR@", db.display().to_string()),
        ("@NONCE_EXPIRE@", cfg.nonce_expire.to_string()),
        ("@MIN_EXPIRES@", cfg.min_expires.to_string()),
        ("@MAX_EXPIRES@", cfg.max_expires.to_string()),
        ("@UAS_ROUTES@", uas_routes),
        ("@UAS@", uas),
        ("@DID_MAP@", did_map),
    ];
    let mut text = TEMPLATE.to_owned();
    for (k, v) in replacements {
        text = text.replace(k, &v);
    }
    text
}

fn write_tables(cfg: &ProviderConfig, db: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(db)?;
    // Table versions the modules check at start-up (Kamailio 5.6 schema).
    std::fs::write(
        db.join("version"),
        "table_name(string) table_version(int)\nsubscriber:7\naddress:6\n",
    )?;
    let mut sub = String::from(
        "id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string)\n",
    );
    for (i, a) in cfg.accounts.iter().enumerate() {
        // calculate_ha1 is on: the ha1 columns are never read.
        sub.push_str(&format!(
            "{}:{}:{}:{}:-:-\n",
            i + 1,
            dbt_escape(&a.username),
            dbt_escape(&cfg.realm),
            dbt_escape(&a.password)
        ));
    }
    std::fs::write(db.join("subscriber"), sub)?;
    let mut addr = String::from(
        "id(int,auto) grp(int) ip_addr(string) mask(int) port(int) tag(string,null)\n",
    );
    let groups = cfg
        .subscribers
        .iter()
        .map(|s| (1, s))
        .chain(cfg.carriers.iter().map(|s| (2, s)));
    for (i, (grp, s)) in groups.enumerate() {
        addr.push_str(&format!(
            "{}:{grp}:{}:{}:{}:\n",
            i + 1,
            dbt_escape(&s.ip.to_string()),
            s.prefix,
            s.port
        ));
    }
    std::fs::write(db.join("address"), addr)
}

/// Sends `req` from a fresh socket of `dest`'s family and returns the first answer.
fn ask(dest: SocketAddr, req: &dyn Fn(SocketAddr) -> String, wait: Duration) -> Option<String> {
    let bind: SocketAddr = if dest.is_ipv4() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)
    };
    let sock = UdpSocket::bind(bind).ok()?;
    let local = sock.local_addr().ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let data = req(local);
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    // Resend every 200 ms until an answer or the deadline: bounded in time and count.
    for _ in 0..1000 {
        if Instant::now() >= deadline {
            return None;
        }
        sock.send_to(data.as_bytes(), dest).ok()?;
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == dest {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
    None
}

fn header_value(msg: &str, name: &str) -> Option<String> {
    msg.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
}

fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn options(uri: &str, local: SocketAddr, tag: u64) -> String {
    let h = host(local.ip());
    format!(
        "OPTIONS {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {h}:{port};branch=z9hG4bK-harness-{tag};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:harness@{h}>;tag=h{tag}\r\n\
         To: <{uri}>\r\n\
         Call-ID: harness-{tag}@{h}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port()
    )
}

impl Kamailio {
    /// Starts a provider; panics (with Kamailio's log) when it cannot. With `cfg.port = None` a
    /// bind race with another process is retried on another port (three tries).
    pub fn start(cfg: &ProviderConfig) -> Kamailio {
        let mut last = String::new();
        for _ in 0..3 {
            match Kamailio::try_start(cfg) {
                Ok(k) => return k,
                Err(e) if cfg.port.is_none() && e.contains("bind") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    /// Like [`Kamailio::start`], returning the reason and log on failure.
    pub fn try_start(cfg: &ProviderConfig) -> Result<Kamailio, String> {
        let (bin, mpath) = available()?;
        assert!(!cfg.listen.is_empty(), "no listen address");
        check_token("realm", &cfg.realm);
        for (number, _) in &cfg.uas_routes {
            check_token("routed number", number);
        }
        for a in &cfg.accounts {
            check_token("username", &a.username);
            for d in &a.dids {
                check_token("DID", d);
            }
        }
        let port = match cfg.port {
            Some(p) => p,
            None => free_ports(1, &cfg.listen, cfg.tcp).ok_or("no free port")?,
        };
        let dir = std::env::temp_dir().join(format!(
            "podpbx-kamailio-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("db");
        let run = dir.join("run");
        std::fs::create_dir_all(&run).map_err(|e| format!("create {}: {e}", run.display()))?;
        write_tables(cfg, &db).map_err(|e| format!("write tables: {e}"))?;
        let tls_port = match &cfg.tls {
            None => None,
            Some((cert, key)) => {
                // Never `port`: the allocator hands out each port once.
                let tp = free_ports(1, &cfg.listen, true).ok_or("no free TLS port")?;
                // Server side: our certificate; client side (Kamailio connecting back to
                // podpbx): no verification, as many providers do towards customers.
                std::fs::write(
                    dir.join("tls.cfg"),
                    format!(
                        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                         require_certificate = no\ncertificate = {}\nprivate_key = {}\n\n\
                         [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                         require_certificate = no\n",
                        cert.display(),
                        key.display()
                    ),
                )
                .map_err(|e| format!("write tls.cfg: {e}"))?;
                Some(tp)
            }
        };
        let cfg_path = dir.join("provider.cfg");
        std::fs::write(&cfg_path, render(cfg, port, tls_port, &mpath, &db))
            .map_err(|e| format!("write cfg: {e}"))?;
        let log = dir.join("kamailio.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(&bin)
            .arg("-f")
            .arg(&cfg_path)
            // Foreground, log to stderr; small shared and private memory pools.
            .args(["-DD", "-E", "-m", "32", "-M", "8"])
            // Runtime (FIFO/socket) and working directories inside the work dir, not /var/run.
            .arg("-Y")
            .arg(&run)
            .arg("-w")
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let keep = std::env::var_os("PODPBX_KEEP_KAMAILIO").is_some();
        let mut k = Kamailio {
            child: Some(child),
            port,
            listen: cfg.listen.clone(),
            realm: cfg.realm.clone(),
            tcp: cfg.tcp,
            tls_port,
            dir,
            log,
            keep,
        };
        k.wait_ready()?;
        Ok(k)
    }

    /// Waits until every listen socket answers an OPTIONS (any response).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for (i, ip) in self.listen.clone().into_iter().enumerate() {
            let dest = SocketAddr::new(ip, self.port);
            let uri = format!("sip:check-ready@{}", self.realm);
            loop {
                if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "kamailio exited early ({st}); log {}:\n{}",
                        self.log.display(),
                        self.log_text()
                    ));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "kamailio not answering on {dest}; log:\n{}",
                        self.log_text()
                    ));
                }
                let tag = 1000 + i as u64;
                let got = ask(
                    dest,
                    &|local| options(&uri, local, tag),
                    left.min(Duration::from_millis(500)),
                );
                if got.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The process id of Kamailio's main process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The listen address of `ip`'s family (the first one of that family).
    pub fn addr_for(&self, ip: IpAddr) -> SocketAddr {
        let a = self
            .listen
            .iter()
            .find(|l| l.is_ipv4() == ip.is_ipv4())
            .copied()
            .unwrap_or(self.listen[0]);
        SocketAddr::new(a, self.port)
    }

    /// The IPv6 listen address.
    pub fn addr_v6(&self) -> SocketAddr {
        self.addr_for(IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    /// The IPv4 listen address.
    pub fn addr_v4(&self) -> SocketAddr {
        self.addr_for(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// The work directory (config, tables, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything Kamailio logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the location service holds for `user` (asked with the `check-` hook on the first
    /// listen address); `None` if nothing, or if Kamailio does not answer within 2 s.
    pub fn binding(&self, user: &str) -> Option<Binding> {
        let dest = SocketAddr::new(self.listen[0], self.port);
        let uri = format!("sip:check-{user}@{}", self.realm);
        let tag = 2000 + unique();
        let resp = ask(
            dest,
            &|local| options(&uri, local, tag),
            Duration::from_secs(2),
        )?;
        if status_of(&resp) != Some(200) {
            return None;
        }
        Some(Binding {
            contact: header_value(&resp, "X-Contact")?,
            expires: header_value(&resp, "X-Expires")?.parse().ok()?,
            count: header_value(&resp, "X-Bindings")?.parse().ok()?,
        })
    }

    /// Stops Kamailio: SIGTERM to the main process, up to 5 s to exit, then SIGKILL to its
    /// children and itself, each by PID. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if matches!(child.try_wait(), Ok(None)) {
            signal(pid, "TERM");
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                for c in children_of(pid) {
                    signal(c, "KILL");
                }
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

/// Sends a signal to one process by PID (through the shell's `kill` builtin: no libc needed).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} {pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// PIDs whose parent is `pid`, from /proc/*/stat.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten().take(100_000) {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if self.keep {
            eprintln!("kept Kamailio work dir {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
