//! Credentials written into a URL (`nats://user:password@host:4222`): NATS users expect them
//! to authenticate, as every NATS client takes them, so the server uses them (async-nats itself
//! ignores a URL's user info); an `rpc.url` must carry none, since the documented
//! `Authorization: Bearer <rpc.http_secret>` would silently give way to `Basic`. A URL in the
//! configuration is printed (`Debug`, `quiver config check`) without what may be a credential.

use super::{AuthConfig, NatsConfig, Secret};

/// How the URLs in `nats.url` authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsUrlAuth {
    /// `nats://user:password@host`.
    UserPassword { user: String, password: Secret },
    /// `nats://token@host`: a user name alone is a token to NATS clients.
    Token(Secret),
}

impl std::fmt::Debug for NatsUrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Why `nats.url`'s credentials cannot be used. Never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlCredentialsError {
    #[error(
        "nats.url carries credentials and nats.user, nats.password, nats.token or \
         nats.credentials is set too: give them one way only (preferably nats.user / \
         nats.password, which stay out of the URL)"
    )]
    Twice,
    #[error(
        "nats.url: the URLs carry different credentials, and one connection authenticates one \
         way: put them in nats.user / nats.password and leave them out of the URLs"
    )]
    Different,
    #[error("nats.url: URL {index} is not a URL ({reason})")]
    Unparsable { index: usize, reason: String },
    #[error("nats.url: the credentials in URL {index} are not valid percent-encoded UTF-8")]
    Encoding { index: usize },
    #[error(
        "rpc.url carries a user name or password: they would be sent as `Authorization: Basic` \
         instead of the documented `Authorization: Bearer <rpc.http_secret>`; remove them from \
         the URL and set rpc.http_secret"
    )]
    InRpcUrl,
}

impl NatsConfig {
    /// The URLs to connect to, without their credentials, and the credentials they carried
    /// (the same in every URL that has any).
    pub fn connect_urls(&self) -> Result<(Vec<String>, Option<NatsUrlAuth>), UrlCredentialsError> {
        let mut urls = Vec::new();
        let mut auth: Option<NatsUrlAuth> = None;
        for (index, raw) in self.url.split(',').map(str::trim).enumerate() {
            let bare = match split_credentials(raw, index)? {
                None => raw.to_owned(),
                Some((bare, found)) => {
                    match &auth {
                        Some(first) if *first != found => {
                            return Err(UrlCredentialsError::Different)
                        }
                        _ => auth = Some(found),
                    }
                    bare
                }
            };
            // As the broker will read it at connect, so `config check` refuses what `serve`
            // would (`nats://[bad`, `http://host`). Parsed without its credentials: the
            // reason never holds one.
            if let Err(e) = bare.parse::<async_nats::ServerAddr>() {
                return Err(UrlCredentialsError::Unparsable {
                    index,
                    reason: e.to_string(),
                });
            }
            urls.push(bare);
        }
        if auth.is_some()
            && (self.user.is_some()
                || self.password.is_some()
                || self.token.is_some()
                || self.credentials.is_some())
        {
            return Err(UrlCredentialsError::Twice);
        }
        Ok((urls, auth))
    }
}

/// `raw` without its user info, and what the user info said; `None` without user info.
fn split_credentials(
    raw: &str,
    index: usize,
) -> Result<Option<(String, NatsUrlAuth)>, UrlCredentialsError> {
    // NATS URLs may leave out the scheme (`user:pass@host:4222`).
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    // The user info ends at the last `@` before the path.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
        return Ok(None);
    };
    if host.is_empty() {
        return Err(UrlCredentialsError::Unparsable {
            index,
            reason: "no host after the credentials".into(),
        });
    }
    let decode = |s: &str| percent_decode(s).ok_or(UrlCredentialsError::Encoding { index });
    let auth = match userinfo.split_once(':') {
        Some((user, password)) => NatsUrlAuth::UserPassword {
            user: decode(user)?,
            password: decode(password)?.into(),
        },
        None => NatsUrlAuth::Token(decode(userinfo)?.into()),
    };
    let bare_rest = format!("{host}{}", &rest[authority_end..]);
    let bare = if scheme.is_empty() {
        bare_rest
    } else {
        format!("{scheme}://{bare_rest}")
    };
    Ok(Some((bare, auth)))
}

/// `%41` → `A`; `None` for bytes that are no UTF-8 (a `%` not followed by two hex digits
/// stays as it is, as browsers and the `url` crate leave it).
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Refuses user info in `rpc.url` (see the module comment).
pub(super) fn refuse_rpc_url_credentials(url: &str) -> Result<(), UrlCredentialsError> {
    match url::Url::parse(url) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            Err(UrlCredentialsError::InRpcUrl)
        }
        // An unparsable URL has its own message (`RpcConfig::validate`).
        _ => Ok(()),
    }
}

/// `url` as it may be printed: without its user name, password and query, any of which may be
/// a credential (`https://u:pw@idp/jwks?key=…`), the way the key set's URL is logged
/// (`jwks::Source::name`). Something that is no URL is not printed at all.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => crate::jwks::Source::Url(parsed).name(),
        Err(_) => "<not a URL>".into(),
    }
}

// `Debug` is written out for the two sections whose URLs may carry credentials, so that
// printing a `Config` leaks none (README: "Secrets never appear … in a `Debug` print of the
// configuration"; outside audit 105, F4: `nats://user:password@host` and a `jwks_url`'s user
// info or query were printed whole). Every field is named, so a new one must be added here.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            storage,
            user,
            password,
            token,
            credentials,
            ca,
            presence_ttl,
            replicas,
        } = self;
        f.debug_struct("NatsConfig")
            .field("url", &crate::broker::nats::redacted_urls(url))
            .field("storage", storage)
            .field("user", user)
            .field("password", password)
            .field("token", token)
            .field("credentials", credentials)
            .field("ca", ca)
            .field("presence_ttl", presence_ttl)
            .field("replicas", replicas)
            .finish()
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            jwt_secret,
            jwt_secret_file,
            public_key,
            algorithm,
            jwks_file,
            jwks_url,
            jwks_refresh,
            leeway,
            audience,
            issuer,
            token_cache,
        } = self;
        f.debug_struct("AuthConfig")
            .field("jwt_secret", jwt_secret)
            .field("jwt_secret_file", jwt_secret_file)
            .field("public_key", public_key)
            .field("algorithm", algorithm)
            .field("jwks_file", jwks_file)
            .field("jwks_url", &jwks_url.as_deref().map(shown_url))
            .field("jwks_refresh", jwks_refresh)
            .field("leeway", leeway)
            .field("audience", audience)
            .field("issuer", issuer)
            .field("token_cache", token_cache)
            .finish()
    }
}
