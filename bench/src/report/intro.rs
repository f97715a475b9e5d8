//! The report's opening: the run's date and mode, the machine, the versions, how the figures
//! were made, and which client population Quiver's QUIC rows stand for.

use std::fmt::Write as _;

use super::Report;

/// The title, the machine and versions, the method, and [`acks_disclosure`].
pub(super) fn header(md: &mut String, r: &Report) {
    let _ = writeln!(md, "# Quiver benchmarks — {} ({:?} mode)\n", r.date, r.mode);
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {:.0} GiB, Linux {}. {}. Run took {:.0} s.\n",
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.memory_gib,
        r.machine.kernel,
        r.pinning,
        r.elapsed_secs
    );
    let versions: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(md, "Versions: {}.\n", versions.join("; "));
    let _ = writeln!(
        md,
        "Every target is driven by the same Rust load generator (`quiver-bench`), one session per \
         subscriber, payload = publisher's send time + padding. Max rate is closed-loop (the \
         publisher stays a bounded window ahead of deliveries); fixed rates are fractions of each \
         target's own max. \"Other processes' CPU\" is what the rest of the machine used during the \
         max run (a shared machine): when it is high, absolute numbers are low and noisy. Single \
         runs unless the mode repeats: read ratios, not absolutes. A run whose generator used \
         0.95 of its core or more is marked *generator-bound* (in a verdict: with both \
         processes' cores): the generator was the limit there, not the server, and the figure \
         is partly the client's. Deliveries that never arrived are counted (\"lost\", `missing` \
         in the JSON); a latency from a run that lost any counts only those that arrived.\n"
    );
    acks_disclosure(md, r);
}

/// Which client population Quiver's QUIC rows stand for (outside audit 123, F1). Quiver asks
/// clients through QUIC's ACK-frequency extension to acknowledge less often
/// (`server/src/server.rs`); the generator's quinn clients take it, Chromium does not offer it,
/// and the bare peer asks nothing, so "the bare transport" is not Quiver's transport under
/// Quiver's settings.
fn acks_disclosure(md: &mut String, r: &Report) {
    let asked = if r.browser_like_acks {
        "In this run (`--browser-like-acks`) Quiver asked for nothing \
         (`transport.client_ack_delay = 0`), so its clients acknowledged at quinn's default \
         rate (every second packet, within 25 ms), as clients that do not take the extension \
         do; Chromium's own acknowledgement policy is not reproduced."
    } else {
        "In this run Quiver asked as by default: an ACK every fourth packet and a lone packet's \
         within 100 ms (`transport.client_ack_threshold = 3`, `client_ack_delay = \"100ms\"`). \
         `scripts/bench --browser-like-acks` measures without it."
    };
    let _ = writeln!(
        md,
        "Quiver's QUIC rows (`quiver`, its head-of-line variants, the cluster) are measured \
         with quinn clients, which honour the ACK-frequency request Quiver sends (QUIC's \
         ACK-frequency extension: fewer ACKs for the server to receive). Browsers do not: \
         Chromium does not offer the extension. {asked} The team's own A/B: without the \
         request, many rooms at 100k deliveries/s measured p99 265–293 ms, with it (then a \
         threshold of 10) 149–163 ms, and a higher maximum in two of three pairs \
         (`bench/results/2026-12-01-ack-frequency.md`); a threshold of 3 against 1 added 6–14 % \
         deliveries/s in many rooms (`bench/results/2026-12-05-ack-threshold-cap.md`). The bare \
         transport peer (`bare-wtransport`) uses quinn's defaults: it asks for no ACK reduction and runs \
         Cubic (Quiver runs BBR), so it is not Quiver's transport ceiling under Quiver's \
         settings. nats-server and Socket.IO are driven over ordinary TCP clients.\n"
    );
}
