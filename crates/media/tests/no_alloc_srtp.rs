//! The SRTP path of the relay allocates nothing either: a counting global allocator sees zero
//! allocations while SRTP from one leg is decrypted for a plain leg, that leg's RTP is
//! encrypted back, SRTCP both ways, and corrupted packets are dropped.
//! Alone in its own test binary so that no other test allocates meanwhile.

mod common;

use std::time::Duration;

use common::counting::{self, drain, Counting};
use common::*;
use podpbx_media::srtp::{Context, Suite};
use podpbx_media::{generate_key, Family, Leg, PortLayout, RemoteMedia, SrtpKeys};

#[global_allocator]
static GLOBAL: Counting = Counting;

const BURST: usize = 2000;

#[test]
fn srtp_burst_allocates_nothing() {
    // Both layouts, one after the other: nothing else runs in this binary meanwhile.
    burst(PortLayout::PerCall, 26700);
    burst(SHARED, 26800);
}

fn burst(layout: PortLayout, base: u16) {
    let (relay, _ev) = relay_in(layout, base, 20, |_| {});
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, a_c, b, b_c) = (endpoint(V4), endpoint(V4), endpoint(V6), endpoint(V6));
    for sock in [&a, &a_c, &b, &b_c] {
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    s.set_remote(
        Leg::A,
        RemoteMedia {
            rtcp: Some(addr(&a_c)),
            ..RemoteMedia::new(addr(&a))
        },
    )
    .expect("a");
    s.set_remote(
        Leg::B,
        RemoteMedia {
            rtcp: Some(addr(&b_c)),
            ..RemoteMedia::new(addr(&b))
        },
    )
    .expect("b");
    let keys = SrtpKeys {
        suite: Suite::AesCm128HmacSha1_80,
        remote: generate_key().expect("key"),
        local: generate_key().expect("key"),
    };
    s.set_srtp(Leg::A, Some(&keys)).expect("srtp");
    assert!(relay.sync(Duration::from_secs(5)));

    // Every packet sealed up front (the peer's side allocates here, not later).
    let mut peer = Context::new(keys.suite, &keys.remote);
    let seal = |ctx: &mut Context, p: Vec<u8>, rtcp: bool| {
        let mut buf = vec![0u8; p.len() + 14];
        buf[..p.len()].copy_from_slice(&p);
        let n = if rtcp {
            ctx.protect_rtcp(&mut buf, p.len())
        } else {
            ctx.protect_rtp(&mut buf, p.len())
        }
        .expect("seal");
        buf.truncate(n);
        buf
    };
    let pkts_a: Vec<Vec<u8>> = (0..=BURST)
        .map(|i| {
            seal(
                &mut peer,
                rtp(0, i as u16, 160 * i as u32, 0xa, &[0x55; 160]),
                false,
            )
        })
        .collect();
    let rr_a: Vec<Vec<u8>> = (0..=BURST / 100)
        .map(|_| seal(&mut peer, rtcp_rr(0xa), true))
        .collect();
    let pkts_b: Vec<Vec<u8>> = (0..=BURST)
        .map(|i| rtp(8, i as u16, 160 * i as u32, 0xb, &[0x66; 160]))
        .collect();
    let rr_b = rtcp_rr(0xb);
    let mut corrupt = pkts_a[1].clone();
    corrupt[20] ^= 0xff;

    // Warm up: latch all four sockets (the Latched events allocate).
    a.send_to(&pkts_a[0], la.rtp).expect("send");
    b.send_to(&pkts_b[0], lb.rtp).expect("send");
    a_c.send_to(&rr_a[0], la.rtcp).expect("send");
    b_c.send_to(&rr_b, lb.rtcp).expect("send");
    assert_eq!(
        drain(&b, 1) + drain(&a, 1) + drain(&b_c, 1) + drain(&a_c, 1),
        4
    );
    assert!(relay.sync(Duration::from_secs(5)));

    counting::start();
    let mut received = 0;
    for chunk in 0..(BURST / 100) {
        for i in chunk * 100 + 1..=(chunk + 1) * 100 {
            a.send_to(&pkts_a[i], la.rtp).expect("send");
            b.send_to(&pkts_b[i], lb.rtp).expect("send");
        }
        a_c.send_to(&rr_a[chunk + 1], la.rtcp).expect("send");
        b_c.send_to(&rr_b, lb.rtcp).expect("send");
        a.send_to(&corrupt, la.rtp).expect("send");
        received += drain(&b, 100) + drain(&a, 100) + drain(&b_c, 1) + drain(&a_c, 1);
    }
    let want = (BURST / 100) as u64;
    wait_until(Duration::from_secs(2), || {
        s.stats(Leg::A).drops.srtp == want
    });
    let after_a = s.stats(Leg::A);
    let allocs = counting::stop();

    assert_eq!(received, 2 * BURST + 2 * (BURST / 100));
    assert_eq!(after_a.drops.srtp, want, "corrupted packets counted");
    assert_eq!(allocs, 0, "allocations while forwarding SRTP");
}
