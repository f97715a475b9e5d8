//! The server's certificate: refused self-signed in production unless asked for, and reloaded
//! without a restart (file change and SIGHUP) while connected clients stay connected.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use quiver_proto::{Command, Event};
use quiver_server::tls::pem_cert_hash;
use quiver_server::Server;
use quiver_tests::process::QuiverProcess;
use quiver_tests::*;

/// Writes a fresh self-signed certificate and key over `cert` and `key`; returns its hash.
async fn write_cert(cert: &Path, key: &Path) -> anyhow::Result<[u8; 32]> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    // Pinning by hash needs a validity of at most 14 days.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(7);
    let certificate = params.self_signed(&pair)?;
    // Key first, then certificate, each replaced in one rename, as rotation tools do.
    for (path, pem) in [(key, pair.serialize_pem()), (cert, certificate.pem())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(pem_cert_hash(cert).await?)
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("server.crt"), dir.join("server.key"))
}

/// Whether a new session can be opened pinning `hash`.
async fn connects(port: u16, hash: [u8; 32]) -> bool {
    let token = full_token("acme", "probe");
    open_session_at(port, hash, &format!("/v1?token={token}"))
        .await
        .is_ok()
}

/// With production auth and no certificate, the server used to serve its 13-day development
/// certificate without a word. It now refuses to start and says why, unless `tls.self_signed`
/// asks for it.
#[tokio::test]
async fn production_auth_without_a_certificate_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = quiver_server::Config {
        listen: "127.0.0.1:0".parse()?,
        http: "127.0.0.1:0".parse()?,
        cert_dir: dir.path().to_owned(),
        ..quiver_server::Config::default()
    };
    config.auth.jwt_secret = Some(SECRET.into());
    let err = Server::start(config.clone()).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("tls.self_signed"), "{text}");
    assert!(text.contains("--cert"), "{text}");
    config.tls.self_signed = true;
    let server = Server::start(config).await?;
    assert!(!server.is_dev());
    server.shutdown().await;
    Ok(())
}

/// Development mode (`quiver serve` and nothing else) still starts with its generated
/// certificate.
#[tokio::test]
async fn development_mode_still_uses_the_generated_certificate() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.tls.self_signed = false;
    })
    .await?;
    assert!(server.server.as_ref().is_some_and(Server::is_dev));
    Ok(())
}

/// Rotating the certificate files: new clients get the new certificate, old connections stay
/// up and keep receiving.
#[tokio::test]
async fn changed_certificate_files_are_reloaded_and_live_sessions_stay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = paths(dir.path());
    let first = write_cert(&cert, &key).await?;
    let server = TestServer::start_with(|c| {
        c.cert = Some(cert.clone());
        c.key = Some(key.clone());
        c.tls.self_signed = false;
        c.tls.reload_interval = Duration::from_millis(100);
    })
    .await?;
    assert_eq!(server.hash, first);
    let port = server.wt.port();
    let mut old = Raw::connect(&server, &full_token("acme", "old")).await?;
    let mut room = old.subscribe("news").await?;

    let second = write_cert(&cert, &key).await?;
    assert_ne!(first, second);
    let deadline = tokio::time::Instant::now() + WAIT;
    let running = server.server.as_ref().expect("running");
    while running.cert_sha256() != second {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reloaded in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        connects(port, second).await,
        "a new client sees the new certificate"
    );
    assert!(
        !connects(port, first).await,
        "the old certificate is no longer served"
    );

    // The session opened before the rotation is still there, and still receives.
    let mut new = Raw::connect_at(port, second, &full_token("acme", "new")).await?;
    assert!(matches!(
        new.publish("news", b"after rotation").await?,
        Event::Published { .. }
    ));
    assert_eq!(&room.payload().await?[..], b"after rotation");
    assert!(matches!(old.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// SIGHUP reloads at once, whatever the poll interval.
#[tokio::test]
async fn sighup_reloads_the_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = paths(dir.path());
    let first = write_cert(&cert, &key).await?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(&config, "[tls]\nreload_interval = \"1h\"\n")?;
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let server = QuiverProcess::start(
        dir.path(),
        Some(&config),
        &["--cert", &cert_arg, "--key", &key_arg],
    )?;
    assert_eq!(server.hash, first);
    let mut old = Raw::connect_at(server.wt_port, first, &full_token("acme", "old")).await?;

    let second = write_cert(&cert, &key).await?;
    // No poll within the hour: the old certificate is still served...
    assert!(connects(server.wt_port, first).await);
    // ...until SIGHUP.
    let status = Process::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .stdout(Stdio::null())
        .status()?;
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !connects(server.wt_port, second).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(old.request(Command::Ping).await?, Event::Pong));
    Ok(())
}
