//! An example backend for Quiver's calls and hooks (PROTOCOL.md §11), the order-tracking pattern:
//!
//! 1. A client calls `order.place` with `{"item": "...", "qty": N}`.
//! 2. This backend (any instance of it: they share the NATS queue group `orders`) validates the
//!    order, remembers who placed it, and answers `{"order": "o-..."}`.
//! 3. It then publishes the order's status (`placed`, `packed`, `shipped`) to the room
//!    `order.<id>` through Quiver's HTTP API.
//! 4. The namespace `order` has a subscribe hook: only the order's owner may subscribe to its
//!    room; anyone else gets `permission_denied` with this backend's reason.
//!
//! Run Quiver with NATS and `[[rpc.hooks]] namespace = "order", subscribe = true`, then this
//! with `--nats`, `--api` (Quiver's HTTP address) and `--token` (a JWT that may publish
//! `order.>` in the tenant).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// The queue group every instance joins: each call and each hook reaches exactly one.
pub const QUEUE: &str = "orders";
/// The statuses an order goes through, one event each.
pub const STATUSES: [&str; 3] = ["placed", "packed", "shipped"];

#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub tenant: String,
    /// Quiver's HTTP address, e.g. `http://127.0.0.1:8080`.
    pub api_url: String,
    /// A JWT allowed to publish `order.>` in `tenant`.
    pub token: String,
    /// Time between two status events.
    pub step: Duration,
}

/// A running backend; dropping it stops it.
pub struct Backend {
    tasks: JoinSet<()>,
}

impl Backend {
    /// Runs until one of its tasks ends (the NATS subscriptions closed).
    pub async fn wait(mut self) {
        self.tasks.join_next().await;
    }
}

#[derive(Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

/// A hook request's envelope (the fields this backend reads).
#[derive(Deserialize)]
struct HookRequest {
    room: String,
    user: String,
}

/// Who placed which order (a real backend keeps this in its database).
type Owners = Arc<Mutex<HashMap<String, String>>>;

pub async fn start(settings: Settings) -> Result<Backend> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let nats = async_nats::connect(&settings.nats_url)
        .await
        .context("connecting to NATS")?;
    let tenant = &settings.tenant;
    let calls = nats
        .queue_subscribe(format!("quiver.{tenant}.rpc.order.place"), QUEUE.into())
        .await?;
    let hooks = nats
        .queue_subscribe(
            format!("quiver.{tenant}.hook.subscribe.order.>"),
            QUEUE.into(),
        )
        .await?;
    // A request nobody answers, on this connection: its "no responders" comes back once
    // nats-server has processed the subscriptions above (`flush` only writes them out), so
    // calls made after `start` returns find this backend.
    let _ = nats
        .request("_order_backend.ready".to_owned(), "".into())
        .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let owners = Owners::default();
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_calls(
        nats.clone(),
        calls,
        owners.clone(),
        http,
        settings.clone(),
    ));
    tasks.spawn(serve_hooks(nats, hooks, owners));
    Ok(Backend { tasks })
}

async fn serve_calls(
    nats: async_nats::Client,
    mut calls: async_nats::Subscriber,
    owners: Owners,
    http: reqwest::Client,
    settings: Settings,
) {
    while let Some(msg) = calls.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let user = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Quiver-User"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let (headers, body) = match serde_json::from_slice::<Order>(&msg.payload) {
            Ok(order) if (1..=100).contains(&order.qty) && !order.item.trim().is_empty() => {
                let id = format!("o-{:08x}", rand::random::<u32>());
                owners.lock().unwrap().insert(id.clone(), user.clone());
                info!(%id, %user, item = %order.item, qty = order.qty, "order placed");
                tokio::spawn(publish_statuses(http.clone(), settings.clone(), id.clone()));
                (HeaderMap::new(), json!({ "order": id }).to_string())
            }
            Ok(_) => error(422, "qty must be 1 to 100 and item not empty"),
            Err(e) => error(400, &format!("expected {{\"item\", \"qty\"}}: {e}")),
        };
        if let Err(e) = nats.publish_with_headers(reply, headers, body.into()).await {
            warn!(error = %e, "reply not sent");
        }
    }
}

/// A failed call: Quiver maps the status to an error code (PROTOCOL.md §11.2).
fn error(status: u16, message: &str) -> (HeaderMap, String) {
    let mut headers = HeaderMap::new();
    headers.insert("Quiver-Status", status.to_string().as_str());
    (headers, message.to_owned())
}

async fn serve_hooks(nats: async_nats::Client, mut hooks: async_nats::Subscriber, owners: Owners) {
    while let Some(msg) = hooks.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = match serde_json::from_slice::<HookRequest>(&msg.payload) {
            Ok(req) => {
                let id = req.room.strip_prefix("order.").unwrap_or_default();
                let owner = owners.lock().unwrap().get(id).cloned();
                if owner.as_deref() == Some(req.user.as_str()) {
                    json!({"allow": true})
                } else {
                    json!({"allow": false, "reason": "only the order's owner may follow it"})
                }
            }
            Err(e) => json!({"allow": false, "reason": format!("bad hook request: {e}")}),
        };
        if let Err(e) = nats.publish(reply, answer.to_string().into()).await {
            warn!(error = %e, "hook answer not sent");
        }
    }
}

/// The order's life, as events in its room, through Quiver's HTTP API. A failed request is
/// retried with the same `Idempotency-Key`, so a status whose answer was lost is not published
/// twice.
async fn publish_statuses(http: reqwest::Client, settings: Settings, id: String) {
    const ATTEMPTS: u32 = 3;
    let url = format!("{}/api/v1/publish/order.{id}", settings.api_url);
    for status in STATUSES {
        tokio::time::sleep(settings.step).await;
        let body = json!({ "order": id, "status": status }).to_string();
        for attempt in 1..=ATTEMPTS {
            let sent = http
                .post(&url)
                .bearer_auth(&settings.token)
                .header("Idempotency-Key", format!("order-{id}-{status}"))
                .body(body.clone())
                .send()
                .await
                .and_then(|r| r.error_for_status());
            match sent {
                Ok(_) => break,
                Err(e) if attempt == ATTEMPTS => {
                    warn!(%id, status, error = %e.without_url(), "status not published");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
            }
        }
    }
}
