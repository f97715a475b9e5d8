//! Idle sessions held on a fresh server while its memory is read (and Quiver's resumed ones).

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::servers::{wait_output, wrapped, ServerProc};
use super::{Ctx, Plan};
use crate::procstat;
use crate::report::ConnRun;
use crate::target::Kind;
use crate::workload::connections::ConnResult;

pub(super) fn connections(
    ctx: &mut Ctx,
    plan: &Plan,
    server: &ServerProc,
    kind: Kind,
    resume: bool,
) {
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
