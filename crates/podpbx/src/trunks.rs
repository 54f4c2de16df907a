//! Glue between the sans-IO trunk registrations (`podpbx-trunk`) and the core's transaction
//! layer: which client transaction belongs to which trunk, and their status for ctl/metrics.

use crate::core::Output;
use bytes::Bytes;
use podpbx_sip::transaction::{ClientTxId, Peer, TransactionLayer};
use podpbx_sip::Message;
use podpbx_trunk::{Destination, Registration, TrunkState};
use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};
use tracing::{debug, info, warn};

/// Every configured trunk's registration state machine.
#[derive(Default)]
pub struct Trunks {
    regs: Vec<Registration>,
    /// In-flight client transactions: id -> (trunk index, branch).
    pending: HashMap<ClientTxId, (usize, Bytes)>,
    /// Last state name per trunk, to log transitions once.
    last_state: Vec<&'static str>,
}

impl Trunks {
    /// Wraps the registrations built from the config.
    pub fn new(regs: Vec<Registration>) -> Trunks {
        let last_state = regs.iter().map(|r| r.status().state).collect();
        Trunks {
            regs,
            pending: HashMap::new(),
            last_state,
        }
    }

    /// Starts registering every trunk.
    pub fn start(&mut self, now: Instant) {
        for r in &mut self.regs {
            r.start(now);
        }
    }

    /// Un-registers every trunk (graceful stop).
    pub fn stop(&mut self, now: Instant) {
        for r in &mut self.regs {
            r.stop(now);
        }
    }

    /// True when every trunk finished un-registering (or never registered).
    pub fn all_stopped(&self) -> bool {
        self.regs.iter().all(|r| r.is_stopped())
    }

    /// The earliest trunk timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.regs.iter().filter_map(|r| r.poll_timeout()).min()
    }

    /// Advances trunk timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for r in &mut self.regs {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
    }

    /// Claims a response if it answers one of our transactions.
    pub fn on_response(&mut self, now: Instant, id: ClientTxId, msg: &Message) -> bool {
        let Some((idx, _)) = self.pending.get(&id).cloned() else {
            return false;
        };
        if msg.status().unwrap_or(0) >= 200 {
            self.pending.remove(&id);
        }
        if let Some(r) = self.regs.get_mut(idx) {
            r.handle_response(now, msg);
        }
        true
    }

    /// Claims a Timer F / transport failure of one of our transactions.
    pub fn on_failure(&mut self, now: Instant, id: ClientTxId) -> bool {
        let Some((idx, branch)) = self.pending.remove(&id) else {
            return false;
        };
        if let Some(r) = self.regs.get_mut(idx) {
            r.transaction_timeout(now, &branch);
        }
        true
    }

    /// Forgets a finished transaction.
    pub fn on_terminated(&mut self, id: ClientTxId) {
        self.pending.remove(&id);
    }

    /// Hands every queued REGISTER/OPTIONS to the transaction layer (CRLF pings go straight to
    /// `direct`), and logs state changes.
    pub fn flush(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        direct: &mut VecDeque<Output>,
    ) {
        for (idx, r) in self.regs.iter_mut().enumerate() {
            while let Some(out) = r.poll_transmit() {
                let Destination::Addr(dest) = out.dest else {
                    warn!(trunk = %r.status().name, "trunk host is not resolved; cannot send");
                    continue;
                };
                let transport = out.transport;
                let Some(method) = out.kind.method() else {
                    // CRLF keep-alive: written on the connection, outside any transaction.
                    direct.push_back(Output::Send {
                        transport,
                        dest,
                        conn: 0,
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
                    Ok(id) => {
                        self.pending.insert(id, (idx, out.branch));
                    }
                    Err(e) => {
                        debug!(error = %e, "trunk request not sent");
                        r.transaction_timeout(now, &out.branch);
                    }
                }
            }
            let st = r.status();
            if self.last_state.get(idx) != Some(&st.state) {
                match r.state() {
                    TrunkState::Registered { .. } => info!(trunk = %st.name, "trunk registered"),
                    TrunkState::CredentialsRejected { .. } | TrunkState::Failing { .. } => {
                        warn!(trunk = %st.name, state = st.state, error = st.last_error.as_deref().unwrap_or(""), "trunk not registered")
                    }
                    _ => debug!(trunk = %st.name, state = st.state, "trunk state"),
                }
                if let Some(s) = self.last_state.get_mut(idx) {
                    *s = st.state;
                }
            }
        }
    }

    /// `(name, registered)` per trunk, for readiness and the trunk gauge.
    pub fn registered(&self) -> Vec<(String, bool)> {
        self.regs
            .iter()
            .map(|r| {
                (
                    r.status().name,
                    matches!(r.state(), TrunkState::Registered { .. }),
                )
            })
            .collect()
    }

    /// Status of every trunk for `podpbx ctl trunks`.
    pub fn status_json(&self, now: Instant) -> serde_json::Value {
        let wall = SystemTime::now();
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
            self.regs
                .iter()
                .map(|r| {
                    let s = r.status();
                    serde_json::json!({
                        "name": s.name,
                        "state": s.state,
                        "last_error": s.last_error,
                        "next_attempt_at": at(s.next_attempt),
                        "granted_expiry_secs": s.granted_expiry.map(|d| d.as_secs()),
                    })
                })
                .collect(),
        )
    }
}

/// Builds one registration per configured trunk that registers. `local` gives our pinned SIP
/// address per family; DNS names are resolved once here (AAAA or A per the trunk's family).
pub fn from_config(
    cfg: &podpbx_config::Config,
    local: impl Fn(podpbx_sip::Transport, bool) -> Option<std::net::SocketAddr>,
) -> Result<Trunks, String> {
    use podpbx_config::{Family, Host};
    use std::net::ToSocketAddrs;
    let mut regs = Vec::new();
    for t in &cfg.trunks {
        let (Some(user), true) = (t.username.as_deref(), t.register) else {
            continue;
        };
        let v4 = t.family == Family::V4;
        let transport = t.transport;
        let local = local(transport, v4).ok_or_else(|| {
            format!(
                "trunk {}: no pinned {} address configured in [sip]",
                t.name,
                if v4 { "IPv4" } else { "IPv6" }
            )
        })?;
        let dest = match &t.host {
            Host::Ip(ip) => std::net::SocketAddr::new(*ip, t.port),
            Host::Name(name) => (name.as_str(), t.port)
                .to_socket_addrs()
                .map_err(|e| format!("trunk {}: cannot resolve {name}: {e}", t.name))?
                .find(|a| a.is_ipv4() == v4)
                .ok_or_else(|| {
                    format!(
                        "trunk {}: {name} has no {} address",
                        t.name,
                        if v4 { "A" } else { "AAAA" }
                    )
                })?,
        };
        let password = t
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        let mut seed = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let mut rc = podpbx_trunk::RegistrationConfig::new(
            t.name.clone(),
            t.host.to_string(),
            user,
            password,
            local,
            seed,
        );
        rc.port = t.port;
        rc.dest = Some(dest);
        rc.transport = transport;
        rc.auth_username = t.auth_username.clone();
        rc.realm = t.realm.clone();
        rc.expiry = t.expiry;
        rc.keepalive = t.keepalive;
        rc.user_agent = cfg.sip.user_agent.clone();
        let reg = Registration::new(rc).map_err(|e| format!("trunk {}: {e}", t.name))?;
        regs.push(reg);
    }
    Ok(Trunks::new(regs))
}
