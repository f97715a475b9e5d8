//! The log subscriber: human text, or one JSON object per line for log pipelines. Logs go to
//! stderr; colour codes only when stderr is a terminal (in a file or a pipe they are noise).

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
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
/// included (outside operations audit 2, S2). A cap is a second filter that must also pass,
/// so it never raises a level `RUST_LOG` set lower (as a directive would: `tungstenite=debug`
/// turned its DEBUG lines on at the default level, a regression audit found).
fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("wtransport", LevelFilter::INFO)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG)
}

/// The levels: `RUST_LOG`, or `default_level` with async-nats at WARN.
fn filter(default_level: &str) -> EnvFilter {
    // async-nats logs every failed connection attempt at INFO, several a second while NATS is
    // away; the server says it once, at WARN, itself (`broker::nats`).
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{default_level},async_nats=warn").into())
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`; [`caps`] hold either way.
pub fn init(default_level: &str, format: LogFormat) {
    let registry = tracing_subscriber::registry()
        .with(filter(default_level))
        .with(caps());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .init(),
    }
}
