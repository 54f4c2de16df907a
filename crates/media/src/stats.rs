//! Per-stream counters.
//!
//! A stream is what the relay receives on one leg (RTP and RTCP from that
//! leg's peer). Its counters live in a fixed array of `AtomicU64` shared
//! between the worker that owns the leg (the only writer) and the call layer
//! (readers). The worker updates them with relaxed load+store pairs — a plain
//! move on every target Rust supports, no read-modify-write, no lock — and the
//! call layer reads a [`StreamStats`] snapshot at any time without waiting on
//! the worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Index of one counter in a stream's counter array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum C {
    // Written for every packet: kept together in the first cache line.
    RtpPackets,
    RtpBytes,
    FwdPackets,
    FwdBytes,
    ExtMaxSeq,
    Expected,
    /// Cumulative lost, as i64 bits (may be negative with duplicates).
    Lost,
    /// Interarrival jitter in timestamp units, scaled by 16 (RFC 3550 A.8).
    JitterQ4,
    /// Milliseconds since relay start of the last accepted packet, 0 = never.
    LastRxMs,
    RtcpPackets,
    RtcpBytes,
    DropForeign,
    DropMalformed,
    DropNotRtp,
    DropOversize,
    DropNoDest,
    DropSendError,
    DropSrtp,
    Ssrc,
    ClockRate,
    Latched,
    DtmfSent,
    Relatches,
    SsrcFlaps,
}

pub(crate) const COUNTERS: usize = C::SsrcFlaps as usize + 1;

/// The counters of one stream (cache-line aligned).
#[repr(align(64))]
pub(crate) struct Counters {
    c: [AtomicU64; COUNTERS],
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            c: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Add `n`. Single writer (the owning worker): a relaxed load and store.
    #[inline(always)]
    pub(crate) fn add(&self, c: C, n: u64) {
        let a = &self.c[c as usize];
        a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Take back `n` (a forwarded packet the kernel then refused).
    #[inline(always)]
    pub(crate) fn sub(&self, c: C, n: u64) {
        let a = &self.c[c as usize];
        a.store(a.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    #[inline(always)]
    pub(crate) fn set(&self, c: C, v: u64) {
        self.c[c as usize].store(v, Relaxed);
    }

    #[inline(always)]
    pub(crate) fn get(&self, c: C) -> u64 {
        self.c[c as usize].load(Relaxed)
    }

    pub(crate) fn snapshot(&self) -> StreamStats {
        let g = |c| self.get(c);
        let clock = g(C::ClockRate);
        let jitter_ts = g(C::JitterQ4) >> 4;
        let jitter = jitter_ts
            .saturating_mul(1_000_000_000)
            .checked_div(clock)
            .map_or(Duration::ZERO, Duration::from_nanos);
        StreamStats {
            rtp_packets: g(C::RtpPackets),
            rtp_bytes: g(C::RtpBytes),
            rtcp_packets: g(C::RtcpPackets),
            rtcp_bytes: g(C::RtcpBytes),
            forwarded_packets: g(C::FwdPackets),
            forwarded_bytes: g(C::FwdBytes),
            drops: Drops {
                foreign_source: g(C::DropForeign),
                malformed: g(C::DropMalformed),
                not_rtp: g(C::DropNotRtp),
                oversize: g(C::DropOversize),
                no_destination: g(C::DropNoDest),
                send_error: g(C::DropSendError),
                srtp: g(C::DropSrtp),
            },
            ssrc: g(C::Ssrc) as u32,
            extended_highest_seq: g(C::ExtMaxSeq),
            expected_packets: g(C::Expected),
            lost_packets: g(C::Lost) as i64,
            jitter_timestamp_units: jitter_ts,
            clock_rate: clock as u32,
            jitter,
            last_packet_ms: g(C::LastRxMs),
            latched: g(C::Latched) != 0,
            dtmf_packets_sent: g(C::DtmfSent),
            relatches: g(C::Relatches),
            ssrc_flaps: g(C::SsrcFlaps),
        }
    }
}

/// Why packets were dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Valid RTP/RTCP from a source other than the latched one (injection attempts).
    pub foreign_source: u64,
    /// Version 2 packets too short or with an inconsistent header.
    pub malformed: u64,
    /// STUN, DTLS, ZRTP, TURN or unknown datagrams.
    pub not_rtp: u64,
    /// Larger than the relay's receive buffer.
    pub oversize: u64,
    /// The other leg has no address yet (or is held with c=0.0.0.0).
    pub no_destination: u64,
    /// The kernel refused to send (buffer full, unreachable...).
    pub send_error: u64,
    /// SRTP/SRTCP that failed authentication or the replay check (corrupted, forged, replayed,
    /// or plain RTP on an SRTP leg), or could not be protected.
    pub srtp: u64,
}

impl Drops {
    /// All drops added up.
    pub fn total(&self) -> u64 {
        self.foreign_source
            + self.malformed
            + self.not_rtp
            + self.oversize
            + self.no_destination
            + self.send_error
            + self.srtp
    }
}

/// A snapshot of one stream's counters (media received on one leg).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// RTP packets accepted from the leg's peer.
    pub rtp_packets: u64,
    /// Their bytes (UDP payload).
    pub rtp_bytes: u64,
    /// RTCP packets accepted from the leg's peer.
    pub rtcp_packets: u64,
    /// Their bytes.
    pub rtcp_bytes: u64,
    /// Packets handed to the kernel towards the other leg.
    pub forwarded_packets: u64,
    /// Their bytes.
    pub forwarded_bytes: u64,
    /// Drops by reason.
    pub drops: Drops,
    /// SSRC of the current RTP source.
    pub ssrc: u32,
    /// Extended highest sequence number received (RFC 3550 A.1).
    pub extended_highest_seq: u64,
    /// Packets expected from the sequence numbers since the SSRC started.
    pub expected_packets: u64,
    /// Estimated lost packets (expected - received; negative with duplicates).
    pub lost_packets: i64,
    /// Interarrival jitter in RTP timestamp units (RFC 3550 A.8).
    pub jitter_timestamp_units: u64,
    /// Clock rate used for the jitter (from the SDP payload type, default 8000).
    pub clock_rate: u32,
    /// The jitter as a duration.
    pub jitter: Duration,
    /// When the last packet was accepted, in ms since the relay started (0 = never).
    pub last_packet_ms: u64,
    /// Whether the leg has latched onto its peer's source address.
    pub latched: bool,
    /// RFC 4733 packets generated towards this leg.
    pub dtmf_packets_sent: u64,
    /// How often the leg latched (first latch included).
    pub relatches: u64,
    /// How often the RTP from the latched source changed its SSRC within 200 ms of the change
    /// before (telephone events under an SSRC of their own left out): the signature of several
    /// streams sent from one address and port (in the shared port layout, several calls' audio
    /// reaching this one leg). See [`crate::Event::MixedStreams`].
    pub ssrc_flaps: u64,
}

impl StreamStats {
    /// Fraction lost in [0, 1], from the sequence numbers.
    pub fn loss_fraction(&self) -> f64 {
        if self.expected_packets == 0 || self.lost_packets <= 0 {
            0.0
        } else {
            self.lost_packets as f64 / self.expected_packets as f64
        }
    }
}

const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Sequence-number and jitter state of one RTP source (RFC 3550 A.1, A.8).
/// Worker-local; results are published to [`Counters`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SeqState {
    active: bool,
    ssrc: u32,
    max_seq: u16,
    cycles: u64,
    base_seq: u64,
    bad_seq: u32,
    received: u64,
    /// Previous transit time (arrival - timestamp) in timestamp units.
    transit: u32,
    have_transit: bool,
    clock: u32,
    jitter_q4: u64,
}

impl SeqState {
    /// Whether a packet of `ssrc` continues this stream (or starts the first one).
    #[inline]
    pub(crate) fn follows(&self, ssrc: u32) -> bool {
        !self.active || ssrc == self.ssrc
    }

    /// Account one RTP packet. `arrival_us` is a monotonic clock in
    /// microseconds; `clock` the payload type's clock rate in Hz. Returns the SSRC the
    /// stream had until this packet when the packet changed it (the rare branch).
    #[inline]
    pub(crate) fn update(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        arrival_us: u64,
        clock: u32,
        out: &Counters,
    ) -> Option<u32> {
        let mut changed = None;
        if !self.active || ssrc != self.ssrc {
            changed = self.active.then_some(self.ssrc);
            *self = SeqState {
                active: true,
                ssrc,
                max_seq: seq,
                base_seq: seq as u64,
                bad_seq: u32::MAX,
                received: 0,
                clock,
                ..SeqState::default()
            };
            out.set(C::Ssrc, ssrc as u64);
            out.set(C::JitterQ4, 0);
            out.set(C::ClockRate, clock as u64);
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: restart the count if the next packet follows it.
            if seq as u32 == self.bad_seq {
                self.max_seq = seq;
                self.cycles = 0;
                self.base_seq = seq as u64;
                self.received = 0;
                self.bad_seq = u32::MAX;
            } else {
                self.bad_seq = (seq as u32 + 1) & 0xffff;
                return changed;
            }
        }
        // else: duplicate or reordered, counted as received below.
        self.received += 1;

        // Jitter (A.8): arrival converted to timestamp units.
        if clock != self.clock {
            self.clock = clock;
            self.have_transit = false;
            out.set(C::ClockRate, clock as u64);
        }
        if clock > 0 {
            let arrival = (arrival_us.wrapping_mul(clock as u64) / 1_000_000) as u32;
            let transit = arrival.wrapping_sub(ts);
            if self.have_transit {
                let d = transit.wrapping_sub(self.transit) as i32;
                let d = d.unsigned_abs() as u64;
                // J += (|D| - J) / 16, kept scaled by 16.
                self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
            }
            self.transit = transit;
            self.have_transit = true;
        }

        let ext_max = self.cycles + self.max_seq as u64;
        let expected = ext_max + 1 - self.base_seq.min(ext_max + 1);
        out.set(C::ExtMaxSeq, ext_max);
        out.set(C::Expected, expected);
        out.set(C::Lost, (expected as i64 - self.received as i64) as u64);
        out.set(C::JitterQ4, self.jitter_q4);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_wrap() {
        let c = Counters::new();
        let mut s = SeqState::default();
        let mut seq: u16 = 65_500;
        let mut ts: u32 = 0;
        let mut t = 0u64;
        for i in 0..200 {
            if i % 10 != 3 {
                s.update(1, seq, ts, t, 8000, &c);
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(160);
            t += 20_000;
        }
        let st = c.snapshot();
        // Last packet sent is i=199 (not dropped): expected 200.
        assert_eq!(st.expected_packets, 200);
        assert_eq!(st.lost_packets, 20);
        assert_eq!(st.extended_highest_seq, 65_500 + 199);
        // Perfect pacing: no jitter.
        assert_eq!(st.jitter_timestamp_units, 0);
    }

    #[test]
    fn jitter_grows_with_irregular_arrival() {
        let c = Counters::new();
        let mut s = SeqState::default();
        let mut t = 0u64;
        for i in 0..500u32 {
            // Arrival alternates early/late by 5 ms (40 timestamp units at 8 kHz).
            let wobble = if i % 2 == 0 { 0 } else { 5_000 };
            s.update(7, i as u16, i * 160, t + wobble, 8000, &c);
            t += 20_000;
        }
        let st = c.snapshot();
        // |D| = 40 every packet -> J converges to 40.
        assert!((38..=41).contains(&st.jitter_timestamp_units), "{st:?}");
        assert!(
            st.jitter >= Duration::from_micros(4_700) && st.jitter <= Duration::from_micros(5_200)
        );
        assert_eq!(st.lost_packets, 0);
    }

    #[test]
    fn ssrc_change_resets() {
        let c = Counters::new();
        let mut s = SeqState::default();
        for i in 0..10u16 {
            s.update(1, i * 2, 0, 0, 8000, &c);
        }
        assert_eq!(c.snapshot().lost_packets, 9);
        for i in 0..10u16 {
            s.update(2, 1000 + i, 0, 0, 8000, &c);
        }
        let st = c.snapshot();
        assert_eq!(st.ssrc, 2);
        assert_eq!(st.lost_packets, 0);
        assert_eq!(st.expected_packets, 10);
    }

    #[test]
    fn duplicates_make_negative_loss() {
        let c = Counters::new();
        let mut s = SeqState::default();
        for i in 0..10u16 {
            s.update(1, i, 0, 0, 8000, &c);
            s.update(1, i, 0, 0, 8000, &c);
        }
        assert_eq!(c.snapshot().lost_packets, -10);
        assert_eq!(c.snapshot().loss_fraction(), 0.0);
    }
}
