//! The embedded broker's own tests: positions and replay, history within its tenants' shares and
//! its bounds.

use super::*;
use crate::broker::ReplayError;
use crate::config::NamespaceConfig;
use crate::hub::Subscriber;
use quiver_proto::RoomName;

fn broker_with(size: usize, tweak: impl FnOnce(&mut Config)) -> MemoryBroker {
    let mut config = Config::default();
    config.namespaces.push(NamespaceConfig {
        name: "h".into(),
        history_size: size,
        history_ttl: std::time::Duration::from_secs(60),
        presence: false,
        ..Default::default()
    });
    tweak(&mut config);
    MemoryBroker::new(Arc::new(Hub::default()), Arc::new(config))
}

fn broker(size: usize) -> MemoryBroker {
    broker_with(size, |_| {})
}

fn key(room: &str) -> RoomKey {
    tenant_key("t", room)
}

fn tenant_key(tenant: &str, room: &str) -> RoomKey {
    RoomKey {
        tenant: TenantId::parse(tenant).unwrap(),
        room: RoomName::parse(room).unwrap(),
    }
}

/// What the broker answers a `Subscribe` or `History` (the tests' rooms always find a place).
fn recover(b: &MemoryBroker, key: &RoomKey, since: Option<Position>) -> Recovered {
    b.recover_now(key, since).expect("a place in history")
}

/// How many publications a resume replays (`replayed`): those in hand and those still in the
/// broker.
fn replayed(b: &MemoryBroker, key: &RoomKey, since: Position) -> Option<usize> {
    let recovered = recover(b, key, Some(since));
    let rest = recovered.rest.as_ref().map_or(0, |r| r.remaining());
    recovered.replay.map(|r| r.len() + rest)
}

#[test]
fn positions_replay_and_trimming() {
    let b = broker(3);
    assert_eq!(b.publish_now(key("live"), Bytes::new()), None);
    let p: Vec<Position> = (0..5)
        .map(|i| b.publish_now(key("h.a"), Bytes::from(vec![i])).unwrap())
        .collect();
    assert_eq!(
        p.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    // Kept: 3, 4, 5. From 2 everything after is there; from 1, offset 2 is gone.
    let r = recover(&b, &key("h.a"), Some(p[1]));
    assert_eq!(r.current, Some(p[4]));
    let replay = read_all(r).unwrap();
    assert_eq!(
        replay.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(recover(&b, &key("h.a"), Some(p[0])).replay.is_none());
    // Up to date: nothing to replay, but recovered.
    let up_to_date = recover(&b, &key("h.a"), Some(p[4]));
    assert_eq!(up_to_date.replay.unwrap().len(), 0);
    assert!(up_to_date.rest.is_none());
    // Another epoch, or a position from the future: not recoverable.
    let other = Position {
        epoch: p[0].epoch ^ 2,
        offset: 4,
    };
    assert!(recover(&b, &key("h.a"), Some(other)).replay.is_none());
    let future = Position {
        epoch: p[0].epoch,
        offset: 99,
    };
    assert!(recover(&b, &key("h.a"), Some(future)).replay.is_none());
    // Live rooms have no position.
    let live = recover(&b, &key("live"), Some(p[0]));
    assert!(live.current.is_none() && live.replay.is_none());
    // Rooms are per tenant, and so are their offsets and epochs.
    let other_tenant = tenant_key("u", "h.a");
    let theirs = recover(&b, &other_tenant, None).current.unwrap();
    assert_eq!(theirs.offset, 0);
    assert_ne!(theirs.epoch, p[0].epoch);
}

#[test]
fn a_tenant_over_its_share_loses_only_its_own_oldest() {
    // A 1 KiB payload in a room of its own costs 1024 + ENTRY_OVERHEAD + the room's
    // ROOM_OVERHEAD and names, about 1.5 KiB: a tenant keeps 3 of them in 5 KiB.
    let b = broker_with(1000, |c| {
        c.limits.history_tenant_max_bytes = 5 * 1024;
        c.limits.history_max_bytes = 100 * 1024;
    });
    let kb = Bytes::from(vec![0u8; 1024]);
    let quiet = b
        .publish_now(tenant_key("quiet", "h.q"), kb.clone())
        .unwrap();
    // A bounded flood over many rooms.
    let mut first = Vec::new();
    for i in 0..200 {
        first.push(b.publish_now(tenant_key("loud", &format!("h.r{i}")), kb.clone()));
    }
    let history = b.lock();
    let loud = history.tenants[&TenantId::parse("loud").unwrap()].bytes;
    assert!(loud <= 5 * 1024, "{loud}");
    // The rooms it lost its history in are forgotten (nobody subscribed), not counted.
    let expected: u64 = (197..200)
        .map(|i| 1024 + ENTRY_OVERHEAD + room_cost(&tenant_key("loud", &format!("h.r{i}"))))
        .sum();
    assert_eq!(loud, expected);
    assert_eq!(
        history.rooms.len(),
        4,
        "the quiet room and the loud's last 3"
    );
    drop(history);
    // The flood's first rooms lost their history; its last ones and the quiet tenant's kept it.
    assert_eq!(
        replayed(
            &b,
            &tenant_key("loud", "h.r0"),
            Position {
                offset: 0,
                ..first[0].unwrap()
            }
        ),
        None
    );
    assert_eq!(
        replayed(
            &b,
            &tenant_key("loud", "h.r199"),
            Position {
                offset: 0,
                ..first[199].unwrap()
            }
        ),
        Some(1)
    );
    assert_eq!(
        replayed(
            &b,
            &tenant_key("quiet", "h.q"),
            Position { offset: 0, ..quiet }
        ),
        Some(1)
    );
}

#[test]
fn over_the_total_the_heaviest_tenant_gives_way_first() {
    let b = broker_with(1000, |c| {
        c.limits.history_tenant_max_bytes = 8 * 1024;
        c.limits.history_max_bytes = 12 * 1024;
    });
    let kb = Bytes::from(vec![0u8; 1024]);
    let small: Vec<Position> = (0..3)
        .map(|_| {
            b.publish_now(tenant_key("small", "h.s"), kb.clone())
                .unwrap()
        })
        .collect();
    for round in 0..100 {
        for tenant in ["big1", "big2"] {
            b.publish_now(tenant_key(tenant, &format!("h.{round}")), kb.clone());
        }
    }
    let history = b.lock();
    assert!(history.bytes <= 12 * 1024, "{}", history.bytes);
    let tenant_bytes: u64 = history.tenants.values().map(|t| t.bytes).sum();
    assert_eq!(tenant_bytes, history.bytes);
    drop(history);
    // The small tenant (3 publications, below everyone's share) kept all of its history.
    let since = Position {
        offset: 0,
        ..small[0]
    };
    assert_eq!(replayed(&b, &tenant_key("small", "h.s"), since), Some(3));
}

#[test]
fn the_sweep_forgets_unused_rooms_and_keeps_subscribed_ones() {
    let b = broker_with(1000, |c| {
        c.namespaces[0].history_ttl = Duration::from_millis(50)
    });
    for i in 0..100 {
        b.publish_now(key(&format!("h.r{i}")), Bytes::from_static(b"x"));
    }
    // A subscriber keeps its room known (its position must stay meaningful).
    let (sub, _rx) = subscriber(1);
    b.hub.subscribe(key("h.r7"), sub);
    let before = recover(&b, &key("h.r7"), None).current.unwrap();
    assert_eq!(b.lock().rooms.len(), 100);
    std::thread::sleep(Duration::from_millis(80));
    b.sweep();
    let history = b.lock();
    assert_eq!(history.rooms.len(), 1, "only the subscribed room stays");
    // It keeps nothing, and is counted as a room still.
    assert_eq!(history.bytes, room_cost(&key("h.r7")));
    assert_eq!(history.tenants.len(), 1);
    drop(history);
    assert_eq!(recover(&b, &key("h.r7"), None).current, Some(before));
}

fn subscriber(id: u64) -> (Subscriber, crate::delivery_queue::Receiver) {
    let (queue, rx) =
        crate::delivery_queue::channel(1, crate::delivery_queue::Budget::new(usize::MAX));
    let sub = Subscriber {
        id,
        queue,
        overflow: Default::default(),
        hub_end: Default::default(),
        deliveries: metrics::Counter::noop(),
        latest: None,
        direct: None,
    };
    (sub, rx)
}

/// What history holds, estimated from its structures: ring slots by capacity, an order
/// entry (B-tree nodes of 192 bytes holding 5 to 11) per publication, each payload's
/// allocation (size class, 8 at least) and shared header, and per room its map slot and
/// key. `tests/tests/history_memory.rs` measures the same with a counting allocator.
fn estimate(history: &History) -> u64 {
    // Size classes up to 128 bytes: 8, then multiples of 16.
    let class = |n: usize| {
        if n <= 8 {
            8
        } else {
            n.next_multiple_of(16) as u64
        }
    };
    let entry = |k: &Kept| 192 / 5 + class(k.payload.len()) + 32;
    history
        .rooms
        .values()
        .map(|r| {
            r.kept.capacity() as u64 * KEPT_SLOT
                + r.kept.iter().map(entry).sum::<u64>()
                // The map slot, 7/32 full at worst, the key, its names.
                + 64 * 32 / 7
                + 64
                + class(r.key.tenant.as_str().len())
                + class(r.key.room.as_str().len())
        })
        .sum()
}

#[test]
fn tiny_payloads_count_their_overhead_and_cannot_fill_memory_past_the_budget() {
    let n = 20_000u64;
    let unbounded = |c: &mut Config| {
        c.limits.history_tenant_max_bytes = u64::MAX / 2;
        c.limits.history_max_bytes = u64::MAX / 2;
    };
    // Every 1-byte publication counts its overhead, not its byte: at least ENTRY_OVERHEAD,
    // and the rooms theirs. That covers what they hold, with the rings at their emptiest
    // (just grown: 100 rooms of 129 = 2 slots per entry) ...
    let b = broker_with(1_000_000, unbounded);
    for i in 0..100 * 129 {
        b.publish_now(key(&format!("h.r{}", i % 100)), Bytes::from_static(b"x"));
    }
    let history = b.lock();
    assert!(history.bytes >= 100 * 129 * (1 + ENTRY_OVERHEAD) + 100 * ROOM_OVERHEAD);
    let slots: u64 = history
        .rooms
        .values()
        .map(|r| r.kept.capacity() as u64)
        .sum();
    assert_eq!(slots, 100 * 256);
    let held = estimate(&history);
    assert!(held <= history.bytes, "{held} > {}", history.bytes);
    drop(history);
    // ... and in rooms of one publication each.
    let b = broker_with(1_000_000, unbounded);
    for i in 0..n {
        b.publish_now(key(&format!("h.n{i}")), Bytes::from_static(b"x"));
    }
    let history = b.lock();
    assert!(history.bytes >= n * (1 + ENTRY_OVERHEAD + ROOM_OVERHEAD));
    assert!(estimate(&history) <= history.bytes);
    drop(history);

    // Over a small budget: a flood over 100 rooms, then over ever new ones, keeps the
    // count within it, each kept publication still counted whole.
    let budget = 256 * 1024;
    let b = broker_with(1_000_000, |c| {
        c.limits.history_tenant_max_bytes = budget;
        c.limits.history_max_bytes = 4 * budget;
    });
    let (sub, _rx) = subscriber(1);
    b.hub.subscribe(key("h.n0"), sub);
    let subscribed = b
        .publish_now(key("h.n0"), Bytes::from_static(b"x"))
        .unwrap();
    for i in 0..n {
        b.publish_now(key(&format!("h.r{}", i % 100)), Bytes::from_static(b"x"));
        let history = b.lock();
        assert!(history.bytes <= budget, "{} after {i}", history.bytes);
    }
    let history = b.lock();
    let kept: u64 = history.rooms.values().map(|r| r.kept.len() as u64).sum();
    assert!(kept * (1 + ENTRY_OVERHEAD) <= budget);
    assert!(kept * (1 + ENTRY_OVERHEAD) >= budget - 101 * (1 + ENTRY_OVERHEAD + ROOM_OVERHEAD));
    assert!(estimate(&history) <= history.bytes);
    drop(history);
    for i in 1..n {
        b.publish_now(key(&format!("h.n{i}")), Bytes::from_static(b"x"));
    }
    let history = b.lock();
    assert!(history.bytes <= budget);
    // Rooms emptied by the budget are forgotten at once, but for the subscribed one.
    let per_room = 1 + ENTRY_OVERHEAD + ROOM_OVERHEAD;
    assert!(history.rooms.len() as u64 <= budget / per_room + 1);
    assert_eq!(history.rooms[&key("h.n0")].epoch, subscribed.epoch);
    assert!(history.rooms[&key("h.n0")].kept.is_empty());
    // Evicted rings gave their slots back: none left with more than 4 per entry.
    for room in history.rooms.values() {
        assert!(
            room.kept.capacity() <= 4 * room.kept.len().max(1),
            "{}",
            room.key.room
        );
    }
    assert!(estimate(&history) <= history.bytes);
    let tenant_bytes: u64 = history.tenants.values().map(|t| t.bytes).sum();
    assert_eq!(tenant_bytes, history.bytes);
}

/// How many publications `tenant` keeps.
fn kept_of(b: &MemoryBroker, tenant: &str) -> usize {
    let history = b.lock();
    history
        .tenants
        .get(&TenantId::parse(tenant).unwrap())
        .map_or(0, |t| t.order.len())
}

fn bytes_of(b: &MemoryBroker, tenant: &str) -> u64 {
    let history = b.lock();
    history
        .tenants
        .get(&TenantId::parse(tenant).unwrap())
        .map_or(0, |t| t.bytes)
}

/// `tenant` publishes `each` 500-byte publications into each of `rooms` rooms.
fn fill(b: &MemoryBroker, tenant: &str, rooms: usize, each: usize) {
    for room in 0..rooms {
        for _ in 0..each {
            b.publish_now(tenant_key(tenant, &format!("h.r{room}")), five_hundred());
        }
    }
}

fn five_hundred() -> Bytes {
    Bytes::from(vec![7u8; 500])
}

/// A room name 120 bytes long, the `i`th.
fn long_room(i: usize) -> String {
    format!("h.{i:0>118}")
}

/// Strict isolation (the total = 2 tenants' shares): one tenant reading a thousand empty rooms
/// with long names (`History` pages: nothing subscribed, nothing published) stays within its
/// share, the total within its bound, and the other tenant, within its share, keeps every
/// publication through its next one. Rooms made known by reading had no bound: the reader held
/// 2.5 times its share and the publisher lost all 150 (outside audit 96, F1).
#[test]
fn rooms_made_known_by_reading_stay_within_their_share_and_take_nothing_from_another() {
    let b = broker_with(5, |c| {
        c.limits.history_tenant_max_bytes = 200_000;
        c.limits.history_max_bytes = 400_000;
    });
    fill(&b, "acme", 30, 5);
    let payload = five_hundred();
    assert_eq!(kept_of(&b, "acme"), 150);
    let mut epochs = Vec::new();
    for i in 0..1000 {
        let read = b.recover_now(&tenant_key("evil", &long_room(i)), None);
        assert!(read.is_ok(), "read {i} refused: {:?}", read.err());
        epochs.push(read.ok().and_then(|r| r.current).map(|p| p.epoch));
    }
    assert!(bytes_of(&b, "evil") <= 200_000, "{}", bytes_of(&b, "evil"));
    // The last rooms read are the ones still known (their epochs stand); the first ones gave
    // way (read again, a new epoch).
    let epoch = |i: usize| recover(&b, &tenant_key("evil", &long_room(i)), None).current;
    assert_eq!(epoch(999).map(|p| p.epoch), epochs[999]);
    assert_eq!(epoch(998).map(|p| p.epoch), epochs[998]);
    assert_ne!(epoch(0).map(|p| p.epoch), epochs[0]);
    b.publish_now(tenant_key("acme", "h.r0"), payload.clone());
    assert_eq!(kept_of(&b, "acme"), 150, "acme lost history to the reader");
    let history = b.lock();
    assert!(history.bytes <= 400_000, "{}", history.bytes);
    let tenant_bytes: u64 = history.tenants.values().map(|t| t.bytes).sum();
    assert_eq!(tenant_bytes, history.bytes);
    let idle: usize = history.tenants.values().map(|t| t.idle.len()).sum();
    let idle_rooms = history.rooms.values().filter(|r| r.idle.is_some()).count();
    assert_eq!(idle, idle_rooms, "idle lists and rooms disagree");
}

/// Rooms kept known by subscribers here cannot give way: once they fill the tenant's share,
/// a `Subscribe` of one more is refused (`unavailable`, with why), and no other tenant loses
/// anything to them.
#[test]
fn subscribed_rooms_past_the_share_are_refused_and_take_nothing_from_another() {
    let b = broker_with(5, |c| {
        c.limits.history_tenant_max_bytes = 100_000;
        c.limits.history_max_bytes = 200_000;
    });
    fill(&b, "acme", 20, 5);
    let payload = five_hundred();
    let mut queues = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let key = tenant_key("evil", &long_room(i));
        let (sub, rx) = subscriber(i as u64);
        b.hub.subscribe(key.clone(), sub);
        queues.push(rx);
        match b.recover_now(&key, None) {
            Ok(_) => {}
            Err(e) => {
                assert!(
                    e.to_string().contains("rooms subscribed on this instance"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 100, "only {refused} refused");
    assert!(bytes_of(&b, "evil") <= 100_000, "{}", bytes_of(&b, "evil"));
    b.publish_now(tenant_key("acme", "h.r0"), payload);
    assert_eq!(
        kept_of(&b, "acme"),
        100,
        "acme lost history to the subscriber"
    );
}

/// A reader of a tenant at its share (its publications fill it) makes rooms known at the cost
/// of its own older idle rooms, not of its tenant's publications: a thousand reads take one
/// publication's worth at most.
#[test]
fn reading_new_rooms_at_the_share_costs_its_tenants_history_one_room_at_most() {
    let b = broker_with(5, |c| {
        c.limits.history_tenant_max_bytes = 50_000;
        c.limits.history_max_bytes = 1_000_000;
    });
    let payload = Bytes::from(vec![7u8; 500]);
    for i in 0..200 {
        b.publish_now(
            tenant_key("acme", &format!("h.r{}", i % 40)),
            payload.clone(),
        );
    }
    let before = kept_of(&b, "acme");
    for i in 0..1000 {
        recover(&b, &tenant_key("acme", &long_room(i)), None);
    }
    assert!(
        before - kept_of(&b, "acme") <= 1,
        "{before} -> {}",
        kept_of(&b, "acme")
    );
    assert!(bytes_of(&b, "acme") <= 50_000);
}

/// Over the total, the tenants heavier than the one publishing give way, heaviest first, and
/// one holding only rooms subscribed here (nothing to give) is passed over for the next: the
/// publisher, lighter than both, keeps its history (review 99, F1: it lost its own when the
/// heaviest had nothing to give).
#[test]
fn over_the_total_a_heavier_tenant_with_something_to_give_gives_way() {
    let b = broker_with(1000, |c| {
        c.limits.history_tenant_max_bytes = 100_000;
        c.limits.history_max_bytes = 150_000;
    });
    let mut queues = Vec::new();
    // 140 subscribed rooms of about 508 bytes: about 71 KB, nothing to give back.
    for i in 0..140 {
        let key = tenant_key("subscriber", &long_room(i));
        let (sub, rx) = subscriber(i as u64);
        b.hub.subscribe(key.clone(), sub);
        queues.push(rx);
        recover(&b, &key, None);
    }
    let payload = Bytes::from(vec![7u8; 500]);
    // About 59 KB of publications, one room each.
    for i in 0..60 {
        b.publish_now(tenant_key("big", &format!("h.b{i}")), payload.clone());
    }
    let subscriber_bytes = bytes_of(&b, "subscriber");
    assert!(subscriber_bytes > bytes_of(&b, "big"));
    // The small tenant publishes past the total.
    for _ in 0..40 {
        b.publish_now(tenant_key("small", "h.s"), payload.clone());
    }
    assert_eq!(kept_of(&b, "small"), 40, "the lightest tenant lost history");
    assert!(
        kept_of(&b, "big") < 60,
        "the heavier publisher gave nothing"
    );
    assert_eq!(bytes_of(&b, "subscriber"), subscriber_bytes);
    assert!(b.lock().bytes <= 150_000, "{}", b.lock().bytes);
    drop(queues);
}

/// A subscribed room that keeps nothing is idle again once its last subscriber here leaves
/// (`remove_interest`): it gives way before a publication, not only at the next sweep.
#[test]
fn a_room_unsubscribed_here_gives_way_again() {
    let b = broker_with(5, |c| {
        c.limits.history_tenant_max_bytes = 20_000;
        c.limits.history_max_bytes = 1_000_000;
    });
    let payload = Bytes::from(vec![7u8; 500]);
    let (sub, _rx) = subscriber(1);
    let key = tenant_key("acme", &long_room(0));
    b.hub.subscribe(key.clone(), sub);
    recover(&b, &key, None);
    // Its turn comes while subscribed: it stays, and leaves the idle list.
    for i in 0..40 {
        b.publish_now(tenant_key("acme", &format!("h.r{i}")), payload.clone());
    }
    assert!(b.lock().rooms.contains_key(&key));
    b.hub.unsubscribe(&key, 1);
    futures::executor::block_on(b.remove_interest(key.clone())).unwrap();
    let kept = kept_of(&b, "acme");
    b.publish_now(tenant_key("acme", "h.new"), payload);
    assert!(
        !b.lock().rooms.contains_key(&key),
        "the unsubscribed room stayed"
    );
    assert_eq!(
        kept_of(&b, "acme"),
        kept,
        "a publication went before the idle room"
    );
}

thread_local! {
    /// Kept publications this test's thread copied out of history (a replay's or a page's).
    static COPIED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one publication copied out of history (called under the history lock).
pub(super) fn count_copied() {
    COPIED.with(|c| c.set(c.get() + 1));
}

/// Publications copied out of history by this thread since the last call.
fn copied() -> usize {
    COPIED.with(|c| c.replace(0))
}

/// `n` publications of `size` bytes each (the byte is its offset's), in `key`'s room.
fn publish_many(b: &MemoryBroker, key: &RoomKey, n: usize, size: usize) -> Vec<Position> {
    (1..=n)
        .map(|i| {
            let payload = Bytes::from(vec![i as u8; size]);
            b.publish_now(key.clone(), payload).unwrap()
        })
        .collect()
}

/// Publications a resume's page holds at most (`history::REPLAY_PAGE_MAX`; not named, so these
/// tests also build, and fail, against the broker as it was before audit 133).
const PAGE_MAX: usize = 1024;

/// A `History` page as the broker answers it: `max` publications after `since` at most.
fn page(b: &MemoryBroker, key: &RoomKey, since: Position, max: usize, bytes: usize) -> Recovered {
    use futures::FutureExt;
    b.recover_some(key.clone(), since, max, bytes, false)
        .now_or_never()
        .expect("answered at once")
        .expect("a place in history")
}

fn offsets(replay: &[(Position, Bytes)]) -> Vec<u64> {
    replay.iter().map(|(p, _)| p.offset).collect()
}

/// Outside audit 133, F1: a page, `limit: 0` (one publication asked for) included, copied
/// every kept publication after `since` under the lock every tenant's publications take.
#[test]
fn a_history_page_copies_only_its_page() {
    use futures::FutureExt;
    let b = broker(10_000);
    let room = key("h.big");
    let p = publish_many(&b, &room, 10_000, 1);
    copied();
    let from = |offset| Position { offset, ..p[0] };
    let first = page(&b, &room, from(0), 1, usize::MAX);
    assert_eq!(offsets(&first.replay.unwrap()), [1]);
    assert_eq!(copied(), 1, "a page of one copies one");
    let middle = page(&b, &room, from(5_000), 3, usize::MAX);
    assert_eq!(offsets(&middle.replay.unwrap()), [5_001, 5_002, 5_003]);
    assert_eq!(middle.current, Some(p[9_999]));
    assert_eq!(copied(), 3);
    // A resume copies nothing when it is answered; its pages as the stream takes them.
    let resume = recover(&b, &room, Some(from(0)));
    assert_eq!(resume.replay.as_ref().map(Vec::len), Some(0));
    assert_eq!(copied(), 0, "nothing read before the replay's turn");
    let mut rest = resume.rest.expect("the replay, in the broker");
    assert_eq!(rest.remaining(), 10_000);
    let first = rest.next_page().now_or_never().unwrap().unwrap();
    assert_eq!(first.len(), PAGE_MAX);
    assert_eq!(copied(), PAGE_MAX, "a page at a time");
}

/// The page is what it was when a page read everything and kept `max`, for every position:
/// the oldest's, before it (cut), the last, past it, another epoch's; and it stops once its
/// payloads are past `max_bytes`, the one that takes them past in (as NATS reads one).
#[test]
fn a_history_page_answers_as_reading_everything_did() {
    let b = broker(5);
    let room = key("h.a");
    let p = publish_many(&b, &room, 12, 10);
    // Kept: 8 to 12.
    let epoch = p[0].epoch;
    let at = |offset| Position { epoch, offset };
    let expected = |since: u64, max: usize| -> Option<Vec<u64>> {
        (since <= 12 && since + 1 >= 8).then(|| (since + 1..=12).take(max).collect())
    };
    for since in [0, 6, 7, 8, 10, 11, 12, 13, 99] {
        for max in [1, 2, 5, 1000] {
            let got = page(&b, &room, at(since), max, usize::MAX);
            assert_eq!(got.current, Some(p[11]));
            let got = got.replay.map(|r| offsets(&r));
            assert_eq!(got, expected(since, max), "since {since}, max {max}");
        }
    }
    let other = Position {
        epoch: epoch ^ 2,
        offset: 9,
    };
    assert!(page(&b, &room, other, 10, usize::MAX).replay.is_none());
    // 10-byte payloads: past 25 bytes after the third.
    let bounded = page(&b, &room, at(7), 10, 25).replay.unwrap();
    assert_eq!(offsets(&bounded), [8, 9, 10]);
    assert_eq!(
        offsets(&page(&b, &room, at(7), 10, 30).replay.unwrap()).len(),
        4
    );
    // A room that keeps nothing: its position, and an empty page from it.
    let empty = key("h.empty");
    let position = recover(&b, &empty, None).current.unwrap();
    assert_eq!(
        page(&b, &empty, position, 10, usize::MAX)
            .replay
            .unwrap()
            .len(),
        0
    );
    let live = page(&b, &key("live"), at(1), 10, usize::MAX);
    assert!(live.current.is_none() && live.replay.is_none());
}

/// Reads a resume's replay to its end, page by page: the sizes of its pages (what was in
/// hand first, then each read from the broker), and its publications.
type ReadPages = (Vec<usize>, Vec<(Position, Bytes)>);
fn read_pages(recovered: Recovered) -> Result<ReadPages, ReplayError> {
    use futures::FutureExt;
    let mut all = recovered.replay.expect("recovered");
    let mut sizes = vec![all.len()];
    if let Some(mut rest) = recovered.rest {
        while rest.remaining() > 0 {
            let page = rest.next_page().now_or_never().expect("at once")?;
            assert!(!page.is_empty());
            sizes.push(page.len());
            all.extend(page);
        }
    }
    Ok((sizes, all))
}

/// A resume's replay, read to its end.
fn read_all(recovered: Recovered) -> Result<Vec<(Position, Bytes)>, ReplayError> {
    read_pages(recovered).map(|(_, all)| all)
}

#[test]
fn a_resume_is_handed_over_a_page_at_a_time_up_to_the_position_it_answered() {
    let b = broker(4_000);
    let room = key("h.r");
    let p = publish_many(&b, &room, 3_000, 1);
    let from = Position { offset: 2, ..p[0] };
    let recovered = recover(&b, &room, Some(from));
    assert_eq!(recovered.current, Some(p[2_999]));
    // Nothing in hand: all of it in the broker, counted (`replayed`), as NATS answers.
    assert_eq!(recovered.replay.as_ref().map(Vec::len), Some(0));
    let rest = recovered.rest.as_ref().expect("the replay, in the broker");
    assert_eq!(rest.remaining(), 2_998, "`replayed` counts all of it");
    assert_eq!(rest.last(), p[2_999]);
    // Published after the answer: live, not replayed.
    publish_many(&b, &room, 5, 1);
    let (sizes, all) = read_pages(recovered).unwrap();
    assert_eq!(sizes, [0, PAGE_MAX, PAGE_MAX, 2_998 - 2 * PAGE_MAX]);
    assert_eq!(offsets(&all), (3..=3_000).collect::<Vec<_>>());
    // Large payloads: about REPLAY_PAGE bytes a page, the one past it in.
    let big = key("h.big");
    let p = publish_many(&b, &big, 10, 100 * 1024);
    let recovered = recover(&b, &big, Some(Position { offset: 0, ..p[0] }));
    let (sizes, all) = read_pages(recovered).unwrap();
    assert_eq!(sizes, [0, 3, 3, 3, 1]);
    assert_eq!(offsets(&all), (1..=10).collect::<Vec<_>>());
    assert!(all
        .iter()
        .all(|(p, b)| b.len() == 100 * 1024 && b[0] == p.offset as u8));
    // Within one page: one read.
    let recovered = recover(&b, &big, Some(Position { offset: 8, ..p[0] }));
    let (sizes, all) = read_pages(recovered).unwrap();
    assert_eq!((sizes, offsets(&all)), (vec![0, 2], vec![9, 10]));
    // Up to date: nothing to read.
    let recovered = recover(&b, &big, Some(p[9]));
    assert!(recovered.replay.unwrap().is_empty() && recovered.rest.is_none());
}

/// Outside audit 133, F2: a resume held every payload of its replay until the client read
/// it, also those history evicted meanwhile, where no budget counted them (and then, review
/// 135 R1, its first page while it waited for its turn). Now it holds none: its replay is read
/// as the stream takes it, and a publication evicted before then ends the replay as over NATS
/// (`ReplayError::Cut`: `Unsubscribed` 117), before its first publication if need be.
#[test]
fn a_pending_resume_holds_no_payload_history_evicted() {
    let b = broker(10);
    let room = key("h.r");
    let p = publish_many(&b, &room, 10, 100 * 1024);
    let kept: Vec<Bytes> = b.lock().rooms[&room]
        .kept
        .iter()
        .map(|k| k.payload.clone())
        .collect();
    let recovered = recover(&b, &room, Some(Position { offset: 0, ..p[0] }));
    // The client reads nothing while the room's limit evicts all ten.
    publish_many(&b, &room, 10, 1);
    let held = kept.iter().filter(|payload| !payload.is_unique()).count();
    assert_eq!(
        held, 0,
        "a resume not read holds no payload history evicted"
    );
    let in_hand = recovered.replay.as_ref().map_or(0, Vec::len);
    let remaining = recovered.rest.as_ref().map_or(0, |r| r.remaining());
    assert_eq!((in_hand, remaining), (0, 10), "`replayed` is all ten");
    let error = read_all(recovered).unwrap_err();
    assert!(matches!(error, ReplayError::Cut));
    assert_eq!(
        crate::replay::ended_by(&error).0,
        quiver_proto::ErrorCode::UnrecoverablePosition
    );
    // Cut between two pages: the first page read, then the end.
    let room = key("h.s");
    let p = publish_many(&b, &room, 10, 100 * 1024);
    let recovered = recover(&b, &room, Some(Position { offset: 0, ..p[0] }));
    let mut rest = recovered.rest.unwrap();
    use futures::FutureExt;
    let first = rest.next_page().now_or_never().unwrap().unwrap();
    assert_eq!(offsets(&first), [1, 2, 3]);
    let second = rest.next_page().now_or_never().unwrap().unwrap();
    assert_eq!(offsets(&second), [4, 5, 6]);
    publish_many(&b, &room, 7, 1);
    assert!(matches!(
        rest.next_page().now_or_never().unwrap(),
        Err(ReplayError::Cut)
    ));
    // A room forgotten (its epoch gone) ends it too.
    let room = key("h.t");
    let p = publish_many(&b, &room, 10, 100 * 1024);
    let recovered = recover(&b, &room, Some(Position { offset: 0, ..p[0] }));
    b.lock().forget(&room);
    assert!(matches!(read_all(recovered), Err(ReplayError::Cut)));
}
