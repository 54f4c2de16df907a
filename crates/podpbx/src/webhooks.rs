//! The shell of webhook delivery: a tokio task drives the sans-IO [`Dispatcher`]
//! (`podpbx-events`), performing each HTTP POST with its timeout over TCP or TLS (the name is
//! looked up by the system resolver off the signalling loop). The signalling loop only
//! `try_send`s events into a bounded channel: it never waits for a webhook.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use podpbx_config::Config;
use podpbx_events::{Attempt, Data, DispatchStats, Dispatcher, Event};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

enum Cmd {
    Event(Event),
    Reconfigure(Vec<podpbx_config::Webhook>, usize),
}

/// The handle the signalling loop holds.
pub struct Webhooks {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<DispatchStats>>,
    /// Events dropped because the channel to the task was full.
    overflow: Arc<AtomicU64>,
    prefix: String,
    next: u64,
}

impl Webhooks {
    /// Starts the delivery task for `cfg`'s `[[webhooks]]` (it idles when there are none).
    pub fn start(cfg: &Config, user_agent: &str) -> Webhooks {
        let (tx, rx) = mpsc::channel(cfg.events.queue.max(16) as usize);
        let stats = Arc::new(Mutex::new(DispatchStats::default()));
        let dispatcher =
            Dispatcher::new(cfg.webhooks.clone(), cfg.events.queue as usize, user_agent);
        let tls = tls_client(cfg);
        tokio::spawn(run(rx, dispatcher, tls, stats.clone()));
        let mut seed = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        Webhooks {
            tx,
            stats,
            overflow: Arc::new(AtomicU64::new(0)),
            prefix: podpbx_events::hmac::hex(&seed),
            next: 0,
        }
    }

    /// An event happened now: stamps it and hands it to the task (never blocks).
    pub fn push(&mut self, data: Data) {
        self.next += 1;
        let event = Event::new(
            data,
            SystemTime::now(),
            format!("{}-{}", self.prefix, self.next),
        );
        debug!(event = event.event, id = event.id, "event");
        if self.tx.try_send(Cmd::Event(event)).is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Config reload.
    pub fn reconfigure(&self, cfg: &Config) {
        let _ = self.tx.try_send(Cmd::Reconfigure(
            cfg.webhooks.clone(),
            cfg.events.queue as usize,
        ));
    }

    /// Registers the delivery counters and the queue bound in `/metrics`.
    pub fn register_metrics(&self, reg: &crate::metrics::Registry) {
        let s = self.stats.clone();
        let get = move |f: fn(&DispatchStats) -> u64| {
            let s = s.clone();
            move || s.lock().map(|x| f(&x)).unwrap_or(0)
        };
        reg.gauge_fn(
            "podpbx_webhook_queue",
            "Webhook deliveries waiting or in flight.",
            &[],
            {
                let g = get(|x| x.queued as u64);
                move || g() as f64
            },
        );
        reg.gauge_fn(
            "podpbx_webhook_queue_capacity",
            "Bound of the webhook queue ([events] queue).",
            &[],
            {
                let g = get(|x| x.capacity as u64);
                move || g() as f64
            },
        );
        reg.counter_fn(
            "podpbx_webhook_deliveries_total",
            "Webhook deliveries answered 2xx.",
            &[],
            get(|x| x.delivered),
        );
        reg.counter_fn(
            "podpbx_webhook_failed_attempts_total",
            "Webhook attempts that failed (no connection, timeout, non-2xx).",
            &[],
            get(|x| x.failed_attempts),
        );
        reg.counter_fn(
            "podpbx_webhook_given_up_total",
            "Webhook deliveries dropped after max_attempts.",
            &[],
            get(|x| x.given_up),
        );
        let overflow = self.overflow.clone();
        let dropped = get(|x| x.dropped);
        reg.counter_fn(
            "podpbx_webhook_dropped_total",
            "Webhook deliveries dropped because the queue was full.",
            &[],
            move || dropped() + overflow.load(Ordering::Relaxed),
        );
    }
}

fn tls_client(cfg: &Config) -> Option<Arc<rustls::ClientConfig>> {
    if !cfg.webhooks.iter().any(|w| w.url.tls) {
        return None;
    }
    let ca = cfg.tls.as_ref().and_then(|t| t.ca_file.as_deref());
    match crate::tls::roots(ca)
        .and_then(|r| crate::tls::client_config(r, crate::tls::MinVersion::Tls12))
    {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            warn!(error = %e, "webhooks: no TLS client, https:// webhooks will fail");
            None
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Cmd>,
    mut d: Dispatcher,
    mut tls: Option<Arc<rustls::ClientConfig>>,
    stats: Arc<Mutex<DispatchStats>>,
) {
    let mut flying: JoinSet<(u64, Result<u16, String>)> = JoinSet::new();
    loop {
        while let Some(a) = d.poll_attempt(Instant::now()) {
            flying.spawn(attempt(a, tls.clone()));
        }
        if let Ok(mut s) = stats.lock() {
            *s = d.stats();
        }
        let due = d.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Event(e)) => d.push(Instant::now(), e),
                Some(Cmd::Reconfigure(hooks, cap)) => {
                    flying.abort_all();
                    let https = hooks.iter().any(|w| w.url.tls);
                    d.reconfigure(hooks, cap);
                    if https && tls.is_none() {
                        tls = crate::tls::roots(None).and_then(|r| crate::tls::client_config(r, crate::tls::MinVersion::Tls12)).ok().map(Arc::new);
                    }
                }
                None => break,
            },
            Some(done) = flying.join_next(), if !flying.is_empty() => {
                if let Ok((id, outcome)) = done {
                    d.finished(Instant::now(), id, outcome);
                }
            }
            _ = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// One POST: connect, (TLS), send, read the status line; all within the attempt's timeout.
async fn attempt(a: Attempt, tls: Option<Arc<rustls::ClientConfig>>) -> (u64, Result<u16, String>) {
    let id = a.id;
    let work = async {
        let stream = tokio::net::TcpStream::connect((a.url.host.as_str(), a.url.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", a.url))?;
        if a.url.tls {
            let cfg = tls.ok_or("no TLS client configuration")?;
            let name = crate::tls::server_name(&a.url.host)?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with {}: {e}", a.url))?;
            exchange(s, &a.request).await
        } else {
            exchange(stream, &a.request).await
        }
    };
    let out = match tokio::time::timeout(a.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", a.timeout.as_secs())),
    };
    (id, out)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<u16, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    s.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed without an HTTP answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(code) = podpbx_events::http::status(&buf)? {
            return Ok(code);
        }
    }
}
