//! The per-session command meter: a token bucket (`commands_per_second` sustained, bursts of the
//! same size) fed with each command's *arrival* time, and the abuse rule on top of it.
//!
//! governor meters against "now"; we meter against when the command arrived, so a backlog that
//! built up while the server was busy (a broker stall) is not billed to the client as a burst.

use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Refused commands are counted over windows of this length for abuse detection.
const ABUSE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: refuse this command.
    Limited,
    /// Over the rate, and this refusal is the `abuse_threshold`-th within the window.
    Abuse,
}

pub struct Meter {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    /// Refusals in the current window, and when it started.
    window: (Instant, u32),
    abuse_threshold: u32,
}

impl Meter {
    pub fn new(limits: &LimitsConfig) -> Self {
        let per_sec = f64::from(limits.commands_per_second.max(1));
        Self {
            per_sec,
            burst: per_sec,
            tokens: per_sec,
            last: None,
            window: (Instant::now(), 0),
            abuse_threshold: limits
                .commands_per_second
                .max(1)
                .saturating_mul(limits.abuse_factor.max(1)),
        }
    }

    /// One command that arrived at `at` (non-decreasing per session).
    pub fn take(&mut self, at: Instant) -> Verdict {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| at.saturating_duration_since(last));
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        self.refused(at)
    }

    /// Counts a refusal for the abuse rule: rate refusals, and quota refusals too (a session
    /// that keeps publishing into its tenant's exhausted quota costs the server a refusal each
    /// time, and must not be able to do so without end).
    pub fn refused(&mut self, at: Instant) -> Verdict {
        let (start, count) = &mut self.window;
        if at.saturating_duration_since(*start) > ABUSE_WINDOW {
            *start = at;
            *count = 0;
        }
        *count += 1;
        if *count >= self.abuse_threshold {
            Verdict::Abuse
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32, factor: u32) -> LimitsConfig {
        LimitsConfig {
            commands_per_second: per_sec,
            abuse_factor: factor,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn burst_then_rate() {
        let mut m = Meter::new(&limits(10, 3));
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(m.take(t), Verdict::Allowed);
        }
        assert_eq!(m.take(t), Verdict::Limited);
        // 100 ms later one token is back.
        assert_eq!(m.take(t + Duration::from_millis(100)), Verdict::Allowed);
        assert_eq!(m.take(t + Duration::from_millis(100)), Verdict::Limited);
    }

    #[test]
    fn abuse_on_the_threshold_refusal_not_after() {
        // 10/s × 3 = 30: the 30th refused command ends the session (README, PROTOCOL §5).
        let mut m = Meter::new(&limits(10, 3));
        let t = Instant::now();
        for _ in 0..10 {
            m.take(t);
        }
        for n in 1..30 {
            assert_eq!(m.take(t), Verdict::Limited, "refusal {n}");
        }
        assert_eq!(m.take(t), Verdict::Abuse);
    }

    #[test]
    fn other_refusals_count_towards_abuse() {
        let mut m = Meter::new(&limits(10, 3));
        let t = Instant::now();
        for _ in 0..29 {
            assert_eq!(m.refused(t), Verdict::Limited);
        }
        assert_eq!(m.take(t), Verdict::Allowed, "the rate itself is untouched");
        assert_eq!(m.refused(t), Verdict::Abuse);
    }

    #[test]
    fn arrival_time_not_processing_time() {
        // 150 commands that arrived over one second at 150/s, processed in one go later, are
        // all within a 200/s limit.
        let mut m = Meter::new(&limits(200, 3));
        let t = Instant::now();
        for i in 0..150u64 {
            let at = t + Duration::from_millis(i * 1000 / 150);
            assert_eq!(m.take(at), Verdict::Allowed);
        }
        for i in 0..150u64 {
            let at = t + Duration::from_secs(1) + Duration::from_millis(i * 1000 / 150);
            assert_eq!(m.take(at), Verdict::Allowed);
        }
    }
}
