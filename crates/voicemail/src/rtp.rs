//! The RTP side of a terminated call: which codec to use from the caller's offer, packets out
//! (one 20 ms G.711 frame per packet, built with rtc-rtp), packets in (G.711 audio placed by
//! timestamp, RFC 4733 digits de-duplicated by event start).

use bytes::Bytes;
use podpbx_sdp::MediaDescription;
use rtc_rtp::header::Header;
use rtc_rtp::packet::Packet;
use rtc_shared::marshal::{Marshal, MarshalSize, Unmarshal};

use crate::g711::Law;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Largest gap (in samples) filled with silence when packets go missing; a larger jump in
/// timestamps is a new talk spurt and is not padded.
const MAX_GAP: u32 = 8000;

/// What a terminated call sends and receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// The G.711 law (and static payload type).
    pub law: Law,
    /// The caller's telephone-event payload type, if it offered one.
    pub telephone_event: Option<u8>,
}

/// The first G.711 format of the caller's offer, in its order of preference, with its
/// telephone-event payload type. `None` when it offers neither PCMU nor PCMA (the call layer
/// answers 488).
pub fn choose_codec(offer: &MediaDescription) -> Option<Codec> {
    if offer.rejected() || offer.media != "audio" {
        return None;
    }
    let law = offer.payload_types().into_iter().find_map(|pt| {
        let named = offer
            .rtpmaps
            .iter()
            .find(|m| m.payload_type == pt)
            .map(|m| (m.encoding.to_ascii_uppercase(), m.clock_rate));
        match (pt, named) {
            (0, None) => Some(Law::Ulaw),
            (8, None) => Some(Law::Alaw),
            (_, Some((name, 8000))) if name == "PCMU" => Some(Law::Ulaw),
            (_, Some((name, 8000))) if name == "PCMA" => Some(Law::Alaw),
            _ => None,
        }
    })?;
    Some(Codec {
        law,
        telephone_event: offer.telephone_event,
    })
}

/// The SDP answer of a terminated call: our address, the chosen law and telephone-event.
pub fn answer_sdp(local: std::net::SocketAddr, codec: &Codec, session_id: u64) -> String {
    let ip = local.ip();
    let fam = if ip.is_ipv6() { "IP6" } else { "IP4" };
    let pt = codec.law.payload_type();
    let mut formats = pt.to_string();
    let mut attrs = format!("a=rtpmap:{pt} {}/8000\r\n", codec.law.name());
    if let Some(te) = codec.telephone_event {
        formats.push_str(&format!(" {te}"));
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=podpbx {session_id} 1 IN {fam} {ip}\r\ns=podpbx\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\n{attrs}a=ptime:20\r\na=sendrecv\r\n",
        port = local.port()
    )
}

/// Builds our outgoing packets.
#[derive(Debug, Clone)]
pub struct Sender {
    law: Law,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    first: bool,
}

impl Sender {
    /// A stream with the given (random) SSRC, first sequence number and timestamp.
    pub fn new(law: Law, ssrc: u32, seq: u16, timestamp: u32) -> Sender {
        Sender {
            law,
            ssrc,
            seq,
            timestamp,
            first: true,
        }
    }

    /// Encodes one frame into `out` (header + payload); returns the packet length.
    pub fn packet(&mut self, pcm: &[i16; FRAME], out: &mut [u8]) -> usize {
        let mut payload = [0u8; FRAME];
        self.law.encode(pcm, &mut payload);
        let pkt = Packet {
            header: Header {
                version: 2,
                marker: self.first,
                payload_type: self.law.payload_type(),
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(&payload),
        };
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        if pkt.marshal_size() > out.len() {
            return 0;
        }
        pkt.marshal_to(out).unwrap_or(0)
    }

    /// Skips one frame's worth of timestamp without sending (we had nothing to say).
    pub fn skip(&mut self) {
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        self.first = true;
    }
}

/// What one received packet carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Audio: this many samples (silence first for a gap, then the packet) were written.
    Audio(usize),
    /// The start of a new RFC 4733 event.
    Digit(char),
    /// Nothing new (a repeated event packet, RTCP, comfort noise, a late or foreign packet).
    Nothing,
}

/// Receives the caller's stream.
#[derive(Debug, Clone)]
pub struct Receiver {
    codec: Codec,
    ssrc: Option<u32>,
    next_ts: u32,
    last_seq: u16,
    /// (SSRC, timestamp) of the last RFC 4733 event reported.
    last_event: Option<(u32, u32)>,
}

/// RFC 4733 event code to digit.
fn event_digit(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => (b'0' + code) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + code - 12) as char,
        _ => return None,
    })
}

impl Receiver {
    /// A receiver for the negotiated codec.
    pub fn new(codec: Codec) -> Receiver {
        Receiver {
            codec,
            ssrc: None,
            next_ts: 0,
            last_seq: 0,
            last_event: None,
        }
    }

    /// Handles one datagram; decoded audio (with silence for a short gap) goes to `out`, which
    /// must hold at least [`MAX_GAP`] + one packet; returns what it was.
    pub fn receive(&mut self, datagram: &[u8], out: &mut Vec<i16>) -> Received {
        // RTCP (payload types 72..=76 with the marker bit, RFC 5761) and non-RTP are ignored.
        if datagram.len() < 12 || datagram[0] >> 6 != 2 || (192..=223).contains(&datagram[1]) {
            return Received::Nothing;
        }
        let mut buf: &[u8] = datagram;
        let Ok(pkt) = Packet::unmarshal(&mut buf) else {
            return Received::Nothing;
        };
        let h = &pkt.header;
        if Some(h.payload_type) == self.codec.telephone_event {
            let p = &pkt.payload;
            if p.len() < 4 {
                return Received::Nothing;
            }
            let key = (h.ssrc, h.timestamp);
            if self.last_event == Some(key) {
                return Received::Nothing;
            }
            self.last_event = Some(key);
            return event_digit(p[0]).map_or(Received::Nothing, Received::Digit);
        }
        if h.payload_type != self.codec.law.payload_type() {
            // Comfort noise (13) and anything not negotiated.
            return Received::Nothing;
        }
        let n = pkt.payload.len();
        if n == 0 || n > 4 * FRAME {
            return Received::Nothing;
        }
        if self.ssrc != Some(h.ssrc) {
            // A new stream (or the first): start where it is.
            self.ssrc = Some(h.ssrc);
            self.next_ts = h.timestamp;
            self.last_seq = h.sequence_number.wrapping_sub(1);
        }
        let ahead = h.timestamp.wrapping_sub(self.next_ts);
        let seq_ahead = h.sequence_number.wrapping_sub(self.last_seq);
        if ahead > u32::MAX / 2 || seq_ahead == 0 || seq_ahead > u16::MAX / 2 {
            // Late, duplicate or reordered behind what we already wrote: dropped.
            return Received::Nothing;
        }
        let start = out.len();
        if ahead > 0 && ahead <= MAX_GAP {
            out.resize(start + ahead as usize, 0);
        }
        let at = out.len();
        out.resize(at + n, 0);
        self.codec.law.decode(&pkt.payload, &mut out[at..]);
        self.next_ts = h.timestamp.wrapping_add(n as u32);
        self.last_seq = h.sequence_number;
        Received::Audio(out.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podpbx_sdp::Sdp;

    fn offer(m: &str) -> MediaDescription {
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n{m}"
        );
        Sdp::parse(text.as_bytes()).expect("sdp").media()[0].clone()
    }

    #[test]
    fn codec_follows_the_callers_preference() {
        let o = offer("m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n");
        assert_eq!(
            choose_codec(&o),
            Some(Codec {
                law: Law::Alaw,
                telephone_event: Some(101)
            })
        );
        let o = offer("m=audio 4000 RTP/AVP 9 0 8\r\n");
        assert_eq!(choose_codec(&o).map(|c| c.law), Some(Law::Ulaw));
        // Dynamic payload type named PCMA.
        let o = offer("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 PCMA/8000\r\n");
        assert_eq!(choose_codec(&o).map(|c| c.law), Some(Law::Alaw));
        // Opus only: nothing we can play.
        let o = offer("m=audio 4000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n");
        assert_eq!(choose_codec(&o), None);
        let o = offer("m=audio 0 RTP/AVP 0\r\n");
        assert_eq!(choose_codec(&o), None);
    }

    #[test]
    fn answer_is_parseable_sdp() {
        let c = Codec {
            law: Law::Ulaw,
            telephone_event: Some(101),
        };
        let s = answer_sdp("[2001:db8::1]:30000".parse().unwrap(), &c, 7);
        let sdp = Sdp::parse(s.as_bytes()).expect("parse");
        let m = &sdp.media()[0];
        assert_eq!(m.port, 30000);
        assert_eq!(m.payload_types(), vec![0, 101]);
        assert_eq!(m.telephone_event, Some(101));
        assert_eq!(choose_codec(m), Some(c));
    }

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, pt];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn sent_packets_decode_back() {
        let mut s = Sender::new(Law::Alaw, 9, 65535, 100);
        let mut pcm = [0i16; FRAME];
        for (i, x) in pcm.iter_mut().enumerate() {
            *x = (i as i16 - 80) * 100;
        }
        let mut buf = [0u8; 1500];
        let n1 = s.packet(&pcm, &mut buf);
        assert_eq!(n1, 12 + FRAME);
        assert_eq!(buf[1], 0x80 | 8, "marker + PCMA");
        let first = buf[..n1].to_vec();
        let n2 = s.packet(&pcm, &mut buf);
        assert_eq!(buf[1], 8, "no marker after the first");
        assert_eq!(&buf[2..4], &0u16.to_be_bytes(), "sequence wraps");
        assert_eq!(&buf[4..8], &(100 + FRAME as u32).to_be_bytes());
        let mut r = Receiver::new(Codec {
            law: Law::Alaw,
            telephone_event: None,
        });
        let mut out = Vec::new();
        assert_eq!(r.receive(&first, &mut out), Received::Audio(FRAME));
        assert_eq!(r.receive(&buf[..n2], &mut out), Received::Audio(FRAME));
        for (a, b) in out.iter().zip(pcm.iter().chain(pcm.iter())) {
            assert!((*a as i32 - *b as i32).abs() < 300);
        }
    }

    #[test]
    fn gaps_are_filled_and_late_packets_dropped() {
        let mut r = Receiver::new(Codec {
            law: Law::Ulaw,
            telephone_event: Some(101),
        });
        let loud = [0x80u8; FRAME];
        let mut out = Vec::new();
        assert_eq!(
            r.receive(&packet(0, 10, 1000, 5, &loud), &mut out),
            Received::Audio(160)
        );
        // Packet 11 lost: 12 arrives with a 160-sample gap.
        assert_eq!(
            r.receive(&packet(0, 12, 1320, 5, &loud), &mut out),
            Received::Audio(320)
        );
        assert!(out[160..320].iter().all(|s| *s == 0));
        // 11 arrives late, 12 again (duplicate): dropped.
        assert_eq!(
            r.receive(&packet(0, 11, 1160, 5, &loud), &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(&packet(0, 12, 1320, 5, &loud), &mut out),
            Received::Nothing
        );
        // A huge jump is a new talk spurt: not padded.
        assert_eq!(
            r.receive(&packet(0, 13, 900_000, 5, &loud), &mut out),
            Received::Audio(160)
        );
        // New SSRC: starts afresh.
        assert_eq!(
            r.receive(&packet(0, 1, 7, 6, &loud), &mut out),
            Received::Audio(160)
        );
        assert_eq!(out.len(), 800);
        // Unnegotiated payload (PCMA, comfort noise), RTCP and garbage are ignored.
        assert_eq!(
            r.receive(&packet(8, 2, 167, 6, &loud), &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(&packet(13, 3, 327, 6, &[40]), &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(&[0x80, 200, 0, 1, 0, 0, 0, 0], &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(b"hello world, this is not RTP", &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(
                &[0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff],
                &mut out
            ),
            Received::Nothing
        );
        assert_eq!(out.len(), 800);
    }

    #[test]
    fn rfc4733_digits_once_per_event() {
        let mut r = Receiver::new(Codec {
            law: Law::Ulaw,
            telephone_event: Some(101),
        });
        let mut out = Vec::new();
        let ev = |code: u8, end: bool, dur: u16| {
            [
                code,
                if end { 0x8a } else { 0x0a },
                (dur >> 8) as u8,
                dur as u8,
            ]
        };
        assert_eq!(
            r.receive(&packet(101, 1, 8000, 3, &ev(5, false, 160)), &mut out),
            Received::Digit('5')
        );
        assert_eq!(
            r.receive(&packet(101, 2, 8000, 3, &ev(5, false, 320)), &mut out),
            Received::Nothing
        );
        for s in 3..6 {
            assert_eq!(
                r.receive(&packet(101, s, 8000, 3, &ev(5, true, 480)), &mut out),
                Received::Nothing
            );
        }
        // Same digit again: a new event (new timestamp).
        assert_eq!(
            r.receive(&packet(101, 6, 9600, 3, &ev(5, true, 480)), &mut out),
            Received::Digit('5')
        );
        assert_eq!(
            r.receive(&packet(101, 7, 11200, 3, &ev(11, false, 160)), &mut out),
            Received::Digit('#')
        );
        assert_eq!(
            r.receive(&packet(101, 8, 12800, 3, &ev(16, false, 160)), &mut out),
            Received::Nothing
        );
        assert_eq!(
            r.receive(&packet(101, 9, 14400, 3, &[1, 2]), &mut out),
            Received::Nothing
        );
        assert!(out.is_empty());
    }
}
