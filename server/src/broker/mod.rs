//! The broker carries publications between instances. Sessions only ever talk to this trait, so
//! the embedded in-process broker and a NATS backplane are interchangeable.
//!
//! Contract: `publish` hands the payload to the broker; every instance with local interest in
//! the room (including this one) then passes it to its `Hub::deliver`, in one order per room.
//! `add_interest` is called for every local subscriber, after it joined the hub, and resolves
//! once the room is listened to (set up once, whoever asks first; the others wait for it);
//! `remove_interest` when a room loses its last one.

pub mod memory;
pub mod nats;

use bytes::Bytes;
use futures::future::BoxFuture;
use quiver_proto::{Member, Position};

use crate::hub::RoomKey;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Quiver's own words, fit for a client ("history listener set-up timed out").
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker's own words (a NATS or JetStream error), for the operator only: they can tell
    /// of what every tenant shares ("insufficient memory resources available", "maximum bytes
    /// exceeded": outside tenancy audits 3 and 41). A client is told [`BROKER_FAILED`];
    /// [`BrokerError::for_client`] logs these words.
    #[error("broker unavailable: {0}")]
    Failed(String),
    /// The instance has left the cluster's presence (its drain's deadline, `Broker::depart`):
    /// every member it listed had its `Left`, so a join or leave now is refused, and announced
    /// by no one (a `Joined` would follow that `Left`, a `Left` repeat it).
    #[error(
        "broker unavailable: this instance has left the cluster's presence (its drain's deadline)"
    )]
    Departed,
}

/// What a client is told of a [`BrokerError::Failed`].
pub const BROKER_FAILED: &str = "broker unavailable: the broker failed (the server's log says \
                                 why); retry later";

/// At most this many lines a second of broker failures told to clients.
static FAILURES_LOGGED: crate::log_budget::LogBudget = crate::log_budget::LogBudget::per_second(5);

impl BrokerError {
    /// The error as a client (or a tenant's backend) may be told it: Quiver's own words, or
    /// for the broker's own, [`BROKER_FAILED`], with the broker's words logged with the
    /// `tenant` told (a warning, at most 5 lines a second, the count of those left out in the
    /// next).
    pub fn for_client(&self, tenant: &str) -> String {
        match self {
            Self::Unavailable(_) | Self::Departed => self.to_string(),
            Self::Failed(detail) => {
                log_failure(detail, tenant);
                BROKER_FAILED.to_owned()
            }
        }
    }
}

/// Logs the broker's own words of a failure a client or backend of `tenant` ("" for an
/// operator's request about every tenant) is told of in general terms (a warning, at most 5
/// lines a second, the count of those left out in the next), so the operator sees whom it
/// touched (outside audit 42, 3).
pub fn log_failure(detail: &str, tenant: &str) {
    if let Some(not_logged) = FAILURES_LOGGED.admit() {
        tracing::warn!(error = %detail, tenant, not_logged, "broker failure told to a client");
    }
}

/// A room's presence as [`Broker::presence`] reads it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomPresence {
    /// The first members in order (user, then session): at most the `max` asked for.
    pub members: Vec<Member>,
    /// Sessions present, listed or not.
    pub sessions: usize,
    /// Distinct users among them.
    pub users: usize,
}

impl RoomPresence {
    /// From every member of the room, in any order: counted, then sorted and cut to `max`.
    pub fn of(mut members: Vec<Member>, max: usize) -> Self {
        let users = members
            .iter()
            .map(|m| m.user.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let sessions = members.len();
        members.sort_unstable();
        members.truncate(max);
        Self {
            members,
            sessions,
            users,
        }
    }

    /// Whether some members present are not listed.
    pub fn truncated(&self) -> bool {
        self.members.len() < self.sessions
    }
}

/// What a subscriber can get back from history.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The room's latest position; `None` when the room keeps no history.
    pub current: Option<Position>,
    /// Publications after the requested position, oldest first; `None` when they cannot all be
    /// replayed (trimmed from history, another epoch, or no history), or none was requested.
    pub replay: Option<Vec<(Position, Bytes)>>,
    /// What follows `replay` when it was too long to read at once (a resume, never a history
    /// page): read a page at a time as the subscription's stream takes it.
    pub rest: Option<Box<dyn ReplayPages>>,
}

/// The rest of a long replay, still in the broker, read a page at a time as the subscription's
/// stream takes it, so a slow reader holds a page. From NATS, whose payloads are copied in, a
/// replay read whole would be a copy of all of it per slow reader; the memory broker shares
/// its payloads with history, but a replay read whole held every one of them, those history
/// evicted meanwhile too, until the client read it (outside audit 133, F2).
pub trait ReplayPages: Send {
    /// Publications not read yet.
    fn remaining(&self) -> usize;
    /// The position of the replay's last publication.
    fn last(&self) -> Position;
    /// The next publications, oldest first: never empty while some remain. An error ends the
    /// replay (what was read before it stays good).
    fn next_page(&mut self) -> BoxFuture<'_, Result<Vec<(Position, Bytes)>, ReplayError>>;
}

impl std::fmt::Debug for dyn ReplayPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayPages")
            .field("remaining", &self.remaining())
            .field("last", &self.last())
            .finish()
    }
}

/// Why the rest of a replay could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// History lost publications of the replay after it started (it kept more, or older, than
    /// its limits allow while the subscriber read slowly): sending the rest would leave a gap.
    #[error("history was cut while the replay was read")]
    Cut,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub trait Broker: Send + Sync + 'static {
    /// Publishes; resolves when the broker has accepted the message (with its position when the
    /// room keeps history).
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>>;
    /// [`Broker::publish`], at most once per `id` where the broker can tell: on NATS a stored
    /// publication carries `id` as `Nats-Msg-Id`, and JetStream drops a repeat within its
    /// duplicate window (2 minutes), answering the first one's position. So a retry after a
    /// publication whose outcome was unknown (its ack timed out: "it may still be stored") is
    /// not stored twice (outside audit 67, F4). The memory broker never leaves an outcome
    /// unknown.
    fn publish_once(
        &self,
        key: RoomKey,
        payload: Bytes,
        id: String,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        let _ = id;
        self.publish(key, payload)
    }
    fn add_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn remove_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// The room's current position and, when `since` is given, what was published after it.
    fn recover(
        &self,
        key: RoomKey,
        since: Option<Position>,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>>;
    /// Like `recover` from `since`, reading at most `max` publications, and no more once their
    /// payloads exceed `max_bytes`: a history page (one past either bound says there is more).
    /// `from_oldest`: `since` is just before the room's oldest kept publication, read a moment
    /// ago, and the page is to start wherever the room's kept publications start now (cut
    /// further meanwhile is no gap for a caller that asked for the oldest); otherwise the page
    /// starts right after `since` or is `None`.
    /// Reads only the page, under whatever the broker shares with other tenants (the memory
    /// broker once read a room's whole history for it, under the lock every tenant's
    /// publications take: outside audit 133, F1). The whole page is in `replay`, never in
    /// `rest` (which `recover` may use).
    fn recover_some(
        &self,
        key: RoomKey,
        since: Position,
        max: usize,
        max_bytes: usize,
        from_oldest: bool,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>>;
    /// The position of the oldest publication the room keeps (`None`: it keeps none, or the
    /// namespace keeps no history): where a `History` without `since` starts.
    fn first_kept(&self, key: RoomKey) -> BoxFuture<'_, Result<Option<Position>, BrokerError>>;
    /// Delivers a server-made event frame (`Joined`, `Left`) to the room's subscribers on every
    /// instance. Live only: never stored, never replayed.
    fn announce(&self, key: RoomKey, frame: Bytes) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Records a session as present in a room, until `leave` (or, across instances, until this
    /// instance stops refreshing it).
    fn join(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn leave(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// This instance is going with sessions still open (a drain's deadline): their presence
    /// goes now, each member with its `Left`, rather than linger on the other instances until
    /// it expires. Best effort; the caller bounds it. Nothing to do where no other instance
    /// shares presence.
    fn depart(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Everyone present in the room, on every instance: the whole list, in no set order. What
    /// a client or backend is answered goes through [`Broker::presence`], which is bounded.
    fn members(&self, key: RoomKey) -> BoxFuture<'_, Result<Vec<Member>, BrokerError>>;
    /// The room's presence as an answer needs it: its first `max` members in order (user, then
    /// session) and counts of all of them. A room can hold any number, and an answer lists at
    /// most what one frame holds (`Presence`) or 1,000 (the API), or none (`PresenceStats`).
    /// The default reads [`Broker::members`] whole and counts it (a broker that reads its
    /// members from elsewhere, NATS, reads them all anyway); the memory broker keeps its counts
    /// and copies at most `max` (outside audit 116, F1: every read copied the whole room under
    /// a lock every tenant's joins and leaves take).
    fn presence(
        &self,
        key: RoomKey,
        max: usize,
    ) -> BoxFuture<'_, Result<RoomPresence, BrokerError>> {
        Box::pin(async move { Ok(RoomPresence::of(self.members(key).await?, max)) })
    }
    /// Whether the broker can take publications now (for `/readyz`).
    fn is_ready(&self) -> bool;
}
