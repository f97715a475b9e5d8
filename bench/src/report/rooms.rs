//! The many-rooms section: each target's maximum, then the same offered rate for every target.

use std::fmt::Write as _;

use super::{cores_cell, kfmt, lost_cell, rooms_common_table, us, Report};

/// Nothing when no many-rooms run was made.
pub(super) fn section(md: &mut String, r: &Report) {
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
        rooms_common_table(md, r);
    }
}
