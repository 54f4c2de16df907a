//! Who may do what by source address alone (issue #11): a UDP source address is all a
//! forged packet needs, so the engine trusts it only where nothing better exists and says so.
//!
//! * In-dialog requests (and ACKs) are accepted only from the address the dialog's peer uses:
//!   the leg's signalling peer, or for a trunk leg any address of the trunk (its host and its
//!   `networks`: providers' SBC clusters answer from several). The shell answers others `481`
//!   and counts them ([`B2bua::dialog_source_ok`]); CANCEL is checked the same way against
//!   its INVITE's source ([`B2bua::same_peer`]).
//! * Trunk steps of the dialplan are refused to sources proven only by their address unless
//!   the rule allows it explicitly (`routing.rs`, [`podpbx_config::Config::may_reach_trunk`]).
//! * A call from a trunk's networks must name one of the trunk's DIDs
//!   ([`crate::Identity::NotADid`]: the shell answers `404`).

use super::B2bua;
use crate::Flow;
use podpbx_sip::Message;
use std::net::IpAddr;

/// What the engine refused because a source proved too little (cumulative, for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityCounts {
    /// Trunk steps refused to a device or trunk caller without an explicit rule.
    pub trunk_refused: u64,
    /// In-dialog requests, ACKs and CANCELs from an address their dialog's peer does not use.
    pub foreign_source: u64,
    /// `Alert-Info`/`Call-Info` values of callers not passed to phones: malformed, oversize,
    /// not printable ASCII, or beyond the fourth.
    pub headers_dropped: u64,
    /// Auto-answer/intercom `Alert-Info` values or parameters from trunks removed.
    pub auto_answer_stripped: u64,
}

impl B2bua {
    /// What was refused so far.
    pub fn security_counts(&self) -> SecurityCounts {
        self.security
    }

    /// False when `req` (in-dialog, ACK) names one of our dialogs but comes from an address
    /// the dialog's peer does not use: the shell answers `481` (nothing to an ACK) and the
    /// dialog is not touched. True for requests of no dialog (the usual `481` path).
    pub fn dialog_source_ok(&mut self, req: &Message, flow: &Flow) -> bool {
        let Some((key, li)) = self.dialog_of(req) else {
            return true;
        };
        let Some(leg) = self.calls.get(&key).and_then(|c| c.legs.get(li)) else {
            return true;
        };
        let expected = leg.dialog.peer.addr.ip();
        let trunk = leg.party.is_trunk().then(|| leg.party.name().to_string());
        let ok = expected.to_canonical() == flow.remote.ip().to_canonical()
            || trunk.is_some_and(|t| self.trunk_address(&t, flow.remote.ip()));
        if !ok {
            self.security.foreign_source += 1;
        }
        ok
    }

    /// Whether a CANCEL (or another request about a transaction) from `src` may act on a
    /// request that came from `expected`: the same address, or two addresses of one trunk.
    /// Counts a refusal.
    pub fn same_peer(&mut self, expected: IpAddr, src: IpAddr) -> bool {
        let ok =
            expected.to_canonical() == src.to_canonical()
                || self.cfg.trunks.iter().any(|t| {
                    self.trunk_address(&t.name, expected) && self.trunk_address(&t.name, src)
                });
        if !ok {
            self.security.foreign_source += 1;
        }
        ok
    }

    /// `ip` is trunk `name`'s host or in its `networks`.
    fn trunk_address(&self, name: &str, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cfg.trunk(name).is_some_and(|t| {
            t.host.ip().is_some_and(|h| h.to_canonical() == ip)
                || t.networks.iter().any(|n| n.contains(ip))
        })
    }
}
