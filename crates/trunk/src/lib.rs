//! Trunks for podpbx: outbound registration with a SIP provider (RFC 3261 §10.2, client side)
//! and the keep-alive towards it, as a sans-IO state machine in the quinn-proto style.
//!
//! [`Registration`] never reads the clock, a socket or a random source: the caller passes
//! `now`, the responses to its requests and the failures of their client transactions, and
//! polls messages to send ([`Registration::poll_transmit`]) and the next deadline
//! ([`Registration::poll_timeout`]). Randomness (branches, tags, Call-ID, cnonces, jitter) comes
//! from [`RegistrationConfig::seed`].
//!
//! # Behaviour
//!
//! * **REGISTER**: Request-URI `sip:<domain>` (`:port` added when not 5060), From/To
//!   `<sip:user@domain>` with a From tag and Call-ID fixed for the lifetime of the
//!   [`Registration`], CSeq incremented per request, a fresh `z9hG4bK` branch, `rport`, Contact
//!   `<sip:user@[pinned]:port;transport=udp>`, `Expires`, Max-Forwards 70, User-Agent, Allow,
//!   Content-Length 0.
//! * **Digest** (`401` + `WWW-Authenticate` or `407` + `Proxy-Authenticate`, MD5 or SHA-256,
//!   `qop=auth` with cnonce/nc or RFC 2069 style) through [`podpbx_sip::digest::DigestClient`].
//!   The nonce is kept and reused (nc incremented) for refreshes. A re-challenge with
//!   `stale=true` is answered at once and is not a credentials failure (at most 3 in a row).
//!   A re-challenge without `stale` right after answering a challenge of the same attempt, or
//!   a `403`, is [`TrunkState::CredentialsRejected`]: the challenge is forgotten and the next
//!   attempt follows [`RetryPolicy::rejected_retry`] (10 min by default), so a wrong password
//!   costs two REGISTERs per 10 min, and never stops the trunk for good. A re-challenge after
//!   answering a *cached* nonce (a refresh) gets one fresh round first: providers rotate
//!   nonces without `stale`. Challenges for a realm other than [`RegistrationConfig::realm`]
//!   are not answered.
//! * **Expiry**: the granted interval is the `expires` parameter of our Contact in the `2xx`
//!   (matched by user, host and port), else the `Expires` header, else what we asked for. The
//!   refresh goes out after [`refresh_after`]`(granted)`. `423` raises the requested expiry to
//!   `Min-Expires` (up to [`MAX_EXPIRY_SECS`]) and retries at once.
//! * **Failures** (timeouts, transport errors, other final responses): [`TrunkState::Failing`]
//!   with exponential backoff, 2 s doubling to 5 min, jittered to `[0.75, 1.0]` of the nominal
//!   delay, at least a `Retry-After` (capped at the maximum backoff). Retries go on forever.
//!   An attempt (first REGISTER plus challenge, stale and `423` follow-ups) sends at most
//!   [`RetryPolicy::max_requests_per_attempt`] REGISTERs.
//! * **Keep-alive**: every [`RegistrationConfig::keepalive`] an `OPTIONS` to `sip:<domain>`
//!   over UDP ([`OutgoingKind::Options`], any final answer counts as alive), a CRLF ping over
//!   TCP ([`OutgoingKind::Crlf`]). Liveness shows in [`TrunkStatus`]; it does not drive
//!   re-registration.
//! * **Stop**: [`Registration::stop`] removes our binding (`Expires: 0` for our Contact, never
//!   `Contact: *`, which would remove other devices of the account too).
//!
//! # Integration with the core
//!
//! ```text
//! start:   reg.start(now)
//! loop:    while let Some(out) = reg.poll_transmit() {
//!              match out.kind.method() {
//!                  Some(m) => { id = layer.send_request(now, out.branch.clone(), m, out.data, peer(out.dest))?;
//!                               owner.insert(id, (trunk, out.branch)); }
//!                  None    => write out.data on the TCP connection to the provider (CRLF ping),
//!              }
//!          }
//! response delivered for tx id of a trunk:   reg.handle_response(now, &msg)
//! TxEvent::Timeout / TransportError for it:  reg.transaction_timeout(now, &branch)
//! at reg.poll_timeout():                     reg.handle_timeout(now)
//! shutdown: reg.stop(now), keep driving until reg.is_stopped() (bounded by Timer F)
//! ```
//!
//! [`Outgoing::dest`] is [`RegistrationConfig::dest`] when set, or the domain when it is an IP
//! literal. For a domain given as a name the caller runs a [`Locator`] (RFC 3263: NAPTR, SRV,
//! AAAA or A per the trunk's family; the queries are performed by the shell, never on the
//! signalling loop) and hands its ordered list to [`Registration::set_targets`]; until then the
//! registration waits in [`TrunkState::Resolving`]. A REGISTER that times out or gets `503`
//! moves on to the next server of the list (RFC 3263 §4.3); the server that accepted stays in use
//! for refreshes; when every server failed, the next attempt (after the back-off) starts again at
//! the most preferred one.
//!
//! Requests the provider sends us (INVITEs to our Contact) are not this crate's business: the
//! core recognises them by source network ([`RegistrationConfig`] does not carry it) or by the
//! Request-URI matching [`Registration::contact_uri`].

pub mod locate;
mod registration;

pub use locate::{
    DnsQuery, LocateError, LocateStatus, Locator, LocatorConfig, LookupError, Naptr, RData, Record,
    RecordType, Srv,
};
pub use podpbx_sip::digest::Key;
pub use podpbx_sip::Transport;
pub use registration::{
    refresh_after, ConfigError, Outgoing, OutgoingKind, OutgoingRegister, RegError, Registration,
    RegistrationConfig, RetryPolicy, TrunkState, TrunkStatus, DEFAULT_USER_AGENT, MAX_EXPIRY_SECS,
    REFRESH_MIN_MARGIN,
};
