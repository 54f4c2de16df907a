//! What the call layer and the relay say to each other about a media stream: the address
//! family of a leg, which of a session's two legs, and what a peer's SDP announced.

use std::net::{IpAddr, SocketAddr};

use crate::MediaDescription;

/// Address family of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One of the two legs of a relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// First leg (usually the caller).
    A,
    /// Second leg (usually the callee).
    B,
}

impl Leg {
    /// Index into a per-leg array (A = 0, B = 1).
    pub fn idx(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }

    /// The leg of a per-leg array index (0 = A, anything else = B).
    pub fn from_idx(i: usize) -> Leg {
        if i == 0 {
            Leg::A
        } else {
            Leg::B
        }
    }

    /// The other leg.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// What the call layer knows about a leg's peer, from its SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where the peer receives RTP (first guess; unspecified = held with c=0.0.0.0).
    pub rtp: SocketAddr,
    /// Where it receives RTCP (None: RTP port + 1, or the RTP address with rtcp-mux).
    pub rtcp: Option<SocketAddr>,
    /// rtcp-mux in effect on this leg.
    pub rtcp_mux: bool,
    /// Payload type -> clock rate (for jitter); unknown types count as 8000 Hz.
    pub clock_rates: Vec<(u8, u32)>,
    /// telephone-event payload type and clock rate: DTMF generation towards
    /// the peer, and recognition of the RFC 4733 events it sends (the relay's
    /// DTMF event).
    pub telephone_event: Option<(u8, u32)>,
    /// Source IP of the leg's signalling (the peer whose SDP this is). The relay accepts media
    /// only from this IP and the SDP's own IPs (issue #11, no RTP bleed).
    pub signalling: Option<IpAddr>,
}

impl RemoteMedia {
    /// A peer at `rtp`, RTCP on the next port, 8 kHz, no telephone-event.
    pub fn new(rtp: SocketAddr) -> RemoteMedia {
        RemoteMedia {
            rtp,
            rtcp: None,
            rtcp_mux: false,
            clock_rates: Vec::new(),
            telephone_event: None,
            signalling: None,
        }
    }

    /// The same, also accepting media from the leg's signalling source IP.
    pub fn with_signalling(mut self, ip: IpAddr) -> RemoteMedia {
        self.signalling = Some(ip);
        self
    }

    /// From a parsed m-line. `rtcp_mux` should be true only when both legs
    /// negotiated it (the call layer knows the answer). `None` for rejected
    /// streams and host names.
    pub fn from_sdp(m: &MediaDescription, rtcp_mux: bool) -> Option<RemoteMedia> {
        let rtp = m.rtp_addr()?;
        let rtcp = if rtcp_mux { None } else { m.rtcp_addr() };
        let clock_rates = m.clock_rates();
        let telephone_event = m
            .telephone_event
            .map(|pt| (pt, m.clock_rate(pt).unwrap_or(8000)));
        Some(RemoteMedia {
            rtp,
            rtcp,
            rtcp_mux,
            clock_rates,
            telephone_event,
            signalling: None,
        })
    }
}
