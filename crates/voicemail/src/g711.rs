//! G.711 (ITU-T G.711, 1988) µ-law and A-law companding, sample by sample.
//!
//! Both laws map a 16-bit linear sample to 8 bits with a sign, a 3-bit segment (exponent) and a
//! 4-bit step inside the segment. The encoders follow the segment search of the Recommendation;
//! the decoders return the middle of the quantisation step, so `decode(encode(x))` is within half
//! a step of `x`.

/// µ-law bias added before the segment search (33 << 2 in 14-bit terms).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law can represent once the bias is added.
const ULAW_CLIP: i32 = 32_635;

/// Encodes one linear sample as µ-law (PCMU, RTP payload type 0).
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(ULAW_CLIP) + ULAW_BIAS;
    // x is in 0x84..=0x7FFF: its highest set bit (7..=14) gives the segment.
    let exponent = (31 - (x as u32).leading_zeros()) as i32 - 7;
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decodes one µ-law byte to a linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes one linear sample as A-law (PCMA, RTP payload type 8).
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits.
    let mut x = (sample as i32) >> 3;
    let mask = if x >= 0 {
        0xD5
    } else {
        x = -x - 1;
        0x55
    };
    // Segment ends: 0x1F, 0x3F, 0x7F, ... 0xFFF.
    let segment = if x <= 0x1F {
        0
    } else {
        (31 - (x as u32).leading_zeros()) as i32 - 4
    };
    if segment >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let step = if segment < 2 {
        (x >> 1) & 0x0F
    } else {
        (x >> segment) & 0x0F
    };
    (((segment << 4) | step) ^ mask) as u8
}

/// Decodes one A-law byte to a linear sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let a = (byte ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        s => {
            t += 0x108;
            t <<= s - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// The G.711 law of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Law {
    /// µ-law, PCMU, static payload type 0 (North America, Japan).
    Ulaw,
    /// A-law, PCMA, static payload type 8 (Europe and most of the world).
    Alaw,
}

impl Law {
    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Law::Ulaw => "PCMU",
            Law::Alaw => "PCMA",
        }
    }

    /// Encodes `pcm` into `out` (same length).
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        let f = match self {
            Law::Ulaw => ulaw_encode,
            Law::Alaw => alaw_encode,
        };
        for (o, s) in out.iter_mut().zip(pcm) {
            *o = f(*s);
        }
    }

    /// Decodes `bytes` into `out` (same length).
    pub fn decode(self, bytes: &[u8], out: &mut [i16]) {
        let f = match self {
            Law::Ulaw => ulaw_decode,
            Law::Alaw => alaw_decode,
        };
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = f(*b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence: µ-law 0xFF (positive zero), A-law 0xD5.
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(alaw_decode(0xD5), 8);
        // Full scale.
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for b in 0..=255u8 {
            let u = ulaw_decode(b);
            // 0x7F is µ-law's negative zero: it decodes to 0, which encodes as 0xFF.
            if b != 0x7F {
                assert_eq!(ulaw_encode(u), b, "µ-law {b:#04x} -> {u}");
            }
            let a = alaw_decode(b);
            assert_eq!(alaw_encode(a), b, "A-law {b:#04x} -> {a}");
        }
    }

    #[test]
    fn round_trip_error_is_within_the_step() {
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_decode(ulaw_encode(x)) as i32;
            let a = alaw_decode(alaw_encode(x)) as i32;
            let x = x as i32;
            // Step sizes grow with the magnitude: 1/16 of the segment, at most 1024 (µ) / 1024 (A).
            let tol = (x.abs() / 16).max(16) + 4;
            assert!(
                (u - x).abs() <= tol.max(if x.abs() > 32_000 { 700 } else { 0 }),
                "µ {x} -> {u}"
            );
            assert!(
                (a - x).abs() <= tol.max(if x.abs() > 32_000 { 600 } else { 0 }),
                "A {x} -> {a}"
            );
            assert!(u.signum() * x.signum() >= 0);
        }
    }

    #[test]
    fn monotonic() {
        let mut last_u = i32::MIN;
        let mut last_a = i32::MIN;
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(x)) as i32;
            let a = alaw_decode(alaw_encode(x)) as i32;
            assert!(u >= last_u && a >= last_a, "{x}");
            last_u = u;
            last_a = a;
        }
    }
}
