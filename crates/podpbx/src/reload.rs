//! Configuration reload: SIGHUP, `POST /api/reload` and a changed config file (a Kubernetes
//! ConfigMap update swaps the `..data` symlink; polled every 2 s, following symlinks) all take
//! the same path: the file is validated and, when valid, the core takes the new dialplan,
//! users, groups, trunks and features for the next calls; an invalid file is logged and the
//! running configuration stays.

use crate::core::Core;
use podpbx_config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info};

/// How often the config file is looked at.
const POLL: Duration = Duration::from_secs(2);

/// Starts watching SIGHUP and (with a file) the file's fingerprint; each trigger arrives on the
/// returned channel with its name.
pub fn watch(config_path: Option<PathBuf>) -> Result<mpsc::Receiver<&'static str>, String> {
    let (tx, rx) = mpsc::channel::<&'static str>(4);
    {
        let tx = tx.clone();
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
    if let Some(path) = config_path {
        tokio::spawn(async move {
            let mut last = fingerprint(&path);
            loop {
                tokio::time::sleep(POLL).await;
                let now = fingerprint(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send("config file changed").await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    Ok(rx)
}

/// Validates the config file and, when valid, hands it to the core; an invalid file is logged
/// and the running configuration stays. `Ok` carries a summary for `POST /api/reload`.
pub fn reload(core: &mut Core, path: Option<&Path>) -> Result<String, String> {
    let Some(path) = path else {
        return Err("running on the embedded default configuration: nothing to reload".into());
    };
    match load(path) {
        Ok(cfg) => {
            let summary = format!(
                "{} users, {} groups, {} dialplan rules",
                cfg.users.len(),
                cfg.groups.len(),
                cfg.dialplan.len()
            );
            warn_trunk_exposure(&cfg);
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

/// Logs every dialplan rule through which a source proven only by its address (a device
/// identified by source, a trunk's networks) reaches a trunk: at start and on every reload.
pub fn warn_trunk_exposure(cfg: &Config) {
    for w in cfg.trunk_exposure_warnings() {
        tracing::warn!(target: "podpbx::security", "{w}");
    }
}

/// Reads and validates the config file for a reload; every problem on its own line.
fn load(path: &Path) -> Result<Config, String> {
    podpbx_config::check(path).map_err(|errs| podpbx_config::format_errors(&errs))
}

/// A cheap fingerprint of the config file (following symlinks, as Kubernetes swaps `..data`):
/// modification time, inode and length. `None` when it cannot be read.
fn fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}
