//! Per-tenant series and their cardinality guard: the first `quotas.max_tenant_labels` tenants
//! get their own label, every later tenant is counted under `~other`, and no series ever names
//! them. A tenant named `other` is a tenant like any, not the overflow. One test in this file: the metrics registry is process-wide.

use std::time::Duration;

use quiver_tests::*;

#[tokio::test]
async fn tenants_past_the_label_limit_share_other() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.quotas.max_tenant_labels = 2).await?;
    let mut sessions = Vec::new();
    let mut rooms = Vec::new();
    for tenant in ["t1", "other", "t3", "t4"] {
        let mut raw = Raw::connect(&server, &full_token(tenant, "u")).await?;
        rooms.push(raw.subscribe("r").await?);
        raw.publish("r", b"x").await?;
        sessions.push(raw);
    }
    for room in &mut rooms {
        room.next().await?;
    }
    // A publication through the backend API (a client's token here) is the tenant's too.
    let published = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish/r", server.http))
        .bearer_auth(token("t1", "backend", &[], &["r"], 60))
        .body("y")
        .send()
        .await?;
    assert_eq!(published.status(), 200);
    rooms[0].next().await?;
    let page = server.metrics().await?;
    let by = |name, tenant| metric_sum(&page, name, &[("tenant", tenant)]);
    for (tenant, sessions, publications) in
        [("t1", 1.0, 2.0), ("other", 1.0, 1.0), ("~other", 2.0, 2.0)]
    {
        assert_eq!(
            by("quiver_tenant_sessions", tenant),
            sessions,
            "{tenant}\n{page}"
        );
        assert_eq!(
            by("quiver_tenant_subscriptions", tenant),
            sessions,
            "{tenant}"
        );
        assert_eq!(
            by("quiver_tenant_publications_total", tenant),
            publications,
            "{tenant}"
        );
        assert_eq!(
            by("quiver_tenant_deliveries_total", tenant),
            publications,
            "{tenant}"
        );
    }
    assert!(
        !page.contains(r#"tenant="t3""#) && !page.contains(r#"tenant="t4""#),
        "{page}"
    );

    // The gauges come back down for every label, `~other` included.
    for mut raw in sessions {
        raw.close().await;
    }
    drop(rooms);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = server.metrics().await?;
        let open = metric_sum(&page, "quiver_tenant_sessions", &[]);
        let subs = metric_sum(&page, "quiver_tenant_subscriptions", &[]);
        if open == 0.0 && subs == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tenant gauges stuck:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
