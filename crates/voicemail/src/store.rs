//! Mailboxes on the data volume.
//!
//! ```text
//! <root>/<mailbox>/<id>.wav          the message, 8 kHz mono 16-bit PCM
//! <root>/<mailbox>/<id>.json         its sidecar: caller, time, duration, heard
//! <root>/<mailbox>/<id>.wav.part     a recording in progress (streamed)
//! <root>/<mailbox>/<id>.part.json    who is leaving it (for recovery)
//! <root>/<mailbox>/greeting.wav      the owner's own greeting, if uploaded
//! ```
//!
//! Nothing is lost on a restart: a recording is streamed to `.wav.part` (flushed every
//! second by the worker); finishing syncs it, renames it to `.wav`, then writes the sidecar
//! (temporary file, sync, rename) and syncs the directory. [`Store::open`] finishes what a
//! crash interrupted: a `.wav.part` gets its header repaired and becomes a message (marked
//! `recovered`), a `.wav` without sidecar gets one rebuilt, a sidecar without audio (a delete
//! cut short) is removed. Deleting removes the audio first, then the sidecar. Files are 0600,
//! folders 0700: messages are private.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::prompts::Clip;
use crate::wav::{self, WavError, WavWriter, SAMPLE_RATE};

/// Longest own greeting accepted.
pub const MAX_GREETING_SECS: u32 = 60;
/// Largest greeting upload accepted (60 s of 16-bit PCM plus room for extra chunks).
pub const MAX_GREETING_BYTES: usize = 1_100_000;

/// A message's sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Store id (also the file name).
    pub id: String,
    /// The mailbox (user) it was left for.
    pub mailbox: String,
    /// Who called: the caller's number or user name.
    pub caller: String,
    /// The caller's display name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_name: Option<String>,
    /// When the recording started, RFC 3339 UTC.
    pub time: String,
    /// The same as Unix seconds.
    pub unix_time: u64,
    /// Length of the audio.
    pub duration_secs: f64,
    /// Listened to (an "old" message).
    pub heard: bool,
    /// Rebuilt at start-up after podpbx stopped while it was recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

/// Who is leaving a message, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Number or user name.
    pub caller: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_name: Option<String>,
    /// Wall-clock start, Unix milliseconds.
    pub unix_ms: u64,
}

/// A recording in progress.
#[derive(Debug)]
pub struct Recorder {
    mailbox: String,
    id: String,
    caller: Caller,
    writer: WavWriter,
}

impl Recorder {
    /// Appends audio.
    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        self.writer.write(samples)
    }

    /// Pushes buffered audio to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// The mailbox it is for.
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }
}

/// Why a greeting upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum GreetingError {
    /// Not a WAV file we can play.
    #[error("{0}")]
    Wav(#[from] WavError),
    /// Larger than [`MAX_GREETING_BYTES`].
    #[error("upload too large: {0} bytes, at most {MAX_GREETING_BYTES} are accepted ({MAX_GREETING_SECS} s of 8 kHz 16-bit mono)")]
    TooLarge(usize),
    /// No such mailbox.
    #[error("no voicemail box `{0}`")]
    NoMailbox(String),
    /// Writing failed.
    #[error("cannot store the greeting: {0}")]
    Io(#[from] io::Error),
}

/// Message counts of a mailbox (what MWI shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Not listened to.
    pub new: usize,
    /// Listened to.
    pub old: usize,
}

/// The mailboxes.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    max_messages: usize,
    /// Messages per mailbox, oldest first.
    boxes: HashMap<String, Vec<Meta>>,
    /// Ids handed out this run (unique within one millisecond).
    seq: u64,
}

/// A mailbox name that is safe as a folder name.
pub fn valid_mailbox(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// A message id as we make them (`<unix ms>-<n>`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

fn mkdir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

fn create(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

/// Writes `bytes` to `path` atomically (temporary file, sync, rename, sync the folder).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn meta_for(mailbox: &str, id: &str, c: &Caller, samples: u64, recovered: bool) -> Meta {
    let t = UNIX_EPOCH + Duration::from_millis(c.unix_ms);
    Meta {
        id: id.to_string(),
        mailbox: mailbox.to_string(),
        caller: c.caller.clone(),
        caller_name: c.caller_name.clone(),
        time: podpbx_sip::time::rfc3339(t),
        unix_time: c.unix_ms / 1000,
        duration_secs: (samples as f64 / SAMPLE_RATE as f64 * 100.0).round() / 100.0,
        heard: false,
        recovered,
    }
}

impl Store {
    /// Opens (creating) the store under `root` for `mailboxes`, finishing what an earlier run
    /// left half done. Returns warnings about what was repaired or dropped.
    pub fn open(
        root: &Path,
        mailboxes: &[String],
        max_messages: usize,
    ) -> io::Result<(Store, Vec<String>)> {
        mkdir(root)?;
        let mut store = Store {
            root: root.to_path_buf(),
            max_messages,
            boxes: HashMap::new(),
            seq: 0,
        };
        let mut warnings = Vec::new();
        for m in mailboxes.iter().filter(|m| valid_mailbox(m)) {
            let dir = root.join(m);
            mkdir(&dir)?;
            let list = store.scan(m, &dir, &mut warnings)?;
            store.boxes.insert(m.clone(), list);
        }
        Ok((store, warnings))
    }

    /// Reads one mailbox folder, recovering interrupted writes.
    fn scan(&self, mailbox: &str, dir: &Path, warnings: &mut Vec<String>) -> io::Result<Vec<Meta>> {
        let mut ids = Vec::new();
        let mut parts = Vec::new();
        let mut sidecars = Vec::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".wav.part") {
                parts.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".part.json") {
                // Handled with its .wav.part; alone it is stale.
                if !dir.join(format!("{id}.wav.part")).exists()
                    && !dir.join(format!("{id}.wav")).exists()
                {
                    let _ = fs::remove_file(dir.join(&name));
                }
            } else if let Some(id) = name.strip_suffix(".json") {
                sidecars.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".wav") {
                if valid_id(id) {
                    ids.push(id.to_string());
                }
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
        // Recordings cut short: repair and promote.
        for id in parts.iter().filter(|id| valid_id(id)) {
            let part = dir.join(format!("{id}.wav.part"));
            let mut f = OpenOptions::new().read(true).write(true).open(&part)?;
            match wav::repair(&mut f) {
                Ok(0) | Err(_) => {
                    let _ = fs::remove_file(&part);
                    let _ = fs::remove_file(dir.join(format!("{id}.part.json")));
                    continue;
                }
                Ok(_) => {}
            }
            fs::rename(&part, dir.join(format!("{id}.wav")))?;
            ids.push(id.clone());
        }
        let mut list = Vec::new();
        for id in &ids {
            let json = dir.join(format!("{id}.json"));
            let meta = fs::read(&json)
                .ok()
                .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
                .filter(|m| m.id == *id && m.mailbox == mailbox);
            let meta = match meta {
                Some(m) => m,
                None => {
                    // No (or an unreadable) sidecar: rebuild it from what is known.
                    let wav_path = dir.join(format!("{id}.wav"));
                    let samples = fs::metadata(&wav_path)
                        .map(|m| m.len().saturating_sub(wav::HEADER_LEN as u64) / 2)
                        .unwrap_or(0);
                    let caller = fs::read(dir.join(format!("{id}.part.json")))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Caller>(&b).ok())
                        .unwrap_or_else(|| Caller {
                            caller: "unknown".into(),
                            caller_name: None,
                            unix_ms: id
                                .split('-')
                                .next()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0),
                        });
                    let m = meta_for(mailbox, id, &caller, samples, true);
                    write_atomic(&json, &serde_json::to_vec_pretty(&m).unwrap_or_default())?;
                    warnings.push(format!(
                        "voicemail {mailbox}/{id}: recovered a message interrupted by a restart ({:.1} s)",
                        m.duration_secs
                    ));
                    m
                }
            };
            let _ = fs::remove_file(dir.join(format!("{id}.part.json")));
            list.push(meta);
        }
        // Sidecars without audio: a delete cut short.
        for id in sidecars.iter().filter(|id| !ids.contains(id)) {
            let _ = fs::remove_file(dir.join(format!("{id}.json")));
        }
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// The folder holding the mailboxes.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The messages of `mailbox`, oldest first.
    pub fn list(&self, mailbox: &str) -> &[Meta] {
        self.boxes.get(mailbox).map_or(&[], Vec::as_slice)
    }

    /// Mailboxes the store knows, with their counts.
    pub fn mailboxes(&self) -> impl Iterator<Item = (&str, Counts)> {
        self.boxes.keys().map(|m| (m.as_str(), self.counts(m)))
    }

    /// New and old counts.
    pub fn counts(&self, mailbox: &str) -> Counts {
        let list = self.list(mailbox);
        let new = list.iter().filter(|m| !m.heard).count();
        Counts {
            new,
            old: list.len() - new,
        }
    }

    /// Whether `mailbox` exists.
    pub fn has(&self, mailbox: &str) -> bool {
        self.boxes.contains_key(mailbox)
    }

    /// Whether no further message fits.
    pub fn is_full(&self, mailbox: &str) -> bool {
        self.list(mailbox).len() >= self.max_messages
    }

    /// Total messages held (for the metrics).
    pub fn total(&self) -> usize {
        self.boxes.values().map(Vec::len).sum()
    }

    /// The per-mailbox bound.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    fn dir(&self, mailbox: &str) -> PathBuf {
        self.root.join(mailbox)
    }

    /// Starts recording a message for `mailbox`.
    pub fn begin(&mut self, mailbox: &str, caller: Caller) -> io::Result<Recorder> {
        if !self.has(mailbox) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such mailbox"));
        }
        self.seq += 1;
        let id = format!("{}-{}", caller.unix_ms, self.seq);
        let dir = self.dir(mailbox);
        write_atomic(
            &dir.join(format!("{id}.part.json")),
            &serde_json::to_vec(&caller).unwrap_or_default(),
        )?;
        let file = create(&dir.join(format!("{id}.wav.part")))?;
        Ok(Recorder {
            mailbox: mailbox.to_string(),
            id,
            caller,
            writer: WavWriter::create(file)?,
        })
    }

    /// Finishes a recording keeping `keep` samples; `keep == 0` drops it. Returns the stored
    /// message.
    pub fn commit(&mut self, rec: Recorder, keep: u64) -> io::Result<Option<Meta>> {
        let dir = self.dir(&rec.mailbox);
        let part = dir.join(format!("{}.wav.part", rec.id));
        let part_json = dir.join(format!("{}.part.json", rec.id));
        if keep == 0 {
            drop(rec.writer);
            let _ = fs::remove_file(&part);
            let _ = fs::remove_file(&part_json);
            return Ok(None);
        }
        let samples = rec.writer.finish(keep)?;
        fs::rename(&part, dir.join(format!("{}.wav", rec.id)))?;
        let meta = meta_for(&rec.mailbox, &rec.id, &rec.caller, samples, false);
        self.write_meta(&meta)?;
        let _ = fs::remove_file(&part_json);
        let list = self.boxes.entry(rec.mailbox.clone()).or_default();
        list.push(meta.clone());
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some(meta))
    }

    fn write_meta(&self, meta: &Meta) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        write_atomic(
            &self.dir(&meta.mailbox).join(format!("{}.json", meta.id)),
            &json,
        )
    }

    /// The audio of a message.
    pub fn load(&self, mailbox: &str, id: &str) -> io::Result<Clip> {
        if !self.list(mailbox).iter().any(|m| m.id == id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such message"));
        }
        let bytes = fs::read(self.dir(mailbox).join(format!("{id}.wav")))?;
        wav::decode(&bytes, 4 * 3600)
            .map(Clip::from)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Marks a message as listened to; `Ok(false)` if it was already (or does not exist).
    pub fn mark_heard(&mut self, mailbox: &str, id: &str) -> io::Result<bool> {
        let Some(m) = self
            .boxes
            .get_mut(mailbox)
            .and_then(|l| l.iter_mut().find(|m| m.id == id))
        else {
            return Ok(false);
        };
        if m.heard {
            return Ok(false);
        }
        m.heard = true;
        let m = m.clone();
        self.write_meta(&m)?;
        Ok(true)
    }

    /// Deletes a message (audio first, then the sidecar); `Ok(false)` if there is none.
    pub fn delete(&mut self, mailbox: &str, id: &str) -> io::Result<bool> {
        let Some(list) = self.boxes.get_mut(mailbox) else {
            return Ok(false);
        };
        let Some(i) = list.iter().position(|m| m.id == id) else {
            return Ok(false);
        };
        list.remove(i);
        let dir = self.dir(mailbox);
        match fs::remove_file(dir.join(format!("{id}.wav"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_file(dir.join(format!("{id}.json")));
        sync_dir(&dir.join("x"))?;
        Ok(true)
    }

    /// The owner's own greeting, if one was uploaded and is readable.
    pub fn greeting(&self, mailbox: &str) -> Option<Clip> {
        let bytes = fs::read(self.dir(mailbox).join("greeting.wav")).ok()?;
        wav::decode(&bytes, MAX_GREETING_SECS).ok().map(Clip::from)
    }

    /// Validates and stores an uploaded greeting (any of the formats [`wav::decode`] takes; it
    /// is stored as 16-bit PCM). Returns its length.
    pub fn set_greeting(
        &mut self,
        mailbox: &str,
        upload: &[u8],
    ) -> Result<Duration, GreetingError> {
        if !self.has(mailbox) {
            return Err(GreetingError::NoMailbox(mailbox.to_string()));
        }
        write_greeting(&self.root, mailbox, upload)
    }

    /// Removes the own greeting (the default one plays again); `Ok(false)` if there was none.
    pub fn remove_greeting(&mut self, mailbox: &str) -> io::Result<bool> {
        if !self.has(mailbox) {
            return Ok(false);
        }
        match fs::remove_file(self.dir(mailbox).join("greeting.wav")) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Validates an uploaded greeting (any format [`wav::decode`] takes, at most
/// [`MAX_GREETING_SECS`]) and stores it as `<root>/<mailbox>/greeting.wav` (16-bit PCM,
/// written atomically). Used by the worker and by `podpbx ctl greeting`, which writes next to
/// the running worker: the greeting file is only ever replaced whole, and read per call.
pub fn write_greeting(
    root: &Path,
    mailbox: &str,
    upload: &[u8],
) -> Result<Duration, GreetingError> {
    if !valid_mailbox(mailbox) {
        return Err(GreetingError::NoMailbox(mailbox.to_string()));
    }
    if upload.len() > MAX_GREETING_BYTES {
        return Err(GreetingError::TooLarge(upload.len()));
    }
    let samples = wav::decode(upload, MAX_GREETING_SECS)?;
    let dir = root.join(mailbox);
    mkdir(&dir)?;
    write_atomic(&dir.join("greeting.wav"), &wav::encode(&samples))?;
    Ok(Duration::from_millis(samples.len() as u64 / 8))
}

/// Removes `<root>/<mailbox>/greeting.wav`; `Ok(false)` if there was none.
pub fn delete_greeting(root: &Path, mailbox: &str) -> io::Result<bool> {
    if !valid_mailbox(mailbox) {
        return Ok(false);
    }
    match fs::remove_file(root.join(mailbox).join("greeting.wav")) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Unix milliseconds of a wall-clock time (for [`Caller::unix_ms`]).
pub fn unix_millis(t: SystemTime) -> u64 {
    unix_ms(t)
}

#[cfg(test)]
mod tests;
