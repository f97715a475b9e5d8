//! JWT verification: a token becomes a [`Grant`] (who, which tenant, until when, which rooms), or
//! an [`AuthError`]. Tokens themselves are never logged, and no error message quotes any part
//! of one: the messages below are fixed strings, so logging an `AuthError` is safe.
//!
//! Keys: one HS256 secret, one public key (ES256, RS256 or EdDSA), or a JWKS (file or URL) as
//! identity providers publish them (several keys, chosen by the token's `kid`; reloaded by
//! `jwks.rs`). Exactly one algorithm is
//! accepted per key, so `alg: none` and algorithm confusion (an HS256 token "signed" with a
//! public key) are refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quiver_proto::{Pattern, RoomName, TenantId};
use serde::{Deserialize, Serialize};

/// Shortest HS256 secret accepted: the hash's output size (RFC 7518 §3.2 requires a key at least
/// that long). Shorter secrets, the empty one included, can be guessed or brute-forced offline
/// from any token.
pub const MIN_HS256_SECRET: usize = 32;
/// Longest token accepted, in bytes. Checked before any parsing, so a huge token costs nothing;
/// the transports refuse longer CONNECT requests before they get here.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest `sub` claim, in bytes.
pub const MAX_SUB_BYTES: usize = 256;
/// Longest `jti`, in bytes: what the backend API's `revoke` takes (a token whose `jti` it
/// cannot take could never be revoked).
pub const MAX_JTI_BYTES: usize = 256;
/// Largest clock leeway the configuration may set: more would keep expired tokens alive.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    /// Who the token names when its signature and claims were good (the log line of the
    /// refusal names them; `None` when the claims were not read).
    #[error("token expired")]
    Expired(Option<Box<Signer>>),
    /// Revoked by its `jti` (`revocation.rs`): correctly signed, so who it names is known.
    #[error("invalid token: token revoked")]
    Revoked(Box<Signer>),
    /// The reason is a fixed description: never the token or a part of it.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("invalid claim {claim}: {reason}")]
    Claim { claim: &'static str, reason: String },
}

impl AuthError {
    /// Label for the `reason` of the refused-sessions metric.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired(_) => "token_expired",
            AuthError::Revoked(_) => "token_invalid",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::Claim { .. } => "token_claims",
        }
    }
}

/// The tenant and user a correctly signed token names: the issuer's word even when the token
/// is refused (expired, revoked), so an operator can tell whose it was (outside audit 55, L4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub tenant: TenantId,
    pub user: String,
}

impl Signer {
    fn of(grant: &Grant) -> Box<Self> {
        Box::new(Self {
            tenant: grant.tenant.clone(),
            user: grant.user.clone(),
        })
    }
}

impl AuthError {
    /// The tenant and user of a token refused although correctly signed.
    pub fn signer(&self) -> Option<&Signer> {
        match self {
            AuthError::Expired(signer) => signer.as_deref(),
            AuthError::Revoked(signer) => Some(signer),
            _ => None,
        }
    }

    /// The refusal of a token `grant` was read from, now revoked.
    pub fn revoked(grant: &Grant) -> Self {
        AuthError::Revoked(Signer::of(grant))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("unsupported algorithm {0:?} (use ES256, RS256 or EdDSA)")]
    Algorithm(String),
    #[error("bad key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error(
        "the HS256 secret is {len} bytes; at least {MIN_HS256_SECRET} are required (a shorter \
         secret can be brute-forced from any token). Generate one with `openssl rand -hex 32`"
    )]
    ShortSecret { len: usize },
    #[error("JWKS {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("leeway of {0:?} is over the maximum of {MAX_LEEWAY:?}")]
    Leeway(Duration),
    #[error("weak key: {0}")]
    WeakKey(String),
}

/// The claims Quiver reads. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// What a verified token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's `jti` claim, if it has one (revocation).
    pub jti: Option<String>,
    pub user: String,
    pub tenant: TenantId,
    pub expires_at: u64,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    /// The `call` claim: methods this user may `Call` (none without the claim).
    call: Vec<Pattern>,
}

impl Grant {
    pub fn may_call(&self, method: &RoomName) -> bool {
        self.call.iter().any(|p| p.matches(method))
    }
    pub fn may_subscribe(&self, room: &RoomName) -> bool {
        self.subscribe.iter().any(|p| p.matches(room))
    }
    pub fn may_publish(&self, room: &RoomName) -> bool {
        self.publish.iter().any(|p| p.matches(room))
    }
    /// Whether `other` allows subscribing to exactly the same patterns (a refresh that changes
    /// nothing a subscription depends on).
    pub fn same_subscribe(&self, other: &Grant) -> bool {
        self.subscribe == other.subscribe
    }
    /// How many `subscribe` patterns the token carries (what checking a room costs).
    pub fn subscribe_patterns(&self) -> usize {
        self.subscribe.len()
    }
}

/// Checks on top of the signature, the same for every key.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Clock skew tolerated on `exp` and `nbf`. Zero by default: a token is refused from the
    /// second its `exp` names.
    pub leeway: Duration,
    /// When set, tokens must carry this `aud` (a string, or an array containing it).
    pub audience: Option<String>,
    /// When set, tokens must carry exactly this `iss`.
    pub issuer: Option<String>,
}

/// Verifies tokens.
pub struct Verifier {
    /// Swapped whole when a key set is reloaded (`jwks.rs`); a verification in progress keeps
    /// the set it started with.
    keys: RwLock<Arc<Keys>>,
    leeway_secs: u64,
    checks: Checks,
    /// Signalled when a token names a `kid` the key set lacks: the identity provider may have
    /// rotated its keys, so `jwks.rs` fetches the set again (rate-limited there).
    unknown_kid: tokio::sync::Notify,
    /// Tokens that passed every check (`token_cache.rs`).
    cache: crate::token_cache::TokenCache,
    /// The digest of the keys last loaded (`key_sets::KeySet::digest`): loading the same keys
    /// again changes nothing, and keeps the cache (outside audit 98, F7: any client could empty
    /// every client's cache every 10 s by naming made-up `kid`s, each reload clearing it).
    /// With it, the digest of the keys skipped (`KeySet::skipped_digest`).
    document: std::sync::Mutex<([u8; 32], [u8; 32])>,
}

enum Keys {
    /// The one key; the token's `kid`, if any, is ignored.
    One(Box<(DecodingKey, Validation)>),
    /// A key set: the token's `kid` picks the key, and with it the one algorithm accepted.
    ByKid(HashMap<String, (DecodingKey, Validation)>),
}

impl Keys {
    /// How many keys verify.
    fn len(&self) -> usize {
        match self {
            Keys::ByKid(map) => map.len(),
            Keys::One(_) => 1,
        }
    }
}

impl Verifier {
    /// An HS256 verifier. Refuses secrets shorter than [`MIN_HS256_SECRET`].
    pub fn hs256(secret: &[u8], checks: &Checks) -> Result<Self, KeyError> {
        if secret.len() < MIN_HS256_SECRET {
            return Err(KeyError::ShortSecret { len: secret.len() });
        }
        Self::one(DecodingKey::from_secret(secret), Algorithm::HS256, checks)
    }

    /// A verifier for one PEM public key.
    pub fn public_key(path: &Path, algorithm: &str, checks: &Checks) -> Result<Self, KeyError> {
        let pem = read_key_file(path, MAX_KEY_FILE)
            .map_err(|e| KeyError::Read(path.display().to_string(), e))?;
        let (key, alg) = match algorithm.to_ascii_uppercase().as_str() {
            "ES256" => (DecodingKey::from_ec_pem(&pem)?, Algorithm::ES256),
            "RS256" => {
                let key = DecodingKey::from_rsa_pem(&pem)?;
                key_sets::check_rsa_size(&key).map_err(KeyError::WeakKey)?;
                (key, Algorithm::RS256)
            }
            "EDDSA" => (DecodingKey::from_ed_pem(&pem)?, Algorithm::EdDSA),
            other => return Err(KeyError::Algorithm(other.to_owned())),
        };
        Self::one(key, alg, checks)
    }

    /// A verifier for a JWKS file (`{"keys": [...]}`, RFC 7517): see `key_sets::jwks_keys`
    /// for the keys it takes.
    pub fn jwks(path: &Path, checks: &Checks) -> Result<Self, KeyError> {
        let text = read_key_file(path, crate::jwks::MAX_JWKS_BYTES as u64)
            .map_err(|e| KeyError::Read(path.display().to_string(), e))?;
        Self::jwks_from_bytes(&path.display().to_string(), &text, checks)
    }

    /// A verifier for a JWKS document already read (from a file or a URL, named by `source` in
    /// errors).
    pub fn jwks_from_bytes(source: &str, text: &[u8], checks: &Checks) -> Result<Self, KeyError> {
        let leeway_secs = leeway_secs(checks)?;
        let set = key_sets::jwks_keys(source, text, checks, leeway_secs)?;
        set.warn_skipped(source);
        let verifier = Self::with_keys(set.keys, leeway_secs, checks);
        *verifier.document.lock().unwrap_or_else(|e| e.into_inner()) =
            (set.digest, set.skipped_digest);
        Ok(verifier)
    }

    /// Replaces the key set with a new JWKS document, keeping the checks. On error the old set
    /// stays. Returns how many signing keys the new set has.
    pub fn replace_jwks(&self, source: &str, text: &[u8]) -> Result<usize, KeyError> {
        let set = key_sets::jwks_keys(source, text, &self.checks, self.leeway_secs)?;
        let mut document = self.document.lock().unwrap_or_else(|e| e.into_inner());
        if document.0 == set.digest {
            // The same keys: nothing changes; what is skipped is warned about when it changes.
            if document.1 != set.skipped_digest {
                set.warn_skipped(source);
                document.1 = set.skipped_digest;
            }
            return Ok(set.keys.len());
        }
        set.warn_skipped(source);
        let count = set.keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set.keys);
        *document = (set.digest, set.skipped_digest);
        // A token signed by a key that was removed must not live on in the cache.
        self.cache.clear();
        Ok(count)
    }

    /// Resolves when a token named a `kid` the key set lacks (see [`Verifier::replace_jwks`]).
    pub async fn unknown_kid(&self) {
        self.unknown_kid.notified().await
    }

    fn with_keys(keys: Keys, leeway_secs: u64, checks: &Checks) -> Self {
        Self {
            keys: RwLock::new(Arc::new(keys)),
            leeway_secs,
            checks: checks.clone(),
            unknown_kid: tokio::sync::Notify::new(),
            cache: crate::token_cache::TokenCache::new(crate::token_cache::DEFAULT_ENTRIES),
            document: std::sync::Mutex::new(([0; 32], [0; 32])),
        }
    }

    /// Remembers up to `entries` verified tokens (`auth.token_cache`; 0 turns it off).
    pub fn with_token_cache(mut self, entries: usize) -> Self {
        self.cache = crate::token_cache::TokenCache::new(entries);
        self
    }

    /// Tokens remembered now (for tests and diagnostics).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    fn one(key: DecodingKey, alg: Algorithm, checks: &Checks) -> Result<Self, KeyError> {
        let leeway_secs = leeway_secs(checks)?;
        Ok(Self::with_keys(
            Keys::One(Box::new((key, validation(alg, checks, leeway_secs)))),
            leeway_secs,
            checks,
        ))
    }

    /// Verifies a token now. An expired token is refused with [`AuthError::Expired`], with no
    /// leeway unless `auth.leeway` sets one: use this for a `Refresh` too, so that a token that
    /// already expired is refused before the session is touched.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// Verifies a token as of `now` (Unix seconds) for the `exp` check. A token is valid while
    /// `now < exp + leeway` (RFC 7519 §4.1.4: "on or after" `exp` it must be refused).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("longer than 4096 bytes"));
        }
        match self.cache.get(token, now, self.leeway_secs) {
            Some(Ok(grant)) => return Ok(grant),
            Some(Err(expired)) => return Err(AuthError::Expired(Some(Signer::of(&expired)))),
            None => {}
        }
        // Before the key set is read: a reload that clears the cache meanwhile keeps this token
        // out of it.
        let generation = self.cache.generation();
        let grant = self.verify_uncached(token, now)?;
        self.cache
            .insert(token, &grant, now, self.leeway_secs, generation);
        Ok(grant)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<Grant, AuthError> {
        check_members(token)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (key, validation) = match &*keys {
            Keys::One(one) => (&one.0, &one.1),
            Keys::ByKid(keys) => {
                let header = jsonwebtoken::decode_header(token).map_err(refusal)?;
                let kid = header.kid.ok_or(AuthError::Invalid(
                    "no kid in the header (the server uses a key set)",
                ))?;
                let Some((key, validation)) = keys.get(&kid) else {
                    self.unknown_kid.notify_one();
                    return Err(AuthError::Invalid("unknown kid"));
                };
                (key, validation)
            }
        };
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, key, validation).map_err(refusal)?;
        // The token's id, for the revocation deny-list (`revocation.rs`).
        // A `jti` of another type (a number, say) could never be revoked by its string form:
        // refused, as RFC 7519 §4.1.7 makes it a string.
        // So is one that is empty or longer than `revoke` takes (outside audit 98, F2: such
        // tokens were accepted, and the API refused to revoke them).
        let jti = match data.claims.get("jti") {
            None => None,
            Some(serde_json::Value::String(jti)) if jti.is_empty() || jti.len() > MAX_JTI_BYTES => {
                return Err(AuthError::Claim {
                    claim: "jti",
                    reason: format!("must be 1 to {MAX_JTI_BYTES} bytes"),
                })
            }
            Some(serde_json::Value::String(jti)) => Some(jti.clone()),
            Some(_) => {
                return Err(AuthError::Claim {
                    claim: "jti",
                    reason: "must be a string".into(),
                })
            }
        };
        // jsonwebtoken takes an array `iss` that contains the issuer; RFC 7519 §4.1.1 makes it
        // one string, and PROTOCOL.md §6 says it must equal the configured issuer.
        if validation.iss.is_some() && !data.claims.get("iss").is_some_and(|v| v.is_string()) {
            return Err(AuthError::Claim {
                claim: "iss",
                reason: "must be a string".into(),
            });
        }
        // Read apart from `Claims` so the struct (built by token issuers) keeps its fields.
        let call = call_patterns(&data.claims)?;
        let claims = claims_from(data.claims)?;
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            // Expiry is told first, whatever else the claims hold; who they name only if valid.
            let signer = grant_from(claims).ok().map(|grant| Signer::of(&grant));
            return Err(AuthError::Expired(signer));
        }
        grant_from(claims).map(|grant| Grant { jti, call, ..grant })
    }
}

/// What jsonwebtoken lets through and a token must not have (PROTOCOL.md §6):
/// - a member named twice, in the header or the claims: serde keeps the last, while an issuer or
///   a gateway may read the first, and the two would disagree on the tenant;
/// - a `crit` header (RFC 7515 §4.1.11): it lists extensions the verifier must understand, and
///   this one understands none.
///
/// A segment that is not base64url JSON is left to jsonwebtoken, which refuses it.
fn check_members(token: &str) -> Result<(), AuthError> {
    use base64::Engine;
    const BASE64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    for (i, segment) in token.split('.').take(2).enumerate() {
        let Ok(json) = BASE64URL.decode(segment) else {
            continue;
        };
        let Ok(members) = serde_json::from_slice::<Members>(&json) else {
            continue;
        };
        if members.repeated {
            return Err(AuthError::Invalid(
                "a header parameter or claim is named twice",
            ));
        }
        if i == 0 && members.crit {
            return Err(AuthError::Invalid("crit header: no extension is supported"));
        }
        if i == 0 && !names_a_known_algorithm(&json) {
            // jsonwebtoken reads `alg` into its enum, so `none`, a missing `alg` or any name it
            // does not know fail as JSON: the reason would send someone debugging an
            // `alg: none` token looking for a JSON problem (outside audit).
            return Err(AuthError::Invalid("algorithm not accepted"));
        }
    }
    Ok(())
}

/// Whether a (well-formed JSON object) header's `alg` names an algorithm jsonwebtoken knows;
/// whether it is *the* accepted one is checked by the verification itself.
fn names_a_known_algorithm(header: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Alg {
        alg: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Alg>(header) {
        Ok(Alg {
            alg: Some(serde_json::Value::String(alg)),
        }) => alg.parse::<jsonwebtoken::Algorithm>().is_ok(),
        Ok(_) => false,
        // Not this check's to judge: the verification says what is wrong with it.
        Err(_) => true,
    }
}

/// The member names of a JSON object, read without keeping any value.
struct Members {
    repeated: bool,
    crit: bool,
}

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut members = Members {
                    repeated: false,
                    crit: false,
                };
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    members.crit |= name == "crit";
                    members.repeated |= !seen.insert(name);
                }
                Ok(members)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn leeway_secs(checks: &Checks) -> Result<u64, KeyError> {
    if checks.leeway > MAX_LEEWAY {
        return Err(KeyError::Leeway(checks.leeway));
    }
    Ok(checks.leeway.as_secs())
}

fn validation(alg: Algorithm, checks: &Checks, leeway_secs: u64) -> Validation {
    // One algorithm only: a token naming another (or `none`) is refused.
    let mut validation = Validation::new(alg);
    // `exp`, `sub` and `tenant` are checked by `claims_from` and `verify_at` (for messages that
    // name the problem, and an `exp` check that is strict and testable with a given clock).
    let mut required: Vec<&str> = Vec::new();
    validation.validate_exp = false;
    validation.validate_nbf = true;
    validation.leeway = leeway_secs;
    validation.validate_aud = checks.audience.is_some();
    if let Some(aud) = &checks.audience {
        validation.set_audience(&[aud]);
        required.push("aud");
    }
    if let Some(iss) = &checks.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A fixed description of why jsonwebtoken refused a token: its own messages can quote claim
/// values, which must not reach logs.
fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    let claim = |name: &str| match name {
        "exp" => "exp",
        "sub" => "sub",
        "aud" => "aud",
        "iss" => "iss",
        "nbf" => "nbf",
        _ => "unknown",
    };
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired(None),
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::Invalid("algorithm not accepted"),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Invalid("malformed (expected base64url header.payload.signature)")
        }
        ErrorKind::Json(_) => AuthError::Invalid("malformed header or claims JSON"),
        // jsonwebtoken takes an `aud` or `iss` of the wrong type for a missing one: the rule is
        // named whole, so either reads right (outside audit 52, F1: a numeric `aud` was told
        // "required").
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claim {
            claim: claim(c),
            reason: match claim(c) {
                "aud" => "required, a string or an array of strings",
                "iss" => "required, a string",
                _ => "required",
            }
            .into(),
        },
        // The same words as `claims_from` for the same rule.
        ErrorKind::InvalidClaimFormat(c) => AuthError::Claim {
            claim: claim(c),
            reason: match claim(c) {
                "exp" | "nbf" => "must be a non-negative integer (Unix seconds)",
                _ => "wrong type",
            }
            .into(),
        },
        ErrorKind::InvalidAudience => AuthError::Claim {
            claim: "aud",
            reason: "not the audience this server accepts".into(),
        },
        ErrorKind::InvalidIssuer => AuthError::Claim {
            claim: "iss",
            reason: "not the issuer this server accepts".into(),
        },
        ErrorKind::ImmatureSignature => AuthError::Claim {
            claim: "nbf",
            reason: "not valid yet".into(),
        },
        _ => AuthError::Invalid("refused"),
    }
}

/// Reads the claims one by one, for an error that names the claim (and never quotes it).
fn claims_from(value: serde_json::Value) -> Result<Claims, AuthError> {
    let claim_err = |claim, reason: &str| AuthError::Claim {
        claim,
        reason: reason.to_owned(),
    };
    let serde_json::Value::Object(map) = value else {
        return Err(AuthError::Invalid("claims are not a JSON object"));
    };
    let string = |name: &'static str| match map.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(claim_err(name, "must be a string")),
        None => Err(claim_err(name, "required")),
    };
    let patterns = |name: &'static str| match map.get(name) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| claim_err(name, "must be an array of strings"))
            })
            .collect(),
        Some(_) => Err(claim_err(name, "must be an array of strings")),
    };
    let exp = match map.get("exp") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| claim_err("exp", "must be a non-negative integer (Unix seconds)"))?,
        None => return Err(claim_err("exp", "required")),
    };
    // jsonwebtoken compares `nbf` as a number of any kind: the protocol wants an integer.
    if map.get("nbf").is_some_and(|v| !v.is_u64()) {
        return Err(claim_err(
            "nbf",
            "must be a non-negative integer (Unix seconds)",
        ));
    }
    Ok(Claims {
        sub: string("sub")?,
        tenant: string("tenant")?,
        exp,
        subscribe: patterns("subscribe")?,
        publish: patterns("publish")?,
    })
}

/// The `call` claim: an optional array of method patterns (NATS-style, like room patterns).
fn call_patterns(claims: &serde_json::Value) -> Result<Vec<Pattern>, AuthError> {
    let claim_err = |reason: String| AuthError::Claim {
        claim: "call",
        reason,
    };
    match claims.get("call") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p
                    .as_str()
                    .ok_or_else(|| claim_err("must be an array of strings".into()))?;
                Pattern::parse(p)
                    .map_err(|e| claim_err(format!("[{i}]: {}", unquoted(&e, PATTERN_CHARS))))
            })
            .collect(),
        Some(_) => Err(claim_err("must be an array of strings".into())),
    }
}

/// Characters a pattern may hold, for refusals.
const PATTERN_CHARS: &str = "A-Z a-z 0-9 _ - (and * > as whole tokens)";
/// Characters a tenant id may hold, for refusals.
const TENANT_CHARS: &str = "A-Z a-z 0-9 _ -";

/// A name rule's refusal without the offending character (refusals never quote a token),
/// saying which characters `allowed`.
fn unquoted(e: &quiver_proto::RoomError, allowed: &str) -> String {
    match e {
        quiver_proto::RoomError::InvalidChar(_) => {
            format!("invalid character: allowed are {allowed}")
        }
        other => other.to_string(),
    }
}

fn grant_from(claims: Claims) -> Result<Grant, AuthError> {
    let claim_err = |claim, reason: String| AuthError::Claim { claim, reason };
    if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_BYTES {
        return Err(claim_err("sub", "must be 1 to 256 bytes".into()));
    }
    let tenant = TenantId::parse(&claims.tenant)
        .map_err(|e| claim_err("tenant", unquoted(&e, TENANT_CHARS)))?;
    let patterns = |list: &[String], claim| {
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::parse(p).map_err(|e| {
                    claim_err(claim, format!("[{i}]: {}", unquoted(&e, PATTERN_CHARS)))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Grant {
        subscribe: patterns(&claims.subscribe, "subscribe")?,
        publish: patterns(&claims.publish, "publish")?,
        call: Vec::new(),
        user: claims.sub,
        tenant,
        expires_at: claims.exp,
        jti: None,
    })
}

/// The claim checks the server makes after the signature (user, tenant charset, room
/// patterns), for tools that sign tokens and must refuse what the server would refuse.
pub fn check_claims(claims: &Claims) -> Result<(), AuthError> {
    grant_from(claims.clone()).map(drop)
}

/// The most a key file (an HS256 secret, a PEM public key, a token file) may hold: real ones
/// are a few hundred bytes.
pub const MAX_KEY_FILE: u64 = 1 << 20;

/// Reads a key file of at most `max` bytes, only if it is a regular file or a pipe (after
/// symlinks). A device (`/dev/zero`, a terminal), a socket or a directory is refused before
/// anything is read, and so is a regular file larger than `max`: a wrong path in the
/// configuration is an error naming what is wrong, not a hang or all the memory (audit 134,
/// F4: `QUIVER_JWT_SECRET_FILE=/dev/zero` grew to 1.7 GB in 3 s). A pipe is how a secret stays
/// out of `ps` and shell history (`--token-file <(vault read ...)`, `/dev/stdin`, a named FIFO
/// whose writer this waits for, as any reader of one does): it is read to its end, at most
/// `max + 1` bytes, and refused past `max` (review 135, R2). The error never holds the file's
/// bytes; callers add its path.
pub fn read_key_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // Only a FIFO is opened waiting (for its writer, as `cat` would; a pipe of `<(...)` or
    // `/dev/stdin` never waits): anything else is opened without waiting, and judged by what
    // was opened, not by what the path was a moment before (a FIFO put there meanwhile is
    // read without waiting: what is in it, or `WouldBlock`).
    let fifo = std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_fifo());
    let flags = if fifo { 0 } else { libc::O_NONBLOCK };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = file.metadata()?;
    let pipe = meta.file_type().is_fifo();
    if !meta.is_file() && !pipe {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file or a pipe (a device, a socket or a directory cannot hold a key)",
        ));
    }
    let too_big = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("larger than {max} bytes, the most a key file may hold"),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    // The size can change after `metadata`, and a pipe's is unknown: never more than `max + 1`
    // bytes are read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Reads a secret from a file ([`read_key_file`]: a regular file of at most [`MAX_KEY_FILE`]
/// bytes). Trailing line ends (editors and `echo` add one) are not part of the secret.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut secret = read_key_file(path, MAX_KEY_FILE)?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    Ok(secret)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs an HS256 token (for `quiver token`, the demo, and tests).
/// Signs any claims (for extra ones such as `jti`, a struct of your own that flattens [`Claims`]).
pub fn sign_hs256<C: Serialize>(
    secret: &[u8],
    claims: &C,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[path = "auth_key_sets.rs"]
mod key_sets;

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;

/// Key files are read bounded, and only if regular files or pipes (audit 134, F4; review 135,
/// R2).
#[cfg(test)]
pub(crate) mod key_file_tests {
    use super::*;

    /// A path of its own in the temporary directory, removed when dropped.
    pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

    impl Scratch {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Self(std::env::temp_dir().join(format!("quiver-key-{}-{n}-{name}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A FIFO at a scratch path, and a thread that writes `bytes` into it once a reader opens
    /// it (a write past a reader that closed it fails; the thread ends either way).
    fn fifo_written(name: &str, bytes: Vec<u8>) -> (Scratch, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let fifo = Scratch::new(name);
        let path = std::ffi::CString::new(fifo.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let path = fifo.0.clone();
        let writer = std::thread::spawn(move || {
            // Waits for the reader, as opening a FIFO does.
            let mut pipe = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let _ = pipe.write_all(&bytes);
        });
        (fifo, writer)
    }

    #[test]
    fn a_key_file_over_a_mib_is_refused_naming_it_not_its_bytes() {
        let big = Scratch::new("big");
        let mut bytes = b"0123456789abcdef-secret-".repeat((MAX_KEY_FILE as usize) / 24 + 1);
        bytes.truncate(MAX_KEY_FILE as usize + 1);
        std::fs::write(&big.0, &bytes).unwrap();
        let e = read_secret_file(&big.0).unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let checks = Checks::default();
        let e = Verifier::public_key(&big.0, "ES256", &checks)
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&big.0.display().to_string()) && e.contains("larger than"),
            "{e}"
        );
        assert!(!e.contains("secret-"), "{e}");
        let e = Verifier::jwks(&big.0, &checks)
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&big.0.display().to_string()) && e.contains("larger than"),
            "{e}"
        );
        // At the limit it is read (and judged as a secret).
        std::fs::write(&big.0, &bytes[..MAX_KEY_FILE as usize]).unwrap();
        assert_eq!(
            read_secret_file(&big.0).unwrap().len(),
            MAX_KEY_FILE as usize
        );
    }

    /// Review 135, R2: a pipe is how a secret stays out of `ps` and history (`--token-file
    /// <(vault ...)`, `/dev/stdin`); refused, it broke that. It is read, bounded as a file.
    #[test]
    fn a_pipe_is_read_bounded() {
        let (fifo, writer) = fifo_written("fifo", b"s3cret\n".to_vec());
        assert_eq!(read_secret_file(&fifo.0).unwrap(), b"s3cret");
        writer.join().unwrap();
        // 2 MiB written: refused after `MAX_KEY_FILE + 1` bytes read, naming the limit only.
        let big = b"0123456789abcdef-secret-".repeat(2 * (MAX_KEY_FILE as usize) / 24);
        let (fifo, writer) = fifo_written("fifo-big", big);
        let e = read_secret_file(&fifo.0).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        assert!(!e.contains("secret-"), "{e}");
        writer.join().unwrap();
        // A pipe of `<(...)` or `/dev/stdin`, its writer gone: what it holds, without waiting.
        // (`libc::pipe`: `std::io::pipe` is past the workspace's `rust-version`.)
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: room for the two descriptors `pipe` makes, each owned once below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let mut write_end = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[1]) });
        write_end.write_all(b"tok\n").unwrap();
        drop(write_end);
        let path = format!("/dev/fd/{}", read_end.as_raw_fd());
        assert_eq!(read_secret_file(Path::new(&path)).unwrap(), b"tok");
    }

    /// `/dev/zero` last: read whole (without the bound) it takes all the memory it can.
    #[test]
    fn devices_sockets_and_directories_are_refused_before_a_read() {
        let dir = read_secret_file(&std::env::temp_dir()).unwrap_err();
        assert!(dir.to_string().contains("not a regular file"), "{dir}");
        let socket = Scratch::new("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket.0).unwrap();
        assert!(read_secret_file(&socket.0).is_err());
        let e = Verifier::jwks(Path::new("/dev/null"), &Checks::default())
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/null") && e.contains("not a regular file"),
            "{e}"
        );
        let e = read_secret_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
