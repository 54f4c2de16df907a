//! HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760; RFC 2069 without `qop`).
//!
//! Sans-IO and clock-free: every function that needs the time takes `now`.
//!
//! * Parsing and formatting of `Digest` challenges (`WWW-Authenticate`, `Proxy-Authenticate`)
//!   and credentials (`Authorization`, `Proxy-Authorization`): [`Challenge`], [`Credentials`].
//! * Hash helpers: [`ha1`], [`compute_response`].
//! * Server side: [`DigestServer`] mints stateless, authenticated nonces (HMAC-SHA-256 over a
//!   timestamp and a counter, keyed by a caller-supplied secret) and verifies responses, with a
//!   bounded table for nonce-count (`nc`) replay detection. See [`DigestServer::verify`] for the
//!   order of checks and what each [`VerifyOutcome`] means.
//! * Client side: [`DigestClient`] answers `401`/`407` challenges.

use sha2::{Digest as _, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Algorithms and hashing
// ---------------------------------------------------------------------------------------------

/// The hash function behind an [`Algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Md5,
    Sha256,
}

impl HashAlg {
    /// Lower-case hex digest of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            HashAlg::Md5 => to_hex(&md5::compute(data).0),
            HashAlg::Sha256 => to_hex(&Sha256::digest(data)),
        }
    }

    /// [`Self::hex`] of the concatenation of `parts`, without building it: the digest inputs
    /// are `a:b:c` joins hashed per request, so this saves a buffer and its growth each time.
    pub fn hex_parts(self, parts: &[&[u8]]) -> HexDigest {
        let mut out = HexDigest {
            buf: [0; 64],
            len: 0,
        };
        match self {
            HashAlg::Md5 => {
                let mut c = md5::Context::new();
                md5_consume_parts(&mut c, parts);
                hex_into(&c.compute().0, &mut out.buf[..32]);
                out.len = 32;
            }
            HashAlg::Sha256 => {
                let mut h = Sha256::new();
                for p in parts {
                    h.update(p);
                }
                hex_into(&h.finalize(), &mut out.buf[..64]);
                out.len = 64;
            }
        }
        out
    }

    /// Length of the hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlg::Md5 => 32,
            HashAlg::Sha256 => 64,
        }
    }
}

/// A lower-case hex digest on the stack ([`HashAlg::hex_parts`]).
#[derive(Clone, Copy)]
pub struct HexDigest {
    buf: [u8; 64],
    len: usize,
}

impl HexDigest {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A digest `algorithm` value this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (also what an absent `algorithm` parameter means).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an algorithm token, case-insensitively; `None` for unsupported ones (e.g.
    /// `SHA-512-256`).
    pub fn parse(s: &str) -> Option<Algorithm> {
        let s = s.trim();
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// The underlying hash.
    pub fn hash(self) -> HashAlg {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => HashAlg::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => HashAlg::Sha256,
        }
    }

    /// True for the `-sess` variants (HA1 also covers nonce and cnonce).
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Preference when a client picks among several challenges (higher is better).
    fn strength(self) -> u8 {
        match self {
            Algorithm::Sha256 => 4,
            Algorithm::Sha256Sess => 3,
            Algorithm::Md5 => 2,
            Algorithm::Md5Sess => 1,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Quality of protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `auth`: authentication of method and digest-uri.
    Auth,
    /// `auth-int`: also covers the message body.
    AuthInt,
}

impl Qop {
    /// Parses `auth` / `auth-int` case-insensitively.
    pub fn parse(s: &str) -> Option<Qop> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auth") {
            Some(Qop::Auth)
        } else if s.eq_ignore_ascii_case("auth-int") {
            Some(Qop::AuthInt)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// What a user's digest is keyed with: the plain password, or a precomputed
/// `HA1 = H(user:realm:password)` (which only verifies algorithms using that hash, and only for
/// the realm it was made for). A configured password itself is a [`crate::Secret`].
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    Password(String),
    /// Lower-case hex `H(username:realm:password)` with the given hash.
    Ha1 {
        hash: HashAlg,
        hex: String,
    },
    /// A password with its MD5 HA1 for one `username:realm` made once ([`Key::prepared`]): a
    /// registrar verifies every REGISTER and INVITE of its users in one realm, and the HA1 was
    /// one of the three MD5 computations of each verification. Any other username, realm or
    /// algorithm uses the password.
    Prepared {
        password: String,
        /// `username:realm`, what `md5` was made for.
        made_for: Box<str>,
        /// Lower-case hex MD5 HA1.
        md5: [u8; 32],
    },
}

impl fmt::Debug for Key {
    /// Never prints the secret itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Password(_) => f.write_str("Key::Password(..)"),
            Key::Ha1 { hash, .. } => write!(f, "Key::Ha1({hash:?}, ..)"),
            Key::Prepared { .. } => f.write_str("Key::Prepared(..)"),
        }
    }
}

impl Key {
    /// True if this secret can answer or verify algorithms using `hash`.
    pub fn supports(&self, hash: HashAlg) -> bool {
        match self {
            Key::Password(_) | Key::Prepared { .. } => true,
            Key::Ha1 { hash: h, .. } => *h == hash,
        }
    }

    /// A password key with its MD5 HA1 for `username` and `realm` computed now (see
    /// [`Key::Prepared`]); other keys are returned as they are.
    pub fn prepared(self, username: &str, realm: &str) -> Key {
        match self {
            Key::Password(password) | Key::Prepared { password, .. } => {
                let hex = ha1_hex(HashAlg::Md5, username, realm, &password);
                let mut md5 = [0u8; 32];
                md5.copy_from_slice(hex.as_bytes());
                Key::Prepared {
                    password,
                    made_for: format!("{username}:{realm}").into_boxed_str(),
                    md5,
                }
            }
            other => other,
        }
    }

    /// The password, if this key has one.
    pub fn password(&self) -> Option<&str> {
        match self {
            Key::Password(p) | Key::Prepared { password: p, .. } => Some(p),
            Key::Ha1 { .. } => None,
        }
    }

    /// [`Self::ha1`] without allocating for a password (the verify path).
    fn ha1_digest<'a>(&'a self, hash: HashAlg, username: &str, realm: &str) -> Option<Ha1<'a>> {
        match self {
            Key::Prepared { made_for, md5, .. }
                if hash == HashAlg::Md5 && is_username_realm(made_for, username, realm) =>
            {
                Some(Ha1::Stored(std::str::from_utf8(md5).unwrap_or_default()))
            }
            Key::Password(p) | Key::Prepared { password: p, .. } => {
                Some(Ha1::Computed(ha1_hex(hash, username, realm, p)))
            }
            Key::Ha1 { hash: h, hex } if *h == hash => {
                if hex.bytes().any(|b| b.is_ascii_uppercase()) {
                    Some(Ha1::Lowered(hex.to_ascii_lowercase()))
                } else {
                    Some(Ha1::Stored(hex))
                }
            }
            Key::Ha1 { .. } => None,
        }
    }

    /// The (non-sess) HA1 for `hash`, or `None` if a precomputed HA1 uses another hash.
    pub fn ha1(&self, hash: HashAlg, username: &str, realm: &str) -> Option<String> {
        match self {
            Key::Password(p) | Key::Prepared { password: p, .. } => {
                Some(ha1(hash, username, realm, p))
            }
            Key::Ha1 { hash: h, hex } if *h == hash => Some(hex.to_ascii_lowercase()),
            Key::Ha1 { .. } => None,
        }
    }
}

/// `H(username:realm:password)` as hex, on the stack.
fn ha1_hex(hash: HashAlg, username: &str, realm: &str, password: &str) -> HexDigest {
    hash.hex_parts(&[
        username.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ])
}

/// True if `made_for` is exactly `username:realm`.
fn is_username_realm(made_for: &str, username: &str, realm: &str) -> bool {
    made_for.len() == username.len() + 1 + realm.len()
        && made_for.starts_with(username)
        && made_for.as_bytes()[username.len()] == b':'
        && made_for.ends_with(realm)
}

/// An HA1 for verification: computed from a password, or the stored one.
enum Ha1<'a> {
    Computed(HexDigest),
    Stored(&'a str),
    Lowered(String),
}

impl AsRef<str> for Ha1<'_> {
    fn as_ref(&self) -> &str {
        match self {
            Ha1::Computed(d) => d.as_str(),
            Ha1::Stored(s) => s,
            Ha1::Lowered(s) => s,
        }
    }
}

/// `H(username ":" realm ":" password)`, lower-case hex.
pub fn ha1(hash: HashAlg, username: &str, realm: &str, password: &str) -> String {
    ha1_hex(hash, username, realm, password).as_str().to_owned()
}

/// The `qop`-related inputs of a response: `None` for RFC 2069 style (no qop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QopInput<'a> {
    pub qop: Qop,
    /// The `nc` value exactly as sent (8 hex digits).
    pub nc: &'a str,
    pub cnonce: &'a str,
}

/// Computes `request-digest` (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1).
///
/// `ha1_base` is the plain `H(user:realm:password)` for `algorithm.hash()`; for `-sess`
/// algorithms the session HA1 `H(ha1_base:nonce:cnonce)` is derived here. Returns `None` when
/// the inputs cannot form a response (a `-sess` algorithm without qop/cnonce).
pub fn compute_response(
    algorithm: Algorithm,
    ha1_base: &str,
    nonce: &str,
    qop: Option<QopInput<'_>>,
    method: &str,
    digest_uri: &str,
    body: &[u8],
) -> Option<String> {
    response_digest(algorithm, ha1_base, nonce, qop, method, digest_uri, body)
        .map(|d| d.as_str().to_owned())
}

/// [`compute_response`] without allocating: every intermediate hash is hashed from its parts.
fn response_digest(
    algorithm: Algorithm,
    ha1_base: &str,
    nonce: &str,
    qop: Option<QopInput<'_>>,
    method: &str,
    digest_uri: &str,
    body: &[u8],
) -> Option<HexDigest> {
    let h = algorithm.hash();
    let sess;
    let ha1: &[u8] = if algorithm.is_sess() {
        let q = qop?;
        sess = h.hex_parts(&[
            ha1_base.as_bytes(),
            b":",
            nonce.as_bytes(),
            b":",
            q.cnonce.as_bytes(),
        ]);
        sess.as_bytes()
    } else {
        ha1_base.as_bytes()
    };
    let ha2 = match qop.map(|q| q.qop) {
        Some(Qop::AuthInt) => {
            let hb = h.hex_parts(&[body]);
            h.hex_parts(&[
                method.as_bytes(),
                b":",
                digest_uri.as_bytes(),
                b":",
                hb.as_bytes(),
            ])
        }
        _ => h.hex_parts(&[method.as_bytes(), b":", digest_uri.as_bytes()]),
    };
    Some(match qop {
        Some(q) => h.hex_parts(&[
            ha1,
            b":",
            nonce.as_bytes(),
            b":",
            q.nc.as_bytes(),
            b":",
            q.cnonce.as_bytes(),
            b":",
            q.qop.as_str().as_bytes(),
            b":",
            ha2.as_bytes(),
        ]),
        None => h.hex_parts(&[ha1, b":", nonce.as_bytes(), b":", ha2.as_bytes()]),
    })
}

/// Parses an `nc` value: 1 to 8 hexadecimal digits (RFC 2617 specifies exactly 8; shorter ones
/// are accepted since the hash uses the string as sent). `0000000a` is 10.
pub fn parse_nc(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// Header names per use
// ---------------------------------------------------------------------------------------------

/// Which pair of headers an authentication exchange uses: `401` + `WWW-Authenticate` /
/// `Authorization` (registrars, UAS) or `407` + `Proxy-Authenticate` / `Proxy-Authorization`
/// (proxies, e.g. INVITE through the PBX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    Www,
    Proxy,
}

impl AuthKind {
    /// `401` or `407`.
    pub fn status(self) -> crate::StatusCode {
        match self {
            AuthKind::Www => crate::StatusCode::UNAUTHORIZED,
            AuthKind::Proxy => crate::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }
    /// The status's reason phrase.
    pub fn reason(self) -> &'static str {
        self.status().reason()
    }
    /// Header carrying the challenge in the response.
    pub fn challenge_header(self) -> &'static str {
        match self {
            AuthKind::Www => "WWW-Authenticate",
            AuthKind::Proxy => "Proxy-Authenticate",
        }
    }
    /// Header carrying the credentials in the request, as text.
    pub fn credentials_header(self) -> &'static str {
        match self {
            AuthKind::Www => "Authorization",
            AuthKind::Proxy => "Proxy-Authorization",
        }
    }
    /// Header carrying the credentials in the request.
    pub fn credentials_header_name(self) -> crate::HeaderName {
        match self {
            AuthKind::Www => crate::HeaderName::Authorization,
            AuthKind::Proxy => crate::HeaderName::ProxyAuthorization,
        }
    }
    /// The kind matching a challenge response status (`401` or `407`).
    pub fn from_status(code: u16) -> Option<AuthKind> {
        match code {
            401 => Some(AuthKind::Www),
            407 => Some(AuthKind::Proxy),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing auth-params
// ---------------------------------------------------------------------------------------------

/// Why a challenge or credentials value was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// Another scheme than `Digest` (e.g. `Basic`); answer with a Digest challenge.
    #[error("unsupported authentication scheme {0:?}")]
    NotDigest(String),
    /// Syntax error or a required parameter missing or invalid.
    #[error("malformed digest {0}")]
    Malformed(&'static str),
}

/// At most this many auth-params are accepted in one header value.
const MAX_PARAMS: usize = 64;

/// One parsed auth-param: its name as sent (compared case-insensitively) and unescaped value.
#[derive(Debug)]
struct RawParam<'a> {
    name: &'a [u8],
    /// Borrowed from the header unless unescaping changed it: a REGISTER's credentials carry
    /// ten values, and copying each was a fifth of the registrar's allocations.
    value: Cow<'a, str>,
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Splits `scheme 1*LWS auth-param *(COMMA auth-param)` into the scheme and its params.
/// Param names are lower-cased; quoted-string values are unescaped. Duplicate names, unterminated
/// quotes, non-UTF-8 text are malformed; empty list elements (`,,`) are tolerated.
fn parse_auth_value<'a>(value: &'a [u8]) -> Result<Vec<RawParam<'a>>, DigestParseError> {
    let mut i = 0;
    while i < value.len() && is_lws(value[i]) {
        i += 1;
    }
    let start = i;
    while i < value.len() && is_token_char(value[i]) {
        i += 1;
    }
    let scheme = &value[start..i];
    if scheme.is_empty() {
        return Err(DigestParseError::Malformed("scheme"));
    }
    if !scheme.eq_ignore_ascii_case(b"digest") {
        return Err(DigestParseError::NotDigest(
            String::from_utf8_lossy(scheme).into_owned(),
        ));
    }
    if i < value.len() && !is_lws(value[i]) {
        return Err(DigestParseError::Malformed("scheme"));
    }
    // Credentials carry about ten parameters: one allocation for the list.
    let mut params: Vec<RawParam> = Vec::with_capacity(12);
    loop {
        // Skip whitespace and empty list elements.
        while i < value.len() && (is_lws(value[i]) || value[i] == b',') {
            i += 1;
        }
        if i >= value.len() {
            break;
        }
        let ns = i;
        while i < value.len() && is_token_char(value[i]) {
            i += 1;
        }
        if ns == i {
            return Err(DigestParseError::Malformed("parameter name"));
        }
        let name = &value[ns..i];
        while i < value.len() && is_lws(value[i]) {
            i += 1;
        }
        if i >= value.len() || value[i] != b'=' {
            return Err(DigestParseError::Malformed("parameter"));
        }
        i += 1;
        while i < value.len() && is_lws(value[i]) {
            i += 1;
        }
        let utf8 =
            |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| DigestParseError::Malformed("UTF-8"));
        let value_str: Cow<'a, str> = if i < value.len() && value[i] == b'"' {
            i += 1;
            let vs = i;
            let close = value[i..].iter().position(|&c| c == b'"' || c == b'\\');
            match close {
                // The usual value: no escape before the closing quote, borrowed as it is.
                Some(n) if value[i + n] == b'"' => {
                    i += n + 1;
                    Cow::Borrowed(utf8(&value[vs..vs + n])?)
                }
                _ => Cow::Owned(
                    String::from_utf8(unescape_quoted(value, &mut i)?)
                        .map_err(|_| DigestParseError::Malformed("UTF-8"))?,
                ),
            }
        } else {
            // Token value; lenient: anything up to a comma or whitespace (some clients send an
            // unquoted `uri=sip:host`).
            let vs = i;
            while i < value.len() && value[i] != b',' && !is_lws(value[i]) && value[i] != b'"' {
                i += 1;
            }
            if vs == i {
                return Err(DigestParseError::Malformed("parameter value"));
            }
            Cow::Borrowed(utf8(&value[vs..i])?)
        };
        while i < value.len() && is_lws(value[i]) {
            i += 1;
        }
        if i < value.len() && value[i] != b',' {
            return Err(DigestParseError::Malformed("parameter separator"));
        }
        if params.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
            return Err(DigestParseError::Malformed("duplicate parameter"));
        }
        if params.len() >= MAX_PARAMS {
            return Err(DigestParseError::Malformed("too many parameters"));
        }
        params.push(RawParam {
            name,
            value: value_str,
        });
    }
    if params.is_empty() {
        return Err(DigestParseError::Malformed("no parameters"));
    }
    Ok(params)
}

/// The rest of a quoted string with escapes, from `*i` (just after the opening quote) through
/// the closing quote, unescaped; `*i` ends after the closing quote.
fn unescape_quoted(value: &[u8], i: &mut usize) -> Result<Vec<u8>, DigestParseError> {
    // Sized for the value up to the next quote (a lower bound).
    let guess = value[*i..].iter().position(|&c| c == b'"').unwrap_or(0);
    let mut out = Vec::with_capacity(guess);
    loop {
        match value.get(*i) {
            None => return Err(DigestParseError::Malformed("unterminated quoted string")),
            Some(b'"') => {
                *i += 1;
                return Ok(out);
            }
            Some(b'\\') => match value.get(*i + 1) {
                Some(&c) if c != b'\r' && c != b'\n' => {
                    out.push(c);
                    *i += 2;
                }
                _ => return Err(DigestParseError::Malformed("quoted-pair")),
            },
            Some(&c) => {
                out.push(c);
                *i += 1;
            }
        }
    }
}

fn take_owned(params: &mut Vec<RawParam>, name: &str) -> Option<String> {
    take(params, name).map(Cow::into_owned)
}

fn take<'a>(params: &mut Vec<RawParam<'a>>, name: &str) -> Option<Cow<'a, str>> {
    let pos = params
        .iter()
        .position(|p| p.name.eq_ignore_ascii_case(name.as_bytes()))?;
    Some(params.swap_remove(pos).value)
}

/// Writes an unquoted token value (`algorithm`, `qop`, `nc`) with CR and LF dropped, like
/// [`push_quoted`]: parsed values may carry them (a quoted-string may), a header value may not.
fn push_token(out: &mut String, value: &str) {
    out.extend(value.chars().filter(|c| *c != '\r' && *c != '\n'));
}

/// Writes `"value"` with `"` and `\` escaped.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    // Usual values (nonces, realms, URIs) need no escape: one copy.
    if !value
        .bytes()
        .any(|b| matches!(b, b'"' | b'\\' | b'\r' | b'\n'))
    {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        // CR and LF cannot appear in a header value; drop them rather than break the message.
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// Challenge
// ---------------------------------------------------------------------------------------------

/// A `Digest` challenge (`WWW-Authenticate` / `Proxy-Authenticate` value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub domain: Option<String>,
    /// `stale=true`: the previous credentials were right but their nonce is no longer accepted.
    pub stale: bool,
    /// The `algorithm` token as sent; `None` means MD5.
    pub algorithm: Option<String>,
    /// The `qop` options offered, as sent (lower-cased, e.g. `["auth", "auth-int"]`); empty means
    /// RFC 2069 style (no qop).
    pub qop: Vec<String>,
    /// RFC 7616 `userhash=true`.
    pub userhash: bool,
}

impl Challenge {
    /// Parses a challenge header value. Unknown parameters are ignored; `realm` and `nonce` are
    /// required.
    pub fn parse(value: impl AsRef<[u8]>) -> Result<Challenge, DigestParseError> {
        let mut p = parse_auth_value(value.as_ref())?;
        let realm = take_owned(&mut p, "realm").ok_or(DigestParseError::Malformed("realm"))?;
        let nonce = take_owned(&mut p, "nonce").ok_or(DigestParseError::Malformed("nonce"))?;
        let qop = take(&mut p, "qop")
            .map(|q| {
                q.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Challenge {
            realm,
            nonce,
            opaque: take_owned(&mut p, "opaque"),
            domain: take_owned(&mut p, "domain"),
            stale: take(&mut p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            algorithm: take_owned(&mut p, "algorithm"),
            qop,
            userhash: take(&mut p, "userhash").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The algorithm, `Some(Md5)` when absent, `None` when unsupported.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match &self.algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        }
    }

    /// True if `qop` offers this option.
    pub fn offers(&self, qop: Qop) -> bool {
        self.qop.iter().any(|q| q == qop.as_str())
    }

    /// Formats the header value: `Digest realm="..", nonce="..", ...`.
    pub fn to_header_value(&self) -> String {
        let mut s = String::with_capacity(64 + self.realm.len() + self.nonce.len());
        s.push_str("Digest realm=");
        push_quoted(&mut s, &self.realm);
        if let Some(d) = &self.domain {
            s.push_str(", domain=");
            push_quoted(&mut s, d);
        }
        s.push_str(", nonce=");
        push_quoted(&mut s, &self.nonce);
        if let Some(o) = &self.opaque {
            s.push_str(", opaque=");
            push_quoted(&mut s, o);
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        if let Some(a) = &self.algorithm {
            s.push_str(", algorithm=");
            push_token(&mut s, a);
        }
        if !self.qop.is_empty() {
            s.push_str(", qop=");
            push_quoted(&mut s, &self.qop.join(","));
        }
        if self.userhash {
            s.push_str(", userhash=true");
        }
        s
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

/// `Digest` credentials (`Authorization` / `Proxy-Authorization` value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    /// The digest-uri exactly as the client sent it (what it hashed).
    pub uri: Cow<'a, str>,
    /// The request-digest, hex.
    pub response: Cow<'a, str>,
    /// The `algorithm` token as sent; `None` means MD5.
    pub algorithm: Option<Cow<'a, str>>,
    pub cnonce: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
    /// The `qop` token as sent (`auth`, `auth-int`), `None` for RFC 2069 style.
    pub qop: Option<Cow<'a, str>>,
    /// The `nc` value as sent (hex).
    pub nc: Option<Cow<'a, str>>,
    /// RFC 7616 `userhash=true`.
    pub userhash: bool,
}

impl<'a> Credentials<'a> {
    /// Parses a credentials header value. Unknown parameters are ignored; `username`, `realm`,
    /// `nonce`, `uri` and `response` are required, and `qop` requires `cnonce` and a valid `nc`.
    /// Values are borrowed from `value` unless they had escapes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        value: &'a T,
    ) -> Result<Credentials<'a>, DigestParseError> {
        let mut p = parse_auth_value(value.as_ref())?;
        let m = DigestParseError::Malformed;
        let c = Credentials {
            username: take(&mut p, "username").ok_or(m("username"))?,
            realm: take(&mut p, "realm").ok_or(m("realm"))?,
            nonce: take(&mut p, "nonce").ok_or(m("nonce"))?,
            uri: take(&mut p, "uri").ok_or(m("uri"))?,
            response: take(&mut p, "response").ok_or(m("response"))?,
            algorithm: take(&mut p, "algorithm"),
            cnonce: take(&mut p, "cnonce"),
            opaque: take(&mut p, "opaque"),
            qop: take(&mut p, "qop"),
            nc: take(&mut p, "nc"),
            userhash: take(&mut p, "userhash").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        };
        if c.qop.is_some() {
            if c.cnonce.as_deref().is_none_or(str::is_empty) {
                return Err(m("cnonce"));
            }
            if c.nc.as_deref().and_then(parse_nc).is_none() {
                return Err(m("nc"));
            }
        }
        Ok(c)
    }

    /// The algorithm, `Some(Md5)` when absent, `None` when unsupported.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match &self.algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        }
    }

    /// The nonce count as a number.
    pub fn nc_value(&self) -> Option<u32> {
        self.nc.as_deref().and_then(parse_nc)
    }

    /// Formats the header value: `Digest username="..", realm="..", ...`.
    pub fn to_header_value(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("Digest username=");
        push_quoted(&mut s, &self.username);
        s.push_str(", realm=");
        push_quoted(&mut s, &self.realm);
        s.push_str(", nonce=");
        push_quoted(&mut s, &self.nonce);
        s.push_str(", uri=");
        push_quoted(&mut s, &self.uri);
        s.push_str(", response=");
        push_quoted(&mut s, &self.response);
        if let Some(a) = &self.algorithm {
            s.push_str(", algorithm=");
            push_token(&mut s, a);
        }
        if let Some(c) = &self.cnonce {
            s.push_str(", cnonce=");
            push_quoted(&mut s, c);
        }
        if let Some(o) = &self.opaque {
            s.push_str(", opaque=");
            push_quoted(&mut s, o);
        }
        if let Some(q) = &self.qop {
            s.push_str(", qop=");
            push_token(&mut s, q);
        }
        if let Some(nc) = &self.nc {
            s.push_str(", nc=");
            push_token(&mut s, nc);
        }
        if self.userhash {
            s.push_str(", userhash=true");
        }
        s
    }
}

impl fmt::Display for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Settings of a [`DigestServer`].
#[derive(Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// Key for the nonce MAC: at least 16 random bytes, e.g. from the OS at start-up. Nonces
    /// minted under another key (e.g. before a restart) verify as [`VerifyOutcome::Stale`].
    pub secret: Vec<u8>,
    /// How long a nonce is accepted after it was issued.
    pub nonce_ttl: Duration,
    /// Algorithms challenged with, most preferred first (one challenge each, RFC 8760 §2.4);
    /// responses with other algorithms are rejected as malformed. Empty means `[Md5]`.
    pub algorithms: Vec<Algorithm>,
    /// Offer and accept `qop=auth` (and `auth-int`, when the client picks it).
    pub qop: bool,
    /// Accept RFC 2069 responses without qop (old doorbells, intercoms). Each such nonce is
    /// single-use: a second use is [`VerifyOutcome::Replay`].
    pub allow_no_qop: bool,
    /// Capacity of the nonce-count table (nonces that authenticated at least once).
    pub max_tracked_nonces: usize,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("realm", &self.realm)
            .field("secret", &"..")
            .field("nonce_ttl", &self.nonce_ttl)
            .field("algorithms", &self.algorithms)
            .field("qop", &self.qop)
            .field("allow_no_qop", &self.allow_no_qop)
            .field("max_tracked_nonces", &self.max_tracked_nonces)
            .finish()
    }
}

impl ServerConfig {
    /// MD5 with qop=auth, RFC 2069 accepted, 5 minute nonces, 10 000 tracked nonces.
    pub fn new(realm: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        ServerConfig {
            realm: realm.into(),
            secret: secret.into(),
            nonce_ttl: Duration::from_secs(300),
            algorithms: vec![Algorithm::Md5],
            qop: true,
            allow_no_qop: true,
            max_tracked_nonces: 10_000,
        }
    }
}

/// The result of verifying credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The response is right, the nonce fresh and authentic, the nc new.
    Ok { username: String },
    /// The response is right but the nonce expired, was minted under another key (restart) or
    /// its nc state was evicted: challenge again with `stale=true`. Not a failure.
    Stale,
    /// The response is right for a fresh nonce, but its nc was not greater than the last one
    /// accepted for that nonce (or an RFC 2069 nonce was used twice): a replay, or a device that
    /// resends old credentials. Challenge again with `stale=true`; not a password failure.
    Replay,
    /// Wrong response (wrong password, wrong digest-uri/method, or a secret that cannot verify
    /// the algorithm).
    BadResponse,
    /// No such user (the caller passed no secret).
    UnknownUser,
    /// Syntactically usable but not acceptable: unsupported or not offered algorithm, invalid
    /// nc/qop, sess without qop, no qop while RFC 2069 is disabled.
    Malformed,
    /// The credentials are for another realm.
    WrongRealm,
}

/// Issues nonces and verifies digest responses.
///
/// A nonce is `hex(ts_ms) hex(counter) hex(mac)` (64 hex digits), where `ts_ms` is milliseconds
/// since the server's epoch instant and `mac` the first 128 bits of
/// HMAC-SHA-256(secret, realm ":" ts_ms ":" counter). Authenticity and expiry thus need no
/// per-nonce state; only nonces that authenticated successfully enter the bounded nc table.
pub struct DigestServer {
    cfg: ServerConfig,
    /// The nonce MAC's key, its pads absorbed once.
    hmac: HmacSha256,
    epoch: Instant,
    counter: u64,
    /// nonce counter -> (issue time ms, last nc accepted; 0 for an RFC 2069 use).
    nc_table: BTreeMap<u64, (u64, u32)>,
    /// Highest counter evicted from `nc_table` while its nonce was still fresh: such nonces (and
    /// older ones) are no longer trusted for nc tracking and verify as stale.
    evicted_upto: Option<u64>,
    /// The MD5 HA1 an unknown user is checked against, made once: a registrar's users carry
    /// theirs made once too ([`Key::Prepared`]), so both paths skip that hash alike.
    dummy_md5: HexDigest,
}

impl fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestServer")
            .field("cfg", &self.cfg)
            .field("counter", &self.counter)
            .field("tracked_nonces", &self.nc_table.len())
            .finish()
    }
}

const NONCE_HEX_LEN: usize = 64;

impl DigestServer {
    /// Creates a server; `now` becomes the epoch of nonce timestamps.
    pub fn new(mut cfg: ServerConfig, now: Instant) -> Self {
        if cfg.algorithms.is_empty() {
            cfg.algorithms.push(Algorithm::Md5);
        }
        cfg.max_tracked_nonces = cfg.max_tracked_nonces.max(1);
        DigestServer {
            hmac: HmacSha256::new(&cfg.secret),
            dummy_md5: ha1_hex(HashAlg::Md5, "", &cfg.realm, NO_SUCH_USER),
            cfg,
            epoch: now,
            counter: 0,
            nc_table: BTreeMap::new(),
            evicted_upto: None,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }

    /// Number of nonces in the nc table (bounded by `max_tracked_nonces`).
    pub fn tracked_nonces(&self) -> usize {
        self.nc_table.len()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The nonce's MAC over `realm:ts:ctr` (hex of ts and ctr, 16 digits each), in hex: the
    /// first 16 octets of HMAC-SHA256 under the server secret.
    fn mac(&self, ts: u64, ctr: u64) -> [u8; 32] {
        let tag = self.hmac.mac_parts(&[
            self.cfg.realm.as_bytes(),
            b":",
            &hex16(ts),
            b":",
            &hex16(ctr),
        ]);
        let mut out = [0u8; 32];
        hex_into(&tag[..16], &mut out);
        out
    }

    /// Mints a fresh nonce.
    pub fn new_nonce(&mut self, now: Instant) -> String {
        let n = self.nonce_hex(now);
        // Hex digits only: valid UTF-8.
        std::str::from_utf8(&n).unwrap_or_default().to_owned()
    }

    /// [`Self::new_nonce`] on the stack: `hex(ts) hex(counter) mac`.
    fn nonce_hex(&mut self, now: Instant) -> [u8; NONCE_HEX_LEN] {
        self.counter = self.counter.wrapping_add(1);
        let ts = self.millis(now);
        let mut n = [0u8; NONCE_HEX_LEN];
        n[..16].copy_from_slice(&hex16(ts));
        n[16..32].copy_from_slice(&hex16(self.counter));
        n[32..].copy_from_slice(&self.mac(ts, self.counter));
        n
    }

    /// Checks the MAC; returns (ts, counter) of an authentic nonce.
    fn open_nonce(&self, nonce: &str) -> Option<(u64, u64)> {
        if nonce.len() != NONCE_HEX_LEN || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let ts = u64::from_str_radix(nonce.get(0..16)?, 16).ok()?;
        let ctr = u64::from_str_radix(nonce.get(16..32)?, 16).ok()?;
        let mut mac = [0u8; 32];
        mac.copy_from_slice(nonce.get(32..)?.as_bytes());
        mac.make_ascii_lowercase();
        ct_eq(&mac, &self.mac(ts, ctr)).then_some((ts, ctr))
    }

    /// One challenge per configured algorithm, sharing a fresh nonce, most preferred first.
    pub fn challenges(&mut self, now: Instant, stale: bool) -> Vec<Challenge> {
        let nonce = self.new_nonce(now);
        self.cfg
            .algorithms
            .iter()
            .map(|a| Challenge {
                realm: self.cfg.realm.clone(),
                nonce: nonce.clone(),
                opaque: None,
                domain: None,
                stale,
                algorithm: Some(a.as_str().to_owned()),
                qop: if self.cfg.qop {
                    vec!["auth".to_owned()]
                } else {
                    Vec::new()
                },
                userhash: false,
            })
            .collect()
    }

    /// [`Self::challenges`] formatted as header values.
    pub fn challenge_values(&mut self, now: Instant, stale: bool) -> Vec<String> {
        // Written directly (one buffer per value), exactly as `Challenge::to_header_value` writes
        // the challenges of `challenges`: this runs for every first REGISTER.
        let nonce = self.nonce_hex(now);
        let nonce = std::str::from_utf8(&nonce).unwrap_or_default();
        let realm = &self.cfg.realm;
        let mut out = Vec::with_capacity(self.cfg.algorithms.len());
        for a in &self.cfg.algorithms {
            let mut s = String::with_capacity(96 + realm.len() + nonce.len());
            s.push_str("Digest realm=");
            push_quoted(&mut s, realm);
            s.push_str(", nonce=");
            push_quoted(&mut s, nonce);
            if stale {
                s.push_str(", stale=true");
            }
            s.push_str(", algorithm=");
            s.push_str(a.as_str());
            if self.cfg.qop {
                s.push_str(", qop=\"auth\"");
            }
            out.push(s);
        }
        out
    }

    /// Verifies credentials for a request with `method` and `body` (the body matters only for
    /// `qop=auth-int`). `secret` is the stored secret of `creds.username`, `None` if unknown.
    ///
    /// Order of checks: algorithm/qop acceptable (`Malformed`), realm (`WrongRealm`), user
    /// (`UnknownUser`, after the same hashing work as a known user), response (`BadResponse`),
    /// nonce authentic and unexpired (`Stale`), nc increasing (`Replay`). `Stale` and `Replay`
    /// are thus only reported for a correct response. The digest-uri is verified as the client
    /// sent it; the caller may additionally compare it with the Request-URI.
    pub fn verify(
        &mut self,
        now: Instant,
        creds: &Credentials<'_>,
        method: &str,
        body: &[u8],
        secret: Option<&Key>,
    ) -> VerifyOutcome {
        let Some(algorithm) = creds.algorithm() else {
            return VerifyOutcome::Malformed;
        };
        if !self.cfg.algorithms.contains(&algorithm) {
            return VerifyOutcome::Malformed;
        }
        let qop = match &creds.qop {
            None => {
                if !self.cfg.allow_no_qop || algorithm.is_sess() {
                    return VerifyOutcome::Malformed;
                }
                None
            }
            Some(q) => {
                let (Some(q), Some(nc), Some(cnonce)) =
                    (Qop::parse(q), creds.nc.as_deref(), creds.cnonce.as_deref())
                else {
                    return VerifyOutcome::Malformed;
                };
                if parse_nc(nc).is_none() || cnonce.is_empty() {
                    return VerifyOutcome::Malformed;
                }
                Some(QopInput { qop: q, nc, cnonce })
            }
        };
        if creds.realm != self.cfg.realm {
            return VerifyOutcome::WrongRealm;
        }
        let hash = algorithm.hash();
        let ha1 = secret.and_then(|s| s.ha1_digest(hash, &creds.username, &self.cfg.realm));
        // Same amount of hashing for unknown users as for known ones.
        let dummy;
        let ha1_for_work = match &ha1 {
            Some(h) => h.as_ref(),
            None if hash == HashAlg::Md5 => self.dummy_md5.as_str(),
            None => {
                dummy = ha1_dummy(hash, &creds.username, &self.cfg.realm);
                dummy.as_str()
            }
        };
        let expected = response_digest(
            algorithm,
            ha1_for_work,
            &creds.nonce,
            qop,
            method,
            &creds.uri,
            body,
        );
        // The response is hex: compared case-insensitively, in constant time.
        let matches =
            expected.is_some_and(|e| ct_eq_lower(e.as_bytes(), creds.response.as_bytes()));
        if secret.is_none() {
            return VerifyOutcome::UnknownUser;
        }
        if ha1.is_none() || !matches {
            return VerifyOutcome::BadResponse;
        }
        // The response is right: is the nonce ours, fresh, and its nc new?
        let Some((ts, ctr)) = self.open_nonce(&creds.nonce) else {
            return VerifyOutcome::Stale;
        };
        let now_ms = self.millis(now);
        let ttl_ms = u64::try_from(self.cfg.nonce_ttl.as_millis()).unwrap_or(u64::MAX);
        if ts > now_ms || now_ms - ts > ttl_ms {
            return VerifyOutcome::Stale;
        }
        let nc = qop.and_then(|q| parse_nc(q.nc)).unwrap_or(0);
        match self.nc_table.get_mut(&ctr) {
            Some((_, last)) => {
                // RFC 2069 use (nc 0) is single-use; with qop nc must grow.
                if nc <= *last {
                    return VerifyOutcome::Replay;
                }
                *last = nc;
            }
            None => {
                if self.evicted_upto.is_some_and(|e| ctr <= e) {
                    return VerifyOutcome::Stale;
                }
                self.insert_nc(now_ms, ttl_ms, ctr, ts, nc);
            }
        }
        VerifyOutcome::Ok {
            username: creds.username.to_string(),
        }
    }

    fn insert_nc(&mut self, now_ms: u64, ttl_ms: u64, ctr: u64, ts: u64, nc: u32) {
        self.nc_table.insert(ctr, (ts, nc));
        while self.nc_table.len() > self.cfg.max_tracked_nonces {
            // Counters and timestamps grow together, so the first entry is the oldest nonce.
            // Dropping an expired one loses nothing (it verifies as stale anyway); dropping a
            // fresh one means nonces up to it can no longer be replay-checked: remember that.
            let Some((k, (t, _))) = self.nc_table.pop_first() else {
                break;
            };
            if now_ms.saturating_sub(t) <= ttl_ms {
                self.evicted_upto = Some(self.evicted_upto.map_or(k, |e| e.max(k)));
            }
        }
    }

    /// Forgets nc state of expired nonces (optional housekeeping; the table is bounded anyway).
    pub fn purge(&mut self, now: Instant) {
        let now_ms = self.millis(now);
        let ttl_ms = u64::try_from(self.cfg.nonce_ttl.as_millis()).unwrap_or(u64::MAX);
        // Counters and issue times grow together: the expired nonces are a prefix of the map,
        // so this costs O(log n) per expired nonce, not a walk of the table per call.
        while let Some((_, (t, _))) = self.nc_table.first_key_value() {
            if now_ms.saturating_sub(*t) <= ttl_ms {
                break;
            }
            self.nc_table.pop_first();
        }
    }
}

/// The password of the HA1 an unknown user's answer is checked against (the check's result is
/// ignored: it is there to take the same time as a known user's).
const NO_SUCH_USER: &str = "\u{0}podpbx-no-such-user\u{0}";

fn ha1_dummy(hash: HashAlg, username: &str, realm: &str) -> String {
    ha1(hash, username, realm, NO_SUCH_USER)
}

/// HMAC-SHA-256 (RFC 2104): nonces here, webhook signatures in `podpbx-events`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    HmacSha256::new(key).mac(msg)
}

/// HMAC-SHA256 (RFC 2104) under one key, with the key's inner and outer pads absorbed once:
/// each MAC then costs two SHA-256 compressions fewer (a nonce is made per challenge and checked
/// per authenticated request).
#[derive(Clone)]
pub struct HmacSha256 {
    inner: Sha256,
    outer: Sha256,
}

impl HmacSha256 {
    pub fn new(key: &[u8]) -> HmacSha256 {
        const BLOCK: usize = 64;
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(k.map(|b| b ^ 0x36));
        let mut outer = Sha256::new();
        outer.update(k.map(|b| b ^ 0x5c));
        HmacSha256 { inner, outer }
    }

    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        self.mac_parts(&[msg])
    }

    /// The MAC of the concatenation of `parts`, without building it.
    pub fn mac_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for p in parts {
            inner.update(p);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

impl fmt::Debug for HmacSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSha256(***)")
    }
}

/// Feeds the concatenation of `parts` to `c`, joined on the stack first when short (digest
/// inputs are: names, realm, nonce, URI): md5's `consume` has a fixed
/// cost per call that the five to eleven small parts of a digest input would otherwise pay each.
pub(crate) fn md5_consume_parts(c: &mut md5::Context, parts: &[&[u8]]) {
    let mut joined = [0u8; 256];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > joined.len() {
        for p in parts {
            c.consume(p);
        }
        return;
    }
    let mut at = 0;
    for p in parts {
        joined[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    c.consume(&joined[..total]);
}

/// `v` as 16 lower-case hex digits.
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex_into(&v.to_be_bytes(), &mut out);
    out
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// [`ct_eq`] of `expected` (lower case) with `given` lower-cased.
fn ct_eq_lower(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y.to_ascii_lowercase()))
        == 0
}

/// Constant-time equality (for equal lengths).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Why a [`DigestClient`] cannot answer a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No challenge value parsed as a Digest challenge with a supported algorithm.
    #[error("no usable digest challenge")]
    NoUsableChallenge,
    /// The server challenged again without `stale=true` after we answered: the credentials are
    /// wrong (or the server does not accept them). Stop retrying.
    #[error("credentials rejected")]
    Rejected,
}

#[derive(Debug, Clone)]
struct ClientState {
    challenge: Challenge,
    algorithm: Algorithm,
    nc: u32,
}

/// Answers `401`/`407` challenges for one account (trunk registration, outbound INVITE).
///
/// Flow: on a challenge response call [`Self::on_challenge`] with every challenge header value
/// of the response; then [`Self::authorization`] for each (re)sent request, which increments nc
/// for the current nonce. Call [`Self::on_success`] on a 2xx so later challenges are treated as
/// new. A challenge after an answered one is followed if it is `stale=true`; otherwise (bad
/// credentials) the client gives up with [`ClientError::Rejected`] after `max_rejections`
/// (default 1: one retry with a new nonce, for servers that rotate nonces without `stale`).
#[derive(Clone)]
pub struct DigestClient {
    username: String,
    secret: Key,
    cnonce_seed: Vec<u8>,
    cnonce_counter: u64,
    state: Option<ClientState>,
    answered: bool,
    rejections: u32,
    max_rejections: u32,
}

impl fmt::Debug for DigestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestClient")
            .field("username", &self.username)
            .field("state", &self.state)
            .field("answered", &self.answered)
            .field("rejections", &self.rejections)
            .finish()
    }
}

impl DigestClient {
    /// `cnonce_seed` should be random (e.g. 16 bytes from the OS); cnonces are derived from it
    /// and a counter.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        cnonce_seed: impl Into<Vec<u8>>,
    ) -> Self {
        Self::with_secret(username, Key::Password(password.into()), cnonce_seed)
    }

    /// Like [`Self::new`] with a stored secret (a precomputed HA1 only answers its hash).
    pub fn with_secret(
        username: impl Into<String>,
        secret: Key,
        cnonce_seed: impl Into<Vec<u8>>,
    ) -> Self {
        DigestClient {
            username: username.into(),
            secret,
            cnonce_seed: cnonce_seed.into(),
            cnonce_counter: 0,
            state: None,
            answered: false,
            rejections: 0,
            max_rejections: 1,
        }
    }

    /// How many non-stale re-challenges after an answer are tolerated before [`ClientError::Rejected`].
    pub fn set_max_rejections(&mut self, n: u32) {
        self.max_rejections = n;
    }

    /// The challenge currently answered, if any.
    pub fn current(&self) -> Option<&Challenge> {
        self.state.as_ref().map(|s| &s.challenge)
    }

    /// Takes the challenge header values of a `401`/`407` (all of them; non-Digest ones and
    /// unsupported algorithms are skipped) and picks the strongest supported algorithm.
    pub fn on_challenge<V: AsRef<[u8]>>(&mut self, values: &[V]) -> Result<(), ClientError> {
        let best = values
            .iter()
            .filter_map(|v| Challenge::parse(v.as_ref()).ok())
            .filter_map(|c| c.algorithm().map(|a| (a, c)))
            .filter(|(a, _)| self.secret.supports(a.hash()))
            // Sess algorithms need qop (cnonce); skip them without.
            .filter(|(a, c)| !a.is_sess() || c.offers(Qop::Auth) || c.offers(Qop::AuthInt))
            .max_by_key(|(a, _)| a.strength());
        let Some((algorithm, challenge)) = best else {
            return Err(ClientError::NoUsableChallenge);
        };
        if self.answered && !challenge.stale {
            // Re-challenged without stale after answering: the credentials were refused. With
            // the very nonce we answered that is final; with a new one allow a few retries.
            let same_nonce = self
                .state
                .as_ref()
                .is_some_and(|s| s.challenge.nonce == challenge.nonce);
            self.rejections += 1;
            if same_nonce || self.rejections > self.max_rejections {
                return Err(ClientError::Rejected);
            }
        }
        self.state = Some(ClientState {
            challenge,
            algorithm,
            nc: 0,
        });
        self.answered = false;
        Ok(())
    }

    /// A 2xx arrived: the credentials work; keep the nonce for later requests.
    pub fn on_success(&mut self) {
        self.answered = false;
        self.rejections = 0;
    }

    /// Forgets the current challenge.
    pub fn reset(&mut self) {
        self.state = None;
        self.answered = false;
        self.rejections = 0;
    }

    /// The credentials header value for a request, or `None` before any challenge. Uses
    /// `qop=auth` when offered (`auth-int` only if `auth` is not), else RFC 2069 style.
    /// `digest_uri` is normally the Request-URI.
    pub fn authorization(&mut self, method: &str, digest_uri: &str, body: &[u8]) -> Option<String> {
        let cnonce = self.next_cnonce();
        let state = self.state.as_mut()?;
        let c = &state.challenge;
        let hash = state.algorithm.hash();
        let ha1 = self.secret.ha1(hash, &self.username, &c.realm)?;
        let qop = if c.offers(Qop::Auth) {
            Some(Qop::Auth)
        } else if c.offers(Qop::AuthInt) {
            Some(Qop::AuthInt)
        } else {
            None
        };
        let (nc_str, cnonce) = match qop {
            Some(_) => {
                state.nc = state.nc.wrapping_add(1);
                (Some(format!("{:08x}", state.nc)), Some(cnonce))
            }
            None => (None, None),
        };
        let input = match (qop, &nc_str, &cnonce) {
            (Some(q), Some(nc), Some(cn)) => Some(QopInput {
                qop: q,
                nc,
                cnonce: cn,
            }),
            _ => None,
        };
        let response = compute_response(
            state.algorithm,
            &ha1,
            &c.nonce,
            input,
            method,
            digest_uri,
            body,
        )?;
        let creds = Credentials {
            username: Cow::Borrowed(&self.username),
            realm: Cow::Borrowed(&c.realm),
            nonce: Cow::Borrowed(&c.nonce),
            uri: Cow::Borrowed(digest_uri),
            response: response.into(),
            algorithm: Some(Cow::Borrowed(state.algorithm.as_str())),
            cnonce: cnonce.map(Cow::Owned),
            opaque: c.opaque.as_deref().map(Cow::Borrowed),
            qop: qop.map(|q| Cow::Borrowed(q.as_str())),
            nc: nc_str.map(Cow::Owned),
            userhash: false,
        };
        self.answered = true;
        Some(creds.to_header_value())
    }

    fn next_cnonce(&mut self) -> String {
        self.cnonce_counter = self.cnonce_counter.wrapping_add(1);
        let mut data = self.cnonce_seed.clone();
        data.extend_from_slice(&self.cnonce_counter.to_be_bytes());
        let h = HashAlg::Sha256.hex(&data);
        h.get(..16).unwrap_or(&h).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_long_key_rfc4231_case6() {
        let key = [0xaau8; 131];
        let tag = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            to_hex(&tag),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn challenge_values_are_the_challenges_formatted() {
        let t0 = Instant::now();
        for (algorithms, qop) in [
            (vec![Algorithm::Md5], true),
            (vec![Algorithm::Sha256, Algorithm::Md5Sess], true),
            (vec![Algorithm::Md5], false),
        ] {
            let mut cfg = ServerConfig::new("r\"e\\alm", b"0123456789abcdef".to_vec());
            cfg.algorithms = algorithms;
            cfg.qop = qop;
            for stale in [false, true] {
                let mut a = DigestServer::new(cfg.clone(), t0);
                let mut b = DigestServer::new(cfg.clone(), t0);
                let later = t0 + Duration::from_millis(1234);
                let want: Vec<String> = a
                    .challenges(later, stale)
                    .iter()
                    .map(Challenge::to_header_value)
                    .collect();
                assert_eq!(b.challenge_values(later, stale), want);
            }
        }
    }

    #[test]
    fn responses_compare_case_insensitively_in_constant_time() {
        assert!(ct_eq_lower(b"0a1b", b"0A1b"));
        assert!(!ct_eq_lower(b"0a1b", b"0a1c"));
        assert!(!ct_eq_lower(b"0a1b", b"0a1"));
    }

    #[test]
    fn response_matches_rfc2617_example() {
        // RFC 2617 §3.5: Mufasa / Circle Of Life, qop=auth.
        let ha1 = ha1(
            HashAlg::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = compute_response(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(QopInput {
                qop: Qop::Auth,
                nc: "00000001",
                cnonce: "0a4f113b",
            }),
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(r.as_deref(), Some("6629fae49393a05397450978507c4ef1"));
    }

    #[test]
    fn ct_eq_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
