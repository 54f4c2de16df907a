//! The media endpoint's thread: RTP I/O and timing for every voicemail/IVR session, and the
//! only writer of the mailbox store.
//!
//! It runs beside the relay (never on its hot path) and the signalling loop (which talks to it
//! through [`Worker`]: commands in over a bounded channel, [`Notice`]s out through a callback
//! that must not block). Every 20 ms it reads what each session's socket received (accepting
//! only the address the call layer gave, at most [`MAX_PACKETS_PER_TICK`] per session), feeds
//! the [`Session`] machines, sends one G.711 frame per session, flushes recordings to their
//! files once a second and performs the machines' store actions. Buffers are reused per
//! session: after start-up a session allocates only to load a message it plays. The number of
//! sessions is bounded ([`Worker::open`] refuses beyond `max_sessions`).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use crate::prompts::{Clip, Prompts};
use crate::rtp::{Codec, Received, Receiver, Sender, FRAME};
use crate::session::{EndReason, Event, Kind, Limits, MessageRef, Session};
use crate::store::{unix_millis, Caller, Counts, GreetingError, Meta, Recorder, Store};

/// Packets read per session per tick (a flood is cut here; the rest waits or is dropped by
/// the kernel).
pub const MAX_PACKETS_PER_TICK: usize = 32;
const TICK: Duration = Duration::from_millis(20);
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Commands queued towards the worker.
const COMMAND_QUEUE: usize = 256;

/// How the worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Session limits.
    pub limits: Limits,
    /// Simultaneous sessions.
    pub max_sessions: usize,
    /// Mailbox folder.
    pub root: PathBuf,
    /// Mailboxes (users with voicemail).
    pub mailboxes: Vec<String>,
    /// Messages per mailbox.
    pub max_messages: usize,
}

/// What a session does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Leave a message in `mailbox`.
    Deposit {
        /// The mailbox.
        mailbox: String,
        /// Who calls.
        caller: String,
        /// Their display name.
        caller_name: Option<String>,
    },
    /// The owner listens to `mailbox` after entering `pin`.
    Retrieve {
        /// The mailbox.
        mailbox: String,
        /// The PIN.
        pin: String,
    },
    /// Play these prompts and hang up (a feature code's confirmation).
    Announce(Vec<crate::prompts::Prompt>),
}

/// What the worker tells the signalling side.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The session is over on our side: send BYE.
    Hangup {
        /// Session id.
        id: u64,
        /// Why.
        reason: EndReason,
    },
    /// A message was stored.
    MessageLeft(Meta),
    /// New/old counts of a mailbox changed (or are announced at start).
    Counts {
        /// The mailbox.
        mailbox: String,
        /// Its counts.
        counts: Counts,
    },
    /// A wrong PIN was entered on a retrieval call.
    WrongPin {
        /// Session id.
        id: u64,
        /// The mailbox.
        mailbox: String,
    },
}

/// A reserved session slot with its bound socket; give it to [`Worker::start`], or drop it.
#[derive(Debug)]
pub struct Ticket {
    socket: UdpSocket,
    local: SocketAddr,
    active: Arc<AtomicUsize>,
    armed: bool,
}

impl Ticket {
    /// Where the session receives RTP (for the SDP answer).
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.armed {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions started.
    pub sessions: AtomicU64,
    /// Sessions refused at the bound.
    pub refused: AtomicU64,
    /// Messages stored.
    pub messages: AtomicU64,
    /// Datagrams dropped: from another address, or past the per-tick cap.
    pub dropped_packets: AtomicU64,
    /// Store operations that failed.
    pub store_errors: AtomicU64,
    /// Messages held in all mailboxes.
    pub stored: AtomicU64,
}

/// Answers to admin requests.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

enum Command {
    Start {
        id: u64,
        ticket: Ticket,
        remote: SocketAddr,
        codec: Codec,
        purpose: Purpose,
    },
    Stop {
        id: u64,
    },
    List {
        mailbox: String,
        reply: Reply<Vec<Meta>>,
    },
    Delete {
        mailbox: String,
        id: String,
        reply: Reply<io::Result<bool>>,
    },
    SetGreeting {
        mailbox: String,
        wav: Vec<u8>,
        reply: Reply<Result<Duration, GreetingError>>,
    },
    Mailboxes {
        list: Vec<String>,
        max_messages: usize,
    },
    Shutdown,
}

/// The handle the signalling side holds.
pub struct Worker {
    tx: SyncSender<Command>,
    active: Arc<AtomicUsize>,
    max_sessions: Arc<AtomicUsize>,
    max_messages: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Opens the store (finishing interrupted recordings) and starts the thread. `notice` is
    /// called on the worker thread and must not block (push into a channel).
    pub fn spawn(
        cfg: WorkerConfig,
        prompts: Arc<Prompts>,
        notice: Box<dyn Fn(Notice) + Send>,
    ) -> io::Result<Worker> {
        let (store, warnings) = Store::open(&cfg.root, &cfg.mailboxes, cfg.max_messages)?;
        for w in warnings {
            warn!("{w}");
        }
        let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let active = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        stats.stored.store(store.total() as u64, Ordering::Relaxed);
        for (mailbox, counts) in store.mailboxes() {
            notice(Notice::Counts {
                mailbox: mailbox.to_string(),
                counts,
            });
        }
        let mut inner = Inner {
            limits: cfg.limits,
            prompts,
            store,
            sessions: HashMap::new(),
            notice,
            stats: stats.clone(),
            random: RandomState::new(),
        };
        let thread = std::thread::Builder::new()
            .name("podpbx-voicemail".into())
            .spawn(move || inner.run(rx))?;
        Ok(Worker {
            tx,
            active,
            max_sessions: Arc::new(AtomicUsize::new(cfg.max_sessions)),
            max_messages: Arc::new(AtomicUsize::new(cfg.max_messages)),
            stats,
            thread: Some(thread),
        })
    }

    /// Reserves a session slot and binds its RTP socket on `ip` (an ephemeral port). Fails at
    /// the session bound (the call layer answers busy) or if the socket cannot be bound.
    pub fn open(&self, ip: IpAddr) -> io::Result<Ticket> {
        let max = self.max_sessions.load(Ordering::Relaxed);
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("all {max} voicemail sessions are busy"),
            ));
        }
        let mut ticket = Ticket {
            socket: UdpSocket::bind(SocketAddr::new(ip, 0))?,
            local: SocketAddr::new(ip, 0),
            active: self.active.clone(),
            armed: true,
        };
        ticket.local = ticket.socket.local_addr()?;
        ticket.socket.set_nonblocking(true)?;
        Ok(ticket)
    }

    /// Starts session `id` (the call is answered) towards `remote`.
    pub fn start(
        &self,
        id: u64,
        ticket: Ticket,
        remote: SocketAddr,
        codec: Codec,
        purpose: Purpose,
    ) -> bool {
        self.send(Command::Start {
            id,
            ticket,
            remote,
            codec,
            purpose,
        })
    }

    /// The caller hung up: session `id` ends (a recording is kept).
    pub fn stop(&self, id: u64) -> bool {
        self.send(Command::Stop { id })
    }

    /// The messages of a mailbox.
    pub fn list(&self, mailbox: &str, reply: Reply<Vec<Meta>>) -> bool {
        self.send(Command::List {
            mailbox: mailbox.to_string(),
            reply,
        })
    }

    /// Deletes a message.
    pub fn delete(&self, mailbox: &str, id: &str, reply: Reply<io::Result<bool>>) -> bool {
        self.send(Command::Delete {
            mailbox: mailbox.to_string(),
            id: id.to_string(),
            reply,
        })
    }

    /// Validates and stores an uploaded greeting.
    pub fn set_greeting(
        &self,
        mailbox: &str,
        wav: Vec<u8>,
        reply: Reply<Result<Duration, GreetingError>>,
    ) -> bool {
        self.send(Command::SetGreeting {
            mailbox: mailbox.to_string(),
            wav,
            reply,
        })
    }

    /// Config reload: the set of mailboxes and limits.
    pub fn reconfigure(
        &self,
        mailboxes: Vec<String>,
        max_messages: usize,
        max_sessions: usize,
    ) -> bool {
        self.max_sessions.store(max_sessions, Ordering::Relaxed);
        self.max_messages.store(max_messages, Ordering::Relaxed);
        self.send(Command::Mailboxes {
            list: mailboxes,
            max_messages,
        })
    }

    /// Sessions now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The session bound.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }

    /// The per-mailbox bound.
    pub fn max_messages(&self) -> usize {
        self.max_messages.load(Ordering::Relaxed)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn send(&self, c: Command) -> bool {
        match self.tx.try_send(c) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                warn!("voicemail worker queue full: command dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Live {
    session: Session,
    ticket: Ticket,
    remote: SocketAddr,
    purpose: Purpose,
    receiver: Receiver,
    sender: Sender,
    next_send: Instant,
    decoded: Vec<i16>,
    recorder: Option<Recorder>,
    last_flush: Instant,
}

struct Inner {
    limits: Limits,
    prompts: Arc<Prompts>,
    store: Store,
    sessions: HashMap<u64, Live>,
    notice: Box<dyn Fn(Notice) + Send>,
    stats: Arc<Stats>,
    random: RandomState,
}

impl Inner {
    fn random(&self) -> u64 {
        let mut h = self.random.build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.finish()
    }

    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let wait = next_tick.saturating_duration_since(now);
            match rx.recv_timeout(if self.sessions.is_empty() {
                Duration::from_secs(1)
            } else {
                wait
            }) {
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(c) => {
                    self.command(c);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick += TICK;
                if next_tick < now {
                    // We fell behind (a slow disk): do not burst to catch up.
                    next_tick = now + TICK;
                }
            } else if self.sessions.is_empty() {
                next_tick = now + TICK;
            }
        }
        // Shutting down: keep what is being recorded.
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.stop(id, Instant::now());
        }
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Start {
                id,
                ticket,
                remote,
                codec,
                purpose,
            } => self.start(now, id, ticket, remote, codec, purpose),
            Command::Stop { id } => self.stop(id, now),
            Command::List { mailbox, reply } => reply(self.store.list(&mailbox).to_vec()),
            Command::Delete { mailbox, id, reply } => {
                let r = self.store.delete(&mailbox, &id);
                if matches!(r, Ok(true)) {
                    self.counts_changed(&mailbox);
                }
                reply(r)
            }
            Command::SetGreeting {
                mailbox,
                wav,
                reply,
            } => reply(self.store.set_greeting(&mailbox, &wav)),
            Command::Mailboxes { list, max_messages } => {
                let root = self.store_root();
                match Store::open(&root, &list, max_messages) {
                    Ok((s, warnings)) => {
                        for w in warnings {
                            warn!("{w}");
                        }
                        self.store = s;
                        for m in &list {
                            self.counts_changed(m);
                        }
                    }
                    Err(e) => warn!(error = %e, "voicemail store not reopened"),
                }
            }
            Command::Shutdown => {}
        }
    }

    fn store_root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    fn start(
        &mut self,
        now: Instant,
        id: u64,
        ticket: Ticket,
        remote: SocketAddr,
        codec: Codec,
        purpose: Purpose,
    ) {
        let kind = match &purpose {
            Purpose::Deposit { mailbox, .. } => Kind::Deposit {
                greeting: self.store.greeting(mailbox),
                full: self.store.is_full(mailbox) || !self.store.has(mailbox),
            },
            Purpose::Announce(prompts) => Kind::Announce(prompts.clone()),
            Purpose::Retrieve { mailbox, pin } => Kind::Retrieve {
                pin: pin.clone(),
                messages: self
                    .store
                    .list(mailbox)
                    .iter()
                    .map(|m| MessageRef {
                        id: m.id.clone(),
                        heard: m.heard,
                    })
                    .collect(),
            },
        };
        let r = self.random();
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        info!(session = id, %remote, law = codec.law.name(), ?purpose, "voicemail session");
        self.sessions.insert(
            id,
            Live {
                session: Session::new(kind, self.limits.clone(), self.prompts.clone(), now),
                ticket,
                remote,
                purpose,
                receiver: Receiver::new(codec),
                sender: Sender::new(
                    codec.law,
                    r as u32,
                    (r >> 32) as u16,
                    (r >> 48) as u32 * 7919,
                ),
                next_send: now,
                decoded: Vec::with_capacity(8000 + 4 * FRAME),
                recorder: None,
                last_flush: now,
            },
        );
    }

    fn stop(&mut self, id: u64, now: Instant) {
        if let Some(mut l) = self.sessions.remove(&id) {
            l.session.hangup();
            self.pump(id, &mut l, now);
            debug!(session = id, "voicemail session stopped");
        }
    }

    fn tick(&mut self, now: Instant) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(mut l) = self.sessions.remove(&id) else {
                continue;
            };
            self.receive(&mut l, now);
            l.session.handle_timeout(now);
            // One frame per 20 ms of the session's own clock.
            let mut sent = 0;
            while l.next_send <= now && sent < 3 {
                let mut frame = [0i16; FRAME];
                l.session.poll_audio(now, &mut frame);
                let mut buf = [0u8; 12 + FRAME + 16];
                let n = l.sender.packet(&frame, &mut buf);
                if n > 0 {
                    let _ = l.ticket.socket.send_to(&buf[..n], l.remote);
                }
                l.next_send += TICK;
                sent += 1;
            }
            if l.next_send + TICK < now {
                l.next_send = now + TICK;
            }
            self.pump(id, &mut l, now);
            if !l.session.ended() {
                self.sessions.insert(id, l);
            }
        }
    }

    fn receive(&mut self, l: &mut Live, now: Instant) {
        let mut buf = [0u8; 1500];
        for i in 0..=MAX_PACKETS_PER_TICK {
            let (n, from) = match l.ticket.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => break,
            };
            if i == MAX_PACKETS_PER_TICK || from.ip() != l.remote.ip() {
                self.stats.dropped_packets.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Latch the port the caller actually sends from (symmetric RTP).
            l.remote = from;
            l.decoded.clear();
            match l.receiver.receive(&buf[..n], &mut l.decoded) {
                Received::Audio(_) => l.session.on_audio(now, &l.decoded),
                Received::Digit(d) => l.session.on_digit(now, d),
                Received::Nothing => {}
            }
        }
    }

    /// Drains recorded audio and performs the session's events.
    fn pump(&mut self, session: u64, l: &mut Live, now: Instant) {
        if let Some(rec) = l.recorder.as_mut() {
            let mut failed = false;
            l.session
                .drain_recording(|s| failed |= rec.write(s).is_err());
            if failed {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            }
            if now.duration_since(l.last_flush) >= FLUSH_EVERY {
                let _ = rec.flush();
                l.last_flush = now;
            }
        }
        while let Some(e) = l.session.poll_event() {
            match e {
                Event::RecordingStarted => {
                    if let Purpose::Deposit {
                        mailbox,
                        caller,
                        caller_name,
                    } = &l.purpose
                    {
                        let c = Caller {
                            caller: caller.clone(),
                            caller_name: caller_name.clone(),
                            unix_ms: unix_millis(SystemTime::now()),
                        };
                        match self.store.begin(mailbox, c) {
                            Ok(r) => l.recorder = Some(r),
                            Err(e) => {
                                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, mailbox, "cannot record a voicemail message");
                            }
                        }
                    }
                    l.session.drain_recording(|_| {});
                }
                Event::RecordingDone { keep } => {
                    if let Some(mut rec) = l.recorder.take() {
                        l.session.drain_recording(|s| {
                            let _ = rec.write(s);
                        });
                        let mailbox = rec.mailbox().to_string();
                        match self.store.commit(rec, keep) {
                            Ok(Some(meta)) => {
                                info!(
                                    mailbox,
                                    id = meta.id,
                                    secs = meta.duration_secs,
                                    caller = meta.caller,
                                    "voicemail message left"
                                );
                                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                                // Counts first: whoever reports the message sees them updated.
                                self.counts_changed(&mailbox);
                                (self.notice)(Notice::MessageLeft(meta));
                            }
                            Ok(None) => debug!(mailbox, "voicemail recording dropped (no voice)"),
                            Err(e) => {
                                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, mailbox, "voicemail message not stored");
                            }
                        }
                    }
                }
                Event::LoggedIn => {
                    if let Purpose::Retrieve { mailbox, .. } = &l.purpose {
                        info!(mailbox, "voicemail login");
                    }
                }
                Event::WrongPin => {
                    if let Purpose::Retrieve { mailbox, .. } = &l.purpose {
                        warn!(mailbox, remote = %l.remote, "security event: wrong voicemail PIN");
                        (self.notice)(Notice::WrongPin {
                            id: session,
                            mailbox: mailbox.clone(),
                        });
                    }
                }
                Event::Load { id } => {
                    let audio: Option<Clip> = match &l.purpose {
                        Purpose::Retrieve { mailbox, .. } => self.store.load(mailbox, &id).ok(),
                        Purpose::Deposit { .. } | Purpose::Announce(_) => None,
                    };
                    l.session.message_loaded(now, &id, audio);
                }
                Event::MarkHeard { id } => {
                    if let Purpose::Retrieve { mailbox, .. } = &l.purpose {
                        let mailbox = mailbox.clone();
                        match self.store.mark_heard(&mailbox, &id) {
                            Ok(true) => self.counts_changed(&mailbox),
                            Ok(false) => {}
                            Err(e) => {
                                warn!(error = %e, mailbox, id, "voicemail: cannot mark heard")
                            }
                        }
                    }
                }
                Event::Delete { id } => {
                    if let Purpose::Retrieve { mailbox, .. } = &l.purpose {
                        let mailbox = mailbox.clone();
                        match self.store.delete(&mailbox, &id) {
                            Ok(true) => self.counts_changed(&mailbox),
                            Ok(false) => {}
                            Err(e) => warn!(error = %e, mailbox, id, "voicemail: cannot delete"),
                        }
                    }
                }
                Event::Hangup(reason) => {
                    debug!(session, ?reason, "voicemail session hangs up");
                    (self.notice)(Notice::Hangup {
                        id: session,
                        reason,
                    });
                }
            }
        }
    }

    fn counts_changed(&mut self, mailbox: &str) {
        self.stats
            .stored
            .store(self.store.total() as u64, Ordering::Relaxed);
        (self.notice)(Notice::Counts {
            mailbox: mailbox.to_string(),
            counts: self.store.counts(mailbox),
        });
    }
}
