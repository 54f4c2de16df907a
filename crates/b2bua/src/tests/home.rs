//! Calls podpbx answers itself (voicemail as a fallback, listening to a mailbox) and routing by
//! mode and time, in virtual time with a fake media endpoint.

use super::*;

#[derive(Default)]
struct EpLog {
    next: u64,
    opened: Vec<Family>,
    started: Vec<(EndpointId, SocketAddr, Codec, App)>,
    stopped: Vec<EndpointId>,
    busy: bool,
}

#[derive(Clone, Default)]
struct FakeEndpoint(Arc<Mutex<EpLog>>);

impl EndpointPort for FakeEndpoint {
    fn open(&mut self, family: Family) -> Result<(EndpointId, SocketAddr), String> {
        let mut l = self.0.lock().unwrap();
        if l.busy {
            return Err("all 1 voicemail sessions are busy".into());
        }
        l.next += 1;
        l.opened.push(family);
        let ip = match family {
            Family::V4 => "198.51.100.10",
            Family::V6 => "2001:db8::10",
        };
        Ok((l.next, SocketAddr::new(ip.parse().unwrap(), 41000)))
    }
    fn start(&mut self, id: EndpointId, remote: SocketAddr, codec: Codec, app: App) {
        self.0
            .lock()
            .unwrap()
            .started
            .push((id, remote, codec, app));
    }
    fn stop(&mut self, id: EndpointId) {
        self.0.lock().unwrap().stopped.push(id);
    }
}

const HOME: &str = r#"
[sip]
ipv6 = "2001:db8::1"
ipv4 = "198.51.100.10"
[clock]
timezone = "Europe/Berlin"
[[modes]]
name = "night"
[[users]]
name = "101"
password = "a"
voicemail = true
voicemail_pin = "4711"
[[users]]
name = "102"
password = "b"
voicemail = true
[[users]]
name = "103"
password = "c"
[[dialplan]]
name = "night"
match = { number = "500", mode = "night" }
action = "voicemail"
mailbox = "101"
[[dialplan]]
name = "evening"
match = { number = "500", time = { hours = ["18:00-22:00"] } }
action = "reject"
status = 486
[[dialplan]]
name = "main"
match = { number = "500" }
action = "ring"
targets = ["102"]
timeout_secs = 10
[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 15
fallback = [{ action = "voicemail" }, { action = "reject", status = 480 }]
"#;

fn home() -> (H, FakeEndpoint) {
    let mut h = H::with_config(HOME);
    let ep = FakeEndpoint::default();
    h.b.set_endpoint(Box::new(ep.clone()));
    (h, ep)
}

fn ok_sdp(outs: &[Output]) -> Option<String> {
    outs.iter().find_map(|o| match o {
        Output::Respond {
            status: StatusCode::OK,
            data,
            ..
        } => Some(String::from_utf8_lossy(&parse(data).body).into_owned()),
        _ => None,
    })
}

fn to_tag_of_ok(outs: &[Output]) -> String {
    outs.iter()
        .find_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => parse(data).to_hdr().ok()?.tag(),
            _ => None,
        })
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .expect("200 with a To tag")
}

#[test]
fn no_answer_falls_back_to_voicemail_answered_by_the_endpoint() {
    let (mut h, ep) = home();
    let outs = h.invite("102", Caller::User("103".into()), Some(SDP_A));
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1, "102 rings first");
    let (id, data) = inv[0].clone();
    h.answer(id, &data, 180, "btag", None);
    // 15 s ring time: CANCEL, then the voicemail step answers the caller.
    let outs = h.advance(Duration::from_secs(16));
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    let sdp = ok_sdp(&outs).expect("the caller gets 200 from the voicemail");
    assert!(
        sdp.contains("c=IN IP6 2001:db8::10") && sdp.contains("m=audio 41000 RTP/AVP 0 101"),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000"), "{sdp}");
    let l = ep.0.lock().unwrap();
    assert_eq!(l.opened, vec![Family::V6]);
    let (eid, remote, codec, app) = l.started[0].clone();
    assert_eq!(
        remote,
        "[2001:db8:1::a]:4000".parse().unwrap(),
        "RTP straight to the caller's SDP address"
    );
    assert_eq!(codec.telephone_event, Some(101));
    assert_eq!(
        app,
        App::Deposit {
            mailbox: "102".into(),
            caller: "103".into(),
            caller_name: None
        }
    );
    drop(l);
    // The caller hangs up: the session stops, the CDR says who answered.
    let tag = to_tag_of_ok(&outs);
    let bye = format!("BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKvm3\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    let mut outs = h.in_dialog(bye, h.a_flow);
    assert_eq!(responses(&outs), vec![200]);
    assert_eq!(ep.0.lock().unwrap().stopped, vec![eid]);
    // The CANCELled leg's 487 arrives; the call finishes.
    let cancel = requests(&h.outs, "CANCEL")[0].clone();
    outs.extend(h.answer(cancel.0, &cancel.1, 200, "btag", None));
    outs.extend(h.answer(id, &data, 487, "btag", None));
    outs.extend(h.advance(Duration::from_secs(40)));
    let c = cdr(&outs).expect("CDR");
    assert_eq!(c.answered_by.as_deref(), Some("voicemail:102"));
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(h.b.active_calls(), 0);
}

#[test]
fn the_endpoint_hanging_up_sends_bye() {
    let (mut h, ep) = home();
    h.b.set_mode("night", true);
    let outs = h.invite(
        "500",
        Caller::Trunk {
            name: "x".into(),
            did: None,
        },
        Some(SDP_A),
    );
    assert!(ok_sdp(&outs).is_some(), "night: voicemail at once");
    let eid = ep.0.lock().unwrap().started[0].0;
    assert!(
        matches!(&ep.0.lock().unwrap().started[0].3, App::Deposit { mailbox, .. } if mailbox == "101")
    );
    h.b.endpoint_done(h.now, eid);
    let outs = h.drain();
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1, "BYE to the caller");
    let outs = h.answer(byes[0].0, &byes[0].1, 200, "x", None);
    let c = cdr(&outs).expect("CDR");
    assert_eq!(c.hangup_by.as_deref(), Some("callee"));
    // A late notice for a gone session is ignored.
    h.b.endpoint_done(h.now, eid);
    assert!(h.drain().is_empty());
}

#[test]
fn voicemail_needs_g711_and_a_free_session_else_the_next_step() {
    let (mut h, ep) = home();
    // Opus only: the voicemail step cannot answer; the reject fallback runs.
    let opus = "v=0\r\no=a 1 1 IN IP6 2001:db8:1::a\r\ns=-\r\nc=IN IP6 2001:db8:1::a\r\nt=0 0\r\nm=audio 4000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let outs = h.invite("120", Caller::User("103".into()), Some(opus));
    assert!(responses(&outs).contains(&480), "{:?}", responses(&outs));
    // Every session busy: the same.
    ep.0.lock().unwrap().busy = true;
    let outs = h.invite("120", Caller::User("103".into()), Some(SDP_A));
    assert!(responses(&outs).contains(&480));
    assert!(ep.0.lock().unwrap().started.is_empty());
}

#[test]
fn own_mailbox_by_feature_code_needs_a_pin() {
    let (mut h, ep) = home();
    let outs = h.invite("*97", Caller::User("101".into()), Some(SDP_A));
    assert!(ok_sdp(&outs).is_some());
    assert_eq!(
        ep.0.lock().unwrap().started[0].3,
        App::Retrieve {
            mailbox: "101".into(),
            pin: "4711".into()
        }
    );
    // 102 has a mailbox without PIN, 103 none: 404; a trunk caller dialling *97 is routed
    // by the dialplan (no rule: 404), never to a mailbox.
    for (caller, want) in [
        (Caller::User("102".into()), 404),
        (Caller::User("103".into()), 404),
    ] {
        let outs = h.invite("*97", caller, Some(SDP_A));
        assert!(responses(&outs).contains(&want), "{:?}", responses(&outs));
    }
    let outs = h.invite(
        "*97",
        Caller::Trunk {
            name: "x".into(),
            did: Some("*97".into()),
        },
        Some(SDP_A),
    );
    assert!(responses(&outs).contains(&404));
    assert_eq!(ep.0.lock().unwrap().started.len(), 1);
}

#[test]
fn routing_follows_modes_and_the_local_time() {
    let (mut h, _) = home();
    // Daytime (the test's wall clock might be any time: check the rule names over a fixed
    // instant instead, through the config, then the mode switch through calls).
    let cfg = h.b.config().clone();
    let origin = podpbx_config::Origin::Trunk {
        trunk: "x",
        did: None,
    };
    let none = |_: &str| None;
    let at = |secs: u64| {
        let when = podpbx_config::When::at(
            &cfg,
            std::time::UNIX_EPOCH + Duration::from_secs(secs),
            &none,
        );
        cfg.route_at(&origin, "500", &when).map(|r| r.name.clone())
    };
    assert_eq!(at(1_767_603_600).as_deref(), Some("main"), "10:00 Berlin");
    assert_eq!(
        at(1_767_603_600 + 9 * 3600).as_deref(),
        Some("evening"),
        "19:00 Berlin"
    );
    assert_eq!(h.b.modes(), vec![("night".to_string(), false)]);
    assert!(h.b.set_mode("night", true));
    assert!(!h.b.set_mode("holiday", true));
    let outs = h.invite(
        "500",
        Caller::Trunk {
            name: "x".into(),
            did: None,
        },
        Some(SDP_A),
    );
    assert!(ok_sdp(&outs).is_some(), "night rule: voicemail");
    h.b.set_mode("night", false);
    assert_eq!(h.b.modes(), vec![("night".to_string(), false)]);
}

#[test]
fn blf_dialog_states_follow_a_call() {
    use podpbx_presence::dialog_info::{Direction, State};
    let (mut h, _) = home();
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    assert_eq!(
        h.b.take_presence_changes(),
        vec!["101".to_string(), "102".to_string()]
    );
    assert!(h.b.take_presence_changes().is_empty());
    let d = h.b.dialogs_of("102");
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].state, d[0].direction),
        (State::Trying, Direction::Recipient)
    );
    assert_eq!(d[0].remote.as_ref().unwrap().uri, "sip:101@localhost");
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    assert_eq!(
        h.b.take_presence_changes(),
        vec!["101".to_string(), "102".to_string()]
    );
    let d = h.b.dialogs_of("102");
    assert_eq!(d[0].state, State::Early);
    // The phone's own identifiers: its tag is the local one (for Replaces).
    assert_eq!(d[0].local_tag.as_deref(), Some("btag"));
    assert!(d[0].call_id.as_ref().is_some_and(|c| c != "acall@a"));
    let caller = h.b.dialogs_of("101");
    assert_eq!(
        (caller[0].state, caller[0].direction),
        (State::Early, Direction::Initiator)
    );
    assert_eq!(caller[0].call_id.as_deref(), Some("acall@a"));
    assert_eq!(caller[0].local_tag.as_deref(), Some("atag"));
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(h.b.dialogs_of("102")[0].state, State::Confirmed);
    assert_eq!(h.b.dialogs_of("101")[0].state, State::Confirmed);
    assert!(h.b.dialogs_of("103").is_empty());
    // BYE from the caller: both idle.
    let tag = to_tag_of_ok(&outs);
    let bye = format!("BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKblf3\r\nFrom: <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx>;tag={tag}\r\nCall-ID: acall@a\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    h.take_changes_after(bye);
    assert!(h.b.dialogs_of("102").is_empty());
    assert!(h.b.dialogs_of("101").is_empty());
}

impl H {
    fn take_changes_after(&mut self, bye: String) {
        let f = self.a_flow;
        self.in_dialog(bye, f);
        assert!(!self.b.take_presence_changes().is_empty());
    }
}
