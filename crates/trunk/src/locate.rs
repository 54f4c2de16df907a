//! RFC 3263 §4 "Locating a SIP server" for a trunk host given as a DNS name, sans-IO.
//!
//! A [`Locator`] never touches the network or the clock. It emits [`DnsQuery`]s
//! ([`Locator::poll_query`]), the shell performs them (with an async resolver, off the signalling
//! loop) and feeds each answer back ([`Locator::handle_answer`]); deadlines come from
//! [`Locator::poll_timeout`] and are fired by [`Locator::handle_timeout`]. The result is an
//! ordered list of addresses ([`Locator::targets`]) to try one after the other.
//!
//! # Procedure (the transport is fixed by the trunk's configuration, RFC 3263 §4.1)
//!
//! * **Explicit port** (the trunk sets `port`): only the address records of the name (§4.2).
//! * **NAPTR** of the name: records with flag `S` and the service of our transport (`SIP+D2U`
//!   for UDP, `SIP+D2T` for TCP, `SIPS+D2T` for TLS), by order then preference; their replacements are the SRV names
//!   to try, in that order. No NAPTR (or none for our transport, or the lookup failed): the SRV
//!   name `_sip._udp.<name>`, `_sip._tcp.<name>` or `_sips._tcp.<name>`.
//! * **SRV**: by priority, and within a priority in the weighted random order of RFC 2782 (the
//!   randomness comes from the seed); a lone target `.` means the service is not offered there.
//!   Each target's address records, in that order, form the target list. No SRV records: the
//!   address records of the name itself on port 5060 (§4.2).
//! * **Addresses**: `AAAA` for an IPv6 trunk, `A` for an IPv4 one (the trunk's family is the
//!   pinned address it sends from; the other family could never be reached).
//!
//! # Lifetime
//!
//! The list lives as long as the smallest TTL of the records that built it, clamped to
//! `[min_ttl, max_ttl]` (a TTL of 0 would otherwise mean a query per message); then the name is
//! resolved again while the old list stays in use. A resolution that fails (no records, server
//! failure, no answer in [`LocatorConfig::query_timeout`]) is retried with a jittered exponential
//! back-off; a list from an earlier success is kept meanwhile and marked stale (RFC 8767: an
//! unreachable DNS server must not take a working trunk down). A name that never resolved leaves
//! the list empty: the trunk waits, podpbx keeps running.
//!
//! Bounds: at most [`MAX_SRV_NAMES`] NAPTR replacements, [`MAX_SRV_RECORDS`] SRV records and
//! [`MAX_TARGETS`] addresses are used; at most one resolution runs at a time.

use podpbx_sip::IdGen;
use podpbx_sip::Transport;
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// NAPTR replacements followed, at most.
pub const MAX_SRV_NAMES: usize = 4;
/// SRV records used, at most.
pub const MAX_SRV_RECORDS: usize = 16;
/// Addresses in the target list, at most.
pub const MAX_TARGETS: usize = 32;

/// A DNS record type the locator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Naptr,
    Srv,
    A,
    Aaaa,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::Naptr => "NAPTR",
            RecordType::Srv => "SRV",
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
        })
    }
}

/// A lookup for the shell to perform. `name` is fully qualified without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// Echo it in [`Locator::handle_answer`].
    pub id: u64,
    pub name: String,
    pub rtype: RecordType,
}

/// A NAPTR record (RFC 3403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    /// The replacement name (trailing dot allowed).
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host (trailing dot allowed); `.` means "no service here".
    pub target: String,
}

/// The data of one answer record; types the locator did not ask for are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    Naptr(Naptr),
    Srv(Srv),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
}

/// One answer record with its TTL in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ttl: u32,
    pub data: RData,
}

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN, or the name has no records of that type (NODATA).
    NotFound,
    /// The lookup itself failed: server failure, refused, no answer, network error.
    Failed(String),
}

/// Why the last resolution gave no targets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("{name} has no {rtype} record")]
    NoAddress { name: String, rtype: RecordType },
    #[error("the SRV record of {0} says the service is not offered")]
    ServiceNotOffered(String),
    #[error("no SRV target of {name} has an {rtype} record")]
    NoTargetAddress { name: String, rtype: RecordType },
    #[error("DNS lookup {rtype} {name} failed: {reason}")]
    Lookup {
        name: String,
        rtype: RecordType,
        reason: String,
    },
    #[error("DNS lookup {rtype} {name} got no answer in time")]
    Timeout { name: String, rtype: RecordType },
}

/// How a trunk host is located.
#[derive(Debug, Clone)]
pub struct LocatorConfig {
    /// The host name (a trailing dot is accepted and dropped).
    pub name: String,
    /// The configured port: `Some` skips NAPTR/SRV (RFC 3263 §4.2).
    pub port: Option<u16>,
    pub transport: Transport,
    /// Look up `A` (true) or `AAAA` (false) records.
    pub ipv4: bool,
    /// Shortest lifetime of a list (TTLs below are raised to it).
    pub min_ttl: Duration,
    /// Longest lifetime of a list.
    pub max_ttl: Duration,
    /// First retry delay after a failed resolution; doubles per failure.
    pub initial_backoff: Duration,
    /// Cap of the retry delay.
    pub max_backoff: Duration,
    /// A lookup without an answer after this long counts as failed (the shell's resolver has
    /// its own, shorter, timeouts; this bounds a lost answer).
    pub query_timeout: Duration,
    /// Randomness for the SRV weights and the retry jitter.
    pub seed: [u8; 16],
}

impl LocatorConfig {
    /// Defaults: lists live 10 s to 1 day, retries back off from 1 s to 60 s, 30 s per lookup.
    pub fn new(
        name: impl Into<String>,
        port: Option<u16>,
        transport: Transport,
        ipv4: bool,
        seed: [u8; 16],
    ) -> LocatorConfig {
        LocatorConfig {
            name: name.into(),
            port,
            transport,
            ipv4,
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(86_400),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            query_timeout: Duration::from_secs(30),
            seed,
        }
    }
}

/// A snapshot for logs, ctl and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocateStatus {
    /// `resolving` (no list yet), `resolved`, `stale` (an old list kept while failing),
    /// `unresolved` (failing, no list), `idle`.
    pub state: &'static str,
    pub targets: Vec<SocketAddr>,
    /// When the list expires (and is resolved again).
    pub expires_at: Option<Instant>,
    pub last_error: Option<String>,
    /// When the next retry goes out, after a failure.
    pub next_attempt: Option<Instant>,
    /// Consecutive failed resolutions.
    pub failures: u32,
    /// Resolutions started since creation.
    pub resolutions: u64,
}

/// An SRV target (or the name itself) whose addresses are being looked up.
#[derive(Debug, Clone)]
struct HostSlot {
    name: String,
    port: u16,
    query: u64,
    addrs: Option<Vec<IpAddr>>,
    error: Option<LookupError>,
}

#[derive(Debug)]
enum Stage {
    Naptr {
        query: u64,
    },
    Srv {
        query: u64,
        /// The SRV name asked now is `names[0]`; the rest are the next NAPTR replacements.
        names: VecDeque<String>,
    },
    Addresses {
        /// The SRV name the hosts came from (`None`: the name itself).
        srv: Option<String>,
        hosts: Vec<HostSlot>,
    },
}

#[derive(Debug)]
struct Run {
    stage: Stage,
    /// Smallest TTL seen on the records used so far.
    ttl: u32,
    deadline: Instant,
}

/// RFC 3263 server location for one host name. See the module documentation.
pub struct Locator {
    cfg: LocatorConfig,
    name: String,
    rng: IdGen,
    next_id: u64,
    queries: VecDeque<DnsQuery>,
    run: Option<Run>,
    running: bool,
    targets: Vec<SocketAddr>,
    expires_at: Option<Instant>,
    next_attempt: Option<Instant>,
    last_error: Option<LocateError>,
    failures: u32,
    resolutions: u64,
    /// Bumped whenever `targets` changes.
    generation: u64,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locator")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl Locator {
    /// An idle locator; [`Self::start`] begins the first resolution.
    pub fn new(cfg: LocatorConfig) -> Locator {
        let name = cfg.name.trim().trim_end_matches('.').to_ascii_lowercase();
        Locator {
            rng: IdGen::new(cfg.seed),
            name,
            cfg,
            next_id: 0,
            queries: VecDeque::new(),
            run: None,
            running: false,
            targets: Vec::new(),
            expires_at: None,
            next_attempt: None,
            last_error: None,
            failures: 0,
            resolutions: 0,
            generation: 0,
        }
    }

    /// The name being located.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Begins resolving (a no-op when already started).
    pub fn start(&mut self, now: Instant) {
        if self.running {
            return;
        }
        self.running = true;
        self.begin(now);
    }

    /// Stops: nothing more is asked; the list stays as it is.
    pub fn stop(&mut self) {
        self.running = false;
        self.run = None;
        self.queries.clear();
        self.next_attempt = None;
        self.expires_at = None;
    }

    /// The addresses to try, best first (empty while the name never resolved).
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Changes whenever [`Self::targets`] changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The next lookup to perform.
    pub fn poll_query(&mut self) -> Option<DnsQuery> {
        self.queries.pop_front()
    }

    /// The next deadline: a lookup's timeout, the list's expiry, or a retry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.running {
            return None;
        }
        match &self.run {
            Some(r) => Some(r.deadline),
            None => [self.next_attempt, self.expires_at]
                .into_iter()
                .flatten()
                .min(),
        }
    }

    /// Fires what is due: a lookup that got no answer fails the run; an expired list or a due
    /// retry starts a new resolution.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.running {
            return;
        }
        if let Some(r) = &self.run {
            if r.deadline <= now {
                let (name, rtype) = self.pending_query_name();
                self.queries.clear();
                self.run = None;
                self.fail(now, LocateError::Timeout { name, rtype });
            }
            return;
        }
        let retry_due = self.next_attempt.is_some_and(|t| t <= now);
        let expired = self.expires_at.is_some_and(|t| t <= now);
        if retry_due || expired {
            self.begin(now);
        }
    }

    /// Feeds the answer to query `id`. Answers to queries of an earlier (timed-out or stopped)
    /// run are ignored.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        id: u64,
        answer: Result<Vec<Record>, LookupError>,
    ) {
        enum Which {
            Naptr,
            Srv,
            Addr,
        }
        let which = match self.run.as_ref().map(|r| &r.stage) {
            Some(Stage::Naptr { query }) if *query == id => Which::Naptr,
            Some(Stage::Srv { query, .. }) if *query == id => Which::Srv,
            Some(Stage::Addresses { hosts, .. })
                if hosts
                    .iter()
                    .any(|h| h.query == id && h.addrs.is_none() && h.error.is_none()) =>
            {
                Which::Addr
            }
            _ => return,
        };
        match which {
            Which::Naptr => self.on_naptr(now, answer),
            Which::Srv => self.on_srv(now, answer),
            Which::Addr => self.on_addresses(now, id, answer),
        }
    }

    /// A snapshot.
    pub fn status(&self) -> LocateStatus {
        let state = if !self.running {
            "idle"
        } else if self.last_error.is_some() {
            if self.targets.is_empty() {
                "unresolved"
            } else {
                "stale"
            }
        } else if self.targets.is_empty() {
            "resolving"
        } else {
            "resolved"
        };
        LocateStatus {
            state,
            targets: self.targets.clone(),
            expires_at: self.expires_at,
            last_error: self.last_error.as_ref().map(ToString::to_string),
            next_attempt: self.next_attempt,
            failures: self.failures,
            resolutions: self.resolutions,
        }
    }

    // ----- internals ---------------------------------------------------------------------

    fn query(&mut self, name: &str, rtype: RecordType) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        debug!(name, %rtype, id, "DNS query");
        self.queries.push_back(DnsQuery {
            id,
            name: name.to_owned(),
            rtype,
        });
        id
    }

    fn addr_type(&self) -> RecordType {
        if self.cfg.ipv4 {
            RecordType::A
        } else {
            RecordType::Aaaa
        }
    }

    fn srv_name(&self) -> String {
        let service = match self.cfg.transport {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        };
        format!("{service}.{}", self.name)
    }

    fn naptr_service(&self) -> &'static str {
        match self.cfg.transport {
            Transport::Udp => "SIP+D2U",
            Transport::Tcp => "SIP+D2T",
            Transport::Tls => "SIPS+D2T",
        }
    }

    fn begin(&mut self, now: Instant) {
        self.next_attempt = None;
        self.expires_at = None;
        self.resolutions += 1;
        let deadline = now + self.cfg.query_timeout;
        let stage = match self.cfg.port {
            Some(port) => {
                let name = self.name.clone();
                Stage::Addresses {
                    srv: None,
                    hosts: vec![self.host_slot(name, port)],
                }
            }
            None => {
                let name = self.name.clone();
                Stage::Naptr {
                    query: self.query(&name, RecordType::Naptr),
                }
            }
        };
        self.run = Some(Run {
            stage,
            ttl: u32::MAX,
            deadline,
        });
    }

    fn host_slot(&mut self, name: String, port: u16) -> HostSlot {
        let rtype = self.addr_type();
        let query = self.query(&name, rtype);
        HostSlot {
            name,
            port,
            query,
            addrs: None,
            error: None,
        }
    }

    fn renew_deadline(&mut self, now: Instant) {
        let d = now + self.cfg.query_timeout;
        if let Some(r) = self.run.as_mut() {
            r.deadline = d;
        }
    }

    fn on_naptr(&mut self, now: Instant, answer: Result<Vec<Record>, LookupError>) {
        let service = self.naptr_service();
        let mut names: VecDeque<String> = VecDeque::new();
        match answer {
            Ok(records) => {
                let mut usable: Vec<(u16, u16, u32, String)> = records
                    .into_iter()
                    .filter_map(|r| match r.data {
                        RData::Naptr(n)
                            if n.flags.eq_ignore_ascii_case("s")
                                && n.services.eq_ignore_ascii_case(service) =>
                        {
                            let rep = n.replacement.trim_end_matches('.').to_ascii_lowercase();
                            (!rep.is_empty()).then_some((n.order, n.preference, r.ttl, rep))
                        }
                        _ => None,
                    })
                    .collect();
                usable.sort_by_key(|(o, p, _, _)| (*o, *p));
                for (_, _, ttl, rep) in usable {
                    if names.len() < MAX_SRV_NAMES && !names.contains(&rep) {
                        if let Some(r) = self.run.as_mut() {
                            r.ttl = r.ttl.min(ttl);
                        }
                        names.push_back(rep);
                    }
                }
                if names.is_empty() {
                    debug!(name = %self.name, service, "no NAPTR record for our transport");
                }
            }
            Err(LookupError::NotFound) => debug!(name = %self.name, "no NAPTR records"),
            Err(LookupError::Failed(e)) => {
                // Many servers mishandle NAPTR; SRV is what matters (RFC 3263 §4.1 allows
                // going straight to SRV).
                debug!(name = %self.name, error = %e, "NAPTR lookup failed; trying SRV");
            }
        }
        if names.is_empty() {
            names.push_back(self.srv_name());
        }
        self.ask_srv(now, names);
    }

    fn ask_srv(&mut self, now: Instant, names: VecDeque<String>) {
        let Some(first) = names.front().cloned() else {
            return;
        };
        let query = self.query(&first, RecordType::Srv);
        self.renew_deadline(now);
        if let Some(r) = self.run.as_mut() {
            r.stage = Stage::Srv { query, names };
        }
    }

    fn on_srv(&mut self, now: Instant, answer: Result<Vec<Record>, LookupError>) {
        let Some(Run {
            stage: Stage::Srv { names, .. },
            ..
        }) = self.run.as_mut()
        else {
            return;
        };
        let mut names = std::mem::take(names);
        let srv_name = names.pop_front().unwrap_or_default();
        let records = match answer {
            Ok(records) => records,
            Err(LookupError::NotFound) => Vec::new(),
            Err(LookupError::Failed(reason)) => {
                self.run = None;
                self.fail(
                    now,
                    LocateError::Lookup {
                        name: srv_name,
                        rtype: RecordType::Srv,
                        reason,
                    },
                );
                return;
            }
        };
        let mut srvs: Vec<(Srv, u32)> = records
            .into_iter()
            .filter_map(|r| match r.data {
                RData::Srv(s) => Some((s, r.ttl)),
                _ => None,
            })
            .take(MAX_SRV_RECORDS)
            .collect();
        if srvs.is_empty() {
            if !names.is_empty() {
                // The next NAPTR replacement.
                self.ask_srv(now, names);
                return;
            }
            // RFC 3263 §4.2: no SRV records, use the name's address records on the default port.
            debug!(name = %self.name, "no SRV records; using the address records");
            let name = self.name.clone();
            let port = if self.cfg.transport == Transport::Tls {
                5061
            } else {
                5060
            };
            let slot = self.host_slot(name, port);
            self.renew_deadline(now);
            if let Some(r) = self.run.as_mut() {
                r.stage = Stage::Addresses {
                    srv: None,
                    hosts: vec![slot],
                };
            }
            return;
        }
        if srvs.len() == 1 && srvs[0].0.target.trim_end_matches('.').is_empty() {
            self.run = None;
            self.fail(now, LocateError::ServiceNotOffered(srv_name));
            return;
        }
        srvs.retain(|(s, _)| !s.target.trim_end_matches('.').is_empty());
        let ttl = srvs.iter().map(|(_, t)| *t).min().unwrap_or(u32::MAX);
        let ordered = self.srv_order(srvs.into_iter().map(|(s, _)| s).collect());
        let mut hosts: Vec<HostSlot> = Vec::new();
        for s in ordered {
            let target = s.target.trim_end_matches('.').to_ascii_lowercase();
            if hosts.iter().any(|h| h.name == target && h.port == s.port) {
                continue;
            }
            let slot = match hosts.iter().find(|h| h.name == target) {
                // Same host on another port: one lookup serves both.
                Some(h) => HostSlot {
                    name: target,
                    port: s.port,
                    query: h.query,
                    addrs: None,
                    error: None,
                },
                None => self.host_slot(target, s.port),
            };
            hosts.push(slot);
        }
        self.renew_deadline(now);
        if let Some(r) = self.run.as_mut() {
            r.ttl = r.ttl.min(ttl);
            r.stage = Stage::Addresses {
                srv: Some(srv_name),
                hosts,
            };
        }
    }

    /// RFC 2782 order: ascending priority; within one priority, repeatedly pick a record with
    /// probability proportional to its weight (zero weights first in the running sum, so they
    /// are picked rarely but not never).
    fn srv_order(&mut self, mut srvs: Vec<Srv>) -> Vec<Srv> {
        srvs.sort_by_key(|s| (s.priority, s.weight != 0));
        let mut out = Vec::with_capacity(srvs.len());
        while !srvs.is_empty() {
            let prio = srvs[0].priority;
            let n = srvs.iter().take_while(|s| s.priority == prio).count();
            let mut group: Vec<Srv> = srvs.drain(..n).collect();
            while !group.is_empty() {
                let total: u64 = group.iter().map(|s| u64::from(s.weight)).sum();
                let pick = if total == 0 {
                    0
                } else {
                    let r = (self.rng.unit() * (total + 1) as f64) as u64;
                    let mut sum = 0u64;
                    group
                        .iter()
                        .position(|s| {
                            sum += u64::from(s.weight);
                            sum >= r
                        })
                        .unwrap_or(group.len() - 1)
                };
                out.push(group.remove(pick));
            }
        }
        out
    }

    fn on_addresses(&mut self, now: Instant, id: u64, answer: Result<Vec<Record>, LookupError>) {
        let ipv4 = self.cfg.ipv4;
        let mut ttl = u32::MAX;
        let result = match answer {
            Ok(records) => {
                let mut addrs = Vec::new();
                for r in records {
                    let ip = match r.data {
                        RData::A(a) if ipv4 => IpAddr::V4(a),
                        RData::Aaaa(a) if !ipv4 => IpAddr::V6(a),
                        _ => continue,
                    };
                    if usable(ip) && !addrs.contains(&ip) {
                        ttl = ttl.min(r.ttl);
                        addrs.push(ip);
                    }
                }
                if addrs.is_empty() {
                    Err(LookupError::NotFound)
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(e),
        };
        let Some(run) = self.run.as_mut() else { return };
        let Stage::Addresses { hosts, .. } = &mut run.stage else {
            return;
        };
        if result.is_ok() {
            run.ttl = run.ttl.min(ttl);
        }
        // One lookup may serve several SRV records (same host, other ports).
        for h in hosts.iter_mut().filter(|h| h.query == id) {
            match &result {
                Ok(a) => h.addrs = Some(a.clone()),
                Err(e) => h.error = Some(e.clone()),
            }
        }
        if hosts.iter().all(|h| h.addrs.is_some() || h.error.is_some()) {
            self.finish_addresses(now);
        }
    }

    fn finish_addresses(&mut self, now: Instant) {
        let Some(run) = self.run.take() else { return };
        let Stage::Addresses { srv, hosts } = run.stage else {
            return;
        };
        let mut targets: Vec<SocketAddr> = Vec::new();
        for h in &hosts {
            for ip in h.addrs.iter().flatten() {
                let a = SocketAddr::new(*ip, h.port);
                if targets.len() < MAX_TARGETS && !targets.contains(&a) {
                    targets.push(a);
                }
            }
        }
        let rtype = self.addr_type();
        if targets.is_empty() {
            let failed = hosts.iter().find_map(|h| match &h.error {
                Some(LookupError::Failed(r)) => Some((h.name.clone(), r.clone())),
                _ => None,
            });
            let err = match (failed, srv) {
                (Some((name, reason)), _) => LocateError::Lookup {
                    name,
                    rtype,
                    reason,
                },
                (None, Some(name)) => LocateError::NoTargetAddress { name, rtype },
                (None, None) => LocateError::NoAddress {
                    name: self.name.clone(),
                    rtype,
                },
            };
            self.fail(now, err);
            return;
        }
        let ttl = Duration::from_secs(u64::from(run.ttl.min(u32::MAX - 1)))
            .clamp(self.cfg.min_ttl, self.cfg.max_ttl);
        if targets != self.targets {
            info!(name = %self.name, targets = ?targets, ttl_s = ttl.as_secs(), "trunk host resolved");
            self.targets = targets;
            self.generation += 1;
        } else {
            debug!(name = %self.name, ttl_s = ttl.as_secs(), "trunk host re-resolved, unchanged");
        }
        self.expires_at = Some(now + ttl);
        self.failures = 0;
        self.last_error = None;
    }

    fn fail(&mut self, now: Instant, e: LocateError) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(20);
        let nominal = self
            .cfg
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.cfg.max_backoff);
        let delay = nominal.mul_f64(1.0 - 0.25 * self.rng.unit());
        warn!(name = %self.name, error = %e, failures = self.failures, retry_in_ms = delay.as_millis() as u64, stale = !self.targets.is_empty(), "trunk host not resolved");
        self.last_error = Some(e);
        self.next_attempt = Some(now + delay);
    }

    /// The name and type of a lookup still waiting (for the timeout error).
    fn pending_query_name(&self) -> (String, RecordType) {
        let rtype = self.addr_type();
        match self.run.as_ref().map(|r| &r.stage) {
            Some(Stage::Naptr { .. }) => (self.name.clone(), RecordType::Naptr),
            Some(Stage::Srv { names, .. }) => {
                (names.front().cloned().unwrap_or_default(), RecordType::Srv)
            }
            Some(Stage::Addresses { hosts, .. }) => (
                hosts
                    .iter()
                    .find(|h| h.addrs.is_none() && h.error.is_none())
                    .map_or_else(|| self.name.clone(), |h| h.name.clone()),
                rtype,
            ),
            None => (self.name.clone(), rtype),
        }
    }
}

/// Addresses a trunk may be sent to: never unspecified, multicast or broadcast.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    }
}

#[cfg(test)]
mod tests;
