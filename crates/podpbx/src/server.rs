//! `podpbx run`: the tokio shell around the sans-IO core. Loads the config, checks the pinned
//! addresses are really here, binds the transports and drives the core with messages and time.

use crate::cli::LogFormat;
use crate::core::{Core, CoreConfig, Output};
use crate::stats::Stats;
use crate::transport::{Inbound, TransportConfig, Transports};
use podpbx_config::{Config, DigestAlgorithm};
use podpbx_registrar::{Registrar, Settings as RegSettings};
use podpbx_sip::digest::Algorithm;
use podpbx_sip::transaction::{Peer, Timers};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Runs podpbx until SIGTERM/SIGINT.
pub fn run(config: Option<&Path>, log_format: Option<LogFormat>) -> ExitCode {
    let cfg = match config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => match Config::embedded_default() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("embedded default config: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    init_logging(&cfg, log_format);
    raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg, config.map(Path::to_path_buf))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("podpbx: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config, format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => cfg.log.format == podpbx_config::LogFormat::Json,
    };
    // Colours only on a terminal: in a file or `kubectl logs` they are escape-sequence noise
    // (and the only ESC octets in a text log are then none at all).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        // Values from the network (Call-IDs, branches, user names...) are escaped: no raw
        // CR/LF/ESC reaches a text log.
        builder.fmt_fields(crate::logging::EscapedFields).init();
    }
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

/// The certificate of a TLS trunk must carry the trunk's host name (RFC 5922 §7.2), or its IP
/// address when the host is an IP literal: tells the transports which name each located server
/// of a TLS trunk must prove (the servers change when DNS does, so this runs after each answer
/// and reload).
fn set_trunk_tls_names(core: &Core, transports: &Transports) {
    for (addr, host) in core.trunks().tls_servers() {
        if let Ok(name) = crate::tls::server_name(&host) {
            transports.set_tls_name(addr, name);
        }
    }
}

async fn serve(cfg: Config, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
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
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(4096);
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
    for transport in [
        podpbx_sip::Transport::Udp,
        podpbx_sip::Transport::Tcp,
        podpbx_sip::Transport::Tls,
    ] {
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
    let mut ids = podpbx_sip::IdGen::new(os_seed()?);
    let trunks =
        crate::trunks::Trunks::from_config(&cfg, locals, podpbx_sip::IdGen::new(ids.bytes16()))?;
    // Trunk host names are looked up by the shell, never on the signalling loop.
    let (dns_tx, mut dns_rx) = mpsc::channel::<crate::dns::Answer>(256);
    let dns = crate::dns::Dns::new(&cfg.dns, dns_tx);
    let call_ids = podpbx_sip::IdGen::new(ids.bytes16());
    let mut core = Core::new(core_cfg, stats.clone(), registrar, trunks, ids);
    // Call control: the RTP relay on the pinned addresses, its events into the loop, the b2bua.
    let (media_tx, mut media_rx) = mpsc::channel::<podpbx_media::Event>(1024);
    let relay = match podpbx_media::Relay::start(crate::calls::relay_config(&cfg)) {
        Ok((relay, events)) => {
            std::thread::Builder::new()
                .name("podpbx-media-events".into())
                .spawn(move || {
                    while let Some(ev) = events.recv() {
                        if media_tx.blocking_send(ev).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start the media event thread: {e}"))?;
            Some(relay)
        }
        Err(e) => {
            error!(error = %e, "cannot start the RTP relay: calls will get 503");
            None
        }
    };
    let call_addrs = crate::calls::Addrs {
        udp: transports.udp_addrs(),
        tcp: transports.tcp_addrs(),
        tls: transports.tls_addrs(),
    };
    set_trunk_tls_names(&core, &transports);
    let relay_metrics = relay.clone();
    let mut relay_seen = podpbx_media::RelayTotals::default();
    core.set_calls(crate::calls::Calls::new(
        Arc::new(cfg.clone()),
        timers,
        relay,
        call_addrs,
        call_ids,
    ));
    // podpbx's media endpoint (voicemail, announcements): its own thread, never on the relay's
    // hot path. Without it, voicemail steps fail over to the next dialplan step.
    let (voicemail, mut vm_rx) = match crate::voicemail::start(&cfg) {
        Ok((w, rx)) => {
            core.set_endpoint(Box::new(crate::voicemail::Endpoint::new(w.clone(), &cfg)));
            (Some(w), rx)
        }
        Err(e) => {
            error!(error = %e, "voicemail unavailable");
            (None, mpsc::channel(1).1)
        }
    };
    let mut mailbox_counts: std::collections::HashMap<String, podpbx_voicemail::store::Counts> =
        std::collections::HashMap::new();
    // Reload: SIGHUP, `POST /api/reload`, and a changed config file (a Kubernetes ConfigMap
    // update swaps the `..data` symlink; polled every 2 s, following symlinks).
    let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(4);
    {
        let tx = reload_tx.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send("SIGHUP").await.is_err() {
                    break;
                }
            }
        });
    }
    if let Some(path) = config_path.clone() {
        let tx = reload_tx.clone();
        tokio::spawn(async move {
            let mut last = crate::calls::fingerprint(&path);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let now = crate::calls::fingerprint(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send("config file changed").await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    // Admin listener, readiness and graceful stop (admin.rs); components register metrics,
    // JSON providers and readiness flags on `admin`.
    let admin = crate::admin::Admin::new(&cfg, stats.clone());
    admin.sip_bound(transports.udp_addrs(), transports.tcp_addrs());
    let mut admin_rx = admin.core_requests();
    let mut admin_reload_rx = admin.reload_requests();
    let calls_snapshot = admin.provide_snapshot("calls");
    if let Some(listen) = cfg.admin.listen {
        admin.start_admin(listen, cfg.admin.token.clone()).await?;
    }
    if let Some(listen) = cfg.admin.health_listen {
        admin.start_health(listen, cfg.admin.health_metrics).await?;
    }
    let mut shutdown = crate::lifecycle::Shutdown::new(&admin, crate::lifecycle::SHUTDOWN_GRACE)?;
    // Events for home automation: delivered by their own task, never waited for.
    let mut webhooks = crate::webhooks::Webhooks::start(&cfg, &cfg.sip.user_agent);
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
    let mut trunks_up: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let registrations = admin.provide_snapshot("registrations");
    let publish_registrations = |core: &Core| {
        registrations.publish(crate::admin::json::registrations(core.registrar()));
        admin
            .metrics()
            .registrations
            .set_count(core.registrar().stats().bindings);
    };
    publish_registrations(&core);
    let state_writer = StateWriter::spawn();
    if let Some(file) = &cfg.calls.cdr_file {
        crate::cdr::create_parent(file);
    }
    let mut cdr_writer = crate::cdr::CdrWriter::start()?;
    let subscriptions = admin.provide_snapshot("subscriptions");
    // Run-time forwarding/DND/modes: restored from the data volume, saved after each change.
    let state_path = cfg.storage.data_dir.join("features.json");
    match std::fs::read(&state_path) {
        Ok(data) => {
            if let Err(e) = core.restore_state(&data) {
                let aside = state_path.with_extension(format!(
                    "json.corrupt-{}",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                let _ = std::fs::rename(&state_path, &aside);
                warn!(file = %state_path.display(), moved_to = %aside.display(), error = %e, "forwarding/DND state unreadable: starting from the configuration");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(file = %state_path.display(), error = %e, "cannot read the forwarding/DND state")
        }
    }
    let features_writer = StateWriter::spawn();
    let features = admin.provide_snapshot("features");
    features.publish(core.features_json());
    let presence_stats = Arc::new(std::sync::Mutex::new(core.presence_stats()));
    register_presence_metrics(admin.registry(), &presence_stats);
    let trunk_status = admin.provide_snapshot("trunks");
    let mut trunk_names: Vec<String> = Vec::new();
    let mut publish_trunks = |core: &Core| {
        trunk_status.publish(core.trunks().status_json(Instant::now(), SystemTime::now()));
        admin.set_trunks(
            &core.trunks().readiness(),
            &core.trunks().health(),
            &mut trunk_names,
        );
    };
    core.start(Instant::now());
    // Status that changes slowly is published once a second, not per message.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut auth_failures_seen = 0u64;
    // A peer that went away makes every send to it fail: one line per 10 s burst, counted.
    let mut send_failed_log = crate::logging::network_warning();
    info!(udp = ?transports.udp_addrs(), tcp = ?transports.tcp_addrs(), tls = ?transports.tls_addrs(), "podpbx ready");

    loop {
        let deadline = core.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            msg = in_rx.recv() => {
                match msg {
                    Some(Inbound::Message(msg, flow)) => core.handle_message(Instant::now(), SystemTime::now(), &msg, flow),
                    Some(Inbound::Malformed { data, reason, flow }) => core.handle_malformed(Instant::now(), &data, &reason, flow),
                    Some(Inbound::SendFailed { transport, dest, conn }) => core.transport_error(Peer { addr: dest, transport, conn }),
                    None => break,
                }
            }
            _ = sleep_until_opt(deadline) => core.handle_timeout(Instant::now()),
            Some((id, answer)) = dns_rx.recv() => {
                core.dns_answer(Instant::now(), id, answer);
                set_trunk_tls_names(&core, &transports);
            }
            _ = tick.tick() => {
                publish_trunks(&core);
                trunk_events(&core, &mut trunks_up, &mut webhooks);
                calls_snapshot.publish(core.calls_json(Instant::now()));
                features.publish(core.features_json());
                subscriptions.publish(core.subscriptions_json(Instant::now()));
                if let Ok(mut p) = presence_stats.lock() {
                    *p = core.presence_stats();
                }
                if core.take_registrations_changed() {
                    publish_registrations(&core);
                }
                let failures = Stats::get(&stats.auth_failures);
                admin.metrics().auth_failures.add(failures.saturating_sub(auth_failures_seen));
                auth_failures_seen = failures;
                admin.metrics().blocked_sources.set_count(core.registrar().stats().blocked_sources);
                if let Some(relay) = &relay_metrics {
                    publish_relay_totals(&admin, relay.totals(), &mut relay_seen);
                }
            }
            Some(n) = vm_rx.recv() => match n {
                podpbx_voicemail::worker::Notice::Hangup { id, .. } => core.endpoint_done(Instant::now(), id),
                podpbx_voicemail::worker::Notice::Counts { mailbox, counts } => {
                    core.set_mwi(Instant::now(), &mailbox, counts.new, counts.old);
                    mailbox_counts.insert(mailbox, counts);
                }
                podpbx_voicemail::worker::Notice::MessageLeft(m) => {
                    let c = mailbox_counts.get(&m.mailbox).copied().unwrap_or_default();
                    if let (Some(mailer), Some(cfg)) = (&mailer, core.config()) {
                        if let Some(to) = cfg.user(&m.mailbox).and_then(|u| u.email.clone()) {
                            mailer.push(crate::email::Job {
                                to,
                                wav: cfg.voicemail.dir.join(&m.mailbox).join(format!("{}.wav", m.id)),
                                meta: m.clone(),
                            });
                        }
                    }
                    webhooks.push(podpbx_events::Data::Voicemail {
                        mailbox: m.mailbox,
                        from: m.caller,
                        from_name: m.caller_name,
                        duration_secs: m.duration_secs,
                        message_id: m.id,
                        new: c.new,
                        old: c.old,
                    });
                }
                podpbx_voicemail::worker::Notice::WrongPin { .. } => {}
            },
            Some(ev) = media_rx.recv() => match ev {
                podpbx_media::Event::MediaTimeout { session, .. } => {
                    core.media_timeout(Instant::now(), session.0);
                }
                podpbx_media::Event::Dtmf { session, leg, digit, duration_ms } => {
                    let duration = std::time::Duration::from_millis(duration_ms.into());
                    core.media_dtmf(Instant::now(), session.0, leg, digit, duration);
                }
                podpbx_media::Event::Latched { .. } => {}
            },
            Some(why) = reload_rx.recv() => {
                info!(trigger = why, "configuration reload");
                if reload_config(&mut core, config_path.as_deref()).is_ok() {
                    if let Some(cfg) = core.config() {
                        webhooks.reconfigure(&cfg);
                        if let Some(w) = &voicemail {
                            crate::voicemail::reconfigure(w, &cfg);
                        }
                    }
                }
                set_trunk_tls_names(&core, &transports);
            }
            Some(req) = admin_reload_rx.recv() => {
                info!(trigger = "admin", "configuration reload");
                let result = reload_config(&mut core, config_path.as_deref());
                if result.is_ok() {
                    if let Some(cfg) = core.config() {
                        webhooks.reconfigure(&cfg);
                        if let Some(w) = &voicemail {
                            crate::voicemail::reconfigure(w, &cfg);
                        }
                    }
                }
                req.respond(result);
                set_trunk_tls_names(&core, &transports);
            }
            Some(req) = admin_rx.recv() => match req {
                crate::admin::CoreRequest::Ping(p) => p.pong(),
                crate::admin::CoreRequest::Command(c) => {
                    let r = core.command(&c.args);
                    info!(command = %c.args.join(" "), result = ?r, "ctl");
                    c.respond(r);
                }
            },
            ev = shutdown.next() => match ev {
                crate::lifecycle::StopEvent::Begin => {
                    core.begin_shutdown();
                    core.stop_trunks(Instant::now());
                }
                // The core ends the remaining calls here (their BYEs go out below).
                crate::lifecycle::StopEvent::Stop => core.end_calls(Instant::now()),
            },
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { peer, data } => {
                    if let Err(e) = transports.send(peer.transport, peer.addr, peer.conn, data) {
                        if let Some(suppressed) = send_failed_log.check(Instant::now()) {
                            warn!(error = %e, suppressed, "send failed");
                        }
                        core.transport_error(peer);
                    }
                }
                Output::Resolve { id, name, rtype } => dns.resolve(id, name, rtype),
                // Latest-wins channel to one writer thread: writes stay in order.
                Output::SaveBindings { path, data } => {
                    state_writer.send((path, data));
                }
                Output::Cdr { file, cdr } => cdr_writer.write(file, cdr),
                Output::Event(data) => webhooks.push(data),
            }
        }
        // A trunk that just registered makes /readyz 200 now, not on the next tick.
        if core.take_trunks_changed() {
            publish_trunks(&core);
        }
        if let Some(data) = core.take_state_save() {
            features_writer.send((state_path.clone(), data));
            features.publish(core.features_json());
        }
        admin.metrics().calls_active.set_count(core.active_calls());
        for d in core.take_ended_calls() {
            admin.metrics().call_ended(d);
        }
        if shutdown.is_stopping() {
            break;
        }
    }
    // Let the BYEs of ended calls (their CDRs are written when the BYE transaction completes) and
    // the trunks' un-REGISTER (with a digest round) finish, bounded: a pod being replaced must
    // release its addresses quickly.
    let drain_until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while (!core.trunks_stopped() || core.active_calls() > 0)
        && tokio::time::Instant::now() < drain_until
    {
        let deadline = core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(drain_until, |d| d.min(drain_until));
        tokio::select! {
            Some(Inbound::Message(msg, flow)) = in_rx.recv() => core.handle_message(Instant::now(), SystemTime::now(), &msg, flow),
            _ = tokio::time::sleep_until(deadline) => core.handle_timeout(Instant::now()),
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { peer, data } => {
                    let _ = transports.send(peer.transport, peer.addr, peer.conn, data);
                }
                // DNS is not started any more while stopping (the trunks stopped their lookups).
                Output::Resolve { .. } => {}
                // Written below, synchronously, with the final state.
                Output::SaveBindings { .. } => {}
                Output::Cdr { file, cdr } => cdr_writer.write(file, cdr),
                Output::Event(data) => webhooks.push(data),
            }
        }
    }
    state_writer.finish(core.bindings_snapshot());
    features_writer.finish(core.state_bytes().map(|d| (state_path.clone(), d)));
    // The CDRs of the calls ended by the stop are on disk before the process exits.
    cdr_writer.finish();
    shutdown.finish();
    Ok(())
}

/// Validates the config file and, when valid, swaps dialplan, users and groups for the next
/// calls; an invalid file is logged and the running configuration stays.
fn reload_config(core: &mut Core, path: Option<&Path>) -> Result<String, String> {
    let Some(path) = path else {
        return Err("running on the embedded default configuration: nothing to reload".into());
    };
    match crate::calls::load_for_reload(path) {
        Ok(cfg) => {
            let summary = format!(
                "{} users, {} groups, {} dialplan rules",
                cfg.users.len(),
                cfg.groups.len(),
                cfg.dialplan.len()
            );
            core.reload(Instant::now(), Arc::new(cfg));
            info!(file = %path.display(), %summary, "configuration reloaded (listen addresses, ports and media settings need a restart)");
            Ok(summary)
        }
        Err(e) => {
            error!(file = %path.display(), "configuration reload rejected, the running configuration stays:\n{e}");
            Err(e)
        }
    }
}

/// SUBSCRIBE/NOTIFY counters and the subscription table's bounds in `/metrics`.
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

/// `trunk` events: a trunk that registers came up or went down since the last tick.
fn trunk_events(
    core: &Core,
    seen: &mut std::collections::HashMap<String, bool>,
    webhooks: &mut crate::webhooks::Webhooks,
) {
    let reasons = core.trunks().readiness();
    for h in core.trunks().health() {
        let Some(up) = h.registered else { continue };
        let before = seen.insert(h.name.clone(), up);
        // The first "down" at start is not news (registering takes a moment); the first "up" is.
        if before == Some(up) || (before.is_none() && !up) {
            continue;
        }
        let reason = reasons
            .iter()
            .find(|(n, _)| *n == h.name)
            .and_then(|(_, why)| why.clone());
        webhooks.push(podpbx_events::Data::Trunk {
            trunk: h.name.clone(),
            state: if up { "up" } else { "down" },
            reason: if up { None } else { reason },
        });
    }
    seen.retain(|n, _| core.trunks().health().iter().any(|h| &h.name == n));
}

/// Adds what the relay forwarded and dropped since the last tick to the metrics (the relay's
/// counters are live: calls in progress count, once a second).
fn publish_relay_totals(
    admin: &crate::admin::Admin,
    now: podpbx_media::RelayTotals,
    seen: &mut podpbx_media::RelayTotals,
) {
    let m = admin.metrics();
    m.relay_packets
        .add(now.forwarded_packets.saturating_sub(seen.forwarded_packets));
    m.relay_bytes
        .add(now.forwarded_bytes.saturating_sub(seen.forwarded_bytes));
    let (d, s) = (&now.drops, &seen.drops);
    for (reason, n, before) in [
        ("foreign_source", d.foreign_source, s.foreign_source),
        ("malformed", d.malformed, s.malformed),
        ("not_rtp", d.not_rtp, s.not_rtp),
        ("oversize", d.oversize, s.oversize),
        ("no_destination", d.no_destination, s.no_destination),
        ("send_error", d.send_error, s.send_error),
        ("srtp", d.srtp, s.srtp),
    ] {
        if n > before {
            m.relay_dropped(reason).add(n - before);
        }
    }
    *seen = now;
}

/// Every call with media holds four sockets: lift the soft open-file limit to the hard one, or a
/// default of 1 024 would stop podpbx at about 250 calls.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                warn!(soft = lim.rlim_cur, "cannot raise the open-file limit");
            }
        }
    }
}

/// The one writer of the registrations state file: a thread that writes snapshots (write,
/// fsync, rename) in the order received, skipping to the newest when several queued up. Nothing
/// else writes the file or its temporary file: the final snapshot at shutdown goes through it
/// too ([`StateWriter::finish`]), after everything queued.
struct StateWriter {
    tx: Option<std::sync::mpsc::Sender<(std::path::PathBuf, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    fn spawn() -> StateWriter {
        let (tx, rx) = std::sync::mpsc::channel::<(std::path::PathBuf, Vec<u8>)>();
        let spawned = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                while let Ok(mut job) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        job = newer;
                    }
                    if let Err(e) = podpbx_registrar::write_atomic(&job.0, &job.1) {
                        warn!(file = %job.0.display(), error = %e, "cannot save registrations");
                    }
                }
            });
        match spawned {
            Ok(thread) => StateWriter {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                warn!(error = %e, "cannot start the state writer thread; registrations saved at exit only");
                StateWriter {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// Queues a snapshot (latest wins).
    fn send(&self, job: (std::path::PathBuf, Vec<u8>)) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// Writes `last` after everything queued and waits until it is on disk.
    fn finish(mut self, last: Option<(std::path::PathBuf, Vec<u8>)>) {
        match (self.tx.take(), self.thread.take()) {
            (Some(tx), Some(thread)) => {
                if let Some(job) = last {
                    let _ = tx.send(job);
                }
                drop(tx);
                let _ = thread.join();
            }
            // No thread: nobody else writes, so write here.
            _ => {
                if let Some((path, data)) = last {
                    if let Err(e) = podpbx_registrar::write_atomic(&path, &data) {
                        warn!(file = %path.display(), error = %e, "cannot save registrations");
                    }
                }
            }
        }
    }
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
        // Non-INVITE server transactions over UDP live 32 s (Timer J): 150 000 covers a sustained
        // ~2 000 requests/s, about 150 MB at worst.
        max_transactions: 150_000,
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

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
