//! The media adapter: the RTP relay (`podpbx-media`, Linux) behind the call layer's
//! [`MediaPort`], started on the pinned addresses with its events fed to the core loop.

use podpbx_b2bua::{LegStats, MediaId, MediaLeg, MediaPort, RemoteMedia};
use podpbx_config::Config;
use podpbx_media::{Family, FamilyConfig, PortLayout, Relay, RelayConfig, Session};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

/// Relay events queued for the core loop.
const EVENT_QUEUE: usize = 1024;

/// Starts the relay from `[media]` and a thread that forwards its events to the returned
/// channel. A relay that cannot start is logged and calls get 503 (`None`).
pub fn start(cfg: &Config) -> Result<(Option<Relay>, mpsc::Receiver<podpbx_media::Event>), String> {
    let (tx, rx) = mpsc::channel::<podpbx_media::Event>(EVENT_QUEUE);
    match Relay::start(relay_config(cfg)) {
        Ok((relay, events)) => {
            std::thread::Builder::new()
                .name("podpbx-media-events".into())
                .spawn(move || {
                    while let Some(ev) = events.recv() {
                        if tx.blocking_send(ev).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start the media event thread: {e}"))?;
            Ok((Some(relay), rx))
        }
        Err(e) => {
            error!(error = %e, "cannot start the RTP relay: calls will get 503");
            Ok((None, rx))
        }
    }
}

/// The call layer's [`MediaPort`] over `relay` (none: every call gets 503).
pub fn port(relay: Option<Relay>) -> Box<dyn MediaPort + Send> {
    match relay {
        Some(r) => Box::new(RelayMedia::new(r)),
        None => Box::new(NoMedia),
    }
}

/// The relay as a [`MediaPort`]: sessions by id.
pub struct RelayMedia {
    relay: Relay,
    sessions: HashMap<MediaId, Session>,
}

impl RelayMedia {
    pub fn new(relay: Relay) -> RelayMedia {
        RelayMedia {
            relay,
            sessions: HashMap::new(),
        }
    }
}

impl MediaPort for RelayMedia {
    fn allocate(&mut self, a: Family, b: Family) -> Result<MediaId, String> {
        let s = self.relay.allocate(a, b).map_err(|e| e.to_string())?;
        let id = s.id().0;
        self.sessions.insert(id, s);
        Ok(id)
    }
    fn local(&self, id: MediaId, leg: MediaLeg) -> Option<SocketAddr> {
        self.sessions.get(&id).map(|s| s.local(leg).rtp)
    }
    fn set_remote(&mut self, id: MediaId, leg: MediaLeg, remote: RemoteMedia) {
        if let Some(s) = self.sessions.get(&id) {
            if let Err(e) = s.set_remote(leg, remote) {
                debug!(error = %e, "relay set_remote");
            }
        }
    }
    fn set_hold(&mut self, id: MediaId, leg: MediaLeg, hold: bool) {
        if let Some(s) = self.sessions.get(&id) {
            let _ = s.set_hold(leg, hold);
        }
    }
    fn inject_dtmf(&mut self, id: MediaId, leg: MediaLeg, digit: char, duration: Duration) -> bool {
        self.sessions
            .get(&id)
            .is_some_and(|s| s.inject_dtmf(leg, digit, duration).is_ok())
    }
    fn stats(&self, id: MediaId, leg: MediaLeg) -> LegStats {
        let Some(s) = self.sessions.get(&id) else {
            return LegStats::default();
        };
        let st = s.stats(leg);
        LegStats {
            rtp_packets: st.rtp_packets,
            rtp_bytes: st.rtp_bytes,
            rtcp_packets: st.rtcp_packets,
            forwarded_packets: st.forwarded_packets,
            lost_packets: st.lost_packets,
            jitter: st.jitter,
            ssrc_flaps: st.ssrc_flaps,
        }
    }
    fn release(&mut self, id: MediaId) {
        if let Some(s) = self.sessions.remove(&id) {
            s.release();
        }
    }
    fn srtp_suites(&self) -> &[&'static str] {
        &["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
    }
    fn load(&self) -> f64 {
        self.relay.load()
    }
    fn shrink(&mut self) {
        podpbx_sip::capacity::shrink_map(&mut self.sessions);
    }
    fn srtp_key(&mut self) -> Option<Vec<u8>> {
        match podpbx_media::generate_key() {
            Ok(k) => Some(k.to_bytes().to_vec()),
            Err(e) => {
                warn!(error = %e, "no randomness for an SRTP key");
                None
            }
        }
    }
    fn set_srtp(&mut self, id: MediaId, leg: MediaLeg, keys: Option<podpbx_b2bua::SrtpLegKeys>) {
        use podpbx_media::srtp::{MasterKey, Suite};
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let keys = keys.and_then(|k| {
            let suite = Suite::from_name(&k.suite)?;
            let remote: [u8; 30] = k.remote.as_slice().try_into().ok()?;
            let local: [u8; 30] = k.local.as_slice().try_into().ok()?;
            Some(podpbx_media::SrtpKeys {
                suite,
                remote: MasterKey::from_bytes(&remote),
                local: MasterKey::from_bytes(&local),
            })
        });
        if let Err(e) = s.set_srtp(leg, keys.as_ref()) {
            debug!(error = %e, "relay set_srtp");
        }
    }
}

/// A MediaPort for when no relay could be started: every call gets 503 from the b2bua.
struct NoMedia;

impl MediaPort for NoMedia {
    fn allocate(&mut self, _a: Family, _b: Family) -> Result<MediaId, String> {
        Err("no RTP relay".into())
    }
    fn local(&self, _id: MediaId, _leg: MediaLeg) -> Option<SocketAddr> {
        None
    }
    fn set_remote(&mut self, _id: MediaId, _leg: MediaLeg, _r: RemoteMedia) {}
    fn set_hold(&mut self, _id: MediaId, _leg: MediaLeg, _h: bool) {}
    fn inject_dtmf(&mut self, _id: MediaId, _leg: MediaLeg, _d: char, _t: Duration) -> bool {
        false
    }
    fn stats(&self, _id: MediaId, _leg: MediaLeg) -> LegStats {
        LegStats::default()
    }
    fn release(&mut self, _id: MediaId) {}
}

/// The relay configuration from `[media]` on the pinned addresses.
pub fn relay_config(cfg: &Config) -> RelayConfig {
    let ports = cfg.media.port_min..=cfg.media.port_max;
    RelayConfig {
        ipv4: cfg.sip.ipv4.map(|a| FamilyConfig {
            addr: IpAddr::V4(a),
            ports: ports.clone(),
        }),
        ipv6: cfg.sip.ipv6.map(|a| FamilyConfig {
            addr: IpAddr::V6(a),
            ports,
        }),
        media_timeout: cfg.media.timeout.unwrap_or(Duration::ZERO),
        hold_timeout: cfg.media.hold_timeout.unwrap_or(Duration::ZERO),
        tos: cfg.media.dscp << 2,
        layout: match cfg.media.port_layout {
            podpbx_config::MediaPortLayout::Shared => PortLayout::Shared { pairs: 2 },
            podpbx_config::MediaPortLayout::PerCall => PortLayout::PerCall,
        },
        coalesce: cfg.media.moderation,
        // Nobody listens to Latched events: not sending them saves the event path a wake-up per
        // latch (four per call).
        report_latching: false,
        ..RelayConfig::default()
    }
}
