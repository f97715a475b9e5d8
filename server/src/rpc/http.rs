//! Calls and hooks as HTTP POSTs of a JSON envelope to `rpc.url` (single node, no NATS).
//! Bounded: a pool of idle connections, a server-wide cap on requests in flight, a connect
//! timeout, each request's own deadline, and a cap on the answer's size.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{
    b64, backend_message, code_for_status, unb64, CallRequest, Caller, Envelope, RpcConfig,
    RpcError, RpcSetupError,
};

/// Largest answer body read from the backend: a reply payload (base64 in JSON grows by a
/// third) stays well under it at the largest `max_payload`.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

pub struct HttpRoute {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
    slots: Arc<Semaphore>,
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
        Ok(Self {
            client,
            url: url.to_owned(),
            secret: config.http_secret.as_ref().map(|s| s.expose().to_owned()),
            slots: Arc::new(Semaphore::new(config.http_max_in_flight)),
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
        let answer = self.post(Bytes::from(body), req.deadline).await?;
        let answer: CallAnswer = serde_json::from_slice(&answer)
            .map_err(|e| RpcError::BadAnswer(format!("call answer: {e}")))?;
        unb64(&answer.payload)
    }

    pub async fn hook(&self, body: Bytes, deadline: Duration) -> Result<Bytes, RpcError> {
        self.post(body, deadline).await
    }

    /// POSTs and reads a 2xx answer's body; any other status is an error with the body as
    /// its message. The whole exchange (waiting for a slot included) is within `deadline`.
    async fn post(&self, body: Bytes, deadline: Duration) -> Result<Bytes, RpcError> {
        let exchange = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| RpcError::Unavailable("shutting down".into()))?;
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(secret) = &self.secret {
                request = request.bearer_auth(secret);
            }
            let mut response = request.send().await.map_err(|e| {
                if e.is_timeout() {
                    RpcError::Deadline(deadline)
                } else {
                    // Refused, reset, DNS, TLS: nobody is serving.
                    RpcError::Unavailable(without_url(e))
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
