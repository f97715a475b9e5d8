//! The deny-list of revoked tokens, by `jti` (issue 10): a revoked token opens no session and
//! refreshes none, and the sessions already using it are ended (`registry.rs`).
//!
//! Entries are kept per tenant, keyed by the SHA-256 of the `jti` (any string an identity
//! provider chose), until the token's own expiry: after that the token is refused anyway. With
//! NATS a revocation is broadcast by the control plane (`control.rs`) and stored in the
//! JetStream key-value bucket `quiver_revoked`, so an instance that starts later loads it.

use std::collections::HashMap;
use std::sync::Mutex;

use quiver_proto::TenantId;
use sha2::{Digest, Sha256};

use crate::auth::unix_now;

/// Revocations kept at most; past it the ones expiring soonest are dropped first (they are the
/// least useful), so an operator mistake cannot grow memory without bound.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The key of one revocation: tenant and the `jti`'s digest.
pub fn key(tenant: &TenantId, jti: &str) -> String {
    format!("{tenant}.{}", hex::encode(Sha256::digest(jti.as_bytes())))
}

#[derive(Default)]
pub struct Revocations {
    /// `key()` → expiry (Unix seconds).
    entries: Mutex<HashMap<String, u64>>,
}

impl Revocations {
    /// Records a revocation until `until` (the token's `exp`).
    pub fn insert(&self, key: String, until: u64) {
        let now = unix_now();
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, exp| *exp > now);
            if entries.len() >= MAX_ENTRIES {
                if let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, exp)| **exp)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, until);
    }

    pub fn is_revoked(&self, tenant: &TenantId, jti: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key(tenant, jti))
            .is_some_and(|until| *until > unix_now())
    }
}

/// The `jti` claim of a token that was already verified (so its payload is trusted), without
/// decoding it twice through the verifier.
pub fn token_jti(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Jti {
        jti: Option<String>,
    }
    serde_json::from_slice::<Jti>(&bytes).ok()?.jti
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expiry_and_per_tenant() {
        let r = Revocations::default();
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        r.insert(key(&acme, "t-1"), unix_now() + 60);
        r.insert(key(&acme, "old"), unix_now() - 1);
        assert!(r.is_revoked(&acme, "t-1"));
        assert!(!r.is_revoked(&other, "t-1"), "another tenant's jti is another token");
        assert!(!r.is_revoked(&acme, "old"), "expired tokens need no entry");
        assert!(!r.is_revoked(&acme, "t-2"));
    }

    #[test]
    fn jti_from_a_token_payload() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"u","jti":"abc"}"#));
        assert_eq!(token_jti(&token).as_deref(), Some("abc"));
        let none = format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"u"}"#));
        assert_eq!(token_jti(&none), None);
        assert_eq!(token_jti("garbage"), None);
    }
}
