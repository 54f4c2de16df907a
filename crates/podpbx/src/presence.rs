//! SUBSCRIBE/NOTIFY in the core: the RFC 6665 notifier of `podpbx-presence` for MWI
//! (`message-summary`, a user's own mailbox) and BLF (`dialog`, any extension or group),
//! SUBSCRIBE authenticated with digest like REGISTER (unknown packages get 489 before that),
//! NOTIFYs as client transactions of the core; unsolicited MWI for phones that do not
//! subscribe.

use std::time::Instant;

use podpbx_config::Config;
use podpbx_presence::notifier::{Limits, Package};
use podpbx_presence::{mwi::Counts, Notifier, NotifyId};
use podpbx_sip::transaction::{ClientTxId, TransactionLayer};
use podpbx_sip::{Flow, IdGen, Message, Method, StatusCode};
use tracing::debug;

/// The notifier and its settings.
pub struct Presence {
    pub notifier: Notifier,
}

/// What a SUBSCRIBE asks to watch, once its subscriber is known.
pub enum Verdict {
    /// Watch `resource`.
    Watch(String),
    /// Refuse with this status.
    Refuse(StatusCode),
}

impl Presence {
    pub fn new(domain: &str, user_agent: &str, ids: IdGen) -> Presence {
        Presence {
            notifier: Notifier::new(Limits::default(), domain, user_agent, ids),
        }
    }

    /// Config reload.
    pub fn reload(&mut self, cfg: &Config) {
        let n = &mut self.notifier;
        let limits = n.limits().clone();
        n.set_limits(limits, &cfg.sip.domain, &cfg.sip.user_agent);
        n.retain_mailboxes(&|m| cfg.mailbox(m).is_some());
    }

    /// Who may watch what: one's own mailbox (it must exist), any user or group's dialogs.
    pub fn verdict(cfg: &Config, package: Package, subscriber: &str, req: &Message) -> Verdict {
        let resource = req
            .request_uri()
            .ok()
            .and_then(|u| u.user)
            .map(|u| podpbx_b2bua::unescape_user(&u))
            .unwrap_or_default();
        match package {
            Package::MessageSummary => {
                if resource != subscriber {
                    Verdict::Refuse(StatusCode::FORBIDDEN)
                } else if cfg.mailbox(&resource).is_none() {
                    Verdict::Refuse(StatusCode::NOT_FOUND)
                } else {
                    Verdict::Watch(resource)
                }
            }
            Package::Dialog => {
                if cfg.user(&resource).is_some() || cfg.group(&resource).is_some() {
                    Verdict::Watch(resource)
                } else {
                    Verdict::Refuse(StatusCode::NOT_FOUND)
                }
            }
        }
    }

    /// Starts the queued NOTIFYs as client transactions; `started` records their owners.
    pub fn flush(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        mut started: impl FnMut(ClientTxId, NotifyId),
    ) {
        while let Some(o) = self.notifier.poll_outgoing() {
            match tx.send_request(now, o.branch.into(), Method::Notify, o.data, o.peer) {
                Ok(id) => started(id, o.id),
                Err(e) => {
                    debug!(error = %e, "NOTIFY not sent");
                    self.notifier.notify_result(now, o.id, None);
                }
            }
        }
    }

    /// New counts of a mailbox; unsolicited NOTIFYs to `targets` (its registered contacts) when
    /// the user wants them.
    pub fn mwi(
        &mut self,
        now: Instant,
        cfg: &Config,
        mailbox: &str,
        counts: Counts,
        targets: &[(String, Flow)],
    ) {
        let changed = self.notifier.mwi(mailbox) != Some(counts);
        self.notifier.set_mwi(now, mailbox, counts);
        let unsolicited = cfg
            .mailbox(mailbox)
            .and_then(|u| u.voicemail.as_ref())
            .is_some_and(|v| v.unsolicited_mwi);
        if changed && unsolicited {
            self.notifier.unsolicited_mwi(mailbox, targets);
        }
    }

    /// The dialogs of `users` changed: their watchers, and the watchers of groups they are in,
    /// are told (`dialogs_of` gives a user's dialogs).
    pub fn dialogs_changed(
        &mut self,
        now: Instant,
        cfg: &Config,
        users: &[String],
        dialogs_of: impl Fn(&str) -> Vec<podpbx_presence::dialog_info::Dialog>,
    ) {
        let mut entities: Vec<String> = users.to_vec();
        for g in &cfg.groups {
            if g.members.iter().any(|m| users.contains(m)) {
                entities.push(g.name.clone());
            }
        }
        for e in entities {
            if !self.notifier.watched(Package::Dialog, &e) {
                continue;
            }
            let list = dialogs_for(cfg, &e, &dialogs_of);
            self.notifier.set_dialogs(now, &e, list);
        }
    }
}

/// The dialogs of a user, or of every member of a group.
pub fn dialogs_for(
    cfg: &Config,
    entity: &str,
    dialogs_of: impl Fn(&str) -> Vec<podpbx_presence::dialog_info::Dialog>,
) -> Vec<podpbx_presence::dialog_info::Dialog> {
    match cfg.group(entity) {
        Some(g) => g.members.iter().flat_map(|m| dialogs_of(m)).collect(),
        None => dialogs_of(entity),
    }
}
