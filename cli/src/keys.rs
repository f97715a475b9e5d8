//! The token key a configuration names, found the way the server finds it, but without ever
//! creating the development secret: tools only read what is there.

use std::path::PathBuf;

use anyhow::{Context, Result};
use quiver_server::auth::{read_secret_file, Verifier};
use quiver_server::jwks;
use quiver_server::{Config, DEV_SECRET_FILE};

/// Where the configuration's token key is, in words an operator can follow.
pub enum KeySource {
    /// HS256 with a secret the configuration gives (`setting` says which).
    Secret { secret: Vec<u8>, setting: String },
    /// A public key or key set: verifies, cannot sign.
    Public { setting: String },
    /// Development mode: the generated secret, if the server created it already.
    Dev {
        path: PathBuf,
        secret: Option<Vec<u8>>,
    },
}

impl KeySource {
    /// `secret_flag`: whether `auth.jwt_secret` came from `--jwt-secret` (the configuration
    /// no longer says).
    pub fn of(config: &Config, secret_flag: bool) -> Result<Self> {
        let auth = &config.auth;
        if let Some(path) = &auth.public_key {
            return Ok(Self::Public {
                setting: format!("auth.public_key ({})", path.display()),
            });
        }
        if let Some(path) = &auth.jwks_file {
            return Ok(Self::Public {
                setting: format!("auth.jwks_file ({})", path.display()),
            });
        }
        if auth.jwks_url.is_some() {
            let source = jwks::Source::from_config(auth)?
                .map(|s| s.name())
                .unwrap_or_default();
            return Ok(Self::Public {
                setting: format!("auth.jwks_url ({source})"),
            });
        }
        if let Some(secret) = &auth.jwt_secret {
            return Ok(Self::Secret {
                secret: secret.expose().as_bytes().to_vec(),
                setting: format!("auth.jwt_secret ({})", secret_origin(secret_flag)),
            });
        }
        if let Some(path) = &auth.jwt_secret_file {
            let secret = read_secret_file(path)
                .with_context(|| format!("auth.jwt_secret_file: reading {}", path.display()))?;
            return Ok(Self::Secret {
                secret,
                setting: format!("auth.jwt_secret_file ({})", path.display()),
            });
        }
        let path = config.cert_dir.join(DEV_SECRET_FILE);
        let secret = read_dev_secret(&path)?;
        Ok(Self::Dev { path, secret })
    }

    /// The verifier the server would build (the same constructors, the same checks; a key set
    /// by URL is fetched). `None` in development mode before the server created its secret.
    pub async fn verifier(&self, config: &Config) -> Result<Option<Verifier>> {
        let auth = &config.auth;
        let checks = auth.checks();
        let verifier = match self {
            Self::Secret { secret, setting } => {
                Verifier::hs256(secret, &checks).with_context(|| setting.clone())?
            }
            Self::Public { setting } => {
                match (&auth.public_key, jwks::Source::from_config(auth)?) {
                    (Some(path), _) => {
                        let alg = auth.algorithm.as_deref().unwrap_or_default();
                        Verifier::public_key(path, alg, &checks).with_context(|| setting.clone())?
                    }
                    (None, Some(source)) => jwks::initial(&source, &jwks::http_client()?, auth)
                        .await
                        .with_context(|| setting.clone())?,
                    (None, None) => return Ok(None),
                }
            }
            Self::Dev { secret: None, .. } => return Ok(None),
            Self::Dev {
                secret: Some(secret),
                path,
            } => Verifier::hs256(secret, &checks)
                .with_context(|| format!("the development secret {}", path.display()))?,
        };
        Ok(Some(verifier))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Secret { setting, .. } => format!("HS256 secret from {setting}"),
            Self::Public { setting } => format!("public key from {setting}"),
            Self::Dev { path, secret: None } => format!(
                "development mode: no key configured; `quiver serve` will generate a secret in {}",
                path.display()
            ),
            Self::Dev { path, .. } => format!(
                "development mode: no key configured; the generated secret in {}",
                path.display()
            ),
        }
    }
}

/// Where `auth.jwt_secret` came from, in the words the operator used (outside audit 39: the
/// check named the key only, whether a flag, a variable or the file gave it): the flag wins
/// over the environment, which wins over the file.
fn secret_origin(flag: bool) -> String {
    if flag {
        return "--jwt-secret".into();
    }
    quiver_server::config::env_variable_setting("auth.jwt_secret")
        .unwrap_or_else(|| "the configuration file".into())
}

/// The development secret `quiver serve` created at `path`, if it did: read, never created
/// (a client command that created one signed tokens no server knew: "bad signature", outside
/// audit 58, F2).
pub fn read_dev_secret(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().as_bytes().to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
