//! The writer task of a live connection, for either transport: commands in order, paced to the
//! server's rate limit, batched; heartbeat `Ping`s on a priority lane that skips the queue.
//!
//! A transport only says how a batch of frames goes out ([`FrameSink`]): WebTransport
//! concatenates them into one write on the control stream, WebSocket sends each as its own
//! binary message (PROTOCOL.md 9.2: exactly one frame per client message).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::client::lock;
use crate::connection::{ConnEvent, EventTx};
use crate::pacer::SharedPacer;

/// Most bytes batched into one write.
const WRITE_COALESCE: usize = 64 * 1024;

/// One frame for the writer.
pub(crate) struct Outgoing {
    pub(crate) frame: Vec<u8>,
    /// For a frame the connection may take back (a publish, a call): written only if the
    /// writer claims it first. A publish's claim holds its place in the publish buffer, given
    /// back once it is written.
    pub(crate) claim: Option<Claim>,
}

/// Who takes a queued frame first: the writer, to write it; the connection's teardown, to hold
/// it for the next session; or the caller, giving up on it (a `publish_ack` that timed out or
/// was dropped). Exactly one of them does, so a frame held or withdrawn was never written, even
/// when the writer was between its queue and the socket as the connection went or the caller
/// gave up.
#[derive(Clone, Default)]
pub(crate) struct Claim(Arc<ClaimState>);

#[derive(Default)]
struct ClaimState {
    state: AtomicU8,
    /// A publish's place in the publish buffer, kept here so that whoever takes the
    /// frame gives it back at once: the writer once written, the caller as it withdraws (not
    /// the connection task whenever it gets to it: outside audit 50, F2).
    place: Mutex<Option<OwnedSemaphorePermit>>,
}

const FREE: u8 = 0;
const WRITTEN: u8 = 1;
const HELD: u8 = 2;
const WITHDRAWN: u8 = 3;

impl Claim {
    fn moves(&self, from: u8, to: u8) -> bool {
        self.0
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A claim holding `place` until the frame is written or withdrawn.
    pub(crate) fn with_place(place: OwnedSemaphorePermit) -> Self {
        let claim = Self::default();
        *lock(&claim.0.place) = Some(place);
        claim
    }

    /// The place, for whoever took the frame to give back.
    fn take_place(&self) -> Option<OwnedSemaphorePermit> {
        lock(&self.0.place).take()
    }

    /// The writer's: whether it may write the frame (no one took it before).
    pub(crate) fn take(&self) -> bool {
        self.moves(FREE, WRITTEN)
    }

    /// Whether the writer wrote it, or someone else took it (it will never be written on this
    /// connection).
    pub(crate) fn is_taken(&self) -> bool {
        self.0.state.load(Ordering::Acquire) != FREE
    }

    /// The teardown's: whether it holds the frame to send on the next session: one never
    /// written, or (`unanswered_after_drain`) one the draining server said it did not carry out.
    pub(crate) fn hold(&self, unanswered_after_drain: bool) -> bool {
        self.moves(FREE, HELD) || (unanswered_after_drain && self.moves(WRITTEN, HELD))
    }

    /// Makes a held frame writable again, on the next session; false if its caller withdrew it
    /// meanwhile.
    pub(crate) fn rearm(&self) -> bool {
        self.moves(HELD, FREE)
    }

    /// The caller's, giving up: whether the frame is withdrawn (never written, and now never
    /// will be). False once the writer took it: it may be published.
    pub(crate) fn withdraw(&self) -> bool {
        let withdrawn = self.moves(FREE, WITHDRAWN) || self.moves(HELD, WITHDRAWN);
        if withdrawn {
            drop(self.take_place());
        }
        withdrawn
    }

    /// Whether its caller withdrew it.
    pub(crate) fn is_withdrawn(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == WITHDRAWN
    }
}

/// Whether the writer may write `out`: not taken back by the connection nor withdrawn by its
/// caller. The place it held is then the writer's, given back once written.
fn claimed(out: &Outgoing, places: &mut Vec<Option<OwnedSemaphorePermit>>) -> bool {
    match &out.claim {
        None => true,
        Some(claim) if claim.take() => {
            places.push(claim.take_place());
            true
        }
        Some(_) => false,
    }
}

/// How a transport writes complete frames (each one already length-prefixed).
pub(crate) trait FrameSink: Send + 'static {
    fn write(&mut self, frames: Vec<Vec<u8>>) -> impl Future<Output = Result<(), String>> + Send;

    /// Writes a heartbeat `Ping` frame; a transport may add a probe of its own that the peer's
    /// stack answers even while the session is busy (a WebSocket ping).
    fn write_heartbeat(
        &mut self,
        frame: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send {
        self.write(vec![frame])
    }

    /// Ends the stream after the last frame written (the client's close): the server carries
    /// out every command before the end, where a connection closed right behind them may
    /// discard those it has not read yet (PROTOCOL.md §3).
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The handles the connection task writes through.
pub(crate) struct WriterHandle {
    pub(crate) queue: mpsc::UnboundedSender<Outgoing>,
    /// Frames written ahead of the queue and without waiting for the pacer: heartbeat pings,
    /// which must not sit behind a paced burst of publishes (that would look like a dead
    /// server). The pacer still counts them.
    pub(crate) priority: mpsc::UnboundedSender<Vec<u8>>,
}

impl WriterHandle {
    /// Ends the queue: the writer writes every frame queued before, then ends the stream
    /// ([`FrameSink::finish`]) and stops. Frames queued after are dropped.
    pub(crate) fn end(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        self.queue = closed;
    }
}

/// Spawnable writer task; reports a failed write as [`ConnEvent::Lost`].
pub(crate) fn writer<S: FrameSink>(
    sink: S,
    pacer: Option<SharedPacer>,
    events: EventTx,
    epoch: u64,
) -> (WriterHandle, impl Future<Output = ()> + Send) {
    let (queue, rx) = mpsc::unbounded_channel();
    let (priority, prio_rx) = mpsc::unbounded_channel();
    let task = async move {
        if let Err(e) = run(sink, rx, prio_rx, pacer).await {
            let _ = events.send((
                epoch,
                ConnEvent::Lost {
                    code: 0,
                    reason: format!("write failed: {e}"),
                },
            ));
        }
    };
    (WriterHandle { queue, priority }, task)
}

async fn run<S: FrameSink>(
    mut sink: S,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut prio: mpsc::UnboundedReceiver<Vec<u8>>,
    pacer: Option<SharedPacer>,
) -> Result<(), String> {
    let mut permits = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            Some(ping) = prio.recv() => {
                if let Some(p) = pacer.as_ref() {
                    p.reserve(Instant::now());
                }
                sink.write_heartbeat(ping).await?;
                continue;
            }
            next = rx.recv() => match next {
                Some(first) => first,
                // Ended by the client's close (`WriterHandle::end`), everything before written.
                None => {
                    sink.finish().await;
                    return Ok(());
                }
            },
        };
        // One held back or withdrawn already costs no wait for the pacer.
        if first.claim.as_ref().is_some_and(Claim::is_taken) {
            continue;
        }
        if let Some(p) = pacer.as_ref() {
            let wait = p.reserve(Instant::now());
            if !wait.is_zero() {
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        biased;
                        Some(ping) = prio.recv() => {
                            p.reserve(Instant::now());
                            sink.write_heartbeat(ping).await?;
                        }
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
            }
        }
        let mut size = 0;
        let mut batch = Vec::new();
        if claimed(&first, &mut permits) {
            size = first.frame.len();
            batch.push(first.frame);
        }
        // Batch whatever else is queued and allowed right now.
        while size < WRITE_COALESCE && pacer.as_ref().is_none_or(|p| p.ready(Instant::now())) {
            match rx.try_recv() {
                Ok(next) if claimed(&next, &mut permits) => {
                    if let Some(p) = pacer.as_ref() {
                        p.reserve(Instant::now());
                    }
                    size += next.frame.len();
                    batch.push(next.frame);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            sink.write(batch).await?;
        }
        permits.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pacer::Pacer;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<Vec<u8>>>>>);

    impl Recorder {
        /// The one byte of every frame written, in order.
        fn frames(&self) -> Vec<u8> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .flatten()
                .map(|f| f[0])
                .collect()
        }
    }

    impl FrameSink for Recorder {
        async fn write(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
            self.0.lock().unwrap().push(frames);
            Ok(())
        }
    }

    fn out(b: u8) -> Outgoing {
        Outgoing {
            frame: vec![b],
            claim: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_in_order_and_pings_skip_a_paced_queue() {
        let rec = Recorder::default();
        let (ev_tx, _ev_rx) = mpsc::unbounded_channel();
        // 10 commands per second, burst 2: the third command waits about 100 ms.
        let pacer = Pacer::new(10, 2, Instant::now()).map(SharedPacer::new);
        let (handle, task) = writer(rec.clone(), pacer, ev_tx, 1);
        for b in 1..=4 {
            handle.queue.send(out(b)).unwrap();
        }
        let task = tokio::spawn(task);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The burst went out as one batch; the rest waits for the pacer.
        assert_eq!(rec.0.lock().unwrap().clone(), vec![vec![vec![1], vec![2]]]);
        // A ping does not wait behind them.
        handle.priority.send(vec![9]).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(rec.0.lock().unwrap().last().cloned(), Some(vec![vec![9]]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = rec.frames();
        assert_eq!(all, vec![1, 2, 9, 3, 4]);
        drop(handle);
        task.await.unwrap();
    }

    /// A frame the connection held back or its caller withdrew while it waited for the pacer is
    /// never written; one the writer took cannot be taken back.
    #[tokio::test(start_paused = true)]
    async fn a_frame_taken_back_is_never_written() {
        let rec = Recorder::default();
        let (ev_tx, _ev_rx) = mpsc::unbounded_channel();
        let pacer = Pacer::new(10, 2, Instant::now()).map(SharedPacer::new);
        let (handle, task) = writer(rec.clone(), pacer, ev_tx, 1);
        let claims: Vec<Claim> = (0..4).map(|_| Claim::default()).collect();
        for (b, claim) in (1..=4).zip(&claims) {
            let mut frame = out(b);
            frame.claim = Some(claim.clone());
            handle.queue.send(frame).unwrap();
        }
        let task = tokio::spawn(task);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!claims[0].hold(false), "written, so not to be taken back");
        assert!(!claims[1].withdraw(), "written, so not to be withdrawn");
        assert!(claims[1].hold(true), "unanswered after a drain: held again");
        assert!(claims[2].hold(false), "still waiting for the pacer");
        assert!(
            claims[3].withdraw(),
            "its caller gave up before it was written"
        );
        assert!(claims[3].is_withdrawn() && !claims[3].hold(true));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rec.frames(), vec![1, 2]);
        // Held ones are written on the next session unless their caller withdrew them first.
        assert!(claims[2].rearm() && claims[2].take());
        assert!(claims[1].withdraw() && !claims[1].rearm());
        drop(handle);
        task.await.unwrap();
    }
}
