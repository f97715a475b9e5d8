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
///
/// No level here is above what `filter` lets through at most (`most`): the subscriber tells
/// tracing and the `log` crate the most verbose level any of its filters might pass, the
/// highest of them all, and a cap at TRACE made every `log::trace!` of tungstenite (several per
/// WebSocket frame) reach the subscriber to be refused there: about 3 % of the server's CPU
/// in many rooms over WebSocket. Under that level a `log` call stops at one comparison.
fn caps(most: LevelFilter) -> Targets {
    Targets::new()
        .with_default(most)
        .with_target("wtransport", LevelFilter::INFO.min(most))
        .with_target("tungstenite", LevelFilter::DEBUG.min(most))
        .with_target("tokio_tungstenite", LevelFilter::DEBUG.min(most))
}

/// The levels: `RUST_LOG`, or `default_level` with async-nats at WARN.
fn filter(default_level: &str) -> EnvFilter {
    // async-nats logs every failed connection attempt at INFO, several a second while NATS is
    // away; the server says it once, at WARN, itself (`broker::nats`).
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{default_level},async_nats=warn").into())
}

/// The most verbose level `filter` may let through (TRACE when it cannot say).
fn most_verbose(filter: &EnvFilter) -> LevelFilter {
    tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(filter)
        .unwrap_or(LevelFilter::TRACE)
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`; [`caps`] hold either way.
pub fn init(default_level: &str, format: LogFormat) {
    let filter = filter(default_level);
    let most = most_verbose(&filter);
    let registry = tracing_subscriber::registry().with(filter).with(caps(most));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::Layer;

    #[test]
    fn caps_never_raise_the_most_verbose_level() {
        for (directives, most) in [
            ("warn", LevelFilter::WARN),
            ("info,async_nats=warn", LevelFilter::INFO),
            ("trace", LevelFilter::TRACE),
        ] {
            let filter = EnvFilter::new(directives);
            assert_eq!(most_verbose(&filter), most, "{directives}");
            let caps = caps(most_verbose(&filter));
            // What tracing and the `log` crate are told: no more than RUST_LOG's level.
            assert_eq!(
                Layer::<tracing_subscriber::Registry>::max_level_hint(&caps),
                Some(most),
                "{directives}"
            );
        }
        // At TRACE the credentials' caps still hold.
        let caps = caps(LevelFilter::TRACE);
        assert!(caps.would_enable("tungstenite::protocol", &Level::DEBUG));
        assert!(!caps.would_enable("tungstenite::protocol", &Level::TRACE));
        assert!(!caps.would_enable("wtransport::driver", &Level::DEBUG));
        assert!(caps.would_enable("quiver_server", &Level::TRACE));
    }
}
