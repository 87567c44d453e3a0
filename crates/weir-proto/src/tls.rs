//! Mutual TLS between brokers on the internal listener (replication): each broker has a
//! certificate from the cluster's CA whose DNS names include `broker-<id>.weir`. The server
//! requires a client certificate from that CA and takes the peer's broker id from it — never
//! from a field in the request; the client checks that it reached the broker it meant
//! (the server certificate must be valid for `broker-<leader id>.weir`).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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

    /// The server side: client certificates from the CA are required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
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
        return Ok(());
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
