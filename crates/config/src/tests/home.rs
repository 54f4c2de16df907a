//! The home features' keys: defaults, a full set-up, routing by time and mode, and errors.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

const USERS: &str = r#"
[[users]]
name = "101"
password = "pw101"

[[users]]
name = "102"
password = "pw102"

[[users]]
name = "door"
password = "pwdoor"
doorbell = true
"#;

#[test]
fn defaults() {
    let c = ok(&format!("{SIP}{USERS}"));
    assert_eq!(c.clock.name, "UTC");
    assert!(c.modes.is_empty());
    assert_eq!(c.features, FeatureCodes::default());
    assert_eq!(c.features.voicemail, "*97");
    assert_eq!(c.voicemail.dir, PathBuf::from("/var/lib/podpbx/voicemail"));
    assert_eq!(c.voicemail.max_message, Duration::from_secs(120));
    assert_eq!(c.voicemail.max_sessions, 8);
    assert_eq!(c.events.queue, 256);
    assert!(c.webhooks.is_empty());
    let u = c.user("101").unwrap();
    assert!(u.voicemail.is_none() && !u.dnd && !u.doorbell);
    assert_eq!(u.forward, Forwarding::default());
    assert!(c.user("door").unwrap().doorbell);
}

#[test]
fn full_home_setup() {
    let dir = temp_dir("home");
    std::fs::write(dir.join("pin"), "4711\n").unwrap();
    std::fs::write(dir.join("hook"), "s3cret-key\n").unwrap();
    let text = format!(
        r#"{SIP}
[storage]
data_dir = "/data"

[clock]
timezone = "Europe/Berlin"

[[modes]]
name = "night"
feature_code = "*55"

[[modes]]
name = "holiday"
initial = true

[voicemail]
max_message_secs = 60
silence_secs = 3
max_messages = 20
max_sessions = 2

[features]
pickup = "*8"
dnd_on = ""

[[users]]
name = "101"
password = "pw"
voicemail = true
voicemail_pin_file = "{pin}"
forward = {{ no_answer = "+491701234567", no_answer_secs = 15, busy = "102" }}

[[users]]
name = "102"
password = "pw"
voicemail = true
unsolicited_mwi = false
dnd = true

[[users]]
name = "door"
password = "pw"
doorbell = true

[[webhooks]]
url = "http://[2001:db8::50]:8123/api/webhook/podpbx-door"
events = ["doorbell", "missed_call"]
secret_file = "{hook}"
timeout_secs = 3

[[webhooks]]
url = "https://ha.example.org/api/webhook/all"

[[dialplan]]
name = "door at night"
match = {{ number = "door", mode = "night" }}
action = "ring"
targets = ["101"]

[[dialplan]]
name = "door evenings"
match = {{ number = "door", time = {{ weekdays = ["mon-fri"], hours = ["18:00-22:00"] }} }}
action = "ring"
targets = ["101", "102"]

[[dialplan]]
name = "door"
match = {{ number = "door" }}
action = "ring"
targets = ["102"]
"#,
        pin = dir.join("pin").display(),
        hook = dir.join("hook").display()
    );
    let c = ok(&text);
    assert_eq!(c.clock.name, "Europe/Berlin");
    assert_eq!(c.modes.len(), 2);
    assert_eq!(
        c.mode("night").unwrap().feature_code.as_deref(),
        Some("*55")
    );
    assert!(c.mode("holiday").unwrap().initial);
    assert_eq!(c.voicemail.dir, PathBuf::from("/data/voicemail"));
    assert_eq!(c.voicemail.max_message, Duration::from_secs(60));
    assert_eq!(c.voicemail.silence, Duration::from_secs(3));
    assert_eq!(c.features.pickup, "*8");
    assert_eq!(c.features.dnd_on, "");
    let u = c.user("101").unwrap();
    let vm = u.voicemail.as_ref().unwrap();
    assert_eq!(vm.pin.as_ref().unwrap().expose(), "4711");
    assert!(vm.unsolicited_mwi);
    assert_eq!(
        u.forward.no_answer,
        Some(ForwardTarget::Number("+491701234567".into()))
    );
    assert_eq!(u.forward.busy, Some(ForwardTarget::Local("102".into())));
    assert_eq!(u.forward.no_answer_secs, 15);
    assert!(c.mailbox("101").is_some() && c.mailbox("door").is_none());
    assert!(
        !c.user("102")
            .unwrap()
            .voicemail
            .as_ref()
            .unwrap()
            .unsolicited_mwi
    );
    assert!(c.user("102").unwrap().dnd);
    assert_eq!(c.webhooks.len(), 2);
    let w = &c.webhooks[0];
    assert_eq!(w.url.host, "2001:db8::50");
    assert_eq!(w.url.port, 8123);
    assert_eq!(w.url.path, "/api/webhook/podpbx-door");
    assert!(!w.url.tls);
    assert_eq!(w.events, vec![EventKind::Doorbell, EventKind::MissedCall]);
    assert_eq!(w.secret.as_ref().unwrap().expose(), "s3cret-key");
    assert_eq!(w.timeout, Duration::from_secs(3));
    assert_eq!(c.webhooks[1].events.len(), 4);
    assert!(c.webhooks[1].url.tls && c.webhooks[1].url.port == 443);

    // Routing at injected times (Berlin is UTC+1 in January): Monday 2026-01-05.
    let origin = Origin::Local { user: "door" };
    let at = |utc_secs: u64, night: Option<bool>| {
        let f = move |m: &str| if m == "night" { night } else { None };
        let when = When::at(&c, UNIX_EPOCH + Duration::from_secs(utc_secs), &f);
        c.route_at(&origin, "door", &when).map(|r| r.name.clone())
    };
    let monday_10 = 1_767_603_600; // 2026-01-05 09:00 UTC = 10:00 Berlin
    let monday_19 = monday_10 + 9 * 3600;
    let saturday_19 = monday_19 + 5 * 86_400;
    assert_eq!(at(monday_10, None).as_deref(), Some("door"));
    assert_eq!(at(monday_19, None).as_deref(), Some("door evenings"));
    assert_eq!(at(saturday_19, None).as_deref(), Some("door"));
    assert_eq!(at(monday_10, Some(true)).as_deref(), Some("door at night"));
    assert_eq!(at(monday_19, Some(false)).as_deref(), Some("door evenings"));
    // Without a time, time rules never match; route() is that.
    assert_eq!(
        c.route(&origin, "door").map(|r| r.name.as_str()),
        Some("door")
    );
}

#[test]
fn time_and_mode_rules_do_not_shadow_later_ones() {
    let text = format!(
        r#"{SIP}{USERS}
[[modes]]
name = "night"

[[dialplan]]
name = "night"
match = {{ mode = "night" }}
action = "reject"
status = 480

[[dialplan]]
name = "weekend"
match = {{ time = {{ weekdays = ["sat-sun"] }} }}
action = "reject"
status = 480

[[dialplan]]
name = "all"
action = "local"
"#
    );
    ok(&text);
    // The same condition twice does shadow.
    let text = format!(
        r#"{SIP}{USERS}
[[dialplan]]
name = "a"
match = {{ time = {{ hours = ["08:00-09:00"] }} }}
action = "local"

[[dialplan]]
name = "b"
match = {{ number = "101", time = {{ hours = ["08:00-09:00"] }} }}
action = "local"
"#
    );
    assert!(
        error(&text).contains("rule `b` is unreachable"),
        "{}",
        error(&text)
    );
}

#[test]
fn errors_name_file_line_and_key() {
    let e = error(&format!("{SIP}[clock]\ntimezone = \"Europe/Berlln\"\n"));
    assert!(
        e.starts_with("t.toml:4:12: clock.timezone: unknown time zone `Europe/Berlln`"),
        "{e}"
    );

    let e = error(&format!("{SIP}{USERS}[[modes]]\nname = \"night\"\n[[dialplan]]\nmatch = {{ mode = \"nigt\" }}\naction = \"local\"\n"));
    assert!(
        e.contains("dialplan[0].match.mode: unknown mode `nigt`, did you mean `night`?"),
        "{e}"
    );

    let e = error(&format!("{SIP}{USERS}[[dialplan]]\nmatch = {{ time = {{ weekdays = [\"mon\", \"funday\"] }} }}\naction = \"local\"\n"));
    assert!(
        e.contains("dialplan[0].match.time.weekdays[1]: `funday` is not a weekday"),
        "{e}"
    );

    let e = error(&format!("{SIP}{USERS}[[dialplan]]\nmatch = {{ time = {{ hours = [\"22:00-7:00\"] }} }}\naction = \"local\"\n"));
    assert!(
        e.contains("match.time.hours[0]: `7:00` is not a time"),
        "{e}"
    );

    let e = error(&format!(
        "{SIP}{USERS}[[dialplan]]\nmatch = {{ time = {{}} }}\naction = \"local\"\n"
    ));
    assert!(
        e.contains("dialplan[0].match.time: set at least one of"),
        "{e}"
    );

    let e = error(&format!("{SIP}[features]\ndnd_on = \"*97\"\n"));
    assert!(
        e.contains("features.dnd_on: `*97` is already the code of features.voicemail"),
        "{e}"
    );

    let e = error(&format!("{SIP}[features]\nvoicemail = \"**9\"\n"));
    assert!(
        e.contains("features.voicemail: `**9` starts with `**` (features.pickup"),
        "{e}"
    );

    let e = error(&format!(
        "{SIP}[[modes]]\nname = \"night\"\nfeature_code = \"*78\"\n"
    ));
    assert!(
        e.contains("modes[0].feature_code: `*78` is already the code of features.dnd_on"),
        "{e}"
    );

    let e = error(&format!("{SIP}[features]\npickup = \"*8a\"\n"));
    assert!(e.contains("`*8a` is not a feature code"), "{e}");

    let e = error(&format!("{SIP}[[users]]\nname = \"1\"\npassword = \"p\"\nvoicemail = true\nvoicemail_pin = \"12ab\"\n"));
    assert!(
        e.contains("users[0].voicemail_pin: a voicemail PIN is 1 to 16 digits"),
        "{e}"
    );

    let e = error(&format!(
        "{SIP}[[users]]\nname = \"1\"\npassword = \"p\"\nvoicemail_pin = \"1234\"\n"
    ));
    assert!(
        e.contains("users[0].voicemail_pin: needs `voicemail = true`"),
        "{e}"
    );

    let e = error(&format!("{SIP}[[users]]\nname = \"1\"\npassword = \"p\"\nvoicemail = true\nvoicemail_pin_file = \"/nonexistent/pin\"\n"));
    assert!(
        e.contains("users[0].voicemail_pin_file: cannot read /nonexistent/pin"),
        "{e}"
    );

    let e = error(&format!("{SIP}{USERS}[[users]]\nname = \"103\"\npassword = \"p\"\nforward = {{ always = \"1o2\" }}\n"));
    assert!(e.contains("users[3].forward.always: unknown user or group `1o2`, did you mean `102`?; or give a phone number"), "{e}");

    let e = error(&format!(
        "{SIP}[[users]]\nname = \"101\"\npassword = \"p\"\nforward = {{ busy = \"101\" }}\n"
    ));
    assert!(
        e.contains("users[0].forward.busy: a user cannot forward to itself"),
        "{e}"
    );

    let e = error(&format!("{SIP}[[users]]\nname = \"101\"\npassword = \"p\"\nforward = {{ no_answer = \"102\", no_answer_secs = 0 }}\n"));
    assert!(e.contains("forward.no_answer_secs"), "{e}");

    for (url, want) in [
        ("ftp://x/", "not an http:// or https:// URL"),
        ("http://user:pw@x/", "credentials in the URL"),
        ("http://x:99999/", "`99999` is not a port"),
        ("http://[2001:db8::1/", "unclosed"),
        ("http:///path", "has no host"),
    ] {
        let e = error(&format!("{SIP}[[webhooks]]\nurl = \"{url}\"\n"));
        assert!(
            e.contains("webhooks[0].url: ") && e.contains(want),
            "{url}: {e}"
        );
    }
    let e = error(&format!(
        "{SIP}[[webhooks]]\nurl = \"http://x/\"\nevents = [\"doorbel\"]\n"
    ));
    assert!(
        e.contains("webhooks[0].events[0]") && e.contains("did you mean `doorbell`?"),
        "{e}"
    );
    let e = error(&format!(
        "{SIP}[[webhooks]]\nurl = \"http://x/\"\nsecret_file = \"/nonexistent/s\"\n"
    ));
    assert!(
        e.contains("webhooks[0].secret_file: cannot read /nonexistent/s"),
        "{e}"
    );
    let e = error(&format!(
        "{SIP}[[webhooks]]\nurl = \"http://x/\"\nevent = [\"trunk\"]\n"
    ));
    assert!(
        e.contains("webhooks[0].event: unknown key, did you mean `events`?"),
        "{e}"
    );
}

#[test]
fn voicemail_action() {
    let text = format!(
        r#"{SIP}
[[users]]
name = "101"
password = "p"
voicemail = true

[[users]]
name = "102"
password = "p"

[[dialplan]]
name = "ext"
match = {{ pattern = "_1XX" }}
action = "local"
timeout_secs = 20
fallback = [{{ action = "voicemail" }}]

[[dialplan]]
name = "main"
match = {{ number = "500" }}
action = "ring"
targets = ["101", "102"]
fallback = [{{ action = "voicemail", mailbox = "101" }}]
"#
    );
    let c = ok(&text);
    assert_eq!(
        c.dialplan[0].fallback,
        vec![Action::Voicemail { mailbox: None }]
    );
    assert_eq!(
        c.dialplan[1].fallback,
        vec![Action::Voicemail {
            mailbox: Some("101".into())
        }]
    );
    let e = error(&text.replace("mailbox = \"101\"", "mailbox = \"102\""));
    assert!(e.contains("dialplan[1].fallback[0].mailbox: user `102` has no mailbox: set `voicemail = true` on it"), "{e}");
    let e = error(&text.replace("mailbox = \"101\"", "mailbox = \"10l\""));
    assert!(
        e.contains("unknown mailbox `10l`, did you mean `101`?"),
        "{e}"
    );
    let e = error(&text.replace(
        "fallback = [{ action = \"voicemail\" }]",
        "fallback = [{ action = \"voicemail\", status = 404 }]",
    ));
    assert!(
        e.contains("fallback[0].status: does not apply to action `voicemail`"),
        "{e}"
    );
}

#[test]
fn email_section() {
    let dir = temp_dir("email");
    std::fs::write(dir.join("smtp"), "hunter2\n").unwrap();
    let text = format!(
        "{SIP}[email]\nsmtp_host = \"mail.example.org\"\nusername = \"pbx\"\npassword_file = \"{}\"\nfrom = \"pbx@example.org\"\n\n[[users]]\nname = \"101\"\npassword = \"p\"\nvoicemail = true\nemail = \"anna@example.org\"\n",
        dir.join("smtp").display()
    );
    let c = ok(&text);
    let e = c.email.as_ref().unwrap();
    assert_eq!(
        (e.port, e.tls, e.queue, e.attach),
        (587, SmtpTls::StartTls, 64, true)
    );
    assert_eq!(e.password.as_ref().unwrap().expose(), "hunter2");
    assert_eq!(
        c.user("101").unwrap().email.as_deref(),
        Some("anna@example.org")
    );
    assert!(ok(SIP).email.is_none());
    let loopback = ok(&format!("{SIP}[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 2525\ntls = \"none\"\nfrom = \"pbx@home.lan\"\n"));
    assert_eq!(loopback.email.unwrap().port, 2525);
    for (t, want) in [
        (
            "[email]\nsmtp_host = \"mail.example.org\"\ntls = \"none\"\nfrom = \"a@b.c\"\n",
            "email.tls: `none` sends messages (and credentials) in clear text",
        ),
        (
            "[email]\nsmtp_host = \"mail.example.org\"\nusername = \"x\"\nfrom = \"a@b.c\"\n",
            "email.username: set both",
        ),
        (
            "[email]\nsmtp_host = \"mail.example.org\"\nfrom = \"nobody\"\n",
            "email.from: `nobody` is not an e-mail address",
        ),
        ("[email]\nfrom = \"a@b.c\"\n", "email.smtp_host: missing"),
        (
            "[[users]]\nname = \"1\"\npassword = \"p\"\nemail = \"a b@c.d\"\n",
            "users[0].email: `a b@c.d` is not an e-mail address",
        ),
    ] {
        let e = error(&format!("{SIP}{t}"));
        assert!(e.contains(want), "{e}");
    }
}

/// The flag that spares the per-REGISTER mailbox lookup follows the mailboxes: on when one
/// mailbox sends unsolicited MWI (the default), off when none does or there is no mailbox.
#[test]
fn any_unsolicited_mwi_follows_the_mailboxes() {
    assert!(!ok(&format!("{SIP}{USERS}")).any_unsolicited_mwi());
    let with = |extra: &str| {
        format!(
            "{SIP}{USERS}\n[[users]]\nname = \"103\"\npassword = \"pw\"\nvoicemail = true\n{extra}"
        )
    };
    let on = ok(&with(""));
    assert!(on.mailbox("103").is_some());
    assert!(on.any_unsolicited_mwi());
    assert!(!ok(&with("unsolicited_mwi = false\n")).any_unsolicited_mwi());
}
