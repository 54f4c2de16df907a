//! One terminated call as a sans-IO state machine: leaving a message (greeting, beep,
//! recording ended by `#`, silence, the length limit or the caller hanging up) or listening to
//! one's mailbox (PIN, counts, menu, play new/old, replay, next, delete).
//!
//! The machine never reads the clock, never touches a socket or a file: the worker passes
//! `now`, received audio and digits in, pulls one 20 ms frame to send per tick
//! ([`Session::poll_audio`]), drains what was recorded ([`Session::drain_recording`]) and
//! performs the [`Event`]s (load a message's audio, mark it heard, delete it, hang up). So it is
//! tested here in virtual time, frame by frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::prompts::{number, Clip, Prompt, Prompts};
use crate::rtp::FRAME;

/// Limits of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest message recorded.
    pub max_message: Duration,
    /// Messages shorter than this (after trailing silence is trimmed) are dropped.
    pub min_message: Duration,
    /// This long without voice ends a recording.
    pub silence: Duration,
    /// RMS level (linear, 16-bit) below which a frame is silence.
    pub silence_level: u16,
    /// How long a menu waits for a digit before it is repeated.
    pub digit_timeout: Duration,
    /// How long a whole session may last.
    pub max_session: Duration,
    /// Wrong PINs before a retrieval call is ended.
    pub max_pin_attempts: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: Duration::from_secs(120),
            min_message: Duration::from_secs(1),
            silence: Duration::from_secs(5),
            silence_level: 300,
            digit_timeout: Duration::from_secs(8),
            max_session: Duration::from_secs(1800),
            max_pin_attempts: 3,
        }
    }
}

/// A stored message, as a retrieval session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// Store id.
    pub id: String,
    /// Already listened to (old).
    pub heard: bool,
}

/// What a session is for.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A caller leaves a message.
    Deposit {
        /// The mailbox owner's own greeting (else the default one).
        greeting: Option<Clip>,
        /// The mailbox holds its maximum: say so and hang up.
        full: bool,
    },
    /// The owner listens to the mailbox.
    Retrieve {
        /// The PIN to enter (digits).
        pin: String,
        /// The messages, oldest first.
        messages: Vec<MessageRef>,
    },
    /// Play these prompts and hang up (a feature code's confirmation).
    Announce(Vec<Prompt>),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Done normally (message saved, caller pressed `#`, goodbye).
    Done,
    /// Too many wrong PINs.
    WrongPin,
    /// Nobody pressed anything.
    NoInput,
    /// [`Limits::max_session`] reached.
    TooLong,
    /// The mailbox is full.
    MailboxFull,
}

/// Something the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Recording started: open the file; [`Session::drain_recording`] now yields audio.
    RecordingStarted,
    /// Recording ended: keep the first `keep` samples drained (0: drop the message).
    RecordingDone {
        /// Samples to keep.
        keep: u64,
    },
    /// The PIN was right.
    LoggedIn,
    /// A wrong PIN was entered (for the security log).
    WrongPin,
    /// Load a message's audio and call [`Session::message_loaded`].
    Load {
        /// Store id.
        id: String,
    },
    /// The owner started listening to this message: it is no longer new.
    MarkHeard {
        /// Store id.
        id: String,
    },
    /// Delete this message.
    Delete {
        /// Store id.
        id: String,
    },
    /// Send BYE: the session is over.
    Hangup(EndReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    New,
    Old,
}

#[derive(Debug, Clone)]
struct Recording {
    /// Samples recorded (drained or not).
    total: u64,
    /// End of the last voiced audio, in samples.
    voiced_until: u64,
    /// When voice was last heard (or recording started).
    last_voice: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgStep {
    /// "Message N".
    Header,
    /// Waiting for the worker to load the audio.
    Loading,
    /// The message itself.
    Body,
    /// The per-message menu.
    Menu,
}

#[derive(Debug, Clone)]
enum State {
    /// Deposit: greeting and beep playing.
    Greeting,
    /// Deposit: recording.
    Recording(Recording),
    /// Retrieval: collecting the PIN.
    Pin { digits: String, failures: u8 },
    /// Retrieval: counts announced, then the main menu.
    Menu,
    /// Retrieval: in a folder.
    Message {
        ids: Vec<String>,
        index: usize,
        step: MsgStep,
    },
    /// Playing a last prompt, then hanging up.
    Closing(EndReason),
    /// Over.
    Ended,
}

/// Waiting for a digit after a menu prompt.
#[derive(Debug, Clone, Copy)]
struct Wait {
    deadline: Instant,
    repeats: u8,
}

/// Menus are repeated this often without an answer before the call is ended.
const MAX_REPEATS: u8 = 3;
/// Longest PIN.
const MAX_PIN: usize = 16;
/// Voice kept after the last voiced frame when trimming trailing silence.
const TAIL: u64 = 1600;

/// One terminated call.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    prompts: std::sync::Arc<Prompts>,
    started: Instant,
    state: State,
    messages: Vec<MessageRef>,
    pin: String,
    queue: VecDeque<Clip>,
    pos: usize,
    wait: Option<Wait>,
    /// Unanswered repetitions of the prompt now playing (re-armed when it ends).
    repeats: u8,
    recorded: Vec<i16>,
    events: VecDeque<Event>,
}

impl Session {
    /// Starts a session at `now` (the call was answered).
    pub fn new(
        kind: Kind,
        limits: Limits,
        prompts: std::sync::Arc<Prompts>,
        now: Instant,
    ) -> Session {
        let mut s = Session {
            limits,
            prompts,
            started: now,
            state: State::Ended,
            messages: Vec::new(),
            pin: String::new(),
            queue: VecDeque::new(),
            pos: 0,
            wait: None,
            repeats: 0,
            recorded: Vec::new(),
            events: VecDeque::new(),
        };
        match kind {
            Kind::Deposit { full: true, .. } => {
                s.close(EndReason::MailboxFull, Prompt::MailboxFull)
            }
            Kind::Deposit { greeting, .. } => {
                let greeting = greeting.unwrap_or_else(|| s.prompts.clip(Prompt::Greeting).clone());
                s.queue.push_back(greeting);
                s.queue.push_back(s.prompts.beep().clone());
                s.state = State::Greeting;
            }
            Kind::Announce(prompts) => {
                s.play(&prompts);
                s.state = State::Closing(EndReason::Done);
            }
            Kind::Retrieve { pin, messages } => {
                s.pin = pin;
                s.messages = messages;
                s.state = State::Pin {
                    digits: String::new(),
                    failures: 0,
                };
                s.play(&[Prompt::EnterPin]);
            }
        }
        s
    }

    /// Whether the session is over (after [`Event::Hangup`] or [`Session::hangup`]).
    pub fn ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended() {
            return None;
        }
        let mut t = self.started + self.limits.max_session;
        if let Some(w) = self.wait {
            t = t.min(w.deadline);
        }
        if let State::Recording(r) = &self.state {
            t = t.min(r.last_voice + self.limits.silence);
            t = t.min(self.started_recording_deadline(r));
        }
        Some(t)
    }

    fn started_recording_deadline(&self, r: &Recording) -> Instant {
        // Wall-clock bound on recording too, in case the caller's packets stop: what is missing
        // of the maximum, from the last voice heard.
        let left = self
            .limits
            .max_message
            .saturating_sub(Duration::from_millis(r.total / 8));
        r.last_voice + left.max(self.limits.silence)
    }

    /// Timers: digit waits, silence without packets, the session limit.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Ended | State::Closing(_)) {
            return;
        }
        if now >= self.started + self.limits.max_session {
            self.finish_recording();
            self.close(EndReason::TooLong, Prompt::Goodbye);
            return;
        }
        if let State::Recording(r) = &self.state {
            if now >= r.last_voice + self.limits.silence
                || now >= self.started_recording_deadline(r)
            {
                self.stop_recording();
                return;
            }
        }
        if let Some(w) = self.wait {
            if now >= w.deadline {
                self.wait = None;
                if w.repeats + 1 >= MAX_REPEATS {
                    self.close(EndReason::NoInput, Prompt::Goodbye);
                } else {
                    self.repeat_prompt(w.repeats + 1);
                }
            }
        }
    }

    /// Received audio (decoded, 8 kHz).
    pub fn on_audio(&mut self, now: Instant, pcm: &[i16]) {
        let State::Recording(r) = &mut self.state else {
            return;
        };
        let max = self.limits.max_message.as_millis() as u64 * 8;
        let room = max.saturating_sub(r.total) as usize;
        let pcm = &pcm[..pcm.len().min(room)];
        for frame in pcm.chunks(FRAME) {
            let energy = frame.iter().map(|s| (*s as i64).pow(2)).sum::<i64>() / frame.len() as i64;
            r.total += frame.len() as u64;
            if energy >= (self.limits.silence_level as i64).pow(2) {
                r.voiced_until = r.total;
                r.last_voice = now;
            }
        }
        self.recorded.extend_from_slice(pcm);
        let silent_samples = r.total - r.voiced_until;
        if r.total >= max || silent_samples >= self.limits.silence.as_millis() as u64 * 8 {
            self.stop_recording();
        }
    }

    /// Hands the recorded audio not yet drained to `f` (the worker writes it to the file).
    pub fn drain_recording(&mut self, mut f: impl FnMut(&[i16])) {
        if !self.recorded.is_empty() {
            f(&self.recorded);
            self.recorded.clear();
        }
    }

    /// The caller hung up (BYE): a recording in progress is kept.
    pub fn hangup(&mut self) {
        self.finish_recording();
        self.state = State::Ended;
        self.queue.clear();
        self.wait = None;
    }

    /// The audio of a message asked for with [`Event::Load`] (`None`: it could not be read).
    pub fn message_loaded(&mut self, now: Instant, id: &str, audio: Option<Clip>) {
        let State::Message {
            ids, index, step, ..
        } = &mut self.state
        else {
            return;
        };
        if *step != MsgStep::Loading || ids.get(*index).map(String::as_str) != Some(id) {
            return;
        }
        match audio {
            Some(clip) => {
                *step = MsgStep::Body;
                self.events
                    .push_back(Event::MarkHeard { id: id.to_string() });
                if let Some(m) = self.messages.iter_mut().find(|m| m.id == id) {
                    m.heard = true;
                }
                self.queue.push_back(clip);
            }
            None => self.next_message(now),
        }
    }

    /// A DTMF digit from the caller.
    pub fn on_digit(&mut self, now: Instant, digit: char) {
        self.repeats = 0;
        match &mut self.state {
            State::Greeting => {
                if digit == '#' {
                    // Skip the greeting, keep the beep.
                    self.stop_playback();
                    self.queue.push_back(self.prompts.beep().clone());
                }
            }
            State::Recording(_) => {
                if digit == '#' {
                    self.stop_recording();
                }
            }
            State::Pin { digits, failures } => {
                if digit == '#' {
                    let entered = std::mem::take(digits);
                    let failures = *failures;
                    self.stop_playback();
                    self.check_pin(&entered, failures);
                } else if digit.is_ascii_digit() && digits.len() < MAX_PIN {
                    digits.push(digit);
                    // Typing: the prompt stops, the wait restarts.
                    self.stop_playback();
                    self.wait_digit(now, 0);
                }
            }
            State::Menu => {
                self.stop_playback();
                match digit {
                    '1' => self.open_folder(now, Folder::New),
                    '2' => self.open_folder(now, Folder::Old),
                    '#' => self.close(EndReason::Done, Prompt::Goodbye),
                    _ => self.play(&[Prompt::Invalid, Prompt::MainMenu]),
                }
            }
            State::Message { step, .. } => {
                if *step == MsgStep::Loading {
                    return;
                }
                self.stop_playback();
                match digit {
                    '5' => self.start_message(),
                    '6' => self.next_message(now),
                    '7' => self.delete_message(now),
                    '*' => self.main_menu(),
                    '#' => self.close(EndReason::Done, Prompt::Goodbye),
                    _ => {
                        self.set_step(MsgStep::Menu);
                        self.play(&[Prompt::Invalid, Prompt::MessageMenu]);
                    }
                }
            }
            State::Closing(_) | State::Ended => {}
        }
    }

    /// The next 20 ms frame to send; `false` (and silence in `out`) when nothing is playing.
    pub fn poll_audio(&mut self, now: Instant, out: &mut [i16; FRAME]) -> bool {
        let mut filled = 0;
        let mut any = false;
        while filled < FRAME {
            let Some(clip) = self.queue.front() else {
                break;
            };
            any = true;
            let n = (clip.len() - self.pos).min(FRAME - filled);
            out[filled..filled + n].copy_from_slice(&clip[self.pos..self.pos + n]);
            filled += n;
            self.pos += n;
            if self.pos >= clip.len() {
                self.queue.pop_front();
                self.pos = 0;
                if self.queue.is_empty() {
                    self.played(now);
                }
            }
        }
        out[filled..].fill(0);
        any
    }

    // ----- transitions -------------------------------------------------------------------

    fn play(&mut self, prompts: &[Prompt]) {
        for p in prompts {
            self.queue.push_back(self.prompts.clip(*p).clone());
        }
    }

    fn stop_playback(&mut self) {
        self.queue.clear();
        self.pos = 0;
        self.wait = None;
    }

    fn wait_digit(&mut self, now: Instant, repeats: u8) {
        self.wait = Some(Wait {
            deadline: now + self.limits.digit_timeout,
            repeats,
        });
    }

    /// The queue ran empty.
    fn played(&mut self, now: Instant) {
        match &mut self.state {
            State::Greeting => {
                self.state = State::Recording(Recording {
                    total: 0,
                    voiced_until: 0,
                    last_voice: now,
                });
                self.recorded.clear();
                self.events.push_back(Event::RecordingStarted);
            }
            State::Pin { .. } | State::Menu => {
                let r = std::mem::take(&mut self.repeats);
                self.wait_digit(now, r);
            }
            State::Message { step, .. } => match *step {
                MsgStep::Header => {
                    *step = MsgStep::Loading;
                    let id = self.current_id().unwrap_or_default();
                    self.events.push_back(Event::Load { id });
                }
                MsgStep::Body => {
                    *step = MsgStep::Menu;
                    self.play(&[Prompt::MessageMenu]);
                }
                MsgStep::Menu => {
                    let r = std::mem::take(&mut self.repeats);
                    self.wait_digit(now, r);
                }
                MsgStep::Loading => {}
            },
            State::Closing(reason) => {
                let reason = *reason;
                self.events.push_back(Event::Hangup(reason));
                self.state = State::Ended;
            }
            State::Recording(_) | State::Ended => {}
        }
    }

    fn repeat_prompt(&mut self, repeats: u8) {
        let prompt = match &self.state {
            State::Pin { .. } => Prompt::EnterPin,
            State::Menu => Prompt::MainMenu,
            State::Message { .. } => Prompt::MessageMenu,
            _ => return,
        };
        if let State::Pin { digits, .. } = &mut self.state {
            digits.clear();
        }
        self.play(&[prompt]);
        // `played` re-arms the wait with this count when the prompt ends.
        self.repeats = repeats;
    }

    fn close(&mut self, reason: EndReason, prompt: Prompt) {
        self.stop_playback();
        self.play(&[prompt]);
        self.state = State::Closing(reason);
    }

    fn finish_recording(&mut self) -> Option<u64> {
        let State::Recording(r) = &self.state else {
            return None;
        };
        let keep = (r.voiced_until + TAIL).min(r.total);
        let keep = if r.voiced_until == 0 || keep < self.limits.min_message.as_millis() as u64 * 8 {
            0
        } else {
            keep
        };
        self.events.push_back(Event::RecordingDone { keep });
        self.state = State::Ended;
        Some(keep)
    }

    fn stop_recording(&mut self) {
        match self.finish_recording() {
            Some(0) => self.close(EndReason::Done, Prompt::Goodbye),
            Some(_) => self.close(EndReason::Done, Prompt::Saved),
            None => {}
        }
    }

    fn check_pin(&mut self, entered: &str, failures: u8) {
        if constant_time_eq(entered.as_bytes(), self.pin.as_bytes()) {
            self.events.push_back(Event::LoggedIn);
            self.announce();
            return;
        }
        self.events.push_back(Event::WrongPin);
        let failures = failures + 1;
        if failures >= self.limits.max_pin_attempts {
            self.stop_playback();
            self.play(&[Prompt::WrongPin, Prompt::Goodbye]);
            self.state = State::Closing(EndReason::WrongPin);
            return;
        }
        self.state = State::Pin {
            digits: String::new(),
            failures,
        };
        self.play(&[Prompt::WrongPin, Prompt::EnterPin]);
    }

    /// "You have N new messages and M old messages", then the main menu.
    fn announce(&mut self) {
        let new = self.messages.iter().filter(|m| !m.heard).count();
        let old = self.messages.len() - new;
        let mut p = vec![Prompt::YouHave];
        if new == 0 && old == 0 {
            p.push(Prompt::NoMessages);
        } else {
            if new > 0 {
                number(new, &mut p);
                p.push(if new == 1 {
                    Prompt::NewMessage
                } else {
                    Prompt::NewMessages
                });
            }
            if new > 0 && old > 0 {
                p.push(Prompt::And);
            }
            if old > 0 {
                number(old, &mut p);
                p.push(if old == 1 {
                    Prompt::OldMessage
                } else {
                    Prompt::OldMessages
                });
            }
        }
        p.push(Prompt::MainMenu);
        self.state = State::Menu;
        self.play(&p);
    }

    fn main_menu(&mut self) {
        self.state = State::Menu;
        self.play(&[Prompt::MainMenu]);
    }

    fn open_folder(&mut self, now: Instant, folder: Folder) {
        let ids: Vec<String> = self
            .messages
            .iter()
            .filter(|m| m.heard == (folder == Folder::Old))
            .map(|m| m.id.clone())
            .collect();
        if ids.is_empty() {
            self.state = State::Menu;
            self.play(&[Prompt::NoMessages, Prompt::MainMenu]);
            let _ = now;
            return;
        }
        self.state = State::Message {
            ids,
            index: 0,
            step: MsgStep::Header,
        };
        self.start_message();
    }

    fn current_id(&self) -> Option<String> {
        match &self.state {
            State::Message { ids, index, .. } => ids.get(*index).cloned(),
            _ => None,
        }
    }

    fn set_step(&mut self, s: MsgStep) {
        if let State::Message { step, .. } = &mut self.state {
            *step = s;
        }
    }

    /// "Message N", then the audio.
    fn start_message(&mut self) {
        let State::Message { index, .. } = &self.state else {
            return;
        };
        let mut p = vec![Prompt::Message];
        number(index + 1, &mut p);
        self.set_step(MsgStep::Header);
        self.play(&p);
    }

    fn next_message(&mut self, _now: Instant) {
        let State::Message { ids, index, .. } = &mut self.state else {
            return;
        };
        if *index + 1 >= ids.len() {
            self.state = State::Menu;
            self.play(&[Prompt::NoMore, Prompt::MainMenu]);
            return;
        }
        *index += 1;
        self.start_message();
    }

    fn delete_message(&mut self, now: Instant) {
        let State::Message { ids, index, .. } = &mut self.state else {
            return;
        };
        let id = ids.remove(*index);
        self.messages.retain(|m| m.id != id);
        self.events.push_back(Event::Delete { id });
        self.play(&[Prompt::Deleted]);
        let State::Message { ids, index, .. } = &mut self.state else {
            return;
        };
        if *index >= ids.len() {
            self.state = State::Menu;
            self.play(&[Prompt::NoMore, Prompt::MainMenu]);
            return;
        }
        let _ = now;
        let mut p = vec![Prompt::Message];
        number(*index + 1, &mut p);
        self.set_step(MsgStep::Header);
        self.play(&p);
    }
}

/// Compares without an early exit (the PIN's length still shows, as with any PIN pad).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for (i, x) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ x;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests;
