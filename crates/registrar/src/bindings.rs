//! Contact bindings per address-of-record.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use podpbx_sip::text::push_decimal;
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
        // Written piece by piece: this runs for every binding listed in every 200, and the
        // formatting machinery (one `format!` per parameter) cost ~4 % of a REGISTER.
        let extra = self.instance.as_ref().map_or(0, |i| i.len() + 40);
        let mut s = String::with_capacity(self.contact_uri.len() + 32 + extra);
        s.push('<');
        s.push_str(&self.contact_uri);
        s.push_str(">;expires=");
        push_decimal(&mut s, self.remaining_secs(now));
        if let Some(q) = self.q {
            s.push_str(";q=");
            push_q(&mut s, q);
        }
        if let Some(i) = &self.instance {
            s.push_str(";+sip.instance=\"");
            s.push_str(i);
            s.push('"');
            if let Some(r) = self.reg_id {
                s.push_str(";reg-id=");
                push_decimal(&mut s, u64::from(r));
            }
        }
        s
    }
}

/// Appends a q value given in thousandths as RFC 3261 writes it: `1`, `0.5`, `0.25`, `0`.
fn push_q(s: &mut String, q: u16) {
    let q = q.min(1000);
    if q == 1000 {
        s.push('1');
        return;
    }
    let digits = [(q / 100) as u8, (q / 10 % 10) as u8, (q % 10) as u8];
    let keep = digits.iter().rposition(|&d| d != 0).map_or(0, |i| i + 1);
    if keep == 0 {
        s.push('0');
        return;
    }
    s.push_str("0.");
    for &d in &digits[..keep] {
        s.push(char::from(b'0' + d));
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

/// One binding's indexed deadlines: (id, expiry, next qualify).
type Indexed = (u64, Instant, Option<Instant>);

/// Up to this many bindings of an AOR are noted on the stack at check-out (nearly every AOR
/// has one); more take a `Vec` (an allocation per REGISTER otherwise).
const INLINE: usize = 4;

/// What [`Store::check_out`] took: each binding's indexed deadlines.
pub(crate) enum CheckedOut {
    /// The AOR's bindings in order, then `None`s.
    Few([Option<Indexed>; INLINE]),
    Many(Vec<Indexed>),
}

impl CheckedOut {
    fn new(list: &[Binding]) -> CheckedOut {
        let entry = |b: &Binding| (b.id, b.expires_at, b.next_qualify);
        if list.len() <= INLINE {
            let mut few = [None; INLINE];
            for (slot, b) in few.iter_mut().zip(list) {
                *slot = Some(entry(b));
            }
            CheckedOut::Few(few)
        } else {
            CheckedOut::Many(list.iter().map(entry).collect())
        }
    }

    fn iter(&self) -> impl Iterator<Item = Indexed> + '_ {
        let (few, many): (&[Option<Indexed>], &[Indexed]) = match self {
            CheckedOut::Few(items) => (items, &[]),
            CheckedOut::Many(v) => (&[], v),
        };
        few.iter().flatten().chain(many).copied()
    }
}

/// All bindings, per AOR (the user name), with ordered indexes of their deadlines so that
/// expiry and qualify cost O(log n) per binding that is due, whatever the number of bindings (a
/// full pass per timer event made every wake-up of the signalling loop cost O(n)).
#[derive(Debug, Default)]
pub(crate) struct Store {
    by_aor: HashMap<Arc<str>, Vec<Binding>>,
    next_id: u64,
    /// Bindings in all.
    count: usize,
    /// (expiry, binding id) of every binding.
    expiries: BTreeSet<(Instant, u64)>,
    /// (next probe, binding id) of every binding with a qualify due time.
    qualifies: BTreeSet<(Instant, u64)>,
    /// binding id -> its AOR (the key of `by_aor`, shared).
    aor_of: HashMap<u64, Arc<str>>,
}

impl Store {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn index(&mut self, aor: &Arc<str>, b: &Binding) {
        self.expiries.insert((b.expires_at, b.id));
        if let Some(q) = b.next_qualify {
            self.qualifies.insert((q, b.id));
        }
        self.aor_of.insert(b.id, aor.clone());
        self.count += 1;
    }

    fn unindex(&mut self, b: &Binding) {
        self.expiries.remove(&(b.expires_at, b.id));
        if let Some(q) = b.next_qualify {
            self.qualifies.remove(&(q, b.id));
        }
        self.aor_of.remove(&b.id);
        self.count -= 1;
    }

    /// Removes and returns the bindings of one AOR (to be changed and [`Store::put`] back).
    pub(crate) fn take(&mut self, aor: &str) -> Vec<Binding> {
        let Some(list) = self.by_aor.remove(aor) else {
            return Vec::new();
        };
        for b in &list {
            self.unindex(b);
        }
        list
    }

    /// Takes the bindings of one AOR out to be changed and handed back with
    /// [`Store::check_in`]. Unlike [`Store::take`] the indexes are left as they are: most
    /// changes are refreshes of the same bindings, and re-indexing every one of them cost two
    /// hash-table removals and insertions per REGISTER.
    ///
    /// The AOR's entry stays in the table, empty, until the check-in: a refresh then costs two
    /// lookups of a present key instead of a removal and an insertion.
    pub(crate) fn check_out(&mut self, aor: &str) -> (CheckedOut, Vec<Binding>) {
        match self.by_aor.get_mut(aor) {
            Some(slot) => {
                let list = std::mem::take(slot);
                (CheckedOut::new(&list), list)
            }
            None => (CheckedOut::new(&[]), Vec::new()),
        }
    }

    /// Hands back the bindings of an AOR taken with [`Store::check_out`] (nothing else may have
    /// changed the store in between), updating only the index entries that changed.
    pub(crate) fn check_in(&mut self, aor: &str, out: CheckedOut, mut list: Vec<Binding>) {
        for (id, expires_at, next_qualify) in out.iter() {
            match list.iter().find(|b| b.id == id) {
                Some(b) => {
                    if b.expires_at != expires_at {
                        self.expiries.remove(&(expires_at, id));
                        self.expiries.insert((b.expires_at, id));
                    }
                    if b.next_qualify != next_qualify {
                        if let Some(q) = next_qualify {
                            self.qualifies.remove(&(q, id));
                        }
                        if let Some(q) = b.next_qualify {
                            self.qualifies.insert((q, id));
                        }
                    }
                }
                None => {
                    self.expiries.remove(&(expires_at, id));
                    if let Some(q) = next_qualify {
                        self.qualifies.remove(&(q, id));
                    }
                    self.aor_of.remove(&id);
                    self.count -= 1;
                }
            }
        }
        if list.is_empty() {
            // The entry check_out left in place, if the AOR had one.
            self.by_aor.remove(aor);
            return;
        }
        let is_new = |b: &Binding| !out.iter().any(|(id, _, _)| id == b.id);
        let mut key = None;
        if list.iter().any(is_new) {
            let k = match self.by_aor.get_key_value(aor) {
                Some((k, _)) => k.clone(),
                None => Arc::from(aor),
            };
            for b in list.iter().filter(|b| is_new(b)) {
                self.index(&k, b);
            }
            key = Some(k);
        }
        // See `put`: no spare room kept per AOR.
        if list.capacity() > list.len() {
            list.shrink_to_fit();
        }
        match self.by_aor.get_mut(aor) {
            Some(slot) => *slot = list,
            None => {
                let k = key.unwrap_or_else(|| Arc::from(aor));
                self.by_aor.insert(k, list);
            }
        }
    }

    /// Stores the bindings of one AOR (taken before, or new); an empty list stores nothing.
    pub(crate) fn put(&mut self, aor: &str, mut list: Vec<Binding>) {
        if list.is_empty() {
            return;
        }
        // A list that grew by a push has room for 4 bindings (272 bytes each); most AORs keep
        // one for hours, so the spare room would be three quarters of the store.
        list.shrink_to_fit();
        let key: Arc<str> = match self.by_aor.get_key_value(aor) {
            Some((k, _)) => k.clone(),
            None => Arc::from(aor),
        };
        // An AOR still present (not taken first): replace its list.
        if let Some(old) = self.by_aor.remove(aor) {
            for b in &old {
                self.unindex(b);
            }
        }
        for b in &list {
            self.index(&key, b);
        }
        self.by_aor.insert(key, list);
    }

    /// Drops every binding.
    pub(crate) fn clear(&mut self) {
        self.by_aor.clear();
        self.expiries.clear();
        self.qualifies.clear();
        self.aor_of.clear();
        self.count = 0;
    }

    /// Keeps the AORs for which `keep` is true (configuration reload: users removed).
    pub(crate) fn retain_aors(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Arc<str>> = self.by_aor.keys().filter(|a| !keep(a)).cloned().collect();
        for aor in gone {
            self.take(&aor);
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn aors(&self) -> usize {
        self.by_aor.len()
    }

    /// Every AOR with its bindings.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Vec<Binding>)> {
        self.by_aor.iter().map(|(a, l)| (&**a, l))
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

    /// Removes expired bindings, returning them with their AOR: O(log n) per expired binding.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(String, Binding)> {
        let mut gone = Vec::new();
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            let Some(aor) = self.aor_of.get(&id).cloned() else {
                // Not reachable: every indexed binding has its AOR.
                self.expiries.pop_first();
                continue;
            };
            let Some(list) = self.by_aor.get_mut(&*aor) else {
                self.expiries.pop_first();
                continue;
            };
            let Some(i) = list.iter().position(|b| b.id == id) else {
                self.expiries.pop_first();
                continue;
            };
            let b = list.swap_remove(i);
            if list.is_empty() {
                self.by_aor.remove(&*aor);
            }
            self.unindex(&b);
            gone.push((aor.to_string(), b));
        }
        gone
    }

    /// Earliest binding expiry or qualify due time.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let e = self.expiries.first().map(|(t, _)| *t);
        let q = self.qualifies.first().map(|(t, _)| *t);
        e.into_iter().chain(q).min()
    }

    /// Bindings due for a probe: each is returned once per `interval` (O(log n) per due binding).
    pub(crate) fn due_qualifies(&mut self, now: Instant, interval: Duration) -> Vec<QualifyTarget> {
        let mut out = Vec::new();
        let mut again = Vec::new();
        while let Some(&(at, id)) = self.qualifies.first() {
            if at > now {
                break;
            }
            self.qualifies.pop_first();
            let Some(aor) = self.aor_of.get(&id) else {
                continue;
            };
            let Some(b) = self
                .by_aor
                .get_mut(&**aor)
                .and_then(|l| l.iter_mut().find(|b| b.id == id))
            else {
                continue;
            };
            let next = crate::later(now, interval);
            b.next_qualify = Some(next);
            again.push((next, id));
            if !b.is_expired(now) {
                out.push(QualifyTarget {
                    aor: aor.to_string(),
                    binding_id: b.id,
                    flow: b.flow,
                    contact_uri: b.contact_uri.clone(),
                });
            }
        }
        self.qualifies.extend(again);
        out
    }

    /// A binding by id, to record a probe result (its deadlines must not be changed through it).
    pub(crate) fn find_mut(&mut self, id: u64) -> Option<&mut Binding> {
        let aor = self.aor_of.get(&id)?;
        self.by_aor.get_mut(&**aor)?.iter_mut().find(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn binding(store: &mut Store, t0: Instant, secs: u64, qualify: Option<u64>) -> Binding {
        let remote: SocketAddr = "198.51.100.7:5060".parse().unwrap();
        let local: SocketAddr = "203.0.113.1:5060".parse().unwrap();
        Binding {
            id: store.next_id(),
            contact_uri: format!("sip:a@198.51.100.7:{secs}"),
            expires_at: t0 + Duration::from_secs(secs),
            expires_at_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            q: None,
            instance: None,
            reg_id: None,
            call_id: "c".into(),
            cseq: 1,
            flow: Flow {
                transport: Transport::Udp,
                local,
                remote,
                conn: 0,
            },
            registered_at: SystemTime::UNIX_EPOCH,
            user_agent: None,
            reachable: true,
            qualify_failures: 0,
            next_qualify: qualify.map(|q| t0 + Duration::from_secs(q)),
        }
    }

    /// The indexes hold exactly the bindings' deadlines and AORs.
    fn assert_indexed(store: &Store) {
        let mut expiries = BTreeSet::new();
        let mut qualifies = BTreeSet::new();
        let mut aor_of = HashMap::new();
        for (aor, list) in &store.by_aor {
            assert!(!list.is_empty());
            for b in list {
                expiries.insert((b.expires_at, b.id));
                if let Some(q) = b.next_qualify {
                    qualifies.insert((q, b.id));
                }
                aor_of.insert(b.id, aor.clone());
            }
        }
        assert_eq!(store.expiries, expiries);
        assert_eq!(store.qualifies, qualifies);
        assert_eq!(store.aor_of, aor_of);
        assert_eq!(store.count, aor_of.len());
    }

    #[test]
    fn check_in_updates_only_what_changed_and_keeps_the_indexes_exact() {
        let t0 = Instant::now();
        let mut s = Store::default();
        let a = binding(&mut s, t0, 60, Some(30));
        let b = binding(&mut s, t0, 90, None);
        s.put("1001", vec![a, b.clone()]);
        let other = binding(&mut s, t0, 70, Some(10));
        s.put("1002", vec![other]);
        assert_indexed(&s);

        // Refresh one, drop one, add one; qualify time moved.
        let (out, mut list) = s.check_out("1001");
        assert_eq!(list.len(), 2);
        list.retain(|x| x.id != b.id);
        list[0].expires_at = t0 + Duration::from_secs(600);
        list[0].next_qualify = Some(t0 + Duration::from_secs(45));
        let c = binding(&mut s, t0, 120, Some(5));
        list.push(c);
        s.check_in("1001", out, list);
        assert_indexed(&s);
        assert_eq!(s.count(), 3);

        // Everything gone: the AOR is no more.
        let (out, _) = s.check_out("1001");
        s.check_in("1001", out, Vec::new());
        assert_indexed(&s);
        assert_eq!((s.count(), s.aors()), (1, 1));

        // A new AOR through check-out/in.
        let (out, list) = s.check_out("1003");
        assert!(list.is_empty());
        let d = binding(&mut s, t0, 30, None);
        s.check_in("1003", out, vec![d]);
        assert_indexed(&s);
        assert_eq!(s.lookup("1003", t0).len(), 1);
        assert_eq!(s.expire(t0 + Duration::from_secs(80)).len(), 2);
        assert_indexed(&s);

        // More bindings than the check-out notes on the stack: refresh some, drop some, add one.
        let many: Vec<Binding> = (0..INLINE as u64 + 3)
            .map(|i| binding(&mut s, t0, 200 + i, (i % 2 == 0).then_some(20 + i)))
            .collect();
        s.put("1004", many);
        assert_indexed(&s);
        let (out, mut list) = s.check_out("1004");
        assert!(matches!(out, CheckedOut::Many(_)));
        for (i, x) in list.iter_mut().enumerate() {
            x.expires_at = t0 + Duration::from_secs(900 + i as u64);
            x.next_qualify = (i % 3 == 0).then(|| t0 + Duration::from_secs(50));
        }
        list.truncate(INLINE + 1);
        let e = binding(&mut s, t0, 40, Some(2));
        list.push(e);
        s.check_in("1004", out, list);
        assert_indexed(&s);
        assert_eq!(s.lookup("1004", t0).len(), INLINE + 2);
        assert_eq!(s.count(), INLINE + 2);
    }

    fn format_q(q: u16) -> String {
        let mut s = String::new();
        push_q(&mut s, q);
        s
    }

    #[test]
    fn q_formatting() {
        assert_eq!(format_q(1000), "1");
        assert_eq!(format_q(500), "0.5");
        assert_eq!(format_q(250), "0.25");
        assert_eq!(format_q(75), "0.075");
        assert_eq!(format_q(1), "0.001");
        assert_eq!(format_q(0), "0");
        assert_eq!(format_q(9999), "1");
    }

    #[test]
    fn contact_value_lists_every_parameter() {
        let t0 = Instant::now();
        let mut s = Store::default();
        let mut b = binding(&mut s, t0, 3600, None);
        b.contact_uri = "sip:1001@[2001:db8::10]:5060;transport=udp".into();
        b.expires_at = t0 + Duration::from_millis(3_599_001);
        assert_eq!(
            b.contact_value(t0),
            "<sip:1001@[2001:db8::10]:5060;transport=udp>;expires=3600"
        );
        b.q = Some(700);
        b.instance = Some("<urn:uuid:00000000-0000-1000-8000-000a95a0e128>".into());
        b.reg_id = Some(1);
        assert_eq!(
            b.contact_value(t0 + Duration::from_secs(3599)),
            "<sip:1001@[2001:db8::10]:5060;transport=udp>;expires=1;q=0.7\
             ;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\";reg-id=1"
        );
        b.reg_id = Some(u32::MAX);
        assert!(b
            .contact_value(t0 + Duration::from_secs(4000))
            .contains(";expires=0;q=0.7;"));
        assert!(b.contact_value(t0).ends_with(";reg-id=4294967295"));
    }
}
