//! The API's one error shape: `{"error": {"code": "…", "message": "…"}}` with an HTTP status.
//! `code` is one of [`Code`]'s stable labels (clients branch on it); `message` is for people.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every error code the API answers with. Stable once released: new codes are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// 400: the request is malformed (body, field, parameter).
    BadRequest,
    /// 400: a room name is not a valid room name.
    InvalidRoom,
    /// 401: no valid API key (or, on publish, no valid token).
    Unauthorized,
    /// 403: the key or token may not act on this tenant or room.
    PermissionDenied,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not with this method.
    MethodNotAllowed,
    /// 409: a history position that is no longer in history (or of another epoch).
    UnrecoverablePosition,
    /// 413: the body or the payload is larger than allowed.
    PayloadTooLarge,
    /// 503: the broker (NATS) cannot take or answer the request now; retry later.
    Unavailable,
    /// 429: a client token's publication is over its tenant's publish quota; retry later.
    QuotaExceeded,
    /// 429: a client token is publishing faster than `limits.commands_per_second`; retry later.
    RateLimited,
    /// 408: the request's body did not arrive within `timeouts.handshake`.
    RequestTimeout,
    /// 409: a request with this `Idempotency-Key` is still publishing into the room; retry.
    IdempotencyInProgress,
    /// 422: this `Idempotency-Key` was used in the room for a different payload.
    IdempotencyKeyReused,
}

impl Code {
    pub const ALL: &'static [Code] = &[
        Code::BadRequest,
        Code::InvalidRoom,
        Code::Unauthorized,
        Code::PermissionDenied,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::UnrecoverablePosition,
        Code::PayloadTooLarge,
        Code::Unavailable,
        Code::QuotaExceeded,
        Code::RateLimited,
        Code::RequestTimeout,
        Code::IdempotencyInProgress,
        Code::IdempotencyKeyReused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::InvalidRoom => "invalid_room",
            Code::Unauthorized => "unauthorized",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::UnrecoverablePosition => "unrecoverable_position",
            Code::PayloadTooLarge => "payload_too_large",
            Code::Unavailable => "unavailable",
            Code::QuotaExceeded => "quota_exceeded",
            Code::RateLimited => "rate_limited",
            Code::RequestTimeout => "request_timeout",
            Code::IdempotencyInProgress => "idempotency_in_progress",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::InvalidRoom => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::UnrecoverablePosition => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::QuotaExceeded | Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::IdempotencyInProgress => StatusCode::CONFLICT,
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// A refused API request, as its JSON error response.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// A count the refusal still reports (`disconnected_here` of an action applied on this
    /// instance only), beside `code` and `message`.
    pub count: Option<(&'static str, usize)>,
    /// A 401 for a credential that was sent and refused (not for none at all): its challenge
    /// says `error="invalid_token"` (RFC 6750 §3.1).
    refused_credential: bool,
}

/// The challenge every 401 carries (RFC 6750 §3), and the one for a credential sent and refused.
const CHALLENGE: &str = r#"Bearer realm="quiver-api""#;
const CHALLENGE_INVALID_TOKEN: &str = r#"Bearer realm="quiver-api", error="invalid_token""#;

/// A tenant quota's refusal, as its session would be told it (`QuotaError::code`):
/// `payload_too_large` (413) for a publication no wait lets through, else `quota_exceeded` (429).
impl From<crate::quota::QuotaError> for ApiError {
    fn from(e: crate::quota::QuotaError) -> Self {
        let code = match e.code() {
            quiver_proto::ErrorCode::PayloadTooLarge => Code::PayloadTooLarge,
            _ => Code::QuotaExceeded,
        };
        Self::new(code, e.to_string())
    }
}

impl ApiError {
    /// Parsers' texts quote what they refused (a field name, a query key), which a request
    /// controls: cut to `text::MAX_MESSAGE`, an answer never grows with the request (outside
    /// HTTP audit, F2: a 60 KB query key came back twice, 120 KB).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let message = crate::text::bounded(message.into(), crate::text::MAX_MESSAGE);
        Self {
            code,
            message,
            count: None,
            refused_credential: false,
        }
    }

    /// 401: the request's `credential` (its bearer value, `""` when it sent none) is not
    /// accepted here.
    pub fn unauthorized(credential: &str, message: impl Into<String>) -> Self {
        Self {
            refused_credential: !credential.is_empty(),
            ..Self::new(Code::Unauthorized, message)
        }
    }

    /// An operator action applied here but not told to the other instances: 503, with what it
    /// did here under `field` (a retry is safe: each action is idempotent).
    pub fn not_spread(field: &'static str, tenant: &str, e: crate::control::NotSpread) -> Self {
        Self {
            count: Some((field, e.here)),
            ..Self::new(Code::Unavailable, {
                // NATS's words (a full JetStream account, say) are the operator's: they
                // could tell a tenant of what the others use (outside audit 42, 1).
                crate::broker::log_failure(&e.error, tenant);
                "applied on this instance only, not told to the others (the broker failed; \
                     the server's log says why); retry"
                    .to_owned()
            })
        }
    }

    /// 401 for a credential that is no API key of this server and no valid client token: both
    /// are said, so an operator whose API key is wrong is not told only of tokens (outside
    /// audit 48, F5).
    pub fn not_a_credential(credential: &str, token_error: &dyn std::fmt::Display) -> Self {
        Self::unauthorized(
            credential,
            format!("not an API key of this server, nor a valid client token ({token_error})"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(Code::Unavailable, e.to_string())
    }

    /// The broker failed for a request of `tenant` ("" for every tenant): 503, never in the
    /// broker's own words ([`crate::broker::BrokerError::for_client`]).
    pub fn broker(tenant: &str, e: crate::broker::BrokerError) -> Self {
        Self::new(Code::Unavailable, e.for_client(tenant))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!(crate::metrics::API_REFUSALS, "code" => self.code.label()).increment(1);
        let challenge = (self.code == Code::Unauthorized).then(|| self.challenge());
        let mut response = (
            self.code.status(),
            Json(json!({"error": match self.count {
                Some((field, n)) => json!({"code": self.code.label(), "message": self.message, field: n}),
                None => json!({"code": self.code.label(), "message": self.message}),
            }})),
        )
            .into_response();
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

impl ApiError {
    /// A 401's `WWW-Authenticate`, which RFC 9110 §15.5.2 requires of every 401 (outside audit
    /// 111, F5): a Bearer challenge (RFC 6750 §3), with `error="invalid_token"` when a
    /// credential was sent and refused. Fixed words only, never the request's: an
    /// `error_description` quoting it would let a request write into a header.
    fn challenge(&self) -> axum::http::HeaderValue {
        axum::http::HeaderValue::from_static(if self.refused_credential {
            CHALLENGE_INVALID_TOKEN
        } else {
            CHALLENGE
        })
    }
}

/// A body that could not be read: over the size limit (413), or broken off (400).
impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Code::PayloadTooLarge
        } else {
            Code::BadRequest
        };
        Self::new(code, rejection.body_text())
    }
}

/// Parses a JSON request body, which must be an object; what is wrong with it is the 400's
/// message (serde's own, which names the field and the position). serde would also take an
/// array as the fields in order (`[null, "chat.m"]`): a form nobody documents, refused.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "request body: a JSON object is expected",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        Code::NotFound,
        "no such endpoint (see /api/v1/openapi.json)",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        "method not allowed on this endpoint (see /api/v1/openapi.json)",
    )
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// `Code::ALL` feeds the OpenAPI document's enum of codes: every code the API can answer
    /// must be in it, or a client validating answers against the document rejects them.
    #[test]
    fn all_lists_every_code() {
        // Exhaustive: a new code does not compile here until it is added, and then must be
        // in `ALL` too.
        let index = |code: Code| match code {
            Code::BadRequest => 0,
            Code::InvalidRoom => 1,
            Code::Unauthorized => 2,
            Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::MethodNotAllowed => 5,
            Code::UnrecoverablePosition => 6,
            Code::PayloadTooLarge => 7,
            Code::Unavailable => 8,
            Code::QuotaExceeded => 9,
            Code::RateLimited => 10,
            Code::RequestTimeout => 11,
            Code::IdempotencyInProgress => 12,
            Code::IdempotencyKeyReused => 13,
        };
        let mut seen: Vec<usize> = Code::ALL.iter().map(|c| index(*c)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..14).collect::<Vec<_>>());
    }

    /// Outside audit 42, 1: a revocation NATS refused (a full JetStream account) answered a
    /// tenant's key in NATS's words; the answer says what was applied, the words are logged.
    #[test]
    fn an_action_not_spread_is_told_without_the_brokers_words() {
        let error = super::ApiError::not_spread(
            "disconnected_here",
            "acme",
            crate::control::NotSpread {
                here: 2,
                error: "nats: ack error: publish failed: resource limits exceeded for account \
                        (code 400, error code 10002)"
                    .into(),
            },
        );
        assert_eq!(error.count, Some(("disconnected_here", 2)));
        assert_eq!(
            error.message,
            "applied on this instance only, not told to the others (the broker failed; the \
             server's log says why); retry"
        );
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let long = format!("unknown field `{}`", "é".repeat(1_000));
        let error = super::ApiError::new(Code::BadRequest, long);
        assert!(error.message.len() <= crate::text::MAX_MESSAGE + '…'.len_utf8());
        assert!(error.message.ends_with('…'), "{}", error.message);
        let short = super::ApiError::new(Code::BadRequest, "no such room");
        assert_eq!(short.message, "no such room");
    }
}
