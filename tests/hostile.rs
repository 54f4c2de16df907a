//! Hostile traffic against the running binary (being written).

mod common;
