//! `quiver serve`, and the configuration flags it shares with `quiver config check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use quiver_server::{Config, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ConfigFlags,
    /// Don't run the development demo publisher.
    #[arg(long)]
    no_demo: bool,
    /// Log format on stderr: text, or json (one object per line, for log pipelines).
    #[arg(long, value_enum, default_value = "text", env = "QUIVER_LOG_FORMAT")]
    pub log_format: crate::logging::LogFormat,
}

/// Flags that override the configuration (file < environment < these).
#[derive(Args)]
pub struct ConfigFlags {
    /// UDP address for WebTransport [default: [::]:4433]
    // Clap's help text, not Markdown: the brackets are an IPv6 address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TCP address for health, metrics and the demo [default: 127.0.0.1:8080]
    #[arg(long)]
    http: Option<SocketAddr>,
    /// PEM certificate chain (with --key); default: a generated development certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert's certificate (with --cert).
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
    /// NATS server URL(s), comma-separated: run as one instance of a cluster instead of on the
    /// embedded broker.
    #[arg(long)]
    nats: Option<String>,
}

impl ConfigFlags {
    /// Whether `--jwt-secret` gives the secret.
    pub fn gives_secret(&self) -> bool {
        self.jwt_secret.is_some()
    }

    pub fn apply(self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.http {
            config.http = v;
        }
        if let Some(v) = self.cert_dir {
            config.cert_dir = v;
        }
        if self.cert.is_some() {
            config.cert = self.cert;
            config.key = self.key;
        }
        // A secret flag replaces a secret from the file or environment, in whichever form.
        if let Some(secret) = self.jwt_secret {
            config.auth.jwt_secret = Some(secret.into());
            config.auth.jwt_secret_file = None;
        }
        if let Some(path) = self.jwt_secret_file {
            config.auth.jwt_secret_file = Some(path);
            config.auth.jwt_secret = None;
        }
        if self.self_signed {
            config.tls.self_signed = true;
        }
        if let Some(url) = self.nats {
            match &mut config.nats {
                Some(nats) => nats.url = url,
                None => config.nats = Some(quiver_server::config::NatsConfig::new(url)),
            }
        }
    }
}

/// Where a configuration came from, for its errors: every one names the file (outside audit 55,
/// I2: `quiver token --config missing.toml` said only "No such file or directory").
pub fn config_source(file: Option<&Path>, flags: bool) -> String {
    let rest = if flags {
        "environment and flags"
    } else {
        "environment"
    };
    match file {
        Some(file) => format!("configuration ({}, {rest})", file.display()),
        None => format!("configuration ({rest})"),
    }
}

/// File, environment and flags merged and validated, with warnings about what was ignored.
pub fn load(file: Option<&Path>, flags: ConfigFlags) -> Result<(Config, Vec<String>)> {
    let checked = Config::load_checked(file).map_err(|e| {
        anyhow::anyhow!(
            "{}:\n  {}",
            config_source(file, false),
            e.problems.join("\n  ")
        )
    })?;
    let mut config = checked.config;
    flags.apply(&mut config);
    config.validate().map_err(|e| {
        anyhow::anyhow!(
            "{}:\n  {}",
            config_source(file, true),
            e.replace('\n', "\n  ")
        )
    })?;
    if config.dev_mode() {
        let vars: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        if let Some(problem) =
            quiver_server::config::key_meant_but_unset(vars.iter().map(String::as_str))
        {
            anyhow::bail!("{}:\n  {problem}", config_source(file, false));
        }
    }
    let mut warnings = checked.warnings;
    warnings.extend(config.warnings());
    Ok((config, warnings))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    // With JSON logs stderr is for the log pipeline: every line an object, no human extras.
    let human = args.log_format == crate::logging::LogFormat::Text;
    let (mut config, warnings) = load(args.config.as_deref(), args.flags)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if args.no_demo {
        config.demo = false;
    }
    raise_descriptor_limit();
    let drain = config.timeouts.drain;
    let server = Server::start(config).await?;
    // Before the ready line: from then on SIGTERM drains.
    let mut signals = crate::cli::Signals::install();
    let ready = serde_json::json!({
        "webtransport": server.webtransport_addr().to_string(),
        "http": server.http_addr.to_string(),
        "https": server.https_addr.map(|a| a.to_string()),
        "cert_sha256": hex::encode(server.cert_sha256()),
        "dev": server.is_dev(),
    });
    // One machine-readable line for scripts and tests, then the human version.
    println!("QUIVER_READY {ready}");
    if human {
        eprintln!(
            "quiver: WebTransport on https://{}/v1, HTTP on http://{}",
            server.webtransport_addr(),
            server.http_addr
        );
        if let Some(https) = server.https_addr {
            eprintln!("quiver: HTTPS (wss, SSE, the API) on https://{https}");
        }
        eprintln!(
            "quiver: certificate SHA-256 {}",
            hex::encode(server.cert_sha256())
        );
    }
    let signal = signals.next().await;
    // Through the log in every format (a JSON log said nothing of it: outside audit 116, F6);
    // in text it is on stderr like the lines above.
    tracing::info!(
        signal,
        sessions = server.session_count(),
        deadline_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
        "draining: a second SIGTERM or Ctrl-C exits without waiting"
    );
    tokio::spawn(exit_on_second_signal(signals, server.broker().clone()));
    server.shutdown().await;
    Ok(())
}

/// The exit status after a second signal cut the drain short (128 + SIGINT's number, as a
/// shell reports an interrupted command): not 0, the drain did not finish.
const SECOND_SIGNAL_EXIT: i32 = 130;

/// How long a second signal's exit waits for the broker's `depart`.
const SECOND_SIGNAL_DEPART: Duration = Duration::from_secs(2);

/// During the drain, a second SIGTERM or SIGINT exits at once: an operator pressing Ctrl-C
/// again, or a supervisor sending TERM again, waited for the drain's deadline, up to
/// `timeouts.drain` (1 h at most), or had to SIGKILL (outside audit 116, F5). The sessions
/// still open are not closed one by one, but their presence goes first as at the drain's
/// deadline (`Broker::depart`, within [`SECOND_SIGNAL_DEPART`]), so the other instances list
/// them no more at once rather than after `nats.presence_ttl`.
async fn exit_on_second_signal(
    mut signals: crate::cli::Signals,
    broker: std::sync::Arc<dyn quiver_server::broker::Broker>,
) {
    let signal = signals.next().await;
    tracing::warn!(
        signal,
        "second signal: exiting without waiting for the drain"
    );
    if tokio::time::timeout(SECOND_SIGNAL_DEPART, broker.depart())
        .await
        .is_err()
    {
        tracing::warn!(
            waited_ms = SECOND_SIGNAL_DEPART.as_millis() as u64,
            "presence departure unfinished: the other instances list this one's members until \
             they expire"
        );
    }
    std::process::exit(SECOND_SIGNAL_EXIT);
}

/// Raises the process's soft descriptor limit to its hard one, as nats-server (the Go runtime)
/// does: a default soft limit of 1,024 would cap the server's TCP connections far below
/// `max_sessions` (the server refuses connections past what the limit leaves and says so at
/// start: `quiver_server::tcp::ceiling`). The hard limit is the operator's.
fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the descriptor limit"),
    }
}
