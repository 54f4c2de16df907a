//! The relay integration tests again, every leg on the worker's shared port pair.

mod common;

use podpbx_media::{Events, PortLayout, Relay, RelayConfig};

/// The layout every test of this binary runs in.
pub const LAYOUT: PortLayout = common::SHARED;

pub fn relay_with(base: u16, pairs: u16, f: impl FnOnce(&mut RelayConfig)) -> (Relay, Events) {
    common::relay_in(LAYOUT, base, pairs, f)
}

pub fn relay(base: u16) -> (Relay, Events) {
    relay_with(base, 20, |_| {})
}

#[path = "cases/relay.rs"]
mod cases;

/// A burst of sessions grows the worker's session table; a few seconds after they are gone it
/// gives the room back (issue #14: memory after a load), and the sessions that stayed, and new
/// ones, relay as before.
#[test]
fn the_session_table_gives_back_the_room_a_burst_left() {
    use common::*;
    use podpbx_media::{Family, Leg, RemoteMedia, Session};
    use std::time::{Duration, Instant};

    let (relay, _ev) = relay_with(23800, 4, |c| c.max_sessions = 5000);
    let mut burst: Vec<Session> = (0..3000)
        .map(|_| relay.allocate(Family::V4, Family::V6).expect("allocate"))
        .collect();
    assert!(relay.sync(Duration::from_secs(5)));
    let peak = relay.totals().session_slots;
    assert!(peak >= 3000, "room for {peak} sessions");
    // The first ten stay (the lowest slots), the rest of the burst ends.
    let rest = burst.split_off(10);
    drop(rest);
    assert!(relay.sync(Duration::from_secs(5)));
    assert_eq!(relay.active_sessions(), 10);
    let deadline = Instant::now() + Duration::from_secs(6);
    while relay.totals().session_slots > 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let room = relay.totals().session_slots;
    assert!(
        room <= 1024,
        "room for {room} sessions left of {peak}, 10 in use"
    );
    // A session of the burst and a new one both relay, in both directions.
    let new = relay.allocate(Family::V4, Family::V6).expect("allocate");
    for (i, s) in [&burst[3], &new].into_iter().enumerate() {
        let (a, b) = (endpoint(V4), endpoint(V6));
        connect(
            &relay,
            s,
            RemoteMedia::new(addr(&a)),
            RemoteMedia::new(addr(&b)),
        );
        let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
        for (from, to, sink, n) in [(&a, la.rtp, &b, 0u16), (&b, lb.rtp, &a, 1)] {
            let p = rtp(0, 100 + n, 160, 7 + i as u32, &[n as u8; 160]);
            from.send_to(&p, to).expect("send");
            let (got, _) = recv(sink).expect("forwarded after the shrink");
            assert_eq!(got, p);
        }
    }
}

/// A new peer's first datagrams often arrive together, and the worker looks up the sources of
/// a whole batch before it forwards any of it (so that the cache misses overlap). The datagram
/// that latches a leg changes the table those lookups read: the datagrams behind it in the
/// batch must be looked up again, not left with the "no leg" found before the latch (they
/// would be dropped as foreign, the peer's first audio lost). Each session's peer sends its
/// first 16 datagrams in one `sendmmsg`, so that they wait in the shared socket together; every
/// one of them must arrive.
#[test]
fn a_new_peers_first_burst_is_forwarded_whole() {
    use common::*;
    use podpbx_media::{Family, Leg, RemoteMedia};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    const SESSIONS: usize = 30;
    const BURST: usize = 16;
    let (relay, _ev) = relay_with(25000, 8, |_| {});
    let mut forwarded = 0;
    for k in 0..SESSIONS {
        let s = relay.allocate(Family::V4, Family::V6).expect("allocate");
        let (peer, sink) = (endpoint(V4), endpoint(V6));
        connect(
            &relay,
            &s,
            RemoteMedia::new(addr(&peer)),
            RemoteMedia::new(addr(&sink)),
        );
        peer.connect(s.local(Leg::A).rtp).expect("connect");
        let pkts: Vec<Vec<u8>> = (0..BURST)
            .map(|i| {
                rtp(
                    0,
                    i as u16,
                    160 * i as u32,
                    0x5eed_0000 + k as u32,
                    &[7; 160],
                )
            })
            .collect();
        let mut iovs: Vec<libc::iovec> = pkts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is valid; the iovec outlives the call.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `msgs` points at live iovecs and buffers for the length given.
        let sent = unsafe { libc::sendmmsg(peer.as_raw_fd(), msgs.as_mut_ptr(), BURST as u32, 0) };
        assert_eq!(sent, BURST as i32, "the burst leaves in one call");
        sink.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        forwarded += (0..BURST).take_while(|_| recv(&sink).is_some()).count();
    }
    let t = relay.totals();
    assert_eq!(forwarded, SESSIONS * BURST, "{t:?}");
    assert_eq!(t.drops.total(), 0, "{t:?}");
}
