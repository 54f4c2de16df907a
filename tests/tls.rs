//! SIP over TLS through the real binary (RFC 3261 §26, RFC 5626 keep-alive): the listener on
//! both pinned addresses, a phone registering over TLS, the certificate reloaded from its files
//! while a connection stays up, and the client side towards a trunk refusing expired and
//! misnamed certificates with a clear log line. Certificates come from a throw-away CA made by
//! the test (`openssl`).

mod common;

use common::tls::{self as t, Ca};
use common::{header, request, status, Pbx, TempDir};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const USERS: &str =
    "[[users]]\nname = \"1001\"\npassword = \"tls-secret-1001\"\ntransport = \"tls\"\n";

struct TlsPbx {
    pbx: Pbx,
    tls_port: u16,
    cert: t::CertFiles,
    ca: Ca,
    _pki: TempDir,
}

/// podpbx with UDP, TCP and TLS on 127.0.0.1 and ::1; the TLS certificate names both.
fn start(extra: &str) -> TlsPbx {
    let pki = TempDir::new("pki");
    let ca = Ca::new(&pki, "podpbx-test-ca");
    let cert = ca.issue("pbx", &["IP:127.0.0.1", "IP:::1", "DNS:pbx.test"], 2);
    let port = common::free_port();
    let tls_port = std::iter::repeat_with(common::free_port)
        .find(|p| *p != port)
        .unwrap();
    let config = format!(
        "[sip]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\nport = {port}\ntransports = [\"udp\", \"tcp\", \"tls\"]\n\
         [tls]\nport = {tls_port}\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        cert.cert.display(),
        cert.key.display()
    );
    let pbx = Pbx::start_with_config(&config, port);
    TlsPbx {
        pbx,
        tls_port,
        cert,
        ca,
        _pki: pki,
    }
}

impl TlsPbx {
    fn tls_v4(&self) -> SocketAddr {
        SocketAddr::new("127.0.0.1".parse().unwrap(), self.tls_port)
    }
    fn tls_v6(&self) -> SocketAddr {
        SocketAddr::new("::1".parse().unwrap(), self.tls_port)
    }
}

fn options_over(s: &mut t::ClientStream, branch: &str) -> Vec<u8> {
    let local = s.sock.local_addr().unwrap();
    let req = request(
        "OPTIONS",
        "sip:pbx.test",
        local,
        "TLS",
        branch,
        "Accept: application/sdp\r\n",
    );
    t::send(s, req.as_bytes());
    t::read_message(s).expect("a response over TLS")
}

fn register(s: &mut t::ClientStream, cseq: u32, branch: &str, auth: &str) -> Vec<u8> {
    let local = s.sock.local_addr().unwrap();
    let req = format!(
        "REGISTER sip:pbx.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@pbx.test>;tag=tlsreg\r\n\
         To: <sip:1001@pbx.test>\r\n\
         Call-ID: tls-reg@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:1001@{local};transport=tls>\r\n\
         Expires: 60\r\n\
         {auth}\
         Content-Length: 0\r\n\r\n"
    );
    t::send(s, req.as_bytes());
    loop {
        let msg = t::read_message(s).expect("a response over TLS");
        if status(&msg) >= 200 {
            return msg;
        }
    }
}

#[test]
fn phone_registers_over_tls_on_both_families_and_keepalives_are_answered() {
    let p = start(USERS);
    for addr in [p.tls_v4(), p.tls_v6()] {
        let mut s = t::connect(addr, &p.ca.files.cert, "pbx.test").expect("TLS to podpbx");
        let resp = options_over(&mut s, &format!("z9hG4bKtlsopt{}", addr.port()));
        assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
        let via = header(&resp, "Via").unwrap();
        assert!(via.starts_with("SIP/2.0/TLS "), "{via}");
    }

    // REGISTER with digest over TLS: the binding's flow is the TLS connection.
    let mut s = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test").unwrap();
    let resp = register(&mut s, 1, "z9hG4bKtlsreg1", "");
    assert_eq!(status(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    let challenge = header(&resp, "WWW-Authenticate").unwrap();
    let mut client =
        podpbx_sip::digest::DigestClient::new("1001", "tls-secret-1001", b"tls-test".to_vec());
    client.on_challenge(&[challenge]).expect("usable challenge");
    let auth = client
        .authorization("REGISTER", "sip:pbx.test", b"")
        .unwrap();
    let resp = register(
        &mut s,
        2,
        "z9hG4bKtlsreg2",
        &format!("Authorization: {auth}\r\n"),
    );
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let contact = header(&resp, "Contact").unwrap();
    assert!(contact.contains("transport=tls"), "{contact}");

    // RFC 5626 §3.5.1: a CRLFCRLF ping on the TLS connection gets a CRLF pong.
    t::send(&mut s, b"\r\n\r\n");
    let mut pong = [0u8; 2];
    std::io::Read::read_exact(&mut s, &mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");

    // The same user with the right password over UDP: refused, it is required to use TLS.
    let udp = common::UdpPeer::new(p.pbx.v4());
    let ruri = "sip:pbx.test";
    let reg = |cseq: u32, auth: &str| {
        format!(
            "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKudp{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@pbx.test>;tag=u\r\nTo: <sip:1001@pbx.test>\r\n\
             Call-ID: udp-reg@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1001@{l}>\r\n\
             {auth}Content-Length: 0\r\n\r\n",
            l = udp.local()
        )
    };
    udp.send(reg(1, "").as_bytes());
    let resp = udp.recv().expect("401");
    assert_eq!(status(&resp), 401);
    let mut c = podpbx_sip::digest::DigestClient::new("1001", "tls-secret-1001", b"udp".to_vec());
    c.on_challenge(&[header(&resp, "WWW-Authenticate").unwrap()])
        .unwrap();
    let auth = c.authorization("REGISTER", ruri, b"").unwrap();
    udp.send(reg(2, &format!("Authorization: {auth}\r\n")).as_bytes());
    let resp = udp.recv().expect("final answer");
    assert_eq!(status(&resp), 403, "{}", String::from_utf8_lossy(&resp));

    // The binding is shown with its TLS flow.
    let bindings = std::fs::read_to_string(p.pbx.dir.path().join("bindings.json"));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut text = bindings.unwrap_or_default();
    while !text.contains("\"tls\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(p.pbx.dir.path().join("bindings.json")).unwrap_or_default();
    }
    assert!(text.contains("\"tls\""), "binding over TLS saved: {text}");
}

#[test]
fn a_client_that_does_not_trust_the_certificate_gets_no_sip() {
    let p = start("");
    let other = TempDir::new("pki-other");
    let stranger = Ca::new(&other, "someone-else");
    let Err(err) = t::connect(p.tls_v4(), &stranger.files.cert, "pbx.test") else {
        panic!("handshake must fail against another CA");
    };
    assert!(err.contains("certificate"), "{err}");
    // And a name the certificate does not carry.
    let Err(err) = t::connect(p.tls_v4(), &p.ca.files.cert, "wrong.test") else {
        panic!("handshake must fail for another name");
    };
    assert!(err.contains("certificate"), "{err}");
    // Garbage instead of a ClientHello: the connection is closed, podpbx keeps serving.
    let mut raw = std::net::TcpStream::connect(p.tls_v4()).unwrap();
    std::io::Write::write_all(&mut raw, b"OPTIONS sip:x SIP/2.0\r\n\r\n").unwrap();
    let mut s = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test").unwrap();
    assert_eq!(status(&options_over(&mut s, "z9hG4bKafter")), 200);
}

#[test]
fn certificate_is_reloaded_from_its_files_without_dropping_connections() {
    let p = start("");
    let mut old = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test").unwrap();
    let first = t::peer_cert(&old);

    // cert-manager renews: new files (written beside and renamed over, as a Secret update).
    let renewed = p.ca.issue(
        "pbx-renewed",
        &["IP:127.0.0.1", "IP:::1", "DNS:pbx.test"],
        2,
    );
    std::fs::copy(&renewed.key, p.cert.key.with_extension("tmpk")).unwrap();
    std::fs::copy(&renewed.cert, p.cert.cert.with_extension("tmpc")).unwrap();
    std::fs::rename(p.cert.key.with_extension("tmpk"), &p.cert.key).unwrap();
    std::fs::rename(p.cert.cert.with_extension("tmpc"), &p.cert.cert).unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now_served = first.clone();
    while now_served == first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(s) = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test") {
            now_served = t::peer_cert(&s);
        }
    }
    assert_ne!(
        now_served,
        first,
        "new connections get the renewed certificate:\n{}",
        p.pbx.log_text()
    );
    assert!(p.pbx.log_text().contains("TLS certificate reloaded"));
    // The connection made before the renewal still works.
    assert_eq!(status(&options_over(&mut old, "z9hG4bKold")), 200);

    // A broken file keeps the current certificate and says why.
    std::fs::write(&p.cert.key, b"not a key").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !p.pbx.log_text().contains("TLS certificate not reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        p.pbx.log_text().contains("TLS certificate not reloaded"),
        "{}",
        p.pbx.log_text()
    );
    let s = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test").unwrap();
    assert_eq!(t::peer_cert(&s), now_served);
}

/// A trunk over TLS to a test server: a good certificate gets the REGISTER (connection reused
/// for the retry with credentials); an expired or misnamed one is refused with a log line.
fn trunk_over_tls(server_sans: &[&str], days: i32) -> (TlsPbx, t::Server, TempDir) {
    let pki = TempDir::new("pki-provider");
    let provider_ca = Ca::new(&pki, "provider-ca");
    let cert = provider_ca.issue("provider", server_sans, days);
    let server = t::Server::bind("127.0.0.1:0".parse().unwrap(), &cert);
    let trunk = format!(
        "[[trunks]]\nname = \"prov\"\nhost = \"127.0.0.1\"\nport = {}\ntransport = \"tls\"\n\
         username = \"pbxuser\"\npassword = \"trunk-secret\"\nexpiry_secs = 120\n",
        server.addr().port()
    );
    // `[tls] ca_file` replaces the built-in roots: the provider's private CA.
    let p = start_with_ca(&trunk, &provider_ca);
    (p, server, pki)
}

fn start_with_ca(extra: &str, ca: &Ca) -> TlsPbx {
    // `[tls]` is written by `start`; the CA file goes in its table.
    start(&format!(
        "ca_file = \"{}\"\n{extra}",
        ca.files.cert.display()
    ))
}

#[test]
fn trunk_over_tls_verifies_the_provider_certificate() {
    let (p, server, _pki) = trunk_over_tls(&["IP:127.0.0.1"], 2);
    let mut s = server
        .accept(Duration::from_secs(10))
        .expect("podpbx connects");
    let reg = t::read_message(&mut s).expect("REGISTER over TLS");
    let text = String::from_utf8_lossy(&reg);
    assert!(text.starts_with("REGISTER sip:127.0.0.1"), "{text}");
    assert!(text.contains("SIP/2.0/TLS"), "{text}");
    assert!(text.contains("transport=tls"), "{text}");
    drop(p);
}

#[test]
fn trunk_with_an_expired_certificate_is_refused_and_logged() {
    let (p, server, _pki) = trunk_over_tls(&["IP:127.0.0.1"], -1);
    // podpbx aborts the handshake: the server sees an alert, never a SIP message.
    let got = server.accept(Duration::from_secs(10));
    if let Ok(mut s) = got {
        assert!(
            t::read_message(&mut s).is_none(),
            "no SIP after a refused handshake"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.pbx.log_text().contains("TLS connection refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = p.pbx.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("TLS connection refused"))
        .unwrap_or_else(|| panic!("a log line about the refused certificate:\n{log}"));
    assert!(
        line.contains("Expired") || line.contains("expired"),
        "{line}"
    );
}

#[test]
fn trunk_with_a_certificate_for_another_name_is_refused_and_logged() {
    let (p, server, _pki) = trunk_over_tls(&["DNS:other.example"], 2);
    let got = server.accept(Duration::from_secs(10));
    if let Ok(mut s) = got {
        assert!(
            t::read_message(&mut s).is_none(),
            "no SIP after a refused handshake"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.pbx.log_text().contains("TLS connection refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = p.pbx.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("TLS connection refused"))
        .unwrap_or_else(|| panic!("a log line about the refused certificate:\n{log}"));
    assert!(line.contains("not valid for name"), "{line}");
}

/// RFC 4568 §8.3: SDES keys need a secure signalling channel. An INVITE whose SDP carries
/// `a=crypto` over UDP is refused with 488 (the keys are already public); the same INVITE over
/// TLS from a user with `srtp = "optional"` passes (and gets the dialplan's answer, here 404: no
/// rule).
#[test]
fn sdes_keys_in_clear_text_sip_are_refused_488() {
    let p = start(
        "[[users]]\nname = \"190\"\nidentify_by_source = true\nallow_from = [\"127.0.0.1/32\"]\n\
         srtp = \"optional\"\n\
         [[users]]\nname = \"191\"\nidentify_by_source = true\nallow_from = [\"::1/128\"]\n\
         transport = \"tls\"\nsrtp = \"required\"\n",
    );
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
               a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
    let invite = |local: SocketAddr, transport: &str, branch: &str| {
        request(
            "INVITE",
            "sip:555@pbx.test",
            local,
            transport,
            branch,
            &format!(
                "Contact: <sip:190@{local}>\r\nContent-Type: application/sdp\r\n\
                 Content-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            ),
        )
        // `request` ends with its own empty Content-Length: ours comes first and wins; cut it.
        .replacen("Content-Length: 0\r\n\r\n", "", 1)
    };
    let final_of = |next: &mut dyn FnMut() -> Option<Vec<u8>>| loop {
        let m = next().expect("a response");
        if status(&m) >= 200 {
            return m;
        }
    };

    let udp = common::UdpPeer::new(p.pbx.v4());
    udp.send(invite(udp.local(), "UDP", "z9hG4bKsdesudp").as_bytes());
    let resp = final_of(&mut || udp.recv());
    assert_eq!(status(&resp), 488, "{}", String::from_utf8_lossy(&resp));
    assert!(p
        .pbx
        .log_text()
        .contains("INVITE with SDES keys (a=crypto) over clear-text signalling: 488"));

    let mut s = t::connect(p.tls_v4(), &p.ca.files.cert, "pbx.test").unwrap();
    let local = s.sock.local_addr().unwrap();
    t::send(&mut s, invite(local, "TLS", "z9hG4bKsdestls").as_bytes());
    let resp = final_of(&mut || t::read_message(&mut s));
    assert_eq!(status(&resp), 404, "{}", String::from_utf8_lossy(&resp));

    // A caller with srtp = "required" offering plain RTP over TLS: 488, with the reason logged.
    let plain = sdp.replace("RTP/SAVP", "RTP/AVP").replace(
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        "",
    );
    let mut s6 = t::connect(p.tls_v6(), &p.ca.files.cert, "pbx.test").unwrap();
    let local = s6.sock.local_addr().unwrap();
    let req = invite(local, "TLS", "z9hG4bKsdesreq")
        .replace(sdp, &plain)
        .replace(
            &format!("Content-Length: {}", sdp.len()),
            &format!("Content-Length: {}", plain.len()),
        );
    t::send(&mut s6, req.as_bytes());
    let resp = final_of(&mut || t::read_message(&mut s6));
    assert_eq!(status(&resp), 488, "{}", String::from_utf8_lossy(&resp));
    assert!(p
        .pbx
        .log_text()
        .lines()
        .any(|l| l.contains("SRTP policy of the caller not met: 488")
            && l.contains("no usable a=crypto")));
}
