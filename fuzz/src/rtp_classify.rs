//! The RTP hot-path classifier (`podpbx_media::packet`): `classify` on an RTP and an RTCP
//! port, `rtp_header`, and `telephone_event` on the payload it delimits.
//!
//! Oracles (besides "never panics", which the module promises for any input): the payload
//! offset and length reported for RTP stay inside the packet, agree between `classify` and
//! `rtp_header`, and are consistent with the header fields (CSRC count, extension, padding).
//!
//! Also compiled into `crates/media/tests/corpus_replay.rs` (`#[path]`): `podpbx_media` only.

use podpbx_media::packet::{classify, rtp_header, telephone_event, Kind, RTP_MIN_LEN};
use std::hint::black_box;

/// Runs one input through everything; panics only when an oracle fails.
pub fn run(data: &[u8]) {
    let on_rtp = classify(data, true);
    let on_rtcp = classify(data, false);
    let header = rtp_header(data);
    if let Kind::Rtp(info) = on_rtp {
        assert_eq!(Some(info), header, "classify and rtp_header disagree");
    }
    // An RTCP port never reports RTP.
    assert!(
        !matches!(on_rtcp, Kind::Rtp(_)),
        "RTP reported on an RTCP port"
    );
    if let Some(info) = header {
        let off = usize::from(info.payload_offset);
        let len = usize::from(info.payload_len);
        assert!(
            off >= RTP_MIN_LEN && off + len <= data.len(),
            "payload outside the packet"
        );
        let cc = usize::from(data[0] & 0x0f);
        assert!(
            off >= RTP_MIN_LEN + 4 * cc,
            "payload overlaps the CSRC list"
        );
        assert_eq!(info.payload_type, data[1] & 0x7f);
        assert_eq!(info.seq, u16::from_be_bytes([data[2], data[3]]));
        if data[0] & 0x20 == 0 {
            assert_eq!(off + len, data.len(), "no padding: payload runs to the end");
        }
        black_box(telephone_event(&data[off..off + len]));
    }
    black_box(telephone_event(data));
    // Truncations of the packet are classified without panicking too (the relay sees short
    // reads of the same bytes).
    for cut in [1usize, 2, 8, 11, 12, 13, 16] {
        if let Some(d) = data.get(..data.len().saturating_sub(cut)) {
            black_box(classify(d, true));
        }
    }
}
