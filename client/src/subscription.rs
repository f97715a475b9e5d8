//! [`Subscription`]: the stream of one room's events, and [`SubEvent`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use quiver_proto::{Member, Position, Recovery};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::client::Client;
use crate::connection::Request;
use crate::latest::{DeliveryMode, LatestCell};

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubEvent {
    /// A message published in the room.
    Publication {
        room: String,
        /// The message's position in the room's history; `None` for rooms without history.
        position: Option<Position>,
        payload: Bytes,
    },
    /// The client reconnected and subscribed again, resuming from the last position it had
    /// delivered. [`Recovery::Failed`] means messages were missed: re-sync the application state.
    /// Replayed messages (for [`Recovery::Recovered`]) follow this event.
    /// [`Recovery::NotRequested`] means there was no position to resume from (a room without
    /// history): messages published during the gap were not delivered either.
    /// Also the first event of a subscription made with [`crate::Client::subscribe_from`].
    ///
    /// The client checks the server's word (PROTOCOL.md §5): a `Recovered` that its own
    /// `Subscribed` position rules out, and a `NotRequested` answering a resume, are yielded as
    /// [`Recovery::Failed`]; a `Recovered` whose replay
    /// turns out shorter or longer than announced, or outside the resumed range, is followed by
    /// a second `Resubscribed` with [`Recovery::Failed`] where that shows. Re-sync then too.
    /// (A publication whose position does not move forward, a repeat, a step back or another
    /// epoch, is never yielded and never resumed from.)
    Resubscribed { recovery: Recovery },
    /// A session subscribed to the room (namespaces that track presence).
    Joined { member: Member },
    /// A session left the room (namespaces that track presence).
    Left { member: Member },
    /// The subscription is over and nothing more follows: the server ended it (`code` is a
    /// [`quiver_proto::ErrorCode`], e.g. 112 `slow_consumer`; not 111 `unavailable`, 113
    /// `session_closing` nor 117 `unrecoverable_position`, after which the client subscribes
    /// again, resuming, and yields `Resubscribed`), a resubscribe after a reconnect
    /// was refused (e.g. 103 `permission_denied` with a new token; "not now" refusals, 100
    /// `internal`, 107 `rate_limited`, 111 `unavailable` and 115 `quota_exceeded`, are retried), or the server closed the
    /// session for good (`code` is then a [`quiver_proto::CloseCode`]). [`crate::Client::close`]
    /// ends subscriptions without an `Ended`: they yield `None`.
    Ended { code: u16, reason: String },
}

/// What holding one event costs beyond the bytes it carries (its queue slot, the headers of
/// its buffers): every event weighs at least this much, so a flood of tiny events is bounded
/// in bytes too.
pub(crate) const EVENT_OVERHEAD: usize = 128;

impl SubEvent {
    /// What the event weighs in a queue: the bytes it carries (payload, room, member) and
    /// [`EVENT_OVERHEAD`]. The same on both sides of the queue.
    pub(crate) fn weight(&self) -> usize {
        EVENT_OVERHEAD
            + match self {
                SubEvent::Publication { room, payload, .. } => room.len() + payload.len(),
                SubEvent::Joined { member } | SubEvent::Left { member } => {
                    member.user.len() + member.session.len()
                }
                SubEvent::Ended { reason, .. } => reason.len(),
                SubEvent::Resubscribed { .. } => 0,
            }
    }
}

/// The bytes one subscription's queue holds (the [`SubEvent::weight`]s of its events): the
/// delivery task counts an event in as it queues it, the [`Subscription`] counts it out as it
/// yields it. With [`ClientConfig::subscription_buffer`](crate::ClientConfig) bounding the
/// count, this bounds the bytes (`subscription_buffer_bytes`): whatever the events carry, the
/// queue holds at most the limit plus one event.
pub(crate) struct QueueBytes {
    held: AtomicUsize,
    limit: usize,
    /// Woken when `held` falls below `limit`.
    space: Notify,
}

impl QueueBytes {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(QueueBytes {
            held: AtomicUsize::new(0),
            // 0 would never admit anything: one event at a time then.
            limit: limit.max(1),
            space: Notify::new(),
        })
    }

    /// Counts `ev` in and queues it with `permit`, once the queue holds less than its limit in
    /// bytes; waits (like a full queue) before that. `false` when the application's side is
    /// gone. Cancel-safe: nothing is counted until the event is queued, in the same step.
    async fn send(
        &self,
        tx: &mpsc::Sender<SubEvent>,
        permit: mpsc::Permit<'_, SubEvent>,
        ev: SubEvent,
    ) -> bool {
        while self.held.load(Ordering::Acquire) >= self.limit {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held.load(Ordering::Acquire) < self.limit {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tx.closed() => return false,
            }
        }
        self.held.fetch_add(ev.weight(), Ordering::AcqRel);
        permit.send(ev);
        true
    }

    /// Counts out an event the application took.
    fn taken(&self, ev: &SubEvent) {
        let weight = ev.weight();
        let before = self.held.fetch_sub(weight, Ordering::AcqRel);
        if before >= self.limit && before - weight < self.limit {
            self.space.notify_one();
        }
    }
}

/// The sending side of a subscription's queue, bounded in events and in bytes.
#[derive(Clone)]
pub(crate) struct QueueTx {
    tx: mpsc::Sender<SubEvent>,
    bytes: Arc<QueueBytes>,
}

/// A subscription's queue: at most `events` events, weighing at most `bytes` (plus one event).
pub(crate) fn queue(events: usize, bytes: usize) -> (QueueTx, mpsc::Receiver<SubEvent>) {
    let (tx, rx) = mpsc::channel(events.max(1));
    let bytes = QueueBytes::new(bytes);
    (QueueTx { tx, bytes }, rx)
}

impl QueueTx {
    /// Queues `ev`; waits while the queue is full, in events or in bytes. `false` when the
    /// application's side is gone.
    pub(crate) async fn send(&self, ev: SubEvent) -> bool {
        match self.tx.reserve().await {
            Ok(permit) => self.bytes.send(&self.tx, permit, ev).await,
            Err(_) => false,
        }
    }

    /// What the [`Subscription`] counts its events out of.
    pub(crate) fn bytes(&self) -> Arc<QueueBytes> {
        self.bytes.clone()
    }
}

/// The parts the connection task hands over when a subscribe is confirmed.
pub(crate) struct SubParts {
    pub rx: mpsc::Receiver<SubEvent>,
    pub end: oneshot::Receiver<SubEvent>,
    pub gen: u64,
    pub latest: Arc<LatestCell>,
    pub bytes: Arc<QueueBytes>,
    /// The resume point the connection keeps for the room.
    pub last: Arc<std::sync::Mutex<Option<Position>>>,
}

/// How the values of a `latest` subscription arrived (PROTOCOL.md §10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatestStats {
    /// Values accepted from QUIC datagrams.
    pub by_datagram: u64,
    /// Values accepted from the room's stream (too large for a datagram, or WebSocket).
    pub by_stream: u64,
    /// Values dropped because a newer one had already arrived.
    pub dropped_older: u64,
}

/// A live subscription to one room: a [`futures::Stream`] of [`SubEvent`]s.
///
/// It survives reconnects (the client resubscribes and resumes from the last delivered
/// position). It ends (yields `None`) after [`crate::Client::unsubscribe`], after a
/// [`SubEvent::Ended`], or when the client is closed. Dropping it unsubscribes.
///
/// Events are queued in a buffer bounded in count and in bytes
/// (`ClientConfig::subscription_buffer`, `ClientConfig::subscription_buffer_bytes`); a
/// subscription that is not read stops the client from reading that room's stream, and the
/// subscription eventually ends with `slow_consumer` (on WebTransport the server ends it; on
/// WebSocket, where the room shares the socket, the client does, past 8 MiB more).
pub struct Subscription {
    room: String,
    rx: mpsc::Receiver<SubEvent>,
    end: Option<oneshot::Receiver<SubEvent>>,
    gen: u64,
    latest: Arc<LatestCell>,
    bytes: Arc<QueueBytes>,
    last: Arc<std::sync::Mutex<Option<Position>>>,
    client: Client,
}

impl Subscription {
    pub(crate) fn new(room: String, parts: SubParts, client: Client) -> Self {
        Subscription {
            room,
            rx: parts.rx,
            end: Some(parts.end),
            gen: parts.gen,
            latest: parts.latest,
            bytes: parts.bytes,
            last: parts.last,
            client,
        }
    }

    /// The room this subscription is for.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The position of the newest publication of this room the client has taken in (queued for
    /// this subscription, or yielded): what it resumes from after a reconnect. Before the first
    /// publication, the room's position when the subscription began (or the `subscribe_from`
    /// position); `None` in rooms without history.
    /// Once the subscription has ended (after [`SubEvent::Ended`], e.g. `slow_consumer`) it is
    /// the last one the application read: pass it to [`crate::Client::subscribe_from`] to go
    /// on where it stopped, or save it to resume in a later run.
    pub fn last_position(&self) -> Option<Position> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the room delivers. In a [`DeliveryMode::Latest`] room the subscription yields only
    /// the newest value (as [`SubEvent::Publication`] with no position): values that arrive
    /// while the application is not reading replace each other, and values older than one
    /// already yielded are dropped.
    pub fn mode(&self) -> DeliveryMode {
        self.latest.mode()
    }

    /// How a `latest` subscription's values arrived so far (zeros for reliable rooms).
    pub fn latest_stats(&self) -> LatestStats {
        LatestStats {
            by_datagram: self.latest.by_datagram.load(Ordering::Relaxed),
            by_stream: self.latest.by_stream.load(Ordering::Relaxed),
            dropped_older: self.latest.dropped_older.load(Ordering::Relaxed),
        }
    }

    /// The next event, `None` once the subscription is over. Same as `StreamExt::next`.
    pub async fn recv(&mut self) -> Option<SubEvent> {
        futures::StreamExt::next(self).await
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = SubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        // The newest value of a `latest` room first: it never queues behind anything.
        if let Poll::Ready(payload) = self.latest.poll_take(cx) {
            return Poll::Ready(Some(SubEvent::Publication {
                room: self.room.clone(),
                position: None,
                payload,
            }));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                self.bytes.taken(&ev);
                Poll::Ready(Some(ev))
            }
            Poll::Pending => Poll::Pending,
            // Every sender is gone: the deliveries are over. Yield the end reason, if any, last.
            Poll::Ready(None) => match self.end.as_mut() {
                None => Poll::Ready(None),
                Some(end) => match Pin::new(end).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(res) => {
                        self.end = None;
                        Poll::Ready(res.ok())
                    }
                },
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.send_request(Request::Dropped {
            room: std::mem::take(&mut self.room),
            gen: self.gen,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn joined(user: usize) -> SubEvent {
        SubEvent::Joined {
            member: Member {
                user: "u".repeat(user),
                session: String::new(),
            },
        }
    }

    /// A queue with room for 1,024 events holds 4 of 1,128 bytes under a limit of 4,096 (the
    /// last one past it): the fifth waits until the application takes one, as for a full queue;
    /// and gives up once the application is gone.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let (tx, mut rx) = queue(1024, 4096);
        let bytes = tx.bytes();
        for _ in 0..4 {
            assert!(tx.send(joined(1000)).await);
        }
        let waiting = tx.clone();
        let fifth = tokio::spawn(async move { waiting.send(joined(1000)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fifth.is_finished(), "a fifth event went past 4,096 bytes");
        let taken = rx.recv().await.unwrap();
        bytes.taken(&taken);
        let sent = tokio::time::timeout(Duration::from_secs(1), fifth).await;
        assert!(matches!(sent, Ok(Ok(true))), "{sent:?}");

        let waiting = tx.clone();
        let sixth = tokio::spawn(async move { waiting.send(joined(1000)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(1), sixth).await;
        assert!(matches!(sent, Ok(Ok(false))), "{sent:?}");
    }
}
