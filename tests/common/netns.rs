//! Network namespaces for tests (root only): created with unique names, deleted on drop.
//! Addresses used inside are documentation prefixes only (2001:db8::/32, 198.51.100.0/24,
//! 203.0.113.0/24), and traffic never leaves the namespaces.

#![allow(dead_code)]

use std::process::Command;

/// Runs `ip` with arguments, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip -n NS ...`.
pub fn ip_in(ns: &str, args: &[&str]) {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full);
}

/// A namespace deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("podpbx-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip_in(&name, &["link", "set", "lo", "up"]);
        Netns { name }
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair named `a_if` (in `a`) and `b_if` (in `b`).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    ip_in(&a.name, &["link", "set", a_if, "up"]);
    ip_in(&b.name, &["link", "set", b_if, "up"]);
}

/// True when running as root (namespace tests need it; CI runs as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
