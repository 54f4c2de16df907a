//! Deterministic replay of the checked-in fuzz corpus (`fuzz/corpus/sip_message`,
//! `fuzz/corpus/digest`) through the very harness code the fuzz targets run (the files in
//! `fuzz/src/` are compiled in here with `#[path]`), plus the RFC 4475/5118 torture messages
//! from `tests/data/conformance/`. This is the CI fallback for fuzzing on the stable toolchain:
//! no libFuzzer, no instrumentation, same oracles, every `cargo test`.

#[path = "../../../fuzz/src/digest.rs"]
mod digest;
#[path = "../../../fuzz/src/sip_message.rs"]
mod sip_message;

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every regular file under `dir`, sorted by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs `run` on every file; a panic is reported with the file that caused it.
fn replay(paths: &[PathBuf], run: fn(&[u8])) -> usize {
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
    paths.len()
}

#[test]
fn sip_message_corpus() {
    let paths = files(&workspace().join("fuzz/corpus/sip_message"));
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
    let paths = files(&workspace().join("fuzz/corpus/digest"));
    assert!(!paths.is_empty());
    replay(&paths, digest::run);
}
