//! Key sets that change under a running server (`auth.jwks_file`, `auth.jwks_url`).
//!
//! Identity providers rotate their signing keys: they publish the new key in their JWKS, start
//! signing with it, and later drop the old one. So the set is loaded again every
//! `auth.jwks_refresh`, on SIGHUP (at once, whatever the last load), and soon after a token
//! names a `kid` the set lacks. That last trigger is rate-limited (at most once per
//! [`MIN_REFETCH`], or per `jwks_refresh` when that is shorter), so a flood of made-up `kid`s
//! costs one fetch, not one per token.
//!
//! A set that fails to load (unreachable, an HTTP error, bad JSON, no usable key) is logged and
//! the old set kept: a bad answer from the identity provider must not refuse every user.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::auth::{KeyError, Verifier};
use crate::config::AuthConfig;
use crate::server::Shared;

/// Largest JWKS document accepted. Real ones are a few KiB; the cap keeps a misbehaving URL from
/// growing the server's memory.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Total time for one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time between two fetches caused by unknown `kid`s.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{0}")]
    Url(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Where a key set comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url(reqwest::Url),
}

impl Source {
    /// The key-set source `auth` configures, if any.
    pub fn from_config(auth: &AuthConfig) -> Result<Option<Source>, JwksError> {
        if let Some(path) = &auth.jwks_file {
            return Ok(Some(Source::File(path.clone())));
        }
        match &auth.jwks_url {
            Some(url) => Ok(Some(Source::Url(check_url(url).map_err(JwksError::Url)?))),
            None => Ok(None),
        }
    }

    /// The source as logs and errors name it: a URL without credentials or query.
    pub fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url(url) => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                shown.to_string()
            }
        }
    }
}

/// A JWKS URL must be `https`, or plain `http` to a loopback address (a sidecar): keys fetched
/// over plain HTTP from elsewhere could be replaced on the way, and with them who may sign.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(parsed)
            } else {
                Err("plain http is accepted only to a loopback address; use https".into())
            }
        }
        other => Err(format!("scheme {other:?} is not supported (use https)")),
    }
}

/// The HTTP client for key sets.
pub fn http_client() -> Result<reqwest::Client, JwksError> {
    crate::http_client::client_following(FETCH_TIMEOUT, 1, |hop| check_url(hop.as_str()).is_ok())
        .map_err(|e| JwksError::Fetch {
            url: String::new(),
            reason: e.to_string(),
        })
}

/// Reads or fetches the document, at most [`MAX_JWKS_BYTES`].
pub async fn load(source: &Source, client: &reqwest::Client) -> Result<Vec<u8>, JwksError> {
    match source {
        // A regular file of at most the same size as a fetched document (audit 134, F4: read
        // whole, `/dev/zero` grew without bound and a FIFO hung the start).
        Source::File(path) => {
            let file = path.clone();
            tokio::task::spawn_blocking(move || {
                crate::auth::read_key_file(&file, MAX_JWKS_BYTES as u64)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| JwksError::Read(path.display().to_string(), e))
        }
        Source::Url(url) => {
            let fail = |reason: String| JwksError::Fetch {
                url: source.name(),
                reason,
            };
            let mut response = client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| fail(without_url(&e)))?;
            if response.status().is_redirection() {
                return Err(fail(format!(
                    "HTTP {}: a redirect not followed (past 3, from https to http, or to plain \
                     http off loopback: every hop is held to auth.jwks_url's rule)",
                    response.status()
                )));
            }
            if !response.status().is_success() {
                return Err(fail(format!("HTTP {}", response.status())));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| fail(without_url(&e)))? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(fail(format!("larger than {MAX_JWKS_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        }
    }
}

/// reqwest's error text, without the URL it quotes (it could carry credentials).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "too many or insecure redirects"
    } else if e.is_body() || e.is_decode() {
        "the body could not be read"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// The first key set, before the server starts: a server that can't verify anyone must not
/// start.
pub async fn initial(
    source: &Source,
    client: &reqwest::Client,
    auth: &AuthConfig,
) -> Result<Verifier, JwksError> {
    let text = load(source, client).await?;
    Ok(Verifier::jwks_from_bytes(
        &source.name(),
        &text,
        &auth.checks(),
    )?)
}

/// Keeps the key set fresh until shutdown (see the module comment for when it reloads).
pub async fn keep_fresh(
    shared: Arc<Shared>,
    source: Source,
    client: reqwest::Client,
    #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] _hangup: Option<()>,
) {
    let every = shared.config.auth.jwks_refresh;
    let min_refetch = MIN_REFETCH.min(every);
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    // When a token named a `kid` the set lacks: the reload it asks for, once the rate limit
    // allows. Waited for beside the other triggers, so a SIGHUP (or the schedule) meanwhile
    // reloads at once and serves it too (ops audit S11: a SIGHUP waited up to 10 s, silently).
    let mut unknown_kid_due: Option<Instant> = None;
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let unknown_kid_wait = async {
            match unknown_kid_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => "scheduled",
            Some(()) = sighup => "SIGHUP",
            // Unknown kids seen while one reload is due add nothing (Notify keeps at most one
            // permit).
            _ = shared.verifier.unknown_kid(), if unknown_kid_due.is_none() => {
                unknown_kid_due = Some(last + min_refetch);
                continue;
            }
            _ = unknown_kid_wait => "unknown kid",
        };
        // Whatever the trigger, this load is the one an unknown kid was waiting for.
        unknown_kid_due = None;
        last = Instant::now();
        let outcome = match load(&source, &client).await {
            Ok(text) => shared
                .verifier
                .replace_jwks(&source.name(), &text)
                .map_err(JwksError::from),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(keys) => {
                metrics::counter!(crate::metrics::JWKS_RELOADS, "outcome" => "loaded").increment(1);
                info!(source = %source.name(), keys, why, "token key set loaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::JWKS_RELOADS, "outcome" => "failed").increment(1);
                warn!(error = %e, why, "token key set reload failed; keeping the old keys");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_or_loopback() {
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        let plain = check_url("http://idp.example/jwks").unwrap_err();
        assert!(plain.contains("https"), "{plain}");
        assert!(check_url("ftp://idp.example/jwks").is_err());
        assert!(check_url("not a url").is_err());
    }

    /// Audit 134, F4: `jwks_file` was read whole (`/dev/zero` until the timeout).
    #[tokio::test]
    async fn a_jwks_file_is_read_bounded_and_only_if_regular() {
        let client = http_client().unwrap();
        let big = crate::auth::key_file_tests::Scratch::new("jwks");
        std::fs::write(&big.0, vec![b' '; MAX_JWKS_BYTES + 1]).unwrap();
        let e = load(&Source::File(big.0.clone()), &client)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(&big.0, b"{\"keys\": []}").unwrap();
        assert_eq!(
            load(&Source::File(big.0.clone()), &client).await.unwrap(),
            b"{\"keys\": []}"
        );
        // Last: read whole (without the bound) it takes all the memory it can.
        let source = Source::File("/dev/zero".into());
        let read = tokio::time::timeout(Duration::from_secs(5), load(&source, &client)).await;
        let e = read.expect("within 5 s").unwrap_err().to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn names_hide_credentials_and_query() {
        let source = Source::Url(
            reqwest::Url::parse("https://user:pw@idp.example/jwks?key=secret").expect("literal"),
        );
        let name = source.name();
        assert!(!name.contains("pw") && !name.contains("secret"), "{name}");
        assert!(name.contains("idp.example/jwks"), "{name}");
    }
}
