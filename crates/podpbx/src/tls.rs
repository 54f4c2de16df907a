//! SIP over TLS (RFC 3261 §26.2, RFC 5630): rustls configurations for the listener and for
//! connections podpbx opens (trunks), and the certificate that follows its files.
//!
//! * The server certificate and key come from PEM files, typically a Kubernetes Secret written
//!   by cert-manager. [`CertStore`] checks the files every few seconds and swaps in a new
//!   certificate when they change: new handshakes use it, established connections (and so the
//!   calls on them) are untouched. A file that fails to load keeps the previous certificate and
//!   says why in the log.
//! * Connections podpbx opens verify the server's certificate chain against the Mozilla root
//!   store compiled into the binary (an image built `FROM scratch` has no `/etc/ssl`), or against
//!   the configured CA file instead, and the certificate's name against the trunk's host name.
//! * TLS 1.2 and 1.3 only; rustls offers no older version and no weak cipher suite.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Lowest TLS version offered and accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static V13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        MinVersion::Tls12 => &BOTH,
        MinVersion::Tls13 => &V13,
    }
}

/// Reads a certificate chain and its key into a signing key for rustls.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "no certificate (PEM `CERTIFICATE` block) in {}",
            cert.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("unusable private key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        format!(
            "private key {} does not belong to certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(ck)
}

/// The listener's certificate, replaced when its files change.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<(Option<FileStamp>, Option<FileStamp>)>,
}

/// What tells that a file changed: modification time and size (a Kubernetes Secret update
/// swaps a symlink, which changes both as seen through the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(SystemTime, u64);

fn stamp(p: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(FileStamp(m.modified().ok()?, m.len()))
}

impl CertStore {
    /// Loads the files; an error names the file.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertStore>, String> {
        let seen = (stamp(cert_file), stamp(key_file));
        let ck = load_certified_key(cert_file, key_file)?;
        Ok(Arc::new(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            seen: RwLock::new(seen),
        }))
    }

    /// Reloads when a file changed. `Ok(true)`: a new certificate is in use; `Ok(false)`:
    /// nothing changed; `Err`: the new files are unusable and the previous certificate stays.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
        }
        // Remember the stamps even on failure: a broken file is reported once, not every tick.
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = now;
        let ck = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(true)
    }

    /// Checks the files every [`RELOAD_CHECK`] for as long as the process runs.
    pub fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me = self.clone();
                // File reads off the signalling threads' hot loop.
                let res = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                match res {
                    Ok(Ok(true)) => info!(
                        cert = %self.cert_file.display(),
                        "TLS certificate reloaded; new connections use it"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, "TLS certificate not reloaded, keeping the previous one")
                    }
                    Err(_) => {}
                }
            }
        });
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The listener's rustls configuration (no client certificates asked: phones authenticate
/// with digest, as over UDP and TCP).
pub fn server_config(store: Arc<CertStore>, min: MinVersion) -> Result<ServerConfig, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))
        .map_err(|e| format!("TLS server configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    // SIP has no ALPN token; session tickets are fine (phones reconnect often).
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// Root certificates for connections podpbx opens: the CA file when given, else the built-in
/// Mozilla roots.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(p) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("cannot read CA file {}: {e}", p.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad CA file {}: {e}", p.display()))?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("no usable CA certificate in {}", p.display()));
            }
        }
    }
    Ok(store)
}

/// The client configuration: the server's chain and name are always verified.
pub fn client_config(roots: RootCertStore, min: MinVersion) -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The name to verify a server's certificate against: a DNS name, or the IP address itself
/// (which then must be in the certificate's subjectAltName).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map(|n| n.to_owned())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
}
