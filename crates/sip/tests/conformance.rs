//! RFC 4475 / RFC 5118 torture messages: every file in `tests/data/conformance/{rfc4475,rfc5118}`
//! against the verdict table of `tests/data/conformance/README.md`.
//!
//! Valid and "valid syntax" (semantic) messages must parse as datagrams, pass
//! `Message::validate`, and show the right fields; invalid ones must be rejected by
//! `Message::parse` or by `Message::validate`. The test fails on any unlisted or missing file.

use bytes::Bytes;
use podpbx_sip::{ContactList, Framing, Host, Message, Method, ParseError};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Must be accepted.
    Valid,
    /// Syntactically valid; handled above the parser (416, 420, 483, ...).
    Semantic,
    /// Must be rejected (400 or drop).
    Invalid,
}
use Verdict::*;

type Check = fn(&Message);

fn none(_: &Message) {}

/// The torture corpus kept in the repository: `<workspace root>/tests/data/conformance`.
fn conformance_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/sip -> workspace root
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .expect("workspace root");
    root.join("tests").join("data").join("conformance")
}

fn v6(s: &str) -> Host {
    Host::V6(s.parse::<Ipv6Addr>().unwrap())
}
fn v4(s: &str) -> Host {
    Host::V4(s.parse::<Ipv4Addr>().unwrap())
}
fn name(s: &str) -> Host {
    Host::Name(Bytes::copy_from_slice(s.as_bytes()))
}
fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
fn other(m: &Message, n: &str) -> Bytes {
    m.other_header(n)
        .unwrap_or_else(|| panic!("missing header {n}"))
}

fn table() -> Vec<(&'static str, &'static str, Verdict, Check)> {
    vec![
        // ---------------------------------------------------------------- RFC 4475 §3.1.1 valid
        ("rfc4475", "wsinv.dat", Valid, |m| {
            assert_eq!(m.method(), Some(&Method::Invite));
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.user, Some(b("vivekg")));
            assert_eq!(ru.param("unknownparam"), Some(Bytes::new()));
            let to = m.to_hdr().unwrap();
            assert_eq!(to.uri.host, Some(name("chair-dnrc.example.com")));
            assert_eq!(to.tag(), Some(b("1918181833n")));
            let from = m.from_hdr().unwrap();
            assert_eq!(from.display, Some(b(r#"J Rosenberg \\\""#)));
            assert_eq!(
                from.display_unescaped().unwrap().as_ref(),
                br#"J Rosenberg \""#
            );
            assert_eq!(from.tag(), Some(b("98asjd8")));
            assert_eq!(m.max_forwards().unwrap(), Some(68));
            let cseq = m.cseq().unwrap();
            assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));
            assert_eq!(m.call_id().unwrap(), b("wsinv.ndaksdj@192.0.2.1"));
            let vias = m.vias().unwrap();
            assert_eq!(vias.len(), 3);
            assert_eq!(vias[0].transport, b("UDP"));
            assert_eq!(vias[0].host, v4("192.0.2.2"));
            assert_eq!(vias[0].branch(), Some(b("390skdjuw")));
            assert_eq!(vias[1].transport, b("TCP"));
            assert_eq!(vias[1].host, name("spindle.example.com"));
            assert_eq!(vias[1].branch(), Some(b("z9hG4bK9ikj8")));
            assert_eq!(vias[2].host, v4("192.168.255.111"));
            assert_eq!(vias[2].branch(), Some(b("z9hG4bK30239")));
            assert_eq!(m.top_via().unwrap(), vias[0]);
            let Some(ContactList::List(cs)) = m.contacts().unwrap() else {
                panic!("contacts")
            };
            assert_eq!(cs.len(), 1);
            assert_eq!(cs[0].addr.display, Some(b(r#"Quoted string \"\""#)));
            assert_eq!(cs[0].q(), Some(330));
            assert_eq!(cs[0].addr.params.get("newparam"), Some(b("newvalue")));
            assert_eq!(cs[0].addr.params.get("secondparam"), Some(Bytes::new()));
            assert_eq!(
                m.header(podpbx_sip::HeaderName::Subject),
                Some(Bytes::new())
            );
            let nf = other(m, "newfangledheader");
            assert!(
                nf.starts_with(b"newfangled value") && nf.ends_with(b"continued newfangled value")
            );
            assert_eq!(other(m, "UnknownHeaderWithUnusualValue"), b(";;,,;;,;"));
            let routes = m.routes().unwrap();
            assert_eq!(routes.len(), 1);
            assert_eq!(routes[0].uri.param("lr"), Some(Bytes::new()));
            assert_eq!(routes[0].uri.param("unknownwith"), Some(b("value")));
            assert_eq!(m.content_type(), Some(b("application/sdp")));
            assert_eq!(m.body.len(), 150);
        }),
        ("rfc4475", "intmeth.dat", Valid, |m| {
            let meth = "!interesting-Method0123456789_*+`.%indeed'~";
            assert_eq!(m.method(), Some(&Method::Other(b(meth))));
            assert_eq!(m.cseq().unwrap().method.as_str(), meth);
            assert_eq!(m.cseq().unwrap().seq, 139122385);
            let ru = m.request_uri().unwrap();
            assert_eq!(
                ru.user,
                Some(b("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"))
            );
            assert_eq!(
                ru.password,
                Some(b("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"))
            );
            assert_eq!(ru.host, Some(name("example.com")));
            let to = m.to_hdr().unwrap();
            assert_eq!(
                to.display_unescaped().unwrap().as_ref(),
                b"BEL:\x07 NUL:\x00 DEL:\x7f"
            );
            assert_eq!(
                to.uri.user,
                Some(b("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"))
            );
            let from = m.from_hdr().unwrap();
            assert_eq!(from.display, Some(b("token1~` token2'+_ token3*%!.-")));
            assert_eq!(from.tag(), Some(b("_token~1'+`*%!-.")));
            assert!(from
                .params
                .get("fromParam''~+*_!.-%")
                .unwrap()
                .starts_with(b"\""));
            assert_eq!(
                m.top_via().unwrap().branch(),
                Some(b("z9hG4bK-.!%66*_+`'~"))
            );
            assert_eq!(
                m.call_id().unwrap(),
                b("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
            );
            assert_eq!(m.max_forwards().unwrap(), Some(255));
            assert_eq!(
                other(m, "extensionHeader-!.%*+_`'~"),
                Bytes::from_static("\u{FEFF}\u{5927}\u{505C}\u{96FB}".as_bytes())
            );
            assert!(m.body.is_empty());
        }),
        ("rfc4475", "esc01.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.user, Some(b("sips%3Auser%40example.com")));
            assert_eq!(ru.host, Some(name("example.net")));
            assert_eq!(m.to_hdr().unwrap().uri.user, Some(b("%75se%72")));
            assert_eq!(m.from_hdr().unwrap().uri.user, Some(b("I%20have%20spaces")));
            let c = m.contact_iter().next().unwrap().unwrap();
            assert_eq!(c.addr.uri.user, Some(b("cal%6Cer")));
            assert_eq!(c.addr.uri.params, b("%6C%72;n%61me=v%61lue%25%34%31"));
            assert_eq!(
                m.call_id().unwrap(),
                b("esc01.239409asdfakjkn23onasd0-3234")
            );
            assert_eq!(m.content_type(), Some(b("application/sdp")));
            assert_eq!(m.body.len(), 150);
        }),
        ("rfc4475", "escnull.dat", Valid, |m| {
            let Some(ContactList::List(cs)) = m.contacts().unwrap() else {
                panic!("contacts")
            };
            assert_eq!(cs.len(), 2);
            assert_eq!(cs[0].addr.uri.user, Some(b("%00")));
            assert_eq!(cs[1].addr.uri.user, Some(b("%00%00")));
            assert_eq!(m.to_hdr().unwrap().uri.user, Some(b("null-%00-null")));
            assert!(m.body.is_empty());
        }),
        ("rfc4475", "esc02.dat", Valid, |m| {
            assert_eq!(m.method(), Some(&Method::Other(b("RE%47IST%45R"))));
            assert_eq!(m.cseq().unwrap().method, Method::Other(b("RE%47IST%45R")));
            assert_eq!(m.to_hdr().unwrap().display, Some(b("%Z%45")));
            assert_eq!(
                m.top_via().unwrap().branch(),
                Some(b("z9hG4bK209%fzsnel234"))
            );
            // `C%6Fntact` is an unknown header, not a Contact.
            assert_eq!(m.contact_iter().count(), 2);
            assert_eq!(other(m, "C%6Fntact"), b("<sip:alias2@host2.example.com>"));
        }),
        ("rfc4475", "lwsdisp.dat", Valid, |m| {
            let from = m.from_hdr().unwrap();
            assert_eq!(from.display, Some(b("caller")));
            assert_eq!(from.uri.user, Some(b("caller")));
            assert_eq!(from.tag(), Some(b("323")));
        }),
        ("rfc4475", "longreq.dat", Valid, |m| {
            let to = m.to_hdr().unwrap();
            assert!(to
                .display
                .as_ref()
                .unwrap()
                .starts_with(b"I have a user name of extreme"));
            assert_eq!(to.uri.port, Some(6000));
            assert!(to.uri.param("longparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename").is_some_and(|v| v == "shortvalue"));
            let from = m.from_hdr().unwrap();
            assert!(from.tag().unwrap().len() > 150);
            assert!(from.uri.user.as_ref().unwrap().len() > 100);
            let cid = m.call_id().unwrap();
            assert!(cid.starts_with(b"longreq.onereally") && cid.ends_with(b"longcallid"));
            let vias = m.vias().unwrap();
            assert_eq!(vias.len(), 34);
            assert_eq!(vias[0].host, name("sip33.example.com"));
            assert_eq!(vias[33].host, name("host.example.com"));
            assert_eq!(
                vias[33].received(),
                Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)))
            );
            assert!(vias[33].branch().unwrap().len() > 100);
            assert_eq!(m.body.len(), 150);
        }),
        ("rfc4475", "dblreq.dat", Valid, |m| {
            assert_eq!(m.method(), Some(&Method::Register));
            assert!(m.body.is_empty());
            // The second request in the datagram is discarded.
            assert!(!m.buf.windows(6).any(|w| w == b"INVITE"));
            assert_eq!(
                m.call_id().unwrap(),
                b("dblreq.0ha0isndaksdj99sdfafnl3lk233412")
            );
        }),
        ("rfc4475", "semiuri.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.user, Some(b("user;par=u%40example.net")));
            assert_eq!(ru.host, Some(name("example.com")));
            assert!(ru.params.is_empty());
            let accept = m.tokens(podpbx_sip::HeaderName::Accept);
            assert_eq!(accept.len(), 6);
            assert_eq!(accept[5], b("message/sipfrag"));
            assert_eq!(m.from_hdr().unwrap().tag(), Some(b("33242")));
        }),
        ("rfc4475", "transports.dat", Valid, |m| {
            let t: Vec<Bytes> = m.via_iter().map(|v| v.unwrap().transport).collect();
            assert_eq!(
                t,
                vec![b("UDP"), b("SCTP"), b("TLS"), b("UNKNOWN"), b("TCP")]
            );
            assert_eq!(
                m.call_id().unwrap(),
                b("transports.kijh4akdnaqjkwendsasfdj")
            );
        }),
        ("rfc4475", "mpart01.dat", Valid, |m| {
            assert_eq!(m.method(), Some(&Method::Message));
            assert_eq!(m.content_type(), Some(b("multipart/mixed")));
            assert_eq!(m.body.len(), 553);
            assert_eq!(m.top_via().unwrap().rport(), Some(None));
            assert_eq!(m.top_via().unwrap().port, Some(5070));
            assert!(m.other_header("identity").is_some());
        }),
        ("rfc4475", "unreason.dat", Valid, |m| {
            assert_eq!(m.status(), Some(200));
            let podpbx_sip::StartLine::Response { reason, .. } = &m.start else {
                panic!()
            };
            assert!(reason.starts_with(b"= 2**3 * 5**2 "));
            assert!(std::str::from_utf8(reason).is_ok());
            assert_eq!(m.body.len(), 154);
            assert_eq!(m.to_hdr().unwrap().tag(), Some(b("2229")));
        }),
        ("rfc4475", "noreason.dat", Valid, |m| {
            assert_eq!(m.status(), Some(100));
            let podpbx_sip::StartLine::Response { reason, .. } = &m.start else {
                panic!()
            };
            assert!(reason.is_empty());
            assert_eq!(m.to_hdr().unwrap().tag(), Some(b("902jndnke3")));
        }),
        // -------------------------------------------------------------- RFC 4475 §3.1.2 invalid
        ("rfc4475", "badinv01.dat", Invalid, none),
        ("rfc4475", "clerr.dat", Invalid, none),
        ("rfc4475", "ncl.dat", Invalid, none),
        ("rfc4475", "scalar02.dat", Invalid, none),
        ("rfc4475", "scalarlg.dat", Invalid, none),
        ("rfc4475", "quotbal.dat", Invalid, none),
        ("rfc4475", "ltgtruri.dat", Invalid, none),
        ("rfc4475", "lwsruri.dat", Invalid, none),
        ("rfc4475", "lwsstart.dat", Invalid, none),
        ("rfc4475", "trws.dat", Invalid, none),
        ("rfc4475", "escruri.dat", Invalid, none),
        ("rfc4475", "baddate.dat", Invalid, none),
        ("rfc4475", "regbadct.dat", Invalid, none),
        ("rfc4475", "badaspec.dat", Invalid, none),
        ("rfc4475", "baddn.dat", Invalid, none),
        ("rfc4475", "badvers.dat", Invalid, none),
        ("rfc4475", "mismatch01.dat", Invalid, none),
        ("rfc4475", "mismatch02.dat", Invalid, none),
        ("rfc4475", "bigcode.dat", Invalid, none),
        // ------------------------------------------------------------ RFC 4475 §3.2-3.4 semantic
        ("rfc4475", "badbranch.dat", Semantic, |m| {
            assert_eq!(m.top_via().unwrap().branch(), Some(b("z9hG4bK")));
        }),
        ("rfc4475", "insuf.dat", Invalid, none),
        ("rfc4475", "unkscm.dat", Semantic, |m| {
            let ru = m.request_uri().unwrap();
            assert!(!ru.is_sip());
            assert_eq!(ru.scheme, b("nobodyknowsthisscheme"));
            assert_eq!(ru.raw, b("nobodyKnowsThisScheme:totallyopaquecontent"));
            assert_eq!(ru.host, None);
        }),
        ("rfc4475", "novelsc.dat", Semantic, |m| {
            let ru = m.request_uri().unwrap();
            assert!(!ru.is_sip());
            assert_eq!(ru.scheme, b("soap.beep"));
        }),
        ("rfc4475", "unksm2.dat", Semantic, |m| {
            assert_eq!(m.to_hdr().unwrap().uri.scheme, b("isbn"));
            assert_eq!(m.to_hdr().unwrap().uri.raw, b("isbn:2983792873"));
            let from = m.from_hdr().unwrap();
            assert_eq!(from.uri.scheme, b("http"));
            assert_eq!(from.tag(), Some(b("3234233")));
            assert_eq!(
                m.contact_iter().next().unwrap().unwrap().addr.uri.scheme,
                b("name")
            );
        }),
        ("rfc4475", "bext01.dat", Semantic, |m| {
            use podpbx_sip::HeaderName as H;
            assert_eq!(
                m.tokens(H::Require),
                vec![b("nothingSupportsThis"), b("nothingSupportsThisEither")]
            );
            assert_eq!(m.tokens(H::ProxyRequire).len(), 2);
            assert_eq!(m.top_via().unwrap().transport, b("TLS"));
        }),
        ("rfc4475", "invut.dat", Semantic, |m| {
            assert_eq!(m.content_type(), Some(b("application/unknownformat")));
            assert_eq!(m.body.len(), 40);
        }),
        ("rfc4475", "regaut01.dat", Semantic, |m| {
            let a = m.header(podpbx_sip::HeaderName::Authorization).unwrap();
            assert_eq!(a, b("NoOneKnowsThisScheme opaque-data=here"));
            assert!(m.body.is_empty());
        }),
        ("rfc4475", "multi01.dat", Invalid, none),
        ("rfc4475", "mcl01.dat", Invalid, none),
        ("rfc4475", "bcast.dat", Semantic, |m| {
            assert_eq!(m.status(), Some(200));
            let vias = m.vias().unwrap();
            assert_eq!(vias[1].host, v4("255.255.255.255"));
        }),
        ("rfc4475", "zeromf.dat", Semantic, |m| {
            assert_eq!(m.max_forwards().unwrap(), Some(0));
        }),
        ("rfc4475", "cparam01.dat", Semantic, |m| {
            // addr-spec without <>: `unknownparam` is a contact (header) parameter.
            let c = m.contact_iter().next().unwrap().unwrap();
            assert!(c.addr.uri.params.is_empty());
            assert!(c.addr.params.contains("unknownparam"));
            assert_eq!(c.addr.uri.user, Some(b("+19725552222")));
        }),
        ("rfc4475", "cparam02.dat", Semantic, |m| {
            // name-addr: `unknownparam` is a URI parameter.
            let c = m.contact_iter().next().unwrap().unwrap();
            assert_eq!(c.addr.uri.param("unknownparam"), Some(Bytes::new()));
            assert!(c.addr.params.0.is_empty());
        }),
        ("rfc4475", "regescrt.dat", Semantic, |m| {
            let c = m.contact_iter().next().unwrap().unwrap();
            assert_eq!(c.addr.uri.headers, b("Route=%3Csip:sip.example.com%3E"));
            assert_eq!(c.addr.uri.host, Some(name("example.com")));
        }),
        ("rfc4475", "sdp01.dat", Semantic, |m| {
            assert_eq!(
                m.header(podpbx_sip::HeaderName::Accept),
                Some(b("text/nobodyKnowsThis"))
            );
            assert_eq!(m.content_type(), Some(b("application/sdp")));
        }),
        ("rfc4475", "inv2543.dat", Valid, |m| {
            let via = m.top_via().unwrap();
            assert_eq!(via.branch(), None);
            assert_eq!(via.host, name("iftgw.example.com"));
            assert_eq!(m.max_forwards().unwrap(), None);
            assert!(m.header(podpbx_sip::HeaderName::ContentLength).is_none());
            assert!(m.body.starts_with(b"v=0\r\n") && m.body.ends_with(b"RTP/AVP 0\r\n"));
            let from = m.from_hdr().unwrap();
            assert_eq!(from.uri.param("user"), Some(b("phone")));
            // addr-spec: `;user=phone` is a header parameter of To, not a URI parameter.
            let to = m.to_hdr().unwrap();
            assert_eq!(to.params.get("user"), Some(b("phone")));
            assert!(to.uri.params.is_empty());
            let rr = m.record_routes().unwrap();
            assert_eq!(rr[0].uri.param("maddr"), Some(b("ss1.example.com")));
        }),
        // ------------------------------------------------------------------------- RFC 5118
        ("rfc5118", "ipv6-good.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.host, Some(v6("2001:db8::10")));
            assert_eq!(ru.port, None);
            assert_eq!(m.top_via().unwrap().host, v6("2001:db8::9:1"));
            let c = m.contact_iter().next().unwrap().unwrap();
            assert_eq!(c.addr.uri.host, Some(v6("2001:db8::1")));
            assert_eq!(c.addr.display, Some(b("Caller")));
        }),
        ("rfc5118", "ipv6-bad.dat", Invalid, none),
        ("rfc5118", "port-ambiguous.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.host, Some(v6("2001:db8::10:5070")));
            assert_eq!(ru.port, None);
        }),
        ("rfc5118", "port-unambiguous.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.host, Some(v6("2001:db8::10")));
            assert_eq!(ru.port, Some(5070));
        }),
        ("rfc5118", "via-received-param-with-delim.dat", Valid, |m| {
            let via = m.top_via().unwrap();
            assert_eq!(
                via.received(),
                Some("2001:db8::9:255".parse::<IpAddr>().unwrap())
            );
            assert_eq!(via.host, v6("2001:db8::9:1"));
            assert_eq!(via.branch(), Some(b("z9hG4bKas3-111")));
        }),
        ("rfc5118", "via-received-param-no-delim.dat", Valid, |m| {
            let via = m.top_via().unwrap();
            assert_eq!(
                via.received(),
                Some("2001:db8::9:255".parse::<IpAddr>().unwrap())
            );
            assert_eq!(via.branch(), Some(b("z9hG4bKas3")));
        }),
        ("rfc5118", "ipv6-in-sdp.dat", Valid, |m| {
            // RFC 5118 counted LF line ends: the datagram body is cut at Content-Length.
            assert_eq!(m.body.len(), 241);
            assert_eq!(m.to_hdr().unwrap().uri.host, Some(v6("2001:db8::10")));
            assert_eq!(m.top_via().unwrap().host, v6("2001:db8::20"));
        }),
        ("rfc5118", "mult-ip-in-header.dat", Valid, |m| {
            let vias = m.vias().unwrap();
            assert_eq!(vias.len(), 3);
            assert_eq!(
                (vias[0].host.clone(), vias[0].port),
                (v6("2001:db8::9:1"), Some(6050))
            );
            assert_eq!(vias[1].host, v4("192.0.2.1"));
            assert_eq!(vias[2].host, v6("2001:db8::9:255"));
            assert_eq!(
                vias[2].received(),
                Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)))
            );
            assert_eq!(m.method(), Some(&Method::Bye));
        }),
        ("rfc5118", "mult-ip-in-sdp.dat", Valid, |m| {
            assert_eq!(m.body.len(), 181);
            assert_eq!(
                m.contact_iter().next().unwrap().unwrap().addr.uri.host,
                Some(v6("2001:db8::9:1"))
            );
        }),
        ("rfc5118", "ipv4-mapped-ipv6.dat", Valid, |m| {
            assert_eq!(m.body.len(), 236);
            let vias = m.vias().unwrap();
            assert_eq!(
                (vias[0].host.clone(), vias[0].port),
                (v6("::ffff:192.0.2.10"), Some(19823))
            );
            assert_eq!(
                (vias[1].host.clone(), vias[1].port),
                (v6("::ffff:192.0.2.2"), None)
            );
            let c = m.contact_iter().next().unwrap().unwrap();
            assert_eq!(c.addr.display, Some(b("T. desk phone")));
            assert_eq!(c.addr.uri.host, Some(v6("::ffff:192.0.2.2")));
        }),
        ("rfc5118", "ipv6-bug-abnf-3-colons.dat", Invalid, none),
        ("rfc5118", "ipv6-correct-abnf-2-colons.dat", Valid, |m| {
            let ru = m.request_uri().unwrap();
            assert_eq!(ru.host, Some(v6("2001:db8::192.0.2.1")));
            assert_eq!(
                m.to_hdr().unwrap().uri.host,
                Some(v6("2001:db8::192.0.2.1"))
            );
        }),
    ]
}

/// Exercises every accessor so that a panic anywhere would show.
pub fn touch_everything(m: &Message) {
    use podpbx_sip::HeaderName as H;
    let _ = (
        m.vias(),
        m.top_via(),
        m.from_hdr(),
        m.to_hdr(),
        m.call_id(),
        m.cseq(),
    );
    let _ = (
        m.max_forwards(),
        m.expires(),
        m.contacts(),
        m.routes(),
        m.record_routes(),
    );
    let _ = (
        m.request_uri(),
        m.content_type(),
        m.tokens(H::Supported),
        m.validate(),
    );
    for v in m.via_iter().flatten() {
        let _ = (
            v.branch(),
            v.received(),
            v.rport(),
            v.maddr(),
            v.host.to_string(),
        );
    }
    for c in m.contact_iter().flatten() {
        let _ = (
            c.expires(),
            c.q(),
            c.addr.display_unescaped(),
            c.addr.uri.param("transport"),
        );
    }
    let _ = m.headers().count();
}

#[test]
fn rfc4475_rfc5118_conformance() {
    let dir = conformance_dir();
    let table = table();
    let mut listed: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, (d, f, _, _)) in table.iter().enumerate() {
        assert!(
            listed.insert((d.to_string(), f.to_string()), i).is_none(),
            "duplicate {d}/{f}"
        );
    }
    // Every file on disk must be in the table, and every table entry on disk.
    let mut on_disk = 0;
    for d in ["rfc4475", "rfc5118"] {
        let path = dir.join(d);
        let rd = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for e in rd {
            let f = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                listed.contains_key(&(d.to_string(), f.clone())),
                "{d}/{f} has no verdict"
            );
            on_disk += 1;
        }
    }
    assert_eq!(on_disk, table.len(), "table entries without a file");
    assert_eq!(table.len(), 61);

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let (mut ok_valid, mut n_valid, mut ok_invalid, mut n_invalid) = (0, 0, 0, 0);
    for (d, f, verdict, check) in &table {
        let bytes = std::fs::read(dir.join(d).join(f)).unwrap();
        let parsed = Message::parse(Bytes::from(bytes), Framing::Datagram);
        let outcome: Result<String, String> = match (verdict, &parsed) {
            (Valid | Semantic, Ok(m)) => match m.validate() {
                Ok(()) => {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check(m);
                        touch_everything(m);
                    }));
                    match r {
                        Ok(()) => Ok("parsed, validated, fields ok".into()),
                        Err(_) => Err("field check failed".into()),
                    }
                }
                Err(e) => Err(format!("validate rejected: {e}")),
            },
            (Valid | Semantic, Err(e)) => Err(format!("parse rejected: {e}")),
            (Invalid, Err(e)) => Ok(format!("parse rejected: {e}")),
            (Invalid, Ok(m)) => {
                touch_everything(m);
                match m.validate() {
                    Err(e) => Ok(format!("validate rejected: {e}")),
                    Ok(()) => Err("accepted".into()),
                }
            }
        };
        match verdict {
            Invalid => {
                n_invalid += 1;
                ok_invalid += outcome.is_ok() as usize;
            }
            _ => {
                n_valid += 1;
                ok_valid += outcome.is_ok() as usize;
            }
        }
        let (mark, text) = match &outcome {
            Ok(t) => ("ok  ", t.clone()),
            Err(t) => ("FAIL", t.clone()),
        };
        if outcome.is_err() {
            failures.push(format!("{d}/{f}: {text}"));
        }
        rows.push(format!(
            "{mark} {:<8} {:<40} {:<9} {}",
            d,
            f,
            format!("{verdict:?}"),
            text
        ));
    }
    // Written straight to stdout (not `println!`) so the table shows in CI logs even when the
    // test passes and libtest captures output.
    let mut table_text = format!(
        "\n{:<4} {:<8} {:<40} {:<9} outcome\n",
        "", "set", "file", "verdict"
    );
    for r in &rows {
        table_text.push_str(r);
        table_text.push('\n');
    }
    table_text.push_str(&format!(
        "conformance: valid+semantic accepted {ok_valid}/{n_valid}, invalid rejected {ok_invalid}/{n_invalid}\n"
    ));
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), table_text.as_bytes());
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// The invalid messages are rejected for the reason the RFC gives, not by accident.
#[test]
fn invalid_messages_rejected_for_the_right_reason() {
    let dir = conformance_dir();
    let load = |d: &str, f: &str| Bytes::from(std::fs::read(dir.join(d).join(f)).unwrap());
    let parse = |d: &str, f: &str| Message::parse(load(d, f), Framing::Datagram);
    let validate = |d: &str, f: &str| parse(d, f).expect("parses").validate();
    assert_eq!(
        parse("rfc4475", "clerr.dat").unwrap_err(),
        ParseError::ContentLength
    );
    assert_eq!(
        parse("rfc4475", "ncl.dat").unwrap_err(),
        ParseError::ContentLength
    );
    assert_eq!(
        parse("rfc4475", "mcl01.dat").unwrap_err(),
        ParseError::ContentLength
    );
    assert_eq!(
        parse("rfc4475", "bigcode.dat").unwrap_err(),
        ParseError::StartLine
    );
    assert_eq!(validate("rfc4475", "badvers.dat"), Err(ParseError::Version));
    assert_eq!(
        validate("rfc4475", "lwsstart.dat"),
        Err(ParseError::StartLine)
    );
    assert_eq!(validate("rfc4475", "trws.dat"), Err(ParseError::StartLine));
    assert_eq!(
        validate("rfc4475", "lwsruri.dat"),
        Err(ParseError::StartLine)
    );
    assert_eq!(
        validate("rfc4475", "ltgtruri.dat"),
        Err(ParseError::Value("Request-URI"))
    );
    assert_eq!(
        validate("rfc4475", "escruri.dat"),
        Err(ParseError::Value("Request-URI"))
    );
    assert_eq!(
        validate("rfc5118", "ipv6-bad.dat"),
        Err(ParseError::Value("Request-URI"))
    );
    assert_eq!(
        validate("rfc5118", "ipv6-bug-abnf-3-colons.dat"),
        Err(ParseError::Value("Request-URI"))
    );
    assert_eq!(
        validate("rfc4475", "mismatch01.dat"),
        Err(ParseError::Value("CSeq method"))
    );
    assert_eq!(
        validate("rfc4475", "mismatch02.dat"),
        Err(ParseError::Value("CSeq method"))
    );
    assert_eq!(
        validate("rfc4475", "insuf.dat"),
        Err(ParseError::Count("To"))
    );
    assert_eq!(
        validate("rfc4475", "multi01.dat"),
        Err(ParseError::Count("To"))
    );
    assert_eq!(
        validate("rfc4475", "quotbal.dat"),
        Err(ParseError::Value("To"))
    );
    assert_eq!(
        validate("rfc4475", "badaspec.dat"),
        Err(ParseError::Value("To"))
    );
    assert_eq!(
        validate("rfc4475", "baddn.dat"),
        Err(ParseError::Value("From"))
    );
    assert_eq!(
        validate("rfc4475", "regbadct.dat"),
        Err(ParseError::Value("Contact"))
    );
    assert_eq!(
        validate("rfc4475", "baddate.dat"),
        Err(ParseError::Value("Date"))
    );
    assert_eq!(
        validate("rfc4475", "scalar02.dat"),
        Err(ParseError::Value("CSeq"))
    );
    assert_eq!(
        validate("rfc4475", "scalarlg.dat"),
        Err(ParseError::Value("CSeq"))
    );
    assert_eq!(
        validate("rfc4475", "badinv01.dat"),
        Err(ParseError::Value("Via"))
    );
    // Each scalar of scalar02 is out of range on its own too.
    let m = parse("rfc4475", "scalar02.dat").unwrap();
    assert!(m.max_forwards().unwrap().unwrap() > 255);
    assert!(m.expires().is_err());
    assert_eq!(m.contact_iter().next().unwrap().unwrap().expires(), None);
    // badinv01's Contact is malformed as well.
    let m = parse("rfc4475", "badinv01.dat").unwrap();
    assert!(m.contacts().is_err());
    // Over TCP clerr is merely incomplete.
    assert_eq!(
        Message::parse(load("rfc4475", "clerr.dat"), Framing::Stream).unwrap_err(),
        ParseError::Incomplete
    );
    assert_eq!(
        podpbx_sip::message::frame_stream(&load("rfc4475", "clerr.dat")),
        Ok(None)
    );
}
