//! `Call` and the backend hooks over HTTP (a server without NATS) against a real HTTP test
//! backend: the envelope, status codes, deadlines, a backend that is down, calls in flight,
//! subscribe and publish hooks (allow, deny, replace, timeouts failing closed or open), and
//! proof that a publish hook runs once per publish, never per delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use quiver_client::{token_fixed, Client, ClientError, ErrorCode, SubEvent};
use quiver_proto::{Command, Event};
use quiver_server::rpc::HookConfig;
use quiver_tests::rpc::call_token;
use quiver_tests::*;
use serde_json::{json, Value};

const BACKEND_SECRET: &str = "backend-secret-for-tests";

#[derive(Default)]
struct Backend {
    /// Every envelope received, with its `Authorization` header.
    seen: Mutex<Vec<(Value, String)>>,
    /// Requests by envelope type (`call`, `subscribe`, `publish`).
    counts: Mutex<HashMap<String, usize>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

async fn handle(
    State(backend): State<Arc<Backend>>,
    headers: HeaderMap,
    Json(envelope): Json<Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let kind = envelope["type"].as_str().unwrap_or_default().to_owned();
    backend
        .seen
        .lock()
        .unwrap()
        .push((envelope.clone(), auth.clone()));
    *backend
        .counts
        .lock()
        .unwrap()
        .entry(kind.clone())
        .or_default() += 1;
    let payload = envelope["payload"].as_str().map(unb64).unwrap_or_default();
    let room = envelope["room"].as_str().unwrap_or_default();
    let user = envelope["user"].as_str().unwrap_or_default();
    match kind.as_str() {
        "call" => match envelope["method"].as_str().unwrap_or_default() {
            "order.fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            // A debugging error page that echoes the request's headers.
            "order.echo" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("headers: {auth}"),
            )
                .into_response(),
            // Not JSON this server reads (a lone surrogate), but JSON a client's decoder may.
            "order.echo-surrogate" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    r#"{{"x":"\ud800","error":"\u{:04x}{}"}}"#,
                    BACKEND_SECRET.as_bytes()[0],
                    &BACKEND_SECRET[1..]
                ),
            )
                .into_response(),
            // The same as JSON with the secret's first letter escaped, as some encoders write.
            "order.echo-json" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    r#"{{"error":"\u{:04x}{}"}}"#,
                    BACKEND_SECRET.as_bytes()[0],
                    &BACKEND_SECRET[1..]
                ),
            )
                .into_response(),
            "order.busy" => (StatusCode::SERVICE_UNAVAILABLE, "").into_response(),
            "order.deny" => (StatusCode::FORBIDDEN, "not your order").into_response(),
            // A backend's message with terminal controls in it: a clear screen and a forged line.
            "order.paint" => {
                (StatusCode::FORBIDDEN, "\u{1b}[2J\u{1b}[H\rquiver: OK").into_response()
            }
            "order.invalid" => (StatusCode::UNPROCESSABLE_ENTITY, "bad qty").into_response(),
            "order.slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Json(json!({"payload": b64(b"late")})).into_response()
            }
            // Longer than a drain takes commands (1 s), within the call's deadline.
            "order.wait" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Json(json!({"payload": b64(b"waited")})).into_response()
            }
            // Sent late in a drain's first second, answered past 4 s from the drain's start but
            // within the call's own 4 s deadline.
            "order.wait-long" => {
                tokio::time::sleep(Duration::from_millis(3650)).await;
                Json(json!({"payload": b64(b"waited long")})).into_response()
            }
            "order.huge" => Json(json!({"payload": b64(&vec![0u8; 70_000])})).into_response(),
            // No usable answer is this long: the server stops reading it (not at 4 MiB).
            "order.enormous" => {
                Json(json!({"payload": b64(&vec![0u8; 1_000_000])})).into_response()
            }
            // Says it is 5 GB long, then sends nothing: refused at once, not at the deadline.
            "order.announced" => Response::builder()
                .header("content-length", "5000000000")
                .body(axum::body::Body::from_stream(futures::stream::pending::<
                    Result<Bytes, std::io::Error>,
                >()))
                .expect("a response")
                .into_response(),
            "order.garbled" => "not json".into_response(),
            "order.nopayload" => Json(json!({"x": 1})).into_response(),
            // The payload's place in an array is not an answer (PROTOCOL.md §11.2).
            "order.array" => Json(json!([b64(b"x")])).into_response(),
            _ => {
                Json(json!({"payload": b64(&[b"placed:", &payload[..]].concat())})).into_response()
            }
        },
        "subscribe" if room == "open.forbidden" => {
            (StatusCode::FORBIDDEN, "not for you").into_response()
        }
        "subscribe" if room == "open.busy" => {
            (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response()
        }
        "subscribe" if room.starts_with("open.") => Json(json!({"allow": true})).into_response(),
        "subscribe" if room.starts_with("slow.") || room.starts_with("lax.") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"allow": true})).into_response()
        }
        "subscribe" if room == format!("order.{user}") => {
            Json(json!({"allow": true})).into_response()
        }
        "subscribe" => {
            Json(json!({"allow": false, "reason": "only the order's owner"})).into_response()
        }
        "publish" => match &payload[..] {
            b"bad" => Json(json!({"allow": false, "reason": "no swearing"})).into_response(),
            b"replace-me" => {
                Json(json!({"allow": true, "payload": b64(b"replaced")})).into_response()
            }
            b"forbidden" => (StatusCode::UNAUTHORIZED, "who are you").into_response(),
            b"redact-too-much" => {
                Json(json!({"allow": true, "payload": b64(&vec![b'x'; 70_000])})).into_response()
            }
            // Past what is read of an answer (a usable one is at most about 98 KB).
            b"redact-far-too-much" => {
                Json(json!({"allow": true, "payload": b64(&vec![b'x'; 200_000])})).into_response()
            }
            b"redact-garbled" => {
                Json(json!({"allow": true, "payload": "not base64!"})).into_response()
            }
            b"redact-number" => Json(json!({"allow": true, "payload": 123})).into_response(),
            b"redact-null" => Json(json!({"allow": true, "payload": null})).into_response(),
            // The whole replacement, then the body breaks off before its end.
            b"redact-cut" => Response::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::from_stream(
                    futures::stream::once(async {
                        Ok(Bytes::from(
                            json!({"allow": true, "payload": b64(b"redacted")}).to_string(),
                        ))
                    })
                    .chain(futures::stream::once(async {
                        // After the head and the replacement have gone out.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Err(std::io::Error::other("cut"))
                    })),
                ))
                .expect("a response")
                .into_response(),
            // The secret in the reason with its first letter escaped, as some encoders do.
            b"echo-deny-escaped" => (
                [("content-type", "application/json")],
                format!(
                    r#"{{"allow":false,"reason":"no: \u{:04x}{}"}}"#,
                    BACKEND_SECRET.as_bytes()[0],
                    &BACKEND_SECRET[1..]
                ),
            )
                .into_response(),
            // A deny whose reason echoes the request's headers.
            b"echo-deny" => {
                Json(json!({"allow": false, "reason": format!("no: {auth}")})).into_response()
            }
            _ => Json(json!({"allow": true})).into_response(),
        },
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn start_backend() -> Result<(Arc<Backend>, String)> {
    let backend = Arc::new(Backend::default());
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(handle))
        .with_state(backend.clone());
    let url = quiver_tests::rpc::serve_backend(app).await?;
    Ok((backend, url))
}

fn hook(namespace: &str, subscribe: bool, publish: bool, fail_open: bool) -> HookConfig {
    HookConfig {
        namespace: namespace.into(),
        subscribe,
        publish,
        // Short where the backend is slow on purpose (5 s), generous where it answers at once,
        // so a loaded machine does not turn answers into timeouts.
        timeout: if namespace == "order" {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(300)
        },
        fail_open,
    }
}

async fn server_for(url: &str) -> Result<TestServer> {
    server_for_with(url, |_| {}).await
}

async fn server_for_with(
    url: &str,
    tweak: impl FnOnce(&mut quiver_server::Config),
) -> Result<TestServer> {
    let url = url.to_owned();
    TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.http_secret = Some(BACKEND_SECRET.into());
        c.rpc.timeout = Duration::from_secs(3);
        c.rpc.max_in_flight = 2;
        c.rpc.hooks = vec![
            hook("order", true, true, false),
            hook("slow", true, false, false),
            hook("lax", true, false, true),
        ];
        tweak(c);
    })
    .await
}

async fn connect(server: &TestServer, user: &str) -> Result<Client> {
    let token = call_token("acme", user, &["order.*"]);
    Ok(Client::connect(client_config(server, token_fixed(token))).await?)
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> (Option<ErrorCode>, String) {
    match result {
        Ok(b) => panic!("expected an error, got {b:?}"),
        Err(e) => (e.error_code(), e.to_string()),
    }
}

/// `rpc.url` is the backend whenever it is set, NATS or not: a server scaled out by adding
/// `[nats]` still POSTs its calls and hooks to the backend it names. NATS took precedence, so
/// every hooked publish was refused and every call `unavailable` with `config check` saying OK
/// (outside audit 58, F1).
#[tokio::test]
async fn rpc_url_is_the_backend_with_nats_too() -> Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let (backend, url) = start_backend().await?;
    let clustered = quiver_tests::nats::clustered(&nats);
    let server = server_for_with(&url, |c| clustered(c)).await?;
    let client = connect(&server, "alice").await?;
    let answer = client.call("order.place", &b"one"[..]).await?;
    assert_eq!(answer, &b"placed:one"[..]);
    // The publish hook of `order` is asked over HTTP too.
    client.publish_ack("order.alice", "x").await?;
    let counts = backend.counts.lock().unwrap().clone();
    assert_eq!(counts.get("call"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("publish"), Some(&1), "{counts:?}");
    Ok(())
}

#[tokio::test]
async fn http_calls_carry_the_envelope_and_statuses_map_to_codes() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server = server_for(&url).await?;
    let client = connect(&server, "alice").await?;
    let session = client.welcome().expect("welcomed").session;

    let options = quiver_client::CallOptions {
        idempotency_key: Some("order-77".into()),
        ..Default::default()
    };
    let answer = client
        .call_with("order.place", &b"\x00two widgets"[..], options)
        .await?;
    assert_eq!(answer, &b"placed:\x00two widgets"[..]);
    {
        let seen = backend.seen.lock().unwrap();
        let (envelope, auth) = &seen[0];
        assert_eq!(auth, &format!("Bearer {BACKEND_SECRET}"));
        assert_eq!(envelope["type"], "call");
        assert_eq!(envelope["method"], "order.place");
        assert_eq!(envelope["user"], "alice");
        assert_eq!(envelope["tenant"], "acme");
        assert_eq!(envelope["session"], session.as_str());
        assert_eq!(envelope["idempotency_key"], "order-77");
        assert_eq!(envelope["request_id"].as_str().map(str::len), Some(16));
        assert_eq!(
            unb64(envelope["payload"].as_str().unwrap()),
            b"\x00two widgets"
        );
    }

    for (method, want, text) in [
        ("order.fail", ErrorCode::BackendError, "boom"),
        ("order.busy", ErrorCode::Unavailable, "503"),
        ("order.deny", ErrorCode::PermissionDenied, "not your order"),
        ("order.invalid", ErrorCode::BadRequest, "bad qty"),
        ("order.slow", ErrorCode::DeadlineExceeded, ""),
        ("order.huge", ErrorCode::BackendError, "max_payload"),
        (
            "order.enormous",
            ErrorCode::BackendError,
            "answer longer than",
        ),
        (
            "order.announced",
            ErrorCode::BackendError,
            "answer longer than",
        ),
        ("order.garbled", ErrorCode::BackendError, "call answer"),
        ("order.nopayload", ErrorCode::BackendError, "call answer"),
        ("order.array", ErrorCode::BackendError, "call answer"),
        // Never the backend secret, even when its error page echoes it (outside audit 29, F3).
        (
            "order.echo",
            ErrorCode::BackendError,
            "headers: Bearer [http_secret]",
        ),
        // However the JSON writes it (outside audit 33).
        ("order.echo-json", ErrorCode::BackendError, "withheld"),
        ("order.echo-surrogate", ErrorCode::BackendError, "withheld"),
    ] {
        let (c, msg) = code(client.call(method, "x").await);
        assert_eq!(c, Some(want), "{method}: {msg}");
        assert!(msg.contains(text), "{method}: {msg}");
        assert!(!msg.contains(BACKEND_SECRET), "{method}: {msg}");
    }
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn calls_in_flight_are_bounded_per_session() -> Result<()> {
    let (_backend, url) = start_backend().await?;
    let server = server_for(&url).await?;
    let mut raw = Raw::connect(&server, &call_token("acme", "alice", &["order.*"])).await?;
    let call = |method: &str| Command::Call {
        method: method.into(),
        payload: Bytes::new(),
        timeout_ms: 0,
        idempotency_key: String::new(),
    };
    // Two slow calls fill the session's allowance (max_in_flight = 2); a third is refused
    // at once, and a quick one after them is answered before the slow ones.
    let slow1 = raw.send(call("order.slow")).await?;
    let slow2 = raw.send(call("order.slow")).await?;
    let third = raw.send(call("order.place")).await?;
    let third = raw.recv_reply(third).await?;
    assert!(
        matches!(third, Event::Error { code, .. } if code == ErrorCode::RateLimited.as_u16()),
        "{third:?}"
    );
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let frame = raw.recv().await?;
        if let Event::Error { code, .. } = frame.event {
            assert_eq!(code, ErrorCode::DeadlineExceeded.as_u16());
            answered.push(frame.id);
        }
    }
    answered.sort();
    assert_eq!(answered, vec![slow1, slow2]);
    // Room again.
    match raw.request(call("order.place")).await? {
        Event::Reply { payload } => assert_eq!(payload, &b"placed:"[..]),
        other => panic!("{other:?}"),
    }
    raw.close().await;
    Ok(())
}

/// A tenant's share of the backend's calls (`rpc.http_max_in_flight` / 8) refuses each call
/// past it at once with `quota_exceeded`, in the order they were sent, and a refused call never
/// counts among the session's calls waiting (outside calls audit, F2: with 8 calls sent at
/// once, 3 were refused `rate_limited` for calls that were never sent, and a later call was
/// admitted before an earlier one).
#[tokio::test]
async fn calls_over_the_tenants_share_are_refused_in_order() -> Result<()> {
    let (_backend, url) = start_backend().await?;
    let server = server_for_with(&url, |c| {
        c.rpc.max_in_flight = 4;
        c.rpc.http_max_in_flight = 16;
    })
    .await?;
    let mut raw = Raw::connect(&server, &call_token("acme", "alice", &["order.*"])).await?;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = raw
            .send(Command::Call {
                method: "order.slow".into(),
                payload: Bytes::new(),
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?;
        ids.push(id);
    }
    // The six past the share (2) are refused at once; the first two wait for the backend.
    let mut refused = Vec::new();
    while refused.len() < 6 {
        let frame = raw.recv().await?;
        match frame.event {
            Event::Error { code, .. } if code == ErrorCode::QuotaExceeded.as_u16() => {
                refused.push(frame.id)
            }
            other => panic!("call {} answered {other:?} before the refusals", frame.id),
        }
    }
    assert_eq!(refused, ids[2..], "refused out of order or the wrong ones");
    raw.close().await;
    Ok(())
}

/// A drain waits for the calls in flight: one the backend is carrying out when the drain begins
/// is answered before `Goodbye 3000`, on both transports (PROTOCOL §7: a command unanswered at
/// that goodbye was not carried out; the call used to be dropped with the session, carried out
/// by the backend and never answered). Commands sent while it waits, within the drain's first
/// second, are read and answered too (outside calls audit, F1: they were never read).
#[tokio::test]
async fn a_drain_answers_the_calls_in_flight() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let calls = || backend.counts.lock().unwrap().get("call").copied();
    for via in [Via::WebTransport, Via::WebSocket] {
        // The drain's deadline well past the call's answer (the tests' servers have 2 s).
        let mut server =
            server_for_with(&url, |c| c.timeouts.drain = Duration::from_secs(10)).await?;
        let token = call_token("acme", "alice", &["order.*"]);
        let mut raw = Raw::connect_via(via, &server, &token).await?;
        let before = calls().unwrap_or(0);
        let id = raw
            .send(Command::Call {
                method: "order.wait".into(),
                payload: Bytes::new(),
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while calls().unwrap_or(0) == before {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "never called");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stop = tokio::spawn(async move {
            server.stop().await;
        });
        // Within the second a drain takes commands, while the call still waits (1.5 s).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ping = raw.send(Command::Ping).await?;
        let quick = raw
            .send(Command::Call {
                method: "order.place".into(),
                payload: Bytes::from_static(b"1"),
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?;
        let mut answers = Vec::new();
        loop {
            let frame = raw.recv().await?;
            if matches!(frame.event, Event::Goodbye { .. }) {
                assert!(
                    matches!(frame.event, Event::Goodbye { code: 3000, .. }),
                    "{via:?}: {frame:?}"
                );
                break;
            }
            answers.push(frame);
        }
        let answer = |want: u32| answers.iter().find(|f| f.id == want).map(|f| &f.event);
        assert!(
            matches!(answer(id), Some(Event::Reply { payload }) if payload == &b"waited"[..]),
            "{via:?}: {answers:?}"
        );
        assert!(
            matches!(answer(ping), Some(Event::Pong)),
            "{via:?}: {answers:?}"
        );
        assert!(
            matches!(answer(quick), Some(Event::Reply { payload }) if payload == &b"placed:1"[..]),
            "{via:?}: {answers:?}"
        );
        stop.await?;
    }
    Ok(())
}

/// A call taken in a drain's first second (while another is under way) is answered within its
/// own deadline, then the goodbye (review 89, F9): the session's wait for what is under way was
/// bounded from the drain's start by the longest call deadline (`rpc.max_timeout`, 4 s here),
/// so a call sent 0.65 s into the drain and answered by the backend 3.65 s later was cut off
/// and the session told `3000`, which says it was not carried out, though the backend had carried
/// it out. The bound now counts from the end of the second in which commands are taken, and
/// only the waiting is bounded.
#[tokio::test]
async fn a_call_taken_late_in_a_drain_is_answered_within_its_own_deadline() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let mut server = server_for_with(&url, |c| {
        c.timeouts.drain = Duration::from_secs(10);
        c.timeouts.reply = Duration::from_secs(1);
        c.rpc.timeout = Duration::from_secs(4);
        c.rpc.max_timeout = Duration::from_secs(4);
    })
    .await?;
    let token = call_token("acme", "alice", &["order.*"]);
    let mut raw = Raw::connect_via(Via::WebTransport, &server, &token).await?;
    let call = |method: &str| Command::Call {
        method: method.into(),
        payload: Bytes::new(),
        timeout_ms: 0,
        idempotency_key: String::new(),
    };
    // Under way when the drain begins, so that the drain takes commands (1.5 s).
    let first = raw.send(call("order.wait")).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    // Late in the second a drain takes commands. (Margins of about a third of a second each:
    // taken before that second ends, answered after the old bound at 4 s, before its own
    // deadline at 4.65 s.)
    tokio::time::sleep(Duration::from_millis(650)).await;
    let id = raw.send(call("order.wait-long")).await?;
    let mut frames = Vec::new();
    loop {
        let frame = raw.recv().await?;
        let goodbye = matches!(frame.event, Event::Goodbye { .. });
        frames.push(frame);
        if goodbye {
            break;
        }
    }
    let asked = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(envelope, _)| envelope["method"] == "order.wait-long");
    assert!(
        asked,
        "the call was not taken within the drain's first second (a slow machine, not the \
         regression): {frames:?}"
    );
    assert!(
        matches!(&frames[..], [waited, reply, bye]
            if waited.id == first
                && reply.id == id
                && matches!(&reply.event, Event::Reply { payload } if payload == &b"waited long"[..])
                && matches!(bye.event, Event::Goodbye { code: 3000, .. })),
        "{frames:?}"
    );
    stop.await?;
    Ok(())
}

/// Past a drain's first second, while the session waits for a call, a heartbeat's Pings are
/// still answered (outside audit 116, F7): the session read no command after that second, so
/// a client whose call waited on a slow backend heard no Pong for the call's whole deadline,
/// took the connection for dead, and reported the call lost (outcome unknown) though the
/// backend answered it. A command other than a Ping stops the reading there: it and the Ping
/// behind it go unanswered, and the goodbye says they were not carried out.
#[tokio::test]
async fn a_drain_waiting_for_a_call_answers_pings_after_its_first_second() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let mut server = server_for_with(&url, |c| {
        c.timeouts.drain = Duration::from_secs(10);
        c.rpc.timeout = Duration::from_secs(4);
        c.rpc.max_timeout = Duration::from_secs(4);
    })
    .await?;
    let token = call_token("acme", "alice", &["order.*"]);
    let mut raw = Raw::connect_via(Via::WebTransport, &server, &token).await?;
    // Answered by the backend 3.65 s after it is asked.
    let call = raw
        .send(Command::Call {
            method: "order.wait-long".into(),
            payload: Bytes::new(),
            timeout_ms: 0,
            idempotency_key: String::new(),
        })
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while backend.counts.lock().unwrap().get("call").is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    // Past the second in which the drain takes commands, twice, each Pong awaited.
    let mut pongs = Vec::new();
    for at in [1_400, 2_200] {
        tokio::time::sleep_until(deadline - WAIT + Duration::from_millis(at)).await;
        let ping = raw.send(Command::Ping).await?;
        let frame = tokio::time::timeout(Duration::from_millis(700), raw.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no Pong within 0.7 s of a Ping {at} ms into the drain")
            })??;
        assert!(
            frame.id == ping && matches!(frame.event, Event::Pong),
            "{frame:?}"
        );
        pongs.push(frame.id);
    }
    // Another command stops the reading: neither it nor the Ping behind it is answered.
    let late = raw
        .send(Command::Call {
            method: "order.place".into(),
            payload: Bytes::from_static(b"1"),
            timeout_ms: 0,
            idempotency_key: String::new(),
        })
        .await?;
    let behind = raw.send(Command::Ping).await?;
    let mut frames = Vec::new();
    loop {
        let frame = raw.recv().await?;
        let goodbye = matches!(frame.event, Event::Goodbye { .. });
        frames.push(frame);
        if goodbye {
            break;
        }
    }
    assert!(
        matches!(&frames[..], [reply, bye]
            if reply.id == call
                && matches!(&reply.event, Event::Reply { payload } if payload == &b"waited long"[..])
                && matches!(bye.event, Event::Goodbye { code: 3000, .. })),
        "answered {late} or {behind} after the drain's first second, or the call not: {frames:?}"
    );
    assert_eq!(pongs.len(), 2);
    stop.await?;
    Ok(())
}

#[tokio::test]
async fn a_backend_that_is_down_is_unavailable() -> Result<()> {
    // A port nothing listens on.
    let (_held, port) = quiver_tests::refusing_port()?;
    let server = server_for(&format!("http://127.0.0.1:{port}/rpc")).await?;
    let client = connect(&server, "alice").await?;
    let (c, msg) = code(client.call("order.place", "x").await);
    assert_eq!(c, Some(ErrorCode::Unavailable), "{msg}");
    // The hooks fail closed.
    let (c, msg) = code(client.subscribe("order.alice").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("failed closed"), "{msg}");
    // Rooms without hooks do not ask.
    client.subscribe("chat.lobby").await?;
    client.close().await;
    Ok(())
}

/// A backend that takes no connection (its accept queue full, so the connection's SYNs go
/// unanswered) is `unavailable` once `rpc.connect_timeout` passes, like one that refuses: the
/// request never left, so it is not `deadline_exceeded`.
#[tokio::test]
async fn a_backend_that_takes_no_connection_is_unavailable() -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(0)?;
    let address = listener.local_addr()?;
    // Fills the accept queue (one connection with a backlog of 0); nothing is ever accepted.
    let mut queued = Vec::new();
    for _ in 0..2 {
        if let Ok(Ok(tcp)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            queued.push(tcp);
        }
    }
    let url = format!("http://{address}/rpc");
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.timeout = Duration::from_secs(3);
        c.rpc.connect_timeout = Duration::from_millis(300);
    })
    .await?;
    let client = connect(&server, "alice").await?;
    let (c, msg) = code(client.call("order.place", "x").await);
    assert_eq!(c, Some(ErrorCode::Unavailable), "{msg}");
    client.close().await;
    drop((listener, queued));
    Ok(())
}

#[tokio::test]
async fn subscribe_hooks_allow_deny_and_fail_closed_or_open() -> Result<()> {
    let (backend, url) = start_backend().await?;
    // `order` keeps history and tracks presence, for the reads at the end.
    let server = server_for_with(&url, |c| {
        add_history_namespace(c, "order", 10);
        if let Some(order) = c.namespaces.last_mut() {
            order.presence = true;
        }
    })
    .await?;
    let alice = connect(&server, "alice").await?;

    let _mine = alice.subscribe("order.alice").await?;
    let (c, msg) = code(alice.subscribe("order.bob").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied));
    assert!(msg.contains("only the order's owner"), "{msg}");
    // The backend takes 5 s; the hook allows 300 ms.
    let (c, msg) = code(alice.subscribe("slow.room").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied));
    assert!(msg.contains("failed closed"), "{msg}");
    // The same, in a namespace that fails open.
    let _lax = alice.subscribe("lax.room").await?;
    // No hook in this namespace: the backend is not asked.
    let _chat = alice.subscribe("chat.room").await?;
    {
        let seen = backend.seen.lock().unwrap();
        let rooms: Vec<&str> = seen
            .iter()
            .filter(|(e, _)| e["type"] == "subscribe")
            .map(|(e, _)| e["room"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(rooms, ["order.alice", "order.bob", "slow.room", "lax.room"]);
        assert!(seen
            .iter()
            .all(|(e, _)| e["user"] == "alice" && e["tenant"] == "acme"));
    }
    let page = server.metrics().await?;
    let decided = |outcome| {
        metric_sum(
            &page,
            "quiver_hook_decisions_total",
            &[("hook", "subscribe"), ("outcome", outcome)],
        )
    };
    assert!(decided("allow") >= 1.0 && decided("deny") >= 1.0 && decided("timeout") >= 2.0);
    // Reading a room's members or history is what a subscription would see: the same hook.
    let (c, msg) = code(alice.presence("order.bob").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    let (c, msg) = code(alice.history("order.bob", None, 10).await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("only the order's owner"), "{msg}");
    let asked = |room: &str| {
        let seen = backend.seen.lock().unwrap();
        seen.iter().filter(|(e, _)| e["room"] == room).count()
    };
    assert_eq!(asked("order.bob"), 3, "Subscribe, Presence, History");
    // A namespace without presence or history: `bad_request` at once (its backend would take
    // 5 s and fail closed), without asking the backend about a command that cannot work.
    let (c, msg) = code(alice.presence("slow.room").await);
    assert_eq!(c, Some(ErrorCode::BadRequest), "{msg}");
    let (c, msg) = code(alice.history("slow.room", None, 10).await);
    assert_eq!(c, Some(ErrorCode::BadRequest), "{msg}");
    assert_eq!(asked("slow.room"), 1, "only the Subscribe");
    alice.close().await;
    Ok(())
}

#[tokio::test]
async fn publish_hooks_allow_deny_replace_once_per_publish_never_per_delivery() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server = server_for(&url).await?;
    let alice = connect(&server, "alice").await?;
    // Three subscribers of the room (the hook lets only alice subscribe to order.alice).
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = connect(&server, "alice").await?;
        let s = c.subscribe("order.alice").await?;
        subs.push((c, s));
    }
    let subscribes = backend.counts.lock().unwrap()["subscribe"];
    assert_eq!(subscribes, 3);

    alice.publish_ack("order.alice", "hello").await?;
    let (c, msg) = code(alice.publish_ack("order.alice", "bad").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied));
    assert!(msg.contains("no swearing"), "{msg}");
    alice.publish_ack("order.alice", "replace-me").await?;
    for i in 0..5 {
        alice.publish_ack("order.alice", format!("n{i}")).await?;
    }

    for (_, sub) in &mut subs {
        let mut got = Vec::new();
        while got.len() < 7 {
            match tokio::time::timeout(WAIT, sub.next()).await? {
                Some(SubEvent::Publication { payload, .. }) => got.push(payload),
                Some(_) => {}
                None => anyhow::bail!("subscription ended"),
            }
        }
        let want: Vec<Bytes> = ["hello", "replaced", "n0", "n1", "n2", "n3", "n4"]
            .iter()
            .map(|s| Bytes::from(s.to_string()))
            .collect();
        assert_eq!(got, want);
    }
    // 8 publishes, 3 subscribers, 21 deliveries: 8 hook requests.
    assert_eq!(backend.counts.lock().unwrap()["publish"], 8);
    for (c, _) in subs {
        c.close().await;
    }
    alice.close().await;
    Ok(())
}

/// In a namespace that fails open, a backend that answers 401/403 has still said no, and a
/// replacement too large to publish is not swapped for the original: both refuse. Only a
/// failure to decide (here a 429) is allowed by the fail rule.
#[tokio::test]
async fn fail_open_hooks_keep_the_backends_explicit_no() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server =
        server_for_with(&url, |c| c.rpc.hooks.push(hook("open", true, true, true))).await?;
    let alice = connect(&server, "alice").await?;
    let mut sub = alice.subscribe("open.room").await?;
    let (c, msg) = code(alice.subscribe("open.forbidden").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("not for you"), "{msg}");
    let _busy = alice.subscribe("open.busy").await?;

    let (c, msg) = code(alice.publish_ack("open.room", "forbidden").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("who are you"), "{msg}");
    let (c, msg) = code(alice.publish_ack("open.room", "redact-too-much").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("exceeds max_payload"), "{msg}");
    // So are a replacement too long to be read at all, and one that cannot be decoded (outside
    // audit 29, F2: both were failures, and the namespace failing open published the
    // original, unredacted).
    for (payload, says) in [
        (
            "redact-far-too-much",
            "the hook's answer cannot be read: bad answer from the backend: answer longer than",
        ),
        ("redact-garbled", "the hook's replacement"),
        // Not a string at all (outside audits 31, 32), or cut off after it (outside audit 32).
        ("redact-number", "payload is not a string"),
        ("redact-null", "payload is not a string"),
        ("redact-cut", "the hook's answer cannot be read"),
        // Nor does a deny's reason hand out the backend secret, however it is written
        // (outside audits 31, 32).
        ("echo-deny", "no: Bearer [http_secret]"),
        ("echo-deny-escaped", "no: [http_secret]"),
    ] {
        let (c, msg) = code(alice.publish_ack("open.room", payload).await);
        assert_eq!(c, Some(ErrorCode::PermissionDenied), "{payload}: {msg}");
        assert!(msg.contains(says), "{payload}: {msg}");
        assert!(!msg.contains(BACKEND_SECRET), "{payload}: {msg}");
    }
    alice.publish_ack("open.room", "fine").await?;
    // Neither refused payload reached the room: the first publication is the allowed one.
    match tokio::time::timeout(WAIT, sub.next()).await? {
        Some(SubEvent::Publication { payload, .. }) => assert_eq!(payload, Bytes::from("fine")),
        other => anyhow::bail!("expected the allowed publication, got {other:?}"),
    }
    assert_eq!(backend.counts.lock().unwrap()["publish"], 10);
    let page = server.metrics().await?;
    let decided = |hook, outcome| {
        metric_sum(
            &page,
            "quiver_hook_decisions_total",
            &[("hook", hook), ("outcome", outcome)],
        )
    };
    // Counted as denies (the registry is shared with this file's other tests: at least).
    assert!(decided("subscribe", "deny") >= 1.0, "{page}");
    assert!(decided("publish", "deny") >= 6.0, "{page}");
    alice.close().await;
    Ok(())
}

/// A client's token publishing through the backend API (`POST /api/v1/publish/{room}`) meets
/// the namespace's publish hook as its session would: denied with the backend's reason,
/// replaced, and the hook told the user and `"session": "api"`.
#[tokio::test]
async fn api_publishes_with_a_client_token_ask_the_publish_hook() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server = server_for(&url).await?;
    let alice = connect(&server, "alice").await?;
    let mut sub = alice.subscribe("order.alice").await?;
    let token = call_token("acme", "alice", &["order.*"]);
    let publish = |payload: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/publish/order.alice", server.http))
            .bearer_auth(&token)
            .body(payload)
            .send()
    };
    let denied = publish("bad").await?;
    assert_eq!(denied.status().as_u16(), 403);
    let body: Value = denied.json().await?;
    assert_eq!(body["error"]["code"], "permission_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no swearing")),
        "{body}"
    );
    assert_eq!(publish("replace-me").await?.status().as_u16(), 200);
    assert_eq!(publish("fine").await?.status().as_u16(), 200);
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, sub.next()).await? {
            Some(SubEvent::Publication { payload, .. }) => got.push(payload),
            Some(_) => {}
            None => anyhow::bail!("subscription ended"),
        }
    }
    assert_eq!(got, [Bytes::from("replaced"), Bytes::from("fine")]);
    {
        let seen = backend.seen.lock().unwrap();
        let hooks: Vec<&Value> = seen
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e["type"] == "publish")
            .collect();
        assert_eq!(hooks.len(), 3);
        for envelope in hooks {
            assert_eq!(envelope["user"], "alice");
            assert_eq!(envelope["tenant"], "acme");
            assert_eq!(envelope["session"], "api");
            assert_eq!(envelope["room"], "order.alice");
        }
    }
    alice.close().await;
    Ok(())
}

/// `quiver token --call` mints a token with the claim; `quiver call` prints the answer, and
/// fails with the server's code when the backend refuses.
#[tokio::test]
async fn the_cli_calls_and_reports_refusals() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server = server_for(&url).await?;
    let quiver = quiver_tests::process::binary()?;
    let run = |args: Vec<String>| {
        let quiver = quiver.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(quiver)
                .args(args)
                .env_remove("QUIVER_TOKEN")
                .output()
        })
    };
    let minted = run([
        "token",
        "--tenant",
        "acme",
        "--user",
        "carol",
        "--call",
        "order.*",
        "--jwt-secret",
        SECRET,
    ]
    .map(String::from)
    .to_vec())
    .await??;
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout)?.trim().to_owned();
    let call = |method: &str| {
        [
            "call",
            "--transport",
            "webtransport",
            "--url",
            &server.url(),
            "--cert-hash",
            &hex::encode(server.hash),
            "--token",
            &token,
            method,
            "hello",
        ]
        .map(String::from)
        .to_vec()
    };
    let ok = run(call("order.place")).await??;
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(ok.stdout, b"placed:hello\n");
    assert_eq!(backend.seen.lock().unwrap()[0].0["user"], "carol");
    let refused = run(call("order.deny")).await??;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("permission_denied") && stderr.contains("not your order"),
        "{stderr}"
    );
    // Server and backend text reaches the terminal with its control characters escaped.
    let painted = run(call("order.paint")).await??;
    let stderr = String::from_utf8_lossy(&painted.stderr);
    assert!(!painted.status.success());
    assert!(
        !stderr.contains('\u{1b}') && stderr.contains("\\u{1b}[2J") && stderr.contains("\\r"),
        "{stderr:?}"
    );
    Ok(())
}

/// The audit log: one line per call and per hooked command, with who, what, the outcome and
/// the latency, from a real `quiver serve` process (its stderr), never the payload.
#[tokio::test]
async fn every_call_and_hooked_command_is_one_audit_line() -> Result<()> {
    use std::io::BufRead;
    let (_backend, url) = start_backend().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!("[rpc]\nurl = \"{url}\"\n[[rpc.hooks]]\nnamespace = \"order\"\nsubscribe = true\n"),
    )?;
    let mut cmd = quiver_tests::process::serve_command(dir.path())?;
    cmd.args(["--jwt-secret", SECRET, "--self-signed", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,quiver::audit=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let _child = Kill(child);
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(|l| l.ok())
            .find_map(|l| l.strip_prefix("QUIVER_READY ").map(str::to_owned));
        std::thread::spawn(move || lines.for_each(drop));
        ready
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("quiver exited before it was ready"))?;
    let ready: Value = serde_json::from_str(&ready)?;
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
        {
            sink.lock().unwrap().push(line);
        }
    });
    let port = |field: &str| -> Result<u16> {
        Ok(ready[field]
            .as_str()
            .unwrap_or_default()
            .parse::<std::net::SocketAddr>()?
            .port())
    };
    let hash: [u8; 32] = hex::decode(ready["cert_sha256"].as_str().unwrap_or_default())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad hash"))?;
    let mut config = quiver_client::ClientConfig::new(
        format!("https://127.0.0.1:{}/v1", port("webtransport")?),
        token_fixed(call_token("acme", "alice", &["order.*"])),
    );
    config.trust = quiver_client::Trust::CertHashes(vec![hash]);
    config.transport = quiver_client::Transport::WebTransport;
    let client = Client::connect(config).await?;
    client.call("order.place", "secret-payload-text").await?;
    let _ = client.call("order.fail", "x").await;
    let _ = client.subscribe("order.bob").await;
    // Refused before any backend is asked: an audit line too.
    let _ = client.call("pay.refund", "x").await;
    client.close().await;

    let lines = tokio::time::timeout(WAIT, async {
        loop {
            let audit: Vec<String> = log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("quiver::audit"))
                .cloned()
                .collect();
            if audit.len() >= 4 {
                return audit;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let has = |line: &str, parts: &[&str]| parts.iter().all(|p| line.contains(p));
    let common = [
        "user=\"alice\"",
        "tenant=acme",
        "session=",
        "request_id=",
        "latency_ms=",
    ];
    assert!(
        has(&lines[0], &common)
            && has(
                &lines[0],
                &["kind=\"call\"", "method=order.place", "outcome=\"ok\""]
            ),
        "{}",
        lines[0]
    );
    assert!(
        has(&lines[1], &common)
            && has(
                &lines[1],
                &["method=order.fail", "outcome=\"backend_error\""]
            ),
        "{}",
        lines[1]
    );
    assert!(
        has(&lines[2], &common)
            && has(
                &lines[2],
                &["kind=\"subscribe\"", "room=order.bob", "decision=\"deny\""]
            ),
        "{}",
        lines[2]
    );
    assert!(
        has(
            &lines[3],
            &[
                "kind=\"call\"",
                "user=\"alice\"",
                "method=\"pay.refund\"",
                "outcome=\"permission_denied\""
            ]
        ),
        "{}",
        lines[3]
    );
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|l| !l.contains("secret-payload-text")));
    Ok(())
}

/// `rpc.http_max_in_flight` bounds the server's HTTP requests to the backend: a call that finds
/// no free slot waits within its own deadline, then gets `deadline_exceeded`. (The second
/// caller is of another tenant: one of the same tenant would be refused at once, its tenant
/// being at its share; `rpc_outage_fairness.rs`.)
#[tokio::test]
async fn http_requests_in_flight_are_bounded_server_wide() -> Result<()> {
    let (backend, url) = start_backend().await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.http_max_in_flight = 1;
    })
    .await?;
    let first = connect(&server, "alice").await?;
    let globex = call_token("globex", "bob", &["order.*"]);
    let second = Client::connect(client_config(&server, token_fixed(globex))).await?;
    let slow = tokio::spawn(async move {
        let options = quiver_client::CallOptions {
            timeout: Some(Duration::from_secs(4)),
            ..Default::default()
        };
        first.call_with("order.slow", "x", options).await
    });
    // Until the slow call holds the only slot.
    tokio::time::timeout(WAIT, async {
        while backend
            .counts
            .lock()
            .unwrap()
            .get("call")
            .copied()
            .unwrap_or(0)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let quick = quiver_client::CallOptions {
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let (c, msg) = code(second.call_with("order.place", "y", quick).await);
    assert_eq!(c, Some(ErrorCode::DeadlineExceeded), "{msg}");
    assert_eq!(
        backend.counts.lock().unwrap()["call"],
        1,
        "it never reached the backend"
    );
    let (c, _) = code(slow.await?);
    assert_eq!(c, Some(ErrorCode::DeadlineExceeded));
    // The slot is free again.
    assert_eq!(second.call("order.place", "z").await?, &b"placed:z"[..]);
    Ok(())
}

/// A backend's answer whose head is not usable HTTP (here 150 headers, past the 100 the server
/// reads) is `backend_error`, not `unavailable`: the backend was reached and answered (outside
/// lanes audit 3, F2).
#[tokio::test]
async fn an_answer_whose_head_is_unusable_is_a_backend_error() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let backend = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request is small: one read takes it.
                let mut request = vec![0u8; 64 * 1024];
                let _ = tcp.read(&mut request).await;
                let body = r#"{"payload":""}"#;
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for i in 0..150 {
                    answer.push_str(&format!("X-Filler-{i}: x\r\n"));
                }
                answer.push_str("\r\n");
                answer.push_str(body);
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    let server = server_for(&format!("http://{address}/rpc")).await?;
    let client = connect(&server, "alice").await?;
    let (c, msg) = code(client.call("order.place", "x").await);
    assert_eq!(c, Some(ErrorCode::BackendError), "{msg}");
    // Why, in hyper's words: reqwest's "error sending request" named no cause, and the request
    // had been sent (outside audit 79, 5).
    assert!(
        msg.contains("head unusable") && !msg.contains("error sending request"),
        "{msg}"
    );
    client.close().await;
    backend.abort();
    Ok(())
}

/// A backend that reads each request (one connection each) and answers with the next of
/// `answers` in turn: those bytes, then a close (FIN), or a reset (RST) when its flag says so.
async fn breaking_backend(
    answers: &'static [(&'static [u8], bool)],
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let backend = tokio::spawn(async move {
        for &(head, reset) in answers.iter().cycle() {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = tcp.read(&mut request).await;
                let _ = tcp.write_all(head).await;
                if reset {
                    // Closed with nothing unsent and a zero linger: an RST, not a FIN.
                    let _ = tcp.set_zero_linger();
                    drop(tcp);
                } else {
                    let _ = tcp.shutdown().await;
                }
            });
        }
    });
    Ok((address, backend))
}

/// A backend that takes the request and closes the connection inside its answer's head
/// (`HTTP/1.1 200 OK` and nothing more), before a byte of it, or resets it: the answer may
/// have begun, so a publish hook refuses in a namespace that fails open too (outside audits 34
/// F3, 35 F2: read as no answer, it published the original); a call is `unavailable`.
#[tokio::test]
async fn an_answer_cut_off_inside_its_head_is_never_failed_open() -> Result<()> {
    // In turn: a head begun, nothing, a reset.
    let (address, backend) =
        breaking_backend(&[(b"HTTP/1.1 200 OK\r\n", false), (b"", false), (b"", true)]).await?;
    let server = server_for_with(&format!("http://{address}/rpc"), |c| {
        c.rpc.hooks.push(hook("open", false, true, true))
    })
    .await?;
    let alice = connect(&server, "alice").await?;
    let mut sub = alice.subscribe("open.room").await?;
    for _ in 0..6 {
        let (c, msg) = code(alice.publish_ack("open.room", "secret").await);
        assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
        assert!(msg.contains("the hook's answer cannot be read"), "{msg}");
        let (c, msg) = code(alice.call("order.place", "x").await);
        assert_eq!(c, Some(ErrorCode::Unavailable), "{msg}");
    }
    // Nothing reached the room.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "a refused publication was delivered"
    );
    alice.close().await;
    backend.abort();
    Ok(())
}

/// A 401/403 is the backend's no whatever comes after its head: a body cut off (closed or reset)
/// or one too long to read still refuses, in a namespace that fails open too, a subscribe as
/// well as a publish (outside audit 38, D1: read as unavailable, the fail-open hooks let both
/// through, the original payload published).
#[tokio::test]
async fn a_refusal_whose_body_breaks_off_still_refuses() -> Result<()> {
    // In turn: a body cut off by a close, by a reset, and one far past the read bound.
    let (address, backend) = breaking_backend(&[
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nnot you",
            false,
        ),
        (
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\nnot you",
            true,
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100000000\r\n\r\nnot",
            false,
        ),
    ])
    .await?;
    let server = server_for_with(&format!("http://{address}/rpc"), |c| {
        c.rpc.hooks.push(hook("open", true, true, true))
    })
    .await?;
    let alice = connect(&server, "alice").await?;
    for i in 0..6 {
        let (c, msg) = if i % 2 == 0 {
            code(alice.subscribe("open.room").await)
        } else {
            code(alice.publish_ack("open.other", "secret").await)
        };
        assert_eq!(c, Some(ErrorCode::PermissionDenied), "{i}: {msg}");
        assert!(msg.contains("backend answered 40"), "{i}: {msg}");
    }
    for _ in 0..3 {
        let (c, msg) = code(alice.call("order.place", "x").await);
        assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    }
    alice.close().await;
    backend.abort();
    Ok(())
}

/// A backend that reads each request (one connection each) and answers with the next of
/// `answers` in turn: its head at once, its body `late` later, then a close.
async fn late_body_backend(
    answers: Vec<(String, String)>,
    late: Duration,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let backend = tokio::spawn(async move {
        for (head, body) in answers.into_iter().cycle() {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = tcp.read(&mut request).await;
                let _ = tcp.write_all(head.as_bytes()).await;
                tokio::time::sleep(late).await;
                let _ = tcp.write_all(body.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok((address, backend))
}

/// An answer whose head comes within the hook's timeout and whose body comes after it is an
/// answer, not the backend's silence (outside audit 129, F3: both were "no answer", so a fail-open
/// namespace published the original past a 403 and past a 2xx carrying a redacted replacement):
/// a 403 denies (a subscribe's too), and a 2xx is an answer that came late, which a hook refuses
/// under either fail rule, a subscribe hook's too (review 130, R2: that one was left to the fail
/// rule, and a fail-open namespace let a subscription through its backend's late
/// `{"allow":false}`), counted `timeout`; nothing reaches the room.
#[tokio::test]
async fn an_answer_whose_body_comes_late_is_never_failed_open() -> Result<()> {
    let replacement = format!(r#"{{"allow":true,"payload":"{}"}}"#, b64(b"[redacted]"));
    let head = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    // In turn: a 403 for a publish, a 200 with a replacement for a publish, a 403 for a
    // subscribe, a 200 with a deny for a subscribe. The hooks' timeout is 300 ms; the bodies
    // come a second after their heads.
    let deny = r#"{"allow":false}"#.to_owned();
    let answers = vec![
        (head("403 Forbidden", "not you"), "not you".to_owned()),
        (head("200 OK", &replacement), replacement.clone()),
        (head("403 Forbidden", "not you"), "not you".to_owned()),
        (head("200 OK", &deny), deny.clone()),
        (head("503 Service Unavailable", "busy"), "busy".to_owned()),
    ];
    let (address, backend) = late_body_backend(answers, Duration::from_secs(1)).await?;
    let server = server_for_with(&format!("http://{address}/rpc"), |c| {
        c.rpc.hooks.push(hook("open", false, true, true));
        c.rpc.hooks.push(hook("gate", true, false, true));
    })
    .await?;
    let alice = connect(&server, "alice").await?;
    let mut sub = alice.subscribe("open.room").await?;
    for (i, expected) in [
        "backend answered 403 (its body late)",
        "the hook's answer cannot be read",
    ]
    .into_iter()
    .enumerate()
    {
        let (c, msg) = code(alice.publish_ack("open.room", "secret").await);
        assert_eq!(c, Some(ErrorCode::PermissionDenied), "{i}: {msg}");
        assert!(msg.contains(expected), "{i}: {msg}");
    }
    let (c, msg) = code(alice.subscribe("gate.room").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("backend answered 403"), "{msg}");
    let (c, msg) = code(alice.subscribe("gate.room").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("its body not within"), "{msg}");
    let page = server.metrics().await?;
    for (hook, timeouts) in [("publish", 1.0), ("subscribe", 1.0)] {
        let labels = [("hook", hook), ("outcome", "timeout")];
        let seen = metric_sum(&page, "quiver_hook_decisions_total", &labels);
        assert_eq!(seen, timeouts, "{hook} hooks answered late");
    }
    // Nothing reached the room: not the original, not the replacement.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "a refused publication was delivered"
    );
    // Any other status with a late body is the failure it says (review 131, R2: a 503 denied
    // under either rule): in a namespace that fails open the publication goes through, as it
    // does past a 503 whose body comes whole.
    let published = alice.publish_ack("open.room", "after a 503").await;
    assert!(
        published.is_ok(),
        "a late-bodied 503 in a fail-open namespace: {published:?}"
    );
    assert!(
        tokio::time::timeout(WAIT, sub.next()).await.is_ok(),
        "the publication past the 503 was not delivered"
    );
    alice.close().await;
    backend.abort();
    Ok(())
}

/// A backend that answers every call with its tenant's name and, for tenant `evil`, sends a
/// second answer nobody asked for ("INJECTED") 100 ms later on the same kept-alive connection:
/// a broken backend, or one behind a broken timeout middleware.
async fn double_answering_backend() -> Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/rpc", listener.local_addr()?);
    let answer = |text: &str| {
        let body = json!({ "payload": b64(text.as_bytes()) }).to_string();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, write) = tcp.into_split();
                let write = Arc::new(tokio::sync::Mutex::new(write));
                let mut reader = tokio::io::BufReader::new(read);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end().to_ascii_lowercase();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(n) = line.strip_prefix("content-length:") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let envelope: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let tenant = envelope["tenant"].as_str().unwrap_or_default().to_owned();
                    if write
                        .lock()
                        .await
                        .write_all(answer(&tenant).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if tenant == "evil" {
                        let write = write.clone();
                        let stale = answer("INJECTED");
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = write.lock().await.write_all(stale.as_bytes()).await;
                        });
                    }
                }
            });
        }
    });
    Ok(url)
}

/// An answer a broken backend sends unasked on a kept-alive connection is read as the answer
/// to that connection's next request (HTTP/1.1 cannot tell answers apart): connections are kept
/// per tenant, so it never reaches another tenant (outside audit 29, F1: another tenant's calls
/// got it as their answer, and its hook answers allowed other tenants' denied publications).
#[tokio::test]
async fn an_answer_sent_unasked_never_reaches_another_tenant() -> Result<()> {
    let url = double_answering_backend().await?;
    let server = server_for(&url).await?;
    let session = |tenant: &'static str, user: &'static str| {
        let token = call_token(tenant, user, &["order.*"]);
        let config = client_config(&server, token_fixed(token));
        async move { Client::connect(config).await }
    };
    let calls = |client: Client| async move {
        let mut answers = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        for _ in 0..400 {
            if tokio::time::Instant::now() > until {
                break;
            }
            if let Ok(answer) = client.call("order.look", "x").await {
                answers.push(String::from_utf8_lossy(&answer).into_owned());
            }
        }
        client.close().await;
        answers
    };
    let (evil, victim_a, victim_b) = (
        session("evil", "e").await?,
        session("victim", "a").await?,
        session("victim", "b").await?,
    );
    let (evil, a, b) = tokio::join!(calls(evil), calls(victim_a), calls(victim_b));
    assert!(!evil.is_empty() && a.len() > 10 && b.len() > 10);
    let stray: Vec<&String> = a.iter().chain(&b).filter(|x| *x != "victim").collect();
    assert!(stray.is_empty(), "victim got {stray:?}");
    Ok(())
}
