//! The CDR file: the core emits each ended call as [`crate::core::Output::Cdr`]; this writer
//! thread appends them as JSON lines, so a slow or full volume never stalls signalling.
//!
//! The writer wakes at most every [`BATCH_PAUSE`]: after a batch it sleeps, and the CDRs of
//! calls that end meanwhile wait in the channel, so the signalling thread's send wakes nobody
//! (no futex call) and the batch costs one `write(2)` for all of them. At 200 calls/s that is
//! about 0.2 system calls per call instead of three (wake, write, wait).

use podpbx_b2bua::Cdr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tracing::warn;

/// CDRs queued for the writer at most; beyond it they are dropped and counted in the log (the
/// call itself is long over; signalling must not wait for a disk).
const QUEUE: usize = 10_000;

/// Longest a CDR waits for the writer after the previous batch (a crash loses at most what ended
/// in this window, as it would lose what is still in the channel).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Appends CDRs as JSON lines, one `write(2)` per batch.
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

    /// Adds one CDR line to `buf` (written by [`CdrFile::write`]).
    fn push(buf: &mut Vec<u8>, cdr: &Cdr) {
        match serde_json::to_writer(&mut *buf, cdr) {
            Ok(()) => buf.push(b'\n'),
            Err(e) => warn!(error = %e, "CDR not serialisable"),
        }
    }

    /// Appends `buf` (whole lines) and empties it.
    fn write(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
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
            // One write of whole lines: O_APPEND keeps them whole even if rotated underneath.
            Some(f) => f.write_all(buf),
            None => Err(std::io::Error::other("cannot open the CDR file")),
        };
        buf.clear();
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
                let mut buf = Vec::new();
                // Blocks for the first CDR of a batch; the rest are what queued meanwhile.
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some((path, cdr)) = next.take() {
                        if file.as_ref().is_none_or(|f| f.path != path) {
                            // A new path (reload): what is buffered belongs to the old one.
                            if let Some(f) = file.as_mut() {
                                f.write(&mut buf);
                            }
                            file = Some(CdrFile::new(path));
                        }
                        CdrFile::push(&mut buf, &cdr);
                        next = rx.try_recv().ok();
                    }
                    if let Some(f) = file.as_mut() {
                        f.write(&mut buf);
                    }
                    // Let the next CDRs gather in the channel (see the module docs). At exit
                    // the sender is dropped and the loop ends once the channel is drained.
                    std::thread::sleep(BATCH_PAUSE);
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

#[cfg(test)]
mod tests {
    use super::*;
    use podpbx_b2bua::Disposition;

    fn cdr(id: u64) -> Box<Cdr> {
        Box::new(Cdr {
            id,
            start: "2026-12-05T07:00:00Z".into(),
            answer: None,
            end: "2026-12-05T07:00:01Z".into(),
            duration_secs: 1.0,
            billsec: 0.0,
            caller: "101".into(),
            trunk: None,
            callee: "102".into(),
            answered_by: None,
            rule: None,
            disposition: Disposition::NoAnswer,
            status: 480,
            hangup_by: None,
            reason: "timeout".into(),
            transferred_to: None,
            legs: Vec::new(),
        })
    }

    fn ids(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
                v["id"].as_u64().expect("id")
            })
            .collect()
    }

    /// CDRs queued in bursts (while the writer pauses between batches) and across a change of
    /// file all land, whole, in order, in their own file; finish() writes what is still queued.
    #[test]
    fn batches_keep_every_cdr_in_order_and_in_its_file() {
        let dir = std::env::temp_dir().join(format!("podpbx-cdr-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (dir.join("a/cdr.jsonl"), dir.join("b/cdr.jsonl"));
        let mut w = CdrWriter::start().unwrap();
        for id in 0..50 {
            w.write(a.clone(), cdr(id));
        }
        // Let the first batch go out, then queue more while the writer pauses.
        std::thread::sleep(std::time::Duration::from_millis(20));
        for id in 50..100 {
            w.write(a.clone(), cdr(id));
        }
        for id in 100..130 {
            w.write(b.clone(), cdr(id));
        }
        for id in 130..140 {
            w.write(a.clone(), cdr(id));
        }
        w.finish();
        let want_a: Vec<u64> = (0..100).chain(130..140).collect();
        assert_eq!(ids(&a), want_a);
        assert_eq!(ids(&b), (100..130).collect::<Vec<u64>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
