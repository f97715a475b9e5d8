//! Calls and hooks when the way to the backend is down or crowded (PROTOCOL.md §11.1–11.2):
//! during a NATS outage a `Call` is `unavailable` and a hook follows its namespace's fail rule,
//! both at once rather than at their deadline, and neither reaches the backend once NATS is
//! back; over HTTP, one tenant at its share of the in-flight pool is refused
//! (`quota_exceeded`) while its own hooks and other tenants' calls and hooks go on, tenants at
//! their share leave a place for light tenants, and calls filling the pool leave the hooks'
//! quarter free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use quiver_client::{token_fixed, CallOptions, Client, ClientError, ErrorCode, SubEvent};
use quiver_server::config::NatsConfig;
use quiver_server::rpc::HookConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::rpc::{
    call_token, cut_off_unanswered_and_unpublished, publish_held_by_its_hook, ACME_KEY,
};
use quiver_tests::*;
use serde_json::{json, Value};

/// What a NATS backend received: subject and body.
type Log = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn hook(namespace: &str, subscribe: bool, publish: bool, fail_open: bool) -> HookConfig {
    HookConfig {
        namespace: namespace.into(),
        subscribe,
        publish,
        // Long, so "well under the deadline" means the answer did not wait for it.
        timeout: Duration::from_secs(6),
        fail_open,
    }
}

async fn connect(server: &TestServer, tenant: &str, user: &str) -> Result<Client> {
    let token = call_token(tenant, user, &["m.>"]);
    Ok(Client::connect(client_config(server, token_fixed(token))).await?)
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Option<ErrorCode>, String) {
    match result {
        Ok(b) => panic!("expected an error, got {b:?}"),
        Err(e) => (e.error_code(), e.to_string()),
    }
}

fn within(timeout: Duration) -> CallOptions {
    CallOptions {
        timeout: Some(timeout),
        ..Default::default()
    }
}

/// A NATS backend for tenant `acme`: logs every request (calls and hooks), echoes calls and
/// allows hooks. Returns once nats-server has processed its subscription.
async fn nats_backend(nats: &NatsServer, log: Log) -> Result<async_nats::Client> {
    let client = async_nats::connect(nats.url()).await?;
    let mut sub = client.subscribe("quiver.acme.>".to_owned()).await?;
    // A request nobody answers: its "no responders" means the subscribe was processed.
    let probe = client
        .request("rpc-test.round-trip".to_owned(), Bytes::new())
        .await;
    assert!(probe.is_err(), "nobody answers the round-trip subject");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            // Requests only: its own answers come back on `quiver.acme.reply.…` too.
            let Some(reply) = msg.reply else { continue };
            log.lock()
                .unwrap()
                .push((msg.subject.to_string(), msg.payload.to_vec()));
            let answer = if msg.subject.contains(".rpc.") {
                msg.payload.clone()
            } else {
                Bytes::from_static(br#"{"allow": true}"#)
            };
            let _ = responder.publish(reply, answer).await;
        }
    });
    Ok(client)
}

/// NATS is killed: a call and two hooked publishes (one namespace failing closed, one open)
/// are answered at once, and when NATS is back the backend never receives any of them.
#[tokio::test]
async fn during_a_nats_outage_calls_and_hooks_fail_at_once_and_never_arrive_later() -> Result<()> {
    let mut nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        c.rpc.hooks = vec![
            hook("order", false, true, false),
            hook("open", false, true, true),
        ];
    })
    .await?;
    let log: Log = Arc::default();
    let before = nats_backend(&nats, log.clone()).await?;
    let client = connect(&server, "acme", "alice").await?;
    // The route works before the outage.
    assert_eq!(
        client
            .call_with("m.charge", "warm-up", within(WAIT))
            .await?,
        &b"warm-up"[..]
    );
    drop(before);

    nats.kill();
    // Quiver's NATS connections see the socket close at once; a second is ample.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deadline = Duration::from_secs(8);
    let started = Instant::now();
    let (c, msg) = code(
        client
            .call_with("m.charge", "stale-call", within(deadline))
            .await,
    );
    assert_eq!(c, Some(ErrorCode::Unavailable), "{msg}");
    assert!(
        started.elapsed() < deadline / 2,
        "answered after {:?}",
        started.elapsed()
    );

    // Fails closed: denied, well within the hook's 6 s.
    let started = Instant::now();
    let (c, msg) = code(client.publish_ack("order.o", "stale-hook-closed").await);
    assert_eq!(c, Some(ErrorCode::PermissionDenied), "{msg}");
    assert!(msg.contains("hook failed closed"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Fails open: allowed by the hook, then refused by the broker, which has no NATS either.
    let started = Instant::now();
    let (c, msg) = code(client.publish_ack("open.o", "stale-hook-open").await);
    assert_eq!(c, Some(ErrorCode::Unavailable), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // NATS comes back, and a backend subscribes at once (before Quiver's calls connection,
    // which backs off between attempts, is back: whatever that connection had kept would be
    // sent then, and seen).
    nats.restart().await?;
    let after_log: Log = Arc::default();
    let _after = nats_backend(&nats, after_log.clone()).await?;
    // Until a fresh call goes through: Quiver's connection is back, and anything it had kept
    // from the outage went out before it.
    let fresh = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client
                .call_with("m.charge", "fresh", within(Duration::from_secs(2)))
                .await
            {
                Ok(answer) => return answer,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .context("no call went through after NATS came back")?;
    assert_eq!(fresh, &b"fresh"[..]);
    // A moment for anything late on the backend's own connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = after_log.lock().unwrap().clone();
    let stale: Vec<_> = seen
        .iter()
        .filter(|(subject, body)| !(subject == "quiver.acme.rpc.m.charge" && body == b"fresh"))
        .map(|(subject, body)| format!("{subject}: {}", String::from_utf8_lossy(body)))
        .collect();
    assert!(
        stale.is_empty(),
        "the backend received requests from the outage: {stale:?}"
    );
    client.close().await;
    Ok(())
}

/// An HTTP backend: `m.slow` answers after 10 s, other calls echo, hooks allow. Counts the
/// slow calls it received, by tenant.
#[derive(Default)]
struct HttpBackend {
    slow: Mutex<Vec<String>>,
    hooks: AtomicUsize,
}

async fn handle(State(backend): State<Arc<HttpBackend>>, Json(envelope): Json<Value>) -> Response {
    match envelope["type"].as_str() {
        Some("call") if envelope["method"] == "m.slow" => {
            let tenant = envelope["tenant"].as_str().unwrap_or_default().to_owned();
            backend.slow.lock().unwrap().push(tenant);
            tokio::time::sleep(Duration::from_secs(10)).await;
            Json(json!({"payload": ""})).into_response()
        }
        Some("call") => Json(json!({"payload": envelope["payload"]})).into_response(),
        _ => {
            backend.hooks.fetch_add(1, Ordering::Relaxed);
            Json(json!({"allow": true})).into_response()
        }
    }
}

impl HttpBackend {
    fn slow_calls(&self) -> usize {
        self.slow.lock().unwrap().len()
    }

    async fn wait_slow_calls(&self, n: usize) -> Result<()> {
        tokio::time::timeout(WAIT, async {
            while self.slow_calls() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .with_context(|| format!("the backend saw {} slow calls, not {n}", self.slow_calls()))
    }
}

/// Starts `n` slow calls on `client` (8 s deadline), in the background; their results.
fn slow_calls(
    client: &Client,
    n: usize,
) -> tokio::task::JoinHandle<Vec<Result<Bytes, ClientError>>> {
    let client = client.clone();
    tokio::spawn(async move {
        let calls = (0..n).map(|_| client.call_with("m.slow", "", within(Duration::from_secs(8))));
        futures::future::join_all(calls).await
    })
}

/// `rpc.http_max_in_flight` = 16 (PROTOCOL.md §11.2): each tenant may have 2 calls and 2
/// hooks out, calls run at most 12 at once, and the last 2 free slots go only to tenants
/// running fewer than 2. One tenant's slow calls beyond its 2 are refused at once and never
/// reach the backend, and its own hooks are still asked; another tenant's call and hooked
/// subscribe/publish go through. Five tenants at their cap leave a place for a sixth tenant's
/// call; once the calls' part is full, a hooked subscribe still goes through (the hooks'
/// quarter) and a call waits.
#[tokio::test]
async fn tenants_at_their_share_leave_other_tenants_and_their_own_hooks_alone() -> Result<()> {
    let backend = Arc::new(HttpBackend::default());
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(handle))
        .with_state(backend.clone());
    let url = quiver_tests::rpc::serve_backend(app).await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.http_max_in_flight = 16;
        c.rpc.max_timeout = Duration::from_secs(10);
        c.rpc.hooks = vec![hook("order", true, true, false)];
    })
    .await?;

    // Two sessions of one tenant ask for 6 slow calls each: 2 reach the backend, 10 are
    // refused at once.
    let evil_a = connect(&server, "evil", "a").await?;
    let evil_b = connect(&server, "evil", "b").await?;
    let started = Instant::now();
    let first = slow_calls(&evil_a, 6);
    let second = slow_calls(&evil_b, 6);
    backend.wait_slow_calls(2).await?;
    // Its calls do not take its hooks' places: the backend decides its hooked subscribe
    // (before, the refusal of an over-share hook failed closed here, or open elsewhere).
    let _evil_sub = evil_a.subscribe("order.e").await?;
    assert_eq!(
        backend.hooks.load(Ordering::Relaxed),
        1,
        "evil's hook asked"
    );
    let victim = connect(&server, "acme", "victim").await?;
    assert_eq!(
        victim.call_with("m.echo", "hi", within(WAIT)).await?,
        &b"hi"[..]
    );
    let _sub = victim.subscribe("order.v").await?;
    victim.publish_ack("order.v", "p").await?;
    assert_eq!(backend.hooks.load(Ordering::Relaxed), 3, "every hook asked");

    // Four more tenants at their cap: with evil's 2, 10 slow calls run, all but the 2 kept
    // for light tenants (before, three tenants at a quarter each filled the calls' part).
    let mut more = Vec::new();
    let mut others = Vec::new();
    for tenant in ["t1", "t2", "t3", "t4"] {
        let client = connect(&server, tenant, "x").await?;
        more.push(slow_calls(&client, 2));
        others.push(client);
    }
    backend.wait_slow_calls(10).await?;
    let light = connect(&server, "light", "l").await?;
    assert_eq!(
        light
            .call_with("m.echo", "hi", within(Duration::from_secs(2)))
            .await?,
        &b"hi"[..],
        "a tenant running nothing gets a place"
    );
    // A fifth tenant's 2 slow calls take the reserve: the calls' part is full.
    let fifth = connect(&server, "t5", "x").await?;
    more.push(slow_calls(&fifth, 2));
    backend.wait_slow_calls(12).await?;
    // The hooks' quarter: a hooked subscribe of yet another tenant is decided, not starved.
    let quiet = connect(&server, "quiet", "q").await?;
    let _sub = quiet.subscribe("order.q").await?;
    // A call waits for a call slot within its deadline.
    let (c, msg) = code(
        quiet
            .call_with("m.echo", "x", within(Duration::from_millis(500)))
            .await,
    );
    assert_eq!(c, Some(ErrorCode::DeadlineExceeded), "{msg}");

    // evil's refusals came at once, with the tenant-share code; only 2 of its 12 went out.
    let mut refused = 0;
    for result in first.await?.into_iter().chain(second.await?) {
        match result {
            Err(e) if e.error_code() == Some(ErrorCode::QuotaExceeded) => refused += 1,
            Err(e) => assert_eq!(e.error_code(), Some(ErrorCode::DeadlineExceeded), "{e}"),
            Ok(b) => panic!("a slow call answered {b:?}"),
        }
    }
    assert_eq!(refused, 10);
    let evil_sent = backend
        .slow
        .lock()
        .unwrap()
        .iter()
        .filter(|t| *t == "evil")
        .count();
    assert_eq!(
        evil_sent, 2,
        "evil's calls beyond its share never reached the backend"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    for task in more {
        task.abort();
    }
    Ok(())
}

/// A tenant's hooks beyond its share wait for a place within their timeout; one that finds
/// none was never asked, and is denied even where the namespace fails open: the tenant's own
/// load is not the backend failing (outside audit: one user's 40 sessions publishing in hooked
/// rooms got past the backend's explicit deny 5 times in 5).
#[tokio::test]
async fn a_hook_that_finds_no_place_is_denied_even_where_hooks_fail_open() -> Result<()> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        // Each tenant runs at most 2 hooks at once.
        c.rpc.http_max_in_flight = 16;
        // Both fail open; `slow` waits longer for its backend than `open` does.
        let hook = |namespace: &str, millis| HookConfig {
            namespace: namespace.into(),
            subscribe: true,
            publish: false,
            timeout: Duration::from_millis(millis),
            fail_open: true,
        };
        c.rpc.hooks = vec![hook("slow", 10_000), hook("open", 500)];
    })
    .await?;
    // Two sessions' hooks run (the backend holds them); a third's waits, and is denied.
    let mut held = Vec::new();
    for user in ["a", "b"] {
        let mut raw = Raw::connect(&server, &full_token("acme", user)).await?;
        raw.send(quiver_proto::Command::Subscribe {
            room: format!("slow.{user}"),
            resume: None,
        })
        .await?;
        held.push(raw);
    }
    let deadline = Instant::now() + WAIT;
    while backend.asked.load(Ordering::SeqCst) < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the two hooks never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = Raw::connect(&server, &full_token("acme", "c")).await?;
    let answer = third
        .request(quiver_proto::Command::Subscribe {
            room: "open.c".into(),
            resume: None,
        })
        .await?;
    match &answer {
        quiver_proto::Event::Error { code, message } => {
            assert_eq!(*code, ErrorCode::PermissionDenied.as_u16(), "{message}");
            assert!(message.contains("hook not asked"), "{message}");
        }
        other => panic!("a hook never asked let the subscribe through: {other:?}"),
    }
    assert_eq!(
        backend.asked.load(Ordering::SeqCst),
        2,
        "the third was never sent"
    );
    // Another tenant's hook is not held up by acme's share.
    backend.gate.add_permits(1000);
    let mut other = Raw::connect(&server, &full_token("globex", "g")).await?;
    let answer = other
        .request(quiver_proto::Command::Subscribe {
            room: "open.g".into(),
            resume: None,
        })
        .await?;
    assert!(
        matches!(answer, quiver_proto::Event::Subscribed { .. }),
        "{answer:?}"
    );
    Ok(())
}

/// A hook that waited for a place and is then sent has its whole timeout for the answer: sent
/// with what was left, it timed out against a backend answering in time and, where hooks fail
/// open, let through what the backend denies (outside audit dgcall 2, G2: one user's 40
/// sessions got 8 denied publications past a backend answering in 0.6 s of a 1 s timeout).
#[tokio::test]
async fn a_hook_sent_late_still_hears_a_timely_deny() -> Result<()> {
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = asked.clone();
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(600)).await;
                Json(json!({"allow": false, "reason": "not for you"}))
            }
        }),
    );
    let url = quiver_tests::rpc::serve_backend(app).await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        // Each tenant runs at most 2 hooks at once.
        c.rpc.http_max_in_flight = 16;
        c.rpc.hooks = vec![HookConfig {
            namespace: "open".into(),
            subscribe: true,
            publish: false,
            timeout: Duration::from_millis(1000),
            fail_open: true,
        }];
    })
    .await?;
    // Four sessions of one tenant subscribe at once: two hooks run, two wait 0.6 s for a place
    // and then need 0.6 s more, past the 1 s counted from the start.
    let mut sessions = Vec::new();
    for user in ["a", "b", "c", "d"] {
        sessions.push(Raw::connect(&server, &full_token("acme", user)).await?);
    }
    let mut ids = Vec::new();
    for (raw, user) in sessions.iter_mut().zip(["a", "b", "c", "d"]) {
        ids.push(
            raw.send(quiver_proto::Command::Subscribe {
                room: format!("open.{user}"),
                resume: None,
            })
            .await?,
        );
    }
    for (raw, id) in sessions.iter_mut().zip(ids) {
        match raw.recv_reply(id).await? {
            quiver_proto::Event::Error { code, message } => {
                assert_eq!(code, ErrorCode::PermissionDenied.as_u16(), "{message}");
                assert!(message.contains("not for you"), "{message}");
            }
            other => {
                panic!("a hook the backend denied in time let the subscribe through: {other:?}")
            }
        }
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4, "every hook was sent");
    Ok(())
}

/// A client that leaves while its publish hook waits does not take it along: what it wrote
/// before leaving is carried out (PROTOCOL.md §5), on WebTransport and WebSocket alike. The
/// first fix for sessions that end during a hook dropped these, and a WebSocket client's last
/// `Publish` before its close was lost (outside regression audit 8, N4).
#[tokio::test]
async fn a_publish_whose_client_left_during_its_hook_is_still_carried_out() -> Result<()> {
    for via in [Via::WebTransport, Via::WebSocket] {
        let (_server, backend, watcher, mut sub, mut publisher) =
            publish_held_by_its_hook(via, &full_token("acme", "gone")).await?;
        publisher.close().await;
        drop(publisher);
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend.gate.add_permits(10);
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(SubEvent::Publication { payload, .. })) => {
                assert_eq!(&payload[..], b"not to be lost", "{via:?}")
            }
            other => panic!("{via:?}: the last publication was lost: {other:?}"),
        }
        watcher.close().await;
    }
    Ok(())
}

/// A session the backend API disconnects while its publish hook waits ends at once, and the
/// backend's later allow publishes nothing (outside regression audit 7, F4: the goodbye came
/// 3 s after the API answered, and the kicked user's publication reached subscribers).
#[tokio::test]
async fn a_publish_whose_session_is_disconnected_during_its_hook_is_not_published() -> Result<()> {
    let (server, backend, watcher, mut sub, mut abuser) =
        publish_held_by_its_hook(Via::WebTransport, &full_token("acme", "abuser")).await?;
    let (status, answer) =
        api_post(&server, "disconnect", ACME_KEY, json!({"user": "abuser"})).await?;
    assert_eq!(
        (status, &answer["disconnected_here"]),
        (200, &json!(1)),
        "{answer}"
    );
    // The goodbye comes while the backend still holds the hook, and the command is not
    // answered.
    let goodbye = cut_off_unanswered_and_unpublished(&mut abuser, &backend, &mut sub).await?;
    assert_eq!(goodbye, quiver_proto::CloseCode::Disconnected.as_u16());
    // Cut off, not decided: counted as such (regression audit 8, N2).
    let page = server.metrics().await?;
    assert_eq!(
        metric(
            &page,
            r#"quiver_hook_decisions_total{hook="publish",outcome="cancelled"}"#
        ),
        1.0,
        "{page}"
    );
    watcher.close().await;
    Ok(())
}

/// Commands sent within the rate while a hook's backend holds the session's `Subscribe` are
/// not refused when the wait ends (PROTOCOL.md §5: metered by arrival, the server's busy time
/// never billed to the client). The adapter stops reading once the session's inbound queue is
/// full, so most of them are read, all at once, after the wait; they were refused 107 and the
/// session closed `rate_abuse` (outside conformance audit 2, N3).
#[tokio::test]
async fn commands_sent_within_the_rate_behind_a_slow_hook_are_not_refused() -> Result<()> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.limits.commands_per_second = 100;
        c.rpc.hooks = vec![HookConfig {
            namespace: "slow".into(),
            subscribe: true,
            publish: false,
            timeout: Duration::from_secs(10),
            fail_open: false,
        }];
    })
    .await?;
    let mut raw = Raw::connect(&server, &full_token("acme", "a")).await?;
    let subscribe = raw
        .send(quiver_proto::Command::Subscribe {
            room: "slow.x".into(),
            resume: None,
        })
        .await?;
    backend.wait_asked().await?;
    // 75 Pings a second for 2.4 s, under the limit of 100: 180 of them, far more than the
    // inbound queue holds, while the hook waits.
    let mut pings = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_micros(13_333));
    for _ in 0..180 {
        ticks.tick().await;
        pings.push(raw.send(quiver_proto::Command::Ping).await?);
    }
    backend.gate.add_permits(1);
    // The first Pings are answered beside the waiting Subscribe (PROTOCOL §5), the rest after
    // it: every reply is gathered, in whatever order.
    let mut replies = std::collections::HashMap::new();
    while replies.len() < pings.len() + 1 {
        let frame = raw.recv().await?;
        replies.insert(frame.id, frame.event);
    }
    let reply = &replies[&subscribe];
    assert!(
        matches!(reply, quiver_proto::Event::Subscribed { .. }),
        "{reply:?}"
    );
    let mut refused = 0;
    for id in pings {
        match &replies[&id] {
            quiver_proto::Event::Pong => {}
            quiver_proto::Event::Error { code, .. } if *code == ErrorCode::RateLimited.as_u16() => {
                refused += 1
            }
            other => anyhow::bail!("ping {id}: {other:?}"),
        }
    }
    assert_eq!(
        refused, 0,
        "pings within the rate refused after the hook's wait"
    );
    Ok(())
}
