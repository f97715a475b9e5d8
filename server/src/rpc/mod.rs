//! Commands to the application: `Call` (RPC) and the per-namespace backend hooks (subscribe
//! allow/deny, publish allow/deny/replace). The session core (`session/commands.rs`) asks this
//! module; it reaches the backend one of two ways (PROTOCOL.md §11):
//!
//! - with `rpc.url`, an HTTP POST of a JSON envelope to it (`http.rs`), with or without NATS;
//! - else with NATS, a request to `quiver.<tenant>.rpc.<method>` (hooks:
//!   `quiver.<tenant>.hook.<subscribe|publish>.<room>`), the caller in headers (`nats.rs`).
//!
//! Every call and every hooked command is one structured `tracing` line on the `quiver::audit`
//! target (`audit.rs`). Hooks run once per command, in the session that sent it: never on the
//! fan-out path.

pub mod audit;
mod config;
mod hook;
pub(crate) mod http;
mod nats;
mod pool;
// `pub(crate)` for `crate::fuzzing` only.
pub(crate) mod scrub;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quiver_proto::{ErrorCode, RoomName, TenantId};
use serde::Serialize;

pub use config::{HookConfig, RpcConfig};
use scrub::scrub_text;

/// `d` rounded to the millisecond, for messages: `Debug` then says `1s`, not `999.999209ms`.
fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(((d.as_micros() + 500) / 1000) as u64)
}

/// Metric names (PROTOCOL.md §11): calls by outcome, hook decisions by hook and outcome.
pub const RPC_CALLS: &str = "quiver_rpc_calls_total";
pub const HOOK_DECISIONS: &str = "quiver_hook_decisions_total";

/// Outcomes of a call, as labelled on [`RPC_CALLS`].
const CALL_OUTCOMES: [&str; 8] = [
    "ok",
    "unavailable",
    "over_quota",
    "not_asked",
    "timeout",
    "backend_error",
    "bad_answer",
    "cancelled",
];
/// Outcomes of a hook, as labelled on [`HOOK_DECISIONS`]: decisions, then failures.
const HOOK_OUTCOMES: [&str; 10] = [
    "allow",
    "deny",
    "replace",
    "unavailable",
    "over_quota",
    "not_asked",
    "timeout",
    "backend_error",
    "bad_answer",
    "cancelled",
];

/// Every call and hook series at zero from start-up (`crate::metrics`).
pub(crate) fn register_zeros() {
    for outcome in CALL_OUTCOMES {
        metrics::counter!(RPC_CALLS, "outcome" => outcome).absolute(0);
    }
    for hook in [Hook::Subscribe, Hook::Publish] {
        for outcome in HOOK_OUTCOMES {
            metrics::counter!(HOOK_DECISIONS, "hook" => hook.label(), "outcome" => outcome)
                .absolute(0);
        }
    }
}

/// The HELP text of the call and hook series (`crate::metrics`).
pub(crate) fn describe() {
    metrics::describe_counter!(
        RPC_CALLS,
        "Calls to the application's backend by outcome: ok, unavailable, over_quota, not_asked \
         (never sent: the caller's own request cannot be), timeout, backend_error, bad_answer, \
         cancelled (its session ended while the backend had it)"
    );
    metrics::describe_counter!(
        HOOK_DECISIONS,
        "Backend hook decisions by hook (subscribe, publish) and outcome: allow, deny, replace, \
         or the failure (unavailable, timeout, backend_error, bad_answer) decided by fail_open, \
         or never sent and denied (over_quota, not_asked), or cancelled (the session was ended \
         while it waited)"
    );
}

/// The request header (NATS and HTTP) that says when the caller stops waiting, in milliseconds
/// since the Unix epoch: past it nobody reads the answer, so a backend should drop the request
/// unrun (one written just as a connection dropped can arrive late; PROTOCOL.md §11.2).
pub const DEADLINE: &str = "Quiver-Deadline";

/// The [`DEADLINE`] value for a request sent at `now` that may take `deadline`.
fn deadline_at(now: SystemTime, deadline: Duration) -> String {
    now.checked_add(deadline)
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Whether `value` may go into a backend's request headers (NATS) or envelope unchanged: no
/// line break and no other control character (NUL, VT, U+0085, and the Unicode line and
/// paragraph separators U+2028/U+2029, which some header parsers split on). One rule for
/// both routes, so a value works the same whichever route the server uses.
pub fn header_safe(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}
/// Longest error message taken from a backend, in bytes (longer ones are cut).
const MAX_BACKEND_MESSAGE: usize = 512;

/// Why a call or a hook got no answer it could use. Each maps to one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No backend is listening (NATS no responders, HTTP connection refused, 502/503), or no
    /// route is configured.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The tenant already has its share of the server's requests to the backend out (HTTP
    /// route); not sent.
    #[error("too many requests to the backend: {0}")]
    OverQuota(String),
    /// No answer before the deadline (told to the millisecond: the time left, measured, was
    /// "999.999209ms" for a deadline of 1 s, outside audit 58, F8).
    #[error("no answer from the backend within {:?}", whole_ms(*.0))]
    Deadline(Duration),
    /// The backend answered with an error status: the code it maps to, and its message.
    #[error("{1}")]
    Backend(ErrorCode, String),
    /// Never sent, for the caller's own reason: a value it gave cannot go into the backend's
    /// NATS headers (a user id with a line break, white space at either end), or the request
    /// is over the NATS server's `max_payload`. The code the caller gets (`bad_request`,
    /// `payload_too_large`), and why. Not the backend failing: a hook never sent so is denied
    /// under either fail rule (outside audit 129, F2: such hooks failed open).
    #[error("{1}")]
    NotAsked(ErrorCode, String),
    /// No answer before the deadline while this instance lost replies ([`Lost`]): its answer
    /// may have been among them, or held up behind them. Not "the backend did not answer": a
    /// hook is denied under either fail rule (outside audit 129, F1; review 130, R1). A call
    /// gets `deadline_exceeded`.
    #[error("no answer from the backend within {within:?} {lost}", within = whole_ms(*.0), lost = .1)]
    RepliesDropped(Duration, Lost),
    /// The backend's answer breaks the envelope rules (bad JSON, oversized reply).
    #[error("bad answer from the backend: {0}")]
    BadAnswer(String),
    /// An answer that broke off before its end (HTTP: its body, or its head with the
    /// connection closed after the request): a call may try again (`unavailable`); a publish
    /// hook's may have carried a replacement, so it refuses.
    #[error("backend unavailable: answer cut off: {0}")]
    AnswerCut(String),
    /// A hook's answer whose head came by the deadline and whose body did not (HTTP): the
    /// backend answered, and what it said (a deny, a replacement) is not known. A hook denies
    /// for it under either fail rule; counted `timeout` (review 130, R2).
    #[error("answer late: {0}")]
    AnswerLate(String),
}

/// How a request's answer may have been lost here ([`RpcError::RepliesDropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The request's tenant's reply subscription was full and dropped replies.
    Tenant,
    /// Another reply subscription was full: a flood on the connection every reply comes
    /// through, which may have held the answer up. Told without naming whose (the caller is
    /// not told about other tenants: review 130, R6).
    Others,
    /// The connection the request went out on was lost (nats-server cuts a connection it
    /// cannot write to fast enough) and everything on its way to this instance with it.
    Connection,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lost::Tenant => {
                "while this instance dropped the tenant's replies (its reply subscription was \
                 full): the answer may have been among them"
            }
            Lost::Others => {
                "while this instance dropped replies (a reply subscription was full): the \
                 answer may have been held up here"
            }
            Lost::Connection => {
                "while this instance's NATS connection for replies was lost: the answer may \
                 have been lost with it"
            }
        })
    }
}

impl RpcError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Unavailable(_) | RpcError::AnswerCut(_) => ErrorCode::Unavailable,
            RpcError::OverQuota(_) => ErrorCode::QuotaExceeded,
            RpcError::Deadline(_) | RpcError::RepliesDropped(..) | RpcError::AnswerLate(_) => {
                ErrorCode::DeadlineExceeded
            }
            RpcError::Backend(code, _) | RpcError::NotAsked(code, _) => *code,
            RpcError::BadAnswer(_) => ErrorCode::BackendError,
        }
    }

    /// The backend answered 401/403 (`permission_denied`): for a hook, its own deny rather
    /// than a failure (PROTOCOL.md §11.3).
    fn is_refusal(&self) -> bool {
        matches!(self, RpcError::Backend(ErrorCode::PermissionDenied, _))
    }

    /// A metric and audit label.
    fn label(&self) -> &'static str {
        match self {
            RpcError::Unavailable(_) | RpcError::AnswerCut(_) => "unavailable",
            RpcError::OverQuota(_) => "over_quota",
            RpcError::NotAsked(..) => "not_asked",
            RpcError::Deadline(_) | RpcError::RepliesDropped(..) | RpcError::AnswerLate(_) => {
                "timeout"
            }
            RpcError::Backend(..) => "backend_error",
            RpcError::BadAnswer(_) => "bad_answer",
        }
    }
}

/// The error code a backend's HTTP-style status means (HTTP responses, and the `Quiver-Status`
/// header of a NATS reply). Documented in PROTOCOL.md §11.
pub fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 | 404 | 409 | 422 => ErrorCode::BadRequest,
        401 | 403 => ErrorCode::PermissionDenied,
        408 | 504 => ErrorCode::DeadlineExceeded,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        502 | 503 => ErrorCode::Unavailable,
        _ => ErrorCode::BackendError,
    }
}

/// A backend's error text, made safe for an `Error` frame: valid UTF-8, bounded.
pub(crate) fn backend_message(body: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("backend answered {status}");
    }
    crate::text::prefix(text, MAX_BACKEND_MESSAGE).to_owned()
}

/// Who is calling: what the backend is told about the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub tenant: TenantId,
    pub session: String,
}

/// One `Call`, checked by the session (method name, permission, sizes).
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub method: RoomName,
    pub payload: Bytes,
    pub deadline: Duration,
    pub idempotency_key: Option<String>,
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed with this payload instead of the client's (publish hooks only).
    Replace(Bytes),
    Deny(String),
    /// Denied because the hook could not be decided: no answer in time, a failure status, an
    /// answer that cannot be read, or never sent (the tenant's hooks at their bound, a request
    /// the caller made that cannot be sent), or its answer maybe dropped here. Not the
    /// backend's word: a later request may be allowed (an SSE response refused only so is told
    /// to reconnect later, not to stay away: PROTOCOL §9.3; outside audit 79, 1).
    Undecided(String),
}

impl Decision {
    /// A metric and audit label.
    fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Replace(_) => "replace",
            Decision::Deny(_) | Decision::Undecided(_) => "deny",
        }
    }
}

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Subscribe,
    Publish,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }
}

/// The JSON envelope of a hook (both routes) and of an HTTP call.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    /// `call`, `subscribe` or `publish`.
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    /// Base64 (standard, padded); absent for a subscribe hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    user: &'a str,
    tenant: &'a str,
    session: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

fn b64(payload: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(payload)
}

fn unb64(text: &str) -> Result<Bytes, RpcError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        // Not the decoder's words: they quote a byte of the answer and where it is, and an
        // answer may echo what a client must not see (outside audit 95, F3).
        .map_err(|_| RpcError::BadAnswer("payload is not base64".into()))
}

#[derive(Debug, thiserror::Error)]
pub enum RpcSetupError {
    #[error("rpc: {0}")]
    Invalid(String),
    #[error("rpc: {0}")]
    Nats(#[from] crate::broker::BrokerError),
}

enum Route {
    Nats(nats::NatsRoute),
    Http(http::HttpRoute),
    /// No backend configured: every call is `unavailable`.
    None,
}

/// A call's admission ([`Rpc::admit_call`]): its place in the HTTP route's pool, given back
/// when the call ends; nothing to hold on the other routes.
pub struct Admitted(Option<pool::Place>);

/// The way to the backend, shared by every session.
pub struct Rpc {
    config: RpcConfig,
    route: Route,
    max_payload: usize,
}

impl Rpc {
    /// Connects the route the configuration names: `rpc.url` over HTTP when it is set (with
    /// NATS too: an operator who names a backend means it; NATS took precedence before, and
    /// adding `[nats]` to scale out silently cut an HTTP backend off, outside audit 58, F1),
    /// else NATS when the server has NATS, else none (calls are answered `unavailable`; hooks
    /// need a route).
    pub async fn new(config: &crate::Config) -> Result<Rpc, RpcSetupError> {
        let rpc = config.rpc.clone();
        rpc.validate().map_err(RpcSetupError::Invalid)?;
        let route = match (&rpc.url, &config.nats) {
            (Some(url), _) => Route::Http(http::HttpRoute::new(
                url,
                &rpc,
                config.limits.max_payload as usize,
            )?),
            (None, Some(nats)) => Route::Nats(nats::NatsRoute::connect(nats).await?),
            (None, None) if !rpc.hooks.is_empty() => {
                return Err(RpcSetupError::Invalid(
                    "rpc.hooks need a backend: configure nats or rpc.url".into(),
                ))
            }
            (None, None) => Route::None,
        };
        Ok(Rpc {
            config: rpc,
            route,
            max_payload: config.limits.max_payload as usize,
        })
    }

    /// The deadline of a call asking for `timeout_ms` (0: the default), capped by the maximum.
    pub fn deadline(&self, timeout_ms: u32) -> Duration {
        let asked = if timeout_ms == 0 {
            self.config.timeout
        } else {
            Duration::from_millis(timeout_ms.into())
        };
        asked.min(self.config.max_timeout)
    }

    pub fn max_in_flight(&self) -> usize {
        self.config.max_in_flight
    }

    /// Admits one call of `caller`'s tenant, before its task starts: over HTTP, a place in the
    /// route's pool, or `OverQuota` at once (counted and logged here: never sent, §11.2) when
    /// the tenant has its share of calls out. So a session's calls are admitted in the order
    /// it sent them, and one refused never counts as waiting (outside calls audit, F2: refused
    /// ones counted until their task ran, and later calls got `rate_limited` for them).
    pub fn admit_call(&self, caller: &Caller, method: &str) -> Result<Admitted, RpcError> {
        let Route::Http(http) = &self.route else {
            return Ok(Admitted(None));
        };
        match http.enter_call(&caller.tenant) {
            Ok(place) => Ok(Admitted(Some(place))),
            Err(e) => {
                metrics::counter!(RPC_CALLS, "outcome" => e.label()).increment(1);
                // One of the refusals a client can repeat as fast as its rate allows: logged
                // within their budget like the session's own (outside audit dgcall 2, G3).
                audit::refused_call(caller, method, e.label());
                Err(e)
            }
        }
    }

    /// A call [`Rpc::admit_call`] admitted, to run on the backend and log (audit). Made when
    /// the session takes the `Call`, not when its task first runs: a call whose session ended
    /// before that (closed, expired, kicked) is audited and counted `cancelled` too, where it
    /// left no line (outside audit 95, F1).
    pub fn call(
        self: &std::sync::Arc<Self>,
        caller: Caller,
        req: CallRequest,
        admitted: Admitted,
    ) -> impl std::future::Future<Output = Result<Bytes, RpcError>> + Send + 'static {
        let rpc = self.clone();
        // Dropped before its end, the call was sent, or may have been: the backend may have
        // run it, so it is audited as `cancelled` (outside audit dgcall 2, G3: such calls left
        // no line at all).
        let pending = audit::PendingCall::new(caller, req);
        async move { rpc.run_call(pending, admitted).await }
    }

    async fn run_call(
        &self,
        pending: audit::PendingCall,
        admitted: Admitted,
    ) -> Result<Bytes, RpcError> {
        let (caller, req, request_id) = (&pending.caller, &pending.req, &pending.request_id);
        let result = match &self.route {
            Route::Nats(nats) => nats.call(caller, req, request_id).await,
            Route::Http(http) => match admitted.0 {
                Some(place) => http.call(caller, req, request_id, place).await,
                None => Err(RpcError::Unavailable("call not admitted".into())),
            },
            Route::None => Err(RpcError::Unavailable("no backend configured".into())),
        };
        let result = result.and_then(|payload| {
            if payload.len() > self.max_payload {
                Err(RpcError::BadAnswer(format!(
                    "reply of {} bytes exceeds max_payload {}",
                    payload.len(),
                    self.max_payload
                )))
            } else {
                Ok(payload)
            }
        });
        let result = result.map_err(|e| self.scrub_error(e));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!(RPC_CALLS, "outcome" => outcome).increment(1);
        pending.done(outcome);
        result
    }

    /// The hook settings of a room's namespace, when that hook is on.
    pub fn hook(&self, hook: Hook, room: &RoomName) -> Option<&HookConfig> {
        self.config.hooks.iter().find(|h| {
            h.namespace == room.namespace()
                && match hook {
                    Hook::Subscribe => h.subscribe,
                    Hook::Publish => h.publish,
                }
        })
    }
}

/// A backend's answer read as `T`, from a JSON object only (PROTOCOL.md §11.2, §11.3): serde
/// also reads a struct from an array of its fields in order, and `[true]` was a hook's allow,
/// even where hooks fail closed (outside audit dgcall 2, G1).
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, RpcError> {
    // What was wrong and where, never the value: serde quotes a string it did not expect,
    // re-escaped, which no redaction of the secret can find (outside audit 33, N1b).
    let bad = |e: serde_json::Error| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not the expected JSON",
            serde_json::error::Category::Eof => "JSON cut short",
        };
        RpcError::BadAnswer(format!(
            "{what}: {kind} (line {}, column {}); a JSON object is expected",
            e.line(),
            e.column()
        ))
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(bad)?;
    T::deserialize(serde_json::Value::Object(object)).map_err(bad)
}

/// A request id for the backend's logs and the audit line.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines and latencies are told to the millisecond (outside audit 58, F8: "within
    /// 999.999209ms" for a 1 s deadline, `latency_ms=0.25355799999999995`).
    #[test]
    fn deadlines_and_latencies_are_told_in_whole_units() {
        let late = RpcError::Deadline(Duration::from_nanos(999_999_209));
        assert_eq!(late.to_string(), "no answer from the backend within 1s");
        let late = RpcError::Deadline(Duration::from_micros(1_499_600));
        assert_eq!(late.to_string(), "no answer from the backend within 1.5s");
        assert_eq!(audit::latency_ms(Duration::from_nanos(253_558)), 0.253);
    }

    #[test]
    fn statuses_map_to_documented_codes() {
        assert_eq!(code_for_status(400), ErrorCode::BadRequest);
        assert_eq!(code_for_status(403), ErrorCode::PermissionDenied);
        assert_eq!(code_for_status(504), ErrorCode::DeadlineExceeded);
        assert_eq!(code_for_status(503), ErrorCode::Unavailable);
        assert_eq!(code_for_status(429), ErrorCode::RateLimited);
        assert_eq!(code_for_status(500), ErrorCode::BackendError);
        assert_eq!(code_for_status(418), ErrorCode::BackendError);
    }

    #[test]
    fn the_deadline_header_is_unix_milliseconds() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(deadline_at(now, Duration::from_secs(2)), "1700000002123");
    }

    #[test]
    fn backend_messages_are_bounded_utf8() {
        let long = "é".repeat(1000);
        let m = backend_message(long.as_bytes(), 500);
        assert!(m.len() <= MAX_BACKEND_MESSAGE);
        assert!(m.starts_with('é'));
        assert_eq!(backend_message(b"  ", 500), "backend answered 500");
        assert_eq!(backend_message(&[0xff, b'x'], 500), "\u{fffd}x");
    }
}
