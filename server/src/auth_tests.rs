//! Tests of token verification, with real keys: HS256 secrets, ES256 and EdDSA keys generated
//! here (rcgen), and jsonwebtoken's RSA test key (`server/tests/data/rsa-private.pem`; ring
//! cannot generate RSA keys).

use super::*;
use base64::Engine;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const RSA_PRIVATE: &str = include_str!("../tests/data/rsa-private.pem");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(exp: u64) -> Claims {
    Claims {
        sub: "alice".into(),
        tenant: "acme".into(),
        exp,
        subscribe: vec!["chat.>".into()],
        publish: vec!["chat.lobby".into()],
    }
}

fn hs(checks: &Checks) -> Verifier {
    Verifier::hs256(SECRET, checks).unwrap()
}

/// Signs arbitrary JSON claims with HS256 (for claims `Claims` cannot express).
fn sign_json(value: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &value,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn accepts_valid_and_applies_patterns() {
    let v = hs(&Checks::default());
    let t = sign_hs256(SECRET, &claims(unix_now() + 60)).unwrap();
    let g = v.verify(&t).unwrap();
    assert_eq!(g.tenant.as_str(), "acme");
    assert!(g.may_subscribe(&RoomName::parse("chat.x").unwrap()));
    assert!(!g.may_subscribe(&RoomName::parse("news").unwrap()));
    assert!(g.may_publish(&RoomName::parse("chat.lobby").unwrap()));
    assert!(!g.may_publish(&RoomName::parse("chat.other").unwrap()));
}

#[test]
fn refuses_bad_tokens() {
    let v = hs(&Checks::default());
    assert!(matches!(v.verify(""), Err(AuthError::Missing)));
    assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
    let expired = sign_hs256(SECRET, &claims(unix_now() - 3600)).unwrap();
    assert!(matches!(v.verify(&expired), Err(AuthError::Expired(_))));
    let wrong = sign_hs256(
        b"another-secret-of-32-bytes-or-more",
        &claims(unix_now() + 60),
    );
    assert!(matches!(
        v.verify(&wrong.unwrap()),
        Err(AuthError::Invalid("bad signature"))
    ));
    let mut bad = claims(unix_now() + 60);
    bad.tenant = "a.b".into();
    let t = sign_hs256(SECRET, &bad).unwrap();
    assert!(matches!(
        v.verify(&t),
        Err(AuthError::Claim {
            claim: "tenant",
            ..
        })
    ));
}

/// Issue 10, defect 3: an empty (or short) HS256 secret started a production server.
#[test]
fn short_hs256_secrets_are_refused() {
    for len in [0, 1, 16, MIN_HS256_SECRET - 1] {
        let secret = vec![b'x'; len];
        match Verifier::hs256(&secret, &Checks::default()) {
            Err(KeyError::ShortSecret { len: got }) => assert_eq!(got, len),
            Err(e) => panic!("{len} bytes: {e}"),
            Ok(_) => panic!("a {len}-byte secret was accepted"),
        }
    }
    assert!(Verifier::hs256(&[b'x'; MIN_HS256_SECRET], &Checks::default()).is_ok());
}

/// Issue 10, defect 5: tokens up to 5 s past `exp` were accepted. The leeway is now a setting,
/// 0 by default, and a token is refused from the second `exp` names.
#[test]
fn expiry_is_strict_and_leeway_is_explicit() {
    let exp = 1_000_000;
    let token = sign_hs256(SECRET, &claims(exp)).unwrap();
    let strict = hs(&Checks::default());
    assert!(strict.verify_at(&token, exp - 1).is_ok());
    assert!(matches!(
        strict.verify_at(&token, exp),
        Err(AuthError::Expired(_))
    ));
    assert!(matches!(
        strict.verify_at(&token, exp + 2),
        Err(AuthError::Expired(_))
    ));
    // What a Refresh meets: a token that expired 2 s ago, verified now.
    let two_seconds_ago = sign_hs256(SECRET, &claims(unix_now() - 2)).unwrap();
    assert!(matches!(
        strict.verify(&two_seconds_ago),
        Err(AuthError::Expired(_))
    ));

    let lenient = hs(&Checks {
        leeway: Duration::from_secs(5),
        ..Checks::default()
    });
    assert!(lenient.verify_at(&token, exp + 4).is_ok());
    assert!(matches!(
        lenient.verify_at(&token, exp + 5),
        Err(AuthError::Expired(_))
    ));
    assert!(matches!(
        Verifier::hs256(
            SECRET,
            &Checks {
                leeway: MAX_LEEWAY + Duration::from_secs(1),
                ..Checks::default()
            }
        ),
        Err(KeyError::Leeway(_))
    ));
}

#[test]
fn not_before_is_checked() {
    let v = hs(&Checks::default());
    let mut c = serde_json::to_value(claims(unix_now() + 600)).unwrap();
    c["nbf"] = (unix_now() + 300).into();
    assert!(matches!(
        v.verify(&sign_json(c.clone())),
        Err(AuthError::Claim { claim: "nbf", .. })
    ));
    c["nbf"] = (unix_now() - 1).into();
    assert!(v.verify(&sign_json(c)).is_ok());
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let checks = Checks {
        audience: Some("quiver".into()),
        issuer: Some("https://idp.example".into()),
        ..Checks::default()
    };
    let v = hs(&checks);
    let with_iss = |aud: Option<serde_json::Value>, iss: Option<serde_json::Value>| {
        let mut c = serde_json::to_value(claims(unix_now() + 60)).unwrap();
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        if let Some(iss) = iss {
            c["iss"] = iss;
        }
        v.verify(&sign_json(c))
    };
    let with = |aud, iss: Option<&str>| with_iss(aud, iss.map(Into::into));
    let idp = Some("https://idp.example");
    assert!(with(Some("quiver".into()), idp).is_ok());
    assert!(with(Some(serde_json::json!(["other", "quiver"])), idp).is_ok());
    for (name, result, claim) in [
        ("wrong aud", with(Some("other".into()), idp), "aud"),
        ("no aud", with(None, idp), "aud"),
        (
            "wrong iss",
            with(Some("quiver".into()), Some("https://evil")),
            "iss",
        ),
        ("no iss", with(Some("quiver".into()), None), "iss"),
        // `iss` is one string (RFC 7519 §4.1.1): an array holding the issuer is not it.
        (
            "iss array",
            with_iss(
                Some("quiver".into()),
                Some(serde_json::json!(["https://evil", "https://idp.example"])),
            ),
            "iss",
        ),
        (
            "iss array of one",
            with_iss(
                Some("quiver".into()),
                Some(serde_json::json!(["https://idp.example"])),
            ),
            "iss",
        ),
    ] {
        match result {
            Err(AuthError::Claim { claim: got, .. }) => assert_eq!(got, claim, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // An `aud` of the wrong type is told the rule whole, not only "required" (outside audit 52,
    // F1: a numeric `aud` read as a missing one).
    for aud in [serde_json::json!(5), serde_json::json!(["quiver", 5])] {
        match with(Some(aud.clone()), idp) {
            Err(e) => assert_eq!(
                e.to_string(),
                "invalid claim aud: required, a string or an array of strings",
                "{aud}"
            ),
            Ok(_) => panic!("{aud} accepted"),
        }
    }
    // Without the settings, `aud` and `iss` are not looked at.
    let mut c = serde_json::to_value(claims(unix_now() + 60)).unwrap();
    c["aud"] = "anything".into();
    assert!(hs(&Checks::default()).verify(&sign_json(c)).is_ok());
}

#[test]
fn claim_rules() {
    let v = hs(&Checks::default());
    let exp = unix_now() + 60;
    let base = || serde_json::to_value(claims(exp)).unwrap();
    let refused = |c: serde_json::Value, claim: &str| match v.verify(&sign_json(c)) {
        Err(AuthError::Claim { claim: got, .. }) => assert_eq!(got, claim),
        other => panic!("{claim}: {other:?}"),
    };
    let mut c = base();
    c["sub"] = "".into();
    refused(c, "sub");
    let mut c = base();
    c["sub"] = "u".repeat(MAX_SUB_BYTES + 1).into();
    refused(c, "sub");
    let mut c = base();
    c["sub"] = "u".repeat(MAX_SUB_BYTES).into();
    assert!(v.verify(&sign_json(c)).is_ok());
    let mut c = base();
    c["exp"] = serde_json::json!(exp as f64 + 0.5);
    refused(c, "exp");
    let mut c = base();
    c["exp"] = exp.to_string().into();
    refused(c, "exp");
    let mut c = base();
    c.as_object_mut().unwrap().remove("exp");
    refused(c, "exp");
    // `nbf` is optional, but an integer when present, like `exp`, and told in `exp`'s words
    // (outside audit 52, F1: "wrong type" for some of them).
    for nbf in [
        serde_json::json!(unix_now() as f64 - 60.5),
        (unix_now() - 60).to_string().into(),
        serde_json::json!(-5),
    ] {
        let mut c = base();
        c["nbf"] = nbf.clone();
        refused(c.clone(), "nbf");
        let told = v.verify(&sign_json(c)).map(drop).unwrap_err().to_string();
        assert_eq!(
            told, "invalid claim nbf: must be a non-negative integer (Unix seconds)",
            "{nbf}"
        );
    }
    let mut c = base();
    c["nbf"] = serde_json::json!(unix_now() - 60);
    assert!(v.verify(&sign_json(c)).is_ok());
    let mut c = base();
    c.as_object_mut().unwrap().remove("tenant");
    refused(c, "tenant");
    let mut c = base();
    c["tenant"] = "acme/evil".into();
    refused(c, "tenant");
    // Refusals name the rule, never quote the token: not even the offending character.
    for (claim, value) in [
        ("tenant", serde_json::json!("acmé")),
        ("subscribe", serde_json::json!(["chat.é"])),
    ] {
        let mut c = base();
        c[claim] = value;
        let text = v.verify(&sign_json(c)).unwrap_err().to_string();
        assert!(
            text.contains("invalid character") && !text.contains('é'),
            "{text}"
        );
    }
    let mut c = base();
    c["subscribe"] = serde_json::json!(["chat.>", "a..b"]);
    refused(c, "subscribe");
    let mut c = base();
    c["publish"] = "chat.lobby".into();
    refused(c, "publish");
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let v = hs(&Checks::default());
    let mut c = serde_json::to_value(claims(unix_now() + 60)).unwrap();
    c["pad"] = "p".repeat(MAX_TOKEN_BYTES).into();
    let big = sign_json(c);
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert!(matches!(
        v.verify(&big),
        Err(AuthError::Invalid("longer than 4096 bytes"))
    ));
}

/// A refusal names the problem but never quotes the token: what the server logs is safe.
#[test]
fn errors_never_quote_the_token() {
    let v = hs(&Checks::default());
    let marker = "SENSITIVE-MARKER";
    let mut cases = Vec::new();
    for field in ["exp", "sub", "tenant", "subscribe", "publish"] {
        let mut c = serde_json::to_value(claims(unix_now() + 60)).unwrap();
        c[field] = serde_json::json!({ marker: marker });
        cases.push(sign_json(c));
    }
    let mut c = serde_json::to_value(claims(unix_now() + 60)).unwrap();
    c["subscribe"] = serde_json::json!([format!("{marker}..")]);
    cases.push(sign_json(c));
    cases.push(format!(
        "{}.{}.x",
        b64(marker.as_bytes()),
        b64(marker.as_bytes())
    ));
    cases.push(format!("{}.e30.", b64(br#"{"alg":"SENSITIVE-MARKER"}"#)));
    for token in cases {
        let err = v.verify(&token).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(marker), "{text}");
        assert!(!text.contains(&token), "{text}");
    }
}

#[test]
fn public_key_algorithms() {
    let dir = temp_dir("pem");
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
        let v = Verifier::public_key(&public, name, &Checks::default()).unwrap();
        assert_eq!(v.verify(&token).unwrap().user, "alice", "{name}");
        // An HS256 token is refused by a public-key verifier, whatever its secret.
        let hs = sign_hs256(SECRET, &claims(unix_now() + 60)).unwrap();
        assert!(v.verify(&hs).is_err(), "{name}");
    }
    assert!(matches!(
        Verifier::public_key(&dir.join("ES256.pub.pem"), "HS512", &Checks::default()),
        Err(KeyError::Algorithm(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_alg_none() {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(&serde_json::to_vec(&claims(unix_now() + 60)).unwrap());
    let v = hs(&Checks::default());
    assert!(v.verify(&format!("{header}.{body}.")).is_err());
}

/// `none`, a missing `alg` and names no library knows are refused as the algorithm they are,
/// not as malformed JSON (outside audit); a signature made with the secret does not help.
#[test]
fn every_unaccepted_algorithm_is_named_as_such() {
    let body = b64(&serde_json::to_vec(&claims(unix_now() + 60)).unwrap());
    let v = hs(&Checks::default());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"alg":"foo"}"#,
        r#"{"alg":""}"#,
        r#"{"alg":7}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":"HS512"}"#,
    ] {
        let signing_input = format!("{}.{body}", b64(header.as_bytes()));
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        let refused = v.verify(&format!("{signing_input}.{signature}"));
        assert!(
            matches!(refused, Err(AuthError::Invalid("algorithm not accepted"))),
            "{header}: {refused:?}"
        );
    }
}

/// A signing key for the JWKS tests, with the public JWK an identity provider would publish.
struct TestKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn rcgen_key(kid: &'static str, alg: Algorithm) -> TestKey {
    let (rcgen_alg, crv) = match alg {
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
        _ => (&rcgen::PKCS_ED25519, "Ed25519"),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let raw = pair.public_key_raw();
    let (encoding, jwk) = match alg {
        // Uncompressed point: 0x04, x, y.
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            serde_json::json!({"kty": "EC", "crv": crv, "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "use": "sig"}),
        ),
        _ => (
            EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            serde_json::json!({"kty": "OKP", "crv": crv, "x": b64(raw), "kid": kid, "alg": "EdDSA"}),
        ),
    };
    TestKey {
        kid,
        alg,
        encoding,
        jwk,
    }
}

fn rsa_key(kid: &'static str) -> TestKey {
    let encoding = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = kid.into();
    TestKey {
        kid,
        alg: Algorithm::RS256,
        encoding,
        jwk,
    }
}

fn sign_with(key: &TestKey, alg: Algorithm, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims(unix_now() + 60), &key.encoding).unwrap()
}

fn write_jwks(dir: &Path, name: &str, keys: Vec<serde_json::Value>) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    path
}

#[test]
fn jwks_chooses_the_key_by_kid() {
    let dir = temp_dir("jwks");
    let keys = [
        rsa_key("rsa-1"),
        rcgen_key("ec-1", Algorithm::ES256),
        rcgen_key("ed-1", Algorithm::EdDSA),
    ];
    // An encryption key in the set is skipped, as identity providers publish those too.
    let mut published: Vec<_> = keys.iter().map(|k| k.jwk.clone()).collect();
    let mut enc = keys[1].jwk.clone();
    enc["kid"] = "enc-1".into();
    enc["use"] = "enc".into();
    published.push(enc);
    let path = write_jwks(&dir, "jwks.json", published);
    let v = Verifier::jwks(&path, &Checks::default()).unwrap();
    for key in &keys {
        let token = sign_with(key, key.alg, Some(key.kid));
        assert_eq!(v.verify(&token).unwrap().user, "alice", "{}", key.kid);
        // The same token naming another key's kid fails the signature (or the algorithm).
        for other in keys.iter().filter(|o| o.kid != key.kid) {
            let token = sign_with(key, key.alg, Some(other.kid));
            assert!(v.verify(&token).is_err(), "{} as {}", key.kid, other.kid);
        }
    }
    assert!(matches!(
        v.verify(&sign_with(&keys[1], Algorithm::ES256, None)),
        Err(AuthError::Invalid(m)) if m.contains("kid")
    ));
    assert!(matches!(
        v.verify(&sign_with(&keys[1], Algorithm::ES256, Some("nope"))),
        Err(AuthError::Invalid("unknown kid"))
    ));
    assert!(v
        .verify(&sign_with(&keys[1], Algorithm::ES256, Some("enc-1")))
        .is_err());
    // Algorithm confusion: an HS256 token "signed" with a published key's kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(unix_now() + 60),
        &EncodingKey::from_secret(RSA_PRIVATE.as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        v.verify(&confused),
        Err(AuthError::Invalid("algorithm not accepted"))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jwks_files_are_checked_at_load() {
    let dir = temp_dir("jwks-bad");
    let ec = rcgen_key("ec-1", Algorithm::ES256);
    let cases = [
        ("no kid", {
            let mut k = ec.jwk.clone();
            k.as_object_mut().unwrap().remove("kid");
            vec![k]
        }),
        (
            "symmetric",
            vec![serde_json::json!({"kty": "oct", "k": b64(SECRET), "kid": "hs"})],
        ),
        ("wrong alg", {
            let mut k = ec.jwk.clone();
            k["alg"] = "RS256".into();
            vec![k]
        }),
        ("duplicate kid", vec![ec.jwk.clone(), ec.jwk.clone()]),
        ("empty", vec![]),
    ];
    for (name, keys) in cases {
        let path = write_jwks(&dir, "bad.json", keys);
        assert!(
            matches!(
                Verifier::jwks(&path, &Checks::default()),
                Err(KeyError::Jwks { .. })
            ),
            "{name}"
        );
    }
    std::fs::write(dir.join("bad.json"), "not json").unwrap();
    assert!(Verifier::jwks(&dir.join("bad.json"), &Checks::default()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn call_claim_is_default_deny_and_pattern_checked() {
    let v = hs(&Checks::default());
    let exp = unix_now() + 60;
    let order = RoomName::parse("order.place").unwrap();
    // No `call` claim: no method at all.
    let g = v
        .verify(&sign_hs256(SECRET, &claims(exp)).unwrap())
        .unwrap();
    assert!(!g.may_call(&order));
    let mut c = serde_json::to_value(claims(exp)).unwrap();
    c["call"] = serde_json::json!(["order.*"]);
    let g = v.verify(&sign_json(c)).unwrap();
    assert!(g.may_call(&order));
    assert!(!g.may_call(&RoomName::parse("order.admin.drop").unwrap()));
    assert!(!g.may_call(&RoomName::parse("billing.pay").unwrap()));
    for bad in [serde_json::json!("order.*"), serde_json::json!(["a..b"])] {
        let mut c = serde_json::to_value(claims(exp)).unwrap();
        c["call"] = bad;
        assert!(matches!(
            v.verify(&sign_json(c)),
            Err(AuthError::Claim { claim: "call", .. })
        ));
    }
}

// Token cache (`token_cache.rs`): a hit skips the signature check, never the expiry.

#[test]
fn cached_tokens_are_refused_past_their_expiry() {
    let exp = 1_000_000;
    let token = sign_hs256(SECRET, &claims(exp)).unwrap();
    let v = hs(&Checks::default());
    assert!(v.verify_at(&token, exp - 10).is_ok());
    assert_eq!(v.cached_tokens(), 1, "a verified token is remembered");
    assert!(v.verify_at(&token, exp - 1).is_ok(), "a hit before exp");
    assert!(matches!(
        v.verify_at(&token, exp),
        Err(AuthError::Expired(_))
    ));
    assert_eq!(v.cached_tokens(), 0, "an expired entry is dropped");
    assert!(matches!(
        v.verify_at(&token, exp + 100),
        Err(AuthError::Expired(_))
    ));
    // With leeway, the same rule as an uncached verification.
    let lenient = hs(&Checks {
        leeway: Duration::from_secs(5),
        ..Checks::default()
    });
    assert!(lenient.verify_at(&token, exp - 1).is_ok());
    assert!(lenient.verify_at(&token, exp + 4).is_ok());
    assert!(matches!(
        lenient.verify_at(&token, exp + 5),
        Err(AuthError::Expired(_))
    ));
}

/// The cache key is the whole token: a cached token's signature on other claims is refused.
#[test]
fn a_cached_signature_on_other_claims_is_refused() {
    let v = hs(&Checks::default());
    let token = sign_hs256(SECRET, &claims(unix_now() + 60)).unwrap();
    assert!(v.verify(&token).is_ok());
    let mut forged_claims = claims(unix_now() + 60);
    forged_claims.tenant = "evil".into();
    let forged_body = sign_hs256(b"another-secret-another-secret-!!", &forged_claims).unwrap();
    let (header_and_claims, _) = forged_body.rsplit_once('.').unwrap();
    let (_, signature) = token.rsplit_once('.').unwrap();
    let forged = format!("{header_and_claims}.{signature}");
    assert!(matches!(
        v.verify(&forged),
        Err(AuthError::Invalid("bad signature"))
    ));
}

#[test]
fn the_token_cache_is_bounded_and_can_be_off() {
    let v = hs(&Checks::default()).with_token_cache(10);
    for i in 0..50 {
        let mut c = claims(unix_now() + 60);
        c.sub = format!("user-{i}");
        assert!(v.verify(&sign_hs256(SECRET, &c).unwrap()).is_ok());
        assert!(v.cached_tokens() <= 10);
    }
    let off = hs(&Checks::default()).with_token_cache(0);
    let token = sign_hs256(SECRET, &claims(unix_now() + 60)).unwrap();
    assert!(off.verify(&token).is_ok());
    assert_eq!(off.cached_tokens(), 0);
}

/// A key removed from the key set takes its cached tokens with it; a reload that changes
/// nothing keeps them.
#[test]
fn a_key_set_reload_empties_the_cache() {
    let dir = temp_dir("jwks-cache");
    let (a, b) = (
        rcgen_key("ec-a", Algorithm::ES256),
        rcgen_key("ec-b", Algorithm::ES256),
    );
    let path = write_jwks(&dir, "jwks.json", vec![a.jwk.clone(), b.jwk.clone()]);
    let v = Verifier::jwks(&path, &Checks::default()).unwrap();
    let token = sign_with(&a, Algorithm::ES256, Some(a.kid));
    assert!(v.verify(&token).is_ok());
    assert_eq!(v.cached_tokens(), 1);
    // The same keys again (a reload on schedule, or after a made-up `kid`), even written
    // another way, change nothing and keep the cache (outside audit 98, F7: anyone could empty
    // it every 10 s).
    let both = std::fs::read(&path).unwrap();
    assert_eq!(v.replace_jwks("test", &both).unwrap(), 2);
    assert_eq!(v.cached_tokens(), 1);
    let reordered = serde_json::to_string_pretty(&serde_json::json!({
        "keys": [b.jwk.clone(), a.jwk.clone()]
    }))
    .unwrap();
    assert_eq!(v.replace_jwks("test", reordered.as_bytes()).unwrap(), 2);
    assert_eq!(v.cached_tokens(), 1);
    let only_b = serde_json::json!({ "keys": [b.jwk] }).to_string();
    v.replace_jwks("test", only_b.as_bytes()).unwrap();
    assert_eq!(v.cached_tokens(), 0);
    assert!(matches!(
        v.verify(&token),
        Err(AuthError::Invalid("unknown kid"))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token verified with the old key set while a reload replaces it is not remembered past
/// the reload: it is refused as soon as the reload has returned (outside audit 66, F1: one
/// stored just after the reload emptied the cache was accepted until the next reload).
#[test]
fn a_token_verified_during_a_reload_is_refused_after_it() {
    let dir = temp_dir("jwks-race");
    let (a, b) = (
        rcgen_key("ec-a", Algorithm::ES256),
        rcgen_key("ec-b", Algorithm::ES256),
    );
    let path = write_jwks(&dir, "jwks.json", vec![a.jwk.clone(), b.jwk.clone()]);
    let v = std::sync::Arc::new(Verifier::jwks(&path, &Checks::default()).unwrap());
    let both = serde_json::json!({ "keys": [a.jwk, b.jwk] }).to_string();
    let only_b = serde_json::json!({ "keys": [b.jwk] }).to_string();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(a.kid.to_owned());
    for round in 0..100 {
        v.replace_jwks("test", both.as_bytes()).unwrap();
        let tokens: Vec<String> = (0..4)
            .map(|i| {
                let mut c = claims(unix_now() + 60);
                c.sub = format!("user-{round}-{i}");
                jsonwebtoken::encode(&header, &c, &a.encoding).unwrap()
            })
            .collect();
        let start = std::sync::Arc::new(std::sync::Barrier::new(tokens.len() + 1));
        let verifying: Vec<_> = tokens
            .iter()
            .cloned()
            .map(|token| {
                let (v, start) = (v.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let _ = v.verify(&token);
                })
            })
            .collect();
        start.wait();
        v.replace_jwks("test", only_b.as_bytes()).unwrap();
        for thread in verifying {
            thread.join().unwrap();
        }
        for token in &tokens {
            assert!(
                v.verify(token).is_err(),
                "round {round}: a token of the removed key is accepted after the reload"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A claim or header parameter named twice is refused, whichever it is (serde would keep the
/// last `tenant`, an issuer reading the first would not); so is any `crit` header.
#[test]
fn repeated_members_and_crit_headers_are_refused() {
    let sign = |header: &str, body: &str| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(body.as_bytes()));
        let key = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{signature}")
    };
    let exp = unix_now() + 60;
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let body = |extra: &str| {
        format!(r#"{{"sub":"alice","tenant":"acme","exp":{exp},"subscribe":[">"]{extra}}}"#)
    };
    let v = hs(&Checks::default());
    assert!(v.verify(&sign(header, &body(""))).is_ok(), "the control");
    for (header, body) in [
        (header, body(r#","tenant":"bravo""#)),
        (header, body(r#","subscribe":["x"]"#)),
        (header, body(r#","jti":"a","jti":"b""#)),
        (r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, body("")),
        (r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, body("")),
    ] {
        let err = v.verify(&sign(header, &body)).unwrap_err();
        assert!(
            matches!(err, AuthError::Invalid(_)),
            "{header} {body}: {err}"
        );
    }
}

/// A `jti` must be a string the backend API's `revoke` takes, 1 to 256 bytes: a number, or an
/// empty or longer string, could never be revoked (outside audit 98, F2: the last two were
/// accepted).
#[test]
fn a_jti_that_revoke_could_not_name_is_refused() {
    let v = hs(&Checks::default());
    let exp = unix_now() + 60;
    for jti in [
        serde_json::json!(123),
        serde_json::json!(["a"]),
        serde_json::json!(null),
        serde_json::json!(""),
        serde_json::json!("j".repeat(257)),
    ] {
        let t = sign_json(
            serde_json::json!({"sub": "alice", "tenant": "acme", "exp": exp, "jti": jti}),
        );
        assert!(
            matches!(v.verify(&t), Err(AuthError::Claim { claim: "jti", .. })),
            "{jti}"
        );
    }
    let t =
        sign_json(serde_json::json!({"sub": "alice", "tenant": "acme", "exp": exp, "jti": "123"}));
    assert_eq!(v.verify(&t).unwrap().jti.as_deref(), Some("123"));
    let longest = "j".repeat(256);
    let t = sign_json(
        serde_json::json!({"sub": "alice", "tenant": "acme", "exp": exp, "jti": longest}),
    );
    assert_eq!(v.verify(&t).unwrap().jti, Some(longest));
}

/// A key set whose provider also publishes keys the server cannot use (P-384, a symmetric key,
/// an `alg` it does not take, a key without `kid`, a 1024-bit RSA key) loads the keys it can
/// use, skipping the others, at start and on a reload: a new key is accepted and a removed one
/// refused (outside audit 98, F4: one such key failed the whole set, so the old set stayed,
/// the new key was never accepted and the removed one went on verifying).
#[test]
fn keys_the_server_cannot_use_are_skipped_not_fatal() {
    let dir = temp_dir("jwks-skip");
    let (a, b) = (
        rcgen_key("ec-a", Algorithm::ES256),
        rcgen_key("ec-b", Algorithm::ES256),
    );
    let p384 = serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": b64(&[1; 48]), "y": b64(&[2; 48]), "use": "sig", "alg": "ES384"});
    let oct = serde_json::json!({"kty": "oct", "k": b64(SECRET), "kid": "hs"});
    let mut wrong_alg = b.jwk.clone();
    wrong_alg["kid"] = "wrong-alg".into();
    wrong_alg["alg"] = "ES384".into();
    let mut no_kid = b.jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let weak_rsa = serde_json::json!({"kty": "RSA", "kid": "rsa-1024", "n": b64(&[0xc5; 128]),
        "e": "AQAB", "use": "sig", "alg": "RS256"});
    let unusable = [p384, oct, wrong_alg, no_kid, weak_rsa];
    let with = |keys: &[&serde_json::Value]| {
        let mut all: Vec<serde_json::Value> = keys.iter().map(|k| (*k).clone()).collect();
        all.extend(unusable.iter().cloned());
        serde_json::json!({ "keys": all }).to_string()
    };
    let path = dir.join("jwks.json");
    std::fs::write(&path, with(&[&a.jwk])).unwrap();
    let v = Verifier::jwks(&path, &Checks::default()).unwrap();
    let token_a = sign_with(&a, Algorithm::ES256, Some(a.kid));
    let token_b = sign_with(&b, Algorithm::ES256, Some(b.kid));
    assert!(v.verify(&token_a).is_ok());
    assert!(v.verify(&token_b).is_err());
    // The provider rotates: b published, a removed, the unusable keys still there.
    assert_eq!(
        v.replace_jwks("test", with(&[&b.jwk]).as_bytes()).unwrap(),
        1
    );
    assert!(v.verify(&token_b).is_ok(), "the new key");
    assert!(
        matches!(v.verify(&token_a), Err(AuthError::Invalid("unknown kid"))),
        "the removed key"
    );
    // Nothing usable at all is still an error, saying why each key was skipped.
    match v.replace_jwks("test", with(&[]).as_bytes()) {
        Err(KeyError::Jwks { reason, .. }) => {
            for why in [
                "no kid",
                "unsupported key type",
                "symmetric",
                "ES384",
                "1024 bits",
            ] {
                assert!(reason.contains(why), "{why}: {reason}");
            }
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(
        v.verify(&token_b).is_ok(),
        "a failed reload keeps the old set"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An RSA public key shorter than 2048 bits is refused at start, as a short HS256 secret is
/// (outside audit 98, F5: a 512-bit key verified tokens); the 2048-bit test key is taken.
#[test]
fn a_weak_rsa_public_key_is_refused() {
    let weak = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rsa-1024-public.pem"
    );
    match Verifier::public_key(Path::new(weak), "RS256", &Checks::default()) {
        Err(KeyError::WeakKey(why)) => assert!(why.contains("1024 bits"), "{why}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let strong = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rsa-public.pem");
    let v = Verifier::public_key(Path::new(strong), "RS256", &Checks::default()).unwrap();
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(unix_now() + 60),
        &key,
    )
    .unwrap();
    assert_eq!(v.verify(&token).unwrap().user, "alice");
}
