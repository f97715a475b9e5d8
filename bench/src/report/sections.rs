//! Report sections that read several targets at once: many rooms at the same offered rate, and
//! the cluster fan-out beside one instance and nats-server alone.

use std::fmt::Write as _;

use super::{kfmt, lost_cell, marks, us, FixedRun, LoadResult, Report};
use crate::target::Kind;

fn p50_p99(l: &LoadResult) -> String {
    format!(
        "{} / {}{}",
        us(l.latency.p50_us),
        us(l.latency.p99_us),
        marks(l)
    )
}

/// The fixed-rate run at half of max.
pub(super) fn half(fixed: &[FixedRun]) -> Option<&LoadResult> {
    fixed
        .iter()
        .find(|x| (x.fraction - 0.5).abs() < 1e-9)
        .map(|x| &x.result)
}

/// Many rooms at one offered rate for every target (issue 14: p99 at the same offered rate).
pub(super) fn rooms_common_table(md: &mut String, r: &Report) {
    let runs: Vec<_> = r
        .rooms
        .iter()
        .filter_map(|x| x.common.as_ref().map(|c| (x.target, c)))
        .collect();
    let Some((_, first)) = runs.first() else {
        return;
    };
    let rate = first.params.rate * first.params.subs_per_room as f64;
    let _ = writeln!(
        md,
        "Same offered rate for every target, {} deliveries/s:\n",
        kfmt(rate)
    );
    same_rate_table(md, &runs);
}

/// p50 / p99 / p99.9, and server and generator cores per target, at one offered rate. The
/// generator's cores are there because a full generator core means the latency partly measures
/// the client side (QUIC's per-packet receive and ACK work is in user space), not the server;
/// such a row says so (outside audit 123, F2). "lost" is what never arrived: the row's
/// percentiles count only the rest (F4).
pub(super) fn same_rate_table(md: &mut String, runs: &[(Kind, &LoadResult)]) {
    let _ = writeln!(
        md,
        "| target | p50 | p99 | p99.9 | server CPU (cores) | generator CPU (cores) | lost |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (kind, c) in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2}{} | {}{} |",
            kind.label(),
            us(c.latency.p50_us),
            us(c.latency.p99_us),
            us(c.latency.p999_us),
            c.server_cores().map_or("–".into(), |s| format!("{s:.2}")),
            c.generator_cores(),
            if c.is_generator_bound() {
                " generator-bound"
            } else {
                ""
            },
            lost_cell(c),
            if c.missing > 0 {
                ": percentiles of those that arrived"
            } else {
                ""
            }
        );
    }
    md.push('\n');
}

/// Two Quiver instances over NATS, beside one instance and beside nats-server alone (the same
/// fan-out with no Quiver in it), and what the extra hop costs.
pub(super) fn cluster_section(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "Publisher on instance A, all subscribers on instance B, both `quiver serve --nats` \
         against one nats-server (all on the server core). One instance, and nats-server alone \
         (its own fan-out from the fan-out table, no Quiver), for comparison.\n"
    );
    let _ = writeln!(
        md,
        "| setup | subscribers | deliveries/s (max) | p50 / p99 at 50% of max |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|");
    let mut costs = Vec::new();
    for c in &r.cluster_runs {
        let n = c.subscribers;
        let single = r.fanout_run(Kind::Quiver, n);
        if let Some(f) = single {
            let _ = writeln!(
                md,
                "| one instance | {n} | {}{} | {} |",
                kfmt(f.max.deliveries_per_sec),
                marks(&f.max),
                half(&f.fixed).map_or("–".into(), p50_p99)
            );
        }
        let _ = writeln!(
            md,
            "| two instances over NATS | {n} | {}{} | {} |",
            kfmt(c.max.deliveries_per_sec),
            marks(&c.max),
            c.half.as_ref().map_or("–".into(), p50_p99)
        );
        if let Some(f) = r.fanout_run(Kind::Nats, n) {
            let _ = writeln!(
                md,
                "| nats-server alone | {n} | {}{} | {} |",
                kfmt(f.max.deliveries_per_sec),
                marks(&f.max),
                half(&f.fixed).map_or("–".into(), p50_p99)
            );
        }
        if let Some(f) = single.filter(|f| f.max.deliveries_per_sec > 0.0) {
            let x = c.max.deliveries_per_sec / f.max.deliveries_per_sec;
            // Like with like (outside audit 123, F10): say what each maximum is, and when one
            // is a single run and the other a median, that the ratio sets them side by side.
            let one = crate::orchestrate::repeats_of(r.mode);
            let each = if c.max_runs == one {
                if one > 1 {
                    format!(", both maxima the median of {one} runs")
                } else {
                    ", both maxima single runs".to_owned()
                }
            } else {
                format!(
                    ", the two instances' maximum {} against one instance's {} (not like with \
                     like: read it with the spread between runs)",
                    runs_of(c.max_runs),
                    runs_of(one)
                )
            };
            costs.push(format!(
                "at {n} subscribers the two instances deliver {x:.2}× what one does{each}{}",
                if x >= 1.0 {
                    " (no cost visible: instance A takes the publisher's side of the work off \
                     instance B; on a shared machine read it with the run's noise)"
                } else {
                    ""
                }
            ));
        }
    }
    md.push('\n');
    if !costs.is_empty() {
        let _ = writeln!(
            md,
            "What it costs: {}. Where it costs: every publication takes an extra hop (instance A decodes \
             and authorises it and publishes it to nats-server, which routes it to instance B, \
             which decodes it again before its own fan-out), and the three processes share the \
             server core, so the hop's CPU comes out of the fan-out's. The hop is paid once per \
             publication, not per delivery: the more subscribers share a publication, the \
             smaller its share. nats-server itself is not the limit: it forwards one message per \
             publication to instance B, and alone it fans out far more.\n",
            costs.join("; ")
        );
    }
}

/// "a single run" or "the median of 3 runs".
fn runs_of(n: usize) -> String {
    if n <= 1 {
        "a single run".into()
    } else {
        format!("the median of {n} runs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::load;

    #[test]
    fn same_rate_rows_carry_both_cores() {
        // 2.4 s of server CPU and 1.2 s of generator CPU over a 2-second window.
        let mut run = load(100_000.0);
        run.server_cpu_secs = Some(2.4);
        run.generator_cpu_secs = 1.2;
        run.measured_secs = 2.0;
        let mut md = String::new();
        same_rate_table(&mut md, &[(Kind::Quiver, &run)]);
        assert!(
            md.contains("| server CPU (cores) | generator CPU (cores) |"),
            "{md}"
        );
        assert!(md.contains("| 1.20 | 0.60 | 0 |"), "{md}");
        // A full generator core and lost deliveries are said in the row (outside audit 123, F2
        // and F4).
        run.generator_cpu_secs = 1.9;
        run.missing = 25;
        let mut md = String::new();
        same_rate_table(&mut md, &[(Kind::Quiver, &run)]);
        assert!(
            md.contains(
                "| 1.20 | 0.95 generator-bound | 25 (20.00 %): percentiles of those that arrived |"
            ),
            "{md}"
        );
    }

    /// The cluster's ratio says what each maximum is, and says so when one is a single run and
    /// the other a median (outside audit 123, F10).
    #[test]
    fn cluster_ratio_says_like_with_like() {
        let mut r = Report::new(crate::orchestrate::Mode::Full, "test".into());
        r.fanout.push(crate::report::tests::fanout10(
            Kind::Quiver,
            1000.0,
            load(500.0),
        ));
        r.cluster_runs.push(crate::report::ClusterRun {
            subscribers: 10,
            max: load(990.0),
            max_runs: 3,
            half: None,
        });
        let mut md = String::new();
        cluster_section(&mut md, &r);
        assert!(
            md.contains("deliver 0.99× what one does, both maxima the median of 3 runs"),
            "{md}"
        );
        // A report from before: the cluster's maximum a single run.
        r.cluster_runs[0].max_runs = 1;
        let mut md = String::new();
        cluster_section(&mut md, &r);
        assert!(
            md.contains("maximum a single run against one instance's the median of 3 runs"),
            "{md}"
        );
    }
}
