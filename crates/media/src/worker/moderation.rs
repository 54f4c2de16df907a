//! Interrupt moderation: whether the worker, after a round, sleeps a little before its next
//! wait so that the next round finds several datagrams instead of one. Under load this
//! trades up to one sleep of added latency for fewer wake-ups per datagram (each costs
//! microseconds of scheduler and idle exit on a VM); on a quiet relay it must never fire,
//! since a sleep that collects nothing is a second wake-up of its own.
//!
//! Plain state, no clock: the worker passes what each round received and when it began.

/// Datagrams a sleep must be expected to collect to pay for its own timer wake-up.
const WORTH: u64 = 2;
/// The round length the averages start from.
const QUIET_SPAN_NS: u64 = 1_000_000;
/// Fixed-point scale of the datagram average.
const ONE: u64 = 256;

pub(super) struct Moderation {
    /// The sleep; 0: moderation off.
    sleep_ns: u64,
    /// Recent datagrams per round (× [`ONE`]) and nanoseconds per round; each round
    /// weighs 1/8 in both. Their ratio is the arrival rate (averaging per-round rates
    /// instead would let a few short rounds claim a rate that is not there).
    got: u64,
    span: u64,
}

impl Moderation {
    pub(super) fn new(sleep_ns: u64) -> Moderation {
        Moderation {
            sleep_ns,
            // As if the relay had been quiet: the averages climb to a load in
            // ~20 rounds (a millisecond at 1 000 streams) and a lone first
            // datagram cannot look like one.
            got: 0,
            span: QUIET_SPAN_NS,
        }
    }

    pub(super) fn sleep_ns(&self) -> u64 {
        self.sleep_ns
    }

    /// A round received `got` datagrams, `span_ns` after the previous round began (the
    /// datagrams arrived within that span: the previous round's work, its sleep if any,
    /// and this round's wait). Sleep before the next wait? Only when datagrams arrive fast
    /// enough that a sleep is expected to collect [`WORTH`] of them, and not after a full
    /// batch (more is already queued: a sleep would idle the CPU while the backlog grows).
    pub(super) fn after_round(&mut self, got: usize, span_ns: u64, saw_full: bool) -> bool {
        if self.sleep_ns == 0 {
            return false;
        }
        let g = (got as u64).saturating_mul(ONE);
        self.got = (self.got - self.got / 8).saturating_add(g / 8);
        self.span = (self.span - self.span / 8).saturating_add(span_ns / 8);
        // Expected in a sleep: got / span × sleep_ns >= WORTH.
        got > 0
            && !saw_full
            && self.got.saturating_mul(self.sleep_ns) >= (WORTH * ONE).saturating_mul(self.span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// Rounds of `got` datagrams every `every_ns`, `n` times: how many were followed by a sleep.
    fn sleeps(m: &mut Moderation, got: usize, every_ns: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| m.after_round(got, every_ns, false))
            .count()
    }

    #[test]
    fn off_never_sleeps() {
        let mut m = Moderation::new(0);
        assert_eq!(sleeps(&mut m, 30, 50 * US, 100), 0);
    }

    #[test]
    fn a_busy_relay_sleeps_a_quiet_one_never() {
        // 1 000 streams (100 000 datagrams/s, both directions): 5 per 50 µs round.
        let mut m = Moderation::new(50 * US);
        assert!(sleeps(&mut m, 5, 50 * US, 200) > 180);
        // 100 streams (10 000/s), one datagram per round, rounds 10 µs and 190 µs apart:
        // the rule of stop 25 slept after every short wait (a timer wake-up that found
        // nothing: 1.7x the CPU per datagram); a sleep here would collect 0.5 datagrams.
        let mut m = Moderation::new(50 * US);
        let mut slept = 0;
        for i in 0..400 {
            let span = if i % 2 == 0 { 10 * US } else { 190 * US };
            slept += usize::from(m.after_round(1, span, false));
        }
        assert_eq!(slept, 0);
        // A home: 3 calls, one datagram every 3 ms.
        let mut m = Moderation::new(50 * US);
        assert_eq!(sleeps(&mut m, 1, 3_000 * US, 1_000), 0);
    }

    #[test]
    fn the_rate_follows_the_load_down() {
        let mut m = Moderation::new(50 * US);
        assert!(sleeps(&mut m, 8, 40 * US, 100) > 80);
        // The load ends: rounds woken by commands and timers, nothing received.
        assert_eq!(sleeps(&mut m, 0, 1_000 * US, 50), 0);
        // A lone datagram after that finds the rate decayed: no sleep.
        assert!(!m.after_round(1, 20_000 * US, false));
    }

    #[test]
    fn no_sleep_after_a_full_batch() {
        let mut m = Moderation::new(50 * US);
        sleeps(&mut m, 8, 40 * US, 100);
        assert!(m.after_round(8, 40 * US, false));
        assert!(!m.after_round(32, 40 * US, true));
    }

    #[test]
    fn no_overflow_at_the_extremes() {
        let mut m = Moderation::new(10_000_000);
        assert!(m.after_round(usize::MAX, 0, false));
        assert!(
            !m.after_round(0, u64::MAX, false),
            "nothing received: no sleep"
        );
    }
}
