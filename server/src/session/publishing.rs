//! The session's publish queue. A publication the broker cannot take at once (a stored publish
//! to a history room waiting for its JetStream ack, a broker that is reconnecting) must not hold
//! up the session's other commands — `Ping`, `Subscribe`, `Refresh` — so it waits here while the
//! command loop goes on.
//!
//! Publications are handed to the broker one at a time, in the order their commands arrived, so
//! a session's publications keep their order in every room. At most [`MAX_QUEUED`] wait; past
//! that the session stops reading commands until one is answered (PROTOCOL.md §5).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use quiver_proto::{ErrorCode, Event, Position};

use super::Refusal;
use crate::broker::BrokerError;
use crate::metrics as m;

/// Publications one session may have waiting for the broker.
pub const MAX_QUEUED: usize = 64;

type Publish = BoxFuture<'static, Result<Option<Position>, BrokerError>>;

/// Who is told how a publication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A `Publish` command: a refusal is answered always, a success when it asked for `ack`.
    Command { id: u32, ack: bool },
    /// A datagram (the `latest` lane): nobody; a refusal is only counted.
    Datagram,
}

impl Reply {
    /// Whether a success is answered.
    pub fn acked(self) -> bool {
        matches!(self, Reply::Command { ack: true, .. })
    }
}

pub struct Done {
    pub reply: Reply,
    pub result: Result<Option<Position>, BrokerError>,
}

struct Waiting {
    reply: Reply,
    /// In a `Mutex` only to make the session `Sync` (its `&self` methods are held across
    /// awaits); it is only ever reached through `get_mut`, never locked.
    publish: Mutex<Publish>,
}

impl Waiting {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Position>, BrokerError>> {
        self.publish
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll(cx)
    }
}

#[derive(Default)]
pub struct Publishing {
    /// The one publication the broker is working on; polled by [`Publishing::next_done`].
    current: Option<Waiting>,
    /// Not yet started (a broker future does nothing until polled), in arrival order.
    queued: VecDeque<Waiting>,
}

impl Publishing {
    /// Starts a publication, or queues it behind the ones already waiting. `Some` when the
    /// broker took it at once (nothing was waiting, and its first poll completed).
    pub fn submit(&mut self, reply: Reply, publish: Publish) -> Option<Done> {
        let mut waiting = Waiting {
            reply,
            publish: Mutex::new(publish),
        };
        if self.current.is_none() && self.queued.is_empty() {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            // The waker is a no-op: if this is pending, `next_done` polls it again with the
            // session task's waker before the session waits on anything.
            match waiting.poll(&mut cx) {
                Poll::Ready(result) => return Some(Done { reply, result }),
                Poll::Pending => self.current = Some(waiting),
            }
        } else {
            self.queued.push_back(waiting);
        }
        None
    }

    /// Whether [`MAX_QUEUED`] publications wait, the one being handed over included.
    pub fn is_full(&self) -> bool {
        self.queued.len() + usize::from(self.current.is_some()) >= MAX_QUEUED
    }

    /// Resolves when the current publication is answered (and starts the next); pending forever
    /// while nothing waits.
    pub fn next_done(&mut self) -> NextDone<'_> {
        NextDone(self)
    }
}

pub struct NextDone<'a>(&'a mut Publishing);

impl Future for NextDone<'_> {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = &mut *self.get_mut().0;
        if this.current.is_none() {
            this.current = this.queued.pop_front();
        }
        let Some(waiting) = this.current.as_mut() else {
            return Poll::Pending;
        };
        let result = std::task::ready!(waiting.poll(cx));
        let Waiting { reply, .. } = this.current.take().expect("just polled");
        Poll::Ready(Done { reply, result })
    }
}

/// The reply to a publication the broker answered.
pub fn answer(done: Result<Option<Position>, BrokerError>) -> Result<Option<Event>, Refusal> {
    match done {
        Ok(position) => {
            m::hot::publications().increment(1);
            Ok(Some(Event::Published { position }))
        }
        Err(e) => Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A publish that completes when told to, recording the order publishes were started.
    fn gated(
        n: u64,
        started: Arc<Mutex<Vec<u64>>>,
        gate: tokio::sync::oneshot::Receiver<()>,
    ) -> Publish {
        Box::pin(async move {
            started.lock().unwrap().push(n);
            let _ = gate.await;
            Ok(Some(Position {
                epoch: 1,
                offset: n,
            }))
        })
    }

    fn cmd(id: u32, ack: bool) -> Reply {
        Reply::Command { id, ack }
    }

    #[tokio::test]
    async fn immediate_publishes_answer_at_once_and_slow_ones_keep_their_order() {
        let mut p = Publishing::default();
        let done = p.submit(cmd(1, true), Box::pin(async { Ok(None) }));
        assert!(matches!(
            done,
            Some(Done {
                reply: Reply::Command { id: 1, ack: true },
                result: Ok(None),
            })
        ));

        let started = Arc::new(Mutex::new(Vec::new()));
        let (open1, gate1) = tokio::sync::oneshot::channel();
        let (open2, gate2) = tokio::sync::oneshot::channel();
        assert!(p
            .submit(cmd(2, true), gated(2, started.clone(), gate1))
            .is_none());
        // Queued behind the pending one, even though it could complete at once.
        assert!(p
            .submit(cmd(3, true), Box::pin(async { Ok(None) }))
            .is_none());
        assert!(p
            .submit(cmd(4, false), gated(4, started.clone(), gate2))
            .is_none());
        assert_eq!(*started.lock().unwrap(), vec![2], "one at a time");
        open2.send(()).unwrap();
        open1.send(()).unwrap();
        let replies: Vec<Reply> = [
            p.next_done().await,
            p.next_done().await,
            p.next_done().await,
        ]
        .iter()
        .map(|d| d.reply)
        .collect();
        assert_eq!(replies, vec![cmd(2, true), cmd(3, true), cmd(4, false)]);
        assert_eq!(*started.lock().unwrap(), vec![2, 4]);
        assert!(futures::FutureExt::now_or_never(p.next_done()).is_none());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut p = Publishing::default();
        let never = || -> Publish { Box::pin(futures::future::pending()) };
        for i in 0..MAX_QUEUED {
            assert!(!p.is_full(), "{i} waiting");
            assert!(p.submit(cmd(i as u32, true), never()).is_none());
        }
        assert!(
            p.is_full(),
            "{MAX_QUEUED} waiting, the current one included"
        );
    }
}
