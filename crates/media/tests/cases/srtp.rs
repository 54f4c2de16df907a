// SRTP terminated per leg by the relay (loopback only): an SRTP peer meets a plain one and the
// reverse, both legs SRTP with different keys, SRTCP, and bad packets (corrupted, replayed,
// plain RTP on an SRTP leg) dropped and counted without latching or reaching the other side.
// The test peers use the crate's SRTP contexts, which match libsrtp's reference vectors
// (unit tests) and baresip (black-box tests).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::common::*;
use crate::relay;
use podpbx_media::srtp::{Context, MasterKey, Suite};
use podpbx_media::{generate_key, Family, Leg, RemoteMedia, SrtpKeys};

const SUITE: Suite = Suite::AesCm128HmacSha1_80;

fn connect(relay: &podpbx_media::Relay, s: &podpbx_media::Session, a: &UdpSocket, b: &UdpSocket) {
    s.set_remote(Leg::A, RemoteMedia::new(addr(a))).unwrap();
    s.set_remote(Leg::B, RemoteMedia::new(addr(b))).unwrap();
    assert!(relay.sync(Duration::from_secs(5)));
}

/// A peer's view of its SRTP leg: it protects with its own key and unprotects with ours.
struct Peer {
    tx: Context,
    rx: Context,
}

fn srtp_leg(suite: Suite) -> (SrtpKeys, Peer) {
    let (peer_key, our_key): (MasterKey, MasterKey) =
        (generate_key().unwrap(), generate_key().unwrap());
    assert_ne!(peer_key, our_key, "fresh random keys");
    (
        SrtpKeys {
            suite,
            remote: peer_key.clone(),
            local: our_key.clone(),
        },
        Peer {
            tx: Context::new(suite, &peer_key),
            rx: Context::new(suite, &our_key),
        },
    )
}

fn seal(ctx: &mut Context, p: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; p.len() + 14];
    buf[..p.len()].copy_from_slice(p);
    let n = ctx.protect_rtp(&mut buf, p.len()).unwrap();
    buf.truncate(n);
    buf
}

fn seal_rtcp(ctx: &mut Context, p: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; p.len() + 14];
    buf[..p.len()].copy_from_slice(p);
    let n = ctx.protect_rtcp(&mut buf, p.len()).unwrap();
    buf.truncate(n);
    buf
}

fn open(ctx: &mut Context, mut p: Vec<u8>) -> Vec<u8> {
    let n = ctx
        .unprotect_rtp(&mut p)
        .expect("authentic SRTP from the relay");
    p.truncate(n);
    p
}

fn recv_from(s: &UdpSocket, want: SocketAddr) -> Vec<u8> {
    let (p, src) = recv(s).expect("a forwarded packet");
    assert_eq!(src, want, "from the relay's port on that leg");
    p
}

#[test]
fn srtp_trunk_leg_meets_a_plain_phone_and_back() {
    let (relay, _ev) = relay(26400);
    let s = relay.allocate(Family::V6, Family::V4).unwrap();
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V6), endpoint(V4));
    connect(&relay, &s, &a, &b);
    let (keys, mut trunk) = srtp_leg(SUITE);
    s.set_srtp(Leg::A, Some(&keys)).unwrap();
    assert!(relay.sync(Duration::from_secs(5)));

    for i in 0..40u16 {
        // Trunk (SRTP) -> phone (plain).
        let p = rtp(0, 100 + i, 160 * i as u32, 0xa1, &[i as u8; 160]);
        a.send_to(&seal(&mut trunk.tx, &p), la.rtp).unwrap();
        assert_eq!(recv_from(&b, lb.rtp), p, "decrypted for the plain phone");
        // Phone (plain) -> trunk (SRTP, our key).
        let q = rtp(8, 500 + i, 160 * i as u32, 0xb2, &[0x55 ^ i as u8; 160]);
        b.send_to(&q, lb.rtp).unwrap();
        let got = recv_from(&a, la.rtp);
        assert_eq!(got.len(), q.len() + 10, "80-bit tag appended");
        assert_ne!(got[12..172], q[12..], "encrypted towards the trunk");
        assert_eq!(open(&mut trunk.rx, got), q);
    }

    // SRTCP from the trunk reaches the phone as RTCP, and the phone's RTCP is protected.
    let (a_rtcp, b_rtcp) = (endpoint(V6), endpoint(V4));
    s.set_remote(
        Leg::A,
        RemoteMedia {
            rtcp: Some(addr(&a_rtcp)),
            ..RemoteMedia::new(addr(&a))
        },
    )
    .unwrap();
    s.set_remote(
        Leg::B,
        RemoteMedia {
            rtcp: Some(addr(&b_rtcp)),
            ..RemoteMedia::new(addr(&b))
        },
    )
    .unwrap();
    assert!(relay.sync(Duration::from_secs(5)));
    let rr = rtcp_rr(0xa1);
    a_rtcp
        .send_to(&seal_rtcp(&mut trunk.tx, &rr), la.rtcp)
        .unwrap();
    assert_eq!(recv_from(&b_rtcp, lb.rtcp), rr);
    let rr_b = rtcp_rr(0xb2);
    b_rtcp.send_to(&rr_b, lb.rtcp).unwrap();
    let mut got = recv_from(&a_rtcp, la.rtcp);
    assert_eq!(got.len(), rr_b.len() + 14, "E flag + index + 80-bit tag");
    let n = trunk
        .rx
        .unprotect_rtcp(&mut got)
        .expect("SRTCP with our key");
    assert_eq!(got[..n], rr_b[..]);
    assert_eq!(s.stats(Leg::A).drops.srtp, 0);
}

#[test]
fn both_legs_srtp_with_their_own_keys() {
    let (relay, _ev) = relay(26500);
    let s = relay.allocate(Family::V4, Family::V4).unwrap();
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V4));
    connect(&relay, &s, &a, &b);
    let (ka, mut pa) = srtp_leg(Suite::AesCm128HmacSha1_80);
    let (kb, mut pb) = srtp_leg(Suite::AesCm128HmacSha1_32);
    s.set_srtp(Leg::A, Some(&ka)).unwrap();
    s.set_srtp(Leg::B, Some(&kb)).unwrap();
    assert!(relay.sync(Duration::from_secs(5)));
    for i in 0..20u16 {
        let p = rtp(0, i, 0, 7, &[1; 100]);
        a.send_to(&seal(&mut pa.tx, &p), la.rtp).unwrap();
        let got = recv_from(&b, lb.rtp);
        assert_eq!(got.len(), p.len() + 4, "B's suite: 32-bit tag");
        // A's key never reaches B: B can open it only with the key we gave it.
        assert!(Context::new(Suite::AesCm128HmacSha1_32, &ka.remote)
            .unprotect_rtp(&mut got.clone())
            .is_err());
        assert_eq!(open(&mut pb.rx, got), p);
        let q = rtp(0, i, 0, 8, &[2; 100]);
        b.send_to(&seal(&mut pb.tx, &q), lb.rtp).unwrap();
        assert_eq!(open(&mut pa.rx, recv_from(&a, la.rtp)), q);
    }
    // Back to plain on B (e.g. a re-INVITE without crypto): B's side is clear again.
    s.set_srtp(Leg::B, None).unwrap();
    assert!(relay.sync(Duration::from_secs(5)));
    let p = rtp(0, 100, 0, 7, &[3; 50]);
    a.send_to(&seal(&mut pa.tx, &p), la.rtp).unwrap();
    assert_eq!(recv_from(&b, lb.rtp), p);
}

#[test]
fn corrupted_replayed_and_plain_packets_on_an_srtp_leg_are_dropped_and_counted() {
    let (relay, _ev) = relay(26600);
    let s = relay.allocate(Family::V4, Family::V4).unwrap();
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, b) = (endpoint(V4), endpoint(V4));
    // A's peer is known (SDP) but has sent nothing: nothing may latch A before a packet
    // authenticates, not even from A's own IP (the attacker below sends from it, as a
    // spoofer would).
    s.set_remote(Leg::A, RemoteMedia::new(addr(&a))).unwrap();
    s.set_remote(Leg::B, RemoteMedia::new(addr(&b))).unwrap();
    let (keys, mut trunk) = srtp_leg(SUITE);
    s.set_srtp(Leg::A, Some(&keys)).unwrap();
    assert!(relay.sync(Duration::from_secs(5)));

    // An attacker who does not know the key: plain RTP, garbage tags, a flipped payload bit.
    let attacker = endpoint(V4);
    let forged = rtp(0, 1, 0, 0x666, &[0; 170]);
    attacker.send_to(&forged, la.rtp).unwrap();
    let good = seal(&mut trunk.tx, &rtp(0, 2, 0, 0xa1, &[9; 160]));
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    attacker.send_to(&flipped, la.rtp).unwrap();
    let mut short = good.clone();
    short.truncate(14);
    attacker.send_to(&short, la.rtp).unwrap();
    expect_silence(&b, Duration::from_millis(300));
    assert!(wait_until(Duration::from_secs(2), || s
        .stats(Leg::A)
        .drops
        .srtp
        == 3));
    assert!(!s.stats(Leg::A).latched, "a forged packet never latches");
    assert_eq!(s.stats(Leg::A).rtp_packets, 0);

    // The genuine packet passes and latches the trunk; its replay is dropped.
    a.send_to(&good, la.rtp).unwrap();
    assert_eq!(recv_from(&b, lb.rtp), rtp(0, 2, 0, 0xa1, &[9; 160]));
    a.send_to(&good, la.rtp).unwrap();
    expect_silence(&b, Duration::from_millis(300));
    assert!(wait_until(Duration::from_secs(2), || s
        .stats(Leg::A)
        .drops
        .srtp
        == 4));
    let st = s.stats(Leg::A);
    assert!(st.latched);
    assert_eq!((st.rtp_packets, st.forwarded_packets), (1, 1));
    // Totals reach the process-wide counters at release.
    drop(s);
    assert!(relay.sync(Duration::from_secs(5)));
    assert_eq!(relay.totals().drops.srtp, 4);
}
