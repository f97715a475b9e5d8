//! Fan-out and many-rooms: R rooms, K subscribers per room, P publishers spread over the rooms.
//! Fan-out is R = 1, P = 1.
//!
//! At "max" rate publishers are closed-loop: they keep at most `window` publications ahead of
//! what subscribers have received (on average), so the measured rate is what the server
//! sustains rather than what it queues. At a fixed rate they publish on a schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ns;
use crate::procstat;
use crate::recorder::{self, Latency, Recorder, Totals};
use crate::target::quic::ClientPool;
use crate::target::{Publisher, Spec};

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct LoadParams {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Subscribers per room (each its own session).
    #[arg(long, default_value_t = 100)]
    pub subs_per_room: usize,
    /// Publisher sessions, spread round-robin over the rooms.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Payload bytes (at least 20: the timestamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Publications per second over all publishers; 0 = as fast as the server sustains.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Closed-loop window at max rate, in deliveries ahead of what subscribers received.
    #[arg(long, default_value_t = 40_000)]
    pub window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub params: LoadParams,
    pub sessions: usize,
    pub connect_secs: f64,
    pub published: u64,
    pub delivered: u64,
    /// Deliveries that never arrived (expected − delivered after draining).
    pub missing: u64,
    pub deliveries_per_sec: f64,
    pub publications_per_sec: f64,
    pub latency: Latency,
    /// CPU seconds of the generator during the measured window.
    pub generator_cpu_secs: f64,
    /// CPU seconds of the server during the measured window.
    pub server_cpu_secs: Option<f64>,
    /// CPU seconds the whole machine was busy during the window (all processes, all cores).
    #[serde(default)]
    pub machine_cpu_secs: f64,
    pub measured_secs: f64,
    /// The generator used at least [`GENERATOR_BOUND_CORES`] of a core over the window: the
    /// rate (or latency) is then partly the load generator's limit, not the server's (outside
    /// audit 123, F2). False in reports from before it; the report reads the CPU figures above
    /// through [`LoadResult::is_generator_bound`] either way.
    #[serde(default)]
    pub generator_bound: bool,
}

/// A generator at this share of a core or more is the limit. Generators run pinned to one core
/// (`orchestrate`), and one that used 0.95 of it had no room left to receive faster: outside
/// audit 123 (F2) found Quiver's fan-out maxima at generator 0.95-1.00 with its server at
/// 0.85-0.90, judged as server against server.
pub const GENERATOR_BOUND_CORES: f64 = 0.95;

impl LoadResult {
    /// The generator's CPU over the measured window, in cores.
    pub fn generator_cores(&self) -> f64 {
        self.generator_cpu_secs / self.measured_secs.max(1e-9)
    }

    /// The server's CPU over the measured window, in cores (when it was sampled).
    pub fn server_cores(&self) -> Option<f64> {
        self.server_cpu_secs
            .map(|s| s / self.measured_secs.max(1e-9))
    }

    /// Whether the generator was the limit (see [`GENERATOR_BOUND_CORES`]); computed from the
    /// CPU figures, so a report re-rendered from an older JSON is marked too.
    pub fn is_generator_bound(&self) -> bool {
        self.generator_bound || self.generator_cores() >= GENERATOR_BOUND_CORES
    }
}

pub async fn run(spec: &Spec, p: &LoadParams, server_pid: Option<u32>) -> Result<LoadResult> {
    let rooms: Vec<String> = (0..p.rooms.max(1)).map(|r| format!("bench.r{r}")).collect();
    let subscribers = rooms.len() * p.subs_per_room;
    let hash = spec.cert_hash().ok();
    let pool = Arc::new(ClientPool::new(hash, subscribers + p.publishers)?);

    let (subs, connect_time) = super::connect_subscribers(spec, &pool, subscribers, |i| {
        vec![rooms[i % rooms.len()].clone()]
    })
    .await?;

    let mut publishers = Vec::new();
    for i in 0..p.publishers.max(1) {
        // Publisher i owns rooms i, i+P, i+2P, ...; with more publishers than rooms they share.
        let own: Vec<String> = rooms
            .iter()
            .enumerate()
            .filter(|(r, _)| rooms.len() <= p.publishers || r % p.publishers == i)
            .map(|(_, name)| name.clone())
            .collect();
        let own = if own.is_empty() {
            vec![rooms[i % rooms.len()].clone()]
        } else {
            own
        };
        let publisher = Publisher::connect(spec, &pool, &own, p.payload).await?;
        publishers.push(publisher);
    }

    let totals = Arc::new(Totals::default());
    let warmup = Duration::from_secs_f64(p.warmup);
    let measure = Duration::from_secs_f64(p.duration);
    let start_ns = now_ns() + 20_000_000; // a moment for the tasks to start
    let from_ns = start_ns + warmup.as_nanos() as u64;
    let to_ns = from_ns + measure.as_nanos() as u64;
    // One histogram per 64 subscribers (see `recorder::Shared`), and one stop per 64 too.
    let groups: Vec<recorder::Shared> = (0..subscribers.div_ceil(64).max(1))
        .map(|_| recorder::shared(1))
        .collect();
    let stops: Vec<CancellationToken> = groups.iter().map(|_| CancellationToken::new()).collect();
    let mut sub_tasks: Vec<Vec<_>> = groups.iter().map(|_| Vec::new()).collect();
    for (i, s) in subs.into_iter().enumerate() {
        let rec = Recorder::new(groups[i / 64].clone(), totals.clone(), from_ns, to_ns);
        sub_tasks[i / 64].push(tokio::spawn(s.run(rec, stops[i / 64].clone())));
    }

    let published = Arc::new(AtomicU64::new(0));
    let stop_pubs = CancellationToken::new();
    let per_pub_rate = p.rate / publishers.len() as f64;
    let pub_tasks: Vec<_> = publishers
        .into_iter()
        .map(|publisher| {
            tokio::spawn(publish_loop(
                publisher,
                Pacing {
                    rate: per_pub_rate,
                    // In publications; never so few that a 1 ms pause idles the server.
                    window: (p.window / p.subs_per_room.max(1) as u64).clamp(16, 4096),
                    fanout: p.subs_per_room as u64,
                },
                totals.clone(),
                published.clone(),
                stop_pubs.clone(),
            ))
        })
        .collect();

    // Measure deliveries between the end of the warm-up and the end of the run.
    sleep_until_ns(from_ns).await;
    let d0 = totals.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let cpu0 = cpu_now(server_pid);
    sleep_until_ns(to_ns).await;
    let d1 = totals.delivered.load(Ordering::Relaxed);
    let cpu1 = cpu_now(server_pid);
    let measured = t0.elapsed().as_secs_f64();
    stop_pubs.cancel();
    for t in pub_tasks {
        if let Err(e) = t.await? {
            eprintln!("publisher: {e:#}");
        }
    }

    // Drain: wait until everything published has arrived (or give up after a few seconds).
    let expected = published.load(Ordering::Relaxed) * p.subs_per_room as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while totals.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Subscribers close their sessions as they end. Thousands of closes at once overflow the
    // server's socket buffer, and a lost close leaves the session open on the server (fanned out
    // to) until its idle timeout, slowing the next measurement: end them 64 at a time.
    for (stop, tasks) in stops.iter().zip(sub_tasks) {
        stop.cancel();
        for t in tasks {
            t.await?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pool.close().await;
    let hist = recorder::merged(&groups, 0);
    let delivered = totals.delivered.load(Ordering::Relaxed);
    let foreign = totals.foreign.load(Ordering::Relaxed);
    if foreign > 0 {
        eprintln!("warning: {foreign} payloads without a timestamp");
    }
    Ok(LoadResult {
        params: p.clone(),
        sessions: subscribers + p.publishers,
        connect_secs: connect_time.as_secs_f64(),
        published: published.load(Ordering::Relaxed),
        delivered,
        missing: expected.saturating_sub(delivered),
        deliveries_per_sec: (d1 - d0) as f64 / measured,
        publications_per_sec: (d1 - d0) as f64 / measured / p.subs_per_room.max(1) as f64,
        latency: Latency::of(&hist),
        generator_cpu_secs: (cpu1.0 - cpu0.0).max(0.0),
        server_cpu_secs: server_pid.map(|_| (cpu1.1 - cpu0.1).max(0.0)),
        machine_cpu_secs: (cpu1.2 - cpu0.2).max(0.0),
        measured_secs: measured,
        generator_bound: (cpu1.0 - cpu0.0).max(0.0) / measured.max(1e-9) >= GENERATOR_BOUND_CORES,
    })
}

struct Pacing {
    /// Publications per second for this publisher; 0 = closed loop.
    rate: f64,
    window: u64,
    /// Deliveries per publication.
    fanout: u64,
}

async fn publish_loop(
    mut publisher: Publisher,
    pacing: Pacing,
    totals: Arc<Totals>,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<()> {
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut room = 0usize;
    let room_count = publisher.rooms().max(1);
    while !stop.is_cancelled() {
        if pacing.rate > 0.0 {
            // Send what is due by now, then sleep a tick: bursts of at most a millisecond's worth.
            let due = (started.elapsed().as_secs_f64() * pacing.rate) as u64;
            if sent >= due {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        } else {
            let in_flight = published
                .load(Ordering::Relaxed)
                .saturating_sub(totals.delivered.load(Ordering::Relaxed) / pacing.fanout.max(1));
            if in_flight >= pacing.window {
                // Sleeping (not spinning) keeps the generator's CPU for the subscribers; the
                // window is sized so a tick's pause does not starve the server.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        publisher.publish(room).await?;
        room = (room + 1) % room_count;
        sent += 1;
        published.fetch_add(1, Ordering::Relaxed);
    }
    publisher.finish().await
}

/// (generator, server, whole machine) CPU seconds so far.
fn cpu_now(server_pid: Option<u32>) -> (f64, f64, f64) {
    let server = server_pid
        .and_then(procstat::cpu_time)
        .unwrap_or_default()
        .as_secs_f64();
    let machine = procstat::machine_busy_time()
        .unwrap_or_default()
        .as_secs_f64();
    (procstat::self_cpu_time().as_secs_f64(), server, machine)
}

async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}
