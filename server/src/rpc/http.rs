//! Calls and hooks as HTTP POSTs of a JSON envelope to `rpc.url` (single node, no NATS).
//! Bounded: a pool of idle connections, a server-wide cap on requests in flight, a connect
//! timeout, each request's own deadline, and a cap on the answer's size.
//!
//! The in-flight pool (`rpc.http_max_in_flight`) is shared fairly between tenants, and between
//! calls and hooks: `pool.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use quiver_proto::TenantId;
use serde::Deserialize;

use super::pool::{Kind, Place, Pool};
use super::{
    b64, backend_message, code_for_status, deadline_at, unb64, CallRequest, Caller, Envelope,
    RpcConfig, RpcError, RpcSetupError, DEADLINE,
};

/// Room in an answer besides its payload's base64: the JSON around it, a hook's reason.
const ANSWER_OVERHEAD: usize = 16 * 1024;

/// The longest answer body read from the backend: a payload of `max_payload` in base64 (a third
/// larger) and [`ANSWER_OVERHEAD`]. No longer answer can be used (a longer payload is refused
/// anyway), so none is read further (outside audit: 4 MiB was read of every answer, 1 GiB
/// with every slot busy).
fn max_answer(max_payload: usize) -> usize {
    max_payload.div_ceil(3) * 4 + ANSWER_OVERHEAD
}

/// Tenants whose connections to the backend are kept at once ([`TenantClients`]).
pub const TENANT_POOLS: usize = 8;

/// Connections to the backend, kept per tenant. HTTP/1.1 cannot tell one answer from another:
/// an answer a broken backend sends unasked (a second response on a kept-alive connection,
/// from a timeout middleware, say) is read as the answer to the next request on that
/// connection. Kept per tenant, it can only reach that tenant's own requests (outside audit 29,
/// F1: another tenant's late hook answer allowed a publication the backend denied, with that
/// tenant's payload, and answered another tenant's calls). The [`TENANT_POOLS`] tenants that
/// asked last keep theirs; a tenant beyond them gets a new client (and connections) in the
/// place of the one asked longest ago.
struct TenantClients {
    build: Box<dyn Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync>,
    clients: std::sync::Mutex<Clients>,
}

/// The kept clients, each with the count of uses when its tenant last asked.
#[derive(Default)]
struct Clients {
    kept: Vec<(TenantId, reqwest::Client, u64)>,
    uses: u64,
}

impl Clients {
    /// The tenant's client, if kept, marked as asked now.
    fn known(&mut self, tenant: &TenantId) -> Option<reqwest::Client> {
        self.uses += 1;
        let now = self.uses;
        let entry = self.kept.iter_mut().find(|(t, ..)| t == tenant)?;
        entry.2 = now;
        Some(entry.1.clone())
    }
}

impl TenantClients {
    fn client(&self, tenant: &TenantId) -> Result<reqwest::Client, reqwest::Error> {
        let lock = || self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = lock().known(tenant) {
            return Ok(client);
        }
        // Built outside the lock: other tenants' requests do not wait for it.
        let client = (self.build)()?;
        let mut clients = lock();
        if let Some(theirs) = clients.known(tenant) {
            // Another request of the tenant built one meanwhile: one pool per tenant.
            return Ok(theirs);
        }
        let kept = &mut clients.kept;
        if kept.len() >= TENANT_POOLS {
            // The client asked longest ago goes; requests it has out keep their connections.
            if let Some(oldest) = (0..kept.len()).min_by_key(|&i| kept[i].2) {
                kept.swap_remove(oldest);
            }
        }
        let now = clients.uses;
        clients.kept.push((tenant.clone(), client.clone(), now));
        Ok(client)
    }
}

pub struct HttpRoute {
    clients: TenantClients,
    url: String,
    secret: Option<String>,
    /// Requests in flight or waiting, calls and hooks: `rpc.http_max_in_flight`, shared.
    pool: Arc<Pool>,
    /// The longest answer read ([`max_answer`]).
    max_answer: usize,
}

/// A call's answer: `{"payload": "<base64>"}`; without `payload` it is not one (an empty
/// answer is `""`).
#[derive(Deserialize)]
struct CallAnswer {
    payload: String,
}

impl HttpRoute {
    pub fn new(url: &str, config: &RpcConfig, max_payload: usize) -> Result<Self, RpcSetupError> {
        crate::http_client::ensure_crypto_provider();
        let (connect_timeout, idle) = (config.connect_timeout, config.http_idle_connections);
        let build = move || {
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .pool_max_idle_per_host(idle)
                .pool_idle_timeout(Duration::from_secs(60))
                // A redirect could send the caller's data elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
        };
        // Built once here, so a setting the client refuses fails the start.
        build().map_err(|e| RpcSetupError::Invalid(format!("http client: {e}")))?;
        Ok(Self {
            clients: TenantClients {
                build: Box::new(build),
                clients: std::sync::Mutex::default(),
            },
            url: url.to_owned(),
            secret: config.http_secret.as_ref().map(|s| s.expose().to_owned()),
            pool: Arc::new(Pool::new(config.http_max_in_flight)),
            max_answer: max_answer(max_payload),
        })
    }

    /// A place in the pool for one call of `tenant`, or `OverQuota` at once when the tenant
    /// has its share of calls out. Taken when the session reads the call, before its task
    /// starts, so a session's calls are admitted or refused in the order it sent them.
    pub fn enter_call(&self, tenant: &TenantId) -> Result<Place, RpcError> {
        self.pool.enter(tenant, Kind::Call).ok_or_else(|| {
            RpcError::OverQuota(format!(
                "the tenant already has its share of the server's calls to the backend \
                 ({} in flight or waiting); retry later",
                self.pool.sizes().tenant_cap
            ))
        })
    }

    /// Asks the backend, in the `place` [`HttpRoute::enter_call`] gave.
    pub async fn call(
        &self,
        caller: &Caller,
        req: &CallRequest,
        request_id: &str,
        place: Place,
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
            .post(&caller.tenant, place, Bytes::from(body), req.deadline)
            .await?;
        let answer: CallAnswer = super::json_object(&answer, "call answer")?;
        unb64(&answer.payload)
    }

    pub async fn hook(
        &self,
        tenant: &TenantId,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        // Never refused at once: a hook waits for its place (below).
        let place = self.pool.enter(tenant, Kind::Hook).ok_or_else(|| {
            RpcError::OverQuota("the tenant's hook requests to the backend are all taken".into())
        })?;
        self.post(tenant, place, body, deadline).await
    }

    /// POSTs and reads a 2xx answer's body; any other status is an error with the body as
    /// its message. A call's whole exchange (waiting for a place included) is within
    /// `deadline`; a hook waits for a place within `deadline` and, once sent, has the whole of
    /// it for the answer.
    async fn post(
        &self,
        tenant: &TenantId,
        mut place: Place,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        let started = std::time::Instant::now();
        let kind = place.kind();
        // A request that finds no place before its deadline was never sent: for a hook that
        // is its tenant's share being full (denied, `Rpc::failed`), for a call its deadline.
        let admitted = tokio::time::timeout(deadline, self.pool.run(&mut place)).await;
        if admitted.is_err() {
            return Err(match kind {
                Kind::Hook => RpcError::OverQuota(format!(
                    "the tenant's {} hook requests to the backend were all taken for {} ms",
                    self.pool.sizes().tenant_cap,
                    deadline.as_millis()
                )),
                Kind::Call => RpcError::Deadline(deadline),
            });
        }
        // What the exchange may take. A call: what is left of its deadline, the wait for a
        // place taken out of it (the caller asked for an answer within it). A hook: the whole
        // timeout again. Its wait was the tenant's own load, and a hook sent late with what was
        // left would time out against a backend answering in time and then fail open, letting
        // through what the backend denies (outside audit: one user's 40 sessions publishing got
        // 8 denied values past a backend answering in 0.6 s of a 1 s timeout).
        let left = match kind {
            Kind::Call => deadline.saturating_sub(started.elapsed()),
            Kind::Hook => deadline,
        };
        let deadline_at = deadline_at(SystemTime::now(), left);
        let client = self
            .clients
            .client(tenant)
            .map_err(|e| RpcError::Unavailable(format!("http client: {}", without_url(e))))?;
        // The head must come within `left`; the body within what is left of it once the head
        // came, which is no longer "no answer" (below).
        let ends = tokio::time::Instant::now() + left;
        let exchange = async {
            let mut request = client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(DEADLINE, deadline_at)
                .body(body);
            if let Some(secret) = &self.secret {
                request = request.bearer_auth(secret);
            }
            let sent = tokio::time::timeout_at(ends, request.send())
                .await
                .map_err(|_| RpcError::Deadline(left))?;
            let mut response = sent.map_err(|e| {
                let hyper = hyper_error(&e);
                if let Some(h) = hyper.filter(|h| h.is_parse() || h.is_parse_too_large()) {
                    // The backend answered, with a head that is not HTTP/1.x or is over what
                    // is read of one (100 headers, about 400 KiB: hyper's bounds): a bad
                    // answer, not an absent backend (outside lanes audit 3, F2). In hyper's
                    // words (`invalid HTTP version parsed`, `message head is too large`):
                    // reqwest's own, "error sending request", named no cause, and the request
                    // had been sent (outside audit 79, 5).
                    RpcError::BadAnswer(format!("answer's head unusable: {h}"))
                } else if !e.is_connect() && hyper.is_some_and(ended_mid_exchange) {
                    // The connection was made and then closed or reset before a whole head came
                    // back: maybe inside it (`HTTP/1.1 200 OK` and no more), which hyper does
                    // not tell apart from nothing at all. An answer may have begun, so it is
                    // one cut off (a publish hook refuses rather than fails open to the
                    // original: outside audits 34 F3, 35 F2), not an absent backend.
                    RpcError::AnswerCut(format!(
                        "the backend closed the connection before its answer was whole: {}",
                        without_url(e)
                    ))
                } else if e.is_connect() || !e.is_timeout() {
                    // A connection that failed (refused, reset, DNS, TLS, or not made within
                    // `connect_timeout`): nobody is serving, and the request never left.
                    RpcError::Unavailable(without_url(e))
                } else {
                    RpcError::Deadline(left)
                }
            })?;
            let status = response.status().as_u16();
            // An answer that says it is too long is refused before a byte of it is read, not
            // after waiting out the deadline for bytes that never come.
            // A 2xx that long can only carry a replacement over `max_payload`: a bad answer,
            // which a publish hook refuses rather than fails open to (`Rpc::decide`).
            // A 401 or 403 is the backend's no whatever its body: one too long to read, or cut
            // off, still refuses under either fail rule, as a subscribe hook's deny too (outside
            // audit 38, D1: read as unavailable, a fail-open hook published the original).
            let refusal = |what: &str| {
                matches!(status, 401 | 403).then(|| {
                    RpcError::Backend(
                        code_for_status(status),
                        format!("backend answered {status} ({what})"),
                    )
                })
            };
            let too_long = || {
                let what = format!("answer longer than {} bytes", self.max_answer);
                refusal(&what).unwrap_or(RpcError::BadAnswer(what))
            };
            if response
                .content_length()
                .is_some_and(|n| n > self.max_answer as u64)
            {
                return Err(too_long());
            }
            let body = async {
                let mut answer = BytesMut::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| {
                    // An answer cut off (a 2xx may have carried a replacement): its own error,
                    // so that a publish hook refuses rather than fails open (outside audit 32,
                    // F4).
                    refusal("its body cut off").unwrap_or(RpcError::AnswerCut(without_url(e)))
                })? {
                    if answer.len() + chunk.len() > self.max_answer {
                        return Err(too_long());
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(answer.freeze())
            };
            let answer = match tokio::time::timeout_at(ends, body).await {
                Ok(answer) => answer?,
                // The head came in time, its body did not: the backend answered, and the
                // answer is cut off at the deadline. A 401/403 is its no; a 2xx may have been a
                // replacement or a deny, which a hook refuses rather than fails open (outside
                // audit 129, F3: read as no answer, the unredacted original was published;
                // review 130, R2: a subscribe hook's was still left to the fail rule). Any
                // other status is the failure it says, its body unread, as when it comes whole
                // (review 131, R2: a 503 with a slow body denied under `fail_open`). A call's
                // deadline is its deadline.
                Err(_) => {
                    return Err(refusal("its body late").unwrap_or_else(|| match kind {
                        Kind::Call => RpcError::Deadline(left),
                        Kind::Hook if (200..300).contains(&status) => {
                            RpcError::AnswerLate(format!(
                                "the backend's {status} came in time, its body not within {} ms",
                                left.as_millis()
                            ))
                        }
                        Kind::Hook => RpcError::Backend(
                            code_for_status(status),
                            format!("backend answered {status} (its body late)"),
                        ),
                    }))
                }
            };
            if (200..300).contains(&status) {
                Ok(answer)
            } else {
                // Cleared of the secret before `backend_message` cuts it, so no part of it is
                // left at the cut (`Rpc::scrub` clears the rest later).
                let message = match self.secret.as_deref() {
                    Some(secret) => {
                        let text = String::from_utf8_lossy(&answer).into_owned();
                        match super::scrub_text(text, secret) {
                            Some(text) => backend_message(text.as_bytes(), status),
                            None => format!(
                                "backend answered {status} (its body held rpc.http_secret: withheld)"
                            ),
                        }
                    }
                    None => backend_message(&answer, status),
                };
                Err(RpcError::Backend(code_for_status(status), message))
            }
        };
        exchange.await
    }
}

/// hyper's error behind `e`, if any: what it says of the answer (a head it refused, one cut off).
fn hyper_error(e: &reqwest::Error) -> Option<&hyper::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return Some(hyper);
        }
        source = error.source();
    }
    None
}

/// Whether hyper's `error` is the connection ending during the exchange: closed before a
/// whole answer, or an I/O error on it (a reset).
fn ended_mid_exchange(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>())
}

/// reqwest's message without the URL (it may carry credentials): what reaches clients and logs.
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_answer_is_a_json_object_only() {
        let read = |body: &str| super::super::json_object::<CallAnswer>(body.as_bytes(), "call");
        assert_eq!(
            read(r#"{"payload":"eA=="}"#).map(|a| a.payload),
            Ok("eA==".into())
        );
        // serde reads a struct from an array of its fields too: not an answer here.
        for bad in [r#"["eA=="]"#, "[]", r#""eA==""#] {
            assert!(matches!(read(bad), Err(RpcError::BadAnswer(_))), "{bad}");
        }
    }

    #[test]
    fn each_tenant_has_its_own_pool_and_the_last_eight_keep_theirs() {
        crate::http_client::ensure_crypto_provider();
        let pools = TenantClients {
            build: Box::new(|| reqwest::Client::builder().build()),
            clients: std::sync::Mutex::default(),
        };
        let tenant = |n: usize| TenantId::parse(&format!("t{n}")).expect("a tenant name");
        for n in 0..TENANT_POOLS {
            pools.client(&tenant(n)).expect("a client");
        }
        // t0 asks again: t1 is now the one asked longest ago, and goes for a ninth tenant.
        pools.client(&tenant(0)).expect("a client");
        pools.client(&tenant(TENANT_POOLS)).expect("a client");
        let kept: Vec<String> = pools
            .clients
            .lock()
            .expect("not poisoned")
            .kept
            .iter()
            .map(|(t, ..)| t.to_string())
            .collect();
        assert_eq!(kept.len(), TENANT_POOLS);
        assert!(kept.contains(&"t0".to_string()) && kept.contains(&"t8".to_string()));
        assert!(!kept.contains(&"t1".to_string()), "{kept:?}");
    }

    #[test]
    fn an_answer_is_read_as_far_as_a_usable_one_goes() {
        // 64 KiB of payload is 87,384 characters of base64.
        assert_eq!(max_answer(65_536), 87_384 + ANSWER_OVERHEAD);
        assert_eq!(max_answer(1), 4 + ANSWER_OVERHEAD);
    }
}
