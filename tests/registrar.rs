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
    std::thread::sleep(Duration::from_millis(1200)); // the coalesced save (500 ms) has happened
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
