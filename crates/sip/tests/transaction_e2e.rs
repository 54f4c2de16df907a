//! Transaction layer end to end: messages written as text, parsed, and fed through the
//! `Message`-based entry points.

use bytes::Bytes;
use podpbx_sip::transaction::{
    ClientState, Limits, RequestDisposition, RequestInfo, ResponseDisposition, ServerState, Timers,
    TransactionLayer, TxError, TxEvent, TxId,
};
use podpbx_sip::{Framing, Message, Method, Peer, ResponseBuilder, Transport};
use std::time::{Duration, Instant};

fn udp() -> Peer {
    Peer {
        addr: "192.0.2.10:5060".parse().unwrap(),
        transport: Transport::Udp,
        conn: 0,
    }
}

fn tcp() -> Peer {
    Peer {
        addr: "192.0.2.10:5060".parse().unwrap(),
        transport: Transport::Tcp,
        conn: 3,
    }
}

/// Joins lines with CRLF and appends the blank line ending the header section.
fn sip(lines: &[&str]) -> Bytes {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    Bytes::from(s)
}

fn parse(b: &Bytes) -> Message {
    Message::parse(b.clone(), Framing::Datagram).expect("test message parses")
}

fn invite(branch: &str, via_host: &str) -> Bytes {
    sip(&[
        "INVITE sip:bob@pbx.example.com SIP/2.0",
        &format!("Via: SIP/2.0/UDP {via_host}:5060;branch={branch}"),
        "Max-Forwards: 70",
        "Route: <sip:edge.example.com;lr>",
        "From: \"Alice\" <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@pbx.example.com>",
        "Call-ID: call-1@example.com",
        "CSeq: 314 INVITE",
        "Contact: <sip:alice@192.0.2.10:5060>",
        "Content-Length: 0",
    ])
}

fn response(code: u16, reason: &str, branch: &str, method: &str, to_tag: Option<&str>) -> Bytes {
    let to = match to_tag {
        Some(t) => format!("To: <sip:bob@pbx.example.com>;tag={t}"),
        None => "To: <sip:bob@pbx.example.com>".to_string(),
    };
    sip(&[
        &format!("SIP/2.0 {code} {reason}"),
        &format!("Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}"),
        "From: \"Alice\" <sip:alice@example.com>;tag=a1",
        &to,
        "Call-ID: call-1@example.com",
        &format!("CSeq: 314 {method}"),
        "Content-Length: 0",
    ])
}

fn drain(l: &mut TransactionLayer) -> Vec<Bytes> {
    std::iter::from_fn(|| l.poll_transmit())
        .map(|t| t.data)
        .collect()
}

/// Named so that `cargo test -p podpbx-sip transaction` selects every test here.
mod transaction {
    use super::*;

    #[test]
    fn uac_invite_rejected_gets_layer_built_ack() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let wire = invite("z9hG4bKuac1", "192.0.2.10");
        let id = l
            .send_request(
                t0,
                Bytes::from_static(b"z9hG4bKuac1"),
                Method::Invite,
                wire.clone(),
                udp(),
            )
            .unwrap();
        assert_eq!(drain(&mut l), vec![wire.clone()]);

        let trying = parse(&response(100, "Trying", "z9hG4bKuac1", "INVITE", None));
        assert_eq!(l.on_response(t0, &trying), ResponseDisposition::Deliver(id));
        assert_eq!(l.client_state(id), Some(ClientState::Proceeding));

        let busy_wire = response(486, "Busy Here", "z9hG4bKuac1", "INVITE", Some("b9"));
        let busy = parse(&busy_wire);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(l.on_response(t1, &busy), ResponseDisposition::Deliver(id));
        assert_eq!(l.client_state(id), Some(ClientState::Completed));
        let sent = drain(&mut l);
        assert_eq!(sent.len(), 1);
        let ack = parse(&sent[0]);
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(
            ack.request_uri().unwrap().raw.as_ref(),
            b"sip:bob@pbx.example.com"
        );
        // §17.1.1.3: same branch (so it matches the server transaction), To tag from the response.
        let via = ack.top_via().unwrap();
        assert_eq!(via.branch().unwrap().as_ref(), b"z9hG4bKuac1");
        assert_eq!(ack.vias().unwrap().len(), 1);
        assert_eq!(ack.to_hdr().unwrap().tag().unwrap().as_ref(), b"b9");
        assert_eq!(ack.from_hdr().unwrap().tag().unwrap().as_ref(), b"a1");
        let cseq = ack.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (314, Method::Ack));
        assert_eq!(ack.call_id().unwrap().as_ref(), b"call-1@example.com");
        assert_eq!(ack.routes().unwrap().len(), 1);

        // The retransmitted 486 is absorbed and answered with the identical ACK.
        assert_eq!(
            l.on_response(t1 + Duration::from_millis(500), &parse(&busy_wire)),
            ResponseDisposition::Absorbed(id)
        );
        assert_eq!(drain(&mut l), vec![sent[0].clone()]);

        // And the ACK is recognised by a server-side layer as belonging to the INVITE.
        let mut uas = TransactionLayer::new(Timers::default(), Limits::default());
        let sid = match uas.on_request(t0, &parse(&wire), wire.clone(), udp()) {
            RequestDisposition::New(s) => s,
            d => panic!("{d:?}"),
        };
        uas.send_response(t0, sid, 486, busy_wire).unwrap();
        assert_eq!(
            uas.on_request(t1, &ack, sent[0].clone(), udp()),
            RequestDisposition::AckAbsorbed(sid)
        );
        assert_eq!(uas.server_state(sid), Some(ServerState::Confirmed));
    }

    #[test]
    fn uas_invite_with_response_builder() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let wire = invite("z9hG4bKuas1", "client.example.com");
        let req = parse(&wire);
        let id = match l.on_request(t0, &req, wire.clone(), udp()) {
            RequestDisposition::New(id) => id,
            d => panic!("{d:?}"),
        };
        // A byte-identical retransmission matches, a differently-cased sent-by host too (§19.1.4).
        assert_eq!(
            l.on_request(t0, &parse(&wire), wire.clone(), udp()),
            RequestDisposition::Retransmission(id)
        );
        let upper = invite("z9hG4bKuas1", "CLIENT.example.COM");
        assert_eq!(
            l.on_request(t0, &parse(&upper), upper.clone(), udp()),
            RequestDisposition::Retransmission(id)
        );

        let ringing = ResponseBuilder::new(&req, 180, "Ringing", None)
            .to_tag("s1")
            .build();
        l.send_response(t0, id, 180, ringing.clone()).unwrap();
        assert_eq!(drain(&mut l), vec![ringing.clone()]);
        assert_eq!(
            l.on_request(t0, &parse(&wire), wire.clone(), udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(drain(&mut l), vec![ringing]);

        let ok = ResponseBuilder::new(&req, 200, "OK", None)
            .to_tag("s1")
            .build();
        l.send_response(t0, id, 200, ok).unwrap();
        assert_eq!(l.server_state(id), Some(ServerState::Accepted));
        drain(&mut l);
        // The 2xx ACK has its own branch: not a transaction, handed to the TU.
        let ack = sip(&[
            "ACK sip:bob@pbx.example.com SIP/2.0",
            "Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKack2",
            "From: \"Alice\" <sip:alice@example.com>;tag=a1",
            "To: <sip:bob@pbx.example.com>;tag=s1",
            "Call-ID: call-1@example.com",
            "CSeq: 314 ACK",
            "Content-Length: 0",
        ]);
        assert_eq!(
            l.on_request(t0, &parse(&ack), ack.clone(), udp()),
            RequestDisposition::AckFor2xx
        );
        // INVITE retransmissions are absorbed silently while Accepted.
        assert_eq!(
            l.on_request(t0, &parse(&wire), wire.clone(), udp()),
            RequestDisposition::Retransmission(id)
        );
        assert!(drain(&mut l).is_empty());
    }

    #[test]
    fn cancel_is_matched_to_the_invite() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let wire = invite("z9hG4bKcan", "192.0.2.10");
        let inv = match l.on_request(t0, &parse(&wire), wire.clone(), udp()) {
            RequestDisposition::New(id) => id,
            d => panic!("{d:?}"),
        };
        let cancel = sip(&[
            "CANCEL sip:bob@pbx.example.com SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcan",
            "Max-Forwards: 70",
            "From: \"Alice\" <sip:alice@example.com>;tag=a1",
            "To: <sip:bob@pbx.example.com>",
            "Call-ID: call-1@example.com",
            "CSeq: 314 CANCEL",
            "Content-Length: 0",
        ]);
        let ctx = match l.on_request(t0, &parse(&cancel), cancel.clone(), udp()) {
            RequestDisposition::Cancel { tx, target } => {
                assert_eq!(target, Some(inv));
                tx
            }
            d => panic!("{d:?}"),
        };
        assert_eq!(l.server_method(ctx), Some(&Method::Cancel));
        assert_eq!(
            l.on_request(t0, &parse(&cancel), cancel, udp()),
            RequestDisposition::Retransmission(ctx)
        );
    }

    #[test]
    fn rfc2543_requests_use_the_fallback_key() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let old = |method: &str, call_id: &str, to_tag: &str| {
            sip(&[
                &format!("{method} sip:bob@pbx.example.com SIP/2.0"),
                "Via: SIP/2.0/UDP 192.0.2.10:5060",
                "From: <sip:alice@example.com>;tag=old",
                &format!("To: <sip:bob@pbx.example.com>{to_tag}"),
                &format!("Call-ID: {call_id}"),
                &format!("CSeq: 7 {method}"),
                "Content-Length: 0",
            ])
        };
        let inv = old("INVITE", "legacy-1", "");
        let id = match l.on_request(t0, &parse(&inv), inv.clone(), udp()) {
            RequestDisposition::New(id) => id,
            d => panic!("{d:?}"),
        };
        assert_eq!(
            l.on_request(t0, &parse(&inv), inv.clone(), udp()),
            RequestDisposition::Retransmission(id)
        );
        // Another call from the same UA is a different transaction.
        let other = old("INVITE", "legacy-2", "");
        assert!(matches!(
            l.on_request(t0, &parse(&other), other.clone(), udp()),
            RequestDisposition::New(o) if o != id
        ));
        let cancel = old("CANCEL", "legacy-1", "");
        assert!(matches!(
            l.on_request(t0, &parse(&cancel), cancel.clone(), udp()),
            RequestDisposition::Cancel { target: Some(t), .. } if t == id
        ));
        l.send_response(t0, id, 487, Bytes::from_static(b"487"))
            .unwrap();
        // The ACK carries our To tag, which the fallback key ignores by design.
        let ack = old("ACK", "legacy-1", ";tag=ours");
        assert_eq!(
            l.on_request(t0, &parse(&ack), ack.clone(), udp()),
            RequestDisposition::AckAbsorbed(id)
        );
        // The synthetic key never collides with a real branch.
        let info = RequestInfo::from_message(&parse(&inv)).unwrap();
        assert!(!info.branch.starts_with(b"z9hG4bK"));
    }

    #[test]
    fn non_cookie_branches_are_not_trusted_as_unique() {
        // RFC 2543 branches were only unique per proxy hop; two calls may reuse one.
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let with_call_id = |call_id: &str| {
            sip(&[
                "INVITE sip:bob@pbx.example.com SIP/2.0",
                "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=1",
                "From: <sip:alice@example.com>;tag=old",
                "To: <sip:bob@pbx.example.com>",
                &format!("Call-ID: {call_id}"),
                "CSeq: 1 INVITE",
                "Content-Length: 0",
            ])
        };
        let (a, b) = (with_call_id("c1"), with_call_id("c2"));
        let ia = l.on_request(t0, &parse(&a), a.clone(), udp());
        let ib = l.on_request(t0, &parse(&b), b.clone(), udp());
        assert!(matches!(ia, RequestDisposition::New(_)));
        assert!(matches!(ib, RequestDisposition::New(_)));
        assert_ne!(ia, ib);
        assert!(matches!(
            l.on_request(t0, &parse(&a), a.clone(), udp()),
            RequestDisposition::Retransmission(_)
        ));
    }

    #[test]
    fn malformed_messages_are_rejected_without_panicking() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let no_via = sip(&[
            "OPTIONS sip:pbx.example.com SIP/2.0",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:pbx.example.com>",
            "Call-ID: x",
            "CSeq: 1 OPTIONS",
            "Content-Length: 0",
        ]);
        assert!(matches!(
            l.on_request(t0, &parse(&no_via), no_via.clone(), udp()),
            RequestDisposition::Invalid(TxError::Malformed(_))
        ));
        let resp = parse(&response(200, "OK", "z9hG4bKx", "OPTIONS", None));
        assert_eq!(
            l.on_request(t0, &resp, Bytes::new(), udp()),
            RequestDisposition::Invalid(TxError::WrongKind)
        );
        // A request fed as a response, and a response without a branch, are stray.
        assert_eq!(
            l.on_response(t0, &parse(&no_via)),
            ResponseDisposition::Stray
        );
        let no_branch = sip(&[
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP 192.0.2.10:5060",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:pbx.example.com>",
            "Call-ID: x",
            "CSeq: 1 OPTIONS",
            "Content-Length: 0",
        ]);
        assert_eq!(
            l.on_response(t0, &parse(&no_branch)),
            ResponseDisposition::Stray
        );
        assert!(l.is_empty());
    }

    #[test]
    fn uac_non_invite_over_tcp() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(Timers::default(), Limits::default());
        let id = l
            .send_request(
                t0,
                Bytes::from_static(b"z9hG4bKopt"),
                Method::Options,
                Bytes::from_static(b"OPTIONS ..."),
                tcp(),
            )
            .unwrap();
        // The CSeq method must match too.
        let wrong = parse(&response(200, "OK", "z9hG4bKopt", "INFO", None));
        assert_eq!(l.on_response(t0, &wrong), ResponseDisposition::Stray);
        let ok = parse(&response(200, "OK", "z9hG4bKopt", "OPTIONS", None));
        assert_eq!(l.on_response(t0, &ok), ResponseDisposition::Deliver(id));
        assert_eq!(l.client_state(id), None);
        assert_eq!(l.poll_event(), Some(TxEvent::Terminated(TxId::Client(id))));
        assert_eq!(l.on_response(t0, &ok), ResponseDisposition::Stray);
    }
}
