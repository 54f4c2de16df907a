//! SRTP and SRTCP (RFC 3711) with the AES-CM / HMAC-SHA1 suites negotiated by SDES (RFC 4568):
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32`.
//!
//! Every transform works **in place** on the caller's buffer and allocates nothing: the relay
//! decrypts a datagram in the very receive buffer it arrived in and encrypts it there before
//! `sendmmsg` (the tag is appended in the buffer's spare room). That is why this is our own code
//! on RustCrypto primitives (`aes` with AES-NI, `hmac` + `sha1`) and not a whole SRTP crate: the
//! Rust SRTP crates (webrtc-rs' `srtp`/`rtc-srtp`) return a newly allocated buffer per packet,
//! and libsrtp is C. The transform is small and checked against RFC 3711 Appendix B's vectors
//! and against libsrtp (baresip) in the black-box tests.
//!
//! * One [`Context`] per direction of a leg: the master key the peer offered (`a=crypto`)
//!   unprotects what it sends; our own fresh key protects what we send to it.
//! * Session keys are derived once (key derivation rate 0, the SDES default).
//! * Per SSRC (a few at once, a fixed table): rollover counter, highest sequence number and a
//!   64-packet replay window (RFC 3711 §3.3.2). State changes only after a packet
//!   authenticated: a forged packet cannot move a window or evict a stream.
//! * SRTCP: its own keys, a 31-bit index with the E flag set (we always encrypt), its own
//!   replay window per SSRC. SRTCP tags are 80 bits for both suites (RFC 4568 §6.2).
//! * No MKI (SDES offers with an MKI are refused at negotiation).

mod cm;
mod replay;
#[cfg(test)]
mod tests;

use aes::cipher::KeyInit;
use aes::Aes128;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub use cm::keystream_xor;
use replay::Window;

type HmacSha1 = Hmac<Sha1>;

/// Master key length of the AES-128 suites (bytes).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length (bytes).
pub const MASTER_SALT_LEN: usize = 14;
/// The longest tag a packet grows by when protected (SRTCP: 4-byte index + 10-byte tag).
pub const MAX_OVERHEAD: usize = 14;
/// Streams (SSRCs) tracked per direction; a new one beyond this replaces the least recently
/// used (a phone's voice SSRC, a DTMF generator's, one after a re-INVITE).
const STREAMS: usize = 4;
const RTP_HEADER: usize = 12;
const RTCP_HEADER: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_TAG_LEN: usize = 10;

/// An SDES crypto suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit SRTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The name in `a=crypto` (RFC 4568 §6.2).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite of an `a=crypto` name (case-sensitive, as registered).
    pub fn from_name(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Suite::AesCm128HmacSha1_32),
            _ => None,
        }
    }

    /// SRTP authentication tag length (bytes).
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// Master key and salt (30 bytes, the inline key of `a=crypto`).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// Master key.
    pub key: [u8; MASTER_KEY_LEN],
    /// Master salt.
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// From the 30 concatenated bytes of an inline key.
    pub fn from_bytes(b: &[u8; MASTER_KEY_LEN + MASTER_SALT_LEN]) -> MasterKey {
        let mut key = [0u8; MASTER_KEY_LEN];
        let mut salt = [0u8; MASTER_SALT_LEN];
        key.copy_from_slice(&b[..MASTER_KEY_LEN]);
        salt.copy_from_slice(&b[MASTER_KEY_LEN..]);
        MasterKey { key, salt }
    }

    /// Key and salt concatenated (what `a=crypto` carries in base64).
    pub fn to_bytes(&self) -> [u8; MASTER_KEY_LEN + MASTER_SALT_LEN] {
        let mut b = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        b[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        b[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        b
    }
}

/// Why a packet was not protected or unprotected. Every reason is a drop for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Shorter than its header (and tag), or a header that runs past the end.
    #[error("packet too short")]
    Short,
    /// No room in the buffer for the tag.
    #[error("no room for the authentication tag")]
    NoRoom,
    /// The authentication tag did not match (corrupted, forged, or the wrong key).
    #[error("authentication failed")]
    Auth,
    /// Already received, or older than the replay window.
    #[error("replayed packet")]
    Replay,
}

/// Session keys of one of SRTP or SRTCP.
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_LEN],
    /// HMAC-SHA1 keyed with the session auth key; cloned per packet (no rekeying cost).
    mac: HmacSha1,
}

impl SessionKeys {
    fn derive(master: &MasterKey, labels: [u8; 3]) -> SessionKeys {
        let prf = Aes128::new(&master.key.into());
        let mut enc = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; MASTER_SALT_LEN];
        derive(&prf, &master.salt, labels[0], &mut enc);
        derive(&prf, &master.salt, labels[1], &mut auth);
        derive(&prf, &master.salt, labels[2], &mut salt);
        SessionKeys {
            cipher: Aes128::new(&enc.into()),
            salt,
            mac: <HmacSha1 as Mac>::new_from_slice(&auth).expect("HMAC takes any key length"),
        }
    }

    /// The AES-CM IV (RFC 3711 §4.1.1): salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16.
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        let idx = index.to_be_bytes(); // 48 significant bits in bytes 2..8
        for i in 0..6 {
            iv[8 + i] ^= idx[2 + i];
        }
        iv
    }
}

/// RFC 3711 §4.3.1 key derivation with the AES-CM PRF and key derivation rate 0:
/// x = label·2^48 ⊕ master salt, keystream from IV x·2^16.
pub(crate) fn derive(prf: &Aes128, master_salt: &[u8; MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    keystream_xor(prf, &iv, out);
}

/// Per-SSRC SRTP state (RFC 3711 §3.2.1).
#[derive(Clone, Copy)]
struct Stream {
    ssrc: u32,
    used: bool,
    roc: u32,
    /// Highest sequence number seen (s_l).
    s_l: u16,
    window: Window,
    /// Last use, to evict the least recently used stream.
    tick: u64,
}

impl Stream {
    const EMPTY: Stream = Stream {
        ssrc: 0,
        used: false,
        roc: 0,
        s_l: 0,
        window: Window::new(),
        tick: 0,
    };
}

/// Per-SSRC SRTCP state.
#[derive(Clone, Copy)]
struct RtcpStream {
    ssrc: u32,
    used: bool,
    window: Window,
    tick: u64,
}

impl RtcpStream {
    const EMPTY: RtcpStream = RtcpStream {
        ssrc: 0,
        used: false,
        window: Window::new(),
        tick: 0,
    };
}

/// The SRTP state of one direction of a leg: protect what we send with our key, or unprotect
/// what the peer sends with its key. Fixed size, no allocation after construction.
pub struct Context {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    streams: [Stream; STREAMS],
    rtcp_streams: [RtcpStream; STREAMS],
    /// Next SRTCP index we send (31 bits).
    srtcp_index: u32,
    tick: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// The RFC 3711 Appendix A index estimate: the ROC that puts `seq` closest to `s_l`.
fn estimate_roc(roc: u32, s_l: u16, seq: u16) -> u32 {
    const HALF: i32 = 1 << 15;
    let diff = seq as i32 - s_l as i32;
    if s_l < 1 << 15 {
        if diff > HALF {
            roc.wrapping_sub(1)
        } else {
            roc
        }
    } else if -diff > HALF {
        roc.wrapping_add(1)
    } else {
        roc
    }
}

/// Length of the RTP header (fixed part, CSRCs, extension) or `None` when it runs past `len`.
fn rtp_header_len(pkt: &[u8]) -> Option<usize> {
    if pkt.len() < RTP_HEADER || pkt[0] >> 6 != 2 {
        return None;
    }
    let cc = (pkt[0] & 0x0f) as usize;
    let mut h = RTP_HEADER + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(h + 2..h + 4)?;
        h += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    (h <= pkt.len()).then_some(h)
}

impl Context {
    /// A context for `suite` with `master` (labels per RFC 3711 §4.3.2).
    pub fn new(suite: Suite, master: &MasterKey) -> Context {
        Context {
            suite,
            rtp: SessionKeys::derive(master, [0, 1, 2]),
            rtcp: SessionKeys::derive(master, [3, 4, 5]),
            streams: [Stream::EMPTY; STREAMS],
            rtcp_streams: [RtcpStream::EMPTY; STREAMS],
            srtcp_index: 0,
            tick: 0,
        }
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    fn stream_slot(&self, ssrc: u32) -> Result<usize, usize> {
        if let Some(i) = self.streams.iter().position(|s| s.used && s.ssrc == ssrc) {
            return Ok(i);
        }
        let free = self
            .streams
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.used, s.tick))
            .map_or(0, |(i, _)| i);
        Err(free)
    }

    /// Encrypts and authenticates the RTP packet in `buf[..len]` in place, appending the tag;
    /// returns the new length. `buf` needs `len + tag` bytes.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        if len > buf.len() {
            return Err(SrtpError::Short);
        }
        let h = rtp_header_len(&buf[..len]).ok_or(SrtpError::Short)?;
        if buf.len() < len + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        self.tick += 1;
        let slot = match self.stream_slot(ssrc) {
            Ok(i) => i,
            Err(i) => {
                self.streams[i] = Stream {
                    ssrc,
                    used: true,
                    s_l: seq,
                    ..Stream::EMPTY
                };
                i
            }
        };
        let st = &mut self.streams[slot];
        let roc = estimate_roc(st.roc, st.s_l, seq);
        // The sender's s_l and ROC move forward only (a reordered packet keeps its old ROC).
        if roc > st.roc || (roc == st.roc && seq > st.s_l) {
            st.roc = roc;
            st.s_l = seq;
        }
        st.tick = self.tick;
        let index = (roc as u64) << 16 | seq as u64;
        let iv = self.rtp.iv(ssrc, index);
        keystream_xor(&self.rtp.cipher, &iv, &mut buf[h..len]);
        let mut mac = self.rtp.mac.clone();
        mac.update(&buf[..len]);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        buf[len..len + tag_len].copy_from_slice(&full[..tag_len]);
        Ok(len + tag_len)
    }

    /// Authenticates, checks for replay and decrypts the SRTP packet `pkt` in place; returns the
    /// RTP length (the tag removed). Nothing changes in the context unless the packet is good.
    pub fn unprotect_rtp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        if pkt.len() < RTP_HEADER + tag_len {
            return Err(SrtpError::Short);
        }
        let len = pkt.len() - tag_len;
        let h = rtp_header_len(&pkt[..len]).ok_or(SrtpError::Short)?;
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let (slot, known) = match self.stream_slot(ssrc) {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        };
        let (roc, s_l, window) = if known {
            let st = &self.streams[slot];
            (estimate_roc(st.roc, st.s_l, seq), st.s_l, st.window)
        } else {
            (0, seq, Window::new())
        };
        let index = (roc as u64) << 16 | seq as u64;
        let highest = if known {
            (self.streams[slot].roc as u64) << 16 | s_l as u64
        } else {
            index
        };
        if known && window.is_replay(index, highest) {
            return Err(SrtpError::Replay);
        }
        let mut mac = self.rtp.mac.clone();
        mac.update(&pkt[..len]);
        mac.update(&roc.to_be_bytes());
        mac.verify_truncated_left(&pkt[len..])
            .map_err(|_| SrtpError::Auth)?;
        // Authentic: commit the stream state, then decrypt.
        self.tick += 1;
        let st = &mut self.streams[slot];
        if !known {
            *st = Stream {
                ssrc,
                used: true,
                roc,
                s_l: seq,
                ..Stream::EMPTY
            };
        }
        st.window.accept(index, highest);
        if index > highest {
            st.roc = roc;
            st.s_l = seq;
        }
        st.tick = self.tick;
        let iv = self.rtp.iv(ssrc, index);
        keystream_xor(&self.rtp.cipher, &iv, &mut pkt[h..len]);
        Ok(len)
    }

    /// Encrypts and authenticates the (compound) RTCP packet in `buf[..len]` in place, appending
    /// E flag + SRTCP index and the tag; returns the new length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < RTCP_HEADER || len > buf.len() {
            return Err(SrtpError::Short);
        }
        if buf.len() < len + SRTCP_INDEX_LEN + SRTCP_TAG_LEN {
            return Err(SrtpError::NoRoom);
        }
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        // Incremented before use, as libsrtp does: the first SRTCP index is 1.
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        let index = self.srtcp_index;
        let iv = self.rtcp.iv(ssrc, index as u64);
        keystream_xor(&self.rtcp.cipher, &iv, &mut buf[RTCP_HEADER..len]);
        let e_index = (index | 0x8000_0000).to_be_bytes();
        buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
        let end = len + SRTCP_INDEX_LEN;
        let mut mac = self.rtcp.mac.clone();
        mac.update(&buf[..end]);
        let full = mac.finalize().into_bytes();
        buf[end..end + SRTCP_TAG_LEN].copy_from_slice(&full[..SRTCP_TAG_LEN]);
        Ok(end + SRTCP_TAG_LEN)
    }

    /// Authenticates, checks for replay and decrypts an SRTCP packet in place; returns the RTCP
    /// length.
    pub fn unprotect_rtcp(&mut self, pkt: &mut [u8]) -> Result<usize, SrtpError> {
        if pkt.len() < RTCP_HEADER + SRTCP_INDEX_LEN + SRTCP_TAG_LEN {
            return Err(SrtpError::Short);
        }
        let end = pkt.len() - SRTCP_TAG_LEN;
        let len = end - SRTCP_INDEX_LEN;
        let mut mac = self.rtcp.mac.clone();
        mac.update(&pkt[..end]);
        mac.verify_truncated_left(&pkt[end..])
            .map_err(|_| SrtpError::Auth)?;
        let e_index = u32::from_be_bytes([pkt[len], pkt[len + 1], pkt[len + 2], pkt[len + 3]]);
        let encrypted = e_index & 0x8000_0000 != 0;
        let index = (e_index & 0x7fff_ffff) as u64;
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        self.tick += 1;
        let slot = match self
            .rtcp_streams
            .iter()
            .position(|s| s.used && s.ssrc == ssrc)
        {
            Some(i) => i,
            None => {
                let i = self
                    .rtcp_streams
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| (s.used, s.tick))
                    .map_or(0, |(i, _)| i);
                self.rtcp_streams[i] = RtcpStream {
                    ssrc,
                    used: true,
                    window: Window::new(),
                    tick: 0,
                };
                // A fresh window takes the first index as its highest.
                self.rtcp_streams[i].window.accept(index, index);
                self.rtcp_streams[i].tick = self.tick;
                if encrypted {
                    let iv = self.rtcp.iv(ssrc, index);
                    keystream_xor(&self.rtcp.cipher, &iv, &mut pkt[RTCP_HEADER..len]);
                }
                return Ok(len);
            }
        };
        let st = &mut self.rtcp_streams[slot];
        let highest = st.window.highest();
        if st.window.is_replay(index, highest) {
            return Err(SrtpError::Replay);
        }
        st.window.accept(index, highest);
        st.tick = self.tick;
        if encrypted {
            let iv = self.rtcp.iv(ssrc, index);
            keystream_xor(&self.rtcp.cipher, &iv, &mut pkt[RTCP_HEADER..len]);
        }
        Ok(len)
    }
}
