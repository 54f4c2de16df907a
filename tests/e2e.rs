//! End-to-end test of the home topology with real softphones.
//!
//! Seven network namespaces (`tests/e2e/topology.rs`) stand in for the home network (addresses from the documentation
//! prefixes only; nothing leaves the namespaces):
//!
//! ```text
//!   lan6 (bridge br0)                          pod
//!    ph1: ph1 2001:db8:1234:1::101 (phone 101)  lo   2001:db8:1234:10::5060/128  (pinned)
//!    ph2: ph2 2001:db8:1234:1::102 (phone 102)  lo   198.51.100.10/32            (pinned)
//!        |                                      pod0 2001:db8:100::2/64, 203.0.113.2/30 (transit)
//!        |                                        |
//!        +---- router (forwarding, the routes BGP would learn: /128 and /32 via the transit)
//!        |                                        |
//!   lan4: lan4up 198.51.100.50/27 (doorbell 190)  provider: prov0 2001:db8:ffff::2/64 (PSTN UA)
//!                                                           lo 2001:db8:ffff:5::60/128 (Kamailio)
//! ```
//!
//! podpbx runs in `pod`, bound to the pinned addresses only. Kamailio (`tests/kamailio/
//! provider.cfg`) is the provider: digest registrar, source-address check admitting only the
//! pod's pinned IPv6 as subscriber and the PSTN UA as carrier, DID calls to the registered
//! contact, outbound calls (after a 407) to the PSTN UA. The phones, the doorbell and the PSTN UA
//! are baresip (`tests/common/baresip.rs`), each playing its own sine (101: 697 Hz, 102: 1209 Hz,
//! door: 852 Hz, PSTN: 1477 Hz) and recording what it hears.
//!
//! Scenarios, one call each: (1) phone 102 calls phone 101 (IPv6 to IPv6); (2) the IPv4 doorbell
//! rings the `family` group: 101 answers (auto-answer), 102 (manual answer) rings and is
//! cancelled; (3) the PSTN calls the DID through Kamailio, 102 is answered by the test;
//! (4) 101 calls a PSTN number out through the trunk; (5) 101 calls a PSTN number that the
//! provider routes to a SIPp UAS using reliable provisional responses (RFC 3262; baresip 1.0
//! has no 100rel): its `183` with `Require: 100rel` and SDP reaches podpbx through Kamailio,
//! podpbx PRACKs it through Kamailio, the phone (which offered no 100rel) gets early media in a
//! plain `183`, then the answer; the UAS echoes the media, so 101 hearing its own tone proves
//! audio both ways. Each call carries about 4 s of audio. The
//! checks per call: both ends established; each recording holds the far end's tone (Goertzel:
//! dominant frequency within 3 Hz, purity >= 0.8, RMS >= 0.1) and not its own or another
//! (purity < 0.05); the CDR has the expected parties and both legs' media anchored on the
//! pinned address of the leg's family with >= 100 RTP packets; a packet counter on the router's
//! link to the pod sees >= 100 RTP datagrams each way on each pinned address involved; the phones
//! report RTP arriving from the pinned address; each phone saw the right caller/callee ID; for
//! (5), the SIP on the router's link to the pod (the sniffer keeps it) shows the reliable 183
//! from the provider, the PRACK and its 200 through it, and no `Require: 100rel` or `RSeq` sent
//! to the phone. At the
//! end: no UDP ever left the pod from its transit addresses, `podpbx_calls_total{answered}`
//! counts the calls, and a graceful stop (SIGTERM) removes the trunk's binding at Kamailio.
//! Every scenario runs even when an earlier one failed; the test then fails with a report of all
//! of them (and the logs). The report is printed with `--nocapture`.
//!
//! Needs root (CI runs as root), baresip (`baresip-core`) and Kamailio. `PODPBX_SKIP_E2E=1`
//! skips it; `PODPBX_KEEP_E2E=1` keeps the baresip work dirs (configs, logs, recordings);
//! `PODPBX_E2E_SIP_TRACE=1` makes baresip log every SIP message it sends and receives.

mod common;

#[path = "e2e/audio.rs"]
mod audio;
#[path = "e2e/sniff.rs"]
mod sniff;
#[path = "e2e/topology.rs"]
mod topology;

use common::baresip::{account, in_netns, Baresip, PhoneConfig};
use common::kamailio::{Account, Kamailio, ProviderConfig, Source};
use common::netns::*;
use common::{cdrs, http_get, metric, ChildGuard, TempDir, BIN};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use topology::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const TRUNK_USER: &str = "4930123456";
const TRUNK_PASSWORD: &str = "e2e-trunk-secret";
const DID: &str = "+4930123456";
const PSTN_NUMBER: &str = "+4940999";
/// A PSTN number the provider routes to a SIPp UAS that uses reliable provisional responses
/// (`tests/sipp/uas_100rel_provider.xml`, on `PSTN`:`REL_UAS_PORT`), echoing the media.
const PSTN_REL_NUMBER: &str = "+4940100";
const REL_UAS_PORT: u16 = 5070;
const REL_UAS_MEDIA: u16 = 31000;

const TONE_101: f64 = 697.0;
const TONE_102: f64 = 1209.0;
const TONE_DOOR: f64 = 852.0;
const TONE_PSTN: f64 = 1477.0;
const ALL_TONES: [f64; 4] = [TONE_101, TONE_102, TONE_DOOR, TONE_PSTN];

/// How long each call carries audio before the caller hangs up.
const TALK: Duration = Duration::from_secs(4);

fn podpbx_config(dir: &Path) -> String {
    format!(
        r#"[sip]
ipv6 = "{PINNED6}"
ipv4 = "{PINNED4}"
port = 5060
transports = ["udp", "tcp"]
domain = "home.test"
realm = "home.test"

[admin]
# On the pod's loopback, as in k8s/base (nothing but SIP and RTP on the pinned addresses).
listen = "127.0.0.1:9060"

[storage]
data_dir = "{dir}"

[media]
port_min = {MEDIA_MIN}
port_max = {MEDIA_MAX}
timeout_secs = 15

[calls]
cdr_file = "{dir}/cdr.jsonl"
max_duration_secs = 300

[[users]]
name = "101"
display_name = "Study"
password = "e2e-pw-101"
allow_from = ["2001:db8:1234:1::/64"]
groups = ["family"]

[[users]]
name = "102"
display_name = "Kitchen"
password = "e2e-pw-102"
allow_from = ["2001:db8:1234:1::/64"]
groups = ["family"]

[[users]]
name = "190"
display_name = "Front door"
identify_by_source = true
allow_from = ["{DOOR}/32"]
max_calls = 1

[[groups]]
name = "family"
strategy = "parallel"
ring_timeout_secs = 20

[[trunks]]
name = "provider"
host = "{KAM}"
port = 5060
transport = "udp"
family = "ipv6"
username = "{TRUNK_USER}"
password = "{TRUNK_PASSWORD}"
expiry_secs = 300
dids = ["{DID}"]
caller_id = "{DID}"
networks = ["2001:db8:ffff::/48"]

[[dialplan]]
name = "door"
match = {{ caller = "190" }}
action = "ring"
targets = ["family"]
timeout_secs = 20
fallback = [{{ action = "reject", status = 480 }}]

[[dialplan]]
name = "extensions"
match = {{ pattern = "_1XX", from = "local" }}
action = "local"
timeout_secs = 20

[[dialplan]]
name = "international"
match = {{ pattern = "_+X.", from = "local" }}
action = "trunk"
trunk = "provider"

[[dialplan]]
name = "main-number"
match = {{ did = "{DID}" }}
action = "ring"
targets = ["102"]
timeout_secs = 20
"#,
        dir = dir.display()
    )
}

/// The address family label of a media address as the CDR writes it (`[v6]:port`, `v4:port`).
fn on_pinned(local: &str, v6: bool) -> bool {
    if v6 {
        local.starts_with(&format!("[{PINNED6}]:"))
    } else {
        local.starts_with(&format!("{PINNED4}:"))
    }
}

/// Outcome of one scenario: evidence lines, or what went wrong.
type Outcome = Result<Vec<String>, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// `b`'s newest recording holds `expected` and none of the other tones ([`audio::heard`]).
fn heard(b: &mut Baresip, expected: f64) -> Result<audio::ToneCheck, String> {
    let foreign: Vec<f64> = ALL_TONES
        .iter()
        .copied()
        .filter(|f| *f != expected)
        .collect();
    audio::heard(b, expected, &foreign)
}

/// The RTP source address a phone reported (`... receiving from ADDR`), last one.
fn rtp_source(b: &Baresip) -> Option<String> {
    b.logs()
        .lines()
        .rev()
        .find_map(|l| l.split("receiving from ").nth(1))
        .map(|s| s.trim().to_owned())
}

fn check_rtp_source(b: &Baresip, v6: bool) -> Result<String, String> {
    let src = rtp_source(b).ok_or_else(|| format!("{}: no incoming RTP reported", b.name))?;
    let ok = if v6 {
        src.starts_with(&format!("[{PINNED6}]:"))
    } else {
        src.starts_with(&format!("{PINNED4}:"))
    };
    ensure!(
        ok,
        "{}: RTP arrived from {src}, not from the pinned address",
        b.name
    );
    Ok(format!("{} receives RTP from {src}", b.name))
}

/// Counts on the router's link to the pod between two snapshots: RTP datagrams from and to the
/// pinned address of each family (pod side port in the media range).
#[derive(Debug, Default, Clone, Copy)]
struct Wire {
    out6: u64,
    in6: u64,
    out4: u64,
    in4: u64,
}

fn wire(d: &sniff::Flows) -> Wire {
    let media = |a: &SocketAddr| (MEDIA_MIN..=MEDIA_MAX).contains(&a.port());
    let mut w = Wire::default();
    for ((src, dst), n) in d {
        if src.ip() == ip(PINNED6) && media(src) {
            w.out6 += n;
        }
        if dst.ip() == ip(PINNED6) && media(dst) {
            w.in6 += n;
        }
        if src.ip() == ip(PINNED4) && media(src) {
            w.out4 += n;
        }
        if dst.ip() == ip(PINNED4) && media(dst) {
            w.in4 += n;
        }
    }
    w
}

/// The CDR line of call `n` (1-based), waiting (bounded) for it.
fn cdr(file: &Path, n: usize) -> Result<serde_json::Value, String> {
    let all = cdrs(file, n, Duration::from_secs(5));
    all.get(n - 1)
        .cloned()
        .ok_or_else(|| format!("CDR #{n} missing (have {})", all.len()))
}

/// Checks a CDR leg: role, party, signalling peer, final status, and media anchored on the
/// pinned address of `v6`'s family with at least `min_rtp` packets received from the peer.
fn check_leg(
    c: &serde_json::Value,
    role: &str,
    party: &str,
    remote: &str,
    v6: bool,
    min_rtp: u64,
) -> Result<String, String> {
    let legs = c["legs"].as_array().ok_or("CDR without legs")?;
    let leg = legs
        .iter()
        .find(|l| l["role"] == role && l["party"] == party)
        .ok_or_else(|| format!("no {role} leg of {party} in CDR {c}"))?;
    ensure!(
        leg["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(remote)),
        "{role} leg {party}: remote {} is not {remote}: {c}",
        leg["remote"]
    );
    let local = leg["local"].as_str().unwrap_or("");
    ensure!(
        on_pinned(local, v6),
        "{role} leg {party}: signalling local {local} not pinned: {c}"
    );
    let mlocal = leg["media"]["local"].as_str().unwrap_or("");
    ensure!(
        on_pinned(mlocal, v6),
        "{role} leg {party}: media local {mlocal} not pinned: {c}"
    );
    let rtp = leg["media"]["rtp_packets"].as_u64().unwrap_or(0);
    let fwd = leg["media"]["forwarded_packets"].as_u64().unwrap_or(0);
    ensure!(
        rtp >= min_rtp,
        "{role} leg {party}: only {rtp} RTP packets: {c}"
    );
    ensure!(
        fwd >= min_rtp,
        "{role} leg {party}: only {fwd} packets forwarded: {c}"
    );
    Ok(format!(
        "CDR {role} {party}: remote {} media {mlocal} rtp {rtp} fwd {fwd} lost {} jitter {} ms",
        leg["remote"].as_str().unwrap_or(""),
        leg["media"]["lost_packets"],
        leg["media"]["jitter_ms"]
    ))
}

fn check_wire(w: Wire, v6: bool, v4: bool) -> Result<String, String> {
    let min = 100;
    if v6 {
        ensure!(
            w.out6 >= min && w.in6 >= min,
            "too little RTP on the wire at the pinned IPv6: {w:?}"
        );
    }
    if v4 {
        ensure!(
            w.out4 >= min && w.in4 >= min,
            "too little RTP on the wire at the pinned IPv4: {w:?}"
        );
    }
    Ok(format!(
        "router<->pod link: RTP pinned6 out {} in {}, pinned4 out {} in {}",
        w.out6, w.in6, w.out4, w.in4
    ))
}

/// The `peeruri` of `b`'s latest event of type `ty` (who the phone saw calling or answering).
fn peer_of(b: &Baresip, ty: &str) -> String {
    b.events()
        .iter()
        .rev()
        .find(|e| e["type"] == ty)
        .and_then(|e| e["peeruri"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn check_peer(b: &Baresip, ty: &str, user: &str) -> Result<String, String> {
    let peer = peer_of(b, ty);
    ensure!(
        peer.starts_with(&format!("sip:{user}@")),
        "{}: {ty} should show {user}, shows {peer:?}",
        b.name
    );
    Ok(format!("{} saw {peer} ({ty})", b.name))
}

/// Waits for `ty` on `b` to reach `n`, with a bounded limit.
fn wait(b: &mut Baresip, ty: &str, n: usize, secs: u64) -> Result<(), String> {
    b.wait_event(ty, n, Duration::from_secs(secs)).map(|_| ())
}

/// What the scenarios share.
struct World {
    p101: Baresip,
    p102: Baresip,
    door: Baresip,
    pstn: Baresip,
    cdr_file: std::path::PathBuf,
    calls: usize,
    sniffer: sniff::Sniffer,
}

impl World {
    fn counts(&self, ty: &str) -> [usize; 4] {
        [
            self.p101.count(ty),
            self.p102.count(ty),
            self.door.count(ty),
            self.pstn.count(ty),
        ]
    }
}

/// (1) Phone 102 calls phone 101 (auto-answer), IPv6 to IPv6 through the relay.
fn phone_to_phone(w: &mut World) -> Outcome {
    let est = w.counts("CALL_ESTABLISHED");
    let closed = w.counts("CALL_CLOSED");
    let before = w.sniffer.flows();
    w.p102.command("dial", &format!("sip:101@[{PINNED6}]"))?;
    wait(&mut w.p102, "CALL_ESTABLISHED", est[1] + 1, 20)?;
    wait(&mut w.p101, "CALL_ESTABLISHED", est[0] + 1, 5)?;
    std::thread::sleep(TALK);
    w.p102.command("hangup", "")?;
    wait(&mut w.p102, "CALL_CLOSED", closed[1] + 1, 10)?;
    wait(&mut w.p101, "CALL_CLOSED", closed[0] + 1, 10)?;
    w.calls += 1;
    let wire = wire(&sniff::diff(&before, &w.sniffer.flows()));
    let mut ev = Vec::new();
    ev.push(format!("101 heard 102: {}", heard(&mut w.p101, TONE_102)?));
    ev.push(format!("102 heard 101: {}", heard(&mut w.p102, TONE_101)?));
    let c = cdr(&w.cdr_file, w.calls)?;
    ensure!(
        c["disposition"] == "answered" && c["caller"] == "102" && c["callee"] == "101",
        "CDR: {c}"
    );
    ensure!(
        c["answered_by"] == "101" && c["hangup_by"] == "caller",
        "CDR: {c}"
    );
    ev.push(check_leg(
        &c,
        "caller",
        "102",
        &format!("[{PHONE102}]:"),
        true,
        100,
    )?);
    ev.push(check_leg(
        &c,
        "callee",
        "101",
        &format!("[{PHONE101}]:"),
        true,
        100,
    )?);
    ev.push(check_wire(wire, true, false)?);
    ev.push(check_rtp_source(&w.p101, true)?);
    ev.push(check_rtp_source(&w.p102, true)?);
    ev.push(check_peer(&w.p101, "CALL_ESTABLISHED", "102")?);
    Ok(ev)
}

/// (2) The IPv4 doorbell rings the family group: 101 answers at once, 102 rings and is
/// cancelled; audio bridged IPv4 <-> IPv6.
fn doorbell(w: &mut World) -> Outcome {
    let est = w.counts("CALL_ESTABLISHED");
    let closed = w.counts("CALL_CLOSED");
    let incoming = w.counts("CALL_INCOMING");
    let before = w.sniffer.flows();
    w.door.command("dial", &format!("sip:600@{PINNED4}"))?;
    wait(&mut w.door, "CALL_ESTABLISHED", est[2] + 1, 20)?;
    wait(&mut w.p101, "CALL_ESTABLISHED", est[0] + 1, 5)?;
    // 102 rang too (parallel group) and is cancelled once 101 answered.
    wait(&mut w.p102, "CALL_INCOMING", incoming[1] + 1, 5)?;
    wait(&mut w.p102, "CALL_CLOSED", closed[1] + 1, 5)?;
    ensure!(
        w.p102.count("CALL_ESTABLISHED") == est[1],
        "102 must not be connected: {:?}",
        w.p102.event_types()
    );
    std::thread::sleep(TALK);
    w.door.command("hangup", "")?;
    wait(&mut w.door, "CALL_CLOSED", closed[2] + 1, 10)?;
    wait(&mut w.p101, "CALL_CLOSED", closed[0] + 1, 10)?;
    w.calls += 1;
    let wire = wire(&sniff::diff(&before, &w.sniffer.flows()));
    let mut ev = Vec::new();
    ev.push(format!(
        "101 heard the door: {}",
        heard(&mut w.p101, TONE_DOOR)?
    ));
    ev.push(format!("door heard 101: {}", heard(&mut w.door, TONE_101)?));
    ensure!(
        w.p102.new_recordings().is_empty(),
        "102 never answered, yet it recorded audio"
    );
    let c = cdr(&w.cdr_file, w.calls)?;
    ensure!(
        c["disposition"] == "answered" && c["caller"] == "190" && c["answered_by"] == "101",
        "CDR: {c}"
    );
    ensure!(c["rule"] == "door", "CDR: {c}");
    ev.push(check_leg(
        &c,
        "caller",
        "190",
        &format!("{DOOR}:"),
        false,
        100,
    )?);
    ev.push(check_leg(
        &c,
        "callee",
        "101",
        &format!("[{PHONE101}]:"),
        true,
        100,
    )?);
    let fork = c["legs"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["party"] == "102").cloned())
        .ok_or_else(|| format!("no leg for 102 in CDR {c}"))?;
    ensure!(
        fork["role"] == "fork" && fork["status"] == 487,
        "102's leg: {fork}"
    );
    ev.push(format!(
        "CDR fork 102: status {} (cancelled)",
        fork["status"]
    ));
    ev.push(check_wire(wire, true, true)?);
    ev.push(check_rtp_source(&w.door, false)?);
    ev.push(check_rtp_source(&w.p101, true)?);
    ev.push(check_peer(&w.p101, "CALL_ESTABLISHED", "190")?);
    Ok(ev)
}

/// (3) The PSTN calls the DID: Kamailio delivers it to podpbx's registered contact, podpbx
/// rings 102, which answers after ringing a moment.
fn inbound_did(w: &mut World) -> Outcome {
    let est = w.counts("CALL_ESTABLISHED");
    let closed = w.counts("CALL_CLOSED");
    let incoming = w.counts("CALL_INCOMING");
    let before = w.sniffer.flows();
    w.pstn.command("dial", &format!("sip:{DID}@[{KAM}]:5060"))?;
    wait(&mut w.p102, "CALL_INCOMING", incoming[1] + 1, 20)?;
    std::thread::sleep(Duration::from_millis(500));
    w.p102.command("accept", "")?;
    wait(&mut w.p102, "CALL_ESTABLISHED", est[1] + 1, 10)?;
    wait(&mut w.pstn, "CALL_ESTABLISHED", est[3] + 1, 10)?;
    std::thread::sleep(TALK);
    w.pstn.command("hangup", "")?;
    wait(&mut w.pstn, "CALL_CLOSED", closed[3] + 1, 10)?;
    wait(&mut w.p102, "CALL_CLOSED", closed[1] + 1, 10)?;
    w.calls += 1;
    let wire = wire(&sniff::diff(&before, &w.sniffer.flows()));
    let mut ev = Vec::new();
    ev.push(format!(
        "102 heard the PSTN: {}",
        heard(&mut w.p102, TONE_PSTN)?
    ));
    ev.push(format!("PSTN heard 102: {}", heard(&mut w.pstn, TONE_102)?));
    let c = cdr(&w.cdr_file, w.calls)?;
    ensure!(
        c["disposition"] == "answered" && c["trunk"] == "provider" && c["answered_by"] == "102",
        "CDR: {c}"
    );
    ensure!(c["rule"] == "main-number", "CDR: {c}");
    let legs = c["legs"].as_array().cloned().unwrap_or_default();
    let a = legs
        .iter()
        .find(|l| l["role"] == "caller")
        .ok_or("no caller leg")?;
    ensure!(
        a["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("[{KAM}]:"))),
        "the DID call must come from Kamailio: {c}"
    );
    let party = a["party"].as_str().unwrap_or("").to_owned();
    ev.push(check_leg(
        &c,
        "caller",
        &party,
        &format!("[{KAM}]:"),
        true,
        100,
    )?);
    ev.push(check_leg(
        &c,
        "callee",
        "102",
        &format!("[{PHONE102}]:"),
        true,
        100,
    )?);
    ev.push(check_wire(wire, true, false)?);
    ev.push(check_rtp_source(&w.pstn, true)?);
    ev.push(check_rtp_source(&w.p102, true)?);
    ev.push(check_peer(&w.p102, "CALL_INCOMING", PSTN_NUMBER)?);
    Ok(ev)
}

/// (4) Phone 101 calls a PSTN number: podpbx sends it to Kamailio from the pinned IPv6, answers
/// the 407, Kamailio relays to the PSTN UA, which answers.
fn outbound(w: &mut World, kam: &Kamailio) -> Outcome {
    let est = w.counts("CALL_ESTABLISHED");
    let closed = w.counts("CALL_CLOSED");
    let before = w.sniffer.flows();
    w.p101
        .command("dial", &format!("sip:{PSTN_NUMBER}@[{PINNED6}]"))?;
    wait(&mut w.p101, "CALL_ESTABLISHED", est[0] + 1, 20)?;
    wait(&mut w.pstn, "CALL_ESTABLISHED", est[3] + 1, 5)?;
    std::thread::sleep(TALK);
    w.p101.command("hangup", "")?;
    wait(&mut w.p101, "CALL_CLOSED", closed[0] + 1, 10)?;
    wait(&mut w.pstn, "CALL_CLOSED", closed[3] + 1, 10)?;
    w.calls += 1;
    let wire = wire(&sniff::diff(&before, &w.sniffer.flows()));
    let mut ev = Vec::new();
    ev.push(format!("PSTN heard 101: {}", heard(&mut w.pstn, TONE_101)?));
    ev.push(format!(
        "101 heard the PSTN: {}",
        heard(&mut w.p101, TONE_PSTN)?
    ));
    let c = cdr(&w.cdr_file, w.calls)?;
    ensure!(
        c["disposition"] == "answered" && c["caller"] == "101" && c["callee"] == PSTN_NUMBER,
        "CDR: {c}"
    );
    ensure!(c["rule"] == "international", "CDR: {c}");
    ev.push(check_leg(
        &c,
        "caller",
        "101",
        &format!("[{PHONE101}]:"),
        true,
        100,
    )?);
    ev.push(check_leg(
        &c,
        "callee",
        "provider",
        &format!("[{KAM}]:"),
        true,
        100,
    )?);
    ev.push(check_wire(wire, true, false)?);
    ev.push(check_rtp_source(&w.pstn, true)?);
    ev.push(check_rtp_source(&w.p101, true)?);
    ev.push(check_peer(&w.pstn, "CALL_ESTABLISHED", DID)?);
    // The provider saw the INVITE from the pinned IPv6, challenged it, and relayed it.
    let log = kam.log_text();
    let invites = log
        .lines()
        .filter(|l| {
            l.contains(&format!("provider: INVITE sip:{PSTN_NUMBER}@"))
                && l.contains(&format!("from {PINNED6}:"))
        })
        .count();
    ensure!(
        invites >= 2,
        "Kamailio should see the INVITE and its authenticated retry from {PINNED6}:\n{log}"
    );
    ev.push(format!(
        "Kamailio: {invites} INVITEs for {PSTN_NUMBER} from the pinned IPv6 (407 round)"
    ));
    Ok(ev)
}

/// The SIPp UAS behind the provider for (5), in the provider namespace, for one call.
struct RelUas {
    child: Option<ChildGuard>,
    dir: TempDir,
}

impl RelUas {
    fn start(provider: &Netns) -> Result<RelUas, String> {
        let dir = TempDir::new("e2e-rel-uas");
        let child = provider
            .command("sipp")
            .arg("-sf")
            .arg(common::root().join("tests/sipp/uas_100rel_provider.xml"))
            .args(["-i", PSTN, "-p", &REL_UAS_PORT.to_string()])
            .args(["-mi", PSTN, "-mp", &REL_UAS_MEDIA.to_string(), "-rtp_echo"])
            .args(["-t", "u1", "-m", "1", "-nostdin"])
            .args(["-timeout", "60s", "-timeout_error"])
            .args(["-trace_msg", "-trace_logs", "-trace_err"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("run sipp in the provider namespace: {e}"))?;
        let uas = RelUas {
            child: Some(ChildGuard(child)),
            dir,
        };
        // Bound in its namespace (the thread's own view of /proc/net).
        let hex = format!(":{REL_UAS_PORT:04X} ");
        wait_until("the SIPp UAS to bind", Duration::from_secs(5), || {
            in_netns(&provider.name, || {
                std::fs::read_to_string("/proc/thread-self/net/udp6")
                    .unwrap_or_default()
                    .contains(&hex)
            })
        })?;
        Ok(uas)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "log") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Waits (bounded) for SIPp to exit; whether it succeeded, and its logs.
    fn finish(&mut self, limit: Duration) -> (bool, String) {
        let mut ok = false;
        if let Some(c) = self.child.as_mut() {
            let _ = wait_until("the SIPp UAS to finish", limit, || {
                matches!(c.0.try_wait(), Ok(Some(_)))
            });
            ok = matches!(c.0.try_wait(), Ok(Some(s)) if s.success());
        }
        self.child.take();
        (ok, self.logs())
    }
}

/// (5) Phone 101 calls a PSTN number whose far end uses reliable provisional responses: the
/// provider relays the UAS's `183` (`Require: 100rel`, `RSeq`, SDP), podpbx PRACKs it through
/// the provider, the phone (no 100rel) gets a plain `183` with early media, then the answer.
/// The UAS echoes the media: 101 hears its own tone.
fn outbound_100rel(w: &mut World, kam: &Kamailio, provider: &Netns) -> Outcome {
    let mut uas = RelUas::start(provider)?;
    let est = w.counts("CALL_ESTABLISHED");
    let closed = w.counts("CALL_CLOSED");
    let before = w.sniffer.flows();
    let sip_before = w.sniffer.sip().len();
    w.p101
        .command("dial", &format!("sip:{PSTN_REL_NUMBER}@[{PINNED6}]"))?;
    wait(&mut w.p101, "CALL_ESTABLISHED", est[0] + 1, 20)?;
    std::thread::sleep(TALK);
    w.p101.command("hangup", "")?;
    wait(&mut w.p101, "CALL_CLOSED", closed[0] + 1, 10)?;
    w.calls += 1;
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    let wire = wire(&sniff::diff(&before, &w.sniffer.flows()));
    let sip: Vec<sniff::SipSeen> = w.sniffer.sip().split_off(sip_before);
    let mut ev = Vec::new();
    ensure!(
        uas_ok && uas_logs.contains("UAS100-PRACK rack=4711 ") && uas_logs.contains("UAS100-OK"),
        "the 100rel UAS did not complete (INVITE with 100rel, PRACK, 200, ACK, BYE):\n{}",
        tail(&uas_logs, 60)
    );
    ev.push(format!(
        "UAS: {}",
        uas_logs
            .lines()
            .filter(|l| l.contains("UAS100-"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    ));
    // On the wire (router <-> pod): the trunk leg used 100rel end to end through Kamailio.
    let pinned = ip(PINNED6);
    let kam_sip = SocketAddr::new(ip(KAM), 5060);
    let to_kam = |m: &&sniff::SipSeen| m.src.ip() == pinned && m.dst == kam_sip;
    let from_kam = |m: &&sniff::SipSeen| m.src == kam_sip && m.dst.ip() == pinned;
    let invite = sip
        .iter()
        .rev()
        .find(|m| {
            to_kam(m)
                && m.first_line()
                    .starts_with(&format!("INVITE sip:{PSTN_REL_NUMBER}@"))
        })
        .ok_or("no INVITE to the provider on the wire")?;
    ensure!(
        invite.has_token("Supported", "100rel"),
        "podpbx's INVITE to the provider does not offer 100rel:\n{}",
        invite.text
    );
    let rel183 = sip
        .iter()
        .filter(from_kam)
        .find(|m| {
            m.first_line().starts_with("SIP/2.0 183")
                && m.has_token("Require", "100rel")
                && m.header("RSeq") == Some("4711")
        })
        .ok_or("no reliable 183 (Require: 100rel, RSeq) from the provider on the wire")?;
    ensure!(
        rel183.text.contains("\r\nm=audio "),
        "the reliable 183 carries no SDP:\n{}",
        rel183.text
    );
    let prack = sip
        .iter()
        .filter(to_kam)
        .find(|m| m.first_line().starts_with("PRACK "))
        .ok_or("no PRACK from podpbx to the provider on the wire")?;
    let rack = prack.header("RAck").unwrap_or_default().to_owned();
    ensure!(
        rack.starts_with("4711 ") && rack.ends_with(" INVITE"),
        "PRACK with RAck {rack:?}:\n{}",
        prack.text
    );
    let prack_ok = sip.iter().filter(from_kam).any(|m| {
        m.first_line().starts_with("SIP/2.0 200")
            && m.header("CSeq").is_some_and(|c| c.ends_with(" PRACK"))
    });
    ensure!(
        prack_ok,
        "no 200 to the PRACK from the provider on the wire"
    );
    ev.push(format!(
        "wire: INVITE to the provider with Supported: 100rel; 183 from it with Require: 100rel, RSeq 4711, SDP; PRACK (RAck {rack}) to it, 200 back"
    ));
    // The phone offered no 100rel, and got none: early media in a plain 18x.
    let phone = ip(PHONE101);
    let phone_invite = sip
        .iter()
        .find(|m| m.src.ip() == phone && m.first_line().starts_with("INVITE "))
        .ok_or("no INVITE from phone 101 on the wire")?;
    ensure!(
        !phone_invite.has_token("Supported", "100rel")
            && !phone_invite.has_token("Require", "100rel"),
        "phone 101 offered 100rel after all: the check below would prove nothing"
    );
    let to_phone: Vec<&sniff::SipSeen> = sip.iter().filter(|m| m.dst.ip() == phone).collect();
    if let Some(m) = to_phone
        .iter()
        .find(|m| m.has_token("Require", "100rel") || m.header("RSeq").is_some())
    {
        return Err(format!(
            "podpbx sent Require: 100rel / RSeq to phone 101, which did not offer it:\n{}",
            m.text
        ));
    }
    let early = to_phone
        .iter()
        .find(|m| m.first_line().starts_with("SIP/2.0 183") && m.text.contains("\r\nm=audio "))
        .ok_or("no 183 with SDP (early media) to phone 101")?;
    ev.push(format!(
        "wire: phone 101 (no 100rel offered) got `{}` with SDP, no Require: 100rel, no RSeq ({} SIP messages to it)",
        early.first_line(),
        to_phone.len()
    ));
    // Kamailio relayed the PRACK and, by the Record-Route, the BYE.
    let log = kam.log_text();
    let through = |method: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("provider: {method} sip:"))
                    && l.contains(&format!("from {PINNED6}:"))
            })
            .count()
    };
    ensure!(
        through("PRACK") == 1 && through("BYE") >= 1,
        "Kamailio should relay one PRACK and the BYE from {PINNED6}:\n{}",
        tail(&log, 40)
    );
    ev.push("Kamailio: relayed the PRACK and the BYE from the pinned IPv6".to_owned());
    // Audio both ways: the UAS echoes what it gets, so 101 hears its own tone.
    let others: Vec<f64> = ALL_TONES
        .iter()
        .copied()
        .filter(|f| *f != TONE_101)
        .collect();
    let tone = audio::heard(&mut w.p101, TONE_101, &others)?;
    // baresip records from the early media on: the 2 s of echoed early media before the answer
    // make the recording longer than the talk time.
    let early_heard = tone.secs - TALK.as_secs_f64() >= 1.0;
    ensure!(early_heard, "101 heard no early media: {tone}");
    ev.push(format!(
        "101 heard its own tone echoed by the 100rel UAS, early media included: {tone}"
    ));
    let c = cdr(&w.cdr_file, w.calls)?;
    ensure!(
        c["disposition"] == "answered"
            && c["caller"] == "101"
            && c["callee"] == PSTN_REL_NUMBER
            && c["hangup_by"] == "caller",
        "CDR: {c}"
    );
    ev.push(check_leg(
        &c,
        "caller",
        "101",
        &format!("[{PHONE101}]:"),
        true,
        100,
    )?);
    ev.push(check_leg(
        &c,
        "callee",
        "provider",
        &format!("[{KAM}]:"),
        true,
        100,
    )?);
    ev.push(check_wire(wire, true, false)?);
    ev.push(check_rtp_source(&w.p101, true)?);
    Ok(ev)
}

/// An OPTIONS from `src` (inside `ns`) to `dest`; returns the status line of the answer.
fn options_from(ns: &str, src: &str, dest: SocketAddr) -> Option<String> {
    in_netns(ns, || {
        let sock = UdpSocket::bind(SocketAddr::new(ip(src), 0)).ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let local = sock.local_addr().ok()?;
        let host = match local.ip() {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        let req = format!(
            "OPTIONS sip:probe@provider.test SIP/2.0\r\n\
             Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-e2e-probe;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=e2e\r\nTo: <sip:probe@provider.test>\r\n\
             Call-ID: e2e-probe@{host}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            port = local.port()
        );
        let mut buf = vec![0u8; 65536];
        for _ in 0..6 {
            sock.send_to(req.as_bytes(), dest).ok()?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return text.lines().next().map(str::to_owned);
            }
        }
        None
    })
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn home_topology_with_real_softphones() {
    if std::env::var_os("PODPBX_SKIP_E2E").is_some() {
        eprintln!("PODPBX_SKIP_E2E set: skipping");
        return;
    }
    assert!(
        is_root(),
        "this test builds network namespaces and must run as root (CI does)"
    );
    if let Err(e) = common::baresip::available() {
        panic!("{e} (or set PODPBX_SKIP_E2E=1)");
    }
    if let Err(e) = common::kamailio::available() {
        panic!("{e} (or set PODPBX_SKIP_E2E=1)");
    }
    let started = Instant::now();

    // Declaration order is teardown order reversed: processes stop before their namespaces go.
    let topo = Topology::build();
    let sniffer = sniff::Sniffer::start(&topo.router.name, "r-pod", Duration::from_secs(240));
    let dir = TempDir::new("e2e");

    // Tones: 60 s each (longer than any call), 8 kHz mono 16-bit, half of full scale.
    let tone = |name: &str, f: f64| {
        let p = dir.path().join(format!("{name}.wav"));
        audio::write_tone(&p, f, 60, 0.5).expect("write tone");
        p
    };
    let (t101, t102, tdoor, tpstn) = (
        tone("101", TONE_101),
        tone("102", TONE_102),
        tone("door", TONE_DOOR),
        tone("pstn", TONE_PSTN),
    );

    // The provider.
    let kam = in_netns(&topo.provider.name, || {
        Kamailio::start(&ProviderConfig {
            listen: vec![ip(KAM)],
            port: Some(5060),
            accounts: vec![Account::new(TRUNK_USER, TRUNK_PASSWORD).did(DID)],
            subscribers: vec![Source::host(ip(PINNED6))],
            carriers: vec![Source::host(ip(PSTN))],
            uas: Some(SocketAddr::new(ip(PSTN), 5060)),
            uas_routes: vec![(
                PSTN_REL_NUMBER.to_owned(),
                SocketAddr::new(ip(PSTN), REL_UAS_PORT),
            )],
            invite_auth: true,
            ..ProviderConfig::default()
        })
    });

    // podpbx in the pod.
    let pbx_dir = TempDir::new("e2e-pbx");
    let cfg = pbx_dir.path().join("podpbx.toml");
    std::fs::write(&cfg, podpbx_config(pbx_dir.path())).expect("write config");
    let log = pbx_dir.path().join("podpbx.log");
    let pbx_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut pbx = ChildGuard(
        topo.pod
            .command(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start podpbx in the pod namespace"),
    );
    let ready = wait_until("podpbx ready", Duration::from_secs(15), || {
        pbx_log().contains("podpbx ready") || !matches!(pbx.0.try_wait(), Ok(None))
    });
    assert!(
        ready.is_ok() && pbx_log().contains("podpbx ready"),
        "podpbx did not start:\n{}",
        pbx_log()
    );

    // The trunk registers from the pinned IPv6 (Kamailio admits no other source); readyz turns
    // 200 once it has.
    // The pod namespace's own loopback.
    let admin: SocketAddr = "127.0.0.1:9060".parse().unwrap();
    let binding = wait_until(
        "trunk registration at Kamailio",
        Duration::from_secs(15),
        || in_netns(&topo.provider.name, || kam.binding(TRUNK_USER)).is_some(),
    );
    assert!(
        binding.is_ok(),
        "trunk did not register:\n{}\n--- kamailio ---\n{}",
        tail(&pbx_log(), 60),
        tail(&kam.log_text(), 40)
    );
    let b = in_netns(&topo.provider.name, || kam.binding(TRUNK_USER)).expect("binding");
    assert!(
        b.contact.contains(&format!("[{PINNED6}]")),
        "trunk contact on the pinned IPv6: {b:?}"
    );
    let readyz = wait_until("readyz 200", Duration::from_secs(10), || {
        in_netns(&topo.pod.name, || http_get(admin, "/readyz")).0 == 200
    });
    assert!(
        readyz.is_ok(),
        "readyz: {:?}",
        in_netns(&topo.pod.name, || http_get(admin, "/readyz"))
    );
    // The source check is real: the same pod, sending from its transit address, is refused.
    let kam_addr = SocketAddr::new(ip(KAM), 5060);
    let refused = options_from(&topo.pod.name, TRANSIT6_POD, kam_addr);
    assert_eq!(
        refused.as_deref(),
        Some("SIP/2.0 403 Source Address Not Allowed"),
        "probe from the pod's transit address"
    );

    // The softphones.
    let phone = |name: &str,
                 ns: &Netns,
                 listen: SocketAddr,
                 iface: &str,
                 acc: String,
                 tone: &Path,
                 n: u16| {
        Baresip::start(&PhoneConfig {
            name: name.to_owned(),
            netns: ns.name.clone(),
            sip_listen: listen,
            interface: iface.to_owned(),
            account: acc,
            tone: tone.to_path_buf(),
            ctrl_port: 4400 + n,
            rtp_ports: (30000 + 20 * n, 30019 + 20 * n),
            max_secs: 240,
            extra: Vec::new(),
        })
    };
    let sip = |a: &str| SocketAddr::new(ip(a), 5060);
    let aor6 = |user: &str| format!("sip:{user}@[{PINNED6}]");
    let mut p101 = phone(
        "phone101",
        &topo.ph1,
        sip(PHONE101),
        "ph1",
        account(
            &aor6("101"),
            &["auth_pass=e2e-pw-101", "answermode=auto", "regint=600"],
        ),
        &t101,
        1,
    );
    let mut p102 = phone(
        "phone102",
        &topo.ph2,
        sip(PHONE102),
        "ph2",
        account(
            &aor6("102"),
            &["auth_pass=e2e-pw-102", "answermode=manual", "regint=600"],
        ),
        &t102,
        2,
    );
    let door = phone(
        "door",
        &topo.lan4,
        sip(DOOR),
        "lan4up",
        account(
            &format!("sip:190@{PINNED4}"),
            &["answermode=auto", "regint=0"],
        ),
        &tdoor,
        3,
    );
    let pstn = phone(
        "pstn",
        &topo.provider,
        sip(PSTN),
        "prov0",
        account(
            &format!("sip:{PSTN_NUMBER}@[{PSTN}]"),
            &["answermode=auto", "regint=0"],
        ),
        &tpstn,
        4,
    );
    for p in [&mut p101, &mut p102] {
        if let Err(e) = p.wait_registered(Duration::from_secs(10)) {
            panic!(
                "{e}\n{}\n--- podpbx ---\n{}",
                p.logs(),
                tail(&pbx_log(), 60)
            );
        }
    }
    let setup = started.elapsed();

    let mut w = World {
        p101,
        p102,
        door,
        pstn,
        cdr_file: pbx_dir.path().join("cdr.jsonl"),
        calls: 0,
        sniffer,
    };
    type Scenario<'a> = (&'static str, Box<dyn Fn(&mut World) -> Outcome + 'a>);
    let scenarios: Vec<Scenario> = vec![
        (
            "1 phone 102 -> phone 101 (IPv6 <-> IPv6)",
            Box::new(phone_to_phone),
        ),
        (
            "2 doorbell (IPv4) -> family group, 101 answers",
            Box::new(doorbell),
        ),
        ("3 inbound DID via Kamailio -> 102", Box::new(inbound_did)),
        (
            "4 outbound 101 -> trunk -> PSTN",
            Box::new(|w: &mut World| outbound(w, &kam)),
        ),
        (
            "5 outbound 101 -> trunk -> PSTN with 100rel (reliable 183, PRACK via Kamailio)",
            Box::new(|w: &mut World| outbound_100rel(w, &kam, &topo.provider)),
        ),
    ];
    let mut report = String::new();
    let mut failed = Vec::new();
    for (name, run) in &scenarios {
        let t0 = Instant::now();
        let out = run(&mut w);
        // A failed scenario may leave a call up or ringing: hang up everywhere (best effort)
        // and give the hang-ups a moment, so the next scenario starts clean.
        if out.is_err() {
            for b in [&mut w.p101, &mut w.p102, &mut w.door, &mut w.pstn] {
                let _ = b.command("hangup", "");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        // Count calls by CDR lines, so that a failed scenario does not shift the next one.
        w.calls = cdrs(&w.cdr_file, w.calls, Duration::from_secs(2)).len();
        match out {
            Ok(ev) => {
                report.push_str(&format!(
                    "PASS {name} ({:.1} s)\n",
                    t0.elapsed().as_secs_f64()
                ));
                for e in ev {
                    report.push_str(&format!("     {e}\n"));
                }
            }
            Err(e) => {
                report.push_str(&format!("FAIL {name}: {e}\n"));
                failed.push(*name);
            }
        }
    }

    // Never did anything leave the pod from its transit addresses: every SIP and RTP datagram
    // used the pinned ones.
    let flows = w.sniffer.flows();
    let from_transit: Vec<_> = flows
        .iter()
        .filter(|((src, _), _)| src.ip() == ip(TRANSIT6_POD) || src.ip() == ip(TRANSIT4_POD))
        .filter(|((_, dst), _)| dst.ip() != ip(KAM)) // the deliberate 403 probe
        .collect();
    let total = wire(&flows);
    report.push_str(&format!(
        "wire total (router<->pod): RTP pinned6 out {} in {}, pinned4 out {} in {}; UDP from transit addresses: {}\n",
        total.out6, total.in6, total.out4, total.in4, from_transit.len()
    ));
    let (code, m) = in_netns(&topo.pod.name, || http_get(admin, "/metrics"));
    let answered = metric(&m, "podpbx_calls_total{disposition=\"answered\"}");
    if code == 200 {
        let calls = m
            .lines()
            .filter(|l| {
                l.starts_with("podpbx_calls_total")
                    || l.starts_with("podpbx_relay_dropped_packets_total")
                    || l.starts_with("podpbx_relay_packets_total")
            })
            .collect::<Vec<_>>()
            .join(", ");
        report.push_str(&format!("podpbx metrics: {calls}\n"));
    }
    report.push_str(&format!(
        "setup {:.1} s, total {:.1} s\n",
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    eprintln!("{report}");
    let metrics_ok = answered == Some(scenarios.len() as f64 - failed.len() as f64);
    if !metrics_ok {
        report.push_str(&format!("FAIL metrics: answered calls {answered:?}\n"));
    }
    if !failed.is_empty() || !from_transit.is_empty() || !metrics_ok {
        let mut logs = String::new();
        for b in [&w.p101, &w.p102, &w.door, &w.pstn] {
            logs.push_str(&tail(&b.logs(), 40));
            logs.push('\n');
        }
        let cdr_text = std::fs::read_to_string(&w.cdr_file).unwrap_or_default();
        panic!(
            "{report}\nfailed: {failed:?}; from transit: {from_transit:?}\n{logs}\n--- CDRs ---\n{cdr_text}\n--- podpbx ---\n{}\n--- kamailio ---\n{}",
            tail(&pbx_log(), 150),
            tail(&kam.log_text(), 60)
        );
    }
    drop(scenarios);
    // Stop the phones first (their un-REGISTERs reach a live podpbx), then podpbx.
    drop(w);
    // A graceful stop (SIGTERM, as Kubernetes does) un-registers the trunk, so the provider
    // stops sending calls to a pod that is gone.
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(pbx.0.id() as i32, libc::SIGTERM) };
    let exited = wait_until("podpbx exit", Duration::from_secs(15), || {
        !matches!(pbx.0.try_wait(), Ok(None))
    });
    let status = pbx.0.try_wait().ok().flatten();
    assert!(
        exited.is_ok() && status.is_some_and(|s| s.success()),
        "podpbx stop: {status:?}\n{}",
        tail(&pbx_log(), 40)
    );
    let left = in_netns(&topo.provider.name, || kam.binding(TRUNK_USER));
    assert!(
        left.is_none(),
        "trunk binding left at the provider after stop: {left:?}"
    );
    drop(pbx);
    drop(kam);
    drop(topo);
}
