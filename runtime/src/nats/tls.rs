//! TLS for NATS: the local certificate authority `vrsky dev` and the tests use, and the
//! server certificates it issues to the nats-servers this node starts.
//!
//! The CA lives in `<data_dir>/tls/` (`ca.pem`, and `ca-key.pem` with mode 0600). Clients
//! trust `ca.pem`; each server gets a certificate for `127.0.0.1`, `::1` and `localhost`.
//! Under Kubernetes the certificates come from Secrets instead (see `k8s.rs`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that cannot be read, made or used.
#[derive(Debug, thiserror::Error)]
#[error("nats tls: {0}")]
pub struct TlsError(pub String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCert")
    }
}

/// The local CA.
pub struct LocalCa {
    ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("ca_file", &self.ca_file).finish()
    }
}

/// The CA's own parameters. They are fixed, so an issuer is rebuilt from the stored key
/// alone (the certificate is not parsed back).
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "VRSky local NATS CA");
    dn.push(DnType::OrganizationName, "VRSky");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    Ok(p)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl LocalCa {
    /// Loads the CA in `dir`, or makes one there.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) if cert_path.exists() => KeyPair::from_pem(&pem).map_err(err)?,
            _ => {
                let key = KeyPair::generate().map_err(err)?;
                let cert = ca_params()?.self_signed(&key).map_err(err)?;
                write_private(&key_path, &key.serialize_pem()).map_err(err)?;
                std::fs::write(&cert_path, cert.pem()).map_err(err)?;
                key
            }
        };
        Ok(LocalCa {
            ca_file: cert_path,
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// The CA certificate clients trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `hosts` (names or IP addresses), valid for a year.
    pub fn issue(&self, hosts: &[&str]) -> Result<ServerCert, TlsError> {
        let mut p = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).map_err(err)?;
        p.distinguished_name
            .push(DnType::CommonName, hosts.first().copied().unwrap_or("nats"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a loopback certificate into `dir` (`server-cert.pem`, `server-key.pem`)
    /// and returns the two paths.
    pub fn issue_loopback_into(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        let c = self.issue(&["127.0.0.1", "::1", "localhost"])?;
        std::fs::create_dir_all(dir).map_err(err)?;
        let (cert, key) = (dir.join("server-cert.pem"), dir.join("server-key.pem"));
        std::fs::write(&cert, &c.cert_pem).map_err(err)?;
        write_private(&key, &c.key_pem).map_err(err)?;
        Ok((cert, key))
    }
}

/// The `tls {}` block of a server config. `timeout` is the handshake deadline in seconds.
pub fn server_tls_block(cert_file: &Path, key_file: &Path) -> String {
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
        cert_file.display(),
        key_file.display()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_ca_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCa::load_or_create(dir.path()).unwrap();
        let pem = std::fs::read_to_string(a.ca_file()).unwrap();
        let b = LocalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(
            pem,
            std::fs::read_to_string(b.ca_file()).unwrap(),
            "a second start keeps the CA"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = b.issue(&["127.0.0.1", "localhost"]).unwrap();
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
