//! [`Subscription`]: the stream of one room's events, and [`SubEvent`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use quiver_proto::{Member, Position, Recovery};
use tokio::sync::{mpsc, oneshot};

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
    /// `Subscribed` position rules out is yielded as [`Recovery::Failed`]; one whose replay
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
    /// [`quiver_proto::ErrorCode`], e.g. 112 `slow_consumer`), a resubscribe after a reconnect
    /// was refused (e.g. 103 `permission_denied` with a new token), or the session was closed
    /// for good (`code` is then a [`quiver_proto::CloseCode`]).
    Ended { code: u16, reason: String },
}

/// The parts the connection task hands over when a subscribe is confirmed.
pub(crate) struct SubParts {
    pub rx: mpsc::Receiver<SubEvent>,
    pub end: oneshot::Receiver<SubEvent>,
    pub gen: u64,
    pub latest: Arc<LatestCell>,
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
/// Events are queued in a bounded buffer (`ClientConfig::subscription_buffer`); a subscription
/// that is not read stops the client from reading that room's stream, and the server eventually
/// ends it with `slow_consumer`.
pub struct Subscription {
    room: String,
    rx: mpsc::Receiver<SubEvent>,
    end: Option<oneshot::Receiver<SubEvent>>,
    gen: u64,
    latest: Arc<LatestCell>,
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
            client,
        }
    }

    /// The room this subscription is for.
    pub fn room(&self) -> &str {
        &self.room
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
            Poll::Ready(Some(ev)) => Poll::Ready(Some(ev)),
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
