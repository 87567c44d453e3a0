//! A certificate authority and node certificates for a test or development cluster (real
//! clusters take theirs from cert-manager or their own CA): every node gets one certificate
//! that names it as a broker and as a controller (`broker-<id>.weir`, `controller-<id>.weir`)
//! and as the hosts it is reached at, usable as server and as client certificate.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the files of one identity are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA (kept in memory to sign more) and its certificate file.
pub struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl Authority {
    /// A new CA in `dir` (`ca.crt`; the CA's key is never written).
    pub fn create(dir: &Path) -> anyhow::Result<Authority> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weir development CA");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("ca.crt");
        fs::write(&ca_file, cert.pem()).with_context(|| format!("write {}", ca_file.display()))?;
        Ok(Authority {
            cert,
            key,
            ca_file,
            dir: dir.to_path_buf(),
        })
    }

    /// A certificate for `name` (its common name, the principal) valid for `dns` and `ips`;
    /// written as `<name>.crt` and `<name>.key` (mode 0600).
    pub fn issue(&self, name: &str, dns: &[String], ips: &[IpAddr]) -> anyhow::Result<Issued> {
        let mut params = rcgen::CertificateParams::new(dns.to_vec())?;
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let issued = Issued {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        fs::write(&issued.cert, cert.pem())?;
        write_private(&issued.key, key.serialize_pem().as_bytes())?;
        Ok(issued)
    }

    /// The certificate of cluster member `id` reached at `ips` (and `hosts`).
    pub fn issue_member(
        &self,
        name: &str,
        id: u32,
        hosts: &[String],
        ips: &[IpAddr],
    ) -> anyhow::Result<Issued> {
        let mut dns = vec![
            weir_proto::tls::broker_name(id),
            weir_proto::tls::controller_name(u64::from(id)),
        ];
        dns.extend(hosts.iter().cloned());
        self.issue(name, &dns, ips)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
