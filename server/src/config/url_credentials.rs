//! Credentials written into a URL (`nats://user:password@host:4222`): NATS users expect them
//! to authenticate, as every NATS client takes them, so the server uses them (async-nats itself
//! ignores a URL's user info); an `rpc.url` must carry none, since the documented
//! `Authorization: Bearer <rpc.http_secret>` would silently give way to `Basic`.

use super::{NatsConfig, Secret};

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
