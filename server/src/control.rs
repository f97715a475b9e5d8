//! The cluster's control plane: operator actions that must reach whichever instance holds a
//! session — disconnect a user or a session, revoke a token (`jti`). On one instance they apply
//! locally; with NATS each is published on `quiver.<tenant>.control.disconnect` and every
//! instance (this one included) applies it to its own sessions, so the action takes effect
//! cluster-wide within one NATS round trip.

use std::sync::Arc;

use futures::StreamExt;
use quiver_proto::{CloseCode, TenantId};
use tracing::{debug, warn};

use crate::registry::{Kick, Registry, Selector};

/// A disconnect as it travels between instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Disconnect {
    pub selector: Selector,
    pub reason: String,
}

pub struct Control {
    registry: Arc<Registry>,
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
    pub fn new(registry: Arc<Registry>, nats: Option<async_nats::Client>) -> Self {
        Self { registry, nats }
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
        let mut subscription = match nats.subscribe("quiver.*.control.disconnect").await {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "control plane: cannot subscribe"),
        };
        while let Some(message) = tokio::select! {
            message = subscription.next() => message,
            _ = shutdown.cancelled() => None,
        } {
            match serde_json::from_slice::<Disconnect>(&message.payload) {
                // The subject's tenant is the authority: a message cannot reach across tenants.
                Ok(mut d) => {
                    let tenant = message.subject.split('.').nth(1).unwrap_or_default();
                    d.selector.tenant = tenant.to_owned();
                    let n = self.apply(&d);
                    debug!(tenant, n, "disconnect from the control plane");
                }
                Err(e) => warn!(error = %e, "control plane: malformed message"),
            }
        }
    }
}
