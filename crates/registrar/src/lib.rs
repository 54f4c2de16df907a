//! The podpbx registrar core (RFC 3261 §10.3), sans-IO: the caller passes parsed requests, the
//! observed [`Flow`] and the time (`now: Instant` for timers, `wall: SystemTime` for persisted
//! expiry and the Date header), and gets back an [`Outcome`] to send, a `changed` flag for
//! persistence and [`SecurityEvent`]s to log. No clock, socket or random source is read here:
//! the nonce/To-tag key comes in [`Settings::secret`].
//!
//! # Behaviour choices
//!
//! * **Domain**: with [`Settings::domains`] set, the To host must be one of them, else `404`
//!   (RFC 3261 §10.3 step 5; it reveals nothing about users). Empty list: any domain. The
//!   Request-URI is not checked (devices put the PBX IP or a name there at random).
//! * **Authentication**: always Digest, `401` + `WWW-Authenticate`. The first REGISTER without
//!   credentials, credentials for another realm and non-Digest schemes (RFC 4475 regaut01) get
//!   a challenge and are not failures.
//! * **No user enumeration**: a wrong password and an unknown user both get a `401` with a fresh
//!   challenge (never `403`/`404`), after the same hashing work. A right password from outside
//!   the user's allowed networks looks the same to the client. All three are failures of the
//!   source and are reported as events naming the user tried.
//! * **Stale and reused nonces**: a right response on an expired nonce, a nonce from before a
//!   restart, or a reused nonce/nc (Dahua/Hikvision doorbells resend their previous
//!   Authorization on every refresh; RFC 2069 nonces are single-use) gets a fresh challenge with
//!   `stale=true` and is never counted as a failure.
//! * **Malformed credentials** (unparseable, algorithm not offered, qop without cnonce...):
//!   `400`, counted as a failure.
//! * **Digest `uri`** must name the Request-URI (RFC 3261 §22.4, RFC 7616 §3.4.6; the same
//!   text or an equivalent URI): otherwise `400 Authorization URI Mismatch`, counted as a
//!   failure, before any hashing. Credentials computed for one request never authorise another.
//! * **qop required**: an RFC 2069 answer (no qop, so no client nonce and no nonce count) is
//!   accepted only from a user with [`User::allow_rfc2069`]; from anyone else it is malformed
//!   (`400`, counted).
//! * **Brute force**: `max_failures` failures from one source within `failure_window`
//!   block it for `block_for`; the request that reaches the limit and every later one from that
//!   source get [`Reply::Drop`] (no response). A source is an IPv4 address or an IPv6 prefix
//!   ([`Settings::ipv6_prefix`], /64 by default: a host picks any address of its /64). One
//!   `blocked` event is emitted when a block starts (not per dropped packet, so a flood does not
//!   flood the log). A success does not reset the count (an attacker with one valid account
//!   could otherwise interleave). Trusted networks are never counted or blocked but still
//!   authenticate. One misconfigured phone behind an office NAT blocks that NAT: list such NATs
//!   as trusted.
//! * **Global cap**: beyond [`Settings::max_failures_per_minute`] failures per minute from all
//!   sources together, credentials from sources without a success within
//!   [`Settings::known_for`] are not checked: they get the challenge a wrong password gets
//!   (and count as failures of their source). A guess spread over thousands of prefixes cannot
//!   succeed, and phones that registered before are unaffected.
//! * **Who may register what**: the digest username must equal the To user (the AOR);
//!   otherwise `403` and an `identity_mismatch` event. The From user is ignored: some
//!   doorbells put another name in From and loop on 401 if it is compared. So authentication is
//!   by the auth username, and the binding goes to the To AOR when that is the same user.
//! * **Expiry**: contact `expires` param, else the `Expires` header, else `default_expires`
//!   (a malformed value counts as absent);
//!   0 removes that binding; a non-zero value below `min_expires` fails the whole request with
//!   `423` + `Min-Expires`; values above `max_expires` are lowered to it. The 200 lists every
//!   current binding of the AOR with its remaining `expires=` and a Date header.
//! * **`Contact: *`** needs `Expires: 0` (else `400`) and removes all bindings of the AOR.
//! * **Call-ID/CSeq (§10.3 step 7)**: if a contact matches a binding with the same Call-ID and
//!   a stored CSeq greater than or equal to the request's, the request is out of order: nothing
//!   at all changes and the answer is `200` listing the current bindings (the RFC says the
//!   update must not happen; we do not fail with `500`, which would make devices retry).
//! * **Contact matching**: same `+sip.instance` and `reg-id` when both sides carry them
//!   (RFC 5626), else URI equality (scheme, host and parameters case-insensitive, user exact).
//!   `+sip.instance` and `reg-id` are kept and echoed in the 200.
//! * **Max contacts**: new contacts beyond the user's `max_contacts` evict the oldest
//!   registrations (earliest first registration) not refreshed by this request, like Asterisk's
//!   `remove_existing`; a single request asking for more distinct contacts than the limit gets
//!   `403 Too Many Contacts`.
//! * **Atomicity**: every check (423, 403, 400) runs before any binding changes.
//! * **Memory**: bindings exist only for authenticated users; the failure and block tables and
//!   the nonce-count table are bounded LRU/ordered maps; nonces themselves are stateless.
//! * **Qualify**: optional; bindings failing `qualify_max_failures` consecutive probes are
//!   marked unreachable (listed last by [`Registrar::lookup`]) but kept until they expire.
//! * **Persistence**: [`Registrar::serialize`] gives the state file's content and
//!   [`Registrar::restore`] takes it back; the shell does the file I/O ([`write_atomic`],
//!   [`load_file`]). Refreshes set `changed` too (the saved expiry moves).

mod bindings;

mod guard;
mod lru;
mod persist;
mod registrar;
mod users;

pub use bindings::{Binding, Flow, QualifyTarget, Transport};
pub use persist::{load_file, write_atomic, LoadReport, PersistError};
pub use podpbx_config::{Cidr, CidrError};
pub use podpbx_sip::digest::{Algorithm, AuthKind, HashAlg, Key};
pub use registrar::{
    http_date, AuthCheck, AuthResult, Outcome, Registrar, Reply, SecurityEvent, SecurityEventKind,
    Settings, Stats,
};
pub use users::{User, UserDb};

/// `now + d`, saturating at about 136 years for absurd configured durations instead of panicking.
pub(crate) fn later(now: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}
