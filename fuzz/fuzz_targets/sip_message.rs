//! libFuzzer entry point; the logic (and its oracles) is in `src/sip_message.rs`, shared with the
//! deterministic corpus replay tests of the owning crate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podpbx_fuzz::sip_message::run(data));
