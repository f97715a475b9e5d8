//! A subscription's queue of deliveries, bounded twice: `limits.subscriber_queue` deliveries
//! per subscription (the channel's capacity) and `limits.session_queue_bytes` bytes over all of
//! one session's subscriptions (a [`Budget`] they share). A count alone let a session that stops
//! reading hold `subscriber_queue` × `max_payload` × `max_subscriptions` bytes until its write
//! deadline: an outside audit grew a server by 220 MB with one WebSocket reader that never
//! read. Over either bound the delivery is refused as if the queue were full, and the hub ends
//! that subscription as a slow consumer (PROTOCOL.md §5).
//!
//! The bytes are a delivery's frame, which its other subscribers share: the budget bounds what
//! one session can keep alive, not a copy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::hub::Delivery;

/// Bytes queued for one session's subscriptions, and the most it may hold.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.release(bytes);
            return false;
        }
        true
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A queue of `capacity` deliveries drawing on `budget`.
pub fn channel(capacity: usize, budget: Arc<Budget>) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Sender {
            tx,
            budget: budget.clone(),
        },
        Receiver { rx, budget },
    )
}

/// The hub's end.
#[derive(Debug)]
pub struct Sender {
    tx: mpsc::Sender<Delivery>,
    budget: Arc<Budget>,
}

impl Sender {
    /// Queues `delivery`, or gives it back: `Full` when the queue holds `capacity` deliveries
    /// or the session's budget would be exceeded, `Closed` when the writer is gone.
    pub fn try_send(&self, delivery: Delivery) -> Result<(), TrySendError<Delivery>> {
        let bytes = delivery.frame.len();
        if !self.budget.reserve(bytes) {
            return Err(TrySendError::Full(delivery));
        }
        self.tx
            .try_send(delivery)
            .inspect_err(|_| self.budget.release(bytes))
    }
}

impl Sender {
    /// A handle that does not keep the queue open (the writer still sees its subscription end
    /// when the hub drops the `Sender`).
    pub fn downgrade(&self) -> WeakSender {
        WeakSender {
            tx: self.tx.downgrade(),
            budget: self.budget.clone(),
        }
    }
}

/// See [`Sender::downgrade`].
#[derive(Debug)]
pub struct WeakSender {
    tx: mpsc::WeakSender<Delivery>,
    budget: Arc<Budget>,
}

impl WeakSender {
    /// The queue's `Sender`, while the hub still has one.
    pub fn upgrade(&self) -> Option<Sender> {
        Some(Sender {
            tx: self.tx.upgrade()?,
            budget: self.budget.clone(),
        })
    }
}

/// The subscription writer's end. Dropping it gives back what was still queued.
pub struct Receiver {
    rx: mpsc::Receiver<Delivery>,
    budget: Arc<Budget>,
}

impl Receiver {
    /// The next delivery; None once the hub dropped the sender and the queue is empty.
    /// Cancel-safe, as `mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await?;
        self.budget.release(delivery.frame.len());
        Some(delivery)
    }

    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        let delivery = self.rx.try_recv()?;
        self.budget.release(delivery.frame.len());
        Ok(delivery)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Closed first: a send racing this drop fails and gives its bytes back itself.
        self.rx.close();
        while let Ok(delivery) = self.rx.try_recv() {
            self.budget.release(delivery.frame.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn delivery(bytes: usize) -> Delivery {
        Delivery::new(None, Bytes::from(vec![0; bytes]))
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = Budget::new(1000);
        let (a, mut a_rx) = channel(100, budget.clone());
        let (b, b_rx) = channel(100, budget.clone());
        a.try_send(delivery(600)).expect("room");
        assert!(matches!(
            b.try_send(delivery(500)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(budget.used(), 600, "a refused delivery takes nothing");
        b.try_send(delivery(400)).expect("room");
        assert_eq!(budget.used(), 1000);
        assert_eq!(a_rx.try_recv().expect("queued").frame.len(), 600);
        assert_eq!(budget.used(), 400);
        // A writer that ends gives back what it never took.
        drop(b_rx);
        assert_eq!(budget.used(), 0);
        assert!(matches!(
            b.try_send(delivery(1)),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_count_still_bounds_small_deliveries() {
        let budget = Budget::new(1 << 20);
        let (tx, _rx) = channel(2, budget.clone());
        tx.try_send(delivery(1)).expect("room");
        tx.try_send(delivery(1)).expect("room");
        assert!(matches!(
            tx.try_send(delivery(1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(budget.used(), 2);
    }
}
