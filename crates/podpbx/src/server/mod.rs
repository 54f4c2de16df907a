//! `podpbx run`: the tokio shell around the sans-IO core, in two steps.
//!
//! * [`build`]: from the configuration, everything the loop needs: the pinned addresses
//!   checked, the transports bound, the registrar with its restored bindings, the trunks, the
//!   relay, the admin listeners, the writer threads, one OS seed for every id generator, and
//!   the core ([`build::core_config`], [`build::registrar_settings`] are shared with the
//!   virtual-time harness).
//! * [`event_loop`]: the loop: it waits for the next event (a message, the core's deadline, a
//!   DNS answer, a relay or voicemail event, a reload, an admin request, a stop signal, the 1 s
//!   status tick), hands it to the core with `now`, and performs the core's outputs.
//! * [`heap`]: the allocator's policy, and handing freed memory back to the kernel after a load.

mod build;
mod event_loop;
mod heap;

pub(crate) use heap::release_free_heap;

#[cfg(test)]
pub(crate) use build::{core_config, registrar_settings};

use crate::cli::LogFormat;
use podpbx_config::Config;
use std::path::Path;
use std::process::ExitCode;
use tracing::{error, warn};

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
    crate::reload::warn_trunk_exposure(&cfg);
    raise_open_file_limit();
    heap::separate_large_allocations();
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

/// Builds everything from `cfg`, then runs the loop until the process stops.
async fn serve(cfg: Config, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
    build::build(cfg, config_path).await?.run().await
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
