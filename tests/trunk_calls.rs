//! Black-box trunk call tests: the real podpbx binary, a real Kamailio as the provider
//! (`tests/common/kamailio.rs`: registrar with digest, source-address check, DID routing to the
//! registered contact, 407-challenged outbound calls relayed to a SIPp UAS standing in for the
//! PSTN), SIPp phones and a SIPp "carrier" on the PSTN side.
//!
//! Layout on loopback: podpbx is pinned to `::1` and `127.0.0.1`; its trunk goes to Kamailio
//! over IPv6 (`::1`, Kamailio's only subscriber source) and the trunk's `networks` is `::1/128`,
//! so the local phones and callers use IPv4 (a `::1` phone would count as the provider). The
//! PSTN side (carrier UAC, UAS) signals from `127.0.0.1`, Kamailio's carrier source, with its
//! media on `::1` like the provider-facing leg (the relay anchors each leg in one family).
//!
//! Status mapping for calls out through a trunk (what the phone gets):
//! * the provider's `486`/`600` (busy), `404`/`484`/`604` (number unknown), `480`, `403`,
//!   `603`, other `4xx`/`6xx`: passed through;
//! * `5xx` (the provider or the far end failed; Kamailio turns a relayed `503` into `500`),
//!   `408` and no answer at all (Timer B), `401`/`407` that the trunk credentials do not
//!   satisfy: `503 Service Unavailable` (a trunk problem, not the callee's answer);
//! * trunk not registered (e.g. the provider refuses our source address with `403`, or wrong
//!   credentials): `503` at once, nothing is sent to the provider.

mod common;

use common::kamailio::{Account, Kamailio, ProviderConfig, Source};
use common::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "trunkuser";
const PASSWORD: &str = "Tr0nk-secret";
const DID: &str = "4930123456";
/// A second number on the same account, ringing another phone.
const DID2: &str = "4930123457";
const CALLER_ID: &str = "+4930123";
const PSTN_CALLER: &str = "+4917012345";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// The provider: our account with its DID, podpbx (`::1`) as subscriber, `127.0.0.1` as carrier.
fn provider(f: impl FnOnce(&mut ProviderConfig)) -> Kamailio {
    let mut cfg = ProviderConfig {
        accounts: vec![Account::new(USER, PASSWORD).did(DID).did(DID2)],
        subscribers: vec![Source::host(ip("::1"))],
        carriers: vec![Source::host(ip("127.0.0.1"))],
        ..ProviderConfig::default()
    };
    f(&mut cfg);
    Kamailio::start(&cfg)
}

/// Users 101 (caller), 102 and 103 (phones), trunk `provider` to Kamailio on `kam_port`, the
/// DIDs ringing 102 and 103, `0...` out through the trunk as `+49...`; `extra` is appended.
fn pbx_config(kam_port: u16, extra: &str) -> String {
    format!(
        r#"
[security]
trusted_networks = ["127.0.0.0/8", "::1/128"]

[[users]]
name = "101"
password = "pw-101"

[[users]]
name = "102"
password = "pw-102"

[[users]]
name = "103"
password = "pw-103"

[[trunks]]
name = "provider"
host = "::1"
port = {kam_port}
transport = "udp"
username = "{USER}"
password = "{PASSWORD}"
expiry_secs = 120
dids = ["{DID}", "{DID2}"]
caller_id = "{CALLER_ID}"
networks = ["::1/128"]

[[dialplan]]
name = "did"
match = {{ did = "{DID}" }}
action = "ring"
targets = ["102"]
timeout_secs = 10

[[dialplan]]
name = "did2"
match = {{ did = "{DID2}" }}
action = "ring"
targets = ["103"]
timeout_secs = 10

[[dialplan]]
name = "national"
match = {{ prefix = "0", from = "local" }}
action = "trunk"
trunk = "provider"
strip = 1
prepend = "+49"

[[dialplan]]
name = "ext"
match = {{ pattern = "_1XX", from = "local" }}
action = "local"
timeout_secs = 5
{extra}"#
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Waits until Kamailio holds our binding and podpbx reports the trunk registered.
fn wait_registered(pbx: &Pbx, kam: &Kamailio, trunk: &str) {
    wait_for("provider binding", Duration::from_secs(10), || {
        kam.binding(USER).is_some()
    });
    let series = format!("podpbx_trunk_registered{{trunk=\"{trunk}\"}}");
    wait_for("trunk registered in podpbx", Duration::from_secs(5), || {
        metric(&http_get(pbx.admin, "/metrics").1, &series) == Some(1.0)
    });
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn cdr_file(pbx: &Pbx) -> std::path::PathBuf {
    pbx.dir.path().join("cdr.jsonl")
}

/// Kamailio's one-line-per-request log entries for `method` (see route[LOG] in provider.cfg).
fn provider_requests(kam: &Kamailio, method: &str) -> Vec<String> {
    let needle = format!("provider: {method} ");
    kam.log_text()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Runs the SIPp caller as 101 (digest through podpbx's 407) over IPv4, dialling `number`.
fn call(pbx: &Pbx, scenario: &str, number: &str, extra: &[&str]) -> SippRun {
    let mut args = vec![
        "-s",
        number,
        "-au",
        "101",
        "-ap",
        "pw-101",
        "-key",
        "caller",
        "101",
        "-trace_logs",
    ];
    args.extend_from_slice(extra);
    sipp(scenario, pbx.v4(), "u1", &args)
}

/// The PSTN calls our DID: the SIPp carrier (`trunk_carrier_uac.xml`, media on `media_ip`) sends
/// it to the provider, which delivers it to podpbx; phone 102, registered from `phone_addr`,
/// answers; the carrier hangs up after 500 ms. Asserts both SIPp runs passed; returns the
/// carrier's run and the phone's log.
fn inbound_did_call(
    pbx: &Pbx,
    kam: &Kamailio,
    phone_addr: SocketAddr,
    media_ip: &str,
) -> (SippRun, String) {
    let phone = Phone::start(phone_addr, "102", "pw-102", "call_phone_answer.xml", &[]);
    let run = sipp(
        "trunk_carrier_uac.xml",
        kam.addr_v4(),
        "u1",
        &[
            "-s",
            DID,
            "-key",
            "caller",
            PSTN_CALLER,
            "-d",
            "500",
            "-mi",
            media_ip,
        ],
    );
    let (phone_ok, logs) = phone.finish(Duration::from_secs(10));
    assert!(
        run.ok && phone_ok,
        "carrier:\n{}\n--- phone ---\n{logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    (run, logs)
}

/// True while some socket is bound to UDP `port` (from /proc/net/udp{,6}: the local address
/// column is `HEXADDR:HEXPORT`).
fn udp_bound(port: u16) -> bool {
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        let table = std::fs::read_to_string(f).unwrap_or_default();
        table.lines().skip(1).any(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port)
        })
    })
}

/// A SIPp UAS (the PSTN behind the provider) running in the background on `addr`.
struct Uas {
    child: Option<ChildGuard>,
    dir: TempDir,
}

impl Uas {
    /// Starts `scenario` for `calls` calls.
    fn start(scenario: &str, addr: SocketAddr, calls: u32, extra: &[&str]) -> Uas {
        let dir = TempDir::new("uas");
        let media_port = free_media_port(addr.ip(), addr.port());
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(root().join("tests/sipp").join(scenario))
            .args(["-i", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-mp", &media_port.to_string(), "-t", "u1", "-nostdin"])
            .args(["-m", &calls.to_string()])
            .args(["-timeout", "30s", "-timeout_error"])
            .args(["-trace_msg", "-trace_logs", "-trace_err"])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sipp (is the sip-tester package installed?)");
        let uas = Uas {
            child: Some(ChildGuard(child)),
            dir,
        };
        wait_for("the SIPp UAS to bind", Duration::from_secs(5), || {
            udp_bound(addr.port())
        });
        uas
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("\n--- {} ---\n", p.display()));
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        out
    }

    /// Waits (bounded) for the scenario to end; true if SIPp exited with success.
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let deadline = Instant::now() + limit;
        let mut ok = false;
        if let Some(c) = self.child.as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(st)) = c.0.try_wait() {
                    ok = st.success();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(self.child.take());
        (ok, self.logs())
    }
}

/// Reads datagrams until a final response (bounded); returns it.
fn final_response(peer: &UdpPeer) -> Vec<u8> {
    for _ in 0..10 {
        let Some(m) = peer.recv() else { break };
        if status(&m) >= 200 {
            return m;
        }
    }
    panic!("no final response");
}

/// ACK for a non-2xx final response to `invite` (same branch, the response's To).
fn ack_for(invite: &str, resp: &[u8]) -> String {
    let line = |name: &str| {
        invite
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    let ruri = invite
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default();
    let to = header(resp, "To").unwrap_or_default();
    format!(
        "ACK {ruri} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\nTo: {to}\r\n{}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        line("Via:"),
        line("From:"),
        line("Call-ID:"),
    )
}

/// Case 1: a local phone calls out through the trunk; podpbx answers the provider's 407 with
/// the trunk credentials, the number is rewritten, the caller ID set, media anchored, the ACK
/// and BYE follow the provider's Record-Route.
#[test]
fn outbound_call_through_the_provider() {
    let uas_addr = SocketAddr::new(ip("127.0.0.1"), free_port());
    let kam = provider(|c| c.uas = Some(uas_addr));
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_registered(&pbx, &kam, "provider");
    let uas = Uas::start("trunk_uas.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac.xml", "0301234567", &["-d", "500"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    // The number rewrite (strip 1, prepend +49) and the trunk's caller ID reached the PSTN.
    assert!(
        uas_logs.contains("ruri_user=+49301234567 to_user=+49301234567"),
        "{uas_logs}"
    );
    assert!(
        uas_logs.contains(&format!("from_user={CALLER_ID} ")),
        "{uas_logs}"
    );
    // The INVITE that got through is the authenticated re-send: same dialog, CSeq + 1.
    assert!(uas_logs.contains("cseq=2 "), "{uas_logs}");
    // Media anchored: the IPv4 caller's SDP reaches the IPv6 trunk as our relay's address.
    assert!(
        uas_logs.contains("UAS-SDP o=podpbx ") && uas_logs.contains("| c=IN IP6 ::1 |"),
        "SDP towards the provider carries our address:\n{uas_logs}"
    );
    assert!(run.output.contains("c=IN IP4 127.0.0.1"), "{}", run.output);
    assert!(
        !pbx.log_text().contains("relay set_remote"),
        "the relay took both legs' media addresses:\n{}",
        tail(&pbx.log_text())
    );
    // What the provider saw: the INVITE twice (407, then with credentials), ACK and BYE, all
    // from our pinned IPv6 address and SIP port.
    let from_us = format!("from ::1:{} ", pbx.port);
    let invites = provider_requests(&kam, "INVITE");
    assert_eq!(invites.len(), 2, "{invites:?}");
    for l in invites
        .iter()
        .chain(&provider_requests(&kam, "ACK"))
        .chain(&provider_requests(&kam, "BYE"))
    {
        assert!(l.contains(&from_us), "sent from the pinned address: {l}");
    }
    assert!(
        invites[0].contains("INVITE sip:+49301234567@[::1]:"),
        "{invites:?}"
    );
    assert!(
        provider_requests(&kam, "ACK")
            .iter()
            .any(|l| l.contains("sip:uas@127.0.0.1")),
        "the ACK for the 2xx goes through the provider to the UAS's Contact:\n{}",
        kam.log_text()
    );
    assert_eq!(provider_requests(&kam, "BYE").len(), 1);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    let c = &cdrs[0];
    assert_eq!(c["disposition"], "answered", "{c}");
    assert_eq!(c["caller"], "101");
    assert_eq!(c["callee"], "0301234567");
    assert_eq!(c["rule"], "national");
    assert_eq!(c["answered_by"], "provider");
    assert_eq!(c["hangup_by"], "caller");
    let legs = c["legs"].as_array().expect("legs");
    assert_eq!(legs[1]["remote"], format!("[::1]:{}", kam.port), "{c}");
    assert_eq!(legs[1]["local"], format!("[::1]:{}", pbx.port), "{c}");

    // Second call: the far end hangs up; its BYE comes through the provider to our Contact.
    let uas = Uas::start("trunk_uas_bye.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac_wait_bye.xml", "0301234567", &[]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller gets the far end's BYE:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    assert!(
        provider_requests(&kam, "BYE")
            .iter()
            .any(|l| l.contains(&format!(
                "BYE sip:podpbx@[::1]:{} from 127.0.0.1:",
                pbx.port
            ))),
        "{}",
        kam.log_text()
    );
    let cdrs = common::cdrs(&cdr_file(&pbx), 2, Duration::from_secs(5));
    assert_eq!(cdrs[1]["hangup_by"], "callee", "{}", cdrs[1]);
    assert_eq!(cdrs[1]["disposition"], "answered", "{}", cdrs[1]);
}

/// Case 2: the PSTN calls our DID at the provider; the provider delivers it to our registered
/// contact, the dialplan rings a registered phone, which answers; BYE from the PSTN side.
#[test]
fn inbound_did_call_rings_a_registered_phone() {
    let kam = provider(|_| {});
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_registered(&pbx, &kam, "provider");
    let (run, logs) = inbound_did_call(&pbx, &kam, pbx.v4(), "::1");
    // The phone sees the PSTN caller's number and our IPv4 media address.
    assert!(
        logs.contains(&format!("<sip:{PSTN_CALLER}@")),
        "caller ID passed to the phone:\n{logs}"
    );
    assert!(logs.contains("c=IN IP4 127.0.0.1"), "{logs}");
    assert!(
        run.output.contains("c=IN IP6 ::1") && !pbx.log_text().contains("relay set_remote"),
        "the provider side's media anchored on IPv6:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    let c = &cdrs[0];
    assert_eq!(c["disposition"], "answered", "{c}");
    assert_eq!(c["trunk"], "provider", "{c}");
    assert_eq!(c["callee"], DID, "{c}");
    assert_eq!(c["caller"], PSTN_CALLER, "{c}");
    assert_eq!(c["rule"], "did", "{c}");
    assert_eq!(c["answered_by"], "102", "{c}");
    assert_eq!(c["hangup_by"], "caller", "{c}");
    let legs = c["legs"].as_array().expect("legs");
    assert_eq!(legs[0]["party"], "provider", "{c}");
    assert_eq!(legs[0]["remote"], format!("[::1]:{}", kam.port), "{c}");

    // Second call, to the other DID: the phone hangs up; podpbx's BYE follows the provider's
    // Record-Route set.
    let phone = Phone::start(pbx.v4(), "103", "pw-103", "call_phone_bye.xml", &[]);
    let run = sipp(
        "trunk_carrier_uac_wait_bye.xml",
        kam.addr_v4(),
        "u1",
        &["-s", DID2, "-key", "caller", PSTN_CALLER, "-mi", "::1"],
    );
    let (phone_ok, logs) = phone.finish(Duration::from_secs(10));
    assert!(
        run.ok && phone_ok,
        "carrier gets the phone's BYE:\n{}\n--- phone ---\n{logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    let cdrs = common::cdrs(&cdr_file(&pbx), 2, Duration::from_secs(5));
    let c = &cdrs[1];
    assert_eq!(c["hangup_by"], "callee", "{c}");
    assert_eq!(c["trunk"], "provider", "{c}");
    assert_eq!(c["callee"], DID2, "{c}");
    assert_eq!(c["rule"], "did2", "{c}");
    assert_eq!(c["answered_by"], "103", "{c}");
}

/// Case 3: what the far end or the provider answers maps to a clear status for the phone.
#[test]
fn provider_failures_map_to_clear_statuses() {
    let uas_addr = SocketAddr::new(ip("127.0.0.1"), free_port());
    let kam = provider(|c| c.uas = Some(uas_addr));
    // A second provider account without a route to the PSTN (it answers 503 itself).
    let kam2 = provider(|_| {});
    let extra = format!(
        r#"
[[trunks]]
name = "nopstn"
host = "::1"
port = {}
username = "{USER}"
password = "{PASSWORD}"
expiry_secs = 120

[[dialplan]]
name = "via-nopstn"
match = {{ prefix = "8", from = "local" }}
action = "trunk"
trunk = "nopstn"
strip = 1
prepend = "+49"
"#,
        kam2.port
    );
    let pbx = Pbx::start(&pbx_config(kam.port, &extra));
    wait_registered(&pbx, &kam, "provider");
    wait_registered(&pbx, &kam2, "nopstn");
    // One UAS answers four calls with the status their number ends in.
    let uas = Uas::start("trunk_uas_fail.xml", uas_addr, 4, &[]);
    for (number, expect) in [
        ("0301234486", "FINAL-486"),
        ("0301234404", "FINAL-404"),
        // Kamailio relays the far end's 503 as 500 (RFC 3261 §16.7); either is a 503 here.
        ("0301234503", "FINAL-503"),
    ] {
        let run = call(&pbx, "call_uac_fail.xml", number, &[]);
        assert!(
            run.output.contains(expect),
            "{number} -> {expect}:\n{}\n--- UAS ---\n{}\n--- podpbx ---\n{}",
            run.output,
            uas.logs(),
            tail(&pbx.log_text())
        );
    }
    // The caller gives up while the far end rings: the CANCEL goes through the provider.
    let run = call(&pbx, "call_uac_cancel.xml", "0301234487", &[]);
    assert!(
        run.ok,
        "caller: 200 for CANCEL, 487:\n{}\n--- UAS ---\n{}\n--- podpbx ---\n{}",
        run.output,
        uas.logs(),
        tail(&pbx.log_text())
    );
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(uas_ok, "the UAS saw four calls and their ACKs:\n{uas_logs}");
    for code in ["UAS-486", "UAS-404", "UAS-503", "UAS-487"] {
        assert!(uas_logs.contains(code), "{uas_logs}");
    }
    let run = call(&pbx, "call_uac_fail.xml", "8301234567", &[]);
    assert!(
        run.output.contains("FINAL-503"),
        "provider without a route answers 503 -> 503:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    assert_eq!(provider_requests(&kam2, "INVITE").len(), 2, "407, then 503");
    let cdrs = cdrs(&cdr_file(&pbx), 5, Duration::from_secs(5));
    let d: Vec<(&str, u64)> = cdrs
        .iter()
        .map(|c| {
            (
                c["disposition"].as_str().unwrap_or(""),
                c["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        d,
        vec![
            ("busy", 486),
            ("rejected", 404),
            ("failed", 503),
            ("cancelled", 487),
            ("failed", 503)
        ]
    );
}

/// Cases 3 and 5: a provider that refuses our source address (403 to the REGISTER) leaves the
/// trunk down; calls out get 503 at once and nothing reaches the provider.
#[test]
fn refused_source_address_leaves_the_trunk_down_and_calls_get_503_unsent() {
    // The provider's access list holds some other address, not our ::1.
    let kam = provider(|c| c.subscribers = vec![Source::host(ip("127.0.0.9"))]);
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_for("the provider's 403", Duration::from_secs(10), || {
        kam.log_text().contains("refused REGISTER from ::1")
    });
    wait_for(
        "trunk state credentials-rejected",
        Duration::from_secs(5),
        || {
            let (_, out, _) = ctl(&["--admin", &pbx.admin.to_string(), "trunks"]);
            out.contains("credentials-rejected") && out.contains("403")
        },
    );
    let metrics = http_get(pbx.admin, "/metrics").1;
    assert_eq!(
        metric(&metrics, "podpbx_trunk_registered{trunk=\"provider\"}"),
        Some(0.0)
    );
    assert_eq!(http_get(pbx.admin, "/readyz").0, 503);
    let started = Instant::now();
    let run = call(&pbx, "call_uac_fail.xml", "0301234567", &[]);
    assert!(
        run.output.contains("FINAL-503"),
        "trunk down -> 503:\n{}\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    assert!(
        provider_requests(&kam, "INVITE").is_empty(),
        "nothing sent to the provider:\n{}",
        kam.log_text()
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["disposition"], "failed", "{}", cdrs[0]);
}

/// Case 4: no toll fraud. An unauthenticated caller cannot reach the trunk (407 and nothing
/// else), a DID call from an address that is not the provider's is not a trunk call, and a
/// call from the provider cannot go back out through the trunk.
#[test]
fn toll_fraud_guard() {
    // The PSTN stand-in is a plain socket: nothing may ever arrive there.
    let pstn = UdpSocket::bind("127.0.0.1:0").expect("bind pstn watch socket");
    pstn.set_nonblocking(true).expect("nonblocking");
    let pstn_addr = pstn.local_addr().expect("local addr");
    let kam = provider(|c| c.uas = Some(pstn_addr));
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_registered(&pbx, &kam, "provider");

    // 1. An external number from a non-trunk source without credentials: 407, then silence.
    let v4 = UdpPeer::new(pbx.v4());
    let invite = request(
        "INVITE",
        &format!("sip:0301234567@{}", pbx.v4()),
        v4.local(),
        "UDP",
        "z9hG4bKfraud1",
        &format!("Contact: <sip:attacker@{}>\r\n", v4.local()),
    );
    v4.send(invite.as_bytes());
    let resp = final_response(&v4);
    assert_eq!(status(&resp), 407, "{}", String::from_utf8_lossy(&resp));
    v4.send(ack_for(&invite, &resp).as_bytes());
    v4.expect_silence(Duration::from_millis(1500));

    // 2. Our DID in the Request-URI, but from an address outside the trunk's networks: not
    //    a trunk call, so it has to authenticate like anyone else.
    let invite = request(
        "INVITE",
        &format!("sip:{DID}@{}", pbx.v4()),
        v4.local(),
        "UDP",
        "z9hG4bKfraud2",
        &format!("Contact: <sip:{PSTN_CALLER}@{}>\r\n", v4.local()),
    );
    v4.send(invite.as_bytes());
    let resp = final_response(&v4);
    assert_eq!(
        status(&resp),
        407,
        "a claimed trunk call from elsewhere is challenged: {}",
        String::from_utf8_lossy(&resp)
    );
    v4.send(ack_for(&invite, &resp).as_bytes());

    // 3. From the provider's network to an external number: the dialplan sends only local
    //    callers out (no hairpin through the trunk).
    let v6 = UdpPeer::new(pbx.v6());
    let invite = request(
        "INVITE",
        &format!("sip:0301234567@{}", pbx.v6()),
        v6.local(),
        "UDP",
        "z9hG4bKfraud3",
        &format!("Contact: <sip:x@{}>\r\n", v6.local()),
    );
    v6.send(invite.as_bytes());
    let resp = final_response(&v6);
    assert_eq!(status(&resp), 404, "{}", String::from_utf8_lossy(&resp));
    v6.send(ack_for(&invite, &resp).as_bytes());

    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 2048];
    assert!(
        pstn.recv_from(&mut buf).is_err(),
        "nothing reached the PSTN"
    );
    assert!(
        provider_requests(&kam, "INVITE").is_empty(),
        "the provider saw no INVITE:\n{}",
        kam.log_text()
    );
    let log = pbx.log_text();
    assert!(
        !log.contains("new call"),
        "no call was set up:\n{}",
        tail(&log)
    );
}

/// Case 5: the trunk over TLS (RFC 3261 §26) to Kamailio's TLS module. podpbx verifies the
/// provider's certificate (a private CA in `[tls] ca_file`, the trunk's host `::1` in its
/// subjectAltName), registers over one TLS connection and reuses it for an outbound call; the
/// provider delivers a DID call to our Contact (`;transport=tls`) over TLS too.
#[test]
fn calls_over_a_tls_trunk_both_ways() {
    use common::tls::Ca;
    let pki = TempDir::new("trunk-tls");
    let ca = Ca::new(&pki, "provider-ca");
    let kam_cert = ca.issue("kamailio", &["IP:::1", "IP:127.0.0.1"], 2);
    let pbx_cert = ca.issue("podpbx", &["IP:::1", "IP:127.0.0.1"], 2);
    let uas_addr = SocketAddr::new(ip("127.0.0.1"), free_port());
    let kam = provider(|c| {
        c.uas = Some(uas_addr);
        c.tls = Some((kam_cert.cert.clone(), kam_cert.key.clone()));
    });
    let tls_port = kam.tls_port.expect("Kamailio TLS port");
    let port = free_port();
    let pbx_tls = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .unwrap();
    let config = format!(
        "[sip]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\nport = {port}\n\
         transports = [\"udp\", \"tcp\", \"tls\"]\n\
         [tls]\nport = {pbx_tls}\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n{}",
        pbx_cert.cert.display(),
        pbx_cert.key.display(),
        ca.files.cert.display(),
        pbx_config(tls_port, "").replace("transport = \"udp\"", "transport = \"tls\"")
    );
    let pbx = Pbx::start_with_config(&config, port);
    wait_registered(&pbx, &kam, "provider");
    let binding = kam.binding(USER).expect("binding");
    assert!(
        binding
            .contact
            .contains(&format!(":{pbx_tls};transport=tls")),
        "our Contact names the TLS listener: {binding:?}"
    );
    let registers: Vec<String> = provider_requests(&kam, "REGISTER")
        .into_iter()
        .filter(|l| l.contains(" cseq "))
        .collect();
    assert!(
        !registers.is_empty() && registers.iter().all(|l| l.ends_with("proto tls")),
        "{registers:?}"
    );

    // Outbound: SIPp caller over UDP to podpbx, podpbx to the provider over TLS.
    let uas = Uas::start("trunk_uas.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac.xml", "0301234567", &["-d", "500"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    let invites = provider_requests(&kam, "INVITE");
    assert_eq!(invites.len(), 2, "{invites:?}");
    for l in invites.iter().chain(&provider_requests(&kam, "BYE")) {
        assert!(l.ends_with("proto tls"), "over TLS: {l}");
    }
    // One connection for the registration and the call (RFC 3261 §18: reuse).
    let sources: std::collections::BTreeSet<&str> = registers
        .iter()
        .chain(&invites)
        .filter_map(|l| l.split(" from ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(sources.len(), 1, "one TLS connection: {sources:?}");

    // Inbound: the PSTN calls our DID; the provider reaches our Contact over TLS.
    inbound_did_call(&pbx, &kam, pbx.v4(), "::1");
    let cdrs = cdrs(&cdr_file(&pbx), 2, Duration::from_secs(5));
    assert_eq!(cdrs[1]["answered_by"], "102", "{}", cdrs[1]);
    let legs = cdrs[1]["legs"].as_array().expect("legs");
    assert_eq!(legs[0]["party"], "provider", "{}", cdrs[1]);
    assert_eq!(legs[0]["transport"], "tls", "{}", cdrs[1]);
}

/// RFC 3262 on a trunk: the provider answers with a reliable 183 with SDP (early media) and
/// wants a PRACK; the caller (a plain phone) must not be asked for one. The provider is a SIPp
/// UAS reached directly (an IP-authenticated trunk): SIPp cannot answer an INVITE after a PRACK
/// through a proxy (it would need the INVITE's whole Via stack).
#[test]
fn provider_with_reliable_183_gets_its_prack_and_the_caller_a_plain_183() {
    let uas_addr = SocketAddr::new(ip("::1"), free_port());
    let extra = format!(
        "[[trunks]]\nname = \"direct\"\nhost = \"::1\"\nport = {}\nregister = false\n\n\
         [[dialplan]]\nname = \"direct\"\nmatch = {{ prefix = \"9\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"direct\"\n",
        uas_addr.port()
    );
    let pbx = Pbx::start(&pbx_config(free_port(), &extra));
    let uas = Uas::start("uas_100rel.xml", uas_addr, 1, &["-rtp_echo"]);
    let run = call(&pbx, "call_uac.xml", "9301234567", &["-d", "300"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text()),
    );
    // Our PRACK acknowledged the provider's 183 (RSeq 4711, the INVITE's CSeq).
    assert!(
        uas_logs.contains("UAS100-PRACK rack=4711 1 INVITE"),
        "{uas_logs}"
    );
    // The caller got the early media SDP in a 183 without Require/RSeq.
    let out = &run.output;
    let p183 = out.find("SIP/2.0 183").expect("183 to the caller");
    let head = &out[p183..p183 + out[p183..].find("\r\n\r\n").unwrap_or(0)];
    assert!(
        !head.contains("RSeq") && !head.contains("Require"),
        "{head}"
    );
    assert!(out[p183..].contains("c=IN IP4 127.0.0.1"), "{out}");
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
}

/// Two trunks in one rule: the preferred one (priority 1) answers 503, the call goes out through
/// the next (priority 2) with the same number, and the caller only sees the answer.
#[test]
fn outbound_call_fails_over_to_the_next_trunk_by_priority() {
    let first = SocketAddr::new(ip("::1"), free_port());
    let second = SocketAddr::new(ip("::1"), free_port());
    let extra = format!(
        "[[trunks]]\nname = \"backup\"\nhost = \"::1\"\nport = {}\nregister = false\npriority = 2\n\n\
         [[trunks]]\nname = \"main\"\nhost = \"::1\"\nport = {}\nregister = false\npriority = 1\n\n\
         [[dialplan]]\nname = \"out2\"\nmatch = {{ prefix = \"9\", from = \"local\" }}\naction = \"trunk\"\ntrunk = [\"backup\", \"main\"]\n",
        second.port(),
        first.port()
    );
    let pbx = Pbx::start(&pbx_config(free_port(), &extra));
    let failing = Uas::start("trunk_uas_fail.xml", first, 1, &[]);
    let answering = Uas::start("trunk_uas.xml", second, 1, &[]);
    let run = call(&pbx, "call_uac.xml", "930123503", &["-d", "300"]);
    let (f_ok, f_logs) = failing.finish(Duration::from_secs(10));
    let (a_ok, a_logs) = answering.finish(Duration::from_secs(10));
    assert!(
        run.ok && f_ok && a_ok,
        "caller:\n{}\n--- main ---\n{f_logs}\n--- backup ---\n{a_logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    assert!(f_logs.contains("UAS-503"), "{f_logs}");
    assert!(
        a_logs.contains("ruri_user=930123503 "),
        "same number: {a_logs}"
    );
    assert!(!run.output.contains("SIP/2.0 503"), "{}", run.output);
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    let c = &cdrs[0];
    assert_eq!(c["disposition"], "answered", "{c}");
    assert_eq!(c["answered_by"], "backup", "{c}");
}

/// The provider signals over IPv6 but its media is IPv4 (the PSTN side's SDP says
/// `c=IN IP4`): podpbx anchors that leg on its IPv4 address, so the answer the provider gets
/// says `c=IN IP4 127.0.0.1`, while the IPv6 phone's side stays IPv6.
#[test]
fn provider_media_family_follows_its_sdp_not_its_signalling() {
    let kam = provider(|_| {});
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_registered(&pbx, &kam, "provider");
    let (run, logs) = inbound_did_call(&pbx, &kam, pbx.v6(), "127.0.0.1");
    // Kamailio reached podpbx over IPv6 with the IPv4 SDP; the answer is anchored on IPv4.
    let ok = run
        .output
        .find("SIP/2.0 200")
        .map(|i| &run.output[i..])
        .unwrap_or("");
    assert!(ok.contains("c=IN IP4 127.0.0.1"), "{}", run.output);
    assert!(
        logs.contains("c=IN IP6 ::1"),
        "the IPv6 phone's side: {logs}"
    );
}

/// A provider's 302 is followed through the same trunk (its number only, never the host it
/// names), and the caller hears only the answer.
#[test]
fn a_providers_302_is_followed_through_the_same_trunk() {
    let uas_addr = SocketAddr::new(ip("::1"), free_port());
    let extra = format!(
        "[[trunks]]\nname = \"direct\"\nhost = \"::1\"\nport = {}\nregister = false\n\n\
         [[dialplan]]\nname = \"direct\"\nmatch = {{ prefix = \"9\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"direct\"\n",
        uas_addr.port()
    );
    let pbx = Pbx::start(&pbx_config(free_port(), &extra));
    let uas = Uas::start("uas_redirect.xml", uas_addr, 2, &[]);
    let run = call(&pbx, "call_uac.xml", "930123", &["-d", "300"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text()),
    );
    assert!(
        uas_logs.contains("UASR-302") && uas_logs.contains("UASR-ANSWERED"),
        "{uas_logs}"
    );
    assert!(!run.output.contains("SIP/2.0 302"), "{}", run.output);
    // Both INVITEs reached the trunk's address (the second after the 302): the host the
    // Contact named (127.0.0.1:9) got nothing.
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
}

/// Issue 16: a user's call forwarding to an external number goes out through the trunk rules
/// and reaches the provider (and the PSTN behind it) with `Diversion` and `History-Info`
/// naming the forwarding user; a user the dialplan does not let call out cannot forward out.
#[test]
fn forwarding_to_the_trunk_reaches_the_provider_with_diversion() {
    let uas_addr = SocketAddr::new(ip("127.0.0.1"), free_port());
    let kam = provider(|c| c.uas = Some(uas_addr));
    // 102 forwards every call to 0301234567; the national rule is for 101 and 102 only.
    let cfg = pbx_config(kam.port, "")
        .replace(
            "[[users]]\nname = \"102\"\npassword = \"pw-102\"",
            "[[users]]\nname = \"102\"\npassword = \"pw-102\"\nforward = { always = \"0301234567\" }",
        )
        .replace(
            "match = { prefix = \"0\", from = \"local\" }",
            "match = { prefix = \"0\", caller = \"callers\" }",
        );
    let cfg = format!("{cfg}\n[[groups]]\nname = \"callers\"\nmembers = [\"101\", \"102\"]\n");
    let pbx = Pbx::start(&cfg);
    wait_registered(&pbx, &kam, "provider");
    let uas = Uas::start("trunk_uas_diverted.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac.xml", "102", &["-d", "500"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    assert!(uas_logs.contains("ruri_user=+49301234567 "), "{uas_logs}");
    assert!(
        uas_logs.contains("UAS-DIVERSION <sip:102@podpbx.local>;reason=unconditional;counter=1"),
        "{uas_logs}"
    );
    assert!(
        uas_logs.contains("UAS-HISTORY <sip:102@podpbx.local>;index=1,<sip:+49301234567@")
            && uas_logs.contains("cause%3D302>;index=1.1"),
        "{uas_logs}"
    );
    let cdrs = cdrs(&cdr_file(&pbx), 1, Duration::from_secs(5));
    assert_eq!(cdrs[0]["callee"], "102", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["answered_by"], "provider", "{}", cdrs[0]);
    // 103 may not call out, so it may not forward out: the feature code is refused.
    let (code, _, err) = ctl(&[
        "--admin",
        &pbx.admin.to_string(),
        "forward",
        "103",
        "always",
        "0301234567",
    ]);
    assert_eq!(code, Some(1), "refused: {err}");
    assert!(err.contains("103 may not forward to `0301234567`"), "{err}");
}

/// RFC 3311 in an early dialog: the provider moves its early media with an UPDATE after its
/// reliable 183; podpbx answers it (the relay follows) and the call goes on.
#[test]
fn a_providers_early_update_is_answered_and_the_call_completes() {
    let uas_addr = SocketAddr::new(ip("::1"), free_port());
    let extra = format!(
        "[[trunks]]\nname = \"direct\"\nhost = \"::1\"\nport = {}\nregister = false\n\n\
         [[dialplan]]\nname = \"direct\"\nmatch = {{ prefix = \"9\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"direct\"\n",
        uas_addr.port()
    );
    let pbx = Pbx::start(&pbx_config(free_port(), &extra));
    let uas = Uas::start("uas_update.xml", uas_addr, 1, &[]);
    let run = call(&pbx, "call_uac.xml", "930123", &["-d", "300"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text()),
    );
    assert!(uas_logs.contains("UASUPD-OK"), "{uas_logs}");
    assert!(
        !run.output.contains("UPDATE sip:"),
        "nothing relayed to the caller"
    );
}

/// RFC 3262 through the provider's proxy: the PSTN side (behind Kamailio) answers with a
/// reliable 183 with SDP; podpbx's PRACK follows the provider's Record-Route, the caller gets a
/// plain 183 and the call completes.
#[test]
fn reliable_183_through_the_providers_proxy() {
    let uas_addr = SocketAddr::new(ip("127.0.0.1"), free_port());
    let kam = provider(|c| c.uas = Some(uas_addr));
    let pbx = Pbx::start(&pbx_config(kam.port, ""));
    wait_registered(&pbx, &kam, "provider");
    let uas = Uas::start("uas_100rel_proxied.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac.xml", "0301234567", &["-d", "300"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- UAS ---\n{uas_logs}\n--- podpbx ---\n{}\n--- provider ---\n{}",
        run.output,
        tail(&pbx.log_text()),
        tail(&kam.log_text())
    );
    assert!(
        uas_logs.contains("UAS100-PRACK rack=4711 2 INVITE"),
        "{uas_logs}"
    );
    assert_eq!(
        provider_requests(&kam, "PRACK").len(),
        1,
        "{}",
        kam.log_text()
    );
}

/// Issue #15, from the provider: a trunk with `trust_pai` shows the caller of its
/// P-Asserted-Identity to the phone, and with `alert_info` passes its Alert-Info without the
/// auto-answer parts; Call-Info and PAI never reach the phone.
#[test]
fn a_providers_asserted_caller_reaches_the_phone_but_never_its_auto_answer() {
    let config = pbx_config(free_port(), "").replace(
        "networks = [\"::1/128\"]\n",
        "networks = [\"::1/128\"]\ntrust_pai = true\nalert_info = true\n",
    );
    let pbx = Pbx::start(&config);
    let phone = Phone::start(pbx.v4(), "102", "pw-102", "call_phone_answer.xml", &[]);
    // The provider (a ::1 source, the trunk's networks) calls the DID directly.
    let run = sipp(
        "trunk_pai_uac.xml",
        pbx.v6(),
        "u1",
        &[
            "-s",
            DID,
            "-key",
            "caller",
            PSTN_CALLER,
            "-d",
            "300",
            "-mi",
            "::1",
        ],
    );
    let (phone_ok, logs) = phone.finish(Duration::from_secs(10));
    assert!(
        run.ok && phone_ok,
        "provider:\n{}\n--- phone ---\n{logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    let invite = logs
        .find("INVITE sip:")
        .map(|i| &logs[i..])
        .and_then(|s| s.split("\n\n").next())
        .unwrap_or_default()
        .to_string();
    assert!(
        invite.contains("From: \"Asserted Caller\" <sip:+4917055555@"),
        "the asserted caller, not the From ({PSTN_CALLER}):\n{invite}"
    );
    assert!(
        invite.contains("Alert-Info: <http://127.0.0.1/ring>;delay=0"),
        "{invite}"
    );
    for never in [
        "autoanswer",
        "answer-after",
        "Call-Info",
        "P-Asserted-Identity",
    ] {
        assert!(!logs.contains(never), "{never} reached the phone:\n{logs}");
    }
    let m = http_get(pbx.admin, "/metrics").1;
    assert_eq!(
        metric(&m, "podpbx_sip_auto_answer_stripped_total"),
        Some(1.0),
        "{m}"
    );
}

/// Issue #15, towards the provider: a trunk with `send_pai` gets the caller ID in
/// P-Asserted-Identity; a user who withholds it goes out as Anonymous with `Privacy: id`.
#[test]
fn a_withheld_caller_id_goes_to_the_provider_as_anonymous_with_pai() {
    let uas_addr = SocketAddr::new(ip("::1"), free_port());
    let extra = format!(
        "[[trunks]]\nname = \"pai\"\nhost = \"::1\"\nport = {}\nregister = false\nsend_pai = true\ncaller_id = \"+4930999\"\n\n\
         [[dialplan]]\nname = \"out-pai\"\nmatch = {{ prefix = \"8\", from = \"local\" }}\naction = \"trunk\"\ntrunk = \"pai\"\n",
        uas_addr.port()
    );
    let config = pbx_config(free_port(), &extra).replace(
        "name = \"101\"\npassword = \"pw-101\"\n",
        "name = \"101\"\npassword = \"pw-101\"\nwithhold_caller_id = true\n",
    );
    let pbx = Pbx::start(&config);
    let uas = Uas::start("trunk_uas.xml", uas_addr, 1, &["-mi", "::1"]);
    let run = call(&pbx, "call_uac.xml", "8301234", &["-d", "300"]);
    let (uas_ok, uas_logs) = uas.finish(Duration::from_secs(10));
    assert!(
        run.ok && uas_ok,
        "caller:\n{}\n--- provider ---\n{uas_logs}\n--- podpbx ---\n{}",
        run.output,
        tail(&pbx.log_text())
    );
    for line in [
        "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=",
        "P-Asserted-Identity: <sip:+4930999@[::1]>",
        "Privacy: id",
    ] {
        assert!(uas_logs.contains(line), "{line}:\n{uas_logs}");
    }
    assert!(!uas_logs.contains("sip:101@"), "{uas_logs}");
}
