//! Glue between the sans-IO trunk state machines (`podpbx-trunk`: [`Registration`] and the RFC 3263
//! [`Locator`]) and the core: which client transaction and which DNS query belongs to which
//! trunk, located servers handed to the registrations and to outbound calls, reload, and the
//! trunks' status for ctl, `/readyz` and `/metrics`.
//!
//! DNS: every trunk whose host is a name has a [`Locator`]; its queries leave the core as
//! [`Output::Resolve`] (the shell performs them on its resolver, never on the signalling loop)
//! and come back through [`Trunks::on_dns`]. A trunk without an address yet waits; nothing else
//! waits for it.
//!
//! Reload ([`Trunks::reload`]): a trunk whose settings are unchanged keeps its registration and
//! its located servers; a changed or removed one un-registers (its old registration is kept,
//! alone, until the provider answered or Timer F) and a changed or added one registers afresh.

use crate::core::Output;
use crate::owners::{Owner, Owners};
use podpbx_config::{Config, Family, Host, Trunk as TrunkConfig};
use podpbx_sip::transaction::{Peer, TransactionLayer};
use podpbx_sip::{IdGen, Message};
use podpbx_trunk::{
    DnsQuery, Locator, LocatorConfig, LookupError, Record, Registration, RegistrationConfig,
    TrunkState,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
use tracing::{debug, info, warn};

/// Our pinned SIP addresses per transport and family (the Via/Contact of REGISTERs and where
/// they leave from).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locals(Vec<(podpbx_sip::Transport, SocketAddr)>);

impl Locals {
    /// Adds a bound address.
    pub fn add(&mut self, transport: podpbx_sip::Transport, addr: SocketAddr) {
        self.0.push((transport, addr));
    }

    fn get(&self, transport: podpbx_sip::Transport, v4: bool) -> Option<SocketAddr> {
        self.0
            .iter()
            .find(|(t, a)| *t == transport && a.is_ipv4() == v4)
            .map(|(_, a)| *a)
    }
}

/// One configured trunk.
struct Slot {
    /// Unique over the process lifetime: a reload never mixes up old and new transactions.
    id: u64,
    cfg: TrunkConfig,
    /// The host is a name.
    locator: Option<Locator>,
    /// `register = true`.
    reg: Option<Registration>,
    /// Last state name, to log transitions once.
    last_state: &'static str,
}

impl Slot {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The servers to try, best first.
    fn targets(&self) -> Vec<SocketAddr> {
        match (self.cfg.host.ip(), &self.locator) {
            (Some(ip), _) => vec![SocketAddr::new(ip, self.cfg.port)],
            (None, Some(l)) => l.targets().to_vec(),
            (None, None) => Vec::new(),
        }
    }

    /// Where calls go: the server the registration uses (it answered), else the first one.
    fn destination(&self) -> Option<SocketAddr> {
        self.reg
            .as_ref()
            .and_then(|r| r.status().target)
            .or_else(|| self.targets().first().copied())
    }

    fn state(&self) -> &'static str {
        match &self.reg {
            Some(r) => r.status().state,
            None if self.destination().is_some() => "ready",
            None => "resolving",
        }
    }
}

/// Every configured trunk: located servers, registration, status.
pub struct Trunks {
    slots: Vec<Slot>,
    /// Registrations of removed or changed trunks finishing their un-REGISTER: (slot id, reg).
    retiring: Vec<(u64, Registration)>,
    /// DNS queries in flight: our id -> (slot id, the locator's id).
    dns: HashMap<u64, (u64, u64)>,
    next_dns: u64,
    next_slot: u64,
    locals: Locals,
    running: bool,
    stopping: bool,
    /// A trunk changed state since [`Trunks::take_changed`]: readiness and status are published
    /// at once, not on the next status tick.
    changed: bool,
    /// Seeds of the locators' and registrations' own generators (no random source is read here).
    ids: IdGen,
}

impl Trunks {
    /// Builds every configured trunk; registrations start with [`Trunks::start`].
    pub fn from_config(cfg: &Config, locals: Locals, ids: IdGen) -> Result<Trunks, String> {
        let mut t = Trunks {
            slots: Vec::new(),
            retiring: Vec::new(),
            dns: HashMap::new(),
            next_dns: 0,
            next_slot: 0,
            locals,
            running: false,
            stopping: false,
            changed: false,
            ids,
        };
        for tc in &cfg.trunks {
            let slot = t.slot(tc, &cfg.sip.user_agent)?;
            t.slots.push(slot);
        }
        Ok(t)
    }

    fn slot(&mut self, t: &TrunkConfig, user_agent: &str) -> Result<Slot, String> {
        self.next_slot += 1;
        let v4 = t.family == Family::V4;
        let locator = match &t.host {
            Host::Name(name) => Some(Locator::new(LocatorConfig::new(
                String::from_utf8_lossy(name).into_owned(),
                (!t.srv).then_some(t.port),
                t.transport,
                v4,
                self.ids.bytes16(),
            ))),
            Host::V4(_) | Host::V6(_) => None,
        };
        let reg = match (t.username.as_deref(), t.register) {
            (Some(user), true) => {
                let local = self.locals.get(t.transport, v4).ok_or_else(|| {
                    format!(
                        "trunk {}: no pinned {} address configured in [sip]",
                        t.name,
                        if v4 { "IPv4" } else { "IPv6" }
                    )
                })?;
                let password = t
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default();
                let mut rc = RegistrationConfig::new(
                    t.name.clone(),
                    t.host.to_string(),
                    user,
                    password,
                    local,
                    self.ids.bytes16(),
                );
                rc.port = t.port;
                rc.transport = t.transport;
                rc.auth_username = t.auth_username.clone();
                rc.realm = t.realm.clone();
                rc.expiry = t.expiry;
                rc.keepalive = t.keepalive;
                rc.user_agent = user_agent.to_owned();
                Some(Registration::new(rc).map_err(|e| format!("trunk {}: {e}", t.name))?)
            }
            _ => None,
        };
        let mut slot = Slot {
            id: self.next_slot,
            cfg: t.clone(),
            locator,
            reg,
            last_state: "",
        };
        slot.last_state = slot.state();
        Ok(slot)
    }

    /// Starts locating and registering every trunk.
    pub fn start(&mut self, now: Instant) {
        self.running = true;
        for s in &mut self.slots {
            start_slot(s, now);
        }
        self.sync_targets();
    }

    /// Un-registers every trunk (graceful stop); DNS stops.
    pub fn stop(&mut self, now: Instant) {
        self.stopping = true;
        for s in &mut self.slots {
            if let Some(l) = s.locator.as_mut() {
                l.stop();
            }
            if let Some(r) = s.reg.as_mut() {
                r.stop(now);
            }
        }
        self.dns.clear();
    }

    /// True when every trunk finished un-registering (or never registered).
    pub fn all_stopped(&self) -> bool {
        self.retiring.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.reg.as_ref().is_none_or(Registration::is_stopped))
    }

    /// A new configuration: unchanged trunks go on undisturbed, changed ones re-register, removed
    /// ones un-register, added ones start. Returns what changed, for the log.
    pub fn reload(&mut self, now: Instant, cfg: &Config) -> Result<Vec<String>, String> {
        let mut old: Vec<Slot> = std::mem::take(&mut self.slots);
        let mut slots = Vec::with_capacity(cfg.trunks.len());
        let mut changes = Vec::new();
        for tc in &cfg.trunks {
            match old.iter().position(|s| s.cfg.name == tc.name) {
                Some(i) if old[i].cfg == *tc => slots.push(old.remove(i)),
                found => {
                    let mut slot = match self.slot(tc, &cfg.sip.user_agent) {
                        Ok(s) => s,
                        Err(e) => {
                            // Keep the running set intact when the new one cannot be built.
                            old.extend(slots);
                            self.slots = old;
                            return Err(e);
                        }
                    };
                    if let Some(i) = found {
                        let mut prev = old.remove(i);
                        // The host is located the same way: keep what is known (and in flight).
                        let same_host = prev.cfg.host == tc.host
                            && prev.cfg.family == tc.family
                            && prev.cfg.port == tc.port
                            && prev.cfg.srv == tc.srv
                            && prev.cfg.transport == tc.transport;
                        if same_host {
                            if let Some(l) = prev.locator.take() {
                                slot.locator = Some(l);
                                for (sid, _) in self.dns.values_mut() {
                                    if *sid == prev.id {
                                        *sid = slot.id;
                                    }
                                }
                            }
                        }
                        self.retire(now, prev);
                        changes.push(format!("trunk {} changed: re-registering", tc.name));
                    } else {
                        changes.push(format!("trunk {} added", tc.name));
                    }
                    if self.running && !self.stopping {
                        start_slot(&mut slot, now);
                    }
                    slots.push(slot);
                }
            }
        }
        for prev in old {
            changes.push(format!("trunk {} removed", prev.cfg.name));
            self.retire(now, prev);
        }
        self.slots = slots;
        self.sync_targets();
        for c in &changes {
            info!("{c}");
        }
        Ok(changes)
    }

    /// Un-registers the old registration of a removed or changed trunk and keeps it until done.
    fn retire(&mut self, now: Instant, mut slot: Slot) {
        self.dns.retain(|_, (sid, _)| *sid != slot.id);
        if let Some(mut r) = slot.reg.take() {
            r.stop(now);
            self.retiring.push((slot.id, r));
        }
    }

    /// The earliest trunk or DNS timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    s.reg.as_ref().and_then(Registration::poll_timeout),
                    s.locator.as_ref().and_then(Locator::poll_timeout),
                ]
            })
            .chain(self.retiring.iter().map(|(_, r)| r.poll_timeout()))
            .flatten()
            .min()
    }

    /// Advances trunk and DNS timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.slots {
            if let Some(l) = s.locator.as_mut() {
                if l.poll_timeout().is_some_and(|t| t <= now) {
                    l.handle_timeout(now);
                }
            }
            if let Some(r) = s.reg.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
        }
        for (_, r) in &mut self.retiring {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
        self.sync_targets();
    }

    /// An answer to DNS query `id` (see [`Output::Resolve`]).
    pub fn on_dns(&mut self, now: Instant, id: u64, answer: Result<Vec<Record>, LookupError>) {
        let Some((slot_id, local)) = self.dns.remove(&id) else {
            return;
        };
        if let Some(l) = self
            .slots
            .iter_mut()
            .find(|s| s.id == slot_id)
            .and_then(|s| s.locator.as_mut())
        {
            l.handle_answer(now, local, answer);
        }
        self.sync_targets();
    }

    /// Hands located servers to the registrations (a no-op when unchanged).
    fn sync_targets(&mut self) {
        for s in &mut self.slots {
            if let (Some(l), Some(r)) = (s.locator.as_ref(), s.reg.as_mut()) {
                if !l.targets().is_empty() {
                    r.set_targets(l.targets());
                }
            }
        }
    }

    fn reg_mut(&mut self, slot_id: u64) -> Option<&mut Registration> {
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == slot_id) {
            return s.reg.as_mut();
        }
        self.retiring
            .iter_mut()
            .find(|(id, _)| *id == slot_id)
            .map(|(_, r)| r)
    }

    /// A response to a request of trunk slot `slot` (the core's owner table knows whose it is).
    pub fn on_response(&mut self, now: Instant, slot: u64, msg: &Message) {
        if let Some(r) = self.reg_mut(slot) {
            r.handle_response(now, msg);
        }
    }

    /// Timer F or a transport failure of the request `branch` of trunk slot `slot`.
    pub fn on_failure(&mut self, now: Instant, slot: u64, branch: &[u8]) {
        if let Some(r) = self.reg_mut(slot) {
            r.transaction_timeout(now, branch);
        }
    }

    /// Hands every queued REGISTER/OPTIONS to the transaction layer (recording each in the
    /// core's owner table; CRLF pings and DNS queries go straight to `direct`), drops finished
    /// retired registrations, and logs state changes.
    pub fn flush(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        owners: &mut Owners,
        direct: &mut VecDeque<Output>,
    ) {
        for s in &mut self.slots {
            if let Some(l) = s.locator.as_mut() {
                while let Some(DnsQuery { id, name, rtype }) = l.poll_query() {
                    self.next_dns += 1;
                    self.dns.insert(self.next_dns, (s.id, id));
                    direct.push_back(Output::Resolve {
                        id: self.next_dns,
                        name,
                        rtype,
                    });
                }
            }
        }
        let regs = self
            .slots
            .iter_mut()
            .filter_map(|s| s.reg.as_mut().map(|r| (s.id, r)))
            .chain(self.retiring.iter_mut().map(|(id, r)| (*id, r)));
        for (slot_id, r) in regs {
            while let Some(out) = r.poll_transmit() {
                let transport = out.transport;
                let dest = out.dest;
                let Some(method) = out.kind.method() else {
                    // CRLF keep-alive: written on the connection, outside any transaction.
                    direct.push_back(Output::Send {
                        peer: Peer {
                            addr: dest,
                            transport,
                            conn: 0,
                        },
                        data: out.data,
                    });
                    continue;
                };
                let peer = Peer {
                    addr: dest,
                    transport,
                    conn: 0,
                };
                match tx.send_request(now, out.branch.clone(), method, out.data, peer) {
                    Ok(id) => owners.insert(
                        id,
                        Owner::Trunk {
                            slot: slot_id,
                            branch: out.branch,
                        },
                    ),
                    Err(e) => {
                        debug!(error = %e, "trunk request not sent");
                        r.transaction_timeout(now, &out.branch);
                    }
                }
            }
        }
        self.retiring.retain(|(_, r)| !r.is_stopped());
        for s in &mut self.slots {
            let state = s.state();
            if s.last_state == state {
                continue;
            }
            s.last_state = state;
            self.changed = true;
            match s.reg.as_ref().map(|r| (r.state(), r.status())) {
                Some((TrunkState::Registered { .. }, st)) => {
                    info!(trunk = %st.name, server = ?st.target, "trunk registered")
                }
                Some((TrunkState::CredentialsRejected { .. } | TrunkState::Failing { .. }, st)) => {
                    warn!(trunk = %st.name, state, error = st.last_error.as_deref().unwrap_or(""), "trunk not registered")
                }
                _ => debug!(trunk = %s.cfg.name, state, "trunk state"),
            }
        }
    }

    /// Whether a trunk changed state since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every server of every TLS trunk with the host name its certificate must carry.
    pub fn tls_servers(&self) -> Vec<(SocketAddr, String)> {
        self.slots
            .iter()
            .filter(|s| s.cfg.transport == podpbx_sip::Transport::Tls)
            .flat_map(|s| {
                let host = s.cfg.host.to_string();
                s.targets().into_iter().map(move |a| (a, host.clone()))
            })
            .collect()
    }

    /// Where calls to trunk `name` go (the located server in use), if it has an address.
    pub fn destination(&self, name: &str) -> Option<SocketAddr> {
        self.slots
            .iter()
            .find(|s| s.name() == name)
            .and_then(Slot::destination)
    }

    /// Whether calls may go out through trunk `name`: a registering trunk must be registered;
    /// others need an address.
    pub fn available(&self, name: &str) -> bool {
        self.slots
            .iter()
            .find(|s| s.name() == name)
            .is_some_and(|s| match &s.reg {
                Some(r) => matches!(r.state(), TrunkState::Registered { .. }),
                None => s.destination().is_some(),
            })
    }

    /// Readiness per trunk: `(name, None)` when it is usable, else the reason it is not (host not
    /// resolved, not registered). Trunks with an IP literal and no registration are always ready.
    pub fn readiness(&self) -> Vec<(String, Option<String>)> {
        self.slots
            .iter()
            .map(|s| {
                let name = s.cfg.name.clone();
                let dns = s.locator.as_ref().map(Locator::status);
                let unresolved = dns.as_ref().filter(|d| d.targets.is_empty());
                let why = match (unresolved, &s.reg) {
                    (Some(d), _) => Some(format!(
                        "trunk {name}: host {} not resolved{}",
                        s.cfg.host,
                        d.last_error
                            .as_deref()
                            .map(|e| format!(" ({e}); retrying"))
                            .unwrap_or_default()
                    )),
                    (None, Some(r)) if !matches!(r.state(), TrunkState::Registered { .. }) => {
                        Some(format!("trunk {name} is not registered"))
                    }
                    _ => None,
                };
                (name, why)
            })
            .collect()
    }

    /// Health numbers per trunk for `/metrics`.
    pub fn health(&self) -> Vec<TrunkHealth> {
        self.slots
            .iter()
            .map(|s| {
                let st = s.reg.as_ref().map(Registration::status);
                TrunkHealth {
                    name: s.cfg.name.clone(),
                    registered: s
                        .reg
                        .as_ref()
                        .map(|r| matches!(r.state(), TrunkState::Registered { .. })),
                    targets: s.targets().len(),
                    register_failures: st.as_ref().map_or(0, |st| st.consecutive_failures),
                    registers_sent: st.as_ref().map_or(0, |st| st.registers_sent),
                    keepalive_failures: st.as_ref().map_or(0, |st| st.keepalive_failures),
                    dns_failures: s.locator.as_ref().map_or(0, |l| l.status().failures),
                }
            })
            .collect()
    }

    /// Status of every trunk for `podpbx ctl trunks`.
    pub fn status_json(&self, now: Instant, wall: SystemTime) -> serde_json::Value {
        let at = |t: Option<Instant>| {
            t.map(|t| {
                let secs = if t >= now {
                    wall + (t - now)
                } else {
                    wall - (now - t)
                };
                secs.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            })
        };
        serde_json::Value::Array(
            self.slots
                .iter()
                .map(|s| {
                    let reg = s.reg.as_ref().map(Registration::status);
                    let dns = s.locator.as_ref().map(Locator::status);
                    let dns_error = dns
                        .as_ref()
                        .and_then(|d| d.last_error.as_ref())
                        .map(|e| format!("DNS: {e}"));
                    let last_error = reg
                        .as_ref()
                        .and_then(|r| r.last_error.clone())
                        .or(dns_error);
                    let dns_unresolved = dns.as_ref().filter(|d| d.targets.is_empty());
                    // Waiting for an address says why: still resolving, or failing.
                    let state = match (dns_unresolved, s.state()) {
                        (Some(d), "resolving" | "ready") => d.state,
                        (_, st) => st,
                    };
                    let next_attempt = reg
                        .as_ref()
                        .and_then(|r| r.next_attempt)
                        .or(dns_unresolved.and_then(|d| d.next_attempt));
                    serde_json::json!({
                        "name": s.cfg.name,
                        "host": s.cfg.host.to_string(),
                        "state": state,
                        "server": s.destination().map(|a| a.to_string()),
                        "last_error": last_error,
                        "next_attempt_at": at(next_attempt),
                        "granted_expiry_secs": reg.as_ref().and_then(|r| r.granted_expiry).map(|d| d.as_secs()),
                        "dns": dns.as_ref().map(|d| serde_json::json!({
                            "state": d.state,
                            "targets": d.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "expires_at": at(d.expires_at),
                            "last_error": d.last_error,
                            "next_attempt_at": at(d.next_attempt),
                            "failures": d.failures,
                        })),
                    })
                })
                .collect(),
        )
    }
}

/// Numbers for `/metrics`, per trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkHealth {
    pub name: String,
    /// `None`: the trunk does not register.
    pub registered: Option<bool>,
    /// Servers known (located, or the IP literal).
    pub targets: usize,
    pub register_failures: u32,
    pub registers_sent: u64,
    pub keepalive_failures: u32,
    pub dns_failures: u32,
}

fn start_slot(s: &mut Slot, now: Instant) {
    if let Some(l) = s.locator.as_mut() {
        l.start(now);
    }
    if let Some(r) = s.reg.as_mut() {
        r.start(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podpbx_sip::transaction::{Limits, Timers};
    use podpbx_sip::{Framing, Method, ResponseBuilder};
    use podpbx_trunk::{RData, RecordType};

    const HEAD: &str = "[sip]\nipv6 = \"2001:db8::1\"\n";

    fn cfg(trunks: &str) -> Config {
        podpbx_config::check_str(&format!("{HEAD}{trunks}"), "t.toml").expect("config")
    }

    fn locals() -> Locals {
        let mut l = Locals::default();
        l.add(
            podpbx_sip::Transport::Udp,
            "[2001:db8::1]:5060".parse().expect("addr"),
        );
        l
    }

    /// The trunks, a transaction layer and the outputs, driven in virtual time.
    struct Rig {
        trunks: Trunks,
        tx: TransactionLayer,
        direct: VecDeque<Output>,
        owners: Owners,
        now: Instant,
    }

    impl Rig {
        fn new(c: &Config) -> Rig {
            let mut r = Rig {
                trunks: Trunks::from_config(c, locals(), IdGen::new([5; 16])).expect("trunks"),
                tx: TransactionLayer::new(Timers::default(), Limits::default()),
                direct: VecDeque::new(),
                owners: Owners::default(),
                now: Instant::now(),
            };
            r.trunks.start(r.now);
            r.flush();
            r
        }

        fn flush(&mut self) {
            self.trunks
                .flush(self.now, &mut self.tx, &mut self.owners, &mut self.direct);
        }

        /// DNS queries asked for: (id, name, type).
        fn queries(&mut self) -> Vec<(u64, String, RecordType)> {
            let mut out = Vec::new();
            self.direct.retain(|o| match o {
                Output::Resolve { id, name, rtype } => {
                    out.push((*id, name.clone(), *rtype));
                    false
                }
                _ => true,
            });
            out
        }

        fn answer(&mut self, id: u64, a: Result<Vec<Record>, LookupError>) {
            self.trunks.on_dns(self.now, id, a);
            self.flush();
        }

        /// Requests sent: (destination, message).
        fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
            std::iter::from_fn(|| self.tx.poll_transmit())
                .map(|t| {
                    let m = Message::parse(t.data, Framing::Datagram).expect("parse");
                    (t.peer.addr, m)
                })
                .collect()
        }

        /// Answers `req` with `code` as the provider would.
        fn respond(&mut self, req: &Message, code: u16) {
            let mut b = ResponseBuilder::new(req, code, "X", None).to_tag("p");
            if code == 200 {
                b = b.header("Expires", "300");
            }
            let resp = Message::parse(b.build(), Framing::Datagram).expect("parse");
            match self.tx.on_response(self.now, &resp) {
                podpbx_sip::transaction::ResponseDisposition::Deliver(id) => {
                    let Some(Owner::Trunk { slot, .. }) = self.owners.get(id).cloned() else {
                        panic!("not a trunk transaction");
                    };
                    if resp.status().unwrap_or(0) >= 200 {
                        self.owners.remove(id);
                    }
                    self.trunks.on_response(self.now, slot, &resp);
                }
                other => panic!("response not delivered: {other:?}"),
            }
            self.flush();
        }
    }

    fn aaaa(ip: &str) -> Record {
        Record {
            ttl: 60,
            data: RData::Aaaa(ip.parse().expect("ip")),
        }
    }

    const NAMED: &str = "[[trunks]]\nname = \"p\"\nhost = \"sip.provider.test\"\nport = 5080\nusername = \"u\"\npassword = \"pw\"\n";

    #[test]
    fn a_named_trunk_registers_once_its_host_is_located() {
        let mut r = Rig::new(&cfg(NAMED));
        assert!(r.sent().is_empty(), "no REGISTER without an address");
        assert_eq!(r.trunks.destination("p"), None);
        assert!(!r.trunks.available("p"));
        let why = r.trunks.readiness();
        assert_eq!(why.len(), 1);
        assert!(why[0]
            .1
            .as_deref()
            .unwrap()
            .contains("host sip.provider.test not resolved"));
        // An explicit port: only AAAA (the trunk's family), no NAPTR/SRV.
        let q = r.queries();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].1.as_str(), q[0].2),
            ("sip.provider.test", RecordType::Aaaa)
        );
        r.answer(q[0].0, Err(LookupError::NotFound));
        assert_eq!(
            r.trunks.status_json(r.now, SystemTime::UNIX_EPOCH)[0]["state"],
            "unresolved"
        );
        assert!(r.sent().is_empty());
        // The retry finds it.
        let t = r.trunks.poll_timeout().expect("retry");
        r.now = t;
        r.trunks.handle_timeout(t);
        r.flush();
        let q = r.queries();
        assert_eq!(q.len(), 1);
        r.answer(q[0].0, Ok(vec![aaaa("2001:db8:5::9")]));
        let sent = r.sent();
        assert_eq!(sent.len(), 1);
        let server: SocketAddr = "[2001:db8:5::9]:5080".parse().expect("addr");
        assert_eq!(sent[0].0, server);
        assert_eq!(sent[0].1.method(), Some(&Method::Register));
        r.respond(&sent[0].1, 200);
        assert!(r.trunks.available("p"));
        assert_eq!(r.trunks.destination("p"), Some(server));
        assert_eq!(r.trunks.readiness()[0].1, None);
        let h = &r.trunks.health()[0];
        assert_eq!(
            (h.registered, h.targets, h.dns_failures),
            (Some(true), 1, 0)
        );
    }

    #[test]
    fn reload_re_registers_only_changed_trunks() {
        let two = "[[trunks]]\nname = \"a\"\nhost = \"2001:db8:5::1\"\nusername = \"ua\"\npassword = \"pa\"\n[[trunks]]\nname = \"b\"\nhost = \"2001:db8:5::2\"\nusername = \"ub\"\npassword = \"pb\"\n";
        let mut r = Rig::new(&cfg(two));
        for (_, m) in r.sent() {
            r.respond(&m, 200);
        }
        assert!(r.trunks.available("a") && r.trunks.available("b"));
        // Same settings: nothing is sent, both stay registered.
        let changes = r.trunks.reload(r.now, &cfg(two)).expect("reload");
        r.flush();
        assert!(changes.is_empty(), "{changes:?}");
        assert!(r.sent().is_empty());
        assert!(r.trunks.available("a") && r.trunks.available("b"));
        // b's password changed, a was removed, c was added.
        let next = "[[trunks]]\nname = \"b\"\nhost = \"2001:db8:5::2\"\nusername = \"ub\"\npassword = \"new\"\n[[trunks]]\nname = \"c\"\nhost = \"2001:db8:5::3\"\nregister = false\n";
        let changes = r.trunks.reload(r.now, &cfg(next)).expect("reload");
        r.flush();
        assert_eq!(
            changes,
            [
                "trunk b changed: re-registering",
                "trunk c added",
                "trunk a removed"
            ]
        );
        let sent = r.sent();
        let summary: Vec<(String, Option<u32>)> = sent
            .iter()
            .map(|(d, m)| (d.to_string(), m.expires().ok().flatten()))
            .collect();
        // The old registrations of a and b un-register; b registers afresh.
        assert_eq!(sent.len(), 3, "{summary:?}");
        assert!(
            summary.contains(&("[2001:db8:5::1]:5060".into(), Some(0))),
            "{summary:?}"
        );
        assert!(
            summary.contains(&("[2001:db8:5::2]:5060".into(), Some(0))),
            "{summary:?}"
        );
        assert!(
            summary.contains(&("[2001:db8:5::2]:5060".into(), Some(600))),
            "{summary:?}"
        );
        assert!(!r.trunks.all_stopped(), "un-REGISTERs in flight");
        for (_, m) in &sent {
            r.respond(m, 200);
        }
        assert!(r.trunks.available("b") && r.trunks.available("c"));
        assert!(!r.trunks.available("a"));
        let names: Vec<String> = r.trunks.readiness().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "c"]);
        // The retired registrations are gone once answered.
        r.trunks.stop(r.now);
        r.flush();
        for (_, m) in r.sent() {
            r.respond(&m, 200);
        }
        assert!(r.trunks.all_stopped());
    }

    #[test]
    fn reload_keeps_the_located_servers_of_a_changed_trunk_with_the_same_host() {
        let mut r = Rig::new(&cfg(NAMED));
        let q = r.queries();
        r.answer(q[0].0, Ok(vec![aaaa("2001:db8:5::9")]));
        let sent = r.sent();
        r.respond(&sent[0].1, 200);
        let changed = NAMED.replace("password = \"pw\"", "password = \"pw2\"");
        r.trunks.reload(r.now, &cfg(&changed)).expect("reload");
        r.flush();
        assert!(
            r.queries().is_empty(),
            "no new lookup: the host did not change"
        );
        let sent = r.sent();
        let dests: Vec<SocketAddr> = sent.iter().map(|(d, _)| *d).collect();
        let server: SocketAddr = "[2001:db8:5::9]:5080".parse().expect("addr");
        assert_eq!(dests, [server, server], "un-REGISTER and the new REGISTER");
    }
}
