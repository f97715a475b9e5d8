//! The histograms the hot paths record into: delivery latency, command duration and broker lag,
//! each a few times per publication. They are kept here, not in the Prometheus recorder, whose
//! histograms keep every sample one by one (a clock read and a push into an epoch-guarded list
//! each) until its upkeep folds them into buckets: about 3 % of the server's CPU in many rooms
//! (`bench/results/2026-12-05-own-histograms.md`). These count into fixed buckets as they
//! record (a binary search and two relaxed adds) and are rendered after the recorder's page, in
//! the same text format. Their memory is fixed: no sample waits for a scrape. Nothing else may
//! record under their names (`metrics::histogram!` would make a second family of the same name,
//! and Prometheus refuses a page with two: `tests/tests/metrics_series.rs` checks every name is
//! typed once).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{Histogram, HistogramFn};

use super::{labels::COMMANDS, BROKER_LAG, COMMAND_DURATION, DELIVERY_LATENCY, LATENCY_BUCKETS};

/// One series: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
struct Buckets {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// The sum in nanoseconds: every value recorded here is a duration in seconds, and an
    /// integer add needs no compare-and-swap loop. It wraps after 2^64 ns (585 years) of
    /// summed samples; `rate()` reads a wrap as a counter reset. Broker lag is capped at 60 s
    /// a sample (`broker/nats/lag.rs`), so stamps forged on NATS could wrap its sum after
    /// about 3 × 10^8 messages.
    sum_nanos: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must increase (the binary search relies on it)"
        );
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// The cumulative count at each bound, `+Inf`'s last, and the sum in seconds.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // Prometheus buckets are inclusive (`le`): the first bound at or above the value. NaN,
        // infinite and negative values (a clock that stepped) count as zero: none is a
        // duration, and an infinite one would take the whole sum's range at once.
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

/// A histogram name, its help text, and its series by the value of its one label (if any).
struct Family {
    name: &'static str,
    help: &'static str,
    label: Option<&'static str>,
    series: Vec<(&'static str, Arc<Buckets>)>,
    /// One handle per series, in the same order: what the hot paths keep.
    handles: Vec<Histogram>,
}

impl Family {
    /// A family with a series for each of `values` (of `label`; one value, `""`, without one).
    fn new(
        name: &'static str,
        help: &'static str,
        label: Option<&'static str>,
        values: &[&'static str],
        bounds: &'static [f64],
    ) -> Self {
        let series: Vec<_> = values
            .iter()
            .map(|&v| (v, Arc::new(Buckets::new(bounds))))
            .collect();
        let handles = series
            .iter()
            .map(|(_, b)| Histogram::from_arc(b.clone()))
            .collect();
        Self {
            name,
            help,
            label,
            series,
            handles,
        }
    }

    fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (value, buckets) in &self.series {
            // `command="publish",` before `le`; `{command="publish"}` on sum and count.
            let (inner, outer) = match self.label {
                Some(label) => (
                    format!("{label}=\"{value}\","),
                    format!("{{{label}=\"{value}\"}}"),
                ),
                None => (String::new(), String::new()),
            };
            let (cumulative, sum) = buckets.snapshot();
            let les = buckets.bounds.iter().map(|b| b.to_string());
            for (le, count) in les.chain(["+Inf".to_owned()]).zip(&cumulative) {
                let _ = writeln!(out, "{name}_bucket{{{inner}le=\"{le}\"}} {count}");
            }
            let count = cumulative.last().copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_sum{outer} {sum}");
            let _ = writeln!(out, "{name}_count{outer} {count}");
        }
        out.push('\n');
    }
}

struct Families {
    delivery_latency: Family,
    command_duration: Family,
    broker_lag: Family,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| Families {
        delivery_latency: Family::new(
            DELIVERY_LATENCY,
            "Time from a publication reaching this node's hub to its bytes being handed to a \
             subscriber's stream; one sample per write (the oldest frame of a coalesced write)",
            None,
            &[""],
            LATENCY_BUCKETS,
        ),
        command_duration: Family::new(
            COMMAND_DURATION,
            "Time from a command's arrival to the end of its handler (queueing its reply, which \
             waits for a client that does not read, not included; a publish: handed to the \
             broker, whose acknowledgement may follow), by command",
            Some("command"),
            COMMANDS,
            LATENCY_BUCKETS,
        ),
        broker_lag: Family::new(
            BROKER_LAG,
            "Time from a publication leaving its origin node to its arrival at this node's hub \
             over NATS (wall clocks of two nodes: as good as their synchronisation)",
            None,
            &[""],
            LATENCY_BUCKETS,
        ),
    })
}

/// `quiver_delivery_latency_seconds`.
pub fn delivery_latency() -> &'static Histogram {
    &families().delivery_latency.handles[0]
}

/// `quiver_broker_lag_seconds`.
pub fn broker_lag() -> &'static Histogram {
    &families().broker_lag.handles[0]
}

/// `quiver_command_duration_seconds`, one handle per `command` label, in [`COMMANDS`]' order.
pub fn command_durations() -> &'static [Histogram] {
    &families().command_duration.handles
}

/// Appends every histogram of this module to a Prometheus text page.
pub fn render(out: &mut String) {
    let f = families();
    for family in [&f.delivery_latency, &f.command_duration, &f.broker_lag] {
        family.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: &[f64] = &[0.001, 0.01, 1.0];

    #[test]
    fn values_count_in_the_first_bucket_at_or_above_them() {
        let b = Buckets::new(BOUNDS);
        for v in [
            0.0,
            0.001,
            0.002,
            0.5,
            1.0,
            2.0,
            f64::NAN,
            -1.0,
            f64::INFINITY,
        ] {
            b.record(v);
        }
        let (cumulative, sum) = b.snapshot();
        // <= 0.001: 0, 0.001, NaN, -1, inf; <= 0.01: + 0.002; <= 1: + 0.5, 1.0; +Inf: + 2.0.
        assert_eq!(cumulative, vec![5, 6, 8, 9]);
        assert!((sum - 3.503).abs() < 1e-9, "{sum}");
    }

    /// The help texts are written as they are: the text format needs `\\` and newlines
    /// escaped, so they must hold neither. Every family is on the page, each typed once.
    #[test]
    fn the_page_holds_every_family_once_with_plain_help() {
        let mut page = String::new();
        render(&mut page);
        for name in [DELIVERY_LATENCY, COMMAND_DURATION, BROKER_LAG] {
            let help = page
                .lines()
                .filter(|l| l.starts_with(&format!("# HELP {name} ")))
                .collect::<Vec<_>>();
            assert_eq!(help.len(), 1, "{page}");
            assert!(!help[0].contains('\\'), "{}", help[0]);
            assert_eq!(
                page.matches(&format!("# TYPE {name} histogram\n")).count(),
                1
            );
        }
        assert_eq!(families().command_duration.handles.len(), COMMANDS.len());
    }

    #[test]
    fn renders_prometheus_text_with_labels_before_le() {
        let family = Family::new("x_seconds", "help", Some("command"), &["publish"], BOUNDS);
        family.handles[0].record(0.005);
        let mut page = String::new();
        family.render(&mut page);
        let expected = "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{command=\"publish\",le=\"0.001\"} 0\n\
             x_seconds_bucket{command=\"publish\",le=\"0.01\"} 1\n\
             x_seconds_bucket{command=\"publish\",le=\"1\"} 1\n\
             x_seconds_bucket{command=\"publish\",le=\"+Inf\"} 1\n\
             x_seconds_sum{command=\"publish\"} 0.005\n\
             x_seconds_count{command=\"publish\"} 1\n\n";
        assert_eq!(page, expected);
    }
}
