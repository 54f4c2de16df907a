//! `Message::parse` and the typed accessors for Via/From/To/CSeq/Call-ID/Contact allocate
//! nothing beyond the message's own buffer (counted per thread by a wrapping global allocator).

use bytes::Bytes;
use podpbx_sip::{Framing, HeaderName, Message};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (r, ALLOCS.with(Cell::get) - before)
}

const INVITE: &[u8] = b"INVITE sip:+15551234567@pbx.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---7c1a2f9b3e8d4a61;rport\r\n\
Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK2, SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK3\r\n\
Max-Forwards: 70\r\n\
Contact: \"Alice\" <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:1>\";expires=60\r\n\
To: <sip:+15551234567@pbx.example.com;user=phone>\r\n\
From: \"Alice Example\" <sip:alice@pbx.example.com>;tag=8f3a2b1c\r\n\
Call-ID: 3c26700c1e8b4f2a9d5e6f7a8b9c0d1e@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Route: <sip:p1.example.com;lr>\r\n\
Supported: replaces, timer\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

#[test]
fn parse_and_typed_access_do_not_allocate() {
    // The counter works.
    let (v, n) = count(|| vec![1u8; 3]);
    assert_eq!((v.len(), n), (3, 1));
    // A shared buffer, as the transports hand them over (cloning is a refcount bump).
    let buf = Bytes::from(INVITE.to_vec());
    let _shared = buf.clone();
    let (m, n) = count(|| Message::parse(buf.clone(), Framing::Datagram).unwrap());
    assert_eq!(n, 0, "Message::parse allocated");
    let (sum, n) = count(|| {
        let via = m.top_via().unwrap();
        let from = m.from_hdr().unwrap();
        let to = m.to_hdr().unwrap();
        let cseq = m.cseq().unwrap();
        let call_id = m.call_id().unwrap();
        let contact = m.contact_iter().next().unwrap().unwrap();
        let vias = m.via_iter().filter(Result::is_ok).count();
        let routes = m.route_iter().count();
        via.branch().unwrap().len()
            + via.rport().map_or(0, |_| 1)
            + from.tag().unwrap().len()
            + to.uri.raw.len()
            + cseq.seq as usize
            + call_id.len()
            + contact.expires().unwrap_or(0) as usize
            + contact.q().unwrap_or(0) as usize
            + vias
            + routes
            + m.header(HeaderName::MaxForwards).map_or(0, |v| v.len())
            + m.max_forwards().unwrap().unwrap_or(0) as usize
            + m.content_type().map_or(0, |v| v.len())
    });
    assert!(sum > 0);
    assert_eq!(n, 0, "typed accessors allocated");
    // validate keeps the Contact list it checked (one Vec), so the registrar and the B2BUA
    // read it without parsing or allocating again.
    let (r, n) = count(|| m.validate());
    assert_eq!(r, Ok(()));
    assert_eq!(n, 1, "validate allocated more than the kept Contact list");
    let (c, n) = count(|| m.contacts_ref().map(|c| c.is_some()));
    assert_eq!(
        (c, n),
        (Ok(true), 0),
        "the kept Contact list was parsed again"
    );
    let (_, n) = count(|| m.headers().count());
    assert_eq!(n, 0);
}

/// A REGISTER's credentials, as phones send them (no escapes in any value).
const AUTHORIZATION: &[u8] = b"Digest username=\"alice\", realm=\"pbx.example\", \
nonce=\"AAAAAGZkYWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg\", uri=\"sip:pbx.example\", \
response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", \
opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", qop=auth, nc=00000001";

#[test]
fn credentials_borrow_their_values() {
    use podpbx_sip::digest::Credentials;
    use std::borrow::Cow;
    // One allocation (the parameter list), not one per value: every value borrows the header.
    let (c, n) = count(|| Credentials::parse(AUTHORIZATION).unwrap());
    assert_eq!(n, 1, "Credentials::parse allocated per value");
    assert!(matches!(c.nonce, Cow::Borrowed(_)) && matches!(c.response, Cow::Borrowed(_)));
    assert_eq!((&*c.username, c.nc.as_deref()), ("alice", Some("00000001")));
    // A value with an escape is unescaped into its own copy.
    let escaped = b"Digest username=\"al\\\\ice\\\"\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"x\"";
    let c = Credentials::parse(&escaped[..]).unwrap();
    assert!(matches!(c.username, Cow::Owned(_)));
    assert_eq!(&*c.username, "al\\ice\"");
    assert!(matches!(c.realm, Cow::Borrowed("r")));
}
