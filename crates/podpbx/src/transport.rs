//! SIP transports: UDP and TCP sockets bound to the exact pinned addresses.
//!
//! This is the thin I/O shell around the sans-IO core. Inbound bytes are framed and parsed here
//! (so both cores share the parsing work) and handed to the core as [`Inbound`]; outbound bytes
//! leave from the socket of the destination's family, so the far end always sees a pinned source
//! address (the provider's access list depends on it).
//!
//! TLS (RFC 3261 §26.2.1) is TCP plus rustls: the same connection table, framing, idle timeout
//! and keep-alive answers; only the handshake (with a deadline) sits between accept/connect and
//! the read and write loops.

use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use podpbx_sip::message::{leading_keepalive, StreamFramer};
use podpbx_sip::{Framing, Message, SourceKey, Transport};
use rustls::pki_types::ServerName;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

/// A TLS handshake (either side) that takes longer than this fails: a peer that opens a
/// connection and sends nothing holds no task for long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a message came from or goes to: the observed flow, not what headers claim.
pub use podpbx_sip::Flow;

/// Something the transports hand to the core.
#[derive(Debug)]
pub enum Inbound {
    /// A parsed message.
    Message(Box<Message>, Flow),
    /// Input that did not parse: the core answers `400` if it can, unless the source is
    /// blocked (a blocked source gets nothing at all).
    Malformed {
        data: Bytes,
        reason: String,
        flow: Flow,
    },
    /// A send that was handed off (a new TCP connection) failed later.
    SendFailed {
        transport: Transport,
        dest: SocketAddr,
        conn: u64,
    },
}

/// Transport settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Addresses to bind (at most one per family).
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    pub udp: bool,
    pub tcp: bool,
    /// A connection silent for this long is closed (one podpbx opened is pinged first).
    pub tcp_idle: Duration,
    /// A message must be complete this long after its first octet (an accepted connection's
    /// first message: after the accept or TLS handshake); octets trickling in do not extend it.
    pub tcp_message_timeout: Duration,
    /// Most inbound TCP and TLS connections at once.
    pub tcp_max_connections: usize,
    /// Most inbound TCP and TLS connections from one source (IPv4 address, IPv6 prefix).
    pub tcp_max_per_source: usize,
    /// IPv6 sources are counted by this prefix length.
    pub ipv6_prefix: u8,
    pub max_message: usize,
    /// SIP over TLS: listener port and rustls configurations (None: TLS off).
    pub tls: Option<TlsTransport>,
}

/// TLS listener and client settings.
#[derive(Clone)]
pub struct TlsTransport {
    /// Listener port on every pinned address (5061 by default).
    pub port: u16,
    /// Server side: the certificate that follows its files.
    pub server: Arc<rustls::ServerConfig>,
    /// Client side (connections podpbx opens): verifies chain and name.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Bound sockets plus the TCP connection table; cheap to clone.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    udp: Vec<(SocketAddr, Arc<crate::udp::SipSocket>)>,
    tcp_local: Vec<SocketAddr>,
    tls_local: Vec<SocketAddr>,
    tls_connector: Option<TlsConnector>,
    /// The name a server's certificate must carry, per destination (trunks); other
    /// destinations are verified against their IP address.
    tls_names: Mutex<HashMap<SocketAddr, ServerName<'static>>>,
    conns: Mutex<ConnTable>,
    next_conn: AtomicU64,
    stats: Arc<Stats>,
    inbound: mpsc::Sender<Inbound>,
    cfg: TransportConfig,
}

#[derive(Default)]
struct ConnTable {
    by_id: HashMap<u64, mpsc::Sender<Bytes>>,
    /// Connection-oriented transports are keyed by (transport, peer): TCP and TLS to the same
    /// address are different flows.
    by_peer: HashMap<(Transport, SocketAddr), u64>,
    /// Inbound connections open (accepted, TLS handshakes included), in total and per source.
    inbound: usize,
    per_source: HashMap<SourceKey, usize>,
}

/// Errors sending a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("refusing to send to {0}: broadcast, multicast or unspecified address")]
    Refused(IpAddr),
    #[error("no pinned {0} address to send from")]
    NoSocket(&'static str),
    #[error("send to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

impl Transports {
    /// Binds every configured listener; fails naming the address on any error.
    pub async fn bind(
        cfg: TransportConfig,
        stats: Arc<Stats>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Transports, String> {
        let mut udp = Vec::new();
        let mut listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        for ip in &cfg.addrs {
            let addr = SocketAddr::new(*ip, cfg.port);
            if cfg.udp {
                let s = udp_socket(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
                let s = crate::udp::register(s.into()).map_err(|e| format!("UDP {addr}: {e}"))?;
                let local = s
                    .get_ref()
                    .local_addr()
                    .map_err(|e| format!("UDP {addr}: {e}"))?;
                info!(%local, "SIP UDP listener bound");
                udp.push((local, Arc::new(s)));
            }
            if cfg.tcp {
                let s = tcp_listener(addr).map_err(|e| format!("cannot bind TCP {addr}: {e}"))?;
                let l = TcpListener::from_std(s.into()).map_err(|e| format!("TCP {addr}: {e}"))?;
                let local = l.local_addr().map_err(|e| format!("TCP {addr}: {e}"))?;
                info!(%local, "SIP TCP listener bound");
                listeners.push((local, l));
            }
            if let Some(tls) = &cfg.tls {
                let addr = SocketAddr::new(*ip, tls.port);
                let s = tcp_listener(addr).map_err(|e| format!("cannot bind TLS {addr}: {e}"))?;
                let l = TcpListener::from_std(s.into()).map_err(|e| format!("TLS {addr}: {e}"))?;
                let local = l.local_addr().map_err(|e| format!("TLS {addr}: {e}"))?;
                info!(%local, "SIP TLS listener bound");
                tls_listeners.push((local, l));
            }
        }
        let acceptor = cfg
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.server.clone()));
        let tls_connector = cfg
            .tls
            .as_ref()
            .map(|t| TlsConnector::from(t.client.clone()));
        let t = Transports {
            inner: Arc::new(Inner {
                udp,
                tcp_local: listeners.iter().map(|(a, _)| *a).collect(),
                tls_local: tls_listeners.iter().map(|(a, _)| *a).collect(),
                tls_connector,
                tls_names: Mutex::new(HashMap::new()),
                conns: Mutex::new(ConnTable::default()),
                next_conn: AtomicU64::new(1),
                stats,
                inbound,
                cfg,
            }),
        };
        // UDP is read by the signalling loop itself (`crate::udp`), see `udp_sockets`.
        for (local, l) in listeners {
            tokio::spawn(t.clone().accept_loop(local, l, None));
        }
        for (local, l) in tls_listeners {
            tokio::spawn(t.clone().accept_loop(local, l, acceptor.clone()));
        }
        Ok(t)
    }

    /// The UDP sockets (one per family) with their local addresses: the signalling loop reads
    /// them and sends through them in batches (`crate::udp::UdpIo`).
    pub fn udp_sockets(&self) -> Vec<(SocketAddr, Arc<crate::udp::SipSocket>)> {
        self.inner.udp.clone()
    }

    /// Counts a message that reached the core, or a keep-alive, read outside the transports'
    /// own tasks (UDP, on the loop).
    pub fn count_in(&self, keepalive: bool) {
        if keepalive {
            Stats::bump(&self.inner.stats.keepalives);
        } else {
            Stats::bump(&self.inner.stats.messages_in);
        }
    }

    /// Counts datagrams sent, or failed, outside [`Transports::send`] (UDP batches).
    pub fn count_out(&self, sent: usize, failed: usize) {
        self.inner
            .stats
            .messages_out
            .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .stats
            .send_errors
            .fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bound TLS listener addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.inner.tls_local.clone()
    }

    /// The name the certificate of the TLS server at `dest` must carry (a trunk's host name).
    /// Without one, a destination's certificate must name its IP address.
    pub fn set_tls_name(&self, dest: SocketAddr, name: ServerName<'static>) {
        self.inner
            .tls_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest, name);
    }

    /// The bound UDP addresses (ports resolved).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.inner.udp.iter().map(|(a, _)| *a).collect()
    }

    /// The bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.inner.tcp_local.clone()
    }

    /// Our pinned local address for a peer's family and transport (for Via and Contact).
    pub fn local_for(&self, transport: Transport, peer: IpAddr) -> Option<SocketAddr> {
        let list: Vec<SocketAddr> = match transport {
            Transport::Udp => self.udp_addrs(),
            Transport::Tcp => self.tcp_addrs(),
            Transport::Tls => self.tls_addrs(),
        };
        list.into_iter().find(|a| a.is_ipv4() == peer.is_ipv4())
    }

    /// Sends `data` to `remote` without ever waiting, so a slow or dead peer cannot stall the
    /// signalling core. UDP sends go out at once (a full socket buffer drops the datagram, which
    /// SIP's retransmissions cover). Over TCP an existing connection (`conn`, or one to the same
    /// peer) is reused; otherwise a task opens one from the pinned address and reports failure
    /// back as [`Inbound::SendFailed`].
    pub fn send(
        &self,
        transport: Transport,
        remote: SocketAddr,
        conn: u64,
        data: Bytes,
    ) -> Result<(), SendError> {
        let ip = remote.ip();
        if !sendable(ip) {
            Stats::bump(&self.inner.stats.refused_destinations);
            return Err(SendError::Refused(ip));
        }
        let res = match transport {
            Transport::Udp => self.send_udp(remote, &data),
            Transport::Tcp | Transport::Tls => self.send_stream(transport, remote, conn, data),
        };
        match &res {
            Ok(()) => Stats::bump(&self.inner.stats.messages_out),
            Err(_) => Stats::bump(&self.inner.stats.send_errors),
        }
        res
    }

    fn send_udp(&self, remote: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        let Some((_, sock)) = self
            .inner
            .udp
            .iter()
            .find(|(a, _)| a.is_ipv4() == remote.is_ipv4())
        else {
            Stats::bump(&self.inner.stats.refused_destinations);
            return Err(SendError::NoSocket(family(remote.ip())));
        };
        // Non-blocking: a full buffer fails with WouldBlock, like `UdpSocket::try_send_to`.
        sock.get_ref()
            .send_to(data, remote)
            .map(|_| ())
            .map_err(|source| SendError::Io {
                addr: remote,
                source,
            })
    }

    fn send_stream(
        &self,
        transport: Transport,
        remote: SocketAddr,
        conn: u64,
        data: Bytes,
    ) -> Result<(), SendError> {
        let existing = {
            let table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            let id = if table.by_id.contains_key(&conn) {
                Some(conn)
            } else {
                table.by_peer.get(&(transport, remote)).copied()
            };
            id.and_then(|id| table.by_id.get(&id).cloned())
        };
        if let Some(tx) = existing {
            return tx.try_send(data).map_err(|_| SendError::Io {
                addr: remote,
                source: io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "connection backlogged or closed",
                ),
            });
        }
        // RFC 3261 §18.2.2: the connection is gone, open a new one, from the pinned address of
        // the peer's family (the provider checks our source address).
        let locals = match transport {
            Transport::Tls => &self.inner.tls_local,
            _ => &self.inner.tcp_local,
        };
        let Some(bind_ip) = locals
            .iter()
            .find(|a| a.is_ipv4() == remote.is_ipv4())
            .map(|a| a.ip())
        else {
            Stats::bump(&self.inner.stats.refused_destinations);
            return Err(SendError::NoSocket(family(remote.ip())));
        };
        // The connection is in the table before it is up: messages sent meanwhile queue on it
        // instead of opening a second connection (a REGISTER and an OPTIONS at start-up).
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let _ = tx.try_send(data);
        {
            let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            table.by_id.insert(id, tx.clone());
            table.by_peer.insert((transport, remote), id);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let flow = Flow {
                transport,
                local: SocketAddr::new(bind_ip, 0),
                remote,
                conn: id,
            };
            let res = async {
                let stream = connect_from(bind_ip, remote).await?;
                let local = stream.local_addr()?;
                let flow = Flow { local, ..flow };
                match transport {
                    Transport::Tls => {
                        let tls = this.connect_tls(stream, remote).await?;
                        this.start_conn(tls, flow, tx, rx, None);
                    }
                    _ => this.start_conn(stream, flow, tx, rx, None),
                }
                Ok::<(), io::Error>(())
            };
            if let Err(e) = res.await {
                debug!(%remote, transport = ?transport, error = %e, "connect failed");
                this.forget_conn(&flow);
                Stats::bump(&this.inner.stats.send_errors);
                let _ = this
                    .inner
                    .inbound
                    .send(Inbound::SendFailed {
                        transport,
                        dest: remote,
                        conn,
                    })
                    .await;
            }
        });
        Ok(())
    }

    /// The client side of a TLS handshake: the server's chain is checked against the roots and
    /// its name against the destination's (trunk's) name, else the IP address. A refused
    /// certificate is logged as a warning: it is a misconfiguration or an attack, and calls
    /// through that trunk fail until it is fixed.
    async fn connect_tls(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let Some(connector) = &self.inner.tls_connector else {
            return Err(io::Error::other("TLS is not enabled"));
        };
        let name = self
            .inner
            .tls_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&remote)
            .cloned()
            .unwrap_or_else(|| ServerName::IpAddress(remote.ip().into()));
        let shown = name.to_str().into_owned();
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
            Ok(Ok(s)) => {
                debug!(%remote, name = %shown, "TLS connection up");
                Ok(s)
            }
            Ok(Err(e)) => {
                Stats::bump(&self.inner.stats.tls_handshake_failures);
                warn!(%remote, name = %shown, error = %e, "TLS connection refused: the server's certificate was not accepted or the handshake failed");
                Err(e)
            }
            Err(_) => {
                Stats::bump(&self.inner.stats.tls_handshake_failures);
                warn!(%remote, name = %shown, "TLS handshake timed out");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }

    async fn accept_loop(self, local: SocketAddr, listener: TcpListener, tls: Option<TlsAcceptor>) {
        // Out of file descriptors under a flood, accept fails for every queued connection.
        let mut failed_log = crate::logging::network_warning();
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let key = SourceKey::new(remote.ip(), self.inner.cfg.ipv6_prefix);
                    if !self.admit(key) {
                        // Over a cap: close at once, with a reset so nothing of ours lingers in
                        // TIME_WAIT. The caps bound the memory and tasks an attacker can pin.
                        Stats::bump(&self.inner.stats.tcp_refused);
                        debug!(%remote, source = %key, "connection refused: cap reached");
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                        continue;
                    }
                    let local = stream.local_addr().unwrap_or(local);
                    match &tls {
                        None => {
                            self.register_conn(stream, local, remote, key);
                        }
                        Some(acceptor) => {
                            let this = self.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                this.accept_tls(acceptor, stream, local, remote, key).await
                            });
                        }
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = failed_log.check(std::time::Instant::now()) {
                        warn!(%local, error = %e, suppressed, "TCP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Counts a new inbound connection from `key` when neither the total nor the per-source
    /// cap is reached.
    fn admit(&self, key: SourceKey) -> bool {
        let cfg = &self.inner.cfg;
        let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        if table.inbound >= cfg.tcp_max_connections {
            return false;
        }
        let n = table.per_source.get(&key).copied().unwrap_or(0);
        if n >= cfg.tcp_max_per_source {
            return false;
        }
        table.per_source.insert(key, n + 1);
        table.inbound += 1;
        Stats::bump(&self.inner.stats.tcp_open);
        true
    }

    /// An inbound connection admitted by [`Self::admit`] is gone.
    fn release(&self, key: SourceKey) {
        let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        table.inbound = table.inbound.saturating_sub(1);
        self.inner.stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = table.per_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.per_source.remove(&key);
            }
        }
    }

    /// The server side of a TLS handshake, bounded in time. Failures are counted and logged at
    /// debug level only: scanners on the public address fail handshakes all day long.
    async fn accept_tls(
        self,
        acceptor: TlsAcceptor,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        key: SourceKey,
    ) {
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                self.register_stream(Transport::Tls, tls, local, remote, key);
                return;
            }
            Ok(Err(e)) => {
                Stats::bump(&self.inner.stats.tls_handshake_failures);
                debug!(%remote, error = %e, "inbound TLS handshake failed");
            }
            Err(_) => {
                Stats::bump(&self.inner.stats.tls_handshake_failures);
                debug!(%remote, "inbound TLS handshake timed out");
            }
        }
        self.release(key);
    }

    fn register_conn(
        &self,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        key: SourceKey,
    ) -> u64 {
        let _ = stream.set_nodelay(true);
        self.register_stream(Transport::Tcp, stream, local, remote, key)
    }

    /// Puts an established connection (accepted, admitted as `key`) into the table and starts
    /// its loops.
    fn register_stream<S>(
        &self,
        transport: Transport,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        key: SourceKey,
    ) -> u64
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        {
            let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            table.by_id.insert(id, tx.clone());
            table.by_peer.insert((transport, remote), id);
        }
        let flow = Flow {
            transport,
            local,
            remote,
            conn: id,
        };
        self.start_conn(stream, flow, tx, rx, Some(key));
        id
    }

    /// Starts the read and write loops of a connection already in the table; `inbound` is the
    /// source key of an accepted connection, `None` for one podpbx opened.
    fn start_conn<S>(
        &self,
        stream: S,
        flow: Flow,
        tx: mpsc::Sender<Bytes>,
        rx: mpsc::Receiver<Bytes>,
        inbound: Option<SourceKey>,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Stats::bump(&self.inner.stats.tcp_connections);
        let (rd, wr) = tokio::io::split(stream);
        tokio::spawn(write_loop(wr, rx));
        let outbound = inbound.is_none();
        debug!(local = %flow.local, remote = %flow.remote, conn = flow.conn, transport = ?flow.transport, outbound, "connection up");
        tokio::spawn(self.clone().read_loop(rd, flow, tx, inbound));
    }

    fn forget_conn(&self, flow: &Flow) {
        let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        table.by_id.remove(&flow.conn);
        let key = (flow.transport, flow.remote);
        if table.by_peer.get(&key) == Some(&flow.conn) {
            table.by_peer.remove(&key);
        }
    }

    /// Reads, frames and delivers a connection's messages until it closes, times out or cannot
    /// be framed.
    ///
    /// Two clocks. A connection silent for `tcp_idle` is closed, except that one podpbx opened
    /// (to a trunk) first sends an RFC 5626 §4.4.1 CRLFCRLF ping and closes only when the peer
    /// stays silent for another idle period. And once the first octet of a message arrives (for
    /// an accepted connection: from the start, until its first message) the whole message must
    /// arrive within `tcp_message_timeout`, however it trickles in. The framer looks at each
    /// octet once, so a head dripped octet by octet costs linear, not quadratic, work; the buffer
    /// grows with what arrives, up to `max_message`.
    async fn read_loop<R: AsyncRead + Unpin>(
        self,
        mut rd: R,
        flow: Flow,
        tx: mpsc::Sender<Bytes>,
        inbound: Option<SourceKey>,
    ) {
        let idle = self.inner.cfg.tcp_idle;
        let msg_timeout = self.inner.cfg.tcp_message_timeout;
        let max = self.inner.cfg.max_message;
        let outbound = inbound.is_none();
        let mut buf = BytesMut::new();
        let mut framer = StreamFramer::default();
        let mut msg_deadline = inbound.map(|_| tokio::time::Instant::now() + msg_timeout);
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let mut pinged = false;
        'conn: loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let deadline = msg_deadline.map_or(idle_deadline, |m| m.min(idle_deadline));
            match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                Err(_) if msg_deadline.is_some_and(|m| m <= idle_deadline) => {
                    Stats::bump(&self.inner.stats.tcp_timeouts);
                    debug!(remote = %flow.remote, conn = flow.conn, buffered = buf.len(), "message not complete in time: closing");
                    break;
                }
                Err(_) if outbound && !pinged => {
                    pinged = true;
                    idle_deadline = tokio::time::Instant::now() + idle;
                    if tx.send(Bytes::from_static(b"\r\n\r\n")).await.is_err() {
                        break;
                    }
                    continue;
                }
                Err(_) => {
                    debug!(remote = %flow.remote, conn = flow.conn, "connection idle timeout");
                    break;
                }
                Ok(Err(_)) | Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
            }
            pinged = false;
            idle_deadline = tokio::time::Instant::now() + idle;
            loop {
                let ka = leading_keepalive(&buf);
                if ka > 0 {
                    // RFC 5626 §3.5.1: a CRLFCRLF ping is answered with a CRLF pong.
                    let pings = buf[..ka].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    let _ = buf.split_to(ka);
                    framer = StreamFramer::default();
                    for _ in 0..pings {
                        Stats::bump(&self.inner.stats.keepalives);
                        if tx.send(Bytes::from_static(b"\r\n")).await.is_err() {
                            break 'conn;
                        }
                    }
                }
                if buf.is_empty() {
                    break;
                }
                // The first octet of a message starts its clock.
                msg_deadline.get_or_insert_with(|| tokio::time::Instant::now() + msg_timeout);
                match framer.next(&buf) {
                    Ok(Some(len)) => {
                        let data = buf.split_to(len).freeze();
                        framer = StreamFramer::default();
                        msg_deadline = None;
                        self.deliver(data, Framing::Stream, flow).await;
                    }
                    Ok(None) if buf.len() <= max => break,
                    Ok(None) | Err(_) => {
                        // A stream we cannot frame cannot be resynchronised: hand it to the
                        // core (which answers 400 unless the source is blocked), give the
                        // answer a moment to go out on this connection, close.
                        let data = buf.split().freeze();
                        self.deliver(data, Framing::Stream, flow).await;
                        tokio::time::sleep(UNFRAMEABLE_LINGER).await;
                        break 'conn;
                    }
                }
            }
        }
        self.forget_conn(&flow);
        if let Some(key) = inbound {
            self.release(key);
        }
        debug!(remote = %flow.remote, conn = flow.conn, transport = ?flow.transport, "connection closed");
    }

    /// Parses and hands a message to the core; unparseable input is answered `400` or counted.
    async fn deliver(&self, data: Bytes, framing: Framing, flow: Flow) {
        match Message::parse(data.clone(), framing) {
            Ok(msg) => {
                Stats::bump(&self.inner.stats.messages_in);
                let _ = self
                    .inner
                    .inbound
                    .send(Inbound::Message(Box::new(msg), flow))
                    .await;
            }
            Err(err) => {
                let _ = self
                    .inner
                    .inbound
                    .send(Inbound::Malformed {
                        data,
                        reason: err.to_string(),
                        flow,
                    })
                    .await;
            }
        }
    }
}

/// How long a connection whose stream could not be framed stays open for the core's `400`.
const UNFRAMEABLE_LINGER: Duration = Duration::from_millis(500);

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if wr.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Never send to broadcast, multicast or unspecified destinations (RFC 4475 §3.3.10 bcast).
pub fn sendable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Bursts of REGISTER refreshes after a router reboot must not overflow the default buffer.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // A restarted pod must rebind at once even with connections in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok(s)
}

async fn connect_from(bind_ip: IpAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if remote.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // The provider checks our source address: bind the pinned address before connecting.
    s.bind(&SockAddr::from(SocketAddr::new(bind_ip, 0)))?;
    match s.connect(&SockAddr::from(remote)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(s.into())?;
    tokio::time::timeout(Duration::from_secs(5), stream.writable())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}
