//! `quiver token`: sign a token the server will accept, or check why it would refuse one.
//! It signs only with a key that exists (flag, configuration, or the development secret the
//! server already created) and refuses claims the server would refuse.

use crate::terminal::outln;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quiver_server::auth::{check_claims, sign_hs256, unix_now, AuthError, Claims};
use quiver_server::Config;

use crate::keys::KeySource;

#[derive(Args)]
pub struct TokenArgs {
    /// Check a token (`-`: read it from stdin) against the configuration and say why the server
    /// would refuse it, instead of signing one.
    #[arg(long, value_name = "JWT", conflicts_with_all = ["tenant", "user", "private_key"])]
    check: Option<String>,
    /// The tenant the token is for (`tenant` claim: ASCII letters, digits, `-` and `_`).
    #[arg(long, required_unless_present = "check")]
    tenant: Option<String>,
    /// The user the token is for (`sub` claim, 1 to 256 bytes; other members see it as the
    /// user id).
    #[arg(long, required_unless_present = "check")]
    user: Option<String>,
    /// Room patterns the token may subscribe to (repeatable).
    #[arg(long, num_args = 1..)]
    subscribe: Vec<String>,
    /// Room patterns the token may publish to (repeatable).
    #[arg(long, num_args = 1..)]
    publish: Vec<String>,
    /// Method patterns the token may `quiver call` (repeatable).
    #[arg(long, num_args = 1..)]
    call: Vec<String>,
    /// Lifetime, e.g. 30s, 10m, 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// `aud` claim [default: the configuration's auth.audience]
    #[arg(long)]
    audience: Option<String>,
    /// `iss` claim [default: the configuration's auth.issuer]
    #[arg(long)]
    issuer: Option<String>,
    /// `jti` claim: a token id the revocation API can name.
    #[arg(long)]
    jti: Option<String>,
    /// Config file whose key signs (auth.jwt_secret or auth.jwt_secret_file) and checks. The
    /// QUIVER_* environment applies too, as for `quiver serve`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HS256 signing secret: replaces the configuration's key (its audience, issuer and leeway
    /// still apply). Shows in `ps`: prefer --jwt-secret-file or QUIVER_JWT_SECRET_FILE.
    #[arg(long, conflicts_with = "jwt_secret_file")]
    jwt_secret: Option<String>,
    /// File holding the HS256 signing secret (a trailing newline is ignored): replaces the
    /// configuration's key, as --jwt-secret does.
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// PEM private key (PKCS#8) to sign with instead of a secret, with --algorithm.
    #[arg(long, requires = "algorithm")]
    private_key: Option<PathBuf>,
    /// The private key's algorithm.
    #[arg(long, requires = "private_key")]
    algorithm: Option<SigningAlgorithm>,
    /// `kid` header: which key of a key set (auth.jwks_file, auth.jwks_url) verifies the token.
    #[arg(long, requires = "private_key")]
    kid: Option<String>,
    /// Where the development secret is looked for [default: the configuration's cert_dir]
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SigningAlgorithm {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

/// Past this a signed token draws a warning.
const LONG_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

pub async fn run(mut args: TokenArgs) -> Result<()> {
    let mut config = match Config::load_checked(args.config.as_deref()) {
        Ok(checked) => checked.config,
        Err(e) => bail!(
            "{}:\n  {}",
            crate::serve::config_source(args.config.as_deref(), false),
            e.problems.join("\n  ")
        ),
    };
    let secret_flag = args.jwt_secret.is_some();
    if let Some(secret) = args.jwt_secret.take() {
        clear_key_source(&mut config.auth);
        config.auth.jwt_secret = Some(secret.into());
    } else if let Some(path) = args.jwt_secret_file.take() {
        clear_key_source(&mut config.auth);
        config.auth.jwt_secret_file = Some(path);
    }
    if let Some(dir) = args.cert_dir.take() {
        config.cert_dir = dir;
    }
    let keys = KeySource::of(&config, secret_flag)?;
    match args.check.take() {
        Some(token) => check(&config, &keys, token).await,
        None => sign(&config, &keys, args).await,
    }
}

/// Forgets the configured token key, so the one a flag gives is the only one. Only the key:
/// `audience`, `issuer` and `leeway` are the server's checks whichever key it has, and a token
/// signed or checked without them is one the server refuses (outside audit 111, F4: the whole
/// `[auth]` was reset, so `--jwt-secret-file` signed tokens without the configured `aud` and
/// `iss`, and `--check` passed them).
fn clear_key_source(auth: &mut quiver_server::config::AuthConfig) {
    auth.jwt_secret = None;
    auth.jwt_secret_file = None;
    auth.public_key = None;
    auth.algorithm = None;
    auth.jwks_file = None;
    auth.jwks_url = None;
}

async fn check(config: &Config, keys: &KeySource, token: String) -> Result<()> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim().to_owned()
    } else {
        token
    };
    let verifier = keys
        .verifier(config)
        .await?
        .ok_or_else(|| anyhow!("nothing to check against: {}", keys.describe()))?;
    let claims = unverified_claims(&token);
    let grant = verifier.verify(&token).map_err(|e| {
        // How long ago, from the (unverified) claims: the refusal itself names no value.
        let ago = match (&e, claims.as_ref().and_then(|c| c.get("exp")?.as_u64())) {
            (AuthError::Expired(_), Some(exp)) => format!(
                " ({} ago)",
                humantime::format_duration(Duration::from_secs(unix_now().saturating_sub(exp)))
            ),
            _ => String::new(),
        };
        anyhow!("the server would refuse this token: {e}{ago}")
    })?;
    let left = grant.expires_at.saturating_sub(unix_now());
    outln!(
        "valid: user {:?}, tenant {}, expires in {} (checked with the {})",
        grant.user,
        grant.tenant,
        humantime::format_duration(Duration::from_secs(left)),
        keys.describe()
    );
    // The signature is verified: the claims are the issuer's.
    for claim in ["subscribe", "publish", "call"] {
        let patterns = claims
            .as_ref()
            .and_then(|c| c.get(claim)?.as_array().cloned())
            .unwrap_or_default();
        let patterns: Vec<&str> = patterns.iter().filter_map(|p| p.as_str()).collect();
        outln!("  {claim}: {}", patterns.join(" "));
    }
    // The id revocation acts on (a `jti` of another type is refused above).
    if let Some(jti) = &grant.jti {
        outln!("  jti: {jti:?}");
    }
    Ok(())
}

/// The token's claims, decoded without checking anything.
pub(crate) fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

async fn sign(config: &Config, keys: &KeySource, args: TokenArgs) -> Result<()> {
    let (Some(tenant), Some(user)) = (args.tenant, args.user) else {
        bail!("--tenant and --user are required");
    };
    if args.subscribe.is_empty() && args.publish.is_empty() && args.call.is_empty() {
        bail!("a token without --subscribe, --publish or --call patterns allows nothing");
    }
    if args.ttl.as_secs() == 0 {
        bail!("--ttl must be at least 1s: the token would be expired when issued");
    }
    // Long-lived tokens are the caller's to choose, but said (outside audit 55, I5: a TTL of
    // 2.7 million years passed without a word).
    if args.ttl > LONG_TTL {
        let revocable = if args.jti.is_some() {
            "only revoking its jti takes it back before then"
        } else {
            "it has no --jti, so it cannot be revoked: only a new key ends it"
        };
        eprintln!(
            "quiver: warning: this token is valid for {}: {revocable}",
            humantime::format_duration(args.ttl)
        );
    }
    let claims = Claims {
        sub: user,
        tenant,
        exp: unix_now().saturating_add(args.ttl.as_secs()),
        subscribe: args.subscribe,
        publish: args.publish,
    };
    // The server's own claim checks, so a token it would refuse is never printed.
    check_claims(&claims).map_err(|e| anyhow!("the server would refuse this token: {e}"))?;
    let mut value = serde_json::to_value(&claims)?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("claims are not an object"))?;
    let optional = [
        (
            "aud",
            args.audience.or_else(|| config.auth.audience.clone()),
        ),
        ("iss", args.issuer.or_else(|| config.auth.issuer.clone())),
        ("jti", args.jti),
    ];
    for (claim, v) in optional {
        if let Some(v) = v {
            map.insert(claim.into(), v.into());
        }
    }
    map.insert("iat".into(), unix_now().into());
    if !args.call.is_empty() {
        map.insert("call".into(), serde_json::json!(args.call));
    }
    let token = match (&args.private_key, args.algorithm) {
        (Some(path), Some(alg)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let (key, alg) = match alg {
                SigningAlgorithm::Es256 => (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
                SigningAlgorithm::EdDsa => (EncodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
            };
            let key = key.with_context(|| {
                format!(
                    "{}: not a PKCS#8 PEM private key for {alg:?}",
                    path.display()
                )
            })?;
            let mut header = Header::new(alg);
            header.kid = args.kid.clone();
            jsonwebtoken::encode(&header, &value, &key)?
        }
        _ => {
            let secret = match keys {
                KeySource::Secret { secret, .. } => secret,
                KeySource::Dev {
                    secret: Some(secret),
                    ..
                } => secret,
                KeySource::Dev { path, secret: None } => bail!(
                    "no signing key. Looked for --private-key, --jwt-secret, --jwt-secret-file, \
                     QUIVER_JWT_SECRET, QUIVER_JWT_SECRET_FILE, auth.jwt_secret(_file) in {}, \
                     and the development secret {} (not there: `quiver serve` creates it in \
                     development mode). `quiver token` never creates a secret itself",
                    args.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the configuration (no --config)".into()),
                    path.display()
                ),
                KeySource::Public { setting } => bail!(
                    "the configuration verifies tokens with {setting}, which cannot sign: pass \
                     the matching --private-key and --algorithm"
                ),
            };
            // Refuses a secret the server would refuse (too short) before signing with it.
            keys.verifier(config).await?;
            sign_hs256(secret, &value)?
        }
    };
    // Verify with the key the server would use, when the configuration has one: a token signed
    // with a key the server does not know is refused, not printed. Development mode without a
    // config file has nothing to compare a private key with.
    let must_verify = args.private_key.is_none()
        || args.config.is_some()
        || !matches!(keys, KeySource::Dev { .. });
    if must_verify {
        if let Some(verifier) = keys.verifier(config).await? {
            verifier.verify(&token).map_err(|e| {
                anyhow!(
                    "the server would refuse this token ({}): {e}",
                    keys.describe()
                )
            })?;
        }
    }
    outln!("{token}");
    Ok(())
}
