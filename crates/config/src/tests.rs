//! Whole-document tests: defaults, examples and every class of diagnostic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

const SIP: &str = "[sip]\nipv6 = \"2001:db8::5\"\n";

fn errors(text: &str) -> Vec<String> {
    match check_str(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

/// The single error `text` produces.
fn error(text: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    errs[0].clone()
}

fn ok(text: &str) -> Config {
    match check_str(text, "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{}", format_errors(&e)),
    }
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("podpbx-config-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config")
        .join(name)
}

// ----- shipped files ----------------------------------------------------------------

#[test]
fn embedded_default_parses() {
    let c = Config::embedded_default().expect("embedded default is valid");
    assert!(c.sip.udp() && c.sip.tcp());
    assert_eq!(c.sip.ipv6, Some(Ipv6Addr::LOCALHOST));
    assert_eq!(c.sip.ipv4, Some(Ipv4Addr::LOCALHOST));
    assert_eq!(c.sip.port, 5060);
    assert_eq!(c.sip.transports, vec![Transport::Udp, Transport::Tcp]);
    assert_eq!(
        c.sip.bind_addrs(),
        vec![
            "[::1]:5060".parse::<SocketAddr>().expect("addr"),
            "127.0.0.1:5060".parse().expect("addr")
        ]
    );
    assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
    assert_eq!(
        c.registrar.state_file,
        PathBuf::from("./data/bindings.json")
    );
    assert_eq!(c.calls.cdr_file, Some(PathBuf::from("./data/cdr.jsonl")));
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9060".parse().expect("addr"))
    );
    let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["1001", "1002"]);
    assert_eq!(
        c.user("1001")
            .and_then(|u| u.password.as_ref())
            .map(Secret::expose),
        Some("podpbx-demo-1001")
    );
    let rule = c.route(&Origin::Local { user: "1001" }, "1002");
    assert_eq!(rule.map(|r| r.name.as_str()), Some("extensions"));
    assert!(c.route(&Origin::Local { user: "1001" }, "999").is_none());
    // The demo passwords are never printed.
    assert!(!format!("{c:?}").contains("podpbx-demo"));
}

#[test]
fn embedded_default_matches_the_file() {
    let on_disk = std::fs::read_to_string(example_path("podpbx.toml")).expect("read podpbx.toml");
    assert_eq!(on_disk, EMBEDDED_DEFAULT);
}

/// example-home.toml with its Kubernetes secret paths pointed at temp files.
fn example_home_text(dir: &Path) -> String {
    for (name, pw) in [
        ("101", "pw-101\n"),
        ("102", "pw-102\r\n"),
        ("trunk", "trunk-pw\n"),
    ] {
        std::fs::write(dir.join(name), pw).expect("write secret");
    }
    std::env::set_var("PODPBX_PASSWORD_103", "pw-103");
    let text = std::fs::read_to_string(example_path("example-home.toml")).expect("read example");
    let dir_text = format!("{}/", dir.display());
    text.replace("/run/secrets/podpbx/", &dir_text)
}

#[test]
fn example_home_parses() {
    let dir = temp_dir("example");
    let c = ok(&example_home_text(&dir));
    assert_eq!(
        c.sip.ipv6,
        Some("2001:db8:1234:10::5060".parse().expect("ip"))
    );
    assert_eq!(c.sip.ipv4, Some(Ipv4Addr::new(198, 51, 100, 10)));
    assert_eq!(c.sip.realm, "home.example");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.registrar.qualify_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.media.port_max, 20999);
    assert_eq!(c.calls.max_concurrent, Some(8));

    let pw = |n: &str| {
        c.user(n)
            .and_then(|u| u.password.clone())
            .map(|s| s.expose().to_string())
    };
    assert_eq!(pw("101").as_deref(), Some("pw-101"));
    assert_eq!(pw("102").as_deref(), Some("pw-102"));
    assert_eq!(pw("103").as_deref(), Some("pw-103"));
    assert_eq!(pw("190"), None);
    let door = c.user("190").expect("door user");
    assert!(door.identify_by_source);
    assert!(door.allows("198.51.100.50".parse().expect("ip")));
    assert!(!door.allows("198.51.100.51".parse().expect("ip")));
    assert_eq!(door.dtmf, Dtmf::Info);

    let family = c.group("family").expect("family");
    assert_eq!(family.members, ["101", "102", "103"]);
    let parents = c.group("parents").expect("parents");
    assert_eq!(parents.strategy, RingStrategy::Sequential);
    assert!(c.is_member("102", "parents"));
    assert!(!c.is_member("103", "parents"));

    let trunk = c.trunk("provider").expect("trunk");
    assert_eq!(trunk.host, Host::Name("sip.provider.example".into()));
    assert_eq!(trunk.family, Family::V6);
    assert!(trunk.register);
    assert_eq!(trunk.auth_user(), Some("4930123456"));
    assert_eq!(
        trunk.password.as_ref().map(Secret::expose),
        Some("trunk-pw")
    );

    let route = |o: Origin, n: &str| c.route(&o, n).map(|r| r.name.clone());
    let anna = Origin::Local { user: "101" };
    assert_eq!(
        route(Origin::Local { user: "190" }, "1").as_deref(),
        Some("door")
    );
    assert_eq!(route(anna, "112").as_deref(), Some("emergency"));
    assert_eq!(route(anna, "102").as_deref(), Some("extensions"));
    assert_eq!(route(anna, "030123").as_deref(), Some("national"));
    assert_eq!(route(anna, "+33123").as_deref(), Some("international"));
    assert_eq!(route(anna, "999"), None);
    let office = Origin::Trunk {
        trunk: "provider",
        did: Some("+4930123457"),
    };
    let main = Origin::Trunk {
        trunk: "provider",
        did: Some("+4930123456"),
    };
    assert_eq!(route(office, "x").as_deref(), Some("office-line"));
    assert_eq!(route(main, "x").as_deref(), Some("main-number"));

    let national = c
        .dialplan
        .iter()
        .find(|r| r.name == "national")
        .expect("rule");
    assert_eq!(
        national.action,
        Action::Trunk {
            trunks: vec!["provider".into()],
            strip: 1,
            prepend: "+49".into(),
            caller_id: None
        }
    );
    let main_rule = c.dialplan.last().expect("rule");
    let steps: Vec<&Action> = main_rule.steps().collect();
    assert_eq!(steps.len(), 3);
    assert_eq!(
        steps[1],
        &Action::Ring {
            targets: vec![Target::Group("parents".into())],
            mode: RingStrategy::Sequential,
            timeout: Duration::from_secs(15)
        }
    );
    assert_eq!(
        steps[2],
        &Action::Reject {
            status: 480,
            reason: None
        }
    );
}

#[test]
fn example_home_rule_order_matters() {
    let dir = temp_dir("order");
    let text = example_home_text(&dir);
    // Move "emergency" after "extensions": 110/112 are then unreachable.
    let start = text
        .find("# Before \"extensions\"")
        .expect("emergency comment");
    let end = text
        .find("[[dialplan]]\nname = \"extensions\"")
        .expect("extensions");
    let emergency = &text[start..end];
    let swapped = text.replacen(emergency, "", 1).replacen(
        "[[dialplan]]\nname = \"national\"",
        &format!("{emergency}[[dialplan]]\nname = \"national\""),
        1,
    );
    let errs = errors(&swapped);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].ends_with(
            ": dialplan[2]: rule `emergency` is unreachable: every call it matches is taken first by `extensions` (dialplan[1], line 127)"
        ),
        "{}",
        errs[0]
    );
}

// ----- unknown keys -------------------------------------------------------------------

#[test]
fn misspelt_key_suggests_port() {
    assert_eq!(
        error("[sip]\nipv6 = \"::1\"\nprot = 5060\n"),
        "t.toml:3:1: sip.prot: unknown key, did you mean `port`?"
    );
}

#[test]
fn misspelt_key_suggests_transports() {
    assert_eq!(
        error(&format!("{SIP}transport = [\"udp\"]\n")),
        "t.toml:3:1: sip.transport: unknown key, did you mean `transports`?"
    );
}

#[test]
fn unknown_key_without_close_match_lists_keys() {
    assert_eq!(
        error("[log]\nzzzzzz = 1\n[sip]\nipv4 = \"198.51.100.1\"\n"),
        "t.toml:2:1: log.zzzzzz: unknown key, expected `level` or `format`"
    );
}

#[test]
fn misspelt_table_and_nested_keys() {
    let errs = errors(&format!(
        "{SIP}[registar]\nmin_expires = 60\n[[users]]\nname = \"a\"\npasword = \"x\"\n"
    ));
    assert_eq!(
        errs,
        [
            "t.toml:3:2: registar: unknown key, did you mean `registrar`?",
            "t.toml:5:1: users[0].password: missing required secret: set one of `password`, `password_file`, `password_env` (or `identify_by_source = true` with `allow_from`)",
            "t.toml:7:1: users[0].pasword: unknown key, did you mean `password`?",
        ]
    );
}

#[test]
fn unknown_key_in_inline_table() {
    assert_eq!(
        error(&format!(
            "{SIP}[[dialplan]]\nmatch = {{ prefx = \"0\" }}\naction = \"reject\"\nstatus = 404\n"
        )),
        "t.toml:4:11: dialplan[0].match.prefx: unknown key, did you mean `prefix`?"
    );
}

// ----- types, ranges, required keys -------------------------------------------------------

#[test]
fn type_errors() {
    assert_eq!(
        error("[sip]\nipv6 = \"::1\"\nport = \"5060\"\n"),
        "t.toml:3:8: sip.port: expected an integer, found a string"
    );
    assert_eq!(
        error(&format!("{SIP}allow_wildcard = \"yes\"\n")),
        "t.toml:3:18: sip.allow_wildcard: expected a boolean (`true` or `false`), found a string"
    );
    assert_eq!(
        error(&format!("{SIP}transports = \"udp\"\n")),
        "t.toml:3:14: sip.transports: expected an array, found a string"
    );
    assert_eq!(
        error(&format!("log = 3\n{SIP}")),
        "t.toml:1:7: log: expected a table, found an integer"
    );
    assert_eq!(
        error(&format!("{SIP}[users]\nname = \"a\"\n")),
        "t.toml:3:1: users: expected an array of tables, found a table"
    );
}

#[test]
fn range_errors() {
    assert_eq!(
        error("[sip]\nipv6 = \"::1\"\nport = 70000\n"),
        "t.toml:3:8: sip.port: must be between 1 and 65535, got 70000"
    );
    assert_eq!(
        error(&format!("{SIP}[media]\ndscp = 64\n")),
        "t.toml:4:8: media.dscp: must be between 0 and 63, got 64"
    );
    assert_eq!(
        error(&format!("{SIP}[calls]\nmax_setup = 100001\n")),
        "t.toml:4:13: calls.max_setup: must be between 0 and 100000, got 100001"
    );
    assert_eq!(ok(SIP).calls.max_setup, Some(200));
    assert_eq!(
        ok(&format!("{SIP}[calls]\nmax_setup = 0\n"))
            .calls
            .max_setup,
        None
    );
    assert_eq!(
        ok(&format!("{SIP}[media]\nport_layout = \"per-call\"\n"))
            .media
            .port_layout,
        MediaPortLayout::PerCall
    );
    assert_eq!(
        ok(&format!("{SIP}[media]\nmoderation_us = 0\n"))
            .media
            .moderation,
        Duration::ZERO
    );
    assert_eq!(
        error(&format!("{SIP}[media]\nmoderation_us = 20000\n")),
        "t.toml:4:17: media.moderation_us: must be between 0 and 10000, got 20000"
    );
    assert_eq!(
        error(&format!("{SIP}[media]\nport_layout = \"shard\"\n")),
        "t.toml:4:15: media.port_layout: expected `shared` or `per-call`, got `shard`, did you mean `shared`?"
    );
    assert_eq!(
        error(&format!("{SIP}[media]\nport_min = 20001\n")),
        "t.toml:4:12: media.port_min: must be even (RTP uses even ports), got 20001"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[media]\nport_min = 30000\nport_max = 20000\n"
        )),
        "t.toml:5:12: media.port_max: must be greater than `media.port_min` (30000), got 20000"
    );
    assert_eq!(
        error("[sip]\nipv6 = \"::1\"\nport = 20000\n"),
        "t.toml:3:8: sip.port: lies inside the media port range 20000..=30000 (`media.port_min`, `media.port_max`)"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[media]\nport_max = 60000\nport_min = 5000\n"
        )),
        "t.toml:5:12: media.port_min: the range 5000..=60000 contains `sip.port` (5060)"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[registrar]\nmin_expires = 600\nmax_expires = 300\n"
        )),
        "t.toml:5:15: registrar.max_expires: must not be less than `registrar.min_expires` (600)"
    );
    assert_eq!(
        error(&format!("{SIP}[registrar]\ndefault_expires = 30\n")),
        "t.toml:4:19: registrar.default_expires: must not be less than `registrar.min_expires` (60)"
    );
    assert_eq!(
        error(&format!("{SIP}t1_ms = 5000\n")),
        "t.toml:3:9: sip.t1_ms: must not be greater than `sip.t2_ms` (4000 ms)"
    );
    assert_eq!(
        error(&format!("{SIP}t1_ms = 5000\nt2_ms = 1000\n")),
        "t.toml:4:9: sip.t2_ms: must not be less than `sip.t1_ms` (5000 ms)"
    );
    assert_eq!(
        error(&format!("{SIP}[registrar]\nmax_expires = 30\n")),
        "t.toml:4:15: registrar.max_expires: must not be less than `registrar.min_expires` (60)"
    );
    assert_eq!(
        error(&format!("{SIP}[registrar]\nmax_expires = 300\n")),
        "t.toml:4:15: registrar.max_expires: must not be less than `registrar.default_expires` (3600)"
    );
}

#[test]
fn enum_errors_suggest() {
    assert_eq!(
        error(&format!("{SIP}[log]\nformat = \"jsn\"\n")),
        "t.toml:4:10: log.format: expected `text` or `json`, got `jsn`, did you mean `json`?"
    );
    assert_eq!(
        error(&format!("{SIP}transports = [\"udp\", \"sctp\"]\n")),
        "t.toml:3:22: sip.transports[1]: expected `udp`, `tcp` or `tls`, got `sctp`"
    );
    assert_eq!(
        error(&format!("{SIP}transports = [\"udp\", \"udp\"]\n")),
        "t.toml:3:22: sip.transports[1]: duplicate transport `udp`"
    );
    assert_eq!(
        error(&format!("{SIP}[log]\nlevel = \"infoo,podpbx=debug\"\n")),
        "t.toml:4:9: log.level: invalid level `infoo` in `infoo`: expected `trace`, `debug`, `info`, `warn`, `error` or `off`, did you mean `info`?"
    );
}

#[test]
fn digest_algorithms() {
    // Default: MD5 only (old doorbells take the first challenge whatever its algorithm).
    assert_eq!(ok(SIP).registrar.digest_algorithms, [DigestAlgorithm::Md5]);
    // Preference order is kept; tokens compare case-insensitively, as in SIP.
    let c = ok(&format!(
        "{SIP}[registrar]\ndigest_algorithms = [\"SHA-256\", \"md5\", \"SHA-256-sess\", \"MD5-sess\"]\n"
    ));
    assert_eq!(
        c.registrar.digest_algorithms,
        [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Md5,
            DigestAlgorithm::Sha256Sess,
            DigestAlgorithm::Md5Sess
        ]
    );
    assert_eq!(c.registrar.digest_algorithms[0].to_string(), "SHA-256");
    assert_eq!(
        error(&format!(
            "{SIP}[registrar]\ndigest_algorithms = [\"SHA256\", \"MD5\"]\n"
        )),
        "t.toml:4:22: registrar.digest_algorithms[0]: expected `MD5`, `MD5-sess`, `SHA-256` or `SHA-256-sess`, got `SHA256`, did you mean `SHA-256`?"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[registrar]\ndigest_algorithms = [\"MD5\", \"SHA-512-256\"]\n"
        )),
        "t.toml:4:29: registrar.digest_algorithms[1]: expected `MD5`, `MD5-sess`, `SHA-256` or `SHA-256-sess`, got `SHA-512-256`"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[registrar]\ndigest_algorithms = [\"MD5\", \"sha-256\", \"md5\"]\n"
        )),
        "t.toml:4:40: registrar.digest_algorithms[2]: duplicate algorithm `MD5`"
    );
    assert_eq!(
        error(&format!("{SIP}[registrar]\ndigest_algorithms = []\n")),
        "t.toml:4:21: registrar.digest_algorithms: must list at least one algorithm, e.g. `[\"MD5\"]`"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[registrar]\ndigest_algorithms = \"SHA-256\"\n"
        )),
        "t.toml:4:21: registrar.digest_algorithms: expected an array, found a string"
    );
    assert_eq!(
        error(&format!("{SIP}[registrar]\ndigest_algorithm = [\"MD5\"]\n")),
        "t.toml:4:1: registrar.digest_algorithm: unknown key, did you mean `digest_algorithms`?"
    );
}

#[test]
fn missing_sip() {
    assert_eq!(
        error("[log]\nlevel = \"info\"\n"),
        "t.toml:1:1: sip: missing required table `[sip]` (with `ipv6` and/or `ipv4`)"
    );
    assert_eq!(
        error("sip = \"::1\"\n"),
        "t.toml:1:7: sip: expected a table, found a string"
    );
    assert_eq!(
        error("[log]\nlevel = \"info\"\n\n[sip]\nport = 5060\n"),
        "t.toml:4:1: sip: set at least one of `ipv6` and `ipv4` (the pod's pinned addresses)"
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    assert_eq!(
        error(&format!(
            "{SIP}\n[[users]]\ndisplay_name = \"x\"\npassword = \"p\"\n"
        )),
        "t.toml:4:1: users[0].name: missing required key"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nregister = false\n"
        )),
        "t.toml:3:1: trunks[0].host: missing required key"
    );
    assert_eq!(
        error(&format!("{SIP}[[dialplan]]\nname = \"r\"\n")),
        "t.toml:3:1: dialplan[0].action: missing required key (`ring`, `local`, `trunk`, `voicemail` or `reject`)"
    );
}

// ----- addresses ----------------------------------------------------------------------------

#[test]
fn address_family_and_wildcards() {
    assert_eq!(
        error("[sip]\nipv6 = \"198.51.100.1\"\n"),
        "t.toml:2:8: sip.ipv6: `198.51.100.1` is an IPv4 address, expected IPv6 (put it in `sip.ipv4`)"
    );
    assert_eq!(
        error("[sip]\nipv4 = \"2001:db8::1\"\n"),
        "t.toml:2:8: sip.ipv4: `2001:db8::1` is an IPv6 address, expected IPv4 (put it in `sip.ipv6`)"
    );
    assert_eq!(
        error("[sip]\nipv6 = \"::\"\n"),
        "t.toml:2:8: sip.ipv6: wildcard address `::` is not allowed: pin the pod's address, or set `sip.allow_wildcard = true`"
    );
    assert_eq!(
        error("[sip]\nipv4 = \"0.0.0.0\"\n"),
        "t.toml:2:8: sip.ipv4: wildcard address `0.0.0.0` is not allowed: pin the pod's address, or set `sip.allow_wildcard = true`"
    );
    let c = ok("[sip]\nipv6 = \"::\"\nipv4 = \"0.0.0.0\"\nallow_wildcard = true\n");
    assert_eq!(c.sip.ipv6, Some(Ipv6Addr::UNSPECIFIED));
    assert_eq!(
        error("[sip]\nipv6 = \"[::1]\"\n"),
        "t.toml:2:8: sip.ipv6: write the address without brackets"
    );
    assert_eq!(
        error("[sip]\nipv6 = \"2001:db8::1/64\"\n"),
        "t.toml:2:8: sip.ipv6: expected a single IPv6 address, not a network (the pod's address is a /128)"
    );
    assert_eq!(
        error("[sip]\nipv4 = \"198.51.100.300\"\n"),
        "t.toml:2:8: sip.ipv4: `198.51.100.300` is not a valid IPv4 address"
    );
    assert_eq!(
        error("[sip]\nipv6 = \"ff02::1\"\n"),
        "t.toml:2:8: sip.ipv6: `ff02::1` is not a unicast address"
    );
    assert_eq!(
        error(&format!("{SIP}[admin]\nlisten = \"localhost\"\n")),
        "t.toml:4:10: admin.listen: `localhost` is not a socket address: expected `address:port`, e.g. `127.0.0.1:9060` or `[::1]:9060` (empty disables)"
    );
    assert_eq!(
        error("[sip]\nipv6 = \"::1\"\n[admin]\nlisten = \"[::1]:5060\"\n"),
        "t.toml:4:10: admin.listen: port 5060 is already used by `sip.port`"
    );
    let c = ok(&format!("{SIP}[admin]\nlisten = \"\"\n"));
    assert_eq!(c.admin.listen, None);
}

#[test]
fn admin_off_loopback_needs_a_token_file() {
    let dir = temp_dir("admin-token");
    let good = dir.join("token");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").expect("write");
    let short = dir.join("short");
    std::fs::write(&short, "tooshort\n").expect("write");
    let spaced = dir.join("spaced");
    std::fs::write(&spaced, "0123456789abcdef 0123456789abcdef").expect("write");
    let admin = |listen: &str, extra: &str| format!("{SIP}[admin]\nlisten = \"{listen}\"\n{extra}");
    // Loopback needs none; a pinned address or a wildcard does.
    for lo in ["127.0.0.1:9060", "[::1]:9060", "127.0.0.2:9060"] {
        assert_eq!(ok(&admin(lo, "")).admin.token, None, "{lo}");
    }
    for open in [
        "198.51.100.10:9060",
        "[2001:db8::5]:9060",
        "0.0.0.0:9060",
        "[::]:9060",
    ] {
        let e = error(&admin(open, ""));
        assert!(
            e.starts_with(&format!("t.toml:4:10: admin.listen: {} is not a loopback address, so /api/* and /metrics would be open to the network: set `admin.token_file`", open.parse::<SocketAddr>().expect("addr"))),
            "{e}"
        );
    }
    let c = ok(&admin(
        "198.51.100.10:9060",
        &format!("token_file = \"{}\"\n", good.display()),
    ));
    let token = c.admin.token.clone().expect("token");
    assert_eq!(token.expose(), "0123456789abcdef0123456789abcdef");
    assert_eq!(token.source(), &SecretSource::File(good.clone()));
    assert_eq!(format!("{:?}", c.admin), format!("AdminConfig {{ listen: Some(198.51.100.10:9060), token: Some(***), health_listen: None, health_metrics: false }}"));
    // A token on loopback is honoured too.
    let c = ok(&admin(
        "127.0.0.1:9060",
        &format!("token_file = \"{}\"\n", good.display()),
    ));
    assert!(c.admin.token.is_some());
    assert_eq!(
        error(&admin("127.0.0.1:9060", &format!("token_file = \"{}\"\n", short.display()))),
        format!("t.toml:5:14: admin.token_file: {}: the token is 8 characters long, at least 16 are required (e.g. `head -c 32 /dev/urandom | base64`)", short.display())
    );
    assert_eq!(
        error(&admin("127.0.0.1:9060", &format!("token_file = \"{}\"\n", spaced.display()))),
        format!("t.toml:5:14: admin.token_file: {}: the token may only hold visible ASCII characters (no spaces or line breaks)", spaced.display())
    );
    // An unreadable token file on a public listener: one error, about the file.
    assert_eq!(
        errors(&admin("198.51.100.10:9060", "token_file = \"/run/secrets/podpbx-test-nonexistent/t\"\n")),
        [
            "t.toml:4:10: admin.listen: 198.51.100.10:9060 is not a loopback address, so /api/* and /metrics would be open to the network: set `admin.token_file` to a file holding a bearer token (e.g. a Kubernetes Secret), or listen on 127.0.0.1 or [::1] (probes can use `health_listen`)",
            "t.toml:5:14: admin.token_file: cannot read /run/secrets/podpbx-test-nonexistent/t: No such file or directory",
        ]
    );
}

#[test]
fn health_listener_is_separate_from_admin_and_sip() {
    let c = ok(&format!(
        "{SIP}[admin]\nhealth_listen = \"[2001:db8::5]:9061\"\nhealth_metrics = true\n"
    ));
    assert_eq!(
        (
            c.admin.listen,
            c.admin.health_listen,
            c.admin.health_metrics
        ),
        (
            Some("127.0.0.1:9060".parse().expect("addr")),
            Some("[2001:db8::5]:9061".parse().expect("addr")),
            true
        )
    );
    assert_eq!(ok(SIP).admin.health_listen, None);
    assert_eq!(
        error(&format!("{SIP}[admin]\nhealth_listen = \"0.0.0.0:9060\"\n")),
        "t.toml:4:17: admin.health_listen: 127.0.0.1:9060 is already used by `admin.listen`"
    );
    assert_eq!(
        error(&format!("{SIP}[admin]\nhealth_listen = \"[::]:5060\"\n")),
        "t.toml:4:17: admin.health_listen: port 5060 is already used by `sip.port`"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[admin]\nhealth_listen = \"\"\nhealth_metrics = true\n"
        )),
        "t.toml:5:18: admin.health_metrics: needs a `health_listen` address to serve /metrics on"
    );
    assert_eq!(
        error(&format!("{SIP}[admin]\nhealth_metrics = true\n")),
        "t.toml:4:18: admin.health_metrics: needs a `health_listen` address to serve /metrics on"
    );
    // Different ports, or different addresses on one port, are fine.
    ok(&format!(
        "{SIP}[admin]\nlisten = \"127.0.0.1:9060\"\nhealth_listen = \"[::1]:9060\"\n"
    ));
}

#[test]
fn cidr_errors_carry_element_paths() {
    let errs = errors(&format!(
        "{SIP}[[users]]\nname = \"a\"\npassword = \"p\"\nallow_from = [\"2001:db8::/32\", \"10.0.0.1/8\", \"nope\"]\n"
    ));
    assert_eq!(
        errs,
        [
            "t.toml:6:32: users[0].allow_from[1]: host bits are set in `10.0.0.1/8`, did you mean `10.0.0.0/8`?",
            "t.toml:6:46: users[0].allow_from[2]: `nope` is not a network: `nope` is not an IPv4 or IPv6 address",
        ]
    );
}

// ----- secrets --------------------------------------------------------------------------------

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = temp_dir("pwfile");
    let file = dir.join("alice");
    std::fs::write(&file, "s3cret\n").expect("write");
    let c = ok(&format!(
        "{SIP}[[users]]\nname = \"alice\"\npassword_file = \"{}\"\n",
        file.display()
    ));
    let secret = c.users[0].password.as_ref().expect("secret");
    assert_eq!(secret.expose(), "s3cret");
    assert_eq!(secret.source(), &SecretSource::File(file.clone()));
    assert_eq!(format!("{secret:?}"), "***");

    std::fs::write(&file, "\n").expect("write");
    let e = error(&format!(
        "{SIP}[[users]]\nname = \"alice\"\npassword_file = \"{}\"\n",
        file.display()
    ));
    assert_eq!(
        e,
        format!(
            "t.toml:5:17: users[0].password_file: {} is empty",
            file.display()
        )
    );
}

#[test]
fn password_file_missing() {
    assert_eq!(
        error(&format!(
            "{SIP}[[users]]\nname = \"a\"\npassword = \"p\"\n[[users]]\nname = \"b\"\npassword = \"p\"\n[[users]]\nname = \"c\"\npassword_file = \"/run/secrets/podpbx-test-nonexistent/x\"\n"
        )),
        "t.toml:11:17: users[2].password_file: cannot read /run/secrets/podpbx-test-nonexistent/x: No such file or directory"
    );
}

#[test]
fn password_env() {
    std::env::set_var("PODPBX_TEST_TRUNK_PW", "from-env");
    let c = ok(&format!(
        "{SIP}[[trunks]]\nname = \"t\"\nhost = \"2001:db8::9\"\nusername = \"u\"\npassword_env = \"PODPBX_TEST_TRUNK_PW\"\n"
    ));
    let pw = c.trunks[0].password.as_ref().expect("secret");
    assert_eq!(pw.expose(), "from-env");
    assert_eq!(
        pw.source(),
        &SecretSource::Env("PODPBX_TEST_TRUNK_PW".into())
    );
    assert!(c.trunks[0].register);
    assert_eq!(
        error(&format!(
            "{SIP}[[users]]\nname = \"a\"\npassword_env = \"PODPBX_TEST_UNSET_VARIABLE\"\n"
        )),
        "t.toml:5:16: users[0].password_env: environment variable PODPBX_TEST_UNSET_VARIABLE is not set"
    );
}

#[test]
fn exactly_one_secret_source() {
    assert_eq!(
        error(&format!(
            "{SIP}[[users]]\nname = \"a\"\npassword = \"p\"\npassword_env = \"X\"\n"
        )),
        "t.toml:6:16: users[0].password_env: conflicts with `password`: set exactly one of `password`, `password_file`, `password_env`"
    );
}

#[test]
fn missing_file() {
    let path = Path::new("/nonexistent-podpbx-dir/podpbx.toml");
    let e = Config::load(path).expect_err("must fail");
    assert_eq!(
        e.to_string(),
        "/nonexistent-podpbx-dir/podpbx.toml: cannot read configuration: No such file or directory"
    );
    assert_eq!((e.line, e.col), (0, 0));
}

#[test]
fn load_reads_a_file() {
    let dir = temp_dir("load");
    let file = dir.join("podpbx.toml");
    std::fs::write(&file, format!("{SIP}port = 5070\n")).expect("write");
    let c = Config::load(&file).expect("valid");
    assert_eq!(c.sip.port, 5070);
    std::fs::write(&file, format!("{SIP}prot = 5070\n")).expect("write");
    let e = Config::load(&file).expect_err("invalid");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3:1: sip.prot: unknown key, did you mean `port`?",
            file.display()
        )
    );
}

// ----- syntax ---------------------------------------------------------------------------------

#[test]
fn syntax_errors_have_positions() {
    let e = Config::from_str("[sip]\nipv6 = \"::1\"\nport = = 5\n", "t.toml").expect_err("bad");
    assert_eq!((e.file.as_str(), e.line, e.col), ("t.toml", 3, 8));
    assert!(e.key.is_empty());
    assert!(
        e.to_string().starts_with("t.toml:3:8: TOML syntax error: "),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
    let e = Config::from_str("[sip]\nipv6 = \"::1\"\nipv6 = \"::2\"\n", "t.toml").expect_err("dup");
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn transaction_table_bounds() {
    let c = ok(&format!(
        "{SIP}transaction_memory_mb = 8\ntransaction_source_percent = 10\n"
    ));
    assert_eq!(c.sip.transaction_memory, 8 << 20);
    assert_eq!(c.sip.transaction_source_percent, 10);
    let e =
        Config::from_str(&format!("{SIP}transaction_memory_mb = 0\n"), "t.toml").expect_err("0 MB");
    assert!(
        e.to_string()
            .contains("sip.transaction_memory_mb: must be between 1 and 4096, got 0"),
        "{e}"
    );
    let e = Config::from_str(
        &format!("{SIP}transaction_source_percent = 101\n"),
        "t.toml",
    )
    .expect_err("101 %");
    assert!(
        e.to_string()
            .contains("sip.transaction_source_percent: must be between 1 and 100"),
        "{e}"
    );
}

// ----- defaults -------------------------------------------------------------------------------

#[test]
fn defaults() {
    let c = ok(SIP);
    assert_eq!(c.sip.port, 5060);
    assert_eq!(c.sip.domain, "podpbx.local");
    assert_eq!(c.sip.realm, "podpbx.local");
    assert_eq!(c.sip.t1, Duration::from_millis(500));
    assert_eq!(c.sip.t2, Duration::from_secs(4));
    assert_eq!(c.sip.t4, Duration::from_secs(5));
    assert_eq!(c.sip.max_message_bytes, 65535);
    assert_eq!(c.sip.transaction_memory, 32 << 20);
    assert_eq!(c.sip.transaction_source_percent, 25);
    assert_eq!(c.sip.user_agent, "podpbx");
    assert_eq!(c.log.level, "info");
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9060".parse().expect("addr"))
    );
    assert_eq!(c.registrar.min_expires, Duration::from_secs(60));
    assert_eq!(
        c.registrar.state_file,
        PathBuf::from("/var/lib/podpbx/bindings.json")
    );
    assert_eq!(c.registrar.qualify_interval, None);
    assert_eq!(c.security.max_auth_failures, 10);
    assert_eq!(c.security.block, Duration::from_secs(900));
    assert_eq!(
        (c.media.port_min, c.media.port_max, c.media.dscp),
        (20000, 30000, 46)
    );
    assert_eq!(c.media.timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.media.port_layout, MediaPortLayout::Shared);
    assert_eq!(c.media.moderation, Duration::from_micros(50));
    assert_eq!(c.calls.max_duration, Some(Duration::from_secs(14_400)));
    assert!(c.users.is_empty() && c.dialplan.is_empty());
}

#[test]
fn inline_array_of_tables_is_accepted() {
    let c = ok(&format!(
        "users = [{{ name = \"a\", password = \"p\" }}, {{ name = \"b\", password = \"q\" }}]\n{SIP}"
    ));
    assert_eq!(c.users.len(), 2);
    assert_eq!(
        errors(&format!("users = [{{ name = \"a\", pasword = \"p\" }}]\n{SIP}")),
        [
            "t.toml:1:10: users[0].password: missing required secret: set one of `password`, `password_file`, `password_env` (or `identify_by_source = true` with `allow_from`)",
            "t.toml:1:24: users[0].pasword: unknown key, did you mean `password`?",
        ]
    );
}

// ----- users, groups, trunks ------------------------------------------------------------------

#[test]
fn duplicate_names() {
    let errs = errors(&format!(
        "{SIP}[[users]]\nname = \"a\"\npassword = \"p\"\n[[users]]\nname = \"a\"\npassword = \"p\"\n[[groups]]\nname = \"a\"\nmembers = [\"a\"]\n"
    ));
    assert_eq!(
        errs,
        [
            "t.toml:7:8: users[1].name: duplicate user name `a` (first defined at line 4)",
            "t.toml:10:8: groups[0].name: `a` is already a user name; groups and users share one namespace",
        ]
    );
}

#[test]
fn group_membership() {
    let base = format!(
        "{SIP}[[users]]\nname = \"anna\"\npassword = \"p\"\ngroups = [\"kids\"]\n[[users]]\nname = \"ben\"\npassword = \"p\"\n"
    );
    let c = ok(&format!(
        "{base}[[groups]]\nname = \"kids\"\nmembers = [\"ben\"]\n"
    ));
    assert_eq!(c.groups[0].members, ["ben", "anna"]);
    assert_eq!(c.groups[0].ring_timeout, Duration::from_secs(30));
    assert_eq!(
        error(&format!(
            "{base}[[groups]]\nname = \"kids\"\nmembers = [\"bne\"]\n"
        )),
        "t.toml:12:12: groups[0].members[0]: unknown user `bne`, did you mean `ben`?"
    );
    assert_eq!(
        errors(&format!("{base}[[groups]]\nname = \"kid\"\n")),
        [
            "t.toml:6:11: users[0].groups[0]: unknown group `kids`, did you mean `kid`?",
            "t.toml:10:1: groups[0]: group has no members: list them in `members` or in the users' `groups`",
        ]
    );
    assert_eq!(
        error(&format!("{SIP}[[groups]]\nname = \"empty\"\n")),
        "t.toml:3:1: groups[0]: group has no members: list them in `members` or in the users' `groups`"
    );
}

#[test]
fn identify_by_source() {
    assert_eq!(
        error(&format!("{SIP}[[users]]\nname = \"door\"\nidentify_by_source = true\n")),
        "t.toml:5:22: users[0].identify_by_source: requires `allow_from` (the sources this user is identified by)"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[[users]]\nname = \"d1\"\nidentify_by_source = true\nallow_from = [\"198.51.100.0/28\"]\n[[users]]\nname = \"d2\"\nidentify_by_source = true\nallow_from = [\"198.51.100.5\"]\n"
        )),
        "t.toml:10:15: users[1].allow_from[0]: overlaps `198.51.100.0/28` of user `d1`: a source can identify only one user"
    );
    assert_eq!(
        error(&format!("{SIP}[[users]]\nname = \"bad name\"\npassword = \"p\"\n")),
        "t.toml:4:8: users[0].name: invalid name `bad name`: use 1 to 64 letters, digits, `.`, `_`, `+` or `-`"
    );
}

#[test]
fn trunk_checks() {
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nhost = \"198.51.100.1\"\nfamily = \"ipv6\"\nregister = false\n"
        )),
        "t.toml:6:10: trunks[0].family: host `198.51.100.1` is an IPv4 address"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nhost = \"198.51.100.1\"\nregister = false\n"
        )),
        "t.toml:5:8: trunks[0].host: trunk uses IPv4 but `sip.ipv4` is not set"
    );
    assert_eq!(
        error(&format!(
            "{SIP}transports = [\"udp\"]\n[[trunks]]\nname = \"t\"\nhost = \"sip.example.net\"\ntransport = \"tcp\"\nregister = false\n"
        )),
        "t.toml:7:13: trunks[0].transport: transport `tcp` is not enabled in `sip.transports`"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nhost = \"sip.example.net:5080\"\nregister = false\n"
        )),
        "t.toml:5:8: trunks[0].host: `sip.example.net:5080`: put the port in `port`, not in `host`"
    );
    assert_eq!(
        error(&format!("{SIP}[[trunks]]\nname = \"t\"\nhost = \"sip.example.net\"\nusername = \"u\"\n")),
        "t.toml:3:1: trunks[0].password: missing required secret for registering: set one of `password`, `password_file`, `password_env` (or `register = false`)"
    );
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nhost = \"sip.example.net\"\nregister = false\ndids = [\"+49 30\"]\n"
        )),
        "t.toml:7:9: trunks[0].dids[0]: `+49 30` is not a phone number (an optional `+` then digits)"
    );
    let c = ok(&format!(
        "{SIP}[[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\nnetworks = [\"2001:db8::/64\"]\n"
    ));
    let t = &c.trunks[0];
    assert_eq!(t.host, Host::V6("2001:db8::7".parse().expect("ip")));
    assert!(!t.register);
    assert_eq!(
        (t.port, t.transport, t.family),
        (5060, Transport::Udp, Family::V6)
    );
    assert_eq!(t.host.to_string(), "[2001:db8::7]");
    assert!(!t.srv, "an IP literal is never located");
}

#[test]
fn trunk_names_are_located_by_srv_unless_a_port_is_set() {
    let c = ok(&format!(
        "{SIP}[[trunks]]\nname = \"a\"\nhost = \"sip.example.net\"\nregister = false\n[[trunks]]\nname = \"b\"\nhost = \"sip.example.net\"\nport = 5060\nregister = false\n"
    ));
    assert!(c.trunks[0].srv, "a name without a port: NAPTR/SRV");
    assert!(
        !c.trunks[1].srv,
        "an explicit port, even 5060: A/AAAA only (RFC 3263 §4.2)"
    );
    assert_eq!(c.trunks[1].port, 5060);
}

#[test]
fn trunk_lists_are_tried_by_priority_and_failover_statuses() {
    let trunks = "[[trunks]]\nname = \"cheap\"\nhost = \"2001:db8::7\"\npriority = 5\n\
                  [[trunks]]\nname = \"main\"\nhost = \"2001:db8::8\"\npriority = 1\nfailover_statuses = [503, 480]\n\
                  [[trunks]]\nname = \"spare\"\nhost = \"2001:db8::9\"\npriority = 5\n";
    let c = ok(&format!(
        "{SIP}{trunks}[[dialplan]]\nmatch = {{ prefix = \"0\", from = \"local\" }}\naction = \"trunk\"\ntrunk = [\"spare\", \"cheap\", \"main\"]\n"
    ));
    let Action::Trunk { trunks: list, .. } = &c.dialplan[0].action else {
        panic!("trunk action");
    };
    // Lower priority first; equal priorities keep the written order.
    assert_eq!(list, &["main", "spare", "cheap"]);
    assert_eq!(c.trunks[1].failover_statuses, [503, 480]);
    assert_eq!(
        c.trunks[0].failover_statuses,
        [401, 403, 407, 408, 500, 502, 503, 504]
    );
    let errs = errors(&format!(
        "{SIP}{trunks}[[dialplan]]\nmatch = {{ prefix = \"0\", from = \"local\" }}\naction = \"trunk\"\ntrunk = [\"main\", \"main\"]\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("trunk `main` is listed twice")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{SIP}{trunks}[[dialplan]]\nmatch = {{ prefix = \"0\", from = \"local\" }}\naction = \"trunk\"\ntrunk = [\"main\", \"nope\"]\n"
    ));
    assert!(errs.iter().any(|e| e.contains("nope")), "{errs:?}");
    let errs = errors(&format!(
        "{SIP}[[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\nfailover_statuses = [200]\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("failover_statuses[0]: must be between 300 and 699")),
        "{errs:?}"
    );
}

#[test]
fn session_timer_keys() {
    let c = ok(SIP);
    assert_eq!(c.calls.session_timer, Some(Duration::from_secs(1800)));
    assert_eq!(c.calls.min_se, Duration::from_secs(90));
    assert_eq!(c.calls.keepalive, None, "keep-alive off by default");
    let c = ok(&format!("{SIP}[calls]\nkeepalive_secs = 45\n"));
    assert_eq!(c.calls.keepalive, Some(Duration::from_secs(45)));
    let c = ok(&format!(
        "{SIP}[calls]\nsession_timer_secs = 0\nmin_se_secs = 300\n[[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\nsession_timers = false\n"
    ));
    assert_eq!(c.calls.session_timer, None);
    assert_eq!(c.calls.min_se, Duration::from_secs(300));
    assert!(!c.trunks[0].session_timers);
    assert_eq!(
        error(&format!("{SIP}[calls]\nsession_timer_secs = 60\n")),
        "t.toml:4:22: calls.session_timer_secs: must be 0 (off) or at least `min_se_secs` (90 s; RFC 4028 allows no less than 90)"
    );
    assert!(error(&format!("{SIP}[calls]\nmin_se_secs = 30\n")).contains("calls.min_se_secs"));
}

#[test]
fn dns_servers() {
    let c = ok(SIP);
    assert!(
        c.dns.servers.is_empty(),
        "default: the system's resolv.conf"
    );
    let c = ok(&format!(
        "{SIP}[dns]\nservers = [\"2001:db8::53\", \"[2001:db8::54]:5353\", \"198.51.100.53\", \"198.51.100.54:53\"]\n"
    ));
    let want: Vec<SocketAddr> = [
        "[2001:db8::53]:53",
        "[2001:db8::54]:5353",
        "198.51.100.53:53",
        "198.51.100.54:53",
    ]
    .iter()
    .map(|a| a.parse().expect("addr"))
    .collect();
    assert_eq!(c.dns.servers, want);
    assert_eq!(
        error(&format!("{SIP}[dns]\nservers = [\"ns1.example.net\"]\n")),
        "t.toml:4:12: dns.servers[0]: `ns1.example.net` is not an IP address or `address:port`, e.g. `2001:db8::53` or `[2001:db8::53]:53`"
    );
    assert_eq!(
        error(&format!("{SIP}[dns]\nservers = [\"::\"]\n")),
        "t.toml:4:12: dns.servers[0]: `::` is not a usable name server address"
    );
    assert_eq!(
        error(&format!("{SIP}[dns]\nserver = []\n")),
        "t.toml:4:1: dns.server: unknown key, did you mean `servers`?"
    );
}

// ----- dialplan ---------------------------------------------------------------------------------

const PEOPLE: &str = "[[users]]\nname = \"101\"\npassword = \"p\"\n[[users]]\nname = \"102\"\npassword = \"p\"\n[[groups]]\nname = \"all\"\nmembers = [\"101\", \"102\"]\nstrategy = \"sequential\"\nring_timeout_secs = 12\n[[trunks]]\nname = \"out\"\nhost = \"sip.example.net\"\nregister = false\ndids = [\"+4930123\"]\n";

fn with_people(rules: &str) -> String {
    format!("{SIP}{PEOPLE}{rules}")
}

/// Line numbers of `rules` start here in `with_people` documents.
const RULES_LINE: usize = 19;

#[test]
fn dialplan_parses_all_actions() {
    let c = ok(&with_people(
        "[[dialplan]]\nname = \"ring\"\nmatch = { number = \"100\" }\naction = \"ring\"\ntargets = [\"all\"]\n\
         [[dialplan]]\nmatch = { prefix = \"0\", from = \"local\", caller = \"all\" }\naction = \"trunk\"\ntrunk = \"out\"\nstrip = 1\nprepend = \"+49\"\ncaller_id = \"+4930123\"\n\
         [[dialplan]]\nname = \"in\"\nmatch = { did = \"+4930123\" }\naction = \"ring\"\ntargets = [\"101\", \"102\"]\nmode = \"parallel\"\ntimeout_secs = 5\nfallback = [{ action = \"local\" }, { action = \"reject\", status = 486, reason = \"Busy\" }]\n",
    ));
    assert_eq!(c.dialplan.len(), 3);
    let r0 = &c.dialplan[0];
    assert_eq!(r0.matcher.number, NumberMatch::Exact("100".into()));
    assert_eq!(
        r0.action,
        Action::Ring {
            targets: vec![Target::Group("all".into())],
            mode: RingStrategy::Sequential,
            timeout: Duration::from_secs(12)
        }
    );
    let r1 = &c.dialplan[1];
    assert_eq!(r1.name, "dialplan[1]");
    assert_eq!(r1.matcher.caller, Some(Target::Group("all".into())));
    assert_eq!(r1.matcher.from, CallSource::Local);
    let r2 = &c.dialplan[2];
    assert_eq!(r2.matcher.from, CallSource::Trunk);
    assert_eq!(r2.fallback.len(), 2);
    assert_eq!(
        r2.fallback[0],
        Action::Local {
            timeout: Duration::from_secs(30)
        }
    );
    assert_eq!(
        r2.fallback[1],
        Action::Reject {
            status: 486,
            reason: Some("Busy".into())
        }
    );
    assert_eq!(
        c.route(&Origin::Local { user: "101" }, "030")
            .map(|r| r.name.as_str()),
        Some("dialplan[1]")
    );
    assert_eq!(
        c.route(&Origin::Local { user: "101" }, "100")
            .map(|r| r.name.as_str()),
        Some("ring")
    );
    let t = Origin::Trunk {
        trunk: "out",
        did: Some("+4930123"),
    };
    assert_eq!(c.route(&t, "030").map(|r| r.name.as_str()), Some("in"));
    assert!(c
        .route(
            &Origin::Trunk {
                trunk: "out",
                did: None
            },
            "030"
        )
        .is_none());
}

#[test]
fn dialplan_unknown_references() {
    let errs = errors(&with_people(
        "[[dialplan]]\naction = \"ring\"\ntargets = [\"al\"]\n[[dialplan]]\nmatch = { number = \"9\" }\naction = \"trunk\"\ntrunk = \"oout\"\n[[dialplan]]\nmatch = { caller = \"103\" }\naction = \"reject\"\nstatus = 403\n[[dialplan]]\nmatch = { did = \"+4930999\" }\naction = \"reject\"\nstatus = 404\n",
    ));
    let l = RULES_LINE;
    assert_eq!(
        errs,
        [
            format!("t.toml:{}:12: dialplan[0].targets[0]: unknown user or group `al`, did you mean `all`?", l + 2),
            format!("t.toml:{}:9: dialplan[1].trunk: unknown trunk `oout`, did you mean `out`?", l + 6),
            format!("t.toml:{}:20: dialplan[2].match.caller: unknown user or group `103`, did you mean `101`?", l + 8),
            format!("t.toml:{}:17: dialplan[3].match.did: `+4930999` is not listed in any trunk's `dids`", l + 12),
        ]
    );
}

#[test]
fn dialplan_unreachable_after_catch_all() {
    let errs = errors(&with_people(
        "[[dialplan]]\nname = \"all-local\"\nmatch = { from = \"local\" }\naction = \"local\"\n\
         [[dialplan]]\nname = \"from-trunk\"\nmatch = { from = \"trunk\" }\naction = \"ring\"\ntargets = [\"all\"]\n\
         [[dialplan]]\nname = \"late\"\nmatch = { number = \"100\", from = \"local\" }\naction = \"reject\"\nstatus = 403\n",
    ));
    assert_eq!(
        errs,
        [format!(
            "t.toml:{}:1: dialplan[2]: rule `late` is unreachable: every call it matches is taken first by `all-local` (dialplan[0], line {RULES_LINE})",
            RULES_LINE + 9
        )]
    );
    // `from = "any"` shadows both; a narrower earlier rule shadows nothing.
    let errs = errors(&with_people(
        "[[dialplan]]\nmatch = { prefix = \"0\" }\naction = \"local\"\n[[dialplan]]\nmatch = { number = \"0301\", from = \"trunk\" }\naction = \"local\"\n[[dialplan]]\nmatch = { pattern = \"_0X.\" }\naction = \"local\"\n[[dialplan]]\nmatch = { prefix = \"1\", from = \"local\" }\naction = \"local\"\n[[dialplan]]\nmatch = { prefix = \"1\" }\naction = \"local\"\n",
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].contains("dialplan[1]: rule `dialplan[1]` is unreachable"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("dialplan[2]: rule `dialplan[2]` is unreachable"),
        "{}",
        errs[1]
    );
}

#[test]
fn dialplan_action_key_checks() {
    let l = RULES_LINE;
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\naction = \"ring\"\ntargets = [\"101\"]\nstrip = 1\n"
        )),
        format!(
            "t.toml:{}:1: dialplan[0].strip: does not apply to action `ring`",
            l + 3
        )
    );
    assert_eq!(
        error(&with_people("[[dialplan]]\naction = \"rign\"\n")),
        format!(
            "t.toml:{}:10: dialplan[0].action: expected `ring`, `local`, `trunk`, `reject` or `voicemail`, got `rign`, did you mean `ring`?",
            l + 1
        )
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\naction = \"reject\"\nstatus = 200\n"
        )),
        format!(
            "t.toml:{}:10: dialplan[0].status: must be between 400 and 699, got 200",
            l + 2
        )
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\naction = \"ring\"\ntargets = []\n"
        )),
        format!("t.toml:{l}:1: dialplan[0].targets: must name at least one user or group")
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\naction = \"reject\"\nstatus = 404\nfallback = [{ action = \"local\" }]\n"
        )),
        format!(
            "t.toml:{}:13: dialplan[0].fallback[0]: unreachable: `dialplan[0].action` rejects the call before this step",
            l + 3
        )
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\naction = \"local\"\nfallback = [{ action = \"local\", name = \"x\" }]\n"
        )),
        format!("t.toml:{}:33: dialplan[0].fallback[0].name: unknown key, expected `action`, `mailbox`, `targets`, `mode`, `timeout_secs`, `trunk`, `strip`, `prepend`, `caller_id`, `status` or `reason`", l + 2)
    );
}

#[test]
fn dialplan_match_checks() {
    let l = RULES_LINE;
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\nmatch = { number = \"1\", prefix = \"1\" }\naction = \"local\"\n"
        )),
        format!("t.toml:{}:34: dialplan[0].match.prefix: conflicts with `number`: use only one of `number`, `prefix`, `pattern`", l + 1)
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\nmatch = { pattern = \"_1[X\" }\naction = \"local\"\n"
        )),
        format!(
            "t.toml:{}:21: dialplan[0].match.pattern: pattern `_1[X`: missing `]`",
            l + 1
        )
    );
    assert_eq!(
        error(&with_people(
            "[[dialplan]]\nmatch = { from = \"trunk\", caller = \"101\" }\naction = \"local\"\n"
        )),
        format!("t.toml:{}:36: dialplan[0].match.caller: only calls from local users have a `caller`; drop it or use `from = \"local\"`", l + 1)
    );
    assert_eq!(
        error(&with_people("[[dialplan]]\nmatch = { from = \"lokal\" }\naction = \"local\"\n")),
        format!("t.toml:{}:18: dialplan[0].match.from: expected `local`, `device`, `trunk` or `any`, got `lokal`, did you mean `local`?", l + 1)
    );
}

#[test]
fn many_errors_are_all_reported_in_file_order() {
    let errs = errors(
        "[sip]\nipv6 = \"::1\"\nprot = 1\n[media]\ndscp = 99\n[[users]]\npassword = \"p\"\n[log]\nformat = \"xml\"\n",
    );
    assert_eq!(
        errs,
        [
            "t.toml:3:1: sip.prot: unknown key, did you mean `port`?",
            "t.toml:5:8: media.dscp: must be between 0 and 63, got 99",
            "t.toml:6:1: users[0].name: missing required key",
            "t.toml:9:10: log.format: expected `text` or `json`, got `xml`",
        ]
    );
    let all = check_str(
        "[sip]\nipv6 = \"::1\"\nprot = 1\n[media]\ndscp = 99\n",
        "t.toml",
    )
    .expect_err("bad");
    assert_eq!(
        format_errors(&all),
        "t.toml:3:1: sip.prot: unknown key, did you mean `port`?\nt.toml:5:8: media.dscp: must be between 0 and 63, got 99"
    );
}

#[test]
fn tls_section_follows_the_transport_list() {
    let dir = temp_dir("tls");
    let cert = dir.0.join("tls.crt");
    let key = dir.0.join("tls.key");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let sip = format!("{SIP}transports = [\"udp\", \"tls\"]\n");
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    // Defaults: port 5061, TLS 1.2+, built-in roots.
    let c = ok(&format!("{sip}{tls}"));
    let t = c.tls.expect("[tls]");
    assert_eq!(
        (t.port, t.min_version, t.ca_file),
        (5061, TlsVersion::Tls12, None)
    );
    assert_eq!(t.cert_file, cert);
    assert!(ok(SIP).tls.is_none());

    // `tls` listed without files.
    assert_eq!(
        errors(&format!("{sip}[tls]\nport = 5062\n")),
        [
            "t.toml:4:1: tls.cert_file: missing required PEM certificate chain file",
            "t.toml:4:1: tls.key_file: missing required PEM private key file"
        ]
    );
    // Files that cannot be read are named.
    let e = error(&format!(
        "{sip}[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    assert!(
        e.starts_with("t.toml:5:13: tls.cert_file: cannot read /nonexistent/c.pem"),
        "{e}"
    );
    // `[tls]` without `tls` in the transports, and a clash with the SIP port.
    assert_eq!(
        error(&format!("{SIP}{tls}")),
        "t.toml:3:1: tls: `[tls]` is set but `sip.transports` does not list `tls`"
    );
    assert_eq!(
        error(&format!("{sip}{tls}port = 5060\n")),
        "t.toml:7:8: tls.port: must differ from `sip.port` (5060)"
    );
    assert_eq!(
        error(&format!("{sip}{tls}min_version = \"1.1\"\n")),
        "t.toml:7:15: tls.min_version: expected `1.2` or `1.3`, got `1.1`, did you mean `1.2`?"
    );

    // Trunks over TLS default to port 5061; users may be required to use TLS.
    let c = ok(&format!(
        "{sip}{tls}[[trunks]]\nname = \"p\"\nhost = \"sip.example.net\"\ntransport = \"tls\"\n\
         [[users]]\nname = \"1001\"\npassword = \"x\"\ntransport = \"tls\"\n\
         [[users]]\nname = \"1002\"\npassword = \"x\"\n"
    ));
    assert_eq!(
        (c.trunks[0].transport, c.trunks[0].port),
        (Transport::Tls, 5061)
    );
    assert_eq!(c.users[0].transport, Some(Transport::Tls));
    assert_eq!(c.users[1].transport, None);
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"p\"\nhost = \"sip.example.net\"\ntransport = \"tls\"\n"
        )),
        "t.toml:6:13: trunks[0].transport: transport `tls` is not enabled in `sip.transports`"
    );
}

mod home;
mod toll_fraud;
#[test]
fn srtp_per_user_and_trunk_needs_tls() {
    let dir = temp_dir("srtp");
    let cert = dir.0.join("c.pem");
    std::fs::write(&cert, "x").unwrap();
    let sip = format!(
        "{SIP}transports = [\"udp\", \"tls\"]\n[tls]\ncert_file = \"{0}\"\nkey_file = \"{0}\"\n",
        cert.display()
    );
    let c = ok(&format!(
        "{sip}[[users]]\nname = \"1\"\npassword = \"x\"\ntransport = \"tls\"\nsrtp = \"required\"\n\
         [[users]]\nname = \"2\"\npassword = \"x\"\nsrtp = \"optional\"\n\
         [[users]]\nname = \"3\"\npassword = \"x\"\n\
         [[trunks]]\nname = \"p\"\nhost = \"sip.example.net\"\ntransport = \"tls\"\nsrtp = \"required\"\n"
    ));
    let s: Vec<Srtp> = c.users.iter().map(|u| u.srtp).collect();
    assert_eq!(s, [Srtp::Required, Srtp::Optional, Srtp::Off]);
    assert_eq!(c.trunks[0].srtp, Srtp::Required);
    // Keys never in clear SIP: required needs TLS, optional cannot be pinned to UDP/TCP.
    assert_eq!(
        error(&format!(
            "{sip}[[users]]\nname = \"1\"\npassword = \"x\"\nsrtp = \"required\"\n"
        )),
        "t.toml:10:8: users[0].srtp: `required` needs `transport = \"tls\"`: SDES keys are never sent in clear SIP"
    );
    assert_eq!(
        error(&format!(
            "{sip}[[trunks]]\nname = \"p\"\nhost = \"sip.example.net\"\nsrtp = \"optional\"\n"
        )),
        "t.toml:10:8: trunks[0].srtp: `optional` needs `transport = \"tls\"`: SDES keys are never sent in clear SIP"
    );
    assert_eq!(
        error(&format!(
            "{sip}[[users]]\nname = \"1\"\npassword = \"x\"\nsrtp = \"yes\"\n"
        )),
        "t.toml:10:8: users[0].srtp: expected `off`, `optional` or `required`, got `yes`"
    );
}

#[test]
fn header_pass_through_keys() {
    // Defaults: nothing asserted, trusted or passed.
    let c = ok(&format!(
        "{SIP}[[users]]\nname = \"1\"\npassword = \"x\"\n[[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\n\
         [[dialplan]]\naction = \"ring\"\ntargets = [\"1\"]\n"
    ));
    assert!(!c.users[0].withhold_caller_id);
    let t = &c.trunks[0];
    assert!(!t.send_pai && !t.trust_pai && !t.alert_info);
    assert_eq!(c.dialplan[0].alert_info, None);
    assert_eq!(c.dialplan[0].call_info, None);
    let c = ok(&format!(
        "{SIP}[[users]]\nname = \"1\"\npassword = \"x\"\nwithhold_caller_id = true\n\
         [[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\nsend_pai = true\ntrust_pai = true\nalert_info = true\n\
         [[dialplan]]\naction = \"ring\"\ntargets = [\"1\"]\n\
         alert_info = \"<http://127.0.0.1/ring>;info=alert-autoanswer\"\ncall_info = \"<sip:pbx>;answer-after=0\"\n"
    ));
    assert!(c.users[0].withhold_caller_id);
    let t = &c.trunks[0];
    assert!(t.send_pai && t.trust_pai && t.alert_info);
    assert_eq!(
        c.dialplan[0].alert_info.as_deref(),
        Some("<http://127.0.0.1/ring>;info=alert-autoanswer")
    );
    assert_eq!(
        c.dialplan[0].call_info.as_deref(),
        Some("<sip:pbx>;answer-after=0")
    );
    // Errors name file, line, column and key.
    assert_eq!(
        error(&format!(
            "{SIP}[[trunks]]\nname = \"t\"\nhost = \"2001:db8::7\"\nsend_pai = \"yes\"\n"
        )),
        "t.toml:6:12: trunks[0].send_pai: expected a boolean (`true` or `false`), found a string"
    );
    assert!(error(&format!(
        "{SIP}[[users]]\nname = \"1\"\npassword = \"x\"\nwithhold_caller_id = 1\n"
    ))
    .starts_with("t.toml:6:22: users[0].withhold_caller_id:"));
    let rule = |v: &str| {
        format!(
            "{SIP}[[users]]\nname = \"1\"\npassword = \"x\"\n[[dialplan]]\naction = \"ring\"\ntargets = [\"1\"]\n{v}\n"
        )
    };
    assert_eq!(
        error(&rule("alert_info = \"http://127.0.0.1/ring\"")),
        "t.toml:9:14: dialplan[0].alert_info: must be one value `<URI>` with optional `;parameters`, e.g. `<http://127.0.0.1/ring>;info=alert-autoanswer`"
    );
    assert_eq!(
        error(&rule(&format!(
            "call_info = \"<http://x/{}>\"",
            "a".repeat(250)
        ))),
        "t.toml:9:13: dialplan[0].call_info: must be printable ASCII of at most 256 bytes"
    );
    assert!(error(&rule("alert_info = \"<http://x/caf\u{e9}>\""))
        .starts_with("t.toml:9:14: dialplan[0].alert_info: must be printable ASCII"));
    // Only on a rule, not on a fallback step.
    assert!(error(&format!(
        "{SIP}[[users]]\nname = \"1\"\npassword = \"x\"\n[[dialplan]]\naction = \"ring\"\ntargets = [\"1\"]\n\
         fallback = [{{ action = \"reject\", status = 480, alert_info = \"<http://x/>\" }}]\n"
    ))
    .contains("dialplan[0].fallback[0].alert_info"));
}
