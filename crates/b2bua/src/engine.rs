//! The call state machine. See the crate documentation for the flows.

use crate::cdr::{Cdr, CdrLeg, Disposition, MediaCounters};
use crate::util::{
    hostport, parse_dtmf_info, rfc3339, sanitize, sanitize_display, token, unescape_user,
};
use crate::{
    Caller, ContactTarget, Directory, Family, Flow, Identity, MediaId, MediaLeg, MediaPort, Output,
    ReqId, Settings,
};
use bytes::Bytes;
use podpbx_config::{Action, Config, Dtmf, Origin, RingStrategy, Target};
use podpbx_sdp::{Anchor, MediaPlan, OriginPlan, RemoteMedia, RewritePlan, Sdp, ZeroAddressHold};
use podpbx_sip::builder::cancel_for;
use podpbx_sip::digest::{AuthKind, DigestClient};
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{
    Framing, HeaderName, Message, Method, NameAddr, Peer, RequestBuilder, ResponseBuilder,
    StatusCode, Transport,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

type CallKey = u64;
type LegIdx = usize;
const NO_BUNDLE: usize = usize::MAX;
/// Most SDP m-lines we anchor per call.
const MAX_STREAMS: usize = 8;
/// How many times a trunk INVITE answers a challenge.
const MAX_AUTH_ROUNDS: u32 = 2;
/// DTMF digits waiting for their INFO per dialog (one INFO outstanding at a time).
const MAX_DTMF_QUEUE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Uas,
    Uac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    /// UAC: INVITE sent, nothing back yet.
    Calling,
    /// UAC: provisional received. UAS: INVITE received, no final yet.
    Early,
    /// 2xx sent (UAS, waiting for the ACK) or received (UAC).
    Answered,
    Confirmed,
    Terminated,
}

/// A 2xx we (as UAS) retransmit until the ACK (RFC 3261 §13.3.1.4).
#[derive(Debug, Clone)]
struct OkRetx {
    data: Bytes,
    cseq: u32,
    interval: Duration,
    started: Instant,
}

/// What an authenticated re-send of an INVITE needs: request URI, extra headers, body.
type Resend = (String, Vec<(String, String)>, Option<(String, Vec<u8>)>);

struct Leg {
    role: Role,
    /// Local user or trunk name.
    party: Option<String>,
    is_trunk: bool,
    dtmf: Dtmf,
    /// The peer offered/accepted telephone-event.
    te: bool,
    peer: Peer,
    local: SocketAddr,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our name-addr on this leg, without tag.
    local_hdr: String,
    /// The peer's name-addr, with its tag once known.
    remote_hdr: String,
    local_cseq: u32,
    remote_cseq: u32,
    remote_target: String,
    route_set: Vec<String>,
    state: LegState,
    status: u16,
    cdr_role: &'static str,
    // UAC INVITE
    invite: Option<Message>,
    invite_req: Option<ReqId>,
    invite_had_body: bool,
    got_1xx: bool,
    cancel_pending: bool,
    cancelled: bool,
    /// Which routing step created it.
    step_gen: u32,
    digest: Option<DigestClient>,
    auth_rounds: u32,
    /// To build an authenticated re-send: (request URI, headers without Via/CSeq/auth, body).
    resend: Option<Resend>,
    // UAS INVITE
    invite_tx: Option<ServerTxId>,
    uas_invite: Option<(Message, SocketAddr)>,
    ok: Option<OkRetx>,
    /// ACK we sent for a 2xx, re-sent when the 2xx is retransmitted.
    last_ack: Option<(u32, Bytes)>,
    /// A 2xx to our INVITE (this CSeq) waits for the answer in the other side's ACK.
    ack_deferred: Option<u32>,
    reinvite_in: Option<ServerTxId>,
    reinvite_out: Option<ReqId>,
    media_leg: MediaLeg,
    bundle: usize,
    last_sdp: Option<Bytes>,
    origin_id: u64,
    origin_ver: u64,
    last_sent_sdp: Option<String>,
    /// Our DTMF INFO (from RFC 4733 on the other side) awaiting its final response: digits are
    /// sent one INFO at a time, in order; later ones wait in `dtmf_queue` (digit, ms).
    dtmf_out: Option<ReqId>,
    dtmf_queue: VecDeque<(char, u64)>,
}

impl Leg {
    fn active(&self) -> bool {
        self.state != LegState::Terminated
    }
    fn ringing(&self) -> bool {
        self.role == Role::Uac && matches!(self.state, LegState::Calling | LegState::Early)
    }
    fn family(&self) -> Family {
        Family::of(self.peer.addr.ip())
    }
    fn contact(&self) -> String {
        let tp = match self.peer.transport {
            Transport::Udp => "",
            t => t.param(),
        };
        let sep = if tp.is_empty() { "" } else { ";transport=" };
        format!("<sip:podpbx@{}{sep}{tp}>", hostport(self.local))
    }
}

struct Bundle {
    a: Family,
    b: Family,
    ids: Vec<Option<MediaId>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Initial,
    Transfer {
        keeper: LegIdx,
        transferor: LegIdx,
        family: Family,
    },
}

struct Routing {
    purpose: Purpose,
    steps: VecDeque<Action>,
    gen: u32,
    /// Sequential: users still to ring in this step, and the per-user ring time.
    seq: VecDeque<String>,
    seq_timeout: Duration,
    /// Legs of the current step.
    legs: Vec<LegIdx>,
    codes: Vec<StatusCode>,
    timed_out: bool,
    last_failure: Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Routing,
    Bridged,
    Ending,
}

struct Call {
    key: CallKey,
    start: Instant,
    wall0: SystemTime,
    caller: Caller,
    /// From identity on B legs: (display, user).
    from_id: (String, String),
    number: String,
    legs: Vec<Leg>,
    a: LegIdx,
    bridge: Option<(LegIdx, LegIdx)>,
    routing: Option<Routing>,
    bundles: Vec<Bundle>,
    phase: Phase,
    answered_at: Option<Instant>,
    ended_at: Option<Instant>,
    disposition: Option<Disposition>,
    a_status: u16,
    hangup_by: Option<String>,
    reason: String,
    rule: Option<String>,
    answered_by: Option<String>,
    transferred_to: Option<String>,
    pending: usize,
    offer: Option<Bytes>,
    /// Offer hold state.
    held: bool,
}

#[derive(Debug, Clone)]
enum ReqKind {
    Invite,
    Cancel,
    Bye,
    Notify,
    /// A DTMF INFO of ours (RFC 4733 from the other side, [`B2bua::media_dtmf`]).
    DtmfInfo,
    /// A request relayed from `from`'s server transaction `tx`.
    Relay {
        from: LegIdx,
        tx: ServerTxId,
        req: Box<Message>,
        src: SocketAddr,
    },
}

struct Pending {
    call: CallKey,
    leg: LegIdx,
    kind: ReqKind,
    done: bool,
    /// Counted in the call's `pending` (CANCELs are not waited for).
    counted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Ring(u32),
    Retx2xx(LegIdx),
    MaxDuration,
    Cleanup,
    CancelGuard(LegIdx),
}

/// The B2BUA: every call, its legs and timers. See the crate documentation.
pub struct B2bua {
    cfg: Arc<Config>,
    settings: Settings,
    media: Box<dyn MediaPort + Send>,
    calls: HashMap<CallKey, Call>,
    pub(crate) by_invite_tx: HashMap<ServerTxId, CallKey>,
    by_dialog: HashMap<(String, String), (CallKey, LegIdx)>,
    by_req: HashMap<ReqId, Pending>,
    by_media: HashMap<MediaId, CallKey>,
    timers: BTreeMap<(Instant, u64), (CallKey, TimerKind)>,
    timer_seq: u64,
    out: VecDeque<Output>,
    next_call: u64,
    next_req: u64,
}

/// Why routing failed: the final status for the caller (with a reason phrase other than the
/// standard one, e.g. a dialplan `reject` with its own reason) and the CDR disposition.
#[derive(Debug, Clone)]
struct Failure {
    status: StatusCode,
    reason: Option<String>,
    disposition: Disposition,
}

impl Failure {
    fn new(status: StatusCode, disposition: Disposition) -> Failure {
        Failure {
            status,
            reason: None,
            disposition,
        }
    }
}

fn disposition_for(code: StatusCode) -> Disposition {
    match code.code() {
        486 | 600 => Disposition::Busy,
        480 | 408 => Disposition::NoAnswer,
        487 => Disposition::Cancelled,
        500..=599 => Disposition::Failed,
        _ => Disposition::Rejected,
    }
}

fn is_sdp(msg: &Message) -> bool {
    !msg.body.is_empty()
        && msg
            .content_type()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"application/sdp"))
}

fn str_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where responses to `req` go (RFC 3261 §18.2.2, RFC 3581).
fn response_peer(req: &Message, flow: Flow) -> Peer {
    let mut peer = flow.peer();
    if flow.transport == Transport::Udp {
        if let Ok(via) = req.top_via() {
            if via.rport().is_none() {
                peer.addr = SocketAddr::new(flow.remote.ip(), via.port.unwrap_or(5060));
            }
        }
    }
    peer
}

/// The name-addr text of a From/To header without its tag parameter.
fn without_tag(na: &NameAddr) -> String {
    let uri = str_of(&na.uri.raw);
    let mut s = match &na.display {
        Some(d) => format!("\"{}\" <{uri}>", str_of(d)),
        None => format!("<{uri}>"),
    };
    for (k, v) in na.params.iter() {
        if k.eq_ignore_ascii_case(b"tag") {
            continue;
        }
        s.push(';');
        s.push_str(&str_of(&k));
        if !v.is_empty() {
            s.push('=');
            s.push_str(&str_of(&v));
        }
    }
    s
}

/// Replaces the `o=` line with our own origin for this leg.
fn replace_origin(sdp: &str, id: u64, ver: u64, addr: std::net::IpAddr) -> String {
    let at = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("o=") {
            let eol = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            out.push_str(&format!("o=podpbx {id} {ver} IN {at} {addr}{eol}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

impl B2bua {
    /// A B2BUA routing by `cfg`, with media through `media`.
    pub fn new(cfg: Arc<Config>, settings: Settings, media: Box<dyn MediaPort + Send>) -> B2bua {
        B2bua {
            cfg,
            settings,
            media,
            calls: HashMap::new(),
            by_invite_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            by_req: HashMap::new(),
            by_media: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            next_call: 1,
            next_req: 1,
        }
    }

    /// Swaps the dialplan, users and groups for the next calls (calls in progress keep the
    /// steps they already have).
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        self.cfg = cfg;
    }

    /// The configuration in use.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Calls in progress (not yet finished).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Whether an in-dialog request or ACK belongs to one of our dialogs.
    pub fn owns_dialog(&self, req: &Message) -> bool {
        self.dialog_of(req).is_some()
    }

    /// How a new INVITE from `flow` is identified before authentication: a trunk's networks
    /// (or its host, when the Request-URI/To names one of its DIDs), an `identify_by_source`
    /// user, or digest.
    pub fn identify(&self, req: &Message, flow: &Flow) -> Identity {
        let ip = flow.remote.ip();
        let ruri_user = req
            .request_uri()
            .ok()
            .and_then(|u| u.user.map(|u| unescape_user(&u)));
        let to_user = req
            .to_hdr()
            .ok()
            .and_then(|t| t.uri.user.map(|u| unescape_user(&u)));
        for t in &self.cfg.trunks {
            let in_net = t.networks.iter().any(|n| n.contains(ip));
            let is_host = matches!(t.host, podpbx_config::Host::Ip(h) if h == ip);
            let did = [ruri_user.clone(), to_user.clone()]
                .into_iter()
                .flatten()
                .find(|u| t.dids.iter().any(|d| d == u));
            if in_net || (is_host && did.is_some()) {
                let did = did.or(ruri_user.clone());
                return Identity::Trunk {
                    name: t.name.clone(),
                    did,
                };
            }
        }
        for u in &self.cfg.users {
            if u.identify_by_source
                && !u.allow_from.is_empty()
                && u.allow_from.iter().any(|n| n.contains(ip))
            {
                return Identity::User(u.name.clone());
            }
        }
        Identity::Authenticate
    }

    fn alloc_req(&mut self) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        id
    }

    fn arm(&mut self, at: Instant, call: CallKey, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), (call, kind));
    }

    fn dialog_of(&self, req: &Message) -> Option<(CallKey, LegIdx)> {
        let call_id = str_of(&req.call_id().ok()?);
        let tag = str_of(&req.to_hdr().ok()?.tag()?);
        self.by_dialog.get(&(call_id, tag)).copied()
    }

    // ------------------------------------------------------------------------------------
    // Message building
    // ------------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        tx: ServerTxId,
        req: &Message,
        src: SocketAddr,
        status: StatusCode,
        reason: Option<&str>,
        to_tag: Option<&str>,
        headers: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) -> Bytes {
        let reason = reason.unwrap_or(status.reason());
        let mut b = ResponseBuilder::new(req, status.code(), reason, Some(src));
        if let Some(t) = to_tag {
            b = b.to_tag(t);
        }
        // RFC 3261 §12.1.1: a dialog-creating response carries the request's Record-Route
        // values, in order, so the caller's ACK and in-dialog requests follow the proxies that
        // record-routed (a provider's Kamailio in front of a trunk call).
        if (101..300).contains(&status.code()) && req.method() == Some(&Method::Invite) {
            for rr in req.header_values(HeaderName::RecordRoute) {
                b = b.header("Record-Route", &str_of(&rr));
            }
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        if !self.settings.user_agent.is_empty() {
            b = b.header("Server", &self.settings.user_agent);
        }
        if let Some((ct, data)) = body {
            b = b.body(ct, data);
        }
        let data = b.build();
        self.out.push_back(Output::Respond {
            tx,
            status,
            data: data.clone(),
        });
        data
    }

    /// Builds an in-dialog request on `leg` (without sending it).
    fn build_request(
        &self,
        leg: &Leg,
        method: &Method,
        cseq: u32,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) -> (String, Bytes) {
        let branch = format!("z9hG4bK{}", token());
        let mut b = RequestBuilder::new(method, &leg.remote_target)
            .header(
                "Via",
                &format!(
                    "SIP/2.0/{} {};branch={branch};rport",
                    leg.peer.transport.via_token(),
                    hostport(leg.local)
                ),
            )
            .header("Max-Forwards", "70");
        for r in &leg.route_set {
            b = b.header("Route", r);
        }
        b = b
            .header("From", &format!("{};tag={}", leg.local_hdr, leg.local_tag))
            .header("To", &leg.remote_hdr)
            .header("Call-ID", &leg.call_id)
            .header("CSeq", &format!("{cseq} {method}"));
        if matches!(
            method,
            Method::Invite | Method::Update | Method::Notify | Method::Refer | Method::Subscribe
        ) {
            b = b.header("Contact", &leg.contact());
        }
        for (n, v) in extra {
            b = b.header(n, v);
        }
        if !self.settings.user_agent.is_empty() && *method != Method::Ack {
            b = b.header("User-Agent", &self.settings.user_agent);
        }
        if let Some((ct, data)) = body {
            b = b.body(ct, data);
        }
        (branch, b.build())
    }

    /// Sends a new in-dialog request on `li` (next CSeq) as a client transaction.
    fn send_in_dialog(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        method: Method,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
        kind: ReqKind,
    ) -> ReqId {
        call.legs[li].local_cseq += 1;
        let cseq = call.legs[li].local_cseq;
        let (branch, data) = self.build_request(&call.legs[li], &method, cseq, extra, body);
        let id = self.alloc_req();
        self.by_req.insert(
            id,
            Pending {
                call: call.key,
                leg: li,
                kind,
                done: false,
                counted: true,
            },
        );
        call.pending += 1;
        self.out.push_back(Output::Request {
            id,
            method,
            branch,
            data,
            peer: call.legs[li].peer,
        });
        id
    }

    fn send_ack(&mut self, call: &mut Call, li: LegIdx, cseq: u32, body: Option<(&str, &[u8])>) {
        let (_, data) = self.build_request(&call.legs[li], &Method::Ack, cseq, &[], body);
        call.legs[li].last_ack = Some((cseq, data.clone()));
        self.out.push_back(Output::Stateless {
            peer: call.legs[li].peer,
            data,
        });
    }

    fn send_bye(&mut self, call: &mut Call, li: LegIdx) {
        if !call.legs[li].active() {
            return;
        }
        if let Some(cseq) = call.legs[li].ack_deferred.take() {
            // A 2xx still waits for its ACK: acknowledge it first.
            self.send_ack(call, li, cseq, None);
        }
        call.legs[li].state = LegState::Terminated;
        call.legs[li].ok = None;
        self.send_in_dialog(call, li, Method::Bye, &[], None, ReqKind::Bye);
    }

    fn send_cancel(&mut self, call: &mut Call, li: LegIdx, now: Instant) {
        let leg = &mut call.legs[li];
        if !leg.ringing() || leg.cancelled {
            return;
        }
        if !leg.got_1xx {
            // RFC 3261 §9.1: no CANCEL before a provisional response.
            leg.cancel_pending = true;
            let at = now + self.settings.timers.t1.saturating_mul(64);
            self.arm(at, call.key, TimerKind::CancelGuard(li));
            return;
        }
        leg.cancelled = true;
        let Some(inv) = leg.invite.as_ref() else {
            return;
        };
        let data = cancel_for(inv);
        let branch = inv
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .map(|b| str_of(&b))
            .unwrap_or_default();
        let peer = leg.peer;
        let id = self.alloc_req();
        self.by_req.insert(
            id,
            Pending {
                call: call.key,
                leg: li,
                kind: ReqKind::Cancel,
                done: false,
                counted: false,
            },
        );
        self.out.push_back(Output::Request {
            id,
            method: Method::Cancel,
            branch,
            data,
            peer,
        });
        let at = now + self.settings.timers.t1.saturating_mul(64);
        self.arm(at, call.key, TimerKind::CancelGuard(li));
    }

    /// Sends the final response to the A leg's INVITE (non-2xx).
    fn final_to_a(&mut self, call: &mut Call, status: StatusCode, reason: Option<&str>) {
        let a = call.a;
        let Some(tx) = call.legs[a].invite_tx.take() else {
            return;
        };
        let Some((req, src)) = call.legs[a].uas_invite.clone() else {
            return;
        };
        let tag = call.legs[a].local_tag.clone();
        self.respond(tx, &req, src, status, reason, Some(&tag), &[], None);
        call.legs[a].state = LegState::Terminated;
        call.legs[a].status = status.code();
        call.a_status = status.code();
    }

    // ------------------------------------------------------------------------------------
    // Media
    // ------------------------------------------------------------------------------------

    fn bundle_for(&mut self, call: &mut Call, a: Family, b: Family) -> usize {
        if let Some(i) = call.bundles.iter().position(|x| x.a == a && x.b == b) {
            return i;
        }
        call.bundles.push(Bundle {
            a,
            b,
            ids: Vec::new(),
        });
        call.bundles.len() - 1
    }

    /// Allocates relay sessions for every active m-line of `sdp` in bundle `bi`.
    fn ensure_sessions(&mut self, call: &mut Call, bi: usize, sdp: &Sdp) -> Result<(), String> {
        let key = call.key;
        let Some(bundle) = call.bundles.get_mut(bi) else {
            return Err("no media bundle".into());
        };
        for m in sdp.media().iter().take(MAX_STREAMS) {
            if bundle.ids.len() <= m.index {
                bundle.ids.resize(m.index + 1, None);
            }
            if m.rejected() || bundle.ids[m.index].is_some() {
                continue;
            }
            let id = self.media.allocate(bundle.a, bundle.b)?;
            bundle.ids[m.index] = Some(id);
            self.by_media.insert(id, key);
        }
        Ok(())
    }

    /// The peer of leg `li` sent `sdp` (an offer when `offer`): tell the relay.
    fn learn_remote(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        bi: usize,
        sdp: &Sdp,
        raw: &Bytes,
        offer: bool,
    ) {
        let leg_side = call.legs[li].media_leg;
        call.legs[li].last_sdp = Some(raw.clone());
        call.legs[li].te = sdp
            .media()
            .iter()
            .any(|m| m.telephone_event.is_some() && !m.rejected());
        if offer {
            call.held = sdp.on_hold();
        }
        let held = call.held;
        // The relay accepts this leg's media only from the SDP's IPs and the signalling peer's.
        let signalling = call.legs[li].peer.addr.ip();
        let Some(bundle) = call.bundles.get(bi) else {
            return;
        };
        for m in sdp.media() {
            let Some(Some(id)) = bundle.ids.get(m.index).copied() else {
                continue;
            };
            if m.rejected() {
                continue;
            }
            if let Some(r) = RemoteMedia::from_sdp(m, false) {
                self.media
                    .set_remote(id, leg_side, r.with_signalling(signalling));
            }
            if offer {
                self.media.set_hold(id, MediaLeg::A, held);
                self.media.set_hold(id, MediaLeg::B, held);
            }
        }
    }

    /// Rewrites `sdp` for leg `li` (anchors of its side of bundle `bi`, our own origin).
    fn rewrite_for(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        bi: usize,
        sdp: &Sdp,
    ) -> Result<String, String> {
        let side = call.legs[li].media_leg;
        let ids = call
            .bundles
            .get(bi)
            .map(|b| b.ids.clone())
            .unwrap_or_default();
        let mut first_addr = None;
        let plan: Vec<MediaPlan> = sdp
            .media()
            .iter()
            .map(|m| {
                match ids
                    .get(m.index)
                    .copied()
                    .flatten()
                    .and_then(|id| self.media.local(id, side))
                {
                    Some(rtp) => {
                        first_addr.get_or_insert(rtp.ip());
                        MediaPlan::Anchor(Anchor {
                            addr: rtp.ip(),
                            rtp_port: rtp.port(),
                            rtcp_port: rtp.port().wrapping_add(1),
                        })
                    }
                    None => MediaPlan::Reject,
                }
            })
            .collect();
        let text = sdp
            .rewrite(&RewritePlan {
                media: plan,
                origin: OriginPlan::Keep,
                zero_address_hold: ZeroAddressHold::default(),
            })
            .map_err(|e| e.to_string())?;
        let leg = &mut call.legs[li];
        if leg.last_sent_sdp.as_deref() != Some(text.as_str()) {
            if leg.last_sent_sdp.is_some() {
                leg.origin_ver += 1;
            }
            leg.last_sent_sdp = Some(text.clone());
        }
        let addr = first_addr.unwrap_or(leg.local.ip());
        Ok(replace_origin(&text, leg.origin_id, leg.origin_ver, addr))
    }

    /// `raw` (SDP from `from`) rewritten for `to`, with the relay told about `from`'s media.
    fn relay_sdp(
        &mut self,
        call: &mut Call,
        from: LegIdx,
        to: LegIdx,
        raw: &Bytes,
        offer: bool,
    ) -> Result<String, String> {
        let sdp = Sdp::parse(raw).map_err(|e| e.to_string())?;
        let bi = if call.legs[from].bundle != NO_BUNDLE {
            call.legs[from].bundle
        } else {
            call.legs[to].bundle
        };
        if offer {
            self.ensure_sessions(call, bi, &sdp)?;
        }
        self.learn_remote(call, from, bi, &sdp, raw, offer);
        self.rewrite_for(call, to, bi, &sdp)
    }

    fn release_bundle(&mut self, call: &mut Call, bi: usize) {
        if let Some(b) = call.bundles.get_mut(bi) {
            for id in b.ids.drain(..).flatten() {
                self.media.release(id);
                self.by_media.remove(&id);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // New calls
    // ------------------------------------------------------------------------------------

    fn user_calls(&self, user: &str) -> usize {
        self.calls
            .values()
            .filter(|c| {
                c.legs
                    .iter()
                    .any(|l| l.active() && !l.is_trunk && l.party.as_deref() == Some(user))
            })
            .count()
    }

    /// A new INVITE (no To tag) from an identified or authenticated `caller`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_invite(
        &mut self,
        now: Instant,
        wall: SystemTime,
        tx: ServerTxId,
        req: &Message,
        flow: Flow,
        caller: Caller,
        dir: &dyn Directory,
    ) {
        let src = flow.remote;
        self.respond(tx, req, src, StatusCode::TRYING, None, None, &[], None);
        let tag = token();
        let reject = |this: &mut B2bua, code: StatusCode, reason: Option<&str>| {
            this.respond(tx, req, src, code, reason, Some(&tag), &[], None);
        };
        if let Some(max) = self.cfg.calls.max_concurrent.filter(|m| *m > 0) {
            if self.calls.len() >= max as usize {
                warn!(max, "call limit reached: 503");
                reject(self, StatusCode::SERVICE_UNAVAILABLE, None);
                return;
            }
        }
        let (number, origin_user) = match &caller {
            Caller::User(u) => (
                req.request_uri()
                    .ok()
                    .and_then(|u| u.user.map(|x| unescape_user(&x)))
                    .unwrap_or_default(),
                Some(u.clone()),
            ),
            Caller::Trunk { did, .. } => (
                did.clone()
                    .or_else(|| {
                        req.request_uri()
                            .ok()
                            .and_then(|u| u.user.map(|x| unescape_user(&x)))
                    })
                    .unwrap_or_default(),
                None,
            ),
        };
        let cfg = self.cfg.clone();
        let user_cfg = origin_user.as_deref().and_then(|u| cfg.user(u));
        if let Some(u) = user_cfg {
            if let Some(max) = u.max_calls.filter(|m| *m > 0) {
                if self.user_calls(&u.name) >= max as usize {
                    info!(user = %u.name, max, "user call limit reached: 486");
                    reject(self, StatusCode::BUSY_HERE, None);
                    return;
                }
            }
        }
        let offer = if is_sdp(req) {
            match Sdp::parse(&req.body) {
                Ok(_) => Some(req.body.clone()),
                Err(e) => {
                    debug!(error = %e, "bad SDP offer: 488");
                    reject(self, StatusCode::NOT_ACCEPTABLE_HERE, None);
                    return;
                }
            }
        } else {
            None
        };
        let origin = match &caller {
            Caller::User(u) => Origin::Local { user: u },
            Caller::Trunk { name, did } => Origin::Trunk {
                trunk: name,
                did: did.as_deref(),
            },
        };
        let Some(rule) = cfg.route(&origin, &number) else {
            info!(%number, "no dialplan rule: 404");
            reject(self, StatusCode::NOT_FOUND, None);
            return;
        };
        let Ok(from) = req.from_hdr() else {
            reject(self, StatusCode::BAD_REQUEST, None);
            return;
        };
        let Ok(to) = req.to_hdr() else {
            reject(self, StatusCode::BAD_REQUEST, None);
            return;
        };
        let from_id = match &caller {
            Caller::User(u) => (
                user_cfg
                    .and_then(|c| c.display_name.clone())
                    .unwrap_or_default(),
                u.clone(),
            ),
            Caller::Trunk { .. } => (
                from.display_unescaped()
                    .map(|d| sanitize_display(&String::from_utf8_lossy(&d)))
                    .unwrap_or_default(),
                sanitize(
                    &from
                        .uri
                        .user
                        .as_ref()
                        .map(|u| unescape_user(u))
                        .unwrap_or_else(|| "anonymous".into()),
                    32,
                ),
            ),
        };
        let remote_target = req
            .contact_iter()
            .next()
            .and_then(|c| c.ok())
            .map(|c| str_of(&c.addr.uri.raw))
            .unwrap_or_else(|| str_of(&from.uri.raw));
        let key = self.next_call;
        self.next_call += 1;
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(1);
        let (party, is_trunk, dtmf) = match &caller {
            Caller::User(u) => (
                Some(u.clone()),
                false,
                user_cfg.map_or(Dtmf::Auto, |c| c.dtmf),
            ),
            Caller::Trunk { name, .. } => (Some(name.clone()), true, Dtmf::Auto),
        };
        let a_leg = Leg {
            role: Role::Uas,
            party,
            is_trunk,
            dtmf,
            te: false,
            peer: flow.peer(),
            local: flow.local,
            call_id: str_of(&req.call_id().unwrap_or_default()),
            local_tag: tag.clone(),
            remote_tag: from.tag().map(|t| str_of(&t)),
            local_hdr: without_tag(&to),
            remote_hdr: req
                .header(HeaderName::From)
                .map(|v| str_of(&v))
                .unwrap_or_default(),
            local_cseq: 0,
            remote_cseq: cseq,
            remote_target,
            route_set: req
                .header_values(HeaderName::RecordRoute)
                .map(|v| str_of(&v))
                .collect(),
            state: LegState::Early,
            status: 0,
            cdr_role: "caller",
            invite: None,
            invite_req: None,
            invite_had_body: offer.is_some(),
            got_1xx: false,
            cancel_pending: false,
            cancelled: false,
            step_gen: 0,
            digest: None,
            auth_rounds: 0,
            resend: None,
            invite_tx: Some(tx),
            uas_invite: Some((req.clone(), src)),
            ok: None,
            last_ack: None,
            ack_deferred: None,
            reinvite_in: None,
            reinvite_out: None,
            media_leg: MediaLeg::A,
            bundle: NO_BUNDLE,
            last_sdp: offer.clone(),
            origin_id: now.elapsed().as_nanos() as u64 ^ key.wrapping_mul(0x9e37_79b9),
            origin_ver: 1,
            last_sent_sdp: None,
            dtmf_out: None,
            dtmf_queue: VecDeque::new(),
        };
        let mut a_leg = a_leg;
        a_leg.peer = response_peer(req, flow);
        let mut call = Call {
            key,
            start: now,
            wall0: wall,
            caller: caller.clone(),
            from_id,
            number: number.clone(),
            legs: vec![a_leg],
            a: 0,
            bridge: None,
            routing: Some(Routing {
                purpose: Purpose::Initial,
                steps: rule.steps().cloned().collect(),
                gen: 0,
                seq: VecDeque::new(),
                seq_timeout: Duration::ZERO,
                legs: Vec::new(),
                codes: Vec::new(),
                timed_out: false,
                last_failure: Failure::new(
                    StatusCode::TEMPORARILY_UNAVAILABLE,
                    Disposition::NoAnswer,
                ),
            }),
            bundles: Vec::new(),
            phase: Phase::Routing,
            answered_at: None,
            ended_at: None,
            disposition: None,
            a_status: 0,
            hangup_by: None,
            reason: String::new(),
            rule: Some(rule.name.clone()),
            answered_by: None,
            transferred_to: None,
            pending: 0,
            offer,
            held: false,
        };
        info!(call = key, caller = ?caller, %number, rule = %rule.name, "new call");
        self.by_invite_tx.insert(tx, key);
        self.by_dialog
            .insert((call.legs[0].call_id.clone(), tag), (key, 0));
        self.next_step(&mut call, now, dir);
        self.put_back(call, now);
    }

    /// Re-inserts a call after handling, or finishes it.
    fn put_back(&mut self, mut call: Call, now: Instant) {
        if call.phase == Phase::Ending
            && call.pending == 0
            && !call.legs.iter().any(|l| l.ringing())
        {
            self.finish(&mut call, now);
            return;
        }
        self.calls.insert(call.key, call);
    }

    // ------------------------------------------------------------------------------------
    // Dialplan execution
    // ------------------------------------------------------------------------------------

    fn expand(&self, targets: &[Target]) -> Vec<String> {
        let mut users: Vec<String> = Vec::new();
        for t in targets {
            match t {
                Target::User(u) => users.push(u.clone()),
                Target::Group(g) => {
                    if let Some(g) = self.cfg.group(g) {
                        users.extend(g.members.iter().cloned());
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        users.retain(|u| seen.insert(u.clone()));
        users
    }

    /// Starts the next dialplan step of the call's routing, or fails the routing.
    fn next_step(&mut self, call: &mut Call, now: Instant, dir: &dyn Directory) {
        loop {
            let Some(r) = call.routing.as_mut() else {
                return;
            };
            r.gen += 1;
            r.legs.clear();
            r.codes.clear();
            r.timed_out = false;
            r.seq.clear();
            let Some(action) = r.steps.pop_front() else {
                let f = r.last_failure.clone();
                self.routing_failed(call, now, f);
                return;
            };
            let exclude = match &call.routing.as_ref().map(|r| &r.purpose) {
                Some(Purpose::Transfer { keeper, .. }) => call.legs[*keeper].party.clone(),
                _ => match &call.caller {
                    Caller::User(u) => Some(u.clone()),
                    Caller::Trunk { .. } => None,
                },
            };
            match action {
                Action::Reject { status, reason } => {
                    let status = StatusCode::new(status).unwrap_or(StatusCode::FORBIDDEN);
                    let f = Failure {
                        status,
                        reason,
                        disposition: Disposition::Rejected,
                    };
                    self.routing_failed(call, now, f);
                    return;
                }
                Action::Trunk {
                    trunk,
                    strip,
                    prepend,
                    caller_id,
                } => {
                    if self.start_trunk(
                        call,
                        now,
                        dir,
                        &trunk,
                        strip,
                        &prepend,
                        caller_id.as_deref(),
                    ) {
                        return;
                    }
                }
                Action::Local { timeout } => {
                    let number = call.number.clone();
                    if self.cfg.user(&number).is_some() {
                        if self.start_ring(
                            call,
                            now,
                            dir,
                            vec![number],
                            RingStrategy::Parallel,
                            timeout,
                            exclude,
                        ) {
                            return;
                        }
                    } else if let Some(g) = self.cfg.group(&number).cloned() {
                        let t = if g.strategy == RingStrategy::Sequential {
                            g.ring_timeout
                        } else {
                            timeout
                        };
                        if self.start_ring(
                            call,
                            now,
                            dir,
                            g.members.clone(),
                            g.strategy,
                            t,
                            exclude,
                        ) {
                            return;
                        }
                    } else if let Some(r) = call.routing.as_mut() {
                        r.last_failure = Failure::new(StatusCode::NOT_FOUND, Disposition::Rejected);
                    }
                }
                Action::Ring {
                    targets,
                    mode,
                    timeout,
                } => {
                    let users = self.expand(&targets);
                    if self.start_ring(call, now, dir, users, mode, timeout, exclude) {
                        return;
                    }
                }
            }
        }
    }

    /// Rings `users`; false (with `last_failure` set) if nobody could be rung.
    #[allow(clippy::too_many_arguments)]
    fn start_ring(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        users: Vec<String>,
        mode: RingStrategy,
        timeout: Duration,
        exclude: Option<String>,
    ) -> bool {
        let mut busy = 0;
        let mut candidates = VecDeque::new();
        for u in users {
            if Some(&u) == exclude.as_ref() {
                continue;
            }
            if let Some(max) = self
                .cfg
                .user(&u)
                .and_then(|c| c.max_calls)
                .filter(|m| *m > 0)
            {
                if self.user_calls(&u) >= max as usize {
                    busy += 1;
                    continue;
                }
            }
            candidates.push_back(u);
        }
        let Some(r) = call.routing.as_mut() else {
            return false;
        };
        r.seq_timeout = timeout;
        let gen = r.gen;
        if mode == RingStrategy::Sequential {
            r.seq = candidates;
            if self.ring_next_seq(call, now, dir) {
                return true;
            }
        } else {
            let mut rung = 0;
            for u in candidates {
                rung += self.ring_user(call, now, dir, &u);
            }
            if rung > 0 {
                self.arm(now + timeout, call.key, TimerKind::Ring(gen));
                return true;
            }
        }
        if let Some(r) = call.routing.as_mut() {
            r.last_failure = if busy > 0 {
                Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
            } else {
                Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer)
            };
        }
        false
    }

    /// Sequential ringing: the next user with a contact; false if none is left.
    fn ring_next_seq(&mut self, call: &mut Call, now: Instant, dir: &dyn Directory) -> bool {
        loop {
            let Some(r) = call.routing.as_mut() else {
                return false;
            };
            let Some(u) = r.seq.pop_front() else {
                return false;
            };
            let (gen, t) = (r.gen, r.seq_timeout);
            if self.ring_user(call, now, dir, &u) > 0 {
                self.arm(now + t, call.key, TimerKind::Ring(gen));
                return true;
            }
        }
    }

    /// Forks the INVITE to every contact of `user`; returns how many legs were created.
    fn ring_user(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        user: &str,
    ) -> usize {
        let contacts = dir.contacts(user, now);
        let dtmf = self.cfg.user(user).map_or(Dtmf::Auto, |u| u.dtmf);
        let mut n = 0;
        for c in contacts {
            if self
                .new_uac_leg(call, now, c, Some(user.to_string()), dtmf)
                .is_some()
            {
                n += 1;
            }
        }
        if n == 0 {
            debug!(call = call.key, %user, "no usable contact");
        }
        n
    }

    /// Creates a B leg towards `target` and sends the INVITE.
    fn new_uac_leg(
        &mut self,
        call: &mut Call,
        _now: Instant,
        target: ContactTarget,
        party: Option<String>,
        dtmf: Dtmf,
    ) -> Option<LegIdx> {
        let (purpose, gen) = match &call.routing {
            Some(r) => (r.purpose.clone(), r.gen),
            None => return None,
        };
        let fam = Family::of(target.flow.remote.ip());
        let (media_leg, bundle, offer, cdr_role) = match &purpose {
            Purpose::Initial => {
                let a_fam = call.legs[call.a].family();
                let bi = self.bundle_for(call, a_fam, fam);
                (MediaLeg::B, bi, call.offer.clone(), "callee")
            }
            Purpose::Transfer {
                keeper,
                transferor,
                family,
            } => {
                if *family != fam {
                    debug!(call = call.key, "transfer target of another family skipped");
                    return None;
                }
                let t = &call.legs[*transferor];
                (
                    t.media_leg,
                    t.bundle,
                    call.legs[*keeper].last_sdp.clone(),
                    "transfer_target",
                )
            }
        };
        let li = call.legs.len();
        let to_user = party.clone().unwrap_or_else(|| call.number.clone());
        let leg = Leg {
            role: Role::Uac,
            party,
            is_trunk: false,
            dtmf,
            te: false,
            peer: target.flow.peer(),
            local: target.flow.local,
            call_id: format!("{}@podpbx", token()),
            local_tag: token(),
            remote_tag: None,
            local_hdr: self.caller_name_addr(call),
            remote_hdr: format!("<sip:{}@{}>", sanitize(&to_user, 64), self.settings.domain),
            local_cseq: 0,
            remote_cseq: 0,
            remote_target: target.uri.clone(),
            route_set: Vec::new(),
            state: LegState::Calling,
            status: 0,
            cdr_role,
            invite: None,
            invite_req: None,
            invite_had_body: offer.is_some(),
            got_1xx: false,
            cancel_pending: false,
            cancelled: false,
            step_gen: gen,
            digest: None,
            auth_rounds: 0,
            resend: None,
            invite_tx: None,
            uas_invite: None,
            ok: None,
            last_ack: None,
            ack_deferred: None,
            reinvite_in: None,
            reinvite_out: None,
            media_leg,
            bundle,
            last_sdp: None,
            origin_id: call.key.wrapping_mul(1_000_003) ^ li as u64,
            origin_ver: 1,
            last_sent_sdp: None,
            dtmf_out: None,
            dtmf_queue: VecDeque::new(),
        };
        call.legs.push(leg);
        let body = match offer {
            Some(raw) => {
                let sdp = Sdp::parse(&raw).ok()?;
                if let Err(e) = self.ensure_sessions(call, bundle, &sdp) {
                    warn!(call = call.key, error = %e, "no media ports");
                    call.legs[li].state = LegState::Terminated;
                    call.legs[li].status = 503;
                    return None;
                }
                // The offerer's media (the caller, or the transferee) is known from its SDP.
                let offerer = match &purpose {
                    Purpose::Initial => call.a,
                    Purpose::Transfer { keeper, .. } => *keeper,
                };
                if purpose == Purpose::Initial {
                    self.learn_remote(call, offerer, bundle, &sdp, &raw, true);
                }
                match self.rewrite_for(call, li, bundle, &sdp) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(call = call.key, error = %e, "cannot rewrite SDP");
                        call.legs[li].state = LegState::Terminated;
                        return None;
                    }
                }
            }
            None => None,
        };
        let extra = vec![(
            "Allow".to_string(),
            "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY".to_string(),
        )];
        let body = body.map(|b| ("application/sdp".to_string(), b.into_bytes()));
        self.send_invite(call, li, target.uri, extra, body);
        self.track_ringing_leg(call, li);
        Some(li)
    }

    fn caller_name_addr(&self, call: &Call) -> String {
        let (display, user) = &call.from_id;
        let user = sanitize(user, 64);
        let user = if user.is_empty() {
            "anonymous".to_string()
        } else {
            user
        };
        if display.is_empty() {
            format!("<sip:{user}@{}>", self.settings.domain)
        } else {
            format!(
                "\"{}\" <sip:{user}@{}>",
                sanitize_display(display),
                self.settings.domain
            )
        }
    }

    /// Sends (or re-sends with credentials) the INVITE of UAC leg `li`.
    /// A new outgoing leg rings: part of the call's routing, found by its dialog id.
    fn track_ringing_leg(&mut self, call: &mut Call, li: LegIdx) {
        if let Some(r) = call.routing.as_mut() {
            r.legs.push(li);
        }
        let dialog = (
            call.legs[li].call_id.clone(),
            call.legs[li].local_tag.clone(),
        );
        self.by_dialog.insert(dialog, (call.key, li));
    }

    fn send_invite(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        uri: String,
        extra: Vec<(String, String)>,
        body: Option<(String, Vec<u8>)>,
    ) {
        let leg = &mut call.legs[li];
        leg.local_cseq += 1;
        leg.remote_target = uri.clone();
        let mut headers = extra.clone();
        if let Some(d) = leg.digest.as_mut() {
            let b = body.as_ref().map(|(_, b)| b.as_slice()).unwrap_or(&[]);
            if let Some(v) = d.authorization("INVITE", &uri, b) {
                let name = if leg.auth_rounds > 0 && leg.status == 401 {
                    "Authorization"
                } else {
                    "Proxy-Authorization"
                };
                headers.push((name.to_string(), v));
            }
        }
        leg.resend = Some((uri, extra, body.clone()));
        let cseq = leg.local_cseq;
        let (branch, data) = self.build_request(
            &call.legs[li],
            &Method::Invite,
            cseq,
            &headers,
            body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
        );
        call.legs[li].invite = Message::parse(data.clone(), Framing::Datagram).ok();
        let id = self.alloc_req();
        call.legs[li].invite_req = Some(id);
        self.by_req.insert(
            id,
            Pending {
                call: call.key,
                leg: li,
                kind: ReqKind::Invite,
                done: false,
                counted: true,
            },
        );
        call.pending += 1;
        self.out.push_back(Output::Request {
            id,
            method: Method::Invite,
            branch,
            data,
            peer: call.legs[li].peer,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn start_trunk(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        name: &str,
        strip: usize,
        prepend: &str,
        caller_id: Option<&str>,
    ) -> bool {
        let fail = |call: &mut Call| {
            if let Some(r) = call.routing.as_mut() {
                r.last_failure = Failure::new(StatusCode::SERVICE_UNAVAILABLE, Disposition::Failed);
            }
            false
        };
        let Some(trunk) = self.cfg.trunk(name).cloned() else {
            return fail(call);
        };
        if !dir.trunk_available(name) {
            info!(call = call.key, trunk = %name, "trunk not available: 503");
            return fail(call);
        }
        let Some(dest) = dir.trunk_destination(name) else {
            info!(call = call.key, trunk = %name, "trunk destination unknown: 503");
            return fail(call);
        };
        let transport = match trunk.transport {
            podpbx_config::Transport::Udp => Transport::Udp,
            podpbx_config::Transport::Tcp => Transport::Tcp,
            podpbx_config::Transport::Tls => Transport::Tls,
        };
        let Some(local) = dir.local_addr(transport, dest.ip()) else {
            return fail(call);
        };
        let number: String = call.number.chars().skip(strip).collect();
        let number = sanitize(&format!("{prepend}{number}"), 64);
        let host = trunk.host.to_string();
        let hostp = if trunk.port == 5060 {
            host.clone()
        } else {
            format!("{host}:{}", trunk.port)
        };
        let uri = format!("sip:{number}@{hostp}");
        let cid = caller_id
            .map(str::to_string)
            .or(trunk.caller_id.clone())
            .unwrap_or_else(|| call.from_id.1.clone());
        let flow = Flow {
            transport,
            local,
            remote: dest,
            conn: 0,
        };
        let li = match self.new_uac_leg_trunk(call, flow, &uri, &cid, &host, &number, &trunk) {
            Some(li) => li,
            None => return fail(call),
        };
        let gen = call.routing.as_ref().map_or(0, |r| r.gen);
        let _ = li;
        // A trunk call rings as long as the provider lets it (the caller can cancel); bound it.
        self.arm(
            now + Duration::from_secs(180),
            call.key,
            TimerKind::Ring(gen),
        );
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn new_uac_leg_trunk(
        &mut self,
        call: &mut Call,
        flow: Flow,
        uri: &str,
        caller_id: &str,
        host: &str,
        number: &str,
        trunk: &podpbx_config::Trunk,
    ) -> Option<LegIdx> {
        if matches!(
            call.routing.as_ref().map(|r| &r.purpose),
            Some(Purpose::Transfer { .. })
        ) {
            return None;
        }
        let a_fam = call.legs[call.a].family();
        let fam = Family::of(flow.remote.ip());
        let bi = self.bundle_for(call, a_fam, fam);
        let li = call.legs.len();
        let gen = call.routing.as_ref().map_or(0, |r| r.gen);
        let digest = match (trunk.auth_user(), trunk.password.as_ref()) {
            (Some(u), Some(p)) => Some(DigestClient::new(u, p.expose(), token().into_bytes())),
            _ => None,
        };
        call.legs.push(Leg {
            role: Role::Uac,
            party: Some(trunk.name.clone()),
            is_trunk: true,
            dtmf: Dtmf::Auto,
            te: false,
            peer: flow.peer(),
            local: flow.local,
            call_id: format!("{}@podpbx", token()),
            local_tag: token(),
            remote_tag: None,
            local_hdr: format!("<sip:{}@{host}>", sanitize(caller_id, 64)),
            remote_hdr: format!("<sip:{number}@{host}>"),
            local_cseq: 0,
            remote_cseq: 0,
            remote_target: uri.to_string(),
            route_set: Vec::new(),
            state: LegState::Calling,
            status: 0,
            cdr_role: "callee",
            invite: None,
            invite_req: None,
            invite_had_body: call.offer.is_some(),
            got_1xx: false,
            cancel_pending: false,
            cancelled: false,
            step_gen: gen,
            digest,
            auth_rounds: 0,
            resend: None,
            invite_tx: None,
            uas_invite: None,
            ok: None,
            last_ack: None,
            ack_deferred: None,
            reinvite_in: None,
            reinvite_out: None,
            media_leg: MediaLeg::B,
            bundle: bi,
            last_sdp: None,
            origin_id: call.key.wrapping_mul(1_000_003) ^ li as u64,
            origin_ver: 1,
            last_sent_sdp: None,
            dtmf_out: None,
            dtmf_queue: VecDeque::new(),
        });
        let body = match call.offer.clone() {
            Some(raw) => {
                let sdp = Sdp::parse(&raw).ok()?;
                self.ensure_sessions(call, bi, &sdp).ok()?;
                // The caller's media is known from its offer (as in `new_uac_leg`); without
                // this the relay has no destination for the provider's RTP towards the caller.
                let a = call.a;
                self.learn_remote(call, a, bi, &sdp, &raw, true);
                Some((
                    "application/sdp".to_string(),
                    self.rewrite_for(call, li, bi, &sdp).ok()?.into_bytes(),
                ))
            }
            None => None,
        };
        let extra = vec![(
            "Allow".to_string(),
            "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY".to_string(),
        )];
        self.send_invite(call, li, uri.to_string(), extra, body);
        self.track_ringing_leg(call, li);
        Some(li)
    }

    /// Nobody could be reached: the caller (or the transferor) learns why.
    fn routing_failed(&mut self, call: &mut Call, now: Instant, f: Failure) {
        let Failure {
            status: code,
            reason,
            disposition: d,
        } = f;
        let reason = reason.as_deref();
        let Some(r) = call.routing.take() else { return };
        for li in r.legs.clone() {
            self.send_cancel(call, li, now);
        }
        match r.purpose {
            Purpose::Initial => {
                info!(call = call.key, code = code.code(), "call failed");
                self.final_to_a(call, code, reason);
                call.disposition = Some(d);
                call.reason = if d == Disposition::Rejected {
                    "rejected".into()
                } else {
                    d.as_str().into()
                };
                call.phase = Phase::Ending;
                call.ended_at = Some(now);
                self.arm(
                    now + self.settings.timers.t1.saturating_mul(64),
                    call.key,
                    TimerKind::Cleanup,
                );
            }
            Purpose::Transfer {
                keeper, transferor, ..
            } => {
                info!(call = call.key, code = code.code(), "transfer failed");
                if call.legs[transferor].active() {
                    self.notify_refer(call, transferor, code, reason, true);
                    call.bridge = Some((keeper, transferor));
                    call.phase = Phase::Bridged;
                } else {
                    self.end_call(call, now, "system", "transfer_failed", None);
                }
            }
        }
    }

    fn notify_refer(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        code: StatusCode,
        reason: Option<&str>,
        terminated: bool,
    ) {
        let state = if terminated {
            "terminated;reason=noresource".to_string()
        } else {
            "active;expires=60".to_string()
        };
        let extra = vec![
            ("Event".to_string(), "refer".to_string()),
            ("Subscription-State".to_string(), state),
        ];
        let body = format!(
            "SIP/2.0 {} {}\r\n",
            code.code(),
            reason.unwrap_or(code.reason())
        );
        self.send_in_dialog(
            call,
            li,
            Method::Notify,
            &extra,
            Some(("message/sipfrag;version=2.0", body.as_bytes())),
            ReqKind::Notify,
        );
    }

    /// A leg of the current step failed finally with `code`.
    fn step_leg_done(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        li: LegIdx,
        code: StatusCode,
    ) {
        let Some(r) = call.routing.as_mut() else {
            return;
        };
        if call.legs[li].step_gen != r.gen || !r.legs.contains(&li) {
            return;
        }
        r.codes.push(code);
        if r.legs
            .iter()
            .any(|l| call.legs[*l].ringing() && !call.legs[*l].cancelled)
        {
            return;
        }
        // Sequential: try the next user.
        if !r.seq.is_empty() {
            r.legs.clear();
            if self.ring_next_seq(call, now, dir) {
                return;
            }
        }
        let Some(r) = call.routing.as_mut() else {
            return;
        };
        let trunk = call.legs[li].is_trunk;
        let codes = r.codes.clone();
        let busy = |c: &StatusCode| matches!(c.code(), 486 | 600);
        let outcome = if trunk {
            match code.code() {
                401 | 407 | 408 | 500..=599 => {
                    Failure::new(StatusCode::SERVICE_UNAVAILABLE, Disposition::Failed)
                }
                _ => Failure::new(code, disposition_for(code)),
            }
        } else if !codes.is_empty() && codes.iter().all(busy) {
            Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
        } else if r.timed_out {
            Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer)
        } else if let Some(c) = codes.iter().find(|c| c.is_global_failure()) {
            Failure::new(*c, disposition_for(*c))
        } else if codes.iter().any(busy) {
            Failure::new(StatusCode::BUSY_HERE, Disposition::Busy)
        } else {
            Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer)
        };
        r.last_failure = outcome;
        self.next_step(call, now, dir);
    }

    fn ring_timeout(&mut self, call: &mut Call, now: Instant, dir: &dyn Directory, gen: u32) {
        let Some(r) = call.routing.as_mut() else {
            return;
        };
        if r.gen != gen {
            return;
        }
        r.timed_out = true;
        let legs = r.legs.clone();
        debug!(call = call.key, "ring timeout");
        for li in &legs {
            self.send_cancel(call, *li, now);
        }
        let Some(r) = call.routing.as_mut() else {
            return;
        };
        if !r.seq.is_empty() {
            r.legs.clear();
            if self.ring_next_seq(call, now, dir) {
                return;
            }
        }
        if let Some(r) = call.routing.as_mut() {
            r.last_failure =
                Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer);
        }
        self.next_step(call, now, dir);
    }

    // ------------------------------------------------------------------------------------
    // Responses to our requests
    // ------------------------------------------------------------------------------------

    /// A response to request `id`.
    pub fn handle_response(&mut self, now: Instant, id: ReqId, msg: &Message, dir: &dyn Directory) {
        let Some(p) = self.by_req.get_mut(&id) else {
            return;
        };
        // The transaction layer drops responses outside 100..=699.
        let Some(status) = msg.status_code() else {
            return;
        };
        let (key, li, kind) = (p.call, p.leg, p.kind.clone());
        let first_final = status.is_final() && !p.done;
        let counted = p.counted;
        if status.is_final() {
            p.done = true;
        }
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        if first_final && counted {
            call.pending = call.pending.saturating_sub(1);
        }
        match kind {
            ReqKind::Invite => {
                self.invite_response(&mut call, now, dir, li, id, msg, status, first_final)
            }
            ReqKind::Relay { from, tx, req, src } => self.relay_response(
                &mut call,
                now,
                li,
                from,
                tx,
                &req,
                src,
                msg,
                status,
                first_final,
            ),
            ReqKind::DtmfInfo if first_final => {
                call.legs[li].dtmf_out = None;
                self.next_dtmf_info(&mut call, li);
            }
            ReqKind::Bye | ReqKind::Cancel | ReqKind::Notify | ReqKind::DtmfInfo => {}
        }
        if status.is_final()
            && !matches!(self.by_req.get(&id).map(|p| &p.kind), Some(ReqKind::Invite))
        {
            self.by_req.remove(&id);
        }
        self.put_back(call, now);
    }

    /// Our request `id` failed without a response (Timer B/F, transport error, table full).
    pub fn request_failed(&mut self, now: Instant, id: ReqId, dir: &dyn Directory) {
        let Some(p) = self.by_req.remove(&id) else {
            return;
        };
        if p.done {
            return;
        }
        let Some(mut call) = self.calls.remove(&p.call) else {
            return;
        };
        if p.counted {
            call.pending = call.pending.saturating_sub(1);
        }
        let li = p.leg;
        match p.kind {
            ReqKind::Invite if call.legs[li].ringing() => {
                call.legs[li].state = LegState::Terminated;
                call.legs[li].status = 408;
                self.step_leg_done(&mut call, now, dir, li, StatusCode::REQUEST_TIMEOUT);
            }
            ReqKind::Relay { from, tx, req, src } => {
                let tag = call.legs[from].local_tag.clone();
                self.respond(
                    tx,
                    &req,
                    src,
                    StatusCode::REQUEST_TIMEOUT,
                    None,
                    Some(&tag),
                    &[],
                    None,
                );
                if req.method() == Some(&Method::Invite) {
                    call.legs[from].reinvite_in = None;
                    call.legs[li].reinvite_out = None;
                }
            }
            ReqKind::Bye => call.legs[li].state = LegState::Terminated,
            ReqKind::DtmfInfo => {
                // The peer does not answer: do not queue more INFOs behind a dead one.
                call.legs[li].dtmf_out = None;
                call.legs[li].dtmf_queue.clear();
            }
            _ => {}
        }
        self.put_back(call, now);
    }

    fn update_dialog_from_response(leg: &mut Leg, msg: &Message) {
        if let Ok(to) = msg.to_hdr() {
            if let Some(t) = to.tag() {
                if leg.remote_tag.is_none() {
                    leg.remote_tag = Some(str_of(&t));
                    if let Some(v) = msg.header(HeaderName::To) {
                        leg.remote_hdr = str_of(&v);
                    }
                }
            }
        }
        if let Some(Ok(c)) = msg.contact_iter().next() {
            leg.remote_target = str_of(&c.addr.uri.raw);
        }
        // RFC 3261 §12.1.2: the UAC's route set is the Record-Route values in reverse order,
        // value by value (a proxy may put several in one comma-separated line).
        let rr: Vec<String> = msg
            .record_route_iter()
            .map_while(Result::ok)
            .map(|v| str_of(&v.raw))
            .collect();
        if !rr.is_empty() {
            leg.route_set = rr.into_iter().rev().collect();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invite_response(
        &mut self,
        call: &mut Call,
        now: Instant,
        dir: &dyn Directory,
        li: LegIdx,
        id: ReqId,
        msg: &Message,
        status: StatusCode,
        first_final: bool,
    ) {
        if call.legs[li].invite_req != Some(id) {
            return;
        }
        match status.code() {
            100 => {}
            101..=199 => {
                let leg = &mut call.legs[li];
                if leg.state == LegState::Calling {
                    leg.state = LegState::Early;
                }
                leg.got_1xx = true;
                Self::update_dialog_from_response(leg, msg);
                if leg.cancel_pending {
                    leg.cancel_pending = false;
                    self.send_cancel(call, li, now);
                    return;
                }
                if leg.cancelled {
                    return;
                }
                let current = call
                    .routing
                    .as_ref()
                    .is_some_and(|r| r.purpose == Purpose::Initial && r.legs.contains(&li));
                if !current {
                    return;
                }
                let a = call.a;
                let Some((req, src)) = call.legs[a].uas_invite.clone() else {
                    return;
                };
                let Some(tx) = call.legs[a].invite_tx else {
                    return;
                };
                let tag = call.legs[a].local_tag.clone();
                let contact = call.legs[a].contact();
                if is_sdp(msg) {
                    let raw = msg.body.clone();
                    match self.relay_sdp(call, li, a, &raw, call.offer.is_none()) {
                        Ok(body) => {
                            self.respond(
                                tx,
                                &req,
                                src,
                                StatusCode::SESSION_PROGRESS,
                                None,
                                Some(&tag),
                                &[("Contact", contact)],
                                Some(("application/sdp", body.as_bytes())),
                            );
                        }
                        Err(e) => debug!(error = %e, "early media SDP not relayed"),
                    }
                } else if status == StatusCode::RINGING || status == StatusCode::SESSION_PROGRESS {
                    self.respond(
                        tx,
                        &req,
                        src,
                        status,
                        None,
                        Some(&tag),
                        &[("Contact", contact)],
                        None,
                    );
                }
            }
            200..=299 => {
                Self::update_dialog_from_response(&mut call.legs[li], msg);
                let cseq = msg
                    .cseq()
                    .map(|c| c.seq)
                    .unwrap_or(call.legs[li].local_cseq);
                if !first_final {
                    // A retransmitted 2xx: our ACK was lost.
                    if let Some((c, data)) = call.legs[li].last_ack.clone() {
                        if c == cseq {
                            self.out.push_back(Output::Stateless {
                                peer: call.legs[li].peer,
                                data,
                            });
                        }
                    }
                    return;
                }
                if let Some(d) = call.legs[li].digest.as_mut() {
                    d.on_success();
                }
                let eligible = call.phase == Phase::Routing
                    && !call.legs[li].cancelled
                    && call
                        .routing
                        .as_ref()
                        .is_some_and(|r| r.legs.contains(&li) && r.gen == call.legs[li].step_gen);
                call.legs[li].status = status.code();
                if !eligible {
                    // A 2xx crossing our CANCEL, or a second fork answering: ACK it, then BYE.
                    debug!(call = call.key, leg = li, "late 2xx: ACK and BYE");
                    call.legs[li].state = LegState::Answered;
                    self.send_ack(call, li, cseq, None);
                    call.legs[li].state = LegState::Confirmed;
                    self.send_bye(call, li);
                    return;
                }
                call.legs[li].state = LegState::Confirmed;
                self.on_answer(call, now, li, msg, cseq);
            }
            _ => {
                if !first_final {
                    return;
                }
                let leg = &mut call.legs[li];
                if status.is_challenge()
                    && leg.digest.is_some()
                    && leg.auth_rounds < MAX_AUTH_ROUNDS
                    && !leg.cancelled
                    && !leg.cancel_pending
                {
                    let kind = if status == StatusCode::UNAUTHORIZED {
                        AuthKind::Www
                    } else {
                        AuthKind::Proxy
                    };
                    let values: Vec<Bytes> =
                        msg.other_header_values(kind.challenge_header()).collect();
                    let ok = leg
                        .digest
                        .as_mut()
                        .is_some_and(|d| d.on_challenge(&values).is_ok());
                    if ok {
                        leg.auth_rounds += 1;
                        leg.status = status.code();
                        if let Some((uri, extra, body)) = leg.resend.clone() {
                            self.send_invite(call, li, uri, extra, body);
                            return;
                        }
                    }
                }
                let leg = &mut call.legs[li];
                leg.state = LegState::Terminated;
                leg.status = status.code();
                debug!(
                    call = call.key,
                    leg = li,
                    status = status.code(),
                    "leg failed"
                );
                self.step_leg_done(call, now, dir, li, status);
            }
        }
    }

    /// Leg `li` answered: it wins.
    fn on_answer(&mut self, call: &mut Call, now: Instant, li: LegIdx, msg: &Message, cseq: u32) {
        let Some(r) = call.routing.take() else { return };
        for other in r.legs.iter().copied().filter(|l| *l != li) {
            self.send_cancel(call, other, now);
        }
        // Ringing legs of earlier steps too.
        for other in 0..call.legs.len() {
            if other != li && call.legs[other].ringing() {
                self.send_cancel(call, other, now);
            }
        }
        let bi = call.legs[li].bundle;
        match r.purpose {
            Purpose::Initial => {
                let a = call.a;
                call.legs[a].bundle = bi;
                for other in 0..call.bundles.len() {
                    if other != bi {
                        self.release_bundle(call, other);
                    }
                }
                let mut body = None;
                if is_sdp(msg) {
                    let raw = msg.body.clone();
                    match self.relay_sdp(call, li, a, &raw, call.offer.is_none()) {
                        Ok(b) => body = Some(b),
                        Err(e) => warn!(call = call.key, error = %e, "answer SDP not usable"),
                    }
                }
                if call.legs[li].invite_had_body {
                    self.send_ack(call, li, cseq, None);
                } else {
                    call.legs[li].ack_deferred = Some(cseq);
                }
                let Some(tx) = call.legs[a].invite_tx.take() else {
                    return;
                };
                let Some((req, src)) = call.legs[a].uas_invite.clone() else {
                    return;
                };
                let tag = call.legs[a].local_tag.clone();
                let contact = call.legs[a].contact();
                let hdrs = [
                    ("Contact", contact),
                    (
                        "Allow",
                        "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY"
                            .to_string(),
                    ),
                ];
                let data = self.respond(
                    tx,
                    &req,
                    src,
                    StatusCode::OK,
                    None,
                    Some(&tag),
                    &hdrs,
                    body.as_deref().map(|b| ("application/sdp", b.as_bytes())),
                );
                let acseq = req.cseq().map(|c| c.seq).unwrap_or(1);
                let t1 = self.settings.timers.t1;
                call.legs[a].ok = Some(OkRetx {
                    data,
                    cseq: acseq,
                    interval: t1,
                    started: now,
                });
                call.legs[a].state = LegState::Answered;
                call.legs[a].status = 200;
                call.a_status = 200;
                self.arm(now + t1, call.key, TimerKind::Retx2xx(a));
                call.bridge = Some((a, li));
                call.phase = Phase::Bridged;
                call.answered_at = Some(now);
                call.answered_by = call.legs[li].party.clone();
                info!(call = call.key, by = ?call.answered_by, "answered");
                if let Some(max) = self.cfg.calls.max_duration.filter(|d| !d.is_zero()) {
                    self.arm(now + max, call.key, TimerKind::MaxDuration);
                }
            }
            Purpose::Transfer {
                keeper, transferor, ..
            } => {
                if is_sdp(msg) {
                    if let Ok(sdp) = Sdp::parse(&msg.body) {
                        let raw = msg.body.clone();
                        self.learn_remote(call, li, bi, &sdp, &raw, false);
                    }
                }
                self.send_ack(call, li, cseq, None);
                call.bridge = Some((keeper, li));
                call.phase = Phase::Bridged;
                call.transferred_to = Some(call.number.clone());
                info!(call = call.key, to = %call.number, "transfer completed");
                if call.legs[transferor].active() {
                    self.notify_refer(call, transferor, StatusCode::OK, None, true);
                    self.send_bye(call, transferor);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_response(
        &mut self,
        call: &mut Call,
        _now: Instant,
        to: LegIdx,
        from: LegIdx,
        tx: ServerTxId,
        req: &Message,
        src: SocketAddr,
        msg: &Message,
        status: StatusCode,
        first_final: bool,
    ) {
        if status == StatusCode::TRYING {
            return;
        }
        let is_invite = req.method() == Some(&Method::Invite);
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        if status.is_success() && !first_final {
            if let Some((c, data)) = call.legs[to].last_ack.clone() {
                if c == cseq && is_invite {
                    self.out.push_back(Output::Stateless {
                        peer: call.legs[to].peer,
                        data,
                    });
                }
            }
            return;
        }
        if status.is_provisional() && !is_invite {
            return;
        }
        let mut headers: Vec<(&str, String)> = Vec::new();
        let mut body: Option<(String, Vec<u8>)> = None;
        let offer_was_in_request = is_sdp(req);
        if is_sdp(msg) {
            let raw = msg.body.clone();
            match self.relay_sdp(call, to, from, &raw, !offer_was_in_request) {
                Ok(b) => body = Some(("application/sdp".into(), b.into_bytes())),
                Err(e) => debug!(error = %e, "SDP in response not relayed"),
            }
        } else if !msg.body.is_empty() {
            let ct = msg
                .header(HeaderName::ContentType)
                .map(|v| str_of(&v))
                .unwrap_or_else(|| "application/octet-stream".into());
            body = Some((ct, msg.body.to_vec()));
        }
        if is_invite || req.method() == Some(&Method::Update) {
            headers.push(("Contact", call.legs[from].contact()));
        }
        for h in ["Allow", "Accept", "Supported"] {
            if let Some(v) = msg.other_header(h) {
                headers.push((h, str_of(&v)));
            }
        }
        // The peer's own reason phrase goes through (it may say more than the standard one).
        let reason = msg.reason_phrase().filter(|r| !r.is_empty()).map(str_of);
        let tag = call.legs[from].local_tag.clone();
        let data = self.respond(
            tx,
            req,
            src,
            status,
            reason.as_deref(),
            Some(&tag),
            &headers,
            body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
        );
        if status.is_final() && is_invite {
            call.legs[from].reinvite_in = None;
            call.legs[to].reinvite_out = None;
            if status.is_success() {
                if offer_was_in_request {
                    self.send_ack(call, to, cseq, None);
                } else {
                    call.legs[to].ack_deferred = Some(cseq);
                }
                let rcseq = req.cseq().map(|c| c.seq).unwrap_or(0);
                let t1 = self.settings.timers.t1;
                call.legs[from].ok = Some(OkRetx {
                    data,
                    cseq: rcseq,
                    interval: t1,
                    started: _now,
                });
                self.arm(_now + t1, call.key, TimerKind::Retx2xx(from));
            }
        }
        if (status == StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST
            || status == StatusCode::REQUEST_TIMEOUT)
            && call.phase == Phase::Bridged
        {
            self.end_call(call, _now, "system", "dialog_gone", None);
        }
    }

    // ------------------------------------------------------------------------------------
    // Requests from the legs
    // ------------------------------------------------------------------------------------

    /// CANCEL matched the A leg's INVITE server transaction `invite_tx` (the shell already
    /// answered the CANCEL itself with 200).
    pub fn handle_cancel(&mut self, now: Instant, invite_tx: ServerTxId) {
        let Some(key) = self.by_invite_tx.get(&invite_tx).copied() else {
            return;
        };
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        if call.phase == Phase::Routing && call.legs[call.a].invite_tx == Some(invite_tx) {
            info!(call = key, "caller cancelled");
            call.routing = None;
            for li in 0..call.legs.len() {
                self.send_cancel(&mut call, li, now);
            }
            self.final_to_a(&mut call, StatusCode::REQUEST_TERMINATED, None);
            call.disposition = Some(Disposition::Cancelled);
            call.hangup_by = Some("caller".into());
            call.reason = "cancel".into();
            call.phase = Phase::Ending;
            call.ended_at = Some(now);
            self.arm(
                now + self.settings.timers.t1.saturating_mul(64),
                key,
                TimerKind::Cleanup,
            );
        }
        self.put_back(call, now);
    }

    /// An ACK for a 2xx (no transaction); false if it belongs to no call.
    pub fn handle_ack(&mut self, now: Instant, req: &Message) -> bool {
        let Some((key, li)) = self.dialog_of(req) else {
            return false;
        };
        let Some(mut call) = self.calls.remove(&key) else {
            return false;
        };
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        if call.legs[li].ok.as_ref().is_some_and(|o| o.cseq == cseq) {
            call.legs[li].ok = None;
            if call.legs[li].state == LegState::Answered {
                call.legs[li].state = LegState::Confirmed;
            }
            // A delayed offer: the answer comes in this ACK.
            let partner = call.bridge.and_then(|(x, y)| {
                if x == li {
                    Some(y)
                } else if y == li {
                    Some(x)
                } else {
                    None
                }
            });
            if let Some(p) = partner {
                if let Some(c) = call.legs[p].ack_deferred.take() {
                    let body = if is_sdp(req) {
                        self.relay_sdp(&mut call, li, p, &req.body.clone(), false)
                            .ok()
                    } else {
                        None
                    };
                    self.send_ack(
                        &mut call,
                        p,
                        c,
                        body.as_deref().map(|b| ("application/sdp", b.as_bytes())),
                    );
                }
                // DTMF that arrived while a dialog waited for an ACK.
                self.next_dtmf_info(&mut call, p);
            }
            self.next_dtmf_info(&mut call, li);
        }
        self.put_back(call, now);
        true
    }

    /// A request with a To tag (in-dialog; not ACK, not CANCEL). False if no dialog matches:
    /// the shell answers 481.
    pub fn handle_in_dialog(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Message,
        flow: Flow,
        dir: &dyn Directory,
    ) -> bool {
        let Some((key, li)) = self.dialog_of(req) else {
            return false;
        };
        let Some(mut call) = self.calls.remove(&key) else {
            return false;
        };
        let src = flow.remote;
        let method = req.method().cloned().unwrap_or(Method::Other(Bytes::new()));
        let tag = call.legs[li].local_tag.clone();
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        if !call.legs[li].active() {
            self.respond(
                tx,
                req,
                src,
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                None,
                None,
                &[],
                None,
            );
            self.put_back(call, now);
            return true;
        }
        if call.legs[li].remote_cseq != 0
            && cseq <= call.legs[li].remote_cseq
            && call.legs[li].role == Role::Uas
        {
            self.respond(
                tx,
                req,
                src,
                StatusCode::SERVER_INTERNAL_ERROR,
                None,
                None,
                &[],
                None,
            );
            self.put_back(call, now);
            return true;
        }
        call.legs[li].remote_cseq = call.legs[li].remote_cseq.max(cseq);
        let partner = match call.bridge {
            Some((x, y)) if x == li => Some(y),
            Some((x, y)) if y == li => Some(x),
            _ => None,
        };
        match method {
            Method::Bye => {
                self.respond(tx, req, src, StatusCode::OK, None, None, &[], None);
                call.legs[li].state = LegState::Terminated;
                call.legs[li].ok = None;
                let transferor = matches!(call.routing.as_ref().map(|r| &r.purpose), Some(Purpose::Transfer { transferor, .. }) if *transferor == li);
                if transferor || partner.is_none() && call.phase == Phase::Bridged {
                    debug!(call = key, "transferor left");
                } else {
                    let by = if li == call.a { "caller" } else { "callee" };
                    self.end_call(&mut call, now, by, "bye", Some(li));
                }
            }
            Method::Refer => self.handle_refer(&mut call, now, tx, req, src, li, partner, dir),
            Method::Info if partner.is_some() && self.info_dtmf(&mut call, li, partner, req) => {
                self.respond(tx, req, src, StatusCode::OK, None, None, &[], None);
            }
            m => match partner {
                Some(p) => {
                    let glare = m == Method::Invite
                        && (call.legs[li].reinvite_in.is_some()
                            || call.legs[li].reinvite_out.is_some()
                            || call.legs[p].reinvite_out.is_some()
                            || call.legs[p].reinvite_in.is_some());
                    if glare {
                        self.respond(
                            tx,
                            req,
                            src,
                            StatusCode::REQUEST_PENDING,
                            None,
                            None,
                            &[],
                            None,
                        );
                    } else {
                        if m == Method::Invite {
                            self.respond(tx, req, src, StatusCode::TRYING, None, None, &[], None);
                        }
                        self.relay_request(&mut call, li, p, tx, req, src, m);
                    }
                }
                None => {
                    let (code, reason) = match m {
                        Method::Options | Method::Info => (StatusCode::OK, None),
                        Method::Invite | Method::Update => (StatusCode::REQUEST_PENDING, None),
                        _ => (StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST, None),
                    };
                    let _ = &tag;
                    self.respond(tx, req, src, code, reason, None, &[], None);
                }
            },
        }
        self.put_back(call, now);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_request(
        &mut self,
        call: &mut Call,
        from: LegIdx,
        to: LegIdx,
        tx: ServerTxId,
        req: &Message,
        src: SocketAddr,
        m: Method,
    ) {
        let mut body = None;
        if is_sdp(req) {
            let raw = req.body.clone();
            match self.relay_sdp(call, from, to, &raw, true) {
                Ok(b) => body = Some(("application/sdp".to_string(), b.into_bytes())),
                Err(e) => {
                    debug!(error = %e, "bad SDP in re-offer: 488");
                    let tag = call.legs[from].local_tag.clone();
                    self.respond(
                        tx,
                        req,
                        src,
                        StatusCode::NOT_ACCEPTABLE_HERE,
                        None,
                        Some(&tag),
                        &[],
                        None,
                    );
                    return;
                }
            }
        } else if !req.body.is_empty() {
            let ct = req
                .header(HeaderName::ContentType)
                .map(|v| str_of(&v))
                .unwrap_or_else(|| "application/octet-stream".into());
            body = Some((ct, req.body.to_vec()));
        }
        let mut extra = Vec::new();
        for h in [
            "Event",
            "Subscription-State",
            "Info-Package",
            "Accept",
            "Session-Expires",
            "Min-SE",
        ] {
            if let Some(v) = req.other_header(h) {
                extra.push((h.to_string(), str_of(&v)));
            }
        }
        let is_invite = m == Method::Invite;
        let id = self.send_in_dialog(
            call,
            to,
            m,
            &extra,
            body.as_ref().map(|(c, b)| (c.as_str(), b.as_slice())),
            ReqKind::Relay {
                from,
                tx,
                req: Box::new(req.clone()),
                src,
            },
        );
        if is_invite {
            call.legs[from].reinvite_in = Some(tx);
            call.legs[to].reinvite_out = Some(id);
        }
    }

    /// INFO carrying a DTMF digit: inject it as RFC 4733 towards the partner when that user
    /// wants RFC 4733. True if consumed.
    fn info_dtmf(
        &mut self,
        call: &mut Call,
        _li: LegIdx,
        partner: Option<LegIdx>,
        req: &Message,
    ) -> bool {
        let Some(p) = partner else { return false };
        let Some(ct) = req.content_type() else {
            return false;
        };
        let Some((digit, ms)) = parse_dtmf_info(&ct, &req.body) else {
            return false;
        };
        let want = match call.legs[p].dtmf {
            Dtmf::Rfc4733 => true,
            Dtmf::Auto => call.legs[p].te,
            Dtmf::Info => false,
        };
        if !want {
            return false;
        }
        let bi = call.legs[p].bundle;
        let side = call.legs[p].media_leg;
        let Some(id) = call
            .bundles
            .get(bi)
            .and_then(|b| b.ids.iter().flatten().next().copied())
        else {
            return false;
        };
        let ok = self
            .media
            .inject_dtmf(id, side, digit, Duration::from_millis(ms));
        debug!(call = call.key, %digit, ok, "INFO DTMF -> RFC 4733");
        ok
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_refer(
        &mut self,
        call: &mut Call,
        now: Instant,
        tx: ServerTxId,
        req: &Message,
        src: SocketAddr,
        li: LegIdx,
        partner: Option<LegIdx>,
        dir: &dyn Directory,
    ) {
        let Some(keeper) =
            partner.filter(|_| call.phase == Phase::Bridged && call.routing.is_none())
        else {
            self.respond(tx, req, src, StatusCode::FORBIDDEN, None, None, &[], None);
            return;
        };
        let Some(target) = req
            .header(HeaderName::ReferTo)
            .and_then(|v| NameAddr::parse(&v).ok())
        else {
            self.respond(
                tx,
                req,
                src,
                StatusCode::BAD_REQUEST,
                Some("Bad Refer-To"),
                None,
                &[],
                None,
            );
            return;
        };
        if target
            .uri
            .headers
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"replaces"))
        {
            self.respond(
                tx,
                req,
                src,
                StatusCode::NOT_IMPLEMENTED,
                Some("Attended Transfer Not Implemented"),
                None,
                &[],
                None,
            );
            return;
        }
        let number = target
            .uri
            .user
            .as_ref()
            .map(|u| unescape_user(u))
            .unwrap_or_default();
        let contact = call.legs[li].contact();
        self.respond(
            tx,
            req,
            src,
            StatusCode::ACCEPTED,
            None,
            None,
            &[("Contact", contact)],
            None,
        );
        self.notify_refer(call, li, StatusCode::TRYING, None, false);
        let cfg = self.cfg.clone();
        let keeper_party = call.legs[keeper].party.clone().unwrap_or_default();
        let origin = if call.legs[keeper].is_trunk {
            Origin::Trunk {
                trunk: &keeper_party,
                did: None,
            }
        } else {
            Origin::Local {
                user: &keeper_party,
            }
        };
        info!(call = call.key, to = %number, "blind transfer");
        let Some(rule) = cfg.route(&origin, &number) else {
            self.notify_refer(call, li, StatusCode::NOT_FOUND, None, true);
            return;
        };
        call.number = number;
        call.from_id = match &call.legs[keeper].party {
            Some(p) if !call.legs[keeper].is_trunk => (
                cfg.user(p)
                    .and_then(|u| u.display_name.clone())
                    .unwrap_or_default(),
                p.clone(),
            ),
            _ => call.from_id.clone(),
        };
        call.bridge = None;
        call.phase = Phase::Routing;
        call.routing = Some(Routing {
            purpose: Purpose::Transfer {
                keeper,
                transferor: li,
                family: call.legs[li].family(),
            },
            steps: rule.steps().cloned().collect(),
            gen: 100,
            seq: VecDeque::new(),
            seq_timeout: Duration::ZERO,
            legs: Vec::new(),
            codes: Vec::new(),
            timed_out: false,
            last_failure: Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer),
        });
        self.next_step(call, now, dir);
    }

    // ------------------------------------------------------------------------------------
    // Ending
    // ------------------------------------------------------------------------------------

    /// Ends the call: BYE every confirmed leg except `except`, CANCEL ringing ones.
    fn end_call(
        &mut self,
        call: &mut Call,
        now: Instant,
        by: &str,
        reason: &str,
        except: Option<LegIdx>,
    ) {
        if call.phase == Phase::Ending {
            return;
        }
        info!(call = call.key, by, reason, "call ends");
        call.routing = None;
        if call.legs[call.a].invite_tx.is_some() {
            self.final_to_a(
                call,
                if reason == "shutdown" {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::REQUEST_TERMINATED
                },
                None,
            );
        }
        for li in 0..call.legs.len() {
            if Some(li) == except {
                continue;
            }
            if call.legs[li].ringing() {
                self.send_cancel(call, li, now);
            } else if matches!(
                call.legs[li].state,
                LegState::Answered | LegState::Confirmed
            ) {
                self.send_bye(call, li);
            }
        }
        if call.disposition.is_none() {
            call.disposition = Some(if call.answered_at.is_some() {
                Disposition::Answered
            } else if reason == "shutdown" {
                Disposition::Failed
            } else {
                Disposition::Cancelled
            });
        }
        call.hangup_by = Some(by.to_string());
        call.reason = reason.to_string();
        call.phase = Phase::Ending;
        call.ended_at = Some(now);
        self.arm(
            now + self.settings.timers.t1.saturating_mul(64),
            call.key,
            TimerKind::Cleanup,
        );
    }

    fn finish(&mut self, call: &mut Call, now: Instant) {
        let end = call.ended_at.unwrap_or(now);
        let wall = |t: Instant| call.wall0 + t.saturating_duration_since(call.start);
        let mut legs = Vec::new();
        for l in &call.legs {
            let bi = if l.bundle == NO_BUNDLE {
                call.bundles
                    .iter()
                    .position(|b| !b.ids.is_empty())
                    .unwrap_or(NO_BUNDLE)
            } else {
                l.bundle
            };
            let mut m = MediaCounters::default();
            if let Some(b) = call.bundles.get(bi) {
                for id in b.ids.iter().flatten() {
                    let s = self.media.stats(*id, l.media_leg);
                    m.rtp_packets += s.rtp_packets;
                    m.rtp_bytes += s.rtp_bytes;
                    m.rtcp_packets += s.rtcp_packets;
                    m.forwarded_packets += s.forwarded_packets;
                    m.lost_packets += s.lost_packets;
                    m.jitter_ms = m.jitter_ms.max(s.jitter.as_millis() as u64);
                    if m.local.is_none() {
                        m.local = self.media.local(*id, l.media_leg).map(|a| a.to_string());
                    }
                }
            }
            let role = if l.role == Role::Uac
                && Some(l.party.as_deref()) != Some(call.answered_by.as_deref())
                && l.cdr_role == "callee"
            {
                "fork"
            } else {
                l.cdr_role
            };
            legs.push(CdrLeg {
                role,
                party: l.party.clone(),
                remote: l.peer.addr.to_string(),
                local: l.local.to_string(),
                transport: l.peer.transport.param(),
                call_id: l.call_id.clone(),
                status: l.status,
                media: m,
            });
        }
        let caller = match &call.caller {
            Caller::User(u) => u.clone(),
            Caller::Trunk { .. } => call.from_id.1.clone(),
        };
        let disposition = call.disposition.unwrap_or(Disposition::Failed);
        let cdr = Cdr {
            id: call.key,
            start: rfc3339(call.wall0),
            answer: call.answered_at.map(|t| rfc3339(wall(t))),
            end: rfc3339(wall(end)),
            duration_secs: end.saturating_duration_since(call.start).as_secs_f64(),
            billsec: call
                .answered_at
                .map_or(0.0, |a| end.saturating_duration_since(a).as_secs_f64()),
            caller,
            trunk: match &call.caller {
                Caller::Trunk { name, .. } => Some(name.clone()),
                _ => None,
            },
            callee: match &call.transferred_to {
                Some(_) => call
                    .legs
                    .iter()
                    .find(|l| l.cdr_role == "callee")
                    .map(|_| call.number.clone())
                    .unwrap_or_default(),
                None => call.number.clone(),
            },
            answered_by: call.answered_by.clone(),
            rule: call.rule.clone(),
            disposition,
            status: if call.a_status == 0 {
                487
            } else {
                call.a_status
            },
            hangup_by: call.hangup_by.clone(),
            reason: if call.reason.is_empty() {
                disposition.as_str().to_string()
            } else {
                call.reason.clone()
            },
            transferred_to: call.transferred_to.clone(),
            legs,
        };
        for bi in 0..call.bundles.len() {
            self.release_bundle(call, bi);
        }
        let key = call.key;
        let abandon: Vec<ReqId> = self
            .by_req
            .iter()
            .filter(|(_, p)| p.call == key && !p.done)
            .map(|(id, _)| *id)
            .collect();
        for id in abandon {
            self.out.push_back(Output::Abandon { id });
        }
        self.by_req.retain(|_, p| p.call != key);
        self.by_dialog.retain(|_, (k, _)| *k != key);
        self.by_invite_tx.retain(|_, k| *k != key);
        self.timers.retain(|_, (k, _)| *k != key);
        info!(
            call = key,
            disposition = disposition.as_str(),
            "call finished"
        );
        self.out.push_back(Output::Cdr(Box::new(cdr)));
    }

    // ------------------------------------------------------------------------------------
    // Time and media events
    // ------------------------------------------------------------------------------------

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, dir: &dyn Directory) {
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            let Some((key, kind)) = self.timers.remove(&(at, seq)) else {
                break;
            };
            let Some(mut call) = self.calls.remove(&key) else {
                continue;
            };
            match kind {
                TimerKind::Ring(gen) => self.ring_timeout(&mut call, now, dir, gen),
                TimerKind::Retx2xx(li) => {
                    let t = self.settings.timers;
                    let peer = call.legs[li].peer;
                    if let Some(ok) = call.legs[li].ok.as_mut() {
                        if now.saturating_duration_since(ok.started) >= t.t1.saturating_mul(64) {
                            call.legs[li].ok = None;
                            warn!(call = key, "no ACK for our 2xx: ending the call");
                            self.end_call(&mut call, now, "system", "no_ack", None);
                        } else {
                            ok.interval = (ok.interval * 2).min(t.t2);
                            let next = now + ok.interval;
                            if peer.transport == Transport::Udp {
                                let data = ok.data.clone();
                                self.out.push_back(Output::Stateless { peer, data });
                            }
                            self.arm(next, key, TimerKind::Retx2xx(li));
                        }
                    }
                }
                TimerKind::MaxDuration => {
                    if call.phase == Phase::Bridged {
                        self.end_call(&mut call, now, "system", "max_duration", None);
                    }
                }
                TimerKind::CancelGuard(li) => {
                    if call.legs[li].ringing() {
                        call.legs[li].state = LegState::Terminated;
                        call.legs[li].status = 487;
                        if let Some(id) = call.legs[li].invite_req {
                            if self.by_req.get(&id).is_some_and(|p| !p.done) {
                                self.by_req.remove(&id);
                                call.pending = call.pending.saturating_sub(1);
                                self.out.push_back(Output::Abandon { id });
                            }
                        }
                    }
                }
                TimerKind::Cleanup => {
                    self.finish(&mut call, now);
                    continue;
                }
            }
            self.put_back(call, now);
        }
    }

    /// The relay saw no media on a session for the media timeout: hang up.
    pub fn media_timeout(&mut self, now: Instant, media: MediaId) {
        let Some(key) = self.by_media.get(&media).copied() else {
            return;
        };
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        if call.phase == Phase::Bridged {
            warn!(call = key, "media timeout: hanging up");
            self.end_call(&mut call, now, "system", "media_timeout", None);
        }
        self.put_back(call, now);
    }

    /// The relay saw the end of an RFC 4733 event (`digit`, `duration`) sent by the peer of
    /// relay leg `leg` of session `media`. The packets were forwarded as they are; when the
    /// other party of the bridged call wants SIP INFO (`dtmf = "info"`, or `auto` and its SDP
    /// has no telephone-event), it also gets an in-dialog INFO (`application/dtmf-relay`,
    /// `Signal=<digit>`, `Duration=<ms>`), one at a time per dialog, in order.
    pub fn media_dtmf(
        &mut self,
        now: Instant,
        media: MediaId,
        leg: MediaLeg,
        digit: char,
        duration: Duration,
    ) {
        let Some(key) = self.by_media.get(&media).copied() else {
            return;
        };
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        self.dtmf_to_info(&mut call, media, leg, digit, duration);
        self.put_back(call, now);
    }

    fn dtmf_to_info(
        &mut self,
        call: &mut Call,
        media: MediaId,
        leg: MediaLeg,
        digit: char,
        duration: Duration,
    ) {
        if call.phase != Phase::Bridged || !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') {
            return;
        }
        let Some((x, y)) = call.bridge else { return };
        // The receiving party: the bridged leg on the other relay leg of this session.
        let on_session = |l: &Leg, side: MediaLeg| {
            l.media_leg == side
                && call
                    .bundles
                    .get(l.bundle)
                    .is_some_and(|b| b.ids.contains(&Some(media)))
        };
        let from = [x, y].into_iter().find(|&i| on_session(&call.legs[i], leg));
        let to = [x, y]
            .into_iter()
            .find(|&i| on_session(&call.legs[i], leg.other()));
        let (Some(_), Some(p)) = (from, to) else {
            return;
        };
        let l = &mut call.legs[p];
        let want = match l.dtmf {
            Dtmf::Info => true,
            Dtmf::Auto => !l.te,
            Dtmf::Rfc4733 => false,
        };
        if !want || !l.active() {
            return;
        }
        if l.dtmf_queue.len() >= MAX_DTMF_QUEUE {
            debug!(call = call.key, %digit, "DTMF INFO queue full: digit dropped");
            return;
        }
        let ms = (duration.as_millis() as u64).clamp(40, 5000);
        l.dtmf_queue.push_back((digit, ms));
        debug!(call = call.key, %digit, ms, "RFC 4733 -> INFO DTMF");
        self.next_dtmf_info(call, p);
    }

    /// Sends the next queued DTMF INFO on `li` unless one is outstanding or the dialog is not
    /// confirmed yet (a 2xx still waiting for its ACK).
    fn next_dtmf_info(&mut self, call: &mut Call, li: LegIdx) {
        let l = &call.legs[li];
        if l.dtmf_out.is_some()
            || l.state != LegState::Confirmed
            || l.ack_deferred.is_some()
            || l.ok.is_some()
        {
            return;
        }
        let Some((digit, ms)) = call.legs[li].dtmf_queue.pop_front() else {
            return;
        };
        let body = format!("Signal={digit}\r\nDuration={ms}\r\n");
        let id = self.send_in_dialog(
            call,
            li,
            Method::Info,
            &[],
            Some(("application/dtmf-relay", body.as_bytes())),
            ReqKind::DtmfInfo,
        );
        call.legs[li].dtmf_out = Some(id);
    }

    /// Ends every call (graceful stop): BYE answered calls, 503 to unanswered callers.
    pub fn shutdown(&mut self, now: Instant) {
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            if let Some(mut call) = self.calls.remove(&key) {
                self.end_call(&mut call, now, "system", "shutdown", None);
                self.put_back(call, now);
            }
        }
    }

    /// Calls for `podpbx ctl calls`: id, from, to, state, started_at (unix secs), duration.
    pub fn snapshot(&self, now: Instant) -> Vec<serde_json::Value> {
        let mut v: Vec<_> = self
            .calls
            .values()
            .map(|c| {
                let started = c.wall0.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let from = match &c.caller {
                    Caller::User(u) => u.clone(),
                    Caller::Trunk { name, .. } => format!("{} ({name})", c.from_id.1),
                };
                serde_json::json!({
                    "id": c.key,
                    "from": from,
                    "to": c.number,
                    "state": match c.phase { Phase::Routing => "ringing", Phase::Bridged => "answered", Phase::Ending => "ending" },
                    "started_at": started,
                    "duration_secs": now.saturating_duration_since(c.start).as_secs(),
                })
            })
            .collect();
        v.sort_by_key(|x| x["id"].as_u64());
        v
    }
}

impl std::fmt::Debug for B2bua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2bua")
            .field("calls", &self.calls.len())
            .finish()
    }
}
