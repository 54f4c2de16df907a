//! Black-box trunk tests: the real podpbx binary registers with a real Kamailio acting as the
//! provider (digest auth, source-address check) over IPv6 loopback.

mod common;

use common::kamailio::{Account, Kamailio, ProviderConfig};
use common::*;
use std::time::{Duration, Instant};

fn trunk_config(kam_port: u16, password: &str) -> String {
    format!(
        r#"
[[trunks]]
name = "provider"
host = "::1"
port = {kam_port}
transport = "udp"
username = "4930123"
password = "{password}"
expiry_secs = 120
dids = ["4930123"]
"#
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn registers_with_the_provider_reports_ready_and_unregisters_on_stop() {
    let kam = Kamailio::start(&ProviderConfig {
        accounts: vec![Account::new("4930123", "trunk-secret").did("4930123")],
        ..Default::default()
    });
    let mut pbx = Pbx::start(&trunk_config(kam.port, "trunk-secret"));
    wait_for("provider binding", Duration::from_secs(10), || {
        kam.binding("4930123").is_some()
    });
    let b = kam.binding("4930123").unwrap();
    assert!(
        b.contact.contains("[::1]"),
        "contact uses our pinned IPv6 address: {}",
        b.contact
    );
    wait_for("readyz 200", Duration::from_secs(5), || {
        http_get(pbx.admin, "/readyz").0 == 200
    });
    let metrics = http_get(pbx.admin, "/metrics").1;
    assert_eq!(
        metric(&metrics, "podpbx_trunk_registered{trunk=\"provider\"}"),
        Some(1.0),
        "{metrics}"
    );
    let (code, out, err) = ctl(&["--admin", &pbx.admin.to_string(), "trunks"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("provider") && out.contains("registered"),
        "{out}"
    );
    // Graceful stop un-registers, so the provider stops sending calls to a dead pod.
    assert_eq!(pbx.terminate(), Some(0));
    assert!(
        kam.binding("4930123").is_none(),
        "binding removed on stop:\n{}",
        pbx.log_text()
    );
}

#[test]
fn wrong_password_backs_off_instead_of_hammering() {
    let kam = Kamailio::start(&ProviderConfig {
        accounts: vec![Account::new("4930123", "trunk-secret")],
        ..Default::default()
    });
    let pbx = Pbx::start(&trunk_config(kam.port, "wrong-secret"));
    std::thread::sleep(Duration::from_secs(6));
    let log = pbx.log_text();
    assert!(
        log.contains("credentials_rejected") || log.contains("credentials rejected"),
        "{log}"
    );
    assert!(kam.binding("4930123").is_none());
    // Count REGISTERs the provider saw in 6 s: one attempt and its digest round, no loop.
    let kam_log = kam.log_text();
    let registers = kam_log
        .lines()
        .filter(|l| l.contains("provider: REGISTER sip:"))
        .count();
    assert!(
        (1..=6).contains(&registers),
        "bounded attempts, provider saw {registers}:\n{kam_log}"
    );
    assert_eq!(
        http_get(pbx.admin, "/readyz").0,
        503,
        "not ready while the trunk is down"
    );
}

#[test]
fn provider_down_then_up_recovers_by_itself() {
    let port = free_port();
    let pbx = Pbx::start(&trunk_config(port, "trunk-secret"));
    std::thread::sleep(Duration::from_secs(3)); // a failed attempt or two (timeouts, backoff)
    let kam = Kamailio::start(&ProviderConfig {
        port: Some(port),
        accounts: vec![Account::new("4930123", "trunk-secret")],
        ..Default::default()
    });
    wait_for(
        "registration after the provider came up",
        Duration::from_secs(45),
        || kam.binding("4930123").is_some(),
    );
    drop(pbx);
}

/// A password fixed in the config takes effect at the reload, not after a restart (or the 10 min
/// retry after rejected credentials); a trunk whose settings did not change is left alone.
#[test]
fn reload_re_registers_a_trunk_whose_settings_changed() {
    let kam = Kamailio::start(&ProviderConfig {
        accounts: vec![Account::new("4930123", "trunk-secret")],
        ..Default::default()
    });
    let pbx = Pbx::start(&trunk_config(kam.port, "wrong-secret"));
    wait_for("credentials rejected", Duration::from_secs(10), || {
        pbx.log_text().contains("trunk credentials rejected")
    });
    assert!(kam.binding("4930123").is_none());
    let path = pbx.dir.path().join("podpbx.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("wrong-secret", "trunk-secret")).unwrap();
    let (code, out, err) = ctl(&["--admin", &pbx.admin.to_string(), "reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for("binding after the reload", Duration::from_secs(10), || {
        kam.binding("4930123").is_some()
    });
    assert!(
        pbx.log_text()
            .contains("trunk provider changed: re-registering"),
        "{}",
        pbx.log_text()
    );
    // An unchanged trunk is not touched by another reload: no un-REGISTER, same binding.
    let registers = |l: &str| {
        l.lines()
            .filter(|l| l.contains("provider: REGISTER sip:"))
            .count()
    };
    let before = registers(&kam.log_text());
    let (code, _, _) = ctl(&["--admin", &pbx.admin.to_string(), "reload"]);
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(registers(&kam.log_text()), before, "{}", kam.log_text());
    assert!(kam.binding("4930123").is_some());
}
