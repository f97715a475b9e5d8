//! `quiver-bench neighbour`: does one tenant at its publication quota change another tenant's
//! latency? (issue 10, Quotas.)
//!
//! One Quiver server, started and pinned like every benchmark server (`servers::start_with`),
//! with a publication quota on every tenant but `calm` (an override). Tenant `calm`'s
//! end-to-end latency at a fixed rate is measured by the ordinary `load` generator, alone and
//! while tenant `noisy` floods (`quiver-bench flood`), interleaved, `--repeats` times each;
//! then the flood again on a server without quotas, as the reference of what the quota buys.
//!
//! Both generators run on the generator core. The flood runs at the lowest priority (`nice 19`)
//! so that it takes the core's spare time and the calm generator still gets the core when it
//! needs it: on separate machines the two tenants' clients would not compete at all, and the
//! question is what the *server* lets one tenant do to the other.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::servers::{
    start_with, start_with_env, wait_output, wrapped, Pinning, Placement, ServerProc,
};
use super::{generate, load_args, quiver_token, versions, Ctx, Mode, RunArgs};
use crate::report::neighbour::{self as report, NeighbourReport, Phase, Series};
use crate::report::Report;
use crate::target::{Kind, Spec};
use crate::workload::load::{LoadParams, LoadResult};
use crate::workload::neighbour::{FloodParams, FloodResult};

#[derive(Debug, clap::Args)]
pub struct NeighbourArgs {
    /// Output prefix: writes PREFIX.md and PREFIX.json.
    #[arg(long)]
    pub out: PathBuf,
    /// The `quiver` server binary.
    #[arg(long)]
    pub quiver: PathBuf,
    /// The noisy tenant's quota, publications per second.
    #[arg(long, default_value_t = 2000)]
    pub quota: u32,
    /// Runs of each phase.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The calm tenant's offered deliveries per second (publications × subscribers per room).
    #[arg(long, default_value_t = 2000.0)]
    pub calm_deliveries: f64,
    #[arg(long, default_value_t = 4)]
    pub calm_rooms: usize,
    #[arg(long, default_value_t = 5)]
    pub calm_subs_per_room: usize,
    /// Measured seconds per phase (after half a second of warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// The noisy tenant's publisher sessions.
    #[arg(long, default_value_t = 4)]
    pub noisy_publishers: usize,
    /// The noisy tenant's rooms.
    #[arg(long, default_value_t = 2)]
    pub noisy_rooms: usize,
    /// Subscribers in each noisy room: what the tenant gets accepted fans out, as a busy
    /// tenant's publications would; the reference shows what that costs unbounded.
    #[arg(long, default_value_t = 20)]
    pub noisy_subs_per_room: usize,
    /// Besides the flood at full speed, one at this many publications per second (0: none).
    #[arg(long, default_value_t = 20_000.0)]
    pub noisy_paced_rate: f64,
    /// No new phase starts after this many seconds, so the report is always written.
    #[arg(long, default_value_t = 220.0)]
    pub budget: f64,
    /// Also flood the server as deployed: default per-session limits, a per-address handshake
    /// limit, publishers from their own address that reconnect when closed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub defaults: bool,
    /// Directory for server logs, certificates and the quota configs (default: a temporary one).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// The noisy publishers' client address in the `defaults` phase (loopback, like 127.0.0.1).
const NOISY_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);
/// The per-address handshake limit of the `defaults` server.
const DEFAULT_HANDSHAKES: u32 = 20;

/// The server's quota configuration: `quota` publications per second for every tenant except
/// `calm`, or no quota at all.
fn quota_config(quota: Option<u32>) -> String {
    match quota {
        Some(q) => format!(
            "[quotas.tenant]\npublications_per_second = {q}\n\n[[quotas.tenants]]\n\
             tenant = \"calm\"\npublications_per_second = 0\n"
        ),
        None => "[quotas.tenant]\npublications_per_second = 0\n".into(),
    }
}

fn calm_params(args: &NeighbourArgs) -> LoadParams {
    LoadParams {
        rooms: args.calm_rooms.max(1),
        subs_per_room: args.calm_subs_per_room.max(1),
        // One per room, 100/s each at the defaults: under the default per-session command limit
        // (200/s), which the `defaults` server keeps.
        publishers: args.calm_rooms.max(1),
        payload: 100,
        duration: args.duration,
        warmup: 0.5,
        rate: args.calm_deliveries / args.calm_subs_per_room.max(1) as f64,
        window: 40_000,
    }
}

pub fn run(args: NeighbourArgs) -> Result<()> {
    report::check_prefix(&args.out)?;
    let started = Instant::now();
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("quiver-neighbour-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let pin = Pinning::detect();
    let load_before = loadavg();
    // `start_with` and `generate` read only `quiver`, the work dir, the pinning and the token
    // (the calm tenant's) from the shared context; the other fields are the `run` command's.
    let run_args = RunArgs {
        mode: Mode::Quick,
        out: args.out.clone(),
        quiver: args.quiver.clone(),
        bare: PathBuf::new(),
        nats: None,
        socketio: None,
        node: "node".into(),
        netns: None,
        budget: Some(args.budget),
        workloads: Vec::new(),
        work_dir: Some(work.clone()),
        baseline_dir: None,
        browser_like_acks: false,
    };
    let quiver = versions(&run_args).remove("quiver").unwrap_or_default();
    let mut ctx = Ctx {
        deadline: started + Duration::from_secs_f64(args.budget),
        token: quiver_token(&args.quiver, "calm")?,
        work,
        pin,
        generator: std::env::current_exe()?,
        report: Report::new(Mode::Quick, pin.describe()),
        args: run_args,
    };
    let noisy_token = quiver_token(&args.quiver, "noisy")?;
    let calm = calm_params(&args);
    eprintln!(
        "bench: neighbour: {}, work dir {}",
        pin.describe(),
        ctx.work.display()
    );

    let flood = |rate: f64, defaults: bool| FloodParams {
        publishers: args.noisy_publishers.max(1),
        rooms: args.noisy_rooms.max(1),
        subs_per_room: args.noisy_subs_per_room,
        payload: 100,
        rate,
        batch: 32,
        max_secs: 60.0,
        reconnect: defaults,
        bind: defaults.then_some(NOISY_ADDRESS),
    };
    let mut out = NeighbourReport {
        date: report::now(),
        load_before,
        load_after: String::new(),
        pinning: pin.describe(),
        quiver,
        quota: args.quota,
        calm: calm.clone(),
        flood: flood(0.0, false),
        alone: Vec::new(),
        floods: Vec::new(),
        notes: Vec::new(),
        elapsed_secs: 0.0,
    };
    out.notes.push(
        "Server on its own core; both tenants' generators on the other, the flood at nice 19 \
         so that the calm generator gets its core when it needs it (on separate machines the \
         two clients would not compete). The server's per-session command limit is lifted \
         (as in every benchmark), so only the tenant quota stops the flood; except on the \
         `defaults` server, which keeps the default per-session limit (200 commands/s; a \
         session refused 3 × 200 times within 10 s is closed for rate abuse, quota refusals \
         included) and limits handshakes per address, while the noisy publishers connect from \
         127.0.0.2 and reconnect whenever they are closed."
            .into(),
    );

    // The floods: at full speed, and (if asked) at a fixed rate over the quota; each with the
    // quota and, as the reference, without.
    let mut rates = vec![0.0];
    if args.noisy_paced_rate > 0.0 {
        rates.push(args.noisy_paced_rate);
    }
    let describe = |rate: f64| {
        if rate > 0.0 {
            format!("noisy offering {}/s", report::count(rate))
        } else {
            "noisy flooding at full speed".to_owned()
        }
    };
    let quota = report::count(f64::from(args.quota));
    // The baseline for "over the quota": the noisy tenant offering exactly its allowance. What
    // its accepted publications cost (their fan-out) is work the quota allows; the floods beside
    // the quota should cost the calm tenant nothing more.
    out.floods.push(Series {
        name: format!("noisy offering exactly its quota ({quota}/s), quota {quota}/s"),
        quota: true,
        flood_rate: f64::from(args.quota),
        at_allowance: true,
        defaults: false,
        runs: Vec::new(),
    });
    for &rate in &rates {
        for quota_on in [true, false] {
            out.floods.push(Series {
                name: if quota_on {
                    format!("{}, quota {quota}/s", describe(rate))
                } else {
                    format!("{}, no quota (reference)", describe(rate))
                },
                quota: quota_on,
                flood_rate: rate,
                at_allowance: false,
                defaults: false,
                runs: Vec::new(),
            });
        }
    }
    // The same flood against the server as deployed: default per-session limits (a session
    // that keeps being refused is closed for rate abuse, quota refusals included) and a
    // per-address handshake limit; the noisy publishers reconnect whenever they are closed.
    if args.defaults {
        out.floods.push(Series {
            name: format!(
                "noisy flooding at full speed and reconnecting, default session limits and \
                 {DEFAULT_HANDSHAKES}/s handshakes per address, quota {quota}/s"
            ),
            quota: true,
            flood_rate: 0.0,
            at_allowance: false,
            defaults: true,
            runs: Vec::new(),
        });
    }
    // (server name, quota, defaults): floods run on the server whose settings they name.
    let servers = [
        ("quota", true, false),
        ("no-quota", false, false),
        ("defaults", true, true),
    ];
    for (name, quota_on, defaults) in servers {
        if !out
            .floods
            .iter()
            .any(|f| f.quota == quota_on && f.defaults == defaults)
        {
            continue;
        }
        let limit = quota_on.then_some(args.quota);
        let server = match start_quiver(&mut ctx, name, limit, defaults) {
            Ok(server) => server,
            Err(e) => {
                out.notes
                    .push(format!("starting Quiver ({name}) failed: {e:#}"));
                continue;
            }
        };
        let noisy = noisy_spec(&server, &noisy_token);
        // Alone and beside each flood, interleaved, so that drift in the machine's other load
        // falls on every phase alike.
        for i in 0..args.repeats {
            if quota_on && !defaults {
                let name = format!("calm alone #{}", i + 1);
                phase(
                    &mut ctx,
                    &server,
                    &calm,
                    None,
                    &mut out.alone,
                    &mut out.notes,
                    &name,
                );
            }
            for series in out
                .floods
                .iter_mut()
                .filter(|f| f.quota == quota_on && f.defaults == defaults)
            {
                let params = flood(series.flood_rate, series.defaults);
                let name = format!("calm beside {} #{}", series.name, i + 1);
                phase(
                    &mut ctx,
                    &server,
                    &calm,
                    Some((&noisy, &params)),
                    &mut series.runs,
                    &mut out.notes,
                    &name,
                );
            }
        }
    }

    out.notes.extend(flood_checks(&out));
    out.load_after = loadavg();
    out.elapsed_secs = started.elapsed().as_secs_f64();
    report::write(&out, &args.out)?;
    println!("{}", report::headline(&out));
    if out.alone.is_empty() || out.floods.iter().all(|f| f.runs.is_empty()) {
        bail!("the calm tenant was not measured both alone and beside the flood");
    }
    Ok(())
}

fn start_quiver(
    ctx: &mut Ctx,
    name: &str,
    quota: Option<u32>,
    defaults: bool,
) -> Result<ServerProc> {
    let config = ctx.work.join(format!("{name}.toml"));
    let mut text = quota_config(quota);
    if defaults {
        text.push_str(&format!(
            // 127.0.0.1 stands for everyone else (each with an address of their own in real
            // life): exempt, like a trusted proxy. The noisy publishers come from 127.0.0.2.
            "\n[quotas.per_address]\nhandshakes_per_second = {DEFAULT_HANDSHAKES}\n\
             trusted = [\"127.0.0.1\"]\n"
        ));
    }
    std::fs::write(&config, text)?;
    let extra = ["--config".into(), config.display().to_string()];
    let server = if defaults {
        // The server's own per-session command limit, not the benchmarks' lifted one.
        start_with_env(
            ctx,
            Kind::Quiver,
            Placement::Local,
            &extra,
            &["QUIVER_LIMITS__COMMANDS_PER_SECOND"],
        )?
    } else {
        start_with(ctx, Kind::Quiver, Placement::Local, &extra)?
    };
    // Server logs are named by the number of checks so far: one per server.
    ctx.report.pass(&format!("start quiver ({name})"));
    Ok(server)
}

fn noisy_spec(server: &ServerProc, token: &str) -> Spec {
    Spec {
        token: Some(token.to_owned()),
        ..server.spec.clone()
    }
}

/// One measurement of the calm tenant (beside a flood if given); appended to `runs`, or a note
/// on failure.
fn phase(
    ctx: &mut Ctx,
    server: &ServerProc,
    calm: &LoadParams,
    flood: Option<(&Spec, &FloodParams)>,
    runs: &mut Vec<Phase>,
    notes: &mut Vec<String>,
    name: &str,
) {
    match measure(ctx, server, calm, flood) {
        Ok(p) => {
            eprintln!(
                "bench: {name}: calm p50 {:.0} µs, p99 {:.0} µs{}",
                p.calm.latency.p50_us,
                p.calm.latency.p99_us,
                p.flood.as_ref().map_or(String::new(), |f| format!(
                    "; noisy sent {}, refused {}, accepted {}",
                    f.sent, f.refused, f.accepted
                ))
            );
            ctx.report.pass(name);
            runs.push(p);
        }
        Err(e) => {
            eprintln!("bench: {name} failed: {e:#}");
            notes.push(format!("{name} failed: {e:#}"));
            ctx.report.fail(name, &e);
        }
    }
}

fn measure(
    ctx: &Ctx,
    server: &ServerProc,
    calm: &LoadParams,
    flood: Option<(&Spec, &FloodParams)>,
) -> Result<Phase> {
    if Instant::now() > ctx.deadline {
        bail!("skipped: the time budget is used up (--budget)");
    }
    let left = server.wait_for_no_sessions(Duration::from_secs(20));
    if left > 0 {
        eprintln!("bench: warning: {left} sessions of an earlier phase still open");
    }
    let flooding = match flood {
        Some((spec, params)) => Some(Flood::start(ctx, spec, params)?),
        None => None,
    };
    let limit = Duration::from_secs_f64(30.0 + calm.warmup + calm.duration);
    let line = generate(ctx, &load_args(&server.spec, server.pid(), calm)?, limit);
    // Stop the flood whatever became of the measurement.
    let flood = flooding.map(Flood::finish).transpose()?;
    let calm: LoadResult = serde_json::from_str(&line?).context("calm generator result")?;
    if calm.delivered == 0 {
        bail!("nothing was delivered to the calm tenant");
    }
    Ok(Phase { calm, flood })
}

/// A running `quiver-bench flood`; killed if dropped before `finish`.
struct Flood {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Flood {
    fn start(ctx: &Ctx, spec: &Spec, p: &FloodParams) -> Result<Self> {
        // Pinned like any generator, but at the lowest priority (see the module comment).
        let pinned = wrapped(
            None,
            Pinning {
                nice: false,
                ..ctx.pin
            },
            ctx.pin.generator,
            &ctx.generator,
        );
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "19"])
            .arg(pinned.get_program())
            .args(pinned.get_args())
            .arg("flood")
            .args(["--spec", &serde_json::to_string(spec)?])
            .args(["--publishers", &p.publishers.to_string()])
            .args(["--rooms", &p.rooms.to_string()])
            .args(["--subs-per-room", &p.subs_per_room.to_string()])
            .args(["--payload", &p.payload.to_string()])
            .args(["--rate", &p.rate.to_string()])
            .args(["--batch", &p.batch.to_string()])
            .args(["--max-secs", &p.max_secs.to_string()])
            .args(p.reconnect.then_some("--reconnect"))
            .args(
                p.bind
                    .iter()
                    .flat_map(|ip| ["--bind".to_owned(), ip.to_string()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the flood")?;
        let stdout = child.stdout.take().context("flood stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let flood = Self {
            child: Some(child),
            lines,
        };
        let ready = flood
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        if ready.trim() != "FLOOD_READY" {
            bail!("the flood did not start (it printed {ready:?})");
        }
        // Past the quota's initial burst, to the flood's steady state.
        std::thread::sleep(Duration::from_millis(500));
        Ok(flood)
    }

    /// Closes the flood's stdin (its stop signal) and reads its result.
    fn finish(mut self) -> Result<FloodResult> {
        let mut child = self.child.take().context("flood already finished")?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_default();
        let status = wait_output(child, Duration::from_secs(10))?.status;
        if !status.success() {
            bail!("the flood failed ({status})");
        }
        serde_json::from_str(&line).with_context(|| format!("flood result: {line:?}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What the flood counts must show if the quota did its job: refusals beside the quota, none
/// without it, and no refusal for any other reason. Each miss is a note in the report.
fn flood_checks(r: &NeighbourReport) -> Vec<String> {
    let mut notes = Vec::new();
    for series in &r.floods {
        for f in series.runs.iter().filter_map(|p| p.flood.as_ref()) {
            if series.quota && !series.at_allowance && f.refused == 0 {
                notes.push(format!(
                    "CHECK FAILED ({}): the quota refused none of {} publications",
                    series.name, f.sent
                ));
            }
            if !series.quota && f.refused > 0 {
                notes.push(format!(
                    "CHECK FAILED ({}): {} publications refused with no quota configured",
                    series.name, f.refused
                ));
            }
            if f.other_refusals > 0 || f.settled < f.params.publishers {
                notes.push(format!(
                    "{}: {} refusals other than quota_exceeded; {} of {} publishers settled \
                     (an unsettled one may miss refusals still in flight)",
                    series.name, f.other_refusals, f.settled, f.params.publishers
                ));
            }
        }
    }
    notes
}
