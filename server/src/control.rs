//! The cluster's control plane: operator actions that must reach whichever instance holds a
//! session — disconnect a user or a session, revoke a token (`jti`). On one instance they apply
//! locally; with NATS each is published on `quiver.<tenant>.control.{disconnect,revoke}` and
//! every instance (this one included) applies it to its own sessions, so the action takes
//! effect cluster-wide within one NATS round trip. Revocations are also stored in the JetStream
//! key-value bucket `quiver_revoked` (each until its token's expiry), which an instance loads
//! when it starts.

use std::sync::Arc;

use futures::StreamExt;
use quiver_proto::{CloseCode, TenantId};
use tracing::{debug, warn};

use crate::registry::{Kick, Registry, Selector};
use crate::revocation::{self, Revocations};

/// The key-value bucket revocations are kept in, and the longest a revocation is kept (a
/// token's remaining lifetime beyond this is cut to it).
const REVOKED_BUCKET: &str = "quiver_revoked";
pub const MAX_REVOCATION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A revocation as it travels between instances: the `jti`'s key (tenant and digest), and the
/// token's expiry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Revoke {
    key: String,
    until: u64,
}

/// A disconnect as it travels between instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Disconnect {
    pub selector: Selector,
    pub reason: String,
}

pub struct Control {
    registry: Arc<Registry>,
    revocations: Arc<Revocations>,
    nats: Option<async_nats::Client>,
}

/// A NATS connection of its own for the control plane (kept apart from the broker's, so a
/// backlog of publications never delays a disconnect).
pub async fn connect(
    nats: &crate::config::NatsConfig,
) -> Result<async_nats::Client, crate::broker::BrokerError> {
    let options = async_nats::ConnectOptions::new()
        .name("quiver-control")
        .retry_on_initial_connect();
    crate::broker::nats::connect_with(nats, options).await
}

fn subject(tenant: &TenantId) -> String {
    format!("quiver.{tenant}.control.disconnect")
}

impl Control {
    pub fn new(
        registry: Arc<Registry>,
        revocations: Arc<Revocations>,
        nats: Option<async_nats::Client>,
    ) -> Self {
        Self {
            registry,
            revocations,
            nats,
        }
    }

    /// Revokes a token by its `jti` until `until` (its expiry) on every instance, and ends the
    /// sessions using it. Returns how many sessions *this* instance ended.
    pub async fn revoke(&self, tenant: &TenantId, jti: &str, until: u64) -> Result<usize, String> {
        let key = revocation::key(tenant, jti);
        let local = self.apply_revoke(
            &Revoke {
                key: key.clone(),
                until,
            },
            tenant,
            Some(jti),
        );
        if let Some(nats) = &self.nats {
            let body = serde_json::to_vec(&Revoke {
                key: key.clone(),
                until,
            })
            .map_err(|e| e.to_string())?;
            let store = self.store(nats).await?;
            store
                .put(&key, until.to_string().into())
                .await
                .map_err(|e| format!("nats: {e}"))?;
            nats.publish(format!("quiver.{tenant}.control.revoke"), body.into())
                .await
                .map_err(|e| format!("nats: {e}"))?;
            nats.flush().await.map_err(|e| format!("nats: {e}"))?;
        }
        Ok(local)
    }

    /// Records a revocation; with the `jti` at hand, ends the local sessions using it (from
    /// another instance only the digest travels: sessions are matched by it).
    fn apply_revoke(&self, revoke: &Revoke, tenant: &TenantId, jti: Option<&str>) -> usize {
        self.revocations.insert(revoke.key.clone(), revoke.until);
        self.registry.kick(
            &Selector {
                tenant: tenant.to_string(),
                jti_key: Some(revoke.key.clone()),
                ..Selector::default()
            },
            &Kick {
                code: CloseCode::Disconnected,
                reason: format!(
                    "token {} revoked",
                    jti.map_or_else(|| "id".to_owned(), |j| format!("{j:?}"))
                ),
            },
        )
    }

    async fn store(
        &self,
        nats: &async_nats::Client,
    ) -> Result<async_nats::jetstream::kv::Store, String> {
        let js = async_nats::jetstream::new(nats.clone());
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: REVOKED_BUCKET.into(),
            max_age: MAX_REVOCATION,
            history: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("nats: revocation store: {e}"))
    }

    /// Loads the revocations stored by earlier instances.
    async fn load(&self, nats: &async_nats::Client) -> Result<usize, String> {
        let store = self.store(nats).await?;
        let mut keys = store.keys().await.map_err(|e| format!("nats: {e}"))?;
        let mut n = 0;
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = store.get(&key).await {
                if let Some(until) = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    self.revocations.insert(key, until);
                    n += 1;
                }
            }
            if n >= revocation::MAX_ENTRIES {
                break;
            }
        }
        Ok(n)
    }

    /// Applies a disconnect on every instance. Returns how many sessions *this* instance ended
    /// (the others report nothing back). Fails only when NATS cannot take the message.
    pub async fn disconnect(
        &self,
        tenant: &TenantId,
        disconnect: Disconnect,
    ) -> Result<usize, String> {
        let local = self.apply(&disconnect);
        if let Some(nats) = &self.nats {
            let body = serde_json::to_vec(&disconnect).map_err(|e| e.to_string())?;
            nats.publish(subject(tenant), body.into())
                .await
                .map_err(|e| format!("nats: {e}"))?;
            nats.flush().await.map_err(|e| format!("nats: {e}"))?;
        }
        Ok(local)
    }

    fn apply(&self, disconnect: &Disconnect) -> usize {
        self.registry.kick(
            &disconnect.selector,
            &Kick {
                code: CloseCode::Disconnected,
                reason: disconnect.reason.clone(),
            },
        )
    }

    /// Applies the disconnects other instances publish, until shutdown.
    pub async fn listen(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(nats) = self.nats.clone() else {
            return;
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), self.load(&nats)).await {
            Ok(Ok(n)) => debug!(n, "revocations loaded"),
            Ok(Err(e)) => warn!(error = %e, "revocations not loaded"),
            Err(_) => warn!("revocations not loaded: NATS did not answer in 10 s"),
        }
        let mut subscription = match nats.subscribe("quiver.*.control.*").await {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "control plane: cannot subscribe"),
        };
        while let Some(message) = tokio::select! {
            message = subscription.next() => message,
            _ = shutdown.cancelled() => None,
        } {
            // The subject's tenant is the authority: a message cannot reach across tenants.
            let mut parts = message.subject.split('.');
            let (tenant, action) = (parts.nth(1).unwrap_or_default(), parts.nth(1));
            let Ok(tenant_id) = TenantId::parse(tenant) else {
                continue;
            };
            match action {
                Some("disconnect") => {
                    match serde_json::from_slice::<Disconnect>(&message.payload) {
                        Ok(mut d) => {
                            d.selector.tenant = tenant.to_owned();
                            let n = self.apply(&d);
                            debug!(tenant, n, "disconnect from the control plane");
                        }
                        Err(e) => warn!(error = %e, "control plane: malformed disconnect"),
                    }
                }
                Some("revoke") => match serde_json::from_slice::<Revoke>(&message.payload) {
                    // A key for another tenant is ignored: keys start with their tenant.
                    Ok(r) if r.key.starts_with(&format!("{tenant}.")) => {
                        let n = self.apply_revoke(&r, &tenant_id, None);
                        debug!(tenant, n, "revocation from the control plane");
                    }
                    Ok(_) => warn!(tenant, "control plane: revocation for another tenant"),
                    Err(e) => warn!(error = %e, "control plane: malformed revocation"),
                },
                _ => {}
            }
        }
    }
}
