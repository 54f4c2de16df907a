//! Contact bindings per address-of-record.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

pub use podpbx_sip::{Flow, Transport};

/// One registered contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Unique within this registrar run (not persisted: reassigned on load).
    pub id: u64,
    /// The Contact URI as the device sent it (without `<>` and header parameters).
    pub contact_uri: String,
    /// Monotonic expiry, for timers.
    pub expires_at: Instant,
    /// Wall-clock expiry, for persistence.
    pub expires_at_wall: SystemTime,
    /// `q` in thousandths (`q=0.5` is 500), if given.
    pub q: Option<u16>,
    /// RFC 5626 `+sip.instance`, without the surrounding quotes (e.g. `<urn:uuid:...>`).
    pub instance: Option<String>,
    /// RFC 5626 `reg-id` (only kept together with an instance).
    pub reg_id: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub flow: Flow,
    /// Wall-clock time of the first registration of this binding (refreshes keep it).
    pub registered_at: SystemTime,
    /// The User-Agent header of the last REGISTER, truncated, if any.
    pub user_agent: Option<String>,
    /// False after `qualify_max_failures` failed OPTIONS probes.
    pub reachable: bool,
    pub(crate) qualify_failures: u32,
    pub(crate) next_qualify: Option<Instant>,
}

impl Binding {
    /// Whole seconds left, rounded up, 0 once expired.
    pub fn remaining_secs(&self, now: Instant) -> u64 {
        let d = self.expires_at.saturating_duration_since(now);
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at <= now
    }

    /// The Contact header value listing this binding in a 200 OK:
    /// `<uri>;expires=N[;q=..][;+sip.instance=".."][;reg-id=N]`.
    pub fn contact_value(&self, now: Instant) -> String {
        let mut s = format!(
            "<{}>;expires={}",
            self.contact_uri,
            self.remaining_secs(now)
        );
        if let Some(q) = self.q {
            s.push_str(&format!(";q={}", format_q(q)));
        }
        if let Some(i) = &self.instance {
            s.push_str(&format!(";+sip.instance=\"{i}\""));
            if let Some(r) = self.reg_id {
                s.push_str(&format!(";reg-id={r}"));
            }
        }
        s
    }
}

fn format_q(q: u16) -> String {
    let q = q.min(1000);
    if q == 1000 {
        "1".to_owned()
    } else {
        let s = format!("0.{q:03}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A contact the binary should probe with OPTIONS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifyTarget {
    pub aor: String,
    pub binding_id: u64,
    pub flow: Flow,
    pub contact_uri: String,
}

/// All bindings, per AOR (the user name).
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) by_aor: HashMap<String, Vec<Binding>>,
    next_id: u64,
    /// No binding deadline (expiry or qualify) is earlier than this. It may be too early (a
    /// binding was refreshed or removed since): the wake-up then finds nothing due and
    /// [`Store::recompute`] tightens it. Keeping a bound instead of scanning every binding on each
    /// `poll_timeout` keeps the per-message cost flat with 10 000 bindings.
    hint: Option<Instant>,
}

impl Store {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Stores the bindings of one AOR (replacing its list) and lowers the deadline bound.
    pub(crate) fn put(&mut self, aor: String, list: Vec<Binding>) {
        for b in &list {
            for t in [Some(b.expires_at), b.next_qualify].into_iter().flatten() {
                self.hint = Some(self.hint.map_or(t, |h| h.min(t)));
            }
        }
        self.by_aor.insert(aor, list);
    }

    /// The exact earliest deadline, after bulk changes (load, expiry, qualify, user changes).
    pub(crate) fn recompute(&mut self) {
        self.hint = self
            .by_aor
            .values()
            .flatten()
            .flat_map(|b| [Some(b.expires_at), b.next_qualify])
            .flatten()
            .min();
    }

    pub(crate) fn count(&self) -> usize {
        self.by_aor.values().map(Vec::len).sum()
    }

    /// Unexpired bindings: reachable first, then higher q (absent q counts as 1.0), then the most
    /// recently registered.
    pub(crate) fn lookup(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self
            .by_aor
            .get(aor)
            .map(|l| l.iter().filter(|b| !b.is_expired(now)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            b.reachable
                .cmp(&a.reachable)
                .then(b.q.unwrap_or(1000).cmp(&a.q.unwrap_or(1000)))
                .then(b.registered_at.cmp(&a.registered_at))
        });
        v
    }

    /// Removes expired bindings, returning them with their AOR.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(String, Binding)> {
        let mut gone = Vec::new();
        self.by_aor.retain(|aor, list| {
            let (dead, live): (Vec<Binding>, Vec<Binding>) = std::mem::take(list)
                .into_iter()
                .partition(|b| b.is_expired(now));
            gone.extend(dead.into_iter().map(|b| (aor.clone(), b)));
            *list = live;
            !list.is_empty()
        });
        self.recompute();
        gone
    }

    /// Earliest binding expiry or qualify due time (a lower bound, see `hint`).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.hint
    }

    pub(crate) fn due_qualifies(&mut self, now: Instant, interval: Duration) -> Vec<QualifyTarget> {
        let mut out = Vec::new();
        for (aor, list) in &mut self.by_aor {
            for b in list.iter_mut().filter(|b| !b.is_expired(now)) {
                if b.next_qualify.is_some_and(|t| t <= now) {
                    b.next_qualify = Some(crate::later(now, interval));
                    out.push(QualifyTarget {
                        aor: aor.clone(),
                        binding_id: b.id,
                        flow: b.flow,
                        contact_uri: b.contact_uri.clone(),
                    });
                }
            }
        }
        self.recompute();
        out
    }

    pub(crate) fn find_mut(&mut self, id: u64) -> Option<&mut Binding> {
        self.by_aor.values_mut().flatten().find(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::format_q;

    #[test]
    fn q_formatting() {
        assert_eq!(format_q(1000), "1");
        assert_eq!(format_q(500), "0.5");
        assert_eq!(format_q(75), "0.075");
        assert_eq!(format_q(0), "0");
        assert_eq!(format_q(9999), "1");
    }
}
