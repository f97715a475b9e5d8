//! Command-line interface: the command tree and dispatch. Each subcommand lives in its own
//! file. Flags override `QUIVER_*` environment variables, which override the config file, which
//! overrides the defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config_cmd::ConfigCommand;
use crate::publish::PubArgs;
use crate::serve::ServeArgs;
use crate::sub::SubArgs;
use crate::token::TokenArgs;

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
    /// Check a configuration before deploying it, or print the annotated defaults.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create (or reuse) the development certificate and print its SHA-256 hash.
    Cert {
        /// The directory (`--cert-dir` too, as `serve` and `token` call it; QUIVER_CERT_DIR as
        /// they read it).
        #[arg(
            long,
            env = "QUIVER_CERT_DIR",
            default_value = "certs",
            alias = "cert-dir"
        )]
        out: PathBuf,
    },
    /// Print a signed JWT (HS256, ES256 or EdDSA), or check one with --check.
    Token(TokenArgs),
    /// Subscribe to rooms and print each publication's payload as a line.
    Sub(SubArgs),
    /// Publish messages (one, --count copies, or stdin's lines) and wait for the server's acks.
    Pub(PubArgs),
    /// Call a method on the application's backend and print its answer.
    Call(crate::call::CallArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The terminal tools read stdin and write stdout through tokio, whose blocking threads
    // may be stuck in a read or a write nobody will complete (a pipe nobody reads, a stdin
    // nobody writes to) once the command is done: dropping the runtime would wait for them
    // for ever (outside audit 122, F1/F2). `serve` keeps the full wait.
    let terminal_tool = !matches!(cli.command, Command::Serve(_));
    // The server logs its life; the terminal tools only their troubles.
    let (default_level, log_format) = match &cli.command {
        Command::Serve(args) => ("info", args.log_format),
        _ => ("warn", crate::logging::LogFormat::Text),
    };
    crate::logging::init(default_level, log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => crate::serve::serve(args).await,
            Command::Config(command) => crate::config_cmd::run(command).await,
            Command::Cert { out } => cert(out).await,
            Command::Token(args) => crate::token::run(args).await,
            Command::Sub(args) => crate::sub::sub(args).await,
            Command::Pub(args) => crate::publish::publish(args).await,
            Command::Call(args) => crate::call::call(args).await,
        }
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A client error carries a server's or a backend's text: escaped for the terminal.
            // (Local errors, such as `config check`'s list of problems, keep their lines.)
            let text = describe(&e);
            if e.chain().any(|c| c.is::<quiver_client::ClientError>()) {
                eprintln!("quiver: {}", crate::terminal::safe(&text));
            } else {
                eprintln!("quiver: {text}");
            }
            ExitCode::FAILURE
        }
    };
    if terminal_tool {
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    } else {
        drop(runtime);
    }
    code
}

/// `e` and its causes, joined by ": " as `{:#}` joins them, without a cause whose text the
/// message before it already carries: most of our error types (and some dependencies') write
/// their source into their own message, so `{:#}` printed the same reason twice.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// SIGTERM and SIGINT (Ctrl-C), each delivery once. The handlers are installed when this is
/// made, not when it is first waited on: `serve` makes it before printing its ready line, so a
/// SIGTERM sent right after that line starts the drain instead of ending the process by the
/// signal's default action. Once installed the default action never comes back (tokio's
/// handlers stay for the process's life), so whoever wants a later signal must wait for it
/// here: `serve` waits for a second one during its drain.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next SIGTERM or SIGINT, by name.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn wait(s: &mut Option<tokio::signal::unix::Signal>) {
                let received = match s {
                    Some(s) => s.recv().await.is_some(),
                    None => false,
                };
                // `None` only once the handler is gone, which it never is: no signal then.
                if !received {
                    std::future::pending::<()>().await;
                }
            }
            if self.term.is_none() && self.interrupt.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
            tokio::select! {
                () = wait(&mut self.term) => "SIGTERM",
                () = wait(&mut self.interrupt) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

async fn cert(out: PathBuf) -> Result<()> {
    let identity = quiver_server::tls::dev_identity(&out).await?;
    crate::terminal::outln!("{}", identity.hash_hex());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `#[error("outer: {source}")]` derives.
    #[derive(Debug)]
    struct Embeds {
        source: std::io::Error,
    }

    impl std::fmt::Display for Embeds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "outer: {}", self.source)
        }
    }

    impl std::error::Error for Embeds {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_reason_is_printed_once() {
        let io = || std::io::Error::other("disk on fire");
        // A type that writes its source into its message: once.
        let e = anyhow::Error::new(Embeds { source: io() });
        assert_eq!(describe(&e), "outer: disk on fire");
        // Context that does not: the chain, as `{:#}` prints it.
        let e = anyhow::Error::new(io()).context("reading x");
        assert_eq!(describe(&e), "reading x: disk on fire");
    }
}
