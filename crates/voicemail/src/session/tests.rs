//! The session machine in virtual time: 20 ms per frame, nothing real.

use super::*;
use std::sync::Arc;

const TICK: Duration = Duration::from_millis(20);

struct Run {
    s: Session,
    now: Instant,
    events: Vec<Event>,
    played: Vec<i16>,
    recorded: Vec<i16>,
}

fn prompts() -> Arc<Prompts> {
    Arc::new(Prompts::embedded().expect("prompts"))
}

impl Run {
    fn new(kind: Kind, limits: Limits) -> Run {
        let now = Instant::now();
        Run {
            s: Session::new(kind, limits, prompts(), now),
            now,
            events: Vec::new(),
            played: Vec::new(),
            recorded: Vec::new(),
        }
    }

    /// One tick: timers, one frame out, `input` in, events collected.
    fn tick(&mut self, input: Option<&[i16]>) {
        self.now += TICK;
        self.s.handle_timeout(self.now);
        let mut f = [0i16; FRAME];
        if self.s.poll_audio(self.now, &mut f) {
            self.played.extend_from_slice(&f);
        }
        if let Some(pcm) = input {
            self.s.on_audio(self.now, pcm);
        }
        let rec = &mut self.recorded;
        self.s.drain_recording(|x| rec.extend_from_slice(x));
        while let Some(e) = self.s.poll_event() {
            self.events.push(e);
        }
    }

    /// Ticks until `pred` holds on the events (at most `max` ticks); returns ticks taken.
    fn until(
        &mut self,
        max: usize,
        input: Option<&[i16]>,
        pred: impl Fn(&[Event]) -> bool,
    ) -> usize {
        for i in 0..max {
            if pred(&self.events) {
                return i;
            }
            self.tick(input);
        }
        panic!("not reached after {max} ticks; events {:?}", self.events);
    }

    /// Ticks until nothing plays any more (the prompt queue is empty).
    fn drain_audio(&mut self, max: usize) {
        for _ in 0..max {
            let before = self.played.len();
            self.tick(None);
            if self.played.len() == before {
                return;
            }
        }
        panic!("still playing after {max} ticks");
    }

    fn digits(&mut self, d: &str) {
        for c in d.chars() {
            self.s.on_digit(self.now, c);
            self.tick(None);
        }
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

fn tone_frame(hz: f64, amp: f64) -> Vec<i16> {
    (0..FRAME)
        .map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin() * amp) as i16)
        .collect()
}

fn secs(samples: usize) -> f64 {
    samples as f64 / 8000.0
}

fn concat(p: &Prompts, list: &[Prompt]) -> Vec<i16> {
    list.iter()
        .flat_map(|x| p.clip(*x).iter().copied())
        .collect()
}

fn deposit() -> Kind {
    Kind::Deposit {
        greeting: None,
        full: false,
    }
}

#[test]
fn greeting_beep_then_recording_ended_by_silence() {
    let mut r = Run::new(deposit(), Limits::default());
    let t = r.until(2000, None, |e| e.contains(&Event::RecordingStarted));
    // The greeting (8.5 s) and the 400 ms beep played first.
    let p = prompts();
    let want = p.clip(Prompt::Greeting).len() + p.beep().len();
    assert_eq!(r.played.len(), want.div_ceil(FRAME) * FRAME, "{t} ticks");
    assert_eq!(
        &r.played[..p.clip(Prompt::Greeting).len()],
        &p.clip(Prompt::Greeting)[..]
    );
    r.played.clear();
    // 3 s of tone, then silence: 5 s of silence end it.
    let tone = tone_frame(440.0, 6000.0);
    for _ in 0..150 {
        r.tick(Some(&tone));
    }
    let silence = vec![0i16; FRAME];
    let t = r.until(1000, Some(&silence), |e| {
        e.iter().any(|x| matches!(x, Event::RecordingDone { .. }))
    });
    assert!((245..=252).contains(&t), "silence ended it after {t} ticks");
    let keep = match r.events.last() {
        Some(Event::RecordingDone { keep }) => *keep,
        e => panic!("{e:?}"),
    };
    // 3 s of voice plus the 200 ms tail.
    assert_eq!(keep, 3 * 8000 + TAIL);
    assert!(r.recorded.len() as u64 >= keep);
    assert_eq!(&r.recorded[..FRAME], &tone[..]);
    // "Saved", then hang up.
    r.drain_audio(1000);
    assert_eq!(
        &r.played[..p.clip(Prompt::Saved).len()],
        &p.clip(Prompt::Saved)[..]
    );
    r.tick(None);
    assert_eq!(r.events.last(), Some(&Event::Hangup(EndReason::Done)));
    assert!(r.s.ended());
    assert_eq!(r.s.poll_timeout(), None);
}

#[test]
fn pound_skips_the_greeting_and_ends_the_recording() {
    let mut r = Run::new(deposit(), Limits::default());
    r.tick(None);
    r.digits("#");
    // Only the beep is left: 20 ticks.
    let t = r.until(30, None, |e| e.contains(&Event::RecordingStarted));
    assert!(t <= 20, "{t}");
    let tone = tone_frame(1000.0, 8000.0);
    for _ in 0..100 {
        r.tick(Some(&tone));
    }
    r.digits("#");
    assert!(
        r.events.contains(&Event::RecordingDone { keep: 2 * 8000 }),
        "{:?}",
        r.events
    );
}

#[test]
fn max_length_ends_the_recording() {
    let limits = Limits {
        max_message: Duration::from_secs(4),
        ..Limits::default()
    };
    let mut r = Run::new(deposit(), limits);
    r.until(2000, None, |e| e.contains(&Event::RecordingStarted));
    // Oversized packets (a 640-sample payload each tick) cannot push it past the limit.
    let loud: Vec<i16> = tone_frame(700.0, 9000.0).repeat(4);
    let t = r.until(1000, Some(&loud), |e| {
        e.iter().any(|x| matches!(x, Event::RecordingDone { .. }))
    });
    assert!(t <= 51, "{t}");
    assert!(
        r.events.contains(&Event::RecordingDone { keep: 4 * 8000 }),
        "{:?}",
        r.events
    );
    assert_eq!(r.recorded.len(), 4 * 8000);
}

#[test]
fn caller_hanging_up_keeps_the_message_and_silence_only_is_dropped() {
    let mut r = Run::new(deposit(), Limits::default());
    r.until(2000, None, |e| e.contains(&Event::RecordingStarted));
    let tone = tone_frame(500.0, 5000.0);
    for _ in 0..75 {
        r.tick(Some(&tone));
    }
    r.s.hangup();
    r.tick(None);
    // Voice up to the end: nothing to trim.
    assert!(
        r.events.contains(&Event::RecordingDone { keep: 12_000 }),
        "{:?}",
        r.events
    );
    assert!(
        !r.events.iter().any(|e| matches!(e, Event::Hangup(_))),
        "no BYE to a caller who left"
    );
    assert!(r.s.ended());

    // Someone who says nothing: nothing kept, "goodbye".
    let mut r = Run::new(deposit(), Limits::default());
    r.until(2000, None, |e| e.contains(&Event::RecordingStarted));
    let quiet: Vec<i16> = tone_frame(300.0, 100.0);
    r.until(400, Some(&quiet), |e| {
        e.iter().any(|x| matches!(x, Event::RecordingDone { .. }))
    });
    assert!(r.events.contains(&Event::RecordingDone { keep: 0 }));
    r.until(200, None, |e| e.contains(&Event::Hangup(EndReason::Done)));
}

#[test]
fn no_packets_at_all_ends_the_recording_by_time() {
    let mut r = Run::new(deposit(), Limits::default());
    r.until(2000, None, |e| e.contains(&Event::RecordingStarted));
    let t = r.until(400, None, |e| {
        e.iter().any(|x| matches!(x, Event::RecordingDone { .. }))
    });
    assert!((249..=251).contains(&t), "{t}");
    assert!(r.events.contains(&Event::RecordingDone { keep: 0 }));
}

#[test]
fn full_mailbox_says_so_and_records_nothing() {
    let mut r = Run::new(
        Kind::Deposit {
            greeting: None,
            full: true,
        },
        Limits::default(),
    );
    r.until(1000, None, |e| {
        e.contains(&Event::Hangup(EndReason::MailboxFull))
    });
    assert!(!r.events.contains(&Event::RecordingStarted));
    let p = prompts();
    assert_eq!(
        &r.played[..p.clip(Prompt::MailboxFull).len()],
        &p.clip(Prompt::MailboxFull)[..]
    );
}

#[test]
fn own_greeting_replaces_the_default() {
    let own: Clip = tone_frame(600.0, 3000.0).repeat(10).into();
    let mut r = Run::new(
        Kind::Deposit {
            greeting: Some(own.clone()),
            full: false,
        },
        Limits::default(),
    );
    r.until(100, None, |e| e.contains(&Event::RecordingStarted));
    assert_eq!(&r.played[..own.len()], &own[..]);
    assert_eq!(r.played.len(), own.len() + 3200);
}

fn mailbox() -> Kind {
    Kind::Retrieve {
        pin: "4711".into(),
        messages: vec![
            MessageRef {
                id: "old1".into(),
                heard: true,
            },
            MessageRef {
                id: "new1".into(),
                heard: false,
            },
            MessageRef {
                id: "new2".into(),
                heard: false,
            },
        ],
    }
}

#[test]
fn wrong_pins_end_the_call() {
    let mut r = Run::new(mailbox(), Limits::default());
    r.tick(None);
    r.digits("1234#");
    r.digits("0000#");
    r.digits("47110#");
    r.until(1000, None, |e| {
        e.contains(&Event::Hangup(EndReason::WrongPin))
    });
    let wrong = r.events.iter().filter(|e| **e == Event::WrongPin).count();
    assert_eq!(wrong, 3);
    assert!(!r.events.contains(&Event::LoggedIn));
    // Nothing more is accepted.
    r.digits("4711#");
    assert!(!r.events.contains(&Event::LoggedIn));
}

#[test]
fn listen_replay_delete_next() {
    let p = prompts();
    let mut r = Run::new(mailbox(), Limits::default());
    r.drain_audio(1000);
    assert_eq!(&r.played[..], &pad(&concat(&p, &[Prompt::EnterPin]))[..]);
    r.played.clear();
    r.digits("4711#");
    assert_eq!(r.take_events(), vec![Event::LoggedIn]);
    r.drain_audio(2000);
    // "You have two new messages and one old message", then the menu.
    let want = concat(
        &p,
        &[
            Prompt::YouHave,
            Prompt::N2,
            Prompt::NewMessages,
            Prompt::And,
            Prompt::N1,
            Prompt::OldMessage,
            Prompt::MainMenu,
        ],
    );
    assert_eq!(&r.played[..want.len()], &want[..]);
    r.played.clear();
    // 1: new messages: "Message one", then the worker loads new1.
    r.digits("1");
    r.until(200, None, |e| {
        e.contains(&Event::Load { id: "new1".into() })
    });
    let body: Clip = tone_frame(800.0, 7000.0).repeat(25).into();
    r.s.message_loaded(r.now, "new1", Some(body.clone()));
    r.tick(None);
    assert!(r.events.contains(&Event::MarkHeard { id: "new1".into() }));
    r.drain_audio(1000);
    let header = concat(&p, &[Prompt::Message, Prompt::N1]);
    assert_eq!(&r.played[..header.len()], &header[..]);
    assert!(contains(&r.played, &body), "the message audio was played");
    r.played.clear();
    r.take_events();
    // 5: replay.
    r.digits("5");
    r.until(200, None, |e| {
        e.contains(&Event::Load { id: "new1".into() })
    });
    r.s.message_loaded(r.now, "new1", Some(body.clone()));
    // 7 while it plays: delete; the next message (new2, now number one) follows.
    r.tick(None);
    r.digits("7");
    assert!(r.events.contains(&Event::Delete { id: "new1".into() }));
    r.until(300, None, |e| {
        e.contains(&Event::Load { id: "new2".into() })
    });
    // A load that fails skips to the next: none left -> "no more", main menu.
    r.s.message_loaded(r.now, "new2", None);
    r.played.clear();
    r.drain_audio(1000);
    let want = concat(&p, &[Prompt::NoMore, Prompt::MainMenu]);
    assert_eq!(&r.played[..want.len()], &want[..]);
    // 2: old messages: old1 and new1 (heard now, but deleted) -> only old1.
    r.take_events();
    r.digits("2");
    r.until(200, None, |e| {
        e.contains(&Event::Load { id: "old1".into() })
    });
    r.s.message_loaded(r.now, "old1", Some(body.clone()));
    r.played.clear();
    r.digits("6");
    r.drain_audio(1000);
    let want = concat(&p, &[Prompt::NoMore, Prompt::MainMenu]);
    assert_eq!(&r.played[..want.len()], &want[..]);
    // # hangs up with goodbye.
    r.digits("#");
    r.until(200, None, |e| e.contains(&Event::Hangup(EndReason::Done)));
    assert!(!r
        .events
        .iter()
        .any(|e| matches!(e, Event::Delete { id } if id != "new1")));
}

#[test]
fn unanswered_menu_is_repeated_then_the_call_ends() {
    let limits = Limits {
        digit_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let mut r = Run::new(
        Kind::Retrieve {
            pin: "1".into(),
            messages: vec![],
        },
        limits,
    );
    r.tick(None);
    r.digits("1#");
    r.take_events();
    r.played.clear();
    let ticks = r.until(5000, None, |e| {
        e.contains(&Event::Hangup(EndReason::NoInput))
    });
    let p = prompts();
    let menu = p.clip(Prompt::MainMenu).len();
    // Announcement + menu, menu again twice, goodbye; three 2 s waits.
    let heard = secs(r.played.len());
    let want = secs(
        concat(&p, &[Prompt::YouHave, Prompt::NoMessages]).len()
            + 3 * menu
            + p.clip(Prompt::Goodbye).len(),
    );
    assert!((heard - want).abs() < 0.2, "{heard} vs {want}");
    assert!((ticks as f64 * 0.02 - heard - 6.0).abs() < 0.3, "{ticks}");
}

#[test]
fn session_limit_hangs_up() {
    let limits = Limits {
        max_session: Duration::from_secs(3),
        ..Limits::default()
    };
    let mut r = Run::new(deposit(), limits);
    r.until(1000, None, |e| {
        e.contains(&Event::Hangup(EndReason::TooLong))
    });
    assert!(r.now.duration_since(r.s.started) < Duration::from_secs(5));
}

#[test]
fn pin_compare() {
    assert!(constant_time_eq(b"4711", b"4711"));
    assert!(!constant_time_eq(b"471", b"4711"));
    assert!(!constant_time_eq(b"47110", b"4711"));
    assert!(!constant_time_eq(b"", b"4711"));
    assert!(!constant_time_eq(b"4712", b"4711"));
}

fn pad(v: &[i16]) -> Vec<i16> {
    let mut v = v.to_vec();
    v.resize(v.len().div_ceil(FRAME) * FRAME, 0);
    v
}

fn contains(hay: &[i16], needle: &[i16]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn announcement_plays_then_hangs_up() {
    let p = prompts();
    let mut r = Run::new(Kind::Announce(vec![Prompt::Activated]), Limits::default());
    r.until(500, None, |e| e.contains(&Event::Hangup(EndReason::Done)));
    assert_eq!(
        &r.played[..p.clip(Prompt::Activated).len()],
        &p.clip(Prompt::Activated)[..]
    );
    assert_eq!(
        r.played.len(),
        p.clip(Prompt::Activated).len().div_ceil(FRAME) * FRAME
    );
    // Digits do nothing.
    r.s.on_digit(r.now, '#');
    assert!(r.s.ended());
}
