//! Trunk hosts given as names (RFC 3263), black-box: the real podpbx binary, a real DNS server
//! (dnsmasq with NAPTR/SRV/AAAA records) and a real provider (Kamailio), all in a network
//! namespace of the test's own (2001:db8:53::/64 addresses on its loopback). Root only (CI runs as
//! root); `PODPBX_SKIP_KAMAILIO=1` skips.
//!
//! * SRV failover: the first SRV target is down; podpbx registers through the second one, says
//!   which in `ctl trunks`, and keeps the located list in SRV order.
//! * A name that does not resolve at start does not stop podpbx: it starts, says so in `/readyz`
//!   and `ctl trunks`, retries, and registers by itself once the record exists.

mod common;

use common::baresip::in_netns;
use common::dnsmasq::{DnsRecord, Dnsmasq};
use common::kamailio::{Account, Kamailio, ProviderConfig, Source};
use common::netns::{ip_in, is_root, Netns};
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PBX: &str = "2001:db8:53::1";
const DNS: &str = "2001:db8:53::53";
/// An SRV target nothing answers on.
const DEAD: &str = "2001:db8:53::10";
const KAM: &str = "2001:db8:53::11";
const USER: &str = "4930777";
const PASSWORD: &str = "Srv-trunk-secret";
const REALM: &str = "provider.test";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn skip() -> bool {
    if !is_root() {
        eprintln!("not root: skipping the namespace test");
        return true;
    }
    if std::env::var_os("PODPBX_SKIP_KAMAILIO").is_some() {
        eprintln!("PODPBX_SKIP_KAMAILIO set: skipping");
        return true;
    }
    if let Err(e) = common::dnsmasq::available() {
        panic!("{e}: .ci/run installs it");
    }
    false
}

/// A namespace with our addresses on its loopback interface. DEAD is assigned too, with nothing
/// listening: what is sent there is lost without an error (no ICMP reaches an unconnected UDP
/// socket), as with a provider server that went down.
fn namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    for a in [PBX, DNS, KAM, DEAD] {
        ip_in(&ns.name, &["addr", "add", &format!("{a}/128"), "dev", "lo"]);
    }
    ns
}

fn provider() -> Kamailio {
    Kamailio::start(&ProviderConfig {
        listen: vec![ip(KAM)],
        port: Some(5060),
        realm: REALM.into(),
        accounts: vec![Account::new(USER, PASSWORD)],
        subscribers: vec![Source::host(ip(PBX))],
        min_expires: 60,
        ..ProviderConfig::default()
    })
}

/// podpbx on the namespace's pinned address, asking our dnsmasq, with a short T1 so that a
/// lost REGISTER times out (Timer F = 64 T1) in 6.4 s instead of 32 s.
fn pbx(host: &str) -> Pbx {
    let port = free_port();
    let config = format!(
        r#"[sip]
ipv6 = "{PBX}"
port = {port}
transports = ["udp"]
t1_ms = 100
[dns]
servers = ["{DNS}"]
[[trunks]]
name = "prov"
host = "{host}"
username = "{USER}"
password = "{PASSWORD}"
realm = "{REALM}"
expiry_secs = 300
"#
    );
    Pbx::start_with_config(&config, port)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn trunks_json(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/api/trunks");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["items"][0].clone()
}

#[test]
fn srv_failover_registers_through_the_second_target() {
    if skip() {
        return;
    }
    let ns = namespace("dnssrv");
    in_netns(&ns.name, || {
        let kam = provider();
        let dns = Dnsmasq::start(
            ip(DNS),
            REALM,
            300,
            &[
                DnsRecord::Naptr {
                    name: REALM.into(),
                    order: 10,
                    preference: 10,
                    service: "SIP+D2U".into(),
                    replacement: format!("_sip._udp.{REALM}"),
                },
                // A TCP service the UDP trunk must not take.
                DnsRecord::Naptr {
                    name: REALM.into(),
                    order: 5,
                    preference: 10,
                    service: "SIP+D2T".into(),
                    replacement: format!("_sip._tcp.{REALM}"),
                },
                DnsRecord::Srv {
                    name: format!("_sip._udp.{REALM}"),
                    target: format!("dead.{REALM}"),
                    port: 5060,
                    priority: 10,
                    weight: 10,
                },
                DnsRecord::Srv {
                    name: format!("_sip._udp.{REALM}"),
                    target: format!("sbc.{REALM}"),
                    port: 5060,
                    priority: 20,
                    weight: 10,
                },
                DnsRecord::Host {
                    name: format!("dead.{REALM}"),
                    ip: ip(DEAD),
                },
                DnsRecord::Host {
                    name: format!("sbc.{REALM}"),
                    ip: ip(KAM),
                },
            ],
        );
        let pbx = pbx(REALM);
        wait_for("the provider binding", Duration::from_secs(30), || {
            kam.binding(USER).is_some()
        });
        let log = pbx.log_text();
        // RFC 3263 order: NAPTR, the UDP SRV name from it, then both targets' AAAA records.
        let dlog = dns.log_text();
        for q in [
            format!("query[NAPTR] {REALM}"),
            format!("query[SRV] _sip._udp.{REALM}"),
            format!("query[AAAA] dead.{REALM}"),
            format!("query[AAAA] sbc.{REALM}"),
        ] {
            assert!(dlog.contains(&q), "dnsmasq saw no `{q}`:\n{dlog}");
        }
        assert!(
            !dlog.contains("_sip._tcp"),
            "the TCP NAPTR is not ours:\n{dlog}"
        );
        assert!(
            log.contains("trunk registration fails over to the next server"),
            "{log}"
        );
        // The status is published once a second.
        wait_for(
            "state registered in /api/trunks",
            Duration::from_secs(5),
            || trunks_json(pbx.admin)["state"] == "registered",
        );
        let t = trunks_json(pbx.admin);
        assert_eq!(t["server"], format!("[{KAM}]:5060"), "{t}");
        assert_eq!(t["dns"]["state"], "resolved", "{t}");
        assert_eq!(
            t["dns"]["targets"],
            serde_json::json!([format!("[{DEAD}]:5060"), format!("[{KAM}]:5060")]),
            "SRV priority order: {t}"
        );
        let (code, out, err) = ctl(&["--admin", &pbx.admin.to_string(), "trunks"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&format!("[{KAM}]:5060")), "{out}");
        wait_for("readyz 200", Duration::from_secs(5), || {
            http_get(pbx.admin, "/readyz").0 == 200
        });
        let m = http_get(pbx.admin, "/metrics").1;
        assert_eq!(
            metric(&m, "podpbx_trunk_registered{trunk=\"prov\"}"),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, "podpbx_trunk_servers{trunk=\"prov\"}"),
            Some(2.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, "podpbx_trunk_up{trunk=\"prov\"}"),
            Some(1.0),
            "{m}"
        );
        drop(pbx);
        drop(dns);
    });
}

#[test]
fn unresolvable_name_at_start_is_retried_and_podpbx_runs_meanwhile() {
    if skip() {
        return;
    }
    let ns = namespace("dnslate");
    in_netns(&ns.name, || {
        let kam = provider();
        let late = format!("late.{REALM}");
        let dns = Dnsmasq::start(ip(DNS), REALM, 300, &[]);
        let mut pbx = pbx(&late);
        assert!(pbx.alive(), "podpbx starts without the name");
        // It says why it is not ready, and what it does about it.
        wait_for(
            "the DNS failure in /readyz",
            Duration::from_secs(10),
            || {
                let (code, body) = http_get(pbx.admin, "/readyz");
                code == 503 && body.contains(&format!("trunk prov: host {late} not resolved ("))
            },
        );
        assert_eq!(http_get(pbx.admin, "/healthz").0, 200, "alive meanwhile");
        // Between a failed lookup and the next one a retry time is shown; while a retry's
        // query is in flight it is not (`null`), so wait for a moment between two lookups.
        let mut t = trunks_json(pbx.admin);
        wait_for(
            "a scheduled retry in /api/trunks",
            Duration::from_secs(10),
            || {
                t = trunks_json(pbx.admin);
                t["next_attempt_at"].is_u64()
            },
        );
        assert_eq!(t["state"], "unresolved", "{t}");
        assert!(
            t["last_error"].as_str().unwrap_or("").starts_with("DNS: "),
            "{t}"
        );
        let (code, out, _) = ctl(&["--admin", &pbx.admin.to_string(), "trunks"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("unresolved") && out.contains("DNS: "), "{out}");
        // Retries back off: after 6 s at most a handful of rounds, not a loop.
        std::thread::sleep(Duration::from_secs(6));
        let rounds = dns
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("query[NAPTR] {late}")))
            .count();
        assert!(
            (2..=5).contains(&rounds),
            "{rounds} NAPTR rounds:\n{}",
            dns.log_text()
        );
        // The provider publishes the name: no SRV, so its AAAA on 5060 (RFC 3263 §4.2).
        dns.add_host(&late, ip(KAM));
        wait_for("the provider binding", Duration::from_secs(40), || {
            kam.binding(USER).is_some()
        });
        wait_for("readyz 200", Duration::from_secs(5), || {
            http_get(pbx.admin, "/readyz").0 == 200
        });
        wait_for("the server in /api/trunks", Duration::from_secs(5), || {
            trunks_json(pbx.admin)["server"] == format!("[{KAM}]:5060")
        });
        assert_eq!(pbx.terminate(), Some(0));
        drop(dns);
    });
}
