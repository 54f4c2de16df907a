//! Attacks that only need a forged source address (issue #11), against the real binary on
//! loopback. The "provider" is a plain UDP socket on [::1] that must never see an INVITE; the
//! forger sends from 127.0.0.1 (the address a doorbell or the provider's network is configured
//! with, which any UDP packet can claim) or from [::1] (an address the dialog's peer does not
//! use):
//!
//! 1. a forged doorbell INVITE to an external number: the catch-all outbound rule must not take
//!    it to the trunk (403, nothing at the provider); an explicit `from = "device"` rule may;
//! 2. a forged provider INVITE to a number that is none of the trunk's DIDs: 404, not routed;
//! 3. a forged provider INVITE to a DID whose rule forwards it out through the trunk without
//!    saying `from = "trunk"`: refused (403), nothing at the provider;
//! 4. a BYE forged with the dialog's Call-ID and tags from another address: 481, the call
//!    stays up, the phone never sees it;
//! 5. a CANCEL forged with the INVITE's Via and Call-ID from another address: 481, the phone
//!    keeps ringing.

mod common;

use common::*;
use podpbx_sip::digest::DigestClient;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

/// A UDP socket speaking SIP by hand: bound on loopback of `family_of`, talking to `target`.
struct Ua {
    sock: UdpSocket,
    target: SocketAddr,
}

impl Ua {
    fn new(bind: &str, target: SocketAddr) -> Ua {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.connect(target).unwrap();
        Ua { sock, target }
    }
    fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }
    fn send(&self, text: &str) {
        self.sock.send(text.as_bytes()).unwrap();
    }
    /// The next message within `t` (`None`: silence).
    fn recv(&self, t: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(t)).unwrap();
        let mut buf = vec![0u8; 65536];
        self.sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }
    /// The next final response within 3 s.
    fn final_response(&self) -> Vec<u8> {
        self.final_within(Duration::from_secs(3))
            .expect("no final response")
    }

    /// The next final response within `t`, if any.
    fn final_within(&self, t: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + t;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(m) = self.recv(left) {
                if m.starts_with(b"SIP/2.0 ") && status(&m) >= 200 {
                    return Some(m);
                }
            }
        }
        None
    }
    /// The next request with `method` within `t`.
    fn request(&self, method: &str, t: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + t;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let m = self.recv(left)?;
            if m.starts_with(format!("{method} ").as_bytes()) {
                return Some(m);
            }
        }
        None
    }

    fn invite_text(&self, number: &str, branch: &str, cseq: u32, extra: &str) -> String {
        let (h, th) = (host(self.local()), host(self.target));
        format!(
            "INVITE sip:{number}@{th} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {h}:{p};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:101@{th}>;tag=caller-{p}\r\n\
             To: <sip:{number}@{th}>\r\n\
             Call-ID: forged-{p}@test\r\n\
             CSeq: {cseq} INVITE\r\n\
             Contact: <sip:101@{h}:{p}>\r\n\
             {extra}Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{SDP}",
            SDP.len(),
            p = self.local().port()
        )
    }

    /// Registers `user` with digest; panics unless 200.
    fn register(&self, user: &str, password: &str) {
        let (h, th) = (host(self.local()), host(self.target));
        let text = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:{th} SIP/2.0\r\nVia: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-reg{cseq}-{p};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@{th}>;tag=r{p}\r\nTo: <sip:{user}@{th}>\r\n\
                 Call-ID: reg-{p}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{h}:{p}>\r\n\
                 Expires: 300\r\n{auth}Content-Length: 0\r\n\r\n",
                p = self.local().port()
            )
        };
        self.send(&text(1, ""));
        let ch = self.final_response();
        let mut c = DigestClient::new(user, password, b"forged".to_vec());
        c.on_challenge(&[header(&ch, "WWW-Authenticate").unwrap()])
            .unwrap();
        let auth = c
            .authorization("REGISTER", &format!("sip:{th}"), b"")
            .unwrap();
        self.send(&text(2, &format!("Authorization: {auth}\r\n")));
        assert_eq!(status(&self.final_response()), 200, "{user} registers");
    }

    /// INVITE as 101 with digest; returns the authenticated INVITE's text (for CANCEL/ACK).
    fn call_as_101(&self, number: &str) -> String {
        let first = self.invite_text(number, "z9hG4bK-inv1", 1, "");
        self.send(&first);
        let ch = self.final_response();
        assert_eq!(status(&ch), 407, "{}", String::from_utf8_lossy(&ch));
        self.send(&ack_for(&first, &ch));
        let mut c = DigestClient::new("101", "pw-101", b"c".to_vec());
        c.on_challenge(&[header(&ch, "Proxy-Authenticate").unwrap()])
            .unwrap();
        let ruri = format!("sip:{number}@{}", host(self.target));
        let auth = c.authorization("INVITE", &ruri, b"").unwrap();
        let second = self.invite_text(
            number,
            "z9hG4bK-inv2",
            2,
            &format!("Proxy-Authorization: {auth}\r\n"),
        );
        self.send(&second);
        second
    }
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
    let ruri = invite.split(' ').nth(1).unwrap_or_default();
    let cseq = line("CSeq:").replace("INVITE", "ACK");
    let to = header(resp, "To").unwrap_or_default();
    format!(
        "ACK {ruri} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\nTo: {to}\r\n{}\r\n{cseq}\r\nContent-Length: 0\r\n\r\n",
        line("Via:"),
        line("From:"),
        line("Call-ID:"),
    )
}

/// The provider stand-in: a socket on [::1] nothing may reach.
fn provider() -> UdpSocket {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// INVITEs with a Call-ID not seen before (our retransmissions count once) reaching the
/// provider within `within`.
fn invites_at(
    provider: &UdpSocket,
    seen: &mut std::collections::HashSet<Option<String>>,
    within: Duration,
) -> usize {
    let end = Instant::now() + within;
    let mut n = 0;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        if let Ok(len) = provider.recv(&mut buf) {
            if buf[..len].starts_with(b"INVITE ") && seen.insert(header(&buf[..len], "Call-ID")) {
                n += 1;
            }
        }
    }
    n
}

/// A forged INVITE from `src` to `number`: podpbx's final answer (within 3 s) and the new
/// INVITEs that reached the provider.
fn forge_invite(
    pbx: &Pbx,
    prov: &UdpSocket,
    seen: &mut std::collections::HashSet<Option<String>>,
    src: &str,
    number: &str,
) -> (Option<u16>, usize) {
    let forger = Ua::new(src, pbx.v4());
    forger.send(&forger.invite_text(number, &format!("z9hG4bK-forged-{number}"), 1, ""));
    let resp = forger.final_within(Duration::from_secs(3));
    let at_provider = invites_at(prov, seen, Duration::from_millis(1500));
    (resp.as_deref().map(status), at_provider)
}

fn trunk(provider: &UdpSocket, extra: &str) -> String {
    format!(
        "[[trunks]]\nname = \"prov\"\nhost = \"::1\"\nport = {}\nregister = false\n{extra}\n",
        provider.local_addr().unwrap().port()
    )
}

const DOOR_USERS: &str = r#"
[[users]]
name = "101"
password = "pw-101"

[[users]]
name = "door"
identify_by_source = true
allow_from = ["127.0.0.1/32"]
"#;

/// Attack 1: the doorbell's address is its only credential; a forged packet from it dials a
/// premium number through the catch-all outbound rule.
#[test]
fn forged_doorbell_cannot_dial_out_through_the_trunk() {
    let prov = provider();
    let pbx = Pbx::start(&format!(
        "{DOOR_USERS}\n{}\n[[dialplan]]\nname = \"out\"\nmatch = {{ prefix = \"0\" }}\naction = \"trunk\"\ntrunk = \"prov\"\n",
        trunk(&prov, "")
    ));
    let mut seen = std::collections::HashSet::new();
    let got = forge_invite(&pbx, &prov, &mut seen, "127.0.0.1:0", "0900123456");
    assert_eq!(
        got,
        (Some(403), 0),
        "a forged doorbell call to an external number: (answer, INVITEs at the provider) = {got:?}"
    );
    // An authenticated phone is not affected by any of this.
    let phone = Ua::new("[::1]:0", pbx.v6());
    phone.call_as_101("0301234567");
    assert_eq!(
        invites_at(&prov, &mut seen, Duration::from_secs(2)),
        1,
        "authenticated caller"
    );
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_calls_trunk_refused_total").unwrap_or(0.0) >= 1.0);
}

/// The knobs for a device that must call out (not an attack): an explicit `from = "device"`
/// rule, or `may_use_trunks` on the user.
#[test]
fn devices_reach_a_trunk_only_through_explicit_rules_or_may_use_trunks() {
    let prov = provider();
    let pbx = Pbx::start(&format!(
        r#"{DOOR_USERS}
[[users]]
name = "gate"
identify_by_source = true
allow_from = ["127.0.0.2/32"]
may_use_trunks = true

{}
[[dialplan]]
name = "door-service"
match = {{ from = "device", number = "0800111" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "out"
match = {{ prefix = "0" }}
action = "trunk"
trunk = "prov"
"#,
        trunk(&prov, "")
    ));
    let mut seen = std::collections::HashSet::new();
    let door = Ua::new("127.0.0.1:0", pbx.v4());
    door.send(&door.invite_text("0800111", "z9hG4bK-door2", 1, ""));
    assert_eq!(
        invites_at(&prov, &mut seen, Duration::from_secs(2)),
        1,
        "from = \"device\" may"
    );
    let gate = Ua::new("127.0.0.2:0", pbx.v4());
    gate.send(&gate.invite_text("0301234567", "z9hG4bK-gate1", 1, ""));
    assert_eq!(
        invites_at(&prov, &mut seen, Duration::from_secs(2)),
        1,
        "may_use_trunks may"
    );
    // `podpbx check` names both rules.
    let (code, _, err) = {
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(pbx.dir.path().join("podpbx.toml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: dialplan rule `door-service`: user `door`")
            && err.contains("warning: dialplan rule `out`: user `gate`")
            && !err.contains("rule `out`: user `door`"),
        "{err}"
    );
}

/// podpbx with a trunk whose networks are 127.0.0.1 (two DIDs), a rule forwarding one DID out
/// through the trunk without `from = "trunk"`, a catch-all outbound rule and a catch-all to a
/// phone.
fn provider_pbx() -> (UdpSocket, Pbx) {
    let prov = provider();
    let pbx = Pbx::start(&format!(
        r#"
[[users]]
name = "101"
password = "pw-101"

{}
[[dialplan]]
name = "forward-did"
match = {{ number = "+4930555001" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "out"
match = {{ prefix = "0" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "rest"
match = {{}}
action = "ring"
targets = ["101"]
"#,
        trunk(
            &prov,
            "dids = [\"+4930555000\", \"+4930555001\"]\nnetworks = [\"127.0.0.1/32\"]"
        )
    ));
    (prov, pbx)
}

/// Attack 2: a forged provider INVITE to a number that is none of the trunk's DIDs.
#[test]
fn forged_provider_call_to_no_did_gets_404_and_is_not_routed() {
    let (prov, pbx) = provider_pbx();
    let mut seen = std::collections::HashSet::new();
    // 2. No DID: 404, no rule runs (neither "out" to the trunk nor "rest" to a phone).
    let got = forge_invite(&pbx, &prov, &mut seen, "127.0.0.1:0", "00881234567");
    assert_eq!(
        got,
        (Some(404), 0),
        "a provider call to a number that is no DID: (answer, INVITEs at the provider) = {got:?}"
    );
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_calls_not_a_did_total").unwrap_or(0.0) >= 1.0);
}

/// Attack 3: a forged provider INVITE to a DID whose rule forwards it out through the trunk.
#[test]
fn forged_provider_call_does_not_go_back_out_through_the_trunk() {
    let (prov, pbx) = provider_pbx();
    let mut seen = std::collections::HashSet::new();
    // 3. A DID forwarded out by a rule that does not say `from = "trunk"`: refused.
    let got = forge_invite(&pbx, &prov, &mut seen, "127.0.0.1:0", "+4930555001");
    assert_eq!(got, (Some(403), 0), "a provider call hairpinned out through the trunk: (answer, INVITEs at the provider) = {got:?}");
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_calls_trunk_refused_total").unwrap_or(0.0) >= 1.0);
}

/// A call 101 (127.0.0.1) -> 102 (127.0.0.1, registered), ringing; returns (caller, callee,
/// the INVITE the callee got, the caller's authenticated INVITE).
fn ringing_call(pbx: &Pbx) -> (Ua, Ua, Vec<u8>, String) {
    let callee = Ua::new("127.0.0.1:0", pbx.v4());
    callee.register("102", "pw-102");
    let caller = Ua::new("127.0.0.1:0", pbx.v4());
    let invite = caller.call_as_101("102");
    let got = callee
        .request("INVITE", Duration::from_secs(3))
        .expect("the phone is called");
    (caller, callee, got, invite)
}

/// A response from the callee to the INVITE it got.
fn answer(callee: &Ua, inv: &[u8], code: u16, reason: &str, body: Option<&str>) {
    let text = String::from_utf8_lossy(inv);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("Via:")
                || l.starts_with("From:")
                || l.starts_with("Call-ID:")
                || l.starts_with("CSeq:")
        })
        .collect();
    let to = header(inv, "To").unwrap();
    let h = host(callee.local());
    let (ct, body) = match body {
        Some(b) => ("Content-Type: application/sdp\r\n", b),
        None => ("", ""),
    };
    callee.send(&format!(
        "SIP/2.0 {code} {reason}\r\n{}\r\nTo: {to};tag=callee-tag\r\nContact: <sip:102@{h}:{}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        lines.join("\r\n"),
        callee.local().port(),
        body.len()
    ));
}

/// Attack 4: a BYE with the right Call-ID and tags, from an address the dialog's peer does
/// not use.
#[test]
fn forged_bye_from_another_address_does_not_end_the_call() {
    let pbx = Pbx::start(CALL_USERS);
    let (caller, callee, inv, _) = ringing_call(&pbx);
    answer(&callee, &inv, 200, "OK", Some(SDP));
    let ok = caller.final_response();
    assert_eq!(status(&ok), 200);
    // The caller's ACK (its dialog is up).
    let to = header(&ok, "To").unwrap();
    let (h, th) = (host(caller.local()), host(pbx.v4()));
    let p = caller.local().port();
    caller.send(&format!(
        "ACK sip:102@{th} SIP/2.0\r\nVia: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-ack2;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@{th}>;tag=caller-{p}\r\nTo: {to}\r\nCall-ID: forged-{p}@test\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    let _ = callee.request("ACK", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let active = |pbx: &Pbx| metric(&http_get(pbx.admin, "/metrics").1, "podpbx_calls_active");
    assert_eq!(active(&pbx), Some(1.0), "the call is up");
    // The attacker knows Call-ID and both tags (they crossed the network) and sends from [::1].
    let attacker = Ua::new("[::1]:0", pbx.v6());
    let ah = host(attacker.local());
    let ap = attacker.local().port();
    attacker.send(&format!(
        "BYE sip:102@{} SIP/2.0\r\nVia: SIP/2.0/UDP {ah}:{ap};branch=z9hG4bK-forged-bye;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@{th}>;tag=caller-{p}\r\nTo: {to}\r\nCall-ID: forged-{p}@test\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        host(pbx.v6())
    ));
    let resp = attacker.final_response();
    let bye_at_phone = callee.request("BYE", Duration::from_millis(1500));
    assert!(
        bye_at_phone.is_none() && status(&resp) == 481,
        "a forged BYE from another address: answered {} and the phone {} a BYE",
        status(&resp),
        if bye_at_phone.is_some() {
            "got"
        } else {
            "did not get"
        }
    );
    assert_eq!(active(&pbx), Some(1.0), "the call is still up");
    let m = http_get(pbx.admin, "/metrics").1;
    assert!(metric(&m, "podpbx_sip_foreign_source_total").unwrap_or(0.0) >= 1.0);
    // The real caller can still hang up.
    caller.send(&format!(
        "BYE sip:102@{th} SIP/2.0\r\nVia: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-bye3;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:101@{th}>;tag=caller-{p}\r\nTo: {to}\r\nCall-ID: forged-{p}@test\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(status(&caller.final_response()), 200);
    assert!(callee.request("BYE", Duration::from_secs(2)).is_some());
}

const CALL_USERS: &str = r#"
[[users]]
name = "101"
password = "pw-101"

[[users]]
name = "102"
password = "pw-102"

[[dialplan]]
name = "local"
match = {}
action = "local"
"#;

/// Attack 5: a CANCEL with the INVITE's Via and Call-ID, from another address.
#[test]
fn forged_cancel_from_another_address_cancels_nothing() {
    let pbx = Pbx::start(CALL_USERS);
    let (caller, callee, inv, invite) = ringing_call(&pbx);
    answer(&callee, &inv, 180, "Ringing", None);
    let attacker = Ua::new("[::1]:0", pbx.v6());
    // The CANCEL copies the INVITE's Request-URI, Via, From, To, Call-ID and CSeq number.
    let line = |name: &str| {
        invite
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    let ruri = invite.split(' ').nth(1).unwrap();
    attacker.send(&format!(
        "CANCEL {ruri} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\n{}\r\n{}\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n",
        line("Via:"),
        line("From:"),
        line("To:"),
        line("Call-ID:"),
    ));
    let resp = attacker.final_response();
    let cancel_at_phone = callee.request("CANCEL", Duration::from_millis(1500));
    assert!(
        cancel_at_phone.is_none() && status(&resp) == 481,
        "a forged CANCEL from another address: answered {} and the phone {} a CANCEL",
        status(&resp),
        if cancel_at_phone.is_some() {
            "got"
        } else {
            "did not get"
        }
    );
    // The real caller's CANCEL works.
    caller.send(&format!(
        "CANCEL {ruri} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\n{}\r\n{}\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n",
        line("Via:"),
        line("From:"),
        line("To:"),
        line("Call-ID:"),
    ));
    assert!(
        callee.request("CANCEL", Duration::from_secs(3)).is_some(),
        "the real CANCEL reaches the phone"
    );
}
