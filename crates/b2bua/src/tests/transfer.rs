//! Transfers and replacements in virtual time: blind transfer with the keeper re-INVITEd with
//! the target's media (also across address families, and to a trunk), attended transfer
//! (REFER with `Replaces`) between two calls of a user (also with a trunk call), INVITE with
//! `Replaces` (pickup of a ringing leg, another device taking an answered call over), their
//! refusals, glare, and the toll-fraud rules for transfers.

use super::*;

/// Phones 101-105 (105 on IPv4), a doorbell known by its address, a provider with a DID;
/// numbers starting with 0 go out for local users (devices only by an explicit rule), 09
/// numbers for anyone (a rule through which only authenticated users reach the trunk).
const TCFG: &str = r#"
[sip]
ipv6 = "2001:db8::1"
ipv4 = "198.51.100.10"
[[users]]
name = "101"
password = "a"
[[users]]
name = "102"
password = "b"
[[users]]
name = "103"
password = "c"
[[users]]
name = "104"
password = "d"
[[users]]
name = "105"
password = "e"
[[users]]
name = "190"
identify_by_source = true
allow_from = ["198.51.100.50/32"]
[[trunks]]
name = "prov"
host = "2001:db8:ffff::1"
register = false
dids = ["4930999"]
networks = ["2001:db8:ffff::/48"]
[[dialplan]]
name = "door"
match = { caller = "190", number = "1" }
action = "ring"
targets = ["102"]
timeout_secs = 20
[[dialplan]]
name = "in"
match = { did = "4930999" }
action = "ring"
targets = ["102"]
timeout_secs = 20
[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 15
[[dialplan]]
name = "out"
match = { prefix = "0", from = "local" }
action = "trunk"
trunk = "prov"
[[dialplan]]
name = "premium"
match = { prefix = "09" }
action = "trunk"
trunk = "prov"
"#;

/// An IPv4 phone (user 105) for transfers across address families.
const V4_PHONE: &str = "198.51.100.30:5060";
const TRUNK: &str = "[2001:db8:ffff::1]:5060";

/// SDP of the target (PCMA only, its own address): what the keeper must get.
const SDP_C: &str = "v=0\r\no=c 3 3 IN IP6 2001:db8:1::21\r\ns=-\r\nc=IN IP6 2001:db8:1::21\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
const SDP_C4: &str = "v=0\r\no=c 3 3 IN IP4 198.51.100.30\r\ns=-\r\nc=IN IP4 198.51.100.30\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";

fn h() -> (H, TrunkDir) {
    let mut h = H::with_config(TCFG);
    h.dir.0.insert(
        "105".into(),
        vec![ContactTarget {
            uri: format!("sip:105@{V4_PHONE}"),
            flow: flow(V4_PHONE, "198.51.100.10:5060"),
        }],
    );
    let dir = TrunkDir(std::mem::take(&mut h.dir));
    (h, dir)
}

/// A dialog as the phone (or provider) on its far side sees it, to send requests in it.
#[derive(Clone)]
struct Side {
    call_id: String,
    /// The phone's tag.
    mine: String,
    /// podpbx's tag.
    ours: String,
    user: String,
    flow: Flow,
    cseq: u32,
}

impl Side {
    /// The side of a dialog podpbx created by INVITE `inv` (answered with tag `mine`).
    fn of_invite(inv: &Bytes, mine: &str, user: &str, f: Flow) -> Side {
        let m = parse(inv);
        Side {
            call_id: String::from_utf8_lossy(&m.call_id().unwrap()).into_owned(),
            mine: mine.into(),
            ours: String::from_utf8_lossy(&m.from_hdr().unwrap().tag().unwrap()).into_owned(),
            user: user.into(),
            flow: f,
            cseq: 10,
        }
    }

    fn host(&self) -> String {
        match self.flow.remote {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }

    fn req(&mut self, method: &str, extra: &str, sdp: Option<&str>) -> String {
        self.cseq += 1;
        let body = sdp.unwrap_or("");
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:podpbx@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {h};branch=z9hG4bK{cid}{c}\r\n\
             From: <sip:{u}@pbx>;tag={mine}\r\nTo: <sip:x@pbx>;tag={ours}\r\nCall-ID: {cid}\r\nCSeq: {c} {method}\r\n\
             Contact: <sip:{u}@{h}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            h = self.host(),
            cid = self.call_id,
            c = self.cseq,
            u = self.user,
            mine = self.mine,
            ours = self.ours,
        )
    }

    /// `Replaces` naming this dialog as this phone would put it (to-tag: podpbx's).
    fn replaces(&self) -> String {
        format!(
            "{};to-tag={};from-tag={}",
            self.call_id, self.ours, self.mine
        )
    }

    fn replaces_escaped(&self) -> String {
        self.replaces()
            .replace('@', "%40")
            .replace(';', "%3B")
            .replace('=', "%3D")
    }
}

impl H {
    /// A new INVITE from `user` at `f` with Call-ID `cid` (`extra` header lines), routed with
    /// `dir`.
    fn invite_from(
        &mut self,
        dir: &dyn Directory,
        (user, f): (&str, Flow),
        cid: &str,
        number: &str,
        extra: &str,
        sdp: Option<&str>,
    ) -> Vec<Output> {
        let host = match f.remote {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let body = sdp.unwrap_or("");
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch=z9hG4bK{cid}i;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@pbx>;tag={cid}-t\r\nTo: <sip:{number}@pbx>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{user}@{host}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let saved = self.a_flow;
        self.a_flow = f;
        let outs = self.invite_text(&text, Caller::User(user.into()), Some(dir));
        self.a_flow = saved;
        outs
    }

    /// Answers request `id` with `code` (our To tag `tag`, SDP `sdp`) through `dir`.
    fn reply_via(
        &mut self,
        dir: &dyn Directory,
        id: ReqId,
        req: &Bytes,
        code: u16,
        tag: &str,
        sdp: Option<&str>,
    ) -> Vec<Output> {
        let req = parse(req);
        let mut rb = ResponseBuilder::new(&req, code, "X", None)
            .to_tag(tag)
            .header("Contact", "<sip:far@[2001:db8:1::99]:5060>");
        if let Some(s) = sdp {
            rb = rb.body("application/sdp", s.as_bytes());
        }
        self.b
            .handle_response(self.now, id, &parse(&rb.build()), dir);
        self.drain()
    }

    fn in_dialog_via(&mut self, dir: &dyn Directory, text: String, f: Flow) -> Vec<Output> {
        let msg = parse(&Bytes::from(text));
        let tx = self.server_tx(&msg, f);
        assert!(
            self.b.handle_in_dialog(self.now, tx, &msg, f, dir),
            "dialog found"
        );
        self.drain()
    }

    /// The phone's ACK of our 2xx to its INVITE with CSeq `cseq` (1: the initial one).
    fn ack_cseq(&mut self, side: &Side, cseq: u32) {
        let mut s = side.clone();
        s.cseq = cseq - 1;
        let ack = s.req("ACK", "", None);
        assert!(self.b.handle_ack(self.now, &parse(&Bytes::from(ack))));
        self.drain();
    }

    fn ack_via(&mut self, side: &Side) {
        self.ack_cseq(side, 1);
    }
}

fn b_flow() -> Flow {
    flow("[2001:db8:1::20]:5060", "[2001:db8::1]:5060")
}

fn c_flow() -> Flow {
    flow("[2001:db8:1::21]:5060", "[2001:db8::1]:5060")
}

fn d_flow() -> Flow {
    flow("[2001:db8:1::22]:5060", "[2001:db8::1]:5060")
}

/// The response with `status` to the request with Call-ID `cid`.
fn response_to(outs: &[Output], status: u16, cid: &str) -> Option<String> {
    outs.iter().find_map(|o| match o {
        Output::Respond {
            status: s, data, ..
        } if s.code() == status && text(data).contains(&format!("Call-ID: {cid}\r\n")) => {
            Some(text(data))
        }
        _ => None,
    })
}

/// Our tag in a response.
fn to_tag(resp: &str) -> String {
    let m = parse(&Bytes::from(resp.to_string()));
    String::from_utf8_lossy(&m.to_hdr().unwrap().tag().unwrap()).into_owned()
}

/// Requests `method` in the dialog with Call-ID `cid`.
fn requests_in(outs: &[Output], method: &str, cid: &str) -> Vec<(ReqId, Bytes)> {
    requests(outs, method)
        .into_iter()
        .filter(|(_, d)| header_of(d, "Call-ID") == cid)
        .collect()
}

fn body(data: &str) -> &str {
    &data[data.find("\r\n\r\n").map_or(data.len(), |i| i + 4)..]
}

/// 101 calls 102, who answers: the caller's side and 102's side.
fn call_101_102(h: &mut H, dir: &TrunkDir) -> (Side, Side, Bytes) {
    let a_flow = h.a_flow;
    let outs = h.invite_from(dir, ("101", a_flow), "c1@a", "102", "", Some(SDP_A));
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(dir, id, &inv, 200, "btag", Some(SDP_B));
    let ok = response_to(&outs, 200, "c1@a").expect("200 to the caller");
    let a = Side {
        call_id: "c1@a".into(),
        mine: "c1@a-t".into(),
        ours: to_tag(&ok),
        user: "101".into(),
        flow: a_flow,
        cseq: 1,
    };
    h.ack_via(&a);
    let b = Side::of_invite(&inv, "btag", "102", b_flow());
    (a, b, inv)
}

/// 102 puts the other party of `b` on hold (sendonly), the other party answers recvonly.
fn hold(h: &mut H, dir: &TrunkDir, b: &mut Side, other_cid: &str, answer: &str) {
    let hold = SDP_B.replace("RTP/AVP 0\r\n", "RTP/AVP 0\r\na=sendonly\r\n");
    let outs = h.in_dialog_via(dir, b.req("INVITE", "", Some(&hold)), b.flow);
    let re = requests_in(&outs, "INVITE", other_cid);
    assert_eq!(re.len(), 1, "hold relayed");
    let recvonly = answer.replacen("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n", 1);
    let outs = h.reply_via(dir, re[0].0, &re[0].1, 200, "x", Some(&recvonly));
    assert!(response_to(&outs, 200, &b.call_id).is_some());
    let cseq = b.cseq;
    h.ack_cseq(b, cseq);
}

fn released(h: &H) -> Vec<MediaId> {
    h.media.0.lock().unwrap().released.clone()
}

fn families(h: &H, id: MediaId) -> (Family, Family) {
    h.media.0.lock().unwrap().families[&id]
}

/// The relay session whose anchor is in an SDP text (`c=` address and `m=audio` port).
fn session_of(sdp: &str) -> MediaId {
    let port: u16 = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port");
    ((port - 20000) / 4) as MediaId
}

/// Blind transfer of an IPv6 caller (put on hold first) to an IPv4 phone: the target gets the
/// keeper's media as a sendrecv offer at IPv4 anchors of a new bundle, and once it answers the
/// keeper gets the target's media (its codec) at the IPv6 side of that bundle by re-INVITE;
/// the old bundle goes when the keeper answered.
#[test]
fn blind_transfer_reinvites_the_keeper_with_the_targets_media_across_families() {
    let (mut h, dir) = h();
    let (mut a, mut b, _) = call_101_102(&mut h, &dir);
    let first = {
        let m = h.media.0.lock().unwrap();
        *m.families.keys().max().unwrap()
    };
    hold(&mut h, &dir, &mut b, "c1@a", SDP_A);
    let outs = h.in_dialog_via(
        &dir,
        b.req("REFER", "Refer-To: <sip:105@pbx>\r\n", None),
        b.flow,
    );
    assert_eq!(responses(&outs), vec![202]);
    let inv = requests(&outs, "INVITE");
    assert_eq!(
        inv.len(),
        1,
        "the IPv4 target rings (it used to be skipped)"
    );
    let t = text(&inv[0].1);
    assert!(
        t.starts_with("INVITE sip:105@198.51.100.30:5060")
            && body(&t).contains("c=IN IP4 198.51.100.10"),
        "IPv4 anchors for the IPv4 target:\n{t}"
    );
    assert!(
        !body(&t).contains("recvonly") && !body(&t).contains("sendonly"),
        "the keeper's hold does not travel to the target:\n{t}"
    );
    let target_session = session_of(body(&t));
    assert_ne!(target_session, first, "a bundle of the transfer's own");
    assert_eq!(families(&h, target_session), (Family::V6, Family::V4));
    // The target answers in PCMA.
    let outs = h.reply_via(&dir, inv[0].0, &inv[0].1, 200, "ctag", Some(SDP_C4));
    assert_eq!(stateless_acks(&outs), 1, "the target's 2xx is ACKed");
    let notes = requests_in(&outs, "NOTIFY", &b.call_id);
    assert!(text(&notes[0].1).contains("SIP/2.0 200 OK"));
    assert_eq!(requests_in(&outs, "BYE", &b.call_id).len(), 1);
    let re = requests_in(&outs, "INVITE", "c1@a");
    assert_eq!(re.len(), 1, "the keeper is re-INVITEd");
    let rt = text(&re[0].1);
    assert!(
        rt.starts_with("INVITE sip:101@[2001:db8:1::a]:5062 "),
        "{rt}"
    );
    let rb = body(&rt);
    assert!(
        rb.contains("m=audio ")
            && rb.contains(" RTP/AVP 8\r\n")
            && rb.contains("c=IN IP6 2001:db8::10"),
        "the target's codec at the keeper's IPv6 anchor:\n{rt}"
    );
    assert_eq!(session_of(rb), target_session, "the same relay session");
    assert!(
        rb.contains("o=podpbx ") && !rb.contains("198.51.100.30"),
        "our origin, no peer address:\n{rt}"
    );
    assert!(
        !released(&h).contains(&first),
        "the old media stays until the keeper answered"
    );
    let outs = h.reply_via(&dir, re[0].0, &re[0].1, 200, &a.mine, Some(SDP_A));
    assert_eq!(stateless_acks(&outs), 1, "the keeper's 2xx is ACKed");
    assert!(released(&h).contains(&first), "the old bundle is released");
    // The keeper's media is known on the new session, at its own address.
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    assert!(remotes
        .iter()
        .any(|(id, leg, addr, _)| *id == target_session
            && *leg == MediaLeg::A
            && addr.to_string() == "[2001:db8:1::a]:4000"));
    assert!(remotes
        .iter()
        .any(|(id, leg, addr, _)| *id == target_session
            && *leg == MediaLeg::B
            && addr.to_string() == "198.51.100.30:6000"));
    // Keeper and target talk; the keeper hangs up.
    let outs = h.in_dialog_via(&dir, a.req("BYE", "", None), a.flow);
    let byes = requests(&outs, "BYE");
    assert_eq!(byes.len(), 1);
    assert!(
        text(&byes[0].1).starts_with("BYE sip:far@"),
        "to the target"
    );
}

/// The reverse direction: an IPv4 doorbell (the caller, identified by its address) answered by
/// an IPv6 phone that transfers it to another IPv6 phone: the doorbell keeps an IPv4 anchor
/// and gets the target's media by re-INVITE.
#[test]
fn blind_transfer_of_an_ipv4_doorbell_to_an_ipv6_phone() {
    let (mut h, dir) = h();
    let door = flow("198.51.100.50:5060", "198.51.100.10:5060");
    let sdp4 = "v=0\r\no=d 1 1 IN IP4 198.51.100.50\r\ns=-\r\nc=IN IP4 198.51.100.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\n";
    let saved = h.a_flow;
    h.a_flow = door;
    let text_inv = format!(
        "INVITE sip:1@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bKdb;rport\r\nFrom: <sip:190@pbx>;tag=d\r\n\
         To: <sip:1@pbx>\r\nCall-ID: door@d\r\nCSeq: 1 INVITE\r\nContact: <sip:190@198.51.100.50>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp4}",
        sdp4.len()
    );
    let outs = h.invite_text(&text_inv, Caller::User("190".into()), Some(&dir));
    h.a_flow = saved;
    let invs = requests(&outs, "INVITE");
    let (id, inv) = invs
        .iter()
        .find(|(_, d)| text(d).starts_with("INVITE sip:102@"))
        .cloned()
        .unwrap();
    let outs = h.reply_via(&dir, id, &inv, 200, "btag", Some(SDP_B));
    let ok = response_to(&outs, 200, "door@d").unwrap();
    let d = Side {
        call_id: "door@d".into(),
        mine: "d".into(),
        ours: to_tag(&ok),
        user: "190".into(),
        flow: door,
        cseq: 1,
    };
    h.ack_via(&d);
    let mut b = Side::of_invite(&inv, "btag", "102", b_flow());
    let outs = h.in_dialog_via(
        &dir,
        b.req("REFER", "Refer-To: <sip:103@pbx>\r\n", None),
        b.flow,
    );
    let inv = requests(&outs, "INVITE");
    let t = text(&inv[0].1);
    assert!(body(&t).contains("c=IN IP6 2001:db8::10"), "{t}");
    let s = session_of(body(&t));
    assert_eq!(families(&h, s), (Family::V4, Family::V6));
    let outs = h.reply_via(&dir, inv[0].0, &inv[0].1, 200, "ctag", Some(SDP_C));
    let re = requests_in(&outs, "INVITE", "door@d");
    assert_eq!(re.len(), 1, "the doorbell is re-INVITEd");
    let rt = text(&re[0].1);
    assert!(
        body(&rt).contains("c=IN IP4 198.51.100.10") && body(&rt).contains("RTP/AVP 8\r\n"),
        "IPv4 anchor, the target's codec:\n{rt}"
    );
    assert_eq!(session_of(body(&rt)), s);
}

/// Attended transfer: 102 talks to 101 (on hold) and to 103, and sends REFER with Replaces
/// naming its dialog with 103. 101 and 103 are joined: 202, NOTIFY 200, BYE to both of 102's
/// legs, 103 gets 101's media (sendrecv) by re-INVITE, then 101 gets 103's answer; the old
/// bundles go; the second call's CDR says "transferred", the first names the target.
#[test]
fn attended_transfer_joins_the_two_far_ends_and_releases_the_transferor() {
    let (mut h, dir) = h();
    let (mut a, mut b, _) = call_101_102(&mut h, &dir);
    hold(&mut h, &dir, &mut b, "c1@a", SDP_A);
    // 102 calls 103 (consultation).
    let outs = h.invite_from(&dir, ("102", b_flow()), "c2@b", "103", "", Some(SDP_B));
    let (id, inv3) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv3, 200, "ctag", Some(SDP_C));
    let ok = response_to(&outs, 200, "c2@b").unwrap();
    let b2 = Side {
        call_id: "c2@b".into(),
        mine: "c2@b-t".into(),
        ours: to_tag(&ok),
        user: "102".into(),
        flow: b_flow(),
        cseq: 1,
    };
    h.ack_via(&b2);
    let mut c = Side::of_invite(&inv3, "ctag", "103", c_flow());
    let before = h.b.active_calls();
    assert_eq!(before, 2);
    let refer_to = format!(
        "Refer-To: <sip:103@pbx?Replaces={}>\r\n",
        b2.replaces_escaped()
    );
    let outs = h.in_dialog_via(&dir, b.req("REFER", &refer_to, None), b.flow);
    assert_eq!(responses(&outs), vec![202]);
    let notes = requests_in(&outs, "NOTIFY", &b.call_id);
    assert_eq!(notes.len(), 1);
    let n = text(&notes[0].1);
    assert!(
        n.contains("SIP/2.0 200 OK") && n.contains("Subscription-State: terminated"),
        "{n}"
    );
    let bye1 = requests_in(&outs, "BYE", &b.call_id);
    assert_eq!(bye1.len(), 1, "BYE on the REFER dialog");
    let bye2 = requests_in(&outs, "BYE", "c2@b");
    assert_eq!(bye2.len(), 1, "BYE on the replaced dialog");
    assert!(
        requests_in(&outs, "BYE", &c.call_id).is_empty(),
        "103 stays"
    );
    // 103 gets 101's media, sendrecv, at a new anchor.
    let re3 = requests_in(&outs, "INVITE", &c.call_id);
    assert_eq!(re3.len(), 1);
    let t = text(&re3[0].1);
    assert!(
        t.contains(&format!(";tag={}", c.mine)) && body(&t).contains("RTP/AVP 0 101"),
        "in 103's dialog, with 101's codecs:\n{t}"
    );
    assert!(
        !body(&t).contains("recvonly") && !body(&t).contains("sendonly"),
        "{t}"
    );
    assert!(
        t.contains("Allow: INVITE") && t.contains("REFER"),
        "phone dialog methods:\n{t}"
    );
    let joined = session_of(body(&t));
    assert!(
        requests_in(&outs, "INVITE", "c1@a").is_empty(),
        "101 waits for 103's answer"
    );
    // 103 answers: 101 gets 103's answer as our offer.
    let outs = h.reply_via(&dir, re3[0].0, &re3[0].1, 200, "ctag", Some(SDP_C));
    assert_eq!(stateless_acks(&outs), 1);
    let re1 = requests_in(&outs, "INVITE", "c1@a");
    assert_eq!(re1.len(), 1, "then 101");
    let t1 = text(&re1[0].1);
    assert!(body(&t1).contains("RTP/AVP 8\r\n"), "103's codec:\n{t1}");
    assert_eq!(session_of(body(&t1)), joined);
    let released_before = released(&h).len();
    let outs = h.reply_via(&dir, re1[0].0, &re1[0].1, 200, &a.mine, Some(SDP_A));
    assert_eq!(stateless_acks(&outs), 1);
    assert!(released(&h).len() > released_before, "old bundle released");
    let remotes = h.media.0.lock().unwrap().remotes.clone();
    for addr in ["[2001:db8:1::a]:4000", "[2001:db8:1::21]:6000"] {
        assert!(
            remotes
                .iter()
                .any(|(id, _, a, _)| *id == joined && a.to_string() == addr),
            "{addr} learnt on the joined session: {remotes:?}"
        );
    }
    // 102 answers the NOTIFY and the BYEs; the consultation call ends.
    h.reply_via(&dir, notes[0].0, &notes[0].1, 200, "x", None);
    h.reply_via(&dir, bye1[0].0, &bye1[0].1, 200, "x", None);
    let outs = h.reply_via(&dir, bye2[0].0, &bye2[0].1, 200, "x", None);
    let cdr2 = cdr(&outs).expect("CDR of the consultation call");
    assert_eq!(cdr2.reason, "transferred");
    assert_eq!(cdr2.transferred_to.as_deref(), Some("103"));
    assert_eq!(h.b.active_calls(), 1, "one call: 101 and 103");
    // 103 hangs up: 101 gets the BYE; the CDR has 103 as transfer target.
    let outs = h.in_dialog_via(&dir, c.req("BYE", "", None), c.flow);
    assert_eq!(responses(&outs), vec![200]);
    let byes = requests_in(&outs, "BYE", "c1@a");
    assert_eq!(byes.len(), 1);
    let outs = h.reply_via(&dir, byes[0].0, &byes[0].1, 200, &a.mine, None);
    let cdr1 = cdr(&outs).expect("CDR");
    assert_eq!(cdr1.transferred_to.as_deref(), Some("103"));
    assert!(cdr1
        .legs
        .iter()
        .any(|l| l.role == "transfer_target" && l.party.as_deref() == Some("103")));
    let _ = &mut a;
}

/// Attended transfer with a trunk call: 102 answers a call from the provider, consults 103 and
/// joins them; and the other way round, 101's call to 102 joined to 102's call out through the
/// trunk. The provider leg gets our re-INVITE with the trunk's method set (no REFER).
#[test]
fn attended_transfer_with_a_trunk_call_on_either_side() {
    // The provider calls 102 (DID), 102 transfers it to 103.
    let (mut h, dir) = h();
    let pflow = flow(TRUNK, "[2001:db8::1]:5060");
    let saved = h.a_flow;
    h.a_flow = pflow;
    let text_inv = format!(
        "INVITE sip:4930999@[2001:db8::1] SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKp1;rport\r\nFrom: <sip:+4917012@prov>;tag=p\r\n\
         To: <sip:4930999@pbx>\r\nCall-ID: pstn@p\r\nCSeq: 1 INVITE\r\nContact: <sip:+4917012@{TRUNK}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let caller = Caller::Trunk {
        name: "prov".into(),
        did: Some("4930999".into()),
    };
    let outs = h.invite_text(&text_inv, caller, Some(&dir));
    h.a_flow = saved;
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv, 200, "btag", Some(SDP_B));
    let ok = response_to(&outs, 200, "pstn@p").unwrap();
    let p = Side {
        call_id: "pstn@p".into(),
        mine: "p".into(),
        ours: to_tag(&ok),
        user: "+4917012".into(),
        flow: pflow,
        cseq: 1,
    };
    h.ack_via(&p);
    let mut b = Side::of_invite(&inv, "btag", "102", b_flow());
    let outs = h.invite_from(&dir, ("102", b_flow()), "c2@b", "103", "", Some(SDP_B));
    let (id, inv3) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv3, 200, "ctag", Some(SDP_C));
    let b2 = Side {
        call_id: "c2@b".into(),
        mine: "c2@b-t".into(),
        ours: to_tag(&response_to(&outs, 200, "c2@b").unwrap()),
        user: "102".into(),
        flow: b_flow(),
        cseq: 1,
    };
    h.ack_via(&b2);
    let refer_to = format!(
        "Refer-To: <sip:103@pbx?Replaces={}>\r\n",
        b2.replaces_escaped()
    );
    let outs = h.in_dialog_via(&dir, b.req("REFER", &refer_to, None), b.flow);
    assert_eq!(responses(&outs), vec![202]);
    let c_cid = header_of(&inv3, "Call-ID");
    let re3 = requests_in(&outs, "INVITE", &c_cid);
    let outs = h.reply_via(&dir, re3[0].0, &re3[0].1, 200, "ctag", Some(SDP_C));
    let re_p = requests_in(&outs, "INVITE", "pstn@p");
    assert_eq!(re_p.len(), 1, "the provider leg gets 103's media");
    let t = text(&re_p[0].1);
    assert!(
        t.starts_with(&format!("INVITE sip:+4917012@{TRUNK} ")),
        "{t}"
    );
    let allow = header_of(&re_p[0].1, "Allow");
    assert!(!allow.contains("REFER"), "trunk method set: {allow}");

    // 101 calls 102; 102 calls out through the trunk and joins 101 to that call.
    let (mut h, dir) = super::transfer::h();
    let (_a, mut b, _) = call_101_102(&mut h, &dir);
    let outs = h.invite_from(&dir, ("102", b_flow()), "out@b", "0301234", "", Some(SDP_B));
    let (id, tinv) = requests(&outs, "INVITE")[0].clone();
    assert!(
        text(&tinv).starts_with("INVITE sip:0301234@"),
        "{}",
        text(&tinv)
    );
    let outs = h.reply_via(&dir, id, &tinv, 200, "pt", Some(SDP_C));
    let b2 = Side {
        call_id: "out@b".into(),
        mine: "out@b-t".into(),
        ours: to_tag(&response_to(&outs, 200, "out@b").unwrap()),
        user: "102".into(),
        flow: b_flow(),
        cseq: 1,
    };
    h.ack_via(&b2);
    let refer_to = format!(
        "Refer-To: <sip:0301234@pbx?Replaces={}>\r\n",
        b2.replaces_escaped()
    );
    let outs = h.in_dialog_via(&dir, b.req("REFER", &refer_to, None), b.flow);
    assert_eq!(responses(&outs), vec![202]);
    let t_cid = header_of(&tinv, "Call-ID");
    let re_t = requests_in(&outs, "INVITE", &t_cid);
    assert_eq!(
        re_t.len(),
        1,
        "the provider leg is re-INVITEd with 101's media"
    );
    assert!(!header_of(&re_t[0].1, "Allow").contains("REFER"));
    let outs = h.reply_via(&dir, re_t[0].0, &re_t[0].1, 200, "pt", Some(SDP_C));
    assert_eq!(requests_in(&outs, "INVITE", "c1@a").len(), 1, "then 101");
}

/// What an attended transfer refuses: a dialog of another user (403), a trunk leg as
/// transferor (403), a dialog that does not exist (481), one still ringing (481), `early-only`
/// on an answered one (486); in every case both calls stay as they were.
#[test]
fn attended_transfer_refusals() {
    let (mut h, dir) = h();
    let (_a, mut b, _) = call_101_102(&mut h, &dir);
    // 104 calls 103: not 102's call.
    let outs = h.invite_from(&dir, ("104", d_flow()), "c4@d", "103", "", Some(SDP_B));
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv, 200, "ctag", Some(SDP_C));
    let d2 = Side {
        call_id: "c4@d".into(),
        mine: "c4@d-t".into(),
        ours: to_tag(&response_to(&outs, 200, "c4@d").unwrap()),
        user: "104".into(),
        flow: d_flow(),
        cseq: 1,
    };
    h.ack_via(&d2);
    let refer = |b: &mut Side, r: &str| {
        b.req(
            "REFER",
            &format!("Refer-To: <sip:103@pbx?Replaces={r}>\r\n"),
            None,
        )
    };
    let outs = h.in_dialog_via(&dir, refer(&mut b, &d2.replaces_escaped()), b.flow);
    assert_eq!(responses(&outs), vec![403], "another user's call");
    assert!(requests(&outs, "BYE").is_empty() && requests(&outs, "INVITE").is_empty());
    // A Replaces that names nothing.
    let outs = h.in_dialog_via(
        &dir,
        refer(&mut b, "nope%3Bto-tag%3D1%3Bfrom-tag%3D2"),
        b.flow,
    );
    assert_eq!(responses(&outs), vec![202]);
    assert!(text(&requests(&outs, "NOTIFY")[0].1).contains("SIP/2.0 481 "));
    // 102's consultation call still rings at 103.
    let outs = h.invite_from(&dir, ("102", b_flow()), "c2@b", "103", "", Some(SDP_B));
    let (id, inv3) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv3, 180, "ctag", None);
    let ring = response_to(&outs, 180, "c2@b").unwrap();
    let b2 = Side {
        call_id: "c2@b".into(),
        mine: "c2@b-t".into(),
        ours: to_tag(&ring),
        user: "102".into(),
        flow: b_flow(),
        cseq: 1,
    };
    let outs = h.in_dialog_via(&dir, refer(&mut b, &b2.replaces_escaped()), b.flow);
    assert_eq!(responses(&outs), vec![202]);
    assert!(
        text(&requests(&outs, "NOTIFY")[0].1).contains("SIP/2.0 481 "),
        "an early dialog podpbx did not initiate (RFC 3891 §3)"
    );
    assert!(requests(&outs, "CANCEL").is_empty() && requests(&outs, "BYE").is_empty());
    // Answered now; early-only: 486.
    let outs = h.reply_via(&dir, id, &inv3, 200, "ctag", Some(SDP_C));
    assert!(response_to(&outs, 200, "c2@b").is_some());
    h.ack_via(&b2);
    let early_only = format!("{}%3Bearly-only", b2.replaces_escaped());
    let outs = h.in_dialog_via(&dir, refer(&mut b, &early_only), b.flow);
    assert!(text(&requests(&outs, "NOTIFY")[0].1).contains("SIP/2.0 486 "));
    assert_eq!(h.b.active_calls(), 3, "nothing was joined");
    // The trunk as transferor: a provider's REFER with Replaces.
    let (mut h, dir) = super::transfer::h();
    let pflow = flow(TRUNK, "[2001:db8::1]:5060");
    h.a_flow = pflow;
    let text_inv = format!(
        "INVITE sip:4930999@[2001:db8::1] SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKp1;rport\r\nFrom: <sip:+4917012@prov>;tag=p\r\n\
         To: <sip:4930999@pbx>\r\nCall-ID: pstn@p\r\nCSeq: 1 INVITE\r\nContact: <sip:+4917012@{TRUNK}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let caller = Caller::Trunk {
        name: "prov".into(),
        did: Some("4930999".into()),
    };
    let outs = h.invite_text(&text_inv, caller, Some(&dir));
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv, 200, "btag", Some(SDP_B));
    let mut p = Side {
        call_id: "pstn@p".into(),
        mine: "p".into(),
        ours: to_tag(&response_to(&outs, 200, "pstn@p").unwrap()),
        user: "+4917012".into(),
        flow: pflow,
        cseq: 1,
    };
    h.ack_via(&p);
    let b1 = Side::of_invite(&inv, "btag", "102", b_flow());
    let outs = h.in_dialog_via(
        &dir,
        p.req(
            "REFER",
            &format!(
                "Refer-To: <sip:102@pbx?Replaces={}>\r\n",
                b1.replaces_escaped()
            ),
            None,
        ),
        pflow,
    );
    assert_eq!(responses(&outs), vec![403], "a trunk leg never joins calls");
}

/// A 491 to our re-INVITE (the phone re-INVITEs at the same moment) is retried after a pause;
/// the phone's own re-INVITE meanwhile gets 491; a refusal of another kind ends the joined
/// call (its media would point nowhere).
#[test]
fn glare_during_the_join_is_retried_and_a_refusal_ends_the_call() {
    let (mut h, dir) = h();
    let (mut a, mut b, _) = call_101_102(&mut h, &dir);
    let outs = h.in_dialog_via(
        &dir,
        b.req("REFER", "Refer-To: <sip:103@pbx>\r\n", None),
        b.flow,
    );
    let inv = requests(&outs, "INVITE");
    let outs = h.reply_via(&dir, inv[0].0, &inv[0].1, 200, "ctag", Some(SDP_C));
    let re = requests_in(&outs, "INVITE", "c1@a");
    assert_eq!(re.len(), 1);
    // 101 re-INVITEs too: 491 both ways.
    let outs = h.in_dialog_via(&dir, a.req("INVITE", "", Some(SDP_A)), a.flow);
    assert_eq!(responses(&outs), vec![491], "one offer at a time");
    let outs = h.reply_via(&dir, re[0].0, &re[0].1, 491, &a.mine, None);
    assert!(requests(&outs, "INVITE").is_empty(), "not at once");
    let outs = h.advance(Duration::from_millis(999));
    assert!(requests(&outs, "INVITE").is_empty());
    let outs = h.advance(Duration::from_millis(2));
    let again = requests_in(&outs, "INVITE", "c1@a");
    assert_eq!(again.len(), 1, "again after a second");
    assert_eq!(
        body(&text(&again[0].1)),
        body(&text(&re[0].1)),
        "the same offer"
    );
    // Refused for good: the joined call ends.
    let outs = h.reply_via(&dir, again[0].0, &again[0].1, 488, &a.mine, None);
    assert_eq!(requests(&outs, "BYE").len(), 2, "keeper and target hung up");
}

/// INVITE with `Replaces` naming a ringing leg (the identifiers BLF gives a watcher): a
/// pickup. The picker is answered with the caller's media, the caller with the picker's, the
/// ringing phone is cancelled.
#[test]
fn invite_with_replaces_picks_up_a_ringing_leg_named_by_blf() {
    let (mut h, dir) = h();
    let a_flow = h.a_flow;
    h.invite_from(&dir, ("101", a_flow), "c1@a", "102", "", Some(SDP_A));
    let (id, inv) = requests(&h.outs, "INVITE")
        .into_iter()
        .find(|(_, d)| text(d).starts_with("INVITE sip:102@"))
        .unwrap();
    h.reply_via(&dir, id, &inv, 180, "ring102", None);
    let d = h.b.dialogs_of("102");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].state, podpbx_presence::dialog_info::State::Early);
    // What a phone builds from the dialog-info: to-tag = the remote tag, from-tag = the local.
    let replaces = format!(
        "Replaces: {};to-tag={};from-tag={}\r\n",
        d[0].call_id.as_deref().unwrap(),
        d[0].remote_tag.as_deref().unwrap(),
        d[0].local_tag.as_deref().unwrap()
    );
    let outs = h.invite_from(
        &dir,
        ("103", c_flow()),
        "pick@c",
        "102",
        &replaces,
        Some(SDP_C),
    );
    assert_eq!(requests(&outs, "CANCEL").len(), 1, "102 stops ringing");
    let ok_p = response_to(&outs, 200, "pick@c").expect("the picker is answered");
    assert!(
        body(&ok_p).contains("RTP/AVP 0 101"),
        "the caller's media:\n{ok_p}"
    );
    let ok_a = response_to(&outs, 200, "c1@a").expect("the caller is answered");
    assert!(
        body(&ok_a).contains("RTP/AVP 8"),
        "the picker's media:\n{ok_a}"
    );
    assert_eq!(h.b.active_calls(), 1);
    // The same Replaces again: nothing rings any more.
    let outs = h.invite_from(
        &dir,
        ("104", d_flow()),
        "pick2@d",
        "102",
        &replaces,
        Some(SDP_C),
    );
    assert_eq!(responses(&outs), vec![100, 481]);
}

/// INVITE with `Replaces` naming an answered leg of the same user (the call moves to another
/// device): the remaining party gets the device's offer by re-INVITE, the device our 2xx with
/// the answer, the old device a BYE. Refusals: another user's call 403, a device known by its
/// address 403, early-only 486, the caller's early dialog 481, malformed 400; a re-INVITE
/// refused by the remaining party leaves the call as it was and the device gets the refusal.
#[test]
fn invite_with_replaces_moves_an_answered_call_to_another_device_of_its_user() {
    let (mut h, dir) = h();
    let (mut a, b, _) = call_101_102(&mut h, &dir);
    let rep = format!("Replaces: {}\r\n", b.replaces());
    // Not 102: 403, nothing sent.
    let outs = h.invite_from(&dir, ("103", c_flow()), "x@c", "102", &rep, Some(SDP_C));
    assert_eq!(responses(&outs), vec![100, 403]);
    // Malformed: 400.
    let outs = h.invite_from(
        &dir,
        ("102", c_flow()),
        "y@c",
        "102",
        "Replaces: c1@a;to-tag=1\r\n",
        Some(SDP_C),
    );
    assert_eq!(responses(&outs), vec![100, 400]);
    // early-only on an answered dialog: 486.
    let eo = format!("Replaces: {};early-only\r\n", b.replaces());
    let outs = h.invite_from(&dir, ("102", c_flow()), "z@c", "102", &eo, Some(SDP_C));
    assert_eq!(responses(&outs), vec![100, 486]);
    // 102's other device: 101 is re-INVITEd with its media.
    let dev2 = flow("[2001:db8:1::77]:5060", "[2001:db8::1]:5060");
    let outs = h.invite_from(&dir, ("102", dev2), "dev2@b", "102", &rep, Some(SDP_C));
    assert_eq!(
        responses(&outs),
        vec![100],
        "the device waits for the remaining party"
    );
    let re = requests_in(&outs, "INVITE", "c1@a");
    assert_eq!(re.len(), 1);
    assert!(
        body(&text(&re[0].1)).contains("RTP/AVP 8"),
        "the device's offer"
    );
    // Refused: the device gets the refusal, the call stays between 101 and 102.
    let outs = h.reply_via(&dir, re[0].0, &re[0].1, 488, &a.mine, None);
    assert_eq!(responses(&outs), vec![488]);
    assert!(requests(&outs, "BYE").is_empty(), "nobody hung up");
    let outs = h.in_dialog_via(&dir, a.req("INFO", "", None), a.flow);
    assert_eq!(
        requests(&outs, "INFO").len(),
        1,
        "101 and 102 still bridged"
    );
    assert!(header_of(&requests(&outs, "INFO")[0].1, "Call-ID") == b.call_id);
    // Again, accepted this time.
    let outs = h.invite_from(&dir, ("102", dev2), "dev3@b", "102", &rep, Some(SDP_C));
    let re = requests_in(&outs, "INVITE", "c1@a");
    let outs = h.reply_via(&dir, re[0].0, &re[0].1, 200, &a.mine, Some(SDP_A));
    let ok = response_to(&outs, 200, "dev3@b").expect("the device is answered");
    assert!(
        body(&ok).contains("RTP/AVP 0 101") && body(&ok).contains("c=IN IP6 2001:db8::10"),
        "{ok}"
    );
    assert_eq!(
        requests_in(&outs, "BYE", &b.call_id).len(),
        1,
        "the old device gets BYE"
    );
    // 101 now talks to the new device.
    let dev = Side {
        call_id: "dev3@b".into(),
        mine: "dev3@b-t".into(),
        ours: to_tag(&ok),
        user: "102".into(),
        flow: dev2,
        cseq: 1,
    };
    h.ack_via(&dev);
    let outs = h.in_dialog_via(&dir, a.req("INFO", "", None), a.flow);
    assert_eq!(requests_in(&outs, "INFO", "dev3@b").len(), 1);
    // A device known by its address may not replace anything.
    let door = flow("198.51.100.50:5060", "198.51.100.10:5060");
    let rep_a = format!("Replaces: {}\r\n", a.replaces());
    let saved = h.a_flow;
    let outs = h.invite_from(&dir, ("190", door), "door@x", "101", &rep_a, Some(SDP_C4));
    h.a_flow = saved;
    assert_eq!(responses(&outs), vec![100, 403]);
    let r = response_to(&outs, 403, "door@x").unwrap();
    assert!(
        r.starts_with("SIP/2.0 403 Replaces Needs Authentication"),
        "{r}"
    );
}

/// The caller's own early dialog (podpbx did not initiate it): 481 (RFC 3891 §3).
#[test]
fn invite_with_replaces_of_a_callers_early_dialog_is_481() {
    let (mut h, dir) = h();
    let a_flow = h.a_flow;
    let outs = h.invite_from(&dir, ("101", a_flow), "c1@a", "102", "", Some(SDP_A));
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv, 180, "r", None);
    let ring = response_to(&outs, 180, "c1@a").unwrap();
    let rep = format!(
        "Replaces: c1@a;to-tag={};from-tag=c1@a-t\r\n",
        to_tag(&ring)
    );
    let outs = h.invite_from(&dir, ("101", c_flow()), "again@a", "102", &rep, Some(SDP_A));
    assert_eq!(responses(&outs), vec![100, 481]);
}

/// Toll fraud through transfers (issue #11): a blind transfer may go out through a trunk
/// only when the transferor could call that number itself. A trunk leg (the provider's
/// REFER) and a device known by its address get NOTIFY 403 and no trunk INVITE; an
/// authenticated user's transfer to a number reaches the trunk.
#[test]
fn a_transfer_reaches_a_trunk_only_for_a_transferor_that_could_call_it() {
    // The provider transfers its caller to a number (a hairpin it may not make).
    let (mut h, dir) = h();
    let pflow = flow(TRUNK, "[2001:db8::1]:5060");
    h.a_flow = pflow;
    let text_inv = format!(
        "INVITE sip:4930999@[2001:db8::1] SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKp1;rport\r\nFrom: <sip:+4917012@prov>;tag=p\r\n\
         To: <sip:4930999@pbx>\r\nCall-ID: pstn@p\r\nCSeq: 1 INVITE\r\nContact: <sip:+4917012@{TRUNK}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let caller = Caller::Trunk {
        name: "prov".into(),
        did: Some("4930999".into()),
    };
    let outs = h.invite_text(&text_inv, caller, Some(&dir));
    let (id, inv) = requests(&outs, "INVITE")[0].clone();
    let outs = h.reply_via(&dir, id, &inv, 200, "btag", Some(SDP_B));
    let mut p = Side {
        call_id: "pstn@p".into(),
        mine: "p".into(),
        ours: to_tag(&response_to(&outs, 200, "pstn@p").unwrap()),
        user: "+4917012".into(),
        flow: pflow,
        cseq: 1,
    };
    h.ack_via(&p);
    let outs = h.in_dialog_via(
        &dir,
        p.req("REFER", "Refer-To: <sip:0900123@pbx>\r\n", None),
        pflow,
    );
    assert_eq!(responses(&outs), vec![202]);
    assert!(
        requests(&outs, "INVITE").is_empty(),
        "no trunk INVITE for the provider's REFER"
    );
    let n = requests(&outs, "NOTIFY");
    assert!(
        text(&n.last().unwrap().1).contains("SIP/2.0 403 "),
        "{}",
        text(&n.last().unwrap().1)
    );
    assert_eq!(h.b.security_counts().trunk_refused, 1);

    // A device (the doorbell, known by its address) answered by 102 transfers... and 102
    // (authenticated) transfers the doorbell out: allowed, the transferor decides.
    let (mut h, dir) = super::transfer::h();
    let door = flow("198.51.100.50:5060", "198.51.100.10:5060");
    let sdp4 = "v=0\r\no=d 1 1 IN IP4 198.51.100.50\r\ns=-\r\nc=IN IP4 198.51.100.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    h.a_flow = door;
    let text_inv = format!(
        "INVITE sip:1@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bKdb;rport\r\nFrom: <sip:190@pbx>;tag=d\r\n\
         To: <sip:1@pbx>\r\nCall-ID: door@d\r\nCSeq: 1 INVITE\r\nContact: <sip:190@198.51.100.50>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp4}",
        sdp4.len()
    );
    let outs = h.invite_text(&text_inv, Caller::User("190".into()), Some(&dir));
    let (id, inv) = requests(&outs, "INVITE")
        .into_iter()
        .find(|(_, d)| text(d).starts_with("INVITE sip:102@"))
        .unwrap();
    let outs = h.reply_via(&dir, id, &inv, 200, "btag", Some(SDP_B));
    let mut d = Side {
        call_id: "door@d".into(),
        mine: "d".into(),
        ours: to_tag(&response_to(&outs, 200, "door@d").unwrap()),
        user: "190".into(),
        flow: door,
        cseq: 1,
    };
    h.ack_via(&d);
    // The doorbell itself sends REFER to a number: refused (a forgeable source).
    let outs = h.in_dialog_via(
        &dir,
        d.req("REFER", "Refer-To: <sip:0900123@pbx>\r\n", None),
        door,
    );
    assert!(
        requests(&outs, "INVITE").is_empty(),
        "no trunk INVITE for the device's REFER"
    );
    assert!(text(&requests(&outs, "NOTIFY").last().unwrap().1).contains("SIP/2.0 403 "));
    // 102 (digest) transfers the doorbell to the number: the trunk is called.
    let mut b = Side::of_invite(&inv, "btag", "102", b_flow());
    let outs = h.in_dialog_via(
        &dir,
        b.req("REFER", "Refer-To: <sip:0301234@pbx>\r\n", None),
        b.flow,
    );
    let inv = requests(&outs, "INVITE");
    assert_eq!(inv.len(), 1);
    assert!(
        text(&inv[0].1).starts_with("INVITE sip:0301234@[2001:db8:ffff::1]"),
        "{}",
        text(&inv[0].1)
    );
    // The provider answers: the doorbell gets its media at an IPv4 anchor.
    let outs = h.reply_via(&dir, inv[0].0, &inv[0].1, 200, "pt", Some(SDP_C));
    let re = requests_in(&outs, "INVITE", "door@d");
    assert_eq!(re.len(), 1);
    assert!(body(&text(&re[0].1)).contains("c=IN IP4 198.51.100.10"));
}
