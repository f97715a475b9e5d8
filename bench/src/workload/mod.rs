//! Workloads run by a generator process (`quiver-bench load|hol|connections`); each prints one
//! JSON result on stdout. The orchestrator (`quiver-bench run`) starts servers and these
//! processes, pinned to separate cores.

pub mod connections;
pub mod hol;
pub mod load;
pub mod neighbour;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;

use crate::target::quic::ClientPool;
use crate::target::{Spec, Subscriber};

/// Connections opened at once while setting up (so the accept queue is not the thing measured).
pub const CONNECT_CONCURRENCY: usize = 64;

/// Connects `count` subscribers, subscriber `i` to `rooms_of(i)`; returns them in order and the
/// time it took.
pub async fn connect_subscribers(
    spec: &Spec,
    pool: &Arc<ClientPool>,
    count: usize,
    rooms_of: impl Fn(usize) -> Vec<String>,
) -> Result<(Vec<Subscriber>, Duration)> {
    connect_subscribers_at(spec, pool, count, CONNECT_CONCURRENCY, rooms_of).await
}

/// [`connect_subscribers`] with `concurrency` connects in flight.
pub async fn connect_subscribers_at(
    spec: &Spec,
    pool: &Arc<ClientPool>,
    count: usize,
    concurrency: usize,
    rooms_of: impl Fn(usize) -> Vec<String>,
) -> Result<(Vec<Subscriber>, Duration)> {
    let started = std::time::Instant::now();
    let subs: Vec<Result<Subscriber>> = futures::stream::iter(0..count)
        .map(|i| {
            let rooms = rooms_of(i);
            let pool = pool.clone();
            async move { Subscriber::connect(spec, &pool, &rooms).await }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let subs = subs.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((subs, started.elapsed()))
}
