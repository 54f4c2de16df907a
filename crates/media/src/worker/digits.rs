//! How often a leg's RFC 4733 digits reach the call layer: a token bucket per leg.
//!
//! Each reported digit is an event for the core loop and may become a SIP INFO towards the
//! other party. A peer decides how many end-of-event packets it sends, each with a new
//! timestamp if it likes: without a limit a flood of them is a flood of events (a queue that
//! grows while the core works through it, other calls' signalling waiting behind it). People
//! and dialers press at most ~10 keys a second (RFC 4733 events last 40 ms and more, with a
//! pause between them), so a burst of [`BURST`] and [`PER_SECOND`] after it lose nothing real.
//! Digits beyond it are counted and not reported; their packets are forwarded all the same.
//!
//! Plain state, no clock: the worker passes its millisecond time.

/// Digits a leg may report at once.
pub(super) const BURST: u64 = 20;
/// Digits per second after the burst.
pub(super) const PER_SECOND: u64 = 20;
/// Credit one digit takes, in milliseconds of refill.
const COST_MS: u64 = 1_000 / PER_SECOND;

/// Per leg (cold state).
pub(super) struct DigitRate {
    /// Milliseconds of credit, at most `BURST * COST_MS`.
    credit_ms: u64,
    last_ms: u64,
}

impl Default for DigitRate {
    fn default() -> Self {
        DigitRate {
            credit_ms: BURST * COST_MS,
            last_ms: 0,
        }
    }
}

impl DigitRate {
    /// Whether a digit that ended at `now_ms` may be reported (taking its credit).
    pub(super) fn allow(&mut self, now_ms: u64) -> bool {
        let earned = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.credit_ms = (self.credit_ms.saturating_add(earned)).min(BURST * COST_MS);
        if self.credit_ms < COST_MS {
            return false;
        }
        self.credit_ms -= COST_MS;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut r = DigitRate::default();
        // A flood at t = 1 s: the burst passes, nothing more.
        let now = 1_000;
        assert_eq!((0..1_000).filter(|_| r.allow(now)).count(), BURST as usize);
        // Then one digit per refill period, for 10 s of flood every millisecond.
        let passed = (1..=10_000u64).filter(|t| r.allow(now + t)).count();
        assert_eq!(passed, (10 * PER_SECOND) as usize);
    }

    #[test]
    fn a_person_dialling_is_never_limited() {
        let mut r = DigitRate::default();
        // 40 digits, 100 ms apart (10 a second, faster than anyone dials by hand).
        assert!((0..40u64).all(|i| r.allow(5_000 + i * 100)));
    }

    #[test]
    fn credit_does_not_pile_up_and_time_going_back_is_harmless() {
        let mut r = DigitRate::default();
        // An hour of silence earns no more than the burst.
        assert_eq!(
            (0..100).filter(|_| r.allow(3_600_000)).count(),
            BURST as usize
        );
        // An earlier time earns nothing (and does not panic).
        assert!(!r.allow(0));
        assert!(r.allow(3_600_000 + COST_MS));
    }
}
