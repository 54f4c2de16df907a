//! Black-box test of `podpbx_trunk::Registration` against a real Kamailio provider
//! (`tests/common/kamailio.rs`, `tests/kamailio/provider.cfg`).
//!
//! A tiny test-only shell drives the sans-IO state machine: a std `UdpSocket` on loopback, the
//! `podpbx_sip` transaction layer for the client transactions (retransmissions, Timer F), and
//! the `podpbx_sip` parser for what comes back. Every loop is bounded in count and time.
//! Set `PODPBX_SKIP_KAMAILIO=1` to skip these tests on a machine without Kamailio.

#[path = "common/kamailio.rs"]
mod kamailio;
#[path = "common/ports.rs"]
mod ports;

use bytes::Bytes;
use kamailio::{Account, Kamailio, ProviderConfig, Source};
use podpbx_sip::builder::ack_for;
use podpbx_sip::digest::DigestClient;
use podpbx_sip::transaction::{
    ClientTxId, Limits, ResponseDisposition, Timers, TransactionLayer, TxEvent, TxId,
};
use podpbx_sip::{
    Framing, HeaderName, Message, Method, Peer, RequestBuilder, ResponseBuilder, Transport,
};
use podpbx_trunk::{OutgoingKind, RegError, Registration, RegistrationConfig, TrunkState};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const USER: &str = "trunkuser";
const PASSWORD: &str = "Tr0nk-secret";
const DID: &str = "4930123456";
const REALM: &str = "provider.test";

fn skip() -> bool {
    if std::env::var_os("PODPBX_SKIP_KAMAILIO").is_some() {
        eprintln!("PODPBX_SKIP_KAMAILIO set: skipping");
        return true;
    }
    false
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn provider(extra: impl FnOnce(&mut ProviderConfig)) -> Kamailio {
    let mut cfg = ProviderConfig {
        accounts: vec![Account::new(USER, PASSWORD).did(DID)],
        subscribers: vec![Source::host(ip("::1"))],
        carriers: vec![Source::host(ip("127.0.0.1"))],
        min_expires: 4,
        max_expires: 3600,
        ..ProviderConfig::default()
    };
    extra(&mut cfg);
    Kamailio::start(&cfg)
}

fn parse(data: &[u8]) -> Option<Message> {
    Message::parse(Bytes::copy_from_slice(data), Framing::Datagram).ok()
}

/// What the shell saw, for assertions.
#[derive(Debug, Default)]
struct Seen {
    /// (time since start, kind) of every REGISTER/OPTIONS handed to the transaction layer.
    sent: Vec<(Duration, OutgoingKind)>,
    /// (status, CSeq method) of every final response delivered to the state machine.
    finals: Vec<(u16, Method)>,
    /// Every WWW-Authenticate value received.
    challenges: Vec<String>,
    /// Requests the provider sent us (INVITEs routed to our contact, ACKs).
    requests: Vec<Message>,
}

/// The test-only UDP shell around one `Registration`.
struct Shell {
    sock: UdpSocket,
    reg: Registration,
    layer: TransactionLayer,
    branches: HashMap<ClientTxId, Bytes>,
    t0: Instant,
    seen: Seen,
}

impl Shell {
    /// Binds `bind_ip` (port 0) and builds the registration towards `provider`.
    fn new(
        bind_ip: IpAddr,
        provider: SocketAddr,
        password: &str,
        tune: impl FnOnce(&mut RegistrationConfig),
    ) -> Shell {
        let sock = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).expect("bind shell");
        let local = sock.local_addr().expect("local addr");
        let mut cfg = RegistrationConfig::new("kamailio", REALM, USER, password, local, [42; 16]);
        cfg.port = provider.port();
        cfg.dest = Some(provider);
        cfg.expiry = Duration::from_secs(3600);
        tune(&mut cfg);
        Shell {
            sock,
            reg: Registration::new(cfg).expect("registration config"),
            layer: TransactionLayer::new(Timers::default(), Limits::default()),
            branches: HashMap::new(),
            t0: Instant::now(),
            seen: Seen::default(),
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    fn flush(&mut self, now: Instant) {
        for _ in 0..100 {
            let Some(out) = self.reg.poll_transmit() else {
                break;
            };
            self.seen.sent.push((now - self.t0, out.kind));
            let Some(method) = out.kind.method() else {
                continue;
            };
            let peer = Peer {
                addr: out.dest,
                transport: Transport::Udp,
                conn: 0,
            };
            let id = self
                .layer
                .send_request(now, out.branch.clone(), method, out.data, peer)
                .expect("send_request");
            self.branches.insert(id, out.branch);
        }
        for _ in 0..1000 {
            let Some(t) = self.layer.poll_transmit() else {
                break;
            };
            let _ = self.sock.send_to(&t.data, t.peer.addr);
        }
        for _ in 0..1000 {
            let Some(ev) = self.layer.poll_event() else {
                break;
            };
            match ev {
                TxEvent::Timeout(TxId::Client(id)) | TxEvent::TransportError(TxId::Client(id)) => {
                    if let Some(b) = self.branches.get(&id).cloned() {
                        self.reg.transaction_timeout(now, &b);
                    }
                }
                TxEvent::Terminated(TxId::Client(id)) => {
                    self.branches.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn on_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        let Some(msg) = parse(data) else { return };
        if msg.is_request() {
            // The provider routed a call to our contact: refuse it statelessly (480) so the
            // provider's transaction ends; ACKs are just recorded.
            if msg.method() == Some(&Method::Invite) {
                let resp = ResponseBuilder::new(&msg, 480, "Temporarily Unavailable", Some(from))
                    .to_tag("shell")
                    .build();
                let _ = self.sock.send_to(&resp, from);
            }
            self.seen.requests.push(msg);
            return;
        }
        if let ResponseDisposition::Deliver(_) = self.layer.on_response(now, &msg) {
            if let (Some(code), Ok(cseq)) = (msg.status(), msg.cseq()) {
                if code >= 200 {
                    self.seen.finals.push((code, cseq.method));
                }
                for v in msg.header_values(HeaderName::WwwAuthenticate) {
                    self.seen
                        .challenges
                        .push(String::from_utf8_lossy(&v).into_owned());
                }
            }
            self.reg.handle_response(now, &msg);
        }
    }

    /// Runs the shell until `done` says so or `limit` passes; returns whether `done` held.
    fn run(&mut self, limit: Duration, mut done: impl FnMut(&Shell) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        for _ in 0..100_000 {
            let now = Instant::now();
            if let Some(t) = self.layer.poll_timeout().filter(|t| *t <= now) {
                let _ = t;
                self.layer.handle_timeout(now);
            }
            if self.reg.poll_timeout().is_some_and(|t| t <= now) {
                self.reg.handle_timeout(now);
            }
            self.flush(now);
            if done(self) {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let next = [
                self.layer.poll_timeout(),
                self.reg.poll_timeout(),
                Some(deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(deadline);
            let wait = next
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            let _ = self.sock.set_read_timeout(Some(wait));
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let data = buf[..n].to_vec();
                self.on_datagram(Instant::now(), &data, from);
            }
        }
        false
    }

    fn registers_sent(&self) -> usize {
        self.seen
            .sent
            .iter()
            .filter(|(_, k)| matches!(k, OutgoingKind::Register | OutgoingKind::Unregister))
            .count()
    }

    fn register_finals(&self) -> Vec<u16> {
        self.seen
            .finals
            .iter()
            .filter(|(_, m)| *m == Method::Register)
            .map(|(c, _)| *c)
            .collect()
    }
}

fn is_registered(s: &Shell) -> bool {
    matches!(s.reg.state(), TrunkState::Registered { .. })
}

#[test]
fn registers_refreshes_receives_a_did_call_and_unregisters() {
    if skip() {
        return;
    }
    let kam = provider(|_| {});
    let mut sh = Shell::new(ip("::1"), kam.addr_v6(), PASSWORD, |c| {
        // Below the provider's min_expires of 4 s: the 423 raises it.
        c.expiry = Duration::from_secs(2);
        c.keepalive = Some(Duration::from_secs(1));
    });
    sh.reg.start(Instant::now());
    assert!(
        sh.run(Duration::from_secs(5), is_registered),
        "not registered: {:?}\n{}",
        sh.reg.status(),
        kam.log_text()
    );
    // REGISTER -> 401; with credentials and Expires 2 -> 423; with Expires 4 -> 200.
    assert_eq!(sh.register_finals(), vec![401, 423, 200]);
    assert_eq!(sh.reg.requested_expiry(), Duration::from_secs(4));
    assert_eq!(sh.reg.status().granted_expiry, Some(Duration::from_secs(4)));

    // Kamailio holds our contact.
    let b = kam.binding(USER).expect("Kamailio has no binding");
    assert_eq!(b.contact, sh.reg.contact_uri());
    assert_eq!(b.count, 1);
    assert!((1..=4).contains(&b.expires), "{b:?}");
    assert!(b.contact.starts_with("sip:trunkuser@[::1]:"));

    // Refreshes every 2 s keep the binding; the keep-alive OPTIONS are answered.
    let before = sh.registers_sent();
    let start = Instant::now();
    sh.run(Duration::from_millis(4600), |_| false);
    let refreshes = sh.registers_sent() - before;
    assert!(
        (2..=3).contains(&refreshes),
        "{refreshes} refreshes in {:?}",
        start.elapsed()
    );
    assert!(is_registered(&sh), "{:?}", sh.reg.status());
    assert!(sh.register_finals().ends_with(&[200, 200]));
    let st = sh.reg.status();
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.keepalives_sent >= 3, "{st:?}");
    assert!(st.last_keepalive_answer.is_some(), "{st:?}");
    assert_eq!(st.keepalive_failures, 0, "{st:?}");
    assert!(kam.binding(USER).is_some());

    // A carrier calls the DID: Kamailio looks up our binding and delivers the INVITE to our
    // socket, the DID in the Request-URI.
    let carrier = UdpSocket::bind("127.0.0.1:0").expect("bind carrier");
    let c = carrier.local_addr().expect("addr");
    let invite = RequestBuilder::new(&Method::Invite, &format!("sip:{DID}@{REALM}"))
        .header(
            "Via",
            &format!("SIP/2.0/UDP {c};branch=z9hG4bKcarrier1;rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", "<sip:+4940999@carrier.test>;tag=c1")
        .header("To", &format!("<sip:{DID}@{REALM}>"))
        .header("Call-ID", "carrier-call-1")
        .header("CSeq", "1 INVITE")
        .header("Contact", &format!("<sip:+4940999@{c}>"))
        .build();
    carrier
        .send_to(&invite, kam.addr_v4())
        .expect("send INVITE");
    let got = sh.run(Duration::from_secs(3), |s| {
        s.seen
            .requests
            .iter()
            .any(|m| m.method() == Some(&Method::Invite))
    });
    assert!(got, "the DID call did not reach us:\n{}", kam.log_text());
    let inv = sh
        .seen
        .requests
        .iter()
        .find(|m| m.method() == Some(&Method::Invite))
        .expect("INVITE");
    let ruri = inv.request_uri().expect("R-URI");
    assert_eq!(ruri.user.as_deref(), Some(DID.as_bytes()));
    assert_eq!(
        ruri.host,
        Some(podpbx_sip::Host::V6("::1".parse().expect("v6")))
    );
    assert_eq!(ruri.port, Some(sh.local().port()));
    assert!(inv.header(HeaderName::RecordRoute).is_some());
    // The carrier gets our 480 back through the provider.
    carrier
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    let mut carrier_final = None;
    for _ in 0..10 {
        if let Ok(n) = carrier.recv(&mut buf) {
            let m = parse(&buf[..n]);
            if let Some(code) = m.as_ref().and_then(Message::status).filter(|c| *c >= 200) {
                carrier_final = Some(code);
                if let Some(m) = m {
                    let req = parse(&invite).expect("own INVITE");
                    let _ = carrier.send_to(&ack_for(&req, &m), kam.addr_v4());
                }
                break;
            }
        }
    }
    assert_eq!(carrier_final, Some(480));

    // Stop: the binding goes away.
    sh.reg.stop(Instant::now());
    assert_eq!(sh.reg.state(), &TrunkState::Unregistering);
    assert!(sh.run(Duration::from_secs(3), |s| s.reg.is_stopped()));
    assert_eq!(sh.reg.state(), &TrunkState::Unregistered);
    assert_eq!(sh.register_finals().last(), Some(&200));
    assert_eq!(kam.binding(USER), None, "binding left after un-REGISTER");
}

#[test]
fn stale_nonce_from_kamailio_is_followed_without_failing() {
    if skip() {
        return;
    }
    // Nonces live 1 s; refreshes every 2 s carry an expired one.
    let kam = provider(|c| c.nonce_expire = 1);
    let mut sh = Shell::new(ip("::1"), kam.addr_v6(), PASSWORD, |c| {
        c.expiry = Duration::from_secs(4);
    });
    sh.reg.start(Instant::now());
    assert!(sh.run(Duration::from_secs(3), is_registered));
    let mut ever_failed = false;
    sh.run(Duration::from_millis(4500), |s| {
        ever_failed |= !is_registered(s);
        false
    });
    assert!(!ever_failed, "left Registered: {:?}", sh.reg.status());
    assert!(is_registered(&sh));
    assert_eq!(sh.reg.status().consecutive_failures, 0);
    assert!(
        sh.seen.challenges.iter().any(|c| c.contains("stale=true")),
        "no stale challenge seen: {:?}",
        sh.seen.challenges
    );
    // Every refresh is REGISTER (expired nonce) -> 401 stale -> REGISTER -> 200.
    let finals = sh.register_finals();
    assert!(finals.ends_with(&[401, 200, 401, 200]), "{finals:?}");
    assert!(kam.binding(USER).is_some());
}

#[test]
fn expired_nonce_without_stale_gets_one_fresh_round() {
    if skip() {
        return;
    }
    // This provider answers an expired nonce with a plain new challenge (no stale=true): the
    // refresh must not be taken for a wrong password.
    let kam = provider(|c| {
        c.nonce_expire = 1;
        c.stale = false;
    });
    let mut sh = Shell::new(ip("::1"), kam.addr_v6(), PASSWORD, |c| {
        c.expiry = Duration::from_secs(4);
    });
    sh.reg.start(Instant::now());
    assert!(sh.run(Duration::from_secs(3), is_registered));
    let mut ever_failed = false;
    sh.run(Duration::from_millis(4500), |s| {
        ever_failed |= !is_registered(s);
        false
    });
    assert!(!ever_failed, "left Registered: {:?}", sh.reg.status());
    assert!(sh.seen.challenges.iter().all(|c| !c.contains("stale")));
    let finals = sh.register_finals();
    assert!(finals.ends_with(&[401, 200, 401, 200]), "{finals:?}");
}

#[test]
fn wrong_password_is_rejected_with_few_attempts() {
    if skip() {
        return;
    }
    let kam = provider(|_| {});
    let mut sh = Shell::new(ip("::1"), kam.addr_v6(), "not-the-password", |c| {
        // Compressed time: the rejected-credentials retry is 10 min in production.
        c.retry.rejected_retry = Duration::from_millis(1500);
    });
    let started = Instant::now();
    sh.reg.start(started);
    assert!(sh.run(Duration::from_secs(3), |s| matches!(
        s.reg.state(),
        TrunkState::CredentialsRejected { .. }
    )));
    match sh.reg.state() {
        TrunkState::CredentialsRejected { last_error, .. } => {
            assert_eq!(last_error, &RegError::BadCredentials { code: 401 });
        }
        other => panic!("{other:?}"),
    }
    sh.run(Duration::from_secs(5), |_| false);
    let elapsed = started.elapsed();
    // Each cycle is exactly REGISTER/401 + REGISTER with credentials/401, and cycles are at
    // least 0.75 * 1.5 s apart: at most 2 * (elapsed / 1.125 s + 1) REGISTERs.
    let n = sh.registers_sent();
    let bound = 2 * (elapsed.as_secs_f64() / 1.125).floor() as usize + 2;
    assert!(
        n >= 4 && n <= bound,
        "{n} REGISTERs in {elapsed:?} (bound {bound})"
    );
    assert!(sh.register_finals().iter().all(|c| *c == 401));
    assert!(matches!(
        sh.reg.state(),
        TrunkState::CredentialsRejected { .. }
    ));
    assert_eq!(kam.binding(USER), None);
}

#[test]
fn foreign_source_address_is_refused_with_403() {
    if skip() {
        return;
    }
    let kam = provider(|_| {});
    // 127.0.0.2 is neither a subscriber (::1) nor a carrier (127.0.0.1) address.
    let mut sh = Shell::new(ip("127.0.0.2"), kam.addr_v4(), PASSWORD, |_| {});
    sh.reg.start(Instant::now());
    assert!(sh.run(Duration::from_secs(3), |s| matches!(
        s.reg.state(),
        TrunkState::CredentialsRejected { .. }
    )));
    match sh.reg.state() {
        TrunkState::CredentialsRejected { last_error, .. } => assert_eq!(
            last_error,
            &RegError::Status {
                code: 403,
                reason: "Source Address Not Allowed".to_owned()
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(sh.registers_sent(), 1, "no credentials are sent to a 403");
    assert_eq!(kam.binding(USER), None);
    assert!(kam.log_text().contains("source address not allowed"));

    // The same account from the carrier address (allowed for calls, not registrations) is
    // refused too: registering is for subscriber addresses only.
    let mut sh = Shell::new(ip("127.0.0.1"), kam.addr_v4(), PASSWORD, |_| {});
    sh.reg.start(Instant::now());
    assert!(sh.run(Duration::from_secs(3), |s| matches!(
        s.reg.state(),
        TrunkState::CredentialsRejected { .. }
    )));
    assert_eq!(sh.register_finals(), vec![403]);
}

/// The provider's outbound route, which the call-control work relies on: an INVITE from the
/// subscriber address is challenged with 407, and with credentials relayed to the UAS.
#[test]
fn outbound_invite_is_challenged_then_routed_to_the_uas() {
    if skip() {
        return;
    }
    let uas = UdpSocket::bind("127.0.0.1:0").expect("bind uas");
    let uas_addr = uas.local_addr().expect("addr");
    let kam = provider(|c| c.uas = Some(uas_addr));
    let pbx = UdpSocket::bind("[::1]:0").expect("bind pbx");
    let me = pbx.local_addr().expect("addr");
    let dest = kam.addr_v6();
    pbx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    uas.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let ruri = format!("sip:+4940123456@{REALM}");
    let invite = |branch: &str, cseq: u32, auth: Option<&str>| {
        let mut b = RequestBuilder::new(&Method::Invite, &ruri)
            .header("Via", &format!("SIP/2.0/UDP {me};branch={branch};rport"))
            .header("Max-Forwards", "70")
            .header("From", &format!("<sip:{USER}@{REALM}>;tag=out1"))
            .header("To", &format!("<{ruri}>"))
            .header("Call-ID", "outbound-call-1")
            .header("CSeq", &format!("{cseq} INVITE"))
            .header("Contact", &format!("<sip:{USER}@{me}>"));
        if let Some(a) = auth {
            b = b.header("Proxy-Authorization", a);
        }
        b.build()
    };
    // Sends `data` and returns the first final response (ACKing non-2xx), bounded.
    let exchange = |data: &Bytes, other: Option<&UdpSocket>| -> Option<Message> {
        let req = parse(data)?;
        let mut buf = vec![0u8; 65536];
        pbx.send_to(data, dest).ok()?;
        for _ in 0..20 {
            if let Some(u) = other {
                // Play the UAS: answer the relayed INVITE with 486.
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    if let Some(m) =
                        parse(&buf[..n]).filter(|m| m.method() == Some(&Method::Invite))
                    {
                        let r = ResponseBuilder::new(&m, 486, "Busy Here", Some(from))
                            .to_tag("uas")
                            .build();
                        let _ = u.send_to(&r, from);
                    }
                }
            }
            if let Ok(n) = pbx.recv(&mut buf) {
                if let Some(m) = parse(&buf[..n]).filter(|m| m.status().is_some_and(|c| c >= 200)) {
                    let _ = pbx.send_to(&ack_for(&req, &m), dest);
                    return Some(m);
                }
            }
        }
        None
    };
    let first = exchange(&invite("z9hG4bKout1", 1, None), None).expect("no answer to INVITE");
    assert_eq!(first.status(), Some(407), "{first:?}");
    let challenges: Vec<Bytes> = first.header_values(HeaderName::ProxyAuthenticate).collect();
    let mut digest = DigestClient::new(USER, PASSWORD, vec![5u8; 16]);
    digest.on_challenge(&challenges).expect("usable challenge");
    let auth = digest
        .authorization("INVITE", &ruri, b"")
        .expect("credentials");
    let second = exchange(&invite("z9hG4bKout2", 2, Some(&auth)), Some(&uas))
        .expect("no answer to the authenticated INVITE");
    assert_eq!(second.status(), Some(486), "{second:?}\n{}", kam.log_text());
}

/// The harness's TCP option: Kamailio also listens on TCP and answers there.
#[test]
fn provider_answers_over_tcp_too() {
    if skip() {
        return;
    }
    use std::io::{Read, Write};
    let kam = provider(|c| c.tcp = true);
    let mut s = std::net::TcpStream::connect_timeout(&kam.addr_v6(), Duration::from_secs(2))
        .expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let me = s.local_addr().expect("addr");
    let req = RequestBuilder::new(&Method::Options, &format!("sip:{REALM}"))
        .header("Via", &format!("SIP/2.0/TCP {me};branch=z9hG4bKtcp1"))
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:{USER}@{REALM}>;tag=t1"))
        .header("To", &format!("<sip:{REALM}>"))
        .header("Call-ID", "tcp-options-1")
        .header("CSeq", "1 OPTIONS")
        .build();
    s.write_all(&req).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..25 {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("SIP/2.0 200"),
        "{text}\n{}",
        kam.log_text()
    );
}
