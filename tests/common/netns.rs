//! Network namespaces for tests (root only): created with unique names, deleted on drop.
//! Addresses used inside are documentation prefixes only (2001:db8::/32, 198.51.100.0/24,
//! 203.0.113.0/24), and traffic never leaves the namespaces.

#![allow(dead_code)]

use super::{ChildGuard, BIN};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    /// Puts `v6`/128 and `v4`/32 on `lo`: a pod's pinned single addresses, as Calico assigns them.
    pub fn add_pinned(&self, v6: &str, v4: &str) {
        let v6 = format!("{v6}/128");
        let v4 = format!("{v4}/32");
        ip_in(&self.name, &["addr", "add", &v6, "dev", "lo", "nodad"]);
        ip_in(&self.name, &["addr", "add", &v4, "dev", "lo"]);
    }

    /// Runs `podpbx run --config CFG` inside the namespace (debug log to `log`) and waits, at
    /// most 15 s, for it to log `podpbx ready`; panics with the log if it exits or is late.
    pub fn start_podpbx(&self, cfg: &Path, log: &Path) -> ChildGuard {
        let mut child = ChildGuard(
            self.command(BIN)
                .args(["run", "--config"])
                .arg(cfg)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("log file"))
                .spawn()
                .expect("start podpbx in the namespace"),
        );
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !text().contains("podpbx ready") {
            assert!(Instant::now() < deadline, "podpbx not ready: {}", text());
            if let Ok(Some(st)) = child.0.try_wait() {
                panic!("podpbx exited: {st}: {}", text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Moves the calling thread into the namespace, so sockets it opens from then on live
    /// there. Call it only on a thread made for the purpose: it never moves back.
    pub fn enter(&self) {
        enter_netns(&self.name);
    }

    /// Sets a `net.*` sysctl (`"net.ipv6.ip_nonlocal_bind=1"`) inside the namespace, through
    /// /proc/sys (procps' `sysctl` is not on a minimal Debian).
    pub fn sysctl(&self, setting: &str) {
        let (key, value) = setting.split_once('=').expect("key=value");
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self
            .command("sh")
            .args(["-c", &format!("echo {value} > {path}")])
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "setting {setting} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

/// Moves the calling thread into the namespace called `name` (see [`Netns::enter`]).
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns(2) with a valid namespace fd; it affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
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
