//! Head-of-line blocking under loss: the netns helper's veth pair with random loss, and the
//! QUIC variants again through a delay relay (a real round trip).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::servers::{self, start, wrapped, Placement};
use super::{generate, Ctx, Plan};
use crate::report::HolRun;
use crate::target::{Kind, Spec};
use crate::workload::hol::{HolParams, HolResult};

pub(super) fn hol(ctx: &mut Ctx, plan: &Plan, helper: &Path) -> Result<()> {
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
