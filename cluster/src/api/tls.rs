//! TLS for the API server. kubectl and client-go send credentials only over TLS, so the
//! API is served over HTTPS: a cluster CA (kept in `<data-dir>/pki/`, made on first start)
//! signs a serving certificate for the API's addresses, re-issued on every start so it
//! always names the address the server is bound to. Kubeconfigs carry the CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key could not be made.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be read back.
    #[error("reading {what}: {message}")]
    Pem { what: String, message: String },
    /// The PKI directory could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The CA and the serving certificate of one API server, as PEM.
#[derive(Debug, Clone)]
pub struct ServingCerts {
    /// The cluster CA's certificate: what clients trust.
    pub ca_pem: String,
    /// The serving certificate, signed by the CA.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "kairn-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The names a serving certificate is issued for: loopback, the bound address, and the
/// in-cluster names of the `kubernetes` Service.
pub fn serving_names(bind: &SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        super::resources::service::API_SERVICE_IP,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ip = bind.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    if ip.is_unspecified() {
        // Listening on every address: name the host too.
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim().to_string();
            if !host.is_empty() {
                names.push(host);
            }
        }
    }
    names
}

/// Issues a serving certificate for `names`, signed by the CA `ca_pem`/`ca_key_pem`.
fn issue(ca_pem: &str, ca_key_pem: &str, names: &[String]) -> Result<ServingCerts, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "kairn-apiserver");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ServingCerts {
        ca_pem: ca_pem.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new CA and serving certificate, kept in memory (tests, benchmarks).
pub fn generate(names: &[String]) -> Result<ServingCerts, TlsError> {
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    issue(&ca.pem(), &ca_key.serialize_pem(), names)
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write(path: &Path, content: &str) -> Result<(), TlsError> {
    super::auth::write_private(path, content).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The CA kept in `dir` (made on first use) and a fresh serving certificate for `names`,
/// written beside it for operators to inspect.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<ServingCerts, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (ca_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca_pem, ca_key_pem) = match (read(&ca_path)?, read(&ca_key_path)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let ca = ca_params()?.self_signed(&key)?;
            let (c, k) = (ca.pem(), key.serialize_pem());
            write(&ca_key_path, &k)?;
            write(&ca_path, &c)?;
            (c, k)
        }
    };
    let certs = issue(&ca_pem, &ca_key_pem, names)?;
    write(&dir.join("apiserver.key"), &certs.key_pem)?;
    write(&dir.join("apiserver.crt"), &certs.cert_pem)?;
    Ok(certs)
}

impl ServingCerts {
    /// The CA certificate in DER, for clients' trust roots.
    pub fn ca_der(&self) -> Result<Vec<u8>, TlsError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map(|c| c.to_vec())
            .map_err(|e| TlsError::Pem {
                what: "the CA certificate".into(),
                message: e.to_string(),
            })
    }

    /// A rustls acceptor serving this certificate (HTTP/1.1).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let pem_err = |what: &str| {
            let what = what.to_string();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                what,
                message: e.to_string(),
            }
        };
        let chain = vec![
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(pem_err("the serving certificate"))?,
            CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(pem_err("the CA certificate"))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(pem_err("the serving key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener that hands axum TLS streams. Handshakes run in their own tasks, so a
/// slow or silent client holds up no one else.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `acceptor` on the connections `listener` accepts.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Responses are small writes answered by the client's next request:
                // with Nagle on, each can wait for a delayed ACK (40 ms).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "setting TCP_NODELAY");
                }
                let (conn_tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = conn_tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ends only when this listener is dropped: never reached
            // while axum serves, so waiting forever is the honest answer.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_signs_a_fresh_serving_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let names = serving_names(&"127.0.0.1:6443".parse().unwrap());
        let first = load_or_create(dir.path(), &names).unwrap();
        let second = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem, "the CA is kept");
        assert_ne!(first.key_pem, second.key_pem, "the serving key is new");
        assert!(second.acceptor().is_ok());
        assert!(!second.ca_der().unwrap().is_empty());
    }
}
