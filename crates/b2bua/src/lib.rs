//! podpbx call control: a sans-IO back-to-back user agent.
//!
//! Every call is two (or, while a group rings, more) independent dialogs (RFC 3261 §12): the A
//! leg towards the caller, in which podpbx is the UAS, and B legs towards callees, in which
//! podpbx is the UAC. Each leg has its own Call-ID, tags, CSeq space, Via and Contact (our pinned
//! address of the leg's family), and media is always anchored in the relay, with the SDP
//! rewritten per leg (so an IPv4 doorbell and IPv6 phones can talk). The far side never sees
//! the other leg's addresses.
//!
//! The [`B2bua`] never reads the clock and never touches a socket or the transaction layer:
//! the shell passes requests (with their server transaction id), responses (with the
//! [`ReqId`] of the request they answer), transaction failures, media events and `now` in,
//! and polls [`Output`]s (responses to send through a server transaction, requests to start as
//! client transactions, stateless sends for ACKs and 2xx retransmissions, CDRs) and the next
//! deadline ([`B2bua::poll_timeout`]). Media goes through the [`MediaPort`] trait and contact
//! lookups through [`Directory`], so the state machine runs in virtual time with fakes. It never
//! reads a random source either: tags, Call-IDs and branches come from the seeded
//! [`podpbx_sip::IdGen`] given to [`B2bua::new`].
//!
//! The engine is a folder of modules, one per concern (new calls, routing, forking, trunks,
//! INVITE responses, in-dialog requests, CANCEL, transfer, DTMF, media, ending, timers); a leg's
//! state is an enum per role (UAS/UAC) whose variants own their data, and each leg has one
//! `Dialog` (RFC 3261 §12). The module map is in `engine/mod.rs`.
//!
//! # Flow of a call
//!
//! ```text
//! INVITE (A) -> 100 Trying; dialplan rule; ring step: fork INVITE to every contact of every target
//!   B 18x (with SDP: early media through the relay) -> 18x on A
//!   first B 2xx wins: ACK it, CANCEL the other forks (ACK + BYE a 2xx that crosses), 200 on A
//!   (retransmitted until A's ACK, T1 doubling to T2, give up with BYE after 64*T1)
//!   all busy -> next fallback step or 486; ring timeout -> CANCEL, next step or 480;
//!   no contact -> 480; unknown number -> 404; trunk down -> 503; reject -> its status
//! trunk leg (INVITE from our pinned address of the trunk's family, 401/407 answered once or
//!   twice with the trunk's credentials: same Call-ID, CSeq + 1): the provider's final status
//!   goes to the caller, except 5xx, 408/no answer and unsatisfied 401/407 -> 503
//! proxies in the path (a provider's Record-Route): copied into our 18x/2xx on the A leg,
//!   reversed into the B leg's route set; ACK, BYE and CANCEL follow them
//! CANCEL (A) -> CANCEL every ringing B leg, 487 on A
//! BYE from either side -> 200, BYE on the other side; CDR
//! re-INVITE / UPDATE / INFO / OPTIONS / other in-dialog requests -> relayed to the other side
//!   (SDP rewritten, hold tracked); INFO DTMF becomes RFC 4733 when the other user wants it
//! RFC 4733 event seen by the relay (B2bua::media_dtmf) -> forwarded as RTP, and an in-dialog
//!   INFO (application/dtmf-relay) to the other party when it wants INFO (one at a time)
//! REFER -> 202, NOTIFY 100 Trying, dialplan for the Refer-To target with the other party as
//!   caller, NOTIFY 200 OK and BYE to the transferor once the target answers
//! ```

mod cdr;
mod engine;
mod util;

#[cfg(test)]
mod tests;

pub use cdr::{Cdr, CdrLeg, Disposition, MediaCounters};
pub use engine::forward::{ForwardKind, UserFeatures};
pub use engine::{B2bua, EndedDialogCounts, MAX_ENDED};
pub use podpbx_sdp::{Family, Leg as MediaLeg, RemoteMedia};
pub use podpbx_sip::Flow;
pub use podpbx_sip::StatusCode;
pub use util::{parse_dtmf_info, rfc3339, unescape_user};

use bytes::Bytes;
use podpbx_sip::transaction::{ServerTxId, Timers};
use podpbx_sip::{Method, Peer, Transport};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A request that arrived in a server transaction.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Its server transaction: responses go through it.
    pub tx: ServerTxId,
    pub msg: &'a podpbx_sip::Message,
    /// The flow it came on.
    pub flow: Flow,
}

/// A registered contact of a user, as the registrar saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactTarget {
    /// The Contact URI (Request-URI of the INVITE).
    pub uri: String,
    /// Where the REGISTER came from: requests go there (symmetric signalling).
    pub flow: Flow,
}

/// Contact lookups and addresses, implemented over the registrar by the binary.
pub trait Directory {
    /// Current contacts of `user`, best first.
    fn contacts(&self, user: &str, now: Instant) -> Vec<ContactTarget>;
    /// Our pinned address for requests to `peer` over `transport`.
    fn local_addr(&self, transport: Transport, peer: IpAddr) -> Option<SocketAddr>;
    /// Where trunk `name` is reached (resolved host and port), if known.
    fn trunk_destination(&self, name: &str) -> Option<SocketAddr> {
        let _ = name;
        None
    }
    /// Whether trunk `name` may take calls now (registered, or needs no registration).
    fn trunk_available(&self, name: &str) -> bool {
        let _ = name;
        true
    }
}

/// A relay session handle, chosen by the [`MediaPort`].
pub type MediaId = u64;

/// Packet counters of one leg, as the relay saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    pub rtcp_packets: u64,
    pub forwarded_packets: u64,
    pub lost_packets: i64,
    pub jitter: Duration,
    /// SSRC changes in quick succession: several streams from the peer's one source (see
    /// `podpbx_media::StreamStats::ssrc_flaps`).
    pub ssrc_flaps: u64,
}

/// SRTP (SDES) keys of one relay leg: the suite (`a=crypto` name), the peer's master key and
/// salt (30 bytes, from its `a=crypto`), ours (30 bytes, in our `a=crypto` towards it).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpLegKeys {
    pub suite: String,
    pub remote: Vec<u8>,
    pub local: Vec<u8>,
}

impl std::fmt::Debug for SrtpLegKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpLegKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// The RTP relay, as the call layer uses it (one session per media stream, two legs each).
pub trait MediaPort {
    /// Allocates a session with leg A on family `a` and leg B on family `b`.
    fn allocate(&mut self, a: Family, b: Family) -> Result<MediaId, String>;
    /// Our RTP address on a leg (RTCP is the next port).
    fn local(&self, id: MediaId, leg: MediaLeg) -> Option<SocketAddr>;
    /// What the leg's peer announced in its SDP.
    fn set_remote(&mut self, id: MediaId, leg: MediaLeg, remote: RemoteMedia);
    /// The leg is on hold (hold-aware media timeout).
    fn set_hold(&mut self, id: MediaId, leg: MediaLeg, hold: bool);
    /// Sends an RFC 4733 event towards `leg`'s peer; false if impossible (no payload type).
    fn inject_dtmf(&mut self, id: MediaId, leg: MediaLeg, digit: char, duration: Duration) -> bool;
    /// Counters of what the relay received on `leg`.
    fn stats(&self, id: MediaId, leg: MediaLeg) -> LegStats;
    /// Releases the session (its ports).
    fn release(&mut self, id: MediaId);
    /// The SDES suites the relay can terminate, most preferred first (none: no SRTP).
    fn srtp_suites(&self) -> &[&'static str] {
        &[]
    }
    /// A fresh random 30-byte master key and salt for our `a=crypto` (None: no SRTP).
    fn srtp_key(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Terminates SRTP on `leg` with `keys` (None: plain RTP).
    fn set_srtp(&mut self, _id: MediaId, _leg: MediaLeg, _keys: Option<SrtpLegKeys>) {}
    /// Share (0.0..=1.0) of the relay's sessions or ports in use, whichever is higher: the core
    /// refuses new calls early when it nears 1 (overload control).
    fn load(&self) -> f64 {
        0.0
    }
    /// Gives back the room a load left in the port's own tables
    /// ([`podpbx_sip::capacity`]); called now and then, not per call.
    fn shrink(&mut self) {}
}

/// A session of podpbx's own media endpoint (voicemail, announcements).
pub type EndpointId = u64;

/// The codec the endpoint talks to the caller in.
pub use podpbx_voicemail::rtp::Codec;
/// What podpbx's media endpoint does with a call it answers.
pub use podpbx_voicemail::worker::Purpose as App;

/// podpbx's own media endpoint (`podpbx-voicemail`'s worker), as the call layer uses it: calls
/// answered by podpbx itself (voicemail, listening to a mailbox, a feature code's confirmation)
/// terminate their RTP there, not in the relay.
pub trait EndpointPort {
    /// Reserves a session and its RTP socket on our address of `family`; `Err` when every
    /// session is busy or the socket cannot be bound.
    fn open(&mut self, family: Family) -> Result<(EndpointId, SocketAddr), String>;
    /// Starts session `id` (the call is answered): RTP to and from `remote` in `codec`.
    fn start(&mut self, id: EndpointId, remote: SocketAddr, codec: Codec, app: App);
    /// The call ended on the caller's side (or otherwise): the session stops (a recording in
    /// progress is kept).
    fn stop(&mut self, id: EndpointId);
}

/// No media endpoint (tests, or it could not be started): voicemail steps fail over to the
/// next dialplan step.
#[derive(Debug, Default)]
pub struct NoEndpoint;

impl EndpointPort for NoEndpoint {
    fn open(&mut self, _family: Family) -> Result<(EndpointId, SocketAddr), String> {
        Err("no media endpoint".into())
    }
    fn start(&mut self, _id: EndpointId, _remote: SocketAddr, _codec: Codec, _app: App) {}
    fn stop(&mut self, _id: EndpointId) {}
}

/// Who places a new call, as decided by the shell (authentication happens there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local user (digest-authenticated, or identified by source address).
    User(String),
    /// A trunk; `did` is the number the provider delivered (Request-URI or To user).
    Trunk { name: String, did: Option<String> },
}

/// How a new INVITE's source is identified before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// From a trunk's `networks` (or its host) with a DID: no digest.
    Trunk { name: String, did: Option<String> },
    /// An `identify_by_source` user's address: no digest.
    User(String),
    /// From a trunk's `networks` but for none of its DIDs: answered `404`, never routed (a
    /// forged provider INVITE must not reach a local extension or go back out).
    NotADid { trunk: String },
    /// Needs digest authentication (407).
    Authenticate,
}

/// Identifies a request placed by the b2bua as a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a response through server transaction `tx`.
    Respond {
        tx: ServerTxId,
        status: StatusCode,
        data: Bytes,
    },
    /// Start a client transaction for this request; report its responses and failure with `id`.
    Request {
        id: ReqId,
        method: Method,
        branch: String,
        data: Bytes,
        peer: Peer,
    },
    /// Send outside any transaction (ACK for 2xx, 2xx retransmissions).
    Stateless { peer: Peer, data: Bytes },
    /// The b2bua no longer cares about this client transaction (e.g. an INVITE whose CANCEL
    /// never got a final answer): terminate it.
    Abandon { id: ReqId },
    /// A call ended: write its CDR.
    Cdr(Box<Cdr>),
}

/// B2BUA settings from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `User-Agent`/`Server` header value (empty: not sent).
    pub user_agent: String,
    /// Our SIP domain (From/To hosts towards phones).
    pub domain: String,
    /// RFC 3261 timers (2xx retransmission, ACK wait, cleanup guards).
    pub timers: Timers,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            user_agent: "podpbx".into(),
            domain: "localhost".into(),
            timers: Timers::default(),
        }
    }
}
