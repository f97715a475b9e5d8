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

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(default_level: &str, format: LogFormat) {
    // async-nats logs every failed connection attempt at INFO, several a second while NATS is
    // away; the server says it once, at WARN, itself (`broker::nats`).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{default_level},async_nats=warn").into());
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
