//! Command-line interface. Flags override `QUIVER_*` environment variables, which override the
//! config file, which overrides the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use quiver_client::{
    parse_cert_hash, token_fixed, token_fn, Client, ClientConfig, SubEvent, Transport, Trust,
};
use quiver_server::auth::{unix_now, Claims};
use quiver_server::{Config, Server};

#[derive(Parser)]
#[command(name = "quiver", version, about = "Realtime pub/sub over WebTransport")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded broker; development mode without a JWT secret).
    Serve(ServeArgs),
    /// Create (or reuse) the development certificate and print its SHA-256 hash.
    Cert {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Print a signed JWT (HS256).
    Token(TokenArgs),
    /// Subscribe to rooms and print each publication's payload as a line.
    Sub(SubArgs),
    /// Publish one message and wait for the server's ack.
    Pub(PubArgs),
    /// Call a method on the application's backend and print its answer.
    Call(call::CallArgs),
}

#[path = "call.rs"]
mod call;

#[derive(Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address for WebTransport [default: [::]:4433]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TCP address for health, metrics and the demo [default: 127.0.0.1:8080]
    #[arg(long)]
    http: Option<SocketAddr>,
    /// PEM certificate chain (with --key); default: a generated development certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where the development certificate and secret live [default: certs]
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// HS256 secret for client tokens, at least 32 bytes (also QUIVER_JWT_SECRET). It shows in
    /// `ps` and shell history: prefer --jwt-secret-file.
    #[arg(long, conflicts_with = "jwt_secret_file")]
    jwt_secret: Option<String>,
    /// File holding the HS256 secret (also QUIVER_JWT_SECRET_FILE).
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// Serve the generated self-signed certificate even with production auth (clients must pin
    /// its hash; see tls.self_signed).
    #[arg(long)]
    self_signed: bool,
    /// Don't run the development demo publisher.
    #[arg(long)]
    no_demo: bool,
    /// NATS server URL(s), comma-separated: run as one instance of a cluster instead of on the
    /// embedded broker.
    #[arg(long)]
    nats: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    user: String,
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
    /// Signing secret; default: QUIVER_JWT_SECRET, else the development secret.
    #[arg(long, env = "QUIVER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the signing secret (a trailing newline is ignored).
    #[arg(long, env = "QUIVER_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    jwt_secret_file: Option<PathBuf>,
    #[arg(long, default_value = "certs")]
    cert_dir: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its life; the terminal tools only their troubles.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Cert { out } => cert(out).await,
            Command::Token(args) => token(args),
            Command::Sub(args) => sub(args).await,
            Command::Pub(args) => publish(args).await,
            Command::Call(args) => call::call(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("loading configuration")?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http {
        config.http = v;
    }
    if let Some(v) = args.cert_dir {
        config.cert_dir = v;
    }
    if args.cert.is_some() {
        config.cert = args.cert;
        config.key = args.key;
    }
    // A secret flag replaces a secret from the file or environment, in whichever form.
    if let Some(secret) = args.jwt_secret {
        config.auth.jwt_secret = Some(secret.into());
        config.auth.jwt_secret_file = None;
    }
    if let Some(path) = args.jwt_secret_file {
        config.auth.jwt_secret_file = Some(path);
        config.auth.jwt_secret = None;
    }
    if args.self_signed {
        config.tls.self_signed = true;
    }
    if args.no_demo {
        config.demo = false;
    }
    if let Some(url) = args.nats {
        match &mut config.nats {
            Some(nats) => nats.url = url,
            None => config.nats = Some(quiver_server::config::NatsConfig::new(url)),
        }
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let server = Server::start(config).await?;
    let ready = serde_json::json!({
        "webtransport": server.webtransport_addr().to_string(),
        "http": server.http_addr.to_string(),
        "cert_sha256": hex::encode(server.cert_sha256()),
        "dev": server.is_dev(),
    });
    // One machine-readable line for scripts and tests, then the human version.
    println!("QUIVER_READY {ready}");
    eprintln!(
        "quiver: WebTransport on https://{}/v1, HTTP on http://{}",
        server.webtransport_addr(),
        server.http_addr
    );
    eprintln!(
        "quiver: certificate SHA-256 {}",
        hex::encode(server.cert_sha256())
    );
    shutdown_signal().await;
    eprintln!("quiver: draining");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn cert(out: PathBuf) -> Result<()> {
    let identity = quiver_server::tls::dev_identity(&out).await?;
    println!("{}", identity.hash_hex());
    Ok(())
}

fn token(args: TokenArgs) -> Result<()> {
    let secret = match (args.jwt_secret, args.jwt_secret_file) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(path)) => quiver_server::auth::read_secret_file(&path)
            .with_context(|| format!("reading {}", path.display()))?,
        (None, None) => quiver_server::dev_secret(&args.cert_dir)?,
    };
    if args.subscribe.is_empty() && args.publish.is_empty() && args.call.is_empty() {
        bail!("a token without --subscribe, --publish or --call patterns allows nothing");
    }
    let claims = Claims {
        sub: args.user,
        tenant: args.tenant,
        exp: unix_now() + args.ttl.as_secs(),
        subscribe: args.subscribe,
        publish: args.publish,
    };
    println!("{}", call::sign_with_call(&secret, &claims, &args.call)?);
    Ok(())
}

#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Rooms to subscribe to.
    #[arg(required = true)]
    rooms: Vec<String>,
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    room: String,
    message: String,
}

#[derive(Args)]
struct ConnArgs {
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
    /// Pin the server certificate by SHA-256 (hex); default: the development certificate in
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
    async fn client_config(&self) -> Result<ClientConfig> {
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
                let secret = quiver_server::dev_secret(&self.cert_dir).context(
                    "no --token given and no development secret (is the server in development mode?)",
                )?;
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
                        call::sign_with_call(&secret, &claims, &[">".into()])
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

async fn sub(args: SubArgs) -> Result<()> {
    let client = Client::connect(args.conn.client_config().await?).await?;
    if let Some(transport) = client.transport() {
        // stdout carries only payloads; this is for the person watching.
        eprintln!("quiver: connected over {transport}");
    }
    let mut subs = Vec::new();
    for room in &args.rooms {
        subs.push(
            client
                .subscribe(room)
                .await
                .with_context(|| format!("subscribe {room}"))?,
        );
    }
    let mut events = futures::stream::select_all(subs);
    let mut stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            _ = shutdown_signal() => break,
            event = events.next() => event,
        };
        match event {
            Some(SubEvent::Publication { payload, .. }) => {
                use std::io::Write;
                // One line per publication, flushed, so pipes see it at once.
                let mut line = payload.to_vec();
                line.push(b'\n');
                stdout.write_all(&line)?;
                stdout.flush()?;
            }
            Some(SubEvent::Resubscribed { recovery }) => {
                let over = client.transport().map(|t| t.as_str()).unwrap_or("?");
                eprintln!("quiver: reconnected over {over} ({recovery:?})");
            }
            Some(SubEvent::Joined { member }) => eprintln!("quiver: {} joined", member.user),
            Some(SubEvent::Left { member }) => eprintln!("quiver: {} left", member.user),
            Some(SubEvent::Ended { code, reason }) => {
                client.close().await;
                bail!("subscription ended by the server: {reason} ({code})");
            }
            None => break,
        }
    }
    client.close().await;
    Ok(())
}

async fn publish(args: PubArgs) -> Result<()> {
    let client = Client::connect(args.conn.client_config().await?).await?;
    let result = client
        .publish_ack(&args.room, args.message.into_bytes())
        .await;
    client.close().await;
    result.with_context(|| format!("publish to {}", args.room))?;
    Ok(())
}
