//! Sources that prove nothing but their address (devices identified by source, a trunk's
//! networks) and trunks: `from = "device"`, `may_use_trunks`, and the warnings of `check`.

use super::*;

const BASE: &str = r#"
[[users]]
name = "101"
password = "pw101"

[[users]]
name = "door"
identify_by_source = true
allow_from = ["198.51.100.7/32"]

[[users]]
name = "gate"
identify_by_source = true
allow_from = ["198.51.100.8/32"]
may_use_trunks = true

[[trunks]]
name = "prov"
host = "2001:db8::9"
register = false
dids = ["+4930555"]
networks = ["2001:db8:9::/48"]
"#;

fn rule<'a>(c: &'a Config, name: &str) -> &'a Rule {
    c.dialplan.iter().find(|r| r.name == name).expect("rule")
}

#[test]
fn only_explicit_rules_let_forgeable_sources_reach_a_trunk() {
    let c = ok(&format!(
        r#"{SIP}{BASE}
[[dialplan]]
name = "door-out"
match = {{ from = "device", number = "0800" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "door-named"
match = {{ caller = "door", number = "0900" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "hairpin"
match = {{ from = "trunk", prefix = "00" }}
action = "trunk"
trunk = "prov"

[[dialplan]]
name = "out"
match = {{ prefix = "0" }}
action = "trunk"
trunk = "prov"
"#
    ));
    let door = Origin::Local { user: "door" };
    let gate = Origin::Local { user: "gate" };
    let phone = Origin::Local { user: "101" };
    let trunk = Origin::Trunk {
        trunk: "prov",
        did: None,
    };
    // `from = "device"` matches devices only.
    assert!(c.is_device("door") && !c.is_device("101"));
    assert_eq!(
        c.route(&door, "0800").map(|r| r.name.as_str()),
        Some("door-out")
    );
    assert_eq!(
        c.route(&phone, "0800").map(|r| r.name.as_str()),
        Some("out")
    );
    // The catch-all rule lets the authenticated phone out, not the device, unless it may.
    let out = rule(&c, "out");
    assert!(c.may_reach_trunk(out, &phone));
    assert!(!c.may_reach_trunk(out, &door));
    assert!(c.may_reach_trunk(out, &gate), "may_use_trunks");
    assert!(c.may_reach_trunk(rule(&c, "door-out"), &door));
    assert!(c.may_reach_trunk(rule(&c, "door-named"), &door));
    // A call from a trunk goes back out only through an explicit `from = "trunk"` rule.
    assert!(!c.may_reach_trunk(out, &trunk));
    assert!(c.may_reach_trunk(rule(&c, "hairpin"), &trunk));
    // `check` names every rule through which a forgeable source reaches a trunk.
    let w = c.trunk_exposure_warnings();
    let has = |rule: &str, who: &str| {
        w.iter()
            .any(|l| l.contains(&format!("`{rule}`")) && l.contains(who))
    };
    assert!(has("door-out", "user `door`"), "{w:#?}");
    assert!(has("door-named", "user `door`"), "{w:#?}");
    assert!(has("hairpin", "trunk's networks"), "{w:#?}");
    assert!(has("out", "user `gate`"), "{w:#?}");
    assert!(!has("out", "user `door`"), "{w:#?}");
    assert_eq!(w.len(), 5, "{w:#?}");
}

#[test]
fn device_source_keys_are_checked() {
    let e = error(&format!(
        "{SIP}{BASE}\n[[dialplan]]\nmatch = {{ from = \"device\", did = \"+4930555\" }}\naction = \"reject\"\nstatus = 403\n"
    ));
    assert!(e.contains("only calls from trunks arrive on a DID"), "{e}");
    // A device rule after a `from = "local"` catch-all is shadowed.
    let errs = errors(&format!(
        "{SIP}{BASE}\n[[dialplan]]\nmatch = {{ from = \"local\" }}\naction = \"reject\"\nstatus = 403\n\
         [[dialplan]]\nmatch = {{ from = \"device\" }}\naction = \"reject\"\nstatus = 404\n"
    ));
    assert!(errs.iter().any(|e| e.contains("dialplan[1]")), "{errs:#?}");
}
