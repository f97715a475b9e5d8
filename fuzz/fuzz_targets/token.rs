//! Token verification on arbitrary input: raw strings (what a client can put in the query or
//! header), and arbitrary claims correctly signed with the server's secret (so the fuzzer gets
//! past the signature to the claim checks). Asserts: no panic, and what verifies obeys the claim
//! rules. (That refusals never quote the token holds by type, `AuthError::Invalid` carries a
//! `&'static str`, and is tested with a marker in `server/src/auth_tests.rs`: a "does the
//! message contain the input" check here only teaches libFuzzer to type the message.)
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use quiver_server::auth::{Checks, Verifier, MAX_SUB_BYTES, MAX_TOKEN_BYTES};

const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let checks = Checks {
            leeway: std::time::Duration::from_secs(1),
            audience: None,
            issuer: None,
        };
        Verifier::hs256(SECRET, &checks).expect("valid secret")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        // As received.
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Arbitrary claims, correctly signed.
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        match jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        ) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let now = 1_800_000_000;
    if let Ok(grant) = verifier().verify_at(&token, now) {
        assert!(token.len() <= MAX_TOKEN_BYTES);
        assert!(!grant.user.is_empty() && grant.user.len() <= MAX_SUB_BYTES);
        // Valid while now < exp + leeway (1 s here).
        assert!(grant.expires_at + 1 > now);
    }
});
