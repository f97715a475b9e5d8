//! Reconnect delays: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with *full jitter*: the delay before attempt `n` (0-based) is uniformly
/// random in `[0, min(max, initial * 2^n)]`. Full jitter spreads a crowd of clients that lost the
/// same server over the whole window instead of having them retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first window (default 100 ms).
    pub initial: Duration,
    /// Largest window (default 5 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The upper bound of the window for attempt `attempt` (0-based): `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] with a caller-supplied random source (for tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(3200));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        let huge = Backoff {
            initial: Duration::from_secs(u64::MAX / 4),
            max: Duration::MAX,
        };
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn full_jitter_stays_in_window_and_spreads() {
        let b = Backoff::default();
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let mut low = false;
            let mut high = false;
            for _ in 0..2000 {
                let d = b.delay(attempt);
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                low |= d < ceiling / 4;
                high |= d > ceiling * 3 / 4;
            }
            // Full jitter: both ends of the window are used, not just the top.
            assert!(
                low && high,
                "attempt {attempt}: not spread over [0, {ceiling:?}]"
            );
        }
    }

    #[test]
    fn zero_initial_means_no_delay() {
        let b = Backoff {
            initial: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(3), Duration::ZERO);
    }
}
