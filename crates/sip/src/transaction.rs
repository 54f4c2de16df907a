//! RFC 3261 §17 transactions, with the RFC 6026 corrections, as a sans-IO state machine.
//!
//! [`TransactionLayer`] owns every client and server transaction. It never reads the clock and
//! never touches a socket: callers pass `now` and received messages in, and pull bytes to send
//! ([`TransactionLayer::poll_transmit`]), events for the TU ([`TransactionLayer::poll_event`]) and
//! the next deadline ([`TransactionLayer::poll_timeout`]) out, in the style of quinn-proto.
//!
//! Matching (§17.1.3, §17.2.3):
//! * client transactions are keyed by (top Via branch, CSeq method);
//! * server transactions by (branch, top Via sent-by, method), with ACK looked up under INVITE so
//!   the ACK for a non-2xx final response lands in the INVITE server transaction.
//!
//! Requests whose branch lacks the RFC 3261 magic cookie (RFC 2543 peers) get a synthetic branch
//! built from Request-URI, From tag, Call-ID, CSeq number and the raw top Via (§17.2.3 fallback).
//! The To tag is deliberately left out: the ACK for a non-2xx carries the tag our TU put in the
//! response, which this layer never parses, and a UAS has at most one server transaction per
//! INVITE anyway, so the remaining fields are already unique.
//!
//! Every entry point also exists in a parser-free form (`*_info`) that takes the few fields
//! matching needs, so the machines can be driven without a [`Message`].
//!
//! # Memory, not a count, is bounded
//!
//! The table is bounded by the bytes it holds ([`Limits::max_bytes`]): keys (copied out of the
//! received datagram, so a transaction never pins the receive buffer), the messages it must be
//! able to send again, and a fixed charge per entry for the bookkeeping. Transactions are of two
//! kinds:
//!
//! * **live**: they still have work to do (a request or a response to retransmit, a TU that has
//!   not answered): server Trying/Proceeding, INVITE server Completed (Timers G/H), client
//!   Calling/Trying/Proceeding. Only these can make a new request fail: beyond the bound a new
//!   transaction is refused ([`RequestDisposition::Overloaded`], the core answers `503`). BYE,
//!   CANCEL and in-dialog requests may use a reserve of a quarter above it, because they end or
//!   keep alive what already holds resources. Each source (an IPv4 address, an IPv6 /64) may
//!   hold at most [`Limits::source_bytes`] of live server transactions, so one source cannot
//!   fill the table.
//! * **lingering**: they only absorb retransmissions after their final answer (Timers D, I, J,
//!   K, L, M): the key, and the one message to send again (the final response of a non-INVITE
//!   server transaction, the ACK of a non-2xx). Requests are dropped as soon as they need not be
//!   retransmitted. When the table is over its bound, lingering state is evicted, oldest first,
//!   in the order of least harm: Timer J entries first (a retransmitted request is then simply
//!   processed again, as a stateless server would: the registrar answers a repeated REGISTER the
//!   same way), Timer M entries last (they let the TU ACK a retransmitted 2xx). Eviction never
//!   fails a request.
//!
//! An INVITE server transaction in Accepted (RFC 6026 Timer L) lingers 64*T1 only until the ACK
//! for its 2xx arrives: the ACK proves the 2xx arrived, after which a retransmitted INVITE can only
//! be one delayed in the network, at most T4, so the transaction then lingers T4.
//!
//! Timers: live timers (A, B, E, F, G, H and the unanswered-request guard) sit in an ordered map,
//! O(log n) per event; lingering deadlines, whose durations are fixed per kind, sit in one FIFO
//! queue per kind, O(1) per event.

pub use crate::flow::{Peer, Transport};
use crate::{Framing, Message, Method};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The RFC 3261 branch prefix (§8.1.1.7); branches without it come from RFC 2543 peers.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Timer D for unreliable transports: fixed at 32 s by RFC 3261 Table 4, not derived from T1.
const TIMER_D_UNRELIABLE: Duration = Duration::from_secs(32);

/// A floor for configured timer values: a zero T1/T2 would re-arm a retransmission timer at the
/// instant it fired and spin `handle_timeout` forever.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// RFC 3261 timer base values (§17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate; base of A, B, E, F, G, H, J, L, M.
    pub t1: Duration,
    /// Cap on non-INVITE request and INVITE response retransmission intervals.
    pub t2: Duration,
    /// Maximum time a message stays in the network; Timers I and K.
    pub t4: Duration,
}

impl Default for Timers {
    /// The RFC 3261 defaults: T1 = 500 ms, T2 = 4 s, T4 = 5 s.
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    fn t1(&self) -> Duration {
        self.t1.max(MIN_INTERVAL)
    }
    fn t2(&self) -> Duration {
        self.t2.max(MIN_INTERVAL)
    }
    /// 64*T1: Timers B, F, H, J (unreliable), L, M.
    fn t1x64(&self) -> Duration {
        self.t1().saturating_mul(64)
    }
    /// 4*T1: the brief Timer J of [`TransactionLayer::send_response_brief`].
    fn t1x4(&self) -> Duration {
        self.t1().saturating_mul(4)
    }
}

/// Identifies a client transaction for the lifetime of the layer (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(u64);

/// Identifies a server transaction for the lifetime of the layer (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(u64);

impl ClientTxId {
    /// The raw number, for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl ServerTxId {
    /// The raw number, for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Either kind of transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxId {
    /// A client transaction.
    Client(ClientTxId),
    /// A server transaction.
    Server(ServerTxId),
}

/// Client transaction key (§17.1.3): branch of our top Via plus CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The branch we put in the top Via.
    pub branch: Bytes,
    /// CSeq method; CANCEL shares the INVITE's branch, so the method keeps them apart.
    pub method: Method,
}

/// Server transaction key (§17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    /// Top Via branch (or the synthetic RFC 2543 key, see the module docs).
    pub branch: Bytes,
    /// Top Via sent-by, normalised as `host[:port]` with the host lower-cased.
    pub sent_by: Bytes,
    /// Request method, ACK folded into INVITE.
    pub method: Method,
}

impl ServerKey {
    /// Builds a key, folding ACK into INVITE so it matches the INVITE server transaction.
    pub fn new(branch: Bytes, sent_by: Bytes, method: &Method) -> ServerKey {
        let method = match method {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        ServerKey {
            branch,
            sent_by,
            method,
        }
    }
}

/// What matching needs from a received request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// Request method (from the start line).
    pub method: Method,
    /// Top Via branch, or a synthetic RFC 2543 key.
    pub branch: Bytes,
    /// Normalised top Via sent-by (`host[:port]`, host lower-cased).
    pub sent_by: Bytes,
}

/// What matching needs from a received response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseInfo {
    /// Status code.
    pub status: u16,
    /// Top Via branch.
    pub branch: Bytes,
    /// CSeq method.
    pub method: Method,
}

/// Why a message or a TU call was rejected by the transaction layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// A header needed for matching is missing or malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The message is a response where a request was expected, or vice versa.
    #[error("wrong message kind")]
    WrongKind,
    /// No such transaction (it terminated, or never existed).
    #[error("unknown transaction")]
    UnknownTransaction,
    /// Status code outside 100..=699.
    #[error("invalid status code {0}")]
    InvalidStatus(u16),
    /// The transaction already sent its final response (or, for a client, is not INVITE).
    #[error("final response already sent")]
    FinalAlreadySent,
    /// The table is at its bound (see [`Limits`]).
    #[error("transaction table full")]
    Overloaded,
    /// A client transaction with this branch and method already exists.
    #[error("duplicate transaction")]
    Duplicate,
    /// ACK never forms a client transaction (§17.1.1.3 builds the non-2xx ACK here; the TU sends
    /// the 2xx ACK itself, §13.2.2.4).
    #[error("ACK is not a transaction")]
    AckIsNotATransaction,
}

impl RequestInfo {
    /// Extracts the matching fields of a request (RFC 2543 fallback included).
    pub fn from_message(msg: &Message) -> Result<RequestInfo, TxError> {
        let crate::StartLine::Request { method, uri, .. } = &msg.start else {
            return Err(TxError::WrongKind);
        };
        let via = msg.top_via_ref().map_err(|_| TxError::Malformed("Via"))?;
        let sent_by = sent_by_key(&via.host, via.port);
        let branch = match via.branch() {
            Some(b) if has_magic_cookie(&b) => b,
            _ => {
                // §17.2.3 RFC 2543 fallback; see the module docs for why the To tag is omitted.
                let from_tag = msg
                    .from_ref()
                    .map_err(|_| TxError::Malformed("From"))?
                    .tag()
                    .unwrap_or_default();
                let call_id = msg.call_id().map_err(|_| TxError::Malformed("Call-ID"))?;
                let cseq = msg.cseq().map_err(|_| TxError::Malformed("CSeq"))?;
                let seq = cseq.seq.to_string();
                let mut k = Vec::with_capacity(
                    16 + uri.len() + from_tag.len() + call_id.len() + via.raw.len(),
                );
                // A leading byte no RFC 3261 branch can start with keeps the two key spaces apart.
                k.extend_from_slice(b"\x002543\x00");
                for part in [
                    uri.as_ref(),
                    from_tag.as_ref(),
                    call_id.as_ref(),
                    seq.as_bytes(),
                    via.raw.as_ref(),
                ] {
                    k.extend_from_slice(part);
                    k.push(0);
                }
                Bytes::from(k)
            }
        };
        Ok(RequestInfo {
            method: method.clone(),
            branch,
            sent_by,
        })
    }
}

impl ResponseInfo {
    /// Extracts the matching fields of a response.
    pub fn from_message(msg: &Message) -> Result<ResponseInfo, TxError> {
        let status = msg.status().ok_or(TxError::WrongKind)?;
        let via = msg.top_via_ref().map_err(|_| TxError::Malformed("Via"))?;
        let branch = via.branch().ok_or(TxError::Malformed("Via branch"))?;
        let cseq = msg.cseq().map_err(|_| TxError::Malformed("CSeq"))?;
        Ok(ResponseInfo {
            status,
            branch,
            method: cseq.method,
        })
    }
}

/// True if a branch carries the RFC 3261 magic cookie. Compared case-insensitively: a few
/// deployed UAs lower-case it, and a false "RFC 3261" verdict only picks the stricter key.
pub fn has_magic_cookie(branch: &[u8]) -> bool {
    branch.len() >= MAGIC_COOKIE.len()
        && branch[..MAGIC_COOKIE.len()].eq_ignore_ascii_case(MAGIC_COOKIE.as_bytes())
}

/// Normalised `host[:port]` sent-by for [`ServerKey`]; names compare case-insensitively (§19.1.4).
pub fn sent_by_key(host: &crate::Host, port: Option<u16>) -> Bytes {
    let mut s = host.to_string();
    s.make_ascii_lowercase();
    if let Some(p) = port {
        s.push(':');
        s.push_str(&p.to_string());
    }
    Bytes::from(s)
}

/// What the layer did with a received request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new server transaction: deliver the request to the TU.
    New(ServerTxId),
    /// A retransmission, absorbed; the last response (if any) has been queued again.
    Retransmission(ServerTxId),
    /// ACK for a non-2xx final response, absorbed by the INVITE server transaction (§17.2.1).
    AckAbsorbed(ServerTxId),
    /// An ACK with no transaction to absorb it: the ACK for a 2xx (its own transaction,
    /// §17.1.1.3) or a stray ACK. The TU/dialog layer decides.
    AckFor2xx,
    /// A new CANCEL server transaction `tx`; `target` is the INVITE server transaction it
    /// cancels (§9.2), `None` if there is none (the TU answers 481).
    Cancel {
        /// The CANCEL's own (non-INVITE) server transaction, for the TU's 200/481.
        tx: ServerTxId,
        /// The matching INVITE server transaction.
        target: Option<ServerTxId>,
    },
    /// The table is at its bound, or the request's source holds its whole share of it: the core
    /// should answer 503 statelessly.
    Overloaded,
    /// The request lacks what matching needs (e.g. no Via): the core drops it or answers 400.
    Invalid(TxError),
}

/// What the layer did with a received response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// Pass the response to the TU owning this client transaction.
    Deliver(ClientTxId),
    /// A retransmission absorbed by the transaction (for an INVITE non-2xx, the ACK was re-sent).
    Absorbed(ClientTxId),
    /// Matches no transaction; stray responses are dropped, never answered (§18.1.2).
    Stray,
}

/// Something the TU needs to know that did not come from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// Timer B or F (client: synthesise 408, §8.1.3.1), Timer H (server: the ACK never came,
    /// §17.2.1), or a non-INVITE server transaction the TU never answered within 64*T1.
    Timeout(TxId),
    /// The transport reported a failure for this transaction's peer (§17.1.4, §17.2.4).
    TransportError(TxId),
    /// The transaction is gone; its id will never appear again.
    Terminated(TxId),
}

/// Bytes to send to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination flow.
    pub peer: Peer,
    /// The whole message.
    pub data: Bytes,
}

/// Client transaction states (Terminated transactions are removed, so they have no variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet (Timers A, B).
    Calling,
    /// Non-INVITE sent, no response yet (Timers E, F).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final (non-2xx for INVITE) response arrived (Timers D, K).
    Completed,
    /// INVITE got a 2xx; later 2xx from other forks still reach the TU (RFC 6026, Timer M).
    Accepted,
}

/// Server transaction states (Terminated transactions are removed, so they have no variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, TU has not answered yet.
    Trying,
    /// Provisional sent (INVITE server starts here).
    Proceeding,
    /// Final response sent (non-2xx for INVITE: Timers G, H; non-INVITE: Timer J).
    Completed,
    /// INVITE non-2xx acknowledged (Timer I).
    Confirmed,
    /// INVITE answered with 2xx (RFC 6026, Timer L).
    Accepted,
}

/// Bounds of the table (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes all transactions together may hold: keys, kept messages and a fixed charge per entry.
    pub max_bytes: usize,
    /// Bytes the live server transactions of one source (IPv4 address, IPv6 /64) may hold.
    pub source_bytes: usize,
}

impl Limits {
    /// `max_bytes` in all, a quarter of it per source.
    pub fn new(max_bytes: usize) -> Limits {
        Limits {
            max_bytes,
            source_bytes: max_bytes / 4,
        }
    }
}

impl Default for Limits {
    /// 32 MiB: about 60 000 transactions holding a 300-byte message each.
    fn default() -> Limits {
        Limits::new(32 << 20)
    }
}

/// Counters and gauges of the table, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Transactions with work left (retransmissions, an unanswered request).
    pub live: usize,
    /// Transactions that only absorb retransmissions (Timers D, I, J, K, L, M).
    pub lingering: usize,
    /// Bytes held by live transactions.
    pub live_bytes: usize,
    /// Bytes held in all.
    pub bytes: usize,
    /// The bound ([`Limits::max_bytes`]).
    pub max_bytes: usize,
    /// The per-source bound ([`Limits::source_bytes`]).
    pub source_bytes: usize,
    /// Sources holding live server transactions now.
    pub sources: usize,
    /// Room in the client and server tables (entries), which stays after a load until
    /// [`TransactionLayer::shrink`] gives it back.
    pub slots: usize,
    /// Lingering transactions evicted early to stay within the bound (since start).
    pub evicted: u64,
    /// New transactions refused because the table was at its bound (since start).
    pub refused: u64,
    /// New transactions refused because their source held its share (since start).
    pub refused_source: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    A,
    B,
    E,
    F,
    G,
    H,
    /// Non-INVITE server transaction left unanswered by the TU (not in the RFC; bounds memory).
    Guard,
}

type TimerKey = (Instant, u64);

#[derive(Debug, Clone, Copy)]
struct TimerEntry {
    tx: TxId,
    kind: TimerKind,
}

/// Deadlines ordered by (instant, sequence); the sequence breaks ties in arming order.
#[derive(Debug, Default)]
struct TimerQueue {
    map: BTreeMap<TimerKey, TimerEntry>,
    seq: u64,
}

impl TimerQueue {
    /// Arms a timer and returns its key, or `None` if the deadline overflows `Instant` (it would
    /// never fire anyway).
    fn arm(&mut self, now: Instant, after: Duration, entry: TimerEntry) -> Option<TimerKey> {
        let at = now.checked_add(after)?;
        self.seq = self.seq.wrapping_add(1);
        let key = (at, self.seq);
        self.map.insert(key, entry);
        Some(key)
    }

    fn cancel(&mut self, slot: &mut Option<TimerKey>) {
        if let Some(k) = slot.take() {
            self.map.remove(&k);
        }
    }
}

/// Why a transaction lingers; one FIFO queue each (their durations are fixed), evicted in the
/// order of [`EVICTION_ORDER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// Non-INVITE server Completed (Timer J): keeps the final response.
    J,
    /// The same for 4*T1 only ([`TransactionLayer::send_response_brief`]).
    JBrief,
    /// INVITE client Completed (Timer D): keeps the ACK.
    D,
    /// Non-INVITE client Completed (Timer K).
    K,
    /// INVITE server Confirmed (Timer I).
    I,
    /// INVITE server Accepted whose 2xx was acknowledged (T4, see the module docs).
    LAcked,
    /// INVITE server Accepted (Timer L).
    L,
    /// INVITE client Accepted (Timer M): a retransmitted 2xx still reaches the TU.
    M,
}

const LINGER_KINDS: usize = 8;

/// Least harm first: see the module docs.
const EVICTION_ORDER: [Linger; LINGER_KINDS] = [
    Linger::J,
    Linger::JBrief,
    Linger::D,
    Linger::K,
    Linger::I,
    Linger::LAcked,
    Linger::L,
    Linger::M,
];

impl Linger {
    fn idx(self) -> usize {
        self as usize
    }
}

/// One FIFO of lingering deadlines; entries of transactions that left early (terminated,
/// evicted, re-queued) stay as stale entries until they reach the front or a compaction.
#[derive(Debug, Default)]
struct LingerQueue {
    q: VecDeque<(Instant, TxId)>,
    /// Entries that are still valid.
    valid: usize,
}

/// A slab with generation-tagged ids: O(1) access without hashing, and an id is not reused
/// before its slot has been reused 2^32 times.
#[derive(Debug)]
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
    /// The generation a slot appended at the end starts at: above every id that slots cut off
    /// by [`Slab::compact`] handed out.
    floor: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            floor: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, v: T) -> u64 {
        self.len += 1;
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].1 = Some(v);
                i
            }
            None => {
                self.slots.push((self.floor, Some(v)));
                (self.slots.len() - 1) as u32
            }
        };
        (u64::from(self.slots[idx as usize].0) << 32) | u64::from(idx)
    }

    fn split(id: u64) -> (u32, usize) {
        ((id >> 32) as u32, (id & 0xffff_ffff) as usize)
    }

    fn get(&self, id: u64) -> Option<&T> {
        let (gen, idx) = Self::split(id);
        match self.slots.get(idx) {
            Some((g, Some(v))) if *g == gen => Some(v),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (gen, idx) = Self::split(id);
        match self.slots.get_mut(idx) {
            Some((g, Some(v))) if *g == gen => Some(v),
            _ => None,
        }
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let (gen, idx) = Self::split(id);
        let slot = self.slots.get_mut(idx)?;
        if slot.0 != gen || slot.1.is_none() {
            return None;
        }
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(idx as u32);
        self.len -= 1;
        slot.1.take()
    }

    /// Gives back the room of a load that has passed, when at most a quarter of it is used
    /// ([`crate::capacity`]): cuts the vacant slots off the end and shrinks. The free list is
    /// then sorted so that the lowest slots are reused first: the live entries gather at the
    /// front, and a later compaction can cut behind them once the load's stragglers (lingering
    /// for up to 32 s) are gone. True if it shrank anything.
    fn compact(&mut self) -> bool {
        let Some(to) = crate::capacity::shrunk(self.len, self.slots.capacity()) else {
            return false;
        };
        while let Some((gen, None)) = self.slots.last() {
            // A removal bumped `gen` past every id this slot handed out.
            self.floor = self.floor.max(*gen);
            self.slots.pop();
        }
        let end = self.slots.len() as u32;
        self.free.retain(|&i| i < end);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        // Down to the last live slot at most: a straggler at the end keeps the room below it.
        self.slots.shrink_to(to);
        self.free.shrink_to(to);
        true
    }

    fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (g, v))| v.as_ref().map(|v| ((u64::from(*g) << 32) | i as u64, v)))
    }
}

/// Bytes charged for an entry's bookkeeping besides its key and messages: its slab slot, its
/// key-map entry (with the hash table's spare room), a timer entry and an allocator header for
/// the key.
fn overhead<T>() -> usize {
    std::mem::size_of::<(u32, Option<T>)>() + 64
}

/// Bytes a kept message costs: its length and the shared buffer header.
fn msg_cost(b: &Option<Bytes>) -> usize {
    b.as_ref().map_or(0, |b| b.len() + 32)
}

/// Live server transactions are charged to their source: the address, an IPv6 address by /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct ClientTx {
    key: ClientKey,
    state: ClientState,
    peer: Peer,
    /// The request as sent, while it may be retransmitted or, for INVITE, parsed to build the
    /// ACK of a non-2xx; dropped once the transaction lingers.
    request: Option<Bytes>,
    /// The ACK for a non-2xx final response, kept to answer retransmitted finals (§17.1.1.2).
    ack: Option<Bytes>,
    /// Current retransmission interval (A or E).
    interval: Duration,
    /// Timer A or E.
    retrans: Option<TimerKey>,
    /// Timer B or F.
    life: Option<TimerKey>,
    /// Set once the transaction only absorbs retransmissions: why, and until when.
    linger: Option<(Linger, Instant)>,
    /// Bytes charged for this entry.
    cost: usize,
}

impl ClientTx {
    fn is_invite(&self) -> bool {
        self.key.method == Method::Invite
    }

    fn cost(&self) -> usize {
        overhead::<ClientTx>()
            + self.key.branch.len()
            + msg_cost(&self.request)
            + msg_cost(&self.ack)
    }
}

#[derive(Debug)]
struct ServerTx {
    /// The key (see [`push_server_key`]), one allocation shared with the key map.
    key: Arc<[u8]>,
    /// Request method, ACK folded into INVITE.
    method: Method,
    state: ServerState,
    peer: Peer,
    /// The source the transaction is charged to while live.
    source: IpAddr,
    /// Most recent provisional or final response, re-sent on request retransmissions.
    last_response: Option<Bytes>,
    /// Current Timer G interval.
    interval: Duration,
    /// Timer G.
    retrans: Option<TimerKey>,
    /// Timer H or the guard.
    life: Option<TimerKey>,
    /// Set once the transaction only absorbs retransmissions: why, and until when.
    linger: Option<(Linger, Instant)>,
    /// Bytes charged for this entry.
    cost: usize,
}

impl ServerTx {
    fn is_invite(&self) -> bool {
        self.method == Method::Invite
    }

    fn cost(&self) -> usize {
        overhead::<ServerTx>() + self.key.len() + msg_cost(&self.last_response)
    }
}

/// Writes the server key of (method, sent-by, branch) into `buf`: `METHOD \0 sent-by \0 branch`.
/// Methods are tokens and sent-by a host and port, neither holds a NUL, so the encoding is
/// unambiguous whatever the branch (the RFC 2543 keys contain NULs).
fn push_server_key(buf: &mut Vec<u8>, method: &Method, sent_by: &[u8], branch: &[u8]) {
    buf.clear();
    let m = match method {
        Method::Ack => &Method::Invite,
        m => m,
    };
    buf.extend_from_slice(m.as_str().as_bytes());
    buf.push(0);
    buf.extend_from_slice(sent_by);
    buf.push(0);
    buf.extend_from_slice(branch);
}

/// Appends the normalised sent-by of [`sent_by_key`] without allocating.
fn push_sent_by(buf: &mut Vec<u8>, host: &crate::Host, port: Option<u16>) {
    // Written as `Host`'s Display does (IPv6 in brackets), without the formatting machinery.
    match host {
        crate::Host::Name(n) => {
            let start = buf.len();
            buf.extend_from_slice(n);
            buf[start..].make_ascii_lowercase();
        }
        crate::Host::V4(a) => crate::text::put_ipv4(buf, *a),
        crate::Host::V6(a) => crate::text::put_host_ip(buf, std::net::IpAddr::V6(*a)),
    }
    if let Some(p) = port {
        buf.push(b':');
        crate::text::put_decimal(buf, u64::from(p));
    }
}

/// The transaction table: all client and server transactions, their timers and output queues.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: Timers,
    limits: Limits,
    clients: Slab<ClientTx>,
    client_keys: HashMap<ClientKey, u64>,
    servers: Slab<ServerTx>,
    server_keys: HashMap<Arc<[u8]>, u64>,
    tq: TimerQueue,
    lingering: [LingerQueue; LINGER_KINDS],
    /// Bytes held by all transactions, and by the live ones.
    bytes: usize,
    live_bytes: usize,
    /// Live server transactions' bytes per source.
    by_source: HashMap<IpAddr, usize>,
    evicted: u64,
    refused: u64,
    refused_source: u64,
    /// Scratch space for server keys (no allocation per lookup).
    scratch: Vec<u8>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl TransactionLayer {
    /// Creates a layer bounded by `limits`.
    pub fn new(timers: Timers, limits: Limits) -> TransactionLayer {
        TransactionLayer {
            timers,
            limits,
            clients: Slab::default(),
            client_keys: HashMap::new(),
            servers: Slab::default(),
            server_keys: HashMap::new(),
            tq: TimerQueue::default(),
            lingering: Default::default(),
            bytes: 0,
            live_bytes: 0,
            by_source: HashMap::new(),
            evicted: 0,
            refused: 0,
            refused_source: 0,
            scratch: Vec::with_capacity(128),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The timer configuration.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of transactions, live and lingering.
    pub fn len(&self) -> usize {
        self.clients.len + self.servers.len
    }

    /// True if no transaction exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gauges and counters for metrics.
    pub fn stats(&self) -> TxStats {
        let lingering = self.lingering.iter().map(|q| q.valid).sum::<usize>();
        TxStats {
            live: self.len() - lingering,
            lingering,
            live_bytes: self.live_bytes,
            bytes: self.bytes,
            max_bytes: self.limits.max_bytes,
            source_bytes: self.limits.source_bytes,
            sources: self.by_source.len(),
            slots: self.clients.capacity() + self.servers.capacity(),
            evicted: self.evicted,
            refused: self.refused,
            refused_source: self.refused_source,
        }
    }

    /// Gives back the room a load left in the tables ([`crate::capacity`]); for a periodic
    /// tick, not per message (it may move every entry). True if anything shrank.
    pub fn shrink(&mut self) -> bool {
        use crate::capacity::{shrink_deque, shrink_map};
        let mut shrank = self.clients.compact();
        shrank |= self.servers.compact();
        shrank |= shrink_map(&mut self.client_keys);
        shrank |= shrink_map(&mut self.server_keys);
        shrank |= shrink_map(&mut self.by_source);
        for q in &mut self.lingering {
            shrank |= shrink_deque(&mut q.q);
        }
        shrank |= shrink_deque(&mut self.transmits);
        shrank |= shrink_deque(&mut self.events);
        shrank
    }

    /// Share of the bound held by live transactions (0.0 idle, 1.0 full): the core sheds new
    /// calls and registrations before new transactions start failing.
    pub fn load(&self) -> f64 {
        if self.limits.max_bytes == 0 {
            return 1.0;
        }
        self.live_bytes as f64 / self.limits.max_bytes as f64
    }

    /// State of a client transaction, `None` once terminated.
    pub fn client_state(&self, id: ClientTxId) -> Option<ClientState> {
        self.clients.get(id.0).map(|t| t.state)
    }

    /// State of a server transaction, `None` once terminated.
    pub fn server_state(&self, id: ServerTxId) -> Option<ServerState> {
        self.servers.get(id.0).map(|t| t.state)
    }

    /// Method of a server transaction (ACK never has one), `None` once terminated.
    pub fn server_method(&self, id: ServerTxId) -> Option<&Method> {
        self.servers.get(id.0).map(|t| &t.method)
    }

    /// Peer a server transaction answers to, `None` once terminated.
    pub fn server_peer(&self, id: ServerTxId) -> Option<Peer> {
        self.servers.get(id.0).map(|t| t.peer)
    }

    /// Looks up the server transaction a key belongs to.
    pub fn find_server(&mut self, key: &ServerKey) -> Option<ServerTxId> {
        let mut buf = std::mem::take(&mut self.scratch);
        push_server_key(&mut buf, &key.method, &key.sent_by, &key.branch);
        let id = self
            .server_keys
            .get(buf.as_slice())
            .copied()
            .map(ServerTxId);
        self.scratch = buf;
        id
    }

    /// Looks up the client transaction a key belongs to.
    pub fn find_client(&self, key: &ClientKey) -> Option<ClientTxId> {
        self.client_keys.get(key).copied().map(ClientTxId)
    }

    /// The live bound for a new transaction: BYE, CANCEL and in-dialog requests end or keep
    /// alive what already holds resources (calls, media ports), so they may use a reserve of a
    /// quarter above the bound; refusing them under load would leave calls up until a timeout.
    fn limit_for(&self, method: &Method, in_dialog: bool) -> (usize, usize) {
        let l = self.limits;
        if in_dialog || matches!(method, Method::Bye | Method::Cancel) {
            (
                l.max_bytes.saturating_add(l.max_bytes / 4),
                l.source_bytes.saturating_add(l.source_bytes / 4),
            )
        } else {
            (l.max_bytes, l.source_bytes)
        }
    }

    // ----- accounting ----------------------------------------------------------------------

    /// Charges a live server transaction's new cost (`old` before the change).
    fn charge_live_server(&mut self, source: IpAddr, old: usize, new: usize) {
        self.bytes = self.bytes - old + new;
        self.live_bytes = self.live_bytes - old + new;
        let e = self.by_source.entry(source).or_insert(0);
        *e = *e - old + new;
        if *e == 0 {
            self.by_source.remove(&source);
        }
    }

    /// Moves a server transaction out of the live accounting (lingering or gone).
    fn unlive_server(&mut self, source: IpAddr, cost: usize) {
        self.live_bytes -= cost;
        if let Some(e) = self.by_source.get_mut(&source) {
            *e -= cost;
            if *e == 0 {
                self.by_source.remove(&source);
            }
        }
    }

    /// Queues a lingering deadline and evicts lingering state while the table is over its bound.
    fn push_linger(&mut self, kind: Linger, at: Instant, id: TxId) {
        let q = &mut self.lingering[kind.idx()];
        q.q.push_back((at, id));
        q.valid += 1;
        // Stale entries (transactions that left the queue early) are dropped when they reach the
        // front; when they outnumber the valid ones, at once (amortised O(1) per entry).
        if q.q.len() > 2 * q.valid + 1024 {
            let (clients, servers) = (&self.clients, &self.servers);
            q.q.retain(|(at, id)| linger_valid(clients, servers, kind, *at, *id));
        }
    }

    /// Evicts lingering transactions, least harmful kinds first and oldest first, until the
    /// table holds at most its bound.
    fn evict(&mut self) {
        for kind in EVICTION_ORDER {
            while self.bytes > self.limits.max_bytes {
                let Some((at, id)) = self.lingering[kind.idx()].q.pop_front() else {
                    break;
                };
                if linger_valid(&self.clients, &self.servers, kind, at, id) {
                    self.evicted += 1;
                    self.remove(id);
                }
            }
        }
    }

    /// Settles a server transaction's accounting after a change: its cost was `old` and it was
    /// live (`was_live`) before; it stays what it was, or starts lingering for `linger`.
    fn settle_server(
        &mut self,
        now: Instant,
        id: ServerTxId,
        was_live: bool,
        old: usize,
        linger: Option<(Linger, Duration)>,
    ) {
        let Some(tx) = self.servers.get_mut(id.0) else {
            return;
        };
        let new = tx.cost();
        let source = tx.source;
        match linger.filter(|_| was_live) {
            None if was_live => {
                tx.cost = new;
                self.charge_live_server(source, old, new);
            }
            None => {
                tx.cost = new;
                self.bytes = self.bytes - old + new;
            }
            Some((kind, after)) => match now.checked_add(after) {
                Some(at) => {
                    tx.cost = new;
                    tx.linger = Some((kind, at));
                    self.bytes = self.bytes - old + new;
                    self.unlive_server(source, old);
                    self.push_linger(kind, at, TxId::Server(id));
                }
                // A deadline beyond `Instant`: nothing to linger for.
                None => {
                    self.remove(TxId::Server(id));
                    return;
                }
            },
        }
        self.evict();
    }

    /// [`Self::settle_server`] for a client transaction.
    fn settle_client(
        &mut self,
        now: Instant,
        id: ClientTxId,
        was_live: bool,
        old: usize,
        linger: Option<(Linger, Duration)>,
    ) {
        let Some(tx) = self.clients.get_mut(id.0) else {
            return;
        };
        let new = tx.cost();
        match linger.filter(|_| was_live) {
            None => {
                tx.cost = new;
                self.bytes = self.bytes - old + new;
                if was_live {
                    self.live_bytes = self.live_bytes - old + new;
                }
            }
            Some((kind, after)) => match now.checked_add(after) {
                Some(at) => {
                    tx.cost = new;
                    tx.linger = Some((kind, at));
                    self.bytes = self.bytes - old + new;
                    self.live_bytes -= old;
                    self.push_linger(kind, at, TxId::Client(id));
                }
                None => {
                    self.remove(TxId::Client(id));
                    return;
                }
            },
        }
        self.evict();
    }

    // ----- server side -------------------------------------------------------------------

    /// Matches a received request; `peer` is where responses go (the transport layer applies
    /// §18.2.2/RFC 3581 before calling). `wire` is unused but kept for symmetry with the sender.
    /// The request is charged to `peer`'s address; see [`Self::on_request_from`].
    pub fn on_request(
        &mut self,
        now: Instant,
        msg: &Message,
        wire: Bytes,
        peer: Peer,
    ) -> RequestDisposition {
        let _ = wire;
        self.on_request_from(now, msg, peer, peer.addr.ip())
    }

    /// Matches a received request that arrived from `source` (the address it came from, which
    /// may differ from `peer`, where responses go).
    pub fn on_request_from(
        &mut self,
        now: Instant,
        msg: &Message,
        peer: Peer,
        source: IpAddr,
    ) -> RequestDisposition {
        let crate::StartLine::Request { method, .. } = &msg.start else {
            return RequestDisposition::Invalid(TxError::WrongKind);
        };
        let Ok(via) = msg.top_via_ref() else {
            return RequestDisposition::Invalid(TxError::Malformed("Via"));
        };
        let in_dialog = msg.to_ref().ok().and_then(|t| t.tag()).is_some();
        match via.branch() {
            Some(branch) if has_magic_cookie(&branch) => {
                // The common case, without allocating: the key straight into the scratch buffer.
                let mut buf = std::mem::take(&mut self.scratch);
                buf.clear();
                push_sent_by(&mut buf, &via.host, via.port);
                let sent_by = buf.clone();
                push_server_key(&mut buf, method, &sent_by, &branch);
                let d = self.on_request_key(
                    now, method, &buf, &branch, &sent_by, peer, source, in_dialog,
                );
                self.scratch = buf;
                d
            }
            _ => match RequestInfo::from_message(msg) {
                Ok(info) => self.on_request_info_from(now, info, peer, source, in_dialog),
                Err(e) => RequestDisposition::Invalid(e),
            },
        }
    }

    /// [`Self::on_request`] without a parsed message (charged to `peer`'s address, out of dialog).
    pub fn on_request_info(
        &mut self,
        now: Instant,
        info: RequestInfo,
        peer: Peer,
    ) -> RequestDisposition {
        self.on_request_info_from(now, info, peer, peer.addr.ip(), false)
    }

    /// [`Self::on_request_from`] without a parsed message; `in_dialog`: the request carries a To
    /// tag (it may use the reserve, see [`Limits`]).
    pub fn on_request_info_from(
        &mut self,
        now: Instant,
        info: RequestInfo,
        peer: Peer,
        source: IpAddr,
        in_dialog: bool,
    ) -> RequestDisposition {
        let mut buf = std::mem::take(&mut self.scratch);
        push_server_key(&mut buf, &info.method, &info.sent_by, &info.branch);
        let d = self.on_request_key(
            now,
            &info.method,
            &buf,
            &info.branch,
            &info.sent_by,
            peer,
            source,
            in_dialog,
        );
        self.scratch = buf;
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request_key(
        &mut self,
        now: Instant,
        method: &Method,
        key: &[u8],
        branch: &[u8],
        sent_by: &[u8],
        peer: Peer,
        source: IpAddr,
        in_dialog: bool,
    ) -> RequestDisposition {
        let is_ack = *method == Method::Ack;
        let is_cancel = *method == Method::Cancel;
        if let Some(&id) = self.server_keys.get(key) {
            return self.server_matched(now, ServerTxId(id), is_ack);
        }
        if is_ack {
            return RequestDisposition::AckFor2xx;
        }
        let target = if is_cancel {
            // §9.2: the CANCEL matches the INVITE with the same branch and sent-by.
            let mut ikey = Vec::with_capacity(key.len());
            push_server_key(&mut ikey, &Method::Invite, sent_by, branch);
            self.server_keys
                .get(ikey.as_slice())
                .copied()
                .map(ServerTxId)
        } else {
            None
        };
        let source = source_key(source);
        let (limit, source_limit) = self.limit_for(method, in_dialog);
        let key: Arc<[u8]> = key.into();
        let mut tx = ServerTx {
            key: key.clone(),
            method: match method {
                Method::Ack => Method::Invite,
                m => m.clone(),
            },
            // §17.2.1: the INVITE server transaction starts in Proceeding, non-INVITE in Trying.
            state: if *method == Method::Invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            peer,
            source,
            last_response: None,
            interval: self.timers.t1(),
            retrans: None,
            life: None,
            linger: None,
            cost: 0,
        };
        tx.cost = tx.cost();
        if self.live_bytes + tx.cost > limit {
            self.refused += 1;
            return RequestDisposition::Overloaded;
        }
        if self.by_source.get(&source).copied().unwrap_or(0) + tx.cost > source_limit {
            self.refused_source += 1;
            return RequestDisposition::Overloaded;
        }
        let invite = tx.is_invite();
        let cost = tx.cost;
        let id = ServerTxId(self.servers.insert(tx));
        self.server_keys.insert(key, id.0);
        self.charge_live_server(source, 0, cost);
        if !invite {
            // The client gives up after Timer F (64*T1), so an answer after that is useless;
            // dropping the transaction then keeps a silent TU from leaking table entries.
            let life = self.tq.arm(
                now,
                self.timers.t1x64(),
                TimerEntry {
                    tx: TxId::Server(id),
                    kind: TimerKind::Guard,
                },
            );
            if let Some(tx) = self.servers.get_mut(id.0) {
                tx.life = life;
            }
        }
        self.evict();
        if is_cancel {
            RequestDisposition::Cancel { tx: id, target }
        } else {
            RequestDisposition::New(id)
        }
    }

    fn server_matched(&mut self, now: Instant, id: ServerTxId, is_ack: bool) -> RequestDisposition {
        let Some(tx) = self.servers.get_mut(id.0) else {
            return RequestDisposition::AckFor2xx;
        };
        if is_ack {
            return match tx.state {
                ServerState::Completed => {
                    // §17.2.1: ACK stops G and H and starts I to absorb further ACKs.
                    tx.state = ServerState::Confirmed;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    if tx.peer.transport.is_reliable() {
                        self.terminate_server(id);
                    } else {
                        // Nothing is re-sent in Confirmed: the response goes.
                        let (old, was_live) = (tx.cost, tx.linger.is_none());
                        tx.last_response = None;
                        let t4 = self.timers.t4;
                        self.settle_server(now, id, was_live, old, Some((Linger::I, t4)));
                    }
                    RequestDisposition::AckAbsorbed(id)
                }
                // RFC 6026 §8.7: an ACK reaching an Accepted transaction goes to the TU. The 2xx
                // arrived: from now on only a delayed INVITE can come, within T4.
                ServerState::Accepted => {
                    if let Some((Linger::L, until)) = tx.linger {
                        if let Some(at) = now.checked_add(self.timers.t4).filter(|a| *a < until) {
                            self.lingering[Linger::L.idx()].valid -= 1;
                            tx.linger = Some((Linger::LAcked, at));
                            self.push_linger(Linger::LAcked, at, TxId::Server(id));
                        }
                    }
                    RequestDisposition::AckFor2xx
                }
                // Confirmed absorbs ACK retransmissions; an ACK before any final response
                // acknowledges nothing, so it is dropped here too.
                _ => RequestDisposition::AckAbsorbed(id),
            };
        }
        match tx.state {
            // §17.2.1/§17.2.2: re-send the latest provisional or final response.
            ServerState::Proceeding | ServerState::Completed => {
                if let Some(r) = &tx.last_response {
                    self.transmits.push_back(Transmit {
                        peer: tx.peer,
                        data: r.clone(),
                    });
                }
            }
            // Trying has nothing to re-send; Confirmed absorbs; Accepted absorbs too because
            // the TU, not the transaction, retransmits the 2xx (RFC 6026 §8.7, §13.3.1.4).
            ServerState::Trying | ServerState::Confirmed | ServerState::Accepted => {}
        }
        RequestDisposition::Retransmission(id)
    }

    /// Sends a response from the TU through server transaction `id`.
    pub fn send_response(
        &mut self,
        now: Instant,
        id: ServerTxId,
        status: u16,
        wire: Bytes,
    ) -> Result<(), TxError> {
        self.respond(now, id, status, wire, false)
    }

    /// [`Self::send_response`], but a non-INVITE final response over an unreliable transport
    /// lingers 4*T1 (2 s) instead of Timer J's 64*T1 (32 s): it absorbs the retransmissions at
    /// T1 and 3*T1 that a lost or late response causes, and a later one is a new request to the
    /// TU. For requests the TU answers again without harm (REGISTER: RFC 3261 §10.3), so that
    /// a high rate of them does not fill the table with completed transactions.
    pub fn send_response_brief(
        &mut self,
        now: Instant,
        id: ServerTxId,
        status: u16,
        wire: Bytes,
    ) -> Result<(), TxError> {
        self.respond(now, id, status, wire, true)
    }

    fn respond(
        &mut self,
        now: Instant,
        id: ServerTxId,
        status: u16,
        wire: Bytes,
        brief: bool,
    ) -> Result<(), TxError> {
        if !(100..=699).contains(&status) {
            return Err(TxError::InvalidStatus(status));
        }
        let t = self.timers;
        let tx = self
            .servers
            .get_mut(id.0)
            .ok_or(TxError::UnknownTransaction)?;
        let reliable = tx.peer.transport.is_reliable();
        let entry = |kind| TimerEntry {
            tx: TxId::Server(id),
            kind,
        };
        let (old, was_live) = (tx.cost, tx.linger.is_none());
        // What the transaction becomes: still live, lingering (kind, duration), or gone.
        let mut linger: Option<(Linger, Duration)> = None;
        let mut terminate = false;
        if tx.is_invite() {
            match (tx.state, status) {
                (ServerState::Proceeding, 100..=199) => {
                    tx.last_response = Some(wire.clone());
                }
                (ServerState::Proceeding, 200..=299) => {
                    // RFC 6026 §8.5: Accepted, not Terminated, so INVITE retransmissions are
                    // absorbed rather than seen as new requests while the TU retransmits the 2xx.
                    tx.state = ServerState::Accepted;
                    tx.last_response = None;
                    linger = Some((Linger::L, t.t1x64()));
                }
                (ServerState::Proceeding, _) => {
                    tx.state = ServerState::Completed;
                    tx.last_response = Some(wire.clone());
                    if !reliable {
                        tx.interval = t.t1();
                        tx.retrans = self.tq.arm(now, tx.interval, entry(TimerKind::G));
                    }
                    tx.life = self.tq.arm(now, t.t1x64(), entry(TimerKind::H));
                }
                // RFC 6026 §8.7: 2xx retransmissions from the TU pass straight through.
                (ServerState::Accepted, 200..=299) => {}
                _ => return Err(TxError::FinalAlreadySent),
            }
        } else {
            match (tx.state, status) {
                (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                    tx.state = ServerState::Proceeding;
                    tx.last_response = Some(wire.clone());
                }
                (ServerState::Trying | ServerState::Proceeding, _) => {
                    // §17.2.2: Completed keeps the final response for retransmitted requests
                    // for Timer J (64*T1 unreliable, zero reliable).
                    tx.state = ServerState::Completed;
                    self.tq.cancel(&mut tx.life);
                    if reliable {
                        terminate = true;
                    } else {
                        tx.last_response = Some(wire.clone());
                        linger = Some(if brief {
                            (Linger::JBrief, t.t1x4())
                        } else {
                            (Linger::J, t.t1x64())
                        });
                    }
                }
                _ => return Err(TxError::FinalAlreadySent),
            }
        }
        self.transmits.push_back(Transmit {
            peer: tx.peer,
            data: wire,
        });
        if terminate {
            self.terminate_server(id);
        } else {
            self.settle_server(now, id, was_live, old, linger);
        }
        Ok(())
    }

    // ----- client side -------------------------------------------------------------------

    /// Starts a client transaction and queues the first transmission. `branch` must be the
    /// branch in `wire`'s top Via, `method` its CSeq method.
    pub fn send_request(
        &mut self,
        now: Instant,
        branch: Bytes,
        method: Method,
        wire: Bytes,
        peer: Peer,
    ) -> Result<ClientTxId, TxError> {
        if method == Method::Ack {
            return Err(TxError::AckIsNotATransaction);
        }
        let key = ClientKey { branch, method };
        if self.client_keys.contains_key(&key) {
            return Err(TxError::Duplicate);
        }
        let t = self.timers;
        let invite = key.method == Method::Invite;
        let (limit, _) = self.limit_for(&key.method, false);
        let mut tx = ClientTx {
            key: key.clone(),
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            peer,
            request: Some(wire.clone()),
            ack: None,
            interval: t.t1(),
            retrans: None,
            life: None,
            linger: None,
            cost: 0,
        };
        tx.cost = tx.cost();
        if self.live_bytes + tx.cost > limit {
            self.refused += 1;
            return Err(TxError::Overloaded);
        }
        let cost = tx.cost;
        let id = ClientTxId(self.clients.insert(tx));
        let entry = |kind| TimerEntry {
            tx: TxId::Client(id),
            kind,
        };
        let (retrans_kind, life_kind) = if invite {
            (TimerKind::A, TimerKind::B)
        } else {
            (TimerKind::E, TimerKind::F)
        };
        // §17.1.1.2 / §17.1.2.2: retransmit only over unreliable transports, but B/F always run.
        let retrans = if peer.transport.is_reliable() {
            None
        } else {
            self.tq.arm(now, t.t1(), entry(retrans_kind))
        };
        let life = self.tq.arm(now, t.t1x64(), entry(life_kind));
        if let Some(tx) = self.clients.get_mut(id.0) {
            tx.retrans = retrans;
            tx.life = life;
        }
        self.transmits.push_back(Transmit { peer, data: wire });
        self.client_keys.insert(key, id.0);
        self.bytes += cost;
        self.live_bytes += cost;
        self.evict();
        Ok(id)
    }

    /// Matches a received response. For a non-2xx final response to an INVITE the layer
    /// builds and sends the ACK itself (§17.1.1.3) from the original INVITE and `msg`.
    pub fn on_response(&mut self, now: Instant, msg: &Message) -> ResponseDisposition {
        let Ok(info) = ResponseInfo::from_message(msg) else {
            return ResponseDisposition::Stray;
        };
        self.on_response_info(now, &info, |invite| {
            let invite = Message::parse(invite.clone(), Framing::Datagram).ok()?;
            Some(crate::builder::ack_for(&invite, msg))
        })
    }

    /// [`Self::on_response`] without a parsed message. `make_ack` is called at most once per
    /// transaction, with the original INVITE bytes, when its first non-2xx final response
    /// arrives; `None` means no ACK can be built (the server will retransmit and time out).
    pub fn on_response_info<F>(
        &mut self,
        now: Instant,
        info: &ResponseInfo,
        make_ack: F,
    ) -> ResponseDisposition
    where
        F: FnOnce(&Bytes) -> Option<Bytes>,
    {
        if !(100..=699).contains(&info.status) {
            return ResponseDisposition::Stray;
        }
        let key = ClientKey {
            branch: info.branch.clone(),
            method: info.method.clone(),
        };
        let Some(&raw) = self.client_keys.get(&key) else {
            return ResponseDisposition::Stray;
        };
        let id = ClientTxId(raw);
        let Some(tx) = self.clients.get_mut(raw) else {
            return ResponseDisposition::Stray;
        };
        let t = self.timers;
        let reliable = tx.peer.transport.is_reliable();
        let status = info.status;
        let (old, was_live) = (tx.cost, tx.linger.is_none());
        let mut terminate = false;
        let mut linger: Option<(Linger, Duration)> = None;
        let disposition = if tx.is_invite() {
            match (tx.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    // §17.1.1.2: no more retransmissions; Timer B only guards Calling, after
                    // that the TU decides how long to ring (CANCEL, §9.1).
                    tx.state = ClientState::Proceeding;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    ResponseDisposition::Deliver(id)
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    // RFC 6026 §7.2: Accepted keeps the transaction so 2xx from other forks
                    // and 2xx retransmissions still reach the TU, which sends the ACK.
                    tx.state = ClientState::Accepted;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    tx.request = None;
                    linger = Some((Linger::M, t.t1x64()));
                    ResponseDisposition::Deliver(id)
                }
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    if let Some(request) = tx.request.take() {
                        tx.ack = make_ack(&request);
                    }
                    if let Some(ack) = &tx.ack {
                        // §17.1.1.3: same address, port and transport as the INVITE.
                        self.transmits.push_back(Transmit {
                            peer: tx.peer,
                            data: ack.clone(),
                        });
                    }
                    // Timer D absorbs retransmitted finals: 32 s unreliable, zero reliable.
                    if reliable {
                        terminate = true;
                    } else {
                        linger = Some((Linger::D, TIMER_D_UNRELIABLE));
                    }
                    ResponseDisposition::Deliver(id)
                }
                (ClientState::Completed, 300..=699) => {
                    // §17.1.1.2: every retransmitted final gets the ACK again.
                    if let Some(ack) = &tx.ack {
                        self.transmits.push_back(Transmit {
                            peer: tx.peer,
                            data: ack.clone(),
                        });
                    }
                    ResponseDisposition::Absorbed(id)
                }
                // RFC 6026 §7.2: each 2xx in Accepted goes up (forks, lost ACKs).
                (ClientState::Accepted, 200..=299) => ResponseDisposition::Deliver(id),
                _ => ResponseDisposition::Absorbed(id),
            }
        } else {
            match (tx.state, status) {
                (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                    // §17.1.2.2: Timer E keeps running; it re-arms at T2 once in Proceeding.
                    tx.state = ClientState::Proceeding;
                    ResponseDisposition::Deliver(id)
                }
                (ClientState::Trying | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    tx.request = None;
                    // Timer K absorbs retransmitted finals: T4 unreliable, zero reliable.
                    if reliable {
                        terminate = true;
                    } else {
                        linger = Some((Linger::K, t.t4));
                    }
                    ResponseDisposition::Deliver(id)
                }
                _ => ResponseDisposition::Absorbed(id),
            }
        };
        if terminate {
            self.terminate_client(id);
        } else {
            self.settle_client(now, id, was_live, old, linger);
        }
        disposition
    }

    // ----- TU and transport controls ------------------------------------------------------

    /// Queues bytes outside any transaction: the ACK for a 2xx (§13.2.2.4), 2xx retransmissions
    /// by the UAS core (§13.3.1.4), stateless responses.
    pub fn send_stateless(&mut self, peer: Peer, data: Bytes) {
        self.transmits.push_back(Transmit { peer, data });
    }

    /// Destroys a transaction at the TU's request, e.g. an INVITE client transaction whose
    /// CANCEL got no final response in 64*T1 (§9.1). Returns false if it was already gone.
    pub fn terminate(&mut self, id: TxId) -> bool {
        match id {
            TxId::Client(c) => self.terminate_client(c),
            TxId::Server(s) => self.terminate_server(s),
        }
    }

    /// The transport failed to reach `peer` (ICMP error, TCP connection lost): every transaction
    /// bound to it reports [`TxEvent::TransportError`] and terminates (§17.1.4, §17.2.4).
    pub fn on_transport_error(&mut self, peer: Peer) {
        let mut failed: Vec<TxId> = self
            .clients
            .iter()
            .filter(|(_, t)| t.peer == peer)
            .map(|(id, _)| TxId::Client(ClientTxId(id)))
            .chain(
                self.servers
                    .iter()
                    .filter(|(_, t)| t.peer == peer)
                    .map(|(id, _)| TxId::Server(ServerTxId(id))),
            )
            .collect();
        // A stable order keeps event sequences reproducible.
        failed.sort_by_key(|id| match id {
            TxId::Client(c) => (0, c.0),
            TxId::Server(s) => (1, s.0),
        });
        for id in failed {
            self.events.push_back(TxEvent::TransportError(id));
            self.terminate(id);
        }
    }

    /// Removes a transaction (terminated or evicted): its keys, timers and bytes.
    fn remove(&mut self, id: TxId) -> bool {
        match id {
            TxId::Client(c) => {
                let Some(mut tx) = self.clients.remove(c.0) else {
                    return false;
                };
                self.client_keys.remove(&tx.key);
                self.tq.cancel(&mut tx.retrans);
                self.tq.cancel(&mut tx.life);
                self.bytes -= tx.cost;
                match tx.linger {
                    Some((kind, _)) => self.lingering[kind.idx()].valid -= 1,
                    None => self.live_bytes -= tx.cost,
                }
            }
            TxId::Server(s) => {
                let Some(mut tx) = self.servers.remove(s.0) else {
                    return false;
                };
                self.server_keys.remove(&tx.key);
                self.tq.cancel(&mut tx.retrans);
                self.tq.cancel(&mut tx.life);
                self.bytes -= tx.cost;
                match tx.linger {
                    Some((kind, _)) => self.lingering[kind.idx()].valid -= 1,
                    None => self.unlive_server(tx.source, tx.cost),
                }
            }
        }
        self.events.push_back(TxEvent::Terminated(id));
        true
    }

    fn terminate_client(&mut self, id: ClientTxId) -> bool {
        self.remove(TxId::Client(id))
    }

    fn terminate_server(&mut self, id: ServerTxId) -> bool {
        self.remove(TxId::Server(id))
    }

    // ----- polling ------------------------------------------------------------------------

    /// Next datagram/segment to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// Earliest deadline; call [`Self::handle_timeout`] when it is reached. (A lingering queue's
    /// front may belong to a transaction that already left: the wake-up then only drops it.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.poll_live_timeout()
            .into_iter()
            .chain(self.poll_linger_timeout())
            .min()
    }

    /// Earliest deadline of a live timer (A, B, E, F, G, H, the guard): retransmissions and
    /// failures, which must fire on time.
    pub fn poll_live_timeout(&self) -> Option<Instant> {
        self.tq.map.first_key_value().map(|((at, _), _)| *at)
    }

    /// Earliest end of a lingering transaction (Timers D, I, J, K, L, M). These only end the
    /// absorbing of retransmissions: ending one a little late only keeps its state a little
    /// longer (the table's bound still holds: over it, lingering state is evicted at once), so
    /// a caller may wait for several to be due and end them in one wake-up.
    pub fn poll_linger_timeout(&self) -> Option<Instant> {
        self.lingering
            .iter()
            .filter_map(|q| q.q.front().map(|(at, _)| *at))
            .min()
    }

    /// Fires every timer due at or before `now`, in deadline order, and ends the lingering
    /// transactions whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Terminates: every re-armed timer lands strictly after `now` (intervals >= 1 ms).
        while let Some((&(at, _), _)) = self.tq.map.first_key_value() {
            if at > now {
                break;
            }
            let Some((key, entry)) = self.tq.map.pop_first() else {
                break;
            };
            match entry.tx {
                TxId::Client(id) => self.fire_client(now, id, key, entry.kind),
                TxId::Server(id) => self.fire_server(now, id, key, entry.kind),
            }
        }
        for kind in EVICTION_ORDER {
            while let Some(&(at, id)) = self.lingering[kind.idx()].q.front() {
                if at > now {
                    break;
                }
                self.lingering[kind.idx()].q.pop_front();
                if linger_valid(&self.clients, &self.servers, kind, at, id) {
                    self.remove(id);
                }
            }
        }
    }

    fn fire_client(&mut self, now: Instant, id: ClientTxId, key: TimerKey, kind: TimerKind) {
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(id.0) else {
            return;
        };
        match kind {
            TimerKind::A | TimerKind::E => {
                if tx.retrans == Some(key) {
                    tx.retrans = None;
                }
                if let Some(request) = &tx.request {
                    self.transmits.push_back(Transmit {
                        peer: tx.peer,
                        data: request.clone(),
                    });
                }
                tx.interval = match (kind, tx.state) {
                    // §17.1.1.2: Timer A doubles without a cap; B ends it at 64*T1.
                    (TimerKind::A, _) => tx.interval.saturating_mul(2),
                    // §17.1.2.2: in Proceeding Timer E is reset to T2.
                    (_, ClientState::Proceeding) => t.t2(),
                    _ => tx.interval.saturating_mul(2).min(t.t2()),
                };
                tx.retrans = self.tq.arm(
                    now,
                    tx.interval,
                    TimerEntry {
                        tx: TxId::Client(id),
                        kind,
                    },
                );
            }
            TimerKind::B | TimerKind::F => {
                // §17.1.1.2 / §17.1.2.2: the TU synthesises a 408.
                if tx.life == Some(key) {
                    tx.life = None;
                }
                self.events.push_back(TxEvent::Timeout(TxId::Client(id)));
                self.terminate_client(id);
            }
            _ => {}
        }
    }

    fn fire_server(&mut self, now: Instant, id: ServerTxId, key: TimerKey, kind: TimerKind) {
        let t = self.timers;
        let Some(tx) = self.servers.get_mut(id.0) else {
            return;
        };
        match kind {
            TimerKind::G => {
                if tx.retrans == Some(key) {
                    tx.retrans = None;
                }
                if let Some(r) = &tx.last_response {
                    self.transmits.push_back(Transmit {
                        peer: tx.peer,
                        data: r.clone(),
                    });
                }
                // §17.2.1: G doubles up to T2.
                tx.interval = tx.interval.saturating_mul(2).min(t.t2());
                tx.retrans = self.tq.arm(
                    now,
                    tx.interval,
                    TimerEntry {
                        tx: TxId::Server(id),
                        kind,
                    },
                );
            }
            TimerKind::H | TimerKind::Guard => {
                // §17.2.1: H firing means the ACK never came; the TU must hear of the failure.
                if tx.life == Some(key) {
                    tx.life = None;
                }
                self.events.push_back(TxEvent::Timeout(TxId::Server(id)));
                self.terminate_server(id);
            }
            _ => {}
        }
    }
}

/// True if `(kind, at)` is still the lingering deadline of transaction `id`.
fn linger_valid(
    clients: &Slab<ClientTx>,
    servers: &Slab<ServerTx>,
    kind: Linger,
    at: Instant,
    id: TxId,
) -> bool {
    let linger = match id {
        TxId::Client(c) => clients.get(c.0).and_then(|t| t.linger),
        TxId::Server(s) => servers.get(s.0).and_then(|t| t.linger),
    };
    linger == Some((kind, at))
}
