//! Deterministic replay of the checked-in fuzz corpus (`fuzz/corpus/sip_message`,
//! `fuzz/corpus/digest`) through the very harness code the fuzz targets run (the files in
//! `fuzz/src/` are compiled in here with `#[path]`), plus the RFC 4475/5118 torture messages
//! from `tests/data/conformance/`. This is the CI fallback for fuzzing on the stable toolchain:
//! no libFuzzer, no instrumentation, same oracles, every `cargo test`.

#[path = "../../../fuzz/src/digest.rs"]
mod digest;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;
#[path = "../../../fuzz/src/sip_message.rs"]
mod sip_message;

use replay::{corpus, files, replay};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn sip_message_corpus() {
    let paths = corpus(env!("CARGO_MANIFEST_DIR"), "sip_message");
    assert!(
        paths.len() >= 61,
        "seed corpus present ({} files)",
        paths.len()
    );
    replay(&paths, sip_message::run);
}

#[test]
fn conformance_messages_through_the_sip_harness() {
    let dir = workspace().join("tests/data/conformance");
    let mut paths = files(&dir.join("rfc4475"));
    paths.extend(files(&dir.join("rfc5118")));
    assert_eq!(
        paths.len(),
        61,
        "all torture messages found in {}",
        dir.display()
    );
    replay(&paths, sip_message::run);
}

#[test]
fn digest_corpus() {
    let paths = corpus(env!("CARGO_MANIFEST_DIR"), "digest");
    assert!(!paths.is_empty());
    replay(&paths, digest::run);
}
