//! Shared helpers for podpbx benchmarks.
