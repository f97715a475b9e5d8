//! Idle sessions: open S of them as fast as the server takes them (TLS handshake included for
//! QUIC), report the connect rate, then hold them until stdin closes so the orchestrator can
//! read the server's memory.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::target::quic::ClientPool;
use crate::target::Spec;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct ConnParams {
    /// Idle sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Longest time to hold them if stdin never closes.
    #[arg(long, default_value_t = 60.0)]
    pub hold: f64,
    /// Keep TLS sessions for resumption (QUIC targets): each client endpoint's later
    /// handshakes resume when the server issues tickets (a returning client). Off: every
    /// handshake is a full one (a first visit).
    #[arg(long, default_value_t = false)]
    #[serde(default)]
    pub resume: bool,
    /// Connects in flight at once.
    #[arg(long, default_value_t = super::CONNECT_CONCURRENCY)]
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    super::CONNECT_CONCURRENCY
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnResult {
    pub params: ConnParams,
    pub connect_secs: f64,
    pub sessions_per_sec: f64,
    /// Filled in by the orchestrator: server RSS growth divided by sessions.
    #[serde(default)]
    pub server_rss_per_session_bytes: Option<f64>,
}

/// Opens the sessions, prints the result as one JSON line, holds until stdin closes.
pub async fn run(spec: &Spec, p: &ConnParams) -> Result<()> {
    let pool = Arc::new(ClientPool::with_resumption(
        spec.cert_hash().ok(),
        p.sessions,
        p.resume,
    )?);
    let (subs, took) =
        super::connect_subscribers_at(spec, &pool, p.sessions, p.concurrency, |_| Vec::new())
            .await?;
    let result = ConnResult {
        params: p.clone(),
        connect_secs: took.as_secs_f64(),
        sessions_per_sec: p.sessions as f64 / took.as_secs_f64().max(1e-9),
        server_rss_per_session_bytes: None,
    };
    println!("{}", serde_json::to_string(&result)?);
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs_f64(p.hold),
        stdin.read_to_end(&mut sink),
    )
    .await;
    drop(subs);
    pool.close().await;
    Ok(())
}
