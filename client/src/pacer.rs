//! Client-side command pacing: a token bucket matching the server's per-session rate limit, so a
//! burst of commands (a reconnect resubscribing many rooms and flushing buffered publishes) is
//! spread out instead of being refused with `rate_limited` (or closed with `rate_abuse`).
//! Datagram publications (PROTOCOL.md §10) are metered by the server with the commands, so they
//! take their tokens from the same bucket ([`SharedPacer`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::lock;

/// A token bucket that hands out "debt": [`Pacer::reserve`] always takes a token and says how
/// long to wait before using it.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `per_second` sustained, bursts of `burst`. Returns `None` for an unlimited rate (0).
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let burst = f64::from(burst.max(1));
        Some(Pacer {
            rate: f64::from(per_second),
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// For a server limit of `limit` commands per second (burst `limit`): 95 % of the rate and
    /// half the burst, leaving room for timing differences between the two buckets.
    pub(crate) fn for_server_limit(limit: u32, now: Instant) -> Option<Self> {
        if limit == 0 {
            return None;
        }
        let rate = (u64::from(limit) * 95 / 100).max(1) as u32;
        Self::new(rate, (limit / 2).max(1), now)
    }

    /// Takes one token; returns how long to wait before sending.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether a token is available right now without waiting.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst) >= 1.0
    }

    /// How long until a token is available without waiting (zero if one is now); takes none.
    pub(crate) fn until_ready(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }
}

/// One session's pacer, shared by its writer (commands, which take tokens as debt and wait for
/// them) and its connection task (datagram publications, which take a token only when one is
/// free now: a datagram is never queued behind the commands).
#[derive(Debug, Clone)]
pub(crate) struct SharedPacer(Arc<Mutex<Pacer>>);

impl SharedPacer {
    pub(crate) fn new(pacer: Pacer) -> Self {
        SharedPacer(Arc::new(Mutex::new(pacer)))
    }

    /// [`Pacer::reserve`].
    pub(crate) fn reserve(&self, now: Instant) -> Duration {
        lock(&self.0).reserve(now)
    }

    /// [`Pacer::ready`].
    pub(crate) fn ready(&self, now: Instant) -> bool {
        lock(&self.0).ready(now)
    }

    /// Takes a token if one is free now; otherwise takes none and says how long until one is
    /// (the writer may take it first).
    pub(crate) fn take_now(&self, now: Instant) -> Result<(), Duration> {
        let mut pacer = lock(&self.0);
        if pacer.ready(now) {
            pacer.reserve(now);
            Ok(())
        } else {
            Err(pacer.until_ready(now).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10, 3, t0).unwrap();
        assert!(p.ready(t0));
        for _ in 0..3 {
            assert_eq!(p.reserve(t0), Duration::ZERO);
        }
        assert!(!p.ready(t0));
        // Debt accumulates: the 4th waits 100 ms, the 5th 200 ms.
        let w4 = p.reserve(t0);
        let w5 = p.reserve(t0);
        assert!((w4.as_secs_f64() - 0.1).abs() < 1e-6, "{w4:?}");
        assert!((w5.as_secs_f64() - 0.2).abs() < 1e-6, "{w5:?}");
        // After a long pause the bucket is full again, never beyond the burst.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(p.reserve(later), Duration::ZERO);
        }
        assert!(p.reserve(later) > Duration::ZERO);
    }

    #[test]
    fn server_limit_is_conservative_and_zero_is_unlimited() {
        let t0 = Instant::now();
        assert!(Pacer::for_server_limit(0, t0).is_none());
        let mut p = Pacer::for_server_limit(100, t0).unwrap();
        let mut sent = 0;
        let mut at = t0;
        // Over 10 simulated seconds, never more than the server would allow (100/s + 100 burst).
        while at < t0 + Duration::from_secs(10) {
            at += p.reserve(at);
            sent += 1;
        }
        assert!(sent <= 1000 + 100, "{sent}");
        assert!(sent >= 900, "{sent}");
    }

    #[test]
    fn take_now_takes_only_a_free_token_and_says_when_the_next_is() {
        let t0 = Instant::now();
        let p = SharedPacer::new(Pacer::new(10, 2, t0).unwrap());
        assert_eq!(p.take_now(t0), Ok(()));
        assert_eq!(p.take_now(t0), Ok(()));
        let wait = p.take_now(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Refused, it took nothing: the token is free when it said.
        assert_eq!(p.take_now(t0 + wait), Ok(()));
        // A command's debt (the writer's `reserve`) comes first: no token until it is paid.
        let t1 = t0 + wait;
        let debt = p.reserve(t1);
        assert!((debt.as_secs_f64() - 0.1).abs() < 1e-6, "{debt:?}");
        let wait = p.take_now(t1).unwrap_err();
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
    }
}
