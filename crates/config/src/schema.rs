//! The typed configuration. See `CONFIG.md` for every key, its type, its
//! default and its meaning.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cidr::Cidr;
use crate::home::{
    EventsConfig, FeatureCodes, Forwarding, Mode, ModeMatch, UserVoicemail, VoicemailConfig,
    Webhook,
};
use crate::pattern::Pattern;
use crate::timespec::{Clock, LocalTime, TimeMatch};
use podpbx_sip::Secret;

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[sip]`: signalling addresses, transports, domain, timers.
    pub sip: SipConfig,
    /// `[tls]`: SIP over TLS; `Some` exactly when `sip.transports` lists `tls`.
    pub tls: Option<TlsConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[admin]`: the HTTP admin/metrics listener.
    pub admin: AdminConfig,
    /// `[dns]`: where trunk host names are looked up.
    pub dns: DnsConfig,
    /// `[registrar]`.
    pub registrar: RegistrarConfig,
    /// `[security]`: brute-force protection.
    pub security: SecurityConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[media]`: RTP relay.
    pub media: MediaConfig,
    /// `[calls]`: call limits and CDRs.
    pub calls: CallsConfig,
    /// `[[users]]`, in file order.
    pub users: Vec<User>,
    /// `[[groups]]`, in file order, with `members` resolved.
    pub groups: Vec<Group>,
    /// `[[trunks]]`, in file order.
    pub trunks: Vec<Trunk>,
    /// `[[dialplan]]` rules, in evaluation order.
    pub dialplan: Vec<Rule>,
    /// `[clock]`: the time zone `match.time` is read in.
    pub clock: Clock,
    /// `[[modes]]`: manual switches rules can match (night mode).
    pub modes: Vec<Mode>,
    /// `[voicemail]`.
    pub voicemail: VoicemailConfig,
    /// `[features]`: feature codes.
    pub features: FeatureCodes,
    /// `[[webhooks]]`.
    pub webhooks: Vec<Webhook>,
    /// `[events]`: webhook delivery.
    pub events: EventsConfig,
    /// `[email]`: voicemail notifications by e-mail (`None`: off).
    pub email: Option<crate::home::EmailConfig>,
    /// `users` by name, built on first use ([`Config::user`] runs per REGISTER and per call).
    pub(crate) user_index: UserIndex,
}

/// Positions of the users by name, built once on first lookup; an entry that does not match
/// (the list was changed after the index was built) falls back to a scan. Beside it, whether
/// any mailbox wants an unsolicited MWI NOTIFY (asked per REGISTER: without such a mailbox the
/// lookup of the registering user, a few cache misses among 10 000 users, is skipped).
#[derive(Default)]
pub(crate) struct UserIndex(
    std::sync::OnceLock<std::collections::HashMap<String, usize>>,
    std::sync::OnceLock<bool>,
);

impl Clone for UserIndex {
    fn clone(&self) -> Self {
        UserIndex::default()
    }
}

impl PartialEq for UserIndex {
    /// Derived from `users`: never a difference of its own.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for UserIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserIndex")
    }
}

/// SIP transport protocol: the one definition in `podpbx-sip` (the keys spell it `udp`/`tcp`).
pub use podpbx_sip::Transport;

/// `[sip]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// Pinned IPv6 address to bind.
    pub ipv6: Option<Ipv6Addr>,
    /// Pinned IPv4 address to bind.
    pub ipv4: Option<Ipv4Addr>,
    /// Port for every transport and address.
    pub port: u16,
    /// Enabled transports (non-empty, no duplicates).
    pub transports: Vec<Transport>,
    /// SIP domain users register in (`sip:alice@<domain>`).
    pub domain: String,
    /// Digest authentication realm.
    pub realm: String,
    /// Whether the wildcard addresses `::`/`0.0.0.0` may be bound.
    pub allow_wildcard: bool,
    /// RFC 3261 T1 (RTT estimate).
    pub t1: Duration,
    /// RFC 3261 T2 (maximum retransmit interval).
    pub t2: Duration,
    /// RFC 3261 T4 (maximum time a message stays in the network).
    pub t4: Duration,
    /// Idle TCP connections are closed after this long.
    pub tcp_idle_timeout: Duration,
    /// A SIP message over TCP must be complete this long after its first byte (and a new
    /// connection must deliver its first message this soon), or the connection is closed.
    pub tcp_message_timeout: Duration,
    /// Most inbound TCP connections open at once.
    pub tcp_max_connections: usize,
    /// Most inbound TCP connections from one source (IPv4 address or IPv6 prefix of
    /// `security.ipv6_prefix_length`).
    pub tcp_max_connections_per_source: usize,
    /// Largest accepted SIP message.
    pub max_message_bytes: usize,
    /// Bytes the transaction table may hold (keys, kept messages, bookkeeping).
    pub transaction_memory: usize,
    /// Share (%) of `transaction_memory` the live transactions of one source may hold.
    pub transaction_source_percent: u8,
    /// `User-Agent`/`Server` header value (empty: header not sent).
    pub user_agent: String,
}

impl SipConfig {
    /// The socket addresses to bind (IPv6 first), each for every transport.
    pub fn bind_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if let Some(a) = self.ipv6 {
            out.push(SocketAddr::new(IpAddr::V6(a), self.port));
        }
        if let Some(a) = self.ipv4 {
            out.push(SocketAddr::new(IpAddr::V4(a), self.port));
        }
        out
    }

    /// Whether UDP is enabled.
    pub fn udp(&self) -> bool {
        self.has_transport(Transport::Udp)
    }

    /// Whether TCP is enabled.
    pub fn tcp(&self) -> bool {
        self.has_transport(Transport::Tcp)
    }

    /// Whether `transport` is enabled.
    pub fn has_transport(&self, transport: Transport) -> bool {
        self.transports.contains(&transport)
    }
}

/// Lowest TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `[tls]`: SIP over TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Listener port on every pinned address.
    pub port: u16,
    /// PEM certificate chain of the listener (leaf first); reloaded when it changes.
    pub cert_file: PathBuf,
    /// PEM private key of the listener.
    pub key_file: PathBuf,
    /// PEM CA certificates that replace the built-in roots when verifying servers podpbx
    /// connects to (trunks); `None`: the built-in Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Lowest protocol version offered and accepted.
    pub min_version: TlsVersion,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,podpbx_sip=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Listener for the admin/metrics HTTP endpoint; `None` = disabled.
    pub listen: Option<SocketAddr>,
    /// `token_file`: the bearer token `/api/*` and `/metrics` require (read at load; the
    /// listener re-reads the file per request, so a rotated Secret takes effect). Required when
    /// `listen` is not a loopback address.
    pub token: Option<Secret>,
    /// `health_listen`: a second listener that serves only `/healthz` and `/readyz` (and
    /// `/metrics` with `health_metrics`), unauthenticated, with its own connection budget.
    pub health_listen: Option<SocketAddr>,
    /// `health_metrics`: also serve `/metrics` on `health_listen`.
    pub health_metrics: bool,
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Name servers to ask (port 53 unless given); empty = the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
}

/// `[registrar]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrarConfig {
    /// Shorter requested expiries get `423 Interval Too Brief`.
    pub min_expires: Duration,
    /// Longer requested expiries are reduced to this.
    pub max_expires: Duration,
    /// Expiry used when the REGISTER names none.
    pub default_expires: Duration,
    /// Where bindings are persisted across restarts.
    pub state_file: PathBuf,
    /// OPTIONS ping interval for registered contacts; `None` = off.
    pub qualify_interval: Option<Duration>,
    /// How long a digest nonce stays valid.
    pub nonce_ttl: Duration,
    /// Digest algorithms challenged with, most preferred first: one
    /// `WWW-Authenticate`/`Proxy-Authenticate` header each (RFC 8760).
    /// Non-empty, no duplicates.
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

/// A digest authentication algorithm the registrar can challenge with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `MD5` (RFC 2617); what every SIP device understands.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl DigestAlgorithm {
    /// The token as written in the configuration and in SIP headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    /// Failed authentications from one source address within
    /// `failure_window` that trigger a block; 0 = never block.
    pub max_auth_failures: u32,
    /// Window over which failures are counted.
    pub failure_window: Duration,
    /// How long a source stays blocked.
    pub block: Duration,
    /// Sources that are never blocked.
    pub trusted_networks: Vec<Cidr>,
    /// IPv6 sources are counted (failures, blocks, connections) by this prefix length.
    pub ipv6_prefix_length: u8,
    /// Failures from all sources together per minute beyond which credentials from sources
    /// without a recent success are not checked; 0 = no global cap.
    pub max_auth_failures_per_minute: u32,
}

impl SecurityConfig {
    /// Whether `ip` is in one of the trusted networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Directory for persistent state (relative paths: relative to the
    /// working directory).
    pub data_dir: PathBuf,
}

/// `[media]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// First RTP port (even).
    pub port_min: u16,
    /// Last RTP port (inclusive).
    pub port_max: u16,
    /// A call whose media stops for this long is ended; `None` = never.
    pub timeout: Option<Duration>,
    /// Media timeout while a call is on hold; `None` = never.
    pub hold_timeout: Option<Duration>,
    /// DSCP value for RTP packets (0..=63; 46 = EF).
    pub dscp: u8,
    /// How RTP legs get their ports.
    pub port_layout: MediaPortLayout,
    /// The relay's interrupt moderation sleep under load (zero: off).
    pub moderation: Duration,
}

/// `media.port_layout`: how RTP legs get their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPortLayout {
    /// A few RTP/RTCP port pairs bound at start, shared by every call; peers told apart by
    /// their exact source address (no socket opened per call, fewer system calls per packet).
    Shared,
    /// An RTP/RTCP port pair of its own per leg, drawn at random from the range.
    PerCall,
}

/// `[calls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallsConfig {
    /// Calls are ended after this long; `None` = unlimited.
    pub max_duration: Option<Duration>,
    /// Maximum simultaneous calls in total; `None` = unlimited.
    pub max_concurrent: Option<u32>,
    /// Maximum calls in set-up (the caller's INVITE not yet answered, or our 2xx not yet
    /// acknowledged): beyond it new INVITEs get a stateless `503` (overload control, reason
    /// `setup`); `None` = unlimited.
    pub max_setup: Option<u32>,
    /// Call detail records (JSON lines) file; `None` = no CDRs.
    pub cdr_file: Option<PathBuf>,
    /// Session timer interval podpbx asks for on each leg (RFC 4028); `None` = podpbx asks
    /// for none (it still honours a peer that asks).
    pub session_timer: Option<Duration>,
    /// The smallest session interval podpbx accepts (`Min-SE`; below it: `422`).
    pub min_se: Duration,
    /// Answered legs are probed with an in-dialog `OPTIONS` this often, a `481`/`408` or no
    /// answer ends the call; `None` (the default) = never.
    pub keepalive: Option<Duration>,
}

/// How DTMF is sent to a user's phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtmf {
    /// RFC 4733 when the phone offers `telephone-event`, else SIP INFO.
    Auto,
    /// RFC 4733 RTP events.
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay`).
    Info,
}

/// `[[users]]`: a local extension.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Extension / SIP username (unique).
    pub name: String,
    /// Display name for caller ID.
    pub display_name: Option<String>,
    /// Digest password; `None` only for `identify_by_source` users.
    pub password: Option<Secret>,
    /// Source networks the user may register / call from (empty = any).
    pub allow_from: Vec<Cidr>,
    /// Maximum simultaneous registered contacts.
    pub max_contacts: u32,
    /// DTMF method.
    pub dtmf: Dtmf,
    /// Requests from `allow_from` are attributed to this user without
    /// digest authentication.
    pub identify_by_source: bool,
    /// Accept RFC 2069 digest answers (without qop) from this user's device.
    pub allow_rfc2069: bool,
    /// An `identify_by_source` user's calls may go out through a trunk under any rule (without
    /// it only rules with `from = "device"` or naming the user as `caller` may send them there).
    pub may_use_trunks: bool,
    /// Maximum simultaneous calls of this user; `None` = unlimited.
    pub max_calls: Option<u32>,
    /// Groups this user joins (in addition to the groups' `members`).
    pub groups: Vec<String>,
    /// The transport this user must use to register and call (`None`: any enabled one).
    pub transport: Option<Transport>,
    /// `voicemail = true`: the user has a mailbox.
    pub voicemail: Option<UserVoicemail>,
    /// `doorbell = true`: calls from this user are doorbell rings (webhook event).
    pub doorbell: bool,
    /// Do not disturb at start (feature codes change it at run time).
    pub dnd: bool,
    /// Call forwarding at start (feature codes change it at run time).
    pub forward: Forwarding,
    /// Where voicemail notifications go (with `[email]`).
    pub email: Option<String>,
    /// SRTP on this user's call legs.
    pub srtp: Srtp,
    /// Calls out through a trunk withhold this user's caller ID (`From: Anonymous`,
    /// `Privacy: id`; the provider still gets the identity in `P-Asserted-Identity` when the
    /// trunk has `send_pai`).
    pub withhold_caller_id: bool,
}

/// SRTP (RFC 3711, keys by SDES, RFC 4568) on the call legs of a user or trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Srtp {
    /// Plain RTP only.
    #[default]
    Off,
    /// SRTP when the peer offers or accepts it over TLS, plain RTP otherwise.
    Optional,
    /// SRTP only (over TLS); a call that cannot have it fails with 488.
    Required,
}

impl User {
    /// Whether a request from `ip` is allowed for this user.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(ip))
    }
}

/// Ringing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingStrategy {
    /// All targets at once; the first to answer wins.
    Parallel,
    /// One after the other, each for the timeout.
    Sequential,
}

/// `[[groups]]`: a ring group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Group name (unique, distinct from every user name).
    pub name: String,
    /// Member user names: the group's `members`, then users that list the
    /// group in their `groups`, without duplicates.
    pub members: Vec<String>,
    /// How the members are rung.
    pub strategy: RingStrategy,
    /// Parallel: total ring time; sequential: ring time per member.
    pub ring_timeout: Duration,
}

/// A trunk's host (an IP literal or a DNS name): the one definition in `podpbx-sip`.
pub use podpbx_sip::Host;

/// IP address family: the one definition in `podpbx-sdp`, shared with the relay.
pub use podpbx_sdp::Family;

/// `[[trunks]]`: a connection to a SIP provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Trunk {
    /// Trunk name (unique).
    pub name: String,
    /// Provider host.
    pub host: Host,
    /// Provider port.
    pub port: u16,
    /// Locate the host by NAPTR and SRV records (RFC 3263): the host is a name and `port` is not
    /// set. Otherwise only its A/AAAA records (a name) or nothing (an IP literal) are used.
    pub srv: bool,
    /// Transport to the provider.
    pub transport: Transport,
    /// Account user name (From/To user of REGISTER).
    pub username: Option<String>,
    /// Digest user name, when different from `username`.
    pub auth_username: Option<String>,
    /// Digest password.
    pub password: Option<Secret>,
    /// Expected digest realm (`None` = accept the provider's).
    pub realm: Option<String>,
    /// Requested registration expiry.
    pub expiry: Duration,
    /// Numbers the provider delivers on this trunk.
    pub dids: Vec<String>,
    /// Default outgoing caller ID.
    pub caller_id: Option<String>,
    /// Address family used to reach the provider.
    pub family: Family,
    /// Networks the provider sends from (requests from there are accepted as
    /// coming from this trunk).
    pub networks: Vec<Cidr>,
    /// Lower values are preferred.
    pub priority: u32,
    /// OPTIONS keep-alive interval; `None` = off.
    pub keepalive: Option<Duration>,
    /// Whether to REGISTER with the provider.
    pub register: bool,
    /// SRTP towards the provider.
    pub srtp: Srtp,
    /// Use session timers (RFC 4028) on calls through this trunk.
    pub session_timers: bool,
    /// Final statuses from this trunk after which an outbound call tries the next trunk of
    /// its rule.
    pub failover_statuses: Vec<u16>,
    /// Outbound INVITEs carry `P-Asserted-Identity` with the caller ID (RFC 3325), and a
    /// withheld caller ID is sent as `From: Anonymous` with `Privacy: id`.
    pub send_pai: bool,
    /// Calls from this trunk show the caller of the provider's `P-Asserted-Identity` (instead of
    /// its `From`) to the phones.
    pub trust_pai: bool,
    /// The provider's `Alert-Info` reaches the phones (auto-answer parts always removed);
    /// otherwise it is dropped.
    pub alert_info: bool,
}

impl Trunk {
    /// The digest user name: `auth_username`, else `username`.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_username.as_deref().or(self.username.as_deref())
    }
}

/// Which calls a dialplan rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSource {
    /// Calls placed by local users (devices identified by source included).
    Local,
    /// Calls placed by `identify_by_source` users only (devices known by their address, which
    /// a forged UDP packet can claim): the explicit way to let them reach a trunk.
    Device,
    /// Calls arriving from a trunk.
    Trunk,
    /// Both.
    Any,
}

/// How a rule matches the dialled number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberMatch {
    /// Every number.
    Any,
    /// Exactly this number.
    Exact(String),
    /// Numbers starting with this.
    Prefix(String),
    /// An Asterisk-style pattern.
    Pattern(Pattern),
}

impl NumberMatch {
    /// Whether `number` matches.
    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberMatch::Any => true,
            NumberMatch::Exact(n) => n == number,
            NumberMatch::Prefix(p) => number.starts_with(p.as_str()),
            NumberMatch::Pattern(p) => p.matches(number),
        }
    }
}

/// A user or a group, as named in a dialplan rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `[[users]]` entry.
    User(String),
    /// A `[[groups]]` entry.
    Group(String),
}

impl Target {
    /// The user or group name.
    pub fn name(&self) -> &str {
        match self {
            Target::User(n) | Target::Group(n) => n,
        }
    }
}

/// The `match` table of a dialplan rule. All given conditions must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// Dialled number condition.
    pub number: NumberMatch,
    /// Call source. Normalised: `caller` implies `Local`, `did` implies
    /// `Trunk`.
    pub from: CallSource,
    /// The calling user, or any member of the calling group.
    pub caller: Option<Target>,
    /// The DID the call arrived on.
    pub did: Option<String>,
    /// Local time condition (`[clock] timezone`).
    pub time: Option<TimeMatch>,
    /// A `[[modes]]` switch that must be on (or off).
    pub mode: Option<ModeMatch>,
}

/// What to do with a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ring users and/or groups.
    Ring {
        /// Who to ring (a group rings all its members).
        targets: Vec<Target>,
        /// Parallel or one after the other.
        mode: RingStrategy,
        /// Parallel: total ring time; sequential: time per target.
        timeout: Duration,
    },
    /// Ring the user or group whose name is the dialled number (404 if none).
    Local {
        /// Ring time.
        timeout: Duration,
    },
    /// Send the call out through a trunk.
    Trunk {
        /// The trunks to try, most preferred first (by their `priority`); the next one is
        /// tried when one is unavailable, fails with one of its `failover_statuses`, or does
        /// not answer at all.
        trunks: Vec<String>,
        /// Digits removed from the front of the number.
        strip: usize,
        /// Text put in front of the number (after `strip`).
        prepend: String,
        /// Caller ID override (else the trunk's `caller_id`).
        caller_id: Option<String>,
    },
    /// Answer with podpbx's voicemail: the caller leaves a message in `mailbox` (`None`: the
    /// dialled number's mailbox).
    Voicemail {
        /// A user with `voicemail = true`.
        mailbox: Option<String>,
    },
    /// Reject the call.
    Reject {
        /// SIP status code (400..=699).
        status: u16,
        /// Reason phrase (`None` = the standard one).
        reason: Option<String>,
    },
}

/// A `[[dialplan]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Rule name (`dialplan[N]` when not given).
    pub name: String,
    /// Conditions.
    pub matcher: Match,
    /// First action.
    pub action: Action,
    /// Actions tried in order when the previous one fails (no answer, busy,
    /// unavailable).
    pub fallback: Vec<Action>,
    /// `Alert-Info` put on the INVITEs to the phones this rule rings (e.g. intercom /
    /// auto-answer), instead of any the caller sent.
    pub alert_info: Option<String>,
    /// `Call-Info` put on the INVITEs to the phones this rule rings (e.g.
    /// `<sip:pbx>;answer-after=0`), instead of any the caller sent.
    pub call_info: Option<String>,
}

impl Rule {
    /// The action followed by the fallbacks.
    pub fn steps(&self) -> impl Iterator<Item = &Action> {
        std::iter::once(&self.action).chain(self.fallback.iter())
    }
}

/// Where a call to be routed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// Placed by a local user.
    Local {
        /// The calling user's name.
        user: &'a str,
    },
    /// Arrived from a trunk.
    Trunk {
        /// The trunk's name.
        trunk: &'a str,
        /// The DID it was addressed to, if known.
        did: Option<&'a str>,
    },
}

impl Config {
    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        let index = self.user_index.0.get_or_init(|| {
            let mut m = std::collections::HashMap::with_capacity(self.users.len());
            for (i, u) in self.users.iter().enumerate() {
                m.entry(u.name.clone()).or_insert(i);
            }
            m
        });
        match index.get(name).and_then(|&i| self.users.get(i)) {
            Some(u) if u.name == name => Some(u),
            Some(_) => self.users.iter().find(|u| u.name == name),
            None if index.len() == self.users.len() => None,
            None => self.users.iter().find(|u| u.name == name),
        }
    }

    /// Whether any user's mailbox sends an unsolicited MWI NOTIFY on registration (derived from
    /// `users` once, like the user index: a configuration is not changed after it is built).
    pub fn any_unsolicited_mwi(&self) -> bool {
        *self.user_index.1.get_or_init(|| {
            self.users
                .iter()
                .any(|u| u.voicemail.as_ref().is_some_and(|v| v.unsolicited_mwi))
        })
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The trunk named `name`.
    pub fn trunk(&self, name: &str) -> Option<&Trunk> {
        self.trunks.iter().find(|t| t.name == name)
    }

    /// Whether user `user` is a member of group `group`.
    pub fn is_member(&self, user: &str, group: &str) -> bool {
        self.group(group)
            .is_some_and(|g| g.members.iter().any(|m| m == user))
    }

    /// Whether `m` accepts a call from `origin` to `number` when the time and the modes are
    /// not known: rules with `time` or `mode` conditions do not match (see
    /// [`Config::rule_matches_at`]).
    pub fn rule_matches(&self, m: &Match, origin: &Origin<'_>, number: &str) -> bool {
        self.rule_matches_at(m, origin, number, &When::UNKNOWN)
    }

    /// Whether `m` accepts a call from `origin` to `number` at `when`.
    pub fn rule_matches_at(
        &self,
        m: &Match,
        origin: &Origin<'_>,
        number: &str,
        when: &When<'_>,
    ) -> bool {
        let time_ok = match (&m.time, &when.local) {
            (None, _) => true,
            (Some(t), Some(l)) => t.matches(l),
            (Some(_), None) => false,
        };
        let mode_ok = match &m.mode {
            None => true,
            Some(mm) => {
                let on = (when.mode)(&mm.mode)
                    .or_else(|| {
                        self.modes
                            .iter()
                            .find(|x| x.name == mm.mode)
                            .map(|x| x.initial)
                    })
                    .unwrap_or(false);
                on == mm.on
            }
        };
        if !(time_ok && mode_ok) {
            return false;
        }
        let source_ok = match (m.from, origin) {
            (CallSource::Any, _)
            | (CallSource::Local, Origin::Local { .. })
            | (CallSource::Trunk, Origin::Trunk { .. }) => true,
            (CallSource::Device, Origin::Local { user }) => self.is_device(user),
            _ => false,
        };
        let caller_ok = match (&m.caller, origin) {
            (None, _) => true,
            (Some(Target::User(u)), Origin::Local { user }) => u == user,
            (Some(Target::Group(g)), Origin::Local { user }) => self.is_member(user, g),
            (Some(_), Origin::Trunk { .. }) => false,
        };
        let did_ok = match (&m.did, origin) {
            (None, _) => true,
            (Some(want), Origin::Trunk { did: Some(d), .. }) => want == d,
            (Some(_), _) => false,
        };
        source_ok && caller_ok && did_ok && m.number.matches(number)
    }

    /// Whether `user` is identified by its source address (no digest): its calls prove nothing
    /// but a UDP source address, which anyone can forge.
    pub fn is_device(&self, user: &str) -> bool {
        self.user(user).is_some_and(|u| u.identify_by_source)
    }

    /// Whether a call from `origin` that `rule` routes may go out through a trunk (toll fraud
    /// by forged source): callers identified only by a source address (devices, and calls that
    /// come from a trunk's networks) need a rule that says so explicitly: `from = "device"`,
    /// `caller` naming the device, or the user's `may_use_trunks` for a device; `from = "trunk"`
    /// (or a `did` condition) for a call from a trunk. Authenticated users always may.
    pub fn may_reach_trunk(&self, rule: &Rule, origin: &Origin<'_>) -> bool {
        match origin {
            Origin::Local { user } => match self.user(user) {
                Some(u) if u.identify_by_source => {
                    u.may_use_trunks
                        || rule.matcher.from == CallSource::Device
                        || rule.matcher.caller == Some(Target::User(u.name.clone()))
                }
                _ => true,
            },
            Origin::Trunk { .. } => rule.matcher.from == CallSource::Trunk,
        }
    }

    /// Rules through which a source that proves nothing but its address (a device identified
    /// by source, a trunk's networks) can reach a trunk, as warnings for `podpbx check` and
    /// the log at start and reload. Each names the rule, the source and the trunks.
    pub fn trunk_exposure_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for rule in &self.dialplan {
            let trunks: Vec<&str> = rule
                .steps()
                .filter_map(|a| match a {
                    Action::Trunk { trunks, .. } => Some(trunks.iter().map(String::as_str)),
                    _ => None,
                })
                .flatten()
                .collect();
            if trunks.is_empty() {
                continue;
            }
            let to = trunks.join("`, `");
            let m = &rule.matcher;
            if m.from == CallSource::Trunk {
                out.push(format!(
                    "dialplan rule `{}`: calls from a trunk's networks (a forgeable UDP source) go out again through trunk `{to}`",
                    rule.name
                ));
            }
            for u in self.users.iter().filter(|u| u.identify_by_source) {
                let source_ok = matches!(
                    m.from,
                    CallSource::Any | CallSource::Local | CallSource::Device
                );
                let caller_ok = match &m.caller {
                    None => true,
                    Some(Target::User(c)) => *c == u.name,
                    Some(Target::Group(g)) => self.is_member(&u.name, g),
                };
                let origin = Origin::Local { user: &u.name };
                if source_ok && caller_ok && self.may_reach_trunk(rule, &origin) {
                    out.push(format!(
                        "dialplan rule `{}`: user `{}` is identified by its source address only (a forgeable UDP source) and reaches trunk `{to}`",
                        rule.name, u.name
                    ));
                }
            }
        }
        out
    }

    /// The first dialplan rule that matches, if any (no match: the caller
    /// gets `404 Not Found`). Time and mode conditions never match here: use
    /// [`Config::route_at`].
    pub fn route(&self, origin: &Origin<'_>, number: &str) -> Option<&Rule> {
        self.route_at(origin, number, &When::UNKNOWN)
    }

    /// The first dialplan rule that matches at `when`.
    pub fn route_at(&self, origin: &Origin<'_>, number: &str, when: &When<'_>) -> Option<&Rule> {
        self.dialplan
            .iter()
            .find(|r| self.rule_matches_at(&r.matcher, origin, number, when))
    }

    /// The user named `name` if it has a mailbox.
    pub fn mailbox(&self, name: &str) -> Option<&User> {
        self.user(name).filter(|u| u.voicemail.is_some())
    }

    /// The mode named `name`.
    pub fn mode(&self, name: &str) -> Option<&Mode> {
        self.modes.iter().find(|m| m.name == name)
    }
}

/// The moment a call is routed: the local time (from [`Clock::local`]) and the run-time state
/// of the `[[modes]]` switches.
pub struct When<'a> {
    /// Local date and time; `None`: unknown (time conditions do not match).
    pub local: Option<LocalTime>,
    /// A mode's run-time state; `None`: never switched, its `initial` applies.
    pub mode: &'a dyn Fn(&str) -> Option<bool>,
}

impl When<'static> {
    /// Nothing known.
    pub const UNKNOWN: When<'static> = When {
        local: None,
        mode: &|_| None,
    };
}

impl<'a> When<'a> {
    /// At wall-clock `now` in `config`'s time zone, with `modes` as the switches' state.
    pub fn at(
        config: &Config,
        now: std::time::SystemTime,
        mode: &'a dyn Fn(&str) -> Option<bool>,
    ) -> When<'a> {
        When {
            local: Some(config.clock.local(now)),
            mode,
        }
    }
}
