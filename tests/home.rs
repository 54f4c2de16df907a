//! Black-box tests of the home features (issue 16) through the real binary: webhooks for home
//! automation (a receiver in the test gets the doorbell ring and the missed call, signed, with a
//! retry after a failed attempt).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One HTTP request as a webhook receiver saw it.
#[derive(Debug, Clone)]
struct Hit {
    head: String,
    body: Vec<u8>,
}

impl Hit {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A tiny HTTP server on loopback: answers each request with the next status of `statuses`
/// (then 200) and reports what it got. Stops with the test process.
fn receiver(statuses: Vec<u16>) -> (SocketAddr, mpsc::Receiver<Hit>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break (String::new(), Vec::new());
                };
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < i + 4 + len {
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    break (head, buf[i + 4..].to_vec());
                }
            };
            let status = statuses.next().unwrap_or(200);
            let _ = c.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = tx.send(Hit { head, body });
        }
    });
    (addr, rx)
}

fn recv_msg(s: &UdpSocket) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// HMAC-SHA256 as the receiver would check it (an independent implementation: the test must
/// not trust podpbx's).
fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner = Sha256::digest(&ipad);
    let opad: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    Sha256::digest(&opad)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn webhook_receiver_gets_the_doorbell_ring_and_the_missed_call() {
    let (hook, hits) = receiver(vec![503]);
    let dir = TempDir::new("hook");
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let pbx = Pbx::start(&format!(
        r#"
[[users]]
name = "102"
password = "pw-102"

[[users]]
name = "190"
display_name = "Front door"
identify_by_source = true
allow_from = ["127.0.0.1/32"]
doorbell = true

[[dialplan]]
name = "door"
match = {{ caller = "190" }}
action = "ring"
targets = ["102"]
timeout_secs = 5

[[webhooks]]
url = "http://{hook}/api/webhook/podpbx-door"
events = ["doorbell", "missed_call"]
secret_file = "{secret}"
timeout_secs = 2
"#,
        secret = secret.display()
    ));
    // The doorbell rings (102 has no phone registered: the call ends unanswered at once).
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.connect(pbx.v4()).unwrap();
    sip.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let me = sip.local_addr().unwrap();
    let sdp = "v=0\r\no=door 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "INVITE sip:ring@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhook1;rport\r\nMax-Forwards: 70\r\n\
         From: \"Door\" <sip:190@127.0.0.1>;tag=door\r\nTo: <sip:ring@127.0.0.1>\r\nCall-ID: hook-1@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:190@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send(invite.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        assert!(
            Instant::now() < deadline,
            "no final answer:\n{}",
            tail(&pbx.log_text())
        );
        let Some(m) = recv_msg(&sip) else { continue };
        if !m.starts_with("SIP/2.0 1") {
            break m;
        }
    };
    assert!(last.starts_with("SIP/2.0 480"), "{last}");
    let to = last
        .lines()
        .find(|l| l.starts_with("To:"))
        .unwrap()
        .trim_start_matches("To:")
        .trim()
        .to_string();
    let ack = format!(
        "ACK sip:ring@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKhook1;rport\r\nMax-Forwards: 70\r\n\
         From: \"Door\" <sip:190@127.0.0.1>;tag=door\r\nTo: {to}\r\nCall-ID: hook-1@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send(ack.as_bytes()).unwrap();

    // First attempt answered 503, retried after 1 s; then the missed call.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 3 && Instant::now() < deadline {
        if let Ok(h) = hits.recv_timeout(Duration::from_millis(200)) {
            got.push((Instant::now(), h));
        }
    }
    assert_eq!(
        got.len(),
        3,
        "three POSTs expected, got {got:#?}\n{}",
        tail(&pbx.log_text())
    );
    let (t1, first) = &got[0];
    let (t2, retry) = &got[1];
    assert!(
        first
            .head
            .starts_with("POST /api/webhook/podpbx-door HTTP/1.1\r\n"),
        "{}",
        first.head
    );
    assert_eq!(
        first.header("Content-Type").as_deref(),
        Some("application/json")
    );
    assert_eq!(first.header("X-Podpbx-Event").as_deref(), Some("doorbell"));
    let ev = first.json();
    assert_eq!(ev["event"], "doorbell");
    assert_eq!(ev["from"], "190");
    assert_eq!(ev["from_name"], "Front door");
    assert_eq!(ev["to"], "ring");
    assert!(ev["time"].as_str().unwrap().ends_with('Z'));
    // The signature checks out with the shared secret (and not with another).
    let sig = first.header("X-Podpbx-Signature").expect("signature");
    assert_eq!(
        sig,
        format!(
            "sha256={}",
            hmac_sha256_hex(b"correct horse battery staple", &first.body)
        )
    );
    assert_ne!(
        sig,
        format!("sha256={}", hmac_sha256_hex(b"wrong", &first.body))
    );
    // The retry carries the same event (same id) about a second later.
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.header("X-Podpbx-Delivery"),
        first.header("X-Podpbx-Delivery")
    );
    let gap = t2.duration_since(*t1);
    assert!(
        gap >= Duration::from_millis(800) && gap < Duration::from_secs(4),
        "retry after {gap:?}"
    );
    let missed = got[2].1.json();
    assert_eq!(missed["event"], "missed_call", "{missed}");
    assert_eq!(missed["from"], "190");
    assert_eq!(missed["to"], "ring");
    assert!(
        ["no_answer", "busy", "cancelled"].contains(&missed["reason"].as_str().unwrap()),
        "{missed}"
    );
    assert_ne!(missed["id"], ev["id"]);
    // Metrics show the delivery counters and the queue bound.
    let (code, text) = http_get(pbx.admin, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&text, "podpbx_webhook_deliveries_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "podpbx_webhook_failed_attempts_total"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "podpbx_webhook_queue_capacity"), Some(256.0));
}

#[test]
fn an_unreachable_webhook_never_delays_calls() {
    // A receiver that accepts and never answers, and a port nobody listens on.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let closed = free_port();
    let pbx = Pbx::start(&format!(
        r#"
[[users]]
name = "190"
identify_by_source = true
allow_from = ["127.0.0.1/32"]
doorbell = true

[[dialplan]]
name = "door"
match = {{ caller = "190" }}
action = "reject"
status = 486

[[webhooks]]
url = "http://{silent_addr}/"
timeout_secs = 10
max_attempts = 20

[[webhooks]]
url = "http://127.0.0.1:{closed}/"
max_attempts = 20

[events]
queue = 8
"#
    ));
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.connect(pbx.v4()).unwrap();
    sip.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let me = sip.local_addr().unwrap();
    // 30 rings in a row: each gets its 486 at once although no webhook ever succeeds.
    for i in 0..30 {
        let invite = format!(
            "INVITE sip:ring@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKslow{i};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:190@127.0.0.1>;tag=d{i}\r\nTo: <sip:ring@127.0.0.1>\r\nCall-ID: slow-{i}@test\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:190@{me}>\r\nContent-Length: 0\r\n\r\n"
        );
        let start = Instant::now();
        sip.send(invite.as_bytes()).unwrap();
        let fin = loop {
            let m = recv_msg(&sip)
                .unwrap_or_else(|| panic!("call {i}: no answer\n{}", tail(&pbx.log_text())));
            if !m.starts_with("SIP/2.0 1") {
                break m;
            }
        };
        assert!(fin.starts_with("SIP/2.0 486"), "{fin}");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "call {i} took {:?}",
            start.elapsed()
        );
        let to = fin
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap()
            .trim_start_matches("To:")
            .trim()
            .to_string();
        sip.send(
            format!(
                "ACK sip:ring@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKslow{i};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:190@127.0.0.1>;tag=d{i}\r\nTo: {to}\r\nCall-ID: slow-{i}@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    }
    // The queue stayed bounded: 60 deliveries wanted (30 rings x 2 hooks), 8 kept.
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = http_get(pbx.admin, "/metrics");
    let queued = metric(&text, "podpbx_webhook_queue").unwrap();
    assert!(queued <= 8.0, "queue {queued}\n{text}");
    let dropped = metric(&text, "podpbx_webhook_dropped_total").unwrap();
    assert!(dropped >= 50.0, "dropped {dropped}");
    drop(silent);
}
