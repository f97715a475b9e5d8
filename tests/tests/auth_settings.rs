//! Token settings an operator chooses, as a client meets them: the HS256 secret's minimum length
//! and its file, and the (zero by default) clock leeway at CONNECT and on Refresh.

use std::time::Duration;

use quiver_proto::{Command, ErrorCode, Event};
use quiver_server::auth::{sign_hs256, unix_now, Claims};
use quiver_server::{Config, Server};
use quiver_tests::*;

fn claims(user: &str, exp: u64) -> Claims {
    Claims {
        sub: user.into(),
        tenant: "acme".into(),
        exp,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    }
}

/// Issue 10, defect 3: `QUIVER_JWT_SECRET=""` started a production server whose HS256 key was
/// empty, so anyone could mint tokens. Short secrets are now refused at start, naming the
/// setting.
#[tokio::test]
async fn short_secrets_refuse_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = || Config {
        listen: "127.0.0.1:0".parse().expect("literal"),
        http: "127.0.0.1:0".parse().expect("literal"),
        cert_dir: dir.path().to_owned(),
        ..Config::default()
    };
    for secret in ["", "xyzzy", "0123456789abcdef0123456789abcde"] {
        let mut config = base();
        config.auth.jwt_secret = Some(secret.into());
        config.tls.self_signed = true;
        let err = match Server::start(config).await {
            Ok(server) => {
                server.shutdown().await;
                panic!("a {}-byte secret started a server", secret.len());
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains("auth.jwt_secret"), "{err}");
        assert!(err.contains("at least 32"), "{err}");
        assert!(
            secret.is_empty() || !err.contains(secret),
            "the error quotes the secret: {err}"
        );
    }
    let file = dir.path().join("secret");
    std::fs::write(&file, "too-short\n")?;
    let mut config = base();
    config.auth.jwt_secret_file = Some(file);
    config.tls.self_signed = true;
    let err = Server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("auth.jwt_secret_file"), "{err}");
    Ok(())
}

/// The reproduction, through the real binary: `QUIVER_JWT_SECRET=""` must not start.
#[test]
fn an_empty_secret_in_the_environment_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = quiver_tests::process::serve_command(dir.path())?;
    cmd.env("QUIVER_JWT_SECRET", "");
    let (ok, stderr) = quiver_tests::process::refusal(cmd, WAIT)?;
    assert!(!ok);
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
    Ok(())
}

/// The secret can come from a file (out of `ps` and shell history); its trailing newline is not
/// part of it.
#[tokio::test]
async fn secret_from_a_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = "a-secret-that-lives-in-a-file-0123456789";
    let file = dir.path().join("jwt-secret");
    std::fs::write(&file, format!("{secret}\n"))?;
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.auth.jwt_secret_file = Some(file.clone());
    })
    .await?;
    let good = sign_hs256(secret.as_bytes(), &claims("filed", unix_now() + 60))?;
    let raw = Raw::connect(&server, &good).await?;
    assert!(matches!(raw.welcome, Some(Event::Welcome { .. })));
    // The test suite's usual secret is not the server's any more.
    assert!(
        open_session(&server, &format!("/v1?token={}", full_token("acme", "x")))
            .await
            .is_err()
    );
    Ok(())
}

/// Issue 10, defect 5: a token that expired up to 5 s ago was accepted at CONNECT. With the
/// default leeway (0) it is refused; with `auth.leeway` it is accepted within the leeway.
#[tokio::test]
async fn recently_expired_tokens_are_refused_at_connect() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let expired = token("acme", "late", &[">"], &[">"], -2);
    assert!(open_session(&server, &format!("/v1?token={expired}"))
        .await
        .is_err());
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("reason", "token_expired")]
        ) >= 1.0
    );

    let lenient = TestServer::start_with(|c| c.auth.leeway = Duration::from_secs(30)).await?;
    let expired = token("acme", "late", &[">"], &[">"], -2);
    assert!(open_session(&lenient, &format!("/v1?token={expired}"))
        .await
        .is_ok());
    // On Refresh alike (sixth audit: Refresh applied no leeway).
    let mut raw = Raw::connect(&lenient, &full_token("acme", "late")).await?;
    let reply = raw.request(Command::Refresh { token: expired }).await?;
    assert!(matches!(reply, Event::Refreshed { .. }), "{reply:?}");
    assert!(matches!(raw.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// Issue 10, defect 5: a Refresh with a token that expired 2 s ago was answered `Refreshed`, and
/// then the healthy session was closed. It is refused with `invalid_token` and the session
/// carries on with its old token.
#[tokio::test]
async fn refresh_with_an_expired_token_is_refused_and_the_session_lives() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let Some(Event::Welcome { expires_at, .. }) = raw.welcome.clone() else {
        anyhow::bail!("no welcome");
    };
    let expired = token("acme", "alice", &[">"], &[">"], -2);
    match raw.request(Command::Refresh { token: expired }).await? {
        Event::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidToken.as_u16(), "{message}");
            assert!(message.contains("expired"), "{message}");
        }
        other => panic!("expected invalid_token, got {other:?}"),
    }
    // Still alive after the moment the refused token would have ended it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(raw.request(Command::Ping).await?, Event::Pong));
    // And a good refresh still works, keeping the old expiry until then.
    let fresh = token("acme", "alice", &[">"], &[">"], 7200);
    match raw.request(Command::Refresh { token: fresh }).await? {
        Event::Refreshed { expires_at: new } => assert!(new > expires_at),
        other => panic!("expected Refreshed, got {other:?}"),
    }
    Ok(())
}
