//! SIP message handling, as the signalling core does it for every datagram or TCP frame:
//! framing, `Message::parse`, every typed accessor, `validate`, the request checks, the
//! transaction layer, and the bytes podpbx would send back (responses, ACK, CANCEL).
//!
//! Oracles (besides "never panics"):
//! * `frame_stream` only reports lengths inside the buffer, and a frame it calls complete is
//!   never `Incomplete` for `Message::parse(.., Stream)`;
//! * every response built from a parsed request parses again (it goes on the wire);
//! * for a request that passes `validate`: the checks never "drop" it, its responses validate
//!   too and echo Call-ID, CSeq, From and every Via (the top one with `rport` filled in), and for
//!   an INVITE the CANCEL and the ACK podpbx would build validate and match it;
//! * an ACK the transaction layer builds for a fuzzed non-2xx response to our INVITE parses.
//!
//! This file is also compiled into `crates/sip/tests/corpus_replay.rs` (`#[path]`), so it may
//! use only `podpbx_sip` and `bytes`.

use bytes::Bytes;
use podpbx_sip::builder::{ack_for, cancel_for};
use podpbx_sip::checks::{check_request, Capabilities, Rejection};
use podpbx_sip::message::{frame_stream, leading_keepalive, StreamFramer};
use podpbx_sip::transaction::{
    Limits, Peer, RequestDisposition, ResponseDisposition, Timers, TransactionLayer, Transport,
};
use podpbx_sip::{
    ContactList, Flow, Framing, HeaderName, Message, Method, ParseError, RequestBuilder,
    ResponseBuilder, StartLine, Uri,
};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Every header name with a typed variant, to drive the by-name accessors.
const NAMES: &[HeaderName] = &[
    HeaderName::Accept,
    HeaderName::AcceptEncoding,
    HeaderName::Allow,
    HeaderName::Authorization,
    HeaderName::CallId,
    HeaderName::Contact,
    HeaderName::ContentDisposition,
    HeaderName::ContentEncoding,
    HeaderName::ContentLength,
    HeaderName::ContentType,
    HeaderName::CSeq,
    HeaderName::Event,
    HeaderName::Expires,
    HeaderName::From,
    HeaderName::MaxForwards,
    HeaderName::MinExpires,
    HeaderName::ProxyAuthenticate,
    HeaderName::ProxyAuthorization,
    HeaderName::ProxyRequire,
    HeaderName::RecordRoute,
    HeaderName::ReferTo,
    HeaderName::ReferredBy,
    HeaderName::Require,
    HeaderName::Route,
    HeaderName::Server,
    HeaderName::Subject,
    HeaderName::Supported,
    HeaderName::To,
    HeaderName::Unsupported,
    HeaderName::UserAgent,
    HeaderName::Via,
    HeaderName::WwwAuthenticate,
    HeaderName::Other,
];

/// What podpbx's core announces (`podpbx_sip::caps`).
fn capabilities() -> Capabilities {
    Capabilities::podpbx()
}

/// Runs one input through everything; panics only when an oracle fails.
pub fn run(data: &[u8]) {
    let buf = Bytes::copy_from_slice(data);
    let ka = leading_keepalive(data);
    assert!(ka <= data.len());
    // TCP: frame first, then parse the frame as a stream message.
    if let Ok(Some(len)) = frame_stream(data) {
        assert!(
            len <= data.len(),
            "frame_stream length {len} beyond the buffer"
        );
        match Message::parse(buf.slice(..len), Framing::Stream) {
            Ok(msg) => exercise(&msg, Transport::Tcp),
            Err(e) => assert!(
                !matches!(e, ParseError::Incomplete | ParseError::ContentLength),
                "frame_stream called {len} octets complete but parse says {e:?}"
            ),
        }
    }
    // TCP, the way the transport frames it: the incremental framer fed in two pieces (and then
    // the rest) finds the same first message as frame_stream on the whole buffer, and never
    // one that frame_stream does not find.
    check_stream_framer(data);
    // UDP: the datagram as it is.
    if let Ok(msg) = Message::parse(buf, Framing::Datagram) {
        exercise(&msg, Transport::Udp);
    }
}

/// `StreamFramer` against `frame_stream`: fed a prefix then the whole buffer, it reports a
/// message exactly when `frame_stream` does, with the same length.
fn check_stream_framer(data: &[u8]) {
    let whole = frame_stream(data);
    let cut = data.len() / 2;
    let mut f = StreamFramer::default();
    let first = f.next(&data[..cut]);
    if let Ok(Some(n)) = first {
        assert_eq!(
            frame_stream(&data[..cut]),
            Ok(Some(n)),
            "the framer found a message in a prefix that frame_stream does not"
        );
        return;
    }
    if first.is_err() {
        return;
    }
    match (f.next(data), whole) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "framer and frame_stream disagree"),
        (Ok(Some(a)), other) => panic!("the framer found {a} octets, frame_stream {other:?}"),
        (_, Ok(Some(b))) => panic!("frame_stream found {b} octets, the framer did not"),
        _ => {}
    }
}

fn sources() -> [SocketAddr; 2] {
    [
        "192.0.2.7:5062".parse().unwrap(),
        "[2001:db8::7]:5064".parse().unwrap(),
    ]
}

/// RFC 3261 §18.2.2 / RFC 3581 (`Flow::response_peer`): whatever the Via says, a response goes
/// to the packet's source IP (never a host or `received`/`maddr` taken from the message), over
/// the flow's transport and connection; over a stream, to the source port too.
fn check_response_peer(msg: &Message, src: SocketAddr) {
    let local: SocketAddr = if src.is_ipv4() {
        "198.51.100.1:5060".parse().unwrap()
    } else {
        "[2001:db8::1]:5060".parse().unwrap()
    };
    for transport in Transport::ALL {
        let flow = Flow {
            transport,
            local,
            remote: src,
            conn: 3,
        };
        let peer = flow.response_peer(msg);
        assert_eq!(
            peer.addr.ip(),
            src.ip(),
            "response to another host than the source"
        );
        assert_eq!((peer.transport, peer.conn), (transport, 3));
        if transport.is_stream() {
            assert_eq!(
                peer.addr, src,
                "a stream response goes back on the connection"
            );
        }
    }
}

fn exercise(msg: &Message, transport: Transport) {
    read_everything(msg);
    let valid = msg.validate().is_ok();
    if msg.is_request() {
        let check = check_request(msg, &capabilities());
        if valid {
            assert!(
                !matches!(check, Err(Rejection::Drop(_))),
                "a valid request must get a response, got {check:?}"
            );
        }
        let mut reasons = vec![(200u16, "OK".to_string()), (100, "Trying".to_string())];
        if let Err(Rejection::Respond { code, reason, .. }) = &check {
            reasons.push((code.code(), reason.clone()));
        }
        for src in sources() {
            check_response_peer(msg, src);
            for (code, reason) in &reasons {
                let resp = respond(msg, *code, reason, src, transport);
                if valid {
                    check_response_echoes(msg, &resp, src);
                }
            }
        }
        if valid && msg.method() == Some(&Method::Invite) {
            check_cancel_and_ack(msg);
        }
        transaction_server(msg, transport);
    } else {
        transaction_client(msg, transport);
    }
}

/// Touches every lazy accessor; results are only kept alive, not checked.
fn read_everything(msg: &Message) {
    black_box(msg.start_line_raw());
    black_box(format!("{msg:?}"));
    black_box(msg.is_request());
    black_box(msg.status());
    black_box(msg.method().map(Method::as_str));
    for h in msg.headers() {
        black_box(HeaderName::from_bytes(&h.raw_name));
        black_box(&h.value);
    }
    for &n in NAMES {
        black_box(msg.header(n));
        black_box(msg.header_count(n));
        black_box(msg.has_header(n));
        black_box(msg.header_lines(n).count());
        black_box(msg.header_values(n).count());
        black_box(msg.tokens(n));
    }
    for name in [
        "Date",
        "u",
        "Allow-Events",
        "x",
        "Session-Expires",
        "via",
        "X-Unknown",
    ] {
        black_box(msg.other_header(name));
        black_box(msg.other_header_values(name).count());
    }
    for via in msg.via_iter().flatten() {
        black_box((via.branch(), via.received(), via.rport(), via.maddr()));
        black_box(format!("{via:?}"));
    }
    black_box(msg.vias().ok());
    black_box(msg.top_via().ok());
    for h in [msg.from_hdr(), msg.to_hdr()].into_iter().flatten() {
        black_box(h.tag());
        black_box(h.display_unescaped());
        black_box(h.uri.to_string());
        uri(&h.uri);
    }
    black_box(msg.call_id().ok());
    black_box(msg.cseq().ok());
    black_box(msg.max_forwards().ok());
    black_box(msg.expires().ok());
    if let Ok(Some(ContactList::List(list))) = msg.contacts() {
        for c in &list {
            black_box((c.expires(), c.q()));
            uri(&c.addr.uri);
        }
    }
    for c in msg.contact_iter().flatten() {
        black_box((c.expires(), c.q()));
    }
    for r in msg.route_iter().chain(msg.record_route_iter()).flatten() {
        uri(&r.uri);
    }
    black_box(msg.routes().ok());
    black_box(msg.record_routes().ok());
    if let Ok(u) = msg.request_uri() {
        uri(&u);
    }
    black_box(msg.content_type());
    black_box(msg.validate().ok());
}

fn uri(u: &Uri) {
    black_box(u.is_sip());
    black_box(u.to_string());
    for p in ["transport", "user", "maddr", "lr", "unknownparam"] {
        black_box(u.param(p));
    }
    if let Some(h) = &u.host {
        black_box(h.ip());
        black_box(h.to_string());
    }
}

/// Builds a response the way the core does and checks it parses.
fn respond(
    msg: &Message,
    code: u16,
    reason: &str,
    src: SocketAddr,
    transport: Transport,
) -> Message {
    let mut b = ResponseBuilder::new(msg, code, reason, Some(src));
    if code > 100 {
        b = b.to_tag("f00dcafe");
    }
    let b = b
        .header("Allow", "OPTIONS, ACK, CANCEL, REGISTER, MESSAGE")
        .header("Server", "podpbx-fuzz");
    let wire = if code == 200 {
        b.body("application/sdp", b"v=0\r\n").build()
    } else {
        b.build()
    };
    let framing = match transport {
        Transport::Udp => Framing::Datagram,
        Transport::Tcp | Transport::Tls => Framing::Stream,
    };
    match Message::parse(wire.clone(), framing) {
        Ok(resp) => {
            assert_eq!(resp.status(), Some(code));
            read_everything(&resp);
            resp
        }
        Err(e) => panic!(
            "response {code} built from a parsed request does not parse ({e:?}):\n{}",
            String::from_utf8_lossy(&wire)
        ),
    }
}

fn check_response_echoes(req: &Message, resp: &Message, src: SocketAddr) {
    if let Err(e) = resp.validate() {
        panic!(
            "response to a valid request does not validate ({e:?}):\n{}",
            String::from_utf8_lossy(&resp.buf)
        );
    }
    assert_eq!(resp.call_id().ok(), req.call_id().ok(), "Call-ID echoed");
    let (a, b) = (resp.cseq().unwrap(), req.cseq().unwrap());
    assert_eq!((a.seq, a.method), (b.seq, b.method), "CSeq echoed");
    assert_eq!(
        resp.header(HeaderName::From),
        req.header(HeaderName::From),
        "From echoed"
    );
    let (rv, qv) = (resp.vias().unwrap(), req.vias().unwrap());
    assert_eq!(rv.len(), qv.len(), "every Via echoed");
    let (top, req_top) = (&rv[0], &qv[0]);
    assert_eq!(top.branch(), req_top.branch(), "top Via branch kept");
    if req_top.rport() == Some(None) {
        assert_eq!(top.rport(), Some(Some(src.port())), "rport filled in");
    }
    for (r, q) in rv.iter().zip(&qv).skip(1) {
        assert_eq!(r.raw, q.raw, "lower Vias copied byte for byte");
    }
    let (rt, qt) = (resp.to_hdr().unwrap(), req.to_hdr().unwrap());
    assert_eq!(rt.uri.to_string(), qt.uri.to_string(), "To URI kept");
}

fn check_cancel_and_ack(invite: &Message) {
    let cancel = cancel_for(invite);
    let c = Message::parse(cancel.clone(), Framing::Stream).unwrap_or_else(|e| {
        panic!(
            "CANCEL does not parse ({e:?}):\n{}",
            String::from_utf8_lossy(&cancel)
        )
    });
    if let Err(e) = c.validate() {
        panic!(
            "CANCEL does not validate ({e:?}):\n{}",
            String::from_utf8_lossy(&cancel)
        );
    }
    assert_eq!(c.method(), Some(&Method::Cancel));
    assert_eq!(c.cseq().unwrap().seq, invite.cseq().unwrap().seq);
    assert_eq!(c.call_id().ok(), invite.call_id().ok());
    assert_eq!(c.vias().unwrap().len(), 1, "CANCEL has one Via");
    assert_eq!(c.top_via().unwrap().raw, invite.top_via().unwrap().raw);
    let src = sources()[0];
    let resp = respond(invite, 486, "Busy Here", src, Transport::Tcp);
    let ack = ack_for(invite, &resp);
    let a = Message::parse(ack.clone(), Framing::Stream).unwrap_or_else(|e| {
        panic!(
            "ACK does not parse ({e:?}):\n{}",
            String::from_utf8_lossy(&ack)
        )
    });
    if let Err(e) = a.validate() {
        panic!(
            "ACK does not validate ({e:?}):\n{}",
            String::from_utf8_lossy(&ack)
        );
    }
    assert_eq!(a.method(), Some(&Method::Ack));
    assert_eq!(
        a.header(HeaderName::To),
        resp.header(HeaderName::To),
        "ACK To from the response"
    );
}

/// A fresh server transaction layer fed the request twice and its timers run to the end.
fn transaction_server(msg: &Message, transport: Transport) {
    let now = Instant::now();
    let mut layer = TransactionLayer::new(Timers::default(), Limits::new(16 << 10));
    let peer = Peer {
        addr: sources()[0],
        transport,
        conn: u64::from(transport == Transport::Tcp),
    };
    match layer.on_request(now, msg, msg.buf.clone(), peer) {
        RequestDisposition::New(id) => {
            let trying = ResponseBuilder::new(msg, 100, "Trying", Some(peer.addr)).build();
            let _ = layer.send_response(now, id, 100, trying);
            let fin = ResponseBuilder::new(msg, 404, "Not Found", Some(peer.addr))
                .to_tag("t")
                .build();
            let _ = layer.send_response(now, id, 404, fin);
            // Over UDP a retransmission must be absorbed, not open a second transaction (over
            // TCP a non-INVITE transaction ends with its final response: Timer J is zero).
            let again = layer.on_request(now, msg, msg.buf.clone(), peer);
            assert!(
                transport == Transport::Tcp || !matches!(again, RequestDisposition::New(_)),
                "a retransmission opened a new transaction: {again:?}"
            );
        }
        RequestDisposition::Invalid(e) => {
            black_box(e.to_string());
        }
        other => {
            black_box(other);
        }
    }
    drain(&mut layer, now);
}

/// A client transaction for an INVITE of ours whose branch matches the fuzzed response, so a
/// non-2xx final response makes the layer build an ACK from it.
fn transaction_client(resp: &Message, transport: Transport) {
    let now = Instant::now();
    let mut layer = TransactionLayer::new(Timers::default(), Limits::new(16 << 10));
    black_box(layer.on_response(now, resp));
    let Some(branch) = resp.top_via().ok().and_then(|v| v.branch()) else {
        return;
    };
    let Ok(branch_s) = std::str::from_utf8(&branch) else {
        return;
    };
    let method = resp.cseq().map(|c| c.method).unwrap_or(Method::Invite);
    if method == Method::Ack {
        return;
    }
    let via = format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch_s};rport");
    let request = RequestBuilder::new(&method, "sip:1001@192.0.2.7")
        .header("Via", &via)
        .header("Max-Forwards", "70")
        .header("From", "<sip:podpbx@example.org>;tag=a1")
        .header("To", "<sip:1001@example.org>")
        .header("Call-ID", "fuzz@podpbx")
        .header("CSeq", &format!("1 {method}"))
        .build();
    let peer = Peer {
        addr: sources()[0],
        transport,
        conn: u64::from(transport == Transport::Tcp),
    };
    if layer
        .send_request(now, branch.clone(), method, request, peer)
        .is_err()
    {
        return;
    }
    while layer.poll_transmit().is_some() {}
    match layer.on_response(now, resp) {
        ResponseDisposition::Deliver(_) | ResponseDisposition::Absorbed(_) => {
            while let Some(t) = layer.poll_transmit() {
                // The only thing the layer sends on its own here is the ACK.
                let m = Message::parse(t.data.clone(), Framing::Datagram).unwrap_or_else(|e| {
                    panic!(
                        "ACK built by the transaction layer does not parse ({e:?}):\n{}",
                        String::from_utf8_lossy(&t.data)
                    )
                });
                assert!(matches!(
                    &m.start,
                    StartLine::Request {
                        method: Method::Ack,
                        ..
                    }
                ));
            }
        }
        ResponseDisposition::Stray => {}
    }
    drain(&mut layer, now);
}

/// Runs every timer to expiry (bounded: transactions end within 64*T1 + T4).
fn drain(layer: &mut TransactionLayer, now: Instant) {
    let mut t = now;
    for _ in 0..64 {
        while layer.poll_transmit().is_some() {}
        while layer.poll_event().is_some() {}
        match layer.poll_timeout() {
            Some(d) => {
                t = d.max(t);
                layer.handle_timeout(t);
            }
            None => break,
        }
    }
    layer.handle_timeout(now + Duration::from_secs(3600));
    while layer.poll_transmit().is_some() {}
    while layer.poll_event().is_some() {}
}
