//! The outbound registration state machine (RFC 3261 §10.2, client side) and the provider
//! keep-alive. See the crate documentation for the behaviour and the integration contract.

use bytes::Bytes;
use podpbx_sip::caps;
use podpbx_sip::digest::{AuthKind, Challenge, ClientError, DigestClient, Key};
use podpbx_sip::transaction::MAGIC_COOKIE;
use podpbx_sip::IdGen;
use podpbx_sip::{HeaderName, Host, Message, Method, RequestBuilder, Transport, Uri};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Default `User-Agent` of REGISTER and OPTIONS.
pub const DEFAULT_USER_AGENT: &str = concat!("podpbx/", env!("CARGO_PKG_VERSION"));

/// The largest `Min-Expires` a `423` may raise our requested expiry to (one day); a provider
/// asking for more is treated as a failure rather than followed blindly.
pub const MAX_EXPIRY_SECS: u32 = 86_400;

/// Refreshes leave at least this much of the granted interval unused (when the interval is long
/// enough): one lost refresh costs a Timer F (32 s) plus a 2 s retry, so 70 s lets the retry
/// land while the old binding is still valid. See [`refresh_after`].
pub const REFRESH_MIN_MARGIN: Duration = Duration::from_secs(70);

/// How many consecutive `stale=true` challenges one attempt follows before it counts as failed
/// (a provider that never accepts a nonce would otherwise make us loop).
const MAX_STALE_ROUNDS: u32 = 3;

/// Retry timing. The defaults: failures back off from 2 s, doubling up to 5 min, each delay
/// drawn uniformly from `[0.75, 1.0]` of its nominal value; rejected credentials retry every
/// 10 min (also jittered). Nothing ever gives up for good: a provider outage or a password
/// fixed at the provider's side heals without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure of a series.
    pub initial_backoff: Duration,
    /// Cap of the doubling delay.
    pub max_backoff: Duration,
    /// Delay after the provider rejected the credentials (`403`, or a second non-stale
    /// challenge for credentials that answered a fresh one). Ten minutes: six cycles of two
    /// REGISTERs an hour is far below what makes providers lock an account (Asterisk's
    /// defaults instead stop after 10 tries or at the first `403`, leaving the trunk down until
    /// someone reloads it).
    pub rejected_retry: Duration,
    /// At most this many REGISTERs per attempt (the first one plus challenge and `423`
    /// follow-ups) before the attempt counts as failed.
    pub max_requests_per_attempt: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            rejected_retry: Duration::from_secs(600),
            max_requests_per_attempt: 6,
        }
    }
}

/// Everything a [`Registration`] needs to know about one trunk account.
#[derive(Clone)]
pub struct RegistrationConfig {
    /// Trunk name, for logs and [`TrunkStatus`].
    pub name: String,
    /// The provider's domain as used in the Request-URI and the AOR (`sip:user@domain`): a DNS
    /// name, an IPv4 literal or an IPv6 literal (brackets optional here, always written).
    pub domain: String,
    /// Provider port. It is written into the Request-URI when it is not 5060.
    pub port: u16,
    /// A fixed next hop. `None`: the domain itself when it is an IP literal, else the targets
    /// the caller locates (RFC 3263) and hands over with [`Registration::set_targets`].
    pub dest: Option<SocketAddr>,
    /// Transport towards the provider.
    pub transport: Transport,
    /// Account user name: the user part of the AOR (From/To) and of our Contact.
    pub username: String,
    /// Digest user name when it differs from `username`.
    pub auth_username: Option<String>,
    /// Digest secret (the password, or a precomputed HA1).
    pub secret: Key,
    /// Expected digest realm: challenges for other realms are not answered (our credentials are
    /// not sent to whoever asks). `None` accepts the provider's realm.
    pub realm: Option<String>,
    /// Requested registration interval (the `Expires` we ask for).
    pub expiry: Duration,
    /// Our pinned local address and SIP port: Via sent-by and Contact host.
    pub local: SocketAddr,
    /// `User-Agent` header value.
    pub user_agent: String,
    /// Keep-alive interval: an `OPTIONS` over UDP, a CRLF ping (RFC 5626 §4.4.1) over TCP.
    /// `None` disables it.
    pub keepalive: Option<Duration>,
    /// Whether to register at all; `false` runs only the keep-alive (IP-authenticated trunks).
    pub register: bool,
    /// Retry timing.
    pub retry: RetryPolicy,
    /// Randomness for branches, tags, the Call-ID, digest cnonces and retry jitter: 16 bytes from
    /// the OS at run time, a constant in tests.
    pub seed: [u8; 16],
}

impl fmt::Debug for RegistrationConfig {
    /// Never prints the secret or the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationConfig")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("port", &self.port)
            .field("dest", &self.dest)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("auth_username", &self.auth_username)
            .field("realm", &self.realm)
            .field("expiry", &self.expiry)
            .field("local", &self.local)
            .field("keepalive", &self.keepalive)
            .field("register", &self.register)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl RegistrationConfig {
    /// A UDP registration on port 5060 with a one-hour expiry, no keep-alive and default retry
    /// timing; adjust the public fields as needed.
    pub fn new(
        name: impl Into<String>,
        domain: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
        local: SocketAddr,
        seed: [u8; 16],
    ) -> RegistrationConfig {
        RegistrationConfig {
            name: name.into(),
            domain: domain.into(),
            port: 5060,
            dest: None,
            transport: Transport::Udp,
            username: username.into(),
            auth_username: None,
            secret: Key::Password(password.into()),
            realm: None,
            expiry: Duration::from_secs(3600),
            local,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            keepalive: None,
            register: true,
            retry: RetryPolicy::default(),
            seed,
        }
    }
}

/// Why a [`RegistrationConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the trunk user name is empty")]
    EmptyUsername,
    #[error("the trunk user name {0:?} has characters a SIP URI user part cannot hold")]
    InvalidUsername(String),
    #[error("the trunk domain {0:?} is not a host name or IP address")]
    InvalidDomain(String),
    #[error("the trunk port is 0")]
    ZeroPort,
    #[error("the registration expiry must be at least one second")]
    ZeroExpiry,
    #[error("the keep-alive interval must be at least one second")]
    ZeroKeepalive,
    #[error("the retry timing has a zero interval")]
    ZeroRetry,
}

/// Why an attempt failed; kept in [`TrunkState`] and shown by [`TrunkStatus::last_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    /// No final response (Timer F) or the transport failed.
    #[error("no response from the provider")]
    Timeout,
    /// A final response that is neither success nor a challenge we could answer.
    #[error("{code} {reason}")]
    Status { code: u16, reason: String },
    /// The provider challenged again, without `stale`, right after we answered a fresh
    /// challenge: wrong user name or password.
    #[error("credentials rejected ({code} after authenticating)")]
    BadCredentials { code: u16 },
    /// No challenge with an algorithm we implement (or usable with the configured secret).
    #[error("no usable digest challenge")]
    NoUsableChallenge,
    /// The challenge was for another realm than the configured one.
    #[error("challenge for realm {offered:?}, expected {expected:?}")]
    RealmMismatch { offered: String, expected: String },
    /// `423` without a usable `Min-Expires`.
    #[error("423 without a usable Min-Expires")]
    IntervalTooBrief,
    /// Too many follow-up requests (challenges, `stale`, `423`) in one attempt.
    #[error("too many authentication rounds")]
    TooManyRounds,
    /// A `2xx` that grants an expiry of 0 for our contact.
    #[error("the provider granted an expiry of 0")]
    ZeroExpiry,
}

/// Where the state machine stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkState {
    /// Not started, stopped, or `register = false`.
    Unregistered,
    /// The provider's host name has no address yet (see [`Registration::set_targets`]); the
    /// first REGISTER goes out as soon as it has one.
    Resolving,
    /// A REGISTER (or its authentication follow-ups) is in flight and no binding is known.
    Registering,
    /// The provider holds our binding until `expires_at`; a refresh may be in flight.
    Registered { expires_at: Instant },
    /// The last attempt failed (timeout, `5xx`, ...); retrying with exponential backoff.
    Failing {
        /// Consecutive failed attempts.
        attempts: u32,
        last_error: RegError,
        next_attempt: Instant,
    },
    /// The provider refused the credentials; retrying at the long [`RetryPolicy::rejected_retry`].
    CredentialsRejected {
        last_error: RegError,
        next_attempt: Instant,
    },
    /// [`Registration::stop`] sent a REGISTER with `Expires: 0` and waits for its answer.
    Unregistering,
}

impl TrunkState {
    /// Short name for logs, metrics and ctl.
    pub fn name(&self) -> &'static str {
        match self {
            TrunkState::Unregistered => "unregistered",
            TrunkState::Resolving => "resolving",
            TrunkState::Registering => "registering",
            TrunkState::Registered { .. } => "registered",
            TrunkState::Failing { .. } => "failing",
            TrunkState::CredentialsRejected { .. } => "credentials-rejected",
            TrunkState::Unregistering => "unregistering",
        }
    }
}

/// A snapshot for logs, metrics and ctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkStatus {
    pub name: String,
    /// [`TrunkState::name`].
    pub state: &'static str,
    /// The last failure, kept until a success.
    pub last_error: Option<String>,
    /// When the next REGISTER goes out (refresh or retry).
    pub next_attempt: Option<Instant>,
    /// The expiry the provider granted in its last `2xx`.
    pub granted_expiry: Option<Duration>,
    /// Until when the provider holds our binding, as far as we know (also while failing).
    pub binding_expires_at: Option<Instant>,
    /// Consecutive failed attempts (timeouts, errors, rejections); 0 after a success.
    pub consecutive_failures: u32,
    /// REGISTERs sent since creation (including challenge follow-ups and un-REGISTER).
    pub registers_sent: u64,
    /// Keep-alives sent since creation.
    pub keepalives_sent: u64,
    /// Keep-alives without any final response since the last answered one.
    pub keepalive_failures: u32,
    /// When the provider last answered a keep-alive `OPTIONS`.
    pub last_keepalive_answer: Option<Instant>,
    /// The provider server requests go to now.
    pub target: Option<SocketAddr>,
}

/// What an [`Outgoing`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingKind {
    /// A REGISTER (first, refresh, or an authentication follow-up).
    Register,
    /// The REGISTER with `Expires: 0` sent by [`Registration::stop`].
    Unregister,
    /// A keep-alive `OPTIONS`.
    Options,
    /// A CRLF keep-alive over TCP: write `data` on the connection to the provider, outside any
    /// transaction (`branch` is empty, no response is expected).
    Crlf,
}

impl OutgoingKind {
    /// The method for the client transaction; `None` for [`OutgoingKind::Crlf`].
    pub fn method(self) -> Option<Method> {
        match self {
            OutgoingKind::Register | OutgoingKind::Unregister => Some(Method::Register),
            OutgoingKind::Options => Some(Method::Options),
            OutgoingKind::Crlf => None,
        }
    }
}

/// A message to send to the provider. Requests go through a client transaction
/// (`TransactionLayer::send_request(now, branch, kind.method(), data, peer)`) from the pinned
/// socket; its responses come back through [`Registration::handle_response`], its Timer F or
/// transport error through [`Registration::transaction_timeout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub kind: OutgoingKind,
    /// The whole message.
    pub data: Bytes,
    /// The branch of its top Via (the client transaction key); empty for CRLF.
    pub branch: Bytes,
    /// The provider server it goes to (the current target, see [`Registration::set_targets`]).
    pub dest: SocketAddr,
    pub transport: Transport,
}

/// Another name for [`Outgoing`].
pub type OutgoingRegister = Outgoing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegKind {
    Register,
    Unregister,
}

/// The REGISTER in flight.
#[derive(Debug, Clone)]
struct Pending {
    kind: RegKind,
    branch: Bytes,
    cseq: u32,
    /// Its credentials answer a challenge received during this attempt (not a cached nonce).
    fresh_auth: Option<AuthKind>,
}

/// RFC 3261 §10.2 outbound registration for one trunk, sans-IO.
///
/// Inputs: [`Self::start`], [`Self::handle_response`], [`Self::handle_timeout`],
/// [`Self::transaction_timeout`], [`Self::stop`]. Outputs: [`Self::poll_transmit`],
/// [`Self::poll_timeout`], [`Self::state`], [`Self::status`]. `now` is always passed in.
pub struct Registration {
    cfg: RegistrationConfig,
    /// The provider's servers in the order to try (RFC 3263): the configured next hop, the
    /// domain itself when it is an IP literal, or what [`Self::set_targets`] handed over.
    targets: Vec<SocketAddr>,
    /// The server in use: requests go to `targets[target]`. It stays after a success (refreshes
    /// go where the binding is) and moves on after a timeout or `503`.
    target: usize,
    /// Servers tried in the running attempt (failover stops when every one was tried).
    tried: usize,
    /// The next hop is configured or the domain is an IP literal: no located targets.
    fixed: bool,
    request_uri: String,
    aor: String,
    contact: String,
    contact_uri: Uri,
    via_prefix: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    rng: IdGen,
    digest: DigestClient,
    auth_kind: AuthKind,
    /// Set when the current challenge arrived during the running attempt.
    challenge_fresh: bool,
    requested_expiry: u32,

    state: TrunkState,
    running: bool,
    stopping: bool,
    pending: Option<Pending>,
    rounds: u32,
    stale_rounds: u32,
    next_register: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<RegError>,
    granted: Option<Duration>,
    binding_expires_at: Option<Instant>,

    next_keepalive: Option<Instant>,
    keepalive_branch: Option<Bytes>,
    keepalive_failures: u32,
    last_keepalive_answer: Option<Instant>,

    registers_sent: u64,
    keepalives_sent: u64,
    transmits: VecDeque<Outgoing>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.cfg.name)
            .field("state", &self.state)
            .field("pending", &self.pending)
            .field("next_register", &self.next_register)
            .finish_non_exhaustive()
    }
}

/// Characters allowed unescaped in a SIP URI user part (RFC 3261 §25.1: unreserved,
/// user-unreserved, escaped).
fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b))
}

/// When to refresh a binding granted for `granted`: `granted - margin` with
/// `margin = min(granted / 2, max(granted / 10, 70 s))`. So a one-hour binding is refreshed
/// after 54 min, a 10 min one after 8 min 50 s, anything up to 140 s at half its interval. The
/// 70 s floor covers a lost refresh (Timer F, 32 s) plus the first retry before the binding
/// lapses; a plain `expires - 30 s` would let one lost packet drop incoming calls.
pub fn refresh_after(granted: Duration) -> Duration {
    let half = granted / 2;
    let margin = (granted / 10).max(REFRESH_MIN_MARGIN).min(half);
    granted.saturating_sub(margin)
}

/// The leading decimal number of a header value such as `Retry-After: 120 (busy)`.
fn leading_secs(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?.trim_start();
    let digits: &str = &s[..s.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.parse().ok()
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Registration {
    /// Validates `cfg` and creates an idle registration ([`TrunkState::Unregistered`]).
    pub fn new(cfg: RegistrationConfig) -> Result<Registration, ConfigError> {
        if cfg.username.is_empty() {
            return Err(ConfigError::EmptyUsername);
        }
        if !valid_user(&cfg.username) {
            return Err(ConfigError::InvalidUsername(cfg.username.clone()));
        }
        if let Some(a) = &cfg.auth_username {
            // The digest user name is a quoted string: only CR/LF/quote/backslash would break it.
            if a.is_empty() || a.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
                return Err(ConfigError::InvalidUsername(a.clone()));
            }
        }
        let host = Host::parse_lenient(&Bytes::from(cfg.domain.trim().to_owned()))
            .map_err(|_| ConfigError::InvalidDomain(cfg.domain.clone()))?;
        let domain = host.to_string();
        if cfg.port == 0 {
            return Err(ConfigError::ZeroPort);
        }
        // An IP-literal domain needs no resolver.
        let dest = cfg
            .dest
            .or_else(|| host.ip().map(|ip| SocketAddr::new(ip, cfg.port)));
        if cfg.expiry.as_secs() == 0 {
            return Err(ConfigError::ZeroExpiry);
        }
        if cfg.keepalive.is_some_and(|k| k.as_secs() == 0) {
            return Err(ConfigError::ZeroKeepalive);
        }
        let r = &cfg.retry;
        if r.initial_backoff.is_zero()
            || r.max_backoff.is_zero()
            || r.rejected_retry.is_zero()
            || r.max_requests_per_attempt == 0
        {
            return Err(ConfigError::ZeroRetry);
        }
        let request_uri = if cfg.port == 5060 {
            format!("sip:{domain}")
        } else {
            format!("sip:{domain}:{}", cfg.port)
        };
        let aor = format!("sip:{}@{domain}", cfg.username);
        let (via_t, uri_t) = (cfg.transport.via_token(), cfg.transport.param());
        let local_host = podpbx_sip::ident::ip_host(cfg.local.ip());
        let contact = format!(
            "sip:{}@{local_host}:{};transport={uri_t}",
            cfg.username,
            cfg.local.port()
        );
        let contact_uri = Uri::parse(Bytes::from(contact.clone()))
            .map_err(|_| ConfigError::InvalidUsername(cfg.username.clone()))?;
        let via_prefix = format!("SIP/2.0/{via_t} {local_host}:{}", cfg.local.port());
        let mut rng = IdGen::new(cfg.seed);
        let call_id = rng.hex(2);
        let from_tag = rng.hex(1);
        let auth_user = cfg
            .auth_username
            .clone()
            .unwrap_or_else(|| cfg.username.clone());
        let digest = DigestClient::with_secret(auth_user, cfg.secret.clone(), cfg.seed.to_vec());
        let requested_expiry = secs(cfg.expiry);
        Ok(Registration {
            fixed: dest.is_some(),
            targets: dest.into_iter().collect(),
            target: 0,
            tried: 0,
            request_uri,
            aor,
            contact,
            contact_uri,
            via_prefix,
            call_id,
            from_tag,
            cseq: 0,
            rng,
            digest,
            auth_kind: AuthKind::Www,
            challenge_fresh: false,
            requested_expiry,
            state: TrunkState::Unregistered,
            running: false,
            stopping: false,
            pending: None,
            rounds: 0,
            stale_rounds: 0,
            next_register: None,
            consecutive_failures: 0,
            last_error: None,
            granted: None,
            binding_expires_at: None,
            next_keepalive: None,
            keepalive_branch: None,
            keepalive_failures: 0,
            last_keepalive_answer: None,
            registers_sent: 0,
            keepalives_sent: 0,
            transmits: VecDeque::new(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrationConfig {
        &self.cfg
    }

    /// Our Contact URI (`sip:user@[pinned]:port;transport=udp`), e.g. to recognise requests the
    /// provider routes to this registration.
    pub fn contact_uri(&self) -> &str {
        &self.contact
    }

    /// The AOR (`sip:user@domain`).
    pub fn aor(&self) -> &str {
        &self.aor
    }

    /// The Call-ID shared by all our REGISTERs.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The expiry currently requested (the configured one, or raised by a `423`).
    pub fn requested_expiry(&self) -> Duration {
        Duration::from_secs(u64::from(self.requested_expiry))
    }

    /// The provider's servers in the order to try them (RFC 3263, from the caller's
    /// [`crate::Locator`]); ignored when the configuration fixes the next hop or the domain is an
    /// IP literal. The server in use stays in use when it is still listed (a binding lives
    /// there); otherwise the next request goes to the first one. The first list wakes a
    /// registration that waits in [`TrunkState::Resolving`].
    pub fn set_targets(&mut self, targets: &[SocketAddr]) {
        if self.fixed || targets == self.targets.as_slice() {
            return;
        }
        let current = self.current_target();
        self.targets = targets.to_vec();
        self.target = current
            .and_then(|c| self.targets.iter().position(|t| *t == c))
            .unwrap_or(0);
        self.tried = 0;
        debug!(trunk = %self.cfg.name, targets = ?self.targets, "trunk servers");
        if self.running
            && !self.stopping
            && self.state == TrunkState::Resolving
            && !self.targets.is_empty()
        {
            self.begin_attempt();
        }
    }

    /// The servers requests go to, in order; the one in use is [`TrunkStatus::target`].
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The current state.
    pub fn state(&self) -> &TrunkState {
        &self.state
    }

    /// True when not running (never started, or [`Self::stop`] has finished): nothing is in
    /// flight and nothing will be sent.
    pub fn is_stopped(&self) -> bool {
        !self.running && self.pending.is_none() && self.transmits.is_empty()
    }

    /// A snapshot for logs, metrics and ctl.
    pub fn status(&self) -> TrunkStatus {
        TrunkStatus {
            name: self.cfg.name.clone(),
            state: self.state.name(),
            last_error: self.last_error.as_ref().map(ToString::to_string),
            next_attempt: self.next_register,
            granted_expiry: self.granted,
            binding_expires_at: self.binding_expires_at,
            consecutive_failures: self.consecutive_failures,
            registers_sent: self.registers_sent,
            keepalives_sent: self.keepalives_sent,
            keepalive_failures: self.keepalive_failures,
            last_keepalive_answer: self.last_keepalive_answer,
            target: self.current_target(),
        }
    }

    /// Starts registering (and the keep-alive). A no-op while running; after [`Self::stop`] it
    /// starts afresh (same Call-ID, CSeq continuing).
    pub fn start(&mut self, now: Instant) {
        if self.running && !self.stopping {
            return;
        }
        self.running = true;
        self.stopping = false;
        self.pending = None;
        self.next_register = None;
        self.keepalive_branch = None;
        if let Some(k) = self.cfg.keepalive {
            // Registering trunks get their first liveness signal from the REGISTER itself.
            self.next_keepalive = Some(if self.cfg.register { now + k } else { now });
        }
        if self.cfg.register {
            info!(trunk = %self.cfg.name, aor = %self.aor, contact = %self.contact, "trunk registering");
            self.begin_attempt();
        } else {
            self.state = TrunkState::Unregistered;
        }
    }

    /// Graceful stop: un-registers (`Expires: 0` for our Contact) when the provider may hold a
    /// binding (registered, or a REGISTER in flight), stops the keep-alive and every retry.
    /// The state becomes [`TrunkState::Unregistered`] at once when there is nothing to remove,
    /// else after the answer (any answer, or the transaction's timeout).
    pub fn stop(&mut self, now: Instant) {
        if !self.running || self.stopping {
            return;
        }
        self.stopping = true;
        self.next_register = None;
        self.next_keepalive = None;
        self.keepalive_branch = None;
        let maybe_bound =
            self.pending.is_some() || self.binding_expires_at.is_some_and(|e| e > now);
        if self.cfg.register && maybe_bound {
            info!(trunk = %self.cfg.name, "trunk un-registering");
            self.state = TrunkState::Unregistering;
            self.rounds = 0;
            self.stale_rounds = 0;
            self.send_register(RegKind::Unregister);
        } else {
            self.pending = None;
            self.finish_stop();
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmits.pop_front()
    }

    /// The next deadline; call [`Self::handle_timeout`] when it is reached.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_register,
            self.next_keepalive,
            self.binding_expires_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires whatever is due at `now`: a refresh or retry, a keep-alive, the lapse of a binding
    /// whose refresh is still in flight.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.binding_expires_at.is_some_and(|e| e <= now) {
            self.binding_expires_at = None;
            if matches!(self.state, TrunkState::Registered { .. }) {
                warn!(trunk = %self.cfg.name, "trunk binding lapsed before the refresh was answered");
                self.state = TrunkState::Registering;
            }
        }
        if self.next_register.is_some_and(|t| t <= now) {
            self.next_register = None;
            if self.pending.is_none() && !self.stopping {
                self.begin_attempt();
            }
        }
        if let Some(t) = self.next_keepalive {
            if t <= now && !self.stopping {
                self.send_keepalive();
                if let Some(k) = self.cfg.keepalive {
                    // From `now`, not `t`: after a long stall one keep-alive, not a burst.
                    self.next_keepalive = Some(now + k);
                }
            }
        }
    }

    /// Feeds a response to one of our requests (as matched by the transaction layer). Returns
    /// false if it belongs to no request of this registration (another trunk's, or an old
    /// transaction's), in which case nothing changed.
    pub fn handle_response(&mut self, now: Instant, msg: &Message) -> bool {
        let Some(code) = msg.status() else {
            return false;
        };
        let Some(branch) = msg.top_via().ok().and_then(|v| v.branch()) else {
            return false;
        };
        if self.keepalive_branch.as_ref() == Some(&branch) {
            if code >= 200 {
                // Any final answer, even 404/405, shows the provider is up and the path open.
                self.keepalive_branch = None;
                self.keepalive_failures = 0;
                self.last_keepalive_answer = Some(now);
            }
            return true;
        }
        let Some(p) = self.pending.as_ref().filter(|p| p.branch == branch) else {
            return false;
        };
        let Ok(cseq) = msg.cseq() else {
            return false;
        };
        if cseq.seq != p.cseq
            || cseq.method != Method::Register
            || msg.call_id().ok().as_deref() != Some(self.call_id.as_bytes())
        {
            return false;
        }
        if code < 200 {
            return true;
        }
        let Some(p) = self.pending.take() else {
            return false;
        };
        match p.kind {
            RegKind::Register => self.on_register_final(now, code, msg, &p),
            RegKind::Unregister => self.on_unregister_final(code, msg, &p),
        }
        true
    }

    /// The client transaction of `branch` failed without a final response (Timer F, or the
    /// transport reported an error). Returns false if `branch` is none of ours in flight.
    pub fn transaction_timeout(&mut self, now: Instant, branch: &[u8]) -> bool {
        if self.keepalive_branch.as_deref() == Some(branch) {
            self.keepalive_branch = None;
            self.keepalive_failures = self.keepalive_failures.saturating_add(1);
            debug!(trunk = %self.cfg.name, failures = self.keepalive_failures, "trunk keep-alive unanswered");
            return true;
        }
        if self.pending.as_ref().is_none_or(|p| p.branch != branch) {
            return false;
        }
        let Some(p) = self.pending.take() else {
            return false;
        };
        match p.kind {
            RegKind::Register => {
                if !self.failover("no response") {
                    self.fail(now, RegError::Timeout, None);
                }
            }
            RegKind::Unregister => {
                self.last_error = Some(RegError::Timeout);
                self.finish_stop();
            }
        }
        true
    }

    // ----- internals ---------------------------------------------------------------------

    fn begin_attempt(&mut self) {
        if self.targets.is_empty() {
            debug!(trunk = %self.cfg.name, "trunk waits for the provider's address");
            self.state = TrunkState::Resolving;
            return;
        }
        self.tried = 0;
        self.rounds = 0;
        self.stale_rounds = 0;
        // A nonce kept from an earlier attempt is "cached", not fresh.
        self.challenge_fresh = false;
        if !matches!(self.state, TrunkState::Registered { .. }) {
            self.state = TrunkState::Registering;
        }
        self.send_register(RegKind::Register);
    }

    fn next_branch(&mut self) -> String {
        format!("{MAGIC_COOKIE}{}", self.rng.hex(1))
    }

    fn current_target(&self) -> Option<SocketAddr> {
        self.targets.get(self.target).copied()
    }

    /// Moves to the next server of the list after a timeout or `503` (RFC 3263 §4.3) and starts
    /// the attempt afresh there. False when there is no other server, or every one was tried in
    /// this attempt.
    fn failover(&mut self, why: &str) -> bool {
        self.tried += 1;
        if self.targets.len() < 2 || self.tried >= self.targets.len() {
            return false;
        }
        let from = self.current_target();
        self.target = (self.target + 1) % self.targets.len();
        warn!(trunk = %self.cfg.name, from = ?from, to = ?self.current_target(), why, "trunk registration fails over to the next server");
        // Another server has its own nonces: answer its challenge, not the old one.
        self.digest.reset();
        self.challenge_fresh = false;
        self.rounds = 0;
        self.stale_rounds = 0;
        self.send_register(RegKind::Register);
        true
    }

    fn send_register(&mut self, kind: RegKind) {
        let Some(dest) = self.current_target() else {
            // Callers check first; without a server there is nothing to send.
            return;
        };
        self.cseq = self.cseq.wrapping_add(1).max(1);
        let branch = self.next_branch();
        let expires = match kind {
            RegKind::Register => self.requested_expiry,
            RegKind::Unregister => 0,
        };
        let mut b = RequestBuilder::new(&Method::Register, &self.request_uri)
            .header("Via", &format!("{};branch={branch};rport", self.via_prefix))
            .header("Max-Forwards", "70")
            .header("From", &format!("<{}>;tag={}", self.aor, self.from_tag))
            .header("To", &format!("<{}>", self.aor))
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{} REGISTER", self.cseq))
            .header("Contact", &format!("<{}>", self.contact))
            .header("Expires", &expires.to_string());
        let mut fresh_auth = None;
        if let Some(creds) = self
            .digest
            .authorization("REGISTER", &self.request_uri, b"")
        {
            b = b.header(self.auth_kind.credentials_header(), &creds);
            if self.challenge_fresh {
                fresh_auth = Some(self.auth_kind);
            }
        }
        let data = b
            .header("User-Agent", &self.cfg.user_agent)
            .header("Allow", &caps::allow(caps::TRUNK_REGISTER_METHODS))
            .build();
        self.rounds += 1;
        self.registers_sent += 1;
        debug!(trunk = %self.cfg.name, cseq = self.cseq, expires, auth = fresh_auth.is_some(), "trunk REGISTER");
        let branch = Bytes::from(branch);
        self.pending = Some(Pending {
            kind,
            branch: branch.clone(),
            cseq: self.cseq,
            fresh_auth,
        });
        self.transmits.push_back(Outgoing {
            kind: match kind {
                RegKind::Register => OutgoingKind::Register,
                RegKind::Unregister => OutgoingKind::Unregister,
            },
            data,
            branch,
            dest,
            transport: self.cfg.transport,
        });
    }

    fn send_keepalive(&mut self) {
        let Some(dest) = self.current_target() else {
            return;
        };
        if self.keepalive_branch.take().is_some() {
            // The previous OPTIONS got no final answer yet and no timeout was reported.
            self.keepalive_failures = self.keepalive_failures.saturating_add(1);
        }
        self.keepalives_sent += 1;
        if self.cfg.transport.is_stream() {
            self.transmits.push_back(Outgoing {
                kind: OutgoingKind::Crlf,
                data: Bytes::from_static(b"\r\n\r\n"),
                branch: Bytes::new(),
                dest,
                transport: self.cfg.transport,
            });
            return;
        }
        let branch = self.next_branch();
        let call_id = self.rng.hex(2);
        let tag = self.rng.hex(1);
        let data = RequestBuilder::new(&Method::Options, &self.request_uri)
            .header("Via", &format!("{};branch={branch};rport", self.via_prefix))
            .header("Max-Forwards", "70")
            .header("From", &format!("<{}>;tag={tag}", self.aor))
            .header("To", &format!("<{}>", self.request_uri))
            .header("Call-ID", &call_id)
            .header("CSeq", "1 OPTIONS")
            .header("Contact", &format!("<{}>", self.contact))
            .header("Accept", "application/sdp")
            .header("User-Agent", &self.cfg.user_agent)
            .build();
        let branch = Bytes::from(branch);
        self.keepalive_branch = Some(branch.clone());
        self.transmits.push_back(Outgoing {
            kind: OutgoingKind::Options,
            data,
            branch,
            dest,
            transport: self.cfg.transport,
        });
    }

    /// Sends the next REGISTER of the same attempt, unless the attempt used up its rounds.
    fn follow_up(&mut self, now: Instant, kind: RegKind) {
        if self.rounds >= self.cfg.retry.max_requests_per_attempt {
            match kind {
                RegKind::Register => self.fail(now, RegError::TooManyRounds, None),
                RegKind::Unregister => {
                    self.last_error = Some(RegError::TooManyRounds);
                    self.finish_stop();
                }
            }
            return;
        }
        self.send_register(kind);
    }

    fn on_register_final(&mut self, now: Instant, code: u16, msg: &Message, p: &Pending) {
        match code {
            200..=299 => self.on_success(now, msg),
            401 | 407 => {
                match self.on_challenge(code, msg, p) {
                    Ok(()) => self.follow_up(now, RegKind::Register),
                    // A loop of stale nonces is the provider's trouble, not our password's.
                    Err(e @ RegError::TooManyRounds) => self.fail(now, e, None),
                    Err(e) => self.reject(now, e),
                }
            }
            403 => self.reject(now, status_error(code, msg)),
            423 => {
                let min = msg
                    .header(HeaderName::MinExpires)
                    .and_then(|v| leading_secs(&v));
                match min {
                    Some(m) if m > self.requested_expiry && m <= MAX_EXPIRY_SECS => {
                        info!(trunk = %self.cfg.name, from = self.requested_expiry, to = m, "trunk expiry raised by 423");
                        self.requested_expiry = m;
                        self.follow_up(now, RegKind::Register);
                    }
                    _ => self.fail(now, RegError::IntervalTooBrief, None),
                }
            }
            503 if self.failover("503") => {}
            _ => {
                let retry_after = msg
                    .other_header("Retry-After")
                    .and_then(|v| leading_secs(&v))
                    .map(|s| Duration::from_secs(u64::from(s)));
                self.fail(now, status_error(code, msg), retry_after);
            }
        }
    }

    fn on_unregister_final(&mut self, code: u16, msg: &Message, p: &Pending) {
        match code {
            200..=299 => {
                self.last_error = None;
            }
            401 | 407 => match self.on_challenge(code, msg, p) {
                Ok(()) => {
                    // Un-registering never backs off: answer at once or give up.
                    if self.rounds < self.cfg.retry.max_requests_per_attempt {
                        self.send_register(RegKind::Unregister);
                        return;
                    }
                    self.last_error = Some(RegError::TooManyRounds);
                }
                Err(e) => self.last_error = Some(e),
            },
            _ => self.last_error = Some(status_error(code, msg)),
        }
        self.finish_stop();
    }

    fn finish_stop(&mut self) {
        self.state = TrunkState::Unregistered;
        self.binding_expires_at = None;
        self.granted = None;
        self.running = false;
        info!(trunk = %self.cfg.name, "trunk unregistered");
    }

    /// Takes a `401`/`407`: decides whether it is a credentials failure or something to answer,
    /// and prepares the digest client for the follow-up.
    fn on_challenge(&mut self, code: u16, msg: &Message, p: &Pending) -> Result<(), RegError> {
        let kind = AuthKind::from_status(code).ok_or(RegError::NoUsableChallenge)?;
        let header = match kind {
            AuthKind::Www => HeaderName::WwwAuthenticate,
            AuthKind::Proxy => HeaderName::ProxyAuthenticate,
        };
        let all: Vec<Bytes> = msg.header_values(header).collect();
        let parsed: Vec<Option<Challenge>> = all.iter().map(|v| Challenge::parse(v).ok()).collect();
        let mut values: Vec<&Bytes> = Vec::with_capacity(all.len());
        let mut offered = None;
        let mut stale = false;
        for (v, c) in all.iter().zip(&parsed) {
            let Some(c) = c else { continue };
            match &self.cfg.realm {
                Some(r) if *r != c.realm => offered = Some(c.realm.clone()),
                _ => {
                    stale |= c.stale;
                    values.push(v);
                }
            }
        }
        if values.is_empty() {
            return Err(match (offered, &self.cfg.realm) {
                (Some(offered), Some(expected)) => RegError::RealmMismatch {
                    offered,
                    expected: expected.clone(),
                },
                _ => RegError::NoUsableChallenge,
            });
        }
        if p.fresh_auth == Some(kind) && !stale {
            // We answered a challenge from this very attempt and were challenged again.
            return Err(RegError::BadCredentials { code });
        }
        if stale {
            self.stale_rounds += 1;
            if self.stale_rounds > MAX_STALE_ROUNDS {
                return Err(RegError::TooManyRounds);
            }
        }
        match self.digest.on_challenge(&values) {
            Ok(()) => {}
            Err(ClientError::Rejected) => {
                // Re-challenged after answering a cached nonce: the provider forgot it without
                // saying `stale`. Start over with this challenge (the next failure is final).
                self.digest.reset();
                self.digest
                    .on_challenge(&values)
                    .map_err(|_| RegError::NoUsableChallenge)?;
            }
            Err(ClientError::NoUsableChallenge) => return Err(RegError::NoUsableChallenge),
        }
        self.auth_kind = kind;
        self.challenge_fresh = true;
        Ok(())
    }

    fn on_success(&mut self, now: Instant, msg: &Message) {
        self.digest.on_success();
        self.challenge_fresh = false;
        let from_contact = msg
            .contact_iter()
            .map_while(Result::ok)
            .find(|c| self.is_our_contact(&c.addr.uri))
            .and_then(|c| c.expires());
        let granted = from_contact
            .or_else(|| msg.expires().ok().flatten())
            .unwrap_or(self.requested_expiry);
        if granted == 0 {
            self.fail(now, RegError::ZeroExpiry, None);
            return;
        }
        let granted = Duration::from_secs(u64::from(granted));
        let expires_at = now + granted;
        let was_registered = matches!(self.state, TrunkState::Registered { .. });
        self.state = TrunkState::Registered { expires_at };
        self.granted = Some(granted);
        self.binding_expires_at = Some(expires_at);
        self.consecutive_failures = 0;
        self.last_error = None;
        let refresh = refresh_after(granted);
        self.next_register = Some(now + refresh);
        if was_registered {
            debug!(trunk = %self.cfg.name, granted = granted.as_secs(), refresh_in = refresh.as_secs(), "trunk registration refreshed");
        } else {
            info!(trunk = %self.cfg.name, granted = granted.as_secs(), refresh_in = refresh.as_secs(), "trunk registered");
        }
    }

    /// RFC 3261 §10.2.4: our binding is the Contact whose URI equals ours; user, host and port
    /// decide (registrars add or reorder parameters).
    fn is_our_contact(&self, uri: &Uri) -> bool {
        let ours = &self.contact_uri;
        let host_eq = match (&uri.host, &ours.host) {
            (Some(Host::Name(a)), Some(Host::Name(b))) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        };
        uri.user == ours.user && host_eq && uri.port.unwrap_or(5060) == ours.port.unwrap_or(5060)
    }

    /// Jitters `d` into `[0.75, 1.0] * d`.
    fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(1.0 - 0.25 * self.rng.unit())
    }

    /// The attempt failed for a reason other than the credentials: back off and retry.
    fn fail(&mut self, now: Instant, e: RegError, retry_after: Option<Duration>) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let r = self.cfg.retry;
        let exp = self.consecutive_failures.saturating_sub(1).min(30);
        let nominal = r
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(r.max_backoff);
        let mut delay = self.jitter(nominal);
        if let Some(ra) = retry_after {
            delay = delay.max(ra.min(r.max_backoff));
        }
        let next_attempt = now + delay;
        if self.tried > 0 {
            // Every server failed: the next attempt starts again at the most preferred one.
            self.target = 0;
        }
        warn!(trunk = %self.cfg.name, error = %e, attempts = self.consecutive_failures, retry_in_ms = delay.as_millis() as u64, "trunk registration failed");
        self.state = TrunkState::Failing {
            attempts: self.consecutive_failures,
            last_error: e.clone(),
            next_attempt,
        };
        self.last_error = Some(e);
        self.next_register = Some(next_attempt);
    }

    /// The provider refused the credentials: forget the challenge, retry much later.
    fn reject(&mut self, now: Instant, e: RegError) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.digest.reset();
        self.challenge_fresh = false;
        let delay = self.jitter(self.cfg.retry.rejected_retry);
        let next_attempt = now + delay;
        warn!(trunk = %self.cfg.name, error = %e, retry_in_s = delay.as_secs(), "trunk credentials rejected");
        self.state = TrunkState::CredentialsRejected {
            last_error: e.clone(),
            next_attempt,
        };
        self.last_error = Some(e);
        self.next_register = Some(next_attempt);
    }
}

fn status_error(code: u16, msg: &Message) -> RegError {
    let reason = match &msg.start {
        podpbx_sip::StartLine::Response { reason, .. } => {
            String::from_utf8_lossy(reason).into_owned()
        }
        podpbx_sip::StartLine::Request { .. } => String::new(),
    };
    RegError::Status { code, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margins() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3600)), s(3240));
        assert_eq!(refresh_after(s(600)), s(530));
        assert_eq!(refresh_after(s(120)), s(60));
        assert_eq!(refresh_after(s(60)), s(30));
        assert_eq!(refresh_after(s(4)), s(2));
        assert_eq!(refresh_after(s(1)), Duration::from_millis(500));
    }

    #[test]
    fn leading_seconds() {
        assert_eq!(leading_secs(b"120"), Some(120));
        assert_eq!(leading_secs(b" 30 (busy);duration=10"), Some(30));
        assert_eq!(leading_secs(b"x"), None);
        assert_eq!(leading_secs(b"99999999999"), None);
    }

    #[test]
    fn user_part_validation() {
        assert!(valid_user("4930123456"));
        assert!(valid_user("+49.30-x_y"));
        assert!(!valid_user("a b"));
        assert!(!valid_user("a@b"));
        assert!(!valid_user("a:b"));
        assert!(!valid_user(""));
    }
}
