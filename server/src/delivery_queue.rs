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
//! A delivery's bytes stay counted after its writer takes it off the queue, until the writer
//! has written it ([`Receiver::give_back`]): a writer waiting for stream credit holds a whole
//! batch (up to `replay::MAX_BATCH` and a frame), and with the bytes given back at the take a
//! client that read each room a little and then stopped made a session hold 11 × its budget,
//! ~31 MiB beyond the 2 × bound with the defaults (outside audit 120, F1). Counted, such a room
//! is past its share, so its next delivery ends it, and the bound holds.
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
        if held.saturating_add(bytes) <= self.share() {
            return true;
        }
        self.release(bytes);
        false
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// One queue's share of the budget: what it may hold once the budget is spent.
    fn share(&self) -> usize {
        self.limit / self.queues.load(Ordering::Relaxed).max(1)
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
        Receiver {
            rx,
            share,
            taken: 0,
        },
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

/// The subscription writer's end. Dropping it gives back what was still queued, and what was
/// taken and not given back.
pub struct Receiver {
    rx: mpsc::Receiver<Delivery>,
    share: Arc<Share>,
    /// Bytes taken off the queue and not given back yet: the writer's batch (outside audit
    /// 120, F1).
    taken: usize,
}

impl Receiver {
    /// The next delivery; None once the hub dropped the sender and the queue is empty.
    /// Cancel-safe, as `mpsc::Receiver::recv`. Its bytes stay counted until
    /// [`Receiver::give_back`].
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await?;
        self.taken += delivery.frame.len();
        Some(delivery)
    }

    /// As [`Receiver::recv`], without waiting.
    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        let delivery = self.rx.try_recv()?;
        self.taken += delivery.frame.len();
        Ok(delivery)
    }

    /// Gives back `bytes` of what was taken: written to the stream (or the connection's
    /// queue), or skipped.
    pub fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.taken);
        self.taken -= bytes;
        self.share.release(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// How many bytes a writer's batch should take at most: `most`, or less, the queue's share
    /// of the session's budget (at least one frame is always taken). What a batch takes stays
    /// counted until written, so a batch larger than the share would leave a room whose writer
    /// waits for credit over its share, its next publication refused once the budget is spent,
    /// however well the client reads (review 124, R1: 9 of 140 rooms with 64 KiB batches).
    pub fn batch_limit(&self, most: usize) -> usize {
        most.min(self.share.budget.share())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Closed first: a send racing this drop fails and gives its bytes back itself.
        self.rx.close();
        while let Ok(delivery) = self.rx.try_recv() {
            self.share.release(delivery.frame.len());
        }
        self.share.release(std::mem::take(&mut self.taken));
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

    /// A writer's batch takes at most its queue's share of the budget (review 124, R1).
    #[test]
    fn a_batch_takes_at_most_the_queues_share() {
        let budget = Budget::new(1000);
        let (_a, a_rx) = channel(100, budget.clone());
        assert_eq!(a_rx.batch_limit(64 * 1024), 1000, "alone: the whole budget");
        let queues: Vec<_> = (0..3).map(|_| channel(100, budget.clone())).collect();
        assert_eq!(a_rx.batch_limit(64 * 1024), 250, "one of four");
        assert_eq!(a_rx.batch_limit(100), 100, "never more than asked");
        drop(queues);
        assert_eq!(a_rx.batch_limit(64 * 1024), 1000);
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
        assert_eq!(budget.used(), 1100, "taken, not written yet");
        a_rx.give_back(600);
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
                rx.give_back(100);
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

    /// What a writer took off its queue and has not written (its batch, waiting for stream
    /// credit) stays counted: a room that stops reading after its writer took a batch is past
    /// its share and ends, and the session holds at most twice its budget (outside audit 120,
    /// F1: given back at the take, 32 such rooms held 11 × the budget).
    #[test]
    fn a_writers_unwritten_batch_stays_counted() {
        const BUDGET: usize = 64 * 1024;
        const FRAME: usize = 8000;
        let budget = Budget::new(BUDGET);
        let mut rooms: Vec<_> = (0..32).map(|_| channel(1024, budget.clone())).collect();
        let mut batches = 0;
        for (tx, rx) in &mut rooms {
            // Three frames queued, taken into the writer's batch, never written; then more.
            let mut took = 0;
            for _ in 0..3 {
                if tx.try_send(delivery(FRAME)).is_ok() {
                    took += 1;
                }
            }
            while rx.try_recv().is_ok() {}
            batches += took * FRAME;
            let _ = tx.try_send(delivery(FRAME));
        }
        let held: usize = budget.used();
        assert!(
            held <= 2 * BUDGET,
            "the session holds {held} B, over twice its {BUDGET} B budget"
        );
        assert!(batches <= 2 * BUDGET, "{batches} B taken into batches");
        // Written: given back.
        for (_, rx) in &mut rooms {
            let taken = rx.taken;
            rx.give_back(taken);
        }
        drop(rooms);
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
