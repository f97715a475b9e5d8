//! The head-of-line section: the quiet room's latency under loss, on the plain lossy path and
//! through the delay relay, one loss × target table each.

use std::fmt::Write as _;

use super::{us, HolRun, Report};
use crate::target::Kind;

/// Skipped, no results, or the plain path's table, the plot and the relay's table.
pub(super) fn section(md: &mut String, r: &Report, plots: &[String]) {
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
            loss_table(md, &plain, |h| {
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
            relay_table(md, r);
        }
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
