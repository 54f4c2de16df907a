//! Deterministic replay of the checked-in fuzz corpus (`fuzz/corpus/sdp`) through the very
//! harness code the fuzz target runs (`fuzz/src/sdp.rs` is compiled in here with `#[path]`).
//! This is the CI fallback for fuzzing on the stable toolchain: no libFuzzer, no
//! instrumentation, same oracles, every `cargo test`.

#[path = "../../../fuzz/src/sdp.rs"]
mod sdp;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

use replay::{corpus, replay};

#[test]
fn sdp_corpus() {
    replay(&corpus(env!("CARGO_MANIFEST_DIR"), "sdp"), sdp::run);
}
