//! A leg: one dialog of a call, towards the caller (UAS) or a callee (UAC).
//!
//! What a leg *is* (its party, its dialog, its media side) lives in [`Leg`]; where its INVITE
//! stands lives in [`LegState`], an enum per role whose variants own the data that only exists
//! in that state (ezk's invite session is the model): the caller's INVITE and its server
//! transaction only while it waits for our final response; our INVITE, its client transaction
//! and its digest answers only while it rings. A cancelled leg cannot be "ringing and answered";
//! a CANCEL cannot be sent twice or before a provisional response (RFC 3261 §9.1).

use super::dialog::Dialog;
use crate::{MediaLeg, ReqId};
use bytes::Bytes;
use podpbx_config::Dtmf;
use podpbx_sip::digest::{AuthKind, DigestClient};
use podpbx_sip::rel100::{ReliableReceiver, ReliableSender};
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{Message, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Index of a leg in its call (legs are never removed while the call lives).
pub(crate) type LegIdx = usize;

/// Index of a media bundle in its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BundleId(pub usize);

/// Who is on the far side of a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Party {
    /// A local user (registered phone or identify-by-source device).
    User(String),
    /// A trunk (provider), by name.
    Trunk(String),
}

impl Party {
    /// The user or trunk name.
    pub fn name(&self) -> &str {
        match self {
            Party::User(n) | Party::Trunk(n) => n,
        }
    }
    /// The local user, if this is one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Party::User(n) => Some(n),
            Party::Trunk(_) => None,
        }
    }
    pub fn is_trunk(&self) -> bool {
        matches!(self, Party::Trunk(_))
    }
}

/// The leg's role in the CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CdrRole {
    Caller,
    Callee,
    TransferTarget,
}

impl CdrRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CdrRole::Caller => "caller",
            CdrRole::Callee => "callee",
            CdrRole::TransferTarget => "transfer_target",
        }
    }
}

/// Where the leg's INVITE stands.
#[derive(Debug)]
pub(crate) enum LegState {
    /// The caller's leg: podpbx answers its INVITE.
    Uas(UasState),
    /// A callee's leg: podpbx sent the INVITE.
    Uac(UacState),
}

/// The caller's INVITE, as podpbx (UAS) answers it.
#[derive(Debug)]
pub(crate) enum UasState {
    /// The INVITE waits for our final response.
    Proceeding(Box<UasInvite>),
    /// We sent a 2xx; its ACK has not come yet (the 2xx is retransmitted: [`Leg::ok`]).
    Accepted,
    /// The 2xx was acknowledged.
    Confirmed,
    /// A final non-2xx was sent, or the dialog ended (BYE).
    Terminated,
}

/// A received INVITE waiting for our final response.
#[derive(Debug)]
pub(crate) struct UasInvite {
    /// Its server transaction.
    pub tx: ServerTxId,
    pub req: Message,
    /// Where it came from (`received`/`rport` of our responses).
    pub src: SocketAddr,
    /// The caller requires reliable provisionals (RFC 3262): our 18x go through this.
    pub rel: Option<ReliableSender>,
    /// The session timer our 2xx will carry (RFC 4028 §9).
    pub session: podpbx_sip::session_timer::UasDecision,
}

impl UasInvite {
    pub fn incoming(&self) -> super::send::Incoming<'_> {
        super::send::Incoming {
            tx: self.tx,
            req: &self.req,
            src: self.src,
        }
    }
}

/// Our INVITE, as podpbx (UAC) sent it.
#[derive(Debug)]
pub(crate) enum UacState {
    /// INVITE sent, nothing back yet: a CANCEL must wait for a provisional (RFC 3261 §9.1).
    Calling(Box<UacInvite>),
    /// A provisional response came (an early dialog when it had a To tag): CANCEL allowed.
    Early(Box<UacInvite>),
    /// CANCEL wanted before any provisional: sent when one comes, or the guard gives up.
    CancelPending(Box<UacInvite>),
    /// CANCEL sent: waiting for the 487, or for a 2xx that crossed it (ACK + BYE).
    Cancelling(Box<UacInvite>),
    /// A 2xx came (acknowledged, or its ACK waits for the other side's answer:
    /// [`Leg::ack_deferred`]).
    Confirmed,
    /// Failed, cancelled or ended.
    Terminated,
}

/// An INVITE of ours in progress.
#[derive(Debug)]
pub(crate) struct UacInvite {
    /// Its client transaction.
    pub req: ReqId,
    /// The INVITE as sent (a CANCEL copies its Via, Route, Call-ID, CSeq number).
    pub msg: Option<Message>,
    /// It carried an offer (else the 2xx carries the offer and our ACK the answer).
    pub had_offer: bool,
    /// What a re-send with credentials needs.
    pub resend: Resend,
    /// Digest answers to 401/407 (trunk legs with credentials).
    pub auth: Option<Auth>,
    /// Reliable provisionals received (RFC 3262): each PRACKed once, in order.
    pub rel: ReliableReceiver,
}

/// What an authenticated re-send of an INVITE needs: Request-URI, extra headers (without Via,
/// CSeq, credentials), body.
#[derive(Debug, Clone)]
pub(crate) struct Resend {
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<(String, Vec<u8>)>,
}

/// Digest state of a trunk INVITE (RFC 3261 §22.2, §22.3).
#[derive(Debug)]
pub(crate) struct Auth {
    pub client: DigestClient,
    /// Challenges answered so far.
    pub rounds: u32,
    /// The last challenge's kind: `Authorization` answers 401, `Proxy-Authorization` 407.
    pub last: Option<AuthKind>,
}

impl UacState {
    /// The INVITE still rings (no final response yet).
    pub fn invite(&self) -> Option<&UacInvite> {
        match self {
            UacState::Calling(i)
            | UacState::Early(i)
            | UacState::CancelPending(i)
            | UacState::Cancelling(i) => Some(i),
            UacState::Confirmed | UacState::Terminated => None,
        }
    }
}

/// A 2xx we (as UAS) retransmit until the ACK (RFC 3261 §13.3.1.4): for the caller's INVITE
/// and for relayed re-INVITEs alike.
#[derive(Debug, Clone)]
pub(crate) struct OkRetx {
    pub data: Bytes,
    pub cseq: u32,
    pub interval: Duration,
    pub started: Instant,
}

/// The leg's side of the media: which relay leg it is, in which bundle, and its SDP history.
#[derive(Debug, Clone)]
pub(crate) struct LegMedia {
    /// Relay leg (A: caller side, B: callee side) of this leg in its bundle's sessions.
    pub side: MediaLeg,
    /// The bundle of relay sessions this leg's media goes through (the caller's leg has none
    /// until a callee answers: each ringing callee has its own, by address family).
    pub bundle: Option<BundleId>,
    /// The peer offered/accepted telephone-event.
    pub te: bool,
    /// The peer's last SDP.
    pub last_sdp: Option<Bytes>,
    /// Our o= line towards this peer: session id and version (RFC 4566 §5.2: the version
    /// changes when our SDP does).
    pub origin_id: u64,
    pub origin_ver: u64,
    /// Our last SDP towards the peer (before the origin is set).
    pub last_sent: Option<String>,
    /// SDES state of this leg (RFC 4568).
    pub srtp: LegSrtp,
}

/// SDES keys of a leg: what its peer offered or accepted, and our key towards it. SRTP runs on
/// the leg once both are known.
#[derive(Clone, Default)]
pub(crate) struct LegSrtp {
    /// The `a=crypto` we accepted from the peer: tag, suite, key (30 bytes).
    pub remote: Option<(u32, String, Vec<u8>)>,
    /// Our key towards the peer (30 bytes) and the suite of our line.
    pub local: Option<(String, Vec<u8>)>,
    /// What the relay was last told for this leg (its replay windows and rollover counters
    /// must not be reset by a re-INVITE that keeps the keys).
    pub applied: Option<(Option<BundleId>, Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for LegSrtp {
    /// Keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegSrtp")
            .field("remote", &self.remote.as_ref().map(|r| (r.0, &r.1)))
            .field("local", &self.local.as_ref().map(|l| &l.0))
            .finish()
    }
}

impl LegMedia {
    /// A leg's media before any SDP: relay leg `side` of `bundle`, our SDP origin `origin_id`.
    pub fn new(side: MediaLeg, bundle: Option<BundleId>, origin_id: u64) -> LegMedia {
        LegMedia {
            side,
            bundle,
            te: false,
            last_sdp: None,
            origin_id,
            origin_ver: 1,
            last_sent: None,
            srtp: LegSrtp::default(),
        }
    }
}

/// DTMF towards this leg's peer as SIP INFO (from RFC 4733 on the other side).
#[derive(Debug, Clone, Default)]
pub(crate) struct DtmfOut {
    /// Our INFO awaiting its final response: one at a time, in order.
    pub outstanding: Option<ReqId>,
    /// Digits waiting for their INFO (digit, ms).
    pub queue: VecDeque<(char, u64)>,
}

/// One leg of a call.
#[derive(Debug)]
pub(crate) struct Leg {
    pub party: Party,
    pub cdr_role: CdrRole,
    /// How this party wants DTMF.
    pub dtmf_mode: Dtmf,
    pub dialog: Dialog,
    pub state: LegState,
    /// Final status of the INVITE on this leg (for the CDR); the last challenge while a trunk
    /// INVITE is re-sent with credentials.
    pub status: Option<StatusCode>,
    /// Which routing step created it (0: the caller's leg).
    pub step_gen: u32,
    /// Our 2xx waiting for its ACK.
    pub ok: Option<OkRetx>,
    /// The ACK we sent for a 2xx (CSeq, bytes), re-sent when the 2xx is retransmitted.
    pub last_ack: Option<(u32, Bytes)>,
    /// A 2xx to our INVITE (this CSeq) waits for the answer in the other side's ACK.
    pub ack_deferred: Option<u32>,
    /// Our 2xx to the caller's INVITE, held back until the PRACK of a reliable provisional
    /// that carried SDP (RFC 3262 §3); sent by the PRACK handler.
    pub held_2xx: Option<super::prack::Held2xx>,
    /// This leg's session timer (RFC 4028), once negotiated.
    pub session: Option<podpbx_sip::session_timer::SessionTimer>,
    /// The peer accepts UPDATE (its Allow said so): refreshes use it.
    pub peer_update: bool,
    pub media: LegMedia,
    pub dtmf: DtmfOut,
}

impl Leg {
    /// Not terminated.
    pub fn active(&self) -> bool {
        !matches!(
            self.state,
            LegState::Uas(UasState::Terminated) | LegState::Uac(UacState::Terminated)
        )
    }

    /// Our INVITE on this leg has no final response yet.
    pub fn ringing(&self) -> bool {
        matches!(&self.state, LegState::Uac(s) if s.invite().is_some())
    }

    /// Ringing and not being cancelled (a CANCEL still to be sent counts as ringing: it
    /// has not gone out).
    pub fn ringing_uncancelled(&self) -> bool {
        matches!(
            self.state,
            LegState::Uac(UacState::Calling(_) | UacState::Early(_) | UacState::CancelPending(_))
        )
    }

    /// A CANCEL was sent or is wanted.
    pub fn cancel_requested(&self) -> bool {
        matches!(
            self.state,
            LegState::Uac(UacState::CancelPending(_) | UacState::Cancelling(_))
        )
    }

    /// The dialog is established (answered; a 2xx of ours may still wait for its ACK).
    pub fn answered(&self) -> bool {
        matches!(
            self.state,
            LegState::Uas(UasState::Accepted | UasState::Confirmed)
                | LegState::Uac(UacState::Confirmed)
        )
    }

    /// Confirmed: the initial INVITE's 2xx was acknowledged both ways.
    pub fn confirmed(&self) -> bool {
        matches!(
            self.state,
            LegState::Uas(UasState::Confirmed) | LegState::Uac(UacState::Confirmed)
        )
    }

    /// The caller's INVITE, while it waits for our final response.
    pub fn uas_invite(&self) -> Option<&UasInvite> {
        match &self.state {
            LegState::Uas(UasState::Proceeding(i)) => Some(i),
            _ => None,
        }
    }

    /// Our INVITE, while it rings.
    pub fn uac_invite(&self) -> Option<&UacInvite> {
        match &self.state {
            LegState::Uac(s) => s.invite(),
            LegState::Uas(_) => None,
        }
    }

    /// The leg is over.
    pub fn terminate(&mut self) {
        self.state = match self.state {
            LegState::Uas(_) => LegState::Uas(UasState::Terminated),
            LegState::Uac(_) => LegState::Uac(UacState::Terminated),
        };
    }

    /// What stays of this leg in the call it leaves when it moves to another call (a transfer
    /// joins it there): a terminated copy with its party, dialog, status and media side, so the
    /// old call's CDR still shows it; nothing of it is live any more.
    pub fn husk(&self) -> Leg {
        Leg {
            party: self.party.clone(),
            cdr_role: self.cdr_role,
            dtmf_mode: self.dtmf_mode,
            dialog: self.dialog.clone(),
            state: match self.state {
                LegState::Uas(_) => LegState::Uas(UasState::Terminated),
                LegState::Uac(_) => LegState::Uac(UacState::Terminated),
            },
            status: self.status,
            step_gen: self.step_gen,
            ok: None,
            last_ack: None,
            ack_deferred: None,
            held_2xx: None,
            session: None,
            peer_update: false,
            media: self.media.clone(),
            dtmf: DtmfOut::default(),
        }
    }

    /// The user (not trunk) on this leg.
    pub fn user(&self) -> Option<&str> {
        self.party.user()
    }

    /// Whether the party wants DTMF as RFC 4733 events (else as SIP INFO).
    pub fn wants_rfc4733(&self) -> bool {
        match self.dtmf_mode {
            Dtmf::Rfc4733 => true,
            Dtmf::Auto => self.media.te,
            Dtmf::Info => false,
        }
    }
}
