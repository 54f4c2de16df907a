//! The e2e home topology (shared by `tests/e2e.rs` and `tests/rtp_bleed.rs`): five network
//! namespaces standing in for the home network, addresses from the documentation prefixes only,
//! nothing leaves the namespaces. See the picture at the top of `tests/e2e.rs`.
//!
//! [`Topology::attacker`] adds a sixth namespace on the internet side of the router: a host that
//! is not part of any call and knows only the pod's pinned addresses.

#![allow(dead_code)]

use super::common::baresip::in_netns;
use super::common::netns::*;
use std::time::{Duration, Instant};

/// The pod's relay port range in the tests on this topology (their configs set it; the checks
/// of where media flowed and of the RTP bleed probes go by it).
pub const MEDIA_MIN: u16 = 20000;
pub const MEDIA_MAX: u16 = 20099;

/// Whether a namespace test with baresip phones runs: false (said on stderr) when
/// `PODPBX_SKIP_E2E` is set; panics when it cannot run (not root, baresip missing).
pub fn phones_test_runs() -> bool {
    if std::env::var_os("PODPBX_SKIP_E2E").is_some() {
        eprintln!("PODPBX_SKIP_E2E set: skipping");
        return false;
    }
    assert!(
        is_root(),
        "this test builds network namespaces and must run as root (CI does)"
    );
    if let Err(e) = super::common::baresip::available() {
        panic!("{e} (or set PODPBX_SKIP_E2E=1)");
    }
    true
}

/// The last `n` lines of a log.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 100 ms until it holds or `limit` passed; its last answer.
pub fn poll_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

pub const PINNED6: &str = "2001:db8:1234:10::5060";
pub const PINNED4: &str = "198.51.100.10";
pub const TRANSIT6_POD: &str = "2001:db8:100::2";
pub const TRANSIT6_RTR: &str = "2001:db8:100::1";
pub const TRANSIT4_POD: &str = "203.0.113.2";
pub const TRANSIT4_RTR: &str = "203.0.113.1";
pub const LAN6_RTR: &str = "2001:db8:1234:1::1";
pub const PHONE101: &str = "2001:db8:1234:1::101";
pub const PHONE102: &str = "2001:db8:1234:1::102";
pub const LAN4_RTR: &str = "198.51.100.33";
pub const DOOR: &str = "198.51.100.50";
pub const PROV_RTR: &str = "2001:db8:ffff::1";
pub const PSTN: &str = "2001:db8:ffff::2";
pub const KAM: &str = "2001:db8:ffff:5::60";
/// The attacker's addresses (internet side of the router, outside every network podpbx trusts).
pub const ATTACKER6: &str = "2001:db8:eeee::66";
pub const ATTACKER4: &str = "203.0.113.66";
const ATTACKER6_RTR: &str = "2001:db8:eeee::1";
const ATTACKER4_RTR: &str = "203.0.113.65";

/// The namespaces, deleted on drop (after everything running in them was stopped: the test
/// declares this first, so it is dropped last).
pub struct Topology {
    pub pod: Netns,
    pub router: Netns,
    /// The IPv6 LAN's switch (a bridge); the phones are hosts of their own on it.
    pub lan6: Netns,
    /// Phone 101's host (interface `ph1`).
    pub ph1: Netns,
    /// Phone 102's host (interface `ph2`).
    pub ph2: Netns,
    pub lan4: Netns,
    pub provider: Netns,
}

/// Sets a sysctl of `ns` (its /proc/sys/net is the namespace's own), without procps.
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(&ns.name, || std::fs::write(&path, value))
        .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", ns.name));
}

impl Topology {
    pub fn build() -> Topology {
        let t = Topology {
            pod: Netns::new("e2e-pod"),
            router: Netns::new("e2e-rtr"),
            lan6: Netns::new("e2e-lan6"),
            ph1: Netns::new("e2e-ph1"),
            ph2: Netns::new("e2e-ph2"),
            lan4: Netns::new("e2e-lan4"),
            provider: Netns::new("e2e-prov"),
        };
        let (pod, rtr, lan6, lan4, prov) = (
            t.pod.name.as_str(),
            t.router.name.as_str(),
            t.lan6.name.as_str(),
            t.lan4.name.as_str(),
            t.provider.name.as_str(),
        );
        veth(&t.pod, "pod0", &t.router, "r-pod");
        veth(&t.lan6, "lan6up", &t.router, "r-lan6");
        veth(&t.lan4, "lan4up", &t.router, "r-lan4");
        veth(&t.provider, "prov0", &t.router, "r-prov");

        // The pod: the pinned /128 and /32 on lo (as Calico assigns them), a transit address
        // per family on its link to the router, default routes through the router.
        ip_in(
            pod,
            &[
                "addr",
                "add",
                &format!("{PINNED6}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        );
        ip_in(pod, &["addr", "add", &format!("{PINNED4}/32"), "dev", "lo"]);
        ip_in(
            pod,
            &[
                "addr",
                "add",
                &format!("{TRANSIT6_POD}/64"),
                "dev",
                "pod0",
                "nodad",
            ],
        );
        ip_in(
            pod,
            &["addr", "add", &format!("{TRANSIT4_POD}/30"), "dev", "pod0"],
        );
        ip_in(pod, &["-6", "route", "add", "default", "via", TRANSIT6_RTR]);
        ip_in(pod, &["route", "add", "default", "via", TRANSIT4_RTR]);

        // The router: one leg per network, forwarding on, and the routes the home router learns
        // by BGP: the pinned /128 and /32 via the pod's transit addresses.
        ip_in(
            rtr,
            &[
                "addr",
                "add",
                &format!("{TRANSIT6_RTR}/64"),
                "dev",
                "r-pod",
                "nodad",
            ],
        );
        ip_in(
            rtr,
            &["addr", "add", &format!("{TRANSIT4_RTR}/30"), "dev", "r-pod"],
        );
        ip_in(
            rtr,
            &[
                "addr",
                "add",
                &format!("{LAN6_RTR}/64"),
                "dev",
                "r-lan6",
                "nodad",
            ],
        );
        ip_in(
            rtr,
            &["addr", "add", &format!("{LAN4_RTR}/27"), "dev", "r-lan4"],
        );
        ip_in(
            rtr,
            &[
                "addr",
                "add",
                &format!("{PROV_RTR}/64"),
                "dev",
                "r-prov",
                "nodad",
            ],
        );
        ip_in(
            rtr,
            &[
                "-6",
                "route",
                "add",
                &format!("{PINNED6}/128"),
                "via",
                TRANSIT6_POD,
            ],
        );
        ip_in(
            rtr,
            &[
                "route",
                "add",
                &format!("{PINNED4}/32"),
                "via",
                TRANSIT4_POD,
            ],
        );
        ip_in(
            rtr,
            &["-6", "route", "add", &format!("{KAM}/128"), "via", PSTN],
        );
        sysctl(&t.router, "net.ipv6.conf.all.forwarding", "1");
        sysctl(&t.router, "net.ipv4.ip_forward", "1");

        // The IPv6 LAN: a bridge (the switch) with the uplink and one port per phone; each phone
        // is a host (namespace) of its own, so everything it sends, SIP and RTP (baresip binds
        // RTP to the wildcard address), leaves from its one address, as on a real LAN.
        ip_in(lan6, &["link", "add", "br0", "type", "bridge"]);
        ip_in(lan6, &["link", "set", "br0", "up"]);
        ip_in(lan6, &["link", "set", "lan6up", "master", "br0"]);
        for (phone, iface, addr) in [(&t.ph1, "ph1", PHONE101), (&t.ph2, "ph2", PHONE102)] {
            let port = format!("{iface}-br");
            veth(phone, iface, &t.lan6, &port);
            ip_in(lan6, &["link", "set", &port, "master", "br0"]);
            ip_in(
                &phone.name,
                &["addr", "add", &format!("{addr}/64"), "dev", iface, "nodad"],
            );
            ip_in(
                &phone.name,
                &["-6", "route", "add", "default", "via", LAN6_RTR],
            );
        }

        // The IPv4 LAN with the doorbell.
        ip_in(
            lan4,
            &["addr", "add", &format!("{DOOR}/27"), "dev", "lan4up"],
        );
        ip_in(lan4, &["route", "add", "default", "via", LAN4_RTR]);

        // The provider: the PSTN UA on the link, Kamailio on its own address behind it.
        ip_in(
            prov,
            &[
                "addr",
                "add",
                &format!("{PSTN}/64"),
                "dev",
                "prov0",
                "nodad",
            ],
        );
        ip_in(
            prov,
            &["addr", "add", &format!("{KAM}/128"), "dev", "lo", "nodad"],
        );
        ip_in(prov, &["-6", "route", "add", "default", "via", PROV_RTR]);
        t
    }
    /// The attacker: a namespace on the internet side of the router (`ATTACKER6`, `ATTACKER4`),
    /// routed to everything, trusted by nothing. Deleted on drop.
    pub fn attacker(&self) -> Netns {
        let atk = Netns::new("e2e-atk");
        veth(&atk, "atk0", &self.router, "r-atk");
        let (a, rtr) = (atk.name.as_str(), self.router.name.as_str());
        ip_in(
            rtr,
            &[
                "addr",
                "add",
                &format!("{ATTACKER6_RTR}/64"),
                "dev",
                "r-atk",
                "nodad",
            ],
        );
        ip_in(
            rtr,
            &[
                "addr",
                "add",
                &format!("{ATTACKER4_RTR}/27"),
                "dev",
                "r-atk",
            ],
        );
        ip_in(
            a,
            &[
                "addr",
                "add",
                &format!("{ATTACKER6}/64"),
                "dev",
                "atk0",
                "nodad",
            ],
        );
        ip_in(
            a,
            &["addr", "add", &format!("{ATTACKER4}/27"), "dev", "atk0"],
        );
        ip_in(a, &["-6", "route", "add", "default", "via", ATTACKER6_RTR]);
        ip_in(a, &["route", "add", "default", "via", ATTACKER4_RTR]);
        atk
    }
}
