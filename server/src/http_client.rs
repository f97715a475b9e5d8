//! The one outbound HTTP client set-up (JWKS by URL, RPC and hooks over HTTP): reqwest on
//! rustls, with ring as the crypto provider like the rest of the server (no aws-lc).

use std::time::Duration;

/// Installs ring as the process's rustls provider, once. reqwest is built without a bundled
/// provider (`rustls-no-provider`) and panics when it finds none.
pub fn ensure_crypto_provider() {
    // Err means a provider is installed already (by us earlier, or by the embedding program):
    // either way there is one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with the given total timeout per request, a bounded idle pool, and at most three
/// redirects (none from https to http).
pub fn client(
    timeout: Duration,
    max_idle_per_host: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    client_following(timeout, max_idle_per_host, |_| true)
}

/// [`client`], following a redirect only to a URL `allowed` takes: the rule that judged the
/// configured URL judges every hop (outside audit 98, F3: a JWKS URL allowed as plain http to
/// loopback redirected to plain http elsewhere, and the keys served there were loaded).
pub fn client_following(
    timeout: Duration,
    max_idle_per_host: usize,
    allowed: fn(&reqwest::Url) -> bool,
) -> Result<reqwest::Client, reqwest::Error> {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(max_idle_per_host)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if attempt.previous().len() >= 3 || downgrade || !allowed(attempt.url()) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .user_agent(concat!("quiver/", env!("CARGO_PKG_VERSION")))
        .build()
}
