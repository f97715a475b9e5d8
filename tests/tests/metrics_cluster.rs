//! The NATS side of the metrics, over a real nats-server and two instances: broker lag for
//! every publication that crossed NATS, JetStream publish latency, the consumer backlog gauge,
//! the connected gauge and reconnects. One test in this file: the metrics registry is
//! process-wide (both instances here share it, as the assertions say).

use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

#[tokio::test]
async fn nats_lag_latency_and_connection_are_measured() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let a = TestServer::start_with(clustered(&nats)).await?;
    let b = TestServer::start_with(clustered(&nats)).await?;
    wait_ready(&a).await?;
    wait_ready(&b).await?;
    let page = a.metrics().await?;
    assert_eq!(metric(&page, "quiver_nats_connected"), 1.0, "{page}");
    assert_eq!(metric(&page, "quiver_nats_reconnects_total"), 0.0);
    assert_eq!(metric(&page, "quiver_broker_lag_seconds_count"), 0.0);
    // The history namespace's backlog is on the page before this node has a consumer.
    assert!(
        page.lines()
            .any(|l| l == r#"quiver_jetstream_consumer_pending{namespace="h"} 0"#),
        "{page}"
    );

    // A subscriber on b; publications on a reach it over NATS (live room, then history room).
    let mut sub = Raw::connect(&b, &full_token("acme", "sub")).await?;
    let mut live = sub.subscribe("live").await?;
    let mut kept = sub.subscribe("h.room").await?;
    let mut publisher = Raw::connect(&a, &full_token("acme", "pub")).await?;
    for i in 0..3u8 {
        publisher.publish("live", &[i]).await?;
    }
    for i in 0..2u8 {
        publisher.published("h.room", &[i]).await?;
    }
    for _ in 0..3 {
        live.next().await?;
    }
    for _ in 0..2 {
        kept.next().await?;
    }

    let page = wait_metric(&b, "quiver_broker_lag_seconds_count", &[], |n| n >= 5.0).await?;
    // Exactly one lag sample per publication that arrived from NATS (b is the only listener).
    assert_eq!(
        metric(&page, "quiver_broker_lag_seconds_count"),
        5.0,
        "{page}"
    );
    assert_eq!(
        metric(&page, "quiver_jetstream_publish_duration_seconds_count"),
        2.0,
        "{page}"
    );
    assert!(metric(&page, "quiver_jetstream_publish_duration_seconds_sum") > 0.0);
    // b's history consumer reported its backlog (drained: nothing pending).
    assert!(
        page.lines()
            .any(|l| l == r#"quiver_jetstream_consumer_pending{namespace="h"} 0"#),
        "{page}"
    );

    // NATS restarts: both instances notice, and come back.
    nats.kill();
    let page = wait_metric(&a, "quiver_nats_connected", &[], |v| v == 0.0).await?;
    assert_eq!(metric(&page, "quiver_nats_reconnects_total"), 0.0);
    nats.restart().await?;
    let page = wait_metric(&a, "quiver_nats_reconnects_total", &[], |n| n >= 2.0).await?;
    assert_eq!(metric(&page, "quiver_nats_reconnects_total"), 2.0, "{page}");
    assert_eq!(metric(&page, "quiver_nats_connected"), 1.0, "{page}");
    // Each of the instance's connections says it was lost, the control plane's and the
    // calls' too (outside audit 69, F1: only the broker's did).
    for connection in ["broker", "control", "rpc"] {
        let lost = format!(r#"quiver_nats_disconnects_total{{connection="{connection}"}}"#);
        let page = wait_metric(
            &a,
            "quiver_nats_disconnects_total",
            &[("connection", connection)],
            |n| n >= 1.0,
        )
        .await?;
        assert!(metric(&page, &lost) >= 1.0, "{page}");
    }
    Ok(())
}
