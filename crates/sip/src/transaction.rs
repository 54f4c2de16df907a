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

pub use crate::flow::{Peer, Transport};
use crate::{Framing, Message, Method};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// The table is at its configured maximum.
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
        let via = msg.top_via().map_err(|_| TxError::Malformed("Via"))?;
        let sent_by = sent_by_key(&via.host, via.port);
        let branch = match via.branch() {
            Some(b) if has_magic_cookie(&b) => b,
            _ => {
                // §17.2.3 RFC 2543 fallback; see the module docs for why the To tag is omitted.
                let from_tag = msg
                    .from_hdr()
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
        let via = msg.top_via().map_err(|_| TxError::Malformed("Via"))?;
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
    /// The table is full: the core should answer 503 statelessly.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    A,
    B,
    D,
    E,
    F,
    K,
    G,
    H,
    I,
    J,
    L,
    M,
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

#[derive(Debug)]
struct ClientTx {
    key: ClientKey,
    state: ClientState,
    peer: Peer,
    /// The request as sent; retransmitted verbatim and, for INVITE, parsed to build the ACK.
    request: Bytes,
    /// The ACK for a non-2xx final response, kept to answer retransmitted finals (§17.1.1.2).
    ack: Option<Bytes>,
    /// Current retransmission interval (A or E).
    interval: Duration,
    /// Timer A or E.
    retrans: Option<TimerKey>,
    /// Timer B, D, F, K or M.
    life: Option<TimerKey>,
}

impl ClientTx {
    fn is_invite(&self) -> bool {
        self.key.method == Method::Invite
    }
}

#[derive(Debug)]
struct ServerTx {
    key: ServerKey,
    state: ServerState,
    peer: Peer,
    /// Most recent provisional or final response, re-sent on request retransmissions.
    last_response: Option<Bytes>,
    /// Current Timer G interval.
    interval: Duration,
    /// Timer G.
    retrans: Option<TimerKey>,
    /// Timer H, I, J, L or the guard.
    life: Option<TimerKey>,
}

impl ServerTx {
    fn is_invite(&self) -> bool {
        self.key.method == Method::Invite
    }
}

/// The transaction table: all client and server transactions, their timers and output queues.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: Timers,
    max: usize,
    next_id: u64,
    clients: HashMap<ClientTxId, ClientTx>,
    client_keys: HashMap<ClientKey, ClientTxId>,
    servers: HashMap<ServerTxId, ServerTx>,
    server_keys: HashMap<ServerKey, ServerTxId>,
    tq: TimerQueue,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl TransactionLayer {
    /// Creates a layer holding at most `max_transactions` live transactions (client + server).
    pub fn new(timers: Timers, max_transactions: usize) -> TransactionLayer {
        TransactionLayer {
            timers,
            max: max_transactions,
            next_id: 0,
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            tq: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The timer configuration.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    /// True if no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// State of a client transaction, `None` once terminated.
    pub fn client_state(&self, id: ClientTxId) -> Option<ClientState> {
        self.clients.get(&id).map(|t| t.state)
    }

    /// State of a server transaction, `None` once terminated.
    pub fn server_state(&self, id: ServerTxId) -> Option<ServerState> {
        self.servers.get(&id).map(|t| t.state)
    }

    /// Method of a server transaction (ACK never has one), `None` once terminated.
    pub fn server_method(&self, id: ServerTxId) -> Option<&Method> {
        self.servers.get(&id).map(|t| &t.key.method)
    }

    /// Peer a server transaction answers to, `None` once terminated.
    pub fn server_peer(&self, id: ServerTxId) -> Option<Peer> {
        self.servers.get(&id).map(|t| t.peer)
    }

    /// Looks up the server transaction a key belongs to.
    pub fn find_server(&self, key: &ServerKey) -> Option<ServerTxId> {
        self.server_keys.get(key).copied()
    }

    /// Looks up the client transaction a key belongs to.
    pub fn find_client(&self, key: &ClientKey) -> Option<ClientTxId> {
        self.client_keys.get(key).copied()
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// The table bound for a new transaction of `method`. BYE and CANCEL end calls and free
    /// what they hold, so they may use a 10 % reserve above the bound: refusing them under load
    /// would leave calls (and their media ports) up until a timeout.
    fn limit_for(&self, method: &Method) -> usize {
        match method {
            Method::Bye | Method::Cancel => self.max.saturating_add(self.max / 10 + 1),
            _ => self.max,
        }
    }

    // ----- server side -------------------------------------------------------------------

    /// Matches a received request; `peer` is where responses go (the transport layer applies
    /// §18.2.2/RFC 3581 before calling). `wire` is unused but kept for symmetry with the sender.
    pub fn on_request(
        &mut self,
        now: Instant,
        msg: &Message,
        wire: Bytes,
        peer: Peer,
    ) -> RequestDisposition {
        let _ = wire;
        match RequestInfo::from_message(msg) {
            Ok(info) => self.on_request_info(now, info, peer),
            Err(e) => RequestDisposition::Invalid(e),
        }
    }

    /// [`Self::on_request`] without a parsed message.
    pub fn on_request_info(
        &mut self,
        now: Instant,
        info: RequestInfo,
        peer: Peer,
    ) -> RequestDisposition {
        let is_ack = info.method == Method::Ack;
        let is_cancel = info.method == Method::Cancel;
        let key = ServerKey::new(info.branch, info.sent_by, &info.method);
        if let Some(&id) = self.server_keys.get(&key) {
            return self.server_matched(now, id, is_ack);
        }
        if is_ack {
            return RequestDisposition::AckFor2xx;
        }
        let target = if is_cancel {
            // §9.2: the CANCEL matches the INVITE with the same branch and sent-by.
            let ikey = ServerKey {
                branch: key.branch.clone(),
                sent_by: key.sent_by.clone(),
                method: Method::Invite,
            };
            self.server_keys.get(&ikey).copied()
        } else {
            None
        };
        if self.len() >= self.limit_for(&key.method) {
            return RequestDisposition::Overloaded;
        }
        let id = ServerTxId(self.alloc_id());
        let invite = key.method == Method::Invite;
        let mut tx = ServerTx {
            key: key.clone(),
            // §17.2.1: the INVITE server transaction starts in Proceeding, non-INVITE in Trying.
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            peer,
            last_response: None,
            interval: self.timers.t1(),
            retrans: None,
            life: None,
        };
        if !invite {
            // The client gives up after Timer F (64*T1), so an answer after that is useless;
            // dropping the transaction then keeps a silent TU from leaking table entries.
            tx.life = self.tq.arm(
                now,
                self.timers.t1x64(),
                TimerEntry {
                    tx: TxId::Server(id),
                    kind: TimerKind::Guard,
                },
            );
        }
        self.servers.insert(id, tx);
        self.server_keys.insert(key, id);
        if is_cancel {
            RequestDisposition::Cancel { tx: id, target }
        } else {
            RequestDisposition::New(id)
        }
    }

    fn server_matched(&mut self, now: Instant, id: ServerTxId, is_ack: bool) -> RequestDisposition {
        let Some(tx) = self.servers.get_mut(&id) else {
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
                        tx.life = self.tq.arm(
                            now,
                            self.timers.t4,
                            TimerEntry {
                                tx: TxId::Server(id),
                                kind: TimerKind::I,
                            },
                        );
                    }
                    RequestDisposition::AckAbsorbed(id)
                }
                // RFC 6026 §8.7: an ACK reaching an Accepted transaction goes to the TU.
                ServerState::Accepted => RequestDisposition::AckFor2xx,
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
        if !(100..=699).contains(&status) {
            return Err(TxError::InvalidStatus(status));
        }
        let t = self.timers;
        let tx = self
            .servers
            .get_mut(&id)
            .ok_or(TxError::UnknownTransaction)?;
        let reliable = tx.peer.transport.is_reliable();
        let entry = |kind| TimerEntry {
            tx: TxId::Server(id),
            kind,
        };
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
                    tx.life = self.tq.arm(now, t.t1x64(), entry(TimerKind::L));
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
                    tx.last_response = Some(wire.clone());
                    self.tq.cancel(&mut tx.life);
                    if reliable {
                        terminate = true;
                    } else {
                        tx.life = self.tq.arm(now, t.t1x64(), entry(TimerKind::J));
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
        if self.len() >= self.limit_for(&method) {
            return Err(TxError::Overloaded);
        }
        let key = ClientKey { branch, method };
        if self.client_keys.contains_key(&key) {
            return Err(TxError::Duplicate);
        }
        let id = ClientTxId(self.alloc_id());
        let t = self.timers;
        let invite = key.method == Method::Invite;
        let entry = |kind| TimerEntry {
            tx: TxId::Client(id),
            kind,
        };
        let (retrans_kind, life_kind, state) = if invite {
            (TimerKind::A, TimerKind::B, ClientState::Calling)
        } else {
            (TimerKind::E, TimerKind::F, ClientState::Trying)
        };
        // §17.1.1.2 / §17.1.2.2: retransmit only over unreliable transports, but B/F always run.
        let retrans = if peer.transport.is_reliable() {
            None
        } else {
            self.tq.arm(now, t.t1(), entry(retrans_kind))
        };
        let life = self.tq.arm(now, t.t1x64(), entry(life_kind));
        self.transmits.push_back(Transmit {
            peer,
            data: wire.clone(),
        });
        self.client_keys.insert(key.clone(), id);
        self.clients.insert(
            id,
            ClientTx {
                key,
                state,
                peer,
                request: wire,
                ack: None,
                interval: t.t1(),
                retrans,
                life,
            },
        );
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
        let Some(&id) = self.client_keys.get(&key) else {
            return ResponseDisposition::Stray;
        };
        let Some(tx) = self.clients.get_mut(&id) else {
            return ResponseDisposition::Stray;
        };
        let t = self.timers;
        let reliable = tx.peer.transport.is_reliable();
        let entry = |kind| TimerEntry {
            tx: TxId::Client(id),
            kind,
        };
        let status = info.status;
        let mut terminate = false;
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
                    tx.life = self.tq.arm(now, t.t1x64(), entry(TimerKind::M));
                    ResponseDisposition::Deliver(id)
                }
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    self.tq.cancel(&mut tx.retrans);
                    self.tq.cancel(&mut tx.life);
                    tx.ack = make_ack(&tx.request);
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
                        tx.life = self.tq.arm(now, TIMER_D_UNRELIABLE, entry(TimerKind::D));
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
                    // Timer K absorbs retransmitted finals: T4 unreliable, zero reliable.
                    if reliable {
                        terminate = true;
                    } else {
                        tx.life = self.tq.arm(now, t.t4, entry(TimerKind::K));
                    }
                    ResponseDisposition::Deliver(id)
                }
                _ => ResponseDisposition::Absorbed(id),
            }
        };
        if terminate {
            self.terminate_client(id);
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
            .map(|(id, _)| TxId::Client(*id))
            .chain(
                self.servers
                    .iter()
                    .filter(|(_, t)| t.peer == peer)
                    .map(|(id, _)| TxId::Server(*id)),
            )
            .collect();
        // HashMap order is random; a stable order keeps event sequences reproducible.
        failed.sort_by_key(|id| match id {
            TxId::Client(c) => c.0,
            TxId::Server(s) => s.0,
        });
        for id in failed {
            self.events.push_back(TxEvent::TransportError(id));
            self.terminate(id);
        }
    }

    fn terminate_client(&mut self, id: ClientTxId) -> bool {
        let Some(mut tx) = self.clients.remove(&id) else {
            return false;
        };
        self.client_keys.remove(&tx.key);
        self.tq.cancel(&mut tx.retrans);
        self.tq.cancel(&mut tx.life);
        self.events.push_back(TxEvent::Terminated(TxId::Client(id)));
        true
    }

    fn terminate_server(&mut self, id: ServerTxId) -> bool {
        let Some(mut tx) = self.servers.remove(&id) else {
            return false;
        };
        self.server_keys.remove(&tx.key);
        self.tq.cancel(&mut tx.retrans);
        self.tq.cancel(&mut tx.life);
        self.events.push_back(TxEvent::Terminated(TxId::Server(id)));
        true
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

    /// Earliest armed deadline; call [`Self::handle_timeout`] when it is reached.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tq.map.first_key_value().map(|((at, _), _)| *at)
    }

    /// Fires every timer due at or before `now`, in deadline order.
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
    }

    fn fire_client(&mut self, now: Instant, id: ClientTxId, key: TimerKey, kind: TimerKind) {
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(&id) else {
            return;
        };
        match kind {
            TimerKind::A | TimerKind::E => {
                if tx.retrans == Some(key) {
                    tx.retrans = None;
                }
                self.transmits.push_back(Transmit {
                    peer: tx.peer,
                    data: tx.request.clone(),
                });
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
                self.events.push_back(TxEvent::Timeout(TxId::Client(id)));
                self.terminate_client(id);
            }
            _ => {
                self.terminate_client(id);
            }
        }
    }

    fn fire_server(&mut self, now: Instant, id: ServerTxId, key: TimerKey, kind: TimerKind) {
        let t = self.timers;
        let Some(tx) = self.servers.get_mut(&id) else {
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
                self.events.push_back(TxEvent::Timeout(TxId::Server(id)));
                self.terminate_server(id);
            }
            _ => {
                self.terminate_server(id);
            }
        }
    }
}
