//! JWT verification: a token becomes a [`Grant`] (who, which tenant, until when, which rooms), or
//! an [`AuthError`]. Tokens themselves are never logged.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quiver_proto::{Pattern, RoomName, TenantId};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp` when a token is presented.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid claim {claim}: {reason}")]
    Claim { claim: &'static str, reason: String },
}

impl AuthError {
    /// Label for the `reason` of the refused-sessions metric.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::Claim { .. } => "token_claims",
        }
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
    pub user: String,
    pub tenant: TenantId,
    pub expires_at: u64,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
}

impl Grant {
    pub fn may_subscribe(&self, room: &RoomName) -> bool {
        self.subscribe.iter().any(|p| p.matches(room))
    }
    pub fn may_publish(&self, room: &RoomName) -> bool {
        self.publish.iter().any(|p| p.matches(room))
    }
}

/// Verifies tokens with one key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    pub fn public_key(path: &Path, algorithm: &str) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
        let (key, alg) = match algorithm.to_ascii_uppercase().as_str() {
            "ES256" => (DecodingKey::from_ec_pem(&pem)?, Algorithm::ES256),
            "RS256" => (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256),
            "EDDSA" => (DecodingKey::from_ed_pem(&pem)?, Algorithm::EdDSA),
            other => return Err(KeyError::Algorithm(other.to_owned())),
        };
        Ok(Self::new(key, alg))
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        // One algorithm only: a token naming another (or `none`) is refused.
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false;
        Self { key, validation }
    }

    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        grant_from(data.claims)
    }
}

fn grant_from(claims: Claims) -> Result<Grant, AuthError> {
    let claim_err = |claim, reason: String| AuthError::Claim { claim, reason };
    if claims.sub.is_empty() || claims.sub.len() > 256 {
        return Err(claim_err("sub", "must be 1 to 256 bytes".into()));
    }
    let tenant = TenantId::parse(&claims.tenant).map_err(|e| claim_err("tenant", e.to_string()))?;
    let patterns = |list: &[String], claim| {
        list.iter()
            .map(|p| Pattern::parse(p).map_err(|e| claim_err(claim, format!("{p:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Grant {
        subscribe: patterns(&claims.subscribe, "subscribe")?,
        publish: patterns(&claims.publish, "publish")?,
        user: claims.sub,
        tenant,
        expires_at: claims.exp,
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs an HS256 token (for `quiver token`, the demo, and tests).
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            tenant: "acme".into(),
            exp,
            subscribe: vec!["chat.>".into()],
            publish: vec!["chat.lobby".into()],
        }
    }

    #[test]
    fn accepts_valid_and_applies_patterns() {
        let v = Verifier::hs256(b"k");
        let t = sign_hs256(b"k", &claims(unix_now() + 60)).unwrap();
        let g = v.verify(&t).unwrap();
        assert_eq!(g.tenant.as_str(), "acme");
        assert!(g.may_subscribe(&RoomName::parse("chat.x").unwrap()));
        assert!(!g.may_subscribe(&RoomName::parse("news").unwrap()));
        assert!(g.may_publish(&RoomName::parse("chat.lobby").unwrap()));
        assert!(!g.may_publish(&RoomName::parse("chat.other").unwrap()));
    }

    #[test]
    fn refuses_bad_tokens() {
        let v = Verifier::hs256(b"k");
        assert!(matches!(v.verify(""), Err(AuthError::Missing)));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
        let expired = sign_hs256(b"k", &claims(unix_now() - 3600)).unwrap();
        assert!(matches!(v.verify(&expired), Err(AuthError::Expired)));
        let wrong = sign_hs256(b"other", &claims(unix_now() + 60)).unwrap();
        assert!(matches!(v.verify(&wrong), Err(AuthError::Invalid(_))));
        let mut bad = claims(unix_now() + 60);
        bad.tenant = "a.b".into();
        let t = sign_hs256(b"k", &bad).unwrap();
        assert!(matches!(
            v.verify(&t),
            Err(AuthError::Claim {
                claim: "tenant",
                ..
            })
        ));
    }

    #[test]
    fn public_key_algorithms() {
        let dir = std::env::temp_dir().join(format!("quiver-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, alg, rcgen_alg) in [
            ("ES256", Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            ("EdDSA", Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let public = dir.join(format!("{name}.pub.pem"));
            std::fs::write(&public, pair.public_key_pem()).unwrap();
            let private = pair.serialize_pem();
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                _ => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            };
            let token =
                jsonwebtoken::encode(&Header::new(alg), &claims(unix_now() + 60), &key).unwrap();
            let v = Verifier::public_key(&public, name).unwrap();
            assert_eq!(v.verify(&token).unwrap().user, "alice", "{name}");
            // An HS256 token is refused by a public-key verifier, whatever its secret.
            let hs = sign_hs256(b"k", &claims(unix_now() + 60)).unwrap();
            assert!(v.verify(&hs).is_err(), "{name}");
        }
        assert!(matches!(
            Verifier::public_key(&dir.join("ES256.pub.pem"), "HS512"),
            Err(KeyError::Algorithm(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_alg_none() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(serde_json::to_vec(&claims(unix_now() + 60)).unwrap());
        let v = Verifier::hs256(b"k");
        assert!(v.verify(&format!("{header}.{body}.")).is_err());
    }
}
