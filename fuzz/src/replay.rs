//! The corpus replay the owning crates' `tests/corpus_replay.rs` share (compiled in with
//! `#[path]`; not part of the fuzz targets): every checked-in input through a target's `run`,
//! naming the files whose oracles failed.

use std::path::{Path, PathBuf};

/// Every regular file under `dir`, sorted by name.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// The corpus of fuzz target `target` (`fuzz/corpus/<target>`), from a crate two levels below
/// the workspace root; never empty.
pub fn corpus(manifest_dir: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(manifest_dir)
        .join("../../fuzz/corpus")
        .join(target);
    let out = files(&dir);
    assert!(!out.is_empty(), "corpus {} is empty", dir.display());
    out
}

/// Runs `run` on every file; a panic is reported with the file that caused it.
pub fn replay(paths: &[PathBuf], run: fn(&[u8])) -> usize {
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
