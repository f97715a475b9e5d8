//! Who an API request speaks for: an API key from `[api] keys` (admin, or one tenant), found
//! by comparing SHA-256 digests in constant time over every configured key, so neither the
//! comparison's timing nor which key matched says anything about a key's bytes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use quiver_proto::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{parse, ApiError, Code};
use crate::server::Shared;

/// Who an API key speaks for.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

/// The `Authorization: Bearer …` credential, trimmed; empty when there is none, or more than
/// one `Authorization` header (which one a proxy in front judged is unknowable).
pub fn bearer(headers: &HeaderMap) -> &str {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return "";
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::transport::bearer)
        .map(str::trim)
        .unwrap_or_default()
}

/// The caller a presented credential is an API key of, if it is one.
pub fn api_key(shared: &Shared, presented: &str) -> Option<Caller> {
    if presented.is_empty() {
        return None;
    }
    let digest = Sha256::digest(presented.as_bytes());
    let mut found = None;
    // Every key is compared, whichever matches: the loop's time does not depend on which.
    for key in shared.config.api.keys.iter().filter(|k| !k.key.is_empty()) {
        let matches: bool = Sha256::digest(key.key.as_bytes())[..]
            .ct_eq(&digest[..])
            .into();
        if matches && found.is_none() {
            found = Some(key);
        }
    }
    // A tenant that is not a valid tenant id matches nothing (config check refuses it anyway).
    found.and_then(|k| match &k.tenant {
        None => Some(Caller::Admin),
        Some(t) => TenantId::parse(t).ok().map(Caller::Tenant),
    })
}

/// The caller of an endpoint that takes API keys only.
pub fn require_key(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let credential = bearer(headers);
    api_key(shared, credential).ok_or_else(|| key_required(credential))
}

/// 401 on an endpoint that takes API keys only.
pub fn key_required(credential: &str) -> ApiError {
    ApiError::unauthorized(
        credential,
        "an API key is required (Authorization: Bearer KEY)",
    )
}

impl Caller {
    /// The tenant a request acts on: the one it names, which a tenant's key may only name as
    /// its own; a tenant's key may leave it out, an admin key must name one.
    pub fn tenant(&self, named: Option<&str>) -> Result<TenantId, ApiError> {
        match (self, named) {
            (Caller::Tenant(own), None) => Ok(own.clone()),
            (Caller::Admin, None) => {
                Err(ApiError::bad_request("tenant: required with an admin key"))
            }
            (_, Some(named)) => {
                let tenant = TenantId::parse(named)
                    .map_err(|e| ApiError::bad_request(format!("tenant: {e}")))?;
                match self {
                    Caller::Tenant(own) if *own != tenant => Err(ApiError::new(
                        Code::PermissionDenied,
                        "this API key is for another tenant",
                    )),
                    _ => Ok(tenant),
                }
            }
        }
    }
}

/// What every endpoint that takes an API key starts with: the key's caller (401 without one),
/// then the JSON body as `T` (413 over the size limit, 400 when malformed; an empty body reads
/// as `{}`).
pub struct KeyRequest<T> {
    pub caller: Caller,
    pub request: T,
}

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Shared>> for KeyRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let caller = require_key(shared, request.headers())?;
        // Parameters go in the JSON body here: a `?tenant=` beside a body's `tenant` would be
        // ignored, and the caller would not learn which one counted.
        if request.uri().query().is_some() {
            return Err(ApiError::bad_request(
                "this endpoint takes no query parameters: send `tenant` in the JSON body",
            ));
        }
        let body = Bytes::from_request(request, shared).await?;
        let request = parse(if body.is_empty() { b"{}" } else { &body })?;
        Ok(Self { caller, request })
    }
}
