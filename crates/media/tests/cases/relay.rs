// Relay integration tests on loopback (127.0.0.1 and ::1 only).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::common::*;
use crate::{relay, relay_with};
use podpbx_media::packet::{classify, telephone_event, Kind};
use podpbx_media::{Event, Family, LatchMode, LatchPolicy, Leg, RelayError, RemoteMedia, Session};
use podpbx_sdp::Sdp;

fn remote(s: &UdpSocket) -> RemoteMedia {
    RemoteMedia::new(addr(s))
}

/// Remote with an explicit RTCP socket.
fn remote_rtcp(rtp: &UdpSocket, rtcp: &UdpSocket) -> RemoteMedia {
    RemoteMedia {
        rtcp: Some(addr(rtcp)),
        ..RemoteMedia::new(addr(rtp))
    }
}

/// Send `n` RTP packets from `from` to `to`, check each arrives intact at
/// `sink` from `relay_src`.
fn pump(
    from: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    relay_src: SocketAddr,
    n: u16,
    ssrc: u32,
) {
    for i in 0..n {
        let p = rtp(0, 1000 + i, 160 * i as u32, ssrc, &[i as u8; 160]);
        from.send_to(&p, to).expect("send");
        let (got, src) = recv(sink).expect("forwarded packet");
        assert_eq!(got, p, "forwarded untouched");
        assert_eq!(
            src, relay_src,
            "sent from the relay's port on the other leg"
        );
    }
}

#[test]
fn v4_to_v6_and_back() {
    let (relay, _ev) = relay(21000);
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    assert!(la.rtp.is_ipv4() && lb.rtp.is_ipv6());
    assert_eq!(la.rtp.port() % 2, 0);
    assert_eq!(la.rtcp.port(), la.rtp.port() + 1);
    let (a, b) = (endpoint(V4), endpoint(V6));
    connect(&relay, &s, remote(&a), remote(&b));

    pump(&a, la.rtp, &b, lb.rtp, 50, 0xaaaa);
    pump(&b, lb.rtp, &a, la.rtp, 50, 0xbbbb);

    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::B)
        .forwarded_packets
        == 50));
    let sa = s.stats(Leg::A);
    assert_eq!(sa.rtp_packets, 50);
    assert_eq!(sa.forwarded_packets, 50);
    assert_eq!(sa.rtp_bytes, 50 * 172);
    assert_eq!(sa.forwarded_bytes, 50 * 172);
    assert_eq!(sa.ssrc, 0xaaaa);
    assert_eq!(sa.expected_packets, 50);
    assert_eq!(sa.lost_packets, 0);
    assert_eq!(sa.clock_rate, 8000);
    assert!(sa.latched);
    assert_eq!(sa.drops.total(), 0);
    let sb = s.stats(Leg::B);
    assert_eq!(sb.forwarded_packets, 50);
    assert_eq!(sb.ssrc, 0xbbbb);
    assert!(s.idle(Leg::A).is_some_and(|d| d < Duration::from_secs(5)));
}

#[test]
fn family_mismatch_is_refused() {
    let (relay, _ev) = relay(21100);
    let s = relay.allocate(Family::V6, Family::V4).expect("allocate");
    let err = s
        .set_remote(
            Leg::A,
            RemoteMedia::new("127.0.0.1:4000".parse().expect("a")),
        )
        .expect_err("v4 address on a v6 leg");
    assert!(matches!(
        err,
        RelayError::FamilyMismatch {
            family: Family::V6,
            ..
        }
    ));
    // The zero address (hold) is accepted on any leg.
    s.set_remote(Leg::A, RemoteMedia::new("0.0.0.0:4000".parse().expect("a")))
        .expect("hold address");
}

#[test]
fn latching_follows_the_real_source() {
    let (relay, ev) = relay(21200);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    // The SDP of A names a socket that never sends (e.g. a private address
    // behind NAT); A actually sends from `a_real`.
    let a_sdp = endpoint(V4);
    let a_real = endpoint(V4);
    let b = endpoint(V4);
    connect(&relay, &s, remote(&a_sdp), remote(&b));

    // Before A has sent anything, B's media goes to the SDP address.
    let p = rtp(0, 1, 0, 2, b"x");
    b.send_to(&p, lb.rtp).expect("send");
    assert_eq!(recv(&a_sdp).map(|x| x.0), Some(p));

    // A sends from elsewhere: the leg latches onto that source.
    pump(&a_real, la.rtp, &b, lb.rtp, 3, 1);
    let mut latched = None;
    while let Some(e) = ev.recv_timeout(Duration::from_millis(500)) {
        if let Event::Latched {
            leg: Leg::A,
            rtcp: false,
            source,
            session,
        } = e
        {
            assert_eq!(session, s.id());
            latched = Some(source);
            break;
        }
    }
    assert_eq!(latched, Some(addr(&a_real)));
    // Now B's media follows the latched address.
    pump(&b, lb.rtp, &a_real, la.rtp, 3, 2);
    expect_silence(&a_sdp, Duration::from_millis(50));
}

/// A loopback address that is neither leg's SDP nor signalling IP (127/8 is all loopback).
const EVIL4: &str = "127.0.0.66";

#[test]
fn injection_from_third_address_is_dropped_and_counted() {
    let (relay, _ev) = relay(21300);
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, a_c, b, b_c, evil) = (
        endpoint(V4),
        endpoint(V4),
        endpoint(V6),
        endpoint(V6),
        endpoint(EVIL4),
    );
    connect(&relay, &s, remote_rtcp(&a, &a_c), remote_rtcp(&b, &b_c));
    pump(&a, la.rtp, &b, lb.rtp, 5, 1);
    a_c.send_to(&rtcp_rr(1), la.rtcp).expect("send");
    assert_eq!(recv(&b_c).map(|x| x.1), Some(lb.rtcp));

    for i in 0..20u16 {
        evil.send_to(&rtp(0, i, 0, 666, b"evil"), la.rtp)
            .expect("send");
        evil.send_to(&rtcp_rr(666), la.rtcp).expect("send");
    }
    // (With shared ports a stranger's datagrams belong to no leg: the relay's totals count them.)
    assert!(wait_until(Duration::from_secs(2), || relay
        .totals()
        .drops
        .foreign_source
        == 40));
    expect_silence(&b, Duration::from_millis(50));
    expect_silence(&b_c, Duration::from_millis(10));
    // The genuine peer still gets through.
    pump(&a, la.rtp, &b, lb.rtp, 5, 1);
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .forwarded_packets
        == 11));
    let st = s.stats(Leg::A);
    assert_eq!(st.rtp_packets, 10);
    assert_eq!(st.rtcp_packets, 1);
    assert_eq!(st.forwarded_packets, 11);
    assert_eq!(relay.totals().drops.foreign_source, 40);
    assert_eq!(st.ssrc, 1, "injected SSRC never reached the stats");

    // Re-latching on request from the call layer: the first packet from one
    // of the leg's IPs latches, the foreign IP still cannot.
    s.relatch(Leg::A).expect("relatch");
    relay.sync(Duration::from_secs(2));
    evil.send_to(&rtp(0, 50, 0, 666, b"evil"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    let a2 = endpoint(V4); // the same host, another port (symmetric RTP)
    pump(&a2, la.rtp, &b, lb.rtp, 2, 7);
    // B's media follows the new latch; the foreign IP never gets any.
    pump(&b, lb.rtp, &a2, la.rtp, 2, 2);
    expect_silence(&evil, Duration::from_millis(50));
    // Latches so far: A's RTP and RTCP ports, then a2.
    assert_eq!(s.stats(Leg::A).relatches, 3);

    // A new offer with a changed address re-latches too (the SDP address
    // is again only the first guess, the IP is the rule).
    let a_new_sdp = endpoint(V4);
    s.set_remote(Leg::A, remote(&a_new_sdp)).expect("new offer");
    relay.sync(Duration::from_secs(2));
    pump(&a, la.rtp, &b, lb.rtp, 2, 1);
    evil.send_to(&rtp(0, 1, 0, 666, b"evil"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert_eq!(s.stats(Leg::A).relatches, 4);
    assert_eq!(relay.totals().drops.foreign_source, 42);
}

#[test]
fn sdp_only_policy_and_relatch_after_silence() {
    let (relay, _ev) = relay_with(21400, 20, |c| {
        c.latch = LatchPolicy {
            mode: LatchMode::SdpExact,
            relatch_after_silence: None,
        }
    });
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b, other) = (endpoint(V4), endpoint(V4), endpoint(V4));
    connect(&relay, &s, remote(&a), remote(&b));
    other.send_to(&rtp(0, 1, 0, 5, b"x"), la.rtp).expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || relay
        .totals()
        .drops
        .foreign_source
        == 1));
    pump(&a, la.rtp, &b, lb.rtp, 2, 1);
    drop(s);

    // NAT rebinding policy: a new source is accepted once the latched one
    // has been silent long enough.
    let (relay, _ev) = relay_with(21500, 20, |c| {
        c.latch.relatch_after_silence = Some(Duration::from_millis(200));
    });
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b, rebound) = (endpoint(V4), endpoint(V4), endpoint(V4));
    connect(&relay, &s, remote(&a), remote(&b));
    pump(&a, la.rtp, &b, lb.rtp, 2, 1);
    rebound
        .send_to(&rtp(0, 3, 0, 1, b"x"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(250));
    pump(&rebound, la.rtp, &b, lb.rtp, 2, 1);
    pump(&b, lb.rtp, &rebound, la.rtp, 1, 2);
}

#[test]
fn rtcp_relayed_on_its_own_ports() {
    let (relay, _ev) = relay(21600);
    let s = relay.allocate(Family::V6, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, a_c, b, b_c) = (endpoint(V6), endpoint(V6), endpoint(V4), endpoint(V4));
    connect(&relay, &s, remote_rtcp(&a, &a_c), remote_rtcp(&b, &b_c));

    let r = rtcp_rr(0x1111);
    a_c.send_to(&r, la.rtcp).expect("send");
    assert_eq!(recv(&b_c), Some((r.clone(), lb.rtcp)));
    let r2 = rtcp_rr(0x2222);
    b_c.send_to(&r2, lb.rtcp).expect("send");
    assert_eq!(recv(&a_c), Some((r2, la.rtcp)));
    // RTP on an RTCP port is not RTCP: dropped.
    a_c.send_to(&rtp(0, 1, 0, 1, b"x"), la.rtcp).expect("send");
    expect_silence(&b_c, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .drops
        .not_rtp
        == 1));
    let st = s.stats(Leg::A);
    assert_eq!(st.rtcp_packets, 1);
    assert_eq!(st.rtcp_bytes, r.len() as u64);
    assert_eq!(st.rtp_packets, 0);
}

#[test]
fn rtcp_mux_both_sides_and_mixed() {
    let (relay, _ev) = relay(21700);
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V6));
    let mux = |sock: &UdpSocket| RemoteMedia {
        rtcp_mux: true,
        ..RemoteMedia::new(addr(sock))
    };
    connect(&relay, &s, mux(&a), mux(&b));
    // RTP and RTCP interleaved on the RTP port, told apart by packet type.
    for i in 0..5u16 {
        let p = rtp(8, i, 160 * i as u32, 9, b"audio");
        a.send_to(&p, la.rtp).expect("send");
        assert_eq!(recv(&b), Some((p, lb.rtp)));
        let r = rtcp_rr(9);
        a.send_to(&r, la.rtp).expect("send");
        assert_eq!(recv(&b), Some((r, lb.rtp)));
    }
    let r = rtcp_rr(10);
    b.send_to(&r, lb.rtp).expect("send");
    assert_eq!(recv(&a), Some((r, la.rtp)));
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .forwarded_packets
        == 10));
    let st = s.stats(Leg::A);
    assert_eq!(
        (st.rtp_packets, st.rtcp_packets, st.forwarded_packets),
        (5, 5, 10)
    );
    // RTP marker bit with PT 72..=76 would look like RTCP; PT 0 with marker is RTP.
    let p = rtp(0x80, 6, 0, 9, b"m");
    a.send_to(&p, la.rtp).expect("send");
    assert_eq!(recv(&b), Some((p, lb.rtp)));

    // B stops muxing (new answer): RTCP from A now goes to B's RTCP port,
    // and B's RTCP (on our RTCP port) still reaches A on the muxed port.
    let b_c = endpoint(V6);
    s.set_remote(Leg::B, remote_rtcp(&b, &b_c))
        .expect("remote b");
    relay.sync(Duration::from_secs(2));
    let r = rtcp_rr(11);
    a.send_to(&r, la.rtp).expect("send");
    assert_eq!(recv(&b_c), Some((r, lb.rtcp)));
    let r = rtcp_rr(12);
    b_c.send_to(&r, lb.rtcp).expect("send");
    assert_eq!(recv(&a), Some((r, la.rtp)));
}

#[test]
fn no_destination_and_zero_address_hold() {
    let (relay, _ev) = relay(21800);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V4));
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    relay.sync(Duration::from_secs(2));
    // B has not answered yet: A's media has nowhere to go.
    a.send_to(&rtp(0, 1, 0, 1, b"x"), la.rtp).expect("send");
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .drops
        .no_destination
        == 1));
    s.set_remote(Leg::B, remote(&b)).expect("remote b");
    relay.sync(Duration::from_secs(2));
    pump(&a, la.rtp, &b, lb.rtp, 2, 1);
    pump(&b, lb.rtp, &a, la.rtp, 1, 2);
    // B holds with c=0.0.0.0: nothing is sent to B any more.
    let sdp = Sdp::parse(
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
            addr(&b).port()
        )
        .as_bytes(),
    )
    .expect("sdp");
    let m = &sdp.media()[0];
    assert!(m.on_hold());
    s.set_remote(Leg::B, RemoteMedia::from_sdp(m, false).expect("remote"))
        .expect("hold");
    s.set_hold(Leg::B, true).expect("hold");
    relay.sync(Duration::from_secs(2));
    a.send_to(&rtp(0, 3, 0, 1, b"x"), la.rtp).expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .drops
        .no_destination
        == 2));
}

#[test]
fn ten_thousand_allocations_do_not_leak_ports() {
    // 16 pairs per family, so every pair is reused hundreds of times; with
    // shared ports, 16 sessions at most (the bound instead of the ports).
    let shared = crate::LAYOUT != podpbx_media::PortLayout::PerCall;
    let (relay, _ev) = relay_with(22000, 16, |c| {
        if shared {
            c.max_sessions = 16;
        }
    });
    let total4 = relay.ports_total(Family::V4);
    let total6 = relay.ports_total(Family::V6);
    assert_eq!((total4, total6), (16, 16));
    let (avail4, avail6) = (
        relay.ports_available(Family::V4),
        relay.ports_available(Family::V6),
    );
    let fams = [Family::V4, Family::V6];
    let mut done = 0;
    let mut retries = 0;
    while done < 10_000 {
        match relay.allocate(fams[done % 2], fams[(done / 2) % 2]) {
            Ok(s) => {
                assert_eq!(s.local(Leg::A).rtp.port() % 2, 0);
                if done % 100 == 0 {
                    // Exercise a few commands on the way.
                    s.set_hold(Leg::A, true).expect("cmd");
                    s.set_remote(
                        Leg::A,
                        RemoteMedia::new(SocketAddr::new(s.local(Leg::A).rtp.ip(), 4000)),
                    )
                    .expect("cmd");
                }
                s.release();
                done += 1;
            }
            Err(RelayError::PortsExhausted(_)) | Err(RelayError::Full(_)) => {
                // Releases are asynchronous; let the worker catch up.
                retries += 1;
                assert!(relay.sync(Duration::from_secs(5)));
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Dropping a session releases it as well.
    for _ in 0..100 {
        let s = relay.allocate(Family::V6, Family::V6);
        drop(s);
        relay.sync(Duration::from_secs(5));
    }
    assert!(relay.sync(Duration::from_secs(5)));
    assert_eq!(
        relay.ports_available(Family::V4),
        avail4,
        "after {retries} retries"
    );
    assert_eq!(relay.ports_available(Family::V6), avail6);
    assert_eq!(relay.active_sessions(), 0);
    if !shared {
        // Every socket is really closed: all ports bind again.
        let mut held: Vec<UdpSocket> = Vec::new();
        for port in 22000..22032u16 {
            for ip in [V4, V6] {
                match UdpSocket::bind(SocketAddr::new(ip.parse().expect("ip"), port)) {
                    Ok(s) => held.push(s),
                    Err(e) => panic!("{ip} port {port} still bound: {e}"),
                }
            }
        }
        drop(held);
    }
    // All 16 sessions can be held at once, and the 17th fails cleanly.
    let all: Vec<Session> = (0..16)
        .map(|_| relay.allocate(Family::V4, Family::V6).expect("allocate"))
        .collect();
    let next = relay.allocate(Family::V4, Family::V4);
    if shared {
        assert!(matches!(next, Err(RelayError::Full(16))), "{next:?}");
    } else {
        assert!(
            matches!(next, Err(RelayError::PortsExhausted(Family::V4))),
            "{next:?}"
        );
    }
    // The sessions still relay after all that churn.
    let (a, b) = (endpoint(V4), endpoint(V6));
    connect(&relay, &all[7], remote(&a), remote(&b));
    let (la, lb) = (all[7].local(Leg::A), all[7].local(Leg::B));
    pump(&a, la.rtp, &b, lb.rtp, 3, 1);
    pump(&b, lb.rtp, &a, la.rtp, 3, 2);
    drop(all);
    assert!(relay.sync(Duration::from_secs(5)));
    assert_eq!(relay.ports_available(Family::V4), avail4);
}

#[test]
fn media_timeout_event_is_hold_aware() {
    let (relay, ev) = relay_with(22100, 20, |c| {
        c.media_timeout = Duration::from_millis(300);
        c.hold_timeout = Duration::from_millis(1500);
    });
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V6));
    connect(&relay, &s, remote(&a), remote(&b));
    // B keeps talking for a while, A is silent.
    for i in 0..25u16 {
        b.send_to(&rtp(0, i, 0, 2, b"x"), lb.rtp).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    match next_non_latch(&ev, Duration::from_secs(2)) {
        Some(Event::MediaTimeout {
            session,
            leg,
            idle,
            on_hold,
        }) => {
            assert_eq!(session, s.id());
            assert_eq!(leg, Leg::A, "A was the silent one");
            assert!(idle >= Duration::from_millis(300));
            assert!(!on_hold);
        }
        other => panic!("expected a media timeout, got {other:?}"),
    }
    // Then B goes silent too.
    match next_non_latch(&ev, Duration::from_secs(2)) {
        Some(Event::MediaTimeout { leg: Leg::B, .. }) => {}
        other => panic!("expected B's timeout, got {other:?}"),
    }
    // Raised once per silence.
    assert_eq!(next_non_latch(&ev, Duration::from_millis(400)), None);

    // On hold the longer timeout applies.
    s.set_hold(Leg::A, true).expect("hold");
    assert_eq!(next_non_latch(&ev, Duration::from_millis(900)), None);
    match next_non_latch(&ev, Duration::from_secs(3)) {
        Some(Event::MediaTimeout { on_hold: true, .. }) => {}
        other => panic!("expected a hold timeout, got {other:?}"),
    }
    // Media resuming re-arms it.
    let _ = next_non_latch(&ev, Duration::from_millis(100));
    s.set_hold(Leg::A, false).expect("unhold");
    for i in 0..30u16 {
        a.send_to(&rtp(0, i, 0, 1, b"x"), la.rtp).expect("send");
        b.send_to(&rtp(0, 100 + i, 0, 2, b"x"), lb.rtp)
            .expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(next_non_latch(&ev, Duration::from_millis(10)), None);
    assert!(matches!(
        next_non_latch(&ev, Duration::from_secs(2)),
        Some(Event::MediaTimeout { on_hold: false, .. })
    ));
}

/// Crafted packets: truncated headers, a 20-byte packet with the X bit set
/// and an extension length pointing past the end (the input that panics
/// the old `rtp` 0.17 crate), CSRC counts past the end, bad padding, wrong
/// version, STUN, DTLS, empty and oversize datagrams. None is forwarded,
/// each is counted, and the relay keeps forwarding good packets.
#[test]
fn crafted_packets_are_dropped_and_counted() {
    let (relay, _ev) = relay(22200);
    let s = relay.allocate(Family::V6, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V6), endpoint(V4));
    connect(&relay, &s, remote(&a), remote(&b));
    pump(&a, la.rtp, &b, lb.rtp, 1, 1);

    let mut x_ext = rtp(
        0,
        2,
        0,
        1,
        &[0xbe, 0xde, 0xff, 0xff, 0x10, 0xaa, 0xbb, 0xcc],
    );
    x_ext[0] |= 0x10;
    assert_eq!(x_ext.len(), 20);
    let mut x_ext2 = rtp(0, 2, 0, 1, &[0x10, 0x00, 0x00, 0x03, 0, 0, 0, 0]);
    x_ext2[0] |= 0x10;
    let mut x_hdr_cut = rtp(0, 2, 0, 1, &[0xbe, 0xde]);
    x_hdr_cut[0] |= 0x10;
    let mut csrc = rtp(0, 2, 0, 1, &[0; 8]);
    csrc[0] |= 0x0f;
    let mut pad = rtp(0, 2, 0, 1, &[1, 2, 200]);
    pad[0] |= 0x20;
    let mut v1 = rtp(0, 2, 0, 1, b"payload");
    v1[0] = 0x40 | (v1[0] & 0x3f);
    let malformed: Vec<Vec<u8>> = vec![
        x_ext,
        x_ext2,
        x_hdr_cut,
        csrc,
        pad,
        vec![0x80],
        vec![0x80, 0x00, 0x00],
        rtp(0, 2, 0, 1, b"")[..11].to_vec(),
        vec![0x80, 200, 0, 1, 0, 0], // RTCP shorter than 8 bytes
    ];
    let not_rtp: Vec<Vec<u8>> = vec![
        v1,
        vec![
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ], // STUN
        vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // DTLS handshake
        vec![0xff; 40],
    ];
    for p in malformed.iter().chain(&not_rtp) {
        a.send_to(p, la.rtp).expect("send");
    }
    a.send_to(&[], la.rtp).expect("send empty");
    a.send_to(&vec![0x80u8; 3000], la.rtp)
        .expect("send oversize");
    expect_silence(&b, Duration::from_millis(100));
    let want_malformed = malformed.len() as u64 + 1; // + the empty datagram
    assert!(
        wait_until(Duration::from_secs(1), || {
            let d = s.stats(Leg::A).drops;
            d.malformed == want_malformed && d.not_rtp == not_rtp.len() as u64 && d.oversize == 1
        }),
        "{:?}",
        s.stats(Leg::A).drops
    );
    // Still forwarding, and the crafted packets did not disturb the stats.
    pump(&a, la.rtp, &b, lb.rtp, 3, 1);
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::A)
        .forwarded_packets
        == 4));
    let st = s.stats(Leg::A);
    assert_eq!(st.rtp_packets, 4);
    assert_eq!(st.forwarded_packets, 4);

    // A valid packet with a header extension and padding is forwarded as is.
    let mut ext_ok = rtp(
        96,
        2000,
        0,
        1,
        &[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00, 7, 7, 2],
    );
    ext_ok[0] |= 0x30;
    a.send_to(&ext_ok, la.rtp).expect("send");
    assert_eq!(recv(&b), Some((ext_ok, lb.rtp)));
}

#[test]
fn loss_and_jitter_estimates() {
    let (relay, _ev) = relay(22300);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let la = s.local(Leg::A);
    let (a, b) = (endpoint(V4), endpoint(V4));
    let ra = RemoteMedia {
        clock_rates: vec![(96, 48000)],
        ..remote(&a)
    };
    connect(&relay, &s, ra, remote(&b));
    // 100 packets, every 5th missing, timestamps advancing 20 ms while
    // packets are sent back to back: jitter builds up.
    let mut sent = 0;
    for i in 0..100u16 {
        if i % 5 == 4 {
            continue;
        }
        a.send_to(&rtp(96, i, 960 * i as u32, 0x77, b"opus"), la.rtp)
            .expect("send");
        sent += 1;
        recv(&b).expect("forwarded");
    }
    let st = s.stats(Leg::A);
    assert_eq!(st.rtp_packets, sent);
    assert_eq!(st.expected_packets, 99);
    assert_eq!(st.lost_packets, 99 - 80);
    assert_eq!(st.clock_rate, 48000);
    assert!(st.jitter_timestamp_units > 100, "{st:?}");
    assert!(st.loss_fraction() > 0.18 && st.loss_fraction() < 0.2);
}

#[test]
fn dtmf_injection_rfc4733() {
    let (relay, _ev) = relay(22400);
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let lb = s.local(Leg::B);
    let (a, b) = (endpoint(V4), endpoint(V6));
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    assert!(matches!(
        s.inject_dtmf(Leg::A, '1', Duration::from_millis(100)),
        Err(RelayError::Dtmf(_))
    ));
    s.set_remote(
        Leg::B,
        RemoteMedia {
            telephone_event: Some((101, 8000)),
            ..remote(&b)
        },
    )
    .expect("remote b");
    assert!(s
        .inject_dtmf(Leg::B, 'x', Duration::from_millis(100))
        .is_err());
    s.inject_dtmf(Leg::B, '#', Duration::from_millis(100))
        .expect("dtmf");
    let mut got = Vec::new();
    let t0 = std::time::Instant::now();
    while got.len() < 7 {
        let (p, from) = recv(&b).expect("dtmf packet");
        assert_eq!(from, lb.rtp);
        got.push((t0.elapsed(), p));
    }
    let mut ssrc = None;
    for (i, (_, p)) in got.iter().enumerate() {
        let Kind::Rtp(h) = classify(p, true) else {
            panic!("not RTP")
        };
        assert_eq!(h.payload_type, 101);
        assert_eq!(*ssrc.get_or_insert(h.ssrc), h.ssrc);
        let e = telephone_event(&p[h.payload_offset as usize..]).expect("event");
        assert_eq!(e.event, 11);
        assert_eq!(e.end, i >= 4);
    }
    // Paced over the event's duration, not sent in one burst.
    assert!(
        got[6].0 - got[0].0 >= Duration::from_millis(60),
        "{:?}",
        got[6].0 - got[0].0
    );
    assert!(wait_until(Duration::from_secs(1), || s
        .stats(Leg::B)
        .dtmf_packets_sent
        == 7));
}

#[test]
fn remote_media_from_sdp() {
    let sdp = Sdp::parse(
        b"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/48000\r\na=rtcp:5011\r\n",
    )
    .expect("sdp");
    let r = RemoteMedia::from_sdp(&sdp.media()[0], false).expect("remote");
    assert_eq!(r.rtp, "[::1]:5004".parse::<SocketAddr>().expect("a"));
    assert_eq!(r.rtcp, Some("[::1]:5011".parse().expect("a")));
    assert_eq!(r.clock_rates, vec![(111, 48000), (101, 48000)]);
    assert_eq!(r.telephone_event, Some((101, 48000)));
    let m = RemoteMedia::from_sdp(&sdp.media()[0], true).expect("remote");
    assert!(m.rtcp_mux && m.rtcp.is_none());
}

#[test]
fn several_workers_and_many_sessions() {
    let (relay, _ev) = relay_with(22500, 60, |c| c.workers = 3);
    assert_eq!(relay.worker_thread_ids().len(), 3);
    let avail6 = relay.ports_available(Family::V6);
    let mut sessions = Vec::new();
    let mut eps = Vec::new();
    for i in 0..30 {
        let fa = if i % 2 == 0 { Family::V4 } else { Family::V6 };
        let s = relay.allocate(fa, Family::V6).expect("allocate");
        let a = endpoint(if fa == Family::V4 { V4 } else { V6 });
        let b = endpoint(V6);
        connect(&relay, &s, remote(&a), remote(&b));
        sessions.push(s);
        eps.push((a, b));
    }
    for (s, (a, b)) in sessions.iter().zip(&eps) {
        pump(a, s.local(Leg::A).rtp, b, s.local(Leg::B).rtp, 3, 5);
        pump(b, s.local(Leg::B).rtp, a, s.local(Leg::A).rtp, 3, 6);
    }
    assert!(relay.worker_thread_ids().iter().all(|t| *t > 0));
    assert_eq!(relay.active_sessions(), 30);
    drop(sessions);
    assert!(relay.sync(Duration::from_secs(5)));
    assert_eq!(relay.active_sessions(), 0);
    assert_eq!(relay.ports_available(Family::V6), avail6);
}

/// A V4 -> `b_family` session whose leg A negotiated telephone-event 101 at 8 kHz, both legs
/// connected to fresh endpoints (A's, B's).
fn te_session(relay: &podpbx_media::Relay, b_family: Family) -> (Session, UdpSocket, UdpSocket) {
    let s = relay.allocate(Family::V4, b_family).expect("allocate");
    let a = endpoint(V4);
    let b = endpoint(if b_family == Family::V6 { V6 } else { V4 });
    connect(
        relay,
        &s,
        RemoteMedia {
            telephone_event: Some((101, 8000)),
            ..remote(&a)
        },
        remote(&b),
    );
    (s, a, b)
}

/// An RFC 4733 packet: `event`, end bit, volume 10, `duration` in timestamp units.
fn te_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, event: u8, end: bool, duration: u16) -> Vec<u8> {
    let d = duration.to_be_bytes();
    let mut p = rtp(
        pt,
        seq,
        ts,
        ssrc,
        &[event, if end { 0x8a } else { 0x0a }, d[0], d[1]],
    );
    if !end && duration <= 160 {
        p[1] |= 0x80; // marker on the first packet of the event
    }
    p
}

/// Every packet of one event as a sender emits it: progress packets every
/// 160 units, then the end packet three times. Returns the sequence number
/// after the last packet.
fn send_event(
    from: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    (pt, ssrc, seq, ts): (u8, u32, u16, u32),
    event: u8,
    duration: u16,
) -> u16 {
    let mut seq = seq;
    let mut packets = Vec::new();
    let mut d = 160;
    while d < duration {
        packets.push(te_packet(pt, seq, ts, ssrc, event, false, d));
        seq = seq.wrapping_add(1);
        d += 160;
    }
    for _ in 0..3 {
        packets.push(te_packet(pt, seq, ts, ssrc, event, true, duration));
        seq = seq.wrapping_add(1);
    }
    for p in &packets {
        from.send_to(p, to).expect("send");
        let (got, _) = recv(sink).expect("forwarded");
        assert_eq!(&got, p, "telephone-events are forwarded untouched");
    }
    seq
}

/// Dtmf events waiting now (bounded wait for stragglers).
fn dtmf_events(ev: &podpbx_media::Events, wait: Duration) -> Vec<(Leg, char, u32)> {
    let mut out = Vec::new();
    while let Some(e) = ev.recv_timeout(wait) {
        if let Event::Dtmf {
            leg,
            digit,
            duration_ms,
            ..
        } = e
        {
            out.push((leg, digit, duration_ms));
        }
    }
    out
}

#[test]
fn rfc4733_end_of_event_reported_once() {
    let (relay, ev) = relay(22700);
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V6));
    // A negotiated telephone-event 101 at 8 kHz, B 96 at 16 kHz.
    connect(
        &relay,
        &s,
        RemoteMedia {
            telephone_event: Some((101, 8000)),
            ..remote(&a)
        },
        RemoteMedia {
            telephone_event: Some((96, 16000)),
            ..remote(&b)
        },
    );
    // Some audio first: nothing to report.
    pump(&a, la.rtp, &b, lb.rtp, 5, 0xa1);

    // '5' for 100 ms (800 units): four progress packets, three end packets.
    let seq = send_event(&a, la.rtp, &b, (101, 0xa1, 2000, 16_000), 5, 800);
    let got = dtmf_events(&ev, Duration::from_millis(200));
    assert_eq!(got, vec![(Leg::A, '5', 100)], "exactly one event");
    let got_session = {
        send_event(&a, la.rtp, &b, (101, 0xa1, seq, 17_600), 11, 1280);
        let mut id = None;
        while let Some(e) = ev.recv_timeout(Duration::from_millis(200)) {
            if let Event::Dtmf {
                session,
                leg,
                digit,
                duration_ms,
            } = e
            {
                assert_eq!((leg, digit, duration_ms), (Leg::A, '#', 160));
                assert!(id.replace(session).is_none(), "reported twice");
            }
        }
        id
    };
    assert_eq!(got_session, Some(s.id()));
    // A late copy of the last end packet is not a new event.
    a.send_to(
        &te_packet(101, seq.wrapping_add(20), 17_600, 0xa1, 11, true, 1280),
        la.rtp,
    )
    .expect("send");
    assert!(recv(&b).is_some());
    assert!(dtmf_events(&ev, Duration::from_millis(100)).is_empty());

    // B's events use B's own payload type and clock: 1600 units at 16 kHz = 100 ms.
    send_event(&b, lb.rtp, &a, (96, 0xb1, 1, 900), 13, 1600);
    assert_eq!(
        dtmf_events(&ev, Duration::from_millis(200)),
        vec![(Leg::B, 'B', 100)]
    );
    // PT 101 from B is not B's telephone-event: forwarded, not reported.
    send_event(&b, lb.rtp, &a, (101, 0xb1, 50, 2900), 1, 800);
    assert!(dtmf_events(&ev, Duration::from_millis(100)).is_empty());

    // A leg whose SDP has no telephone-event reports nothing.
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    assert!(relay.sync(Duration::from_secs(5)));
    send_event(
        &a,
        la.rtp,
        &b,
        (101, 0xa1, seq.wrapping_add(40), 30_000),
        7,
        800,
    );
    assert!(dtmf_events(&ev, Duration::from_millis(100)).is_empty());
    assert_eq!(s.stats(Leg::A).drops.total(), 0);
}

#[test]
fn malformed_telephone_events_are_ignored_without_panic() {
    let (relay, ev) = relay(22800);
    let (s, a, b) = te_session(&relay, Family::V4);
    let la = s.local(Leg::A);
    let mut sent_rtp = 0u64;
    let mut ts = 1000u32;
    let mut next = |payload: &[u8], flags: u8| {
        ts += 1000;
        let mut p = rtp(101, ts as u16, ts, 0xa1, payload);
        p[0] |= flags;
        p
    };
    // Payloads shorter than 4 bytes, all with the end bit where there is one.
    let mut odd = vec![
        next(&[], 0),
        next(&[5], 0),
        next(&[5, 0x8a], 0),
        next(&[5, 0x8a, 3], 0),
    ];
    // 4 bytes, but 2 of them padding: the event does not fit.
    odd.push(next(&[5, 0x8a, 2, 2], 0x20));
    // Not DTMF digits: flash (16) and an unassigned code, with the end bit.
    odd.push(next(&[16, 0x8a, 3, 0x20], 0));
    odd.push(next(&[200, 0x8a, 3, 0x20], 0));
    // CSRC count pointing past the end: malformed, dropped before any look at it.
    let mut bad = next(&[5, 0x8a, 3, 0x20], 0);
    bad[0] |= 0x0f;
    for p in &odd {
        a.send_to(p, la.rtp).expect("send");
        assert_eq!(recv(&b).map(|x| x.0).as_ref(), Some(p), "still forwarded");
        sent_rtp += 1;
    }
    a.send_to(&bad, la.rtp).expect("send");
    // Pseudo-random telephone-event payloads of every length up to 24 bytes.
    // Sent in chunks that the relay accounts for before the next one (no socket buffer
    // overflow on a busy machine); every datagram is either RTP or malformed.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut sent = sent_rtp + 1;
    for chunk in 0..20u32 {
        for i in chunk * 25..(chunk + 1) * 25 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 25) as usize;
            let payload: Vec<u8> = (0..len).map(|k| (x >> (8 * (k % 8))) as u8).collect();
            let mut p = rtp(101, (5000 + i) as u16, 100_000 + i, 0xa2, &payload);
            if x & 0x100 != 0 {
                p[0] |= 0x20; // padding bit: the last byte counts padding (maybe invalid)
            }
            a.send_to(&p, la.rtp).expect("send");
            sent += 1;
            if podpbx_media::packet::rtp_header(&p).is_some() {
                sent_rtp += 1;
            }
        }
        assert!(
            wait_until(Duration::from_secs(2), || {
                let st = s.stats(Leg::A);
                st.rtp_packets + st.drops.malformed == sent
            }),
            "{:?}",
            s.stats(Leg::A)
        );
        for _ in 0..25 {
            if !recv_quick(&b) {
                break;
            }
        }
    }
    assert_eq!(s.stats(Leg::A).rtp_packets, sent_rtp);
    assert!(s.stats(Leg::A).drops.malformed >= 1);
    assert!(
        dtmf_events(&ev, Duration::from_millis(50))
            .iter()
            .all(|(leg, d, _)| *leg == Leg::A && "0123456789*#ABCD".contains(*d)),
        "only digits 0-15 are reported"
    );
    for _ in 0..100 {
        if !recv_quick(&b) {
            break;
        }
    }
    // The worker is alive and still reads the next well-formed event right.
    send_event(&a, la.rtp, &b, (101, 0xa3, 7, 900_000), 0, 320);
    assert_eq!(
        dtmf_events(&ev, Duration::from_millis(200)),
        vec![(Leg::A, '0', 40)]
    );
    // One with a header extension and a CSRC: the payload offset is honoured.
    let mut ext = rtp(
        101,
        9,
        950_000,
        0xa3,
        &[
            0, 0, 0, 9, 0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0, 12, 0x8a, 6, 0x40,
        ],
    );
    ext[0] |= 0x11;
    a.send_to(&ext, la.rtp).expect("send");
    assert_eq!(recv(&b).map(|x| x.0), Some(ext));
    assert_eq!(
        dtmf_events(&ev, Duration::from_millis(200)),
        vec![(Leg::A, 'A', 200)]
    );
}

/// Receive with a very short timeout; true if a datagram was waiting.
fn recv_quick(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let got = recv(s).is_some();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    got
}

/// Many sessions at once, each with peers of its own: every one latches both
/// legs and relays both ways (with shared ports, 800 latched peers in one
/// worker's table).
#[test]
fn two_hundred_sessions_all_latch_and_relay() {
    let (relay, _ev) = relay_with(28000, 420, |_| {});
    let mut calls = Vec::new();
    for _ in 0..200 {
        let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
        let (a, b) = (endpoint(V4), endpoint(V6));
        // RTP and RTCP from and to one socket per peer.
        s.set_remote(Leg::A, remote_rtcp(&a, &a)).expect("a");
        s.set_remote(Leg::B, remote_rtcp(&b, &b)).expect("b");
        calls.push((s, a, b));
    }
    assert!(relay.sync(Duration::from_secs(5)));
    for (round, ssrc) in [(0u16, 1u32), (1, 2)] {
        for (s, a, b) in &calls {
            let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
            a.send_to(&rtp(0, round, 0, ssrc, b"a"), la.rtp)
                .expect("send");
            a.send_to(&rtcp_rr(ssrc), la.rtcp).expect("send");
            b.send_to(&rtp(0, round, 0, ssrc, b"b"), lb.rtp)
                .expect("send");
            b.send_to(&rtcp_rr(ssrc), lb.rtcp).expect("send");
        }
        for (s, a, b) in &calls {
            let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
            let mut at_b: Vec<_> = (0..2).filter_map(|_| recv(b)).collect();
            let mut at_a: Vec<_> = (0..2).filter_map(|_| recv(a)).collect();
            at_b.sort_by_key(|x| x.1);
            at_a.sort_by_key(|x| x.1);
            assert_eq!(
                at_b.iter().map(|x| x.1).collect::<Vec<_>>(),
                vec![lb.rtp, lb.rtcp],
                "round {round}"
            );
            assert_eq!(
                at_a.iter().map(|x| x.1).collect::<Vec<_>>(),
                vec![la.rtp, la.rtcp],
                "round {round}"
            );
        }
    }
    // (The totals are stored just after each batch is sent: wait for the last one.)
    assert!(
        wait_until(Duration::from_secs(2), || relay.totals().forwarded_packets
            == 200 * 8),
        "{:?}",
        relay.totals()
    );
    assert_eq!(relay.totals().drops.total(), 0, "{:?}", relay.totals());
}

/// Commands that do not wake the worker (remote addresses, releases of
/// shared-port sessions) still apply in time: a stream's first packet wakes
/// the worker, which takes its commands before any datagram; and releases
/// nobody waits for are done within the worker's longest sleep.
#[test]
fn commands_that_do_not_wake_the_worker_still_apply_in_time() {
    let (relay, _ev) = relay_with(29000, 250, |c| c.media_timeout = Duration::ZERO);
    for _ in 0..5 {
        let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
        let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
        let (a, b) = (endpoint(V4), endpoint(V6));
        // No sync: the first packets follow the commands at once.
        s.set_remote(Leg::A, remote(&a)).expect("a");
        s.set_remote(Leg::B, remote(&b)).expect("b");
        pump(&a, la.rtp, &b, lb.rtp, 2, 1);
        pump(&b, lb.rtp, &a, la.rtp, 2, 2);
        std::thread::sleep(Duration::from_millis(300)); // the worker falls asleep again
    }
    // Many sessions allocated and released with no packet and no sync: 200 pairs of the 250,
    // so that a worker slowed by other load (a released pair is back in the pool only once the
    // worker has closed its sockets) cannot make an allocation fail (seen with 400).
    for _ in 0..10 {
        let all: Vec<Session> = (0..10)
            .map(|_| relay.allocate(Family::V4, Family::V4).expect("allocate"))
            .collect();
        drop(all);
    }
    assert!(
        wait_until(Duration::from_secs(2), || relay.active_sessions() == 0),
        "{} sessions left",
        relay.active_sessions()
    );
}

/// A source that sends two RTP streams at once (two calls' audio from one socket, as SIPp's
/// `rtp_stream` does) is counted and reported once; a phone's own SSRC change, and telephone
/// events under an SSRC of their own between its voice packets, are not.
#[test]
fn one_source_with_two_streams_is_reported_once() {
    let (relay, ev) = relay(27000);
    let (s, a, b) = te_session(&relay, Family::V6);
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let send = |pt: u8, seq: u16, ssrc: u32| {
        a.send_to(&rtp(pt, seq, u32::from(seq) * 160, ssrc, &[0; 160]), la.rtp)
            .expect("send");
        assert!(recv(&b).is_some(), "forwarded");
    };
    // A phone: voice, a digit under its own SSRC between voice packets, a new SSRC (a
    // re-INVITE), a digit again.
    for i in 0..40u16 {
        let ssrc = if i < 20 { 0x1111 } else { 0x2222 };
        send(0, i, ssrc);
        if i % 20 < 8 {
            send(101, 500 + i, 0xdddd);
        }
    }
    let sa = s.stats(Leg::A);
    assert_eq!(sa.ssrc_flaps, 0, "a phone is not mixed");
    // The digits' own SSRC does not restart the voice stream's statistics.
    assert_eq!(
        (sa.ssrc, sa.expected_packets, sa.lost_packets),
        (0x2222, 20, 0)
    );
    assert_eq!(relay.totals().ssrc_flaps, 0);
    let mixed = |ev: &podpbx_media::Events| {
        let mut got = Vec::new();
        while let Some(e) = next_non_latch(ev, Duration::from_millis(200)) {
            if let Event::MixedStreams {
                session,
                leg,
                source,
                ssrcs,
            } = e
            {
                got.push((session, leg, source, ssrcs));
            }
        }
        got
    };
    assert!(mixed(&ev).is_empty());

    // Now a second stream from the same socket, interleaved with the first.
    for i in 0..40u16 {
        send(0, 100 + i, 0xca11_0000 + u32::from(i % 2));
    }
    let flaps = s.stats(Leg::A).ssrc_flaps;
    assert!(flaps >= 37, "{flaps} flaps");
    assert!(wait_until(Duration::from_secs(2), || relay
        .totals()
        .ssrc_flaps
        == flaps));
    let got = mixed(&ev);
    assert_eq!(got.len(), 1, "{got:?}");
    let (session, leg, source, ssrcs) = got[0];
    assert_eq!((session, leg, source), (s.id(), Leg::A, Some(addr(&a))));
    assert!(ssrcs.contains(&0xca11_0000) && ssrcs.contains(&0xca11_0001));
    // Still mixed later: counted, not reported again.
    for i in 0..40u16 {
        send(0, 200 + i, 0xca11_0000 + u32::from(i % 2));
    }
    // (The first change of this burst comes after the wait above: not a flap.)
    assert!(s.stats(Leg::A).ssrc_flaps >= flaps + 38);
    assert!(mixed(&ev).is_empty());
    // The other leg's peer sends one stream: nothing there.
    pump(&b, lb.rtp, &a, la.rtp, 20, 0xbbbb);
    assert_eq!(s.stats(Leg::B).ssrc_flaps, 0);
}

/// A peer that sends end-of-event packets as fast as it can, each of a new event (a new
/// timestamp), must not turn each into an event for the call layer (a queue that grows while the
/// core works through them, a SIP INFO per digit): digits are reported at a human rate, the rest
/// counted; the packets themselves are forwarded. Once the flood stops, a digit is reported again.
#[test]
fn a_flood_of_digits_is_reported_at_a_human_rate() {
    let (relay, ev) = relay(27100);
    let (s, a, _b) = te_session(&relay, Family::V6);
    let la = s.local(Leg::A);
    const FLOOD: u32 = 3_000;
    for i in 0..FLOOD {
        let p = te_packet(101, i as u16, i * 800, 0xf100d, 1, true, 800);
        a.send_to(&p, la.rtp).expect("send");
    }
    // Until the relay has taken in what reached it (a socket buffer may have dropped some).
    let mut rtp = 0;
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = s.stats(Leg::A).rtp_packets;
        if now == rtp {
            break;
        }
        rtp = now;
    }
    assert!(rtp > u64::from(FLOOD) / 2, "{rtp} accepted");
    let got = dtmf_events(&ev, Duration::from_millis(300)).len() as u64;
    assert!(got <= 25, "{got} digit events from a flood of {rtp} events");
    assert!(got >= 10, "a burst of digits is still reported ({got})");
    assert_eq!(relay.totals().digits_limited, rtp - got);
    // The bucket refills: a digit a little later is reported.
    std::thread::sleep(Duration::from_millis(200));
    a.send_to(
        &te_packet(101, 60_000, 99_999_200, 0xf100d, 5, true, 800),
        la.rtp,
    )
    .expect("send");
    assert_eq!(
        dtmf_events(&ev, Duration::from_millis(300)),
        vec![(Leg::A, '5', 100)]
    );
}

/// The event queue has a bound: a consumer that does not keep up loses the events beyond it
/// (counted), the relay holds no more than that and forwards on.
#[test]
fn the_event_queue_is_bounded_and_counts_what_it_drops() {
    let (relay, ev) = relay_with(27200, 20, |c| c.event_queue = 8);
    let (s, a, b) = te_session(&relay, Family::V6);
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    // Nobody reads: 15 digits (within the digit rate), each forwarded.
    for i in 0..15u32 {
        let p = te_packet(101, i as u16, i * 800, 0xe7e7, (i % 10) as u8, true, 800);
        a.send_to(&p, la.rtp).expect("send");
        assert!(recv(&b).is_some(), "forwarded");
    }
    // A's latch and 15 digits: 8 queued, 8 counted (the totals follow the packets a moment later).
    assert!(
        wait_until(Duration::from_secs(2), || relay.totals().events_dropped
            >= 8),
        "{} dropped",
        relay.totals().events_dropped
    );
    let queued: Vec<_> = std::iter::from_fn(|| ev.try_recv()).collect();
    assert_eq!(queued.len(), 8, "{queued:?}");
    assert_eq!(relay.totals().events_dropped, 8);
    // Read, the queue has room again.
    a.send_to(&te_packet(101, 99, 99 * 800, 0xe7e7, 5, true, 800), la.rtp)
        .expect("send");
    assert!(recv(&b).is_some());
    assert_eq!(
        dtmf_events(&ev, Duration::from_millis(300)),
        vec![(Leg::A, '5', 100)]
    );
    pump(&b, lb.rtp, &a, la.rtp, 5, 0xbbbb);
}
