//! Signalling attacks played against the real binary (issue #11), one test per attack, each
//! written to fail on the code before its defence:
//!
//! 1. credentials computed for another Request-URI (a sniffed answer replayed towards a paid
//!    number) -> `400`, counted;
//! 2. an RFC 2069 answer (no qop: no client nonce, no nonce count) from a user that did not opt
//!    in -> `400`, counted;
//! 3. reflection: one forged INVITE (no credentials / an unsupported extension / from a trunk's
//!    network to no DID) makes podpbx send exactly one datagram to the claimed source, not a
//!    `100` plus eleven copies of the final answer;
//! 4. a brute force rotating through the addresses of one IPv6 /64 is blocked as one source
//!    (network namespace);
//! 5. a guess spread over many /64s stops being checked at the global failure cap, while a
//!    phone that registered before keeps working (network namespace);
//! 6. a blocked source gets no answer at all, not even `400` to a malformed message (UDP and
//!    TCP).
//!
//! Traffic stays on loopback or inside namespaces the tests create (2001:db8::/32).

mod common;

use common::netns::*;
use common::*;
use podpbx_sip::digest::{compute_response, ha1, Algorithm, Challenge, DigestClient, HashAlg};
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const USERS: &str = r#"
[[users]]
name = "1001"
password = "kitchen-1001-x7"

[[users]]
name = "1002"
password = "hall-1002-q9"
"#;

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

/// A request with the headers every test here needs.
fn req(method: &str, ruri: &str, user: &str, local: SocketAddr, n: u32, extra: &str) -> String {
    let h = host(local);
    let body = if method == "INVITE" {
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n".to_string()
    } else {
        String::new()
    };
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {h}:{port};branch=z9hG4bK-att-{n}-{port};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{h}>;tag=f{n}\r\n\
         To: <sip:{user}@{h}>\r\n\
         Call-ID: att-{n}-{port}@test\r\n\
         CSeq: {n} {method}\r\n\
         Contact: <sip:{user}@{h}:{port}>\r\n\
         {extra}{ct}\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        port = local.port()
    )
}

fn code(resp: &[u8]) -> u16 {
    status(resp)
}

/// A request carrying credentials in `header` (`Authorization`, `Proxy-Authorization`).
fn authed(
    method: &str,
    ruri: &str,
    user: &str,
    local: SocketAddr,
    n: u32,
    header: &str,
    auth: &str,
) -> String {
    req(
        method,
        ruri,
        user,
        local,
        n,
        &format!("{header}: {auth}\r\n"),
    )
}

/// Every datagram that arrives within `d`.
fn collect(sock: &UdpSocket, d: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    out
}

/// Sends `text` and returns the first answer (1.5 s at most).
fn ask(sock: &UdpSocket, text: &str) -> Option<Vec<u8>> {
    sock.send(text.as_bytes()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    // Skip provisional answers.
    loop {
        let n = sock.recv(&mut buf).ok()?;
        if code(&buf[..n]) >= 200 {
            return Some(buf[..n].to_vec());
        }
    }
}

fn udp_to(target: SocketAddr) -> UdpSocket {
    let bind = if target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(bind).unwrap();
    s.connect(target).unwrap();
    s
}

/// Challenges a request and returns the challenge header value.
fn challenge_of(resp: &[u8]) -> String {
    header(resp, "WWW-Authenticate")
        .or_else(|| header(resp, "Proxy-Authenticate"))
        .unwrap_or_else(|| panic!("no challenge in:\n{}", String::from_utf8_lossy(resp)))
}

fn auth_failures(pbx: &Pbx) -> f64 {
    // The counter is published on the server's 1 s tick.
    std::thread::sleep(Duration::from_millis(1200));
    metric(
        &http_get(pbx.admin, "/metrics").1,
        "podpbx_auth_failures_total",
    )
    .unwrap_or(-1.0)
}

/// Attack 1: an answer computed for one Request-URI presented with another.
#[test]
fn credentials_for_another_request_uri_are_refused() {
    let pbx = Pbx::start(USERS);
    let sock = udp_to(pbx.v4());
    let local = sock.local_addr().unwrap();
    let ruri = format!("sip:{}", host(pbx.v4()));
    let first = ask(&sock, &req("REGISTER", &ruri, "1001", local, 1, "")).expect("challenge");
    assert_eq!(code(&first), 401);
    let mut client = DigestClient::new("1001", "kitchen-1001-x7", b"uri-test".to_vec());
    client.on_challenge(&[challenge_of(&first)]).unwrap();
    // The right password, hashed for a URI that is not this request's.
    let auth = client
        .authorization("REGISTER", "sip:attacker.example", b"")
        .unwrap();
    let resp = ask(
        &sock,
        &authed("REGISTER", &ruri, "1001", local, 2, "Authorization", &auth),
    )
    .expect("an answer");
    assert_eq!(
        code(&resp),
        400,
        "REGISTER with a digest uri other than the Request-URI:\n{}",
        String::from_utf8_lossy(&resp)
    );
    // INVITE: credentials for calling 1002 replayed on a call to an external number.
    let target = format!("sip:1002@{}", host(pbx.v4()));
    let paid = format!("sip:0049301234567@{}", host(pbx.v4()));
    let first = ask(&sock, &req("INVITE", &paid, "1001", local, 3, "")).expect("407");
    assert_eq!(code(&first), 407);
    let mut client = DigestClient::new("1001", "kitchen-1001-x7", b"uri-test2".to_vec());
    client.on_challenge(&[challenge_of(&first)]).unwrap();
    let auth = client.authorization("INVITE", &target, b"").unwrap();
    let resp = ask(
        &sock,
        &authed(
            "INVITE",
            &paid,
            "1001",
            local,
            4,
            "Proxy-Authorization",
            &auth,
        ),
    )
    .expect("an answer");
    assert_eq!(
        code(&resp),
        400,
        "INVITE to {paid} with credentials for {target}:\n{}",
        String::from_utf8_lossy(&resp)
    );
    assert!(auth_failures(&pbx) >= 2.0, "both counted as failures");
    // The same credentials on the right URI work (the check is not a blanket refusal).
    let first = ask(&sock, &req("REGISTER", &ruri, "1001", local, 5, "")).expect("challenge");
    let mut client = DigestClient::new("1001", "kitchen-1001-x7", b"uri-test3".to_vec());
    client.on_challenge(&[challenge_of(&first)]).unwrap();
    let auth = client.authorization("REGISTER", &ruri, b"").unwrap();
    let resp = ask(
        &sock,
        &authed("REGISTER", &ruri, "1001", local, 6, "Authorization", &auth),
    )
    .unwrap();
    assert_eq!(code(&resp), 200);
}

fn rfc2069(user: &str, password: &str, realm: &str, nonce: &str, uri: &str) -> String {
    let h1 = ha1(HashAlg::Md5, user, realm, password);
    let response =
        compute_response(Algorithm::Md5, &h1, nonce, None, "REGISTER", uri, b"").unwrap();
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5"
    )
}

/// Attack 2: the weaker RFC 2069 answer (no qop, so no cnonce and no nonce count to tie it to
/// one use) from an ordinary user.
#[test]
fn rfc2069_answer_without_qop_is_refused_by_default() {
    let pbx = Pbx::start(USERS);
    let sock = udp_to(pbx.v4());
    let local = sock.local_addr().unwrap();
    let ruri = format!("sip:{}", host(pbx.v4()));
    let first = ask(&sock, &req("REGISTER", &ruri, "1001", local, 1, "")).expect("challenge");
    let ch = Challenge::parse(challenge_of(&first)).unwrap();
    let auth = rfc2069("1001", "kitchen-1001-x7", &ch.realm, &ch.nonce, &ruri);
    let resp = ask(
        &sock,
        &authed("REGISTER", &ruri, "1001", local, 2, "Authorization", &auth),
    )
    .expect("an answer");
    assert_eq!(
        code(&resp),
        400,
        "an RFC 2069 answer from a user without the opt-in:\n{}",
        String::from_utf8_lossy(&resp)
    );
    assert!(auth_failures(&pbx) >= 1.0, "counted as a failure");
}

/// The opt-in for old devices (not an attack: the knob works).
#[test]
fn rfc2069_answer_accepted_for_a_user_that_opts_in() {
    let pbx =
        Pbx::start("[[users]]\nname = \"door\"\npassword = \"bell-77\"\nallow_rfc2069 = true\n");
    let sock = udp_to(pbx.v4());
    let local = sock.local_addr().unwrap();
    let ruri = format!("sip:{}", host(pbx.v4()));
    let first = ask(&sock, &req("REGISTER", &ruri, "door", local, 1, "")).expect("challenge");
    let ch = Challenge::parse(challenge_of(&first)).unwrap();
    let auth = rfc2069("door", "bell-77", &ch.realm, &ch.nonce, &ruri);
    let resp = ask(
        &sock,
        &authed("REGISTER", &ruri, "door", local, 2, "Authorization", &auth),
    )
    .unwrap();
    assert_eq!(code(&resp), 200, "{}", String::from_utf8_lossy(&resp));
}

/// Attack 3: reflection. With T1 = 100 ms an INVITE server transaction would repeat its final
/// answer 6 times within the 7 s we listen (Timer G: 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s); the
/// victim whose address the forged INVITE carries must see exactly one datagram.
#[test]
fn one_forged_invite_gets_exactly_one_datagram() {
    let pbx = Pbx::start(&format!(
        "t1_ms = 100\n{USERS}\n\
         [[trunks]]\nname = \"provider\"\nhost = \"127.0.0.1\"\nport = 5999\n\
         dids = [\"+4930555000\"]\nnetworks = [\"127.0.0.1/32\"]\n\n\
         [[dialplan]]\nname = \"in\"\nmatch = {{ did = \"+4930555000\" }}\naction = \"ring\"\ntargets = [\"1001\"]\n"
    ));
    // 127.0.0.1 is the trunk's network; the other forgeries come from [::1].
    let (v4, v6) = (pbx.v4(), pbx.v6());
    let cases = [
        (
            "no credentials",
            v6,
            format!("sip:0049301234567@{}", host(v6)),
            "",
            407,
        ),
        (
            "an unsupported extension",
            v6,
            format!("sip:1002@{}", host(v6)),
            "Require: x-forged-extension\r\n",
            420,
        ),
        (
            "from the trunk network to no DID",
            v4,
            format!("sip:0900123456@{}", host(v4)),
            "",
            404,
        ),
    ];
    let socks: Vec<UdpSocket> = cases.iter().map(|c| udp_to(c.1)).collect();
    for (i, ((_, _, ruri, extra, _), sock)) in cases.iter().zip(&socks).enumerate() {
        let local = sock.local_addr().unwrap();
        sock.send(req("INVITE", ruri, "1001", local, 10 + i as u32, extra).as_bytes())
            .unwrap();
    }
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = socks
            .iter()
            .map(|sock| s.spawn(move || collect(sock, Duration::from_secs(7))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut report = String::new();
    for ((what, _, _, _, want), answers) in cases.iter().zip(&got) {
        let codes: Vec<u16> = answers.iter().map(|a| code(a)).collect();
        report.push_str(&format!("{what}: {codes:?}\n"));
        assert!(
            codes.contains(want),
            "{what}: expected a {want}, got {codes:?}"
        );
    }
    for ((what, _, _, _, _), answers) in cases.iter().zip(&got) {
        assert_eq!(
            answers.len(),
            1,
            "one forged INVITE ({what}) must bring its claimed source one datagram:\n{report}"
        );
    }
    // Nothing is left behind waiting for an ACK that never comes.
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_sip_stateless_responses_total").unwrap_or(0.0) >= 3.0);
}

/// Attack 4: a brute force that moves to a new address of its /64 for every guess. The pod
/// (2001:db8:5::1) and the attacker's /64 (2001:db8:6:1::/64, every address local through an
/// AnyIP route) share one namespace; the test thread enters it.
#[test]
fn brute_force_rotating_through_a_64_is_blocked_as_one_source() {
    assert!(
        is_root(),
        "this test builds a network namespace (CI runs as root)"
    );
    let ns = Netns::new("sigsec64");
    anyip(&ns);
    let pbx = Pbx::start_in(
        &ns,
        &format!(
            "[sip]\nipv6 = \"2001:db8:5::1\"\nport = 5060\ntransports = [\"udp\"]\n\
             [security]\nmax_auth_failures = 4\n{USERS}"
        ),
        5060,
    );
    let target: SocketAddr = "[2001:db8:5::1]:5060".parse().unwrap();
    let ns_name = ns.name.clone();
    let report = std::thread::spawn(move || {
        enter_netns(&ns_name);
        let mut answers = Vec::new();
        for i in 1..=8u32 {
            // A fresh address of the same /64 for every guess.
            let src: SocketAddr = format!("[2001:db8:6:1::{i:x}]:0").parse().unwrap();
            answers.push(guess(src, target, i));
        }
        // Another /64 is unaffected.
        let other = guess("[2001:db8:6:2::1]:0".parse().unwrap(), target, 99);
        (answers, other)
    })
    .join()
    .unwrap();
    let (answers, other) = report;
    // Four failures block the /64: guesses 1..4 are answered (the 4th starts the block and is
    // dropped), everything after from any address of the /64 gets silence.
    assert!(
        answers[..3].iter().all(|a| a == &Some(401)),
        "first guesses challenged: {answers:?}"
    );
    assert!(
        answers[4..].iter().all(Option::is_none),
        "addresses of a blocked /64 must get silence: {answers:?}"
    );
    assert_eq!(other, Some(401), "another /64 still gets answers");
    drop(pbx);
}

/// Sends a REGISTER from `src`, answers the challenge with a wrong password; returns the code
/// of the answer to the guess (`None`: silence, or no challenge at all).
fn guess(src: SocketAddr, target: SocketAddr, n: u32) -> Option<u16> {
    register(src, target, "1001", &format!("guess-{n}"), n)
}

/// Registers `user` from `src`; the final code (`None`: silence).
fn register(
    src: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
    n: u32,
) -> Option<u16> {
    let sock = UdpSocket::bind(src).expect("bind");
    sock.connect(target).unwrap();
    let local = sock.local_addr().unwrap();
    let ruri = format!("sip:{}", host(target));
    let first = ask(&sock, &req("REGISTER", &ruri, user, local, n * 2, ""))?;
    if code(&first) != 401 {
        return Some(code(&first));
    }
    let mut client = DigestClient::new(user, password, b"r".to_vec());
    client.on_challenge(&[challenge_of(&first)]).ok()?;
    let auth = client.authorization("REGISTER", &ruri, b"")?;
    ask(
        &sock,
        &authed(
            "REGISTER",
            &ruri,
            user,
            local,
            n * 2 + 1,
            "Authorization",
            &auth,
        ),
    )
    .map(|r| code(&r))
}

/// The namespace's loopback, the pod's address and an AnyIP route for 2001:db8:6::/48, so the
/// test can send from any address of it.
fn anyip(ns: &Netns) {
    ip_in(
        &ns.name,
        &["addr", "add", "2001:db8:5::1/128", "dev", "lo", "nodad"],
    );
    ip_in(
        &ns.name,
        &[
            "-6",
            "route",
            "add",
            "local",
            "2001:db8:6::/48",
            "dev",
            "lo",
        ],
    );
    ns.sysctl("net.ipv6.ip_nonlocal_bind=1");
}

/// Attack 5: the guess spread over many /64s (each below the per-source limit). The default
/// global cap (100 failures a minute) is reached after 50 prefixes with two wrong guesses each;
/// then the right password from yet another prefix is not even checked, while the phone that
/// registered before the attack still refreshes.
#[test]
fn guessing_spread_over_many_prefixes_hits_the_global_cap() {
    assert!(
        is_root(),
        "this test builds a network namespace (CI runs as root)"
    );
    let ns = Netns::new("sigseccap");
    anyip(&ns);
    let pbx = Pbx::start_in(
        &ns,
        &format!("[sip]\nipv6 = \"2001:db8:5::1\"\nport = 5060\ntransports = [\"udp\"]\n{USERS}"),
        5060,
    );
    let target: SocketAddr = "[2001:db8:5::1]:5060".parse().unwrap();
    let ns_name = ns.name.clone();
    let (phone_before, guesses, stolen, phone_after) = std::thread::spawn(move || {
        enter_netns(&ns_name);
        let phone: SocketAddr = "[2001:db8:6:ffff::10]:0".parse().unwrap();
        let phone_before = register(phone, target, "1002", "hall-1002-q9", 1);
        let mut answered = 0;
        for p in 1..=50u32 {
            for g in 0..2u32 {
                let src: SocketAddr = format!("[2001:db8:6:{p:x}::{:x}]:0", g + 1)
                    .parse()
                    .unwrap();
                answered += usize::from(guess(src, target, 1000 + p * 4 + g).is_some());
            }
        }
        // The attacker's 51st prefix now tries the real password.
        let stolen = register(
            "[2001:db8:6:99::1]:0".parse().unwrap(),
            target,
            "1001",
            "kitchen-1001-x7",
            7,
        );
        let phone_after = register(phone, target, "1002", "hall-1002-q9", 9);
        (phone_before, answered, stolen, phone_after)
    })
    .join()
    .unwrap();
    assert_eq!(
        phone_before,
        Some(200),
        "the phone registers before the attack"
    );
    assert_eq!(
        guesses, 100,
        "every guess was answered (no prefix reached its own limit)"
    );
    assert_eq!(
        stolen,
        Some(401),
        "past the global cap a new prefix's credentials are not checked, even the right ones"
    );
    assert_eq!(
        phone_after,
        Some(200),
        "a phone known before the attack still registers"
    );
    drop(pbx);
}

/// Attack 6: once blocked, a source gets nothing back, not even the `400` a malformed request
/// would get (which would tell a scanner the block lifted or that podpbx is there).
#[test]
fn blocked_source_gets_no_answer_even_to_malformed_requests() {
    let pbx = Pbx::start(&format!("[security]\nmax_auth_failures = 3\n{USERS}"));
    let target = pbx.v4();
    let bad = |local: SocketAddr, n: u32, transport: &str| {
        format!(
            "OPTIONS sip:{th} SIP/2.0\r\nVia: SIP/2.0/{transport} {h}:{p};branch=z9hG4bK-bad{n}\r\n\
             From: <sip:x@{h}>;tag=b{n}\r\nTo: <sip:{th}>\r\nCall-ID: bad{n}@x\r\nCSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\nContent-Length: 12\r\n\r\n",
            th = host(target),
            h = host(local),
            p = local.port()
        )
    };
    // Before the block a malformed request (Content-Length beyond the datagram) gets 400.
    let sock = udp_to(target);
    let local = sock.local_addr().unwrap();
    let r = ask(&sock, &bad(local, 1, "UDP")).expect("400 before the block");
    assert_eq!(code(&r), 400);
    for i in 0..3 {
        let _ = guess("127.0.0.1:0".parse().unwrap(), target, 10 + i);
    }
    // Blocked now: silence over UDP ...
    sock.send(bad(local, 2, "UDP").as_bytes()).unwrap();
    let got = collect(&sock, Duration::from_millis(1500));
    assert!(
        got.is_empty(),
        "a blocked source got an answer over UDP:\n{}",
        String::from_utf8_lossy(&got[0])
    );
    // ... and over TCP (the unframeable stream is not answered either).
    let mut s = tcp_connect(target);
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let l = s.local_addr().unwrap();
    tcp_send(
        &mut s,
        format!(
            "OPTIONS sip:{th} SIP/2.0\r\nVia: SIP/2.0/TCP {h}:{p};branch=z9hG4bK-badtcp\r\n\
             From: <sip:x@{h}>;tag=bt\r\nTo: <sip:{th}>\r\nCall-ID: badtcp@x\r\nCSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\nContent-Length: 99999999\r\n\r\n",
            th = host(target),
            h = host(l),
            p = l.port()
        )
        .as_bytes(),
    );
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "a blocked source got an answer over TCP:\n{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_sip_blocked_requests_total").unwrap_or(0.0) >= 2.0);
}

/// Attack 7: values from the network that would forge log lines or take over the terminal of
/// whoever reads the log (a bare CR returns to the start of the line and overwrites it, ESC
/// starts an ANSI sequence). The text log must hold neither, whatever field carries them.
#[test]
fn network_values_cannot_forge_or_colour_log_lines() {
    let pbx = Pbx::start(USERS);
    let sock = udp_to(pbx.v4());
    let local = sock.local_addr().unwrap();
    let evil = "inj\x1b[2J\x1b[31m\r2026-01-01T00:00:00Z  WARN podpbx::security: FAKE";
    let h = host(local);
    for (i, method) in ["OPTIONS", "REGISTER", "INVITE", "BYE"].iter().enumerate() {
        let text = format!(
            "{method} sip:1001@{th} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-{evil}-{i};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"{evil}\" <sip:1001@{h}>;tag=e{i}\r\n\
             To: <sip:1001@{th}>{to_tag}\r\n\
             Call-ID: {evil}-{i}@x\r\n\
             CSeq: 1 {method}\r\n\
             User-Agent: {evil}\r\n\
             Contact: <sip:1001@{h}:{p}>\r\n\
             Authorization: Digest username=\"{evil}\", realm=\"x\", nonce=\"n\", uri=\"sip:x\", response=\"0\"\r\n\
             Content-Length: 0\r\n\r\n",
            th = host(pbx.v4()),
            p = local.port(),
            to_tag = if *method == "BYE" { ";tag=t" } else { "" },
        );
        sock.send(text.as_bytes()).unwrap();
        let _ = collect(&sock, Duration::from_millis(300));
    }
    // A stray response and garbage too.
    sock.send(format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {h};branch=z9hG4bK{evil}\r\nCSeq: 1 {evil}\r\nCall-ID: {evil}\r\n\r\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read(&pbx.log).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("inj"),
        "the requests were logged (debug level), so the test looks at something"
    );
    let esc = log.iter().filter(|b| **b == 0x1b).count();
    let cr = log.iter().filter(|b| **b == b'\r').count();
    let forged = text
        .lines()
        .filter(|l| l.starts_with("2026-01-01T00:00:00Z"))
        .count();
    assert!(
        esc == 0 && cr == 0 && forged == 0,
        "raw ESC ({esc}) or CR ({cr}) or forged lines ({forged}) in the text log:\n{}",
        text.lines()
            .filter(|l| l.contains("inj") || l.contains("FAKE"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Attack 8: a failed login per packet must not become a log line per packet. 60 wrong
/// passwords (no blocking configured): at most 20 `security event` lines per kind in 10 s, and
/// the next line after the window says how many were held back.
#[test]
fn repeated_security_warnings_are_rate_limited_and_counted() {
    let pbx = Pbx::start(&format!("[security]\nmax_auth_failures = 0\n{USERS}"));
    for i in 0..60 {
        assert_eq!(
            guess("127.0.0.1:0".parse().unwrap(), pbx.v4(), 100 + i),
            Some(401),
            "guess {i}"
        );
    }
    let lines = |pbx: &Pbx| {
        pbx.log_text()
            .lines()
            .filter(|l| l.contains("security event"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let during = lines(&pbx).len();
    assert!(
        during <= 22,
        "{during} security event lines for 60 failures in a burst"
    );
    // After the 10 s window the next failure is logged with the count of the held-back ones.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        guess("127.0.0.1:0".parse().unwrap(), pbx.v4(), 999),
        Some(401)
    );
    std::thread::sleep(Duration::from_millis(200));
    let all = lines(&pbx);
    let last = all.last().expect("a line");
    assert!(
        last.contains(&format!("suppressed={}", 60 - during)),
        "the next line reports the held-back ones: {last}"
    );
}
