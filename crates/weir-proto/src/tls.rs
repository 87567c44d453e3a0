//! Mutual TLS between brokers on the internal listener (replication): each broker has a
//! certificate from the cluster's CA whose DNS names include `broker-<id>.weir`. The server
//! requires a client certificate from that CA and takes the peer's broker id from it — never
//! from a field in the request; the client checks that it reached the broker it meant
//! (the server certificate must be valid for `broker-<leader id>.weir`).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The DNS name a broker's certificate carries for its identity.
pub fn broker_name(id: u32) -> String {
    format!("broker-{id}.weir")
}

/// PEM files: this node's certificate chain and key, and the CA that signs its peers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The loaded material, ready for servers and clients.
#[derive(Debug, Clone)]
pub struct InternalTls {
    identity: Identity,
    ca: Certificate,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(format!("{what} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

impl InternalTls {
    pub fn load(files: &TlsFiles) -> Result<InternalTls, String> {
        let cert = read(&files.cert, "certificate")?;
        let key = read(&files.key, "key")?;
        let ca = read(&files.ca, "CA")?;
        Ok(InternalTls {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        })
    }

    /// The server side, its files read again when they change: client certificates from
    /// the CA are required.
    pub fn reloading_server(files: &TlsFiles) -> Result<ServerTls, String> {
        ServerTls::mutual(files.cert.clone(), files.key.clone(), files.ca.clone())
    }

    /// The client side, to reach broker `peer`.
    pub fn client(&self, peer: u32) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(broker_name(peer))
    }
}

/// Whether the peer's certificate (DER, already verified against the CA by the handshake)
/// names broker `id`.
pub fn names_broker(cert_der: &[u8], id: u32) -> bool {
    let der = rustls::pki_types::CertificateDer::from(cert_der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from(broker_name(id)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The broker id a request's client certificate proves, checked against the one it claims:
/// `Ok(())` when there is no TLS on the connection (plain listener), the status to answer
/// otherwise.
pub fn check_peer<T>(request: &tonic::Request<T>, claimed: u32) -> Result<(), tonic::Status> {
    let Some(certs) = request.peer_certs() else {
        return if is_tls(request) {
            Err(tonic::Status::unauthenticated(
                "a client certificate is required",
            ))
        } else {
            Ok(())
        };
    };
    match certs.first() {
        Some(leaf) if names_broker(leaf.as_ref(), claimed) => Ok(()),
        Some(_) => Err(tonic::Status::permission_denied(format!(
            "follower_id: {claimed} is not the broker the client certificate names ({})",
            broker_name(claimed)
        ))),
        None => Err(tonic::Status::unauthenticated(
            "a client certificate is required",
        )),
    }
}

/// The DNS name a controller's certificate carries for its identity.
pub fn controller_name(id: u64) -> String {
    format!("controller-{id}.weir")
}

/// Whether the request came over a TLS connection (with or without a client certificate).
pub fn is_tls<T>(request: &tonic::Request<T>) -> bool {
    request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        .is_some()
}

/// What a verified peer certificate says its holder is: the cluster members it names
/// (`broker-<id>.weir`, `controller-<id>.weir`; a combined node's names both) and the
/// principal ACLs speak of (the subject's common name, or its first DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub brokers: Vec<u32>,
    pub controllers: Vec<u64>,
    pub principal: String,
}

impl CertIdentity {
    /// A broker or controller of this cluster.
    pub fn is_member(&self) -> bool {
        !self.brokers.is_empty() || !self.controllers.is_empty()
    }
}

/// Reads the identity out of a leaf certificate the handshake verified.
pub fn cert_identity(cert_der: &[u8]) -> Option<CertIdentity> {
    let der = rustls::pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let mut identity = CertIdentity {
        brokers: Vec::new(),
        controllers: Vec::new(),
        principal: String::new(),
    };
    for name in cert.valid_dns_names() {
        let Some(stem) = name.strip_suffix(".weir") else {
            continue;
        };
        if let Some(id) = stem.strip_prefix("broker-").and_then(|n| n.parse().ok()) {
            identity.brokers.push(id);
        }
        if let Some(id) = stem
            .strip_prefix("controller-")
            .and_then(|n| n.parse().ok())
        {
            identity.controllers.push(id);
        }
    }
    identity.principal = der::common_name(cert.subject())
        .or_else(|| cert.valid_dns_names().next().map(str::to_string))?;
    Some(identity)
}

/// The identity of the request's client certificate: `Ok(None)` on a connection without TLS.
pub fn peer_identity<T>(
    request: &tonic::Request<T>,
) -> Result<Option<CertIdentity>, tonic::Status> {
    let Some(certs) = request.peer_certs() else {
        return Ok(None);
    };
    match certs.first() {
        Some(leaf) => cert_identity(leaf.as_ref())
            .map(Some)
            .ok_or_else(|| tonic::Status::unauthenticated("the client certificate names no one")),
        None => Ok(None),
    }
}

/// Just enough DER to find a subject's common name.
mod der {
    /// One TLV: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, rest) = rest.split_at(len);
        Some((tag, contents, rest))
    }

    /// OID 2.5.4.3 (commonName), encoded.
    const CN: &[u8] = &[0x55, 0x04, 0x03];

    /// `subject`: the contents of the Name SEQUENCE (a sequence of RDN SETs).
    pub fn common_name(mut subject: &[u8]) -> Option<String> {
        while !subject.is_empty() {
            let (tag, set, rest) = tlv(subject)?;
            subject = rest;
            if tag != 0x31 {
                return None;
            }
            let mut set = set;
            while !set.is_empty() {
                let (tag, atv, rest) = tlv(set)?;
                set = rest;
                if tag != 0x30 {
                    return None;
                }
                let (oid_tag, oid, value) = tlv(atv)?;
                if oid_tag == 0x06 && oid == CN {
                    let (_, text, _) = tlv(value)?;
                    return std::str::from_utf8(text).ok().map(str::to_string);
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn truncated_input_is_none_not_a_panic() {
            let name = [
                0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05, b'a', b'l', b'i',
                b'c', b'e',
            ];
            assert_eq!(super::common_name(&name).as_deref(), Some("alice"));
            for cut in 0..name.len() {
                assert_eq!(super::common_name(&name[..cut]), None, "cut at {cut}");
            }
        }
    }
}

/// A server's TLS: its certificate chain and key, and the CA its clients' certificates are
/// checked against (client certificates are then optional at the TLS layer; whether a
/// request needs one is authentication's business). The files are read again when they
/// change (checked at most once a second, on new connections), so rotated certificates are
/// served without a restart; a change that does not load keeps the previous files in use.
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    /// The application protocols offered (ALPN): h2 for gRPC, http/1.1 for the HTTP side.
    alpn: &'static [&'static [u8]],
    /// Refuse handshakes without a client certificate (the replication listener).
    require_client: bool,
    current: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: Vec<Stamp>,
    checked: std::time::Instant,
    config: std::sync::Arc<rustls::ServerConfig>,
}

/// A file's modification time and length: when it changes, the file is read again.
pub(crate) type Stamp = Option<(std::time::SystemTime, u64)>;

/// How often files that are reloaded on change are looked at (on use, not by a timer).
pub(crate) const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Certificates from a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path, "certificate")?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path, "key")?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("key {}: {e}", path.display()))
}

/// The ring provider (no C build), shared by every TLS configuration.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("CA {}: {e}", path.display()))?;
    }
    Ok(roots)
}

impl ServerTls {
    /// Loads the files once (so a bad path or file is an error at start).
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    ) -> Result<ServerTls, String> {
        ServerTls::with_alpn(cert, key, client_ca, &[b"h2"], false)
    }

    /// Mutual TLS: a handshake without a client certificate from `ca` fails.
    pub fn mutual(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<ServerTls, String> {
        ServerTls::with_alpn(cert, key, Some(ca), &[b"h2"], true)
    }

    /// For an HTTP/1.1 listener (`/metrics`, probes), without client certificates.
    pub fn http1(cert: PathBuf, key: PathBuf) -> Result<ServerTls, String> {
        ServerTls::with_alpn(cert, key, None, &[b"http/1.1"], false)
    }

    fn with_alpn(
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
        alpn: &'static [&'static [u8]],
        require_client: bool,
    ) -> Result<ServerTls, String> {
        let config = build_server(&cert, &key, client_ca.as_deref(), alpn, require_client)?;
        let tls = ServerTls {
            cert,
            key,
            client_ca,
            alpn,
            require_client,
            current: std::sync::Mutex::new(Loaded {
                stamps: Vec::new(),
                checked: std::time::Instant::now(),
                config,
            }),
        };
        let stamps = tls.stamps();
        tls.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stamps = stamps;
        Ok(tls)
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(self.client_ca.as_ref())
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.paths().map(|p| stamp(p)).collect()
    }

    /// The configuration for a new connection, reloaded first if a file changed.
    pub fn config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.checked.elapsed() >= RELOAD_CHECK {
            current.checked = std::time::Instant::now();
            let stamps = self.stamps();
            if stamps != current.stamps {
                match build_server(
                    &self.cert,
                    &self.key,
                    self.client_ca.as_deref(),
                    self.alpn,
                    self.require_client,
                ) {
                    Ok(config) => {
                        tracing::info!(cert = %self.cert.display(), "TLS files changed: reloaded");
                        current.config = config;
                        current.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; serving the previous ones");
                    }
                }
            }
        }
        std::sync::Arc::clone(&current.config)
    }
}

fn build_server(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
    require_client: bool,
) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    let chain = read_certs(cert)?;
    let private = read_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots(ca)?),
                provider(),
            );
            let verifier = if require_client {
                verifier
            } else {
                verifier.allow_unauthenticated()
            }
            .build()
            .map_err(|e| format!("CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handshakes in progress at once per listener; past it, accepting waits.
pub const HANDSHAKES_MAX: usize = 256;

/// Accepted connections after a TLS handshake (`TCP_NODELAY` set). Handshakes run apart, so
/// a slow or plain-text client holds up no one; failed ones are logged and dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<ServerTls>,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => break,
                permit = std::sync::Arc::clone(&handshakes).acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (conn, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = conn.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await;
                drop(permit); // the handshake is over
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client's TLS: the CA that signs the servers' certificates, and optionally this
/// client's own certificate and key (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// The tonic configuration for a server whose certificate names `domain` (None: the
    /// host the address names).
    pub fn config(&self, domain: Option<String>) -> Result<ClientTlsConfig, String> {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca, "CA")?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read(cert, "certificate")?,
                read(key, "key")?,
            ));
        }
        if let Some(domain) = domain {
            config = config.domain_name(domain);
        }
        Ok(config)
    }
}
