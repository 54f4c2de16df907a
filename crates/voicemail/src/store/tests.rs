use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("podpbx-vm-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn caller(ms: u64) -> Caller {
    Caller {
        caller: "door".into(),
        caller_name: Some("Front door".into()),
        unix_ms: ms,
    }
}

fn boxes() -> Vec<String> {
    vec!["101".into(), "102".into()]
}

fn tone(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((i as f64 * 0.7).sin() * 9000.0) as i16)
        .collect()
}

#[test]
fn record_list_mark_delete() {
    let d = Dir::new("basic");
    let (mut s, w) = Store::open(&d.0, &boxes(), 3).unwrap();
    assert!(w.is_empty());
    let mut r = s.begin("101", caller(1_733_320_000_123)).unwrap();
    r.write(&tone(8000)).unwrap();
    r.write(&tone(8000)).unwrap();
    let m = s.commit(r, 12_000).unwrap().expect("kept");
    assert_eq!(m.duration_secs, 1.5);
    assert_eq!(m.caller, "door");
    assert_eq!(m.time, "2024-12-04T13:46:40.123Z");
    assert_eq!(s.counts("101"), Counts { new: 1, old: 0 });
    // Files: wav + json, 0600; no leftovers.
    let dir = d.0.join("101");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![format!("{}.json", m.id), format!("{}.wav", m.id)]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.join(format!("{}.wav", m.id)))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(format!("{}.json", m.id))).unwrap()).unwrap();
    assert_eq!(sidecar["caller"], "door");
    assert_eq!(sidecar["duration_secs"], 1.5);
    // The audio is what was written, cut to `keep`.
    let audio = s.load("101", &m.id).unwrap();
    assert_eq!(
        &audio[..],
        &tone(8000).into_iter().chain(tone(4000)).collect::<Vec<_>>()[..]
    );
    // Heard.
    assert!(s.mark_heard("101", &m.id).unwrap());
    assert!(!s.mark_heard("101", &m.id).unwrap());
    assert_eq!(s.counts("101"), Counts { new: 0, old: 1 });
    // Survives a reopen.
    drop(s);
    let (mut s, w) = Store::open(&d.0, &boxes(), 3).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        s.list("101"),
        &[Meta {
            heard: true,
            ..m.clone()
        }]
    );
    // Deleted: both files gone, also after a reopen.
    assert!(s.delete("101", &m.id).unwrap());
    assert!(!s.delete("101", &m.id).unwrap());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    drop(s);
    let (s, _) = Store::open(&d.0, &boxes(), 3).unwrap();
    assert!(s.list("101").is_empty());
}

#[test]
fn dropped_recordings_leave_nothing_and_full_is_reported() {
    let d = Dir::new("full");
    let (mut s, _) = Store::open(&d.0, &boxes(), 2).unwrap();
    let r = s.begin("102", caller(1)).unwrap();
    assert_eq!(s.commit(r, 0).unwrap(), None);
    assert_eq!(fs::read_dir(d.0.join("102")).unwrap().count(), 0);
    for i in 0..2 {
        let mut r = s.begin("102", caller(10 + i)).unwrap();
        r.write(&tone(800)).unwrap();
        s.commit(r, 800).unwrap();
    }
    assert!(s.is_full("102"));
    assert!(!s.is_full("101"));
    assert_eq!(s.total(), 2);
    assert!(s.begin("nobody", caller(1)).is_err());
    assert!(s.load("102", "../../etc/passwd").is_err());
}

#[test]
fn a_restart_mid_recording_loses_nothing() {
    let d = Dir::new("crash");
    let (mut s, _) = Store::open(&d.0, &boxes(), 10).unwrap();
    let mut r = s.begin("101", caller(1_700_000_000_000)).unwrap();
    r.write(&tone(16_000)).unwrap();
    r.flush().unwrap();
    // podpbx is killed here: the Recorder is never committed.
    std::mem::forget(r);
    drop(s);
    // Also: a sidecar-less message and a sidecar whose audio is gone.
    let dir = d.0.join("101");
    fs::write(dir.join("1700000001000-9.wav"), wav::encode(&tone(4000))).unwrap();
    fs::write(dir.join("1600000000000-1.json"), b"{}").unwrap();
    fs::write(dir.join("x.tmp"), b"junk").unwrap();
    let (s, w) = Store::open(&d.0, &boxes(), 10).unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    let list = s.list("101");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].caller, "door", "caller kept from the part sidecar");
    assert_eq!(list[0].duration_secs, 2.0);
    assert!(list[0].recovered);
    assert_eq!(list[1].caller, "unknown");
    assert_eq!(list[1].unix_time, 1_700_000_001);
    assert_eq!(&s.load("101", &list[0].id).unwrap()[..], &tone(16_000)[..]);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".wav") || n.ends_with(".json")),
        "{names:?}"
    );
    // Reopening again changes nothing.
    drop(s);
    let (s2, w) = Store::open(&d.0, &boxes(), 10).unwrap();
    assert!(w.is_empty());
    assert_eq!(s2.list("101").len(), 2);
}

#[test]
fn greetings_are_validated() {
    let d = Dir::new("greet");
    let (mut s, _) = Store::open(&d.0, &boxes(), 10).unwrap();
    assert!(s.greeting("101").is_none());
    let e = s
        .set_greeting("101", b"RIFF\x10\0\0\0WAVEjunk\0\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `fmt ` chunk"), "{e}");
    let e = s
        .set_greeting("101", &vec![0u8; MAX_GREETING_BYTES + 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("too large"), "{e}");
    let e = s
        .set_greeting("101", &wav::encode(&tone(8000 * 61)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 60 s"), "{e}");
    let e = s
        .set_greeting("nobody", &wav::encode(&tone(800)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no voicemail box"), "{e}");
    // µ-law upload stored as PCM.
    let len = s
        .set_greeting(
            "101",
            &wav::encode_g711(&tone(12_000), crate::g711::Law::Ulaw),
        )
        .unwrap();
    assert_eq!(len, Duration::from_millis(1500));
    assert_eq!(s.greeting("101").unwrap().len(), 12_000);
    assert!(s.remove_greeting("101").unwrap());
    assert!(!s.remove_greeting("101").unwrap());
    assert!(s.greeting("101").is_none());
}

#[test]
fn names() {
    assert!(valid_mailbox("101"));
    assert!(valid_mailbox("anna.b"));
    assert!(!valid_mailbox(".."));
    assert!(!valid_mailbox(".hidden"));
    assert!(!valid_mailbox("a/b"));
    assert!(!valid_mailbox(""));
    assert!(valid_id("1700000000000-1"));
    assert!(!valid_id("../x"));
    assert!(!valid_id(""));
}
