//! Session timers (RFC 4028), sans-IO: the `Session-Expires` and `Min-SE` headers, the
//! negotiation as UAS (§9) and as UAC (§7), and the per-leg timer ([`SessionTimer`]) that says
//! when to refresh (as refresher) or when the session is dead (as the other side).
//!
//! A B2BUA negotiates each leg on its own: the interval and refresher of one leg never leak to
//! the other.

use crate::Message;
use std::fmt;
use std::time::{Duration, Instant};

/// The option tag.
pub const TAG: &str = "timer";

/// The smallest `Min-SE` anyone may use (RFC 4028 §4: 90 s).
pub const MIN_SE_FLOOR: u32 = 90;

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// A `Session-Expires` value: `delta-seconds [;refresher=uac|uas]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub delta: u32,
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses `1800;refresher=uac` (unknown parameters are ignored; a zero or malformed delta is
    /// `None`).
    pub fn parse(v: &[u8]) -> Option<SessionExpires> {
        let s = std::str::from_utf8(v).ok()?;
        let mut parts = s.split(';');
        let delta: u32 = parts.next()?.trim().parse().ok()?;
        if delta == 0 {
            return None;
        }
        let mut refresher = None;
        for p in parts {
            let (k, val) = p.split_once('=').unwrap_or((p, ""));
            if k.trim().eq_ignore_ascii_case("refresher") {
                refresher = match val.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(Refresher::Uac),
                    "uas" => Some(Refresher::Uas),
                    _ => None,
                };
            }
        }
        Some(SessionExpires { delta, refresher })
    }

    /// The `Session-Expires` (or `x`) header of `msg`.
    pub fn of(msg: &Message) -> Option<SessionExpires> {
        SessionExpires::parse(&msg.other_header("Session-Expires")?)
    }
}

impl fmt::Display for SessionExpires {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.delta)?;
        match self.refresher {
            Some(Refresher::Uac) => f.write_str(";refresher=uac"),
            Some(Refresher::Uas) => f.write_str(";refresher=uas"),
            None => Ok(()),
        }
    }
}

/// The `Min-SE` of `msg` (`None`: absent or malformed).
pub fn min_se(msg: &Message) -> Option<u32> {
    let v = msg.other_header("Min-SE")?;
    std::str::from_utf8(&v)
        .ok()?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Our side's timer settings for a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Use session timers on this leg at all.
    pub enabled: bool,
    /// The interval we ask for (and insert when the peer asked for none).
    pub interval: u32,
    /// The smallest interval we accept (>= [`MIN_SE_FLOOR`]).
    pub min_se: u32,
}

impl Policy {
    /// `interval` and `min_se` in seconds; `min_se` is raised to [`MIN_SE_FLOOR`] and `interval`
    /// to `min_se`.
    pub fn new(enabled: bool, interval: u32, min_se: u32) -> Policy {
        let min_se = min_se.max(MIN_SE_FLOOR);
        Policy {
            enabled,
            interval: interval.max(min_se),
            min_se,
        }
    }
}

/// The UAS decision for an INVITE (or UPDATE) that may carry `Session-Expires`/`Min-SE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasDecision {
    /// The interval asked for is below our minimum: answer `422 Session Interval Too Small`
    /// with `Min-SE: min_se`.
    TooSmall { min_se: u32 },
    /// Put `Session-Expires: se` into the 2xx (with `Require: timer` when `require`).
    Timer { se: SessionExpires, require: bool },
    /// No session timer on this leg.
    None,
}

impl UasDecision {
    /// Who refreshes, seen from the UAS: `Some(true)` when we must refresh.
    pub fn we_refresh(&self) -> Option<bool> {
        match self {
            UasDecision::Timer { se, .. } => Some(se.refresher == Some(Refresher::Uas)),
            _ => None,
        }
    }
}

/// RFC 4028 §9 for a request received as UAS. The request's `Min-SE` is honoured; a
/// `Session-Expires` below our minimum gets `422`; when the peer supports timers but names no
/// refresher we refresh (we are the one that can be relied on); when it does not support them we
/// must refresh (the UAC would not).
pub fn negotiate_uas(req: &Message, policy: &Policy) -> UasDecision {
    let asked = SessionExpires::of(req);
    let peer_min = min_se(req).unwrap_or(MIN_SE_FLOOR).max(MIN_SE_FLOOR);
    let uac_supports = req.supports_option(TAG);
    if let Some(se) = asked {
        if se.delta < policy.min_se {
            return UasDecision::TooSmall {
                min_se: policy.min_se,
            };
        }
    }
    if !policy.enabled && asked.is_none() {
        return UasDecision::None;
    }
    let delta = match asked {
        // We may lower the interval, never below the request's Min-SE nor our minimum.
        Some(se) if policy.enabled => se.delta.min(policy.interval.max(peer_min)),
        Some(se) => se.delta,
        None => policy.interval.max(peer_min),
    };
    let refresher = match (uac_supports, asked.and_then(|s| s.refresher)) {
        (true, Some(r)) => r,
        (true, None) => Refresher::Uas,
        (false, _) => Refresher::Uas,
    };
    UasDecision::Timer {
        se: SessionExpires {
            delta,
            refresher: Some(refresher),
        },
        require: uac_supports,
    }
}

/// The headers a UAC puts into an INVITE for `policy` (`None` when disabled):
/// `(Session-Expires, Min-SE)` values. `Supported: timer` goes along.
pub fn uac_request_headers(policy: &Policy, interval: u32) -> Option<(String, String)> {
    policy.enabled.then(|| {
        (
            SessionExpires {
                delta: interval.max(policy.min_se),
                refresher: None,
            }
            .to_string(),
            policy.min_se.to_string(),
        )
    })
}

/// After a `422`: the interval to retry with (the response's `Min-SE`), or `None` when it gives
/// none usable or asks for more than `max` (then the call fails instead of looping).
pub fn retry_after_422(resp: &Message, current: u32, max: u32) -> Option<u32> {
    let m = min_se(resp)?;
    (m > current && m <= max).then_some(m)
}

/// RFC 4028 §7.2 for a 2xx received as UAC: the leg's timer, if any. `Some((interval, true))`
/// when we refresh.
pub fn negotiate_uac(resp: &Message) -> Option<(u32, bool)> {
    let se = SessionExpires::of(resp)?;
    Some((se.delta, se.refresher != Some(Refresher::Uas)))
}

/// What a [`SessionTimer`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// We are the refresher: send a refresh (re-INVITE or UPDATE) now.
    Refresh,
    /// No refresh came in time (or ours failed): end the session (BYE) and record why.
    Expired,
}

/// One leg's session timer: refreshes at half the interval when we are the refresher; expires
/// at `interval - min(32 s, interval / 3)` after the last refresh when the peer is (RFC 4028
/// §10), and at the full interval when our own refreshes got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    interval: Duration,
    we_refresh: bool,
    refreshed: Instant,
    refresh_sent: bool,
}

impl SessionTimer {
    /// A timer refreshed at `now`.
    pub fn new(now: Instant, interval_secs: u32, we_refresh: bool) -> SessionTimer {
        SessionTimer {
            interval: Duration::from_secs(u64::from(interval_secs.max(1))),
            we_refresh,
            refreshed: now,
            refresh_sent: false,
        }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// True when we refresh.
    pub fn we_refresh(&self) -> bool {
        self.we_refresh
    }

    /// A refresh succeeded (ours answered 2xx, or the peer's arrived) at `now`; the interval and
    /// refresher may have been renegotiated.
    pub fn refreshed(&mut self, now: Instant, interval_secs: u32, we_refresh: bool) {
        *self = SessionTimer::new(now, interval_secs, we_refresh);
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Instant {
        if self.we_refresh && !self.refresh_sent {
            self.refreshed + self.interval / 2
        } else if self.we_refresh {
            self.refreshed + self.interval
        } else {
            let margin = Duration::from_secs(32).min(self.interval / 3);
            self.refreshed + self.interval - margin
        }
    }

    /// What is due at `now`, if anything.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimerAction> {
        if now < self.poll_timeout() {
            return None;
        }
        if self.we_refresh && !self.refresh_sent {
            self.refresh_sent = true;
            return Some(TimerAction::Refresh);
        }
        Some(TimerAction::Expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Framing;
    use bytes::Bytes;

    fn invite(headers: &str) -> Message {
        let text = format!(
            "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Datagram).expect("parse")
    }

    const POLICY: Policy = Policy {
        enabled: true,
        interval: 1800,
        min_se: 90,
    };

    #[test]
    fn header_forms() {
        let se = SessionExpires::parse(b" 1800 ; Refresher=UAC;x=1").expect("se");
        assert_eq!(se.delta, 1800);
        assert_eq!(se.refresher, Some(Refresher::Uac));
        assert_eq!(se.to_string(), "1800;refresher=uac");
        assert_eq!(SessionExpires::parse(b"0"), None);
        assert_eq!(SessionExpires::parse(b"abc"), None);
        let m = invite("x: 600\r\nMin-SE: 120;p=1\r\n");
        assert_eq!(SessionExpires::of(&m).map(|s| s.delta), Some(600));
        assert_eq!(min_se(&m), Some(120));
        assert_eq!(
            Policy::new(true, 30, 10),
            Policy {
                enabled: true,
                interval: 90,
                min_se: 90
            }
        );
    }

    #[test]
    fn uas_422_below_our_minimum() {
        let p = Policy::new(true, 1800, 300);
        let m = invite("Supported: timer\r\nSession-Expires: 120\r\n");
        assert_eq!(negotiate_uas(&m, &p), UasDecision::TooSmall { min_se: 300 });
    }

    #[test]
    fn uas_keeps_the_uac_refresher_and_lowers_a_long_interval() {
        let m = invite("Supported: timer\r\nSession-Expires: 7200;refresher=uac\r\n");
        let d = negotiate_uas(&m, &POLICY);
        assert_eq!(
            d,
            UasDecision::Timer {
                se: SessionExpires {
                    delta: 1800,
                    refresher: Some(Refresher::Uac)
                },
                require: true
            }
        );
        assert_eq!(d.we_refresh(), Some(false));
        // A short interval we accept stays.
        let m = invite("Supported: timer\r\nSession-Expires: 600\r\n");
        let d = negotiate_uas(&m, &POLICY);
        assert_eq!(
            d,
            UasDecision::Timer {
                se: SessionExpires {
                    delta: 600,
                    refresher: Some(Refresher::Uas)
                },
                require: true
            }
        );
        assert_eq!(d.we_refresh(), Some(true));
    }

    #[test]
    fn uas_without_uac_support_refreshes_itself() {
        // The UAC asked for nothing and supports nothing: we insert a timer we refresh.
        let d = negotiate_uas(&invite(""), &POLICY);
        assert_eq!(
            d,
            UasDecision::Timer {
                se: SessionExpires {
                    delta: 1800,
                    refresher: Some(Refresher::Uas)
                },
                require: false
            }
        );
        // A proxy inserted SE for a UAC without support: refresher=uac would never refresh.
        let d = negotiate_uas(&invite("Session-Expires: 900;refresher=uac\r\n"), &POLICY);
        assert_eq!(d.we_refresh(), Some(true));
        // Disabled and not asked: nothing.
        let off = Policy::new(false, 1800, 90);
        assert_eq!(
            negotiate_uas(&invite("Supported: timer\r\n"), &off),
            UasDecision::None
        );
        // Disabled but the peer asks: honour its interval.
        let d = negotiate_uas(
            &invite("Supported: timer\r\nSession-Expires: 4000\r\n"),
            &off,
        );
        assert!(matches!(
            d,
            UasDecision::Timer {
                se: SessionExpires { delta: 4000, .. },
                ..
            }
        ));
        // The request's Min-SE is never undercut.
        let p = Policy::new(true, 100, 90);
        let d = negotiate_uas(&invite("Supported: timer\r\nMin-SE: 600\r\n"), &p);
        assert!(
            matches!(
                d,
                UasDecision::Timer {
                    se: SessionExpires { delta: 600, .. },
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn uac_side() {
        let (se, min) = uac_request_headers(&POLICY, 1800).expect("on");
        assert_eq!((se.as_str(), min.as_str()), ("1800", "90"));
        assert_eq!(
            uac_request_headers(&Policy::new(false, 1800, 90), 1800),
            None
        );
        let r422 = invite("Min-SE: 1200\r\n");
        assert_eq!(retry_after_422(&r422, 600, 7200), Some(1200));
        assert_eq!(retry_after_422(&r422, 1200, 7200), None, "no loop");
        assert_eq!(retry_after_422(&r422, 600, 900), None, "too long for us");
        assert_eq!(
            negotiate_uac(&invite("Session-Expires: 900;refresher=uac\r\n")),
            Some((900, true))
        );
        assert_eq!(
            negotiate_uac(&invite("Session-Expires: 900;refresher=uas\r\n")),
            Some((900, false))
        );
        assert_eq!(negotiate_uac(&invite("")), None);
    }

    #[test]
    fn timer_refreshes_at_half_and_expires() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = SessionTimer::new(t0, 90, true);
        assert_eq!(t.poll_timeout(), t0 + s(45));
        assert_eq!(t.handle_timeout(t0 + s(44)), None);
        assert_eq!(t.handle_timeout(t0 + s(45)), Some(TimerAction::Refresh));
        // Our refresh got no answer: dead at the full interval.
        assert_eq!(t.poll_timeout(), t0 + s(90));
        assert_eq!(t.handle_timeout(t0 + s(90)), Some(TimerAction::Expired));
        // Answered in time: the next refresh is half an interval after it.
        let mut t = SessionTimer::new(t0, 90, true);
        t.handle_timeout(t0 + s(45));
        t.refreshed(t0 + s(46), 120, true);
        assert_eq!(t.poll_timeout(), t0 + s(46 + 60));
        // The peer refreshes: we wait interval - min(32, interval/3).
        let mut t = SessionTimer::new(t0, 90, false);
        assert_eq!(t.poll_timeout(), t0 + s(60));
        assert_eq!(t.handle_timeout(t0 + s(60)), Some(TimerAction::Expired));
        let t = SessionTimer::new(t0, 1800, false);
        assert_eq!(t.poll_timeout(), t0 + s(1800 - 32));
    }
}
