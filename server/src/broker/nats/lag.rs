//! Broker lag: every publication carries the wall-clock time it left its origin node in a NATS
//! header; the node whose hub receives it records the difference. Two nodes' clocks are only as
//! close as their synchronisation (NTP: about a millisecond), so lag below that is noise, and a
//! clock behind the origin's reads as zero, never negative.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;

use crate::metrics::hot;

/// Microseconds since the Unix epoch at the origin, in decimal.
pub const ORIGIN_HEADER: &str = "Quiver-Origin-Us";

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The headers of a publication leaving this node.
pub fn stamp() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ORIGIN_HEADER, now_micros().to_string().as_str());
    headers
}

/// The most one publication's lag counts for. The origin stamp is not authenticated: a tenant's
/// backend may publish into its rooms with any `Quiver-Origin-Us` (outside audit 36, N3: ten
/// messages stamped 0 added 1.8e10 s to the sum every tenant's lag is read from). A real lag
/// this long is an outage, past the histogram's last bucket (5 s) either way.
const MAX_LAG_MICROS: u64 = 60_000_000;

/// Records the lag of a publication arriving from NATS, at most [`MAX_LAG_MICROS`]. Messages
/// without the header (published by something else than Quiver, or by an older version) are
/// not counted.
pub fn record(headers: Option<&HeaderMap>) {
    let Some(origin) = headers
        .and_then(|h| h.get(ORIGIN_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
    else {
        return;
    };
    hot::broker_lag().record(lag_micros(now_micros(), origin) as f64 / 1e6);
}

/// A lag from its origin stamp: never negative (a clock behind the origin's), never more than
/// [`MAX_LAG_MICROS`].
fn lag_micros(now: u64, origin: u64) -> u64 {
    now.saturating_sub(origin).min(MAX_LAG_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back() {
        let headers = stamp();
        let origin: u64 = headers
            .get(ORIGIN_HEADER)
            .expect("stamped")
            .as_str()
            .parse()
            .expect("decimal");
        assert!(now_micros() >= origin);
        // Malformed or missing headers are ignored, not counted as zero.
        let mut bad = HeaderMap::new();
        bad.insert(ORIGIN_HEADER, "soon");
        record(Some(&bad));
        record(None);
    }

    #[test]
    fn a_lag_counts_between_zero_and_a_minute() {
        assert_eq!(lag_micros(1_000, 400), 600);
        assert_eq!(lag_micros(400, 1_000), 0);
        // A forged stamp of 0 counts as a minute, not 55 years.
        assert_eq!(lag_micros(now_micros(), 0), MAX_LAG_MICROS);
    }
}
