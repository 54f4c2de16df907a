//! Everything `podpbx run` sets up from the configuration before its loop: the loop's state
//! and event sources ([`build`]), and the settings derived from the config that the
//! virtual-time harness shares ([`core_config`], [`registrar_settings`]).

use super::event_loop::{Events, Publishers, Shell, State};
use crate::core::{Core, CoreConfig};
use crate::stats::Stats;
use crate::transport::{Inbound, TransportConfig, Transports};
use podpbx_config::{Config, DigestAlgorithm};
use podpbx_registrar::{Registrar, Settings as RegSettings};
use podpbx_sip::digest::Algorithm;
use podpbx_sip::transaction::{Limits, Timers};
use podpbx_sip::IdGen;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Builds the shell from `cfg`: fails (with the reason) when a pinned address is missing, a
/// socket cannot be bound, a TLS file is unusable or a listener cannot start.
pub(super) async fn build(cfg: Config, config_path: Option<PathBuf>) -> Result<Shell, String> {
    let mut addrs: Vec<IpAddr> = Vec::new();
    if let Some(a) = cfg.sip.ipv6 {
        addrs.push(IpAddr::V6(a));
    }
    if let Some(a) = cfg.sip.ipv4 {
        addrs.push(IpAddr::V4(a));
    }
    for a in &addrs {
        crate::ifaddrs::ensure_assigned(*a)?;
    }
    let stats = Arc::new(Stats::default());
    let (in_tx, inbound) = mpsc::channel::<Inbound>(4096);
    let tcfg = TransportConfig {
        addrs,
        port: cfg.sip.port,
        udp: cfg.sip.udp(),
        tcp: cfg.sip.tcp(),
        tcp_idle: cfg.sip.tcp_idle_timeout,
        tcp_message_timeout: cfg.sip.tcp_message_timeout,
        tcp_max_connections: cfg.sip.tcp_max_connections,
        tcp_max_per_source: cfg.sip.tcp_max_connections_per_source,
        ipv6_prefix: cfg.security.ipv6_prefix_length,
        max_message: cfg.sip.max_message_bytes,
        tls: tls_transport(&cfg)?,
    };
    let transports = Transports::bind(tcfg, stats.clone(), in_tx).await?;
    let core_cfg = core_config(&cfg);
    let timers = core_cfg.timers;
    let registrar = build_registrar(&cfg)?;
    let mut locals = crate::trunks::Locals::default();
    for transport in podpbx_sip::Transport::ALL {
        for any in [
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        ] {
            if let Some(a) = transports.local_for(transport, any) {
                locals.add(transport, a);
            }
        }
    }
    check_trunk_tls_names(&cfg)?;
    // The one read of the OS's randomness: every state machine's id generator is seeded from it.
    let mut ids = IdGen::new(os_seed()?);
    let trunks = crate::trunks::Trunks::from_config(&cfg, locals, IdGen::new(ids.bytes16()))?;
    // Trunk host names are looked up by the shell, never on the signalling loop.
    let (dns_tx, dns_rx) = mpsc::channel::<crate::dns::Answer>(256);
    let dns = crate::dns::Dns::new(&cfg.dns, dns_tx);
    let call_ids = IdGen::new(ids.bytes16());
    let mut core = Core::new(core_cfg, stats.clone(), registrar, trunks, ids);
    // Call control: the RTP relay on the pinned addresses, its events into the loop, the b2bua.
    let (relay, media_rx) = crate::media::start(&cfg)?;
    let call_addrs = crate::calls::Addrs {
        udp: transports.udp_addrs(),
        tcp: transports.tcp_addrs(),
        tls: transports.tls_addrs(),
    };
    super::event_loop::set_trunk_tls_names(&core, &transports);
    core.set_calls(crate::calls::Calls::new(
        Arc::new(cfg.clone()),
        timers,
        crate::media::port(relay.clone()),
        call_addrs,
        call_ids,
    ));
    // podpbx's media endpoint (voicemail, announcements): its own thread, never on the relay's
    // hot path. Without it, voicemail steps fail over to the next dialplan step.
    let (voicemail, vm_rx) = match crate::voicemail::start(&cfg) {
        Ok((w, rx)) => {
            core.set_endpoint(Box::new(crate::voicemail::Endpoint::new(w.clone(), &cfg)));
            (Some(w), rx)
        }
        Err(e) => {
            error!(error = %e, "voicemail unavailable");
            (None, mpsc::channel(1).1)
        }
    };
    let reload_rx = crate::reload::watch(config_path.clone())?;
    // Admin listener, readiness and graceful stop (admin/, lifecycle.rs); components register
    // metrics, JSON providers and readiness conditions on `admin`.
    let admin = crate::admin::Admin::new(&cfg, stats.clone());
    admin.sip_bound(transports.udp_addrs(), transports.tcp_addrs());
    let admin_rx = admin.core_requests();
    let admin_reload_rx = admin.reload_requests();
    let calls_snapshot = admin.provide_snapshot("calls");
    if let Some(listen) = cfg.admin.listen {
        admin.start_admin(listen, cfg.admin.token.clone()).await?;
    }
    if let Some(listen) = cfg.admin.health_listen {
        admin.start_health(listen, cfg.admin.health_metrics).await?;
    }
    let shutdown = crate::lifecycle::Shutdown::new(&admin, crate::lifecycle::SHUTDOWN_GRACE)?;
    // Events for home automation: delivered by their own task, never waited for.
    let webhooks = crate::webhooks::Webhooks::start(&cfg, &cfg.sip.user_agent);
    webhooks.register_metrics(admin.registry());
    if let Some(w) = &voicemail {
        crate::voicemail::register_metrics(w, admin.registry());
    }
    // Voicemail by e-mail (not reconfigured by a reload: the SMTP settings need a restart).
    let mailer = cfg
        .email
        .clone()
        .map(|e| crate::email::Mailer::start(e, &cfg.sip.domain));
    if let Some(m) = &mailer {
        m.register_metrics(admin.registry());
    }
    // Built only when asked for: with 10 000 bindings, a JSON of them every second cost more
    // than the REGISTERs that changed them.
    admin.provide_on_demand("registrations");
    let state_writer = crate::state_writer::StateWriter::spawn();
    if let Some(file) = &cfg.calls.cdr_file {
        crate::cdr::create_parent(file);
    }
    let cdr_writer = crate::cdr::CdrWriter::start()?;
    let subscriptions = admin.provide_snapshot("subscriptions");
    // Run-time forwarding/DND/modes: restored from the data volume, saved after each change.
    let features_path = cfg.storage.data_dir.join("features.json");
    match std::fs::read(&features_path) {
        Ok(data) => {
            if let Err(e) = core.restore_state(&data) {
                let aside = features_path.with_extension(format!(
                    "json.corrupt-{}",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                let _ = std::fs::rename(&features_path, &aside);
                warn!(file = %features_path.display(), moved_to = %aside.display(), error = %e, "forwarding/DND state unreadable: starting from the configuration");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(file = %features_path.display(), error = %e, "cannot read the forwarding/DND state")
        }
    }
    let features_writer = crate::state_writer::StateWriter::spawn();
    // On demand too: with 10 000 users the JSON of every user's forwarding and DND held 7.7 MB
    // (rebuilt every second) that nobody had asked for.
    admin.provide_on_demand("features");
    let presence_stats = Arc::new(Mutex::new(core.presence_stats()));
    register_presence_metrics(admin.registry(), &presence_stats);
    let tx_stats = Arc::new(Mutex::new(core.tx_stats()));
    register_tx_metrics(admin.registry(), &tx_stats);
    register_overload_metrics(admin.registry(), &stats);
    let trunk_status = admin.provide_snapshot("trunks");
    let udp = crate::udp::UdpIo::new(transports.udp_sockets(), cfg.sip.max_message_bytes);
    let state = State {
        core,
        transports,
        udp,
        udp_batch: Vec::with_capacity(crate::udp::BATCH),
        udp_failed: Vec::new(),
        udp_more: false,
        dns,
        stats,
        admin,
        config_path,
        relay,
        relay_seen: podpbx_media::RelayTotals::default(),
        voicemail,
        mailer,
        mailbox_counts: HashMap::new(),
        webhooks,
        trunks_up: HashMap::new(),
        trunk_names: Vec::new(),
        state_writer,
        features_writer,
        features_path,
        cdr_writer,
        publish: Publishers {
            calls: calls_snapshot,
            subscriptions,
            trunks: trunk_status,
        },
        presence_stats,
        tx_stats,
        auth_failures_seen: 0,
        heap: super::heap::Trimmer::new(),
        send_failed_log: crate::logging::network_warning(),
    };
    state.publish_registrations();
    let rare = super::event_loop::RareSources {
        dns: dns_rx,
        media: media_rx,
        voicemail: vm_rx,
        reload: reload_rx,
        admin: admin_rx,
        admin_reload: admin_reload_rx,
    }
    .spawn();
    let events = Events {
        inbound,
        rare,
        shutdown,
        tick: tokio::time::interval(Duration::from_secs(1)),
        epoch: Instant::now(),
        // Not polled until the core has a deadline (`timer_at`).
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        timer_at: None,
    };
    Ok(Shell { state, events })
}

/// The TLS listener's and client's rustls configurations from `[tls]`; the certificate files
/// are watched from here on. An unusable file stops the start with its name.
fn tls_transport(cfg: &Config) -> Result<Option<crate::transport::TlsTransport>, String> {
    use crate::tls;
    let Some(t) = &cfg.tls else {
        return Ok(None);
    };
    let min = match t.min_version {
        podpbx_config::TlsVersion::Tls12 => tls::MinVersion::Tls12,
        podpbx_config::TlsVersion::Tls13 => tls::MinVersion::Tls13,
    };
    let store = tls::CertStore::load(&t.cert_file, &t.key_file)?;
    store.clone().watch();
    let server = tls::server_config(store, min)?;
    let client = tls::client_config(tls::roots(t.ca_file.as_deref())?, min)?;
    info!(
        cert = %t.cert_file.display(),
        roots = %t.ca_file.as_ref().map_or("built-in".into(), |p| p.display().to_string()),
        "TLS certificate loaded"
    );
    Ok(Some(crate::transport::TlsTransport {
        port: t.port,
        server: Arc::new(server),
        client: Arc::new(client),
    }))
}

/// A TLS trunk's host must make a valid server name (checked once at start).
fn check_trunk_tls_names(cfg: &Config) -> Result<(), String> {
    for t in cfg
        .trunks
        .iter()
        .filter(|t| t.transport == podpbx_config::Transport::Tls)
    {
        crate::tls::server_name(&t.host.to_string())
            .map_err(|e| format!("trunk {}: {e}", t.name))?;
    }
    Ok(())
}

/// The core's settings from the configuration.
pub(crate) fn core_config(cfg: &Config) -> CoreConfig {
    CoreConfig {
        user_agent: cfg.sip.user_agent.clone(),
        timers: Timers {
            t1: cfg.sip.t1,
            t2: cfg.sip.t2,
            t4: cfg.sip.t4,
        },
        tx_limits: Limits {
            max_bytes: cfg.sip.transaction_memory,
            source_bytes: cfg.sip.transaction_memory / 100
                * usize::from(cfg.sip.transaction_source_percent),
        },
        domain: cfg.sip.domain.clone(),
        state_file: cfg.registrar.state_file.clone(),
    }
}

/// 16 bytes from the OS for a seeded id generator.
fn os_seed() -> Result<[u8; 16], String> {
    let mut seed = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(seed)
}

/// The registrar from the config, with bindings restored from the state file.
fn build_registrar(cfg: &Config) -> Result<Registrar, String> {
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
        .map_err(|e| format!("cannot read /dev/urandom for the nonce key: {e}"))?;
    let settings = registrar_settings(cfg, secret);
    let users = crate::calls::user_db(cfg);
    let now = Instant::now();
    let mut registrar = Registrar::new(settings, users, now);
    let path = &cfg.registrar.state_file;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match podpbx_registrar::load_file(&mut registrar, path, now, SystemTime::now()) {
        Ok(report) => {
            if let Some(w) = &report.warning {
                warn!(file = %path.display(), "{w}");
            }
            info!(file = %path.display(), loaded = report.loaded, dropped = report.dropped, "registrations restored");
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot restore registrations; starting clean")
        }
    }
    Ok(registrar)
}

/// The registrar's settings from the configuration; `secret` keys nonces and To tags.
pub(crate) fn registrar_settings(cfg: &Config, secret: Vec<u8>) -> RegSettings {
    let mut settings = RegSettings::new(cfg.sip.realm.clone(), secret);
    settings.domains = Vec::new();
    settings.min_expires = cfg.registrar.min_expires.as_secs() as u32;
    settings.max_expires = cfg.registrar.max_expires.as_secs() as u32;
    settings.default_expires = cfg.registrar.default_expires.as_secs() as u32;
    settings.nonce_ttl = cfg.registrar.nonce_ttl;
    // One challenge per algorithm, in the configured order (RFC 8760); the same list is used for
    // the 407 Proxy-Authenticate of INVITEs.
    settings.algorithms = cfg
        .registrar
        .digest_algorithms
        .iter()
        .map(|a| match a {
            DigestAlgorithm::Md5 => Algorithm::Md5,
            DigestAlgorithm::Md5Sess => Algorithm::Md5Sess,
            DigestAlgorithm::Sha256 => Algorithm::Sha256,
            DigestAlgorithm::Sha256Sess => Algorithm::Sha256Sess,
        })
        .collect();
    settings.max_failures = cfg.security.max_auth_failures;
    settings.failure_window = cfg.security.failure_window;
    settings.block_for = cfg.security.block;
    settings.trusted_networks = cfg.security.trusted_networks.clone();
    settings.ipv6_prefix = cfg.security.ipv6_prefix_length;
    settings.max_failures_per_minute = cfg.security.max_auth_failures_per_minute;
    settings.qualify_interval = cfg.registrar.qualify_interval;
    settings
}

/// SUBSCRIBE/NOTIFY counters and the subscription table's bounds in `/metrics`.
/// Overload control in `/metrics`: refusals by reason and the loop's lag.
fn register_overload_metrics(reg: &crate::metrics::Registry, stats: &Arc<Stats>) {
    for reason in crate::overload::Reason::ALL {
        let s = stats.clone();
        reg.counter_fn(
            "podpbx_sip_overload_refused_total",
            "New INVITEs and REGISTERs answered 503 with Retry-After by overload control.",
            &[("reason", reason.as_str())],
            move || Stats::get(&s.shed[reason.idx()]),
        );
    }
    let s = stats.clone();
    reg.gauge_fn(
        "podpbx_calls_setup",
        "Calls in set-up (INVITE not yet answered, or 2xx not yet acknowledged) at the latest count; bounded by [calls] max_setup.",
        &[],
        move || Stats::get(&s.calls_setup) as f64,
    );
    let s = stats.clone();
    reg.gauge_fn(
        "podpbx_sip_loop_lag_seconds",
        "How long the oldest datagram of the latest batch waited in the socket buffer.",
        &[],
        move || Stats::get(&s.loop_lag_us) as f64 / 1e6,
    );
    for (name, help, limit) in [
        (
            "podpbx_sip_overload_lag_limit_seconds",
            "Loop lag beyond which new calls and registrations are refused.",
            crate::overload::LAG_LIMIT.as_secs_f64(),
        ),
        (
            "podpbx_sip_overload_table_limit_ratio",
            "Share of the transaction table's bound beyond which new calls and registrations are refused.",
            crate::overload::TABLE_LIMIT,
        ),
        (
            "podpbx_sip_overload_media_limit_ratio",
            "Share of the relay's sessions or ports beyond which new calls are refused.",
            crate::overload::MEDIA_LIMIT,
        ),
    ] {
        reg.gauge_fn(name, help, &[], move || limit);
    }
}

/// The transaction table's size and bounds in `/metrics` (updated once a second).
fn register_tx_metrics(
    reg: &crate::metrics::Registry,
    stats: &Arc<std::sync::Mutex<podpbx_sip::transaction::TxStats>>,
) {
    type Get = fn(&podpbx_sip::transaction::TxStats) -> u64;
    let get = |f: Get| {
        let s = stats.clone();
        move || s.lock().map(|x| f(&x)).unwrap_or(0)
    };
    let gauges: [(&str, &str, Get); 8] = [
        (
            "podpbx_sip_transactions",
            "SIP transactions with work left (retransmissions, unanswered requests).",
            |x| x.live as u64,
        ),
        (
            "podpbx_sip_transactions_lingering",
            "SIP transactions only absorbing retransmissions (Timers D, I, J, K, L, M).",
            |x| x.lingering as u64,
        ),
        (
            "podpbx_sip_transaction_bytes",
            "Bytes the transaction table holds (keys, kept messages, bookkeeping).",
            |x| x.bytes as u64,
        ),
        (
            "podpbx_sip_transaction_live_bytes",
            "Bytes held by transactions with work left.",
            |x| x.live_bytes as u64,
        ),
        (
            "podpbx_sip_transaction_max_bytes",
            "Bound of the transaction table (sip.transaction_memory_mb).",
            |x| x.max_bytes as u64,
        ),
        (
            "podpbx_sip_transaction_source_max_bytes",
            "Bound of one source's transactions with work left (sip.transaction_source_percent).",
            |x| x.source_bytes as u64,
        ),
        (
            "podpbx_sip_transaction_sources",
            "Sources holding transactions with work left.",
            |x| x.sources as u64,
        ),
        (
            "podpbx_sip_transaction_slots",
            "Room in the transaction tables (entries); given back a while after a load.",
            |x| x.slots as u64,
        ),
    ];
    for (name, help, f) in gauges {
        let g = get(f);
        reg.gauge_fn(name, help, &[], move || g() as f64);
    }
    let counters: [(&str, &str, Get); 3] = [
        (
            "podpbx_sip_transactions_evicted_total",
            "Lingering transactions dropped early to keep the table within its bound.",
            |x| x.evicted,
        ),
        (
            "podpbx_sip_transactions_refused_total",
            "New transactions refused (503) because the table was at its bound.",
            |x| x.refused,
        ),
        (
            "podpbx_sip_transactions_refused_source_total",
            "New transactions refused (503) because their source held its share.",
            |x| x.refused_source,
        ),
    ];
    for (name, help, f) in counters {
        reg.counter_fn(name, help, &[], get(f));
    }
}

fn register_presence_metrics(
    reg: &crate::metrics::Registry,
    stats: &Arc<std::sync::Mutex<(podpbx_presence::NotifierStats, usize, usize)>>,
) {
    type Get = fn(&(podpbx_presence::NotifierStats, usize, usize)) -> u64;
    let get = |f: Get| {
        let s = stats.clone();
        move || s.lock().map(|x| f(&x)).unwrap_or(0)
    };
    let gauges: [(&str, &str, Get); 3] = [
        (
            "podpbx_subscriptions",
            "SUBSCRIBE dialogs (MWI, BLF) now.",
            |x| x.0.active as u64,
        ),
        (
            "podpbx_subscriptions_max",
            "Bound of subscriptions in all.",
            |x| x.1 as u64,
        ),
        (
            "podpbx_subscriptions_max_per_user",
            "Bound of subscriptions per subscriber.",
            |x| x.2 as u64,
        ),
    ];
    for (name, help, f) in gauges {
        let g = get(f);
        reg.gauge_fn(name, help, &[], move || g() as f64);
    }
    let counters: [(&str, &str, Get); 5] = [
        (
            "podpbx_notify_total",
            "NOTIFYs sent (subscriptions and unsolicited MWI).",
            |x| x.0.notifies,
        ),
        (
            "podpbx_subscribe_refused_total",
            "SUBSCRIBEs refused because the table was full (503).",
            |x| x.0.refused,
        ),
        (
            "podpbx_subscriptions_evicted_total",
            "Subscriptions dropped by the per-subscriber bound.",
            |x| x.0.evicted,
        ),
        (
            "podpbx_subscribe_bad_event_total",
            "SUBSCRIBEs for unknown event packages (489).",
            |x| x.0.bad_event,
        ),
        (
            "podpbx_subscriptions_failed_total",
            "Subscriptions removed because a NOTIFY failed.",
            |x| x.0.failed,
        ),
    ];
    for (name, help, f) in counters {
        reg.counter_fn(name, help, &[], get(f));
    }
}
