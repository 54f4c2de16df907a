//! Unit tests for the tricky corners of framing, typed headers, URIs and the builders.

use bytes::Bytes;
use podpbx_sip::builder::{ack_for, cancel_for};
use podpbx_sip::message::{
    frame_stream, leading_keepalive, StreamFramer, MAX_HEADERS, MAX_HEADER_LINE_BYTES,
    MAX_MESSAGE_BYTES,
};
use podpbx_sip::{
    ContactList, Framing, HeaderName, Host, Message, Method, ParseError, RequestBuilder,
    ResponseBuilder, Uri,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn parse(s: &str) -> Message {
    Message::parse(b(s), Framing::Datagram).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;rport
Via: SIP/2.0/TCP  proxy.example.com ;branch=z9hG4bK77ef4c2312983.1 ;received=192.0.2.1
Max-Forwards: 70
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>
Route: <sip:p3.example.com;lr>
To: Bob <sip:bob@biloxi.example.com>
From: \"Alice \\\"A\\\"\" <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>;expires=60;q=0.7, sip:alice@192.0.2.4;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1
Supported: replaces, timer
Supported: 100rel
Content-Type: Application/SDP; charset=x
Content-Length: 5

v=0
";

fn invite() -> Message {
    parse(&crlf(INVITE))
}

#[test]
fn typed_accessors_on_a_typical_invite() {
    let m = invite();
    assert!(m.is_request());
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.status(), None);
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(
        vias[0].raw,
        b("SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;rport")
    );
    assert_eq!(vias[0].port, Some(5060));
    assert_eq!(vias[0].rport(), Some(None));
    assert_eq!(
        vias[1].raw,
        b("SIP/2.0/TCP  proxy.example.com ;branch=z9hG4bK77ef4c2312983.1 ;received=192.0.2.1")
    );
    assert_eq!(
        vias[1].received(),
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    );
    assert_eq!(vias[1].rport(), None);
    let from = m.from_hdr().unwrap();
    assert_eq!(from.display_unescaped().unwrap().as_ref(), b"Alice \"A\"");
    assert_eq!(from.tag(), Some(b("1928301774")));
    let to = m.to_hdr().unwrap();
    assert_eq!(to.display, Some(b("Bob")));
    assert_eq!(to.tag(), None);
    let Some(ContactList::List(cs)) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(cs.len(), 2);
    assert_eq!((cs[0].expires(), cs[0].q()), (Some(60), Some(700)));
    assert_eq!(
        cs[1].addr.params.get("+sip.instance"),
        Some(b("\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\""))
    );
    assert_eq!(cs[1].addr.params.get("reg-id"), Some(b("1")));
    assert_eq!(
        cs[1].addr.uri.host,
        Some(Host::V4(Ipv4Addr::new(192, 0, 2, 4)))
    );
    let routes = m.routes().unwrap();
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[2].uri.host, Some(Host::Name(b("p3.example.com"))));
    assert_eq!(
        m.tokens(HeaderName::Supported),
        vec![b("replaces"), b("timer"), b("100rel")]
    );
    assert_eq!(m.content_type(), Some(b("application/sdp")));
    assert_eq!(m.body, b("v=0\r\n"));
    assert_eq!(m.header_lines(HeaderName::Route).count(), 2);
    assert_eq!(m.headers().count(), 14);
    assert!(m.validate().is_ok());
    // Values are slices of the buffer.
    let cid = m.call_id().unwrap();
    let base = m.buf.as_ptr() as usize;
    assert!((cid.as_ptr() as usize) > base && (cid.as_ptr() as usize) < base + m.buf.len());
}

#[test]
fn parsed_headers_are_kept_and_answer_like_a_fresh_parse() {
    let m = invite();
    // Parsed once: the second ask gets the same value, not a new parse.
    assert!(std::ptr::eq(
        m.top_via_ref().unwrap(),
        m.top_via_ref().unwrap()
    ));
    assert!(std::ptr::eq(m.from_ref().unwrap(), m.from_ref().unwrap()));
    assert!(std::ptr::eq(m.to_ref().unwrap(), m.to_ref().unwrap()));
    assert!(std::ptr::eq(
        m.request_uri_ref().unwrap(),
        m.request_uri_ref().unwrap()
    ));
    // And it is what a fresh parse says: the first of the Vias, the owned forms equal.
    assert_eq!(m.top_via().unwrap(), m.vias().unwrap()[0]);
    assert_eq!(
        m.top_via_ref().unwrap().branch().unwrap(),
        b("z9hG4bKnashds8")
    );
    assert_eq!(&m.from_hdr().unwrap(), m.from_ref().unwrap());
    assert_eq!(m.from_ref().unwrap().tag().unwrap(), b("1928301774"));
    assert_eq!(m.to_ref().unwrap().uri.raw, b("sip:bob@biloxi.example.com"));
    assert_eq!(
        m.request_uri_ref().unwrap().raw,
        b("sip:bob@biloxi.example.com")
    );
    // A clone carries what was parsed; an error is kept as an error, asked before or after
    // validate.
    let c = m.clone();
    assert_eq!(c.to_ref().unwrap(), m.to_ref().unwrap());
    let bad = parse(&crlf(
        "OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP [::1;branch=z9hG4bK1\nTo: <sip:a@b>\nFrom: <sip:c@d>;tag=1\nCall-ID: x\nCSeq: 1 OPTIONS\n\n",
    ));
    assert!(bad.top_via_ref().is_err());
    assert!(bad.validate().is_err());
    assert!(bad.top_via_ref().is_err());
    assert!(bad.top_via().is_err());
}

#[test]
fn folding_and_whitespace_before_colon() {
    let m = parse(&crlf(
        "OPTIONS sip:a@example.com SIP/2.0
Via  :
  SIP/2.0/UDP
   host.example.com
   ;branch=z9hG4bK1
To:
 <sip:a@example.com>
From: <sip:b@example.com>
 ;tag=x1
Call-ID: fold@x
CSeq: 1
\tOPTIONS
Subject: first
  second
l: 0

",
    ));
    let via = m.top_via().unwrap();
    assert_eq!(via.host, Host::Name(b("host.example.com")));
    assert_eq!(via.branch(), Some(b("z9hG4bK1")));
    assert_eq!(m.to_hdr().unwrap().uri.raw, b("sip:a@example.com"));
    assert_eq!(m.from_hdr().unwrap().tag(), Some(b("x1")));
    assert_eq!(m.cseq().unwrap().method, Method::Options);
    // Folded values are kept as received, CRLF and all.
    assert_eq!(m.header(HeaderName::Subject), Some(b("first\r\n  second")));
    assert!(m.validate().is_ok());
    // A continuation line before any header is malformed.
    let e = Message::parse(
        b("OPTIONS sip:a@b SIP/2.0\r\n cont\r\n\r\n"),
        Framing::Datagram,
    );
    assert_eq!(e.unwrap_err(), ParseError::Header);
}

#[test]
fn compact_forms_and_names() {
    let cases = [
        ("i", HeaderName::CallId),
        ("m", HeaderName::Contact),
        ("e", HeaderName::ContentEncoding),
        ("l", HeaderName::ContentLength),
        ("c", HeaderName::ContentType),
        ("f", HeaderName::From),
        ("s", HeaderName::Subject),
        ("k", HeaderName::Supported),
        ("t", HeaderName::To),
        ("v", HeaderName::Via),
        ("o", HeaderName::Event),
        ("r", HeaderName::ReferTo),
        ("b", HeaderName::ReferredBy),
        ("u", HeaderName::Other),
        ("x", HeaderName::Other),
        ("y", HeaderName::Other),
        ("j", HeaderName::Other),
        ("CALL-id", HeaderName::CallId),
        ("www-authenticate", HeaderName::WwwAuthenticate),
        ("Proxy-Authorization", HeaderName::ProxyAuthorization),
        ("X-Custom", HeaderName::Other),
    ];
    for (n, h) in cases {
        assert_eq!(HeaderName::from_bytes(n.as_bytes()), h, "{n}");
        assert_eq!(
            HeaderName::from_bytes(n.to_uppercase().as_bytes()),
            h,
            "{n}"
        );
    }
    let m = parse(&crlf(
        "SUBSCRIBE sip:a@example.com SIP/2.0
v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1
t: <sip:a@example.com>
F: <sip:b@example.com>;tag=1
I: compact@x
CSeq: 1 SUBSCRIBE
o: presence
U: presence, dialog
x: 1800;refresher=uac
Y: abc
j: *;audio
k: timer
M: <sip:b@192.0.2.1>
r: <sip:c@example.com>
b: <sip:d@example.com>
e: gzip
c: text/plain
s: hi
L: 2

ok",
    ));
    assert_eq!(m.header(HeaderName::Event), Some(b("presence")));
    assert_eq!(m.other_header("Allow-Events"), Some(b("presence, dialog")));
    assert_eq!(m.other_header("allow-events"), Some(b("presence, dialog")));
    assert_eq!(m.other_header("u"), Some(b("presence, dialog")));
    assert_eq!(
        m.other_header("Session-Expires"),
        Some(b("1800;refresher=uac"))
    );
    assert_eq!(m.other_header("identity"), Some(b("abc")));
    assert_eq!(m.other_header("Reject-Contact"), Some(b("*;audio")));
    assert_eq!(m.other_header("Call-ID"), Some(b("compact@x")));
    assert_eq!(
        m.header(HeaderName::ReferTo),
        Some(b("<sip:c@example.com>"))
    );
    assert_eq!(
        m.header(HeaderName::ReferredBy),
        Some(b("<sip:d@example.com>"))
    );
    assert_eq!(m.header(HeaderName::ContentEncoding), Some(b("gzip")));
    assert_eq!(m.content_type(), Some(b("text/plain")));
    assert_eq!(m.header(HeaderName::Subject), Some(b("hi")));
    assert_eq!(m.tokens(HeaderName::Supported), vec![b("timer")]);
    assert_eq!(m.body, b("ok"));
    let raw: Vec<Bytes> = m.headers().map(|h| h.raw_name).collect();
    assert_eq!(raw[0], b("v"));
    assert!(m.validate().is_ok());
}

#[test]
fn uris_and_ipv6() {
    let u = Uri::parse(b("sip:[2001:db8::10]:5070;transport=tcp;lr?subject=x")).unwrap();
    assert_eq!(u.host, Some(Host::V6("2001:db8::10".parse().unwrap())));
    assert_eq!(u.port, Some(5070));
    assert_eq!(u.param("TRANSPORT"), Some(b("tcp")));
    assert_eq!(u.param("lr"), Some(Bytes::new()));
    assert_eq!(u.param("maddr"), None);
    assert_eq!(u.headers, b("subject=x"));
    let u = Uri::parse(b("sip:[2001:db8::10:5070]")).unwrap();
    assert_eq!(u.host, Some(Host::V6("2001:db8::10:5070".parse().unwrap())));
    assert_eq!(u.port, None);
    assert_eq!(u.host.unwrap().to_string(), "[2001:db8::10:5070]");
    let u = Uri::parse(b("SIPS:alice:secret@[::ffff:192.0.2.1]")).unwrap();
    assert_eq!(u.scheme, b("sips"));
    assert_eq!(u.password, Some(b("secret")));
    assert_eq!(
        u.host.as_ref().and_then(Host::ip),
        Some("::ffff:192.0.2.1".parse::<IpAddr>().unwrap())
    );
    for bad in [
        "sip:2001:db8::10",
        "sip:user@2001:db8::10",
        "sip:[2001:db8:::192.0.2.1]",
        "sip:[192.0.2.1]",
        "sip:[::1",
        "sip:[::1]x",
        "sip:[::1]:99999",
        "sip:host:",
        "sip:host:12a",
        "sip:@host",
        "sip:",
        "sip:host;;lr",
        "sip:host;=x",
        "sip:a b@host",
        "<sip:host>",
        "sip:999.1.1.1",
        "sip:host..example.com",
        "sip:-host.example.com",
        ":nothing",
        "sip:h\u{e9}llo.example.com",
    ] {
        assert!(Uri::parse(b(bad)).is_err(), "{bad}");
    }
    // Carrier parameters stay in the user part.
    let u = Uri::parse(b(
        "sip:+15551234567;npdi;rn=+15559876543@gw.example.com;user=phone",
    ))
    .unwrap();
    assert_eq!(u.user, Some(b("+15551234567;npdi;rn=+15559876543")));
    assert_eq!(u.host, Some(Host::Name(b("gw.example.com"))));
    assert_eq!(u.param("user"), Some(b("phone")));
    // An unescaped '@' in the user part, and one inside a URI header.
    let u = Uri::parse(b("sip:alice@example.org@gw.example.com")).unwrap();
    assert_eq!(u.user, Some(b("alice@example.org")));
    assert_eq!(u.host, Some(Host::Name(b("gw.example.com"))));
    let u = Uri::parse(b("sip:bob@b.example.com?Replaces=abc@host%3Bto-tag%3D1")).unwrap();
    assert_eq!(u.user, Some(b("bob")));
    assert_eq!(u.headers, b("Replaces=abc@host%3Bto-tag%3D1"));
    // Opaque schemes.
    let u = Uri::parse(b("tel:+1-201-555-0123;phone-context=example.com")).unwrap();
    assert_eq!(
        (u.scheme.clone(), u.host.clone(), u.user.clone()),
        (b("tel"), None, None)
    );
    assert!(!u.is_sip());
    assert_eq!(Uri::parse(b("URN:service:sos")).unwrap().scheme, b("urn"));
    // Host display.
    assert_eq!(
        Host::V4(Ipv4Addr::new(192, 0, 2, 1)).to_string(),
        "192.0.2.1"
    );
    assert_eq!(Host::V6(Ipv6Addr::LOCALHOST).to_string(), "[::1]");
    assert_eq!(
        Host::parse_lenient(&b("2001:db8::1")).unwrap(),
        Host::V6("2001:db8::1".parse().unwrap())
    );
    assert!(Host::parse(&b("2001:db8::1")).is_err());
}

fn via_msg(via: &str) -> Message {
    parse(&crlf(&format!(
        "OPTIONS sip:a@example.com SIP/2.0
Via: {via}
To: <sip:a@example.com>
From: <sip:b@example.com>;tag=1
Call-ID: v@x
CSeq: 1 OPTIONS
Content-Length: 0

"
    )))
}

#[test]
fn via_rport_received_maddr() {
    let v = via_msg("SIP/2.0/UDP 192.0.2.1;rport;branch=z9hG4bK1")
        .top_via()
        .unwrap();
    assert_eq!(v.rport(), Some(None));
    let v = via_msg("SIP/2.0/UDP 192.0.2.1;rport=4711;branch=z9hG4bK1")
        .top_via()
        .unwrap();
    assert_eq!(v.rport(), Some(Some(4711)));
    let v = via_msg("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
        .top_via()
        .unwrap();
    assert_eq!(v.rport(), None);
    assert_eq!(v.received(), None);
    let v =
        via_msg("SIP/2.0/UDP [2001:db8::1]:5062;received=[2001:db8::9];rport=1;maddr=[ff02::1]")
            .top_via()
            .unwrap();
    assert_eq!(v.port, Some(5062));
    assert_eq!(v.received(), Some("2001:db8::9".parse().unwrap()));
    assert_eq!(v.maddr(), Some(Host::V6("ff02::1".parse().unwrap())));
    let v = via_msg("SIP/2.0/UDP h.example.com;received=2001:db8::9;maddr=224.0.1.75;ttl=1")
        .top_via()
        .unwrap();
    assert_eq!(v.received(), Some("2001:db8::9".parse().unwrap()));
    assert_eq!(v.maddr(), Some(Host::V4(Ipv4Addr::new(224, 0, 1, 75))));
    assert_eq!(v.params.get("ttl"), Some(b("1")));
    // Comma lists, with commas inside quoted strings and brackets not splitting.
    let m = via_msg(
        "SIP/2.0/UDP [2001:db8::1];x=\"a,b\" , SIP/2.0/TCP b.example.com:5061;branch=z9hG4bK2",
    );
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].params.get("x"), Some(b("\"a,b\"")));
    let m2 =
        via_msg("SIP/2.0/UDP h.example.com;x=[a,b;c];branch=z9hG4bK1, SIP/2.0/UDP i.example.com");
    let vias2 = m2.vias().unwrap();
    assert_eq!(vias2.len(), 2);
    assert_eq!(vias2[0].params.get("x"), Some(b("[a,b;c]")));
    assert_eq!(vias2[0].branch(), Some(b("z9hG4bK1")));
    assert_eq!(
        (vias[1].transport.clone(), vias[1].port),
        (b("TCP"), Some(5061))
    );
    // Malformed Vias.
    for bad in [
        "SIP/2.0/UDP 2001:db8::1;branch=z9hG4bK1",
        "SIP/2.0/UDP",
        "SIP/2.0 host.example.com",
        "SIP/2.0/UDP host.example.com;",
        "SIP/2.0/UDP host.example.com;branch=",
        "SIP/2.0/UDP host.example.com,",
        "SIP/2.0/UDP host.example.com:70000",
        "SIP/2.0/UDP host.example.com;x=\"open",
    ] {
        let m = via_msg(bad);
        assert!(m.vias().is_err(), "{bad}");
        assert!(m.validate().is_err(), "{bad}");
    }
}

#[test]
fn name_addr_forms() {
    let na = |v: &str| podpbx_sip::NameAddr::parse(&b(v));
    let a = na("sip:alice@example.com;tag=1;x").unwrap();
    assert_eq!((a.display.clone(), a.tag()), (None, Some(b("1"))));
    assert!(a.uri.params.is_empty());
    let a = na("\"\" <sip:alice@example.com>").unwrap();
    assert_eq!(a.display, Some(Bytes::new()));
    let a = na("A  B\t<sip:x@y.example.com>;tag=2").unwrap();
    assert_eq!(a.display, Some(b("A  B")));
    assert_eq!(a.raw, b("A  B\t<sip:x@y.example.com>;tag=2"));
    for bad in [
        "",
        "<sip:alice@example.com",
        "< sip:alice@example.com>",
        "<sip:alice@example.com >",
        "\"unterminated <sip:a@b.example.com>",
        "Bell, Alexander <sip:a@b.example.com>",
        "sip:a@b.example.com?x=y",
        "<sip:a@b.example.com>;",
        "<sip:a@b.example.com> junk",
        "<sip:a@b.example.com>, <sip:c@d.example.com>",
        "name",
    ] {
        assert!(na(bad).is_err(), "{bad:?}");
    }
    // Star contact.
    let m = parse(&crlf(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1
To: <sip:a@example.com>
From: <sip:a@example.com>;tag=1
Call-ID: star@x
CSeq: 2 REGISTER
Contact: *
Expires: 0
Content-Length: 0

",
    ));
    assert_eq!(m.contacts().unwrap(), Some(ContactList::Star));
    assert_eq!(m.expires().unwrap(), Some(0));
    assert!(m.validate().is_ok());
}

#[test]
fn content_length_rules() {
    let msg = |cl: &str, body: &str| {
        format!(
            "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nTo: <sip:a@example.com>\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: cl@x\r\nCSeq: 1 MESSAGE\r\n{cl}\r\n{body}"
        )
    };
    let p = |s: String, f| Message::parse(Bytes::from(s), f);
    // Extra datagram octets are discarded.
    let m = p(
        msg("Content-Length: 5\r\n", "helloEXTRA"),
        Framing::Datagram,
    )
    .unwrap();
    assert_eq!(m.body, b("hello"));
    assert!(!m.buf.ends_with(b"EXTRA"));
    // Missing Content-Length: rest of the datagram; mandatory over a stream.
    let m = p(msg("", "hello"), Framing::Datagram).unwrap();
    assert_eq!(m.body, b("hello"));
    assert_eq!(
        p(msg("", "hello"), Framing::Stream).unwrap_err(),
        ParseError::ContentLength
    );
    // Too large: error over UDP, incomplete over TCP.
    assert_eq!(
        p(msg("l: 6\r\n", "hello"), Framing::Datagram).unwrap_err(),
        ParseError::ContentLength
    );
    assert_eq!(
        p(msg("l: 6\r\n", "hello"), Framing::Stream).unwrap_err(),
        ParseError::Incomplete
    );
    for bad in ["-1", "+5", "5x", "", "0x5", "99999999999999999999", "5 5"] {
        let e = p(
            msg(&format!("Content-Length: {bad}\r\n"), "hello"),
            Framing::Datagram,
        );
        assert_eq!(e.unwrap_err(), ParseError::ContentLength, "{bad:?}");
    }
    // Duplicates: equal ones parse (validate flags them), differing ones are an error.
    let m = p(
        msg("Content-Length: 5\r\nl: 5\r\n", "hello"),
        Framing::Datagram,
    )
    .unwrap();
    assert_eq!(m.validate(), Err(ParseError::Count("Content-Length")));
    let e = p(
        msg("Content-Length: 5\r\nl: 4\r\n", "hello"),
        Framing::Datagram,
    );
    assert_eq!(e.unwrap_err(), ParseError::ContentLength);
}

#[test]
fn frame_stream_partial_and_multiple() {
    let one = crlf(INVITE);
    let two = format!("{one}{one}");
    let n = one.len();
    assert_eq!(frame_stream(two.as_bytes()), Ok(Some(n)));
    assert_eq!(frame_stream(&two.as_bytes()[n..]), Ok(Some(n)));
    for cut in [0, 1, 10, 200, n - 5, n - 1] {
        assert_eq!(
            frame_stream(&one.as_bytes()[..cut]),
            Ok(None),
            "cut at {cut}"
        );
    }
    // Leading keep-alives are counted and reported.
    let ka = format!("\r\n\r\n{one}");
    assert_eq!(leading_keepalive(ka.as_bytes()), 4);
    assert_eq!(frame_stream(ka.as_bytes()), Ok(Some(n + 4)));
    let m = Message::parse(Bytes::from(ka), Framing::Stream).unwrap();
    assert_eq!(m.buf.len(), n);
    assert_eq!(frame_stream(b"\r\n\r\n"), Ok(None));
    // Stream parse of the first of two messages.
    let m = Message::parse(Bytes::from(two.clone()), Framing::Stream).unwrap();
    assert_eq!(m.buf.len(), n);
    assert_eq!(m.body, b("v=0\r\n"));
    // Content-Length is mandatory on a stream.
    let no_cl = "OPTIONS sip:a@b.example.com SIP/2.0\r\nCall-ID: x\r\n\r\n";
    assert_eq!(
        frame_stream(no_cl.as_bytes()),
        Err(ParseError::ContentLength)
    );
    // Garbage without an end of headers is cut off at the size limit.
    let junk = vec![b'a'; MAX_MESSAGE_BYTES + 10];
    assert_eq!(frame_stream(&junk), Err(ParseError::TooLarge));
    let mut long_headers = b"OPTIONS sip:a@b.example.com SIP/2.0\r\n".to_vec();
    while long_headers.len() <= MAX_MESSAGE_BYTES {
        long_headers.extend_from_slice(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(frame_stream(&long_headers), Err(ParseError::TooLarge));
    // A declared body beyond the limit.
    let big = "OPTIONS sip:a@b.example.com SIP/2.0\r\nl: 70000\r\n\r\n";
    assert_eq!(frame_stream(big.as_bytes()), Err(ParseError::TooLarge));
    assert_eq!(
        frame_stream(b"OPTIONS sip:a SIP/2.0\r\nbad header\r\n\r\n"),
        Err(ParseError::Header)
    );
}

#[test]
fn limits() {
    let base =
        "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n";
    // One header line over 8 KiB.
    let huge = format!(
        "{base}X-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(
        Message::parse(Bytes::from(huge), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    // ... also when reached through folding.
    let folded = format!(
        "{base}X-Big: a{}\r\nContent-Length: 0\r\n\r\n",
        "\r\n continued".repeat(900)
    );
    assert_eq!(
        Message::parse(Bytes::from(folded), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    // A header name over 255 octets.
    let long_name = format!("{base}X-{}: 1\r\n\r\n", "n".repeat(300));
    assert_eq!(
        Message::parse(Bytes::from(long_name), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    // A long start line.
    let long_start = format!(
        "OPTIONS sip:{}@example.com SIP/2.0\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(
        Message::parse(Bytes::from(long_start), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    // Too many headers.
    let many = format!(
        "{base}{}Content-Length: 0\r\n\r\n",
        "X-A: 1\r\n".repeat(MAX_HEADERS)
    );
    assert_eq!(
        Message::parse(Bytes::from(many), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    let exactly = format!("{base}{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS - 1));
    assert_eq!(
        Message::parse(Bytes::from(exactly), Framing::Datagram)
            .unwrap()
            .headers()
            .count(),
        MAX_HEADERS
    );
    // A datagram over the message limit.
    let big = format!("{base}\r\n{}", "x".repeat(MAX_MESSAGE_BYTES));
    assert_eq!(
        Message::parse(Bytes::from(big), Framing::Datagram).unwrap_err(),
        ParseError::TooLarge
    );
    // The biggest allowed datagram works (offsets fit u16).
    let head = format!("{base}X-Last: end\r\n\r\n");
    let fill = MAX_MESSAGE_BYTES - head.len();
    let max = format!("{head}{}", "y".repeat(fill));
    let m = Message::parse(Bytes::from(max), Framing::Datagram).unwrap();
    assert_eq!(m.buf.len(), MAX_MESSAGE_BYTES);
    assert_eq!(m.other_header("x-last"), Some(b("end")));
    assert_eq!(m.body.len(), fill);
}

#[test]
fn non_utf8_and_garbage() {
    let mut raw = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK\xff\xfe\r\nTo: \"\xc3\x28\xff\" <sip:a@example.com>\r\nFrom: <sip:b@example.com>;tag=\xff\r\nCall-ID: \xff@x\r\nCSeq: 1 OPTIONS\r\nX-Bin: \x00\x01\xff\r\nl: 2\r\n\r\n\xff\xfe".to_vec();
    let m = Message::parse(Bytes::from(raw.clone()), Framing::Datagram).unwrap();
    assert_eq!(
        m.other_header("x-bin"),
        Some(Bytes::from_static(b"\x00\x01\xff"))
    );
    assert_eq!(
        m.to_hdr().unwrap().display,
        Some(Bytes::from_static(b"\xc3\x28\xff"))
    );
    assert!(m.top_via().is_err());
    assert!(m.validate().is_err());
    assert_eq!(m.body, Bytes::from_static(b"\xff\xfe"));
    // Non-token octets in a header name or method.
    raw[0] = 0xff;
    assert_eq!(
        Message::parse(Bytes::from(raw), Framing::Datagram).unwrap_err(),
        ParseError::StartLine
    );
    let e = Message::parse(
        Bytes::from_static(b"OPTIONS sip:a SIP/2.0\r\nX\xffY: 1\r\n\r\n"),
        Framing::Datagram,
    );
    assert_eq!(e.unwrap_err(), ParseError::Header);
    for junk in [
        &b""[..],
        b"\r\n",
        b"\r\n\r\n",
        b"SIP/2.0",
        b"SIP/2.0 200",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"INVITE\r\n\r\n",
        b"INVITE sip:a\r\n\r\n",
        b"INVITE sip:a HTTP/1.1\r\n\r\n",
        b" INVITE sip:a SIP/2.0\r\n\r\n",
        b"\x00\x00\x00\x00",
        b":\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\n: x\r\n\r\n",
    ] {
        assert!(
            Message::parse(Bytes::copy_from_slice(junk), Framing::Datagram).is_err(),
            "{junk:?}"
        );
    }
    // A response without a reason phrase, and one with a lower-case version.
    let m = Message::parse(
        Bytes::from_static(b"SIP/2.0 180\r\n\r\n"),
        Framing::Datagram,
    )
    .unwrap();
    assert_eq!(m.status(), Some(180));
}

#[test]
fn truncated_input_never_parses_as_complete() {
    let full = crlf(INVITE);
    let bytes = full.as_bytes();
    let body_start = full.find("\r\n\r\n").unwrap() + 4;
    for cut in 0..bytes.len() {
        let r = Message::parse(Bytes::copy_from_slice(&bytes[..cut]), Framing::Datagram);
        if cut < body_start {
            assert!(r.is_err(), "prefix {cut} parsed");
        } else {
            // Headers complete, body short of Content-Length.
            assert_eq!(r.unwrap_err(), ParseError::ContentLength, "prefix {cut}");
        }
        let s = Message::parse(Bytes::copy_from_slice(&bytes[..cut]), Framing::Stream);
        assert!(s.is_err());
        assert_eq!(frame_stream(&bytes[..cut]), Ok(None));
    }
    assert!(Message::parse(Bytes::copy_from_slice(bytes), Framing::Datagram).is_ok());
}

fn src(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn response_builder_echoes_vias_and_fills_received_rport() {
    let req = invite();
    let resp = ResponseBuilder::new(&req, 180, "Ringing", src("203.0.113.7:40001"))
        .to_tag("as83kd")
        .header("Server", "podpbx")
        .build();
    let r = Message::parse(resp.clone(), Framing::Datagram).unwrap();
    assert_eq!(r.status(), Some(180));
    let lines: Vec<Bytes> = r.header_values(HeaderName::Via).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        b("SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;rport=40001;received=203.0.113.7")
    );
    // Other Via lines byte for byte.
    assert_eq!(lines[1], req.header_values(HeaderName::Via).nth(1).unwrap());
    let top = r.top_via().unwrap();
    assert_eq!(top.rport(), Some(Some(40001)));
    assert_eq!(top.received(), Some("203.0.113.7".parse().unwrap()));
    assert_eq!(top.branch(), Some(b("z9hG4bKnashds8")));
    assert_eq!(r.to_hdr().unwrap().tag(), Some(b("as83kd")));
    assert_eq!(
        r.header(HeaderName::To),
        Some(b("Bob <sip:bob@biloxi.example.com>;tag=as83kd"))
    );
    assert_eq!(r.header(HeaderName::From), req.header(HeaderName::From));
    assert_eq!(r.call_id().unwrap(), req.call_id().unwrap());
    assert_eq!(r.cseq().unwrap(), req.cseq().unwrap());
    assert_eq!(r.header(HeaderName::Server), Some(b("podpbx")));
    assert_eq!(r.header(HeaderName::ContentLength), Some(b("0")));
    assert!(r.validate().is_ok());
    assert!(resp.starts_with(b"SIP/2.0 180 Ringing\r\n"));
    assert!(resp.ends_with(b"\r\n\r\n"));

    // 100 Trying without to_tag: no tag; a body sets Content-Type and Content-Length.
    let r = ResponseBuilder::new(&req, 100, "Trying", src("192.0.2.4:5060"))
        .body("text/plain", b"hi")
        .build();
    let r = Message::parse(r, Framing::Datagram).unwrap();
    assert_eq!(r.to_hdr().unwrap().tag(), None);
    assert_eq!(r.content_type(), Some(b("text/plain")));
    assert_eq!(r.body, b("hi"));
    // rport present: received is added even though the address matches.
    assert_eq!(
        r.header(HeaderName::Via),
        Some(b(
            "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.4"
        ))
    );
}

#[test]
fn response_builder_received_rules() {
    let top = |via: &str, source: Option<SocketAddr>| {
        let req = via_msg(via);
        let r = ResponseBuilder::new(&req, 200, "OK", source)
            .to_tag("t")
            .build();
        let r = Message::parse(r, Framing::Datagram).unwrap();
        assert!(r.validate().is_ok());
        r.header(HeaderName::Via).unwrap()
    };
    // Same IP, no rport: unchanged.
    assert_eq!(
        top(
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
            src("192.0.2.1:5060")
        ),
        b("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1")
    );
    // Different IP or a name: received added.
    assert_eq!(
        top(
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
            src("192.0.2.2:5060")
        ),
        b("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;received=192.0.2.2")
    );
    assert_eq!(
        top(
            "SIP/2.0/UDP pc.example.com;branch=z9hG4bK1",
            src("192.0.2.2:5060")
        ),
        b("SIP/2.0/UDP pc.example.com;branch=z9hG4bK1;received=192.0.2.2")
    );
    // IPv6 source: received without brackets (RFC 5118 §4.5), and it reads back.
    let v = top(
        "SIP/2.0/UDP [2001:db8::1];rport;branch=z9hG4bK1",
        src("[2001:db8::99]:5099"),
    );
    assert_eq!(
        v,
        b("SIP/2.0/UDP [2001:db8::1];rport=5099;branch=z9hG4bK1;received=2001:db8::99")
    );
    // Same IPv6 address, no rport: unchanged.
    assert_eq!(
        top(
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1",
            src("[2001:db8::1]:5060")
        ),
        b("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1")
    );
    // IPv4-mapped source compares and prints as IPv4.
    assert_eq!(
        top(
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
            src("[::ffff:192.0.2.1]:5060")
        ),
        b("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
    );
    assert_eq!(
        top("SIP/2.0/UDP 192.0.2.1;rport", src("[::ffff:192.0.2.9]:7")),
        b("SIP/2.0/UDP 192.0.2.1;rport=7;received=192.0.2.9")
    );
    // rport with white space around it, and a comma list where only the first value changes.
    assert_eq!(
        top("SIP/2.0/UDP a.example.com ; rport ;branch=z9hG4bK1 , SIP/2.0/UDP b.example.com;rport", src("192.0.2.3:1234")),
        b("SIP/2.0/UDP a.example.com ; rport=1234 ;branch=z9hG4bK1;received=192.0.2.3 , SIP/2.0/UDP b.example.com;rport")
    );
    // A stale, bare or matching received is replaced, completed or kept, never duplicated.
    assert_eq!(
        top(
            "SIP/2.0/UDP 192.0.2.1;received=192.0.2.50;x",
            src("192.0.2.2:5060")
        ),
        b("SIP/2.0/UDP 192.0.2.1;received=192.0.2.2;x")
    );
    assert_eq!(
        top("SIP/2.0/UDP 192.0.2.1;received;rport", src("192.0.2.2:9")),
        b("SIP/2.0/UDP 192.0.2.1;received=192.0.2.2;rport=9")
    );
    assert_eq!(
        top(
            "SIP/2.0/UDP 192.0.2.1;rport;received=192.0.2.2",
            src("192.0.2.2:9")
        ),
        b("SIP/2.0/UDP 192.0.2.1;rport=9;received=192.0.2.2")
    );
    // No source: unchanged.
    assert_eq!(
        top("SIP/2.0/UDP 192.0.2.1;rport", None),
        b("SIP/2.0/UDP 192.0.2.1;rport")
    );
    // A To with a tag keeps it.
    let req = parse(&crlf("BYE sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\nTo: <sip:a@example.com>;tag=old\nFrom: <sip:b@example.com>;tag=1\nCall-ID: t@x\nCSeq: 2 BYE\nl: 0\n\n"));
    let r = Message::parse(
        ResponseBuilder::new(&req, 200, "OK", None)
            .to_tag("new")
            .build(),
        Framing::Datagram,
    )
    .unwrap();
    assert_eq!(r.to_hdr().unwrap().tag(), Some(b("old")));
    // Header injection is neutralised.
    let r = ResponseBuilder::new(&req, 200, "OK\r\nX: y", None)
        .header("A", "b\r\nC: d")
        .build();
    let r = Message::parse(r, Framing::Datagram).unwrap();
    assert_eq!(r.other_header("X"), None);
    assert_eq!(r.other_header("C"), None);
}

#[test]
fn ack_and_cancel() {
    let req = invite();
    let resp = ResponseBuilder::new(&req, 486, "Busy Here", src("192.0.2.4:5060"))
        .to_tag("bz")
        .build();
    let resp = Message::parse(resp, Framing::Datagram).unwrap();
    let ack = Message::parse(ack_for(&req, &resp), Framing::Datagram).unwrap();
    assert!(ack.validate().is_ok());
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.request_uri().unwrap(), req.request_uri().unwrap());
    let vias = ack.vias().unwrap();
    assert_eq!(vias.len(), 1);
    assert_eq!(vias[0].raw, req.top_via().unwrap().raw);
    assert_eq!(ack.routes().unwrap(), req.routes().unwrap());
    assert_eq!(ack.header_count(HeaderName::Route), 2);
    assert_eq!(ack.max_forwards().unwrap(), Some(70));
    assert_eq!(ack.header(HeaderName::From), req.header(HeaderName::From));
    assert_eq!(ack.to_hdr().unwrap().tag(), Some(b("bz")));
    assert_eq!(ack.call_id().unwrap(), req.call_id().unwrap());
    let cseq = ack.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (314159, Method::Ack));
    assert!(ack.body.is_empty());
    assert_eq!(ack.header(HeaderName::ContentLength), Some(b("0")));

    let cancel = Message::parse(cancel_for(&req), Framing::Datagram).unwrap();
    assert!(cancel.validate().is_ok());
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(cancel.request_uri().unwrap(), req.request_uri().unwrap());
    assert_eq!(cancel.vias().unwrap().len(), 1);
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        Some(b("z9hG4bKnashds8"))
    );
    assert_eq!(cancel.header(HeaderName::To), req.header(HeaderName::To));
    assert_eq!(cancel.cseq().unwrap().seq, 314159);
    assert_eq!(cancel.cseq().unwrap().method, Method::Cancel);
    assert_eq!(cancel.routes().unwrap().len(), 3);
}

#[test]
fn request_builder_and_methods() {
    let r = RequestBuilder::new(&Method::Options, "sip:bob@example.com")
        .header("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
        .header("To", "<sip:bob@example.com>")
        .header("From", "<sip:alice@example.com>;tag=1")
        .header("Call-ID", "rb@x")
        .header("CSeq", "1 OPTIONS")
        .header("Max-Forwards", "70")
        .body("text/plain", b"x")
        .build();
    let m = Message::parse(r, Framing::Stream).unwrap();
    assert!(m.validate().is_ok());
    assert_eq!(m.body, b("x"));
    let ext = Method::from_bytes(b"FOO");
    assert_eq!(ext, Method::Other(b("FOO")));
    assert_eq!(ext.to_string(), "FOO");
    assert_eq!(Method::from_bytes(b"INVITE"), Method::Invite);
    assert_eq!(Method::from_bytes(b"invite"), Method::Other(b("invite")));
    assert_eq!(Method::Subscribe.as_str(), "SUBSCRIBE");
    assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
    let r = RequestBuilder::new(&ext, "sip:x@y.example.com").build();
    assert!(r.starts_with(b"FOO sip:x@y.example.com SIP/2.0\r\n"));
    assert!(r.ends_with(b"Content-Length: 0\r\n\r\n"));
}

#[test]
fn validate_scalars_and_counts() {
    let base = |extra: &str, cseq: &str| {
        parse(&crlf(&format!(
            "OPTIONS sip:a@example.com SIP/2.0
Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1
To: <sip:a@example.com>
From: <sip:b@example.com>;tag=1
Call-ID: s@x
CSeq: {cseq}
{extra}l: 0

"
        )))
    };
    assert!(base("", "1 OPTIONS").validate().is_ok());
    assert!(base("Max-Forwards: 255\n", "2147483647 OPTIONS")
        .validate()
        .is_ok());
    assert_eq!(
        base("", "2147483648 OPTIONS").validate(),
        Err(ParseError::Value("CSeq"))
    );
    assert_eq!(
        base("", "1 INVITE").validate(),
        Err(ParseError::Value("CSeq method"))
    );
    assert_eq!(base("", "1").validate(), Err(ParseError::Value("CSeq")));
    assert_eq!(
        base("", "OPTIONS").validate(),
        Err(ParseError::Value("CSeq"))
    );
    assert_eq!(
        base("Max-Forwards: 256\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Max-Forwards"))
    );
    assert_eq!(
        base("Max-Forwards: 1\nMax-Forwards: 1\n", "1 OPTIONS").validate(),
        Err(ParseError::Count("Max-Forwards"))
    );
    assert_eq!(
        base("Expires: 4294967295\n", "1 OPTIONS").validate(),
        Ok(())
    );
    assert_eq!(
        base("Expires: 4294967296\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Expires"))
    );
    assert_eq!(
        base("Contact: <sip:a@b.example.com>;expires=x\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Contact"))
    );
    assert_eq!(
        base("Contact: *, <sip:a@b.example.com>\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Contact"))
    );
    assert_eq!(
        base("Date: Sat, 13 Nov 2010 23:29:00 GMT\n", "1 OPTIONS").validate(),
        Ok(())
    );
    assert_eq!(
        base("Date: Sat, 13 Nov 2010 23:29:00 PST\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Date"))
    );
    assert_eq!(
        base("Call-ID: t@x\n", "1 OPTIONS").validate(),
        Err(ParseError::Count("Call-ID"))
    );
    assert_eq!(
        base("Route: <sip:a@b.example.com;lr>,\n", "1 OPTIONS").validate(),
        Err(ParseError::Value("Route"))
    );
    assert_eq!(
        base("Record-Route: sip:a@b.example.com;lr\n", "1 OPTIONS").validate(),
        Ok(())
    );
    let r = parse("SIP/2.0 700 Weird\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nTo: <sip:a@example.com>;tag=2\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: s@x\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert_eq!(r.validate(), Err(ParseError::StartLine));
    let r = parse("SIP/3.0 200 OK\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nTo: <sip:a@example.com>;tag=2\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: s@x\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert_eq!(r.validate(), Err(ParseError::Version));
    let r = parse("SIP/2.0  200 OK\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nTo: <sip:a@example.com>;tag=2\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: s@x\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.validate(), Err(ParseError::StartLine));
}

/// Feeds `data` to a fresh [`StreamFramer`] one octet at a time.
fn drip(data: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut f = StreamFramer::default();
    let mut last = Ok(None);
    for cut in 1..=data.len() {
        last = f.next(&data[..cut]);
        match &last {
            Ok(Some(n)) => {
                // Never earlier than frame_stream, and the same length.
                assert_eq!(frame_stream(&data[..cut]), Ok(Some(*n)));
                return last;
            }
            Ok(None) => assert!(
                !matches!(frame_stream(&data[..cut]), Ok(Some(_))),
                "cut {cut}: frame_stream found a message the framer missed"
            ),
            Err(_) => return last,
        }
    }
    assert!(f.scanned() <= data.len());
    last
}

#[test]
fn stream_framer_agrees_with_frame_stream_octet_by_octet() {
    let one = crlf(INVITE);
    let two = format!("\r\n\r\n{one}{one}");
    let n = one.len();
    assert_eq!(drip(two.as_bytes()), Ok(Some(n + 4)));
    assert_eq!(drip(one.as_bytes()), Ok(Some(n)));
    // The whole buffer at once, then more data after the first message.
    let mut f = StreamFramer::default();
    assert_eq!(f.next(&two.as_bytes()[..20]), Ok(None));
    assert_eq!(f.next(two.as_bytes()), Ok(Some(n + 4)));
    assert_eq!(f.next(two.as_bytes()), Ok(Some(n + 4)));
    // Errors: no Content-Length, bad header, an endless line, a head beyond the limit.
    let no_cl = "OPTIONS sip:a@b.example.com SIP/2.0\r\nCall-ID: x\r\n\r\n";
    assert_eq!(drip(no_cl.as_bytes()), Err(ParseError::ContentLength));
    assert_eq!(
        drip(b"OPTIONS sip:a SIP/2.0\r\nbad header\r\n\r\n"),
        Err(ParseError::Header)
    );
    let big = "OPTIONS sip:a@b.example.com SIP/2.0\r\nl: 70000\r\n\r\n";
    assert_eq!(drip(big.as_bytes()), Err(ParseError::TooLarge));
    let endless = vec![b'a'; MAX_HEADER_LINE_BYTES + 2];
    assert_eq!(drip(&endless), Err(ParseError::TooLarge));
    let mut long_headers = b"OPTIONS sip:a@b.example.com SIP/2.0\r\n".to_vec();
    while long_headers.len() <= MAX_MESSAGE_BYTES {
        long_headers.extend_from_slice(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(drip(&long_headers), Err(ParseError::TooLarge));
    // Too many headers is seen before the head ends.
    let mut many = b"OPTIONS sip:a@b.example.com SIP/2.0\r\n".to_vec();
    for _ in 0..=MAX_HEADERS {
        many.extend_from_slice(b"X: y\r\n");
    }
    let mut f = StreamFramer::default();
    assert_eq!(f.next(&many), Err(ParseError::TooLarge));
    // A body that trickles in after the head.
    let with_body = crlf(INVITE);
    let head_end = with_body.find("\r\n\r\n").unwrap() + 4;
    let mut f = StreamFramer::default();
    assert_eq!(f.next(&with_body.as_bytes()[..head_end]), Ok(None));
    let scanned = f.scanned();
    assert_eq!(f.next(&with_body.as_bytes()[..head_end + 1]), Ok(None));
    assert_eq!(f.scanned(), scanned, "the body is not scanned");
    assert_eq!(f.next(with_body.as_bytes()), Ok(Some(with_body.len())));
}

/// The framer looks at each octet of an incomplete head once, however it is dripped.
#[test]
fn stream_framer_scans_each_octet_once() {
    let mut head = b"OPTIONS sip:a@b.example.com SIP/2.0\r\n".to_vec();
    while head.len() < 60_000 {
        head.extend_from_slice(b"X-Pad: ");
        head.extend(std::iter::repeat_n(b'0', 500));
        head.extend_from_slice(b"\r\n");
    }
    let mut f = StreamFramer::default();
    let mut examined = 0;
    let mut before = 0;
    for cut in 1..=head.len() {
        assert_eq!(f.next(&head[..cut]), Ok(None));
        examined += f.scanned() - before;
        before = f.scanned();
    }
    assert_eq!(examined, head.len());
}

/// The To tag is opened up in place (issue #14): what follows the To line is kept byte for byte
/// and CR/LF in a tag cannot inject a line.
#[test]
fn response_to_tag_is_inserted_in_place_and_cleaned() {
    let req = invite();
    let resp = ResponseBuilder::new(&req, 486, "Busy Here", src("192.0.2.4:5060"))
        .to_tag("x\r\ny")
        .header("Server", "podpbx")
        .build();
    let r = Message::parse(resp, Framing::Datagram).unwrap();
    assert_eq!(
        r.header(HeaderName::To),
        Some(b("Bob <sip:bob@biloxi.example.com>;tag=x  y"))
    );
    assert_eq!(r.call_id().unwrap(), req.call_id().unwrap());
    assert_eq!(r.cseq().unwrap(), req.cseq().unwrap());
    assert_eq!(r.header(HeaderName::Server), Some(b("podpbx")));
    // (A tag with spaces is not a token: such a To does not validate, but it stays one line.)
    assert_eq!(r.header_count(HeaderName::To), 1);
}
