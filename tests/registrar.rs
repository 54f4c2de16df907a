//! Black-box registrar tests: SIPp registers with digest auth (`-au`/`-ap`) over UDP and TCP on
//! IPv4 and IPv6; expiry, several contacts, wrong passwords, restart persistence, brute force.

mod common;

use common::*;
use std::time::Duration;

const USERS: &str = r#"
[[users]]
name = "1001"
password = "kitchen-1001"

[[users]]
name = "1002"
password = "hall-1002"
max_contacts = 3
"#;

fn reg(
    scenario: &str,
    target: std::net::SocketAddr,
    transport: &str,
    user: &str,
    pw: &str,
    extra: &[&str],
) -> SippRun {
    let mut args = vec!["-s", user, "-au", user, "-ap", pw];
    args.extend_from_slice(extra);
    sipp(scenario, target, transport, &args)
}

/// Contact lines of the last 200 OK SIPp received (from its message trace).
fn last_ok_contacts(run: &SippRun) -> Vec<String> {
    let Some(pos) = run.output.rfind("SIP/2.0 200") else {
        return vec![];
    };
    run.output[pos..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.to_ascii_lowercase().starts_with("contact:"))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn register_refresh_unregister_over_udp_and_tcp_on_both_families() {
    let pbx = Pbx::start(USERS);
    for (target, transport) in [
        (pbx.v6(), "u1"),
        (pbx.v4(), "u1"),
        (pbx.v6(), "t1"),
        (pbx.v4(), "t1"),
    ] {
        let run = reg(
            "register.xml",
            target,
            transport,
            "1001",
            "kitchen-1001",
            &[],
        );
        assert!(
            run.ok,
            "register/refresh/unregister {transport} {target}:\n{}",
            run.output
        );
    }
    assert!(pbx.log_text().contains("registered"), "{}", pbx.log_text());
}

#[test]
fn wrong_password_gets_a_new_challenge_never_a_binding() {
    let pbx = Pbx::start(USERS);
    let run = reg(
        "register_wrong.xml",
        pbx.v6(),
        "u1",
        "1001",
        "not-the-password",
        &[],
    );
    assert!(run.ok, "wrong password answered 401:\n{}", run.output);
    // Unknown user: the same answer (no user enumeration).
    let run = reg(
        "register_wrong.xml",
        pbx.v6(),
        "u1",
        "9999",
        "whatever",
        &[],
    );
    assert!(run.ok, "unknown user answered 401:\n{}", run.output);
    let run = reg(
        "register_query.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &[],
    );
    assert!(run.ok, "{}", run.output);
    assert!(
        last_ok_contacts(&run).is_empty(),
        "no binding was created: {:?}",
        last_ok_contacts(&run)
    );
}

#[test]
fn several_contacts_are_listed_with_their_expiry() {
    let pbx = Pbx::start(USERS);
    let run = reg(
        "register_multi.xml",
        pbx.v4(),
        "u1",
        "1002",
        "hall-1002",
        &[],
    );
    assert!(
        run.ok,
        "two contacts registered and listed:\n{}",
        run.output
    );
}

#[test]
fn bindings_expire_and_too_brief_intervals_get_423() {
    let pbx = Pbx::start(&format!("{USERS}\n[registrar]\nmin_expires = 2\n"));
    // 1 s is below min_expires: SIPp expects 200 and must fail on the 423.
    let run = reg(
        "register_once.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &["-key", "expires", "1"],
    );
    assert!(!run.ok, "1 s must be refused");
    assert!(
        run.output.contains("423 Interval Too Brief"),
        "{}",
        run.output
    );
    assert!(run.output.contains("Min-Expires: 2"), "{}", run.output);

    let run = reg(
        "register_once.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &["-key", "expires", "2"],
    );
    assert!(run.ok, "{}", run.output);
    let run = reg(
        "register_query.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &[],
    );
    assert_eq!(
        last_ok_contacts(&run).len(),
        1,
        "bound right after registering:\n{}",
        run.output
    );
    std::thread::sleep(Duration::from_millis(3000));
    let run = reg(
        "register_query.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &[],
    );
    assert!(run.ok, "{}", run.output);
    assert!(
        last_ok_contacts(&run).is_empty(),
        "expired binding gone: {:?}",
        last_ok_contacts(&run)
    );
    assert!(pbx.log_text().contains("registration expired"));
}

#[test]
fn bindings_survive_a_hard_restart_with_their_remaining_expiry() {
    let mut pbx = Pbx::start(USERS);
    let run = reg(
        "register_once.xml",
        pbx.v4(),
        "u1",
        "1001",
        "kitchen-1001",
        &["-key", "expires", "300"],
    );
    assert!(run.ok, "{}", run.output);
    std::thread::sleep(Duration::from_millis(1200)); // the coalesced save (100 ms) has happened
    pbx.restart_hard();
    assert!(
        pbx.log_text().contains("registrations restored"),
        "{}",
        pbx.log_text()
    );
    let run = reg(
        "register_query.xml",
        pbx.v4(),
        "u1",
        "1001",
        "kitchen-1001",
        &[],
    );
    assert!(run.ok, "{}", run.output);
    let contacts = last_ok_contacts(&run);
    assert_eq!(
        contacts.len(),
        1,
        "binding restored: {contacts:?}\n{}",
        run.output
    );
    let expires: u32 = contacts[0]
        .split("expires=")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .expect("expires param");
    assert!(
        (290..=300).contains(&expires),
        "remaining expiry kept, got {expires}"
    );
}

#[test]
fn a_corrupt_state_file_is_moved_aside_and_podpbx_starts_clean() {
    let mut pbx = Pbx::start(USERS);
    let state = pbx.dir.path().join("bindings.json");
    let _ = pbx.child.kill();
    std::fs::write(&state, b"{ this is not json").unwrap();
    pbx.restart_hard();
    let log = pbx.log_text();
    assert!(log.contains("corrupt"), "warning names the file: {log}");
    let moved = std::fs::read_dir(pbx.dir.path())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("bindings.json.corrupt-")
        });
    assert!(moved, "corrupt file moved aside");
    let run = reg(
        "register_once.xml",
        pbx.v4(),
        "u1",
        "1001",
        "kitchen-1001",
        &["-key", "expires", "60"],
    );
    assert!(
        run.ok,
        "serves registrations after starting clean: {}",
        run.output
    );
}

#[test]
fn brute_force_blocks_the_source_and_leaves_others_alone() {
    let pbx = Pbx::start(&format!(
        "{USERS}\n[security]\nmax_auth_failures = 4\nfailure_window_secs = 60\nblock_secs = 60\n"
    ));
    // Each run is one wrong password; the 4th failure blocks, so the 4th run gets no answer.
    let mut answered = 0;
    for _ in 0..6 {
        let run = reg(
            "register_wrong.xml",
            pbx.v4(),
            "u1",
            "1001",
            "guess",
            &["-timeout", "3s"],
        );
        if !run.ok {
            break;
        }
        answered += 1;
    }
    assert_eq!(
        answered, 3,
        "three failures answered, the fourth blocks the source"
    );
    // The blocked source gets silence even for OPTIONS.
    let peer = UdpPeer::new(pbx.v4());
    peer.send(
        request(
            "OPTIONS",
            "sip:127.0.0.1",
            peer.local(),
            "UDP",
            "z9hG4bKblk",
            "",
        )
        .as_bytes(),
    );
    peer.expect_silence(Duration::from_millis(500));
    // Another source (IPv6 loopback) still registers.
    let run = reg(
        "register_once.xml",
        pbx.v6(),
        "u1",
        "1001",
        "kitchen-1001",
        &["-key", "expires", "60"],
    );
    assert!(run.ok, "other source unaffected: {}", run.output);
    let log = pbx.log_text();
    assert!(
        log.contains("security event") && log.contains("Blocked") && log.contains("127.0.0.1"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(1200)); // metrics follow on the 1 s status tick
    let m = http_get(pbx.admin, "/metrics").1;
    assert_eq!(metric(&m, "podpbx_blocked_sources"), Some(1.0), "{m}");
    assert!(
        metric(&m, "podpbx_auth_failures_total").unwrap_or(0.0) >= 4.0,
        "{m}"
    );
}

#[test]
fn a_registration_moves_the_gauge_and_shows_in_ctl() {
    let pbx = Pbx::start(USERS);
    let before = metric(&http_get(pbx.admin, "/metrics").1, "podpbx_registrations");
    assert_eq!(before, Some(0.0));
    let run = reg(
        "register_once.xml",
        pbx.v6(),
        "t1",
        "1002",
        "hall-1002",
        &["-key", "expires", "120"],
    );
    assert!(run.ok, "{}", run.output);
    std::thread::sleep(Duration::from_millis(2000)); // published on the 1 s status tick after the save
    let after = metric(&http_get(pbx.admin, "/metrics").1, "podpbx_registrations");
    assert_eq!(after, Some(1.0));
    let (code, out, err) = ctl(&["--admin", &pbx.admin.to_string(), "registrations"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("1002") && out.contains("sip:1002@"),
        "ctl lists the binding:\n{out}"
    );
}

/// Every value of a header (case-insensitive name), in message order.
fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(msg);
    text.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// A REGISTER for `user` from `peer` (fixed Call-ID and From tag per peer), `extra` header lines
/// before Content-Length.
fn register_request(
    peer: &UdpPeer,
    ruri: &str,
    user: &str,
    cseq: u32,
    branch: &str,
    extra: &str,
) -> String {
    let local = peer.local();
    format!(
        "REGISTER {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag=reg{port}\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: reg-{port}@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Expires: 60\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        port = local.port()
    )
}

/// The first final response (provisional ones skipped).
fn final_response(peer: &UdpPeer) -> Vec<u8> {
    loop {
        let msg = peer.recv().expect("a response in time");
        if status(&msg) >= 200 {
            return msg;
        }
    }
}

/// The algorithm parameter of each challenge.
fn algorithms(challenges: &[String]) -> Vec<String> {
    challenges
        .iter()
        .map(|c| {
            podpbx_sip::digest::Challenge::parse(c)
                .expect("a digest challenge")
                .algorithm
                .unwrap_or_else(|| "MD5".into())
        })
        .collect()
}

#[test]
fn sha256_is_challenged_first_when_configured_and_md5_clients_still_register() {
    let pbx = Pbx::start(&format!(
        "{USERS}\n[registrar]\ndigest_algorithms = [\"SHA-256\", \"MD5\"]\n"
    ));
    let peer = UdpPeer::new(pbx.v4());
    let ruri = format!("sip:{}", pbx.v4());

    // 401 with one WWW-Authenticate per algorithm, SHA-256 first, one nonce.
    peer.send(register_request(&peer, &ruri, "1001", 1, "z9hG4bKsha1", "").as_bytes());
    let resp = final_response(&peer);
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    let challenges = header_values(&resp, "WWW-Authenticate");
    assert_eq!(
        algorithms(&challenges),
        ["SHA-256", "MD5"],
        "{}",
        String::from_utf8_lossy(&resp)
    );
    let nonces: Vec<String> = challenges
        .iter()
        .map(|c| podpbx_sip::digest::Challenge::parse(c).unwrap().nonce)
        .collect();
    assert_eq!(nonces[0], nonces[1], "one nonce for both challenges");

    // Answer with SHA-256 credentials: 200 with the binding.
    let mut client =
        podpbx_sip::digest::DigestClient::new("1001", "kitchen-1001", b"sha256-test".to_vec());
    client.on_challenge(&challenges).expect("usable challenge");
    let auth = client
        .authorization("REGISTER", &ruri, b"")
        .expect("credentials");
    assert!(auth.contains("algorithm=SHA-256"), "{auth}");
    peer.send(
        register_request(
            &peer,
            &ruri,
            "1001",
            2,
            "z9hG4bKsha2",
            &format!("Authorization: {auth}\r\n"),
        )
        .as_bytes(),
    );
    let resp = final_response(&peer);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let contact = header(&resp, "Contact").expect("Contact in the 200");
    assert!(contact.contains(&peer.local().to_string()), "{contact}");

    // The 407 to an INVITE offers the same algorithms in the same order.
    let invite_peer = UdpPeer::new(pbx.v4());
    let invite = request(
        "INVITE",
        &format!("sip:1002@{}", pbx.v4()),
        invite_peer.local(),
        "UDP",
        "z9hG4bKshainv",
        &format!("Contact: <sip:1001@{}>\r\n", invite_peer.local()),
    );
    invite_peer.send(invite.as_bytes());
    let resp = final_response(&invite_peer);
    assert_eq!(status(&resp), 407, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        algorithms(&header_values(&resp, "Proxy-Authenticate")),
        ["SHA-256", "MD5"],
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // ACK the 407 (same branch, the response's To tag).
    let to = header(&resp, "To").expect("To");
    let ack = request(
        "ACK",
        &format!("sip:1002@{}", pbx.v4()),
        invite_peer.local(),
        "UDP",
        "z9hG4bKshainv",
        "",
    );
    let ack = ack.replace(
        &format!("To: <sip:pbx@{}>", invite_peer.local().ip()),
        &format!("To: {to}"),
    );
    invite_peer.send(ack.as_bytes());

    // An MD5-only client that picks the challenge it supports (RFC 8760 §2.5) registers on the
    // same server: its secret is an MD5 HA1, so it can only answer the MD5 challenge. (SIPp 3.6
    // cannot: like old doorbells it takes the first challenge whatever its algorithm, which is
    // why SHA-256 first is opt-in.)
    let md5_peer = UdpPeer::new(pbx.v4());
    md5_peer.send(register_request(&md5_peer, &ruri, "1002", 1, "z9hG4bKmd5a", "").as_bytes());
    let resp = final_response(&md5_peer);
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    let challenges = header_values(&resp, "WWW-Authenticate");
    let realm = podpbx_sip::digest::Challenge::parse(&challenges[0])
        .expect("challenge")
        .realm;
    let md5 = podpbx_sip::digest::HashAlg::Md5;
    let mut client = podpbx_sip::digest::DigestClient::with_secret(
        "1002",
        podpbx_sip::digest::Key::Ha1 {
            hash: md5,
            hex: podpbx_sip::digest::ha1(md5, "1002", &realm, "hall-1002"),
        },
        b"md5-test".to_vec(),
    );
    client.on_challenge(&challenges).expect("the MD5 challenge");
    let auth = client
        .authorization("REGISTER", &ruri, b"")
        .expect("credentials");
    assert!(auth.contains("algorithm=MD5"), "{auth}");
    md5_peer.send(
        register_request(
            &md5_peer,
            &ruri,
            "1002",
            2,
            "z9hG4bKmd5b",
            &format!("Authorization: {auth}\r\n"),
        )
        .as_bytes(),
    );
    let resp = final_response(&md5_peer);
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
}

#[test]
fn the_default_challenges_with_md5_only() {
    let pbx = Pbx::start(USERS);
    let peer = UdpPeer::new(pbx.v6());
    let ruri = format!("sip:{}", pbx.v6());
    peer.send(register_request(&peer, &ruri, "1001", 1, "z9hG4bKmd5only", "").as_bytes());
    let resp = final_response(&peer);
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        algorithms(&header_values(&resp, "WWW-Authenticate")),
        ["MD5"],
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // SIPp (MD5 only, answers the first challenge) registers.
    let run = reg(
        "register_once.xml",
        pbx.v6(),
        "u1",
        "1002",
        "hall-1002",
        &["-key", "expires", "60"],
    );
    assert!(run.ok, "SIPp (MD5) registers:\n{}", run.output);
}
