//! Media: relay sessions per call (bundles by address-family pair, one session per m-line),
//! what each peer's SDP tells the relay, our SDP towards each leg (anchors of its side, our own
//! origin), and the media timeout.

use super::call::{Bundle, Call, EndReason, HangupBy};
use super::leg::{BundleId, LegIdx, LegMedia, LegSrtp, Party};
use super::B2bua;
use crate::{Family, MediaId, MediaLeg, SrtpLegKeys};
use bytes::Bytes;
use podpbx_config::Srtp;
use podpbx_sdp::Crypto;
use podpbx_sdp::{
    Anchor, MediaPlan, MediaSecurity, OriginPlan, RemoteMedia, RewritePlan, Sdp, SdpError,
    ZeroAddressHold,
};
use podpbx_sip::Transport;
use std::net::IpAddr;
use std::time::Instant;
use tracing::warn;

/// Why SDP could not be relayed to the other leg (the request gets 488, a leg fails, or an
/// answer goes without SDP; always logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MediaError {
    #[error("SDP not usable: {0}")]
    Sdp(#[from] SdpError),
    #[error("no media bundle for this leg")]
    NoBundle,
    #[error("no relay session: {0}")]
    Relay(String),
    #[error("SDES keys (a=crypto) over clear-text signalling")]
    ClearTextKeys,
    /// A leg's `srtp` policy cannot be met (or the relay cannot do SRTP).
    #[error("SRTP: {0}")]
    Srtp(String),
}

/// Most SDP m-lines we anchor per call.
const MAX_STREAMS: usize = 8;

/// Whether `sdp` carries SDES keys (`a=crypto`, RFC 4568) on an active stream.
pub(super) fn has_sdes_keys(sdp: &Sdp) -> bool {
    sdp.media()
        .iter()
        .any(|m| !m.rejected() && !m.crypto.is_empty())
}

/// Replaces the `o=` line with our own origin for this leg.
fn replace_origin(sdp: &str, id: u64, ver: u64, addr: IpAddr) -> String {
    let at = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("o=") {
            let eol = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            out.push_str(&format!("o=podpbx {id} {ver} IN {at} {addr}{eol}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The tag of our `a=crypto` in offers (answers echo the offer's tag).
pub(super) const OUR_TAG: u32 = 1;

impl B2bua {
    /// The SRTP policy of a leg's party (`srtp` of its user or trunk).
    pub(super) fn srtp_policy(&self, party: &Party) -> Srtp {
        match party {
            Party::User(n) => self.cfg.user(n).map_or(Srtp::Off, |u| u.srtp),
            Party::Trunk(n) => self.cfg.trunk(n).map_or(Srtp::Off, |t| t.srtp),
        }
    }

    /// The `a=crypto` of `sdp` (from a leg with `policy`, signalled over `transport`) that
    /// podpbx uses to unprotect what that peer sends: the first line with a suite the relay
    /// terminates, a 30-byte key, no MKI and no session parameters (`tag`: the one of our
    /// offer, when `sdp` answers it). `Err` (488) when the leg's policy cannot be met.
    pub(super) fn accept_sdes(
        &self,
        policy: Srtp,
        transport: Transport,
        sdp: &Sdp,
        tag: Option<u32>,
    ) -> Result<Option<(u32, String, Vec<u8>)>, String> {
        let active: Vec<_> = sdp.media().iter().filter(|m| !m.rejected()).collect();
        let secure = active.iter().any(|m| m.secure());
        if policy == Srtp::Off || transport != Transport::Tls {
            if policy == Srtp::Required {
                return Err("srtp = required but the leg is not signalled over TLS".into());
            }
            if secure {
                return Err("the peer wants SRTP (RTP/SAVP) but the leg has srtp = off".into());
            }
            return Ok(None);
        }
        if active.len() > 1 && active.iter().any(|m| !m.crypto.is_empty()) {
            return Err("SRTP on more than one stream is not supported".into());
        }
        let suites = self.media.srtp_suites();
        let usable = active.first().and_then(|m| {
            m.crypto.iter().find(|c| {
                suites.contains(&c.suite.as_str())
                    && c.key.len() == 30
                    && !c.mki
                    && c.keys == 1
                    && c.session_params.is_empty()
                    && tag.is_none_or(|t| c.tag == t)
            })
        });
        match usable {
            Some(c) => Ok(Some((c.tag, c.suite.clone(), c.key.clone()))),
            None if policy == Srtp::Required || secure => Err(format!(
                "no usable a=crypto (supported: {}) for srtp = {}",
                suites.join(", "),
                if policy == Srtp::Required {
                    "required"
                } else {
                    "optional"
                }
            )),
            None => Ok(None),
        }
    }

    /// Our `a=crypto` line towards a leg (`tag`, `suite`), with the leg's key (made on first
    /// use, kept for the dialog).
    pub(super) fn sdes_line(
        &mut self,
        srtp: &mut LegSrtp,
        tag: u32,
        suite: &str,
    ) -> Result<MediaSecurity, String> {
        let key = match &srtp.local {
            Some((s, k)) if s == suite => k.clone(),
            _ => self
                .media
                .srtp_key()
                .filter(|k| k.len() == 30)
                .ok_or("SRTP is not available in the relay")?,
        };
        srtp.local = Some((suite.to_string(), key.clone()));
        Ok(MediaSecurity::Srtp(Crypto::line(tag, suite, &key)))
    }

    /// What our SDP towards a leg carries: SRTP when the leg requires it (our offer) or when it
    /// offered usable keys we accepted (our answer); plain RTP otherwise.
    pub(super) fn security_towards(
        &mut self,
        policy: Srtp,
        transport: Transport,
        srtp: &mut LegSrtp,
        offer: bool,
    ) -> Result<MediaSecurity, String> {
        if offer {
            if policy != Srtp::Required {
                srtp.local = None;
                return Ok(MediaSecurity::Plain);
            }
            if transport != Transport::Tls {
                return Err("srtp = required but the leg is not signalled over TLS".into());
            }
            let suite = self
                .media
                .srtp_suites()
                .first()
                .copied()
                .ok_or("SRTP is not available in the relay")?;
            return self.sdes_line(srtp, OUR_TAG, suite);
        }
        match srtp.remote.clone() {
            Some((tag, suite, _)) => self.sdes_line(srtp, tag, &suite),
            None => {
                srtp.local = None;
                Ok(MediaSecurity::Plain)
            }
        }
    }

    /// Tells the relay the SRTP keys of leg `li` on every stream of `bundle` (plain unless
    /// both its keys are known).
    pub(super) fn apply_srtp(&mut self, call: &mut Call, bundle: Option<BundleId>, li: LegIdx) {
        let m = &mut call.legs[li].media;
        let now = match (&m.srtp.remote, &m.srtp.local) {
            (Some((_, _, r)), Some((_, l))) => Some((bundle, r.clone(), l.clone())),
            _ => None,
        };
        if now == m.srtp.applied {
            return;
        }
        m.srtp.applied = now;
        let m = &call.legs[li].media;
        let keys = match (&m.srtp.remote, &m.srtp.local) {
            (Some((_, suite, remote)), Some((_, local))) => Some(SrtpLegKeys {
                suite: suite.clone(),
                remote: remote.clone(),
                local: local.clone(),
            }),
            _ => None,
        };
        let Some(b) = bundle.and_then(|b| call.bundles.get(b.0)) else {
            return;
        };
        for id in b.ids.iter().flatten() {
            self.media.set_srtp(*id, m.side, keys.clone());
        }
    }

    /// The relay saw no media on session `media` for the media timeout: a bridged call is
    /// hung up (BYE both ways, CDR reason `media_timeout`).
    pub fn media_timeout(&mut self, now: Instant, media: MediaId) {
        let Some(key) = self.by_media.get(&media).copied() else {
            return;
        };
        self.with_call(key, now, |this, call| {
            if call.is_bridged() {
                warn!(call = key, "media timeout: hanging up");
                this.end_call(call, now, HangupBy::System, EndReason::MediaTimeout, None);
            }
        });
    }

    /// The relay saw the RTP from leg `leg`'s latched source of session `media` change its SSRC
    /// many times a second: the peer sends several streams from one address and port. Logged
    /// (once per leg: the relay reports it once); the call goes on, as nothing tells which
    /// packet belongs to which call.
    pub fn media_mixed_streams(
        &self,
        media: MediaId,
        leg: MediaLeg,
        source: Option<std::net::SocketAddr>,
        ssrcs: [u32; 2],
    ) {
        let call = self.by_media.get(&media).copied();
        let source = source.map_or_else(|| "?".to_string(), |s| s.to_string());
        warn!(
            call,
            ?leg,
            %source,
            ssrcs = format_args!("{:08x}/{:08x}", ssrcs[0], ssrcs[1]),
            "one RTP source sends several streams (several calls from one socket?): with \
             media.port_layout = \"shared\" their audio reaches one call; \"per-call\" keeps \
             them apart"
        );
    }

    /// A fresh SDP session id for our o= line towards a leg (RFC 4566 §5.2).
    pub(super) fn origin_id(&mut self) -> u64 {
        // 48 bits: a numeric string every parser takes.
        self.ids.next_u64() >> 16
    }

    /// The bundle for caller family `a` and callee family `b` (created when new).
    pub(super) fn bundle_for(&mut self, call: &mut Call, a: Family, b: Family) -> BundleId {
        if let Some(i) = call.bundles.iter().position(|x| x.a == a && x.b == b) {
            return BundleId(i);
        }
        call.bundles.push(Bundle {
            a,
            b,
            ids: Vec::new(),
        });
        BundleId(call.bundles.len() - 1)
    }

    /// Allocates relay sessions for every active m-line of `sdp` in `bundle`.
    pub(super) fn ensure_sessions(
        &mut self,
        call: &mut Call,
        bundle: Option<BundleId>,
        sdp: &Sdp,
    ) -> Result<(), MediaError> {
        let key = call.key;
        let Some(bundle) = bundle.and_then(|b| call.bundles.get_mut(b.0)) else {
            return Err(MediaError::NoBundle);
        };
        for m in sdp.media().iter().take(MAX_STREAMS) {
            if bundle.ids.len() <= m.index {
                bundle.ids.resize(m.index + 1, None);
            }
            if m.rejected() || bundle.ids[m.index].is_some() {
                continue;
            }
            let id = self
                .media
                .allocate(bundle.a, bundle.b)
                .map_err(MediaError::Relay)?;
            bundle.ids[m.index] = Some(id);
            self.by_media.insert(id, key);
        }
        Ok(())
    }

    /// The peer of leg `li` sent `sdp` (an offer when `offer`): tell the relay.
    pub(super) fn learn_remote(
        &mut self,
        call: &mut Call,
        li: LegIdx,
        bundle: Option<BundleId>,
        sdp: &Sdp,
        raw: &Bytes,
        offer: bool,
    ) {
        let m = &mut call.legs[li].media;
        let side = m.side;
        m.last_sdp = Some(raw.clone());
        m.te = sdp
            .media()
            .iter()
            .any(|m| m.telephone_event.is_some() && !m.rejected());
        if offer {
            call.held = sdp.on_hold();
        }
        let held = call.held;
        // The relay accepts this leg's media only from the SDP's IPs and the signalling peer's.
        let signalling = call.legs[li].dialog.peer.addr.ip();
        let Some(bundle) = bundle.and_then(|b| call.bundles.get(b.0)) else {
            return;
        };
        for m in sdp.media() {
            let Some(Some(id)) = bundle.ids.get(m.index).copied() else {
                continue;
            };
            if m.rejected() {
                continue;
            }
            if let Some(r) = RemoteMedia::from_sdp(m, false) {
                self.media
                    .set_remote(id, side, r.with_signalling(signalling));
            }
            if offer {
                self.media.set_hold(id, MediaLeg::A, held);
                self.media.set_hold(id, MediaLeg::B, held);
            }
        }
    }

    /// `sdp` rewritten for a leg with media state `media` and signalling address `local`:
    /// the anchors of its side of `bundle` (m-lines without a session rejected), our origin.
    /// `sec`: the leg's SRTP (our `a=crypto`) or plain RTP (every `a=crypto` removed): the
    /// peers' keys never cross to the other leg.
    pub(super) fn rewrite_sdp(
        &self,
        bundle: Option<&Bundle>,
        media: &mut LegMedia,
        local: IpAddr,
        sec: &MediaSecurity,
        sdp: &Sdp,
    ) -> Result<String, MediaError> {
        let side = media.side;
        let ids: &[Option<MediaId>] = bundle.map(|b| b.ids.as_slice()).unwrap_or(&[]);
        let mut first_addr = None;
        let plan: Vec<MediaPlan> = sdp
            .media()
            .iter()
            .map(|m| {
                match ids
                    .get(m.index)
                    .copied()
                    .flatten()
                    .and_then(|id| self.media.local(id, side))
                {
                    Some(rtp) => {
                        first_addr.get_or_insert(rtp.ip());
                        MediaPlan::Anchor(Anchor {
                            addr: rtp.ip(),
                            rtp_port: rtp.port(),
                            rtcp_port: rtp.port().wrapping_add(1),
                        })
                    }
                    None => MediaPlan::Reject,
                }
            })
            .collect();
        let security = vec![sec.clone(); sdp.media().len()];
        let text = sdp.rewrite_secure(
            &RewritePlan {
                media: plan,
                origin: OriginPlan::Keep,
                zero_address_hold: ZeroAddressHold::default(),
            },
            &security,
        )?;
        if media.last_sent.as_deref() != Some(text.as_str()) {
            if media.last_sent.is_some() {
                media.origin_ver += 1;
            }
            media.last_sent = Some(text.clone());
        }
        let addr = first_addr.unwrap_or(local);
        Ok(replace_origin(
            &text,
            media.origin_id,
            media.origin_ver,
            addr,
        ))
    }

    /// The SDP we last sent leg `li`, as it was (same origin version): what a re-INVITE that
    /// changes nothing carries (a session refresh, RFC 4028).
    pub(super) fn current_sdp(&self, call: &Call, li: LegIdx) -> Option<String> {
        let leg = &call.legs[li];
        let m = &leg.media;
        let text = m.last_sent.as_deref()?;
        // The relay's anchors are on the leg's pinned address, as the first SDP said.
        Some(replace_origin(
            text,
            m.origin_id,
            m.origin_ver,
            leg.dialog.local.ip(),
        ))
    }

    /// `raw` (SDP from leg `from`) rewritten for leg `to`, with the relay told about `from`'s
    /// media (and sessions allocated for an offer's new m-lines).
    pub(super) fn relay_sdp(
        &mut self,
        call: &mut Call,
        from: LegIdx,
        to: LegIdx,
        raw: &Bytes,
        offer: bool,
    ) -> Result<String, MediaError> {
        let sdp = Sdp::parse(raw)?;
        // SDES keys in clear-text SIP are already compromised: refuse them (488 or a failed
        // leg), never use or forward them.
        if call.legs[from].dialog.peer.transport != Transport::Tls && has_sdes_keys(&sdp) {
            warn!(
                call = call.key,
                "SDES keys (a=crypto) received over clear-text signalling: refused"
            );
            return Err(MediaError::ClearTextKeys);
        }
        let bundle = call.legs[from].media.bundle.or(call.legs[to].media.bundle);
        // SDES: the keys `from` sends with (answers must take our offer's tag), then what our
        // SDP towards `to` carries.
        let policy = self.srtp_policy(&call.legs[from].party);
        let tag = (!offer && call.legs[from].media.srtp.local.is_some()).then_some(OUR_TAG);
        let accepted = self
            .accept_sdes(policy, call.legs[from].dialog.peer.transport, &sdp, tag)
            .inspect_err(|e| warn!(call = call.key, leg = from, reason = %e, "SRTP: 488"))
            .map_err(MediaError::Srtp)?;
        if offer {
            self.ensure_sessions(call, bundle, &sdp)?;
        }
        call.legs[from].media.srtp.remote = accepted;
        self.learn_remote(call, from, bundle, &sdp, raw, offer);
        let local = call.legs[to].dialog.local.ip();
        let (policy, transport) = (
            self.srtp_policy(&call.legs[to].party),
            call.legs[to].dialog.peer.transport,
        );
        let mut srtp = std::mem::take(&mut call.legs[to].media.srtp);
        let sec = self.security_towards(policy, transport, &mut srtp, offer);
        call.legs[to].media.srtp = srtp;
        let sec = sec
            .inspect_err(|e| warn!(call = call.key, leg = to, reason = %e, "SRTP: 488"))
            .map_err(MediaError::Srtp)?;
        let b = bundle.and_then(|b| call.bundles.get(b.0));
        let text = self.rewrite_sdp(b, &mut call.legs[to].media, local, &sec, &sdp)?;
        self.apply_srtp(call, bundle, from);
        self.apply_srtp(call, bundle, to);
        Ok(text)
    }

    /// Releases every relay session of bundle `bi`.
    pub(super) fn release_bundle(&mut self, call: &mut Call, bi: usize) {
        if let Some(b) = call.bundles.get_mut(bi) {
            for id in b.ids.drain(..).flatten() {
                self.media.release(id);
                self.by_media.remove(&id);
            }
        }
    }
}

impl B2bua {
    /// The address family the caller's relay side uses: that of its SDP offer's media
    /// (`c=`), not of its signalling, when podpbx has a pinned address of that family. A
    /// provider may signal over IPv6 and send media over IPv4 (or the reverse): the relay must
    /// meet its media where it is.
    pub(super) fn caller_media_family(&self, call: &Call) -> Family {
        let signalling = call.legs[call.a].dialog.family();
        let Some(offer) = call.offer.as_deref() else {
            return signalling;
        };
        let sdp_family = podpbx_sdp::Sdp::parse(offer).ok().and_then(|s| {
            s.media()
                .iter()
                .find(|m| !m.rejected())
                .and_then(|m| m.connection.as_ref())
                .map(|c| match c.addr_type {
                    podpbx_sdp::AddrType::Ip4 => Family::V4,
                    podpbx_sdp::AddrType::Ip6 => Family::V6,
                })
        });
        match sdp_family {
            Some(Family::V4) if self.cfg.sip.ipv4.is_some() => Family::V4,
            Some(Family::V6) if self.cfg.sip.ipv6.is_some() => Family::V6,
            _ => signalling,
        }
    }
}
