//! Connection flags shared by `quiver sub`, `quiver pub` and `quiver call`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use quiver_client::{
    parse_cert_hash, token_fixed, token_fn, Client, ClientConfig, ConnectionState, Transport, Trust,
};
use quiver_server::auth::{unix_now, Claims};

#[derive(Args)]
pub struct ConnArgs {
    /// WebTransport URL(s), comma-separated.
    #[arg(long, default_value = "https://localhost:4433/v1")]
    url: String,
    /// WebSocket URL(s), comma-separated: the server's HTTP port, path /v1/ws (wss:// with a
    /// real certificate). The default is `quiver serve`'s development HTTP listener.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    ws_url: String,
    /// webtransport, websocket, or auto: WebTransport, falling back to WebSocket when it fails
    /// or is not up within 2.5 s (blocked UDP).
    #[arg(long, default_value = "auto")]
    transport: Transport,
    /// JWT [env: QUIVER_TOKEN]. It shows in `ps` (for as long as the command runs) and in shell
    /// history: prefer QUIVER_TOKEN or --token-file. Default: a development token for tenant
    /// "demo" signed with the development secret.
    // QUIVER_TOKEN is read by hand, not with clap's `env`: clap counts a value from the
    // environment as given, so an exported QUIVER_TOKEN would make --token-file a conflict
    // instead of overriding it as flags override the environment.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the JWT (a trailing newline is ignored); overrides QUIVER_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Pin the server certificate by SHA-256 (hex): as browsers pin, only a certificate valid
    /// for 14 days or less (else "UnknownIssuer"); default: the development certificate in
    /// --cert-dir when it exists, else the system's roots.
    #[arg(long)]
    cert_hash: Option<String>,
    /// Where `quiver serve` keeps its development secret and certificate (the same
    /// QUIVER_CERT_DIR `serve` and `token` read).
    #[arg(long, env = "QUIVER_CERT_DIR", default_value = "certs")]
    cert_dir: PathBuf,
}

/// The environment variable that gives the token when neither --token nor --token-file does.
const TOKEN_ENV: &str = "QUIVER_TOKEN";

/// The development tenant: the same one the demo page uses, so `quiver pub chat.lobby hi` shows
/// up in the dashboard's chat.
const DEV_TENANT: &str = "demo";

impl ConnArgs {
    /// Whether the token is the one given (`--token`, `--token-file`, `QUIVER_TOKEN`): it
    /// cannot be replaced, so once the server says it expired (3002), reconnecting with it is
    /// pointless. (When one is given but cannot be read, [`Self::connect`] has failed already.)
    pub fn token_is_fixed(&self) -> bool {
        self.token.is_some() || self.token_file.is_some() || std::env::var_os(TOKEN_ENV).is_some()
    }

    /// The token given: `--token`, else `--token-file`, else `QUIVER_TOKEN`; `None` for the
    /// development token.
    fn given_token(&self) -> Result<Option<String>> {
        let (token, source) = if let Some(token) = &self.token {
            (token.clone(), "--token".to_owned())
        } else if let Some(path) = &self.token_file {
            // The file's bytes are the token: read like --jwt-secret-file (editors and `echo`
            // end it with a newline that is not part of it).
            let bytes = quiver_server::auth::read_secret_file(path)
                .with_context(|| format!("--token-file: reading {}", path.display()))?;
            let token = String::from_utf8(bytes).map_err(|_| {
                anyhow!(
                    "--token-file: {} does not hold text (UTF-8)",
                    path.display()
                )
            })?;
            (token, format!("--token-file {}", path.display()))
        } else {
            match std::env::var(TOKEN_ENV) {
                Ok(token) => (token, TOKEN_ENV.to_owned()),
                Err(std::env::VarError::NotPresent) => return Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_ENV} is not UTF-8"),
            }
        };
        // A token is never empty: an empty one is a variable or a file that went wrong, and
        // the server's refusal would not say which.
        if token.trim().is_empty() {
            bail!("{source}: the token is empty");
        }
        Ok(Some(token))
    }

    /// Connects; a refusal of a given token that has expired says so (over WebTransport the
    /// refusal carries no reason the client can read: outside audit 26, `pub` with an expired
    /// token said only that the server refused the session, or timed out).
    pub async fn connect(&self) -> Result<Client> {
        let token = self.given_token()?;
        let config = self.client_config(token.clone()).await?;
        Client::connect(config).await.map_err(|e| {
            // Which servers, over what: the error alone was `timed out` (outside audit 122, F6).
            let error = anyhow::Error::from(e).context(self.tried());
            match token.as_deref().and_then(expired_for) {
                Some(ago) => error.context(format!(
                    "the token given (--token, --token-file or QUIVER_TOKEN) expired {} ago; run again with a fresh one",
                    humantime::format_duration(ago)
                )),
                None => error,
            }
        })
    }

    /// What [`Self::connect`] tries, for its error: `connecting to URL over WebTransport`,
    /// and with `auto` the WebSocket URLs after it.
    fn tried(&self) -> String {
        let wt = format!("{} over WebTransport", list(&self.url).join(", "));
        let ws = format!("{} over WebSocket", list(&self.ws_url).join(", "));
        match self.transport {
            Transport::WebTransport => format!("connecting to {wt}"),
            Transport::WebSocket => format!("connecting to {ws}"),
            _ => format!("connecting to {wt}, then {ws}"),
        }
    }

    async fn client_config(&self, token: Option<String>) -> Result<ClientConfig> {
        let urls = list(&self.url);
        let ws_urls = list(&self.ws_url);
        if urls.is_empty() && self.transport != Transport::WebSocket {
            bail!("--url names no server");
        }
        if ws_urls.is_empty() && self.transport == Transport::WebSocket {
            bail!("--ws-url names no server");
        }
        let token = match token {
            Some(t) => token_fixed(t),
            None => {
                let path = self.cert_dir.join(quiver_server::DEV_SECRET_FILE);
                let Some(secret) = crate::keys::read_dev_secret(&path)? else {
                    bail!(
                        "no --token given and no development secret at {} (run where `quiver \
                         serve` runs in development mode, or pass its --cert-dir, or a --token)",
                        path.display()
                    );
                };
                // A fresh development token on every (re)connect and refresh.
                token_fn(move || {
                    let secret = secret.clone();
                    async move {
                        let claims = Claims {
                            sub: "cli".into(),
                            tenant: DEV_TENANT.into(),
                            exp: unix_now() + 3600,
                            subscribe: vec![">".into()],
                            publish: vec![">".into()],
                        };
                        // The development token may call any method too.
                        crate::call::sign_with_call(&secret, &claims, &[">".into()])
                            .map_err(|e| e.to_string())
                    }
                })
            }
        };
        let dev_cert = self.cert_dir.join(quiver_server::tls::DEV_CERT_FILE);
        let trust = match &self.cert_hash {
            Some(hash) => Trust::CertHashes(vec![parse_cert_hash(hash)?]),
            None if dev_cert.exists() => {
                Trust::CertHashes(vec![quiver_server::tls::pem_cert_hash(&dev_cert).await?])
            }
            None => Trust::System,
        };
        let mut config = ClientConfig::new(String::new(), token)
            .with_trust(trust)
            .with_transport(self.transport);
        config.urls = urls;
        config.ws_urls = ws_urls;
        Ok(config)
    }
}

/// A comma-separated list of URLs.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long ago `token` expired, by its own `exp` (not verified: only to explain a refusal).
fn expired_for(token: &str) -> Option<std::time::Duration> {
    let exp = crate::token::unverified_claims(token)?
        .get("exp")?
        .as_u64()?;
    let now = quiver_server::auth::unix_now();
    (exp <= now).then(|| std::time::Duration::from_secs(now - exp))
}

/// Whether the session ended because its token expired (3002) while that token is the fixed
/// one given on the command line: it stays expired, and every reconnect would be refused.
pub fn fixed_token_expired(state: &ConnectionState, fixed: bool) -> bool {
    fixed
        && matches!(state, ConnectionState::Disconnected { code, .. }
            if *code == quiver_client::CloseCode::TokenExpired.as_u16())
}

/// The error a command ends with when [`fixed_token_expired`].
pub fn fixed_token_expired_error() -> anyhow::Error {
    anyhow::anyhow!(
        "the token given (--token, --token-file or QUIVER_TOKEN) expired; run again with a fresh one"
    )
}
