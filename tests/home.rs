//! Black-box tests of the home features (issue 16) through the real binary: webhooks for home
//! automation (a receiver in the test gets the doorbell ring and the missed call, signed, with a
//! retry after a failed attempt); voicemail as a fallback (a caller leaves a tone, the WAV on
//! disk holds it, the owner dials *97, enters the PIN and hears it back).

#[path = "e2e/audio.rs"]
mod audio;
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

// ----- voicemail ----------------------------------------------------------------------------

/// A loopback "phone" for the media side: SIP over UDP from a fixed source (its user is
/// identified by that source), RTP in PCMU with RFC 4733 digits, what it hears decoded.
struct SipPhone {
    sip: UdpSocket,
    rtp: UdpSocket,
    me: SocketAddr,
    call_id: String,
    tag: String,
    to: String,
    ruri: String,
    remote_rtp: Option<SocketAddr>,
    heard: Vec<i16>,
    seq: u16,
    ts: u32,
    /// Samples of tone sent so far (the sine's phase carries over between `talk` calls).
    sent: u64,
}

impl SipPhone {
    fn new(pbx: SocketAddr, local_ip: &str, call_id: &str) -> SipPhone {
        let sip = UdpSocket::bind((local_ip, 0)).unwrap();
        sip.connect(pbx).unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let rtp = UdpSocket::bind((local_ip, 0)).unwrap();
        rtp.set_nonblocking(true).unwrap();
        let me = sip.local_addr().unwrap();
        SipPhone {
            sip,
            rtp,
            me,
            call_id: call_id.into(),
            tag: format!("t-{call_id}"),
            to: String::new(),
            ruri: String::new(),
            remote_rtp: None,
            heard: Vec::new(),
            seq: 1,
            ts: 1000,
            sent: 0,
        }
    }

    fn host(a: SocketAddr) -> String {
        match a {
            SocketAddr::V4(v) => v.to_string(),
            SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
        }
    }

    /// INVITE `number`; returns the final status (ACKed; on 200 the RTP target is learnt).
    fn call(&mut self, number: &str, pbx: &Pbx) -> u16 {
        let me = Self::host(self.me);
        let r = self.rtp.local_addr().unwrap();
        let (fam, ip) = if r.is_ipv4() {
            ("IP4", r.ip().to_string())
        } else {
            ("IP6", r.ip().to_string())
        };
        let sdp = format!(
            "v=0\r\no=phone 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
            r.port()
        );
        self.ruri = format!("sip:{number}@{}", Self::host(self.sip.peer_addr().unwrap()));
        let invite = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{cid}1;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:phone@{me}>;tag={tag}\r\nTo: <{ruri}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:phone@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            ruri = self.ruri,
            cid = self.call_id,
            tag = self.tag,
        );
        self.sip.send(invite.as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let fin = loop {
            assert!(
                Instant::now() < deadline,
                "no final answer to {number}:\n{}",
                tail(&pbx.log_text())
            );
            let Some(m) = recv_msg(&self.sip) else {
                continue;
            };
            if m.starts_with("SIP/2.0 1") {
                continue;
            }
            break m;
        };
        let code: u16 = fin[8..11].parse().unwrap();
        self.to = fin
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap()
            .trim_start_matches("To:")
            .trim()
            .to_string();
        let ack = format!(
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{cid}{n};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:phone@{me}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            ruri = self.ruri,
            cid = self.call_id,
            tag = self.tag,
            to = self.to,
            n = if code == 200 { "a" } else { "1" },
        );
        self.sip.send(ack.as_bytes()).unwrap();
        if code == 200 {
            let body = &fin[fin.find("\r\n\r\n").unwrap() + 4..];
            let c = body.lines().find_map(|l| l.strip_prefix("c=IN ")).unwrap();
            let ip: std::net::IpAddr = c[4..].trim().parse().unwrap();
            let port: u16 = body
                .lines()
                .find_map(|l| l.strip_prefix("m=audio "))
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                body.contains("m=audio") && body.contains("RTP/AVP 0"),
                "PCMU first:\n{body}"
            );
            self.remote_rtp = Some(SocketAddr::new(ip, port));
        }
        code
    }

    /// Reads RTP (PCMU) that arrived; answers a BYE with 200; returns whether a BYE came.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.rtp.recv_from(&mut buf) {
            if n > 12 && buf[1] & 0x7f == 0 {
                for b in &buf[12..n] {
                    self.heard.push(podpbx_voicemail::g711::ulaw_decode(*b));
                }
            }
        }
        self.sip
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut bye = false;
        while let Some(m) = recv_msg(&self.sip) {
            if m.starts_with("BYE ") {
                let mut resp = String::from("SIP/2.0 200 OK\r\n");
                for l in m.lines().skip(1).take_while(|l| !l.is_empty()) {
                    let n = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                    if ["via", "from", "to", "call-id", "cseq"].contains(&n.as_str()) {
                        resp.push_str(l);
                        resp.push_str("\r\n");
                    }
                }
                resp.push_str("Content-Length: 0\r\n\r\n");
                self.sip.send(resp.as_bytes()).unwrap();
                bye = true;
            }
        }
        self.sip
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        bye
    }

    fn send_rtp(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        let _ = self.rtp.send_to(&p, self.remote_rtp.expect("answered"));
    }

    /// `frames` 20 ms frames of `hz` (0: silence), in real time; returns whether a BYE came.
    fn talk(&mut self, hz: f64, frames: usize) -> bool {
        let start = Instant::now();
        let mut bye = false;
        for k in 0..frames {
            let base = self.sent;
            self.sent += 160;
            let payload: Vec<u8> = (0..160)
                .map(|i| {
                    let t = (base + i) as f64 / 8000.0;
                    let v = if hz > 0.0 {
                        (2.0 * std::f64::consts::PI * hz * t).sin() * 12000.0
                    } else {
                        0.0
                    };
                    podpbx_voicemail::g711::ulaw_encode(v as i16)
                })
                .collect();
            let ts = self.ts;
            self.send_rtp(0, k == 0, ts, &payload);
            self.ts = self.ts.wrapping_add(160);
            bye |= self.pump();
            let due = start + Duration::from_millis(20 * (k as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        bye
    }

    /// One RFC 4733 digit (three updates, three end packets), 20 ms apart, then 100 ms pause.
    fn digit(&mut self, d: char) {
        let code = match d {
            '0'..='9' => d as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("digit {d}"),
        };
        let ts = self.ts;
        for k in 0..6u16 {
            let end = k >= 3;
            let dur = (k.min(3) + 1) * 160;
            self.send_rtp(
                101,
                k == 0,
                ts,
                &[
                    code,
                    if end { 0x8a } else { 0x0a },
                    (dur >> 8) as u8,
                    dur as u8,
                ],
            );
            std::thread::sleep(Duration::from_millis(20));
            self.pump();
        }
        self.ts = self.ts.wrapping_add(8 * 160);
        self.listen(Duration::from_millis(100));
    }

    fn listen(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut bye = false;
        while Instant::now() < end {
            bye |= self.pump();
            std::thread::sleep(Duration::from_millis(5));
        }
        bye
    }
}

fn heard_f64(x: &[i16]) -> Vec<f64> {
    x.iter().map(|s| *s as f64 / 32768.0).collect()
}

/// Best share of `hz` over windows of `n` samples.
fn best_purity(x: &[i16], hz: f64, n: usize) -> f64 {
    heard_f64(x)
        .chunks(n)
        .filter(|c| c.len() == n)
        .map(|c| audio::purity(c, 8000, hz))
        .fold(0.0, f64::max)
}

const VOICEMAIL: &str = r#"
[voicemail]
silence_secs = 1

[[users]]
name = "101"
identify_by_source = true
allow_from = ["::1/128"]
voicemail = true
voicemail_pin = "4711"

[[users]]
name = "190"
display_name = "Front door"
identify_by_source = true
allow_from = ["127.0.0.1/32"]
doorbell = true

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 2
fallback = [{ action = "voicemail" }]
"#;

#[test]
fn voicemail_fallback_records_the_tone_and_the_owner_hears_it_back() {
    let pbx = Pbx::start(VOICEMAIL);
    // The doorbell calls 101, nobody answers (no phone): voicemail after the fallback.
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "vm-door");
    assert_eq!(door.call("101", &pbx), 200, "{}", tail(&pbx.log_text()));
    door.listen(Duration::from_millis(600));
    let greeting = door.heard.len();
    assert!(greeting > 3000, "the greeting plays ({greeting} samples)");
    // # skips the greeting; the beep; 2 s of 852 Hz; then silence until podpbx says goodbye.
    door.digit('#');
    door.listen(Duration::from_millis(600));
    door.talk(852.0, 100);
    let mut bye = door.talk(0.0, 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bye && Instant::now() < deadline {
        bye = door.listen(Duration::from_millis(100));
    }
    assert!(
        bye,
        "podpbx hangs up after \"saved\":\n{}",
        tail(&pbx.log_text())
    );
    assert!(
        best_purity(&door.heard, 1000.0, 1600) > 0.8,
        "the caller heard the 1 kHz beep"
    );

    // The message on disk: a WAV with the tone, a sidecar with the caller.
    let dir = pbx.dir.path().join("voicemail").join("101");
    let mut wavs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    assert_eq!(wavs.len(), 1, "{wavs:?}");
    let wav = wavs.pop().unwrap();
    let rec = audio::read_wav(&wav).unwrap();
    assert_eq!(rec.rate, 8000);
    assert!((1.9..3.5).contains(&rec.secs()), "{} s", rec.secs());
    let mid = &rec.samples[4000..12000];
    assert!(
        audio::purity(mid, 8000, 852.0) > 0.8,
        "852 Hz in {}",
        wav.display()
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wav.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["caller"], "190");
    assert_eq!(sidecar["caller_name"], "Front door");
    assert_eq!(sidecar["heard"], false);

    // The owner (101 from ::1) dials *97, enters the PIN, presses 1: "message one" and the tone.
    let mut owner = SipPhone::new(pbx.v6(), "::1", "vm-owner");
    assert_eq!(owner.call("*97", &pbx), 200, "{}", tail(&pbx.log_text()));
    owner.listen(Duration::from_millis(500));
    for d in "4711#".chars() {
        owner.digit(d);
    }
    owner.listen(Duration::from_millis(300));
    owner.digit('1');
    owner.heard.clear();
    owner.listen(Duration::from_millis(4000));
    let p = best_purity(&owner.heard, 852.0, 4000);
    assert!(
        p > 0.8,
        "the owner hears the 852 Hz message (best purity {p})"
    );
    // Heard: the sidecar says so. Then 7 deletes it: both files go.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(wav.with_extension("json")).unwrap()).unwrap();
        if s["heard"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "sidecar not marked heard");
        std::thread::sleep(Duration::from_millis(100));
    }
    owner.digit('7');
    owner.listen(Duration::from_millis(500));
    assert!(
        !wav.exists() && !wav.with_extension("json").exists(),
        "deleted"
    );
    // # ends the call: goodbye, then podpbx's BYE.
    owner.digit('#');
    let mut bye = false;
    let deadline = Instant::now() + Duration::from_secs(6);
    while !bye && Instant::now() < deadline {
        bye = owner.listen(Duration::from_millis(100));
    }
    assert!(bye, "BYE after goodbye");
    // Metrics: the sessions and the bound.
    let (_, text) = http_get(pbx.admin, "/metrics");
    assert_eq!(
        metric(&text, "podpbx_voicemail_sessions_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(metric(&text, "podpbx_voicemail_messages_total"), Some(1.0));
    assert_eq!(metric(&text, "podpbx_voicemail_sessions_max"), Some(8.0));
    assert_eq!(metric(&text, "podpbx_voicemail_messages"), Some(0.0));
    // CDRs: answered by the voicemail, then the mailbox.
    // The CDR writer appends in batches (up to 100 ms after a call ends): wait for both lines.
    let cdrs: String = cdrs(&pbx.dir.path().join("cdr.jsonl"), 2, Duration::from_secs(5))
        .iter()
        .map(|c| format!("{c}\n"))
        .collect();
    assert!(cdrs.contains("\"answered_by\":\"voicemail:101\""), "{cdrs}");
    assert!(
        cdrs.contains("\"answered_by\":\"voicemail-box:101\""),
        "{cdrs}"
    );
}

#[test]
fn a_wrong_pin_three_times_hangs_up() {
    let pbx = Pbx::start(VOICEMAIL);
    let mut owner = SipPhone::new(pbx.v6(), "::1", "vm-wrong");
    assert_eq!(owner.call("*97", &pbx), 200);
    owner.listen(Duration::from_millis(300));
    for pin in ["1#", "2#", "3#"] {
        for d in pin.chars() {
            owner.digit(d);
        }
    }
    let mut bye = false;
    let deadline = Instant::now() + Duration::from_secs(8);
    while !bye && Instant::now() < deadline {
        bye = owner.listen(Duration::from_millis(100));
    }
    assert!(bye, "BYE after three wrong PINs");
    let log = pbx.log_text();
    assert_eq!(
        log.matches("wrong voicemail PIN").count(),
        3,
        "{}",
        tail(&log)
    );
}

// ----- MWI and BLF ---------------------------------------------------------------------------

/// A phone's signalling in the test: digest auth of its own (MD5, qop=auth), requests and the
/// NOTIFYs it receives (each answered 200).
struct Ua {
    sock: UdpSocket,
    me: SocketAddr,
    user: String,
    password: String,
    notifies: Vec<String>,
    n: u32,
}

fn md5_hex(s: &str) -> String {
    format!("{:x}", md5::compute(s.as_bytes()))
}

fn param(h: &str, name: &str) -> Option<String> {
    let i = h.find(&format!("{name}="))? + name.len() + 1;
    let rest = &h[i..];
    Some(if let Some(r) = rest.strip_prefix('"') {
        r[..r.find('"')?].to_string()
    } else {
        rest.split([',', ' ']).next()?.to_string()
    })
}

impl Ua {
    fn new(pbx: SocketAddr, user: &str, password: &str) -> Ua {
        let sock = UdpSocket::bind("[::1]:0").unwrap();
        sock.connect(pbx).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        Ua {
            sock,
            me,
            user: user.into(),
            password: password.into(),
            notifies: Vec::new(),
            n: 0,
        }
    }

    fn host(&self) -> String {
        format!("[::1]:{}", self.me.port())
    }

    /// Reads what arrived for `d`: NOTIFYs are answered and kept; responses are returned.
    fn read(&mut self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut responses = Vec::new();
        while Instant::now() < end {
            let Some(m) = recv_msg(&self.sock) else {
                continue;
            };
            if m.starts_with("NOTIFY ") {
                let mut resp = String::from("SIP/2.0 200 OK\r\n");
                for l in m.lines().skip(1).take_while(|l| !l.is_empty()) {
                    let n = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                    if ["via", "from", "to", "call-id", "cseq", "v", "f", "t", "i"]
                        .contains(&n.as_str())
                    {
                        resp.push_str(l);
                        resp.push_str("\r\n");
                    }
                }
                resp.push_str("Content-Length: 0\r\n\r\n");
                self.sock.send(resp.as_bytes()).unwrap();
                self.notifies.push(m);
            } else if m.starts_with("SIP/2.0") {
                responses.push(m);
                if !responses.last().unwrap().starts_with("SIP/2.0 1") {
                    break;
                }
            }
        }
        responses
    }

    /// Sends `method` (with `headers`) and answers a 401 once; returns the final response.
    fn request(
        &mut self,
        method: &str,
        ruri: &str,
        call_id: &str,
        tags: (&str, Option<&str>),
        headers: &str,
    ) -> String {
        let mut auth = String::new();
        for round in 0..2 {
            self.n += 1;
            let to_tag = tags.1.map(|t| format!(";tag={t}")).unwrap_or_default();
            // REGISTER: To is the address of record.
            let to_uri = if method == "REGISTER" {
                format!("sip:{}@podpbx.local", self.user)
            } else {
                ruri.to_string()
            };
            let msg = format!(
                "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {h};branch=z9hG4bKua{n}x{cid};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:{u}@podpbx.local>;tag={ft}\r\nTo: <{to_uri}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {n} {method}\r\n\
                 Contact: <sip:{u}@{h}>\r\n{headers}{auth}Content-Length: 0\r\n\r\n",
                h = self.host(),
                n = self.n,
                cid = call_id,
                u = self.user,
                ft = tags.0,
            );
            self.sock.send(msg.as_bytes()).unwrap();
            let resp = self
                .read(Duration::from_secs(3))
                .pop()
                .unwrap_or_else(|| panic!("no answer to {method}"));
            if round == 0 && resp.starts_with("SIP/2.0 401") {
                let ch = resp
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
                    .unwrap()
                    .to_string();
                let realm = param(&ch, "realm").unwrap();
                let nonce = param(&ch, "nonce").unwrap();
                let ha1 = md5_hex(&format!("{}:{realm}:{}", self.user, self.password));
                let ha2 = md5_hex(&format!("{method}:{ruri}"));
                let (cnonce, nc) = ("0a4f113b", "00000001");
                let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
                auth = format!(
                    "Authorization: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{ruri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"\r\n",
                    self.user
                );
                continue;
            }
            return resp;
        }
        unreachable!()
    }

    fn to_tag(resp: &str) -> String {
        let to = resp.lines().find(|l| l.starts_with("To:")).unwrap();
        to[to.find("tag=").unwrap() + 4..].trim().to_string()
    }

    fn wait_notify(&mut self, d: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + d;
        loop {
            if let Some(n) = self.notifies.iter().find(|n| pred(n)) {
                return n.clone();
            }
            assert!(
                Instant::now() < end,
                "NOTIFY not seen; got:\n{}",
                self.notifies.join("\n-----\n")
            );
            self.read(Duration::from_millis(100));
        }
    }
}

const PRESENCE: &str = r#"
[voicemail]
silence_secs = 1

[[users]]
name = "101"
password = "pw-101"
voicemail = true
voicemail_pin = "4711"

[[users]]
name = "102"
password = "pw-102"

[[users]]
name = "103"
password = "pw-103"
voicemail = true
unsolicited_mwi = true

[[users]]
name = "190"
identify_by_source = true
allow_from = ["127.0.0.1/32"]
doorbell = true

[[groups]]
name = "phones"
members = ["102"]

[[dialplan]]
name = "door"
match = { caller = "190", number = "phones" }
action = "ring"
targets = ["phones"]
timeout_secs = 20

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 1
fallback = [{ action = "voicemail" }]
"#;

fn leave_message(pbx: &Pbx, to: &str, call_id: &str) {
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", call_id);
    assert_eq!(door.call(to, pbx), 200, "{}", tail(&pbx.log_text()));
    door.listen(Duration::from_millis(300));
    door.digit('#');
    door.listen(Duration::from_millis(600));
    door.talk(700.0, 75);
    let mut bye = door.talk(0.0, 75);
    let end = Instant::now() + Duration::from_secs(10);
    while !bye && Instant::now() < end {
        bye = door.listen(Duration::from_millis(100));
    }
    assert!(bye, "message saved and BYE");
}

#[test]
fn mwi_subscription_and_unsolicited_notify_follow_the_mailbox() {
    let pbx = Pbx::start(PRESENCE);
    // 101 subscribes (digest like REGISTER): 200, then a NOTIFY with the counts (no messages).
    let mut owner = Ua::new(pbx.v6(), "101", "pw-101");
    let ruri = format!("sip:101@[::1]:{}", pbx.port);
    let r = owner.request(
        "SUBSCRIBE",
        &ruri,
        "mwi-1",
        ("s1", None),
        "Event: message-summary\r\nAccept: application/simple-message-summary\r\nExpires: 600\r\n",
    );
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    assert!(r.contains("Expires: 600"), "{r}");
    let first = owner.wait_notify(Duration::from_secs(3), |n| n.contains("Messages-Waiting"));
    assert!(
        first.contains("Subscription-State: active") && first.contains("Messages-Waiting: no"),
        "{first}"
    );
    assert!(first.contains("Event: message-summary"), "{first}");
    // 103 registers (no subscription): an unsolicited NOTIFY lights its lamp state at once.
    let mut other = Ua::new(pbx.v6(), "103", "pw-103");
    let reg = other.request(
        "REGISTER",
        &format!("sip:[::1]:{}", pbx.port),
        "reg-103",
        ("r1", None),
        "Expires: 300\r\n",
    );
    assert!(reg.starts_with("SIP/2.0 200"), "{reg}");
    let n = other.wait_notify(Duration::from_secs(3), |n| n.contains("Messages-Waiting"));
    assert!(
        n.contains("Messages-Waiting: no")
            && !n
                .lines()
                .any(|l| l.starts_with("To:") && l.contains("tag=")),
        "{n}"
    );
    // A message for 101: its subscription gets "yes, 1/0".
    leave_message(&pbx, "101", "mwi-door-1");
    let n = owner.wait_notify(Duration::from_secs(5), |n| n.contains("Voice-Message: 1/0"));
    assert!(n.contains("Messages-Waiting: yes"), "{n}");
    // A message for 103: its phone gets an unsolicited "yes".
    leave_message(&pbx, "103", "mwi-door-2");
    let n = other.wait_notify(Duration::from_secs(5), |n| n.contains("Voice-Message: 1/0"));
    assert!(
        n.contains("Messages-Waiting: yes") && n.contains("sip:103@"),
        "{n}"
    );
    // Someone else's mailbox: 403; a user without a mailbox: 404.
    let r = other.request(
        "SUBSCRIBE",
        &ruri,
        "mwi-2",
        ("s2", None),
        "Event: message-summary\r\n",
    );
    assert!(r.starts_with("SIP/2.0 403"), "{r}");
    let mut plain = Ua::new(pbx.v6(), "102", "pw-102");
    let r = plain.request(
        "SUBSCRIBE",
        &format!("sip:102@[::1]:{}", pbx.port),
        "mwi-3",
        ("s3", None),
        "Event: message-summary\r\n",
    );
    assert!(r.starts_with("SIP/2.0 404"), "{r}");
    // Unsubscribe: 200 and a last NOTIFY, terminated.
    let tag = Ua::to_tag(
        &first
            .lines()
            .find(|l| l.starts_with("From:"))
            .map(|l| l.replace("From:", "To:"))
            .unwrap(),
    );
    let r = owner.request(
        "SUBSCRIBE",
        &ruri,
        "mwi-1",
        ("s1", Some(&tag)),
        "Event: message-summary\r\nExpires: 0\r\n",
    );
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    owner.wait_notify(Duration::from_secs(3), |n| {
        n.contains("Subscription-State: terminated")
    });
    let text = metrics_when(&pbx, |t| metric(t, "podpbx_subscriptions") == Some(0.0));
    assert_eq!(metric(&text, "podpbx_subscriptions_max"), Some(1024.0));
}

#[test]
fn blf_notifies_follow_a_ringing_doorbell_call() {
    let pbx = Pbx::start(PRESENCE);
    // 102's phone rings and never answers (SIPp).
    let phone = Phone::start(pbx.v6(), "102", "pw-102", "call_phone_ring.xml", &[]);
    // 101 watches 102 and the group.
    let mut watcher = Ua::new(pbx.v6(), "101", "pw-101");
    for (who, cid) in [("102", "blf-102"), ("phones", "blf-grp")] {
        let r = watcher.request(
            "SUBSCRIBE",
            &format!("sip:{who}@[::1]:{}", pbx.port),
            cid,
            ("b1", None),
            "Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 600\r\n",
        );
        assert!(r.starts_with("SIP/2.0 200"), "{r}");
    }
    let idle = watcher.wait_notify(Duration::from_secs(3), |n| n.contains("entity=\"sip:102@"));
    assert!(
        idle.contains("Content-Type: application/dialog-info+xml") && !idle.contains("<dialog "),
        "{idle}"
    );
    // The doorbell rings the group.
    let door = SipPhone::new(pbx.v4(), "127.0.0.1", "blf-door");
    let me = SipPhone::host(door.me);
    let r = door.rtp.local_addr().unwrap();
    let sdp = format!("v=0\r\no=d 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n", r.port());
    let ruri = format!("sip:phones@{}", SipPhone::host(pbx.v4()));
    door.sip.send(format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKblfdoor;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:190@{me}>;tag=bd\r\nTo: <{ruri}>\r\nCall-ID: blf-door\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:190@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()
    ).as_bytes()).unwrap();
    let ringing = watcher.wait_notify(Duration::from_secs(5), |n| {
        n.contains("entity=\"sip:102@") && n.contains("<state>early</state>")
    });
    assert!(
        ringing.contains("direction=\"recipient\"") && ringing.contains("sip:190@"),
        "{ringing}"
    );
    assert!(
        ringing.contains("call-id=\"") && ringing.contains("local-tag=\""),
        "pickup identifiers: {ringing}"
    );
    watcher.wait_notify(Duration::from_secs(5), |n| {
        n.contains("entity=\"sip:phones@") && n.contains("<state>early</state>")
    });
    // The doorbell gives up: the key goes dark again (terminated, then idle).
    door.sip.send(format!(
        "CANCEL {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKblfdoor;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:190@{me}>;tag=bd\r\nTo: <{ruri}>\r\nCall-ID: blf-door\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ).as_bytes()).unwrap();
    watcher.wait_notify(Duration::from_secs(5), |n| {
        n.contains("entity=\"sip:102@") && n.contains("<state>terminated</state>")
    });
    let (ok, logs) = phone.finish(Duration::from_secs(10));
    assert!(ok, "phone saw the CANCEL:\n{logs}");
    // Versions grow per subscription.
    let versions: Vec<u32> = watcher
        .notifies
        .iter()
        .filter(|n| n.contains("entity=\"sip:102@"))
        .filter_map(|n| {
            param(&n[n.find("<dialog-info")?..], "version").and_then(|v| v.parse().ok())
        })
        .collect();
    assert!(
        versions.windows(2).all(|w| w[1] > w[0]) && versions.len() >= 3,
        "{versions:?}"
    );
}

#[test]
fn unknown_packages_get_489_and_subscribe_floods_stay_bounded() {
    let pbx = Pbx::start(PRESENCE);
    let mut ua = Ua::new(pbx.v6(), "101", "pw-101");
    let ruri = format!("sip:102@[::1]:{}", pbx.port);
    // No credentials needed to learn the package is unknown; nothing is stored.
    for ev in ["presence", "conference", "reg"] {
        ua.n += 1;
        let msg = format!(
            "SUBSCRIBE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {h};branch=z9hG4bKbad{ev};rport\r\nMax-Forwards: 70\r\nFrom: <sip:101@x>;tag=x\r\n\
             To: <{ruri}>\r\nCall-ID: bad-{ev}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:101@{h}>\r\nEvent: {ev}\r\nContent-Length: 0\r\n\r\n",
            h = ua.host()
        );
        ua.sock.send(msg.as_bytes()).unwrap();
        let r = ua.read(Duration::from_secs(2)).pop().expect("answer");
        assert!(r.starts_with("SIP/2.0 489"), "{r}");
        assert!(r.contains("Allow-Events: message-summary, dialog"), "{r}");
    }
    // A flood of 200 authenticated subscriptions from one user (a new Call-ID and event id
    // each, so none replaces another): at most 64 kept, the oldest evicted.
    for i in 0..200 {
        let cid = format!("flood-{i}");
        let r = ua.request(
            "SUBSCRIBE",
            &ruri,
            &cid,
            ("f", None),
            &format!("Event: dialog;id={i}\r\nExpires: 3600\r\n"),
        );
        assert!(r.starts_with("SIP/2.0 200"), "{i}: {r}");
    }
    // The subscription gauges follow the 1 s status tick.
    let text = metrics_when(&pbx, |t| metric(t, "podpbx_subscriptions") == Some(64.0));
    assert_eq!(
        metric(&text, "podpbx_subscriptions_max_per_user"),
        Some(64.0)
    );
    assert!(metric(&text, "podpbx_subscriptions_evicted_total").unwrap() >= 136.0);
    assert_eq!(metric(&text, "podpbx_subscribe_bad_event_total"), Some(3.0));
    // ctl shows them.
    let (code, out, err) = ctl(&["--admin", &pbx.admin.to_string(), "subscriptions"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("SUBSCRIBER") && out.contains("dialog") && out.lines().count() >= 65,
        "{out}"
    );
}

/// `/metrics` once `ok` holds on it (within 3 s).
fn metrics_when(pbx: &Pbx, ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, text) = http_get(pbx.admin, "/metrics");
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < end, "metrics never matched:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ----- DND, modes, persistence ----------------------------------------------------------------

#[test]
fn dnd_gives_busy_and_runs_the_fallback_and_survives_a_restart() {
    let cfg = r#"
[voicemail]
silence_secs = 1

[[modes]]
name = "night"
feature_code = "*55"

[[users]]
name = "101"
identify_by_source = true
allow_from = ["::1/128"]
voicemail = true
voicemail_pin = "4711"

[[users]]
name = "102"
password = "pw-102"
voicemail = true

[[users]]
name = "190"
identify_by_source = true
allow_from = ["127.0.0.1/32"]

[[dialplan]]
name = "night"
match = { caller = "190", number = "main", mode = "night" }
action = "reject"
status = 480
reason = "Night"

[[dialplan]]
name = "main"
match = { caller = "190", number = "main" }
action = "ring"
targets = ["102"]
timeout_secs = 5

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 5
fallback = [{ action = "voicemail" }]
"#;
    let mut pbx = Pbx::start(cfg);
    let admin = pbx.admin.to_string();
    // DND for 102 by ctl, for 101 by its feature code (confirmed by an announcement).
    let (code, out, err) = ctl(&["--admin", &admin, "dnd", "102", "on"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("do not disturb of 102 is on"), "{out}");
    let mut phone = SipPhone::new(pbx.v6(), "::1", "dnd-code");
    assert_eq!(phone.call("*78", &pbx), 200, "{}", tail(&pbx.log_text()));
    let mut bye = false;
    let end = Instant::now() + Duration::from_secs(5);
    while !bye && Instant::now() < end {
        bye = phone.listen(Duration::from_millis(100));
    }
    assert!(bye && phone.heard.len() > 2000, "\"activated\", then BYE");
    let (_, out, _) = ctl(&["--admin", &admin, "features"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("101 ") && l.contains(" on ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("102 ") && l.contains(" on ")),
        "{out}"
    );
    // A call to 102 (DND): not rung, busy, so the voicemail fallback answers.
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "dnd-door");
    assert_eq!(
        door.call("102", &pbx),
        200,
        "voicemail fallback: {}",
        tail(&pbx.log_text())
    );
    // "main" rings only 102 and has no fallback: 486.
    let mut door2 = SipPhone::new(pbx.v4(), "127.0.0.1", "dnd-door2");
    assert_eq!(door2.call("main", &pbx), 486);
    // Night mode by ctl: the night rule takes the call.
    let (code, _, err) = ctl(&["--admin", &admin, "mode", "night", "on"]);
    assert_eq!(code, Some(0), "{err}");
    let mut door3 = SipPhone::new(pbx.v4(), "127.0.0.1", "night-door");
    assert_eq!(door3.call("main", &pbx), 480);
    let (code, _, err) = ctl(&["--admin", &admin, "mode", "dusk", "on"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no mode `dusk`"), "{err}");
    // Killed (no graceful stop) and started again: the switches are still set.
    std::thread::sleep(Duration::from_millis(300));
    pbx.restart_hard();
    let (_, out, _) = ctl(&["--admin", &pbx.admin.to_string(), "features"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("102 ") && l.contains(" on ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("night") && l.contains("on")),
        "{out}"
    );
    let mut door4 = SipPhone::new(pbx.v4(), "127.0.0.1", "night-door2");
    assert_eq!(door4.call("main", &pbx), 480, "night mode kept");
    // The feature code toggles night mode off.
    let mut phone2 = SipPhone::new(pbx.v6(), "::1", "night-code");
    assert_eq!(phone2.call("*55", &pbx), 200);
    let mut door5 = SipPhone::new(pbx.v4(), "127.0.0.1", "day-door");
    assert_eq!(door5.call("main", &pbx), 486, "day again: 102 still in DND");
}

/// Time-based routing on the real clock: a rule whose hours hold now matches, one whose hours
/// exclude now does not (UTC, so the test does not depend on the machine's zone).
#[test]
fn time_rules_follow_the_clock() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = (now / 60 % 1440) as i64;
    let hhmm = |m: i64| {
        let m = m.rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    // Around now (±90 min) and far from now (+4 h .. +6 h).
    let (near, far) = (
        format!("{}-{}", hhmm(minute - 90), hhmm(minute + 90)),
        format!("{}-{}", hhmm(minute + 240), hhmm(minute + 360)),
    );
    let cfg = format!(
        r#"
[clock]
timezone = "UTC"

[[users]]
name = "190"
identify_by_source = true
allow_from = ["127.0.0.1/32"]

[[dialplan]]
name = "far"
match = {{ number = "t", time = {{ hours = ["{far}"] }} }}
action = "reject"
status = 603

[[dialplan]]
name = "near"
match = {{ number = "t", time = {{ hours = ["{near}"] }} }}
action = "reject"
status = 480

[[dialplan]]
name = "other"
match = {{ number = "t" }}
action = "reject"
status = 404
"#
    );
    let pbx = Pbx::start(&cfg);
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "time-1");
    assert_eq!(door.call("t", &pbx), 480, "the rule around now matches");
}

/// A WAV of `secs` of `hz` at `rate` Hz, `channels` channels, 16-bit PCM.
fn wav_bytes(rate: u32, channels: u16, secs: f64, hz: f64) -> Vec<u8> {
    let n = (rate as f64 * secs) as usize;
    let mut data = Vec::with_capacity(n * 2 * channels as usize);
    for i in 0..n {
        let v = ((2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() * 10000.0) as i16;
        for _ in 0..channels {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    let block = 2 * channels;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * block as u32).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[test]
fn greeting_uploads_are_validated_and_played() {
    let pbx = Pbx::start(VOICEMAIL);
    let cfg = pbx.dir.path().join("podpbx.toml");
    let cfg = cfg.to_str().unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let f = pbx.dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        ctl(&["--config", cfg, "greeting", "101", f.to_str().unwrap()])
    };
    let good = wav_bytes(8000, 1, 1.5, 600.0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.wav",
            b"hello, this is not audio".to_vec(),
            "not a WAV file",
        ),
        (
            "truncated.wav",
            good[..good.len() / 2].to_vec(),
            "truncated WAV file",
        ),
        (
            "cd.wav",
            wav_bytes(44100, 2, 0.5, 600.0),
            "unsupported channel count 2",
        ),
        (
            "hifi.wav",
            wav_bytes(44100, 1, 0.5, 600.0),
            "unsupported sample rate 44100 Hz",
        ),
        (
            "long.wav",
            wav_bytes(8000, 1, 61.0, 600.0),
            "too long: 61.0 s",
        ),
        (
            "huge.wav",
            vec![0u8; 2_000_000],
            "at most 1100000 are accepted",
        ),
    ];
    for (name, bytes, want) in cases {
        let (code, _, err) = put(name, &bytes);
        assert_eq!(code, Some(1), "{name} refused");
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(!pbx.dir.path().join("voicemail/101/greeting.wav").exists());
    let (code, out, err) = ctl(&["--config", cfg, "greeting", "102", "x.wav"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("no mailbox"), "{err}");
    // A good one is stored and played to the next caller instead of the default greeting.
    let (code, out, err) = put("own.wav", &good);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("greeting of 101 stored (1.5 s)"), "{out}");
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "greet-1");
    assert_eq!(door.call("101", &pbx), 200);
    door.listen(Duration::from_millis(1500));
    let p = best_purity(&door.heard[..door.heard.len().min(12_000)], 600.0, 4000);
    assert!(p > 0.8, "the own greeting (600 Hz) plays first: {p}");
    let (code, out, _) = ctl(&["--config", cfg, "greeting", "101", "--remove"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("removed"), "{out}");
}

// ----- e-mail --------------------------------------------------------------------------------

/// A minimal SMTP server on loopback (RFC 5321 without extensions): one message per
/// connection, reported as received (headers and body as text).
fn smtp_server() -> (u16, mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut r = std::io::BufReader::new(c.try_clone().unwrap());
            let _ = c.write_all(b"220 test ESMTP\r\n");
            let mut rcpt = String::new();
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 {
                    break;
                }
                let up = line.to_ascii_uppercase();
                if up.starts_with("EHLO") || up.starts_with("HELO") {
                    let _ = c.write_all(b"250-test\r\n250 8BITMIME\r\n");
                } else if up.starts_with("RCPT TO:") {
                    rcpt = line.trim().to_string();
                    let _ = c.write_all(b"250 ok\r\n");
                } else if up.starts_with("DATA") {
                    let _ = c.write_all(b"354 go on\r\n");
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if std::io::BufRead::read_line(&mut r, &mut l).unwrap_or(0) == 0
                            || l == ".\r\n"
                        {
                            break;
                        }
                        data.push_str(&l);
                    }
                    let _ = c.write_all(b"250 queued\r\n");
                    let _ = tx.send((rcpt.clone(), data));
                } else if up.starts_with("QUIT") {
                    let _ = c.write_all(b"221 bye\r\n");
                    break;
                } else {
                    let _ = c.write_all(b"250 ok\r\n");
                }
            }
        }
    });
    (port, rx)
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn a_new_message_is_emailed_with_the_wav_attached() {
    let (smtp, mails) = smtp_server();
    let cfg = VOICEMAIL.replace(
        "voicemail_pin = \"4711\"",
        "voicemail_pin = \"4711\"\nemail = \"anna@example.org\"",
    );
    let pbx = Pbx::start(&format!(
        "{cfg}\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\ntls = \"none\"\nfrom = \"pbx@home.example\"\n"
    ));
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "mail-door");
    assert_eq!(door.call("101", &pbx), 200);
    door.listen(Duration::from_millis(300));
    door.digit('#');
    door.listen(Duration::from_millis(600));
    door.talk(852.0, 100);
    door.talk(0.0, 80);
    let (rcpt, mail) = mails
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("no e-mail:\n{}", tail(&pbx.log_text())));
    assert!(rcpt.contains("<anna@example.org>"), "{rcpt}");
    assert!(
        mail.contains("Subject: Voicemail from Front door (190)"),
        "{mail}"
    );
    assert!(mail.contains("From: podpbx <pbx@home.example>"), "{mail}");
    assert!(
        mail.contains("New voicemail for 101 from Front door (190)"),
        "{mail}"
    );
    // The attachment: a WAV holding the tone.
    let i = mail.find("Content-Type: audio/wav").expect("WAV attached");
    let part = &mail[i..];
    let body_start = part.find("\r\n\r\n").unwrap() + 4;
    let body_end = part[body_start..]
        .find("\r\n--")
        .map_or(part.len(), |e| body_start + e);
    let wav = base64_decode(&part[body_start..body_end]);
    let f = pbx.dir.path().join("attached.wav");
    std::fs::write(&f, &wav).unwrap();
    let rec = audio::read_wav(&f).unwrap();
    assert!(
        audio::purity(&rec.samples[4000..12000], 8000, 852.0) > 0.8,
        "852 Hz in the attachment"
    );
    let text = metrics_when(&pbx, |t| metric(t, "podpbx_email_sent_total") == Some(1.0));
    assert_eq!(metric(&text, "podpbx_email_queue_capacity"), Some(64.0));
}

#[test]
fn an_oversized_recording_is_cut_at_the_limit() {
    let cfg = VOICEMAIL.replace(
        "[voicemail]\nsilence_secs = 1",
        "[voicemail]\nsilence_secs = 3\nmax_message_secs = 5",
    );
    let pbx = Pbx::start(&cfg);
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "long-door");
    assert_eq!(door.call("101", &pbx), 200);
    door.listen(Duration::from_millis(300));
    door.digit('#');
    door.listen(Duration::from_millis(600));
    // 9 s of tone for a 5 s limit: podpbx says "saved" and hangs up while the caller talks.
    let bye = door.talk(852.0, 450);
    let mut bye = bye;
    let end = Instant::now() + Duration::from_secs(6);
    while !bye && Instant::now() < end {
        bye = door.listen(Duration::from_millis(100));
    }
    assert!(bye, "BYE after the limit");
    let dir = pbx.dir.path().join("voicemail").join("101");
    let wav = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wav"))
        .expect("message");
    let rec = audio::read_wav(&wav).unwrap();
    assert!(
        (rec.secs() - 5.0).abs() < 0.05,
        "cut at 5 s: {} s",
        rec.secs()
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wav.with_extension("json")).unwrap()).unwrap();
    assert_eq!(meta["duration_secs"], 5.0);
}

#[test]
fn pickup_code_takes_a_ringing_call_with_audio_both_ways() {
    let pbx = Pbx::start(
        r#"
[[users]]
name = "101"
identify_by_source = true
allow_from = ["::1/128"]

[[users]]
name = "102"
password = "pw-102"

[[users]]
name = "190"
identify_by_source = true
allow_from = ["127.0.0.1/32"]

[[dialplan]]
name = "door"
match = { caller = "190" }
action = "ring"
targets = ["102"]
timeout_secs = 20
"#,
    );
    // 102's phone rings and never answers (it expects our CANCEL).
    let phone = Phone::start(pbx.v6(), "102", "pw-102", "call_phone_ring.xml", &[]);
    let mut door = SipPhone::new(pbx.v4(), "127.0.0.1", "pick-door");
    // The door's INVITE by hand (its 200 comes only after the pickup).
    let me = SipPhone::host(door.me);
    let r = door.rtp.local_addr().unwrap();
    let sdp = format!("v=0\r\no=d 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", r.port());
    let ruri = format!("sip:102@{}", SipPhone::host(pbx.v4()));
    door.sip.send(format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKpick1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:190@{me}>;tag=pd\r\nTo: <{ruri}>\r\nCall-ID: pick-door\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:190@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()
    ).as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "no 180:\n{}",
            tail(&pbx.log_text())
        );
        if recv_msg(&door.sip).is_some_and(|m| m.starts_with("SIP/2.0 180")) {
            break;
        }
    }
    // 101 dials **102 and gets the call.
    let mut picker = SipPhone::new(pbx.v6(), "::1", "pick-101");
    assert_eq!(picker.call("**102", &pbx), 200, "{}", tail(&pbx.log_text()));
    // The door gets its 200 too (with the picker's media anchored at the relay).
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok = loop {
        assert!(
            Instant::now() < deadline,
            "no 200 for the door:\n{}",
            tail(&pbx.log_text())
        );
        if let Some(m) = recv_msg(&door.sip).filter(|m| m.starts_with("SIP/2.0 200")) {
            break m;
        }
    };
    let body = &ok[ok.find("\r\n\r\n").unwrap() + 4..];
    let port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    door.remote_rtp = Some(SocketAddr::new("127.0.0.1".parse().unwrap(), port));
    door.to = ok
        .lines()
        .find(|l| l.starts_with("To:"))
        .unwrap()
        .trim_start_matches("To:")
        .trim()
        .to_string();
    door.sip.send(format!(
        "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKpick2;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:190@{me}>;tag=pd\r\nTo: {}\r\nCall-ID: pick-door\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", door.to
    ).as_bytes()).unwrap();
    // Audio both ways through the relay: 2 s each side, interleaved.
    for _ in 0..100 {
        door.talk(852.0, 1);
        picker.talk(697.0, 1);
    }
    door.listen(Duration::from_millis(200));
    picker.listen(Duration::from_millis(200));
    let p_heard = best_purity(&picker.heard, 852.0, 4000);
    let d_heard = best_purity(&door.heard, 697.0, 4000);
    assert!(
        p_heard > 0.8 && d_heard > 0.8,
        "picker heard the door {p_heard:.2}, door heard the picker {d_heard:.2}\n{}",
        tail(&pbx.log_text())
    );
    let (ok, logs) = phone.finish(Duration::from_secs(10));
    assert!(ok, "102 was cancelled:\n{logs}");
}
