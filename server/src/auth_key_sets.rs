//! Which published keys the server verifies with: a JWK set's signing keys by `kid`, and the
//! floor on RSA keys (a JWK's, or `auth.public_key`'s).
//!
//! An identity provider's set often holds keys the server cannot use beside the one its tokens
//! are signed with (P-384, PS256, RS384, a symmetric key): those are skipped, each named in a
//! warning when the set is loaded (a reload of the same document changes nothing and says
//! nothing), and the rest are loaded. One such key failed the whole document, so
//! the old set was kept: a key published after it was never accepted, and a key removed from
//! the set (after a compromise, say) went on verifying fresh tokens (outside audit 98, F4).
//! A set with no key the server can use is still an error (the old set stays; at start the
//! server refuses to start), and so is a `kid` named twice (which key would it be?).

use std::collections::HashMap;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

use super::{validation, Checks, KeyError, Keys};

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A: 1024-bit RSA is disallowed for
/// signatures; a 512-bit modulus is factored with modest means). Short HS256 secrets are
/// refused for the same reason: whoever can find the key can sign any token (outside audit
/// 98, F5: a 512-bit key verified tokens).
pub const MIN_RSA_BITS: usize = 2048;

/// Parses a JWKS document into keys by `kid`: RSA keys verify RS256, P-256 keys ES256,
/// Ed25519 keys EdDSA (a key's `alg`, when present, must be that one). Encryption keys
/// (`"use": "enc"`) are passed over in silence; any other key the server cannot use (no `kid`,
/// another type, curve or `alg`, an RSA key under [`MIN_RSA_BITS`], a symmetric key) is
/// skipped, named with why in [`KeySet::skipped`].
pub(super) fn jwks_keys(
    source: &str,
    text: &[u8],
    checks: &Checks,
    leeway_secs: u64,
) -> Result<KeySet, KeyError> {
    let jwks_err = |reason: String| KeyError::Jwks {
        path: source.to_owned(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| jwks_err(format!("not a JWK set: {e}")))?;
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    let mut used = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            skipped.push(format!("key {i}: no kid"));
            continue;
        };
        let key = match usable(jwk) {
            Ok(key) => key,
            Err(reason) => {
                skipped.push(format!("key {kid:?}: {reason}"));
                continue;
            }
        };
        let (key, alg) = key;
        used.push((kid.clone(), serde_json::to_vec(jwk).unwrap_or_default()));
        if keys
            .insert(kid.clone(), (key, validation(alg, checks, leeway_secs)))
            .is_some()
        {
            return Err(jwks_err(format!("kid {kid:?} appears twice")));
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        return Err(jwks_err(format!("no signing key the server can use{why}")));
    }
    // The keys used, whatever order or form the document gives them in.
    used.sort();
    let mut digest = Sha256::new();
    for (kid, jwk) in &used {
        for part in [kid.as_bytes(), jwk] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    skipped.sort();
    let mut skipped_digest = Sha256::new();
    for reason in &skipped {
        skipped_digest.update((reason.len() as u64).to_be_bytes());
        skipped_digest.update(reason.as_bytes());
    }
    Ok(KeySet {
        keys: Keys::ByKid(keys),
        skipped,
        digest: digest.finalize().into(),
        skipped_digest: skipped_digest.finalize().into(),
    })
}

/// A key set as read from a document.
pub(super) struct KeySet {
    pub keys: Keys,
    /// The keys left out, each with why: warned about when the set is loaded.
    pub skipped: Vec<String>,
    /// A digest of the keys used (their `kid`s and JWKs, in `kid` order): a reload whose keys
    /// are the same changes nothing, whatever the document's bytes (an identity provider may
    /// write the same set another way each time).
    pub digest: [u8; 32],
    /// A digest of what was skipped and why: a key the server cannot use newly published
    /// beside the same usable ones changes nothing but is warned about (review 102, F1: a
    /// rotation to an unusable key went unexplained, its tokens refused as an unknown kid).
    pub skipped_digest: [u8; 32],
}

impl KeySet {
    pub fn warn_skipped(&self, source: &str) {
        for reason in &self.skipped {
            tracing::warn!(source, reason = reason.as_str(), "JWKS key skipped");
        }
    }
}

/// The key and the one algorithm it verifies, or why the server cannot use it.
fn usable(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    let alg = jwk_algorithm(jwk)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    if alg == Algorithm::RS256 {
        check_rsa_size(&key)?;
    }
    Ok((key, alg))
}

/// The one algorithm a JWK verifies.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let by_key = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Symmetric keys do not belong in a published key set: anyone holding it could sign.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are refused".into()),
        _ => return Err("unsupported key type or curve (use RSA, P-256 or Ed25519)".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(by_key),
        Some(KeyAlgorithm::RS256) if by_key == Algorithm::RS256 => Ok(by_key),
        Some(KeyAlgorithm::ES256) if by_key == Algorithm::ES256 => Ok(by_key),
        Some(KeyAlgorithm::EdDSA) if by_key == Algorithm::EdDSA => Ok(by_key),
        Some(other) => Err(format!(
            "alg {other:?} is not accepted for this key (RS256, ES256 or EdDSA)"
        )),
    }
}

/// Refuses an RSA key whose modulus is shorter than [`MIN_RSA_BITS`] (keys of other kinds
/// pass).
pub(super) fn check_rsa_size(key: &DecodingKey) -> Result<(), String> {
    let bits = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => bit_length(n),
        // `from_rsa_pem` keeps the PKCS#1 `RSAPublicKey`.
        DecodingKeyKind::SecretOrDer(der) => match rsa::RsaPublicKey::from_pkcs1_der(der) {
            Ok(key) => key.n().bits(),
            Err(e) => return Err(format!("not an RSA public key: {e}")),
        },
    };
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required (a shorter one \
             can be factored, and then anyone can sign)"
        ));
    }
    Ok(())
}

/// Bits in a big-endian unsigned integer, leading zeros not counted.
fn bit_length(be: &[u8]) -> usize {
    let Some(first) = be.iter().position(|b| *b != 0) else {
        return 0;
    };
    (be.len() - first) * 8 - be[first].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::bit_length;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f; 256]), 2047);
    }
}
