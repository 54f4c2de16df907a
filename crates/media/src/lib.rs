//! RTP/RTCP relay and SDP anchoring for podpbx.
//!
//! * [`sdp`]: parse and rewrite offers/answers so that media flows through
//!   the relay (IPv4 and IPv6, hold, several streams, ICE lines dropped).
//! * [`Relay`]: the zero-copy RTP/RTCP relay (Linux: epoll + recvmmsg/sendmmsg
//!   on worker threads). The call layer allocates a [`Session`] per media
//!   stream, feeds it the peers' SDP addresses ([`RemoteMedia`]), reads
//!   [`StreamStats`] lock-free and gets [`Event`]s (media timeout, latching).
//! * [`packet`]: the header checks of the forwarding path (RFC 7983/5761
//!   demultiplexing, RTP header fields read in place).
//! * [`dtmf`]: RFC 4733 telephone-event generation (rtc-rtp).

#[cfg(not(target_os = "linux"))]
compile_error!("podpbx-media's relay uses epoll and recvmmsg/sendmmsg: Linux only");

pub mod dtmf;
pub mod packet;
mod pool;
mod relay;
pub mod sdp;
mod stats;
mod sys;
mod worker;

pub use relay::{
    Event, Events, Family, FamilyConfig, LatchMode, LatchPolicy, Leg, LocalLeg, Relay, RelayConfig,
    RelayError, RemoteMedia, Session, SessionId, DSCP_EF_TOS,
};
pub use stats::{Drops, StreamStats};
