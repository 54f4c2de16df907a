//! Call paths that only the black-box tests reached before the engine split (issue #13):
//! CANCEL races, sequential groups, failure mapping, transfer failures, re-INVITE without
//! offer and glare, DTMF, media timeout, missing ACK, delayed offer, trunk digest rounds.

use super::*;

/// An in-dialog request from the caller (101) with our To tag `tag`.
fn from_a(method: &str, tag: &str, cseq: u32, sdp: Option<&str>) -> String {
    let body = sdp.unwrap_or("");
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!(
        "{method} sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKa{method}{cseq}\r\n\
         From: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:101@[2001:db8:1::a]:5062>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An in-dialog request from the callee of our INVITE `inv` (its To tag `btag`).
fn from_b(inv: &Bytes, method: &str, cseq: u32, extra: &str, body: Option<(&str, &str)>) -> String {
    let inv = parse(inv);
    let call_id = String::from_utf8_lossy(&inv.call_id().unwrap()).into_owned();
    let our_tag = String::from_utf8_lossy(&inv.from_hdr().unwrap().tag().unwrap()).into_owned();
    let (ct, body) = match body {
        Some((ct, b)) => (format!("Content-Type: {ct}\r\n"), b),
        None => (String::new(), ""),
    };
    format!(
        "{method} sip:podpbx@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::20]:5060;branch=z9hG4bKb{method}{cseq}\r\n\
         From: <sip:102@pbx>;tag=btag\r\nTo: <sip:101@pbx>;tag={our_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:102@[2001:db8:1::20]:5060>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn b_flow() -> Flow {
    flow("[2001:db8:1::20]:5060", "[2001:db8::1]:5060")
}

/// The body of the response with `status` among `outs`.
fn response_text(outs: &[Output], status: u16) -> Option<String> {
    outs.iter().find_map(|o| match o {
        Output::Respond {
            status: s, data, ..
        } if *s == status => Some(text(data)),
        _ => None,
    })
}

/// Our To tag in the caller's dialog, from a response to its INVITE.
fn a_tag(outs: &[Output], status: u16) -> String {
    let r = response_text(outs, status).expect("response");
    let m = parse(&Bytes::from(r));
    String::from_utf8_lossy(&m.to_hdr().unwrap().tag().unwrap()).into_owned()
}

/// The caller cancels while a callee's 2xx is on its way: the caller gets 487 only, the 2xx
/// that crossed the CANCEL is acknowledged and hung up (RFC 3261 §9.1, §15), and the call
/// ends as cancelled once the BYE is answered.
#[test]
fn caller_cancel_crossing_a_2xx_acks_and_byes_the_callee() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    let tx = *h.b.by_invite_tx.keys().next().unwrap();
    h.b.handle_cancel(h.now, tx);
    let outs = h.drain();
    assert_eq!(responses(&outs), vec![487]);
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert!(responses(&outs).is_empty(), "the caller hears nothing more");
    assert_eq!(stateless_acks(&outs), 1, "the crossing 2xx is ACKed");
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1, "and hung up");
    assert!(text(&byes[0].1).contains(";tag=btag"));
    // A retransmission of that 2xx gets the same ACK again, nothing else.
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 1);
    assert!(requests(&outs, "BYE").is_empty());
    assert_eq!(h.b.active_calls(), 1, "the BYE is still in flight");
    let outs = h.answer(byes[0].0, &byes[0].1, 200, "btag", None);
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(c.status, 487);
    assert_eq!(c.legs[1].status, 200);
    assert_eq!(h.b.active_calls(), 0);
}

/// A CANCEL waits for a provisional response (RFC 3261 §9.1); a callee that never sends one is
/// given up after 64*T1: its transaction is abandoned and the call finishes.
#[test]
fn cancel_before_any_provisional_waits_then_the_guard_gives_up() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, _) = requests(&outs, "INVITE")[0].clone();
    let tx = *h.b.by_invite_tx.keys().next().unwrap();
    h.b.handle_cancel(h.now, tx);
    let outs = h.drain();
    assert_eq!(responses(&outs), vec![487]);
    assert!(
        requests(&outs, "CANCEL").is_empty(),
        "no CANCEL before a 1xx"
    );
    let outs = h.advance(Duration::from_secs(31));
    assert!(outs.is_empty(), "{outs:?}");
    let outs = h.advance(Duration::from_secs(2));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Abandon { id: a } if *a == id)),
        "{outs:?}"
    );
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.legs[1].status, 487);
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(h.b.active_calls(), 0);
}

/// A BYE in the caller's early dialog: 200, the INVITE still gets its 487 (RFC 3261 §15.1.2)
/// and the ringing callee is cancelled.
#[test]
fn bye_in_the_callers_early_dialog_gets_200_then_487_and_cancels() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(id, &data, 180, "btag", None);
    let tag = a_tag(&outs, 180);
    let outs = h.in_dialog(from_a("BYE", &tag, 2, None), h.a_flow);
    assert_eq!(responses(&outs), vec![200, 487]);
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    let outs = h.answer(id, &data, 487, "btag", None);
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.hangup_by.as_deref(), Some("caller"));
    assert_eq!(c.status, 487);
}

fn seq_config(h: &mut H) {
    let cfg = format!(
        "{CFG}\n[[groups]]\nname = \"seq\"\nmembers = [\"102\", \"103\"]\nstrategy = \"sequential\"\nring_timeout_secs = 10\n\
         [[dialplan]]\nname = \"hunt\"\nmatch = {{ number = \"700\", from = \"local\" }}\naction = \"ring\"\ntargets = [\"seq\"]\n"
    );
    h.b.set_config(Arc::new(Config::from_str(&cfg, "t.toml").expect("config")));
}

/// A sequential group rings one member at a time for its ring time: the first is cancelled
/// when its time is up and the next one rings; the last one's busy is what the caller hears.
#[test]
fn sequential_group_moves_on_after_each_ring_timeout() {
    let mut h = H::new();
    seq_config(&mut h);
    let outs = h.invite("700", Caller::User("101".into()), Some(SDP_A));
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 1, "one member at a time");
    assert!(text(&invs[0].1).starts_with("INVITE sip:102@"));
    let (id1, data1) = invs[0].clone();
    h.answer(id1, &data1, 180, "b1", None);
    let outs = h.advance(Duration::from_secs(9));
    assert!(requests(&outs, "INVITE").is_empty(), "still 102's turn");
    let outs = h.advance(Duration::from_secs(2));
    assert_eq!(requests(&outs, "CANCEL").len(), 1, "102's time is up");
    let invs = requests(&outs, "INVITE");
    assert_eq!(invs.len(), 1);
    assert!(text(&invs[0].1).starts_with("INVITE sip:103@"));
    assert!(responses(&outs).is_empty(), "the caller keeps waiting");
    // 102's 487 changes nothing; 103 is busy: the caller hears 486.
    let outs = h.answer(id1, &data1, 487, "b1", None);
    assert!(responses(&outs).is_empty() && requests(&outs, "INVITE").is_empty());
    let outs = h.answer(invs[0].0, &invs[0].1, 486, "b2", None);
    assert_eq!(responses(&outs), vec![486]);
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.disposition, Disposition::Busy);
    assert_eq!(c.legs.len(), 3);
}

/// A sequential group whose last member does not answer in time: 480.
#[test]
fn sequential_group_with_nobody_answering_gives_480() {
    let mut h = H::new();
    seq_config(&mut h);
    let outs = h.invite("700", Caller::User("101".into()), Some(SDP_A));
    let first = requests(&outs, "INVITE")[0].clone();
    h.answer(first.0, &first.1, 180, "b1", None);
    let outs = h.advance(Duration::from_secs(10));
    let second = requests(&outs, "INVITE")[0].clone();
    h.answer(second.0, &second.1, 180, "b2", None);
    let outs = h.advance(Duration::from_secs(10));
    assert_eq!(responses(&outs), vec![480]);
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    h.answer(first.0, &first.1, 487, "b1", None);
    let outs = h.answer(second.0, &second.1, 487, "b2", None);
    assert_eq!(cdr(&outs).expect("cdr").disposition, Disposition::NoAnswer);
}

/// The final status of a parallel step: a 6xx from one fork wins over 4xx from the others;
/// every fork busy is 486.
#[test]
fn parallel_step_failure_mapping() {
    let mut h = H::new();
    let outs = h.invite("600", Caller::User("101".into()), Some(SDP_A));
    let invs = requests(&outs, "INVITE");
    for ((id, data), code) in invs.iter().zip([486, 603, 480]) {
        h.answer(*id, data, code, "b", None);
    }
    assert_eq!(responses(&h.outs)[1..], [603]);
    assert_eq!(cdr(&h.outs).unwrap().disposition, Disposition::Rejected);

    let mut h = H::new();
    let outs = h.invite("600", Caller::User("101".into()), Some(SDP_A));
    let invs = requests(&outs, "INVITE");
    for ((id, data), code) in invs.iter().zip([486, 600, 486]) {
        h.answer(*id, data, code, "b", None);
    }
    assert_eq!(responses(&h.outs)[1..], [486]);
    assert_eq!(cdr(&h.outs).unwrap().disposition, Disposition::Busy);
}

/// A transfer whose target is busy: NOTIFY with the failure (sipfrag), the old bridge back;
/// a REFER with Replaces naming no dialog gets 202 and a NOTIFY with 481; a REFER before the
/// answer gets 403.
#[test]
fn refer_failures_notify_and_keep_the_call() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    let refer = |cseq, target: &str| {
        from_b(
            &data,
            "REFER",
            cseq,
            &format!("Refer-To: {target}\r\n"),
            None,
        )
    };
    let outs = h.in_dialog(refer(5, "<sip:103@pbx>"), b_flow());
    assert_eq!(responses(&outs), vec![403], "no transfer before the answer");
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    let tag = a_tag(&outs, 200);
    let ack = from_a("ACK", &tag, 1, None);
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    h.drain();
    let outs = h.in_dialog(
        refer(6, "<sip:103@pbx?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>"),
        b_flow(),
    );
    // RFC 3891 §3 as the transferor learns it: no such dialog, 481 in a final NOTIFY; the
    // call stays as it was.
    assert_eq!(responses(&outs), vec![202]);
    let notify = requests(&outs, "NOTIFY");
    assert_eq!(notify.len(), 1);
    let t = text(&notify[0].1);
    assert!(
        t.contains("SIP/2.0 481 ") && t.contains("Subscription-State: terminated"),
        "{t}"
    );
    assert!(requests(&outs, "BYE").is_empty() && requests(&outs, "INVITE").is_empty());
    let outs = h.in_dialog(refer(7, "<sip:103@pbx>"), b_flow());
    assert_eq!(responses(&outs), vec![202]);
    let target = requests(&outs, "INVITE")[0].clone();
    let outs = h.answer(target.0, &target.1, 486, "ctag", None);
    let notify = requests(&outs, "NOTIFY");
    assert_eq!(notify.len(), 1);
    let t = text(&notify[0].1);
    assert!(t.contains("SIP/2.0 486 Busy Here"), "{t}");
    assert!(t.contains("Subscription-State: terminated"), "{t}");
    assert!(requests(&outs, "BYE").is_empty(), "the transferor stays");
    // The old bridge is back: the caller's BYE reaches 102.
    let outs = h.in_dialog(from_a("BYE", &tag, 2, None), h.a_flow);
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1);
    assert_eq!(
        header_of(&byes[0].1, "Call-ID"),
        header_of(&data, "Call-ID")
    );
    // A transfer to a number without a rule: 404 in the NOTIFY.
    let mut h = H::new();
    let (_, data) = answered_call(&mut h);
    let outs = h.in_dialog(
        from_b(&data, "REFER", 5, "Refer-To: <sip:999@pbx>\r\n", None),
        b_flow(),
    );
    assert_eq!(responses(&outs), vec![202]);
    let notes: Vec<String> = requests(&outs, "NOTIFY")
        .iter()
        .map(|n| text(&n.1))
        .collect();
    assert_eq!(notes.len(), 2);
    assert!(notes[0].contains("SIP/2.0 100 Trying"));
    assert!(notes[1].contains("SIP/2.0 404 Not Found"), "{}", notes[1]);
}

/// A re-INVITE without SDP (the callee makes the offer in its 2xx, the caller answers in its
/// ACK), a second re-INVITE meanwhile gets 491 (RFC 3261 §14.1), and the relayed 2xx is
/// retransmitted to the caller until its ACK.
#[test]
fn offerless_reinvite_answer_in_ack_glare_and_2xx_retransmission() {
    let mut h = H::new();
    let (tag, data) = answered_call(&mut h);
    let outs = h.in_dialog(from_a("INVITE", &tag, 2, None), h.a_flow);
    assert_eq!(responses(&outs), vec![100]);
    let re = requests(&outs, "INVITE");
    assert_eq!(re.len(), 1);
    assert!(!text(&re[0].1).contains("application/sdp"), "no offer");
    // Glare: the callee re-INVITEs meanwhile.
    let outs = h.in_dialog(
        from_b(&data, "INVITE", 9, "", Some(("application/sdp", SDP_B))),
        b_flow(),
    );
    assert_eq!(responses(&outs), vec![491]);
    assert!(requests(&outs, "INVITE").is_empty());
    // The callee's 2xx carries the offer: relayed, our ACK waits for the caller's answer.
    let outs = h.answer(re[0].0, &re[0].1, 200, "btag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 0, "the ACK waits for the answer");
    let ok = response_text(&outs, 200).expect("200 to the caller");
    assert!(
        ok.contains("c=IN IP6 2001:db8::10") && !ok.contains("2001:db8:1::b"),
        "{ok}"
    );
    let outs = h.advance(Duration::from_millis(600));
    assert!(
        outs.iter().any(
            |o| matches!(o, Output::Stateless { data, .. } if data.starts_with(b"SIP/2.0 200"))
        ),
        "retransmitted until the ACK"
    );
    let answer = SDP_A.replace("4000", "4002");
    let ack = from_a("ACK", &tag, 2, Some(&answer));
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    let outs = h.drain();
    let acks: Vec<String> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Stateless { data, .. } if data.starts_with(b"ACK ") => Some(text(data)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1);
    assert!(
        acks[0].contains("CSeq: 2 ACK") && acks[0].contains("c=IN IP6 2001:db8::10"),
        "the answer, anchored, in our ACK:\n{}",
        acks[0]
    );
    assert!(
        h.media
            .0
            .lock()
            .unwrap()
            .remotes
            .iter()
            .any(|r| r.2.port() == 4002),
        "the relay learns the caller's new port"
    );
    let outs = h.advance(Duration::from_secs(5));
    assert!(outs.is_empty(), "no retransmission after the ACK: {outs:?}");
    // With the offer done, a new re-INVITE goes through again.
    let outs = h.in_dialog(
        from_b(&data, "INVITE", 10, "", Some(("application/sdp", SDP_B))),
        b_flow(),
    );
    assert_eq!(responses(&outs), vec![100]);
    assert_eq!(requests(&outs, "INVITE").len(), 1);
}

/// An INFO with `application/dtmf` from the callee, towards a caller whose SDP offered
/// telephone-event (`auto`): injected as RFC 4733 on the caller's relay leg, answered 200.
#[test]
fn info_application_dtmf_becomes_rfc4733_towards_a_telephone_event_caller() {
    let mut h = H::new();
    let (_, data) = answered_call(&mut h);
    let outs = h.in_dialog(
        from_b(&data, "INFO", 7, "", Some(("application/dtmf", "7"))),
        b_flow(),
    );
    assert_eq!(responses(&outs), vec![200]);
    assert!(requests(&outs, "INFO").is_empty());
    let m = h.media.0.lock().unwrap();
    assert_eq!(m.dtmf.len(), 1);
    assert_eq!((m.dtmf[0].1, m.dtmf[0].2), (MediaLeg::A, '7'));
}

/// The relay's media timeout hangs up a bridged call (BYE both ways, reason in the CDR) but
/// not one that still rings.
#[test]
fn media_timeout_ends_a_bridged_call_only() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    let media = only_media(&h);
    h.b.media_timeout(h.now, media);
    assert!(h.drain().is_empty(), "ringing: nothing");
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    let tag = a_tag(&outs, 200);
    h.b.handle_ack(h.now, &parse(&Bytes::from(from_a("ACK", &tag, 1, None))));
    h.drain();
    h.b.media_timeout(h.now, media);
    let outs = h.drain();
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 2, "both legs hung up");
    h.answer(byes[0].0, &byes[0].1, 200, "x", None);
    let outs = h.answer(byes[1].0, &byes[1].1, 200, "x", None);
    let c = cdr(&outs).expect("cdr");
    assert_eq!(c.reason, "media_timeout");
    assert_eq!(c.hangup_by.as_deref(), Some("system"));
    assert_eq!(c.disposition, Disposition::Answered);
    assert!(h.media.0.lock().unwrap().released.contains(&media));
}

/// No ACK for our 2xx within 64*T1: the call is hung up (RFC 3261 §13.3.1.4).
#[test]
fn no_ack_for_our_2xx_ends_the_call() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 200, "btag", Some(SDP_B));
    let outs = h.advance(Duration::from_secs(31));
    let retx = outs
        .iter()
        .filter(|o| matches!(o, Output::Stateless { data, .. } if data.starts_with(b"SIP/2.0 200")))
        .count();
    // T1 doubling up to T2: at 0.5, 1.5, 3.5, 7.5, 11.5, ... 27.5 s.
    assert_eq!(retx, 9);
    assert!(requests(&outs, "BYE").is_empty());
    // The last one at 31.5 s; at 35.5 s, 64*T1 have passed.
    let outs = h.advance(Duration::from_secs(4));
    assert!(requests(&outs, "BYE").is_empty());
    let outs = h.advance(Duration::from_secs(1));
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 2, "{outs:?}");
    h.answer(byes[0].0, &byes[0].1, 200, "x", None);
    let outs = h.answer(byes[1].0, &byes[1].1, 200, "x", None);
    assert_eq!(cdr(&outs).expect("cdr").reason, "no_ack");
}

/// Delayed offer: an INVITE without SDP goes out without SDP; the callee's offer in its 2xx
/// reaches the caller rewritten, and the caller's answer in its ACK reaches the callee in ours.
#[test]
fn delayed_offer_initial_invite() {
    let mut h = H::new();
    let outs = h.invite("102", Caller::User("101".into()), None);
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    assert!(!text(&data).contains("application/sdp"));
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 0, "our ACK waits for the answer");
    let ok = response_text(&outs, 200).expect("200");
    assert!(ok.contains("c=IN IP6 2001:db8::10"), "{ok}");
    let tag = a_tag(&outs, 200);
    let ack = from_a("ACK", &tag, 1, Some(SDP_A));
    assert!(h.b.handle_ack(h.now, &parse(&Bytes::from(ack))));
    let outs = h.drain();
    let ack_b = outs
        .iter()
        .find_map(|o| match o {
            Output::Stateless { data, .. } if data.starts_with(b"ACK ") => Some(text(data)),
            _ => None,
        })
        .expect("ACK to the callee");
    assert!(
        ack_b.contains("c=IN IP6 2001:db8::10") && !ack_b.contains("2001:db8:1::a"),
        "{ack_b}"
    );
}

fn trunk_config(h: &mut H) -> TrunkDir {
    let cfg = format!(
        "{CFG}\n[[trunks]]\nname = \"prov\"\nhost = \"2001:db8:ffff::1\"\nusername = \"4930\"\npassword = \"secret\"\n\
         [[dialplan]]\nname = \"out\"\nmatch = {{ prefix = \"0\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"prov\"\n"
    );
    h.b.set_config(Arc::new(Config::from_str(&cfg, "t.toml").expect("config")));
    TrunkDir(std::mem::take(&mut h.dir))
}

/// A provider's 401 is answered with `Authorization` (not `Proxy-Authorization`), at most
/// twice; a third challenge fails the call with 503 (credentials not accepted).
#[test]
fn trunk_401_answered_twice_then_503() {
    let mut h = H::new();
    let dir = trunk_config(&mut h);
    let inv_text = format!(
        "INVITE sip:0301@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKt9;rport\r\nFrom: <sip:101@pbx>;tag=a\r\n\
         To: <sip:0301@pbx>\r\nCall-ID: out9@a\r\nCSeq: 1 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&inv_text, Caller::User("101".into()), Some(&dir));
    let mut inv = requests(&outs, "INVITE")[0].clone();
    let mut cseqs = vec![parse(&inv.1).cseq().unwrap().seq];
    for round in 0..3 {
        let req = parse(&inv.1);
        let challenge = ResponseBuilder::new(&req, 401, "Unauthorized", None)
            .to_tag("p")
            .header(
                "WWW-Authenticate",
                &format!("Digest realm=\"prov\", nonce=\"n{round}\", qop=\"auth\""),
            )
            .build();
        h.b.handle_response(h.now, inv.0, &parse(&challenge), &dir);
        let outs = h.drain();
        let again = requests(&outs, "INVITE");
        if round == 2 {
            assert!(again.is_empty(), "no third answer");
            assert_eq!(responses(&outs), vec![503]);
            break;
        }
        assert_eq!(again.len(), 1, "round {round}");
        let t = parse(&again[0].1);
        let auth = t.other_header("Authorization").expect("Authorization");
        assert!(String::from_utf8_lossy(&auth).contains(&format!("nonce=\"n{round}\"")));
        assert!(t.other_header("Proxy-Authorization").is_none());
        cseqs.push(t.cseq().unwrap().seq);
        inv = again[0].clone();
    }
    assert_eq!(cseqs, vec![1, 2, 3]);
    let c = cdr(&h.outs).expect("cdr");
    assert_eq!(c.disposition, Disposition::Failed);
    assert_eq!(c.legs[1].status, 401);
    assert_eq!(h.b.active_calls(), 0);
}

/// A late response to a superseded INVITE (the one that was challenged) changes nothing.
#[test]
fn trunk_responses_to_the_challenged_invite_are_ignored() {
    let mut h = H::new();
    let dir = trunk_config(&mut h);
    let msg_text = "INVITE sip:0302@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKt8;rport\r\nFrom: <sip:101@pbx>;tag=a\r\n\
         To: <sip:0302@pbx>\r\nCall-ID: out8@a\r\nCSeq: 1 INVITE\r\nContact: <sip:101@[2001:db8:1::a]:5062>\r\nContent-Length: 0\r\n\r\n";
    let outs = h.invite_text(msg_text, Caller::User("101".into()), Some(&dir));
    let first = requests(&outs, "INVITE")[0].clone();
    let req = parse(&first.1);
    let challenge = ResponseBuilder::new(&req, 407, "Proxy Authentication Required", None)
        .to_tag("p")
        .header("Proxy-Authenticate", "Digest realm=\"prov\", nonce=\"x\"")
        .build();
    h.b.handle_response(h.now, first.0, &parse(&challenge), &dir);
    let second = requests(&h.drain(), "INVITE")[0].clone();
    // A stray 200 for the first INVITE: ignored (no ACK, no answer to the caller).
    let stray = ResponseBuilder::new(&req, 200, "OK", None)
        .to_tag("p")
        .build();
    h.b.handle_response(h.now, first.0, &parse(&stray), &dir);
    assert!(h.drain().is_empty());
    let ok = ResponseBuilder::new(&parse(&second.1), 200, "OK", None)
        .to_tag("p")
        .header("Contact", "<sip:prov@[2001:db8:ffff::1]>")
        .body("application/sdp", SDP_B.as_bytes())
        .build();
    h.b.handle_response(h.now, second.0, &parse(&ok), &dir);
    let outs = h.drain();
    assert_eq!(responses(&outs), vec![200]);
    assert_eq!(
        stateless_acks(&outs),
        0,
        "delayed offer: the ACK waits for the answer"
    );
}
