use super::*;

const OFFER_V4: &str = "v=0\r\n\
o=doorbell 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
a=ice-ufrag:F7gI\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:49171\r\n\
a=candidate:1 1 UDP 2130706431 192.0.2.10 49170 typ host\r\n\
a=candidate:2 1 UDP 1694498815 198.51.100.7 50000 typ srflx raddr 192.0.2.10 rport 49170\r\n\
a=end-of-candidates\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn anchor(addr: &str, rtp: u16) -> Anchor {
    Anchor {
        addr: addr.parse().expect("ip"),
        rtp_port: rtp,
        rtcp_port: rtp + 1,
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

/// Every input line that is not c=, m=, a=rtcp:, or ICE must appear in the
/// output, in order, byte for byte (line ending included).
fn assert_kept(input: &str, output: &str) {
    let kept: Vec<&str> = lines(input)
        .into_iter()
        .filter(|l| {
            !(l.starts_with("c=")
                || l.starts_with("m=")
                || l.starts_with("a=rtcp:")
                || l.starts_with("a=candidate")
                || l.starts_with("a=ice-")
                || l.starts_with("a=end-of-candidates")
                || l.starts_with("a=remote-candidates"))
        })
        .collect();
    let out: Vec<&str> = lines(output)
        .into_iter()
        .filter(|l| kept.contains(l))
        .collect();
    assert_eq!(
        kept, out,
        "kept lines differ\n--- in\n{input}\n--- out\n{output}"
    );
}

#[test]
fn report_per_m_line() {
    let sdp = Sdp::parse(OFFER_V4.as_bytes()).expect("parse");
    assert_eq!(sdp.origin().session_version, 2890844526);
    assert_eq!(sdp.origin().username, "doorbell");
    let m = &sdp.media()[0];
    assert_eq!(m.media, "audio");
    assert_eq!(m.port, 49170);
    assert_eq!(m.proto, "RTP/AVP");
    assert_eq!(m.payload_types(), vec![0, 8, 101]);
    assert_eq!(m.clock_rates(), vec![(0, 8000), (8, 8000), (101, 8000)]);
    assert_eq!(m.telephone_event, Some(101));
    assert_eq!(m.rtcp.as_ref().map(|r| r.port), Some(49171));
    assert_eq!(m.rtcp_port(), Some(49171));
    assert!(!m.rtcp_mux);
    assert_eq!(m.direction, Direction::SendRecv);
    assert!(!m.on_hold());
    assert_eq!(
        m.rtp_addr(),
        Some("192.0.2.10:49170".parse().expect("addr"))
    );
    assert_eq!(
        m.rtcp_addr(),
        Some("192.0.2.10:49171".parse().expect("addr"))
    );
}

#[test]
fn rewrite_v4_to_v6_drops_ice_keeps_rest() {
    let sdp = Sdp::parse(OFFER_V4.as_bytes()).expect("parse");
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![anchor("2001:db8::5", 30000)]))
        .expect("rewrite");
    assert!(out.contains("\r\nc=IN IP6 2001:db8::5\r\n"), "{out}");
    assert!(
        out.contains("\r\nm=audio 30000 RTP/AVP 0 8 101\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\na=rtcp:30001\r\n"), "{out}");
    assert!(!out.contains("candidate"), "{out}");
    assert!(!out.contains("ice-"), "{out}");
    assert!(!out.contains("192.0.2.10 "), "{out}");
    // The origin is kept as it was (including its address).
    assert!(out.starts_with("v=0\r\no=doorbell 2890844526 2890844526 IN IP4 192.0.2.10\r\n"));
    assert_kept(OFFER_V4, &out);
    // The result is itself valid SDP that reports our address.
    let again = Sdp::parse(out.as_bytes()).expect("reparse");
    assert_eq!(
        again.media()[0].rtp_addr(),
        Some("[2001:db8::5]:30000".parse().expect("addr"))
    );
    assert_eq!(
        again.media()[0].rtcp_addr(),
        Some("[2001:db8::5]:30001".parse().expect("addr"))
    );
}

#[test]
fn rewrite_v6_to_v4_media_level_connection() {
    let offer = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=call\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 9\r\nc=IN IP6 2001:db8::1\r\na=rtcp:5005 IN IP6 2001:db8::1\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    assert_eq!(sdp.session_connection(), None);
    assert_eq!(sdp.media()[0].clock_rates(), vec![(9, 8000)]);
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![anchor(
            "198.51.100.1",
            40000,
        )]))
        .expect("rewrite");
    assert_eq!(
        out,
        "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=call\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 9\r\nc=IN IP4 198.51.100.1\r\na=rtcp:40001 IN IP4 198.51.100.1\r\n"
    );
}

#[test]
fn hold_sendonly_is_reported_and_kept() {
    let offer = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    let m = &sdp.media()[0];
    assert!(m.on_hold());
    assert!(!m.zero_address());
    assert_eq!(m.direction, Direction::SendOnly);
    assert!(sdp.on_hold());
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![anchor("203.0.113.9", 20000)]))
        .expect("rewrite");
    assert!(
        out.ends_with("m=audio 20000 RTP/AVP 0\r\na=sendonly\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("a=sendonly").count(), 1);
}

#[test]
fn hold_zero_address_rewritten_with_direction() {
    // RFC 2543 hold: c=0.0.0.0, no direction attribute (implies sendrecv).
    let offer = "v=0\r\no=- 1 3 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=ptime:20\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    let m = &sdp.media()[0];
    assert!(m.zero_address());
    assert!(m.on_hold());
    assert_eq!(m.rtp_addr(), Some("0.0.0.0:4000".parse().expect("addr")));
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![anchor("203.0.113.9", 20000)]))
        .expect("rewrite");
    assert_eq!(
        out,
        "v=0\r\no=- 1 3 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0\r\na=ptime:20\r\na=sendonly\r\n"
    );
    let re = Sdp::parse(out.as_bytes()).expect("reparse");
    assert!(
        re.media()[0].on_hold(),
        "hold semantics survive the rewrite"
    );

    // An explicit recvonly becomes inactive, replaced in place.
    let offer2 = offer.replace("a=ptime:20\r\n", "a=recvonly\r\na=ptime:20\r\n");
    let out2 = Sdp::parse(offer2.as_bytes())
        .expect("parse")
        .rewrite(&RewritePlan::anchor_all(vec![anchor("203.0.113.9", 20000)]))
        .expect("rewrite");
    assert!(
        out2.ends_with("m=audio 20000 RTP/AVP 0\r\na=inactive\r\na=ptime:20\r\n"),
        "{out2}"
    );

    // Keep mode leaves c=0.0.0.0 in place (but still hides the peer's port).
    let mut plan = RewritePlan::anchor_all(vec![anchor("203.0.113.9", 20000)]);
    plan.zero_address_hold = ZeroAddressHold::Keep;
    let out3 = sdp.rewrite(&plan).expect("rewrite");
    assert!(out3.contains("c=IN IP4 0.0.0.0\r\n"), "{out3}");
    assert!(out3.contains("m=audio 20000 RTP/AVP 0\r\n"), "{out3}");
    assert!(!out3.contains("sendonly"), "{out3}");
}

#[test]
fn session_level_direction_inherited() {
    let offer =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=inactive\r\n\
m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\na=sendrecv\r\na=rtpmap:96 H264/90000\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    assert_eq!(sdp.session_direction(), Some(Direction::Inactive));
    assert_eq!(sdp.media()[0].direction, Direction::Inactive);
    assert_eq!(sdp.media()[1].direction, Direction::SendRecv);
    assert!(sdp.media()[0].on_hold());
    assert!(!sdp.media()[1].on_hold());
    assert!(!sdp.on_hold());
    assert_eq!(sdp.media()[1].clock_rate(96), Some(90000));
}

#[test]
fn several_streams_and_rejected() {
    let offer = "v=0\r\n\
o=alice 1 1 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 4000 RTP/AVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
m=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 VP8/90000\r\n\
m=video 4002 RTP/AVP 97\r\n\
c=IN IP4 192.0.2.2\r\n\
a=rtpmap:97 H264/90000\r\n\
a=rtcp-mux\r\n\
a=rtcp:4002\r\n\
m=application 4004 UDP/BFCP *\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    let ms = sdp.media();
    assert_eq!(ms.len(), 4);
    assert!(!ms[0].rejected());
    assert!(ms[1].rejected());
    assert_eq!(ms[1].rtp_addr(), None);
    assert_eq!(
        ms[2].rtp_addr(),
        Some("192.0.2.2:4002".parse().expect("addr"))
    );
    assert!(ms[2].rtcp_mux);
    assert_eq!(ms[2].rtcp_addr(), ms[2].rtp_addr());
    assert_eq!(ms[2].rtcp_port(), Some(4002));
    assert_eq!(ms[0].rtcp_port(), Some(4001));
    assert_eq!(ms[1].rtcp_port(), None);
    assert_eq!(ms[2].clock_rates(), vec![(97, 90000)]);
    assert_eq!(ms[3].payload_types(), Vec::<u8>::new());

    let plan = RewritePlan {
        media: vec![
            MediaPlan::Anchor(anchor("198.51.100.1", 10000)),
            // Ignored: already rejected, no port allocated.
            MediaPlan::Anchor(anchor("198.51.100.1", 10002)),
            MediaPlan::Anchor(anchor("198.51.100.1", 10004)),
            MediaPlan::Reject,
        ],
        origin: OriginPlan::Increment,
        zero_address_hold: ZeroAddressHold::default(),
    };
    let out = sdp.rewrite(&plan).expect("rewrite");
    assert_eq!(
        out,
        "v=0\r\n\
o=alice 1 2 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 198.51.100.1\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
m=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 VP8/90000\r\n\
m=video 10004 RTP/AVP 97\r\n\
c=IN IP4 198.51.100.1\r\n\
a=rtpmap:97 H264/90000\r\n\
a=rtcp-mux\r\n\
a=rtcp:10004\r\n\
m=application 0 UDP/BFCP *\r\n"
    );
}

#[test]
fn media_level_connection_inserted_when_families_differ() {
    // Session-level c= is rewritten to the first anchor; a stream anchored
    // elsewhere gets its own c= line right after m= (and i=).
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\ni=voice\r\na=ptime:20\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![
            anchor("2001:db8::1", 100),
            anchor("198.51.100.1", 200),
        ]))
        .expect("rewrite");
    assert_eq!(
        out,
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 100 RTP/AVP 0\r\ni=voice\r\na=ptime:20\r\nm=video 200 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\na=rtpmap:96 VP8/90000\r\n"
    );
}

#[test]
fn lf_endings_and_missing_final_newline_preserved() {
    let offer = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0\na=x-custom:1  2";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    let out = sdp
        .rewrite(&RewritePlan::anchor_all(vec![anchor("127.0.0.1", 6000)]))
        .expect("rewrite");
    assert_eq!(
        out,
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 6000 RTP/AVP 0\na=x-custom:1  2"
    );
}

#[test]
fn session_level_ice_dropped_and_remote_candidates() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\na=ice-lite\r\na=ice-options:trickle\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=remote-candidates:1 192.0.2.1 4000\r\na=ice-mismatch\r\na=mid:0\r\n";
    let out = Sdp::parse(offer.as_bytes())
        .expect("parse")
        .rewrite(&RewritePlan::anchor_all(vec![anchor("127.0.0.1", 6000)]))
        .expect("rewrite");
    assert_eq!(
        out,
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=mid:0\r\n"
    );
    assert_kept(offer, &out);
}

#[test]
fn origin_version_helpers() {
    let out = increment_origin_version(OFFER_V4.as_bytes()).expect("inc");
    assert!(out.contains("o=doorbell 2890844526 2890844527 IN IP4 192.0.2.10\r\n"));
    assert_eq!(out.len(), OFFER_V4.len());
    // Only the origin changed; ICE lines are untouched by this helper.
    assert_eq!(lines(&out).len(), lines(OFFER_V4).len());
    let set = set_origin_version(OFFER_V4.as_bytes(), Some(7)).expect("set");
    assert!(set.contains("o=doorbell 2890844526 7 IN IP4"));
    let sdp = Sdp::parse(OFFER_V4.as_bytes()).expect("parse");
    let mut plan = RewritePlan::anchor_all(vec![anchor("127.0.0.1", 6000)]);
    plan.origin = OriginPlan::SetVersion(42);
    assert!(sdp
        .rewrite(&plan)
        .expect("rw")
        .contains("o=doorbell 2890844526 42 IN IP4 192.0.2.10\r\n"));
    // Wraps instead of overflowing.
    let max = format!("v=0\r\no=- 1 {} IN IP4 192.0.2.1\r\ns=-\r\n", u64::MAX);
    assert!(increment_origin_version(max.as_bytes())
        .expect("wrap")
        .contains("o=- 1 0 IN"));
}

#[test]
fn fqdn_connection_is_reported_not_resolved() {
    let offer = "v=0\r\no=- 1 1 IN IP4 host.example.com\r\ns=-\r\nc=IN IP4 pbx.example.com\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let sdp = Sdp::parse(offer.as_bytes()).expect("parse");
    assert_eq!(
        sdp.media()[0]
            .connection
            .as_ref()
            .map(|c| c.address.clone()),
        Some(Address::Fqdn("pbx.example.com".into()))
    );
    assert_eq!(sdp.media()[0].rtp_addr(), None);
}

#[test]
fn plan_mismatch() {
    let sdp = Sdp::parse(OFFER_V4.as_bytes()).expect("parse");
    assert_eq!(
        sdp.rewrite(&RewritePlan::anchor_all(vec![])),
        Err(SdpError::PlanMismatch { plan: 0, media: 1 })
    );
}

type Check = fn(&SdpError) -> bool;

#[test]
fn malformed_is_a_typed_error() {
    let cases: &[(&[u8], Check)] = &[
        (b"", |e| *e == SdpError::Empty),
        (b"\r\n\r\n", |e| *e == SdpError::Empty),
        (b"\xff\xfe\x00garbage", |e| *e == SdpError::NotUtf8),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\xc3\x28\r\n", |e| *e == SdpError::NotUtf8),
        (b"hello world", |e| matches!(e, SdpError::Syntax { line: 1, .. })),
        (b"v=1\r\n", |e| *e == SdpError::MissingVersion),
        (b"s=-\r\nv=0\r\n", |e| *e == SdpError::MissingVersion),
        (b"v=0\r\ns=-\r\n", |e| *e == SdpError::MissingOrigin),
        (b"v=0\r\no=- 1 x IN IP4 1.2.3.4\r\n", |e| matches!(e, SdpError::Syntax { line: 2, .. })),
        (b"v=0\r\no=- 1\r\n", |e| matches!(e, SdpError::Syntax { line: 2, .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4\r\n", |e| matches!(e, SdpError::Syntax { line: 3, .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP5 1.2.3.4\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 ::1\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", |e| matches!(e, SdpError::Syntax { line: 4, .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n", |e| matches!(e, SdpError::Syntax { line: 5, .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:300 X/8000\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:abc\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n", |e| *e == SdpError::MissingConnection { index: 0 }),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n x=1\r\n", |e| matches!(e, SdpError::Syntax { .. })),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nv=0\r\n", |e| matches!(e, SdpError::Syntax { .. })),
    ];
    for (input, check) in cases {
        match Sdp::parse(input) {
            Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(input)),
            Err(e) => assert!(
                check(&e),
                "{:?}: unexpected {e:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }
    let big = vec![b'a'; MAX_SDP_LEN + 1];
    assert_eq!(Sdp::parse(&big).err(), Some(SdpError::TooLarge));
    // A rejected stream needs no connection address.
    assert!(Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n").is_ok());
}

#[test]
fn every_truncation_of_a_valid_offer_is_handled() {
    let bytes = OFFER_V4.as_bytes();
    let plan = RewritePlan::anchor_all(vec![anchor("::1", 7000)]);
    for n in 0..=bytes.len() {
        if let Ok(sdp) = Sdp::parse(&bytes[..n]) {
            let plan = RewritePlan {
                media: plan.media.iter().copied().take(sdp.media().len()).collect(),
                ..plan.clone()
            };
            let _ = sdp.rewrite(&plan);
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet: &[u8] = b"vocmat=0123456789 ./:-\r\nINIP46audiortpmaprtcp-muxsendonly\xff";
    let base = OFFER_V4.as_bytes();
    for round in 0..20_000 {
        let mut buf: Vec<u8> = if round % 2 == 0 {
            base.to_vec()
        } else {
            (0..(next() % 300))
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        };
        // Mutate a few bytes.
        for _ in 0..(next() % 8) {
            if buf.is_empty() {
                break;
            }
            let i = (next() % buf.len() as u64) as usize;
            buf[i] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        if let Ok(sdp) = Sdp::parse(&buf) {
            let n = sdp.media().len();
            let plan = RewritePlan {
                media: (0..n)
                    .map(|i| {
                        if i % 3 == 2 {
                            MediaPlan::Reject
                        } else {
                            MediaPlan::Anchor(anchor(
                                if i % 2 == 0 { "127.0.0.1" } else { "::1" },
                                9000,
                            ))
                        }
                    })
                    .collect(),
                origin: OriginPlan::Increment,
                zero_address_hold: if round % 3 == 0 {
                    ZeroAddressHold::Keep
                } else {
                    ZeroAddressHold::default()
                },
            };
            let out = sdp.rewrite(&plan).expect("a parsed SDP always rewrites");
            for m in sdp.media() {
                let _ = (m.rtp_addr(), m.rtcp_addr(), m.clock_rates(), m.on_hold());
            }
            // Our own output parses again.
            Sdp::parse(out.as_bytes()).expect("rewritten SDP parses");
        }
    }
}

// ----- SDES (RFC 4568) -----------------------------------------------------------------------

/// The RFC 4568 §4 example key, and an SRTP offer as baresip sends it.
const SAVP_OFFER: &str = "v=0\r\n\
o=- 1 1 IN IP6 2001:db8::10\r\n\
s=-\r\n\
c=IN IP6 2001:db8::10\r\n\
t=0 0\r\n\
m=audio 4000 RTP/SAVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj\r\n\
a=sendrecv\r\n";

#[test]
fn crypto_lines_are_parsed_with_their_keys() {
    let sdp = Sdp::parse(SAVP_OFFER.as_bytes()).expect("parse");
    let m = &sdp.media()[0];
    assert!(m.secure());
    assert_eq!(m.crypto.len(), 2);
    let c = &m.crypto[0];
    assert_eq!((c.tag, c.suite.as_str()), (1, "AES_CM_128_HMAC_SHA1_80"));
    assert_eq!(c.key.len(), 30);
    assert_eq!(c.key[..4], [0x3d, 0x2d, 0x6e, 0x40]);
    assert_eq!(c.lifetime.as_deref(), Some("2^20"));
    assert!(c.mki);
    assert_eq!(m.crypto[1].tag, 2);
    assert!(!m.crypto[1].mki);
    assert!(
        !format!("{c:?}").contains("61"),
        "no key bytes in Debug: {c:?}"
    );
    // Plain offers have none.
    let plain = Sdp::parse(OFFER_V4.as_bytes()).unwrap();
    assert!(plain.media()[0].crypto.is_empty() && !plain.media()[0].secure());
}

#[test]
fn malformed_crypto_lines_are_errors() {
    for bad in [
        "a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:http://x",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:not*base64!",
        "a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:PS1u",
        "a=crypto",
    ] {
        let text = SAVP_OFFER.replace(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj",
            bad,
        );
        match Sdp::parse(text.as_bytes()) {
            Err(SdpError::Syntax { line: 10, .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn base64_round_trips() {
    for n in 0..40 {
        let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
        let e = encode_base64(&data);
        assert_eq!(e.len() % 4, 0);
        assert_eq!(decode_base64(&e), Some(data.clone()), "{e}");
        assert_eq!(decode_base64(e.trim_end_matches('=')), Some(data));
    }
    assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(encode_base64(b"fo"), "Zm8=");
    assert_eq!(decode_base64("Zm9=x"), None);
}

#[test]
fn rewrite_terminates_srtp_per_leg() {
    let sdp = Sdp::parse(SAVP_OFFER.as_bytes()).unwrap();
    let plan = RewritePlan::anchor_all(vec![anchor("192.0.2.1", 30000)]);
    // Towards a plain phone: profile AVP, no crypto line.
    let plain = sdp.rewrite_secure(&plan, &[MediaSecurity::Plain]).unwrap();
    assert!(plain.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{plain}");
    assert!(!plain.contains("crypto"), "{plain}");
    // Towards an SRTP peer: our own key only.
    let ours = Crypto::line(1, "AES_CM_128_HMAC_SHA1_80", &[9u8; 30]);
    let secure = sdp
        .rewrite_secure(&plan, &[MediaSecurity::Srtp(ours.clone())])
        .unwrap();
    assert!(
        secure.contains("m=audio 30000 RTP/SAVP 0 101\r\n"),
        "{secure}"
    );
    assert!(
        secure.ends_with(&format!("a=sendrecv\r\n{ours}\r\n")),
        "{secure}"
    );
    assert_eq!(secure.matches("a=crypto").count(), 1, "{secure}");
    let back = Sdp::parse(secure.as_bytes()).unwrap();
    assert_eq!(back.media()[0].crypto[0].key, vec![9u8; 30]);
    // A plain offer made secure, and Keep leaves everything.
    let from_plain = Sdp::parse(OFFER_V4.as_bytes())
        .unwrap()
        .rewrite_secure(&plan, &[MediaSecurity::Srtp(ours)])
        .unwrap();
    assert!(from_plain.contains("m=audio 30000 RTP/SAVP 0 8 101\r\n"));
    let kept = sdp.rewrite_secure(&plan, &[MediaSecurity::Keep]).unwrap();
    assert_eq!(kept, sdp.rewrite(&plan).unwrap());
    assert_eq!(kept.matches("a=crypto").count(), 2);
    assert_eq!(secure_profile("RTP/SAVPF", false), "RTP/AVPF");
    assert_eq!(
        secure_profile("UDP/TLS/RTP/SAVPF", false),
        "UDP/TLS/RTP/SAVPF"
    );
}

#[test]
fn sendrecv_drops_every_direction_attribute() {
    let held = "v=0\r\no=x 1 2 IN IP6 2001:db8::5\r\ns=-\r\na=recvonly\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=inactive\r\n\
                m=video 0 RTP/AVP 96\r\na=sendonly\r\n";
    let out = sendrecv(held.as_bytes()).unwrap();
    assert_eq!(
        out,
        "v=0\r\no=x 1 2 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\nm=video 0 RTP/AVP 96\r\n"
    );
    let sdp = Sdp::parse(out.as_bytes()).unwrap();
    assert!(!sdp.on_hold());
    assert!(sdp
        .media()
        .iter()
        .all(|m| m.direction == Direction::SendRecv));
    assert!(sendrecv(b"not sdp").is_err());
}
