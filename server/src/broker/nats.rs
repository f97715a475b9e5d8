//! The NATS backplane: several instances share rooms through NATS.
//!
//! Subjects: `quiver.<tenant>.room.<room>`, built only from a validated `TenantId` and `RoomName`
//! (whose tokens are `[A-Za-z0-9_-]`), so no client input can become a wildcard or name another
//! tenant's subject.
//!
//! - Live-only rooms use core NATS: publish, and a core subscription per room while this
//!   instance has local subscribers (interest-based: no firehose). While the connection is down
//!   a publish is refused (`unavailable`) rather than queued: async-nats would buffer it and
//!   flush it on reconnect, possibly before other instances resubscribed, so `Published` would
//!   have promised what nobody delivers.
//! - Rooms in a history namespace go through JetStream, one stream per (tenant, namespace)
//!   ([`history`]): positions, resume, and one live consumer per stream with local interest
//!   (not per room), fanned out to the rooms here, that survives NATS restarts. The consumers
//!   one instance holds on a stream are bounded whatever its clients do ([`history`]).
//! - [`health`]: `/readyz` says ready only once JetStream answers and every history listener
//!   delivers again after a (re)connect.

mod connection;
mod health;
mod history;
mod history_read;
mod interest;
mod lag;
mod presence;
mod read_slots;
pub(crate) mod replicas;
mod supervisor;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use quiver_proto::{Event, Member, Position, TenantId};
use tokio::sync::{mpsc, Mutex, OnceCell};
use tracing::{debug, info, warn};

use super::{Broker, BrokerError, Recovered};
use crate::config::{Config, NatsConfig};
use crate::hub::{Hub, RoomKey};
use crate::metrics as m;
pub use connection::{
    broker_subscription_capacity, connect_with, is_connected, redacted_urls, watched, Drops,
    BROKER_SUBSCRIPTION_BYTES, CONTROL_SUBSCRIPTION_CAPACITY, MIN_SUBSCRIPTION_CAPACITY,
};
pub use history::stream_name;
use interest::{Interest, SettingUp};
use supervisor::supervise;

/// How long a JetStream operation (stream set-up, stored publish, history read) may take before
/// the command is answered `unavailable`: during a NATS outage, clients hear so promptly.
pub(super) const JS_TIMEOUT: Duration = Duration::from_secs(3);

async fn bounded<T>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(JS_TIMEOUT, op)
        .await
        .map_err(|_| BrokerError::Unavailable(format!("{what} timed out")))?
}

pub struct NatsBroker {
    inner: Arc<Inner>,
}

/// Dropped NATS messages (too large to deliver, or not what instances send), logged at most
/// this often.
static OVERSIZED_LOGGED: crate::log_budget::LogBudget = crate::log_budget::LogBudget::per_second(1);

/// Whether a message on a room's events subject is what instances send there: one whole frame
/// (its length prefix the rest of the message) of a `Joined` or `Left` of that room, with the
/// id of unsolicited events, 0. A
/// tenant's backend may publish there too (docs/deployment.md), and its frames reach
/// subscribers as they are: four zero bytes stopped every SSE response in the room for good
/// (its decoder cannot skip a malformed frame), and a prefix of 2 GiB made it reserve that
/// much (outside audit 67, F1). Anything else is dropped, and logged like an oversized one.
fn is_room_event(key: &RoomKey, payload: &[u8]) -> bool {
    let well_formed = payload
        .split_first_chunk::<{ quiver_proto::LENGTH_PREFIX }>()
        .filter(|(prefix, body)| u32::from_be_bytes(**prefix) as usize == body.len())
        .and_then(|(_, body)| quiver_proto::decode_event(body).ok())
        .is_some_and(|frame| match frame.event {
            Event::Joined { room, .. } | Event::Left { room, .. } => {
                frame.id == 0 && room == key.room.as_str()
            }
            _ => false,
        });
    if !well_formed {
        metrics::counter!(crate::metrics::NATS_DROPPED, "reason" => "not_an_event").increment(1);
        if let Some(not_logged) = OVERSIZED_LOGGED.admit() {
            warn!(
                tenant = %key.tenant,
                room = %key.room,
                bytes = payload.len(),
                not_logged,
                "dropped a message on the room's events subject: not a Joined or Left frame of the room (not published by Quiver)"
            );
        }
    }
    well_formed
}

/// Whether a message of `len` bytes that a room's NATS subject carried may go to its
/// subscribers: at most `max` (`max_payload` for a publication, `max_frame` for an encoded
/// event). Quiver never publishes more, but anything allowed on the tenant's subjects can
/// (a tenant's backend, deployment.md): a larger one would reach clients as a frame over the
/// `max_frame` their `Welcome` announced (outside cluster audit 6, F1), so it is dropped.
fn fits(key: &RoomKey, len: usize, max: u32) -> bool {
    if len <= max as usize {
        return true;
    }
    metrics::counter!(crate::metrics::NATS_DROPPED, "reason" => "oversized").increment(1);
    if let Some(not_logged) = OVERSIZED_LOGGED.admit() {
        warn!(
            tenant = %key.tenant,
            room = %key.room,
            bytes = len,
            max,
            not_logged,
            "dropped a message on the room's NATS subject: too large for subscribers (not published by Quiver)"
        );
    }
    false
}

/// A tenant stream, looked up (or created) once by whoever asks first.
type StreamCell = Arc<OnceCell<history::TenantStream>>;

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    hub: Arc<Hub>,
    config: Arc<Config>,
    storage: stream::StorageType,
    /// One stream per (tenant, history namespace), created on first use (NATS may be down at
    /// start); forgotten at every reconnect, so a stream NATS lost is created again.
    streams: Mutex<HashMap<(TenantId, String), StreamCell>>,
    health: health::Health,
    /// Per (tenant, namespace), the highest stream sequence this instance has seen. A stream
    /// that NATS lost (memory storage, NATS restarted) is created again from the next one, so
    /// offsets keep growing and subscribers that stayed connected skip nothing new as "already
    /// seen"; its epoch changes all the same.
    high_water: std::sync::Mutex<HashMap<(TenantId, String), u64>>,
    /// Rooms this instance listens to, each with its listener once set up. The lock is held to
    /// find, add or drop a room's entry, never while NATS is asked: held across one room's set-up
    /// (3 s for a history stream JetStream refuses) it held up every subscribe and unsubscribe
    /// of every tenant (outside audit 67, F2). Every subscriber of a room waits for the set-up
    /// (`add_interest`), not only the first: a second one was told `Subscribed` before the room
    /// was listened to and lost what was published meanwhile (F3).
    interest: std::sync::Mutex<HashMap<RoomKey, Arc<Interest>>>,
    /// Per (tenant, history namespace) with local interest, the one live consumer's listener
    /// and the rooms it delivers to (`history::Live`).
    live: std::sync::Mutex<HashMap<(TenantId, String), Arc<history::Live>>>,
    /// History reads (replays, pages, presence listings) in progress, each holding a short-lived
    /// consumer until it is deleted: at most `history::MAX_READS` at once.
    reads: Arc<read_slots::ReadSlots>,
    /// Names this instance's consumers (`quiver_<instance>_<n>`), so it can delete them by name.
    consumer_prefix: String,
    consumer_serial: std::sync::atomic::AtomicU64,
    presence: OnceCell<jetstream::kv::Store>,
    /// This instance's presence entries (KV key → user), re-put every third of the TTL so they
    /// outlive nothing but a dead instance.
    local_presence: Arc<std::sync::Mutex<HashMap<String, Bytes>>>,
    /// The instance has departed (`depart_now`: a drain's deadline with sessions open): set
    /// under `local_presence`'s lock as the entries are taken, so no join lists anyone after it
    /// and no leave announces a second `Left`.
    departed: std::sync::atomic::AtomicBool,
    /// Wakes the presence refresh at once: after a reconnect, the bucket may be gone.
    presence_nudge: Arc<tokio::sync::Notify>,
    /// When the broker was made: its first connection is waited for until `JS_TIMEOUT` after.
    started: tokio::time::Instant,
}

fn events_subject(key: &RoomKey) -> String {
    format!("quiver.{}.events.{}", key.tenant, key.room)
}

pub fn subject(key: &RoomKey) -> String {
    format!("quiver.{}.room.{}", key.tenant, key.room)
}

/// A NATS error: the broker's words, never a client's to read (see [`BrokerError::Failed`]).
fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Failed(e.to_string())
}

impl NatsBroker {
    pub async fn connect(
        nats: &NatsConfig,
        hub: Arc<Hub>,
        config: Arc<Config>,
    ) -> Result<Self, BrokerError> {
        // Each history namespace's backlog is on the page from the start (README, Metrics), at
        // zero until a consumer of this node reports one: a node that only publishes had none
        // (outside ops audit 3, F2).
        for namespace in config.namespaces.iter().filter(|n| n.history_size > 0) {
            metrics::gauge!(m::JETSTREAM_CONSUMER_PENDING, "namespace" => namespace.name.clone())
                .set(0.0);
        }
        let (connected_tx, connected_rx) = mpsc::unbounded_channel();
        let url = redacted_urls(&nats.url);
        // Whether this outage was logged: connection failures repeat at every retry (several a
        // second), and are worth one WARN line until NATS is back.
        let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = async_nats::ConnectOptions::new()
            .name("quiver")
            // Start even when NATS is down; /readyz says so until it is reachable.
            .retry_on_initial_connect()
            // A byte bound on what each room's subscription buffers, not 65,536 messages.
            .subscription_capacity(broker_subscription_capacity(config.limits.max_payload))
            .event_callback(move |event| {
                let connected = connected_tx.clone();
                let url = url.clone();
                let warned = warned.clone();
                async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    match event {
                        async_nats::Event::Connected => {
                            info!("nats connected");
                            warned.store(false, Relaxed);
                            let _ = connected.send(true);
                        }
                        // Once per loss: async-nats then retries quietly until `Connected`.
                        async_nats::Event::Disconnected => {
                            metrics::counter!(m::NATS_DISCONNECTS, "connection" => "broker")
                                .increment(1);
                            if !warned.swap(true, Relaxed) {
                                warn!(%url, "nats disconnected; reconnecting");
                            }
                            let _ = connected.send(false);
                        }
                        // One event per dropped message: counted twice (the deliveries lost,
                        // and the connection's drops beside the others'), logged within a budget.
                        async_nats::Event::SlowConsumer(sid) => {
                            connection::slow_consumer("broker", sid, connection::OnDrop::Delivery)
                        }
                        async_nats::Event::ClientError(e) => {
                            if !warned.swap(true, Relaxed) {
                                warn!(%url, error = %e, "cannot reach nats; retrying");
                            } else {
                                debug!(%url, error = %e, "nats connection attempt failed");
                            }
                        }
                        other => info!(event = %other, "nats"),
                    }
                }
            });
        let client = connect_with(nats, options).await?;
        let storage = match nats.storage.as_str() {
            "file" => stream::StorageType::File,
            _ => stream::StorageType::Memory,
        };
        let inner = Arc::new(Inner {
            js: jetstream::new(client.clone()),
            client,
            hub,
            config,
            storage,
            streams: Mutex::new(HashMap::new()),
            health: health::Health::default(),
            high_water: std::sync::Mutex::default(),
            interest: std::sync::Mutex::new(HashMap::new()),
            live: std::sync::Mutex::default(),
            reads: read_slots::ReadSlots::new(history::MAX_READS),
            consumer_prefix: history::instance_prefix(),
            consumer_serial: std::sync::atomic::AtomicU64::new(0),
            presence: OnceCell::new(),
            local_presence: Arc::default(),
            departed: std::sync::atomic::AtomicBool::new(false),
            presence_nudge: Arc::default(),
            started: tokio::time::Instant::now(),
        });
        inner.spawn_presence_refresh(nats.presence_ttl);
        tokio::spawn(supervise(Arc::downgrade(&inner), connected_rx));
        Ok(Self { inner })
    }
}

impl Inner {
    /// Whether NATS is connected now. What no client waits for (the presence refresh, history
    /// listeners rebuilding) asks NATS nothing otherwise: async-nats would hold the request in
    /// its queue until NATS is back, and requests repeated through an outage filled it, after
    /// which every call to NATS waited for the end of the outage (outside cluster audit 112,
    /// F1). A reconnect wakes them (a new generation; the refresh's nudge).
    fn connected(&self) -> bool {
        connection::is_connected(&self.client)
    }

    /// Refuses at once while NATS is known to be disconnected, rather than after waiting out
    /// the operation's deadline (`JS_TIMEOUT`). The first connection, pending just after start,
    /// is waited for within that deadline; still pending past it, NATS was down when the
    /// instance started, and is as unreachable as after a disconnect (outside cluster audit 5,
    /// F1: every live room's `Subscribe` waited 3 s for presence, one after another).
    fn reachable(&self) -> Result<(), BrokerError> {
        use async_nats::connection::State;
        match self.client.connection_state() {
            State::Disconnected => Err(BrokerError::Unavailable("NATS is disconnected".into())),
            State::Pending if !self.first_connection_due() => {
                Err(BrokerError::Unavailable("NATS is not connected yet".into()))
            }
            _ => Ok(()),
        }
    }

    /// Whether a pending connection is still the first one being made, within `JS_TIMEOUT` of
    /// the start (past it, NATS was down when the instance started).
    fn first_connection_due(&self) -> bool {
        self.started.elapsed() < JS_TIMEOUT
    }

    /// Whether NATS is connected, waiting for the first connection while it is pending just
    /// after start (within `JS_TIMEOUT` of it, as [`Self::reachable`] lets it be): a publication
    /// in the instance's first moments was refused `unavailable` although NATS was about to be
    /// there (a CI run under load). Polled: only the first moments after start ever wait.
    async fn first_connection(&self) -> bool {
        use async_nats::connection::State;
        loop {
            match self.client.connection_state() {
                State::Connected => return true,
                State::Pending if self.first_connection_due() => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return false,
            }
        }
    }

    /// `once`: the stored publication's `Nats-Msg-Id` (`Broker::publish_once`).
    async fn publish_now(
        self: &Arc<Self>,
        key: RoomKey,
        payload: Bytes,
        once: Option<String>,
    ) -> Result<Option<Position>, BrokerError> {
        let connected = self.first_connection().await;
        let result = match self.config.history(&key.room) {
            // Refused at once while disconnected: async-nats would queue the message and send
            // it on reconnect, so a live one would be said Ok and a stored one stored after its
            // `unavailable` (a retry would then duplicate it).
            _ if !connected => Err(BrokerError::Unavailable("NATS is disconnected".into())),
            // Bounded too: NATS frozen and not yet known to be (the pings notice it within
            // about 6 s), the socket and then async-nats' queue fill, and the publish waited
            // for room there through the freeze and the reconnect after it, to be answered
            // `Published` and delivered minutes late (outside cluster audit 112, F1). One not
            // taken in time is not published: the queue had no room for it, and it is dropped
            // with the wait.
            None => {
                let sending =
                    self.client
                        .publish_with_headers(subject(&key), lag::stamp(), payload);
                match tokio::time::timeout(JS_TIMEOUT, sending).await {
                    Ok(sent) => sent.map(|()| None).map_err(unavailable),
                    Err(_) => Err(BrokerError::Unavailable(format!(
                        "NATS took no publication for {} s: not published",
                        JS_TIMEOUT.as_secs()
                    ))),
                }
            }
            // Waits for the stored ack (bounded).
            Some(ns) => self
                .publish_history(&key, ns, payload, once.as_deref())
                .await
                .map(Some),
        };
        if result.is_err() {
            metrics::counter!(m::PUBLICATIONS_DROPPED, "reason" => "broker_unavailable")
                .increment(1);
        }
        result
    }

    async fn recover_now(
        self: &Arc<Self>,
        key: RoomKey,
        since: Option<Position>,
    ) -> Result<Recovered, BrokerError> {
        match self.config.history(&key.room) {
            None => Ok(Recovered::default()),
            Some(ns) => {
                self.recover_history(&key, ns, since, history_read::Reach::Replay)
                    .await
            }
        }
    }
}

impl Broker for NatsBroker {
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        Box::pin(self.inner.publish_now(key, payload, None))
    }

    fn publish_once(
        &self,
        key: RoomKey,
        payload: Bytes,
        id: String,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        Box::pin(self.inner.publish_now(key, payload, Some(id)))
    }

    fn add_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let interest = self
                .inner
                .interest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default()
                .clone();
            // Whatever the end (done, failed, or this future dropped), a room left with no
            // subscriber meanwhile is retired: `retire_room` leaves a room being set up alone.
            let setting_up = SettingUp {
                inner: &self.inner,
                key: &key,
                interest: Some(interest),
            };
            // Borrowed from the guard, whose `Drop` lets go of it first (the `Option`).
            let Some(interest) = setting_up.interest.as_ref() else {
                return Ok(());
            };
            interest.ready(|| self.inner.listen(key.clone())).await
        })
    }

    fn remove_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            drop(self.inner.retire_room(&key));
            Ok(())
        })
    }

    fn recover(
        &self,
        key: RoomKey,
        since: Option<Position>,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>> {
        Box::pin(self.inner.recover_now(key, since))
    }

    fn recover_some(
        &self,
        key: RoomKey,
        since: Position,
        max: usize,
        max_bytes: usize,
        from_oldest: bool,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>> {
        Box::pin(async move {
            match self.inner.config.history(&key.room) {
                None => Ok(Recovered::default()),
                Some(ns) => {
                    let reach = history_read::Reach::Page {
                        max,
                        max_bytes,
                        from_oldest,
                    };
                    self.inner
                        .recover_history(&key, ns, Some(since), reach)
                        .await
                }
            }
        })
    }

    fn first_kept(&self, key: RoomKey) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        Box::pin(async move {
            match self.inner.config.history(&key.room) {
                None => Ok(None),
                Some(ns) => self.inner.first_kept(&key, ns).await,
            }
        })
    }

    fn announce(&self, key: RoomKey, frame: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // Not handed over while NATS is known to be away, and not waited for past the
            // bound: async-nats holds what it is given until NATS is back, so a `Joined` or
            // `Left` went out minutes after the member came or went, and once its queue was
            // full the `Subscribe`, `Unsubscribe` or session end announcing it waited for NATS
            // (outside cluster audit 112, F1). An event dropped with the wait was never queued.
            self.inner.reachable()?;
            bounded("presence event", async {
                self.inner
                    .client
                    .publish(events_subject(&key), frame)
                    .await
                    .map_err(unavailable)
            })
            .await
        })
    }

    fn join(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.inner.join_now(key, member))
    }

    fn leave(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.inner.leave_now(key, member))
    }

    fn depart(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.depart_now())
    }

    fn members(&self, key: RoomKey) -> BoxFuture<'_, Result<Vec<Member>, BrokerError>> {
        Box::pin(async move {
            // At once during an outage, as publishes are, rather than after the NATS client's
            // own request timeout.
            self.inner.reachable()?;
            bounded("presence", self.inner.members_now(key)).await
        })
    }

    fn is_ready(&self) -> bool {
        connection::is_connected(&self.inner.client) && self.inner.health.ready()
    }
}

impl Drop for NatsBroker {
    /// Listener tasks hold the broker's state: end them with it.
    fn drop(&mut self) {
        let rooms = std::mem::take(
            &mut *self
                .inner
                .interest
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        drop(rooms);
        let live: Vec<_> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, live)| live)
            .collect();
        for live in live {
            live.abort();
        }
    }
}
