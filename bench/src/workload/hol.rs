//! Head-of-line blocking: one subscriber session subscribed to a busy room and a quiet room; a
//! publisher session per room. Under packet loss, does the quiet room wait for the busy room's
//! retransmissions? (It should not when each room has its own QUIC stream.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ns;
use crate::recorder::{self, Latency, Recorder, Totals};
use crate::target::quic::ClientPool;
use crate::target::{Publisher, Spec, Subscriber};

pub const BUSY: usize = 0;
pub const QUIET: usize = 1;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct HolParams {
    /// Busy room publications per second.
    #[arg(long, default_value_t = 2000.0)]
    pub busy_rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub busy_payload: usize,
    /// Quiet room publications per second.
    #[arg(long, default_value_t = 100.0)]
    pub quiet_rate: f64,
    #[arg(long, default_value_t = 64)]
    pub quiet_payload: usize,
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolResult {
    pub params: HolParams,
    pub quiet: Latency,
    pub busy: Latency,
    pub published: u64,
    pub delivered: u64,
}

pub async fn run(spec: &Spec, p: &HolParams) -> Result<HolResult> {
    let rooms = vec!["hol.busy".to_string(), "hol.quiet".to_string()];
    let pool = Arc::new(ClientPool::new(spec.cert_hash().ok(), 3)?);
    let subscriber = Subscriber::connect(spec, &pool, &rooms).await?;
    let busy = Publisher::connect(spec, &pool, &rooms[BUSY..=BUSY], p.busy_payload).await?;
    let quiet = Publisher::connect(spec, &pool, &rooms[QUIET..=QUIET], p.quiet_payload).await?;

    let totals = Arc::new(Totals::default());
    let from_ns = now_ns() + Duration::from_secs_f64(p.warmup).as_nanos() as u64;
    let to_ns = from_ns + Duration::from_secs_f64(p.duration).as_nanos() as u64;
    let stop_sub = CancellationToken::new();
    let hist = recorder::shared(2);
    let sub_task = tokio::spawn(subscriber.run(
        Recorder::new(hist.clone(), totals.clone(), from_ns, to_ns),
        stop_sub.clone(),
    ));
    let published = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs_f64(p.warmup + p.duration);
    let tasks = [
        tokio::spawn(paced(busy, p.busy_rate, run_for, published.clone())),
        tokio::spawn(paced(quiet, p.quiet_rate, run_for, published.clone())),
    ];
    for t in tasks {
        t.await??;
    }
    let expected = published.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while totals.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_sub.cancel();
    sub_task.await?;
    pool.close().await;
    let groups = [hist];
    Ok(HolResult {
        params: p.clone(),
        quiet: Latency::of(&recorder::merged(&groups, QUIET)),
        busy: Latency::of(&recorder::merged(&groups, BUSY)),
        published: expected,
        delivered: totals.delivered.load(Ordering::Relaxed),
    })
}

/// Publishes at `rate` per second for `run_for`, then waits until the server has taken it all.
async fn paced(
    mut publisher: Publisher,
    rate: f64,
    run_for: Duration,
    published: Arc<AtomicU64>,
) -> Result<()> {
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < run_for {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            publisher.publish(0).await?;
            sent += 1;
            published.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    publisher.finish().await
}
