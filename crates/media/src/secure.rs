//! SRTP termination per leg, as a separate path of the relay worker.
//!
//! The forwarding path looks at a session's SRTP state once per datagram: sessions without SRTP
//! (`None`) skip the transform; a session with SRTP on either leg runs [`SessionSrtp`], which
//! unprotects what an SRTP leg's peer sends (authentication and replay check *before* the
//! packet may latch or be counted) and protects what is sent to an SRTP leg, in the worker's
//! receive buffer, with keys of that leg only (fresh keys per leg: the two peers never share a
//! key, and an SRTP leg can meet a plain one).

use crate::srtp::{Context, MasterKey, Suite, MAX_OVERHEAD};

/// The keys of one leg: the peer's (from its `a=crypto`) to unprotect what it sends, ours (in
/// our `a=crypto` towards it) to protect what we send to it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SrtpKeys {
    /// The negotiated suite (both directions).
    pub suite: Suite,
    /// The peer's master key.
    pub remote: MasterKey,
    /// Our master key towards this peer.
    pub local: MasterKey,
}

/// Contexts of one SRTP leg.
pub(crate) struct LegSrtp {
    rx: Context,
    tx: Context,
}

impl LegSrtp {
    pub(crate) fn new(k: &SrtpKeys) -> LegSrtp {
        LegSrtp {
            rx: Context::new(k.suite, &k.remote),
            tx: Context::new(k.suite, &k.local),
        }
    }
}

/// The SRTP state of a session: per leg, `None` for a plain leg.
#[derive(Default)]
pub(crate) struct SessionSrtp {
    pub(crate) legs: [Option<Box<LegSrtp>>; 2],
}

/// What the forwarding loop does to a datagram on its way in and out.
pub(crate) trait Transform {
    /// A datagram from `leg`'s peer, in place: its new length, or `Err` to drop it.
    fn inbound(&mut self, leg: usize, pkt: &mut [u8]) -> Result<usize, ()>;
    /// A packet of `len` bytes in `buf` about to be sent to `leg`'s peer: its new length, or
    /// `Err` to drop it.
    fn outbound(&mut self, leg: usize, buf: &mut [u8], len: usize, rtcp: bool)
        -> Result<usize, ()>;
}

/// RTP/RTCP version 2 and an RTCP packet type (RFC 5761 §4), from the clear header bytes.
#[inline]
fn is_rtcp(pkt: &[u8]) -> Option<bool> {
    match pkt {
        [b0, b1, ..] if (128..=191).contains(b0) => Some((192..=223).contains(b1)),
        _ => None,
    }
}

impl Transform for SessionSrtp {
    #[inline]
    fn inbound(&mut self, leg: usize, pkt: &mut [u8]) -> Result<usize, ()> {
        let Some(l) = self.legs[leg].as_deref_mut() else {
            return Ok(pkt.len());
        };
        match is_rtcp(pkt) {
            Some(true) => l.rx.unprotect_rtcp(pkt).map_err(|_| ()),
            Some(false) => l.rx.unprotect_rtp(pkt).map_err(|_| ()),
            // STUN and the like: the classifier drops them as it always does.
            None => Ok(pkt.len()),
        }
    }

    #[inline]
    fn outbound(
        &mut self,
        leg: usize,
        buf: &mut [u8],
        len: usize,
        rtcp: bool,
    ) -> Result<usize, ()> {
        let Some(l) = self.legs[leg].as_deref_mut() else {
            return Ok(len);
        };
        if rtcp {
            l.tx.protect_rtcp(buf, len).map_err(|_| ())
        } else {
            l.tx.protect_rtp(buf, len).map_err(|_| ())
        }
    }
}

/// Protects a generated packet (RFC 4733 DTMF) towards an SRTP leg, into `out`.
pub(crate) fn protect_generated(
    s: &mut SessionSrtp,
    leg: usize,
    pkt: &[u8],
    out: &mut [u8; 2048],
) -> Option<usize> {
    if pkt.len() + MAX_OVERHEAD > out.len() {
        return None;
    }
    out[..pkt.len()].copy_from_slice(pkt);
    s.outbound(leg, out, pkt.len(), false).ok()
}

/// A fresh random master key (getrandom(2)).
pub fn generate_key() -> std::io::Result<MasterKey> {
    let mut b = [0u8; 30];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most `b.len() - got` bytes into our own buffer.
        let n = unsafe {
            libc::getrandom(b[got..].as_mut_ptr() as *mut libc::c_void, b.len() - got, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(MasterKey::from_bytes(&b))
}
