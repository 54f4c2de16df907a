//! A minimal UDP phone for black-box tests: REGISTER with digest authentication (answering one
//! challenge), its own Call-ID and CSeq, from loopback of the target's family.

use podpbx_sip::digest::DigestClient;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// `host` as it appears in a URI (IPv6 bracketed).
pub fn uri_host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

/// The status code of a response (`None` for a request or garbage).
pub fn code_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// A phone registering `user` at `target`.
pub struct DigestPhone {
    pub sock: UdpSocket,
    target: SocketAddr,
    user: String,
    client: DigestClient,
    cseq: u32,
    call_id: String,
}

impl DigestPhone {
    pub fn new(target: SocketAddr, user: &str, password: &str) -> DigestPhone {
        let bind = if target.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let sock = UdpSocket::bind(bind).expect("bind phone socket");
        sock.connect(target).expect("connect phone socket");
        let call_id = format!("phone-{}-{}", user, sock.local_addr().unwrap().port());
        DigestPhone {
            sock,
            target,
            user: user.into(),
            client: DigestClient::new(user, password, b"phone-seed".to_vec()),
            cseq: 0,
            call_id,
        }
    }

    fn request(&mut self, auth: Option<&str>) -> String {
        self.cseq += 1;
        let local = self.sock.local_addr().unwrap();
        let (h, th) = (uri_host(local), uri_host(self.target));
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{th} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {h}:{port};branch=z9hG4bK-phone-{cseq}-{port};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{th}>;tag=ph{port}\r\n\
             To: <sip:{user}@{th}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{h}:{port}>\r\n\
             Expires: 120\r\n\
             {auth}\
             Content-Length: 0\r\n\r\n",
            port = local.port(),
            cseq = self.cseq,
            user = self.user,
            cid = self.call_id
        )
    }

    /// The final response to this phone's current request, ignoring anything else, until `until`.
    fn final_response(&self, until: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let n = self.sock.recv(&mut buf).ok()?;
            let msg = &buf[..n];
            let text = String::from_utf8_lossy(msg);
            let ours = text.lines().any(|l| {
                l.strip_prefix("Call-ID:")
                    .is_some_and(|v| v.trim() == self.call_id)
            });
            if ours && code_of(msg).is_some_and(|c| c >= 200) {
                return Some(msg.to_vec());
            }
        }
    }

    /// One REGISTER round (answering one challenge): the final status code, or `None` if no
    /// final answer came within `limit`.
    pub fn register(&mut self, limit: Duration) -> Option<u16> {
        let until = Instant::now() + limit;
        let uri = format!("sip:{}", uri_host(self.target));
        let auth = self
            .client
            .current()
            .is_some()
            .then(|| self.client.authorization("REGISTER", &uri, b""))
            .flatten();
        let mut req = self.request(auth.as_deref());
        for _ in 0..3 {
            self.sock.send(req.as_bytes()).ok()?;
            let resp = self.final_response(until)?;
            let code = code_of(&resp)?;
            if code != 401 {
                return Some(code);
            }
            let challenge = super::header(&resp, "WWW-Authenticate")?;
            self.client.on_challenge(&[challenge]).ok()?;
            let auth = self.client.authorization("REGISTER", &uri, b"")?;
            req = self.request(Some(&auth));
        }
        None
    }
}
