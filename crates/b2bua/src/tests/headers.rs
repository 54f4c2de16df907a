//! Headers that cross the B2BUA on purpose (issue #15): Alert-Info/Call-Info towards phones,
//! P-Asserted-Identity/Privacy towards and from trunks.

use super::*;

const EXTRA: &str = r#"
[[users]]
name = "105"
password = "e"
withhold_caller_id = true
[[trunks]]
name = "prov"
host = "2001:db8:ffff::1"
dids = ["4930100"]
caller_id = "+4930100"
send_pai = true
trust_pai = true
alert_info = true
[[trunks]]
name = "plain"
host = "2001:db8:fffe::1"
dids = ["4930200"]
caller_id = "+4930200"
[[dialplan]]
name = "did-prov"
match = { did = "4930100" }
action = "ring"
targets = ["102"]
[[dialplan]]
name = "did-plain"
match = { did = "4930200" }
action = "ring"
targets = ["102"]
[[dialplan]]
name = "intercom"
match = { number = "700", from = "local" }
action = "ring"
targets = ["102"]
alert_info = "<http://127.0.0.1/ring>;info=alert-autoanswer"
call_info = "<sip:pbx>;answer-after=0"
[[dialplan]]
name = "out-prov"
match = { prefix = "0", from = "local" }
action = "trunk"
trunk = "prov"
[[dialplan]]
name = "out-plain"
match = { prefix = "9", from = "local" }
action = "trunk"
trunk = "plain"
"#;

/// The harness directory plus the two trunks' addresses.
struct TDir(FakeDir);

impl Directory for TDir {
    fn contacts(&self, user: &str, now: Instant) -> Vec<ContactTarget> {
        self.0.contacts(user, now)
    }
    fn local_addr(&self, t: Transport, peer: IpAddr) -> Option<SocketAddr> {
        self.0.local_addr(t, peer)
    }
    fn trunk_destination(&self, name: &str) -> Option<SocketAddr> {
        match name {
            "prov" => Some("[2001:db8:ffff::1]:5060".parse().unwrap()),
            "plain" => Some("[2001:db8:fffe::1]:5060".parse().unwrap()),
            _ => None,
        }
    }
}

fn harness() -> (H, TDir) {
    let mut h = H::with_config(&format!("{CFG}{EXTRA}"));
    let dir = TDir(std::mem::take(&mut h.dir));
    (h, dir)
}

/// A new INVITE to `number` from `from` (a name-addr) with `extra` header lines; the one
/// INVITE podpbx sends on (to a phone or a trunk), as text.
fn call_through(
    h: &mut H,
    dir: &TDir,
    number: &str,
    from: &str,
    caller: Caller,
    extra: &str,
) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = format!(
        "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKhd{n};rport\r\nMax-Forwards: 70\r\n\
         From: {from};tag=h{n}\r\nTo: <sip:{number}@pbx>\r\nCall-ID: hd{n}@a\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:x@[2001:db8:1::a]:5062>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&text, caller, Some(dir));
    let codes = responses(&outs);
    assert!(
        codes.iter().all(|c| *c < 300),
        "the call goes on: {codes:?}"
    );
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1, "{outs:?}");
    super::text(&inv[0].1)
}

/// The values of every `name` header line of `msg`.
fn values(msg: &str, name: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

fn user(u: &str) -> Caller {
    Caller::User(u.into())
}

fn trunk(name: &str, did: &str) -> Caller {
    Caller::Trunk {
        name: name.into(),
        did: Some(did.into()),
    }
}

const AUTO_ANSWER: &str = "Alert-Info: <http://127.0.0.1/ring>;info=alert-autoanswer;delay=0\r\n\
                           Call-Info: <sip:pbx>;answer-after=0\r\n";

#[test]
fn an_authenticated_users_auto_answer_headers_reach_the_phone() {
    let (mut h, dir) = harness();
    let inv = call_through(
        &mut h,
        &dir,
        "102",
        "<sip:101@pbx>",
        user("101"),
        &format!("{AUTO_ANSWER}P-Asserted-Identity: <sip:999@evil>\r\nX-Secret: 1\r\n"),
    );
    assert_eq!(
        values(&inv, "Alert-Info"),
        ["<http://127.0.0.1/ring>;info=alert-autoanswer;delay=0"],
        "{inv}"
    );
    assert_eq!(
        values(&inv, "Call-Info"),
        ["<sip:pbx>;answer-after=0"],
        "{inv}"
    );
    // Nothing else of the caller's crosses: no PAI, no unknown header.
    assert!(values(&inv, "P-Asserted-Identity").is_empty(), "{inv}");
    assert!(values(&inv, "X-Secret").is_empty(), "{inv}");
}

#[test]
fn a_user_identified_by_its_source_address_cannot_make_a_phone_answer() {
    let (mut h, dir) = harness();
    // 190 is identify_by_source: its address is all that proves it (forgeable over UDP).
    h.a_flow = flow("198.51.100.50:5060", "198.51.100.10:5060");
    let text = format!(
        "INVITE sip:1@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bKdoor1\r\n\
         From: <sip:190@pbx>;tag=d\r\nTo: <sip:1@pbx>\r\nCall-ID: door@d\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:190@198.51.100.50>\r\n{AUTO_ANSWER}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let outs = h.invite_text(&text, user("190"), Some(&dir));
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 3, "the door rings all");
    for (_, data) in inv {
        let t = super::text(&data);
        assert!(values(&t, "Alert-Info").is_empty(), "{t}");
        assert!(values(&t, "Call-Info").is_empty(), "{t}");
    }
}

#[test]
fn a_trunks_alert_info_and_call_info_are_stripped_by_default() {
    let (mut h, dir) = harness();
    let inv = call_through(
        &mut h,
        &dir,
        "4930200",
        "<sip:+4917012345@provider>",
        trunk("plain", "4930200"),
        AUTO_ANSWER,
    );
    assert!(values(&inv, "Alert-Info").is_empty(), "{inv}");
    assert!(values(&inv, "Call-Info").is_empty(), "{inv}");
    assert!(!inv.contains("answer"), "{inv}");
}

#[test]
fn a_trunk_with_alert_info_passes_it_without_auto_answer() {
    let (mut h, dir) = harness();
    let inv = call_through(
        &mut h,
        &dir,
        "4930100",
        "<sip:+4917012345@provider>",
        trunk("prov", "4930100"),
        "Alert-Info: <http://127.0.0.1/ring>;info=alert-autoanswer, <http://x/intercom>\r\n\
         Alert-Info: <http://x/Bellcore-dr2>;answer-after=0\r\n\
         Call-Info: <http://x/icon.png>;purpose=icon\r\n",
    );
    assert_eq!(
        values(&inv, "Alert-Info"),
        ["<http://127.0.0.1/ring>", "<http://x/Bellcore-dr2>"],
        "{inv}"
    );
    assert!(values(&inv, "Call-Info").is_empty(), "{inv}");
    let c = h.b.security_counts();
    assert_eq!(c.auto_answer_stripped, 3, "{c:?}");
}

#[test]
fn trust_pai_shows_the_providers_asserted_caller() {
    let (mut h, dir) = harness();
    let pai = "P-Asserted-Identity: \"Alice\" <sip:+4917012345@provider>\r\n\
               P-Asserted-Identity: <tel:+4917012345>\r\n";
    // prov trusts its PAI: the phone sees Alice, not the From.
    let inv = call_through(
        &mut h,
        &dir,
        "4930100",
        "<sip:0000@provider>",
        trunk("prov", "4930100"),
        pai,
    );
    let from = &values(&inv, "From")[0];
    assert!(
        from.starts_with("\"Alice\" <sip:+4917012345@"),
        "{from}\n{inv}"
    );
    assert!(values(&inv, "P-Asserted-Identity").is_empty(), "{inv}");
    // A tel: URI alone does as well.
    let inv = call_through(
        &mut h,
        &dir,
        "4930100",
        "<sip:0000@provider>",
        trunk("prov", "4930100"),
        "P-Asserted-Identity: <tel:+4917099999;cpc=ordinary>\r\n",
    );
    assert!(
        values(&inv, "From")[0].starts_with("<sip:+4917099999@"),
        "{inv}"
    );
    // The caller asked for privacy: anonymous.
    let inv = call_through(
        &mut h,
        &dir,
        "4930100",
        "<sip:0000@provider>",
        trunk("prov", "4930100"),
        &format!("{pai}Privacy: id\r\n"),
    );
    assert!(
        values(&inv, "From")[0].starts_with("\"Anonymous\" <sip:anonymous@"),
        "{inv}"
    );
    // plain does not trust it: the From stays.
    let inv = call_through(
        &mut h,
        &dir,
        "4930200",
        "<sip:0000@provider>",
        trunk("plain", "4930200"),
        pai,
    );
    assert!(values(&inv, "From")[0].starts_with("<sip:0000@"), "{inv}");
    // A malformed PAI is ignored, never a failure.
    let inv = call_through(
        &mut h,
        &dir,
        "4930100",
        "<sip:0000@provider>",
        trunk("prov", "4930100"),
        "P-Asserted-Identity: <sip:\r\n",
    );
    assert!(values(&inv, "From")[0].starts_with("<sip:0000@"), "{inv}");
}

#[test]
fn send_pai_asserts_our_caller_id_and_a_withheld_one_goes_anonymous() {
    let (mut h, dir) = harness();
    // 101 through prov (send_pai): PAI with the trunk's caller ID; the phone's own PAI is
    // never forwarded.
    let inv = call_through(
        &mut h,
        &dir,
        "0301234",
        "<sip:101@pbx>",
        user("101"),
        "P-Asserted-Identity: <sip:+4999999@evil>\r\nP-Preferred-Identity: <sip:+4988888@evil>\r\n",
    );
    assert_eq!(
        values(&inv, "P-Asserted-Identity"),
        ["<sip:+4930100@[2001:db8:ffff::1]>"],
        "{inv}"
    );
    assert!(values(&inv, "P-Preferred-Identity").is_empty(), "{inv}");
    assert!(values(&inv, "Privacy").is_empty(), "{inv}");
    assert!(
        values(&inv, "From")[0].starts_with("<sip:+4930100@[2001:db8:ffff::1]>"),
        "{inv}"
    );
    // 105 withholds its caller ID: anonymous From, Privacy: id, the identity in PAI only.
    let inv = call_through(&mut h, &dir, "0301234", "<sip:105@pbx>", user("105"), "");
    assert!(
        values(&inv, "From")[0].starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="),
        "{inv}"
    );
    assert_eq!(values(&inv, "Privacy"), ["id"], "{inv}");
    assert_eq!(
        values(&inv, "P-Asserted-Identity"),
        ["<sip:+4930100@[2001:db8:ffff::1]>"],
        "{inv}"
    );
    // plain has no send_pai: no PAI at all, the phone's included.
    let inv = call_through(
        &mut h,
        &dir,
        "9301234",
        "<sip:101@pbx>",
        user("101"),
        "P-Asserted-Identity: <sip:+4999999@evil>\r\n",
    );
    assert!(values(&inv, "P-Asserted-Identity").is_empty(), "{inv}");
    assert!(!inv.contains("4999999"), "{inv}");
}

#[test]
fn the_rules_alert_info_replaces_the_callers() {
    let (mut h, dir) = harness();
    let inv = call_through(
        &mut h,
        &dir,
        "700",
        "<sip:101@pbx>",
        user("101"),
        "Alert-Info: <http://evil/>\r\n",
    );
    assert_eq!(
        values(&inv, "Alert-Info"),
        ["<http://127.0.0.1/ring>;info=alert-autoanswer"],
        "{inv}"
    );
    assert_eq!(
        values(&inv, "Call-Info"),
        ["<sip:pbx>;answer-after=0"],
        "{inv}"
    );
}

#[test]
fn oversize_non_ascii_malformed_and_surplus_values_are_dropped_and_counted() {
    let (mut h, dir) = harness();
    let long = format!("<http://x/{}>", "a".repeat(260));
    let extra = format!(
        "Alert-Info: <http://x/1>, {long}, <http://x/2>\r\n\
         Alert-Info: <http://x/caf\u{e9}>, <http://x/3\r\n\
         Alert-Info: <http://x/4>, <http://x/5>, <http://x/6>\r\n\
         Call-Info: \"unterminated <http://x/>\r\n"
    );
    let inv = call_through(&mut h, &dir, "102", "<sip:101@pbx>", user("101"), &extra);
    assert_eq!(
        values(&inv, "Alert-Info"),
        [
            "<http://x/1>",
            "<http://x/2>",
            "<http://x/4>",
            "<http://x/5>"
        ],
        "{inv}"
    );
    assert!(values(&inv, "Call-Info").is_empty(), "{inv}");
    // long, café, the unterminated URI, <http://x/6> (a fifth) and the Call-Info.
    assert_eq!(h.b.security_counts().headers_dropped, 5);
}
