//! Interop in virtual time: reliable provisionals (RFC 3262) on each leg, session timers
//! (RFC 4028), UPDATE (RFC 3311).

use super::*;

/// The harness with `extra` TOML appended to its configuration (rules first match: put new
/// rules before the harness's, e.g. with a number the harness does not route).
fn h_with(extra: &str) -> H {
    let mut h = H::new();
    let cfg = Arc::new(Config::from_str(&format!("{CFG}{extra}"), "t.toml").expect("config"));
    h.b = B2bua::new(
        cfg,
        Settings {
            timers: Timers::default(),
            ..Default::default()
        },
        Box::new(h.media.clone()),
        podpbx_sip::IdGen::new([4; 16]),
    );
    h
}

/// An INVITE from 101 at the caller's address with extra header lines.
fn invite_with(h: &mut H, number: &str, extra: &str, body: Option<&str>) -> Vec<Output> {
    let body = body.unwrap_or("");
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    let text = format!(
        "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKrel1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@pbx>;tag=atag\r\nTo: <sip:{number}@pbx>\r\nCall-ID: relcall@a\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:101@[2001:db8:1::a]:5062>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let msg = parse(&Bytes::from(text));
    let tx = h.server_tx(&msg, h.a_flow);
    h.b.handle_invite(
        h.now,
        SystemTime::now(),
        Received {
            tx,
            msg: &msg,
            flow: h.a_flow,
        },
        Caller::User("101".into()),
        &h.dir,
    );
    h.drain()
}

/// The callee's response to our request `req` with `code`, extra header lines and SDP.
fn reply(
    h: &mut H,
    id: ReqId,
    req: &Bytes,
    code: u16,
    headers: &[(&str, &str)],
    sdp: Option<&str>,
) -> Vec<Output> {
    let req = parse(req);
    let mut rb = ResponseBuilder::new(&req, code, "X", None)
        .to_tag("btag")
        .header("Contact", "<sip:b@[2001:db8:1::20]:5060>");
    for (n, v) in headers {
        rb = rb.header(n, v);
    }
    if let Some(s) = sdp {
        rb = rb.body("application/sdp", s.as_bytes());
    }
    let resp = parse(&rb.build());
    h.b.handle_response(h.now, id, &resp, &h.dir);
    h.drain()
}

/// Responses to the caller: (status, bytes).
fn to_a(outs: &[Output]) -> Vec<(u16, Bytes)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Respond { status, data, .. } => Some((status.code(), data.clone())),
            _ => None,
        })
        .collect()
}

fn tag_of(data: &Bytes) -> String {
    let m = parse(data);
    let t = m.to_hdr().unwrap().tag().unwrap();
    String::from_utf8_lossy(&t).into_owned()
}

/// A PRACK from the caller acknowledging RSeq `rseq` in the early dialog with our tag `tag`.
fn prack(h: &mut H, tag: &str, rseq: &str, cseq: u32) -> Vec<Output> {
    let text = format!(
        "PRACK sip:podpbx@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKpr{cseq};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: relcall@a\r\nCSeq: {cseq} PRACK\r\n\
         RAck: {rseq} 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    h.in_dialog(text, h.a_flow)
}

#[test]
fn a_caller_requiring_100rel_gets_reliable_provisionals_acknowledged_here() {
    let mut h = H::new();
    let outs = invite_with(
        &mut h,
        "102",
        "Require: 100rel\r\nSupported: 100rel\r\n",
        Some(SDP_A),
    );
    let inv = requests(&outs, "INVITE");
    let (id, data) = inv[0].clone();
    // The callee is offered 100rel but never required to do it.
    assert_eq!(header_of(&data, "Supported"), "100rel, timer, replaces");
    assert_eq!(header_of(&data, "Require"), "");
    let outs = reply(&mut h, id, &data, 180, &[], None);
    let r = to_a(&outs);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 180);
    assert_eq!(header_of(&r[0].1, "Require"), "100rel");
    let rseq = header_of(&r[0].1, "RSeq");
    let n: u32 = rseq.parse().expect("RSeq");
    assert!((1..=1 << 31).contains(&n));
    let tag = tag_of(&r[0].1);
    // Retransmitted at T1, then 2*T1, until the PRACK.
    let outs = h.advance(Duration::from_millis(500));
    let r2 = to_a(&outs);
    assert_eq!(r2.len(), 1, "retransmission at T1");
    assert_eq!(r2[0].1, r[0].1, "the same response, same RSeq");
    let outs = h.advance(Duration::from_millis(900));
    assert!(to_a(&outs).is_empty(), "next one at 1.5 s");
    // A PRACK for another RSeq: 481.
    let outs = prack(&mut h, &tag, &format!("{}", n + 1), 2);
    assert_eq!(responses(&outs), vec![481]);
    let outs = prack(&mut h, &tag, &rseq, 3);
    assert_eq!(responses(&outs), vec![200]);
    assert!(
        requests(&outs, "PRACK").is_empty(),
        "never relayed to the callee"
    );
    let outs = h.advance(Duration::from_secs(10));
    assert!(to_a(&outs).is_empty(), "no retransmission after the PRACK");
    // The answer goes through as usual.
    let outs = reply(&mut h, id, &data, 200, &[], Some(SDP_B));
    assert_eq!(responses(&outs), vec![200]);
}

#[test]
fn a_reliable_183_from_the_callee_is_pracked_once_and_relayed_plainly() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let rel = [("Require", "100rel"), ("RSeq", "5")];
    let outs = reply(&mut h, id, &data, 183, &rel, Some(SDP_B));
    let pracks = requests(&outs, "PRACK");
    assert_eq!(pracks.len(), 1, "our PRACK");
    let p = text(&pracks[0].1);
    assert!(p.contains("RAck: 5 1 INVITE\r\n"), "{p}");
    assert!(p.contains(";tag=btag"), "in the early dialog: {p}");
    assert!(
        p.starts_with("PRACK sip:b@[2001:db8:1::20]:5060 "),
        "to the Contact: {p}"
    );
    let r = to_a(&outs);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 183);
    assert_eq!(
        header_of(&r[0].1, "Require"),
        "",
        "no Require the caller cannot meet"
    );
    assert_eq!(header_of(&r[0].1, "RSeq"), "");
    assert!(
        text(&r[0].1).contains("c=IN IP6 2001:db8::10"),
        "early media via the relay"
    );
    // Early media: the relay learnt the callee's address from the 183.
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    assert!(
        remotes
            .iter()
            .any(|x| x.1 == MediaLeg::B && x.2 == "[2001:db8:1::b]:5000".parse().unwrap()),
        "{remotes:?}"
    );
    // The callee retransmits (our PRACK crossed it): nothing more.
    let outs = reply(&mut h, id, &data, 183, &rel, Some(SDP_B));
    assert!(requests(&outs, "PRACK").is_empty());
    assert!(to_a(&outs).is_empty());
    // Out of order: not acknowledged, not relayed.
    let outs = reply(
        &mut h,
        id,
        &data,
        180,
        &[("Require", "100rel"), ("RSeq", "7")],
        None,
    );
    assert!(requests(&outs, "PRACK").is_empty());
    assert!(to_a(&outs).is_empty());
    // The next one in order is.
    let outs = reply(
        &mut h,
        id,
        &data,
        180,
        &[("Require", "100rel"), ("RSeq", "6")],
        None,
    );
    assert_eq!(requests(&outs, "PRACK").len(), 1);
    assert_eq!(responses(&outs), vec![180]);
}

#[test]
fn our_2xx_waits_for_the_prack_of_a_reliable_183_with_sdp() {
    let mut h = H::new();
    let outs = invite_with(&mut h, "102", "Require: 100rel\r\n", Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = reply(&mut h, id, &data, 183, &[], Some(SDP_B));
    let r = to_a(&outs);
    assert_eq!(r[0].0, 183);
    let rseq = header_of(&r[0].1, "RSeq");
    let tag = tag_of(&r[0].1);
    // The callee answers before the caller's PRACK came: the 2xx is held.
    let outs = reply(&mut h, id, &data, 200, &[], Some(SDP_B));
    assert!(
        to_a(&outs).is_empty(),
        "no 2xx before the PRACK: {:?}",
        to_a(&outs)
    );
    assert_eq!(stateless_acks(&outs), 1, "the callee is ACKed at once");
    let outs = prack(&mut h, &tag, &rseq, 2);
    assert_eq!(
        responses(&outs),
        vec![200, 200],
        "PRACK's 200, then the INVITE's"
    );
    // The 2xx is now retransmitted until the ACK, like any other.
    let outs = h.advance(Duration::from_millis(600));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Stateless { data, .. } if data.starts_with(b"SIP/2.0 200"))));
}

#[test]
fn no_prack_within_64_t1_fails_the_call_with_500() {
    // Ring longer than 64*T1 so the PRACK guard, not the ring timeout, ends it.
    let mut h = h_with(
        "[[dialplan]]\nname = \"long\"\nmatch = { number = \"700\", from = \"local\" }\naction = \"ring\"\ntargets = [\"102\"]\ntimeout_secs = 60\n",
    );
    let outs = invite_with(&mut h, "700", "Require: 100rel\r\n", Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = reply(&mut h, id, &data, 180, &[], None);
    assert_eq!(to_a(&outs).len(), 1);
    let outs = h.advance(Duration::from_secs(40));
    let codes: Vec<u16> = to_a(&outs).iter().map(|r| r.0).collect();
    // 180 retransmitted at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, then 500 at 32 s.
    assert_eq!(codes, [180, 180, 180, 180, 180, 180, 500], "{codes:?}");
    assert_eq!(
        requests(&outs, "CANCEL").len(),
        1,
        "the callee is cancelled"
    );
}

// ---- Session timers (RFC 4028) ----------------------------------------------------------------

/// ACKs our 2xx to the caller (Call-ID relcall@a, our tag `tag`).
fn ack_a(h: &mut H, tag: &str) {
    let ack = format!("ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKrelack\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: relcall@a\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
}

/// An in-dialog request from the caller (relcall@a, our tag `tag`).
fn from_caller(h: &mut H, method: &str, tag: &str, cseq: u32, extra: &str) -> Vec<Output> {
    let text = format!(
        "{method} sip:podpbx@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKst{cseq};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: relcall@a\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:101@[2001:db8:1::a]:5062>\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    h.in_dialog(text, h.a_flow)
}

/// The caller's call to 102 answered (B's 200 with `b_headers`), our 2xx ACKed: our tag in
/// the caller's dialog, the 2xx, and B's INVITE.
fn answered_with(
    h: &mut H,
    a_headers: &str,
    b_headers: &[(&str, &str)],
) -> (String, Bytes, (ReqId, Bytes)) {
    let outs = invite_with(h, "102", a_headers, Some(SDP_A));
    let inv = requests(&outs, "INVITE")[0].clone();
    let outs = reply(h, inv.0, &inv.1, 200, b_headers, Some(SDP_B));
    let ok = to_a(&outs)
        .into_iter()
        .find(|r| r.0 == 200)
        .expect("200 to the caller")
        .1;
    let tag = tag_of(&ok);
    ack_a(h, &tag);
    (tag, ok, inv)
}

#[test]
fn an_interval_below_our_min_se_gets_422_before_anything_rings() {
    let mut h = H::new();
    let outs = invite_with(
        &mut h,
        "102",
        "Supported: timer\r\nSession-Expires: 60\r\n",
        Some(SDP_A),
    );
    let r = to_a(&outs);
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [100, 422]);
    assert_eq!(header_of(&r[1].1, "Min-SE"), "90");
    assert!(requests(&outs, "INVITE").is_empty(), "nobody rang");
}

#[test]
fn the_caller_refreshes_and_a_caller_that_stops_is_hung_up() {
    let mut h = H::new();
    let (tag, ok, (_, b_inv)) = answered_with(
        &mut h,
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n",
        &[],
    );
    // Each leg has its own: the callee was asked for ours, the caller got what it asked for.
    assert_eq!(header_of(&b_inv, "Session-Expires"), "1800");
    assert_eq!(header_of(&b_inv, "Min-SE"), "90");
    assert_eq!(header_of(&ok, "Session-Expires"), "90;refresher=uac");
    assert_eq!(header_of(&ok, "Require"), "timer");
    // A refresh at 45 s (UPDATE without body) is answered here with the interval.
    h.advance(Duration::from_secs(45));
    let outs = from_caller(
        &mut h,
        "UPDATE",
        &tag,
        2,
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
    );
    let r = to_a(&outs);
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [200]);
    assert_eq!(header_of(&r[0].1, "Session-Expires"), "90;refresher=uac");
    assert!(
        requests(&outs, "UPDATE").is_empty(),
        "a refresh is not relayed"
    );
    // 90 - min(32, 30) = 60 s after the last refresh: still up at 59 s...
    let outs = h.advance(Duration::from_secs(59));
    assert!(requests(&outs, "BYE").is_empty());
    // ...hung up at 60 s: BYE on both legs, CDR reason session_expired.
    let outs = h.advance(Duration::from_secs(1));
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 2, "BYE to caller and callee");
    let mut last = Vec::new();
    for (id, data) in byes {
        last = reply(&mut h, id, &data, 200, &[], None);
    }
    let c = cdr(&last).expect("CDR");
    assert_eq!(c.reason, "session_expired", "{c:?}");
}

#[test]
fn podpbx_refreshes_a_callee_that_asks_it_to_and_a_failed_refresh_ends_the_call() {
    let mut h = H::new();
    let (_, ok, _) = answered_with(
        &mut h,
        "",
        &[
            ("Session-Expires", "120;refresher=uac"),
            ("Require", "timer"),
            ("Allow", "INVITE, ACK, BYE, UPDATE"),
        ],
    );
    // The caller supports nothing: we refresh it (interval inserted, no Require).
    assert_eq!(header_of(&ok, "Session-Expires"), "1800;refresher=uas");
    assert_eq!(header_of(&ok, "Require"), "");
    // Half of 120 s later we refresh the callee with UPDATE.
    let outs = h.advance(Duration::from_secs(59));
    assert!(requests(&outs, "UPDATE").is_empty());
    let outs = h.advance(Duration::from_secs(1));
    let ups = requests(&outs, "UPDATE");
    assert_eq!(ups.len(), 1);
    let up = text(&ups[0].1);
    assert!(
        up.contains("Session-Expires: 120;refresher=uac\r\n"),
        "{up}"
    );
    assert!(up.contains(";tag=btag"), "{up}");
    let outs = reply(
        &mut h,
        ups[0].0,
        &ups[0].1,
        200,
        &[("Session-Expires", "120;refresher=uac")],
        None,
    );
    assert!(requests(&outs, "BYE").is_empty());
    // The next refresh, 60 s after that one, gets 481: the call ends.
    let outs = h.advance(Duration::from_secs(60));
    let ups = requests(&outs, "UPDATE");
    assert_eq!(ups.len(), 1);
    let outs = reply(&mut h, ups[0].0, &ups[0].1, 481, &[], None);
    let byes = requests(&outs, "BYE");
    assert!(!byes.is_empty(), "hung up after the failed refresh");
}

#[test]
fn a_422_from_the_callee_is_retried_with_its_min_se() {
    let mut h = H::new();
    let outs = invite_with(&mut h, "102", "", Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = reply(&mut h, id, &data, 422, &[("Min-SE", "3600")], None);
    let again = requests(&outs, "INVITE");
    assert_eq!(again.len(), 1, "INVITE re-sent");
    assert_eq!(header_of(&again[0].1, "Session-Expires"), "3600");
    assert_eq!(header_of(&again[0].1, "Min-SE"), "3600");
    assert!(to_a(&outs).is_empty(), "the caller hears nothing of it");
    // A second 422 asking for the same is not followed again (no loop): the call fails.
    let outs = reply(
        &mut h,
        again[0].0,
        &again[0].1,
        422,
        &[("Min-SE", "3600")],
        None,
    );
    assert!(requests(&outs, "INVITE").is_empty());
}

// ---- Trunk priority failover ------------------------------------------------------------------

/// Trunks by name at their own addresses; `down` ones are unavailable.
struct Trunks3 {
    inner: FakeDir,
    down: Vec<&'static str>,
}

impl Directory for Trunks3 {
    fn contacts(&self, user: &str, now: Instant) -> Vec<ContactTarget> {
        self.inner.contacts(user, now)
    }
    fn local_addr(&self, t: Transport, peer: IpAddr) -> Option<SocketAddr> {
        self.inner.local_addr(t, peer)
    }
    fn trunk_destination(&self, name: &str) -> Option<SocketAddr> {
        let n = match name {
            "main" => 1,
            "spare" => 2,
            "cheap" => 3,
            _ => return None,
        };
        Some(SocketAddr::new(
            format!("2001:db8:ff::{n}").parse().unwrap(),
            5060,
        ))
    }
    fn trunk_available(&self, name: &str) -> bool {
        !self.down.contains(&name)
    }
}

fn failover_harness(down: Vec<&'static str>) -> (H, Trunks3, Vec<Output>) {
    let mut h = h_with(
        "[[trunks]]\nname = \"cheap\"\nhost = \"2001:db8:ff::3\"\npriority = 9\n\
         [[trunks]]\nname = \"main\"\nhost = \"2001:db8:ff::1\"\npriority = 1\n\
         [[trunks]]\nname = \"spare\"\nhost = \"2001:db8:ff::2\"\npriority = 5\nfailover_statuses = [503]\n\
         [[dialplan]]\nname = \"out\"\nmatch = { prefix = \"0\", from = \"local\" }\naction = \"trunk\"\ntrunk = [\"cheap\", \"spare\", \"main\"]\n",
    );
    let dir = Trunks3 {
        inner: std::mem::take(&mut h.dir),
        down,
    };
    let text = format!(
        "INVITE sip:0301234@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKfo1;rport\r\nFrom: <sip:101@pbx>;tag=a\r\n\
         To: <sip:0301234@pbx>\r\nCall-ID: fo@a\r\nCSeq: 1 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&text, Caller::User("101".into()), Some(&dir));
    (h, dir, outs)
}

fn dest_of(outs: &[Output], id: ReqId) -> SocketAddr {
    outs.iter()
        .find_map(|o| match o {
            Output::Request { id: i, peer, .. } if *i == id => Some(peer.addr),
            _ => None,
        })
        .expect("request")
}

fn trunk_reply(h: &mut H, dir: &Trunks3, id: ReqId, req: &Bytes, code: u16) -> Vec<Output> {
    let resp = parse(
        &ResponseBuilder::new(&parse(req), code, "X", None)
            .to_tag("t")
            .build(),
    );
    h.b.handle_response(h.now, id, &resp, dir);
    h.drain()
}

#[test]
fn outbound_calls_fail_over_through_the_trunks_by_priority() {
    let (mut h, dir, outs) = failover_harness(vec![]);
    // main (priority 1) first.
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert_eq!(dest_of(&outs, id), "[2001:db8:ff::1]:5060".parse().unwrap());
    // 503 is in main's default failover statuses: spare (priority 5) next.
    let outs = trunk_reply(&mut h, &dir, id, &data, 503);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert_eq!(dest_of(&outs, id), "[2001:db8:ff::2]:5060".parse().unwrap());
    assert!(responses(&outs).is_empty(), "the caller hears nothing yet");
    // spare's own list is [503] only: a 403 from it ends the attempt (no cheap).
    let outs = trunk_reply(&mut h, &dir, id, &data, 403);
    assert!(requests(&outs, "INVITE").is_empty());
    assert_eq!(responses(&outs), [403]);
}

#[test]
fn an_unavailable_trunk_is_skipped_and_a_callee_answer_is_final() {
    let (mut h, dir, outs) = failover_harness(vec!["main"]);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert_eq!(
        dest_of(&outs, id),
        "[2001:db8:ff::2]:5060".parse().unwrap(),
        "main is down"
    );
    // Busy is the callee's answer, not the trunk's failure.
    let outs = trunk_reply(&mut h, &dir, id, &data, 486);
    assert!(requests(&outs, "INVITE").is_empty());
    assert_eq!(responses(&outs), [486]);
}

// ---- Relay family follows the SDP address -----------------------------------------------------

/// A caller signalling over IPv6 whose media is IPv4 (a provider's SBC that does this, or a
/// dual-stack phone): its relay side is IPv4, its answer says `c=IN IP4`; the IPv6 callee's
/// side stays IPv6.
#[test]
fn the_callers_relay_side_follows_its_sdp_family_not_its_signalling() {
    let mut h = H::new();
    let sdp4 = "v=0\r\no=a 1 1 IN IP4 198.51.100.77\r\ns=-\r\nc=IN IP4 198.51.100.77\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let outs = invite_with(&mut h, "102", "", Some(sdp4));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert!(
        text(&data).contains("c=IN IP6 2001:db8::10"),
        "{}",
        text(&data)
    );
    let fams: Vec<(Family, Family)> = h
        .media
        .0
        .lock()
        .unwrap()
        .families
        .values()
        .copied()
        .collect();
    assert_eq!(fams, [(Family::V4, Family::V6)]);
    let outs = reply(&mut h, id, &data, 200, &[], Some(SDP_B));
    let ok = to_a(&outs).into_iter().find(|r| r.0 == 200).expect("200").1;
    assert!(
        text(&ok).contains("c=IN IP4 198.51.100.10"),
        "{}",
        text(&ok)
    );
    // The relay takes the caller's media from its SDP address (IPv4).
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    assert!(
        remotes
            .iter()
            .any(|r| r.1 == MediaLeg::A && r.2 == "198.51.100.77:4000".parse().unwrap()),
        "{remotes:?}"
    );
}

// ---- 3xx from a provider ------------------------------------------------------------------------

fn redirect(h: &mut H, dir: &Trunks3, id: ReqId, req: &Bytes, contact: &str) -> Vec<Output> {
    let resp = parse(
        &ResponseBuilder::new(&parse(req), 302, "Moved Temporarily", None)
            .to_tag("r")
            .header("Contact", contact)
            .build(),
    );
    h.b.handle_response(h.now, id, &resp, dir);
    h.drain()
}

#[test]
fn a_providers_redirect_is_followed_through_the_same_trunk_and_bounded() {
    let (mut h, dir, outs) = failover_harness(vec!["spare", "cheap"]);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert!(
        text(&data).starts_with("INVITE sip:0301234@2001:db8:ff::1 ")
            || text(&data).starts_with("INVITE sip:0301234@[2001:db8:ff::1] "),
        "{}",
        text(&data)
    );
    // The Contact names another host: only its number is used, through the same trunk.
    let outs = redirect(
        &mut h,
        &dir,
        id,
        &data,
        "<sip:+4989111@evil.example.net:5070>",
    );
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1, "followed");
    let t = text(&inv[0].1);
    assert!(
        t.starts_with("INVITE sip:+4989111@[2001:db8:ff::1] SIP/2.0"),
        "{t}"
    );
    assert_eq!(
        dest_of(&outs, inv[0].0),
        "[2001:db8:ff::1]:5060".parse().unwrap()
    );
    assert!(!t.contains("evil.example.net"), "{t}");
    assert!(responses(&outs).is_empty());
    // Three redirects are followed, the fourth is not: the caller gets 480.
    let (mut id, mut data) = inv[0].clone();
    for n in 0..3 {
        let outs = redirect(&mut h, &dir, id, &data, &format!("<sip:+4989{n}@x>"));
        let inv = requests(&outs, "INVITE");
        if n < 2 {
            assert_eq!(inv.len(), 1, "redirect {n}");
            (id, data) = inv[0].clone();
        } else {
            assert!(inv.is_empty(), "no fourth redirect");
            assert_eq!(responses(&outs), [480]);
        }
    }
}

#[test]
fn a_redirect_to_something_that_is_not_a_number_is_not_followed() {
    let (mut h, dir, outs) = failover_harness(vec!["spare", "cheap"]);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = redirect(&mut h, &dir, id, &data, "<sip:alice@example.net>");
    assert!(requests(&outs, "INVITE").is_empty());
    assert_eq!(responses(&outs), [480]);
}

// ---- UPDATE in an early dialog (RFC 3311) -------------------------------------------------------

/// An in-dialog request from the callee of our INVITE `inv` (its tag btag).
fn from_callee(h: &mut H, inv: &Bytes, method: &str, cseq: u32, sdp: Option<&str>) -> Vec<Output> {
    let m = parse(inv);
    let call_id = String::from_utf8_lossy(&m.call_id().unwrap()).into_owned();
    let ours = String::from_utf8_lossy(&m.from_hdr().unwrap().tag().unwrap()).into_owned();
    let body = sdp.unwrap_or("");
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    let text = format!(
        "{method} sip:podpbx@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::20]:5060;branch=z9hG4bKcu{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:102@pbx>;tag=btag\r\nTo: <sip:101@pbx>;tag={ours}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:b@[2001:db8:1::20]:5060>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let f = flow("[2001:db8:1::20]:5060", "[2001:db8::1]:5060");
    h.in_dialog(text, f)
}

#[test]
fn an_early_update_from_the_callee_moves_its_media_and_is_answered_here() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let rel = [("Require", "100rel"), ("RSeq", "1")];
    reply(&mut h, id, &data, 183, &rel, Some(SDP_B));
    let moved = SDP_B
        .replace("m=audio 5000", "m=audio 5002")
        .replace("o=b 7 7", "o=b 7 8");
    let outs = from_callee(&mut h, &data, "UPDATE", 1, Some(&moved));
    let r = to_a(&outs);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 200);
    let t = text(&r[0].1);
    assert!(
        t.contains("c=IN IP6 2001:db8::10"),
        "our anchors, unchanged: {t}"
    );
    assert!(
        requests(&outs, "UPDATE").is_empty(),
        "not relayed to the caller"
    );
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    assert!(
        remotes
            .iter()
            .any(|x| x.1 == MediaLeg::B && x.2 == "[2001:db8:1::b]:5002".parse().unwrap()),
        "the relay sends the early media to the new port: {remotes:?}"
    );
    // Before any offer/answer on a leg there is nothing to answer with: 500 + Retry-After.
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), None);
    let (_, data) = requests(&outs, "INVITE")[0].clone();
    let outs = from_callee(&mut h, &data, "UPDATE", 1, Some(SDP_B));
    assert_eq!(to_a(&outs).first().map(|r| r.0), Some(500));
}

/// A callee that answered in a reliable 183 sends its 2xx without SDP (the exchange is complete
/// on its leg); the caller, whose 183 was not reliable, still gets the answer in our 2xx.
#[test]
fn a_2xx_without_sdp_after_a_reliable_183_still_gives_the_caller_its_answer() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let rel = [("Require", "100rel"), ("RSeq", "1")];
    reply(&mut h, id, &data, 183, &rel, Some(SDP_B));
    let outs = reply(&mut h, id, &data, 200, &[], None);
    let ok = to_a(&outs).into_iter().find(|r| r.0 == 200).expect("200").1;
    let t = text(&ok);
    assert!(
        t.contains("c=IN IP6 2001:db8::10") && t.contains("m=audio"),
        "{t}"
    );
}
