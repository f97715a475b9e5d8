//! The calls of a client that left (PROTOCOL.md §3, §11.1, §11.4): what it wrote before
//! leaving, FIN or close right behind it, is carried out, its `Call`s as much as its other
//! commands, each one audit line and one count, once its connection is closed, which is at
//! once; until `timeouts.reply` after it was found gone, or a close order (an API disconnect),
//! whichever is first: a call still waiting then is dropped, counted `cancelled`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use base64::Engine;
use bytes::Bytes;
use quiver_proto::Command;
use quiver_server::config::ApiKey;
use quiver_tests::rpc::{call_token, serve_backend};
use quiver_tests::*;
use serde_json::{json, Value};

const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

/// Calls the test backend has been asked.
#[derive(Default)]
struct Asked(AtomicUsize);

/// Answers every call: `m.slow` after 1.5 s, `m.slower` after 4 s, the others at once.
async fn answer(
    State(asked): State<Arc<Asked>>,
    axum::Json(envelope): axum::Json<Value>,
) -> axum::Json<Value> {
    asked.0.fetch_add(1, Ordering::SeqCst);
    match envelope["method"].as_str() {
        Some("m.slow") => tokio::time::sleep(Duration::from_millis(1500)).await,
        Some("m.slower") => tokio::time::sleep(Duration::from_secs(4)).await,
        _ => {}
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
        c.api.keys = vec![ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        }];
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

/// A client of user `user` that sends `methods` as calls and leaves right behind them, without
/// reading (over WebSocket a close frame, over WebTransport its control stream's FIN); how long
/// the server took to close its connection then.
async fn call_and_leave(
    via: Via,
    server: &TestServer,
    user: &str,
    methods: &[&str],
) -> anyhow::Result<Duration> {
    let token = call_token("acme", user, &["m.*"]);
    let mut raw = Raw::connect_via(via, server, &token).await?;
    for method in methods {
        raw.send(call(method)).await?;
    }
    let left = Instant::now();
    match via {
        Via::WebSocket => raw.close().await,
        Via::WebTransport => raw.finish_control().await?,
    }
    // Read to the end: over WebSocket the server's close frame and the socket's end, over
    // WebTransport the control stream's end as the connection closes. Nothing else comes (the
    // client sent nothing the server answers before the calls).
    while raw.recv().await.is_ok() {}
    Ok(left.elapsed())
}

/// `quiver_rpc_calls_total{outcome}` now.
async fn counted(server: &TestServer, outcome: &str) -> anyhow::Result<f64> {
    let page = server.metrics().await?;
    Ok(metric_sum(
        &page,
        "quiver_rpc_calls_total",
        &[("outcome", outcome)],
    ))
}

/// `quiver_rpc_calls_total{outcome}`, read until it reaches `want` (bounded): what it read last.
async fn counted_by(server: &TestServer, outcome: &str, want: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = counted(server, outcome).await?;
        if got >= want || Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_sessions_ended(server: &TestServer) {
    let deadline = Instant::now() + WAIT;
    while server.sessions() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.sessions(), 0, "a departed session still open");
}

/// Calls written right before the client left are sent and answered (to nobody), and counted
/// `ok`, a slow one (1.5 s) included, while its connection is closed at once: they were
/// dropped unsent, or cut off as `cancelled`, the moment the server found the client gone
/// (outside audit 95, F1), and then ran with the connection held open (review 99, F4). With
/// `timeouts.reply` at 0.5 s, a departed client's slow call is waited for that long only, and a
/// disconnect of its user cuts a call at once (review 99, F3): dropped then, counted
/// `cancelled`, and the session ends. One test: the counters are the process's.
#[tokio::test]
async fn a_departed_clients_calls_are_carried_out_after_its_close() -> anyhow::Result<()> {
    let (server, asked) = server_and_backend(Duration::from_secs(10)).await?;
    let mut sent = 0;
    for via in [Via::WebSocket, Via::WebTransport] {
        let closed = call_and_leave(via, &server, "leaver", &["m.one", "m.two", "m.slow"]).await?;
        assert!(
            closed < Duration::from_millis(1000),
            "over {via:?}: the connection was held {closed:?} for the calls"
        );
        sent += 3;
        let ok = counted_by(&server, "ok", f64::from(sent)).await?;
        assert_eq!(ok, f64::from(sent), "over {via:?}: calls answered");
        all_sessions_ended(&server).await;
    }
    assert_eq!(
        asked.0.load(Ordering::SeqCst),
        6,
        "calls the backend was asked"
    );
    assert_eq!(counted(&server, "cancelled").await?, 0.0, "calls cut off");

    // A close order for the departed user's session cuts its call short of its 4 s.
    call_and_leave(Via::WebSocket, &server, "kicked", &["m.slower"]).await?;
    let cut = Instant::now();
    let (status, answer) = api_post(&server, "disconnect", ACME, json!({"user": "kicked"})).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(counted_by(&server, "cancelled", 1.0).await?, 1.0);
    all_sessions_ended(&server).await;
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "cut {:?} later",
        cut.elapsed()
    );

    let (server, asked) = server_and_backend(Duration::from_millis(500)).await?;
    call_and_leave(Via::WebSocket, &server, "leaver", &["m.slow"]).await?;
    let cancelled = counted_by(&server, "cancelled", 2.0).await?;
    assert_eq!(cancelled, 2.0, "the slow call, cut off");
    assert_eq!(
        asked.0.load(Ordering::SeqCst),
        1,
        "calls the backend was asked"
    );
    all_sessions_ended(&server).await;
    // Its answer (1 s after the cut) is not counted as well.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(counted(&server, "ok").await?, 6.0, "calls answered");
    Ok(())
}
