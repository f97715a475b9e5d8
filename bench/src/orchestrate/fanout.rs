//! Fan-out (one publisher, one room, `n` subscribers) on every server: the maxima round by round
//! across the targets ([`median_max`], also many rooms'), then each target's fixed fractions
//! of its own maximum and the offered rate every target gets ([`common_run`]).

use std::time::Duration;

use anyhow::anyhow;

use super::servers::ServerProc;
use super::{run_load, Ctx, Mode, Plan};
use crate::report::{FanoutRun, FixedRun};
use crate::target::Kind;
use crate::workload::load::{LoadParams, LoadResult};

/// `repeats` max-rate runs of `p` on each of `targets` (a server and the name its runs are
/// reported under), round by round: every target once, then the next round, so a drift in the
/// host's speed falls on every target alike rather than between them (outside audit 123, F3).
/// Each run is printed as `bench: {name}{suffix}: …` as it ends. Per target, in order: the
/// median by rate, or `None` once one of its runs failed (reported as its name's failure; its
/// later rounds are not run).
pub(super) fn median_max(
    ctx: &mut Ctx,
    targets: &[(&ServerProc, String)],
    suffix: &str,
    p: &LoadParams,
    repeats: usize,
) -> Vec<Option<LoadResult>> {
    let mut maxes: Vec<Option<Vec<LoadResult>>> =
        targets.iter().map(|_| Some(Vec::new())).collect();
    for _ in 0..repeats {
        for ((server, name), runs) in targets.iter().zip(maxes.iter_mut()) {
            let Some(done) = runs.as_mut() else {
                continue;
            };
            // The target before this one may still be closing sessions whose close was lost
            // (until its idle timeout), on the same server core: waited for too, not only this
            // server's own, now that each run follows another target's (review 127, R1).
            for (other, _) in targets {
                if !std::ptr::eq(*other, *server) {
                    other.wait_for_no_sessions(Duration::from_secs(35));
                }
            }
            match run_load(ctx, server, p) {
                Ok(r) => {
                    eprintln!(
                        "bench: {name}{suffix}: {:.0} deliveries/s, p99 {:.0} µs{}",
                        r.deliveries_per_sec,
                        r.latency.p99_us,
                        run_marks(&r)
                    );
                    done.push(r);
                }
                Err(e) => {
                    ctx.report.fail(name, &e);
                    *runs = None;
                }
            }
        }
    }
    maxes
        .into_iter()
        .map(|runs| runs.and_then(median_by_rate))
        .collect()
}

/// What a progress line adds after a run's figures: that the generator was the limit (F2), or
/// that deliveries were lost (F4; outside audit 123).
fn run_marks(r: &LoadResult) -> String {
    let mut out = String::new();
    if r.is_generator_bound() {
        out.push_str(&format!(
            " (generator-bound: generator at {:.2} core, server at {})",
            r.generator_cores(),
            r.server_cores().map_or("–".into(), |s| format!("{s:.2}"))
        ));
    }
    if r.missing > 0 {
        out.push_str(&format!(
            " ({} of {} deliveries lost: percentiles of those that arrived)",
            r.missing,
            r.delivered + r.missing
        ));
    }
    out
}

pub(super) fn median_by_rate(mut runs: Vec<LoadResult>) -> Option<LoadResult> {
    runs.sort_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid)
}

/// One publisher, one room, `n` subscribers, at max rate.
pub(super) fn fanout_params(plan: &Plan, n: usize) -> LoadParams {
    LoadParams {
        rooms: 1,
        subs_per_room: n,
        publishers: 1,
        payload: plan.payload,
        duration: plan.duration,
        warmup: plan.warmup,
        rate: 0.0,
        window: 40_000,
    }
}

/// Fan-out at `n` subscribers on every server: the maxima round by round (see [`median_max`]),
/// then each target's fixed and common rates.
pub(super) fn fanout(ctx: &mut Ctx, plan: &Plan, servers: &[&ServerProc], n: usize) {
    let base = fanout_params(plan, n);
    let named: Vec<(&ServerProc, String)> = servers
        .iter()
        .map(|s| (*s, format!("fanout {} n={n}", s.spec.kind.label())))
        .collect();
    let maxes = median_max(ctx, &named, " max", &base, plan.repeats);
    for ((server, name), max) in named.iter().zip(maxes) {
        if let Some(max) = max {
            fanout_rates(ctx, plan, server, name, n, max);
        }
    }
}

/// One target's fan-out at fractions of its own maximum and at the common rate, recorded.
fn fanout_rates(
    ctx: &mut Ctx,
    plan: &Plan,
    server: &ServerProc,
    name: &str,
    n: usize,
    max: LoadResult,
) {
    let kind = server.spec.kind;
    let base = fanout_params(plan, n);
    let mut fixed = Vec::new();
    for &fraction in &plan.fractions {
        let rate = max.publications_per_sec * fraction;
        let p = LoadParams {
            rate,
            ..base.clone()
        };
        match run_load(ctx, server, &p) {
            Ok(r) => {
                eprintln!(
                    "bench: {name} at {:.0}% ({:.0}/s): p50 {:.0} p99 {:.0} p99.9 {:.0} µs{}",
                    fraction * 100.0,
                    r.deliveries_per_sec,
                    r.latency.p50_us,
                    r.latency.p99_us,
                    r.latency.p999_us,
                    run_marks(&r)
                );
                fixed.push(FixedRun {
                    fraction,
                    offered_deliveries_per_sec: rate * n as f64,
                    result: r,
                });
            }
            Err(e) => ctx.report.fail(&format!("{name} at {fraction}"), &e),
        }
    }
    let common = common_run(ctx, server, name, plan.common_rate, &base);
    ctx.report.pass(name);
    ctx.report.fanout.push(FanoutRun {
        target: kind,
        subscribers: n,
        max,
        fixed,
        common,
        server_version: server.version.clone(),
    });
}

/// `base` at `deliveries` per second, the offered rate every target gets (latency on equal
/// terms); `None` when the mode has no common rate or the run failed (recorded as failed).
pub(super) fn common_run(
    ctx: &mut Ctx,
    server: &ServerProc,
    name: &str,
    deliveries: f64,
    base: &LoadParams,
) -> Option<LoadResult> {
    if deliveries <= 0.0 {
        return None;
    }
    let p = LoadParams {
        rate: deliveries / base.subs_per_room.max(1) as f64,
        ..base.clone()
    };
    match run_load(ctx, server, &p) {
        Ok(r) => {
            eprintln!(
                "bench: {name} at {:.0}/s (common rate): p50 {:.0} p99 {:.0} p99.9 {:.0} µs{}",
                r.deliveries_per_sec,
                r.latency.p50_us,
                r.latency.p99_us,
                r.latency.p999_us,
                run_marks(&r)
            );
            if r.missing > 0 {
                lost_at_common_rate(ctx, server.spec.kind, name, &r);
            }
            Some(r)
        }
        Err(e) => {
            ctx.report.fail(&format!("{name} at the common rate"), &e);
            None
        }
    }
}

/// Deliveries lost at the common rate, which is below every target's maximum: the p99
/// verdicts read from this run count only what arrived (outside audit 123, F4). Always a
/// warning and a note in the report; a failed check in smoke mode for Quiver (either
/// transport). At smoke's rates (5,000 and 1,000 deliveries/s, a second) Quiver's queues
/// (16,384 frames per subscriber here) cannot fill, subscriptions are confirmed before
/// publishing starts and the drain waits 5 s, so a loss there is a fault, not noise; in the
/// longer modes a slow drain at a high rate could count late deliveries as lost, so there it
/// stays a warning.
fn lost_at_common_rate(ctx: &mut Ctx, kind: Kind, name: &str, r: &LoadResult) {
    let what = format!(
        "{name} lost {} of {} deliveries at the common rate (its percentiles count only those \
         that arrived)",
        r.missing,
        r.delivered + r.missing
    );
    eprintln!("bench: warning: {what}");
    if ctx.args.mode == Mode::Smoke && matches!(kind, Kind::Quiver | Kind::QuiverWs) {
        ctx.report
            .fail(&format!("{name} at the common rate"), &anyhow!("{what}"));
    } else {
        ctx.report.notes.push(what);
    }
}
