// No RTP bleed (issue #11), on loopback: a leg accepts media only from the IP of its SDP's
// `c=` line or of its signalling peer, any port; nothing before its SDP is known; everything
// else is dropped and counted, before and after latching, on hold and off; only a new SDP
// moves a leg to another IP. The attacker sits on another loopback address (127.0.0.66: all of
// 127/8 is loopback). Port pairs are handed out at random.

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use crate::common::*;
use crate::{relay, relay_with};
use podpbx_media::{Family, LatchPolicy, Leg, RemoteMedia, Session};

const EVIL: &str = "127.0.0.66";

fn remote(s: &UdpSocket) -> RemoteMedia {
    RemoteMedia::new(addr(s))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// One RTP packet (and an RTCP report) from `evil` to each of the session's four ports.
fn spray(evil: &UdpSocket, s: &Session, n: u16) {
    for i in 0..n {
        for leg in [Leg::A, Leg::B] {
            let l = s.local(leg);
            if l.rtp.is_ipv4() {
                let _ = evil.send_to(&rtp(0, i, 0, 0xbad, &[0x55; 160]), l.rtp);
                let _ = evil.send_to(&rtcp_rr(0xbad), l.rtcp);
            }
        }
    }
}

/// Datagrams the relay dropped as coming from a source no leg accepts (with
/// shared ports no leg is theirs: the relay's totals count them).
fn foreign(relay: &podpbx_media::Relay) -> u64 {
    relay.totals().drops.foreign_source
}

fn assert_forwards(from: &UdpSocket, to_port: std::net::SocketAddr, sink: &UdpSocket) {
    let p = rtp(0, 7, 0, 0x600d, b"genuine");
    from.send_to(&p, to_port).expect("send");
    assert_eq!(recv(sink).map(|x| x.0), Some(p), "genuine media forwarded");
}

#[test]
fn nothing_latches_before_the_legs_sdp_is_known() {
    let (relay, _ev) = relay(24000);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b, evil) = (endpoint(V4), endpoint(V4), endpoint(EVIL));
    // No SDP on either leg yet: not even the host that will be the peer is accepted.
    a.send_to(&rtp(0, 1, 0, 1, b"early"), la.rtp).expect("send");
    spray(&evil, &s, 5);
    assert!(wait_until(Duration::from_secs(2), || foreign(&relay) == 21));
    assert!(!s.stats(Leg::A).latched && !s.stats(Leg::B).latched);
    // A's SDP known, B still ringing (no SDP): the attacker sprays both legs.
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    relay.sync(Duration::from_secs(2));
    spray(&evil, &s, 5);
    b.send_to(&rtp(0, 1, 0, 2, b"early b"), lb.rtp)
        .expect("send");
    assert!(wait_until(Duration::from_secs(2), || foreign(&relay) == 42));
    assert!(!s.stats(Leg::A).latched && !s.stats(Leg::B).latched);
    // B answers: both phones talk, the attacker gets nothing and never latches.
    s.set_remote(Leg::B, remote(&b)).expect("remote b");
    relay.sync(Duration::from_secs(2));
    spray(&evil, &s, 5);
    assert_forwards(&a, la.rtp, &b);
    assert_forwards(&b, lb.rtp, &a);
    spray(&evil, &s, 5);
    assert_forwards(&a, la.rtp, &b);
    assert_forwards(&b, lb.rtp, &a);
    expect_silence(&evil, Duration::from_millis(100));
    assert!(wait_until(Duration::from_secs(2), || foreign(&relay) == 82));
    assert_eq!(
        s.stats(Leg::A).ssrc,
        0x600d,
        "no injected SSRC in the stats"
    );
}

#[test]
fn signalling_ip_is_accepted_besides_the_sdp_ip() {
    let (relay, _ev) = relay(24100);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    // A's SDP names 127.0.0.2, its SIP comes from 127.0.0.3, and its media really comes from
    // 127.0.0.3 (a device whose media address differs from what its SDP says).
    let (a_sdp, a_real, b, evil) = (
        endpoint("127.0.0.2"),
        endpoint("127.0.0.3"),
        endpoint(V4),
        endpoint(EVIL),
    );
    s.set_remote(Leg::A, remote(&a_sdp)).expect("remote a");
    s.set_remote(Leg::B, remote(&b)).expect("remote b");
    relay.sync(Duration::from_secs(2));
    // Without the signalling IP, 127.0.0.3 is a stranger.
    a_real
        .send_to(&rtp(0, 1, 0, 3, b"x"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || foreign(&relay) == 1));
    // With it (same SDP: no re-latch needed), it latches, and B's media follows it.
    s.set_remote(Leg::A, remote(&a_sdp).with_signalling(ip("127.0.0.3")))
        .expect("remote a");
    relay.sync(Duration::from_secs(2));
    assert_forwards(&a_real, la.rtp, &b);
    assert_forwards(&b, lb.rtp, &a_real);
    spray(&evil, &s, 3);
    expect_silence(&evil, Duration::from_millis(50));
    expect_silence(&a_sdp, Duration::from_millis(10));
    assert!(wait_until(Duration::from_secs(1), || foreign(&relay) == 13));
}

#[test]
fn holds_keep_the_rule() {
    let (relay, _ev) = relay(24200);
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b, evil) = (endpoint(V4), endpoint("127.0.0.7"), endpoint(EVIL));
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    s.set_remote(Leg::B, remote(&b)).expect("remote b");
    relay.sync(Duration::from_secs(2));
    assert_forwards(&a, la.rtp, &b);
    // sendonly hold: same addresses, hold timeout.
    s.set_hold(Leg::A, true).expect("hold");
    s.set_hold(Leg::B, true).expect("hold");
    relay.sync(Duration::from_secs(2));
    spray(&evil, &s, 4);
    assert_forwards(&a, la.rtp, &b);
    // c=0.0.0.0 hold of B: nothing goes to B, B's own IP still counts as B, strangers do not.
    s.set_remote(Leg::B, RemoteMedia::new("0.0.0.0:9".parse().expect("zero")))
        .expect("zero hold");
    relay.sync(Duration::from_secs(2));
    spray(&evil, &s, 4);
    let b2 = endpoint("127.0.0.7");
    assert_forwards(&b2, lb.rtp, &a); // music on hold from B's host, another port
    a.send_to(&rtp(0, 9, 0, 1, b"to held b"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    expect_silence(&evil, Duration::from_millis(10));
    // Off hold.
    s.set_remote(Leg::B, remote(&b)).expect("resume");
    s.set_hold(Leg::A, false).expect("resume");
    s.set_hold(Leg::B, false).expect("resume");
    relay.sync(Duration::from_secs(2));
    spray(&evil, &s, 4);
    assert_forwards(&a, la.rtp, &b);
    assert_forwards(&b, lb.rtp, &a);
    expect_silence(&evil, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || foreign(&relay) == 48));
}

#[test]
fn only_a_new_sdp_moves_a_leg_to_another_ip() {
    let (relay, _ev) = relay_with(24300, 20, |c| {
        c.latch = LatchPolicy {
            relatch_after_silence: Some(Duration::from_millis(100)),
            ..LatchPolicy::default()
        }
    });
    let s = relay.allocate(Family::V4, Family::V4).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b, evil) = (endpoint(V4), endpoint("127.0.0.8"), endpoint(EVIL));
    s.set_remote(Leg::A, remote(&a)).expect("remote a");
    s.set_remote(Leg::B, remote(&b)).expect("remote b");
    relay.sync(Duration::from_secs(2));
    assert_forwards(&a, la.rtp, &b);
    // A falls silent: re-latching after silence still only takes A's IP.
    std::thread::sleep(Duration::from_millis(150));
    evil.send_to(&rtp(0, 1, 0, 0xbad, b"evil"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    let a_moved_port = endpoint(V4);
    assert_forwards(&a_moved_port, la.rtp, &b);
    assert_forwards(&b, lb.rtp, &a_moved_port);
    // A re-INVITE moves A to 127.0.0.9: the old IP is a stranger from now on.
    let a_new = endpoint("127.0.0.9");
    s.set_remote(Leg::A, remote(&a_new)).expect("re-invite");
    relay.sync(Duration::from_secs(2));
    a.send_to(&rtp(0, 2, 0, 1, b"old ip"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert_forwards(&b, lb.rtp, &a_new);
    assert_forwards(&a_new, la.rtp, &b);
    std::thread::sleep(Duration::from_millis(150));
    a.send_to(&rtp(0, 3, 0, 1, b"old ip"), la.rtp)
        .expect("send");
    expect_silence(&b, Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(1), || foreign(&relay) == 3));
}

#[test]
fn port_pairs_are_random() {
    if crate::LAYOUT != podpbx_media::PortLayout::PerCall {
        return; // one shared pair per family: nothing to draw
    }
    let (relay, _ev) = relay_with(24400, 200, |_| {});
    let sessions: Vec<Session> = (0..30)
        .map(|_| relay.allocate(Family::V4, Family::V4).expect("allocate"))
        .collect();
    let ports: Vec<u16> = sessions
        .iter()
        .flat_map(|s| [s.local(Leg::A).rtp.port(), s.local(Leg::B).rtp.port()])
        .collect();
    assert!(ports
        .iter()
        .all(|p| p % 2 == 0 && (24400..24800).contains(p)));
    let mut sorted = ports.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len(), "no pair handed out twice");
    assert_ne!(ports, sorted, "handed out in order: {ports:?}");
    let strides: std::collections::HashSet<i32> = ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    assert!(strides.len() > 20, "predictable: {ports:?}");
}
