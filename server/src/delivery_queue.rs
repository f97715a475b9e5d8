//! A subscription's queue of deliveries, bounded twice: `limits.subscriber_queue` deliveries
//! per subscription (the channel's capacity) and `limits.session_queue_bytes` bytes over all of
//! one session's subscriptions (a [`Budget`] they share). A count alone let a session that stops
//! reading hold `subscriber_queue` × `max_payload` × `max_subscriptions` bytes until its write
//! deadline: an outside audit grew a server by 220 MB with one WebSocket reader that never
//! read. Over either bound the delivery is refused as if the queue were full, and the hub ends
//! that subscription as a slow consumer (PROTOCOL.md §5).
//!
//! The budget is shared fairly: once it is spent, a queue holding less than its share (the
//! budget divided by the session's queues) still takes deliveries, so the room whose stream the
//! client stopped reading is the one that ends, not a room that happened to publish next. The
//! session then holds at most twice its budget.
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
    /// Queues drawing on it now (for each one's fair share).
    queues: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            queues: AtomicUsize::new(0),
        })
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` for a queue that holds `held` already: within the budget, or past it while
    /// the queue stays within its share.
    fn reserve(&self, bytes: usize, held: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) <= self.limit {
            return true;
        }
        let share = self.limit / self.queues.load(Ordering::Relaxed).max(1);
        if held.saturating_add(bytes) <= share {
            return true;
        }
        self.release(bytes);
        false
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One queue's part of the budget: what it holds now.
#[derive(Debug)]
struct Share {
    budget: Arc<Budget>,
    held: AtomicUsize,
}

impl Share {
    fn reserve(&self, bytes: usize) -> bool {
        let held = self.held.load(Ordering::Relaxed);
        if !self.budget.reserve(bytes, held) {
            return false;
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.release(bytes);
    }
}

/// A queue of `capacity` deliveries drawing on `budget`.
pub fn channel(capacity: usize, budget: Arc<Budget>) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    budget.queues.fetch_add(1, Ordering::Relaxed);
    let share = Arc::new(Share {
        budget,
        held: AtomicUsize::new(0),
    });
    (
        Sender {
            tx,
            share: share.clone(),
        },
        Receiver { rx, share },
    )
}

/// The hub's end.
#[derive(Debug)]
pub struct Sender {
    tx: mpsc::Sender<Delivery>,
    share: Arc<Share>,
}

impl Sender {
    /// Queues `delivery`, or gives it back: `Full` when the queue holds `capacity` deliveries
    /// or its bytes would take the session's budget past its limit and this queue past its
    /// share, `Closed` when the writer is gone.
    pub fn try_send(&self, delivery: Delivery) -> Result<(), TrySendError<Delivery>> {
        let bytes = delivery.frame.len();
        if !self.share.reserve(bytes) {
            return Err(TrySendError::Full(delivery));
        }
        self.tx
            .try_send(delivery)
            .inspect_err(|_| self.share.release(bytes))
    }

    /// A handle that does not keep the queue open (the writer still sees its subscription end
    /// when the hub drops the `Sender`).
    pub fn downgrade(&self) -> WeakSender {
        WeakSender {
            tx: self.tx.downgrade(),
            share: self.share.clone(),
        }
    }
}

/// See [`Sender::downgrade`].
#[derive(Debug)]
pub struct WeakSender {
    tx: mpsc::WeakSender<Delivery>,
    share: Arc<Share>,
}

impl WeakSender {
    /// The queue's `Sender`, while the hub still has one.
    pub fn upgrade(&self) -> Option<Sender> {
        Some(Sender {
            tx: self.tx.upgrade()?,
            share: self.share.clone(),
        })
    }
}

/// The subscription writer's end. Dropping it gives back what was still queued.
pub struct Receiver {
    rx: mpsc::Receiver<Delivery>,
    share: Arc<Share>,
}

impl Receiver {
    /// The next delivery; None once the hub dropped the sender and the queue is empty.
    /// Cancel-safe, as `mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await?;
        self.share.release(delivery.frame.len());
        Some(delivery)
    }

    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        let delivery = self.rx.try_recv()?;
        self.share.release(delivery.frame.len());
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
            self.share.release(delivery.frame.len());
        }
        self.share.budget.queues.fetch_sub(1, Ordering::Relaxed);
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
        // Spent: b, within its share (500), still takes a delivery; a, past its own, does not.
        b.try_send(delivery(500)).expect("a queue within its share");
        assert!(matches!(
            a.try_send(delivery(1)),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(
            b.try_send(delivery(1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(budget.used(), 1100, "a refused delivery takes nothing");
        assert_eq!(a_rx.try_recv().expect("queued").frame.len(), 600);
        assert_eq!(budget.used(), 500);
        b.try_send(delivery(400)).expect("within the budget again");
        // A writer that ends gives back what it never took.
        drop(b_rx);
        assert_eq!(budget.used(), 0);
        assert!(matches!(
            b.try_send(delivery(1)),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(budget.used(), 0);
    }

    /// A room whose writer takes nothing fills the budget; the session's other rooms go on,
    /// and the stalled one is refused (then ended by the hub), not the next to publish.
    #[test]
    fn a_stalled_queue_cannot_push_out_the_others() {
        let budget = Budget::new(10_000);
        let (stalled, _stalled_rx) = channel(1000, budget.clone());
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(channel(1000, budget.clone()));
        }
        let mut taken = 0;
        while stalled.try_send(delivery(100)).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 100, "the whole budget while nobody else held any");
        // Each of the others reads what it gets, and keeps getting it.
        for _ in 0..50 {
            for (tx, rx) in &mut others {
                tx.try_send(delivery(100)).expect("a reading room goes on");
                rx.try_recv().expect("queued");
            }
        }
        assert!(stalled.try_send(delivery(100)).is_err());
        // The others may each hold up to their share (2,500) past the spent budget: the
        // session's total stays within twice its budget.
        for (tx, _) in &others {
            while tx.try_send(delivery(100)).is_ok() {}
        }
        assert!(budget.used() <= 2 * 10_000, "{}", budget.used());
        assert_eq!(budget.used(), 10_000 + 3 * 2_500);
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
