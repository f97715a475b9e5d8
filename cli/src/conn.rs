//! Connection flags shared by `quiver sub` and `quiver pub`.

use std::path::PathBuf;

use anyhow::{bail, Result};
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
    /// JWT; default: a development token for tenant "demo" signed with the development secret.
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Pin the server certificate by SHA-256 (hex): as browsers pin, only a certificate valid
    /// for 14 days or less (else "UnknownIssuer"); default: the development certificate in
    /// --cert-dir when it exists, else the system's roots.
    #[arg(long)]
    cert_hash: Option<String>,
    #[arg(long, default_value = "certs")]
    cert_dir: PathBuf,
}

/// The development tenant: the same one the demo page uses, so `quiver pub chat.lobby hi` shows
/// up in the dashboard's chat.
const DEV_TENANT: &str = "demo";

impl ConnArgs {
    /// Whether the token is the one given (`--token`, `QUIVER_TOKEN`): it cannot be replaced,
    /// so once the server says it expired (3002), reconnecting with it is pointless.
    pub fn token_is_fixed(&self) -> bool {
        self.token.is_some()
    }

    /// Connects; a refusal of a given token that has expired says so (over WebTransport the
    /// refusal carries no reason the client can read: outside audit 26, `pub` with an expired
    /// token said only that the server refused the session, or timed out).
    pub async fn connect(&self) -> Result<Client> {
        let config = self.client_config().await?;
        Client::connect(config).await.map_err(|e| {
            let error = anyhow::Error::from(e);
            match self.token.as_deref().and_then(expired_for) {
                Some(ago) => error.context(format!(
                    "the token given with --token (or QUIVER_TOKEN) expired {} ago; run again with a fresh one",
                    humantime::format_duration(ago)
                )),
                None => error,
            }
        })
    }

    pub async fn client_config(&self) -> Result<ClientConfig> {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let urls = list(&self.url);
        let ws_urls = list(&self.ws_url);
        if urls.is_empty() && self.transport != Transport::WebSocket {
            bail!("--url names no server");
        }
        if ws_urls.is_empty() && self.transport == Transport::WebSocket {
            bail!("--ws-url names no server");
        }
        let token = match &self.token {
            Some(t) => token_fixed(t.clone()),
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
        "the token given with --token (or QUIVER_TOKEN) expired; run again with a fresh one"
    )
}
