use super::http::*;
use super::*;
use crate::lifecycle::{Shutdown, StopEvent};
use serde_json::json;
use std::io::{Read, Write};

fn config(extra: &str) -> Config {
    let text = format!("[sip]\nipv4 = \"127.0.0.1\"\nport = 5060\n[admin]\nlisten = \"\"\n{extra}");
    Config::from_str(&text, "t.toml").expect("valid test config")
}

fn admin(extra: &str) -> Admin {
    Admin::new(&config(extra), Arc::new(Stats::default()))
}

/// One blocking HTTP exchange (run on a blocking thread); returns status and body.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let request = request.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        assert!(out.contains("Connection: close\r\n") || code == 0, "{out}");
        (code, body)
    })
    .await
    .expect("client thread")
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await
}

async fn started(a: &Admin) -> SocketAddr {
    a.start_admin("127.0.0.1:0".parse().expect("addr"), None)
        .await
        .expect("start")
}

#[test]
fn request_heads_parse_strictly() {
    let r = parse_head(
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9060\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("ok");
    assert_eq!(
        r,
        Request {
            method: "GET".into(),
            path: "/metrics".into(),
            host: Some("127.0.0.1:9060".into()),
            origin: false,
            content_length: 0,
            authorization: None
        }
    );
    let code = |h: &[u8]| parse_head(h).err().map(|r| r.code);
    assert_eq!(code(b"GET /x HTTP/1.1\n\n"), None);
    assert_eq!(code(b"GET  /x HTTP/1.1\r\n\r\n"), Some(400));
    assert_eq!(code(b"get /x HTTP/1.1\r\n\r\n"), Some(400));
    assert_eq!(code(b"GET http://a/x HTTP/1.1\r\n\r\n"), Some(400));
    assert_eq!(code(b"GET /x HTTP/2.0\r\n\r\n"), Some(505));
    assert_eq!(code(b"GET /x FOO\r\n\r\n"), Some(400));
    assert_eq!(
        code(b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
        Some(400)
    );
    assert_eq!(code(b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n"), Some(400));
    assert_eq!(
        code(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Some(400)
    );
    assert_eq!(
        code(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Some(400)
    );
    assert_eq!(
        code(b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        Some(400)
    );
    assert_eq!(
        code(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Some(501)
    );
    assert_eq!(code(b"GET /x HTTP/1.1\r\n\xff: a\r\n\r\n"), Some(400));
    assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
    assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
}

#[test]
fn host_guard_accepts_ip_literals_and_localhost_only() {
    for ok in [
        None,
        Some("127.0.0.1"),
        Some("127.0.0.1:9060"),
        Some("[::1]:9060"),
        Some("[::1]"),
        Some("localhost:9060"),
        Some("LOCALHOST"),
    ] {
        assert!(host_is_literal(ok), "{ok:?}");
    }
    for bad in [
        Some("evil.example"),
        Some("evil.example:9060"),
        Some("localhost.evil.example"),
        Some(""),
    ] {
        assert!(!host_is_literal(bad), "{bad:?}");
    }
}

#[test]
fn readiness_conditions_come_from_config_and_hooks() {
    let a = admin("[[trunks]]\nname = \"prov\"\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"\n[[trunks]]\nname = \"noreg\"\nhost = \"127.0.0.1\"\n");
    assert_eq!(
        a.not_ready(),
        [
            "SIP listeners are not bound",
            "trunk prov is not registered"
        ]
    );
    a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
    assert_eq!(a.not_ready(), ["trunk prov is not registered"]);
    assert!(a
        .registry()
        .render()
        .contains("podpbx_trunk_registered{trunk=\"prov\"} 0\n"));
    assert!(a.registry().render().contains("podpbx_ready 0\n"));
    let mut known = Vec::new();
    let health = crate::trunks::TrunkHealth {
        name: "prov".into(),
        registered: Some(true),
        targets: 1,
        register_failures: 0,
        registers_sent: 1,
        keepalive_failures: 0,
        dns_failures: 0,
    };
    a.set_trunks(&[("prov".into(), None)], &[health], &mut known);
    assert!(a.not_ready().is_empty());
    assert!(a
        .registry()
        .render()
        .contains("podpbx_trunk_registered{trunk=\"prov\"} 1\n"));
    assert!(a.registry().render().contains("podpbx_ready 1\n"));
    // A reload that removes the trunk removes its condition and series.
    a.set_trunks(&[], &[], &mut known);
    assert!(a.not_ready().is_empty() && known.is_empty());
    assert!(!a.registry().render().contains("trunk=\"prov\""));
    a.begin_shutdown();
    assert_eq!(a.not_ready(), ["shutting down"]);
}

#[tokio::test]
async fn probes_metrics_and_json_endpoints_answer() {
    let a = admin("");
    let addr = started(&a).await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "not ready: SIP listeners are not bound\n".into())
    );
    a.sip_bound(vec![], vec!["[::1]:5060".parse().expect("addr")]);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        text.contains(
            "# TYPE podpbx_sip_messages_in_total counter\npodpbx_sip_messages_in_total 0\n"
        ),
        "{text}"
    );
    Stats::bump(&a.inner.stats.messages_in);
    assert!(get(addr, "/metrics")
        .await
        .1
        .contains("podpbx_sip_messages_in_total 1\n"));

    let (code, body) = get(addr, "/api/status").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ready"], true);
    assert_eq!(v["sip"]["tcp"][0], "[::1]:5060");
    assert_eq!(v["counters"]["sip_messages_in"], 1);
    a.provide_snapshot("status")
        .publish(json!({ "ready": "ignored", "media_workers": 4 }));
    let v: Value = serde_json::from_str(&get(addr, "/api/status").await.1).expect("json");
    assert_eq!(
        (v["ready"].clone(), v["media_workers"].clone()),
        (json!(true), json!(4))
    );

    let (code, body) = get(addr, "/api/registrations").await;
    assert_eq!(code, 501, "{body}");
    assert!(body.contains("no provider"), "{body}");
    let publisher = a.provide_snapshot("registrations");
    publisher
        .publish(json!([{ "user": "1001", "contact": "sip:1001@[::1]:5070", "expires_at": 5 }]));
    let v: Value = serde_json::from_str(&get(addr, "/api/registrations").await.1).expect("json");
    assert_eq!(v["items"][0]["user"], "1001");
    assert!(v["now"].as_u64().is_some_and(|n| n > 1_600_000_000));
    publisher.publish(json!([]));
    let v: Value = serde_json::from_str(&get(addr, "/api/registrations").await.1).expect("json");
    assert_eq!(v["items"], json!([]));
}

#[tokio::test]
async fn methods_hosts_origins_and_sizes_are_enforced() {
    let a = admin("");
    let addr = started(&a).await;
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/api/Bad%20Name").await.0, 404);
    assert_eq!(
        raw(addr, "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .0,
        405
    );
    assert_eq!(get(addr, "/api/reload").await.0, 405);
    let (code, body) = raw(addr, "HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!((code, body.as_str()), (200, ""));
    assert_eq!(
        raw(
            addr,
            "GET /api/status HTTP/1.1\r\nHost: rebind.example:9060\r\n\r\n"
        )
        .await
        .0,
        403
    );
    assert_eq!(
        raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: prometheus.example:9060\r\n\r\n"
        )
        .await
        .0,
        200
    );
    assert_eq!(raw(addr, "GET /api/status HTTP/1.0\r\n\r\n").await.0, 200);
    let post =
        "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n";
    assert_eq!(raw(addr, post).await.0, 403);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(raw(addr, &huge).await.0, 431);
    let big_body = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(raw(addr, big_body).await.0, 413);
    assert_eq!(raw(addr, "\x16\x03\x01garbage\r\n\r\n").await.0, 400);
    // Still serving after all of that.
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn reload_hook_answers_or_is_not_implemented() {
    let a = admin("");
    let addr = started(&a).await;
    let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
    let (code, body) = raw(addr, post).await;
    assert_eq!(code, 501);
    assert!(body.contains("reload not implemented"), "{body}");
    let mut rx = a.reload_requests();
    let served = tokio::spawn(async move {
        let first = rx.recv().await.expect("request");
        first.respond(Ok("3 users, 1 trunk".into()));
        let second = rx.recv().await.expect("request");
        second.respond(Err("t.toml:3:1: sip.prot: unknown key".into()));
    });
    let (code, body) = raw(addr, post).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("3 users, 1 trunk"));
    let (code, body) = raw(addr, post).await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("sip.prot"));
    served.await.expect("hook task");
}

#[tokio::test]
async fn healthz_follows_the_core_loop() {
    let a = admin("");
    let addr = started(&a).await;
    let mut rx = a.core_requests();
    let core = tokio::spawn(async move {
        // Answer one ping, then stop like a dead loop.
        if let Some(CoreRequest::Ping(p)) = rx.recv().await {
            p.pong();
        }
        rx
    });
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let rx = core.await.expect("core task");
    // Held but never served: a stuck loop.
    let (code, body) = get(addr, "/healthz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "core loop did not answer within 1 s\n")
    );
    drop(rx);
    assert_eq!(
        get(addr, "/healthz").await,
        (503, "core loop stopped\n".into())
    );
}

#[tokio::test]
async fn connections_are_bounded_and_slow_clients_time_out() {
    let a = admin("");
    let addr = a
        .start_with_limit(
            "127.0.0.1:0".parse().expect("addr"),
            Role::Admin { token: None },
            2,
        )
        .await
        .expect("start");
    // Two clients that never send anything hold both slots...
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, _) = get(addr, "/healthz").await;
    assert!(code == 503 || code == 0, "refused while full, got {code}");
    assert!(a
        .registry()
        .render()
        .contains("podpbx_admin_rejected_connections_total 1\n"));
    // ...until the read timeout answers them with 408 and frees the slots.
    let codes = tokio::task::spawn_blocking(move || {
        idle.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out.get(9..12).unwrap_or("").to_string()
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("readers");
    assert_eq!(codes, ["408", "408"]);
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

/// `raw` with one extra header line.
async fn get_with(addr: SocketAddr, path: &str, header: &str) -> (u16, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn a_token_guards_the_api_and_metrics_but_not_the_probes() {
    let dir = std::env::temp_dir().join(format!("podpbx-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, "first-token-0123456789\n").expect("write");
    let token = Secret::new("first-token-0123456789", SecretSource::File(file.clone()));
    let a = admin("");
    a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
    let addr = a
        .start_admin("127.0.0.1:0".parse().expect("addr"), Some(token))
        .await
        .expect("start");
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    for path in ["/api/status", "/api/registrations", "/metrics"] {
        let (code, body) = get(addr, path).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("a bearer token is required"), "{body}");
        let (code, body) =
            get_with(addr, path, "Authorization: Bearer first-token-012345678").await;
        assert_eq!(code, 401, "{path}: a prefix of the token");
        assert!(body.contains("the bearer token is wrong"), "{body}");
        for wrong in [
            "Authorization: Bearer first-token-01234567890",
            "Authorization: Basic Zmlyc3QtdG9rZW4tMDEyMzQ1Njc4OQ==",
            "Authorization: first-token-0123456789",
            "Authorization: Bearer",
        ] {
            assert_eq!(get_with(addr, path, wrong).await.0, 401, "{path}: {wrong}");
        }
        let ok = get_with(addr, path, "Authorization: Bearer first-token-0123456789").await;
        assert_ne!(ok.0, 401, "{path}: {ok:?}");
        assert!(ok.0 == 200 || ok.0 == 501, "{path}: {ok:?}");
        // The scheme is case-insensitive.
        let ok = get_with(addr, path, "authorization: bearer first-token-0123456789").await;
        assert!(ok.0 == 200 || ok.0 == 501, "{path}: {ok:?}");
    }
    // The answer names the scheme (RFC 6750 §3).
    let (code, text) = {
        let request = format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(request.as_bytes()).expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            (out.get(9..12).unwrap_or("").to_string(), out)
        })
        .await
        .expect("client")
    };
    assert_eq!(code, "401");
    assert!(
        text.contains("\r\nWWW-Authenticate: Bearer realm=\"podpbx\"\r\n"),
        "{text}"
    );
    // Reload goes through the same guard.
    let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(raw(addr, post).await.0, 401);
    let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer first-token-0123456789\r\n\r\n";
    assert_eq!(raw(addr, post).await.0, 501);
    // Two Authorization headers are a bad request, not a second chance.
    assert_eq!(
        get_with(
            addr,
            "/api/status",
            "Authorization: Bearer x\r\nAuthorization: Bearer first-token-0123456789"
        )
        .await
        .0,
        400
    );
    let refused = a.registry().render();
    assert!(
        refused.contains("podpbx_admin_unauthorized_total 20\n"),
        "{refused}"
    );
    // A rotated Secret takes effect at once; an unreadable one refuses everything.
    std::fs::write(&file, "second-token-0123456789").expect("write");
    assert_eq!(
        get_with(
            addr,
            "/api/status",
            "Authorization: Bearer first-token-0123456789"
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get_with(
            addr,
            "/api/status",
            "Authorization: Bearer second-token-0123456789"
        )
        .await
        .0,
        200
    );
    std::fs::remove_file(&file).expect("rm");
    let (code, body) = get_with(
        addr,
        "/api/status",
        "Authorization: Bearer second-token-0123456789",
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (503, "{\"error\":\"the admin token file is unreadable\"}\n")
    );
    std::fs::write(&file, "short").expect("write");
    assert_eq!(
        get_with(addr, "/api/status", "Authorization: Bearer short")
            .await
            .0,
        503
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn credentials_never_show_and_compare_in_constant_time() {
    let req = parse_head(
        b"GET /api/status HTTP/1.1\r\nAuthorization: Bearer  s3cret-token-value\r\n\r\n",
    )
    .expect("ok");
    assert!(!format!("{req:?}").contains("s3cret"), "{req:?}");
    assert_eq!(
        req.authorization.as_ref().and_then(Credentials::bearer),
        Some("s3cret-token-value")
    );
    assert!(constant_time_eq(b"abc", b"abc"));
    for other in [&b"abd"[..], b"ab", b"abcd", b"", b"xbc"] {
        assert!(!constant_time_eq(other, b"abc"), "{other:?}");
    }
    assert!(constant_time_eq(b"", b""));
}

#[tokio::test]
async fn the_health_listener_serves_only_health() {
    let a = admin("");
    a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
    let plain = a
        .start_health("127.0.0.1:0".parse().expect("addr"), false)
        .await
        .expect("start");
    let with_metrics = a
        .start_health("127.0.0.1:0".parse().expect("addr"), true)
        .await
        .expect("start");
    for addr in [plain, with_metrics] {
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        for path in ["/api/status", "/api/registrations", "/api/reload", "/nope"] {
            assert_eq!(get(addr, path).await.0, 404, "{path}");
        }
        let post = "POST /api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert_eq!(raw(addr, post).await.0, 404);
        assert_eq!(raw(addr, "POST /healthz HTTP/1.1\r\n\r\n").await.0, 405);
    }
    assert_eq!(get(plain, "/metrics").await.0, 404);
    let (code, text) = get(with_metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("podpbx_ready 1\n"), "{text}");
}

#[tokio::test]
async fn concurrent_probes_share_pongs_instead_of_failing() {
    let a = admin("");
    let addr = started(&a).await;
    let mut rx = a.core_requests();
    // A slow but live core: it answers one ping every 300 ms.
    let core = tokio::spawn(async move {
        while let Some(CoreRequest::Ping(p)) = rx.recv().await {
            tokio::time::sleep(Duration::from_millis(300)).await;
            p.pong();
        }
    });
    // More probes at once than the ping queue holds (8): all are answered by the pongs.
    let probes: Vec<_> = (0..24)
        .map(|_| tokio::spawn(get(addr, "/healthz")))
        .collect();
    for p in probes {
        assert_eq!(p.await.expect("probe").0, 200);
    }
    core.abort();
}

#[tokio::test]
async fn shutdown_flips_readiness_and_waits_for_calls_within_the_grace() {
    let a = admin("");
    let addr = started(&a).await;
    a.sip_bound(vec!["127.0.0.1:5060".parse().expect("addr")], vec![]);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    // No calls: Begin, then Stop at once.
    let mut sd = Shutdown::without_signals(&a, Duration::from_secs(10));
    sd.begin("test");
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "not ready: shutting down\n".into())
    );
    assert_eq!(
        get(addr, "/healthz").await.0,
        200,
        "still alive while draining"
    );
    let t0 = Instant::now();
    assert_eq!(sd.next().await, StopEvent::Stop);
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert!(sd.is_stopping());
    sd.finish();

    // A call that ends during the grace period.
    let b = admin("");
    b.metrics().calls_active.set(1);
    let mut sd = Shutdown::without_signals(&b, Duration::from_secs(10));
    sd.begin("test");
    let m = b.metrics().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        m.calls_active.set(0);
    });
    let t0 = Instant::now();
    assert_eq!(sd.next().await, StopEvent::Stop);
    assert!(t0.elapsed() >= Duration::from_millis(250) && t0.elapsed() < Duration::from_secs(2));

    // A call that outlasts the grace period.
    let c = admin("");
    c.metrics().calls_active.set(2);
    let mut sd = Shutdown::without_signals(&c, Duration::from_millis(300));
    sd.begin("test");
    let t0 = Instant::now();
    assert_eq!(sd.next().await, StopEvent::Stop);
    assert!(t0.elapsed() >= Duration::from_millis(280) && t0.elapsed() < Duration::from_secs(2));
    // Stopping is final: next() never fires again.
    assert!(tokio::time::timeout(Duration::from_millis(100), sd.next())
        .await
        .is_err());
}
