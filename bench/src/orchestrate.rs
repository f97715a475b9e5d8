//! `quiver-bench run`: starts each server, runs each workload against it from a generator
//! process, and writes the report.
//!
//! Servers run pinned to one core and generators to another (`taskset`), so neither steals the
//! other's CPU and the CPU time read from /proc is attributable. Every child is bounded in time;
//! every server is stopped when its [`ServerProc`] is dropped, error or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::{self, Report};
use crate::target::{Kind, Spec};
use crate::workload::hol::HolParams;
use crate::workload::load::{LoadParams, LoadResult};

mod cluster;
mod connections;
mod fanout;
mod hol;
pub mod neighbour;
mod rooms;
mod servers;
use servers::{start, wait_output, wrapped, Pinning, Placement, ServerProc, JWT_SECRET};

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
            fanout::fanout(&mut ctx, &plan, &all, n);
        }
    }
    if do_rooms {
        // The bare peer has a single room.
        let roomy: Vec<&ServerProc> = servers
            .iter()
            .filter(|s| s.spec.kind != Kind::Bare)
            .collect();
        rooms::rooms(&mut ctx, &plan, &roomy);
    }
    drop(servers);
    for &kind in &targets {
        // Connections on a fresh server, so its RSS baseline is not inflated by earlier runs.
        if do_conns {
            match start(&ctx, kind, Placement::Local) {
                Ok(server) => connections::connections(&mut ctx, &plan, &server, kind, false),
                Err(e) => ctx.report.fail(&format!("start {}", kind.label()), &e),
            }
            // Returning clients: the generator keeps TLS sessions and Quiver's tickets resume
            // them (no certificate signature).
            if kind == Kind::Quiver {
                match start(&ctx, kind, Placement::Local) {
                    Ok(server) => connections::connections(&mut ctx, &plan, &server, kind, true),
                    Err(e) => ctx.report.fail(&format!("start {}", kind.label()), &e),
                }
            }
        }
    }
    match &ctx.args.netns {
        _ if !do_hol => ctx.report.hol_skipped = Some("not asked for (--workloads)".into()),
        Some(helper) => {
            let helper = helper.clone();
            if let Err(e) = hol::hol(&mut ctx, &plan, &helper) {
                ctx.report.fail("head-of-line", &e);
            }
            // Never leave the namespace or loss rules behind.
            let _ = Command::new(&helper).arg("down").status();
        }
        None => ctx.report.hol_skipped = Some("no --netns helper (needs root and nft)".into()),
    }

    ctx.report.cluster = cluster::cluster_status(&ctx.args.quiver);
    if wants(Workload::Cluster) && ctx.report.cluster.starts_with("ready") {
        if let Some(&n) = plan.fanout_subscribers.first() {
            cluster::cluster(&mut ctx, &plan, n);
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

/// The number of max-rate runs each maximum is the median of in `mode` (the report reads the
/// cluster's against the one-instance fan-out's with it).
pub(crate) fn repeats_of(mode: Mode) -> usize {
    Plan::for_mode(mode).repeats
}
