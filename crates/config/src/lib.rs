//! Typed, validated podpbx configuration from TOML.
