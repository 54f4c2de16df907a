//! The registration state machine in virtual time against a simulated provider (a registrar
//! built on `podpbx_sip::digest::DigestServer`), through the public API only.

use bytes::Bytes;
use podpbx_sip::digest::{Credentials, DigestServer, Key, ServerConfig, VerifyOutcome};
use podpbx_sip::{Framing, HeaderName, Message, Method, ResponseBuilder};
use podpbx_trunk::{
    ConfigError, OutgoingKind, RegError, Registration, RegistrationConfig, Transport, TrunkState,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const USER: &str = "4930123456";
const PASSWORD: &str = "s3cret";
const REALM: &str = "sip.provider.test";
/// Timer F: what a dropped request costs before the transaction layer reports it.
const TIMER_F: Duration = Duration::from_secs(32);

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn local() -> SocketAddr {
    "[2001:db8:e8b1::1:1]:5060".parse().expect("addr")
}

fn config(password: &str) -> RegistrationConfig {
    let mut c = RegistrationConfig::new("provider", REALM, USER, password, local(), [7; 16]);
    c.expiry = s(600);
    c.dest = Some("[2001:db8:5::1]:5060".parse().expect("addr"));
    c
}

fn parse(b: &Bytes) -> Message {
    Message::parse(b.clone(), Framing::Datagram).expect("parse")
}

fn header(m: &Message, name: &str) -> Option<String> {
    m.other_header(name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A working registrar.
    Up,
    /// Every request is lost.
    Down,
    /// `403` to everything.
    Forbidden,
    /// `503` with `Retry-After`.
    Unavailable(u32),
}

/// A registrar: digest with qop=auth (401 or 407), `423` below `min_expires`, a binding table.
struct Provider {
    digest: DigestServer,
    password: String,
    mode: Mode,
    proxy_auth: bool,
    min_expires: u32,
    /// Grant less than asked (Contact `expires`), if set.
    grant: Option<u32>,
    /// Extra contact of another device of the same account, listed in every 200.
    other_contact: Option<String>,
    /// Our binding: contact URI and expiry.
    binding: Option<(String, Instant)>,
    /// Answer expired nonces with `stale=true` (else a plain new challenge).
    stale_flag: bool,
    /// Treat every nonce as expired (a broken provider).
    always_stale: bool,
}

impl Provider {
    fn new(now: Instant) -> Provider {
        let mut cfg = ServerConfig::new(REALM, vec![9u8; 32]);
        cfg.nonce_ttl = s(3600);
        Provider {
            digest: DigestServer::new(cfg, now),
            password: PASSWORD.to_owned(),
            mode: Mode::Up,
            proxy_auth: false,
            min_expires: 60,
            grant: None,
            other_contact: None,
            binding: None,
            stale_flag: true,
            always_stale: false,
        }
    }

    fn with_nonce_ttl(now: Instant, ttl: Duration) -> Provider {
        let mut p = Provider::new(now);
        let mut cfg = ServerConfig::new(REALM, vec![9u8; 32]);
        cfg.nonce_ttl = ttl;
        p.digest = DigestServer::new(cfg, now);
        p
    }

    fn challenge(&mut self, now: Instant, req: &Message, stale: bool) -> Bytes {
        let (code, reason, hdr) = if self.proxy_auth {
            (407, "Proxy Authentication Required", "Proxy-Authenticate")
        } else {
            (401, "Unauthorized", "WWW-Authenticate")
        };
        let mut b = ResponseBuilder::new(req, code, reason, None).to_tag("prov");
        for v in self.digest.challenge_values(now, stale) {
            b = b.header(hdr, &v);
        }
        b.build()
    }

    /// The provider's answer, `None` if the request is lost.
    fn handle(&mut self, now: Instant, req: &Message) -> Option<Bytes> {
        match self.mode {
            Mode::Down => return None,
            Mode::Forbidden => {
                return Some(ResponseBuilder::new(req, 403, "Forbidden", None).build());
            }
            Mode::Unavailable(ra) => {
                return Some(
                    ResponseBuilder::new(req, 503, "Service Unavailable", None)
                        .header("Retry-After", &ra.to_string())
                        .build(),
                );
            }
            Mode::Up => {}
        }
        if req.method() == Some(&Method::Options) {
            return Some(ResponseBuilder::new(req, 200, "OK", None).build());
        }
        assert_eq!(req.method(), Some(&Method::Register));
        let cred_hdr = if self.proxy_auth {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        let Some(v) = req.header(cred_hdr) else {
            return Some(self.challenge(now, req, false));
        };
        if self.always_stale {
            return Some(self.challenge(now, req, true));
        }
        let creds = Credentials::parse(&v).expect("credentials parse");
        assert_eq!(creds.username, USER);
        assert_eq!(creds.uri, format!("sip:{REALM}"));
        let secret = Key::Password(self.password.clone());
        match self
            .digest
            .verify(now, &creds, "REGISTER", b"", Some(&secret))
        {
            VerifyOutcome::Ok { .. } => {}
            VerifyOutcome::Stale | VerifyOutcome::Replay => {
                let stale = self.stale_flag;
                return Some(self.challenge(now, req, stale));
            }
            _ => return Some(self.challenge(now, req, false)),
        }
        let expires = req.expires().ok().flatten().expect("Expires header");
        let contact = req.contact_iter().next().expect("contact").expect("parse");
        let contact = String::from_utf8_lossy(&contact.addr.uri.raw).into_owned();
        if expires == 0 {
            self.binding = None;
            return Some(ResponseBuilder::new(req, 200, "OK", None).build());
        }
        if expires < self.min_expires {
            return Some(
                ResponseBuilder::new(req, 423, "Interval Too Brief", None)
                    .header("Min-Expires", &self.min_expires.to_string())
                    .build(),
            );
        }
        let granted = self.grant.map_or(expires, |g| g.min(expires));
        self.binding = Some((contact.clone(), now + s(u64::from(granted))));
        let mut b = ResponseBuilder::new(req, 200, "OK", None).to_tag("prov");
        if let Some(o) = &self.other_contact {
            b = b.header("Contact", &format!("<{o}>;expires=3000"));
        }
        // Registrars put parameters in another order and add their own.
        b = b
            .header(
                "Contact",
                &format!(
                    "<{contact}>;expires={granted};received=\"sip:[2001:db8:e8b1::1:1]:5060\""
                ),
            )
            .header("Expires", "9999");
        Some(b.build())
    }
}

/// One sent message, as the simulation saw it.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    dest: SocketAddr,
    kind: OutgoingKind,
    msg: Option<Message>,
    status: Option<u16>,
}

/// Drives a `Registration` against a `Provider` in virtual time.
struct Sim {
    t0: Instant,
    now: Instant,
    reg: Registration,
    prov: Provider,
    sent: Vec<Sent>,
    /// Requests the provider dropped: (deadline, branch) for `transaction_timeout`.
    lost: Vec<(Instant, Bytes)>,
    /// Servers that never answer.
    down: Vec<SocketAddr>,
    /// Servers that answer everything `503`.
    busy: Vec<SocketAddr>,
}

impl Sim {
    fn new(cfg: RegistrationConfig) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            reg: Registration::new(cfg).expect("config"),
            prov: Provider::new(t0),
            sent: Vec::new(),
            lost: Vec::new(),
            down: Vec::new(),
            busy: Vec::new(),
        }
    }

    fn start(&mut self) {
        self.reg.start(self.now);
        self.pump();
    }

    fn stop(&mut self) {
        self.reg.stop(self.now);
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..100 {
            let Some(out) = self.reg.poll_transmit() else {
                return;
            };
            assert_eq!(out.transport, self.reg.config().transport);
            if out.kind == OutgoingKind::Crlf {
                assert_eq!(&out.data[..], b"\r\n\r\n");
                self.sent.push(Sent {
                    at: self.now,
                    dest: out.dest,
                    kind: out.kind,
                    msg: None,
                    status: None,
                });
                continue;
            }
            let msg = parse(&out.data);
            let via = msg.top_via().expect("via");
            assert_eq!(via.branch().as_ref(), Some(&out.branch));
            assert!(out.branch.starts_with(b"z9hG4bK"));
            let resp = if self.down.contains(&out.dest) {
                None
            } else if self.busy.contains(&out.dest) {
                Some(ResponseBuilder::new(&msg, 503, "Service Unavailable", None).build())
            } else {
                self.prov.handle(self.now, &msg)
            };
            self.sent.push(Sent {
                at: self.now,
                dest: out.dest,
                kind: out.kind,
                msg: Some(msg),
                status: resp.as_ref().map(|r| parse(r).status().unwrap_or(0)),
            });
            match resp {
                Some(r) => assert!(self.reg.handle_response(self.now, &parse(&r))),
                None => self.lost.push((self.now + TIMER_F, out.branch.clone())),
            }
        }
        panic!("more than 100 messages at one instant");
    }

    /// Runs until `t0 + d` (bounded number of steps).
    fn run_until(&mut self, d: Duration) {
        let end = self.t0 + d;
        for _ in 0..100_000 {
            self.pump();
            let lost_next = self.lost.iter().map(|l| l.0).min();
            let next = [self.reg.poll_timeout(), lost_next]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end;
                return;
            };
            assert!(next >= self.now, "deadline in the past");
            self.now = next;
            let due: Vec<Bytes> = self
                .lost
                .iter()
                .filter(|l| l.0 <= next)
                .map(|l| l.1.clone())
                .collect();
            self.lost.retain(|l| l.0 > next);
            for b in due {
                self.reg.transaction_timeout(self.now, &b);
            }
            if self.reg.poll_timeout().is_some_and(|t| t <= self.now) {
                self.reg.handle_timeout(self.now);
            }
        }
        panic!("simulation did not reach its end");
    }

    fn registers(&self) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| matches!(s.kind, OutgoingKind::Register | OutgoingKind::Unregister))
            .collect()
    }

    fn secs_since_t0(&self, t: Instant) -> f64 {
        (t - self.t0).as_secs_f64()
    }
}

fn expires_of(m: &Message) -> u32 {
    m.expires().ok().flatten().expect("Expires")
}

#[test]
fn challenge_then_200_and_the_register_format() {
    let mut sim = Sim::new(config(PASSWORD));
    assert_eq!(sim.reg.state(), &TrunkState::Unregistered);
    sim.start();
    let regs = sim.registers();
    assert_eq!(
        regs.len(),
        2,
        "REGISTER, 401, REGISTER with credentials, 200"
    );
    assert_eq!(regs[0].status, Some(401));
    assert_eq!(regs[1].status, Some(200));
    let first = regs[0].msg.as_ref().expect("msg");
    let second = regs[1].msg.as_ref().expect("msg");
    assert_eq!(
        first.start_line_raw(),
        format!("REGISTER sip:{REALM} SIP/2.0").as_bytes()
    );
    let via = first.top_via().expect("via");
    assert_eq!(&via.transport[..], b"UDP");
    assert_eq!(via.host.to_string(), "[2001:db8:e8b1::1:1]");
    assert_eq!(via.port, Some(5060));
    assert!(via.params.contains("rport"));
    assert_eq!(first.max_forwards().expect("mf"), Some(70));
    let from = first.from_hdr().expect("from");
    let to = first.to_hdr().expect("to");
    assert_eq!(from.uri.to_string(), format!("sip:{USER}@{REALM}"));
    assert_eq!(to.uri.to_string(), format!("sip:{USER}@{REALM}"));
    assert!(from.tag().is_some());
    assert!(to.tag().is_none());
    assert_eq!(
        header(first, "Contact").as_deref(),
        Some(format!("<sip:{USER}@[2001:db8:e8b1::1:1]:5060;transport=udp>").as_str())
    );
    assert_eq!(expires_of(first), 600);
    assert!(header(first, "User-Agent").is_some_and(|u| u.starts_with("podpbx/")));
    assert_eq!(header(first, "Content-Length").as_deref(), Some("0"));
    assert!(first.header(HeaderName::Authorization).is_none());
    // Same dialog identifiers, next CSeq, new branch, credentials with qop=auth.
    assert_eq!(first.call_id().ok(), second.call_id().ok());
    assert_eq!(
        first.from_hdr().expect("f").tag(),
        second.from_hdr().expect("f").tag()
    );
    assert_eq!(
        first.cseq().expect("c").seq + 1,
        second.cseq().expect("c").seq
    );
    assert_ne!(
        first.top_via().expect("v").branch(),
        second.top_via().expect("v").branch()
    );
    let auth = second.header(HeaderName::Authorization).expect("auth");
    let creds = Credentials::parse(&auth).expect("creds");
    assert_eq!(creds.qop.as_deref(), Some("auth"));
    assert_eq!(creds.nc.as_deref(), Some("00000001"));
    assert!(creds.cnonce.is_some());
    assert_eq!(creds.realm, REALM);
    match sim.reg.state() {
        TrunkState::Registered { expires_at } => assert_eq!(*expires_at, sim.t0 + s(600)),
        other => panic!("not registered: {other:?}"),
    }
    let st = sim.reg.status();
    assert_eq!(st.state, "registered");
    assert_eq!(st.granted_expiry, Some(s(600)));
    assert_eq!(st.next_attempt, Some(sim.t0 + s(530)));
    assert_eq!(st.last_error, None);
    assert_eq!(st.registers_sent, 2);
    assert_eq!(
        sim.prov.binding.as_ref().map(|b| b.0.clone()),
        Some(format!(
            "sip:{USER}@[2001:db8:e8b1::1:1]:5060;transport=udp"
        ))
    );
}

#[test]
fn refresh_schedule_reuses_the_nonce() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.start();
    sim.run_until(s(2000));
    let regs = sim.registers();
    let times: Vec<f64> = regs.iter().map(|r| sim.secs_since_t0(r.at)).collect();
    // Initial pair at 0, then a refresh every 530 s of the 600 s binding, each accepted at
    // once with the cached nonce (nc 2, 3, 4).
    assert_eq!(times, vec![0.0, 0.0, 530.0, 1060.0, 1590.0]);
    assert!(regs.iter().skip(1).all(|r| r.status == Some(200)));
    let call_ids: Vec<_> = regs
        .iter()
        .map(|r| r.msg.as_ref().and_then(|m| m.call_id().ok()))
        .collect();
    assert!(call_ids.windows(2).all(|w| w[0] == w[1]));
    let cseqs: Vec<u32> = regs
        .iter()
        .map(|r| r.msg.as_ref().map_or(0, |m| m.cseq().map_or(0, |c| c.seq)))
        .collect();
    assert!(cseqs.windows(2).all(|w| w[1] == w[0] + 1), "{cseqs:?}");
    let last = regs[4].msg.as_ref().expect("msg");
    let auth = last.header(HeaderName::Authorization).expect("auth");
    let creds = Credentials::parse(&auth).expect("creds");
    assert_eq!(creds.nc.as_deref(), Some("00000004"));
    match sim.reg.state() {
        TrunkState::Registered { expires_at } => assert_eq!(*expires_at, sim.t0 + s(2190)),
        other => panic!("not registered: {other:?}"),
    }
}

#[test]
fn granted_expiry_comes_from_our_contact() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.grant = Some(120);
    sim.prov.other_contact = Some(format!("sip:{USER}@[2001:db8:77::9]:5070"));
    sim.start();
    let st = sim.reg.status();
    // Not the other device's 3000, not the Expires header's 9999.
    assert_eq!(st.granted_expiry, Some(s(120)));
    assert_eq!(st.next_attempt, Some(sim.t0 + s(60)));
}

#[test]
fn stale_nonce_is_answered_at_once_and_not_a_failure() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov = Provider::with_nonce_ttl(sim.t0, s(300));
    sim.start();
    sim.run_until(s(600));
    let regs = sim.registers();
    let summary: Vec<(f64, Option<u16>)> = regs
        .iter()
        .map(|r| (sim.secs_since_t0(r.at), r.status))
        .collect();
    // The refresh at 530 s carries the expired nonce: 401 stale=true, answered at once.
    assert_eq!(
        summary,
        vec![
            (0.0, Some(401)),
            (0.0, Some(200)),
            (530.0, Some(401)),
            (530.0, Some(200))
        ]
    );
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    assert_eq!(sim.reg.status().consecutive_failures, 0);
}

#[test]
fn expired_nonce_without_stale_gets_one_fresh_round() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov = Provider::with_nonce_ttl(sim.t0, s(300));
    sim.prov.stale_flag = false;
    sim.start();
    sim.run_until(s(1100));
    let summary: Vec<(f64, Option<u16>)> = sim
        .registers()
        .iter()
        .map(|r| (sim.secs_since_t0(r.at), r.status))
        .collect();
    // A refresh with the cached (expired) nonce meets a plain 401: one fresh round, not a
    // credentials failure.
    assert_eq!(
        summary,
        vec![
            (0.0, Some(401)),
            (0.0, Some(200)),
            (530.0, Some(401)),
            (530.0, Some(200)),
            (1060.0, Some(401)),
            (1060.0, Some(200))
        ]
    );
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    assert_eq!(sim.reg.status().consecutive_failures, 0);
}

#[test]
fn password_changed_at_the_provider_during_refresh_is_rejected() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.start();
    sim.prov.password = "changed".to_owned();
    sim.run_until(s(531));
    // Refresh with the cached nonce: 401; fresh round: 401 again -> rejected (3 REGISTERs).
    let statuses: Vec<Option<u16>> = sim.registers().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(401), Some(200), Some(401), Some(401)]);
    assert!(matches!(
        sim.reg.state(),
        TrunkState::CredentialsRejected {
            last_error: RegError::BadCredentials { code: 401 },
            ..
        }
    ));
}

#[test]
fn endless_stale_challenges_are_bounded() {
    let mut sim = Sim::new(config(PASSWORD));
    // A provider whose nonces are expired as soon as they are issued.
    sim.prov.always_stale = true;
    sim.start();
    sim.run_until(s(1));
    let n = sim.registers().len();
    assert!(n <= 6, "{n} REGISTERs in one attempt");
    assert!(
        matches!(
            sim.reg.state(),
            TrunkState::Failing {
                last_error: RegError::TooManyRounds,
                ..
            }
        ),
        "{:?}",
        sim.reg.state()
    );
}

#[test]
fn wrong_password_is_rejected_and_retried_rarely() {
    let mut sim = Sim::new(config("wrong"));
    sim.start();
    let regs = sim.registers();
    assert_eq!(
        regs.len(),
        2,
        "REGISTER, 401, REGISTER with credentials, 401: stop"
    );
    match sim.reg.state() {
        TrunkState::CredentialsRejected {
            last_error,
            next_attempt,
        } => {
            assert_eq!(last_error, &RegError::BadCredentials { code: 401 });
            let wait = *next_attempt - sim.t0;
            assert!(wait >= s(450) && wait <= s(600), "{wait:?}");
        }
        other => panic!("not rejected: {other:?}"),
    }
    sim.run_until(s(3600));
    let regs = sim.registers();
    // At most 7 cycles (t=0 and every 7.5 to 10 min) of 2 REGISTERs in one hour.
    assert!(
        regs.len() <= 14 && regs.len() >= 12,
        "{} REGISTERs",
        regs.len()
    );
    let starts: Vec<Instant> = regs.iter().step_by(2).map(|r| r.at).collect();
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= s(450), "cycles too close");
    }
    assert!(regs.iter().all(|r| r.status == Some(401)));
    let st = sim.reg.status();
    assert_eq!(st.state, "credentials-rejected");
    assert!(st
        .last_error
        .is_some_and(|e| e.contains("credentials rejected")));
    // The password gets fixed at the provider's side: the next cycle succeeds.
    sim.prov.password = "wrong".to_owned();
    sim.run_until(s(3600 + 600));
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    assert_eq!(sim.reg.status().consecutive_failures, 0);
}

#[test]
fn forbidden_is_rejected_and_retried_rarely() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.mode = Mode::Forbidden;
    sim.start();
    assert!(matches!(
        sim.reg.state(),
        TrunkState::CredentialsRejected {
            last_error: RegError::Status { code: 403, .. },
            ..
        }
    ));
    sim.run_until(s(3600));
    let n = sim.registers().len();
    assert!((6..=8).contains(&n), "{n} REGISTERs in an hour");
    assert_eq!(
        sim.reg.status().last_error.as_deref(),
        Some("403 Forbidden")
    );
}

#[test]
fn timeouts_back_off_doubling_and_capped() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.mode = Mode::Down;
    sim.start();
    sim.run_until(s(3 * 3600));
    let regs = sim.registers();
    let mut backoffs = Vec::new();
    for w in regs.windows(2) {
        // Each REGISTER is lost: Timer F, then the backoff delay.
        backoffs.push(w[1].at - w[0].at - TIMER_F);
    }
    assert!(backoffs.len() > 20);
    for (k, b) in backoffs.iter().enumerate() {
        let nominal = s(2).saturating_mul(1 << k.min(20)).min(s(300));
        assert!(
            *b >= nominal.mul_f64(0.75) && *b <= nominal,
            "backoff {k} = {b:?}, nominal {nominal:?}"
        );
    }
    // Capped: the late ones are all between 225 s and 300 s.
    assert!(backoffs[10..].iter().all(|b| *b >= s(225) && *b <= s(300)));
    // Jittered: not all equal.
    assert!(backoffs[10..].windows(2).any(|w| w[0] != w[1]));
    match sim.reg.state() {
        TrunkState::Failing {
            attempts,
            last_error,
            ..
        } => {
            assert_eq!(*attempts as usize, regs.len());
            assert_eq!(last_error, &RegError::Timeout);
        }
        other => panic!("not failing: {other:?}"),
    }
}

#[test]
fn provider_down_then_up_recovers() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.start();
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    sim.prov.mode = Mode::Down;
    sim.run_until(s(1800));
    assert!(matches!(sim.reg.state(), TrunkState::Failing { .. }));
    let st = sim.reg.status();
    assert!(st.consecutive_failures >= 5);
    // The old binding lapsed at 600 s.
    assert_eq!(st.binding_expires_at, None);
    sim.prov.mode = Mode::Up;
    // Within one maximal backoff plus a Timer F the trunk is back.
    sim.run_until(s(1800 + 300 + 32));
    assert!(
        matches!(sim.reg.state(), TrunkState::Registered { .. }),
        "{:?}",
        sim.reg.state()
    );
    assert_eq!(sim.reg.status().consecutive_failures, 0);
    assert_eq!(sim.reg.status().last_error, None);
}

#[test]
fn refresh_in_flight_when_the_binding_lapses() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.grant = Some(60);
    sim.start();
    sim.prov.mode = Mode::Down;
    // Refresh at 30 s is lost; the binding lapses at 60 s, before Timer F at 62 s.
    sim.run_until(s(61));
    assert_eq!(sim.reg.state(), &TrunkState::Registering);
    sim.run_until(s(63));
    assert!(matches!(
        sim.reg.state(),
        TrunkState::Failing { attempts: 1, .. }
    ));
}

#[test]
fn service_unavailable_honours_retry_after() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.mode = Mode::Unavailable(120);
    sim.start();
    match sim.reg.state() {
        TrunkState::Failing {
            attempts: 1,
            last_error: RegError::Status { code: 503, .. },
            next_attempt,
        } => assert_eq!(*next_attempt - sim.t0, s(120)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn interval_too_brief_raises_the_expiry() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.min_expires = 1800;
    sim.start();
    let regs = sim.registers();
    let seq: Vec<(u32, Option<u16>)> = regs
        .iter()
        .map(|r| (expires_of(r.msg.as_ref().expect("m")), r.status))
        .collect();
    assert_eq!(
        seq,
        vec![(600, Some(401)), (600, Some(423)), (1800, Some(200))]
    );
    assert_eq!(sim.reg.requested_expiry(), s(1800));
    assert_eq!(sim.reg.status().granted_expiry, Some(s(1800)));
    assert_eq!(sim.reg.status().consecutive_failures, 0);
}

#[test]
fn interval_too_brief_without_usable_min_expires_fails() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.min_expires = 10 * 86_400;
    sim.start();
    assert!(matches!(
        sim.reg.state(),
        TrunkState::Failing {
            last_error: RegError::IntervalTooBrief,
            ..
        }
    ));
}

#[test]
fn proxy_authentication_407() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.proxy_auth = true;
    sim.start();
    let regs = sim.registers();
    assert_eq!(regs.len(), 2);
    assert_eq!(regs[0].status, Some(407));
    let second = regs[1].msg.as_ref().expect("msg");
    assert!(second.header(HeaderName::ProxyAuthorization).is_some());
    assert!(second.header(HeaderName::Authorization).is_none());
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
}

#[test]
fn challenge_for_another_realm_is_not_answered() {
    let mut cfg = config(PASSWORD);
    cfg.realm = Some("other.example".to_owned());
    let mut sim = Sim::new(cfg);
    sim.start();
    assert_eq!(sim.registers().len(), 1, "no credentials sent");
    match sim.reg.state() {
        TrunkState::CredentialsRejected { last_error, .. } => assert_eq!(
            last_error,
            &RegError::RealmMismatch {
                offered: REALM.to_owned(),
                expected: "other.example".to_owned()
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_unregisters_with_expires_zero() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.start();
    assert!(sim.prov.binding.is_some());
    sim.run_until(s(100));
    sim.stop();
    let regs = sim.registers();
    let last = regs.last().expect("un-REGISTER");
    assert_eq!(last.kind, OutgoingKind::Unregister);
    let m = last.msg.as_ref().expect("msg");
    assert_eq!(expires_of(m), 0);
    assert_eq!(
        header(m, "Contact").as_deref(),
        Some(format!("<sip:{USER}@[2001:db8:e8b1::1:1]:5060;transport=udp>").as_str())
    );
    assert!(
        m.header(HeaderName::Authorization).is_some(),
        "cached credentials"
    );
    assert_eq!(last.status, Some(200));
    assert!(sim.prov.binding.is_none());
    assert_eq!(sim.reg.state(), &TrunkState::Unregistered);
    assert!(sim.reg.is_stopped());
    assert_eq!(sim.reg.poll_timeout(), None);
    let n = sim.sent.len();
    sim.run_until(s(10_000));
    assert_eq!(sim.sent.len(), n, "nothing after stop");
}

#[test]
fn stop_before_any_binding_sends_nothing() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.prov.mode = Mode::Forbidden;
    sim.start();
    let n = sim.sent.len();
    sim.stop();
    assert_eq!(sim.sent.len(), n);
    assert_eq!(sim.reg.state(), &TrunkState::Unregistered);
    assert!(sim.reg.is_stopped());
}

#[test]
fn stop_with_provider_down_ends_after_the_timeout() {
    let mut sim = Sim::new(config(PASSWORD));
    sim.start();
    sim.prov.mode = Mode::Down;
    sim.stop();
    assert_eq!(sim.reg.state(), &TrunkState::Unregistering);
    assert!(!sim.reg.is_stopped());
    sim.run_until(s(40));
    assert_eq!(sim.reg.state(), &TrunkState::Unregistered);
    assert!(sim.reg.is_stopped());
    assert_eq!(
        sim.reg.status().last_error.as_deref(),
        Some("no response from the provider")
    );
}

#[test]
fn keepalive_options_over_udp() {
    let mut cfg = config(PASSWORD);
    cfg.keepalive = Some(s(30));
    let mut sim = Sim::new(cfg);
    sim.start();
    sim.run_until(s(300));
    let opts: Vec<&Sent> = sim
        .sent
        .iter()
        .filter(|s| s.kind == OutgoingKind::Options)
        .collect();
    assert_eq!(opts.len(), 10, "at 30, 60, ... 300 s");
    let m = opts[0].msg.as_ref().expect("msg");
    assert_eq!(
        m.start_line_raw(),
        format!("OPTIONS sip:{REALM} SIP/2.0").as_bytes()
    );
    assert_eq!(m.cseq().expect("cseq").method, Method::Options);
    let st = sim.reg.status();
    assert_eq!(st.keepalives_sent, 10);
    assert_eq!(st.keepalive_failures, 0);
    assert_eq!(st.last_keepalive_answer, Some(sim.t0 + s(300)));
    // Provider unreachable: keep-alives time out and are counted, registration unaffected
    // until its own refresh fails.
    sim.prov.mode = Mode::Down;
    sim.run_until(s(420));
    assert!(sim.reg.status().keepalive_failures >= 3);
    sim.prov.mode = Mode::Up;
    sim.run_until(s(520));
    assert_eq!(sim.reg.status().keepalive_failures, 0);
}

#[test]
fn keepalive_crlf_over_tcp_and_without_registration() {
    let mut cfg = config(PASSWORD);
    cfg.keepalive = Some(s(30));
    cfg.transport = Transport::Tcp;
    cfg.register = false;
    let mut sim = Sim::new(cfg);
    sim.start();
    sim.run_until(s(95));
    assert!(sim.registers().is_empty());
    let kinds: Vec<(f64, OutgoingKind)> = sim
        .sent
        .iter()
        .map(|x| (sim.secs_since_t0(x.at), x.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0.0, OutgoingKind::Crlf),
            (30.0, OutgoingKind::Crlf),
            (60.0, OutgoingKind::Crlf),
            (90.0, OutgoingKind::Crlf)
        ]
    );
    assert_eq!(sim.reg.state(), &TrunkState::Unregistered);
}

#[test]
fn tcp_register_uses_tcp_via_and_contact() {
    let mut cfg = config(PASSWORD);
    cfg.transport = Transport::Tcp;
    cfg.port = 5080;
    cfg.dest = None;
    let mut reg = Registration::new(cfg).expect("cfg");
    reg.start(Instant::now());
    // A name without a located address: nothing to send yet.
    assert!(reg.poll_transmit().is_none());
    assert_eq!(reg.state(), &TrunkState::Resolving);
    let server: SocketAddr = "[2001:db8:5::7]:5080".parse().expect("addr");
    reg.set_targets(&[server]);
    let out = reg.poll_transmit().expect("REGISTER");
    assert_eq!(out.dest, server);
    let m = parse(&out.data);
    assert_eq!(
        m.start_line_raw(),
        format!("REGISTER sip:{REALM}:5080 SIP/2.0").as_bytes()
    );
    assert_eq!(&m.top_via().expect("via").transport[..], b"TCP");
    assert!(header(&m, "Contact").is_some_and(|c| c.ends_with(";transport=tcp>")));
}

#[test]
fn responses_of_other_transactions_are_ignored() {
    let now = Instant::now();
    let mut reg = Registration::new(config(PASSWORD)).expect("cfg");
    reg.start(now);
    let out = reg.poll_transmit().expect("REGISTER");
    let req = parse(&out.data);
    let mut prov = Provider::new(now);
    prov.mode = Mode::Forbidden;
    // A response with another branch (an older transaction) changes nothing.
    let text = String::from_utf8_lossy(&out.data).replace(
        std::str::from_utf8(&out.branch).expect("utf8"),
        "z9hG4bKold",
    );
    let old = parse(&Bytes::from(text));
    let resp = prov.handle(now, &old).expect("resp");
    assert!(!reg.handle_response(now, &parse(&resp)));
    assert_eq!(reg.state(), &TrunkState::Registering);
    // Provisional responses keep the transaction.
    let trying = ResponseBuilder::new(&req, 100, "Trying", None).build();
    assert!(reg.handle_response(now, &parse(&trying)));
    assert_eq!(reg.state(), &TrunkState::Registering);
    // An unknown transaction timeout is not ours.
    assert!(!reg.transaction_timeout(now, b"z9hG4bKnope"));
    // Requests are never responses.
    assert!(!reg.handle_response(now, &req));
}

#[test]
fn domain_forms_and_config_errors() {
    let mut cfg = config(PASSWORD);
    cfg.domain = "2001:db8:5::1".to_owned();
    cfg.dest = None;
    let mut reg = Registration::new(cfg).expect("bare IPv6 domain");
    assert_eq!(reg.aor(), format!("sip:{USER}@[2001:db8:5::1]"));
    reg.start(Instant::now());
    let out = reg.poll_transmit().expect("REGISTER");
    // The literal is its own destination; no resolver needed (and none is listened to).
    assert_eq!(out.dest, "[2001:db8:5::1]:5060".parse().expect("addr"));
    reg.set_targets(&["[2001:db8:5::9]:5060".parse().expect("addr")]);
    assert_eq!(
        reg.targets(),
        ["[2001:db8:5::1]:5060".parse().expect("addr")]
    );
    let m = parse(&out.data);
    assert_eq!(m.start_line_raw(), b"REGISTER sip:[2001:db8:5::1] SIP/2.0");
    assert!(m.request_uri().is_ok());

    let bad = |f: fn(&mut RegistrationConfig)| {
        let mut c = config(PASSWORD);
        f(&mut c);
        Registration::new(c).err()
    };
    assert_eq!(
        bad(|c| c.username = String::new()),
        Some(ConfigError::EmptyUsername)
    );
    assert!(matches!(
        bad(|c| c.username = "a b".into()),
        Some(ConfigError::InvalidUsername(_))
    ));
    assert!(matches!(
        bad(|c| c.domain = "bad domain".into()),
        Some(ConfigError::InvalidDomain(_))
    ));
    assert_eq!(bad(|c| c.expiry = s(0)), Some(ConfigError::ZeroExpiry));
    assert_eq!(bad(|c| c.port = 0), Some(ConfigError::ZeroPort));
    assert_eq!(
        bad(|c| c.keepalive = Some(s(0))),
        Some(ConfigError::ZeroKeepalive)
    );
    assert_eq!(
        bad(|c| c.retry.initial_backoff = s(0)),
        Some(ConfigError::ZeroRetry)
    );
    // The secret never shows in Debug output.
    let dbg = format!("{:?}", config("hunter2"));
    assert!(!dbg.contains("hunter2"));
}

#[test]
fn auth_username_differs_from_the_aor_user() {
    let mut cfg = config(PASSWORD);
    cfg.auth_username = Some("auth-id-77".to_owned());
    let mut reg = Registration::new(cfg).expect("cfg");
    let now = Instant::now();
    reg.start(now);
    let first = parse(&reg.poll_transmit().expect("REGISTER").data);
    let mut prov = Provider::new(now);
    let challenge = prov.handle(now, &first).expect("401");
    assert!(reg.handle_response(now, &parse(&challenge)));
    let second = parse(&reg.poll_transmit().expect("REGISTER").data);
    let auth = second.header(HeaderName::Authorization).expect("auth");
    let creds = Credentials::parse(&auth).expect("creds");
    assert_eq!(creds.username, "auth-id-77");
    assert_eq!(
        second.to_hdr().expect("to").uri.to_string(),
        format!("sip:{USER}@{REALM}")
    );
}

// ----- RFC 3263 server lists: waiting for an address, failover, sticky server -----------------

fn server(n: u8) -> SocketAddr {
    SocketAddr::new(format!("2001:db8:5::{n}").parse().expect("ip"), 5060)
}

/// A trunk whose domain is a name: the servers come from `set_targets`.
fn located() -> RegistrationConfig {
    let mut c = config(PASSWORD);
    c.dest = None;
    c.keepalive = Some(s(30));
    c
}

fn dests(sim: &Sim) -> Vec<(f64, SocketAddr)> {
    sim.registers()
        .iter()
        .map(|r| (sim.secs_since_t0(r.at), r.dest))
        .collect()
}

#[test]
fn a_name_without_address_waits_and_registers_once_located() {
    let mut sim = Sim::new(located());
    sim.start();
    assert_eq!(sim.reg.state(), &TrunkState::Resolving);
    assert_eq!(sim.reg.status().state, "resolving");
    assert!(sim.sent.is_empty());
    // Nothing is sent while waiting, not even the keep-alive.
    sim.run_until(s(100));
    assert!(sim.sent.is_empty(), "{:?}", sim.sent);
    sim.reg.set_targets(&[server(1), server(2)]);
    sim.pump();
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    assert_eq!(dests(&sim), [(100.0, server(1)), (100.0, server(1))]);
    assert_eq!(sim.reg.status().target, Some(server(1)));
}

#[test]
fn timeout_fails_over_to_the_next_server_which_then_keeps_the_registration() {
    let mut sim = Sim::new(located());
    sim.down.push(server(1));
    sim.reg.set_targets(&[server(1), server(2), server(3)]);
    sim.start();
    sim.run_until(s(40));
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    // server 1 lost the REGISTER; after Timer F the attempt starts afresh at server 2.
    assert_eq!(
        dests(&sim),
        [(0.0, server(1)), (32.0, server(2)), (32.0, server(2))]
    );
    assert_eq!(sim.reg.status().target, Some(server(2)));
    assert_eq!(sim.reg.status().consecutive_failures, 0);
    // Refreshes and keep-alives go where the binding is.
    sim.run_until(s(32 + 600));
    let later: Vec<SocketAddr> = sim.sent[3..].iter().map(|x| x.dest).collect();
    assert!(!later.is_empty());
    assert!(later.iter().all(|d| *d == server(2)), "{later:?}");
    assert!(sim.sent[3..]
        .iter()
        .any(|x| x.kind == OutgoingKind::Options));
    assert!(sim.sent[3..]
        .iter()
        .any(|x| x.kind == OutgoingKind::Register));
}

#[test]
fn a_503_fails_over_at_once() {
    let mut sim = Sim::new(located());
    sim.busy.push(server(1));
    sim.reg.set_targets(&[server(1), server(2)]);
    sim.start();
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
    assert_eq!(
        dests(&sim),
        [(0.0, server(1)), (0.0, server(2)), (0.0, server(2))]
    );
    assert_eq!(sim.registers()[0].status, Some(503));
}

#[test]
fn when_every_server_fails_the_next_attempt_starts_at_the_first_again() {
    let mut sim = Sim::new(located());
    sim.down.push(server(1));
    sim.busy.push(server(2));
    sim.reg.set_targets(&[server(1), server(2)]);
    sim.start();
    sim.run_until(s(33));
    // server 1: timeout at 32 s; server 2: 503 at once; both tried: back off.
    assert!(matches!(
        sim.reg.state(),
        TrunkState::Failing { attempts: 1, .. }
    ));
    assert_eq!(dests(&sim), [(0.0, server(1)), (32.0, server(2))]);
    sim.down.clear();
    sim.busy.clear();
    sim.run_until(s(40));
    let d = dests(&sim);
    assert_eq!(d.len(), 4, "{d:?}");
    assert_eq!(d[2].1, server(1), "back to the most preferred server");
    assert!(
        d[2].0 >= 33.5 && d[2].0 <= 34.0,
        "2 s back-off, jittered: {d:?}"
    );
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
}

#[test]
fn a_new_list_keeps_the_server_in_use_while_it_is_listed() {
    let mut sim = Sim::new(located());
    sim.reg.set_targets(&[server(1)]);
    sim.start();
    assert_eq!(sim.reg.status().target, Some(server(1)));
    // Re-resolution adds a more preferred server: the binding lives on server 1, stay there.
    sim.reg.set_targets(&[server(3), server(1)]);
    assert_eq!(sim.reg.status().target, Some(server(1)));
    sim.run_until(s(600));
    assert_eq!(sim.registers().last().map(|r| r.dest), Some(server(1)));
    // Server 1 is gone from DNS: the next refresh goes to the new first server.
    sim.reg.set_targets(&[server(3)]);
    let n = sim.registers().len();
    sim.run_until(s(1200));
    assert!(sim.registers().len() > n);
    assert!(sim.registers()[n..].iter().all(|r| r.dest == server(3)));
    assert!(matches!(sim.reg.state(), TrunkState::Registered { .. }));
}
