//! The HTTP/1.1 of a webhook: one POST per connection (`Connection: close`), and reading the
//! status code of the answer. Enough for Home Assistant, Node-RED and any web server; nothing
//! else of HTTP is needed.

use podpbx_config::HttpUrl;

use crate::hmac::{hex, hmac_sha256};

/// The request bytes. `secret`: the HMAC key for `X-Podpbx-Signature`.
pub fn request(
    url: &HttpUrl,
    event: &str,
    id: &str,
    body: &[u8],
    secret: Option<&[u8]>,
    user_agent: &str,
) -> Vec<u8> {
    let default_port = if url.tls { 443 } else { 80 };
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let host = if url.port == default_port {
        host
    } else {
        format!("{host}:{}", url.port)
    };
    let mut h = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Podpbx-Event: {event}\r\nX-Podpbx-Delivery: {id}\r\n",
        url.path,
        body.len()
    );
    if let Some(k) = secret {
        h.push_str(&format!(
            "X-Podpbx-Signature: sha256={}\r\n",
            hex(&hmac_sha256(k, body))
        ));
    }
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The status code once `buf` holds the status line (`Ok(None)`: read more); an error when it
/// is not HTTP.
pub fn status(buf: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 1024 {
            return Err("no HTTP status line in the first 1024 bytes".into());
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code
            .parse()
            .map(Some)
            .map_err(|_| format!("bad HTTP status line `{line}`")),
        _ => Err(format!(
            "bad HTTP status line `{}`",
            line.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let url = HttpUrl::parse("http://[2001:db8::50]:8123/api/webhook/door").unwrap();
        let r = String::from_utf8(request(&url, "doorbell", "d1", b"{}", Some(b"k"), "podpbx"))
            .unwrap();
        assert!(
            r.starts_with("POST /api/webhook/door HTTP/1.1\r\nHost: [2001:db8::50]:8123\r\n"),
            "{r}"
        );
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.contains(&format!(
            "X-Podpbx-Signature: sha256={}\r\n",
            hex(&hmac_sha256(b"k", b"{}"))
        )));
        assert!(r.ends_with("\r\n\r\n{}"));
        let url = HttpUrl::parse("https://ha.example.org/hook").unwrap();
        let r = String::from_utf8(request(&url, "trunk", "d2", b"{}", None, "podpbx")).unwrap();
        assert!(r.contains("Host: ha.example.org\r\n") && !r.contains("Signature"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(status(b"HTTP/1.0 404 Not Found\r\nX: y"), Ok(Some(404)));
        assert_eq!(status(b"HTTP/1.1 20"), Ok(None));
        assert!(status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status(&[b'x'; 2000]).is_err());
    }
}
