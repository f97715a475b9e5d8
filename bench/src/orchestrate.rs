//! `quiver-bench run`: starts each server, runs each workload against it from a generator
//! process, and writes the report.
//!
//! Servers run pinned to one core and generators to another (`taskset`), so neither steals the
//! other's CPU and the CPU time read from /proc is attributable. Every child is bounded in time;
//! every server is stopped when its [`ServerProc`] is dropped, error or not.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::procstat;
use crate::report::{self, ConnRun, FanoutRun, FixedRun, HolRun, Report, RoomsRun};
use crate::target::{Kind, Spec};
use crate::workload::connections::ConnResult;
use crate::workload::hol::{HolParams, HolResult};
use crate::workload::load::{LoadParams, LoadResult};

pub mod neighbour;
mod servers;
use servers::{
    start, start_with, wait_output, wrapped, Pinning, Placement, ServerProc, JWT_SECRET,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tiny sizes, a second per workload: does everything run end to end?
    Smoke,
    /// The default: about three minutes on a 2-core machine.
    Quick,
    /// Issue sizes (100 / 1,000 / 5,000 subscribers), longer runs, three repeats (the median
    /// maximum of fan-out and many rooms; the median head-of-line run).
    Full,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "quick")]
    pub mode: Mode,
    /// Output prefix: writes PREFIX.md, PREFIX.json and PREFIX-*.png.
    #[arg(long)]
    pub out: PathBuf,
    /// The `quiver` server binary.
    #[arg(long)]
    pub quiver: PathBuf,
    /// The `bare-wt-fanout` binary.
    #[arg(long)]
    pub bare: PathBuf,
    /// nats-server binary; NATS is skipped without it.
    #[arg(long)]
    pub nats: Option<PathBuf>,
    /// Directory of the Socket.IO peer (server.js, node_modules); skipped without it.
    #[arg(long)]
    pub socketio: Option<PathBuf>,
    #[arg(long, default_value = "node")]
    pub node: String,
    /// `bench/netns.sh`: enables the head-of-line test (needs root and nft).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Stop starting new measurements after this many seconds (default per mode: smoke 90,
    /// quick 300, full 2500) so the report is always written.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Workloads to run (default: all).
    #[arg(long, value_delimiter = ',', default_values = ["fanout", "rooms", "connections", "hol", "cluster"])]
    pub workloads: Vec<Workload>,
    /// Directory for server logs and certificates (default: a temporary one).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Directory of earlier runs (bench/results): the latest one of the same mode is the
    /// reference for issue 14's "no regression" figures.
    #[arg(long)]
    pub baseline_dir: Option<PathBuf>,
    /// Quiver asks its clients for no ACK reduction (`transport.client_ack_delay = 0`), so the
    /// generator's quinn clients acknowledge at QUIC's default rate, as clients that do not
    /// take the ACK-frequency extension (Chromium) do. By default Quiver asks and quinn clients
    /// honour it, which browsers do not (outside audit 123, F1). Done on the server's side:
    /// quinn has no client switch (every quinn endpoint advertises the extension,
    /// `min_ack_delay` in `vendor/quinn-proto/src/transport_parameters.rs`), and a server that
    /// asks nothing is what such a client meets. Not the default.
    #[arg(long)]
    pub browser_like_acks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Fanout,
    Rooms,
    Connections,
    Hol,
    Cluster,
}

/// Sizes per mode.
struct Plan {
    fanout_subscribers: Vec<usize>,
    payload: usize,
    duration: f64,
    warmup: f64,
    fractions: Vec<f64>,
    /// One offered rate (deliveries/s) every target gets, for latency on equal terms; below
    /// Socket.IO's maximum so that every target can carry it.
    common_rate: f64,
    repeats: usize,
    rooms: (usize, usize, usize),
    /// The many-rooms workload's offered rate (deliveries/s) every target gets; below
    /// Socket.IO's many-rooms maximum.
    rooms_common_rate: f64,
    connections: usize,
    hol_loss: Vec<u32>,
    /// Loss levels also measured through the delay relay (QUIC variants only).
    hol_delay_loss: Vec<u32>,
    /// One-way delay the relay adds, in milliseconds.
    hol_delay_ms: u64,
    /// The busy room's rate through the relay (500-byte messages): a 40 ms round trip under
    /// loss carries far less than loopback, and a congested connection would measure queueing,
    /// not head-of-line blocking.
    hol_delay_busy_rate: f64,
    hol: HolParams,
}

impl Plan {
    fn for_mode(mode: Mode) -> Self {
        let hol = |duration, busy_rate| HolParams {
            busy_rate,
            busy_payload: 1000,
            // Enough quiet messages for a p99 that is not just the 3rd-worst sample.
            quiet_rate: 500.0,
            quiet_payload: 64,
            duration,
            warmup: 0.5,
        };
        match mode {
            Mode::Smoke => Self {
                fanout_subscribers: vec![4],
                payload: 100,
                duration: 0.8,
                warmup: 0.2,
                fractions: vec![0.5],
                common_rate: 5_000.0,
                repeats: 1,
                rooms: (4, 2, 2),
                rooms_common_rate: 1_000.0,
                connections: 20,
                hol_loss: vec![0, 2],
                hol_delay_loss: vec![2],
                hol_delay_ms: 20,
                hol_delay_busy_rate: 100.0,
                hol: hol(1.0, 500.0),
            },
            Mode::Quick => Self {
                fanout_subscribers: vec![200],
                payload: 100,
                duration: 2.0,
                warmup: 0.5,
                fractions: vec![0.25, 0.5, 0.9],
                common_rate: 100_000.0,
                repeats: 1,
                rooms: (50, 4, 5),
                rooms_common_rate: 50_000.0,
                connections: 2000,
                // 1% only in full mode: four variants at four levels would not fit 3 minutes.
                hol_loss: vec![0, 2, 5],
                hol_delay_loss: vec![0, 2],
                hol_delay_ms: 20,
                hol_delay_busy_rate: 400.0,
                hol: hol(3.0, 2000.0),
            },
            Mode::Full => Self {
                fanout_subscribers: vec![100, 1000, 5000],
                payload: 100,
                duration: 5.0,
                warmup: 1.0,
                fractions: vec![0.25, 0.5, 0.9],
                common_rate: 100_000.0,
                repeats: 3,
                rooms: (500, 4, 20),
                rooms_common_rate: 100_000.0,
                // Up to 20,000 in the issue; TCP peers need a descriptor per session on both sides
                // and the hard limit here is 20,000.
                connections: 19_000,
                hol_loss: vec![0, 1, 2, 5],
                hol_delay_loss: vec![0, 1, 2, 5],
                hol_delay_ms: 20,
                hol_delay_busy_rate: 400.0,
                hol: hol(8.0, 2000.0),
            },
        }
    }
}

struct Ctx {
    /// No new measurement starts after this.
    deadline: Instant,
    args: RunArgs,
    work: PathBuf,
    pin: Pinning,
    token: String,
    generator: PathBuf,
    report: Report,
}

pub fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::for_mode(args.mode);
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("quiver-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let pin = Pinning::detect();
    let token = quiver_token(&args.quiver, "bench")?;
    let generator = std::env::current_exe()?;
    let mut report = Report::new(args.mode, pin.describe());
    report.versions = versions(&args);
    report.browser_like_acks = args.browser_like_acks;
    let budget = args.budget.unwrap_or(match args.mode {
        Mode::Smoke => 90.0,
        Mode::Quick => 300.0,
        Mode::Full => 2500.0,
    });
    let mut ctx = Ctx {
        deadline: started + Duration::from_secs_f64(budget),
        args,
        work,
        pin,
        token,
        generator,
        report,
    };
    eprintln!(
        "bench: mode {:?}, {}, work dir {}",
        ctx.args.mode,
        ctx.pin.describe(),
        ctx.work.display()
    );

    // quiver-ws is measured right after quiver, against the same kind of server.
    let mut targets = vec![Kind::Quiver, Kind::QuiverWs, Kind::Bare];
    if ctx.args.nats.is_some() {
        // nats-server terminating TLS beside plain NATS: plain NATS pays no encryption and no
        // handshake, Quiver pays TLS 1.3 on every packet and a token check (issue 14 asks for a
        // TLS-terminating peer), so both are measured and the report reads Quiver against each.
        targets.push(Kind::Nats);
        targets.push(Kind::NatsTls);
    } else {
        ctx.report
            .notes
            .push("NATS skipped: no nats-server given".into());
    }
    if ctx.args.socketio.is_some() {
        targets.push(Kind::Socketio);
    } else {
        ctx.report
            .notes
            .push("Socket.IO skipped: no peer directory given".into());
    }

    let workloads = ctx.args.workloads.clone();
    let wants = |w: Workload| workloads.contains(&w);
    let (do_fanout, do_rooms, do_conns, do_hol) = (
        wants(Workload::Fanout),
        wants(Workload::Rooms),
        wants(Workload::Connections),
        wants(Workload::Hol),
    );
    // Fan-out and many rooms: every target's server is up for the whole of both, so that each
    // repeat visits every target before the next repeat starts (quiver, quiver-ws, bare, nats,
    // …, then again). Run target after target, Quiver's repeats came minutes before nats-server's
    // and a change in the host's speed in between landed in the ratio (outside audit 123, F3).
    // The servers waiting their turn are idle (no sessions) on the server core.
    let mut servers = Vec::new();
    for &kind in &targets {
        if do_fanout || (do_rooms && kind != Kind::Bare) {
            match start(&ctx, kind, Placement::Local) {
                Ok(server) => servers.push(server),
                Err(e) => ctx.report.fail(&format!("start {}", kind.label()), &e),
            }
        }
    }
    if do_fanout {
        let all: Vec<&ServerProc> = servers.iter().collect();
        for &n in &plan.fanout_subscribers {
            fanout(&mut ctx, &plan, &all, n);
        }
    }
    if do_rooms {
        // The bare peer has a single room.
        let roomy: Vec<&ServerProc> = servers
            .iter()
            .filter(|s| s.spec.kind != Kind::Bare)
            .collect();
        rooms(&mut ctx, &plan, &roomy);
    }
    drop(servers);
    for &kind in &targets {
        // Connections on a fresh server, so its RSS baseline is not inflated by earlier runs.
        if do_conns {
            match start(&ctx, kind, Placement::Local) {
                Ok(server) => connections(&mut ctx, &plan, &server, kind, false),
                Err(e) => ctx.report.fail(&format!("start {}", kind.label()), &e),
            }
            // Returning clients: the generator keeps TLS sessions and Quiver's tickets resume
            // them (no certificate signature).
            if kind == Kind::Quiver {
                match start(&ctx, kind, Placement::Local) {
                    Ok(server) => connections(&mut ctx, &plan, &server, kind, true),
                    Err(e) => ctx.report.fail(&format!("start {}", kind.label()), &e),
                }
            }
        }
    }
    match &ctx.args.netns {
        _ if !do_hol => ctx.report.hol_skipped = Some("not asked for (--workloads)".into()),
        Some(helper) => {
            let helper = helper.clone();
            if let Err(e) = hol(&mut ctx, &plan, &helper) {
                ctx.report.fail("head-of-line", &e);
            }
            // Never leave the namespace or loss rules behind.
            let _ = Command::new(&helper).arg("down").status();
        }
        None => ctx.report.hol_skipped = Some("no --netns helper (needs root and nft)".into()),
    }

    ctx.report.cluster = cluster_status(&ctx.args.quiver);
    if wants(Workload::Cluster) && ctx.report.cluster.starts_with("ready") {
        if let Some(&n) = plan.fanout_subscribers.first() {
            cluster(&mut ctx, &plan, n);
        }
    }
    ctx.report.elapsed_secs = started.elapsed().as_secs_f64();
    if let Some(dir) = &ctx.args.baseline_dir {
        let mut own = ctx.args.out.clone().into_os_string();
        own.push(".json");
        let (mode, date) = (ctx.args.mode, ctx.report.date.clone());
        if let Some(path) = report::targets::latest_earlier(dir, mode, &date, Path::new(&own)) {
            match report::targets::Reference::read(&path) {
                Ok(reference) => ctx.report.reference = Some(reference),
                Err(e) => ctx.report.notes.push(format!("no reference run: {e:#}")),
            }
        }
    }
    report::write(&ctx.report, &ctx.args.out)?;
    let (passed, failed) = ctx.report.check_counts();
    println!("checks: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} benchmark checks failed");
    }
    Ok(())
}

/// A token for `tenant` that may publish and subscribe everywhere in it.
fn quiver_token(quiver: &Path, tenant: &str) -> Result<String> {
    let out = Command::new(quiver)
        .args([
            "token",
            "--jwt-secret",
            JWT_SECRET,
            "--tenant",
            tenant,
            "--user",
            "bench",
        ])
        .args(["--subscribe", ">", "--publish", ">", "--ttl", "6h"])
        .output()
        .with_context(|| format!("running {} token", quiver.display()))?;
    if !out.status.success() {
        bail!("quiver token: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn versions(args: &RunArgs) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    v.insert(
        "quiver".into(),
        format!("{} (git {git})", env!("CARGO_PKG_VERSION")),
    );
    if let Ok(lock) = std::fs::read_to_string("Cargo.lock") {
        for name in ["wtransport", "quinn"] {
            if let Some(ver) = lock_version(&lock, name) {
                v.insert(name.into(), ver);
            }
        }
    }
    if let Some(nats) = &args.nats {
        if let Ok(o) = Command::new(nats).arg("--version").output() {
            v.insert(
                "nats-server".into(),
                String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
        }
    }
    if let Ok(o) = Command::new(&args.node).arg("--version").output() {
        v.insert(
            "node".into(),
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    }
    if let Some(dir) = &args.socketio {
        let pkg = dir.join("node_modules/socket.io/package.json");
        if let Ok(text) = std::fs::read_to_string(pkg) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(ver) = json["version"].as_str() {
                    v.insert("socket.io".into(), ver.into());
                }
            }
        }
    }
    if let Ok(o) = Command::new("rustc").arg("--version").output() {
        v.insert(
            "rustc".into(),
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    }
    v
}

fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&needle)? + needle.len();
    let end = lock[start..].find('"')? + start;
    Some(lock[start..end].to_owned())
}

/// Runs a generator subcommand pinned to the generator core; returns its last stdout line.
fn generate(ctx: &Ctx, args: &[String], limit: Duration) -> Result<String> {
    if Instant::now() > ctx.deadline {
        bail!("skipped: the mode's time budget is used up (--budget)");
    }
    let mut cmd = wrapped(None, ctx.pin, ctx.pin.generator, &ctx.generator);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting generator")?;
    let out = wait_output(child, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprint!("{}", indent(&stderr));
    }
    if !out.status.success() {
        bail!("generator failed ({}): {}", out.status, stderr.trim());
    }
    stdout
        .lines()
        .last()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("generator printed nothing"))
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn load_args(spec: &Spec, server_pid: u32, p: &LoadParams) -> Result<Vec<String>> {
    Ok(vec![
        "load".into(),
        "--spec".into(),
        serde_json::to_string(spec)?,
        "--server-pid".into(),
        server_pid.to_string(),
        "--rooms".into(),
        p.rooms.to_string(),
        "--subs-per-room".into(),
        p.subs_per_room.to_string(),
        "--publishers".into(),
        p.publishers.to_string(),
        "--payload".into(),
        p.payload.to_string(),
        "--duration".into(),
        p.duration.to_string(),
        "--warmup".into(),
        p.warmup.to_string(),
        "--rate".into(),
        p.rate.to_string(),
        "--window".into(),
        p.window.to_string(),
    ])
}

fn run_load(ctx: &Ctx, server: &ServerProc, p: &LoadParams) -> Result<LoadResult> {
    let sessions = p.rooms * p.subs_per_room + p.publishers;
    // Connecting, warm-up, measuring, draining, plus a generous margin.
    let limit = Duration::from_secs_f64(30.0 + p.warmup + p.duration + sessions as f64 / 200.0);
    let left = server.wait_for_no_sessions(Duration::from_secs(35));
    if left > 0 {
        eprintln!(
            "bench: warning: {left} sessions of an earlier run still open on {}",
            server.name
        );
    }
    let line = generate(ctx, &load_args(&server.spec, server.pid(), p)?, limit)?;
    let result: LoadResult = serde_json::from_str(&line).context("generator result")?;
    if result.delivered == 0 {
        bail!("nothing was delivered");
    }
    Ok(result)
}

/// `repeats` max-rate runs of `p` on each of `targets` (a server and the name its runs are
/// reported under), round by round: every target once, then the next round, so a drift in the
/// host's speed falls on every target alike rather than between them (outside audit 123, F3).
/// Each run is printed as `bench: {name}{suffix}: …` as it ends. Per target, in order: the
/// median by rate, or `None` once one of its runs failed (reported as its name's failure; its
/// later rounds are not run).
fn median_max(
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

/// The number of max-rate runs each maximum is the median of in `mode` (the report reads the
/// cluster's against the one-instance fan-out's with it).
pub(crate) fn repeats_of(mode: Mode) -> usize {
    Plan::for_mode(mode).repeats
}

fn median_by_rate(mut runs: Vec<LoadResult>) -> Option<LoadResult> {
    runs.sort_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid)
}

/// One publisher, one room, `n` subscribers, at max rate.
fn fanout_params(plan: &Plan, n: usize) -> LoadParams {
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
fn fanout(ctx: &mut Ctx, plan: &Plan, servers: &[&ServerProc], n: usize) {
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
fn common_run(
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

/// Many rooms on every server: the maxima round by round (see [`median_max`]), then each
/// target's common rate.
fn rooms(ctx: &mut Ctx, plan: &Plan, servers: &[&ServerProc]) {
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

fn connections(ctx: &mut Ctx, plan: &Plan, server: &ServerProc, kind: Kind, resume: bool) {
    let name = format!(
        "connections {}{}",
        kind.label(),
        if resume { " (resumed)" } else { "" }
    );
    match connections_inner(ctx, plan, server, resume) {
        Ok(run) => {
            eprintln!(
                "bench: {name}: {} sessions at {:.0}/s, server RSS {:.1} KiB/session",
                run.result.params.sessions,
                run.result.sessions_per_sec,
                run.result.server_rss_per_session_bytes.unwrap_or(0.0) / 1024.0
            );
            ctx.report.pass(&name);
            ctx.report.connections.push(ConnRun {
                target: kind,
                ..run
            });
        }
        Err(e) => ctx.report.fail(&name, &e),
    }
}

fn connections_inner(ctx: &Ctx, plan: &Plan, server: &ServerProc, resume: bool) -> Result<ConnRun> {
    if Instant::now() > ctx.deadline {
        bail!("skipped: the mode's time budget is used up (--budget)");
    }
    // Let the server settle, then take its baseline.
    std::thread::sleep(Duration::from_millis(300));
    let before = procstat::rss_bytes(server.pid()).context("server RSS")?;
    let mut cmd = wrapped(None, ctx.pin, ctx.pin.generator, &ctx.generator);
    cmd.args([
        "connections",
        "--spec",
        &serde_json::to_string(&server.spec)?,
    ])
    .args(["--sessions", &plan.connections.to_string(), "--hold", "120"])
    .args(resume.then_some("--resume"))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let limit = Duration::from_secs(30 + plan.connections as u64 / 100);
    let line = rx.recv_timeout(limit).unwrap_or_default();
    // Sessions are up: give the server a moment to finish per-session setup, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let after = procstat::rss_bytes(server.pid()).unwrap_or(before);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    let _ = wait_output(child, Duration::from_secs(20));
    let mut result: ConnResult = serde_json::from_str(line.trim())
        .with_context(|| format!("connections generator printed {line:?}"))?;
    result.server_rss_per_session_bytes =
        Some(after.saturating_sub(before) as f64 / plan.connections.max(1) as f64);
    Ok(ConnRun {
        target: server.spec.kind,
        result,
        server_rss_before: before,
        server_rss_after: after,
    })
}

fn hol(ctx: &mut Ctx, plan: &Plan, helper: &Path) -> Result<()> {
    let status = Command::new(helper).arg("up").status()?;
    if !status.success() {
        ctx.report.hol_skipped = Some(format!("{} up failed", helper.display()));
        return Ok(());
    }
    let mut variants = vec![Kind::Quiver, Kind::QuiverCubic, Kind::QuiverSingleStream];
    // The TCP peers: every room on one connection, so a loss stalls both rooms.
    if ctx.args.nats.is_some() {
        variants.push(Kind::Nats);
    }
    if ctx.args.socketio.is_some() {
        variants.push(Kind::Socketio);
    }
    let mut servers = Vec::new();
    for &kind in &variants {
        servers.push(start(ctx, kind, Placement::Netns)?);
    }
    for &loss in &plan.hol_loss {
        let status = Command::new(helper)
            .args(["loss", &loss.to_string()])
            .status()?;
        if !status.success() {
            bail!("setting loss {loss}% failed");
        }
        for server in &servers {
            measure_hol(ctx, plan, &server.spec, loss, None, &plan.hol);
        }
        if plan.hol_delay_loss.contains(&loss) {
            // Through the relay the quiet room is really quiet, so that the busy room's losses
            // (the ones a stream per room isolates) are most of what the quiet room meets.
            let params = HolParams {
                busy_rate: plan.hol_delay_busy_rate,
                busy_payload: 500,
                quiet_rate: 100.0,
                ..plan.hol.clone()
            };
            // The relay carries UDP: QUIC variants only.
            let quic = |kind: Kind| !matches!(kind, Kind::Socketio | Kind::Nats);
            for server in servers.iter().filter(|s| quic(s.spec.kind)) {
                let name = format!("hol {} relay", server.spec.kind.label());
                match Relay::start(ctx, &server.spec.sub_addr, plan.hol_delay_ms) {
                    Ok(relay) => {
                        let spec = Spec {
                            sub_addr: relay.addr.clone(),
                            ..server.spec.clone()
                        };
                        let rtt = (plan.hol_delay_ms * 2) as u32;
                        measure_hol(ctx, plan, &spec, loss, Some(rtt), &params);
                    }
                    Err(e) => ctx.report.fail(&name, &e),
                }
            }
        }
    }
    Ok(())
}

/// One head-of-line measurement (median of the mode's repeats), recorded in the report.
fn measure_hol(
    ctx: &mut Ctx,
    plan: &Plan,
    spec: &Spec,
    loss: u32,
    rtt_ms: Option<u32>,
    params: &HolParams,
) {
    let kind = spec.kind;
    let via = rtt_ms.map_or(String::new(), |r| format!(" rtt={r}ms"));
    let name = format!("hol {} loss={loss}%{via}", kind.label());
    // Repeats (full mode) keep the run with the median quiet-room p99.
    let mut runs = Vec::new();
    let mut error = None;
    for _ in 0..plan.repeats {
        match run_hol(ctx, spec, params) {
            Ok(result) => runs.push(result),
            Err(e) => error = Some(e),
        }
    }
    runs.sort_by(|a, b| a.quiet.p99_us.total_cmp(&b.quiet.p99_us));
    let mid = runs.len() / 2;
    match (runs.into_iter().nth(mid), error) {
        (Some(result), None) => {
            eprintln!(
                "bench: {name}: quiet p50 {:.0} p90 {:.0} p99 {:.0} µs; busy p99 {:.0} µs",
                result.quiet.p50_us, result.quiet.p90_us, result.quiet.p99_us, result.busy.p99_us
            );
            ctx.report.pass(&name);
            ctx.report.hol.push(HolRun {
                target: kind,
                loss_pct: loss,
                rtt_ms,
                result,
            });
        }
        (_, Some(e)) => ctx.report.fail(&name, &e),
        (None, None) => {}
    }
}

/// A `quiver-bench relay` process adding delay in front of a server; killed when dropped.
struct Relay {
    child: std::process::Child,
    addr: String,
}

impl Relay {
    fn start(ctx: &Ctx, upstream: &str, delay_ms: u64) -> Result<Self> {
        let mut cmd = wrapped(None, ctx.pin, ctx.pin.generator, &ctx.generator);
        cmd.args(["relay", "--upstream", upstream]).args([
            "--delay-ms",
            &delay_ms.to_string(),
            "--max-secs",
            "120",
        ]);
        let log = ctx.work.join("relay.log");
        let (child, ready, _reader) =
            servers::spawn_until_ready("relay", cmd, &log, "RELAY_READY ")?;
        let ready: serde_json::Value = serde_json::from_str(&ready)?;
        let addr = ready["addr"].as_str().context("relay address")?.to_owned();
        Ok(Self { child, addr })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_hol(ctx: &Ctx, spec: &Spec, p: &HolParams) -> Result<HolResult> {
    let args = vec![
        "hol".into(),
        "--spec".into(),
        serde_json::to_string(spec)?,
        "--busy-rate".into(),
        p.busy_rate.to_string(),
        "--busy-payload".into(),
        p.busy_payload.to_string(),
        "--quiet-rate".into(),
        p.quiet_rate.to_string(),
        "--quiet-payload".into(),
        p.quiet_payload.to_string(),
        "--duration".into(),
        p.duration.to_string(),
        "--warmup".into(),
        p.warmup.to_string(),
    ];
    let limit = Duration::from_secs_f64(40.0 + p.duration + p.warmup);
    let line = generate(ctx, &args, limit)?;
    let result: HolResult = serde_json::from_str(&line)?;
    if result.quiet.count == 0 {
        bail!("no quiet-room message measured");
    }
    Ok(result)
}

/// The cluster workload needs `quiver serve --nats`; say whether this build has it.
fn cluster_status(quiver: &Path) -> String {
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
fn cluster(ctx: &mut Ctx, plan: &Plan, n: usize) {
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
