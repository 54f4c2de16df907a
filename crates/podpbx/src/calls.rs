//! Glue between the sans-IO B2BUA (`podpbx-b2bua`) and the rest of the binary: the relay
//! behind [`MediaPort`], the registrar behind [`Directory`], config reload, and turning b2bua
//! outputs into transaction-layer calls and CDR outputs.

use crate::core::Output as CoreOutput;
use crate::owners::{Owner, Owners};
use podpbx_b2bua::{
    B2bua, ContactTarget, Directory, LegStats, MediaId, MediaLeg, MediaPort, Output, RemoteMedia,
    ReqId, Settings,
};
use podpbx_config::Config;
use podpbx_media::{Family, FamilyConfig, PortLayout, Relay, RelayConfig, Session};
use podpbx_registrar::Registrar;
use podpbx_sip::transaction::{ServerTxId, Timers, TransactionLayer, TxId};
use podpbx_sip::{IdGen, Transport};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The relay as a [`MediaPort`]: sessions by id.
pub struct RelayMedia {
    relay: Relay,
    sessions: HashMap<MediaId, Session>,
}

impl RelayMedia {
    pub fn new(relay: Relay) -> RelayMedia {
        RelayMedia {
            relay,
            sessions: HashMap::new(),
        }
    }
}

impl MediaPort for RelayMedia {
    fn allocate(&mut self, a: Family, b: Family) -> Result<MediaId, String> {
        let s = self.relay.allocate(a, b).map_err(|e| e.to_string())?;
        let id = s.id().0;
        self.sessions.insert(id, s);
        Ok(id)
    }
    fn local(&self, id: MediaId, leg: MediaLeg) -> Option<SocketAddr> {
        self.sessions.get(&id).map(|s| s.local(leg).rtp)
    }
    fn set_remote(&mut self, id: MediaId, leg: MediaLeg, remote: RemoteMedia) {
        if let Some(s) = self.sessions.get(&id) {
            if let Err(e) = s.set_remote(leg, remote) {
                debug!(error = %e, "relay set_remote");
            }
        }
    }
    fn set_hold(&mut self, id: MediaId, leg: MediaLeg, hold: bool) {
        if let Some(s) = self.sessions.get(&id) {
            let _ = s.set_hold(leg, hold);
        }
    }
    fn inject_dtmf(&mut self, id: MediaId, leg: MediaLeg, digit: char, duration: Duration) -> bool {
        self.sessions
            .get(&id)
            .is_some_and(|s| s.inject_dtmf(leg, digit, duration).is_ok())
    }
    fn stats(&self, id: MediaId, leg: MediaLeg) -> LegStats {
        let Some(s) = self.sessions.get(&id) else {
            return LegStats::default();
        };
        let st = s.stats(leg);
        LegStats {
            rtp_packets: st.rtp_packets,
            rtp_bytes: st.rtp_bytes,
            rtcp_packets: st.rtcp_packets,
            forwarded_packets: st.forwarded_packets,
            lost_packets: st.lost_packets,
            jitter: st.jitter,
        }
    }
    fn release(&mut self, id: MediaId) {
        if let Some(s) = self.sessions.remove(&id) {
            s.release();
        }
    }
    fn srtp_suites(&self) -> &[&'static str] {
        &["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
    }
    fn srtp_key(&mut self) -> Option<Vec<u8>> {
        match podpbx_media::generate_key() {
            Ok(k) => Some(k.to_bytes().to_vec()),
            Err(e) => {
                warn!(error = %e, "no randomness for an SRTP key");
                None
            }
        }
    }
    fn set_srtp(&mut self, id: MediaId, leg: MediaLeg, keys: Option<podpbx_b2bua::SrtpLegKeys>) {
        use podpbx_media::srtp::{MasterKey, Suite};
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let keys = keys.and_then(|k| {
            let suite = Suite::from_name(&k.suite)?;
            let remote: [u8; 30] = k.remote.as_slice().try_into().ok()?;
            let local: [u8; 30] = k.local.as_slice().try_into().ok()?;
            Some(podpbx_media::SrtpKeys {
                suite,
                remote: MasterKey::from_bytes(&remote),
                local: MasterKey::from_bytes(&local),
            })
        });
        if let Err(e) = s.set_srtp(leg, keys.as_ref()) {
            debug!(error = %e, "relay set_srtp");
        }
    }
}

/// A MediaPort for when no relay could be started: every call gets 503 from the b2bua.
struct NoMedia;

impl MediaPort for NoMedia {
    fn allocate(&mut self, _a: Family, _b: Family) -> Result<MediaId, String> {
        Err("no RTP relay".into())
    }
    fn local(&self, _id: MediaId, _leg: MediaLeg) -> Option<SocketAddr> {
        None
    }
    fn set_remote(&mut self, _id: MediaId, _leg: MediaLeg, _r: RemoteMedia) {}
    fn set_hold(&mut self, _id: MediaId, _leg: MediaLeg, _h: bool) {}
    fn inject_dtmf(&mut self, _id: MediaId, _leg: MediaLeg, _d: char, _t: Duration) -> bool {
        false
    }
    fn stats(&self, _id: MediaId, _leg: MediaLeg) -> LegStats {
        LegStats::default()
    }
    fn release(&mut self, _id: MediaId) {}
}

/// The relay configuration from `[media]` on the pinned addresses.
pub fn relay_config(cfg: &Config) -> RelayConfig {
    let ports = cfg.media.port_min..=cfg.media.port_max;
    RelayConfig {
        ipv4: cfg.sip.ipv4.map(|a| FamilyConfig {
            addr: IpAddr::V4(a),
            ports: ports.clone(),
        }),
        ipv6: cfg.sip.ipv6.map(|a| FamilyConfig {
            addr: IpAddr::V6(a),
            ports,
        }),
        media_timeout: cfg.media.timeout.unwrap_or(Duration::ZERO),
        hold_timeout: cfg.media.hold_timeout.unwrap_or(Duration::ZERO),
        tos: cfg.media.dscp << 2,
        layout: match cfg.media.port_layout {
            podpbx_config::MediaPortLayout::Shared => PortLayout::Shared { pairs: 2 },
            podpbx_config::MediaPortLayout::PerCall => PortLayout::PerCall,
        },
        // Nobody listens to Latched events: not sending them saves the event path a wake-up per
        // latch (four per call).
        report_latching: false,
        ..RelayConfig::default()
    }
}

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
    /// Call control for `cfg`, with media through `relay` (none: calls get 503).
    pub fn new(
        cfg: Arc<Config>,
        timers: Timers,
        relay: Option<Relay>,
        addrs: Addrs,
        ids: IdGen,
    ) -> Calls {
        let media: Box<dyn MediaPort + Send> = match relay {
            Some(r) => Box::new(RelayMedia::new(r)),
            None => Box::new(NoMedia),
        };
        Calls::with_media(cfg, timers, media, addrs, ids)
    }

    /// Call control for `cfg` with media through `media` (the relay, or a fake in tests).
    pub fn with_media(
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

/// Reads and validates the config file for a reload; every problem on its own line.
pub fn load_for_reload(path: &Path) -> Result<Config, String> {
    podpbx_config::check(path).map_err(|errs| podpbx_config::format_errors(&errs))
}

/// A cheap fingerprint of the config file (following symlinks, as Kubernetes swaps `..data`):
/// modification time, inode and length. `None` when it cannot be read.
pub fn fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
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
