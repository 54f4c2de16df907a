//! The registrations file's one writer: the core emits the file's content
//! ([`crate::core::Output::SaveBindings`]); this thread writes it, off the signalling loop.

use tracing::warn;

/// The one writer of the registrations state file: a thread that writes snapshots (write,
/// fsync, rename) in the order received, skipping to the newest when several queued up. Nothing
/// else writes the file or its temporary file: the final snapshot at shutdown goes through it
/// too ([`StateWriter::finish`]), after everything queued.
pub struct StateWriter {
    tx: Option<std::sync::mpsc::Sender<(std::path::PathBuf, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    pub fn spawn() -> StateWriter {
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
    pub fn send(&self, job: (std::path::PathBuf, Vec<u8>)) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// Writes `last` after everything queued and waits until it is on disk.
    pub fn finish(mut self, last: Option<(std::path::PathBuf, Vec<u8>)>) {
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
