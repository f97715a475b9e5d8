//! The embedded default: one process, so publishing is delivering. Rooms whose namespace keeps
//! history get per-room offsets (contiguous, from 1) and an in-memory ring of recent
//! publications.
//!
//! History memory is bounded three ways: per room (`history_size`, `history_ttl`), per tenant
//! (`limits.history_tenant_max_bytes`: past it the tenant's own oldest publications go) and in
//! total (`limits.history_max_bytes`: past it the oldest publications of the tenant holding the
//! most go, so a tenant within its fair share never loses history to a heavier one). The
//! budgets count what history holds, not only payloads: each kept publication its payload and
//! [`ENTRY_OVERHEAD`], each known room [`ROOM_OVERHEAD`] and its names. A sweep drops what has
//! aged out and forgets rooms with nothing kept and nobody subscribed here; a room the budgets
//! empty is forgotten at once.
//!
//! Each room entry draws its own epoch when it is created: a restart, or a room forgotten by
//! the sweep, makes old positions unrecoverable (`Failed`), as it should, and a room's offsets
//! say nothing about any other room or tenant.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{ready, BoxFuture};
use quiver_proto::{Member, Position, TenantId};

use super::{Broker, BrokerError, Recovered};
use crate::config::Config;
use crate::hub::{Delivery, Hub, RoomKey};
use crate::metrics as m;

/// What one kept publication costs beyond its payload's length, so that the byte budgets bound
/// the memory history really holds, not only its payloads (1-byte payloads would otherwise
/// hold several times the budget). The most one holds while its room grows:
/// - its slot in the room's ring, counted twice: a ring grows by doubling (a new room's
///   starts with one slot), and [`History::pop_oldest`] halves one left a quarter full, so
///   there are 1 to 2 slots per entry while rooms grow (and at steady state), at most 4 after
///   evictions;
/// - its entry in the tenant's publish order (a `BTreeMap<u64, Arc<RoomKey>>`: 16 bytes in
///   192-byte leaves holding 5 to 11), 35 bytes measured;
/// - its payload's allocation: the copy kept is rounded up to a size class (8 bytes at least)
///   and gets a 24-byte shared header (a 32-byte class) once it is first replayed.
///
/// Measured with `tests/tests/history_memory.rs` (a counting allocator rounding to jemalloc's
/// size classes): a 1-byte publication in rooms of 1000 holds 109 bytes, in rooms just grown
/// (129 kept in 256 slots) and replayed 203. Counted: 225.
const ENTRY_OVERHEAD: u64 = 2 * KEPT_SLOT + ORDER_ENTRY + PAYLOAD_HEADER;
/// A ring slot: one [`Kept`] (64 bytes).
const KEPT_SLOT: u64 = std::mem::size_of::<Kept>() as u64;
/// An entry in a tenant's publish order, with the B-tree's nodes (35 bytes measured).
const ORDER_ENTRY: u64 = 48;
/// A kept payload's allocation beyond its length: size-class rounding and the shared header.
const PAYLOAD_HEADER: u64 = 48;
/// What one room's history entry holds, its tenant's and its own name apart (counted at their
/// length): its slot in the rooms map (the `Arc<RoomKey>` and the [`RoomHistory`], 64
/// bytes) in a hash table as little as 7/32 full (after it doubles while rooms come and go:
/// 293 bytes), and the `Arc<RoomKey>` (64). Measured as above: a 1-byte publication in a
/// room of its own holds 300 to 500 bytes with its room (500: the table at its sparsest,
/// under a steady flood over new rooms); counted: 225 + 384 + the names. Counted while it is
/// known: from its first publication or subscription until the sweep forgets it, or the
/// budgets evict its last publication while no one here is subscribed to it.
const ROOM_OVERHEAD: u64 = 384;
/// How often aged-out history is dropped and unused rooms are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct MemoryBroker {
    hub: Arc<Hub>,
    config: Arc<Config>,
    history: Arc<Mutex<History>>,
    presence: Mutex<HashMap<RoomKey, BTreeSet<Member>>>,
}

#[derive(Default)]
struct History {
    rooms: HashMap<Arc<RoomKey>, RoomHistory>,
    tenants: HashMap<TenantId, TenantHistory>,
    /// Bytes kept over all tenants: each kept publication's [`Kept::cost`] and each known
    /// room's [`room_cost`].
    bytes: u64,
    /// Order of every kept publication, over all rooms.
    next_seq: u64,
}

struct RoomHistory {
    key: Arc<RoomKey>,
    epoch: u64,
    /// Offset of the latest publication (0: none yet).
    last: u64,
    kept: VecDeque<Kept>,
}

struct Kept {
    offset: u64,
    at: Instant,
    /// A copy of its own: the publisher's `Bytes` may be a slice of a larger buffer (an HTTP
    /// body is a slice of the connection's read buffer, 8 KiB or more), which keeping it
    /// would keep whole.
    payload: Bytes,
    /// Its place in the tenant's publish order.
    seq: u64,
}

impl Kept {
    fn cost(&self) -> u64 {
        self.payload.len() as u64 + ENTRY_OVERHEAD
    }
}

/// What a room's history entry costs while it is known, publications apart.
fn room_cost(key: &RoomKey) -> u64 {
    ROOM_OVERHEAD + key.tenant.as_str().len() as u64 + key.room.as_str().len() as u64
}

#[derive(Default)]
struct TenantHistory {
    /// The cost of its kept publications and of its known rooms.
    bytes: u64,
    /// The tenant's kept publications, oldest first: seq → room.
    order: BTreeMap<u64, Arc<RoomKey>>,
}

/// Why a publication left history before its room's own limits said so.
#[derive(Clone, Copy)]
enum Budget {
    Tenant,
    Global,
}

impl History {
    /// Counts `cost` bytes for the tenant and in the total.
    /// Returns the tenant's entry.
    fn charge(&mut self, tenant: &TenantId, cost: u64) -> &mut TenantHistory {
        self.bytes += cost;
        let entry = self.tenants.entry(tenant.clone()).or_default();
        entry.bytes += cost;
        entry
    }

    /// Gives back what [`Self::charge`] counted; a tenant holding nothing is forgotten.
    fn release(&mut self, tenant: &TenantId, cost: u64) {
        self.bytes -= cost;
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.bytes -= cost;
            if t.bytes == 0 {
                self.tenants.remove(tenant);
            }
        }
    }

    /// Drops the room's oldest kept publication, keeping the byte counts true.
    fn pop_oldest(&mut self, key: &RoomKey) -> bool {
        let Some(room) = self.rooms.get_mut(key) else {
            return false;
        };
        let Some(kept) = room.kept.pop_front() else {
            return false;
        };
        // A ring left a quarter full gives half its slots back, so slots stay within 4 per
        // entry (what ENTRY_OVERHEAD assumes), and an emptied ring holds no allocation.
        if room.kept.len() <= room.kept.capacity() / 4 {
            room.kept.shrink_to(room.kept.len() * 2);
        }
        if let Some(tenant) = self.tenants.get_mut(&key.tenant) {
            tenant.order.remove(&kept.seq);
        }
        self.release(&key.tenant, kept.cost());
        true
    }

    /// Forgets a room: its epoch, its offsets and whatever it still keeps.
    fn forget(&mut self, key: &RoomKey) {
        while self.pop_oldest(key) {}
        if self.rooms.remove(key).is_some() {
            self.release(&key.tenant, room_cost(key));
        }
    }

    /// Applies the room's own limits: count, then age.
    fn trim(&mut self, key: &RoomKey, size: usize, ttl: Duration) {
        loop {
            let Some(room) = self.rooms.get(key) else {
                return;
            };
            let over =
                room.kept.len() > size || room.kept.front().is_some_and(|k| k.at.elapsed() > ttl);
            if !over || !self.pop_oldest(key) {
                return;
            }
        }
    }

    /// Evicts the tenant's oldest publication (over all its rooms). A room left with nothing
    /// and no subscriber here is forgotten at once, as the next sweep would: a flood over ever
    /// new rooms would otherwise keep every room it emptied until then, each counted, and
    /// evict the rest of the tenant's history to make up for them.
    fn evict_oldest_of(&mut self, tenant: &TenantId, why: Budget, hub: &Hub) -> bool {
        let Some(key) = self
            .tenants
            .get(tenant)
            .and_then(|t| t.order.first_key_value())
            .map(|(_, key)| key.clone())
        else {
            return false;
        };
        let evicted = self.pop_oldest(&key);
        if evicted {
            let reason = match why {
                Budget::Tenant => "tenant_budget",
                Budget::Global => "global_budget",
            };
            metrics::counter!(m::HISTORY_EVICTED, "reason" => reason).increment(1);
            let emptied = self.rooms.get(&*key).is_some_and(|r| r.kept.is_empty());
            if emptied && !hub.has_subscribers(&key) {
                self.forget(&key);
            }
        }
        evicted
    }

    /// Brings the tenant under its share, then everyone under the total, taking from whoever
    /// holds the most first.
    fn enforce(&mut self, tenant: &TenantId, tenant_max: u64, global_max: u64, hub: &Hub) {
        while self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.bytes > tenant_max)
        {
            if !self.evict_oldest_of(tenant, Budget::Tenant, hub) {
                break;
            }
        }
        while self.bytes > global_max {
            // Linear in the number of tenants holding history, and only while over budget.
            // Only a tenant with publications can give some back (rooms with subscribers
            // stay).
            let Some(heaviest) = self
                .tenants
                .iter()
                .filter(|(_, t)| !t.order.is_empty())
                .max_by_key(|(_, t)| t.bytes)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if !self.evict_oldest_of(&heaviest, Budget::Global, hub) {
                break;
            }
        }
    }

    /// The room's entry, created with a fresh epoch (and counted) if it has none.
    fn room(&mut self, key: &RoomKey) -> &mut RoomHistory {
        if !self.rooms.contains_key(key) {
            self.charge(&key.tenant, room_cost(key));
            let key = Arc::new(key.clone());
            self.rooms.insert(
                key.clone(),
                RoomHistory {
                    key,
                    // Never 0, so a zeroed position can't match by accident.
                    epoch: rand::random::<u64>() | 1,
                    last: 0,
                    kept: VecDeque::new(),
                },
            );
        }
        self.rooms.get_mut(key).expect("inserted above")
    }
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>, config: Arc<Config>) -> Self {
        let broker = Self {
            hub,
            config,
            history: Arc::default(),
            presence: Mutex::new(HashMap::new()),
        };
        // Outside a runtime (unit tests) sweeping is left to the caller.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweeper(
                Arc::downgrade(&broker.history),
                broker.hub.clone(),
                broker.config.clone(),
            ));
        }
        broker
    }

    /// Bytes counted against the history budgets now (what `quiver_history_bytes` shows):
    /// payloads, [`ENTRY_OVERHEAD`] per kept publication and [`ROOM_OVERHEAD`] (with the
    /// names) per known room.
    pub fn history_bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_now(&self, key: RoomKey, payload: Bytes) -> Option<Position> {
        let Some(policy) = self.config.history(&key.room) else {
            self.hub.deliver(&key, None, payload);
            return None;
        };
        let limits = &self.config.limits;
        let mut history = self.lock();
        let seq = history.next_seq;
        history.next_seq += 1;
        let room = history.room(&key);
        room.last += 1;
        let position = Position {
            epoch: room.epoch,
            offset: room.last,
        };
        let kept = Kept {
            offset: room.last,
            at: Instant::now(),
            payload: Bytes::copy_from_slice(&payload),
            seq,
        };
        let cost = kept.cost();
        // A room's first slot alone: a ring would otherwise start with 4 (256 bytes), and
        // most rooms of a flood over many rooms keep one publication.
        if room.kept.capacity() == 0 {
            room.kept.reserve_exact(1);
        }
        room.kept.push_back(kept);
        let room_key = room.key.clone();
        history
            .charge(&key.tenant, cost)
            .order
            .insert(seq, room_key);
        history.trim(&key, policy.history_size, policy.history_ttl);
        history.enforce(
            &key.tenant,
            limits.history_tenant_max_bytes,
            limits.history_max_bytes,
            &self.hub,
        );
        m::hot::history_bytes().set(history.bytes as f64);
        // Delivering under the lock keeps offset order and delivery order the same.
        self.hub.deliver(&key, Some(position), payload);
        Some(position)
    }

    fn recover_now(&self, key: &RoomKey, since: Option<Position>) -> Recovered {
        let Some(policy) = self.config.history(&key.room) else {
            return Recovered::default();
        };
        let mut history = self.lock();
        history.trim(key, policy.history_size, policy.history_ttl);
        let room = history.room(key);
        let epoch = room.epoch;
        let current = Position {
            epoch,
            offset: room.last,
        };
        let replay = since.and_then(|since| {
            let oldest = room.kept.front().map_or(room.last + 1, |k| k.offset);
            // Offsets are contiguous, so everything after `since` is here exactly when the
            // oldest kept one is at most the next offset.
            let complete =
                since.epoch == epoch && since.offset <= room.last && since.offset + 1 >= oldest;
            complete.then(|| {
                room.kept
                    .iter()
                    .filter(|k| k.offset > since.offset)
                    .map(|k| {
                        let position = Position {
                            epoch,
                            offset: k.offset,
                        };
                        (position, k.payload.clone())
                    })
                    .collect()
            })
        });
        Recovered {
            current: Some(current),
            replay,
            // Its payloads are shared with history: nothing to page.
            rest: None,
        }
    }

    #[cfg(test)]
    fn sweep(&self) {
        sweep(&self.history, &self.hub, &self.config);
    }
}

/// Drops aged-out publications everywhere and forgets rooms that keep nothing and have no
/// subscriber here (they would otherwise stay forever, one entry per room ever used).
fn sweep(history: &Mutex<History>, hub: &Hub, config: &Config) {
    let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
    let keys: Vec<Arc<RoomKey>> = history.rooms.keys().cloned().collect();
    for key in keys {
        match config.history(&key.room) {
            Some(policy) => history.trim(&key, policy.history_size, policy.history_ttl),
            None => while history.pop_oldest(&key) {},
        }
        let unused = history.rooms.get(&*key).is_some_and(|r| r.kept.is_empty())
            && !hub.has_subscribers(&key);
        if unused {
            history.forget(&key);
        }
    }
    // The maps keep the capacity of their busiest moment (a flood over many rooms): give it
    // back once they are mostly empty.
    let (rooms, tenants) = (history.rooms.len(), history.tenants.len());
    if rooms < history.rooms.capacity() / 4 {
        history.rooms.shrink_to(rooms * 2);
    }
    if tenants < history.tenants.capacity() / 4 {
        history.tenants.shrink_to(tenants * 2);
    }
    m::hot::history_bytes().set(history.bytes as f64);
}

async fn sweeper(history: Weak<Mutex<History>>, hub: Arc<Hub>, config: Arc<Config>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Ends with the broker.
        let Some(history) = history.upgrade() else {
            return;
        };
        sweep(&history, &hub, &config);
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        Box::pin(ready(Ok(self.publish_now(key, payload))))
    }

    fn add_interest(&self, _key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(ready(Ok(())))
    }

    fn remove_interest(&self, _key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(ready(Ok(())))
    }

    fn recover(
        &self,
        key: RoomKey,
        since: Option<Position>,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>> {
        Box::pin(ready(Ok(self.recover_now(&key, since))))
    }

    fn first_kept(&self, key: RoomKey) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        let first = self.config.history(&key.room).and_then(|policy| {
            let mut history = self.lock();
            history.trim(&key, policy.history_size, policy.history_ttl);
            let room = history.rooms.get(&key)?;
            let epoch = room.epoch;
            room.kept.front().map(|k| Position {
                epoch,
                offset: k.offset,
            })
        });
        Box::pin(ready(Ok(first)))
    }

    fn announce(&self, key: RoomKey, frame: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.hub.deliver_frame(&key, Delivery::new(None, frame));
        Box::pin(ready(Ok(())))
    }

    fn join(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        presence.entry(key).or_default().insert(member);
        Box::pin(ready(Ok(())))
    }

    fn leave(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = presence.get_mut(&key) {
            members.remove(&member);
            if members.is_empty() {
                presence.remove(&key);
            }
        }
        Box::pin(ready(Ok(())))
    }

    fn members(&self, key: RoomKey) -> BoxFuture<'_, Result<Vec<Member>, BrokerError>> {
        let presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let members = presence
            .get(&key)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(ready(Ok(members)))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn replayed(b: &MemoryBroker, key: &RoomKey, since: Position) -> Option<usize> {
        b.recover_now(key, Some(since)).replay.map(|r| r.len())
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
        let r = b.recover_now(&key("h.a"), Some(p[1]));
        assert_eq!(r.current, Some(p[4]));
        let replay = r.replay.unwrap();
        assert_eq!(
            replay.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(b.recover_now(&key("h.a"), Some(p[0])).replay.is_none());
        // Up to date: nothing to replay, but recovered.
        assert_eq!(
            b.recover_now(&key("h.a"), Some(p[4])).replay.unwrap().len(),
            0
        );
        // Another epoch, or a position from the future: not recoverable.
        let other = Position {
            epoch: p[0].epoch ^ 2,
            offset: 4,
        };
        assert!(b.recover_now(&key("h.a"), Some(other)).replay.is_none());
        let future = Position {
            epoch: p[0].epoch,
            offset: 99,
        };
        assert!(b.recover_now(&key("h.a"), Some(future)).replay.is_none());
        // Live rooms have no position.
        let live = b.recover_now(&key("live"), Some(p[0]));
        assert!(live.current.is_none() && live.replay.is_none());
        // Rooms are per tenant, and so are their offsets and epochs.
        let other_tenant = tenant_key("u", "h.a");
        let theirs = b.recover_now(&other_tenant, None).current.unwrap();
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
        let before = b.recover_now(&key("h.r7"), None).current.unwrap();
        assert_eq!(b.lock().rooms.len(), 100);
        std::thread::sleep(Duration::from_millis(80));
        b.sweep();
        let history = b.lock();
        assert_eq!(history.rooms.len(), 1, "only the subscribed room stays");
        // It keeps nothing, and is counted as a room still.
        assert_eq!(history.bytes, room_cost(&key("h.r7")));
        assert_eq!(history.tenants.len(), 1);
        drop(history);
        assert_eq!(b.recover_now(&key("h.r7"), None).current, Some(before));
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
}
