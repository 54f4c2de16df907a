//! Where a message travels: the transport, the observed flow a message arrived on and the peer
//! a message goes to. Defined once here and used by the transaction layer, the registrar, the
//! call engine, the configuration and the binary's transports.

use crate::Message;
use std::fmt;
use std::net::SocketAddr;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unreliable: the transaction layer retransmits (§17.1.1.2, §17.1.2.2, §17.2.1).
    Udp,
    /// Reliable: no retransmissions, and Timers D, I, J, K are zero.
    Tcp,
    /// TCP with TLS (RFC 3261 §26.2.1, RFC 5630): reliable like TCP.
    Tls,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// True for transports that deliver reliably (no retransmissions needed).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// True for connection-oriented transports (a flow is a connection).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The lower-case name (`udp`, `tcp`, `tls`): the value of a URI's `transport` parameter
    /// (RFC 3261 §19.1.1), the configuration's spelling and the persisted bindings' field.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The token in a Via header's sent-protocol (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The transport named `s` (case-insensitive, as in a URI `transport=` parameter).
    pub fn from_name(s: &str) -> Option<Transport> {
        Transport::ALL
            .into_iter()
            .find(|t| t.param().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.param())
    }
}

/// The remote end of a flow, as filled in by the transport layer: where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Remote socket address.
    pub addr: SocketAddr,
    /// Transport protocol.
    pub transport: Transport,
    /// Connection id for connection-oriented transports, 0 for UDP.
    pub conn: u64,
}

/// Where a message came from: the flow observed on the wire (after any NAT). Requests for a
/// registered contact go back along it (symmetric signalling, like Asterisk's rewrite_contact
/// + rport), whatever private address the Contact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Transport protocol.
    pub transport: Transport,
    /// Our pinned address and port it arrived on.
    pub local: SocketAddr,
    /// The peer as seen on the wire (the packet's source address).
    pub remote: SocketAddr,
    /// Connection id for connection-oriented transports (0 for UDP). After a restart the
    /// connection is gone; the shell decides how to reach such a flow.
    pub conn: u64,
}

impl Flow {
    /// Where to send requests and responses on this flow.
    pub fn peer(&self) -> Peer {
        Peer {
            addr: self.remote,
            transport: self.transport,
            conn: self.conn,
        }
    }

    /// Where responses to `req`, received on this flow, go (RFC 3261 §18.2.2, RFC 3581 §4):
    /// the connection it came on for a reliable transport; for UDP the source IP (never the
    /// Via host, which may be a broadcast or private address) and the source port when the
    /// top Via asked for `rport` (or cannot be read), else the Via's sent-by port (5060 when
    /// absent).
    pub fn response_peer(&self, req: &Message) -> Peer {
        let mut peer = self.peer();
        if !self.transport.is_reliable() {
            if let Ok(via) = req.top_via_ref() {
                if via.rport().is_none() {
                    peer.addr = SocketAddr::new(self.remote.ip(), via.port.unwrap_or(5060));
                }
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn flow(transport: Transport) -> Flow {
        Flow {
            transport,
            local: "[2001:db8::1]:5060".parse().unwrap(),
            remote: "[2001:db8::7]:40001".parse().unwrap(),
            conn: 9,
        }
    }

    fn request(via: &str) -> Message {
        let raw = format!(
            "OPTIONS sip:pbx.example SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:pbx.example>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), crate::Framing::Datagram).expect("parses")
    }

    #[test]
    fn udp_response_goes_to_source_ip_and_via_port_without_rport() {
        let req = request("SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bKa");
        let p = flow(Transport::Udp).response_peer(&req);
        assert_eq!(p.addr, "[2001:db8::7]:5062".parse().unwrap());
        let req = request("SIP/2.0/UDP [2001:db8::99];branch=z9hG4bKa");
        let p = flow(Transport::Udp).response_peer(&req);
        assert_eq!(p.addr, "[2001:db8::7]:5060".parse().unwrap());
    }

    #[test]
    fn udp_response_goes_to_source_port_with_rport() {
        let req = request("SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bKa;rport");
        let p = flow(Transport::Udp).response_peer(&req);
        assert_eq!(p, flow(Transport::Udp).peer());
    }

    #[test]
    fn tcp_response_goes_back_on_the_connection() {
        let req = request("SIP/2.0/TCP [2001:db8::99]:5062;branch=z9hG4bKa");
        let p = flow(Transport::Tcp).response_peer(&req);
        assert_eq!(p.addr, "[2001:db8::7]:40001".parse().unwrap());
        assert_eq!((p.transport, p.conn), (Transport::Tcp, 9));
    }

    #[test]
    fn transport_names() {
        for t in Transport::ALL {
            assert_eq!(Transport::from_name(t.param()), Some(t));
            assert_eq!(Transport::from_name(t.via_token()), Some(t));
            assert_eq!(t.to_string(), t.param());
        }
        assert_eq!(Transport::from_name("sctp"), None);
    }
}
