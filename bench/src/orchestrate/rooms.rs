//! Many rooms on every server: the maxima round by round, then each target's common rate.

use super::fanout::{common_run, median_max};
use super::servers::ServerProc;
use super::{Ctx, Plan};
use crate::report::RoomsRun;
use crate::workload::load::LoadParams;

/// Many rooms on every server: the maxima round by round (see [`median_max`]), then each
/// target's common rate.
pub(super) fn rooms(ctx: &mut Ctx, plan: &Plan, servers: &[&ServerProc]) {
    let (r, k, pubs) = plan.rooms;
    let p = LoadParams {
        rooms: r,
        subs_per_room: k,
        publishers: pubs,
        payload: plan.payload,
        duration: plan.duration,
        warmup: plan.warmup,
        rate: 0.0,
        window: 40_000,
    };
    // The median of the mode's repeats, as in fan-out: one 5-second run of 2,020 sessions can
    // land far off (2026-12-05 21:08: 347k, where two runs right after gave 564k and 546k).
    let named: Vec<(&ServerProc, String)> = servers
        .iter()
        .map(|s| (*s, format!("rooms {}", s.spec.kind.label())))
        .collect();
    let maxes = median_max(ctx, &named, "", &p, plan.repeats);
    for ((server, name), result) in named.iter().zip(maxes) {
        let Some(result) = result else {
            continue;
        };
        // Latency on equal terms (issue 14: p99 at the same offered rate), as in fan-out.
        let common = common_run(ctx, server, name, plan.rooms_common_rate, &p);
        ctx.report.pass(name);
        ctx.report.rooms.push(RoomsRun {
            target: server.spec.kind,
            result,
            common,
        });
    }
}
