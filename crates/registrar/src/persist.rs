//! The bindings file: its format (JSON, version 1), and the file operations the shell performs
//! with it. The [`crate::Registrar`] itself never touches a file: it serialises its bindings
//! ([`crate::Registrar::serialize`]) and restores them from bytes
//! ([`crate::Registrar::restore`]); the shell writes ([`write_atomic`], off the event loop) and
//! reads ([`load_file`], at start).

use crate::bindings::{Binding, Flow, Transport};
use podpbx_sip::text::{put_decimal, put_host_ip};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const FORMAT_VERSION: u32 = 1;

/// Why saving or loading failed (a corrupt file is not an error: see [`LoadReport`]).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("serialising bindings: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// What [`load_file`] / [`crate::Registrar::restore`] restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Bindings restored.
    pub loaded: usize,
    /// Bindings dropped: expired, unknown user, or beyond the user's max contacts.
    pub dropped: usize,
    /// Set when the file was unreadable as a bindings file: it was renamed to this path and the
    /// registrar started with no bindings. Log it as a warning.
    pub moved_aside: Option<PathBuf>,
    /// Human-readable warning accompanying `moved_aside`.
    pub warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FileV1 {
    pub version: u32,
    pub bindings: Vec<StoredBinding>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredBinding {
    pub aor: String,
    pub contact: String,
    pub expires_unix_ms: u64,
    pub registered_unix_ms: u64,
    #[serde(default)]
    pub q: Option<u16>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub reg_id: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub flow: StoredFlow,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default = "yes")]
    pub reachable: bool,
}

/// A binding's [`Flow`] in the file (format version 1 field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredFlow {
    /// The packet's source address (after NAT): [`Flow::remote`].
    pub source: SocketAddr,
    #[serde(with = "transport_name")]
    pub transport: Transport,
    pub local: SocketAddr,
    /// [`Flow::conn`].
    pub conn_id: u64,
}

impl From<Flow> for StoredFlow {
    fn from(f: Flow) -> StoredFlow {
        StoredFlow {
            source: f.remote,
            transport: f.transport,
            local: f.local,
            conn_id: f.conn,
        }
    }
}

impl From<StoredFlow> for Flow {
    fn from(f: StoredFlow) -> Flow {
        Flow {
            transport: f.transport,
            local: f.local,
            remote: f.source,
            conn: f.conn_id,
        }
    }
}

/// A [`Transport`] as its lower-case name (`"udp"`), in files and security events.
pub(crate) mod transport_name {
    use super::Transport;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Transport, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.param())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transport, D::Error> {
        let name = String::deserialize(d)?;
        Transport::from_name(&name)
            .filter(|t| t.param() == name)
            .ok_or_else(|| de::Error::unknown_variant(&name, &["udp", "tcp", "tls"]))
    }
}

fn yes() -> bool {
    true
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
pub(crate) fn stored(aor: &str, b: &Binding) -> StoredBinding {
    StoredBinding {
        aor: aor.to_owned(),
        contact: b.contact_uri.clone(),
        expires_unix_ms: unix_ms(b.expires_at_wall),
        registered_unix_ms: unix_ms(b.registered_at),
        q: b.q,
        instance: b.instance.clone(),
        reg_id: b.reg_id,
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        flow: b.flow.into(),
        user_agent: b.user_agent.clone(),
        reachable: b.reachable,
    }
}

/// The file's content for `bindings` (in the order given), written directly: the same JSON as
/// serde would produce from [`FileV1`], at a fraction of the cost (no intermediate copies, no
/// formatting machinery for numbers and addresses, no sorting). A save serialises every
/// binding, so this runs over the whole table once per save.
pub(crate) fn write_file<'a>(
    count: usize,
    bindings: impl Iterator<Item = (&'a str, &'a Binding)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + count * 320);
    out.extend_from_slice(b"{\"version\":");
    put_decimal(&mut out, u64::from(FORMAT_VERSION));
    out.extend_from_slice(b",\"bindings\":[");
    for (i, (aor, b)) in bindings.enumerate() {
        let registered = &unix_ms(b.registered_at);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"aor\":");
        push_str(&mut out, aor);
        out.extend_from_slice(b",\"contact\":");
        push_str(&mut out, &b.contact_uri);
        out.extend_from_slice(b",\"expires_unix_ms\":");
        put_decimal(&mut out, unix_ms(b.expires_at_wall));
        out.extend_from_slice(b",\"registered_unix_ms\":");
        put_decimal(&mut out, *registered);
        out.extend_from_slice(b",\"q\":");
        match b.q {
            Some(q) => put_decimal(&mut out, u64::from(q)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"instance\":");
        match &b.instance {
            Some(v) => push_str(&mut out, v),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"reg_id\":");
        match b.reg_id {
            Some(r) => put_decimal(&mut out, u64::from(r)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"call_id\":");
        push_str(&mut out, &b.call_id);
        out.extend_from_slice(b",\"cseq\":");
        put_decimal(&mut out, u64::from(b.cseq));
        out.extend_from_slice(b",\"flow\":{\"source\":");
        push_addr(&mut out, b.flow.remote);
        out.extend_from_slice(b",\"transport\":\"");
        out.extend_from_slice(b.flow.transport.param().as_bytes());
        out.extend_from_slice(b"\",\"local\":");
        push_addr(&mut out, b.flow.local);
        out.extend_from_slice(b",\"conn_id\":");
        put_decimal(&mut out, b.flow.conn);
        out.extend_from_slice(b"},\"user_agent\":");
        match &b.user_agent {
            Some(v) => push_str(&mut out, v),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(if b.reachable {
            b",\"reachable\":true}"
        } else {
            b",\"reachable\":false}"
        });
    }
    out.extend_from_slice(b"]}");
    out
}

/// A JSON string: `"` and `\` escaped, control characters as `\u00XX` (as serde_json does).
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A socket address as a JSON string (`"192.0.2.1:5060"`, `"[2001:db8::1]:5060"`).
fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    out.push(b'"');
    put_host_ip(out, a.ip());
    out.push(b':');
    put_decimal(out, u64::from(a.port()));
    out.push(b'"');
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PersistError {
    let path = path.to_owned();
    move |source| PersistError::Io { op, path, source }
}

/// Writes `data` to `path` atomically: a temporary file in the same directory is written and
/// fsynced, renamed over `path`, then the directory is fsynced. The file is created `0600`
/// (registrations name users, devices and their addresses). The temporary file's name is fixed
/// per process, so callers must make sure only one writer runs at a time (podpbx has one
/// writer thread); a leftover from a crash is removed first, so the new file never inherits
/// another mode.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), PersistError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bindings".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &tmp)(e)),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("rename", path))?;
        let d = File::open(&dir).map_err(io_err("open", &dir))?;
        d.sync_all().map_err(io_err("fsync", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Parses a bindings file's content.
pub(crate) fn parse(data: &[u8]) -> Result<FileV1, String> {
    match serde_json::from_slice::<FileV1>(data) {
        Ok(f) if f.version == FORMAT_VERSION => Ok(f),
        Ok(f) => Err(format!("unsupported format version {}", f.version)),
        Err(e) => Err(e.to_string()),
    }
}

/// The shell's start-up load: restores `registrar` from `path`. A missing file loads nothing.
/// A file that is not a valid bindings file is renamed to `<name>.corrupt-<unix-ts>`, reported
/// in [`LoadReport::moved_aside`] / `warning`, and the registrar starts with no bindings.
pub fn load_file(
    registrar: &mut crate::Registrar,
    path: &Path,
    now: std::time::Instant,
    wall_now: SystemTime,
) -> Result<LoadReport, PersistError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadReport::default()),
        Err(e) => {
            return Err(PersistError::Io {
                op: "read",
                path: path.to_owned(),
                source: e,
            })
        }
    };
    match registrar.restore(&data, now, wall_now) {
        Ok(report) => Ok(report),
        Err(why) => {
            let moved = move_aside(path, wall_now)?;
            Ok(LoadReport {
                warning: Some(format!(
                    "bindings file {} is corrupt ({why}); moved aside to {}, starting with no registrations",
                    path.display(),
                    moved.display()
                )),
                moved_aside: Some(moved),
                ..LoadReport::default()
            })
        }
    }
}

/// Renames a corrupt file to `<name>.corrupt-<unix-seconds>` next to it.
pub(crate) fn move_aside(path: &Path, wall_now: SystemTime) -> Result<PathBuf, PersistError> {
    let secs = unix_ms(wall_now) / 1000;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bindings".into());
    let mut target = path.with_file_name(format!("{name}.corrupt-{secs}"));
    let mut n = 1;
    while target.exists() {
        target = path.with_file_name(format!("{name}.corrupt-{secs}.{n}"));
        n += 1;
    }
    fs::rename(path, &target).map_err(io_err("rename", path))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn binding(id: u64, contact: &str, remote: &str, ua: Option<&str>) -> Binding {
        let wall = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Binding {
            id,
            contact_uri: contact.into(),
            expires_at: Instant::now(),
            expires_at_wall: wall + Duration::from_secs(3600),
            q: id.is_multiple_of(2).then_some(500),
            instance: id
                .is_multiple_of(3)
                .then(|| "<urn:uuid:0000-\"x\">".to_string()),
            reg_id: id.is_multiple_of(3).then_some(1),
            call_id: format!("call-{id}@host\\with\u{1}ctl"),
            cseq: 4_000_000_000,
            flow: Flow {
                transport: if id.is_multiple_of(2) {
                    Transport::Udp
                } else {
                    Transport::Tls
                },
                local: "[2001:db8::1]:5060".parse().unwrap(),
                remote: remote.parse().unwrap(),
                conn: id * 1_000_000_007,
            },
            registered_at: wall + Duration::from_millis(id),
            user_agent: ua.map(str::to_string),
            reachable: !id.is_multiple_of(4),
            qualify_failures: 0,
            next_qualify: None,
        }
    }

    /// The direct writer produces what serde produces from the file structs (same JSON value),
    /// so the file format stays exactly version 1, escapes included.
    #[test]
    fn direct_writer_equals_serde() {
        let list = [
            (
                "alice",
                binding(
                    1,
                    "sip:alice@192.0.2.7:5062;transport=tls",
                    "198.51.100.7:5062",
                    Some("Phone \"X\"\t1.0"),
                ),
            ),
            (
                "bob",
                binding(2, "sip:b\u{e9}b@[2001:db8::7]", "[2001:db8::7]:5060", None),
            ),
            (
                "alice",
                binding(
                    3,
                    "sip:alice@203.0.113.9",
                    "203.0.113.9:65535",
                    Some("\u{7f}\n\r"),
                ),
            ),
            (
                "carol",
                binding(4, "sip:carol@0.0.0.1:1", "0.0.0.0:0", Some("")),
            ),
        ];
        let direct = write_file(list.len(), list.iter().map(|(a, b)| (*a, b)));
        let stored: Vec<StoredBinding> = list.iter().map(|(a, b)| stored(a, b)).collect();
        let via_serde = serde_json::to_vec(&FileV1 {
            version: FORMAT_VERSION,
            bindings: stored,
        })
        .unwrap();
        let a: serde_json::Value = serde_json::from_slice(&direct).expect("valid JSON");
        let b: serde_json::Value = serde_json::from_slice(&via_serde).unwrap();
        assert_eq!(a, b);
        assert_eq!(direct, via_serde, "byte for byte");
        assert!(parse(&direct).is_ok());
    }
}
