//! Fan-out across two Quiver instances joined by nats-server (`quiver serve --nats`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::fanout::{fanout_params, median_by_rate};
use super::servers::{start, start_with, Placement};
use super::{generate, load_args, Ctx, Plan};
use crate::report;
use crate::target::{Kind, Spec};
use crate::workload::load::{LoadParams, LoadResult};

/// The cluster workload needs `quiver serve --nats`; say whether this build has it.
pub(super) fn cluster_status(quiver: &Path) -> String {
    let help = Command::new(quiver)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--nats") {
        "ready: `quiver serve --nats`".into()
    } else {
        "pending: `quiver serve` has no --nats flag in this build".into()
    }
}

/// Fan-out across two Quiver instances joined by nats-server: the publisher on instance A, every
/// subscriber on instance B. Compared with the single-instance fan-out of the same size.
pub(super) fn cluster(ctx: &mut Ctx, plan: &Plan, n: usize) {
    let name = format!("cluster quiver n={n}");
    match cluster_inner(ctx, plan, n) {
        Ok(run) => {
            eprintln!(
                "bench: {name}: {:.0} deliveries/s at max; p99 {:.0} µs at 50%",
                run.max.deliveries_per_sec,
                run.half.as_ref().map_or(0.0, |h| h.latency.p99_us)
            );
            ctx.report.pass(&name);
            ctx.report.cluster_runs.push(run);
        }
        Err(e) => ctx.report.fail(&name, &e),
    }
}

fn cluster_inner(ctx: &Ctx, plan: &Plan, n: usize) -> Result<report::ClusterRun> {
    let nats = start(ctx, Kind::Nats, Placement::Local)?;
    let url = vec![
        "--nats".to_owned(),
        format!("nats://{}", nats.spec.pub_addr),
    ];
    // One after the other: the second reuses the development certificate the first wrote, so
    // one pinned hash fits both.
    let a = start_with(ctx, Kind::Quiver, Placement::Local, &url)?;
    let b = start_with(ctx, Kind::Quiver, Placement::Local, &url)?;
    if a.spec.cert_sha256 != b.spec.cert_sha256 {
        bail!("the two instances have different certificates");
    }
    // Subscribers connect to B, the publisher to A.
    let pair = Spec {
        pub_addr: a.spec.pub_addr.clone(),
        ..b.spec.clone()
    };
    let base = fanout_params(plan, n);
    // CPU is sampled on instance B, where the fan-out happens.
    let args = load_args(&pair, b.pid(), &base)?;
    let limit = Duration::from_secs_f64(30.0 + plan.warmup + plan.duration + n as f64 / 200.0);
    // The median of as many runs as the one-instance maximum it is read against: a single run
    // beside a median of three is not like with like (outside audit 123, F10).
    let mut maxes = Vec::new();
    for _ in 0..plan.repeats.max(1) {
        // As `run_load`: no sessions of the previous run left on instance B.
        b.wait_for_no_sessions(Duration::from_secs(35));
        let max: LoadResult = serde_json::from_str(&generate(ctx, &args, limit)?)?;
        if max.delivered == 0 {
            bail!("nothing crossed from instance A to instance B");
        }
        maxes.push(max);
    }
    let max_runs = maxes.len();
    let max = median_by_rate(maxes).context("no cluster run")?;
    let half_params = LoadParams {
        rate: max.publications_per_sec * 0.5,
        ..base
    };
    let args = load_args(&pair, b.pid(), &half_params)?;
    b.wait_for_no_sessions(Duration::from_secs(35));
    let half = generate(ctx, &args, limit)
        .ok()
        .and_then(|line| serde_json::from_str(&line).ok());
    drop((a, b, nats));
    Ok(report::ClusterRun {
        subscribers: n,
        max,
        max_runs,
        half,
    })
}
