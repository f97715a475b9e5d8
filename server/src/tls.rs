//! Certificates: load PEM files, or generate (and reuse) a short-lived development certificate
//! that browsers can pin with `serverCertificateHashes`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wtransport::tls::CertificateChain;
use wtransport::Identity;

/// Browsers accept pinned certificates valid for at most 14 days.
const DEV_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// Regenerate a development certificate this long before it expires.
const DEV_RENEW_BEFORE: Duration = Duration::from_secs(2 * 24 * 3600);

pub const DEV_CERT_FILE: &str = "dev-cert.pem";
pub const DEV_KEY_FILE: &str = "dev-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading PEM: {0}")]
    Pem(String),
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded identity and the SHA-256 of its leaf certificate (DER).
pub struct LoadedIdentity {
    pub identity: Identity,
    pub cert_sha256: [u8; 32],
    /// Whether this is a generated development certificate.
    pub dev: bool,
}

impl LoadedIdentity {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.cert_sha256)
    }
}

pub async fn load_pem(cert: &Path, key: &Path) -> Result<LoadedIdentity, TlsError> {
    let identity = Identity::load_pemfiles(cert, key)
        .await
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let cert_sha256 = leaf_hash(identity.certificate_chain());
    Ok(LoadedIdentity {
        identity,
        cert_sha256,
        dev: false,
    })
}

/// SHA-256 of the first certificate in a PEM file (what clients pin).
pub async fn pem_cert_hash(path: &Path) -> Result<[u8; 32], TlsError> {
    let chain = CertificateChain::load_pemfile(path)
        .await
        .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?;
    Ok(leaf_hash(&chain))
}

fn leaf_hash(chain: &CertificateChain) -> [u8; 32] {
    let der = chain
        .as_slice()
        .first()
        .map(|c| c.der())
        .unwrap_or_default();
    Sha256::digest(der).into()
}

/// Loads the development certificate from `dir`, generating a fresh one when it is missing or
/// close to expiry.
pub async fn dev_identity(dir: &Path) -> Result<LoadedIdentity, TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if !is_fresh(&cert_path) {
        generate_dev(dir, &cert_path, &key_path)?;
    }
    let mut loaded = load_pem(&cert_path, &key_path).await?;
    loaded.dev = true;
    Ok(loaded)
}

/// The file's age stands in for the certificate's: we wrote it when we generated it.
fn is_fresh(cert_path: &Path) -> bool {
    let age = std::fs::metadata(cert_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    matches!(age, Some(age) if age + DEV_RENEW_BEFORE < DEV_VALIDITY)
}

fn generate_dev(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let now = time::OffsetDateTime::now_utc();
    // Backdate a little for clock skew; the whole span stays within the browsers' 14 days.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + DEV_VALIDITY - time::Duration::hours(1);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "quiver development certificate");
    let cert = params.self_signed(&key)?;
    std::fs::write(key_path, key.serialize_pem()).map_err(write_err(key_path))?;
    restrict_permissions(key_path);
    std::fs::write(cert_path, cert.pem()).map_err(write_err(cert_path))?;
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_certificate_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("quiver-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = dev_identity(&dir).await.unwrap();
        let b = dev_identity(&dir).await.unwrap();
        assert_eq!(a.cert_sha256, b.cert_sha256);
        assert!(a.dev);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
