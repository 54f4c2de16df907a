//! A call: its legs, where its routing stands, its media bundles and what the CDR records.

use super::leg::{BundleId, Leg, LegIdx};
use crate::cdr::Disposition;
use crate::{Caller, Family, MediaId};
use bytes::Bytes;
use podpbx_config::Action;
use podpbx_sip::StatusCode;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// The b2bua's number of a call (unique per process run; the CDR's `id`).
pub(crate) type CallKey = u64;

/// Relay sessions for one pair of address families (caller side, callee side): one session
/// per SDP m-line. Each ringing callee family gets its own; the answering one is kept.
pub(crate) struct Bundle {
    pub a: Family,
    pub b: Family,
    pub ids: Vec<Option<MediaId>>,
}

/// Why the dialplan is being executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The caller's INVITE.
    Initial,
    /// A blind transfer: `keeper` stays, `transferor` sent the REFER. The target's legs get
    /// relay bundles of their own (from index `first_bundle` of the call's bundles on), by
    /// the keeper's media family and theirs.
    Transfer {
        keeper: LegIdx,
        transferor: LegIdx,
        first_bundle: usize,
    },
}

/// Why routing failed: the final status for the caller (with a reason phrase other than the
/// standard one, e.g. a dialplan `reject` with its own reason) and the CDR disposition.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub reason: Option<String>,
    pub disposition: Disposition,
}

impl Failure {
    pub fn new(status: StatusCode, disposition: Disposition) -> Failure {
        Failure {
            status,
            reason: None,
            disposition,
        }
    }

    /// Nobody answered (or nobody could be rung).
    pub fn no_answer() -> Failure {
        Failure::new(StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer)
    }
}

/// Dialplan execution in progress.
pub(crate) struct Routing {
    pub purpose: Purpose,
    /// Steps still to try (the rule's action, then its fallbacks).
    pub steps: VecDeque<Action>,
    /// Generation of the current step (legs and timers of older steps are ignored).
    pub gen: u32,
    /// Sequential: users still to ring in this step, and the per-user ring time.
    pub seq: VecDeque<String>,
    pub seq_timeout: Duration,
    /// Legs of the current step.
    pub legs: Vec<LegIdx>,
    /// Final statuses of the current step's legs.
    pub codes: Vec<StatusCode>,
    pub timed_out: bool,
    pub last_failure: Failure,
    /// A trunk step's trunks not tried yet (by priority), with the step's rewriting.
    pub failover: Option<Box<TrunkFailover>>,
    /// Provider redirections (3xx) followed so far in this call.
    pub redirects: u8,
    /// Forwarding in effect for this routing (boxed: most calls are never forwarded).
    pub fwd: Box<super::forward::FwdState>,
    /// Trunk steps may run: false when whoever decides where the call goes proves nothing but
    /// a source address and the rule does not allow it explicitly
    /// ([`podpbx_config::Config::may_reach_trunk`]).
    pub trunks_allowed: bool,
}

/// The rest of a trunk step that lists several trunks.
#[derive(Debug, Clone)]
pub(crate) struct TrunkFailover {
    pub rest: VecDeque<String>,
    pub strip: usize,
    pub prepend: String,
    pub caller_id: Option<String>,
}

impl Routing {
    pub fn new(purpose: Purpose, steps: VecDeque<Action>, gen: u32) -> Routing {
        Routing {
            purpose,
            steps,
            gen,
            seq: VecDeque::new(),
            seq_timeout: Duration::ZERO,
            legs: Vec::new(),
            codes: Vec::new(),
            timed_out: false,
            last_failure: Failure::no_answer(),
            failover: None,
            redirects: 0,
            fwd: Box::default(),
            trunks_allowed: true,
        }
    }
}

/// Where a call stands; each phase owns what only exists in it.
pub(crate) enum Phase {
    /// The dialplan runs (callees ring), for the caller or for a transfer.
    Routing(Routing),
    /// Two legs talk.
    Bridged(Bridge),
    /// podpbx's media endpoint answered the caller (voicemail, announcement).
    Endpoint(crate::EndpointId),
    /// Ended; waiting for the last transactions before the CDR.
    Ending,
}

/// The two legs whose media and in-dialog requests are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bridge {
    pub a: LegIdx,
    pub b: LegIdx,
}

impl Phase {
    /// The name `podpbx ctl calls` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Routing(_) => "ringing",
            Phase::Bridged(_) => "answered",
            Phase::Endpoint(_) => "voicemail",
            Phase::Ending => "ending",
        }
    }
}

/// One call: the caller's leg, every callee leg it forked to, and the bridge between two.
pub(crate) struct Call {
    pub key: CallKey,
    pub start: Instant,
    /// Wall-clock time at `start` (CDR times are `wall0 + (t - start)`).
    pub wall0: SystemTime,
    pub caller: Caller,
    /// From identity on B legs: (display, user).
    pub from_id: (String, String),
    /// The caller's ID is withheld: trunk legs get `From: Anonymous` (and `Privacy: id`).
    pub withheld: bool,
    /// `Alert-Info`/`Call-Info` lines for the phones the caller's INVITE rings
    /// (`engine::headers`).
    pub phone_headers: Vec<(String, String)>,
    /// The dialled number (the transfer target after a REFER).
    pub number: String,
    pub legs: Vec<Leg>,
    /// The caller's leg.
    pub a: LegIdx,
    pub phase: Phase,
    pub bundles: Vec<Bundle>,
    /// A relayed re-INVITE in progress (RFC 3261 §14.1: one offer at a time; a second one
    /// gets 491).
    pub reinvite: Option<Reinvite>,
    /// Two legs joined by a transfer or a replacement whose media podpbx connects with
    /// re-INVITEs of its own (while it lasts, their offers get 491).
    pub reanchor: Option<Box<super::reanchor::Reanchor>>,
    /// Requests of ours without a final response that the call must wait for before it ends.
    pub pending: usize,
    /// The caller's SDP offer (none: delayed offer).
    pub offer: Option<Bytes>,
    /// The last offer put the call on hold.
    pub held: bool,
    pub record: Record,
}

/// A re-INVITE relayed from leg `from` to leg `to`, waiting for its final response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reinvite {
    pub from: LegIdx,
    pub to: LegIdx,
}

/// Who ended a call (the CDR's `hangup_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HangupBy {
    Caller,
    Callee,
    /// Timeouts, limits, shutdown, errors.
    System,
}

impl HangupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
        }
    }
}

/// Why an established or ringing call was ended (the CDR's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Bye,
    Cancel,
    MediaTimeout,
    MaxDuration,
    /// Our 2xx got no ACK within 64*T1.
    NoAck,
    /// Our reliable provisional got no PRACK within 64*T1 (RFC 3262), after the callee
    /// answered.
    NoPrack,
    /// A leg's session timer ran out (RFC 4028): no refresh came, or ours failed.
    SessionExpired,
    Shutdown,
    /// The other side answered a relayed request with 481/408.
    DialogGone,
    TransferFailed,
    /// The transferor's other call: its far end was joined to the transferee (attended
    /// transfer), or its leg was replaced by another device's INVITE with `Replaces`.
    Transferred,
    /// An inconsistency the engine refused to go on with.
    Internal,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Bye => "bye",
            EndReason::Cancel => "cancel",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::MaxDuration => "max_duration",
            EndReason::NoAck => "no_ack",
            EndReason::NoPrack => "no_prack",
            EndReason::SessionExpired => "session_expired",
            EndReason::Shutdown => "shutdown",
            EndReason::DialogGone => "dialog_gone",
            EndReason::TransferFailed => "transfer_failed",
            EndReason::Transferred => "transferred",
            EndReason::Internal => "internal",
        }
    }
}

/// What the CDR will say.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub answered_at: Option<Instant>,
    pub ended_at: Option<Instant>,
    pub disposition: Option<Disposition>,
    /// Final status sent to the caller.
    pub a_status: Option<StatusCode>,
    pub hangup_by: Option<HangupBy>,
    /// Why it ended (none: the disposition says it).
    pub reason: Option<&'static str>,
    pub rule: Option<String>,
    pub answered_by: Option<String>,
    pub transferred_to: Option<String>,
}

impl Call {
    /// The other leg of the bridge.
    pub fn partner(&self, li: LegIdx) -> Option<LegIdx> {
        match self.phase {
            Phase::Bridged(Bridge { a, b }) if a == li => Some(b),
            Phase::Bridged(Bridge { a, b }) if b == li => Some(a),
            _ => None,
        }
    }

    /// The dialplan execution, while the call is routing.
    pub fn routing(&self) -> Option<&Routing> {
        match &self.phase {
            Phase::Routing(r) => Some(r),
            _ => None,
        }
    }

    pub fn routing_mut(&mut self) -> Option<&mut Routing> {
        match &mut self.phase {
            Phase::Routing(r) => Some(r),
            _ => None,
        }
    }

    pub fn is_routing(&self) -> bool {
        matches!(self.phase, Phase::Routing(_))
    }

    /// The bridge's legs, while bridged.
    pub fn bridged_legs(&self) -> Option<Bridge> {
        match self.phase {
            Phase::Bridged(b) => Some(b),
            _ => None,
        }
    }

    pub fn is_bridged(&self) -> bool {
        matches!(self.phase, Phase::Bridged(_))
    }

    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::Ending)
    }

    /// Connects legs `a` and `b` (the routing, if any, is over).
    pub fn bridge(&mut self, a: LegIdx, b: LegIdx) {
        self.phase = Phase::Bridged(Bridge { a, b });
    }

    pub fn bundle(&self, id: Option<BundleId>) -> Option<&Bundle> {
        id.and_then(|b| self.bundles.get(b.0))
    }

    /// The re-INVITE from `from` to `to` got its final response.
    pub fn end_reinvite(&mut self, from: LegIdx, to: LegIdx) {
        if self.reinvite.is_some_and(|r| r.from == from && r.to == to) {
            self.reinvite = None;
        }
    }

    /// An offer is in progress across the call (a relayed re-INVITE, or our own re-INVITEs
    /// that join two legs): another offer gets 491 (RFC 3261 §14.1).
    pub fn offer_pending(&self) -> bool {
        self.reinvite.is_some() || self.reanchor.is_some()
    }

    /// The routing is a transfer and `li` is its transferor.
    pub fn is_transferor(&self, li: LegIdx) -> bool {
        matches!(
            self.routing().map(|r| &r.purpose),
            Some(Purpose::Transfer { transferor, .. }) if *transferor == li
        )
    }
}
