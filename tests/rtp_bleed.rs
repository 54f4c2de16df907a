//! RTP bleed (issue #11, "Media: no RTP bleed"), played by an attacker with real phones.
//!
//! The e2e home topology (`tests/e2e/topology.rs`) plus an attacker namespace on the internet
//! side of the router, which knows nothing but the pod's pinned addresses. The IPv4 doorbell
//! (baresip, 852 Hz) calls phone 102 (baresip on the IPv6 LAN, 1209 Hz, manual answer), so the
//! call has an IPv4 leg and an IPv6 leg. While 102 rings (2 s) and then during the answered call
//! (4 s), the attacker sprays every port of the media range on both pinned addresses, every
//! 20 ms: valid RTP (a loud 400 Hz tone, its own SSRC) to the even ports and an RTCP receiver
//! report to the odd ones, from one socket per family, and reads whatever comes back.
//!
//! A relay that latches a leg onto the first source it hears, before or after that leg's SDP is
//! known, hands the attacker one side of the call and leaves the other side in silence. The test
//! passes only when: the attacker received not one datagram, in either phase; each phone heard
//! the other's tone for (nearly) the whole call, and neither its own nor the attacker's;
//! `podpbx_relay_dropped_packets_total{reason="foreign_source"}` in `/metrics` rose by at least
//! the packets that hit the call's four ports during the answered phase, while the call is
//! still up (the relay's counters are live), and `podpbx_relay_packets_total` rose too.
//!
//! The call is made twice, with `media.port_layout = "shared"` (the default: a few port pairs
//! for every call) and `"per-call"` (a pair per leg).
//!
//! Needs root (CI runs as root) and baresip (`baresip-core`); `PODPBX_SKIP_E2E=1` skips it.

mod common;

#[path = "e2e/audio.rs"]
mod audio;
#[path = "e2e/topology.rs"]
mod topology;

use common::baresip::{account, in_netns, Baresip, PhoneConfig};
use common::netns::*;
use common::{http_get, metric, ChildGuard, TempDir, BIN};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use topology::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const TONE_102: f64 = 1209.0;
const TONE_DOOR: f64 = 852.0;
/// What the attacker injects (a leak into a phone would show in its recording).
const TONE_ATTACK: f64 = 400.0;
const RING: Duration = Duration::from_secs(2);
const TALK: Duration = Duration::from_secs(4);
/// One spray round (every port once) per this interval.
const ROUND: Duration = Duration::from_millis(20);
const FOREIGN: &str = "podpbx_relay_dropped_packets_total{reason=\"foreign_source\"}";
const FORWARDED: &str = "podpbx_relay_packets_total";

fn config(dir: &Path, layout: &str) -> String {
    format!(
        r#"[sip]
ipv6 = "{PINNED6}"
ipv4 = "{PINNED4}"
port = 5060
transports = ["udp"]
domain = "home.test"
realm = "home.test"

[admin]
# On the pod's loopback, as in k8s/base.
listen = "127.0.0.1:9060"

[storage]
data_dir = "{dir}"

[media]
port_min = {MEDIA_MIN}
port_max = {MEDIA_MAX}
timeout_secs = 15
port_layout = "{layout}"

[calls]
max_duration_secs = 120
cdr_file = "{dir}/cdr.jsonl"

[[users]]
name = "102"
password = "bleed-pw-102"
allow_from = ["2001:db8:1234:1::/64"]

[[users]]
name = "190"
identify_by_source = true
allow_from = ["{DOOR}/32"]

[[dialplan]]
name = "door"
match = {{ caller = "190" }}
action = "ring"
targets = ["102"]
timeout_secs = 30
"#,
        dir = dir.display()
    )
}

/// G.711 µ-law of a 16-bit linear sample (bias 0x84, clip 32 635).
fn ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign: u8 = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(32_635) + 0x84;
    let mut exp = 7;
    while exp > 0 && s & (0x80 << exp) == 0 {
        exp -= 1;
    }
    let mantissa = ((s >> (exp + 3)) & 0x0f) as u8;
    !(sign | (exp as u8) << 4 | mantissa)
}

/// What one spray phase saw.
#[derive(Debug, Default, Clone, Copy)]
struct Spray {
    rounds: u64,
    sent: u64,
    received: u64,
}

/// The attacker's two sockets (created inside its namespace; they stay there).
struct Attacker {
    v6: UdpSocket,
    v4: UdpSocket,
    seq: u16,
    ts: u32,
}

impl Attacker {
    fn new(ns: &Netns) -> Attacker {
        let (v6, v4) = in_netns(&ns.name, || {
            let v6 = UdpSocket::bind(SocketAddr::new(ip(ATTACKER6), 0)).expect("attacker v6");
            let v4 = UdpSocket::bind(SocketAddr::new(ip(ATTACKER4), 0)).expect("attacker v4");
            (v6, v4)
        });
        for s in [&v6, &v4] {
            s.set_nonblocking(true).expect("nonblocking");
        }
        Attacker {
            v6,
            v4,
            seq: 1,
            ts: 0,
        }
    }

    /// Every `ROUND`, one datagram to every port of the media range on both pinned addresses,
    /// for `how_long` (bounded in time and rounds); counts every datagram that comes back.
    fn spray(&mut self, how_long: Duration) -> Spray {
        let mut out = Spray::default();
        let mut buf = [0u8; 2048];
        let end = Instant::now() + how_long;
        let max_rounds = how_long.as_millis() as u64 / ROUND.as_millis() as u64 + 1;
        let targets = [(&self.v6, ip(PINNED6)), (&self.v4, ip(PINNED4))];
        while Instant::now() < end && out.rounds < max_rounds {
            let t0 = Instant::now();
            let mut rtp = vec![0x80u8, 0];
            rtp.extend_from_slice(&self.seq.to_be_bytes());
            rtp.extend_from_slice(&self.ts.to_be_bytes());
            rtp.extend_from_slice(&0x0bad_f00du32.to_be_bytes());
            for i in 0..160u32 {
                let t = f64::from(self.ts + i) / 8000.0;
                let v = (2.0 * std::f64::consts::PI * TONE_ATTACK * t).sin() * 16000.0;
                rtp.push(ulaw(v as i16));
            }
            // RTCP receiver report (no blocks) from the attacker's SSRC.
            let rtcp = [0x80u8, 201, 0, 1, 0x0b, 0xad, 0xf0, 0x0d];
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            for port in MEDIA_MIN..=MEDIA_MAX {
                let pkt: &[u8] = if port % 2 == 0 { &rtp } else { &rtcp };
                for (sock, pinned) in &targets {
                    if sock.send_to(pkt, SocketAddr::new(*pinned, port)).is_ok() {
                        out.sent += 1;
                    }
                }
            }
            out.rounds += 1;
            for (sock, _) in &targets {
                while let Ok((_, from)) = sock.recv_from(&mut buf) {
                    if out.received == 0 {
                        eprintln!("attacker: first datagram back from {from}");
                    }
                    out.received += 1;
                }
            }
            if let Some(left) = ROUND.checked_sub(t0.elapsed()) {
                std::thread::sleep(left);
            }
        }
        out
    }
}

#[test]
fn attacker_spraying_the_media_range_gets_nothing_and_breaks_nothing() {
    if !phones_test_runs() {
        return;
    }
    let topo = Topology::build();
    let atk_ns = topo.attacker();
    // Both port layouts, one after the other (the namespaces are shared).
    let mut failed = Vec::new();
    for layout in ["shared", "per-call"] {
        match attack(&topo, &atk_ns, layout) {
            Ok(report) => eprintln!("PASS port_layout = {layout}\n{report}"),
            Err(report) => {
                eprintln!("FAIL port_layout = {layout}\n{report}");
                failed.push(layout);
            }
        }
    }
    drop(atk_ns);
    drop(topo);
    assert!(
        failed.is_empty(),
        "RTP bleed with port_layout {failed:?} (report above)"
    );
}

/// One call attacked as described at the top, with podpbx's `media.port_layout = layout`: the
/// report, or the failures with the report and the logs.
fn attack(topo: &Topology, atk_ns: &Netns, layout: &str) -> Result<String, String> {
    let dir = TempDir::new("bleed");
    let tone = |name: &str, f: f64| {
        let p = dir.path().join(format!("{name}.wav"));
        audio::write_tone(&p, f, 60, 0.5).expect("write tone");
        p
    };
    let (t102, tdoor) = (tone("102", TONE_102), tone("door", TONE_DOOR));

    let cfg = dir.path().join("podpbx.toml");
    std::fs::write(&cfg, config(dir.path(), layout)).expect("write config");
    let log = dir.path().join("podpbx.log");
    let pbx_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut pbx = ChildGuard(
        topo.pod
            .command(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start podpbx in the pod namespace"),
    );
    let ready = poll_until(Duration::from_secs(15), || {
        pbx_log().contains("podpbx ready") || !matches!(pbx.0.try_wait(), Ok(None))
    });
    assert!(
        ready && pbx_log().contains("podpbx ready"),
        "podpbx did not start:\n{}",
        pbx_log()
    );
    let admin: SocketAddr = "127.0.0.1:9060".parse().expect("admin");
    let metrics = |series: &str| {
        let (_, m) = in_netns(&topo.pod.name, || http_get(admin, "/metrics"));
        metric(&m, series).unwrap_or(0.0)
    };
    let foreign_drops = || metrics(FOREIGN);

    let phone = |name: &str, ns: &Netns, addr: &str, iface: &str, acc: String, t: &Path, n: u16| {
        Baresip::start(&PhoneConfig {
            name: name.to_owned(),
            netns: ns.name.clone(),
            sip_listen: SocketAddr::new(ip(addr), 5060),
            interface: iface.to_owned(),
            account: acc,
            tone: t.to_path_buf(),
            ctrl_port: 4400 + n,
            rtp_ports: (30000 + 20 * n, 30019 + 20 * n),
            max_secs: 120,
            extra: Vec::new(),
        })
    };
    let mut p102 = phone(
        "bleed102",
        &topo.ph2,
        PHONE102,
        "ph2",
        account(
            &format!("sip:102@[{PINNED6}]"),
            &["auth_pass=bleed-pw-102", "answermode=manual", "regint=600"],
        ),
        &t102,
        2,
    );
    let mut door = phone(
        "bleeddoor",
        &topo.lan4,
        DOOR,
        "lan4up",
        account(
            &format!("sip:190@{PINNED4}"),
            &["answermode=auto", "regint=0"],
        ),
        &tdoor,
        3,
    );
    if let Err(e) = p102.wait_registered(Duration::from_secs(10)) {
        panic!(
            "{e}\n{}\n--- podpbx ---\n{}",
            p102.logs(),
            tail(&pbx_log(), 60)
        );
    }
    let mut attacker = Attacker::new(atk_ns);
    let drops_before = foreign_drops();
    let forwarded_before = metrics(FORWARDED);

    let mut report = String::new();
    // The relay's counters are live: they reach /metrics during the call (within the 1 s
    // publishing tick), not only when it ends.
    let mut mid_call = (0.0, 0.0);
    let result = (|| -> Result<(Spray, Spray), String> {
        door.command("dial", &format!("sip:600@{PINNED4}"))?;
        p102.wait_event("CALL_INCOMING", 1, Duration::from_secs(15))?;
        // 102 rings: its leg has no SDP yet, the door's leg has one but has sent nothing.
        let ringing = attacker.spray(RING);
        p102.command("accept", "")?;
        p102.wait_event("CALL_ESTABLISHED", 1, Duration::from_secs(10))?;
        door.wait_event("CALL_ESTABLISHED", 1, Duration::from_secs(10))?;
        // The answered call: both phones send, the attacker keeps spraying.
        let talking = attacker.spray(TALK);
        let want = drops_before + 4.0 * (talking.rounds as f64) * 0.9;
        let _ = poll_until(Duration::from_secs(3), || {
            foreign_drops() >= want && metrics(FORWARDED) >= forwarded_before + 200.0
        });
        mid_call = (foreign_drops(), metrics(FORWARDED));
        door.command("hangup", "")?;
        door.wait_event("CALL_CLOSED", 1, Duration::from_secs(10))?;
        p102.wait_event("CALL_CLOSED", 1, Duration::from_secs(10))?;
        Ok((ringing, talking))
    })();
    let mut failures = Vec::new();
    match &result {
        Ok((ringing, talking)) => {
            for (phase, s) in [("ringing", ringing), ("answered", talking)] {
                report.push_str(&format!(
                    "{phase}: {} rounds, {} datagrams sprayed, {} received by the attacker\n",
                    s.rounds, s.sent, s.received
                ));
                if s.received != 0 {
                    failures.push(format!(
                        "the attacker received {} datagrams while {phase}",
                        s.received
                    ));
                }
                if s.rounds < 20 {
                    failures.push(format!("only {} spray rounds while {phase}", s.rounds));
                }
            }
            // Each phone heard the other for (nearly) the whole call, not itself, not the
            // attacker.
            let talk_secs = TALK.as_secs() as usize;
            for (b, expected, own) in [
                (&mut p102, TONE_DOOR, TONE_102),
                (&mut door, TONE_102, TONE_DOOR),
            ] {
                match audio::heard(b, expected, &[own, TONE_ATTACK]) {
                    Ok(c) if c.windows + 1 >= talk_secs => {
                        report.push_str(&format!("{} heard {expected} Hz: {c}\n", b.name))
                    }
                    Ok(c) => failures.push(format!(
                        "{}: only {} voiced seconds of {talk_secs}: {c}",
                        b.name, c.windows
                    )),
                    Err(e) => failures.push(e),
                }
            }
            // Every packet to the call's four ports during the answered phase was dropped as
            // foreign (the totals may reach /metrics only when the call ends: wait a moment).
            let want = drops_before + 4.0 * (talking.rounds as f64) * 0.9;
            let (drops_mid, forwarded_mid) = mid_call;
            report.push_str(&format!(
                "during the call: {FOREIGN}: {drops_before} -> {drops_mid}, \
                 {FORWARDED}: {forwarded_before} -> {forwarded_mid}\n"
            ));
            if drops_mid < want {
                failures.push(format!(
                    "foreign-source drops rose from {drops_before} to {drops_mid} during the \
                     call, expected >= {want}"
                ));
            }
            if forwarded_mid < forwarded_before + 200.0 {
                failures.push(format!(
                    "forwarded packets rose from {forwarded_before} to {forwarded_mid} during \
                     the call: the relay's counters do not reach /metrics live"
                ));
            }
        }
        Err(e) => failures.push(format!("call failed: {e}")),
    }
    let out = if failures.is_empty() {
        Ok(report)
    } else {
        Err(format!(
            "{}\n{report}\n--- CDR ---\n{}\n--- 102 ---\n{}\n--- door ---\n{}\n--- podpbx ---\n{}",
            failures.join("\n"),
            std::fs::read_to_string(dir.path().join("cdr.jsonl")).unwrap_or_default(),
            tail(&p102.logs(), 30),
            tail(&door.logs(), 30),
            tail(&pbx_log(), 80)
        ))
    };
    drop(door);
    drop(p102);
    drop(pbx);
    out
}
