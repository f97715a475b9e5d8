//! "Against the targets": each target of the issues met or missed (fan-out against
//! Socket.IO and the bare transport, p99 at half of max, memory per idle session, the WebSocket
//! transport against Socket.IO, the quiet room under loss).

use std::fmt::Write as _;

use super::{bound_note, kfmt, lost_note, met, sections, us, Report};
use crate::target::Kind;

/// The section's heading and its lines, in order.
pub(super) fn section(md: &mut String, r: &Report, sizes: &[usize]) {
    let _ = writeln!(md, "## Against the issue's targets\n");
    fanout_targets(md, r, sizes);
    memory_target(md, r);
    ws_targets(md, r, sizes);
    hol_target(md, r);
    md.push('\n');
}

/// Fan-out against Socket.IO and the bare transport, and p99 at half of max, per size.
fn fanout_targets(md: &mut String, r: &Report, sizes: &[usize]) {
    for &n in sizes {
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
}

/// Server memory per idle Quiver session.
fn memory_target(md: &mut String, r: &Report) {
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

/// The quiet room's p99 at 2% loss against no loss, and the other variants' for comparison.
fn hol_target(md: &mut String, r: &Report) {
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
}
