//! Registrar behaviour on parsed REGISTER (and MESSAGE) requests.

use bytes::Bytes;
use podpbx_registrar::*;
use podpbx_sip::digest::{compute_response, ha1, Challenge, Credentials, DigestClient};
use podpbx_sip::{Framing, Message, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REALM: &str = "pbx.example";

/// Counts allocations per thread (for `a_refresh_allocates_only_its_reply`); other tests are
/// unaffected.
struct Counting;

thread_local! {
    static ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Env {
    reg: Registrar,
    t0: Instant,
    w0: SystemTime,
}

fn settings() -> Settings {
    let mut s = Settings::new(REALM, b"0123456789abcdef-test-key".to_vec());
    s.max_failures = 3;
    s.failure_window = Duration::from_secs(60);
    s.block_for = Duration::from_secs(300);
    s
}

fn users() -> UserDb {
    let mut multi = User::new("1001", "secret");
    multi.max_contacts = 2;
    let mut restricted = User::new("lan", "pw");
    restricted.allowed_sources = vec!["203.0.113.0/24".parse().expect("cidr")];
    let mut door = User::new("door", "bell");
    door.allow_rfc2069 = true;
    [multi, door, restricted].into_iter().collect()
}

fn env_with(s: Settings) -> Env {
    let t0 = Instant::now();
    Env {
        reg: Registrar::new(s, users(), t0),
        t0,
        w0: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn env() -> Env {
    env_with(settings())
}

fn flow(src: &str) -> Flow {
    Flow {
        remote: src.parse::<SocketAddr>().expect("addr"),
        transport: Transport::Udp,
        local: "198.51.100.1:5060".parse().expect("addr"),
        conn: 0,
    }
}

/// A REGISTER for `to_user`, written as text with CRLF line ends, then parsed.
struct Req<'a> {
    to: &'a str,
    from: &'a str,
    contacts: Vec<&'a str>,
    expires: Option<&'a str>,
    cseq: u32,
    call_id: &'a str,
    auth: Option<String>,
}

impl<'a> Req<'a> {
    fn new(to: &'a str) -> Self {
        Req {
            to,
            from: to,
            contacts: vec![],
            expires: None,
            cseq: 1,
            call_id: "call-1@host",
            auth: None,
        }
    }
    fn contact(mut self, c: &'a str) -> Self {
        self.contacts.push(c);
        self
    }
    fn expires(mut self, e: &'a str) -> Self {
        self.expires = Some(e);
        self
    }
    fn cseq(mut self, n: u32) -> Self {
        self.cseq = n;
        self
    }
    fn call_id(mut self, c: &'a str) -> Self {
        self.call_id = c;
        self
    }
    fn auth(mut self, a: Option<String>) -> Self {
        self.auth = a;
        self
    }
    fn text(&self) -> String {
        let mut t = format!(
            "REGISTER sip:pbx.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-{}-{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{}@pbx.example>;tag=ft{}\r\n\
             To: <sip:{}@pbx.example>\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n\
             User-Agent: TestPhone/1.0\r\n",
            self.cseq, self.call_id, self.from, self.cseq, self.to, self.call_id, self.cseq
        );
        for c in &self.contacts {
            t.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = self.expires {
            t.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = &self.auth {
            t.push_str(&format!("Authorization: {a}\r\n"));
        }
        t.push_str("Content-Length: 0\r\n\r\n");
        t
    }
    fn msg(&self) -> Message {
        Message::parse(Bytes::from(self.text()), Framing::Datagram).expect("test REGISTER parses")
    }
}

fn challenges(o: &Outcome) -> Vec<String> {
    match &o.reply {
        Reply::Challenge {
            kind: AuthKind::Www,
            values,
        } => values.clone(),
        other => panic!("expected a 401 challenge, got {other:?}"),
    }
}

fn ok_contacts(o: &Outcome) -> Vec<String> {
    match &o.reply {
        Reply::Ok { contacts, .. } => contacts.clone(),
        other => panic!("expected 200, got {other:?}"),
    }
}

impl Env {
    fn at(&self, secs: u64) -> (Instant, SystemTime) {
        (
            self.t0 + Duration::from_secs(secs),
            self.w0 + Duration::from_secs(secs),
        )
    }

    fn send(&mut self, secs: u64, r: &Req, src: &str) -> Outcome {
        self.send_msg(secs, &r.msg(), src)
    }

    fn send_msg(&mut self, secs: u64, m: &Message, src: &str) -> Outcome {
        let (now, wall) = self.at(secs);
        self.reg.handle_register(now, wall, m, flow(src))
    }

    /// Challenge, answer with a DigestClient; returns the final outcome.
    fn register(&mut self, secs: u64, r: Req, src: &str, user: &str, pass: &str) -> Outcome {
        let first = self.send(secs, &r, src);
        let ch = challenges(&first);
        let mut client = DigestClient::new(user, pass, b"cnonce-seed".to_vec());
        client.on_challenge(&ch).expect("usable challenge");
        let auth = client
            .authorization("REGISTER", "sip:pbx.example", b"")
            .expect("credentials");
        let next = r.cseq + 1;
        let r = r.cseq(next).auth(Some(auth));
        self.send(secs, &r, src)
    }
}

const PHONE: &str = "192.168.1.10:5060";
const C1: &str = "<sip:1001@192.168.1.10:5060>";

#[test]
fn first_register_gets_challenge_then_200_with_qop() {
    let mut e = env();
    let o = e.send(0, &Req::new("1001").contact(C1), PHONE);
    assert!(!o.changed && o.events.is_empty());
    let ch = challenges(&o);
    assert_eq!(ch.len(), 1);
    let c = Challenge::parse(&ch[0]).expect("challenge");
    assert_eq!(c.realm, REALM);
    assert!(c.qop.contains(&"auth".to_string()) && !c.stale);

    let o = e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    assert!(o.changed);
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060>;expires=3600".to_string()]
    );
    assert!(matches!(&o.reply, Reply::Ok { date, .. } if date == "Tue, 14 Nov 2023 22:13:20 GMT"));
    let b = e.reg.lookup("1001", e.t0);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].flow.remote, PHONE.parse::<SocketAddr>().expect("addr"));
    assert_eq!(b[0].user_agent.as_deref(), Some("TestPhone/1.0"));
    assert_eq!(b[0].call_id, "call-1@host");
    assert_eq!(b[0].cseq, 2);
}

#[test]
fn response_bytes_for_challenge_and_drop() {
    let mut e = env();
    let r = Req::new("1001").contact(C1);
    let o = e.send(0, &r, PHONE);
    let bytes = e
        .reg
        .response_bytes(&o.reply, &r.msg(), &flow(PHONE))
        .expect("a response");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{text}");
    assert!(
        text.contains("WWW-Authenticate: Digest realm=\"pbx.example\""),
        "{text}"
    );
    let resp = Message::parse(bytes, Framing::Datagram).expect("response parses");
    assert!(resp.to_hdr().expect("to").tag().is_some());
    assert_eq!(
        e.reg.response_bytes(&Reply::Drop, &r.msg(), &flow(PHONE)),
        None
    );
}

fn rfc2069_auth(user: &str, pass: &str, nonce: &str) -> String {
    let h1 = ha1(HashAlg::Md5, user, REALM, pass);
    let response = compute_response(
        Algorithm::Md5,
        &h1,
        nonce,
        None,
        "REGISTER",
        "sip:pbx.example",
        b"",
    )
    .expect("r");
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:pbx.example\", response=\"{response}\""
    )
}

#[test]
fn rfc2069_doorbell_and_its_reused_nonce_is_never_a_failure() {
    let mut e = env();
    let c = "<sip:door@192.168.1.50:5060>";
    let o = e.send(0, &Req::new("door").contact(c), "192.168.1.50:5060");
    let nonce = Challenge::parse(&challenges(&o)[0]).expect("ch").nonce;
    let auth = rfc2069_auth("door", "bell", &nonce);
    let o = e.send(
        1,
        &Req::new("door").contact(c).cseq(2).auth(Some(auth.clone())),
        "192.168.1.50:5060",
    );
    assert_eq!(ok_contacts(&o).len(), 1);
    // The doorbell resends the same Authorization on every refresh: stale challenge, no event,
    // never blocked however often (max_failures is 3).
    for n in 0..10 {
        let o = e.send(
            2 + n,
            &Req::new("door")
                .contact(c)
                .cseq(3 + n as u32)
                .auth(Some(auth.clone())),
            "192.168.1.50:5060",
        );
        let ch = challenges(&o);
        assert!(
            Challenge::parse(&ch[0]).expect("ch").stale,
            "stale=true expected"
        );
        assert!(o.events.is_empty(), "{:?}", o.events);
    }
    assert_eq!(e.reg.stats().blocked_sources, 0);
    assert_eq!(e.reg.stats().tracked_sources, 0);
    // Answering the fresh nonce works.
    let o = e.send(
        20,
        &Req::new("door").contact(c).cseq(50),
        "192.168.1.50:5060",
    );
    let nonce = Challenge::parse(&challenges(&o)[0]).expect("ch").nonce;
    let o = e.send(
        20,
        &Req::new("door")
            .contact(c)
            .cseq(51)
            .auth(Some(rfc2069_auth("door", "bell", &nonce))),
        "192.168.1.50:5060",
    );
    assert_eq!(ok_contacts(&o).len(), 1);
}

#[test]
fn dahua_style_reused_nonce_and_nc_gets_stale_challenge() {
    let mut e = env();
    let r = Req::new("1001").contact(C1);
    let o = e.send(0, &r, PHONE);
    let mut client = DigestClient::new("1001", "secret", b"s".to_vec());
    client.on_challenge(&challenges(&o)).expect("ok");
    let auth = client
        .authorization("REGISTER", "sip:pbx.example", b"")
        .expect("auth");
    let o = e.send(
        0,
        &Req::new("1001")
            .contact(C1)
            .cseq(2)
            .auth(Some(auth.clone())),
        PHONE,
    );
    assert_eq!(ok_contacts(&o).len(), 1);
    for n in 0..6 {
        let o = e.send(
            10 + n,
            &Req::new("1001")
                .contact(C1)
                .cseq(3 + n as u32)
                .auth(Some(auth.clone())),
            PHONE,
        );
        assert!(Challenge::parse(&challenges(&o)[0]).expect("ch").stale);
        assert!(o.events.is_empty());
        assert!(!o.changed);
    }
    assert_eq!(e.reg.stats().blocked_sources, 0);
    // A proper client increments nc on the same nonce: accepted.
    let auth = client
        .authorization("REGISTER", "sip:pbx.example", b"")
        .expect("auth");
    assert_eq!(
        Credentials::parse(&auth).expect("c").nc.as_deref(),
        Some("00000002")
    );
    let o = e.send(
        30,
        &Req::new("1001").contact(C1).cseq(20).auth(Some(auth)),
        PHONE,
    );
    assert_eq!(ok_contacts(&o).len(), 1);
}

#[test]
fn expired_nonce_is_stale_not_failure() {
    let mut e = env();
    let o = e.send(0, &Req::new("1001").contact(C1), PHONE);
    let mut client = DigestClient::new("1001", "secret", b"s".to_vec());
    client.on_challenge(&challenges(&o)).expect("ok");
    let auth = client
        .authorization("REGISTER", "sip:pbx.example", b"")
        .expect("auth");
    // Default nonce TTL is 300 s.
    let o = e.send(
        301,
        &Req::new("1001").contact(C1).cseq(2).auth(Some(auth)),
        PHONE,
    );
    let ch = challenges(&o);
    assert!(Challenge::parse(&ch[0]).expect("ch").stale);
    assert!(o.events.is_empty());
    client.on_challenge(&ch).expect("follows stale");
    let auth = client
        .authorization("REGISTER", "sip:pbx.example", b"")
        .expect("auth");
    let o = e.send(
        301,
        &Req::new("1001").contact(C1).cseq(3).auth(Some(auth)),
        PHONE,
    );
    assert_eq!(ok_contacts(&o).len(), 1);
}

/// Replaces the nonce in challenge values so two challenges can be compared.
fn without_nonce(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            let c = Challenge::parse(v).expect("ch");
            v.replace(&c.nonce, "NONCE")
        })
        .collect()
}

#[test]
fn wrong_password_and_unknown_user_look_identical() {
    let mut e = env();
    let wrong = e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "guess");
    let unknown = e.register(
        0,
        Req::new("9999").contact("<sip:9999@192.168.1.10>"),
        "192.168.1.11:5060",
        "9999",
        "guess",
    );
    let (a, b) = (challenges(&wrong), challenges(&unknown));
    assert_eq!(without_nonce(&a), without_nonce(&b));
    assert!(!Challenge::parse(&a[0]).expect("ch").stale);
    assert_ne!(a, b, "fresh nonces");
    // Internally they are told apart for the log.
    assert_eq!(wrong.events.len(), 1);
    assert_eq!(wrong.events[0].kind, SecurityEventKind::AuthFailed);
    assert_eq!(wrong.events[0].user.as_deref(), Some("1001"));
    assert_eq!(unknown.events[0].kind, SecurityEventKind::UnknownUser);
    assert_eq!(unknown.events[0].user.as_deref(), Some("9999"));
    assert_eq!(unknown.events[0].source.to_string(), "192.168.1.11");
    assert!(!wrong.changed && !unknown.changed);
}

#[test]
fn interval_too_brief_and_expiry_rules() {
    let mut e = env();
    let o = e.register(
        0,
        Req::new("1001").contact(C1).expires("30"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(o.reply, Reply::IntervalTooBrief { min_expires: 60 });
    assert_eq!(o.reply.headers(), vec![("Min-Expires", "60".to_string())]);
    assert_eq!(
        o.reply.status(),
        Some((StatusCode::INTERVAL_TOO_BRIEF, "Interval Too Brief"))
    );
    assert!(e.reg.lookup("1001", e.t0).is_empty());
    // Contact param beats the header; above max is capped.
    let o = e.register(
        0,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.10>;expires=120")
            .expires("30"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10>;expires=120".to_string()]
    );
    let o = e.register(
        10,
        Req::new("1001").contact(C1).expires("999999").call_id("c2"),
        PHONE,
        "1001",
        "secret",
    );
    let cs = ok_contacts(&o);
    assert!(
        cs.contains(&"<sip:1001@192.168.1.10:5060>;expires=3600".to_string()),
        "{cs:?}"
    );
    // The first one has 110 s left at t=10.
    assert!(
        cs.contains(&"<sip:1001@192.168.1.10>;expires=110".to_string()),
        "{cs:?}"
    );
}

#[test]
fn expires_zero_removes_one_binding() {
    let mut e = env();
    e.register(
        0,
        Req::new("1001")
            .contact(C1)
            .contact("<sip:1001@192.168.1.10:5062>"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(e.reg.lookup("1001", e.t0).len(), 2);
    let o = e.register(
        5,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.10:5062>")
            .expires("0")
            .cseq(10),
        PHONE,
        "1001",
        "secret",
    );
    assert!(o.changed);
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060>;expires=3595".to_string()]
    );
    let o = e.register(
        6,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.10:5060>;expires=0")
            .cseq(20),
        PHONE,
        "1001",
        "secret",
    );
    assert!(ok_contacts(&o).is_empty());
    assert!(e.reg.lookup("1001", e.t0).is_empty());
    assert_eq!(e.reg.stats().aors, 0);
}

#[test]
fn contact_star() {
    let mut e = env();
    e.register(
        0,
        Req::new("1001")
            .contact(C1)
            .contact("<sip:1001@192.168.1.10:5062>"),
        PHONE,
        "1001",
        "secret",
    );
    let o = e.register(
        1,
        Req::new("1001").contact("*").cseq(10),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(
        o.reply,
        Reply::BadRequest {
            reason: "Contact * Requires Expires: 0"
        }
    );
    let o = e.register(
        1,
        Req::new("1001").contact("*").expires("60").cseq(12),
        PHONE,
        "1001",
        "secret",
    );
    assert!(matches!(o.reply, Reply::BadRequest { .. }));
    assert_eq!(e.reg.lookup("1001", e.t0).len(), 2);
    let o = e.register(
        1,
        Req::new("1001").contact("*").expires("0").cseq(14),
        PHONE,
        "1001",
        "secret",
    );
    assert!(o.changed);
    assert!(ok_contacts(&o).is_empty());
    assert!(e.reg.lookup("1001", e.t0).is_empty());
}

#[test]
fn query_without_contact_lists_bindings() {
    let mut e = env();
    e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    let o = e.register(100, Req::new("1001").cseq(10), PHONE, "1001", "secret");
    assert!(!o.changed);
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060>;expires=3500".to_string()]
    );
}

#[test]
fn multiple_contacts_and_max_contacts_evicts_oldest() {
    let mut e = env();
    let o = e.register(
        0,
        Req::new("1001")
            .contact(C1)
            .contact("<sip:1001@198.51.100.202>;q=0.5"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(ok_contacts(&o).len(), 2);
    assert!(ok_contacts(&o).contains(&"<sip:1001@198.51.100.202>;expires=3600;q=0.5".to_string()));
    // lookup orders by q: the q=0.5 one comes last.
    let l = e.reg.lookup("1001", e.t0);
    assert_eq!(l[1].contact_uri, "sip:1001@198.51.100.202");
    // A third contact, later, from another device: the oldest (C1, registered first... both at
    // t=0, so the lower id) is evicted.
    let o = e.register(
        10,
        Req::new("1001")
            .contact("<sip:1001@198.51.100.203>")
            .call_id("other"),
        "198.51.100.203:5060",
        "1001",
        "secret",
    );
    let cs = ok_contacts(&o);
    assert_eq!(cs.len(), 2, "{cs:?}");
    assert!(!cs.iter().any(|c| c.starts_with(C1)), "{cs:?}");
    assert!(
        cs.iter()
            .any(|c| c.starts_with("<sip:1001@198.51.100.203>")),
        "{cs:?}"
    );
    // Three new distinct contacts in one request exceed the limit: 403, nothing changes.
    let o = e.register(
        20,
        Req::new("1001")
            .contact("<sip:a@198.51.100.207>")
            .contact("<sip:b@198.51.100.207>")
            .contact("<sip:c@198.51.100.207>")
            .call_id("x"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(
        o.reply,
        Reply::Forbidden {
            reason: "Too Many Contacts"
        }
    );
    assert_eq!(e.reg.lookup("1001", e.t0).len(), 2);
    // max_contacts 1 (door): a re-registration from a new address replaces the old one.
    e.register(
        0,
        Req::new("door").contact("<sip:door@192.168.1.50>"),
        "192.168.1.50:5060",
        "door",
        "bell",
    );
    let o = e.register(
        5,
        Req::new("door")
            .contact("<sip:door@192.168.1.51>")
            .call_id("reboot"),
        "192.168.1.51:5060",
        "door",
        "bell",
    );
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:door@192.168.1.51>;expires=3600".to_string()]
    );
}

#[test]
fn refresh_keeps_binding_and_instance_reg_id_match() {
    let mut e = env();
    let inst = "<sip:1001@192.168.1.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
    let o = e.register(0, Req::new("1001").contact(inst), PHONE, "1001", "secret");
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060;transport=udp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1".to_string()]
    );
    let id = e.reg.lookup("1001", e.t0)[0].id;
    // Same instance and reg-id, new contact address (NAT rebinding): same binding updated.
    let moved = "<sip:1001@192.168.1.99:5070>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
    let o = e.register(
        100,
        Req::new("1001").contact(moved).cseq(5),
        "198.51.100.99:4000",
        "1001",
        "secret",
    );
    assert_eq!(ok_contacts(&o).len(), 1);
    let b = e.reg.lookup("1001", e.t0);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, id);
    assert_eq!(b[0].contact_uri, "sip:1001@192.168.1.99:5070");
    assert_eq!(
        b[0].instance.as_deref(),
        Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>")
    );
    assert_eq!(b[0].reg_id, Some(1));
    assert_eq!(b[0].flow.remote.to_string(), "198.51.100.99:4000");
    assert_eq!(b[0].registered_at, e.w0);
    // URI comparison: host case-insensitive.
    let o = e.register(
        200,
        Req::new("door").contact("<sip:door@DoorBell.lan>"),
        PHONE,
        "door",
        "bell",
    );
    assert_eq!(ok_contacts(&o).len(), 1);
    let o = e.register(
        210,
        Req::new("door").contact("<sip:door@doorbell.LAN>").cseq(9),
        PHONE,
        "door",
        "bell",
    );
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:door@doorbell.LAN>;expires=3600".to_string()]
    );
}

#[test]
fn same_call_id_lower_cseq_changes_nothing() {
    let mut e = env();
    e.register(
        0,
        Req::new("1001").contact(C1).cseq(10),
        PHONE,
        "1001",
        "secret",
    ); // stored cseq 11
    let o = e.register(
        50,
        Req::new("1001").contact(C1).expires("600").cseq(3),
        PHONE,
        "1001",
        "secret",
    ); // cseq 4
    assert!(!o.changed);
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060>;expires=3550".to_string()]
    );
    // Equal CSeq also counts as old (stored is 11: send 10 -> authenticated with 11).
    let o = e.register(
        60,
        Req::new("1001").contact(C1).expires("0").cseq(10),
        PHONE,
        "1001",
        "secret",
    );
    assert!(!o.changed);
    assert_eq!(e.reg.lookup("1001", e.t0).len(), 1);
    // A different Call-ID (device rebooted) updates whatever the CSeq.
    let o = e.register(
        70,
        Req::new("1001")
            .contact(C1)
            .expires("600")
            .cseq(1)
            .call_id("new"),
        PHONE,
        "1001",
        "secret",
    );
    assert!(o.changed);
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:1001@192.168.1.10:5060>;expires=600".to_string()]
    );
}

#[test]
fn doorbell_with_different_from_user_binds_to_auth_and_to_user() {
    let mut e = env();
    let mut r = Req::new("door").contact("<sip:door@192.168.1.50>");
    r.from = "Front-Door-Station";
    let o = e.register(0, r, "192.168.1.50:5060", "door", "bell");
    assert_eq!(ok_contacts(&o).len(), 1);
    assert_eq!(e.reg.lookup("door", e.t0).len(), 1);
    // Authenticating as 1001 to register door's AOR: 403.
    let o = e.register(
        0,
        Req::new("door")
            .contact("<sip:evil@198.51.100.66>")
            .call_id("x"),
        "198.51.100.66:5060",
        "1001",
        "secret",
    );
    assert_eq!(
        o.reply,
        Reply::Forbidden {
            reason: "Forbidden"
        }
    );
    assert_eq!(o.events[0].kind, SecurityEventKind::IdentityMismatch);
    assert_eq!(o.events[0].aor.as_deref(), Some("door"));
    assert_eq!(
        e.reg.lookup("door", e.t0)[0].contact_uri,
        "sip:door@192.168.1.50"
    );
}

#[test]
fn brute_force_blocks_source_not_others() {
    let mut e = env();
    let attacker = "203.0.113.9:5060";
    let o1 = e.register(0, Req::new("1001").contact(C1), attacker, "1001", "a");
    let o2 = e.register(1, Req::new("1001").contact(C1), attacker, "1001", "b");
    assert!(
        matches!(o1.reply, Reply::Challenge { .. }) && matches!(o2.reply, Reply::Challenge { .. })
    );
    let o3 = e.register(2, Req::new("1001").contact(C1), attacker, "1001", "c");
    assert_eq!(o3.reply, Reply::Drop);
    let blocked = o3
        .events
        .iter()
        .find(|ev| ev.kind == SecurityEventKind::Blocked)
        .expect("blocked event");
    assert_eq!(blocked.user.as_deref(), Some("1001"));
    assert_eq!(blocked.failures, Some(3));
    assert_eq!(blocked.blocked_secs, Some(300));
    assert_eq!(blocked.source.to_string(), "203.0.113.9");
    // Everything from that IP (any port) is dropped now, even with the right password.
    let o = e.send(3, &Req::new("1001").contact(C1), "203.0.113.9:6000");
    assert_eq!(o.reply, Reply::Drop);
    assert!(o.events.is_empty());
    assert!(e.reg.is_blocked(
        "203.0.113.9".parse().expect("ip"),
        e.t0 + Duration::from_secs(3)
    ));
    // Another source is unaffected.
    let o = e.register(3, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    assert_eq!(ok_contacts(&o).len(), 1);
    // After the block the attacker's IP is heard again.
    let o = e.send(303, &Req::new("1001").contact(C1), attacker);
    assert!(matches!(o.reply, Reply::Challenge { .. }));
}

#[test]
fn failures_outside_window_do_not_add_up_and_trusted_never_blocked() {
    let mut s = settings();
    s.trusted_networks = vec!["198.51.100.0/24".parse().expect("cidr")];
    let mut e = env_with(s);
    for t in [0, 61, 122, 183] {
        let o = e.register(
            t,
            Req::new("1001").contact(C1),
            "203.0.113.5:5060",
            "1001",
            "x",
        );
        assert!(matches!(o.reply, Reply::Challenge { .. }), "t={t}");
    }
    for t in 0..10 {
        let o = e.register(
            t,
            Req::new("1001").contact(C1),
            "198.51.100.7:5060",
            "1001",
            "x",
        );
        assert!(matches!(o.reply, Reply::Challenge { .. }));
        assert_eq!(o.events.len(), 1, "still logged");
    }
    assert_eq!(e.reg.stats().blocked_sources, 0);
}

#[test]
fn source_network_restriction_looks_like_wrong_password() {
    let mut e = env();
    let o = e.register(
        0,
        Req::new("lan").contact("<sip:lan@192.168.1.20>"),
        "192.168.1.20:5060",
        "lan",
        "pw",
    );
    let ch = challenges(&o);
    assert!(!Challenge::parse(&ch[0]).expect("ch").stale);
    assert_eq!(o.events[0].kind, SecurityEventKind::SourceNotAllowed);
    let o = e.register(
        0,
        Req::new("lan").contact("<sip:lan@203.0.113.77>"),
        "203.0.113.77:5060",
        "lan",
        "pw",
    );
    assert_eq!(ok_contacts(&o).len(), 1);
}

#[test]
fn foreign_scheme_malformed_and_other_realm() {
    let mut e = env();
    // RFC 4475 regaut01: unknown scheme -> 401 with a Digest challenge, not a failure.
    let r = Req::new("1001")
        .contact(C1)
        .auth(Some("NoOneKnowsThisScheme opaque-data=here".into()));
    let o = e.send(0, &r, PHONE);
    assert!(challenges(&o)[0].starts_with("Digest "));
    assert!(o.events.is_empty());
    let r = Req::new("1001").contact(C1).auth(Some("Digest username=\"1001\", realm=\"elsewhere\", nonce=\"n\", uri=\"sip:x\", response=\"00\"".into()));
    let o = e.send(0, &r, PHONE);
    assert!(matches!(o.reply, Reply::Challenge { .. }));
    assert!(o.events.is_empty());
    let r = Req::new("1001")
        .contact(C1)
        .auth(Some("Digest username=\"1001\", realm=\"pbx.example".into()));
    let o = e.send(0, &r, PHONE);
    assert_eq!(
        o.reply,
        Reply::BadRequest {
            reason: "Malformed Authorization"
        }
    );
    assert_eq!(o.events[0].kind, SecurityEventKind::MalformedCredentials);
}

#[test]
fn domain_check() {
    let mut s = settings();
    s.domains = vec!["pbx.example".into(), "198.51.100.1".into()];
    let mut e = env_with(s);
    let o = e.send(0, &Req::new("1001").contact(C1), PHONE);
    assert!(matches!(o.reply, Reply::Challenge { .. }));
    let text = Req::new("1001")
        .contact(C1)
        .text()
        .replace("To: <sip:1001@pbx.example>", "To: <sip:1001@other.example>");
    let msg = Message::parse(Bytes::from(text), Framing::Datagram).expect("parse");
    let o = e.reg.handle_register(e.t0, e.w0, &msg, flow(PHONE));
    assert_eq!(o.reply, Reply::NotFound);
    let text = Req::new("1001")
        .contact(C1)
        .text()
        .replace("To: <sip:1001@pbx.example>", "To: <sip:1001@198.51.100.1>");
    let msg = Message::parse(Bytes::from(text), Framing::Datagram).expect("parse");
    let o = e.reg.handle_register(e.t0, e.w0, &msg, flow(PHONE));
    assert!(matches!(o.reply, Reply::Challenge { .. }));
}

#[test]
fn expire_and_poll_timeout() {
    let mut e = env();
    assert_eq!(e.reg.poll_timeout(), None);
    e.register(
        0,
        Req::new("1001").contact(C1).expires("60"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(e.reg.poll_timeout(), Some(e.t0 + Duration::from_secs(60)));
    assert!(e.reg.expire(e.t0 + Duration::from_secs(59)).is_empty());
    assert!(
        e.reg
            .lookup("1001", e.t0 + Duration::from_secs(60))
            .is_empty(),
        "lookup hides expired"
    );
    let gone = e.reg.expire(e.t0 + Duration::from_secs(60));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, "1001");
    assert_eq!(e.reg.poll_timeout(), None);
}

/// The deadline index against a model: 40 users register, refresh (moving their deadline later),
/// unregister and re-register at staggered times; after every step `poll_timeout` is exactly
/// the earliest live deadline (no stale entry of a refreshed or removed binding, nothing
/// missing) and `expire` removes exactly the bindings whose time has come.
#[test]
fn expiry_index_stays_exact_through_refreshes_and_removals() {
    let names: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
    let db: UserDb = names.iter().map(|n| User::new(n.as_str(), "pw")).collect();
    let t0 = Instant::now();
    let w0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut e = Env {
        reg: Registrar::new(settings(), db, t0),
        t0,
        w0,
    };
    // model: user -> expiry (seconds after t0)
    let mut model: std::collections::BTreeMap<String, u64> = Default::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let contact = |u: &str| format!("<sip:{u}@192.168.1.10:5060>");
    for step in 0..400u64 {
        let secs = step * 3;
        let now = t0 + Duration::from_secs(secs);
        let gone = e.reg.expire(now);
        let mut want_gone: Vec<String> = model
            .iter()
            .filter(|(_, &at)| at <= secs)
            .map(|(u, _)| u.clone())
            .collect();
        model.retain(|_, at| *at > secs);
        let mut got: Vec<String> = gone.iter().map(|(aor, _)| aor.clone()).collect();
        got.sort();
        want_gone.sort();
        assert_eq!(got, want_gone, "expired at {secs} s");
        let u = names[next(40) as usize].clone();
        let c = contact(&u);
        if next(5) == 0 {
            let r = Req::new(&u)
                .contact(&c)
                .expires("0")
                .cseq(10 + 2 * step as u32);
            e.register(secs, r, PHONE, &u, "pw");
            model.remove(&u);
        } else {
            let life = 60 + next(600);
            let l = life.to_string();
            let r = Req::new(&u)
                .contact(&c)
                .expires(&l)
                .cseq(10 + 2 * step as u32);
            let o = e.register(secs, r, PHONE, &u, "pw");
            assert_eq!(ok_contacts(&o).len(), 1, "{u} registered");
            model.insert(u, secs + life);
        }
        let earliest = model.values().min().map(|&s| t0 + Duration::from_secs(s));
        assert_eq!(
            e.reg.poll_timeout(),
            earliest,
            "next deadline after step {step}"
        );
        assert_eq!(e.reg.stats().bindings, model.len());
    }
}

#[test]
fn qualify_marks_unreachable_after_failures() {
    let mut s = settings();
    s.qualify_interval = Some(Duration::from_secs(30));
    s.qualify_max_failures = 2;
    let mut e = env_with(s);
    e.register(
        0,
        Req::new("1001")
            .contact(C1)
            .contact("<sip:1001@198.51.100.202>"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(e.reg.poll_timeout(), Some(e.t0 + Duration::from_secs(30)));
    assert!(e
        .reg
        .due_qualifies(e.t0 + Duration::from_secs(29))
        .is_empty());
    let due = e.reg.due_qualifies(e.t0 + Duration::from_secs(30));
    assert_eq!(due.len(), 2);
    assert!(
        e.reg
            .due_qualifies(e.t0 + Duration::from_secs(31))
            .is_empty(),
        "once per interval"
    );
    let c1 = due
        .iter()
        .find(|d| d.contact_uri == "sip:1001@192.168.1.10:5060")
        .expect("c1");
    assert_eq!(c1.aor, "1001");
    assert_eq!(e.reg.qualify_result(c1.binding_id, false), None);
    assert_eq!(e.reg.qualify_result(c1.binding_id, false), Some(false));
    let l = e.reg.lookup("1001", e.t0);
    assert_eq!(
        l[0].contact_uri, "sip:1001@198.51.100.202",
        "reachable first"
    );
    assert!(!l[1].reachable);
    assert_eq!(e.reg.qualify_result(c1.binding_id, true), Some(true));
    assert_eq!(e.reg.qualify_result(999_999, true), None);
}

#[test]
fn authenticate_message_www_and_invite_proxy() {
    let mut e = env();
    let msg_text = |auth: Option<(&str, String)>| {
        let mut t = String::from(
            "MESSAGE sip:door@pbx.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-m1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:1001@pbx.example>;tag=a\r\n\
             To: <sip:door@pbx.example>\r\n\
             Call-ID: msg-1\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n",
        );
        if let Some((h, v)) = auth {
            t.push_str(&format!("{h}: {v}\r\n"));
        }
        t.push_str("Content-Length: 5\r\n\r\nhello");
        Message::parse(Bytes::from(t), Framing::Datagram).expect("parse")
    };
    let (now, _) = e.at(0);
    let chk = e
        .reg
        .authenticate(now, &msg_text(None), flow(PHONE), AuthKind::Www);
    let AuthResult::Challenge {
        kind: AuthKind::Www,
        values,
    } = &chk.result
    else {
        panic!("{chk:?}")
    };
    let mut client = DigestClient::new("1001", "secret", b"s".to_vec());
    client.on_challenge(values).expect("ok");
    let a = client
        .authorization("MESSAGE", "sip:door@pbx.example", b"hello")
        .expect("auth");
    let chk = e.reg.authenticate(
        now,
        &msg_text(Some(("Authorization", a))),
        flow(PHONE),
        AuthKind::Www,
    );
    assert_eq!(
        chk.result,
        AuthResult::Authenticated {
            user: "1001".into()
        }
    );

    // Proxy flavour: 407, Proxy-Authorization read, Authorization ignored.
    let chk = e
        .reg
        .authenticate(now, &msg_text(None), flow(PHONE), AuthKind::Proxy);
    let AuthResult::Challenge {
        kind: AuthKind::Proxy,
        values,
    } = &chk.result
    else {
        panic!("{chk:?}")
    };
    assert_eq!(
        chk.result.reply().and_then(|r| r.status()),
        Some((
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "Proxy Authentication Required"
        ))
    );
    assert_eq!(
        chk.result.reply().expect("r").headers()[0].0,
        "Proxy-Authenticate"
    );
    let mut client = DigestClient::new("1001", "secret", b"t".to_vec());
    client.on_challenge(values).expect("ok");
    let a = client
        .authorization("MESSAGE", "sip:door@pbx.example", b"hello")
        .expect("auth");
    let chk = e.reg.authenticate(
        now,
        &msg_text(Some(("Authorization", a.clone()))),
        flow(PHONE),
        AuthKind::Proxy,
    );
    assert!(matches!(chk.result, AuthResult::Challenge { .. }));
    let chk = e.reg.authenticate(
        now,
        &msg_text(Some(("Proxy-Authorization", a))),
        flow(PHONE),
        AuthKind::Proxy,
    );
    assert_eq!(
        chk.result,
        AuthResult::Authenticated {
            user: "1001".into()
        }
    );
}

// ------------------------------------------------------------------------------------------
// Flood
// ------------------------------------------------------------------------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn flood_of_random_registers_keeps_memory_bounded() {
    let mut s = settings();
    s.max_tracked_sources = 500;
    s.max_blocked_sources = 200;
    s.max_tracked_nonces = 100;
    let mut e = env_with(s);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (now, wall) = e.at(0);
    let mut challenged = 0;
    let mut dropped = 0;
    for i in 0..100_000u32 {
        let user = format!("u{}", rng.next() % 1_000_000);
        let nonce = format!("{:016x}{:016x}", rng.next(), rng.next());
        let ip = rng.next();
        let src = format!(
            "{}.{}.{}.{}:{}",
            1 + ip % 223,
            (ip >> 8) & 255,
            (ip >> 16) & 255,
            (ip >> 24) & 255,
            1024 + (ip >> 32) % 60000
        );
        let auth = if i % 4 == 0 {
            None
        } else {
            Some(format!(
                "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:pbx.example\", response=\"{:032x}\", qop=auth, nc={:08x}, cnonce=\"c\"",
                rng.next(),
                rng.next() as u32
            ))
        };
        let contact = format!("<sip:{user}@{}>", src);
        let r = Req::new(&user).contact(&contact).call_id(&nonce).auth(auth);
        let o = e.reg.handle_register(
            now + Duration::from_micros(u64::from(i)),
            wall,
            &r.msg(),
            flow(&src),
        );
        match o.reply {
            Reply::Challenge { .. } => challenged += 1,
            Reply::Drop => dropped += 1,
            ref other => panic!("unexpected {other:?}"),
        }
        let st = e.reg.stats();
        assert!(
            st.tracked_sources <= 500 && st.blocked_sources <= 200 && st.tracked_nonces <= 100,
            "{st:?}"
        );
        assert_eq!(st.bindings, 0);
    }
    assert!(challenged > 90_000, "{challenged} {dropped}");
    // Flood from one source: blocked quickly, then dropped.
    let mut drops = 0;
    for i in 0..1000u32 {
        let r = Req::new("1001")
            .contact(C1)
            .auth(Some(format!("Digest username=\"1001\", realm=\"{REALM}\", nonce=\"{i}\", uri=\"sip:pbx.example\", response=\"00\"")));
        if e.reg
            .handle_register(now, wall, &r.msg(), flow("203.0.113.200:5060"))
            .reply
            == Reply::Drop
        {
            drops += 1;
        }
    }
    assert_eq!(drops, 998);
}

// ------------------------------------------------------------------------------------------
// Persistence
// ------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("podpbx-registrar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn persistence_roundtrip_with_remaining_expiry() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("bindings.json");
    let mut e = env();
    let inst = "<sip:1001@192.168.1.10:5060>;+sip.instance=\"<urn:uuid:1>\";reg-id=2;q=0.7";
    e.register(
        0,
        Req::new("1001")
            .contact(inst)
            .contact("<sip:1001@198.51.100.202>;expires=200"),
        PHONE,
        "1001",
        "secret",
    );
    e.register(
        0,
        Req::new("door")
            .contact("<sip:door@192.168.1.50>")
            .expires("120"),
        "192.168.1.50:5060",
        "door",
        "bell",
    );
    write_atomic(&path, &e.reg.serialize().expect("serialize")).expect("save");
    assert!(path.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|d| d.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");

    // A new process 100 s later (new Instant base).
    let t1 = Instant::now() + Duration::from_secs(7);
    let w1 = e.w0 + Duration::from_secs(100);
    let mut r2 = Registrar::new(settings(), users(), t1);
    let rep = load_file(&mut r2, &path, t1, w1).expect("load");
    assert_eq!(rep.loaded, 3);
    assert_eq!(rep.dropped, 0);
    assert_eq!(rep.warning, None);
    let l = r2.lookup("1001", t1);
    assert_eq!(l.len(), 2);
    let b = l
        .iter()
        .find(|b| b.instance.is_some())
        .expect("instance binding");
    assert_eq!(b.remaining_secs(t1), 3500);
    assert_eq!(b.instance.as_deref(), Some("<urn:uuid:1>"));
    assert_eq!(b.reg_id, Some(2));
    assert_eq!(b.q, Some(700));
    assert_eq!(b.flow, flow(PHONE));
    assert_eq!(b.registered_at, e.w0);
    assert_eq!(b.call_id, "call-1@host");
    let short = l
        .iter()
        .find(|b| b.contact_uri == "sip:1001@198.51.100.202")
        .expect("second");
    assert_eq!(short.remaining_secs(t1), 100);
    assert_eq!(r2.lookup("door", t1)[0].remaining_secs(t1), 20);

    // A refresh after the restart updates the restored binding instead of adding one.
    let mut e2 = Env {
        reg: r2,
        t0: t1,
        w0: w1,
    };
    let o = e2.register(
        0,
        Req::new("door").contact("<sip:door@192.168.1.50>").cseq(10),
        "192.168.1.50:5060",
        "door",
        "bell",
    );
    assert_eq!(
        ok_contacts(&o),
        vec!["<sip:door@192.168.1.50>;expires=3600".to_string()]
    );

    // 150 s later the 120 s and 200 s bindings are gone.
    let mut r3 = Registrar::new(settings(), users(), t1);
    let rep = load_file(&mut r3, &path, t1, e.w0 + Duration::from_secs(250)).expect("load");
    assert_eq!((rep.loaded, rep.dropped), (1, 2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The file keeps format version 1 as earlier releases wrote it (the flow's `source`,
/// lower-case `transport` and `conn_id`), both ways: a restart after an upgrade loses nothing.
#[test]
fn file_format_v1_flow_fields() {
    let dir = temp_dir("format-v1");
    let path = dir.join("bindings.json");
    let mut e = env();
    e.register(
        0,
        Req::new("1001").contact("<sip:1001@192.168.1.10:5060>"),
        PHONE,
        "1001",
        "secret",
    );
    write_atomic(&path, &e.reg.serialize().expect("serialize")).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    let want = format!(
        "\"flow\":{{\"source\":\"{PHONE}\",\"transport\":\"udp\",\"local\":\"198.51.100.1:5060\",\"conn_id\":0}}"
    );
    assert!(text.contains(&want), "{want} not in {text}");

    let old = r#"{"version":1,"bindings":[{"aor":"door","contact":"sip:door@192.168.1.50",
        "expires_unix_ms":EXP,"registered_unix_ms":1000,"call_id":"c@x","cseq":3,
        "flow":{"source":"192.168.1.50:5062","transport":"tcp","local":"198.51.100.1:5060",
        "conn_id":7}}]}"#;
    let exp = (e.w0 + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis();
    std::fs::write(&path, old.replace("EXP", &exp.to_string())).expect("write");
    let mut r2 = Registrar::new(settings(), users(), e.t0);
    let rep = load_file(&mut r2, &path, e.t0, e.w0).expect("load");
    assert_eq!((rep.loaded, rep.warning), (1, None));
    let b = &r2.lookup("door", e.t0)[0];
    assert_eq!(
        b.flow,
        Flow {
            transport: Transport::Tcp,
            local: "198.51.100.1:5060".parse().expect("addr"),
            remote: "192.168.1.50:5062".parse().expect("addr"),
            conn: 7,
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_file_is_moved_aside() {
    let dir = temp_dir("corrupt");
    let path = dir.join("bindings.json");
    std::fs::write(&path, b"{\"version\":1,\"bindings\":[{\"aor\":").expect("write");
    let mut e = env();
    e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    let rep = load_file(&mut e.reg, &path, e.t0, e.w0).expect("load reports, not fails");
    let moved = rep.moved_aside.clone().expect("moved aside");
    assert_eq!(moved, dir.join("bindings.json.corrupt-1700000000"));
    assert!(moved.exists() && !path.exists());
    assert!(
        rep.warning
            .as_deref()
            .is_some_and(|w| w.contains("bindings.json.corrupt-1700000000")),
        "{rep:?}"
    );
    assert_eq!(e.reg.stats().bindings, 0, "starts clean");
    // Missing file: nothing loaded, no warning.
    let rep = load_file(&mut e.reg, &path, e.t0, e.w0).expect("load");
    assert_eq!(rep, LoadReport::default());
    // Wrong version also counts as corrupt.
    std::fs::write(&path, b"{\"version\":99,\"bindings\":[]}").expect("write");
    let rep = load_file(&mut e.reg, &path, e.t0, e.w0 + Duration::from_secs(1)).expect("load");
    assert_eq!(
        rep.moved_aside,
        Some(dir.join("bindings.json.corrupt-1700000001"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Credentials hashed for another Request-URI: 400 and a counted failure, even with the right
/// password (RFC 3261 §22.4, RFC 7616 §3.4.6). An equivalent spelling of the URI is fine.
#[test]
fn digest_uri_must_be_the_request_uri() {
    let mut e = env();
    let attempt = |e: &mut Env, secs: u64, digest_uri: &str, src: &str| {
        let first = e.send(secs, &Req::new("1001").contact(C1), src);
        let mut client = DigestClient::new("1001", "secret", b"cn".to_vec());
        client.on_challenge(&challenges(&first)).expect("challenge");
        let auth = client
            .authorization("REGISTER", digest_uri, b"")
            .expect("auth");
        e.send(
            secs,
            &Req::new("1001")
                .contact(C1)
                .cseq(secs as u32 + 2)
                .auth(Some(auth)),
            src,
        )
    };
    let o = attempt(&mut e, 0, "sip:other.example", PHONE);
    assert_eq!(
        o.reply,
        Reply::BadRequest {
            reason: "Authorization URI Mismatch"
        }
    );
    assert_eq!(o.events.len(), 1);
    assert_eq!(o.events[0].kind, SecurityEventKind::DigestUriMismatch);
    assert_eq!(e.reg.stats().tracked_sources, 1, "counted as a failure");
    // Host case and an unknown parameter on one side do not matter (RFC 3261 §19.1.4).
    let o = attempt(&mut e, 1, "sip:PBX.example;x=1", PHONE);
    assert_eq!(ok_contacts(&o).len(), 1, "{:?}", o.reply);
    // The third mismatch blocks the source (max_failures is 3).
    attempt(&mut e, 2, "sip:1002@pbx.example", "203.0.113.1:5060");
    attempt(&mut e, 3, "sip:1002@pbx.example", "203.0.113.1:5060");
    let o = attempt(&mut e, 4, "sip:1002@pbx.example", "203.0.113.1:5060");
    assert_eq!(o.reply, Reply::Drop);
}

/// An RFC 2069 answer (no qop) is malformed unless the user opted in; the unknown user gets the
/// same answer as a known one without the opt-in.
#[test]
fn rfc2069_only_for_users_that_opt_in() {
    let mut e = env();
    for (i, user, pass) in [(0u64, "1001", "secret"), (1, "nobody", "x")] {
        let o = e.send(i, &Req::new(user).contact(C1), PHONE);
        let nonce = Challenge::parse(&challenges(&o)[0]).expect("ch").nonce;
        let o = e.send(
            i,
            &Req::new(user)
                .contact(C1)
                .cseq(2)
                .auth(Some(rfc2069_auth(user, pass, &nonce))),
            PHONE,
        );
        assert_eq!(
            o.reply,
            Reply::BadRequest {
                reason: "Digest Without qop"
            },
            "{user}"
        );
        assert_eq!(o.events[0].kind, SecurityEventKind::MalformedCredentials);
    }
    // "door" opted in (see users()): accepted.
    let o = e.send(5, &Req::new("door").contact(C1), PHONE);
    let nonce = Challenge::parse(&challenges(&o)[0]).expect("ch").nonce;
    let o = e.send(
        5,
        &Req::new("door")
            .contact("<sip:door@192.168.1.50>")
            .cseq(2)
            .auth(Some(rfc2069_auth("door", "bell", &nonce))),
        PHONE,
    );
    assert_eq!(ok_contacts(&o).len(), 1);
}

/// Rotating through addresses of one /64 does not escape the count; the prefix length is a
/// setting; IPv4 still counts per address.
#[test]
fn ipv6_sources_are_counted_by_prefix() {
    let mut e = env();
    for (t, src) in ["[2001:db8:5:6::1]:5060", "[2001:db8:5:6::2]:5060"]
        .iter()
        .enumerate()
    {
        let o = e.register(t as u64, Req::new("1001").contact(C1), src, "1001", "x");
        assert!(matches!(o.reply, Reply::Challenge { .. }));
    }
    let o = e.register(
        2,
        Req::new("1001").contact(C1),
        "[2001:db8:5:6:ffff::9]:7",
        "1001",
        "x",
    );
    assert_eq!(o.reply, Reply::Drop);
    let blocked = o
        .events
        .iter()
        .find(|ev| ev.kind == SecurityEventKind::Blocked);
    assert!(blocked.is_some());
    let t = e.t0 + Duration::from_secs(3);
    assert!(e
        .reg
        .is_blocked("2001:db8:5:6:1234::1".parse().expect("ip"), t));
    assert!(!e.reg.is_blocked("2001:db8:5:7::1".parse().expect("ip"), t));

    let mut s = settings();
    s.ipv6_prefix = 128;
    let mut e = env_with(s);
    for i in 1..=5 {
        let src = format!("[2001:db8:5:6::{i}]:5060");
        let o = e.register(i, Req::new("1001").contact(C1), &src, "1001", "x");
        assert!(
            matches!(o.reply, Reply::Challenge { .. }),
            "/128: separate sources"
        );
    }
}

/// Past the global cap, unknown sources' credentials are not checked (the right password gets
/// a challenge), a phone that authenticated before is still checked, and the cap is reported
/// once.
#[test]
fn global_failure_cap_protects_against_spread_guessing() {
    let mut s = settings();
    s.max_failures = 100;
    s.max_failures_per_minute = 10;
    let mut e = env_with(s);
    let o = e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    assert_eq!(ok_contacts(&o).len(), 1);
    let mut reported = 0;
    for i in 0..12u64 {
        let src = format!("[2001:db8:{i:x}::1]:5060");
        let o = e.register(1, Req::new("1001").contact(C1), &src, "1001", "guess");
        assert!(matches!(o.reply, Reply::Challenge { .. }));
        reported += o
            .events
            .iter()
            .filter(|ev| ev.kind == SecurityEventKind::GlobalCapReached)
            .count();
    }
    assert_eq!(reported, 1, "the cap is reported once per minute");
    let o = e.register(
        2,
        Req::new("1001").contact(C1),
        "[2001:db8:99::1]:5060",
        "1001",
        "secret",
    );
    assert!(
        matches!(o.reply, Reply::Challenge { .. }),
        "right password from a new source is not even checked: {:?}",
        o.reply
    );
    assert_eq!(o.events[0].kind, SecurityEventKind::UncheckedOverCap);
    let o = e.register(
        3,
        Req::new("1001").contact(C1).call_id("c2"),
        PHONE,
        "1001",
        "secret",
    );
    assert_eq!(ok_contacts(&o).len(), 1, "the known phone still registers");
    // The next minute, new sources are checked again.
    let o = e.register(
        62,
        Req::new("1001").contact(C1).call_id("c3"),
        "[2001:db8:99::1]:5060",
        "1001",
        "secret",
    );
    assert!(matches!(o.reply, Reply::Ok { .. }), "{:?}", o.reply);
}

/// Only a refresh of the same bindings (same contact, flow, q, instance) may be saved lazily;
/// anything that adds, removes, moves or expires a binding must be saved promptly (issue #14).
#[test]
fn refresh_only_marks_in_place_refreshes_and_nothing_else() {
    let mut e = env();
    let o = e.register(0, Req::new("1001").contact(C1), PHONE, "1001", "secret");
    assert!(o.changed && !o.refresh_only, "a new binding is structural");
    let o = e.register(
        10,
        Req::new("1001").contact(C1).call_id("other"),
        PHONE,
        "1001",
        "secret",
    );
    assert!(
        o.changed && o.refresh_only,
        "same contact and flow: a refresh"
    );
    let o = e.register(
        20,
        Req::new("1001").contact(C1).call_id("third"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(
        o.changed && !o.refresh_only,
        "the flow moved (NAT rebinding)"
    );
    let o = e.register(
        30,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.10:5060>;q=0.5")
            .call_id("fourth"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(o.changed && !o.refresh_only, "q changed");
    let o = e.register(
        40,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.11:5060>")
            .call_id("fifth"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(o.changed && !o.refresh_only, "a second binding added");
    let o = e.register(
        50,
        Req::new("1001").contact(C1).expires("0").call_id("sixth"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(o.changed && !o.refresh_only, "a binding removed");
    // The other binding (3600 s from t=40) expired before this refresh of it: structural.
    let o = e.register(
        3700,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.11:5060>")
            .call_id("seventh"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(o.changed && !o.refresh_only, "an expired binding dropped");
    let o = e.register(
        3710,
        Req::new("1001")
            .contact("<sip:1001@192.168.1.11:5060>")
            .call_id("eighth"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(o.changed && o.refresh_only);
    // A query changes nothing.
    let o = e.register(
        3720,
        Req::new("1001"),
        "192.168.1.10:5070",
        "1001",
        "secret",
    );
    assert!(!o.changed && !o.refresh_only);
}

/// The To tag is stable for one Call-ID and From tag (a retransmission gets the same one) and
/// differs with either (issue #14 changed how it is hashed, not what it depends on).
#[test]
fn to_tag_is_stable_for_one_call_id_and_from_tag() {
    let e = env();
    let a = e.reg.to_tag(&Req::new("1001").call_id("one").msg());
    assert_eq!(a.len(), 16);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a, e.reg.to_tag(&Req::new("1001").call_id("one").msg()));
    assert_ne!(a, e.reg.to_tag(&Req::new("1001").call_id("two").msg()));
    // The test request's From tag follows its CSeq.
    assert_ne!(
        a,
        e.reg.to_tag(&Req::new("1001").call_id("one").cseq(9).msg())
    );
    let other_key = Registrar::new(
        Settings::new(REALM, b"another-key-0123456789".to_vec()),
        users(),
        e.t0,
    );
    assert_ne!(a, other_key.to_tag(&Req::new("1001").call_id("one").msg()));
}

#[test]
fn a_refresh_allocates_only_its_reply() {
    let mut e = env();
    let ua = "TestPhone/1.0";
    let contact = "<sip:1001@192.168.1.10:5060>;+sip.instance=\"<urn:uuid:1>\";reg-id=1";
    let first = e.send(0, &Req::new("1001").contact(contact), PHONE);
    let mut client = DigestClient::new("1001", "secret", b"cnonce-seed".to_vec());
    client
        .on_challenge(&challenges(&first))
        .expect("usable challenge");
    let mut authed = |cseq: u32| {
        let auth = client.authorization("REGISTER", "sip:pbx.example", b"");
        let msg = Req::new("1001")
            .contact(contact)
            .cseq(cseq)
            .auth(auth)
            .msg();
        // The core validates (and so parses the Contact list) before the registrar runs.
        msg.contacts_ref().expect("contacts");
        msg
    };
    let o = e.send_msg(0, &authed(2), PHONE);
    assert!(o.changed && !o.refresh_only);
    let refresh = authed(3);
    let before = ALLOCS.with(std::cell::Cell::get);
    let o = e.send_msg(10, &refresh, PHONE);
    let n = ALLOCS.with(std::cell::Cell::get) - before;
    assert!(o.changed && o.refresh_only, "{o:?}");
    assert_eq!(ok_contacts(&o).len(), 1);
    let b = e.reg.lookup("1001", e.t0 + Duration::from_secs(10));
    assert_eq!(
        (
            b.len(),
            b[0].cseq,
            b[0].user_agent.as_deref(),
            b[0].instance.as_deref()
        ),
        (1, 3, Some(ua), Some("<urn:uuid:1>"))
    );
    // What is left: the reply (its list, the Contact value, the Date), the outcome's AOR and
    // user name, the parsed credentials and the store's bookkeeping. The Contact URI, instance,
    // Call-ID and User-Agent the binding already holds are not copied again, and no scratch
    // lists are made for one contact (18 allocations before that; 11 before the check-out
    // noted a few bindings on the stack and the To tag took SipHash).
    assert!(n <= 10, "{n} allocations for a refresh");
}

/// Security: reusing a Call-ID and CSeq for another contact must not let an AOR keep more
/// bindings than its `max_contacts` (the eviction must know exactly which bindings this request
/// refreshed or added).
#[test]
fn a_reused_call_id_and_cseq_cannot_exceed_max_contacts() {
    let mut e = env();
    let first = e.send(
        0,
        &Req::new("door").contact("<sip:door@192.168.1.20>"),
        PHONE,
    );
    let mut client = DigestClient::new("door", "bell", b"cnonce-seed".to_vec());
    client
        .on_challenge(&challenges(&first))
        .expect("usable challenge");
    for (i, host) in ["192.168.1.20", "192.168.1.21", "192.168.1.22"]
        .iter()
        .enumerate()
    {
        let auth = client.authorization("REGISTER", "sip:pbx.example", b"");
        let contact = format!("<sip:door@{host}>");
        let req = Req::new("door")
            .contact(&contact)
            .call_id("same@door")
            .cseq(5)
            .auth(auth);
        let o = e.send(i as u64, &req, PHONE);
        assert!(matches!(o.reply, Reply::Ok { .. }), "{o:?}");
        let now = e.t0 + Duration::from_secs(i as u64);
        let bound: Vec<String> = e
            .reg
            .lookup("door", now)
            .iter()
            .map(|b| b.contact_uri.clone())
            .collect();
        assert_eq!(bound, vec![format!("sip:door@{host}")], "after request {i}");
    }
}
