//! The CDR file: the core emits each ended call as [`crate::core::Output::Cdr`]; this writer
//! thread appends them as JSON lines, so a slow or full volume never stalls signalling.

use podpbx_b2bua::Cdr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tracing::warn;

/// CDRs queued for the writer at most; beyond it they are dropped and counted in the log (the
/// call itself is long over; signalling must not wait for a disk).
const QUEUE: usize = 10_000;

/// Appends CDRs as JSON lines, one `write(2)` per call.
#[derive(Debug)]
struct CdrFile {
    path: PathBuf,
    /// Kept open (append mode) so a CDR costs one write(2), not open/write/close per call.
    file: Option<std::fs::File>,
}

impl CdrFile {
    fn new(path: PathBuf) -> CdrFile {
        create_parent(&path);
        CdrFile { path, file: None }
    }

    fn write(&mut self, cdr: &Cdr) {
        let mut line = match serde_json::to_string(cdr) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "CDR not serialisable");
                return;
            }
        };
        line.push('\n');
        if self.file.is_none() {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            // CDRs name who called whom: readable by podpbx only (also a file an older version
            // created with the umask's mode).
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .ok();
            if let Some(f) = &self.file {
                let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
            }
        }
        let res = match self.file.as_mut() {
            // One write of the whole line: O_APPEND keeps lines whole even if rotated underneath.
            Some(f) => f.write_all(line.as_bytes()),
            None => Err(std::io::Error::other("cannot open the CDR file")),
        };
        if res.is_err() {
            // Reopen next time (the file may have been moved away by log rotation).
            self.file = None;
        }
        if let Err(e) = res {
            warn!(file = %self.path.display(), error = %e, "cannot write CDR");
        }
    }
}

/// Creates the directory of a CDR file (at start and for a new path), as an operator expects
/// it to exist before the first call.
pub fn create_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
}

/// The shell's CDR writer: a thread that appends what [`CdrWriter::write`] queues.
pub struct CdrWriter {
    tx: Option<mpsc::SyncSender<(PathBuf, Box<Cdr>)>>,
    thread: Option<JoinHandle<()>>,
    dropped: u64,
}

impl CdrWriter {
    /// Starts the writer thread.
    pub fn start() -> Result<CdrWriter, String> {
        let (tx, rx) = mpsc::sync_channel::<(PathBuf, Box<Cdr>)>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || {
                let mut file: Option<CdrFile> = None;
                while let Ok((path, cdr)) = rx.recv() {
                    if file.as_ref().is_none_or(|f| f.path != path) {
                        file = Some(CdrFile::new(path));
                    }
                    if let Some(f) = file.as_mut() {
                        f.write(&cdr);
                    }
                }
            })
            .map_err(|e| format!("cannot start the CDR writer thread: {e}"))?;
        Ok(CdrWriter {
            tx: Some(tx),
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// Queues a CDR for `path`; never blocks.
    pub fn write(&mut self, path: PathBuf, cdr: Box<Cdr>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send((path, cdr)).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    "CDR writer behind: CDRs dropped (is the CDR volume slow or full?)"
                );
            }
        }
    }

    /// Writes what is queued and stops the thread (at exit: no CDR is lost to a stop).
    pub fn finish(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
