//! Certificates: load PEM files, or generate (and reuse) a short-lived development certificate
//! that browsers can pin with `serverCertificateHashes`; and reload either without a restart
//! ([`Reloader`] notices the change, [`CertUpdate`] swaps it into the [`SharedCert`] that every
//! TLS listener, the WebTransport endpoint and the HTTPS/wss one alike, presents).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wtransport::tls::rustls;
use wtransport::tls::CertificateChain;
use wtransport::Identity;

/// Browsers accept pinned certificates valid for at most 14 days.
const DEV_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// Regenerate a development certificate this long before it expires.
const DEV_RENEW_BEFORE: Duration = Duration::from_secs(2 * 24 * 3600);

pub const DEV_CERT_FILE: &str = "dev-cert.pem";
pub const DEV_KEY_FILE: &str = "dev-key.pem";
/// The lock file beside them (`lock_dev_dir`).
pub const DEV_LOCK_FILE: &str = "dev.lock";

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
    #[error("{cert} and {key} do not belong together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// At a reload: every client would refuse it, so the one served is kept (outside
    /// operations audit 55, M1: an expired pair restored from a backup was swapped in, and
    /// every TLS handshake failed while health checks stayed green).
    #[error("{cert} is {when}: clients would refuse it")]
    OutsideValidity { cert: PathBuf, when: String },
}

/// A loaded identity and the SHA-256 of its leaf certificate (DER).
pub struct LoadedIdentity {
    pub identity: Identity,
    /// The same certificate chain and key as rustls signs with (what [`SharedCert`] holds).
    pub certified: Arc<rustls::sign::CertifiedKey>,
    pub cert_sha256: [u8; 32],
    /// Whether this is a generated development certificate.
    pub dev: bool,
    /// The leaf certificate's `notAfter`, in Unix seconds (`None`: not readable as X.509).
    pub expires_at: Option<i64>,
}

/// How long before its expiry a served certificate is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// The leaf's `notAfter` in Unix seconds.
fn not_after(chain: &CertificateChain) -> Option<i64> {
    validity(chain).map(|(_, not_after)| not_after)
}

/// The leaf's `notBefore` and `notAfter`, in Unix seconds.
fn validity(chain: &CertificateChain) -> Option<(i64, i64)> {
    let leaf = chain.as_slice().first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.der()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Refuses a certificate clients would refuse at `now`: expired, or not valid yet.
fn check_validity(loaded: &LoadedIdentity, cert: &Path, now: i64) -> Result<(), TlsError> {
    let Some((not_before, not_after)) = validity(loaded.identity.certificate_chain()) else {
        return Ok(());
    };
    let when = if now >= not_after {
        format!("expired ({} day(s) ago)", (now - not_after) / 86_400)
    } else if now < not_before {
        format!(
            "not valid yet (for {} more hour(s))",
            (not_before - now) / 3_600 + 1
        )
    } else {
        return Ok(());
    };
    Err(TlsError::OutsideValidity {
        cert: cert.to_owned(),
        when,
    })
}

/// What an operator should hear about a certificate's expiry at `now` (Unix seconds): it has
/// expired, or expires within [`EXPIRY_WARNING`] (outside operations audit 2, S13: one expired
/// in 2020 was served without a word).
pub fn expiry_warning(expires_at: Option<i64>, now: i64) -> Option<String> {
    let left = expires_at? - now;
    if left <= 0 {
        Some(format!(
            "the certificate expired {} day(s) ago: clients will refuse it",
            (-left) / 86_400
        ))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "the certificate expires in {} hour(s): renew it",
            left / 3_600
        ))
    } else {
        None
    }
}

impl LoadedIdentity {
    /// Sets `quiver_tls_certificate_expiry_timestamp_seconds` and warns when the certificate has
    /// expired or is about to: at start and at every reload.
    pub fn note_expiry(&self) {
        note_expiry(self.expires_at, self.dev);
    }
}

fn note_expiry(expires_at: Option<i64>, dev: bool) {
    let Some(at) = expires_at else { return };
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY).set(at as f64);
    let now = crate::auth::unix_now() as i64;
    // A generated certificate is renewed before it expires, by the server itself.
    if dev {
        return;
    }
    if let Some(warning) = expiry_warning(Some(at), now) {
        warn!(expires_at = at, "{warning}");
    }
}

impl LoadedIdentity {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.cert_sha256)
    }
}

pub async fn load_pem(cert: &Path, key: &Path) -> Result<LoadedIdentity, TlsError> {
    // Named: "no private key section found" alone said not which file (outside audit 55, I2).
    let identity = Identity::load_pemfiles(cert, key)
        .await
        .map_err(|e| TlsError::Pem(format!("{} / {}: {e}", cert.display(), key.display())))?;
    // wtransport panics on a key that does not match the certificate when it builds the server
    // configuration; refuse it here instead (at start, and mid-rotation when only one of the
    // two files has been replaced yet).
    let certified = certified_key(&identity).map_err(|reason| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    })?;
    let cert_sha256 = leaf_hash(identity.certificate_chain());
    let expires_at = not_after(identity.certificate_chain());
    Ok(LoadedIdentity {
        identity,
        certified,
        cert_sha256,
        dev: false,
        expires_at,
    })
}

/// SHA-256 of the first certificate in a PEM file (what clients pin).
pub async fn pem_cert_hash(path: &Path) -> Result<[u8; 32], TlsError> {
    let chain = CertificateChain::load_pemfile(path)
        .await
        .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?;
    Ok(leaf_hash(&chain))
}

/// The identity as rustls signs with it, after the checks rustls makes when it builds a TLS
/// configuration (a certificate, a usable key that is the certificate's), without a panic.
pub fn certified_key(identity: &Identity) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let provider = rustls::crypto::ring::default_provider();
    let chain: Vec<_> = identity
        .certificate_chain()
        .as_slice()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.der().to_vec()))
        .collect();
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(identity.private_key().secret_der().to_vec())
            .map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| e.to_string())
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
    // Instances sharing the directory, started together, each wrote a pair: one was refused
    // another's key at start (`Mismatch`), one served a certificate no longer on disk, for good
    // (outside audit 59, F1). Under the lock, the first writes and the others read its pair.
    let owned = dir.to_owned();
    let lock = tokio::task::spawn_blocking(move || lock_dev_dir(&owned))
        .await
        .map_err(|e| TlsError::Pem(format!("locking {}: {e}", dir.display())))??;
    if !is_fresh(&cert_path) {
        generate_dev(dir, &cert_path, &key_path)?;
    }
    let mut loaded = load_pem(&cert_path, &key_path).await?;
    drop(lock);
    loaded.dev = true;
    Ok(loaded)
}

/// An exclusive lock on `dir`'s [`DEV_LOCK_FILE`] (created with `dir` if need be), held while the
/// generated certificate or the development secret is checked, written and read: processes
/// sharing `dir` take turns (the operating system frees it when its holder exits, however).
/// `None` where no lock can be had: a directory this process may not write (read-only, made
/// ready by someone else: nothing will be written there either, outside audit 62 found such a
/// directory refused), or a lock not freed within [`DEV_LOCK_WAIT`] (a holder stopped, not
/// gone: said at WARN, and the files are used as they are).
pub fn lock_dev_dir(dir: &Path) -> Result<Option<std::fs::File>, TlsError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let path = dir.join(DEV_LOCK_FILE);
    let denied = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    };
    let opened = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path);
    let file = match opened {
        Ok(file) => file,
        // An existing lock file this process may only read locks as well; none, in a directory
        // it may not write, means no lock.
        Err(e) if denied(&e) => match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if denied(&e) || e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(write_err(&path)(e)),
        },
        Err(e) => return Err(write_err(&path)(e)),
    };
    let deadline = std::time::Instant::now() + DEV_LOCK_WAIT;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!(lock = %path.display(), "waiting for another process to finish writing the development certificate or secret");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(lock = %path.display(), "still locked after {DEV_LOCK_WAIT:?}; using the files as they are");
                return Ok(None);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(write_err(&path)(e)),
        }
    }
}

/// How long [`lock_dev_dir`] waits for another process's lock: generating takes milliseconds.
pub const DEV_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// The SHA-256 of the certificate being served now: what clients pin, and what the demo page
/// and the `QUIVER_READY` line report. Changes when a [`CertUpdate`] is applied.
#[derive(Debug)]
pub struct CertHash(Mutex<[u8; 32]>);

impl CertHash {
    pub fn new(hash: [u8; 32]) -> Self {
        Self(Mutex::new(hash))
    }

    pub fn get(&self) -> [u8; 32] {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, hash: [u8; 32]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = hash;
    }
}

/// Where the served certificate comes from, so it can be read again.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// `cert` and `key` PEM files (rotated by the operator or an ACME client).
    Files { cert: PathBuf, key: PathBuf },
    /// The generated short-lived certificate in this directory, renewed before it expires.
    Generated { dir: PathBuf },
}

/// Notices a new certificate: files that changed (or a SIGHUP), or a generated certificate that
/// is due for renewal.
pub struct Reloader {
    source: CertSource,
    current: [u8; 32],
    /// Modification times and sizes of the files at the last attempt, to skip unchanged files
    /// (and to warn once, not every poll, about a half-rotated pair).
    seen: Option<Vec<(SystemTime, u64)>>,
}

impl Reloader {
    pub fn new(source: CertSource, loaded: &LoadedIdentity) -> Self {
        let seen = Some(stamps(&source));
        Self {
            source,
            current: loaded.cert_sha256,
            seen,
        }
    }

    /// The new identity when it differs from the one served, `None` when nothing changed. With
    /// `force` (SIGHUP), files are read even when they look unchanged.
    pub async fn check(&mut self, force: bool) -> Result<Option<LoadedIdentity>, TlsError> {
        let stamps = stamps(&self.source);
        let unchanged = !force && self.seen.as_ref() == Some(&stamps);
        self.seen = Some(stamps);
        let loaded = match &self.source {
            CertSource::Files { .. } if unchanged => return Ok(None),
            CertSource::Files { cert, key } => {
                let loaded = load_pem(cert, key).await?;
                check_validity(&loaded, cert, crate::auth::unix_now() as i64)?;
                loaded
            }
            CertSource::Generated { dir } if unchanged && is_fresh(&dir.join(DEV_CERT_FILE)) => {
                return Ok(None)
            }
            // Renews the certificate when it is due, or loads the one another process wrote.
            CertSource::Generated { dir } => dev_identity(dir).await?,
        };
        if loaded.cert_sha256 == self.current {
            return Ok(None);
        }
        self.current = loaded.cert_sha256;
        Ok(Some(loaded))
    }
}

fn stamps(source: &CertSource) -> Vec<(SystemTime, u64)> {
    let paths: Vec<&Path> = match source {
        CertSource::Files { cert, key } => vec![cert, key],
        CertSource::Generated { dir } => return vec![stamp(&dir.join(DEV_CERT_FILE))],
    };
    paths.into_iter().map(stamp).collect()
}

fn stamp(path: &Path) -> (SystemTime, u64) {
    std::fs::metadata(path)
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        .unwrap_or((SystemTime::UNIX_EPOCH, 0))
}

/// The certificate every TLS listener presents: the WebTransport endpoint's rustls configuration
/// and the HTTPS/wss one both resolve through the same `SharedCert`, so one swap changes it for
/// every new handshake on both; connections already established keep theirs.
#[derive(Debug)]
pub struct SharedCert(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl SharedCert {
    pub fn new(certified: Arc<rustls::sign::CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(RwLock::new(certified)))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, certified: Arc<rustls::sign::CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = certified;
    }
}

impl rustls::server::ResolvesServerCert for SharedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A new certificate for every TLS listener: the swap is in the [`SharedCert`] that the
/// WebTransport endpoint and the HTTPS listener share, so the endpoint's configuration is not
/// rebuilt (its session-ticket key and transport settings stay).
pub struct CertUpdate {
    pub certified: Arc<rustls::sign::CertifiedKey>,
    pub cert_sha256: [u8; 32],
    /// The new certificate's `notAfter` and whether it is generated ([`LoadedIdentity`]).
    pub expires_at: Option<i64>,
    pub dev: bool,
}

impl CertUpdate {
    /// Swaps the certificate for new handshakes on every TLS listener (WebTransport, HTTPS and
    /// wss), and the hash `served` reports; live connections keep theirs and stay up.
    pub fn apply(self, certs: &SharedCert, served: &CertHash) {
        certs.set(self.certified);
        served.set(self.cert_sha256);
        info!(cert_sha256 = %hex::encode(self.cert_sha256), "certificate reloaded (WebTransport and HTTPS)");
        note_expiry(self.expires_at, self.dev);
    }
}

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

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A certificate's `notAfter` is read from its leaf, and one that has expired or expires
    /// within a week is warned about (outside operations audit 2, S13).
    #[tokio::test]
    async fn expiry_is_read_and_warned_about() {
        let dir = tempdir("expiry");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("old.crt"), dir.join("old.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let loaded = load_pem(&c, &k).await.unwrap();
        assert_eq!(loaded.expires_at, Some(1_577_836_800));
        let now = crate::auth::unix_now() as i64;
        assert!(expiry_warning(loaded.expires_at, now).is_some_and(|w| w.contains("expired")));
        assert!(expiry_warning(Some(now + 3_600), now).is_some_and(|w| w.contains("expires in")));
        assert_eq!(expiry_warning(Some(now + 30 * 86_400), now), None);
        assert_eq!(expiry_warning(None, now), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A key that is not the certificate's made wtransport panic while building the server
    /// configuration; it is now a clear error.
    #[tokio::test]
    async fn mismatched_key_is_an_error() {
        let dir = tempdir("mismatch");
        let (cert_a, _) = write_pair(&dir, "a");
        let (_, key_b) = write_pair(&dir, "b");
        match load_pem(&cert_a, &key_b).await {
            Err(TlsError::Mismatch { .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a mismatched pair was accepted"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn reloader_notices_rotated_files() {
        let dir = tempdir("reload");
        let (cert, key) = write_pair(&dir, "live");
        let first = load_pem(&cert, &key).await.unwrap();
        let mut reloader = Reloader::new(
            CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            &first,
        );
        assert!(reloader.check(false).await.unwrap().is_none());
        assert!(reloader.check(true).await.unwrap().is_none(), "same files");
        // Half a rotation (new certificate, old key): an error, and the old one stays.
        let (cert_new, key_new) = write_pair(&dir, "next");
        std::fs::copy(&cert_new, &cert).unwrap();
        assert!(matches!(
            reloader.check(false).await,
            Err(TlsError::Mismatch { .. })
        ));
        std::fs::copy(&key_new, &key).unwrap();
        let next = reloader
            .check(false)
            .await
            .unwrap()
            .expect("a new certificate");
        assert_ne!(next.cert_sha256, first.cert_sha256);
        assert_eq!(next.cert_sha256, pem_cert_hash(&cert_new).await.unwrap());
        assert!(reloader.check(false).await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A rotation to a certificate clients would refuse (expired, or not valid yet) is refused
    /// and the served one kept (outside operations audit 55, M1: an expired pair was swapped
    /// in and every TLS handshake failed).
    #[tokio::test]
    async fn reloader_refuses_a_certificate_outside_its_validity() {
        let dir = tempdir("validity");
        let (cert, key) = write_pair(&dir, "live");
        let first = load_pem(&cert, &key).await.unwrap();
        let mut reloader = Reloader::new(
            CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            &first,
        );
        for (name, from, to) in [
            ("expired", (2019, 1, 1), (2020, 1, 1)),
            ("future", (2100, 1, 1), (2101, 1, 1)),
        ] {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
            let refused = params.self_signed(&pair).unwrap();
            std::fs::write(&cert, refused.pem()).unwrap();
            std::fs::write(&key, pair.serialize_pem()).unwrap();
            match reloader.check(true).await {
                Err(e @ TlsError::OutsideValidity { .. }) => {
                    assert!(
                        e.to_string().contains("clients would refuse it"),
                        "{name}: {e}"
                    )
                }
                Err(e) => panic!("{name}: wrong error: {e}"),
                Ok(loaded) => panic!("{name}: accepted ({})", loaded.is_some()),
            }
        }
        // A good one after them is taken.
        let (cert_new, key_new) = write_pair(&dir, "next");
        std::fs::copy(&cert_new, &cert).unwrap();
        std::fs::copy(&key_new, &key).unwrap();
        let next = reloader
            .check(true)
            .await
            .unwrap()
            .expect("a new certificate");
        assert_eq!(next.cert_sha256, pem_cert_hash(&cert_new).await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A generated certificate that is due for renewal is replaced while the server runs.
    #[tokio::test]
    async fn reloader_renews_a_generated_certificate() {
        let dir = tempdir("renew");
        let first = dev_identity(&dir).await.unwrap();
        let mut reloader = Reloader::new(CertSource::Generated { dir: dir.clone() }, &first);
        assert!(reloader.check(false).await.unwrap().is_none());
        // Written 12 days ago: within two days of its 13-day validity.
        let aged = SystemTime::now() - Duration::from_secs(12 * 24 * 3600);
        std::fs::File::options()
            .write(true)
            .open(dir.join(DEV_CERT_FILE))
            .unwrap()
            .set_modified(aged)
            .unwrap();
        let renewed = reloader.check(false).await.unwrap().expect("renewed");
        assert_ne!(renewed.cert_sha256, first.cert_sha256);
        assert!(renewed.dev);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Instances sharing a certificate directory, started together, all serve the one pair on
    /// disk and sign with one development secret: each wrote its own before, so one refused
    /// another's key, or served a certificate no longer on disk (outside audit 59, F1: 4 bad
    /// starts in 24).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_started_together_share_one_generated_pair_and_secret() {
        for round in 0..5 {
            let dir = tempdir(&format!("together-{round}"));
            let starts: Vec<_> = (0..8)
                .map(|_| {
                    let dir = dir.clone();
                    tokio::spawn(async move {
                        let secret = tokio::task::spawn_blocking({
                            let dir = dir.clone();
                            move || crate::server::dev_secret(&dir).map_err(|e| e.to_string())
                        });
                        let identity = dev_identity(&dir).await.map_err(|e| e.to_string());
                        (identity.map(|i| i.cert_sha256), secret.await.unwrap())
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for start in starts {
                let (hash, secret) = start.await.unwrap();
                seen.push((hash.unwrap(), secret.unwrap()));
            }
            let on_disk = pem_cert_hash(&dir.join(DEV_CERT_FILE)).await.unwrap();
            let secret = std::fs::read(dir.join(crate::server::DEV_SECRET_FILE)).unwrap();
            for (hash, used) in &seen {
                assert_eq!(*hash, on_disk, "round {round}: a certificate not on disk");
                assert_eq!(*used, secret, "round {round}: another secret");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
