//! Black-box call tests: SIPp callers (digest via a 407 round) and SIPp phones (REGISTER, then
//! the call flow in an out-of-call scenario) through the real podpbx binary; RTP through the
//! relay from an IPv4 "doorbell" socket to an IPv6 phone and back; config reload.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[security]
trusted_networks = ["127.0.0.0/8", "::1/128"]

[[users]]
name = "101"
password = "pw-101"

[[users]]
name = "102"
password = "pw-102"

[[users]]
name = "103"
password = "pw-103"

[[users]]
name = "104"
password = "pw-104"

[[users]]
name = "190"
display_name = "Door"
identify_by_source = true
allow_from = ["127.0.0.1/32"]

[[groups]]
name = "phones"
members = ["102", "103", "104"]

[[dialplan]]
name = "door"
match = { caller = "190" }
action = "ring"
targets = ["102"]
timeout_secs = 10

[[dialplan]]
name = "group"
match = { number = "600", from = "local" }
action = "ring"
targets = ["phones"]
timeout_secs = 10

[[dialplan]]
name = "closed"
match = { number = "700" }
action = "reject"
status = 486

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 3
"#;

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

fn phone(pbx: &Pbx, user: &str, ooc: &str, extra: &[&str]) -> Phone {
    Phone::start(pbx.v6(), user, &pw(user), ooc, extra)
}

/// Runs a SIPp caller as 101 (digest through a 407) dialling `number`.
fn call(pbx: &Pbx, scenario: &str, number: &str, extra: &[&str]) -> SippRun {
    let mut args = vec![
        "-s",
        number,
        "-au",
        "101",
        "-ap",
        "pw-101",
        "-key",
        "caller",
        "101",
        "-trace_logs",
    ];
    args.extend_from_slice(extra);
    sipp(scenario, pbx.v6(), "u1", &args)
}

fn cdr_file(pbx: &Pbx) -> std::path::PathBuf {
    pbx.dir.path().join("cdr.jsonl")
}

fn check_phone(p: Phone, what: &str, pbx: &Pbx) -> String {
    let (ok, logs) = p.finish(Duration::from_secs(10));
    assert!(
        ok,
        "{what}: phone flow incomplete:\n{logs}\n--- podpbx ---\n{}",
        tail(&pbx.log_text())
    );
    logs
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

#[test]
fn basic_call_caller_hangs_up_with_cdr() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_answer.xml", &[]);
    let run = call(&pbx, "call_uac.xml", "102", &["-d", "300"]);
    assert!(
        run.ok,
        "caller:\n{}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    let logs = check_phone(p, "callee", &pbx);
    // The callee saw only podpbx: its own Call-ID, our SDP address, no caller port.
    assert!(logs.contains("c=IN IP6 ::1"), "{logs}");
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs.len(), 1, "one CDR line per call");
    let c = &cdrs[0];
    assert_eq!(c["disposition"], "answered", "{c}");
    assert_eq!(c["caller"], "101");
    assert_eq!(c["callee"], "102");
    assert_eq!(c["answered_by"], "102");
    assert_eq!(c["hangup_by"], "caller");
    assert!(c["answer"].is_string() && c["end"].is_string());
    assert_eq!(c["legs"].as_array().map(|l| l.len()), Some(2));
}

#[test]
fn callee_hangs_up() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_bye.xml", &[]);
    let run = call(&pbx, "call_uac_wait_bye.xml", "102", &[]);
    assert!(
        run.ok,
        "caller gets the BYE:\n{}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    check_phone(p, "callee", &pbx);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["hangup_by"], "callee");
}

#[test]
fn busy_unknown_and_rejected() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_busy.xml", &[]);
    let run = call(&pbx, "call_uac_fail.xml", "102", &[]);
    assert!(
        run.output.contains("FINAL-486"),
        "busy phone -> 486:\n{}",
        run.output
    );
    check_phone(p, "busy callee", &pbx);
    let run = call(&pbx, "call_uac_fail.xml", "199", &[]);
    assert!(
        run.output.contains("FINAL-404"),
        "unknown extension -> 404:\n{}",
        run.output
    );
    // 103 exists but has no registered contact.
    let run = call(&pbx, "call_uac_fail.xml", "103", &[]);
    assert!(
        run.output.contains("FINAL-480"),
        "no contact -> 480:\n{}",
        run.output
    );
    let cdrs = cdrs(&cdr_file(&pbx), 3, Duration::from_secs(5));
    let d: Vec<&str> = cdrs
        .iter()
        .filter_map(|c| c["disposition"].as_str())
        .collect();
    assert_eq!(d, vec!["busy", "rejected", "no_answer"]);
}

#[test]
fn no_answer_times_out_with_480_and_cancels_the_phone() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_ring.xml", &[]);
    let started = Instant::now();
    let run = call(&pbx, "call_uac_fail.xml", "102", &[]);
    assert!(
        run.output.contains("FINAL-480"),
        "ring timeout -> 480:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "rang for the rule's 3 s"
    );
    check_phone(p, "phone gets CANCEL", &pbx);
}

#[test]
fn caller_cancel_reaches_the_phone() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_ring.xml", &[]);
    let run = call(&pbx, "call_uac_cancel.xml", "102", &[]);
    assert!(
        run.ok,
        "caller: 200 for CANCEL, 487:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    check_phone(p, "phone gets CANCEL", &pbx);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["disposition"], "cancelled");
}

#[test]
fn ring_group_of_three_first_answer_wins_others_cancelled() {
    let pbx = Pbx::start(CONFIG);
    let a = phone(&pbx, "102", "call_phone_slow_answer.xml", &[]);
    let b = phone(&pbx, "103", "call_phone_ring.xml", &[]);
    let c = phone(&pbx, "104", "call_phone_ring.xml", &[]);
    let run = call(&pbx, "call_uac.xml", "600", &["-d", "300"]);
    assert!(run.ok, "caller:\n{}\n{}", run.output, tail(&pbx.log_text()));
    check_phone(b, "103 cancelled", &pbx);
    check_phone(c, "104 cancelled", &pbx);
    check_phone(a, "102 answered", &pbx);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["answered_by"], "102");
    assert_eq!(cdrs[0]["legs"].as_array().map(|l| l.len()), Some(4));
}

#[test]
fn hold_and_resume_reinvites_pass_across() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_hold.xml", &[]);
    let run = call(&pbx, "call_uac_hold.xml", "102", &[]);
    assert!(run.ok, "caller:\n{}\n{}", run.output, tail(&pbx.log_text()));
    check_phone(p, "callee sees sendonly then sendrecv", &pbx);
}

#[test]
fn blind_transfer_by_refer() {
    let pbx = Pbx::start(CONFIG);
    let target = phone(&pbx, "103", "call_phone_answer.xml", &[]);
    let transferor = phone(
        &pbx,
        "102",
        "call_phone_refer.xml",
        &["-key", "target", "103"],
    );
    let run = call(&pbx, "call_uac_reinvited.xml", "102", &["-d", "2500"]);
    assert!(
        run.ok,
        "caller re-INVITEd with the target's media, stays connected, then hangs up:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    check_phone(transferor, "transferor: 202, NOTIFY 100/200, BYE", &pbx);
    check_phone(
        target,
        "transfer target answered and got the caller's BYE",
        &pbx,
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["transferred_to"], "103", "{}", cdrs[0]);
}

/// Minimal raw SIP over UDP for the doorbell (identified by its source address, no digest).
fn recv_msg(s: &UdpSocket) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn hdr(msg: &str, name: &str) -> Option<String> {
    msg.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The doorbell's side of a call: raw SIP and RTP sockets on 127.0.0.1.
struct DoorCall {
    sip: UdpSocket,
    rtp: UdpSocket,
    me: SocketAddr,
    call_id: &'static str,
}

/// The relay's address in a message's SDP (`m=audio` port, on 127.0.0.1).
fn relay_of(msg: &str) -> SocketAddr {
    let port: u16 = msg
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("m=audio ")))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("m= port in:\n{msg}"));
    format!("127.0.0.1:{port}").parse().unwrap()
}

impl DoorCall {
    /// The doorbell (190, identified by its source address) sends an INVITE for 1 (the ring
    /// rule sends it to 102); `sdp_extra` is appended to its SDP.
    fn invite(pbx: &Pbx, call_id: &'static str, sdp_extra: &str) -> DoorCall {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.connect(pbx.v4()).unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let me = sip.local_addr().unwrap();
        let sdp = format!(
            "v=0\r\no=door 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0{}\r\na=rtpmap:0 PCMU/8000\r\n{sdp_extra}",
            rtp.local_addr().unwrap().port(),
            if sdp_extra.contains("telephone-event") { " 101" } else { "" },
        );
        let invite = format!(
            "INVITE sip:1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}-1;rport\r\nMax-Forwards: 70\r\n\
             From: \"Door\" <sip:190@127.0.0.1>;tag=door\r\nTo: <sip:1@127.0.0.1>\r\nCall-ID: {call_id}@test\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:190@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip.send(invite.as_bytes()).unwrap();
        DoorCall {
            sip,
            rtp,
            me,
            call_id,
        }
    }

    /// The first response starting with `status` (e.g. `SIP/2.0 200`), other 1xx skipped
    /// (bounded: 8 s).
    fn wait_for(&self, pbx: &Pbx, status: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            assert!(
                Instant::now() < deadline,
                "no {status}:\n{}",
                tail(&pbx.log_text())
            );
            let Some(m) = recv_msg(&self.sip) else {
                continue;
            };
            if m.starts_with(status) {
                return m;
            }
            assert!(
                m.starts_with("SIP/2.0 1"),
                "unexpected before {status}: {m}"
            );
        }
    }

    /// An in-dialog request (no body) in the dialog of the 2xx `ok`.
    fn in_dialog(&self, ok: &str, method: &str, cseq: u32) {
        let to = hdr(ok, "To").unwrap();
        let contact = hdr(ok, "Contact").unwrap();
        let ruri = contact.trim_start_matches('<').split('>').next().unwrap();
        let (me, call_id) = (self.me, self.call_id);
        let req = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}-{cseq}{method};rport\r\nMax-Forwards: 70\r\n\
             From: \"Door\" <sip:190@127.0.0.1>;tag=door\r\nTo: {to}\r\nCall-ID: {call_id}@test\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        self.sip.send(req.as_bytes()).unwrap();
    }

    /// INVITE, the 200 (its SDP checked for the IPv4 leg) and the ACK: the answered call, its
    /// 200 and the relay's address for the doorbell's media.
    fn answered(pbx: &Pbx, sdp_extra: &str) -> (DoorCall, String, SocketAddr) {
        let door = DoorCall::invite(pbx, "doorbell", sdp_extra);
        let ok = door.wait_for(pbx, "SIP/2.0 200");
        assert!(
            ok.contains("c=IN IP4 127.0.0.1"),
            "IPv4 SDP for the IPv4 leg:\n{ok}"
        );
        assert!(
            !ok.contains("::1"),
            "no IPv6 address leaks to the doorbell:\n{ok}"
        );
        door.in_dialog(&ok, "ACK", 1);
        let relay = relay_of(&ok);
        (door, ok, relay)
    }

    /// BYE, and its 200 (bounded).
    fn hang_up(&self, ok: &str) {
        self.in_dialog(ok, "BYE", 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no 200 for BYE");
            if recv_msg(&self.sip)
                .is_some_and(|m| m.starts_with("SIP/2.0 200") && m.contains("BYE"))
            {
                break;
            }
        }
    }
}

/// A caller that floods end-of-event packets, each a new digit, does not get an event per
/// packet into the core loop: the relay reports digits at a human rate and counts the rest in
/// `podpbx_relay_digits_limited_total`, the packets still reach the phone, and podpbx answers
/// other requests meanwhile.
#[test]
fn a_flood_of_rfc4733_digits_is_limited_and_counted() {
    const FLOOD: u32 = 5_000;
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_answer.xml", &[]);
    let (door, ok, relay) = DoorCall::answered(&pbx, "a=rtpmap:101 telephone-event/8000\r\n");
    for i in 0..FLOOD {
        let mut pkt = vec![0x80u8, 101];
        pkt.extend_from_slice(&(i as u16).to_be_bytes());
        pkt.extend_from_slice(&(i * 800).to_be_bytes());
        pkt.extend_from_slice(&0x0d00_0d00u32.to_be_bytes());
        // Digit 1, end bit, volume 10, 100 ms.
        pkt.extend_from_slice(&[1, 0x8a, 0x03, 0x20]);
        door.rtp.send_to(&pkt, relay).unwrap();
    }
    let options = UdpPeer::new(pbx.v4());
    options.send(
        request(
            "OPTIONS",
            "sip:127.0.0.1",
            options.local(),
            "UDP",
            "z9hG4bKflood",
            "",
        )
        .as_bytes(),
    );
    let answer = options.recv().expect("podpbx answers during the flood");
    assert_eq!(status(&answer), 200);
    let series = |name: &str| metric(&http_get(pbx.admin, "/metrics").1, name);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && series("podpbx_relay_digits_limited_total").unwrap_or(0.0) < f64::from(FLOOD / 2)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let limited = series("podpbx_relay_digits_limited_total").unwrap_or(0.0);
    let forwarded = series("podpbx_relay_packets_total").unwrap_or(0.0);
    eprintln!("{FLOOD} digits sent: {limited} limited, {forwarded} packets forwarded");
    assert!(
        limited >= f64::from(FLOOD / 2),
        "{limited} digits limited of {FLOOD}\n{}",
        tail(&pbx.log_text())
    );
    assert!(
        forwarded >= limited,
        "the packets were forwarded ({forwarded})"
    );
    assert_eq!(series("podpbx_relay_events_dropped_total"), Some(0.0));
    door.hang_up(&ok);
    check_phone(p, "IPv6 phone", &pbx);
}

#[test]
fn ipv4_doorbell_to_ipv6_phone_rtp_flows_both_ways_through_the_relay() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "call_phone_answer.xml", &["-rtp_echo"]);
    let (door, ok, relay) = DoorCall::answered(&pbx, "");
    let rtp = &door.rtp;
    // 40 PCMU packets to the relay; SIPp echoes them back through it.
    let mut echoed = 0;
    for i in 0..40u16 {
        let mut pkt = vec![0x80u8, 0x00];
        pkt.extend_from_slice(&i.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
        pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        pkt.extend(std::iter::repeat_n(0xffu8, 160));
        rtp.send_to(&pkt, relay).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        rtp.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = rtp.recv_from(&mut buf) {
            assert_eq!(from, relay, "media comes back from the relay");
            echoed += 1;
        }
        rtp.set_nonblocking(false).unwrap();
    }
    let mut buf = [0u8; 2048];
    while rtp.recv_from(&mut buf).is_ok() {
        echoed += 1;
    }
    door.hang_up(&ok);
    let logs = check_phone(p, "IPv6 phone", &pbx);
    assert!(
        logs.contains("c=IN IP6 ::1"),
        "IPv6 SDP for the IPv6 leg:\n{logs}"
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    let c = &cdrs[0];
    assert_eq!(c["caller"], "190");
    assert!(
        echoed > 10,
        "RTP echoed back through the relay: {echoed} packets\n{c}\n{logs}"
    );
    let legs = c["legs"].as_array().expect("legs");
    assert!(
        legs[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{c}"
    );
    assert!(
        legs[1]["remote"].as_str().unwrap().starts_with("[::1]:"),
        "{c}"
    );
    assert!(
        legs[0]["media"]["rtp_packets"].as_u64().unwrap() >= 30,
        "relay counted the doorbell's RTP: {c}"
    );
    assert!(
        legs[1]["media"]["rtp_packets"].as_u64().unwrap() > 10,
        "relay counted the phone's echo: {c}"
    );
    // The process-wide relay counters include the released session (1 s status tick).
    std::thread::sleep(Duration::from_millis(1200));
    let m = http_get(pbx.admin, "/metrics").1;
    let forwarded = metric(&m, "podpbx_relay_packets_total").unwrap_or(0.0);
    assert!(
        forwarded >= 40.0,
        "relay packets in /metrics: {forwarded}\n{m}"
    );
}

#[test]
fn reload_valid_edit_applies_to_next_call_invalid_edit_keeps_old_plan() {
    let pbx = Pbx::start(CONFIG);
    let run = call(&pbx, "call_uac_fail.xml", "700", &[]);
    assert!(run.output.contains("FINAL-486"), "{}", run.output);
    let path = pbx.dir.path().join("podpbx.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("status = 486", "status = 503")).unwrap();
    let wait_for = |needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(8);
        while pbx.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in the log:\n{}",
                tail(&pbx.log_text())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("configuration reloaded", 1);
    let run = call(&pbx, "call_uac_fail.xml", "700", &[]);
    assert!(
        run.output.contains("FINAL-503"),
        "new plan for the next call:\n{}",
        run.output
    );
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("action = \"reject\"", "action = \"rejct\""),
    )
    .unwrap();
    wait_for("configuration reload rejected", 1);
    let run = call(&pbx, "call_uac_fail.xml", "700", &[]);
    assert!(
        run.output.contains("FINAL-503"),
        "old plan kept:\n{}",
        run.output
    );
}

#[test]
fn graceful_stop_with_a_call_up_byes_both_legs_and_writes_the_cdr() {
    let mut pbx = Pbx::start(CONFIG);
    // The phone answers and then expects podpbx's BYE; the caller likewise waits for a BYE.
    let p = phone(&pbx, "102", "call_phone_answer.xml", &[]);
    let target = pbx.v6();
    let caller = std::thread::spawn(move || {
        let args = [
            "-s", "102", "-au", "101", "-ap", "pw-101", "-key", "caller", "101", "-timeout", "40s",
        ];
        sipp("call_uac_wait_bye.xml", target, "u1", &args)
    });
    let up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < up
        && metric(&http_get(pbx.admin, "/metrics").1, "podpbx_calls_active") != Some(1.0)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&http_get(pbx.admin, "/metrics").1, "podpbx_calls_active"),
        Some(1.0),
        "call is up"
    );
    // New calls are refused while draining; the call in progress is ended after the grace period.
    let started = Instant::now();
    assert_eq!(
        pbx.terminate(),
        Some(0),
        "exit 0 after the drain:\n{}",
        tail(&pbx.log_text())
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "stopped within the pod's grace period: {took:?}"
    );
    let run = caller.join().expect("caller thread");
    assert!(run.ok, "caller received BYE:\n{}", run.output);
    check_phone(p, "callee received BYE", &pbx);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(2));
    assert_eq!(cdrs.len(), 1, "CDR flushed before exit");
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
}

/// RFC 4733 → SIP INFO: the IPv4 doorbell (telephone-event 101 in its SDP) sends digit 5 as RTP
/// events through the relay; 102, configured `dtmf = "info"` (its phone's SDP offers
/// telephone-event too, the configuration wins), gets an in-dialog INFO
/// `application/dtmf-relay` with `Signal=5` and answers it; the doorbell gets no INFO.
#[test]
fn rfc4733_digit_from_the_doorbell_reaches_an_info_phone_as_sip_info() {
    let config = CONFIG.replace(
        "password = \"pw-102\"\n",
        "password = \"pw-102\"\ndtmf = \"info\"\n",
    );
    assert_ne!(config, CONFIG);
    let pbx = Pbx::start(&config);
    let p = phone(&pbx, "102", "call_phone_info.xml", &[]);
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.connect(pbx.v4()).unwrap();
    sip.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sip.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=door 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
        rtp.local_addr().unwrap().port()
    );
    let invite = format!(
        "INVITE sip:1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdtmf1;rport\r\nMax-Forwards: 70\r\n\
         From: \"Door\" <sip:190@127.0.0.1>;tag=door\r\nTo: <sip:1@127.0.0.1>\r\nCall-ID: doorbell-dtmf@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:190@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send(invite.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let ok = loop {
        assert!(
            Instant::now() < deadline,
            "no 200 OK:\n{}",
            tail(&pbx.log_text())
        );
        let Some(m) = recv_msg(&sip) else { continue };
        if m.starts_with("SIP/2.0 200") {
            break m;
        }
        assert!(m.starts_with("SIP/2.0 1"), "unexpected: {m}");
    };
    let body = ok.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.contains("telephone-event/8000"),
        "the phone's telephone-event reaches the doorbell:\n{ok}"
    );
    let port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= port");
    let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let to = hdr(&ok, "To").unwrap();
    let contact = hdr(&ok, "Contact").unwrap();
    let ruri = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let ack = format!(
        "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdtmf2;rport\r\nMax-Forwards: 70\r\nFrom: \"Door\" <sip:190@127.0.0.1>;tag=door\r\n\
         To: {to}\r\nCall-ID: doorbell-dtmf@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send(ack.as_bytes()).unwrap();

    // A little PCMU, then digit 5 for 160 ms as RFC 4733: progress packets every 20 ms with
    // the same timestamp, then the end packet three times.
    let packet = |pt: u8, seq: u16, ts: u32, payload: &[u8]| {
        let mut p = vec![0x80u8, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x0d00_4733u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    };
    let mut seq = 0u16;
    for i in 0..5u32 {
        rtp.send_to(&packet(0, seq, i * 160, &[0xff; 160]), relay)
            .unwrap();
        seq += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let ts = 5 * 160;
    for step in 1..8u16 {
        let d = (step * 160).to_be_bytes();
        let pt = if step == 1 { 0x80 | 101 } else { 101 };
        rtp.send_to(&packet(pt, seq, ts, &[5, 0x0a, d[0], d[1]]), relay)
            .unwrap();
        seq += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = 1280u16.to_be_bytes();
    for _ in 0..3 {
        rtp.send_to(&packet(101, seq, ts, &[5, 0x8a, end[0], end[1]]), relay)
            .unwrap();
        seq += 1;
    }

    // The phone gets the INFO and answers it before the call is hung up (its message trace is
    // flushed as it goes: the INFO, then its 200, both with the INFO's CSeq).
    let deadline = Instant::now() + Duration::from_secs(5);
    let info_cseqs = |logs: &str| {
        logs.lines()
            .filter(|l| l.starts_with("CSeq:") && l.trim_end().ends_with(" INFO"))
            .count()
    };
    while !(p.logs().contains("Signal=5") && info_cseqs(&p.logs()) >= 2) {
        assert!(
            Instant::now() < deadline,
            "no INFO at the phone:\n{}\n--- podpbx ---\n{}",
            p.logs(),
            tail(&pbx.log_text())
        );
        assert!(
            recv_msg(&sip).is_none_or(|m| !m.starts_with("INFO ")),
            "the doorbell (auto, telephone-event) gets no INFO"
        );
    }
    // Let the phone's 200 for the INFO reach podpbx.
    std::thread::sleep(Duration::from_millis(200));
    let bye = format!(
        "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdtmf3;rport\r\nMax-Forwards: 70\r\nFrom: \"Door\" <sip:190@127.0.0.1>;tag=door\r\n\
         To: {to}\r\nCall-ID: doorbell-dtmf@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send(bye.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no 200 for BYE");
        let Some(m) = recv_msg(&sip) else { continue };
        assert!(!m.starts_with("INFO "), "no INFO to the doorbell:\n{m}");
        if m.starts_with("SIP/2.0 200") && m.contains("BYE") {
            break;
        }
    }
    let logs = check_phone(p, "INFO phone", &pbx);
    // SIPp notes a failed `check_it` in its errors log and goes on with an out-of-call flow.
    assert!(
        !logs.contains("Failed regexp match"),
        "the INFO matched the scenario's checks:\n{logs}"
    );
    assert!(
        logs.contains("INFO-DTMF Signal=5 Duration=160"),
        "one INFO with Signal=5 and the event's 160 ms:\n{logs}"
    );
    assert_eq!(
        logs.matches("Content-Type: application/dtmf-relay").count(),
        1,
        "exactly one INFO for the event's three end packets:\n{logs}"
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["caller"], "190");
    assert_eq!(cdrs[0]["answered_by"], "102");
    assert!(
        cdrs[0]["legs"][0]["media"]["rtp_packets"]
            .as_u64()
            .unwrap_or(0)
            >= 15,
        "the relay counted the doorbell's audio and events: {}",
        cdrs[0]
    );
}

/// RFC 3262 on both legs: a caller that requires 100rel gets reliable 18x and PRACKs them to
/// podpbx; a phone that sends a reliable 183 gets podpbx's PRACK. Before podpbx knew 100rel the
/// caller got `420 Bad Extension`.
#[test]
fn caller_and_callee_both_using_100rel() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "uas_100rel.xml", &["-rtp_echo"]);
    let run = call(&pbx, "uac_100rel.xml", "102", &["-d", "300"]);
    assert!(
        run.ok,
        "caller:\n{}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    let logs = check_phone(p, "callee", &pbx);
    assert!(logs.contains("UAS100-PRACK rack=4711 "), "{logs}");
    // The caller's PRACK was answered by podpbx, never relayed: one PRACK reached the phone.
    assert_eq!(logs.matches("PRACK sip:").count(), 1, "{logs}");
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
}

/// Early media through the relay: the doorbell (no 100rel) calls a phone that answers with a
/// reliable 183 and SDP; podpbx PRACKs it, the doorbell gets a plain 183 with the relay's
/// address, and RTP it sends during the early phase comes back (the phone echoes) before the
/// call is answered.
#[test]
fn early_media_of_a_reliable_183_flows_through_the_relay_before_the_answer() {
    let pbx = Pbx::start(CONFIG);
    let p = phone(&pbx, "102", "uas_100rel.xml", &["-rtp_echo"]);
    let door = DoorCall::invite(&pbx, "early", "");
    let (sip, rtp) = (&door.sip, &door.rtp);
    let p183 = door.wait_for(&pbx, "SIP/2.0 183");
    assert!(
        hdr(&p183, "Require").is_none() && hdr(&p183, "RSeq").is_none(),
        "{p183}"
    );
    let relay = relay_of(&p183);
    // Early media: RTP both ways through the relay while the phone has not answered.
    rtp.set_nonblocking(true).unwrap();
    let mut echoed = 0;
    let mut answered = false;
    for i in 0..30u16 {
        let mut pkt = vec![0x80u8, 0x00];
        pkt.extend_from_slice(&i.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
        pkt.extend_from_slice(&0x4242_4242u32.to_be_bytes());
        pkt.extend(std::iter::repeat_n(0xffu8, 160));
        rtp.send_to(&pkt, relay).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = rtp.recv_from(&mut buf) {
            assert_eq!(from, relay);
            echoed += 1;
        }
        sip.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        if let Some(m) = recv_msg(sip) {
            answered |= m.starts_with("SIP/2.0 200");
        }
    }
    assert!(
        !answered && echoed > 5,
        "early media echoed before the answer: {echoed} packets, answered={answered}\n{}",
        tail(&pbx.log_text())
    );
    sip.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let ok = door.wait_for(&pbx, "SIP/2.0 200");
    door.in_dialog(&ok, "ACK", 1);
    door.in_dialog(&ok, "BYE", 2);
    let logs = check_phone(p, "callee", &pbx);
    assert!(logs.contains("UAS100-PRACK rack=4711 1 INVITE"), "{logs}");
}

/// Session timers (RFC 4028) with a real SIPp phone: a too-short interval gets 422 with Min-SE,
/// the phone refreshes as it asked to (UPDATE, answered by podpbx with the interval), and when
/// it stops refreshing podpbx ends the call 60 s later (90 - min(32, 90/3)): BYE on both legs,
/// CDR reason `session_expired`. Runs about a minute (RFC 4028's floor is 90 s).
#[test]
fn session_timer_refresh_then_expiry_ends_both_legs() {
    // SIPp sends no RTP: the media timeout must not end the call first.
    let pbx = Pbx::start(&format!("{CONFIG}\n[media]\ntimeout_secs = 0\n"));
    let p = phone(
        &pbx,
        "102",
        "call_phone_answer.xml",
        &["-timeout", "120s", "-d", "90000"],
    );
    let started = Instant::now();
    let run = sipp_for(
        "uac_timer.xml",
        pbx.v6(),
        "u1",
        &[
            "-s",
            "102",
            "-au",
            "101",
            "-ap",
            "pw-101",
            "-key",
            "caller",
            "101",
            "-trace_logs",
            "-d",
            "2000",
            "-timeout",
            "120s",
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.ok,
        "caller:\n{}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(61) && took < Duration::from_secs(75),
        "BYE 60 s after the refresh (2 s in): {took:?}"
    );
    check_phone(p, "callee", &pbx);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["reason"], "session_expired", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["hangup_by"], "system", "{}", cdrs[0]);
}

/// Issue #15: attended transfer (RFC 5589 §7) between two calls of one registered user, with
/// real SIPp parties. X (user 101) calls 102 and Y (user 103) calls 102; 102 is the test's own
/// UA (raw SIP on its registered socket), which answers both, then sends a REFER on X's dialog
/// whose Refer-To names Y's dialog in `Replaces`. podpbx must answer 202, report NOTIFY sipfrag
/// 200, BYE both of 102's dialogs, and join X and Y: each gets a re-INVITE whose SDP points at
/// a relay anchor of podpbx (not at the other party), RTP sent by each (the test's sockets,
/// which X's and Y's SDPs announce) reaches the other through the relay, and X's BYE reaches Y.
#[test]
fn attended_transfer_by_refer_with_replaces_joins_the_two_parties() {
    let pbx = Pbx::start(CONFIG);
    let logs = TempDir::new("xfer-logs");
    let mut transferor = common::phone::DigestPhone::new(pbx.v6(), "102", "pw-102");
    assert_eq!(
        transferor.register(Duration::from_secs(5)),
        Some(200),
        "102 registers:\n{}",
        tail(&pbx.log_text())
    );
    transferor
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let ua = Ua {
        sock: &transferor.sock,
    };
    let rtp_socket = || {
        let s = UdpSocket::bind("[::1]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        s
    };
    // The media sockets X and Y announce, and one for 102 (which never gets RTP: no one talks
    // before the transfer).
    let (rtp_x, rtp_y, rtp_102) = (rtp_socket(), rtp_socket(), rtp_socket());
    let party = |who: &'static str, user: &'static str, scenario: &'static str, rtp: &UdpSocket| {
        let args: Vec<String> = [
            "-s",
            "102",
            "-au",
            user,
            "-ap",
            &pw(user),
            "-key",
            "caller",
            user,
            "-key",
            "rtp",
            &rtp.local_addr().unwrap().port().to_string(),
            "-d",
            "4000",
            "-trace_logs",
            "-log_file",
            &logs.path().join(format!("{who}.log")).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let target = pbx.v6();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sipp(scenario, target, "u1", &args)
        })
    };
    let party_log = |who: &str| {
        std::fs::read_to_string(logs.path().join(format!("{who}.log"))).unwrap_or_default()
    };

    // Call 1: X -> 102, answered; then call 2: Y -> 102, answered.
    let x = party("x", "101", "call_uac_joined.xml", &rtp_x);
    let d1 = ua.answer("101", &rtp_102, "x1");
    let d1 = d1.unwrap_or_else(|e| panic!("call 1: {e}\n{}", tail(&pbx.log_text())));
    let y = party("y", "103", "call_uac_joined_wait_bye.xml", &rtp_y);
    let d2 = ua.answer("103", &rtp_102, "y2");
    let d2 = d2.unwrap_or_else(|e| panic!("call 2: {e}\n{}", tail(&pbx.log_text())));

    // 102 transfers X to Y: REFER on call 1, Replaces naming call 2 as podpbx knows it
    // (to-tag: podpbx's tag, from-tag: 102's, RFC 3891 §3).
    let replaces = format!(
        "{};to-tag={};from-tag={}",
        d2.call_id, d2.their_tag, d2.our_tag
    );
    let refer = ua.request(
        &d1,
        "REFER",
        1,
        &format!(
            "Refer-To: <sip:103@{}?Replaces={}>\r\nReferred-By: <sip:102@{}>\r\n",
            common::phone::uri_host(pbx.v6()),
            uri_escape(&replaces),
            common::phone::uri_host(pbx.v6()),
        ),
    );
    ua.send(&refer);
    // What podpbx sends 102 now, each request answered 200: 202, NOTIFY sipfrag 200, BYE on
    // both dialogs.
    let mut seen: Vec<String> = Vec::new();
    let (mut accepted, mut notified, mut bye1, mut bye2) = (false, false, false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(accepted && notified && bye1 && bye2) && Instant::now() < deadline {
        let Some(m) = recv_msg(&transferor.sock) else {
            continue;
        };
        let first = m.lines().next().unwrap_or("").to_string();
        let cid = hdr(&m, "Call-ID").unwrap_or_default();
        let cseq = hdr(&m, "CSeq").unwrap_or_default();
        seen.push(format!("{first} ({cseq}, {cid})"));
        if first.starts_with("SIP/2.0 ") {
            if cseq.ends_with("REFER") {
                assert!(first.starts_with("SIP/2.0 202"), "REFER answered {first}");
                accepted = true;
            }
            continue;
        }
        ua.reply(&m, "200 OK", "", "");
        if first.starts_with("NOTIFY ") {
            assert_eq!(cid, d1.call_id, "NOTIFY on the REFER's dialog");
            let body = m.split("\r\n\r\n").nth(1).unwrap_or("");
            assert!(
                hdr(&m, "Event").is_some_and(|e| e.starts_with("refer")),
                "{m}"
            );
            if body.starts_with("SIP/2.0 200") {
                notified = true;
            } else {
                assert!(body.starts_with("SIP/2.0 1"), "NOTIFY sipfrag: {m}");
            }
        } else if first.starts_with("BYE ") {
            bye1 |= cid == d1.call_id;
            bye2 |= cid == d2.call_id;
        }
    }
    assert!(
        accepted && notified && bye1 && bye2,
        "102 should get 202, NOTIFY 200, BYE on both calls; got {seen:#?}\n{}",
        tail(&pbx.log_text())
    );

    // X and Y were each re-INVITEd with a relay anchor of podpbx.
    let anchor = |who: &str, own: &UdpSocket| -> Option<SocketAddr> {
        let log = party_log(who);
        let line = log.lines().find(|l| l.contains("REINVITE "))?;
        let mut it = line.split("REINVITE ").nth(1)?.split_whitespace();
        let addr: std::net::IpAddr = it.next()?.parse().ok()?;
        let port: u16 = it.next()?.parse().ok()?;
        assert_ne!(port, own.local_addr().unwrap().port(), "{who}: {line}");
        Some(SocketAddr::new(addr, port))
    };
    let mut anchors = None;
    let until = Instant::now() + Duration::from_secs(8);
    while anchors.is_none() && Instant::now() < until {
        anchors = anchor("x", &rtp_x).zip(anchor("y", &rtp_y));
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some((ax, ay)) = anchors else {
        panic!(
            "X and Y must both be re-INVITEd:\n--- X ---\n{}\n--- Y ---\n{}\n--- podpbx ---\n{}",
            party_log("x"),
            party_log("y"),
            tail(&pbx.log_text())
        );
    };
    let relay = pbx.v6().ip();
    for (who, a, other) in [("X", ax, &rtp_y), ("Y", ay, &rtp_x)] {
        assert_eq!(a.ip(), relay, "{who}'s re-INVITE points at podpbx: {a}");
        assert!(
            (20000..=30000).contains(&a.port()) && a.port() != other.local_addr().unwrap().port(),
            "{who}'s re-INVITE points at a relay port, not at the other party: {a}"
        );
    }
    assert_ne!(ax, ay, "each party has its own anchor");
    eprintln!("102 got: {seen:#?}\nre-INVITEs: X at {ax}, Y at {ay}");

    // RTP both ways through the relay: X's packets reach Y and Y's reach X.
    let (got_y_at_x, got_x_at_y) = exchange_rtp((&rtp_x, ax), (&rtp_y, ay), 50);
    assert!(
        got_y_at_x >= 25 && got_x_at_y >= 25,
        "RTP through the relay: X got {got_y_at_x} of Y's packets, Y got {got_x_at_y} of X's"
    );
    eprintln!(
        "RTP through the relay: X got {got_y_at_x} of Y's 50 packets, Y got {got_x_at_y} of X's"
    );

    // X hangs up; the BYE reaches Y.
    let (x, y) = (x.join().unwrap(), y.join().unwrap());
    assert!(
        x.ok && y.ok,
        "X:\n{}\n--- Y ---\n{}\n--- podpbx ---\n{}",
        x.output,
        y.output,
        tail(&pbx.log_text())
    );
    assert!(
        party_log("y").contains("BYE-RECEIVED"),
        "{}",
        party_log("y")
    );
    // The CDRs: call 2 ended as transferred, call 1 (X's, now with Y as transfer target)
    // names the target.
    let cdrs = cdrs(&cdr_file(&pbx), 2, Duration::from_secs(5));
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    let (c2, c1) = (&cdrs[0], &cdrs[1]);
    assert_eq!(c2["reason"], "transferred", "{c2}");
    assert_eq!(c2["caller"], "103", "{c2}");
    assert_eq!(c1["caller"], "101", "{c1}");
    assert_eq!(c1["transferred_to"], "103", "{c1}");
    assert_eq!(c1["hangup_by"], "caller", "{c1}");
    let target = c1["legs"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["role"] == "transfer_target").cloned())
        .unwrap_or_else(|| panic!("no transfer_target leg: {c1}"));
    assert!(
        target["media"]["rtp_packets"].as_u64().unwrap_or(0) >= 25,
        "the target's relay leg counted Y's RTP: {c1}"
    );
}

/// Percent-escapes everything but unreserved characters (a URI header value, RFC 3261 §25.1).
fn uri_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `n` RTP packets (PCMU, 20 ms apart) from each socket to its anchor, X's payload all
/// 0x11, Y's all 0x22; returns how many of the other's packets each received from its anchor.
fn exchange_rtp(x: (&UdpSocket, SocketAddr), y: (&UdpSocket, SocketAddr), n: u16) -> (u32, u32) {
    let packet = |seq: u16, ssrc: u32, fill: u8| {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(fill, 160));
        p
    };
    let count = |(s, from): (&UdpSocket, SocketAddr), fill: u8| {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Ok((len, src)) = s.recv_from(&mut buf) {
            if src == from && len == 172 && buf[12..len].iter().all(|b| *b == fill) {
                n += 1;
            }
        }
        n
    };
    let (mut at_x, mut at_y) = (0, 0);
    for seq in 0..n {
        x.0.send_to(&packet(seq, 0x1111, 0x11), x.1).unwrap();
        y.0.send_to(&packet(seq, 0x2222, 0x22), y.1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        at_x += count(x, 0x22);
        at_y += count(y, 0x11);
    }
    std::thread::sleep(Duration::from_millis(100));
    (at_x + count(x, 0x22), at_y + count(y, 0x11))
}

/// One dialog of the test's UA (podpbx's INVITE to it, answered).
struct Dialog {
    call_id: String,
    /// podpbx's From (its tag) and Contact URI.
    their_from: String,
    their_tag: String,
    their_contact: String,
    /// Our To, with our tag.
    our_to: String,
    our_tag: String,
}

fn tag_of(header: &str) -> String {
    header
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .unwrap_or_default()
        .to_string()
}

/// A minimal UAS/UAC on a registered phone's socket (connected to podpbx).
struct Ua<'a> {
    sock: &'a UdpSocket,
}

impl Ua<'_> {
    fn send(&self, msg: &str) {
        self.sock.send(msg.as_bytes()).unwrap();
    }

    fn local(&self) -> String {
        let l = self.sock.local_addr().unwrap();
        format!("{}:{}", common::phone::uri_host(l), l.port())
    }

    /// A response to `req`: its Vias, From, Call-ID and CSeq, its To (with `tag` if it had
    /// none), and `body` (SDP, with our Contact, when not empty).
    fn reply(&self, req: &str, status: &str, tag: &str, body: &str) {
        let head: Vec<&str> = req.split("\r\n\r\n").next().unwrap_or("").lines().collect();
        let mut out = format!("SIP/2.0 {status}\r\n");
        for l in &head[1..] {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if ["via", "v", "from", "f", "call-id", "i", "cseq"].contains(&name.as_str()) {
                out.push_str(l);
                out.push_str("\r\n");
            } else if name == "to" || name == "t" {
                out.push_str(l);
                if !tag.is_empty() && !l.contains("tag=") {
                    out.push_str(&format!(";tag={tag}"));
                }
                out.push_str("\r\n");
            }
        }
        if !body.is_empty() {
            out.push_str(&format!(
                "Contact: <sip:102@{}>\r\nContent-Type: application/sdp\r\n",
                self.local()
            ));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.send(&out);
    }

    /// Waits for podpbx's INVITE from `caller`, answers it 200 with SDP for `rtp` (resent
    /// until the ACK) and returns the dialog.
    fn answer(&self, caller: &str, rtp: &UdpSocket, tag: &str) -> Result<Dialog, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sdp = format!(
            "v=0\r\no=xfer 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            rtp.local_addr().unwrap().port()
        );
        let mut invite: Option<String> = None;
        let mut next_resend = Instant::now();
        while Instant::now() < deadline {
            if let Some(inv) = &invite {
                if Instant::now() >= next_resend {
                    self.reply(inv, "200 OK", tag, &sdp);
                    next_resend = Instant::now() + Duration::from_millis(500);
                }
            }
            let Some(m) = recv_msg(self.sock) else {
                continue;
            };
            let first = m.lines().next().unwrap_or("");
            if first.starts_with("INVITE ")
                && hdr(&m, "From").is_some_and(|f| f.contains(&format!("sip:{caller}@")))
            {
                invite = Some(m);
                next_resend = Instant::now();
            } else if first.starts_with("ACK ") {
                let Some(inv) = invite else {
                    return Err(format!("ACK without an INVITE: {m}"));
                };
                let from = hdr(&inv, "From").unwrap_or_default();
                let to = hdr(&inv, "To").unwrap_or_default();
                let contact = hdr(&inv, "Contact").unwrap_or_default();
                let contact = contact
                    .split('<')
                    .nth(1)
                    .and_then(|c| c.split('>').next())
                    .unwrap_or(&contact)
                    .to_string();
                return Ok(Dialog {
                    call_id: hdr(&inv, "Call-ID").unwrap_or_default(),
                    their_tag: tag_of(&from),
                    their_from: from,
                    their_contact: contact,
                    our_to: format!("{to};tag={tag}"),
                    our_tag: tag.to_string(),
                });
            } else if !first.starts_with("SIP/2.0") {
                self.reply(&m, "200 OK", "", "");
            }
        }
        Err(format!("no INVITE from {caller} answered and ACKed"))
    }

    /// An in-dialog request of ours on `d` with `extra` headers.
    fn request(&self, d: &Dialog, method: &str, cseq: u32, extra: &str) -> String {
        format!(
            "{method} {contact} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-xfer-{method}-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:102@{local}>\r\n{extra}Content-Length: 0\r\n\r\n",
            contact = d.their_contact,
            local = self.local(),
            from = d.our_to,
            to = d.their_from,
            cid = d.call_id,
        )
    }
}

/// An 8 kHz mu-law WAV of 2 s (a square wave) for SIPp's `rtp_stream` (160-byte payloads
/// every 20 ms, looped), written by the voicemail crate's encoder.
fn write_tone_wav(path: &std::path::Path) {
    use podpbx_voicemail::{g711::Law, wav};
    let samples: Vec<i16> = (0..16_000)
        .map(|i| if (i / 40) % 2 == 1 { 1_000 } else { -1_000 })
        .collect();
    std::fs::write(path, wav::encode_g711(&samples, Law::Ulaw)).expect("write wav");
}

/// SIPp sends the RTP of all its calls from one socket (its `-mp` port), each call under an
/// SSRC of its own. In the shared port layout all of it reaches the leg that latched onto that
/// source first, so calls cross; podpbx cannot undo that, but it must say so: the
/// `podpbx_relay_ssrc_flaps_total` counter climbs and one warning names the source. In the
/// per-call layout each call's packets go to a port of their own: nothing is mixed, nothing is
/// counted (so the counter measures mixing, not traffic).
#[test]
fn several_calls_from_one_rtp_socket_are_flagged_in_the_shared_layout() {
    const WARNING: &str = "one RTP source sends several streams";
    let dir = TempDir::new("mixed-rtp");
    let wav = dir.path().join("tone.wav");
    write_tone_wav(&wav);
    let scenario = dir.path().join("call_uac_rtp.xml");
    let text = std::fs::read_to_string(root().join("tests/sipp/call_uac_rtp.xml"))
        .expect("scenario")
        .replace("@RTP_FILE@", wav.to_str().expect("utf-8 path"));
    std::fs::write(&scenario, text).expect("write scenario");
    for layout in ["shared", "per-call"] {
        let pbx = Pbx::start(&format!("{CONFIG}\n[media]\nport_layout = \"{layout}\"\n"));
        let _phone = phone(&pbx, "102", "call_phone_answer_all.xml", &[]);
        let mp = free_media_port("::1".parse().expect("::1"), 0).to_string();
        // Three calls, one a second, each streaming for 4 s: they overlap by 2 s or more, and
        // with two shared port pairs two of the three callers' legs share one. A second apart,
        // a call's stream has long latched when the next call's SDP names the same address
        // (had neither latched yet, both legs would claim the packets and neither would get
        // them: the shared layout drops ambiguous packets).
        let run = call(
            &pbx,
            scenario.to_str().expect("utf-8 path"),
            "102",
            &["-m", "3", "-l", "3", "-r", "1", "-d", "4000", "-mp", &mp],
        );
        assert!(
            run.ok,
            "{layout}: caller:\n{}\n--- podpbx ---\n{}",
            run.output,
            tail(&pbx.log_text())
        );
        let series = |name: &str| metric(&http_get(pbx.admin, "/metrics").1, name);
        // The CDRs say which call got crossed media: the legs' `ssrc_flaps` (written only
        // when there were any) add up to the counter, which reaches /metrics once a second.
        let in_cdrs: u64 = cdrs(&cdr_file(&pbx), 3, Duration::from_secs(5))
            .iter()
            .flat_map(|c| c["legs"].as_array().cloned().unwrap_or_default())
            .filter_map(|l| l["media"]["ssrc_flaps"].as_u64())
            .sum();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && series("podpbx_relay_ssrc_flaps_total") != Some(in_cdrs as f64)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let flaps = series("podpbx_relay_ssrc_flaps_total").expect("the series exists");
        let forwarded = series("podpbx_relay_packets_total").unwrap_or(0.0);
        let log = pbx.log_text();
        let warnings = log.matches(WARNING).count();
        eprintln!(
            "{layout}: {flaps} SSRC flaps, {forwarded} packets forwarded, {warnings} warnings: {}",
            log.lines().find(|l| l.contains(WARNING)).unwrap_or("-")
        );
        assert!(forwarded >= 100.0, "{layout}: media flowed ({forwarded})");
        assert_eq!(in_cdrs as f64, flaps, "{layout}: CDRs against the counter");
        if layout == "shared" {
            assert!(flaps >= 16.0, "shared: {flaps} flaps\n{}", tail(&log));
            assert!(
                (1..=3).contains(&warnings),
                "shared: one warning per mixed leg, {warnings}:\n{}",
                tail(&log)
            );
        } else {
            assert_eq!(flaps, 0.0, "per-call: nothing mixed\n{}", tail(&log));
            assert_eq!(warnings, 0, "per-call:\n{}", tail(&log));
        }
    }
}
