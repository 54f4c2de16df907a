//! Deterministic replay of the checked-in fuzz corpus (`fuzz/corpus/sdp`) through the very
//! harness code the fuzz target runs (`fuzz/src/sdp.rs` is compiled in here with `#[path]`).
//! This is the CI fallback for fuzzing on the stable toolchain: no libFuzzer, no
//! instrumentation, same oracles, every `cargo test`.

#[path = "../../../fuzz/src/sdp.rs"]
mod sdp;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "corpus {} is empty", dir.display());
    out
}

/// Runs `run` on every file; a panic is reported with the file that caused it.
fn replay(paths: &[PathBuf], run: fn(&[u8])) {
    let mut failed = Vec::new();
    for p in paths {
        let data = std::fs::read(p).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(p.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "harness oracles failed for:\n{}",
        failed.join("\n")
    );
}

#[test]
fn sdp_corpus() {
    replay(&corpus("sdp"), sdp::run);
}
