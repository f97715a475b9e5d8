//! The broker connection's supervisor: readiness and the connection generation, told by
//! async-nats's events and a look once a second, and JetStream probed after each (re)connect.
//! Apart from the broker's commands: it is a task of its own, run for the broker's life.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{connection, replicas, Inner};
use crate::metrics as m;

/// At every disconnect: not ready. At every (re)connect: a new generation, streams looked up
/// afresh, and JetStream probed until it answers. Ends with the broker.
///
/// Told by the connection's events (`connected`), and by a look at the connection once a
/// second: async-nats drops an event its channel (128) has no room for, and a flood of
/// slow-consumer events keeps it full, so a lost `Connected` left `/readyz` at 503 until the
/// next reconnect (review 113, F5). A connection is known by async-nats's count of them,
/// `statistics().connects`, as `control.rs`'s `keep_loaded` does: one made and lost between
/// two looks is seen too.
pub(super) async fn supervise(inner: Weak<Inner>, mut connected: mpsc::UnboundedReceiver<bool>) {
    let mut look = tokio::time::interval(Duration::from_secs(1));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Supervision::default();
    // `statistics().connects` when reconnects were last counted (0: before the first
    // connection). The gauge and the counter are this loop's alone, set from what it acted on:
    // an event lost from async-nats's queue, or handled after the look acted, left the gauge at
    // 0 while connected, and the counter short (review 114, F3).
    let mut counted = 0;
    loop {
        let event = tokio::select! {
            event = connected.recv() => match event {
                Some(up) => Some(up),
                None => return,
            },
            _ = look.tick() => None,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // The state first: async-nats counts a connection before it says `Connected`, so a
        // state read as connected has its connection in the count read after it. The other
        // way round, a look between the two reads acted on the old count and the next one
        // started a second generation for the same reconnect (review 114, F2).
        let connected = connection::is_connected(&strong.client);
        let connects = strong
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        match watch.next(event, connects, connected) {
            None => {}
            Some(Change::Down) => {
                metrics::gauge!(m::NATS_CONNECTED).set(0.0);
                strong.health.disconnected();
            }
            Some(Change::Up) => {
                metrics::gauge!(m::NATS_CONNECTED).set(1.0);
                if counted > 0 {
                    metrics::counter!(m::NATS_RECONNECTS)
                        .increment(connects.saturating_sub(counted));
                }
                counted = connects;
                // The cached streams are forgotten before the new generation is announced:
                // the generation wakes the history listeners to rebuild, and one that looked
                // its stream up between the two got the handle and epoch from before the
                // reconnect, and after a memory-storage NATS restart read the new stream under
                // the old epoch, with no 117 (outside cluster audit 112, F7).
                strong.streams.lock().await.clear();
                let generation = strong.health.reconnected();
                drop(strong);
                tokio::spawn(probe_jetstream(inner.clone(), generation));
            }
        }
    }
}

/// What [`supervise`] acted on last.
#[derive(Default)]
struct Supervision {
    /// `statistics().connects` at the last connection acted on.
    connects: u64,
    /// Marked not ready since then.
    down: bool,
}

#[derive(Debug, PartialEq)]
enum Change {
    Down,
    Up,
}

impl Supervision {
    /// What to do, told `event` (`Some(up)`: the connection's event; None: a look) when the
    /// connection has made `connects` connections so far and is `connected` now.
    fn next(&mut self, event: Option<bool>, connects: u64, connected: bool) -> Option<Change> {
        let unseen = connects != self.connects;
        // A connection not acted on yet (async-nats counts it before its event); or one that
        // is up although marked down since (a late `Disconnected`, or a look that read the
        // state just before it turned `Connected`): a new generation either way.
        if (unseen && (connected || event == Some(true))) || (connected && self.down) {
            self.connects = connects;
            self.down = false;
            return Some(Change::Up);
        }
        // Down, unless the connection is up: a `Disconnected` that comes late, after the
        // connection that followed the loss was acted on, is of a loss already over.
        let down = event != Some(true) && !connected;
        if down && !self.down {
            self.down = true;
            return Some(Change::Down);
        }
        None
    }
}

/// Asks JetStream for the account info until it answers (it may still be loading its streams
/// after a restart), unless a newer generation started meanwhile.
async fn probe_jetstream(inner: Weak<Inner>, generation: u64) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.health.generation() != generation {
            return;
        }
        // Without history or presence nothing uses JetStream: a NATS without it is fine.
        let needed = strong
            .config
            .namespaces
            .iter()
            .any(|ns| ns.history_size > 0 || ns.presence);
        if !needed {
            strong.health.jetstream_answered(generation);
            return;
        }
        let js = strong.js.clone();
        drop(strong);
        let answered = tokio::time::timeout(Duration::from_secs(1), js.query_account()).await;
        if let Ok(Ok(_)) = answered {
            if let Some(strong) = inner.upgrade() {
                strong.health.jetstream_answered(generation);
                strong.presence_nudge.notify_one();
                replicas::warn_if_unclustered(&strong.config, &strong.client.server_info());
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, Supervision};

    #[test]
    fn a_connection_whose_event_was_lost_is_seen_by_a_look() {
        let mut s = Supervision::default();
        // Pending at start: not ready.
        assert_eq!(s.next(None, 0, false), Some(Change::Down));
        assert_eq!(s.next(Some(true), 1, true), Some(Change::Up));
        assert_eq!(s.next(None, 1, true), None);
        // Lost, and back: both events lost in a flood of slow-consumer events.
        assert_eq!(s.next(None, 2, true), Some(Change::Up));
        // The `Connected` event lost, the `Disconnected` not.
        assert_eq!(s.next(Some(false), 2, false), Some(Change::Down));
        assert_eq!(s.next(None, 2, false), None);
        assert_eq!(s.next(None, 3, true), Some(Change::Up));
        // Its events arriving late change nothing.
        assert_eq!(s.next(Some(false), 3, true), None);
        assert_eq!(s.next(Some(true), 3, true), None);
        // A `Connected` read before the state turned: acted on once.
        assert_eq!(s.next(Some(true), 4, false), Some(Change::Up));
        assert_eq!(s.next(None, 4, true), None);
        // A look that read the state just before it turned marks down; the next one heals.
        assert_eq!(s.next(Some(false), 4, false), Some(Change::Down));
        assert_eq!(s.next(None, 4, true), Some(Change::Up));
    }
}
