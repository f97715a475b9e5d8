//! Helpers for the RPC and hook tests: tokens with a `call` claim, and what a backend sees.

use quiver_server::auth::{sign_hs256, unix_now, Claims};

use crate::SECRET;

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
