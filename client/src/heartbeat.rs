//! Dead-server detection ([`crate::Heartbeat`]): the readers of a connection stamp
//! [`Liveness`] whenever anything arrives (WebSocket pongs included), and so does the connection
//! task when the transport counted new packets (QUIC); it runs [`Watch`] on a timer, sends a
//! `Ping` into silence, and declares the server dead when the silence outlasts it.
//!
//! Kept apart from the transport's own timeouts on purpose: the QUIC idle timeout is negotiated
//! down to the smaller of both sides' values, so making it short would also shorten how long
//! the server keeps a silent client; a `Ping` is the client's own business.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Heartbeat;

/// When something last arrived from the server on the current connection. Written by every
/// reader task (cheap: one clock read and one relaxed store per chunk or message).
#[derive(Debug)]
pub(crate) struct Liveness {
    base: Instant,
    /// Nanoseconds after `base` (exact, so an instant stored is the instant read back).
    last_ns: AtomicU64,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        Liveness {
            base: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Something arrived.
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// Something arrived, at `at` or later.
    pub(crate) fn touch_at(&self, at: Instant) {
        let ns =
            u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// What the connection task should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Nothing; look again at this instant.
    Wait(Instant),
    /// Send a `Ping` now, look again at this instant.
    Ping(Instant),
    /// Nothing arrived for this long, `timeout` of it after a `Ping`: the server is gone.
    Dead(Duration),
}

/// The heartbeat of one connection.
#[derive(Debug)]
pub(crate) struct Watch {
    cfg: Heartbeat,
    /// When the unanswered `Ping` was sent.
    ping_sent: Option<Instant>,
    /// When the last `Ping` was sent (or the watch started).
    last_ping: Instant,
}

impl Watch {
    pub(crate) fn new(cfg: Heartbeat) -> Self {
        Self::started(cfg, Instant::now())
    }

    fn started(cfg: Heartbeat, at: Instant) -> Self {
        Watch {
            cfg,
            ping_sent: None,
            last_ping: at,
        }
    }

    /// How often a `Ping` goes out even while traffic flows: half of `unanswered`, never more
    /// often than `interval`. A session that stops answering while its rooms still deliver
    /// (they are tasks of their own on the server) was never probed, since a `Ping` went only
    /// into silence, so the `unanswered` rule never saw it (outside audit 115, F5).
    fn probe(&self) -> Duration {
        (self.cfg.unanswered / 2).max(self.cfg.interval)
    }

    /// Decides, given when something last arrived.
    pub(crate) fn step(&mut self, last_rx: Instant, now: Instant) -> Beat {
        if let Some(sent) = self.ping_sent {
            if last_rx >= sent {
                // Anything at all since the Ping proves the server alive, Pong or not.
                self.ping_sent = None;
            } else if now >= sent + self.cfg.timeout {
                return Beat::Dead(now.saturating_duration_since(last_rx));
            } else {
                return Beat::Wait(sent + self.cfg.timeout);
            }
        }
        let quiet_until = last_rx + self.cfg.interval;
        let probe_at = self.last_ping + self.probe();
        if now >= quiet_until || now >= probe_at {
            self.ping_sent = Some(now);
            self.last_ping = now;
            Beat::Ping(now + self.cfg.timeout)
        } else {
            Beat::Wait(quiet_until.min(probe_at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn watch() -> Watch {
        Watch::new(Heartbeat {
            interval: 1000 * MS,
            timeout: 1500 * MS,
            ..Heartbeat::default()
        })
    }

    #[test]
    fn waits_while_traffic_flows() {
        let t0 = Instant::now();
        let mut w = watch();
        assert_eq!(w.step(t0, t0), Beat::Wait(t0 + 1000 * MS));
        // Traffic at 800 ms: the next look is a full interval after it.
        assert_eq!(
            w.step(t0 + 800 * MS, t0 + 1000 * MS),
            Beat::Wait(t0 + 1800 * MS)
        );
    }

    #[test]
    fn pings_into_silence_then_declares_death() {
        let t0 = Instant::now();
        let mut w = watch();
        assert_eq!(w.step(t0, t0 + 1000 * MS), Beat::Ping(t0 + 2500 * MS));
        // Woken early: keep waiting for the ping's deadline.
        assert_eq!(w.step(t0, t0 + 2000 * MS), Beat::Wait(t0 + 2500 * MS));
        assert_eq!(w.step(t0, t0 + 2500 * MS), Beat::Dead(2500 * MS));
    }

    #[test]
    fn anything_after_the_ping_counts_as_an_answer() {
        let t0 = Instant::now();
        let mut w = watch();
        assert_eq!(w.step(t0, t0 + 1000 * MS), Beat::Ping(t0 + 2500 * MS));
        // Something arrived at 1200 ms: alive; the next ping a full interval after it.
        assert_eq!(
            w.step(t0 + 1200 * MS, t0 + 2000 * MS),
            Beat::Wait(t0 + 2200 * MS)
        );
        // Silence again: a new ping, a new deadline.
        assert_eq!(
            w.step(t0 + 1200 * MS, t0 + 2600 * MS),
            Beat::Ping(t0 + 4100 * MS)
        );
        // Data from before the ping does not answer it.
        assert_eq!(
            w.step(t0 + 2500 * MS, t0 + 4100 * MS),
            Beat::Dead(1600 * MS)
        );
    }

    /// Traffic that never stops still lets a `Ping` out every half `unanswered`, so a session
    /// that answers nothing while its rooms deliver is noticed (outside audit 115, F5).
    #[test]
    fn a_ping_goes_out_while_traffic_flows() {
        let t0 = Instant::now();
        let mut w = Watch::started(
            Heartbeat {
                interval: 1000 * MS,
                timeout: 1500 * MS,
                unanswered: 4000 * MS,
            },
            t0,
        );
        let mut pings = Vec::new();
        // Something arrives every 100 ms for 10 s; the watch looks every 100 ms.
        for step in 1..=100u32 {
            let now = t0 + step * 100 * MS;
            if let Beat::Ping(_) = w.step(now, now) {
                pings.push(step * 100);
            }
        }
        assert_eq!(pings, [2000, 4000, 6000, 8000, 10000]);
    }

    #[test]
    fn liveness_moves_forward_only() {
        let l = Liveness::new();
        let before = l.last();
        std::thread::sleep(2 * MS);
        l.touch();
        let after = l.last();
        assert!(after > before);
        assert!(after <= Instant::now());
        // An earlier instant never moves it back; a later one is kept exactly.
        l.touch_at(before);
        assert_eq!(l.last(), after);
        let later = after + Duration::from_nanos(1234);
        l.touch_at(later);
        assert_eq!(l.last(), later);
    }
}
