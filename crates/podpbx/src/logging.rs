//! Log output that the network cannot forge or flood.
//!
//! * [`EscapedFields`]: the text format writes every field value and message with control
//!   characters escaped (`\r`, `\n`, `\x1b`...), so a Call-ID or branch carrying a bare CR or an
//!   ANSI escape cannot start a fake log line or take over the terminal of whoever reads the
//!   log. (The JSON format escapes them by itself.)
//! * [`RateLimit`]: a warning that the network can trigger at will (a failed login, a send to an
//!   unreachable peer) goes through at most `burst` times per `period`; the lines held back are
//!   counted and reported as `suppressed=N` on the next one that goes through.

use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Field formatter for the text log format: `name=value` pairs separated by spaces, the
/// message first and bare, every control character escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let text = format!("{value:?}");
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{}", Escaped(&text))
        } else if let Some(name) = field.name().strip_prefix("r#") {
            write!(self.writer, "{sep}{name}={}", Escaped(&text))
        } else {
            write!(self.writer, "{sep}{}={}", field.name(), Escaped(&text))
        };
    }
}

/// Displays a string with control characters escaped: `\r`, `\n`, `\t` as such, others as
/// `\xNN` (C0, DEL) or `\u{NN}` (C1).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\r' => f.write_str("\\r")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\x{:02x}", c as u32)?,
                c if ('\u{80}'..='\u{9f}').contains(&c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Lets a repeated log line through at most `burst` times per `period` (see the module docs).
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(period: Duration, burst: u32) -> RateLimit {
        RateLimit {
            period,
            burst,
            window_start: None,
            passed: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being the occurrences held back since
    /// the last line that went through; `None` when it must be held back (and is counted).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period)
        {
            self.window_start = Some(now);
            self.passed = 0;
        }
        if self.passed < self.burst {
            self.passed += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// The limit used for warnings the network can trigger: 20 lines per 10 s per kind.
pub const fn network_warning() -> RateLimit {
    RateLimit::new(Duration::from_secs(10), 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_keeps_text() {
        assert_eq!(
            Escaped("a\r\nb\x1b[31mc\u{85}d\t\u{7f}é").to_string(),
            "a\\r\\nb\\x1b[31mc\\u{85}d\\t\\x7fé"
        );
    }

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut r = RateLimit::new(Duration::from_secs(10), 2);
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t), None);
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(10)), Some(2));
        assert_eq!(r.check(t + Duration::from_secs(10)), Some(0));
        assert_eq!(r.check(t + Duration::from_secs(11)), None);
    }

    #[test]
    fn text_log_lines_escape_network_values() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let call_id = "x\r2026-01-01 INFO fake line\x1b[2J";
            let span = tracing::info_span!("sip_tx", call_id = %call_id);
            let _g = span.enter();
            tracing::warn!(user = %"a\nb", n = 3, "seen {}", "m\rx");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
        assert!(
            text.contains("call_id=x\\r2026-01-01 INFO fake line\\x1b[2J"),
            "{text:?}"
        );
        assert!(text.contains("seen m\\rx user=a\\nb n=3"), "{text:?}");
    }
}
