//! SIP transports: UDP and TCP sockets bound to the exact pinned addresses.
//!
//! This is the thin I/O shell around the sans-IO core. Inbound bytes are framed and parsed here
//! (so both cores share the parsing work) and handed to the core as [`Inbound`]; outbound bytes
//! leave from the socket of the destination's family, so the far end always sees a pinned source
//! address (the provider's access list depends on it).

use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use podpbx_sip::message::{frame_stream, leading_keepalive};
use podpbx_sip::{Framing, Message, Transport};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Where a message came from or goes to: the observed flow, not what headers claim.
pub use podpbx_b2bua::Flow;

/// Something the transports hand to the core.
#[derive(Debug)]
pub enum Inbound {
    /// A parsed message.
    Message(Box<Message>, Flow),
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
    pub tcp_idle: Duration,
    pub max_message: usize,
}

/// Bound sockets plus the TCP connection table; cheap to clone.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    tcp_local: Vec<SocketAddr>,
    conns: Mutex<ConnTable>,
    next_conn: AtomicU64,
    stats: Arc<Stats>,
    inbound: mpsc::Sender<Inbound>,
    cfg: TransportConfig,
}

#[derive(Default)]
struct ConnTable {
    by_id: HashMap<u64, (SocketAddr, mpsc::Sender<Bytes>)>,
    by_peer: HashMap<SocketAddr, u64>,
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
        for ip in &cfg.addrs {
            let addr = SocketAddr::new(*ip, cfg.port);
            if cfg.udp {
                let s = udp_socket(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
                let s = UdpSocket::from_std(s.into()).map_err(|e| format!("UDP {addr}: {e}"))?;
                let local = s.local_addr().map_err(|e| format!("UDP {addr}: {e}"))?;
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
        }
        let t = Transports {
            inner: Arc::new(Inner {
                udp,
                tcp_local: listeners.iter().map(|(a, _)| *a).collect(),
                conns: Mutex::new(ConnTable::default()),
                next_conn: AtomicU64::new(1),
                stats,
                inbound,
                cfg,
            }),
        };
        for (local, sock) in &t.inner.udp {
            tokio::spawn(t.clone().udp_loop(*local, sock.clone()));
        }
        for (local, l) in listeners {
            tokio::spawn(t.clone().accept_loop(local, l));
        }
        Ok(t)
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
            Transport::Tcp => self.send_tcp(remote, conn, data),
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
        sock.try_send_to(data, remote)
            .map(|_| ())
            .map_err(|source| SendError::Io {
                addr: remote,
                source,
            })
    }

    fn send_tcp(&self, remote: SocketAddr, conn: u64, data: Bytes) -> Result<(), SendError> {
        let existing = {
            let table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            let id = if table.by_id.contains_key(&conn) {
                Some(conn)
            } else {
                table.by_peer.get(&remote).copied()
            };
            id.and_then(|id| table.by_id.get(&id).map(|(_, tx)| tx.clone()))
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
        let Some(bind_ip) = self
            .inner
            .tcp_local
            .iter()
            .find(|a| a.is_ipv4() == remote.is_ipv4())
            .map(|a| a.ip())
        else {
            Stats::bump(&self.inner.stats.refused_destinations);
            return Err(SendError::NoSocket(family(remote.ip())));
        };
        let this = self.clone();
        tokio::spawn(async move {
            let sent = async {
                let stream = connect_from(bind_ip, remote).await?;
                let local = stream.local_addr()?;
                let (_, tx) = this.register_conn(stream, local, remote);
                tx.send(data)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
            };
            if let Err(e) = sent.await {
                debug!(%remote, error = %e, "TCP connect/send failed");
                Stats::bump(&this.inner.stats.send_errors);
                let _ = this
                    .inner
                    .inbound
                    .send(Inbound::SendFailed {
                        transport: Transport::Tcp,
                        dest: remote,
                        conn,
                    })
                    .await;
            }
        });
        Ok(())
    }

    async fn udp_loop(self, local: SocketAddr, sock: Arc<UdpSocket>) {
        let max = self.inner.cfg.max_message.max(1500);
        // One large block is carved into per-datagram `Bytes` (no copy, no zeroing); a new block
        // is allocated only when the spare room drops below one maximum-size datagram.
        let mut buf = BytesMut::with_capacity(max * 8);
        loop {
            if buf.capacity() - buf.len() < max {
                buf = BytesMut::with_capacity(max * 8);
            }
            let (n, remote) = match sock.recv_buf_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors surface here on Linux; they must not stop the listener.
                    debug!(%local, error = %e, "UDP receive error");
                    continue;
                }
            };
            let data = buf.split_to(n).freeze();
            if leading_keepalive(&data) == data.len() {
                // RFC 5626 §4.4.1 STUN-less UDP keep-alive: nothing to answer.
                Stats::bump(&self.inner.stats.keepalives);
                continue;
            }
            let flow = Flow {
                transport: Transport::Udp,
                local,
                remote,
                conn: 0,
            };
            self.deliver(data, Framing::Datagram, flow).await;
        }
    }

    async fn accept_loop(self, local: SocketAddr, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let local = stream.local_addr().unwrap_or(local);
                    self.register_conn(stream, local, remote);
                }
                Err(e) => {
                    warn!(%local, error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn register_conn(
        &self,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> (u64, mpsc::Sender<Bytes>) {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        {
            let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            table.by_id.insert(id, (local, tx.clone()));
            table.by_peer.insert(remote, id);
        }
        Stats::bump(&self.inner.stats.tcp_connections);
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        tokio::spawn(write_loop(wr, rx));
        let flow = Flow {
            transport: Transport::Tcp,
            local,
            remote,
            conn: id,
        };
        tokio::spawn(self.clone().read_loop(rd, flow, tx.clone()));
        debug!(%local, %remote, conn = id, "TCP connection up");
        (id, tx)
    }

    async fn read_loop(
        self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        flow: Flow,
        tx: mpsc::Sender<Bytes>,
    ) {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let idle = self.inner.cfg.tcp_idle;
        let max = self.inner.cfg.max_message;
        'conn: loop {
            let n = match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Err(_) => {
                    debug!(remote = %flow.remote, conn = flow.conn, "TCP idle timeout");
                    break;
                }
                Ok(Err(_)) | Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
            };
            let _ = n;
            loop {
                let ka = leading_keepalive(&buf);
                if ka > 0 {
                    // RFC 5626 §3.5.1: a CRLFCRLF ping is answered with a CRLF pong.
                    let pings = buf[..ka].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    let _ = buf.split_to(ka);
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
                match frame_stream(&buf) {
                    Ok(Some(len)) => {
                        let data = buf.split_to(len).freeze();
                        self.deliver(data, Framing::Stream, flow).await;
                    }
                    Ok(None) if buf.len() <= max => break,
                    Ok(None) | Err(_) => {
                        // A stream we cannot frame cannot be resynchronised: answer if we can, close.
                        let data = buf.split().freeze();
                        self.deliver(data, Framing::Stream, flow).await;
                        break 'conn;
                    }
                }
            }
        }
        let mut table = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        table.by_id.remove(&flow.conn);
        if table.by_peer.get(&flow.remote) == Some(&flow.conn) {
            table.by_peer.remove(&flow.remote);
        }
        debug!(remote = %flow.remote, conn = flow.conn, "TCP connection closed");
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
            Err(err) => match crate::core::bad_request(&data, &err.to_string(), flow) {
                Some((dest, resp)) => {
                    Stats::bump(&self.inner.stats.bad_requests);
                    debug!(remote = %flow.remote, error = %err, "malformed message answered 400");
                    let _ = self.send(flow.transport, dest, flow.conn, resp);
                }
                None => {
                    Stats::bump(&self.inner.stats.dropped_malformed);
                    debug!(remote = %flow.remote, error = %err, "malformed message dropped");
                }
            },
        }
    }
}

async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
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
