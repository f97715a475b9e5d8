//! Token keys from an identity provider's JWKS URL, as they rotate under a running server
//! (issue 10: "a JWKS file or URL"). A real HTTP server on loopback plays the identity provider.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quiver_server::auth::{unix_now, Claims};
use quiver_server::{Config, Server};
use quiver_tests::*;

/// An ES256 key with the JWK an identity provider publishes for it.
struct Key {
    kid: &'static str,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &'static str) -> Key {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    // Uncompressed point: 0x04, x, y.
    let raw = pair.public_key_raw();
    Key {
        kid,
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"),
        jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]),
            "y": b64(&raw[33..65]), "kid": kid, "use": "sig", "alg": "ES256"}),
    }
}

fn sign(key: &Key) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.into());
    let claims = Claims {
        sub: "ada".into(),
        tenant: "acme".into(),
        exp: unix_now() + 600,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    };
    jsonwebtoken::encode(&header, &claims, &key.encoding).expect("signing works")
}

/// What the fake identity provider answers.
#[derive(Clone)]
enum Answer {
    Keys(Vec<serde_json::Value>),
    Status(StatusCode),
    Garbage,
    Huge,
    /// A 302 to this URL.
    Redirect(String),
}

struct Provider {
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    url: String,
}

impl Provider {
    async fn start(answer: Answer) -> anyhow::Result<Provider> {
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (a, f) = (a.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = a.lock().expect("lock").clone();
                    match answer {
                        Answer::Keys(keys) => {
                            axum::Json(serde_json::json!({ "keys": keys })).into_response()
                        }
                        Answer::Status(status) => status.into_response(),
                        Answer::Garbage => "<html>maintenance</html>".into_response(),
                        Answer::Huge => "x".repeat(2 << 20).into_response(),
                        Answer::Redirect(to) => {
                            (StatusCode::FOUND, [("location", to)]).into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            listener.local_addr()?.port()
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Provider {
            answer,
            fetches,
            url,
        })
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn server_for(provider: &Provider, refresh: Duration) -> anyhow::Result<TestServer> {
    let url = provider.url.clone();
    TestServer::start_with(move |c| {
        c.auth.jwt_secret = None;
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh = refresh;
    })
    .await
}

async fn accepted(server: &TestServer, token: &str) -> bool {
    open_session(server, &format!("/v1?token={token}"))
        .await
        .is_ok()
}

/// Polls until `token` is accepted (or refused) or `within` passes.
async fn becomes(server: &TestServer, token: &str, want: bool, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if accepted(server, token).await == want {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The provider rotates: it publishes key B and signs with it. A token with B's `kid` is
/// refused at first (unknown kid) and that refusal makes the server fetch the set again, so B
/// is accepted well before the scheduled refresh. When A is dropped from the set, A's tokens are
/// refused after the next refresh.
#[tokio::test]
async fn rotated_keys_are_fetched_again() -> anyhow::Result<()> {
    let (a, b) = (key("a"), key("b"));
    let provider = Provider::start(Answer::Keys(vec![a.jwk.clone()])).await?;
    // The scheduled refresh is far away: only the unknown kid can explain a quick fetch.
    let server = server_for(&provider, Duration::from_secs(3600)).await?;
    assert_eq!(provider.fetches(), 1, "fetched once at start");
    assert!(accepted(&server, &sign(&a)).await);

    provider.set(Answer::Keys(vec![a.jwk.clone(), b.jwk.clone()]));
    assert!(
        !accepted(&server, &sign(&b)).await,
        "B is unknown until fetched"
    );
    assert!(
        becomes(&server, &sign(&b), true, Duration::from_secs(15)).await,
        "an unknown kid triggers a fetch (at most one per 10 s)"
    );
    assert!(accepted(&server, &sign(&a)).await, "A still in the set");

    // A flood of unknown kids costs at most one more fetch per rate-limit window.
    let before = provider.fetches();
    for _ in 0..20 {
        assert!(!accepted(&server, &sign(&key("made-up"))).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        provider.fetches() <= before + 1,
        "unknown kids are rate-limited"
    );
    Ok(())
}

#[tokio::test]
async fn scheduled_refresh_drops_retired_keys_and_a_bad_answer_keeps_the_old_set(
) -> anyhow::Result<()> {
    let (a, b) = (key("a"), key("b"));
    let provider = Provider::start(Answer::Keys(vec![a.jwk.clone(), b.jwk.clone()])).await?;
    let server = server_for(&provider, Duration::from_secs(1)).await?;
    assert!(accepted(&server, &sign(&a)).await);

    // The provider breaks in every way: the keys stay.
    for answer in [
        Answer::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Answer::Garbage,
        Answer::Keys(vec![]),
        Answer::Huge,
    ] {
        let seen = provider.fetches();
        provider.set(answer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while provider.fetches() < seen + 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(provider.fetches() >= seen + 2, "refreshes every second");
        assert!(
            accepted(&server, &sign(&a)).await,
            "a bad answer keeps the old keys"
        );
    }
    let page = server.metrics().await?;
    assert!(metric_sum(&page, "quiver_jwks_reloads_total", &[("outcome", "failed")]) >= 4.0);

    // A retired: refused after the next refresh; B carries on.
    provider.set(Answer::Keys(vec![b.jwk.clone()]));
    assert!(becomes(&server, &sign(&a), false, Duration::from_secs(10)).await);
    assert!(accepted(&server, &sign(&b)).await);
    Ok(())
}

/// A server that can't load its keys can't verify anyone: it refuses to start, naming the
/// setting and the reason.
#[tokio::test]
async fn an_unreachable_or_bad_key_set_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let provider = Provider::start(Answer::Status(StatusCode::NOT_FOUND)).await?;
    let (_held, closed_port) = quiver_tests::refusing_port()?;
    let closed = format!("http://127.0.0.1:{closed_port}/jwks");
    for (url, want) in [
        (provider.url.clone(), "HTTP 404"),
        (closed, "could not connect"),
        ("http://idp.example/jwks".to_owned(), "loopback"),
    ] {
        let mut config = Config {
            listen: "127.0.0.1:0".parse()?,
            http: "127.0.0.1:0".parse()?,
            cert_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.tls.self_signed = true;
        config.auth.jwks_url = Some(url.clone());
        let err = match config.validate() {
            Err(e) => e,
            Ok(()) => match Server::start(config).await {
                Ok(server) => {
                    server.shutdown().await;
                    panic!("{url} started a server");
                }
                Err(e) => e.to_string(),
            },
        };
        assert!(err.contains(want), "{url}: {err}");
        assert!(err.contains("jwks"), "{url}: names the setting: {err}");
    }
    Ok(())
}

/// Every redirect hop is held to `jwks_url`'s rule (https, or plain http to loopback): a
/// loopback URL redirecting to plain http elsewhere is not followed, and the server does not
/// start; one redirecting to another loopback URL is (outside audit 98, F3: the first was
/// followed and its keys loaded). "Elsewhere" here is the IPv4-mapped form of 127.0.0.1, which
/// the rule does not take as loopback, so the test stays on this machine.
#[tokio::test]
async fn a_redirect_is_held_to_the_jwks_urls_rule() -> anyhow::Result<()> {
    let a = key("a");
    let provider = Provider::start(Answer::Keys(vec![a.jwk.clone()])).await?;
    let port = provider
        .url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next());
    let port = port.ok_or_else(|| anyhow::anyhow!("no port in {}", provider.url))?;
    let elsewhere = format!("http://[::ffff:127.0.0.1]:{port}/.well-known/jwks.json");
    let redirector = Provider::start(Answer::Redirect(elsewhere)).await?;
    let refused = match server_for(&redirector, Duration::from_secs(3600)).await {
        Ok(_) => panic!("keys loaded through a redirect off loopback"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("redirect not followed"), "{refused}");
    assert_eq!(provider.fetches(), 0, "the redirect was followed");

    redirector.set(Answer::Redirect(provider.url.clone()));
    let server = server_for(&redirector, Duration::from_secs(3600)).await?;
    assert_eq!(provider.fetches(), 1);
    assert!(accepted(&server, &sign(&a)).await);
    Ok(())
}

/// A JWKS file is read again on the same schedule (and on SIGHUP): a rotated file is picked up
/// without a restart.
#[tokio::test]
async fn a_rotated_jwks_file_is_read_again() -> anyhow::Result<()> {
    let (a, b) = (key("a"), key("b"));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jwks.json");
    let write = |keys: Vec<serde_json::Value>| {
        std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string())
    };
    write(vec![a.jwk.clone()])?;
    let file = path.clone();
    let server = TestServer::start_with(move |c| {
        c.auth.jwt_secret = None;
        c.auth.jwks_file = Some(file);
        c.auth.jwks_refresh = Duration::from_secs(1);
    })
    .await?;
    assert!(accepted(&server, &sign(&a)).await);
    assert!(!accepted(&server, &sign(&b)).await);
    write(vec![b.jwk.clone()])?;
    assert!(becomes(&server, &sign(&b), true, Duration::from_secs(10)).await);
    assert!(!accepted(&server, &sign(&a)).await, "A left the file");
    Ok(())
}
