//! The embedded default: one process, so publishing is delivering. Rooms whose namespace keeps
//! history get per-room offsets (contiguous, from 1) and an in-memory ring of recent
//! publications; the epoch is drawn at start, so a restart (which loses that memory) makes old
//! positions unrecoverable, as it should.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{ready, BoxFuture};
use quiver_proto::{Member, Position};

use super::{Broker, BrokerError, Recovered};
use crate::config::Config;
use crate::hub::{Delivery, Hub, RoomKey};

pub struct MemoryBroker {
    hub: Arc<Hub>,
    config: Arc<Config>,
    epoch: u64,
    history: Mutex<HashMap<RoomKey, RoomHistory>>,
    presence: Mutex<HashMap<RoomKey, BTreeSet<Member>>>,
}

#[derive(Default)]
struct RoomHistory {
    /// Offset of the latest publication (0: none yet).
    last: u64,
    kept: VecDeque<(u64, Instant, Bytes)>,
}

impl RoomHistory {
    fn trim(&mut self, size: usize, ttl: std::time::Duration) {
        while self.kept.len() > size {
            self.kept.pop_front();
        }
        while matches!(self.kept.front(), Some((_, at, _)) if at.elapsed() > ttl) {
            self.kept.pop_front();
        }
    }
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>, config: Arc<Config>) -> Self {
        Self {
            hub,
            config,
            // Never 0, so a zeroed position can't match by accident.
            epoch: rand::random::<u64>() | 1,
            history: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
        }
    }

    fn publish_now(&self, key: RoomKey, payload: Bytes) -> Option<Position> {
        let Some(policy) = self.config.history(&key.room) else {
            self.hub.deliver(&key, None, payload);
            return None;
        };
        let mut rooms = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(key.clone()).or_default();
        room.last += 1;
        let position = Position {
            epoch: self.epoch,
            offset: room.last,
        };
        room.kept
            .push_back((room.last, Instant::now(), payload.clone()));
        room.trim(policy.history_size, policy.history_ttl);
        // Delivering under the lock keeps offset order and delivery order the same.
        self.hub.deliver(&key, Some(position), payload);
        Some(position)
    }

    fn recover_now(&self, key: &RoomKey, since: Option<Position>) -> Recovered {
        let Some(policy) = self.config.history(&key.room) else {
            return Recovered::default();
        };
        let mut rooms = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(key.clone()).or_default();
        room.trim(policy.history_size, policy.history_ttl);
        let current = Position {
            epoch: self.epoch,
            offset: room.last,
        };
        let replay = since.and_then(|since| {
            let oldest = room.kept.front().map_or(room.last + 1, |(o, _, _)| *o);
            let complete = since.epoch == self.epoch
                && since.offset <= room.last
                && since.offset + 1 >= oldest;
            complete.then(|| {
                room.kept
                    .iter()
                    .filter(|(o, _, _)| *o > since.offset)
                    .map(|(o, _, p)| {
                        let position = Position {
                            epoch: self.epoch,
                            offset: *o,
                        };
                        (position, p.clone())
                    })
                    .collect()
            })
        });
        Recovered {
            current: Some(current),
            replay,
        }
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

    fn announce(&self, key: RoomKey, frame: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.hub.deliver_frame(
            &key,
            Delivery {
                offset: None,
                frame,
            },
        );
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
    use quiver_proto::{RoomName, TenantId};

    fn broker(size: usize) -> MemoryBroker {
        let mut config = Config::default();
        config.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: size,
            history_ttl: std::time::Duration::from_secs(60),
            presence: false,
        });
        MemoryBroker::new(Arc::new(Hub::default()), Arc::new(config))
    }

    fn key(room: &str) -> RoomKey {
        RoomKey {
            tenant: TenantId::parse("t").unwrap(),
            room: RoomName::parse(room).unwrap(),
        }
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
        // Rooms are per tenant.
        let other_tenant = RoomKey {
            tenant: TenantId::parse("u").unwrap(),
            ..key("h.a")
        };
        assert_eq!(
            b.recover_now(&other_tenant, None).current.unwrap().offset,
            0
        );
    }
}
