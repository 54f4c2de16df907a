//! The call machine in virtual time, with a fake relay and directory.

use crate::*;
use podpbx_config::Config;
use podpbx_sip::transaction::{Limits, RequestDisposition, TransactionLayer};
use podpbx_sip::{Framing, Message, ResponseBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Default)]
struct MediaLog {
    next: u64,
    families: HashMap<MediaId, (Family, Family)>,
    /// (session, leg, SDP RTP address, signalling source IP) per `set_remote`.
    remotes: Vec<(MediaId, MediaLeg, SocketAddr, Option<IpAddr>)>,
    holds: Vec<(MediaId, MediaLeg, bool)>,
    dtmf: Vec<(MediaId, MediaLeg, char)>,
    released: Vec<MediaId>,
}

#[derive(Clone, Default)]
struct FakeMedia(Arc<Mutex<MediaLog>>);

impl MediaPort for FakeMedia {
    fn allocate(&mut self, a: Family, b: Family) -> Result<MediaId, String> {
        let mut m = self.0.lock().unwrap();
        m.next += 1;
        let id = m.next;
        m.families.insert(id, (a, b));
        Ok(id)
    }
    fn local(&self, id: MediaId, leg: MediaLeg) -> Option<SocketAddr> {
        let m = self.0.lock().unwrap();
        let (a, b) = *m.families.get(&id)?;
        let fam = if leg == MediaLeg::A { a } else { b };
        let port = 20000 + (id as u16) * 4 + if leg == MediaLeg::A { 0 } else { 2 };
        Some(match fam {
            Family::V4 => SocketAddr::new("198.51.100.10".parse().unwrap(), port),
            Family::V6 => SocketAddr::new("2001:db8::10".parse().unwrap(), port),
        })
    }
    fn set_remote(&mut self, id: MediaId, leg: MediaLeg, remote: RemoteMedia) {
        let r = (id, leg, remote.rtp, remote.signalling);
        self.0.lock().unwrap().remotes.push(r);
    }
    fn set_hold(&mut self, id: MediaId, leg: MediaLeg, hold: bool) {
        self.0.lock().unwrap().holds.push((id, leg, hold));
    }
    fn inject_dtmf(&mut self, id: MediaId, leg: MediaLeg, digit: char, _d: Duration) -> bool {
        self.0.lock().unwrap().dtmf.push((id, leg, digit));
        true
    }
    fn stats(&self, _id: MediaId, _leg: MediaLeg) -> LegStats {
        LegStats {
            rtp_packets: 5,
            ..Default::default()
        }
    }
    fn release(&mut self, id: MediaId) {
        self.0.lock().unwrap().released.push(id);
    }
}

#[derive(Default)]
struct FakeDir(HashMap<String, Vec<ContactTarget>>);

impl Directory for FakeDir {
    fn contacts(&self, user: &str, _now: Instant) -> Vec<ContactTarget> {
        self.0.get(user).cloned().unwrap_or_default()
    }
    fn local_addr(&self, _t: Transport, peer: IpAddr) -> Option<SocketAddr> {
        Some(if peer.is_ipv4() {
            "198.51.100.10:5060".parse().unwrap()
        } else {
            "[2001:db8::1]:5060".parse().unwrap()
        })
    }
}

const CFG: &str = r#"
[sip]
ipv6 = "2001:db8::1"
ipv4 = "198.51.100.10"
[[users]]
name = "101"
password = "a"
[[users]]
name = "102"
password = "b"
[[users]]
name = "103"
password = "c"
[[users]]
name = "104"
password = "d"
dtmf = "rfc4733"
[[users]]
name = "190"
identify_by_source = true
allow_from = ["198.51.100.50/32"]
[[groups]]
name = "all"
members = ["102", "103", "104"]
[[dialplan]]
name = "door"
match = { caller = "190" }
action = "ring"
targets = ["all"]
timeout_secs = 20
fallback = [{ action = "reject", status = 480 }]
[[dialplan]]
name = "group"
match = { number = "600", from = "local" }
action = "ring"
targets = ["all"]
timeout_secs = 20
[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 15
"#;

const SDP_A: &str = "v=0\r\no=a 1 1 IN IP6 2001:db8:1::a\r\ns=-\r\nc=IN IP6 2001:db8:1::a\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const SDP_B: &str = "v=0\r\no=b 7 7 IN IP6 2001:db8:1::b\r\ns=-\r\nc=IN IP6 2001:db8:1::b\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";

struct H {
    b: B2bua,
    layer: TransactionLayer,
    dir: FakeDir,
    media: FakeMedia,
    now: Instant,
    outs: Vec<Output>,
    a_flow: Flow,
}

fn flow(remote: &str, local: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        conn: 0,
    }
}

fn parse(data: &Bytes) -> Message {
    Message::parse(data.clone(), Framing::Datagram).expect("parse")
}

impl H {
    fn new() -> H {
        H::with_config(CFG)
    }

    fn with_config(text: &str) -> H {
        let cfg = Arc::new(Config::from_str(text, "t.toml").expect("config"));
        let media = FakeMedia::default();
        let b = B2bua::new(
            cfg,
            Settings {
                timers: Timers::default(),
                ..Default::default()
            },
            Box::new(media.clone()),
            podpbx_sip::IdGen::new([3; 16]),
        );
        let mut dir = FakeDir::default();
        for (i, u) in ["102", "103", "104"].iter().enumerate() {
            dir.0.insert(
                u.to_string(),
                vec![ContactTarget {
                    uri: format!("sip:{u}@[2001:db8:1::{}]:5060", 0x20 + i),
                    flow: flow(
                        &format!("[2001:db8:1::{}]:5060", 0x20 + i),
                        "[2001:db8::1]:5060",
                    ),
                }],
            );
        }
        H {
            b,
            layer: TransactionLayer::new(Timers::default(), Limits::default()),
            dir,
            media,
            now: Instant::now(),
            outs: Vec::new(),
            a_flow: flow("[2001:db8:1::a]:5062", "[2001:db8::1]:5060"),
        }
    }

    fn server_tx(&mut self, msg: &Message, f: Flow) -> podpbx_sip::transaction::ServerTxId {
        match self
            .layer
            .on_request(self.now, msg, msg.buf.clone(), f.peer())
        {
            RequestDisposition::New(id) => id,
            RequestDisposition::Cancel { tx, .. } => tx,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut v = Vec::new();
        while let Some(o) = self.b.poll_output() {
            v.push(o);
        }
        self.outs.extend(v.clone());
        v
    }

    fn invite(&mut self, number: &str, caller: Caller, body: Option<&str>) -> Vec<Output> {
        let body = body.unwrap_or("");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa1x{n};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:101@pbx>;tag=atag\r\nTo: <sip:{number}@pbx>\r\nCall-ID: acall@a\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:101@[2001:db8:1::a]:5062>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let msg = parse(&Bytes::from(text));
        let tx = self.server_tx(&msg, self.a_flow);
        self.b.handle_invite(
            self.now,
            SystemTime::now(),
            Received {
                tx,
                msg: &msg,
                flow: self.a_flow,
            },
            caller,
            &self.dir,
        );
        self.drain()
    }

    /// A new INVITE given as text from the caller's flow, routed with `dir` (default: the
    /// harness directory).
    fn invite_text(
        &mut self,
        text: &str,
        caller: Caller,
        dir: Option<&dyn Directory>,
    ) -> Vec<Output> {
        let msg = parse(&Bytes::from(text.to_string()));
        let tx = self.server_tx(&msg, self.a_flow);
        let invite = Received {
            tx,
            msg: &msg,
            flow: self.a_flow,
        };
        let wall = SystemTime::now();
        match dir {
            Some(d) => self.b.handle_invite(self.now, wall, invite, caller, d),
            None => self
                .b
                .handle_invite(self.now, wall, invite, caller, &self.dir),
        }
        self.drain()
    }

    /// Answers a request sent by the b2bua with `code` (To tag added), optionally with SDP.
    fn answer(
        &mut self,
        id: ReqId,
        req: &Bytes,
        code: u16,
        tag: &str,
        sdp: Option<&str>,
    ) -> Vec<Output> {
        let req = parse(req);
        let mut rb = ResponseBuilder::new(&req, code, "X", None)
            .to_tag(tag)
            .header("Contact", "<sip:b@[2001:db8:1::20]:5060>");
        if let Some(s) = sdp {
            rb = rb.body("application/sdp", s.as_bytes());
        }
        let resp = parse(&rb.build());
        self.b.handle_response(self.now, id, &resp, &self.dir);
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<Output> {
        let end = self.now + d;
        while let Some(t) = self.b.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.b.handle_timeout(self.now, &self.dir);
        }
        self.now = end;
        self.drain()
    }

    fn in_dialog(&mut self, text: String, f: Flow) -> Vec<Output> {
        let msg = parse(&Bytes::from(text));
        let tx = self.server_tx(&msg, f);
        assert!(
            self.b.handle_in_dialog(self.now, tx, &msg, f, &self.dir),
            "dialog found"
        );
        self.drain()
    }
}

fn requests(outs: &[Output], method: &str) -> Vec<(ReqId, Bytes)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Request {
                id,
                method: m,
                data,
                ..
            } if m.as_str() == method => Some((*id, data.clone())),
            _ => None,
        })
        .collect()
}

fn responses(outs: &[Output]) -> Vec<u16> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Respond { status, .. } => Some(status.code()),
            _ => None,
        })
        .collect()
}

fn cdr(outs: &[Output]) -> Option<Cdr> {
    outs.iter().find_map(|o| match o {
        Output::Cdr(c) => Some((**c).clone()),
        _ => None,
    })
}

fn stateless_acks(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, Output::Stateless { data, .. } if data.starts_with(b"ACK ")))
        .count()
}

fn header_of(data: &Bytes, name: &str) -> String {
    let m = parse(data);
    m.other_header(name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

fn text(data: &Bytes) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Basic call: 100 at once, 180 relayed, 200 with our SDP, ACK to B, BYE from A ends both.
#[test]
fn basic_call_and_bye_from_caller() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    assert_eq!(responses(&outs), vec![100]);
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1);
    let (id, data) = inv[0].clone();
    let t = text(&data);
    assert!(!t.contains("acall@a"), "B leg has its own Call-ID:\n{t}");
    assert!(
        !t.contains("2001:db8:1::a"),
        "caller's addresses never reach the callee:\n{t}"
    );
    assert!(
        t.contains("c=IN IP6 2001:db8::10"),
        "SDP anchored at the relay:\n{t}"
    );
    let outs = h.answer(id, &data, 180, "btag", None);
    assert_eq!(responses(&outs), vec![180]);
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(responses(&outs), vec![200]);
    assert_eq!(stateless_acks(&outs), 1, "B's 2xx is ACKed by us");
    let ok = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(text(data)),
            _ => None,
        })
        .unwrap();
    assert!(
        !ok.contains("2001:db8:1::b"),
        "callee's media address hidden:\n{ok}"
    );
    assert!(ok.contains("o=podpbx "), "our own origin:\n{ok}");
    // The relay learns each leg's SDP address and signalling source IP (issue #11: media is
    // accepted from those IPs only).
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert!(
        remotes.iter().any(|r| r.1 == MediaLeg::A
            && r.2 == "[2001:db8:1::a]:4000".parse().unwrap()
            && r.3 == ip("2001:db8:1::a")),
        "{remotes:?}"
    );
    assert!(
        remotes.iter().any(|r| r.1 == MediaLeg::B
            && r.2 == "[2001:db8:1::b]:5000".parse().unwrap()
            && r.3 == ip("2001:db8:1::32")),
        "{remotes:?}"
    );
    // The 2xx is retransmitted until the ACK.
    let outs = h.advance(Duration::from_millis(600));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Stateless { data, .. } if data.starts_with(b"SIP/2.0 200"))));
    let to_tag = parse(&Bytes::from(ok.clone()))
        .to_hdr()
        .unwrap()
        .tag()
        .unwrap();
    let to_tag = String::from_utf8_lossy(&to_tag).into_owned();
    let ack = format!("ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa2\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={to_tag}\r\nCall-ID: acall@a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    let outs = h.advance(Duration::from_secs(5));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Stateless { .. })),
        "no retransmission after ACK"
    );
    let bye = format!("BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa3\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={to_tag}\r\nCall-ID: acall@a\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    let outs = h.in_dialog(bye, h.a_flow);
    assert_eq!(responses(&outs), vec![200]);
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1, "BYE on the B leg");
    assert!(text(&byes[0].1).contains(";tag=btag"));
    let outs = h.answer(byes[0].0, &byes[0].1, 200, "btag", None);
    let c = cdr(&outs).expect("CDR at the end");
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(c.hangup_by.as_deref(), Some("caller"));
    assert_eq!(c.answered_by.as_deref(), Some("102"));
    assert!(c.answer.is_some());
    assert_eq!(c.legs.len(), 2);
    assert_eq!(h.b.active_calls(), 0);
    assert!(
        !h.media.0.lock().unwrap().released.is_empty(),
        "media released"
    );
}

#[test]
fn busy_maps_to_486_and_unknown_to_404() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(id, &data, 486, "b", None);
    assert_eq!(responses(&outs), vec![486]);
    assert_eq!(cdr(&outs).unwrap().disposition, Disposition::Busy);

    let mut h = H::new();
    let outs = h.invite("199", Caller::User("101".into()), Some(SDP_A));
    assert_eq!(responses(&outs), vec![100, 404]);
    let outs = h.invite("777", Caller::User("101".into()), Some(SDP_A));
    assert_eq!(responses(&outs), vec![100, 404], "no rule");
}

/// Starts call `n` of a burst from 101 to 102 (its own Call-ID); returns the B leg's INVITE.
fn burst_call(h: &mut H, n: usize) -> (ReqId, Bytes) {
    let outs = h.invite_text(
        &format!(
            "INVITE sip:102@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKburst{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:101@pbx>;tag=a{n}\r\nTo: <sip:102@pbx>\r\n\
             Call-ID: burst{n}@a\r\nCSeq: 1 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
            SDP_A.len()
        ),
        Caller::User("101".into()),
        None,
    );
    requests(&outs, "INVITE")[0].clone()
}

/// A burst of calls grows the call tables; once the calls are over, they hold exactly what the
/// calls still ringing hold (a call's end removes its own entries, found through its index,
/// not by a pass over every table), give the room back (`B2bua::shrink`), and calls go on.
#[test]
fn call_tables_give_back_the_room_a_burst_left() {
    let cfg = format!("{CFG}[calls]\nmax_concurrent = 0\n");
    let mut h = H::with_config(&cfg);
    let legs: Vec<(ReqId, Bytes)> = (0..3000).map(|n| burst_call(&mut h, n)).collect();
    assert_eq!(h.b.active_calls(), 3000);
    let peak = h.b.table_room();
    assert!(!h.b.shrink(h.now), "in use: nothing to give back");
    // All but the last ten end (busy); those ten still ring.
    for (id, data) in &legs[..2990] {
        let outs = h.answer(*id, data, 486, "b", None);
        assert_eq!(responses(&outs), vec![486]);
    }
    assert_eq!(h.b.active_calls(), 10);
    let mut ten = H::with_config(&cfg);
    for n in 0..10 {
        burst_call(&mut ten, n);
    }
    assert_eq!(
        h.b.entry_counts(),
        ten.b.entry_counts(),
        "requests, dialogs, INVITE transactions, timers, indexes: as for ten ringing calls"
    );
    assert!(h.b.shrink(h.now));
    let room = h.b.table_room();
    assert!(room * 4 < peak, "room for {room} entries left of {peak}");
    for (id, data) in &legs[2990..] {
        h.answer(*id, data, 486, "b", None);
    }
    assert_eq!(h.b.active_calls(), 0);
    assert_eq!(
        h.b.entry_counts(),
        [0; 5],
        "a finished call leaves nothing behind"
    );
    // And calls work as before.
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(id, &data, 486, "b", None);
    assert_eq!(responses(&outs), vec![486]);
    assert_eq!(cdr(&outs).unwrap().disposition, Disposition::Busy);
}

#[test]
fn no_answer_cancels_and_gives_480() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "b", None);
    let outs = h.advance(Duration::from_secs(16));
    assert_eq!(responses(&outs), vec![480]);
    let cancels = requests(&outs, "CANCEL");
    assert_eq!(cancels.len(), 1);
    let outs = h.answer(id, &data, 487, "b", None);
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.disposition, Disposition::NoAnswer);
}

#[test]
fn caller_cancel_cancels_every_fork() {
    let mut h = H::new();
    let outs = h.invite("600", Caller::User("101".into()), Some(SDP_A));
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 3);
    // Two forks rang, one did not answer anything yet.
    h.answer(invs[0].0, &invs[0].1, 180, "b0", None);
    h.answer(invs[1].0, &invs[1].1, 180, "b1", None);
    let tx = *h.b.by_invite_tx.keys().next().unwrap();
    h.b.handle_cancel(h.now, tx);
    let outs = h.drain();
    assert_eq!(responses(&outs), vec![487]);
    assert_eq!(
        requests(&outs, "CANCEL").len(),
        2,
        "CANCEL only after a provisional"
    );
    // The third one rings late: it gets its CANCEL then.
    let outs = h.answer(invs[2].0, &invs[2].1, 180, "b2", None);
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    for (i, (id, data)) in invs.iter().enumerate() {
        h.answer(*id, data, 487, &format!("b{i}"), None);
    }
    let c = cdr(&h.outs).expect("cdr");
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(h.b.active_calls(), 0);
}

#[test]
fn fork_of_three_first_answer_wins_others_cancelled_crossing_2xx_is_acked_and_byed() {
    let mut h = H::new();
    let outs = h.invite("600", Caller::User("101".into()), Some(SDP_A));
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 3);
    for (i, (id, data)) in invs.iter().enumerate() {
        h.answer(*id, data, 180, &format!("b{i}"), None);
    }
    let outs = h.answer(invs[1].0, &invs[1].1, 200, "b1", Some(SDP_B));
    assert!(responses(&outs).contains(&200));
    assert_eq!(
        requests(&outs, "CANCEL").len(),
        2,
        "the other forks are cancelled"
    );
    // Fork 2 answers anyway (crossing the CANCEL): ACK then BYE.
    let outs = h.answer(invs[2].0, &invs[2].1, 200, "b2", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 1);
    assert_eq!(requests(&outs, "BYE").len(), 1);
    assert!(!responses(&outs).contains(&200), "A sees one answer only");
    h.answer(invs[0].0, &invs[0].1, 487, "b0", None);
    assert_eq!(h.b.active_calls(), 1);
}

#[test]
fn bye_from_callee_ends_caller_leg() {
    let mut h = H::new();
    let (bflow, bye) = callee_answered(&mut h);
    let outs = h.in_dialog(bye("z9hG4bKb9", 5), bflow);
    assert_eq!(responses(&outs), vec![200]);
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1);
    let t = text(&byes[0].1);
    assert!(
        t.contains("Call-ID: acall@a") && t.starts_with("BYE sip:101@[2001:db8:1::a]:5062"),
        "BYE to the caller's Contact:\n{t}"
    );
    let outs = h.answer(byes[0].0, &byes[0].1, 200, "x", None);
    assert_eq!(cdr(&outs).unwrap().hangup_by.as_deref(), Some("callee"));
}

/// A call from 101 answered by 102, and the callee's flow with a builder of its BYEs (branch,
/// CSeq).
fn callee_answered(h: &mut H) -> (Flow, impl Fn(&str, u32) -> String) {
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 200, "btag", Some(SDP_B));
    let bflow = flow("[2001:db8:1::20]:5060", "[2001:db8::1]:5060");
    let inv = parse(&data);
    let call_id = String::from_utf8_lossy(&inv.call_id().unwrap()).into_owned();
    let from_tag = String::from_utf8_lossy(&inv.from_hdr().unwrap().tag().unwrap()).into_owned();
    let bye = move |branch: &str, cseq: u32| {
        format!("BYE sip:podpbx@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::20]:5060;branch={branch}\r\nFrom: <sip:102@pbx>;tag=btag\r\nTo: <sip:101@pbx>;tag={from_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n")
    };
    (bflow, bye)
}

/// A BYE that comes again after its transaction is gone (evicted from a full table under load,
/// while the call still waits for the other leg's BYE answer) gets `200` again, as its
/// transaction would have answered, not `481`.
#[test]
fn a_repeated_bye_of_an_ended_leg_gets_200_again() {
    let mut h = H::new();
    let (bflow, bye) = callee_answered(&mut h);
    let outs = h.in_dialog(bye("z9hG4bKb9", 5), bflow);
    assert_eq!(responses(&outs), vec![200]);
    let to_caller = requests(&outs, "BYE");
    assert_eq!(to_caller.len(), 1, "the caller's leg is being hung up");
    // The same BYE again, as a new transaction (this harness's transaction layer still holds
    // the first, so the copy carries another branch): the call is still ending.
    let outs = h.in_dialog(bye("z9hG4bKb9again", 5), bflow);
    assert_eq!(
        responses(&outs),
        vec![200],
        "a repeated BYE is answered as the first was"
    );
    assert!(requests(&outs, "BYE").is_empty(), "and changes nothing");
    // Any other request on the ended leg still gets 481.
    let outs = h.in_dialog(bye("z9hG4bKb10", 6), bflow);
    assert_eq!(responses(&outs), vec![481]);
    let outs = h.answer(to_caller[0].0, &to_caller[0].1, 200, "x", None);
    assert_eq!(cdr(&outs).unwrap().hangup_by.as_deref(), Some("callee"));
}

/// A copy of the BYE that ended a call, read after the call is gone (its own transaction was
/// evicted from a full table, the copy queued behind the original): `200` as the transaction
/// would have answered, for 64·T1; another CSeq, another source or a later copy still find no
/// dialog (the shell answers `481`).
#[test]
fn a_late_copy_of_the_bye_that_ended_a_finished_call_gets_200() {
    let mut h = H::new();
    let (bflow, bye_text) = callee_answered(&mut h);
    let bye = |branch: &str, cseq: u32| parse(&Bytes::from(bye_text(branch, cseq)));
    let first = bye("z9hG4bKb9", 5);
    let tx = h.server_tx(&first, bflow);
    assert!(h.b.handle_in_dialog(h.now, tx, &first, bflow, &h.dir));
    let outs = h.drain();
    let to_caller = requests(&outs, "BYE");
    let outs = h.answer(to_caller[0].0, &to_caller[0].1, 200, "x", None);
    assert!(cdr(&outs).is_some(), "the call is finished");
    assert_eq!(h.b.active_calls(), 0);
    assert_eq!(h.b.ended_dialogs().entries, 1);

    // The copy (a new transaction: the first one is gone).
    h.now += Duration::from_secs(2);
    let copy = bye("z9hG4bKb9copy", 5);
    let tx = h.server_tx(&copy, bflow);
    assert!(
        h.b.handle_in_dialog(h.now, tx, &copy, bflow, &h.dir),
        "a copy of the BYE that ended the call is answered, not 481"
    );
    assert_eq!(responses(&h.drain()), vec![200]);

    // Not a copy: another CSeq, another source, or after Timer J.
    let other = bye("z9hG4bKb10", 6);
    let tx = h.server_tx(&other, bflow);
    assert!(!h.b.handle_in_dialog(h.now, tx, &other, bflow, &h.dir));
    let elsewhere = flow("[2001:db8:1::66]:5060", "[2001:db8::1]:5060");
    let forged = bye("z9hG4bKb11", 5);
    let tx = h.server_tx(&forged, elsewhere);
    assert!(!h.b.handle_in_dialog(h.now, tx, &forged, elsewhere, &h.dir));
    h.now += Duration::from_secs(31);
    let late = bye("z9hG4bKb12", 5);
    let tx = h.server_tx(&late, bflow);
    assert!(!h.b.handle_in_dialog(h.now, tx, &late, bflow, &h.dir));
    assert!(
        h.drain().is_empty(),
        "nothing sent for what the shell answers 481"
    );
    h.b.shrink(h.now);
    assert_eq!(h.b.ended_dialogs().entries, 0, "forgotten after 64·T1");
}

fn answered_call(h: &mut H) -> (String, Bytes) {
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    let ok = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    let tag = String::from_utf8_lossy(&parse(&ok).to_hdr().unwrap().tag().unwrap()).into_owned();
    let ack = format!("ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa2\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    h.drain();
    (tag, data)
}

#[test]
fn reinvite_hold_is_relayed_with_sdp_rewrite() {
    let mut h = H::new();
    let (tag, _) = answered_call(&mut h);
    let hold = SDP_A.replace("a=rtpmap:101", "a=sendonly\r\na=rtpmap:101");
    let re = format!("INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa5\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 2 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}", hold.len());
    let outs = h.in_dialog(re, h.a_flow);
    assert_eq!(responses(&outs), vec![100]);
    let re_b = requests(&outs, "INVITE");
    assert_eq!(re_b.len(), 1);
    let t = text(&re_b[0].1);
    assert!(
        t.contains("a=sendonly") && t.contains("CSeq: 2 INVITE") && t.contains(";tag=btag"),
        "{t}"
    );
    assert!(
        h.media
            .0
            .lock()
            .unwrap()
            .holds
            .iter()
            .any(|(_, _, held)| *held),
        "relay told about the hold"
    );
    let answer = SDP_B.replace(
        "m=audio 5000 RTP/AVP 0\r\n",
        "m=audio 5000 RTP/AVP 0\r\na=recvonly\r\n",
    );
    let outs = h.answer(re_b[0].0, &re_b[0].1, 200, "btag", Some(&answer));
    assert_eq!(responses(&outs), vec![200]);
    assert_eq!(stateless_acks(&outs), 1, "B's re-INVITE 2xx ACKed");
    let ok = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(text(data)),
            _ => None,
        })
        .unwrap();
    assert!(
        ok.contains("a=recvonly") && ok.contains("o=podpbx") && ok.contains(" 2 IN IP6"),
        "answer rewritten, origin version bumped:\n{ok}"
    );
}

#[test]
fn info_dtmf_becomes_rfc4733_for_rfc4733_users_else_relayed() {
    let mut h = H::new();
    let (tag, _) = answered_call(&mut h);
    let info = |cseq: u32| {
        format!("INFO sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKi{cseq}\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: {cseq} INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n")
    };
    // 102 is `auto` and its SDP has no telephone-event: the INFO goes across.
    let outs = h.in_dialog(info(3), h.a_flow);
    assert_eq!(requests(&outs, "INFO").len(), 1);
    assert!(h.media.0.lock().unwrap().dtmf.is_empty());
    // Callee 104 wants RFC 4733.
    let mut h = H::new();
    let outs = h.invite("104", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    let ok = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    let tag = String::from_utf8_lossy(&parse(&ok).to_hdr().unwrap().tag().unwrap()).into_owned();
    let msg = format!("INFO sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKi9\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:104@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 3 INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n");
    let outs = h.in_dialog(msg, h.a_flow);
    assert_eq!(responses(&outs), vec![200]);
    assert!(requests(&outs, "INFO").is_empty());
    assert_eq!(h.media.0.lock().unwrap().dtmf.len(), 1);
    assert_eq!(h.media.0.lock().unwrap().dtmf[0].1, MediaLeg::B);
}

#[test]
fn refer_blind_transfer_notifies_and_byes_the_transferor() {
    let mut h = H::new();
    let (_tag, data) = answered_call(&mut h);
    // The callee (102) transfers the caller to 103.
    let inv = parse(&data);
    let call_id = String::from_utf8_lossy(&inv.call_id().unwrap()).into_owned();
    let from_tag = String::from_utf8_lossy(&inv.from_hdr().unwrap().tag().unwrap()).into_owned();
    let bflow = flow("[2001:db8:1::20]:5060", "[2001:db8::1]:5060");
    let refer = format!("REFER sip:podpbx@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::20]:5060;branch=z9hG4bKr1\r\nFrom: <sip:102@pbx>;tag=btag\r\nTo: <sip:101@pbx>;tag={from_tag}\r\nCall-ID: {call_id}\r\nCSeq: 6 REFER\r\nRefer-To: <sip:103@pbx>\r\nContact: <sip:102@[2001:db8:1::20]:5060>\r\nContent-Length: 0\r\n\r\n");
    let outs = h.in_dialog(refer, bflow);
    assert_eq!(responses(&outs), vec![202]);
    let notifies = requests(&outs, "NOTIFY");
    assert_eq!(notifies.len(), 1);
    assert!(
        text(&notifies[0].1).contains("SIP/2.0 100 Trying")
            && header_of(&notifies[0].1, "Event") == "refer"
    );
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 1, "the transfer target rings");
    let t = text(&invs[0].1);
    assert!(
        t.contains("sip:103@") && t.contains("From: <sip:101@"),
        "target sees the transferee as caller:\n{t}"
    );
    let outs = h.answer(invs[0].0, &invs[0].1, 200, "ctag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 1);
    let notifies = requests(&outs, "NOTIFY");
    assert!(text(&notifies[0].1).contains("SIP/2.0 200 OK"));
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1);
    assert!(text(&byes[0].1).contains(&call_id), "BYE to the transferor");
    assert_eq!(h.b.active_calls(), 1, "caller and target stay connected");
}

#[test]
fn doorbell_ipv4_rings_ipv6_group_with_family_specific_anchors() {
    let mut h = H::new();
    h.a_flow = flow("198.51.100.50:5060", "198.51.100.10:5060");
    let text_inv = "INVITE sip:1@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bKd1\r\nFrom: <sip:190@pbx>;tag=d\r\nTo: <sip:1@pbx>\r\nCall-ID: door@d\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let msg = parse(&Bytes::from(text_inv));
    assert_eq!(h.b.identify(&msg, &h.a_flow), Identity::User("190".into()));
    let sdp4 = "v=0\r\no=d 1 1 IN IP4 198.51.100.50\r\ns=-\r\nc=IN IP4 198.51.100.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let body = format!("INVITE sip:1@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bKd2\r\nFrom: <sip:190@pbx>;tag=d\r\nTo: <sip:1@pbx>\r\nCall-ID: door2@d\r\nCSeq: 1 INVITE\r\nContact: <sip:190@198.51.100.50>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp4}", sdp4.len());
    let outs = h.invite_text(&body, Caller::User("190".into()), None);
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 3, "all phones ring");
    assert!(
        text(&invs[0].1).contains("c=IN IP6"),
        "IPv6 phones get IPv6 SDP"
    );
    let outs = h.answer(invs[0].0, &invs[0].1, 200, "p", Some(SDP_B));
    let ok = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(text(data)),
            _ => None,
        })
        .unwrap();
    assert!(
        ok.contains("c=IN IP4 198.51.100.10") && ok.contains("IN IP4 198.51.100.10"),
        "IPv4 answer to the doorbell:\n{ok}"
    );
}

#[test]
fn limits_max_concurrent_and_max_duration() {
    let cfg = format!("{CFG}\n[calls]\nmax_concurrent = 1\nmax_duration_secs = 60\n");
    let mut h = H::new();
    h.b.set_config(Arc::new(Config::from_str(&cfg, "t.toml").unwrap()));
    let (_tag, _) = answered_call(&mut h);
    let text2 = String::from("INVITE sip:103@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKz\r\nFrom: <sip:101@pbx>;tag=z\r\nTo: <sip:103@pbx>\r\nCall-ID: second@a\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    let outs = h.invite_text(&text2, Caller::User("101".into()), None);
    assert_eq!(responses(&outs), vec![100, 503]);
    let outs = h.advance(Duration::from_secs(61));
    assert_eq!(
        requests(&outs, "BYE").len(),
        2,
        "max duration ends both legs"
    );
}

struct TrunkDir(FakeDir);

impl Directory for TrunkDir {
    fn contacts(&self, user: &str, now: Instant) -> Vec<ContactTarget> {
        self.0.contacts(user, now)
    }
    fn local_addr(&self, t: Transport, peer: IpAddr) -> Option<SocketAddr> {
        self.0.local_addr(t, peer)
    }
    fn trunk_destination(&self, _name: &str) -> Option<SocketAddr> {
        Some("[2001:db8:ffff::1]:5060".parse().unwrap())
    }
}

#[test]
fn trunk_call_answers_407_with_credentials_and_rewrites_the_number() {
    let cfg = format!(
        "{CFG}\n[[trunks]]\nname = \"prov\"\nhost = \"2001:db8:ffff::1\"\nusername = \"4930\"\npassword = \"secret\"\ncaller_id = \"+4930123\"\n\
         [[dialplan]]\nname = \"out\"\nmatch = {{ prefix = \"0\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"prov\"\nstrip = 1\nprepend = \"+49\"\n"
    );
    let mut h = H::new();
    h.b.set_config(Arc::new(Config::from_str(&cfg, "t.toml").expect("config")));
    let dir = TrunkDir(std::mem::take(&mut h.dir));
    let inv_text = format!(
        "INVITE sip:030555@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKt1;rport\r\nFrom: <sip:101@pbx>;tag=a\r\n\
         To: <sip:030555@pbx>\r\nCall-ID: out@a\r\nCSeq: 1 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&inv_text, Caller::User("101".into()), Some(&dir));
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1);
    let t = text(&inv[0].1);
    assert!(
        t.starts_with("INVITE sip:+4930555@[2001:db8:ffff::1] SIP/2.0"),
        "strip/prepend:\n{t}"
    );
    assert!(
        t.contains("From: <sip:+4930123@"),
        "caller ID rewritten:\n{t}"
    );
    let first = parse(&inv[0].1);
    let resp = ResponseBuilder::new(&first, 407, "Proxy Authentication Required", None)
        .to_tag("p")
        .header(
            "Proxy-Authenticate",
            "Digest realm=\"prov\", nonce=\"abc\", qop=\"auth\"",
        )
        .build();
    h.b.handle_response(h.now, inv[0].0, &parse(&resp), &dir);
    let outs = h.drain();
    let again = requests(&outs, "INVITE");
    assert_eq!(again.len(), 1, "re-sent with credentials");
    let second = parse(&again[0].1);
    assert_eq!(
        second.call_id().unwrap(),
        first.call_id().unwrap(),
        "same Call-ID"
    );
    assert_eq!(
        second.cseq().unwrap().seq,
        first.cseq().unwrap().seq + 1,
        "CSeq + 1"
    );
    let auth = second
        .other_header("Proxy-Authorization")
        .expect("credentials");
    assert!(String::from_utf8_lossy(&auth).contains("username=\"4930\""));
    // The provider is down: 503 to the caller.
    let resp = ResponseBuilder::new(&second, 503, "Down", None)
        .to_tag("p")
        .build();
    h.b.handle_response(h.now, again[0].0, &parse(&resp), &dir);
    assert_eq!(responses(&h.drain()), vec![503]);
}

/// Proxies on both sides (a provider's Kamailio): the caller's Record-Route set goes back in
/// the 18x/2xx (RFC 3261 §12.1.1), and the callee's comma-separated Record-Route set becomes
/// the B leg's route set value by value in reverse order (§12.1.2), used by the ACK and BYE.
#[test]
fn record_route_sets_of_proxied_dialogs() {
    let mut h = H::new();
    let inv_text = format!(
        "INVITE sip:102@pbx SIP/2.0\r\nRecord-Route: <sip:[2001:db8:1::fa];lr;ftag=a>\r\nRecord-Route: <sip:[2001:db8:1::fb];lr>\r\n\
         Via: SIP/2.0/UDP [2001:db8:1::fb]:5060;branch=z9hG4bKp1\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKrr1;rport\r\n\
         From: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>\r\nCall-ID: rr@a\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:101@[2001:db8:1::a]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&inv_text, Caller::User("101".into()), None);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let inv = parse(&data);
    let reply = |code: u16, body: Option<&str>| {
        let mut rb = ResponseBuilder::new(&inv, code, "X", None)
            .to_tag("btag")
            .header(
                "Record-Route",
                "<sip:[2001:db8:2::1];lr>, <sip:[2001:db8:2::2];lr;r2=on>",
            )
            .header("Contact", "<sip:b@[2001:db8:1::20]:5060>");
        if let Some(s) = body {
            rb = rb.body("application/sdp", s.as_bytes());
        }
        parse(&rb.build())
    };
    h.b.handle_response(h.now, id, &reply(180, None), &h.dir);
    h.b.handle_response(h.now, id, &reply(200, Some(SDP_B)), &h.dir);
    let outs = h.drain();
    let to_a: Vec<String> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Respond { status, data, .. } if (180..300).contains(&status.code()) => {
                Some(text(data))
            }
            _ => None,
        })
        .collect();
    assert_eq!(to_a.len(), 2, "180 and 200 to the caller");
    for r in &to_a {
        let rr: Vec<&str> = r
            .lines()
            .filter_map(|l| l.strip_prefix("Record-Route: "))
            .collect();
        assert_eq!(
            rr,
            vec![
                "<sip:[2001:db8:1::fa];lr;ftag=a>",
                "<sip:[2001:db8:1::fb];lr>"
            ],
            "the caller's Record-Route set, in order:\n{r}"
        );
    }
    let ack = outs
        .iter()
        .find_map(|o| match o {
            Output::Stateless { data, .. } if data.starts_with(b"ACK ") => Some(text(data)),
            _ => None,
        })
        .expect("ACK for the 2xx");
    let routes = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("Route: ").map(str::to_owned))
            .collect()
    };
    let want = vec![
        "<sip:[2001:db8:2::2];lr;r2=on>".to_string(),
        "<sip:[2001:db8:2::1];lr>".to_string(),
    ];
    assert!(ack.starts_with("ACK sip:b@[2001:db8:1::20]:5060 "), "{ack}");
    assert_eq!(routes(&ack), want, "{ack}");
    let to_tag = parse(&Bytes::from(to_a[1].clone()))
        .to_hdr()
        .unwrap()
        .tag()
        .unwrap();
    let bye = format!(
        "BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKrr3\r\nFrom: <sip:101@pbx>;tag=atag\r\n\
         To: <sip:102@pbx>;tag={}\r\nCall-ID: rr@a\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(&to_tag)
    );
    let outs = h.in_dialog(bye, h.a_flow);
    let byes = requests(&outs, "BYE");
    assert_eq!(routes(&text(&byes[0].1)), want);
}

/// The relay session of the (only) call set up in `h`.
fn only_media(h: &H) -> MediaId {
    let m = h.media.0.lock().unwrap();
    assert_eq!(m.families.len(), 1, "one relay session");
    *m.families.keys().next().unwrap()
}

/// RFC 4733 from one side becomes SIP INFO towards a party that wants INFO: `auto` without
/// telephone-event in its SDP, or `dtmf = "info"` whatever its SDP says. One INFO at a time per
/// dialog (the next digit waits for the final response), next CSeq, the dialog's route set.
#[test]
fn rfc4733_from_the_relay_becomes_info_for_info_users() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let inv = parse(&data);
    // 102 (auto) answers without telephone-event, behind a record-routing proxy.
    let ok = ResponseBuilder::new(&inv, 200, "OK", None)
        .to_tag("btag")
        .header("Record-Route", "<sip:[2001:db8:2::1];lr>")
        .header("Contact", "<sip:b@[2001:db8:1::20]:5060>")
        .body("application/sdp", SDP_B.as_bytes())
        .build();
    h.b.handle_response(h.now, id, &parse(&ok), &h.dir);
    let outs = h.drain();
    let ok_a = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    let media = only_media(&h);
    let tag = String::from_utf8_lossy(&parse(&ok_a).to_hdr().unwrap().tag().unwrap()).into_owned();
    let ack = format!("ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa2\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    h.drain();

    // The caller's phone (relay leg A) sends '5' for 160 ms.
    h.b.media_dtmf(h.now, media, MediaLeg::A, '5', Duration::from_millis(160));
    let outs = h.drain();
    let infos = requests(&outs, "INFO");
    assert_eq!(infos.len(), 1, "{outs:?}");
    let t = text(&infos[0].1);
    assert!(
        t.starts_with("INFO sip:b@[2001:db8:1::20]:5060 SIP/2.0"),
        "{t}"
    );
    assert!(
        t.contains("Route: <sip:[2001:db8:2::1];lr>"),
        "route set:\n{t}"
    );
    assert!(
        t.contains("CSeq: 2 INFO"),
        "next CSeq after the INVITE:\n{t}"
    );
    assert!(t.contains(";tag=btag"), "{t}");
    assert!(t.contains("Content-Type: application/dtmf-relay"), "{t}");
    assert!(t.ends_with("\r\n\r\nSignal=5\r\nDuration=160\r\n"), "{t}");
    let b_call_id = header_of(&data, "Call-ID");
    assert_eq!(header_of(&infos[0].1, "Call-ID"), b_call_id);
    // Nothing towards the caller, no RFC 4733 injection.
    assert!(h.media.0.lock().unwrap().dtmf.is_empty());

    // Two more digits while the first INFO is unanswered: queued, sent in order.
    h.b.media_dtmf(h.now, media, MediaLeg::A, '#', Duration::from_millis(10));
    h.b.media_dtmf(h.now, media, MediaLeg::A, 'D', Duration::from_secs(60));
    assert!(
        requests(&h.drain(), "INFO").is_empty(),
        "one INFO at a time"
    );
    let outs = h.answer(infos[0].0, &infos[0].1, 200, "btag", None);
    let next = requests(&outs, "INFO");
    assert_eq!(next.len(), 1);
    let t = text(&next[0].1);
    assert!(t.contains("CSeq: 3 INFO"), "{t}");
    assert!(
        t.ends_with("Signal=#\r\nDuration=40\r\n"),
        "duration clamped to 40..5000 ms:\n{t}"
    );
    let outs = h.answer(next[0].0, &next[0].1, 200, "btag", None);
    let last = requests(&outs, "INFO");
    assert_eq!(last.len(), 1);
    assert!(text(&last[0].1).ends_with("Signal=D\r\nDuration=5000\r\n"));
    assert!(text(&last[0].1).contains("CSeq: 4 INFO"));
    let outs = h.answer(last[0].0, &last[0].1, 200, "btag", None);
    assert!(requests(&outs, "INFO").is_empty());
    assert!(responses(&outs).is_empty(), "our INFO's 200 goes nowhere");

    // The callee's events towards 101 (auto, telephone-event in its SDP): RTP only.
    h.b.media_dtmf(h.now, media, MediaLeg::B, '1', Duration::from_millis(100));
    // Unknown session, and a flash: nothing.
    h.b.media_dtmf(
        h.now,
        media + 99,
        MediaLeg::A,
        '1',
        Duration::from_millis(100),
    );
    h.b.media_dtmf(h.now, media, MediaLeg::A, '!', Duration::from_millis(100));
    assert!(requests(&h.drain(), "INFO").is_empty());

    // A timed-out INFO does not block later digits forever.
    h.b.media_dtmf(h.now, media, MediaLeg::A, '7', Duration::from_millis(100));
    let lost = requests(&h.drain(), "INFO");
    assert_eq!(lost.len(), 1);
    h.b.media_dtmf(h.now, media, MediaLeg::A, '8', Duration::from_millis(100));
    assert!(requests(&h.drain(), "INFO").is_empty());
    h.b.request_failed(h.now, lost[0].0, &h.dir);
    h.b.media_dtmf(h.now, media, MediaLeg::A, '9', Duration::from_millis(100));
    let outs = h.drain();
    let again = requests(&outs, "INFO");
    assert_eq!(again.len(), 1);
    assert!(text(&again[0].1).contains("Signal=9\r\n"));

    // After the call ends, events are ignored.
    let bye = format!("BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa9\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n");
    h.in_dialog(bye, h.a_flow);
    h.b.media_dtmf(h.now, media, MediaLeg::A, '3', Duration::from_millis(100));
    assert!(requests(&h.drain(), "INFO").is_empty());

    // `dtmf = "info"` (both users here): INFO even though the SDP offers telephone-event.
    let mut h = H::new();
    let cfg = CFG
        .replace("password = \"a\"", "password = \"a\"\ndtmf = \"info\"")
        .replace("password = \"b\"", "password = \"b\"\ndtmf = \"info\"");
    h.b.set_config(Arc::new(Config::from_str(&cfg, "t.toml").expect("config")));
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let with_te = SDP_B.replace(
        "RTP/AVP 0\r\n",
        "RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n",
    );
    let outs = h.answer(id, &data, 200, "btag", Some(&with_te));
    let media = only_media(&h);
    h.b.media_dtmf(h.now, media, MediaLeg::A, '5', Duration::from_millis(160));
    let infos = requests(&h.drain(), "INFO");
    assert_eq!(infos.len(), 1);
    assert!(text(&infos[0].1).ends_with("Signal=5\r\nDuration=160\r\n"));
    // Towards the caller, whose 200 is not ACKed yet: the INFO waits for the ACK.
    h.b.media_dtmf(h.now, media, MediaLeg::B, '2', Duration::from_millis(100));
    assert!(
        requests(&h.drain(), "INFO").is_empty(),
        "no INFO before the ACK"
    );
    let ok_a = outs
        .iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    let tag = String::from_utf8_lossy(&parse(&ok_a).to_hdr().unwrap().tag().unwrap()).into_owned();
    let ack = format!("ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa2\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    let to_a = requests(&h.drain(), "INFO");
    assert_eq!(to_a.len(), 1, "sent once the dialog is confirmed");
    let t = text(&to_a[0].1);
    assert!(t.starts_with("INFO sip:101@[2001:db8:1::a]:5062 "), "{t}");
    assert!(
        t.contains("Call-ID: acall@a") && t.ends_with("Signal=2\r\nDuration=100\r\n"),
        "{t}"
    );

    // `dtmf = "rfc4733"` (104): the forwarded RTP events are enough.
    let mut h = H::new();
    let outs = h.invite("104", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 200, "btag", Some(SDP_B));
    let media = only_media(&h);
    h.b.media_dtmf(h.now, media, MediaLeg::A, '5', Duration::from_millis(160));
    assert!(requests(&h.drain(), "INFO").is_empty());
}

mod headers;
mod home;
mod interop;
mod paths;
mod stuck;
mod transfer;
