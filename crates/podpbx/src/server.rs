//! `podpbx run`: the tokio shell around the sans-IO core. Loads the config, checks the pinned
//! addresses are really here, binds the transports and drives the core with messages and time.

use crate::cli::LogFormat;
use crate::core::{Core, CoreConfig, Output};
use crate::stats::Stats;
use crate::transport::{Inbound, TransportConfig, Transports};
use podpbx_config::Config;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use podpbx_sip::transaction::{Peer, Timers};
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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg)) {
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
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
        max_message: cfg.sip.max_message_bytes,
    };
    let transports = Transports::bind(tcfg, stats.clone(), in_tx).await?;
    let timers = Timers { t1: cfg.sip.t1, t2: cfg.sip.t2, t4: cfg.sip.t4 };
    let core_cfg = CoreConfig { user_agent: cfg.sip.user_agent.clone(), timers, max_transactions: 50_000 };
    let mut core = Core::new(core_cfg, stats.clone());
    info!(udp = ?transports.udp_addrs(), tcp = ?transports.tcp_addrs(), "podpbx ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install SIGTERM handler: {e}"))?;
    loop {
        let deadline = core.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            msg = in_rx.recv() => {
                let Some(Inbound::Message(msg, flow)) = msg else { break };
                core.handle_message(Instant::now(), &msg, flow);
            }
            _ = sleep_until_opt(deadline) => core.handle_timeout(Instant::now()),
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { info!("interrupt: stopping"); break; }
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { transport, dest, conn, data } => {
                    if let Err(e) = transports.send(transport, dest, conn, data).await {
                        warn!(error = %e, "send failed");
                        core.transport_error(Peer { addr: dest, transport, conn });
                    }
                }
            }
        }
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
