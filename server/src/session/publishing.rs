//! The session's publish queue. A publication the broker cannot take at once (a stored publish
//! to a history room waiting for its JetStream ack, a broker that is reconnecting) must not hold
//! up the session's other commands — `Ping`, `Subscribe`, `Refresh` — so it waits here while the
//! command loop goes on.
//!
//! Publications are handed to the broker one at a time, in the order their commands arrived, so
//! a session's publications keep their order in every room. At most [`MAX_QUEUED`] wait; past
//! that the session stops reading commands until one is answered (PROTOCOL.md §5).
//!
//! Datagram publications into a room with a publish hook wait in a queue of this kind too, hook
//! included, but one of their own (the session's `datagram_lane`), so a slow backend holds up
//! neither the session's commands nor its `Publish` commands (PROTOCOL.md §10). They are
//! `latest` values: one not yet started is replaced by a newer one for the same room, and at
//! most [`MAX_DATAGRAMS`] rooms' values wait besides the one being asked about.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use quiver_proto::{ErrorCode, Event, Position};

use super::Refusal;
use crate::broker::BrokerError;
use crate::hub::RoomKey;
use crate::metrics as m;

/// Publications one session may have waiting for the broker.
pub const MAX_QUEUED: usize = 64;

/// Rooms whose datagram publication (the newest) may wait in a session's datagram lane, besides
/// the one whose hook is being asked.
pub const MAX_DATAGRAMS: usize = 8;

/// A publication on its way: `Err` says why it was not published.
pub type Publish = BoxFuture<'static, Result<Option<Position>, Failed>>;

/// Why a publication on its way was not published.
#[derive(Debug)]
pub enum Failed {
    /// A datagram's hook or quota said no: told as it is.
    Refused(Refusal),
    /// The broker's error, put in a client's words (and logged with the tenant) by [`answer`]:
    /// the future carries no tenant of its own, one `Arc` clone less per publication.
    Broker(BrokerError),
}

impl From<Refusal> for Failed {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl From<BrokerError> for Failed {
    fn from(e: BrokerError) -> Self {
        Self::Broker(e)
    }
}

/// The broker's error as the refusal a client of `tenant` is told.
pub fn unavailable(tenant: &str, e: BrokerError) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, e.for_client(tenant))
}

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
    pub result: Result<Option<Position>, Failed>,
}

/// What became of a datagram publication handed to [`Publishing::submit_datagram`].
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Waiting, or started.
    Queued,
    /// Took the place of an older value for the same room that had not started (dropped).
    Superseded,
    /// [`MAX_DATAGRAMS`] other rooms' values wait already (the one being asked about not
    /// counted): this one is dropped.
    Busy,
}

struct Waiting {
    reply: Reply,
    /// A datagram publication's room: a newer value for it replaces this one until it starts.
    room: Option<RoomKey>,
    /// In a `Mutex` only to make the session `Sync` (its `&self` methods are held across
    /// awaits); it is only ever reached through `get_mut`, never locked.
    publish: Mutex<Publish>,
}

impl Waiting {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Position>, Failed>> {
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
        self.start_or_queue(Waiting {
            reply,
            room: None,
            publish: Mutex::new(publish),
        })
    }

    /// Queues a datagram publication into `room` (its result comes from [`Self::next_done`]
    /// with [`Reply::Datagram`]), unless a newer value makes an older one pointless or too many
    /// rooms' values wait already.
    pub fn submit_datagram(&mut self, room: RoomKey, publish: Publish) -> Taken {
        let older = self
            .queued
            .iter_mut()
            .find(|w| w.room.as_ref() == Some(&room));
        if let Some(older) = older {
            // Never started (only `current` has been polled): dropping it asks no hook.
            older.publish = Mutex::new(publish);
            return Taken::Superseded;
        }
        // The room being asked about does not count: a newer value for it always finds a
        // place, and takes none of the other rooms' (outside lanes audit 3, F1: with eight
        // other rooms waiting it was dropped as `busy`, and the room kept its older value for
        // good), so each room's newest value is published last.
        let asked = self.current.as_ref().and_then(|w| w.room.as_ref());
        let others_waiting = self
            .queued
            .iter()
            .filter(|w| w.room.is_some() && w.room.as_ref() != asked)
            .count();
        if asked != Some(&room) && others_waiting >= MAX_DATAGRAMS {
            return Taken::Busy;
        }
        let waiting = Waiting {
            reply: Reply::Datagram,
            room: Some(room),
            publish: Mutex::new(publish),
        };
        if self.current.is_none() && self.queued.is_empty() {
            // Started now, answered through `next_done` (never at once: it asks a backend).
            self.current = Some(waiting);
        } else {
            self.queued.push_back(waiting);
        }
        Taken::Queued
    }

    fn start_or_queue(&mut self, mut waiting: Waiting) -> Option<Done> {
        let reply = waiting.reply;
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

    /// Drops every publication waiting here, the one being worked on included (its hook or
    /// broker call is cancelled); how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.queued.len() + usize::from(self.current.is_some());
        self.current = None;
        self.queued.clear();
        n
    }

    /// Whether no publication waits.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.queued.is_empty()
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

/// The reply to a publication the broker answered, for a session of `tenant`.
pub fn answer(
    done: Result<Option<Position>, Failed>,
    tenant: &str,
) -> Result<Option<Event>, Refusal> {
    let position = done.map_err(|failed| match failed {
        Failed::Refused(refusal) => refusal,
        Failed::Broker(e) => unavailable(tenant, e),
    })?;
    m::hot::publications().increment(1);
    Ok(Some(Event::Published { position }))
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

    fn room(name: &str) -> RoomKey {
        RoomKey {
            tenant: quiver_proto::TenantId::parse("t").unwrap(),
            room: quiver_proto::RoomName::parse(name).unwrap(),
        }
    }

    #[tokio::test]
    async fn datagram_values_replace_older_ones_of_their_room_and_are_bounded() {
        let mut p = Publishing::default();
        let started = Arc::new(Mutex::new(Vec::new()));
        let (open1, gate1) = tokio::sync::oneshot::channel();
        // The first starts (it is `current` from now on) and is never replaced.
        let first = gated(1, started.clone(), gate1);
        assert_eq!(p.submit_datagram(room("g.a"), first), Taken::Queued);
        assert!(futures::FutureExt::now_or_never(p.next_done()).is_none());
        assert_eq!(*started.lock().unwrap(), vec![1]);
        let value = |n: u64| -> Publish {
            Box::pin(async move {
                Ok(Some(Position {
                    epoch: 1,
                    offset: n,
                }))
            })
        };
        for (i, r) in ["g.b", "g.c", "g.d", "g.e", "g.f", "g.g", "g.h", "g.i"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                p.submit_datagram(room(r), value(10 + i as u64)),
                Taken::Queued
            );
        }
        // Eight other rooms' values wait besides the one being asked about: a ninth room's is
        // dropped; a newer value for the room being asked about still finds its place, and one
        // for a waiting room replaces it.
        assert_eq!(p.submit_datagram(room("g.j"), value(99)), Taken::Busy);
        assert_eq!(p.submit_datagram(room("g.a"), value(2)), Taken::Queued);
        assert_eq!(p.submit_datagram(room("g.a"), value(3)), Taken::Superseded);
        assert_eq!(p.submit_datagram(room("g.i"), value(20)), Taken::Superseded);
        assert_eq!(p.submit_datagram(room("g.j"), value(98)), Taken::Busy);
        // A command's publication keeps its place among them.
        assert!(p.submit(cmd(7, true), value(70)).is_none());
        assert!(!p.is_full(), "datagrams alone never stop the command loop");
        open1.send(()).unwrap();
        let mut offsets = Vec::new();
        while let Some(done) = futures::FutureExt::now_or_never(p.next_done()) {
            offsets.push(done.result.unwrap().unwrap().offset);
        }
        assert_eq!(offsets, vec![1, 10, 11, 12, 13, 14, 15, 16, 20, 3, 70]);
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
