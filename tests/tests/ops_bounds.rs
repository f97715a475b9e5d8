//! Operations series against a hostile or broken peer (audit 134): the reconnect proxy records
//! admitted sessions only (F1), an SSE request refused with 400 is counted as a refusal (F2),
//! and over SSE `quiver_delivery_bytes_total` counts the text events written (F3). Each test
//! reads series no other test in this file moves: the metrics registry is process-wide.

use std::time::Duration;

use quiver_proto::{Command, Event};
use quiver_tests::*;

/// A WebSocket session of `user` in `tenant`: `true` if welcomed, `false` if refused with a
/// `Goodbye`. A welcomed one is returned to be kept open.
async fn open_ws(server: &TestServer, tenant: &str, user: &str) -> anyhow::Result<Option<Raw>> {
    let token = full_token(tenant, user);
    let mut raw = Raw::websocket(server, &format!("/v1/ws?token={token}"), &[]).await?;
    raw.send(Command::Hello {
        version: 1,
        client: "t".into(),
    })
    .await?;
    loop {
        match raw.recv().await?.event {
            Event::Goodbye { .. } => return Ok(None),
            Event::Welcome { .. } => return Ok(Some(raw)),
            _ => {}
        }
    }
}

fn reopened_ws(page: &str) -> f64 {
    metric_sum(
        page,
        "quiver_sessions_reopened_total",
        &[("transport", "websocket")],
    )
}

/// Audit 134, F1: a session refused over its tenant's quota was remembered by the reconnect
/// proxy, so the same user's first admitted session a moment later counted as a reconnect (and
/// refused sessions of any tenant filled the map).
#[tokio::test]
async fn only_admitted_sessions_are_remembered_as_reconnects() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.quotas.tenant.max_sessions = 1).await?;
    let before = reopened_ws(&server.metrics().await?);
    let mut first = open_ws(&server, "acme", "first")
        .await?
        .ok_or_else(|| anyhow::anyhow!("first refused"))?;
    for _ in 0..3 {
        anyhow::ensure!(
            open_ws(&server, "acme", "later").await?.is_none(),
            "over the tenant's quota, yet welcomed"
        );
    }
    first.close().await;
    // The place is freed as the first session closes.
    let deadline = tokio::time::Instant::now() + WAIT;
    let _later = loop {
        if let Some(raw) = open_ws(&server, "acme", "later").await? {
            break raw;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let page = server.metrics().await?;
    assert_eq!(
        reopened_ws(&page) - before,
        0.0,
        "refused sessions counted as the user's earlier sessions"
    );
    Ok(())
}

/// Audit 134, F2: an SSE request refused with 400 (bad or repeated `room`, a bad
/// `Last-Event-ID`) was counted nowhere.
#[tokio::test]
async fn sse_requests_refused_with_400_are_counted() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let refused = |page: &str| {
        metric_sum(
            page,
            "quiver_sessions_refused_total",
            &[("transport", "sse"), ("reason", "bad_request")],
        )
    };
    let before = refused(&server.metrics().await?);
    let t = full_token("acme", "reader");
    let client = reqwest::Client::new();
    let url = |query: &str| format!("http://{}/v1/sse?token={t}{query}", server.http);
    for (query, last_event_id) in [
        ("", None),
        ("&room=a&room=a", None),
        ("&room=bad..name", None),
        ("&room=a", Some("a=x:1")),
        ("&room=a&last_event_id=1&last_event_id=2", None),
    ] {
        let mut request = client.get(url(query));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 400, "{query}");
    }
    let page = server.metrics().await?;
    assert_eq!(refused(&page) - before, 5.0, "{page}");
    Ok(())
}

/// Audit 134, F3: over SSE `quiver_delivery_bytes_total` counted the binary frames (about a
/// quarter of the text events written); `latest` values on a shared connection were counted
/// nowhere.
#[tokio::test]
async fn sse_delivery_bytes_are_the_text_events_written() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.namespaces.push(quiver_server::config::NamespaceConfig {
            name: "game".into(),
            mode: quiver_server::config::DeliveryMode::Latest,
            ..Default::default()
        })
    })
    .await?;
    let t = token("acme", "reader", &["news.>", "game.>"], &[], 3600);
    let mut response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/sse?token={t}&room=news.a&room=game.s",
            server.http
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    // The events read so far, whole: `(name, bytes as written)`.
    let mut events: Vec<(String, usize)> = Vec::new();
    async fn until(
        response: &mut reqwest::Response,
        text: &mut String,
        events: &mut Vec<(String, usize)>,
        name: &str,
        count: usize,
    ) -> anyhow::Result<()> {
        while events.iter().filter(|(n, _)| n == name).count() < count {
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if let Some(first) = block.lines().next() {
                    if let Some(name) = first.strip_prefix("event: ") {
                        events.push((name.to_owned(), block.len()));
                    }
                }
            }
            if events.iter().filter(|(n, _)| n == name).count() >= count {
                break;
            }
            let chunk = tokio::time::timeout(WAIT, response.chunk())
                .await
                .map_err(|_| anyhow::anyhow!("no {name} event"))??
                .ok_or_else(|| anyhow::anyhow!("the response ended"))?;
            text.push_str(std::str::from_utf8(&chunk)?);
        }
        Ok(())
    }
    until(&mut response, &mut text, &mut events, "subscribed", 2).await?;
    let before = metric(&server.metrics().await?, "quiver_delivery_bytes_total");
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    for i in 0..10u8 {
        publisher.publish("news.a", &[i; 32]).await?;
    }
    until(&mut response, &mut text, &mut events, "publication", 10).await?;
    // One `latest` value at a time: each is written before the next is published.
    for i in 1..=3u8 {
        publisher.publish("game.s", &[i; 16]).await?;
        until(
            &mut response,
            &mut text,
            &mut events,
            "latest",
            usize::from(i),
        )
        .await?;
    }
    let written: usize = events
        .iter()
        .filter(|(name, _)| name == "publication" || name == "latest")
        .map(|(_, len)| len)
        .sum();
    let page = server.metrics().await?;
    let counted = metric(&page, "quiver_delivery_bytes_total") - before;
    assert_eq!(
        counted, written as f64,
        "counted {counted}, the events written were {written} bytes"
    );
    Ok(())
}
