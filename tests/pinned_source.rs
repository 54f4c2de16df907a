//! Proves on the wire that podpbx answers from its pinned addresses. The `pod` namespace holds a
//! transit address per family on its veth plus the pinned /128 and /32 on `lo` (as Calico gives
//! them); a kernel choosing the source itself would pick the transit address, so a reply seen
//! from the pinned address shows podpbx bound and sent from exactly the pinned sockets.

mod common;

use common::netns::*;
use common::*;
use std::process::Stdio;
use std::time::Duration;

const PINNED6: &str = "2001:db8:e8b1::1:1";
const PINNED4: &str = "198.51.100.10";

/// A Python helper run inside the peer namespace: sends an OPTIONS and prints the reply's source.
const PROBE: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
s.settimeout(3)
lp = s.getsockname()[1]
h = ('[%s]' % sys.argv[3]) if fam == socket.AF_INET6 else sys.argv[3]
req = ('OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bKprobe%d;rport\r\n'
       'Max-Forwards: 70\r\nFrom: <sip:probe@%s>;tag=p1\r\nTo: <sip:pbx@%s>\r\n'
       'Call-ID: probe%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n') % (h, h, lp, lp, h, h, lp)
s.sendto(req.encode(), dst)
data, src = s.recvfrom(65535)
print(src[0], data.split(b'\r\n')[0].decode())
"#;

#[test]
fn replies_leave_from_the_pinned_addresses() {
    assert!(
        is_root(),
        "this test builds network namespaces and must run as root (CI does)"
    );
    let pod = Netns::new("pod");
    let lan = Netns::new("lan");
    veth(&pod, "pod0", &lan, "lan0");
    // Transit addresses: what the kernel would pick as source if podpbx did not pin it.
    ip_in(
        &pod.name,
        &["addr", "add", "2001:db8:100::1/64", "dev", "pod0", "nodad"],
    );
    ip_in(
        &lan.name,
        &["addr", "add", "2001:db8:100::2/64", "dev", "lan0", "nodad"],
    );
    ip_in(&pod.name, &["addr", "add", "203.0.113.1/24", "dev", "pod0"]);
    ip_in(&lan.name, &["addr", "add", "203.0.113.2/24", "dev", "lan0"]);
    // The pinned single addresses, as Calico assigns them from /128 and /32 pools.
    pod.add_pinned(PINNED6, PINNED4);
    // The LAN reaches the pinned addresses through the pod (the BGP-learned routes).
    ip_in(
        &lan.name,
        &[
            "-6",
            "route",
            "add",
            &format!("{PINNED6}/128"),
            "via",
            "2001:db8:100::1",
        ],
    );
    ip_in(
        &lan.name,
        &[
            "route",
            "add",
            &format!("{PINNED4}/32"),
            "via",
            "203.0.113.1",
        ],
    );
    ip_in(
        &pod.name,
        &["-6", "route", "add", "default", "via", "2001:db8:100::2"],
    );
    ip_in(
        &pod.name,
        &["route", "add", "default", "via", "203.0.113.2"],
    );

    let dir = TempDir::new("pinned");
    let cfg = dir.path().join("podpbx.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sip]\nipv6 = \"{PINNED6}\"\nipv4 = \"{PINNED4}\"\nport = 5060\ntransports = [\"udp\", \"tcp\"]\n\
             [admin]\nlisten = \"\"\n[storage]\ndata_dir = \"{}\"\n[registrar]\nqualify_interval_secs = 1\n\
             [[users]]\nname = \"2001\"\npassword = \"pinned-2001\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let pbx = pod.start_podpbx(&cfg, &log);

    for (pinned, src) in [(PINNED6, "2001:db8:100::2"), (PINNED4, "203.0.113.2")] {
        let out = lan
            .command("python3")
            .args(["-c", PROBE, pinned, "5060", src])
            .output()
            .expect("run probe");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.trim(),
            format!("{pinned} SIP/2.0 200 OK"),
            "reply source must be the pinned address"
        );
    }

    // A real peer: SIPp in the LAN namespace qualifies podpbx over UDP and TCP on both families.
    for (target, local, transport) in [
        (format!("[{PINNED6}]:5060"), "2001:db8:100::2", "u1"),
        (format!("{PINNED4}:5060"), "203.0.113.2", "t1"),
    ] {
        let scenario = root().join("tests/sipp/options.xml");
        let sipp_child = lan
            .command("sipp")
            .arg(&target)
            .arg("-sf")
            .arg(&scenario)
            .args([
                "-i", local, "-p", "5070", "-t", transport, "-m", "1", "-nostdin",
            ])
            .args(["-timeout", "10s", "-timeout_error"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipp");
        let (code, output) = wait_output(sipp_child, Duration::from_secs(20));
        assert_eq!(code, Some(0), "SIPp via {transport} to {target}: {output}");
    }

    // podpbx-originated requests: register a phone from the LAN, then catch the qualify OPTIONS
    // podpbx sends to it and check its source address.
    for (pinned, local) in [(PINNED6, "2001:db8:100::2"), (PINNED4, "203.0.113.2")] {
        let target = if pinned.contains(':') {
            format!("[{pinned}]:5060")
        } else {
            format!("{pinned}:5060")
        };
        let sipp_child = lan
            .command("sipp")
            .arg(&target)
            .arg("-sf")
            .arg(root().join("tests/sipp/register_once.xml"))
            .args([
                "-i",
                local,
                "-p",
                "5072",
                "-t",
                "u1",
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "10s",
                "-timeout_error",
            ])
            .args([
                "-s",
                "2001",
                "-au",
                "2001",
                "-ap",
                "pinned-2001",
                "-key",
                "expires",
                "60",
            ])
            .args(sipp_auth_uri(
                &root().join("tests/sipp/register_once.xml"),
                target.parse().expect("target"),
                &[],
            ))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipp register");
        let (code, output) = wait_output(sipp_child, Duration::from_secs(20));
        assert_eq!(code, Some(0), "SIPp register to {target}: {output}");
        let out = lan
            .command("python3")
            .args(["-c", CATCH_OPTIONS, local, "5072"])
            .output()
            .expect("run catcher");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "no qualify OPTIONS caught: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.trim(),
            format!("{pinned} OPTIONS"),
            "podpbx-originated request must leave from the pinned address"
        );
    }
    drop(pbx);
}

/// Listens where the registered phone was and prints the source of the first request received.
const CATCH_OPTIONS: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(6)
while True:
    data, src = s.recvfrom(65535)
    method = data.split(b' ')[0].decode()
    if method == 'OPTIONS':
        print(src[0], method)
        break
"#;
