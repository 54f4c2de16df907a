//! SRTP terminated per leg by the relay (loopback), every leg on ports of its own: see `cases/srtp.rs`.

mod common;

use podpbx_media::{Events, PortLayout, Relay};

/// The layout every test of this binary runs in.
pub const LAYOUT: PortLayout = PortLayout::PerCall;

pub fn relay(base: u16) -> (Relay, Events) {
    common::relay_in(LAYOUT, base, 20, |_| {})
}

#[path = "cases/srtp.rs"]
mod cases;
