//! Black-box tests of the SIP core: the real binary on 127.0.0.1 and [::1], driven by SIPp and by
//! raw sockets (for byte-level checks SIPp cannot express).

mod common;

use common::*;
use std::time::Duration;

#[test]
fn sipp_options_over_udp_and_tcp_on_both_families() {
    let pbx = Pbx::start("");
    for (target, transport) in [
        (pbx.v4(), "u1"),
        (pbx.v6(), "u1"),
        (pbx.v4(), "t1"),
        (pbx.v6(), "t1"),
    ] {
        let run = sipp("options.xml", target, transport, &[]);
        assert!(
            run.ok,
            "SIPp OPTIONS {transport} to {target} failed:\n{}",
            run.output
        );
    }
}

#[test]
fn sipp_gets_400_for_duplicated_header_and_420_for_unknown_require() {
    let pbx = Pbx::start("");
    for target in [pbx.v4(), pbx.v6()] {
        let run = sipp("bad_request.xml", target, "u1", &[]);
        assert!(run.ok, "SIPp bad request to {target}:\n{}", run.output);
        let run = sipp("unsupported.xml", target, "t1", &[]);
        assert!(run.ok, "SIPp unsupported to {target}:\n{}", run.output);
    }
}

#[test]
fn udp_response_fills_received_and_rport_and_goes_to_source() {
    let pbx = Pbx::start("");
    for target in [pbx.v4(), pbx.v6()] {
        let peer = UdpPeer::new(target);
        let local = peer.local();
        // Claim a different sent-by port: with rport the answer must still come to the real one.
        let req = request(
            "OPTIONS",
            &format!("sip:{}", bracket(target)),
            local,
            "UDP",
            "z9hG4bKrport1",
            "",
        )
        .replace(&format!(":{};branch", local.port()), ":5999;branch");
        peer.send(req.as_bytes());
        let resp = peer.recv().expect("OPTIONS answered");
        assert_eq!(status(&resp), 200);
        let via = header(&resp, "Via").unwrap();
        assert!(
            via.contains(&format!("rport={}", local.port())),
            "rport filled: {via}"
        );
        assert!(
            via.contains(&format!("received={}", local.ip())),
            "received without brackets: {via}"
        );
        for h in ["Allow", "Accept", "Supported"] {
            assert!(header(&resp, h).is_some(), "{h} missing in OPTIONS answer");
        }
    }
}

#[test]
fn retransmitted_request_is_absorbed_and_gets_the_same_response() {
    let pbx = Pbx::start("");
    let peer = UdpPeer::new(pbx.v4());
    let req = request(
        "OPTIONS",
        "sip:127.0.0.1",
        peer.local(),
        "UDP",
        "z9hG4bKretrans1",
        "",
    );
    peer.send(req.as_bytes());
    let first = peer.recv().expect("first answer");
    peer.send(req.as_bytes());
    let second = peer.recv().expect("retransmission answered");
    // A re-processed request would carry a fresh To tag; the transaction must replay its response.
    assert_eq!(
        first, second,
        "retransmission must get the stored response byte for byte"
    );
}

#[test]
fn request_checks_answer_with_the_rfc_status_codes() {
    let pbx = Pbx::start("");
    let peer = UdpPeer::new(pbx.v6());
    let l = peer.local();
    let cases: Vec<(String, u16)> = vec![
        (
            request("OPTIONS", "sip:[::1]", l, "UDP", "z9hG4bKc1", "")
                .replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"),
            505,
        ),
        (
            request("OPTIONS", "tel:+15551234", l, "UDP", "z9hG4bKc2", ""),
            416,
        ),
        (
            request(
                "OPTIONS",
                "sip:[::1]",
                l,
                "UDP",
                "z9hG4bKc3",
                "Require: foo\r\n",
            ),
            420,
        ),
        (
            request("SUBSCRIBE", "sip:[::1]", l, "UDP", "z9hG4bKc4", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            483,
        ),
        (
            request("OPTIONS", "sip:[::1]", l, "UDP", "z9hG4bKc5", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            200,
        ),
        (request("FOO", "sip:[::1]", l, "UDP", "z9hG4bKc6", ""), 501),
        (
            request("BYE", "sip:[::1]", l, "UDP", "z9hG4bKc7", "")
                .replace("<sip:pbx@[::1]>", "<sip:pbx@[::1]>;tag=nosuch"),
            481,
        ),
        (
            request("OPTIONS", "sip:[::1]", l, "UDP", "z9hG4bKc8", "")
                .replace("Call-ID: z9hG4bKc8@test\r\n", ""),
            400,
        ),
        (
            request("OPTIONS", "sip:[::1]", l, "UDP", "z9hG4bKc9", "")
                .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
            400,
        ),
    ];
    for (req, want) in &cases {
        peer.send(req.as_bytes());
        let resp = peer
            .recv()
            .unwrap_or_else(|| panic!("no answer, wanted {want} for:\n{req}"));
        assert_eq!(
            status(&resp),
            *want,
            "for request:\n{req}\ngot:\n{}",
            String::from_utf8_lossy(&resp)
        );
    }
    // 415 with a body of a type we do not handle.
    let body = "hello";
    let req = request(
        "OPTIONS",
        "sip:[::1]",
        l,
        "UDP",
        "z9hG4bKc10",
        "Content-Type: application/x-weird\r\n",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
    );
    peer.send(req.as_bytes());
    let resp = peer.recv().expect("415 answer");
    assert_eq!(status(&resp), 415);
    assert!(header(&resp, "Accept").is_some());
}

#[test]
fn malformed_input_is_answered_or_counted_and_never_stops_service() {
    let pbx = Pbx::start("");
    let peer = UdpPeer::new(pbx.v4());
    let l = peer.local();
    // Garbage and non-UTF-8: nothing to answer.
    peer.send(b"\x00\xff\xfe garbage \x80\x81");
    peer.send(&[0xffu8; 1400]);
    peer.expect_silence(Duration::from_millis(300));
    // A stray response is never answered.
    peer.send(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKstray\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    peer.expect_silence(Duration::from_millis(300));
    // Content-Length larger than the datagram: 400 (RFC 3261 §18.3).
    let req = request("OPTIONS", "sip:127.0.0.1", l, "UDP", "z9hG4bKm1", "")
        .replace("Content-Length: 0", "Content-Length: 500");
    peer.send(req.as_bytes());
    let resp = peer.recv().expect("400 for bad Content-Length");
    assert_eq!(status(&resp), 400);
    // Truncated in the middle of the headers: 400 or silence, never a crash.
    let req = request("OPTIONS", "sip:127.0.0.1", l, "UDP", "z9hG4bKm2", "");
    peer.send(&req.as_bytes()[..req.len() / 2]);
    let _ = peer.recv();
    // A huge header: refused.
    let huge = format!("X-Huge: {}\r\n", "a".repeat(60_000));
    let req = request("OPTIONS", "sip:127.0.0.1", l, "UDP", "z9hG4bKm3", &huge);
    peer.send(req.as_bytes());
    if let Some(resp) = peer.recv() {
        assert_eq!(status(&resp), 400, "huge header answered with 400");
    }
    // Service continues.
    let req = request("OPTIONS", "sip:127.0.0.1", l, "UDP", "z9hG4bKm4", "");
    peer.send(req.as_bytes());
    assert_eq!(status(&peer.recv().expect("still serving")), 200);
    let log = pbx.log_text();
    assert!(
        log.contains("malformed message dropped"),
        "drops are counted/logged:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic:\n{log}");
}

#[test]
fn tcp_frames_many_messages_per_connection_and_answers_keepalive() {
    let pbx = Pbx::start("");
    for target in [pbx.v4(), pbx.v6()] {
        let mut s = tcp_connect(target);
        let local = s.local_addr().unwrap();
        // Two requests in one write, the second split across writes.
        let a = request(
            "OPTIONS",
            &format!("sip:{}", bracket(target)),
            local,
            "TCP",
            "z9hG4bKt1",
            "",
        );
        let b = request(
            "OPTIONS",
            &format!("sip:{}", bracket(target)),
            local,
            "TCP",
            "z9hG4bKt2",
            "",
        );
        let mut both = a.clone().into_bytes();
        both.extend_from_slice(&b.as_bytes()[..20]);
        tcp_send(&mut s, &both);
        std::thread::sleep(Duration::from_millis(50));
        tcp_send(&mut s, &b.as_bytes()[20..]);
        let r1 = tcp_read_message(&mut s).expect("first answer");
        let r2 = tcp_read_message(&mut s).expect("second answer");
        assert_eq!(status(&r1), 200);
        assert_eq!(status(&r2), 200);
        assert!(header(&r1, "Via").unwrap().contains("z9hG4bKt1"));
        assert!(header(&r2, "Via").unwrap().contains("z9hG4bKt2"));
        // RFC 5626 §3.5.1: CRLFCRLF ping, CRLF pong.
        tcp_send(&mut s, b"\r\n\r\n");
        let mut pong = [0u8; 2];
        use std::io::Read;
        s.read_exact(&mut pong).expect("pong");
        assert_eq!(&pong, b"\r\n");
        // The connection still works afterwards.
        let c = request(
            "OPTIONS",
            &format!("sip:{}", bracket(target)),
            local,
            "TCP",
            "z9hG4bKt3",
            "",
        );
        tcp_send(&mut s, c.as_bytes());
        assert_eq!(
            status(&tcp_read_message(&mut s).expect("third answer")),
            200
        );
    }
}

#[test]
fn tcp_idle_connections_are_closed() {
    let pbx = Pbx::start("tcp_idle_timeout_secs = 1\n");
    let mut s = tcp_connect(pbx.v4());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    use std::io::Read;
    let n = s.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "idle connection closed by podpbx");
}

#[test]
fn start_fails_clearly_when_the_pinned_address_is_missing() {
    let dir = TempDir::new("missing");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[sip]\nipv6 = \"2001:db8:e8b1::1:1\"\nport = 5060\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2001:db8:e8b1::1:1 is not assigned here: is the Calico ipv6pools annotation on the pod?"),
        "stderr: {err}"
    );
}

#[test]
fn check_reports_file_line_col_key_and_suggestion() {
    let dir = TempDir::new("check");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[sip]\nipv4 = \"127.0.0.1\"\nprot = 5060\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:1: sip.prot:"), "stderr: {err}");
    assert!(err.contains("port"), "suggests the closest key: {err}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[sip]\nipv4 = \"127.0.0.1\"\nport = 5060\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bracket(a: std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v) => v.ip().to_string(),
        std::net::SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}
