//! The log subscriber: human text, or one JSON object per line for log pipelines. Logs go to
//! stderr; colour codes only when stderr is a terminal (in a file or a pipe they are noise).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the message and every field
    /// at the top level.
    Json,
}

/// Dependencies that log credentials below these levels, capped whatever `RUST_LOG` says: the
/// server never logs tokens (PROTOCOL.md §6). wtransport logs each CONNECT's headers at DEBUG,
/// its `:path` holding `?token=`; tungstenite logs each message at TRACE, a `Refresh`'s token
/// included (outside operations audit 2, S2).
const CAPPED: [&str; 3] = [
    "wtransport=info",
    "tungstenite=debug",
    "tokio_tungstenite=debug",
];

/// The filter: `RUST_LOG`, or `default_level` with async-nats at WARN; [`CAPPED`] either way.
fn filter(default_level: &str) -> EnvFilter {
    // async-nats logs every failed connection attempt at INFO, several a second while NATS is
    // away; the server says it once, at WARN, itself (`broker::nats`).
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{default_level},async_nats=warn").into());
    for directive in CAPPED {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(default_level: &str, format: LogFormat) {
    let filter = filter(default_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
