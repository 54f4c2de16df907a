//! RFC 4733 telephone-event generation (DTMF interworking, e.g. SIP INFO to
//! RTP events). This terminates/generates RTP, so it uses `rtc-rtp` to build
//! the packets; it never runs on the forwarding path.
//!
//! An event of duration `d` is sent as one packet per `interval` (default
//! 20 ms) carrying the same RTP timestamp (the event start) and a growing
//! duration field, the first with the marker bit, followed by three copies of
//! the final packet with the end bit (RFC 4733 §2.5.1.4).

use std::time::Duration;

use bytes::Bytes;
use rtc_rtp::{header::Header, packet::Packet};
use rtc_shared::marshal::Marshal;

/// Volume used for generated events (-10 dBm0).
pub const DEFAULT_VOLUME: u8 = 10;
/// Longest event we generate in one go (the 16-bit duration field at 8 kHz
/// holds 8.19 s).
pub const MAX_DURATION: Duration = Duration::from_secs(5);
/// Shortest event.
pub const MIN_DURATION: Duration = Duration::from_millis(40);

/// Why an event could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// Not one of 0-9, *, #, A-D (or a flash, event 16).
    #[error("not a DTMF digit: {0:?}")]
    BadDigit(char),
    /// Clock rate 0 or interval 0.
    #[error("bad telephone-event parameters")]
    BadParams,
    /// The leg has no telephone-event payload type.
    #[error("the leg negotiated no telephone-event payload type")]
    NoPayloadType,
    /// rtc-rtp could not serialise the packet.
    #[error("could not build the RTP packet: {0}")]
    Marshal(String),
}

/// RFC 4733 event code of a DTMF digit (`'0'..='9'`, `'*'`, `'#'`, `'A'..='D'`).
pub fn event_code(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        'a'..='d' => digit as u8 - b'a' + 12,
        '!' => 16, // hook flash, as written in SIP INFO dtmf-relay bodies
        _ => return None,
    })
}

/// The digit of an event code (inverse of [`event_code`]).
pub fn event_digit(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => (b'0' + code) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + code - 12) as char,
        16 => '!',
        _ => return None,
    })
}

/// Where a generated event sits in the generator's RTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventParams {
    /// telephone-event payload type negotiated with the receiving leg.
    pub payload_type: u8,
    /// Its clock rate (usually 8000).
    pub clock_rate: u32,
    /// Generator SSRC.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub first_seq: u16,
    /// RTP timestamp of the event start.
    pub timestamp: u32,
    /// Packet interval.
    pub interval: Duration,
    /// Volume (0..=63).
    pub volume: u8,
}

/// One generated packet and when to send it, relative to the event start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedPacket {
    /// Offset from the event start.
    pub at: Duration,
    /// The serialised RTP packet.
    pub bytes: Vec<u8>,
}

fn ts_units(d: Duration, clock: u32) -> u64 {
    d.as_micros() as u64 * clock as u64 / 1_000_000
}

/// Build the packets of one event. Returns them with their send offsets; the
/// number of sequence numbers used is the number of packets.
pub fn event_packets(
    event: u8,
    duration: Duration,
    p: &EventParams,
) -> Result<Vec<TimedPacket>, DtmfError> {
    if p.clock_rate == 0 || p.interval.is_zero() || p.payload_type > 127 {
        return Err(DtmfError::BadParams);
    }
    let duration = duration.clamp(MIN_DURATION, MAX_DURATION);
    let total = ts_units(duration, p.clock_rate).min(u16::MAX as u64) as u16;
    let step = ts_units(p.interval, p.clock_rate).max(1);
    let n = (duration.as_micros() as u64)
        .div_ceil(p.interval.as_micros().max(1) as u64)
        .max(1);
    let mut out = Vec::with_capacity(n as usize + 3);
    let mut seq = p.first_seq;
    let mut push = |at: Duration, dur: u16, end: bool, marker: bool| -> Result<(), DtmfError> {
        let payload = [
            event,
            (if end { 0x80 } else { 0 }) | (p.volume & 0x3f),
            (dur >> 8) as u8,
            dur as u8,
        ];
        let pkt = Packet {
            header: Header {
                version: 2,
                marker,
                payload_type: p.payload_type,
                sequence_number: seq,
                timestamp: p.timestamp,
                ssrc: p.ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(&payload),
        };
        let bytes = pkt
            .marshal()
            .map_err(|e| DtmfError::Marshal(e.to_string()))?;
        out.push(TimedPacket {
            at,
            bytes: bytes.to_vec(),
        });
        seq = seq.wrapping_add(1);
        Ok(())
    };
    for k in 0..n - 1 {
        let dur = ((k + 1) * step).min(total as u64) as u16;
        push(p.interval * k as u32, dur, false, k == 0)?;
    }
    // Final packet with the end bit, sent three times (RFC 4733 §2.5.1.4).
    let at_end = p.interval * (n.saturating_sub(1)) as u32;
    for r in 0..3u32 {
        push(
            at_end + Duration::from_millis(r as u64),
            total,
            true,
            n == 1 && r == 0,
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{classify, telephone_event, Kind};

    #[test]
    fn codes() {
        assert_eq!(event_code('5'), Some(5));
        assert_eq!(event_code('*'), Some(10));
        assert_eq!(event_code('#'), Some(11));
        assert_eq!(event_code('D'), Some(15));
        assert_eq!(event_code('x'), None);
        for c in "0123456789*#ABCD!".chars() {
            assert_eq!(event_digit(event_code(c).expect("code")), Some(c));
        }
    }

    #[test]
    fn packets_follow_rfc4733() {
        let p = EventParams {
            payload_type: 101,
            clock_rate: 8000,
            ssrc: 0x1234_5678,
            first_seq: 65_534,
            timestamp: 16_000,
            interval: Duration::from_millis(20),
            volume: DEFAULT_VOLUME,
        };
        let pk = event_packets(11, Duration::from_millis(100), &p).expect("packets");
        // 100 ms / 20 ms = 5 intervals: 4 progress packets + 3 end packets.
        assert_eq!(pk.len(), 7);
        let mut last_dur = 0;
        for (i, t) in pk.iter().enumerate() {
            let Kind::Rtp(h) = classify(&t.bytes, true) else {
                panic!("not RTP: {:?}", t.bytes)
            };
            assert_eq!(h.payload_type, 101);
            assert_eq!(h.ssrc, 0x1234_5678);
            assert_eq!(h.timestamp, 16_000);
            assert_eq!(h.seq, 65_534u16.wrapping_add(i as u16));
            assert_eq!(h.marker, i == 0);
            let off = h.payload_offset as usize;
            let ev = telephone_event(&t.bytes[off..]).expect("event");
            assert_eq!(ev.event, 11);
            assert_eq!(ev.volume, 10);
            assert!(ev.duration >= last_dur);
            last_dur = ev.duration;
            assert_eq!(ev.end, i >= 4);
        }
        assert_eq!(last_dur, 800);
        assert_eq!(pk[0].at, Duration::ZERO);
        assert_eq!(pk[3].at, Duration::from_millis(60));
        assert!(pk[6].at >= Duration::from_millis(80));
    }

    /// The crafted header that makes the old `rtp` 0.17 crate panic: 20
    /// bytes, X bit set, extension length pointing past the end. The relay's
    /// hot path drops it (see `packet`), and rtc-rtp, used here to build
    /// packets, rejects it with an error too.
    #[test]
    fn rtc_rtp_rejects_crafted_extension_without_panic() {
        use rtc_shared::marshal::Unmarshal;
        for ext_len in [0x0001u16, 0x0002, 0x00ff, 0xffff] {
            for profile in [0xbedeu16, 0x1000, 0x0001] {
                let mut raw = vec![0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
                raw.extend_from_slice(&profile.to_be_bytes());
                raw.extend_from_slice(&ext_len.to_be_bytes());
                raw.extend_from_slice(&[0x10, 0xaa, 0xbb, 0xcc]);
                assert_eq!(raw.len(), 20);
                let mut b = Bytes::from(raw.clone());
                let parsed = Packet::unmarshal(&mut b);
                assert!(ext_len == 1 || parsed.is_err(), "{ext_len} {profile}");
                let hot = classify(&raw, true);
                assert!(matches!(hot, Kind::Rtp(_)) == (ext_len == 1), "{hot:?}");
            }
        }
    }

    #[test]
    fn bad_params() {
        let mut p = EventParams {
            payload_type: 101,
            clock_rate: 0,
            ssrc: 1,
            first_seq: 1,
            timestamp: 1,
            interval: Duration::from_millis(20),
            volume: 10,
        };
        assert_eq!(
            event_packets(1, Duration::from_millis(100), &p),
            Err(DtmfError::BadParams)
        );
        p.clock_rate = 8000;
        p.interval = Duration::ZERO;
        assert_eq!(
            event_packets(1, Duration::from_millis(100), &p),
            Err(DtmfError::BadParams)
        );
        p.interval = Duration::from_millis(20);
        // Huge durations are clamped, tiny ones raised.
        let long = event_packets(1, Duration::from_secs(3600), &p).expect("long");
        assert_eq!(long.len(), 250 - 1 + 3);
        let short = event_packets(1, Duration::ZERO, &p).expect("short");
        assert_eq!(short.len(), 1 + 3);
    }
}
