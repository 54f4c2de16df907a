//! Fuzz harnesses for podpbx. Each module has one `run(&[u8])` that must never panic for any
//! input; the assertions inside are the oracles (properties that must hold for every input).
//!
//! The module files depend only on the crate they exercise (plus `bytes`), so the owning
//! crate's corpus replay test includes the very same file with `#[path]`:
//! `crates/sip/tests/corpus_replay.rs` (sip_message, digest) and
//! `crates/sdp/tests/corpus_replay.rs` (sdp) and `crates/media/tests/corpus_replay.rs`
//! (rtp_classify).

pub mod digest;
pub mod rtp_classify;
pub mod sdp;
pub mod sip_message;
