//! The fan-out section: one table per size (maxima, CPU, latency at fractions of each target's
//! own maximum), each size's same-rate table, and the plot.

use std::fmt::Write as _;

use super::{cores_cell, kfmt, lost_cell, marks, ratio, sections, us, FanoutRun, Report};
use crate::target::Kind;

/// One table per fan-out size in `sizes`, then each size's runs at the common rate, then the plot.
pub(super) fn tables(md: &mut String, r: &Report, sizes: &[usize], plots: &[String]) {
    for &n in sizes {
        let payload = r.fanout.first().map_or(0, |f| f.max.params.payload);
        let _ = writeln!(
            md,
            "## Fan-out: 1 publisher, 1 room, {n} subscribers, {payload}-byte payloads\n"
        );
        let _ = writeln!(
            md,
            "| target | deliveries/s (max) | vs Socket.IO | vs bare | server CPU µs/delivery | generator CPU µs/delivery | generator / server (cores) | lost | other processes' CPU (cores) | p50 / p99 / p99.9 at 25% | at 50% | at 90% |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
        );
        let sio = r.max_rate(Kind::Socketio, n);
        let bare = r.max_rate(Kind::Bare, n);
        for f in r.fanout.iter().filter(|f| f.subscribers == n) {
            let m = &f.max;
            let delivered = m.deliveries_per_sec * m.measured_secs;
            let per = |cpu: f64| {
                if delivered > 0.0 {
                    format!("{:.2}", cpu * 1e6 / delivered)
                } else {
                    "–".into()
                }
            };
            let at = |frac: f64| {
                f.fixed
                    .iter()
                    .find(|x| (x.fraction - frac).abs() < 1e-9)
                    .map_or("–".into(), |x| {
                        format!(
                            "{} / {} / {}{}",
                            us(x.result.latency.p50_us),
                            us(x.result.latency.p99_us),
                            us(x.result.latency.p999_us),
                            marks(&x.result)
                        )
                    })
            };
            let others =
                (m.machine_cpu_secs - m.generator_cpu_secs - m.server_cpu_secs.unwrap_or(0.0))
                    .max(0.0)
                    / m.measured_secs.max(1e-9);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                f.target.label(),
                kfmt(m.deliveries_per_sec),
                ratio(Some(m.deliveries_per_sec), sio),
                ratio(Some(m.deliveries_per_sec), bare),
                m.server_cpu_secs.map_or("–".into(), per),
                per(m.generator_cpu_secs),
                cores_cell(m),
                lost_cell(m),
                others,
                at(0.25),
                at(0.5),
                at(0.9),
            );
        }
        md.push('\n');
    }
    for &n in sizes {
        let runs: Vec<&FanoutRun> = r
            .fanout
            .iter()
            .filter(|f| f.subscribers == n && f.common.is_some())
            .collect();
        let Some(rate) = runs
            .first()
            .and_then(|f| f.common.as_ref())
            .map(|c| c.params.rate * n as f64)
        else {
            continue;
        };
        let _ = writeln!(
            md,
            "Same offered rate for every target, {} deliveries/s ({n} subscribers):\n",
            kfmt(rate)
        );
        let rows: Vec<_> = runs
            .iter()
            .filter_map(|f| f.common.as_ref().map(|c| (f.target, c)))
            .collect();
        sections::same_rate_table(md, &rows);
    }
    if let Some(p) = plots.iter().find(|p| p.ends_with("-fanout.png")) {
        let _ = writeln!(md, "![fan-out]({p})\n");
    }
}
