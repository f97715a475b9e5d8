//! Every way a session ends is counted under its own `reason` in `quiver_sessions_closed_total`
//! (and a refused token in `quiver_sessions_refused_total`), provoked for real. One test in this
//! file: the metrics registry is process-wide, so the counts here are this server's alone.

use std::time::Duration;

use quiver_proto::{Command, PROTOCOL_VERSION};
use quiver_server::config::{ApiKey, TenantOverride};
use quiver_tests::*;

const ADMIN: &str = "admin-key-0123456789abcdef0123456789";

/// Waits until `quiver_sessions_closed_total{transport, reason}` reaches `want`, and checks it
/// does not pass it.
async fn closed(
    server: &TestServer,
    transport: &str,
    reason: &str,
    want: f64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = server.metrics().await?;
        let n = metric_sum(
            &page,
            "quiver_sessions_closed_total",
            &[("transport", transport), ("reason", reason)],
        );
        if n >= want {
            assert_eq!(n, want, "{transport}/{reason} counted too often:\n{page}");
            return Ok(());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{transport}/{reason} stayed at {n}, want {want}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_way_a_session_ends_has_its_own_label() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(|c| {
        c.timeouts.hello = Duration::from_millis(500);
        c.timeouts.idle = Duration::from_secs(1);
        c.timeouts.keep_alive = Duration::from_millis(300);
        c.auth.leeway = Duration::ZERO;
        c.limits.commands_per_second = 5;
        c.quotas.tenants = vec![TenantOverride {
            tenant: "capped".into(),
            max_sessions: Some(1),
            ..Default::default()
        }];
        c.api.keys = vec![ApiKey {
            key: ADMIN.into(),
            tenant: None,
        }];
    })
    .await?;

    // An idle server already shows every label at zero, so `rate()` has a first sample.
    let idle = server.metrics().await?;
    for reason in [
        "client_closed",
        "idle_timeout",
        "connection_lost",
        "shutdown",
        "protocol_error",
        "token_expired",
        "rate_abuse",
        "hello_timeout",
        "over_quota",
        "disconnected",
    ] {
        for transport in ["webtransport", "websocket", "sse"] {
            let series = format!(
                r#"quiver_sessions_closed_total{{transport="{transport}",reason="{reason}"}} 0"#
            );
            assert!(
                idle.lines().any(|l| l == series),
                "missing {series}:\n{idle}"
            );
        }
    }

    // A client that closes its session, on each transport, is leaving: not a lost connection.
    let mut wt = Raw::connect(&server, &full_token("acme", "a")).await?;
    wt.close().await;
    closed(&server, "webtransport", "client_closed", 1.0).await?;
    let mut ws = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "a")).await?;
    ws.close().await;
    closed(&server, "websocket", "client_closed", 1.0).await?;

    // A WebSocket client that answers nothing (not even pings) for `timeouts.idle`.
    let deaf = deaf_websocket(&server, "deaf", "r").await?;
    closed(&server, "websocket", "idle_timeout", 1.0).await?;
    drop(deaf);

    // Bytes that are not a frame.
    let mut bad = Raw::connect(&server, &full_token("acme", "b")).await?;
    bad.send_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    closed(&server, "webtransport", "protocol_error", 1.0).await?;
    drop(bad);

    // No Hello within `timeouts.hello`.
    let silent = open_session(&server, &format!("/v1?token={}", full_token("acme", "c"))).await?;
    let _control = Raw::on(silent).await?;
    closed(&server, "webtransport", "hello_timeout", 1.0).await?;

    // A token that runs out (two seconds, no leeway) without a refresh. Not one: `exp` is in
    // whole seconds, so a one-second token signed late in a second can be expired by the time
    // the server checks it, and the session is refused instead (a CI failure).
    let short = token("acme", "d", &[">"], &[">"], 2);
    let _expiring = Raw::connect(&server, &short).await?;
    closed(&server, "webtransport", "token_expired", 1.0).await?;

    // Commands far over the rate limit, replies unread.
    let mut flood = Raw::connect(&server, &full_token("acme", "e")).await?;
    for _ in 0..200 {
        if flood.send(Command::Ping).await.is_err() {
            break;
        }
    }
    closed(&server, "webtransport", "rate_abuse", 1.0).await?;
    drop(flood);

    // A second session of a tenant allowed one.
    let _first = Raw::connect(&server, &full_token("capped", "f")).await?;
    let second = open_session(&server, &format!("/v1?token={}", full_token("capped", "g"))).await?;
    let mut second = Raw::on(second).await?;
    second
        .send(Command::Hello {
            version: PROTOCOL_VERSION,
            client: "over".into(),
        })
        .await?;
    closed(&server, "webtransport", "over_quota", 1.0).await?;

    // The backend disconnects a user.
    let _kicked = Raw::connect(&server, &full_token("acme", "kicked")).await?;
    let status = reqwest::Client::new()
        .post(format!("http://{}/api/v1/disconnect", server.http))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"tenant": "acme", "user": "kicked"}))
        .send()
        .await?
        .status();
    assert_eq!(status, 200);
    closed(&server, "webtransport", "disconnected", 1.0).await?;

    // A refused token is no session: it is counted among the refusals, by why.
    let refused = open_session(&server, "/v1?token=not-a-jwt").await;
    assert!(refused.is_err());
    let page = server.metrics().await?;
    assert_eq!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("transport", "webtransport"), ("reason", "token_invalid")]
        ),
        1.0,
        "{page}"
    );

    // Nothing above was a lost connection.
    for transport in ["webtransport", "websocket"] {
        closed(&server, transport, "connection_lost", 0.0).await?;
    }

    // The server shutting down under its two open sessions (`capped`'s first, and one more). The page is gone with the server: read
    // the registry (process-wide) through a second server.
    let _open = Raw::connect(&server, &full_token("acme", "h")).await?;
    server.stop().await;
    let other = TestServer::start().await?;
    closed(&other, "webtransport", "shutdown", 2.0).await?;
    Ok(())
}
