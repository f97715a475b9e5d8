//! The embedded default: one process, so publishing is delivering. Rooms whose namespace keeps
//! history get per-room offsets (contiguous, from 1) and an in-memory ring of recent
//! publications.
//!
//! History memory is bounded three ways: per room (`history_size`, `history_ttl`), per tenant
//! (`limits.history_tenant_max_bytes`: past it the tenant's own oldest publications go) and in
//! total (`limits.history_max_bytes`: past it the oldest publications of the tenant holding the
//! most go, so a tenant within its fair share never loses history to a heavier one). A sweep
//! drops what has aged out and forgets rooms with nothing kept and nobody subscribed here.
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

/// What one kept publication costs beyond its payload, estimated and rounded up: its ring
/// slot (64 bytes), its entry in the tenant's order (about 40 with B-tree node overhead) and
/// the payload allocation's own overhead.
const ENTRY_OVERHEAD: u64 = 128;
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
    /// Bytes kept over all tenants (payloads plus [`ENTRY_OVERHEAD`] each).
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
    payload: Bytes,
    /// Its place in the tenant's publish order.
    seq: u64,
}

impl Kept {
    fn cost(&self) -> u64 {
        self.payload.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Default)]
struct TenantHistory {
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
    /// Drops the room's oldest kept publication, keeping the byte counts true.
    fn pop_oldest(&mut self, key: &RoomKey) -> bool {
        let Some(room) = self.rooms.get_mut(key) else {
            return false;
        };
        let Some(kept) = room.kept.pop_front() else {
            return false;
        };
        let cost = kept.cost();
        self.bytes -= cost;
        if let Some(tenant) = self.tenants.get_mut(&key.tenant) {
            tenant.bytes -= cost;
            tenant.order.remove(&kept.seq);
            if tenant.order.is_empty() {
                self.tenants.remove(&key.tenant);
            }
        }
        true
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

    /// Evicts the tenant's oldest publication (over all its rooms).
    fn evict_oldest_of(&mut self, tenant: &TenantId, why: Budget) -> bool {
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
        }
        evicted
    }

    /// Brings the tenant under its share, then everyone under the total, taking from whoever
    /// holds the most first.
    fn enforce(&mut self, tenant: &TenantId, tenant_max: u64, global_max: u64) {
        while self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.bytes > tenant_max)
        {
            if !self.evict_oldest_of(tenant, Budget::Tenant) {
                break;
            }
        }
        while self.bytes > global_max {
            // Linear in the number of tenants holding history, and only while over budget.
            let Some(heaviest) = self
                .tenants
                .iter()
                .max_by_key(|(_, t)| t.bytes)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if !self.evict_oldest_of(&heaviest, Budget::Global) {
                break;
            }
        }
    }

    /// The room's entry, created with a fresh epoch if it has none.
    fn room(&mut self, key: &RoomKey) -> &mut RoomHistory {
        if !self.rooms.contains_key(key) {
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
            payload: payload.clone(),
            seq,
        };
        let cost = kept.cost();
        room.kept.push_back(kept);
        let room_key = room.key.clone();
        let tenant = history.tenants.entry(key.tenant.clone()).or_default();
        tenant.bytes += cost;
        tenant.order.insert(seq, room_key);
        history.bytes += cost;
        history.trim(&key, policy.history_size, policy.history_ttl);
        history.enforce(
            &key.tenant,
            limits.history_tenant_max_bytes,
            limits.history_max_bytes,
        );
        metrics::gauge!(m::HISTORY_BYTES).set(history.bytes as f64);
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
            history.rooms.remove(&*key);
        }
    }
    metrics::gauge!(m::HISTORY_BYTES).set(history.bytes as f64);
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
        // 1 KiB payloads cost 1024 + ENTRY_OVERHEAD each: a tenant keeps 4 of them in 5 KiB.
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
        assert_eq!(loud, 4 * (1024 + ENTRY_OVERHEAD));
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
        // The small tenant (3 KiB, below everyone's share) kept all of its history.
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
        let (queue, _rx) = tokio::sync::mpsc::channel(1);
        b.hub.subscribe(
            key("h.r7"),
            Subscriber {
                id: 1,
                queue,
                overflow: Default::default(),
                deliveries: metrics::Counter::noop(),
                latest: None,
                direct: None,
            },
        );
        let before = b.recover_now(&key("h.r7"), None).current.unwrap();
        assert_eq!(b.lock().rooms.len(), 100);
        std::thread::sleep(Duration::from_millis(80));
        b.sweep();
        let history = b.lock();
        assert_eq!(history.rooms.len(), 1, "only the subscribed room stays");
        assert_eq!((history.bytes, history.tenants.len()), (0, 0));
        drop(history);
        assert_eq!(b.recover_now(&key("h.r7"), None).current, Some(before));
    }
}
