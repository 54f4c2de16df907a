//! A real DNS server for black-box tests: dnsmasq (Debian `dnsmasq-base`) with NAPTR, SRV and
//! AAAA/A records given on its command line, answering NXDOMAIN for every other name of the
//! zone (`--local`), never forwarding anything. Start it inside a test's own network namespace
//! (e.g. within `baresip::in_netns`); it listens on one address, port 53. Names added later with
//! [`Dnsmasq::add_host`] go to a hosts directory dnsmasq watches (`--hostsdir`), as a provider
//! adding a record would. Stopped by PID on drop.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A record to serve.
#[derive(Debug, Clone)]
pub enum DnsRecord {
    /// `name` NAPTR `order` `preference` "S" `service` "" `replacement`.
    Naptr {
        name: String,
        order: u16,
        preference: u16,
        service: String,
        replacement: String,
    },
    /// `name` SRV `priority` `weight` `port` `target`.
    Srv {
        name: String,
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
    /// `name` AAAA or A `ip`.
    Host { name: String, ip: IpAddr },
}

/// The dnsmasq binary (`DNSMASQ_BIN`, else the usual places), or why not.
pub fn available() -> Result<PathBuf, String> {
    if let Some(b) = std::env::var_os("DNSMASQ_BIN") {
        return Ok(PathBuf::from(b));
    }
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "dnsmasq not found (Debian package dnsmasq-base)".into())
}

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Option<Child>,
    pub listen: IpAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in the calling thread's network namespace on `listen`:53, serving
    /// `records` for the zone `domain` with TTL `ttl` seconds.
    pub fn start(listen: IpAddr, domain: &str, ttl: u32, records: &[DnsRecord]) -> Dnsmasq {
        let bin = available().expect("dnsmasq");
        let dir = std::env::temp_dir().join(format!(
            "podpbx-dnsmasq-{}-{}",
            std::process::id(),
            super::free_port()
        ));
        let hosts = dir.join("hosts");
        std::fs::create_dir_all(&hosts).expect("dnsmasq dir");
        // dnsmasq drops to `nobody`: the hosts directory must be readable by it.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        let log = dir.join("dnsmasq.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-queries",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--port=53",
            "--pid-file=",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--local=/{domain}/"))
        .arg(format!("--local-ttl={ttl}"))
        .arg(format!("--hostsdir={}", hosts.display()));
        for r in records {
            cmd.arg(match r {
                DnsRecord::Naptr {
                    name,
                    order,
                    preference,
                    service,
                    replacement,
                } => {
                    format!("--naptr-record={name},{order},{preference},S,{service},,{replacement}")
                }
                DnsRecord::Srv {
                    name,
                    target,
                    port,
                    priority,
                    weight,
                } => format!("--srv-host={name},{target},{port},{priority},{weight}"),
                DnsRecord::Host { name, ip } => format!("--host-record={name},{ip}"),
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("dnsmasq log"))
            .spawn()
            .expect("start dnsmasq");
        let mut d = Dnsmasq {
            child: Some(child),
            listen,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if d.log_text().contains("started") {
                return d;
            }
            if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
                panic!("dnsmasq exited ({st}):\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dnsmasq did not start:\n{}", d.log_text());
    }

    /// Adds `name` -> `ip` (a new file in the watched hosts directory; dnsmasq reads it within a
    /// moment).
    pub fn add_host(&self, name: &str, ip: IpAddr) {
        let file = self.dir.join("hosts").join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, format!("{ip} {name}\n")).expect("write hosts file");
        let _ = Command::new("chmod").arg("a+r").arg(&tmp).status();
        std::fs::rename(&tmp, &file).expect("move hosts file");
    }

    /// Everything dnsmasq logged (one line per query with `--log-queries`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
