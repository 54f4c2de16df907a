//! Overload control: new calls and registrations are refused early and cheaply (a stateless
//! `503 Service Unavailable` with `Retry-After`, before a transaction, a digest check or a call
//! is set up) while the signalling loop lags behind the network or a bounded resource is nearly
//! used up, so that what is already admitted keeps working: BYE, ACK, CANCEL and every
//! in-dialog request are always processed. Shedding at the door costs a parse and a short
//! response; letting the work in would cost a transaction, a digest round, a call with two legs
//! and media, and under a load past capacity it would only make every call late.
//!
//! Reasons, in the order they are checked:
//! * `lag`: the oldest datagram of the last batch waited at least [`LAG_LIMIT`] in the socket
//!   buffer (kernel receive time stamps), i.e. the loop is not keeping up;
//! * `transactions`: transactions with work left hold [`TABLE_LIMIT`] of the table's bound;
//! * `setup`: `[calls] max_setup` calls are in set-up (INVITE only): the caller's INVITE not yet
//!   answered, or our 2xx not yet acknowledged. The lag only shows once the socket buffer
//!   holds [`LAG_LIMIT`] of traffic, by which time the loop has let in a burst of calls it
//!   cannot complete in time: their 180/200/ACK/BYE then queue behind the flood, the callers
//!   time out or retransmit, and goodput collapses (benches/overload.sh, 2x the maximum call
//!   rate). The set-up bound holds the calls admitted to what the loop completes: admission is
//!   clocked by completions. Counted by a scan of the calls at most every [`SETUP_RECOUNT`],
//!   the calls created in between added;
//! * `calls`: `[calls] max_concurrent` is reached (INVITE only);
//! * `media`: the relay's sessions or ports are [`MEDIA_LIMIT`] used (INVITE only).

use std::time::{Duration, Instant};

/// A loop behind the network by this much sheds new work. Clients retransmit after T1 (500 ms):
/// shedding well before keeps retransmissions from multiplying the load.
pub const LAG_LIMIT: Duration = Duration::from_millis(100);

/// A lag sample older than this no longer says anything about the loop (no traffic since).
const LAG_FRESH: Duration = Duration::from_secs(1);

/// Share of the transaction table's bound that live transactions may hold before new calls and
/// registrations are refused (the rest is for what they admitted: BYEs, re-INVITEs, ACKs).
pub const TABLE_LIMIT: f64 = 0.8;

/// Share of the relay's sessions or ports in use beyond which new calls are refused.
pub const MEDIA_LIMIT: f64 = 0.9;

/// How old the count of calls in set-up may be before a new INVITE recounts (a scan of the
/// calls); calls created since the count are added to it.
pub const SETUP_RECOUNT: Duration = Duration::from_millis(5);

/// Why a new call or registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Lag,
    Transactions,
    Calls,
    Media,
    Setup,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Lag,
        Reason::Transactions,
        Reason::Calls,
        Reason::Media,
        Reason::Setup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lag => "lag",
            Reason::Transactions => "transactions",
            Reason::Calls => "calls",
            Reason::Media => "media",
            Reason::Setup => "setup",
        }
    }

    pub fn idx(self) -> usize {
        self as usize
    }
}

/// The loop's state as far as overload is concerned.
#[derive(Debug, Default)]
pub struct Overload {
    /// Latest lag sample and when it was taken.
    lag: Option<(Instant, Duration)>,
    /// Refusals so far, for `Retry-After` spreading.
    shed: u64,
    /// Calls in set-up at the latest count, and when it was taken.
    setup: Option<(Instant, usize)>,
    /// Calls created since that count.
    admitted: usize,
}

/// What the core knows when a new INVITE or REGISTER arrives.
pub struct Load {
    /// Live transactions' share of the table's bound.
    pub table: f64,
    /// Calls in progress and `[calls] max_concurrent` (0: none).
    pub calls: usize,
    pub max_calls: usize,
    /// Calls in set-up ([`Overload::setup`]) and `[calls] max_setup` (0: none).
    pub setup: usize,
    pub max_setup: usize,
    /// The relay's busiest resource's share in use.
    pub media: f64,
}

impl Overload {
    /// How long the oldest datagram of the latest batch waited.
    pub fn note_lag(&mut self, now: Instant, lag: Duration) {
        self.lag = Some((now, lag));
    }

    /// The latest lag, if recent.
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        self.lag
            .filter(|(at, _)| now.saturating_duration_since(*at) < LAG_FRESH)
            .map(|(_, l)| l)
    }

    /// Whether the count of calls in set-up is missing or older than [`SETUP_RECOUNT`].
    pub fn setup_due(&self, now: Instant) -> bool {
        self.setup
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= SETUP_RECOUNT)
    }

    /// A fresh count of the calls in set-up.
    pub fn note_setup(&mut self, now: Instant, calls: usize) {
        self.setup = Some((now, calls));
        self.admitted = 0;
    }

    /// Calls in set-up: the latest count plus the calls created since.
    pub fn setup(&self) -> usize {
        self.setup.map_or(0, |(_, n)| n) + self.admitted
    }

    /// `calls` new calls were created (they are in set-up until the next count says otherwise;
    /// an admitted INVITE that was challenged or refused created none).
    pub fn admitted(&mut self, calls: usize) {
        self.admitted += calls;
    }

    /// Whether a new INVITE (`invite`) or REGISTER must be refused now, and why.
    pub fn check(&self, now: Instant, invite: bool, load: &Load) -> Option<Reason> {
        if self.lag(now).is_some_and(|l| l >= LAG_LIMIT) {
            return Some(Reason::Lag);
        }
        if load.table >= TABLE_LIMIT {
            return Some(Reason::Transactions);
        }
        if invite && load.max_setup > 0 && load.setup >= load.max_setup {
            return Some(Reason::Setup);
        }
        if invite && load.max_calls > 0 && load.calls >= load.max_calls {
            return Some(Reason::Calls);
        }
        if invite && load.media >= MEDIA_LIMIT {
            return Some(Reason::Media);
        }
        None
    }

    /// `Retry-After` seconds for the next refusal: 5 to 9, spread so that the refused clients do
    /// not all come back in the same second.
    pub fn retry_after(&mut self) -> u32 {
        self.shed = self.shed.wrapping_add(1);
        5 + (self.shed.wrapping_mul(0x9e37_79b9) >> 7) as u32 % 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        Load {
            table: 0.1,
            calls: 3,
            max_calls: 100,
            setup: 2,
            max_setup: 50,
            media: 0.1,
        }
    }

    #[test]
    fn setup_bound_counts_admissions_between_recounts() {
        let t0 = Instant::now();
        let mut o = Overload::default();
        assert!(o.setup_due(t0));
        o.note_setup(t0, 48);
        assert!(!o.setup_due(t0 + SETUP_RECOUNT / 2));
        let at = |o: &Overload| Load {
            setup: o.setup(),
            ..load()
        };
        assert_eq!(o.check(t0, true, &at(&o)), None);
        o.admitted(0);
        assert_eq!(
            o.check(t0, true, &at(&o)),
            None,
            "a challenged INVITE made no call"
        );
        o.admitted(1);
        assert_eq!(o.check(t0, true, &at(&o)), None);
        o.admitted(1);
        // 48 counted + 2 created since: the bound (50) is reached, for INVITEs only.
        assert_eq!(o.check(t0, true, &at(&o)), Some(Reason::Setup));
        assert_eq!(o.check(t0, false, &at(&o)), None, "REGISTER");
        // The next count (calls completed meanwhile) lets new calls in again.
        assert!(o.setup_due(t0 + SETUP_RECOUNT));
        o.note_setup(t0 + SETUP_RECOUNT, 10);
        assert_eq!(o.setup(), 10);
        assert_eq!(o.check(t0 + SETUP_RECOUNT, true, &at(&o)), None);
        // 0: no bound.
        let unbounded = Load {
            setup: 10_000,
            max_setup: 0,
            ..load()
        };
        assert_eq!(o.check(t0, true, &unbounded), None);
        // The lag and the table are checked first.
        o.note_lag(t0, Duration::from_millis(150));
        let full = Load {
            setup: 50,
            ..load()
        };
        assert_eq!(o.check(t0, true, &full), Some(Reason::Lag));
    }

    #[test]
    fn reasons_in_order_and_only_for_what_they_bound() {
        let t0 = Instant::now();
        let mut o = Overload::default();
        assert_eq!(o.check(t0, true, &load()), None);
        o.note_lag(t0, Duration::from_millis(20));
        assert_eq!(o.check(t0, true, &load()), None);
        o.note_lag(t0, Duration::from_millis(150));
        assert_eq!(o.check(t0, false, &load()), Some(Reason::Lag));
        // An old sample says nothing (no traffic since).
        assert_eq!(o.check(t0 + Duration::from_secs(2), false, &load()), None);
        let full_calls = Load {
            calls: 100,
            ..load()
        };
        assert_eq!(
            o.check(t0 + Duration::from_secs(2), true, &full_calls),
            Some(Reason::Calls)
        );
        assert_eq!(
            o.check(t0 + Duration::from_secs(2), false, &full_calls),
            None,
            "REGISTER"
        );
        let media = Load {
            media: 0.95,
            ..load()
        };
        assert_eq!(
            o.check(t0 + Duration::from_secs(2), true, &media),
            Some(Reason::Media)
        );
        let table = Load {
            table: 0.85,
            ..media
        };
        assert_eq!(
            o.check(t0 + Duration::from_secs(2), false, &table),
            Some(Reason::Transactions)
        );
        let unlimited = Load {
            calls: 10_000,
            max_calls: 0,
            ..load()
        };
        assert_eq!(o.check(t0 + Duration::from_secs(2), true, &unlimited), None);
    }

    #[test]
    fn retry_after_is_spread() {
        let mut o = Overload::default();
        let v: std::collections::BTreeSet<u32> = (0..50).map(|_| o.retry_after()).collect();
        assert!(v.iter().all(|s| (5..=9).contains(s)));
        assert!(v.len() >= 3, "{v:?}");
    }
}
