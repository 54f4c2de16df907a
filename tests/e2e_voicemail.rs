//! Voicemail with real phones (issue 16) on the home topology (`tests/e2e/topology.rs`): the
//! IPv4 doorbell (baresip, playing 852 Hz) calls phone 101 (baresip on the IPv6 LAN, manual
//! answer, so nobody answers); after the ring time podpbx's voicemail answers the doorbell,
//! which leaves its tone as a message and hangs up. Then: the WAV on disk holds 852 Hz
//! (Goertzel); phone 101 gets the MWI NOTIFY ("Messages-Waiting: yes", baresip's mwi module);
//! 101 dials `*97`, sends its PIN and `1` as RFC 4733 digits (baresip `sndcode`) and hears
//! the doorbell's tone in the message; the sidecar then says heard, and the lamp goes off.
//!
//! Needs root (CI runs as root) and baresip (`baresip-core`); `PODPBX_SKIP_E2E=1` skips it.

mod common;

#[path = "e2e/audio.rs"]
mod audio;
#[path = "e2e/topology.rs"]
mod topology;

use common::baresip::{account, Baresip, PhoneConfig};
use common::netns::*;
use common::{ChildGuard, TempDir, BIN};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use topology::*;

const TONE_101: f64 = 697.0;
const TONE_DOOR: f64 = 852.0;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn config(dir: &Path) -> String {
    format!(
        r#"[sip]
ipv6 = "{PINNED6}"
ipv4 = "{PINNED4}"
port = 5060
domain = "home.test"
realm = "home.test"

[admin]
listen = "127.0.0.1:9060"

[storage]
data_dir = "{dir}"

[media]
port_min = 20000
port_max = 20099

[voicemail]
silence_secs = 3

[[users]]
name = "101"
password = "vm-pw-101"
allow_from = ["2001:db8:1234:1::/64"]
voicemail = true
voicemail_pin = "4711"

[[users]]
name = "190"
display_name = "Front door"
identify_by_source = true
allow_from = ["{DOOR}/32"]
doorbell = true

[[dialplan]]
name = "door"
match = {{ caller = "190" }}
action = "ring"
targets = ["101"]
timeout_secs = 3
fallback = [{{ action = "voicemail", mailbox = "101" }}]

[[dialplan]]
name = "extensions"
match = {{ pattern = "_1XX", from = "local" }}
action = "local"
timeout_secs = 20
"#,
        dir = dir.display()
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// The best share of `hz` over half-second windows of a WAV.
fn best_purity(path: &Path, hz: f64) -> f64 {
    let Ok(rec) = audio::read_wav(path) else {
        return 0.0;
    };
    rec.samples
        .chunks(rec.rate as usize / 2)
        .filter(|c| c.len() == rec.rate as usize / 2 && audio::rms(c) > 0.02)
        .map(|c| audio::purity(c, rec.rate, hz))
        .fold(0.0, f64::max)
}

fn messages(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("voicemail/101"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[test]
fn doorbell_leaves_a_message_owner_sees_the_lamp_and_hears_it() {
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
    let topo = Topology::build();
    let dir = TempDir::new("e2e-vm");
    let tone = |name: &str, f: f64| {
        let p = dir.path().join(format!("{name}.wav"));
        audio::write_tone(&p, f, 90, 0.5).expect("write tone");
        p
    };
    let (t101, tdoor) = (tone("101", TONE_101), tone("door", TONE_DOOR));
    let cfg = dir.path().join("podpbx.toml");
    std::fs::write(&cfg, config(dir.path())).expect("write config");
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
    let ready = wait_until(Duration::from_secs(15), || {
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
                 acc: String,
                 t: &Path,
                 n: u16,
                 extra: Vec<String>| {
        Baresip::start(&PhoneConfig {
            name: name.to_owned(),
            netns: ns.name.clone(),
            sip_listen: SocketAddr::new(ip(addr), 5060),
            interface: iface.to_owned(),
            account: acc,
            tone: t.to_path_buf(),
            ctrl_port: 4600 + n,
            rtp_ports: (32000 + 20 * n, 32019 + 20 * n),
            max_secs: 180,
            extra,
        })
    };
    // 101 subscribes to its mailbox (baresip's mwi module) and answers by hand (never here).
    let mut p101 = phone(
        "vm101",
        &topo.ph1,
        PHONE101,
        "ph1",
        account(
            &format!("sip:101@[{PINNED6}]"),
            &["auth_pass=vm-pw-101", "answermode=manual", "regint=600"],
        ),
        &t101,
        1,
        vec!["module_app\tmwi.so".to_string()],
    );
    let mut door = phone(
        "vmdoor",
        &topo.lan4,
        DOOR,
        "lan4up",
        account(
            &format!("sip:190@{PINNED4}"),
            &["answermode=auto", "regint=0"],
        ),
        &tdoor,
        2,
        Vec::new(),
    );
    if let Err(e) = p101.wait_registered(Duration::from_secs(15)) {
        panic!(
            "{e}\n{}\n--- podpbx ---\n{}",
            p101.logs(),
            tail(&pbx_log(), 60)
        );
    }
    let mut failures: Vec<String> = Vec::new();
    let report = |failures: &[String], p101: &Baresip, door: &Baresip| -> String {
        format!(
            "{}\n--- 101 ---\n{}\n--- door ---\n{}\n--- podpbx ---\n{}",
            failures.join("\n"),
            tail(&p101.logs(), 40),
            tail(&door.logs(), 30),
            tail(&pbx_log(), 100)
        )
    };

    // 1. The doorbell rings 101 (not answered), voicemail answers after 3 s: greeting (8.5 s),
    //    beep, then 5 s of the door's tone, and the door hangs up (the message is kept).
    let left = (|| -> Result<(), String> {
        door.command("dial", &format!("sip:101@{PINNED4}"))?;
        p101.wait_event("CALL_INCOMING", 1, Duration::from_secs(10))?;
        door.wait_event("CALL_ESTABLISHED", 1, Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_secs(15));
        door.command("hangup", "")?;
        door.wait_event("CALL_CLOSED", 1, Duration::from_secs(10))?;
        Ok(())
    })();
    if let Err(e) = left {
        panic!("{}", report(&[format!("doorbell call: {e}")], &p101, &door));
    }
    // Normally written within milliseconds of the hang-up; a CI run once saw nothing within 5 s
    // (the voicemail worker had not even logged the session's stop: a starved thread or a slow
    // disk, not a lost message), hence the margin.
    let ok = wait_until(Duration::from_secs(15), || {
        messages(dir.path(), "json").len() == 1
    });
    let wavs = messages(dir.path(), "wav");
    if !ok || wavs.len() != 1 {
        panic!(
            "{}",
            report(&[format!("one message expected: {wavs:?}")], &p101, &door)
        );
    }
    let p = best_purity(&wavs[0], TONE_DOOR);
    if p < 0.8 {
        failures.push(format!(
            "the message on disk does not hold the door's {TONE_DOOR} Hz (best purity {p:.3})"
        ));
    }
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wavs[0].with_extension("json")).unwrap_or_default())
            .unwrap_or_default();
    if sidecar["caller"] != "190"
        || sidecar["caller_name"] != "Front door"
        || sidecar["heard"] != false
    {
        failures.push(format!("sidecar: {sidecar}"));
    }

    // 2. The lamp: an MWI NOTIFY with "yes" reaches the phone.
    let mwi_yes = wait_until(Duration::from_secs(10), || {
        p101.events().iter().any(|e| {
            e["type"] == "MWI_NOTIFY"
                && e["param"]
                    .as_str()
                    .is_some_and(|p| p.contains("Messages-Waiting: yes"))
        })
    });
    if !mwi_yes {
        failures.push(format!(
            "no MWI NOTIFY with a waiting message at 101: events {:?}",
            p101.event_types()
        ));
    }

    // 3. 101 dials *97: PIN, 1 (new messages): "message one", then the door's tone.
    let before = p101.count("CALL_ESTABLISHED");
    let listened = (|| -> Result<(), String> {
        p101.command("dial", &format!("sip:*97@[{PINNED6}]"))?;
        p101.wait_event("CALL_ESTABLISHED", before + 1, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(2));
        p101.command("sndcode", "4711#")?;
        std::thread::sleep(Duration::from_secs(4));
        p101.command("sndcode", "1")?;
        std::thread::sleep(Duration::from_secs(9));
        p101.command("hangup", "")?;
        p101.wait_event("CALL_CLOSED", 2, Duration::from_secs(10))?;
        Ok(())
    })();
    if let Err(e) = listened {
        failures.push(format!("retrieval call: {e}"));
    } else {
        let recs = {
            std::thread::sleep(Duration::from_millis(500));
            p101.new_recordings()
        };
        let best = recs
            .iter()
            .map(|r| best_purity(r, TONE_DOOR))
            .fold(0.0, f64::max);
        if best < 0.8 {
            failures.push(format!(
                "101 did not hear the message's {TONE_DOOR} Hz (best purity {best:.3} in {recs:?})"
            ));
        }
        let heard = wait_until(Duration::from_secs(3), || {
            std::fs::read_to_string(wavs[0].with_extension("json"))
                .is_ok_and(|s| s.contains("\"heard\": true"))
        });
        if !heard {
            failures.push("the message is not marked heard".into());
        }
        // The lamp goes off: a NOTIFY with "no".
        let off = wait_until(Duration::from_secs(5), || {
            p101.events().iter().any(|e| {
                e["type"] == "MWI_NOTIFY"
                    && e["param"]
                        .as_str()
                        .is_some_and(|p| p.contains("Messages-Waiting: no"))
            })
        });
        if !off {
            failures.push("no MWI NOTIFY turning the lamp off".into());
        }
    }
    if !failures.is_empty() {
        panic!("{}", report(&failures, &p101, &door));
    }
    drop(p101);
    drop(door);
    drop(pbx);
    drop(topo);
}
