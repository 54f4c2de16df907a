//! The core's request paths in virtual time: what only the black-box tests reached before
//! (digest REGISTER, OPTIONS, INVITE -> 407 -> 100, a call between two registered users,
//! CANCEL, BYE from either side, timers).

use super::*;
use podpbx_sip::caps;

const USERS: &str = r#"
[[users]]
name = "101"
password = "pw-101"

[[users]]
name = "102"
password = "pw-102"

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 20
"#;

/// The caller: an IPv6 phone.
fn alice() -> Ua {
    Ua::new("101", "pw-101", "[2001:db8::7]:5062")
}

/// The callee: an IPv4 phone (so every call bridges the families).
fn bob() -> Ua {
    Ua::new("102", "pw-102", "198.51.100.8:5070")
}

fn text(s: &Sent) -> String {
    String::from_utf8_lossy(&s.msg.buf).into_owned()
}

fn contact_of(s: &Sent) -> String {
    match s.msg.contacts() {
        Ok(Some(podpbx_sip::ContactList::List(l))) if !l.is_empty() => {
            String::from_utf8_lossy(&l[0].addr.uri.raw).into_owned()
        }
        _ => panic!("no Contact in {}", text(s)),
    }
}

fn to_tag(s: &Sent) -> String {
    let tag = s.msg.to_hdr().expect("To").tag().expect("To tag");
    String::from_utf8_lossy(&tag).into_owned()
}

/// REGISTER -> 401 -> REGISTER with credentials -> 200.
fn register(sim: &mut Sim, ua: &mut Ua, expires: u32) -> Sent {
    let r = ua.register(expires);
    sim.recv(ua.addr, &r);
    let challenge = sim.one_to(ua.addr);
    assert_eq!(challenge.status(), 401, "{}", text(&challenge));
    ua.challenged(&challenge);
    let r = ua.register(expires);
    sim.recv(ua.addr, &r);
    sim.one_to(ua.addr)
}

/// The ACK for a non-2xx final response to the caller's INVITE.
fn ack_for(ua: &Ua, resp: &Sent) -> String {
    let cseq = resp.msg.cseq().expect("CSeq").seq;
    let branch = resp.msg.top_via().expect("Via").branch().expect("branch");
    format!(
        "ACK sip:102@pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch={};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{}@pbx.example>;tag={}\r\nTo: <sip:102@pbx.example>;tag={}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(&branch),
        ua.user,
        ua.tag,
        to_tag(resp),
        ua.call_id
    )
}

/// Bob registered; Alice's INVITE challenged (407, ACK) and sent again with credentials:
/// returns the INVITE Bob got. Alice has had her 100 Trying.
fn ringing_call(sim: &mut Sim, a: &mut Ua, b: &mut Ua) -> Sent {
    assert_eq!(register(sim, b, 3600).status(), 200);
    let r = a.invite("102");
    sim.recv(a.addr, &r);
    let c = sim.one_to(a.addr);
    assert_eq!(c.status(), 407, "{}", text(&c));
    a.challenged(&c);
    sim.recv(a.addr, &ack_for(a, &c));
    assert!(sim.take().is_empty(), "the ACK for the 407 is absorbed");
    let r = a.invite("102");
    sim.recv(a.addr, &r);
    let trying = sim.one_to(a.addr);
    assert_eq!(trying.status(), 100);
    let inv = sim.one_to(b.addr);
    assert_eq!(inv.method(), Method::Invite);
    assert!(sim.take().is_empty());
    inv
}

#[test]
fn register_with_digest_binds_the_observed_flow_and_saves_it() {
    let mut sim = Sim::new(USERS);
    let mut a = alice();
    let r = a.register(3600);
    sim.recv(a.addr, &r);
    let c = sim.one_to(a.addr);
    assert_eq!(c.status(), 401);
    assert!(c.header(HeaderName::WwwAuthenticate).is_some());
    assert!(sim.core.registrar().lookup("101", sim.now).is_empty());

    // A wrong password is another 401, never a binding.
    let mut wrong = Ua::new("101", "not-the-password", "[2001:db8::7]:5062");
    wrong.challenged(&c);
    let r = wrong.register(3600);
    sim.recv(wrong.addr, &r);
    assert_eq!(sim.one_to(a.addr).status(), 401);
    assert!(sim.core.registrar().lookup("101", sim.now).is_empty());

    a.challenged(&c);
    let r = a.register(3600);
    sim.recv(a.addr, &r);
    let ok = sim.one_to(a.addr);
    assert_eq!(ok.status(), 200, "{}", text(&ok));
    assert_eq!(
        ok.header(HeaderName::Contact).as_deref(),
        Some("<sip:101@[2001:db8::7]:5062>;expires=3600")
    );
    let b = sim.core.registrar().lookup("101", sim.now);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].flow.remote, a.addr);
    assert_eq!(b[0].flow.local, PBX_V6.parse::<SocketAddr>().unwrap());

    // Saved once, after the coalescing delay, not per REGISTER.
    assert!(sim.saved.is_empty());
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.saved.len(), 1);
    let file = String::from_utf8(sim.saved[0].clone()).unwrap();
    assert!(file.contains("sip:101@[2001:db8::7]:5062"), "{file}");
}

#[test]
fn registration_expires_in_virtual_time() {
    let mut sim = Sim::new(USERS);
    let mut b = bob();
    assert_eq!(register(&mut sim, &mut b, 120).status(), 200);
    sim.advance(Duration::from_secs(119));
    assert_eq!(sim.core.registrar().lookup("102", sim.now).len(), 1);
    let saves = sim.saved.len();
    sim.advance(Duration::from_secs(2));
    assert!(sim.core.registrar().lookup("102", sim.now).is_empty());
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.saved.len(), saves + 1, "the expiry is persisted");
    assert!(sim.take().is_empty(), "expiry sends nothing");
}

#[test]
fn options_answered_with_the_capability_set_at_the_rfc3261_response_address() {
    let mut sim = Sim::new(USERS);
    // No rport: the response goes to the source IP and the Via's port (RFC 3261 §18.2.2).
    let from: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let req = "OPTIONS sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.50:5099;branch=z9hG4bKopt1\r\n\
               Max-Forwards: 70\r\nFrom: <sip:scan@203.0.113.50>;tag=o1\r\nTo: <sip:pbx.example>\r\n\
               Call-ID: opt-1@sim\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    sim.recv(from, req);
    let ok = sim.one_to("198.51.100.9:5099".parse().unwrap());
    assert_eq!(ok.status(), 200, "{}", text(&ok));
    assert_eq!(
        ok.header(HeaderName::Allow),
        Some(caps::allow(caps::PBX_METHODS))
    );
    assert_eq!(
        ok.msg.other_header("Accept").map(|v| v.to_vec()),
        Some(caps::ACCEPT.join(", ").into_bytes())
    );
    assert!(sim.take().is_empty());

    // With rport: back to the source port.
    let req = req
        .replace("branch=z9hG4bKopt1", "branch=z9hG4bKopt2;rport")
        .replace("CSeq: 1", "CSeq: 2");
    sim.recv(from, &req);
    assert_eq!(sim.one_to(from).status(), 200);
}

#[test]
fn unknown_method_gets_501_with_allow() {
    let mut sim = Sim::new(USERS);
    let a = alice();
    let req = "PUBLISH sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKp1;rport\r\n\
               Max-Forwards: 70\r\nFrom: <sip:101@pbx.example>;tag=p1\r\nTo: <sip:pbx.example>\r\n\
               Call-ID: pub-1@sim\r\nCSeq: 1 PUBLISH\r\nContent-Length: 0\r\n\r\n";
    sim.recv(a.addr, req);
    let r = sim.one_to(a.addr);
    assert_eq!(r.status(), 501);
    assert_eq!(
        r.header(HeaderName::Allow),
        Some(caps::allow(caps::PBX_METHODS))
    );
}

#[test]
fn invite_without_credentials_gets_one_stateless_407_per_request() {
    let mut sim = Sim::new(USERS);
    let mut a = alice();
    let r = a.invite("102");
    sim.recv(a.addr, &r);
    let c = sim.one_to(a.addr);
    assert_eq!(c.status(), 407);
    assert!(c.header(HeaderName::ProxyAuthenticate).is_some());
    // The challenge is sent once and no transaction is kept (issue #11: a forged INVITE must
    // not make podpbx repeat its answer to the claimed source): no Timer G retransmissions.
    sim.advance(Duration::from_millis(600));
    assert!(sim.take().is_empty(), "no 407 retransmission");
    // The same INVITE again (a UDP retransmission) gets one fresh answer with the same To tag.
    sim.recv(a.addr, &r);
    let again = sim.one_to(a.addr);
    assert_eq!(again.status(), 407);
    assert_eq!(
        again.header(HeaderName::To),
        c.header(HeaderName::To),
        "same To tag"
    );
    sim.recv(a.addr, &ack_for(&a, &c));
    sim.advance(Duration::from_secs(40));
    assert!(sim.take().is_empty(), "nothing after the ACK either");
    assert_eq!(sim.core.active_calls(), 0);
}

#[test]
fn call_between_two_registered_users_then_caller_hangs_up() {
    let mut sim = Sim::new(USERS);
    let (mut a, mut b) = (alice(), bob());
    let inv = ringing_call(&mut sim, &mut a, &mut b);
    assert_eq!(sim.core.active_calls(), 1);
    // The IPv4 callee sees the relay's IPv4 address, never the IPv6 caller's.
    let offer = inv.body();
    assert!(offer.contains("c=IN IP4 198.51.100.1\r\n"), "{offer}");
    assert!(!offer.contains("2001:db8::7"), "{offer}");
    assert_eq!(
        inv.header(HeaderName::Allow),
        Some(caps::allow(caps::DIALOG_METHODS))
    );

    sim.recv(b.addr, &b.answer(&inv, 180, "Ringing", None));
    let ringing = sim.one_to(a.addr);
    assert_eq!(ringing.status(), 180);
    let sdp = b.sdp();
    sim.recv(b.addr, &b.answer(&inv, 200, "OK", Some(&sdp)));
    let mut to_b = sim.take_to(b.addr);
    assert_eq!(to_b.len(), 1, "the b2bua ACKs the callee's 200");
    let ack_b = to_b.remove(0);
    assert_eq!(ack_b.method(), Method::Ack);
    let ok = sim.one_to(a.addr);
    assert_eq!(ok.status(), 200);
    let answer = ok.body();
    assert!(answer.contains("c=IN IP6 2001:db8::1\r\n"), "{answer}");
    assert!(!answer.contains("198.51.100.8"), "{answer}");
    assert_eq!(sim.media.live(), 1);
    {
        let m = sim.media.0.lock().unwrap();
        let learned: Vec<SocketAddr> = m.remotes.iter().map(|r| r.2).collect();
        assert!(learned.contains(&"[2001:db8::7]:40000".parse().unwrap()));
        assert!(learned.contains(&"198.51.100.8:40000".parse().unwrap()));
    }

    // Alice ACKs the 200 and hangs up.
    let tag = to_tag(&ok);
    let contact = contact_of(&ok);
    let ack = a.request(
        "ACK",
        &contact,
        "sip:102@pbx.example",
        Some(&tag),
        2,
        &[],
        None,
    );
    sim.recv(a.addr, &ack);
    assert!(sim.take().is_empty(), "{:?}", sim.sent);
    let bye = a.in_dialog("BYE", &contact, "sip:102@pbx.example", &tag);
    sim.recv(a.addr, &bye);
    let ok_bye = sim.one_to(a.addr);
    assert_eq!((ok_bye.status(), ok_bye.method()), (200, Method::Bye));
    let bye_b = sim.one_to(b.addr);
    assert_eq!(bye_b.method(), Method::Bye);
    assert_eq!(
        bye_b.msg.call_id().unwrap(),
        inv.msg.call_id().unwrap(),
        "the BYE is in the callee's dialog"
    );
    sim.recv(b.addr, &b.answer(&bye_b, 200, "OK", None));
    assert!(sim.take().is_empty());
    assert_eq!(sim.core.active_calls(), 0);
    assert_eq!(sim.media.live(), 0, "the relay session is released");
    assert_eq!(
        sim.core.take_ended_calls(),
        vec![podpbx_b2bua::Disposition::Answered]
    );
    // The CDR is an output for the shell's writer, not a file write in the core.
    assert_eq!(sim.cdrs.len(), 1);
    assert_eq!(sim.cdrs[0].disposition, podpbx_b2bua::Disposition::Answered);
}

#[test]
fn callee_hangs_up_in_dialog() {
    let mut sim = Sim::new(USERS);
    let (mut a, mut b) = (alice(), bob());
    let inv = ringing_call(&mut sim, &mut a, &mut b);
    let sdp = b.sdp();
    sim.recv(b.addr, &b.answer(&inv, 200, "OK", Some(&sdp)));
    let ok = sim.one_to(a.addr);
    assert_eq!(ok.status(), 200);
    sim.take();
    let bye = b.in_dialog_callee("BYE", &inv, 2);
    sim.recv(b.addr, &bye);
    let ok_b = sim.one_to(b.addr);
    assert_eq!((ok_b.status(), ok_b.method()), (200, Method::Bye));
    let bye_a = sim.one_to(a.addr);
    assert_eq!(bye_a.method(), Method::Bye);
    assert_eq!(bye_a.msg.call_id().unwrap().as_ref(), a.call_id.as_bytes());
    sim.recv(a.addr, &a.answer(&bye_a, 200, "OK", None));
    assert_eq!(sim.core.active_calls(), 0);
    assert_eq!(sim.media.live(), 0);
}

#[test]
fn caller_cancels_while_ringing() {
    let mut sim = Sim::new(USERS);
    let (mut a, mut b) = (alice(), bob());
    let inv = ringing_call(&mut sim, &mut a, &mut b);
    sim.recv(b.addr, &b.answer(&inv, 180, "Ringing", None));
    assert_eq!(sim.one_to(a.addr).status(), 180);

    // CANCEL: same branch and CSeq number as the INVITE (RFC 3261 §9.1).
    let invite_cseq = 2;
    let cancel = a
        .request(
            "CANCEL",
            "sip:102@pbx.example",
            "sip:102@pbx.example",
            None,
            invite_cseq,
            &[],
            None,
        )
        .replace("z9hG4bK101-cancel-2", "z9hG4bK101-invite-2");
    sim.recv(a.addr, &cancel);
    let mut to_a = sim.take_to(a.addr);
    to_a.sort_by_key(|s| s.status());
    let got: Vec<(u16, Method)> = to_a.iter().map(|s| (s.status(), s.method())).collect();
    assert_eq!(
        got,
        vec![(200, Method::Cancel), (487, Method::Invite)],
        "200 for the CANCEL, 487 for the INVITE"
    );
    let cancel_b = sim.one_to(b.addr);
    assert_eq!(cancel_b.method(), Method::Cancel);
    assert_eq!(
        cancel_b.msg.top_via().unwrap().branch(),
        inv.msg.top_via().unwrap().branch(),
        "the CANCEL matches the callee's INVITE transaction"
    );
    sim.recv(b.addr, &b.answer(&cancel_b, 200, "OK", None));
    sim.recv(b.addr, &b.answer(&inv, 487, "Request Terminated", None));
    let ack = sim.one_to(b.addr);
    assert_eq!(ack.method(), Method::Ack, "the 487 is ACKed hop by hop");
    assert_eq!(sim.core.active_calls(), 0);
    assert_eq!(sim.media.live(), 0);
    assert_eq!(sim.cdrs.len(), 1);
    assert_eq!(
        sim.cdrs[0].disposition,
        podpbx_b2bua::Disposition::Cancelled
    );
}

#[test]
fn ring_timeout_cancels_the_callee_and_answers_480() {
    let mut sim = Sim::new(USERS);
    let (mut a, mut b) = (alice(), bob());
    let inv = ringing_call(&mut sim, &mut a, &mut b);
    sim.recv(b.addr, &b.answer(&inv, 180, "Ringing", None));
    assert_eq!(sim.one_to(a.addr).status(), 180);
    sim.advance(Duration::from_millis(19_900));
    assert!(
        sim.take().is_empty(),
        "nothing before the 20 s ring timeout"
    );
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.one_to(b.addr).method(), Method::Cancel);
    let r = sim.one_to(a.addr);
    assert_eq!(r.status(), 480, "{}", text(&r));
}

#[test]
fn unacknowledged_200_is_retransmitted_then_the_call_is_ended() {
    let mut sim = Sim::new(USERS);
    let (mut a, mut b) = (alice(), bob());
    let inv = ringing_call(&mut sim, &mut a, &mut b);
    let sdp = b.sdp();
    sim.recv(b.addr, &b.answer(&inv, 200, "OK", Some(&sdp)));
    let ok = sim.one_to(a.addr);
    assert_eq!(ok.status(), 200);
    sim.take();
    // RFC 3261 §13.3.1.4: retransmitted at T1, 2*T1, ... capped at T2; no ACK within 64*T1:
    // the call is ended with a BYE to both sides.
    let mut at = Vec::new();
    let start = sim.now;
    let mut byes = Vec::new();
    while byes.is_empty() && sim.now - start < Duration::from_secs(60) {
        sim.advance(Duration::from_millis(100));
        for s in sim.take() {
            match (s.status(), s.method()) {
                (200, Method::Invite) if s.peer.addr == a.addr => {
                    at.push((sim.now - start).as_millis())
                }
                (0, Method::Bye) => byes.push(s),
                _ => panic!("unexpected {}", text(&s)),
            }
        }
    }
    assert_eq!(at[..3], [500, 1500, 3500], "T1 doubling: {at:?}");
    let gaps: Vec<u128> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= 4000), "capped at T2: {gaps:?}");
    let ended = sim.now - start;
    assert!(
        ended >= Duration::from_secs(32) && ended <= Duration::from_secs(36),
        "gave up after {ended:?}"
    );
    let mut to: Vec<SocketAddr> = byes.iter().map(|s| s.peer.addr).collect();
    to.sort();
    assert_eq!(to, vec![b.addr, a.addr], "BYE to both parties");
    assert_eq!(sim.core.active_calls(), 1, "until the BYEs are answered");
    for bye in &byes {
        let ua = if bye.peer.addr == a.addr { &a } else { &b };
        sim.recv(ua.addr, &ua.answer(bye, 200, "OK", None));
    }
    assert_eq!(sim.core.active_calls(), 0);
    assert_eq!(sim.media.live(), 0);
}

/// Qualify probes are client transactions of the core's one owner table: an answer marks the
/// binding reachable, silence (Timer F) unreachable after `qualify_max_failures` (3) probes,
/// and nothing is left in the table afterwards.
#[test]
fn qualify_probes_go_through_the_owner_table() {
    let mut sim = Sim::new(&format!(
        "{USERS}\n[registrar]\nqualify_interval_secs = 60\n"
    ));
    let mut b = bob();
    assert_eq!(register(&mut sim, &mut b, 3600).status(), 200);
    sim.advance(Duration::from_secs(60));
    let probe = sim.one_to(b.addr);
    assert_eq!(probe.method(), Method::Options);
    assert_eq!(
        probe.msg.request_uri().unwrap().to_string(),
        "sip:102@198.51.100.8:5070"
    );
    assert_eq!(sim.core.owners_in_flight(), 1);
    sim.recv(b.addr, &b.answer(&probe, 200, "OK", None));
    assert!(sim.core.registrar().lookup("102", sim.now)[0].reachable);
    // Three unanswered probes (each retransmitted, then Timer F at 32 s): unreachable.
    let mut probes = 0;
    for _ in 0..3 {
        sim.advance(Duration::from_secs(60));
        probes += sim
            .take_to(b.addr)
            .iter()
            .filter(|s| s.method() == Method::Options)
            .map(|s| s.msg.top_via().unwrap().branch())
            .collect::<std::collections::HashSet<_>>()
            .len();
        sim.advance(Duration::from_secs(33));
        sim.take();
    }
    assert!(probes >= 3, "{probes} probes");
    assert!(!sim.core.registrar().lookup("102", sim.now)[0].reachable);
    sim.advance(Duration::from_secs(40));
    sim.take();
    assert!(
        sim.core.owners_in_flight() <= 1,
        "finished probes are forgotten"
    );
}

/// A refresh of the same binding is saved lazily (within `REFRESH_SAVE_DELAY`, 5 s): under a
/// re-registration load the full bindings file is not rewritten twice a second. A new binding
/// still pulls the pending save forward to `SAVE_DELAY` (issue #14).
#[test]
fn refreshes_are_saved_lazily_and_new_bindings_promptly() {
    let mut sim = Sim::new(USERS);
    let mut a = alice();
    assert_eq!(register(&mut sim, &mut a, 3600).status(), 200);
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.saved.len(),
        1,
        "a new binding is saved within the save delay"
    );

    // Refresh: credentials on the known nonce, straight to 200.
    let r = a.register(1800);
    sim.recv(a.addr, &r);
    assert_eq!(sim.one_to(a.addr).status(), 200);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.saved.len(), 1, "a refresh is not saved at once");
    sim.advance(Duration::from_secs(4));
    assert_eq!(sim.saved.len(), 2, "but within 5 s");
    let file = String::from_utf8(sim.saved[1].clone()).unwrap();
    assert!(file.contains("sip:101@[2001:db8::7]:5062"), "{file}");

    // A refresh pending, then a new binding: both saved within the save delay.
    let r = a.register(1800);
    sim.recv(a.addr, &r);
    assert_eq!(sim.one_to(a.addr).status(), 200);
    let mut b = bob();
    assert_eq!(register(&mut sim, &mut b, 3600).status(), 200);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.saved.len(), 3);
    let file = String::from_utf8(sim.saved[2].clone()).unwrap();
    assert!(
        file.contains("sip:101@") && file.contains("sip:102@"),
        "{file}"
    );
}

/// A REGISTER without credentials is answered as a stateless UAS (RFC 3261 §8.2.7): a 401,
/// no server transaction (the table never grows for it), and a retransmission gets the same
/// answer again with the same To tag. The REGISTER with credentials still gets a server
/// transaction (its 200 is kept for retransmissions).
#[test]
fn a_register_without_credentials_is_challenged_without_a_transaction() {
    let mut sim = Sim::new(USERS);
    let before = sim.core.tx_stats();
    let mut a = alice();
    let r = a.register(3600);
    let mut tags = Vec::new();
    for _ in 0..3 {
        sim.recv(a.addr, &r);
        let c = sim.one_to(a.addr);
        assert_eq!(c.status(), 401, "{}", text(&c));
        assert!(c.header(HeaderName::WwwAuthenticate).is_some());
        tags.push(to_tag(&c));
    }
    assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");
    let after = sim.core.tx_stats();
    assert_eq!((after.live, after.lingering), (0, 0));
    assert_eq!(
        after.slots, before.slots,
        "the 401s took room in the transaction table"
    );
    // A malformed one is still rejected with 400, also without a transaction.
    let bad = r.replace("CSeq: ", "CSeq: x");
    sim.recv(a.addr, &bad);
    assert_eq!(sim.one_to(a.addr).status(), 400);
    assert_eq!(sim.core.tx_stats().slots, before.slots);

    let c = {
        sim.recv(a.addr, &r);
        sim.one_to(a.addr)
    };
    a.challenged(&c);
    let r = a.register(3600);
    sim.recv(a.addr, &r);
    assert_eq!(sim.one_to(a.addr).status(), 200);
    assert_eq!(
        sim.core.tx_stats().lingering,
        1,
        "the 200 is kept for retransmissions"
    );
    // Its retransmission is absorbed by the transaction: the same 200 again.
    sim.recv(a.addr, &r);
    assert_eq!(sim.one_to(a.addr).status(), 200);
}
