//! Helpers for the RPC and hook tests: tokens with a `call` claim, and what a backend sees.

use quiver_server::auth::{sign_hs256, unix_now, Claims};

use crate::{client_config, full_token, Raw, TestServer, Via, SECRET, WAIT};

/// A token for `user` in `tenant` allowed every room and the given `call` patterns.
pub fn call_token(tenant: &str, user: &str, call: &[&str]) -> String {
    #[derive(serde::Serialize)]
    struct WithCall {
        #[serde(flatten)]
        claims: Claims,
        call: Vec<String>,
    }
    let claims = Claims {
        sub: user.into(),
        tenant: tenant.into(),
        exp: unix_now() + 3600,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    };
    let with = WithCall {
        claims,
        call: call.iter().map(|s| s.to_string()).collect(),
    };
    sign_hs256(SECRET.as_bytes(), &with).expect("signing works")
}

/// One request as a test backend saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub backend: String,
    pub subject: String,
    pub user: String,
    pub tenant: String,
    pub session: String,
    pub request_id: String,
    pub idempotency_key: String,
    pub payload: Vec<u8>,
}

/// Serves `app` as a test backend on a loopback port; the URL of its `/rpc` route.
pub async fn serve_backend(app: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/rpc", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// A hook backend that allows everything but holds each answer until the test opens its gate
/// (`gate.add_permits`): a backend as slow as a test needs. `asked` counts its requests.
pub struct GatedBackend {
    pub asked: std::sync::atomic::AtomicUsize,
    pub gate: tokio::sync::Semaphore,
}

impl GatedBackend {
    /// Waits (bounded) until the backend has been asked at least once.
    pub async fn wait_asked(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + WAIT;
        while self.asked.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the hook never reached the backend"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Serves a [`GatedBackend`] (closed gate); the URL of its `/rpc` route and the backend.
pub async fn gated_backend() -> anyhow::Result<(String, std::sync::Arc<GatedBackend>)> {
    use std::sync::Arc;
    let backend = Arc::new(GatedBackend {
        asked: std::sync::atomic::AtomicUsize::new(0),
        gate: tokio::sync::Semaphore::new(0),
    });
    let app = axum::Router::new()
        .route(
            "/rpc",
            axum::routing::post(
                |axum::extract::State(b): axum::extract::State<Arc<GatedBackend>>| async move {
                    b.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if let Ok(permit) = b.gate.acquire().await {
                        permit.forget();
                    }
                    axum::Json(serde_json::json!({"allow": true}))
                },
            ),
        )
        .with_state(backend.clone());
    Ok((serve_backend(app).await?, backend))
}

/// API key of tenant `acme` in [`publish_held_by_its_hook`]'s server.
pub const ACME_KEY: &str = "acme-key-0123456789abcdef0123456789ab";

/// What [`publish_held_by_its_hook`] sets up: the server, its backend, the watcher's client
/// and subscription, and the publisher whose `Publish` waits on the hook.
pub type HeldPublish = (
    TestServer,
    std::sync::Arc<GatedBackend>,
    quiver_client::Client,
    quiver_client::Subscription,
    Raw,
);

/// A server whose `hk` rooms have a publish hook the backend holds until the test opens its
/// gate; a watcher subscribed to `hk.room`; a session `user` connected `via` whose `Publish`
/// into it waits on the hook (the backend has it).
pub async fn publish_held_by_its_hook(via: Via, token: &str) -> anyhow::Result<HeldPublish> {
    publish_held_by_its_hook_with(via, token, |_| {}).await
}

/// [`publish_held_by_its_hook`] on a server with its configuration tweaked further.
pub async fn publish_held_by_its_hook_with(
    via: Via,
    token: &str,
    tweak: impl FnOnce(&mut quiver_server::config::Config) + Send + 'static,
) -> anyhow::Result<HeldPublish> {
    let (url, backend) = gated_backend().await?;
    let server = TestServer::start_with(move |c| {
        tweak(c);
        c.rpc.url = Some(url);
        c.api.keys = vec![quiver_server::config::ApiKey {
            key: ACME_KEY.into(),
            tenant: Some("acme".into()),
        }];
        c.rpc.hooks = vec![quiver_server::rpc::HookConfig {
            namespace: "hk".into(),
            subscribe: false,
            publish: true,
            timeout: std::time::Duration::from_secs(10),
            fail_open: false,
        }];
    })
    .await?;
    let watcher = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(full_token("acme", "watcher")),
    ))
    .await?;
    let sub = watcher.subscribe("hk.room").await?;
    let mut publisher = Raw::connect_via(via, &server, token).await?;
    publisher
        .send(quiver_proto::Command::Publish {
            room: "hk.room".into(),
            payload: bytes::Bytes::from_static(b"not to be lost"),
            ack: true,
        })
        .await?;
    anyhow::Context::with_context(backend.wait_asked().await, || format!("{via:?}"))?;
    Ok((server, backend, watcher, sub, publisher))
}

/// The close code of `publisher`'s `Goodbye`, read within 4 s while its held command (from
/// [`publish_held_by_its_hook`]) waits; then the backend is let answer, and nothing reaches
/// `sub` within 1.5 s. A reply to the command fails: the goodbye is its answer (PROTOCOL.md
/// §3; an `Error` would read as the backend's refusal, outside conformance audit 4, C4-2).
pub async fn cut_off_unanswered_and_unpublished(
    publisher: &mut Raw,
    backend: &GatedBackend,
    sub: &mut quiver_client::Subscription,
) -> anyhow::Result<u16> {
    use anyhow::Context;
    use futures::StreamExt;
    let goodbye = tokio::time::timeout(std::time::Duration::from_secs(4), async {
        loop {
            match publisher.recv().await?.event {
                quiver_proto::Event::Goodbye { code, .. } => return anyhow::Ok(code),
                event @ (quiver_proto::Event::Error { .. }
                | quiver_proto::Event::Published { .. }) => {
                    anyhow::bail!("the cut-off command was answered: {event:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .context("no goodbye while the hook waited")??;
    backend.gate.add_permits(10);
    if let Ok(event) =
        tokio::time::timeout(std::time::Duration::from_millis(1_500), sub.next()).await
    {
        anyhow::bail!("the cut-off publication was published: {event:?}");
    }
    Ok(goodbye)
}
