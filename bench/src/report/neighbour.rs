//! The neighbour benchmark's report (`quiver-bench neighbour`): the calm tenant's latency alone,
//! next to the noisy tenant at its quota, and next to the noisy tenant with no quota; medians
//! over repeats, the p99 ratios, and what the noisy tenant got refused and accepted.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{kfmt, us, utc_now};
use crate::workload::load::{LoadParams, LoadResult};
use crate::workload::neighbour::{FloodParams, FloodResult};

/// One measurement of the calm tenant, with the noisy tenant's flood beside it (if any).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub calm: LoadResult,
    pub flood: Option<FloodResult>,
}

/// The runs of one kind of flood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    /// Row label.
    pub name: String,
    /// Whether the server had the noisy tenant's quota (the reference has none).
    pub quota: bool,
    /// The flood's offered publications per second; 0 = as fast as the connections take them.
    pub flood_rate: f64,
    /// The noisy tenant uses exactly its allowance (offers its quota, nothing over it): the
    /// baseline for what being *over* the quota costs the calm tenant.
    #[serde(default)]
    pub at_allowance: bool,
    /// On the server with default per-session limits and a per-address handshake limit; the
    /// noisy publishers come from their own address and reconnect whenever they are closed.
    #[serde(default)]
    pub defaults: bool,
    pub runs: Vec<Phase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighbourReport {
    pub date: String,
    /// `/proc/loadavg` when the run started and ended (other work on the machine).
    pub load_before: String,
    pub load_after: String,
    pub pinning: String,
    /// Version and git commit of the code measured.
    pub quiver: String,
    /// The noisy tenant's publications per second (the calm tenant has none).
    pub quota: u32,
    pub calm: LoadParams,
    pub flood: FloodParams,
    /// Calm alone, on the server with quotas.
    pub alone: Vec<Phase>,
    /// Calm beside each kind of flood, with and without the quota.
    pub floods: Vec<Series>,
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
}

/// Medians over the runs of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub deliveries_per_sec: f64,
    /// Server CPU over the measured window, as a fraction of one core.
    pub server_core: Option<f64>,
    pub noisy_sent_per_sec: Option<f64>,
    pub noisy_refused: Option<f64>,
    pub noisy_accepted: Option<f64>,
    pub noisy_accepted_per_sec: Option<f64>,
}

/// The median (mean of the middle two for an even count); `None` for no values.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Each figure is the median over the runs on its own (the run with the median p99 need not
/// have the median p50).
pub fn summarize(phases: &[Phase]) -> Summary {
    let floods: Vec<&FloodResult> = phases.iter().filter_map(|p| p.flood.as_ref()).collect();
    let flood_median = |f: &dyn Fn(&FloodResult) -> f64| median(floods.iter().map(|r| f(r)));
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Summary {
        runs: phases.len(),
        p50_us: median(phases.iter().map(|p| p.calm.latency.p50_us)).unwrap_or(0.0),
        p99_us: median(phases.iter().map(|p| p.calm.latency.p99_us)).unwrap_or(0.0),
        deliveries_per_sec: median(phases.iter().map(|p| p.calm.deliveries_per_sec)).unwrap_or(0.0),
        server_core: median(phases.iter().filter_map(|p| {
            let cpu = p.calm.server_cpu_secs?;
            (p.calm.measured_secs > 0.0).then(|| cpu / p.calm.measured_secs)
        })),
        noisy_sent_per_sec: flood_median(&|r| per_sec(r.sent, r.flood_secs)),
        noisy_refused: flood_median(&|r| r.refused as f64),
        noisy_accepted: flood_median(&|r| r.accepted as f64),
        noisy_accepted_per_sec: flood_median(&|r| per_sec(r.accepted, r.flood_secs)),
    }
}

/// `a / b` as "1.23×"; a dash when either side is missing.
pub fn ratio_text(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn p99_of(phases: &[Phase]) -> Option<f64> {
    (!phases.is_empty()).then(|| summarize(phases).p99_us)
}

/// The headline: calm p99 beside each flood over calm p99 alone, then (when measured) each
/// quota-limited flood over the noisy tenant using exactly its allowance: what being over the
/// quota costs the other tenant, beyond the work the quota allows.
pub fn headline(r: &NeighbourReport) -> String {
    let alone = p99_of(&r.alone);
    let mut lines: String = r
        .floods
        .iter()
        .map(|f| {
            format!(
                "- calm p99 beside {}: **{}** calm p99 alone\n",
                f.name,
                ratio_text(p99_of(&f.runs), alone)
            )
        })
        .collect();
    if let Some(allowance) = r.floods.iter().find(|f| f.at_allowance) {
        let base = p99_of(&allowance.runs);
        for f in r.floods.iter().filter(|f| f.quota && !f.at_allowance) {
            lines.push_str(&format!(
                "- calm p99 beside {}: **{}** calm p99 beside noisy at exactly its allowance\n",
                f.name,
                ratio_text(p99_of(&f.runs), base)
            ));
        }
    }
    lines
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

pub fn markdown(r: &NeighbourReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Neighbour isolation: one tenant at its quota, another tenant's latency\n"
    );
    let _ = writeln!(
        md,
        "{} · quiver {} · {} · {:.0} s · load average before {} / after {}\n",
        r.date, r.quiver, r.pinning, r.elapsed_secs, r.load_before, r.load_after
    );
    let c = &r.calm;
    let _ = writeln!(
        md,
        "One Quiver server. Tenant `calm` publishes {} messages/s ({} B) over {} rooms with {} \
         subscribers each ({} deliveries/s offered), {} s measured after {} s of warm-up; its \
         end-to-end latency (publish → delivery) is the measurement. Tenant `noisy` has a quota \
         of {} publications/s (`calm` has none, by override) and floods with {} publisher \
         sessions ({} rooms, {} subscribers each), back to back or at a fixed rate; \
         publications over the quota are refused with `quota_exceeded` (115). The references \
         run the same floods on a server without quotas. Each phase {} times, interleaved; \
         tables show medians.\n",
        kfmt(c.rate),
        c.payload,
        c.rooms,
        c.subs_per_room,
        kfmt(c.rate * c.subs_per_room as f64),
        c.duration,
        c.warmup,
        kfmt(f64::from(r.quota)),
        r.flood.publishers,
        r.flood.rooms,
        r.flood.subs_per_room,
        r.alone.len(),
    );
    let _ = writeln!(md, "{}", headline(r));

    let alone_p99 = p99_of(&r.alone);
    let _ = writeln!(
        md,
        "| phase | runs | calm p50 | calm p99 | p99 vs alone | calm deliveries/s | server core \
         busy | noisy sent/s | noisy refused (115) | noisy accepted | noisy accepted/s |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rows = std::iter::once(("calm alone", &r.alone))
        .chain(r.floods.iter().map(|f| (f.name.as_str(), &f.runs)));
    for (label, phases) in rows {
        if phases.is_empty() {
            continue;
        }
        let s = summarize(phases);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.runs,
            us(s.p50_us),
            us(s.p99_us),
            ratio_text(Some(s.p99_us), alone_p99),
            kfmt(s.deliveries_per_sec),
            opt(s.server_core, |f| format!("{:.0}%", f * 100.0)),
            opt(s.noisy_sent_per_sec, kfmt),
            opt(s.noisy_refused, kfmt),
            opt(s.noisy_accepted, kfmt),
            opt(s.noisy_accepted_per_sec, kfmt),
        );
    }

    let _ = writeln!(md, "\n## Every run\n");
    let _ = writeln!(
        md,
        "| phase | calm p50 | p90 | p99 | p99.9 | max | calm missing | noisy sent | refused | \
         other refusals | accepted | noisy deliveries | flood s | publishers settled | \
         closed / reopened / reopen refused |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rows = std::iter::once(("calm alone", &r.alone))
        .chain(r.floods.iter().map(|f| (f.name.as_str(), &f.runs)));
    for (label, phases) in rows {
        for p in phases.iter() {
            let l = &p.calm.latency;
            let flood = p.flood.as_ref().map_or_else(
                || "– | – | – | – | – | – | – | –".to_owned(),
                |f| {
                    format!(
                        "{} | {} | {} | {} | {} | {:.1} | {}/{} | {} / {} / {}",
                        f.sent,
                        f.refused,
                        f.other_refusals,
                        f.accepted,
                        f.delivered,
                        f.flood_secs,
                        f.settled,
                        f.params.publishers,
                        f.closed,
                        f.reopened,
                        f.reopen_refused
                    )
                },
            );
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {flood} |",
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                p.calm.missing,
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// The output prefix must have no extension: `with_extension` would replace it.
pub fn check_prefix(prefix: &Path) -> Result<()> {
    anyhow::ensure!(
        prefix.extension().is_none(),
        "--out is a prefix without an extension: {}",
        prefix.display()
    );
    Ok(())
}

/// Writes PREFIX.json and PREFIX.md.
pub fn write(r: &NeighbourReport, prefix: &Path) -> Result<()> {
    check_prefix(prefix)?;
    let (json, md) = (prefix.with_extension("json"), prefix.with_extension("md"));
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    std::fs::write(&md, markdown(r))?;
    eprintln!("bench: wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// A count or rate as the tables show it (2k, 1.32M).
pub fn count(v: f64) -> String {
    kfmt(v)
}

/// Today's date and time, for the report.
pub fn now() -> String {
    utc_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calm(p50: f64, p99: f64) -> LoadResult {
        serde_json::from_value(serde_json::json!({
            "params": {"rooms": 4, "subs_per_room": 5, "publishers": 1, "payload": 100,
                       "duration": 3.0, "warmup": 0.5, "rate": 400.0, "window": 10},
            "sessions": 21, "connect_secs": 0.1, "published": 1400, "delivered": 7000,
            "missing": 0, "deliveries_per_sec": 2000.0, "publications_per_sec": 400.0,
            "latency": {"count": 6000, "p50_us": p50, "p90_us": p50, "p99_us": p99,
                        "p999_us": p99, "max_us": p99},
            "generator_cpu_secs": 0.1, "server_cpu_secs": 1.5, "measured_secs": 3.0
        }))
        .unwrap()
    }

    fn flood(sent: u64, refused: u64) -> FloodResult {
        FloodResult {
            params: FloodParams {
                publishers: 4,
                rooms: 2,
                subs_per_room: 2,
                payload: 100,
                rate: 0.0,
                batch: 32,
                max_secs: 60.0,
                reconnect: false,
                bind: None,
            },
            flood_secs: 2.0,
            sent,
            refused,
            other_refusals: 0,
            accepted: sent - refused,
            settled: 4,
            delivered: 0,
            closed: 0,
            reopened: 0,
            reopen_refused: 0,
        }
    }

    fn phase(p99: f64, f: Option<FloodResult>) -> Phase {
        Phase {
            calm: calm(p99 / 2.0, p99),
            flood: f,
        }
    }

    fn report() -> NeighbourReport {
        NeighbourReport {
            date: "2026-11-29 16:20 UTC".into(),
            load_before: "1.00".into(),
            load_after: "1.10".into(),
            pinning: "pinned".into(),
            quiver: "0.1.0 (git abc)".into(),
            quota: 2000,
            calm: calm(1.0, 1.0).params,
            flood: flood(0, 0).params,
            alone: vec![phase(100.0, None), phase(300.0, None), phase(200.0, None)],
            floods: vec![
                Series {
                    name: "a flood, quota 2k/s".into(),
                    quota: true,
                    flood_rate: 0.0,
                    at_allowance: false,
                    defaults: false,
                    runs: vec![
                        phase(500.0, Some(flood(100_000, 96_000))),
                        phase(400.0, Some(flood(120_000, 116_000))),
                        phase(900.0, Some(flood(80_000, 76_000))),
                    ],
                },
                Series {
                    name: "a flood, no quota".into(),
                    quota: false,
                    flood_rate: 0.0,
                    at_allowance: false,
                    defaults: false,
                    runs: vec![],
                },
            ],
            notes: vec!["a note".into()],
            elapsed_secs: 60.0,
        }
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn summary_takes_each_figure_as_its_own_median() {
        let s = summarize(&report().floods[0].runs);
        assert_eq!(s.runs, 3);
        assert_eq!(s.p99_us, 500.0);
        assert_eq!(s.p50_us, 250.0);
        assert_eq!(s.noisy_refused, Some(96_000.0));
        assert_eq!(s.noisy_accepted, Some(4_000.0));
        assert_eq!(s.noisy_sent_per_sec, Some(50_000.0));
        assert_eq!(s.server_core, Some(0.5));
        assert_eq!(summarize(&report().alone).noisy_refused, None);
    }

    #[test]
    fn ratio_needs_both_sides() {
        assert_eq!(ratio_text(Some(500.0), Some(200.0)), "2.50×");
        assert_eq!(ratio_text(None, Some(200.0)), "–");
        assert_eq!(ratio_text(Some(1.0), Some(0.0)), "–");
    }

    #[test]
    fn markdown_states_the_ratio_and_the_counts() {
        let md = markdown(&report());
        // Medians: alone p99 200 µs, beside the flood 500 µs.
        assert!(
            md.contains("- calm p99 beside a flood, quota 2k/s: **2.50×** calm p99 alone"),
            "{md}"
        );
        assert!(
            md.contains("- calm p99 beside a flood, no quota: **–** calm p99 alone"),
            "{md}"
        );
        assert!(
            md.contains(
                "| a flood, quota 2k/s | 3 | 250 µs | 500 µs | 2.50× | 2k | 50% | 50k | 96k | 4k \
                 | 2k |"
            ),
            "{md}"
        );
        // A series with no runs gets no row.
        assert!(!md.contains("| a flood, no quota |"), "{md}");
        assert!(
            md.contains("| a flood, quota 2k/s | 450 µs | 450 µs | 900 µs |"),
            "{md}"
        );
        assert!(md.contains("- a note"), "{md}");
    }
}
