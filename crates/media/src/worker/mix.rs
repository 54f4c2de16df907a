//! Mixed streams on one latched source: the RTP a leg accepts keeps changing its SSRC.
//!
//! A phone's stream changes SSRC now and then (a re-INVITE, a transfer, music on hold), seconds
//! or minutes apart. A source that carries several streams at once changes it all the time: its
//! packets interleave, A B A B with two streams, A B C … Z A B … with many. The usual cause is a
//! peer that sends the RTP of several calls from one address and port (SIPp's `rtp_stream`
//! does; so can a gateway or a media server). In the shared port layout all those packets reach
//! the one leg latched onto that source, so every other call of that peer loses its audio and
//! this call gets theirs, crossed. Only `media.port_layout = "per-call"` keeps such calls apart
//! (a port per leg). The relay cannot tell which packet belongs to which call, so it keeps
//! forwarding and says so: a counter per leg and in total, and one event per leg for the log.
//!
//! Plain state, no clock: the worker passes its millisecond time. Only called on an SSRC
//! change, never for a packet that keeps the SSRC.

/// An SSRC change this soon after the one before is a flap: interleaved streams at 50 packets/s
/// change every few milliseconds; a phone's changes are seconds apart.
pub(super) const FLAP_MS: u64 = 200;
/// Flaps within one [`WINDOW_MS`] that make a leg's source "mixed". Interleaved streams flap
/// about 100 times a second; the handful a provider's early-media to answer switch may cause
/// never comes close.
pub(super) const REPORT_FLAPS: u32 = 16;
/// The counting window.
pub(super) const WINDOW_MS: u64 = 1_000;

/// Per leg (cold state).
#[derive(Default)]
pub(super) struct MixWatch {
    /// When the SSRC changed last.
    last_change_ms: Option<u64>,
    window_start_ms: u64,
    in_window: u32,
    reported: bool,
}

/// What one SSRC change was.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A change long after the one before: a phone's new stream.
    Plain,
    /// A change soon after the one before: count it.
    Flap,
    /// A flap that made the source mixed: count it and report it (once per leg and source).
    Report,
}

impl MixWatch {
    /// The stream changed its SSRC at `now_ms`.
    pub(super) fn change(&mut self, now_ms: u64) -> Change {
        let flap = self
            .last_change_ms
            .replace(now_ms)
            .is_some_and(|t| now_ms.saturating_sub(t) < FLAP_MS);
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
            if cur.is_some_and(|c| c != ssrc) {
                match w.change(t) {
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
            "every change after the first follows another closely"
        );
        assert_eq!(reports, 1);
    }

    #[test]
    fn many_streams_in_turn_are_reported() {
        let mut w = MixWatch::default();
        // 25 calls from one port, each 50 packets/s, in turn (never back to the SSRC just
        // before): 1 250 packets a second.
        let pkts: Vec<_> = (0..2_500u64)
            .map(|i| (1 + (i % 25) as u32, i * 4 / 5))
            .collect();
        let (flaps, reports) = feed(&mut w, &pkts);
        assert_eq!(flaps, 2_498);
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
        assert_eq!(flaps, 0);
        assert_eq!(reports, 0);
    }

    #[test]
    fn slow_flapping_never_fills_a_window() {
        let mut w = MixWatch::default();
        // Back and forth every 100 ms: 10 flaps a second, counted, but below the threshold,
        // for a minute.
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
