//! Deterministic replay of the checked-in fuzz corpus (`fuzz/corpus/rtp_classify`) through the
//! very harness code the fuzz target runs (`fuzz/src/rtp_classify.rs` is compiled in here with
//! `#[path]`; the SDP corpus replays in `crates/sdp/tests/corpus_replay.rs`). This is the CI
//! fallback for fuzzing on the stable toolchain: no libFuzzer, no instrumentation, same oracles,
//! every `cargo test`.

#[path = "../../../fuzz/src/rtp_classify.rs"]
mod rtp_classify;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

use replay::{corpus, replay};

#[test]
fn rtp_classify_corpus() {
    replay(
        &corpus(env!("CARGO_MANIFEST_DIR"), "rtp_classify"),
        rtp_classify::run,
    );
}
