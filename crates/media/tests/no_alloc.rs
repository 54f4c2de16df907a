//! The forwarding path allocates nothing: a counting global allocator sees
//! zero allocations, on any thread, while a burst of RTP and RTCP (plus
//! dropped injection attempts, malformed packets, and RFC 4733 telephone-event
//! packets whose payload the worker reads) goes through the relay.
//! Alone in its own test binary so that no other test allocates meanwhile.

mod common;

use std::time::Duration;

use common::counting::{self, drain, Counting};
use common::*;
use podpbx_media::{Family, Leg, PortLayout, RemoteMedia};

#[global_allocator]
static GLOBAL: Counting = Counting;

const BURST: usize = 2000;

#[test]
fn forwarding_a_burst_allocates_nothing() {
    // Both layouts, one after the other: nothing else runs in this binary meanwhile.
    burst(PortLayout::PerCall, 23000);
    burst(SHARED, 23100);
}

fn burst(layout: PortLayout, base: u16) {
    let (relay, ev) = relay_in(layout, base, 20, |_| {});
    let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
    let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
    let (a, a_c, b, b_c, evil) = (
        endpoint(V4),
        endpoint(V4),
        endpoint(V6),
        endpoint(V6),
        endpoint(V4),
    );
    for sock in [&a, &a_c, &b, &b_c] {
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    s.set_remote(
        Leg::A,
        RemoteMedia {
            rtcp: Some(addr(&a_c)),
            telephone_event: Some((101, 8000)),
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
    assert!(relay.sync(Duration::from_secs(5)));

    // Prepare every packet up front (allocation happens here, not later).
    let pkts_a: Vec<Vec<u8>> = (0..BURST)
        .map(|i| rtp(0, i as u16, 160 * i as u32, 0xa, &[0x55; 160]))
        .collect();
    let pkts_b: Vec<Vec<u8>> = (0..BURST)
        .map(|i| rtp(8, i as u16, 160 * i as u32, 0xb, &[0x66; 160]))
        .collect();
    let rr_a = rtcp_rr(0xa);
    let rr_b = rtcp_rr(0xb);
    let mut crafted = rtp(0, 1, 0, 1, &[0xbe, 0xde, 0xff, 0xff, 0, 0, 0, 0]);
    crafted[0] |= 0x10;
    // RFC 4733 on A's telephone-event type: the end of digit 5 (reported once,
    // during the warm-up), its repeats and a next event's progress packets
    // (read on every packet, reported never).
    let te_end = rtp(101, 1, 8000, 0xa, &[5, 0x8a, 0x03, 0x20]);
    let te_progress = rtp(101, 2, 9600, 0xa, &[6, 0x0a, 0x00, 0xa0]);

    // Warm up: latch all four sockets (the Latched events allocate).
    a.send_to(&pkts_a[0], la.rtp).expect("send");
    b.send_to(&pkts_b[0], lb.rtp).expect("send");
    a_c.send_to(&rr_a, la.rtcp).expect("send");
    b_c.send_to(&rr_b, lb.rtcp).expect("send");
    a.send_to(&te_end, la.rtp).expect("send");
    assert_eq!(
        drain(&b, 2) + drain(&a, 1) + drain(&b_c, 1) + drain(&a_c, 1),
        5
    );
    assert!(
        matches!(
            next_non_latch(&ev, Duration::from_secs(2)),
            Some(podpbx_media::Event::Dtmf {
                digit: '5',
                duration_ms: 100,
                ..
            })
        ),
        "the warm-up event is reported"
    );
    assert!(relay.sync(Duration::from_secs(5)));
    let before_a = s.stats(Leg::A);
    let before_b = s.stats(Leg::B);

    counting::start();
    let mut received = 0;
    for chunk in 0..(BURST / 100) {
        for i in chunk * 100..(chunk + 1) * 100 {
            a.send_to(&pkts_a[i], la.rtp).expect("send");
            b.send_to(&pkts_b[i], lb.rtp).expect("send");
        }
        a_c.send_to(&rr_a, la.rtcp).expect("send");
        b_c.send_to(&rr_b, lb.rtcp).expect("send");
        evil.send_to(&pkts_a[0], la.rtp).expect("send");
        a.send_to(&crafted, la.rtp).expect("send");
        a.send_to(&te_progress, la.rtp).expect("send");
        a.send_to(&te_end, la.rtp).expect("send");
        received += drain(&b, 102) + drain(&a, 100) + drain(&b_c, 1) + drain(&a_c, 1);
    }
    let want = (BURST / 100) as u64;
    wait_until(Duration::from_secs(2), || {
        relay.totals().drops.foreign_source == want && s.stats(Leg::A).drops.malformed == want
    });
    let after_a = s.stats(Leg::A);
    let after_b = s.stats(Leg::B);
    let allocs = counting::stop();

    assert_eq!(received, 2 * BURST + 4 * (BURST / 100));
    assert_eq!(
        after_a.rtp_packets - before_a.rtp_packets,
        (BURST + 2 * (BURST / 100)) as u64
    );
    assert_eq!(after_b.rtp_packets - before_b.rtp_packets, BURST as u64);
    // The stranger's datagrams: on leg A with own ports; with shared ports no leg is theirs.
    assert_eq!(relay.totals().drops.foreign_source, want, "{layout:?}");
    assert_eq!(after_a.drops.malformed, (BURST / 100) as u64);
    assert_eq!(allocs, 0, "allocations while forwarding ({layout:?})");
    // Latched events of the warm-up may still be queued; no DTMF event is.
    for _ in 0..8 {
        let e = ev.try_recv();
        assert!(
            !matches!(e, Some(podpbx_media::Event::Dtmf { .. })),
            "repeated end packets and progress packets raise no event: {e:?}"
        );
    }
}
