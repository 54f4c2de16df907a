//! Typed, lazy views of the headers podpbx uses. Each parses one header value (already located
//! by [`crate::Message`]) into slices of the message buffer; nothing is copied.
//!
//! The single-value accessors (`top_via`, `from_hdr`, `to_hdr`, `cseq`, `call_id`, ...) and the
//! iterators (`via_iter`, `contact_iter`, `route_iter`, `record_route_iter`) do not allocate; the
//! `Vec`-returning conveniences (`vias`, `contacts`, `routes`, ...) collect those iterators.

use crate::message::{is_lws, parse_decimal, quoted_end, skip_lws, token_end, trim_lws};
use crate::uri::parse_port;
use crate::{uri::Host, HeaderName, Message, Method, ParseError, StartLine, Uri};
use bytes::Bytes;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::OnceLock;

/// Generic `;name=value` parameter list (raw text without the leading `;`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params(pub Bytes);

/// Spans `(name_start, name_end, value_start, value_end)` of each parameter in a raw list;
/// quoted values may contain `;`. Empty entries are skipped, LWS around names and values trimmed.
struct ParamSpans<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Iterator for ParamSpans<'_> {
    type Item = (usize, usize, usize, usize);
    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        while self.pos <= s.len() {
            let a = self.pos;
            let mut i = a;
            let mut eq = None;
            while i < s.len() && s[i] != b';' {
                match s[i] {
                    b'"' => i = quoted_end(s, i).unwrap_or(s.len()),
                    b'[' => {
                        i = s[i..]
                            .iter()
                            .position(|&c| c == b']')
                            .map_or(s.len(), |p| i + p + 1)
                    }
                    b'=' if eq.is_none() => {
                        eq = Some(i);
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
            self.pos = i + 1;
            let (na, nb) = trim_lws(s, a, eq.unwrap_or(i));
            if na == nb {
                continue;
            }
            let (va, vb) = match eq {
                Some(e) => trim_lws(s, e + 1, i),
                None => (i, i),
            };
            return Some((na, nb, va, vb));
        }
        None
    }
}

impl Params {
    fn spans(&self) -> ParamSpans<'_> {
        ParamSpans {
            s: &self.0,
            pos: if self.0.is_empty() { 1 } else { 0 },
        }
    }

    /// The value span of the first parameter called `name` (case-insensitive), empty for a flag.
    fn value_span(&self, name: &str) -> Option<(usize, usize)> {
        let n = name.as_bytes();
        self.spans()
            .find(|&(a, b, _, _)| self.0[a..b].eq_ignore_ascii_case(n))
            .map(|(_, _, va, vb)| (va, vb))
    }

    /// Value of a parameter (`Some(b"")` for a flag), name case-insensitive; quotes kept as written.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.value_span(name).map(|(a, b)| self.0.slice(a..b))
    }

    /// [`Params::get`] borrowed: no reference count is touched.
    pub fn get_ref(&self, name: &str) -> Option<&[u8]> {
        self.value_span(name).map(|(a, b)| &self.0[a..b])
    }

    /// True if the parameter is present (with or without a value).
    pub fn contains(&self, name: &str) -> bool {
        self.value_span(name).is_some()
    }

    /// Every parameter as `(name, value)`, value empty for a flag.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        self.spans()
            .map(move |(a, b, va, vb)| (self.0.slice(a..b), self.0.slice(va..vb)))
    }
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The whole value as received, echoed byte for byte in responses.
    pub raw: Bytes,
    /// e.g. `UDP`, `TCP`, or an unknown transport token.
    pub transport: Bytes,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    /// Where `branch`, `rport` and `received` are in `params`, noted while parsing: every
    /// layer asks for them (transaction key, response address, the response's Via), and
    /// scanning the list for each ask cost ~3 % of a REGISTER. Private, so a `Via` only comes
    /// from the parser and the spans always describe its own `params`.
    known: ViaParams,
}

fn widen([a, b, c, d]: [u32; 4]) -> (usize, usize, usize, usize) {
    (a as usize, b as usize, c as usize, d as usize)
}

/// Spans `[name_start, name_end, value_start, value_end]` of the first `branch`, `rport` and
/// `received` parameter inside a Via's raw parameter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ViaParams {
    branch: Option<[u32; 4]>,
    rport: Option<[u32; 4]>,
    received: Option<[u32; 4]>,
}

impl ViaParams {
    /// Notes the parameter at `span` (offsets inside `s`) if it is one of ours.
    fn note(&mut self, s: &[u8], span: [usize; 4]) {
        let name = &s[span[0]..span[1]];
        let slot = if name.eq_ignore_ascii_case(b"branch") {
            &mut self.branch
        } else if name.eq_ignore_ascii_case(b"rport") {
            &mut self.rport
        } else if name.eq_ignore_ascii_case(b"received") {
            &mut self.received
        } else {
            return;
        };
        // Offsets fit: a message is at most `MAX_MESSAGE_BYTES` (64 KB) long.
        slot.get_or_insert(span.map(|x| x as u32));
    }

    /// The spans made relative to the parameter list starting at `base`.
    fn relative_to(mut self, base: usize) -> ViaParams {
        let base = base as u32;
        for sp in [&mut self.branch, &mut self.rport, &mut self.received]
            .into_iter()
            .flatten()
        {
            *sp = sp.map(|x| x - base);
        }
        self
    }
}

impl Via {
    fn value(&self, span: Option<[u32; 4]>) -> Option<Bytes> {
        span.map(|[_, _, va, vb]| self.params.0.slice(va as usize..vb as usize))
    }
    /// Spans `(name_start, name_end, value_start, value_end)` of the first `rport` parameter
    /// inside `params` (for in-place edits); the value span is empty for a flag.
    pub(crate) fn rport_spans(&self) -> Option<(usize, usize, usize, usize)> {
        self.known.rport.map(widen)
    }
    /// The same for the first `received` parameter.
    pub(crate) fn received_spans(&self) -> Option<(usize, usize, usize, usize)> {
        self.known.received.map(widen)
    }
    /// The branch parameter.
    pub fn branch(&self) -> Option<Bytes> {
        self.value(self.known.branch)
    }
    /// `received`, accepted with or without brackets around IPv6 (RFC 5118 §4.5).
    pub fn received(&self) -> Option<std::net::IpAddr> {
        let v = self.value(self.known.received)?;
        let v = v
            .strip_prefix(b"[")
            .and_then(|x| x.strip_suffix(b"]"))
            .unwrap_or(&v);
        std::str::from_utf8(v).ok()?.parse::<IpAddr>().ok()
    }
    /// `rport`: `None` if absent, `Some(None)` without a value, `Some(Some(p))` with one.
    /// A value that is not a port counts as absent.
    pub fn rport(&self) -> Option<Option<u16>> {
        let v = self.value(self.known.rport)?;
        if v.is_empty() {
            return Some(None);
        }
        match parse_port(&v, 0) {
            Ok((p, e)) if e == v.len() => Some(Some(p)),
            _ => None,
        }
    }
    /// `maddr` host, if any.
    pub fn maddr(&self) -> Option<Host> {
        Host::parse_lenient(&self.params.get("maddr")?).ok()
    }
}

/// A Via value located inside a header line (for the response builder).
pub(crate) struct ViaAt {
    pub via: Via,
    /// End (exclusive) of the via-parm inside the line value.
    pub end: usize,
    /// Offset of the raw parameter list (`via.params`) inside the line value.
    pub params_start: usize,
    /// Where the next comma-separated value starts, if any.
    pub next: Option<usize>,
}

/// Parameter value characters outside quotes: visible ASCII except separators and quotes.
#[inline]
fn is_param_value_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !matches!(b, b';' | b',' | b'"' | b'=')
}

/// Scans `*( SEMI generic-param )` from `i`; returns the raw list span (without the first `;`).
/// Tells `note` where each parameter is: `[name_start, name_end, value_start, value_end]`
/// inside `s`, the value span empty (at the name's end) for a flag.
fn scan_params_noting(
    s: &[u8],
    mut i: usize,
    what: &'static str,
    mut note: impl FnMut([usize; 4]),
) -> Result<(usize, usize), ParseError> {
    let n = s.len();
    let mut first = None;
    loop {
        let j = skip_lws(s, i);
        if j >= n || s[j] != b';' {
            break;
        }
        first.get_or_insert(j + 1);
        let k = skip_lws(s, j + 1);
        let ne = token_end(s, k);
        if ne == k {
            return Err(ParseError::Value(what));
        }
        let m = skip_lws(s, ne);
        if m < n && s[m] == b'=' {
            let v0 = skip_lws(s, m + 1);
            let ve = if v0 < n && s[v0] == b'"' {
                quoted_end(s, v0).ok_or(ParseError::Value(what))?
            } else {
                let mut e = v0;
                while e < n {
                    if s[e] == b'[' {
                        // An IPv6 reference: nothing inside the brackets ends the value.
                        let close = s[e..].iter().position(|&c| c == b']');
                        e += close.ok_or(ParseError::Value(what))? + 1;
                    } else if is_param_value_char(s[e]) {
                        e += 1;
                    } else {
                        break;
                    }
                }
                if e == v0 {
                    return Err(ParseError::Value(what));
                }
                e
            };
            note([k, ne, v0, ve]);
            i = ve;
        } else {
            note([k, ne, ne, ne]);
            i = ne;
        }
    }
    Ok((first.unwrap_or(i), i))
}

/// After an element ending at `end`: end of line (`None`), or a comma in a list (`Some(next)`).
fn element_tail(
    s: &[u8],
    end: usize,
    list: bool,
    what: &'static str,
) -> Result<Option<usize>, ParseError> {
    let j = skip_lws(s, end);
    if j == s.len() {
        Ok(None)
    } else if list && s[j] == b',' {
        Ok(Some(j + 1))
    } else {
        Err(ParseError::Value(what))
    }
}

/// Parses one via-parm at `pos` of a Via line value.
pub(crate) fn parse_via_at(v: &Bytes, pos: usize, end: usize) -> Result<ViaAt, ParseError> {
    const W: &str = "Via";
    let e = || ParseError::Value(W);
    let s = &v[..end.min(v.len())];
    let n = s.len();
    let start = skip_lws(s, pos);
    // sent-protocol = protocol-name SLASH protocol-version SLASH transport
    let mut i = start;
    for _ in 0..2 {
        let te = token_end(s, i);
        if te == i {
            return Err(e());
        }
        i = skip_lws(s, te);
        if i >= n || s[i] != b'/' {
            return Err(e());
        }
        i = skip_lws(s, i + 1);
    }
    let t0 = i;
    let t1 = token_end(s, i);
    if t1 == t0 {
        return Err(e());
    }
    i = skip_lws(s, t1);
    if i == t1 {
        return Err(e());
    }
    // sent-by = host [ COLON port ]
    let (host, mut j) = Host::parse_at(v, i, n).map_err(|_| e())?;
    let k = skip_lws(s, j);
    let mut port = None;
    if k < n && s[k] == b':' {
        let (p, pe) = parse_port(s, skip_lws(s, k + 1)).map_err(|_| e())?;
        port = Some(p);
        j = pe;
    }
    let mut known = ViaParams::default();
    let (ps, end) = scan_params_noting(s, j, W, |span| known.note(s, span))?;
    let next = element_tail(s, end, true, W)?;
    Ok(ViaAt {
        via: Via {
            raw: v.slice(start..end),
            transport: v.slice(t0..t1),
            host,
            port,
            params: Params(v.slice(ps..end)),
            known: known.relative_to(ps),
        },
        end,
        params_start: ps,
        next,
    })
}

fn parse_via_item(v: &Bytes, pos: usize, end: usize) -> Result<(Via, Option<usize>), ParseError> {
    parse_via_at(v, pos, end).map(|a| (a.via, a.next))
}

/// A name-addr or addr-spec, as in From, To, Contact, Route, Record-Route, Refer-To.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub raw: Bytes,
    /// Display name without the surrounding quotes (backslash escapes kept as written; see
    /// [`NameAddr::display_unescaped`]), `None` if absent.
    pub display: Option<Bytes>,
    pub uri: Uri,
    /// Header parameters after the URI (for an addr-spec without `<>`, everything after the first `;`).
    pub params: Params,
    /// Where the first `tag` value is in `params`, noted while parsing (From and To tags are
    /// asked for by every layer). Private: a `NameAddr` only comes from the parser.
    tag: Option<[u32; 2]>,
}

impl NameAddr {
    /// The `tag` parameter.
    pub fn tag(&self) -> Option<Bytes> {
        self.tag
            .map(|[a, b]| self.params.0.slice(a as usize..b as usize))
    }

    /// [`NameAddr::tag`] borrowed.
    pub fn tag_ref(&self) -> Option<&[u8]> {
        self.tag
            .map(|[a, b]| &self.params.0[a as usize..b as usize])
    }

    /// The display name with quoted-pair escapes resolved (copies only if there is one).
    pub fn display_unescaped(&self) -> Option<Cow<'_, [u8]>> {
        let d = self.display.as_ref()?;
        if !d.contains(&b'\\') {
            return Some(Cow::Borrowed(&d[..]));
        }
        let mut out = Vec::with_capacity(d.len());
        let mut i = 0;
        while i < d.len() {
            if d[i] == b'\\' && i + 1 < d.len() {
                i += 1;
            }
            out.push(d[i]);
            i += 1;
        }
        Some(Cow::Owned(out))
    }

    /// Parses a single name-addr / addr-spec value (no comma list).
    pub fn parse(v: &Bytes) -> Result<NameAddr, ParseError> {
        parse_name_addr_at(v, 0, v.len(), false, "name-addr").map(|(a, _)| a)
    }
}

/// Parses a name-addr or addr-spec with header params at `pos`.
fn parse_name_addr_at(
    v: &Bytes,
    pos: usize,
    end: usize,
    list: bool,
    what: &'static str,
) -> Result<(NameAddr, Option<usize>), ParseError> {
    let e = || ParseError::Value(what);
    let s = &v[..end.min(v.len())];
    let n = s.len();
    let start = skip_lws(s, pos);
    if start >= n {
        return Err(e());
    }
    let mut i = start;
    let mut display = None;
    let angle = if s[i] == b'"' {
        let q = quoted_end(s, i).ok_or_else(e)?;
        display = Some(v.slice(i + 1..q - 1));
        i = skip_lws(s, q);
        if i >= n || s[i] != b'<' {
            return Err(e());
        }
        true
    } else if s[i] == b'<' {
        true
    } else {
        let te = token_end(s, i);
        if te > i && te < n && s[te] == b':' {
            false
        } else {
            // display-name = *(token LWS): anything but tokens before '<' is malformed.
            let d0 = i;
            let d1;
            loop {
                let te = token_end(s, i);
                if te == i {
                    return Err(e());
                }
                i = skip_lws(s, te);
                if i < n && s[i] == b'<' {
                    d1 = te;
                    break;
                }
            }
            display = Some(v.slice(d0..d1));
            true
        }
    };
    let (uri, end) = if angle {
        // LAQUOT addr-spec RAQUOT: no whitespace inside the brackets.
        let u0 = i + 1;
        let gt = s
            .get(u0..)
            .and_then(|t| t.iter().position(|&b| b == b'>'))
            .ok_or_else(e)?
            + u0;
        (Uri::parse(v.slice(u0..gt)).map_err(|_| e())?, gt + 1)
    } else {
        let mut u1 = i;
        while u1 < n && !matches!(s[u1], b';' | b',') && !is_lws(s[u1]) {
            u1 += 1;
        }
        // A URI with '?' (or ',' / ';') must be enclosed in <> (RFC 3261 §20.10).
        if s[i..u1].contains(&b'?') {
            return Err(e());
        }
        (Uri::parse(v.slice(i..u1)).map_err(|_| e())?, u1)
    };
    let mut tag = None;
    let (ps, end) = scan_params_noting(s, end, what, |[na, nb, va, vb]| {
        if tag.is_none() && s[na..nb].eq_ignore_ascii_case(b"tag") {
            tag = Some([va, vb]);
        }
    })?;
    let next = element_tail(s, end, list, what)?;
    Ok((
        NameAddr {
            raw: v.slice(start..end),
            display,
            uri,
            params: Params(v.slice(ps..end)),
            // Offsets fit: a message is at most `MAX_MESSAGE_BYTES` (64 KB) long.
            tag: tag.map(|t: [usize; 2]| t.map(|x| (x - ps) as u32)),
        },
        next,
    ))
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: crate::Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`; the number must be below 2^31 (RFC 3261 §8.1.1.5).
    pub fn parse(v: &Bytes) -> Result<CSeq, ParseError> {
        CSeq::parse_range(v, 0, v.len())
    }

    fn parse_range(v: &Bytes, start: usize, end: usize) -> Result<CSeq, ParseError> {
        let e = || ParseError::Value("CSeq");
        let s = &v[..end.min(v.len())];
        let i = skip_lws(s, start);
        let mut j = i;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        let seq = parse_decimal(&s[i..j], 10).ok_or_else(e)?;
        if seq >= 1 << 31 {
            return Err(e());
        }
        let k = skip_lws(s, j);
        let me = token_end(s, k);
        if k == j || me == k || skip_lws(s, me) != s.len() {
            return Err(e());
        }
        Ok(CSeq {
            seq: seq as u32,
            method: Method::from_name_in(v, k, me),
        })
    }
}

/// One Contact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub addr: NameAddr,
}

impl Contact {
    /// `expires` contact parameter (`None` if absent or not a number that fits 32 bits).
    pub fn expires(&self) -> Option<u32> {
        let v = self.addr.params.get("expires")?;
        parse_decimal(&v, 10).and_then(|x| u32::try_from(x).ok())
    }
    /// `q` parameter in thousandths (q=0.5 -> 500).
    pub fn q(&self) -> Option<u16> {
        parse_qvalue(&self.addr.params.get("q")?)
    }
}

/// qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths.
fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(d) => (&v[..d], &v[d + 1..]),
        None => (v, &[][..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for k in 0..3 {
        thousandths = thousandths * 10 + frac.get(k).map_or(0, |d| u16::from(d - b'0'));
    }
    match int[0] {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The Contact header(s) of a message: `*` or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactList {
    Star,
    List(Vec<Contact>),
}

fn parse_contact_item(
    v: &Bytes,
    pos: usize,
    end: usize,
) -> Result<(Contact, Option<usize>), ParseError> {
    let (a, b) = trim_lws(v, pos, end);
    if &v[a..b] == b"*" {
        return Err(ParseError::Value("Contact"));
    }
    parse_name_addr_at(v, pos, end, true, "Contact").map(|(addr, next)| (Contact { addr }, next))
}

fn parse_route_item(
    v: &Bytes,
    pos: usize,
    end: usize,
) -> Result<(NameAddr, Option<usize>), ParseError> {
    parse_name_addr_at(v, pos, end, true, "Route")
}

fn parse_record_route_item(
    v: &Bytes,
    pos: usize,
    end: usize,
) -> Result<(NameAddr, Option<usize>), ParseError> {
    parse_name_addr_at(v, pos, end, true, "Record-Route")
}

type ItemParser<T> = fn(&Bytes, usize, usize) -> Result<(T, Option<usize>), ParseError>;

/// Iterator over the values of a comma-list header across all its lines, parsing each lazily.
/// After the first error it yields that error and stops.
pub struct HeaderValues<'a, T> {
    msg: &'a Message,
    name: HeaderName,
    next_slot: usize,
    /// Position of the next element and end of the current line, in `msg.buf`.
    cur: Option<(usize, usize)>,
    done: bool,
    parse: ItemParser<T>,
}

impl<'a, T> HeaderValues<'a, T> {
    fn new(msg: &'a Message, name: HeaderName, parse: ItemParser<T>) -> Self {
        HeaderValues {
            msg,
            name,
            next_slot: 0,
            cur: None,
            done: false,
            parse,
        }
    }
}

impl<T> Iterator for HeaderValues<'_, T> {
    type Item = Result<T, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if let Some((pos, end)) = self.cur.take() {
                return Some(match (self.parse)(&self.msg.buf, pos, end) {
                    Ok((t, next)) => {
                        self.cur = next.map(|np| (np, end));
                        Ok(t)
                    }
                    Err(e) => {
                        self.done = true;
                        Err(e)
                    }
                });
            }
            match self.msg.next_range(self.name, self.next_slot) {
                Some((idx, a, b)) => {
                    self.next_slot = idx + 1;
                    self.cur = Some((a, b));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

/// Every Via value of a message, in order.
pub type ViaIter<'a> = HeaderValues<'a, Via>;
/// Every Contact value of a message, in order (a `*` Contact is an error here; see
/// [`Message::contacts`]).
pub type ContactIter<'a> = HeaderValues<'a, Contact>;
/// Every Route or Record-Route value of a message, in order.
pub type NameAddrIter<'a> = HeaderValues<'a, NameAddr>;

/// RFC 1123 date as required by RFC 3261 §20.17: `Wkday, DD Mon YYYY HH:MM:SS GMT`.
fn check_date(v: &[u8]) -> bool {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let num = |a: &[u8], max: u64| parse_decimal(a, a.len()).is_some_and(|x| x <= max);
    v.len() == 29
        && DAYS.contains(&&v[0..3])
        && &v[3..5] == b", "
        && num(&v[5..7], 31)
        && v[7] == b' '
        && MONTHS.contains(&&v[8..11])
        && v[11] == b' '
        && num(&v[12..16], 9999)
        && v[16] == b' '
        && num(&v[17..19], 23)
        && v[19] == b':'
        && num(&v[20..22], 59)
        && v[22] == b':'
        && num(&v[23..25], 60)
        && &v[25..29] == b" GMT"
}

/// The kept result of `parse` (parsed on the first ask, errors kept too).
fn kept<T>(
    cell: &OnceLock<Result<T, ParseError>>,
    parse: impl FnOnce() -> Result<T, ParseError>,
) -> Result<&T, ParseError> {
    cell.get_or_init(parse).as_ref().map_err(Clone::clone)
}

fn scalar_u32(v: &[u8], what: &'static str) -> Result<u32, ParseError> {
    let (a, b) = trim_lws(v, 0, v.len());
    parse_decimal(&v[a..b], 10)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or(ParseError::Value(what))
}

impl Message {
    /// Iterates over every Via value in order without allocating.
    pub fn via_iter(&self) -> ViaIter<'_> {
        HeaderValues::new(self, HeaderName::Via, parse_via_item)
    }
    /// Iterates over every Contact value (not `*`) in order without allocating.
    pub fn contact_iter(&self) -> ContactIter<'_> {
        HeaderValues::new(self, HeaderName::Contact, parse_contact_item)
    }
    /// Iterates over every Route value in order without allocating.
    pub fn route_iter(&self) -> NameAddrIter<'_> {
        HeaderValues::new(self, HeaderName::Route, parse_route_item)
    }
    /// Iterates over every Record-Route value in order without allocating.
    pub fn record_route_iter(&self) -> NameAddrIter<'_> {
        HeaderValues::new(self, HeaderName::RecordRoute, parse_record_route_item)
    }

    /// Every Via value in order, across lines and comma lists.
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        self.via_iter().collect()
    }
    /// The top Via.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        self.top_via_ref().cloned()
    }
    /// [`Message::top_via`] without a copy: parsed on first use, then kept.
    pub fn top_via_ref(&self) -> Result<&Via, ParseError> {
        kept(&self.parsed.top_via, || {
            self.via_iter()
                .next()
                .unwrap_or(Err(ParseError::Value("Via")))
        })
    }
    pub fn from_hdr(&self) -> Result<NameAddr, ParseError> {
        self.from_ref().cloned()
    }
    /// [`Message::from_hdr`] without a copy: parsed on first use, then kept.
    pub fn from_ref(&self) -> Result<&NameAddr, ParseError> {
        kept(&self.parsed.from, || {
            self.name_addr_header(HeaderName::From, "From")
        })
    }
    pub fn to_hdr(&self) -> Result<NameAddr, ParseError> {
        self.to_ref().cloned()
    }
    /// [`Message::to_hdr`] without a copy: parsed on first use, then kept.
    pub fn to_ref(&self) -> Result<&NameAddr, ParseError> {
        kept(&self.parsed.to, || {
            self.name_addr_header(HeaderName::To, "To")
        })
    }
    fn name_addr_header(
        &self,
        name: HeaderName,
        what: &'static str,
    ) -> Result<NameAddr, ParseError> {
        let (a, b) = self.value_range(name).ok_or(ParseError::Value(what))?;
        parse_name_addr_at(&self.buf, a, b, false, what).map(|(n, _)| n)
    }
    /// The Call-ID (`word [ "@" word ]`: non-empty, no white space).
    pub fn call_id(&self) -> Result<Bytes, ParseError> {
        let (a, b) = self.call_id_range()?;
        Ok(self.buf.slice(a..b))
    }
    /// [`Message::call_id`] borrowed: no reference count is touched.
    pub fn call_id_ref(&self) -> Result<&[u8], ParseError> {
        let (a, b) = self.call_id_range()?;
        Ok(&self.buf[a..b])
    }
    fn call_id_range(&self) -> Result<(usize, usize), ParseError> {
        let found = self.parsed.call_id.get_or_init(|| {
            let (a, b) = self
                .value_range(HeaderName::CallId)
                .ok_or(ParseError::Value("Call-ID"))?;
            if a == b
                || self.buf[a..b]
                    .iter()
                    .any(|&c| is_lws(c) || c < 0x20 || c == 0x7f)
            {
                return Err(ParseError::Value("Call-ID"));
            }
            // Offsets into a message, which is far below 4 GB (MAX_MESSAGE_BYTES).
            Ok((a as u32, b as u32))
        });
        found.clone().map(|(a, b)| (a as usize, b as usize))
    }
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let (a, b) = self
            .value_range(HeaderName::CSeq)
            .ok_or(ParseError::Value("CSeq"))?;
        CSeq::parse_range(&self.buf, a, b)
    }
    /// `None` if absent.
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        self.header_ref(HeaderName::MaxForwards)
            .map(|v| scalar_u32(v, "Max-Forwards"))
            .transpose()
    }
    /// `None` if absent.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        self.header_ref(HeaderName::Expires)
            .map(|v| scalar_u32(v, "Expires"))
            .transpose()
    }
    /// `None` if no Contact header.
    pub fn contacts(&self) -> Result<Option<ContactList>, ParseError> {
        self.contacts_ref().map(|c| c.cloned())
    }
    /// [`Message::contacts`] without a copy: parsed on first use (by `validate` for a received
    /// request), then kept.
    pub fn contacts_ref(&self) -> Result<Option<&ContactList>, ParseError> {
        kept(&self.parsed.contacts, || {
            if !self.has_header(HeaderName::Contact) {
                return Ok(None);
            }
            if self.contact_star()? {
                return Ok(Some(ContactList::Star));
            }
            // Sized for the usual single Contact: `collect` would reserve four (1.4 KB, past
            // the allocator's per-thread cache, which made it the costliest allocation of a
            // REGISTER).
            let mut list = Vec::with_capacity(1);
            for c in self.contact_iter() {
                list.push(c?);
            }
            Ok(Some(ContactList::List(list)))
        })
        .map(Option::as_ref)
    }
    /// True for a lone `Contact: *`; an error if `*` is combined with other Contact values
    /// (RFC 3261 §10.2.2).
    fn contact_star(&self) -> Result<bool, ParseError> {
        let mut lines = 0;
        let mut star = false;
        for v in self.header_values(HeaderName::Contact) {
            lines += 1;
            let (a, b) = trim_lws(&v, 0, v.len());
            star |= &v[a..b] == b"*";
        }
        match (star, lines) {
            (false, _) => Ok(false),
            (true, 1) => Ok(true),
            (true, _) => Err(ParseError::Value("Contact")),
        }
    }
    /// Route values in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.route_iter().collect()
    }
    /// Record-Route values in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.record_route_iter().collect()
    }
    /// Parsed Request-URI of a request.
    pub fn request_uri(&self) -> Result<Uri, ParseError> {
        self.request_uri_ref().cloned()
    }
    /// [`Message::request_uri`] without a copy: parsed on first use, then kept.
    pub fn request_uri_ref(&self) -> Result<&Uri, ParseError> {
        kept(&self.parsed.request_uri, || match &self.start {
            StartLine::Request { uri, .. } => {
                Uri::parse(uri.clone()).map_err(|_| ParseError::Value("Request-URI"))
            }
            StartLine::Response { .. } => Err(ParseError::StartLine),
        })
    }
    /// Content-Type media type, lower-cased, without parameters (e.g. `application/sdp`).
    /// Borrowed from the buffer unless it has to be lower-cased.
    pub fn content_type(&self) -> Option<Bytes> {
        let v = self.header(HeaderName::ContentType)?;
        let e = v.iter().position(|&b| b == b';').unwrap_or(v.len());
        let (a, b) = trim_lws(&v, 0, e);
        let m = &v[a..b];
        if m.is_empty() {
            return None;
        }
        if m.iter().any(|&c| c.is_ascii_uppercase() || is_lws(c)) {
            Some(Bytes::from(
                m.iter()
                    .filter(|&&c| !is_lws(c))
                    .map(u8::to_ascii_lowercase)
                    .collect::<Vec<u8>>(),
            ))
        } else {
            Some(v.slice(a..b))
        }
    }
    /// True when option tag `tag` is in `Require` (case-insensitive).
    pub fn requires_option(&self, tag: &str) -> bool {
        self.tokens(crate::HeaderName::Require)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tag.as_bytes()))
    }

    /// True when option tag `tag` is in `Supported` or `Require` (case-insensitive).
    pub fn supports_option(&self, tag: &str) -> bool {
        self.requires_option(tag)
            || self
                .tokens(crate::HeaderName::Supported)
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tag.as_bytes()))
    }

    /// All option tags across every line of a comma-list header (Require, Supported, ...).
    pub fn tokens(&self, name: crate::HeaderName) -> Vec<Bytes> {
        let mut out = Vec::new();
        for v in self.header_values(name) {
            let mut i = 0;
            while i <= v.len() {
                // Split at commas outside quoted strings.
                let mut e = i;
                while e < v.len() && v[e] != b',' {
                    e = if v[e] == b'"' {
                        quoted_end(&v, e).unwrap_or(v.len())
                    } else {
                        e + 1
                    };
                }
                let (a, b) = trim_lws(&v, i, e);
                if a < b {
                    out.push(v.slice(a..b));
                }
                i = e + 1;
            }
        }
        out
    }

    /// The structural checks of RFC 3261 §8.2 / §16.3 that deserve a `400` (or `505` for
    /// [`ParseError::Version`]): strict start line, parseable Request-URI without URI headers,
    /// To/From/Call-ID/CSeq exactly once and parseable, at least one parseable Via, CSeq method
    /// equal to the request method, at most one Max-Forwards/Content-Length/Content-Type/Expires,
    /// scalars in range (Max-Forwards <= 255, Expires and contact expires fit 32 bits, status code
    /// 100..=699), parseable Contact/Route/Record-Route and an RFC 1123 `GMT` Date.
    pub fn validate(&self) -> Result<(), ParseError> {
        self.validate_start_line()?;
        for (h, what) in [
            (HeaderName::To, "To"),
            (HeaderName::From, "From"),
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::CSeq, "CSeq"),
        ] {
            if self.header_count(h) != 1 {
                return Err(ParseError::Count(what));
            }
        }
        if !self.has_header(HeaderName::Via) {
            return Err(ParseError::Count("Via"));
        }
        for (h, what) in [
            (HeaderName::MaxForwards, "Max-Forwards"),
            (HeaderName::ContentLength, "Content-Length"),
            (HeaderName::ContentType, "Content-Type"),
            (HeaderName::Expires, "Expires"),
        ] {
            if self.header_count(h) > 1 {
                return Err(ParseError::Count(what));
            }
        }
        self.from_ref()?;
        self.to_ref()?;
        self.call_id_ref()?;
        let cseq = self.cseq()?;
        if let Some(m) = self.method() {
            if *m != cseq.method {
                return Err(ParseError::Value("CSeq method"));
            }
        }
        // The top one through the cache: every layer above asks for it again.
        self.top_via_ref()?;
        for via in self.via_iter().skip(1) {
            via?;
        }
        if self.max_forwards()?.is_some_and(|m| m > 255) {
            return Err(ParseError::Value("Max-Forwards"));
        }
        self.expires()?;
        if let Some(ContactList::List(cs)) = self.contacts_ref()? {
            if cs
                .iter()
                .any(|c| c.addr.params.contains("expires") && c.expires().is_none())
            {
                return Err(ParseError::Value("Contact"));
            }
        }
        for r in self.route_iter().chain(self.record_route_iter()) {
            r?;
        }
        if let Some(d) = self.other_header("Date") {
            if !check_date(&d) {
                return Err(ParseError::Value("Date"));
            }
        }
        Ok(())
    }

    fn validate_start_line(&self) -> Result<(), ParseError> {
        let line = self.start_line_raw();
        match &self.start {
            StartLine::Request { version, .. } => {
                // Exactly `Method SP Request-URI SP SIP-Version`: no extra or trailing SP.
                let mut parts = 0;
                for p in line.split(|&b| b == b' ') {
                    parts += 1;
                    if p.is_empty() {
                        return Err(ParseError::StartLine);
                    }
                }
                if parts != 3 {
                    return Err(ParseError::StartLine);
                }
                if !version.eq_ignore_ascii_case(b"SIP/2.0") {
                    return Err(ParseError::Version);
                }
                let u = self.request_uri_ref()?;
                // URI headers are not allowed in a Request-URI (RFC 3261 §19.1.1).
                if u.is_sip() && !u.headers.is_empty() {
                    return Err(ParseError::Value("Request-URI"));
                }
            }
            StartLine::Response { version, code, .. } => {
                if !version.eq_ignore_ascii_case(b"SIP/2.0") {
                    return Err(ParseError::Version);
                }
                // `SIP-Version SP Status-Code SP Reason-Phrase`: one SP before the code.
                let code_at = version.len() + 1;
                if !(100..=699).contains(code)
                    || line.get(version.len()) != Some(&b' ')
                    || !line.get(code_at).is_some_and(u8::is_ascii_digit)
                {
                    return Err(ParseError::StartLine);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod noted_params_tests {
    use super::*;

    /// The first span of `name` found by scanning the raw list, as `Params::get` does.
    fn scanned(p: &Params, name: &str) -> Option<(usize, usize, usize, usize)> {
        p.spans()
            .find(|&(a, b, _, _)| p.0[a..b].eq_ignore_ascii_case(name.as_bytes()))
    }

    #[test]
    fn via_params_noted_while_parsing_match_a_scan_of_the_list() {
        let vias = [
            "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1;rport",
            "SIP/2.0/UDP 198.51.100.7 ; BRANCH = z9hG4bK2 ; RPort=5062 ; Received=203.0.113.9",
            "SIP/2.0/TCP [2001:db8::1]:5061;received=[2001:db8::9];branch=z9hG4bK3;rport",
            "SIP/2.0/UDP h.example;x=\"a;rport=1\";branch=z9hG4bK4;branch=second;rport;rport=7",
            "SIP/2.0/UDP h.example;maddr=203.0.113.1;ttl=1",
            "SIP/2.0/UDP h.example",
            "SIP/2.0/UDP h.example;received;rport=abc , SIP/2.0/UDP other;branch=z9hG4bK5",
        ];
        for raw in vias {
            let v = Bytes::from(raw);
            let via = parse_via_at(&v, 0, v.len()).expect(raw).via;
            assert_eq!(via.branch(), via.params.get("branch"), "{raw}");
            assert_eq!(via.rport_spans(), scanned(&via.params, "rport"), "{raw}");
            assert_eq!(
                via.received_spans(),
                scanned(&via.params, "received"),
                "{raw}"
            );
            let rport = via.params.get("rport").map(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
            });
            // A value that is not a port counts as absent.
            let rport = match rport {
                Some(None) if !via.params.get("rport").unwrap().is_empty() => None,
                r => r,
            };
            assert_eq!(via.rport(), rport, "{raw}");
        }
        let v = Bytes::from_static(b"SIP/2.0/UDP a.example;rport=5062;received=[2001:db8::9]");
        let via = parse_via_at(&v, 0, v.len()).unwrap().via;
        assert_eq!(via.rport(), Some(Some(5062)));
        assert_eq!(via.received(), "2001:db8::9".parse().ok());
    }

    #[test]
    fn tag_noted_while_parsing_matches_a_scan_of_the_list() {
        for raw in [
            "<sip:a@example.com>;tag=1",
            "\"A;tag=x\" <sip:a@example.com;tag=uri-param>;foo=\"tag=q\";TAG = 2;tag=3",
            "sip:a@example.com;tag=4",
            "<sip:a@example.com>",
            "<sip:a@example.com>;tagx=5;xtag=6",
        ] {
            let na = NameAddr::parse(&Bytes::from(raw)).expect(raw);
            assert_eq!(na.tag(), na.params.get("tag"), "{raw}");
        }
        let na = NameAddr::parse(&Bytes::from_static(b"<sip:a@b>;TAG = 2;tag=3")).unwrap();
        assert_eq!(na.tag().as_deref(), Some(&b"2"[..]));
    }
}
