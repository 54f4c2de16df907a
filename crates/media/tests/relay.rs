//! Relay integration tests on loopback (127.0.0.1 and ::1 only), every leg on ports of its own.

mod common;

use podpbx_media::{Events, PortLayout, Relay, RelayConfig};

/// The layout every test of this binary runs in.
pub const LAYOUT: PortLayout = PortLayout::PerCall;

pub fn relay_with(base: u16, pairs: u16, f: impl FnOnce(&mut RelayConfig)) -> (Relay, Events) {
    common::relay_in(LAYOUT, base, pairs, f)
}

pub fn relay(base: u16) -> (Relay, Events) {
    relay_with(base, 20, |_| {})
}

#[path = "cases/relay.rs"]
mod cases;
