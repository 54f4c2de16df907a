//! RTP/RTCP relay for podpbx (Linux only).
//!
//! SDP parsing and rewriting (and the [`Family`], [`Leg`], [`RemoteMedia`] types this crate
//! takes) live in the portable `podpbx-sdp` crate, so the call layer builds without the relay.
//!
//! * [`Relay`]: the zero-copy RTP/RTCP relay (Linux: epoll + recvmmsg/sendmmsg
//!   on worker threads). The call layer allocates a [`Session`] per media
//!   stream, feeds it the peers' SDP addresses ([`RemoteMedia`]), reads
//!   [`StreamStats`] lock-free and gets [`Event`]s (media timeout, latching,
//!   the end of each RFC 4733 DTMF event a peer sends).
//! * [`packet`]: the header checks of the forwarding path (RFC 7983/5761
//!   demultiplexing, RTP header fields read in place).
//! * [`dtmf`]: RFC 4733 telephone-event generation (rtc-rtp); received events
//!   are read in place on the forwarding path ([`packet::telephone_event`]).
//!
//! # The call layer's side, for one audio stream
//!
//! ```
//! use podpbx_sdp::{RewritePlan, Sdp};
//! use podpbx_media::{Family, FamilyConfig, Leg, Relay, RelayConfig, RemoteMedia};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (relay, events) = Relay::start(RelayConfig {
//!     ipv4: Some(FamilyConfig { addr: "127.0.0.1".parse()?, ports: 24000..=24099 }),
//!     ipv6: Some(FamilyConfig { addr: "::1".parse()?, ports: 24000..=24099 }),
//!     ..RelayConfig::default()
//! })?;
//!
//! // INVITE from an IPv4 doorbell, to be sent on to an IPv6 phone.
//! let offer = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
//!     t=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")?;
//! let m = &offer.media()[0];
//! let session = relay.allocate(Family::V4, Family::V6)?; // one per active m-line
//! session.set_remote(Leg::A, RemoteMedia::from_sdp(m, false).ok_or("no address")?)?;
//! // The offer sent to the phone carries our IPv6 address and ports.
//! let to_phone = offer.rewrite(&RewritePlan::anchor_all(vec![session.local(Leg::B).anchor()]))?;
//! assert!(to_phone.contains("c=IN IP6 ::1"));
//! // ... later, with the phone's answer: session.set_remote(Leg::B, ...), and the
//! // answer to the doorbell is rewritten with session.local(Leg::A).anchor().
//! let stats = session.stats(Leg::A); // lock-free snapshot
//! assert_eq!(stats.rtp_packets, 0);
//! assert!(events.try_recv().is_none()); // MediaTimeout / Latched / Dtmf events arrive here
//! drop(session); // releases the ports
//! # Ok(())
//! # }
//! ```

#[cfg(not(target_os = "linux"))]
compile_error!("podpbx-media's relay uses epoll and recvmmsg/sendmmsg: Linux only");

pub mod dtmf;
pub mod packet;
mod pool;
mod relay;
mod secure;
pub mod srtp;
mod stats;
mod sys;
mod worker;

pub use relay::{
    Event, Events, Family, FamilyConfig, LatchMode, LatchPolicy, Leg, LocalLeg, PortLayout, Relay,
    RelayConfig, RelayError, RelayTotals, RemoteMedia, Session, SessionId, DSCP_EF_TOS,
    EVENT_QUEUE,
};
pub use secure::{generate_key, SrtpKeys};
pub use stats::{Drops, StreamStats};
