//! The `quiver_jetstream_consumer_pending{namespace}` gauge: the largest backlog of the
//! namespace's live history listeners in this process (README, Metrics).

use std::collections::HashMap;
use std::sync::Arc;

/// A namespace's history backlog on this node: what `quiver_jetstream_consumer_pending
/// {namespace}` shows, the largest of its live listeners' (one per tenant with local interest).
/// Each listener used to write the one gauge with its own figure, so a tenant caught up hid
/// another's backlog, and a listener that ended left its last figure (outside cluster audit
/// 112, F6). Process-wide, like the gauge.
#[derive(Default)]
struct Backlog {
    /// Each live listener's last figure, by `BacklogPart::id`.
    parts: std::sync::Mutex<HashMap<u64, u64>>,
}

impl Backlog {
    /// The namespace's backlog, shared by every listener of the namespace in this process.
    fn of(namespace: &str) -> Arc<Self> {
        static ALL: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Arc<Backlog>>>> =
            std::sync::LazyLock::new(Default::default);
        // Keys are configured namespaces: bounded.
        ALL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    /// Records (or, `None`, takes out) one listener's figure and shows the largest left on
    /// `gauge`, under the lock, so two listeners never leave the gauge at a stale maximum.
    fn put(&self, id: u64, pending: Option<u64>, gauge: &metrics::Gauge) -> u64 {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        match pending {
            Some(pending) => parts.insert(id, pending),
            None => parts.remove(&id),
        };
        let max = parts.values().copied().max().unwrap_or(0);
        gauge.set(max as f64);
        max
    }
}

/// One live listener's part of its namespace's [`Backlog`], taken out when dropped (the
/// listener retired, its broker closed, or its task aborted). Kept while its consumer is
/// rebuilt: the last figure is the best known then.
pub(super) struct BacklogPart {
    backlog: Arc<Backlog>,
    id: u64,
    gauge: metrics::Gauge,
    last: Option<u64>,
}

impl BacklogPart {
    pub(super) fn new(namespace: &str) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            backlog: Backlog::of(namespace),
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            gauge: metrics::gauge!(
                crate::metrics::JETSTREAM_CONSUMER_PENDING,
                "namespace" => namespace.to_owned()
            ),
            last: None,
        }
    }

    /// This listener's backlog now.
    pub(super) fn set(&mut self, pending: u64) {
        if self.last != Some(pending) {
            self.last = Some(pending);
            self.backlog.put(self.id, Some(pending), &self.gauge);
        }
    }
}

impl Drop for BacklogPart {
    fn drop(&mut self) {
        self.backlog.put(self.id, None, &self.gauge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauge is the largest of the namespace's listeners, whichever reported last, and a
    /// listener that ends takes its figure with it.
    #[test]
    fn the_backlog_is_the_largest_listeners_and_leaves_with_it() {
        let mut behind = BacklogPart::new("backlog-test-ns");
        let mut caught_up = BacklogPart::new("backlog-test-ns");
        let mut elsewhere = BacklogPart::new("backlog-test-other");
        let shown = |part: &BacklogPart| part.backlog.put(u64::MAX, None, &part.gauge);
        behind.set(10_000);
        caught_up.set(0);
        assert_eq!(shown(&caught_up), 10_000);
        caught_up.set(3);
        elsewhere.set(7);
        assert_eq!(shown(&behind), 10_000);
        behind.set(9_000);
        assert_eq!(shown(&behind), 9_000);
        drop(behind);
        assert_eq!(shown(&caught_up), 3);
        drop(caught_up);
        assert_eq!(shown(&elsewhere), 7);
        drop(elsewhere);
        assert_eq!(
            Backlog::of("backlog-test-ns").put(0, None, &metrics::Gauge::noop()),
            0
        );
    }
}
