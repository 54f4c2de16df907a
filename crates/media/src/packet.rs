//! Hot-path packet classification.
//!
//! Nothing here parses a packet fully: the first byte tells RTP/RTCP from
//! STUN, DTLS, ZRTP and TURN channel data (RFC 7983 §7), the second byte tells
//! RTCP from RTP on a multiplexed port (RFC 5761 §4), and the few RTP header
//! fields the relay needs (payload type, sequence number, timestamp, SSRC) are
//! read in place. The header length implied by the CSRC count, the extension
//! header and the padding count is checked against the packet length so that a
//! crafted header (for example a 20-byte packet whose extension length points
//! past its end) is dropped here instead of being handed to a fragile parser
//! downstream. Every function is total: any input, of any length, returns a
//! value and never panics.

/// Smallest RTP packet: the fixed 12-byte header (RFC 3550 §5.1).
pub const RTP_MIN_LEN: usize = 12;
/// Smallest RTCP packet: a receiver report without report blocks (RFC 3550 §6.4.2).
pub const RTCP_MIN_LEN: usize = 8;

/// What a datagram is, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An RTP packet whose header is consistent with its length.
    Rtp(RtpInfo),
    /// An RTCP packet (version 2, packet type 192..=223, length >= 8).
    Rtcp,
    /// STUN (first byte 0..=3).
    Stun,
    /// DTLS (first byte 20..=63).
    Dtls,
    /// Anything else that is not RTP/RTCP: ZRTP, TURN channel data, unknown.
    Other,
    /// Looks like RTP/RTCP (first byte 128..=191) but is too short or its
    /// header does not fit in the packet.
    Malformed,
}

/// The RTP header fields the relay reads, in place, without copying the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpInfo {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Offset of the payload (after CSRCs and header extension).
    pub payload_offset: u16,
    /// Payload length (excluding padding).
    pub payload_len: u16,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Classify a datagram by its first bytes (RFC 7983 and RFC 5761).
///
/// `rtp_port` tells whether it arrived on an RTP port (where RTP and, with
/// rtcp-mux, RTCP may arrive) or on an RTCP port (where only RTCP is valid;
/// anything else there is reported as [`Kind::Other`]).
#[inline]
pub fn classify(pkt: &[u8], rtp_port: bool) -> Kind {
    let Some(&b0) = pkt.first() else {
        return Kind::Malformed;
    };
    match b0 {
        0..=3 => Kind::Stun,
        20..=63 => Kind::Dtls,
        128..=191 => {
            // Version 2. Second byte: RTCP packet types 192..=223 (RFC 5761 §4).
            let Some(&b1) = pkt.get(1) else {
                return Kind::Malformed;
            };
            if (192..=223).contains(&b1) {
                if pkt.len() < RTCP_MIN_LEN {
                    return Kind::Malformed;
                }
                return Kind::Rtcp;
            }
            if !rtp_port {
                return Kind::Other;
            }
            match rtp_header(pkt) {
                Some(info) => Kind::Rtp(info),
                None => Kind::Malformed,
            }
        }
        _ => Kind::Other,
    }
}

/// Read the RTP header fields and check that the header (CSRC list, extension,
/// padding) fits inside the packet. `None` for anything inconsistent.
#[inline]
pub fn rtp_header(pkt: &[u8]) -> Option<RtpInfo> {
    if pkt.len() < RTP_MIN_LEN || pkt.len() > u16::MAX as usize {
        return None;
    }
    let b0 = pkt[0];
    if b0 >> 6 != 2 {
        return None;
    }
    let b1 = pkt[1];
    let cc = (b0 & 0x0f) as usize;
    let mut off = RTP_MIN_LEN + 4 * cc;
    if b0 & 0x10 != 0 {
        // Header extension: 16-bit profile, 16-bit length in 32-bit words.
        let words = be16(pkt, off + 2)? as usize;
        off = off + 4 + 4 * words;
    }
    if off > pkt.len() {
        return None;
    }
    let mut end = pkt.len();
    if b0 & 0x20 != 0 {
        // Padding: last octet counts the padding octets, itself included.
        let pad = *pkt.last()? as usize;
        if pad == 0 || pad > end - off {
            return None;
        }
        end -= pad;
    }
    Some(RtpInfo {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        seq: be16(pkt, 2)?,
        timestamp: be32(pkt, 4)?,
        ssrc: be32(pkt, 8)?,
        payload_offset: off as u16,
        payload_len: (end - off) as u16,
    })
}

/// An RFC 4733 telephone-event payload, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0-9, 10 = '*', 11 = '#', 12-15 = A-D, 16 = flash).
    pub event: u8,
    /// End bit.
    pub end: bool,
    /// Volume (0..=63, -dBm0).
    pub volume: u8,
    /// Duration in timestamp units.
    pub duration: u16,
}

/// Read an RFC 4733 event from an RTP payload (first four octets); `None`
/// when it is shorter. Total, in place, used on the forwarding path.
#[inline]
pub fn telephone_event(payload: &[u8]) -> Option<TelephoneEvent> {
    let p = payload.get(..4)?;
    Some(TelephoneEvent {
        event: p[0],
        end: p[1] & 0x80 != 0,
        volume: p[1] & 0x3f,
        duration: u16::from_be_bytes([p[2], p[3]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, pt];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn plain_rtp() {
        let p = rtp(8, 7, 1600, 0xdead_beef, &[1, 2, 3]);
        match classify(&p, true) {
            Kind::Rtp(i) => {
                assert_eq!(i.payload_type, 8);
                assert_eq!(i.seq, 7);
                assert_eq!(i.timestamp, 1600);
                assert_eq!(i.ssrc, 0xdead_beef);
                assert_eq!(i.payload_offset, 12);
                assert_eq!(i.payload_len, 3);
                assert!(!i.marker);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn rfc7983_demux() {
        assert_eq!(classify(&[0, 1, 0, 0], true), Kind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd], true), Kind::Dtls);
        assert_eq!(classify(&[70, 0, 0, 0], true), Kind::Other);
        assert_eq!(classify(&[16, 0, 0, 0], true), Kind::Other);
        assert_eq!(classify(&[], true), Kind::Malformed);
        assert_eq!(classify(&[0x80], true), Kind::Malformed);
        // Version 0/1/3 with RTP-ish bytes.
        assert_eq!(classify(&[0x40; 20], true), Kind::Other);
        assert_eq!(classify(&[0xc0; 20], true), Kind::Other);
    }

    #[test]
    fn rtcp_by_payload_type() {
        // RR, 8 bytes.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&rr, true), Kind::Rtcp);
        assert_eq!(classify(&rr, false), Kind::Rtcp);
        assert_eq!(classify(&rr[..7], false), Kind::Malformed);
        // RTP with marker bit and PT 72 would collide: 0x80|72 = 200 -> RTCP.
        // PT 0 with marker = 0x80: RTP.
        let p = rtp(0x80, 1, 1, 1, &[]);
        assert!(matches!(classify(&p, true), Kind::Rtp(i) if i.marker && i.payload_type == 0));
        // RTP on an RTCP port is not accepted.
        assert_eq!(classify(&p, false), Kind::Other);
    }

    #[test]
    fn truncated_and_crafted() {
        let p = rtp(0, 1, 1, 1, &[]);
        for n in 0..12 {
            assert_eq!(classify(&p[..n], true), Kind::Malformed);
        }
        // CSRC count 15 in a 20-byte packet.
        let mut c = rtp(0, 1, 1, 1, &[0; 8]);
        c[0] = 0x8f;
        assert_eq!(classify(&c, true), Kind::Malformed);
        // 20 bytes, X bit set, extension length pointing past the end.
        let mut x = rtp(0, 1, 1, 1, &[0xbe, 0xde, 0xff, 0xff, 0x10, 0, 0, 0]);
        x[0] = 0x90;
        assert_eq!(x.len(), 20);
        assert_eq!(classify(&x, true), Kind::Malformed);
        // X bit set, extension header itself cut off.
        let mut x2 = rtp(0, 1, 1, 1, &[0xbe]);
        x2[0] = 0x90;
        assert_eq!(classify(&x2, true), Kind::Malformed);
        // Valid extension of one word.
        let mut x3 = rtp(0, 1, 1, 1, &[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0, 0, 9]);
        x3[0] = 0x90;
        assert!(
            matches!(classify(&x3, true), Kind::Rtp(i) if i.payload_offset == 20 && i.payload_len == 1)
        );
        // Padding larger than the payload.
        let mut pd = rtp(0, 1, 1, 1, &[1, 2, 9]);
        pd[0] = 0xa0;
        assert_eq!(classify(&pd, true), Kind::Malformed);
        // Padding of zero is invalid.
        let mut pz = rtp(0, 1, 1, 1, &[1, 2, 0]);
        pz[0] = 0xa0;
        assert_eq!(classify(&pz, true), Kind::Malformed);
        // Good padding.
        let mut pg = rtp(0, 1, 1, 1, &[1, 2, 2]);
        pg[0] = 0xa0;
        assert!(matches!(classify(&pg, true), Kind::Rtp(i) if i.payload_len == 1));
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; 64];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 65) as usize;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (x >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
            }
            buf[0] = 0x80 | (x as u8 & 0x3f);
            let _ = classify(&buf[..len], x & 1 == 0);
            let _ = telephone_event(&buf[..len]);
        }
    }

    #[test]
    fn telephone_event_fields() {
        let e = telephone_event(&[11, 0x8a, 0x03, 0x20]).expect("event");
        assert_eq!(e.event, 11);
        assert!(e.end);
        assert_eq!(e.volume, 10);
        assert_eq!(e.duration, 800);
        assert!(telephone_event(&[1, 2, 3]).is_none());
    }
}
