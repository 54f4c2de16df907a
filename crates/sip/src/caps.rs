//! podpbx's SIP capability set, defined once: the methods it announces in `Allow`, the body
//! types in `Accept` and the option tags in `Supported` (RFC 3261 §20.5, §20.1, §20.37).
//!
//! Which set an element announces depends on who hears it:
//!
//! * [`PBX_METHODS`]: what the core answers out of dialog (OPTIONS replies, `501`/`405`): the
//!   dialog methods plus REGISTER and MESSAGE;
//! * [`DIALOG_METHODS`]: what a call leg accepts inside its dialog (the `Allow` of the INVITEs
//!   podpbx sends to phones and of its 2xx to callers);
//! * [`TRUNK_DIALOG_METHODS`]: the same towards a trunk, without REFER (a provider does not
//!   transfer calls podpbx placed);
//! * [`TRUNK_REGISTER_METHODS`]: the `Allow` of a trunk REGISTER (what the provider may send
//!   to the registered contact).
//!
//! Add a method to the one list that accepts it; every `Allow` header follows.

use crate::checks::Capabilities;
use crate::Method;

/// Methods a call leg accepts within its dialog.
pub const DIALOG_METHODS: &[Method] = &[
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
    Method::Info,
    Method::Update,
    Method::Prack,
    Method::Refer,
    Method::Notify,
];

/// Methods a call leg towards a trunk accepts within its dialog (no REFER).
pub const TRUNK_DIALOG_METHODS: &[Method] = &[
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
    Method::Info,
    Method::Update,
    Method::Prack,
    Method::Notify,
];

/// Methods announced in a trunk REGISTER.
pub const TRUNK_REGISTER_METHODS: &[Method] = &[
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
];

/// Methods the core answers (out of dialog and in): the `Allow` of OPTIONS replies, `405` and
/// `501`.
pub const PBX_METHODS: &[Method] = &[
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
    Method::Register,
    Method::Message,
    Method::Info,
    Method::Update,
    Method::Prack,
    Method::Refer,
    Method::Notify,
    Method::Subscribe,
];

/// Body types podpbx understands (the `Accept` header), lower case.
pub const ACCEPT: &[&str] = &[
    "application/sdp",
    "text/plain",
    "application/dtmf-relay",
    "application/dtmf",
    "message/sipfrag",
];

/// Option tags podpbx implements (the `Supported` header): reliable provisional responses
/// (RFC 3262) and session timers (RFC 4028), both terminated on each call leg, and `Replaces`
/// (RFC 3891: INVITE with Replaces, attended transfer).
pub const SUPPORTED: &[&str] = &["100rel", "timer", "replaces"];

/// The `Supported` header value of our INVITEs and 2xx.
pub fn supported() -> String {
    SUPPORTED.join(", ")
}

/// An `Allow` header value listing `methods` in order (`INVITE, ACK, ...`).
pub fn allow(methods: &[Method]) -> String {
    let mut out = String::new();
    for (i, m) in methods.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&m.to_string());
    }
    out
}

impl Capabilities {
    /// What the podpbx core announces and checks requests against ([`PBX_METHODS`],
    /// [`ACCEPT`], [`SUPPORTED`]).
    pub fn podpbx() -> Capabilities {
        Capabilities {
            methods: PBX_METHODS.to_vec(),
            accept: ACCEPT.iter().map(|s| (*s).to_owned()).collect(),
            supported: SUPPORTED.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_values() {
        assert_eq!(
            allow(DIALOG_METHODS),
            "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY"
        );
        assert_eq!(
            allow(TRUNK_DIALOG_METHODS),
            "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, NOTIFY"
        );
        assert_eq!(
            allow(TRUNK_REGISTER_METHODS),
            "INVITE, ACK, CANCEL, BYE, OPTIONS"
        );
        assert_eq!(
            Capabilities::podpbx().allow_header(),
            "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE"
        );
    }

    #[test]
    fn every_set_is_within_what_the_core_answers() {
        for set in [DIALOG_METHODS, TRUNK_DIALOG_METHODS, TRUNK_REGISTER_METHODS] {
            for m in set {
                assert!(PBX_METHODS.contains(m), "{m} is announced but not answered");
            }
        }
    }
}
