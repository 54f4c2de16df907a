//! Voicemail notifications by e-mail (`[email]`, a user's `email`): a tokio task with a bounded
//! queue sends each new message to its owner, the WAV attached, over SMTP with STARTTLS or TLS
//! (lettre over rustls; credentials from a file), retrying with back-off. The signalling loop
//! only `try_send`s a job: nothing here can delay a call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use podpbx_config::{EmailConfig, SmtpTls};
use podpbx_voicemail::store::Meta;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Largest attachment sent (a longer recording is announced without it).
const MAX_ATTACHMENT: u64 = 16 * 1024 * 1024;

/// One notification.
#[derive(Debug, Clone)]
pub struct Job {
    /// The owner's address.
    pub to: String,
    /// The message.
    pub meta: Meta,
    /// Its WAV file.
    pub wav: PathBuf,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub given_up: AtomicU64,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

/// The handle the signalling loop holds.
pub struct Mailer {
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
    capacity: usize,
}

impl Mailer {
    /// Starts the sending task.
    pub fn start(cfg: EmailConfig, domain: &str) -> Mailer {
        let capacity = cfg.queue as usize;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(rx, cfg, domain.to_string(), stats.clone()));
        Mailer {
            tx,
            stats,
            capacity,
        }
    }

    /// A new message for `to` (never blocks; a full queue drops it, counted).
    pub fn push(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!("e-mail queue full: voicemail notification dropped");
            }
        }
    }

    /// Counters and the queue bound in `/metrics`.
    pub fn register_metrics(&self, reg: &crate::metrics::Registry) {
        let cap = self.capacity as f64;
        reg.gauge_fn(
            "podpbx_email_queue_capacity",
            "Bound of the e-mail queue ([email] queue).",
            &[],
            move || cap,
        );
        let s = self.stats.clone();
        reg.gauge_fn(
            "podpbx_email_queue",
            "Voicemail e-mails waiting or being sent.",
            &[],
            move || s.queued.load(Ordering::Relaxed) as f64,
        );
        type Get = fn(&Stats) -> &AtomicU64;
        let counters: [(&str, &str, Get); 4] = [
            (
                "podpbx_email_sent_total",
                "Voicemail e-mails accepted by the SMTP server.",
                |s| &s.sent,
            ),
            (
                "podpbx_email_failed_attempts_total",
                "SMTP attempts that failed.",
                |s| &s.failed_attempts,
            ),
            (
                "podpbx_email_given_up_total",
                "Voicemail e-mails given up after max_attempts.",
                |s| &s.given_up,
            ),
            (
                "podpbx_email_dropped_total",
                "Voicemail e-mails dropped because the queue was full.",
                |s| &s.dropped,
            ),
        ];
        for (name, help, f) in counters {
            let s = self.stats.clone();
            reg.counter_fn(name, help, &[], move || f(&s).load(Ordering::Relaxed));
        }
    }
}

fn transport(
    cfg: &EmailConfig,
    domain: &str,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = |host: &str| {
        TlsParameters::new(host.to_string()).map_err(|e| format!("TLS parameters for {host}: {e}"))
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
        .port(cfg.port)
        .timeout(Some(cfg.timeout))
        .hello_name(ClientId::Domain(domain.to_string()))
        .tls(match cfg.tls {
            // Required, never opportunistic: no silent fall-back to clear text.
            SmtpTls::StartTls => Tls::Required(tls(&cfg.host)?),
            SmtpTls::Tls => Tls::Wrapper(tls(&cfg.host)?),
            SmtpTls::None => Tls::None,
        });
    let builder = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => {
            builder.credentials(Credentials::new(u.clone(), p.expose().to_string()))
        }
        _ => builder,
    };
    Ok(builder.build())
}

/// The e-mail of a message: a short text and, when `attach`, the WAV.
pub async fn message(cfg: &EmailConfig, job: &Job) -> Result<Message, String> {
    let m = &job.meta;
    let from: Mailbox = format!("podpbx <{}>", cfg.from)
        .parse()
        .map_err(|e| format!("from: {e}"))?;
    let to: Mailbox = job.to.parse().map_err(|e| format!("to {}: {e}", job.to))?;
    let who = match &m.caller_name {
        Some(n) => format!("{n} ({})", m.caller),
        None => m.caller.clone(),
    };
    let text = format!(
        "New voicemail for {} from {who}\n\nTime: {}\nLength: {:.1} s\nMessage: {}\n",
        m.mailbox, m.time, m.duration_secs, m.id
    );
    let builder = Message::builder()
        .from(from)
        .to(to)
        .subject(format!("Voicemail from {who} ({:.0} s)", m.duration_secs));
    let body = SinglePart::plain(text);
    let attachment = if cfg.attach {
        match tokio::fs::metadata(&job.wav).await {
            Ok(md) if md.len() <= MAX_ATTACHMENT => tokio::fs::read(&job.wav).await.ok(),
            _ => None,
        }
    } else {
        None
    };
    let msg = match attachment {
        Some(wav) => {
            let ct = ContentType::parse("audio/wav").map_err(|e| e.to_string())?;
            let part = Attachment::new(format!("voicemail-{}.wav", m.id)).body(wav, ct);
            builder.multipart(MultiPart::mixed().singlepart(body).singlepart(part))
        }
        None => builder.singlepart(body),
    };
    msg.map_err(|e| e.to_string())
}

async fn run(mut rx: mpsc::Receiver<Job>, cfg: EmailConfig, domain: String, stats: Arc<Stats>) {
    let transport = match transport(&cfg, &domain) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "e-mail notifications disabled");
            while rx.recv().await.is_some() {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                stats.given_up.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    // One at a time, in order: a home sends a few a day; retries wait in place (the queue's
    // bound holds the rest).
    while let Some(job) = rx.recv().await {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match message(&cfg, &job).await {
                Ok(m) => transport
                    .send(m)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    info!(to = %job.to, message = %job.meta.id, "voicemail e-mailed");
                    break;
                }
                Err(e) => {
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt >= cfg.max_attempts {
                        stats.given_up.fetch_add(1, Ordering::Relaxed);
                        warn!(to = %job.to, attempts = attempt, error = %e, "voicemail e-mail not sent: giving up");
                        break;
                    }
                    let wait = Duration::from_secs(5u64 << (attempt - 1).min(5));
                    warn!(to = %job.to, attempt, error = %e, retry_in = ?wait, "voicemail e-mail attempt failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        stats.queued.fetch_sub(1, Ordering::Relaxed);
    }
}
