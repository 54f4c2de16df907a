//! Glue between the sans-IO B2BUA (`podpbx-b2bua`) and the core: the registrar behind
//! [`Directory`], the users from the config, and turning b2bua outputs into transaction-layer
//! calls and CDR outputs. The relay behind `MediaPort` is `media.rs`.

use crate::core::Output as CoreOutput;
use crate::owners::{Owner, Owners};
use podpbx_b2bua::{B2bua, ContactTarget, Directory, MediaPort, Output, ReqId, Settings};
use podpbx_config::Config;
use podpbx_registrar::Registrar;
use podpbx_sip::transaction::{ServerTxId, Timers, TransactionLayer, TxId};
use podpbx_sip::{IdGen, Transport};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

/// The registrar (and our bound addresses) as the b2bua's [`Directory`].
pub struct RegDirectory<'a> {
    pub registrar: &'a Registrar,
    pub addrs: &'a Addrs,
    /// The trunks: located servers and registration state.
    pub trunks: &'a crate::trunks::Trunks,
}

/// Our bound SIP addresses.
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

impl Directory for RegDirectory<'_> {
    fn contacts(&self, user: &str, now: Instant) -> Vec<ContactTarget> {
        self.registrar
            .lookup(user, now)
            .into_iter()
            .map(|b| ContactTarget {
                uri: b.contact_uri.clone(),
                flow: b.flow,
            })
            .collect()
    }
    fn local_addr(&self, transport: Transport, peer: IpAddr) -> Option<SocketAddr> {
        let list = match transport {
            Transport::Udp => &self.addrs.udp,
            Transport::Tcp => &self.addrs.tcp,
            Transport::Tls => &self.addrs.tls,
        };
        list.iter().find(|a| a.is_ipv4() == peer.is_ipv4()).copied()
    }
    fn trunk_destination(&self, name: &str) -> Option<SocketAddr> {
        self.trunks.destination(name)
    }
    fn trunk_available(&self, name: &str) -> bool {
        // Trunks that register must be registered; others need a (located) address.
        self.trunks.available(name)
    }
}

/// Call control as owned by the core: the b2bua, our addresses, where CDRs go.
pub struct Calls {
    pub b2bua: B2bua,
    pub addrs: Addrs,
    /// `[calls] cdr_file`: CDRs become [`Output::Cdr`] for the shell's writer.
    cdr_file: Option<PathBuf>,
    /// Requests the transaction layer refused (reported back as failures on the next pump).
    failed: Vec<ReqId>,
    /// Calls ended since the last call (for metrics): dispositions.
    pub ended: Vec<podpbx_b2bua::Disposition>,
    /// INVITE server transactions from sources identified only by their address (a trunk's
    /// networks, identify-by-source users), until their first response beyond `100`.
    unverified: std::collections::HashSet<ServerTxId>,
    /// Their `100 Trying`, held back until the end of the pump (see [`Calls::pump`]).
    held_trying: Vec<(ServerTxId, bytes::Bytes)>,
    /// Rejections sent statelessly since the core last took the count.
    pub stateless_sent: u64,
    /// Rate limit of the "request not sent" warning (a full transaction table repeats it).
    not_sent_log: crate::logging::RateLimit,
}

/// Bound on [`Calls::unverified`] before finished transactions are swept out of it.
const MAX_UNVERIFIED: usize = 4096;

impl Calls {
    /// Call control for `cfg` with media through `media` (the relay: `crate::media::port`, or a
    /// fake in tests).
    pub fn new(
        cfg: Arc<Config>,
        timers: Timers,
        media: Box<dyn MediaPort + Send>,
        addrs: Addrs,
        ids: IdGen,
    ) -> Calls {
        let settings = Settings {
            user_agent: cfg.sip.user_agent.clone(),
            domain: cfg.sip.domain.clone(),
            timers,
        };
        let cdr_file = cfg.calls.cdr_file.clone();
        Calls {
            b2bua: B2bua::new(cfg, settings, media, ids),
            addrs,
            cdr_file,
            failed: Vec::new(),
            ended: Vec::new(),
            unverified: Default::default(),
            held_trying: Vec::new(),
            stateless_sent: 0,
            not_sent_log: crate::logging::network_warning(),
        }
    }

    /// The INVITE of server transaction `id` comes from a source no credential proves.
    pub fn unauthenticated(&mut self, id: ServerTxId) {
        self.unverified.insert(id);
    }

    /// New configuration for the next calls.
    pub fn reload(&mut self, cfg: Arc<Config>) {
        self.cdr_file = cfg.calls.cdr_file.clone();
        self.b2bua.set_config(cfg);
    }

    /// Turns every pending b2bua output into transaction-layer calls (recording each request in
    /// the core's owner table) and CDRs into shell outputs; returns requests that could not be
    /// sent (the caller reports them with `request_failed`).
    ///
    /// An INVITE from an unverified source (a forgeable UDP address) that is rejected before
    /// anything rang gets its rejection once, statelessly, and no `100 Trying` before it: a
    /// forged INVITE then makes podpbx send one datagram to the claimed source, not a `100` and
    /// eleven copies of a `404` (RFC 3261 Timer G).
    pub fn pump(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        owners: &mut Owners,
        direct: &mut VecDeque<CoreOutput>,
    ) -> Vec<ReqId> {
        while let Some(out) = self.b2bua.poll_output() {
            match out {
                Output::Respond {
                    tx: id,
                    status,
                    data,
                } => {
                    if self.unverified.contains(&id) {
                        if status.code() == 100 {
                            self.held_trying.push((id, data));
                            continue;
                        }
                        self.unverified.remove(&id);
                        let held = self
                            .held_trying
                            .iter()
                            .position(|(h, _)| *h == id)
                            .map(|i| self.held_trying.swap_remove(i).1);
                        if status.code() >= 300 {
                            if let Some(peer) = tx.server_peer(id) {
                                tx.terminate(TxId::Server(id));
                                tx.send_stateless(peer, data);
                                self.stateless_sent += 1;
                            }
                            continue;
                        }
                        if let Some(trying) = held {
                            let _ = tx.send_response(now, id, 100, trying);
                        }
                    }
                    if let Err(e) = tx.send_response(now, id, status.code(), data) {
                        debug!(error = %e, status = status.code(), "b2bua response not sent");
                    }
                }
                Output::Request {
                    id,
                    method,
                    branch,
                    data,
                    peer,
                } => match tx.send_request(now, branch.into(), method, data, peer) {
                    Ok(c) => owners.insert(c, Owner::Call(id)),
                    Err(e) => {
                        if let Some(suppressed) = self.not_sent_log.check(now) {
                            warn!(error = %e, suppressed, "b2bua request not sent");
                        }
                        self.failed.push(id);
                    }
                },
                Output::Stateless { peer, data } => tx.send_stateless(peer, data),
                Output::Abandon { id } => {
                    if let Some(c) = owners.remove_call(id) {
                        tx.terminate(TxId::Client(c));
                    }
                }
                Output::Cdr(cdr) => {
                    info!(call = cdr.id, disposition = cdr.disposition.as_str(), caller = %cdr.caller, callee = %cdr.callee, "CDR");
                    self.ended.push(cdr.disposition);
                    if let Some(ev) = missed_call(self.b2bua.config(), &cdr) {
                        direct.push_back(CoreOutput::Event(ev));
                    }
                    if let Some(file) = &self.cdr_file {
                        direct.push_back(CoreOutput::Cdr {
                            file: file.clone(),
                            cdr,
                        });
                    }
                }
            }
        }
        // A held `100 Trying` whose INVITE was not rejected at once goes out now.
        for (id, trying) in self.held_trying.drain(..) {
            let _ = tx.send_response(now, id, 100, trying);
        }
        if self.unverified.len() > MAX_UNVERIFIED {
            self.unverified.retain(|id| tx.server_state(*id).is_some());
        }
        std::mem::take(&mut self.failed)
    }
}

/// A call from outside (a trunk) or from a doorbell that ended unanswered: the `missed_call`
/// webhook event.
fn missed_call(cfg: &Config, cdr: &podpbx_b2bua::Cdr) -> Option<podpbx_events::Data> {
    use podpbx_b2bua::Disposition as D;
    let reason = match cdr.disposition {
        D::NoAnswer => "no_answer",
        D::Busy => "busy",
        D::Cancelled => "cancelled",
        _ => return None,
    };
    let doorbell = cfg.user(&cdr.caller).filter(|u| u.doorbell);
    if cdr.trunk.is_none() && doorbell.is_none() {
        return None;
    }
    Some(podpbx_events::Data::MissedCall {
        from: cdr.caller.clone(),
        from_name: doorbell.and_then(|u| u.display_name.clone()),
        to: cdr.callee.clone(),
        trunk: cdr.trunk.clone(),
        reason,
        ringing_secs: cdr.duration_secs,
    })
}

/// The registrar's users from a config (users without a password, i.e. identify-by-source
/// devices, cannot register).
pub fn user_db(cfg: &Config) -> podpbx_registrar::UserDb {
    let mut users = podpbx_registrar::UserDb::new();
    for u in &cfg.users {
        let Some(pw) = &u.password else { continue };
        let mut user = podpbx_registrar::User::new(u.name.clone(), pw.expose().to_string());
        user.allowed_sources = u.allow_from.clone();
        user.max_contacts = u.max_contacts.max(1) as usize;
        user.required_transport = u.transport;
        user.allow_rfc2069 = u.allow_rfc2069;
        users.insert(user);
    }
    users
}
