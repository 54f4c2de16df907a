//! SDP parsing and rewriting for media anchoring (RFC 4566/8866, RFC 3264), and the media
//! vocabulary the call layer and the relay share ([`Family`], [`Leg`], [`RemoteMedia`],
//! [`Anchor`]).
//!
//! This crate is portable and does no I/O: the call engine (`podpbx-b2bua`) builds on any OS
//! with it, while the Linux-only relay (`podpbx-media`) takes [`RemoteMedia`] and gives
//! [`Anchor`]s through the same types.
//!
//! [`Sdp::parse`] reads an offer or answer into a light model that keeps the
//! original text; [`Sdp::rewrite`] produces the SDP the relay advertises:
//!
//! * `c=` (session and media level) carry our address, with `IN IP4` or
//!   `IN IP6` following the anchor's family;
//! * `m=` ports are our RTP ports; rejected streams (port 0) stay at 0;
//! * `a=rtcp` points at our RTCP port (and address when it named one);
//! * ICE lines (`a=candidate`, `a=ice-*`, `a=end-of-candidates`,
//!   `a=remote-candidates`) are dropped, since the relay is the only media
//!   address;
//! * every other line is kept, in order, byte for byte (line endings included);
//! * with [`Sdp::rewrite_secure`], per stream: the SRTP profile and `a=crypto` lines (RFC 4568
//!   SDES, [`Crypto`]) are kept, removed ([`MediaSecurity::Plain`]) or replaced by ours
//!   ([`MediaSecurity::Srtp`]), so that each leg of a call gets its own keys.
//!
//! Hold (RFC 3264 §8.4): a `c=0.0.0.0` (or `::`) stream is reported as held
//! ([`MediaDescription::zero_address`], [`MediaDescription::on_hold`]). Our
//! address replaces the zero address — RTCP keeps flowing through the relay —
//! and the hold meaning is kept in the direction attribute: a stream that
//! would otherwise read sendrecv becomes `a=sendonly`, recvonly becomes
//! `a=inactive` (explicit direction lines are replaced, or a media-level one is
//! added at the end of the stream's section). [`ZeroAddressHold::Keep`] keeps
//! `c=0.0.0.0` instead, for peers that only understand RFC 2543 hold.
//!
//! The origin line is kept; [`OriginPlan`] or [`increment_origin_version`]
//! bump its version for the call layer.
//!
//! Malformed input (not UTF-8, not starting with `v=0`, a bad `o=`, `c=`, `m=`,
//! `a=rtpmap` or `a=rtcp`, a stream without a connection address) is a typed
//! [`SdpError`]; the call layer answers 488. Nothing here panics.

mod crypto;
mod media;

pub use crypto::{decode_base64, encode_base64, secure_profile, Crypto, MediaSecurity};
pub use media::{Family, Leg, RemoteMedia};

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest SDP body accepted.
pub const MAX_SDP_LEN: usize = 64 * 1024;

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// No content.
    #[error("SDP is empty")]
    Empty,
    /// Larger than [`MAX_SDP_LEN`].
    #[error("SDP is larger than {MAX_SDP_LEN} bytes")]
    TooLarge,
    /// Not valid UTF-8.
    #[error("SDP is not valid UTF-8")]
    NotUtf8,
    /// The first line is not `v=0`.
    #[error("SDP does not start with v=0")]
    MissingVersion,
    /// No `o=` line before the first `m=` line.
    #[error("SDP has no o= line")]
    MissingOrigin,
    /// A line that does not parse.
    #[error("SDP line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An active stream without a connection address (neither media nor session level).
    #[error("m-line {index} has no connection address")]
    MissingConnection {
        /// 0-based m-line index.
        index: usize,
    },
    /// The rewrite plan does not match the m-lines.
    #[error("rewrite plan has {plan} entries for {media} m-lines")]
    PlanMismatch {
        /// Entries in the plan.
        plan: usize,
        /// m-lines in the SDP.
        media: usize,
    },
}

/// Address type of a connection line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

impl AddrType {
    /// The token as written in SDP.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrType::Ip4 => "IP4",
            AddrType::Ip6 => "IP6",
        }
    }

    /// The type matching an address.
    pub fn of(ip: IpAddr) -> AddrType {
        match ip {
            IpAddr::V4(_) => AddrType::Ip4,
            IpAddr::V6(_) => AddrType::Ip6,
        }
    }
}

/// Connection data (`c=IN <addrtype> <address>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `IP4` or `IP6`.
    pub addr_type: AddrType,
    /// The address.
    pub address: Address,
}

/// An address in a `c=` or `a=rtcp` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An IP literal.
    Ip(IpAddr),
    /// A host name (allowed by RFC 4566; the call layer resolves it).
    Fqdn(String),
}

impl Address {
    /// The IP, if a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Fqdn(_) => None,
        }
    }

    /// `0.0.0.0` or `::`: RFC 2543 hold.
    pub fn is_unspecified(&self) -> bool {
        matches!(self, Address::Ip(ip) if ip.is_unspecified())
    }
}

/// Media direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    fn parse(attr: &str) -> Option<Direction> {
        match attr {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether the SDP's author sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the SDP's author receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same direction, with receiving switched off (RFC 2543 hold).
    fn without_receive(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

/// The origin line (`o=<username> <sess-id> <sess-version> IN <addrtype> <address>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Username (`-` when none).
    pub username: String,
    /// Session id (kept as text: some UAs exceed 64 bits).
    pub session_id: String,
    /// Session version.
    pub session_version: u64,
    /// Network type (`IN`).
    pub net_type: String,
    /// Address type (`IP4`/`IP6`; kept as text).
    pub addr_type: String,
    /// Unicast address (kept as text).
    pub address: String,
}

impl Origin {
    fn to_line(&self) -> String {
        format!(
            "o={} {} {} {} {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.net_type,
            self.addr_type,
            self.address
        )
    }
}

/// One `a=rtpmap` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type (0..=127).
    pub payload_type: u8,
    /// Encoding name as written (e.g. `PCMU`, `telephone-event`).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channels / encoding parameters, if given.
    pub channels: Option<u16>,
}

/// An `a=rtcp` attribute (RFC 3605).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcpAttr {
    /// RTCP port.
    pub port: u16,
    /// Address, when given.
    pub connection: Option<Connection>,
}

/// One media description (m-line and its attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// 0-based index among the m-lines.
    pub index: usize,
    /// Media type (`audio`, `video`, `application`...).
    pub media: String,
    /// Port (0: rejected/disabled stream).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`...).
    pub proto: String,
    /// Format list as written.
    pub formats: Vec<String>,
    /// Media-level `c=`, if any.
    pub media_connection: Option<Connection>,
    /// Connection in effect (media level, else session level).
    pub connection: Option<Connection>,
    /// `a=rtcp`, if any.
    pub rtcp: Option<RtcpAttr>,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
    /// Direction in effect (media level, else session level, else sendrecv).
    pub direction: Direction,
    /// `a=rtpmap` entries.
    pub rtpmaps: Vec<RtpMap>,
    /// Payload type of the first `telephone-event` rtpmap listed in the formats.
    pub telephone_event: Option<u8>,
    /// `a=crypto` lines (RFC 4568 SDES), in order.
    pub crypto: Vec<Crypto>,
    first_line: usize,
    end_line: usize,
    direction_line: Option<usize>,
}

/// Static payload-type clock rates (RFC 3551 §6).
pub fn static_clock_rate(pt: u8) -> Option<u32> {
    Some(match pt {
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => 8000,
        6 => 16000,
        10 | 11 => 44100,
        16 => 11025,
        17 => 22050,
        14 | 25 | 26 | 28 | 31 | 32 | 33 | 34 => 90000,
        _ => return None,
    })
}

impl MediaDescription {
    /// The SRTP profiles `RTP/SAVP` and `RTP/SAVPF` (RFC 3711, RFC 5124).
    pub fn secure(&self) -> bool {
        let p = self.proto.to_ascii_uppercase();
        p == "RTP/SAVP" || p == "RTP/SAVPF"
    }

    /// Port 0: the stream is rejected or disabled; no relay port is needed.
    pub fn rejected(&self) -> bool {
        self.port == 0
    }

    /// Effective connection address is `0.0.0.0` / `::` (RFC 2543 hold).
    pub fn zero_address(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.address.is_unspecified())
    }

    /// Held in the RFC 3264 §8.4 sense: `sendonly`, `inactive`, or the zero
    /// address. The relay's hold-aware media timeout should also be used for
    /// `recvonly` (the peer does not send); see [`Self::peer_sends`].
    pub fn on_hold(&self) -> bool {
        self.zero_address() || matches!(self.direction, Direction::SendOnly | Direction::Inactive)
    }

    /// Whether the author of this SDP will send media on this stream.
    pub fn peer_sends(&self) -> bool {
        !self.rejected() && self.direction.sends()
    }

    /// The RTP formats as payload types (non-numeric formats skipped).
    pub fn payload_types(&self) -> Vec<u8> {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
            .collect()
    }

    /// Clock rate of a payload type: rtpmap, else the static table.
    pub fn clock_rate(&self, pt: u8) -> Option<u32> {
        self.rtpmaps
            .iter()
            .find(|m| m.payload_type == pt)
            .map(|m| m.clock_rate)
            .or_else(|| static_clock_rate(pt))
    }

    /// (payload type, clock rate) for every listed format with a known rate.
    pub fn clock_rates(&self) -> Vec<(u8, u32)> {
        self.payload_types()
            .into_iter()
            .filter_map(|pt| self.clock_rate(pt).map(|r| (pt, r)))
            .collect()
    }

    /// Where the peer says it receives RTP (`None` for FQDNs, rejected streams
    /// and missing connections; the zero address is returned as is).
    pub fn rtp_addr(&self) -> Option<SocketAddr> {
        if self.rejected() {
            return None;
        }
        let ip = self.connection.as_ref()?.address.ip()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// The RTCP port in effect: the RTP port with rtcp-mux, else `a=rtcp`,
    /// else the RTP port + 1 (`None` for rejected streams).
    pub fn rtcp_port(&self) -> Option<u16> {
        if self.rejected() {
            None
        } else if self.rtcp_mux {
            Some(self.port)
        } else if let Some(r) = &self.rtcp {
            Some(r.port)
        } else {
            self.port.checked_add(1)
        }
    }

    /// Where the peer says it receives RTCP: `a=rtcp`, else the RTP port + 1,
    /// or the RTP address with rtcp-mux.
    pub fn rtcp_addr(&self) -> Option<SocketAddr> {
        let rtp = self.rtp_addr()?;
        if self.rtcp_mux {
            return Some(rtp);
        }
        match &self.rtcp {
            Some(r) => {
                let ip = match &r.connection {
                    Some(c) => c.address.ip()?,
                    None => rtp.ip(),
                };
                Some(SocketAddr::new(ip, r.port))
            }
            None => Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

/// A parsed SDP body; the original text is kept for byte-exact rewriting.
#[derive(Debug, Clone)]
pub struct Sdp {
    text: String,
    lines: Vec<Line>,
    origin: Origin,
    origin_line: usize,
    session_connection: Option<Connection>,
    session_connection_line: Option<usize>,
    session_direction: Option<Direction>,
    media: Vec<MediaDescription>,
}

/// What to do with one m-line when rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPlan {
    /// Anchor the stream at the relay.
    Anchor(Anchor),
    /// Reject the stream: port 0.
    Reject,
}

/// Our side of an anchored stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Relay address (pinned IPv4 or IPv6).
    pub addr: IpAddr,
    /// RTP port.
    pub rtp_port: u16,
    /// RTCP port.
    pub rtcp_port: u16,
}

/// What to do with the origin line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OriginPlan {
    /// Keep it byte for byte.
    #[default]
    Keep,
    /// Set the session version.
    SetVersion(u64),
    /// Add one to the session version.
    Increment,
}

/// RFC 2543 hold (`c=0.0.0.0`) handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroAddressHold {
    /// Our address replaces the zero address; the hold is kept in the
    /// direction attribute (RFC 3264 §8.4).
    #[default]
    RewriteKeepDirection,
    /// Keep `c=0.0.0.0` (and the port) for peers that rely on it.
    Keep,
}

/// How to rewrite an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewritePlan {
    /// One entry per m-line, in order. Entries for streams that are already
    /// rejected (port 0) are ignored: their port stays 0.
    pub media: Vec<MediaPlan>,
    /// Origin line handling.
    pub origin: OriginPlan,
    /// `c=0.0.0.0` handling.
    pub zero_address_hold: ZeroAddressHold,
}

impl RewritePlan {
    /// A plan anchoring every m-line.
    pub fn anchor_all(anchors: Vec<Anchor>) -> RewritePlan {
        RewritePlan {
            media: anchors.into_iter().map(MediaPlan::Anchor).collect(),
            origin: OriginPlan::Keep,
            zero_address_hold: ZeroAddressHold::default(),
        }
    }
}

fn syntax(line: usize, reason: &'static str) -> SdpError {
    SdpError::Syntax {
        line: line + 1,
        reason,
    }
}

fn is_ice_attr(attr: &str) -> bool {
    let name = attr.split(':').next().unwrap_or("");
    name == "candidate"
        || name == "end-of-candidates"
        || name == "remote-candidates"
        || name.starts_with("ice-")
}

fn parse_address(addr_type: AddrType, s: &str, line: usize) -> Result<Address, SdpError> {
    // Strip multicast TTL / count suffixes.
    let host = s.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(syntax(line, "empty address"));
    }
    match addr_type {
        AddrType::Ip4 => {
            if let Ok(ip) = host.parse::<Ipv4Addr>() {
                return Ok(Address::Ip(IpAddr::V4(ip)));
            }
        }
        AddrType::Ip6 => {
            if let Ok(ip) = host.parse::<Ipv6Addr>() {
                return Ok(Address::Ip(IpAddr::V6(ip)));
            }
        }
    }
    let fqdn_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && host.bytes().any(|b| b.is_ascii_alphabetic());
    if fqdn_ok && host.len() <= 253 {
        Ok(Address::Fqdn(host.to_string()))
    } else {
        Err(syntax(line, "bad address"))
    }
}

fn parse_connection_fields<'a>(
    mut it: impl Iterator<Item = &'a str>,
    line: usize,
) -> Result<Connection, SdpError> {
    let net = it
        .next()
        .ok_or_else(|| syntax(line, "missing network type"))?;
    if net != "IN" {
        return Err(syntax(line, "network type is not IN"));
    }
    let at = match it.next() {
        Some("IP4") => AddrType::Ip4,
        Some("IP6") => AddrType::Ip6,
        _ => return Err(syntax(line, "address type is not IP4 or IP6")),
    };
    let addr = it.next().ok_or_else(|| syntax(line, "missing address"))?;
    let address = parse_address(at, addr, line)?;
    if it.next().is_some() {
        return Err(syntax(line, "trailing fields"));
    }
    Ok(Connection {
        addr_type: at,
        address,
    })
}

fn parse_origin(v: &str, line: usize) -> Result<Origin, SdpError> {
    let f: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
    if f.len() != 6 {
        return Err(syntax(line, "o= needs 6 fields"));
    }
    let session_version = f[2]
        .parse::<u64>()
        .map_err(|_| syntax(line, "o= session version is not a number"))?;
    if f[1].is_empty() || !f[1].bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax(line, "o= session id is not a number"));
    }
    Ok(Origin {
        username: f[0].to_string(),
        session_id: f[1].to_string(),
        session_version,
        net_type: f[3].to_string(),
        addr_type: f[4].to_string(),
        address: f[5].to_string(),
    })
}

fn parse_rtpmap(v: &str, line: usize) -> Result<RtpMap, SdpError> {
    let bad = || syntax(line, "bad a=rtpmap");
    let (pt, rest) = v.split_once(' ').ok_or_else(bad)?;
    let payload_type = pt.parse::<u8>().map_err(|_| bad())?;
    if payload_type > 127 {
        return Err(bad());
    }
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
    let clock_rate = parts
        .next()
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|r| *r > 0)
        .ok_or_else(bad)?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse::<u16>().map_err(|_| bad())?),
        None => None,
    };
    Ok(RtpMap {
        payload_type,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

fn parse_rtcp(v: &str, line: usize) -> Result<RtcpAttr, SdpError> {
    let mut it = v.split(' ').filter(|s| !s.is_empty());
    let port = it
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| syntax(line, "bad a=rtcp port"))?;
    let rest: Vec<&str> = it.collect();
    let connection = if rest.is_empty() {
        None
    } else {
        Some(parse_connection_fields(rest.into_iter(), line)?)
    };
    Ok(RtcpAttr { port, connection })
}

impl Sdp {
    /// Parse an SDP body.
    pub fn parse(input: &[u8]) -> Result<Sdp, SdpError> {
        if input.len() > MAX_SDP_LEN {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(input).map_err(|_| SdpError::NotUtf8)?;
        if text.trim().is_empty() {
            return Err(SdpError::Empty);
        }
        let mut lines = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let (end, next) = match text[pos..].find('\n') {
                Some(i) => {
                    let nl = pos + i;
                    let end = if nl > pos && text.as_bytes()[nl - 1] == b'\r' {
                        nl - 1
                    } else {
                        nl
                    };
                    (end, nl + 1)
                }
                None => (text.len(), text.len()),
            };
            lines.push(Line {
                start: pos,
                end,
                next,
            });
            pos = next;
        }

        let mut origin = None;
        let mut session_connection = None;
        let mut session_connection_line = None;
        let mut session_direction = None;
        let mut media: Vec<MediaDescription> = Vec::new();
        let mut seen_version = false;

        for (i, l) in lines.iter().enumerate() {
            let s = &text[l.start..l.end];
            if s.is_empty() {
                continue;
            }
            let b = s.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(syntax(i, "not a <type>=<value> line"));
            }
            let (ty, v) = (b[0], &s[2..]);
            if !seen_version {
                if ty != b'v' || v != "0" {
                    return Err(SdpError::MissingVersion);
                }
                seen_version = true;
                continue;
            }
            match ty {
                b'v' => return Err(syntax(i, "repeated v= line")),
                b'o' => {
                    if origin.is_some() || !media.is_empty() {
                        return Err(syntax(i, "misplaced o= line"));
                    }
                    origin = Some((parse_origin(v, i)?, i));
                }
                b'c' => {
                    let c = parse_connection_fields(v.split(' ').filter(|s| !s.is_empty()), i)?;
                    match media.last_mut() {
                        Some(m) => m.media_connection = Some(c),
                        None => {
                            session_connection = Some(c);
                            session_connection_line = Some(i);
                        }
                    }
                }
                b'm' => {
                    if let Some(m) = media.last_mut() {
                        m.end_line = i;
                    }
                    let mut f = v.split(' ').filter(|s| !s.is_empty());
                    let mtype = f.next().ok_or_else(|| syntax(i, "empty m= line"))?;
                    let port_s = f.next().ok_or_else(|| syntax(i, "m= without port"))?;
                    let port = port_s
                        .split('/')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| syntax(i, "bad m= port"))?;
                    let proto = f.next().ok_or_else(|| syntax(i, "m= without protocol"))?;
                    let formats: Vec<String> = f.map(str::to_string).collect();
                    media.push(MediaDescription {
                        index: media.len(),
                        media: mtype.to_string(),
                        port,
                        proto: proto.to_string(),
                        formats,
                        media_connection: None,
                        connection: None,
                        rtcp: None,
                        rtcp_mux: false,
                        direction: Direction::SendRecv,
                        rtpmaps: Vec::new(),
                        telephone_event: None,
                        crypto: Vec::new(),
                        first_line: i,
                        end_line: lines.len(),
                        direction_line: None,
                    });
                }
                b'a' => {
                    let (name, val) = match v.split_once(':') {
                        Some((n, x)) => (n, Some(x)),
                        None => (v, None),
                    };
                    if let Some(d) = Direction::parse(name) {
                        match media.last_mut() {
                            Some(m) => {
                                m.direction = d;
                                m.direction_line = Some(i);
                            }
                            None => session_direction = Some(d),
                        }
                        continue;
                    }
                    let Some(m) = media.last_mut() else {
                        continue;
                    };
                    match (name, val) {
                        ("rtpmap", Some(x)) => m.rtpmaps.push(parse_rtpmap(x, i)?),
                        ("rtpmap", None) => return Err(syntax(i, "bad a=rtpmap")),
                        ("rtcp", Some(x)) => m.rtcp = Some(parse_rtcp(x, i)?),
                        ("rtcp", None) => return Err(syntax(i, "bad a=rtcp port")),
                        ("rtcp-mux", _) => m.rtcp_mux = true,
                        ("crypto", Some(x)) => m.crypto.push(Crypto::parse(x, i)?),
                        ("crypto", None) => return Err(syntax(i, "bad a=crypto")),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if !seen_version {
            return Err(SdpError::Empty);
        }
        let (origin, origin_line) = origin.ok_or(SdpError::MissingOrigin)?;

        for m in media.iter_mut() {
            if m.direction_line.is_none() {
                m.direction = session_direction.unwrap_or_default();
            }
            m.connection = m
                .media_connection
                .clone()
                .or_else(|| session_connection.clone());
            if m.connection.is_none() && !m.rejected() {
                return Err(SdpError::MissingConnection { index: m.index });
            }
            let pts = m.payload_types();
            m.telephone_event = m
                .rtpmaps
                .iter()
                .find(|r| {
                    r.encoding.eq_ignore_ascii_case("telephone-event")
                        && pts.contains(&r.payload_type)
                })
                .map(|r| r.payload_type);
        }

        Ok(Sdp {
            text: text.to_string(),
            lines,
            origin,
            origin_line,
            session_connection,
            session_connection_line,
            session_direction,
            media,
        })
    }

    /// The original text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The origin line.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Session-level connection, if any.
    pub fn session_connection(&self) -> Option<&Connection> {
        self.session_connection.as_ref()
    }

    /// Session-level direction attribute, if any.
    pub fn session_direction(&self) -> Option<Direction> {
        self.session_direction
    }

    /// The media descriptions, in order.
    pub fn media(&self) -> &[MediaDescription] {
        &self.media
    }

    /// Whether every active stream is held.
    pub fn on_hold(&self) -> bool {
        let mut active = self.media.iter().filter(|m| !m.rejected()).peekable();
        active.peek().is_some() && active.all(|m| m.on_hold())
    }

    fn line(&self, i: usize) -> &str {
        let l = self.lines[i];
        &self.text[l.start..l.end]
    }

    fn line_with_eol(&self, i: usize) -> &str {
        let l = self.lines[i];
        &self.text[l.start..l.next]
    }

    fn eol(&self, i: usize) -> &str {
        let l = self.lines[i];
        &self.text[l.end..l.next]
    }

    fn default_eol(&self) -> &str {
        self.lines
            .iter()
            .map(|l| &self.text[l.end..l.next])
            .find(|e| !e.is_empty())
            .unwrap_or("\r\n")
    }

    /// Rewrite for anchoring at the relay; see the module documentation.
    pub fn rewrite(&self, plan: &RewritePlan) -> Result<String, SdpError> {
        self.rewrite_secure(plan, &[])
    }

    /// [`Sdp::rewrite`] that also sets each stream's SRTP profile and keys: `security` has one
    /// entry per m-line (missing entries mean [`MediaSecurity::Keep`]). Rejected streams are
    /// left alone.
    pub fn rewrite_secure(
        &self,
        plan: &RewritePlan,
        security: &[MediaSecurity],
    ) -> Result<String, SdpError> {
        if plan.media.len() != self.media.len() {
            return Err(SdpError::PlanMismatch {
                plan: plan.media.len(),
                media: self.media.len(),
            });
        }
        let default_eol = self.default_eol().to_string();
        let keep_zero = plan.zero_address_hold == ZeroAddressHold::Keep;
        // Address used for the session-level c=: that of the first anchored
        // stream that is not kept at the zero address.
        let session_anchor = self
            .media
            .iter()
            .zip(&plan.media)
            .find_map(|(m, p)| match p {
                MediaPlan::Anchor(a) if !(m.rejected() || keep_zero && m.zero_address()) => {
                    Some(a.addr)
                }
                _ => None,
            });
        let session_c_zero = self
            .session_connection
            .as_ref()
            .is_some_and(|c| c.address.is_unspecified());
        // The session-level address after rewriting.
        let new_session_ip: Option<IpAddr> = match (&self.session_connection, session_anchor) {
            (Some(_), Some(a)) if !(keep_zero && session_c_zero) => Some(a),
            (Some(c), _) => c.address.ip(),
            (None, _) => None,
        };

        let mut out = String::with_capacity(self.text.len() + 128);
        let first_media_line = self
            .media
            .first()
            .map_or(self.lines.len(), |m| m.first_line);

        // Session section.
        for i in 0..first_media_line {
            let s = self.line(i);
            if i == self.origin_line && plan.origin != OriginPlan::Keep {
                let mut o = self.origin.clone();
                o.session_version = match plan.origin {
                    OriginPlan::SetVersion(v) => v,
                    OriginPlan::Increment => o.session_version.wrapping_add(1),
                    OriginPlan::Keep => o.session_version,
                };
                out.push_str(&o.to_line());
                out.push_str(self.eol(i));
            } else if Some(i) == self.session_connection_line {
                match (new_session_ip, session_anchor) {
                    (Some(ip), Some(a)) if ip == a => {
                        let _ = write!(out, "c=IN {} {}", AddrType::of(ip).as_str(), ip);
                        out.push_str(self.eol(i));
                    }
                    _ => out.push_str(self.line_with_eol(i)),
                }
            } else if s.starts_with("a=") && is_ice_attr(&s[2..]) {
                continue;
            } else {
                out.push_str(self.line_with_eol(i));
            }
        }

        // Media sections.
        for (mi, (m, p)) in self.media.iter().zip(&plan.media).enumerate() {
            let sec = match security.get(mi) {
                Some(s) if !m.rejected() && *p != MediaPlan::Reject => s,
                _ => &MediaSecurity::Keep,
            };
            let anchor = match p {
                _ if m.rejected() => None,
                MediaPlan::Reject => None,
                MediaPlan::Anchor(a) => Some(*a),
            };
            let zero = m.zero_address();
            let keep_this_zero = keep_zero && zero;
            let reject_now = !m.rejected() && *p == MediaPlan::Reject;
            // Does this stream need its own c= line (none at media level and
            // the session one, after rewriting, is not ours)?
            let insert_c = match anchor {
                Some(a) if !keep_this_zero => {
                    m.media_connection.is_none() && new_session_ip != Some(a.addr)
                }
                _ => false,
            };
            // Hold semantics when our address replaces the zero address.
            let hold_direction = match anchor {
                Some(_) if zero && !keep_this_zero => {
                    let d = m.direction.without_receive();
                    (d != m.direction).then_some(d)
                }
                _ => None,
            };
            let c_line =
                anchor.map(|a| format!("c=IN {} {}", AddrType::of(a.addr).as_str(), a.addr));
            let info_next =
                m.first_line + 1 < m.end_line && self.line(m.first_line + 1).starts_with("i=");
            for i in m.first_line..m.end_line {
                let s = self.line(i);
                let eol = self.eol(i);
                let eol_or_default = if eol.is_empty() {
                    default_eol.as_str()
                } else {
                    eol
                };
                if i == m.first_line {
                    // m=<media> <port>[/<n>] <rest>
                    let new_port = match anchor {
                        Some(a) => Some(a.rtp_port),
                        None if reject_now => Some(0),
                        None => None,
                    };
                    let proto = match sec {
                        MediaSecurity::Keep => None,
                        MediaSecurity::Plain => Some(secure_profile(&m.proto, false)),
                        MediaSecurity::Srtp(_) => Some(secure_profile(&m.proto, true)),
                    };
                    match (new_port, proto) {
                        (None, None) => out.push_str(s),
                        (port, proto) => {
                            let after_media = s[2..].find(' ').map_or(s.len(), |k| k + 2);
                            let rest = s[after_media..].trim_start();
                            let (old_port, after_port) = rest.split_once(' ').unwrap_or((rest, ""));
                            let port = port.map_or(old_port.to_string(), |p| p.to_string());
                            match proto {
                                None => {
                                    let _ = write!(out, "m={} {} {}", m.media, port, after_port);
                                }
                                Some(proto) => {
                                    // after_port = "<proto> <fmt>..."
                                    let fmts = after_port.split_once(' ').map_or("", |x| x.1);
                                    let _ = write!(out, "m={} {} {}", m.media, port, proto);
                                    if !fmts.is_empty() {
                                        out.push(' ');
                                        out.push_str(fmts);
                                    }
                                }
                            }
                        }
                    }
                    if let (true, false, Some(c)) = (insert_c, info_next, &c_line) {
                        out.push_str(eol_or_default);
                        out.push_str(c);
                    }
                    out.push_str(eol);
                    continue;
                }
                if i == m.first_line + 1 && info_next {
                    out.push_str(s);
                    if let (true, Some(c)) = (insert_c, &c_line) {
                        out.push_str(eol_or_default);
                        out.push_str(c);
                    }
                    out.push_str(eol);
                    continue;
                }
                if s.starts_with("c=") {
                    match (&c_line, keep_this_zero) {
                        (Some(c), false) => {
                            out.push_str(c);
                            out.push_str(eol);
                        }
                        _ => out.push_str(self.line_with_eol(i)),
                    }
                    continue;
                }
                if let Some(attr) = s.strip_prefix("a=") {
                    if is_ice_attr(attr) {
                        continue;
                    }
                    if attr.starts_with("crypto:") && *sec != MediaSecurity::Keep {
                        continue;
                    }
                    if Some(i) == m.direction_line {
                        if let Some(d) = hold_direction {
                            let _ = write!(out, "a={}", d.as_str());
                            out.push_str(eol);
                            continue;
                        }
                    }
                    if attr.starts_with("rtcp:") {
                        if let Some(a) = anchor {
                            let with_addr = m.rtcp.as_ref().is_some_and(|r| r.connection.is_some());
                            let port = if m.rtcp_mux
                                && m.rtcp.as_ref().is_some_and(|r| r.port == m.port)
                            {
                                a.rtp_port
                            } else {
                                a.rtcp_port
                            };
                            if with_addr {
                                let _ = write!(
                                    out,
                                    "a=rtcp:{} IN {} {}",
                                    port,
                                    AddrType::of(a.addr).as_str(),
                                    a.addr
                                );
                            } else {
                                let _ = write!(out, "a=rtcp:{port}");
                            }
                            out.push_str(eol);
                            continue;
                        }
                    }
                }
                out.push_str(self.line_with_eol(i));
            }
            if let (Some(d), None) = (hold_direction, m.direction_line) {
                if !out.ends_with('\n') {
                    out.push_str(&default_eol);
                }
                let _ = write!(out, "a={}", d.as_str());
                out.push_str(&default_eol);
            }
            if let MediaSecurity::Srtp(line) = sec {
                if !out.ends_with('\n') {
                    out.push_str(&default_eol);
                }
                out.push_str(line);
                out.push_str(&default_eol);
            }
        }
        Ok(out)
    }
}

/// Add one to the origin's session version, changing nothing else.
pub fn increment_origin_version(input: &[u8]) -> Result<String, SdpError> {
    set_origin_version(input, None)
}

/// Set the origin's session version (`None`: increment), changing nothing else.
pub fn set_origin_version(input: &[u8], version: Option<u64>) -> Result<String, SdpError> {
    let sdp = Sdp::parse(input)?;
    let mut out = String::with_capacity(sdp.text.len() + 4);
    for i in 0..sdp.lines.len() {
        if i == sdp.origin_line {
            let mut o = sdp.origin.clone();
            o.session_version = version.unwrap_or(o.session_version.wrapping_add(1));
            out.push_str(&o.to_line());
            out.push_str(sdp.eol(i));
        } else {
            out.push_str(sdp.line_with_eol(i));
        }
    }
    Ok(out)
}

/// The same SDP as a fresh offer that sends and receives: every direction attribute
/// (`a=sendonly`/`recvonly`/`inactive`/`sendrecv`, RFC 3264 §5.1) removed, so the default,
/// sendrecv, applies. A peer's last SDP may be its answer to a hold; offered to someone new
/// (a transfer target) it must not carry that hold along.
pub fn sendrecv(input: &[u8]) -> Result<String, SdpError> {
    let sdp = Sdp::parse(input)?;
    let mut out = String::with_capacity(sdp.text.len());
    for i in 0..sdp.lines.len() {
        let l = sdp.line(i);
        if l.strip_prefix("a=")
            .is_some_and(|a| Direction::parse(a).is_some())
        {
            continue;
        }
        out.push_str(sdp.line_with_eol(i));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
