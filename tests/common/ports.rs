//! Ports for the processes the tests start. Its own file so that a test which includes only
//! `kamailio.rs` (`trunk_kamailio`) can include this one beside it.

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// The lowest port handed out.
const LOW: u16 = 10_000;
/// podpbx's default media range starts at 20 000 (loopback instances of the tests bind there).
const HIGH: u16 = 20_000;
/// Blocks tried per call before giving up.
const TRIES: usize = 200;

/// Where the next block starts, and the end of the range (both fixed on first use).
struct Cursor {
    next: u16,
    high: u16,
}

static CURSOR: Mutex<Option<Cursor>> = Mutex::new(None);

/// The first of `n` consecutive ports (an even one), each free for UDP (and TCP if `tcp`) on
/// every address of `listen` right now; `None` when [`TRIES`] blocks in a row were taken.
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port
/// the kernel hands to `bind(0)` or to an outgoing connection in a parallel test (SIPp,
/// Kamailio, podpbx and this process all make such sockets) was taken between this check
/// and the bind of the process the port is for, and a fixed-port peer such as the provider's
/// PSTN UAS cannot move (its port is in Kamailio's config). Below that range only an explicit
/// bind takes a port, and every explicit port of these tests comes from here, each block
/// handed out once per process (tests of one binary run in parallel; binaries one after
/// another, from a start that differs per process).
pub fn free_ports(n: u16, listen: &[IpAddr], tcp: bool) -> Option<u16> {
    let block = (n + 1) & !1;
    (0..TRIES).map(|_| take(block)).find(|&port| {
        (port..port + n).all(|p| {
            listen.iter().all(|ip| {
                UdpSocket::bind((*ip, p)).is_ok() && (!tcp || TcpListener::bind((*ip, p)).is_ok())
            })
        })
    })
}

/// The next `block` ports of the range, wrapping at its end.
fn take(block: u16) -> u16 {
    let mut cursor = CURSOR.lock().unwrap_or_else(|p| p.into_inner());
    let c = cursor.get_or_insert_with(|| {
        let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .map_or(HIGH, |eph| eph.clamp(LOW + 1000, HIGH));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread = u32::from(high - LOW) / 2;
        Cursor {
            next: LOW + ((std::process::id() ^ nanos) % spread) as u16 * 2,
            high,
        }
    });
    let port = if c.next + block > c.high { LOW } else { c.next };
    c.next = port + block;
    port
}
