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
        s.set_remote(Leg::A, RemoteMedia::new(addr(&a)))
            .expect("remote a");
        s.set_remote(Leg::B, RemoteMedia::new(addr(&b)))
            .expect("remote b");
        assert!(relay.sync(Duration::from_secs(5)));
        let (la, lb) = (s.local(Leg::A), s.local(Leg::B));
        for (from, to, sink, n) in [(&a, la.rtp, &b, 0u16), (&b, lb.rtp, &a, 1)] {
            let p = rtp(0, 100 + n, 160, 7 + i as u32, &[n as u8; 160]);
            from.send_to(&p, to).expect("send");
            let (got, _) = recv(sink).expect("forwarded after the shrink");
            assert_eq!(got, p);
        }
    }
}
