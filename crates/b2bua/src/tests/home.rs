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

// ----- forwarding, DND, feature codes --------------------------------------------------------

const FWD: &str = r#"
[[trunks]]
name = "prov"
host = "2001:db8:ffff::1"
username = "4930"
password = "secret"
[[dialplan]]
name = "out"
match = { prefix = "0", caller = "102" }
action = "trunk"
trunk = "prov"
"#;

fn fwd() -> (H, FakeEndpoint, TrunkDir) {
    let text = HOME
        .replace(
            "[[modes]]\nname = \"night\"",
            "[[modes]]\nname = \"night\"\nfeature_code = \"*55\"",
        )
        .replace(
            "name = \"102\"\npassword = \"b\"",
            "name = \"102\"\npassword = \"b\"\nforward = { no_answer_secs = 5 }",
        );
    // The trunk rule first: `ext` (_1XX) does not cover 0-numbers anyway.
    let text = format!("{text}{FWD}");
    let mut h = H::with_config(&text);
    let ep = FakeEndpoint::default();
    h.b.set_endpoint(Box::new(ep.clone()));
    let dir = TrunkDir(std::mem::take(&mut h.dir));
    (h, ep, dir)
}

impl H {
    fn invite_via(&mut self, dir: &dyn Directory, number: &str, caller: &str) -> Vec<Output> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = format!(
            "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKf{n};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{caller}@pbx>;tag=f{n}\r\nTo: <sip:{number}@pbx>\r\nCall-ID: fwd{n}@a\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{caller}@[2001:db8:1::a]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
            SDP_A.len()
        );
        let msg = parse(&Bytes::from(text));
        let tx = self.server_tx(&msg, self.a_flow);
        self.b.handle_invite(
            self.now,
            SystemTime::now(),
            Received {
                tx,
                msg: &msg,
                flow: self.a_flow,
            },
            Caller::User(caller.into()),
            dir,
        );
        self.drain()
    }

    fn advance_via(&mut self, dir: &dyn Directory, d: Duration) -> Vec<Output> {
        let end = self.now + d;
        while let Some(t) = self.b.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.b.handle_timeout(self.now, dir);
        }
        self.now = end;
        self.drain()
    }
}

fn announced(ep: &FakeEndpoint) -> Vec<podpbx_voicemail::prompts::Prompt> {
    ep.0.lock()
        .unwrap()
        .started
        .iter()
        .filter_map(|s| match &s.3 {
            App::Announce(p) => Some(p[0]),
            _ => None,
        })
        .collect()
}

#[test]
fn feature_codes_set_forwarding_and_dnd_and_say_so() {
    use podpbx_voicemail::prompts::Prompt;
    let (mut h, ep, dir) = fwd();
    assert!(
        ok_sdp(&h.invite_via(&dir, "*21*103#", "101")).is_some(),
        "answered to confirm"
    );
    assert_eq!(
        h.b.user_features("101").unwrap().always.as_deref(),
        Some("103")
    );
    h.invite_via(&dir, "*61*0301234", "102");
    assert_eq!(
        h.b.user_features("102").unwrap().no_answer.as_deref(),
        Some("0301234")
    );
    // 103 may not call out: forwarding out is refused (toll fraud).
    h.invite_via(&dir, "*21*0301234#", "103");
    assert_eq!(h.b.user_features("103").unwrap().always, None);
    // To itself: refused; to garbage: refused.
    h.invite_via(&dir, "*21*101#", "101");
    h.invite_via(&dir, "*67*abc#", "101");
    h.invite_via(&dir, "*78", "103");
    assert!(h.b.user_features("103").unwrap().dnd);
    h.invite_via(&dir, "#21#", "101");
    assert_eq!(h.b.user_features("101").unwrap().always, None);
    h.invite_via(&dir, "*55", "103");
    assert_eq!(h.b.modes(), vec![("night".to_string(), true)]);
    h.invite_via(&dir, "*55", "103");
    assert_eq!(h.b.modes(), vec![("night".to_string(), false)]);
    assert_eq!(
        announced(&ep),
        vec![
            Prompt::Activated,
            Prompt::Activated,
            Prompt::NotAllowed,
            Prompt::NotAllowed,
            Prompt::NotAllowed,
            Prompt::Activated,
            Prompt::Deactivated,
            Prompt::Activated,
            Prompt::Deactivated
        ]
    );
    // The run-time state persists and comes back in a fresh engine.
    let saved = h.b.take_state_changed().expect("changed");
    assert!(h.b.take_state_changed().is_none());
    let (mut h2, _, _) = fwd();
    h2.b.restore_state(&saved).unwrap();
    assert_eq!(h2.b.user_features("102"), h.b.user_features("102"));
    assert!(h2.b.user_features("103").unwrap().dnd);
    assert!(h2.b.restore_state(b"{ not json").is_err());
    let v = h2.b.state_json();
    assert_eq!(v["users"]["103"]["dnd"], true);
    assert_eq!(v["modes"]["night"], false);
}

#[test]
fn dnd_gives_busy_and_runs_the_fallback() {
    let (mut h, ep, dir) = fwd();
    h.b.set_dnd("102", true);
    // "main" rings only 102, no fallback: busy.
    let outs = h.invite_via(&dir, "500", "103");
    assert!(requests(&outs, "INVITE").is_empty(), "102 is not rung");
    assert!(responses(&outs).contains(&486), "{:?}", responses(&outs));
    // "ext" has a voicemail fallback: it runs.
    let outs = h.invite_via(&dir, "102", "103");
    assert!(requests(&outs, "INVITE").is_empty());
    assert!(ok_sdp(&outs).is_some(), "voicemail answered");
    assert!(
        matches!(&ep.0.lock().unwrap().started[0].3, App::Deposit { mailbox, .. } if mailbox == "102")
    );
}

#[test]
fn forwarding_always_rings_the_target_instead() {
    let (mut h, _, dir) = fwd();
    h.b.set_forward("102", ForwardKind::Always, Some("101".into()));
    let outs = h.invite_via(&dir, "102", "103");
    let inv = requests(&outs, "INVITE");
    assert_eq!(
        inv.len(),
        0,
        "101 has no contact in the fake directory: nobody to ring"
    );
    h.b.set_forward("102", ForwardKind::Always, None);
    h.b.set_forward("101", ForwardKind::Always, Some("102".into()));
    let outs = h.invite_via(&dir, "101", "103");
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1);
    assert!(
        text(&inv[0].1).starts_with("INVITE sip:102@"),
        "{}",
        text(&inv[0].1)
    );
}

#[test]
fn no_answer_forwards_to_the_trunk_with_diversion() {
    let (mut h, _, dir) = fwd();
    h.b.set_forward("102", ForwardKind::NoAnswer, Some("0301234".into()));
    let outs = h.invite_via(&dir, "102", "103");
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.b.handle_response(
        h.now,
        id,
        &parse(
            &ResponseBuilder::new(&parse(&data), 180, "Ringing", None)
                .to_tag("b")
                .build(),
        ),
        &dir,
    );
    h.drain();
    // no_answer_secs = 5: not yet at 4 s, then CANCEL and the provider gets the call.
    assert!(requests(&h.advance_via(&dir, Duration::from_secs(4)), "CANCEL").is_empty());
    let outs = h.advance_via(&dir, Duration::from_secs(2));
    assert_eq!(requests(&outs, "CANCEL").len(), 1);
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1, "{outs:?}");
    let t = text(&inv[0].1);
    assert!(
        t.starts_with("INVITE sip:0301234@[2001:db8:ffff::1] SIP/2.0"),
        "{t}"
    );
    assert!(
        t.contains("Diversion: <sip:102@localhost>;reason=no-answer;counter=1"),
        "{t}"
    );
    assert!(t.contains("History-Info: <sip:102@localhost>;index=1,<sip:0301234@[2001:db8:ffff::1]?Reason=SIP%3Bcause%3D408>;index=1.1"), "{t}");
    // Busy forwarding: 486 from the phone.
    h.b.set_forward("102", ForwardKind::NoAnswer, None);
    h.b.set_forward("102", ForwardKind::Busy, Some("101".into()));
    h.b.set_forward("101", ForwardKind::Always, None);
    let outs = h.invite_via(&dir, "102", "103");
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.b.handle_response(
        h.now,
        id,
        &parse(
            &ResponseBuilder::new(&parse(&data), 486, "Busy", None)
                .to_tag("b2")
                .build(),
        ),
        &dir,
    );
    let outs = h.drain();
    // 101 has no contact here: the forwarding fails, then the voicemail fallback answers.
    assert!(ok_sdp(&outs).is_some(), "{:?}", responses(&outs));
}

#[test]
fn pickup_code_answers_a_call_ringing_elsewhere() {
    let (mut h, _, dir) = fwd();
    // 103 calls 102; 102's phone rings.
    let outs = h.invite_via(&dir, "102", "103");
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.b.handle_response(
        h.now,
        id,
        &parse(
            &ResponseBuilder::new(&parse(&data), 180, "Ringing", None)
                .to_tag("r102")
                .build(),
        ),
        &dir,
    );
    h.drain();
    // Nothing rings at 104: 480.
    let outs = h.invite_via(&dir, "**104", "101");
    assert!(responses(&outs).contains(&480), "{:?}", responses(&outs));
    // 101 picks up: 102 is cancelled, the picker and the caller both get 200 with SDP at the relay.
    let outs = h.invite_via(&dir, "**102", "101");
    assert_eq!(
        requests(&outs, "CANCEL").len(),
        1,
        "the ringing phone stops"
    );
    let oks: Vec<String> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Respond {
                status: StatusCode::OK,
                data,
                ..
            } => Some(text(data)),
            _ => None,
        })
        .collect();
    assert_eq!(oks.len(), 2, "{oks:?}");
    for ok in &oks {
        let body = &ok[ok.find("\r\n\r\n").unwrap()..];
        assert!(
            body.contains("m=audio") && body.contains("c=IN IP6 2001:db8::10"),
            "anchored: {ok}"
        );
        assert!(
            !body.contains("2001:db8:1::a"),
            "no peer address in the SDP: {ok}"
        );
    }
    // The picker's 200 is in its own dialog (its Call-ID), the caller's in the caller's.
    assert!(oks.iter().filter(|o| o.contains("Call-ID: fwd")).count() == 2);
    let d = h.b.dialogs_of("101");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].state, podpbx_presence::dialog_info::State::Confirmed);
    assert!(h.b.dialogs_of("102").is_empty(), "102 no longer rings");
    assert_eq!(h.b.active_calls(), 1, "one call: the picker joined it");
}
