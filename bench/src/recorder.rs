//! What every subscriber does with a received payload: count it, and record its end-to-end
//! latency if it was sent inside the measurement window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::clock::now_ns;
use crate::payload::read_stamp;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

/// Counters shared by all subscribers of one run.
#[derive(Default)]
pub struct Totals {
    pub delivered: AtomicU64,
    /// Payloads that were not ours (no timestamp): should stay 0.
    pub foreign: AtomicU64,
}

/// Histograms, one per room, shared by a group of subscribers. A histogram of this range and
/// precision is about 300 KB, so thousands of subscribers share a few dozen of them; the
/// mutex is uncontended in practice (a generator has one or two worker threads).
pub type Shared = Arc<Mutex<Vec<Histogram<u64>>>>;

pub fn shared(rooms: usize) -> Shared {
    Arc::new(Mutex::new((0..rooms).map(|_| new_histogram()).collect()))
}

/// Merges the histograms of room `room` over groups.
pub fn merged(groups: &[Shared], room: usize) -> Histogram<u64> {
    let mut out = new_histogram();
    for g in groups {
        if let Ok(hists) = g.lock() {
            if let Some(h) = hists.get(room) {
                // Same bounds everywhere: adding cannot fail.
                let _ = out.add(h);
            }
        }
    }
    out
}

/// One subscriber's recorder, writing into its group's histograms.
pub struct Recorder {
    hist: Shared,
    totals: Arc<Totals>,
    /// Only messages stamped inside [from, to) are recorded (warm-up and drain excluded).
    from_ns: u64,
    to_ns: u64,
}

impl Recorder {
    pub fn new(hist: Shared, totals: Arc<Totals>, from_ns: u64, to_ns: u64) -> Self {
        Self {
            hist,
            totals,
            from_ns,
            to_ns,
        }
    }

    pub fn on_payload(&mut self, room: usize, payload: &[u8]) {
        let now = now_ns();
        self.totals.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(sent) = read_stamp(payload) else {
            self.totals.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if sent < self.from_ns || sent >= self.to_ns {
            return;
        }
        if let Ok(mut hists) = self.hist.lock() {
            if let Some(h) = hists.get_mut(room) {
                h.saturating_record(now.saturating_sub(sent).max(1));
            }
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}
