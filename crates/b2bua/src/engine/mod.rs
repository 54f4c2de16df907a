//! The call state machine, a module per concern (as Kamailio's tm splits a transaction into
//! `t_fwd`, `t_reply`, `t_cancel`, `t_serial`). See the crate documentation for the flows.
//!
//! | module | concern |
//! |---|---|
//! | `call` | a call: legs, phase, routing state, media bundles, what the CDR records |
//! | `leg` | a leg: its party, its dialog, its UAS or UAC state (enums that own their data) |
//! | `dialog` | RFC 3261 §12 dialog state and the in-dialog request builder |
//! | `send` | the outbox: responses, requests as client transactions, ACK, BYE |
//! | `new_call` | a new INVITE: identification, limits, the caller's leg, the dialplan rule |
//! | `routing` | dialplan execution: steps, fallbacks, failure mapping, ring timeouts |
//! | `fork` | ring groups: parallel and sequential forking to every contact of users |
//! | `trunk` | trunk legs: number rewriting, caller ID, digest answers to 401/407 |
//! | `invite` | our INVITEs: sending, provisional, 2xx (winner or late), failure |
//! | `answer` | the winning answer: other forks cancelled, the caller's 2xx, the bridge |
//! | `responses` | responses to our requests and their failures, by request kind |
//! | `in_dialog` | requests inside a dialog: BYE, re-INVITE/UPDATE, INFO, OPTIONS, ...; ACK |
//! | `cancel` | CANCEL from the caller and CANCEL of our INVITEs |
//! | `transfer` | REFER: blind transfer, attended transfer (`Replaces` in `Refer-To`), their NOTIFYs |
//! | `dtmf` | SIP INFO <-> RFC 4733 interworking |
//! | `media` | relay sessions, SDP rewrite per leg, media timeout |
//! | `ending` | ending a call, the CDR |
//! | `ended` | dialogs a BYE ended, for 64·T1: a late copy of that BYE gets `200`, not `481` |
//! | `endpoint` | calls podpbx answers itself (voicemail, announcements) |
//! | `features` | feature codes dialled from phones; modes (night) and time for routing |
//! | `forward` | per-user forwarding and do not disturb when a step rings users |
//! | `pickup` | directed call pickup: a picker's INVITE answers a call ringing elsewhere |
//! | `replaces` | INVITE with `Replaces` (RFC 3891): pickup of a ringing leg, another device taking over an answered one |
//! | `reanchor` | legs joined by a transfer or a replacement: a bundle across their families, our re-INVITEs with each other's media |
//! | `presence` | BLF: a user's dialogs from the calls, and which users changed |
//! | `source` | what a source address alone may do: in-dialog/CANCEL peers, trunk steps, DIDs |
//! | `timers` | ring timeouts, 2xx retransmission, guards |
//! | `keepalive` | `[calls] keepalive_secs`: in-dialog OPTIONS on answered legs, 481/408/no answer ends the call |
//!
//! Every input (`handle_*`, `request_failed`, `media_*`) takes the call out of the table,
//! works on it, and puts it back ([`B2bua::put_back`]), which finishes it when it is over.
//!
//! # Extending
//!
//! * A new in-dialog method with behaviour of its own: a module with an `impl B2bua` handler
//!   taking `(call, now, Incoming, leg, partner)`, and one arm in `in_dialog`'s dispatch;
//!   every other method is relayed as it is.
//! * New treatment of responses to our INVITE (reliable provisionals, redirects): a module,
//!   called from `invite::invite_response` (provisional / success / failure).
//! * A new timer: a `TimerKind` variant, armed with [`B2bua::arm`], fired in `handle_timeout`.
//! * A new routing action: an arm in `routing::next_step` starting it (like `fork`, `trunk`).
//! * A new kind of far end that is not a SIP dialog (a local media endpoint such as voicemail):
//!   a `Phase` variant owning its session, entered from a routing action that answers the
//!   caller's leg itself (`answer.rs` shows how the caller gets its 2xx).

mod answer;
mod call;
mod cancel;
mod dialog;
mod dtmf;
mod ended;
mod ending;
mod endpoint;
mod features;
mod fork;
pub(crate) mod forward;
mod headers;
mod in_dialog;
mod invite;
mod keepalive;
mod leg;
mod media;
mod new_call;
mod pickup;
mod prack;
mod presence;
mod reanchor;
mod redirect;
mod replaces;
mod responses;
mod routing;
mod send;
mod session_timer;
mod source;
mod timers;
mod transfer;
mod trunk;
mod update;

use crate::{MediaId, MediaPort, Output, ReqId, Settings};
use call::{Call, CallKey};
use dialog::DialogKey;
pub use ended::{EndedDialogCounts, MAX_ENDED};
use leg::LegIdx;
use podpbx_config::Config;
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{IdGen, Message, Method};
use send::Pending;
pub use source::SecurityCounts;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use timers::TimerKind;

/// The B2BUA: every call, its legs and timers. See the crate documentation.
///
/// Inputs are the `handle_*` methods, [`B2bua::request_failed`], [`B2bua::media_timeout`] and
/// [`B2bua::media_dtmf`], each with `now`; outputs are drained with [`B2bua::poll_output`], and
/// [`B2bua::poll_timeout`] says when [`B2bua::handle_timeout`] must next run. Nothing here
/// reads the clock, a socket or a random source (identifiers come from the [`IdGen`] passed
/// to [`B2bua::new`]).
pub struct B2bua {
    cfg: Arc<Config>,
    settings: Settings,
    media: Box<dyn MediaPort + Send>,
    /// podpbx's own media endpoint (voicemail, announcements).
    endpoint: Box<dyn crate::EndpointPort + Send>,
    by_endpoint: HashMap<crate::EndpointId, CallKey>,
    /// Run-time state of the `[[modes]]` switches (absent: the mode's `initial`).
    modes: HashMap<String, bool>,
    /// Forwarding and DND changed at run time, by user (the rest comes from the configuration).
    user_state: HashMap<String, forward::UserFeatures>,
    /// Run-time state changed since [`B2bua::take_state_changed`].
    state_changed: bool,
    /// Users whose dialogs changed since [`B2bua::take_presence_changes`] (BLF).
    presence_dirty: std::collections::HashSet<String>,
    ids: IdGen,
    calls: HashMap<CallKey, Call>,
    pub(crate) by_invite_tx: HashMap<ServerTxId, CallKey>,
    by_dialog: HashMap<DialogKey, (CallKey, LegIdx)>,
    by_req: HashMap<ReqId, Pending>,
    by_media: HashMap<MediaId, CallKey>,
    timers: BTreeMap<(Instant, u64), (CallKey, TimerKind)>,
    timer_seq: u64,
    /// What each call put into `timers`, `by_req` and `by_invite_tx`, so that its end removes
    /// exactly that ([`Owned`]).
    owned: HashMap<CallKey, Owned>,
    out: VecDeque<Output>,
    next_call: u64,
    next_req: u64,
    /// What was refused to sources proven only by their address.
    security: SecurityCounts,
    /// Dialogs a received BYE ended, so that a late copy of the BYE gets `200` ([`ended`]).
    ended: ended::EndedDialogs,
}

impl B2bua {
    /// A B2BUA routing by `cfg`, with media through `media`; tags, Call-IDs and branches come
    /// from `ids` (seed it from the OS; tests use a constant).
    pub fn new(
        cfg: Arc<Config>,
        settings: Settings,
        media: Box<dyn MediaPort + Send>,
        ids: IdGen,
    ) -> B2bua {
        // Timer J: how long the BYE's own server transaction would absorb its copies.
        let keep_ended = settings.timers.t1 * 64;
        B2bua {
            cfg,
            settings,
            media,
            endpoint: Box::new(crate::NoEndpoint),
            by_endpoint: HashMap::new(),
            modes: HashMap::new(),
            user_state: HashMap::new(),
            state_changed: false,
            presence_dirty: std::collections::HashSet::new(),
            ids,
            calls: HashMap::new(),
            by_invite_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            by_req: HashMap::new(),
            by_media: HashMap::new(),
            timers: BTreeMap::new(),
            owned: HashMap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            next_call: 1,
            next_req: 1,
            security: SecurityCounts::default(),
            ended: ended::EndedDialogs::new(keep_ended),
        }
    }

    /// Swaps the dialplan, users and groups for the next calls (calls in progress keep the
    /// steps they already have).
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        // Run-time switches of users and modes that are gone go with them.
        self.user_state.retain(|u, _| cfg.user(u).is_some());
        self.modes.retain(|m, _| cfg.mode(m).is_some());
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

    /// Calls in set-up: the caller's INVITE waits for our final response, or our 2xx for its
    /// ACK, and the call is not ending. A scan of every call (read-only): overload control
    /// counts it at most every few milliseconds.
    pub fn calls_in_setup(&self) -> usize {
        self.calls
            .values()
            .filter(|c| {
                !matches!(c.phase, call::Phase::Ending) && {
                    let a = &c.legs[c.a];
                    a.active() && !a.confirmed()
                }
            })
            .count()
    }

    /// The media relay's load ([`MediaPort::load`]).
    pub fn media_load(&self) -> f64 {
        self.media.load()
    }

    /// Gives back the room a load left in the call tables ([`podpbx_sip::capacity`]): after
    /// a flood of 15 000 calls the call map alone keeps ~20 MB for the calls it once held. For
    /// a periodic tick, not per message (a shrink moves every entry); `now` also expires the
    /// memory of ended dialogs. True if anything shrank.
    pub fn shrink(&mut self, now: Instant) -> bool {
        use podpbx_sip::capacity::{shrink_deque, shrink_map};
        let mut shrank = shrink_map(&mut self.calls);
        shrank |= shrink_map(&mut self.owned);
        shrank |= shrink_map(&mut self.by_invite_tx);
        shrank |= shrink_map(&mut self.by_dialog);
        shrank |= shrink_map(&mut self.by_req);
        shrank |= shrink_map(&mut self.by_media);
        shrank |= shrink_map(&mut self.by_endpoint);
        shrank |= shrink_deque(&mut self.out);
        shrank |= self.ended.shrink(now);
        self.media.shrink();
        shrank
    }

    /// Entries in the shared tables: requests, dialogs, INVITE transactions, timers, calls
    /// with an index of their own ([`Owned`]).
    #[cfg(test)]
    pub(crate) fn entry_counts(&self) -> [usize; 5] {
        [
            self.by_req.len(),
            self.by_dialog.len(),
            self.by_invite_tx.len(),
            self.timers.len(),
            self.owned.len(),
        ]
    }

    /// Room in the call tables (entries, summed), to see [`B2bua::shrink`] at work.
    #[cfg(test)]
    pub(crate) fn table_room(&self) -> usize {
        self.calls.capacity()
            + self.by_invite_tx.capacity()
            + self.by_dialog.capacity()
            + self.by_req.capacity()
            + self.by_media.capacity()
    }

    /// The next thing for the shell to do: a response to send through a server transaction, a
    /// request to start as a client transaction (its responses come back to
    /// [`B2bua::handle_response`] with its [`ReqId`]), a stateless send (ACK, 2xx
    /// retransmission), a client transaction to abandon, or a finished call's CDR. `None` when
    /// there is nothing more; call it after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`B2bua::handle_timeout`] must next run (`None`: no timer armed). Changes after
    /// every input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Whether an in-dialog request or ACK belongs to one of our dialogs (by Call-ID and To
    /// tag).
    pub fn owns_dialog(&self, req: &Message) -> bool {
        self.dialog_of(req).is_some()
    }

    /// Calls for `podpbx ctl calls`: id, from, to, state, started_at (unix secs), duration.
    pub fn snapshot(&self, now: Instant) -> Vec<serde_json::Value> {
        let mut v: Vec<_> = self
            .calls
            .values()
            .map(|c| {
                let started = c
                    .wall0
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let from = match &c.caller {
                    crate::Caller::User(u) => u.clone(),
                    crate::Caller::Trunk { name, .. } => format!("{} ({name})", c.from_id.1),
                };
                let state = c.phase.name();
                serde_json::json!({
                    "id": c.key,
                    "from": from,
                    "to": c.number,
                    "state": state,
                    "started_at": started,
                    "duration_secs": now.saturating_duration_since(c.start).as_secs(),
                })
            })
            .collect();
        v.sort_by_key(|x| x["id"].as_u64());
        v
    }

    /// The size of the memory of dialogs a BYE ended (bounded by [`MAX_ENDED`]).
    pub fn ended_dialogs(&self) -> EndedDialogCounts {
        self.ended.counts()
    }

    /// `req` is a copy of the BYE (same CSeq, same source) that ended a dialog of ours less
    /// than 64·T1 ago.
    fn repeats_ended_bye(&self, now: Instant, req: &Message, src: std::net::SocketAddr) -> bool {
        if req.method() != Some(&Method::Bye) {
            return false;
        }
        let (Ok(call_id), Ok(to), Ok(cseq)) = (req.call_id(), req.to_hdr(), req.cseq()) else {
            return false;
        };
        let Some(tag) = to.tag() else {
            return false;
        };
        self.ended.repeats(now, &call_id, &tag, cseq.seq, src.ip())
    }

    /// The call and leg of an in-dialog request (Call-ID and our tag in To).
    fn dialog_of(&self, req: &Message) -> Option<(CallKey, LegIdx)> {
        let call_id = crate::util::str_of(&req.call_id().ok()?);
        let tag = crate::util::str_of(&req.to_hdr().ok()?.tag()?);
        self.by_dialog.get(&(call_id, tag)).copied()
    }

    /// Runs `f` on call `key` taken out of the table, then puts it back (or finishes it).
    fn with_call<R>(
        &mut self,
        key: CallKey,
        now: Instant,
        f: impl FnOnce(&mut B2bua, &mut Call) -> R,
    ) -> Option<R> {
        let mut call = self.calls.remove(&key)?;
        let r = f(self, &mut call);
        self.put_back(call, now);
        Some(r)
    }

    /// Re-inserts a call after handling, or finishes it (ended, nothing in flight).
    fn put_back(&mut self, mut call: Call, now: Instant) {
        self.mark_presence(&call);
        if call.is_ending() && call.pending == 0 && !call.legs.iter().any(|l| l.ringing()) {
            self.finish(&mut call, now);
            return;
        }
        self.calls.insert(call.key, call);
    }
}

/// The entries one call holds in the engine's shared tables (its dialogs are found through its
/// legs). Ending a call used to scan every table for entries of its key: five passes over all
/// calls' requests, dialogs, INVITE transactions and timers per call that ended, so a call's
/// end cost O(calls in progress) (15 000 at the overload bench's 2x point, 7 000 ends a
/// second). The lists may keep ids already gone from the tables (a timer that fired, a request
/// answered): removing those is a no-op, and [`Owned::prune`] drops them as a list grows.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    timers: Vec<(Instant, u64)>,
    reqs: Vec<ReqId>,
    invite_txs: Vec<ServerTxId>,
}

impl Owned {
    /// Whether a list of `len` entries is due a pruning pass: at 16, 32, 64 ... entries, so the
    /// passes cost O(1) per entry added, amortised.
    fn prune_due(len: usize) -> bool {
        len >= 16 && len.is_power_of_two()
    }
}

impl std::fmt::Debug for B2bua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2bua")
            .field("calls", &self.calls.len())
            .finish()
    }
}
