//! The admin listeners' HTTP/1.1 server, deliberately minimal and hardened because the port is
//! reachable by anything on the host network namespace: GET/HEAD (and POST for `/api/reload`)
//! only, `Connection: close` on every answer, request line and headers at most 8 KiB, 2 s to
//! send them, a bounded number of connections per listener (further connections get a
//! best-effort `503` and are closed), no chunked bodies. What each path answers is
//! [`super::Admin`]'s routing; this module only reads requests and writes answers.

use super::Admin;
use podpbx_config::Secret;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Concurrent admin connections; more are refused so the listener cannot exhaust the process.
pub const MAX_CONNECTIONS: usize = 64;
/// Concurrent connections on the health listener: its own budget, so clients holding every
/// admin connection open do not fail the probes.
pub const MAX_HEALTH_CONNECTIONS: usize = 16;
/// Largest request line plus headers.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (and discarded): only `POST /api/reload` may have one.
const MAX_BODY: usize = 4 * 1024;
/// Time a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the whole answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a listener serves.
pub(super) enum Role {
    /// `[admin] listen`: everything. With a token, `/api/*` and `/metrics` require it.
    Admin { token: Option<Arc<Secret>> },
    /// `[admin] health_listen`: `/healthz` and `/readyz` (and `/metrics` when `metrics`), no token.
    Health { metrics: bool },
}

pub(super) async fn accept_loop(
    admin: Admin,
    listener: TcpListener,
    role: Arc<Role>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let admin = admin.clone();
                let role = role.clone();
                tokio::spawn(async move {
                    handle(&admin, &role, stream, peer).await;
                    drop(permit);
                });
            }
            Err(_) => {
                match *role {
                    Role::Admin { .. } => admin.inner.rejected.inc(),
                    Role::Health { .. } => admin.inner.health_rejected.inc(),
                }
                debug!(%peer, "admin connection refused: too many open");
                let _ = stream
                    .try_write(&Response::text(503, "too many admin connections\n").bytes(false));
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) host: Option<String>,
    pub(super) origin: bool,
    pub(super) content_length: usize,
    pub(super) authorization: Option<Credentials>,
}

/// The value of an `Authorization` header; `Debug` never shows it.
#[derive(PartialEq, Eq)]
pub(super) struct Credentials(pub(super) String);

impl Credentials {
    /// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
    pub(super) fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.0.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// An answer; always `Connection: close`.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) code: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Vec<u8>,
    /// Extra header lines (`Allow`, `WWW-Authenticate`).
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Response {
    pub(super) fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    pub(super) fn json(code: u16, v: &Value) -> Response {
        let mut body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Response {
            code,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    pub(super) fn json_error(code: u16, msg: &str) -> Response {
        Response::json(
            code,
            &super::json::value(&super::json::Error { error: msg }),
        )
    }

    pub(super) fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.code,
            reason(self.code),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub(super) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

pub(super) async fn handle(admin: &Admin, role: &Role, mut stream: TcpStream, peer: SocketAddr) {
    let read = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await;
    let (resp, head_only) = match read {
        Err(_) => (Response::text(408, "request timeout\n"), false),
        Ok(Err(ReadError::Io)) => return,
        Ok(Err(ReadError::Respond(r))) => (r, false),
        Ok(Ok(req)) => {
            debug!(%peer, method = %req.method, path = %req.path, "admin request");
            (admin.route(role, &req).await, req.method == "HEAD")
        }
    };
    let out = resp.bytes(head_only);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        if stream.write_all(&out).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
}

pub(super) enum ReadError {
    /// The connection failed or closed early: nothing to answer.
    Io,
    /// A protocol error to answer.
    Respond(Response),
}

/// Reads the request head (at most [`MAX_HEAD`]) and discards a small body.
pub(super) async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf, from) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Respond(Response::text(
                431,
                "request head larger than 8 KiB\n",
            )));
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Respond(Response::text(
            431,
            "request head larger than 8 KiB\n",
        )));
    }
    let req = parse_head(&buf[..head_end]).map_err(ReadError::Respond)?;
    if req.content_length > MAX_BODY {
        return Err(ReadError::Respond(Response::text(
            413,
            "request body too large\n",
        )));
    }
    // Read the (ignored) body so that closing does not reset the connection under the answer.
    let mut have = buf.len() - head_end;
    while have < req.content_length {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        have += n;
    }
    Ok(req)
}

/// The index just past the blank line ending the head (`\r\n\r\n` or a bare `\n\n`), searching
/// from `from`.
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if buf[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

pub(super) fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let bad = |m: &str| Response::text(400, &format!("bad request: {m}\n"));
    let text = std::str::from_utf8(head).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    if !version.starts_with("HTTP/") {
        return Err(bad("malformed request line"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Response::text(505, "only HTTP/1.0 and HTTP/1.1\n"));
    }
    if !target.starts_with('/') {
        return Err(bad("the target must be a path"));
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut req = Request {
        method: method.to_string(),
        path,
        host: None,
        origin: false,
        content_length: 0,
        authorization: None,
    };
    let mut content_length: Option<usize> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("header line without a colon"));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(bad("malformed header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            if req.host.is_some() {
                return Err(bad("more than one Host header"));
            }
            req.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            req.origin = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            if req.authorization.is_some() {
                return Err(bad("more than one Authorization header"));
            }
            req.authorization = Some(Credentials(value.to_string()));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| bad("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::text(501, "transfer codings are not supported\n"));
        }
    }
    req.content_length = content_length.unwrap_or(0);
    Ok(req)
}
