//! Webhook delivery, sans-IO: events in, HTTP attempts out, their outcomes in, `now` passed in.
//!
//! * Each event is queued once per webhook that wants its kind. The queue is bounded over all
//!   webhooks; when full, the oldest waiting delivery is dropped (and counted): a dead
//!   receiver never makes podpbx hold memory, and the newest events (the doorbell now) win.
//! * One attempt in flight per webhook, in order; a failure (no connection, timeout, non-2xx)
//!   is retried after 1 s, 2 s, 4 s, ... (at most 60 s) until `max_attempts`, then dropped.
//! * Nothing here blocks or does I/O: the shell performs [`Attempt`]s with the timeout given
//!   and reports [`Dispatcher::finished`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podpbx_config::{HttpUrl, Webhook};

use crate::event::Event;
use crate::http;

/// One HTTP POST to perform.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Report the outcome with this.
    pub id: u64,
    /// Which webhook (index in the configuration).
    pub hook: usize,
    /// Where.
    pub url: HttpUrl,
    /// The request bytes.
    pub request: Vec<u8>,
    /// Give up after this long.
    pub timeout: Duration,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Deliveries waiting or in flight now.
    pub queued: usize,
    /// The bound.
    pub capacity: usize,
    /// Delivered (2xx).
    pub delivered: u64,
    /// Attempts that failed.
    pub failed_attempts: u64,
    /// Deliveries given up after `max_attempts`.
    pub given_up: u64,
    /// Deliveries dropped because the queue was full.
    pub dropped: u64,
}

#[derive(Debug)]
struct Delivery {
    event: Arc<Event>,
    body: Arc<Vec<u8>>,
    attempt: u32,
    not_before: Instant,
}

#[derive(Debug)]
struct Hook {
    cfg: Webhook,
    queue: VecDeque<Delivery>,
    in_flight: Option<(u64, Delivery)>,
}

/// The dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    hooks: Vec<Hook>,
    capacity: usize,
    user_agent: String,
    next_id: u64,
    stats: DispatchStats,
    /// Attempt id -> hook.
    flying: HashMap<u64, usize>,
}

/// Back-off before attempt `n + 1` after `n` failures.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

impl Dispatcher {
    /// A dispatcher for `hooks` with room for `capacity` waiting deliveries.
    pub fn new(hooks: Vec<Webhook>, capacity: usize, user_agent: &str) -> Dispatcher {
        Dispatcher {
            hooks: hooks
                .into_iter()
                .map(|cfg| Hook {
                    cfg,
                    queue: VecDeque::new(),
                    in_flight: None,
                })
                .collect(),
            capacity: capacity.max(1),
            user_agent: user_agent.to_string(),
            next_id: 0,
            stats: DispatchStats::default(),
            flying: HashMap::new(),
        }
    }

    /// New webhooks (config reload): waiting deliveries of webhooks that stay (same URL) are
    /// kept, the others dropped.
    pub fn reconfigure(&mut self, hooks: Vec<Webhook>, capacity: usize) {
        let mut old = std::mem::take(&mut self.hooks);
        self.flying.clear();
        self.hooks = hooks
            .into_iter()
            .map(|cfg| {
                let (queue, in_flight) = match old.iter_mut().find(|h| h.cfg.url == cfg.url) {
                    Some(h) => (std::mem::take(&mut h.queue), h.in_flight.take()),
                    None => (VecDeque::new(), None),
                };
                let mut queue = queue;
                // An attempt in flight of a kept webhook is retried under the new settings.
                if let Some((_, d)) = in_flight {
                    queue.push_front(d);
                }
                Hook {
                    cfg,
                    queue,
                    in_flight: None,
                }
            })
            .collect();
        self.capacity = capacity.max(1);
        while self.len() > self.capacity {
            self.drop_oldest();
        }
    }

    fn len(&self) -> usize {
        self.hooks
            .iter()
            .map(|h| h.queue.len() + h.in_flight.is_some() as usize)
            .sum()
    }

    /// Counters.
    pub fn stats(&self) -> DispatchStats {
        DispatchStats {
            queued: self.len(),
            capacity: self.capacity,
            ..self.stats
        }
    }

    fn drop_oldest(&mut self) {
        // The oldest waiting delivery over all webhooks (in-flight ones finish).
        let victim = self
            .hooks
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.queue.front().map(|d| (d.event.time.clone(), i)))
            .min();
        if let Some((_, i)) = victim {
            self.hooks[i].queue.pop_front();
            self.stats.dropped += 1;
        } else {
            // Only in-flight deliveries left: nothing to drop.
        }
    }

    /// Queues `event` for every webhook that wants it.
    pub fn push(&mut self, now: Instant, event: Event) {
        let kind = event.kind();
        let body = Arc::new(event.to_json());
        let event = Arc::new(event);
        for i in 0..self.hooks.len() {
            if !self.hooks[i].cfg.events.contains(&kind) {
                continue;
            }
            while self.len() >= self.capacity {
                let before = self.stats.dropped;
                self.drop_oldest();
                if self.stats.dropped == before {
                    break;
                }
            }
            if self.len() >= self.capacity {
                self.stats.dropped += 1;
                continue;
            }
            self.hooks[i].queue.push_back(Delivery {
                event: event.clone(),
                body: body.clone(),
                attempt: 0,
                not_before: now,
            });
        }
    }

    /// The next attempt due at `now`, if any.
    pub fn poll_attempt(&mut self, now: Instant) -> Option<Attempt> {
        for (i, h) in self.hooks.iter_mut().enumerate() {
            if h.in_flight.is_some() || h.queue.front().is_none_or(|d| d.not_before > now) {
                continue;
            }
            let mut d = h.queue.pop_front()?;
            d.attempt += 1;
            self.next_id += 1;
            let id = self.next_id;
            let secret = h
                .cfg
                .secret
                .as_ref()
                .map(|s| s.expose().as_bytes().to_vec());
            let request = http::request(
                &h.cfg.url,
                d.event.event,
                &d.event.id,
                &d.body,
                secret.as_deref(),
                &self.user_agent,
            );
            let a = Attempt {
                id,
                hook: i,
                url: h.cfg.url.clone(),
                request,
                timeout: h.cfg.timeout,
                attempt: d.attempt,
            };
            h.in_flight = Some((id, d));
            self.flying.insert(id, i);
            return Some(a);
        }
        None
    }

    /// When the next waiting delivery becomes due (`None`: nothing waits, or all webhooks
    /// are busy).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.hooks
            .iter()
            .filter(|h| h.in_flight.is_none())
            .filter_map(|h| h.queue.front().map(|d| d.not_before))
            .min()
    }

    /// The outcome of attempt `id`: the HTTP status, or why there is none.
    pub fn finished(&mut self, now: Instant, id: u64, outcome: Result<u16, String>) {
        let Some(i) = self.flying.remove(&id) else {
            return;
        };
        let h = &mut self.hooks[i];
        let Some((fid, mut d)) = h.in_flight.take() else {
            return;
        };
        if fid != id {
            h.in_flight = Some((fid, d));
            return;
        }
        match outcome {
            Ok(s) if (200..300).contains(&s) => {
                self.stats.delivered += 1;
                tracing::debug!(url = %h.cfg.url, event = d.event.event, id = d.event.id, "webhook delivered");
            }
            other => {
                self.stats.failed_attempts += 1;
                let why = match other {
                    Ok(s) => format!("HTTP {s}"),
                    Err(e) => e,
                };
                if d.attempt >= h.cfg.max_attempts {
                    self.stats.given_up += 1;
                    tracing::warn!(url = %h.cfg.url, event = d.event.event, id = d.event.id, attempts = d.attempt, error = %why, "webhook not delivered: giving up");
                } else {
                    let wait = backoff(d.attempt);
                    tracing::info!(url = %h.cfg.url, event = d.event.event, attempt = d.attempt, error = %why, retry_in = ?wait, "webhook attempt failed");
                    d.not_before = now + wait;
                    h.queue.push_front(d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
