//! A bound on how many lines one kind of log event writes per second.
//!
//! Some events are cheap for a peer to cause and each one is worth a line when rare: a refused
//! session (no token needed: an outside audit made 4,200-4,600 lines a second from one client,
//! enough to push an operator's audit lines out of journald's rate limit), a subscription ended
//! as a slow consumer. Past its budget in a second such an event is counted, not written, and
//! the count is logged with the next line written: as a field of that line ([`LogBudget::admit`])
//! or as a summary line of its own just before it ([`LogBudget::admit_summarised`]). The metrics
//! count every one of them.

use std::sync::Mutex;
use std::time::Instant;

pub struct LogBudget {
    per_second: u32,
    summary: Summary,
    /// The second (from the first use) the counts are for, lines written in it, and events
    /// not written since the last line.
    state: Mutex<Option<(Instant, u32, u64)>>,
}

/// The line, and its level, that says how many events were left out: written by
/// [`LogBudget::admit_summarised`] before the next line of the kind.
#[derive(Clone, Copy)]
pub enum Summary {
    /// The callers put the count in their own line ([`LogBudget::admit`]).
    InTheLine,
    Info(&'static str),
    Warn(&'static str),
}

impl LogBudget {
    /// A budget whose callers put the count of lines left out in their own line.
    pub const fn per_second(per_second: u32) -> Self {
        Self::summarised(per_second, Summary::InTheLine)
    }

    /// A budget that writes `summary` (with the count as `not_logged`) before the next line
    /// when some were left out.
    pub const fn summarised(per_second: u32, summary: Summary) -> Self {
        Self {
            per_second,
            summary,
            state: Mutex::new(None),
        }
    }

    /// Whether this event's line may be written; when some were left out before it, the
    /// budget's summary line says how many first.
    pub fn admit_summarised(&self) -> bool {
        let Some(not_logged) = self.admit() else {
            return false;
        };
        if not_logged > 0 {
            match self.summary {
                Summary::InTheLine => {}
                Summary::Info(line) => tracing::info!(not_logged, "{line}"),
                Summary::Warn(line) => tracing::warn!(not_logged, "{line}"),
            }
        }
        true
    }

    /// `Some(n)` when this event may be logged, `n` being how many were left out before it;
    /// `None` when it is over the budget (it is counted for the next line).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, written, skipped) = state.get_or_insert((now, 0, 0));
        if now.saturating_duration_since(*start).as_secs() >= 1 {
            *start = now;
            *written = 0;
        }
        if *written >= self.per_second {
            *skipped += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn past_the_budget_events_are_counted_for_the_next_line() {
        let budget = LogBudget::per_second(3);
        let t = Instant::now();
        assert_eq!(budget.admit_at(t), Some(0));
        assert_eq!(budget.admit_at(t), Some(0));
        assert_eq!(budget.admit_at(t), Some(0));
        for _ in 0..1_000 {
            assert_eq!(budget.admit_at(t + Duration::from_millis(500)), None);
        }
        // A second later: the next line says how many were left out.
        assert_eq!(budget.admit_at(t + Duration::from_secs(1)), Some(1_000));
        assert_eq!(budget.admit_at(t + Duration::from_secs(1)), Some(0));
    }
}
