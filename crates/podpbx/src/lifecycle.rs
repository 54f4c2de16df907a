//! The process's lifecycle: graceful stop on SIGTERM/SIGINT, driven from the core loop's
//! `select!`. Readiness goes to 503 at once, the core is told to refuse new calls
//! (`Core::begin_shutdown`), the loop keeps running while `podpbx_calls_active` > 0 for at most
//! [`SHUTDOWN_GRACE`] (a second signal cuts it short), then the core ends the remaining calls
//! and the loop exits (the shell then writes the bindings and the queued CDRs).

use crate::admin::Admin;
use std::time::Duration;
use tracing::{info, warn};

/// How long a graceful stop waits for active calls. No config key exists for it yet;
/// Kubernetes' `terminationGracePeriodSeconds` must be larger.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Events the core loop gets from [`Shutdown::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEvent {
    /// First SIGTERM/SIGINT: `/readyz` is 503 now; the core must refuse new calls
    /// (`Core::begin_shutdown`) and keep running.
    Begin,
    /// No calls left, the grace period is over or a second signal came: the core ends the
    /// remaining calls now (BYEs), the loop sends what is queued and exits; then [`Shutdown::finish`].
    Stop,
}

enum Phase {
    Running,
    Draining(tokio::time::Instant),
    Stopping,
}

/// Graceful stop on SIGTERM and SIGINT, driven from the core loop's `select!`.
pub struct Shutdown {
    admin: Admin,
    grace: Duration,
    phase: Phase,
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers (needs the tokio runtime).
    pub fn new(admin: &Admin, grace: Duration) -> Result<Shutdown, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
        Ok(Shutdown {
            admin: admin.clone(),
            grace,
            phase: Phase::Running,
            signals: Some((term, int)),
        })
    }

    #[cfg(test)]
    pub(crate) fn without_signals(admin: &Admin, grace: Duration) -> Shutdown {
        Shutdown {
            admin: admin.clone(),
            grace,
            phase: Phase::Running,
            signals: None,
        }
    }

    async fn signal(&mut self) -> &'static str {
        let Some((term, int)) = self.signals.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(()) = term.recv() => "SIGTERM",
            Some(()) = int.recv() => "SIGINT",
            else => std::future::pending().await,
        }
    }

    /// Starts the graceful stop without a signal (what the first signal does).
    pub fn begin(&mut self, why: &str) {
        if let Phase::Running = self.phase {
            self.admin.begin_shutdown();
            info!(
                reason = why,
                calls = self.admin.active_calls(),
                grace_secs = self.grace.as_secs(),
                "stopping: not ready, refusing new calls, waiting for active calls"
            );
            self.phase = Phase::Draining(tokio::time::Instant::now() + self.grace);
        }
    }

    /// The next shutdown event. Cancel-safe: use it as a `select!` branch in the core loop.
    pub async fn next(&mut self) -> StopEvent {
        loop {
            match self.phase {
                Phase::Running => {
                    let sig = self.signal().await;
                    self.begin(sig);
                    return StopEvent::Begin;
                }
                Phase::Draining(deadline) => {
                    let calls = self.admin.active_calls();
                    let now = tokio::time::Instant::now();
                    if calls == 0 || now >= deadline {
                        if calls > 0 {
                            warn!(calls, "grace period over: ending the remaining calls");
                        }
                        self.phase = Phase::Stopping;
                        return StopEvent::Stop;
                    }
                    // Calls may end outside the loop's events (media), so look again shortly.
                    let tick = deadline.min(now + Duration::from_millis(100));
                    tokio::select! {
                        sig = self.signal() => {
                            warn!(signal = sig, calls, "second signal: ending the remaining calls now");
                            self.phase = Phase::Stopping;
                            return StopEvent::Stop;
                        }
                        _ = tokio::time::sleep_until(tick) => {}
                    }
                }
                Phase::Stopping => std::future::pending::<()>().await,
            }
        }
    }

    /// Whether [`StopEvent::Stop`] was delivered: the loop should exit after sending its output.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping)
    }

    /// After the loop and the final writes.
    pub fn finish(self) {
        info!("podpbx stopped");
    }
}
