//! The worker with real sockets on loopback: a fake phone leaves a tone as a message, the WAV
//! on disk holds the tone (Goertzel), the owner logs in with the PIN and hears the tone back;
//! packets from a foreign address are dropped, the session bound is enforced.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podpbx_voicemail::g711::Law;
use podpbx_voicemail::prompts::Prompts;
use podpbx_voicemail::rtp::{Codec, Received, Receiver, Sender, FRAME};
use podpbx_voicemail::session::{EndReason, Limits};
use podpbx_voicemail::store::Counts;
use podpbx_voicemail::wav;
use podpbx_voicemail::worker::{Notice, Purpose, Worker, WorkerConfig};

/// Power of `hz` relative to the total power of `x` (0..1).
fn goertzel_share(x: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut total = 0.0;
    for &v in x {
        let v = v as f64;
        total += v * v;
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - c * s1 * s2;
    if total == 0.0 {
        return 0.0;
    }
    2.0 * p / (x.len() as f64 * total)
}

struct Phone {
    sock: UdpSocket,
    to: SocketAddr,
    tx: Sender,
    rx: Receiver,
    heard: Vec<i16>,
    seq: u16,
    ts: u32,
}

impl Phone {
    fn new(to: SocketAddr, law: Law) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        Phone {
            sock,
            to,
            tx: Sender::new(law, 77, 100, 1000),
            rx: Receiver::new(Codec {
                law,
                telephone_event: Some(101),
            }),
            heard: Vec::new(),
            seq: 5000,
            ts: 50_000,
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            let mut out = Vec::new();
            if let Received::Audio(_) = self.rx.receive(&buf[..n], &mut out) {
                self.heard.extend_from_slice(&out);
            }
        }
    }

    /// Sends `frames` 20 ms frames of `hz` (0: silence), paced in real time.
    fn talk(&mut self, hz: f64, frames: usize) {
        let start = Instant::now();
        for k in 0..frames {
            let mut f = [0i16; FRAME];
            if hz > 0.0 {
                for (i, s) in f.iter_mut().enumerate() {
                    let t = (k * FRAME + i) as f64 / 8000.0;
                    *s = ((2.0 * std::f64::consts::PI * hz * t).sin() * 12_000.0) as i16;
                }
            }
            let mut buf = [0u8; 400];
            let n = self.tx.packet(&f, &mut buf);
            self.sock.send_to(&buf[..n], self.to).unwrap();
            self.drain();
            let due = start + Duration::from_millis(20 * (k as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }

    /// RFC 4733: one event, 3 packets + 3 end packets.
    fn digit(&mut self, code: u8) {
        self.ts = self.ts.wrapping_add(8000);
        for k in 0..6u16 {
            let end = k >= 3;
            let mut p = vec![0x80, 101];
            p.extend_from_slice(&self.seq.to_be_bytes());
            p.extend_from_slice(&self.ts.to_be_bytes());
            p.extend_from_slice(&78u32.to_be_bytes());
            p.extend_from_slice(&[
                code,
                if end { 0x8a } else { 0x0a },
                0,
                ((k.min(3) + 1) * 160 / 256) as u8,
            ]);
            self.seq = self.seq.wrapping_add(1);
            self.sock.send_to(&p, self.to).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            self.drain();
        }
    }

    fn listen(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.drain();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn wait_for(rx: &mpsc::Receiver<Notice>, d: Duration, pred: impl Fn(&Notice) -> bool) -> Notice {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(n) if pred(&n) => return n,
            Ok(_) => {}
            Err(_) => panic!("notice not seen within {d:?}"),
        }
    }
}

fn dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("podpbx-vmworker-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn leave_a_tone_then_hear_it_back() {
    let root = dir("e2e");
    let (ntx, nrx) = mpsc::channel();
    let worker = Worker::spawn(
        WorkerConfig {
            limits: Limits {
                silence: Duration::from_secs(1),
                ..Limits::default()
            },
            max_sessions: 2,
            root: root.clone(),
            mailboxes: vec!["101".into()],
            max_messages: 10,
        },
        Arc::new(Prompts::embedded().unwrap()),
        Box::new(move |n| {
            let _ = ntx.send(n);
        }),
    )
    .unwrap();
    assert_eq!(
        wait_for(&nrx, Duration::from_secs(2), |n| matches!(
            n,
            Notice::Counts { .. }
        )),
        Notice::Counts {
            mailbox: "101".into(),
            counts: Counts { new: 0, old: 0 }
        }
    );

    // Leave a message: skip the greeting with #, 2 s of 852 Hz, then silence.
    let t = worker.open("127.0.0.1".parse().unwrap()).unwrap();
    let local = t.local();
    let mut phone = Phone::new(local, Law::Alaw);
    let codec = Codec {
        law: Law::Alaw,
        telephone_event: Some(101),
    };
    let purpose = Purpose::Deposit {
        mailbox: "101".into(),
        caller: "door".into(),
        caller_name: Some("Front door".into()),
    };
    assert!(worker.start(1, t, phone.sock.local_addr().unwrap(), codec, purpose));
    phone.listen(Duration::from_millis(300));
    assert!(
        phone.heard.len() > 1000,
        "the greeting plays: {} samples",
        phone.heard.len()
    );
    // A stranger's packets are dropped, not recorded.
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    for _ in 0..5 {
        stranger
            .send_to(&[0x80, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3], local)
            .unwrap();
    }
    phone.digit(11);
    phone.listen(Duration::from_millis(500));
    phone.talk(852.0, 100);
    phone.talk(0.0, 80);
    wait_for(&nrx, Duration::from_secs(5), |n| {
        *n == Notice::Counts {
            mailbox: "101".into(),
            counts: Counts { new: 1, old: 0 },
        }
    });
    let meta = match wait_for(&nrx, Duration::from_secs(5), |n| {
        matches!(n, Notice::MessageLeft(_))
    }) {
        Notice::MessageLeft(m) => m,
        _ => unreachable!(),
    };
    assert_eq!(meta.caller, "door");
    assert!(
        (2.0..=2.5).contains(&meta.duration_secs),
        "{}",
        meta.duration_secs
    );
    wait_for(&nrx, Duration::from_secs(6), |n| {
        *n == Notice::Hangup {
            id: 1,
            reason: EndReason::Done,
        }
    });
    assert!(
        worker
            .stats()
            .dropped_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );

    // The file on disk holds the tone.
    let bytes = std::fs::read(root.join("101").join(format!("{}.wav", meta.id))).unwrap();
    let samples = wav::decode(&bytes, 600).unwrap();
    let mid = &samples[2000..14_000];
    let share = goertzel_share(mid, 852.0);
    assert!(share > 0.8, "852 Hz share {share}");
    assert!(goertzel_share(mid, 1209.0) < 0.05);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("101").join(format!("{}.json", meta.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["caller_name"], "Front door");

    // Retrieve: wrong PIN, right PIN, 1 = new messages; the tone comes back.
    let t = worker.open("127.0.0.1".parse().unwrap()).unwrap();
    let mut owner = Phone::new(t.local(), Law::Ulaw);
    let codec = Codec {
        law: Law::Ulaw,
        telephone_event: Some(101),
    };
    assert!(worker.start(
        2,
        t,
        owner.sock.local_addr().unwrap(),
        codec,
        Purpose::Retrieve {
            mailbox: "101".into(),
            pin: "4711".into()
        }
    ));
    owner.listen(Duration::from_millis(200));
    for c in [9u8, 9, 11] {
        owner.digit(c);
    }
    wait_for(&nrx, Duration::from_secs(2), |n| {
        matches!(n, Notice::WrongPin { id: 2, .. })
    });
    for c in [4u8, 7, 1, 1, 11] {
        owner.digit(c);
    }
    owner.listen(Duration::from_millis(300));
    owner.digit(1);
    owner.heard.clear();
    // "Message one" then the 2 s message.
    owner.listen(Duration::from_millis(4500));
    wait_for(&nrx, Duration::from_secs(2), |n| {
        *n == Notice::Counts {
            mailbox: "101".into(),
            counts: Counts { new: 0, old: 1 },
        }
    });
    let best = owner
        .heard
        .chunks(4000)
        .map(|c| goertzel_share(c, 852.0))
        .fold(0.0, f64::max);
    assert!(
        best > 0.8,
        "the owner hears the 852 Hz message (best share {best})"
    );
    // 7 deletes it: files gone.
    owner.digit(7);
    wait_for(&nrx, Duration::from_secs(2), |n| {
        *n == Notice::Counts {
            mailbox: "101".into(),
            counts: Counts { new: 0, old: 0 },
        }
    });
    assert!(!root.join("101").join(format!("{}.wav", meta.id)).exists());
    assert!(!root.join("101").join(format!("{}.json", meta.id)).exists());
    worker.stop(2);
    drop(worker);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sessions_are_bounded() {
    let root = dir("bound");
    let worker = Worker::spawn(
        WorkerConfig {
            limits: Limits::default(),
            max_sessions: 2,
            root: root.clone(),
            mailboxes: vec!["101".into()],
            max_messages: 10,
        },
        Arc::new(Prompts::embedded().unwrap()),
        Box::new(|_| {}),
    )
    .unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    let a = worker.open(ip).unwrap();
    let b = worker.open(ip).unwrap();
    let e = worker.open(ip).unwrap_err();
    assert!(
        e.to_string().contains("all 2 voicemail sessions are busy"),
        "{e}"
    );
    assert_eq!(worker.active(), 2);
    drop(a);
    assert_eq!(worker.active(), 1);
    let _c = worker.open(ip).unwrap();
    drop(b);
    assert_eq!(
        worker
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(worker);
    let _ = std::fs::remove_dir_all(&root);
}
