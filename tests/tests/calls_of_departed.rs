//! The calls of a client that left (PROTOCOL.md §3, §11.4): what it wrote before leaving, FIN
//! or close right behind it, is carried out for `timeouts.reply` after it was found gone, its
//! `Call`s as much as its other commands, each one audit line and one count; a call still
//! waiting then is dropped, counted `cancelled`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use base64::Engine;
use bytes::Bytes;
use quiver_proto::Command;
use quiver_tests::rpc::{call_token, serve_backend};
use quiver_tests::*;
use serde_json::{json, Value};

/// Calls the test backend has been asked.
#[derive(Default)]
struct Asked(AtomicUsize);

/// Answers every call, `m.slow` after 1.5 s, the others at once.
async fn answer(
    State(asked): State<Arc<Asked>>,
    axum::Json(envelope): axum::Json<Value>,
) -> axum::Json<Value> {
    asked.0.fetch_add(1, Ordering::SeqCst);
    if envelope["method"] == "m.slow" {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let payload = base64::engine::general_purpose::STANDARD.encode(b"done");
    axum::Json(json!({ "payload": payload }))
}

async fn server_and_backend(reply: Duration) -> anyhow::Result<(TestServer, Arc<Asked>)> {
    let asked = Arc::new(Asked::default());
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(answer))
        .with_state(asked.clone());
    let url = serve_backend(app).await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.timeout = Duration::from_secs(5);
        c.timeouts.reply = reply;
    })
    .await?;
    Ok((server, asked))
}

fn call(method: &str) -> Command {
    Command::Call {
        method: method.into(),
        payload: Bytes::from_static(b"x"),
        timeout_ms: 0,
        idempotency_key: String::new(),
    }
}

/// A client that sends `methods` as calls and leaves right behind them, without reading: over
/// WebSocket a close frame, over WebTransport its control stream's FIN.
async fn call_and_leave(via: Via, server: &TestServer, methods: &[&str]) -> anyhow::Result<()> {
    let token = call_token("acme", "leaver", &["m.*"]);
    let mut raw = Raw::connect_via(via, server, &token).await?;
    for method in methods {
        raw.send(call(method)).await?;
    }
    match via {
        Via::WebSocket => raw.close().await,
        Via::WebTransport => raw.finish_control().await?,
    }
    Ok(())
}

/// `quiver_rpc_calls_total{outcome}`, read until it reaches `want` (bounded): what it read last.
async fn calls_counted(server: &TestServer, outcome: &str, want: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = server.metrics().await?;
        let got = metric_sum(&page, "quiver_rpc_calls_total", &[("outcome", outcome)]);
        if got >= want || Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls written right before the client left are sent and answered (to nobody), and counted
/// `ok`, a slow one (1.5 s) included: they were dropped unsent, or cut off as `cancelled`, the
/// moment the server found the client gone (outside audit 95, F1). Then, with `timeouts.reply`
/// at 0.5 s, a departed client's slow call is waited for that long only: dropped then, counted
/// `cancelled`, and the session ends. One test: the counters are the process's.
#[tokio::test]
async fn a_departed_clients_calls_are_carried_out_for_timeouts_reply() -> anyhow::Result<()> {
    let (server, asked) = server_and_backend(Duration::from_secs(10)).await?;
    let mut sent = 0;
    for via in [Via::WebSocket, Via::WebTransport] {
        call_and_leave(via, &server, &["m.one", "m.two", "m.slow"]).await?;
        sent += 3;
        let ok = calls_counted(&server, "ok", f64::from(sent)).await?;
        assert_eq!(ok, f64::from(sent), "over {via:?}: calls answered");
    }
    assert_eq!(
        asked.0.load(Ordering::SeqCst),
        6,
        "calls the backend was asked"
    );
    assert_eq!(
        calls_counted(&server, "cancelled", 0.0).await?,
        0.0,
        "calls cut off"
    );
    all_sessions_ended(&server).await;

    let (server, asked) = server_and_backend(Duration::from_millis(500)).await?;
    call_and_leave(Via::WebSocket, &server, &["m.slow"]).await?;
    let cancelled = calls_counted(&server, "cancelled", 1.0).await?;
    assert_eq!(cancelled, 1.0, "the slow call, cut off");
    assert_eq!(
        asked.0.load(Ordering::SeqCst),
        1,
        "calls the backend was asked"
    );
    all_sessions_ended(&server).await;
    // Its answer (1 s after the cut) is not counted as well.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        calls_counted(&server, "ok", 0.0).await?,
        6.0,
        "calls answered"
    );
    Ok(())
}

async fn all_sessions_ended(server: &TestServer) {
    let deadline = Instant::now() + WAIT;
    while server.sessions() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.sessions(), 0, "a departed session still open");
}
