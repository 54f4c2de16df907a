//! Phones over TLS with SRTP (issue 17): two baresip softphones on the home topology's IPv6 LAN
//! register over SIP/TLS (RFC 3261 §26) with podpbx's TLS listener on the pinned address and
//! call each other, both ways. Phone 101 has `srtp = "required"` and runs SRTP only (baresip
//! `mediaenc=srtp-mand`: RTP/SAVP with SDES keys); phone 102 has `srtp = "off"` (plain RTP). The
//! relay terminates SRTP on 101's leg with its own keys: each phone hears the other's tone, the
//! SDP 102 gets has no key, the CDR shows both legs on TLS, and no SRTP packet was dropped.
//!
//! Needs root (CI runs as root) and baresip (`baresip-core`); `PODPBX_SKIP_E2E=1` skips it.
//! Certificates come from a throw-away CA made by the test (`openssl`).

mod common;

#[path = "e2e/audio.rs"]
mod audio;
#[path = "e2e/topology.rs"]
mod topology;

use common::baresip::{account, Baresip, PhoneConfig};
use common::netns::*;
use common::tls::Ca;
use common::{cdrs, ChildGuard, TempDir, BIN};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use topology::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

const TONE_101: f64 = 697.0;
const TONE_102: f64 = 1209.0;
const TALK: Duration = Duration::from_secs(4);

fn tone_of(user: &str) -> f64 {
    if user == "101" {
        TONE_101
    } else {
        TONE_102
    }
}

fn config(dir: &Path, cert: &common::tls::CertFiles) -> String {
    format!(
        r#"[sip]
ipv6 = "{PINNED6}"
ipv4 = "{PINNED4}"
port = 5060
transports = ["udp", "tls"]
domain = "home.test"
realm = "home.test"

[tls]
port = 5061
cert_file = "{cert}"
key_file = "{key}"

[admin]
listen = "127.0.0.1:9060"

[storage]
data_dir = "{dir}"

[media]
port_min = 20000
port_max = 20099
timeout_secs = 15

[calls]
max_duration_secs = 120
cdr_file = "{dir}/cdr.jsonl"

[[users]]
name = "101"
password = "tls-pw-101"
allow_from = ["2001:db8:1234:1::/64"]
transport = "tls"
srtp = "required"

[[users]]
name = "102"
password = "tls-pw-102"
allow_from = ["2001:db8:1234:1::/64"]
transport = "tls"

[[dialplan]]
name = "extensions"
match = {{ pattern = "_1XX", from = "local" }}
action = "local"
timeout_secs = 20
"#,
        dir = dir.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

#[test]
fn phones_register_and_call_over_tls() {
    if !phones_test_runs() {
        return;
    }
    let topo = Topology::build();
    let dir = TempDir::new("e2e-tls");
    let ca = Ca::new(&dir, "home-ca");
    let cert = ca.issue(
        "pbx",
        &[
            &format!("IP:{PINNED6}"),
            &format!("IP:{PINNED4}"),
            "DNS:home.test",
        ],
        2,
    );
    let tone = |name: &str, f: f64| {
        let p = dir.path().join(format!("{name}.wav"));
        audio::write_tone(&p, f, 60, 0.5).expect("write tone");
        p
    };
    let (t101, t102) = (tone("101", TONE_101), tone("102", TONE_102));

    let cfg = dir.path().join("podpbx.toml");
    std::fs::write(&cfg, config(dir.path(), &cert)).expect("write config");
    let log = dir.path().join("podpbx.log");
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
    let ready = poll_until(Duration::from_secs(15), || {
        pbx_log().contains("podpbx ready") || !matches!(pbx.0.try_wait(), Ok(None))
    });
    assert!(
        ready && pbx_log().contains("podpbx ready"),
        "podpbx did not start:\n{}",
        pbx_log()
    );

    let phone = |name: &str,
                 ns: &Netns,
                 addr: &str,
                 iface: &str,
                 user: &str,
                 t: &Path,
                 n: u16,
                 enc: &str| {
        Baresip::start(&PhoneConfig {
            name: name.to_owned(),
            netns: ns.name.clone(),
            sip_listen: SocketAddr::new(ip(addr), 5060),
            interface: iface.to_owned(),
            // The AOR says TLS: REGISTER and calls go to the pinned address, port 5061.
            account: account(
                &format!("sip:{user}@[{PINNED6}];transport=tls"),
                &[
                    &format!("auth_pass=tls-pw-{user}"),
                    "answermode=auto",
                    "regint=600",
                    enc,
                ],
            ),
            tone: t.to_path_buf(),
            ctrl_port: 4500 + n,
            rtp_ports: (31000 + 20 * n, 31019 + 20 * n),
            max_secs: 120,
            // The home CA. (baresip 1.0, Debian 12, loads it but does not refuse a server
            // certificate from another CA: checked, it registers anyway. podpbx's own
            // verification of servers is tested against Kamailio and rustls peers.)
            extra: vec![
                format!("sip_cafile\t{}", ca.files.cert.display()),
                "module\tsrtp.so".to_string(),
            ],
        })
    };
    // 101: SRTP only (RTP/SAVP + a=crypto); 102: plain RTP (mediaenc empty = none).
    let mut p101 = phone(
        "tls101",
        &topo.ph1,
        PHONE101,
        "ph1",
        "101",
        &t101,
        1,
        "mediaenc=srtp-mand",
    );
    let mut p102 = phone(
        "tls102",
        &topo.ph2,
        PHONE102,
        "ph2",
        "102",
        &t102,
        2,
        "audio_codecs=pcmu",
    );
    for p in [&mut p101, &mut p102] {
        if let Err(e) = p.wait_registered(Duration::from_secs(15)) {
            panic!(
                "{e}\n{}\n--- podpbx ---\n{}",
                p.logs(),
                tail(&pbx_log(), 60)
            );
        }
    }
    let mut failures = Vec::new();
    // Call 1: plain 102 calls SRTP 101 (our offer to 101 is RTP/SAVP with our key).
    // Call 2: SRTP 101 calls plain 102 (101's key accepted, our answer carries ours).
    for (n, (caller, callee)) in [("102", "101"), ("101", "102")].into_iter().enumerate() {
        let (a, b) = if caller == "102" {
            (&mut p102, &mut p101)
        } else {
            (&mut p101, &mut p102)
        };
        let result = (|| -> Result<(), String> {
            a.command("dial", &format!("sip:{callee}@[{PINNED6}];transport=tls"))?;
            a.wait_event("CALL_ESTABLISHED", n + 1, Duration::from_secs(20))?;
            b.wait_event("CALL_ESTABLISHED", n + 1, Duration::from_secs(5))?;
            std::thread::sleep(TALK);
            a.command("hangup", "")?;
            a.wait_event("CALL_CLOSED", n + 1, Duration::from_secs(10))?;
            b.wait_event("CALL_CLOSED", n + 1, Duration::from_secs(10))?;
            Ok(())
        })();
        if let Err(e) = &result {
            failures.push(format!("call {caller} -> {callee} failed: {e}"));
            break;
        }
        let talk_secs = TALK.as_secs() as usize;
        for (b, expected, own) in [
            (a, tone_of(callee), tone_of(caller)),
            (b, tone_of(caller), tone_of(callee)),
        ] {
            match audio::heard(b, expected, &[own]) {
                Ok(c) if c.windows + 1 >= talk_secs => {
                    eprintln!("{} heard {expected} Hz: {c}", b.name)
                }
                Ok(c) => failures.push(format!(
                    "{}: only {} voiced seconds: {c}",
                    b.name, c.windows
                )),
                Err(e) => failures.push(e),
            }
        }
        let c = &cdrs(&dir.path().join("cdr.jsonl"), n + 1, Duration::from_secs(5))[n];
        let legs = c["legs"].as_array().cloned().unwrap_or_default();
        if c["disposition"] != "answered"
            || legs.len() != 2
            || legs.iter().any(|l| l["transport"] != "tls")
        {
            failures.push(format!("CDR: both legs answered over TLS expected: {c}"));
        }
    }
    // 101 ran SRTP with podpbx's keys (baresip logs its SRTP streams); 102 never saw a key.
    let enabled = p101.logs().matches("SRTP is Enabled").count();
    if enabled < 2 || pbx_log().contains("SRTP: 488") {
        failures.push(format!("101 ran SRTP in {enabled} of 2 calls"));
    }
    if p102.logs().contains("SRTP") || p102.logs().contains("crypto") {
        failures.push("102 (srtp = off) saw SRTP or a key".into());
    }
    let relay_srtp_drops = {
        let (_, m) = common::baresip::in_netns(&topo.pod.name, || {
            common::http_get("127.0.0.1:9060".parse().unwrap(), "/metrics")
        });
        common::metric(&m, "podpbx_relay_dropped_packets_total{reason=\"srtp\"}").unwrap_or(0.0)
    };
    if relay_srtp_drops > 2.0 {
        failures.push(format!(
            "{relay_srtp_drops} SRTP packets dropped by the relay"
        ));
    }
    // The saved bindings name their TLS flow (written at most 100 ms after a change).
    let bindings_file = dir.path().join("bindings.json");
    let bindings = || std::fs::read_to_string(&bindings_file).unwrap_or_default();
    poll_until(Duration::from_secs(3), || {
        bindings().matches("\"tls\"").count() >= 2
    });
    let bindings = bindings();
    if bindings.matches("\"tls\"").count() < 2 {
        failures.push(format!("bindings not over TLS: {bindings}"));
    }
    if !failures.is_empty() {
        panic!(
            "{}\n--- 101 ---\n{}\n--- 102 ---\n{}\n--- podpbx ---\n{}",
            failures.join("\n"),
            tail(&p101.logs(), 30),
            tail(&p102.logs(), 30),
            tail(&pbx_log(), 80)
        );
    }
    drop(p101);
    drop(p102);
    drop(pbx);
    drop(topo);
}
