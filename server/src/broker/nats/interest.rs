//! Per-room interest: each room with local subscribers listened to once (its subject's
//! subscription, or its place on its stream's live listener, and its presence events), set up
//! by its first subscriber for every one waiting, and retired when the room empties. Apart
//! from `nats.rs` (the broker's commands): this is the per-room state they share.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use super::{events_subject, fits, history, is_room_event, lag, subject, unavailable, Inner};
use crate::broker::BrokerError;
use crate::hub::{Delivery, RoomKey};

/// A subscription handed to the NATS client, or still waiting for room in its command queue
/// (`Inner::subscribing`).
pub(super) type Subscribing = BoxFuture<'static, Result<async_nats::Subscriber, BrokerError>>;

impl Inner {
    /// Listens to a room: its messages go to the local hub until the listener is dropped.
    pub(super) async fn listen(self: &Arc<Self>, key: RoomKey) -> Result<Listener, BrokerError> {
        let hub = self.hub.clone();
        let config = self.config.clone();
        let events = if self.config.presence(&key.room) {
            Some(self.listen_events(key.clone())?)
        } else {
            None
        };
        let events = events.map(AbortOnDrop);
        match self.config.history(&key.room) {
            None => {
                let subscribing = self.subscribing(subject(&key))?;
                let task = tokio::spawn(async move {
                    // Err only once the client is gone, with the broker.
                    let Ok(mut sub) = subscribing.await else {
                        return;
                    };
                    let deliver = |msg: async_nats::Message| {
                        if fits(&key, msg.payload.len(), config.limits.max_payload) {
                            lag::record(msg.headers.as_ref());
                            hub.deliver(&key, None, msg.payload);
                        }
                    };
                    // Messages that arrived together are one run: each subscriber's stream
                    // takes them in one write (`crate::cork`).
                    let mut held = crate::cork::Held::default();
                    while let Some(msg) = sub.next().await {
                        held.during(|| deliver(msg));
                        for _ in 1..crate::cork::MAX_RUN {
                            match sub.next().now_or_never() {
                                Some(Some(msg)) => held.during(|| deliver(msg)),
                                _ => break,
                            }
                        }
                        held.flush();
                    }
                });
                Ok(Listener {
                    _events: events,
                    _subject: Some(AbortOnDrop(task)),
                    _history: None,
                })
            }
            // No task of its own: the stream's live listener delivers the room while it is
            // registered there.
            Some(ns) => Ok(Listener {
                _events: events,
                _subject: None,
                _history: Some(self.listen_history(key, ns.clone()).await?),
            }),
        }
    }

    /// Server-made events (`Joined`/`Left`), already encoded by the instance that made them.
    fn listen_events(&self, key: RoomKey) -> Result<JoinHandle<()>, BrokerError> {
        let hub = self.hub.clone();
        let max_frame = self.config.limits.max_frame;
        let subscribing = self.subscribing(events_subject(&key))?;
        Ok(tokio::spawn(async move {
            let Ok(mut sub) = subscribing.await else {
                return;
            };
            while let Some(msg) = sub.next().await {
                if fits(&key, msg.payload.len(), max_frame) && is_room_event(&key, &msg.payload) {
                    hub.deliver_frame(&key, Delivery::new(None, msg.payload));
                }
            }
        }))
    }

    /// Asks the NATS client for a subscription to `subject` without waiting for it to be
    /// taken. async-nats takes commands through a queue (2,048) that it does not read while it
    /// reconnects: once an outage had filled it, a `Subscribe` whose room was being subscribed
    /// waited for NATS to come back, and every other subscriber of the room with it (outside
    /// cluster audit 112, F1). The request is made here, so it holds its place in that queue
    /// ahead of whatever the session hands over next (the queue serves waiting senders in
    /// order: a publication right behind the `Subscribed` still comes back); the listener's
    /// task waits for it if the queue had no room, and the room retired meanwhile drops it
    /// with the task, before it ever reaches NATS.
    fn subscribing(&self, subject: String) -> Result<Subscribing, BrokerError> {
        let client = self.client.clone();
        let mut subscribing: Subscribing =
            Box::pin(async move { client.subscribe(subject).await.map_err(unavailable) });
        match (&mut subscribing).now_or_never() {
            Some(taken) => taken.map(|sub| futures::future::ready(Ok(sub)).boxed()),
            None => Ok(subscribing),
        }
    }
}

/// One room's interest: its listener, once set up (by whichever subscriber gets there first;
/// the others wait for it). A failed set-up is the answer of everyone who waited for it; a
/// subscriber that comes after the failure tries again. (`OnceCell` alone hands a failed
/// initialisation to the next waiter: k subscribers of a room JetStream refuses waited k × 3 s
/// for the last one's `unavailable`; outside audit 72, F1.)
#[derive(Default)]
pub(super) struct Interest {
    listener: tokio::sync::OnceCell<Listener>,
    /// Failed set-ups so far, and the last one's error.
    failed: std::sync::Mutex<(u64, Option<BrokerError>)>,
}

impl Interest {
    /// Waits for the room's listener, setting it up with `listen` unless it is there or a
    /// set-up that began before this call failed meanwhile (its error is then this one's too).
    pub(super) async fn ready<F>(&self, listen: impl FnOnce() -> F) -> Result<(), BrokerError>
    where
        F: std::future::Future<Output = Result<Listener, BrokerError>>,
    {
        let seen = self.failures().0;
        let init = || async {
            if let (count, Some(error)) = self.failures() {
                if count != seen {
                    return Err(error);
                }
            }
            listen().await.inspect_err(|error| {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                *failed = (failed.0 + 1, Some(error.clone()));
            })
        };
        self.listener.get_or_try_init(init).await.map(drop)
    }

    fn failures(&self) -> (u64, Option<BrokerError>) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Inner {
    /// Drops `key`'s interest if the room has no local subscriber and nobody is setting it up
    /// or waiting for it (they hold the entry: they retire it themselves when done). Under the
    /// map's lock, so a subscriber that arrives (joins the hub, then looks up the entry) either
    /// is seen here or finds no entry and sets up a listener of its own.
    pub(super) fn retire_room(&self, key: &RoomKey) -> Option<Arc<Interest>> {
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        // The hub is the truth: a subscriber may have arrived since the last one left.
        if self.hub.has_subscribers(key) {
            return None;
        }
        if interest
            .get(key)
            .is_some_and(|entry| Arc::strong_count(entry) > 1)
        {
            return None;
        }
        interest.remove(key)
    }
}

/// A subscriber's hold on a room's interest while it waits for the set-up; let go of (and the
/// room retired if nobody is left, `Inner::retire_room`) however the wait ends.
pub(super) struct SettingUp<'a> {
    pub(super) inner: &'a Inner,
    pub(super) key: &'a RoomKey,
    pub(super) interest: Option<Arc<Interest>>,
}

impl Drop for SettingUp<'_> {
    fn drop(&mut self) {
        drop(self.interest.take());
        // Dropped outside the lock: a listener's drop ends tasks and registrations.
        drop(self.inner.retire_room(self.key));
    }
}

/// What listens to one room with local interest; dropping it stops listening.
pub(super) struct Listener {
    /// Presence rooms: the `Joined`/`Left` events' subscription.
    _events: Option<AbortOnDrop>,
    /// Rooms without history: the room subject's subscription.
    _subject: Option<AbortOnDrop>,
    /// History rooms: the room's place on its stream's live listener.
    _history: Option<history::Registration>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
