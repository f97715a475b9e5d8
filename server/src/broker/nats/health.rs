//! Whether the NATS backplane works right now, beyond "the TCP connection is up".
//!
//! After nats-server restarts, the client reconnects within milliseconds, but JetStream may
//! still be loading its streams and every history room's ordered consumer is gone (they are
//! in-memory, ephemeral). async-nats would notice the missing consumer only after retrying its
//! info five times with backoff, about 15 s (measured: 14.97 s from the first acknowledged
//! publication to its delivery). So each (re)connect starts a new *generation*: JetStream is
//! probed, every history listener rebuilds its consumer from the last sequence it delivered,
//! and the broker is ready again only once both happened for the current generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

pub struct Health {
    /// Bumped at every (re)connect; history listeners rebuild their consumer when it moves.
    generation: watch::Sender<u64>,
    /// The generation at which JetStream last answered a request.
    jetstream: AtomicU64,
    /// Per history listener, the generation its consumer was last built at.
    listeners: Mutex<HashMap<u64, u64>>,
    next_listener: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            generation: watch::Sender::new(0),
            // Not ready until JetStream answered once.
            jetstream: AtomicU64::new(u64::MAX),
            listeners: Mutex::default(),
            next_listener: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Follows the generation (for a history listener).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A (re)connect: everything must be checked again.
    pub fn reconnected(&self) -> u64 {
        let mut now = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            now = *g;
        });
        now
    }

    /// Not ready until the next (re)connect has been checked (the connection state alone
    /// would say ready again before the listeners rebuilt).
    pub fn disconnected(&self) {
        self.jetstream.store(u64::MAX, Ordering::Release);
    }

    pub fn jetstream_answered(&self, generation: u64) {
        self.jetstream.store(generation, Ordering::Release);
    }

    /// Whether JetStream answers and every history listener delivers again.
    pub fn ready(&self) -> bool {
        let generation = self.generation();
        self.jetstream.load(Ordering::Acquire) == generation
            && self
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .all(|built| *built == generation)
    }

    pub fn new_listener(&self) -> u64 {
        self.next_listener.fetch_add(1, Ordering::Relaxed)
    }

    /// The listener's consumer now delivers, as of `generation`.
    pub fn built(&self, listener: u64, generation: u64) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(listener, generation);
    }

    pub fn forget(&self, listener: u64) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_jetstream_and_every_listener_caught_up() {
        let h = Health::default();
        assert!(!h.ready());
        let g = h.reconnected();
        h.jetstream_answered(g);
        assert!(h.ready());
        let a = h.new_listener();
        h.built(a, g);
        assert!(h.ready());
        let g2 = h.reconnected();
        assert!(!h.ready());
        h.jetstream_answered(g2);
        assert!(!h.ready(), "listener a still has the old consumer");
        h.built(a, g2);
        assert!(h.ready());
        h.disconnected();
        assert!(!h.ready(), "not ready from the disconnect on");
        let g3 = h.reconnected();
        h.jetstream_answered(g3);
        h.built(a, g3);
        assert!(h.ready());
        h.forget(a);
        assert!(h.ready());
    }
}
