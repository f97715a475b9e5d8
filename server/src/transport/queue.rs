//! The bounded queue between an adapter and its session core: [`Inbound`](super::Inbound) items
//! in, outgoing frames out (WebTransport, WebSocket and SSE alike).
//!
//! Not a tokio mpsc channel: that allocates ~800 bytes (its cache-padded `Chan` and its first
//! block of 32 slots) when it is created, before anything is sent, and a session has two of
//! them (1.5 KiB each with the block, heaptrack). Idle sessions are most sessions. This queue is
//! a `VecDeque` that grows on demand behind a mutex, a tokio [`Semaphore`] holding its free
//! places and a [`Notify`] for the one receiver: neither allocates while nobody waits, nor
//! when someone does (their waiters are intrusive lists), and the buffer is given back when the
//! queue empties, so an idle queue costs one ~150-byte allocation. Crates with a lazy queue (`flume`) have no [`Sender::reserve`], which a `latest`
//! room's conflation on a shared connection needs (wait for room, then pick the newest value).
//!
//! The semantics are tokio's bounded mpsc's, for what the server uses: `send` waits for room
//! and fails once the receiver is gone; `try_send` fails when full or closed; `recv` returns
//! every queued value, then `None` once every sender is gone; dropping the receiver closes the
//! queue and drops what it held. `recv` is cancel-safe (used in `select!`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// A bounded queue of at most `capacity` values (at least 1).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    // No rooms' lane: never crossed, so a receive never wakes for it.
    let rooms = Ceiling {
        frames: usize::MAX,
        bytes: usize::MAX,
    };
    weighed(capacity, usize::MAX, rooms, |_| 0)
}

/// A queue of `T` bounded in count and in what `weigh` says each holds: one is queued while the
/// queue holds less than `max_bytes`, so it holds at most `max_bytes` plus one (plus one more
/// per sender racing for the last room). A session's inbound commands over WebTransport.
pub fn bounded_weighed<T>(
    capacity: usize,
    max_bytes: usize,
    weigh: fn(&T) -> usize,
) -> (Sender<T>, Receiver<T>) {
    let rooms = Ceiling {
        frames: usize::MAX,
        bytes: usize::MAX,
    };
    weighed(capacity, max_bytes, rooms, weigh)
}

/// A queue of frames bounded in count and in bytes: a frame is queued while the queue holds
/// fewer than `max_bytes`, so it holds at most `max_bytes` plus a frame (plus one more per
/// sender racing for the last room). What a client that does not read makes the server hold
/// for it is this, not `capacity` times the largest frame.
///
/// Senders made with [`Sender::rooms`] (subscriptions on a shared connection) queue only while
/// it holds less than a quarter of `max_bytes` and three quarters of `capacity`: the rest is
/// the replies'. A client that reads, but slower than its rooms produce, otherwise found the
/// queue always full of room frames, so its `Pong` waited behind a megabyte of them (50 s at
/// 20 KB/s) or was never queued (`not_reading`), where it should lose the room
/// (`slow_consumer`) and keep the session. One queue, not two: a room's frames and its
/// `Unsubscribed` keep their order (PROTOCOL §9.2).
pub fn bounded_bytes(capacity: usize, max_bytes: usize) -> (Sender<Bytes>, Receiver<Bytes>) {
    let rooms = Ceiling {
        frames: (capacity * 3 / 4).max(1),
        bytes: (max_bytes / 4).max(1),
    };
    weighed(capacity, max_bytes, rooms, Bytes::len)
}

fn weighed<T>(
    capacity: usize,
    max_bytes: usize,
    rooms: Ceiling,
    weigh: fn(&T) -> usize,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
            progress: 0,
        }),
        room: Semaphore::new(capacity.max(1)),
        ready: Notify::new(),
        drained: Notify::new(),
        max_bytes,
        rooms,
        weigh,
        senders: AtomicUsize::new(1),
    });
    (
        Sender {
            shared: shared.clone(),
            rooms: false,
        },
        Receiver { shared },
    )
}

/// How full the queue may be for a sender of the rooms' lane to queue.
#[derive(Clone, Copy)]
struct Ceiling {
    frames: usize,
    bytes: usize,
}

impl Ceiling {
    fn above<T>(&self, state: &State<T>) -> bool {
        state.items.len() >= self.frames || state.bytes >= self.bytes
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Free places: a sender takes one before it queues, the receiver gives one back per value
    /// it takes. Closed when the receiver is dropped, which wakes every waiting sender.
    room: Semaphore,
    /// Wakes the receiver: a value was queued or the last sender left. Stores a permit when the
    /// receiver is not waiting, so a wake-up between its look and its wait is not lost.
    ready: Notify,
    /// Wakes senders waiting for bytes to drain (`max_bytes`, the rooms' ceiling), and when the
    /// receiver is gone.
    drained: Notify,
    max_bytes: usize,
    /// Where the rooms' lane stops ([`bounded_bytes`]).
    rooms: Ceiling,
    /// A value's bytes for `max_bytes` (0 for queues bounded in count only).
    weigh: fn(&T) -> usize,
    senders: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    /// What the queued values weigh together.
    bytes: usize,
    /// The receiver is gone: nothing more is queued.
    closed: bool,
    /// How far the receiver's writer has got: values and parts of values the transport took
    /// ([`Receiver::progressed`]: over WebTransport, what the client's flow-control credit let
    /// through, so what it read), not values taken from the queue. Whether a client reads at
    /// all.
    progress: u64,
}

/// Whether a value may be queued now, by bytes.
enum ByBytes {
    Fits,
    Over,
    Closed,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn by_bytes(&self) -> ByBytes {
        let state = self.state();
        if state.closed {
            ByBytes::Closed
        } else if state.bytes < self.max_bytes {
            ByBytes::Fits
        } else {
            ByBytes::Over
        }
    }

    /// Waits until the queue is below the rooms' ceiling; `false` once the receiver is gone.
    /// Waited for before a place is taken, so room senders waiting here hold none of the
    /// places the replies need.
    async fn below_rooms_ceiling(&self) -> bool {
        // The usual case first, without registering for a wake-up.
        {
            let state = self.state();
            if !state.closed && !self.rooms.above(&state) {
                return true;
            }
        }
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the look, so a drain between the two is not missed.
            drained.as_mut().enable();
            {
                let state = self.state();
                if state.closed {
                    return false;
                }
                if !self.rooms.above(&state) {
                    return true;
                }
            }
            drained.await;
        }
    }

    /// Waits until the queue holds fewer than `max_bytes`; `false` once the receiver is gone.
    async fn bytes_drained(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the look, so a drain between the two is not missed.
            drained.as_mut().enable();
            match self.by_bytes() {
                ByBytes::Fits => return true,
                ByBytes::Closed => return false,
                ByBytes::Over => drained.await,
            }
        }
    }

    /// Queues `value` in a place already taken from `room`; gives it back if the receiver is gone.
    fn push(&self, permit: SemaphorePermit<'_>, value: T) -> Result<(), T> {
        let mut state = self.state();
        if state.closed {
            return Err(value);
        }
        state.bytes += (self.weigh)(&value);
        state.items.push_back(value);
        drop(state);
        // The place now belongs to the queued value: the receiver gives it back.
        permit.forget();
        self.ready.notify_one();
        Ok(())
    }
}

/// The sending half; cloned for every producer (the session core, shared subscriptions).
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    /// Of the rooms' lane: queues only below its ceiling ([`bounded_bytes`]).
    rooms: bool,
}

/// The receiver is gone; the value was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

/// Why [`Sender::try_send`] did not queue its value.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

impl<T> Sender<T> {
    /// Queues `value`, waiting for room; fails once the receiver is gone.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.rooms && !self.shared.below_rooms_ceiling().await {
            return Err(SendError(value));
        }
        let Ok(permit) = self.shared.room.acquire().await else {
            return Err(SendError(value));
        };
        // Below the rooms' ceiling is below `max_bytes` (a quarter of it), give or take the
        // senders racing for the last place: not looked at twice on a delivery's path.
        if !self.rooms && !self.shared.bytes_drained().await {
            return Err(SendError(value));
        }
        self.shared.push(permit, value).map_err(SendError)
    }

    /// How far the receiver's writer has got (values and parts of values written): a client
    /// that reads, however slowly, makes it move.
    pub fn progress(&self) -> u64 {
        self.shared.state().progress
    }

    /// A watch on [`Self::progress`] that is not a sender: the queue still ends when the
    /// senders are gone (an adapter waits for its writer to finish the queue with it).
    pub fn watch(&self) -> Progress<T> {
        Progress {
            shared: self.shared.clone(),
        }
    }

    /// Queues `value` if there is room now.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if self.rooms && self.shared.rooms.above(&self.shared.state()) {
            return Err(TrySendError::Full(value));
        }
        match self.shared.room.try_acquire() {
            Ok(permit) => match self.shared.by_bytes() {
                ByBytes::Fits => self
                    .shared
                    .push(permit, value)
                    .map_err(TrySendError::Closed),
                ByBytes::Over => Err(TrySendError::Full(value)),
                ByBytes::Closed => Err(TrySendError::Closed(value)),
            },
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(TrySendError::Full(value)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(TrySendError::Closed(value)),
        }
    }

    /// Waits for room and holds it: the value is chosen when the permit is used. Fails once the
    /// receiver is gone. Dropping the permit unused gives the place back.
    pub async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        if self.rooms && !self.shared.below_rooms_ceiling().await {
            return Err(SendError(()));
        }
        match self.shared.room.acquire().await {
            Ok(permit) if self.shared.bytes_drained().await => Ok(Permit {
                shared: &self.shared,
                permit,
            }),
            _ => Err(SendError(())),
        }
    }

    /// A sender of the rooms' lane ([`bounded_bytes`]): for a subscription's frames.
    pub fn rooms(&self) -> Self {
        let mut sender = self.clone();
        sender.rooms = true;
        sender
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
            rooms: self.rooms,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a waiting receiver finds the queue finished.
            self.shared.ready.notify_one();
        }
    }
}

/// How far a queue's receiver has got, watched from outside ([`Sender::watch`]).
pub struct Progress<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Progress<T> {
    /// Waits for `fut` while the receiver keeps going: `grace` at a time, and again after
    /// every grace in which the queue's progress moved, until `limit`. `None` if it did not
    /// finish: the receiver stood still for a whole grace, or `limit` came.
    ///
    /// The rule for waiting on a client at a session's end and in a drain (PROTOCOL §7): one
    /// that reads nothing is given one grace; one that reads slowly but steadily is waited
    /// for, as long as the reply deadline lets it (outside audit 81, 1; review 89, F8).
    pub async fn while_moving<F: std::future::Future>(
        &self,
        fut: F,
        grace: Duration,
        limit: tokio::time::Instant,
    ) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        // A zero grace would spin while the receiver moves.
        let grace = grace.max(Duration::from_millis(1));
        loop {
            let before = self.shared.state().progress;
            let step = limit.min(tokio::time::Instant::now() + grace);
            match tokio::time::timeout_at(step, fut.as_mut()).await {
                Ok(output) => return Some(output),
                Err(_) if step < limit && self.shared.state().progress != before => {}
                Err(_) => return None,
            }
        }
    }
}

/// A place in the queue held by [`Sender::reserve`].
pub struct Permit<'a, T> {
    shared: &'a Shared<T>,
    permit: SemaphorePermit<'a>,
}

impl<T> Permit<'_, T> {
    /// Queues `value` in the held place (dropped if the receiver is gone meanwhile).
    pub fn send(self, value: T) {
        let _ = self.shared.push(self.permit, value);
    }
}

/// The receiving half: the one consumer.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Disconnected,
}

impl<T> Receiver<T> {
    /// The transport took a value already taken from the queue, or part of one: progress. A
    /// writer calls it for what it wrote, not for what it took: a writer that takes a value and
    /// then waits for a client that reads nothing has made none, so that client gets one grace,
    /// not two (review 90, F4: taking the goodbye counted, and such a client got a second). One
    /// that waits inside one large frame (a history page held up by the client's flow control)
    /// calls it per part, so a client that reads slowly but steadily is seen reading
    /// ([`Sender::progress`]; outside audit 84, F4).
    pub fn progressed(&self) {
        self.shared.state().progress += 1;
    }

    /// The next value; `None` once the queue is empty and every sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        // As with tokio's channels, a receive spends the task's cooperative budget, so a task
        // that always finds values waiting still yields now and then (to the adapter's reader
        // that fills the queue, among others).
        tokio::task::coop::consume_budget().await;
        loop {
            match self.try_recv() {
                Ok(value) => return Some(value),
                Err(TryRecvError::Disconnected) => return None,
                // Nothing is taken before this returns, so dropping the future loses nothing.
                Err(TryRecvError::Empty) => self.shared.ready.notified().await,
            }
        }
    }

    /// The next value if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(value) = self.pop() {
            return Ok(value);
        }
        // Every sender queues before it drops, so none left means none will come; a value
        // queued between the look above and this load is seen by looking once more.
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            return self.pop().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    fn pop(&mut self) -> Option<T> {
        let mut state = self.shared.state();
        let value = state.items.pop_front()?;
        if state.items.is_empty() {
            // Emptied: the buffer goes too, so an idle session holds none (one small
            // allocation when the next value comes).
            state.items = VecDeque::new();
        }
        let was_over = state.bytes >= self.shared.max_bytes;
        // `len() + 1`: the count before this pop.
        let rooms_were_over = state.bytes >= self.shared.rooms.bytes
            || state.items.len() + 1 >= self.shared.rooms.frames;
        state.bytes -= (self.shared.weigh)(&value);
        // Woken only when a bound is crossed: a writer popping every frame wakes nobody.
        let drained = (was_over && state.bytes < self.shared.max_bytes)
            || (rooms_were_over && !self.shared.rooms.above(&state));
        drop(state);
        self.shared.room.add_permits(1);
        if drained {
            self.shared.drained.notify_waiters();
        }
        Some(value)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Senders waiting for room fail now; what was queued is dropped here, not with the
        // last sender.
        self.shared.room.close();
        let items = {
            let mut state = self.shared.state();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        self.shared.drained.notify_waiters();
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn an_empty_queue_holds_no_buffer() {
        let (tx, mut rx) = bounded::<u64>(256);
        let capacity = |tx: &Sender<u64>| tx.shared.state().items.capacity();
        assert_eq!(capacity(&tx), 0);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(capacity(&tx) >= 2);
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(
            capacity(&tx) >= 1,
            "a queue still holding a value keeps its buffer"
        );
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(capacity(&tx), 0, "an emptied queue gives its buffer back");
    }

    #[test]
    fn progress_counts_what_the_writer_wrote_not_what_it_took() {
        let (tx, mut rx) = bounded::<u64>(4);
        assert_eq!(tx.progress(), 0);
        tx.try_send(1).unwrap();
        assert_eq!(tx.progress(), 0, "queued is not progress");
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.progress(), 0, "taken is not progress");
        // The writer reports what the transport took: the value, or parts of it.
        rx.progressed();
        rx.progressed();
        assert_eq!(tx.progress(), 2);
    }

    /// A writer that takes the last value (the goodbye) and then waits on a client that reads
    /// nothing gives the wait for it one grace, not two (review 90, F4).
    #[tokio::test(start_paused = true)]
    async fn a_value_taken_and_not_written_gives_one_grace() {
        use tokio::time::Instant;
        let (tx, mut rx) = bounded::<u32>(2);
        let watch = tx.watch();
        let grace = Duration::from_millis(100);
        tx.send(1).await.unwrap();
        drop(tx);
        // The writer: takes the value within the first grace, then waits for good.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let taken = rx.recv().await;
            std::future::pending::<()>().await;
            taken
        });
        let started = Instant::now();
        let far = started + Duration::from_secs(3600);
        let finished = async move {
            let _ = writer.await;
        };
        assert!(watch.while_moving(finished, grace, far).await.is_none());
        assert_eq!(started.elapsed(), grace);
    }

    /// `while_moving` waits past its grace for a receiver that keeps taking, gives up after one
    /// grace of standing still, stops at its limit however the receiver moves, and a watch does
    /// not hold the queue open. Paused time: the graces are exact.
    #[tokio::test(start_paused = true)]
    async fn a_wait_lasts_while_the_receiver_moves_and_a_watch_is_no_sender() {
        use tokio::time::{sleep, Instant};
        let (tx, mut rx) = bounded::<u32>(1);
        let watch = tx.watch();
        let grace = Duration::from_millis(100);
        let far = Instant::now() + Duration::from_secs(3600);
        // A reader that takes one value every 30 ms, for as long as it is let.
        let reading = tokio_util::sync::CancellationToken::new();
        let reader = tokio::spawn({
            let reading = reading.clone();
            async move {
                while !reading.is_cancelled() {
                    rx.recv().await;
                    rx.progressed();
                    sleep(Duration::from_millis(30)).await;
                }
                rx
            }
        });
        // 15 values through one place: about 450 ms, several graces.
        let started = Instant::now();
        let fifteen = async {
            for i in 0..15 {
                tx.send(i).await.unwrap();
            }
        };
        assert!(watch.while_moving(fifteen, grace, far).await.is_some());
        assert!(started.elapsed() >= grace * 3, "{:?}", started.elapsed());
        // The limit stops a wait however steadily the receiver moves.
        let started = Instant::now();
        let endless = async {
            loop {
                tx.send(0).await.unwrap();
            }
        };
        let limit = Instant::now() + Duration::from_millis(500);
        assert!(watch.while_moving(endless, grace, limit).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        reading.cancel();
        let mut rx = reader.await.unwrap();
        while rx.try_recv().is_ok() {}
        // Nobody reads now: one grace, then nothing.
        tx.send(15).await.unwrap();
        let started = Instant::now();
        assert!(watch.while_moving(tx.send(16), grace, far).await.is_none());
        assert_eq!(started.elapsed(), grace);
        drop(tx);
        assert_eq!(rx.recv().await, Some(15));
        assert_eq!(rx.recv().await, None, "the watch kept the queue open");
    }

    #[tokio::test]
    async fn values_come_in_order_then_none_once_senders_are_gone() {
        let (tx, mut rx) = bounded(4);
        let tx2 = tx.clone();
        tx.send(1).await.unwrap();
        tx2.send(2).await.unwrap();
        tx.try_send(3).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        drop(tx2);
        // Queued values outlive their senders.
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_or_waits_for_room() {
        let (tx, mut rx) = bounded(2);
        tx.send(1).await.unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        // `send` waits while full...
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(3)).await;
        assert!(blocked.is_err(), "send must wait while the queue is full");
        // ...and goes through once a value is taken.
        assert_eq!(rx.recv().await, Some(1));
        tx.send(3).await.unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_waiting_sender_fails_when_the_receiver_goes() {
        let (tx, rx) = bounded(1);
        tx.send(1).await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(SendError(2)));
    }

    #[tokio::test]
    async fn nothing_is_queued_after_the_receiver_is_gone() {
        let (tx, rx) = bounded(4);
        let value = Arc::new(());
        tx.send(value.clone()).await.unwrap();
        drop(rx);
        // What was queued is dropped with the receiver.
        assert_eq!(Arc::strong_count(&value), 1);
        assert!(matches!(
            tx.try_send(value.clone()),
            Err(TrySendError::Closed(_))
        ));
        assert!(tx.send(value.clone()).await.is_err());
        assert!(tx.reserve().await.is_err());
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[tokio::test]
    async fn a_reserved_place_counts_against_the_bound_until_used_or_dropped() {
        let (tx, mut rx) = bounded(1);
        let permit = tx.reserve().await.unwrap();
        assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));
        drop(permit);
        let permit = tx.reserve().await.unwrap();
        permit.send(2);
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_value_and_for_the_last_sender() {
        let (tx, mut rx) = bounded(4);
        let reader = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(7).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        assert_eq!(reader.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = bounded(4);
        // Cancelled while waiting...
        let idle = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await;
        assert!(idle.is_err());
        // ...then every value still arrives.
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_receiver_that_always_finds_values_still_yields() {
        let (tx, mut rx) = bounded(1000);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        drop(tx);
        // One thread: the other task runs only when the receiving task yields.
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut taken = 0;
        while !other_ran.load(Ordering::SeqCst) {
            assert!(rx.recv().await.is_some(), "never yielded in 1,000 receives");
            taken += 1;
        }
        assert!(taken < 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_under_backpressure_deliver_everything_once() {
        let (tx, mut rx) = bounded(3);
        let mut tasks = Vec::new();
        for sender in 0..4u64 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..500u64 {
                    tx.send(sender * 1000 + i).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(v) = rx.recv().await {
            seen.push(v);
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(seen.len(), 2000);
        // Each sender's values arrive in its order.
        for sender in 0..4u64 {
            let mine: Vec<_> = seen.iter().filter(|v| **v / 1000 == sender).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[tokio::test]
    async fn a_queue_of_frames_is_bounded_in_bytes_too() {
        let frame = |n: usize| Bytes::from(vec![0u8; n]);
        let (tx, mut rx) = bounded_bytes(100, 1000);
        // Taken while it holds less than the bound: the last one may go over it.
        tx.try_send(frame(600)).unwrap();
        tx.try_send(frame(600)).unwrap();
        assert!(matches!(tx.try_send(frame(1)), Err(TrySendError::Full(_))));
        // A send waits for the bytes to drain, not only for a place.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(frame(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "queued past the byte bound");
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(600));
        // 600 bytes left: under the bound, the waiting sender goes on.
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the bytes drained")
            .unwrap()
            .unwrap();
        // So does a reserve, and a receiver that leaves fails whoever waits.
        tx.try_send(frame(500)).unwrap();
        let reserving = tokio::spawn({
            let tx = tx.clone();
            async move { tx.reserve().await.is_err() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !reserving.is_finished(),
            "a place reserved past the byte bound"
        );
        drop(rx);
        assert!(tokio::time::timeout(Duration::from_secs(5), reserving)
            .await
            .expect("woken when the receiver left")
            .unwrap());
    }

    /// Room frames fill at most a quarter of the bytes and three quarters of the places; the
    /// rest is the replies', and a room sender waiting at its ceiling holds no place.
    #[tokio::test]
    async fn room_frames_leave_the_replies_their_part() {
        let frame = |n: usize| Bytes::from(vec![0u8; n]);
        let (replies, mut rx) = bounded_bytes(8, 4000);
        let rooms = replies.rooms();
        // Bytes: a room frame queues while the queue holds under 1,000 bytes.
        rooms.try_send(frame(900)).unwrap();
        rooms.try_send(frame(200)).unwrap();
        assert!(matches!(
            rooms.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        let waiting = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.send(frame(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a room frame queued past its ceiling"
        );
        // A reply still goes in, past the rooms' ceiling, up to the queue's own bounds.
        replies.try_send(frame(2000)).unwrap();
        replies.try_send(frame(100)).unwrap();
        // Draining below the rooms' ceiling wakes the room sender.
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(900));
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(200));
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(2000));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken below the ceiling")
            .unwrap()
            .unwrap();
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(100));
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(10));
        // Places: 6 of 8 for rooms, the last 2 for replies.
        for _ in 0..6 {
            rooms.try_send(frame(1)).unwrap();
        }
        assert!(matches!(
            rooms.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        let reserving = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.reserve().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !reserving.is_finished(),
            "a room place reserved past its ceiling"
        );
        replies.try_send(frame(1)).unwrap();
        replies.try_send(frame(1)).unwrap();
        assert!(matches!(
            replies.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        // Below the ceiling in count again (7 queued, then 5).
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), reserving)
            .await
            .expect("woken below the ceiling in count")
            .unwrap());
    }

    #[test]
    fn queues_bounded_in_count_only_ignore_bytes() {
        let (tx, _rx) = bounded::<Bytes>(3);
        for _ in 0..3 {
            tx.try_send(Bytes::from(vec![0u8; 10 << 20])).unwrap();
        }
        assert!(matches!(
            tx.try_send(Bytes::new()),
            Err(TrySendError::Full(_))
        ));
    }
}
