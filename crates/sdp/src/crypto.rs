//! SDES (RFC 4568): the `a=crypto` attribute that carries SRTP master keys in the SDP, and the
//! choice the call layer makes per stream when rewriting ([`MediaSecurity`]).
//!
//! Keys in SDP are only as secret as the signalling: the call layer must use SDES only over
//! TLS. Nothing here logs or prints a key (`Debug` shows `***`).

use crate::SdpError;

/// One `a=crypto` line: `a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len] [params]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The tag the answer echoes (1 to 999999999).
    pub tag: u32,
    /// Crypto suite name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub suite: String,
    /// The decoded inline key: master key followed by master salt.
    pub key: Vec<u8>,
    /// The key lifetime, as written (`2^31`, `1048576`), if any.
    pub lifetime: Option<String>,
    /// Whether the key carries an MKI (`|1:4`); podpbx does not use MKIs.
    pub mki: bool,
    /// Number of `inline:` keys (more than one means several master keys, which need MKIs).
    pub keys: usize,
    /// Session parameters after the key parameters (`UNENCRYPTED_SRTP`, `KDR=…`, …), as written.
    pub session_params: Vec<String>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key", &"***")
            .field("lifetime", &self.lifetime)
            .field("mki", &self.mki)
            .field("session_params", &self.session_params)
            .finish()
    }
}

impl Crypto {
    /// Parses the value of an `a=crypto` attribute (after `crypto:`).
    pub fn parse(value: &str, line: usize) -> Result<Crypto, SdpError> {
        let bad = |reason| SdpError::Syntax {
            line: line + 1,
            reason,
        };
        let mut f = value.split_ascii_whitespace();
        let tag = f
            .next()
            .filter(|t| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or(bad("bad a=crypto tag"))?;
        let suite = f
            .next()
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .ok_or(bad("bad a=crypto suite"))?
            .to_string();
        let params = f.next().ok_or(bad("a=crypto without key parameters"))?;
        let mut key = None;
        let mut lifetime = None;
        let mut mki = false;
        let mut keys = 0;
        for kp in params.split(';') {
            let inline = kp
                .strip_prefix("inline:")
                .ok_or(bad("a=crypto key method is not inline"))?;
            keys += 1;
            let mut parts = inline.split('|');
            let k = decode_base64(parts.next().unwrap_or(""))
                .ok_or(bad("a=crypto key is not base64"))?;
            for p in parts {
                if p.contains(':') {
                    mki = true;
                } else if lifetime.is_none() {
                    lifetime = Some(p.to_string());
                }
            }
            if key.is_none() {
                key = Some(k);
            }
        }
        let key = key.ok_or(bad("a=crypto without a key"))?;
        Ok(Crypto {
            tag,
            suite,
            key,
            lifetime,
            mki,
            keys,
            session_params: f.map(str::to_string).collect(),
        })
    }

    /// A line for our own key: `a=crypto:<tag> <suite> inline:<base64>` (no line ending).
    pub fn line(tag: u32, suite: &str, key: &[u8]) -> String {
        format!("a=crypto:{tag} {suite} inline:{}", encode_base64(key))
    }
}

/// What the rewrite does with a stream's security (its profile and `a=crypto` lines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MediaSecurity {
    /// Leave the profile and any `a=crypto` line as they are.
    #[default]
    Keep,
    /// Plain RTP towards this peer: `RTP/SAVP` becomes `RTP/AVP` (`SAVPF` → `AVPF`), every
    /// `a=crypto` line is dropped.
    Plain,
    /// SRTP towards this peer with our key: the profile becomes `RTP/SAVP` (`AVPF` →
    /// `SAVPF`), the peer's `a=crypto` lines are dropped and this one line (without line ending,
    /// see [`Crypto::line`]) is added.
    Srtp(String),
}

/// The profile with or without the S of SRTP (`RTP/AVP` ↔ `RTP/SAVP`, `RTP/AVPF` ↔
/// `RTP/SAVPF`); other profiles are returned unchanged.
pub fn secure_profile(proto: &str, secure: bool) -> String {
    let up = proto.to_ascii_uppercase();
    match (up.as_str(), secure) {
        ("RTP/AVP", true) => "RTP/SAVP".into(),
        ("RTP/AVPF", true) => "RTP/SAVPF".into(),
        ("RTP/SAVP", false) => "RTP/AVP".into(),
        ("RTP/SAVPF", false) => "RTP/AVPF".into(),
        _ => proto.to_string(),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as SDES uses.
pub fn encode_base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; padding optional (some phones omit it). `None` on any other byte.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of less than a byte.
    (bits < 6 && acc == 0).then_some(out)
}
