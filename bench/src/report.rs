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

pub mod neighbour;
mod sections;
pub mod targets;

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
    let _ = writeln!(md, "# Quiver benchmarks — {} ({:?} mode)\n", r.date, r.mode);
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {:.0} GiB, Linux {}. {}. Run took {:.0} s.\n",
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.memory_gib,
        r.machine.kernel,
        r.pinning,
        r.elapsed_secs
    );
    let versions: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(md, "Versions: {}.\n", versions.join("; "));
    let _ = writeln!(
        md,
        "Every target is driven by the same Rust load generator (`quiver-bench`), one session per \
         subscriber, payload = publisher's send time + padding. Max rate is closed-loop (the \
         publisher stays a bounded window ahead of deliveries); fixed rates are fractions of each \
         target's own max. \"Other processes' CPU\" is what the rest of the machine used during the \
         max run (a shared machine): when it is high, absolute numbers are low and noisy. Single \
         runs unless the mode repeats: read ratios, not absolutes. A run whose generator used \
         0.95 of its core or more is marked *generator-bound* (in a verdict: with both \
         processes' cores): the generator was the limit there, not the server, and the figure \
         is partly the client's. Deliveries that never arrived are counted (\"lost\", `missing` \
         in the JSON); a latency from a run that lost any counts only those that arrived.\n"
    );
    acks_disclosure(&mut md, r);

    // Fan-out.
    // Runs were recorded target by target before the maxima went round by round (outside
    // audit 123, F3), so in older reports sizes repeat: sort before removing duplicates.
    let mut sizes: Vec<usize> = r.fanout.iter().map(|f| f.subscribers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &n in &sizes {
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
    for &n in &sizes {
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
        sections::same_rate_table(&mut md, &rows);
    }
    if let Some(p) = plots.iter().find(|p| p.ends_with("-fanout.png")) {
        let _ = writeln!(md, "![fan-out]({p})\n");
    }

    // Targets.
    let _ = writeln!(md, "## Against the issue's targets\n");
    for &n in &sizes {
        let q = r.max_rate(Kind::Quiver, n);
        let max = |kind: Kind| r.fanout_run(kind, n).map(|f| &f.max);
        if let (Some(q), Some(s)) = (q, r.max_rate(Kind::Socketio, n)) {
            let _ = writeln!(
                md,
                "- Fan-out ≥ 3× Socket.IO (n={n}): {:.2}× — {}{}",
                q / s,
                met(q / s >= 3.0),
                bound_note(&[
                    (Kind::Quiver, max(Kind::Quiver)),
                    (Kind::Socketio, max(Kind::Socketio))
                ])
            );
        }
        if let (Some(q), Some(b)) = (q, r.max_rate(Kind::Bare, n)) {
            let _ = writeln!(
                md,
                "- Fan-out ≥ 0.7× bare wtransport (n={n}): {:.2}× — {}{}",
                q / b,
                met(q / b >= 0.7),
                bound_note(&[
                    (Kind::Quiver, max(Kind::Quiver)),
                    (Kind::Bare, max(Kind::Bare))
                ])
            );
        }
        if let Some(x) = r
            .fanout_run(Kind::Quiver, n)
            .and_then(|f| sections::half(&f.fixed))
        {
            let p99 = x.latency.p99_us;
            let runs = [(Kind::Quiver, Some(x))];
            let _ = writeln!(
                md,
                "- p99 < 5 ms at half of max (n={n}): {} — {}{}{}",
                us(p99),
                met(p99 < 5000.0),
                bound_note(&runs),
                lost_note(&runs)
            );
        }
    }
    if let Some(c) = r
        .connections
        .iter()
        .find(|c| c.target == Kind::Quiver && !c.result.params.resume)
    {
        let per = c.result.server_rss_per_session_bytes.unwrap_or(0.0) / 1024.0;
        let _ = writeln!(
            md,
            "- Server memory < 50 KiB per idle session: {per:.1} KiB — {}",
            met(per < 50.0)
        );
    }
    ws_targets(&mut md, r, &sizes);
    let quiet_p99 = |kind: Kind, loss: u32| {
        r.hol
            .iter()
            .find(|h| h.target == kind && h.loss_pct == loss && h.rtt_ms.is_none())
            .map(|h| h.result.quiet.p99_us)
    };
    if let (Some(a), Some(b)) = (quiet_p99(Kind::Quiver, 0), quiet_p99(Kind::Quiver, 2)) {
        let _ = writeln!(
            md,
            "- Quiet room p99 at 2% loss within 2× of no loss: {} → {} ({:.1}×) — {}",
            us(a),
            us(b),
            b / a,
            met(b <= 2.0 * a)
        );
        if let (Some(a), Some(b)) = (
            quiet_p99(Kind::QuiverCubic, 0),
            quiet_p99(Kind::QuiverCubic, 2),
        ) {
            let _ = writeln!(
                md,
                "  - quiver-cubic (`transport.congestion_control = \"cubic\"`) for comparison: {} → {} ({:.1}×)",
                us(a),
                us(b),
                b / a
            );
        }
        for other in [Kind::QuiverSingleStream, Kind::Nats, Kind::Socketio] {
            if let (Some(a), Some(b)) = (quiet_p99(other, 0), quiet_p99(other, 2)) {
                let _ = writeln!(
                    md,
                    "  - {} for comparison: {} → {} ({:.1}×)",
                    other.label(),
                    us(a),
                    us(b),
                    b / a
                );
            }
        }
    }
    md.push('\n');
    targets::issue14(&mut md, r);

    if !r.rooms.is_empty() {
        let p = &r.rooms[0].result.params;
        let _ = writeln!(
            md,
            "## Many rooms: {} rooms × {} subscribers, {} publishers, max rate\n",
            p.rooms, p.subs_per_room, p.publishers
        );
        let _ = writeln!(
            md,
            "| target | deliveries/s | p50 | p99 | server CPU µs/delivery | generator / server (cores) | lost |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for x in &r.rooms {
            let m = &x.result;
            let delivered = m.deliveries_per_sec * m.measured_secs;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                x.target.label(),
                kfmt(m.deliveries_per_sec),
                us(m.latency.p50_us),
                us(m.latency.p99_us),
                m.server_cpu_secs
                    .filter(|_| delivered > 0.0)
                    .map_or("–".into(), |c| format!("{:.2}", c * 1e6 / delivered)),
                cores_cell(m),
                lost_cell(m),
            );
        }
        md.push('\n');
        rooms_common_table(&mut md, r);
    }

    if !r.connections.is_empty() {
        let _ = writeln!(md, "## Idle connections\n");
        let _ = writeln!(
            md,
            "| target | sessions | connect rate (sessions/s, handshakes included) | server RSS before → after | per session |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|---:|");
        for c in &r.connections {
            let _ = writeln!(
                md,
                "| {}{} | {} | {:.0} | {:.1} → {:.1} MiB | {:.1} KiB |",
                c.target.label(),
                if c.result.params.resume {
                    " (resumed)"
                } else {
                    ""
                },
                c.result.params.sessions,
                c.result.sessions_per_sec,
                c.server_rss_before as f64 / 1048576.0,
                c.server_rss_after as f64 / 1048576.0,
                c.result.server_rss_per_session_bytes.unwrap_or(0.0) / 1024.0
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Head-of-line blocking under loss\n");
    match (&r.hol_skipped, r.hol.is_empty()) {
        (Some(why), _) => {
            let _ = writeln!(md, "Skipped: {why}.\n");
        }
        (None, true) => {
            let _ = writeln!(md, "No results.\n");
        }
        (None, false) => {
            let p = &r.hol[0].result.params;
            let _ = writeln!(
                md,
                "One subscriber session in rooms `busy` ({:.0} msg/s × {} B) and `quiet` ({:.0} msg/s × \
                 {} B), over a veth pair with random loss in both directions (nftables); publishers on \
                 a clean path. nats-server and Socket.IO carry both rooms on one TCP connection. \
                 Quiet room latency, p50 / p90 / p99 (p90 shows head-of-line \
                 blocking best: p99 is dominated by the quiet room's own lost packets, which no \
                 stream layout can avoid):\n",
                p.busy_rate, p.busy_payload, p.quiet_rate, p.quiet_payload
            );
            let plain: Vec<&HolRun> = r.hol.iter().filter(|h| h.rtt_ms.is_none()).collect();
            loss_table(&mut md, &plain, |h| {
                format!(
                    "{} / {} / {}",
                    us(h.result.quiet.p50_us),
                    us(h.result.quiet.p90_us),
                    us(h.result.quiet.p99_us)
                )
            });
            if let Some(p) = plots.iter().find(|p| p.ends_with("-hol.png")) {
                let _ = writeln!(md, "![quiet room p99 under loss]({p})\n");
            }
            relay_table(&mut md, r);
        }
    }

    let _ = writeln!(md, "## Cluster fan-out\n");
    if r.cluster_runs.is_empty() {
        let _ = writeln!(md, "{}.\n", r.cluster);
    } else {
        cluster_section(&mut md, r);
    }

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
    md
}

/// Which client population Quiver's QUIC rows stand for (outside audit 123, F1). Quiver asks
/// clients through QUIC's ACK-frequency extension to acknowledge less often
/// (`server/src/server.rs`); the generator's quinn clients take it, Chromium does not offer it,
/// and the bare peer asks nothing, so "the bare transport" is not Quiver's transport under
/// Quiver's settings.
fn acks_disclosure(md: &mut String, r: &Report) {
    let asked = if r.browser_like_acks {
        "In this run (`--browser-like-acks`) Quiver asked for nothing \
         (`transport.client_ack_delay = 0`), so its clients acknowledged at quinn's default \
         rate (every second packet, within 25 ms), as clients that do not take the extension \
         do; Chromium's own acknowledgement policy is not reproduced."
    } else {
        "In this run Quiver asked as by default: an ACK every fourth packet and a lone packet's \
         within 100 ms (`transport.client_ack_threshold = 3`, `client_ack_delay = \"100ms\"`). \
         `scripts/bench --browser-like-acks` measures without it."
    };
    let _ = writeln!(
        md,
        "Quiver's QUIC rows (`quiver`, its head-of-line variants, the cluster) are measured \
         with quinn clients, which honour the ACK-frequency request Quiver sends (QUIC's \
         ACK-frequency extension: fewer ACKs for the server to receive). Browsers do not: \
         Chromium does not offer the extension. {asked} The team's own A/B: without the \
         request, many rooms at 100k deliveries/s measured p99 265–293 ms, with it (then a \
         threshold of 10) 149–163 ms, and a higher maximum in two of three pairs \
         (`bench/results/2026-12-01-ack-frequency.md`); a threshold of 3 against 1 added 6–14 % \
         deliveries/s in many rooms (`bench/results/2026-12-05-ack-threshold-cap.md`). The bare \
         transport peer (`bare-wtransport`) uses quinn's defaults: it asks for no ACK reduction and runs \
         Cubic (Quiver runs BBR), so it is not Quiver's transport ceiling under Quiver's \
         settings. nats-server and Socket.IO are driven over ordinary TCP clients.\n"
    );
}

/// Issue 9's targets for Quiver's WebSocket transport, against Socket.IO (the same class of
/// transport: every room on one TCP connection).
fn ws_targets(md: &mut String, r: &Report, sizes: &[usize]) {
    let (ws, sio) = (Kind::QuiverWs, Kind::Socketio);
    for &n in sizes {
        let max = |kind: Kind| r.fanout_run(kind, n).map(|f| &f.max);
        let common = |kind: Kind| r.fanout_run(kind, n).and_then(|f| f.common.as_ref());
        if let (Some(q), Some(s)) = (r.max_rate(ws, n), r.max_rate(sio, n)) {
            let _ = writeln!(
                md,
                "- quiver-ws fan-out ≥ 3× Socket.IO (n={n}): {} vs {}, {:.2}× — {}{}",
                kfmt(q),
                kfmt(s),
                q / s,
                met(q >= 3.0 * s),
                bound_note(&[(ws, max(ws)), (sio, max(sio))])
            );
        }
        if let (Some((q, rate)), Some((s, _))) = (r.common_p99(ws, n), r.common_p99(sio, n)) {
            let runs = [(ws, common(ws)), (sio, common(sio))];
            let _ = writeln!(
                md,
                "- quiver-ws p99 no worse than Socket.IO at the same offered rate ({} deliveries/s, \
                 n={n}): {} vs {} — {}{}{}",
                kfmt(rate),
                us(q),
                us(s),
                met(q <= s),
                bound_note(&runs),
                lost_note(&runs)
            );
        }
    }
    if let (Some(q), Some(s)) = (r.kib_per_session(ws), r.kib_per_session(sio)) {
        let _ = writeln!(
            md,
            "- quiver-ws server memory per idle session ≤ Socket.IO's: {q:.1} vs {s:.1} KiB — {}",
            met(q <= s)
        );
    }
}

/// The head-of-line runs made through the delay relay (QUIC variants with a real round trip).
fn relay_table(md: &mut String, r: &Report) {
    let relayed: Vec<&HolRun> = r.hol.iter().filter(|h| h.rtt_ms.is_some()).collect();
    let Some(first) = relayed.first() else {
        return;
    };
    let p = &first.result.params;
    let _ = writeln!(
        md,
        "Through a UDP relay adding {} ms of round trip (QUIC only; the loss is still on the \
         veth, behind the relay), busy room at {:.0} msg/s × {} B, quiet room at {:.0} msg/s × \
         {} B; quiet room p50 / p90 / p99 (busy room p99):\n",
        first.rtt_ms.unwrap_or(0),
        p.busy_rate,
        p.busy_payload,
        p.quiet_rate,
        p.quiet_payload
    );
    loss_table(md, &relayed, |h| {
        format!(
            "{} / {} / {} ({})",
            us(h.result.quiet.p50_us),
            us(h.result.quiet.p90_us),
            us(h.result.quiet.p99_us),
            us(h.result.busy.p99_us)
        )
    });
}

/// A loss × target table of head-of-line runs, one cell per run.
fn loss_table(md: &mut String, runs: &[&HolRun], cell: impl Fn(&HolRun) -> String) {
    let mut kinds: Vec<Kind> = runs.iter().map(|h| h.target).collect();
    kinds.sort_by_key(|k| k.label());
    kinds.dedup();
    let mut losses: Vec<u32> = runs.iter().map(|h| h.loss_pct).collect();
    losses.sort_unstable();
    losses.dedup();
    let head: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
    let _ = writeln!(md, "| loss | {} |", head.join(" | "));
    let _ = writeln!(md, "|---:|{}", "---|".repeat(kinds.len()));
    for loss in losses {
        let cells: Vec<String> = kinds
            .iter()
            .map(|k| {
                runs.iter()
                    .find(|h| h.target == *k && h.loss_pct == loss)
                    .map_or("–".into(), |h| cell(h))
            })
            .collect();
        let _ = writeln!(md, "| {loss}% | {} |", cells.join(" | "));
    }
    md.push('\n');
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
