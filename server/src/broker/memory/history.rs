//! Reading the embedded broker's history back: a resume's replay and `History` pages, each
//! copying under the history lock only what it hands over (outside audit 133).
//!
//! A read finds its first publication by binary search on the room's offsets and copies at
//! most one page (a reference to each payload), so a `History` page costs its page, not the
//! room, under the lock every tenant's publications take (F1: a `limit: 0` page of a room
//! keeping 100,000 publications copied all of them, about 20 ms in a debug build).
//!
//! A resume is handed over as NATS hands one over (`nats/history_read.rs`): nothing is read at
//! `Subscribe` (the answer counts the replay, `since` to the room's last), and [`Pages`] reads
//! it a page at a time under the lock as the subscription's stream takes it, once the session
//! gives the replay its turn (`crate::replay::AT_ONCE`). A resume waiting for its turn holds
//! no payload, a slow reader one page, and what history evicts meanwhile is freed, not held
//! for it (F2: a replay held its whole list of payloads, those evicted too, so one session
//! that resumed room after room and read nothing held 200 MB that no budget counted). A
//! publication of the replay evicted before it was read ends the replay after what was sent
//! ([`ReplayError::Cut`]: `Unsubscribed` 117), never with a gap; evicted before its turn, the
//! replay ends before its first publication.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{ready, BoxFuture};
use quiver_proto::Position;

use super::{History, MemoryBroker, RoomHistory};
use crate::broker::{BrokerError, Recovered, ReplayError, ReplayPages};
use crate::hub::RoomKey;
use crate::replay::REPLAY_PAGE;

/// At most this many publications a resume's page holds, whatever their size: what one read
/// copies under the history lock.
pub const REPLAY_PAGE_MAX: usize = 1024;

/// How far [`MemoryBroker::read_now`] reads.
#[derive(Clone, Copy)]
pub(super) enum Reach {
    /// A resume: nothing now, all of it as the subscription's stream takes it ([`Pages`]).
    Replay,
    /// A `History` page ([`crate::broker::Broker::recover_some`]).
    Page { max: usize, max_bytes: usize },
}

impl RoomHistory {
    /// Whether every publication after `since` is still kept: `since` is of this epoch, not
    /// past the room's last, and (offsets being contiguous) the oldest kept one is at most
    /// the next offset.
    fn keeps_all_after(&self, since: Position) -> bool {
        let oldest = self.kept.front().map_or(self.last + 1, |k| k.offset);
        since.epoch == self.epoch && since.offset <= self.last && since.offset + 1 >= oldest
    }

    /// The kept publications after offset `after` and through `through`, oldest first: at
    /// most `max`, and none more once their payloads are past `max_bytes` (the one that takes
    /// them past is in). The first is found by binary search; only what is returned is
    /// copied (a reference to each payload), so a read costs its page, not the room.
    fn read_after(
        &self,
        after: u64,
        through: u64,
        max: usize,
        max_bytes: usize,
    ) -> Vec<(Position, Bytes)> {
        let first = self.kept.partition_point(|k| k.offset <= after);
        let mut page = Vec::new();
        let mut bytes = 0;
        for kept in self.kept.range(first..) {
            if kept.offset > through || page.len() >= max || bytes > max_bytes {
                break;
            }
            #[cfg(test)]
            super::tests::count_copied();
            bytes += kept.payload.len();
            let position = Position {
                epoch: self.epoch,
                offset: kept.offset,
            };
            page.push((position, kept.payload.clone()));
        }
        page
    }
}

/// A resume's replay, read a page at a time under the history lock as the subscription's
/// stream takes it: a replay waiting for its turn holds nothing, a slow reader one page, and what history evicts
/// meanwhile is freed, not held for it (outside audit 133, F2). A publication of the replay
/// evicted before it was read ends the replay ([`ReplayError::Cut`]), as over NATS.
struct Pages {
    /// The broker's history: gone with the broker.
    history: Weak<Mutex<History>>,
    key: Arc<RoomKey>,
    /// The room's own limits, applied before each read as before the first.
    size: usize,
    ttl: Duration,
    /// The offset of the last publication handed over (at first, the resume's `since`).
    read: u64,
    /// The replay's last publication: the room's at `Subscribe`.
    last: Position,
}

impl Pages {
    fn read_page(&mut self) -> Result<Vec<(Position, Bytes)>, ReplayError> {
        let Some(history) = self.history.upgrade() else {
            return Err(BrokerError::Unavailable("the broker has stopped".into()).into());
        };
        let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
        history.trim(&self.key, self.size, self.ttl);
        let since = Position {
            epoch: self.last.epoch,
            offset: self.read,
        };
        // Forgotten (a new epoch if it comes back), or cut past the next one to read.
        let Some(room) = history
            .rooms
            .get(&*self.key)
            .filter(|room| room.keeps_all_after(since))
        else {
            return Err(ReplayError::Cut);
        };
        let page = room.read_after(self.read, self.last.offset, REPLAY_PAGE_MAX, REPLAY_PAGE);
        match page.last() {
            Some((position, _)) => self.read = position.offset,
            None => return Err(ReplayError::Cut),
        }
        Ok(page)
    }
}

impl ReplayPages for Pages {
    fn remaining(&self) -> usize {
        usize::try_from(self.last.offset - self.read).unwrap_or(usize::MAX)
    }

    fn last(&self) -> Position {
        self.last
    }

    fn next_page(&mut self) -> BoxFuture<'_, Result<Vec<(Position, Bytes)>, ReplayError>> {
        Box::pin(ready(self.read_page()))
    }
}

impl MemoryBroker {
    /// Reads the room's history after `since` under the lock: a `History` page, copying only
    /// that page; or a resume's answer, copying nothing (its replay is [`Pages`], read as the
    /// subscription's stream takes it). Outside audit 133: both copied every kept publication
    /// after `since` under the lock every tenant's publications take (F1: a `limit: 0` page of
    /// a room of 100,000 took 20 ms), and a resume held the payloads of its whole replay, also
    /// those history evicted meanwhile, until the client read it (F2: 200 MB for one session
    /// that read nothing; then a first page read at `Subscribe` was held by every resume
    /// waiting for its turn: review 135, R1).
    pub(super) fn read_now(
        &self,
        key: &RoomKey,
        since: Option<Position>,
        reach: Reach,
    ) -> Result<Recovered, BrokerError> {
        let Some(policy) = self.config.history(&key.room) else {
            return Ok(Recovered::default());
        };
        let mut history = self.lock();
        history.trim(key, policy.history_size, policy.history_ttl);
        let Some(room) = history.room_to_read(key, &self.config.limits, &self.hub) else {
            return Err(BrokerError::Unavailable(
                "history memory is held by rooms subscribed on this instance (the tenant's share, \
                 or the total); retry once some are unsubscribed"
                    .into(),
            ));
        };
        let current = Position {
            epoch: room.epoch,
            offset: room.last,
        };
        let mut rest = None;
        let replay = since
            .filter(|since| room.keeps_all_after(*since))
            .map(|since| match reach {
                Reach::Page { max, max_bytes } => {
                    room.read_after(since.offset, room.last, max, max_bytes)
                }
                // As NATS answers a resume: an empty first page and the whole replay in `rest`
                // (`replayed` is `last - since`, exact), none when it is up to date.
                Reach::Replay => {
                    if since.offset < room.last {
                        let pages: Box<dyn ReplayPages> = Box::new(Pages {
                            history: Arc::downgrade(&self.history),
                            key: room.key.clone(),
                            size: policy.history_size,
                            ttl: policy.history_ttl,
                            read: since.offset,
                            last: current,
                        });
                        rest = Some(pages);
                    }
                    Vec::new()
                }
            });
        Ok(Recovered {
            current: Some(current),
            replay,
            rest,
        })
    }
}
