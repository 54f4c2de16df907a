//! RFC 4475 / RFC 5118 torture messages against the running binary: every message of
//! `tests/data/conformance/` is sent over UDP to IPv4 and IPv6
//! loopback, a subset also over TCP, and what podpbx does is checked against the verdict of
//! `tests/data/conformance/README.md` and printed as a table (`--nocapture` shows it; it is also
//! written to `target/tmp/conformance_binary.txt`).
//!
//! **One rewrite**: podpbx answers UDP requests at the source IP and, without `rport`, at the
//! top Via's sent-by port (RFC 3261 §18.2.2; default 5060), which is not the test socket. So
//! `;rport` is appended to the first value of the top Via of each UDP message that lacks it
//! (RFC 3581): the answer then comes back to the socket that sent it. Nothing else is changed:
//! not the Via host (podpbx never sends to a Via host for UDP, so the broadcast Via of `bcast`
//! cannot lure it), not Content-Length (the Via is in the head). Messages that must get no
//! answer (responses, invalid messages that are dropped) are verified through the `/metrics`
//! counters `podpbx_sip_bad_requests_total`, `podpbx_sip_dropped_malformed_total`,
//! `podpbx_sip_stray_responses_total`, `podpbx_sip_messages_out_total` and
//! `podpbx_sip_refused_destinations_total`.
//!
//! Torture messages reuse transaction keys (RFC 5118's five `z9hG4bKas3-111` requests...): to
//! podpbx a second one within Timer J is a retransmission of the first (RFC 3261 §17.2.3),
//! answered at the first one's address. Such a message is sent to a fresh podpbx process
//! instead of being rewritten.
//!
//! INVITE is judged by the set of answers a PBX may give an unauthenticated caller it has no
//! route for (501 while call control is not wired, 401/407 challenges, 403/404/480/484/488
//! afterwards), never 1xx beyond 100, never 2xx.

mod common;

use bytes::Bytes;
use common::*;
use podpbx_sip::{Framing, Message, Method};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What podpbx must do with a message.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A final response with one of these codes (1xx before it may only be 100).
    Final(&'static [u16]),
    /// Invalid: answered `400` (`505` allowed for an unknown version) or dropped and counted.
    Reject,
    /// A response: never answered, never forwarded; counted as stray or malformed.
    Silent,
}
use Want::*;

/// Final answers a PBX may give an INVITE from an unauthenticated stranger it cannot route.
const INVITE: &[u16] = &[401, 403, 404, 407, 480, 484, 488, 501, 503, 603];
/// A REGISTER without (usable) credentials: the registrar challenges.
const REGISTER: &[u16] = &[401];
/// A BYE/other in-dialog request without a dialog.
const NO_DIALOG: &[u16] = &[481, 501];

const USERS: &str = r#"
[security]
# The torture REGISTERs must not block loopback half-way through.
max_auth_failures = 0

[[users]]
name = "1001"
password = "kitchen-1001"
"#;

fn table() -> Vec<(&'static str, &'static str, Want)> {
    vec![
        // RFC 4475 §3.1.1: valid.
        // To carries a tag: a re-INVITE for a dialog that does not exist.
        ("rfc4475", "wsinv.dat", Final(&[481, 401, 403, 407])),
        ("rfc4475", "intmeth.dat", Final(&[501])),
        ("rfc4475", "esc01.dat", Final(INVITE)),
        ("rfc4475", "escnull.dat", Final(REGISTER)),
        ("rfc4475", "esc02.dat", Final(&[501])),
        ("rfc4475", "lwsdisp.dat", Final(&[200])),
        ("rfc4475", "longreq.dat", Final(INVITE)),
        ("rfc4475", "dblreq.dat", Final(REGISTER)),
        ("rfc4475", "semiuri.dat", Final(&[200])),
        ("rfc4475", "transports.dat", Final(&[200])),
        // multipart/mixed is not in Accept.
        ("rfc4475", "mpart01.dat", Final(&[415])),
        ("rfc4475", "unreason.dat", Silent),
        ("rfc4475", "noreason.dat", Silent),
        // RFC 4475 §3.1.2: invalid.
        ("rfc4475", "badinv01.dat", Reject),
        ("rfc4475", "clerr.dat", Reject),
        ("rfc4475", "ncl.dat", Reject),
        ("rfc4475", "scalar02.dat", Reject),
        ("rfc4475", "scalarlg.dat", Silent),
        ("rfc4475", "quotbal.dat", Reject),
        ("rfc4475", "ltgtruri.dat", Reject),
        ("rfc4475", "lwsruri.dat", Reject),
        ("rfc4475", "lwsstart.dat", Reject),
        ("rfc4475", "trws.dat", Reject),
        ("rfc4475", "escruri.dat", Reject),
        ("rfc4475", "baddate.dat", Reject),
        ("rfc4475", "regbadct.dat", Reject),
        ("rfc4475", "badaspec.dat", Reject),
        ("rfc4475", "baddn.dat", Reject),
        ("rfc4475", "badvers.dat", Reject),
        ("rfc4475", "mismatch01.dat", Reject),
        ("rfc4475", "mismatch02.dat", Reject),
        ("rfc4475", "bigcode.dat", Silent),
        // RFC 4475 §3.2-3.4: transaction and application layer.
        ("rfc4475", "badbranch.dat", Final(&[200, 400])),
        ("rfc4475", "insuf.dat", Reject),
        ("rfc4475", "unkscm.dat", Final(&[416])),
        ("rfc4475", "novelsc.dat", Final(&[416])),
        ("rfc4475", "unksm2.dat", Final(&[400, 401, 403, 404, 416])),
        ("rfc4475", "bext01.dat", Final(&[420])),
        ("rfc4475", "invut.dat", Final(&[415])),
        ("rfc4475", "regaut01.dat", Final(REGISTER)),
        ("rfc4475", "multi01.dat", Reject),
        ("rfc4475", "mcl01.dat", Reject),
        ("rfc4475", "bcast.dat", Silent),
        ("rfc4475", "zeromf.dat", Final(&[200, 483])),
        ("rfc4475", "cparam01.dat", Final(REGISTER)),
        ("rfc4475", "cparam02.dat", Final(REGISTER)),
        ("rfc4475", "regescrt.dat", Final(REGISTER)),
        (
            "rfc4475",
            "sdp01.dat",
            Final(&[401, 403, 404, 406, 407, 415, 480, 484, 488, 501, 503, 603]),
        ),
        ("rfc4475", "inv2543.dat", Final(INVITE)),
        // RFC 5118.
        ("rfc5118", "ipv6-good.dat", Final(REGISTER)),
        ("rfc5118", "ipv6-bad.dat", Reject),
        ("rfc5118", "port-ambiguous.dat", Final(REGISTER)),
        ("rfc5118", "port-unambiguous.dat", Final(REGISTER)),
        (
            "rfc5118",
            "via-received-param-with-delim.dat",
            Final(NO_DIALOG),
        ),
        ("rfc5118", "via-received-param-no-delim.dat", Final(&[200])),
        ("rfc5118", "ipv6-in-sdp.dat", Final(INVITE)),
        ("rfc5118", "mult-ip-in-header.dat", Final(NO_DIALOG)),
        ("rfc5118", "mult-ip-in-sdp.dat", Final(INVITE)),
        ("rfc5118", "ipv4-mapped-ipv6.dat", Final(INVITE)),
        ("rfc5118", "ipv6-bug-abnf-3-colons.dat", Reject),
        ("rfc5118", "ipv6-correct-abnf-2-colons.dat", Final(&[200])),
    ]
}

/// `<workspace root>/tests/data/conformance` (the corpus is part of the repository; its
/// provenance is in that folder's README).
fn conformance_dir() -> PathBuf {
    root().join("tests").join("data").join("conformance")
}

fn read(dir: &str, file: &str) -> Vec<u8> {
    let p = conformance_dir().join(dir).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Appends `;rport` to the first value of the top Via (long or compact name, folded or not,
/// comma list or not) unless it already asks for rport; returns the message and whether it
/// was changed.
fn with_rport(msg: &[u8]) -> (Vec<u8>, bool) {
    let head_end = find(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let mut line_start = match find(msg, b"\r\n") {
        Some(i) => i + 2,
        None => return (msg.to_vec(), false),
    };
    while line_start < head_end {
        let line_end = find(&msg[line_start..], b"\r\n").map_or(msg.len(), |i| line_start + i);
        let line = &msg[line_start..line_end];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            line_start = line_end + 2;
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        if name != "via" && name != "v" {
            line_start = line_end + 2;
            continue;
        }
        // The value runs over continuation lines (starting with SP/HT).
        let value_start = line_start + colon + 1;
        let mut value_end = line_end;
        while value_end + 2 < msg.len()
            && matches!(msg[value_end + 2], b' ' | b'\t')
            && value_end < head_end
        {
            value_end =
                find(&msg[value_end + 2..], b"\r\n").map_or(msg.len(), |i| value_end + 2 + i);
        }
        // End of the first via-parm: the first comma outside a quoted string.
        let mut i = value_start;
        let mut quoted = false;
        while i < value_end {
            match msg[i] {
                b'"' => quoted = !quoted,
                b'\\' if quoted => i += 1,
                b',' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        let mut at = i.min(value_end);
        while at > value_start && matches!(msg[at - 1], b' ' | b'\t' | b'\r' | b'\n') {
            at -= 1;
        }
        let first = String::from_utf8_lossy(&msg[value_start..at]).to_ascii_lowercase();
        if first
            .split(';')
            .skip(1)
            .any(|p| p.trim().split('=').next() == Some("rport"))
        {
            return (msg.to_vec(), false);
        }
        let mut out = msg[..at].to_vec();
        out.extend_from_slice(b";rport");
        out.extend_from_slice(&msg[at..]);
        return (out, true);
    }
    (msg.to_vec(), false)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The counters a case is judged by.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    messages_in: f64,
    messages_out: f64,
    bad_requests: f64,
    dropped_malformed: f64,
    stray_responses: f64,
    refused: f64,
}

fn counters(pbx: &Pbx) -> Counters {
    let (code, text) = http_get(pbx.admin, "/metrics");
    assert_eq!(code, 200, "/metrics answered");
    let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("{s} missing in /metrics"));
    Counters {
        messages_in: m("podpbx_sip_messages_in_total"),
        messages_out: m("podpbx_sip_messages_out_total"),
        bad_requests: m("podpbx_sip_bad_requests_total"),
        dropped_malformed: m("podpbx_sip_dropped_malformed_total"),
        stray_responses: m("podpbx_sip_stray_responses_total"),
        refused: m("podpbx_sip_refused_destinations_total"),
    }
}

/// One datagram's fate: the responses received (first line) and the counter deltas.
struct Outcome {
    responses: Vec<Vec<u8>>,
    delta: Counters,
}

fn delta(a: Counters, b: Counters) -> Counters {
    Counters {
        messages_in: b.messages_in - a.messages_in,
        messages_out: b.messages_out - a.messages_out,
        bad_requests: b.bad_requests - a.bad_requests,
        dropped_malformed: b.dropped_malformed - a.dropped_malformed,
        stray_responses: b.stray_responses - a.stray_responses,
        refused: b.refused - a.refused,
    }
}

/// Receives until a final response or `quiet` passes without anything.
fn collect_udp(peer: &UdpPeer, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    peer.sock.set_read_timeout(Some(quiet)).unwrap();
    while Instant::now() < deadline {
        match peer.recv() {
            Some(r) => {
                let fin = code_of(&r).is_some_and(|c| c >= 200);
                got.push(r);
                if fin {
                    break;
                }
            }
            None => break,
        }
    }
    got
}

fn code_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let s = std::str::from_utf8(line).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn first_line(resp: &[u8]) -> String {
    let line = resp.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .trim_end()
        .chars()
        .take(60)
        .collect()
}

/// The ACK for a non-2xx final answer to an INVITE (stops podpbx's Timer G retransmissions, so
/// they do not show up in the next case's counters).
fn ack_if_invite(sent: &[u8], resp: &[u8]) -> Option<Vec<u8>> {
    let req = Message::parse(Bytes::copy_from_slice(sent), Framing::Datagram).ok()?;
    if req.method() != Some(&Method::Invite) {
        return None;
    }
    let resp = Message::parse(Bytes::copy_from_slice(resp), Framing::Datagram).ok()?;
    if resp.status()? < 300 {
        return None;
    }
    Some(podpbx_sip::builder::ack_for(&req, &resp).to_vec())
}

fn send_udp(pbx: &Pbx, target: SocketAddr, data: &[u8], want: Want) -> Outcome {
    let before = counters(pbx);
    let peer = UdpPeer::new(target);
    peer.send(data);
    let quiet = match want {
        Final(_) => Duration::from_millis(1500),
        Reject | Silent => Duration::from_millis(400),
    };
    let responses = collect_udp(&peer, quiet);
    if let Some(ack) = responses.last().and_then(|r| ack_if_invite(data, r)) {
        peer.send(&ack);
    }
    // Give the counters of a silent drop time to move (the core runs on its own thread).
    std::thread::sleep(Duration::from_millis(30));
    let after = counters(pbx);
    Outcome {
        responses,
        delta: delta(before, after),
    }
}

/// One podpbx process per pass. Torture messages reuse branches (RFC 5118's five
/// `z9hG4bKas3-111` REGISTERs/OPTIONS, RFC 4475's `z9hG4bKkdjuw`...): to podpbx a second message
/// with the same top-Via branch, sent-by and method within Timer J is a retransmission of the
/// first (RFC 3261 §17.2.3), answered with the first one's response at the first one's
/// address. Such a message gets a fresh process instead of a rewritten branch.
struct Runner {
    pbx: Pbx,
    keys: HashSet<String>,
    restarts: usize,
}

impl Runner {
    fn new() -> Runner {
        Runner {
            pbx: Pbx::start(USERS),
            keys: HashSet::new(),
            restarts: 0,
        }
    }

    /// Starts a fresh process if `data`'s server transaction key was used on this one.
    fn fresh_for(&mut self, data: &[u8], failures: &mut Vec<String>) {
        let Some(key) = tx_key(data) else { return };
        if self.keys.insert(key.clone()) {
            return;
        }
        self.retire(failures);
        self.pbx = Pbx::start(USERS);
        self.keys.clear();
        self.keys.insert(key);
        self.restarts += 1;
    }

    /// Before a process is dropped: it must still answer OPTIONS on both families, run, and
    /// never have panicked.
    fn retire(&mut self, failures: &mut Vec<String>) {
        for target in [self.pbx.v4(), self.pbx.v6()] {
            let peer = UdpPeer::new(target);
            let req = request(
                "OPTIONS",
                "sip:pbx@localhost",
                peer.local(),
                "UDP",
                &format!("z9hG4bKafter{}", peer.local().port()),
                "",
            );
            peer.send(req.as_bytes());
            match peer.recv() {
                Some(r) if code_of(&r) == Some(200) => {}
                other => failures.push(format!(
                    "OPTIONS to {target} after the torture messages: {:?}",
                    other.map(|r| first_line(&r))
                )),
            }
        }
        if !self.pbx.alive() {
            failures.push(format!("podpbx exited:\n{}", self.pbx.log_text()));
        }
        if self.pbx.log_text().contains("panicked") {
            failures.push(format!("podpbx panicked:\n{}", self.pbx.log_text()));
        }
    }
}

/// The server transaction key podpbx would file a request under: top Via branch and sent-by,
/// method (ACK under INVITE). `None` when no transaction is created (responses, no Via).
fn tx_key(data: &[u8]) -> Option<String> {
    let m = Message::parse(Bytes::copy_from_slice(data), Framing::Datagram).ok()?;
    let method = match m.method()? {
        Method::Ack => Method::Invite,
        other => other.clone(),
    };
    let via = m.top_via().ok()?;
    Some(format!(
        "{:?}|{}|{:?}|{method}",
        via.branch(),
        via.host,
        via.port
    ))
}

/// Checks one outcome; returns a description for the table or an error.
fn judge(want: Want, o: &Outcome) -> Result<String, String> {
    let codes: Vec<u16> = o.responses.iter().filter_map(|r| code_of(r)).collect();
    if o.responses.len() != codes.len() {
        return Err(format!(
            "non-response datagram received: {:?}",
            o.responses
                .iter()
                .map(|r| first_line(r))
                .collect::<Vec<_>>()
        ));
    }
    if o.delta.refused != 0.0 {
        return Err(format!(
            "a send was refused (broadcast/multicast destination?): {:?}",
            o.delta
        ));
    }
    match want {
        Final(allowed) => {
            let Some(&last) = codes.last() else {
                return Err(format!("no answer (counters {:?})", o.delta));
            };
            if codes[..codes.len() - 1].iter().any(|&c| c != 100) {
                return Err(format!("provisional answers other than 100: {codes:?}"));
            }
            if !allowed.contains(&last) {
                return Err(format!(
                    "answered {last}, wanted one of {allowed:?}: {}",
                    first_line(o.responses.last().unwrap())
                ));
            }
            Ok(o.responses
                .iter()
                .map(|r| first_line(r))
                .collect::<Vec<_>>()
                .join(" / "))
        }
        Reject => match codes.as_slice() {
            [] if o.delta.dropped_malformed >= 1.0 => {
                Ok("dropped (podpbx_sip_dropped_malformed_total +1)".into())
            }
            [] => Err(format!(
                "silently ignored without counting it: {:?}",
                o.delta
            )),
            [c] if *c == 505 || *c == 400 && o.delta.bad_requests >= 1.0 => Ok(format!(
                "{} (bad_requests +{})",
                first_line(&o.responses[0]),
                o.delta.bad_requests
            )),
            _ => Err(format!(
                "invalid message answered {codes:?}: {:?}",
                o.responses
                    .iter()
                    .map(|r| first_line(r))
                    .collect::<Vec<_>>()
            )),
        },
        Silent => {
            if !codes.is_empty() {
                return Err(format!("a response was answered: {codes:?}"));
            }
            if o.delta.messages_out != 0.0 {
                return Err(format!(
                    "podpbx sent something for a response: {:?}",
                    o.delta
                ));
            }
            if o.delta.stray_responses + o.delta.dropped_malformed < 1.0 {
                return Err(format!("not counted as stray or malformed: {:?}", o.delta));
            }
            Ok(if o.delta.stray_responses >= 1.0 {
                "silent (stray_responses +1, nothing sent)".into()
            } else {
                "silent (dropped_malformed +1, nothing sent)".into()
            })
        }
    }
}

fn verdict_name(w: Want) -> &'static str {
    match w {
        Final(_) => "valid",
        Reject => "invalid",
        Silent => "response",
    }
}

#[test]
fn every_torture_message_over_udp_on_both_families_and_a_tcp_subset() {
    let dir = conformance_dir();
    assert!(
        dir.is_dir(),
        "conformance messages not found at {}",
        dir.display()
    );
    let cases = table();
    // The table must name every file exactly once.
    let mut on_disk: Vec<String> = Vec::new();
    for sub in ["rfc4475", "rfc5118"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            on_disk.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = cases.iter().map(|(d, f, _)| format!("{d}/{f}")).collect();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "the table lists every message file exactly once"
    );

    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut rewritten = 0;
    let mut restarts = 0;
    // Responses first, so no retransmission of an earlier answer can be mistaken for a send.
    let mut ordered = cases.clone();
    ordered.sort_by_key(|(_, _, w)| !matches!(w, Silent));
    for fam in ["udp4", "udp6"] {
        let mut run = Runner::new();
        for (sub, file, want) in &ordered {
            let raw = read(sub, file);
            let (data, changed) = if matches!(want, Silent) {
                (raw.clone(), false)
            } else {
                with_rport(&raw)
            };
            rewritten += usize::from(changed && fam == "udp4");
            run.fresh_for(&data, &mut failures);
            let target = if fam == "udp4" {
                run.pbx.v4()
            } else {
                run.pbx.v6()
            };
            let o = send_udp(&run.pbx, target, &data, *want);
            let cell = match judge(*want, &o) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{sub}/{file} over {fam}: {e}"));
                    format!("FAIL: {e}")
                }
            };
            rows.entry(format!("{sub}/{file}"))
                .or_default()
                .push(format!("{fam}: {cell}"));
        }
        restarts += run.restarts;
        run.retire(&mut failures);
    }

    // TCP: a subset on both families (no rport needed: answers go back on the connection).
    let tcp_cases = [
        ("rfc4475", "lwsdisp.dat"),
        ("rfc4475", "semiuri.dat"),
        ("rfc4475", "bext01.dat"),
        ("rfc4475", "unkscm.dat"),
        ("rfc4475", "invut.dat"),
        ("rfc4475", "regaut01.dat"),
        ("rfc4475", "mismatch01.dat"),
        ("rfc4475", "badvers.dat"),
        ("rfc4475", "zeromf.dat"),
        ("rfc4475", "wsinv.dat"),
        ("rfc4475", "esc01.dat"),
        ("rfc4475", "mcl01.dat"),
        ("rfc5118", "ipv6-good.dat"),
        ("rfc5118", "ipv6-correct-abnf-2-colons.dat"),
    ];
    for fam in ["tcp4", "tcp6"] {
        let mut run = Runner::new();
        for (sub, file) in tcp_cases {
            let want = cases
                .iter()
                .find(|(d, f, _)| *d == sub && *f == file)
                .unwrap()
                .2;
            let data = read(sub, file);
            run.fresh_for(&data, &mut failures);
            let target = if fam == "tcp4" {
                run.pbx.v4()
            } else {
                run.pbx.v6()
            };
            let before = counters(&run.pbx);
            let mut s = tcp_connect(target);
            tcp_send(&mut s, &data);
            let mut responses = Vec::new();
            while let Some(r) = tcp_read_message(&mut s) {
                let fin = code_of(&r).is_some_and(|c| c >= 200);
                responses.push(r);
                if fin {
                    break;
                }
            }
            if let Some(ack) = responses.last().and_then(|r| ack_if_invite(&data, r)) {
                tcp_send(&mut s, &ack);
            }
            std::thread::sleep(Duration::from_millis(30));
            let o = Outcome {
                responses,
                delta: delta(before, counters(&run.pbx)),
            };
            let cell = match judge(want, &o) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{sub}/{file} over {fam}: {e}"));
                    format!("FAIL: {e}")
                }
            };
            rows.entry(format!("{sub}/{file}"))
                .or_default()
                .push(format!("{fam}: {cell}"));
        }
        restarts += run.restarts;
        run.retire(&mut failures);
    }

    let mut table = String::new();
    let _ = writeln!(table, "\n{:<46} {:<9} what podpbx did", "file", "verdict");
    for (sub, file, want) in &cases {
        let key = format!("{sub}/{file}");
        for (i, cell) in rows.get(&key).into_iter().flatten().enumerate() {
            let (k, v) = if i == 0 {
                (key.as_str(), verdict_name(*want))
            } else {
                ("", "")
            };
            let _ = writeln!(table, "{k:<46} {v:<9} {cell}");
        }
    }
    let _ = writeln!(
        table,
        "{} messages x 2 families over UDP ({rewritten} with ';rport' added to the top Via), {} over TCP x 2 \
         families; {restarts} fresh processes for messages that share a transaction key; {} failures",
        cases.len(),
        tcp_cases.len(),
        failures.len()
    );
    println!("{table}");
    // Also kept as a file, since `cargo test` hides the output of passing tests.
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance_binary.txt");
    let _ = std::fs::write(&report, &table);
    println!("(table written to {})", report.display());
    assert!(
        failures.is_empty(),
        "{table}\nfailures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn rport_is_added_to_the_first_via_value_only() {
    let (m, c) = with_rport(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h1;branch=z9hG4bK1 , SIP/2.0/UDP h2\r\nv: SIP/2.0/UDP h3\r\n\r\n");
    assert!(c);
    assert_eq!(
        String::from_utf8(m).unwrap(),
        "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h1;branch=z9hG4bK1;rport , SIP/2.0/UDP h2\r\nv: SIP/2.0/UDP h3\r\n\r\n"
    );
    let (m, c) = with_rport(b"INVITE sip:a SIP/2.0\r\nTo: <sip:x>\r\nv: SIP/2.0/UDP h1\r\n  ;branch=x\r\nFrom: <sip:y>\r\n\r\nbody, with comma");
    assert!(c);
    assert_eq!(
        String::from_utf8(m).unwrap(),
        "INVITE sip:a SIP/2.0\r\nTo: <sip:x>\r\nv: SIP/2.0/UDP h1\r\n  ;branch=x;rport\r\nFrom: <sip:y>\r\n\r\nbody, with comma"
    );
    let (_, c) = with_rport(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h1;rport;branch=z\r\n\r\n");
    assert!(!c, "already there");
}
