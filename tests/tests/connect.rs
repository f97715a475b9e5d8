//! Connection set-up cost (issue 14): TLS session resumption for returning clients, and the
//! verified-token cache, which must not weaken expiry or revocation; and fewer client ACKs.

use quiver_proto::{Command, Event};
use quiver_server::config::ApiKey;
use quiver_tests::*;
use std::time::Duration;

const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

async fn resumed(server: &TestServer) -> anyhow::Result<f64> {
    Ok(metric(&server.metrics().await?, "quiver_tls_resumed_total"))
}

fn session_url(server: &TestServer) -> String {
    format!(
        "https://127.0.0.1:{}/v1?token={}",
        server.wt.port(),
        full_token("acme", "alice")
    )
}

/// One client endpoint (one rustls resumption store) connecting twice: the second handshake
/// resumes from the server's ticket; a new endpoint starts over with a full handshake. With
/// `tls.session_tickets = false` nothing resumes.
#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = session_url(&server);
    let endpoint = client_endpoint(server.hash)?;
    let before = resumed(&server).await?;
    let first = endpoint.connect(&url).await?;
    assert_eq!(
        resumed(&server).await?,
        before,
        "a first visit is a full handshake"
    );
    let second = endpoint.connect(&url).await?;
    assert_eq!(
        resumed(&server).await?,
        before + 1.0,
        "the second one resumes"
    );
    let other = client_endpoint(server.hash)?;
    let third = other.connect(&url).await?;
    assert_eq!(
        resumed(&server).await?,
        before + 1.0,
        "another client has no ticket"
    );
    drop((first, second, third));

    let without = TestServer::start_with(|c| c.tls.session_tickets = false).await?;
    let url = session_url(&without);
    let endpoint = client_endpoint(without.hash)?;
    let before = resumed(&without).await?;
    let a = endpoint.connect(&url).await?;
    let b = endpoint.connect(&url).await?;
    assert_eq!(
        resumed(&without).await?,
        before,
        "no tickets, no resumption"
    );
    drop((a, b));
    Ok(())
}

/// A token that opened a session (and so sits in the verified-token cache) is refused once
/// revoked: revocation is checked on every use, after the cache.
#[tokio::test]
async fn a_revoked_token_is_refused_even_when_cached() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.api.keys = vec![ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        }]
    })
    .await?;
    let token = token_with_jti("acme", "alice", "cached-1", 3600);
    let path = format!("/v1?token={token}");
    // Twice: the second connect is served from the cache.
    drop(open_session(&server, &path).await?);
    drop(open_session(&server, &path).await?);
    let exp = quiver_server::auth::unix_now() + 3600;
    let (status, body) = api_post(
        &server,
        "revoke",
        ACME,
        serde_json::json!({"tenant": "acme", "jti": "cached-1", "expires_at": exp}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        open_session(&server, &path).await.is_err(),
        "a revoked token opened a session"
    );
    // Another token of the same user is unaffected.
    let fresh = token_with_jti("acme", "alice", "cached-2", 3600);
    drop(open_session(&server, &format!("/v1?token={fresh}")).await?);
    Ok(())
}

/// A cached token is refused once it expires, even though its signature was checked before.
#[tokio::test]
async fn a_cached_token_past_its_expiry_is_refused() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // Valid for 2 s; `exp` is in whole seconds, so it may lapse after just over 1 s.
    let token = token("acme", "alice", &[">"], &[">"], 2);
    let path = format!("/v1?token={token}");
    drop(open_session(&server, &path).await?);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        open_session(&server, &path).await.is_err(),
        "an expired cached token opened a session"
    );
    Ok(())
}

/// The Rust client keeps one QUIC endpoint (one TLS session store) for its lifetime, so its
/// reconnect resumes the TLS session: a `quiver` process is frozen until the client's
/// heartbeat gives up, thawed, and the client's second handshake is counted as resumed.
#[tokio::test]
async fn the_rust_client_resumes_when_it_reconnects() -> anyhow::Result<()> {
    use std::time::Instant;
    let dir = tempfile::tempdir()?;
    let server = quiver_tests::process::QuiverProcess::start(dir.path(), None, &[])?;
    let metrics_url = format!("http://127.0.0.1:{}/metrics", server.http_port);
    let scrape = || async {
        let page = reqwest::get(&metrics_url).await?.text().await?;
        anyhow::Ok((
            metric(&page, "quiver_tls_resumed_total"),
            metric_sum(
                &page,
                "quiver_sessions_opened_total",
                &[("transport", "webtransport")],
            ),
        ))
    };
    let mut config = quiver_client::ClientConfig::new(
        server.url(),
        quiver_client::token_fixed(full_token("acme", "resume")),
    )
    .with_trust(quiver_client::Trust::CertHashes(vec![server.hash]))
    .with_transport(quiver_client::Transport::WebTransport);
    config.connect_timeout = Duration::from_secs(2);
    config.idle_timeout = Duration::from_secs(60);
    config.backoff = quiver_client::Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(300),
    };
    let client = quiver_client::Client::connect(config).await?;
    assert_eq!(scrape().await?, (0.0, 1.0), "one full handshake");

    server.pause()?;
    // The default heartbeat gives up after about 2.5 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.resume()?;
    let deadline = Instant::now() + WAIT;
    loop {
        let (resumed, opened) = scrape().await?;
        if opened >= 2.0 {
            assert!(resumed >= 1.0, "the reconnect did not resume ({resumed})");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the client did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await;
    Ok(())
}

/// A burst of handshakes (here 12 at once, the threshold set to 4) grows the WebTransport
/// socket's receive buffer, every session of the burst opens, and the buffer goes back to its
/// steady size once the burst is over (`udp_socket.rs`: deep queues of ACKs slow fan-out).
#[tokio::test]
async fn a_burst_of_handshakes_deepens_the_receive_buffer_until_it_is_over() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.transport.udp_burst_handshakes = 4;
        c.transport.udp_receive_buffer_burst = 1024 * 1024;
    })
    .await?;
    let page = server.metrics().await?;
    let bursts = metric(&page, "quiver_udp_receive_buffer_bursts_total");
    let steady = metric(&page, "quiver_udp_receive_buffer_bytes");
    assert!(steady > 0.0, "the gauge reports the kernel's buffer");

    let url = session_url(&server);
    let connects = (0..12).map(|_| {
        let url = url.clone();
        async move {
            client_endpoint(server.hash)?
                .connect(&url)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let sessions = futures::future::try_join_all(connects).await?;
    assert_eq!(sessions.len(), 12, "every session of the burst opens");
    assert!(
        metric(
            &server.metrics().await?,
            "quiver_udp_receive_buffer_bursts_total"
        ) > bursts,
        "12 handshakes at once are a burst"
    );

    // Back to the steady size within a few settle periods (250 ms each).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(&server.metrics().await?, "quiver_udp_receive_buffer_bytes");
        if now == steady {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {now} bytes, steady is {steady}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(sessions);
    Ok(())
}

/// The server asks clients that take QUIC's ACK-frequency extension (quinn-based: the test
/// client, the Rust client) to acknowledge less often (`transport.client_ack_delay`), and asks
/// nothing when it is 0.
#[tokio::test]
async fn quinn_clients_are_asked_to_acknowledge_less_often() -> anyhow::Result<()> {
    for (delay, asked) in [(Duration::from_millis(100), true), (Duration::ZERO, false)] {
        let server = TestServer::start_with(|c| c.transport.client_ack_delay = delay).await?;
        let mut raw = Raw::connect(&server, &full_token("t", "u")).await?;
        // A round trip after the handshake: the frame goes in the server's first 1-RTT packets.
        let pong = raw.request(Command::Ping).await?;
        assert!(matches!(pong, Event::Pong), "{pong:?}");
        let frames = raw.conn().quic_connection().stats().frame_rx;
        assert_eq!(frames.ack_frequency > 0, asked, "{delay:?}: {frames:?}");
    }
    Ok(())
}
