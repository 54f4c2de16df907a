//! Mixed streams on one latched source: the RTP a leg accepts keeps switching between SSRCs.
//!
//! A phone's stream changes SSRC now and then (a re-INVITE, a transfer, music on hold) and
//! hardly ever goes back to the SSRC before. A source that carries several streams at once
//! goes back and forth all the time: its packets interleave. The usual cause is a peer that
//! sends the RTP of several calls from one address and port (SIPp's `rtp_stream` does; so can a
//! gateway or a media server). In the shared port layout all those packets reach the one leg
//! latched onto that source, so every other call of that peer loses its audio and this call
//! gets theirs, crossed. Only `media.port_layout = "per-call"` keeps such calls apart (a port
//! per leg). The relay cannot tell which packet belongs to which call, so it keeps forwarding
//! and says so: a counter per leg and in total, and one event per leg for the log.
//!
//! Plain state, no clock: the worker passes the SSRCs and its millisecond time. Only called on
//! an SSRC change, never for a packet that keeps the SSRC.

/// Switches back to the SSRC before, within one [`WINDOW_MS`], that make a leg's source
/// "mixed". Interleaved streams at 50 packets/s each flap ~100 times a second; a phone's
/// changes, one every few seconds at the most, never come close.
pub(super) const REPORT_FLAPS: u32 = 16;
/// The counting window.
pub(super) const WINDOW_MS: u64 = 1_000;

/// Per leg (cold state).
#[derive(Default)]
pub(super) struct MixWatch {
    /// The SSRC the stream had before the current one.
    before: Option<u32>,
    window_start_ms: u64,
    in_window: u32,
    reported: bool,
}

/// What one SSRC change was.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A new SSRC, or a first switch back.
    Plain,
    /// Back to the SSRC before: count it.
    Flap,
    /// A flap that made the source mixed: count it and report it (once per leg).
    Report,
}

impl MixWatch {
    /// The stream switched from SSRC `from` to `to` at `now_ms`.
    pub(super) fn change(&mut self, from: u32, to: u32, now_ms: u64) -> Change {
        let flap = self.before == Some(to);
        self.before = Some(from);
        if !flap {
            return Change::Plain;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= WINDOW_MS {
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        self.in_window += 1;
        if self.in_window >= REPORT_FLAPS && !self.reported {
            self.reported = true;
            return Change::Report;
        }
        Change::Flap
    }

    /// The leg latched onto another source: a new source gets a fresh judgement.
    pub(super) fn reset(&mut self) {
        *self = MixWatch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the SSRC of every packet, as the worker does (only changes reach the watch).
    fn feed(w: &mut MixWatch, ssrcs: &[(u32, u64)]) -> (usize, usize) {
        let (mut flaps, mut reports) = (0, 0);
        let mut cur = None;
        for &(ssrc, t) in ssrcs {
            if let Some(c) = cur.filter(|c| *c != ssrc) {
                match w.change(c, ssrc, t) {
                    Change::Plain => {}
                    Change::Flap => flaps += 1,
                    Change::Report => {
                        flaps += 1;
                        reports += 1;
                    }
                }
            }
            cur = Some(ssrc);
        }
        (flaps, reports)
    }

    #[test]
    fn two_interleaved_streams_are_reported_once() {
        let mut w = MixWatch::default();
        // Two calls from one port, 50 packets/s each, for 3 s.
        let pkts: Vec<_> = (0..300u64)
            .map(|i| (0xca11_0000 + (i % 2) as u32, i * 10))
            .collect();
        let (flaps, reports) = feed(&mut w, &pkts);
        assert_eq!(
            flaps, 298,
            "every switch after the first is back to the SSRC before"
        );
        assert_eq!(reports, 1);
    }

    #[test]
    fn a_phone_changing_its_ssrc_is_not_mixed() {
        let mut w = MixWatch::default();
        // A new SSRC after a re-INVITE, music on hold and back, another transfer: switches back
        // do happen, but a few a minute.
        let mut pkts = Vec::new();
        let mut t = 0;
        for ssrc in [1u32, 2, 3, 2, 3, 2, 4, 5, 4] {
            for _ in 0..250 {
                pkts.push((ssrc, t));
                t += 20;
            }
        }
        let (flaps, reports) = feed(&mut w, &pkts);
        assert_eq!(flaps, 4);
        assert_eq!(reports, 0);
    }

    #[test]
    fn slow_flapping_never_fills_a_window() {
        let mut w = MixWatch::default();
        // Back and forth every 100 ms: 10 flaps a second, below the threshold, for a minute.
        let pkts: Vec<_> = (0..600u64).map(|i| (7 + (i % 2) as u32, i * 100)).collect();
        let (flaps, reports) = feed(&mut w, &pkts);
        assert_eq!(flaps, 598);
        assert_eq!(reports, 0);
    }

    #[test]
    fn a_new_source_is_judged_afresh() {
        let mut w = MixWatch::default();
        let mix: Vec<_> = (0..100u64).map(|i| (1 + (i % 2) as u32, i * 10)).collect();
        assert_eq!(feed(&mut w, &mix).1, 1);
        assert_eq!(feed(&mut w, &mix).1, 0, "reported once per leg");
        w.reset();
        assert_eq!(
            feed(&mut w, &mix).1,
            1,
            "after a relatch the new source is judged"
        );
    }
}
