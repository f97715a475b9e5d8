//! Issue 14's targets, each printed as met or missed (or why it could not be judged), and the
//! "no regression" figures printed beside the previous run's.
//!
//! The targets are ratios against nats-server run by the same generator in the same run, so
//! they hold on a shared, noisy machine better than absolutes would.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{bound_note, kfmt, lost_note, met, us, Report, RoomsRun};
use crate::orchestrate::Mode;
use crate::target::Kind;
use crate::workload::load::LoadResult;

/// The heading `scripts/bench` looks for to print this block at the end of a run.
pub const HEADING: &str = "## Issue 14 targets";

/// Thresholds, from issue 14's "Targets".
const ROOMS_RATE_VS_NATS: f64 = 1.0;
const ROOMS_CPU_VS_NATS: f64 = 1.2;
const FANOUT_VS_NATS: f64 = 1.0;
const P99_VS_NATS: f64 = 1.2;
const KIB_PER_SESSION: f64 = 40.0;
const SESSIONS_PER_SEC: f64 = 1500.0;

/// An earlier run's "no regression" figures, kept in the report so a re-render shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    /// File the figures were read from.
    pub source: String,
    /// That run's date.
    pub date: String,
    /// (what, figure) pairs, as [`regression_figures`] gives them.
    pub figures: Vec<(String, String)>,
}

impl Reference {
    /// Reads an earlier run's JSON report and keeps its "no regression" figures.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let earlier: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a benchmark report", path.display()))?;
        Ok(Self {
            source: path.display().to_string(),
            date: earlier.date.clone(),
            figures: regression_figures(&earlier),
        })
    }
}

/// The latest run of `mode` in `dir` (by the date inside it) that is older than `before` and not
/// `skip` (the file this run is about to write). Files that are not run reports (the neighbour
/// benchmark's, for one) are passed over, and so are runs of only some workloads
/// (`--workloads fanout`): a reference without many rooms or idle sessions would leave those
/// "no regression" figures with nothing to stand beside.
pub fn latest_earlier(dir: &Path, mode: Mode, before: &str, skip: &Path) -> Option<PathBuf> {
    let mut best: Option<(String, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") || same_file(&path, skip) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(report) = serde_json::from_str::<Report>(&text) else {
            continue;
        };
        if report.mode != mode || report.date.as_str() >= before || !complete(&report) {
            continue;
        }
        if best.as_ref().is_none_or(|(date, _)| report.date > *date) {
            best = Some((report.date, path));
        }
    }
    best.map(|(_, path)| path)
}

/// Ran fan-out, many rooms and idle sessions (what every mode runs unless `--workloads` narrows
/// it; head-of-line and the cluster need root or a NATS server, so they may be missing anyway).
fn complete(r: &Report) -> bool {
    !r.fanout.is_empty() && !r.rooms.is_empty() && !r.connections.is_empty()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn rooms(r: &Report, kind: Kind) -> Option<&RoomsRun> {
    r.rooms.iter().find(|x| x.target == kind)
}

/// Server CPU per delivery at max rate, in µs.
fn cpu_per_delivery(m: &LoadResult) -> Option<f64> {
    let delivered = m.deliveries_per_sec * m.measured_secs;
    m.server_cpu_secs
        .filter(|_| delivered > 0.0)
        .map(|c| c * 1e6 / delivered)
}

/// p99 (µs) at the common offered rate, and that rate in deliveries/s (fan-out and many rooms).
fn common_p99(common: Option<&LoadResult>) -> Option<(f64, f64)> {
    common.map(|c| {
        (
            c.latency.p99_us,
            c.params.rate * c.params.subs_per_room.max(1) as f64,
        )
    })
}

fn not_measured(md: &mut String, what: &str, why: &str) {
    let _ = writeln!(md, "- {what}: not measured ({why}) — **missed**");
}

/// Prints every issue-14 target as met or missed. A target whose figures are missing from this
/// run is printed as not measured and counted as missed, so none silently drops out.
pub fn issue14(md: &mut String, r: &Report) {
    let _ = writeln!(md, "{HEADING}\n");
    let _ = writeln!(
        md,
        "Quiver over WebTransport (`quiver`) against nats-server (`nats`, core pub/sub over \
         plain TCP) in this run; `quiver-ws` beside it where it ran. `quiver`'s clients are \
         quinn clients that take its ACK-frequency request, which browsers (Chromium) do not{}; \
         the bare transport asks for none and runs Cubic (see the top of the report). A verdict \
         read from a run whose load generator was the limit (0.95 of its core or more) says \
         *generator-bound*, with both processes' cores.\n",
        if r.browser_like_acks {
            " (this run, `--browser-like-acks`: not asked)"
        } else {
            ""
        }
    );
    let have_nats = r.fanout.iter().any(|f| f.target == Kind::Nats)
        || r.rooms.iter().any(|x| x.target == Kind::Nats)
        || r.connections.iter().any(|c| c.target == Kind::Nats);
    let no_nats = if have_nats {
        "no nats-server result for it"
    } else {
        "no nats-server in this run"
    };

    // Many rooms.
    let what = format!(
        "Many rooms, deliveries/s ≥ {ROOMS_RATE_VS_NATS:.1}× nats-server{}",
        r.rooms.first().map_or(String::new(), |x| {
            let p = &x.result.params;
            format!(
                " ({} rooms × {}, {} publishers)",
                p.rooms, p.subs_per_room, p.publishers
            )
        })
    );
    match (rooms(r, Kind::Quiver), rooms(r, Kind::Nats)) {
        (Some(q), Some(n)) => {
            let (q, n) = (&q.result, &n.result);
            let both = bound_note(&[(Kind::Quiver, Some(q)), (Kind::Nats, Some(n))]);
            let x = q.deliveries_per_sec / n.deliveries_per_sec.max(1e-9);
            let _ = writeln!(
                md,
                "- {what}: {} vs {}, {x:.2}× — {}{both}",
                kfmt(q.deliveries_per_sec),
                kfmt(n.deliveries_per_sec),
                met(x >= ROOMS_RATE_VS_NATS)
            );
            if let Some(w) = rooms(r, Kind::QuiverWs) {
                let note = bound_note(&[(Kind::QuiverWs, Some(&w.result))]);
                let w = w.result.deliveries_per_sec;
                let x = w / n.deliveries_per_sec.max(1e-9);
                let _ = writeln!(
                    md,
                    "  - quiver-ws: {}, {x:.2}× — {}{note}",
                    kfmt(w),
                    met(x >= ROOMS_RATE_VS_NATS)
                );
            }
            if let Some(t) = rooms(r, Kind::NatsTls) {
                let note = bound_note(&[(Kind::NatsTls, Some(&t.result))]);
                let t = t.result.deliveries_per_sec;
                tls_line(
                    md,
                    &format!("{}{note}", kfmt(t)),
                    q.deliveries_per_sec / t.max(1e-9),
                );
            }
            let what = format!(
                "Many rooms, server CPU per delivery ≤ {ROOMS_CPU_VS_NATS:.1}× nats-server's"
            );
            match (cpu_per_delivery(q), cpu_per_delivery(n)) {
                (Some(qc), Some(nc)) => {
                    let x = qc / nc.max(1e-9);
                    let _ = writeln!(
                        md,
                        "- {what}: {qc:.2} vs {nc:.2} µs, {x:.2}× — {}{both}",
                        met(x <= ROOMS_CPU_VS_NATS)
                    );
                    let ws = rooms(r, Kind::QuiverWs).map(|w| &w.result);
                    if let Some(wc) = ws.and_then(cpu_per_delivery) {
                        let x = wc / nc.max(1e-9);
                        let _ = writeln!(
                            md,
                            "  - quiver-ws: {wc:.2} µs, {x:.2}× — {}{}",
                            met(x <= ROOMS_CPU_VS_NATS),
                            bound_note(&[(Kind::QuiverWs, ws)])
                        );
                    }
                    let tls = rooms(r, Kind::NatsTls).map(|t| &t.result);
                    if let Some(tc) = tls.and_then(cpu_per_delivery) {
                        let figure = format!("{tc:.2} µs{}", bound_note(&[(Kind::NatsTls, tls)]));
                        tls_line(md, &figure, qc / tc.max(1e-9));
                    }
                }
                _ => not_measured(md, &what, "no server CPU sample"),
            }
        }
        (None, _) => not_measured(md, &what, "no many-rooms result for quiver"),
        (_, None) => not_measured(md, &what, no_nats),
    }

    // Fan-out, at every size this mode runs.
    let mut sizes: Vec<usize> = r
        .fanout
        .iter()
        .filter(|f| f.target == Kind::Quiver)
        .map(|f| f.subscribers)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        not_measured(
            md,
            "Fan-out ≥ 1.0× nats-server",
            "no fan-out result for quiver",
        );
    }
    for &n in &sizes {
        let what = format!("Fan-out ≥ {FANOUT_VS_NATS:.1}× nats-server (n={n})");
        let max = |kind: Kind| r.fanout_run(kind, n).map(|f| &f.max);
        let q = max(Kind::Quiver).map(|m| m.deliveries_per_sec);
        match (q, max(Kind::Nats).map(|m| m.deliveries_per_sec)) {
            (Some(q), Some(nats)) => {
                let x = q / nats.max(1e-9);
                let _ = writeln!(
                    md,
                    "- {what}: {} vs {}, {x:.2}× — {}{}",
                    kfmt(q),
                    kfmt(nats),
                    met(x >= FANOUT_VS_NATS),
                    bound_note(&[
                        (Kind::Quiver, max(Kind::Quiver)),
                        (Kind::Nats, max(Kind::Nats))
                    ])
                );
                if let Some(w) = max(Kind::QuiverWs) {
                    let x = w.deliveries_per_sec / nats.max(1e-9);
                    let _ = writeln!(
                        md,
                        "  - quiver-ws: {}, {x:.2}× — {}{}",
                        kfmt(w.deliveries_per_sec),
                        met(x >= FANOUT_VS_NATS),
                        bound_note(&[(Kind::QuiverWs, Some(w))])
                    );
                }
                if let Some(t) = max(Kind::NatsTls) {
                    let figure = format!(
                        "{}{}",
                        kfmt(t.deliveries_per_sec),
                        bound_note(&[(Kind::NatsTls, Some(t))])
                    );
                    tls_line(md, &figure, q / t.deliveries_per_sec.max(1e-9));
                }
            }
            _ => not_measured(md, &what, no_nats),
        }
    }

    // p99 at the same offered rate: every fan-out size, and many rooms.
    for &n in &sizes {
        let common = |kind: Kind| r.fanout_run(kind, n).and_then(|f| f.common.as_ref());
        let at = |kind: Kind| (kind, common(kind));
        let all = [
            at(Kind::Quiver),
            at(Kind::Nats),
            at(Kind::QuiverWs),
            at(Kind::NatsTls),
        ];
        p99_lines(md, &format!("n={n}"), all, no_nats);
        let what = format!("p99 at the same offered rate ≤ the bare transport's (n={n})");
        match (
            common_p99(common(Kind::Quiver)),
            common_p99(common(Kind::Bare)),
        ) {
            (Some((q, rate)), Some((b, _))) => {
                let runs = [at(Kind::Quiver), at(Kind::Bare)];
                let _ = writeln!(
                    md,
                    "- {what}, {} deliveries/s: {} vs {} — {}{}{}",
                    kfmt(rate),
                    us(q),
                    us(b),
                    met(q <= b),
                    bound_note(&runs),
                    lost_note(&runs)
                );
            }
            (None, _) => not_measured(md, &what, "no common-rate run for quiver"),
            (_, None) => not_measured(md, &what, "no common-rate run for the bare peer"),
        }
    }
    let at = |kind: Kind| (kind, rooms(r, kind).and_then(|x| x.common.as_ref()));
    let all = [
        at(Kind::Quiver),
        at(Kind::Nats),
        at(Kind::QuiverWs),
        at(Kind::NatsTls),
    ];
    p99_lines(md, "many rooms", all, no_nats);

    // Memory per idle session.
    let kib = |kind: Kind| r.kib_per_session(kind);
    let what = format!("Memory per idle session ≤ {KIB_PER_SESSION:.0} KiB");
    match kib(Kind::Quiver) {
        Some(q) => {
            let sessions = r
                .connections
                .iter()
                .find(|c| c.target == Kind::Quiver)
                .map_or(0, |c| c.result.params.sessions);
            let _ = writeln!(
                md,
                "- {what} ({sessions} sessions): {q:.1} KiB — {}",
                met(q <= KIB_PER_SESSION)
            );
            match kib(Kind::Nats) {
                Some(n) => {
                    let _ = writeln!(
                        md,
                        "  - stretch, ≤ nats-server's: {q:.1} vs {n:.1} KiB — {}",
                        met(q <= n)
                    );
                }
                None => {
                    let _ = writeln!(md, "  - stretch, ≤ nats-server's: not measured ({no_nats})");
                }
            }
        }
        None => not_measured(md, &what, "no idle-connections result for quiver"),
    }

    // Connection setup.
    let what = format!(
        "Connection setup ≥ {} sessions/s, TLS 1.3 handshake and token check (cached after the first) included",
        kfmt_int(SESSIONS_PER_SEC)
    );
    let rate = |kind: Kind| {
        r.connections
            .iter()
            .find(|c| c.target == kind)
            .map(|c| c.result.sessions_per_sec)
    };
    match rate(Kind::Quiver) {
        Some(q) => {
            let _ = writeln!(md, "- {what}: {q:.0}/s — {}", met(q >= SESSIONS_PER_SEC));
            let tls = Kind::NatsTls.label();
            match rate(Kind::NatsTls) {
                Some(t) => {
                    let _ = writeln!(
                        md,
                        "  - against a TLS-terminating peer ({tls}): {t:.0}/s, quiver {:.2}×",
                        q / t.max(1e-9)
                    );
                }
                None => {
                    let _ = writeln!(md, "  - no TLS-terminating peer ({tls}) in this run");
                }
            }
            if let Some(n) = rate(Kind::Nats) {
                let _ = writeln!(
                    md,
                    "  - nats-server over plain TCP (no TLS, no token) for reference: {n:.0}/s"
                );
            }
        }
        None => not_measured(md, &what, "no idle-connections result for quiver"),
    }

    // No regression elsewhere: figures, beside the previous run's.
    let figures = regression_figures(r);
    let _ = writeln!(
        md,
        "- No regression elsewhere (head-of-line, Socket.IO ratios, cluster fan-out): judged \
         against the previous run, not a threshold{}:",
        r.reference.as_ref().map_or(
            " (no earlier run of this mode to compare with)".to_owned(),
            |p| format!(" (previous: {}, `{}`)", p.date, file_name(&p.source))
        )
    );
    if figures.is_empty() {
        let _ = writeln!(
            md,
            "  - no head-of-line, Socket.IO or cluster results in this run"
        );
    }
    // An earlier figure this run did not measure (head-of-line skipped, say) is still shown,
    // so a skipped workload cannot hide a regression.
    if let Some(p) = &r.reference {
        for (what, before) in &p.figures {
            if !figures.iter().any(|(w, _)| w == what) {
                let _ = writeln!(md, "  - {what}: not measured (previous {before})");
            }
        }
    }
    for (what, now) in &figures {
        let before = r.reference.as_ref().and_then(|p| {
            p.figures
                .iter()
                .find(|(w, _)| w == what)
                .map(|(_, v)| v.as_str())
        });
        match (before, &r.reference) {
            (Some(b), _) => {
                let _ = writeln!(md, "  - {what}: {now} (previous {b})");
            }
            (None, Some(_)) => {
                let _ = writeln!(md, "  - {what}: {now} (previous: not measured)");
            }
            (None, None) => {
                let _ = writeln!(md, "  - {what}: {now}");
            }
        }
    }
    md.push('\n');
}

/// The two p99-at-the-same-rate lines against nats-server for one workload (`at`: "n=200" or
/// "many rooms"), from the common-rate runs of quiver, nats, quiver-ws and nats-tls in that
/// order. Each line says when a generator was the limit (F2) and when deliveries were lost, so
/// its p99 is of the survivors (F4; outside audit 123).
fn p99_lines(
    md: &mut String,
    at: &str,
    [quiver, nats, ws, tls]: [(Kind, Option<&LoadResult>); 4],
    no_nats: &str,
) {
    let what = format!("p99 at the same offered rate ≤ {P99_VS_NATS:.1}× nats-server's ({at})");
    let notes =
        |runs: &[(Kind, Option<&LoadResult>)]| format!("{}{}", bound_note(runs), lost_note(runs));
    match (common_p99(quiver.1), common_p99(nats.1)) {
        (Some((q, rate)), Some((n, _))) => {
            let x = q / n.max(1e-9);
            let _ = writeln!(
                md,
                "- {what}, {} deliveries/s: {} vs {}, {x:.2}× — {}{}",
                kfmt(rate),
                us(q),
                us(n),
                met(x <= P99_VS_NATS),
                notes(&[quiver, nats])
            );
            if let Some((w, _)) = common_p99(ws.1) {
                let x = w / n.max(1e-9);
                let _ = writeln!(
                    md,
                    "  - quiver-ws: {}, {x:.2}× — {}{}",
                    us(w),
                    met(x <= P99_VS_NATS),
                    notes(&[ws])
                );
            }
            if let Some((t, _)) = common_p99(tls.1) {
                tls_line(md, &format!("{}{}", us(t), notes(&[tls])), q / t.max(1e-9));
            }
        }
        (None, _) => not_measured(md, &what, "no common-rate run for quiver"),
        (_, None) => not_measured(md, &what, no_nats),
    }
}

/// The same figure for nats-server terminating TLS, beside a target read against plain NATS:
/// Quiver encrypts every packet, plain NATS nothing, so this shows how much of a gap is TLS.
/// For reference only (the issue's targets are against plain NATS).
fn tls_line(md: &mut String, figure: &str, quiver_over_tls: f64) {
    let _ = writeln!(
        md,
        "  - nats-server terminating TLS (`{}`, for reference): {figure}; quiver's figure is \
         {quiver_over_tls:.2}× this",
        Kind::NatsTls.label()
    );
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// 1500 → "1,500".
fn kfmt_int(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The figures issue 14 asks not to regress: head-of-line (Quiver's quiet room, plain and
/// through the relay), the Socket.IO ratios, and the cluster fan-out. Keyed by what they are,
/// so an earlier run's can be matched line by line.
pub fn regression_figures(r: &Report) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut hol: Vec<_> = r.hol.iter().filter(|h| h.target == Kind::Quiver).collect();
    hol.sort_by_key(|h| (h.rtt_ms, h.loss_pct));
    for h in hol {
        let via = h
            .rtt_ms
            .map_or(String::new(), |rtt| format!(", {rtt} ms round trip"));
        out.push((
            format!(
                "head-of-line, quiver quiet room p90 / p99 at {}% loss{via}",
                h.loss_pct
            ),
            format!(
                "{} / {}",
                us(h.result.quiet.p90_us),
                us(h.result.quiet.p99_us)
            ),
        ));
    }
    let mut sizes: Vec<usize> = r.fanout.iter().map(|f| f.subscribers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for kind in [Kind::Quiver, Kind::QuiverWs] {
        for &n in &sizes {
            if let (Some(q), Some(s)) = (r.fanout_run(kind, n), r.fanout_run(Kind::Socketio, n)) {
                out.push((
                    format!("{} fan-out vs Socket.IO (n={n})", kind.label()),
                    format!(
                        "{:.2}×",
                        q.max.deliveries_per_sec / s.max.deliveries_per_sec.max(1e-9)
                    ),
                ));
            }
        }
        if let (Some(q), Some(s)) = (rooms(r, kind), rooms(r, Kind::Socketio)) {
            out.push((
                format!("{} many rooms vs Socket.IO", kind.label()),
                format!(
                    "{:.2}×",
                    q.result.deliveries_per_sec / s.result.deliveries_per_sec.max(1e-9)
                ),
            ));
        }
    }
    for c in &r.cluster_runs {
        let single = r
            .fanout_run(Kind::Quiver, c.subscribers)
            .map(|f| f.max.deliveries_per_sec)
            .filter(|s| *s > 0.0);
        out.push((
            format!("cluster fan-out over NATS (n={})", c.subscribers),
            match single {
                Some(s) => format!(
                    "{}/s, {:.2}× one instance",
                    kfmt(c.max.deliveries_per_sec),
                    c.max.deliveries_per_sec / s
                ),
                None => format!("{}/s", kfmt(c.max.deliveries_per_sec)),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{common, conn, fanout10, load};
    use crate::report::{FanoutRun, RoomsRun};

    /// quiver, nats and the bare peer at one size, with given max rates and common-rate p99s;
    /// many rooms and idle connections for quiver and nats.
    fn report(quiver: (f64, f64), nats: (f64, f64), bare_p99: f64) -> Report {
        let mut r = Report::new(Mode::Quick, "test".into());
        for (target, max, p99) in [
            (Kind::Quiver, quiver.0, quiver.1),
            (Kind::Nats, nats.0, nats.1),
            (Kind::Bare, 100.0, bare_p99),
        ] {
            let common = common(50.0, p99);
            r.fanout.push(fanout10(target, max, common.clone()));
            if target != Kind::Bare {
                // load() spends 0.5 CPU s over 1 s: CPU per delivery falls as the rate rises.
                r.rooms.push(RoomsRun {
                    target,
                    result: load(max),
                    common: Some(common),
                });
            }
        }
        r.connections.push(conn(Kind::Quiver, 2000.0, 30.0));
        r.connections.push(conn(Kind::Nats, 5000.0, 35.0));
        r
    }

    fn block(r: &Report) -> String {
        let mut md = String::new();
        issue14(&mut md, r);
        md
    }

    #[test]
    fn every_target_met() {
        let md = block(&report((1000.0, 3.0), (900.0, 3.0), 4.0));
        for line in [
            "- Many rooms, deliveries/s ≥ 1.0× nats-server (1 rooms × 10, 1 publishers): 1k vs 900, 1.11× — **met**",
            "- Many rooms, server CPU per delivery ≤ 1.2× nats-server's: 500.00 vs 555.56 µs, 0.90× — **met**",
            "- Fan-out ≥ 1.0× nats-server (n=10): 1k vs 900, 1.11× — **met**",
            "- p99 at the same offered rate ≤ 1.2× nats-server's (n=10), 50 deliveries/s: 3 µs vs 3 µs, 1.00× — **met**",
            "- p99 at the same offered rate ≤ the bare transport's (n=10), 50 deliveries/s: 3 µs vs 4 µs — **met**",
            "- p99 at the same offered rate ≤ 1.2× nats-server's (many rooms), 50 deliveries/s: 3 µs vs 3 µs, 1.00× — **met**",
            "- Memory per idle session ≤ 40 KiB (100 sessions): 30.0 KiB — **met**",
            "  - stretch, ≤ nats-server's: 30.0 vs 35.0 KiB — **met**",
            "- Connection setup ≥ 1,500 sessions/s, TLS 1.3 handshake and token check (cached after the first) included: 2000/s — **met**",
            "  - no TLS-terminating peer (nats-tls) in this run",
            "  - nats-server over plain TCP (no TLS, no token) for reference: 5000/s",
        ] {
            assert!(md.contains(line), "no {line:?} in\n{md}");
        }
        assert!(!md.contains("missed"), "{md}");
    }

    #[test]
    fn every_target_missed() {
        let mut r = report((500.0, 4.0), (1000.0, 3.0), 3.0);
        r.connections[0] = conn(Kind::Quiver, 400.0, 80.0);
        let md = block(&r);
        for line in [
            "500 vs 1k, 0.50× — **missed**",
            "1000.00 vs 500.00 µs, 2.00× — **missed**",
            "- Fan-out ≥ 1.0× nats-server (n=10): 500 vs 1k, 0.50× — **missed**",
            "(n=10), 50 deliveries/s: 4 µs vs 3 µs, 1.33× — **missed**",
            "the bare transport's (n=10), 50 deliveries/s: 4 µs vs 3 µs — **missed**",
            "(many rooms), 50 deliveries/s: 4 µs vs 3 µs, 1.33× — **missed**",
            "(100 sessions): 80.0 KiB — **missed**",
            "80.0 vs 35.0 KiB — **missed**",
            "included: 400/s — **missed**",
        ] {
            assert!(md.contains(line), "no {line:?} in\n{md}");
        }
        assert!(!md.contains("**met**"), "{md}");
    }

    /// A verdict read from a run whose generator was the limit says so, with both processes'
    /// cores; one from a run that lost deliveries says its p99 is of the survivors (outside
    /// audit 123, F2 and F4).
    #[test]
    fn generator_bound_and_lost_verdicts_say_so() {
        let mut r = report((850.0, 3.0), (1000.0, 3.0), 4.0);
        for f in r.fanout.iter_mut().filter(|f| f.target == Kind::Quiver) {
            f.max.generator_cpu_secs = 1.0;
            f.max.server_cpu_secs = Some(0.85);
            if let Some(c) = f.common.as_mut() {
                c.missing = 7;
            }
        }
        let md = block(&r);
        assert!(
            md.contains(
                "(n=10): 850 vs 1k, 0.85× — **missed** (generator-bound: quiver's generator at \
                 1.00 core, server at 0.85)\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "3 µs vs 3 µs, 1.00× — **met** (quiver lost 7 of 107 deliveries: percentiles of \
                 those that arrived)\n"
            ),
            "{md}"
        );
        // Nothing else is marked: the other runs used half a core and lost nothing.
        assert_eq!(md.matches("generator-bound").count(), 2, "{md}");
        assert!(!md.contains("nats's generator"), "{md}");
    }

    /// A run of some workloads only is never the reference: the complete run before it is.
    #[test]
    fn a_partial_run_is_not_the_reference() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("quiver-bench-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut complete = report((1000.0, 3.0), (900.0, 3.0), 4.0);
        complete.date = "2026-11-30 05:58 UTC".into();
        let mut partial = report((1000.0, 3.0), (900.0, 3.0), 4.0);
        partial.date = "2026-11-30 06:54 UTC".into();
        partial.rooms.clear();
        partial.connections.clear();
        std::fs::write(dir.join("complete.json"), serde_json::to_string(&complete)?)?;
        std::fs::write(dir.join("partial.json"), serde_json::to_string(&partial)?)?;
        let later = "2026-12-01 00:00 UTC";
        let picked = latest_earlier(&dir, Mode::Quick, later, &dir.join("new.json"));
        assert_eq!(picked, Some(dir.join("complete.json")));
        // With its missing workloads back, the later run is the reference.
        partial.rooms = complete.rooms;
        partial.connections = complete.connections;
        std::fs::write(dir.join("partial.json"), serde_json::to_string(&partial)?)?;
        let picked = latest_earlier(&dir, Mode::Quick, later, &dir.join("new.json"));
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(picked, Some(dir.join("partial.json")));
        Ok(())
    }

    /// Without nats-server every nats target is printed as not measured, never left out.
    #[test]
    fn without_nats_targets_say_not_measured() {
        let mut r = report((1000.0, 3.0), (900.0, 3.0), 4.0);
        r.fanout.retain(|f| f.target != Kind::Nats);
        r.rooms.retain(|x| x.target != Kind::Nats);
        r.connections.retain(|c| c.target != Kind::Nats);
        let md = block(&r);
        assert_eq!(
            md.matches("not measured (no nats-server in this run) — **missed**")
                .count(),
            4,
            "{md}"
        );
        assert!(md.contains("the bare transport's (n=10), 50 deliveries/s: 3 µs vs 4 µs — **met**"));
        assert!(md.contains("stretch, ≤ nats-server's: not measured"));
    }

    /// The regression figures are matched to the earlier run's by what they are.
    #[test]
    fn regression_figures_beside_previous() {
        let mut r = report((1000.0, 3.0), (900.0, 3.0), 4.0);
        r.fanout.push(FanoutRun {
            target: Kind::Socketio,
            subscribers: 10,
            max: load(250.0),
            fixed: Vec::new(),
            common: None,
            server_version: String::new(),
        });
        r.cluster_runs.push(crate::report::ClusterRun {
            subscribers: 10,
            max: load(500.0),
            max_runs: 1,
            half: None,
        });
        let figures = regression_figures(&r);
        assert_eq!(
            figures,
            [
                (
                    "quiver fan-out vs Socket.IO (n=10)".to_owned(),
                    "4.00×".to_owned()
                ),
                (
                    "cluster fan-out over NATS (n=10)".to_owned(),
                    "500/s, 0.50× one instance".to_owned()
                ),
            ]
        );
        let md = block(&r);
        assert!(
            md.contains("(no earlier run of this mode to compare with)"),
            "{md}"
        );
        assert!(
            md.contains("  - quiver fan-out vs Socket.IO (n=10): 4.00×\n"),
            "{md}"
        );
        r.reference = Some(Reference {
            source: "bench/results/earlier.json".into(),
            date: "2026-11-28 10:00 UTC".into(),
            figures: vec![(figures[0].0.clone(), "3.00×".into())],
        });
        let md = block(&r);
        assert!(
            md.contains("(previous: 2026-11-28 10:00 UTC, `earlier.json`)"),
            "{md}"
        );
        assert!(
            md.contains("  - quiver fan-out vs Socket.IO (n=10): 4.00× (previous 3.00×)"),
            "{md}"
        );
        assert!(
            md.contains("(n=10): 500/s, 0.50× one instance (previous: not measured)"),
            "{md}"
        );
        // A figure only the earlier run has is still printed.
        if let Some(p) = r.reference.as_mut() {
            p.figures.push(("head-of-line, x".into(), "1 ms".into()));
        }
        let md = block(&r);
        assert!(
            md.contains("  - head-of-line, x: not measured (previous 1 ms)\n"),
            "{md}"
        );
    }

    #[test]
    fn thousands_separator() {
        assert_eq!(kfmt_int(1500.0), "1,500");
        assert_eq!(kfmt_int(999.0), "999");
        assert_eq!(kfmt_int(1_234_567.0), "1,234,567");
    }
}
