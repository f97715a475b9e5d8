//! The per-session command meter: a token bucket (`commands_per_second` sustained, bursts of the
//! same size) fed with each command's *arrival* time, and the abuse rule on top of it.
//!
//! governor meters against "now"; we meter against when the command arrived, so a backlog that
//! built up while the server was busy (a broker stall) is not billed to the client as a burst.
//!
//! Arrival is when the adapter read the command, and the adapter stops reading once the
//! session's inbound queue (64 items) is full: while a command's handler waits (a hook's
//! backend, a stalled broker), what the client sends meanwhile waits in the kernel and is read,
//! "arriving", all at once when the wait ends. So the session reports such waits
//! ([`Meter::busy`]), and the client is credited what the rate allowed it during them, for the
//! backlog to use (outside conformance audit 2, N3: a client at 150 commands/s under a 200/s
//! limit was refused 599 times and closed with `rate_abuse` behind a slow hook).

use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Refused commands are counted over windows of this length for abuse detection.
const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// Waits shorter than this are not credited: the inbound queue holds what arrives meanwhile,
/// stamped as it arrives.
pub const BUSY_MIN: Duration = Duration::from_millis(50);

/// The most waiting credited at once, in seconds of the rate (hook timeouts and broker
/// deadlines are shorter).
const MAX_CREDIT_SECS: f64 = 30.0;

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
    /// Commands the client was allowed while the session did not read ([`Meter::busy`]),
    /// usable beyond the burst until `credit_until`.
    credit: f64,
    credit_until: Option<Instant>,
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
            credit: 0.0,
            credit_until: None,
            window: (Instant::now(), 0),
            abuse_threshold: limits
                .commands_per_second
                .max(1)
                .saturating_mul(limits.abuse_factor.max(1)),
        }
    }

    /// One command that arrived at `at` (non-decreasing per session).
    pub fn take(&mut self, at: Instant) -> Verdict {
        self.refill(at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        match self.credit_until {
            Some(until) if at <= until && self.credit >= 1.0 => {
                self.credit -= 1.0;
                return Verdict::Allowed;
            }
            Some(until) if at > until => {
                self.credit = 0.0;
                self.credit_until = None;
            }
            _ => {}
        }
        self.refused(at)
    }

    /// Charges `extra` commands' worth more for one command that cost that much work (a
    /// `Refresh` that re-checked many subscriptions): the bucket may go as far below empty as
    /// a burst, so the commands after it wait (are refused) until the rate has paid for it.
    pub fn charge(&mut self, extra: usize, at: Instant) {
        if extra == 0 {
            return;
        }
        self.refill(at);
        self.tokens = (self.tokens - extra as f64).max(-self.burst);
    }

    /// Adds what the rate earned since the last command (arrival times never go back).
    fn refill(&mut self, at: Instant) {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| at.saturating_duration_since(last));
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_sec).min(self.burst);
    }

    /// The session did not read commands for `waited` (a handler's wait), up to `now`: what
    /// the client sent meanwhile within the rate arrives late, at once. It may use the rate's
    /// worth of that time beyond the burst, for as long again (at least a second) from `now`.
    pub fn busy(&mut self, waited: Duration, now: Instant) {
        if waited < BUSY_MIN {
            return;
        }
        self.credit =
            (self.credit + waited.as_secs_f64() * self.per_sec).min(MAX_CREDIT_SECS * self.per_sec);
        let until = now + waited.max(Duration::from_secs(1));
        self.credit_until = Some(self.credit_until.map_or(until, |u| u.max(until)));
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

    /// A backlog read all at once after the session waited is let through up to what the
    /// rate allowed during the wait, and the credit does not outlive its window.
    #[test]
    fn a_wait_credits_the_backlog_it_built_and_no_more() {
        let mut m = Meter::new(&limits(10, 100));
        let t = Instant::now();
        // A 3 s wait: 30 commands' worth, on top of the burst of 10.
        let after = t + Duration::from_secs(3);
        m.busy(Duration::from_secs(3), after);
        for n in 0..40 {
            assert_eq!(m.take(after), Verdict::Allowed, "command {n}");
        }
        assert_eq!(m.take(after), Verdict::Limited);
        // Short waits earn nothing; an unused credit lapses after its window.
        let mut m = Meter::new(&limits(10, 100));
        m.busy(BUSY_MIN / 2, t);
        for _ in 0..10 {
            assert_eq!(m.take(t), Verdict::Allowed);
        }
        assert_eq!(m.take(t), Verdict::Limited);
        m.busy(Duration::from_secs(2), t);
        let later = t + Duration::from_secs(3);
        for _ in 0..10 {
            assert_eq!(m.take(later), Verdict::Allowed);
        }
        assert_eq!(
            m.take(later),
            Verdict::Limited,
            "the credit outlived its window"
        );
    }

    /// A command charged for its work leaves the bucket that much emptier, at most a burst
    /// below empty, and the rate pays it back.
    #[test]
    fn a_charge_is_paid_back_by_the_rate() {
        let mut m = Meter::new(&limits(10, 1_000));
        let t = Instant::now();
        assert_eq!(m.take(t), Verdict::Allowed);
        m.charge(14, t);
        // 9 - 14 = -5: the next command waits 600 ms for a whole token.
        assert_eq!(m.take(t + Duration::from_millis(500)), Verdict::Limited);
        assert_eq!(m.take(t + Duration::from_millis(650)), Verdict::Allowed);
        // Never more than a burst below empty.
        m.charge(1_000, t + Duration::from_millis(650));
        // 0.5 - 1,000 stops at -10: a whole token again after 1.1 s, not 100 s.
        assert_eq!(m.take(t + Duration::from_millis(1_700)), Verdict::Limited);
        assert_eq!(m.take(t + Duration::from_millis(1_800)), Verdict::Allowed);
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
