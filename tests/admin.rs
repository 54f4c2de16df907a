//! Black-box tests of the admin listener, `podpbx ctl` and the graceful stop: the real binary on
//! loopback, its admin listener on a free port (see `Pbx::start`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bracket(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

#[test]
fn probes_answer_once_started() {
    let pbx = Pbx::start("");
    assert_eq!(http_get(pbx.admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(pbx.admin, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(pbx.admin, "/nope").0, 404);
    assert_eq!(http(pbx.admin, "DELETE", "/metrics").0, 405);
}

#[test]
fn metrics_follow_real_sip_traffic() {
    let pbx = Pbx::start("");
    let (code, before) = http_get(pbx.admin, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "# TYPE podpbx_sip_messages_in_total counter",
        "# HELP podpbx_sip_messages_in_total ",
        "# TYPE podpbx_calls_active gauge",
    ] {
        assert!(before.contains(line), "missing `{line}` in:\n{before}");
    }
    let in0 = metric(&before, "podpbx_sip_messages_in_total").expect("messages in");
    let out0 = metric(&before, "podpbx_sip_messages_out_total").expect("messages out");
    assert_eq!(metric(&before, "podpbx_ready"), Some(1.0));
    assert_eq!(
        metric(&before, "podpbx_calls_total{disposition=\"answered\"}"),
        Some(0.0)
    );

    for (i, target) in [pbx.v4(), pbx.v6()].into_iter().enumerate() {
        let peer = UdpPeer::new(target);
        let req = request(
            "OPTIONS",
            &format!("sip:{}", bracket(target)),
            peer.local(),
            "UDP",
            &format!("z9hG4bKadm{i}"),
            "",
        );
        peer.send(req.as_bytes());
        assert_eq!(status(&peer.recv().expect("OPTIONS answered")), 200);
    }
    let (_, after) = http_get(pbx.admin, "/metrics");
    assert_eq!(
        metric(&after, "podpbx_sip_messages_in_total"),
        Some(in0 + 2.0),
        "{after}"
    );
    // The transport counts a message out after the send returns, possibly after we read it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let out_ok =
        |text: &str| metric(text, "podpbx_sip_messages_out_total").is_some_and(|v| v >= out0 + 2.0);
    let mut after = after;
    while !out_ok(&after) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = http_get(pbx.admin, "/metrics").1;
    }
    assert!(out_ok(&after), "{after}");

    // Garbage that cannot be answered is counted under its own reason.
    let dropped0 = metric(&after, "podpbx_sip_dropped_malformed_total").expect("dropped");
    let peer = UdpPeer::new(pbx.v4());
    peer.send(b"\x00\x01garbage that is not SIP\r\n\r\n");
    peer.expect_silence(Duration::from_millis(300));
    let (_, last) = http_get(pbx.admin, "/metrics");
    assert_eq!(
        metric(&last, "podpbx_sip_dropped_malformed_total"),
        Some(dropped0 + 1.0),
        "{last}"
    );
}

#[test]
fn readyz_waits_for_a_registering_trunk() {
    let provider_port = free_port();
    let pbx = Pbx::start(&format!(
        "[[trunks]]\nname = \"provider\"\nhost = \"127.0.0.1\"\nport = {provider_port}\nusername = \"acct\"\npassword = \"secret\"\n"
    ));
    let (code, body) = http_get(pbx.admin, "/readyz");
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: trunk provider is not registered\n")
    );
    assert_eq!(
        http_get(pbx.admin, "/healthz").0,
        200,
        "alive though not ready"
    );
    let (_, m) = http_get(pbx.admin, "/metrics");
    assert_eq!(
        metric(&m, "podpbx_trunk_registered{trunk=\"provider\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "podpbx_ready"), Some(0.0));
    let (code, out, _) = ctl(&["--admin", &pbx.admin.to_string(), "status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("state:         not ready: trunk provider is not registered"),
        "{out}"
    );
}

#[test]
fn sigterm_and_sigint_stop_gracefully_with_exit_code_0() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut pbx = Pbx::start("");
        assert_eq!(http_get(pbx.admin, "/readyz").0, 200);
        let t0 = Instant::now();
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe { libc::kill(pbx.child.id() as i32, sig) };
        let mut code = None;
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(st)) = pbx.child.try_wait() {
                code = Some(st.code());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = pbx.log_text();
        assert_eq!(
            code,
            Some(Some(0)),
            "signal {sig}: exit status; log:\n{log}"
        );
        // No calls are active, so it must not sit out the 10 s grace period.
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        assert!(
            log.contains("stopping: not ready, refusing new calls"),
            "{log}"
        );
        assert!(log.contains("podpbx stopped"), "{log}");
        assert_eq!(
            http_get(pbx.admin, "/healthz").0,
            0,
            "admin listener gone after exit"
        );
    }
}

#[test]
fn ctl_prints_status_and_tables() {
    let pbx = Pbx::start("");
    let admin = pbx.admin.to_string();
    let (code, out, err) = ctl(&["--admin", &admin, "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!(
            "podpbx {} (pid {}) at {admin}\n",
            env!("CARGO_PKG_VERSION"),
            pbx.child.id()
        )),
        "{out}"
    );
    assert!(out.contains("state:         ready\n"), "{out}");
    assert!(
        out.contains(&format!(
            "sip udp:       [::1]:{p}, 127.0.0.1:{p}",
            p = pbx.port
        )) || out.contains(&format!("127.0.0.1:{}, [::1]", pbx.port)),
        "{out}"
    );

    // The same through --config, and as JSON.
    let cfg = pbx.dir.path().join("podpbx.toml");
    let (code, out, err) = ctl(&["--config", cfg.to_str().unwrap(), "--json", "status"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ready"], true);
    assert_eq!(v["pid"], pbx.child.id());

    // Tables whose providers may or may not be registered yet: a table, or a clear refusal.
    for (what, header) in [
        ("registrations", "USER"),
        ("calls", "ID"),
        ("trunks", "NAME"),
    ] {
        let (code, out, err) = ctl(&["--admin", &admin, what]);
        match code {
            Some(0) => assert!(
                out.starts_with(header) || out == format!("(no {what})\n"),
                "{what}: {out}"
            ),
            Some(1) => assert!(
                err.contains(&format!("answered 501: {what} are not available")),
                "{what}: {err}"
            ),
            other => panic!("{what}: exit {other:?}: {err}"),
        }
    }
    let (code, out, err) = ctl(&["--admin", &admin, "reload"]);
    match code {
        Some(0) => assert!(out.starts_with("reloaded"), "{out}"),
        _ => assert!(
            err.contains("answered 501: reload not implemented"),
            "{code:?} {err}"
        ),
    }
}

#[test]
fn ctl_fails_cleanly_when_the_admin_listener_is_unreachable() {
    let port = free_port();
    let (code, out, err) = ctl(&["--admin", &format!("127.0.0.1:{port}"), "status"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "podpbx ctl: cannot reach the podpbx admin listener at 127.0.0.1:{port}: "
        )),
        "{err}"
    );

    // Something that is not podpbx on the port.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = other.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
        }
    });
    let (code, _, err) = ctl(&["--admin", &addr.to_string(), "status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("did not answer with HTTP"), "{err}");
    server.join().unwrap();

    let (code, _, err) = ctl(&["--admin", "not-an-address", "status"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("usage: podpbx ctl"), "{err}");
}

#[test]
fn admin_listener_can_be_disabled_and_a_taken_port_fails_the_start() {
    let pbx = Pbx::start("[admin]\nlisten = \"\"\n");
    assert_eq!(pbx.admin, "0.0.0.0:0".parse().unwrap());
    assert!(pbx.log_text().contains("podpbx ready"));
    assert!(
        !pbx.log_text().contains("admin listener"),
        "{}",
        pbx.log_text()
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new("admin-taken");
    let cfg = dir.path().join("c.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!("[sip]\nipv4 = \"127.0.0.1\"\nport = {port}\n[storage]\ndata_dir = \"{}\"\n[admin]\nlisten = \"{addr}\"\n", dir.path().display()),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out) = wait_output(child, Duration::from_secs(15));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("cannot bind the admin listener {addr}")),
        "{out}"
    );
}

#[test]
fn slow_and_hostile_admin_clients_do_not_block_probes() {
    let pbx = Pbx::start("");
    // Idle connections and a half-sent request hold slots but not the listener.
    let _idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(pbx.admin).unwrap())
        .collect();
    let mut partial = TcpStream::connect(pbx.admin).unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(http_get(pbx.admin, "/healthz").0, 200);
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The half-sent request is answered 408 after the 2 s read timeout, then closed.
    partial
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut resp = String::new();
    let _ = partial.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    // A header flood is cut off at 8 KiB.
    let mut flood = TcpStream::connect(pbx.admin).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = flood.write_all(
        format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000)).as_bytes(),
    );
    let mut resp = String::new();
    let _ = flood.read_to_string(&mut resp);
    assert!(
        resp.starts_with("HTTP/1.1 431 ") || resp.is_empty(),
        "{resp}"
    );
    // DNS rebinding: the JSON API wants an IP literal Host.
    let mut s = TcpStream::connect(pbx.admin).unwrap();
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    assert_eq!(http_get(pbx.admin, "/readyz").0, 200);
}

// ----- exposure (issue #11): the API off loopback, the probes' own budget -----------------------

const PINNED6: &str = "2001:db8:e8b1::1:1";
const PINNED4: &str = "198.51.100.10";
const TOKEN: &str = "adm-0f3c9a1e5b7d2468ace13579bdf02468";

#[test]
fn api_on_a_pinned_address_needs_the_bearer_token() {
    use common::baresip::in_netns;
    use common::netns::*;
    assert!(
        is_root(),
        "this test builds a network namespace and must run as root (CI does)"
    );
    let pod = Netns::new("adm");
    pod.add_pinned(PINNED6, PINNED4);
    let dir = TempDir::new("admin-token");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let admin: SocketAddr = format!("{PINNED4}:9060").parse().unwrap();
    let health: SocketAddr = format!("[{PINNED6}]:9061").parse().unwrap();
    let base = format!(
        "[sip]\nipv6 = \"{PINNED6}\"\nipv4 = \"{PINNED4}\"\nport = 5060\n[storage]\ndata_dir = \"{}\"\n\
         [admin]\nlisten = \"{admin}\"\nhealth_listen = \"{health}\"\n",
        dir.path().display()
    );

    // Without a token file podpbx refuses such a listener, in `check` and at start.
    let open_cfg = dir.path().join("open.toml");
    std::fs::write(&open_cfg, &base).unwrap();
    for cmd in ["check", "run"] {
        let child = pod
            .command(BIN)
            .args([cmd, "--config"])
            .arg(&open_cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (code, out) = wait_output(child, Duration::from_secs(15));
        assert_eq!(code, Some(1), "{cmd}: {out}");
        assert!(
            out.contains(&format!("admin.listen: {admin} is not a loopback address, so /api/* and /metrics would be open to the network: set `admin.token_file`")),
            "{cmd}: {out}"
        );
    }

    let cfg = dir.path().join("podpbx.toml");
    std::fs::write(
        &cfg,
        format!("{base}token_file = \"{}\"\n", token_file.display()),
    )
    .unwrap();
    let log = dir.path().join("log");
    let _pbx = pod.start_podpbx(&cfg, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let bearer = format!("Authorization: Bearer {TOKEN}");
    in_netns(&pod.name, || {
        for path in [
            "/api/status",
            "/api/registrations",
            "/api/calls",
            "/metrics",
        ] {
            let (code, body) = http_get(admin, path);
            assert_eq!(code, 401, "{path} without a token: {body}");
            let wrong = format!("Authorization: Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
            assert_eq!(
                http_with(admin, "GET", path, &[&wrong]).0,
                401,
                "{path}, wrong token"
            );
            let (code, body) = http_with(admin, "GET", path, &[&bearer]);
            assert_eq!(code, 200, "{path} with the token: {body}");
        }
        let (code, body) = http_with(admin, "GET", "/api/status", &[&bearer]);
        assert_eq!(code, 200);
        assert!(body.contains("\"ready\":true"), "{body}");
        assert_eq!(http(admin, "POST", "/api/reload").0, 401);
        // Probes need no token, on either listener.
        assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
        assert_eq!(http_get(health, "/readyz"), (200, "ready\n".into()));
    });

    // `podpbx ctl` finds the token through the config, or takes it from --token-file.
    let run_ctl = |args: &[&str]| {
        let child = pod
            .command(BIN)
            .arg("ctl")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(30))
    };
    let cfg_s = cfg.to_str().unwrap();
    let (code, out) = run_ctl(&["--config", cfg_s, "status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("state:         ready"), "{out}");
    let (code, out) = run_ctl(&["--admin", &admin.to_string(), "status"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("answered 401: a bearer token is required (Authorization: Bearer <token>) (give the token"),
        "{out}"
    );
    let (code, out) = run_ctl(&[
        "--admin",
        &admin.to_string(),
        "--token-file",
        token_file.to_str().unwrap(),
        "calls",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_ctl(&["--config", cfg_s, "health"]);
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"));

    // The token shows up nowhere in the log, even at debug level.
    let text = log_text();
    assert!(!text.contains(TOKEN), "token logged:\n{text}");
    assert!(text.contains("admin request refused"), "{text}");
}

#[test]
fn held_open_admin_connections_do_not_fail_the_probes() {
    // Over the admin listener's cap (64): every admin slot is taken.
    const HELD: usize = 72;
    let (admin_port, health_port) = (free_port(), free_port());
    let pbx = Pbx::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\nhealth_listen = \"[::1]:{health_port}\"\n"
    ));
    let health: SocketAddr = format!("[::1]:{health_port}").parse().unwrap();
    assert_eq!(http_get(pbx.admin, "/healthz").0, 200);
    // Idle clients hold every admin connection (each for the 2 s request deadline).
    let held: Vec<TcpStream> = (0..HELD)
        .map(|_| TcpStream::connect(pbx.admin).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    // The admin listener is full: the attack works there...
    let (code, _) = http_get(pbx.admin, "/healthz");
    assert!(
        code == 503 || code == 0,
        "admin listener not saturated: {code}"
    );
    // ...and the probes do not care: their listener has its own budget.
    assert_eq!(http_get(health, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(health, "/readyz"), (200, "ready\n".into()));
    let cfg = pbx.dir.path().join("podpbx.toml");
    let (code, out, err) = ctl(&["--config", cfg.to_str().unwrap(), "health"]);
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"), "{err}");
    let (code, out, err) = ctl(&["--admin", &health.to_string(), "ready"]);
    assert_eq!((code, out.as_str()), (Some(0), "ready\n"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "probes answered while the admin connections were held: {:?}",
        t0.elapsed()
    );
    // The health listener serves health only.
    for path in ["/api/status", "/api/registrations", "/metrics"] {
        assert_eq!(http_get(health, path).0, 404, "{path}");
    }
    assert_eq!(http(health, "POST", "/api/reload").0, 404);
    drop(held);
    // Once the held connections are gone the admin listener answers again; the refusals counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(pbx.admin, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "admin listener did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, m) = http_get(pbx.admin, "/metrics");
    assert!(
        metric(&m, "podpbx_admin_rejected_connections_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "podpbx_health_rejected_connections_total"),
        Some(0.0)
    );
}

#[test]
fn ctl_probes_exit_non_zero_when_not_ready_or_unreachable() {
    let provider_port = free_port();
    let pbx = Pbx::start(&format!(
        "[[trunks]]\nname = \"provider\"\nhost = \"127.0.0.1\"\nport = {provider_port}\nusername = \"acct\"\npassword = \"secret\"\n"
    ));
    let admin = pbx.admin.to_string();
    let (code, out, _) = ctl(&["--admin", &admin, "health"]);
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"));
    let (code, out, err) = ctl(&["--admin", &admin, "ready"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        err,
        format!("podpbx ctl: {admin}/readyz answered 503: not ready: trunk provider is not registered\n")
    );
    let port = free_port();
    let (code, _, err) = ctl(&["--admin", &format!("127.0.0.1:{port}"), "health"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach"), "{err}");
}
