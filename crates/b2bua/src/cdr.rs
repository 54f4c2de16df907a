//! Call detail records: one JSON object per call, written as one line by the shell.

use serde::Serialize;

/// How a call ended (also the `disposition` label of `podpbx_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Answered, then hung up.
    Answered,
    /// Every callee was busy.
    Busy,
    /// Nobody answered before the ring timeout (or no contact was registered).
    NoAnswer,
    /// The caller hung up before an answer.
    Cancelled,
    /// Rejected: dialplan reject, no route, limits, unknown extension.
    Rejected,
    /// Failed: trunk down, media timeout before answer, internal errors.
    Failed,
}

impl Disposition {
    /// Every disposition, in label order.
    pub const ALL: [Disposition; 6] = [
        Disposition::Answered,
        Disposition::Busy,
        Disposition::NoAnswer,
        Disposition::Cancelled,
        Disposition::Rejected,
        Disposition::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no_answer",
            Disposition::Cancelled => "cancelled",
            Disposition::Rejected => "rejected",
            Disposition::Failed => "failed",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Media counters of one leg, as the relay saw them (packets received from that leg's peer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MediaCounters {
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    pub rtcp_packets: u64,
    /// Packets forwarded to the other leg.
    pub forwarded_packets: u64,
    pub lost_packets: i64,
    pub jitter_ms: u64,
    /// SSRC changes in quick succession on this leg's media: several calls' streams from the
    /// peer's one source, crossed in the shared port layout. Written only when there were any.
    #[serde(skip_serializing_if = "is_zero")]
    pub ssrc_flaps: u64,
    /// Our media address on this leg.
    pub local: Option<String>,
}

/// One leg of a call in the CDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdrLeg {
    /// `caller`, `callee`, `transfer_target` or `fork` (a leg that rang but lost).
    pub role: &'static str,
    /// Local user or trunk name, when known.
    pub party: Option<String>,
    /// The peer's signalling address.
    pub remote: String,
    /// Our signalling address on this leg.
    pub local: String,
    pub transport: &'static str,
    /// The leg's Call-ID.
    pub call_id: String,
    /// Final status of the INVITE on this leg (0: none).
    pub status: u16,
    pub media: MediaCounters,
}

/// A call detail record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    /// podpbx's call number (unique per process run).
    pub id: u64,
    /// RFC 3339 UTC.
    pub start: String,
    pub answer: Option<String>,
    pub end: String,
    /// Seconds from start to end.
    pub duration_secs: f64,
    /// Seconds from answer to end (0 if not answered).
    pub billsec: f64,
    /// Calling user (local) or caller-ID (trunk).
    pub caller: String,
    /// Trunk the call came in on.
    pub trunk: Option<String>,
    /// The dialled number.
    pub callee: String,
    /// The user (or trunk) that answered.
    pub answered_by: Option<String>,
    /// Dialplan rule that routed the call.
    pub rule: Option<String>,
    pub disposition: Disposition,
    /// Final status sent to the caller (200 when answered).
    pub status: u16,
    /// Who ended it: `caller`, `callee`, `system` (timeouts, limits, shutdown).
    pub hangup_by: Option<String>,
    /// Why: `bye`, `cancel`, `media_timeout`, `max_duration`, `no_ack`, `shutdown`, ...
    pub reason: String,
    /// Blind transfer target, when transferred.
    pub transferred_to: Option<String>,
    pub legs: Vec<CdrLeg>,
}
