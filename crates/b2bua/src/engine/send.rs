//! The outbox: responses through server transactions, requests as client transactions (and
//! the table that finds a call by their responses), ACK and BYE.

use super::call::{Call, CallKey};
use super::dialog::{Dialog, OutRequest};
use super::leg::LegIdx;
use super::B2bua;
use crate::util::str_of;
use crate::{Output, ReqId};
use bytes::Bytes;
use podpbx_sip::transaction::ServerTxId;
use podpbx_sip::{HeaderName, Message, Method, ResponseBuilder, StatusCode};
use std::net::SocketAddr;

/// A request received in a server transaction, as needed to answer it.
#[derive(Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub tx: ServerTxId,
    pub req: &'a Message,
    /// Where it came from (`received`/`rport` of the top Via).
    pub src: SocketAddr,
}

/// A request received and relayed to the other leg, kept until the other side answers.
#[derive(Debug, Clone)]
pub(crate) struct Relayed {
    /// The leg it came from.
    pub from: LegIdx,
    pub tx: ServerTxId,
    pub req: Message,
    pub src: SocketAddr,
}

impl Relayed {
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            tx: self.tx,
            req: &self.req,
            src: self.src,
        }
    }
}

/// A response to build.
pub(crate) struct Reply<'a> {
    pub status: StatusCode,
    /// A reason phrase other than the standard one.
    pub reason: Option<&'a str>,
    /// Our To tag (dialog-creating and in-dialog responses to requests without one).
    pub to_tag: Option<&'a str>,
    pub headers: Vec<(&'a str, String)>,
    pub body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Reply<'a> {
    pub fn new(status: StatusCode) -> Reply<'a> {
        Reply {
            status,
            reason: None,
            to_tag: None,
            headers: Vec::new(),
            body: None,
        }
    }
    pub fn reason(mut self, reason: Option<&'a str>) -> Self {
        self.reason = reason;
        self
    }
    pub fn tag(mut self, tag: &'a str) -> Self {
        self.to_tag = Some(tag);
        self
    }
    pub fn header(mut self, name: &'a str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
    pub fn body(mut self, body: Option<(&'a str, &'a [u8])>) -> Self {
        self.body = body;
        self
    }
}

/// What a request of ours is, to route its responses.
#[derive(Debug, Clone)]
pub(crate) enum ReqKind {
    Invite,
    Cancel,
    Bye,
    Notify,
    /// A DTMF INFO of ours (RFC 4733 from the other side, [`B2bua::media_dtmf`]).
    DtmfInfo,
    /// Our PRACK of a reliable provisional (RFC 3262).
    Prack,
    /// Our session refresh (RFC 4028), UPDATE or re-INVITE.
    Refresh,
    /// Our re-INVITE that gives a leg joined by a transfer or a replacement its new peer's
    /// media.
    Reanchor,
    /// Our in-dialog OPTIONS probing an answered leg (`keepalive`).
    Keepalive,
    /// A request relayed from another leg's server transaction.
    Relay(Box<Relayed>),
}

/// A request of ours in flight.
pub(crate) struct Pending {
    pub call: CallKey,
    pub leg: LegIdx,
    pub kind: ReqKind,
    /// A final response came.
    pub done: bool,
    /// Counted in the call's `pending` (CANCELs are not waited for).
    pub counted: bool,
}

impl B2bua {
    pub(super) fn alloc_req(&mut self) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        id
    }

    /// Registers request `id` of `call` on leg `li` (counted: the call waits for its final
    /// response before it ends).
    pub(super) fn track_request(
        &mut self,
        call: &mut Call,
        id: ReqId,
        li: LegIdx,
        kind: ReqKind,
        counted: bool,
    ) {
        self.by_req.insert(
            id,
            Pending {
                call: call.key,
                leg: li,
                kind,
                done: false,
                counted,
            },
        );
        if counted {
            call.pending += 1;
        }
        self.own_request(call.key, id);
    }

    /// Records that request `id` is `call`'s (see [`super::Owned`]).
    pub(super) fn own_request(&mut self, call: CallKey, id: ReqId) {
        let owned = &mut self.owned.entry(call).or_default().reqs;
        owned.push(id);
        if super::Owned::prune_due(owned.len()) {
            let by_req = &self.by_req;
            owned.retain(|r| by_req.get(r).is_some_and(|p| p.call == call));
        }
    }

    /// Answers `to` (through its server transaction).
    pub(super) fn respond(&mut self, to: Incoming<'_>, reply: Reply<'_>) -> Bytes {
        let status = reply.status;
        let data = self.build_response(to, reply);
        self.out.push_back(Output::Respond {
            tx: to.tx,
            status,
            data: data.clone(),
        });
        data
    }

    /// The bytes of a response to `to`, without sending them.
    pub(super) fn build_response(&mut self, to: Incoming<'_>, reply: Reply<'_>) -> Bytes {
        let status = reply.status;
        let reason = reply.reason.unwrap_or(status.reason());
        let mut b = ResponseBuilder::new(to.req, status.code(), reason, Some(to.src));
        if let Some(t) = reply.to_tag {
            b = b.to_tag(t);
        }
        // RFC 3261 §12.1.1: a dialog-creating response carries the request's Record-Route
        // values, in order, so the caller's ACK and in-dialog requests follow the proxies that
        // record-routed (a provider's Kamailio in front of a trunk call).
        if (101..300).contains(&status.code()) && to.req.method() == Some(&Method::Invite) {
            for rr in to.req.header_values(HeaderName::RecordRoute) {
                b = b.header("Record-Route", &str_of(&rr));
            }
        }
        for (n, v) in &reply.headers {
            b = b.header(n, v);
        }
        if !self.settings.user_agent.is_empty() {
            b = b.header("Server", &self.settings.user_agent);
        }
        if let Some((ct, data)) = reply.body {
            b = b.body(ct, data);
        }
        b.build()
    }

    /// Builds a request in `dialog` with CSeq `cseq` (without sending it): the branch and
    /// the bytes.
    pub(super) fn build_request(
        &mut self,
        dialog: &Dialog,
        method: &Method,
        cseq: u32,
        headers: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) -> (String, Bytes) {
        let branch = self.ids.branch();
        let data = dialog.request(&OutRequest {
            method,
            cseq,
            branch: &branch,
            headers,
            user_agent: &self.settings.user_agent,
            body,
        });
        (branch, data)
    }

    /// Sends a new in-dialog request on `li` (next CSeq) as a client transaction.
    pub(super) fn send_in_dialog(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        method: Method,
        headers: &[(String, String)],
        body: Option<(&str, &[u8])>,
        kind: ReqKind,
    ) -> ReqId {
        let cseq = call.legs[li].dialog.next_cseq();
        let (branch, data) =
            self.build_request(&call.legs[li].dialog, &method, cseq, headers, body);
        let id = self.alloc_req();
        self.track_request(call, id, li, kind, true);
        self.out.push_back(Output::Request {
            id,
            method,
            branch,
            data,
            peer: call.legs[li].dialog.peer,
        });
        id
    }

    /// ACKs the 2xx with CSeq `cseq` on `li` (RFC 3261 §13.2.2.4), with the answer when the
    /// 2xx carried the offer.
    pub(super) fn send_ack(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        cseq: u32,
        body: Option<(&str, &[u8])>,
    ) {
        let (_, data) = self.build_request(&call.legs[li].dialog, &Method::Ack, cseq, &[], body);
        call.legs[li].last_ack = Some((cseq, data.clone()));
        self.out.push_back(Output::Stateless {
            peer: call.legs[li].dialog.peer,
            data,
        });
    }

    /// Re-sends our ACK when the 2xx with CSeq `cseq` is retransmitted (it was lost).
    pub(super) fn resend_ack(&mut self, call: &Call, li: LegIdx, cseq: u32) {
        if let Some((c, data)) = &call.legs[li].last_ack {
            if *c == cseq {
                self.out.push_back(Output::Stateless {
                    peer: call.legs[li].dialog.peer,
                    data: data.clone(),
                });
            }
        }
    }

    /// Ends leg `li`'s dialog with a BYE (acknowledging first a 2xx that still waits).
    pub(super) fn send_bye(&mut self, call: &mut Call, li: LegIdx) {
        if !call.legs[li].active() {
            return;
        }
        if let Some(cseq) = call.legs[li].ack_deferred.take() {
            // A 2xx still waits for its ACK: acknowledge it first.
            self.send_ack(call, li, cseq, None);
        }
        call.legs[li].terminate();
        call.legs[li].ok = None;
        self.send_in_dialog(call, li, Method::Bye, &[], None, ReqKind::Bye);
    }
}
