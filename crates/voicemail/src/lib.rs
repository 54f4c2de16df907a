//! podpbx's media endpoint: calls that podpbx answers itself.
//!
//! * [`session`]: the voicemail/IVR state machine (sans-IO: time, audio and digits in; frames,
//!   recordings and store actions out).
//! * [`rtp`]: codec choice from the caller's offer, RTP packets in and out (rtc-rtp), RFC 4733
//!   digits in.
//! * [`g711`], [`wav`]: µ-law/A-law and RIFF/WAVE, our own small code.
//! * [`prompts`]: the default prompts shipped in `prompts/` (espeak-ng, see its README).
//! * [`store`]: mailboxes on the data volume: one WAV and one JSON sidecar per message,
//!   written so that a restart loses nothing.
//! * [`worker`]: the thread that does the RTP I/O of every session, off the relay's hot path
//!   and off the signalling loop.

pub mod g711;
pub mod prompts;
pub mod rtp;
pub mod session;
pub mod store;
pub mod wav;
pub mod worker;
