//! The shell's DNS: performs the core's [`crate::core::Output::Resolve`] requests with
//! `hickory-resolver` on the tokio runtime, each in its own task, and sends every answer back on
//! a channel the main loop feeds to [`crate::core::Core::dns_answer`]. The signalling loop never
//! waits for DNS.
//!
//! Name servers: `[dns] servers`, else the system's (`/etc/resolv.conf`). Names are queried as
//! fully qualified (no search-list expansion: a trunk host is a provider's name, not a local one).
//! Negative answers are cached at most [`NEGATIVE_TTL_CAP`], so a record added at the provider is
//! seen at the next retry.

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData as HRData, RecordType as HRecordType};
use hickory_resolver::TokioResolver;
use podpbx_trunk::{LookupError, Naptr, RData, Record, RecordType, Srv};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Lookups in flight at most; more are answered as failed at once (the locators retry).
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest time a "no such name/record" answer is cached.
pub const NEGATIVE_TTL_CAP: Duration = Duration::from_secs(5);

/// An answer for the core: (query id, records or why none).
pub type Answer = (u64, Result<Vec<Record>, LookupError>);

/// Performs lookups; answers go to the channel given to [`Dns::new`].
pub struct Dns {
    resolver: Result<TokioResolver, String>,
    answers: mpsc::Sender<Answer>,
    in_flight: Arc<AtomicUsize>,
}

impl Dns {
    /// A resolver for `cfg` (must run inside the tokio runtime). A resolver that cannot be built
    /// (no readable `/etc/resolv.conf`) is not fatal: every lookup fails with the reason, and
    /// trunks given as names wait.
    pub fn new(cfg: &podpbx_config::DnsConfig, answers: mpsc::Sender<Answer>) -> Dns {
        let resolver = build(cfg);
        if let Err(e) = &resolver {
            warn!(error = %e, "no DNS resolver: trunk host names cannot be resolved");
        }
        Dns {
            resolver,
            answers,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Starts looking up `name` for `rtype`; the answer arrives on the channel.
    pub fn resolve(&self, id: u64, name: String, rtype: RecordType) {
        let resolver = match &self.resolver {
            Ok(r) => r.clone(),
            Err(e) => {
                let _ = self
                    .answers
                    .try_send((id, Err(LookupError::Failed(e.clone()))));
                return;
            }
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let e = LookupError::Failed("too many DNS lookups in flight".into());
            let _ = self.answers.try_send((id, Err(e)));
            return;
        }
        let tx = self.answers.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            let answer = lookup(&resolver, &name, rtype).await;
            debug!(%name, %rtype, ok = answer.is_ok(), "DNS answer");
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send((id, answer)).await;
        });
    }
}

fn build(cfg: &podpbx_config::DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if cfg.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let servers = cfg
            .servers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.negative_max_ttl = Some(NEGATIVE_TTL_CAP);
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
}

async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<Record>, LookupError> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let ty = match rtype {
        RecordType::Naptr => HRecordType::NAPTR,
        RecordType::Srv => HRecordType::SRV,
        RecordType::A => HRecordType::A,
        RecordType::Aaaa => HRecordType::AAAA,
    };
    let found = match resolver.lookup(fqdn.as_str(), ty).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => return Err(LookupError::NotFound),
        Err(e) => return Err(LookupError::Failed(e.to_string())),
    };
    let records: Vec<Record> = found
        .answers()
        .iter()
        .filter_map(|r| {
            let data = match &r.data {
                HRData::NAPTR(n) => RData::Naptr(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: n.replacement.to_ascii(),
                }),
                HRData::SRV(s) => RData::Srv(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii(),
                }),
                HRData::A(a) => RData::A(a.0),
                HRData::AAAA(a) => RData::Aaaa(a.0),
                _ => return None,
            };
            Some(Record { ttl: r.ttl, data })
        })
        .collect();
    if records.is_empty() {
        return Err(LookupError::NotFound);
    }
    Ok(records)
}
