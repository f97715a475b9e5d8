//! The local room index: (tenant, room) → this instance's subscribers, and the fan-out of one
//! publication to them.
//!
//! The fan-out encodes a publication once and hands the same `Bytes` to every subscriber: into
//! its stream directly when its writer is idle (`subscription::Direct`), else to its
//! bounded queue with `try_send`: a full queue costs only that subscriber (it is cancelled as a
//! slow consumer), never the publisher or the other subscribers. The lock is a std `RwLock`
//! held only for map work, never across an `.await`.
//!
//! One fan-out at a time per room (`Room::order`): publications reach every subscriber of a
//! room in one order. Concurrent fan-outs of one room under the shared read lock interleaved
//! differently on each subscriber's stream when several publishers sent at once (outside
//! audit; history rooms were in order only because the broker delivers them under its own
//! lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use quiver_proto::{Position, RoomName, TenantId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::latest::Slot;
use crate::metrics as m;
use crate::metrics::hot;
use crate::subscription::{Direct, Offered};

/// A tenant's rooms here (`Hub::rooms`).
#[derive(Default)]
pub struct RoomsHere {
    /// The first rooms by tenant and name, with their subscriber counts.
    pub listed: Vec<(RoomKey, usize)>,
    /// Rooms in all, listed or not.
    pub count: usize,
    /// Subscriptions over all of them.
    pub subscriptions: usize,
}

/// What subscribers hear when their room's epoch changed under them (`Hub::deliver`).
pub const EPOCH_CHANGED: (quiver_proto::ErrorCode, &str) = (
    quiver_proto::ErrorCode::UnrecoverablePosition,
    "the room's history was lost (a new epoch): subscribe again, resuming from your last position",
);

/// What subscribers hear when this instance's broker listener missed publications of their
/// room's stream: the stream's limits removed them before it got them (`Hub::end_room`).
pub const BROKER_GAP: (quiver_proto::ErrorCode, &str) = (
    quiver_proto::ErrorCode::UnrecoverablePosition,
    "this instance fell behind the room's history limits and missed publications: subscribe \
     again, resuming from your last position",
);

/// A room's identity: the tenant is part of every key, so tenants can never meet. Ordered by
/// tenant, then name (`Hub::rooms` lists them so).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub tenant: TenantId,
    pub room: RoomName,
}

/// One publication as queued for a subscriber: the shared encoded frame, and its offset so a
/// resuming subscriber can skip what its replay already covered.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub offset: Option<u64>,
    pub frame: Bytes,
    /// When the frame reached the hub: the writer measures delivery latency from it. One
    /// `Instant` per publication, copied to each subscriber.
    pub entered: Instant,
}

impl Delivery {
    pub fn new(offset: Option<u64>, frame: Bytes) -> Self {
        Self {
            offset,
            frame,
            entered: Instant::now(),
        }
    }
}

/// The hub's handle on one subscriber.
pub struct Subscriber {
    pub id: u64,
    pub queue: crate::delivery_queue::Sender,
    /// Cancelled when the queue overflows; the subscription's writer then ends the stream.
    pub overflow: CancellationToken,
    /// Why the hub cancelled `overflow`, when not for an overflow (shared with the writer).
    pub hub_end: Arc<crate::subscription::HubEnd>,
    /// The subscriber's tenant's deliveries counter (resolved at subscribe: no lookup here).
    /// Every subscriber of a room has the room's tenant, so the fan-out adds a room's count to
    /// its first subscriber's counter, once per publication.
    pub deliveries: metrics::Counter,
    /// In `latest` rooms: the newest publication waiting for the writer (`crate::latest`).
    /// Publications go there instead of the queue, which then carries only room events.
    pub latest: Option<Arc<Slot>>,
    /// The subscription's own stream when its writer is idle: the fan-out writes into it
    /// directly instead of queueing (`crate::subscription::Direct`).
    pub direct: Option<Arc<Direct>>,
}

/// A room's local subscribers, and the lock that makes its fan-outs take turns. Changes to
/// `subs` happen under the map's write lock, which no fan-out holds.
struct Room {
    subs: Vec<Subscriber>,
    order: std::sync::Mutex<()>,
    /// The epoch of the room's positions as its subscribers here know them (0 until known):
    /// from a subscription's `Subscribed` position, or the first positioned delivery.
    epoch: AtomicU64,
    /// Its namespace's fan-out counters, found once when the room got its first subscriber
    /// rather than by splitting and hashing the room's name on every publication.
    counters: m::FanOut,
}

/// What one pass over a room's subscribers left to do once the map's lock is released.
#[derive(Default)]
struct Pass {
    delivered: usize,
    /// Written whole straight to their streams in this pass: metrics recorded once, after
    /// it. Frames held for a run are not among them: their bytes are counted as their write
    /// takes them, their latency when the run is flushed (outside audit 120, F3).
    written_now: u64,
    overflowed: Vec<u64>,
    reset: Vec<u64>,
}

impl Room {
    fn new(counters: m::FanOut) -> Self {
        Self {
            subs: Vec::new(),
            order: std::sync::Mutex::default(),
            epoch: AtomicU64::new(0),
            counters,
        }
    }

    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `epoch` as the room's; whether its subscribers knew another one.
    fn epoch_changed(&self, epoch: u64) -> bool {
        let before = self.epoch.swap(epoch, Ordering::Relaxed);
        before != 0 && before != epoch
    }
}

#[derive(Default)]
pub struct Hub {
    rooms: RwLock<HashMap<RoomKey, Room>>,
    /// Fan-out counters by namespace label.
    namespaces: m::Namespaces,
}

impl Hub {
    /// A hub counting fan-out under the configured namespaces' names (the rest as `other`).
    pub fn with_namespaces<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            rooms: RwLock::default(),
            namespaces: m::Namespaces::new(names),
        }
    }

    /// Adds a subscriber; true if it is the first local one of the room (the broker should
    /// start listening for it).
    pub fn subscribe(&self, key: RoomKey, sub: Subscriber) -> bool {
        let counters = self.namespaces.get(&key.room).clone();
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let subs = &mut rooms.entry(key).or_insert_with(|| Room::new(counters)).subs;
        subs.push(sub);
        subs.len() == 1
    }

    /// Removes a subscriber; true if the room has no local subscribers left, so the caller
    /// drops the broker's interest in it. That includes an id gone already: a subscriber dropped
    /// as slow may have been the room's last, and the fan-out that dropped it cannot talk to the
    /// broker (dropping interest twice is harmless; keeping it would leak the listener).
    pub fn unsubscribe(&self, key: &RoomKey, id: u64) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.get_mut(key) else {
            return true;
        };
        room.subs.retain(|s| s.id != id);
        if room.subs.is_empty() {
            rooms.remove(key);
            return true;
        }
        false
    }

    /// Delivers one publication to every local subscriber of the room. Returns how many queues
    /// took it. The room is looked up once, under one read lock, for its mode and its pass.
    pub fn deliver(&self, key: &RoomKey, position: Option<Position>, payload: Bytes) -> usize {
        let entered = Instant::now();
        let (pass, delivery) = {
            let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
            let Some(room) = rooms.get(key) else {
                self.namespaces.get(&key.room).publications.increment(1);
                return 0;
            };
            room.counters.publications.increment(1);
            if let Some(delivered) = Self::deliver_latest(room, &payload) {
                return delivered;
            }
            let delivery = Delivery {
                offset: position.map(|p| p.offset),
                frame: publication_frame(key, position, payload),
                entered,
            };
            (
                Self::pass(room, &delivery, position.map(|p| p.epoch)),
                delivery,
            )
        };
        self.after_pass(key, pass, &delivery)
    }

    /// Records the epoch a new subscription of the room was told (its `Subscribed` position),
    /// unless a delivery told the room's subscribers here one already.
    pub fn know_epoch(&self, key: &RoomKey, epoch: u64) {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = rooms.get(key) {
            let _ = room
                .epoch
                .compare_exchange(0, epoch, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Ends every local subscription of the room with `cause` (as an epoch change does in
    /// [`Self::pass`]) and takes them out of it; how many. Under the map's write lock, so no
    /// fan-out of the room is under way and none reaches them after this. Each session then
    /// tells its client, and unsubscribing finds the room empty, so the broker's interest is
    /// dropped unless someone subscribed again meanwhile.
    pub fn end_room(&self, key: &RoomKey, cause: (quiver_proto::ErrorCode, &'static str)) -> usize {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.remove(key) else {
            return 0;
        };
        for sub in &room.subs {
            sub.hub_end.set(cause);
            sub.overflow.cancel();
        }
        room.subs.len()
    }

    /// In a `latest` room (its subscribers have slots: a namespace has one mode), puts the
    /// payload in every subscriber's slot, replacing what waits there. `None` in other rooms.
    fn deliver_latest(room: &Room, payload: &Bytes) -> Option<usize> {
        let _turn = room.turn();
        let subs = &room.subs;
        let first = subs.first()?;
        first.latest.as_ref()?;
        for sub in subs {
            if let Some(slot) = &sub.latest {
                slot.put(payload.clone());
            }
        }
        first.deliveries.increment(subs.len() as u64);
        room.counters.deliveries.increment(subs.len() as u64);
        Some(subs.len())
    }

    /// Delivers an encoded frame (a publication, or a server event such as `Joined`).
    pub fn deliver_frame(&self, key: &RoomKey, delivery: Delivery) -> usize {
        let pass = {
            let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
            let Some(room) = rooms.get(key) else {
                return 0;
            };
            Self::pass(room, &delivery, None)
        };
        self.after_pass(key, pass, &delivery)
    }

    /// Offers `delivery`, a publication of `epoch` when it has a position, to every subscriber
    /// of `room` (under the map's read lock and the room's turn).
    ///
    /// A room's positions belong to one epoch. A publication of another one means the room's
    /// history was lost and started again (NATS restarted on memory storage and its stream was
    /// created anew, PROTOCOL.md §5): its position does not follow the subscribers' last, and
    /// clients rightly drop such a publication, every later one too, with no recovery report.
    /// So the room's subscribers here are ended instead, with `unrecoverable_position`: they
    /// subscribe again resuming from their last position, are told recovery failed, and re-sync.
    fn pass(room: &Room, delivery: &Delivery, epoch: Option<u64>) -> Pass {
        let mut pass = Pass::default();
        let _turn = room.turn();
        let ended = epoch.is_some_and(|e| room.epoch_changed(e));
        if ended {
            for sub in &room.subs {
                sub.hub_end.set(EPOCH_CHANGED);
                sub.overflow.cancel();
                pass.reset.push(sub.id);
            }
        }
        // Ended subscribers get nothing of the new epoch.
        let subs: &[Subscriber] = if ended { &[] } else { &room.subs };
        for sub in subs {
            let offered = match &sub.direct {
                Some(direct) => direct.offer(&sub.queue, delivery),
                None => sub
                    .queue
                    .try_send(delivery.clone())
                    .map(|()| Offered::Queued),
            };
            match offered {
                Ok(offered) => {
                    pass.delivered += 1;
                    pass.written_now += u64::from(offered == Offered::Written);
                }
                // `latest` subscribers are never slow consumers: a room event that finds
                // no room is dropped for them alone.
                Err(mpsc::error::TrySendError::Full(_)) if sub.latest.is_some() => {
                    metrics::counter!(m::DELIVERIES_DROPPED, "reason" => "latest_event")
                        .increment(1);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.overflow.cancel();
                    pass.overflowed.push(sub.id);
                }
                // The writer is gone; the session removes the entry as it cleans up.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if let Some(first) = subs.first() {
            first.deliveries.increment(pass.delivered as u64);
        }
        room.counters.deliveries.increment(pass.delivered as u64);
        pass
    }

    /// A pass's metrics and removals, with the map's read lock released.
    fn after_pass(&self, key: &RoomKey, mut pass: Pass, delivery: &Delivery) -> usize {
        if pass.written_now > 0 {
            // One sample per pass, taken after its last write: no delivery in it was later.
            hot::delivery_bytes().increment(pass.written_now * delivery.frame.len() as u64);
            hot::delivery_latency().record(delivery.entered.elapsed().as_secs_f64());
        }
        if !pass.reset.is_empty() {
            tracing::warn!(tenant = %key.tenant, room = %key.room, subscribers = pass.reset.len(),
                "the room's epoch changed (its history was lost): its subscriptions here end");
        }
        // `slow_consumer` ends are counted by the subscription's writer as it ends, once each
        // (outside audit 120, F2: counted here and by a run's flush too).
        pass.overflowed.append(&mut pass.reset);
        if !pass.overflowed.is_empty() {
            let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            if let Some(room) = rooms.get_mut(key) {
                room.subs.retain(|s| !pass.overflowed.contains(&s.id));
                if room.subs.is_empty() {
                    rooms.remove(key);
                }
            }
        }
        pass.delivered
    }

    pub fn has_subscribers(&self, key: &RoomKey) -> bool {
        self.rooms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Rooms with local subscribers, of one tenant (every tenant: `None`): the first `max` of
    /// them (sorted by tenant and name, so a cut is stable) with how many each has, and the
    /// count of all of them and of their subscriptions, cut or not.
    ///
    /// The first `max` are kept in a heap as the map is read: a room is copied only while it is
    /// among the first so far, and nothing past `max` is sorted. Every room was copied and
    /// sorted per request, under the lock each `Subscribe` waits for, an `info` (which lists
    /// none) included (outside audit 116, F9).
    pub fn rooms(&self, tenant: Option<&TenantId>, max: usize) -> RoomsHere {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let mut here = RoomsHere::default();
        // Keys are unique, so the count never decides the order.
        let mut first: std::collections::BinaryHeap<(RoomKey, usize)> = Default::default();
        for (key, room) in rooms.iter() {
            if tenant.is_some_and(|t| *t != key.tenant) {
                continue;
            }
            here.count += 1;
            here.subscriptions += room.subs.len();
            if first.len() < max {
                first.push((key.clone(), room.subs.len()));
            } else if first.peek().is_some_and(|(last, _)| key < last) {
                first.pop();
                first.push((key.clone(), room.subs.len()));
            }
        }
        drop(rooms);
        here.listed = first.into_sorted_vec();
        here
    }

    /// Number of rooms with local subscribers.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The encoded `Publication` frame, as subscribers receive it (live or replayed).
pub fn publication_frame(key: &RoomKey, position: Option<Position>, payload: Bytes) -> Bytes {
    quiver_proto::encode_publication(key.room.as_str(), position, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, r: &str) -> RoomKey {
        RoomKey {
            tenant: TenantId::parse(t).unwrap(),
            room: RoomName::parse(r).unwrap(),
        }
    }

    fn sub(id: u64, cap: usize) -> (Subscriber, crate::delivery_queue::Receiver) {
        let (tx, rx) =
            crate::delivery_queue::channel(cap, crate::delivery_queue::Budget::new(usize::MAX));
        (
            Subscriber {
                id,
                queue: tx,
                overflow: CancellationToken::new(),
                hub_end: Arc::default(),
                deliveries: metrics::Counter::noop(),
                latest: None,
                direct: None,
            },
            rx,
        )
    }

    #[test]
    fn tenants_do_not_share_rooms() {
        let hub = Hub::default();
        let (a, mut rx_a) = sub(1, 4);
        let (b, mut rx_b) = sub(2, 4);
        assert!(hub.subscribe(key("a", "chat"), a));
        assert!(hub.subscribe(key("b", "chat"), b));
        assert_eq!(
            hub.deliver(&key("a", "chat"), None, Bytes::from_static(b"x")),
            1
        );
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_b.try_recv().is_err());
    }

    /// On a shared connection an idle writer lends its place in the session's outgoing queue:
    /// the hub queues there itself while the rooms' lane has room, then queues for the writer,
    /// and everything after goes behind that one (the writer takes its place back), so the
    /// room's order holds.
    #[test]
    fn an_idle_shared_writer_lends_the_hub_its_place_in_the_connections_queue() {
        let hub = Hub::default();
        let (mut s, mut rx) = sub(1, 8);
        let direct = Direct::new(Arc::default(), &s.queue, s.overflow.clone());
        s.direct = Some(direct.clone());
        hub.subscribe(key("t", "r"), s);
        // Four places, three of them the rooms' lane.
        let (out, mut conn) = crate::transport::queue::bounded_bytes(4, 1 << 20);
        assert!(direct.lend_out(out.rooms(), &rx, None).is_none());
        let payloads: Vec<Bytes> = (1..=5u8).map(|n| Bytes::from(vec![n])).collect();
        let frames: Vec<Bytes> = payloads
            .iter()
            .map(|p| publication_frame(&key("t", "r"), None, p.clone()))
            .collect();
        for payload in &payloads[..4] {
            assert_eq!(hub.deliver(&key("t", "r"), None, payload.clone()), 1);
        }
        for frame in &frames[..3] {
            assert_eq!(conn.try_recv().ok().as_ref(), Some(frame));
        }
        assert!(conn.try_recv().is_err(), "the lane was full for the fourth");
        assert_eq!(
            rx.try_recv().map(|d| d.frame).ok().as_ref(),
            Some(&frames[3])
        );
        // The connection has room again, but the fifth must not pass the fourth.
        hub.deliver(&key("t", "r"), None, payloads[4].clone());
        assert!(conn.try_recv().is_err());
        assert_eq!(
            rx.try_recv().map(|d| d.frame).ok().as_ref(),
            Some(&frames[4])
        );
        // Its place is still lent, for the writer to take back when it writes these two.
        assert!(matches!(
            direct.reclaim(),
            Some(crate::subscription::Target::Shared(_))
        ));
    }

    #[test]
    fn one_encoding_shared_and_overflow_drops_only_the_slow() {
        let hub = Hub::default();
        let (fast, mut rx_fast) = sub(1, 8);
        let (slow, _rx_slow) = sub(2, 1);
        let slow_cancel = slow.overflow.clone();
        hub.subscribe(key("t", "r"), fast);
        assert!(!hub.subscribe(key("t", "r"), slow));
        hub.deliver(&key("t", "r"), None, Bytes::from_static(b"1"));
        hub.deliver(&key("t", "r"), None, Bytes::from_static(b"2"));
        assert!(slow_cancel.is_cancelled());
        let f1 = rx_fast.try_recv().unwrap().frame;
        let f2 = rx_fast.try_recv().unwrap().frame;
        assert_ne!(f1, f2);
        // The slow one is out of the room; the fast one still gets everything.
        assert_eq!(
            hub.deliver(&key("t", "r"), None, Bytes::from_static(b"3")),
            1
        );
        assert!(hub.unsubscribe(&key("t", "r"), 1));
        assert_eq!(hub.room_count(), 0);
    }

    /// A publication of another epoch than the one the room's subscribers know (history lost
    /// and started again) is delivered to none of them: they are ended with
    /// `unrecoverable_position`, so their clients resume, hear recovery failed, and re-sync.
    #[test]
    fn a_new_epoch_ends_the_rooms_subscribers_instead_of_reaching_them() {
        let at = |epoch, offset| Some(Position { epoch, offset });
        let hub = Hub::default();
        let (a, mut rx_a) = sub(1, 8);
        let (b, mut rx_b) = sub(2, 8);
        let (a_end, b_end) = (a.overflow.clone(), b.overflow.clone());
        let (a_cause, b_cause) = (a.hub_end.clone(), b.hub_end.clone());
        hub.subscribe(key("t", "r"), a);
        hub.subscribe(key("t", "r"), b);
        assert_eq!(
            hub.deliver(&key("t", "r"), at(7, 1), Bytes::from_static(b"1")),
            2
        );
        assert_eq!(
            hub.deliver(&key("t", "r"), at(7, 2), Bytes::from_static(b"2")),
            2
        );
        // Positionless events (presence) say nothing about the epoch.
        assert_eq!(
            hub.deliver_frame(
                &key("t", "r"),
                Delivery::new(None, Bytes::from_static(b"j"))
            ),
            2
        );
        assert!(!a_end.is_cancelled());
        assert_eq!(
            hub.deliver(&key("t", "r"), at(9, 3), Bytes::from_static(b"3")),
            0
        );
        assert!(a_end.is_cancelled() && b_end.is_cancelled());
        assert_eq!(a_cause.cause(), EPOCH_CHANGED);
        assert_eq!(b_cause.cause(), EPOCH_CHANGED);
        for rx in [&mut rx_a, &mut rx_b] {
            for _ in 0..3 {
                assert!(rx.try_recv().is_ok());
            }
            assert!(
                rx.try_recv().is_err(),
                "the new epoch's publication was queued"
            );
        }
        assert!(!hub.has_subscribers(&key("t", "r")));

        // A subscriber that starts in the new epoch gets it.
        let (c, mut rx_c) = sub(3, 8);
        let c_end = c.overflow.clone();
        hub.subscribe(key("t", "r"), c);
        assert_eq!(
            hub.deliver(&key("t", "r"), at(9, 4), Bytes::from_static(b"4")),
            1
        );
        assert!(rx_c.try_recv().is_ok() && !c_end.is_cancelled());
    }

    /// The epoch a subscription was told at `Subscribed` counts before any delivery: the first
    /// publication after it, of another epoch, already ends it.
    #[test]
    fn the_epoch_told_at_subscribe_counts_before_the_first_delivery() {
        let hub = Hub::default();
        let (a, mut rx_a) = sub(1, 8);
        let end = a.overflow.clone();
        hub.subscribe(key("t", "r"), a);
        hub.know_epoch(&key("t", "r"), 7);
        let next = Some(Position {
            epoch: 9,
            offset: 8,
        });
        assert_eq!(
            hub.deliver(&key("t", "r"), next, Bytes::from_static(b"x")),
            0
        );
        assert!(end.is_cancelled());
        assert!(rx_a.try_recv().is_err());
    }

    /// A room ended from outside (its broker listener missed publications) keeps none of its
    /// subscribers: each is told why, gets nothing after, and unsubscribing it reports the
    /// room empty. Other rooms are untouched, and a later subscriber is served.
    #[test]
    fn ending_a_room_ends_each_of_its_subscribers_with_the_cause() {
        let hub = Hub::default();
        let (a, mut rx_a) = sub(1, 8);
        let (b, _rx_b) = sub(2, 8);
        let (other, mut rx_other) = sub(3, 8);
        let (a_end, a_cause) = (a.overflow.clone(), a.hub_end.clone());
        let other_end = other.overflow.clone();
        hub.subscribe(key("t", "r"), a);
        hub.subscribe(key("t", "r"), b);
        hub.subscribe(key("t", "o"), other);
        assert_eq!(hub.end_room(&key("t", "r"), BROKER_GAP), 2);
        assert!(a_end.is_cancelled() && !other_end.is_cancelled());
        assert_eq!(a_cause.cause(), BROKER_GAP);
        assert_eq!(
            hub.deliver(&key("t", "r"), None, Bytes::from_static(b"x")),
            0
        );
        assert!(rx_a.try_recv().is_err());
        assert!(hub.unsubscribe(&key("t", "r"), 1));
        assert_eq!(hub.end_room(&key("t", "r"), BROKER_GAP), 0);
        assert_eq!(
            hub.deliver(&key("t", "o"), None, Bytes::from_static(b"y")),
            1
        );
        assert!(rx_other.try_recv().is_ok());
        let (c, mut rx_c) = sub(4, 8);
        hub.subscribe(key("t", "r"), c);
        assert_eq!(
            hub.deliver(&key("t", "r"), None, Bytes::from_static(b"z")),
            1
        );
        assert!(rx_c.try_recv().is_ok());
    }

    /// A room whose only subscriber was dropped as slow is empty: unsubscribing that subscriber
    /// afterwards says so, so the session drops the broker's interest (else the listener leaks).
    #[test]
    fn unsubscribing_after_an_overflow_reports_the_room_empty() {
        let hub = Hub::default();
        let (slow, _rx) = sub(1, 1);
        let (other, _rx_other) = sub(2, 8);
        hub.subscribe(key("t", "r"), slow);
        hub.subscribe(key("t", "other"), other);
        hub.deliver(&key("t", "r"), None, Bytes::from_static(b"1"));
        hub.deliver(&key("t", "r"), None, Bytes::from_static(b"2"));
        assert!(!hub.has_subscribers(&key("t", "r")));
        assert!(hub.unsubscribe(&key("t", "r"), 1));
        // A room with others left is not empty, whoever leaves.
        assert!(!hub.unsubscribe(&key("t", "other"), 9));
        assert!(hub.has_subscribers(&key("t", "other")));
    }

    #[test]
    fn latest_subscribers_get_the_newest_value_and_never_overflow() {
        let hub = Hub::default();
        let (mut s, mut rx) = sub(1, 1);
        let slot = Arc::new(Slot::default());
        s.latest = Some(slot.clone());
        let overflow = s.overflow.clone();
        hub.subscribe(key("t", "g"), s);
        for n in 0..100u8 {
            assert_eq!(hub.deliver(&key("t", "g"), None, Bytes::from(vec![n])), 1);
        }
        // Room events beyond the queue are dropped for it, not a reason to end it.
        for _ in 0..3 {
            hub.deliver_frame(
                &key("t", "g"),
                Delivery::new(None, Bytes::from_static(b"event")),
            );
        }
        assert!(!overflow.is_cancelled());
        assert!(hub.has_subscribers(&key("t", "g")));
        assert_eq!(slot.take(), Some((100, Bytes::from(vec![99u8]))));
        assert_eq!(rx.try_recv().unwrap().frame, Bytes::from_static(b"event"));
        assert!(rx.try_recv().is_err());
    }
}
