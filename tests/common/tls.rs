//! TLS helpers for black-box tests: a throw-away PKI made with the `openssl` command line (keys
//! live in the test's temporary directory and die with it; nothing is checked in), and blocking
//! rustls clients and servers speaking SIP over TLS.

use super::TempDir;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test certificate authority in `dir`.
pub struct Ca {
    pub dir: PathBuf,
    pub name: String,
    pub files: CertFiles,
}

impl Ca {
    /// A new self-signed P-256 CA called `name`.
    pub fn new(dir: &TempDir, name: &str) -> Ca {
        let d = dir.path().to_path_buf();
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        openssl(
            &d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "2",
            ],
        );
        Ca {
            files: CertFiles {
                cert: d.join(&crt),
                key: d.join(&key),
            },
            dir: d,
            name: name.to_string(),
        }
    }

    /// A leaf certificate signed by this CA. `sans`: e.g. `["IP:127.0.0.1", "DNS:pbx.test"]`;
    /// `days` -1 makes a certificate that has already expired.
    pub fn issue(&self, file: &str, sans: &[&str], days: i32) -> CertFiles {
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        let crt = format!("{file}.crt");
        let ext = format!("{file}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
                sans.join(",")
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={file}"),
            ],
        );
        let ca_crt = self.files.cert.display().to_string();
        let ca_key = self.files.key.display().to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &format!("{}", super::unique_serial()),
                "-out",
                &crt,
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
            ],
        );
        CertFiles {
            cert: self.dir.join(crt),
            key: self.dir.join(key),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A blocking TLS client stream.
pub type ClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
/// A blocking TLS server stream.
pub type ServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Connects to `addr` over TLS trusting `ca`, checking the certificate against `name`.
pub fn connect(addr: SocketAddr, ca: &Path, name: &str) -> Result<ClientStream, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now so that errors surface here.
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(s)
}

/// The DER bytes of the certificate the server presented.
pub fn peer_cert(s: &ClientStream) -> Vec<u8> {
    s.conn.peer_certificates().expect("certificates")[0].to_vec()
}

/// A blocking TLS listener on `addr` serving `cert`.
pub struct Server {
    pub listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
}

impl Server {
    pub fn bind(addr: SocketAddr, cert: &CertFiles) -> Server {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind(addr).expect("bind TLS test server");
        Server {
            listener,
            cfg: Arc::new(cfg),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accepts one connection within `limit` and completes the handshake (Err: the client
    /// gave up, e.g. refused our certificate).
    pub fn accept(&self, limit: Duration) -> Result<ServerStream, String> {
        self.listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + limit;
        let tcp = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("no connection: {e}")),
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let conn = rustls::ServerConnection::new(self.cfg.clone()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(s)
    }
}

/// Reads one SIP message (headers + Content-Length body), skipping CRLF keep-alives.
pub fn read_message(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) => {
                if buf.is_empty() && (byte[0] == b'\r' || byte[0] == b'\n') {
                    continue;
                }
                buf.push(byte[0])
            }
            _ => return None,
        }
        if buf.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let len: usize = super::header(&buf, "Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    Some(buf)
}

/// Writes all of `data`.
pub fn send(s: &mut impl Write, data: &[u8]) {
    s.write_all(data).expect("TLS write");
    s.flush().expect("TLS flush");
}
