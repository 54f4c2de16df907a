//! Helpers shared by the relay integration tests (loopback only).
#![allow(dead_code)]

pub mod counting;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use podpbx_media::{Event, Events, FamilyConfig, PortLayout, Relay, RelayConfig, RemoteMedia};

pub const V4: &str = "127.0.0.1";
pub const V6: &str = "::1";

/// A relay on 127.0.0.1 and ::1 with `pairs` port pairs from `base` on both, in `layout`.
pub fn relay_in(
    layout: PortLayout,
    base: u16,
    pairs: u16,
    f: impl FnOnce(&mut RelayConfig),
) -> (Relay, Events) {
    let mut cfg = RelayConfig {
        layout,
        ipv4: Some(FamilyConfig {
            addr: V4.parse().expect("v4"),
            ports: base..=base + 2 * pairs - 1,
        }),
        ipv6: Some(FamilyConfig {
            addr: V6.parse().expect("v6"),
            ports: base..=base + 2 * pairs - 1,
        }),
        ..RelayConfig::default()
    };
    f(&mut cfg);
    Relay::start(cfg).expect("relay starts")
}

/// Two port pairs per family and worker shared by every leg (a session's
/// legs of one family on different pairs).
pub const SHARED: PortLayout = PortLayout::Shared { pairs: 2 };

/// Set both legs' remotes and wait until the worker has applied them.
pub fn connect(relay: &Relay, s: &podpbx_media::Session, a: RemoteMedia, b: RemoteMedia) {
    s.set_remote(podpbx_media::Leg::A, a).expect("remote a");
    s.set_remote(podpbx_media::Leg::B, b).expect("remote b");
    assert!(relay.sync(Duration::from_secs(5)));
}

/// A test endpoint socket on loopback.
pub fn endpoint(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip.parse().expect("ip"), 0)).expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

pub fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local addr")
}

pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An RTCP receiver report (no report blocks) followed by an SDES-less BYE.
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut v = vec![0x80, 201, 0, 1];
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(&[0x81, 203, 0, 1]);
    v.extend_from_slice(&ssrc.to_be_bytes());
    v
}

/// Receive one datagram or None after the socket's timeout.
pub fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// Receive with a short timeout, expecting nothing.
pub fn expect_silence(s: &UdpSocket, wait: Duration) {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let got = recv(s);
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    assert!(got.is_none(), "unexpected datagram {got:?}");
}

/// Poll `f` until true or `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// Next event that is not a `Latched` event.
pub fn next_non_latch(ev: &Events, timeout: Duration) -> Option<Event> {
    let t0 = Instant::now();
    while let Some(left) = timeout.checked_sub(t0.elapsed()) {
        match ev.recv_timeout(left) {
            Some(Event::Latched { .. }) => continue,
            other => return other,
        }
    }
    None
}
