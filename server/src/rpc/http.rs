//! Calls and hooks as HTTP POSTs of a JSON envelope to `rpc.url` (single node, no NATS).
//! Bounded: a pool of idle connections, a server-wide cap on requests in flight, a connect
//! timeout, each request's own deadline, and a cap on the answer's size.
//!
//! The in-flight pool (`rpc.http_max_in_flight`, N) is shared fairly (PROTOCOL.md §11.2): one
//! tenant may have at most a quarter of it (at least 1) in flight or waiting, and one more of
//! its requests is refused at once (`quota_exceeded`), so a tenant with a slow backend method
//! cannot take every slot; and calls may hold at most N less a quarter, so however many
//! tenants call, hooks (which every hooked subscribe and publish waits for) still find a slot.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use quiver_proto::TenantId;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{
    b64, backend_message, code_for_status, deadline_at, unb64, CallRequest, Caller, Envelope,
    RpcConfig, RpcError, RpcSetupError, DEADLINE,
};

/// Largest answer body read from the backend: a reply payload (base64 in JSON grows by a
/// third) stays well under it at the largest `max_payload`.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

pub struct HttpRoute {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
    /// Every request in flight, calls and hooks: `rpc.http_max_in_flight`.
    slots: Semaphore,
    /// Calls only: the pool less the hooks' reserve, taken before `slots`, so calls can never
    /// hold the slots the reserve keeps for hooks.
    call_slots: Semaphore,
    /// Each tenant's requests in flight or waiting for a slot.
    tenants: TenantShares,
}

/// What a request is, for the pool's rules: calls and hooks share it, but not all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Hook,
}

/// How the pool of `max_in_flight` requests is shared: (per-tenant cap, slots calls may hold).
/// A quarter of the pool is each tenant's cap and the hooks' reserve; both at least 1, so a
/// pool of one still serves one request.
fn shares(max_in_flight: usize) -> (usize, usize) {
    let quarter = max_in_flight / 4;
    (quarter.max(1), (max_in_flight - quarter).max(1))
}

/// Per-tenant counts of requests in flight or waiting. An entry exists only while its tenant
/// has a request out (removed when the count falls to zero), so the map holds at most one
/// entry per request in progress, and nothing for tenants that are idle.
struct TenantShares {
    cap: usize,
    counts: Mutex<HashMap<TenantId, usize>>,
}

impl TenantShares {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// One more request for `tenant`, unless it is at its cap. Never waits: a tenant at its
    /// cap is answered at once rather than queued behind its own slow requests.
    fn take(&self, tenant: &TenantId) -> Option<TenantShare<'_>> {
        // The lock is never held across an await, so a poisoned map is still consistent.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(tenant.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(TenantShare {
            shares: self,
            tenant: tenant.clone(),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One request's place in its tenant's share, given back on drop (answered, failed, timed out,
/// or the caller's task aborted).
struct TenantShare<'a> {
    shares: &'a TenantShares,
    tenant: TenantId,
}

impl Drop for TenantShare<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .shares
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// A call's answer: `{"payload": "<base64>"}`; without `payload` it is not one (an empty
/// answer is `""`).
#[derive(Deserialize)]
struct CallAnswer {
    payload: String,
}

impl HttpRoute {
    pub fn new(url: &str, config: &RpcConfig) -> Result<Self, RpcSetupError> {
        crate::http_client::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.http_idle_connections)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect could send the caller's data elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RpcSetupError::Invalid(format!("http client: {e}")))?;
        let (tenant_cap, call_slots) = shares(config.http_max_in_flight);
        Ok(Self {
            client,
            url: url.to_owned(),
            secret: config.http_secret.as_ref().map(|s| s.expose().to_owned()),
            slots: Semaphore::new(config.http_max_in_flight),
            call_slots: Semaphore::new(call_slots),
            tenants: TenantShares::new(tenant_cap),
        })
    }

    pub async fn call(
        &self,
        caller: &Caller,
        req: &CallRequest,
        request_id: &str,
    ) -> Result<Bytes, RpcError> {
        let envelope = Envelope {
            r#type: "call",
            method: Some(req.method.as_str()),
            room: None,
            payload: Some(b64(&req.payload)),
            user: &caller.user,
            tenant: caller.tenant.as_str(),
            session: &caller.session,
            request_id,
            idempotency_key: req.idempotency_key.as_deref(),
        };
        let body = serde_json::to_vec(&envelope)
            .map_err(|e| RpcError::BadAnswer(format!("envelope: {e}")))?;
        let answer = self
            .post(&caller.tenant, Kind::Call, Bytes::from(body), req.deadline)
            .await?;
        let answer: CallAnswer = serde_json::from_slice(&answer)
            .map_err(|e| RpcError::BadAnswer(format!("call answer: {e}")))?;
        unb64(&answer.payload)
    }

    pub async fn hook(
        &self,
        tenant: &TenantId,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        self.post(tenant, Kind::Hook, body, deadline).await
    }

    /// POSTs and reads a 2xx answer's body; any other status is an error with the body as
    /// its message. The whole exchange (waiting for a slot included) is within `deadline`;
    /// a tenant at its share of the pool is refused before waiting at all.
    async fn post(
        &self,
        tenant: &TenantId,
        kind: Kind,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        let Some(_share) = self.tenants.take(tenant) else {
            return Err(RpcError::OverQuota(format!(
                "the tenant already has its share of the server's requests to the backend \
                 ({} in flight or waiting); retry later",
                self.tenants.cap
            )));
        };
        let deadline_at = deadline_at(SystemTime::now(), deadline);
        let exchange = async {
            // Calls take a call slot first, so together they never hold the hooks' reserve.
            let _call_slot = match kind {
                Kind::Call => Some(
                    self.call_slots
                        .acquire()
                        .await
                        .map_err(|_| RpcError::Unavailable("shutting down".into()))?,
                ),
                Kind::Hook => None,
            };
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| RpcError::Unavailable("shutting down".into()))?;
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(DEADLINE, deadline_at)
                .body(body);
            if let Some(secret) = &self.secret {
                request = request.bearer_auth(secret);
            }
            let mut response = request.send().await.map_err(|e| {
                // A connection that failed (refused, reset, DNS, TLS, or not made within
                // `connect_timeout`): nobody is serving, and the request never left.
                if e.is_connect() || !e.is_timeout() {
                    RpcError::Unavailable(without_url(e))
                } else {
                    RpcError::Deadline(deadline)
                }
            })?;
            let status = response.status().as_u16();
            let mut answer = BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| RpcError::Unavailable(without_url(e)))?
            {
                if answer.len() + chunk.len() > MAX_ANSWER {
                    return Err(RpcError::BadAnswer(format!(
                        "answer longer than {MAX_ANSWER} bytes"
                    )));
                }
                answer.extend_from_slice(&chunk);
            }
            if (200..300).contains(&status) {
                Ok(answer.freeze())
            } else {
                Err(RpcError::Backend(
                    code_for_status(status),
                    backend_message(&answer, status),
                ))
            }
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or(Err(RpcError::Deadline(deadline)))
    }
}

/// reqwest's message without the URL (it may carry credentials): what reaches clients and logs.
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_shared_by_quarters() {
        // (per-tenant cap, slots calls may hold)
        assert_eq!(shares(256), (64, 192));
        assert_eq!(shares(16), (4, 12));
        assert_eq!(shares(4), (1, 3));
        assert_eq!(shares(1), (1, 1));
    }

    #[test]
    fn a_tenant_is_capped_and_forgotten_when_idle() {
        let shares = TenantShares::new(2);
        let acme = TenantId::parse("acme").expect("valid");
        let globex = TenantId::parse("globex").expect("valid");
        let a1 = shares.take(&acme).expect("under the cap");
        let a2 = shares.take(&acme).expect("under the cap");
        assert!(shares.take(&acme).is_none(), "at the cap");
        // Another tenant is not affected by acme's share.
        let g1 = shares.take(&globex).expect("own share");
        drop(a1);
        let a3 = shares.take(&acme).expect("room again");
        drop((a2, a3, g1));
        assert_eq!(shares.tracked(), 0, "idle tenants leave no entry");
    }
}
