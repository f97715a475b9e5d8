//! History rooms on JetStream: one stream per (tenant, namespace), positions, resume, and the
//! per-room listener that keeps delivering across NATS restarts.
//!
//! **Why a stream per tenant.** A position's offset is the stream sequence. With one stream
//! per namespace shared by all tenants, the gap between two of a tenant's offsets counted
//! everyone else's publications (issue 10, defect 7). A tenant's stream holds only its own
//! rooms, so its offsets reveal nothing about any other tenant. Streams are created on first
//! use; there are at most tenants × history namespaces of them, and tenants only come from
//! tokens the operator signs.
//!
//! **Resume from any position.** Offsets are not contiguous within a room (the tenant's other
//! rooms of the namespace share the sequence), so "is everything after P still here?" cannot
//! be answered by looking for P itself. JetStream only ever removes a room's *oldest*
//! messages (per-subject count, age and byte limits all cut from the front), so a room's kept
//! messages are always the tail of what it had. From that:
//! - if the room keeps a message at or before `P + 1`, nothing after P is missing;
//! - otherwise something after P was removed only if the per-room count limit cut it (and
//!   then the room stays at that limit until age or bytes cut further, which also moves the
//!   stream's first sequence past P + 1) or age/bytes cut it (which moves the first sequence
//!   past it). So: fewer than the per-room limit kept and the stream's first sequence at most
//!   `P + 1` means nothing is missing. "The per-room limit" is the lowest the stream has ever
//!   had (a room cut to 50 stays at 50 when the limit is raised to 200, so "fewer than 200"
//!   would prove nothing): `history_size` raised or lowered between starts is applied to the
//!   existing stream, which keeps its lowest limit in its metadata ([`room_limit_floor`]),
//!   and a read judges by the smallest of that, the stream's limit and its own `history_size`.
//!
//! Anything else is answered `Failed`: never a replay with a hidden gap.
//!
//! **Positions.** The rooms of a stream share its sequence (one epoch per stream), so `P` may
//! be any sequence of the epoch up to the room's current position (PROTOCOL.md §5), another
//! room's included: the replay is what the room kept after it. A `P` past the room's last kept
//! publication is beyond its current position: `Failed`, as the embedded broker answers.
//!
//! **Consumers are bounded.** A stream allows a limited number of consumers (NATS's
//! `max_consumers`, 1,000 by default in some deployments, shared by every instance), so no
//! client may make them grow:
//! - live delivery uses one ordered consumer per stream with local interest (not per room),
//!   fanned out here to the rooms registered on it ([`Live`]); it outlives the stream's last
//!   local room by `LIVE_LINGER` (so Subscribe/Unsubscribe churn creates none) and is then
//!   deleted. While it is replaced (a reconnect) the old one is deleted too.
//! - a replay (resume, `History` page) or a presence listing takes one of `MAX_READS` slots
//!   per instance, creates a consumer for that read only, and deletes it as soon as the read
//!   ends; the slot is given back once the deletion is confirmed, or after `READ_INACTIVE`,
//!   the consumer's own inactivity threshold, if it could not be. Beyond the slots, a read
//!   waits at most 3 s and is then answered `unavailable` (retry).
//!
//! So one instance holds at most 1 live consumer per stream (2 for the moment one replaces
//! another), plus `MAX_READS` read consumers in all; N instances hold at most
//! N × (2 + `MAX_READS`) on one stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Position, TenantId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

mod backlog;

use self::backlog::BacklogPart;
use super::read_slots::ReadSlot;
use super::{bounded, subject, unavailable, Inner, JS_TIMEOUT};
use crate::broker::BrokerError;
use crate::config::NamespaceConfig;
use crate::hub::RoomKey;

/// Read consumers (replays, history pages, presence listings) one instance holds at once.
pub const MAX_READS: usize = 32;
/// A read consumer's inactivity threshold: only matters when its deletion failed.
const READ_INACTIVE: Duration = Duration::from_secs(5);
/// How long a stream's live consumer outlives the stream's last local room.
const LIVE_LINGER: Duration = Duration::from_secs(10);
/// Most publications one pull of a read consumer asks for.
pub(super) const READ_BATCH: usize = 256;

/// The stream metadata key of the lowest per-room limit the stream has ever had
/// ([`room_limit_floor`]).
const PER_ROOM_FLOOR: &str = "quiver_per_room_floor";

/// What a stream's largest message may take beyond `max_payload`: Quiver's headers (send time,
/// idempotency id) and NATS's own.
const STREAM_HEADER_ROOM: i32 = 4096;

/// A JetStream limit: 0 or less is none.
fn limit_or_max(limit: i64) -> u64 {
    u64::try_from(limit)
        .ok()
        .filter(|l| *l > 0)
        .unwrap_or(u64::MAX)
}

/// The per-room count limit that can have cut a room of this stream: the lower of its limit
/// now and the lowest it ever had (kept in its metadata since this version; a stream made
/// before never had its limits changed, so its own limit is its floor).
pub(super) fn room_limit_floor(config: &stream::Config) -> u64 {
    let now = limit_or_max(config.max_messages_per_subject);
    config
        .metadata
        .get(PER_ROOM_FLOOR)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(now, |floor| floor.min(now))
}

/// A history stream's limits, as this configuration wants them or as the stream has them.
#[derive(Debug, PartialEq, Eq)]
struct Limits {
    /// `history_size` (JetStream: -1 for none).
    per_room: i64,
    max_age: Duration,
    max_bytes: i64,
    /// The largest message the stream takes (`max_payload` and [`STREAM_HEADER_ROOM`]).
    max_message: i32,
}

/// A tenant's stream for one history namespace.
#[derive(Clone)]
pub struct TenantStream {
    pub stream: stream::Stream,
    /// The stream's creation time: a stream lost and created again is a new epoch.
    pub epoch: u64,
}

/// A stream's epoch: its creation time (odd, so never 0), which a stream lost and created
/// again does not share.
pub(super) fn epoch_of(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(1) | 1
}

/// `QUIVER_<tenant length>_<tenant>_<namespace>`: the length keeps it unambiguous (both parts
/// may contain `_`), and neither part can contain what stream names forbid (`.`, `*`, `>`,
/// whitespace, path separators). At most 7 + 2 + 64 + 1 + 128 bytes.
pub fn stream_name(tenant: &TenantId, ns: &str) -> String {
    format!("QUIVER_{}_{}_{}", tenant.as_str().len(), tenant, ns)
}

impl Inner {
    /// The tenant's stream of `ns`, created (or found, and its limits brought up to date) on
    /// first use.
    ///
    /// The set-up runs in a task of its own. A `OnceCell`'s initialisation runs inside the
    /// first caller's future, and every other caller waits for it: a first caller whose future
    /// is not polled meanwhile held up every other, a session's queued `Publish` (polled only
    /// between its commands) the `History` or `Subscribe` right behind it, until both were
    /// refused `unavailable` after 3 s (outside audit 21, F2).
    pub(super) async fn tenant_stream(
        self: &Arc<Self>,
        tenant: &TenantId,
        ns: &NamespaceConfig,
    ) -> Result<TenantStream, BrokerError> {
        let cell = {
            let mut streams = self.streams.lock().await;
            streams
                .entry((tenant.clone(), ns.name.clone()))
                .or_default()
                .clone()
        };
        if let Some(ready) = cell.get() {
            return Ok(ready.clone());
        }
        let (this, tenant, ns) = (self.clone(), tenant.clone(), ns.clone());
        let setup = tokio::spawn(async move {
            bounded(
                "stream set-up",
                cell.get_or_try_init(|| this.set_up_stream(&tenant, &ns)),
            )
            .await
            .cloned()
        });
        setup
            .await
            .map_err(|e| BrokerError::Failed(format!("stream set-up ended: {e}")))?
    }

    async fn set_up_stream(
        &self,
        tenant: &TenantId,
        ns: &NamespaceConfig,
    ) -> Result<TenantStream, BrokerError> {
        let name = stream_name(tenant, &ns.name);
        let seen = self.high_water(tenant, &ns.name);
        let config_limits = Limits {
            per_room: i64::try_from(ns.history_size).unwrap_or(i64::MAX),
            max_age: ns.history_ttl,
            max_bytes: i64::try_from(self.config.limits.history_tenant_max_bytes)
                .unwrap_or(i64::MAX),
            max_message: i32::try_from(self.config.limits.max_payload)
                .unwrap_or(i32::MAX)
                .saturating_add(STREAM_HEADER_ROOM),
        };
        let config = stream::Config {
            // Only used when the stream is created (see `Inner::high_water`).
            first_sequence: (seen > 0).then_some(seen + 1),
            name: name.clone(),
            subjects: vec![
                format!("quiver.{tenant}.room.{}", ns.name),
                format!("quiver.{tenant}.room.{}.>", ns.name),
            ],
            max_messages_per_subject: config_limits.per_room,
            max_age: config_limits.max_age,
            max_bytes: config_limits.max_bytes,
            // The stream refuses what no subscriber could take: only a publisher other
            // than Quiver sends more (outside cluster audit 6, F1).
            max_message_size: config_limits.max_message,
            storage: self.storage,
            allow_direct: true,
            metadata: HashMap::from([(
                PER_ROOM_FLOOR.to_owned(),
                config_limits.per_room.to_string(),
            )]),
            ..Default::default()
        };
        let mut stream = self.js.get_or_create_stream(config).await.map_err(|e| {
            if e.to_string().contains("overlap") {
                BrokerError::Failed(format!(
                    "creating stream {name}: {e}. A stream of an older Quiver (QUIVER_{ns}, one \
                     for all tenants) still holds these subjects; remove it \
                     (`nats stream rm QUIVER_{ns}`): its positions cannot be resumed anyway",
                    ns = ns.name
                ))
            } else {
                unavailable(e)
            }
        })?;
        let info = stream.info().await.map_err(unavailable)?.clone();
        let epoch = epoch_of(&info);
        if info.config.storage != self.storage {
            // JetStream cannot change a stream's storage, and copying it would change
            // every position: said loudly instead of ignored (outside audit).
            warn!(
                stream = %name,
                has = ?info.config.storage,
                configured = ?self.storage,
                "nats.storage applies to streams created from now on: delete this \
                 stream to switch it (`nats stream rm`; its history is lost)"
            );
        }
        self.bring_limits_up_to_date(&name, info.config, &config_limits)
            .await?;
        Ok(TenantStream { stream, epoch })
    }

    /// A stream made by an earlier start (or another instance) with other limits is brought
    /// to this configuration's: `get_or_create_stream` leaves an existing stream as it is, so
    /// a raised `history_size` or `history_ttl` never applied (outside audit: a resume across
    /// what the old, smaller limit had cut was answered `Recovered` by an instance that
    /// believed the new one). Reads still check the stream's limit as it is then
    /// (`history_read.rs`), since instances configured differently overwrite each other's.
    async fn bring_limits_up_to_date(
        &self,
        name: &str,
        current: stream::Config,
        wanted: &Limits,
    ) -> Result<(), BrokerError> {
        let now = Limits {
            per_room: current.max_messages_per_subject,
            max_age: current.max_age,
            max_bytes: current.max_bytes,
            max_message: current.max_message_size,
        };
        if now == *wanted && current.metadata.contains_key(PER_ROOM_FLOOR) {
            return Ok(());
        }
        // The lowest per-room limit the stream has had stays with it: a room cut to it and
        // not yet refilled keeps fewer than a raised limit, which alone tells nothing.
        let floor = [room_limit_floor(&current), limit_or_max(wanted.per_room)]
            .into_iter()
            .min()
            .unwrap_or(u64::MAX);
        warn!(
            stream = name,
            from = ?now,
            to = ?wanted,
            "history limits of an existing stream changed to this configuration's"
        );
        let mut metadata = current.metadata.clone();
        metadata.insert(PER_ROOM_FLOOR.to_owned(), floor.to_string());
        let config = stream::Config {
            max_messages_per_subject: wanted.per_room,
            max_age: wanted.max_age,
            max_bytes: wanted.max_bytes,
            max_message_size: wanted.max_message,
            metadata,
            ..current
        };
        self.js.update_stream(config).await.map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn publish_history(
        self: &Arc<Self>,
        key: &RoomKey,
        ns: &NamespaceConfig,
        payload: Bytes,
        once: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let TenantStream { epoch, .. } = self.tenant_stream(&key.tenant, ns).await?;
        let mut headers = super::lag::stamp();
        if let Some(id) = once {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        // Awaiting the ack: a publication to a history room is stored, or refused.
        let started = std::time::Instant::now();
        let store = async {
            let pending = self
                .js
                .publish_with_headers(subject(key), headers, payload)
                .await
                .map_err(unavailable)?;
            pending.await.map_err(unavailable)
        };
        // A publication handed over and not confirmed in time may be stored all the same (a
        // stalled NATS that comes back stores it): the refusal says so, so that a client does
        // not take "unavailable" for "not published" and send it again (outside audit 30, F3).
        let ack = tokio::time::timeout(JS_TIMEOUT, store)
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "stored publish not confirmed within {} s: it may still be stored (read \
                     History before publishing it again)",
                    JS_TIMEOUT.as_secs()
                ))
            })??;
        metrics::histogram!(crate::metrics::JETSTREAM_PUBLISH_DURATION)
            .record(started.elapsed().as_secs_f64());
        self.saw(&key.tenant, &ns.name, ack.sequence);
        Ok(Position {
            epoch,
            offset: ack.sequence,
        })
    }

    fn high_water(&self, tenant: &TenantId, ns: &str) -> u64 {
        self.high_water
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.clone(), ns.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn saw(&self, tenant: &TenantId, ns: &str, sequence: u64) {
        let mut seen = self.high_water.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry((tenant.clone(), ns.to_owned())).or_default();
        *entry = (*entry).max(sequence);
    }

    /// The room's oldest kept publication, for `History` without `since`.
    pub(super) async fn first_kept(
        self: &Arc<Self>,
        key: &RoomKey,
        ns: &NamespaceConfig,
    ) -> Result<Option<Position>, BrokerError> {
        self.reachable()?;
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, ns).await?;
        let subject = subject(key);
        bounded("history first", async move {
            match stream.direct_get_first_for_subject(subject).await {
                Ok(msg) => Ok(Some(Position {
                    epoch,
                    offset: msg.sequence,
                })),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    /// Starts delivering a history room to the hub: registers it with its stream's live
    /// listener (started if this is the stream's first room here). Returns once that listener's
    /// consumer exists, so everything stored after this returns reaches the room (the subscribe
    /// reads history only then: no gap at the seam). Dropping the returned registration (the
    /// room's last local subscriber left) takes the room off the listener.
    pub(super) async fn listen_history(
        self: &Arc<Self>,
        key: RoomKey,
        ns: NamespaceConfig,
    ) -> Result<Registration, BrokerError> {
        // A history room's listener needs JetStream (a live room's core subscription is made
        // again by the client on reconnect, so it is not refused).
        self.reachable()?;
        let room_subject = subject(&key);
        let room = Arc::new(key.clone());
        let live = {
            let mut all = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let stream_key = (key.tenant.clone(), ns.name.clone());
            let live = all
                .entry(stream_key.clone())
                .or_insert_with(|| {
                    let live = Arc::new(Live::default());
                    let task =
                        tokio::spawn(self.clone().run_live(live.clone(), stream_key, ns.clone()));
                    *live.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                    live
                })
                .clone();
            // Under the map's lock: a listener retires only under it, with no room left.
            live.rooms
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room_subject.clone(), room.clone());
            live
        };
        let registration = Registration {
            live: live.clone(),
            subject: room_subject,
            room,
        };
        let mut started = live.started.subscribe();
        let waited = bounded("history listener set-up", async {
            started
                .wait_for(|started| *started)
                .await
                .map(drop)
                .map_err(|_| BrokerError::Unavailable("history listener ended".into()))
        })
        .await;
        match waited {
            Ok(()) => Ok(registration),
            // The broker refusing the listener (its stream cannot be made: JetStream full,
            // say) is that refusal, logged as one, not a timeout (outside audit 42, 2).
            Err(timeout) => Err(live
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map_or(timeout, BrokerError::Failed)),
        }
    }

    /// A stream's live listener: one ordered consumer over all of the stream's subjects (the
    /// stream holds only this tenant's rooms of this namespace), rebuilt from the last
    /// delivered sequence whenever NATS reconnects or the consumer fails, delivering each
    /// publication to its room if the room has local interest. Ends (and deletes its
    /// consumer) once no room is registered for `LIVE_LINGER`.
    async fn run_live(
        self: Arc<Self>,
        live: Arc<Live>,
        stream_key: (TenantId, String),
        ns: NamespaceConfig,
    ) {
        let listener = self.health.new_listener();
        let _forget = Forget(self.clone(), listener);
        let mut generations = self.health.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since = None;
        let mut cursor = None;
        // This listener's part of the namespace's backlog gauge, taken out when it ends.
        let mut backlog = BacklogPart::new(&stream_key.1);
        // The consumer this listener holds now (to delete when it is replaced or retired).
        let mut held: Option<(stream::Stream, String)> = None;
        let mut pause = Duration::from_millis(25);
        loop {
            let generation = *generations.borrow_and_update();
            if !self.connected() {
                // Nothing is asked of NATS while it is away (`Inner::connected`): retried every
                // half second, each failed attempt with a consumer delete behind it, the
                // requests filled async-nats' queue through an outage (outside cluster audit
                // 112, F1). The reconnect's new generation (after this borrow) wakes it.
                tokio::select! {
                    changed = generations.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tick.tick() => {
                        if self.retire(&live, &stream_key, &mut idle_since) {
                            break;
                        }
                    }
                }
                continue;
            }
            match self.live_consumer(&stream_key.0, &ns, &mut cursor).await {
                Ok((messages, stream, name)) => {
                    *live.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    if let Some((old_stream, old)) = held.replace((stream, name)) {
                        // A reconnect without a NATS restart leaves the old one in place.
                        tokio::spawn(async move { delete_consumer(&old_stream, &old).await });
                    }
                    self.health.built(listener, generation);
                    live.started.send_replace(true);
                    pause = Duration::from_millis(25);
                    let Some(cursor) = cursor.as_mut() else {
                        // `live_consumer` sets the cursor whenever it succeeds.
                        return;
                    };
                    let broken = self
                        .deliver_live(
                            &live,
                            &stream_key,
                            messages,
                            cursor,
                            &mut generations,
                            &mut tick,
                            &mut idle_since,
                            &mut backlog,
                        )
                        .await;
                    match broken {
                        Broken::Gone => return,
                        Broken::Idle => break,
                        Broken::Reconnected => {}
                        // Not in a tight loop if the new consumer fails at once as well.
                        Broken::Failed => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                Err(e) => {
                    debug!(stream = %stream_name(&stream_key.0, &stream_key.1), error = %e,
                        "history consumer not built yet");
                    if let BrokerError::Failed(detail) = &e {
                        *live.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(detail.clone());
                    }
                    // Retry soon (NATS answering is what we wait for), sooner after a
                    // reconnect; stop retrying once nobody here wants the stream.
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        changed = generations.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                        _ = tick.tick() => {
                            if self.retire(&live, &stream_key, &mut idle_since) {
                                break;
                            }
                        }
                    }
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        if let Some((stream, name)) = held {
            delete_consumer(&stream, &name).await;
        }
    }

    /// The live consumer from the cursor (from the stream's next sequence the first time).
    async fn live_consumer(
        self: &Arc<Self>,
        tenant: &TenantId,
        ns: &NamespaceConfig,
        cursor: &mut Option<Cursor>,
    ) -> Result<(consumer::pull::Ordered, stream::Stream, String), BrokerError> {
        let TenantStream { stream, epoch } = self.tenant_stream(tenant, ns).await?;
        let next = match cursor {
            Some(cursor) if cursor.epoch == epoch => cursor.next,
            Some(cursor) => {
                // The stream was lost with NATS (memory storage) and created again, from the
                // highest sequence seen here or from 1: read it from its start.
                warn!(stream = %stream_name(tenant, &ns.name),
                    "history stream was recreated: its history is lost");
                // Its first sequence is the one it was created with (above what its creator
                // had seen), not 1: what it has lost since is a gap.
                let first = stream
                    .cached_info()
                    .config
                    .first_sequence
                    .unwrap_or(1)
                    .max(1);
                *cursor = Cursor {
                    epoch,
                    next: first,
                    owed: true,
                };
                first
            }
            None => {
                let last = bounded("stream info", async {
                    stream.get_info().await.map_err(unavailable)
                })
                .await?
                .state
                .last_sequence;
                *cursor = Some(Cursor {
                    epoch,
                    next: last + 1,
                    owed: false,
                });
                last + 1
            }
        };
        let name = self.consumer_name();
        let messages = bounded("consumer set-up", async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    // The stream holds only this namespace's rooms of this tenant: no filter.
                    name: Some(name.clone()),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            consumer.messages().await.map_err(unavailable)
        })
        .await;
        match messages {
            Ok(messages) => Ok((messages, stream, name)),
            Err(e) => {
                // It may exist even so (a timed-out answer): never leave it to its threshold.
                tokio::spawn(async move { delete_consumer(&stream, &name).await });
                Err(e)
            }
        }
    }

    /// Delivers until the consumer fails or ends, NATS reconnected, or the listener retired.
    ///
    /// **Gaps.** The consumer has no filter, so it is handed every message of the stream, in
    /// sequence order, that the stream still holds when the consumer gets to it. A stream's
    /// sequence is advanced only by storing a message: a duplicate `Nats-Msg-Id`, a message
    /// over the size limit and a failed expectation are refused without one, and the stream
    /// allows neither rollups nor per-message TTLs. So a delivery past `cursor.next` means the
    /// messages in between were removed before this consumer got them: the room limits
    /// (`history_size`, `history_ttl`, the tenant's bytes) cut them while this instance was
    /// behind (frozen, cut off from NATS, or rebuilding its consumer), or an operator deleted
    /// or purged them. Either way they never reached this instance's subscribers, whose rooms
    /// we cannot tell (the messages are gone), so every room of the stream with subscribers
    /// here is ended with 117 (PROTOCOL.md §5): their clients resume from their last
    /// position, and the resume says whether their room lost anything (outside cluster audit
    /// 112, F3: they were left open with a gap, and a later resume answered `Recovered`).
    #[allow(clippy::too_many_arguments)]
    async fn deliver_live(
        &self,
        live: &Arc<Live>,
        stream_key: &(TenantId, String),
        mut messages: consumer::pull::Ordered,
        cursor: &mut Cursor,
        generations: &mut tokio::sync::watch::Receiver<u64>,
        tick: &mut tokio::time::Interval,
        idle_since: &mut Option<Instant>,
        backlog: &mut BacklogPart,
    ) -> Broken {
        // This consumer's first delivery is checked when the cursor is owed; every delivery
        // after it is, and so is any later consumer's.
        let mut check = std::mem::replace(&mut cursor.owed, true);
        // The consumer's backlog as of its last delivery, handed to the gauge at each tick
        // rather than at each delivery (it takes a lock shared by the namespace's streams).
        let mut pending = None;
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        let Ok(info) = msg.info() else { continue };
                        let offset = info.stream_sequence;
                        pending = Some(info.pending);
                        if check && offset > cursor.next {
                            self.lost(live, stream_key, offset - cursor.next);
                        }
                        check = true;
                        cursor.next = offset + 1;
                        let room = live
                            .rooms
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(msg.subject.as_str())
                            .cloned();
                        // Rooms nobody here subscribes to are skipped.
                        let max = self.config.limits.max_payload;
                        if let Some(room) = room.filter(|room| super::fits(room, msg.payload.len(), max)) {
                            super::lag::record(msg.headers.as_ref());
                            let position = Position { epoch: cursor.epoch, offset };
                            self.hub.deliver(&room, Some(position), msg.payload.clone());
                        }
                    }
                    Some(Err(e)) => {
                        debug!(namespace = %stream_key.1, error = %e,
                            "history consumer failed; rebuilding");
                        return Broken::Failed;
                    }
                    None => return Broken::Failed,
                },
                changed = generations.changed() => {
                    if changed.is_err() {
                        return Broken::Gone;
                    }
                    debug!(namespace = %stream_key.1, "NATS reconnected; rebuilding the history consumer");
                    // Before anyone creates the stream again (see `Inner::high_water`).
                    self.saw(&stream_key.0, &stream_key.1, cursor.next - 1);
                    return Broken::Reconnected;
                }
                _ = tick.tick() => {
                    if let Some(pending) = pending.take() {
                        backlog.set(pending);
                    }
                    if self.retire(live, stream_key, idle_since) {
                        return Broken::Idle;
                    }
                }
            }
        }
    }

    /// `missed` publications of the stream never reached this instance (see `deliver_live`):
    /// every local subscription of the stream's rooms is ended, and the loss counted.
    fn lost(&self, live: &Live, stream_key: &(TenantId, String), missed: u64) {
        let rooms: Vec<Arc<RoomKey>> = live
            .rooms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let ended: usize = rooms
            .iter()
            .map(|room| self.hub.end_room(room, crate::hub::BROKER_GAP))
            .sum();
        metrics::counter!(crate::metrics::DELIVERIES_DROPPED, "reason" => "broker_gap")
            .increment(missed);
        // An instance that stays too slow for its streams falls behind again and again: a few
        // lines a second at most, the counter has every one.
        static LOG: crate::log_budget::LogBudget = crate::log_budget::LogBudget::per_second(3);
        if let Some(not_logged) = LOG.admit() {
            warn!(stream = %stream_name(&stream_key.0, &stream_key.1), missed,
                subscriptions = ended, not_logged,
                "this instance's history consumer fell behind the stream's limits and missed \
                 publications: the subscriptions of its rooms here are ended (117)");
        }
    }

    /// Whether the listener should end: no room registered for `LIVE_LINGER`. It is then taken
    /// out of the map under the map's lock, where rooms register, so no room joins it after.
    fn retire(
        &self,
        live: &Arc<Live>,
        stream_key: &(TenantId, String),
        idle_since: &mut Option<Instant>,
    ) -> bool {
        let empty = || {
            live.rooms
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        };
        if !empty() {
            *idle_since = None;
            return false;
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < LIVE_LINGER {
            return false;
        }
        let mut all = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if !empty() {
            *idle_since = None;
            return false;
        }
        if all.get(stream_key).is_some_and(|l| Arc::ptr_eq(l, live)) {
            all.remove(stream_key);
        }
        true
    }

    /// A name for a new consumer of this instance: unique, so it can be deleted by name.
    fn consumer_name(&self) -> String {
        let n = self
            .consumer_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("quiver_{}_{n}", self.consumer_prefix)
    }

    /// A slot for one short-lived read consumer of `tenant`'s, waited for at most `JS_TIMEOUT`
    /// (shared fairly between tenants: `read_slots.rs`).
    pub(super) async fn read_slot(&self, tenant: &TenantId) -> Result<ReadSlot, BrokerError> {
        match self.reads.acquire(tenant, super::JS_TIMEOUT).await {
            Some(slot) => Ok(slot),
            None => Err(BrokerError::Unavailable(format!(
                "too many history reads in progress on this instance (at most {MAX_READS}); \
                 retry shortly"
            ))),
        }
    }

    /// A consumer for one read, deleted when the read ends (its guard dropped), however it
    /// ends. The slot is held until the deletion is done, or until NATS would have dropped the
    /// consumer by itself: the count of read consumers never exceeds `MAX_READS`.
    pub(super) async fn read_consumer(
        &self,
        tenant: &TenantId,
        stream: &stream::Stream,
        config: consumer::pull::Config,
    ) -> Result<(consumer::PullConsumer, ReadGuard), BrokerError> {
        let permit = self.read_slot(tenant).await?;
        let name = self.consumer_name();
        // Made before the consumer, so a creation cut short still ends in a deletion.
        let guard = ReadGuard {
            stream: stream.clone(),
            name: name.clone(),
            permit: Some(permit),
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                name: Some(name),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READ_INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                ..config
            })
            .await
            .map_err(unavailable)?;
        Ok((consumer, guard))
    }
}

/// Why a history listener stopped delivering.
enum Broken {
    Reconnected,
    Failed,
    Gone,
    /// No room registered for `LIVE_LINGER`: retired.
    Idle,
}

/// Where a history listener is: the stream it reads and the next sequence to deliver.
struct Cursor {
    epoch: u64,
    next: u64,
    /// Whether `next` is owed to this instance's subscribers, so that a first delivery past
    /// it is a loss. Not on the very first consumer's first delivery: `next` then came from
    /// the stream's state a moment before the consumer existed, and every subscriber waiting
    /// for that consumer reads what it missed from history after it exists (see
    /// `listen_history`). Owed from then on, across every rebuild.
    owed: bool,
}

/// Takes a listener out of the readiness count when its task ends (or is aborted).
struct Forget(Arc<Inner>, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.health.forget(self.1);
    }
}

/// A stream's live listener, shared by every room of the stream with local interest here.
#[derive(Default)]
pub(super) struct Live {
    /// The registered rooms, by subject.
    rooms: std::sync::RwLock<HashMap<String, Arc<RoomKey>>>,
    /// Set once the first consumer exists (and stays set across rebuilds, which resume from
    /// the last delivered sequence).
    started: watch::Sender<bool>,
    /// The broker's words of the last failure to build the consumer, while it is not built:
    /// what a `Subscribe` that waited for it in vain is refused with.
    refused: std::sync::Mutex<Option<String>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Live {
    /// Ends the listener (the broker is dropped).
    pub(super) fn abort(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// A room's place on its stream's live listener, given up when dropped.
pub(super) struct Registration {
    live: Arc<Live>,
    subject: String,
    /// The entry this registration made: a later registration of the room (its interest
    /// retired and taken up again meanwhile) is not removed with this one.
    room: Arc<RoomKey>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut rooms = self.live.rooms.write().unwrap_or_else(|e| e.into_inner());
        if rooms
            .get(&self.subject)
            .is_some_and(|room| Arc::ptr_eq(room, &self.room))
        {
            rooms.remove(&self.subject);
        }
    }
}

/// Deletes a read consumer when dropped, then gives back its slot.
pub(super) struct ReadGuard {
    stream: stream::Stream,
    name: String,
    permit: Option<ReadSlot>,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let (stream, name, permit) = (
            self.stream.clone(),
            std::mem::take(&mut self.name),
            self.permit.take(),
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if !delete_consumer(&stream, &name).await {
                // NATS drops it by itself after this; until then it still counts.
                tokio::time::sleep(READ_INACTIVE).await;
            }
            drop(permit);
        });
    }
}

/// One pull of a read consumer: up to `wanted` messages, at most `READ_BATCH`.
pub(super) async fn pull(
    consumer: &consumer::PullConsumer,
    wanted: usize,
) -> Result<consumer::pull::Batch, BrokerError> {
    consumer
        .fetch()
        .max_messages(wanted.min(READ_BATCH))
        .messages()
        .await
        .map_err(unavailable)
}

/// Deletes a consumer (bounded); whether it is gone (deleted, or never existed).
async fn delete_consumer(stream: &stream::Stream, name: &str) -> bool {
    match tokio::time::timeout(super::JS_TIMEOUT, stream.delete_consumer(name)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => match e.kind() {
            ConsumerErrorKind::JetStream(js)
                if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                true
            }
            _ => {
                debug!(consumer = name, error = %e, "consumer not deleted; NATS drops it when idle");
                false
            }
        },
        Err(_) => false,
    }
}

/// A random name for this instance's consumers.
pub(super) fn instance_prefix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
