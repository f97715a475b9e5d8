//! The embedded broker's presence: who is in each room, with the counts an answer needs kept as
//! members join and leave.
//!
//! One lock for every tenant's rooms, so what is done under it is bounded: a join or leave is
//! a set insertion or removal and a count, and a read copies at most the members it was asked
//! for (an answer lists at most one frame's worth, or 1,000 for the API) and reads the counts
//! as they are. Every read copied the whole room before, which at 20,000 members held the lock
//! 1.6 to 3.1 ms per `Presence` or `PresenceStats`, and every tenant's presence-room
//! `Subscribe` waited behind it (outside audit 116, F1).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use quiver_proto::Member;

use crate::broker::RoomPresence;
use crate::hub::RoomKey;

#[derive(Default)]
pub(super) struct Presence {
    rooms: Mutex<HashMap<RoomKey, Room>>,
}

#[derive(Default)]
struct Room {
    /// In the order answers list them (user, then session); its length is the session count.
    members: BTreeSet<Member>,
    /// Sessions present per user: its length is the distinct user count.
    users: HashMap<String, u32>,
}

impl Presence {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, Room>> {
        // A panic elsewhere poisons nothing here: the map is whole after every operation.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn join(&self, key: RoomKey, member: Member) {
        let mut rooms = self.rooms();
        let room = rooms.entry(key).or_default();
        let user = member.user.clone();
        // A session already listed is not counted twice.
        if room.members.insert(member) {
            *room.users.entry(user).or_default() += 1;
        }
    }

    pub(super) fn leave(&self, key: &RoomKey, member: &Member) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        if room.members.remove(member) {
            if let Some(sessions) = room.users.get_mut(&member.user) {
                *sessions -= 1;
                if *sessions == 0 {
                    room.users.remove(&member.user);
                }
            }
        }
        if room.members.is_empty() {
            rooms.remove(key);
        }
    }

    /// The room's first `max` members in order and its counts: the lock is held for the copy
    /// of at most `max` members, whatever the room holds.
    pub(super) fn read(&self, key: &RoomKey, max: usize) -> RoomPresence {
        let rooms = self.rooms();
        let Some(room) = rooms.get(key) else {
            return RoomPresence::default();
        };
        RoomPresence {
            members: room.members.iter().take(max).cloned().collect(),
            sessions: room.members.len(),
            users: room.users.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::executor::block_on;
    use quiver_proto::{RoomName, TenantId};

    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::broker::Broker;
    use crate::config::Config;
    use crate::hub::Hub;

    fn broker() -> MemoryBroker {
        MemoryBroker::new(Arc::new(Hub::default()), Arc::new(Config::default()))
    }

    fn key(tenant: &str, room: &str) -> RoomKey {
        RoomKey {
            tenant: TenantId::parse(tenant).unwrap(),
            room: RoomName::parse(room).unwrap(),
        }
    }

    fn member(user: &str, session: &str) -> Member {
        Member {
            user: user.into(),
            session: session.into(),
        }
    }

    fn counts(b: &MemoryBroker, key: &RoomKey) -> (usize, usize) {
        let present = block_on(b.presence(key.clone(), 0)).unwrap();
        assert!(present.members.is_empty(), "counts copy no member");
        (present.sessions, present.users)
    }

    /// Sessions and distinct users stay true through joins and leaves of one user's two
    /// sessions, a repeated join and a leave of someone absent.
    #[test]
    fn counts_follow_joins_and_leaves() {
        let b = broker();
        let room = key("acme", "p.room");
        let join = |user, session| block_on(b.join(room.clone(), member(user, session))).unwrap();
        let leave = |user, session| block_on(b.leave(room.clone(), member(user, session))).unwrap();
        join("alice", "s1");
        join("alice", "s2");
        join("bob", "s3");
        assert_eq!(counts(&b, &room), (3, 2));
        // The same session again is not a new one.
        join("alice", "s2");
        assert_eq!(counts(&b, &room), (3, 2));
        // Another tenant's same room counts apart.
        block_on(b.join(key("other", "p.room"), member("alice", "s9"))).unwrap();
        assert_eq!(counts(&b, &room), (3, 2));
        // One of alice's sessions leaves: she is still there.
        leave("alice", "s1");
        assert_eq!(counts(&b, &room), (2, 2));
        // Someone absent leaving changes nothing.
        leave("carol", "s4");
        leave("alice", "s1");
        assert_eq!(counts(&b, &room), (2, 2));
        leave("alice", "s2");
        assert_eq!(counts(&b, &room), (1, 1));
        leave("bob", "s3");
        assert_eq!(counts(&b, &room), (0, 0));
        assert!(
            !b.presence.rooms().contains_key(&room),
            "an empty room is forgotten"
        );
    }

    /// A read lists at most what it asks for, the first in order, however many the room holds
    /// (what the lock is held for), and counts every one.
    #[test]
    fn a_read_copies_at_most_what_it_asks_for() {
        let b = broker();
        let room = key("acme", "p.big");
        for i in 0..20_000u32 {
            // 5,000 users with four sessions each, joined out of order.
            let i = i.wrapping_mul(7_919) % 20_000;
            let user = format!("u{:05}", i % 5_000);
            block_on(b.join(room.clone(), member(&user, &format!("{i:016x}")))).unwrap();
        }
        let present = block_on(b.presence(room.clone(), 10)).unwrap();
        assert_eq!(present.members.len(), 10);
        assert_eq!((present.sessions, present.users), (20_000, 5_000));
        assert!(present.truncated());
        let all = block_on(b.members(room.clone())).unwrap();
        assert_eq!(all.len(), 20_000);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(present.members, all[..10]);
        // Asking for more than there are lists them all.
        let whole = block_on(b.presence(room, 30_000)).unwrap();
        assert_eq!(whole.members, all);
        assert!(!whole.truncated());
    }
}
