//! SSE event ids list every history room's position, and a reconnect sends the id back beside
//! the same URL: a request whose reconnect's head could outgrow the 64 KiB the server reads is
//! refused at once with 400, and one that is taken can always come back (PROTOCOL.md §9.3;
//! outside audit 105, F2: the reconnect got 431 and `EventSource` gave up for good).

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use quiver_tests::sse::SseReader;
use quiver_tests::{add_history_namespace, full_token, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most rooms one SSE request may name at the default limits (`min(max_subscriptions,
/// commands_per_second)`).
const MAX_ROOMS: usize = 200;

/// Room `i` of `namespace`, 128 bytes long: the longest room names there are.
fn room(namespace: &str, i: usize) -> String {
    let pad = 128 - namespace.len() - ".".len() - ".000".len();
    format!("{namespace}.{}.{i:03}", "a".repeat(pad))
}

fn query(namespace: &str, rooms: usize, token: &str) -> String {
    let mut pairs: Vec<String> = (0..rooms)
        .map(|i| format!("room={}", room(namespace, i)))
        .collect();
    pairs.push(format!("token={token}"));
    pairs.join("&")
}

/// A cookie the page's site may well have set, sent with every request to the server.
fn cookie() -> String {
    format!("site={}", "c".repeat(8000))
}

async fn history_server() -> Result<TestServer> {
    TestServer::start_with(|c| add_history_namespace(c, "hist", 10)).await
}

/// `GET /v1/sse?{query}` with `headers`, its head written 4 KiB at a time as a slow link
/// delivers it (a head that arrives in one read may pass the server's limit, PROTOCOL.md §9);
/// the status and what came of the answer (its head, and for a refusal its body).
async fn get(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
    tcp.set_nodelay(true)?;
    let mut head = format!(
        "GET /v1/sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\
         Connection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    for chunk in head.as_bytes().chunks(4096) {
        // Refused before its end (431): what the server answered may still be there to read.
        if tcp.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answer = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await?;
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            // A stream's head is all there is to wait for; a refusal ends with its body.
            if n == 0 || (text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n")) {
                return anyhow::Ok(text);
            }
        }
    };
    let text = tokio::time::timeout(WAIT, answer).await??;
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {text:?}"))?;
    Ok((status, text))
}

/// Before the fix: taken (200), and its reconnect got 431.
#[tokio::test]
async fn a_request_whose_reconnect_could_not_be_served_is_refused_at_once() -> Result<()> {
    let server = history_server().await?;
    let token = full_token("acme", "reader");
    let cookie = cookie();
    let (status, answer) = get(
        &server,
        &query("hist", MAX_ROOMS, &token),
        &[("cookie", &cookie)],
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("\"label\":\"bad_request\""), "{answer}");
    assert!(answer.contains("too many history rooms"), "{answer}");
    assert!(answer.contains("65536"), "{answer}");
    // Rooms that keep no history put nothing in an event id: as many, as long, are taken.
    let (status, answer) = get(
        &server,
        &query("live", MAX_ROOMS, &token),
        &[("cookie", &cookie)],
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    Ok(())
}

/// The bound is no guess: with the most history rooms of the longest names a request may
/// have, its reconnect with the last event id is served, with the id as `Last-Event-ID`, and
/// from a new `EventSource` as `last_event_id` in the URL and then `Last-Event-ID` on top.
#[tokio::test]
async fn every_request_taken_can_reconnect_with_its_last_event_id() -> Result<()> {
    let server = history_server().await?;
    let token = full_token("acme", "reader");
    let cookie = cookie();
    // The most rooms taken with this cookie: 1 is, and (the test above) MAX_ROOMS is not.
    let (mut taken, mut refused) = (1, MAX_ROOMS);
    while refused - taken > 1 {
        let mid = (taken + refused) / 2;
        let (status, answer) =
            get(&server, &query("hist", mid, &token), &[("cookie", &cookie)]).await?;
        match status {
            200 => taken = mid,
            400 => refused = mid,
            _ => bail!("{mid} rooms: {answer}"),
        }
    }
    // Not so careful that it refuses what plainly fits: 100 rooms of 128 bytes, at least.
    ensure!(taken >= 100, "only {taken} rooms of 128 bytes taken");

    let query = query("hist", taken, &token);
    let mut sse = SseReader::open(&server, &query, None).await?;
    sse.expect("welcome").await?;
    let mut id = None;
    for _ in 0..taken {
        let subscribed = sse.expect("subscribed").await?;
        id = subscribed.id.or(id);
    }
    let id = id.ok_or_else(|| anyhow::anyhow!("no event id"))?;
    assert_eq!(id.split(',').count(), taken, "every room in the id: {id}");
    drop(sse);

    let (status, answer) = get(
        &server,
        &query,
        &[("cookie", &cookie), ("last-event-id", &id)],
    )
    .await?;
    assert_eq!(status, 200, "reconnect with Last-Event-ID: {answer}");
    let encoded = id
        .replace('=', "%3D")
        .replace(':', "%3A")
        .replace(',', "%2C");
    let (status, answer) = get(
        &server,
        &format!("{query}&last_event_id={encoded}"),
        &[("cookie", &cookie), ("last-event-id", &id)],
    )
    .await?;
    assert_eq!(
        status, 200,
        "reconnect with last_event_id and Last-Event-ID: {answer}"
    );
    Ok(())
}
