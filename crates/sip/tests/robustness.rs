//! Fuzz-ish robustness: every prefix and a bounded number of deterministic random mutations of
//! the conformance messages go through the parser, every accessor and the builders without a
//! panic; for requests that validate, the built response, ACK and CANCEL parse and validate too.

use bytes::Bytes;
use podpbx_sip::builder::{ack_for, cancel_for};
use podpbx_sip::message::frame_stream;
use podpbx_sip::{Framing, HeaderName, Message, ResponseBuilder};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// xorshift64* — small, deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b":;,\"<>[]\r\n \t\\@=?%/0123456789aZ*\x00\xff\xc3";

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let dir: PathBuf = root.join("tests").join("data").join("conformance");
    let mut out = Vec::new();
    for d in ["rfc4475", "rfc5118"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(d))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            out.push((f.display().to_string(), std::fs::read(&f).unwrap()));
        }
    }
    assert_eq!(out.len(), 61);
    out
}

fn exercise(m: &Message) {
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
        m.tokens(HeaderName::Accept),
    );
    for v in m.via_iter().flatten() {
        let _ = (
            v.branch(),
            v.received(),
            v.rport(),
            v.maddr(),
            v.host.to_string(),
        );
        let _ = v.params.iter().count();
    }
    for c in m.contact_iter().flatten() {
        let _ = (
            c.expires(),
            c.q(),
            c.addr.display_unescaped(),
            c.addr.uri.param("transport"),
        );
    }
    for h in m.headers() {
        let _ = m.other_header(std::str::from_utf8(&h.raw_name).unwrap_or("x"));
    }
    let v4: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::77]:5062".parse().unwrap();
    let valid = m.validate().is_ok();
    for source in [None, Some(v4), Some(v6)] {
        let r = ResponseBuilder::new(m, 488, "Not Here", source)
            .to_tag("fz")
            .header("X", "y")
            .build();
        let parsed = Message::parse(r, Framing::Datagram);
        if valid && m.is_request() {
            let r = parsed.expect("response to a valid request parses");
            assert_eq!(
                r.validate(),
                Ok(()),
                "response to a valid request validates"
            );
            assert_eq!(
                r.header_count(HeaderName::Via),
                m.header_count(HeaderName::Via)
            );
            // Via lines after the first are echoed byte for byte.
            assert!(r
                .header_values(HeaderName::Via)
                .skip(1)
                .eq(m.header_values(HeaderName::Via).skip(1)));
            let (rt, mt) = (r.top_via().unwrap(), m.top_via().unwrap());
            assert_eq!((rt.branch(), &rt.host), (mt.branch(), &mt.host));
            if let Some(s) = source {
                assert!(rt.received().is_some() || mt.host.ip() == Some(s.ip()));
            }
            let ack = Message::parse(ack_for(m, &r), Framing::Datagram).expect("ACK parses");
            assert_eq!(ack.validate(), Ok(()), "ACK validates");
            let cancel = Message::parse(cancel_for(m), Framing::Datagram).expect("CANCEL parses");
            assert_eq!(cancel.validate(), Ok(()), "CANCEL validates");
        } else if let Ok(r) = parsed {
            let _ = r.validate();
        }
    }
    let _ = (ack_for(m, m), cancel_for(m));
}

fn run_one(bytes: &[u8]) {
    if let Ok(m) = Message::parse(Bytes::copy_from_slice(bytes), Framing::Datagram) {
        exercise(&m);
    }
    if let Ok(m) = Message::parse(Bytes::copy_from_slice(bytes), Framing::Stream) {
        exercise(&m);
    }
    if let Ok(Some(n)) = frame_stream(bytes) {
        assert!(n <= bytes.len());
        assert!(
            Message::parse(Bytes::copy_from_slice(&bytes[..n]), Framing::Stream).is_ok() || n > 0
        );
    }
}

#[test]
fn every_prefix_parses_or_fails_cleanly() {
    let mut count = 0;
    for (_, bytes) in corpus() {
        for cut in 0..=bytes.len() {
            run_one(&bytes[..cut]);
            count += 1;
        }
    }
    println!("prefixes tried: {count}");
}

#[test]
fn random_mutations_do_not_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut count = 0;
    let mut parsed = 0;
    for (name, bytes) in corpus() {
        for _ in 0..150 {
            let mut m = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(m.len() + 1);
                match rng.below(6) {
                    0 if at < m.len() => m[at] = INTERESTING[rng.below(INTERESTING.len())],
                    1 => m.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                    2 if at < m.len() => {
                        let end = (at + 1 + rng.below(8)).min(m.len());
                        m.drain(at..end);
                    }
                    3 if at < m.len() => {
                        let end = (at + 1 + rng.below(32)).min(m.len());
                        let chunk = m[at..end].to_vec();
                        let to = rng.below(m.len() + 1);
                        m.splice(to..to, chunk);
                    }
                    4 if at < m.len() => m[at] = rng.next() as u8,
                    _ => {
                        // Turn a CRLF into a bare LF or a fold.
                        if let Some(p) = m.windows(2).skip(at).position(|w| w == b"\r\n") {
                            let p = p + at;
                            if rng.below(2) == 0 {
                                m.remove(p);
                            } else {
                                m.insert(p + 2, b' ');
                            }
                        }
                    }
                }
            }
            let r = std::panic::catch_unwind(|| run_one(&m));
            if r.is_err() {
                panic!(
                    "{name}: panic on mutated input {:?}",
                    String::from_utf8_lossy(&m)
                );
            }
            parsed += Message::parse(Bytes::from(m), Framing::Datagram).is_ok() as usize;
            count += 1;
        }
    }
    println!("mutations tried: {count}, of which parsed: {parsed}");
    assert!(
        parsed > count / 4,
        "mutations should mostly still parse ({parsed}/{count})"
    );
}
