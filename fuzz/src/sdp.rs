//! SDP parse + rewrite (`podpbx_sdp`): any bytes through `Sdp::parse`, every accessor,
//! `RemoteMedia::from_sdp`, and `rewrite` with IPv4 and IPv6 anchors, stream rejection, origin
//! bumps and both zero-address hold modes; `set_origin_version`.
//!
//! Oracles (besides "never panics"): a rewritten SDP parses again with the same number of
//! m-lines; every stream anchored at the relay then names the relay's address and port; a
//! rejected stream has port 0; ICE candidates are gone; a plan of the wrong length is refused.
//!
//! Also compiled into `crates/sdp/tests/corpus_replay.rs` (`#[path]`): `podpbx_sdp` only.

use podpbx_sdp::{
    set_origin_version, Anchor, MediaPlan, OriginPlan, RemoteMedia, RewritePlan, Sdp,
    ZeroAddressHold,
};
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

/// Runs one input through everything; panics only when an oracle fails.
pub fn run(data: &[u8]) {
    let Ok(sdp) = Sdp::parse(data) else {
        black_box(set_origin_version(data, None).is_ok());
        return;
    };
    black_box((
        sdp.origin(),
        sdp.session_connection(),
        sdp.session_direction(),
        sdp.on_hold(),
    ));
    for m in sdp.media() {
        black_box((m.rejected(), m.zero_address(), m.on_hold(), m.peer_sends()));
        black_box((
            m.payload_types(),
            m.clock_rates(),
            m.rtp_addr(),
            m.rtcp_port(),
            m.rtcp_addr(),
        ));
        for pt in [0u8, 8, 101, 127, 200] {
            black_box(m.clock_rate(pt));
        }
        black_box(RemoteMedia::from_sdp(m, false));
        black_box(RemoteMedia::from_sdp(m, true));
    }
    let n = sdp.media().len();
    let v4: IpAddr = "198.51.100.10".parse().unwrap();
    let v6: IpAddr = "2001:db8:e8b1::1:1".parse().unwrap();
    for (k, addr) in [v4, v6].into_iter().enumerate() {
        let anchors: Vec<Anchor> = (0..n)
            .map(|i| {
                let port = 20000 + 2 * (i as u16 % 1000);
                Anchor {
                    addr,
                    rtp_port: port,
                    rtcp_port: port + 1,
                }
            })
            .collect();
        for (origin, hold) in [
            (OriginPlan::Keep, ZeroAddressHold::RewriteKeepDirection),
            (OriginPlan::Increment, ZeroAddressHold::Keep),
            (
                OriginPlan::SetVersion(u64::MAX),
                ZeroAddressHold::RewriteKeepDirection,
            ),
        ] {
            // Anchor everything, and a plan that rejects every other stream.
            let all = RewritePlan {
                media: anchors.iter().copied().map(MediaPlan::Anchor).collect(),
                origin,
                zero_address_hold: hold,
            };
            check_rewrite(&sdp, &all);
            let mixed = RewritePlan {
                media: anchors
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        if (i + k) % 2 == 0 {
                            MediaPlan::Anchor(*a)
                        } else {
                            MediaPlan::Reject
                        }
                    })
                    .collect(),
                origin,
                zero_address_hold: hold,
            };
            check_rewrite(&sdp, &mixed);
        }
    }
    let wrong = RewritePlan::anchor_all(vec![
        Anchor {
            addr: v4,
            rtp_port: 1,
            rtcp_port: 2
        };
        n + 1
    ]);
    assert!(
        sdp.rewrite(&wrong).is_err(),
        "a plan of the wrong length must be refused"
    );
    black_box(set_origin_version(data, Some(7)).is_ok());
}

fn check_rewrite(sdp: &Sdp, plan: &RewritePlan) {
    let out = match sdp.rewrite(plan) {
        Ok(out) => out,
        Err(e) => panic!("rewrite of a parsed SDP failed: {e}\n{}", sdp.as_str()),
    };
    let again = Sdp::parse(out.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "rewritten SDP does not parse ({e}):\n--- in\n{}\n--- out\n{out}",
            sdp.as_str()
        )
    });
    assert_eq!(
        again.media().len(),
        sdp.media().len(),
        "m-lines kept:\n{out}"
    );
    for line in out.lines() {
        // The attribute name is what precedes the first ':' (`a=candidate41 1 UDP ...` is an
        // unknown attribute, not a candidate).
        let name = line
            .strip_prefix("a=")
            .map(|a| a.split(':').next().unwrap_or(""));
        let ice = name.is_some_and(|n| {
            n == "candidate"
                || n == "end-of-candidates"
                || n == "remote-candidates"
                || n.starts_with("ice-")
        });
        assert!(!ice, "ICE attribute left in:\n{out}");
    }
    for ((before, after), p) in sdp.media().iter().zip(again.media()).zip(&plan.media) {
        match p {
            MediaPlan::Reject => assert_eq!(after.port, 0, "rejected stream has port 0:\n{out}"),
            MediaPlan::Anchor(_) if before.rejected() => {
                assert_eq!(after.port, 0, "already rejected stays 0:\n{out}")
            }
            MediaPlan::Anchor(a) => {
                assert_eq!(after.port, a.rtp_port, "anchored port:\n{out}");
                let kept_zero =
                    plan.zero_address_hold == ZeroAddressHold::Keep && before.zero_address();
                if !kept_zero {
                    assert_eq!(
                        after.rtp_addr(),
                        Some(SocketAddr::new(a.addr, a.rtp_port)),
                        "anchored stream points at the relay:\n--- in\n{}\n--- out\n{out}",
                        sdp.as_str()
                    );
                }
            }
        }
    }
}
