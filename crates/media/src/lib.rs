//! RTP/RTCP relay and SDP anchoring.
