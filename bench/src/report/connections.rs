//! The idle-connections section: connect rate and server memory per session.

use std::fmt::Write as _;

use super::Report;

/// Nothing when no idle-connections run was made.
pub(super) fn section(md: &mut String, r: &Report) {
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
}
