//! The shell of podpbx's media endpoint: the voicemail worker thread (`podpbx-voicemail`) on
//! the pinned addresses, behind the b2bua's [`EndpointPort`]; its notices come back into the
//! signalling loop through a bounded channel (a call to hang up, a mailbox's counts for MWI,
//! a message left for webhooks).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use podpbx_b2bua::{App, Codec, EndpointId, EndpointPort, Family};
use podpbx_config::Config;
use podpbx_voicemail::prompts::Prompts;
use podpbx_voicemail::session::Limits;
use podpbx_voicemail::worker::{Notice, Ticket, Worker, WorkerConfig};
use tokio::sync::mpsc;
use tracing::warn;

/// Notices queued from the worker to the loop (beyond: dropped and logged).
const NOTICE_QUEUE: usize = 1024;

/// The users with a mailbox.
pub fn mailboxes(cfg: &Config) -> Vec<String> {
    cfg.users
        .iter()
        .filter(|u| u.voicemail.is_some())
        .map(|u| u.name.clone())
        .collect()
}

fn limits(cfg: &Config) -> Limits {
    Limits {
        max_message: cfg.voicemail.max_message,
        min_message: cfg.voicemail.min_message,
        silence: cfg.voicemail.silence,
        ..Limits::default()
    }
}

/// Starts the worker (opening the mailboxes, recovering interrupted recordings). Its notices
/// arrive on the returned receiver.
pub fn start(cfg: &Config) -> Result<(Arc<Worker>, mpsc::Receiver<Notice>), String> {
    let prompts = Arc::new(Prompts::embedded()?);
    let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
    let wc = WorkerConfig {
        limits: limits(cfg),
        max_sessions: cfg.voicemail.max_sessions as usize,
        root: cfg.voicemail.dir.clone(),
        mailboxes: mailboxes(cfg),
        max_messages: cfg.voicemail.max_messages as usize,
    };
    let notice = Box::new(move |n: Notice| {
        if tx.try_send(n).is_err() {
            warn!("voicemail notice queue full: notice dropped");
        }
    });
    let worker = Worker::spawn(wc, prompts, notice).map_err(|e| {
        format!(
            "cannot start voicemail in {}: {e}",
            cfg.voicemail.dir.display()
        )
    })?;
    Ok((Arc::new(worker), rx))
}

/// Config reload: mailboxes and limits.
pub fn reconfigure(worker: &Worker, cfg: &Config) {
    worker.reconfigure(
        mailboxes(cfg),
        cfg.voicemail.max_messages as usize,
        cfg.voicemail.max_sessions as usize,
    );
}

/// The worker as the b2bua's endpoint: sockets on our pinned address of the caller's family.
pub struct Endpoint {
    worker: Arc<Worker>,
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    /// Opened, not started yet.
    opened: HashMap<EndpointId, Ticket>,
    next: EndpointId,
}

impl Endpoint {
    pub fn new(worker: Arc<Worker>, cfg: &Config) -> Endpoint {
        Endpoint {
            worker,
            ipv4: cfg.sip.ipv4.map(IpAddr::V4),
            ipv6: cfg.sip.ipv6.map(IpAddr::V6),
            opened: HashMap::new(),
            next: 0,
        }
    }
}

impl EndpointPort for Endpoint {
    fn open(&mut self, family: Family) -> Result<(EndpointId, SocketAddr), String> {
        let ip = match family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
        .ok_or("no pinned address of the caller's family")?;
        let ticket = self.worker.open(ip).map_err(|e| e.to_string())?;
        let local = ticket.local();
        self.next += 1;
        // Opened sessions that were never started are released when the map is trimmed.
        self.opened.insert(self.next, ticket);
        Ok((self.next, local))
    }

    fn start(&mut self, id: EndpointId, remote: SocketAddr, codec: Codec, app: App) {
        if let Some(t) = self.opened.remove(&id) {
            self.worker.start(id, t, remote, codec, app);
        }
    }

    fn stop(&mut self, id: EndpointId) {
        if self.opened.remove(&id).is_none() {
            self.worker.stop(id);
        }
    }
}

/// Registers the endpoint's counters and bounds in `/metrics`.
pub fn register_metrics(worker: &Arc<Worker>, reg: &crate::metrics::Registry) {
    let w = worker.clone();
    reg.gauge_fn(
        "podpbx_voicemail_sessions",
        "Voicemail/IVR sessions now.",
        &[],
        move || w.active() as f64,
    );
    let w = worker.clone();
    reg.gauge_fn(
        "podpbx_voicemail_sessions_max",
        "Bound of voicemail/IVR sessions ([voicemail] max_sessions).",
        &[],
        move || w.max_sessions() as f64,
    );
    let w = worker.clone();
    reg.gauge_fn(
        "podpbx_voicemail_mailbox_max_messages",
        "Bound of messages per mailbox ([voicemail] max_messages).",
        &[],
        move || w.max_messages() as f64,
    );
    let w = worker.clone();
    reg.gauge_fn(
        "podpbx_voicemail_messages",
        "Messages held in all mailboxes.",
        &[],
        move || w.stats().stored.load(Ordering::Relaxed) as f64,
    );
    let w = worker.clone();
    reg.counter_fn(
        "podpbx_voicemail_sessions_total",
        "Voicemail/IVR sessions started.",
        &[],
        move || w.stats().sessions.load(Ordering::Relaxed),
    );
    let w = worker.clone();
    reg.counter_fn(
        "podpbx_voicemail_refused_total",
        "Voicemail/IVR sessions refused at the bound.",
        &[],
        move || w.stats().refused.load(Ordering::Relaxed),
    );
    let w = worker.clone();
    reg.counter_fn(
        "podpbx_voicemail_messages_total",
        "Voicemail messages stored.",
        &[],
        move || w.stats().messages.load(Ordering::Relaxed),
    );
    let w = worker.clone();
    reg.counter_fn(
        "podpbx_voicemail_dropped_packets_total",
        "RTP datagrams the endpoint dropped (foreign source, over the per-tick cap).",
        &[],
        move || w.stats().dropped_packets.load(Ordering::Relaxed),
    );
    let w = worker.clone();
    reg.counter_fn(
        "podpbx_voicemail_store_errors_total",
        "Voicemail store operations that failed.",
        &[],
        move || w.stats().store_errors.load(Ordering::Relaxed),
    );
}
