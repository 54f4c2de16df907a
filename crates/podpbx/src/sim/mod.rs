//! A virtual-time harness for the signalling core (tests only), in the manner of quinn-proto's
//! `Pair`: SIP text goes in as datagrams from a peer address, the bytes the core wants sent
//! come out parsed, and time moves only when a test advances it. No socket, no thread, no
//! clock: a 32 s Timer B or an hour-long registration runs in microseconds.
//!
//! The core is built from a TOML configuration the same way `podpbx run` builds it
//! (`server::core_config`, `server::registrar_settings`, `calls::user_db`), with a fixed
//! nonce key, a fixed id seed and a fake relay ([`FakeMedia`]) that hands out addresses from the documentation
//! ranges and records what the call layer asked of it.
//!
//! [`Ua`] is a scripted user agent: it writes requests (REGISTER, INVITE, ACK, CANCEL, BYE,
//! OPTIONS), answers digest challenges with the real digest client and answers requests the
//! core sends it.

use crate::calls::{Addrs, Calls};
use crate::core::{Core, Output};
use crate::stats::Stats;
use bytes::Bytes;
use podpbx_b2bua::{Family, LegStats, MediaId, MediaLeg, MediaPort, RemoteMedia};
use podpbx_config::Config;
use podpbx_registrar::Registrar;
use podpbx_sip::digest::DigestClient;
use podpbx_sip::{
    Flow, Framing, HeaderName, IdGen, Message, Method, Peer, ResponseBuilder, Transport,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[cfg(test)]
mod tests;

/// Our pinned addresses in the harness (never bound).
pub const PBX_V6: &str = "[2001:db8::1]:5060";
pub const PBX_V4: &str = "198.51.100.1:5060";

/// What the fake relay was asked to do.
#[derive(Debug, Default)]
pub struct MediaLog {
    next: u64,
    pub families: HashMap<MediaId, (Family, Family)>,
    /// `(session, leg, RTP address)` per `set_remote`.
    pub remotes: Vec<(MediaId, MediaLeg, SocketAddr)>,
    pub released: Vec<MediaId>,
}

/// A relay that allocates addresses from the documentation ranges and records every call.
#[derive(Debug, Clone, Default)]
pub struct FakeMedia(pub Arc<Mutex<MediaLog>>);

impl FakeMedia {
    /// Sessions allocated and not yet released.
    pub fn live(&self) -> usize {
        let m = self.0.lock().unwrap();
        m.families.len() - m.released.len()
    }
}

impl MediaPort for FakeMedia {
    fn allocate(&mut self, a: Family, b: Family) -> Result<MediaId, String> {
        let mut m = self.0.lock().unwrap();
        m.next += 1;
        let id = m.next;
        m.families.insert(id, (a, b));
        Ok(id)
    }
    fn local(&self, id: MediaId, leg: MediaLeg) -> Option<SocketAddr> {
        let m = self.0.lock().unwrap();
        let (a, b) = *m.families.get(&id)?;
        let fam = if leg == MediaLeg::A { a } else { b };
        let port = 30000 + (id as u16) * 4 + if leg == MediaLeg::A { 0 } else { 2 };
        Some(match fam {
            Family::V4 => SocketAddr::new("198.51.100.1".parse().unwrap(), port),
            Family::V6 => SocketAddr::new("2001:db8::1".parse().unwrap(), port),
        })
    }
    fn set_remote(&mut self, id: MediaId, leg: MediaLeg, remote: RemoteMedia) {
        self.0.lock().unwrap().remotes.push((id, leg, remote.rtp));
    }
    fn set_hold(&mut self, _id: MediaId, _leg: MediaLeg, _hold: bool) {}
    fn inject_dtmf(&mut self, _id: MediaId, _leg: MediaLeg, _d: char, _t: Duration) -> bool {
        false
    }
    fn stats(&self, _id: MediaId, _leg: MediaLeg) -> LegStats {
        LegStats::default()
    }
    fn release(&mut self, id: MediaId) {
        self.0.lock().unwrap().released.push(id);
    }
}

/// A message the core sent, parsed, with where it went.
#[derive(Debug, Clone)]
pub struct Sent {
    pub peer: Peer,
    pub msg: Message,
}

impl Sent {
    /// Status code of a response (0 for a request).
    pub fn status(&self) -> u16 {
        self.msg.status().unwrap_or(0)
    }
    /// Method of a request, or the CSeq method of a response.
    pub fn method(&self) -> Method {
        match self.msg.method() {
            Some(m) => m.clone(),
            None => self.msg.cseq().map(|c| c.method).unwrap_or(Method::Ack),
        }
    }
    /// A header's value as text (first line).
    pub fn header(&self, name: HeaderName) -> Option<String> {
        self.msg
            .header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    /// The body as text.
    pub fn body(&self) -> String {
        String::from_utf8_lossy(&self.msg.body).into_owned()
    }
}

/// The core in virtual time.
pub struct Sim {
    pub core: Core,
    pub media: FakeMedia,
    /// Virtual monotonic time.
    pub now: Instant,
    /// Virtual wall-clock time.
    pub wall: SystemTime,
    /// Everything sent since the last [`Sim::take`].
    pub sent: Vec<Sent>,
    /// Bindings files the shell was asked to write, newest last.
    pub saved: Vec<Vec<u8>>,
    /// CDRs the shell was asked to append.
    pub cdrs: Vec<podpbx_b2bua::Cdr>,
    /// Events for webhooks the core emitted.
    pub events: Vec<podpbx_events::Data>,
}

impl Sim {
    /// A core for `[sip]` on [`PBX_V6`]/[`PBX_V4`] plus `extra` TOML (users, dialplan...).
    pub fn new(extra: &str) -> Sim {
        let text = format!(
            "[sip]\nipv6 = \"2001:db8::1\"\nipv4 = \"198.51.100.1\"\nport = 5060\n\
             transports = [\"udp\", \"tcp\"]\ndomain = \"pbx.example\"\nrealm = \"pbx.example\"\n\
             [storage]\ndata_dir = \"/nonexistent/podpbx-sim\"\n{extra}"
        );
        let cfg = Arc::new(Config::from_str(&text, "sim.toml").expect("harness config"));
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stats = Arc::new(Stats::default());
        let settings = crate::server::registrar_settings(&cfg, vec![7u8; 32]);
        let registrar = Registrar::new(settings, crate::calls::user_db(&cfg), now);
        let trunks =
            crate::trunks::Trunks::from_config(&cfg, Default::default(), IdGen::new([4u8; 16]))
                .expect("harness trunks");
        let core_cfg = crate::server::core_config(&cfg);
        let timers = core_cfg.timers;
        let ids = IdGen::new([3u8; 16]);
        let mut core = Core::new(core_cfg, stats, registrar, trunks, ids);
        let media = FakeMedia::default();
        let addrs = Addrs {
            udp: vec![PBX_V6.parse().unwrap(), PBX_V4.parse().unwrap()],
            tcp: vec![PBX_V6.parse().unwrap(), PBX_V4.parse().unwrap()],
            ..Addrs::default()
        };
        core.set_calls(Calls::new(
            cfg.clone(),
            timers,
            Box::new(media.clone()),
            addrs,
            IdGen::new([2u8; 16]),
        ));
        core.start(now);
        let mut sim = Sim {
            core,
            media,
            now,
            wall,
            sent: Vec::new(),
            saved: Vec::new(),
            cdrs: Vec::new(),
            events: Vec::new(),
        };
        sim.collect();
        sim
    }

    /// Our address of `remote`'s family.
    pub fn local_for(remote: SocketAddr) -> SocketAddr {
        if remote.is_ipv4() {
            PBX_V4.parse().unwrap()
        } else {
            PBX_V6.parse().unwrap()
        }
    }

    /// A UDP datagram from `from` to our address of its family.
    pub fn recv(&mut self, from: SocketAddr, text: &str) {
        let flow = Flow {
            transport: Transport::Udp,
            local: Sim::local_for(from),
            remote: from,
            conn: 0,
        };
        self.recv_on(flow, text);
    }

    /// A message on `flow`.
    pub fn recv_on(&mut self, flow: Flow, text: &str) {
        let framing = if flow.transport.is_stream() {
            Framing::Stream
        } else {
            Framing::Datagram
        };
        let msg = Message::parse(Bytes::from(text.to_owned()), framing)
            .unwrap_or_else(|e| panic!("harness sent an unparseable message ({e:?}):\n{text}"));
        self.core.handle_message(self.now, self.wall, &msg, flow);
        self.collect();
    }

    /// Moves time forward by `d`, firing every deadline on the way in order.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.core.poll_timeout() {
            if t > end {
                break;
            }
            if t > self.now {
                self.wall += t - self.now;
                self.now = t;
            }
            self.core.handle_timeout(self.now);
            self.collect();
        }
        self.wall += end - self.now;
        self.now = end;
    }

    fn collect(&mut self) {
        while let Some(out) = self.core.poll_output() {
            let (peer, data) = match out {
                Output::Send { peer, data } => (peer, data),
                // No trunk names to resolve in these tests.
                Output::Resolve { name, .. } => panic!("unexpected DNS query for {name}"),
                Output::SaveBindings { data, .. } => {
                    self.saved.push(data);
                    continue;
                }
                Output::Cdr { cdr, .. } => {
                    self.cdrs.push(*cdr);
                    continue;
                }
                Output::Event(e) => {
                    self.events.push(e);
                    continue;
                }
            };
            let framing = if peer.transport.is_stream() {
                Framing::Stream
            } else {
                Framing::Datagram
            };
            // CRLF keep-alives are not messages.
            if data.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let msg = Message::parse(data.clone(), framing).unwrap_or_else(|e| {
                panic!(
                    "core sent an unparseable message ({e:?}):\n{}",
                    String::from_utf8_lossy(&data)
                )
            });
            self.sent.push(Sent { peer, msg });
        }
    }

    /// Everything sent since the last call.
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    /// Everything sent to `addr` since the last take, leaving the rest.
    pub fn take_to(&mut self, addr: SocketAddr) -> Vec<Sent> {
        let (mine, rest) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|s| s.peer.addr == addr);
        self.sent = rest;
        mine
    }

    /// The one message sent to `addr`; panics (with what was sent) unless exactly one was.
    pub fn one_to(&mut self, addr: SocketAddr) -> Sent {
        let mut v = self.take_to(addr);
        assert_eq!(
            v.len(),
            1,
            "expected one message to {addr}, got:\n{}",
            v.iter()
                .map(|s| String::from_utf8_lossy(&s.msg.buf).into_owned())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        v.remove(0)
    }
}

/// A scripted SIP user agent at one address.
pub struct Ua {
    pub addr: SocketAddr,
    pub user: String,
    digest: DigestClient,
    cseq: u32,
    pub call_id: String,
    pub tag: String,
}

impl Ua {
    /// A UA for `user` at `addr` (`[2001:db8::7]:5062`).
    pub fn new(user: &str, password: &str, addr: &str) -> Ua {
        Ua {
            addr: addr.parse().expect("UA address"),
            user: user.into(),
            digest: DigestClient::new(user, password, b"sim-cnonce".to_vec()),
            cseq: 0,
            call_id: format!("{user}-call-1@sim"),
            tag: format!("{user}-tag"),
        }
    }

    fn host(&self) -> String {
        match self.addr {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        }
    }

    /// Next CSeq number.
    pub fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// A request from this UA in its current dialog; `to_tag` for in-dialog requests.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        method: &str,
        uri: &str,
        to: &str,
        to_tag: Option<&str>,
        cseq: u32,
        extra: &[String],
        body: Option<&str>,
    ) -> String {
        let branch = format!("z9hG4bK{}-{}-{cseq}", self.user, method.to_lowercase());
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let mut s = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.example>;tag={tag}\r\n\
             To: <{to}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:{user}@{host}>\r\n",
            host = self.host(),
            user = self.user,
            tag = self.tag,
            cid = self.call_id,
        );
        for h in extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        match body {
            Some(b) => s.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s
    }

    /// A REGISTER for this user (with credentials once a challenge was seen).
    pub fn register(&mut self, expires: u32) -> String {
        let cseq = self.next_cseq();
        let uri = "sip:pbx.example";
        let mut extra = vec![format!("Expires: {expires}")];
        if let Some(a) = self.digest.authorization("REGISTER", uri, b"") {
            extra.push(format!("Authorization: {a}"));
        }
        let to = format!("sip:{}@pbx.example", self.user);
        self.request("REGISTER", uri, &to, None, cseq, &extra, None)
    }

    /// An INVITE to `number` with an audio offer (credentials once a challenge was seen).
    pub fn invite(&mut self, number: &str) -> String {
        let cseq = self.next_cseq();
        let uri = format!("sip:{number}@pbx.example");
        let sdp = self.sdp();
        let mut extra = Vec::new();
        if let Some(a) = self.digest.authorization("INVITE", &uri, sdp.as_bytes()) {
            extra.push(format!("Proxy-Authorization: {a}"));
        }
        self.request("INVITE", &uri, &uri, None, cseq, &extra, Some(&sdp))
    }

    /// This UA's audio offer/answer (PCMU, telephone-event).
    pub fn sdp(&self) -> String {
        let (ip, kind) = match self.addr {
            SocketAddr::V6(a) => (a.ip().to_string(), "IP6"),
            SocketAddr::V4(a) => (a.ip().to_string(), "IP4"),
        };
        format!(
            "v=0\r\no=- 1 1 IN {kind} {ip}\r\ns=-\r\nc=IN {kind} {ip}\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
    }

    /// Takes the challenge of a 401/407 so the next request carries credentials.
    pub fn challenged(&mut self, resp: &Sent) {
        let name = if resp.status() == 407 {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        let values: Vec<Bytes> = resp.msg.header_values(name).collect();
        assert!(!values.is_empty(), "{} without a challenge", resp.status());
        self.digest.on_challenge(&values).expect("usable challenge");
    }

    /// A response to a request the core sent this UA (Via, From, To, Call-ID, CSeq echoed).
    pub fn answer(&self, req: &Sent, code: u16, reason: &str, body: Option<&str>) -> String {
        let mut b = ResponseBuilder::new(&req.msg, code, reason, None);
        if code > 100 {
            b = b.to_tag(&self.tag);
        }
        b = b.header("Contact", &format!("<sip:{}@{}>", self.user, self.host()));
        if let Some(sdp) = body {
            b = b.body("application/sdp", sdp.as_bytes());
        }
        String::from_utf8(b.build().to_vec()).expect("utf-8")
    }

    /// An in-dialog request to the core for a dialog this UA is in as the caller (`to_tag`:
    /// the core's tag, `uri`: its Contact).
    pub fn in_dialog(&mut self, method: &str, uri: &str, to: &str, to_tag: &str) -> String {
        let cseq = self.next_cseq();
        self.request(method, uri, to, Some(to_tag), cseq, &[], None)
    }

    /// In-dialog request for a dialog the core called this UA in (`req`: the INVITE it got):
    /// From/To swapped, our tag as From tag.
    pub fn in_dialog_callee(&self, method: &str, invite: &Sent, cseq: u32) -> String {
        let from =
            String::from_utf8_lossy(&invite.msg.header(HeaderName::From).unwrap()).into_owned();
        let to = String::from_utf8_lossy(&invite.msg.header(HeaderName::To).unwrap()).into_owned();
        let cid =
            String::from_utf8_lossy(&invite.msg.header(HeaderName::CallId).unwrap()).into_owned();
        let contact = match invite.msg.contacts() {
            Ok(Some(podpbx_sip::ContactList::List(l))) if !l.is_empty() => {
                String::from_utf8_lossy(&l[0].addr.uri.raw).into_owned()
            }
            _ => panic!("INVITE without a Contact"),
        };
        format!(
            "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch=z9hG4bK{u}-{m}-{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            host = self.host(),
            u = self.user,
            m = method.to_lowercase(),
            tag = self.tag,
        )
    }
}
