//! The server's own counts, read through `/metrics` as an operator would. This file holds one
//! test so that no other server shares the process-wide metrics registry while it runs.

use std::time::Duration;

use bytes::Bytes;
use quiver_proto::Command;
use quiver_tests::*;

#[tokio::test]
async fn gauges_return_to_zero_after_disconnect() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let page = reqwest::get(format!("http://{}/healthz", server.http)).await?;
    assert_eq!(page.status(), 200);
    // An idle server's page already has every series a dashboard queries, at zero.
    let idle = server.metrics().await?;
    for series in [
        r#"quiver_sessions_active{transport="webtransport"} 0"#,
        r#"quiver_sessions_active{transport="websocket"} 0"#,
        r#"quiver_sessions_active{transport="sse"} 0"#,
        "quiver_publications_total 0",
        r#"quiver_deliveries_total{namespace="other"} 0"#,
        r#"quiver_resumes_requested_total{namespace="other"} 0"#,
        r#"quiver_resumes_total{namespace="other",result="recovered"} 0"#,
        r#"quiver_resumes_total{namespace="other",result="failed"} 0"#,
    ] {
        assert!(
            idle.lines().any(|l| l == series),
            "missing {series}:\n{idle}"
        );
    }
    assert!(idle.contains("quiver_build_info{version="), "{idle}");

    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(&server, &full_token("acme", &format!("u{i}"))).await?;
        streams.push(c.subscribe("a").await?);
        streams.push(c.subscribe(&format!("own.{i}")).await?);
        clients.push(c);
    }
    clients[0].publish("a", b"x").await?;
    clients[0]
        .send(Command::Publish {
            room: "a".into(),
            payload: Bytes::from_static(b"y"),
            ack: false,
        })
        .await?;
    clients[0].request(Command::Ping).await?;

    let page = server.metrics().await?;
    assert_eq!(metric_sum(&page, "quiver_sessions_active", &[]), 3.0);
    assert_eq!(metric(&page, "quiver_subscriptions_active"), 6.0);
    assert_eq!(metric(&page, "quiver_publications_total"), 2.0);
    assert_eq!(metric_sum(&page, "quiver_deliveries_total", &[]), 6.0);

    // Two leave abruptly, one politely.
    for c in clients.drain(1..) {
        c.conn().close(0u32.into(), b"bye");
    }
    drop(clients);
    drop(streams);

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = server.metrics().await?;
        if metric_sum(&page, "quiver_sessions_active", &[]) == 0.0
            && metric(&page, "quiver_subscriptions_active") == 0.0
        {
            assert_eq!(metric_sum(&page, "quiver_sessions_opened_total", &[]), 3.0);
            // Closing a session (or dropping the connection, which closes it) is the client
            // leaving, not a lost connection.
            let closed =
                |reason| metric_sum(&page, "quiver_sessions_closed_total", &[("reason", reason)]);
            assert_eq!(closed("client_closed"), 3.0, "{page}");
            assert_eq!(closed("connection_lost"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges did not return to zero:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
