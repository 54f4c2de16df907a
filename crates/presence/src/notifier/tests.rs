//! The notifier in virtual time with parsed SIP messages.

use super::*;
use crate::dialog_info::{Direction, Party};
use podpbx_sip::{Framing, Transport};

fn flow(ip: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        local: "[2001:db8::1]:5060".parse().unwrap(),
        remote: format!("[{ip}]:5062").parse().unwrap(),
        conn: 0,
    }
}

fn parse(data: &Bytes) -> Message {
    Message::parse(data.clone(), Framing::Datagram).expect("parse")
}

struct Sub {
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    contact: String,
    event: Option<String>,
    expires: Option<u32>,
    cseq: u32,
}

impl Sub {
    fn new(n: u32, event: &str) -> Sub {
        Sub {
            call_id: format!("sub{n}@phone"),
            from_tag: format!("ft{n}"),
            to_tag: None,
            contact: "sip:101@[2001:db8::7]:5062".into(),
            event: Some(event.into()),
            expires: Some(600),
            cseq: 1,
        }
    }

    fn msg(&self, resource: &str) -> Message {
        let mut s = format!(
            "SUBSCRIBE sip:{resource}@pbx.home SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bK{}{};rport\r\n\
             From: <sip:101@pbx.home>;tag={}\r\nTo: <sip:{resource}@pbx.home>{}\r\nCall-ID: {}\r\nCSeq: {} SUBSCRIBE\r\n\
             Contact: <{}>\r\nMax-Forwards: 70\r\n",
            self.call_id.len(),
            self.cseq,
            self.from_tag,
            self.to_tag.as_ref().map(|t| format!(";tag={t}")).unwrap_or_default(),
            self.call_id,
            self.cseq,
            self.contact
        );
        if let Some(e) = &self.event {
            s.push_str(&format!("Event: {e}\r\n"));
        }
        if let Some(e) = self.expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(s), Framing::Datagram).expect("subscribe")
    }
}

fn notifier(limits: Limits) -> Notifier {
    Notifier::new(limits, "pbx.home", "podpbx", IdGen::new([7; 16]))
}

fn hdr(m: &Message, name: &str) -> String {
    m.other_header(name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

fn notifies(n: &mut Notifier) -> Vec<(Outgoing, Message)> {
    let mut v = Vec::new();
    while let Some(o) = n.poll_outgoing() {
        let m = parse(&o.data);
        v.push((o, m));
    }
    v
}

#[test]
fn mwi_subscribe_notify_and_coalesced_changes() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    n.set_mwi(t0, "101", Counts { new: 1, old: 0 });
    let s = Sub::new(1, "message-summary");
    let req = s.msg("101");
    let r = n.subscribe(t0, &req, flow("2001:db8::7"), "101", "101");
    assert_eq!(r.status, 200);
    let resp = parse(&r.data);
    assert_eq!(hdr(&resp, "Expires"), "600");
    let to_tag = String::from_utf8_lossy(&resp.to_hdr().unwrap().tag().unwrap()).into_owned();
    assert!(hdr(&resp, "Contact").contains("sip:podpbx@[2001:db8::1]:5060"));
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    let (o, m) = &out[0];
    assert_eq!(m.method(), Some(&Method::Notify));
    assert!(m
        .start_line_raw()
        .starts_with(b"NOTIFY sip:101@[2001:db8::7]:5062 SIP/2.0"));
    assert_eq!(o.peer.addr, "[2001:db8::7]:5062".parse().unwrap());
    assert_eq!(hdr(m, "Event"), "message-summary");
    assert_eq!(hdr(m, "Subscription-State"), "active;expires=600");
    assert_eq!(hdr(m, "Content-Type"), mwi::CONTENT_TYPE);
    assert_eq!(hdr(m, "CSeq"), "1 NOTIFY");
    assert_eq!(
        String::from_utf8_lossy(&m.from_hdr().unwrap().tag().unwrap()),
        to_tag
    );
    assert_eq!(
        String::from_utf8_lossy(&m.to_hdr().unwrap().tag().unwrap()),
        "ft1"
    );
    assert_eq!(m.call_id().unwrap(), "sub1@phone");
    assert_eq!(
        mwi::parse(&String::from_utf8_lossy(&m.body)),
        Some((true, Counts { new: 1, old: 0 }))
    );
    // Two changes while the first NOTIFY is unanswered: one NOTIFY afterwards, with the last.
    n.set_mwi(t0, "101", Counts { new: 2, old: 0 });
    n.set_mwi(t0, "101", Counts { new: 0, old: 2 });
    assert!(notifies(&mut n).is_empty());
    n.notify_result(t0, o.id, Some(200));
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    let m = &out[0].1;
    assert_eq!(hdr(m, "CSeq"), "2 NOTIFY");
    assert_eq!(
        mwi::parse(&String::from_utf8_lossy(&m.body)),
        Some((false, Counts { new: 0, old: 2 }))
    );
    // The same counts again: nothing.
    n.notify_result(t0, out[0].0.id, Some(200));
    n.set_mwi(t0, "101", Counts { new: 0, old: 2 });
    assert!(notifies(&mut n).is_empty());
    assert_eq!(n.stats().active, 1);
}

#[test]
fn unknown_packages_and_bad_expiries() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    for ev in [Some("presence"), Some("x".repeat(300).as_str()), None] {
        let mut s = Sub::new(1, "");
        s.event = ev.map(String::from);
        let r = n.subscribe(t0, &s.msg("101"), flow("2001:db8::7"), "101", "101");
        assert_eq!(r.status, 489, "{ev:?}");
        assert_eq!(
            hdr(&parse(&r.data), "Allow-Events"),
            "message-summary, dialog"
        );
    }
    assert_eq!(n.stats().bad_event, 3);
    let mut s = Sub::new(2, "dialog");
    s.expires = Some(30);
    let r = n.subscribe(t0, &s.msg("102"), flow("2001:db8::7"), "101", "102");
    assert_eq!(r.status, 423);
    assert_eq!(hdr(&parse(&r.data), "Min-Expires"), "60");
    s.expires = Some(999_999);
    let r = n.subscribe(t0, &s.msg("102"), flow("2001:db8::7"), "101", "102");
    assert_eq!(hdr(&parse(&r.data), "Expires"), "3600");
    let mut s = Sub::new(3, "dialog");
    s.contact = String::new();
    let raw = String::from_utf8_lossy(&s.msg("102").buf).replace("Contact: <>\r\n", "");
    let r = n.subscribe(
        t0,
        &Message::parse(Bytes::from(raw), Framing::Datagram).unwrap(),
        flow("2001:db8::7"),
        "101",
        "102",
    );
    assert_eq!(r.status, 400);
    assert_eq!(n.stats().active, 1);
    assert!(notifies(&mut n).len() == 1);
}

#[test]
fn refresh_unsubscribe_and_strangers() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    let mut s = Sub::new(1, "dialog");
    let r = n.subscribe(t0, &s.msg("102"), flow("2001:db8::7"), "101", "102");
    let tag =
        String::from_utf8_lossy(&parse(&r.data).to_hdr().unwrap().tag().unwrap()).into_owned();
    let first = notifies(&mut n);
    n.notify_result(t0, first[0].0.id, Some(200));
    s.to_tag = Some(tag.clone());
    s.cseq = 2;
    let req = s.msg("102");
    assert!(n.owns(&req));
    // From another address: refused.
    assert_eq!(n.refresh(t0, &req, flow("2001:db8::66")).status, 403);
    // Refresh: 200 and a NOTIFY with the new expiry.
    let t1 = t0 + Duration::from_secs(300);
    let r = n.refresh(t1, &req, flow("2001:db8::7"));
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&parse(&r.data).to_hdr().unwrap().tag().unwrap()),
        tag
    );
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    assert_eq!(hdr(&out[0].1, "Subscription-State"), "active;expires=600");
    assert_eq!(n.poll_timeout(), Some(t1 + Duration::from_secs(600)));
    // Unknown tags: 481.
    let mut other = Sub::new(9, "dialog");
    other.to_tag = Some("nope".into());
    assert!(!n.owns(&other.msg("102")));
    assert_eq!(
        n.refresh(t1, &other.msg("102"), flow("2001:db8::7")).status,
        481
    );
    // Expires 0: 200, last NOTIFY terminated, gone.
    s.expires = Some(0);
    s.cseq = 3;
    assert_eq!(
        n.refresh(t1, &s.msg("102"), flow("2001:db8::7")).status,
        200
    );
    let out = notifies(&mut n);
    assert_eq!(
        hdr(&out.last().unwrap().1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    assert_eq!(n.stats().active, 0);
    assert!(!n.owns(&s.msg("102")));
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn expiry_and_failed_notifies_remove_subscriptions() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    n.subscribe(
        t0,
        &Sub::new(1, "message-summary").msg("101"),
        flow("2001:db8::7"),
        "101",
        "101",
    );
    let mut s2 = Sub::new(2, "message-summary");
    s2.contact = "sip:101@[2001:db8::8]".into();
    n.subscribe(t0, &s2.msg("101"), flow("2001:db8::8"), "101", "101");
    let mut s3 = Sub::new(3, "message-summary");
    s3.contact = "sip:101@[2001:db8::9]".into();
    n.subscribe(t0, &s3.msg("101"), flow("2001:db8::9"), "101", "101");
    let out = notifies(&mut n);
    assert_eq!(out.len(), 3);
    assert_eq!(n.stats().active, 3);
    n.notify_result(t0, out[0].0.id, Some(200));
    n.notify_result(t0, out[1].0.id, Some(481));
    n.notify_result(t0, out[2].0.id, None);
    assert_eq!(n.stats().active, 1);
    assert_eq!(n.stats().failed, 2);
    // The survivor expires: last NOTIFY with reason=timeout.
    n.handle_timeout(t0 + Duration::from_secs(599));
    assert_eq!(n.stats().active, 1);
    n.handle_timeout(t0 + Duration::from_secs(600));
    assert_eq!(n.stats().active, 0);
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    assert_eq!(
        hdr(&out[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
}

#[test]
fn floods_stay_bounded() {
    let t0 = Instant::now();
    let mut n = notifier(Limits {
        max_subscriptions: 6,
        max_per_user: 3,
        ..Limits::default()
    });
    // One phone re-subscribing 1000 times with new Call-IDs (a reboot loop): replaced.
    for i in 0..1000 {
        let r = n.subscribe(
            t0,
            &Sub::new(i, "dialog").msg("102"),
            flow("2001:db8::7"),
            "101",
            "102",
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(n.stats().active, 1);
    // Distinct watches by one user: at most 3, the oldest goes.
    for i in 0..10 {
        let mut s = Sub::new(2000 + i, "dialog");
        s.contact = format!("sip:101@[2001:db8::7]:{}", 6000 + i);
        assert_eq!(
            n.subscribe(t0, &s.msg("102"), flow("2001:db8::7"), "101", "102")
                .status,
            200
        );
    }
    assert_eq!(n.stats().active, 3);
    assert!(n.stats().evicted >= 7);
    // Other users fill the table; then 503.
    for u in ["102", "103", "104"] {
        let mut s = Sub::new(3000, "message-summary");
        s.call_id = format!("c-{u}");
        assert_eq!(
            n.subscribe(t0, &s.msg(u), flow("2001:db8::8"), u, u).status,
            200
        );
    }
    let mut s = Sub::new(4000, "message-summary");
    s.call_id = "c-105".into();
    let r = n.subscribe(t0, &s.msg("105"), flow("2001:db8::8"), "105", "105");
    assert_eq!(r.status, 503);
    assert_eq!(hdr(&parse(&r.data), "Retry-After"), "60");
    assert_eq!(n.stats().active, 6);
    assert_eq!(n.stats().refused, 1);
    // Every NOTIFY answered or not, the indexes match the table.
    let _ = notifies(&mut n);
    assert_eq!(n.by_dialog.len(), 6);
    assert_eq!(n.expiry.len(), 6);
    assert_eq!(n.by_user.values().map(BTreeSet::len).sum::<usize>(), 6);
}

fn ringing(id: &str, state: State) -> Dialog {
    Dialog {
        id: id.into(),
        state,
        direction: Direction::Recipient,
        remote: Some(Party {
            uri: "sip:door@pbx.home".into(),
            display: Some("Door".into()),
        }),
        call_id: Some("c1".into()),
        local_tag: Some("a".into()),
        remote_tag: Some("b".into()),
    }
}

#[test]
fn blf_follows_a_call() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    n.subscribe(
        t0,
        &Sub::new(1, "dialog").msg("102"),
        flow("2001:db8::7"),
        "101",
        "102",
    );
    let mut last = notifies(&mut n).pop().unwrap();
    let body = |m: &Message| String::from_utf8_lossy(&m.body).into_owned();
    assert!(body(&last.1).contains("version=\"0\""));
    assert!(!body(&last.1).contains("<dialog "));
    let mut step = |n: &mut Notifier, d: Vec<Dialog>| {
        n.notify_result(t0, last.0.id, Some(200));
        n.set_dialogs(t0, "102", d);
        last = notifies(n).pop().expect("a NOTIFY");
        body(&last.1)
    };
    let b = step(&mut n, vec![ringing("d1", State::Early)]);
    assert!(
        b.contains("version=\"1\"") && b.contains("<state>early</state>"),
        "{b}"
    );
    let b = step(&mut n, vec![ringing("d1", State::Confirmed)]);
    assert!(
        b.contains("version=\"2\"") && b.contains("<state>confirmed</state>"),
        "{b}"
    );
    let b = step(&mut n, vec![]);
    assert!(
        b.contains("version=\"3\"") && b.contains("<state>terminated</state>"),
        "{b}"
    );
    let b = step(&mut n, vec![ringing("d2", State::Early)]);
    assert!(b.contains("id=\"d2\"") && !b.contains("id=\"d1\""), "{b}");
    // Other entities do not concern this subscription.
    n.notify_result(t0, last.0.id, Some(200));
    n.set_dialogs(t0, "103", vec![ringing("x", State::Early)]);
    assert!(notifies(&mut n).is_empty());
}

#[test]
fn unsolicited_mwi_skips_subscribers() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    n.set_mwi(t0, "101", Counts { new: 3, old: 1 });
    n.subscribe(
        t0,
        &Sub::new(1, "message-summary").msg("101"),
        flow("2001:db8::7"),
        "101",
        "101",
    );
    let _ = notifies(&mut n);
    n.unsolicited_mwi(
        "101",
        &[
            ("sip:101@[2001:db8::7]:5062".into(), flow("2001:db8::7")),
            (
                "sip:101@198.51.100.20".into(),
                Flow {
                    transport: Transport::Tcp,
                    local: "198.51.100.10:5060".parse().unwrap(),
                    remote: "198.51.100.20:40000".parse().unwrap(),
                    conn: 4,
                },
            ),
        ],
    );
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    let (o, m) = &out[0];
    assert_eq!(o.peer.conn, 4);
    assert!(hdr(m, "Via").starts_with("SIP/2.0/TCP 198.51.100.10:5060;branch=z9hG4bK"));
    assert_eq!(hdr(m, "Event"), "message-summary");
    assert!(m.to_hdr().unwrap().tag().is_none());
    assert_eq!(
        mwi::parse(&String::from_utf8_lossy(&m.body)),
        Some((true, Counts { new: 3, old: 1 }))
    );
    // Its answer is not tracked.
    n.notify_result(t0, o.id, Some(481));
    assert_eq!(n.stats().active, 1);
}

#[test]
fn fetch_gets_one_terminated_notify() {
    let t0 = Instant::now();
    let mut n = notifier(Limits::default());
    let mut s = Sub::new(1, "message-summary;id=7");
    s.expires = Some(0);
    let r = n.subscribe(t0, &s.msg("101"), flow("2001:db8::7"), "101", "101");
    assert_eq!(r.status, 200);
    let out = notifies(&mut n);
    assert_eq!(out.len(), 1);
    assert_eq!(
        hdr(&out[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    assert_eq!(hdr(&out[0].1, "Event"), "message-summary;id=7");
    assert_eq!(n.stats().active, 0);
}
