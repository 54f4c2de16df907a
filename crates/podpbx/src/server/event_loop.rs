//! The shell's loop: one event at a time into the core (with `now`), then the core's outputs
//! performed. The loop never waits for disk, DNS or media: those are other threads and tasks
//! whose results come back as events.

use crate::admin::{Admin, CoreRequest, JsonPublisher, ReloadRequest};
use crate::cdr::CdrWriter;
use crate::core::{Core, Output};
use crate::lifecycle::{Shutdown, StopEvent};
use crate::state_writer::StateWriter;
use crate::stats::Stats;
use crate::transport::{Inbound, Transports};
use crate::udp::{Datagram, SendFailure, UdpIo};
use crate::webhooks::Webhooks;
use bytes::Bytes;
use podpbx_sip::message::leading_keepalive;
use podpbx_sip::transaction::Peer;
use podpbx_sip::{Flow, Framing, Message, Transport};
use podpbx_voicemail::worker::{Notice, Worker};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How long the stopping loop waits for the BYEs of ended calls and the trunks' un-REGISTER.
const DRAIN: Duration = Duration::from_secs(2);

/// UDP batches handled per turn of the loop (of `crate::udp::BATCH` datagrams each).
const UDP_BATCHES: usize = 8;

/// Where events come from.
pub(super) struct Events {
    pub(super) inbound: mpsc::Receiver<Inbound>,
    /// DNS answers, media, voicemail, reloads and admin requests, through one channel (see
    /// [`RareSources::spawn`]).
    pub(super) rare: mpsc::Receiver<Event>,
    pub(super) shutdown: Shutdown,
    /// Status that changes slowly is published once a second, not per message.
    pub(super) tick: tokio::time::Interval,
    /// The origin of the timer grids (see [`coalesce`]).
    pub(super) epoch: Instant,
    /// The core's next deadline: one timer, moved only when the deadline changes (see
    /// [`Events::arm`]).
    pub(super) timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// What `timer` is set to; `None`: the core has no deadline (`timer` is not polled).
    pub(super) timer_at: Option<tokio::time::Instant>,
}

/// The core's exact deadlines (retransmissions, failures, calls) are rounded up to a grid of
/// this step, so that timers due close to each other cost one wake-up of the loop instead of
/// one each. SIP timers are hundreds of milliseconds; a few more do not matter.
const TIMER_GRID: Duration = Duration::from_millis(10);

/// The ends of lingering transactions (Timers D, I, J, K, L, M: seconds long, each call leaves
/// several, each due at its own instant) are rounded up to this coarser grid: at 200 calls/s
/// they would otherwise wake the loop on nearly every point of the 10 ms grid, 100 times a
/// second, for nothing but freeing memory. A transaction then absorbs retransmissions up to
/// this much longer (< 1 % of Timer J's 32 s); the table's bound is unaffected (over it,
/// lingering state is evicted at once).
const LINGER_GRID: Duration = Duration::from_millis(250);

/// `deadline` rounded up to the next point of the grid of `step` that starts at `epoch`.
fn coalesce(epoch: Instant, deadline: Instant, step: Duration) -> Instant {
    let step = step.as_nanos().max(1);
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let up = since.div_ceil(step) * step;
    epoch + Duration::from_nanos(u64::try_from(up).unwrap_or(u64::MAX))
}

/// The instant the loop wakes for the core: its exact deadline on the fine grid, its lax one
/// (lingering transactions) on the coarse grid, whichever comes first. A wake-up for an exact
/// deadline also ends the lingering transactions already due.
fn wake_at(epoch: Instant, (exact, lax): (Option<Instant>, Option<Instant>)) -> Option<Instant> {
    let exact = exact.map(|d| coalesce(epoch, d, TIMER_GRID));
    let lax = lax.map(|d| coalesce(epoch, d, LINGER_GRID));
    exact.into_iter().chain(lax).min()
}

/// The event sources that carry a few events a second at most. A task of their own forwards
/// them into one channel, so that each turn of the loop polls one receiver for them instead of
/// six: every poll of a receiver registers the loop's waker, and polling thirteen sources twice
/// per wake-up was ~6 % of a REGISTER's instructions.
pub(super) struct RareSources {
    pub(super) dns: mpsc::Receiver<crate::dns::Answer>,
    pub(super) media: mpsc::Receiver<podpbx_media::Event>,
    pub(super) voicemail: mpsc::Receiver<Notice>,
    pub(super) reload: mpsc::Receiver<&'static str>,
    pub(super) admin: mpsc::Receiver<CoreRequest>,
    pub(super) admin_reload: mpsc::Receiver<ReloadRequest>,
}

/// Events the forwarding task holds for the loop; a full channel makes it wait, and the
/// sources' own bounded channels then hold their senders back as before.
const RARE_QUEUE: usize = 64;

impl RareSources {
    /// Starts the forwarding task (on the current runtime); its channel closes when every source
    /// has closed or the loop is gone.
    pub(super) fn spawn(self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(RARE_QUEUE);
        let RareSources {
            mut dns,
            mut media,
            mut voicemail,
            mut reload,
            mut admin,
            mut admin_reload,
        } = self;
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    Some(answer) = dns.recv() => Event::Dns(answer),
                    Some(n) = voicemail.recv() => Event::Voicemail(n),
                    Some(ev) = media.recv() => Event::Media(ev),
                    Some(why) = reload.recv() => Event::Reload(why),
                    Some(req) = admin_reload.recv() => Event::AdminReload(req),
                    Some(req) = admin.recv() => Event::Admin(req),
                    else => break,
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// One thing that happened.
pub(super) enum Event {
    Inbound(Inbound),
    /// The transports' channel closed: nothing more will arrive.
    InboundClosed,
    /// The core's deadline passed.
    Timeout,
    /// UDP socket `i` is readable.
    Udp(usize),
    Dns(crate::dns::Answer),
    Tick,
    Voicemail(Notice),
    Media(podpbx_media::Event),
    Reload(&'static str),
    AdminReload(ReloadRequest),
    Admin(CoreRequest),
    Stop(StopEvent),
}

impl Events {
    /// Points `timer` at `deadline` if that changed. Most turns of the loop leave the deadline
    /// where it was and cost nothing here. A changed deadline gets a new timer entry in place
    /// rather than `Sleep::reset`: tokio moves a timer later lazily, leaving it in its wheel at
    /// the old instant, which would wake the loop there for nothing (a cancelled
    /// retransmission timer moves the deadline later on every call).
    fn arm(&mut self, deadline: Option<Instant>) {
        let deadline = deadline.map(tokio::time::Instant::from_std);
        if deadline == self.timer_at {
            return;
        }
        self.timer_at = deadline;
        if let Some(d) = deadline {
            self.timer.set(tokio::time::sleep_until(d));
        }
    }

    /// The next event; `deadlines` are the core's next timers (see [`Core::poll_timeouts`]).
    async fn next(&mut self, udp: &UdpIo, deadlines: (Option<Instant>, Option<Instant>)) -> Event {
        self.arm(wake_at(self.epoch, deadlines));
        let armed = self.timer_at.is_some();
        tokio::select! {
            _ = udp.readable(0) => Event::Udp(0),
            _ = udp.readable(1) => Event::Udp(1),
            msg = self.inbound.recv() => match msg {
                Some(m) => Event::Inbound(m),
                None => Event::InboundClosed,
            },
            _ = &mut self.timer, if armed => {
                // Fired: the next deadline needs a new entry even if it is the same instant
                // (the core's work at this one is done, so it cannot be).
                self.timer_at = None;
                Event::Timeout
            }
            _ = self.tick.tick() => Event::Tick,
            Some(ev) = self.rare.recv() => ev,
            ev = self.shutdown.next() => Event::Stop(ev),
        }
    }

    /// While stopping: messages (answers to our BYEs and un-REGISTERs) and timers only.
    async fn next_draining(&mut self, udp: &UdpIo, deadline: tokio::time::Instant) -> Event {
        tokio::select! {
            _ = udp.readable(0) => Event::Udp(0),
            _ = udp.readable(1) => Event::Udp(1),
            Some(m) = self.inbound.recv() => Event::Inbound(m),
            _ = tokio::time::sleep_until(deadline) => Event::Timeout,
        }
    }
}

/// What the loop owns besides its event sources.
pub(super) struct State {
    pub(super) core: Core,
    pub(super) transports: Transports,
    /// SIP over UDP, read and written by this loop in batches.
    pub(super) udp: UdpIo,
    /// The batch being handled (its buffer reused).
    pub(super) udp_batch: Vec<Datagram>,
    pub(super) udp_failed: Vec<SendFailure>,
    /// The last UDP turn stopped with datagrams still waiting (see [`Shell::run`]).
    pub(super) udp_more: bool,
    pub(super) dns: crate::dns::Dns,
    pub(super) stats: Arc<Stats>,
    pub(super) admin: Admin,
    pub(super) config_path: Option<PathBuf>,
    /// The relay, for its live counters.
    pub(super) relay: Option<podpbx_media::Relay>,
    pub(super) relay_seen: podpbx_media::RelayTotals,
    pub(super) voicemail: Option<Arc<Worker>>,
    /// Voicemail by e-mail.
    pub(super) mailer: Option<crate::email::Mailer>,
    pub(super) mailbox_counts: HashMap<String, podpbx_voicemail::store::Counts>,
    pub(super) webhooks: Webhooks,
    /// Trunks' last registration state, for `trunk` events.
    pub(super) trunks_up: HashMap<String, bool>,
    pub(super) trunk_names: Vec<String>,
    pub(super) state_writer: StateWriter,
    /// Run-time forwarding/DND/modes (`features.json`): their own writer.
    pub(super) features_writer: StateWriter,
    pub(super) features_path: PathBuf,
    pub(super) cdr_writer: CdrWriter,
    pub(super) publish: Publishers,
    pub(super) presence_stats: Arc<Mutex<(podpbx_presence::NotifierStats, usize, usize)>>,
    pub(super) tx_stats: Arc<Mutex<podpbx_sip::transaction::TxStats>>,
    pub(super) auth_failures_seen: u64,
    /// Hands the memory a load freed back to the kernel (sampled on the status tick).
    pub(super) heap: super::heap::Trimmer,
    /// A peer that went away makes every send to it fail: one line per 10 s burst, counted.
    pub(super) send_failed_log: crate::logging::RateLimit,
}

/// The snapshots `/api/<name>` serves.
pub(super) struct Publishers {
    pub(super) calls: JsonPublisher,
    pub(super) subscriptions: JsonPublisher,
    pub(super) trunks: JsonPublisher,
}

/// The shell: its state and its event sources.
pub(super) struct Shell {
    pub(super) state: State,
    pub(super) events: Events,
}

impl Shell {
    /// Runs until a stop: the loop, the bounded drain, the final writes.
    pub(super) async fn run(self) -> Result<(), String> {
        let Shell {
            mut state,
            mut events,
        } = self;
        state.core.start(Instant::now());
        // The start's peaks (the parsed TOML, a second copy of the config, the restored
        // bindings file) are freed by now but would stay resident.
        super::release_free_heap();
        info!(udp = ?state.transports.udp_addrs(), tcp = ?state.transports.tcp_addrs(), tls = ?state.transports.tls_addrs(), "podpbx ready");
        loop {
            let ev = events.next(&state.udp, state.core.poll_timeouts()).await;
            if matches!(ev, Event::InboundClosed) {
                break;
            }
            state.handle(ev);
            state.perform_outputs(false);
            state.after_turn();
            if std::mem::take(&mut state.udp_more) {
                // A socket still has datagrams, so its readiness stays set and the next turn would
                // find it ready at once: give the runtime its turn first, so that the I/O driver
                // sees the other sockets (a BYE on the IPv6 socket during a flood on the IPv4
                // one) and the timers fire.
                tokio::task::yield_now().await;
            }
            if events.shutdown.is_stopping() {
                break;
            }
        }
        // Let the BYEs of ended calls (their CDRs are written when the BYE transaction
        // completes) and the trunks' un-REGISTER (with a digest round) finish, bounded: a pod
        // being replaced must release its addresses quickly.
        let drain_until = tokio::time::Instant::now() + DRAIN;
        while (!state.core.trunks_stopped() || state.core.active_calls() > 0)
            && tokio::time::Instant::now() < drain_until
        {
            let deadline = state
                .core
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .map_or(drain_until, |d| d.min(drain_until));
            match events.next_draining(&state.udp, deadline).await {
                Event::Inbound(Inbound::Message(msg, flow)) => {
                    state
                        .core
                        .handle_message(Instant::now(), SystemTime::now(), &msg, flow)
                }
                Event::Udp(i) => state.udp_readable(i),
                Event::Timeout => state.core.handle_timeout(Instant::now()),
                _ => {}
            }
            state.perform_outputs(true);
        }
        let State {
            mut core,
            state_writer,
            features_writer,
            features_path,
            cdr_writer,
            ..
        } = state;
        state_writer.finish(core.bindings_snapshot());
        features_writer.finish(core.state_bytes().map(|d| (features_path, d)));
        // The CDRs of the calls ended by the stop are on disk before the process exits.
        cdr_writer.finish();
        events.shutdown.finish();
        Ok(())
    }
}

impl State {
    /// Reads the datagrams waiting on UDP socket `i` and hands them to the core, a batch at a
    /// time, sending each batch's answers before reading the next; at most `UDP_BATCHES`
    /// batches per turn, so timers and other events keep their turn under a flood (the rest
    /// stays in the kernel's socket buffer, whose size is fixed).
    fn udp_readable(&mut self, i: usize) {
        let Some(local) = self.udp.local(i) else {
            return;
        };
        for _ in 0..UDP_BATCHES {
            let mut batch = std::mem::take(&mut self.udp_batch);
            let read = self.udp.recv(i, &mut batch);
            let (now, wall) = (Instant::now(), SystemTime::now());
            // How far behind the network the loop is: the oldest datagram's wait.
            let lag = batch
                .iter()
                .filter_map(|d| d.arrived)
                .filter_map(|t| wall.duration_since(t).ok())
                .max();
            if let Some(lag) = lag {
                self.core.note_lag(now, lag);
            }
            for d in batch.drain(..) {
                if leading_keepalive(&d.data) == d.data.len() {
                    // RFC 5626 §4.4.1 STUN-less UDP keep-alive: nothing to answer.
                    self.transports.count_in(true);
                    continue;
                }
                let flow = Flow {
                    transport: Transport::Udp,
                    local,
                    remote: d.remote,
                    conn: 0,
                };
                match Message::parse(d.data.clone(), Framing::Datagram) {
                    Ok(msg) => {
                        self.transports.count_in(false);
                        self.core.handle_message(now, wall, &msg, flow);
                    }
                    Err(err) => self
                        .core
                        .handle_malformed(now, &d.data, &err.to_string(), flow),
                }
            }
            self.udp_batch = batch;
            self.perform_outputs(false);
            self.udp_more = read == crate::udp::BATCH;
            if !self.udp_more {
                break;
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        if let Event::Udp(i) = ev {
            self.udp_readable(i);
            return;
        }
        let core = &mut self.core;
        match ev {
            Event::Inbound(Inbound::Message(msg, flow)) => {
                core.handle_message(Instant::now(), SystemTime::now(), &msg, flow)
            }
            Event::Inbound(Inbound::Malformed { data, reason, flow }) => {
                core.handle_malformed(Instant::now(), &data, &reason, flow)
            }
            Event::Inbound(Inbound::SendFailed {
                transport,
                dest,
                conn,
            }) => core.transport_error(Peer {
                addr: dest,
                transport,
                conn,
            }),
            Event::InboundClosed | Event::Udp(_) => {}
            Event::Timeout => core.handle_timeout(Instant::now()),
            Event::Dns((id, answer)) => {
                core.dns_answer(Instant::now(), id, answer);
                set_trunk_tls_names(core, &self.transports);
            }
            Event::Tick => self.tick(),
            Event::Voicemail(n) => self.voicemail_notice(n),
            Event::Media(ev) => match ev {
                podpbx_media::Event::MediaTimeout { session, .. } => {
                    core.media_timeout(Instant::now(), session.0);
                }
                podpbx_media::Event::Dtmf {
                    session,
                    leg,
                    digit,
                    duration_ms,
                } => {
                    let duration = Duration::from_millis(duration_ms.into());
                    core.media_dtmf(Instant::now(), session.0, leg, digit, duration);
                }
                podpbx_media::Event::MixedStreams {
                    session,
                    leg,
                    source,
                    ssrcs,
                } => core.media_mixed_streams(session.0, leg, source, ssrcs),
                podpbx_media::Event::Latched { .. } => {}
            },
            Event::Reload(why) => {
                info!(trigger = why, "configuration reload");
                let _ = self.reload();
            }
            Event::AdminReload(req) => {
                info!(trigger = "admin", "configuration reload");
                req.respond(self.reload());
            }
            Event::Admin(CoreRequest::Ping(p)) => p.pong(),
            Event::Admin(CoreRequest::Snapshot(s)) if s.name == "registrations" => {
                s.reply(crate::admin::json::registrations(core.registrar()));
            }
            Event::Admin(CoreRequest::Snapshot(s)) if s.name == "features" => {
                s.reply(core.features_json());
            }
            Event::Admin(CoreRequest::Snapshot(s)) => s.reply(serde_json::Value::Null),
            Event::Admin(CoreRequest::Command(c)) => {
                let r = core.command(&c.args);
                info!(command = %c.args.join(" "), result = ?r, "ctl");
                c.respond(r);
            }
            Event::Stop(StopEvent::Begin) => {
                core.begin_shutdown();
                core.stop_trunks(Instant::now());
            }
            // The core ends the remaining calls here (their BYEs go out below).
            Event::Stop(StopEvent::Stop) => core.end_calls(Instant::now()),
        }
    }

    /// Performs what the core asked for. While `stopping`, no DNS lookup starts and the
    /// bindings are written once at the end instead.
    fn perform_outputs(&mut self, stopping: bool) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { peer, data }
                    if peer.transport == Transport::Udp
                        && crate::transport::sendable(peer.addr.ip()) =>
                {
                    if !self.udp.queue(peer.addr, data) {
                        // No socket of that family: the transports count and report it.
                        let _ = self.transports.send(
                            peer.transport,
                            peer.addr,
                            peer.conn,
                            Bytes::new(),
                        );
                        if !stopping {
                            self.core.transport_error(peer);
                        }
                    }
                }
                Output::Send { peer, data } => {
                    let sent = self
                        .transports
                        .send(peer.transport, peer.addr, peer.conn, data);
                    if let Err(e) = sent {
                        if stopping {
                            continue;
                        }
                        if let Some(suppressed) = self.send_failed_log.check(Instant::now()) {
                            warn!(error = %e, suppressed, "send failed");
                        }
                        self.core.transport_error(peer);
                    }
                }
                Output::Resolve { .. } if stopping => {}
                Output::Resolve { id, name, rtype } => self.dns.resolve(id, name, rtype),
                Output::SaveBindings { .. } if stopping => {}
                // Latest-wins channel to one writer thread: writes stay in order.
                Output::SaveBindings { path, data } => self.state_writer.send((path, data)),
                Output::Cdr { file, cdr } => self.cdr_writer.write(file, cdr),
                Output::Event(data) => self.webhooks.push(data),
            }
        }
        let mut failed = std::mem::take(&mut self.udp_failed);
        let sent = self.udp.flush(&mut failed);
        self.transports.count_out(sent, failed.len());
        for f in failed.drain(..) {
            // A full socket buffer loses the datagram like the network would (SIP
            // retransmits); only an error about the peer fails its transactions.
            if stopping || f.error.kind() == std::io::ErrorKind::WouldBlock {
                continue;
            }
            if let Some(suppressed) = self.send_failed_log.check(Instant::now()) {
                warn!(error = %f.error, remote = %f.remote, suppressed, "send failed");
            }
            self.core.transport_error(Peer {
                addr: f.remote,
                transport: Transport::Udp,
                conn: 0,
            });
        }
        self.udp_failed = failed;
    }

    /// Bookkeeping after every event.
    fn after_turn(&mut self) {
        // A trunk that just registered makes /readyz 200 now, not on the next tick.
        if self.core.take_trunks_changed() {
            self.publish_trunks();
        }
        if let Some(data) = self.core.take_state_save() {
            self.features_writer
                .send((self.features_path.clone(), data));
        }
        self.admin
            .metrics()
            .calls_active
            .set_count(self.core.active_calls());
        for d in self.core.take_ended_calls() {
            self.admin.metrics().call_ended(d);
        }
    }

    /// The 1 s status tick: snapshots for the admin API, metrics, webhook events.
    fn tick(&mut self) {
        self.publish_trunks();
        trunk_events(&self.core, &mut self.trunks_up, &mut self.webhooks);
        let now = Instant::now();
        self.core.count_setup(now);
        self.publish.calls.publish(self.core.calls_json(now));
        self.publish
            .subscriptions
            .publish(self.core.subscriptions_json(now));
        if let Ok(mut p) = self.presence_stats.lock() {
            *p = self.core.presence_stats();
        }
        if let Ok(mut t) = self.tx_stats.lock() {
            *t = self.core.tx_stats();
        }
        if self.core.take_registrations_changed() {
            self.publish_registrations();
        }
        let failures = Stats::get(&self.stats.auth_failures);
        self.admin
            .metrics()
            .auth_failures
            .add(failures.saturating_sub(self.auth_failures_seen));
        self.auth_failures_seen = failures;
        self.admin
            .metrics()
            .blocked_sources
            .set_count(self.core.registrar().stats().blocked_sources);
        if let Some(relay) = &self.relay {
            publish_relay_totals(&self.admin, relay.totals(), &mut self.relay_seen);
        }
        // The room a load left in the tables first: what this frees the trim can hand back.
        if self.core.shrink(now) {
            debug!("tables shrunk after a load");
        }
        if let Some((sample, trimmed)) = self.heap.tick() {
            let m = self.admin.metrics();
            m.heap_free_bytes
                .set(i64::try_from(sample.free).unwrap_or(i64::MAX));
            m.heap_unused_resident_bytes
                .set(i64::try_from(sample.unused_resident).unwrap_or(i64::MAX));
            if trimmed {
                m.heap_trims.inc();
            }
        }
    }

    pub(super) fn publish_registrations(&self) {
        self.admin
            .metrics()
            .registrations
            .set_count(self.core.registrar().stats().bindings);
    }

    fn publish_trunks(&mut self) {
        let trunks = self.core.trunks();
        self.publish
            .trunks
            .publish(trunks.status_json(Instant::now(), SystemTime::now()));
        self.admin
            .set_trunks(&trunks.readiness(), &trunks.health(), &mut self.trunk_names);
    }

    fn voicemail_notice(&mut self, n: Notice) {
        match n {
            Notice::Hangup { id, .. } => self.core.endpoint_done(Instant::now(), id),
            Notice::Counts { mailbox, counts } => {
                self.core
                    .set_mwi(Instant::now(), &mailbox, counts.new, counts.old);
                self.mailbox_counts.insert(mailbox, counts);
            }
            Notice::MessageLeft(m) => {
                let c = self
                    .mailbox_counts
                    .get(&m.mailbox)
                    .copied()
                    .unwrap_or_default();
                if let (Some(mailer), Some(cfg)) = (&self.mailer, self.core.config()) {
                    if let Some(to) = cfg.user(&m.mailbox).and_then(|u| u.email.clone()) {
                        mailer.push(crate::email::Job {
                            to,
                            wav: cfg
                                .voicemail
                                .dir
                                .join(&m.mailbox)
                                .join(format!("{}.wav", m.id)),
                            meta: m.clone(),
                        });
                    }
                }
                self.webhooks.push(podpbx_events::Data::Voicemail {
                    mailbox: m.mailbox,
                    from: m.caller,
                    from_name: m.caller_name,
                    duration_secs: m.duration_secs,
                    message_id: m.id,
                    new: c.new,
                    old: c.old,
                });
            }
            Notice::WrongPin { .. } => {}
        }
    }

    /// A reload through `crate::reload`, then the parts of the shell that follow the config.
    fn reload(&mut self) -> Result<String, String> {
        let result = crate::reload::reload(&mut self.core, self.config_path.as_deref());
        if result.is_ok() {
            if let Some(cfg) = self.core.config() {
                self.webhooks.reconfigure(&cfg);
                if let Some(w) = &self.voicemail {
                    crate::voicemail::reconfigure(w, &cfg);
                }
            }
        }
        set_trunk_tls_names(&self.core, &self.transports);
        // The old configuration and the new one's parse are freed now.
        super::release_free_heap();
        result
    }
}

/// The certificate of a TLS trunk must carry the trunk's host name (RFC 5922 §7.2), or its IP
/// address when the host is an IP literal: tells the transports which name each located server
/// of a TLS trunk must prove (the servers change when DNS does, so this runs after each answer
/// and reload).
pub(super) fn set_trunk_tls_names(core: &Core, transports: &Transports) {
    for (addr, host) in core.trunks().tls_servers() {
        if let Ok(name) = crate::tls::server_name(&host) {
            transports.set_tls_name(addr, name);
        }
    }
}

/// `trunk` events: a trunk that registers came up or went down since the last tick.
fn trunk_events(
    core: &Core,
    seen: &mut std::collections::HashMap<String, bool>,
    webhooks: &mut crate::webhooks::Webhooks,
) {
    let reasons = core.trunks().readiness();
    for h in core.trunks().health() {
        let Some(up) = h.registered else { continue };
        let before = seen.insert(h.name.clone(), up);
        // The first "down" at start is not news (registering takes a moment); the first "up" is.
        if before == Some(up) || (before.is_none() && !up) {
            continue;
        }
        let reason = reasons
            .iter()
            .find(|(n, _)| *n == h.name)
            .and_then(|(_, why)| why.clone());
        webhooks.push(podpbx_events::Data::Trunk {
            trunk: h.name.clone(),
            state: if up { "up" } else { "down" },
            reason: if up { None } else { reason },
        });
    }
    seen.retain(|n, _| core.trunks().health().iter().any(|h| &h.name == n));
}

/// Adds what the relay forwarded and dropped since the last tick to the metrics (the relay's
/// counters are live: calls in progress count, once a second).
fn publish_relay_totals(
    admin: &crate::admin::Admin,
    now: podpbx_media::RelayTotals,
    seen: &mut podpbx_media::RelayTotals,
) {
    let m = admin.metrics();
    m.relay_packets
        .add(now.forwarded_packets.saturating_sub(seen.forwarded_packets));
    m.relay_bytes
        .add(now.forwarded_bytes.saturating_sub(seen.forwarded_bytes));
    m.relay_session_slots
        .set(i64::try_from(now.session_slots).unwrap_or(i64::MAX));
    m.relay_ssrc_flaps
        .add(now.ssrc_flaps.saturating_sub(seen.ssrc_flaps));
    m.relay_digits_limited
        .add(now.digits_limited.saturating_sub(seen.digits_limited));
    m.relay_events_dropped
        .add(now.events_dropped.saturating_sub(seen.events_dropped));
    let (d, s) = (&now.drops, &seen.drops);
    for (reason, n, before) in [
        ("foreign_source", d.foreign_source, s.foreign_source),
        ("malformed", d.malformed, s.malformed),
        ("not_rtp", d.not_rtp, s.not_rtp),
        ("oversize", d.oversize, s.oversize),
        ("no_destination", d.no_destination, s.no_destination),
        ("send_error", d.send_error, s.send_error),
        ("srtp", d.srtp, s.srtp),
    ] {
        if n > before {
            m.relay_dropped(reason).add(n - before);
        }
    }
    *seen = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingering_ends_wait_for_the_coarse_grid_and_exact_deadlines_do_not() {
        let e = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wake_at(e, (None, None)), None);
        assert_eq!(wake_at(e, (Some(e + ms(3)), None)), Some(e + ms(10)));
        assert_eq!(wake_at(e, (Some(e + ms(20)), None)), Some(e + ms(20)));
        assert_eq!(wake_at(e, (None, Some(e + ms(3)))), Some(e + ms(250)));
        // An exact deadline before the lax one's grid point wins (and ends the lingering
        // transactions due by then); a later one waits for it.
        assert_eq!(
            wake_at(e, (Some(e + ms(103)), Some(e + ms(3)))),
            Some(e + ms(110))
        );
        assert_eq!(
            wake_at(e, (Some(e + ms(503)), Some(e + ms(3)))),
            Some(e + ms(250))
        );
    }
}
