//! `quiver config check` and `quiver config init`.

use crate::terminal::outln;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use quiver_server::{Config, StartError};

use crate::keys::KeySource;
use crate::serve::ConfigFlags;

// Parsed once per run: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file together with the QUIVER_* environment and the flags, as `quiver
    /// serve` would load them; exit non-zero naming the key at fault.
    Check(CheckArgs),
    /// Print the default configuration, every key annotated.
    Init,
}

#[derive(Args)]
pub struct CheckArgs {
    /// TOML config file (the one you would pass to `quiver serve --config`).
    file: Option<PathBuf>,
    #[command(flatten)]
    flags: ConfigFlags,
    /// Fail on warnings too: unknown QUIVER_* variables, a certificate that has expired or
    /// expires within 7 days, an empty allowed_origins or no quotas.per_address.max_connections
    /// on a production server.
    #[arg(long)]
    deny_warnings: bool,
}

pub async fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Init => {
            crate::terminal::out(format_args!("{}", quiver_server::config::DEFAULT_TOML));
            Ok(())
        }
        ConfigCommand::Check(args) => check(args).await,
    }
}

async fn check(args: CheckArgs) -> Result<()> {
    let secret_flag = args.flags.gives_secret();
    let (config, mut warnings) = crate::serve::load(args.file.as_deref(), args.flags)?;
    // What `quiver serve` would refuse at start beyond the values: keys and certificates that
    // cannot be read or used.
    let keys = KeySource::of(&config, secret_flag)?;
    keys.verifier(&config).await?;
    warnings.extend(check_certificate(&config).await?);
    for warning in &warnings {
        eprintln!("quiver: warning: {warning}");
    }
    if args.deny_warnings && !warnings.is_empty() {
        bail!("{} warning(s) and --deny-warnings", warnings.len());
    }
    let source = match &args.file {
        Some(file) => file.display().to_string(),
        None => "no file".into(),
    };
    outln!("configuration OK ({source}, environment and flags)");
    outln!("  token key: {}", keys.describe());
    outln!("  WebTransport: udp {}", config.listen);
    outln!("  HTTP: tcp {}", config.http);
    // Served only with a real certificate, on `listen`'s address unless `https` moves it.
    if config.cert.is_some() && config.key.is_some() {
        outln!(
            "  HTTPS (wss, SSE, the API over TLS): tcp {}",
            config.https.unwrap_or(config.listen)
        );
    }
    match &config.nats {
        // Credentials in the URL never printed.
        Some(nats) => outln!(
            "  broker: NATS {}",
            quiver_server::broker::nats::redacted_urls(&nats.url)
        ),
        None => outln!("  broker: embedded (a single instance)"),
    }
    // The way calls and hooks take (PROTOCOL.md §11.2): `rpc.url` whenever it is set.
    match (&config.rpc.url, &config.nats) {
        // User info in `rpc.url` is refused before this; its query may still hold a
        // credential (outside audit 105, F4), shown without it as a JWKS URL is.
        (Some(url), _) => outln!(
            "  calls and hooks: HTTP POST to {}",
            quiver_server::config::shown_url(url)
        ),
        (None, Some(_)) => {
            outln!("  calls and hooks: NATS requests on quiver.<tenant>.rpc.* and .hook.*")
        }
        (None, None) => outln!("  calls and hooks: no backend (calls are answered unavailable)"),
    }
    Ok(())
}

/// Loads the certificate as `serve` would; a warning when it has expired or expires soon.
async fn check_certificate(config: &Config) -> Result<Option<String>> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let loaded = quiver_server::tls::load_pem(cert, key)
                .await
                .with_context(|| format!("cert {} / key {}", cert.display(), key.display()))?;
            let now = quiver_server::auth::unix_now() as i64;
            Ok(quiver_server::tls::expiry_warning(loaded.expires_at, now)
                .map(|warning| format!("cert {}: {warning}", cert.display())))
        }
        (None, None) if config.dev_mode() || config.tls.self_signed => Ok(None),
        (None, None) => bail!("{}", StartError::SelfSignedNotAllowed),
        _ => bail!("{}", StartError::CertWithoutKey),
    }
}
