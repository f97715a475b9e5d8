//! The benchmark's results: collected by the orchestrator, written as JSON (everything) and
//! Markdown (the tables a reader wants), with PNG plots beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::orchestrate::Mode;
use crate::target::Kind;
use crate::workload::connections::ConnResult;
use crate::workload::hol::HolResult;
use crate::workload::load::LoadResult;

mod connections;
mod fanout;
mod hol;
mod intro;
pub mod neighbour;
mod rooms;
mod sections;
pub mod targets;
mod verdicts;

use sections::{cluster_section, rooms_common_table};

#[derive(Debug, Serialize, Deserialize)]
pub struct FixedRun {
    /// Fraction of the target's own maximum.
    pub fraction: f64,
    pub offered_deliveries_per_sec: f64,
    pub result: LoadResult,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FanoutRun {
    pub target: Kind,
    pub subscribers: usize,
    pub max: LoadResult,
    pub fixed: Vec<FixedRun>,
    /// At the same offered rate for every target.
    #[serde(default)]
    pub common: Option<LoadResult>,
    pub server_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RoomsRun {
    pub target: Kind,
    pub result: LoadResult,
    /// At the same offered rate for every target.
    #[serde(default)]
    pub common: Option<LoadResult>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConnRun {
    pub target: Kind,
    pub result: ConnResult,
    pub server_rss_before: u64,
    pub server_rss_after: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HolRun {
    pub target: Kind,
    pub loss_pct: u32,
    /// Round trip added by the delay relay (QUIC only); `None` for the plain veth.
    #[serde(default)]
    pub rtt_ms: Option<u32>,
    pub result: HolResult,
}

/// Fan-out with the publisher and the subscribers on different instances, over NATS.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterRun {
    pub subscribers: usize,
    /// The median by rate of `max_runs` max-rate runs, as many as the one-instance fan-out it
    /// is read against (outside audit 123, F10); 1 in reports from before, a single run.
    pub max: LoadResult,
    #[serde(default = "one")]
    pub max_runs: usize,
    /// At half of the cluster's own max.
    pub half: Option<LoadResult>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub mode: Mode,
    pub machine: Machine,
    pub pinning: String,
    pub versions: BTreeMap<String, String>,
    pub fanout: Vec<FanoutRun>,
    pub rooms: Vec<RoomsRun>,
    pub connections: Vec<ConnRun>,
    pub hol: Vec<HolRun>,
    pub hol_skipped: Option<String>,
    pub cluster: String,
    #[serde(default)]
    pub cluster_runs: Vec<ClusterRun>,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    pub elapsed_secs: f64,
    /// The previous run's "no regression" figures (issue 14), when one was found.
    #[serde(default)]
    pub reference: Option<targets::Reference>,
    /// Run with `--browser-like-acks`: Quiver asked its clients for no ACK reduction (outside
    /// audit 123, F1). False in reports from before the option, which asked as by default.
    #[serde(default)]
    pub browser_like_acks: bool,
}

impl Report {
    pub fn new(mode: Mode, pinning: String) -> Self {
        Self {
            date: utc_now(),
            mode,
            machine: machine(),
            pinning,
            versions: BTreeMap::new(),
            fanout: Vec::new(),
            rooms: Vec::new(),
            connections: Vec::new(),
            hol: Vec::new(),
            hol_skipped: None,
            cluster: String::new(),
            cluster_runs: Vec::new(),
            notes: Vec::new(),
            checks: Vec::new(),
            elapsed_secs: 0.0,
            reference: None,
            browser_like_acks: false,
        }
    }

    pub fn pass(&mut self, name: &str) {
        eprintln!("ok   {name}");
        self.checks.push(Check {
            name: name.into(),
            ok: true,
            error: None,
        });
    }

    pub fn fail(&mut self, name: &str, error: &anyhow::Error) {
        eprintln!("FAIL {name}: {error:#}");
        self.checks.push(Check {
            name: name.into(),
            ok: false,
            error: Some(format!("{error:#}")),
        });
    }

    pub fn runs_started(&self) -> usize {
        self.checks.len()
    }

    pub fn check_counts(&self) -> (usize, usize) {
        let ok = self.checks.iter().filter(|c| c.ok).count();
        (ok, self.checks.len() - ok)
    }

    /// The fan-out run of `kind` at `n` subscribers.
    fn fanout_run(&self, kind: Kind, n: usize) -> Option<&FanoutRun> {
        self.fanout
            .iter()
            .find(|f| f.target == kind && f.subscribers == n)
    }

    fn max_rate(&self, kind: Kind, n: usize) -> Option<f64> {
        self.fanout_run(kind, n).map(|f| f.max.deliveries_per_sec)
    }

    /// p99 in µs at the offered rate every target gets, and that rate in deliveries/s.
    fn common_p99(&self, kind: Kind, n: usize) -> Option<(f64, f64)> {
        self.fanout_run(kind, n)
            .and_then(|f| f.common.as_ref())
            .map(|c| (c.latency.p99_us, c.params.rate * n as f64))
    }

    /// Server RSS growth per idle session, in KiB.
    fn kib_per_session(&self, kind: Kind) -> Option<f64> {
        self.connections
            .iter()
            .find(|c| c.target == kind && !c.result.params.resume)
            .and_then(|c| c.result.server_rss_per_session_bytes)
            .map(|b| b / 1024.0)
    }
}

/// Writes PREFIX.json, PREFIX.md and the plots.
pub fn write(report: &Report, prefix: &Path) -> Result<()> {
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    std::fs::write(with_ext(".json"), serde_json::to_string_pretty(report)?)?;
    let mut plots = Vec::new();
    if !report.fanout.is_empty() {
        let path = with_ext("-fanout.png");
        crate::plot::fanout(report, &path)?;
        plots.push(path);
    }
    if !report.hol.is_empty() {
        let path = with_ext("-hol.png");
        crate::plot::hol(report, &path)?;
        plots.push(path);
    }
    let names: Vec<String> = plots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    std::fs::write(with_ext(".md"), markdown(report, &names))?;
    eprintln!(
        "bench: wrote {}.{{md,json}} and {} plot(s)",
        prefix.display(),
        plots.len()
    );
    Ok(())
}

fn kfmt(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// " (generator-bound: quiver's generator at 1.00 core, server at 0.85)" for the runs of `runs`
/// whose generator was the limit, empty when none was. A verdict read from such a run is partly
/// the generator's (its QUIC client's receive and ACK work), not server against server (outside
/// audit 123, F2).
pub(crate) fn bound_note(runs: &[(Kind, Option<&LoadResult>)]) -> String {
    let parts: Vec<String> = runs
        .iter()
        .filter_map(|(kind, m)| m.filter(|m| m.is_generator_bound()).map(|m| (kind, m)))
        .map(|(kind, m)| {
            format!(
                "{}'s generator at {:.2} core, server at {}",
                kind.label(),
                m.generator_cores(),
                m.server_cores().map_or("–".into(), |s| format!("{s:.2}"))
            )
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (generator-bound: {})", parts.join("; "))
    }
}

/// " (quiver lost 3 of 40k deliveries: percentiles of those that arrived)" for the runs of `runs`
/// that lost deliveries, empty when none did. A latency read from such a run counts only the
/// survivors (outside audit 123, F4).
pub(crate) fn lost_note(runs: &[(Kind, Option<&LoadResult>)]) -> String {
    let parts: Vec<String> = runs
        .iter()
        .filter_map(|(kind, m)| m.filter(|m| m.missing > 0).map(|m| (kind, m)))
        .map(|(kind, m)| {
            format!(
                "{} lost {} of {}",
                kind.label(),
                m.missing,
                kfmt((m.delivered + m.missing) as f64)
            )
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(
            " ({} deliveries: percentiles of those that arrived)",
            parts.join("; ")
        )
    }
}

/// What a table cell adds after one run's figure: that its generator was the limit (F2), and
/// that deliveries were lost, so its percentiles count only the rest (F4; outside audit 123).
fn marks(m: &LoadResult) -> String {
    let mut out = String::new();
    if m.is_generator_bound() {
        out.push_str(" (generator-bound)");
    }
    if m.missing > 0 {
        let _ = write!(out, " ({} lost: arrived only)", m.missing);
    }
    out
}

/// A "lost" column's cell: deliveries that never arrived (expected − delivered after draining),
/// and their share (outside audit 123, F4).
fn lost_cell(m: &LoadResult) -> String {
    if m.missing == 0 {
        return "0".into();
    }
    let expected = (m.delivered + m.missing).max(1) as f64;
    format!(
        "{} ({:.2} %)",
        m.missing,
        m.missing as f64 * 100.0 / expected
    )
}

/// "1.00 / 0.85", the generator's and the server's cores over the window, marked when the
/// generator was the limit (outside audit 123, F2).
fn cores_cell(m: &LoadResult) -> String {
    format!(
        "{:.2} / {}{}",
        m.generator_cores(),
        m.server_cores().map_or("–".into(), |s| format!("{s:.2}")),
        if m.is_generator_bound() {
            " generator-bound"
        } else {
            ""
        }
    )
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

pub fn markdown(r: &Report, plots: &[String]) -> String {
    let mut md = String::new();
    intro::header(&mut md, r);
    // Runs were recorded target by target before the maxima went round by round (outside
    // audit 123, F3), so in older reports sizes repeat: sort before removing duplicates.
    let mut sizes: Vec<usize> = r.fanout.iter().map(|f| f.subscribers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    fanout::tables(&mut md, r, &sizes, plots);
    verdicts::section(&mut md, r, &sizes);
    targets::issue14(&mut md, r);
    rooms::section(&mut md, r);
    connections::section(&mut md, r);
    hol::section(&mut md, r, plots);
    cluster(&mut md, r);
    notes(&mut md, r);
    md
}

/// Two instances over NATS, or why none were measured.
fn cluster(md: &mut String, r: &Report) {
    let _ = writeln!(md, "## Cluster fan-out\n");
    if r.cluster_runs.is_empty() {
        let _ = writeln!(md, "{}.\n", r.cluster);
    } else {
        cluster_section(md, r);
    }
}

/// The run's notes and failed checks; nothing when there are none.
fn notes(md: &mut String, r: &Report) {
    let failed: Vec<&Check> = r.checks.iter().filter(|c| !c.ok).collect();
    if !failed.is_empty() || !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
        for c in failed {
            let _ = writeln!(
                md,
                "- FAILED {}: {}",
                c.name,
                c.error.as_deref().unwrap_or("")
            );
        }
        md.push('\n');
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".into(), |(_, v)| v.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel,
        memory_gib,
    }
}

/// `YYYY-MM-DD HH:MM UTC`, from the system clock (no date crate needed for this).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn load(rate: f64) -> LoadResult {
        serde_json::from_value(serde_json::json!({
            "params": {"rooms": 1, "subs_per_room": 10, "publishers": 1, "payload": 100,
                       "duration": 1.0, "warmup": 0.1, "rate": 0.0, "window": 10},
            "sessions": 11, "connect_secs": 0.1, "published": 10, "delivered": 100, "missing": 0,
            "deliveries_per_sec": rate, "publications_per_sec": rate / 10.0,
            "latency": {"count": 100, "p50_us": 1.0, "p90_us": 2.0, "p99_us": 3.0,
                        "p999_us": 4.0, "max_us": 5.0},
            "generator_cpu_secs": 0.5, "server_cpu_secs": 0.5, "measured_secs": 1.0
        }))
        .expect("a valid LoadResult")
    }

    /// A common-rate run at 5 publications/s (50 deliveries/s to 10 subscribers) with p99 `p99`.
    pub(crate) fn common(rate: f64, p99: f64) -> LoadResult {
        let mut common = load(rate);
        common.params.rate = 5.0;
        common.latency.p99_us = p99;
        common
    }

    /// A fan-out run at 10 subscribers: max rate `max`, `common` at the common rate.
    pub(crate) fn fanout10(target: Kind, max: f64, common: LoadResult) -> FanoutRun {
        FanoutRun {
            target,
            subscribers: 10,
            max: load(max),
            fixed: Vec::new(),
            common: Some(common),
            server_version: String::new(),
        }
    }

    /// An idle-connections run of 100 sessions.
    pub(crate) fn conn(target: Kind, per_sec: f64, kib: f64) -> ConnRun {
        ConnRun {
            target,
            result: ConnResult {
                params: crate::workload::connections::ConnParams {
                    sessions: 100,
                    hold: 1.0,
                    resume: false,
                    concurrency: 64,
                },
                connect_secs: 0.1,
                sessions_per_sec: per_sec,
                server_rss_per_session_bytes: Some(kib * 1024.0),
            },
            server_rss_before: 0,
            server_rss_after: 0,
        }
    }

    /// Runs are recorded target by target (all sizes for one target, then the next): each
    /// size still gets one table and one set of target lines.
    #[test]
    fn each_fanout_size_reported_once() {
        let mut r = Report::new(Mode::Full, "test".into());
        for target in [Kind::Quiver, Kind::Socketio] {
            for n in [100, 1000] {
                r.fanout.push(FanoutRun {
                    target,
                    subscribers: n,
                    max: load(if target == Kind::Quiver { 400.0 } else { 100.0 }),
                    fixed: Vec::new(),
                    common: None,
                    server_version: String::new(),
                });
            }
        }
        let md = markdown(&r, &[]);
        for n in [100, 1000] {
            let heading = format!("## Fan-out: 1 publisher, 1 room, {n} subscribers");
            assert_eq!(md.matches(&heading).count(), 1, "{md}");
            let target = format!("- Fan-out ≥ 3× Socket.IO (n={n}): 4.00×");
            assert_eq!(md.matches(&target).count(), 1, "{md}");
        }
    }

    /// The WebSocket transport's three targets are read against Socket.IO, met or missed.
    #[test]
    fn quiver_ws_targets_against_socketio() {
        let mut r = Report::new(Mode::Quick, "test".into());
        for (target, max, p99, kib) in [
            (Kind::QuiverWs, 700.0, 2.0, 20.0),
            (Kind::Socketio, 200.0, 3.0, 25.0),
        ] {
            r.fanout.push(fanout10(target, max, common(max / 2.0, p99)));
            r.connections.push(conn(target, 1000.0, kib));
        }
        let md = markdown(&r, &[]);
        assert!(
            md.contains("- quiver-ws fan-out ≥ 3× Socket.IO (n=10): 700 vs 200, 3.50× — **met**"),
            "{md}"
        );
        assert!(
            md.contains("(50 deliveries/s, n=10): 2 µs vs 3 µs — **met**"),
            "{md}"
        );
        assert!(
            md.contains("per idle session ≤ Socket.IO's: 20.0 vs 25.0 KiB — **met**"),
            "{md}"
        );

        // Worse on every count: each line says missed.
        r.fanout[0].max.deliveries_per_sec = 500.0;
        if let Some(c) = r.fanout[0].common.as_mut() {
            c.latency.p99_us = 4.0;
        }
        r.connections[0].result.server_rss_per_session_bytes = Some(26.0 * 1024.0);
        let md = markdown(&r, &[]);
        assert!(md.contains("2.50× — **missed**"), "{md}");
        assert!(md.contains("4 µs vs 3 µs — **missed**"), "{md}");
        assert!(md.contains("26.0 vs 25.0 KiB — **missed**"), "{md}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }
}
