//! A dialog (RFC 3261 §12) as one leg of the b2bua sees it: identifiers, sequence numbers,
//! routing, and the builder of requests inside it.
//!
//! Every leg has exactly one `Dialog`, created with the leg: on the A leg from the caller's
//! INVITE (podpbx is the UAS, §12.1.1), on a B leg when podpbx sends its INVITE (UAC, §12.1.2;
//! the remote tag, target and route set are learnt from the first responses).

use crate::util::str_of;
use crate::{Family, Flow};
use bytes::Bytes;
use podpbx_sip::ident::hostport;
use podpbx_sip::{HeaderName, Message, Method, NameAddr, Peer, RequestBuilder};
use std::net::SocketAddr;

/// The key the b2bua finds a dialog by: Call-ID and our tag (the To tag of requests we get).
pub(crate) type DialogKey = (String, String);

#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    /// The peer's tag: from its From (UAS), from the first tagged response (UAC).
    pub remote_tag: Option<String>,
    /// Our name-addr without tag (From of our requests, To of our responses).
    pub local_uri: String,
    /// The peer's name-addr as it wrote it, with its tag once known (To of our requests).
    pub remote_uri: String,
    /// CSeq of our last request (the next one uses +1).
    pub local_cseq: u32,
    /// Highest CSeq seen from the peer (0: none yet).
    pub remote_cseq: u32,
    /// Route headers for our requests, in order (§12.1.1 copied, §12.1.2 reversed).
    pub route_set: Vec<String>,
    /// Request-URI of our requests: the peer's Contact.
    pub remote_target: String,
    /// Where our requests go (symmetric signalling: where the peer's requests came from).
    pub peer: Peer,
    /// Our pinned address on this leg (Via, Contact).
    pub local: SocketAddr,
}

/// What a UAC leg's dialog starts from before any response (§12.1.2 fills in the rest).
pub(crate) struct UacDialog {
    pub call_id: String,
    pub local_tag: String,
    pub local_uri: String,
    pub remote_uri: String,
    pub target: String,
    pub flow: Flow,
}

impl Dialog {
    /// The dialog a new INVITE creates on our UAS side (§12.1.1); `peer` is where requests and
    /// responses to the caller go.
    pub fn uas(req: &Message, flow: Flow, peer: Peer, local_tag: String) -> Option<Dialog> {
        let from = req.from_hdr().ok()?;
        let to = req.to_hdr().ok()?;
        let remote_target = req
            .contact_iter()
            .next()
            .and_then(|c| c.ok())
            .map(|c| str_of(&c.addr.uri.raw))
            .unwrap_or_else(|| str_of(&from.uri.raw));
        Some(Dialog {
            call_id: str_of(&req.call_id().unwrap_or_default()),
            local_tag,
            remote_tag: from.tag().map(|t| str_of(&t)),
            local_uri: without_tag(&to),
            remote_uri: req
                .header(HeaderName::From)
                .map(|v| str_of(&v))
                .unwrap_or_default(),
            local_cseq: 0,
            remote_cseq: req.cseq().map(|c| c.seq).unwrap_or(1),
            remote_target,
            route_set: req
                .header_values(HeaderName::RecordRoute)
                .map(|v| str_of(&v))
                .collect(),
            peer,
            local: flow.local,
        })
    }

    /// The dialog of an INVITE we are about to send (§12.1.2).
    pub fn uac(d: UacDialog) -> Dialog {
        Dialog {
            call_id: d.call_id,
            local_tag: d.local_tag,
            remote_tag: None,
            local_uri: d.local_uri,
            remote_uri: d.remote_uri,
            local_cseq: 0,
            remote_cseq: 0,
            route_set: Vec::new(),
            remote_target: d.target,
            peer: d.flow.peer(),
            local: d.flow.local,
        }
    }

    pub fn key(&self) -> DialogKey {
        (self.call_id.clone(), self.local_tag.clone())
    }

    /// The address family of the peer.
    pub fn family(&self) -> Family {
        Family::of(self.peer.addr.ip())
    }

    /// Our Contact on this leg: our pinned address, with the transport when not UDP.
    pub fn contact(&self) -> String {
        podpbx_sip::ident::contact("podpbx", self.local, self.peer.transport)
    }

    /// The CSeq of a new request of ours.
    pub fn next_cseq(&mut self) -> u32 {
        self.local_cseq += 1;
        self.local_cseq
    }

    /// A request inside this dialog (§12.2.1.1) with CSeq `cseq` and Via branch `branch`.
    pub fn request(&self, r: &OutRequest<'_>) -> Bytes {
        let mut b = RequestBuilder::new(r.method, &self.remote_target)
            .header(
                "Via",
                &format!(
                    "SIP/2.0/{} {};branch={};rport",
                    self.peer.transport.via_token(),
                    hostport(self.local),
                    r.branch
                ),
            )
            .header("Max-Forwards", "70");
        for route in &self.route_set {
            b = b.header("Route", route);
        }
        b = b
            .header(
                "From",
                &format!("{};tag={}", self.local_uri, self.local_tag),
            )
            .header("To", &self.remote_uri)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{} {}", r.cseq, r.method));
        if matches!(
            r.method,
            Method::Invite | Method::Update | Method::Notify | Method::Refer | Method::Subscribe
        ) {
            b = b.header("Contact", &self.contact());
        }
        for (n, v) in r.headers {
            b = b.header(n, v);
        }
        if !r.user_agent.is_empty() && *r.method != Method::Ack {
            b = b.header("User-Agent", r.user_agent);
        }
        if let Some((ct, data)) = r.body {
            b = b.body(ct, data);
        }
        b.build()
    }

    /// A response to our INVITE (§12.1.2, §12.2.1.2): the first To tag, the target from
    /// Contact, the route set from Record-Route.
    pub fn learn_from_response(&mut self, msg: &Message) {
        if let Ok(to) = msg.to_hdr() {
            if let Some(t) = to.tag() {
                if self.remote_tag.is_none() {
                    self.remote_tag = Some(str_of(&t));
                    if let Some(v) = msg.header(HeaderName::To) {
                        self.remote_uri = str_of(&v);
                    }
                }
            }
        }
        if let Some(Ok(c)) = msg.contact_iter().next() {
            self.remote_target = str_of(&c.addr.uri.raw);
        }
        // RFC 3261 §12.1.2: the UAC's route set is the Record-Route values in reverse order,
        // value by value (a proxy may put several in one comma-separated line).
        let rr: Vec<String> = msg
            .record_route_iter()
            .map_while(Result::ok)
            .map(|v| str_of(&v.raw))
            .collect();
        if !rr.is_empty() {
            self.route_set = rr.into_iter().rev().collect();
        }
    }
}

/// A request to build inside a dialog.
pub(crate) struct OutRequest<'a> {
    pub method: &'a Method,
    pub cseq: u32,
    pub branch: &'a str,
    /// Extra headers (after the dialog's own).
    pub headers: &'a [(String, String)],
    /// `User-Agent` (empty: none; never on ACK).
    pub user_agent: &'a str,
    pub body: Option<(&'a str, &'a [u8])>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use podpbx_sip::{Framing, Transport};

    fn flow() -> Flow {
        Flow {
            transport: Transport::Udp,
            local: "[2001:db8::1]:5060".parse().unwrap(),
            remote: "[2001:db8:1::a]:5062".parse().unwrap(),
            conn: 0,
        }
    }

    fn msg(text: &str) -> Message {
        Message::parse(Bytes::from(text.to_string()), Framing::Datagram).unwrap()
    }

    #[test]
    fn uas_dialog_from_invite_and_in_dialog_request() {
        let inv = msg("INVITE sip:102@pbx SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::a]:5062;branch=z9hG4bKx\r\n\
             Record-Route: <sip:p1;lr>\r\nRecord-Route: <sip:p2;lr>\r\n\
             From: \"A\" <sip:101@pbx>;tag=atag\r\nTo: <sip:102@pbx;user=phone>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\n\
             Contact: <sip:101@[2001:db8:1::a]:5062>\r\nContent-Length: 0\r\n\r\n");
        let f = flow();
        let mut d = Dialog::uas(&inv, f, f.peer(), "ours".into()).unwrap();
        assert_eq!(d.remote_tag.as_deref(), Some("atag"));
        assert_eq!(d.remote_cseq, 7);
        assert_eq!(d.local_uri, "<sip:102@pbx;user=phone>");
        assert_eq!(d.key(), ("c1".to_string(), "ours".to_string()));
        // §12.1.1: the UAS keeps the Record-Route order.
        assert_eq!(d.route_set, ["<sip:p1;lr>", "<sip:p2;lr>"]);
        let cseq = d.next_cseq();
        let bye = msg(&String::from_utf8_lossy(&d.request(&OutRequest {
            method: &Method::Bye,
            cseq,
            branch: "z9hG4bKb",
            headers: &[],
            user_agent: "podpbx",
            body: None,
        })));
        assert_eq!(
            str_of(&bye.request_uri().unwrap().raw),
            "sip:101@[2001:db8:1::a]:5062"
        );
        assert_eq!(bye.cseq().unwrap().seq, 1);
        assert_eq!(str_of(&bye.to_hdr().unwrap().tag().unwrap()), "atag");
        assert_eq!(str_of(&bye.from_hdr().unwrap().tag().unwrap()), "ours");
        let routes: Vec<String> = bye
            .header_values(HeaderName::Route)
            .map(|v| str_of(&v))
            .collect();
        assert_eq!(routes, ["<sip:p1;lr>", "<sip:p2;lr>"]);
        assert!(
            bye.header(HeaderName::Contact).is_none(),
            "no Contact on BYE"
        );
    }

    #[test]
    fn uac_dialog_learns_tag_target_and_reversed_route_set_once() {
        let mut d = Dialog::uac(UacDialog {
            call_id: "c2@podpbx".into(),
            local_tag: "t".into(),
            local_uri: "<sip:101@pbx>".into(),
            remote_uri: "<sip:102@pbx>".into(),
            target: "sip:102@[2001:db8:1::20]".into(),
            flow: flow(),
        });
        let r = msg("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKq\r\n\
             Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\nFrom: <sip:101@pbx>;tag=t\r\nTo: <sip:102@pbx>;tag=b1\r\n\
             Call-ID: c2@podpbx\r\nCSeq: 1 INVITE\r\nContact: <sip:102@[2001:db8:1::20]:5070>\r\nContent-Length: 0\r\n\r\n");
        d.learn_from_response(&r);
        assert_eq!(d.remote_tag.as_deref(), Some("b1"));
        assert_eq!(d.remote_uri, "<sip:102@pbx>;tag=b1");
        assert_eq!(d.remote_target, "sip:102@[2001:db8:1::20]:5070");
        assert_eq!(d.route_set, ["<sip:p2;lr>", "<sip:p1;lr>"]);
        // A second fork's tag does not replace the first.
        let r2 = msg("SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKq\r\n\
             From: <sip:101@pbx>;tag=t\r\nTo: <sip:102@pbx>;tag=b2\r\nCall-ID: c2@podpbx\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
        d.learn_from_response(&r2);
        assert_eq!(d.remote_tag.as_deref(), Some("b1"));
        assert_eq!(d.route_set, ["<sip:p2;lr>", "<sip:p1;lr>"]);
    }
}
