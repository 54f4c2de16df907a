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
